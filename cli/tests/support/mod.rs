//! What the binary's tests share: running `agentctl`, an agent child process that is always
//! reaped, and signals.

#![allow(dead_code)] // Each test binary uses its own part.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The binary under test.
pub fn agentctl() -> Command {
    Command::new(env!("CARGO_BIN_EXE_agentctl"))
}

/// An `agentctl serve` child, killed and reaped on drop.
pub struct Serve(pub Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Serve {
    /// Sends `signal` to the agent.
    pub fn signal(&self, signal: i32) {
        send_signal(&self.0, signal);
    }
}

/// Starts `agentctl serve --uds DIR/waf.sock EXTRA...` and waits until it accepts.
pub fn serve(dir: &Path, extra: &[&str]) -> (Serve, PathBuf) {
    serve_to(dir, extra, Stdio::null())
}

/// [`serve`], its stderr going to `stderr` (piped: read it only after the agent exited, and
/// only for short runs, since a full pipe would block the agent).
pub fn serve_to(dir: &Path, extra: &[&str], stderr: Stdio) -> (Serve, PathBuf) {
    let sock = dir.join("waf.sock");
    let child = agentctl()
        .arg("serve")
        .arg("--uds")
        .arg(&sock)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap();
    wait_for_socket(&sock);
    (Serve(child), sock)
}

/// Waits until something accepts on `sock`.
pub fn wait_for_socket(sock: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::os::unix::net::UnixStream::connect(sock).is_err() {
        assert!(Instant::now() < deadline, "agentctl serve did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends a real signal to a child.
pub fn send_signal(child: &Child, signal: i32) {
    let pid = i32::try_from(child.id()).unwrap();
    // SAFETY: kill(2) on a child we spawned and have not reaped; no memory is involved.
    let rc = unsafe { libc::kill(pid, signal) };
    assert_eq!(rc, 0, "kill({pid}, {signal}) failed");
}

/// Waits for `child` to exit within `within`, killing it (and failing) if it does not.
pub fn wait_within(mut child: Child, within: Duration) -> Output {
    let deadline = Instant::now() + within;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "did not exit within {within:?}; stderr: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// Stdout as JSON, or a failure showing stderr.
pub fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "no JSON on stdout ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// Runs `agentctl ARGS`, which must succeed; its stdout as JSON.
pub fn run_json<S: AsRef<std::ffi::OsStr>>(args: impl IntoIterator<Item = S>) -> serde_json::Value {
    let out = agentctl().args(args).output().unwrap();
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    json(&out)
}

/// Runs `agentctl ARGS`, which must exit with `code` and say every one of `needles` on stderr;
/// returns that stderr.
pub fn run_failing<S: AsRef<std::ffi::OsStr>>(
    args: impl IntoIterator<Item = S>,
    code: i32,
    needles: &[&str],
) -> String {
    let out = agentctl().args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(code), "{stderr}");
    for needle in needles {
        assert!(stderr.contains(needle), "{needle:?} missing: {stderr}");
    }
    stderr
}
