//! [`PoolError`]: why a pool operation failed, and whose fault that is.

use std::time::Duration;

use agent_protocol_core::pool::EndpointError;
use agent_protocol_core::Fault;

use crate::client::ClientError;

/// Why a pool operation failed.
///
/// ```
/// use agent_protocol_tokio::pool::PoolError;
/// use agent_protocol_tokio::core::Fault;
/// let e = PoolError::FlowControlPaused { agent: "waf".into() };
/// assert_eq!(e.fault(), Fault::Limit);
/// assert!(e.is_flow_control());
/// assert_eq!(e.to_string(), "flow control: agent \"waf\" requested backpressure");
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PoolError {
    /// No agent with this id is in the pool.
    #[error("agent {0:?} not found")]
    AgentNotFound(String),
    /// The agent has no connection at all (all closed, reconnection pending).
    #[error("agent {agent:?} has no connections")]
    NoConnections {
        /// The agent.
        agent: String,
    },
    /// The agent has connections but none can take the request; each connection is counted
    /// once, under its most fundamental reason.
    #[error(
        "agent {agent:?}: no connection available ({paused} paused, {unhealthy} unhealthy, \
         {disconnected} disconnected, {saturated} saturated)"
    )]
    AllUnavailable {
        /// The agent.
        agent: String,
        /// Paused by flow control (only counted here when other reasons are present too).
        paused: usize,
        /// Reporting draining or unhealthy.
        unhealthy: usize,
        /// Transport down.
        disconnected: usize,
        /// At their in-flight limit.
        saturated: usize,
    },
    /// The agent's circuit breaker is open: it failed repeatedly and is not tried until
    /// `retry_in` has passed.
    #[error("circuit open for agent {agent:?}; next attempt in {retry_in:?}")]
    CircuitOpen {
        /// The agent.
        agent: String,
        /// Time until the breaker admits a probe.
        retry_in: Duration,
    },
    /// The agent asked for backpressure and the flow-control mode is fail-closed (or
    /// wait-and-retry ran out of time).
    #[error("flow control: agent {agent:?} requested backpressure")]
    FlowControlPaused {
        /// The agent.
        agent: String,
    },
    /// The connection that carried this request's headers (and holds its body-stream state) is
    /// gone; the event is not sent down another connection, which would not know the stream.
    #[error(
        "agent {agent:?}: the connection that carried request {correlation_id:?} is gone \
         (affinity lost)"
    )]
    AffinityLost {
        /// The agent.
        agent: String,
        /// The request.
        correlation_id: String,
    },
    /// The connection failed the request (timeout, closed, cancelled, refused...).
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The endpoint string is malformed.
    #[error("invalid endpoint {endpoint:?}: {source}")]
    Endpoint {
        /// The string given.
        endpoint: String,
        /// What is wrong with it.
        source: EndpointError,
    },
    /// A gRPC endpoint (`host:port`, `http(s)://`) the runtime adapter cannot open: gRPC needs
    /// agent-protocol-tokio with its `grpc` feature (on by default).
    #[error("gRPC transport not available (endpoint {endpoint}): gRPC needs agent-protocol-tokio with its `grpc` feature")]
    GrpcUnavailable {
        /// The normalised endpoint.
        endpoint: String,
    },
    /// Not one of the agent's connections could be opened.
    #[error("agent {agent:?}: none of {attempted} connections could be opened: {source}")]
    ConnectFailed {
        /// The agent.
        agent: String,
        /// Connections attempted.
        attempted: usize,
        /// The last failure.
        source: ClientError,
    },
    /// An agent with this id is already in the pool (or being added).
    #[error("agent {0:?} already exists")]
    AlreadyExists(String),
    /// The agent already has `connections_per_agent` live connections.
    #[error("agent {agent:?} already has {limit} connections")]
    Full {
        /// The agent.
        agent: String,
        /// The configured maximum.
        limit: usize,
    },
    /// The pool is shutting down and takes no new work.
    #[error("agent pool is shutting down")]
    ShuttingDown,
}

impl PoolError {
    /// Whose fault, in the core's terms: `Local` for caller mistakes (unknown agent, bad
    /// endpoint), `Limit` for backpressure and caps, `Closed` when the agent is unreachable
    /// (including an open circuit), and the connection's own classification for
    /// [`PoolError::Client`].
    pub fn fault(&self) -> Fault {
        match self {
            Self::AgentNotFound(_)
            | Self::Endpoint { .. }
            | Self::GrpcUnavailable { .. }
            | Self::AlreadyExists(_) => Fault::Local,
            Self::FlowControlPaused { .. } | Self::Full { .. } => Fault::Limit,
            Self::AllUnavailable {
                unhealthy: 0,
                disconnected: 0,
                ..
            } => Fault::Limit,
            Self::NoConnections { .. }
            | Self::AllUnavailable { .. }
            | Self::CircuitOpen { .. }
            | Self::AffinityLost { .. }
            | Self::ConnectFailed { .. }
            | Self::ShuttingDown => Fault::Closed,
            Self::Client(e) => e.fault(),
        }
    }

    /// A short, stable `snake_case` name of what went wrong, without the per-request details
    /// (ids, durations): for grouping errors in reports and as a metrics label. Errors of a
    /// connection keep their own names ([`ClientError::kind`]).
    ///
    /// ```
    /// use std::time::Duration;
    /// use agent_protocol_tokio::pool::PoolError;
    /// let open = PoolError::CircuitOpen { agent: "waf".into(), retry_in: Duration::from_secs(3) };
    /// assert_eq!(open.kind(), "circuit_open");
    /// ```
    pub fn kind(&self) -> &'static str {
        match self {
            Self::AgentNotFound(_) => "agent_not_found",
            Self::NoConnections { .. } => "no_connections",
            Self::AllUnavailable {
                unhealthy: 0,
                disconnected: 0,
                paused: 0,
                ..
            } => "saturated",
            Self::AllUnavailable { .. } => "unavailable",
            Self::CircuitOpen { .. } => "circuit_open",
            Self::FlowControlPaused { .. } => "flow_control",
            Self::AffinityLost { .. } => "affinity_lost",
            Self::Client(e) => e.kind(),
            Self::Endpoint { .. } => "invalid_endpoint",
            Self::GrpcUnavailable { .. } => "grpc_unavailable",
            Self::ConnectFailed { .. } => "connect_failed",
            Self::AlreadyExists(_) => "already_exists",
            Self::Full { .. } => "full",
            Self::ShuttingDown => "shutting_down",
        }
    }

    /// Whether the request was refused because of the agent's flow control.
    pub fn is_flow_control(&self) -> bool {
        match self {
            Self::FlowControlPaused { .. } => true,
            Self::Client(e) => e.is_flow_control(),
            _ => false,
        }
    }

    /// Whether the request ran out of time.
    pub fn is_timeout(&self) -> bool {
        matches!(self, Self::Client(e) if e.is_timeout())
    }

    /// Whether the agent was unreachable: no usable connection, open circuit, lost affinity,
    /// or the connection closed under the request.
    pub fn is_unavailable(&self) -> bool {
        self.fault() == Fault::Closed
    }
}
