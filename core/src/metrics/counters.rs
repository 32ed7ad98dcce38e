//! What the pool itself counts per agent: requests, responses by [`DecisionKind`], timeouts,
//! errors by [`ErrorCause`], flow control, cancels, affinity rejections, requests in flight and
//! their latency.
//!
//! [`PoolMetrics`] only holds the numbers; `exposition` renders them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::histogram::LatencyHistogram;

/// The decision carried by an agent's response, for `responses_total{decision=...}`.
///
/// ```
/// use agent_protocol_core::metrics::DecisionKind;
/// assert_eq!(DecisionKind::Challenge.as_str(), "challenge");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DecisionKind {
    /// Request allowed (possibly with mutations).
    Allow,
    /// Request blocked.
    Block,
    /// Client redirected.
    Redirect,
    /// Client challenged.
    Challenge,
}

impl DecisionKind {
    /// Every kind, in rendering order.
    pub const ALL: [DecisionKind; 4] = [Self::Allow, Self::Block, Self::Redirect, Self::Challenge];

    /// The label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Block => "block",
            Self::Redirect => "redirect",
            Self::Challenge => "challenge",
        }
    }

    const fn index(self) -> usize {
        self as usize
    }
}

impl From<&crate::Decision> for DecisionKind {
    fn from(decision: &crate::Decision) -> Self {
        match decision {
            crate::Decision::Allow => Self::Allow,
            crate::Decision::Block { .. } => Self::Block,
            crate::Decision::Redirect { .. } => Self::Redirect,
            crate::Decision::Challenge { .. } => Self::Challenge,
        }
    }
}

/// Why a request failed, for `errors_total{cause=...}`. Timeouts and cancels have their own
/// counters.
///
/// ```
/// use agent_protocol_core::metrics::ErrorCause;
/// assert_eq!(ErrorCause::Connection.as_str(), "connection");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCause {
    /// The connection failed or closed with the request pending, or none could be made.
    Connection,
    /// The agent sent something that violates the protocol.
    Protocol,
    /// The request could not be encoded (or the answer decoded).
    Serialization,
    /// Refused locally before sending: no eligible connection, circuit open, a limit reached.
    Rejected,
    /// Anything else.
    Other,
}

impl ErrorCause {
    /// Every cause, in rendering order.
    pub const ALL: [ErrorCause; 5] = [
        Self::Connection,
        Self::Protocol,
        Self::Serialization,
        Self::Rejected,
        Self::Other,
    ];

    /// The label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Connection => "connection",
            Self::Protocol => "protocol",
            Self::Serialization => "serialization",
            Self::Rejected => "rejected",
            Self::Other => "other",
        }
    }

    const fn index(self) -> usize {
        self as usize
    }
}

/// Per-agent counters, gauge and latency histogram kept by the pool, on atomics.
///
/// Every method takes `&self`. In-flight accounting is best done with
/// [`start_request`](Self::start_request), whose guard decrements on drop, so a cancelled or
/// panicking caller cannot leak the gauge (the reference leaks it on early returns and drops).
///
/// ```
/// use agent_protocol_core::metrics::{ErrorCause, PoolMetrics};
///
/// let m = PoolMetrics::new();
/// let guard = m.start_request();
/// assert_eq!(m.in_flight(), 1);
/// m.record_error(ErrorCause::Connection);
/// drop(guard);
/// assert_eq!((m.requests_total(), m.in_flight(), m.errors_total(ErrorCause::Connection)), (1, 0, 1));
/// ```
#[derive(Debug, Default)]
pub struct PoolMetrics {
    requests: AtomicU64,
    responses: [AtomicU64; 4],
    timeouts: AtomicU64,
    errors: [AtomicU64; 5],
    flow_control_pauses: AtomicU64,
    flow_control_resumes: AtomicU64,
    flow_control_rejections: AtomicU64,
    cancels: AtomicU64,
    affinity_rejections: AtomicU64,
    in_flight: AtomicU64,
    latency: LatencyHistogram,
}

/// Keeps one request counted in [`PoolMetrics::in_flight`] until dropped.
///
/// ```
/// use agent_protocol_core::metrics::PoolMetrics;
/// let m = PoolMetrics::new();
/// let g = m.start_request();
/// assert_eq!(m.in_flight(), 1);
/// drop(g);
/// assert_eq!(m.in_flight(), 0);
/// ```
#[derive(Debug)]
#[must_use = "the request stops counting as in flight when the guard is dropped"]
pub struct InFlightGuard<'a> {
    metrics: &'a PoolMetrics,
}

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        self.metrics.request_finished();
    }
}

fn inc(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl PoolMetrics {
    /// All zero.
    pub const fn new() -> Self {
        Self {
            requests: AtomicU64::new(0),
            responses: [const { AtomicU64::new(0) }; 4],
            timeouts: AtomicU64::new(0),
            errors: [const { AtomicU64::new(0) }; 5],
            flow_control_pauses: AtomicU64::new(0),
            flow_control_resumes: AtomicU64::new(0),
            flow_control_rejections: AtomicU64::new(0),
            cancels: AtomicU64::new(0),
            affinity_rejections: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            latency: LatencyHistogram::new(),
        }
    }

    /// Counts a request and holds it in flight until the guard drops.
    pub fn start_request(&self) -> InFlightGuard<'_> {
        self.request_started();
        InFlightGuard { metrics: self }
    }

    /// Counts a request and marks it in flight; pair with [`request_finished`](Self::request_finished)
    /// when a guard cannot be held (e.g. the request lives in a state machine, not a stack frame).
    pub fn request_started(&self) {
        inc(&self.requests);
        inc(&self.in_flight);
    }

    /// Marks a request no longer in flight. Saturates at zero so an unmatched call cannot wrap the
    /// gauge to 2^64.
    pub fn request_finished(&self) {
        let _ = self
            .in_flight
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                Some(v.saturating_sub(1))
            });
    }

    /// Counts an agent response by decision and records its latency.
    pub fn record_response(&self, decision: DecisionKind, latency: Duration) {
        if let Some(c) = self.responses.get(decision.index()) {
            inc(c);
        }
        self.latency.record(latency);
    }

    /// Records a latency without counting a response (e.g. for a request that failed).
    pub fn observe_latency(&self, latency: Duration) {
        self.latency.record(latency);
    }

    /// Counts a request that timed out.
    pub fn record_timeout(&self) {
        inc(&self.timeouts);
    }

    /// Counts a failed request by cause.
    pub fn record_error(&self, cause: ErrorCause) {
        if let Some(c) = self.errors.get(cause.index()) {
            inc(c);
        }
    }

    /// Counts a pause signal from the agent.
    pub fn record_flow_control_pause(&self) {
        inc(&self.flow_control_pauses);
    }

    /// Counts a resume signal from the agent.
    pub fn record_flow_control_resume(&self) {
        inc(&self.flow_control_resumes);
    }

    /// Counts a request rejected (or allowed without the agent) because of flow control.
    pub fn record_flow_control_rejection(&self) {
        inc(&self.flow_control_rejections);
    }

    /// Counts a cancelled request.
    pub fn record_cancel(&self) {
        inc(&self.cancels);
    }

    /// Counts an affinity entry that could not be stored because the table was full.
    pub fn record_affinity_rejection(&self) {
        inc(&self.affinity_rejections);
    }

    /// Requests started.
    pub fn requests_total(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Responses with the given decision.
    pub fn responses_total(&self, decision: DecisionKind) -> u64 {
        self.responses
            .get(decision.index())
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// Timed-out requests.
    pub fn timeouts_total(&self) -> u64 {
        self.timeouts.load(Ordering::Relaxed)
    }

    /// Failed requests with the given cause.
    pub fn errors_total(&self, cause: ErrorCause) -> u64 {
        self.errors
            .get(cause.index())
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// Pause signals received.
    pub fn flow_control_pauses_total(&self) -> u64 {
        self.flow_control_pauses.load(Ordering::Relaxed)
    }

    /// Resume signals received.
    pub fn flow_control_resumes_total(&self) -> u64 {
        self.flow_control_resumes.load(Ordering::Relaxed)
    }

    /// Requests rejected (or allowed unchecked) because of flow control.
    pub fn flow_control_rejections_total(&self) -> u64 {
        self.flow_control_rejections.load(Ordering::Relaxed)
    }

    /// Cancelled requests.
    pub fn cancels_total(&self) -> u64 {
        self.cancels.load(Ordering::Relaxed)
    }

    /// Affinity entries refused by a full table.
    pub fn affinity_rejections_total(&self) -> u64 {
        self.affinity_rejections.load(Ordering::Relaxed)
    }

    /// Requests currently in flight.
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// The latency histogram.
    pub fn latency(&self) -> &LatencyHistogram {
        &self.latency
    }
}
