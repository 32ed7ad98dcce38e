//! What an agent server observes about itself: [`ServerMetrics`].
//!
//! Plain atomics, like [`PoolMetrics`](super::PoolMetrics): every connection task updates them
//! without a lock, and the driver's exporter reads them at scrape time.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use super::counters::DecisionKind;
use super::histogram::LatencyHistogram;

/// An agent server's counters: connections, requests in flight, answers by decision, handler
/// latency, requests the proxy cancelled, and events the connection answered fail-closed
/// itself (undecodable, or an answer too large to send) without the handler seeing them.
///
/// Handler latency needs two clock reads per request, so it is only measured once someone
/// will read it ([`set_timed`](Self::set_timed), which registering the metrics does); the
/// counters cost one atomic add each.
///
/// ```
/// use std::time::Duration;
/// use agent_protocol_core::metrics::{DecisionKind, ServerMetrics};
/// let m = ServerMetrics::new();
/// m.connection_opened();
/// m.requests_started(1);
/// m.record_answer(DecisionKind::Block, Some(Duration::from_micros(80)));
/// m.requests_finished(1);
/// assert_eq!((m.connections(), m.in_flight(), m.answers(DecisionKind::Block)), (1, 0, 1));
/// ```
#[derive(Debug, Default)]
pub struct ServerMetrics {
    timed: AtomicBool,
    connections_opened: AtomicU64,
    connections: AtomicU64,
    requests: AtomicU64,
    in_flight: AtomicU64,
    answers: [AtomicU64; 4],
    cancelled: AtomicU64,
    fail_closed: AtomicU64,
    handler_latency: LatencyHistogram,
}

impl ServerMetrics {
    /// All zero, handler latency not measured.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether handler latency is measured.
    pub fn timed(&self) -> bool {
        self.timed.load(Ordering::Relaxed)
    }

    /// Starts (or stops) measuring handler latency.
    pub fn set_timed(&self, timed: bool) {
        self.timed.store(timed, Ordering::Relaxed);
    }

    /// A connection was accepted (or dialed, for a reverse connection).
    pub fn connection_opened(&self) {
        self.connections_opened.fetch_add(1, Ordering::Relaxed);
        self.connections.fetch_add(1, Ordering::Relaxed);
    }

    /// A connection ended.
    pub fn connection_closed(&self) {
        let _ = self
            .connections
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                Some(v.saturating_sub(1))
            });
    }

    /// `n` requests reached the handler.
    pub fn requests_started(&self, n: u64) {
        self.requests.fetch_add(n, Ordering::Relaxed);
        self.in_flight.fetch_add(n, Ordering::Relaxed);
    }

    /// `n` requests left the handler, answered or not; pairs with
    /// [`requests_started`](Self::requests_started) (a plain subtraction: this is on every
    /// request's path, and the drivers pair the calls).
    pub fn requests_finished(&self, n: u64) {
        self.in_flight.fetch_sub(n, Ordering::Relaxed);
    }

    /// The handler answered with `decision`, after `latency` when measured.
    pub fn record_answer(&self, decision: DecisionKind, latency: Option<Duration>) {
        self.answers[decision as usize].fetch_add(1, Ordering::Relaxed);
        if let Some(latency) = latency {
            self.handler_latency.record(latency);
        }
    }

    /// A request ended without the handler's answer (cancelled by the proxy, or its
    /// connection closed).
    pub fn record_cancelled(&self) {
        self.cancelled.fetch_add(1, Ordering::Relaxed);
    }

    /// `n` more events were answered fail-closed by the connection itself.
    pub fn add_fail_closed(&self, n: u64) {
        self.fail_closed.fetch_add(n, Ordering::Relaxed);
    }

    /// Connections open now.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }

    /// Requests in the handler now.
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Events answered fail-closed by the connections themselves so far.
    pub fn fail_closed(&self) -> u64 {
        self.fail_closed.load(Ordering::Relaxed)
    }

    /// Handler answers with `decision` so far.
    pub fn answers(&self, decision: DecisionKind) -> u64 {
        self.answers[decision as usize].load(Ordering::Relaxed)
    }

    /// Proxy connections accepted (or dialed) so far.
    pub fn connections_opened(&self) -> u64 {
        self.connections_opened.load(Ordering::Relaxed)
    }

    /// Events handed to the handler so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Events that ended without the handler's answer so far.
    pub fn cancelled(&self) -> u64 {
        self.cancelled.load(Ordering::Relaxed)
    }

    /// Time from handing an event to the handler to its answer, when measured.
    pub fn handler_latency(&self) -> &LatencyHistogram {
        &self.handler_latency
    }
}
