//! Humanline: a voice IVR where a caller can always reach a human.
//!
//! The call brain ([`brain`]) is a pure state machine: events in, actions out, no I/O.
//! Everything that touches the world (speech, files, later SIP/RTP and storage) is a driver
//! around it.

pub mod agents;
pub mod bench;
pub mod brain;
pub mod callbacks;
pub mod cli;
pub mod config;
pub mod escape;
#[doc(hidden)]
pub mod fuzzing;
pub mod media;
pub mod nodes;
pub mod server;
pub mod sip;
pub mod speech;
pub mod storage;
pub mod sync;
pub mod web;
