//! SIP signalling for Humanline, a B2BUA.
//!
//! Callers INVITE us ([`IncomingCall`]); we answer with SDP that the media layer supplies. When
//! a caller asks for a human we INVITE an agent ([`SipEndpoint::invite`]) and keep both legs.
//!
//! Rules the types enforce:
//! - an inbound (caller) leg has no BYE: [`InboundCall`] can only ring, answer or reject
//!   (before answering); only the caller ends the call;
//! - an outbound (agent / callback) leg can be cancelled before the answer and BYEd after it
//!   ([`OutboundCall`]).
//!
//! Transactions, retransmissions and timers (RFC 3261) come from the `rsipstack` crate, which
//! stays hidden behind these types. The SDP bodies are passed through as strings.
//!
//! ```no_run
//! # async fn demo() -> Result<(), humanline::sip::SipError> {
//! use humanline::sip::{InboundEvent, OutboundEvent, SipEndpoint};
//! let (sip, mut calls) = SipEndpoint::bind("0.0.0.0:5060".parse().unwrap()).await?;
//! while let Some(mut call) = calls.recv().await {
//!     let caller_id = call.from.caller_id().to_string();
//!     let answer_sdp = String::from("v=0\r\n..."); // from the media layer, for call.offer_sdp
//!     call.call.answer(&answer_sdp)?;
//!     let sip = sip.clone();
//!     tokio::spawn(async move {
//!         while let Some(ev) = call.events.recv().await {
//!             match ev {
//!                 InboundEvent::Bye => break,
//!                 InboundEvent::Info { dtmf: Some(d), .. } if d.digit == '0' => {
//!                     let (agent, mut agent_events) = sip
//!                         .invite(
//!                             "sip:agent1@10.0.0.5:5060",
//!                             "v=0\r\n...",
//!                             vec![("X-Humanline-Reason".into(), "dtmf".into()),
//!                                  ("X-Humanline-Caller".into(), caller_id.clone())],
//!                         )
//!                         .await?;
//!                     while let Some(ev) = agent_events.recv().await {
//!                         if let OutboundEvent::Answered { answer_sdp } = ev { let _ = answer_sdp; break; }
//!                     }
//!                     agent.hangup().await?;
//!                 }
//!                 _ => {}
//!             }
//!         }
//!         Ok::<(), humanline::sip::SipError>(())
//!     });
//! }
//! # Ok(()) }
//! ```

mod admission;
pub mod digest;
mod endpoint;
mod error;
mod filter;
mod inbound;
mod outbound;
mod registrar;
mod types;

pub use admission::{Admission, AdmissionLimits, Admitter};
pub use endpoint::{ALLOW, IncomingCalls, SipConfig, SipEndpoint, SipStats};
pub use error::{SipError, SipResult};
pub use inbound::{InboundCall, InboundEvent, InboundEvents, IncomingCall, ReInviteReply};
pub use outbound::{FailReason, OutboundCall, OutboundEvent, OutboundEvents, OutboundInvite};
pub use registrar::{
    Credentials, NONCE_LIFETIME_MS, RegisterReply, RegisterRequest, RegistrarConfig, Registration,
    decide as decide_register,
};
pub use types::{
    DtmfInfo, HeaderList, MAX_HEADER_VALUE_BYTES, RejectStatus, SipParty, SipTransport,
    header_value, parse_dtmf_info, sanitize_header_value, validate_header_name,
};

/// What the message filter does with `message` (a datagram, or a framed TCP message with
/// `stream`): `Some(0)` passed to the stack, `Some(status)` answered, `None` dropped. For
/// fuzzing and tests; the policy itself is [`filter`]'s.
#[doc(hidden)]
pub fn filter_status(message: &[u8], stream: bool) -> Option<u16> {
    let framing = if stream {
        filter::Framing::Stream
    } else {
        filter::Framing::Datagram
    };
    match filter::classify(message, framing, "humanline") {
        filter::Verdict::Pass | filter::Verdict::PassNormalized(_) => Some(0),
        filter::Verdict::Reply { status, .. } => Some(status),
        filter::Verdict::Drop(_) => None,
    }
}
