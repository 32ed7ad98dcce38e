//! AgentClient <-> AgentServer over gRPC on real loopback TCP.
#![cfg(feature = "grpc")]

mod grpc_support;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use agent_protocol_core::*;
use agent_protocol_proto::v2;
use agent_protocol_proto::v2::agent_service_v2_client::AgentServiceV2Client;
use agent_protocol_tokio::client::{AgentClient, ClientConfig, ClientError};
use agent_protocol_tokio::server::ServerConfig;
use bytes::Bytes;
use grpc_support::*;
use serde_json::{json, Value};

fn config() -> ClientConfig {
    ClientConfig::default()
}

async fn client(addr: std::net::SocketAddr) -> AgentClient {
    AgentClient::connect(&addr.to_string(), config())
        .await
        .unwrap()
}

async fn raw(addr: std::net::SocketAddr) -> AgentServiceV2Client<tonic::transport::Channel> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    AgentServiceV2Client::new(channel)
        .max_decoding_message_size(agent_protocol_proto::MAX_MESSAGE_SIZE)
        .max_encoding_message_size(agent_protocol_proto::MAX_MESSAGE_SIZE)
}

fn echoed(r: &AgentResponse) -> Value {
    serde_json::from_str(&r.routing_metadata["event"]).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_and_every_response_field_cross_unchanged() {
    let (addr, handle, server) = start_grpc(ServerConfig::default()).await;
    let mut clients = Vec::new();
    for endpoint in [addr.to_string(), format!("http://{addr}")] {
        let client = AgentClient::connect(&endpoint, config()).await.unwrap();
        clients.push(client.clone());
        assert_eq!(client.capabilities().agent_id, "agent");
        assert_eq!(client.encoding(), Encoding::Json, "nominal on gRPC");
        for event in every_event(&format!("all-{}", endpoint.len())) {
            let sent = serde_json::from_str::<Value>(&event_json(&event)).unwrap();
            let kind = event.kind();
            let cid = event.correlation_id().to_owned();
            let r = client.send(event).await.unwrap();
            // The agent received exactly what was sent...
            assert_eq!(echoed(&r), sent, "{kind:?}");
            // ...and we received exactly what it answered.
            let kind_name = r.routing_metadata["kind"].clone();
            let mut expected = rich_response(&kind_name, Decision::Allow);
            expected.routing_metadata = r.routing_metadata.clone();
            // The id travels beside the answer, and names the request.
            expected.correlation_id = Some(cid.into());
            if kind == EventKind::GuardrailInspect {
                let g = r.guardrail().expect("guardrail result in routing metadata");
                assert!(g.detected);
            }
            assert_eq!(r, expected, "{kind:?}");
            // The agent's own audit values are untouched, a `correlation_id` key included.
            assert_eq!(r.audit.custom["correlation_id"], "set by the handler");
        }
    }
    assert_eq!(handle.connections(), 2);
    assert_eq!(handle.in_flight(), 0);
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_decision_kind() {
    let (addr, _handle, _server) = start_grpc(ServerConfig::default()).await;
    let client = client(addr).await;
    let cases = [
        ("/", Decision::Allow),
        (
            "/block",
            Decision::Block {
                status: 451,
                body: Some("unavailable".into()),
                headers: Some([("retry-after".to_string(), "60".to_string())].into()),
            },
        ),
        (
            "/redirect",
            Decision::Redirect {
                url: "https://example.com/login".into(),
                status: 302,
            },
        ),
        (
            "/challenge",
            Decision::Challenge {
                challenge_type: "captcha".into(),
                params: [("site".to_string(), "k".to_string())].into(),
            },
        ),
    ];
    for (i, (uri, decision)) in cases.into_iter().enumerate() {
        let r = client
            .send(headers_event(&format!("d{i}"), uri))
            .await
            .unwrap();
        assert_eq!(r.decision, decision);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_mib_body_in_chunks_and_an_eight_mib_message() {
    let (addr, _handle, _server) = start_grpc(ServerConfig::default()).await;
    let client = client(addr).await;
    let body: Vec<u8> = (0..1024 * 1024).map(|i| (i % 251) as u8).collect();
    for chunk_size in [16 * 1024, 64 * 1024] {
        let cid = format!("body-{chunk_size}");
        let chunks: Vec<_> = body.chunks(chunk_size).collect();
        let mut sent = 0u64;
        for (i, c) in chunks.iter().enumerate() {
            sent += c.len() as u64;
            let ev = Event::RequestBodyChunk(RequestBodyChunkEvent(BodyChunk {
                correlation_id: cid.clone().into(),
                data: Bytes::copy_from_slice(c),
                is_last: i + 1 == chunks.len(),
                total_size: Some(body.len() as u64),
                chunk_index: i as u32,
                bytes_transferred: 0,
            }));
            let r = client.send(ev).await.unwrap();
            assert_eq!(r.routing_metadata["len"], c.len().to_string());
            assert_eq!(r.routing_metadata["total"], sent.to_string());
            let sum: u64 = c.iter().map(|b| u64::from(*b)).sum();
            assert_eq!(r.routing_metadata["sum"], sum.to_string());
        }
    }
    // Above tonic's 4 MiB default, below the explicit 16 MiB limit.
    let mut cfg = config();
    cfg.connection.handshake.timeout = Duration::from_secs(5);
    let big = vec![7u8; 8 * 1024 * 1024];
    let r = client
        .send(Event::RequestBodyChunk(RequestBodyChunkEvent(BodyChunk {
            correlation_id: "big".into(),
            data: Bytes::from(big),
            is_last: true,
            total_size: None,
            chunk_index: 0,
            bytes_transferred: 0,
        })))
        .await;
    // The default agent limit is 10 MiB of body: accepted.
    let r = r.unwrap();
    assert_eq!(r.routing_metadata["len"], (8 * 1024 * 1024).to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_processed_concurrently_and_answered_out_of_order() {
    let (addr, _handle, server) = start_grpc(ServerConfig::default()).await;
    let client = client(addr).await;
    let started = Instant::now();
    // 64 requests sleeping 300..0 ms on one stream: sequential handling would take ~10 s.
    let mut tasks = Vec::new();
    for i in 0..64u64 {
        let c = client.clone();
        let sleep = 300 - i * 4;
        tasks.push(tokio::spawn(async move {
            let cid = format!("p{i}");
            let r = c
                .send(headers_event(&cid, &format!("/sleep/{sleep}")))
                .await
                .unwrap();
            (cid, r, Instant::now())
        }));
    }
    let mut finished = Vec::new();
    for t in tasks {
        let (cid, r, at) = t.await.unwrap();
        assert_eq!(echoed(&r)["correlation_id"], json!(cid));
        finished.push((at, cid));
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    finished.sort();
    // Answered in the order the handlers finished, not the order sent: short sleeps (high
    // indices) first, long ones last (with slack for a loaded machine's scheduling).
    let index = |cid: &str| cid[1..].parse::<u32>().unwrap();
    assert!(index(&finished[0].1) > 32, "first: {}", finished[0].1);
    assert!(index(&finished[63].1) < 32, "last: {}", finished[63].1);
    assert_eq!(server.started.load(Ordering::SeqCst), 64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_drops_the_handler_and_sends_nothing() {
    let (addr, handle, server) = start_grpc(ServerConfig::default()).await;
    let client = client(addr).await;
    let c2 = client.clone();
    let hung = tokio::spawn(async move { c2.send(headers_event("hang", "/hang")).await });
    eventually("request reaches the handler", || handle.in_flight() == 1).await;
    client.cancel("hang", CancelReason::Manual).await;
    let r = hung.await.unwrap();
    assert!(
        matches!(r, Err(ClientError::Request(RequestError::Cancelled(_)))),
        "{r:?}"
    );
    eventually("the agent dropped the handler's future", || {
        handle.in_flight() == 0 && server.dropped.load(Ordering::SeqCst) == 1
    })
    .await;
    // The stream lives on.
    client.send(headers_event("after", "/")).await.unwrap();
    assert_eq!(client.status().in_flight(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_timeout_flow_control_and_health_are_honoured() {
    let (addr, handle, _server) = start_grpc(ServerConfig::default()).await;
    let client = client(addr).await;
    let rtt = client.ping().await.unwrap();
    assert!(rtt < Duration::from_secs(1));
    let r = client
        .send_with_timeout(
            headers_event("t", "/sleep/2000"),
            Duration::from_millis(100),
        )
        .await;
    assert!(
        r.as_ref().err().is_some_and(ClientError::is_timeout),
        "{r:?}"
    );
    handle.pause();
    eventually("paused", || client.status().is_paused()).await;
    let r = client.send(headers_event("p", "/")).await;
    assert!(
        r.as_ref().err().is_some_and(ClientError::is_flow_control),
        "{r:?}"
    );
    handle.resume();
    eventually("resumed", || !client.status().is_paused()).await;
    client.send(headers_event("p", "/")).await.unwrap();
    handle.set_health(HealthState::Degraded, Some("busy".into()));
    eventually("degraded", || {
        client.status().health() == HealthState::Degraded
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_agent_fails_pending_requests_at_once() {
    let mut agent = AgentProcess::start();
    let mut cfg = config();
    cfg.connection.request_timeout = Duration::from_secs(30);
    let client = AgentClient::connect(&agent.addr.to_string(), cfg)
        .await
        .unwrap();
    let mut pending = Vec::new();
    for i in 0..8 {
        let c = client.clone();
        pending.push(tokio::spawn(async move {
            c.send(headers_event(&format!("k{i}"), "/hang")).await
        }));
    }
    eventually("requests in flight at the agent", || {
        agent.handle.in_flight() == 8
    })
    .await;
    let killed = Instant::now();
    agent.kill();
    for p in pending {
        let r = tokio::time::timeout(Duration::from_secs(5), p)
            .await
            .expect("failed quickly, not at the 30 s deadline")
            .unwrap();
        assert!(matches!(r, Err(ClientError::Closed(_))), "{r:?}");
    }
    assert!(killed.elapsed() < Duration::from_secs(5));
    eventually("client disconnected", || !client.is_connected()).await;
    let r = client.send(headers_event("after", "/")).await;
    assert!(matches!(r, Err(ClientError::Closed(_))), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_in_flight_requests() {
    let config = ServerConfig::default().with_drain_timeout(Duration::from_secs(2));
    let (addr, handle, _server) = start_grpc(config).await;
    let client = client(addr).await;
    let c2 = client.clone();
    let pending = tokio::spawn(async move { c2.send(headers_event("long", "/sleep/300")).await });
    eventually("in flight", || handle.in_flight() == 1).await;
    handle.shutdown();
    let r = pending.await.unwrap().unwrap();
    assert_eq!(echoed(&r)["correlation_id"], "long");
    eventually("stream ended", || !client.is_connected()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_before_the_handshake_get_an_error_answer() {
    let (addr, _handle, _server) = start_grpc(ServerConfig::default()).await;
    let mut raw = raw(addr).await;
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let mut inbound = raw
        .process_stream(tonic::codegen::tokio_stream::wrappers::ReceiverStream::new(
            rx,
        ))
        .await
        .unwrap()
        .into_inner();
    tx.send(v2::ProxyToAgent::from(headers_event("early", "/")))
        .await
        .unwrap();
    let answer = inbound.message().await.unwrap().unwrap();
    let Some(v2::agent_to_proxy::Message::Response(r)) = answer.message else {
        panic!("{answer:?}")
    };
    assert_eq!(r.correlation_id, "early");
    assert!(matches!(
        r.decision,
        Some(v2::agent_response::Decision::Block(ref b)) if b.status == 500
    ));
    assert_eq!(
        r.audit.unwrap().reason_codes,
        [agent_protocol_core::agent::HANDSHAKE_REQUIRED_REASON]
    );
    // A version the agent does not speak is refused with an answer, then the stream ends.
    tx.send(v2::ProxyToAgent {
        message: Some(v2::proxy_to_agent::Message::Handshake(
            v2::HandshakeRequest {
                supported_versions: vec![1],
                proxy_id: "old".into(),
                proxy_version: "1".into(),
                config_json: String::new(),
                supported_encodings: vec![],
            },
        )),
    })
    .await
    .unwrap();
    let answer = inbound.message().await.unwrap().unwrap();
    let Some(v2::agent_to_proxy::Message::Handshake(h)) = answer.message else {
        panic!("{answer:?}")
    };
    assert!(!h.success);
    assert!(h.error.unwrap().contains("unsupported"));
    assert!(inbound.message().await.unwrap().is_none(), "stream ends");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_event_answers_every_event_type_without_a_handshake() {
    let (addr, _handle, server) = start_grpc(ServerConfig::default()).await;
    let mut raw = raw(addr).await;
    for event in every_event("unary") {
        let sent = serde_json::from_str::<Value>(&event_json(&event)).unwrap();
        let kind = event.kind();
        let answer = raw
            .process_event(v2::ProxyToAgent::from(event))
            .await
            .unwrap()
            .into_inner();
        let Some(v2::agent_to_proxy::Message::Response(r)) = answer.message else {
            panic!("{kind:?}: {answer:?}")
        };
        assert!(r.processing_time_ms.is_some());
        let (cid, r) = agent_protocol_proto::convert::response_from_proto(r).unwrap();
        assert_eq!(cid, "unary");
        assert_eq!(echoed(&r), sent, "{kind:?}");
    }
    assert_eq!(server.configured.load(Ordering::SeqCst), 1);
    // Ping and handshake work too; cancel has nothing to cancel.
    let pong = raw
        .process_event(v2::ProxyToAgent {
            message: Some(v2::proxy_to_agent::Message::Ping(v2::Ping {
                sequence: 5,
                timestamp_ms: 9,
            })),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(matches!(
        pong.message,
        Some(v2::agent_to_proxy::Message::Pong(p)) if p.sequence == 5 && p.ping_timestamp_ms == 9
    ));
    let cancel = raw
        .process_event(v2::ProxyToAgent {
            message: Some(v2::proxy_to_agent::Message::Cancel(v2::CancelRequest {
                correlation_id: "x".into(),
                ..Default::default()
            })),
        })
        .await;
    assert_eq!(cancel.unwrap_err().code(), tonic::Code::InvalidArgument);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_stream_streams_pushes_and_answers_config_updates() {
    let (addr, handle, _server) = start_grpc(ServerConfig::default()).await;
    let mut raw = raw(addr).await;
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let mut inbound = raw
        .control_stream(tonic::codegen::tokio_stream::wrappers::ReceiverStream::new(
            rx,
        ))
        .await
        .unwrap()
        .into_inner();
    tx.send(v2::AgentControl {
        message: Some(v2::agent_control::Message::ConfigUpdate(
            ConfigUpdateRequest {
                update_type: ConfigUpdateType::RequestReload,
                request_id: "u1".into(),
                timestamp_ms: 1,
            }
            .into(),
        )),
    })
    .await
    .unwrap();
    let answer = inbound.message().await.unwrap().unwrap();
    match answer.message {
        Some(v2::proxy_control::Message::ConfigResponse(r)) => {
            assert_eq!(r.request_id, "u1");
            assert!(!r.accepted);
        }
        other => panic!("{other:?}"),
    }
    handle.set_health(HealthState::Draining, None);
    let pushed = inbound.message().await.unwrap().unwrap();
    match pushed.message {
        Some(v2::proxy_control::Message::Health(h)) => {
            assert_eq!(h.state, HealthState::Draining.to_wire());
            assert_eq!(h.agent_id, "agent");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_and_malformed_endpoints_fail_cleanly() {
    // Nothing listens there (port 1 is privileged and unused on loopback).
    let mut cfg = config();
    cfg.connect_timeout = Duration::from_secs(2);
    let r = AgentClient::connect("127.0.0.1:1", cfg).await;
    assert!(matches!(r, Err(ClientError::Connect { .. })), "{r:?}");
    let r = AgentClient::connect("http://127.0.0.1:1/path", config()).await;
    assert!(matches!(r, Err(ClientError::Connect { .. })), "{r:?}");
    #[cfg(not(feature = "tls"))]
    {
        let r = AgentClient::connect("https://127.0.0.1:1", config()).await;
        let text = r.unwrap_err().to_string();
        assert!(text.contains("tls"), "{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_over_the_limit_fail_alone_and_the_stream_lives_on() {
    // An agent that takes bodies of any size: the message limit is what refuses.
    let mut config = ServerConfig::default();
    config.capabilities.limits.max_body_size = 0;
    let (addr, _handle, _server) = start_grpc(config).await;
    let client = client(addr).await;
    // A body too large for one message is refused before it is sent.
    let r = client
        .send(Event::RequestBodyChunk(RequestBodyChunkEvent(BodyChunk {
            correlation_id: "too-big".into(),
            data: Bytes::from(vec![0u8; 17 << 20]),
            is_last: true,
            total_size: None,
            chunk_index: 0,
            bytes_transferred: 0,
        })))
        .await;
    assert!(
        matches!(
            r,
            Err(ClientError::Rejected(SubmitError::Encode(
                agent_protocol_core::EncodeError::TooLarge(_)
            )))
        ),
        "{r:?}"
    );
    // An answer too large for one message becomes a block for that request alone.
    let r = client.send(headers_event("huge", "/huge")).await.unwrap();
    assert_eq!(r.decision.kind(), "block");
    assert_eq!(
        r.audit.reason_codes,
        [agent_protocol_tokio::grpc::server::RESPONSE_TOO_LARGE_REASON]
    );
    client.send(headers_event("after", "/")).await.unwrap();
}
