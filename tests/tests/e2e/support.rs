//! Runtime-neutral helpers every scenario may use.

use std::future::Future;
use std::time::{Duration, Instant};

use agent_protocol_driver::runtime;
use agent_protocol_driver::Runtime;

/// Sleeps on `R`'s timer.
pub async fn sleep<R: Runtime>(duration: Duration) {
    runtime::sleep::<R>(duration).await
}

/// Runs `future` for at most `limit`; panics with `what` when it does not finish (a guard
/// against hangs, never a speed assertion).
pub async fn timeout<R: Runtime, F: Future>(limit: Duration, what: &str, future: F) -> F::Output {
    runtime::timeout_at::<R, _>(Instant::now() + limit, future)
        .await
        .unwrap_or_else(|_| panic!("timed out after {limit:?}: {what}"))
}

/// Spawns `future` on `R`; the receiver yields its output (like a join handle).
pub fn spawn<R: Runtime, T: Send + 'static>(
    future: impl Future<Output = T> + Send + 'static,
) -> tokio::sync::oneshot::Receiver<T> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    R::spawn(async move {
        let _ = tx.send(future.await);
    });
    rx
}

/// Polls `condition` every 5 ms until it holds; panics with `what` after `limit`.
pub async fn eventually<R: Runtime>(what: &str, limit: Duration, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + limit;
    while !condition() {
        assert!(Instant::now() < deadline, "never happened: {what}");
        sleep::<R>(Duration::from_millis(5)).await;
    }
}

/// An agent server on a Unix socket in its own temporary directory, serving until dropped with
/// the directory.
pub struct ServedAgent {
    /// Keeps the socket's directory alive.
    _dir: tempfile::TempDir,
    /// The socket path.
    pub path: std::path::PathBuf,
    /// The server's handle (connections, in-flight count, shutdown).
    pub handle: agent_protocol_driver::server::ServerHandle,
}

/// Serves `handler` with the default [`ServerConfig`](agent_protocol_driver::server::ServerConfig)
/// on `R` (call inside the runtime).
pub fn serve_uds<H: agent_protocol_driver::server::AgentHandler, R: Runtime>(
    handler: H,
) -> ServedAgent {
    use agent_protocol_driver::server::{AgentServer, ServerConfig};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.sock");
    let server = std::sync::Arc::new(AgentServer::<H, R>::new(handler, ServerConfig::default()));
    let listener = server.bind_uds(&path).unwrap();
    let handle = server.handle();
    let _serving = spawn::<R, _>(async move { server.serve(listener).await });
    ServedAgent {
        _dir: dir,
        path,
        handle,
    }
}
