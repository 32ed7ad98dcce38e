//! The gRPC transport against hostile peers, over real loopback TCP.
//!
//! A hostile proxy here is a raw tonic client of the generated `AgentServiceV2` stubs, sending
//! exactly the messages an attacker would. Every test holds [`SERIAL`]: the memory test measures this process's RSS,
//! which the 17 MiB messages of the other tests would disturb.
#![cfg(feature = "grpc")]

mod grpc_support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agent_protocol_core::agent::MALFORMED_EVENT_REASON;
use agent_protocol_core::*;
use agent_protocol_proto::v2::agent_service_v2_client::AgentServiceV2Client;
use agent_protocol_proto::v2::{self, AgentToProxy, ProxyToAgent};
use agent_protocol_proto::MAX_MESSAGE_SIZE;
use agent_protocol_tokio::client::{AgentClient, ClientConfig};
use agent_protocol_tokio::server::ServerConfig;
use bytes::Bytes;
use grpc_support::*;
use tokio::sync::mpsc;
use tonic::codegen::tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Streaming};

/// One test at a time in this binary (see the module docs).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// What a hostile proxy may send: well past our own 16 MiB limit.
const ATTACKER_LIMIT: usize = 64 << 20;

async fn raw(addr: SocketAddr) -> AgentServiceV2Client<tonic::transport::Channel> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    AgentServiceV2Client::new(channel)
        .max_decoding_message_size(ATTACKER_LIMIT)
        .max_encoding_message_size(ATTACKER_LIMIT)
}

fn handshake() -> ProxyToAgent {
    ProxyToAgent {
        message: Some(v2::proxy_to_agent::Message::Handshake(
            v2::HandshakeRequest {
                supported_versions: vec![2],
                proxy_id: "raw".into(),
                proxy_version: "1".into(),
                config_json: String::new(),
                supported_encodings: vec![],
            },
        )),
    }
}

fn ping(sequence: u64) -> ProxyToAgent {
    ProxyToAgent {
        message: Some(v2::proxy_to_agent::Message::Ping(v2::Ping {
            sequence,
            timestamp_ms: 1,
        })),
    }
}

/// A `ProcessStream` past its handshake: the request side and the answers.
async fn open_stream(
    raw: &mut AgentServiceV2Client<tonic::transport::Channel>,
) -> (mpsc::Sender<ProxyToAgent>, Streaming<AgentToProxy>) {
    let (tx, rx) = mpsc::channel(64);
    tx.send(handshake()).await.unwrap();
    let mut inbound = raw
        .process_stream(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let answer = inbound.message().await.unwrap().unwrap();
    assert!(
        matches!(answer.message, Some(v2::agent_to_proxy::Message::Handshake(ref h)) if h.success),
        "{answer:?}"
    );
    (tx, inbound)
}

fn response(message: AgentToProxy) -> v2::AgentResponse {
    match message.message {
        Some(v2::agent_to_proxy::Message::Response(r)) => r,
        other => panic!("expected a response, got {other:?}"),
    }
}

fn assert_malformed_block(r: &v2::AgentResponse, what: &str) {
    assert!(
        matches!(r.decision, Some(v2::agent_response::Decision::Block(ref b)) if b.status == 500),
        "{what}: {r:?}"
    );
    assert_eq!(
        r.audit.as_ref().map(|a| a.reason_codes.clone()),
        Some(vec![MALFORMED_EVENT_REASON.to_owned()]),
        "{what}"
    );
}

/// This process's resident set, in bytes.
fn rss() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: usize = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

const MIB: f64 = 1024.0 * 1024.0;

// ----- 1. backpressure on ProcessStream -------------------------------------------------------

/// A proxy that sends 100,000 events and never reads the answers: the agent must stop reading
/// its stream once a bounded number of answers wait (so the proxy's sends block), resume as the
/// proxy reads, serve other streams meanwhile, and free everything when the call is cancelled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unread_process_stream_is_pushed_back_and_released_when_cancelled() {
    const EVENTS: usize = 100_000;
    let _serial = SERIAL.lock().await;
    let (addr, handle, agent) = start_grpc(ServerConfig::default()).await;
    let good = AgentClient::connect(&addr.to_string(), ClientConfig::default())
        .await
        .unwrap();
    good.send(headers_event("warm-up", "/")).await.unwrap();
    let mut raw = raw(addr).await;
    let (tx, mut inbound) = open_stream(&mut raw).await;
    let before = rss();

    let sent = Arc::new(AtomicUsize::new(0));
    let producer = tokio::spawn({
        let sent = sent.clone();
        async move {
            for i in 0..EVENTS {
                let event = ProxyToAgent::from(headers_event(&format!("flood-{i}"), "/"));
                if tx.send(event).await.is_err() {
                    break;
                }
                sent.fetch_add(1, Ordering::Relaxed);
            }
            // Kept open: the request stream ends only when the test cancels the call.
            std::future::pending::<()>().await;
        }
    });
    // Until every event is sent or the sender has made no progress for a second.
    let started = Instant::now();
    let mut last = usize::MAX;
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = sent.load(Ordering::Relaxed);
        if now == EVENTS || now == last || started.elapsed() > Duration::from_secs(120) {
            break;
        }
        last = now;
    }
    let stalled_at = sent.load(Ordering::Relaxed);
    let grown = rss().saturating_sub(before);
    eprintln!(
        "unread stream: {stalled_at} of {EVENTS} events sent, {} handled, RSS +{:.1} MiB",
        agent.started.load(Ordering::SeqCst),
        grown as f64 / MIB
    );
    assert!(
        stalled_at < EVENTS / 2,
        "no push-back: the agent read {stalled_at} events whose answers nobody reads"
    );
    assert!(
        grown < 48 << 20,
        "the agent grew by {:.1} MiB for answers nobody reads",
        grown as f64 / MIB
    );

    // Another stream on the same server is served meanwhile.
    for i in 0..20 {
        let r = good
            .send(headers_event(&format!("good-{i}"), "/"))
            .await
            .unwrap();
        assert_eq!(r.decision, Decision::Allow);
    }

    // Reading answers lets the agent read more events.
    for _ in 0..2_000 {
        response(inbound.message().await.unwrap().unwrap());
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while sent.load(Ordering::Relaxed) <= stalled_at {
        assert!(Instant::now() < deadline, "the agent never resumed reading");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Cancelling the call ends the stream's task: its queue and its handlers are dropped.
    assert_eq!(handle.connections(), 2);
    producer.abort();
    let _ = producer.await;
    drop(inbound);
    eventually("the cancelled stream's task ended", || {
        handle.connections() == 1 && handle.in_flight() == 0
    })
    .await;
    eprintln!(
        "after cancel: RSS +{:.1} MiB over the start",
        rss().saturating_sub(before) as f64 / MIB
    );
    good.send(headers_event("after", "/")).await.unwrap();
}

// ----- 2. oversized messages ------------------------------------------------------------------

fn chunk(cid: &str, len: usize) -> ProxyToAgent {
    ProxyToAgent::from(Event::RequestBodyChunk(RequestBodyChunkEvent(BodyChunk {
        correlation_id: cid.into(),
        data: Bytes::from(vec![b'a'; len]),
        is_last: true,
        total_size: None,
        chunk_index: 0,
        bytes_transferred: 0,
    })))
}

/// A message over the limit cannot be skipped (the stream's framing is lost with it): the
/// stream ends, with a status that says why rather than OK.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_message_ends_the_stream_with_resource_exhausted() {
    let _serial = SERIAL.lock().await;
    let (addr, _handle, _agent) = start_grpc(ServerConfig::default()).await;
    let mut raw = raw(addr).await;
    let (tx, mut inbound) = open_stream(&mut raw).await;
    tx.send(chunk("small", 1024)).await.unwrap();
    response(inbound.message().await.unwrap().unwrap());
    tx.send(chunk("huge", MAX_MESSAGE_SIZE + 1)).await.unwrap();
    let end = tokio::time::timeout(Duration::from_secs(20), inbound.message())
        .await
        .expect("the stream ended");
    let status = end.expect_err("the stream ends with an error status, not OK");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains(&MAX_MESSAGE_SIZE.to_string()),
        "names the limit: {status:?}"
    );
}

// ----- 3. Configure answers -------------------------------------------------------------------

fn configure(cid: &str) -> ProxyToAgent {
    ProxyToAgent {
        message: Some(v2::proxy_to_agent::Message::Configure(v2::ConfigureEvent {
            config_json: r#"{"mode":"block"}"#.into(),
            config_version: Some("v1".into()),
            is_initial: true,
            timestamp_ms: 1,
            correlation_id: cid.into(),
        })),
    }
}

/// The reference schema's Configure carries no correlation id and the reference proxy sends it
/// without waiting for an answer: the agent applies it and answers nothing (an answer with an
/// empty id is "for an unknown correlation id" there). With our extension id it is answered
/// under that id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configure_is_answered_under_its_id_or_not_at_all() {
    let _serial = SERIAL.lock().await;
    let (addr, _handle, agent) = start_grpc(ServerConfig::default()).await;
    let mut raw = raw(addr).await;
    let (tx, mut inbound) = open_stream(&mut raw).await;
    tx.send(configure("")).await.unwrap();
    eventually("the handler saw the configuration", || {
        agent.configured.load(Ordering::SeqCst) == 1
    })
    .await;
    tx.send(ping(7)).await.unwrap();
    let next = inbound.message().await.unwrap().unwrap();
    assert!(
        matches!(next.message, Some(v2::agent_to_proxy::Message::Pong(ref p)) if p.sequence == 7),
        "nothing answers an id-less Configure: {next:?}"
    );
    tx.send(configure("cfg-1")).await.unwrap();
    let r = response(inbound.message().await.unwrap().unwrap());
    assert_eq!(r.correlation_id, "cfg-1");
    assert_eq!(agent.configured.load(Ordering::SeqCst), 2);

    // Unary: the call itself carries the answer, so an id-less Configure is applied and
    // answered; one with an id is answered under it.
    let r = response(raw.process_event(configure("")).await.unwrap().into_inner());
    assert!(
        matches!(r.decision, Some(v2::agent_response::Decision::Allow(_))),
        "{r:?}"
    );
    let r = response(
        raw.process_event(configure("cfg-2"))
            .await
            .unwrap()
            .into_inner(),
    );
    assert_eq!(r.correlation_id, "cfg-2");
    assert_eq!(agent.configured.load(Ordering::SeqCst), 4);
}

// ----- 4. empty correlation ids ---------------------------------------------------------------

/// Every event kind but Configure, with an empty correlation id.
fn uncorrelated_events() -> Vec<Event> {
    every_event("")
        .into_iter()
        .filter(|e| e.kind() != EventKind::Configure)
        .collect()
}

/// On ProcessStream an event without a correlation id is answered with a block and never
/// reaches the handler.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_uncorrelated_event_on_process_stream_is_blocked_not_handled() {
    let _serial = SERIAL.lock().await;
    let (addr, _handle, agent) = start_grpc(ServerConfig::default()).await;
    let mut raw = raw(addr).await;
    let (tx, mut inbound) = open_stream(&mut raw).await;
    for event in uncorrelated_events() {
        let kind = event.kind();
        tx.send(ProxyToAgent::from(event)).await.unwrap();
        let r = response(inbound.message().await.unwrap().unwrap());
        assert_malformed_block(&r, &format!("{kind:?}"));
    }
    assert_eq!(agent.started.load(Ordering::SeqCst), 0);
    // The stream lives on for correlated events.
    tx.send(ProxyToAgent::from(headers_event("ok", "/")))
        .await
        .unwrap();
    let r = response(inbound.message().await.unwrap().unwrap());
    assert_eq!(r.correlation_id, "ok");
    assert!(matches!(
        r.decision,
        Some(v2::agent_response::Decision::Allow(_))
    ));
}

/// On unary ProcessEvent alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_uncorrelated_event_on_process_event_is_blocked_not_handled() {
    let _serial = SERIAL.lock().await;
    let (addr, _handle, agent) = start_grpc(ServerConfig::default()).await;
    let mut raw = raw(addr).await;
    for event in uncorrelated_events() {
        let kind = event.kind();
        let r = raw
            .process_event(ProxyToAgent::from(event))
            .await
            .unwrap()
            .into_inner();
        assert_malformed_block(&response(r), &format!("{kind:?}"));
    }
    assert_eq!(agent.started.load(Ordering::SeqCst), 0);
}

// ----- 5. a pipelining proxy (agent side) -----------------------------------------------------

/// A proxy pipelining without pause cannot keep the agent from noticing a shutdown: it is told
/// the agent is draining.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipelining_proxy_still_sees_the_agent_drain() {
    let _serial = SERIAL.lock().await;
    let config = ServerConfig {
        drain_timeout: Duration::from_secs(2),
        ..ServerConfig::default()
    };
    let (addr, handle, _agent) = start_grpc(config).await;
    let mut raw = raw(addr).await;
    let (tx, mut inbound) = open_stream(&mut raw).await;
    let producer = tokio::spawn(async move {
        for n in 0u64.. {
            if tx.send(ping(n)).await.is_err() {
                return;
            }
        }
    });
    // Pongs flow while the proxy pipelines.
    for _ in 0..1000 {
        let m = inbound.message().await.unwrap().unwrap();
        assert!(matches!(
            m.message,
            Some(v2::agent_to_proxy::Message::Pong(_))
        ));
    }
    handle.shutdown();
    let seen = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match inbound.message().await {
                Ok(Some(AgentToProxy {
                    message: Some(v2::agent_to_proxy::Message::Health(h)),
                })) => break h.state == HealthState::Draining.to_wire(),
                Ok(Some(_)) => continue,
                _ => break false,
            }
        }
    })
    .await;
    producer.abort();
    assert_eq!(seen, Ok(true), "the draining notice never came");
}
