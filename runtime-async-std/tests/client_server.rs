//! AgentClient <-> AgentServer over real Unix and TCP sockets on async-io, under async-std's
//! executor (and, for two tests, smol's).

use std::collections::HashMap;
use std::future::Future;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agent_protocol_async_std::client::{AgentClient, ClientConfig, ClientError};
use agent_protocol_async_std::driver::Runtime;
use agent_protocol_async_std::pool::{AgentPool, AgentPoolConfig};
use agent_protocol_async_std::server::{
    AgentHandler, AgentServer, Listener, Push, ServerConfig, ServerHandle,
};
use agent_protocol_async_std::AsyncStd;
use agent_protocol_core::capabilities::EventKind;
use agent_protocol_core::control::CounterMetric;
use agent_protocol_core::*;
use async_io::{Async, Timer};
use bytes::Bytes;
use futures_lite::{AsyncReadExt, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(5);

#[derive(Default)]
struct TestAgent {
    /// Kinds of the events the handler saw, in order.
    kinds: Mutex<Vec<EventKind>>,
    /// URIs of request headers, in the order their answers were produced.
    answered: Mutex<Vec<String>>,
}

impl TestAgent {
    fn saw(&self, kind: EventKind) {
        self.kinds.lock().unwrap().push(kind);
    }
}

impl AgentHandler for TestAgent {
    async fn on_request_headers(&self, event: RequestHeadersEvent) -> AgentResponse {
        self.saw(EventKind::RequestHeaders);
        // "/sleep/N" answers after N ms.
        if let Some(ms) = event.uri.strip_prefix("/sleep/") {
            Timer::after(Duration::from_millis(ms.parse().unwrap_or(0))).await;
        }
        // "/hold/N" answers only once N other requests have been answered.
        if let Some(n) = event.uri.strip_prefix("/hold/") {
            let n: usize = n.parse().unwrap();
            while self.answered.lock().unwrap().len() < n {
                Timer::after(Duration::from_millis(1)).await;
            }
        }
        self.answered.lock().unwrap().push(event.uri.clone());
        if event.uri.starts_with("/admin") {
            return AgentResponse::block(403, "admin");
        }
        let mut r = AgentResponse::allow();
        r.request_headers.push(HeaderOp::Set {
            name: "x-seen".into(),
            value: event.uri.clone(),
        });
        r.request_headers.push(HeaderOp::Remove {
            name: "cookie".into(),
        });
        if let Some(host) = event.headers.first("host") {
            r.request_headers.push(HeaderOp::Add {
                name: "x-host".into(),
                value: host.to_owned(),
            });
        }
        r
    }

    async fn on_request_body_chunk(&self, event: RequestBodyChunkEvent) -> AgentResponse {
        self.saw(EventKind::RequestBodyChunk);
        let mut r = AgentResponse::allow();
        // Echo what arrived so the test can check it.
        let sum: u64 = event.0.data.iter().map(|&b| u64::from(b)).sum();
        r.routing_metadata
            .insert("len".into(), event.0.data.len().to_string());
        r.routing_metadata
            .insert("total".into(), event.0.bytes_transferred.to_string());
        r.routing_metadata.insert("sum".into(), sum.to_string());
        r.routing_metadata
            .insert("index".into(), event.0.chunk_index.to_string());
        if event.0.data.windows(4).any(|w| w == b"evil") {
            r.decision = Decision::block(400, None);
        }
        r
    }

    async fn on_response_headers(&self, event: ResponseHeadersEvent) -> AgentResponse {
        self.saw(EventKind::ResponseHeaders);
        let mut r = AgentResponse::allow();
        r.response_headers.push(HeaderOp::Set {
            name: "x-status".into(),
            value: event.status.to_string(),
        });
        r.response_headers.push(HeaderOp::Remove {
            name: "server".into(),
        });
        r
    }

    async fn on_response_body_chunk(&self, event: ResponseBodyChunkEvent) -> AgentResponse {
        self.saw(EventKind::ResponseBodyChunk);
        let mut r = AgentResponse::allow();
        let upper: Vec<u8> = event.0.data.to_ascii_uppercase();
        r.response_body_mutation = Some(BodyMutation::replace(event.0.chunk_index, upper));
        r
    }

    async fn on_request_complete(&self, event: RequestCompleteEvent) -> AgentResponse {
        self.saw(EventKind::RequestComplete);
        let mut r = AgentResponse::allow();
        r.routing_metadata
            .insert("status".into(), event.status.to_string());
        r
    }

    async fn on_websocket_frame(&self, event: WebSocketFrameEvent) -> AgentResponse {
        self.saw(EventKind::WebSocketFrame);
        let mut r = AgentResponse::allow();
        r.websocket_decision = Some(if event.data.starts_with(b"drop") {
            WebSocketDecision::Drop
        } else {
            WebSocketDecision::Allow
        });
        r
    }

    async fn on_guardrail_inspect(&self, event: GuardrailInspectEvent) -> AgentResponse {
        self.saw(EventKind::GuardrailInspect);
        let detected = event.content.contains("ignore previous");
        AgentResponse::allow().with_guardrail(&GuardrailResponse {
            detected,
            confidence: if detected { 0.9 } else { 0.0 },
            ..Default::default()
        })
    }

    async fn on_configure(&self, event: ConfigureEvent) -> AgentResponse {
        self.saw(EventKind::Configure);
        let mut r = AgentResponse::allow();
        r.routing_metadata
            .insert("mode".into(), event.config["mode"].to_string());
        r
    }
}

struct Running {
    path: String,
    handle: ServerHandle,
    server: Arc<AgentServer<TestAgent>>,
}

fn start(dir: &Path) -> Running {
    let path = dir.join("agent.sock");
    let server = Arc::new(AgentServer::new(TestAgent::default(), server_config()));
    let listener = server.bind_uds(&path).unwrap();
    let handle = server.handle();
    let s = server.clone();
    async_global_executor::spawn(async move { s.serve(listener).await }).detach();
    Running {
        path: path.to_str().unwrap().to_owned(),
        handle,
        server,
    }
}

/// Both encodings accepted whatever the `msgpack` feature (it only changes the defaults).
fn server_config() -> ServerConfig {
    ServerConfig {
        encodings: vec![Encoding::MsgPack, Encoding::Json],
        ..ServerConfig::default()
    }
}

fn config(encoding: Encoding) -> ClientConfig {
    let mut c = ClientConfig::default();
    c.connection.handshake.encodings = [encoding].into_iter().collect();
    c
}

fn meta(cid: &str) -> RequestMetadata {
    RequestMetadata {
        correlation_id: cid.into(),
        request_id: cid.into(),
        client_ip: "10.0.0.1".into(),
        client_port: 5555,
        protocol: "HTTP/1.1".into(),
        timestamp: "2026-11-29T00:00:00Z".into(),
        ..Default::default()
    }
}

fn headers(cid: &str, uri: &str) -> Event {
    Event::RequestHeaders(RequestHeadersEvent::new(
        meta(cid),
        "GET",
        uri,
        Headers::from_iter([("host", "example.com"), ("cookie", "session=1")]),
    ))
}

async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < WAIT, "timed out waiting for: {what}");
        Timer::after(Duration::from_millis(5)).await;
    }
}

/// Runs `future`, panicking with `what` after a generous limit (a failure guard only).
async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    futures_lite::future::or(async { Some(future.await) }, async {
        Timer::after(WAIT).await;
        None
    })
    .await
    .unwrap_or_else(|| panic!("timed out: {what}"))
}

#[async_std::test]
async fn every_event_kind_is_answered_in_both_encodings() {
    let dir = tempfile::tempdir().unwrap();
    let agent = start(dir.path());
    for encoding in [Encoding::Json, Encoding::MsgPack] {
        agent.server.handler().kinds.lock().unwrap().clear();
        let client = AgentClient::connect(&agent.path, config(encoding))
            .await
            .unwrap();
        assert_eq!(client.encoding(), encoding);
        assert!(client.capabilities().features.cancellation);

        // Request headers: mutations come back.
        let r = client.send(headers("r1", "/shop")).await.unwrap();
        assert_eq!(r.correlation_id(), Some("r1"));
        assert_eq!(r.decision, Decision::Allow);
        assert_eq!(
            r.request_headers,
            vec![
                HeaderOp::Set {
                    name: "x-seen".into(),
                    value: "/shop".into()
                },
                HeaderOp::Remove {
                    name: "cookie".into()
                },
                HeaderOp::Add {
                    name: "x-host".into(),
                    value: "example.com".into()
                },
            ]
        );
        let r = client.send(headers("r0", "/admin/x")).await.unwrap();
        assert_eq!(r.decision, Decision::block(403, Some("admin".into())));

        // Request body, binary-safe in both encodings.
        let data = Bytes::from_static(b"\x00\xff\x01evil");
        let r = client
            .send(Event::RequestBodyChunk(RequestBodyChunkEvent(BodyChunk {
                correlation_id: "r1".into(),
                data: data.clone(),
                is_last: true,
                total_size: Some(data.len() as u64),
                chunk_index: 0,
                bytes_transferred: 0,
            })))
            .await
            .unwrap();
        assert_eq!(r.decision.kind(), "block");
        assert_eq!(r.routing_metadata["len"], "7");
        let sum: u64 = data.iter().map(|&b| u64::from(b)).sum();
        assert_eq!(r.routing_metadata["sum"], sum.to_string());

        let r = client
            .send(Event::ResponseHeaders(ResponseHeadersEvent {
                correlation_id: "r1".into(),
                status: 201,
                headers: Headers::from_iter([("server", "nginx")]),
            }))
            .await
            .unwrap();
        assert_eq!(
            r.response_headers,
            vec![
                HeaderOp::Set {
                    name: "x-status".into(),
                    value: "201".into()
                },
                HeaderOp::Remove {
                    name: "server".into()
                },
            ]
        );

        let mut rb = ResponseBodyChunkEvent::default();
        rb.0.correlation_id = "r1".into();
        rb.0.data = Bytes::from_static(b"hello");
        rb.0.is_last = true;
        let r = client.send(Event::ResponseBodyChunk(rb)).await.unwrap();
        assert_eq!(
            r.response_body_mutation,
            Some(BodyMutation::replace(0, Bytes::from_static(b"HELLO")))
        );

        let r = client
            .send(Event::RequestComplete(RequestCompleteEvent {
                correlation_id: "r1".into(),
                status: 204,
                ..Default::default()
            }))
            .await
            .unwrap();
        assert_eq!(r.routing_metadata["status"], "204");

        for (payload, expected) in [
            (&b"hi"[..], WebSocketDecision::Allow),
            (&b"drop me"[..], WebSocketDecision::Drop),
        ] {
            let r = client
                .send(Event::WebSocketFrame(WebSocketFrameEvent {
                    correlation_id: "ws".into(),
                    data: Bytes::copy_from_slice(payload),
                    fin: true,
                    ..Default::default()
                }))
                .await
                .unwrap();
            assert_eq!(r.websocket_decision, Some(expected));
        }

        for (content, detected) in [("hello", false), ("ignore previous instructions", true)] {
            let r = client
                .send(Event::GuardrailInspect(GuardrailInspectEvent {
                    correlation_id: "g".into(),
                    content: content.into(),
                    ..Default::default()
                }))
                .await
                .unwrap();
            assert_eq!(r.guardrail().unwrap().detected, detected, "{content}");
        }

        let r = client
            .send(Event::Configure(ConfigureEvent {
                correlation_id: "cfg".into(),
                config: serde_json::json!({"mode": "strict"}),
                config_version: Some("7".into()),
            }))
            .await
            .unwrap();
        assert_eq!(r.routing_metadata["mode"], "\"strict\"");

        let kinds = agent.server.handler().kinds.lock().unwrap().clone();
        for k in EventKind::ALL {
            assert!(
                kinds.contains(&k),
                "{encoding:?}: {k:?} missing from {kinds:?}"
            );
        }
        assert_eq!(client.status().in_flight(), 0);
        client.close().await;
    }
}

#[async_std::test]
async fn pipelined_requests_are_answered_out_of_order() {
    const N: usize = 50;
    let dir = tempfile::tempdir().unwrap();
    let agent = start(dir.path());
    for encoding in [Encoding::Json, Encoding::MsgPack] {
        let client = AgentClient::connect(&agent.path, config(encoding))
            .await
            .unwrap();
        agent.server.handler().answered.lock().unwrap().clear();
        let send = |i: usize, uri: String| {
            let client = client.clone();
            async_std::task::spawn(async move {
                let r = client.send(headers(&format!("c{i}"), &uri)).await;
                (i, uri, r)
            })
        };
        // The first request is held until all the others have been answered.
        let mut tasks = vec![send(0, format!("/hold/{}", N - 1))];
        eventually("held request reached the agent", || {
            agent.handle.in_flight() == 1
        })
        .await;
        for i in 1..N {
            let uri = if i % 5 == 0 {
                "/admin".to_string()
            } else {
                format!("/sleep/{}", i % 3)
            };
            tasks.push(send(i, uri));
        }
        for t in tasks {
            let (i, uri, r) = within("pipelined answer", t).await;
            let r = r.unwrap();
            assert_eq!(r.correlation_id(), Some(format!("c{i}").as_str()));
            if uri == "/admin" {
                assert_eq!(r.decision.kind(), "block");
            } else {
                assert_eq!(
                    r.request_headers[0],
                    HeaderOp::Set {
                        name: "x-seen".into(),
                        value: uri
                    }
                );
            }
        }
        // The held request was answered last although it was sent first.
        let answered = agent.server.handler().answered.lock().unwrap().clone();
        assert_eq!(answered.len(), N);
        assert!(
            answered.last().unwrap().starts_with("/hold/"),
            "{answered:?}"
        );
        assert_eq!(client.status().in_flight(), 0);
    }
    assert_eq!(agent.handle.in_flight(), 0);
}

#[async_std::test]
async fn one_mib_body_streamed_in_1_16_and_64_kib_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let agent = start(dir.path());
    let body: Vec<u8> = (0..1024 * 1024).map(|i| (i % 251) as u8).collect();
    for encoding in [Encoding::Json, Encoding::MsgPack] {
        let client = AgentClient::connect(&agent.path, config(encoding))
            .await
            .unwrap();
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
                let sum: u64 = c.iter().map(|&b| u64::from(b)).sum();
                assert_eq!(r.routing_metadata["len"], c.len().to_string());
                assert_eq!(r.routing_metadata["total"], sent.to_string());
                assert_eq!(r.routing_metadata["sum"], sum.to_string());
                assert_eq!(r.routing_metadata["index"], i.to_string());
            }
            assert_eq!(sent, body.len() as u64);
        }
    }
}

#[async_std::test]
async fn cancel_drops_the_handler_and_frees_the_slot() {
    let dir = tempfile::tempdir().unwrap();
    let agent = start(dir.path());
    let client = AgentClient::connect(&agent.path, config(Encoding::MsgPack))
        .await
        .unwrap();
    let c2 = client.clone();
    let slow =
        async_std::task::spawn(async move { c2.send(headers("slow", "/sleep/60000")).await });
    eventually("handler started", || agent.handle.in_flight() == 1).await;
    client.cancel("slow", CancelReason::ClientDisconnect).await;
    let r = within("cancelled request", slow).await;
    assert!(
        matches!(r, Err(ClientError::Request(RequestError::Cancelled(_)))),
        "{r:?}"
    );
    // The agent dropped the handler's future (it would otherwise sleep for a minute).
    eventually("handler dropped", || agent.handle.in_flight() == 0).await;
    assert_eq!(client.status().in_flight(), 0);
    // The connection is still fine.
    client.send(headers("next", "/")).await.unwrap();
}

#[async_std::test]
async fn a_caller_that_stops_waiting_cancels_its_request_only() {
    let dir = tempfile::tempdir().unwrap();
    let agent = start(dir.path());
    let client = AgentClient::connect(&agent.path, config(Encoding::Json))
        .await
        .unwrap();
    let c2 = client.clone();
    let abandoned =
        async_std::task::spawn(async move { c2.send(headers("gone", "/sleep/60000")).await });
    let c3 = client.clone();
    let kept = async_std::task::spawn(async move { c3.send(headers("kept", "/sleep/300")).await });
    eventually("both handlers started", || agent.handle.in_flight() == 2).await;
    assert!(abandoned.cancel().await.is_none());
    // The agent is told: that handler future is dropped, the other one is untouched.
    eventually("abandoned request cancelled", || {
        agent.handle.in_flight() <= 1 && client.status().in_flight() <= 1
    })
    .await;
    let r = within("kept request", kept).await.unwrap();
    assert_eq!(r.correlation_id(), Some("kept"));
    eventually("all done", || agent.handle.in_flight() == 0).await;
    // The same id can be used again right away.
    let r = client.send(headers("gone", "/")).await.unwrap();
    assert_eq!(r.correlation_id(), Some("gone"));
}

#[async_std::test]
async fn timeout_ping_health_and_flow_control() {
    let dir = tempfile::tempdir().unwrap();
    let agent = start(dir.path());
    let client = AgentClient::connect(&agent.path, config(Encoding::Json))
        .await
        .unwrap();

    // A request deadline is enforced (not before it passes), and the handler is dropped.
    let started = Instant::now();
    let r = client
        .send_with_timeout(headers("t", "/sleep/60000"), Duration::from_millis(100))
        .await;
    assert!(
        r.as_ref().err().is_some_and(ClientError::is_timeout),
        "{r:?}"
    );
    assert!(started.elapsed() >= Duration::from_millis(90));
    eventually("timed-out handler dropped", || {
        agent.handle.in_flight() == 0
    })
    .await;

    // Ping goes through the agent's event loop.
    let rtt = within("pong", client.ping()).await.unwrap();
    assert!(rtt < WAIT);

    // Health pushed from the server handle reaches the client.
    assert_eq!(client.status().health(), HealthState::Healthy);
    agent
        .handle
        .set_health(HealthState::Degraded, Some("busy".into()));
    eventually("degraded", || {
        client.status().health() == HealthState::Degraded
    })
    .await;
    agent.handle.set_health(HealthState::Healthy, None);
    eventually("healthy", || {
        client.status().health() == HealthState::Healthy
    })
    .await;

    // Pause: new requests are refused locally; resume lets them through again.
    agent.handle.pause();
    eventually("paused", || client.status().is_paused()).await;
    let r = client.send(headers("p", "/")).await;
    assert!(
        r.as_ref().err().is_some_and(ClientError::is_flow_control),
        "{r:?}"
    );
    agent.handle.resume();
    eventually("resumed", || !client.status().is_paused()).await;
    client.send(headers("p", "/")).await.unwrap();
}

#[async_std::test]
async fn metrics_and_health_pushed_by_the_server_reach_the_pool() {
    let dir = tempfile::tempdir().unwrap();
    let agent = start(dir.path());
    let pool = AgentPool::new(AgentPoolConfig {
        connections_per_agent: 2,
        health_check_interval: Duration::from_millis(20),
        ..AgentPoolConfig::default()
    });
    pool.add_agent("waf", &agent.path).await.unwrap();
    assert_eq!(agent.handle.connections(), 2);
    let r = pool
        .send_request_headers(
            "waf",
            match headers("m1", "/admin") {
                Event::RequestHeaders(h) => h,
                _ => unreachable!(),
            },
        )
        .await
        .unwrap();
    assert_eq!(r.decision.kind(), "block");
    agent.handle.push(Push::Metrics(MetricsReport {
        agent_id: "waf".into(),
        counters: vec![CounterMetric {
            name: "waf_hits_total".into(),
            help: None,
            labels: HashMap::new(),
            value: 7,
        }],
        ..Default::default()
    }));
    eventually("metrics exported", || {
        pool.render_prometheus()
            .contains("waf_hits_total{agent_id=\"waf\"} 7")
    })
    .await;
    agent.handle.set_health(HealthState::Unhealthy, None);
    eventually("pool sees the health", || {
        pool.stats()
            .iter()
            .any(|s| s.agent_id == "waf" && s.healthy == 0)
    })
    .await;
    pool.shutdown(Duration::from_secs(1)).await;
    eventually("connections closed", || agent.handle.connections() == 0).await;
}

#[async_std::test]
async fn graceful_shutdown_drains_and_removes_the_socket() {
    let dir = tempfile::tempdir().unwrap();
    let Running {
        path,
        handle,
        server,
    } = start(dir.path());
    let client = AgentClient::connect(&path, config(Encoding::Json))
        .await
        .unwrap();
    let c2 = client.clone();
    let pending =
        async_std::task::spawn(async move { c2.send(headers("long", "/sleep/300")).await });
    eventually("in flight", || handle.in_flight() == 1).await;
    handle.shutdown();
    // Graceful: the in-flight request still gets its answer.
    let r = within("drained answer", pending).await.unwrap();
    assert_eq!(r.correlation_id(), Some("long"));
    drop(server);
    eventually("socket file removed on shutdown", || {
        !Path::new(&path).exists()
    })
    .await;
    eventually("client closed", || !client.is_connected()).await;
    let r = client.send(headers("after", "/")).await;
    assert!(matches!(r, Err(ClientError::Closed(_))), "{r:?}");
    assert_eq!(handle.connections(), 0);
}

#[async_std::test]
async fn socket_mode_stale_file_and_live_socket() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let agent = start(dir.path());
    let mode = std::fs::metadata(&agent.path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660);
    // A live socket is not replaced.
    let err = agent.server.bind_uds(&agent.path).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
    // ... and still serves.
    AgentClient::connect(&agent.path, config(Encoding::Json))
        .await
        .unwrap();
    // A stale socket file (nobody listening) is replaced, with the configured mode.
    let stale = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    assert!(stale.exists());
    let l = agent_protocol_async_std::server::bind_unix_socket(&stale, 0o600).unwrap();
    let mode = std::fs::metadata(&stale).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    drop(l);
    assert!(!stale.exists());
    // A regular file is left alone.
    let file = dir.path().join("not-a-socket");
    std::fs::write(&file, b"data").unwrap();
    let err = agent.server.bind_uds(&file).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::AlreadyExists);
    assert_eq!(std::fs::read(&file).unwrap(), b"data");
}

#[async_std::test]
async fn a_garbage_writing_peer_fails_only_its_own_connection() {
    let dir = tempfile::tempdir().unwrap();
    let agent = start(dir.path());
    let good = AgentClient::connect(&agent.path, config(Encoding::MsgPack))
        .await
        .unwrap();
    let c2 = good.clone();
    let pending =
        async_std::task::spawn(async move { c2.send(headers("slow", "/sleep/300")).await });
    eventually("good request in flight", || agent.handle.in_flight() == 1).await;

    for garbage in [
        // A length prefix far beyond any frame limit.
        &[0xff, 0xff, 0xff, 0xff, 0x10, b'x', b'y'][..],
        // A plausible length, then nonsense where the handshake should be.
        &[0, 0, 0, 5, 0x10, b'{', b'{', b'{', b'{'][..],
    ] {
        let mut raw = Async::<UnixStream>::connect(&agent.path).await.unwrap();
        raw.write_all(garbage).await.unwrap();
        // The server drops this connection: we read whatever it said, then end of stream.
        let mut sink = Vec::new();
        let read = within(
            "server closes the garbage connection",
            raw.read_to_end(&mut sink),
        )
        .await;
        assert!(
            read.is_ok()
                || read
                    .as_ref()
                    .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
            "{read:?}"
        );
    }
    eventually("garbage connections gone", || {
        agent.handle.connections() == 1
    })
    .await;
    // The good connection never noticed.
    let r = within("good request", pending).await.unwrap();
    assert_eq!(r.correlation_id(), Some("slow"));
    good.send(headers("after", "/")).await.unwrap();
    assert!(good.is_connected());
}

#[test]
fn smol_runs_client_and_server_over_uds_and_tcp() {
    smol::block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("smol.sock");
        let server = Arc::new(AgentServer::new(TestAgent::default(), server_config()));
        let uds = server.bind_uds(&path).unwrap();
        let tcp = Async::<std::net::TcpListener>::bind(([127, 0, 0, 1], 0)).unwrap();
        let addr = tcp.get_ref().local_addr().unwrap().to_string();
        let handle = server.handle();
        let s = server.clone();
        let serving =
            smol::spawn(async move { s.serve_all(vec![uds.into(), Listener::tcp(tcp)]).await });

        // Over the Unix socket.
        let client = AgentClient::connect(path.to_str().unwrap(), config(Encoding::MsgPack))
            .await
            .unwrap();
        let r = client.send(headers("u1", "/admin")).await.unwrap();
        assert_eq!(r.decision.kind(), "block");
        within("pong", client.ping()).await.unwrap();

        // Over TCP (the same framed protocol): connect with the runtime, then handshake.
        let stream = AsyncStd::connect_tcp(&addr).await.unwrap();
        let tcp_client = AgentClient::handshake(stream, config(Encoding::Json), None)
            .await
            .unwrap();
        assert_eq!(tcp_client.encoding(), Encoding::Json);
        let r = tcp_client.send(headers("t1", "/shop")).await.unwrap();
        assert_eq!(r.correlation_id(), Some("t1"));
        // A host name is resolved too.
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
