//! Which executor runs what: the connection tasks share async-std's own thread pool, the
//! adapter works under a bare `block_on` that drives no reactor and no executor at all, and
//! under smol's executor (client, server, reverse connections, and TCP connects by host name).
//!
//! These stay here because they are about this adapter's executors. The protocol scenarios
//! (every event kind, cancel, timeouts, pushes, drain, socket files, reverse registration, ...)
//! run on both adapters in the shared e2e suite: `tests/tests/e2e/` in agent-protocol-tests.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent_protocol_async_std::client::{AgentClient, ClientConfig};
use agent_protocol_async_std::driver::Runtime;
use agent_protocol_async_std::reverse::{
    RegisteredAgent, ReverseAgentConfig, ReverseConnector, ReverseListener, ReverseTarget,
};
use agent_protocol_async_std::server::{
    AgentHandler, AgentServer, Listener, ServerConfig, ServerHandle,
};
use agent_protocol_async_std::AsyncStd;
use agent_protocol_core::*;
use async_io::{Async, Timer};

/// Hang guard.
const WAIT: Duration = Duration::from_secs(5);

/// Remembers the name of the thread each request was handled on.
#[derive(Default)]
struct ThreadRecorder {
    threads: Mutex<Vec<String>>,
}

impl AgentHandler for ThreadRecorder {
    async fn on_request_headers(&self, _event: RequestHeadersEvent) -> AgentResponse {
        let name = std::thread::current().name().unwrap_or("").to_owned();
        self.threads.lock().unwrap().push(name);
        AgentResponse::allow()
    }
}

fn start(dir: &Path) -> (String, Arc<AgentServer<ThreadRecorder>>, ServerHandle) {
    let path = dir.join("agent.sock");
    let server = Arc::new(AgentServer::new(
        ThreadRecorder::default(),
        ServerConfig::default(),
    ));
    let listener = server.bind_uds(&path).unwrap();
    let s = server.clone();
    async_global_executor::spawn(async move { s.serve(listener).await }).detach();
    let handle = server.handle();
    (path.to_str().unwrap().to_owned(), server, handle)
}

fn headers(cid: &str) -> Event {
    headers_for(cid, "/")
}

fn headers_for(cid: &str, uri: &str) -> Event {
    let meta = RequestMetadata {
        correlation_id: cid.into(),
        ..Default::default()
    };
    Event::RequestHeaders(RequestHeadersEvent::new(meta, "GET", uri, Headers::new()))
}

/// A pool thread's name without its number: "async-std/runtime" when async-std configured the
/// pool, "async-global-executor-" when this crate started it first.
fn pool_name(thread: &str) -> &str {
    thread.trim_end_matches(|c: char| c.is_ascii_digit())
}

#[async_std::test]
async fn connection_tasks_run_on_async_std_own_thread_pool() {
    let async_std_thread =
        async_std::task::spawn(async { std::thread::current().name().unwrap_or("").to_owned() })
            .await;
    let dir = tempfile::tempdir().unwrap();
    let (path, server, _handle) = start(dir.path());
    let client = AgentClient::connect(&path, ClientConfig::default())
        .await
        .unwrap();
    for i in 0..8 {
        client.send(headers(&format!("c{i}"))).await.unwrap();
    }
    let threads = server.handler().threads.lock().unwrap().clone();
    assert_eq!(threads.len(), 8);
    let test_thread = std::thread::current().name().unwrap_or("").to_owned();
    for t in &threads {
        assert_ne!(t, &test_thread, "handled on a pool thread, not the test's");
        assert_eq!(
            pool_name(t),
            pool_name(&async_std_thread),
            "handled on {t:?}, async-std runs tasks on {async_std_thread:?}"
        );
    }
}

#[test]
fn works_under_a_bare_block_on_without_any_runtime() {
    // futures-lite's block_on only parks the thread: no reactor, no executor. async-io drives
    // its reactor from its own thread then, and spawned tasks go to async-global-executor.
    futures_lite::future::block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let (path, _server, handle) = start(dir.path());
        let client = AgentClient::connect(&path, ClientConfig::default())
            .await
            .unwrap();
        let r = client.send(headers("bare")).await.unwrap();
        assert_eq!(r.correlation_id(), Some("bare"));
        let r = client
            .send_with_timeout(headers("deadline"), Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(r.decision, Decision::Allow);
        assert_eq!(handle.connections(), 1);
    });
}

/// Blocks (403) URIs under `/admin` or containing `attack`, allows the rest.
struct Blocker;

impl AgentHandler for Blocker {
    async fn on_request_headers(&self, event: RequestHeadersEvent) -> AgentResponse {
        if event.uri.starts_with("/admin") || event.uri.contains("attack") {
            AgentResponse::block(403, "nope")
        } else {
            AgentResponse::allow()
        }
    }
}

/// Runs `future`, panicking with `what` after a generous limit (a hang guard only).
async fn within<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    futures_lite::future::or(async { Some(future.await) }, async {
        Timer::after(WAIT).await;
        None
    })
    .await
    .unwrap_or_else(|| panic!("timed out: {what}"))
}

async fn eventually(what: &str, cond: impl Fn() -> bool) {
    let start = std::time::Instant::now();
    while !cond() {
        assert!(start.elapsed() < WAIT, "timed out waiting for: {what}");
        Timer::after(Duration::from_millis(5)).await;
    }
}

#[test]
fn smol_runs_client_and_server_over_uds_and_tcp() {
    smol::block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("smol.sock");
        let server = Arc::new(AgentServer::new(Blocker, ServerConfig::default()));
        let uds = server.bind_uds(&path).unwrap();
        let tcp = Async::<std::net::TcpListener>::bind(([127, 0, 0, 1], 0)).unwrap();
        let addr = tcp.get_ref().local_addr().unwrap().to_string();
        let handle = server.handle();
        let s = server.clone();
        let serving =
            smol::spawn(async move { s.serve_all(vec![uds.into(), Listener::tcp(tcp)]).await });

        // Over the Unix socket.
        let client = AgentClient::connect(path.to_str().unwrap(), ClientConfig::default())
            .await
            .unwrap();
        let r = client.send(headers_for("u1", "/admin")).await.unwrap();
        assert_eq!(r.decision.kind(), "block");
        within("pong", client.ping()).await.unwrap();

        // Over TCP: connect with the runtime, then handshake.
        let stream = AsyncStd::connect_tcp(&addr).await.unwrap();
        let tcp_client = AgentClient::handshake(stream, ClientConfig::default(), None)
            .await
            .unwrap();
        let r = tcp_client.send(headers_for("t1", "/shop")).await.unwrap();
        assert_eq!(r.correlation_id(), Some("t1"));
        assert_eq!(r.decision, Decision::Allow);
        // A host name is resolved too (on async-global-executor's blocking pool, whatever
        // executor the caller runs).
        let port = addr.rsplit(':').next().unwrap();
        let by_name = AsyncStd::connect_tcp(&format!("localhost:{port}")).await;
        assert!(by_name.is_ok(), "{by_name:?}");
        eventually("three connections", || handle.connections() == 3).await;

        handle.shutdown();
        within("serve_all returns after shutdown", serving)
            .await
            .unwrap();
        assert!(!path.exists());
        assert_eq!(handle.connections(), 0);
    });
}

#[test]
fn smol_runs_a_reverse_connection_over_tcp() {
    smol::block_on(async {
        let tcp = Async::<std::net::TcpListener>::bind(([127, 0, 0, 1], 0)).unwrap();
        let addr = tcp.get_ref().local_addr().unwrap().to_string();
        let admitted: Arc<Mutex<Vec<AgentClient>>> = Arc::default();
        let policy = agent_protocol_core::registration::RegistrationPolicy {
            tokens: vec!["s3cret".into()],
            ..Default::default()
        };
        let rl = ReverseListener::new(policy, Default::default());
        let a = admitted.clone();
        let serving = rl.clone();
        smol::spawn(async move {
            serving
                .serve(Listener::tcp(tcp), move |agent: RegisteredAgent| {
                    a.lock().unwrap().push(agent.client);
                    Ok(())
                })
                .await
        })
        .detach();
        let mut cfg = ReverseAgentConfig::new(ReverseTarget::Tcp(addr), "waf-1");
        cfg.auth_token = Some("s3cret".into());
        let agent = ReverseConnector::new(Arc::new(Blocker), cfg, ServerHandle::new("waf-1"));
        let connected = smol::spawn(async move { agent.connect_once().await });
        eventually("agent admitted", || !admitted.lock().unwrap().is_empty()).await;
        let client = admitted.lock().unwrap()[0].clone();
        let ok = client.send(headers_for("t1", "/")).await.unwrap();
        assert_eq!(ok.correlation_id(), Some("t1"));
        let blocked = client.send(headers_for("t2", "/attack")).await.unwrap();
        assert_eq!(blocked.decision.kind(), "block");
        client.close().await;
        assert!(
            within("connector returns", connected)
                .await
                .unwrap()
                .success
        );
        rl.shutdown();
    });
}
