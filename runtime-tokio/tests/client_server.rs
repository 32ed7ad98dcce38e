//! AgentClient <-> AgentServer over real Unix sockets.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use agent_protocol_core::proxy::ProxyConfig;
use agent_protocol_core::*;
use agent_protocol_tokio::client::{AgentClient, ClientConfig, ClientError};
use agent_protocol_tokio::server::{AgentHandler, AgentServer, ServerConfig, ServerHandle};
use bytes::Bytes;

struct TestAgent {
    started: AtomicUsize,
}

impl AgentHandler for TestAgent {
    async fn on_request_headers(&self, event: RequestHeadersEvent) -> AgentResponse {
        self.started.fetch_add(1, Ordering::SeqCst);
        // "/sleep/N" answers after N ms so answers come back out of order.
        if let Some(ms) = event.uri.strip_prefix("/sleep/") {
            let ms: u64 = ms.parse().unwrap_or(0);
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        if event.uri.starts_with("/admin") {
            return AgentResponse::block(403, "admin");
        }
        let mut r = AgentResponse::allow();
        r.request_headers.push(HeaderOp::Set {
            name: "x-seen".into(),
            value: event.uri.clone(),
        });
        r
    }

    async fn on_request_body_chunk(&self, event: RequestBodyChunkEvent) -> AgentResponse {
        let mut r = AgentResponse::allow();
        // Echo the byte count so the test can check what arrived.
        r.routing_metadata
            .insert("len".into(), event.0.data.len().to_string());
        r.routing_metadata
            .insert("total".into(), event.0.bytes_transferred.to_string());
        if event.0.data.windows(4).any(|w| w == b"evil") {
            r.decision = Decision::block(400, None);
        }
        r
    }
}

async fn start(dir: &tempfile::TempDir) -> (String, ServerHandle, Arc<AgentServer<TestAgent>>) {
    let path = dir.path().join("agent.sock");
    let server = Arc::new(AgentServer::new(
        TestAgent {
            started: AtomicUsize::new(0),
        },
        ServerConfig::default(),
    ));
    let listener = server.bind_uds(&path).unwrap();
    let handle = server.handle();
    let s = server.clone();
    tokio::spawn(async move { s.serve(listener).await });
    (path.to_str().unwrap().to_owned(), handle, server)
}

fn config(encoding: Encoding) -> ClientConfig {
    let mut c = ClientConfig::default();
    c.connection.handshake.encodings = [encoding].into_iter().collect();
    c
}

fn headers(cid: &str, uri: &str) -> Event {
    let meta = RequestMetadata {
        correlation_id: cid.into(),
        request_id: cid.into(),
        client_ip: "10.0.0.1".into(),
        client_port: 5555,
        protocol: "HTTP/1.1".into(),
        timestamp: "2026-11-29T00:00:00Z".into(),
        ..Default::default()
    };
    Event::RequestHeaders(RequestHeadersEvent::new(
        meta,
        "GET",
        uri,
        Headers::from_iter([("host", "example.com")]),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_in_both_encodings() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _handle, _server) = start(&dir).await;
    for encoding in [Encoding::Json, Encoding::MsgPack] {
        let client = AgentClient::connect(&path, config(encoding)).await.unwrap();
        assert_eq!(client.encoding(), encoding);
        let mut tasks = Vec::new();
        for i in 0..50u64 {
            let client = client.clone();
            tasks.push(tokio::spawn(async move {
                // Later requests sleep less, so answers arrive out of order.
                let uri = if i % 5 == 0 {
                    "/admin".to_string()
                } else {
                    format!("/sleep/{}", 50 - i)
                };
                let r = client.send(headers(&format!("c{i}"), &uri)).await.unwrap();
                (i, uri, r)
            }));
        }
        for t in tasks {
            let (i, uri, r) = t.await.unwrap();
            assert_eq!(r.correlation_id(), Some(format!("c{i}").as_str()));
            if uri == "/admin" {
                assert_eq!(r.decision.kind(), "block");
            } else {
                assert_eq!(
                    r.request_headers,
                    vec![HeaderOp::Set {
                        name: "x-seen".into(),
                        value: uri
                    }]
                );
            }
        }
        assert_eq!(client.status().in_flight(), 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_mib_body_streamed_in_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _handle, _server) = start(&dir).await;
    let body: Vec<u8> = (0..1024 * 1024).map(|i| (i % 251) as u8).collect();
    for encoding in [Encoding::Json, Encoding::MsgPack] {
        let client = AgentClient::connect(&path, config(encoding)).await.unwrap();
        for chunk_size in [1024, 16 * 1024, 64 * 1024] {
            let cid = format!("body-{chunk_size}");
            let chunks: Vec<_> = body.chunks(chunk_size).collect();
            let mut sent = 0u64;
            for (i, c) in chunks.iter().enumerate() {
                sent += c.len() as u64;
                let ev = Event::RequestBodyChunk(RequestBodyChunkEvent(BodyChunk {
                    correlation_id: cid.clone(),
                    data: Bytes::copy_from_slice(c),
                    is_last: i + 1 == chunks.len(),
                    total_size: Some(body.len() as u64),
                    chunk_index: i as u32,
                    bytes_transferred: 0,
                }));
                let r = client.send(ev).await.unwrap();
                assert_eq!(r.routing_metadata["len"], c.len().to_string());
                assert_eq!(r.routing_metadata["total"], sent.to_string());
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_drops_the_handler_and_frees_the_slot() {
    let dir = tempfile::tempdir().unwrap();
    let (path, handle, _server) = start(&dir).await;
    let client = AgentClient::connect(&path, config(Encoding::MsgPack))
        .await
        .unwrap();
    let c2 = client.clone();
    let slow = tokio::spawn(async move { c2.send(headers("slow", "/sleep/5000")).await });
    while handle.in_flight() == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    client.cancel("slow", CancelReason::ClientDisconnect).await;
    let r = slow.await.unwrap();
    assert!(
        matches!(r, Err(ClientError::Request(RequestError::Cancelled(_)))),
        "{r:?}"
    );
    // The agent dropped the handler's future.
    tokio::time::timeout(Duration::from_secs(2), async {
        while handle.in_flight() != 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap();
    assert_eq!(client.status().in_flight(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_is_enforced_and_pause_is_honoured() {
    let dir = tempfile::tempdir().unwrap();
    let (path, handle, _server) = start(&dir).await;
    let client = AgentClient::connect(&path, config(Encoding::Json))
        .await
        .unwrap();
    let r = client
        .send_with_timeout(headers("t", "/sleep/2000"), Duration::from_millis(100))
        .await;
    assert!(
        r.as_ref().err().is_some_and(ClientError::is_timeout),
        "{r:?}"
    );
    handle.pause();
    tokio::time::timeout(Duration::from_secs(2), async {
        while !client.status().is_paused() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap();
    let r = client.send(headers("p", "/")).await;
    assert!(
        r.as_ref().err().is_some_and(ClientError::is_flow_control),
        "{r:?}"
    );
    handle.resume();
    tokio::time::timeout(Duration::from_secs(2), client.status().resumed())
        .await
        .ok();
    while client.status().is_paused() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    client.send(headers("p", "/")).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_shutdown_fails_pending_requests_quickly_and_removes_the_socket() {
    let dir = tempfile::tempdir().unwrap();
    let (path, handle, server) = start(&dir).await;
    let mut cfg = config(Encoding::Json);
    cfg.connection = ProxyConfig {
        request_timeout: Duration::from_secs(30),
        ..cfg.connection
    };
    let client = AgentClient::connect(&path, cfg).await.unwrap();
    let c2 = client.clone();
    // Outlives the drain timeout? No: drain waits for it; use a short one to keep the test fast.
    let pending = tokio::spawn(async move { c2.send(headers("long", "/sleep/300")).await });
    while handle.in_flight() == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    handle.shutdown();
    // Graceful: the in-flight request still gets its answer.
    let r = pending.await.unwrap().unwrap();
    assert_eq!(r.correlation_id(), Some("long"));
    drop(server);
    tokio::time::timeout(Duration::from_secs(5), async {
        while std::path::Path::new(&path).exists() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("socket file removed on shutdown");
    let r = client.send(headers("after", "/")).await;
    assert!(matches!(r, Err(ClientError::Closed(_))), "{r:?}");
}

#[tokio::test]
async fn refuses_to_replace_a_live_socket() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _handle, server) = start(&dir).await;
    let err = server.bind_uds(&path).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
    // A stale socket file (nobody listening) is replaced.
    let stale = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    let l = server.bind_uds(&stale).unwrap();
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&stale).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660);
    drop(l);
    assert!(!stale.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_stops_waiting_cancels_its_request_only() {
    let dir = tempfile::tempdir().unwrap();
    let (path, handle, _server) = start(&dir).await;
    let client = AgentClient::connect(&path, config(Encoding::Json))
        .await
        .unwrap();
    let c2 = client.clone();
    let abandoned = tokio::spawn(async move { c2.send(headers("gone", "/sleep/5000")).await });
    while handle.in_flight() == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    abandoned.abort();
    // The agent is told: its handler future is dropped and the slot frees long before 5 s.
    tokio::time::timeout(Duration::from_secs(2), async {
        while handle.in_flight() != 0 || client.status().in_flight() != 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("abandoned request cancelled");
    // The same id can be used again right away.
    let r = client.send(headers("gone", "/")).await.unwrap();
    assert_eq!(r.correlation_id(), Some("gone"));
}
