//! Pool metrics and agent-reported metrics, rendered in the Prometheus text exposition format.
//!
//! Two independent sources of data, and one renderer:
//!
//! - [`PoolMetrics`] (`counters`): what the pool itself observes per agent (requests, responses
//!   by decision, timeouts, errors by cause, flow control, cancels, in-flight, latency). Plain
//!   atomics, updated from every thread without a lock. Unlike the reference's (some never
//!   updated, some never exported), every metric here is both updated through a method and
//!   exported. Its latency is a [`LatencyHistogram`] (`histogram`).
//! - [`AgentMetricsStore`] (`reported`): the latest series each agent reported in its
//!   MetricsReport frames, bounded, validated, labelled with the agent id the *pool* knows (an
//!   agent cannot speak for another, as it can at the reference proxy), expired after a TTL, and
//!   escaped when rendered.
//! - `exposition`: the Prometheus text format, in one place: the `render_prometheus` methods of
//!   both sources, and the metric and label name rules ([`is_valid_metric_name`],
//!   [`is_valid_label_name`]).
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

mod counters;
mod exposition;
mod histogram;
mod reported;
#[cfg(test)]
mod tests;

pub use counters::{DecisionKind, ErrorCause, InFlightGuard, PoolMetrics};
pub use exposition::{is_valid_label_name, is_valid_metric_name};
pub use histogram::{HistogramSnapshot, LatencyHistogram, LATENCY_BUCKETS_SECONDS};
pub use reported::{
    AgentMetricsStore, IngestSummary, ReportedCounter, ReportedGauge, SeriesRejected,
};
