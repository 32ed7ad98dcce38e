//! Tests of the exposition as a scrape sees it (a prometheus-client registry holding them,
//! encoded as OpenMetrics text): every family there, names sanitised, values escaped, families
//! kept together, and the agent-reported store's validation, limits and expiry.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;
use agent_protocol_core::metrics::{
    is_valid_metric_name, IngestSummary, ReportedCounter, ReportedGauge, SeriesRejected,
};
use prometheus_client::registry::Registry;
use proptest::prelude::*;

/// What a scrape of a registry holding `encode` shows.
fn scrape(
    encode: impl Fn(&mut DescriptorEncoder<'_>) -> fmt::Result + Send + Sync + 'static,
) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(EncodeFn::new(encode)));
    render_openmetrics(&registry)
}

/// A scrape of one agent's pool metrics under `prefix` with `labels`.
fn pool_text(
    m: &Arc<PoolMetrics>,
    prefix: &'static str,
    labels: &'static [(&str, &str)],
) -> String {
    let m = m.clone();
    scrape(move |e| encode_pool_metrics(prefix, &[(&*m, labels)], e))
}

/// A scrape of the store as it is now.
fn store_text(s: &AgentMetricsStore) -> String {
    let s = s.clone();
    scrape(move |e| encode_reported(&s, e))
}

/// Minimal exposition-format checker: every line is a comment or `name{labels} value`, each
/// family's HELP/TYPE appears once and before its samples, and samples of a family are
/// contiguous.
fn check_exposition(text: &str) {
    let mut typed: Vec<String> = Vec::new();
    let mut current: Option<String> = None;
    let mut finished: Vec<String> = Vec::new();
    assert!(text.ends_with("# EOF\n"), "{text}");
    for line in text.lines() {
        if line == "# EOF" {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert!(is_valid_metric_name(name), "{line}");
            assert!(
                ["counter", "gauge", "histogram", "unknown"].contains(&kind),
                "{line}"
            );
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
        let base = ["_total", "_bucket", "_sum", "_count"]
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
    let m = Arc::new(PoolMetrics::new());
    let g = m.start_request();
    m.record_response(DecisionKind::Block, Duration::from_micros(50));
    m.record_timeout();
    m.record_error(ErrorCause::Protocol);
    m.record_flow_control_pause();
    m.record_flow_control_resume();
    m.record_flow_control_rejection();
    m.record_cancel();
    m.record_affinity_rejection();
    let out = pool_text(&m, "ap", &[]);
    drop(g);
    check_exposition(&out);
    for needle in [
        "# TYPE ap_requests counter\n",
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
    let m = Arc::new(PoolMetrics::new());
    let out = pool_text(
        &m,
        "9bad-prefix",
        &[
            ("agent", "a\"b\\c\nd"),
            ("agent", "dup"),
            ("le", "x"),
            ("bad-name", "v"),
            ("", "dropped"),
        ],
    );
    check_exposition(&out);
    assert!(
        out.contains("_9bad_prefix_requests_total{agent=\"a\\\"b\\\\c\\nd\",bad_name=\"v\"} 0\n")
    );
    // The caller's `le` label yields to the histogram's own.
    assert!(out.contains(
        "_9bad_prefix_request_duration_seconds_bucket{le=\"+Inf\",agent=\"a\\\"b\\\\c\\nd\",bad_name=\"v\"} 0\n"
    ));
}

#[test]
fn group_rendering_keeps_families_together() {
    let a = Arc::new(PoolMetrics::new());
    let b = Arc::new(PoolMetrics::new());
    a.request_started();
    b.request_started();
    b.request_started();
    b.request_finished();
    b.request_finished();
    b.request_finished(); // unmatched: saturates
    let out = scrape(move |e| {
        encode_pool_metrics("", &[(&*a, &[("agent", "a")]), (&*b, &[("agent", "b")])], e)
    });
    check_exposition(&out);
    assert!(out.contains("requests_total{agent=\"a\"} 1\nrequests_total{agent=\"b\"} 2\n"));
    assert!(out.contains("in_flight_requests{agent=\"b\"} 0\n"));
    assert_eq!(out.matches("# TYPE requests ").count(), 1);
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
    let out = store_text(&s);
    check_exposition(&out);
    assert_eq!(
        out,
        "# HELP ok \n# TYPE ok counter\nok_total{agent_id=\"a\",route=\"/x\\\"y\"} 3\n\
         # HELP q \n# TYPE q unknown\nq{agent_id=\"a\"} 1\n# EOF\n"
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
    let out = store_text(&s);
    check_exposition(&out);
    assert_eq!(
        out,
        "# HELP depth Queue\\\\depth\\nnow\n# TYPE depth gauge\n\
         depth{agent_id=\"a\",zone=\"eu\"} -1.5\ndepth{agent_id=\"b\",zone=\"eu\"} NaN\n# EOF\n"
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
    let out = store_text(&s);
    let help_line = out.lines().next().unwrap();
    assert!(help_line.len() <= "# HELP m ".len() + AgentMetricsStore::MAX_HELP_LEN);
}

proptest! {
    #[test]
    fn histogram_output_is_cumulative(latencies in proptest::collection::vec(0u64..10_000_000_000, 0..100)) {
        let m = Arc::new(PoolMetrics::new());
        for l in &latencies {
            m.observe_latency(Duration::from_nanos(*l));
        }
        let out = pool_text(&m, "p", &[("agent", "x")]);
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
        let out = store_text(&s);
        check_exposition(&out);
        prop_assert_eq!(out.lines().filter(|l| !l.starts_with('#')).count(), s.len());
    }
}

#[test]
fn gauges_escape_and_sanitise() {
    use agent_protocol_core::pool::{CircuitState, ConnectionCounts};
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
    check_exposition(&out);
    assert!(out.contains(
        "_9_bad_prefix_connections{agent=\"a\\\"b\\\\c\\nd\",state=\"disconnected\"} 2\n"
    ));
    assert!(out.contains("_9_bad_prefix_circuit_state{agent=\"a\\\"b\\\\c\\nd\"} 1\n"));
    assert_eq!(out.matches("# TYPE _9_bad_prefix_connections ").count(), 1);
}

#[test]
fn server_metrics_families() {
    let m = Arc::new(ServerMetrics::new());
    m.connection_opened();
    m.requests_started(2);
    m.record_answer(DecisionKind::Block, Some(Duration::from_micros(70)));
    m.requests_finished(1);
    m.add_fail_closed(4);
    let seen = m.clone();
    let out = scrape(move |e| encode_server_metrics(&seen, "ag", &[("agent_id", "w\"1")], e));
    check_exposition(&out);
    for needle in [
        "ag_connections{agent_id=\"w\\\"1\"} 1\n",
        "ag_requests_total{agent_id=\"w\\\"1\"} 2\n",
        "ag_in_flight_requests{agent_id=\"w\\\"1\"} 1\n",
        "ag_answers_total{agent_id=\"w\\\"1\",decision=\"block\"} 1\n",
        "ag_fail_closed_total{agent_id=\"w\\\"1\"} 4\n",
        "ag_handler_duration_seconds_count{agent_id=\"w\\\"1\"} 1\n",
    ] {
        assert!(out.contains(needle), "missing {needle:?} in\n{out}");
    }
}

/// An agent cannot make the scrape carry one family twice, which scrapers reject whole: not by
/// reporting under the pool's names (refused when stored), nor with a counter `x_total` beside
/// a gauge `x` (one family in the exposition: the first is kept).
#[test]
fn reported_names_never_duplicate_a_family() {
    let t = Instant::now();
    let mut s = AgentMetricsStore::new().reserving("agent_protocol");
    assert_eq!(
        s.record_counter("a", &counter("agent_protocol_requests_total", &[], 1), t),
        Err(SeriesRejected::ReservedName)
    );
    s.record_counter("a", &counter("x_total", &[], 1), t)
        .unwrap();
    let gauge = ReportedGauge {
        name: "x".into(),
        value: 2.0,
        ..Default::default()
    };
    s.record_gauge("a", &gauge, t).unwrap();
    let out = store_text(&s);
    check_exposition(&out);
    assert_eq!(out.matches("# TYPE x ").count(), 1, "{out}");
    assert!(!out.contains("agent_protocol_requests"), "{out}");
}
