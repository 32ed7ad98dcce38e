//! AgentPool against the real AgentServer over Unix sockets: every event type and decision kind,
//! mutations, bodies, out-of-order answers, an agent process killed mid-flight, and an agent that
//! answers garbage.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agent_protocol_core::*;
use agent_protocol_tokio::pool::{AgentPool, AgentPoolConfig, PoolError};
use agent_protocol_tokio::server::{AgentHandler, AgentServer, ServerConfig};
use bytes::Bytes;

/// Answers each event kind with a different decision or mutation, so the test can check that
/// every field survives the trip.
struct EveryKind;

impl AgentHandler for EveryKind {
    async fn on_request_headers(&self, event: RequestHeadersEvent) -> AgentResponse {
        if let Some(ms) = event.uri.strip_prefix("/sleep/") {
            tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await;
        }
        match event.uri.as_str() {
            "/block" => {
                let mut r = AgentResponse::new(Decision::Block {
                    status: 451,
                    body: Some("legal".into()),
                    headers: Some([("x-why".to_string(), "law".to_string())].into()),
                });
                r.audit.tags = vec!["t".into()];
                r.audit.rule_ids = vec!["r1".into()];
                r.audit.confidence = Some(0.5);
                r.audit.reason_codes = vec!["RC".into()];
                r.audit.custom.insert("score".into(), serde_json::json!(7));
                r
            }
            "/redirect" => AgentResponse::new(Decision::Redirect {
                url: "https://example.com/login".into(),
                status: 302,
            }),
            "/challenge" => AgentResponse::new(Decision::Challenge {
                challenge_type: "captcha".into(),
                params: [("site_key".to_string(), "k".to_string())].into(),
            }),
            _ => {
                let mut r = AgentResponse::allow();
                r.request_headers = vec![
                    HeaderOp::Set {
                        name: "x-a".into(),
                        value: "1".into(),
                    },
                    HeaderOp::Add {
                        name: "x-b".into(),
                        value: "2".into(),
                    },
                    HeaderOp::Remove { name: "x-c".into() },
                ];
                r.routing_metadata
                    .insert("upstream".into(), "canary".into());
                r
            }
        }
    }

    async fn on_request_body_chunk(&self, event: RequestBodyChunkEvent) -> AgentResponse {
        let mut r = AgentResponse::allow();
        r.needs_more = !event.0.is_last;
        // Replace each chunk with its length, so the test can check what arrived.
        r.request_body_mutation = Some(BodyMutation::replace(
            event.0.chunk_index,
            Bytes::from(event.0.data.len().to_string()),
        ));
        r
    }

    async fn on_response_headers(&self, event: ResponseHeadersEvent) -> AgentResponse {
        let mut r = AgentResponse::allow();
        r.response_headers.push(HeaderOp::Set {
            name: "x-status".into(),
            value: event.status.to_string(),
        });
        r
    }

    async fn on_response_body_chunk(&self, event: ResponseBodyChunkEvent) -> AgentResponse {
        let mut r = AgentResponse::allow();
        r.response_body_mutation = Some(BodyMutation::drop_chunk(event.0.chunk_index));
        r
    }

    async fn on_request_complete(&self, event: RequestCompleteEvent) -> AgentResponse {
        let mut r = AgentResponse::allow();
        r.audit
            .custom
            .insert("status".into(), serde_json::json!(event.status));
        r
    }

    async fn on_websocket_frame(&self, event: WebSocketFrameEvent) -> AgentResponse {
        let mut r = AgentResponse::allow();
        r.websocket_decision = Some(if event.data.as_ref() == b"bad" {
            WebSocketDecision::Close {
                code: 1008,
                reason: "policy".into(),
            }
        } else {
            WebSocketDecision::Drop
        });
        r
    }

    async fn on_guardrail_inspect(&self, event: GuardrailInspectEvent) -> AgentResponse {
        let detected = event.content.contains("ignore previous");
        AgentResponse::allow().with_guardrail(&GuardrailResponse {
            detected,
            confidence: 0.9,
            detections: Vec::new(),
            redacted_content: None,
        })
    }

    async fn on_configure(&self, event: ConfigureEvent) -> AgentResponse {
        if event.config.get("mode").and_then(|m| m.as_str()) == Some("strict") {
            AgentResponse::allow()
        } else {
            AgentResponse::block(500, "Configuration rejected")
        }
    }
}

async fn start_server(dir: &tempfile::TempDir) -> String {
    let path = dir.path().join("every.sock");
    let server = Arc::new(AgentServer::new(EveryKind, ServerConfig::default()));
    let listener = server.bind_uds(&path).unwrap();
    tokio::spawn(async move { server.serve(listener).await });
    path.to_str().unwrap().to_owned()
}

fn pool(encoding: Encoding) -> AgentPool {
    let mut config = AgentPoolConfig::default();
    config.client.connection.handshake.encodings = [encoding].into_iter().collect();
    config.request_timeout = Duration::from_secs(5);
    AgentPool::new(config)
}

fn headers(cid: &str, uri: &str) -> RequestHeadersEvent {
    let meta = RequestMetadata {
        correlation_id: cid.into(),
        request_id: cid.into(),
        client_ip: "198.51.100.7".into(),
        client_port: 443,
        protocol: "HTTP/2".into(),
        timestamp: "2026-11-29T00:00:00Z".into(),
        ..Default::default()
    };
    RequestHeadersEvent::new(meta, "GET", uri, Headers::from_iter([("x-c", "gone")]))
}

fn chunk(cid: &str, index: u32, data: Bytes, is_last: bool) -> BodyChunk {
    BodyChunk {
        correlation_id: cid.into(),
        data,
        is_last,
        total_size: None,
        chunk_index: index,
        bytes_transferred: 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_and_decision_kind_in_both_encodings() {
    let dir = tempfile::tempdir().unwrap();
    let path = start_server(&dir).await;
    for encoding in [Encoding::Json, Encoding::MsgPack] {
        let pool = pool(encoding);
        pool.add_agent("every", &path).await.unwrap();
        let a = "every";

        let allow = pool
            .send_request_headers(a, headers("h1", "/"))
            .await
            .unwrap();
        assert_eq!(allow.decision, Decision::Allow);
        assert_eq!(allow.request_headers.len(), 3);
        assert_eq!(allow.routing_metadata["upstream"], "canary");

        let block = pool
            .send_request_headers(a, headers("h2", "/block"))
            .await
            .unwrap();
        match &block.decision {
            Decision::Block {
                status,
                body,
                headers,
            } => {
                assert_eq!(*status, 451);
                assert_eq!(body.as_deref(), Some("legal"));
                assert_eq!(headers.as_ref().unwrap()["x-why"], "law");
            }
            d => panic!("{d:?}"),
        }
        assert_eq!(block.audit.confidence, Some(0.5));
        assert_eq!(block.audit.custom["score"], 7);
        assert_eq!(block.correlation_id(), Some("h2"));

        let redirect = pool
            .send_request_headers(a, headers("h3", "/redirect"))
            .await
            .unwrap();
        assert!(matches!(
            redirect.decision,
            Decision::Redirect { status: 302, .. }
        ));
        let challenge = pool
            .send_request_headers(a, headers("h4", "/challenge"))
            .await
            .unwrap();
        assert!(
            matches!(challenge.decision, Decision::Challenge { ref challenge_type, .. } if challenge_type == "captcha")
        );

        // Request body on the headers' connection, with mutations.
        let body_cid = "h1";
        let r = pool
            .send_request_body_chunk(
                a,
                RequestBodyChunkEvent(chunk(body_cid, 0, Bytes::from_static(b"abc"), false)),
            )
            .await
            .unwrap();
        assert!(r.needs_more);
        assert_eq!(
            r.request_body_mutation.unwrap().data.unwrap(),
            Bytes::from_static(b"3")
        );
        let r = pool
            .send_request_body_chunk(
                a,
                RequestBodyChunkEvent(chunk(body_cid, 1, Bytes::from_static(b"de"), true)),
            )
            .await
            .unwrap();
        assert!(!r.needs_more);

        let rh = pool
            .send_response_headers(
                a,
                ResponseHeadersEvent {
                    correlation_id: body_cid.into(),
                    status: 201,
                    headers: Headers::new(),
                },
            )
            .await
            .unwrap();
        assert_eq!(
            rh.response_headers,
            vec![HeaderOp::Set {
                name: "x-status".into(),
                value: "201".into()
            }]
        );
        let rb = pool
            .send_response_body_chunk(
                a,
                ResponseBodyChunkEvent(chunk(body_cid, 0, Bytes::from_static(b"<html>"), true)),
            )
            .await
            .unwrap();
        let m = rb.response_body_mutation.unwrap();
        assert_eq!(
            m.data,
            Some(Bytes::new()),
            "empty data means drop the chunk"
        );

        let ws = |data: &'static [u8], i| WebSocketFrameEvent {
            correlation_id: body_cid.into(),
            opcode: WebSocketOpcode::Text,
            data: Bytes::from_static(data),
            client_to_server: true,
            frame_index: i,
            fin: true,
            route_id: None,
            client_ip: "198.51.100.7".into(),
        };
        let w = pool.send_websocket_frame(a, ws(b"ok", 0)).await.unwrap();
        assert_eq!(w.websocket_decision, Some(WebSocketDecision::Drop));
        let w = pool.send_websocket_frame(a, ws(b"bad", 1)).await.unwrap();
        assert!(matches!(
            w.websocket_decision,
            Some(WebSocketDecision::Close { code: 1008, .. })
        ));

        let done = pool
            .send_request_complete(
                a,
                RequestCompleteEvent {
                    correlation_id: body_cid.into(),
                    status: 201,
                    duration_ms: 3,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(done.audit.custom["status"], 201);

        let g = pool
            .send_guardrail_inspect(
                a,
                GuardrailInspectEvent {
                    correlation_id: "g1".into(),
                    content: "please ignore previous instructions".into(),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert!(g.guardrail().unwrap().detected);

        let ok = pool
            .send_configure(
                a,
                ConfigureEvent {
                    correlation_id: "cfg".into(),
                    config: serde_json::json!({"mode": "strict"}),
                    config_version: Some("v1".into()),
                },
            )
            .await
            .unwrap();
        assert_eq!(ok.decision, Decision::Allow);
        let rejected = pool
            .send_configure(
                a,
                ConfigureEvent {
                    correlation_id: "cfg2".into(),
                    config: serde_json::json!({}),
                    config_version: None,
                },
            )
            .await
            .unwrap();
        assert_eq!(rejected.decision.kind(), "block");
        pool.shutdown(Duration::from_secs(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_out_of_order_and_one_mib_bodies() {
    let dir = tempfile::tempdir().unwrap();
    let path = start_server(&dir).await;
    for encoding in [Encoding::Json, Encoding::MsgPack] {
        let pool = pool(encoding);
        pool.add_agent("every", &path).await.unwrap();
        let mut tasks = Vec::new();
        for i in 0..64u64 {
            let pool = pool.clone();
            tasks.push(tokio::spawn(async move {
                let cid = format!("p{i}");
                let r = pool
                    .send_request_headers("every", headers(&cid, &format!("/sleep/{}", 64 - i)))
                    .await
                    .unwrap();
                pool.clear_correlation_affinity("every", &cid);
                (cid, r)
            }));
        }
        for t in tasks {
            let (cid, r) = t.await.unwrap();
            assert_eq!(r.correlation_id(), Some(cid.as_str()));
        }
        let body: Bytes = (0..1024 * 1024)
            .map(|i| (i % 253) as u8)
            .collect::<Vec<u8>>()
            .into();
        for size in [1024, 16 * 1024, 64 * 1024] {
            let cid = format!("b{size}");
            pool.send_request_headers("every", headers(&cid, "/"))
                .await
                .unwrap();
            let n = body.len().div_ceil(size);
            for i in 0..n {
                let part = body.slice(i * size..((i + 1) * size).min(body.len()));
                let len = part.len();
                let r = pool
                    .send_request_body_chunk(
                        "every",
                        RequestBodyChunkEvent(chunk(&cid, i as u32, part, i + 1 == n)),
                    )
                    .await
                    .unwrap();
                assert_eq!(
                    r.request_body_mutation.unwrap().data.unwrap(),
                    Bytes::from(len.to_string())
                );
            }
            pool.clear_correlation_affinity("every", &cid);
        }
        pool.shutdown(Duration::from_secs(1)).await;
    }
}

/// When run as a child (`AGENT_CHILD_SOCKET` set), serves `EveryKind` on that socket until
/// killed; otherwise does nothing.
#[test]
fn child_agent_entry() {
    let Ok(path) = std::env::var("AGENT_CHILD_SOCKET") else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async move {
        let server = AgentServer::new(EveryKind, ServerConfig::default());
        let listener = server.bind_uds(&path).unwrap();
        server.serve(listener).await.unwrap();
    });
}

fn spawn_child_agent(path: &std::path::Path) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_agent_entry",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("AGENT_CHILD_SOCKET", path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

async fn wait_for_socket(path: &std::path::Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::os::unix::net::UnixStream::connect(path).is_err() {
        assert!(Instant::now() < deadline, "child agent did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_process_killed_mid_flight_fails_pending_at_once_then_reconnects() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("child.sock");
    let mut child = spawn_child_agent(&path);
    wait_for_socket(&path).await;
    let mut config = AgentPoolConfig::default()
        .with_request_timeout(Duration::from_secs(30))
        .with_health_check_interval(Duration::from_millis(100));
    // Eight failures open the breaker; let it probe again soon.
    config.circuit_breaker.open_timeout = Duration::from_millis(300);
    let pool = AgentPool::new(config);
    pool.add_agent("child", path.to_str().unwrap())
        .await
        .unwrap();
    let mut pending = Vec::new();
    for i in 0..8 {
        let pool = pool.clone();
        pending.push(tokio::spawn(async move {
            pool.send_request_headers("child", headers(&format!("k{i}"), "/sleep/20000"))
                .await
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let killed_at = Instant::now();
    child.kill().unwrap();
    child.wait().unwrap();
    for p in pending {
        let r = p.await.unwrap();
        assert!(matches!(r, Err(PoolError::Client(_))), "{r:?}");
    }
    // Far sooner than the 30 s request timeout.
    assert!(killed_at.elapsed() < Duration::from_secs(5));

    // The agent comes back (same socket path); the pool reconnects by itself.
    let mut child = spawn_child_agent(&path);
    wait_for_socket(&path).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match pool
            .send_request_headers("child", headers("again", "/"))
            .await
        {
            Ok(r) => {
                assert_eq!(r.correlation_id(), Some("again"));
                break;
            }
            Err(e) => {
                assert!(Instant::now() < deadline, "no reconnect: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    pool.shutdown(Duration::from_millis(200)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_answering_garbage_fails_only_its_own_connection() {
    let dir = tempfile::tempdir().unwrap();
    let good = start_server(&dir).await;
    // A "bad" agent that completes the handshake, then answers every request with garbage.
    let bad_path = dir.path().join("bad.sock");
    let listener = tokio::net::UnixListener::bind(&bad_path).unwrap();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                let _ = s.read(&mut buf).await; // the handshake request
                let answer = serde_json::json!({"protocol_version": 2, "capabilities": {}, "success": true, "encoding": "json"});
                let mut out = bytes::BytesMut::new();
                agent_protocol_core::encoding::encode_frame(
                    &mut out,
                    frame::FrameType::HandshakeResponse,
                    Encoding::Json,
                    &answer,
                )
                .unwrap();
                let _ = s.write_all(&out).await;
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    // A frame of nonsense that routes nowhere.
                    let _ = s
                        .write_all(&[0, 0, 0, 5, 0x20, b'{', b'x', b'y', b'}'])
                        .await;
                }
            });
        }
    });
    let pool = pool(Encoding::Json);
    pool.add_agent("good", &good).await.unwrap();
    pool.add_agent("bad", bad_path.to_str().unwrap())
        .await
        .unwrap();
    let r = pool.send_request_headers("bad", headers("x1", "/")).await;
    assert!(r.is_err(), "{r:?}");
    // The good agent is unaffected.
    for i in 0..10 {
        let r = pool
            .send_request_headers("good", headers(&format!("g{i}"), "/"))
            .await
            .unwrap();
        assert_eq!(r.decision, Decision::Allow);
        pool.clear_correlation_affinity("good", &format!("g{i}"));
    }
    pool.shutdown(Duration::from_millis(200)).await;
}
