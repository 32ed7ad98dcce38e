//! Metrics through [`prometheus_client`]: the pool's metrics, an agent server's metrics and the
//! series agents report are encoded into a `DescriptorEncoder` at each scrape, so a proxy or an
//! agent registers them in its own `Registry` beside its other metrics (see [`EncodeFn`],
//! [`AgentPool::register_metrics`](crate::pool::AgentPool::register_metrics),
//! [`ServerHandle::register_metrics`](crate::server::ServerHandle::register_metrics)) and the
//! text format (OpenMetrics, `# EOF` included) is the library's, not ours. The numbers
//! themselves are plain atomics in the core (`agent_protocol_core::metrics`), read here.
//!
//! What stays ours is what no encoder can know: names the pool chooses (the configured prefix and
//! labels) are sanitised, since a typo in the configuration must not make the whole scrape
//! unparsable; names an agent reports are checked when stored; and every label value and help
//! text is escaped here, because the encoder writes them as given and an agent id or a reported
//! label can come from a hostile peer. Nothing an agent reports can make the encoder fail, which
//! would end the whole scrape, the proxy's own metrics included.

use std::fmt::{self, Write as _};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabel, EncodeLabelSet, EncodeLabelValue, LabelSetEncoder,
    LabelValueEncoder, MetricEncoder, NoLabelSet,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use agent_protocol_core::metrics::{
    sanitize_label_name, sanitize_metric_name, AgentMetricsStore, DecisionKind, ErrorCause,
    HistogramSnapshot, PoolMetrics, ReportedKind, ReportedValue, ServerMetrics,
    LATENCY_BUCKETS_SECONDS,
};
use agent_protocol_core::pool::{circuit_state_value, AgentGauges};

/// The Prometheus client library the metrics are encoded with: register them in a
/// `prometheus_client::registry::Registry` of this version.
pub use prometheus_client;

#[cfg(test)]
mod tests;

/// A [`Collector`] that runs a function at each scrape: how the pool and the agent server put
/// their metrics in a [`Registry`] (theirs, or the one a proxy merges them into).
///
/// ```
/// use std::sync::Arc;
/// use agent_protocol_driver::core::metrics::PoolMetrics;
/// use agent_protocol_driver::metrics::{encode_pool_metrics, render_openmetrics, EncodeFn};
/// use agent_protocol_driver::metrics::prometheus_client::registry::Registry;
///
/// let metrics = Arc::new(PoolMetrics::new());
/// let seen = metrics.clone();
/// let mut registry = Registry::default();
/// registry.register_collector(Box::new(EncodeFn::new(move |encoder| {
///     encode_pool_metrics("ap", &[(&*seen, &[("agent", "waf")][..])], encoder)
/// })));
/// drop(metrics.start_request());
/// let text = render_openmetrics(&registry);
/// assert!(text.contains("ap_requests_total{agent=\"waf\"} 1\n"));
/// assert!(text.ends_with("# EOF\n"));
/// ```
pub struct EncodeFn<F>(F);

impl<F> EncodeFn<F>
where
    F: Fn(&mut DescriptorEncoder<'_>) -> fmt::Result + Send + Sync + 'static,
{
    /// A collector running `encode` at each scrape.
    pub fn new(encode: F) -> Self {
        Self(encode)
    }
}

impl<F> fmt::Debug for EncodeFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EncodeFn")
    }
}

impl<F> Collector for EncodeFn<F>
where
    F: Fn(&mut DescriptorEncoder<'_>) -> fmt::Result + Send + Sync + 'static,
{
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> fmt::Result {
        (self.0)(&mut encoder)
    }
}

/// `registry` in the OpenMetrics text format, as a `/metrics` endpoint serves it (content type
/// `application/openmetrics-text; version=1.0.0; charset=utf-8`).
pub fn render_openmetrics(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail; an encoder error would be a bug in a collector.
    let _ = prometheus_client::encoding::text::encode(&mut out, registry);
    out
}

/// Encodes several agents' [`PoolMetrics`]: each family once, then the samples of every
/// member with its labels. Every name starts with `prefix_` (sanitised to a valid name); label
/// names are sanitised and values escaped. Counters get OpenMetrics' `_total` suffix
/// (`{prefix}_requests_total`), the latency histogram is `{prefix}_request_duration_seconds`.
pub fn encode_pool_metrics(
    prefix: &str,
    members: &[(&PoolMetrics, &[(&str, &str)])],
    encoder: &mut DescriptorEncoder<'_>,
) -> fmt::Result {
    let names = FamilyNames::new(prefix);
    let name = |base: &str| names.name(base);
    let labels: Vec<Labels<'_>> = members
        .iter()
        .map(|(_, l)| Labels::new(l.iter().copied()))
        .collect();
    let counters: [Family; 7] = [
        (
            "requests",
            "Requests sent to the agent.",
            PoolMetrics::requests_total,
        ),
        (
            "timeouts",
            "Requests that timed out waiting for the agent.",
            PoolMetrics::timeouts_total,
        ),
        (
            "flow_control_pauses",
            "Flow-control pause signals received from the agent.",
            PoolMetrics::flow_control_pauses_total,
        ),
        (
            "flow_control_resumes",
            "Flow-control resume signals received from the agent.",
            PoolMetrics::flow_control_resumes_total,
        ),
        (
            "flow_control_rejections",
            "Requests rejected or allowed unchecked because the agent was paused.",
            PoolMetrics::flow_control_rejections_total,
        ),
        ("cancels", "Requests cancelled.", PoolMetrics::cancels_total),
        (
            "affinity_rejections",
            "Correlation affinities not stored because the table was full.",
            PoolMetrics::affinity_rejections_total,
        ),
    ];
    for (base, help, get) in counters {
        let family = name(base);
        let mut metric = encoder.encode_descriptor(&family, help, None, MetricType::Counter)?;
        for ((m, _), l) in members.iter().zip(&labels) {
            encode_counter(&mut metric, &l.with(None), get(m))?;
        }
    }
    let family = name("in_flight_requests");
    let mut metric = encoder.encode_descriptor(
        &family,
        "Requests currently waiting for the agent.",
        None,
        MetricType::Gauge,
    )?;
    for ((m, _), l) in members.iter().zip(&labels) {
        labelled(&mut metric, &l.with(None), |g| {
            g.encode_gauge(&m.in_flight())
        })?;
    }

    let family = name("responses");
    let mut metric = encoder.encode_descriptor(
        &family,
        "Agent responses by decision.",
        None,
        MetricType::Counter,
    )?;
    for ((m, _), l) in members.iter().zip(&labels) {
        for d in DecisionKind::ALL {
            encode_counter(
                &mut metric,
                &l.with(Some(("decision", d.as_str()))),
                m.responses_total(d),
            )?;
        }
    }

    let family = name("errors");
    let mut metric = encoder.encode_descriptor(
        &family,
        "Failed requests by cause.",
        None,
        MetricType::Counter,
    )?;
    for ((m, _), l) in members.iter().zip(&labels) {
        for c in ErrorCause::ALL {
            encode_counter(
                &mut metric,
                &l.with(Some(("cause", c.as_str()))),
                m.errors_total(c),
            )?;
        }
    }

    let family = name("request_duration_seconds");
    let mut metric = encoder.encode_descriptor(
        &family,
        "Time from submitting a request to the agent's answer.",
        None,
        MetricType::Histogram,
    )?;
    for ((m, _), l) in members.iter().zip(&labels) {
        encode_histogram(&mut metric, &l.with(None), &m.latency().snapshot())?;
    }
    Ok(())
}

/// Encodes a latency histogram's snapshot as one member of a histogram family.
fn encode_histogram(
    metric: &mut MetricEncoder<'_>,
    labels: &(impl EncodeLabelSet + LabelCount),
    s: &HistogramSnapshot,
) -> fmt::Result {
    // The encoder takes per-bucket (not cumulative) counts and spells the last bound, f64::MAX,
    // as +Inf.
    let mut buckets = [(0.0, 0u64); 17];
    let mut previous = 0;
    for (i, (bucket, cumulative)) in buckets.iter_mut().zip(s.cumulative).enumerate() {
        let bound = LATENCY_BUCKETS_SECONDS.get(i).copied().unwrap_or(f64::MAX);
        *bucket = (bound, cumulative - previous);
        previous = cumulative;
    }
    labelled(metric, labels, |m| {
        m.encode_histogram::<NoLabelSet>(s.sum_seconds, s.count, &buckets, None)
    })
}

/// Encodes one counter sample.
fn encode_counter(
    metric: &mut MetricEncoder<'_>,
    labels: &(impl EncodeLabelSet + LabelCount),
    value: u64,
) -> fmt::Result {
    labelled(metric, labels, |m| {
        m.encode_counter::<NoLabelSet, _, u64>(&value, None)
    })
}

/// Runs `encode` on `metric` with `labels`; with none, on `metric` itself, since an empty
/// label set would be written as `{}`.
pub fn labelled(
    metric: &mut MetricEncoder<'_>,
    labels: &(impl EncodeLabelSet + LabelCount),
    encode: impl FnOnce(&mut MetricEncoder<'_>) -> fmt::Result,
) -> fmt::Result {
    if labels.label_count() == 0 {
        encode(metric)
    } else {
        encode(&mut metric.encode_family(labels)?)
    }
}

/// How many labels a label set will write.
pub trait LabelCount {
    /// The number of labels.
    fn label_count(&self) -> usize;
}

impl LabelCount for LabelsWith<'_> {
    fn label_count(&self) -> usize {
        let extra_name = self.extra.map(|(n, _)| n);
        let base = self
            .base
            .pairs
            .iter()
            .filter(|(n, _)| Some(n.as_str()) != extra_name)
            .count();
        base + usize::from(self.extra.is_some())
    }
}

impl LabelCount for Stored<'_> {
    fn label_count(&self) -> usize {
        self.0.len()
    }
}

/// Encodes every stored series, grouped by metric name, label keys sorted, help text (when
/// the agent gave one) escaped, every name exactly as reported. A counter named `..._total`
/// is typed counter (OpenMetrics writes the suffix on each sample, so the descriptor drops
/// it); one named otherwise, such as the flattened `_bucket` and `_count` series of a
/// reported histogram, is typed unknown, since OpenMetrics requires counter samples to end in
/// `_total` and renaming an agent's series would break the queries written for it.
pub fn encode_reported(
    store: &AgentMetricsStore,
    encoder: &mut DescriptorEncoder<'_>,
) -> fmt::Result {
    // Two stored names can be one family in the exposition (a counter `x_total` and a gauge
    // `x`): a family twice makes scrapers reject the whole scrape, so the first one wins.
    let mut emitted = std::collections::HashSet::new();
    for family in store.families() {
        let name = family.name;
        let (kind, base) = match family.kind {
            ReportedKind::Counter => match name.strip_suffix("_total") {
                Some(base) => (MetricType::Counter, base),
                None => (MetricType::Unknown, name),
            },
            ReportedKind::Gauge => (MetricType::Gauge, name),
        };
        if !emitted.insert(base) {
            continue;
        }
        let help = family.help.map(escape_help).unwrap_or_default();
        let mut metric = encoder.encode_descriptor(base, &help, None, kind)?;
        for (labels, value) in family.series() {
            let labels = Stored(labels);
            match value {
                ReportedValue::Counter(v) if matches!(kind, MetricType::Counter) => {
                    encode_counter(&mut metric, &labels, v)?;
                }
                // The encoder refuses (and so ends the whole scrape at) an integer gauge
                // above i64::MAX: beyond it, an agent's value is written as a float.
                ReportedValue::Counter(v) => match i64::try_from(v) {
                    Ok(v) => labelled(&mut metric, &labels, |m| m.encode_gauge(&v))?,
                    Err(_) => labelled(&mut metric, &labels, |m| m.encode_gauge(&(v as f64)))?,
                },
                ReportedValue::Gauge(v) => labelled(&mut metric, &labels, |m| m.encode_gauge(&v))?,
            }
        }
    }
    Ok(())
}

/// A stored series' labels: names checked when stored, values escaped here.
struct Stored<'a>(&'a [(String, String)]);

impl EncodeLabelSet for Stored<'_> {
    fn encode(&self, encoder: &mut LabelSetEncoder<'_>) -> fmt::Result {
        for (name, value) in self.0 {
            (name.as_str(), Escaped(value)).encode(encoder.encode_label())?;
        }
        Ok(())
    }
}

/// Sanitised label names with their values, first occurrence of each name kept; empty names
/// dropped, and `le` dropped because a histogram owns it.
#[derive(Debug)]
pub struct Labels<'a> {
    pairs: Vec<(String, &'a str)>,
}

impl<'a> Labels<'a> {
    /// Cleans `labels` once, for many samples.
    pub fn new(labels: impl Iterator<Item = (&'a str, &'a str)>) -> Self {
        let mut pairs: Vec<(String, &'a str)> = Vec::new();
        for (name, value) in labels {
            if name.is_empty() {
                continue;
            }
            let name = sanitize_label_name(name);
            if name != "le" && !pairs.iter().any(|(n, _)| *n == name) {
                pairs.push((name, value));
            }
        }
        Self { pairs }
    }

    /// These labels plus `extra` (which replaces a base label of the same name).
    pub fn with<'s>(&'s self, extra: Option<(&'s str, &'s str)>) -> LabelsWith<'s> {
        LabelsWith { base: self, extra }
    }
}

/// [`Labels`] with one more pair, as encoded for one sample.
#[derive(Debug)]
pub struct LabelsWith<'a> {
    base: &'a Labels<'a>,
    extra: Option<(&'a str, &'a str)>,
}

impl EncodeLabelSet for LabelsWith<'_> {
    fn encode(&self, encoder: &mut LabelSetEncoder<'_>) -> fmt::Result {
        let extra_name = self.extra.map(|(n, _)| n);
        for (name, value) in &self.base.pairs {
            if Some(name.as_str()) != extra_name {
                (name.as_str(), Escaped(value)).encode(encoder.encode_label())?;
            }
        }
        if let Some((name, value)) = self.extra {
            (name, Escaped(value)).encode(encoder.encode_label())?;
        }
        Ok(())
    }
}

/// A label value with `\`, `"` and newlines escaped, as the text format requires.
struct Escaped<'a>(&'a str);

impl EncodeLabelValue for Escaped<'_> {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> fmt::Result {
        for c in self.0.chars() {
            match c {
                '\\' => encoder.write_str("\\\\")?,
                '"' => encoder.write_str("\\\"")?,
                '\n' => encoder.write_str("\\n")?,
                c => encoder.write_char(c)?,
            }
        }
        Ok(())
    }
}

/// Help text with `\` and newlines escaped (a newline would end the HELP line early).
fn escape_help(help: &str) -> String {
    let mut out = String::with_capacity(help.len());
    for c in help.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// A family of [`PoolMetrics`] holding one counter per member: name, help, getter.
type Family = (&'static str, &'static str, fn(&PoolMetrics) -> u64);

/// Family names under a configured prefix: `{prefix}_{base}`, or `base` alone when the prefix
/// is empty; the prefix is sanitised once.
#[derive(Debug)]
pub struct FamilyNames(String);

impl FamilyNames {
    /// Names under `prefix`.
    pub fn new(prefix: &str) -> Self {
        Self(sanitize_metric_name(prefix))
    }

    /// The family `base`.
    pub fn name(&self, base: &str) -> String {
        if self.0.is_empty() {
            base.to_owned()
        } else {
            format!("{}_{base}", self.0)
        }
    }
}

/// Encodes the pool's connection gauges: `{prefix}_connections{agent,state}` (state =
/// `healthy`, `degraded`, `unavailable`, `disconnected`), `{prefix}_paused_connections{agent}`,
/// `{prefix}_circuit_state{agent}` and the pool-wide `{prefix}_correlation_affinities`. An
/// invalid prefix is sanitised; label values are escaped.
///
/// ```
/// use agent_protocol_driver::core::pool::{AgentGauges, CircuitState, ConnectionCounts};
/// use agent_protocol_driver::metrics::{encode_pool_gauges, render_openmetrics, EncodeFn};
/// use agent_protocol_driver::metrics::prometheus_client::registry::Registry;
/// let mut counts = ConnectionCounts::default();
/// counts.add(true, agent_protocol_driver::core::HealthState::Healthy, false);
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

/// Encodes an agent server's [`ServerMetrics`]: every name starts with `prefix_` (sanitised),
/// every sample carries `labels` (names sanitised, values escaped). Families:
/// `{prefix}_connections_opened_total`, `_connections`, `_requests_total`,
/// `_in_flight_requests`, `_answers_total{decision}`, `_cancelled_total`,
/// `_fail_closed_total`, `_handler_duration_seconds`.
pub fn encode_server_metrics(
    metrics: &ServerMetrics,
    prefix: &str,
    labels: &[(&str, &str)],
    encoder: &mut DescriptorEncoder<'_>,
) -> fmt::Result {
    let names = FamilyNames::new(prefix);
    let labels = Labels::new(labels.iter().copied());
    for (base, help, value) in [
        (
            "connections_opened",
            "Proxy connections accepted (or dialed, for reverse connections).",
            metrics.connections_opened(),
        ),
        ("requests", "Events handed to the handler.", metrics.requests()),
        (
            "cancelled",
            "Events that ended without the handler's answer (cancelled, or the connection closed).",
            metrics.cancelled(),
        ),
        (
            "fail_closed",
            "Events answered fail-closed by the connection without reaching the handler (undecodable, over a limit, over max_in_flight).",
            metrics.fail_closed(),
        ),
    ] {
        let family = names.name(base);
        let mut metric = encoder.encode_descriptor(&family, help, None, MetricType::Counter)?;
        encode_counter(&mut metric, &labels.with(None), value)?;
    }
    for (base, help, value) in [
        (
            "connections",
            "Proxy connections open.",
            metrics.connections(),
        ),
        (
            "in_flight_requests",
            "Events in the handler.",
            metrics.in_flight(),
        ),
    ] {
        let family = names.name(base);
        let mut metric = encoder.encode_descriptor(&family, help, None, MetricType::Gauge)?;
        labelled(&mut metric, &labels.with(None), |g| g.encode_gauge(&value))?;
    }
    let family = names.name("answers");
    let mut metric = encoder.encode_descriptor(
        &family,
        "Handler answers by decision.",
        None,
        MetricType::Counter,
    )?;
    for d in DecisionKind::ALL {
        let with = labels.with(Some(("decision", d.as_str())));
        encode_counter(&mut metric, &with, metrics.answers(d))?;
    }
    let family = names.name("handler_duration_seconds");
    let mut metric = encoder.encode_descriptor(
        &family,
        "Time from handing an event to the handler to its answer.",
        None,
        MetricType::Histogram,
    )?;
    encode_histogram(
        &mut metric,
        &labels.with(None),
        &metrics.handler_latency().snapshot(),
    )
}
