//! Media layer: RTP audio for SIP calls and browser callers (G.711 PCMU/PCMA, RFC 4733 DTMF;
//! WebRTC's DTLS-SRTP around the same RTP session in [`webrtc`]).
//!
//! Sans-IO at its core, like str0m: [`session::RtpSession`] takes inputs with a timestamp
//! and produces outputs (datagrams to send, events, the next timeout); no sockets or clocks
//! inside. Its parts are usable alone: [`codec`], [`rtp`], [`jitter`], [`dtmf`], [`playout`],
//! [`sdp`]. [`driver`] is the one thin tokio task per call leg that owns the UDP socket.
//!
//! Typical inbound call: `driver::bind_rtp_socket` -> `sdp::answer(offer, local)` (488 on
//! `SdpError::NoAcceptableCodec`) -> `SessionConfig::new(&answer.remote, StreamIds::random())`
//! -> `driver::spawn` -> commands (play, stop, DTMF, bridge) and events (audio frames for the
//! recogniser, digits, media stopped).

pub mod codec;
pub mod driver;
pub mod dtmf;
pub mod jitter;
pub mod playout;
pub mod rtp;
pub mod sdp;
pub mod session;
pub mod webrtc;

#[cfg(test)]
mod udp_tests;

pub use codec::Codec;
pub use driver::{
    Command, DriverError, MediaHandle, PortRange, bind_rtp_socket, bridge, spawn, unbridge,
};
pub use playout::{Clip, PlaybackEnded, PlaybackId};
pub use sdp::{Answer, Direction, LocalMedia, RemoteMedia, SdpError};
pub use session::{
    AudioFrame, Input, MediaEvent, Output, RtpSession, SessionConfig, SessionStats, StreamIds,
    Transmit, relay,
};
