//! The typed messages a proxy connection exchanges with the agent, whatever carries them.
//!
//! The [`ProxyConnection`](super::ProxyConnection) takes [`ProxyIncoming`] and yields
//! [`ProxyOutgoing`]; a transport turns its own units into these and back: the
//! [`ProxyCodec`](super::ProxyCodec) frames them on Unix sockets, TCP and reverse connections,
//! the gRPC adapter converts them to protobuf.

use crate::control::{Cancel, ConfigUpdateRequest, FlowControl, HealthStatus, MetricsReport, Ping};
use crate::encoding::DecodeError;
use crate::event::Event;
use crate::handshake::{HandshakeRequest, HandshakeResponse};
use crate::response::AgentResponse;

/// A message from the agent.
// Answers dominate; boxing them would cost an allocation per message.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum ProxyIncoming {
    /// The handshake answer.
    Handshake(HandshakeResponse),
    /// An answer.
    Response {
        /// The answer; [`AgentResponse::correlation_id`] names the request it answers
        /// (whether the transport carried the id inside the answer or beside it).
        response: AgentResponse,
    },
    /// An answer the transport could not decode, for the request with this correlation id:
    /// that request fails with
    /// [`RequestError::MalformedResponse`](crate::RequestError::MalformedResponse) (an unknown
    /// id is counted as unroutable). The connection lives on.
    MalformedResponse {
        /// The request it was for.
        correlation_id: String,
        /// What was wrong.
        error: DecodeError,
    },
    /// Health report.
    Health(HealthStatus),
    /// Flow-control signal.
    FlowControl(FlowControl),
    /// Metrics report.
    Metrics(MetricsReport),
    /// Configuration update request.
    ConfigUpdate(ConfigUpdateRequest),
    /// Answer to a ping.
    Pong(Ping),
}

/// A message for the agent.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum ProxyOutgoing {
    /// The handshake request, the first message.
    Handshake(HandshakeRequest),
    /// An event; only ever handed to the `transmit` function of
    /// [`ProxyConnection::send_event`](super::ProxyConnection::send_event), never queued.
    Event(Event),
    /// Cancel a request.
    Cancel(Cancel),
    /// A ping.
    Ping(Ping),
}
