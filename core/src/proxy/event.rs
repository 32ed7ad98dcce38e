//! [`ProxyEvent`]: what a proxy connection tells the application, and the [`RequestId`] it
//! names requests by.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::control::{ConfigUpdateRequest, FlowControl, HealthStatus, MetricsReport};
use crate::error::{ConnectionError, RequestError};
use crate::handshake::Negotiated;
use crate::response::AgentResponse;

/// The proxy-side handle of one submitted event, unique within a connection. It is not the
/// correlation id: the events of one HTTP request share a correlation id and each gets its own
/// `RequestId` and its own outcome.
///
/// ```
/// use agent_protocol_core::proxy::RequestId;
/// let id = RequestId::from_raw(7);
/// assert_eq!(id.as_u64(), 7);
/// assert_eq!(id.to_string(), "7");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(u64);

impl RequestId {
    /// The id with this number (connections number their requests from 1).
    pub const fn from_raw(raw: u64) -> Self {
        Self(raw)
    }

    /// Its number.
    pub const fn as_u64(self) -> u64 {
        self.0
    }

    /// The id after this one.
    pub(crate) fn next(self) -> Self {
        Self(self.0.wrapping_add(1))
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

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
        correlation_id: Arc<str>,
        /// The agent's answer.
        response: AgentResponse,
    },
    /// A request ended without an answer.
    Failed {
        /// The request.
        id: RequestId,
        /// Its correlation id.
        correlation_id: Arc<str>,
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
