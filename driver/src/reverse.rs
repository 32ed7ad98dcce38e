//! Reverse connections: the agent dials the proxy and registers (0x01 / 0x02, JSON).
//!
//! - Proxy side, [`ReverseListener`]: accepts on a Unix socket or TCP, validates each agent's
//!   registration with the core's [`ProxyRegistration`] (version, id, allow-list, token value in
//!   constant time), hands the connection to an admission callback (normally the pool), and
//!   writes the success answer only after it was admitted.
//! - Agent side, [`ReverseConnector`]: dials, registers (with a token), then serves the same
//!   [`AgentHandler`] as the UDS server over the connection, JSON encoded; it reconnects with
//!   jittered exponential backoff until shut down.

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agent_protocol_core::agent::{AgentCodec, AgentConfig, AgentConnection};
use agent_protocol_core::frame::{Decoded, Frame, FrameDecoder};
use agent_protocol_core::handshake::{AgentHandshakeConfig, Negotiated, PROTOCOL_VERSION};
use agent_protocol_core::pool::Backoff;
use agent_protocol_core::registration::{
    PendingRegistration, ProxyRegistration, RegistrationError, RegistrationPolicy,
    RegistrationRequest, RegistrationResponse,
};
use agent_protocol_core::{Capabilities, ConnectionError, Encoding};
use bytes::BytesMut;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tracing::Instrument;

use crate::client::{AgentClient, ClientConfig, ControlMessage};
use crate::runtime::{self, Runtime};
use crate::server::{serve_stream, shutdown_signal, AgentHandler, Listener, ServerHandle};
use crate::spans::{self, Peer};

/// Where the proxy's reverse listener is.
///
/// In a configuration file: `{"unix": "/run/proxy-reverse.sock"}` or `{"tcp": "proxy:7000"}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReverseTarget {
    /// A Unix socket path.
    Unix(std::path::PathBuf),
    /// A TCP address (`host:port`).
    Tcp(String),
}

/// `unix:PATH` or `tcp://ADDRESS`, as endpoints are written.
impl std::fmt::Display for ReverseTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReverseTarget::Unix(path) => write!(f, "unix:{}", path.display()),
            ReverseTarget::Tcp(address) => write!(f, "tcp://{address}"),
        }
    }
}

impl ReverseTarget {
    async fn connect<R: Runtime>(&self) -> io::Result<R::Stream> {
        match self {
            ReverseTarget::Unix(p) => R::connect_unix(p).await,
            ReverseTarget::Tcp(addr) => R::connect_tcp(addr).await,
        }
    }
}

/// Reads until one complete frame is available; returns it and whatever followed it. Each way
/// it can fail keeps its cause: the deadline ([`RegistrationError::Timeout`], the policy's
/// `timeout`), bytes that cannot be framed, the peer leaving, or a read error.
async fn read_first_frame<R: Runtime>(
    stream: &mut R::Stream,
    deadline: Instant,
    timeout: Duration,
) -> Result<(Frame, BytesMut), ConnectionError> {
    let mut decoder = FrameDecoder::new();
    let mut buf = BytesMut::with_capacity(4096);
    loop {
        loop {
            match decoder.decode(&mut buf)? {
                Some(Decoded::Frame(f)) => return Ok((f, buf)),
                Some(Decoded::Skipped { .. }) => continue,
                None => break,
            }
        }
        let read = runtime::timeout_at::<R, _>(deadline, runtime::read_buf(stream, &mut buf))
            .await
            .map_err(|_| RegistrationError::Timeout(timeout))?;
        match read {
            Ok(0) => return Err(ConnectionError::PeerClosed),
            Ok(_) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// An agent that registered on a reverse connection, as handed to the admission callback.
#[derive(Debug)]
pub struct RegisteredAgent<R: Runtime> {
    /// The agent's id.
    pub agent_id: String,
    /// What it announced.
    pub capabilities: Capabilities,
    /// Its metadata.
    pub metadata: Option<serde_json::Value>,
    /// The connection, ready for requests once admitted.
    pub client: AgentClient<R>,
}

/// Proxy-side listener for reverse connections.
///
/// ```no_run
/// # async fn demo() -> std::io::Result<()> {
/// use agent_protocol_tokio::reverse::ReverseListener;
/// use agent_protocol_tokio::server::bind_unix_socket;
/// use agent_protocol_core::registration::RegistrationPolicy;
/// let policy = RegistrationPolicy { tokens: vec!["s3cret".into()], ..Default::default() };
/// let listener = bind_unix_socket("/run/proxy-reverse.sock".as_ref(), 0o660)?;
/// ReverseListener::new(policy, Default::default())
///     .serve(listener.into(), |agent| {
///         println!("{} registered", agent.agent_id);
///         Ok(()) // normally: pool.add_reverse_connection(&agent.agent_id, agent.client)
///     })
///     .await
/// # }
/// ```
#[derive(Clone)]
pub struct ReverseListener<R: Runtime> {
    policy: Arc<RegistrationPolicy>,
    client_config: ClientConfig<R>,
    shutdown: watch::Sender<bool>,
    control: Option<ControlFactory>,
}

/// Gives each admitted agent's connection a channel for what the agent pushes (metrics,
/// config-update requests), e.g. [`crate::pool::AgentPool::control_sender`].
type ControlFactory = Arc<dyn Fn(&str) -> mpsc::Sender<ControlMessage> + Send + Sync>;

impl<R: Runtime> std::fmt::Debug for ReverseListener<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReverseListener")
            .field("policy", &self.policy)
            .field("client_config", &self.client_config)
            .finish_non_exhaustive()
    }
}

impl<R: Runtime> ReverseListener<R> {
    /// A listener applying `policy`; admitted connections use `client_config`.
    pub fn new(policy: RegistrationPolicy, client_config: ClientConfig<R>) -> Self {
        Self {
            policy: Arc::new(policy),
            client_config,
            shutdown: watch::channel(false).0,
            control: None,
        }
    }

    /// Routes what registered agents push (metrics, config updates) to the channel `factory`
    /// returns for their id, e.g. `move |id| pool.control_sender(id)`.
    pub fn with_control(
        mut self,
        factory: impl Fn(&str) -> mpsc::Sender<ControlMessage> + Send + Sync + 'static,
    ) -> Self {
        self.control = Some(Arc::new(factory));
        self
    }

    /// Stops accepting.
    pub fn shutdown(&self) {
        let _ = self.shutdown.send(true);
    }

    /// Accepts until [`ReverseListener::shutdown`]. `admit` decides whether the pool takes the
    /// agent; an `Err(reason)` is sent to the agent as a refusal.
    pub async fn serve<F>(&self, listener: Listener<R>, admit: F) -> io::Result<()>
    where
        F: Fn(RegisteredAgent<R>) -> Result<(), String> + Send + Sync + 'static,
    {
        let admit = Arc::new(admit);
        let mut stop = self.shutdown.subscribe();
        loop {
            let stream = tokio::select! {
                r = listener.accept_stream() => r,
                _ = shutdown_signal(&mut stop) => return Ok(()),
            };
            match stream {
                Ok(stream) => {
                    let this = self.clone();
                    let admit = admit.clone();
                    R::spawn(async move {
                        if let Err(e) = this.register(stream, &*admit).await {
                            tracing::info!(error = %e, "reverse registration failed");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "reverse accept failed");
                    runtime::sleep::<R>(Duration::from_millis(50)).await;
                }
            }
        }
    }

    async fn register<F>(&self, mut stream: R::Stream, admit: &F) -> Result<(), ConnectionError>
    where
        F: Fn(RegisteredAgent<R>) -> Result<(), String>,
    {
        let now = R::now();
        let registration = ProxyRegistration::new(&self.policy, now);
        let deadline = registration.deadline();
        let (frame, leftover) =
            read_first_frame::<R>(&mut stream, deadline, self.policy.timeout).await?;
        let mut out = BytesMut::new();
        let pending = match registration.handle_frame(&self.policy, &frame, &mut out) {
            Ok(p) => p,
            Err(e) => {
                let _ = runtime::write_all(&mut stream, &out).await;
                return Err(e.into());
            }
        };
        if !leftover.is_empty() {
            // The agent must wait for our answer before sending anything.
            return Err(RegistrationError::Malformed(
                "agent sent data before the registration answer".into(),
            )
            .into());
        }
        let PendingRegistration { request } = pending.clone();
        let negotiated = Negotiated {
            encoding: Encoding::Json,
            capabilities: request.capabilities.clone(),
            protocol_version: PROTOCOL_VERSION,
        };
        let control = self.control.as_ref().map(|f| f(&request.agent_id));
        let span = spans::proxy_connection(Some(&request.agent_id), Some(&"reverse"));
        let (client, gate) = span.in_scope(|| {
            AgentClient::from_established_gated(
                stream,
                self.client_config.clone(),
                negotiated,
                control,
            )
        });
        let connection_id = format!("{}-{:x}", request.agent_id, crate::server::unix_ms());
        let agent = RegisteredAgent {
            agent_id: request.agent_id.clone(),
            capabilities: request.capabilities,
            metadata: request.metadata,
            client,
        };
        let mut answer = BytesMut::new();
        match admit(agent) {
            Ok(()) => {
                pending
                    .accept(&self.policy, &connection_id, &mut answer)
                    .map_err(ConnectionError::Encode)?;
                gate.open(answer.freeze());
                Ok(())
            }
            Err(reason) => {
                let err = pending
                    .reject(&self.policy, &reason, &mut answer)
                    .map_err(ConnectionError::Encode)?;
                gate.refuse(answer.freeze());
                Err(err.into())
            }
        }
    }
}

/// Agent-side settings for a reverse connection.
///
/// Built from [`ReverseAgentConfig::new`] and the `with_*` setters (fields may be added in any
/// release, so the struct cannot be built literally outside this crate); the fields stay public
/// to read and set.
///
/// ```
/// use std::time::Duration;
/// use agent_protocol_driver::reverse::{ReverseAgentConfig, ReverseTarget};
/// let target = ReverseTarget::Tcp("127.0.0.1:7000".into());
/// let config = ReverseAgentConfig::new(target, "waf-1")
///     .with_auth_token("secret")
///     .with_registration_timeout(Duration::from_secs(2));
/// assert_eq!(config.auth_token.as_deref(), Some("secret"));
/// ```
///
/// Deserializes from a configuration section. There is no `Default`: `target` and `agent_id`
/// are required, and every other key left out takes the value [`new`](Self::new) gives it, at
/// any depth (a `capabilities` section is read over the capabilities `new` derives from the
/// agent id, see
/// [`capabilities::strict::deserialize_over`](agent_protocol_core::capabilities::strict::deserialize_over)).
/// An unknown key is an error, durations are strings such as `"10s"`. No value needs checking:
/// the setters take any value too, and the backoff tolerates out-of-range numbers.
///
/// ```
/// use std::time::Duration;
/// use agent_protocol_driver::reverse::{ReverseAgentConfig, ReverseTarget};
/// let config: ReverseAgentConfig = serde_json::from_str(
///     r#"{"target": {"tcp": "127.0.0.1:7000"}, "agent_id": "waf-1",
///         "auth_token": "secret", "registration_timeout": "2s"}"#,
/// )
/// .unwrap();
/// assert_eq!(config.target, ReverseTarget::Tcp("127.0.0.1:7000".into()));
/// assert_eq!(config.registration_timeout, Duration::from_secs(2));
/// assert_eq!(config.capabilities.agent_id, "waf-1");
/// assert!(serde_json::from_str::<ReverseAgentConfig>(r#"{"agent_id": "waf-1"}"#).is_err());
/// ```
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(try_from = "ReverseAgentSection")]
#[non_exhaustive]
pub struct ReverseAgentConfig {
    /// The proxy's reverse listener.
    pub target: ReverseTarget,
    /// Our id.
    pub agent_id: String,
    /// Shared secret, if the proxy requires one.
    pub auth_token: Option<String>,
    /// What we announce.
    pub capabilities: Capabilities,
    /// Free-form metadata.
    pub metadata: Option<serde_json::Value>,
    /// Deadline for the registration answer.
    #[serde(with = "humantime_serde")]
    pub registration_timeout: Duration,
    /// Reconnection backoff.
    pub backoff: Backoff,
    /// Unanswered requests before new ones are refused.
    pub max_in_flight: usize,
    /// How long shutdown waits for in-flight requests.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
}

/// A [`ReverseAgentConfig`] as a file holds it. The defaults depend on the agent id (its
/// capabilities), so they are filled in once the whole section is read, by `new`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReverseAgentSection {
    target: ReverseTarget,
    agent_id: String,
    #[serde(default)]
    auth_token: Option<String>,
    #[serde(default)]
    capabilities: Option<serde_json::Value>,
    #[serde(default)]
    metadata: Option<serde_json::Value>,
    #[serde(default, with = "humantime_serde")]
    registration_timeout: Option<Duration>,
    #[serde(default)]
    backoff: Option<Backoff>,
    #[serde(default)]
    max_in_flight: Option<usize>,
    #[serde(default, with = "humantime_serde")]
    drain_timeout: Option<Duration>,
}

impl TryFrom<ReverseAgentSection> for ReverseAgentConfig {
    type Error = serde_json::Error;

    fn try_from(section: ReverseAgentSection) -> Result<Self, Self::Error> {
        let mut config = ReverseAgentConfig::new(section.target, section.agent_id);
        if let Some(capabilities) = section.capabilities {
            config.capabilities = agent_protocol_core::capabilities::strict::deserialize_over(
                &config.capabilities,
                capabilities,
            )?;
        }
        config.auth_token = section.auth_token;
        config.metadata = section.metadata;
        if let Some(timeout) = section.registration_timeout {
            config.registration_timeout = timeout;
        }
        if let Some(backoff) = section.backoff {
            config.backoff = backoff;
        }
        if let Some(max_in_flight) = section.max_in_flight {
            config.max_in_flight = max_in_flight;
        }
        if let Some(timeout) = section.drain_timeout {
            config.drain_timeout = timeout;
        }
        Ok(config)
    }
}

impl ReverseAgentConfig {
    /// Settings for agent `agent_id` dialing `target`.
    pub fn new(target: ReverseTarget, agent_id: impl Into<String>) -> Self {
        let agent_id = agent_id.into();
        Self {
            target,
            capabilities: Capabilities::new(
                agent_id.clone(),
                agent_id.clone(),
                env!("CARGO_PKG_VERSION"),
            )
            .with_all_events()
            .with_control_features(),
            agent_id,
            auth_token: None,
            metadata: None,
            registration_timeout: Duration::from_secs(10),
            backoff: Backoff::default(),
            max_in_flight: 4096,
            drain_timeout: Duration::from_secs(30),
        }
    }

    /// Sets [`auth_token`](Self::auth_token) to `auth_token`, the shared secret sent to the
    /// proxy.
    #[must_use]
    pub fn with_auth_token(mut self, auth_token: impl Into<String>) -> Self {
        self.auth_token = Some(auth_token.into());
        self
    }

    /// Sets [`capabilities`](Self::capabilities), what the agent announces.
    #[must_use]
    pub fn with_capabilities(mut self, capabilities: Capabilities) -> Self {
        self.capabilities = capabilities;
        self
    }

    /// Sets [`metadata`](Self::metadata) to `metadata`, free-form data sent at registration.
    #[must_use]
    pub fn with_metadata(mut self, metadata: serde_json::Value) -> Self {
        self.metadata = Some(metadata);
        self
    }

    /// Sets [`registration_timeout`](Self::registration_timeout), the deadline for the answer.
    #[must_use]
    pub fn with_registration_timeout(mut self, registration_timeout: Duration) -> Self {
        self.registration_timeout = registration_timeout;
        self
    }

    /// Sets [`backoff`](Self::backoff), the delay between reconnection attempts.
    #[must_use]
    pub fn with_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Sets [`max_in_flight`](Self::max_in_flight), the unanswered requests before refusals.
    #[must_use]
    pub fn with_max_in_flight(mut self, max_in_flight: usize) -> Self {
        self.max_in_flight = max_in_flight;
        self
    }

    /// Sets [`drain_timeout`](Self::drain_timeout), how long shutdown waits for requests.
    #[must_use]
    pub fn with_drain_timeout(mut self, drain_timeout: Duration) -> Self {
        self.drain_timeout = drain_timeout;
        self
    }
}

/// Agent side of a reverse connection.
pub struct ReverseConnector<H, R: Runtime> {
    handler: Arc<H>,
    config: ReverseAgentConfig,
    handle: ServerHandle,
    runtime: std::marker::PhantomData<R>,
}

impl<H: AgentHandler, R: Runtime> ReverseConnector<H, R> {
    /// A connector serving `handler`; `handle` (from an [`crate::server::AgentServer`] sharing
    /// the handler, or a fresh one) carries pushes and shutdown.
    pub fn new(handler: Arc<H>, config: ReverseAgentConfig, handle: ServerHandle) -> Self {
        Self {
            handler,
            config,
            handle,
            runtime: std::marker::PhantomData,
        }
    }

    /// Dials, registers, and serves the connection until it ends; returns the proxy's
    /// acceptance, or why the connection ended before it was accepted: the connect or a write
    /// failed ([`ConnectionError::Io`]), or registration failed
    /// ([`ConnectionError::Registration`]: refused by the proxy, or no answer in time).
    ///
    /// Registration is the first state of the core's connection
    /// ([`AgentConnection::new_reverse`]), driven by the same connection task as every other
    /// agent connection, so frames the proxy sends right behind its acceptance are served, not
    /// lost.
    pub async fn connect_once(&self) -> Result<RegistrationResponse, ConnectionError> {
        let stream = self
            .config
            .target
            .connect::<R>()
            .await
            .map_err(ConnectionError::from)?;
        let request = RegistrationRequest {
            protocol_version: PROTOCOL_VERSION,
            agent_id: self.config.agent_id.clone(),
            capabilities: self.config.capabilities.clone(),
            auth_token: self.config.auth_token.clone(),
            metadata: self.config.metadata.clone(),
        };
        let config = AgentConfig::default()
            .with_max_in_flight(self.config.max_in_flight)
            .with_handshake(
                AgentHandshakeConfig::default()
                    .with_capabilities(self.config.capabilities.clone())
                    .with_timeout(self.config.registration_timeout),
            );
        let codec = AgentCodec::registering(&config);
        let conn = AgentConnection::new_reverse(config, request, R::now());
        let span = spans::agent_connection(
            Peer::Reverse,
            Some(&self.config.target),
            &self.config.agent_id,
        );
        let conn = serve_stream::<H, R>(
            stream,
            codec,
            conn,
            self.handler.clone(),
            self.handle.clone(),
            self.config.drain_timeout,
        )
        .instrument(span)
        .await;
        match (conn.registration(), conn.close_reason()) {
            (Some(accepted), _) => Ok(accepted.clone()),
            (None, Some(reason)) => Err(reason.clone()),
            (None, None) => Err(ConnectionError::LocalClose),
        }
    }

    /// Keeps a registered connection up until shutdown, reconnecting with backoff.
    pub async fn run(&self) {
        let mut attempt = 0u32;
        let mut stop = self.handle.shutdown_receiver();
        loop {
            let started = R::now();
            let result = tokio::select! {
                r = self.connect_once() => r,
                _ = shutdown_signal(&mut stop) => return,
            };
            match result {
                Ok(_) if R::now().saturating_duration_since(started) > Duration::from_secs(10) => {
                    attempt = 0
                }
                Ok(_) => {}
                Err(e) => tracing::info!(error = %e, "reverse connection attempt failed"),
            }
            let random = {
                use std::hash::{BuildHasher, Hasher};
                let mut h = std::collections::hash_map::RandomState::new().build_hasher();
                h.write_u32(attempt);
                h.finish()
            };
            let delay = self.config.backoff.delay(attempt, random);
            attempt = attempt.saturating_add(1);
            tokio::select! {
                _ = runtime::sleep::<R>(delay) => {}
                _ = shutdown_signal(&mut stop) => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_protocol_core::EventKind;

    fn target() -> ReverseTarget {
        ReverseTarget::Unix("/run/proxy-reverse.sock".into())
    }

    #[test]
    fn config_deserializes_over_what_new_gives() {
        let config: ReverseAgentConfig = serde_json::from_str(
            r#"{"target": {"unix": "/run/proxy-reverse.sock"}, "agent_id": "waf-1",
                "drain_timeout": "250ms", "backoff": {"max": "5s"},
                "capabilities": {"limits": {"max_concurrency": 8}}}"#,
        )
        .unwrap();
        assert_eq!(config.drain_timeout, Duration::from_millis(250));
        let defaults = ReverseAgentConfig::new(target(), "waf-1");
        let mut capabilities = defaults.capabilities.clone();
        capabilities.limits.max_concurrency = 8;
        let expected = defaults
            .with_drain_timeout(Duration::from_millis(250))
            .with_backoff(Backoff::default().with_max(Duration::from_secs(5)))
            .with_capabilities(capabilities);
        assert_eq!(format!("{config:?}"), format!("{expected:?}"));
        assert_eq!(config.capabilities.agent_id, "waf-1");
        assert!(config
            .capabilities
            .supported_events
            .contains(EventKind::Configure));
    }

    #[test]
    fn config_refuses_unknown_and_missing_keys() {
        let base = r#""target": {"tcp": "proxy:7000"}, "agent_id": "a""#;
        for (extra, key) in [
            (r#""token": "x""#, "token"),
            (r#""backoff": {"maximum": "1s"}"#, "maximum"),
            (r#""capabilities": {"feature": {}}"#, "feature"),
        ] {
            let json = format!("{{{base}, {extra}}}");
            let err = serde_json::from_str::<ReverseAgentConfig>(&json).unwrap_err();
            assert!(
                err.to_string().contains(&format!("unknown field `{key}`")),
                "{err}"
            );
        }
        let err = serde_json::from_str::<ReverseAgentConfig>(
            r#"{"target": {"udp": "x"}, "agent_id": "a"}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("unknown variant `udp`"), "{err}");
        let err = serde_json::from_str::<ReverseAgentConfig>(r#"{"target": {"tcp": "x:1"}}"#)
            .unwrap_err();
        assert!(
            err.to_string().contains("missing field `agent_id`"),
            "{err}"
        );
        let json = format!(r#"{{{base}, "registration_timeout": 10}}"#);
        assert!(serde_json::from_str::<ReverseAgentConfig>(&json).is_err());
    }

    #[test]
    fn config_round_trips() {
        let config = ReverseAgentConfig::new(target(), "waf-1")
            .with_auth_token("secret")
            .with_metadata(serde_json::json!({"zone": "a"}))
            .with_registration_timeout(Duration::from_millis(1500));
        let json = serde_json::to_value(&config).unwrap();
        assert_eq!(json["registration_timeout"], "1s 500ms");
        assert_eq!(
            json["target"],
            serde_json::json!({"unix": "/run/proxy-reverse.sock"})
        );
        let back: ReverseAgentConfig = serde_json::from_value(json).unwrap();
        assert_eq!(format!("{back:?}"), format!("{config:?}"));
    }
}
