//! A minimal fake agent for the pool tests, hand-rolled on the core's frame codec, agent
//! handshake and payload encoding over a real Unix socket (async-io, no tokio), independent of
//! the driver's `AgentServer`, so the pool is tested against a second implementation of the
//! agent side.
//!
//! It records every event it receives with the id of the connection it came on, answers after
//! a configurable delay (or never), and can push control frames (flow control, health,
//! metrics), write garbage, drop one connection, or die and come back.

#![allow(dead_code)]

use std::collections::HashSet;
use std::future::Future;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agent_protocol_async_std::pool::{AgentPool, AgentPoolConfig};
use agent_protocol_core::capabilities::EventKind;
use agent_protocol_core::encoding::{self, decode_event, decode_payload};
use agent_protocol_core::frame::{self, Decoded, Frame, FrameDecoder, FrameType};
use agent_protocol_core::handshake::{AgentHandshake, AgentHandshakeConfig};
use agent_protocol_core::{
    AgentResponse, Cancel, Capabilities, Encoding, FlowAction, FlowControl, HealthState,
    HealthStatus, MetricsReport,
};
use async_global_executor::Task;
use async_io::{Async, Timer};
use async_std::channel::{unbounded, Receiver, Sender};
use bytes::BytesMut;
use futures_lite::{AsyncReadExt, AsyncWriteExt};

/// How the agent answers.
#[derive(Clone, Debug, Default)]
pub struct Behaviour {
    /// Wait this long before answering.
    pub delay: Duration,
    /// Never answer events.
    pub silent: bool,
    /// Answer with a block instead of an allow.
    pub block: bool,
    /// Never answer the handshake.
    pub hang_handshake: bool,
}

/// One event the agent received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    /// Which connection (numbered from 0 in accept order).
    pub conn: usize,
    /// Event kind.
    pub kind: EventKind,
    /// Correlation id.
    pub cid: String,
}

enum Ctl {
    Frame(BytesMut),
    Close,
}

struct ConnHandle {
    id: usize,
    ctl: Sender<Ctl>,
    task: Task<()>,
    encoding: Arc<Mutex<Option<Encoding>>>,
}

/// State shared by the agent's tasks.
pub struct AgentState {
    encodings: Vec<Encoding>,
    behaviour: Mutex<Behaviour>,
    conns: Mutex<Vec<ConnHandle>>,
    seen: Mutex<Vec<Seen>>,
    cancelled: Mutex<HashSet<String>>,
    negotiated: Mutex<Vec<Encoding>>,
    next_conn: AtomicUsize,
}

/// A fake agent listening on a Unix socket.
pub struct FakeAgent {
    pub path: PathBuf,
    pub state: Arc<AgentState>,
    listener: Option<Task<()>>,
}

impl FakeAgent {
    /// Starts an agent at `dir/name.sock` supporting `encodings` (JSON is always accepted).
    pub async fn start(dir: &Path, name: &str, encodings: &[Encoding]) -> Self {
        let state = Arc::new(AgentState {
            encodings: encodings.to_vec(),
            behaviour: Mutex::new(Behaviour::default()),
            conns: Mutex::new(Vec::new()),
            seen: Mutex::new(Vec::new()),
            cancelled: Mutex::new(HashSet::new()),
            negotiated: Mutex::new(Vec::new()),
            next_conn: AtomicUsize::new(0),
        });
        let mut agent = Self {
            path: dir.join(format!("{name}.sock")),
            state,
            listener: None,
        };
        agent.restart().await;
        agent
    }

    /// `unix:` endpoint string.
    pub fn endpoint(&self) -> String {
        format!("unix:{}", self.path.display())
    }

    /// (Re)binds the socket and accepts connections.
    pub async fn restart(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        let listener = Async::<UnixListener>::bind(&self.path).expect("bind agent socket");
        let state = self.state.clone();
        self.listener = Some(async_global_executor::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    break;
                };
                AgentState::adopt(&state, stream, None);
            }
        }));
    }

    /// Kills the agent: stops accepting, drops every connection (the proxy sees EOF), removes
    /// the socket file.
    pub async fn kill(&mut self) {
        if let Some(l) = self.listener.take() {
            l.cancel().await;
        }
        let conns: Vec<ConnHandle> = self.state.conns.lock().unwrap().drain(..).collect();
        for c in conns {
            c.task.cancel().await;
        }
        let _ = std::fs::remove_file(&self.path);
    }

    pub fn set_behaviour(&self, f: impl FnOnce(&mut Behaviour)) {
        f(&mut self.state.behaviour.lock().unwrap());
    }

    /// Events received so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    pub fn clear_seen(&self) {
        self.state.seen.lock().unwrap().clear();
    }

    /// Correlation ids the proxy cancelled.
    pub fn cancelled(&self) -> HashSet<String> {
        self.state.cancelled.lock().unwrap().clone()
    }

    /// Encodings negotiated, one per handshake.
    pub fn negotiated(&self) -> Vec<Encoding> {
        self.state.negotiated.lock().unwrap().clone()
    }

    /// Connections currently open on the agent side.
    pub fn live_connections(&self) -> usize {
        self.live_ids().len()
    }

    /// Connections accepted so far (ever).
    pub fn accepted(&self) -> usize {
        self.state.next_conn.load(Ordering::SeqCst)
    }

    /// Ids of the open connections.
    pub fn live_ids(&self) -> Vec<usize> {
        self.state
            .conns
            .lock()
            .unwrap()
            .iter()
            .filter(|c| !c.task.is_finished())
            .map(|c| c.id)
            .collect()
    }

    /// Closes one connection from the agent side.
    pub fn close_connection(&self, id: usize) {
        for c in self.state.conns.lock().unwrap().iter() {
            if c.id == id {
                let _ = c.ctl.try_send(Ctl::Close);
            }
        }
    }

    /// Sends a connection-wide flow-control signal on every open connection.
    pub fn flow_all(&self, action: FlowAction) {
        let ids = self.live_ids();
        self.flow(&ids, action);
    }

    /// Sends a connection-wide flow-control signal on the given connections.
    pub fn flow(&self, conn_ids: &[usize], action: FlowAction) {
        self.control_some(conn_ids, |enc, out| {
            let signal = FlowControl {
                action,
                correlation_id: None,
                buffer_available: None,
                timestamp_ms: 0,
            };
            encoding::encode_frame(out, FrameType::FlowControl, enc, &signal).unwrap();
        });
    }

    /// Reports a health state on the given connections.
    pub fn health(&self, conn_ids: &[usize], state: HealthState) {
        self.control_some(conn_ids, |enc, out| {
            let status = HealthStatus {
                agent_id: "fake".into(),
                state,
                message: None,
                timestamp_ms: 0,
            };
            encoding::encode_frame(out, FrameType::HealthStatus, enc, &status).unwrap();
        });
    }

    /// Sends a metrics report on every open connection.
    pub fn metrics(&self, report: &MetricsReport) {
        self.send_frame(|enc, out| {
            encoding::encode_frame(out, FrameType::MetricsReport, enc, report).unwrap();
        });
    }

    /// Writes raw bytes (not a valid frame) on the given connections.
    pub fn garbage(&self, conn_ids: &[usize], bytes: &[u8]) {
        self.control_some(conn_ids, |_, out| out.extend_from_slice(bytes));
    }

    /// Sends a frame built by `build` (given the connection's encoding) on every open
    /// connection.
    pub fn send_frame(&self, build: impl Fn(Encoding, &mut BytesMut)) {
        let ids = self.live_ids();
        self.control_some(&ids, build);
    }

    fn control_some(&self, ids: &[usize], build: impl Fn(Encoding, &mut BytesMut)) {
        for c in self.state.conns.lock().unwrap().iter() {
            if !ids.contains(&c.id) {
                continue;
            }
            let enc = c.encoding.lock().unwrap().unwrap_or(Encoding::Json);
            let mut out = BytesMut::new();
            build(enc, &mut out);
            let _ = c.ctl.try_send(Ctl::Frame(out));
        }
    }

    /// Serves one end of a socket pair as an already established (reverse) connection.
    pub fn adopt_established(&self, stream: Async<UnixStream>) -> usize {
        AgentState::adopt(&self.state, stream, Some(Encoding::Json))
    }
}

impl AgentState {
    /// Serves one stream; `established` skips the handshake (reverse connections).
    fn adopt(state: &Arc<Self>, stream: Async<UnixStream>, established: Option<Encoding>) -> usize {
        let id = state.next_conn.fetch_add(1, Ordering::SeqCst);
        let (tx, rx) = unbounded();
        let encoding = Arc::new(Mutex::new(established));
        let task = async_global_executor::spawn(serve(
            stream,
            id,
            state.clone(),
            rx,
            tx.clone(),
            encoding.clone(),
        ));
        state.conns.lock().unwrap().push(ConnHandle {
            id,
            ctl: tx,
            task,
            encoding,
        });
        id
    }
}

enum Step {
    Read(std::io::Result<usize>),
    Ctl(Option<Ctl>),
}

async fn serve(
    stream: Async<UnixStream>,
    id: usize,
    state: Arc<AgentState>,
    ctl: Receiver<Ctl>,
    ctl_tx: Sender<Ctl>,
    encoding: Arc<Mutex<Option<Encoding>>>,
) {
    let mut decoder = FrameDecoder::new();
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut chunk = vec![0u8; 64 * 1024];
    let hs_config = AgentHandshakeConfig {
        capabilities: Capabilities::new("fake", "fake", "1")
            .with_all_events()
            .with_control_features(),
        encodings: state.encodings.clone().into(),
        timeout: Duration::from_secs(5),
    };
    let mut writer = &stream;
    loop {
        let mut reader = &stream;
        let step =
            futures_lite::future::or(async { Step::Read(reader.read(&mut chunk).await) }, async {
                Step::Ctl(ctl.recv().await.ok())
            })
            .await;
        match step {
            Step::Read(Ok(0) | Err(_)) => break,
            Step::Read(Ok(n)) => {
                buf.extend_from_slice(&chunk[..n]);
                loop {
                    match decoder.decode(&mut buf) {
                        Ok(Some(Decoded::Frame(frame))) => {
                            let mut out = BytesMut::new();
                            handle(&state, id, &hs_config, &encoding, &ctl_tx, frame, &mut out);
                            if !out.is_empty() && writer.write_all(&out).await.is_err() {
                                return;
                            }
                        }
                        Ok(Some(Decoded::Skipped { .. })) => {}
                        Ok(None) => break,
                        Err(_) => return,
                    }
                }
            }
            Step::Ctl(Some(Ctl::Frame(bytes))) => {
                if writer.write_all(&bytes).await.is_err() {
                    return;
                }
            }
            Step::Ctl(Some(Ctl::Close) | None) => return,
        }
    }
}

fn handle(
    state: &Arc<AgentState>,
    conn: usize,
    hs_config: &AgentHandshakeConfig,
    encoding: &Arc<Mutex<Option<Encoding>>>,
    ctl_tx: &Sender<Ctl>,
    frame: Frame,
    out: &mut BytesMut,
) {
    let behaviour = state.behaviour.lock().unwrap().clone();
    match frame.frame_type {
        FrameType::HandshakeRequest => {
            if behaviour.hang_handshake {
                return;
            }
            let hs = AgentHandshake::new(hs_config, Instant::now());
            if let Ok((negotiated, _)) = hs.handle_frame(hs_config, &frame, out) {
                *encoding.lock().unwrap() = Some(negotiated.encoding);
                state.negotiated.lock().unwrap().push(negotiated.encoding);
            }
        }
        FrameType::Cancel => {
            let enc = encoding.lock().unwrap().unwrap_or(Encoding::Json);
            if let Ok(c) = decode_payload::<Cancel>(FrameType::Cancel, enc, &frame.payload) {
                state.cancelled.lock().unwrap().insert(c.correlation_id);
            }
        }
        FrameType::Ping => {
            frame::encode_frame(out, FrameType::Pong, &frame.payload).unwrap();
        }
        ty if ty.is_event() => {
            let enc = encoding.lock().unwrap().unwrap_or(Encoding::Json);
            let Some(Ok(event)) = decode_event(ty, enc, &frame.payload) else {
                panic!("fake agent could not decode a {ty:?} event");
            };
            let cid = event.correlation_id().to_owned();
            state.seen.lock().unwrap().push(Seen {
                conn,
                kind: event.kind(),
                cid: cid.clone(),
            });
            if behaviour.silent {
                return;
            }
            let response = if behaviour.block {
                AgentResponse::block(403, "blocked by fake agent")
            } else {
                AgentResponse::allow()
            }
            .with_correlation_id(&cid);
            let mut answer = BytesMut::new();
            encoding::encode_frame(&mut answer, FrameType::AgentResponse, enc, &response).unwrap();
            if behaviour.delay.is_zero() {
                out.extend_from_slice(&answer);
            } else {
                let tx = ctl_tx.clone();
                let state = state.clone();
                async_global_executor::spawn(async move {
                    Timer::after(behaviour.delay).await;
                    if !state.cancelled.lock().unwrap().contains(&cid) {
                        let _ = tx.try_send(Ctl::Frame(answer));
                    }
                })
                .detach();
            }
        }
        _ => {}
    }
}

/// A pool configuration with short timers for tests.
pub fn fast_config() -> AgentPoolConfig {
    let mut config = AgentPoolConfig {
        request_timeout: Duration::from_secs(3),
        health_check_interval: Duration::from_millis(50),
        connect_timeout: Duration::from_secs(1),
        reconnect: agent_protocol_core::pool::Backoff {
            initial: Duration::from_millis(20),
            max: Duration::from_millis(200),
            multiplier: 2.0,
            jitter: 0.2,
        },
        idle_timeout: None,
        ..AgentPoolConfig::default()
    };
    config.client.connection.handshake.timeout = Duration::from_secs(1);
    config
}

/// Polls `cond` every 10 ms until it holds; panics with `what` after `timeout` (a failure
/// guard only: the condition normally holds within milliseconds).
pub async fn eventually(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for: {what}"
        );
        Timer::after(Duration::from_millis(10)).await;
    }
}

/// Runs `future`, panicking with `what` if it takes longer than `limit` (a failure guard).
pub async fn within<T>(what: &str, limit: Duration, future: impl Future<Output = T>) -> T {
    futures_lite::future::or(async { Some(future.await) }, async {
        Timer::after(limit).await;
        None
    })
    .await
    .unwrap_or_else(|| panic!("timed out after {limit:?}: {what}"))
}

/// Sleeps (to let background work happen; never what a test's verdict depends on).
pub async fn sleep(d: Duration) {
    Timer::after(d).await;
}

/// The pool's stats for one agent.
pub fn stats(pool: &AgentPool, agent: &str) -> agent_protocol_async_std::pool::AgentStats {
    pool.stats()
        .into_iter()
        .find(|s| s.agent_id == agent)
        .expect("agent in stats")
}

/// Request headers with this correlation id.
pub fn headers(cid: &str) -> agent_protocol_core::RequestHeadersEvent {
    let meta = agent_protocol_core::RequestMetadata {
        correlation_id: cid.into(),
        ..Default::default()
    };
    agent_protocol_core::RequestHeadersEvent::new(
        meta,
        "POST",
        "/upload",
        agent_protocol_core::Headers::from_iter([("host", "example.com")]),
    )
}

/// Request body chunk `index` of request `cid`.
pub fn chunk(cid: &str, index: u32, last: bool) -> agent_protocol_core::RequestBodyChunkEvent {
    agent_protocol_core::RequestBodyChunkEvent(agent_protocol_core::BodyChunk {
        correlation_id: cid.into(),
        data: bytes::Bytes::from(vec![b'x'; 16]),
        is_last: last,
        total_size: None,
        chunk_index: index,
        bytes_transferred: 0,
    })
}
