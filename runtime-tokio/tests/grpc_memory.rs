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
use agent_protocol_tokio::server::{AgentHandler, AgentServer, ServerConfig, ServerHandle};
use bytes::Bytes;
use tokio::sync::{mpsc, watch};
use tonic::codegen::tokio_stream::wrappers::ReceiverStream;

/// Body bytes of each event.
const CHUNK: usize = 1024 * 1024;

/// About three times what the bound lets handlers hold.
const EVENTS: usize = 3 * MAX_IN_FLIGHT_BYTES / CHUNK + 8;

/// Hang guard.
const WAIT: Duration = Duration::from_secs(60);

/// One test at a time in this binary: each measures this process's RSS.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

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
    let _serial = SERIAL.lock().await;
    let held = Arc::new(AtomicUsize::new(0));
    let (release, release_rx) = watch::channel(false);
    let (handle, tx, mut inbound) = serve_and_open(HoldingAgent {
        held: held.clone(),
        release: release_rx,
    })
    .await;
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

/// Holds the body chunks whose correlation id starts with `held-` until `release` turns true;
/// answers every other one at once.
struct HoldingSmall {
    held: Arc<AtomicUsize>,
    release: watch::Receiver<bool>,
}

impl AgentHandler for HoldingSmall {
    async fn on_request_body_chunk(&self, event: RequestBodyChunkEvent) -> AgentResponse {
        if event.0.correlation_id.starts_with("held-") {
            self.held.fetch_add(1, Ordering::SeqCst);
            let mut release = self.release.clone();
            let _ = release.wait_for(|go| *go).await;
        }
        drop(event);
        AgentResponse::allow()
    }
}

/// A proxy that follows each large message with a one-byte chunk held by the handler: were the
/// small chunk's bytes a slice of the message buffer the large one was read into, each would
/// keep megabytes alive while weighing one byte. Held small events must cost about their own
/// size, whatever was received around them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_held_events_do_not_keep_large_receive_buffers_alive() {
    const BIG: usize = 8 << 20;
    const CYCLES: usize = 20;
    let _serial = SERIAL.lock().await;
    let held = Arc::new(AtomicUsize::new(0));
    let (release, release_rx) = watch::channel(false);
    let (_handle, tx, mut inbound) = serve_and_open(HoldingSmall {
        held: held.clone(),
        release: release_rx,
    })
    .await;
    // The first cycles settle what the transports keep (a large message's buffers on the
    // client and server side, in this one process); the later ones must add nothing like a
    // buffer per held chunk.
    big_then_small(&tx, &mut inbound, &held, 0..5, BIG).await;
    let settled = rss();
    big_then_small(&tx, &mut inbound, &held, 5..5 + CYCLES, BIG).await;
    let grown = rss().saturating_sub(settled);
    eprintln!(
        "{CYCLES} more one-byte chunks held, each after an {} MiB message: RSS +{} MiB",
        BIG >> 20,
        grown >> 20
    );
    let bound = 2 * BIG;
    assert!(
        grown < bound,
        "RSS grew by {} MiB holding {CYCLES} more one-byte chunks (bound {} MiB)",
        grown >> 20,
        bound >> 20
    );
    release.send(true).unwrap();
    for _ in 0..5 + CYCLES {
        inbound.message().await.unwrap().unwrap();
    }
}

/// For each `i` in `cycles`: a `big`-byte body chunk `big-i`, waited for, then a one-byte chunk
/// `held-i`; returns once the handler holds every `held-` chunk so far.
async fn big_then_small(
    tx: &mpsc::Sender<ProxyToAgent>,
    inbound: &mut tonic::Streaming<AgentToProxy>,
    held: &AtomicUsize,
    cycles: std::ops::Range<usize>,
    big: usize,
) {
    let body = |cid: String, len: usize| {
        ProxyToAgent::from(Event::RequestBodyChunk(RequestBodyChunkEvent(BodyChunk {
            correlation_id: cid.into(),
            data: Bytes::from(vec![b'a'; len]),
            ..Default::default()
        })))
    };
    let end = cycles.end;
    for i in cycles {
        tx.send(body(format!("big-{i}"), big)).await.unwrap();
        // Answered before the next cycle, so only the small ones are held.
        let answer = inbound.message().await.unwrap().unwrap();
        assert!(matches!(
            answer.message,
            Some(v2::agent_to_proxy::Message::Response(_))
        ));
        tx.send(body(format!("held-{i}"), 1)).await.unwrap();
    }
    let deadline = Instant::now() + WAIT;
    while held.load(Ordering::SeqCst) < end {
        assert!(
            Instant::now() < deadline,
            "the small chunks never reached the handler"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Serves `handler` over gRPC on a loopback port and opens a raw `ProcessStream` to it, past
/// the handshake. The request side holds one message at a time: the test itself keeps at most
/// a couple of events in memory.
async fn serve_and_open<H: AgentHandler>(
    handler: H,
) -> (
    ServerHandle,
    mpsc::Sender<ProxyToAgent>,
    tonic::Streaming<AgentToProxy>,
) {
    let server = AgentServer::new(handler, ServerConfig::default());
    let handle = server.handle();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { server.serve_grpc(listener).await });
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut raw = AgentServiceV2Client::new(channel).max_encoding_message_size(16 << 20);
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
    (handle, tx, inbound)
}
