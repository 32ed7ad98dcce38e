//! [`AgentPool`]: the proxy's view of its agents, several connections each, with load
//! balancing, correlation affinity, flow control, a circuit breaker, reconnection and metrics.
//!
//! Every decision is the core's ([`agent_protocol_core::pool`]): this module wires those rules
//! to live [`AgentClient`] connections, tasks and timers. What it does differently from the
//! reference pool (see also `docs/protocol.md`):
//!
//! - Agents are found without a lock (an [`arc_swap::ArcSwap`] of the agent map, replaced on the
//!   rare add/remove); selecting a connection reads only atomics, allocates nothing and never
//!   awaits, where the reference may block a runtime thread on a lock.
//! - Every request ends exactly once by its deadline, computed once when the call starts and
//!   covering queueing and flow-control waits; a connection that dies fails its requests at once
//!   and is no longer selected.
//! - In-flight gauges and breaker probes are held by guards, and an affinity is recorded only
//!   once the agent answered the headers, so a caller that drops its future leaks nothing
//!   (the reference's counters leak on timeouts, early returns and dropped futures).
//! - Body chunks follow the connection that carried their headers, keyed by (agent,
//!   correlation id), and fail with [`PoolError::AffinityLost`] rather than go down a
//!   connection that does not know their stream, or another agent's connection.
//! - The agent's flow control and reported health are enforced (the reference ignores both);
//!   the configured [`FlowControlMode`](agent_protocol_core::pool::FlowControlMode) applies.
//! - The pool runs its own maintenance task: dead connections are replaced (never accumulated)
//!   with jittered exponential backoff that never gives up; idle connections are
//!   closed and reopened on demand.
//! - Adding an existing agent id is an error, not a silent leak; two reverse
//!   registrations for a new agent cannot both create it; shutdown drains before it
//!   closes (the reference cancels everything first).
//!
//! Agents are reached over Unix sockets, or over what the runtime adapter opens itself (gRPC
//! at `host:port`, `http(s)://host:port` on tokio with the `grpc` feature); other endpoints are
//! refused with [`PoolError::GrpcUnavailable`].
//!
//! The code is split by concept: [`AgentPool`] here is the public face; `registry` holds the
//! agents, their endpoints and connections (and the pool's lifecycle); `request` is the path
//! of one event from the caller to its outcome; `maintenance` is the background task;
//! `entry`, `affinity`, `config` and `error` hold what those share.

mod affinity;
mod config;
mod entry;
mod error;
mod maintenance;
mod registry;
mod request;

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use agent_protocol_core::metrics::PoolMetrics;
use agent_protocol_core::{
    AgentResponse, CancelReason, ConfigureEvent, Event, GuardrailInspectEvent,
    RequestBodyChunkEvent, RequestCompleteEvent, RequestHeadersEvent, ResponseBodyChunkEvent,
    ResponseHeadersEvent, WebSocketFrameEvent,
};
use tokio::sync::mpsc;

use self::entry::lock;
use self::registry::PoolInner;
use crate::client::{AgentClient, ControlMessage};
use crate::runtime::Runtime;

pub use self::config::AgentPoolConfig;
pub use self::error::PoolError;
pub use self::registry::{AgentConfigUpdate, AgentStats, CONFIG_UPDATE_BUFFER};

/// A pool of connections to agents.
///
/// Cheap to clone (all clones share one pool). Must be created where its runtime can spawn (on
/// tokio: inside a Tokio runtime): it starts its own maintenance task, which stops on
/// [`shutdown`](Self::shutdown) or when the last clone is dropped.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use agent_protocol_tokio::pool::{AgentPool, AgentPoolConfig};
/// use agent_protocol_tokio::core::{Decision, Headers, RequestHeadersEvent, RequestMetadata};
/// use std::time::Duration;
///
/// let pool = AgentPool::new(AgentPoolConfig::default());
/// pool.add_agent("waf", "unix:/run/waf.sock").await?;
///
/// let meta = RequestMetadata { correlation_id: "req-1".into(), ..Default::default() };
/// let headers = RequestHeadersEvent::new(meta, "GET", "/", Headers::new());
/// let answer = pool.send_request_headers("waf", headers).await?;
/// if let Decision::Block { status, .. } = answer.decision {
///     println!("blocked with {status}");
/// }
/// // ... body chunks, response headers ..., then:
/// pool.clear_correlation_affinity("waf", "req-1");
///
/// println!("{}", pool.render_prometheus());
/// pool.shutdown(Duration::from_secs(5)).await;
/// # Ok(()) }
/// ```
pub struct AgentPool<R: Runtime> {
    inner: Arc<PoolInner<R>>,
}

impl<R: Runtime> Clone for AgentPool<R> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<R: Runtime> std::fmt::Debug for AgentPool<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentPool")
            .field("agents", &self.agent_ids())
            .field("closing", &self.inner.closing.load(Ordering::Relaxed))
            .finish()
    }
}

impl<R: Runtime> AgentPool<R> {
    /// A pool with no agents; starts the maintenance task.
    ///
    /// # Panics
    ///
    /// When the runtime cannot spawn here (tokio: outside a Tokio runtime, like
    /// `tokio::spawn`).
    pub fn new(config: AgentPoolConfig<R>) -> Self {
        Self {
            inner: PoolInner::start(config),
        }
    }

    /// The configuration the pool was built with.
    pub fn config(&self) -> &AgentPoolConfig<R> {
        &self.inner.config
    }

    /// Ids of the agents in the pool, sorted.
    pub fn agent_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.inner.agents.load().keys().cloned().collect();
        ids.sort();
        ids
    }

    /// Whether an agent with this id is in the pool.
    pub fn has_agent(&self, agent_id: &str) -> bool {
        self.inner.agents.load().contains_key(agent_id)
    }

    /// The pool's own metrics for one agent (requests, responses, errors, latency, in flight).
    pub fn metrics(&self, agent_id: &str) -> Option<Arc<PoolMetrics>> {
        self.inner.entry(agent_id).map(|e| e.metrics.clone())
    }

    /// Adds an agent reachable at `endpoint` and opens `connections_per_agent` connections to
    /// it concurrently, each within the connect and handshake timeouts.
    ///
    /// Endpoints: `unix:PATH`, an absolute path, or anything ending in `.sock` is a Unix socket;
    /// `host:port` and `http(s)://host:port` are gRPC (one HTTP/2 connection and one
    /// `ProcessStream` per pool connection; `https` takes its TLS settings from the
    /// `client.connector`) on tokio with the `grpc` feature; refused with
    /// [`PoolError::GrpcUnavailable`] where the config's connector does not open them.
    ///
    /// Succeeds when at least one connection opened; the others are retried in the background
    /// with backoff. Fails with [`PoolError::AlreadyExists`] when the id is taken (remove the old
    /// agent first: nothing is replaced silently), and with [`PoolError::ConnectFailed`] when no
    /// connection could be opened (the agent is then not added).
    pub async fn add_agent(&self, agent_id: &str, endpoint: &str) -> Result<(), PoolError> {
        self.inner.add_agent(agent_id, endpoint).await
    }

    /// Removes an agent: new requests fail with [`PoolError::AgentNotFound`] at once, requests
    /// already in flight may finish (up to `request_timeout`), then its connections are closed
    /// (anything still pending then fails as closed). Its affinities and reported metric
    /// series are dropped.
    pub async fn remove_agent(&self, agent_id: &str) -> Result<(), PoolError> {
        self.inner.remove_agent(agent_id).await
    }

    /// Hands the pool a connection the agent opened (a reverse connection, already
    /// registered). Creates the agent if it is not in the pool yet (atomically: two concurrent
    /// first registrations cannot both create it), and refuses with [`PoolError::Full`] when
    /// the agent already has `connections_per_agent` live connections, so the listener can
    /// refuse the registration before announcing success.
    ///
    /// The pool does not reopen reverse connections: when one dies it is dropped from the
    /// agent, which is expected to reconnect. An agent created this way stays in the pool (with
    /// no connections) until [`remove_agent`](Self::remove_agent).
    ///
    /// To receive the agent's metrics and config-update requests, create the client with
    /// [`control_sender`](Self::control_sender) as its control channel.
    pub fn add_reverse_connection(
        &self,
        agent_id: &str,
        client: AgentClient<R>,
    ) -> Result<(), PoolError> {
        self.inner.add_reverse(agent_id, client)
    }

    /// A control channel for a connection of `agent_id` created outside the pool (the reverse
    /// listener's): metrics reports sent through it are stored under `agent_id` (whatever id the
    /// report claims) and rendered by [`render_prometheus`](Self::render_prometheus), and
    /// config-update requests go to [`take_config_updates`](Self::take_config_updates). Spawns
    /// a small task that ends when the connection drops the sender, so it must be called
    /// where the pool's runtime can spawn (on tokio: inside a Tokio runtime).
    pub fn control_sender(&self, agent_id: &str) -> mpsc::Sender<ControlMessage> {
        registry::control_channel(self.inner.weak.clone(), Arc::from(agent_id))
    }

    /// The receiving end of the agents' config-update requests (0x32), each tagged with the
    /// agent id the pool knows. Returns `Some` once; later calls return `None`. Requests that
    /// arrive while nobody receives (or the channel is full) are dropped.
    pub fn take_config_updates(&self) -> Option<mpsc::Receiver<AgentConfigUpdate>> {
        lock(&self.inner.config_updates_rx).take()
    }

    /// Sends request headers. When the agent answers, the connection is remembered for the
    /// request's later events (body chunks, response headers, completion) until
    /// [`clear_correlation_affinity`](Self::clear_correlation_affinity),
    /// [`send_request_complete`](Self::send_request_complete),
    /// [`cancel_request`](Self::cancel_request) or the affinity TTL. A request that fails,
    /// times out or is abandoned leaves no affinity.
    pub fn send_request_headers<'a>(
        &'a self,
        agent_id: &'a str,
        event: RequestHeadersEvent,
    ) -> impl Future<Output = Result<AgentResponse, PoolError>> + 'a {
        self.send_event(agent_id, Event::RequestHeaders(event))
    }

    /// Sends a request body chunk down the connection that carried the request's headers. If
    /// that connection is gone the chunk fails with [`PoolError::AffinityLost`]; without any
    /// affinity (headers sent elsewhere, or the table was full) it is load balanced.
    pub fn send_request_body_chunk<'a>(
        &'a self,
        agent_id: &'a str,
        event: RequestBodyChunkEvent,
    ) -> impl Future<Output = Result<AgentResponse, PoolError>> + 'a {
        self.send_event(agent_id, Event::RequestBodyChunk(event))
    }

    /// Sends response headers, on the request's connection when it is still alive, otherwise
    /// on any (response headers start no stream state that a new connection lacks).
    pub fn send_response_headers<'a>(
        &'a self,
        agent_id: &'a str,
        event: ResponseHeadersEvent,
    ) -> impl Future<Output = Result<AgentResponse, PoolError>> + 'a {
        self.send_event(agent_id, Event::ResponseHeaders(event))
    }

    /// Sends a response body chunk; routed like
    /// [`send_request_body_chunk`](Self::send_request_body_chunk).
    pub fn send_response_body_chunk<'a>(
        &'a self,
        agent_id: &'a str,
        event: ResponseBodyChunkEvent,
    ) -> impl Future<Output = Result<AgentResponse, PoolError>> + 'a {
        self.send_event(agent_id, Event::ResponseBodyChunk(event))
    }

    /// Sends request-complete on the request's connection (when alive, else any), then forgets
    /// the request's affinity, whatever the outcome.
    pub fn send_request_complete<'a>(
        &'a self,
        agent_id: &'a str,
        event: RequestCompleteEvent,
    ) -> impl Future<Output = Result<AgentResponse, PoolError>> + 'a {
        self.send_event(agent_id, Event::RequestComplete(event))
    }

    /// Sends a WebSocket frame, on the upgrade request's connection when it is still alive.
    pub fn send_websocket_frame<'a>(
        &'a self,
        agent_id: &'a str,
        event: WebSocketFrameEvent,
    ) -> impl Future<Output = Result<AgentResponse, PoolError>> + 'a {
        self.send_event(agent_id, Event::WebSocketFrame(event))
    }

    /// Sends a guardrail inspection (load balanced; one-shot, no affinity).
    pub fn send_guardrail_inspect<'a>(
        &'a self,
        agent_id: &'a str,
        event: GuardrailInspectEvent,
    ) -> impl Future<Output = Result<AgentResponse, PoolError>> + 'a {
        self.send_event(agent_id, Event::GuardrailInspect(event))
    }

    /// Sends a Configure event to one connection of the agent (load balanced). Configuration
    /// every new connection should get belongs in `client.connection.handshake.config`.
    pub fn send_configure<'a>(
        &'a self,
        agent_id: &'a str,
        event: ConfigureEvent,
    ) -> impl Future<Output = Result<AgentResponse, PoolError>> + 'a {
        self.send_event(agent_id, Event::Configure(event))
    }

    /// Sends any event with the configured request timeout, routed by its kind as the typed
    /// methods describe.
    pub fn send_event<'a>(
        &'a self,
        agent_id: &'a str,
        event: Event,
    ) -> impl Future<Output = Result<AgentResponse, PoolError>> + 'a {
        self.send_event_with_timeout(agent_id, event, self.inner.config.request_timeout)
    }

    /// Sends any event with its own timeout, counted from this call (queueing and flow-control
    /// waits included). Exactly one outcome is returned by then.
    ///
    /// The request runs in a [`REQUEST`](crate::spans::REQUEST) span (`debug`), naming the
    /// agent, the correlation id and the event's kind.
    pub fn send_event_with_timeout<'a>(
        &'a self,
        agent_id: &'a str,
        event: Event,
        timeout: Duration,
    ) -> impl Future<Output = Result<AgentResponse, PoolError>> + 'a {
        // The request's own future, not one wrapped around it: each layer of `async fn` would
        // move the event (some 500 bytes) and its answer once more.
        self.inner.request(agent_id, event, timeout)
    }

    /// Cancels a pending event of a request: on the request's connection when its affinity is
    /// known and alive, else on every connection of the agent (a connection without that
    /// request ignores it). The waiting caller gets a cancelled error at once and the agent is
    /// told. The request's affinity is forgotten.
    pub async fn cancel_request(
        &self,
        agent_id: &str,
        correlation_id: &str,
        reason: CancelReason,
    ) -> Result<(), PoolError> {
        self.inner.cancel(agent_id, correlation_id, reason).await
    }

    /// Ends a request that stops without [`send_request_complete`](Self::send_request_complete)
    /// (call it when the request is over): forgets which connection carries it, and that
    /// connection drops the request's body streams and flow state at once (see
    /// [`AgentClient::end_request`]). Without a known affinity every connection of the agent is
    /// told, since the streams may be on any of them. Returns whether an affinity was known.
    pub fn clear_correlation_affinity(&self, agent_id: &str, correlation_id: &str) -> bool {
        self.inner.end_request(agent_id, correlation_id)
    }

    /// Correlation affinities currently held (all agents).
    pub fn affinity_count(&self) -> usize {
        self.inner.affinity.len()
    }

    /// A snapshot of every agent, sorted by id.
    pub fn stats(&self) -> Vec<AgentStats> {
        self.inner.stats()
    }

    /// Puts the pool's metrics in `registry` (the proxy's own, beside its other metrics), read
    /// at each scrape: per agent (label `agent`) the [`PoolMetrics`] families
    /// (`{prefix}_requests_total`, `_responses_total{decision}`, `_errors_total{cause}`,
    /// `_timeouts_total`, `_in_flight_requests`, `_request_duration_seconds`, flow-control and
    /// cancel counters) and the connection gauges (`{prefix}_connections{state}`,
    /// `_paused_connections`, `_circuit_state`, `_correlation_affinities`); then the series the
    /// agents reported in their MetricsReport frames (label `agent_id`, set by the pool). The
    /// registry holds the pool weakly: a pool shut down and dropped just stops appearing.
    ///
    /// ```
    /// use agent_protocol_tokio::metrics::{prometheus_client::registry::Registry, render_openmetrics};
    /// use agent_protocol_tokio::pool::{AgentPool, AgentPoolConfig};
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// let pool = AgentPool::new(AgentPoolConfig::default());
    /// let mut registry = Registry::default();
    /// pool.register_metrics(&mut registry);
    /// let text = render_openmetrics(&registry); // what GET /metrics serves
    /// assert!(text.contains("# TYPE agent_protocol_correlation_affinities gauge"));
    /// # pool.shutdown(std::time::Duration::ZERO).await;
    /// # });
    /// ```
    pub fn register_metrics(
        &self,
        registry: &mut crate::metrics::prometheus_client::registry::Registry,
    ) {
        let pool = Arc::downgrade(&self.inner);
        registry.register_collector(Box::new(crate::metrics::EncodeFn::new(
            move |encoder| match pool.upgrade() {
                Some(pool) => pool.encode_metrics(encoder),
                None => Ok(()),
            },
        )));
    }

    /// [`register_metrics`](Self::register_metrics) on a registry of its own, as OpenMetrics
    /// text: for a quick look, or a proxy without a registry.
    pub fn render_prometheus(&self) -> String {
        let mut registry = crate::metrics::prometheus_client::registry::Registry::default();
        self.register_metrics(&mut registry);
        crate::metrics::render_openmetrics(&registry)
    }

    /// Stops the pool: new calls fail with [`PoolError::ShuttingDown`] at once; calls in
    /// flight may finish until `drain_timeout`; then every connection is closed (anything still
    /// pending fails as closed), the maintenance task stops and the agents are removed.
    /// Calling it again is harmless.
    pub async fn shutdown(&self, drain_timeout: Duration) {
        self.inner.shutdown(drain_timeout).await
    }
}
