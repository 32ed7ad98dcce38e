//! The Prometheus text exposition format: rendering [`PoolMetrics`] and [`AgentMetricsStore`],
//! and checking or sanitising metric and label names.
//!
//! Names the pool chooses (the configured prefix and labels) are sanitised, since a typo in the
//! configuration must not make the scrape unparsable; names an agent reports are checked, and a
//! series with an invalid one is refused when stored. Label values and help text are escaped.

use std::fmt::Write as _;

use super::counters::{DecisionKind, ErrorCause, PoolMetrics};
use super::histogram::BUCKET_LABELS;
use super::reported::{AgentMetricsStore, Kind, Value};

impl PoolMetrics {
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
            let s = m.latency().snapshot();
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

impl AgentMetricsStore {
    /// Appends every stored series in Prometheus text format, grouped by metric name, label keys
    /// sorted. `HELP` appears when an agent supplied help text; `TYPE` always.
    pub fn render_prometheus(&self, out: &mut String) {
        for (name, family) in self.families() {
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
