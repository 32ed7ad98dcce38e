//! Why an agent connection refused what the application asked of it.

use crate::error::{ConnectionError, Fault};

use super::RequestId;

/// Why [`AgentConnection::respond`](super::AgentConnection::respond) sent nothing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RespondError {
    /// No such request is awaiting an answer: it was already answered, cancelled, dropped by
    /// a close, or never existed.
    #[error("request {0} is not awaiting an answer (answered, cancelled or unknown)")]
    UnknownRequest(RequestId),
    /// The connection is closed.
    #[error("connection closed: {0}")]
    Closed(ConnectionError),
}

impl RespondError {
    /// Whose fault: a request the connection does not know is the caller's mistake (or a race
    /// with a cancel); a closed connection is nobody's to fix here.
    pub fn fault(&self) -> Fault {
        match self {
            Self::UnknownRequest(_) => Fault::Local,
            Self::Closed(_) => Fault::Closed,
        }
    }
}

/// Why a `send_*` method of [`AgentConnection`](super::AgentConnection) sent nothing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The handshake has not finished, so the proxy is not listening yet.
    #[error("connection not established (handshake in progress)")]
    NotEstablished,
    /// The connection is closed.
    #[error("connection closed: {0}")]
    Closed(ConnectionError),
}

impl SendError {
    /// Whose fault.
    pub fn fault(&self) -> Fault {
        Fault::Closed
    }
}
