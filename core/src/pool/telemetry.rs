//! What a pool exports about itself beyond [`crate::metrics::PoolMetrics`]: per-agent connection
//! gauges and circuit state, and the conversion of an agent's MetricsReport into the series an
//! [`crate::metrics::AgentMetricsStore`] keeps.
//!
//! Pure functions over plain values, shared by every runtime adapter so their `/metrics` output is
//! identical.

use super::CircuitState;
use crate::control::MetricsReport;
use crate::metrics::{is_valid_metric_name, ReportedCounter, ReportedGauge};
use crate::HealthState;

/// How one agent's connections stand, as counted by the adapter from its live connection state.
///
/// Each connection is counted once in `connections` and, when connected, once under its health;
/// `paused` counts connected connections paused by flow control, whatever their health.
///
/// ```
/// use agent_protocol_core::pool::ConnectionCounts;
/// use agent_protocol_core::HealthState;
/// let mut c = ConnectionCounts::default();
/// c.add(true, HealthState::Healthy, false);
/// c.add(true, HealthState::Draining, true);
/// c.add(false, HealthState::Healthy, false);
/// assert_eq!((c.connections, c.connected, c.healthy, c.unavailable, c.paused), (3, 2, 1, 1, 1));
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ConnectionCounts {
    /// Connections in the agent's list.
    pub connections: u32,
    /// Of those, connected.
    pub connected: u32,
    /// Connected and reporting healthy.
    pub healthy: u32,
    /// Connected and reporting degraded.
    pub degraded: u32,
    /// Connected and reporting draining or unhealthy (not selected).
    pub unavailable: u32,
    /// Connected and paused by the agent's flow control.
    pub paused: u32,
}

impl ConnectionCounts {
    /// Counts one connection.
    pub fn add(&mut self, connected: bool, health: HealthState, paused: bool) {
        self.connections += 1;
        if !connected {
            return;
        }
        self.connected += 1;
        match health {
            HealthState::Healthy => self.healthy += 1,
            HealthState::Degraded => self.degraded += 1,
            HealthState::Draining | HealthState::Unhealthy => self.unavailable += 1,
        }
        if paused {
            self.paused += 1;
        }
    }
}

/// The value of the circuit-state gauge: 0 closed, 1 half-open, 2 open.
///
/// ```
/// use agent_protocol_core::pool::{circuit_state_value, CircuitState};
/// assert_eq!(circuit_state_value(CircuitState::Open), 2);
/// ```
pub fn circuit_state_value(state: CircuitState) -> u8 {
    match state {
        CircuitState::Closed => 0,
        CircuitState::HalfOpen => 1,
        CircuitState::Open => 2,
    }
}

/// One agent's connection gauges, as the pool exports them.
#[derive(Clone, Copy, Debug)]
pub struct AgentGauges<'a> {
    /// The agent id (the label value; escaped when encoded).
    pub agent: &'a str,
    /// Its connections.
    pub counts: ConnectionCounts,
    /// Its breaker.
    pub circuit: CircuitState,
}

/// The series of one MetricsReport, ready for
/// [`AgentMetricsStore::ingest`](crate::metrics::AgentMetricsStore::ingest).
///
/// Counters and gauges map one to one (label maps are sorted by name so the result does not
/// depend on hash order). The store keeps no histogram type, so each reported histogram
/// `h` is flattened into the series Prometheus itself would expose for it: counters
/// `h_bucket{le=...}` (one per bucket, as reported) and `h_count`, and a gauge `h_sum`. A
/// histogram whose name is invalid, or that already carries an `le` label, is left out (it would
/// only produce rejected or ambiguous series).
///
/// ```
/// use agent_protocol_core::control::{CounterMetric, HistogramBucket, HistogramMetric};
/// use agent_protocol_core::pool::report_series;
/// use agent_protocol_core::MetricsReport;
///
/// let report = MetricsReport {
///     counters: vec![CounterMetric { name: "agent_requests_total".into(), help: None, labels: Default::default(), value: 3 }],
///     histograms: vec![HistogramMetric {
///         name: "agent_latency_seconds".into(), help: None, labels: Default::default(),
///         sum: 0.5, count: 2,
///         buckets: vec![HistogramBucket { le: 0.1, count: 1 }, HistogramBucket { le: f64::INFINITY, count: 2 }],
///     }],
///     ..Default::default()
/// };
/// let (counters, gauges) = report_series(&report);
/// assert_eq!(counters.len(), 1 + 2 + 1); // the counter, two buckets, the count
/// assert_eq!(counters[2].labels, vec![("le".to_string(), "+Inf".to_string())]);
/// assert_eq!(gauges[0].name, "agent_latency_seconds_sum");
/// ```
pub fn report_series(report: &MetricsReport) -> (Vec<ReportedCounter>, Vec<ReportedGauge>) {
    fn sorted(labels: &std::collections::HashMap<String, String>) -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> =
            labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        v.sort();
        v
    }

    let mut counters: Vec<ReportedCounter> = report
        .counters
        .iter()
        .map(|c| ReportedCounter {
            name: c.name.clone(),
            help: c.help.clone(),
            labels: sorted(&c.labels),
            value: c.value,
        })
        .collect();
    let mut gauges: Vec<ReportedGauge> = report
        .gauges
        .iter()
        .map(|g| ReportedGauge {
            name: g.name.clone(),
            help: g.help.clone(),
            labels: sorted(&g.labels),
            value: g.value,
        })
        .collect();

    for h in &report.histograms {
        if !is_valid_metric_name(&h.name) || h.labels.contains_key("le") {
            continue;
        }
        let labels = sorted(&h.labels);
        for bucket in &h.buckets {
            let mut l = labels.clone();
            l.push(("le".to_owned(), format_le(bucket.le)));
            counters.push(ReportedCounter {
                name: format!("{}_bucket", h.name),
                help: h.help.clone(),
                labels: l,
                value: bucket.count,
            });
        }
        counters.push(ReportedCounter {
            name: format!("{}_count", h.name),
            help: h.help.clone(),
            labels: labels.clone(),
            value: h.count,
        });
        gauges.push(ReportedGauge {
            name: format!("{}_sum", h.name),
            help: h.help.clone(),
            labels,
            value: h.sum,
        });
    }
    (counters, gauges)
}

/// The `le` label as Prometheus writes it: `+Inf` for infinity, else the shortest decimal.
fn format_le(le: f64) -> String {
    if le == f64::INFINITY {
        "+Inf".to_owned()
    } else if le == f64::NEG_INFINITY {
        "-Inf".to_owned()
    } else if le.is_nan() {
        "NaN".to_owned()
    } else {
        format!("{le}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::{GaugeMetric, HistogramBucket, HistogramMetric};
    use crate::metrics::AgentMetricsStore;
    use std::time::Instant;

    #[test]
    fn report_series_feed_the_store() {
        let mut labels = std::collections::HashMap::new();
        labels.insert("route".to_owned(), "/api".to_owned());
        let report = MetricsReport {
            gauges: vec![GaugeMetric {
                name: "agent_queue_depth".into(),
                help: Some("depth".into()),
                labels: labels.clone(),
                value: 4.0,
            }],
            histograms: vec![
                HistogramMetric {
                    name: "lat".into(),
                    help: None,
                    labels,
                    sum: 1.5,
                    count: 3,
                    buckets: vec![
                        HistogramBucket { le: 0.5, count: 1 },
                        HistogramBucket {
                            le: f64::INFINITY,
                            count: 3,
                        },
                    ],
                },
                HistogramMetric {
                    name: "bad name".into(),
                    help: None,
                    labels: Default::default(),
                    sum: 0.0,
                    count: 0,
                    buckets: vec![],
                },
            ],
            ..Default::default()
        };
        let (c, g) = report_series(&report);
        let mut store = AgentMetricsStore::new();
        let summary = store.ingest("waf", &c, &g, Instant::now());
        assert_eq!(summary.accepted, 5);
        let names: Vec<&str> = store.families().map(|f| f.name).collect();
        assert!(names.contains(&"lat_bucket"), "{names:?}");
        assert!(names.contains(&"agent_queue_depth"), "{names:?}");
        let bucket = store.families().find(|f| f.name == "lat_bucket").unwrap();
        let les: Vec<String> = bucket
            .series()
            .filter_map(|(labels, _)| {
                labels
                    .iter()
                    .find(|(n, _)| n == "le")
                    .map(|(_, v)| v.clone())
            })
            .collect();
        assert!(les.contains(&"0.5".to_owned()), "{les:?}");
        assert!(les.contains(&"+Inf".to_owned()), "{les:?}");
    }
}
