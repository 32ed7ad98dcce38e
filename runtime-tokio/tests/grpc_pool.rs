//! AgentPool with a gRPC agent on loopback TCP: every event through the pool with body chunks
//! pinned to their headers' connection, health from the agent, and a dead agent replaced.
#![cfg(feature = "grpc")]

mod grpc_support;

use std::time::{Duration, Instant};

use agent_protocol_core::pool::Backoff;
use agent_protocol_core::*;
use agent_protocol_tokio::pool::{AgentPool, AgentPoolConfig, PoolError};
use agent_protocol_tokio::server::ServerConfig;
use bytes::Bytes;
use grpc_support::*;

fn pool_config() -> AgentPoolConfig {
    AgentPoolConfig::default()
        .with_connections_per_agent(3)
        .with_request_timeout(Duration::from_secs(10))
        .with_health_check_interval(Duration::from_millis(20))
        .with_reconnect(
            Backoff::default()
                .with_initial(Duration::from_millis(20))
                .with_max(Duration::from_millis(200)),
        )
}

fn connected(pool: &AgentPool, agent: &str) -> usize {
    pool.stats()
        .iter()
        .find(|s| s.agent_id == agent)
        .map_or(0, |s| s.connected)
}

fn chunk(cid: &str, index: u32, data: &'static [u8], last: bool) -> BodyChunk {
    BodyChunk {
        correlation_id: cid.into(),
        data: Bytes::from_static(data),
        is_last: last,
        total_size: None,
        chunk_index: index,
        bytes_transferred: 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_carries_every_event_over_grpc_with_affinity() {
    let (addr, handle, agent) = start_grpc(ServerConfig::default()).await;
    let pool = AgentPool::new(pool_config());
    pool.add_agent("waf", &addr.to_string()).await.unwrap();
    assert_eq!(connected(&pool, "waf"), 3);
    assert_eq!(handle.connections(), 3);
    // Several requests, each with a streamed body: the chunks must follow their headers'
    // connection (a chunk on another connection would be out of sequence there).
    for n in 0..6 {
        let cid = format!("req-{n}");
        let Event::RequestHeaders(headers) = headers_event(&cid, "/block") else {
            unreachable!()
        };
        let r = pool.send_request_headers("waf", headers).await.unwrap();
        assert_eq!(r.decision.kind(), "block");
        for i in 0..4u32 {
            let r = pool
                .send_request_body_chunk(
                    "waf",
                    RequestBodyChunkEvent(chunk(&cid, i, b"part", i == 3)),
                )
                .await
                .unwrap();
            assert_eq!(r.routing_metadata["total"], (4 * (i + 1)).to_string());
        }
        let r = pool
            .send_response_headers(
                "waf",
                ResponseHeadersEvent {
                    correlation_id: cid.clone().into(),
                    status: 200,
                    headers: Headers::from_iter([("content-type", "text/html")]),
                },
            )
            .await
            .unwrap();
        assert_eq!(r.routing_metadata["kind"], "response_headers");
        pool.send_response_body_chunk("waf", ResponseBodyChunkEvent(chunk(&cid, 0, b"ok", true)))
            .await
            .unwrap();
        let r = pool
            .send_request_complete(
                "waf",
                RequestCompleteEvent {
                    correlation_id: cid.clone().into(),
                    status: 200,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(r.routing_metadata["kind"], "request_complete");
    }
    for event in every_event("pool-all") {
        if matches!(event, Event::RequestComplete(_)) {
            continue;
        }
        let kind = event.kind();
        let r = pool.send_event("waf", event).await.unwrap();
        // Every response field arrives as the agent set it, audit values included.
        assert_eq!(r.audit.custom["nested"]["a"][2]["three"], 3, "{kind:?}");
        assert_eq!(r.audit.custom["correlation_id"], "set by the handler");
        assert!(r.websocket_decision.is_some());
    }
    assert_eq!(
        pool.affinity_count(),
        1,
        "only the last request is still pinned"
    );
    // Health reported by the agent reaches the pool's view.
    handle.set_health(HealthState::Degraded, None);
    eventually("pool sees degraded connections", || {
        pool.stats()[0].degraded == 3
    })
    .await;
    assert!(agent.started.load(std::sync::atomic::Ordering::SeqCst) >= 7);
    pool.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_replaces_a_killed_grpc_agent() {
    let mut agent = AgentProcess::start();
    let addr = agent.addr;
    let pool = AgentPool::new(pool_config());
    pool.add_agent("waf", &format!("http://{addr}"))
        .await
        .unwrap();
    let Event::RequestHeaders(h) = headers_event("before", "/") else {
        unreachable!()
    };
    pool.send_request_headers("waf", h).await.unwrap();

    // Requests in flight when the agent dies fail at once, not at their 10 s deadline.
    let mut pending = Vec::new();
    for i in 0..3 {
        let pool = pool.clone();
        pending.push(tokio::spawn(async move {
            let Event::RequestHeaders(h) = headers_event(&format!("hang-{i}"), "/hang") else {
                unreachable!()
            };
            pool.send_request_headers("waf", h).await
        }));
    }
    eventually("requests reach the agent", || agent.handle.in_flight() == 3).await;
    let killed = Instant::now();
    agent.kill();
    for p in pending {
        let r = p.await.unwrap();
        assert!(r.is_err(), "{r:?}");
    }
    assert!(killed.elapsed() < Duration::from_secs(5));
    eventually("connections dropped", || connected(&pool, "waf") == 0).await;
    let Event::RequestHeaders(h) = headers_event("while-down", "/") else {
        unreachable!()
    };
    let r = pool.send_request_headers("waf", h).await;
    assert!(
        matches!(
            r,
            Err(PoolError::NoConnections { .. } | PoolError::AllUnavailable { .. })
                | Err(PoolError::CircuitOpen { .. })
        ),
        "{r:?}"
    );

    // The agent comes back on the same address: the pool reconnects on its own.
    let _agent = AgentProcess::start_on(addr);
    eventually("reconnected", || connected(&pool, "waf") == 3).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let Event::RequestHeaders(h) = headers_event("after", "/") else {
            unreachable!()
        };
        match pool.send_request_headers("waf", h).await {
            Ok(_) => break,
            // The breaker may still be open from the outage; it lets a probe through soon.
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("pool did not recover: {e}"),
        }
    }
    pool.shutdown(Duration::from_secs(1)).await;
}
