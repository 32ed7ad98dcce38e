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
//!   the configured [`FlowControlMode`] applies.
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

mod affinity;
mod config;
mod entry;
mod error;
mod maintenance;

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::hash::BuildHasher;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::Poll;
use std::time::{Duration, Instant};

use agent_protocol_core::handshake::HandshakeError;
use agent_protocol_core::metrics::{AgentMetricsStore, DecisionKind, ErrorCause, PoolMetrics};
use agent_protocol_core::pool::{
    render_pool_gauges, report_series, AgentGauges, CircuitState, Endpoint, FlowControlMode,
    FlowDecision, SelectError,
};
use agent_protocol_core::{
    AgentResponse, CancelReason, ConfigUpdateRequest, ConfigureEvent, ConnectionError, Decision,
    Event, GuardrailInspectEvent, RequestBodyChunkEvent, RequestCompleteEvent, RequestError,
    RequestHeadersEvent, ResponseBodyChunkEvent, ResponseHeadersEvent, SubmitError,
    WebSocketFrameEvent,
};
use arc_swap::ArcSwap;
use tokio::sync::{mpsc, watch, Notify};

use self::affinity::{ConnId, ShardedAffinity};
use self::entry::{lock, AgentEntry, Candidates, Origin, PooledConnection};
use crate::client::{AgentClient, ClientConfig, ClientError, ControlMessage};
use crate::runtime::{self, Runtime};

pub use self::config::AgentPoolConfig;
pub use self::error::PoolError;

/// Capacity of the channel carrying agents' config-update requests to
/// [`AgentPool::take_config_updates`]; beyond it requests are dropped (and logged).
pub const CONFIG_UPDATE_BUFFER: usize = 64;

/// Capacity of each connection's control channel (metrics reports, config updates).
const CONTROL_BUFFER: usize = 16;

/// Extra time allowed over the core's own handshake deadline before the pool gives up on a
/// handshake (the core always ends it by its deadline; this only guards against a stuck task).
const HANDSHAKE_GRACE: Duration = Duration::from_millis(500);

/// While waiting for a resume, re-check at least this often (a per-request resume or a credit
/// update is not visible in the connection's status, only through its notification).
const RESUME_RECHECK: Duration = Duration::from_millis(10);

/// How often drains (shutdown, agent removal) look at the in-flight counts.
const DRAIN_POLL: Duration = Duration::from_millis(5);

/// A config-update request an agent sent (0x32), with the id the pool knows it by.
#[derive(Clone, Debug, PartialEq)]
pub struct AgentConfigUpdate {
    /// The agent, as named in the pool (not as the agent named itself).
    pub agent_id: String,
    /// What it asked for.
    pub request: ConfigUpdateRequest,
}

/// A snapshot of one agent, from [`AgentPool::stats`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentStats {
    /// The agent id.
    pub agent_id: String,
    /// Its endpoint, or `None` for an agent known only through reverse connections.
    pub endpoint: Option<String>,
    /// Connections in its list (connected or about to be pruned).
    pub connections: usize,
    /// Of those, connected.
    pub connected: usize,
    /// Connected and reporting healthy.
    pub healthy: usize,
    /// Connected and reporting degraded.
    pub degraded: usize,
    /// Connected and paused by the agent's flow control.
    pub paused: usize,
    /// Requests currently inside pool calls for this agent.
    pub in_flight: u64,
    /// Requests started.
    pub requests: u64,
    /// Requests that failed (every cause, timeouts included; flow-control rejections and
    /// cancels excluded).
    pub errors: u64,
    /// Of those, timeouts.
    pub timeouts: u64,
    /// The breaker's state.
    pub circuit: CircuitState,
}

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

pub(crate) struct PoolInner<R: Runtime> {
    config: AgentPoolConfig<R>,
    client_config: ClientConfig<R>,
    agents: ArcSwap<HashMap<String, Arc<AgentEntry>>>,
    /// Serialises the rare writers of `agents` and holds ids being added. Never taken on the
    /// request path.
    writer: Mutex<HashSet<String>>,
    next_agent_index: AtomicU32,
    next_conn_id: AtomicU64,
    affinity: ShardedAffinity,
    agent_metrics: Mutex<AgentMetricsStore>,
    config_updates: mpsc::Sender<AgentConfigUpdate>,
    config_updates_rx: Mutex<Option<mpsc::Receiver<AgentConfigUpdate>>>,
    /// Set by shutdown; with `active`, a Dekker-style pair (both SeqCst) so shutdown never
    /// misses a request that got in.
    closing: AtomicBool,
    active: AtomicUsize,
    /// Wakes the maintenance task early (a connection died, parked slots are wanted).
    wake: Arc<Notify>,
    /// Dropped (or set) to stop the maintenance task.
    stop: watch::Sender<bool>,
    weak: Weak<PoolInner<R>>,
}

/// How an event picks its connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    /// Load balancing only (guardrail inspections, configuration).
    Select,
    /// Load balancing, then pin the request to the chosen connection (request headers).
    Bind,
    /// The pinned connection or nothing (body chunks: the stream state lives there).
    Strict,
    /// The pinned connection if it is alive, else load balancing (response headers, WebSocket
    /// frames).
    Prefer,
    /// Like `Prefer`, then forget the pin (request complete).
    Complete,
}

impl Route {
    fn of(event: &Event) -> Self {
        match event {
            Event::RequestHeaders(_) => Self::Bind,
            Event::RequestBodyChunk(_) | Event::ResponseBodyChunk(_) => Self::Strict,
            Event::ResponseHeaders(_) | Event::WebSocketFrame(_) => Self::Prefer,
            Event::RequestComplete(_) => Self::Complete,
            Event::GuardrailInspect(_) | Event::Configure(_) => Self::Select,
        }
    }
}

/// Why no connection was picked.
enum Pick {
    /// Every candidate is paused by flow control: apply the policy, waiting on these.
    Blocked(Vec<Arc<PooledConnection>>),
    /// A plain failure.
    Fail(PoolError, Verdict),
}

/// What a request's outcome means for the agent's circuit breaker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    Success,
    Failure,
    Neutral,
}

/// What the flow-control policy says after a pause was met.
// Built once per pause and consumed at once; boxing the outcome would allocate on the path
// that is already the slow one without saving anything.
#[allow(clippy::large_enum_variant)]
enum Flow {
    Retry,
    Done(Result<AgentResponse, PoolError>),
}

/// How a client error counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    Timeout,
    Cancelled,
    Connection,
    Protocol,
    Serialization,
    Rejected,
}

fn classify(e: &ClientError) -> Class {
    match e {
        ClientError::QueueTimeout(_) | ClientError::Request(RequestError::Timeout(_)) => {
            Class::Timeout
        }
        ClientError::Request(RequestError::Cancelled(_)) => Class::Cancelled,
        ClientError::Connect { .. }
        | ClientError::Closed(_)
        | ClientError::Request(RequestError::ConnectionClosed(_))
        | ClientError::Rejected(SubmitError::NotReady | SubmitError::Closed(_)) => {
            Class::Connection
        }
        ClientError::Request(RequestError::MalformedResponse(_)) => Class::Protocol,
        ClientError::Rejected(SubmitError::Encode(_)) => Class::Serialization,
        ClientError::Rejected(_) => Class::Rejected,
    }
}

fn decision_kind(d: &Decision) -> DecisionKind {
    match d {
        Decision::Allow => DecisionKind::Allow,
        Decision::Block { .. } => DecisionKind::Block,
        Decision::Redirect { .. } => DecisionKind::Redirect,
        Decision::Challenge { .. } => DecisionKind::Challenge,
    }
}

/// A random `u64` for jitter and selector seeds (not for anything security related).
pub(crate) fn random_u64() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    RandomState::new().hash_one((n, Instant::now()))
}

fn deadline_after(start: Instant, timeout: Duration) -> Instant {
    let mut t = timeout;
    loop {
        if let Some(d) = start.checked_add(t) {
            return d;
        }
        t /= 2;
    }
}

/// Counts a call in [`PoolInner::active`] until dropped.
struct ActiveGuard<'a, R: Runtime>(&'a PoolInner<R>);

impl<R: Runtime> Drop for ActiveGuard<'_, R> {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::SeqCst);
    }
}

/// An id held in the writer set while [`AgentPool::add_agent`] connects.
struct Reservation<'a, R: Runtime> {
    inner: &'a PoolInner<R>,
    id: String,
}

impl<R: Runtime> Drop for Reservation<'_, R> {
    fn drop(&mut self) {
        lock(&self.inner.writer).remove(&self.id);
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
        let (updates_tx, updates_rx) = mpsc::channel(CONFIG_UPDATE_BUFFER);
        let (stop_tx, stop_rx) = watch::channel(false);
        let wake = Arc::new(Notify::new());
        let client_config = config.client_config();
        let tick = config.tick();
        let inner = Arc::new_cyclic(|weak| PoolInner {
            affinity: ShardedAffinity::new(config.affinity_capacity, config.affinity_ttl),
            client_config,
            agents: ArcSwap::from_pointee(HashMap::new()),
            writer: Mutex::new(HashSet::new()),
            next_agent_index: AtomicU32::new(0),
            next_conn_id: AtomicU64::new(0),
            agent_metrics: Mutex::new(AgentMetricsStore::new()),
            config_updates: updates_tx,
            config_updates_rx: Mutex::new(Some(updates_rx)),
            closing: AtomicBool::new(false),
            active: AtomicUsize::new(0),
            wake: wake.clone(),
            stop: stop_tx,
            weak: weak.clone(),
            config,
        });
        R::spawn(maintenance::run(
            Arc::downgrade(&inner),
            stop_rx,
            wake,
            tick,
        ));
        Self { inner }
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
    /// `ProcessStream` per pool connection; `https` takes its TLS settings from
    /// `client.transport`) on tokio with the `grpc` feature; refused with
    /// [`PoolError::GrpcUnavailable`] where the runtime adapter cannot open them.
    ///
    /// Succeeds when at least one connection opened; the others are retried in the background
    /// with backoff. Fails with [`PoolError::AlreadyExists`] when the id is taken (remove the old
    /// agent first: nothing is replaced silently), and with [`PoolError::ConnectFailed`] when no
    /// connection could be opened (the agent is then not added).
    pub async fn add_agent(&self, agent_id: &str, endpoint: &str) -> Result<(), PoolError> {
        let inner = &self.inner;
        if inner.is_closing() {
            return Err(PoolError::ShuttingDown);
        }
        let parsed = Endpoint::parse(endpoint).map_err(|source| PoolError::Endpoint {
            endpoint: endpoint.to_owned(),
            source,
        })?;
        if let Endpoint::Grpc { uri, .. } = &parsed {
            if !R::opens_grpc() {
                return Err(PoolError::GrpcUnavailable {
                    endpoint: uri.clone(),
                });
            }
        }
        let _reservation = inner.reserve(agent_id)?;
        let n = inner.config.per_agent();
        let entry = Arc::new(inner.new_entry(agent_id, Origin::Outbound(parsed.clone())));
        let results = futures_util::future::join_all((0..n).map(|_| {
            open_client(
                inner.weak.clone(),
                entry.id.clone(),
                &parsed,
                &inner.client_config,
            )
        }))
        .await;

        let now = Instant::now();
        let mut opened = Vec::new();
        let mut last_error = None;
        {
            let mut slots = entry.lock_slots();
            for (slot, result) in results.into_iter().enumerate() {
                match result {
                    Ok(client) => {
                        let conn = inner.wrap(slot, client);
                        opened.push(conn.clone());
                        entry.install(&mut slots, conn);
                    }
                    Err(e) => {
                        if let Some(s) = slots.get_mut(slot) {
                            s.schedule.record_failure(now, random_u64());
                        }
                        tracing::warn!(agent = agent_id, slot, error = %e, "agent connection failed");
                        last_error = Some(e);
                    }
                }
            }
        }
        if opened.is_empty() {
            return Err(PoolError::ConnectFailed {
                agent: agent_id.to_owned(),
                attempted: n,
                source: last_error.unwrap_or(ClientError::Closed(ConnectionError::LocalClose)),
            });
        }
        if let Err(e) = inner.publish(entry) {
            for c in opened {
                c.client.close().await;
            }
            return Err(e);
        }
        // Let maintenance schedule the slots that failed.
        inner.wake.notify_one();
        tracing::info!(
            agent = agent_id,
            endpoint,
            connections = opened.len(),
            "agent added"
        );
        Ok(())
    }

    /// Removes an agent: new requests fail with [`PoolError::AgentNotFound`] at once, requests
    /// already in flight may finish (up to `request_timeout`), then its connections are closed
    /// (anything still pending then fails as closed). Its affinities and reported metric
    /// series are dropped.
    pub async fn remove_agent(&self, agent_id: &str) -> Result<(), PoolError> {
        let inner = &self.inner;
        let entry = inner
            .unpublish(agent_id)
            .ok_or_else(|| PoolError::AgentNotFound(agent_id.to_owned()))?;
        entry.removed.store(true, Ordering::SeqCst);
        inner.affinity.remove_agent(entry.index);
        lock(&inner.agent_metrics).remove_agent(agent_id);
        let metrics = entry.metrics.clone();
        wait_for::<R>(
            || metrics.in_flight() == 0,
            deadline_after(Instant::now(), inner.config.request_timeout),
        )
        .await;
        close_all(&entry).await;
        tracing::info!(agent = agent_id, "agent removed");
        Ok(())
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
        let inner = &self.inner;
        if inner.is_closing() {
            return Err(PoolError::ShuttingDown);
        }
        let entry = {
            let writer = lock(&inner.writer);
            if writer.contains(agent_id) {
                return Err(PoolError::AlreadyExists(agent_id.to_owned()));
            }
            match inner.agents.load().get(agent_id) {
                Some(e) => e.clone(),
                None => {
                    let e = Arc::new(inner.new_entry(agent_id, Origin::Reverse));
                    let mut map = HashMap::clone(&inner.agents.load());
                    map.insert(agent_id.to_owned(), e.clone());
                    inner.agents.store(Arc::new(map));
                    e
                }
            }
        };
        let mut slots = entry.lock_slots();
        if entry.removed.load(Ordering::SeqCst) {
            return Err(PoolError::AgentNotFound(agent_id.to_owned()));
        }
        entry.prune_dead(&mut slots);
        let taken: Vec<usize> = entry.conns.load().iter().map(|c| c.slot).collect();
        let free = (0..slots.len()).find(|i| !taken.contains(i) && !slots[*i].connecting);
        let Some(slot) = free else {
            return Err(PoolError::Full {
                agent: agent_id.to_owned(),
                limit: slots.len(),
            });
        };
        if let Some(s) = slots.get_mut(slot) {
            s.parked = false;
            s.schedule.record_success();
        }
        let conn = inner.wrap(slot, client);
        entry.install(&mut slots, conn);
        tracing::info!(agent = agent_id, slot, "reverse connection added");
        Ok(())
    }

    /// A control channel for a connection of `agent_id` created outside the pool (the reverse
    /// listener's): metrics reports sent through it are stored under `agent_id` (whatever id the
    /// report claims) and rendered by [`render_prometheus`](Self::render_prometheus), and
    /// config-update requests go to [`take_config_updates`](Self::take_config_updates). Spawns
    /// a small task that ends when the connection drops the sender, so it must be called
    /// where the pool's runtime can spawn (on tokio: inside a Tokio runtime).
    pub fn control_sender(&self, agent_id: &str) -> mpsc::Sender<ControlMessage> {
        control_channel(self.inner.weak.clone(), Arc::from(agent_id))
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
    pub async fn send_request_headers(
        &self,
        agent_id: &str,
        event: RequestHeadersEvent,
    ) -> Result<AgentResponse, PoolError> {
        self.send_event(agent_id, Event::RequestHeaders(event))
            .await
    }

    /// Sends a request body chunk down the connection that carried the request's headers. If
    /// that connection is gone the chunk fails with [`PoolError::AffinityLost`]; without any
    /// affinity (headers sent elsewhere, or the table was full) it is load balanced.
    pub async fn send_request_body_chunk(
        &self,
        agent_id: &str,
        event: RequestBodyChunkEvent,
    ) -> Result<AgentResponse, PoolError> {
        self.send_event(agent_id, Event::RequestBodyChunk(event))
            .await
    }

    /// Sends response headers, on the request's connection when it is still alive, otherwise
    /// on any (response headers start no stream state that a new connection lacks).
    pub async fn send_response_headers(
        &self,
        agent_id: &str,
        event: ResponseHeadersEvent,
    ) -> Result<AgentResponse, PoolError> {
        self.send_event(agent_id, Event::ResponseHeaders(event))
            .await
    }

    /// Sends a response body chunk; routed like
    /// [`send_request_body_chunk`](Self::send_request_body_chunk).
    pub async fn send_response_body_chunk(
        &self,
        agent_id: &str,
        event: ResponseBodyChunkEvent,
    ) -> Result<AgentResponse, PoolError> {
        self.send_event(agent_id, Event::ResponseBodyChunk(event))
            .await
    }

    /// Sends request-complete on the request's connection (when alive, else any), then forgets
    /// the request's affinity, whatever the outcome.
    pub async fn send_request_complete(
        &self,
        agent_id: &str,
        event: RequestCompleteEvent,
    ) -> Result<AgentResponse, PoolError> {
        self.send_event(agent_id, Event::RequestComplete(event))
            .await
    }

    /// Sends a WebSocket frame, on the upgrade request's connection when it is still alive.
    pub async fn send_websocket_frame(
        &self,
        agent_id: &str,
        event: WebSocketFrameEvent,
    ) -> Result<AgentResponse, PoolError> {
        self.send_event(agent_id, Event::WebSocketFrame(event))
            .await
    }

    /// Sends a guardrail inspection (load balanced; one-shot, no affinity).
    pub async fn send_guardrail_inspect(
        &self,
        agent_id: &str,
        event: GuardrailInspectEvent,
    ) -> Result<AgentResponse, PoolError> {
        self.send_event(agent_id, Event::GuardrailInspect(event))
            .await
    }

    /// Sends a Configure event to one connection of the agent (load balanced). Configuration
    /// every new connection should get belongs in `client.connection.handshake.config`.
    pub async fn send_configure(
        &self,
        agent_id: &str,
        event: ConfigureEvent,
    ) -> Result<AgentResponse, PoolError> {
        self.send_event(agent_id, Event::Configure(event)).await
    }

    /// Sends any event with the configured request timeout, routed by its kind as the typed
    /// methods describe.
    pub async fn send_event(
        &self,
        agent_id: &str,
        event: Event,
    ) -> Result<AgentResponse, PoolError> {
        self.send_event_with_timeout(agent_id, event, self.inner.config.request_timeout)
            .await
    }

    /// Sends any event with its own timeout, counted from this call (queueing and flow-control
    /// waits included). Exactly one outcome is returned by then.
    pub async fn send_event_with_timeout(
        &self,
        agent_id: &str,
        event: Event,
        timeout: Duration,
    ) -> Result<AgentResponse, PoolError> {
        let submitted = Instant::now();
        let deadline = deadline_after(submitted, timeout);
        let inner = &*self.inner;
        let _active = inner.enter()?;
        let entry = inner
            .entry(agent_id)
            .ok_or_else(|| PoolError::AgentNotFound(agent_id.to_owned()))?;
        let _in_flight = entry.metrics.start_request();
        let permit = match entry.admit(submitted) {
            Ok(p) => p,
            Err(open) => {
                entry.metrics.record_error(ErrorCause::Rejected);
                return Err(PoolError::CircuitOpen {
                    agent: agent_id.to_owned(),
                    retry_in: open.retry_at.saturating_duration_since(submitted),
                });
            }
        };
        let (result, verdict) = inner.run(&entry, event, submitted, deadline).await;
        match verdict {
            Verdict::Success => permit.success(),
            Verdict::Failure => permit.failure(),
            Verdict::Neutral => permit.abandon(),
        }
        result
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
        let inner = &self.inner;
        let entry = inner
            .entry(agent_id)
            .ok_or_else(|| PoolError::AgentNotFound(agent_id.to_owned()))?;
        let conns = entry.conns.load_full();
        let pinned = inner
            .affinity
            .remove(entry.index, correlation_id)
            .and_then(|id| conns.iter().find(|c| c.id == id && c.is_connected()));
        match pinned {
            Some(c) => c.client.cancel(correlation_id, reason).await,
            None => {
                for c in conns.iter() {
                    c.client.cancel(correlation_id, reason).await;
                }
            }
        }
        Ok(())
    }

    /// Ends a request that stops without [`send_request_complete`](Self::send_request_complete)
    /// (call it when the request is over): forgets which connection carries it, and that
    /// connection drops the request's body streams and flow state at once (see
    /// [`AgentClient::end_request`]). Without a known affinity every connection of the agent is
    /// told, since the streams may be on any of them. Returns whether an affinity was known.
    pub fn clear_correlation_affinity(&self, agent_id: &str, correlation_id: &str) -> bool {
        let Some(entry) = self.inner.entry(agent_id) else {
            return false;
        };
        let pinned = self.inner.affinity.remove(entry.index, correlation_id);
        let conns = entry.conns.load();
        match pinned {
            // A pinned connection that is gone took the request's state with it.
            Some(id) => {
                if let Some(c) = conns.iter().find(|c| c.id == id) {
                    c.client.end_request::<R>(correlation_id);
                }
            }
            None => {
                for c in conns.iter() {
                    c.client.end_request::<R>(correlation_id);
                }
            }
        }
        pinned.is_some()
    }

    /// Correlation affinities currently held (all agents).
    pub fn affinity_count(&self) -> usize {
        self.inner.affinity.len()
    }

    /// A snapshot of every agent, sorted by id.
    pub fn stats(&self) -> Vec<AgentStats> {
        let agents = self.inner.agents.load();
        let mut out: Vec<AgentStats> = agents.values().map(|e| agent_stats(e)).collect();
        out.sort_by(|a, b| a.agent_id.cmp(&b.agent_id));
        out
    }

    /// The pool's metrics in Prometheus text format: per agent (label `agent`) the
    /// [`PoolMetrics`] families (`{prefix}_requests_total`, `_responses_total{decision}`,
    /// `_errors_total{cause}`, `_timeouts_total`, `_in_flight_requests`,
    /// `_request_duration_seconds`, flow-control and cancel counters) and the connection gauges
    /// (`{prefix}_connections{state}`, `_paused_connections`, `_circuit_state`,
    /// `_correlation_affinities`); then the series the agents reported in their MetricsReport
    /// frames (label `agent_id`, set by the pool).
    pub fn render_prometheus(&self) -> String {
        let inner = &self.inner;
        let agents = inner.agents.load();
        let mut entries: Vec<&Arc<AgentEntry>> = agents.values().collect();
        entries.sort_by(|a, b| a.id.cmp(&b.id));
        let labels: Vec<[(&str, &str); 1]> = entries.iter().map(|e| [("agent", &*e.id)]).collect();
        let members: Vec<(&PoolMetrics, &[(&str, &str)])> = entries
            .iter()
            .zip(&labels)
            .map(|(e, l)| (&*e.metrics, &l[..]))
            .collect();
        let mut out = String::new();
        PoolMetrics::render_prometheus_group(&inner.config.metrics_prefix, &members, &mut out);
        let gauges: Vec<AgentGauges<'_>> = entries
            .iter()
            .map(|e| AgentGauges {
                agent: &e.id,
                counts: e.counts(),
                circuit: e.circuit_state(),
            })
            .collect();
        render_pool_gauges(
            &inner.config.metrics_prefix,
            &gauges,
            inner.affinity.len(),
            &mut out,
        );
        lock(&inner.agent_metrics).render_prometheus(&mut out);
        out
    }

    /// Stops the pool: new calls fail with [`PoolError::ShuttingDown`] at once; calls in
    /// flight may finish until `drain_timeout`; then every connection is closed (anything still
    /// pending fails as closed), the maintenance task stops and the agents are removed.
    /// Calling it again is harmless.
    pub async fn shutdown(&self, drain_timeout: Duration) {
        let inner = &self.inner;
        inner.closing.store(true, Ordering::SeqCst);
        wait_for::<R>(
            || inner.active.load(Ordering::SeqCst) == 0,
            deadline_after(Instant::now(), drain_timeout),
        )
        .await;
        let _ = inner.stop.send(true);
        let entries: Vec<Arc<AgentEntry>> = {
            let _writer = lock(&inner.writer);
            let old = inner.agents.swap(Arc::new(HashMap::new()));
            old.values().cloned().collect()
        };
        for entry in &entries {
            entry.removed.store(true, Ordering::SeqCst);
            close_all(entry).await;
        }
        inner.affinity.clear();
        tracing::info!(agents = entries.len(), "agent pool shut down");
    }
}

fn agent_stats(e: &AgentEntry) -> AgentStats {
    let c = e.counts();
    let m = &e.metrics;
    let errors: u64 = ErrorCause::ALL
        .iter()
        .map(|cause| m.errors_total(*cause))
        .sum();
    AgentStats {
        agent_id: e.id.to_string(),
        endpoint: match &e.origin {
            Origin::Outbound(ep) => Some(ep.to_string()),
            Origin::Reverse => None,
        },
        connections: c.connections as usize,
        connected: c.connected as usize,
        healthy: c.healthy as usize,
        degraded: c.degraded as usize,
        paused: c.paused as usize,
        in_flight: m.in_flight(),
        requests: m.requests_total(),
        errors: errors + m.timeouts_total(),
        timeouts: m.timeouts_total(),
        circuit: e.circuit_state(),
    }
}

/// Polls `done` until it holds or `deadline` passes.
async fn wait_for<R: Runtime>(done: impl Fn() -> bool, deadline: Instant) {
    while !done() && Instant::now() < deadline {
        runtime::sleep::<R>(DRAIN_POLL.min(deadline.saturating_duration_since(Instant::now())))
            .await;
    }
}

/// Empties the agent's connection list and closes every connection.
async fn close_all(entry: &AgentEntry) {
    let conns = {
        let _slots = entry.lock_slots();
        entry.conns.swap(Arc::new(Vec::new()))
    };
    for c in conns.iter() {
        c.client.close().await;
    }
}

/// Opens one outbound connection: socket within the connect timeout, then the handshake within
/// its own timeout, with a control channel feeding the pool.
async fn open_client<R: Runtime>(
    pool: Weak<PoolInner<R>>,
    agent: Arc<str>,
    endpoint: &Endpoint,
    config: &ClientConfig<R>,
) -> Result<AgentClient<R>, ClientError> {
    // Socket (or channel) within the connect timeout, then the handshake within its own; the
    // outer limit only guards against a transport that ignores them.
    let control = control_channel(pool, agent);
    let limit = config.connect_timeout + config.connection.handshake.timeout;
    let open = AgentClient::connect_endpoint(endpoint, config.clone(), Some(control));
    match runtime::timeout_at::<R, _>(Instant::now() + limit + HANDSHAKE_GRACE, open).await {
        Ok(r) => r,
        Err(_) => Err(ClientError::Closed(ConnectionError::Handshake(
            HandshakeError::Timeout(config.connection.handshake.timeout),
        ))),
    }
}

/// A bounded control channel whose messages are attributed to `agent`.
fn control_channel<R: Runtime>(
    pool: Weak<PoolInner<R>>,
    agent: Arc<str>,
) -> mpsc::Sender<ControlMessage> {
    let (tx, mut rx) = mpsc::channel::<ControlMessage>(CONTROL_BUFFER);
    R::spawn(async move {
        while let Some(message) = rx.recv().await {
            let Some(pool) = pool.upgrade() else { break };
            pool.on_control(&agent, message);
        }
    });
    tx
}

/// Waits until one of `blockers` signals a resume (or closes), `until` passes, or
/// [`RESUME_RECHECK`] elapses. With `check_status`, returns at once when a blocker is already
/// unpaused; the waiters are registered before that check, so a resume in between is not
/// missed.
async fn wait_for_resume<R: Runtime>(
    blockers: &[Arc<PooledConnection>],
    until: Instant,
    check_status: bool,
) {
    type Waiter<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;
    let mut waiters: Vec<Waiter<'_>> = blockers
        .iter()
        .map(|c| Box::pin(c.client.status().resumed()) as Waiter<'_>)
        .collect();
    let mut poll_all = move |cx: &mut std::task::Context<'_>| {
        waiters.iter_mut().any(|w| w.as_mut().poll(cx).is_ready())
    };
    // First poll registers every waiter.
    let ready = std::future::poll_fn(|cx| Poll::Ready(poll_all(cx))).await;
    if ready || (check_status && blockers.iter().any(|c| !c.is_paused())) {
        return;
    }
    let slice = until.min(Instant::now() + RESUME_RECHECK);
    let wait = std::future::poll_fn(|cx| {
        if poll_all(cx) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    });
    let _ = runtime::timeout_at::<R, _>(slice, wait).await;
}

impl<R: Runtime> PoolInner<R> {
    fn is_closing(&self) -> bool {
        self.closing.load(Ordering::SeqCst)
    }

    fn enter(&self) -> Result<ActiveGuard<'_, R>, PoolError> {
        self.active.fetch_add(1, Ordering::SeqCst);
        let guard = ActiveGuard(self);
        if self.closing.load(Ordering::SeqCst) {
            return Err(PoolError::ShuttingDown);
        }
        Ok(guard)
    }

    fn entry(&self, agent_id: &str) -> Option<Arc<AgentEntry>> {
        self.agents.load().get(agent_id).cloned()
    }

    fn new_entry(&self, agent_id: &str, origin: Origin) -> AgentEntry {
        AgentEntry::new(
            agent_id,
            self.next_agent_index.fetch_add(1, Ordering::Relaxed),
            origin,
            self.config.per_agent(),
            self.config.reconnect,
            self.config.circuit_breaker,
            random_u64(),
        )
    }

    fn wrap(&self, slot: usize, client: AgentClient<R>) -> Arc<PooledConnection> {
        let id = self.next_conn_id.fetch_add(1, Ordering::Relaxed);
        Arc::new(PooledConnection::new(id, slot, client.into_handle()))
    }

    fn reserve(&self, agent_id: &str) -> Result<Reservation<'_, R>, PoolError> {
        let mut writer = lock(&self.writer);
        if writer.contains(agent_id) || self.agents.load().contains_key(agent_id) {
            return Err(PoolError::AlreadyExists(agent_id.to_owned()));
        }
        writer.insert(agent_id.to_owned());
        Ok(Reservation {
            inner: self,
            id: agent_id.to_owned(),
        })
    }

    fn publish(&self, entry: Arc<AgentEntry>) -> Result<(), PoolError> {
        let _writer = lock(&self.writer);
        if self.is_closing() {
            return Err(PoolError::ShuttingDown);
        }
        let mut map = HashMap::clone(&self.agents.load());
        map.insert(entry.id.to_string(), entry);
        self.agents.store(Arc::new(map));
        Ok(())
    }

    fn unpublish(&self, agent_id: &str) -> Option<Arc<AgentEntry>> {
        let _writer = lock(&self.writer);
        let current = self.agents.load();
        let entry = current.get(agent_id)?.clone();
        let mut map = HashMap::clone(&current);
        map.remove(agent_id);
        self.agents.store(Arc::new(map));
        Some(entry)
    }

    fn on_control(&self, agent: &str, message: ControlMessage) {
        // Series of an agent no longer (or not yet) in the pool would never be cleaned up.
        if !self.agents.load().contains_key(agent) {
            return;
        }
        match message {
            ControlMessage::Metrics(report) => {
                let (counters, gauges) = report_series(&report);
                let summary =
                    lock(&self.agent_metrics).ingest(agent, &counters, &gauges, Instant::now());
                if summary.invalid + summary.over_limit > 0 {
                    tracing::debug!(
                        agent,
                        invalid = summary.invalid,
                        over_limit = summary.over_limit,
                        "agent metric series dropped"
                    );
                }
            }
            ControlMessage::ConfigUpdate(request) => {
                let update = AgentConfigUpdate {
                    agent_id: agent.to_owned(),
                    request,
                };
                if self.config_updates.try_send(update).is_err() {
                    tracing::debug!(agent, "config update request dropped (nobody receiving)");
                }
            }
        }
    }

    /// Picks the connection for one attempt. Reads atomics and the affinity stripe only.
    fn pick(
        &self,
        entry: &AgentEntry,
        route: Route,
        cid: &str,
        now: Instant,
    ) -> Result<Arc<PooledConnection>, Pick> {
        let conns = entry.conns.load();
        if matches!(route, Route::Strict | Route::Prefer | Route::Complete) {
            if let Some(pinned) = self.affinity.get(entry.index, cid, now) {
                match conns.iter().find(|c| c.id == pinned && c.is_connected()) {
                    Some(c) if c.is_paused() => return Err(Pick::Blocked(vec![c.clone()])),
                    Some(c) => return Ok(c.clone()),
                    None if route == Route::Strict => {
                        return Err(Pick::Fail(
                            PoolError::AffinityLost {
                                agent: entry.id.to_string(),
                                correlation_id: cid.to_owned(),
                            },
                            Verdict::Failure,
                        ))
                    }
                    None => {}
                }
            }
        }
        entry.note_demand(&self.wake);
        let selected = entry
            .selector
            .select(self.config.load_balance_strategy, &Candidates(&conns));
        match selected {
            Ok(i) => conns.get(i).cloned().ok_or_else(|| {
                Pick::Fail(
                    PoolError::NoConnections {
                        agent: entry.id.to_string(),
                    },
                    Verdict::Failure,
                )
            }),
            Err(e) if e.all_paused() => Err(Pick::Blocked(conns.iter().cloned().collect())),
            Err(SelectError::NoConnections) => Err(Pick::Fail(
                PoolError::NoConnections {
                    agent: entry.id.to_string(),
                },
                Verdict::Failure,
            )),
            Err(SelectError::AllUnavailable {
                paused,
                unhealthy,
                disconnected,
                saturated,
            }) => {
                // Saturation and pauses are load, not agent failure; only an agent that is
                // down or says it cannot serve counts against the breaker.
                let verdict = if paused + saturated == 0 {
                    Verdict::Failure
                } else {
                    Verdict::Neutral
                };
                Err(Pick::Fail(
                    PoolError::AllUnavailable {
                        agent: entry.id.to_string(),
                        paused,
                        unhealthy,
                        disconnected,
                        saturated,
                    },
                    verdict,
                ))
            }
        }
    }

    /// Applies the flow-control policy to a request that met a pause.
    async fn backpressure(
        &self,
        entry: &AgentEntry,
        blockers: &[Arc<PooledConnection>],
        check_status: bool,
        submitted: Instant,
        deadline: Instant,
    ) -> Flow {
        let now = Instant::now();
        let reject = || {
            entry.metrics.record_flow_control_rejection();
            Flow::Done(Err(PoolError::FlowControlPaused {
                agent: entry.id.to_string(),
            }))
        };
        match self.config.flow_control.on_paused(submitted, now) {
            FlowDecision::Reject => reject(),
            FlowDecision::AllowWithoutAgent => {
                entry.metrics.record_flow_control_rejection();
                Flow::Done(Ok(AgentResponse::allow()))
            }
            FlowDecision::WaitUntil(limit) => {
                let until = limit.min(deadline);
                if until <= now {
                    return reject();
                }
                wait_for_resume::<R>(blockers, until, check_status).await;
                Flow::Retry
            }
        }
    }

    /// One request, from connection choice to outcome, with every metric recorded. Returns the
    /// outcome and what it means for the breaker.
    async fn run(
        &self,
        entry: &AgentEntry,
        event: Event,
        submitted: Instant,
        deadline: Instant,
    ) -> (Result<AgentResponse, PoolError>, Verdict) {
        let route = Route::of(&event);
        let retry = self.config.flow_control.mode == FlowControlMode::WaitAndRetry;
        loop {
            let cid = event.correlation_id();
            let conn = match self.pick(entry, route, cid, Instant::now()) {
                Ok(c) => c,
                Err(Pick::Blocked(blockers)) => {
                    match self
                        .backpressure(entry, &blockers, true, submitted, deadline)
                        .await
                    {
                        Flow::Retry => continue,
                        Flow::Done(r) => return (r, Verdict::Neutral),
                    }
                }
                Err(Pick::Fail(e, verdict)) => {
                    let connection_lost = matches!(
                        e,
                        PoolError::NoConnections { .. }
                            | PoolError::AffinityLost { .. }
                            | PoolError::AllUnavailable {
                                paused: 0,
                                unhealthy: 0,
                                saturated: 0,
                                ..
                            }
                    );
                    let cause = if connection_lost {
                        // Let maintenance prune and replace what died now, not at its tick.
                        self.wake.notify_one();
                        ErrorCause::Connection
                    } else {
                        ErrorCause::Rejected
                    };
                    entry.metrics.record_error(cause);
                    return (Err(e), verdict);
                }
            };
            if route == Route::Complete {
                // The pin has been used; forget it now, whatever the outcome (done before the
                // event moves into the connection, so no copy of the id is needed).
                self.affinity.remove(entry.index, cid);
            }
            // A gRPC answer carries its id beside the response (its audit values are exactly
            // what the agent set), so headers sent over gRPC keep a copy of the id to pin.
            let grpc_cid = (route == Route::Bind
                && matches!(entry.origin, Origin::Outbound(Endpoint::Grpc { .. })))
            .then(|| cid.to_owned());
            let result = if retry {
                // Keep the event: a pause that races the selection means sending it again.
                let r = send_on::<R>(&conn, event.clone(), deadline).await;
                if let Err(e) = &r {
                    if e.is_flow_control() {
                        match self
                            .backpressure(
                                entry,
                                std::slice::from_ref(&conn),
                                false,
                                submitted,
                                deadline,
                            )
                            .await
                        {
                            Flow::Retry => continue,
                            Flow::Done(r) => return (r, Verdict::Neutral),
                        }
                    }
                }
                r
            } else {
                let r = send_on::<R>(&conn, event, deadline).await;
                if let Err(e) = &r {
                    if e.is_flow_control() {
                        let outcome = match self
                            .backpressure(
                                entry,
                                std::slice::from_ref(&conn),
                                false,
                                submitted,
                                deadline,
                            )
                            .await
                        {
                            Flow::Done(r) => r,
                            // Only wait-and-retry waits, and it never takes this branch.
                            Flow::Retry => Err(PoolError::FlowControlPaused {
                                agent: entry.id.to_string(),
                            }),
                        };
                        return (outcome, Verdict::Neutral);
                    }
                }
                r
            };
            if route == Route::Bind {
                if let Ok(response) = &result {
                    // The answer carries the request's id (it was routed by it), so the pin is
                    // recorded only for headers the agent actually saw: a failed, timed-out or
                    // abandoned request leaves no affinity behind, with no guard and no copy
                    // of the id. A body chunk cannot overtake its headers on one connection
                    // (the connection refuses a second pending event with the same id).
                    // On gRPC the id travels beside the answer; its audit values are the
                    // agent's own.
                    if let Some(cid) = grpc_cid.as_deref().or_else(|| response.correlation_id()) {
                        self.bind(entry, cid, conn.id);
                    }
                }
            }
            return self.conclude(entry, &conn, result, submitted);
        }
    }

    /// Pins `cid` to `conn` (counted when the table is full).
    fn bind(&self, entry: &AgentEntry, cid: &str, conn: ConnId) {
        if self
            .affinity
            .insert(entry.index, cid, conn, Instant::now())
            .is_err()
        {
            entry.metrics.record_affinity_rejection();
        }
    }

    /// Records the outcome of a sent request.
    fn conclude(
        &self,
        entry: &AgentEntry,
        conn: &PooledConnection,
        result: Result<AgentResponse, ClientError>,
        submitted: Instant,
    ) -> (Result<AgentResponse, PoolError>, Verdict) {
        let m = &entry.metrics;
        match result {
            Ok(response) => {
                m.record_response(decision_kind(&response.decision), submitted.elapsed());
                conn.errors.record(true);
                (Ok(response), Verdict::Success)
            }
            Err(e) => {
                let verdict = match classify(&e) {
                    Class::Timeout => {
                        m.record_timeout();
                        conn.errors.record(false);
                        Verdict::Failure
                    }
                    Class::Cancelled => {
                        m.record_cancel();
                        Verdict::Neutral
                    }
                    Class::Connection => {
                        m.record_error(ErrorCause::Connection);
                        conn.errors.record(false);
                        self.wake.notify_one();
                        Verdict::Failure
                    }
                    Class::Protocol => {
                        m.record_error(ErrorCause::Protocol);
                        conn.errors.record(false);
                        Verdict::Failure
                    }
                    Class::Serialization => {
                        m.record_error(ErrorCause::Serialization);
                        Verdict::Neutral
                    }
                    Class::Rejected => {
                        m.record_error(ErrorCause::Rejected);
                        Verdict::Neutral
                    }
                };
                (Err(PoolError::Client(e)), verdict)
            }
        }
    }
}

/// Sends on one connection, counted in its pending gauge for the duration.
async fn send_on<R: Runtime>(
    conn: &PooledConnection,
    event: Event,
    deadline: Instant,
) -> Result<AgentResponse, ClientError> {
    let _pending = conn.begin();
    conn.client.send_until::<R>(event, deadline).await
}
