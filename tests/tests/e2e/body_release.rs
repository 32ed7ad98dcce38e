//! Requests that end early give back their body streams at once, through the pool and over real
//! sockets: a body chunk the agent blocks, a request the caller ends with
//! `clear_correlation_affinity`, a chunk that times out, one cancelled while pending and one
//! cancelled between chunks. Each scenario ends more requests than the connections' body-stream
//! tables hold together; a leak there refuses every later body with "too many concurrent body
//! streams" until the idle expiry (minutes).

use std::time::{Duration, Instant};

use agent_protocol_core::capabilities::EventKind;
use agent_protocol_core::{CancelReason, Decision, SubmitError};
use agent_protocol_driver::client::ClientError;
use agent_protocol_driver::pool::{AgentPool, AgentPoolConfig, PoolError};
use agent_protocol_driver::Runtime;

use crate::pool_support::{chunk, fast_config, headers, FakeAgent, WAIT};
use crate::support::{sleep, spawn, timeout};
use crate::Harness;

/// Connections per agent in these scenarios.
const CONNS: usize = 2;
/// Body streams each connection tracks at most (small, so a leak shows within a few requests).
const STREAMS: usize = 4;
/// Requests per scenario: more than all the tables hold together, so each connection gets more
/// early-ended requests than its table holds (round robin spreads them evenly).
const REQUESTS: usize = CONNS * STREAMS + 2 * CONNS;

fn config<R: Runtime>() -> AgentPoolConfig<R> {
    let mut config = fast_config().with_connections_per_agent(CONNS);
    config.client.connection.max_body_streams = STREAMS;
    config
}

async fn start<R: Harness>(dir: &std::path::Path) -> (FakeAgent<R>, AgentPool<R>) {
    let agent = FakeAgent::<R>::start(dir, "bodies", &[agent_protocol_core::Encoding::Json]).await;
    let pool = AgentPool::<R>::new(config());
    pool.add_agent("a", &agent.endpoint()).await.unwrap();
    (agent, pool)
}

/// Sends headers (allowed) then chunk 0 (not the last) of `cid`; returns the chunk's outcome.
async fn headers_then_chunk<R: Runtime>(
    pool: &AgentPool<R>,
    cid: &str,
) -> Result<agent_protocol_core::AgentResponse, PoolError> {
    let h = pool.send_request_headers("a", headers(cid)).await.unwrap();
    assert_eq!(h.decision, Decision::Allow);
    pool.send_request_body_chunk("a", chunk(cid, 0, false))
        .await
}

/// After the early-ended requests, fresh requests still get their bodies through on every
/// connection (a leak refuses them with `TooManyStreams`).
async fn new_bodies_still_work<R: Runtime>(agent: &FakeAgent<R>, pool: &AgentPool<R>) {
    agent.set_behaviour(|b| *b = Default::default());
    for i in 0..CONNS {
        let cid = format!("fresh-{i}");
        match headers_then_chunk(pool, &cid).await {
            Ok(r) => assert_eq!(r.decision, Decision::Allow),
            Err(PoolError::Client(ClientError::Rejected(e @ SubmitError::TooManyStreams(_)))) => {
                panic!("a body stream leaked: {e}")
            }
            Err(e) => panic!("{cid}: {e}"),
        }
        pool.clear_correlation_affinity("a", &cid);
    }
}

pub async fn blocked_chunks_release_their_streams<R: Harness>() {
    let dir = tempfile::tempdir().unwrap();
    let (agent, pool) = start::<R>(dir.path()).await;
    for i in 0..REQUESTS {
        let cid = format!("blocked-{i}");
        pool.send_request_headers("a", headers(&cid)).await.unwrap();
        agent.set_behaviour(|b| b.block = true);
        let r = pool
            .send_request_body_chunk("a", chunk(&cid, 0, false))
            .await
            .unwrap_or_else(|e| panic!("chunk of request {i} refused: {e}"));
        assert!(matches!(r.decision, Decision::Block { status: 403, .. }));
        agent.set_behaviour(|b| b.block = false);
        // The caller does not call clear_correlation_affinity: the block alone ends it.
    }
    new_bodies_still_work(&agent, &pool).await;
    pool.shutdown(Duration::from_secs(1)).await;
}

pub async fn cleared_affinity_releases_the_stream<R: Harness>() {
    let dir = tempfile::tempdir().unwrap();
    let (agent, pool) = start::<R>(dir.path()).await;
    for i in 0..REQUESTS {
        let cid = format!("ended-{i}");
        let r = headers_then_chunk(&pool, &cid)
            .await
            .unwrap_or_else(|e| panic!("chunk of request {i} refused: {e}"));
        assert_eq!(r.decision, Decision::Allow);
        // The proxy stops the request itself (say, its client went away) and says so.
        assert!(pool.clear_correlation_affinity("a", &cid));
    }
    assert_eq!(pool.affinity_count(), 0);
    new_bodies_still_work(&agent, &pool).await;
    pool.shutdown(Duration::from_secs(1)).await;
}

pub async fn timed_out_and_cancelled_chunks_release_their_streams<R: Harness>() {
    let dir = tempfile::tempdir().unwrap();
    let (agent, pool) = start::<R>(dir.path()).await;
    // Each of the three ways alone ends more requests than the tables hold.
    for i in 0..3 * REQUESTS {
        let cid = format!("cut-{i}");
        pool.send_request_headers("a", headers(&cid)).await.unwrap();
        match i % 3 {
            // The chunk's answer never comes: it times out.
            0 => {
                agent.set_behaviour(|b| b.silent = true);
                let r = pool
                    .send_event_with_timeout(
                        "a",
                        agent_protocol_core::Event::RequestBodyChunk(chunk(&cid, 0, false)),
                        Duration::from_millis(50),
                    )
                    .await;
                assert!(
                    matches!(&r, Err(PoolError::Client(e)) if e.is_timeout()),
                    "{r:?}"
                );
            }
            // Cancelled while the agent sits on the chunk.
            1 => {
                agent.set_behaviour(|b| b.silent = true);
                let mut sent = {
                    let pool = pool.clone();
                    let cid = cid.clone();
                    spawn::<R, _>(async move {
                        pool.send_request_body_chunk("a", chunk(&cid, 0, false))
                            .await
                    })
                };
                let deadline = Instant::now() + WAIT;
                while !agent
                    .seen()
                    .iter()
                    .any(|s| s.cid == cid && s.kind == EventKind::RequestBodyChunk)
                {
                    if let Ok(r) = sent.try_recv() {
                        panic!("chunk of request {i} ended before reaching the agent: {r:?}");
                    }
                    assert!(
                        Instant::now() < deadline,
                        "chunk {i} never reached the agent"
                    );
                    sleep::<R>(Duration::from_millis(5)).await;
                }
                pool.cancel_request("a", &cid, CancelReason::ClientDisconnect)
                    .await
                    .unwrap();
                let r = timeout::<R, _>(WAIT, "cancelled chunk ends", sent)
                    .await
                    .unwrap();
                assert!(
                    matches!(
                        &r,
                        Err(PoolError::Client(ClientError::Request(
                            agent_protocol_core::RequestError::Cancelled(_)
                        )))
                    ),
                    "{r:?}"
                );
            }
            // Answered, then cancelled before the next chunk: nothing pending, still over.
            _ => {
                pool.send_request_body_chunk("a", chunk(&cid, 0, false))
                    .await
                    .unwrap();
                pool.cancel_request("a", &cid, CancelReason::UpstreamError)
                    .await
                    .unwrap();
            }
        }
        agent.set_behaviour(|b| b.silent = false);
    }
    new_bodies_still_work(&agent, &pool).await;
    pool.shutdown(Duration::from_secs(1)).await;
}

crate::on_both_runtimes!(
    blocked_chunks_release_their_streams,
    cleared_affinity_releases_the_stream,
    timed_out_and_cancelled_chunks_release_their_streams,
);
