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
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, Notify};

use crate::transport::{ReadHalf, Stream, WriteHalf, READ_CHUNK};

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
pub struct ClientConfig {
    /// The core connection's settings (handshake, request timeout, pings, caps).
    pub connection: ProxyConfig,
    /// Deadline for establishing the socket.
    pub connect_timeout: Duration,
    /// Settings used only for gRPC endpoints (TLS).
    #[cfg(feature = "grpc")]
    pub grpc: crate::grpc::GrpcOptions,
}

impl Default for ClientConfig {
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
            #[cfg(feature = "grpc")]
            grpc: crate::grpc::GrpcOptions::default(),
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
    paused: AtomicBool,
    health: AtomicU8,
    in_flight: AtomicU32,
    in_flight_limit: AtomicU32,
    last_used_ms: AtomicU64,
    epoch: Instant,
    resumed: Notify,
}

impl ConnectionStatus {
    pub(crate) fn new() -> Self {
        Self {
            connected: AtomicBool::new(false),
            paused: AtomicBool::new(false),
            health: AtomicU8::new(HealthState::Healthy.as_u8()),
            in_flight: AtomicU32::new(0),
            in_flight_limit: AtomicU32::new(u32::MAX),
            last_used_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            resumed: Notify::new(),
        }
    }

    /// Whether the connection is open.
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
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

    pub(crate) fn touch(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.last_used_ms.store(ms, Ordering::Relaxed);
    }

    /// Resolves when the agent resumes a paused connection (or it closes).
    pub async fn resumed(&self) {
        self.resumed.notified().await
    }
}

// `Send` is the common, hot variant; boxing its event would cost an allocation per request.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Command {
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
pub struct AgentClient {
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

impl AgentClient {
    /// Connects to an agent and completes the handshake, each within its deadline: a Unix
    /// socket (`unix:PATH`, an absolute path, or `*.sock`), or, with the `grpc` feature (on by
    /// default), a gRPC agent at `host:port`, `http://host:port` or (feature `tls`, with
    /// [`ClientConfig::grpc`] naming the CA) `https://host:port`.
    pub async fn connect(endpoint: &str, config: ClientConfig) -> Result<Self, ClientError> {
        Self::connect_with_control(endpoint, config, None).await
    }

    /// Like [`AgentClient::connect`], forwarding the agent's metrics and config-update requests
    /// to `control` (as the pool does).
    pub async fn connect_with_control(
        endpoint: &str,
        config: ClientConfig,
        control: Option<mpsc::Sender<ControlMessage>>,
    ) -> Result<Self, ClientError> {
        let parsed = Endpoint::parse(endpoint).map_err(|e| ClientError::Connect {
            endpoint: endpoint.to_owned(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()),
        })?;
        let stream = match &parsed {
            Endpoint::Uds(_) => Stream::connect(&parsed, config.connect_timeout).await,
            #[cfg(feature = "grpc")]
            Endpoint::Grpc { .. } => {
                return crate::grpc::client::connect(&parsed, config, control).await
            }
            #[cfg(not(feature = "grpc"))]
            Endpoint::Grpc { .. } => Err(std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                "gRPC endpoints need the `grpc` feature of agent-protocol-tokio",
            )),
        }
        .map_err(|source| ClientError::Connect {
            endpoint: endpoint.to_owned(),
            source,
        })?;
        Self::handshake(stream, config, control).await
    }

    /// A client whose driver task was started elsewhere (the gRPC transport).
    #[cfg(feature = "grpc")]
    pub(crate) fn from_parts(
        tx: mpsc::Sender<Command>,
        status: Arc<ConnectionStatus>,
        negotiated: Negotiated,
        request_timeout: Duration,
    ) -> Self {
        Self {
            tx,
            status,
            negotiated: Arc::new(negotiated),
            request_timeout,
        }
    }

    /// Runs the handshake over an already connected stream.
    pub async fn handshake(
        stream: Stream,
        config: ClientConfig,
        control: Option<mpsc::Sender<ControlMessage>>,
    ) -> Result<Self, ClientError> {
        let now = Instant::now();
        let request_timeout = config.connection.request_timeout;
        let conn = ProxyConnection::new(config.connection, now);
        Self::spawn(stream, conn, request_timeout, control).await
    }

    /// Wraps a stream whose setup happened elsewhere (a reverse connection after registration).
    pub fn from_established(
        stream: Stream,
        config: ClientConfig,
        negotiated: Negotiated,
        control: Option<mpsc::Sender<ControlMessage>>,
    ) -> Self {
        Self::start_established(stream, config, negotiated, control, None)
    }

    /// Like [`AgentClient::from_established`], but nothing is written and no request is taken
    /// until the returned [`Gate`] is opened: the reverse listener hands the client to the pool
    /// and only then writes the registration answer, which must precede every event on the wire.
    pub fn from_established_gated(
        stream: Stream,
        config: ClientConfig,
        negotiated: Negotiated,
        control: Option<mpsc::Sender<ControlMessage>>,
    ) -> (Self, Gate) {
        let (tx, rx) = oneshot::channel();
        let client = Self::start_established(stream, config, negotiated, control, Some(rx));
        (client, Gate { tx })
    }

    fn start_established(
        stream: Stream,
        config: ClientConfig,
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
        status.connected.store(gate.is_none(), Ordering::Release);
        let (read, write) = stream.into_split();
        let driver = Driver {
            conn,
            rx,
            status: status.clone(),
            waiters: Default::default(),
            ping_waiter: None,
            control,
            ready: None,
        };
        tokio::spawn(driver.run_gated(gate, read, write));
        Self {
            tx,
            status,
            negotiated: Arc::new(negotiated),
            request_timeout,
        }
    }

    async fn spawn(
        stream: Stream,
        mut conn: ProxyConnection,
        request_timeout: Duration,
        control: Option<mpsc::Sender<ControlMessage>>,
    ) -> Result<Self, ClientError> {
        set_wall_clock(&mut conn);
        let (tx, rx) = mpsc::channel(CHANNEL_BUFFER_SIZE);
        let status = Arc::new(ConnectionStatus::new());
        let (ready_tx, ready_rx) = oneshot::channel();
        let (read, write) = stream.into_split();
        let driver = Driver {
            conn,
            rx,
            status: status.clone(),
            waiters: Default::default(),
            ping_waiter: None,
            control,
            ready: Some(ready_tx),
        };
        tokio::spawn(driver.run(read, write));
        // The core enforces the handshake deadline, so this resolves in bounded time.
        let negotiated = ready_rx
            .await
            .map_err(|_| ClientError::Closed(ConnectionError::LocalClose))?
            .map_err(ClientError::Closed)?;
        Ok(Self {
            tx,
            status,
            negotiated: Arc::new(negotiated),
            request_timeout,
        })
    }

    /// What the handshake settled.
    pub fn negotiated(&self) -> &Negotiated {
        &self.negotiated
    }

    /// The agent's capabilities.
    pub fn capabilities(&self) -> &Capabilities {
        &self.negotiated.capabilities
    }

    /// The negotiated encoding.
    pub fn encoding(&self) -> Encoding {
        self.negotiated.encoding
    }

    /// Live status (health, pause, in-flight).
    pub fn status(&self) -> &Arc<ConnectionStatus> {
        &self.status
    }

    /// Whether the connection is open.
    pub fn is_connected(&self) -> bool {
        self.status.is_connected() && !self.tx.is_closed()
    }

    /// Sends an event and waits for the agent's answer, within the configured request timeout.
    pub async fn send(&self, event: Event) -> Result<AgentResponse, ClientError> {
        self.send_with_timeout(event, self.request_timeout).await
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
        self.status.touch();
        let (reply, rx) = oneshot::channel();
        let correlation_id = event.correlation_id().to_owned();
        let submit = self.tx.send(Command::Send {
            event,
            deadline,
            reply,
        });
        let started = Instant::now();
        match tokio::time::timeout_at(deadline.into(), submit).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(ClientError::Closed(ConnectionError::LocalClose)),
            Err(_) => return Err(ClientError::QueueTimeout(deadline - started)),
        }
        // If the caller stops waiting, tell the connection so the agent stops working on it and
        // the in-flight slot frees now rather than at the deadline.
        let mut guard = AbandonGuard {
            tx: &self.tx,
            correlation_id: Some(correlation_id),
        };
        let outcome = rx
            .await
            .unwrap_or(Err(ClientError::Closed(ConnectionError::LocalClose)));
        guard.correlation_id = None;
        outcome
    }

    /// Cancels a pending request; the agent is told and the caller gets `Cancelled` at once.
    pub async fn cancel(&self, correlation_id: &str, reason: CancelReason) {
        let _ = self
            .tx
            .send(Command::Cancel {
                correlation_id: correlation_id.to_owned(),
                reason,
            })
            .await;
    }

    /// Sends a ping and waits for its pong: the round-trip time through the agent's event loop.
    /// Fails if another ping is outstanding or no pong arrives within the request timeout.
    pub async fn ping(&self) -> Result<Duration, ClientError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Ping { reply })
            .await
            .map_err(|_| ClientError::Closed(ConnectionError::LocalClose))?;
        match tokio::time::timeout(self.request_timeout, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(ClientError::Closed(ConnectionError::LocalClose)),
            Err(_) => Err(ClientError::QueueTimeout(self.request_timeout)),
        }
    }

    /// Closes the connection; pending requests fail at once.
    pub async fn close(&self) {
        let _ = self.tx.send(Command::Close).await;
    }
}

pub(crate) fn set_wall_clock(conn: &mut ProxyConnection) {
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
            let _ = self.tx.try_send(Command::Abandon { correlation_id });
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

/// The state every transport's connection task keeps beside the core connection: callers'
/// one-shots, the ping waiter, the control channel, and the status shared with the pool.
pub(crate) struct Driver {
    pub(crate) conn: ProxyConnection,
    pub(crate) rx: mpsc::Receiver<Command>,
    status: Arc<ConnectionStatus>,
    waiters: std::collections::HashMap<RequestId, Reply>,
    ping_waiter: Option<(u64, oneshot::Sender<Result<Duration, ClientError>>)>,
    control: Option<mpsc::Sender<ControlMessage>>,
    ready: Option<oneshot::Sender<Result<Negotiated, ConnectionError>>>,
}

impl Driver {
    /// A driver for a message-transport connection (gRPC); `ready` resolves when the
    /// handshake completes or the connection closes first.
    #[cfg(feature = "grpc")]
    pub(crate) fn new(
        conn: ProxyConnection,
        rx: mpsc::Receiver<Command>,
        status: Arc<ConnectionStatus>,
        control: Option<mpsc::Sender<ControlMessage>>,
        ready: oneshot::Sender<Result<Negotiated, ConnectionError>>,
    ) -> Self {
        Self {
            conn,
            rx,
            status,
            waiters: Default::default(),
            ping_waiter: None,
            control,
            ready: Some(ready),
        }
    }

    async fn run_gated(
        self,
        gate: Option<oneshot::Receiver<GateDecision>>,
        read: ReadHalf,
        mut write: WriteHalf,
    ) {
        if let Some(gate) = gate {
            match gate.await {
                Ok(GateDecision::Open(preamble)) => {
                    if write.write_all(&preamble).await.is_err() {
                        return self.abandon(write).await;
                    }
                    self.status.connected.store(true, Ordering::Release);
                }
                Ok(GateDecision::Refuse(preamble)) => {
                    let _ = write.write_all(&preamble).await;
                    return self.abandon(write).await;
                }
                Err(_) => return self.abandon(write).await,
            }
        }
        self.run(read, write).await
    }

    async fn abandon(mut self, write: WriteHalf) {
        self.conn.close();
        self.finish(write).await
    }

    async fn run(mut self, mut read: ReadHalf, mut write: WriteHalf) {
        let mut read_buf = BytesMut::with_capacity(READ_CHUNK);
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
            if read_buf.capacity() - read_buf.len() < READ_CHUNK / 4 {
                read_buf.reserve(READ_CHUNK);
            }
            tokio::select! {
                biased;
                r = read.read_buf(&mut read_buf), if !closed => {
                    let now = Instant::now();
                    match r {
                        Ok(0) => self.conn.handle_eof(),
                        Ok(_) => {
                            std::mem::swap(&mut read_buf, self.conn.read_buffer());
                            self.conn.process_input(now);
                            std::mem::swap(&mut read_buf, self.conn.read_buffer());
                        }
                        Err(e) => self.conn.handle_io_error(e.to_string()),
                    }
                }
                r = write.write_buf(&mut write_buf), if !write_buf.is_empty() => {
                    if let Err(e) = r {
                        self.conn.handle_io_error(e.to_string());
                        write_buf.clear();
                    } else if write_buf.is_empty() {
                        write_buf.clear();
                    }
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
                _ = sleep_until(deadline), if deadline.is_some() && !closed => {
                    self.conn.handle_timeout(Instant::now());
                }
            }
            self.publish_status();
        }
        self.finish(write).await
    }

    async fn finish(mut self, mut write: WriteHalf) {
        self.wind_down();
        let _ = write.shutdown().await;
    }

    /// After the connection closed: deliver its last outcomes, mark it disconnected, and fail
    /// callers still queued with a clear error rather than a dropped channel.
    pub(crate) fn wind_down(&mut self) {
        self.dispatch_events();
        self.status.connected.store(false, Ordering::Release);
        self.status.in_flight.store(0, Ordering::Release);
        self.status.resumed.notify_waiters();
        self.rx.close();
        while let Ok(cmd) = self.rx.try_recv() {
            if let Command::Send { reply, .. } = cmd {
                let _ = reply.send(Err(ClientError::Closed(ConnectionError::LocalClose)));
            }
        }
    }

    pub(crate) fn handle_command(&mut self, now: Instant, cmd: Command) {
        match cmd {
            Command::Send {
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
            Command::Cancel {
                correlation_id,
                reason,
            } => {
                self.conn.cancel(now, &correlation_id, reason);
            }
            Command::Ping { reply } => match self.conn.ping(now) {
                Some(sequence) => self.ping_waiter = Some((sequence, reply)),
                None => {
                    let _ = reply.send(Err(ClientError::Closed(ConnectionError::Protocol(
                        "a ping is already outstanding or the connection is not open".into(),
                    ))));
                }
            },
            Command::Abandon { correlation_id } => {
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
            Command::Close => self.conn.close(),
        }
    }

    pub(crate) fn dispatch_events(&mut self) {
        while let Some(event) = self.conn.poll_event() {
            match event {
                ProxyEvent::Connected(negotiated) => {
                    self.status.connected.store(true, Ordering::Release);
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

    pub(crate) fn publish_status(&self) {
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

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}
