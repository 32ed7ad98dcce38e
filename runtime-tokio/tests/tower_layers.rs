//! Tower layers around a handler, on a real agent server over a Unix socket and a real pool:
//! a timeout turns a slow verdict into the fail-closed 503 block (never an allow, never a
//! hang), and a concurrency limit holds however many requests the proxy sends at once.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agent_protocol_core::agent::HANDLER_FAILED_REASON;
use agent_protocol_core::*;
use agent_protocol_tokio::pool::{AgentPool, AgentPoolConfig};
use agent_protocol_tokio::server::{
    AgentHandler, AgentServer, HandlerService, ServerConfig, ServiceHandler,
};
use tower::ServiceBuilder;

/// Sleeps for `/sleep/{ms}` and tracks how many requests it runs at once.
#[derive(Default)]
struct Slow {
    running: AtomicUsize,
    most: AtomicUsize,
}

impl AgentHandler for Slow {
    async fn on_request_headers(&self, event: RequestHeadersEvent) -> AgentResponse {
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(now, Ordering::SeqCst);
        if let Some(ms) = event.uri.strip_prefix("/sleep/") {
            tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await;
        }
        self.running.fetch_sub(1, Ordering::SeqCst);
        AgentResponse::allow()
    }
}

fn request(cid: &str, uri: &str) -> RequestHeadersEvent {
    let meta = RequestMetadata {
        correlation_id: cid.to_owned().into(),
        ..Default::default()
    };
    RequestHeadersEvent::new(meta, "GET", uri, Headers::new())
}

/// Serves `handler` on a socket in `dir`; returns a pool connected to it.
async fn serve<H: AgentHandler>(dir: &std::path::Path, handler: H) -> AgentPool {
    let sock = dir.join("agent.sock");
    let server = AgentServer::new(handler, ServerConfig::default());
    let listener = server.bind_uds(&sock).unwrap();
    tokio::spawn(async move { server.serve(listener).await });
    let pool = AgentPool::new(
        AgentPoolConfig::default()
            .with_connections_per_agent(2)
            .with_request_timeout(Duration::from_secs(5)),
    );
    pool.add_agent("a", &format!("unix:{}", sock.display()))
        .await
        .unwrap();
    pool
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_layer_answers_fail_closed_in_time() {
    let dir = tempfile::tempdir().unwrap();
    let layered = ServiceBuilder::new()
        .timeout(Duration::from_millis(100))
        .service(HandlerService::new(Slow::default()));
    let pool = serve(dir.path(), ServiceHandler::new(layered)).await;

    let fast = pool
        .send_request_headers("a", request("fast", "/"))
        .await
        .unwrap();
    assert_eq!(fast.decision, Decision::Allow);

    let started = Instant::now();
    let slow = pool
        .send_request_headers("a", request("slow", "/sleep/3000"))
        .await
        .unwrap();
    let took = started.elapsed();
    assert!(
        matches!(slow.decision, Decision::Block { status: 503, .. }),
        "{:?}",
        slow.decision
    );
    assert_eq!(slow.audit.reason_codes, [HANDLER_FAILED_REASON]);
    assert!(took < Duration::from_secs(2), "took {took:?}");
    pool.shutdown(Duration::ZERO).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_concurrency_limit_holds_across_connections() {
    let dir = tempfile::tempdir().unwrap();
    let slow = Arc::new(Slow::default());
    let layered = ServiceBuilder::new()
        .concurrency_limit(3)
        .service(HandlerService::from_shared(slow.clone()));
    let pool = serve(dir.path(), ServiceHandler::new(layered)).await;

    let mut requests = Vec::new();
    for i in 0..24 {
        let pool = pool.clone();
        requests.push(tokio::spawn(async move {
            pool.send_request_headers("a", request(&format!("c{i}"), "/sleep/20"))
                .await
        }));
    }
    for r in requests {
        assert_eq!(r.await.unwrap().unwrap().decision, Decision::Allow);
    }
    let most = slow.most.load(Ordering::SeqCst);
    assert!((1..=3).contains(&most), "{most} handlers ran at once");
    pool.shutdown(Duration::ZERO).await;
}
