//! The scripted fake agent the pool scenarios (`pool_basic`, `pool_flow`, `pool_failures`) run
//! against, plus their shared configuration and event builders.
//!
//! [`FakeAgent`] is hand-rolled on the core's frame codec, agent handshake and payload
//! encoding, independent of the driver's `AgentServer`, so the pool is tested against a second
//! implementation of the agent side. It is generic over the [`Runtime`] like the pool itself:
//! it listens with [`bind_unix_socket`], accepts with [`Listener::accept_stream`], spawns with
//! [`Runtime::spawn`] and does its I/O through [`runtime::read_buf`]/[`runtime::write_all`], so
//! the same agent runs on either adapter.
//!
//! It records every event it receives with the id of the connection it came on, answers after
//! a configurable delay (or never, or with a block), and can push control frames (flow control,
//! health, metrics, config updates), write garbage, drop one connection, or die and come back.

#![allow(dead_code)]

use std::collections::HashSet;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agent_protocol_core::capabilities::EventKind;
use agent_protocol_core::encoding::{self, decode_event, decode_payload};
use agent_protocol_core::frame::{self, Decoded, Frame, FrameDecoder, FrameType};
use agent_protocol_core::handshake::{
    AgentHandshake, AgentHandshakeConfig, Negotiated, PROTOCOL_VERSION,
};
use agent_protocol_core::{
    AgentResponse, Cancel, Capabilities, Encoding, FlowAction, FlowControl, HealthState,
    HealthStatus, MetricsReport,
};
use agent_protocol_driver::client::AgentClient;
use agent_protocol_driver::pool::{AgentPool, AgentPoolConfig, AgentStats};
use agent_protocol_driver::runtime::{self, Connection};
use agent_protocol_driver::server::{bind_unix_socket, Listener};
use agent_protocol_driver::Runtime;
use bytes::BytesMut;
use tokio::sync::{mpsc, oneshot};

use crate::support;

/// Hang guard for conditions that normally hold within milliseconds.
pub const WAIT: Duration = Duration::from_secs(5);

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

/// A spawned task that stops when `cancel` is dropped and reports its end through `done`.
struct TaskHandle {
    cancel: Option<oneshot::Sender<()>>,
    done: oneshot::Receiver<()>,
    alive: Arc<AtomicBool>,
}

impl TaskHandle {
    /// Spawns `task(cancelled)` on `R`; the task must return once `cancelled` resolves.
    fn spawn<R: Runtime, F>(task: impl FnOnce(oneshot::Receiver<()>) -> F) -> Self
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let (cancel, cancelled) = oneshot::channel();
        let (done_tx, done) = oneshot::channel();
        let alive = Arc::new(AtomicBool::new(true));
        let guard = EndGuard {
            alive: alive.clone(),
            _done: done_tx,
        };
        let future = task(cancelled);
        R::spawn(async move {
            // Dropped after the task's own locals (its socket), so "done" means "closed".
            let _guard = guard;
            future.await;
        });
        Self {
            cancel: Some(cancel),
            done,
            alive,
        }
    }

    fn is_alive(&self) -> bool {
        self.alive.load(Ordering::SeqCst)
    }

    /// Cancels the task and waits until it has ended.
    async fn stop(mut self) {
        self.cancel.take();
        let _ = (&mut self.done).await;
    }
}

struct EndGuard {
    alive: Arc<AtomicBool>,
    _done: oneshot::Sender<()>,
}

impl Drop for EndGuard {
    fn drop(&mut self) {
        self.alive.store(false, Ordering::SeqCst);
    }
}

struct ConnHandle {
    id: usize,
    ctl: mpsc::UnboundedSender<Ctl>,
    task: TaskHandle,
    encoding: Arc<Mutex<Option<Encoding>>>,
}

/// State shared by the agent's tasks.
struct AgentState {
    encodings: Vec<Encoding>,
    behaviour: Mutex<Behaviour>,
    conns: Mutex<Vec<ConnHandle>>,
    seen: Mutex<Vec<Seen>>,
    cancelled: Mutex<HashSet<String>>,
    negotiated: Mutex<Vec<Encoding>>,
    next_conn: AtomicUsize,
}

/// A fake agent listening on a Unix socket, running its tasks on `R`.
pub struct FakeAgent<R: Runtime> {
    pub path: PathBuf,
    state: Arc<AgentState>,
    listener: Option<TaskHandle>,
    runtime: PhantomData<R>,
}

impl<R: Runtime> FakeAgent<R> {
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
            runtime: PhantomData,
        };
        agent.restart().await;
        agent
    }

    /// `unix:` endpoint string.
    pub fn endpoint(&self) -> String {
        format!("unix:{}", self.path.display())
    }

    /// (Re)binds the socket and accepts connections. The socket is bound when this returns.
    pub async fn restart(&mut self) {
        let listener: Listener<R> = bind_unix_socket::<R>(&self.path, 0o600)
            .expect("bind agent socket")
            .into();
        let state = self.state.clone();
        self.listener = Some(TaskHandle::spawn::<R, _>(|mut cancelled| async move {
            loop {
                tokio::select! {
                    biased;
                    _ = &mut cancelled => break,
                    accepted = listener.accept_stream() => match accepted {
                        Ok(stream) => {
                            adopt::<R>(&state, stream, None);
                        }
                        Err(_) => break,
                    },
                }
            }
            // Dropping the listener removes the socket file.
        }));
    }

    /// Kills the agent: stops accepting, removes the socket file, and closes every connection
    /// (the proxy reads end of stream). Everything is closed when this returns.
    pub async fn kill(&mut self) {
        if let Some(listener) = self.listener.take() {
            listener.stop().await;
        }
        let conns: Vec<ConnHandle> = self.state.conns.lock().unwrap().drain(..).collect();
        for c in conns {
            c.task.stop().await;
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

    /// Connections accepted (or adopted) so far, ever.
    pub fn accepted(&self) -> usize {
        self.state.next_conn.load(Ordering::SeqCst)
    }

    /// Ids of the open connections, in accept order.
    pub fn live_ids(&self) -> Vec<usize> {
        self.state
            .conns
            .lock()
            .unwrap()
            .iter()
            .filter(|c| c.task.is_alive())
            .map(|c| c.id)
            .collect()
    }

    /// Closes one connection from the agent side.
    pub fn close_connection(&self, id: usize) {
        for c in self.state.conns.lock().unwrap().iter() {
            if c.id == id {
                let _ = c.ctl.send(Ctl::Close);
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
            let _ = c.ctl.send(Ctl::Frame(out));
        }
    }

    /// Serves `stream` as an already established connection (JSON, no handshake): the agent
    /// end of a reverse connection.
    pub fn adopt_established(&self, stream: R::Stream) -> usize {
        adopt::<R>(&self.state, stream, Some(Encoding::Json))
    }
}

impl<R: Runtime> Drop for FakeAgent<R> {
    /// Stops every task (without waiting): nothing outlives the scenario on a shared executor.
    fn drop(&mut self) {
        self.listener.take();
        self.state.conns.lock().unwrap().clear();
    }
}

/// Serves one stream; `established` skips the handshake (reverse connections).
fn adopt<R: Runtime>(
    state: &Arc<AgentState>,
    stream: R::Stream,
    established: Option<Encoding>,
) -> usize {
    let id = state.next_conn.fetch_add(1, Ordering::SeqCst);
    let (tx, rx) = mpsc::unbounded_channel();
    let encoding = Arc::new(Mutex::new(established));
    let task = {
        let (state, tx, encoding) = (state.clone(), tx.clone(), encoding.clone());
        TaskHandle::spawn::<R, _>(move |cancelled| {
            serve::<R>(stream, id, state, rx, tx, encoding, cancelled)
        })
    };
    state.conns.lock().unwrap().push(ConnHandle {
        id,
        ctl: tx,
        task,
        encoding,
    });
    id
}

async fn serve<R: Runtime>(
    stream: R::Stream,
    id: usize,
    state: Arc<AgentState>,
    mut ctl: mpsc::UnboundedReceiver<Ctl>,
    ctl_tx: mpsc::UnboundedSender<Ctl>,
    encoding: Arc<Mutex<Option<Encoding>>>,
    mut cancelled: oneshot::Receiver<()>,
) {
    let (mut rd, mut wr) = stream.into_split();
    let mut decoder = FrameDecoder::new();
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let hs_config = AgentHandshakeConfig::default()
        .with_capabilities(
            Capabilities::new("fake", "fake", "1")
                .with_all_events()
                .with_control_features(),
        )
        .with_encodings(state.encodings.iter().copied())
        .with_timeout(Duration::from_secs(5));
    loop {
        tokio::select! {
            biased;
            _ = &mut cancelled => return,
            c = ctl.recv() => match c {
                Some(Ctl::Frame(bytes)) => {
                    if runtime::write_all(&mut wr, &bytes).await.is_err() {
                        return;
                    }
                }
                Some(Ctl::Close) | None => return,
            },
            r = runtime::read_buf(&mut rd, &mut buf) => {
                match r {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                loop {
                    match decoder.decode(&mut buf) {
                        Ok(Some(Decoded::Frame(frame))) => {
                            let mut out = BytesMut::new();
                            handle::<R>(&state, id, &hs_config, &encoding, &ctl_tx, frame, &mut out);
                            if !out.is_empty() && runtime::write_all(&mut wr, &out).await.is_err() {
                                return;
                            }
                        }
                        Ok(Some(Decoded::Skipped { .. })) => {}
                        Ok(None) => break,
                        Err(_) => return,
                    }
                }
            }
        }
    }
}

fn handle<R: Runtime>(
    state: &Arc<AgentState>,
    conn: usize,
    hs_config: &AgentHandshakeConfig,
    encoding: &Arc<Mutex<Option<Encoding>>>,
    ctl_tx: &mpsc::UnboundedSender<Ctl>,
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
                R::spawn(async move {
                    support::sleep::<R>(behaviour.delay).await;
                    if !state.cancelled.lock().unwrap().contains(&cid) {
                        let _ = tx.send(Ctl::Frame(answer));
                    }
                });
            }
        }
        _ => {}
    }
}

/// Two connected `R` streams over a fresh Unix socket in `dir` (there is no runtime-generic
/// socketpair): the first is the connecting end, the second the accepted one.
pub async fn stream_pair<R: Runtime>(dir: &Path) -> (R::Stream, R::Stream) {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let path = dir.join(format!("pair{}.sock", NEXT.fetch_add(1, Ordering::SeqCst)));
    // Dropped (and its file removed) once the pair is connected.
    let listener: Listener<R> = bind_unix_socket::<R>(&path, 0o600).unwrap().into();
    let connecting = R::connect_unix(&path).await.unwrap();
    let accepted = listener.accept_stream().await.unwrap();
    (connecting, accepted)
}

/// A reverse connection of agent `id` as the reverse listener would hand it to the pool
/// (registered, JSON), whose agent end `agent` serves. Metrics it reports reach the pool
/// through [`AgentPool::control_sender`].
pub async fn reverse_client<R: Runtime>(
    dir: &Path,
    pool: &AgentPool<R>,
    agent: &FakeAgent<R>,
    id: &str,
) -> AgentClient<R> {
    let (proxy_end, agent_end) = stream_pair::<R>(dir).await;
    agent.adopt_established(agent_end);
    AgentClient::from_established(
        proxy_end,
        pool.config().client.clone(),
        negotiated(id),
        Some(pool.control_sender(id)),
    )
}

/// What a reverse registration of agent `id` negotiated (JSON, every event).
pub fn negotiated(id: &str) -> Negotiated {
    Negotiated {
        encoding: Encoding::Json,
        capabilities: Capabilities::new(id, id, "1").with_all_events(),
        protocol_version: PROTOCOL_VERSION,
    }
}

/// A pool configuration with short timers for tests.
pub fn fast_config<R: Runtime>() -> AgentPoolConfig<R> {
    let mut config = AgentPoolConfig::default()
        .with_request_timeout(Duration::from_secs(3))
        .with_health_check_interval(Duration::from_millis(50))
        .with_connect_timeout(Duration::from_secs(1))
        .with_reconnect(
            agent_protocol_core::pool::Backoff::default()
                .with_initial(Duration::from_millis(20))
                .with_max(Duration::from_millis(200))
                .with_multiplier(2.0)
                .with_jitter(0.2),
        )
        .with_idle_timeout(None);
    config.client.connection.handshake.timeout = Duration::from_secs(1);
    config
}

/// The pool's stats for one agent.
pub fn stats<R: Runtime>(pool: &AgentPool<R>, agent: &str) -> AgentStats {
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

/// A guardrail inspection with this correlation id (traffic that pins nothing).
pub fn guardrail(cid: &str) -> agent_protocol_core::GuardrailInspectEvent {
    agent_protocol_core::GuardrailInspectEvent {
        correlation_id: cid.into(),
        ..Default::default()
    }
}
