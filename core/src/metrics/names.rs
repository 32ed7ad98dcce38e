//! Metric and label names: the Prometheus grammar, checked for names agents report and made
//! valid for names the configuration chooses.

/// Whether `name` matches `[a-zA-Z_:][a-zA-Z0-9_:]*`.
pub fn is_valid_metric_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_' || b == b':')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':')
}

/// Whether `name` matches `[a-zA-Z_][a-zA-Z0-9_]*` (names starting with `__` are valid syntax
/// but reserved; [`AgentMetricsStore`](super::AgentMetricsStore) refuses them separately).
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

/// A configured label name made valid (`[a-zA-Z_][a-zA-Z0-9_]*`).
pub fn sanitize_label_name(name: &str) -> String {
    sanitize(name, false)
}
