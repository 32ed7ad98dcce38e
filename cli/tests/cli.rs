//! The `agentctl` binary as users run it: real child processes, real sockets.

mod support;

use std::io::Write;
use std::time::{Duration, Instant};

use support::{agentctl, run_failing, serve};

#[test]
fn demo_runs_every_transport_and_exits_zero() {
    let out = agentctl()
        .args(["demo", "--requests", "400", "--concurrency", "8"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for transport in [
        "uds json",
        "uds msgpack",
        "grpc",
        "reverse uds",
        "async-std uds msgpack",
    ] {
        let row = stdout
            .lines()
            .find(|l| l.starts_with(transport))
            .unwrap_or_else(|| panic!("no row for {transport}:\n{stdout}"));
        let cols: Vec<&str> = row[22..].split_whitespace().collect();
        assert_eq!(cols[0], "400", "{row}");
        assert_eq!(cols[1], "0", "errors in {row}");
        assert_ne!(cols[3], "0", "nothing blocked in {row}");
    }
}

#[test]
fn probe_and_bench_report_json() {
    let dir = tempfile::tempdir().unwrap();
    let (_serve, sock) = serve(dir.path(), &[]);
    let out = agentctl()
        .arg("probe")
        .arg(&sock)
        .arg("--json")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let probe: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(probe["encoding"], "msgpack");
    assert_eq!(probe["ping_us"].as_array().unwrap().len(), 3);
    assert_eq!(probe["decision"], "allow");

    for (encoding, body) in [("json", "0"), ("msgpack", "65536")] {
        let out = agentctl()
            .arg("bench")
            .arg(format!("unix:{}", sock.display()))
            .args([
                "--requests",
                "300",
                "--concurrency",
                "8",
                "--encoding",
                encoding,
            ])
            .args(["--body-bytes", body, "--chunk-bytes", "16384", "--json"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(report["schema_version"], 1);
        assert_eq!(report["config"]["encoding"], encoding);
        let b = &report["result"];
        assert_eq!(b["requests"], 300);
        assert_eq!(b["successes"], 300);
        assert_eq!(b["errors"], 0);
        for key in ["elapsed_s", "req_per_s"] {
            assert!(b[key].is_number(), "{key} missing: {b}");
        }
        for key in ["mean", "p50", "p90", "p95", "p99", "p999", "max"] {
            assert!(b["latency_us"][key].is_number(), "{key} missing: {b}");
        }
        assert_eq!(b.get("mib_per_s").is_some(), body != "0", "{b}");
    }
}

#[test]
fn serve_applies_a_rules_file() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.json");
    std::fs::File::create(&rules)
        .unwrap()
        .write_all(br#"{"rules":[{"id":"all","path_prefix":"/","action":"block","status":418}]}"#)
        .unwrap();
    let (_serve, sock) = serve(dir.path(), &["--rules", rules.to_str().unwrap()]);
    let out = agentctl()
        .arg("probe")
        .arg(&sock)
        .arg("--json")
        .output()
        .unwrap();
    let probe: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(probe["decision"], "block");
    // bench fails (non-zero) when requests fail? Blocks are answers, not failures: exit 0.
    let out = agentctl()
        .arg("bench")
        .arg(&sock)
        .args(["--requests", "50", "--concurrency", "4", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let b: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(b["result"]["decisions"]["block"], 50);
}

#[test]
fn failures_exit_non_zero_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nobody.sock");
    let out = agentctl().arg("probe").arg(&missing).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot connect"), "{err}");
    let bad_rules = dir.path().join("bad.json");
    std::fs::write(&bad_rules, r#"{"rules":[{"id":"x","paht":"/"}]}"#).unwrap();
    let out = agentctl()
        .arg("serve")
        .arg("--uds")
        .arg(dir.path().join("s.sock"))
        .arg("--rules")
        .arg(&bad_rules)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("paht"));
}

#[test]
fn serve_grpc_then_probe_and_bench_over_grpc() {
    let dir = tempfile::tempdir().unwrap();
    // A free port (released just before the agent binds it).
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (_serve, _sock) = serve(dir.path(), &["--grpc", &addr.to_string()]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "gRPC listener did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = agentctl()
        .arg("probe")
        .arg(addr.to_string())
        .arg("--json")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let probe: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(probe["transport"], "grpc");
    assert_eq!(probe["encoding"], "protobuf");
    assert_eq!(probe["capabilities"]["agent_id"], "agentctl-waf");
    assert_eq!(probe["ping_us"].as_array().unwrap().len(), 3);
    assert_eq!(probe["decision"], "allow");

    for body in ["0", "65536"] {
        let out = agentctl()
            .arg("bench")
            .arg(format!("http://{addr}"))
            .args(["--requests", "300", "--concurrency", "8"])
            .args(["--body-bytes", body, "--chunk-bytes", "16384", "--json"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let b: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(b["config"]["transport"], "grpc");
        assert_eq!(b["result"]["requests"], 300);
        assert_eq!(b["result"]["errors"], 0);
    }
}

#[test]
fn async_std_agent_and_pools_of_both_runtimes() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.json");
    std::fs::File::create(&rules)
        .unwrap()
        .write_all(br#"{"rules":[{"id":"all","path_prefix":"/","action":"block","status":418}]}"#)
        .unwrap();
    let rules = rules.to_str().unwrap().to_owned();
    let (_serve, sock) = serve(dir.path(), &["--runtime", "async-std", "--rules", &rules]);
    for runtime in ["tokio", "async-std"] {
        for encoding in ["json", "msgpack"] {
            let out = agentctl()
                .arg("bench")
                .arg(&sock)
                .args(["--requests", "200", "--concurrency", "8"])
                .args(["--encoding", encoding, "--runtime", runtime, "--json"])
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "{runtime} {encoding}: {stderr}");
            let b: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            let b = &b["result"];
            assert_eq!(b["requests"], 200, "{b}");
            assert_eq!(b["errors"], 0, "{b}");
            // The async-std agent applied the rules file to every request.
            assert_eq!(b["decisions"]["block"], 200, "{b}");
        }
    }
    // gRPC is tokio-only: asking for it on async-std is a clear error, not a hang.
    let out = agentctl()
        .args(["bench", "127.0.0.1:1", "--runtime", "async-std"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("tokio"));
}

/// `serve --metrics`: a Prometheus scrape of the agent over HTTP shows what it answered.
#[test]
fn serve_exposes_metrics_over_http() {
    use std::io::Read;
    let dir = tempfile::tempdir().unwrap();
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (_serve, sock) = serve(dir.path(), &["--metrics", &addr.to_string()]);
    let out = agentctl()
        .arg("bench")
        .arg(&sock)
        .args(["-n", "120", "-c", "4", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let get = |path: &str| {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut stream = loop {
            match std::net::TcpStream::connect(addr) {
                Ok(s) => break s,
                Err(e) => {
                    assert!(Instant::now() < deadline, "metrics endpoint: {e}");
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        };
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
        )
        .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        response
    };
    let response = get("/metrics");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(
        response.contains("content-type: application/openmetrics-text"),
        "{response}"
    );
    for needle in [
        "agent_protocol_agent_answers_total{agent_id=\"agentctl-waf\",decision=\"allow\"} 120\n",
        "agent_protocol_agent_requests_total{agent_id=\"agentctl-waf\"} 120\n",
        "agent_protocol_agent_handler_duration_seconds_count{agent_id=\"agentctl-waf\"} 120\n",
        "agent_protocol_agent_fail_closed_total{agent_id=\"agentctl-waf\"} 0\n",
        "# EOF\n",
    ] {
        assert!(
            response.contains(needle),
            "missing {needle:?} in\n{response}"
        );
    }
    assert!(get("/").starts_with("HTTP/1.1 404"));
}

/// Setup errors name the flag or the path at fault.
#[test]
fn setup_errors_name_their_flag_or_path() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("s.sock");
    let sock = sock.to_str().unwrap();
    run_failing(
        ["serve", "--uds", sock, "--rules", "/nonexistent/rules.json"],
        2,
        &["--rules", "/nonexistent/rules.json"],
    );
    run_failing(
        ["serve", "--uds", "/nonexistent/dir/a.sock"],
        2,
        &["--uds", "/nonexistent/dir/a.sock"],
    );
    // A TCP port already taken.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    run_failing(
        ["serve", "--uds", sock, "--tcp", &addr],
        2,
        &["--tcp", &addr],
    );
    // A temporary directory that cannot be used.
    let out = agentctl()
        .args(["demo", "-n", "1"])
        .env("TMPDIR", "/nonexistent/tmp")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("TMPDIR") && stderr.contains("/nonexistent/tmp"),
        "{stderr}"
    );
}
