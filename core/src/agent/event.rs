//! [`AgentEvent`]: what an agent connection tells the application.

use crate::control::CancelReason;
use crate::encoding::DecodeError;
use crate::error::ConnectionError;
use crate::event::Event;
use crate::frame::FrameType;
use crate::handshake::{HandshakeRequest, Negotiated};
use crate::request_id::RequestId;

/// What the connection has to tell the application.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum AgentEvent {
    /// The connection is ready for events: the handshake succeeded, or the connection was
    /// created established after a reverse registration (`proxy` is then `None`).
    Established {
        /// Encoding and capabilities in force.
        negotiated: Negotiated,
        /// The proxy's handshake request (its id, version and the configuration it passed).
        proxy: Option<HandshakeRequest>,
    },
    /// An event to answer with [`AgentConnection::respond`](super::AgentConnection::respond)
    /// `(id, ..)`, exactly once, in any order relative to other requests.
    Request {
        /// Handle for the answer.
        id: RequestId,
        /// The event, in the box it was decoded into (see [`AgentIncoming::Event`]).
        ///
        /// [`AgentIncoming::Event`]: super::AgentIncoming::Event
        event: Box<Event>,
    },
    /// The proxy cancelled this request: stop working on it. It is no longer tracked, and
    /// [`AgentConnection::respond`](super::AgentConnection::respond) for it returns
    /// [`RespondError::UnknownRequest`](super::RespondError::UnknownRequest) and sends nothing.
    Cancelled {
        /// The request.
        id: RequestId,
        /// Its correlation id.
        correlation_id: String,
        /// Why the proxy cancelled.
        reason: CancelReason,
    },
    /// An event could not be decoded (or went over a limit, or had an empty correlation id) but
    /// its correlation id could be read. The connection has **already** answered it fail-closed
    /// (block 500, [`MALFORMED_EVENT_REASON`](super::MALFORMED_EVENT_REASON); 431,
    /// [`HEADER_LIMIT_REASON`](super::HEADER_LIMIT_REASON), or 413,
    /// [`MESSAGE_TOO_COMPLEX_REASON`](super::MESSAGE_TOO_COMPLEX_REASON), when `error.limit` is
    /// set); nothing is left to do but log it.
    MalformedEvent {
        /// The salvaged correlation id.
        correlation_id: String,
        /// What was wrong.
        error: DecodeError,
    },
    /// An event arrived while [`AgentConfig::max_in_flight`](super::AgentConfig::max_in_flight)
    /// requests were unanswered. The connection has already answered it with a block (503,
    /// [`AGENT_OVERLOADED_REASON`](super::AGENT_OVERLOADED_REASON)).
    Overloaded {
        /// The refused event's correlation id.
        correlation_id: String,
        /// The refused event's frame type.
        frame_type: FrameType,
    },
    /// A message an agent does not expect at this point (a second handshake) was ignored.
    Ignored {
        /// Its type.
        frame_type: FrameType,
    },
    /// The connection ended. Emitted exactly once, last; every tracked request was dropped.
    Closed(ConnectionError),
}
