//! The agent side: [`AgentServer`] serves an [`AgentHandler`] on a Unix socket (and optionally
//! TCP), many connections at once, and many requests per connection concurrently.
//!
//! Each connection is one task ([`serve_link`]) owning the core's [`AgentConnection`] and the
//! transport's [`AgentLink`]: a [`FramedLink`] on sockets, the tokio adapter's gRPC link on
//! gRPC, the same task code for both. Handler futures run inside that task (a
//! `FuturesUnordered`), so a request never crosses threads on its way from socket to handler to
//! socket, and answers that complete together leave in one write. Cancel drops the handler's
//! future and nothing is sent for it. Pings are answered as soon as they are read, never behind
//! a slow handler. A handler that burns CPU for long should move that
//! work to a blocking thread (`tokio::task::spawn_blocking`, `blocking::unblock`) so it does not
//! stall its connection's other requests.

mod connection;
mod framed;
mod handler;
mod tower;

pub use connection::{serve_link, AgentLink, Received, MAX_IN_FLIGHT_BYTES};
pub use framed::{FramedLink, MAX_PENDING_TRANSMIT};
pub use handler::{dispatch, AgentHandler, HeldEvent};
pub use tower::{HandlerService, ServiceHandler};

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use agent_protocol_core::agent::{AgentCodec, AgentConfig, AgentConnection};
use agent_protocol_core::handshake::AgentHandshakeConfig;
use agent_protocol_core::metrics::ServerMetrics;
use agent_protocol_core::{
    Capabilities, Encoding, FlowAction, FlowControl, HealthState, HealthStatus, MetricsReport,
};
use futures_util::stream::{FuturesUnordered, StreamExt};
use serde::de::{self, Unexpected, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tokio::sync::{broadcast, mpsc, watch};
use tracing::Instrument;

use crate::runtime::{self, Connection, Runtime};
use crate::spans::{self, Peer};

/// Server settings.
///
/// Built from [`Default`] and the `with_*` setters (fields may be added in any release, so the
/// struct cannot be built literally outside this crate); the fields stay public to read and set.
///
/// ```
/// use std::time::Duration;
/// use agent_protocol_driver::server::ServerConfig;
/// let config = ServerConfig::default()
///     .with_max_in_flight(256)
///     .with_drain_timeout(Duration::from_secs(5));
/// assert_eq!(config.agent_config().max_in_flight, 256);
/// ```
///
/// Deserializes from a configuration section: keys left out keep their defaults, an unknown key
/// (at any depth) is an error, durations are strings such as `"5s"`. A `capabilities` section
/// is read over the default capabilities (see
/// [`capabilities::strict::deserialize_over`](agent_protocol_core::capabilities::strict::deserialize_over)),
/// so setting one limit keeps every event announced; as in code, [`agent_config`](Self::agent_config)
/// then sets `features.cancellation` and `features.concurrent_requests` itself.
///
/// `socket_mode` is best written as a string of octal digits (`"660"`, `"0660"`), since JSON has
/// no octal numbers; a number is taken as it is (TOML's `0o660` is one), and anything above
/// `0o777` is refused, which catches the decimal `660` meant as octal.
///
/// ```
/// use std::time::Duration;
/// use agent_protocol_driver::server::ServerConfig;
/// use agent_protocol_driver::core::EventKind;
/// let config: ServerConfig = serde_json::from_str(
///     r#"{"socket_mode": "600", "drain_timeout": "5s", "capabilities": {"agent_id": "waf-1"}}"#,
/// )
/// .unwrap();
/// assert_eq!(config.socket_mode, 0o600);
/// assert_eq!(config.drain_timeout, Duration::from_secs(5));
/// assert_eq!(config.capabilities.agent_id, "waf-1");
/// assert!(config.capabilities.supported_events.contains(EventKind::Configure));
/// assert!(serde_json::from_str::<ServerConfig>(r#"{"socket_mode": 660}"#).is_err());
/// ```
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct ServerConfig {
    /// Capabilities announced in the handshake.
    #[serde(deserialize_with = "over_default_capabilities")]
    pub capabilities: Capabilities,
    /// Encodings we accept (the proxy's first offered one among these wins).
    pub encodings: Vec<Encoding>,
    /// Handshake deadline.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// Unanswered requests per connection before new ones are refused (503).
    pub max_in_flight: usize,
    /// Mode of the socket file.
    #[serde(with = "socket_mode")]
    pub socket_mode: u32,
    /// How long graceful shutdown waits for in-flight requests.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
}

fn over_default_capabilities<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Capabilities, D::Error> {
    let base = ServerConfig::default().capabilities;
    agent_protocol_core::capabilities::strict::deserialize_over(&base, deserializer)
}

/// A socket file mode as written in a configuration file.
mod socket_mode {
    use super::*;

    /// Permission bits only: set-id and sticky bits mean nothing on a socket, and the bound
    /// turns the likeliest slip, an octal mode written as a decimal number, into an error.
    const MAX_MODE: u32 = 0o777;

    struct ModeVisitor;

    impl ModeVisitor {
        fn checked<E: de::Error>(self, mode: u64) -> Result<u32, E> {
            u32::try_from(mode)
                .ok()
                .filter(|m| *m <= MAX_MODE)
                .ok_or_else(|| E::invalid_value(Unexpected::Unsigned(mode), &self))
        }
    }

    impl Visitor<'_> for ModeVisitor {
        type Value = u32;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a file mode up to 0o777: octal digits in a string (\"660\"), or a number")
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<u32, E> {
            self.checked(v)
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<u32, E> {
            match u64::try_from(v) {
                Ok(v) => self.checked(v),
                Err(_) => Err(E::invalid_value(Unexpected::Signed(v), &self)),
            }
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<u32, E> {
            let digits = v.strip_prefix("0o").unwrap_or(v);
            match u64::from_str_radix(digits, 8) {
                // from_str_radix takes a leading sign, which no mode has.
                Ok(mode) if !digits.starts_with('+') => self.checked(mode),
                _ => Err(E::invalid_value(Unexpected::Str(v), &self)),
            }
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u32, D::Error> {
        deserializer.deserialize_any(ModeVisitor)
    }

    // Written back the way it is best read: octal digits in a string.
    pub(super) fn serialize<S: Serializer>(mode: &u32, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&format_args!("{mode:04o}"))
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            capabilities: Capabilities::new("agent", "agent", env!("CARGO_PKG_VERSION"))
                .with_all_events()
                .with_control_features(),
            // The proxy's first offered encoding among these wins.
            encodings: vec![Encoding::MsgPack, Encoding::Json],
            handshake_timeout: agent_protocol_core::handshake::DEFAULT_HANDSHAKE_TIMEOUT,
            max_in_flight: 4096,
            socket_mode: 0o660,
            drain_timeout: Duration::from_secs(30),
        }
    }
}

impl ServerConfig {
    /// Sets [`capabilities`](Self::capabilities), what the agent announces in the handshake.
    #[must_use]
    pub fn with_capabilities(mut self, capabilities: Capabilities) -> Self {
        self.capabilities = capabilities;
        self
    }

    /// Sets [`encodings`](Self::encodings), the encodings accepted.
    #[must_use]
    pub fn with_encodings(mut self, encodings: impl IntoIterator<Item = Encoding>) -> Self {
        self.encodings = encodings.into_iter().collect();
        self
    }

    /// Sets [`handshake_timeout`](Self::handshake_timeout), the handshake deadline.
    #[must_use]
    pub fn with_handshake_timeout(mut self, handshake_timeout: Duration) -> Self {
        self.handshake_timeout = handshake_timeout;
        self
    }

    /// Sets [`max_in_flight`](Self::max_in_flight), the unanswered requests per connection.
    #[must_use]
    pub fn with_max_in_flight(mut self, max_in_flight: usize) -> Self {
        self.max_in_flight = max_in_flight;
        self
    }

    /// Sets [`socket_mode`](Self::socket_mode), the mode of the socket file.
    #[must_use]
    pub fn with_socket_mode(mut self, socket_mode: u32) -> Self {
        self.socket_mode = socket_mode;
        self
    }

    /// Sets [`drain_timeout`](Self::drain_timeout), how long graceful shutdown waits.
    #[must_use]
    pub fn with_drain_timeout(mut self, drain_timeout: Duration) -> Self {
        self.drain_timeout = drain_timeout;
        self
    }

    /// The core agent connection's settings these server settings imply.
    pub fn agent_config(&self) -> AgentConfig {
        let mut caps = self.capabilities.clone();
        caps.features.cancellation = true;
        caps.features.concurrent_requests = self.max_in_flight.min(u32::MAX as usize) as u32;
        AgentConfig::default()
            .with_handshake(
                AgentHandshakeConfig::default()
                    .with_capabilities(caps)
                    .with_encodings(self.encodings.iter().copied())
                    .with_timeout(self.handshake_timeout),
            )
            .with_max_in_flight(self.max_in_flight)
    }
}

/// Frames an agent pushes to every connected proxy.
#[derive(Clone, Debug)]
pub enum Push {
    /// HealthStatus (0x30).
    Health(HealthStatus),
    /// FlowControl (0x33).
    FlowControl(FlowControl),
    /// MetricsReport (0x31).
    Metrics(MetricsReport),
}

/// Handle to a running server: push control frames, observe, shut down.
#[derive(Clone, Debug)]
pub struct ServerHandle {
    push: broadcast::Sender<Push>,
    shutdown: watch::Sender<bool>,
    metrics: Arc<ServerMetrics>,
    agent_id: String,
}

impl ServerHandle {
    /// A handle not tied to an [`AgentServer`] (for a [`crate::reverse::ReverseConnector`]
    /// used on its own).
    pub fn new(agent_id: impl Into<String>) -> Self {
        let (push, _) = broadcast::channel(64);
        let (shutdown, _) = watch::channel(false);
        Self {
            push,
            shutdown,
            metrics: Arc::new(ServerMetrics::new()),
            agent_id: agent_id.into(),
        }
    }

    /// Watches for shutdown (see [`shutdown_signal`]); for transports served outside this crate.
    pub fn shutdown_receiver(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    /// Receives every frame pushed from now on; for transports served outside this crate.
    pub fn subscribe_pushes(&self) -> broadcast::Receiver<Push> {
        self.push.subscribe()
    }

    /// The agent id health reports carry.
    pub fn agent_id(&self) -> &str {
        &self.agent_id
    }

    /// Counts a connection opened by a transport served outside this crate (see
    /// [`ServerHandle::connections`]); pair with [`ServerHandle::connection_closed`].
    pub fn connection_opened(&self) {
        self.metrics.connection_opened();
    }

    /// Counts a connection closed.
    pub fn connection_closed(&self) {
        self.metrics.connection_closed();
    }

    /// Counts `n` requests handed to the handler (see [`ServerHandle::in_flight`]); pair with
    /// [`ServerHandle::requests_finished`].
    pub fn requests_started(&self, n: usize) {
        self.metrics.requests_started(n as u64);
    }

    /// Counts `n` requests answered or abandoned.
    pub fn requests_finished(&self, n: usize) {
        self.metrics.requests_finished(n as u64);
    }

    /// The server's counters, shared by its connections (and by reverse connectors given this
    /// handle).
    pub fn metrics(&self) -> &Arc<ServerMetrics> {
        &self.metrics
    }

    /// Puts the server's metrics in `registry`, read at each scrape, and starts timing handlers
    /// for `agent_protocol_agent_handler_duration_seconds` (two clock reads per request, spent
    /// only once someone reads them). Families (prefix `agent_protocol_agent`, label `agent_id`):
    /// `_connections`, `_connections_opened_total`, `_requests_total`, `_in_flight_requests`,
    /// `_answers_total{decision}`, `_cancelled_total`, `_fail_closed_total`,
    /// `_handler_duration_seconds`.
    ///
    /// ```
    /// use agent_protocol_tokio::metrics::{prometheus_client::registry::Registry, render_openmetrics};
    /// use agent_protocol_tokio::server::ServerHandle;
    /// let handle = ServerHandle::new("waf");
    /// let mut registry = Registry::default();
    /// handle.register_metrics(&mut registry);
    /// handle.requests_started(1);
    /// let text = render_openmetrics(&registry);
    /// assert!(text.contains("agent_protocol_agent_in_flight_requests{agent_id=\"waf\"} 1"));
    /// ```
    pub fn register_metrics(
        &self,
        registry: &mut crate::metrics::prometheus_client::registry::Registry,
    ) {
        self.metrics.set_timed(true);
        let metrics = self.metrics.clone();
        let agent_id = self.agent_id.clone();
        registry.register_collector(Box::new(crate::metrics::EncodeFn::new(move |encoder| {
            crate::metrics::encode_server_metrics(
                &metrics,
                "agent_protocol_agent",
                &[("agent_id", &agent_id)],
                encoder,
            )
        })));
    }

    /// Sends a frame to every connected proxy.
    pub fn push(&self, message: Push) {
        let _ = self.push.send(message);
    }

    /// Reports health to every connected proxy.
    pub fn set_health(&self, state: HealthState, message: Option<String>) {
        self.push(Push::Health(HealthStatus {
            agent_id: self.agent_id.clone(),
            state,
            message,
            timestamp_ms: unix_ms(),
        }));
    }

    /// Asks every proxy to stop sending (connection-wide pause).
    pub fn pause(&self) {
        self.flow(FlowAction::Pause, None);
    }

    /// Lets every proxy send again.
    pub fn resume(&self) {
        self.flow(FlowAction::Resume, None);
    }

    fn flow(&self, action: FlowAction, buffer_available: Option<u64>) {
        self.push(Push::FlowControl(FlowControl {
            action,
            correlation_id: None,
            buffer_available,
            timestamp_ms: unix_ms(),
        }));
    }

    /// Open connections.
    pub fn connections(&self) -> usize {
        usize::try_from(self.metrics.connections()).unwrap_or(usize::MAX)
    }

    /// Requests being processed, over all connections.
    pub fn in_flight(&self) -> usize {
        usize::try_from(self.metrics.in_flight()).unwrap_or(usize::MAX)
    }

    /// Starts graceful shutdown: stop accepting, finish in-flight requests, close.
    pub fn shutdown(&self) {
        let _ = self.shutdown.send(true);
    }
}

/// Milliseconds since the Unix epoch, now (the timestamps of pushed frames).
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// An agent server.
///
/// ```no_run
/// # async fn demo() -> std::io::Result<()> {
/// use agent_protocol_tokio::server::{AgentHandler, AgentServer, ServerConfig};
/// struct AllowAll;
/// impl AgentHandler for AllowAll {}
/// let server = AgentServer::new(AllowAll, ServerConfig::default());
/// let listener = server.bind_uds("/run/agent.sock")?;
/// let handle = server.handle();
/// tokio::spawn(async move { tokio::signal::ctrl_c().await.ok(); handle.shutdown(); });
/// server.serve(listener).await
/// # }
/// ```
pub struct AgentServer<H, R: Runtime> {
    handler: Arc<H>,
    config: ServerConfig,
    handle: ServerHandle,
    runtime: std::marker::PhantomData<R>,
}

/// A bound Unix socket whose file is removed when it is dropped.
#[derive(Debug)]
pub struct UdsListener<R: Runtime> {
    listener: R::UnixListener,
    path: PathBuf,
}

impl<R: Runtime> UdsListener<R> {
    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl<R: Runtime> Drop for UdsListener<R> {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Binds a Unix socket at `path` with file mode `mode`.
///
/// An existing socket file is removed only when connecting to it is refused (nothing listens:
/// a stale file, see [`is_stale_socket`]). A live one is an `AddrInUse` error; any other
/// connect failure (say permission denied on another user's live socket) is an error naming
/// the path, and the file is left alone, as is a non-socket file (`AlreadyExists`).
pub fn bind_unix_socket<R: Runtime>(path: &Path, mode: u32) -> io::Result<UdsListener<R>> {
    use std::os::unix::fs::FileTypeExt;
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket", path.display()),
            ));
        }
        match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("{} is served by another live process", path.display()),
                ))
            }
            // Removed meanwhile: nothing to clean up.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) if is_stale_socket(&e) => match std::fs::remove_file(path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            },
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!(
                        "{} exists and cannot be checked for a live server ({e}); not replacing it",
                        path.display()
                    ),
                ))
            }
        }
    }
    let listener = std::os::unix::net::UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    listener.set_nonblocking(true)?;
    let listener = R::unix_listener(listener)?;
    Ok(UdsListener {
        listener,
        path: path.to_owned(),
    })
}

/// Whether a failed connect to an existing socket file shows that nothing serves it, so the
/// file may be replaced: only a refused connection (`ECONNREFUSED`) does. Any other error says
/// nothing about liveness: `EACCES` comes from another user's socket that may well be live,
/// `EPROTOTYPE` from a live socket of another type, `EAGAIN` from a live server whose backlog
/// is full.
///
/// ```
/// use std::io;
/// use agent_protocol_driver::server::is_stale_socket;
/// assert!(is_stale_socket(&io::Error::from(io::ErrorKind::ConnectionRefused)));
/// assert!(!is_stale_socket(&io::Error::from(io::ErrorKind::PermissionDenied)));
/// ```
pub fn is_stale_socket(connect_error: &io::Error) -> bool {
    connect_error.kind() == io::ErrorKind::ConnectionRefused
}

/// Where a server accepts connections.
#[derive(Debug)]
pub enum Listener<R: Runtime> {
    /// A Unix socket.
    Unix(UdsListener<R>),
    /// A TCP socket (framed protocol, same as UDS).
    Tcp(R::TcpListener),
}

impl<R: Runtime> From<UdsListener<R>> for Listener<R> {
    fn from(l: UdsListener<R>) -> Self {
        Listener::Unix(l)
    }
}

impl<R: Runtime> Listener<R> {
    /// A TCP listener bound with the runtime's own type (say `tokio::net::TcpListener`).
    pub fn tcp(listener: R::TcpListener) -> Self {
        Listener::Tcp(listener)
    }

    /// Accepts one connection.
    pub async fn accept_stream(&self) -> io::Result<R::Stream> {
        match self {
            Listener::Unix(l) => R::accept_unix(&l.listener).await,
            Listener::Tcp(l) => R::accept_tcp(l).await,
        }
    }

    /// The span of a connection accepted here.
    fn connection_span(&self, agent_id: &str) -> tracing::Span {
        match self {
            Listener::Unix(l) => {
                spans::agent_connection(Peer::Unix, Some(&l.path.display()), agent_id)
            }
            Listener::Tcp(_) => spans::agent_connection(Peer::Tcp, None, agent_id),
        }
    }
}

impl<H: AgentHandler, R: Runtime> AgentServer<H, R> {
    /// A server for `handler`.
    pub fn new(handler: H, config: ServerConfig) -> Self {
        Self::with_shared_handler(Arc::new(handler), config)
    }

    /// A server for a handler shared with other servers (e.g. UDS and reverse).
    pub fn with_shared_handler(handler: Arc<H>, config: ServerConfig) -> Self {
        let handle = ServerHandle::new(config.capabilities.agent_id.clone());
        Self {
            handler,
            config,
            handle,
            runtime: std::marker::PhantomData,
        }
    }

    /// The handler.
    pub fn handler(&self) -> &Arc<H> {
        &self.handler
    }

    /// The settings.
    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    /// Handle for pushing control frames and shutting down.
    pub fn handle(&self) -> ServerHandle {
        self.handle.clone()
    }

    /// Puts the server's metrics in `registry` (see [`ServerHandle::register_metrics`]).
    pub fn register_metrics(
        &self,
        registry: &mut crate::metrics::prometheus_client::registry::Registry,
    ) {
        self.handle.register_metrics(registry);
    }

    /// Binds the Unix socket with the configured mode (see [`bind_unix_socket`]).
    pub fn bind_uds(&self, path: impl AsRef<Path>) -> io::Result<UdsListener<R>> {
        bind_unix_socket(path.as_ref(), self.config.socket_mode)
    }

    /// Serves one listener until shutdown.
    pub async fn serve(&self, listener: impl Into<Listener<R>>) -> io::Result<()> {
        self.serve_all(vec![listener.into()]).await
    }

    /// Serves several listeners (say UDS and TCP) until shutdown, then drains in-flight requests
    /// (up to `drain_timeout`) and returns; socket files are removed when the listeners drop.
    pub async fn serve_all(&self, listeners: Vec<Listener<R>>) -> io::Result<()> {
        let mut shutdown = self.handle.shutdown.subscribe();
        // Every listener's accept is polled in this task; a finished one is re-armed.
        let accept = |index: usize| {
            let listener = &listeners[index];
            async move { (index, listener.accept_stream().await) }
        };
        let mut accepting: FuturesUnordered<_> = (0..listeners.len()).map(accept).collect();
        // Each connection task holds a sender; the channel closes when the last one ends.
        let (alive, mut all_ended) = mpsc::channel::<()>(1);
        loop {
            tokio::select! {
                Some((index, accepted)) = accepting.next() => {
                    match accepted {
                        Ok(stream) => {
                            let config = self.config.agent_config();
                            let codec = AgentCodec::new(&config);
                            let conn = AgentConnection::new(config, R::now());
                            let span = listeners[index].connection_span(self.handle.agent_id());
                            let task = serve_stream::<H, R>(
                                stream,
                                codec,
                                conn,
                                self.handler.clone(),
                                self.handle.clone(),
                                self.config.drain_timeout,
                            )
                            .instrument(span);
                            let alive = alive.clone();
                            R::spawn(async move {
                                let _closed = task.await;
                                drop(alive);
                            });
                        }
                        Err(e) => {
                            // Out of descriptors, say: back off instead of spinning.
                            tracing::warn!(error = %e, "accept failed");
                            runtime::sleep::<R>(Duration::from_millis(50)).await;
                        }
                    }
                    accepting.push(accept(index));
                }
                _ = shutdown_signal(&mut shutdown) => break,
            }
        }
        drop(accepting);
        drop(alive);
        // Connections see the same shutdown signal and drain themselves.
        let _ = all_ended.recv().await;
        drop(listeners);
        Ok(())
    }
}

/// Serves one agent connection on a byte stream until it closes (the accepted connections of
/// [`AgentServer`], and reverse connections), and hands back the closed connection.
pub(crate) async fn serve_stream<H: AgentHandler, R: Runtime>(
    stream: R::Stream,
    codec: AgentCodec,
    conn: AgentConnection,
    handler: Arc<H>,
    handle: ServerHandle,
    drain_timeout: Duration,
) -> AgentConnection {
    let (read, write) = stream.into_split();
    let link = FramedLink::new(codec, read, write);
    serve_link::<_, H, R>(conn, link, handler, handle, drain_timeout).await
}

/// Resolves once shutdown is requested (or the handle is gone). The borrow of the watched
/// value ends before any await, so the future stays `Send`.
pub async fn shutdown_signal(rx: &mut watch::Receiver<bool>) {
    loop {
        if *rx.borrow_and_update() {
            return;
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_protocol_core::EventKind;

    #[test]
    fn config_deserializes_over_its_defaults() {
        let config: ServerConfig = serde_json::from_str(
            r#"{"max_in_flight": 256, "handshake_timeout": "250ms", "encodings": ["json"],
                "capabilities": {"limits": {"max_body_size": 1024}}}"#,
        )
        .unwrap();
        assert_eq!(config.max_in_flight, 256);
        assert_eq!(config.handshake_timeout, Duration::from_millis(250));
        let mut capabilities = ServerConfig::default().capabilities;
        capabilities.limits.max_body_size = 1024;
        let expected = ServerConfig::default()
            .with_max_in_flight(256)
            .with_handshake_timeout(Duration::from_millis(250))
            .with_encodings([Encoding::Json])
            .with_capabilities(capabilities);
        assert_eq!(format!("{config:?}"), format!("{expected:?}"));
        assert!(config
            .capabilities
            .supported_events
            .contains(EventKind::RequestBodyChunk));
    }

    #[test]
    fn config_refuses_unknown_keys() {
        for (json, key) in [
            (r#"{"max_in_flights": 1}"#, "max_in_flights"),
            (
                r#"{"capabilities": {"limits": {"max_bodysize": 1}}}"#,
                "max_bodysize",
            ),
        ] {
            let err = serde_json::from_str::<ServerConfig>(json).unwrap_err();
            assert!(
                err.to_string().contains(&format!("unknown field `{key}`")),
                "{err}"
            );
        }
        assert!(serde_json::from_str::<ServerConfig>(r#"{"drain_timeout": 30}"#).is_err());
    }

    #[test]
    fn socket_modes() {
        let mode = |json: &str| {
            serde_json::from_str::<ServerConfig>(&format!(r#"{{"socket_mode": {json}}}"#))
                .map(|c| c.socket_mode)
                .map_err(|e| e.to_string())
        };
        assert_eq!(mode(r#""660""#), Ok(0o660));
        assert_eq!(mode(r#""0600""#), Ok(0o600));
        assert_eq!(mode(r#""0o640""#), Ok(0o640));
        assert_eq!(mode("432"), Ok(0o660));
        for bad in [
            r#""690""#,
            r#""""#,
            r#""+660""#,
            r#""-1""#,
            r#""1777""#,
            "660",
            "-1",
        ] {
            assert!(mode(bad).is_err(), "{bad}");
        }
        assert!(mode("660").unwrap_err().contains("0o777"));

        let config = ServerConfig::default().with_socket_mode(0o640);
        let json = serde_json::to_value(&config).unwrap();
        assert_eq!(json["socket_mode"], "0640");
        let back: ServerConfig = serde_json::from_value(json).unwrap();
        assert_eq!(format!("{back:?}"), format!("{config:?}"));
    }

    #[test]
    fn only_a_refused_connection_means_a_stale_socket() {
        let os = io::Error::from_raw_os_error;
        // ECONNREFUSED: nothing listens.
        assert!(is_stale_socket(&os(111)));
        assert!(is_stale_socket(&io::Error::from(
            io::ErrorKind::ConnectionRefused
        )));
        // EACCES, EPERM, EPROTOTYPE, EAGAIN, ETIMEDOUT: possibly (or surely) live.
        for errno in [13, 1, 91, 11, 110] {
            assert!(!is_stale_socket(&os(errno)), "errno {errno}");
        }
        assert!(!is_stale_socket(&io::Error::from(
            io::ErrorKind::PermissionDenied
        )));
    }
}
