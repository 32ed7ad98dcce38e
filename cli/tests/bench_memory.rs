//! `agentctl bench` memory does not grow with `--concurrency` beyond a small per-task cost.
//!
//! Its own test binary on purpose: `getrusage(RUSAGE_CHILDREN)` reports the largest peak RSS
//! among the children this process has waited for, so no other test's children may be reaped
//! here. The agent (`agentctl serve`) is reaped only after the measurements.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// What a worker cost before: its own latency histogram, 1 us..100 s at 3 significant digits.
const HISTOGRAM_BYTES: u64 = 160 * 1024;

struct Serve(Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Peak RSS, in bytes, of the largest child waited for so far.
fn children_peak_rss() -> u64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage only writes the struct it is given, which is valid and zeroed.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, usage.as_mut_ptr()) };
    assert_eq!(rc, 0, "getrusage failed");
    // SAFETY: initialised (zeroed, then filled in by getrusage).
    let usage = unsafe { usage.assume_init() };
    // Linux reports kilobytes.
    usage.ru_maxrss as u64 * 1024
}

fn bench(sock: &std::path::Path, requests: u64, concurrency: u64) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_agentctl"))
        .arg("bench")
        .arg(sock)
        .args(["--requests", &requests.to_string()])
        .args(["--concurrency", &concurrency.to_string(), "--json"])
        .output()
        .unwrap();
    // Far more workers than the pool has in-flight slots: some requests fail as saturated, and
    // bench exits non-zero then. Only the report and the memory matter here.
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "no JSON report ({e}): {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[test]
fn bench_memory_does_not_scale_with_concurrency() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("waf.sock");
    let _serve = Serve(
        Command::new(env!("CARGO_BIN_EXE_agentctl"))
            .arg("serve")
            .arg("--uds")
            .arg(&sock)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::os::unix::net::UnixStream::connect(&sock).is_err() {
        assert!(Instant::now() < deadline, "agentctl serve did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    const MIB: u64 = 1024 * 1024;

    // Ten requests need ten workers, whatever --concurrency says.
    let report = bench(&sock, 10, 50_000);
    assert_eq!(report["result"]["requests"], 10, "{report}");
    let capped = children_peak_rss();
    eprintln!(
        "--requests 10 --concurrency 50000: peak RSS {} MiB",
        capped / MIB
    );
    assert!(
        capped < 64 * MIB,
        "10 requests at --concurrency 50000 peaked at {} MiB",
        capped / MIB
    );

    // Every request its own worker: one histogram each would be 5000 x 160 KiB = 781 MiB.
    let concurrency = 5_000;
    let report = bench(&sock, concurrency, concurrency);
    assert_eq!(report["result"]["requests"], concurrency, "{report}");
    let peak = children_peak_rss();
    let per_worker_histograms = concurrency * HISTOGRAM_BYTES;
    eprintln!(
        "--concurrency {concurrency}: peak RSS {} MiB (one histogram per worker: {} MiB)",
        peak / MIB,
        per_worker_histograms / MIB
    );
    assert!(
        peak < per_worker_histograms / 4,
        "--concurrency {concurrency} peaked at {} MiB",
        peak / MIB
    );
}
