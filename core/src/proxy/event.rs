//! [`ProxyEvent`]: what a proxy connection tells the application.

use std::time::Duration;

use crate::byte_str::ByteStr;
use crate::control::{ConfigUpdateRequest, FlowControl, HealthStatus, MetricsReport};
use crate::error::{ConnectionError, RequestError};
use crate::handshake::Negotiated;
use crate::request_id::RequestId;
use crate::response::AgentResponse;

/// What the connection reports.
// Responses are the common case; boxing them would add an allocation per answer.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum ProxyEvent {
    /// The handshake finished.
    Connected(Negotiated),
    /// A request got its answer.
    Response {
        /// The request.
        id: RequestId,
        /// Its correlation id.
        correlation_id: ByteStr,
        /// The agent's answer.
        response: AgentResponse,
    },
    /// A request ended without an answer.
    Failed {
        /// The request.
        id: RequestId,
        /// Its correlation id.
        correlation_id: ByteStr,
        /// Why.
        error: RequestError,
    },
    /// The agent sent a flow-control signal (already applied).
    FlowControl(FlowControl),
    /// The agent reported its health (already applied, see
    /// [`ProxyConnection::health`](super::ProxyConnection::health)).
    Health(HealthStatus),
    /// The agent reported metrics.
    Metrics(MetricsReport),
    /// The agent asked for a configuration change.
    ConfigUpdate(ConfigUpdateRequest),
    /// A ping was answered.
    Pong {
        /// Ping sequence number.
        sequence: u64,
        /// Round-trip time.
        rtt: Duration,
    },
    /// An answer arrived for no pending request (typically one that already timed out).
    UnroutableResponse {
        /// The id it carried.
        correlation_id: String,
    },
    /// The connection ended; emitted once, after every pending request's `Failed`.
    Closed(ConnectionError),
}
