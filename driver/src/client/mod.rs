//! [`AgentClient`]: one proxy->agent connection, driven by one task that owns the core's
//! [`ProxyConnection`] and the transport's [`ProxyLink`] (a [`FramedLink`] on sockets, the tokio
//! adapter's gRPC link on gRPC: the same task code for both).
//!
//! Callers hand requests to the task over a bounded channel ([`CHANNEL_BUFFER_SIZE`]) and get the
//! outcome through a one-shot. The task drains every queued command before writing, so a burst
//! of requests leaves in one `write` syscall; it reads up to 64 KiB per `read` and decodes every
//! frame in it. A request's deadline starts when the caller submits it, queueing included, and
//! the core guarantees exactly one outcome by then. A request on a connection that ended fails
//! with the reason it ended ([`ConnectionStatus::close_reason`]).

mod connect;
mod connection;
mod exchange;
mod framed;
mod handle;
mod status;

pub use connect::{unsupported, Connector};
pub use connection::ProxyLink;
pub use framed::FramedLink;
pub use handle::{Command, Gate};
pub use status::ConnectionStatus;

pub(crate) use handle::ClientHandle;

use std::sync::Arc;
use std::time::{Duration, Instant};

use agent_protocol_core::handshake::Negotiated;
use agent_protocol_core::pool::Endpoint;
use agent_protocol_core::proxy::{ProxyCodec, ProxyConfig, ProxyConnection};
use agent_protocol_core::{
    AgentResponse, CancelReason, Capabilities, ConfigUpdateRequest, ConnectionError, Encoding,
    Event, MetricsReport, RequestError, SubmitError,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

use connection::ClientTask;
pub(crate) use exchange::{Answered, Exchange};
use handle::GateDecision;

use crate::runtime::{self, Connection, Runtime};
use crate::spans;

/// How long after a request's deadline its caller stops waiting for the connection task's
/// outcome and reports the timeout itself: a backstop for a task that cannot run (the task
/// reports timeouts at the deadline itself).
pub const REPLY_GRACE: Duration = Duration::from_millis(100);

/// Capacity of every caller->connection channel, the same on every transport.
pub const CHANNEL_BUFFER_SIZE: usize = 64;

/// Why a request through a client failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
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
    /// A ping was not sent: another one is outstanding, or the connection is not open.
    #[error("cannot ping: a ping is already outstanding or the connection is not open")]
    PingRefused,
    /// No pong came back in time.
    #[error("no pong within {0:?}")]
    PingTimeout(Duration),
}

impl ClientError {
    /// Whose fault, per the core's classification.
    pub fn fault(&self) -> agent_protocol_core::Fault {
        use agent_protocol_core::Fault;
        match self {
            Self::Connect { .. } | Self::Closed(_) => Fault::Closed,
            Self::Rejected(e) => e.fault(),
            Self::Request(e) => e.fault(),
            Self::QueueTimeout(_) | Self::PingTimeout(_) => Fault::Timeout,
            Self::PingRefused => Fault::Local,
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

    /// A short, stable `snake_case` name of what went wrong, without the per-request details
    /// (ids, durations, messages): for grouping errors in reports and as a metrics label. A
    /// closed connection is named by why it closed (`peer_closed`, `frame_error`, ...).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Connect { .. } => "connect_failed",
            Self::Closed(e) => e.kind(),
            Self::Rejected(e) => e.kind(),
            Self::Request(e) => e.kind(),
            Self::QueueTimeout(_) => "queue_timeout",
            Self::PingRefused => "ping_refused",
            Self::PingTimeout(_) => "ping_timeout",
        }
    }

    /// Whether this is a timeout.
    pub fn is_timeout(&self) -> bool {
        matches!(
            self,
            Self::QueueTimeout(_) | Self::PingTimeout(_) | Self::Request(RequestError::Timeout(_))
        )
    }
}

/// Client settings, built from [`Default`] and the `with_*` setters.
///
/// ```
/// use std::time::Duration;
/// use agent_protocol_tokio::client::ClientConfig;
/// use agent_protocol_tokio::core::proxy::ProxyConfig;
/// let config = ClientConfig::default()
///     .with_connect_timeout(Duration::from_secs(1))
///     .with_connection(ProxyConfig::default().with_request_timeout(Duration::from_millis(200)));
/// assert_eq!(config.connection.request_timeout, Duration::from_millis(200));
/// ```
///
/// Deserializes from a configuration section: keys left out keep their defaults, an unknown key
/// (at any depth) is an error, durations are strings such as `"1s"` or `"250ms"`. The
/// [`connector`](Self::connector) is code, not data: it is neither read nor written, and a
/// deserialized config has the runtime's default one; replace it with
/// [`with_connector`](Self::with_connector) after loading (to give gRPC its TLS settings, say).
///
/// ```
/// use std::time::Duration;
/// use agent_protocol_tokio::client::ClientConfig;
/// let config: ClientConfig =
///     serde_json::from_str(r#"{"connect_timeout": "1s", "connection": {"max_in_flight": 64}}"#)
///         .unwrap();
/// assert_eq!(config.connect_timeout, Duration::from_secs(1));
/// assert_eq!(config.connection.max_in_flight, 64);
/// assert!(config.connector.is_some()); // tokio's gRPC connector, as from `default()`
/// ```
#[derive(Clone, Debug, Serialize, Deserialize)]
// The runtime is a marker type: nothing of it is read or written, so it needs no serde bound.
#[serde(default, deny_unknown_fields, bound(serialize = "", deserialize = ""))]
#[non_exhaustive]
pub struct ClientConfig<R: Runtime> {
    /// The core connection's settings (handshake, request timeout, pings, caps).
    pub connection: ProxyConfig,
    /// Deadline for establishing the socket.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Opens what is not a Unix socket (gRPC on tokio, with its TLS settings); starts as the
    /// runtime adapter's own ([`Runtime::default_connector`]). `None` refuses such endpoints.
    // Skipped fields are taken from the `Default` value serde starts from, so a loaded config
    // gets `R::default_connector()` exactly as `ClientConfig::default()` does.
    #[serde(skip)]
    pub connector: Option<Arc<dyn Connector<R>>>,
}

impl<R: Runtime> Default for ClientConfig<R> {
    fn default() -> Self {
        Self {
            // MessagePack offered first, then JSON.
            connection: ProxyConfig::default(),
            connect_timeout: Duration::from_secs(5),
            connector: R::default_connector(),
        }
    }
}

impl<R: Runtime> ClientConfig<R> {
    /// Sets [`connection`](Self::connection), the core connection's settings.
    #[must_use]
    pub fn with_connection(mut self, connection: ProxyConfig) -> Self {
        self.connection = connection;
        self
    }

    /// Sets [`connect_timeout`](Self::connect_timeout).
    #[must_use]
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sets [`connector`](Self::connector).
    #[must_use]
    pub fn with_connector(mut self, connector: impl Connector<R>) -> Self {
        self.connector = Some(Arc::new(connector));
        self
    }

    /// Whether `endpoint` can be opened: a Unix socket or framed TCP address, or what the
    /// connector opens.
    pub fn opens(&self, endpoint: &Endpoint) -> bool {
        matches!(endpoint, Endpoint::Uds(_) | Endpoint::Tcp(_))
            || self.connector.as_ref().is_some_and(|c| c.opens(endpoint))
    }
}

/// Replaces the errno a failed Unix-socket connect gives with what is wrong with the path,
/// when that is something else than "nobody listens": connecting to a regular file says
/// "connection refused", which sends people looking for a dead agent.
fn explain(path: &std::path::Path, error: std::io::Error) -> std::io::Error {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::metadata(path) {
        Ok(meta) if !meta.file_type().is_socket() => std::io::Error::new(
            error.kind(),
            format!(
                "{} exists but is not a Unix socket ({})",
                path.display(),
                if meta.is_dir() {
                    "a directory"
                } else {
                    "a file"
                }
            ),
        ),
        Err(missing) if missing.kind() == std::io::ErrorKind::NotFound => std::io::Error::new(
            error.kind(),
            format!("no socket at {} (is the agent running?)", path.display()),
        ),
        _ => error,
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

impl<R: Runtime> AgentClient<R> {
    /// Connects to an agent and completes the handshake, each within its deadline: a Unix
    /// socket (`unix:PATH`, a path starting with `/` or `.`, or `*.sock`), the framed protocol
    /// over TCP (`tcp://host:port`), or an endpoint the config's
    /// [`Connector`] opens (on tokio with the `grpc` feature: a gRPC agent at `host:port`,
    /// `http://host:port` or, with TLS settings in the connector, `https://host:port`).
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
    ///
    /// The connection task runs in a [`CONNECTION`](crate::spans::CONNECTION) span naming
    /// `endpoint` (or the current one, when the caller opened such a span: the pool's names
    /// the agent too).
    pub async fn connect_endpoint(
        endpoint: &Endpoint,
        config: ClientConfig<R>,
        control: Option<mpsc::Sender<ControlMessage>>,
    ) -> Result<Self, ClientError> {
        if spans::current_proxy_connection().is_some() {
            Self::open(endpoint, config, control).await
        } else {
            let span = spans::proxy_connection(None, Some(endpoint));
            Self::open(endpoint, config, control).instrument(span).await
        }
    }

    async fn open(
        endpoint: &Endpoint,
        config: ClientConfig<R>,
        control: Option<mpsc::Sender<ControlMessage>>,
    ) -> Result<Self, ClientError> {
        let timeout = config.connect_timeout;
        let connecting = async {
            match endpoint {
                Endpoint::Uds(path) => R::connect_unix(path).await.map_err(|e| explain(path, e)),
                Endpoint::Tcp(address) => R::connect_tcp(address).await,
                _ => Err(std::io::Error::from(std::io::ErrorKind::Unsupported)),
            }
        };
        if !matches!(endpoint, Endpoint::Uds(_) | Endpoint::Tcp(_)) {
            return match config.connector.clone() {
                Some(connector) if connector.opens(endpoint) => {
                    connector.connect(endpoint, config, control).await
                }
                _ => Err(unsupported(endpoint)),
            };
        }
        let stream = runtime::timeout_at::<R, _>(R::now() + timeout, connecting)
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

    /// A client whose connection task was started elsewhere, taking commands from `tx`'s
    /// receiver (a test's stand-in for a task, say).
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
        let codec = ProxyCodec::new(&config.connection);
        let conn = ProxyConnection::new(config.connection, R::now());
        let (read, write) = stream.into_split();
        Self::start(conn, FramedLink::new(codec, read, write), control).await
    }

    /// Starts the connection task of `conn` over `link`, whatever the transport (a
    /// [`FramedLink`] on sockets; the tokio adapter's gRPC stream), and waits for the handshake
    /// to finish (the core enforces its deadline, so this resolves in bounded time).
    ///
    /// The task runs in the current span when it is a [`CONNECTION`](crate::spans::CONNECTION)
    /// span of the proxy side (as [`connect_endpoint`](Self::connect_endpoint) opens), else in
    /// one of its own; the negotiated encoding is recorded in it.
    pub async fn start<L: ProxyLink>(
        mut conn: ProxyConnection,
        link: L,
        control: Option<mpsc::Sender<ControlMessage>>,
    ) -> Result<Self, ClientError> {
        set_wall_clock::<R>(&mut conn);
        let request_timeout = conn.config().request_timeout;
        let (tx, rx) = mpsc::channel(CHANNEL_BUFFER_SIZE);
        let status = Arc::new(ConnectionStatus::starting_at(R::now()));
        let (ready_tx, ready_rx) = oneshot::channel();
        let task = ClientTask::new(conn, rx, status.clone(), control, Some(ready_tx));
        let span = spans::current_proxy_connection()
            .unwrap_or_else(|| spans::proxy_connection(None, None));
        R::spawn(task.run::<L, R>(link).instrument(span.clone()));
        let negotiated = match ready_rx.await {
            Ok(Ok(negotiated)) => {
                let encoding = L::TRANSPORT_ENCODING.unwrap_or(negotiated.encoding.as_str());
                span.record("encoding", encoding);
                negotiated
            }
            Ok(Err(reason)) => return Err(ClientError::Closed(reason)),
            Err(_) => return Err(handle::closed_error(&status)),
        };
        Ok(Self::from_parts(tx, status, negotiated, request_timeout))
    }

    /// Wraps a stream whose setup happened elsewhere (a reverse connection after registration).
    /// The connection task's span is found or opened as [`start`](Self::start)'s is.
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
        let codec = ProxyCodec::established(&config.connection, negotiated.encoding);
        let mut conn =
            ProxyConnection::new_established(config.connection, negotiated.clone(), R::now());
        set_wall_clock::<R>(&mut conn);
        let (tx, rx) = mpsc::channel(CHANNEL_BUFFER_SIZE);
        let status = Arc::new(ConnectionStatus::starting_at(R::now()));
        if gate.is_none() {
            status.mark_connected();
        }
        let (read, mut write) = stream.into_split();
        let mut task = ClientTask::new(conn, rx, status.clone(), control, None);
        let span = spans::current_proxy_connection()
            .unwrap_or_else(|| spans::proxy_connection(None, None));
        span.record("encoding", negotiated.encoding.as_str());
        let connection = async move {
            if let Some(gate) = gate {
                // The registration answer goes first, written as it is.
                let opened = match gate.await {
                    Ok(GateDecision::Open(preamble)) => {
                        runtime::write_all(&mut write, &preamble).await.is_ok()
                    }
                    Ok(GateDecision::Refuse(preamble)) => {
                        let _ = runtime::write_all(&mut write, &preamble).await;
                        false
                    }
                    Err(_) => false,
                };
                if opened {
                    task.status.mark_connected();
                } else {
                    task.conn.close();
                }
            }
            task.run::<_, R>(FramedLink::new(codec, read, write)).await
        };
        R::spawn(connection.instrument(span));
        Self::from_parts(tx, status, negotiated, request_timeout)
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
        self.send_until(event, R::now() + timeout).await
    }

    /// Sends an event that must be answered by `deadline` (queueing included).
    pub async fn send_until(
        &self,
        event: Event,
        deadline: Instant,
    ) -> Result<AgentResponse, ClientError> {
        let answered = self.handle.send_until::<R>(Exchange::new(event), deadline);
        answered.await.map(Answered::into_response)
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
        self.handle.end_request::<R>(correlation_id.into())
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

/// Tells the core the wall-clock time (Unix milliseconds) that corresponds to `R::now()`,
/// for the timestamps it writes into events.
pub(crate) fn set_wall_clock<R: Runtime>(conn: &mut ProxyConnection) {
    let unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    conn.set_unix_time(R::now(), unix_ms);
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_protocol_core::Fault;

    #[test]
    fn client_errors_blame_who_acted() {
        let cases = [
            (ClientError::PingRefused, Fault::Local),
            (
                ClientError::PingTimeout(Duration::from_secs(1)),
                Fault::Timeout,
            ),
            (
                ClientError::QueueTimeout(Duration::from_secs(1)),
                Fault::Timeout,
            ),
            (
                ClientError::Closed(ConnectionError::PeerClosed),
                Fault::Closed,
            ),
            (
                ClientError::Rejected(SubmitError::TooManyInFlight { limit: 1 }),
                Fault::Limit,
            ),
            (
                ClientError::Request(RequestError::Timeout(Duration::from_secs(1))),
                Fault::Timeout,
            ),
        ];
        for (error, fault) in cases {
            assert_eq!(error.fault(), fault, "{error}");
        }
        assert!(ClientError::PingTimeout(Duration::ZERO).is_timeout());
        assert!(!ClientError::PingRefused.is_timeout());
    }
}
