//! One agent in the pool ([`AgentEntry`]) and one of its connections ([`PooledConnection`]).

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use agent_protocol_core::metrics::PoolMetrics;
use agent_protocol_core::pool::{
    Backoff, CandidateInfo, CandidateSet, CircuitBreaker, CircuitBreakerConfig, CircuitOpen,
    CircuitState, ConnectionCounts, Endpoint, ErrorRate, ReconnectSchedule, Selector,
};
use arc_swap::ArcSwap;

use super::affinity::ConnId;
use crate::client::ClientHandle;

/// How the agent's connections come to be.
#[derive(Debug)]
pub(crate) enum Origin {
    /// The pool connects to this endpoint and reconnects on its own.
    Outbound(Endpoint),
    /// The agent connects to the proxy (reverse connections); the pool cannot reopen them.
    Reverse,
}

/// Reconnection state of one connection slot (only touched under the entry's slot lock).
#[derive(Debug)]
pub(crate) struct Slot {
    pub(crate) schedule: ReconnectSchedule,
    /// A reconnection task is running for this slot.
    pub(crate) connecting: bool,
    /// Closed for idleness; reopened on demand.
    pub(crate) parked: bool,
}

/// Locks a std mutex, ignoring poisoning: every critical section in the pool is a handful of
/// plain assignments that cannot leave the data half-updated in a way later code relies on.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// One agent: its connections, selector, breaker and metrics.
pub(crate) struct AgentEntry {
    pub(crate) id: Arc<str>,
    /// Key of this agent in the affinity table; never reused within a pool.
    pub(crate) index: u32,
    pub(crate) origin: Origin,
    /// The live connection list, read lock-free on every request; replaced (clone-modify-store)
    /// only while `slots` is locked.
    pub(crate) conns: ArcSwap<Vec<Arc<PooledConnection>>>,
    /// One per connection slot (`connections_per_agent`).
    pub(crate) slots: Mutex<Vec<Slot>>,
    pub(crate) selector: Selector,
    pub(crate) breaker: Mutex<CircuitBreaker>,
    pub(crate) metrics: Arc<PoolMetrics>,
    /// Slots parked for idleness (a hint read on the request path).
    pub(crate) parked: AtomicUsize,
    /// A request arrived while slots were parked: reopen them.
    pub(crate) unpark: AtomicBool,
    /// Taken out of the pool; nothing may be installed any more.
    pub(crate) removed: AtomicBool,
}

impl AgentEntry {
    pub(crate) fn new(
        id: &str,
        index: u32,
        origin: Origin,
        slots: usize,
        backoff: Backoff,
        breaker: CircuitBreakerConfig,
        seed: u64,
    ) -> Self {
        Self {
            id: Arc::from(id),
            index,
            origin,
            conns: ArcSwap::from_pointee(Vec::new()),
            slots: Mutex::new(
                (0..slots)
                    .map(|_| Slot {
                        schedule: ReconnectSchedule::new(backoff),
                        connecting: false,
                        parked: false,
                    })
                    .collect(),
            ),
            selector: Selector::new(seed),
            breaker: Mutex::new(CircuitBreaker::new(breaker)),
            metrics: Arc::new(PoolMetrics::new()),
            parked: AtomicUsize::new(0),
            unpark: AtomicBool::new(false),
            removed: AtomicBool::new(false),
        }
    }

    pub(crate) fn lock_slots(&self) -> MutexGuard<'_, Vec<Slot>> {
        lock(&self.slots)
    }

    /// Adds a connection to the live list. The caller holds the slot lock (passed in as proof).
    pub(crate) fn install(&self, _slots: &mut [Slot], conn: Arc<PooledConnection>) {
        let mut list: Vec<Arc<PooledConnection>> = self.conns.load().iter().cloned().collect();
        list.retain(|c| c.slot != conn.slot);
        list.push(conn);
        list.sort_by_key(|c| c.slot);
        self.conns.store(Arc::new(list));
    }

    /// Drops dead connections (see [`PooledConnection::is_dead`]) from the live list; returns
    /// them. The caller holds the slot lock.
    pub(crate) fn prune_dead(
        &self,
        _slots: &mut [Slot],
        now: Instant,
    ) -> Vec<Arc<PooledConnection>> {
        let current = self.conns.load_full();
        if !current.iter().any(|c| c.is_dead(now)) {
            return Vec::new();
        }
        let (dead, live): (Vec<_>, Vec<_>) = current.iter().cloned().partition(|c| c.is_dead(now));
        self.conns.store(Arc::new(live));
        dead
    }

    /// Removes the given connections from the live list. The caller holds the slot lock.
    pub(crate) fn remove_conns(&self, _slots: &mut [Slot], ids: &[ConnId]) {
        let list: Vec<_> = self
            .conns
            .load()
            .iter()
            .filter(|c| !ids.contains(&c.id))
            .cloned()
            .collect();
        self.conns.store(Arc::new(list));
    }

    /// Asks the breaker to admit one request.
    pub(crate) fn admit(&self, now: Instant) -> Result<BreakerPermit<'_>, CircuitOpen> {
        lock(&self.breaker).try_acquire(now)?;
        Ok(BreakerPermit {
            entry: self,
            done: false,
        })
    }

    pub(crate) fn circuit_state(&self) -> CircuitState {
        lock(&self.breaker).state()
    }

    /// When slots are parked for idleness, asks the maintenance task to reopen them (once).
    pub(crate) fn note_demand(&self, wake: &tokio::sync::Notify) {
        if self.parked.load(Ordering::Relaxed) != 0 && !self.unpark.swap(true, Ordering::AcqRel) {
            wake.notify_one();
        }
    }

    pub(crate) fn counts(&self) -> ConnectionCounts {
        let mut c = ConnectionCounts::default();
        for conn in self.conns.load().iter() {
            let s = conn.client.status();
            c.add(conn.is_connected(), s.health(), s.is_paused());
        }
        c
    }
}

/// One admitted request's claim on the breaker: reports exactly one outcome, `abandoned` when
/// dropped unreported (the caller's future was dropped), so a half-open probe slot never leaks.
pub(crate) struct BreakerPermit<'a> {
    entry: &'a AgentEntry,
    done: bool,
}

impl BreakerPermit<'_> {
    pub(crate) fn success(mut self, now: Instant) {
        self.done = true;
        lock(&self.entry.breaker).record_success(now);
    }

    pub(crate) fn failure(mut self, now: Instant) {
        self.done = true;
        lock(&self.entry.breaker).record_failure(now);
    }

    pub(crate) fn abandon(self) {
        // Drop does it.
    }
}

impl Drop for BreakerPermit<'_> {
    fn drop(&mut self) {
        if !self.done {
            lock(&self.entry.breaker).record_abandoned();
        }
    }
}

/// One connection of an agent, as the pool sees it.
pub(crate) struct PooledConnection {
    pub(crate) id: ConnId,
    pub(crate) slot: usize,
    pub(crate) client: ClientHandle,
    pub(crate) errors: ErrorRate,
    /// Requests the pool has handed to this connection and not yet seen end, queued ones
    /// included (the connection's own count only covers those it has accepted).
    pending: AtomicU32,
    /// Pause state at the last maintenance look, to count pause/resume transitions.
    seen_paused: AtomicBool,
    created: Instant,
}

/// How long a connection that was never seen connected (a reverse connection whose
/// registration answer is still being written) is kept before it counts as dead.
const NEVER_CONNECTED_GRACE: Duration = Duration::from_secs(10);

impl PooledConnection {
    pub(crate) fn new(id: ConnId, slot: usize, client: ClientHandle, created: Instant) -> Self {
        Self {
            id,
            slot,
            client,
            errors: ErrorRate::new(),
            pending: AtomicU32::new(0),
            seen_paused: AtomicBool::new(false),
            created,
        }
    }

    /// Whether the connection is over: not connected, and either it was connected before (the
    /// connection itself records that, so a connection that opened and died between two
    /// maintenance passes is not mistaken for one still starting) or it never got there within
    /// [`NEVER_CONNECTED_GRACE`].
    pub(crate) fn is_dead(&self, now: Instant) -> bool {
        if self.is_connected() {
            return false;
        }
        self.client.status().was_connected()
            || now.saturating_duration_since(self.created) >= NEVER_CONNECTED_GRACE
    }

    pub(crate) fn is_connected(&self) -> bool {
        self.client.is_connected()
    }

    pub(crate) fn is_paused(&self) -> bool {
        self.client.status().is_paused()
    }

    pub(crate) fn pending(&self) -> u32 {
        self.pending.load(Ordering::Acquire)
    }

    /// Counts a request on this connection until the guard drops.
    pub(crate) fn begin(&self) -> PendingGuard<'_> {
        self.pending.fetch_add(1, Ordering::AcqRel);
        PendingGuard { conn: self }
    }

    /// What the selector needs, from atomics only.
    pub(crate) fn candidate(&self) -> CandidateInfo {
        let s = self.client.status();
        CandidateInfo {
            health: s.health(),
            connected: self.is_connected(),
            paused: s.is_paused(),
            in_flight: s.in_flight().max(self.pending()),
            max_in_flight: s.in_flight_limit(),
            recent_error_rate_ppm: self.errors.ppm(),
        }
    }

    /// Counts a pause or resume seen since the last look (maintenance only; transitions within
    /// one period are not seen).
    pub(crate) fn observe_pause(&self, metrics: &PoolMetrics) {
        let now = self.is_paused();
        if self.seen_paused.swap(now, Ordering::AcqRel) != now {
            if now {
                metrics.record_flow_control_pause();
            } else {
                metrics.record_flow_control_resume();
            }
        }
    }
}

/// See [`PooledConnection::begin`].
pub(crate) struct PendingGuard<'a> {
    conn: &'a PooledConnection,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.conn.pending.fetch_sub(1, Ordering::AcqRel);
    }
}

/// An agent's connection list as the selector sees it; reads each connection's atomics lazily.
pub(crate) struct Candidates<'a>(pub(crate) &'a [Arc<PooledConnection>]);

impl CandidateSet for Candidates<'_> {
    fn len(&self) -> usize {
        self.0.len()
    }

    fn candidate(&self, index: usize) -> CandidateInfo {
        self.0
            .get(index)
            .map_or(CandidateInfo::UNAVAILABLE, |c| c.candidate())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::{ClientHandle, ConnectionStatus};

    /// A pooled connection and the receiving end of its command channel (kept alive: a
    /// closed channel means a closed connection).
    fn pooled(
        status: &Arc<ConnectionStatus>,
    ) -> (
        PooledConnection,
        tokio::sync::mpsc::Receiver<crate::client::Command>,
    ) {
        let (handle, rx) = ClientHandle::detached(status.clone());
        (PooledConnection::new(1, 0, handle, Instant::now()), rx)
    }

    #[test]
    fn a_connection_that_opened_and_died_unobserved_is_dead_at_once() {
        // The pool never looked at it while it was open: the connection itself remembers.
        let status = Arc::new(ConnectionStatus::new());
        status.mark_connected();
        let (conn, _commands) = pooled(&status);
        status.mark_closed(agent_protocol_core::ConnectionError::PeerClosed);
        assert!(conn.is_dead(Instant::now()));
    }

    #[test]
    fn a_connection_still_starting_gets_its_grace() {
        // A gated reverse connection: not connected yet, never was.
        let status = Arc::new(ConnectionStatus::new());
        let (conn, _commands) = pooled(&status);
        let now = Instant::now();
        assert!(!conn.is_dead(now));
        assert!(conn.is_dead(now + NEVER_CONNECTED_GRACE));
        status.mark_connected();
        assert!(!conn.is_dead(now + NEVER_CONNECTED_GRACE));
    }
}
