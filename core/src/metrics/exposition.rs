//! Exposition through [`prometheus_client`]: the pool's metrics ([`PoolMetrics`]) and the
//! agents' reported series ([`AgentMetricsStore`]) are encoded into a `DescriptorEncoder`, so a
//! proxy registers them in its own `Registry` beside its other metrics (see [`EncodeFn`]) and the
//! text format (OpenMetrics, `# EOF` included) is the library's, not ours.
//!
//! What stays ours is what no encoder can know: names the pool chooses (the configured prefix and
//! labels) are sanitised, since a typo in the configuration must not make the whole scrape
//! unparsable; names an agent reports are checked when stored; and every label value and help
//! text is escaped here, because the encoder writes them as given and an agent id or a reported
//! label can come from a hostile peer.

use std::fmt::{self, Write as _};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabel, EncodeLabelSet, EncodeLabelValue, LabelSetEncoder,
    LabelValueEncoder, MetricEncoder, NoLabelSet,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::counters::{DecisionKind, ErrorCause, PoolMetrics};
use super::histogram::{HistogramSnapshot, LATENCY_BUCKETS_SECONDS};
use super::reported::{AgentMetricsStore, Kind, Value};

/// A [`Collector`] that runs a function at each scrape: how the pool and the agent server put
/// their metrics in a [`Registry`] (theirs, or the one a proxy merges them into).
///
/// ```
/// use std::sync::Arc;
/// use agent_protocol_core::metrics::{render_openmetrics, EncodeFn, PoolMetrics};
/// use prometheus_client::registry::Registry;
///
/// let metrics = Arc::new(PoolMetrics::new());
/// let seen = metrics.clone();
/// let mut registry = Registry::default();
/// registry.register_collector(Box::new(EncodeFn::new(move |encoder| {
///     PoolMetrics::encode_group("ap", &[(&*seen, &[("agent", "waf")][..])], encoder)
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

impl PoolMetrics {
    /// Encodes several agents' metrics: each family once, then the samples of every member
    /// with its labels. Every name starts with `prefix_` (sanitised to a valid name); label
    /// names are sanitised and values escaped. Counters get OpenMetrics' `_total` suffix
    /// (`{prefix}_requests_total`), the latency histogram is
    /// `{prefix}_request_duration_seconds`.
    pub fn encode_group(
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
}

/// Encodes a latency histogram's snapshot as one member of a histogram family.
pub(crate) fn encode_histogram(
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
pub(crate) fn encode_counter(
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

impl AgentMetricsStore {
    /// Encodes every stored series, grouped by metric name, label keys sorted, help text (when
    /// the agent gave one) escaped, every name exactly as reported. A counter named `..._total`
    /// is typed counter (OpenMetrics writes the suffix on each sample, so the descriptor drops
    /// it); one named otherwise, such as the flattened `_bucket` and `_count` series of a
    /// reported histogram, is typed unknown, since OpenMetrics requires counter samples to end in
    /// `_total` and renaming an agent's series would break the queries written for it.
    pub fn encode(&self, encoder: &mut DescriptorEncoder<'_>) -> fmt::Result {
        for (name, family) in self.families() {
            let (kind, base) = match family.kind {
                Kind::Counter => match name.strip_suffix("_total") {
                    Some(base) => (MetricType::Counter, base),
                    None => (MetricType::Unknown, name.as_str()),
                },
                Kind::Gauge => (MetricType::Gauge, name.as_str()),
            };
            let help = family.help.as_deref().map(escape_help).unwrap_or_default();
            let mut metric = encoder.encode_descriptor(base, &help, None, kind)?;
            for (labels, sample) in &family.series {
                let labels = Stored(labels);
                match sample.value {
                    Value::Counter(v) if matches!(kind, MetricType::Counter) => {
                        encode_counter(&mut metric, &labels, v)?;
                    }
                    // The encoder refuses (and so ends the whole scrape at) an integer gauge
                    // above i64::MAX: beyond it, an agent's value is written as a float.
                    Value::Counter(v) => match i64::try_from(v) {
                        Ok(v) => labelled(&mut metric, &labels, |m| m.encode_gauge(&v))?,
                        Err(_) => labelled(&mut metric, &labels, |m| m.encode_gauge(&(v as f64)))?,
                    },
                    Value::Gauge(v) => labelled(&mut metric, &labels, |m| m.encode_gauge(&v))?,
                }
            }
        }
        Ok(())
    }
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
            let name = sanitize(name, false);
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

/// A configured prefix or metric name made valid.
pub fn sanitize_metric_name(name: &str) -> String {
    sanitize(name, true)
}

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
