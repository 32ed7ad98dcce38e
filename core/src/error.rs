//! Errors shared by the connection state machines, each saying whose fault it is.

use std::io;
use std::time::Duration;

use crate::control::CancelReason;
use crate::encoding::{DecodeError, EncodeError};
use crate::frame::FrameError;
use crate::handshake::HandshakeError;
use crate::registration::RegistrationError;

/// Whose fault an error is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Fault {
    /// The peer sent something wrong.
    Peer,
    /// The caller misused the API.
    Local,
    /// A configured or advertised limit was reached.
    Limit,
    /// A deadline passed.
    Timeout,
    /// The connection is closed or closing.
    Closed,
}

/// Why a connection ended. Every request pending on it fails with
/// [`RequestError::ConnectionClosed`] carrying this.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectionError {
    /// The byte stream could not be framed.
    #[error("framing error: {0}")]
    Frame(#[from] FrameError),
    /// The handshake failed.
    #[error(transparent)]
    Handshake(#[from] HandshakeError),
    /// Reverse registration failed.
    #[error(transparent)]
    Registration(#[from] RegistrationError),
    /// A frame that cannot be attributed to one request was malformed.
    #[error(transparent)]
    Malformed(#[from] DecodeError),
    /// Something we had to send could not be encoded, not even as a fail-closed substitute:
    /// our side cannot go on speaking the protocol on this connection.
    #[error("cannot encode what we must send: {0}")]
    Encode(EncodeError),
    /// The peer did not answer a ping in time.
    #[error("no sign of life from the peer for {0:?} after a ping")]
    PingTimeout(Duration),
    /// The peer closed the stream.
    #[error("connection closed by peer")]
    PeerClosed,
    /// Reading or writing failed (reported by the adapter). `kind` is the `io::ErrorKind` of
    /// the failure (`Other` for a transport error that is not an `io::Error`, such as a gRPC
    /// status), so callers can tell a reset from a timeout without parsing `message`.
    #[error("I/O error ({kind}): {message}")]
    Io {
        /// What kind of failure.
        kind: io::ErrorKind,
        /// What the adapter said.
        message: String,
    },
    /// Closed by our side.
    #[error("connection closed locally")]
    LocalClose,
}

impl From<io::Error> for ConnectionError {
    fn from(error: io::Error) -> Self {
        Self::Io {
            kind: error.kind(),
            message: error.to_string(),
        }
    }
}

impl ConnectionError {
    /// A transport failure that is not an `io::Error` (a gRPC status, say).
    pub fn transport(message: impl Into<String>) -> Self {
        Self::Io {
            kind: io::ErrorKind::Other,
            message: message.into(),
        }
    }

    /// Whose fault.
    pub fn fault(&self) -> Fault {
        match self {
            Self::Registration(e) => e.fault(),
            Self::Frame(_) | Self::Malformed(_) => Fault::Peer,
            Self::Handshake(HandshakeError::Timeout(_)) | Self::PingTimeout(_) => Fault::Timeout,
            Self::Handshake(_) => Fault::Peer,
            Self::Encode(_) => Fault::Local,
            Self::PeerClosed | Self::Io { .. } | Self::LocalClose => Fault::Closed,
        }
    }

    /// A short, stable `snake_case` name of why the connection ended, without the details
    /// (durations, messages): for grouping errors in reports and as a metrics label.
    ///
    /// ```
    /// use agent_protocol_core::ConnectionError;
    /// assert_eq!(ConnectionError::PeerClosed.kind(), "peer_closed");
    /// ```
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Frame(_) => "frame_error",
            Self::Handshake(HandshakeError::Timeout(_)) => "handshake_timeout",
            Self::Handshake(_) => "handshake_failed",
            Self::Registration(_) => "registration_failed",
            Self::Malformed(_) => "malformed_frame",
            Self::Encode(_) => "encode_failed",
            Self::PingTimeout(_) => "ping_timeout",
            Self::PeerClosed => "peer_closed",
            Self::Io { .. } => "io_error",
            Self::LocalClose => "closed_locally",
        }
    }
}

/// Why one request ended without a decision.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// Its deadline passed (the agent was told to cancel).
    #[error("request timed out after {0:?}")]
    Timeout(Duration),
    /// It was cancelled.
    #[error("request cancelled ({0:?})")]
    Cancelled(CancelReason),
    /// Its connection ended first.
    #[error("connection closed: {0}")]
    ConnectionClosed(ConnectionError),
    /// The agent's answer for it was malformed.
    #[error(transparent)]
    MalformedResponse(DecodeError),
}

impl RequestError {
    /// Whose fault.
    pub fn fault(&self) -> Fault {
        match self {
            Self::Timeout(_) => Fault::Timeout,
            Self::Cancelled(_) => Fault::Local,
            Self::ConnectionClosed(_) => Fault::Closed,
            Self::MalformedResponse(_) => Fault::Peer,
        }
    }

    /// A short, stable `snake_case` name of how the request ended (for a closed connection,
    /// why it closed): see [`ConnectionError::kind`].
    ///
    /// ```
    /// use std::time::Duration;
    /// use agent_protocol_core::{ConnectionError, RequestError};
    /// assert_eq!(RequestError::Timeout(Duration::from_secs(1)).kind(), "timeout");
    /// assert_eq!(RequestError::ConnectionClosed(ConnectionError::PeerClosed).kind(), "peer_closed");
    /// ```
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Timeout(_) => "timeout",
            Self::Cancelled(_) => "cancelled",
            Self::ConnectionClosed(e) => e.kind(),
            Self::MalformedResponse(_) => "malformed_response",
        }
    }
}

/// Why the proxy connection refused to send an event. Nothing was sent and nothing is tracked:
/// the caller still owns the outcome.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SubmitError {
    /// The handshake has not finished.
    #[error("connection not ready (handshake in progress)")]
    NotReady,
    /// The connection is closed.
    #[error("connection closed: {0}")]
    Closed(ConnectionError),
    /// The agent asked us to pause (connection-wide or for this request).
    #[error("flow control: agent paused {}", .correlation_id.as_deref().map_or("the connection".to_string(), |c| format!("request {c}")))]
    FlowControlPaused {
        /// `Some` when only this request's stream is paused.
        correlation_id: Option<String>,
    },
    /// The agent's credit window is smaller than this body chunk.
    #[error("flow control: chunk of {needed} bytes exceeds the agent's credit of {available}")]
    InsufficientCredit {
        /// Bytes in the chunk.
        needed: u64,
        /// Credit left.
        available: u64,
    },
    /// In-flight cap (ours or the agent's `max_concurrency`).
    #[error("too many requests in flight (limit {limit})")]
    TooManyInFlight {
        /// The limit.
        limit: u32,
    },
    /// Unsent output exceeds the buffer cap (the socket is not draining).
    #[error("send buffer full ({buffered} bytes queued, limit {limit})")]
    SendBufferFull {
        /// Bytes queued.
        buffered: usize,
        /// The limit.
        limit: usize,
    },
    /// The correlation id is empty.
    #[error("correlation id must not be empty")]
    EmptyCorrelationId,
    /// Another event with this correlation id is still awaiting its answer on this connection.
    #[error("an event for correlation id {0:?} is already awaiting its answer")]
    DuplicateCorrelationId(String),
    /// A body chunk out of order.
    #[error(transparent)]
    BodyOutOfSequence(#[from] crate::body_sequence::SequenceError),
    /// The body would exceed the agent's `max_body_size`.
    #[error("body of {total} bytes exceeds the agent's max_body_size of {limit}")]
    BodyTooLarge {
        /// Bytes so far including this chunk.
        total: u64,
        /// The limit.
        limit: u64,
    },
    /// Too many body streams tracked at once.
    #[error("too many concurrent body streams (limit {0})")]
    TooManyStreams(usize),
    /// The event could not be encoded.
    #[error(transparent)]
    Encode(#[from] EncodeError),
}

impl SubmitError {
    /// Whose fault.
    pub fn fault(&self) -> Fault {
        match self {
            Self::NotReady | Self::Closed(_) => Fault::Closed,
            Self::FlowControlPaused { .. }
            | Self::InsufficientCredit { .. }
            | Self::TooManyInFlight { .. }
            | Self::SendBufferFull { .. }
            | Self::BodyTooLarge { .. }
            | Self::TooManyStreams(_) => Fault::Limit,
            Self::EmptyCorrelationId
            | Self::DuplicateCorrelationId(_)
            | Self::BodyOutOfSequence(_)
            | Self::Encode(_) => Fault::Local,
        }
    }

    /// A short, stable `snake_case` name of why the event was refused: see
    /// [`ConnectionError::kind`].
    ///
    /// ```
    /// use agent_protocol_core::SubmitError;
    /// assert_eq!(SubmitError::TooManyInFlight { limit: 8 }.kind(), "too_many_in_flight");
    /// ```
    pub fn kind(&self) -> &'static str {
        match self {
            Self::NotReady => "not_ready",
            Self::Closed(e) => e.kind(),
            Self::FlowControlPaused { .. } | Self::InsufficientCredit { .. } => "flow_control",
            Self::TooManyInFlight { .. } => "too_many_in_flight",
            Self::SendBufferFull { .. } => "send_buffer_full",
            Self::EmptyCorrelationId => "empty_correlation_id",
            Self::DuplicateCorrelationId(_) => "duplicate_correlation_id",
            Self::BodyOutOfSequence(_) => "body_out_of_sequence",
            Self::BodyTooLarge { .. } => "body_too_large",
            Self::TooManyStreams(_) => "too_many_streams",
            Self::Encode(_) => "encode_failed",
        }
    }
}
