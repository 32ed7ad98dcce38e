//! The framed connection loops against hostile peers, on both runtime adapters: a peer that
//! keeps the socket readable must not starve writes, timers or commands, and a peer that never
//! reads must not make the agent buffer answers without limit.
//!
//! Every hostile peer is a raw blocking socket on its own OS thread, writing exactly the bytes
//! an attacker would (frames built with the core's codec, so they are valid unless the scenario
//! says otherwise), as fast as the kernel takes them:
//! - an "agent" that completes the handshake, then floods health reports, pongs, answers for
//!   correlation ids nobody asked about and frames of unknown types, and never answers: a
//!   client's and a pool's request with a 500 ms timeout still fail with a timeout near their
//!   deadline;
//! - a "proxy" that pipelines valid request headers without pause while another thread reads:
//!   answers arrive while it is still writing;
//! - a "proxy" that writes ~10 MB of small malformed events (each earns a fail-closed answer)
//!   and never reads: the agent stops reading once its unsent answers pass
//!   [`MAX_PENDING_TRANSMIT`], so its memory stays bounded and the writer blocks.
//!
//! - a client whose connection task never answers at all: the caller's own wait still ends
//!   at the deadline plus [`REPLY_GRACE`].
//!
//! Time bounds are the request's own timeout plus generous slack (hang guards for a loaded
//! machine), never a speed assertion.

use std::io::{self, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agent_protocol_core::encoding::{self, decode_payload};
use agent_protocol_core::frame::{Decoded, Frame, FrameDecoder, FrameType};
use agent_protocol_core::handshake::{AgentHandshake, AgentHandshakeConfig, HandshakeRequest};
use agent_protocol_core::handshake::{Negotiated, PROTOCOL_VERSION};
use agent_protocol_core::{
    AgentResponse, Capabilities, Encoding, Event, HealthState, HealthStatus, Ping,
};
use agent_protocol_driver::client::{
    AgentClient, ClientConfig, ConnectionStatus, CHANNEL_BUFFER_SIZE, REPLY_GRACE,
};
use agent_protocol_driver::pool::{AgentPool, AgentPoolConfig};
use agent_protocol_driver::server::{AgentHandler, MAX_PENDING_TRANSMIT};
use bytes::BytesMut;

use crate::pool_support::headers;
use crate::support::{eventually, serve_uds, sleep, spawn, timeout};
use crate::{on_both_runtimes, Harness};

/// Hang guard for setup steps that normally take milliseconds.
const WAIT: Duration = Duration::from_secs(10);

/// The request timeout the flooded requests run with.
const REQUEST_TIMEOUT: Duration = Duration::from_millis(500);

/// How far past its deadline a flooded request may end: slack for a loaded 2-core machine, far
/// below the never (or 5-6 s) such a request took when reads starved the timer.
const DEADLINE_SLACK: Duration = Duration::from_millis(2500);

/// These scenarios (and those of `memory_bound`) run one at a time: each keeps both cores busy
/// on purpose, and two at once would count one's buffers as the other's memory growth and one's
/// CPU as the other's delay.
pub static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Allows everything at once.
struct AllowAll;
impl AgentHandler for AllowAll {}

/// One frame: big-endian length of type byte + payload, type byte, payload.
pub fn raw_frame(frame_type: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + payload.len());
    out.extend_from_slice(&(payload.len() as u32 + 1).to_be_bytes());
    out.push(frame_type);
    out.extend_from_slice(payload);
    out
}

/// A frame carrying `value` as JSON.
pub fn json_frame<T: serde::Serialize>(frame_type: FrameType, value: &T) -> Vec<u8> {
    let mut out = BytesMut::new();
    encoding::encode_frame(&mut out, frame_type, Encoding::Json, value).unwrap();
    out.to_vec()
}

/// An event's frame, JSON encoded.
pub fn event_frame(event: &Event) -> Vec<u8> {
    let mut out = BytesMut::new();
    encoding::encode_event(&mut out, Encoding::Json, event).unwrap();
    out.to_vec()
}

/// Reads one whole frame from a blocking socket: (type byte, payload).
pub fn read_frame(s: &mut impl Read) -> io::Result<(u8, Vec<u8>)> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len)?;
    let len = u32::from_be_bytes(len) as usize;
    if len == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "zero-length frame",
        ));
    }
    let mut body = vec![0u8; len];
    s.read_exact(&mut body)?;
    let payload = body.split_off(1);
    Ok((body[0], payload))
}

/// The 0x01 handshake request of a proxy that offers only JSON.
pub fn handshake_request() -> Vec<u8> {
    json_frame(
        FrameType::HandshakeRequest,
        &HandshakeRequest {
            supported_versions: vec![2],
            proxy_id: "raw-proxy".into(),
            proxy_version: "0".into(),
            config: None,
            supported_encodings: vec!["json".into()],
        },
    )
}

/// The correlation id of an 0x20 answer.
pub fn answer_cid(payload: &[u8]) -> String {
    let response: AgentResponse =
        decode_payload(FrameType::AgentResponse, Encoding::Json, payload).unwrap();
    response.correlation_id().unwrap_or_default().to_owned()
}

/// Connects to an agent's socket and completes a JSON handshake.
fn raw_proxy(path: &Path) -> UnixStream {
    let mut s = UnixStream::connect(path).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(&handshake_request()).unwrap();
    let (ty, _) = read_frame(&mut s).unwrap();
    assert_eq!(ty, FrameType::HandshakeResponse.as_byte());
    s
}

/// This process's resident set, in bytes, after handing freed heap back to the system (so
/// memory an earlier scenario freed does not hide this one's growth).
pub fn rss_bytes() -> u64 {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory.
    unsafe {
        libc::malloc_trim(0);
    }
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

/// A raw "agent" on a Unix socket: every connection gets a JSON handshake answer, then an
/// endless stream of valid frames that answer nothing the proxy asked.
struct FloodingAgent {
    path: std::path::PathBuf,
    /// Bytes written to all connections so far.
    flooded: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    /// Clones of the accepted sockets, shut down on drop so the flood threads end.
    conns: Arc<Mutex<Vec<UnixStream>>>,
}

impl FloodingAgent {
    fn start(dir: &Path) -> Self {
        let path = dir.join("flood.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let flooded = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let conns = Arc::new(Mutex::new(Vec::new()));
        let (f, st, c) = (flooded.clone(), stop.clone(), conns.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if st.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { break };
                c.lock().unwrap().push(stream.try_clone().unwrap());
                let (f, st) = (f.clone(), st.clone());
                std::thread::spawn(move || flood(stream, &f, &st));
            }
        });
        Self {
            path,
            flooded,
            stop,
            conns,
        }
    }
}

impl Drop for FloodingAgent {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
        // Wakes the accept loop so it sees `stop`.
        let _ = UnixStream::connect(&self.path);
    }
}

/// About 64 KiB of valid frames nobody asked for: health reports, pongs for pings never sent,
/// answers for unknown correlation ids, and frames of an unknown type.
fn flood_batch() -> Vec<u8> {
    let health = json_frame(
        FrameType::HealthStatus,
        &HealthStatus {
            agent_id: "flood".into(),
            state: HealthState::Healthy,
            message: None,
            timestamp_ms: 0,
        },
    );
    let mut batch = Vec::with_capacity(70 * 1024);
    let mut i = 0u64;
    while batch.len() < 64 * 1024 {
        batch.extend_from_slice(&health);
        batch.extend_from_slice(&json_frame(
            FrameType::Pong,
            &Ping {
                sequence: 1_000_000 + i,
                timestamp_ms: 0,
            },
        ));
        let stray = AgentResponse::allow().with_correlation_id(format!("nobody-{i}"));
        batch.extend_from_slice(&json_frame(FrameType::AgentResponse, &stray));
        batch.extend_from_slice(&raw_frame(0x7e, b"unknown frame type"));
        i += 1;
    }
    batch
}

/// Lets `s` queue up to `bytes` unread: a Unix socket wakes a blocked writer only once its queue
/// has drained to a quarter, so with the default (~200 KiB) the reader briefly finds the socket
/// empty after every refill; a flooder that wants it readable all the time asks for more.
pub fn enlarge_send_buffer(s: &impl std::os::fd::AsRawFd, bytes: usize) {
    let size = bytes as libc::c_int;
    // SAFETY: a valid descriptor and a correctly sized option value.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(
        rc,
        0,
        "setsockopt(SO_SNDBUF): {}",
        io::Error::last_os_error()
    );
}

fn flood(mut s: UnixStream, flooded: &AtomicU64, stop: &AtomicBool) {
    enlarge_send_buffer(&s, 4 << 20);
    let config = AgentHandshakeConfig::default()
        .with_capabilities(Capabilities::new("flood", "flood", "1").with_all_events())
        .with_encodings([Encoding::Json])
        .with_timeout(Duration::from_secs(5));
    let mut decoder = FrameDecoder::new();
    let mut buf = BytesMut::with_capacity(4096);
    let frame: Frame = loop {
        if let Ok(Some(Decoded::Frame(f))) = decoder.decode(&mut buf) {
            break f;
        }
        let mut chunk = [0u8; 4096];
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let mut out = BytesMut::new();
    if AgentHandshake::new(&config, Instant::now())
        .handle_frame(&config, &frame, &mut out)
        .is_err()
    {
        return;
    }
    if s.write_all(&out).is_err() {
        return;
    }
    let batch = flood_batch();
    while !stop.load(Ordering::SeqCst) {
        if s.write_all(&batch).is_err() {
            return;
        }
        flooded.fetch_add(batch.len() as u64, Ordering::Relaxed);
    }
}

/// A flooding agent must not keep a client's requests past their timeout: each of several
/// concurrent requests fails with a timeout within its own 500 ms plus slack, while the flood
/// demonstrably went on.
pub async fn flooding_agent_cannot_hold_client_requests_past_their_timeout<R: Harness>() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let agent = FloodingAgent::start(dir.path());
    let mut config = ClientConfig::<R>::default();
    config.connection.request_timeout = REQUEST_TIMEOUT;
    let endpoint = format!("unix:{}", agent.path.display());
    let client = timeout::<R, _>(
        WAIT,
        "handshake",
        AgentClient::<R>::connect(&endpoint, config),
    )
    .await
    .unwrap();
    let flooded_before = agent.flooded.load(Ordering::Relaxed);
    let started = Instant::now();
    let waiting: Vec<_> = (0..4)
        .map(|i| {
            let client = client.clone();
            spawn::<R, _>(async move {
                let r = client
                    .send(Event::RequestHeaders(headers(&format!("f{i}"))))
                    .await;
                (r, Instant::now())
            })
        })
        .collect();
    for w in waiting {
        let (result, ended) = timeout::<R, _>(WAIT, "flooded request ends", w)
            .await
            .unwrap();
        let err = result.expect_err("the flooding agent answers nothing");
        assert!(err.is_timeout(), "expected a timeout, got {err}");
        let took = ended - started;
        println!("client request ended after {took:?}: {err}");
        assert!(
            took < REQUEST_TIMEOUT + DEADLINE_SLACK,
            "request ended {took:?} after submission (timeout {REQUEST_TIMEOUT:?})"
        );
    }
    let flooded = agent.flooded.load(Ordering::Relaxed) - flooded_before;
    println!("flooded {flooded} bytes");
    assert!(
        flooded > 1024 * 1024,
        "the agent flooded only {flooded} bytes while the requests waited"
    );
    client.close().await;
}

/// The same through a pool: the caller's wait ends at the deadline whatever the agent sends.
pub async fn flooding_agent_cannot_hold_pool_requests_past_their_timeout<R: Harness>() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let agent = FloodingAgent::start(dir.path());
    let pool = AgentPool::<R>::new(
        AgentPoolConfig::default()
            .with_request_timeout(REQUEST_TIMEOUT)
            .with_connections_per_agent(1),
    );
    let endpoint = format!("unix:{}", agent.path.display());
    timeout::<R, _>(WAIT, "pool connects", pool.add_agent("flood", &endpoint))
        .await
        .unwrap();
    for i in 0..2 {
        let started = Instant::now();
        let result = timeout::<R, _>(
            WAIT,
            "flooded pool request ends",
            pool.send_request_headers("flood", headers(&format!("p{i}"))),
        )
        .await;
        let took = started.elapsed();
        let err = result.expect_err("the flooding agent answers nothing");
        assert!(
            took < REQUEST_TIMEOUT + DEADLINE_SLACK,
            "pool request {i} ended {took:?} after submission with {err}"
        );
        assert!(
            matches!(&err, agent_protocol_driver::pool::PoolError::Client(c) if c.is_timeout()),
            "expected a timeout, got {err}"
        );
    }
    pool.shutdown(Duration::from_millis(100)).await;
}

/// A proxy that pipelines requests without pause gets answers while it is still writing: the
/// agent's loop writes between reads instead of only once input stops.
pub async fn agent_answers_while_the_proxy_keeps_writing<R: Harness>() {
    let _serial = SERIAL.lock().await;
    let agent = serve_uds::<_, R>(AllowAll);
    let (path, handle) = (&agent.path, &agent.handle);

    let proxy = raw_proxy(path);
    let mut reader = proxy.try_clone().unwrap();
    let mut writer = proxy.try_clone().unwrap();
    // Keeps the agent's socket readable without a gap (see `enlarge_send_buffer`).
    enlarge_send_buffer(&writer, 4 << 20);
    let answered = Arc::new(AtomicUsize::new(0));
    let writing = Arc::new(AtomicBool::new(true));
    let first_answer_while_writing = Arc::new(AtomicBool::new(false));

    let (a, w, first) = (
        answered.clone(),
        writing.clone(),
        first_answer_while_writing.clone(),
    );
    let reading = std::thread::spawn(move || {
        while let Ok((ty, _)) = read_frame(&mut reader) {
            if ty == FrameType::AgentResponse.as_byte()
                && a.fetch_add(1, Ordering::SeqCst) == 0
                && w.load(Ordering::SeqCst)
            {
                first.store(true, Ordering::SeqCst);
            }
        }
    });
    let mut batch = Vec::new();
    for i in 0..256 {
        batch.extend_from_slice(&event_frame(&Event::RequestHeaders(headers(&format!(
            "w{i}"
        )))));
    }
    let w = writing.clone();
    let a = answered.clone();
    let writer_thread = std::thread::spawn(move || {
        let started = Instant::now();
        let mut written = 0u64;
        while started.elapsed() < Duration::from_secs(1) {
            if writer.write_all(&batch).is_err() {
                break;
            }
            written += batch.len() as u64;
        }
        // Read before the flag drops, so only answers that arrived during writing count.
        let answered_at_stop = a.load(Ordering::SeqCst);
        w.store(false, Ordering::SeqCst);
        (written, answered_at_stop)
    });
    let (written, answered_at_stop) = timeout::<R, _>(WAIT * 2, "writer stops", async {
        loop {
            if writer_thread.is_finished() {
                break writer_thread.join().unwrap();
            }
            sleep::<R>(Duration::from_millis(10)).await;
        }
    })
    .await;
    let _ = proxy.shutdown(std::net::Shutdown::Both);
    let _ = reading.join();
    assert!(written > 0);
    assert!(
        answered_at_stop > 0,
        "no answer arrived during {written} bytes of pipelined requests"
    );
    assert!(first_answer_while_writing.load(Ordering::SeqCst));
    eventually::<R>("connection closed", WAIT, || handle.connections() == 0).await;
    println!("pipelining: {written} bytes written, {answered_at_stop} answered while writing");
}

/// A proxy that never reads cannot make the agent buffer answers without limit: after a few
/// MiB of small malformed events (each answered with a fail-closed block) the agent stops
/// reading, the proxy's writes block, and the process grew by far less than the answers to
/// ~10 MB of events would take.
pub async fn unread_answers_stop_the_agent_reading<R: Harness>() {
    let _serial = SERIAL.lock().await;
    let agent = serve_uds::<_, R>(AllowAll);
    let (path, handle) = (&agent.path, &agent.handle);

    let proxy = raw_proxy(path);
    // A blocked write gives up after this long: the sign that the agent stopped reading.
    proxy
        .set_write_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    let malformed = raw_frame(0x10, br#"{"correlation_id":"x"}"#);
    let mut batch = Vec::new();
    while batch.len() < 64 * 1024 {
        batch.extend_from_slice(&malformed);
    }
    const TOTAL: usize = 10 * 1024 * 1024;
    let rss_before = rss_bytes();
    let mut writer = proxy.try_clone().unwrap();
    let writer_thread = std::thread::spawn(move || {
        let mut written = 0usize;
        while written < TOTAL {
            match writer.write(&batch) {
                Ok(n) => written += n,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return (written, true)
                }
                Err(e) => panic!("write failed after {written} bytes: {e}"),
            }
        }
        (written, false)
    });
    let (written, blocked) = timeout::<R, _>(Duration::from_secs(60), "writer ends", async {
        loop {
            if writer_thread.is_finished() {
                break writer_thread.join().unwrap();
            }
            sleep::<R>(Duration::from_millis(10)).await;
        }
    })
    .await;
    // Let the agent finish whatever it read.
    sleep::<R>(Duration::from_millis(300)).await;
    let rss_after = rss_bytes();
    let growth = rss_after.saturating_sub(rss_before);
    println!(
        "never-reading proxy: wrote {written} bytes (blocked: {blocked}); RSS {} -> {} MiB (+{} MiB)",
        rss_before >> 20,
        rss_after >> 20,
        growth >> 20
    );
    assert!(
        blocked && written < TOTAL,
        "the agent kept reading: {written} bytes written without blocking"
    );
    assert!(
        growth < 64 * 1024 * 1024,
        "RSS grew by {} MiB (bound: unsent output stays near {} KiB)",
        growth >> 20,
        MAX_PENDING_TRANSMIT >> 10
    );
    // The connection is still served: once the proxy reads, it gets (fail-closed) answers.
    let mut reader = proxy.try_clone().unwrap();
    let (ty, payload) = read_frame(&mut reader).unwrap();
    assert_eq!(ty, FrameType::AgentResponse.as_byte());
    assert_eq!(answer_cid(&payload), "x");
    let _ = proxy.shutdown(std::net::Shutdown::Both);
    eventually::<R>("connection closed", WAIT, || handle.connections() == 0).await;
}

/// The caller's wait has its own deadline: a connection task that never answers (stuck, or
/// starved by its peer) cannot keep the caller past its timeout plus [`REPLY_GRACE`], and the
/// connection is told to abandon the request.
pub async fn caller_wait_ends_when_the_connection_task_never_answers<R: Harness>() {
    // A client whose "connection task" is a channel nobody reads.
    let (tx, mut rx) = tokio::sync::mpsc::channel(CHANNEL_BUFFER_SIZE);
    let negotiated = Negotiated {
        encoding: Encoding::Json,
        capabilities: Capabilities::new("stuck", "stuck", "1").with_all_events(),
        protocol_version: PROTOCOL_VERSION,
    };
    let status = Arc::new(ConnectionStatus::new());
    let client = AgentClient::<R>::from_parts(tx, status, negotiated, REQUEST_TIMEOUT);
    let started = Instant::now();
    let result = timeout::<R, _>(
        WAIT,
        "the caller's wait ends",
        client.send(Event::RequestHeaders(headers("stuck"))),
    )
    .await;
    let took = started.elapsed();
    let err = result.expect_err("nobody answers");
    assert!(err.is_timeout(), "expected a timeout, got {err}");
    assert!(
        took >= REQUEST_TIMEOUT && took < REQUEST_TIMEOUT + REPLY_GRACE + DEADLINE_SLACK,
        "the wait ended after {took:?}"
    );
    // The request, then the caller abandoning it.
    let queued = std::iter::from_fn(|| rx.try_recv().ok()).count();
    assert_eq!(queued, 2);
}

/// Malformed events from a raw proxy are answered with blocks by the connection itself, and
/// the server's metrics say so: counted as fail-closed, not as handler answers.
pub async fn malformed_events_are_answered_and_counted_fail_closed<R: Harness>() {
    use agent_protocol_core::metrics::DecisionKind;
    use agent_protocol_driver::metrics::prometheus_client::registry::Registry;
    use agent_protocol_driver::metrics::render_openmetrics;
    let agent = serve_uds::<_, R>(AllowAll);
    let mut registry = Registry::default();
    agent.handle.register_metrics(&mut registry);
    let mut proxy = raw_proxy(&agent.path);
    let malformed = raw_frame(0x10, br#"{"correlation_id":"bad"}"#);
    for _ in 0..3 {
        proxy.write_all(&malformed).unwrap();
    }
    for i in 0..2 {
        let event = Event::RequestHeaders(headers(&format!("ok{i}")));
        proxy.write_all(&event_frame(&event)).unwrap();
    }
    let mut decisions = Vec::new();
    for _ in 0..5 {
        let (ty, payload) = read_frame(&mut proxy).unwrap();
        assert_eq!(ty, FrameType::AgentResponse.as_byte());
        let response: AgentResponse =
            decode_payload(FrameType::AgentResponse, Encoding::Json, &payload).unwrap();
        decisions.push(response.decision.kind());
    }
    decisions.sort_unstable();
    assert_eq!(decisions, ["allow", "allow", "block", "block", "block"]);
    let metrics = agent.handle.metrics().clone();
    eventually::<R>("answers counted", WAIT, || {
        metrics.answers(DecisionKind::Allow) == 2 && metrics.fail_closed() == 3
    })
    .await;
    let text = render_openmetrics(&registry);
    for needle in [
        "agent_protocol_agent_fail_closed_total{agent_id=\"agent\"} 3\n",
        "agent_protocol_agent_answers_total{agent_id=\"agent\",decision=\"allow\"} 2\n",
        "agent_protocol_agent_answers_total{agent_id=\"agent\",decision=\"block\"} 0\n",
        "agent_protocol_agent_requests_total{agent_id=\"agent\"} 2\n",
        "agent_protocol_agent_handler_duration_seconds_count{agent_id=\"agent\"} 2\n",
        "agent_protocol_agent_connections{agent_id=\"agent\"} 1\n",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in\n{text}");
    }
}

on_both_runtimes!(
    malformed_events_are_answered_and_counted_fail_closed,
    caller_wait_ends_when_the_connection_task_never_answers,
    flooding_agent_cannot_hold_client_requests_past_their_timeout,
    flooding_agent_cannot_hold_pool_requests_past_their_timeout,
    agent_answers_while_the_proxy_keeps_writing,
    unread_answers_stop_the_agent_reading,
);
