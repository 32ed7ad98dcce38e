//! [`AgentPoolConfig`]: every knob of the pool, with the reference's defaults where they make
//! sense and none of its dead options.

use std::time::Duration;

use agent_protocol_core::pool::{
    AffinityTable, Backoff, CircuitBreakerConfig, FlowControlPolicy, LoadBalanceStrategy,
};
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize};

use crate::client::ClientConfig;
use crate::runtime::Runtime;

/// Settings of an [`AgentPool`](super::AgentPool).
///
/// Every field is used (unlike the reference's `connect_timeout`, `channel_buffer_size` and
/// `max_reconnect_attempts`: the first two are never read there, the third makes it give up).
///
/// Built from [`Default`] and the `with_*` setters (fields may be added in any release, so the
/// struct cannot be built literally outside this crate); the fields stay public to read and set.
///
/// ```
/// use agent_protocol_tokio::pool::AgentPoolConfig;
/// use agent_protocol_tokio::core::pool::{FlowControlMode, LoadBalanceStrategy};
/// use std::time::Duration;
///
/// let config = AgentPoolConfig::default()
///     .with_connections_per_agent(2)
///     .with_load_balance_strategy(LoadBalanceStrategy::LeastConnections)
///     .with_request_timeout(Duration::from_millis(200));
/// assert_eq!(config.flow_control.mode, FlowControlMode::FailClosed);
/// assert_eq!(AgentPoolConfig::default().connections_per_agent, 4);
/// ```
///
/// # Loading from a configuration file
///
/// The config deserializes from a section of the proxy's own configuration file (JSON, TOML,
/// YAML: any serde format): keys left out keep their defaults, at any depth; an unknown key is an
/// error that names it; durations are strings such as `"5s"`, `"250ms"` or `"1m 30s"` (a bare
/// number has no unit and is refused); `"idle_timeout": null` keeps connections open. The
/// client's [`connector`](ClientConfig::connector) is not read: it is the runtime's default, to
/// be replaced in code if needed.
///
/// The pool applies its own `connect_timeout` and `request_timeout` to every connection, over
/// `client.connect_timeout` and `client.connection.request_timeout`; a `client` section that
/// sets one of those two to anything but its default is refused rather than silently
/// overridden (so a config built in code with such a client value does not read back from its
/// own serialization). Every other value is accepted as the setters accept it (zero connections
/// read as 1, short maintenance periods as 10 ms, zero breaker thresholds as 1).
///
/// ```
/// use std::time::Duration;
/// use agent_protocol_tokio::core::pool::{FlowControlMode, LoadBalanceStrategy};
/// use agent_protocol_tokio::pool::{AgentPool, AgentPoolConfig};
///
/// // The proxy's own settings, with the pool's section in them.
/// #[derive(serde::Deserialize)]
/// #[serde(deny_unknown_fields)]
/// struct ProxySettings {
///     listen: String,
///     agents: AgentPoolConfig,
/// }
///
/// let file = r#"{
///     "listen": "0.0.0.0:8080",
///     "agents": {
///         "connections_per_agent": 2,
///         "connect_timeout": "1s",
///         "request_timeout": "200ms",
///         "load_balance_strategy": "least_connections",
///         "flow_control": {"mode": "wait_and_retry", "max_wait": "50ms"},
///         "circuit_breaker": {"failure_threshold": 3, "open_timeout": "10s"},
///         "client": {"connection": {"handshake": {"proxy_id": "edge-1"}, "ping_interval": "5s"}}
///     }
/// }"#;
/// let settings: ProxySettings = serde_json::from_str(file)?;
/// let config = settings.agents;
/// assert_eq!(config.request_timeout, Duration::from_millis(200));
/// assert_eq!(config.load_balance_strategy, LoadBalanceStrategy::LeastConnections);
/// assert_eq!(config.flow_control.mode, FlowControlMode::WaitAndRetry);
/// assert_eq!(config.client.connection.handshake.proxy_id, "edge-1");
/// // Left out: the defaults.
/// assert_eq!(config.affinity_ttl, AgentPoolConfig::default().affinity_ttl);
///
/// // A typo is an error, not a default.
/// let typo = serde_json::from_str::<AgentPoolConfig>(r#"{"request_timout": "200ms"}"#);
/// assert!(typo.unwrap_err().to_string().contains("unknown field `request_timout`"));
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(async {
/// let pool = AgentPool::new(config);
/// assert_eq!(pool.config().connections_per_agent, 2);
/// # pool.shutdown(Duration::ZERO).await;
/// # });
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, Serialize, Deserialize)]
// The runtime is a marker type: nothing of it is read or written, so it needs no serde bound.
#[serde(default, deny_unknown_fields, bound(serialize = "", deserialize = ""))]
#[non_exhaustive]
pub struct AgentPoolConfig<R: Runtime> {
    /// Connections [`add_agent`](super::AgentPool::add_agent) opens per agent, the number the
    /// maintenance task keeps open, and the cap for reverse connections. 0 reads as 1.
    pub connections_per_agent: usize,
    /// How requests are spread over an agent's eligible connections (healthy ones first).
    pub load_balance_strategy: LoadBalanceStrategy,
    /// Deadline for establishing a socket (the handshake has its own deadline, in
    /// `client.connection.handshake.timeout`). Overrides `client.connect_timeout`.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Default deadline of every request, counted from the call (queueing and flow-control
    /// waits included). Overrides `client.connection.request_timeout`.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Per-connection settings: handshake (proxy id, encodings offered, handshake timeout,
    /// configuration passed to the agent), pings, in-flight and buffer caps.
    #[serde(deserialize_with = "client_without_pool_timeouts")]
    pub client: ClientConfig<R>,
    /// Delay between reconnection attempts of a connection slot: exponential with jitter, no
    /// attempt limit (the pool never gives up on a configured agent).
    pub reconnect: Backoff,
    /// Period of the maintenance task: affinity and agent-metric expiry, error-rate decay, idle
    /// cleanup. Reconnections are scheduled by their own backoff, not by this period. Values
    /// below 10 ms read as 10 ms.
    #[serde(with = "humantime_serde")]
    pub health_check_interval: Duration,
    /// What a request does when the agent has paused its connections.
    pub flow_control: FlowControlPolicy,
    /// Per-agent circuit breaker thresholds.
    pub circuit_breaker: CircuitBreakerConfig,
    /// Most correlation affinities kept at once (body chunks following their headers).
    pub affinity_capacity: usize,
    /// Affinities unused for this long are forgotten.
    #[serde(with = "humantime_serde")]
    pub affinity_ttl: Duration,
    /// Outbound connections unused for this long are closed by the maintenance task, keeping at
    /// least one per agent; the closed slots are reopened on demand, as soon as the agent gets a
    /// request again. `None` keeps every connection open. Reverse connections are never closed
    /// for idleness (the pool cannot reopen them).
    #[serde(with = "humantime_serde")]
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
    /// Sets [`connections_per_agent`](Self::connections_per_agent), the connections per agent.
    #[must_use]
    pub fn with_connections_per_agent(mut self, connections_per_agent: usize) -> Self {
        self.connections_per_agent = connections_per_agent;
        self
    }

    /// Sets [`load_balance_strategy`](Self::load_balance_strategy), how requests are spread.
    #[must_use]
    pub fn with_load_balance_strategy(
        mut self,
        load_balance_strategy: LoadBalanceStrategy,
    ) -> Self {
        self.load_balance_strategy = load_balance_strategy;
        self
    }

    /// Sets [`connect_timeout`](Self::connect_timeout), the deadline for establishing a socket.
    #[must_use]
    pub fn with_connect_timeout(mut self, connect_timeout: Duration) -> Self {
        self.connect_timeout = connect_timeout;
        self
    }

    /// Sets [`request_timeout`](Self::request_timeout), the default deadline of every request.
    #[must_use]
    pub fn with_request_timeout(mut self, request_timeout: Duration) -> Self {
        self.request_timeout = request_timeout;
        self
    }

    /// Sets [`client`](Self::client), the per-connection settings.
    #[must_use]
    pub fn with_client(mut self, client: ClientConfig<R>) -> Self {
        self.client = client;
        self
    }

    /// Sets [`reconnect`](Self::reconnect), the delay between reconnection attempts.
    #[must_use]
    pub fn with_reconnect(mut self, reconnect: Backoff) -> Self {
        self.reconnect = reconnect;
        self
    }

    /// Sets [`health_check_interval`](Self::health_check_interval), the maintenance period.
    #[must_use]
    pub fn with_health_check_interval(mut self, health_check_interval: Duration) -> Self {
        self.health_check_interval = health_check_interval;
        self
    }

    /// Sets [`flow_control`](Self::flow_control), what a request does when the agent paused.
    #[must_use]
    pub fn with_flow_control(mut self, flow_control: FlowControlPolicy) -> Self {
        self.flow_control = flow_control;
        self
    }

    /// Sets [`circuit_breaker`](Self::circuit_breaker), the per-agent breaker thresholds.
    #[must_use]
    pub fn with_circuit_breaker(mut self, circuit_breaker: CircuitBreakerConfig) -> Self {
        self.circuit_breaker = circuit_breaker;
        self
    }

    /// Sets [`affinity_capacity`](Self::affinity_capacity), the most affinities kept at once.
    #[must_use]
    pub fn with_affinity_capacity(mut self, affinity_capacity: usize) -> Self {
        self.affinity_capacity = affinity_capacity;
        self
    }

    /// Sets [`affinity_ttl`](Self::affinity_ttl), how long an unused affinity is kept.
    #[must_use]
    pub fn with_affinity_ttl(mut self, affinity_ttl: Duration) -> Self {
        self.affinity_ttl = affinity_ttl;
        self
    }

    /// Sets [`idle_timeout`](Self::idle_timeout): idle connections close after it; `None` never.
    #[must_use]
    pub fn with_idle_timeout(mut self, idle_timeout: Option<Duration>) -> Self {
        self.idle_timeout = idle_timeout;
        self
    }

    /// Sets [`metrics_prefix`](Self::metrics_prefix), the prefix of the pool's metric families.
    #[must_use]
    pub fn with_metrics_prefix(mut self, metrics_prefix: impl Into<String>) -> Self {
        self.metrics_prefix = metrics_prefix.into();
        self
    }

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

/// Reads the pool's `client` section, refusing the two timeouts that
/// [`AgentPoolConfig::client_config`] replaces with the pool's own: set to anything but their
/// default, they can only have been meant to apply, and would silently not.
fn client_without_pool_timeouts<'de, D: Deserializer<'de>, R: Runtime>(
    deserializer: D,
) -> Result<ClientConfig<R>, D::Error> {
    let client = ClientConfig::<R>::deserialize(deserializer)?;
    let defaults = ClientConfig::<R>::default();
    if client.connect_timeout != defaults.connect_timeout {
        return Err(D::Error::custom(
            "client.connect_timeout is replaced by the pool's connect_timeout: set \
             connect_timeout instead",
        ));
    }
    if client.connection.request_timeout != defaults.connection.request_timeout {
        return Err(D::Error::custom(
            "client.connection.request_timeout is replaced by the pool's request_timeout: set \
             request_timeout instead",
        ));
    }
    Ok(client)
}
