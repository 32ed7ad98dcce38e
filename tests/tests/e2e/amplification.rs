//! The amplification report: how much memory the worst inputs we know of make a peer hold, per
//! byte the attacker sends. Ignored by default (it allocates hundreds of MiB on purpose); run
//! it alone, on tokio, with
//! `cargo test -p agent-protocol-tests --test e2e amplification -- --ignored --nocapture --test-threads 1`.
//!
//! Agent side: a raw proxy (blocking Unix socket) sends the input to an agent whose handler
//! holds every event until released. Proxy side: a raw agent answers a client's request with the
//! input. Each row prints the bytes sent, the growth of the resident set while everything is
//! held, and its peak (`VmHWM`, reset through `/proc/self/clear_refs` before each input), both
//! over the resident set just before sending. The process is shared with nothing else: run the
//! rows one at a time.
//!
//! Nothing is asserted beyond the inputs being delivered: this measures, it does not judge.

use std::io::{self, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agent_protocol_core::frame::{Decoded, FrameDecoder, FrameType};
use agent_protocol_core::handshake::{AgentHandshake, AgentHandshakeConfig};
use agent_protocol_core::{
    AgentResponse, BodyChunk, Capabilities, ConfigureEvent, Encoding, Event, GuardrailInspectEvent,
    RequestBodyChunkEvent, RequestHeadersEvent,
};
use agent_protocol_driver::client::{AgentClient, ClientConfig};
use agent_protocol_driver::server::{AgentHandler, AgentServer, ServerConfig};
use bytes::BytesMut;
use tokio::sync::watch;

use crate::hostile_loops::{raw_frame, read_frame, rss_bytes, SERIAL};
use crate::pool_support::headers;
use crate::support::{eventually, sleep, spawn};
use crate::Harness;

const WAIT: Duration = Duration::from_secs(60);

/// Holds every event until `release` turns true.
struct HoldAll {
    held: Arc<AtomicUsize>,
    release: watch::Receiver<bool>,
}

impl HoldAll {
    async fn hold<T>(&self, event: T) -> AgentResponse {
        self.held.fetch_add(1, Ordering::SeqCst);
        let mut release = self.release.clone();
        let _ = release.wait_for(|go| *go).await;
        drop(event);
        AgentResponse::allow()
    }
}

impl AgentHandler for HoldAll {
    async fn on_request_headers(&self, event: RequestHeadersEvent) -> AgentResponse {
        self.hold(event).await
    }
    async fn on_request_body_chunk(&self, event: RequestBodyChunkEvent) -> AgentResponse {
        self.hold(event).await
    }
    async fn on_guardrail_inspect(&self, event: GuardrailInspectEvent) -> AgentResponse {
        self.hold(event).await
    }
    async fn on_configure(&self, event: ConfigureEvent) -> AgentResponse {
        self.hold(event).await
    }
}

/// Resets this process's peak resident set (`VmHWM`) to its current value.
fn reset_peak() {
    std::fs::write("/proc/self/clear_refs", "5").unwrap();
}

/// This process's peak resident set since [`reset_peak`], in bytes.
fn peak_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

fn row(input: &str, sent: usize, held: u64, peak: u64) {
    println!(
        "| {input} | {:.1} MiB | {:.0} MiB | {:.0} MiB | {:.1} |",
        sent as f64 / 1048576.0,
        held as f64 / 1048576.0,
        peak as f64 / 1048576.0,
        peak as f64 / sent.max(1) as f64
    );
}

/// MessagePack: a str.
fn mp_str(out: &mut Vec<u8>, s: &str) {
    rmp::encode::write_str(out, s).unwrap();
}

/// An event's frame with the payload `payload`.
fn frame(ty: FrameType, payload: &[u8]) -> Vec<u8> {
    raw_frame(ty.as_byte(), payload)
}

/// JSON Configure whose configuration is `[0,0,...]`, payload about `size` bytes.
fn json_configure_zeros(cid: &str, size: usize) -> Vec<u8> {
    let mut p = format!(r#"{{"correlation_id":"{cid}","config":[0"#).into_bytes();
    while p.len() < size {
        p.extend_from_slice(b",0");
    }
    p.extend_from_slice(b"]}");
    frame(FrameType::Configure, &p)
}

/// MessagePack Configure whose configuration is an array of nils, payload about `size` bytes.
fn msgpack_configure_nils(cid: &str, size: usize) -> Vec<u8> {
    let mut p = Vec::new();
    rmp::encode::write_map_len(&mut p, 2).unwrap();
    mp_str(&mut p, "correlation_id");
    mp_str(&mut p, cid);
    mp_str(&mut p, "config");
    let n = size - p.len() - 5;
    rmp::encode::write_array_len(&mut p, n as u32).unwrap();
    p.resize(p.len() + n, 0xc0);
    frame(FrameType::Configure, &p)
}

/// MessagePack GuardrailInspect whose categories are empty strings, payload about `size` bytes.
fn msgpack_guardrail_categories(cid: &str, size: usize) -> Vec<u8> {
    let mut p = Vec::new();
    rmp::encode::write_map_len(&mut p, 4).unwrap();
    mp_str(&mut p, "correlation_id");
    mp_str(&mut p, cid);
    mp_str(&mut p, "inspection_type");
    mp_str(&mut p, "pii_detection");
    mp_str(&mut p, "content");
    mp_str(&mut p, "");
    mp_str(&mut p, "categories");
    let n = size - p.len() - 5;
    rmp::encode::write_array_len(&mut p, n as u32).unwrap();
    p.resize(p.len() + n, 0xa0);
    frame(FrameType::GuardrailInspect, &p)
}

/// JSON RequestHeaders with about 2000 one-letter values under distinct short names (the default
/// header count limit).
fn json_many_headers(cid: &str) -> Vec<u8> {
    let mut event = headers(cid);
    for i in 0..1990 {
        event.headers.append(format!("h{i}"), "v");
    }
    let mut out = BytesMut::new();
    agent_protocol_core::encoding::encode_event(
        &mut out,
        Encoding::Json,
        &Event::RequestHeaders(event),
    )
    .unwrap();
    out.to_vec()
}

/// A JSON body chunk of 1 MiB.
fn json_body_chunk(cid: &str) -> Vec<u8> {
    let event = Event::RequestBodyChunk(RequestBodyChunkEvent(BodyChunk {
        correlation_id: cid.into(),
        data: vec![0x5a; 1 << 20].into(),
        ..Default::default()
    }));
    let mut out = BytesMut::new();
    agent_protocol_core::encoding::encode_event(&mut out, Encoding::Json, &event).unwrap();
    out.to_vec()
}

fn raw_proxy(path: &Path, encoding: &str) -> UnixStream {
    let mut s = UnixStream::connect(path).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    let hs = format!(
        r#"{{"supported_versions":[2],"proxy_id":"raw","proxy_version":"0","supported_encodings":["{encoding}"]}}"#
    );
    s.write_all(&raw_frame(0x01, hs.as_bytes())).unwrap();
    let (ty, payload) = read_frame(&mut s).unwrap();
    assert_eq!(ty, 0x02);
    assert!(String::from_utf8_lossy(&payload).contains(encoding));
    s
}

/// Sends `count` frames made by `make(i)` to a holding agent; prints one row.
async fn agent_side<R: Harness>(
    input: &str,
    encoding: &str,
    count: usize,
    make: impl Fn(usize) -> Vec<u8>,
) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.sock");
    let held = Arc::new(AtomicUsize::new(0));
    let (release, release_rx) = watch::channel(false);
    let server = Arc::new(AgentServer::<HoldAll, R>::new(
        HoldAll {
            held: held.clone(),
            release: release_rx,
        },
        ServerConfig::default(),
    ));
    let listener = server.bind_uds(&path).unwrap();
    let handle = server.handle();
    let s = server.clone();
    let _serving = spawn::<R, _>(async move { s.serve(listener).await });
    let proxy = raw_proxy(&path, encoding);
    proxy
        .set_write_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    // Frames are built before the baseline, one at a time if they differ.
    let frames: Vec<Vec<u8>> = (0..count.min(2)).map(&make).collect();
    let frame_len = frames[0].len();
    let base = rss_bytes();
    reset_peak();
    let mut writer = proxy.try_clone().unwrap();
    let writer_thread = std::thread::spawn(move || {
        let mut sent = 0usize;
        for i in 0..count {
            let frame = &frames[i % frames.len()];
            let mut at = 0;
            while at < frame.len() {
                match writer.write(&frame[at..]) {
                    Ok(n) => at += n,
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                        ) =>
                    {
                        return sent + at
                    }
                    Err(e) => panic!("{e}"),
                }
            }
            sent += frame.len();
        }
        sent
    });
    let started = Instant::now();
    while !writer_thread.is_finished() {
        assert!(started.elapsed() < WAIT * 2);
        sleep::<R>(Duration::from_millis(20)).await;
    }
    let sent = writer_thread.join().unwrap();
    let mut last = (held.load(Ordering::SeqCst), Instant::now());
    while last.1.elapsed() < Duration::from_millis(500) {
        sleep::<R>(Duration::from_millis(50)).await;
        let now = held.load(Ordering::SeqCst);
        if now != last.0 {
            last = (now, Instant::now());
        }
    }
    let held_rss = rss_bytes().saturating_sub(base);
    let peak = peak_bytes().saturating_sub(base);
    let events = held.load(Ordering::SeqCst);
    row(
        &format!("agent {encoding}: {input} ({events} held of {count} x {frame_len} B)"),
        sent,
        held_rss,
        peak,
    );
    release.send(true).unwrap();
    let _ = proxy.shutdown(std::net::Shutdown::Both);
    eventually::<R>("connection closed", WAIT, || handle.connections() == 0).await;
    drop(make);
}

/// A raw agent that handshakes in `encoding` and answers the first event with `answer(cid)`.
fn hostile_agent(
    path: &Path,
    encoding: Encoding,
    answer: impl Fn(&str) -> Vec<u8> + Send + 'static,
) -> std::thread::JoinHandle<usize> {
    let listener = UnixListener::bind(path).unwrap();
    std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let config = AgentHandshakeConfig::default()
            .with_capabilities(Capabilities::new("hostile", "hostile", "1").with_all_events())
            .with_encodings([encoding])
            .with_timeout(Duration::from_secs(5));
        let mut decoder = FrameDecoder::new();
        let mut buf = BytesMut::new();
        let mut next = |s: &mut UnixStream, buf: &mut BytesMut| loop {
            if let Ok(Some(Decoded::Frame(f))) = decoder.decode(buf) {
                return f;
            }
            let mut chunk = [0u8; 4096];
            let n = s.read(&mut chunk).unwrap();
            assert!(n > 0);
            buf.extend_from_slice(&chunk[..n]);
        };
        let hs = next(&mut s, &mut buf);
        let mut out = BytesMut::new();
        AgentHandshake::new(&config, Instant::now())
            .handle_frame(&config, &hs, &mut out)
            .unwrap();
        s.write_all(&out).unwrap();
        let event = next(&mut s, &mut buf);
        let event = agent_protocol_core::encoding::decode_event_with_limits(
            event.frame_type,
            encoding,
            &event.payload,
            agent_protocol_core::limits::MessageLimits::default(),
        )
        .unwrap()
        .unwrap();
        let answer = answer(event.correlation_id());
        s.write_all(&answer).unwrap();
        // Keep the socket open until the client closes it.
        let _ = s.read(&mut [0u8; 16]);
        answer.len()
    })
}

/// JSON answer whose `audit.custom.x` is `[0,0,...]`, payload about `size` bytes.
fn json_answer_zeros(cid: &str, size: usize) -> Vec<u8> {
    let mut p = format!(
        r#"{{"version":2,"decision":"allow","audit":{{"custom":{{"correlation_id":"{cid}","x":[0"#
    )
    .into_bytes();
    while p.len() < size {
        p.extend_from_slice(b",0");
    }
    p.extend_from_slice(b"]}}}");
    frame(FrameType::AgentResponse, &p)
}

/// MessagePack answer whose `audit.custom.x` is an array of nils, payload about `size` bytes.
fn msgpack_answer_nils(cid: &str, size: usize) -> Vec<u8> {
    let mut p = Vec::new();
    rmp::encode::write_map_len(&mut p, 3).unwrap();
    mp_str(&mut p, "version");
    rmp::encode::write_uint(&mut p, 2).unwrap();
    mp_str(&mut p, "decision");
    mp_str(&mut p, "allow");
    mp_str(&mut p, "audit");
    rmp::encode::write_map_len(&mut p, 1).unwrap();
    mp_str(&mut p, "custom");
    rmp::encode::write_map_len(&mut p, 2).unwrap();
    mp_str(&mut p, "correlation_id");
    mp_str(&mut p, cid);
    mp_str(&mut p, "x");
    let n = size - p.len() - 5;
    rmp::encode::write_array_len(&mut p, n as u32).unwrap();
    p.resize(p.len() + n, 0xc0);
    frame(FrameType::AgentResponse, &p)
}

/// A client asks one question; the hostile agent answers with `answer`; prints one row.
async fn proxy_side<R: Harness>(
    input: &str,
    encoding: Encoding,
    answer: impl Fn(&str) -> Vec<u8> + Send + 'static,
) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hostile.sock");
    let agent = hostile_agent(&path, encoding, answer);
    let client = AgentClient::<R>::connect(&format!("unix:{}", path.display()), {
        let mut c = ClientConfig::<R>::default();
        c.connection.request_timeout = Duration::from_secs(30);
        c
    })
    .await
    .unwrap();
    let base = rss_bytes();
    reset_peak();
    let result = client.send(Event::RequestHeaders(headers("victim"))).await;
    let peak = peak_bytes().saturating_sub(base);
    let held = rss_bytes().saturating_sub(base);
    let ok = result.is_ok();
    drop(result);
    client.close().await;
    let sent = agent.join().unwrap();
    row(
        &format!("proxy {encoding}: {input} (answer ok: {ok})"),
        sent,
        held,
        peak,
    );
}

pub async fn amplification_report<R: Harness>() {
    let _serial = SERIAL.lock().await;
    println!("| input | bytes sent | RSS growth held | peak RSS growth | peak / sent |");
    println!("|---|---|---|---|---|");
    let cid = |i: usize| format!("c{i:07}");
    agent_side::<R>("RequestBodyChunk, 1 MiB body", "json", 200, |i| {
        json_body_chunk(&cid(i))
    })
    .await;
    agent_side::<R>("RequestHeaders, 2000 tiny headers", "json", 3000, |i| {
        json_many_headers(&cid(i))
    })
    .await;
    agent_side::<R>("Configure, config [0,0,...]", "json", 8, |i| {
        json_configure_zeros(&cid(i), 1 << 20)
    })
    .await;
    agent_side::<R>("Configure, config [nil,nil,...]", "msgpack", 8, |i| {
        msgpack_configure_nils(&cid(i), 1 << 20)
    })
    .await;
    agent_side::<R>(
        "GuardrailInspect, categories [\"\",...]",
        "msgpack",
        8,
        |i| msgpack_guardrail_categories(&cid(i), 1 << 20),
    )
    .await;
    agent_side::<R>("Configure 16 MiB frame, [nil,...]", "msgpack", 1, |i| {
        msgpack_configure_nils(&cid(i), (16 << 20) - 64)
    })
    .await;
    proxy_side::<R>(
        "AgentResponse 16 MiB, custom [0,0,...]",
        Encoding::Json,
        |c| json_answer_zeros(c, (16 << 20) - 64),
    )
    .await;
    proxy_side::<R>(
        "AgentResponse 16 MiB, custom [nil,...]",
        Encoding::MsgPack,
        |c| msgpack_answer_nils(c, (16 << 20) - 64),
    )
    .await;
}

#[test]
#[ignore = "measures memory; run alone (see the module docs)"]
fn amplification_report_tokio() {
    <agent_protocol_tokio::Tokio as Harness>::block_on(amplification_report::<
        agent_protocol_tokio::Tokio,
    >())
}
