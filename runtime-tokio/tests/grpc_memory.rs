//! Events held by slow handlers on a gRPC `ProcessStream` are bounded by bytes, as on UDS.
//!
//! A raw tonic client (the generated stubs, sending exactly what an attacker would) sends many
//! 1 MiB body chunks to a handler that holds each event until the test releases it. The stream
//! stops reading once the held events weigh more than [`MAX_IN_FLIGHT_BYTES`], so HTTP/2 flow
//! control blocks the sender, and the agent grows by about the bound rather than by everything
//! sent; released, every event is answered.
#![cfg(feature = "grpc")]

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agent_protocol_core::*;
use agent_protocol_driver::server::MAX_IN_FLIGHT_BYTES;
use agent_protocol_proto::v2::agent_service_v2_client::AgentServiceV2Client;
use agent_protocol_proto::v2::{self, AgentToProxy, ProxyToAgent};
use agent_protocol_tokio::grpc::ServeGrpc;
use agent_protocol_tokio::server::{AgentHandler, AgentServer, ServerConfig};
use bytes::Bytes;
use tokio::sync::{mpsc, watch};
use tonic::codegen::tokio_stream::wrappers::ReceiverStream;

/// Body bytes of each event.
const CHUNK: usize = 1024 * 1024;

/// About three times what the bound lets handlers hold.
const EVENTS: usize = 3 * MAX_IN_FLIGHT_BYTES / CHUNK + 8;

/// Hang guard.
const WAIT: Duration = Duration::from_secs(60);

/// Holds every body chunk until `release` turns true, then allows it.
struct HoldingAgent {
    held: Arc<AtomicUsize>,
    release: watch::Receiver<bool>,
}

impl AgentHandler for HoldingAgent {
    async fn on_request_body_chunk(&self, event: RequestBodyChunkEvent) -> AgentResponse {
        self.held.fetch_add(1, Ordering::SeqCst);
        let mut release = self.release.clone();
        let _ = release.wait_for(|go| *go).await;
        drop(event);
        AgentResponse::allow()
    }
}

/// This process's resident set, in bytes, after handing freed heap back to the system.
fn rss() -> usize {
    // SAFETY: malloc_trim only releases free memory.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    unsafe {
        extern "C" {
            fn malloc_trim(pad: usize) -> i32;
        }
        malloc_trim(0);
    }
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: usize = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

fn chunk(i: usize) -> ProxyToAgent {
    ProxyToAgent::from(Event::RequestBodyChunk(RequestBodyChunkEvent(BodyChunk {
        correlation_id: format!("held-{i}").into(),
        data: Bytes::from(vec![b'a'; CHUNK]),
        ..Default::default()
    })))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_events_held_by_handlers_stop_the_stream_reading() {
    let held = Arc::new(AtomicUsize::new(0));
    let (release, release_rx) = watch::channel(false);
    let server = AgentServer::new(
        HoldingAgent {
            held: held.clone(),
            release: release_rx,
        },
        ServerConfig::default(),
    );
    let handle = server.handle();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { server.serve_grpc(listener).await });

    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut raw = AgentServiceV2Client::new(channel);
    // Capacity 1: the test itself keeps at most a couple of events in memory.
    let (tx, rx) = mpsc::channel(1);
    tx.send(ProxyToAgent {
        message: Some(v2::proxy_to_agent::Message::Handshake(
            v2::HandshakeRequest {
                supported_versions: vec![2],
                proxy_id: "raw".into(),
                proxy_version: "1".into(),
                config_json: String::new(),
                supported_encodings: vec![],
            },
        )),
    })
    .await
    .unwrap();
    let mut inbound = raw
        .process_stream(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let answer = inbound.message().await.unwrap().unwrap();
    assert!(
        matches!(answer.message, Some(v2::agent_to_proxy::Message::Handshake(ref h)) if h.success)
    );
    let before = rss();

    let sent = Arc::new(AtomicUsize::new(0));
    let producer = tokio::spawn({
        let sent = sent.clone();
        async move {
            for i in 0..EVENTS {
                tx.send(chunk(i)).await.unwrap();
                sent.fetch_add(1, Ordering::SeqCst);
            }
            tx
        }
    });
    // Until the handler has seen no new event for a second, or every event was sent.
    let started = Instant::now();
    let mut last = (held.load(Ordering::SeqCst), Instant::now());
    while last.1.elapsed() < Duration::from_secs(1) && !producer.is_finished() {
        assert!(started.elapsed() < WAIT, "events kept arriving");
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = held.load(Ordering::SeqCst);
        if now != last.0 {
            last = (now, Instant::now());
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let grown = rss().saturating_sub(before);
    let held_now = held.load(Ordering::SeqCst);
    eprintln!(
        "{EVENTS} events of {CHUNK} body bytes: {} sent, handler holds {held_now}, RSS +{} MiB",
        sent.load(Ordering::SeqCst),
        grown >> 20
    );
    assert!(
        !producer.is_finished() && held_now < EVENTS,
        "the stream kept reading: the handler holds {held_now} events"
    );
    // Each event weighs a little more than its body; one message past the bound is taken.
    assert!(
        held_now * CHUNK <= MAX_IN_FLIGHT_BYTES + CHUNK,
        "the handler holds {held_now} events of {CHUNK} bytes (bound {MAX_IN_FLIGHT_BYTES})"
    );
    // The held events, plus what HTTP/2 and tonic buffer (windows of a few MiB) and slack.
    let bound = MAX_IN_FLIGHT_BYTES + (32 << 20);
    assert!(
        grown < bound,
        "RSS grew by {} MiB (bound {} MiB)",
        grown >> 20,
        bound >> 20
    );

    release.send(true).unwrap();
    let mut answered = HashSet::new();
    let deadline = Instant::now() + WAIT;
    while answered.len() < EVENTS {
        assert!(
            Instant::now() < deadline,
            "only {} answered",
            answered.len()
        );
        let message: AgentToProxy = inbound.message().await.unwrap().unwrap();
        if let Some(v2::agent_to_proxy::Message::Response(r)) = message.message {
            assert!(answered.insert(r.correlation_id.clone()), "answered twice");
        }
    }
    assert!((0..EVENTS).all(|i| answered.contains(&format!("held-{i}"))));
    let tx = producer.await.unwrap();
    drop(tx);
    drop(inbound);
    let deadline = Instant::now() + WAIT;
    while handle.in_flight() != 0 || handle.connections() != 0 {
        assert!(Instant::now() < deadline, "the stream's task never ended");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
