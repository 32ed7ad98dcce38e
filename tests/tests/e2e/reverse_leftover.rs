//! Bytes that arrive together with a handshake or registration answer are the next stage's
//! first input, never lost, on both runtime adapters.
//!
//! A raw peer on a blocking socket writes, in ONE write, the answer, a whole event (or control
//! frame) and the first `n` bytes of a second one, then the rest, for every `n` from 0 to the
//! second frame's length (a fresh connection each time), and checks that both were handled:
//! - a reverse-connection agent (`ReverseConnector`) behind a raw proxy that sends the
//!   registration answer and two events, over a Unix socket and over TCP: both answered;
//! - an `AgentServer` (Unix socket and TCP) behind a raw proxy that sends the handshake request
//!   and two events: both answered;
//! - an `AgentClient` behind a raw agent that sends the handshake answer and two health
//!   reports: the second report is seen and a request still gets its answer.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agent_protocol_core::frame::FrameType;
use agent_protocol_core::handshake::{AgentHandshake, AgentHandshakeConfig};
use agent_protocol_core::pool::Backoff;
use agent_protocol_core::registration::RegistrationResponse;
use agent_protocol_core::{
    AgentResponse, Capabilities, Decision, Encoding, Event, HealthState, HealthStatus,
};
use agent_protocol_driver::client::{AgentClient, ClientConfig};
use agent_protocol_driver::reverse::{ReverseAgentConfig, ReverseConnector, ReverseTarget};
use agent_protocol_driver::server::{
    AgentHandler, AgentServer, Listener, ServerConfig, ServerHandle,
};
use bytes::BytesMut;

use crate::hostile_loops::{answer_cid, event_frame, handshake_request, json_frame, read_frame};
use crate::pool_support::headers;
use crate::support::{eventually, sleep, spawn, timeout};
use crate::{on_both_runtimes, Harness};

/// Hang guard for a whole sweep over every split point.
const SWEEP: Duration = Duration::from_secs(60);

/// Hang guard for one connection's exchange.
const EXCHANGE: Duration = Duration::from_secs(5);

/// How long the raw peer waits between its two writes, so the other side's first read holds
/// exactly the first one.
const PAUSE: Duration = Duration::from_millis(1);

/// Allows everything.
struct AllowAll;
impl AgentHandler for AllowAll {}

/// A blocking byte stream the raw peers use (Unix or TCP).
trait RawStream: Read + Write + Send + 'static {}
impl RawStream for UnixStream {}
impl RawStream for TcpStream {}

/// Writes `first` and `split[..n]` in one write, pauses, then writes `split[n..]`.
fn write_split(s: &mut impl Write, first: &[u8], split: &[u8], n: usize) -> std::io::Result<()> {
    let mut one = first.to_vec();
    one.extend_from_slice(&split[..n]);
    s.write_all(&one)?;
    if n < split.len() {
        std::thread::sleep(PAUSE);
        s.write_all(&split[n..])?;
    }
    Ok(())
}

/// Reads frames until two 0x20 answers arrived; returns their correlation ids.
fn read_two_answers(s: &mut impl Read) -> Result<Vec<String>, String> {
    let mut cids = Vec::new();
    while cids.len() < 2 {
        let (ty, payload) = read_frame(s).map_err(|e| format!("after {cids:?}: {e}"))?;
        if ty == FrameType::AgentResponse.as_byte() {
            cids.push(answer_cid(&payload));
        }
    }
    Ok(cids)
}

/// The two events of split point `n`, and their correlation ids.
fn two_events(n: usize) -> (Vec<u8>, Vec<u8>, [String; 2]) {
    let cids = [format!("first-{n:04}"), format!("second-{n:04}")];
    let first = event_frame(&Event::RequestHeaders(headers(&cids[0])));
    let second = event_frame(&Event::RequestHeaders(headers(&cids[1])));
    (first, second, cids)
}

/// Length of the second event frame (the same for every `n`).
fn second_len() -> usize {
    two_events(0).1.len()
}

/// Runs `peer` on an OS thread and waits (without blocking the executor) for its verdict.
async fn on_thread<R: Harness>(
    what: &str,
    peer: impl FnOnce() -> Vec<String> + Send + 'static,
) -> Vec<String> {
    let thread = std::thread::spawn(peer);
    timeout::<R, _>(SWEEP, what, async {
        while !thread.is_finished() {
            sleep::<R>(Duration::from_millis(5)).await;
        }
    })
    .await;
    thread.join().unwrap()
}

/// The raw proxy's side of one reverse connection at split point `n`: reads the registration
/// request, answers it together with one event and `n` bytes of the next, then the rest, and
/// checks both answers.
fn reverse_exchange(mut s: impl RawStream, n: usize) -> Result<(), String> {
    let (ty, _) = read_frame(&mut s).map_err(|e| format!("registration request: {e}"))?;
    if ty != FrameType::HandshakeRequest.as_byte() {
        return Err(format!("first frame type 0x{ty:02x}"));
    }
    let answer = json_frame(
        FrameType::HandshakeResponse,
        &RegistrationResponse {
            success: true,
            error: None,
            proxy_id: "raw-proxy".into(),
            proxy_version: "0".into(),
            connection_id: format!("conn-{n}"),
        },
    );
    let (first, second, cids) = two_events(n);
    let mut preamble = answer;
    preamble.extend_from_slice(&first);
    write_split(&mut s, &preamble, &second, n).map_err(|e| e.to_string())?;
    let got = read_two_answers(&mut s)?;
    if got != cids {
        return Err(format!("answers for {got:?}, expected {cids:?}"));
    }
    Ok(())
}

/// A reverse agent reconnecting (quickly) to `target` until its handle shuts down.
fn reverse_agent<R: Harness>(target: ReverseTarget) -> ServerHandle {
    let mut config = ReverseAgentConfig::new(target, "leftover");
    config.backoff = Backoff::default()
        .with_initial(Duration::from_millis(1))
        .with_max(Duration::from_millis(5))
        .with_multiplier(2.0)
        .with_jitter(0.0);
    let handle = ServerHandle::new("leftover");
    let connector =
        ReverseConnector::<AllowAll, R>::new(Arc::new(AllowAll), config, handle.clone());
    R::spawn(async move { connector.run().await });
    handle
}

/// Sweeps every split point over connections `accept` yields, one per point.
fn sweep<S: RawStream>(
    mut accept: impl FnMut() -> std::io::Result<S> + Send + 'static,
    exchange: impl Fn(S, usize) -> Result<(), String> + Send + 'static,
) -> impl FnOnce() -> Vec<String> + Send + 'static {
    move || {
        let mut failures = Vec::new();
        for n in 0..=second_len() {
            match accept() {
                Ok(s) => {
                    if let Err(e) = exchange(s, n) {
                        failures.push(format!("n={n}: {e}"));
                    }
                }
                Err(e) => {
                    failures.push(format!("n={n}: accept: {e}"));
                    break;
                }
            }
        }
        failures
    }
}

fn tcp_stream(s: TcpStream) -> std::io::Result<TcpStream> {
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(EXCHANGE))?;
    Ok(s)
}

fn unix_stream(s: UnixStream) -> std::io::Result<UnixStream> {
    s.set_read_timeout(Some(EXCHANGE))?;
    Ok(s)
}

/// Every split point over a Unix socket: each event that came with the registration answer
/// is answered.
pub async fn reverse_agent_keeps_events_sent_with_the_registration_answer_over_uds<R: Harness>() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("reverse.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let handle = reverse_agent::<R>(ReverseTarget::Unix(path));
    let failures = on_thread::<R>(
        "reverse sweep over a Unix socket",
        sweep(move || unix_stream(listener.accept()?.0), reverse_exchange),
    )
    .await;
    handle.shutdown();
    assert!(
        failures.is_empty(),
        "{} split points failed: {failures:#?}",
        failures.len()
    );
}

/// The same over TCP.
pub async fn reverse_agent_keeps_events_sent_with_the_registration_answer_over_tcp<R: Harness>() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let handle = reverse_agent::<R>(ReverseTarget::Tcp(addr));
    let failures = on_thread::<R>(
        "reverse sweep over TCP",
        sweep(move || tcp_stream(listener.accept()?.0), reverse_exchange),
    )
    .await;
    handle.shutdown();
    assert!(
        failures.is_empty(),
        "{} split points failed: {failures:#?}",
        failures.len()
    );
}

/// The raw proxy's side of one UDS/TCP connection at split point `n`: the handshake request,
/// one event and `n` bytes of the next in one write, then the rest.
fn handshake_exchange(mut s: impl RawStream, n: usize) -> Result<(), String> {
    let (first, second, cids) = two_events(n);
    let mut preamble = handshake_request();
    preamble.extend_from_slice(&first);
    write_split(&mut s, &preamble, &second, n).map_err(|e| e.to_string())?;
    let (ty, _) = read_frame(&mut s).map_err(|e| format!("handshake answer: {e}"))?;
    if ty != FrameType::HandshakeResponse.as_byte() {
        return Err(format!("first frame type 0x{ty:02x}"));
    }
    let mut got = read_two_answers(&mut s)?;
    // Handlers run concurrently: the answers may come in either order.
    got.sort();
    if got != cids {
        return Err(format!("answers for {got:?}, expected {cids:?}"));
    }
    Ok(())
}

/// Every split point against an `AgentServer` on a Unix socket and on TCP: events written
/// together with the handshake request are all answered.
pub async fn agent_server_keeps_events_sent_with_the_handshake<R: Harness>() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.sock");
    let server = Arc::new(AgentServer::<AllowAll, R>::new(
        AllowAll,
        ServerConfig::default(),
    ));
    let uds = server.bind_uds(&path).unwrap();
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = tcp.local_addr().unwrap();
    let tcp = Listener::tcp(R::tcp_listener(tcp).unwrap());
    let s = server.clone();
    let _serving = spawn::<R, _>(async move { s.serve_all(vec![uds.into(), tcp]).await });

    let p = path.clone();
    let failures = on_thread::<R>(
        "handshake sweep over a Unix socket",
        sweep(
            move || unix_stream(UnixStream::connect(&p)?),
            handshake_exchange,
        ),
    )
    .await;
    assert!(
        failures.is_empty(),
        "UDS: {} split points failed: {failures:#?}",
        failures.len()
    );
    let failures = on_thread::<R>(
        "handshake sweep over TCP",
        sweep(
            move || tcp_stream(TcpStream::connect(addr)?),
            handshake_exchange,
        ),
    )
    .await;
    assert!(
        failures.is_empty(),
        "TCP: {} split points failed: {failures:#?}",
        failures.len()
    );
    server.handle().shutdown();
}

fn health_frame(state: HealthState) -> Vec<u8> {
    json_frame(
        FrameType::HealthStatus,
        &HealthStatus {
            agent_id: "raw-agent".into(),
            state,
            message: None,
            timestamp_ms: 0,
        },
    )
}

/// The raw agent's side of one connection at split point `n`: the handshake answer, a
/// Degraded report and `n` bytes of an Unhealthy one in one write, then the rest; then it
/// answers one request.
fn agent_exchange(mut s: UnixStream, n: usize) -> Result<(), String> {
    let config = AgentHandshakeConfig::default()
        .with_capabilities(Capabilities::new("raw-agent", "raw-agent", "1").with_all_events())
        .with_encodings([Encoding::Json])
        .with_timeout(EXCHANGE);
    let (ty, payload) = read_frame(&mut s).map_err(|e| format!("handshake request: {e}"))?;
    let frame = agent_protocol_core::frame::Frame {
        frame_type: FrameType::from_byte(ty)
            .ok_or_else(|| format!("unknown frame type 0x{ty:02x}"))?,
        payload: payload.into(),
    };
    let mut answer = BytesMut::new();
    AgentHandshake::new(&config, Instant::now())
        .handle_frame(&config, &frame, &mut answer)
        .map_err(|e| e.to_string())?;
    let mut preamble = answer.to_vec();
    preamble.extend_from_slice(&health_frame(HealthState::Degraded));
    let split = health_frame(HealthState::Unhealthy);
    let n = n.min(split.len());
    write_split(&mut s, &preamble, &split, n).map_err(|e| e.to_string())?;
    let (ty, payload) = read_frame(&mut s).map_err(|e| format!("request: {e}"))?;
    if ty != FrameType::RequestHeaders.as_byte() {
        return Err(format!("expected request headers, got 0x{ty:02x}"));
    }
    let event: Event = agent_protocol_core::encoding::decode_event(
        FrameType::RequestHeaders,
        Encoding::Json,
        &payload,
    )
    .ok_or_else(|| "not an event".to_string())?
    .map_err(|e| e.to_string())?;
    let response = AgentResponse::allow().with_correlation_id(event.correlation_id());
    s.write_all(&json_frame(FrameType::AgentResponse, &response))
        .map_err(|e| e.to_string())?;
    // Held open until the client has its answer and closes.
    let _ = s.read(&mut [0u8; 64]);
    Ok(())
}

/// Every split point against an `AgentClient`: control frames written together with the
/// handshake answer are all seen, and the connection still carries requests.
pub async fn agent_client_keeps_frames_sent_with_the_handshake_answer<R: Harness>() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let rounds = health_frame(HealthState::Unhealthy).len();
    let agent = std::thread::spawn(move || {
        let mut failures = Vec::new();
        for n in 0..=rounds {
            let accepted = listener.accept().and_then(|(s, _)| unix_stream(s));
            match accepted {
                Ok(s) => {
                    if let Err(e) = agent_exchange(s, n) {
                        failures.push(format!("n={n}: {e}"));
                    }
                }
                Err(e) => {
                    failures.push(format!("n={n}: accept: {e}"));
                    break;
                }
            }
        }
        failures
    });
    let endpoint = format!("unix:{}", path.display());
    for n in 0..=rounds {
        let client = timeout::<R, _>(
            EXCHANGE,
            "handshake",
            AgentClient::<R>::connect(&endpoint, ClientConfig::default()),
        )
        .await
        .unwrap_or_else(|e| panic!("n={n}: {e}"));
        eventually::<R>("the split health report is seen", EXCHANGE, || {
            client.status().health() == HealthState::Unhealthy
        })
        .await;
        let cid = format!("req-{n}");
        let answer = timeout::<R, _>(
            EXCHANGE,
            "request",
            client.send(Event::RequestHeaders(headers(&cid))),
        )
        .await
        .unwrap_or_else(|e| panic!("n={n}: {e}"));
        assert_eq!(answer.correlation_id(), Some(cid.as_str()));
        assert_eq!(answer.decision, Decision::Allow);
        client.close().await;
    }
    let failures = on_thread::<R>("raw agent ends", move || agent.join().unwrap()).await;
    assert!(
        failures.is_empty(),
        "{} split points failed: {failures:#?}",
        failures.len()
    );
}

on_both_runtimes!(
    reverse_agent_keeps_events_sent_with_the_registration_answer_over_uds,
    reverse_agent_keeps_events_sent_with_the_registration_answer_over_tcp,
    agent_server_keeps_events_sent_with_the_handshake,
    agent_client_keeps_frames_sent_with_the_handshake_answer,
);
