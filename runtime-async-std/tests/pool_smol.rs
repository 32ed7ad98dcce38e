//! The AgentPool under smol's executor: a request waiting out an agent's pause (flow control,
//! wait-and-retry) is released by the resume while `smol::block_on` drives the test.
//!
//! Every other pool scenario is written once and run on both adapters by the e2e suite
//! (`tests/tests/e2e/pool_*.rs` in agent-protocol-tests), where the async-std half runs under
//! async-std's executor. That suite picks one executor per runtime type, so this check, the
//! same `AsyncStd` runtime under a different executor, stays here.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agent_protocol_async_std::core::pool::{FlowControlMode, FlowControlPolicy};
use agent_protocol_async_std::core::{
    AgentResponse, Headers, RequestHeadersEvent, RequestMetadata,
};
use agent_protocol_async_std::pool::{AgentPool, AgentPoolConfig};
use agent_protocol_async_std::server::{AgentHandler, AgentServer, ServerConfig};

/// Hang guard for conditions that normally hold within milliseconds.
const WAIT: Duration = Duration::from_secs(5);

/// Counts the requests it answers.
#[derive(Default)]
struct Counting(AtomicUsize);

impl AgentHandler for Counting {
    async fn on_request_headers(&self, _event: RequestHeadersEvent) -> AgentResponse {
        self.0.fetch_add(1, Ordering::SeqCst);
        AgentResponse::allow()
    }
}

fn headers(cid: &str) -> RequestHeadersEvent {
    let meta = RequestMetadata {
        correlation_id: cid.into(),
        ..Default::default()
    };
    RequestHeadersEvent::new(meta, "GET", "/", Headers::new())
}

#[test]
fn pause_wait_and_retry_succeeds_after_resume_under_smol() {
    smol::block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sock");
        let server = Arc::new(AgentServer::new(
            Counting::default(),
            ServerConfig::default(),
        ));
        let listener = server.bind_uds(&path).unwrap();
        let handle = server.handle();
        smol::spawn({
            let server = server.clone();
            async move { server.serve(listener).await }
        })
        .detach();

        let pool = AgentPool::new(
            AgentPoolConfig::default()
                .with_connections_per_agent(1)
                .with_request_timeout(Duration::from_secs(30))
                .with_flow_control(
                    FlowControlPolicy::default()
                        .with_mode(FlowControlMode::WaitAndRetry)
                        .with_max_wait(Duration::from_secs(30)),
                ),
        );
        pool.add_agent("a", path.to_str().unwrap()).await.unwrap();

        // Pause (again on every poll: a push reaches only connections already subscribed).
        let started = Instant::now();
        while pool.stats()[0].paused != 1 {
            assert!(started.elapsed() < WAIT, "never paused");
            handle.pause();
            smol::Timer::after(Duration::from_millis(5)).await;
        }

        let waiting = {
            let pool = pool.clone();
            smol::spawn(async move { pool.send_request_headers("a", headers("w")).await })
        };
        smol::Timer::after(Duration::from_millis(150)).await;
        assert!(!waiting.is_finished(), "still waiting");
        assert_eq!(server.handler().0.load(Ordering::SeqCst), 0);

        handle.resume();
        // Released by the resume, long before the 30 s max wait and request deadline.
        let released = smol::future::or(async { Some(waiting.await) }, async {
            smol::Timer::after(WAIT).await;
            None
        })
        .await
        .expect("released by the resume");
        let r = released.unwrap();
        assert_eq!(r.correlation_id(), Some("w"));
        assert_eq!(server.handler().0.load(Ordering::SeqCst), 1);
        assert_eq!(
            pool.metrics("a").unwrap().flow_control_rejections_total(),
            0
        );
    });
}
