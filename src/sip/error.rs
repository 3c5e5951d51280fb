//! Typed errors of the SIP signalling layer.

use std::net::SocketAddr;

/// Everything that can go wrong in `crate::sip`. The SIP stack's own error type never leaks out.
#[derive(Debug, thiserror::Error)]
pub enum SipError {
    /// The UDP or TCP socket could not be bound (port in use, no such address, ...).
    #[error("cannot bind SIP {transport} on {addr}: {source}")]
    Bind {
        transport: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// A target or caller URI that does not parse as a SIP URI.
    #[error("invalid SIP URI {uri:?}: {reason}")]
    InvalidUri { uri: String, reason: String },
    /// An extra header whose name is not a SIP token or that we must not let callers override.
    #[error("invalid header {name:?}: {reason}")]
    InvalidHeader { name: String, reason: String },
    /// The operation does not fit the call's state (answer after cancel, bye before answer, ...).
    #[error("call {call_id}: {operation} not possible: {reason}")]
    InvalidState {
        call_id: String,
        operation: &'static str,
        reason: String,
    },
    /// The endpoint was shut down.
    #[error("the SIP endpoint is shut down")]
    Shutdown,
    /// An error reported by the underlying SIP stack (transport, transaction or dialog layer).
    #[error("SIP stack error: {0}")]
    Stack(String),
}

impl From<rsipstack::Error> for SipError {
    fn from(e: rsipstack::Error) -> Self {
        SipError::Stack(e.to_string())
    }
}

pub type SipResult<T> = Result<T, SipError>;
