//! What a pool exports about itself beyond [`crate::metrics::PoolMetrics`]: per-agent connection
//! gauges and circuit state, and the conversion of an agent's MetricsReport into the series an
//! [`crate::metrics::AgentMetricsStore`] keeps.
//!
//! Pure functions over plain values, shared by every runtime adapter so their `/metrics` output is
//! identical.

use std::fmt;

use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType;

use super::CircuitState;
use crate::control::MetricsReport;
use crate::metrics::{
    is_valid_metric_name, labelled, FamilyNames, Labels, ReportedCounter, ReportedGauge,
};
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

/// One agent's line in [`encode_pool_gauges`].
#[derive(Clone, Copy, Debug)]
pub struct AgentGauges<'a> {
    /// The agent id (the label value; escaped when encoded).
    pub agent: &'a str,
    /// Its connections.
    pub counts: ConnectionCounts,
    /// Its breaker.
    pub circuit: CircuitState,
}

/// Encodes the pool's connection gauges: `{prefix}_connections{agent,state}` (state =
/// `healthy`, `degraded`, `unavailable`, `disconnected`), `{prefix}_paused_connections{agent}`,
/// `{prefix}_circuit_state{agent}` and the pool-wide `{prefix}_correlation_affinities`. An
/// invalid prefix is sanitised; label values are escaped.
///
/// ```
/// use agent_protocol_core::metrics::{render_openmetrics, EncodeFn};
/// use agent_protocol_core::pool::{encode_pool_gauges, AgentGauges, CircuitState, ConnectionCounts};
/// use prometheus_client::registry::Registry;
/// let mut counts = ConnectionCounts::default();
/// counts.add(true, agent_protocol_core::HealthState::Healthy, false);
/// let mut registry = Registry::default();
/// registry.register_collector(Box::new(EncodeFn::new(move |encoder| {
///     let agents = [AgentGauges { agent: "waf", counts, circuit: CircuitState::Closed }];
///     encode_pool_gauges("agent_protocol", &agents, 7, encoder)
/// })));
/// let out = render_openmetrics(&registry);
/// assert!(out.contains("agent_protocol_connections{agent=\"waf\",state=\"healthy\"} 1\n"));
/// assert!(out.contains("agent_protocol_circuit_state{agent=\"waf\"} 0\n"));
/// assert!(out.contains("agent_protocol_correlation_affinities 7\n"));
/// ```
pub fn encode_pool_gauges(
    prefix: &str,
    agents: &[AgentGauges<'_>],
    affinities: usize,
    encoder: &mut DescriptorEncoder<'_>,
) -> fmt::Result {
    let names = FamilyNames::new(prefix);
    let name = |base: &str| names.name(base);
    let labels: Vec<Labels<'_>> = agents
        .iter()
        .map(|a| Labels::new([("agent", a.agent)].into_iter()))
        .collect();

    let family = name("connections");
    let mut metric = encoder.encode_descriptor(
        &family,
        "Agent connections by state.",
        None,
        MetricType::Gauge,
    )?;
    for (a, l) in agents.iter().zip(&labels) {
        let c = &a.counts;
        let disconnected = c.connections.saturating_sub(c.connected);
        for (state, value) in [
            ("healthy", c.healthy),
            ("degraded", c.degraded),
            ("unavailable", c.unavailable),
            ("disconnected", disconnected),
        ] {
            labelled(&mut metric, &l.with(Some(("state", state))), |g| {
                g.encode_gauge(&value)
            })?;
        }
    }

    let family = name("paused_connections");
    let mut metric = encoder.encode_descriptor(
        &family,
        "Connections paused by the agent's flow control.",
        None,
        MetricType::Gauge,
    )?;
    for (a, l) in agents.iter().zip(&labels) {
        labelled(&mut metric, &l.with(None), |g| {
            g.encode_gauge(&a.counts.paused)
        })?;
    }

    let family = name("circuit_state");
    let mut metric = encoder.encode_descriptor(
        &family,
        "Circuit breaker state (0 closed, 1 half-open, 2 open).",
        None,
        MetricType::Gauge,
    )?;
    for (a, l) in agents.iter().zip(&labels) {
        let value = u32::from(circuit_state_value(a.circuit));
        labelled(&mut metric, &l.with(None), |g| g.encode_gauge(&value))?;
    }

    let family = name("correlation_affinities");
    let mut metric = encoder.encode_descriptor(
        &family,
        "Correlation affinity entries (body chunks pinned to a connection).",
        None,
        MetricType::Gauge,
    )?;
    metric.encode_gauge(&affinities)
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

    fn scrape(
        encode: impl Fn(&mut DescriptorEncoder<'_>) -> fmt::Result + Send + Sync + 'static,
    ) -> String {
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(crate::metrics::EncodeFn::new(encode)));
        crate::metrics::render_openmetrics(&registry)
    }

    #[test]
    fn gauges_escape_and_sanitise() {
        let counts = ConnectionCounts {
            connections: 3,
            connected: 1,
            degraded: 1,
            ..Default::default()
        };
        let out = scrape(move |e| {
            let agents = [AgentGauges {
                agent: "a\"b\\c\nd",
                counts,
                circuit: CircuitState::HalfOpen,
            }];
            encode_pool_gauges("9 bad-prefix", &agents, 0, e)
        });
        assert!(out.contains(
            "_9_bad_prefix_connections{agent=\"a\\\"b\\\\c\\nd\",state=\"disconnected\"} 2\n"
        ));
        assert!(out.contains("_9_bad_prefix_circuit_state{agent=\"a\\\"b\\\\c\\nd\"} 1\n"));
        // Every family header appears once.
        assert_eq!(out.matches("# TYPE _9_bad_prefix_connections ").count(), 1);
    }

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
        let out = scrape(move |e| store.encode(e));
        assert!(out.contains("lat_bucket{"), "{out}");
        assert!(out.contains("le=\"0.5\""), "{out}");
        assert!(out.contains("le=\"+Inf\""), "{out}");
        assert!(out.contains("agent_queue_depth{"), "{out}");
    }
}
