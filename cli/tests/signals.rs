//! Real signals to the running binary: Ctrl-C (SIGINT) during `bench` and `demo` prints what
//! ran and exits 130; SIGTERM makes `serve` drain, remove its socket and say so.

mod support;

use std::process::Stdio;
use std::time::Duration;

use support::{agentctl, json, send_signal, serve, serve_to, wait_within};

#[test]
fn ctrl_c_during_bench_prints_the_partial_report_and_exits_130() {
    let dir = tempfile::tempdir().unwrap();
    let (_serve, sock) = serve(dir.path(), &[]);
    let bench = agentctl()
        .arg("bench")
        .arg(&sock)
        .args(["-z", "60s", "-c", "8", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    send_signal(&bench, libc::SIGINT);
    let out = wait_within(bench, Duration::from_secs(20));
    assert_eq!(out.status.code(), Some(130));
    let r = &json(&out)["result"];
    assert_eq!(r["outcome"], "interrupted", "{r}");
    assert!(r["successes"].as_u64().unwrap() > 0, "{r}");
    assert_eq!(r["errors"], 0, "{r}");
    assert!(r["elapsed_s"].as_f64().unwrap() < 30.0, "{r}");
}

#[test]
fn ctrl_c_during_demo_prints_the_rows_so_far_and_removes_its_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let demo = agentctl()
        .args(["demo", "-n", "100000000", "-c", "8"])
        .env("TMPDIR", tmp.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The demo's directory exists while it runs...
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::fs::read_dir(tmp.path()).unwrap().next().is_none() {
        assert!(std::time::Instant::now() < deadline, "no demo directory");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(1500));
    send_signal(&demo, libc::SIGINT);
    let out = wait_within(demo, Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(130));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("transport"), "{stdout}");
    assert!(stdout.contains("uds json"), "{stdout}");
    assert!(stdout.contains("interrupted"), "{stdout}");
    // ... and is gone afterwards.
    let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn sigterm_makes_serve_drain_remove_its_socket_and_summarise() {
    let dir = tempfile::tempdir().unwrap();
    let (mut serve, sock) = serve_to(dir.path(), &[], Stdio::piped());
    let out = agentctl()
        .arg("bench")
        .arg(&sock)
        .args(["-n", "100", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success());
    serve.signal(libc::SIGTERM);
    let child = std::mem::replace(
        &mut serve.0,
        // A placeholder the guard can kill and reap harmlessly.
        std::process::Command::new("true").spawn().unwrap(),
    );
    let out = wait_within(child, Duration::from_secs(20));
    assert!(out.status.success(), "{out:?}");
    assert!(!sock.exists(), "socket left behind");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr.lines().last().unwrap_or("");
    assert!(
        last.contains("SIGTERM")
            && last.contains("100 events answered")
            && last.contains("removed"),
        "{stderr}"
    );
}

/// A second Ctrl-C quits at once, even while requests in flight wait on an agent that never
/// answers (SIGSTOPped) and would hold the first Ctrl-C's orderly stop for their whole timeout.
#[test]
fn a_second_ctrl_c_quits_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let (agent, sock) = serve(dir.path(), &[]);
    let bench = agentctl()
        .arg("bench")
        .arg(&sock)
        .args(["-z", "60s", "-c", "4", "--timeout", "60s", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    agent.signal(libc::SIGSTOP);
    std::thread::sleep(Duration::from_millis(300));
    send_signal(&bench, libc::SIGINT);
    std::thread::sleep(Duration::from_millis(300));
    send_signal(&bench, libc::SIGINT);
    let started = std::time::Instant::now();
    let out = wait_within(bench, Duration::from_secs(20));
    agent.signal(libc::SIGCONT);
    assert_eq!(out.status.code(), Some(130));
    assert!(started.elapsed() < Duration::from_secs(10));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("again to quit at once"), "{stderr}");
}
