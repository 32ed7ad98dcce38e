//! Which executor runs what: the connection tasks share async-std's own thread pool, and the
//! adapter works under a bare `block_on` that drives no reactor and no executor at all.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent_protocol_async_std::client::{AgentClient, ClientConfig};
use agent_protocol_async_std::server::{AgentHandler, AgentServer, ServerConfig, ServerHandle};
use agent_protocol_core::*;

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
    let meta = RequestMetadata {
        correlation_id: cid.into(),
        ..Default::default()
    };
    Event::RequestHeaders(RequestHeadersEvent::new(meta, "GET", "/", Headers::new()))
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
