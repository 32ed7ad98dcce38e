//! The two runtime adapters talk to each other over real Unix sockets: a tokio pool against an
//! async-std agent server and an async-std pool against a tokio agent server, in both
//! encodings, and reverse connections dialed from one runtime into the other.
//!
//! Unlike the rest of this binary (each scenario on one runtime at a time), every test here
//! runs both: the tokio side on a tokio runtime, the async-std side on async-io and
//! async-global-executor (what async-std runs on), driven here by `async_io::block_on`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use agent_protocol_async_std::AsyncStd;
use agent_protocol_core::capabilities::EventKind;
use agent_protocol_core::registration::RegistrationPolicy;
use agent_protocol_core::*;
use agent_protocol_driver::client::{AgentClient, ClientConfig};
use agent_protocol_driver::pool::{AgentPool, AgentPoolConfig};
use agent_protocol_driver::reverse::{
    RegisteredAgent, ReverseAgentConfig, ReverseConnector, ReverseListener, ReverseTarget,
};
use agent_protocol_driver::server::{bind_unix_socket, AgentServer, ServerConfig, ServerHandle};
use agent_protocol_driver::Runtime;
use agent_protocol_tokio::Tokio;
use bytes::Bytes;

use crate::agents::{request_headers, TestAgent as Agent};

fn pool_config<R: Runtime>(encoding: Encoding) -> AgentPoolConfig<R> {
    let mut config = AgentPoolConfig::<R>::default()
        .with_connections_per_agent(2)
        .with_request_timeout(Duration::from_secs(10));
    config.client.connection.handshake.encodings = [encoding].into_iter().collect();
    config
}

/// What every pairing must get right, through the pool of runtime `R`.
async fn exercise<R: Runtime>(pool: &AgentPool<R>, agent: &str) {
    // Many requests at once; slow ones finish last, so answers come back out of order.
    let calls = (0..48).map(|i| {
        let uri = match i % 4 {
            0 => format!("/sleep/{}", 40 - i % 40),
            1 => "/admin/panel".to_owned(),
            _ => format!("/page/{i}"),
        };
        async move {
            let cid = format!("{agent}-h{i}");
            let r = pool
                .send_request_headers(agent, request_headers(&cid, &uri))
                .await
                .unwrap_or_else(|e| panic!("{cid}: {e}"));
            pool.clear_correlation_affinity(agent, &cid);
            (uri, r)
        }
    });
    for (uri, r) in futures_util::future::join_all(calls).await {
        if uri.starts_with("/admin") {
            assert!(
                matches!(r.decision, Decision::Block { status: 403, .. }),
                "{uri}: {r:?}"
            );
        } else {
            assert_eq!(r.decision, Decision::Allow, "{uri}");
            assert!(
                r.request_headers.iter().any(
                    |op| matches!(op, HeaderOp::Set { name, value } if name == "x-seen" && *value == uri)
                ),
                "{uri}: {:?}",
                r.request_headers
            );
        }
    }

    // A 1 MiB body in 64 KiB chunks follows its headers' connection; the running total
    // arrives intact.
    let cid = format!("{agent}-body");
    pool.send_request_headers(agent, request_headers(&cid, "/upload"))
        .await
        .unwrap();
    let body: Vec<u8> = (0..1024 * 1024).map(|i| (i % 251) as u8).collect();
    let chunks: Vec<&[u8]> = body.chunks(64 * 1024).collect();
    let mut sent = 0u64;
    for (i, c) in chunks.iter().enumerate() {
        sent += c.len() as u64;
        let chunk = RequestBodyChunkEvent(BodyChunk {
            correlation_id: cid.clone().into(),
            data: Bytes::copy_from_slice(c),
            is_last: i + 1 == chunks.len(),
            total_size: Some(body.len() as u64),
            chunk_index: i as u32,
            bytes_transferred: sent,
        });
        let r = pool.send_request_body_chunk(agent, chunk).await.unwrap();
        assert_eq!(r.decision, Decision::Allow);
        assert_eq!(r.routing_metadata["total"], sent.to_string());
    }
    let r = pool
        .send_response_headers(
            agent,
            ResponseHeadersEvent {
                correlation_id: cid.clone().into(),
                status: 201,
                headers: Headers::new(),
            },
        )
        .await
        .unwrap();
    assert!(r.response_headers.iter().any(
        |op| matches!(op, HeaderOp::Set { name, value } if name == "x-status" && value == "201")
    ));
    let r = pool
        .send_request_complete(
            agent,
            RequestCompleteEvent {
                correlation_id: cid.clone().into(),
                status: 201,
                request_body_size: sent,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(r.decision, Decision::Allow);

    // A blocking chunk.
    let cid = format!("{agent}-evil");
    pool.send_request_headers(agent, request_headers(&cid, "/upload"))
        .await
        .unwrap();
    let r = pool
        .send_request_body_chunk(
            agent,
            RequestBodyChunkEvent(BodyChunk {
                correlation_id: cid.clone().into(),
                data: Bytes::from_static(b"some evil payload"),
                is_last: true,
                total_size: None,
                chunk_index: 0,
                bytes_transferred: 17,
            }),
        )
        .await
        .unwrap();
    assert!(matches!(r.decision, Decision::Block { status: 400, .. }));
    pool.clear_correlation_affinity(agent, &cid);

    let stats = pool.stats();
    let s = stats.iter().find(|s| s.agent_id == agent).unwrap();
    assert_eq!(s.connections, 2, "{s:?}");
}

fn body_chunks_seen(agent: &Agent) -> usize {
    let kinds = agent.kinds.lock().unwrap();
    kinds
        .iter()
        .filter(|k| **k == EventKind::RequestBodyChunk)
        .count()
}

/// One client of runtime `R`: the encoding asked for is the one negotiated, and pings work.
async fn check_client<R: Runtime>(path: &str, encoding: Encoding) {
    let mut config = ClientConfig::<R>::default();
    config.connection.handshake.encodings = [encoding].into_iter().collect();
    let client = AgentClient::<R>::connect(path, config).await.unwrap();
    assert_eq!(client.encoding(), encoding);
    client.ping().await.unwrap();
    client.close().await;
}

fn tokio_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A tokio pool (and client) against an agent served by the async-std adapter.
fn tokio_pool_against_async_std_agent(encoding: Encoding) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.sock");
    let agent = Arc::new(Agent::default());
    let server = Arc::new(AgentServer::<Agent, AsyncStd>::with_shared_handler(
        agent.clone(),
        ServerConfig::default(),
    ));
    let listener = server.bind_uds(&path).unwrap();
    let serving = server.clone();
    let (served_tx, served_rx) = std::sync::mpsc::channel();
    AsyncStd::spawn(async move {
        let _ = served_tx.send(serving.serve(listener).await.is_ok());
    });
    let endpoint = path.to_str().unwrap().to_owned();
    tokio_runtime().block_on(async {
        check_client::<Tokio>(&endpoint, encoding).await;
        let pool = AgentPool::<Tokio>::new(pool_config(encoding));
        pool.add_agent("as-agent", &endpoint).await.unwrap();
        exercise(&pool, "as-agent").await;
        pool.shutdown(Duration::from_secs(2)).await;
    });
    assert!(
        body_chunks_seen(&agent) >= 17,
        "16 chunks of the 1 MiB body and the evil one"
    );
    server.handle().shutdown();
    assert!(served_rx.recv_timeout(Duration::from_secs(10)).unwrap());
    assert!(!path.exists(), "socket file removed after shutdown");
}

/// An async-std pool (and client) against an agent served by the tokio adapter.
fn async_std_pool_against_tokio_agent(encoding: Encoding) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.sock");
    let rt = tokio_runtime();
    let agent = Arc::new(Agent::default());
    let server = Arc::new(AgentServer::<Agent, Tokio>::with_shared_handler(
        agent.clone(),
        ServerConfig::default(),
    ));
    let listener = {
        let _in_runtime = rt.enter();
        server.bind_uds(&path).unwrap()
    };
    let serving = server.clone();
    let served = rt.spawn(async move { serving.serve(listener).await });
    let endpoint = path.to_str().unwrap().to_owned();
    async_io::block_on(async {
        check_client::<AsyncStd>(&endpoint, encoding).await;
        let pool = AgentPool::<AsyncStd>::new(pool_config(encoding));
        pool.add_agent("tokio-agent", &endpoint).await.unwrap();
        exercise(&pool, "tokio-agent").await;
        pool.shutdown(Duration::from_secs(2)).await;
    });
    assert!(
        body_chunks_seen(&agent) >= 17,
        "16 chunks of the 1 MiB body and the evil one"
    );
    server.handle().shutdown();
    let result = rt.block_on(async { tokio::time::timeout(Duration::from_secs(10), served).await });
    assert!(matches!(result, Ok(Ok(Ok(())))), "{result:?}");
}

#[test]
fn tokio_pool_async_std_agent_json() {
    tokio_pool_against_async_std_agent(Encoding::Json);
}

#[test]
fn tokio_pool_async_std_agent_msgpack() {
    tokio_pool_against_async_std_agent(Encoding::MsgPack);
}

#[test]
fn async_std_pool_tokio_agent_json() {
    async_std_pool_against_tokio_agent(Encoding::Json);
}

#[test]
fn async_std_pool_tokio_agent_msgpack() {
    async_std_pool_against_tokio_agent(Encoding::MsgPack);
}

/// Waits (polling, runtime-neutral) until `pool` has agent `id`.
async fn wait_for_agent<R: Runtime>(pool: &AgentPool<R>, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    // Connected, not only registered: a reverse connection joins the pool before the
    // registration answer is written and it opens.
    while !pool.has_agent(id) || pool.stats().iter().all(|s| s.connected == 0) {
        assert!(Instant::now() < deadline, "agent {id} never registered");
        async_io::Timer::after(Duration::from_millis(5)).await;
    }
}

/// A reverse listener and pool of runtime `P`, and an agent of runtime `A` dialing in with a
/// token; the registered connection then carries the whole exercise.
async fn reverse_pair<P: Runtime, A: Runtime>(dir: &std::path::Path) {
    let path = dir.join("reverse.sock");
    let policy = RegistrationPolicy {
        tokens: vec!["s3cret".into()],
        ..Default::default()
    };
    let pool = AgentPool::<P>::new(pool_config(Encoding::Json));
    let listener = ReverseListener::<P>::new(policy, pool.config().client.clone());
    let admitting = pool.clone();
    let accepting = listener.clone();
    let uds = bind_unix_socket::<P>(&path, 0o660).unwrap();
    P::spawn(async move {
        let _ = accepting
            .serve(uds.into(), move |agent: RegisteredAgent<P>| {
                admitting
                    .add_reverse_connection(&agent.agent_id, agent.client)
                    .map_err(|e| e.to_string())
            })
            .await;
    });
    let agent = Arc::new(Agent::default());
    let mut config = ReverseAgentConfig::new(ReverseTarget::Unix(path.clone()), "rev-agent");
    config.auth_token = Some("s3cret".into());
    let handle = ServerHandle::new("rev-agent");
    let connector = Arc::new(ReverseConnector::<Agent, A>::new(
        agent.clone(),
        config,
        handle.clone(),
    ));
    let dialing = connector.clone();
    A::spawn(async move { dialing.run().await });
    wait_for_agent(&pool, "rev-agent").await;
    exercise_reverse(&pool).await;
    handle.shutdown();
    listener.shutdown();
    pool.shutdown(Duration::from_secs(2)).await;
}

/// A reverse connection is one connection (the agent dials once), so the checks are lighter.
async fn exercise_reverse<R: Runtime>(pool: &AgentPool<R>) {
    for (i, uri) in ["/page", "/admin", "/sleep/20"].iter().enumerate() {
        let cid = format!("rev-{i}");
        let r = pool
            .send_request_headers("rev-agent", request_headers(&cid, uri))
            .await
            .unwrap();
        pool.clear_correlation_affinity("rev-agent", &cid);
        let blocked = matches!(r.decision, Decision::Block { status: 403, .. });
        assert_eq!(blocked, uri.starts_with("/admin"), "{uri}: {r:?}");
    }
}

#[test]
fn async_std_agent_dials_a_tokio_reverse_listener() {
    let dir = tempfile::tempdir().unwrap();
    tokio_runtime().block_on(reverse_pair::<Tokio, AsyncStd>(dir.path()));
}

#[test]
fn tokio_agent_dials_an_async_std_reverse_listener() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio_runtime();
    // The tokio connector's tasks need the runtime; the proxy side runs on async-std's.
    let _in_runtime = rt.enter();
    async_io::block_on(reverse_pair::<AsyncStd, Tokio>(dir.path()));
}
