//! The pool's registry: which agents it holds, how each is reached, and their connections.
//!
//! [`PoolInner`] is the state every [`AgentPool`] clone shares. The agent map is an
//! [`ArcSwap`] read without a lock on every request and replaced whole by the rare writers
//! (adding and removing agents, reverse registrations, shutdown), which serialise on one mutex
//! that is never taken on the request path. This module also opens outbound connections,
//! routes what agents push on their control channels (metrics reports, config-update
//! requests), and ends the pool's life: draining, then closing every connection.
//!
//! [`AgentPool`]: super::AgentPool

use std::collections::hash_map::RandomState;
use std::collections::HashSet;
use std::fmt;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use agent_protocol_core::handshake::HandshakeError;
use agent_protocol_core::metrics::{AgentMetricsStore, ErrorCause, PoolMetrics};
use agent_protocol_core::pool::{report_series, AgentGauges, CircuitState, Endpoint};
use agent_protocol_core::{ConfigUpdateRequest, ConnectionError};
use arc_swap::ArcSwap;
use foldhash::{HashMap, HashMapExt};
use tokio::sync::{mpsc, watch, Notify};
use tracing::Instrument;

use super::affinity::ShardedAffinity;
use super::entry::{lock, AgentEntry, Origin, PooledConnection};
use super::{maintenance, AgentPoolConfig, PoolError};
use crate::client::{AgentClient, ClientConfig, ClientError, ControlMessage};
use crate::metrics::{self, prometheus_client::encoding::DescriptorEncoder};
use crate::runtime::{self, Runtime};
use crate::spans;

/// Capacity of the channel carrying agents' config-update requests to
/// [`AgentPool::take_config_updates`]; beyond it requests are dropped (and logged).
///
/// [`AgentPool::take_config_updates`]: super::AgentPool::take_config_updates
pub const CONFIG_UPDATE_BUFFER: usize = 64;

/// Capacity of each connection's control channel (metrics reports, config updates).
const CONTROL_BUFFER: usize = 16;

/// Extra time allowed over the core's own handshake deadline before the pool gives up on a
/// handshake (the core always ends it by its deadline; this only guards against a stuck task).
const HANDSHAKE_GRACE: Duration = Duration::from_millis(500);

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
///
/// [`AgentPool::stats`]: super::AgentPool::stats
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

/// The state shared by every clone of one pool.
pub(super) struct PoolInner<R: Runtime> {
    pub(super) config: AgentPoolConfig<R>,
    pub(super) client_config: ClientConfig<R>,
    pub(super) agents: ArcSwap<HashMap<String, Arc<AgentEntry>>>,
    /// Serialises the rare writers of `agents` and holds ids being added. Never taken on the
    /// request path.
    writer: Mutex<HashSet<String>>,
    next_agent_index: AtomicU32,
    next_conn_id: AtomicU64,
    pub(super) affinity: ShardedAffinity,
    pub(super) agent_metrics: Mutex<AgentMetricsStore>,
    config_updates: mpsc::Sender<AgentConfigUpdate>,
    pub(super) config_updates_rx: Mutex<Option<mpsc::Receiver<AgentConfigUpdate>>>,
    /// Set by shutdown; with `active`, a Dekker-style pair (both SeqCst) so shutdown never
    /// misses a request that got in.
    pub(super) closing: AtomicBool,
    active: AtomicUsize,
    /// Wakes the maintenance task early (a connection died, parked slots are wanted).
    pub(super) wake: Arc<Notify>,
    /// Dropped (or set) to stop the maintenance task.
    stop: watch::Sender<bool>,
    pub(super) weak: Weak<PoolInner<R>>,
}

/// Counts a call in [`PoolInner::active`] until dropped.
pub(super) struct ActiveGuard<'a, R: Runtime>(&'a PoolInner<R>);

impl<R: Runtime> Drop for ActiveGuard<'_, R> {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::SeqCst);
    }
}

/// An id held in the writer set while [`PoolInner::add_agent`] connects.
struct Reservation<'a, R: Runtime> {
    inner: &'a PoolInner<R>,
    id: String,
}

impl<R: Runtime> Drop for Reservation<'_, R> {
    fn drop(&mut self) {
        lock(&self.inner.writer).remove(&self.id);
    }
}

impl<R: Runtime> PoolInner<R> {
    /// A pool with no agents, its maintenance task running.
    pub(super) fn start(config: AgentPoolConfig<R>) -> Arc<Self> {
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
            agent_metrics: Mutex::new(AgentMetricsStore::new().reserving(&config.metrics_prefix)),
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
        inner
    }

    pub(super) fn is_closing(&self) -> bool {
        self.closing.load(Ordering::SeqCst)
    }

    /// Lets a call in unless the pool is shutting down; the call is counted (and drained by
    /// [`shutdown`](Self::shutdown)) until the guard drops.
    pub(super) fn enter(&self) -> Result<ActiveGuard<'_, R>, PoolError> {
        self.active.fetch_add(1, Ordering::SeqCst);
        let guard = ActiveGuard(self);
        if self.closing.load(Ordering::SeqCst) {
            return Err(PoolError::ShuttingDown);
        }
        Ok(guard)
    }

    pub(super) fn entry(&self, agent_id: &str) -> Option<Arc<AgentEntry>> {
        self.agents.load().get(agent_id).cloned()
    }

    /// Connects to a new agent at `endpoint`; see [`AgentPool::add_agent`].
    ///
    /// [`AgentPool::add_agent`]: super::AgentPool::add_agent
    pub(super) async fn add_agent(&self, agent_id: &str, endpoint: &str) -> Result<(), PoolError> {
        if self.is_closing() {
            return Err(PoolError::ShuttingDown);
        }
        let parsed = Endpoint::parse(endpoint).map_err(|source| PoolError::Endpoint {
            endpoint: endpoint.to_owned(),
            source,
        })?;
        if !self.client_config.opens(&parsed) {
            return Err(PoolError::GrpcUnavailable {
                endpoint: parsed.to_string(),
            });
        }
        let _reservation = self.reserve(agent_id)?;
        let n = self.config.per_agent();
        let entry = Arc::new(self.new_entry(agent_id, Origin::Outbound(parsed.clone())));
        let results = futures_util::future::join_all((0..n).map(|_| {
            open_client(
                self.weak.clone(),
                entry.id.clone(),
                &parsed,
                &self.client_config,
            )
        }))
        .await;

        let now = R::now();
        let mut opened = Vec::new();
        let mut last_error = None;
        {
            let mut slots = entry.lock_slots();
            for (slot, result) in results.into_iter().enumerate() {
                match result {
                    Ok(client) => {
                        let conn = self.wrap(slot, client);
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
        // At least one connection was attempted (`per_agent` is at least 1), so when none
        // opened there is a last error to report.
        if let (true, Some(source)) = (opened.is_empty(), last_error) {
            return Err(PoolError::ConnectFailed {
                agent: agent_id.to_owned(),
                attempted: n,
                source,
            });
        }
        if let Err(e) = self.publish(entry) {
            for c in opened {
                c.client.close().await;
            }
            return Err(e);
        }
        // Let maintenance schedule the slots that failed.
        self.wake.notify_one();
        tracing::info!(
            agent = agent_id,
            endpoint,
            connections = opened.len(),
            "agent added"
        );
        Ok(())
    }

    /// Takes an agent out, drains it and closes its connections; see
    /// [`AgentPool::remove_agent`].
    ///
    /// [`AgentPool::remove_agent`]: super::AgentPool::remove_agent
    pub(super) async fn remove_agent(&self, agent_id: &str) -> Result<(), PoolError> {
        let entry = self
            .unpublish(agent_id)
            .ok_or_else(|| PoolError::AgentNotFound(agent_id.to_owned()))?;
        entry.removed.store(true, Ordering::SeqCst);
        self.affinity.remove_agent(entry.index);
        lock(&self.agent_metrics).remove_agent(agent_id);
        let metrics = entry.metrics.clone();
        wait_for::<R>(
            || metrics.in_flight() == 0,
            deadline_after(R::now(), self.config.request_timeout),
        )
        .await;
        close_all(&entry).await;
        tracing::info!(agent = agent_id, "agent removed");
        Ok(())
    }

    /// Installs a connection the agent opened, creating the agent on its first one; see
    /// [`AgentPool::add_reverse_connection`].
    ///
    /// [`AgentPool::add_reverse_connection`]: super::AgentPool::add_reverse_connection
    pub(super) fn add_reverse(
        &self,
        agent_id: &str,
        client: AgentClient<R>,
    ) -> Result<(), PoolError> {
        if self.is_closing() {
            return Err(PoolError::ShuttingDown);
        }
        let entry = {
            let writer = lock(&self.writer);
            if writer.contains(agent_id) {
                return Err(PoolError::AlreadyExists(agent_id.to_owned()));
            }
            match self.agents.load().get(agent_id) {
                Some(e) => e.clone(),
                None => {
                    let e = Arc::new(self.new_entry(agent_id, Origin::Reverse));
                    let mut map = HashMap::clone(&self.agents.load());
                    map.insert(agent_id.to_owned(), e.clone());
                    self.agents.store(Arc::new(map));
                    e
                }
            }
        };
        let mut slots = entry.lock_slots();
        if entry.removed.load(Ordering::SeqCst) {
            return Err(PoolError::AgentNotFound(agent_id.to_owned()));
        }
        entry.prune_dead(&mut slots, R::now());
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
        let conn = self.wrap(slot, client);
        entry.install(&mut slots, conn);
        tracing::info!(agent = agent_id, slot, "reverse connection added");
        Ok(())
    }

    /// Refuses new calls, drains those in flight, then closes everything; see
    /// [`AgentPool::shutdown`].
    ///
    /// [`AgentPool::shutdown`]: super::AgentPool::shutdown
    pub(super) async fn shutdown(&self, drain_timeout: Duration) {
        self.closing.store(true, Ordering::SeqCst);
        wait_for::<R>(
            || self.active.load(Ordering::SeqCst) == 0,
            deadline_after(R::now(), drain_timeout),
        )
        .await;
        let _ = self.stop.send(true);
        let entries: Vec<Arc<AgentEntry>> = {
            let _writer = lock(&self.writer);
            let old = self.agents.swap(Arc::new(HashMap::new()));
            old.values().cloned().collect()
        };
        for entry in &entries {
            entry.removed.store(true, Ordering::SeqCst);
            close_all(entry).await;
        }
        self.affinity.clear();
        tracing::info!(agents = entries.len(), "agent pool shut down");
    }

    /// A snapshot of every agent, sorted by id.
    pub(super) fn stats(&self) -> Vec<AgentStats> {
        let agents = self.agents.load();
        let mut out: Vec<AgentStats> = agents.values().map(|e| agent_stats(e)).collect();
        out.sort_by(|a, b| a.agent_id.cmp(&b.agent_id));
        out
    }

    /// Encodes the pool's metrics and the agents' reported series; see
    /// [`AgentPool::register_metrics`].
    ///
    /// [`AgentPool::register_metrics`]: super::AgentPool::register_metrics
    pub(super) fn encode_metrics(&self, encoder: &mut DescriptorEncoder<'_>) -> fmt::Result {
        let agents = self.agents.load();
        let mut entries: Vec<&Arc<AgentEntry>> = agents.values().collect();
        entries.sort_by(|a, b| a.id.cmp(&b.id));
        let labels: Vec<[(&str, &str); 1]> = entries.iter().map(|e| [("agent", &*e.id)]).collect();
        let members: Vec<(&PoolMetrics, &[(&str, &str)])> = entries
            .iter()
            .zip(&labels)
            .map(|(e, l)| (&*e.metrics, &l[..]))
            .collect();
        metrics::encode_pool_metrics(&self.config.metrics_prefix, &members, encoder)?;
        let gauges: Vec<AgentGauges<'_>> = entries
            .iter()
            .map(|e| AgentGauges {
                agent: &e.id,
                counts: e.counts(),
                circuit: e.circuit_state(),
            })
            .collect();
        metrics::encode_pool_gauges(
            &self.config.metrics_prefix,
            &gauges,
            self.affinity.len(),
            encoder,
        )?;
        // A copy, so that the scrape's writing happens outside the lock that reports take.
        let reported = lock(&self.agent_metrics).clone();
        metrics::encode_reported(&reported, encoder)
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

    /// Gives an opened client its pool-wide connection id.
    pub(super) fn wrap(&self, slot: usize, client: AgentClient<R>) -> Arc<PooledConnection> {
        let id = self.next_conn_id.fetch_add(1, Ordering::Relaxed);
        Arc::new(PooledConnection::new(
            id,
            slot,
            client.into_handle(),
            R::now(),
        ))
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
                let summary = lock(&self.agent_metrics).ingest(agent, &counters, &gauges, R::now());
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

/// A random `u64` for jitter and selector seeds (not for anything security related).
pub(super) fn random_u64() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    RandomState::new().hash_one((n, Instant::now()))
}

/// `start + timeout`; when that overflows (a "forever" timeout), `timeout` is halved until it
/// fits.
pub(super) fn deadline_after(start: Instant, timeout: Duration) -> Instant {
    let mut t = timeout;
    loop {
        if let Some(d) = start.checked_add(t) {
            return d;
        }
        t /= 2;
    }
}

/// Polls `done` until it holds or `deadline` passes.
pub(super) async fn wait_for<R: Runtime>(done: impl Fn() -> bool, deadline: Instant) {
    while !done() && R::now() < deadline {
        runtime::sleep::<R>(DRAIN_POLL.min(deadline.saturating_duration_since(R::now()))).await;
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
pub(super) async fn open_client<R: Runtime>(
    pool: Weak<PoolInner<R>>,
    agent: Arc<str>,
    endpoint: &Endpoint,
    config: &ClientConfig<R>,
) -> Result<AgentClient<R>, ClientError> {
    // Socket (or channel) within the connect timeout, then the handshake within its own; the
    // outer limit only guards against a transport that ignores them.
    let span = spans::proxy_connection(Some(&*agent), Some(endpoint));
    let control = control_channel(pool, agent);
    let limit = config.connect_timeout + config.connection.handshake.timeout;
    let open =
        AgentClient::connect_endpoint(endpoint, config.clone(), Some(control)).instrument(span);
    match runtime::timeout_at::<R, _>(R::now() + limit + HANDSHAKE_GRACE, open).await {
        Ok(r) => r,
        Err(_) => Err(ClientError::Closed(ConnectionError::Handshake(
            HandshakeError::Timeout(config.connection.handshake.timeout),
        ))),
    }
}

/// A bounded control channel whose messages are attributed to `agent`.
pub(super) fn control_channel<R: Runtime>(
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
