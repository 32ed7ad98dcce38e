//! The gRPC transport against hostile peers, over real loopback TCP.
//!
//! A hostile proxy here is a raw tonic client of the generated `AgentServiceV2` stubs, sending
//! exactly the messages an attacker would; a hostile agent is a tonic server implementing the
//! service in the test. Every test holds [`SERIAL`]: the memory test measures this process's RSS,
//! which the 17 MiB messages of the other tests would disturb.
#![cfg(feature = "grpc")]

mod grpc_support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agent_protocol_core::agent::MALFORMED_EVENT_REASON;
use agent_protocol_core::handshake::HandshakeResponse;
use agent_protocol_core::*;
use agent_protocol_proto::convert;
use agent_protocol_proto::v2::agent_service_v2_client::AgentServiceV2Client;
use agent_protocol_proto::v2::agent_service_v2_server::{AgentServiceV2, AgentServiceV2Server};
use agent_protocol_proto::v2::{self, AgentControl, AgentToProxy, ProxyControl, ProxyToAgent};
use agent_protocol_proto::MAX_MESSAGE_SIZE;
use agent_protocol_tokio::client::{AgentClient, ClientConfig, ClientError};
use agent_protocol_tokio::server::ServerConfig;
use bytes::Bytes;
use grpc_support::*;
use tokio::sync::mpsc;
use tonic::codegen::tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::TcpIncoming;
use tonic::{Code, Request, Response, Status, Streaming};

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

/// The stream still answers a good event, with an allow.
async fn assert_still_allows(
    tx: &mpsc::Sender<ProxyToAgent>,
    inbound: &mut Streaming<AgentToProxy>,
) {
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
    assert_still_allows(&tx, &mut inbound).await;
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

/// Header text that is not UTF-8 (the schema says `string`; an attacker can send any bytes): on
/// ProcessStream and on ProcessEvent the event is answered with the malformed block under its
/// own correlation id, never reaches the handler, and the stream goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_utf8_header_text_is_blocked_under_its_id_not_handled() {
    let _serial = SERIAL.lock().await;
    let (addr, _handle, agent) = start_grpc(ServerConfig::default()).await;
    let mut raw = raw(addr).await;
    let hostile = |cid: &str| {
        let mut message = ProxyToAgent::from(headers_event(cid, "/"));
        let Some(v2::proxy_to_agent::Message::RequestHeaders(e)) = &mut message.message else {
            unreachable!()
        };
        e.headers.push(v2::RawHeader {
            name: Bytes::from_static(b"x-evil"),
            value: Bytes::from_static(b"caf\xe9"),
        });
        message
    };
    let (tx, mut inbound) = open_stream(&mut raw).await;
    tx.send(hostile("latin-1")).await.unwrap();
    let r = response(inbound.message().await.unwrap().unwrap());
    assert_eq!(r.correlation_id, "latin-1");
    assert_malformed_block(&r, "non-UTF-8 header on ProcessStream");
    let r = raw
        .process_event(hostile("latin-1-unary"))
        .await
        .unwrap()
        .into_inner();
    let r = response(r);
    assert_eq!(r.correlation_id, "latin-1-unary");
    assert_malformed_block(&r, "non-UTF-8 header on ProcessEvent");
    assert_eq!(agent.started.load(Ordering::SeqCst), 0);
    assert_still_allows(&tx, &mut inbound).await;
}

// ----- 5. a pipelining proxy (agent side) -----------------------------------------------------

/// A proxy pipelining without pause cannot keep the agent from noticing a shutdown: it is told
/// the agent is draining.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipelining_proxy_still_sees_the_agent_drain() {
    let _serial = SERIAL.lock().await;
    let config = ServerConfig::default().with_drain_timeout(Duration::from_secs(2));
    let (addr, handle, _agent) = start_grpc(config).await;
    let mut raw = raw(addr).await;
    let (tx, mut inbound) = open_stream(&mut raw).await;
    // A request that never finishes keeps the drain going for its whole timeout. Without one the
    // drain ends at once, and closing a connection the proxy is still writing to can make TCP
    // reset it, dropping the notice before the proxy reads it: that would be the transport's
    // doing, not the drain's.
    tx.send(ProxyToAgent::from(headers_event("held", "/hang")))
        .await
        .unwrap();
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

// ----- the proxy side against a hostile agent: oversized answers (2), floods (5) --------------

/// The hostile agent's behaviour.
#[derive(Clone, Copy)]
enum Hostile {
    /// After the handshake, floods health reports, pongs nobody asked for and answers for
    /// unknown ids, and never answers a request.
    Flood,
    /// Answers every event with a message over the 16 MiB limit.
    Oversized,
}

struct HostileAgent(Hostile);

#[tonic::async_trait]
impl AgentServiceV2 for HostileAgent {
    type ProcessStreamStream = ReceiverStream<Result<AgentToProxy, Status>>;

    async fn process_stream(
        &self,
        request: Request<Streaming<ProxyToAgent>>,
    ) -> Result<Response<Self::ProcessStreamStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(64);
        let mode = self.0;
        tokio::spawn(async move {
            while let Ok(Some(message)) = inbound.message().await {
                let Some(message) = message.message else {
                    continue;
                };
                let answer = match message {
                    v2::proxy_to_agent::Message::Handshake(_) => {
                        let caps = Capabilities::new("hostile", "hostile", "1")
                            .with_all_events()
                            .with_max_concurrency(100);
                        let hs = HandshakeResponse {
                            protocol_version: 2,
                            capabilities: caps,
                            success: true,
                            error: None,
                            encoding: "json".into(),
                        };
                        let hs = AgentToProxy {
                            message: Some(v2::agent_to_proxy::Message::Handshake(hs.into())),
                        };
                        if tx.send(Ok(hs)).await.is_err() {
                            return;
                        }
                        if let Hostile::Flood = mode {
                            for _ in 0..FLOODERS {
                                tokio::spawn(flood(tx.clone()));
                            }
                        }
                        continue;
                    }
                    v2::proxy_to_agent::Message::Ping(_)
                    | v2::proxy_to_agent::Message::Cancel(_) => continue,
                    event => {
                        let Ok(event) = convert::event_from_proto(event) else {
                            continue;
                        };
                        match mode {
                            Hostile::Flood => continue,
                            Hostile::Oversized => {
                                let r = AgentResponse::block(403, "x".repeat(MAX_MESSAGE_SIZE));
                                convert::response_to_proto(event.correlation_id().to_owned(), r)
                            }
                        }
                    }
                };
                let answer = AgentToProxy {
                    message: Some(v2::agent_to_proxy::Message::Response(answer)),
                };
                if tx.send(Ok(answer)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    type ControlStreamStream = ReceiverStream<Result<ProxyControl, Status>>;

    async fn control_stream(
        &self,
        _request: Request<Streaming<AgentControl>>,
    ) -> Result<Response<Self::ControlStreamStream>, Status> {
        Err(Status::unimplemented("hostile"))
    }

    async fn process_event(
        &self,
        _request: Request<ProxyToAgent>,
    ) -> Result<Response<AgentToProxy>, Status> {
        Err(Status::unimplemented("hostile"))
    }
}

/// Tasks flooding one stream, so the proxy always has another message to read.
const FLOODERS: usize = 4;

/// Small valid messages as fast as the proxy takes them (many to each HTTP/2 frame, so the proxy
/// always has the next one at hand), never an answer to a pending request.
async fn flood(tx: mpsc::Sender<Result<AgentToProxy, Status>>) {
    use v2::agent_to_proxy::Message as M;
    let health = M::Health(
        HealthStatus {
            agent_id: "hostile".into(),
            state: HealthState::Healthy,
            message: None,
            timestamp_ms: 1,
        }
        .into(),
    );
    let pong = M::Pong(v2::Pong {
        sequence: 1_000_000,
        ping_timestamp_ms: 1,
        timestamp_ms: 2,
    });
    let unknown = M::Response(convert::response_to_proto(
        "nobody".into(),
        AgentResponse::allow(),
    ));
    for message in [health, pong, unknown].into_iter().cycle() {
        let message = AgentToProxy {
            message: Some(message),
        };
        if tx.send(Ok(message)).await.is_err() {
            return;
        }
    }
}

/// A hostile agent on a runtime (and OS thread) of its own, so it keeps producing however busy
/// the proxy's runtime is. The runtime lives as long as the test process.
fn start_hostile(mode: Hostile) -> SocketAddr {
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            addr_tx.send(listener.local_addr().unwrap()).unwrap();
            let service = AgentServiceV2Server::new(HostileAgent(mode))
                .max_decoding_message_size(ATTACKER_LIMIT)
                .max_encoding_message_size(ATTACKER_LIMIT);
            let _ = tonic::transport::Server::builder()
                .serve_with_incoming(service, TcpIncoming::from(listener))
                .await;
        });
    });
    addr_rx.recv().unwrap()
}

/// An answer over the limit fails the proxy's requests at once, with an error naming the limit
/// (not at their deadline).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_answer_fails_the_request_with_an_error_naming_the_limit() {
    let _serial = SERIAL.lock().await;
    let addr = start_hostile(Hostile::Oversized);
    let mut config = ClientConfig::default();
    config.connection.request_timeout = Duration::from_secs(30);
    let client = AgentClient::connect(&addr.to_string(), config)
        .await
        .unwrap();
    let started = Instant::now();
    let r = tokio::time::timeout(
        Duration::from_secs(20),
        client.send(headers_event("big", "/")),
    )
    .await
    .expect("failed before its 30 s deadline");
    let e = r.expect_err("an answer over the limit is not delivered");
    eprintln!("oversized answer: {e} after {:?}", started.elapsed());
    assert!(matches!(e, ClientError::Closed(_)), "{e:?}");
    assert!(
        e.to_string().contains(&MAX_MESSAGE_SIZE.to_string()),
        "names the limit: {e}"
    );
}

/// An agent flooding valid messages cannot keep a request pending past its deadline, nor keep
/// it from being sent: each request is sent (so it fails with a request timeout, not a queue
/// timeout) and fails within a generous bound of its 500 ms timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_agent_cannot_hold_a_request_past_its_timeout() {
    let _serial = SERIAL.lock().await;
    let addr = start_hostile(Hostile::Flood);
    let client = AgentClient::connect(&addr.to_string(), ClientConfig::default())
        .await
        .unwrap();
    for i in 0..8 {
        let started = Instant::now();
        let r = tokio::time::timeout(
            Duration::from_secs(10),
            client.send_with_timeout(
                headers_event(&format!("starved-{i}"), "/"),
                Duration::from_millis(500),
            ),
        )
        .await;
        let elapsed = started.elapsed();
        eprintln!("flooded: {r:?} after {elapsed:?}");
        let r = r.expect("the request outlived its 500 ms timeout by 10 s");
        assert!(
            matches!(r, Err(ClientError::Request(RequestError::Timeout(_)))),
            "sent to the agent and timed out there: {r:?}"
        );
        assert!(
            elapsed < Duration::from_secs(3),
            "timed out only after {elapsed:?}"
        );
    }
}
