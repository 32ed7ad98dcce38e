//! Pool metrics and agent-reported metrics, rendered in the Prometheus text exposition format.
//!
//! Two independent pieces:
//!
//! - [`PoolMetrics`]: what the pool itself observes per agent (requests, responses by decision,
//!   timeouts, errors by cause, flow control, cancels, in-flight, latency). Plain atomics, updated
//!   from every thread without a lock. Unlike the reference's (some never updated, some never
//!   exported), every metric here is both updated through a method and exported.
//! - [`AgentMetricsStore`]: the latest series each agent reported in its MetricsReport frames,
//!   bounded, validated, labelled with the agent id the *pool* knows (an agent cannot speak for
//!   another, as it can at the reference proxy), expired after a TTL, and escaped when rendered.
//!
//! Rendering appends to a caller-supplied `String`, so one scrape can combine several sources.
//!
//! ```
//! use agent_protocol_core::metrics::{DecisionKind, PoolMetrics};
//! use std::time::Duration;
//!
//! let m = PoolMetrics::new();
//! {
//!     let _in_flight = m.start_request();
//!     m.record_response(DecisionKind::Allow, Duration::from_millis(2));
//! }
//! let mut out = String::new();
//! m.render_prometheus("agent_protocol", &[("agent", "waf")], &mut out);
//! assert!(out.contains("agent_protocol_requests_total{agent=\"waf\"} 1\n"));
//! ```

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

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

/// Upper bounds of the latency histogram's finite buckets, in nanoseconds (integers, so recording
/// needs no floating point).
const BUCKET_BOUNDS_NANOS: [u64; 16] = [
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
];

/// The `le` label of each finite bucket, written out rather than formatted from floats so the
/// text is exact and stable.
const BUCKET_LABELS: [&str; 16] = [
    "0.00005", "0.0001", "0.00025", "0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05",
    "0.1", "0.25", "0.5", "1", "2.5", "5",
];

/// Upper bounds of the latency histogram's finite buckets, in seconds (the `+Inf` bucket follows).
pub const LATENCY_BUCKETS_SECONDS: [f64; 16] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0,
];

/// A fixed-bucket latency histogram on atomics.
///
/// Each observation increments one (non-cumulative) slot and adds to the nanosecond sum;
/// [`snapshot`](Self::snapshot) turns the slots into cumulative Prometheus buckets and derives the
/// count from them, so a snapshot's `+Inf` bucket always equals its count even while other threads
/// record.
///
/// ```
/// use agent_protocol_core::metrics::LatencyHistogram;
/// use std::time::Duration;
///
/// let h = LatencyHistogram::new();
/// h.record(Duration::from_micros(30));
/// h.record(Duration::from_secs(60));
/// let s = h.snapshot();
/// assert_eq!(s.cumulative[0], 1); // le="0.00005"
/// assert_eq!(s.cumulative[16], 2); // le="+Inf"
/// assert_eq!(s.count, 2);
/// ```
#[derive(Debug, Default)]
pub struct LatencyHistogram {
    slots: [AtomicU64; 17],
    sum_nanos: AtomicU64,
}

/// A point-in-time copy of a [`LatencyHistogram`].
///
/// ```
/// use agent_protocol_core::metrics::LatencyHistogram;
/// let s = LatencyHistogram::new().snapshot();
/// assert_eq!((s.count, s.sum_seconds), (0, 0.0));
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HistogramSnapshot {
    /// Cumulative counts per bucket: 16 finite bounds ([`LATENCY_BUCKETS_SECONDS`]) then `+Inf`.
    pub cumulative: [u64; 17],
    /// Sum of all observations, in seconds.
    pub sum_seconds: f64,
    /// Number of observations (equal to the `+Inf` bucket).
    pub count: u64,
}

impl LatencyHistogram {
    /// An empty histogram.
    pub const fn new() -> Self {
        Self {
            slots: [const { AtomicU64::new(0) }; 17],
            sum_nanos: AtomicU64::new(0),
        }
    }

    /// Records one observation.
    pub fn record(&self, latency: Duration) {
        let nanos = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        // `le` is inclusive: a value equal to a bound belongs to that bucket.
        let slot = BUCKET_BOUNDS_NANOS.partition_point(|&bound| bound < nanos);
        if let Some(s) = self.slots.get(slot) {
            s.fetch_add(1, Ordering::Relaxed);
        }
        // Saturate rather than wrap: a wrapped sum would make the rate of _sum go negative.
        let _ = self
            .sum_nanos
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |s| {
                Some(s.saturating_add(nanos))
            });
    }

    /// Cumulative buckets, sum and count.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut cumulative = [0u64; 17];
        let mut running = 0u64;
        for (out, slot) in cumulative.iter_mut().zip(&self.slots) {
            running = running.saturating_add(slot.load(Ordering::Relaxed));
            *out = running;
        }
        HistogramSnapshot {
            cumulative,
            sum_seconds: self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9,
            count: running,
        }
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

    /// Appends these metrics in Prometheus text format: every name starts with `prefix_`
    /// (sanitised to a valid name) and every sample carries `labels` (names sanitised, values
    /// escaped).
    pub fn render_prometheus(&self, prefix: &str, labels: &[(&str, &str)], out: &mut String) {
        Self::render_prometheus_group(prefix, &[(self, labels)], out);
    }

    /// Appends several agents' metrics as one exposition: each family's `HELP`/`TYPE` once, then
    /// the samples of every member, as the format requires (rendering members one after another
    /// would repeat the headers and split families).
    pub fn render_prometheus_group(
        prefix: &str,
        members: &[(&PoolMetrics, &[(&str, &str)])],
        out: &mut String,
    ) {
        let prefix = sanitize_metric_name(prefix);
        let labels: Vec<Vec<(String, &str)>> = members
            .iter()
            .map(|(_, l)| clean_labels(l.iter().copied()))
            .collect();
        let name = |base: &str| {
            if prefix.is_empty() {
                base.to_owned()
            } else {
                format!("{prefix}_{base}")
            }
        };

        let simple: [SimpleFamily; 8] = [
            (
                "requests_total",
                "counter",
                "Requests sent to the agent.",
                PoolMetrics::requests_total,
            ),
            (
                "timeouts_total",
                "counter",
                "Requests that timed out waiting for the agent.",
                PoolMetrics::timeouts_total,
            ),
            (
                "flow_control_pauses_total",
                "counter",
                "Flow-control pause signals received from the agent.",
                PoolMetrics::flow_control_pauses_total,
            ),
            (
                "flow_control_resumes_total",
                "counter",
                "Flow-control resume signals received from the agent.",
                PoolMetrics::flow_control_resumes_total,
            ),
            (
                "flow_control_rejections_total",
                "counter",
                "Requests rejected or allowed unchecked because the agent was paused.",
                PoolMetrics::flow_control_rejections_total,
            ),
            (
                "cancels_total",
                "counter",
                "Requests cancelled.",
                PoolMetrics::cancels_total,
            ),
            (
                "affinity_rejections_total",
                "counter",
                "Correlation affinities not stored because the table was full.",
                PoolMetrics::affinity_rejections_total,
            ),
            (
                "in_flight_requests",
                "gauge",
                "Requests currently waiting for the agent.",
                PoolMetrics::in_flight,
            ),
        ];
        for (base, kind, help, get) in simple {
            let family = name(base);
            write_header(out, &family, Some(help), kind);
            for ((m, _), l) in members.iter().zip(&labels) {
                write_sample_u64(out, &family, "", l, None, get(m));
            }
        }

        let family = name("responses_total");
        write_header(
            out,
            &family,
            Some("Agent responses by decision."),
            "counter",
        );
        for ((m, _), l) in members.iter().zip(&labels) {
            for d in DecisionKind::ALL {
                let extra = Some(("decision", d.as_str()));
                write_sample_u64(out, &family, "", l, extra, m.responses_total(d));
            }
        }

        let family = name("errors_total");
        write_header(out, &family, Some("Failed requests by cause."), "counter");
        for ((m, _), l) in members.iter().zip(&labels) {
            for c in ErrorCause::ALL {
                let extra = Some(("cause", c.as_str()));
                write_sample_u64(out, &family, "", l, extra, m.errors_total(c));
            }
        }

        let family = name("request_duration_seconds");
        write_header(
            out,
            &family,
            Some("Time from submitting a request to the agent's answer."),
            "histogram",
        );
        for ((m, _), l) in members.iter().zip(&labels) {
            let s = m.latency.snapshot();
            for (le, count) in BUCKET_LABELS
                .iter()
                .chain(["+Inf"].iter())
                .zip(s.cumulative)
            {
                write_sample_u64(out, &family, "_bucket", l, Some(("le", le)), count);
            }
            write_labels_prefix(out, &family, "_sum", l, None);
            write_f64(out, s.sum_seconds);
            out.push('\n');
            write_sample_u64(out, &family, "_count", l, None, s.count);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Exposition-format helpers.

/// A single-valued family of [`PoolMetrics`]: name suffix, type, help, getter.
type SimpleFamily = (
    &'static str,
    &'static str,
    &'static str,
    fn(&PoolMetrics) -> u64,
);

/// Whether `name` matches `[a-zA-Z_:][a-zA-Z0-9_:]*`.
pub fn is_valid_metric_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_' || b == b':')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':')
}

/// Whether `name` matches `[a-zA-Z_][a-zA-Z0-9_]*` (names starting with `__` are valid syntax
/// but reserved; [`AgentMetricsStore`] refuses them separately).
pub fn is_valid_label_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Replaces every invalid character with `_` and prefixes `_` when the name would start with a
/// digit; the pool's own names come from configuration, and a typo there must not make the whole
/// scrape unparsable.
fn sanitize(name: &str, allow_colon: bool) -> String {
    let mut out = String::with_capacity(name.len() + 1);
    for (i, c) in name.chars().enumerate() {
        let ok = c.is_ascii_alphanumeric() || c == '_' || (allow_colon && c == ':');
        if i == 0 && c.is_ascii_digit() {
            out.push('_');
        }
        out.push(if ok { c } else { '_' });
    }
    out
}

fn sanitize_metric_name(name: &str) -> String {
    sanitize(name, true)
}

/// Sanitised label names, first occurrence of each name kept; empty names dropped, and `le`
/// dropped because the histogram owns it (keeping it on `_sum`/`_count` only would give one
/// family two label sets).
fn clean_labels<'a>(labels: impl Iterator<Item = (&'a str, &'a str)>) -> Vec<(String, &'a str)> {
    let mut out: Vec<(String, &'a str)> = Vec::new();
    for (name, value) in labels {
        if name.is_empty() {
            continue;
        }
        let name = sanitize(name, false);
        if name != "le" && !out.iter().any(|(n, _)| *n == name) {
            out.push((name, value));
        }
    }
    out
}

/// `# HELP` (when given) and `# TYPE` lines.
fn write_header(out: &mut String, family: &str, help: Option<&str>, kind: &str) {
    if let Some(help) = help {
        out.push_str("# HELP ");
        out.push_str(family);
        out.push(' ');
        for c in help.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                c => out.push(c),
            }
        }
        out.push('\n');
    }
    out.push_str("# TYPE ");
    out.push_str(family);
    out.push(' ');
    out.push_str(kind);
    out.push('\n');
}

fn write_label_value(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// Writes `family+suffix{labels,extra} ` (the space included, value not). A base label with the
/// same name as `extra` is skipped so no sample carries a duplicate label.
fn write_labels_prefix<N: AsRef<str>>(
    out: &mut String,
    family: &str,
    suffix: &str,
    labels: &[(N, &str)],
    extra: Option<(&str, &str)>,
) {
    out.push_str(family);
    out.push_str(suffix);
    let mut first = true;
    let mut open = |out: &mut String| {
        out.push(if first { '{' } else { ',' });
        first = false;
    };
    for (name, value) in labels {
        let name = name.as_ref();
        if extra.is_some_and(|(n, _)| n == name) {
            continue;
        }
        open(out);
        out.push_str(name);
        out.push_str("=\"");
        write_label_value(out, value);
        out.push('"');
    }
    if let Some((name, value)) = extra {
        open(out);
        out.push_str(name);
        out.push_str("=\"");
        write_label_value(out, value);
        out.push('"');
    }
    if !first {
        out.push('}');
    }
    out.push(' ');
}

fn write_sample_u64<N: AsRef<str>>(
    out: &mut String,
    family: &str,
    suffix: &str,
    labels: &[(N, &str)],
    extra: Option<(&str, &str)>,
    value: u64,
) {
    write_labels_prefix(out, family, suffix, labels, extra);
    // Writing to a String cannot fail.
    let _ = write!(out, "{value}");
    out.push('\n');
}

/// Prometheus float syntax: `NaN`, `+Inf`, `-Inf`, or a decimal (Rust's `Display` for f64 never
/// uses exponents and round-trips exactly).
fn write_f64(out: &mut String, v: f64) {
    if v.is_nan() {
        out.push_str("NaN");
    } else if v == f64::INFINITY {
        out.push_str("+Inf");
    } else if v == f64::NEG_INFINITY {
        out.push_str("-Inf");
    } else {
        let _ = write!(out, "{v}");
    }
}

// ---------------------------------------------------------------------------------------------
// Agent-reported metrics.

/// A counter as an agent reported it (cumulative value).
///
/// ```
/// use agent_protocol_core::metrics::ReportedCounter;
/// let c = ReportedCounter {
///     name: "agent_requests_total".into(),
///     help: Some("Requests seen".into()),
///     labels: vec![("route".into(), "/api".into())],
///     value: 42,
/// };
/// assert_eq!(c.value, 42);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReportedCounter {
    /// Metric name.
    pub name: String,
    /// Help text, if the agent gave one.
    pub help: Option<String>,
    /// Label pairs.
    pub labels: Vec<(String, String)>,
    /// Current value.
    pub value: u64,
}

/// A gauge as an agent reported it.
///
/// ```
/// use agent_protocol_core::metrics::ReportedGauge;
/// let g = ReportedGauge { name: "agent_queue_depth".into(), value: 3.0, ..Default::default() };
/// assert!(g.labels.is_empty());
/// ```
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ReportedGauge {
    /// Metric name.
    pub name: String,
    /// Help text, if the agent gave one.
    pub help: Option<String>,
    /// Label pairs.
    pub labels: Vec<(String, String)>,
    /// Current value (NaN and infinities are rendered as Prometheus spells them).
    pub value: f64,
}

/// Why a reported series was not stored.
///
/// ```
/// use agent_protocol_core::metrics::{AgentMetricsStore, ReportedCounter, SeriesRejected};
/// use std::time::Instant;
/// let mut store = AgentMetricsStore::new();
/// let bad = ReportedCounter { name: "bad name".into(), ..Default::default() };
/// assert_eq!(store.record_counter("waf", &bad, Instant::now()), Err(SeriesRejected::InvalidName));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
pub enum SeriesRejected {
    /// The metric name does not match `[a-zA-Z_:][a-zA-Z0-9_:]*` or is too long.
    #[error("invalid metric name")]
    InvalidName,
    /// A label name is invalid, reserved (`__` prefix), repeated, or a value is too long.
    #[error("invalid label")]
    InvalidLabel,
    /// More labels than [`AgentMetricsStore::MAX_LABELS`].
    #[error("too many labels")]
    TooManyLabels,
    /// The name is already stored as the other metric type.
    #[error("metric type conflicts with an existing series of the same name")]
    TypeConflict,
    /// The store holds its maximum number of series, none of them expired.
    #[error("series limit reached")]
    OverLimit,
}

/// Counts of one [`AgentMetricsStore::ingest`] call.
///
/// ```
/// use agent_protocol_core::metrics::IngestSummary;
/// assert_eq!(IngestSummary::default().accepted, 0);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IngestSummary {
    /// Series stored or updated.
    pub accepted: usize,
    /// Series dropped as invalid (name, labels, type conflict).
    pub invalid: usize,
    /// Series dropped because the store was full.
    pub over_limit: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
}

#[derive(Clone, Copy, Debug)]
enum Value {
    Counter(u64),
    Gauge(f64),
}

#[derive(Clone, Debug)]
struct Sample {
    value: Value,
    updated: Instant,
}

#[derive(Clone, Debug)]
struct Family {
    kind: Kind,
    help: Option<String>,
    /// Keyed by the full, sorted label set (`agent_id` included), so rendering is ordered and one
    /// agent's series never overwrite another's.
    series: BTreeMap<Vec<(String, String)>, Sample>,
}

/// The latest metric series reported by agents, ready to be scraped.
///
/// - At most `max_series` series (default 10,000); a new series beyond that is dropped and
///   counted (after expiring stale ones), while updates of stored series always succeed.
/// - Metric and label names are checked against the Prometheus grammar; invalid series are
///   dropped and counted instead of corrupting the scrape (the reference exports them unchecked).
/// - Every series carries `agent_id` = the id the pool knows for the connection it came in on;
///   an `agent_id` label the agent supplied is replaced.
/// - Series not updated for `ttl` (default 5 minutes) are removed by [`expire`](Self::expire).
///
/// Takes `&mut self`: reports arrive a few times a minute per agent, so the adapter keeps it
/// behind a lock that is never on the request path.
///
/// ```
/// use agent_protocol_core::metrics::{AgentMetricsStore, ReportedCounter};
/// use std::time::Instant;
///
/// let now = Instant::now();
/// let mut store = AgentMetricsStore::new();
/// let c = ReportedCounter {
///     name: "agent_requests_total".into(),
///     labels: vec![("agent_id".into(), "someone-else".into())],
///     value: 7,
///     ..Default::default()
/// };
/// let summary = store.ingest("waf-1", &[c], &[], now);
/// assert_eq!(summary.accepted, 1);
/// let mut out = String::new();
/// store.render_prometheus(&mut out);
/// assert_eq!(out, "# TYPE agent_requests_total counter\nagent_requests_total{agent_id=\"waf-1\"} 7\n");
/// ```
#[derive(Clone, Debug)]
pub struct AgentMetricsStore {
    families: BTreeMap<String, Family>,
    series: usize,
    max_series: usize,
    ttl: Duration,
    invalid_total: u64,
    over_limit_total: u64,
    /// Lower bound on the next time any series can expire (see `AffinityTable`'s equivalent): a
    /// full store does not rescan on every rejected series.
    next_expiry: Option<Instant>,
}

impl Default for AgentMetricsStore {
    fn default() -> Self {
        Self::new()
    }
}

/// The label every stored series carries.
const AGENT_ID_LABEL: &str = "agent_id";

impl AgentMetricsStore {
    /// Default series limit.
    pub const DEFAULT_MAX_SERIES: usize = 10_000;
    /// Default staleness limit.
    pub const DEFAULT_TTL: Duration = Duration::from_secs(300);
    /// Longest metric name accepted.
    pub const MAX_NAME_LEN: usize = 256;
    /// Most labels per series (besides `agent_id`).
    pub const MAX_LABELS: usize = 32;
    /// Longest label value accepted, in bytes.
    pub const MAX_LABEL_VALUE_LEN: usize = 1024;
    /// Help text longer than this (bytes) is truncated.
    pub const MAX_HELP_LEN: usize = 1024;

    /// An empty store with the default limits.
    pub fn new() -> Self {
        Self::with_limits(Self::DEFAULT_MAX_SERIES, Self::DEFAULT_TTL)
    }

    /// An empty store holding at most `max_series` series, each expiring `ttl` after its last
    /// update.
    pub fn with_limits(max_series: usize, ttl: Duration) -> Self {
        Self {
            families: BTreeMap::new(),
            series: 0,
            max_series,
            ttl,
            invalid_total: 0,
            over_limit_total: 0,
            next_expiry: None,
        }
    }

    /// Number of stored series.
    pub fn len(&self) -> usize {
        self.series
    }

    /// Whether no series are stored.
    pub fn is_empty(&self) -> bool {
        self.series == 0
    }

    /// Series dropped as invalid since creation.
    pub fn invalid_total(&self) -> u64 {
        self.invalid_total
    }

    /// Series dropped at the series limit since creation.
    pub fn over_limit_total(&self) -> u64 {
        self.over_limit_total
    }

    /// Stores one report's counters and gauges for `agent_id` (the pool's id for the connection).
    pub fn ingest(
        &mut self,
        agent_id: &str,
        counters: &[ReportedCounter],
        gauges: &[ReportedGauge],
        now: Instant,
    ) -> IngestSummary {
        let mut summary = IngestSummary::default();
        let mut tally = |r: Result<(), SeriesRejected>| match r {
            Ok(()) => summary.accepted += 1,
            Err(SeriesRejected::OverLimit) => summary.over_limit += 1,
            Err(_) => summary.invalid += 1,
        };
        for c in counters {
            tally(self.record_counter(agent_id, c, now));
        }
        for g in gauges {
            tally(self.record_gauge(agent_id, g, now));
        }
        summary
    }

    /// Stores one counter for `agent_id`.
    pub fn record_counter(
        &mut self,
        agent_id: &str,
        counter: &ReportedCounter,
        now: Instant,
    ) -> Result<(), SeriesRejected> {
        self.record(
            agent_id,
            &counter.name,
            counter.help.as_deref(),
            &counter.labels,
            Value::Counter(counter.value),
            now,
        )
    }

    /// Stores one gauge for `agent_id`.
    pub fn record_gauge(
        &mut self,
        agent_id: &str,
        gauge: &ReportedGauge,
        now: Instant,
    ) -> Result<(), SeriesRejected> {
        self.record(
            agent_id,
            &gauge.name,
            gauge.help.as_deref(),
            &gauge.labels,
            Value::Gauge(gauge.value),
            now,
        )
    }

    fn record(
        &mut self,
        agent_id: &str,
        name: &str,
        help: Option<&str>,
        labels: &[(String, String)],
        value: Value,
        now: Instant,
    ) -> Result<(), SeriesRejected> {
        let result = self.try_record(agent_id, name, help, labels, value, now);
        match result {
            Ok(()) => {}
            Err(SeriesRejected::OverLimit) => self.over_limit_total += 1,
            Err(_) => self.invalid_total += 1,
        }
        result
    }

    fn try_record(
        &mut self,
        agent_id: &str,
        name: &str,
        help: Option<&str>,
        labels: &[(String, String)],
        value: Value,
        now: Instant,
    ) -> Result<(), SeriesRejected> {
        let kind = match value {
            Value::Counter(_) => Kind::Counter,
            Value::Gauge(_) => Kind::Gauge,
        };
        if name.len() > Self::MAX_NAME_LEN || !is_valid_metric_name(name) {
            return Err(SeriesRejected::InvalidName);
        }
        let key = Self::label_key(agent_id, labels)?;
        if let Some(family) = self.families.get(name) {
            if family.kind != kind {
                return Err(SeriesRejected::TypeConflict);
            }
        }
        let exists = self
            .families
            .get(name)
            .is_some_and(|f| f.series.contains_key(&key));
        if !exists && self.series >= self.max_series {
            if self.next_expiry.is_none_or(|t| now >= t) {
                self.expire(now);
            }
            if self.series >= self.max_series {
                return Err(SeriesRejected::OverLimit);
            }
        }
        let family = self.families.entry(name.to_owned()).or_insert(Family {
            kind,
            help: None,
            series: BTreeMap::new(),
        });
        if let Some(help) = help {
            // Latest help wins; truncated on a char boundary so storage stays bounded.
            let mut end = help.len().min(Self::MAX_HELP_LEN);
            while !help.is_char_boundary(end) {
                end -= 1;
            }
            let help = help.get(..end).unwrap_or_default();
            if family.help.as_deref() != Some(help) {
                family.help = Some(help.to_owned());
            }
        }
        let sample = Sample {
            value,
            updated: now,
        };
        if family.series.insert(key, sample).is_none() {
            self.series += 1;
        }
        Ok(())
    }

    /// The sorted label set of a series: the agent's labels minus any `agent_id`, plus the pool's.
    fn label_key(
        agent_id: &str,
        labels: &[(String, String)],
    ) -> Result<Vec<(String, String)>, SeriesRejected> {
        let mut key: Vec<(String, String)> = Vec::with_capacity(labels.len().min(32) + 1);
        for (name, value) in labels {
            if name == AGENT_ID_LABEL {
                continue;
            }
            if !is_valid_label_name(name)
                || name.starts_with("__")
                || value.len() > Self::MAX_LABEL_VALUE_LEN
            {
                return Err(SeriesRejected::InvalidLabel);
            }
            if key.len() >= Self::MAX_LABELS {
                return Err(SeriesRejected::TooManyLabels);
            }
            key.push((name.clone(), value.clone()));
        }
        key.push((AGENT_ID_LABEL.to_owned(), agent_id.to_owned()));
        key.sort();
        if key.windows(2).any(|w| w[0].0 == w[1].0) {
            return Err(SeriesRejected::InvalidLabel);
        }
        Ok(key)
    }

    /// Removes series not updated for the TTL; returns how many.
    pub fn expire(&mut self, now: Instant) -> usize {
        let ttl = self.ttl;
        let mut removed = 0;
        let mut oldest: Option<Instant> = None;
        self.families.retain(|_, family| {
            family.series.retain(|_, s| {
                if now.saturating_duration_since(s.updated) >= ttl {
                    removed += 1;
                    false
                } else {
                    oldest = Some(oldest.map_or(s.updated, |o| o.min(s.updated)));
                    true
                }
            });
            !family.series.is_empty()
        });
        self.series -= removed;
        self.next_expiry = oldest.map(|o| crate::pool::saturating_add(o, ttl));
        removed
    }

    /// Removes every series of `agent_id` (the agent left the pool); returns how many.
    pub fn remove_agent(&mut self, agent_id: &str) -> usize {
        let mut removed = 0;
        self.families.retain(|_, family| {
            family.series.retain(|labels, _| {
                let mine = labels
                    .iter()
                    .any(|(n, v)| n == AGENT_ID_LABEL && v == agent_id);
                removed += usize::from(mine);
                !mine
            });
            !family.series.is_empty()
        });
        self.series -= removed;
        removed
    }

    /// Appends every stored series in Prometheus text format, grouped by metric name, label keys
    /// sorted. `HELP` appears when an agent supplied help text; `TYPE` always.
    pub fn render_prometheus(&self, out: &mut String) {
        for (name, family) in &self.families {
            let kind = match family.kind {
                Kind::Counter => "counter",
                Kind::Gauge => "gauge",
            };
            write_header(out, name, family.help.as_deref(), kind);
            for (labels, sample) in &family.series {
                let labels: Vec<(&str, &str)> = labels
                    .iter()
                    .map(|(n, v)| (n.as_str(), v.as_str()))
                    .collect();
                match sample.value {
                    Value::Counter(v) => write_sample_u64(out, name, "", &labels, None, v),
                    Value::Gauge(v) => {
                        write_labels_prefix(out, name, "", &labels, None);
                        write_f64(out, v);
                        out.push('\n');
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Minimal exposition-format checker: every line is a comment or `name{labels} value`, each
    /// family's HELP/TYPE appears once and before its samples, and samples of a family are
    /// contiguous.
    fn check_exposition(text: &str) {
        let mut typed: Vec<String> = Vec::new();
        let mut current: Option<String> = None;
        let mut finished: Vec<String> = Vec::new();
        assert!(text.is_empty() || text.ends_with('\n'));
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                assert!(is_valid_metric_name(name), "{line}");
                assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
                assert!(!typed.contains(&name.to_owned()), "duplicate TYPE {name}");
                if let Some(c) = current.replace(name.to_owned()) {
                    finished.push(c);
                }
                typed.push(name.to_owned());
                continue;
            }
            if line.starts_with("# HELP ") {
                continue;
            }
            let name_end = line.find(['{', ' ']).unwrap();
            let name = &line[..name_end];
            assert!(is_valid_metric_name(name), "{line}");
            let family = current.as_deref().unwrap();
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s).filter(|b| *b == family))
                .unwrap_or(name);
            assert_eq!(base, family, "sample outside its family: {line}");
            assert!(!finished.contains(&base.to_owned()));
            let value = line.rsplit_once(' ').unwrap().1;
            assert!(
                value.parse::<f64>().is_ok() || ["NaN", "+Inf", "-Inf"].contains(&value),
                "{line}"
            );
        }
    }

    fn bucket_counts(text: &str, family: &str) -> Vec<u64> {
        text.lines()
            .filter(|l| l.starts_with(&format!("{family}_bucket")))
            .map(|l| l.rsplit_once(' ').unwrap().1.parse().unwrap())
            .collect()
    }

    #[test]
    fn renders_all_families() {
        let m = PoolMetrics::new();
        let g = m.start_request();
        m.record_response(DecisionKind::Block, Duration::from_micros(50));
        m.record_timeout();
        m.record_error(ErrorCause::Protocol);
        m.record_flow_control_pause();
        m.record_flow_control_resume();
        m.record_flow_control_rejection();
        m.record_cancel();
        m.record_affinity_rejection();
        let mut out = String::new();
        m.render_prometheus("ap", &[], &mut out);
        drop(g);
        check_exposition(&out);
        for needle in [
            "# TYPE ap_requests_total counter\n",
            "ap_requests_total 1\n",
            "ap_in_flight_requests 1\n",
            "ap_responses_total{decision=\"block\"} 1\n",
            "ap_responses_total{decision=\"allow\"} 0\n",
            "ap_errors_total{cause=\"protocol\"} 1\n",
            "ap_timeouts_total 1\n",
            "ap_flow_control_pauses_total 1\n",
            "ap_flow_control_resumes_total 1\n",
            "ap_flow_control_rejections_total 1\n",
            "ap_cancels_total 1\n",
            "ap_affinity_rejections_total 1\n",
            "# TYPE ap_request_duration_seconds histogram\n",
            "ap_request_duration_seconds_bucket{le=\"0.00005\"} 1\n",
            "ap_request_duration_seconds_bucket{le=\"+Inf\"} 1\n",
            "ap_request_duration_seconds_sum 0.00005\n",
            "ap_request_duration_seconds_count 1\n",
        ] {
            assert!(out.contains(needle), "missing {needle:?} in\n{out}");
        }
        assert_eq!(m.in_flight(), 0);
    }

    #[test]
    fn labels_are_sanitised_and_escaped() {
        let m = PoolMetrics::new();
        let mut out = String::new();
        m.render_prometheus(
            "9bad-prefix",
            &[
                ("agent", "a\"b\\c\nd"),
                ("agent", "dup"),
                ("le", "x"),
                ("bad-name", "v"),
                ("", "dropped"),
            ],
            &mut out,
        );
        check_exposition(&out);
        assert!(out
            .contains("_9bad_prefix_requests_total{agent=\"a\\\"b\\\\c\\nd\",bad_name=\"v\"} 0\n"));
        // The caller's `le` label yields to the histogram's own.
        assert!(out.contains(
            "_9bad_prefix_request_duration_seconds_bucket{agent=\"a\\\"b\\\\c\\nd\",bad_name=\"v\",le=\"+Inf\"} 0\n"
        ));
    }

    #[test]
    fn group_rendering_keeps_families_together() {
        let a = PoolMetrics::new();
        let b = PoolMetrics::new();
        a.request_started();
        b.request_started();
        b.request_started();
        b.request_finished();
        b.request_finished();
        b.request_finished(); // unmatched: saturates
        let mut out = String::new();
        PoolMetrics::render_prometheus_group(
            "",
            &[(&a, &[("agent", "a")]), (&b, &[("agent", "b")])],
            &mut out,
        );
        check_exposition(&out);
        assert!(out.contains("requests_total{agent=\"a\"} 1\nrequests_total{agent=\"b\"} 2\n"));
        assert!(out.contains("in_flight_requests{agent=\"b\"} 0\n"));
        assert_eq!(out.matches("# TYPE requests_total").count(), 1);
    }

    #[test]
    fn histogram_bucket_edges_are_inclusive() {
        let h = LatencyHistogram::new();
        h.record(Duration::from_micros(50));
        h.record(Duration::from_nanos(50_001));
        h.record(Duration::from_secs(5));
        h.record(Duration::MAX);
        let s = h.snapshot();
        assert_eq!(s.cumulative[0], 1);
        assert_eq!(s.cumulative[1], 2);
        assert_eq!(s.cumulative[15], 3);
        assert_eq!(s.cumulative[16], 4);
        assert_eq!(s.count, 4);
        assert!(s.sum_seconds.is_finite());
        assert_eq!(BUCKET_LABELS.len(), LATENCY_BUCKETS_SECONDS.len());
        for (label, secs) in BUCKET_LABELS.iter().zip(LATENCY_BUCKETS_SECONDS) {
            assert_eq!(label.parse::<f64>().unwrap(), secs);
        }
        for (nanos, secs) in BUCKET_BOUNDS_NANOS.iter().zip(LATENCY_BUCKETS_SECONDS) {
            assert_eq!(Duration::from_nanos(*nanos), Duration::from_secs_f64(secs));
        }
    }

    fn counter(name: &str, labels: &[(&str, &str)], value: u64) -> ReportedCounter {
        ReportedCounter {
            name: name.into(),
            help: None,
            labels: labels
                .iter()
                .map(|(n, v)| ((*n).into(), (*v).into()))
                .collect(),
            value,
        }
    }

    #[test]
    fn store_validates_and_counts() {
        let t = Instant::now();
        let mut s = AgentMetricsStore::new();
        let gauge = ReportedGauge {
            name: "q".into(),
            help: Some("line1\nback\\slash".into()),
            labels: vec![],
            value: f64::INFINITY,
        };
        let summary = s.ingest(
            "a",
            &[
                counter("ok_total", &[("route", "/x\"y")], 3),
                counter("1bad", &[], 1),
                counter("ok_total", &[("__reserved", "v")], 1),
                counter("ok_total", &[("bad-label", "v")], 1),
                counter("ok_total", &[("r", "1"), ("r", "2")], 1),
                counter("q", &[], 1), // q becomes a gauge below first? no: counter first
            ],
            &[gauge],
            t,
        );
        // "q" was stored as a counter, so the gauge conflicts.
        assert_eq!(
            summary,
            IngestSummary {
                accepted: 2,
                invalid: 5,
                over_limit: 0
            }
        );
        assert_eq!(s.invalid_total(), 5);
        let mut out = String::new();
        s.render_prometheus(&mut out);
        check_exposition(&out);
        assert_eq!(
            out,
            "# TYPE ok_total counter\nok_total{agent_id=\"a\",route=\"/x\\\"y\"} 3\n\
             # TYPE q counter\nq{agent_id=\"a\"} 1\n"
        );
    }

    #[test]
    fn store_help_gauges_and_agent_separation() {
        let t = Instant::now();
        let mut s = AgentMetricsStore::new();
        let g = ReportedGauge {
            name: "depth".into(),
            help: Some("Queue\\depth\nnow".into()),
            labels: vec![("zone".into(), "eu".into())],
            value: f64::NAN,
        };
        s.record_gauge("b", &g, t).unwrap();
        s.record_gauge(
            "a",
            &ReportedGauge {
                value: -1.5,
                ..g.clone()
            },
            t,
        )
        .unwrap();
        assert_eq!(s.len(), 2);
        let mut out = String::new();
        s.render_prometheus(&mut out);
        check_exposition(&out);
        assert_eq!(
            out,
            "# HELP depth Queue\\\\depth\\nnow\n# TYPE depth gauge\n\
             depth{agent_id=\"a\",zone=\"eu\"} -1.5\ndepth{agent_id=\"b\",zone=\"eu\"} NaN\n"
        );
        assert_eq!(s.remove_agent("a"), 1);
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn store_limit_and_expiry() {
        let t = Instant::now();
        let ttl = Duration::from_secs(10);
        let mut s = AgentMetricsStore::with_limits(2, ttl);
        s.record_counter("a", &counter("x", &[("i", "1")], 1), t)
            .unwrap();
        s.record_counter(
            "a",
            &counter("x", &[("i", "2")], 1),
            t + Duration::from_secs(5),
        )
        .unwrap();
        assert_eq!(
            s.record_counter(
                "a",
                &counter("x", &[("i", "3")], 1),
                t + Duration::from_secs(6)
            ),
            Err(SeriesRejected::OverLimit)
        );
        // Updating a stored series is always allowed.
        s.record_counter(
            "a",
            &counter("x", &[("i", "2")], 9),
            t + Duration::from_secs(6),
        )
        .unwrap();
        assert_eq!(s.over_limit_total(), 1);
        // At 10 s the first series is stale and makes room.
        s.record_counter(
            "a",
            &counter("x", &[("i", "3")], 1),
            t + Duration::from_secs(10),
        )
        .unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s.expire(t + Duration::from_secs(100)), 2);
        assert!(s.is_empty());
    }

    #[test]
    fn store_bounds_label_count_and_sizes() {
        let t = Instant::now();
        let mut s = AgentMetricsStore::new();
        let many: Vec<(String, String)> = (0..40).map(|i| (format!("l{i}"), "v".into())).collect();
        let c = ReportedCounter {
            name: "m".into(),
            help: Some("é".repeat(1000)),
            labels: many,
            value: 1,
        };
        assert_eq!(
            s.record_counter("a", &c, t),
            Err(SeriesRejected::TooManyLabels)
        );
        let long = counter("m", &[("k", &"v".repeat(2000))], 1);
        assert_eq!(
            s.record_counter("a", &long, t),
            Err(SeriesRejected::InvalidLabel)
        );
        let ok = ReportedCounter {
            labels: vec![],
            ..c
        };
        s.record_counter("a", &ok, t).unwrap();
        let mut out = String::new();
        s.render_prometheus(&mut out);
        let help_line = out.lines().next().unwrap();
        assert!(help_line.len() <= "# HELP m ".len() + AgentMetricsStore::MAX_HELP_LEN);
    }

    proptest! {
        #[test]
        fn histogram_output_is_cumulative(latencies in proptest::collection::vec(0u64..10_000_000_000, 0..100)) {
            let m = PoolMetrics::new();
            for l in &latencies {
                m.observe_latency(Duration::from_nanos(*l));
            }
            let mut out = String::new();
            m.render_prometheus("p", &[("agent", "x")], &mut out);
            check_exposition(&out);
            let buckets = bucket_counts(&out, "p_request_duration_seconds");
            prop_assert_eq!(buckets.len(), 17);
            prop_assert!(buckets.windows(2).all(|w| w[0] <= w[1]));
            let count_line = out
                .lines()
                .find(|l| l.starts_with("p_request_duration_seconds_count"))
                .unwrap();
            let count: u64 = count_line.rsplit_once(' ').unwrap().1.parse().unwrap();
            prop_assert_eq!(buckets[16], count);
            prop_assert_eq!(count, latencies.len() as u64);
            let sum_line = out
                .lines()
                .find(|l| l.starts_with("p_request_duration_seconds_sum"))
                .unwrap();
            let sum: f64 = sum_line.rsplit_once(' ').unwrap().1.parse().unwrap();
            let want = latencies.iter().sum::<u64>() as f64 / 1e9;
            prop_assert!((sum - want).abs() <= 1e-9 * want.max(1.0));
        }

        #[test]
        fn store_never_exceeds_limit_and_renders_valid_text(
            reports in proptest::collection::vec(
                ("[a-c]", "[a-z_:0-9 -]{0,6}", proptest::collection::vec(("[a-z_0-9-]{0,4}", "\\PC{0,6}"), 0..3), any::<u64>(), 0u64..20),
                0..60,
            ),
        ) {
            let base = Instant::now();
            let mut clock = 0u64;
            let mut s = AgentMetricsStore::with_limits(8, Duration::from_secs(30));
            for (agent, name, labels, value, dt) in reports {
                clock += dt;
                let c = ReportedCounter { name, help: Some("h".into()), labels, value };
                let _ = s.record_counter(&agent, &c, base + Duration::from_secs(clock));
                prop_assert!(s.len() <= 8);
            }
            let mut out = String::new();
            s.render_prometheus(&mut out);
            check_exposition(&out);
            prop_assert_eq!(out.lines().filter(|l| !l.starts_with('#')).count(), s.len());
        }
    }
}
