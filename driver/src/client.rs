//! [`AgentClient`]: one proxy->agent connection, driven by one task that owns the core's
//! [`ProxyConnection`].
//!
//! Callers hand requests to the task over a bounded channel ([`CHANNEL_BUFFER_SIZE`]) and get the
//! outcome through a one-shot. The task drains every queued command before writing, so a burst
//! of requests leaves in one `write` syscall; it reads up to 64 KiB per `read` and decodes every
//! frame in it. A request's deadline starts when the caller submits it, queueing included, and
//! the core guarantees exactly one outcome by then.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agent_protocol_core::handshake::Negotiated;
use agent_protocol_core::pool::Endpoint;
use agent_protocol_core::proxy::{ProxyConfig, ProxyConnection, ProxyEvent, RequestId};
use agent_protocol_core::{
    AgentResponse, CancelReason, Capabilities, ConfigUpdateRequest, ConnectionError, Encoding,
    Event, FlowAction, HealthState, MetricsReport, RequestError, SubmitError,
};
use bytes::BytesMut;
use tokio::sync::{mpsc, oneshot, Notify};

use crate::runtime::{self, ByteWrite, Connection, Runtime};

/// Reads at least this much per read call so many frames are decoded per syscall.
pub(crate) const READ_CHUNK: usize = 64 * 1024;

/// Once a large frame has passed, drops the grown read buffer for a fresh one of the usual
/// size: the memory goes back, and one read (one loop turn) stays near [`READ_CHUNK`] instead
/// of filling megabytes of spare room with small frames.
pub(crate) fn shrink_after_large_frame(read_buf: &mut BytesMut) {
    if read_buf.is_empty() && read_buf.capacity() > 4 * READ_CHUNK {
        *read_buf = BytesMut::with_capacity(READ_CHUNK);
    }
}

/// How long after a request's deadline its caller stops waiting for the connection task's
/// outcome and reports the timeout itself: a backstop for a task that cannot run (the task
/// reports timeouts at the deadline itself).
pub const REPLY_GRACE: Duration = Duration::from_millis(100);

/// Capacity of every caller->connection channel, the same on every transport.
pub const CHANNEL_BUFFER_SIZE: usize = 64;

/// Why a request through a client failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Could not connect.
    #[error("cannot connect to {endpoint}: {source}")]
    Connect {
        /// Where.
        endpoint: String,
        /// Why.
        source: std::io::Error,
    },
    /// The connection ended (or never opened).
    #[error("connection closed: {0}")]
    Closed(ConnectionError),
    /// The connection refused the request; nothing was sent.
    #[error(transparent)]
    Rejected(#[from] SubmitError),
    /// The request ended without an answer.
    #[error(transparent)]
    Request(#[from] RequestError),
    /// The deadline passed while the request was still queued.
    #[error("request timed out after {0:?} before it could be sent")]
    QueueTimeout(Duration),
}

impl ClientError {
    /// Whose fault, per the core's classification.
    pub fn fault(&self) -> agent_protocol_core::Fault {
        use agent_protocol_core::Fault;
        match self {
            Self::Connect { .. } | Self::Closed(_) => Fault::Closed,
            Self::Rejected(e) => e.fault(),
            Self::Request(e) => e.fault(),
            Self::QueueTimeout(_) => Fault::Timeout,
        }
    }

    /// Whether the agent asked us to pause (flow control).
    pub fn is_flow_control(&self) -> bool {
        matches!(
            self,
            Self::Rejected(SubmitError::FlowControlPaused { .. })
                | Self::Rejected(SubmitError::InsufficientCredit { .. })
        )
    }

    /// Whether this is a timeout.
    pub fn is_timeout(&self) -> bool {
        matches!(
            self,
            Self::QueueTimeout(_) | Self::Request(RequestError::Timeout(_))
        )
    }
}

/// Client settings.
#[derive(Clone, Debug)]
pub struct ClientConfig<R: Runtime> {
    /// The core connection's settings (handshake, request timeout, pings, caps).
    pub connection: ProxyConfig,
    /// Deadline for establishing the socket.
    pub connect_timeout: Duration,
    /// Settings only the runtime's extra transports use (on tokio: gRPC and its TLS).
    pub transport: R::TransportOptions,
}

impl<R: Runtime> Default for ClientConfig<R> {
    fn default() -> Self {
        let mut connection = ProxyConfig::default();
        if !cfg!(feature = "msgpack") {
            connection
                .handshake
                .encodings
                .retain(|e| *e == Encoding::Json);
        }
        Self {
            connection,
            connect_timeout: Duration::from_secs(5),
            transport: R::TransportOptions::default(),
        }
    }
}

/// Something the agent pushed that is not an answer.
#[derive(Clone, Debug)]
pub enum ControlMessage {
    /// Metrics.
    Metrics(MetricsReport),
    /// Configuration update request.
    ConfigUpdate(ConfigUpdateRequest),
}

/// Live state of a connection, shared with the pool without a lock.
#[derive(Debug)]
pub struct ConnectionStatus {
    connected: AtomicBool,
    /// Set together with `connected` the first time, never cleared.
    was_connected: AtomicBool,
    paused: AtomicBool,
    health: AtomicU8,
    in_flight: AtomicU32,
    in_flight_limit: AtomicU32,
    last_used_ms: AtomicU64,
    epoch: Instant,
    resumed: Notify,
}

impl ConnectionStatus {
    /// A fresh status: not connected, healthy, nothing in flight.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Default for ConnectionStatus {
    fn default() -> Self {
        Self {
            connected: AtomicBool::new(false),
            was_connected: AtomicBool::new(false),
            paused: AtomicBool::new(false),
            health: AtomicU8::new(HealthState::Healthy.as_u8()),
            in_flight: AtomicU32::new(0),
            in_flight_limit: AtomicU32::new(u32::MAX),
            last_used_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            resumed: Notify::new(),
        }
    }
}

impl ConnectionStatus {
    /// Whether the connection is open.
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    /// Whether the connection was ever open (handshake done, or a reverse connection's
    /// registration answered): a connection that is not open but was is dead, not starting.
    pub fn was_connected(&self) -> bool {
        self.was_connected.load(Ordering::Acquire)
    }

    pub(crate) fn mark_connected(&self) {
        self.was_connected.store(true, Ordering::Release);
        self.connected.store(true, Ordering::Release);
    }

    pub(crate) fn mark_disconnected(&self) {
        self.connected.store(false, Ordering::Release);
    }

    /// Whether the agent paused it.
    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::Acquire)
    }

    /// Health the agent last reported.
    pub fn health(&self) -> HealthState {
        HealthState::from_u8(self.health.load(Ordering::Acquire))
    }

    /// Requests awaiting answers.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Effective in-flight limit.
    pub fn in_flight_limit(&self) -> u32 {
        self.in_flight_limit.load(Ordering::Acquire)
    }

    /// Time since the connection was last used.
    pub fn idle_for(&self, now: Instant) -> Duration {
        let used = Duration::from_millis(self.last_used_ms.load(Ordering::Relaxed));
        now.saturating_duration_since(self.epoch + used)
    }

    fn touch(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.last_used_ms.store(ms, Ordering::Relaxed);
    }

    /// Resolves when the agent resumes a paused connection (or it closes).
    pub async fn resumed(&self) {
        self.resumed.notified().await
    }
}

/// A caller's request to a connection task, queued on the client's channel. Opaque: a
/// transport's connection task passes it to [`ClientDriver::handle_command`].
pub struct Command(CommandKind);

// `Send` is the common, hot variant; boxing its event would cost an allocation per request.
#[allow(clippy::large_enum_variant)]
enum CommandKind {
    Send {
        event: Event,
        deadline: Instant,
        reply: oneshot::Sender<Result<AgentResponse, ClientError>>,
    },
    Cancel {
        correlation_id: String,
        reason: CancelReason,
    },
    Ping {
        reply: oneshot::Sender<Result<Duration, ClientError>>,
    },
    /// The caller stopped waiting for its request under this id.
    Abandon {
        correlation_id: String,
    },
    /// The request under this id is over: drop its body streams and flow state.
    End {
        correlation_id: String,
    },
    Close,
}

/// One connection to an agent.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use agent_protocol_tokio::client::{AgentClient, ClientConfig};
/// use agent_protocol_core::{Event, RequestHeadersEvent, RequestMetadata, Headers};
/// let client = AgentClient::connect("/run/waf.sock", ClientConfig::default()).await?;
/// let meta = RequestMetadata { correlation_id: "c1".into(), ..Default::default() };
/// let answer = client
///     .send(Event::RequestHeaders(RequestHeadersEvent::new(meta, "GET", "/", Headers::new())))
///     .await?;
/// println!("{:?}", answer.decision);
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct AgentClient<R: Runtime> {
    handle: ClientHandle,
    runtime: std::marker::PhantomData<R>,
}

/// What an [`AgentClient`] holds, without the runtime type: the pool keeps these, and names the
/// runtime only where a timer is needed.
#[derive(Clone, Debug)]
pub(crate) struct ClientHandle {
    tx: mpsc::Sender<Command>,
    status: Arc<ConnectionStatus>,
    negotiated: Arc<Negotiated>,
    request_timeout: Duration,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Command")
    }
}

impl<R: Runtime> AgentClient<R> {
    /// Connects to an agent and completes the handshake, each within its deadline: a Unix
    /// socket (`unix:PATH`, an absolute path, or `*.sock`), or an endpoint the runtime adapter
    /// opens itself (on tokio with the `grpc` feature: a gRPC agent at `host:port`,
    /// `http://host:port` or, with TLS settings in [`ClientConfig::transport`],
    /// `https://host:port`).
    pub async fn connect(endpoint: &str, config: ClientConfig<R>) -> Result<Self, ClientError> {
        Self::connect_with_control(endpoint, config, None).await
    }

    /// Like [`AgentClient::connect`], forwarding the agent's metrics and config-update requests
    /// to `control` (as the pool does).
    pub async fn connect_with_control(
        endpoint: &str,
        config: ClientConfig<R>,
        control: Option<mpsc::Sender<ControlMessage>>,
    ) -> Result<Self, ClientError> {
        let parsed = Endpoint::parse(endpoint).map_err(|e| ClientError::Connect {
            endpoint: endpoint.to_owned(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()),
        })?;
        Self::connect_endpoint(&parsed, config, control).await
    }

    /// Like [`AgentClient::connect_with_control`], for an endpoint already parsed.
    pub async fn connect_endpoint(
        endpoint: &Endpoint,
        config: ClientConfig<R>,
        control: Option<mpsc::Sender<ControlMessage>>,
    ) -> Result<Self, ClientError> {
        let Endpoint::Uds(path) = endpoint else {
            return R::connect_other(endpoint, config, control).await;
        };
        let timeout = config.connect_timeout;
        let stream = runtime::timeout_at::<R, _>(Instant::now() + timeout, R::connect_unix(path))
            .await
            .unwrap_or_else(|_| {
                Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("connect timed out after {timeout:?}"),
                ))
            })
            .map_err(|source| ClientError::Connect {
                endpoint: endpoint.to_string(),
                source,
            })?;
        Self::handshake(stream, config, control).await
    }

    /// A client whose connection task was started elsewhere: a transport this crate does not
    /// know (gRPC) runs a [`ClientDriver`] fed from `tx`'s receiver and hands the rest here.
    pub fn from_parts(
        tx: mpsc::Sender<Command>,
        status: Arc<ConnectionStatus>,
        negotiated: Negotiated,
        request_timeout: Duration,
    ) -> Self {
        Self {
            handle: ClientHandle {
                tx,
                status,
                negotiated: Arc::new(negotiated),
                request_timeout,
            },
            runtime: std::marker::PhantomData,
        }
    }

    /// Runs the handshake over an already connected stream.
    pub async fn handshake(
        stream: R::Stream,
        config: ClientConfig<R>,
        control: Option<mpsc::Sender<ControlMessage>>,
    ) -> Result<Self, ClientError> {
        let now = Instant::now();
        let request_timeout = config.connection.request_timeout;
        let conn = ProxyConnection::new(config.connection, now);
        Self::spawn(stream, conn, request_timeout, control).await
    }

    /// Wraps a stream whose setup happened elsewhere (a reverse connection after registration).
    pub fn from_established(
        stream: R::Stream,
        config: ClientConfig<R>,
        negotiated: Negotiated,
        control: Option<mpsc::Sender<ControlMessage>>,
    ) -> Self {
        Self::start_established(stream, config, negotiated, control, None)
    }

    /// Like [`AgentClient::from_established`], but nothing is written and no request is taken
    /// until the returned [`Gate`] is opened: the reverse listener hands the client to the pool
    /// and only then writes the registration answer, which must precede every event on the wire.
    pub fn from_established_gated(
        stream: R::Stream,
        config: ClientConfig<R>,
        negotiated: Negotiated,
        control: Option<mpsc::Sender<ControlMessage>>,
    ) -> (Self, Gate) {
        let (tx, rx) = oneshot::channel();
        let client = Self::start_established(stream, config, negotiated, control, Some(rx));
        (client, Gate { tx })
    }

    fn start_established(
        stream: R::Stream,
        config: ClientConfig<R>,
        negotiated: Negotiated,
        control: Option<mpsc::Sender<ControlMessage>>,
        gate: Option<oneshot::Receiver<GateDecision>>,
    ) -> Self {
        let request_timeout = config.connection.request_timeout;
        let mut conn =
            ProxyConnection::new_established(config.connection, negotiated.clone(), Instant::now());
        set_wall_clock(&mut conn);
        let (tx, rx) = mpsc::channel(CHANNEL_BUFFER_SIZE);
        let status = Arc::new(ConnectionStatus::new());
        if gate.is_none() {
            status.mark_connected();
        }
        let (read, write) = stream.into_split();
        let driver = ClientDriver::build(conn, rx, status.clone(), control, None);
        R::spawn(driver.run_gated::<R>(gate, read, write));
        Self::from_parts(tx, status, negotiated, request_timeout)
    }

    async fn spawn(
        stream: R::Stream,
        mut conn: ProxyConnection,
        request_timeout: Duration,
        control: Option<mpsc::Sender<ControlMessage>>,
    ) -> Result<Self, ClientError> {
        set_wall_clock(&mut conn);
        let (tx, rx) = mpsc::channel(CHANNEL_BUFFER_SIZE);
        let status = Arc::new(ConnectionStatus::new());
        let (ready_tx, ready_rx) = oneshot::channel();
        let (read, write) = stream.into_split();
        let driver = ClientDriver::build(conn, rx, status.clone(), control, Some(ready_tx));
        R::spawn(driver.run::<R>(read, write));
        // The core enforces the handshake deadline, so this resolves in bounded time.
        let negotiated = ready_rx
            .await
            .map_err(|_| ClientError::Closed(ConnectionError::LocalClose))?
            .map_err(ClientError::Closed)?;
        Ok(Self::from_parts(tx, status, negotiated, request_timeout))
    }

    /// What the handshake settled.
    pub fn negotiated(&self) -> &Negotiated {
        &self.handle.negotiated
    }

    /// The agent's capabilities.
    pub fn capabilities(&self) -> &Capabilities {
        &self.handle.negotiated.capabilities
    }

    /// The negotiated encoding.
    pub fn encoding(&self) -> Encoding {
        self.handle.negotiated.encoding
    }

    /// Live status (health, pause, in-flight).
    pub fn status(&self) -> &Arc<ConnectionStatus> {
        &self.handle.status
    }

    /// Whether the connection is open.
    pub fn is_connected(&self) -> bool {
        self.handle.is_connected()
    }

    /// Sends an event and waits for the agent's answer, within the configured request timeout.
    pub async fn send(&self, event: Event) -> Result<AgentResponse, ClientError> {
        self.send_with_timeout(event, self.handle.request_timeout)
            .await
    }

    /// Sends an event with its own timeout.
    pub async fn send_with_timeout(
        &self,
        event: Event,
        timeout: Duration,
    ) -> Result<AgentResponse, ClientError> {
        self.send_until(event, Instant::now() + timeout).await
    }

    /// Sends an event that must be answered by `deadline` (queueing included).
    pub async fn send_until(
        &self,
        event: Event,
        deadline: Instant,
    ) -> Result<AgentResponse, ClientError> {
        self.handle.send_until::<R>(event, deadline).await
    }

    /// Cancels a pending request; the agent is told and the caller gets `Cancelled` at once.
    pub async fn cancel(&self, correlation_id: &str, reason: CancelReason) {
        self.handle.cancel(correlation_id, reason).await
    }

    /// Tells the connection that the request under this id is over although no RequestComplete
    /// was sent (the proxy answered the client itself, the client went away...): its body
    /// streams and per-request flow state are dropped now instead of at their idle expiry, so
    /// early-ended requests cannot fill the connection's body-stream table. Requests ended by a
    /// final answer (block, redirect, challenge), a timeout or a cancel need no call. Does not
    /// wait; an event of the request still pending is unaffected.
    pub fn end_request(&self, correlation_id: &str) {
        self.handle.end_request::<R>(correlation_id)
    }

    /// Sends a ping and waits for its pong: the round-trip time through the agent's event loop.
    /// Fails if another ping is outstanding or no pong arrives within the request timeout.
    pub async fn ping(&self) -> Result<Duration, ClientError> {
        self.handle.ping::<R>().await
    }

    /// Closes the connection; pending requests fail at once.
    pub async fn close(&self) {
        self.handle.close().await
    }

    pub(crate) fn into_handle(self) -> ClientHandle {
        self.handle
    }
}

impl ClientHandle {
    /// A handle whose connection task is `rx`'s owner (or nobody), for unit tests of the pool.
    #[cfg(test)]
    pub(crate) fn detached(status: Arc<ConnectionStatus>) -> (Self, mpsc::Receiver<Command>) {
        let (tx, rx) = mpsc::channel(1);
        let negotiated = Negotiated {
            encoding: Encoding::Json,
            capabilities: Capabilities::new("test", "test", "0"),
            protocol_version: agent_protocol_core::handshake::PROTOCOL_VERSION,
        };
        let handle = ClientHandle {
            tx,
            status,
            negotiated: Arc::new(negotiated),
            request_timeout: Duration::from_secs(1),
        };
        (handle, rx)
    }

    pub(crate) fn status(&self) -> &Arc<ConnectionStatus> {
        &self.status
    }

    pub(crate) fn is_connected(&self) -> bool {
        self.status.is_connected() && !self.tx.is_closed()
    }

    pub(crate) async fn send_until<R: Runtime>(
        &self,
        event: Event,
        deadline: Instant,
    ) -> Result<AgentResponse, ClientError> {
        let submitted = Instant::now();
        self.status.touch();
        let (reply, rx) = oneshot::channel();
        let correlation_id = event.correlation_id().to_owned();
        let command = Command(CommandKind::Send {
            event,
            deadline,
            reply,
        });
        // The channel almost always has room: only a full one needs a timer.
        match self.tx.try_send(command) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Closed(_)) => {
                return Err(ClientError::Closed(ConnectionError::LocalClose))
            }
            Err(mpsc::error::TrySendError::Full(command)) => {
                match runtime::timeout_at::<R, _>(deadline, self.tx.send(command)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return Err(ClientError::Closed(ConnectionError::LocalClose)),
                    Err(_) => {
                        return Err(ClientError::QueueTimeout(
                            deadline.saturating_duration_since(submitted),
                        ))
                    }
                }
            }
        }
        // If the caller stops waiting, tell the connection so the agent stops working on it and
        // the in-flight slot frees now rather than at the deadline.
        let mut guard = AbandonGuard {
            tx: &self.tx,
            correlation_id: Some(correlation_id),
        };
        // The connection task answers by the deadline; this wait has its own deadline anyway,
        // a little later so the task's answer (the informative one) normally wins, in case the
        // task is stalled. Then the guard abandons the request.
        let outcome = match runtime::timeout_at::<R, _>(deadline + REPLY_GRACE, rx).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(_)) => Err(ClientError::Closed(ConnectionError::LocalClose)),
            Err(_) => {
                return Err(ClientError::Request(RequestError::Timeout(
                    deadline.saturating_duration_since(submitted),
                )))
            }
        };
        guard.correlation_id = None;
        outcome
    }

    pub(crate) async fn cancel(&self, correlation_id: &str, reason: CancelReason) {
        let _ = self
            .tx
            .send(Command(CommandKind::Cancel {
                correlation_id: correlation_id.to_owned(),
                reason,
            }))
            .await;
    }

    pub(crate) fn end_request<R: Runtime>(&self, correlation_id: &str) {
        let command = Command(CommandKind::End {
            correlation_id: correlation_id.to_owned(),
        });
        match self.tx.try_send(command) {
            // Closed: the connection's tables went with it.
            Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => {}
            Err(mpsc::error::TrySendError::Full(command)) => {
                // A busy connection: queue it behind the others rather than leave the stream
                // to the idle expiry.
                let tx = self.tx.clone();
                R::spawn(async move {
                    let _ = tx.send(command).await;
                });
            }
        }
    }

    async fn ping<R: Runtime>(&self) -> Result<Duration, ClientError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command(CommandKind::Ping { reply }))
            .await
            .map_err(|_| ClientError::Closed(ConnectionError::LocalClose))?;
        match runtime::timeout_at::<R, _>(Instant::now() + self.request_timeout, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(ClientError::Closed(ConnectionError::LocalClose)),
            Err(_) => Err(ClientError::QueueTimeout(self.request_timeout)),
        }
    }

    pub(crate) async fn close(&self) {
        let _ = self.tx.send(Command(CommandKind::Close)).await;
    }
}

/// Tells the core the wall-clock time (Unix milliseconds) that corresponds to `Instant::now()`,
/// for the timestamps it writes into events.
pub fn set_wall_clock(conn: &mut ProxyConnection) {
    let unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    conn.set_unix_time(Instant::now(), unix_ms);
}

struct AbandonGuard<'a> {
    tx: &'a mpsc::Sender<Command>,
    correlation_id: Option<String>,
}

impl Drop for AbandonGuard<'_> {
    fn drop(&mut self) {
        if let Some(correlation_id) = self.correlation_id.take() {
            // Best effort: if the channel is full the request's deadline cleans up instead.
            let _ = self
                .tx
                .try_send(Command(CommandKind::Abandon { correlation_id }));
        }
    }
}

type Reply = oneshot::Sender<Result<AgentResponse, ClientError>>;

enum GateDecision {
    Open(bytes::Bytes),
    Refuse(bytes::Bytes),
}

/// Holds back a gated client (see [`AgentClient::from_established_gated`]).
#[derive(Debug)]
pub struct Gate {
    tx: oneshot::Sender<GateDecision>,
}

impl std::fmt::Debug for GateDecision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GateDecision")
    }
}

impl Gate {
    /// Writes `preamble` (the registration answer) first, then lets traffic flow.
    pub fn open(self, preamble: bytes::Bytes) {
        let _ = self.tx.send(GateDecision::Open(preamble));
    }

    /// Writes `preamble` (a refusal) and closes the connection.
    pub fn refuse(self, preamble: bytes::Bytes) {
        let _ = self.tx.send(GateDecision::Refuse(preamble));
    }
}

/// The state a connection task keeps beside the core connection: callers' one-shots, the ping
/// waiter, the control channel, and the status shared with the pool.
///
/// [`AgentClient`] runs one over a byte stream. A transport that carries messages instead
/// (gRPC) runs its own loop around one: feed `conn`, pass each [`Command`] from the client's
/// channel to [`ClientDriver::handle_command`], call [`ClientDriver::dispatch_events`] and
/// [`ClientDriver::publish_status`] after each step and [`ClientDriver::wind_down`] at the end.
pub struct ClientDriver {
    /// The core connection.
    pub conn: ProxyConnection,
    /// Commands from the [`AgentClient`] handles.
    pub rx: mpsc::Receiver<Command>,
    status: Arc<ConnectionStatus>,
    waiters: std::collections::HashMap<RequestId, Reply>,
    ping_waiter: Option<(u64, oneshot::Sender<Result<Duration, ClientError>>)>,
    control: Option<mpsc::Sender<ControlMessage>>,
    ready: Option<oneshot::Sender<Result<Negotiated, ConnectionError>>>,
    max_event_body: usize,
}

impl std::fmt::Debug for ClientDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientDriver")
            .field("state", &self.conn.state())
            .field("waiters", &self.waiters.len())
            .finish_non_exhaustive()
    }
}

impl ClientDriver {
    /// A driver for a message-transport connection; `ready` resolves when the handshake
    /// completes or the connection closes first.
    pub fn new(
        conn: ProxyConnection,
        rx: mpsc::Receiver<Command>,
        status: Arc<ConnectionStatus>,
        control: Option<mpsc::Sender<ControlMessage>>,
        ready: oneshot::Sender<Result<Negotiated, ConnectionError>>,
    ) -> Self {
        Self::build(conn, rx, status, control, Some(ready))
    }

    fn build(
        conn: ProxyConnection,
        rx: mpsc::Receiver<Command>,
        status: Arc<ConnectionStatus>,
        control: Option<mpsc::Sender<ControlMessage>>,
        ready: Option<oneshot::Sender<Result<Negotiated, ConnectionError>>>,
    ) -> Self {
        Self {
            conn,
            rx,
            status,
            waiters: Default::default(),
            ping_waiter: None,
            control,
            ready,
            max_event_body: usize::MAX,
        }
    }

    /// Refuses, before sending, events whose body is longer than `max` bytes (a transport
    /// whose messages have a size limit: one over it would end the whole stream).
    pub fn set_max_event_body(&mut self, max: usize) {
        self.max_event_body = max;
    }

    async fn run_gated<R: Runtime>(
        self,
        gate: Option<oneshot::Receiver<GateDecision>>,
        read: <R::Stream as Connection>::ReadHalf,
        mut write: <R::Stream as Connection>::WriteHalf,
    ) {
        if let Some(gate) = gate {
            match gate.await {
                Ok(GateDecision::Open(preamble)) => {
                    if runtime::write_all(&mut write, &preamble).await.is_err() {
                        return self.abandon(write).await;
                    }
                    self.status.mark_connected();
                }
                Ok(GateDecision::Refuse(preamble)) => {
                    let _ = runtime::write_all(&mut write, &preamble).await;
                    return self.abandon(write).await;
                }
                Err(_) => return self.abandon(write).await,
            }
        }
        self.run::<R>(read, write).await
    }

    async fn abandon<W: ByteWrite>(mut self, write: W) {
        self.conn.close();
        self.finish(write).await
    }

    /// The connection loop. Fairness: an agent can keep the socket readable forever, so the
    /// read is the last branch of the loop's `select!`; bytes to write, the next deadline and
    /// callers' commands come first, and each is ready only when it has work. A turn reads once
    /// (at most the read buffer's spare room), then handles every deadline that passed while
    /// that input was decoded, so a request ends within its timeout whatever the agent sends.
    async fn run<R: Runtime>(
        mut self,
        mut read: <R::Stream as Connection>::ReadHalf,
        mut write: <R::Stream as Connection>::WriteHalf,
    ) {
        // Bytes that came with the handshake or registration answer may already be in the
        // connection's buffer, possibly the start of a frame: reading continues after them.
        let mut read_buf = std::mem::take(self.conn.read_buffer());
        if !read_buf.is_empty() {
            self.process_read(&mut read_buf);
        }
        let mut write_buf = BytesMut::new();
        let mut commands_open = true;
        loop {
            self.dispatch_events();
            if write_buf.is_empty() {
                self.conn.take_transmit(&mut write_buf);
            }
            let closed = self.conn.state() == agent_protocol_core::proxy::ConnectionState::Closed;
            if closed && write_buf.is_empty() {
                break;
            }
            let deadline = self.conn.poll_timeout();
            if !closed && read_buf.capacity() - read_buf.len() < READ_CHUNK / 4 {
                read_buf.reserve(READ_CHUNK);
            }
            tokio::select! {
                biased;
                r = runtime::write_buf(&mut write, &mut write_buf), if !write_buf.is_empty() => {
                    if let Err(e) = r {
                        self.conn.handle_io_error(e.into());
                        write_buf.clear();
                    } else if write_buf.is_empty() {
                        write_buf.clear();
                    }
                }
                _ = runtime::sleep_until_opt::<R>(deadline), if deadline.is_some() && !closed => {
                    self.conn.handle_timeout(Instant::now());
                }
                cmd = self.rx.recv(), if commands_open && !closed => {
                    match cmd {
                        Some(cmd) => {
                            let now = Instant::now();
                            self.handle_command(now, cmd);
                            // Drain the burst so it leaves in one write.
                            for _ in 0..CHANNEL_BUFFER_SIZE {
                                match self.rx.try_recv() {
                                    Ok(cmd) => self.handle_command(now, cmd),
                                    Err(_) => break,
                                }
                            }
                        }
                        None => {
                            commands_open = false;
                            self.conn.close();
                        }
                    }
                }
                r = runtime::read_buf(&mut read, &mut read_buf), if !closed => {
                    match r {
                        Ok(0) => self.conn.handle_eof(),
                        Ok(_) => self.process_read(&mut read_buf),
                        Err(e) => self.conn.handle_io_error(e.into()),
                    }
                }
            }
            self.publish_status();
        }
        self.finish(write).await
    }

    /// Hands what was read to the connection, then handles the deadlines that passed meanwhile:
    /// decoding a large read takes time, and the timer branch must not be the only way a
    /// deadline is noticed. An incomplete frame stays at the front of `read_buf`.
    fn process_read(&mut self, read_buf: &mut BytesMut) {
        std::mem::swap(read_buf, self.conn.read_buffer());
        self.conn.process_input(Instant::now());
        std::mem::swap(read_buf, self.conn.read_buffer());
        shrink_after_large_frame(read_buf);
        let now = Instant::now();
        if self.conn.poll_timeout().is_some_and(|due| due <= now) {
            self.conn.handle_timeout(now);
        }
    }

    async fn finish<W: ByteWrite>(mut self, mut write: W) {
        self.wind_down();
        let _ = runtime::shutdown(&mut write).await;
    }

    /// After the connection closed: deliver its last outcomes, mark it disconnected, and fail
    /// callers still queued with a clear error rather than a dropped channel.
    pub fn wind_down(&mut self) {
        self.dispatch_events();
        self.status.mark_disconnected();
        self.status.in_flight.store(0, Ordering::Release);
        self.status.resumed.notify_waiters();
        self.rx.close();
        while let Ok(cmd) = self.rx.try_recv() {
            if let CommandKind::Send { reply, .. } = cmd.0 {
                let _ = reply.send(Err(ClientError::Closed(ConnectionError::LocalClose)));
            }
        }
    }

    /// Carries out one caller's command on the core connection.
    pub fn handle_command(&mut self, now: Instant, cmd: Command) {
        match cmd.0 {
            CommandKind::Send { event, reply, .. } if event.body_len() > self.max_event_body => {
                let too_large = agent_protocol_core::frame::PayloadTooLarge {
                    len: event.body_len(),
                    max: self.max_event_body,
                };
                let _ = reply.send(Err(ClientError::Rejected(SubmitError::Encode(
                    agent_protocol_core::encoding::EncodeError::TooLarge(too_large),
                ))));
            }
            CommandKind::Send {
                event,
                deadline,
                reply,
            } => {
                if deadline <= now {
                    let _ = reply.send(Err(ClientError::QueueTimeout(Duration::ZERO)));
                    return;
                }
                match self.conn.send_event(now, event, Some(deadline - now)) {
                    Ok(id) => {
                        self.waiters.insert(id, reply);
                    }
                    Err(e) => {
                        let _ = reply.send(Err(match e {
                            SubmitError::Closed(c) => ClientError::Closed(c),
                            other => ClientError::Rejected(other),
                        }));
                    }
                }
            }
            CommandKind::Cancel {
                correlation_id,
                reason,
            } => {
                self.conn.cancel(now, &correlation_id, reason);
            }
            CommandKind::Ping { reply } => match self.conn.ping(now) {
                Some(sequence) => self.ping_waiter = Some((sequence, reply)),
                None => {
                    let _ = reply.send(Err(ClientError::Closed(ConnectionError::Protocol(
                        "a ping is already outstanding or the connection is not open".into(),
                    ))));
                }
            },
            CommandKind::Abandon { correlation_id } => {
                // Only if the request under this id is still the abandoned one: by now a new
                // request (another caller's) may have taken the id over.
                let abandoned = self
                    .conn
                    .pending_id(&correlation_id)
                    .and_then(|id| self.waiters.get(&id))
                    .is_some_and(|reply| reply.is_closed());
                if abandoned {
                    self.conn
                        .cancel(now, &correlation_id, CancelReason::ClientDisconnect);
                }
            }
            CommandKind::End { correlation_id } => {
                self.conn.end_request(&correlation_id);
            }
            CommandKind::Close => self.conn.close(),
        }
    }

    /// Delivers what the core produced: answers and failures to their callers, health and
    /// pause state to the shared status, metrics and config requests to the control channel.
    pub fn dispatch_events(&mut self) {
        while let Some(event) = self.conn.poll_event() {
            match event {
                ProxyEvent::Connected(negotiated) => {
                    self.status.mark_connected();
                    if let Some(ready) = self.ready.take() {
                        let _ = ready.send(Ok(negotiated));
                    }
                }
                ProxyEvent::Response { id, response, .. } => {
                    if let Some(reply) = self.waiters.remove(&id) {
                        let _ = reply.send(Ok(response));
                    }
                }
                ProxyEvent::Failed { id, error, .. } => {
                    if let Some(reply) = self.waiters.remove(&id) {
                        let _ = reply.send(Err(match error {
                            RequestError::ConnectionClosed(c) => ClientError::Closed(c),
                            other => ClientError::Request(other),
                        }));
                    }
                }
                ProxyEvent::FlowControl(signal) => {
                    if signal.action != FlowAction::Pause {
                        self.status.resumed.notify_waiters();
                    }
                }
                ProxyEvent::Pong { sequence, rtt } => {
                    if let Some((seq, reply)) = self.ping_waiter.take() {
                        if seq == sequence {
                            let _ = reply.send(Ok(rtt));
                        } else {
                            self.ping_waiter = Some((seq, reply));
                        }
                    }
                }
                ProxyEvent::Health(_) => {}
                ProxyEvent::Metrics(report) => self.forward(ControlMessage::Metrics(report)),
                ProxyEvent::ConfigUpdate(req) => self.forward(ControlMessage::ConfigUpdate(req)),
                ProxyEvent::UnroutableResponse { correlation_id } => {
                    tracing::debug!(%correlation_id, "answer for no pending request (late or unknown)");
                }
                ProxyEvent::Notice(notice) => tracing::debug!(?notice, "agent connection notice"),
                ProxyEvent::Closed(error) => {
                    tracing::debug!(%error, "agent connection closed");
                    if let Some(ready) = self.ready.take() {
                        let _ = ready.send(Err(error));
                    }
                }
            }
        }
    }

    fn forward(&self, message: ControlMessage) {
        if let Some(tx) = &self.control {
            // Bounded: a flood of reports is dropped rather than buffered without limit.
            let _ = tx.try_send(message);
        }
    }

    /// Copies in-flight count, pause, health and limits into the status the pool reads.
    pub fn publish_status(&self) {
        let s = &self.status;
        s.in_flight
            .store(self.conn.in_flight() as u32, Ordering::Release);
        s.paused.store(self.conn.is_paused(), Ordering::Release);
        s.health
            .store(self.conn.health().as_u8(), Ordering::Release);
        s.in_flight_limit
            .store(self.conn.in_flight_limit(), Ordering::Release);
    }
}
