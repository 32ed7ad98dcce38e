//! Pool metrics, agent-server metrics and agent-reported metrics, exposed through the
//! [`prometheus_client`] library so a proxy or an agent registers them in its own registry.
//!
//! Three sources of data, and one way out:
//!
//! - [`PoolMetrics`] (`counters`): what the pool itself observes per agent (requests, responses
//!   by decision, timeouts, errors by cause, flow control, cancels, in-flight, latency). Plain
//!   atomics, updated from every thread without a lock. Unlike the reference's (some never
//!   updated, some never exported), every metric here is both updated through a method and
//!   exported. Its latency is a [`LatencyHistogram`] (`histogram`).
//! - [`ServerMetrics`] (`server`): what an agent server observes (connections, requests in
//!   flight, answers by decision, handler latency, undecodable events answered fail-closed).
//! - [`AgentMetricsStore`] (`reported`): the latest series each agent reported in its
//!   MetricsReport frames, bounded, validated, labelled with the agent id the *pool* knows (an
//!   agent cannot speak for another, as it can at the reference proxy), expired after a TTL, and
//!   escaped when encoded.
//! - `exposition`: each source encodes itself into a `prometheus_client` `DescriptorEncoder`;
//!   [`EncodeFn`] turns such a function into a collector for a `Registry`, and
//!   [`render_openmetrics`] gives a registry's text. Label values and help text are escaped
//!   there (the library writes them as given), and names the configuration chose are sanitised.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use agent_protocol_core::metrics::{render_openmetrics, DecisionKind, EncodeFn, PoolMetrics};
//! use prometheus_client::registry::Registry;
//!
//! let m = Arc::new(PoolMetrics::new());
//! {
//!     let _in_flight = m.start_request();
//!     m.record_response(DecisionKind::Allow, Duration::from_millis(2));
//! }
//! let mut registry = Registry::default(); // the proxy's own registry
//! let seen = m.clone();
//! registry.register_collector(Box::new(EncodeFn::new(move |encoder| {
//!     PoolMetrics::encode_group("agent_protocol", &[(&*seen, &[("agent", "waf")][..])], encoder)
//! })));
//! let out = render_openmetrics(&registry);
//! assert!(out.contains("agent_protocol_requests_total{agent=\"waf\"} 1\n"));
//! ```

mod counters;
mod exposition;
mod histogram;
mod reported;
mod server;
#[cfg(test)]
mod tests;

pub use counters::{DecisionKind, ErrorCause, InFlightGuard, PoolMetrics};
pub use exposition::{
    is_valid_label_name, is_valid_metric_name, labelled, render_openmetrics, sanitize_metric_name,
    EncodeFn, FamilyNames, LabelCount, Labels, LabelsWith,
};
pub use histogram::{HistogramSnapshot, LatencyHistogram, LATENCY_BUCKETS_SECONDS};
/// The Prometheus client library the metrics are encoded with: register them in a
/// `prometheus_client::registry::Registry` of this version.
pub use prometheus_client;
pub use reported::{
    AgentMetricsStore, IngestSummary, ReportedCounter, ReportedGauge, SeriesRejected,
};
pub use server::ServerMetrics;
