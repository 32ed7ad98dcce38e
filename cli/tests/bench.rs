//! `agentctl bench` as a load tool: honest statistics when things go wrong, run controls,
//! output formats, custom requests, the endpoint forms, and the messages a user sees, all by
//! running the binary against a real `agentctl serve` (or a raw socket playing a wrong peer).

mod support;

use std::io::{Read, Write};
use std::process::Stdio;
use std::time::Duration;

use support::{agentctl, json, run_failing, run_json, serve, wait_within};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn text_report_shows_config_percentiles_histogram_and_decisions() {
    let dir = tempfile::tempdir().unwrap();
    let (_serve, sock) = serve(dir.path(), &[]);
    let out = agentctl()
        .arg("bench")
        .arg(&sock)
        .args(["-n", "500", "-c", "8"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    for needle in [
        "agentctl bench",
        "agent        agentctl-waf",
        "transport    uds, msgpack, tokio runtime",
        "load         500 requests, closed loop, up to 8 in flight over 4 connections",
        "request      GET /shop/",
        "outcome      completed",
        "successes    500 (100.00%)",
        "Latency (successful requests)",
        "p99.9",
        "Histogram",
        "allow        500",
    ] {
        assert!(text.contains(needle), "{needle:?} missing:\n{text}");
    }
    assert!(!text.contains("Errors by kind"), "{text}");
}

/// More requests in flight than the agent takes: the refusals are counted as errors of one
/// kind, apart from the latency and throughput of the answered ones, and bench says so first.
#[test]
fn saturation_is_reported_as_errors_by_kind_not_as_fast_requests() {
    let dir = tempfile::tempdir().unwrap();
    let (_serve, sock) = serve(dir.path(), &[]);
    let out = agentctl()
        .arg("bench")
        .arg(&sock)
        .args(["-n", "3000", "-c", "200", "--connections", "1", "--json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("at most 100 requests in flight per connection")
            && stderr.contains("--connections 2"),
        "{stderr}"
    );
    let report = json(&out);
    let r = &report["result"];
    let (ok, errors) = (
        r["successes"].as_u64().unwrap(),
        r["errors"].as_u64().unwrap(),
    );
    assert_eq!(ok + errors, 3000, "{r}");
    assert!(errors > 0, "{r}");
    assert_eq!(r["error_kinds"]["saturated"], errors, "{r}");
    assert!(r["error_examples"]["saturated"]
        .as_str()
        .unwrap()
        .contains("saturated"));
    // Percentiles are of the answered requests only: none of them took ~0 µs.
    assert!(r["latency_us"]["p50"].as_u64().unwrap() >= 10, "{r}");
    let rate = r["req_per_s"].as_f64().unwrap();
    let elapsed = r["elapsed_s"].as_f64().unwrap();
    assert!((rate * elapsed - ok as f64).abs() < 1.0, "{r}");
}

/// An agent that stops answering (SIGSTOP: the process is there, its socket open, nothing
/// moves): requests time out, the pool's circuit breaker opens, and bench stops and says why
/// instead of counting the refusals that would follow in microseconds.
#[test]
fn a_stalled_agent_stops_the_run_when_the_circuit_opens() {
    let dir = tempfile::tempdir().unwrap();
    let (agent, sock) = serve(dir.path(), &[]);
    let bench = agentctl()
        .arg("bench")
        .arg(&sock)
        .args(["-z", "60s", "-c", "16", "--timeout", "300ms", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    agent.signal(libc::SIGSTOP);
    let out = wait_within(bench, Duration::from_secs(30));
    agent.signal(libc::SIGCONT);
    assert_eq!(out.status.code(), Some(1));
    let r = &json(&out)["result"];
    assert_eq!(r["outcome"], "circuit_open", "{r}");
    assert!(r["successes"].as_u64().unwrap() > 0, "{r}");
    assert!(r["error_kinds"]["timeout"].as_u64().unwrap() > 0, "{r}");
    let kinds: u64 = r["error_kinds"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(kinds, r["errors"].as_u64().unwrap(), "{r}");
    // Stopped within seconds of the stall, not after the 60 s it was given.
    assert!(r["elapsed_s"].as_f64().unwrap() < 20.0, "{r}");
}

#[test]
fn open_loop_rate_is_held_and_latency_is_timed_from_the_schedule() {
    let dir = tempfile::tempdir().unwrap();
    let (_serve, sock) = serve(dir.path(), &[]);
    let out = agentctl()
        .arg("bench")
        .arg(&sock)
        .args(["--rate", "1000", "-z", "3s", "--warmup", "500ms", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = json(&out);
    assert_eq!(report["config"]["rate"], 1000.0);
    assert!(
        report["warmup_requests"].as_u64().unwrap() >= 450,
        "{report}"
    );
    let r = &report["result"];
    let requests = r["requests"].as_u64().unwrap();
    assert!((2850..=3150).contains(&requests), "{r}");
    let rate = r["req_per_s"].as_f64().unwrap();
    assert!((950.0..=1050.0).contains(&rate), "{r}");
}

#[test]
fn duration_csv_and_flag_forms() {
    let dir = tempfile::tempdir().unwrap();
    let (_serve, sock) = serve(dir.path(), &[]);
    let out = agentctl()
        .arg("bench")
        .arg(&sock)
        .args(["-z", "500ms", "-c", "4", "--output", "csv"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    let header: Vec<&str> = lines[0].split(',').collect();
    let row: Vec<&str> = lines[1].split(',').collect();
    assert_eq!(header.len(), row.len(), "{text}");
    let field = |name: &str| row[header.iter().position(|h| *h == name).unwrap()];
    assert_eq!(field("outcome"), "completed");
    assert_eq!(field("errors"), "0");
    assert!(field("successes").parse::<u64>().unwrap() > 0);
    assert!(field("p99_us").parse::<u64>().unwrap() > 0);
    let elapsed: f64 = field("elapsed_s").parse().unwrap();
    assert!((0.5..5.0).contains(&elapsed), "{text}");
}

#[test]
fn flags_out_of_range_are_refused_before_anything_runs() {
    for (flag, value) in [
        ("--concurrency", "0"),
        ("--connections", "0"),
        ("--requests", "0"),
        ("--chunk-bytes", "0"),
        ("--timeout", "0s"),
        ("--timeout", "5"),
        ("--rate", "0"),
        ("--rate", "fast"),
        ("--duration", "soon"),
    ] {
        let out = agentctl()
            .args(["bench", "/nonexistent/agent.sock", flag, value])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{flag} {value}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(flag) && stderr.contains(value),
            "{flag} {value}: {stderr}"
        );
    }
    let out = agentctl()
        .args(["bench", "/x.sock", "-n", "5", "-z", "1s"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot be used with"));
}

/// The paths an agent author's rules block can be benched: headers, method, path and body
/// from flags or a file.
#[test]
fn custom_requests_reach_the_rules() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.json");
    std::fs::write(
        &rules,
        r#"{"rules":[
            {"id":"ua","header":"user-agent","contains":"sqlmap","action":"block"},
            {"id":"del","method":"DELETE","path_prefix":"/api","action":"block"},
            {"id":"sqli","body_contains":"DROP TABLE","action":"block"}]}"#,
    )
    .unwrap();
    let body_file = dir.path().join("body.txt");
    std::fs::write(&body_file, "name=x'; DROP TABLE users; --").unwrap();
    let (_serve, sock) = serve(dir.path(), &["--rules", rules.to_str().unwrap()]);
    let body_file = body_file.to_str().unwrap();
    let cases: [(&[&str], &str, &str); 5] = [
        (&[], "allow", "GET"),
        (&["-H", "User-Agent: sqlmap/1.8"], "block", "GET"),
        (
            &["-m", "DELETE", "--path", "/api/users/1"],
            "block",
            "DELETE",
        ),
        (&["-d", "q=1; DROP TABLE users"], "block", "POST"),
        (
            &["--body-file", body_file, "--chunk-bytes", "4096"],
            "block",
            "POST",
        ),
    ];
    let sock = sock.to_str().unwrap();
    for (flags, decision, method) in cases {
        let base = ["bench", sock, "-n", "20", "-c", "4", "--json"];
        let report = run_json(base.iter().chain(flags));
        assert_eq!(report["config"]["method"], method, "{flags:?}");
        assert_eq!(
            report["result"]["decisions"][decision], 20,
            "{flags:?}: {report}"
        );
    }
    run_failing(["bench", sock, "-H", "no colon here"], 2, &["--header"]);
    let missing = dir.path().join("no-such-body.txt");
    let missing = missing.to_str().unwrap();
    run_failing(
        ["bench", sock, "--body-file", missing],
        2,
        &["--body-file", "no-such-body.txt"],
    );
}

/// A body over the agent's advertised `max_body_size` is announced before the run, and every
/// request then fails as `body_too_large` (refused by the pool, never half-sent).
#[test]
fn a_body_over_the_agents_limit_is_announced_and_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (_serve, sock) = serve(dir.path(), &[]);
    let out = agentctl()
        .arg("bench")
        .arg(&sock)
        .args(["-n", "5", "-c", "1", "--body-bytes", "11000000", "--json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("larger than the agent's max_body_size (10485760)"),
        "{stderr}"
    );
    let r = &json(&out)["result"];
    assert_eq!(r["errors"], 5, "{r}");
    assert_eq!(r["error_kinds"]["body_too_large"], 5, "{r}");
}

/// `serve --tcp` is reachable by the pool as `tcp://host:port`.
#[test]
fn framed_tcp_endpoints() {
    let dir = tempfile::tempdir().unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let (_serve, _sock) = serve(dir.path(), &["--tcp", &addr]);
    for command in ["probe", "bench"] {
        let out = agentctl()
            .arg(command)
            .arg(format!("tcp://{addr}"))
            .args(if command == "bench" {
                &["-n", "200"][..]
            } else {
                &[]
            })
            .arg("--json")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let report = json(&out);
        if command == "bench" {
            assert_eq!(report["config"]["transport"], "tcp");
            assert_eq!(report["result"]["successes"], 200);
        } else {
            assert_eq!(report["transport"], "tcp");
            assert_eq!(report["decision"], "allow");
        }
    }
}

/// Wrong peers get a sentence about what is wrong, not an errno or a length-prefix number.
#[test]
fn wrong_peers_are_named() {
    let dir = tempfile::tempdir().unwrap();
    // A regular file where a socket was expected.
    let file = dir.path().join("waf.sock");
    std::fs::write(&file, "not a socket").unwrap();
    let out = agentctl().arg("probe").arg(&file).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("is not a Unix socket"), "{stderr}");
    // Nothing there at all.
    let missing = dir.path().join("gone.sock");
    let out = agentctl().arg("bench").arg(&missing).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no socket at") && stderr.contains("gone.sock"),
        "{stderr}"
    );

    // An HTTP server where an agent was expected.
    let http = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = http.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in http.incoming().take(1) {
            let mut stream = stream.unwrap();
            let mut first = [0u8; 16];
            let _ = stream.read(&mut first);
            let _ = stream.write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n");
        }
    });
    let out = agentctl()
        .arg("probe")
        .arg(format!("tcp://{addr}"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("looks like HTTP"), "{stderr}");
}
