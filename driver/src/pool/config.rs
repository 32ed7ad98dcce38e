//! [`AgentPoolConfig`]: every knob of the pool, with the reference's defaults where they make
//! sense and none of its dead options.

use std::time::Duration;

use agent_protocol_core::pool::{
    AffinityTable, Backoff, CircuitBreakerConfig, FlowControlPolicy, LoadBalanceStrategy,
};

use crate::client::ClientConfig;
use crate::runtime::Runtime;

/// Settings of an [`AgentPool`](super::AgentPool).
///
/// Every field is used (unlike the reference's `connect_timeout`, `channel_buffer_size` and
/// `max_reconnect_attempts`: the first two are never read there, the third makes it give up).
///
/// ```
/// use agent_protocol_tokio::pool::AgentPoolConfig;
/// use agent_protocol_tokio::core::pool::{FlowControlMode, LoadBalanceStrategy};
/// use std::time::Duration;
///
/// let config = AgentPoolConfig {
///     connections_per_agent: 2,
///     load_balance_strategy: LoadBalanceStrategy::LeastConnections,
///     request_timeout: Duration::from_millis(200),
///     ..AgentPoolConfig::default()
/// };
/// assert_eq!(config.flow_control.mode, FlowControlMode::FailClosed);
/// assert_eq!(AgentPoolConfig::default().connections_per_agent, 4);
/// ```
#[derive(Clone, Debug)]
pub struct AgentPoolConfig<R: Runtime> {
    /// Connections [`add_agent`](super::AgentPool::add_agent) opens per agent, the number the
    /// maintenance task keeps open, and the cap for reverse connections. 0 reads as 1.
    pub connections_per_agent: usize,
    /// How requests are spread over an agent's eligible connections (healthy ones first).
    pub load_balance_strategy: LoadBalanceStrategy,
    /// Deadline for establishing a socket (the handshake has its own deadline, in
    /// `client.connection.handshake.timeout`). Overrides `client.connect_timeout`.
    pub connect_timeout: Duration,
    /// Default deadline of every request, counted from the call (queueing and flow-control
    /// waits included). Overrides `client.connection.request_timeout`.
    pub request_timeout: Duration,
    /// Per-connection settings: handshake (proxy id, encodings offered, handshake timeout,
    /// configuration passed to the agent), pings, in-flight and buffer caps.
    pub client: ClientConfig<R>,
    /// Delay between reconnection attempts of a connection slot: exponential with jitter, no
    /// attempt limit (the pool never gives up on a configured agent).
    pub reconnect: Backoff,
    /// Period of the maintenance task: affinity and agent-metric expiry, error-rate decay, idle
    /// cleanup. Reconnections are scheduled by their own backoff, not by this period. Values
    /// below 10 ms read as 10 ms.
    pub health_check_interval: Duration,
    /// What a request does when the agent has paused its connections.
    pub flow_control: FlowControlPolicy,
    /// Per-agent circuit breaker thresholds.
    pub circuit_breaker: CircuitBreakerConfig,
    /// Most correlation affinities kept at once (body chunks following their headers).
    pub affinity_capacity: usize,
    /// Affinities unused for this long are forgotten.
    pub affinity_ttl: Duration,
    /// Outbound connections unused for this long are closed by the maintenance task, keeping at
    /// least one per agent; the closed slots are reopened on demand, as soon as the agent gets a
    /// request again. `None` keeps every connection open. Reverse connections are never closed
    /// for idleness (the pool cannot reopen them).
    pub idle_timeout: Option<Duration>,
    /// Prefix of the pool's own Prometheus families (`{prefix}_requests_total`, ...).
    pub metrics_prefix: String,
}

impl<R: Runtime> Default for AgentPoolConfig<R> {
    fn default() -> Self {
        Self {
            connections_per_agent: 4,
            load_balance_strategy: LoadBalanceStrategy::RoundRobin,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            client: ClientConfig::default(),
            reconnect: Backoff::default(),
            health_check_interval: Duration::from_secs(10),
            flow_control: FlowControlPolicy::default(),
            circuit_breaker: CircuitBreakerConfig::default(),
            affinity_capacity: AffinityTable::<u64>::DEFAULT_CAPACITY,
            affinity_ttl: AffinityTable::<u64>::DEFAULT_TTL,
            idle_timeout: Some(Duration::from_secs(300)),
            metrics_prefix: "agent_protocol".to_owned(),
        }
    }
}

impl<R: Runtime> AgentPoolConfig<R> {
    /// The connection count actually used (at least 1).
    pub(super) fn per_agent(&self) -> usize {
        self.connections_per_agent.max(1)
    }

    /// The maintenance period actually used.
    pub(super) fn tick(&self) -> Duration {
        self.health_check_interval.max(Duration::from_millis(10))
    }

    /// The client settings with the pool's own timeouts applied.
    pub(super) fn client_config(&self) -> ClientConfig<R> {
        let mut c = self.client.clone();
        c.connect_timeout = self.connect_timeout;
        c.connection.request_timeout = self.request_timeout;
        c
    }
}
