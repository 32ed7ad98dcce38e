//! The typed messages an agent connection exchanges with the proxy, whatever carries them.
//!
//! The [`AgentConnection`](super::AgentConnection) takes [`AgentIncoming`] and yields
//! [`AgentOutgoing`]; a transport turns its own units into these and back: the
//! [`AgentCodec`](super::AgentCodec) frames them on Unix sockets, TCP and reverse connections,
//! the gRPC adapter converts them to protobuf.

use crate::byte_str::ByteStr;
use crate::control::{Cancel, ConfigUpdateRequest, FlowControl, HealthStatus, MetricsReport, Ping};
use crate::encoding::DecodeError;
use crate::event::Event;
use crate::handshake::{HandshakeRequest, HandshakeResponse};
use crate::registration::{RegistrationRequest, RegistrationResponse};
use crate::response::AgentResponse;

/// A message from the proxy.
#[derive(Clone, Debug, PartialEq)]
pub enum AgentIncoming {
    /// The proxy's handshake request.
    Handshake(HandshakeRequest),
    /// The proxy's answer to a reverse connection's registration.
    Registered(RegistrationResponse),
    /// An event to answer.
    Event {
        /// The event, boxed once where it is decoded: an event is some 600 bytes, and it moves
        /// from the transport through the connection to the handler's call as a pointer
        /// rather than being copied at each of a dozen steps.
        event: Box<Event>,
        /// Bytes of the received payload that the event's strings share and keep alive beyond
        /// its own fields (0 when it owns them all), weighed with it in
        /// [`AgentConnection::in_flight_bytes`](super::AgentConnection::in_flight_bytes).
        shared: usize,
    },
    /// An event the transport could not turn into an [`Event`]. With a correlation id it is
    /// answered fail-closed (a block; its status and reason code follow `error.limit`); without
    /// one the connection closes, so the proxy fails everything at once instead of waiting out
    /// its timeouts.
    MalformedEvent {
        /// The correlation id, if the transport could read it.
        correlation_id: Option<String>,
        /// What was wrong (its `frame_type` says which kind of event it was).
        error: DecodeError,
    },
    /// Cancel a request.
    Cancel(Cancel),
    /// A ping, answered at once with [`AgentOutgoing::Pong`]. (The framed codec echoes pings
    /// itself, byte for byte, so on framed transports they never reach the connection.)
    Ping(Ping),
}

/// A message for the proxy.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum AgentOutgoing {
    /// The handshake answer (a refusal is followed by the close).
    Handshake(HandshakeResponse),
    /// A reverse connection's registration, the first message on it.
    Register(RegistrationRequest),
    /// An answer. The correlation id travels beside the response, which is exactly what the
    /// application gave [`AgentConnection::respond`](super::AgentConnection::respond); the
    /// framed codec copies the id into `audit.custom.correlation_id`, where framed proxies read
    /// it.
    Response {
        /// The request answered.
        correlation_id: ByteStr,
        /// The answer.
        response: AgentResponse,
    },
    /// The answer to a ping: the ping's own sequence and timestamp.
    Pong(Ping),
    /// Health report.
    Health(HealthStatus),
    /// Flow-control signal.
    FlowControl(FlowControl),
    /// Metrics report.
    Metrics(MetricsReport),
    /// Configuration update request.
    ConfigUpdate(ConfigUpdateRequest),
}

impl From<Event> for AgentIncoming {
    /// An event that owns its strings.
    fn from(event: Event) -> Self {
        AgentIncoming::Event {
            event: Box::new(event),
            shared: 0,
        }
    }
}
