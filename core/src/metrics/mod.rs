//! The numbers behind the metrics: what the pool observes, what an agent server observes, and
//! what agents report about themselves. Plain data updated on the request paths; the driver
//! exposes them through prometheus-client (`agent_protocol_driver::metrics`), so this crate
//! stays free of locks and I/O.
//!
//! - [`PoolMetrics`] (`counters`): what the pool itself observes per agent (requests, responses
//!   by decision, timeouts, errors by cause, flow control, cancels, in-flight, latency). Plain
//!   atomics, updated from every thread without a lock. Unlike the reference's (some never
//!   updated, some never exported), every metric here is both updated through a method and
//!   exported. Its latency is a [`LatencyHistogram`] (`histogram`).
//! - [`ServerMetrics`] (`server`): what an agent server observes (connections, requests in
//!   flight, answers by decision, handler latency, events answered fail-closed).
//! - [`AgentMetricsStore`] (`reported`): the latest series each agent reported in its
//!   MetricsReport frames, bounded, validated, labelled with the agent id the *pool* knows (an
//!   agent cannot speak for another, as it can at the reference proxy), expired after a TTL.
//! - `names`: the metric and label name grammar.
//!
//! ```
//! use std::time::Duration;
//! use agent_protocol_core::metrics::{DecisionKind, PoolMetrics};
//!
//! let m = PoolMetrics::new();
//! {
//!     let _in_flight = m.start_request();
//!     m.record_response(DecisionKind::Allow, Duration::from_millis(2));
//! }
//! assert_eq!((m.requests_total(), m.in_flight()), (1, 0));
//! assert_eq!(m.responses_total(DecisionKind::Allow), 1);
//! ```

mod counters;
mod histogram;
mod names;
mod reported;
mod server;

pub use counters::{DecisionKind, ErrorCause, InFlightGuard, PoolMetrics};
pub use histogram::{HistogramSnapshot, LatencyHistogram, LATENCY_BUCKETS_SECONDS};
pub use names::{
    is_valid_label_name, is_valid_metric_name, sanitize_label_name, sanitize_metric_name,
};
pub use reported::{
    AgentMetricsStore, IngestSummary, ReportedCounter, ReportedFamily, ReportedGauge, ReportedKind,
    ReportedValue, SeriesRejected,
};
pub use server::ServerMetrics;
