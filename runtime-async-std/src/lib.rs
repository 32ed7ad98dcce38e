//! Agent Protocol v2 for async-std and smol users.
//!
//! The drivers live in [`agent_protocol_driver`] and are the same code, byte for byte, that
//! `agent-protocol-tokio` runs; this crate supplies the [`AsyncStd`] runtime (tasks, timers,
//! Unix and TCP sockets) and re-exports every driver type with it filled in. Every protocol
//! decision lives in [`agent_protocol_core`]'s Sans-IO state machines.
//!
//! # async-std, smol, and what this crate is built on
//!
//! async-std is discontinued upstream: its final release recommends smol, and it is flagged
//! unmaintained (RUSTSEC-2025-0052). This crate therefore does not depend on it. It is built on
//! the two crates async-std itself runs on:
//!
//! - [`async_io`]: the reactor (sockets, timers) async-std and smol share;
//! - `async-global-executor`: the thread pool async-std's `task::spawn` feeds. The connection
//!   tasks this crate spawns run there, beside an async-std application's own tasks; under
//!   smol (or any other executor, even a bare `block_on`) it starts its own threads.
//!
//! So the same types work from `#[async_std::main]`, `smol::block_on`, or
//! `async_io::block_on`. No tokio runtime is needed or started (the drivers use only tokio's
//! runtime-independent channels and `select!`).
//!
//! # What is here, and what is not
//!
//! - [`client::AgentClient`]: one proxy->agent connection over a Unix socket.
//! - [`pool::AgentPool`]: several connections per agent, load balancing, affinity, flow
//!   control, circuit breaking, reconnection and metrics.
//! - [`server::AgentServer`]: the agent side, on Unix sockets and TCP.
//! - [`reverse`]: connections the agent dials (Unix socket or TCP).
//!
//! gRPC is tokio-only (it is built on tonic): a gRPC endpoint given to [`pool::AgentPool`] or
//! [`client::AgentClient`] is refused with a clear error. Use `agent-protocol-tokio` for gRPC.
//!
//! # Performance
//!
//! Under concurrent load this adapter matches the tokio one (BENCHMARKS.md). One request at a
//! time it is 10-20 µs slower per round trip, because async-global-executor hands a woken task
//! to whichever of its threads is free, so the caller and the connection task keep crossing
//! threads. With `ASYNC_GLOBAL_EXECUTOR_THREADS=1` (read when the executor starts) that gap
//! mostly closes, at the cost of running all connection tasks on one thread.
//!
//! ```no_run
//! use agent_protocol_async_std::core::{
//!     AgentResponse, Headers, RequestHeadersEvent, RequestMetadata,
//! };
//! use agent_protocol_async_std::pool::AgentPool;
//! use agent_protocol_async_std::server::{AgentHandler, AgentServer, ServerConfig};
//!
//! struct BlockAdmin;
//! impl AgentHandler for BlockAdmin {
//!     async fn on_request_headers(&self, event: RequestHeadersEvent) -> AgentResponse {
//!         if event.uri.starts_with("/admin") {
//!             AgentResponse::block(403, "forbidden")
//!         } else {
//!             AgentResponse::allow()
//!         }
//!     }
//! }
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // Works the same under async_std::task::block_on or smol::block_on.
//! async_io::block_on(async {
//!     let server = AgentServer::new(BlockAdmin, ServerConfig::default());
//!     let listener = server.bind_uds("/tmp/waf.sock")?;
//!     async_global_executor::spawn(async move { server.serve(listener).await }).detach();
//!
//!     let pool = AgentPool::new(Default::default());
//!     pool.add_agent("waf", "/tmp/waf.sock").await?;
//!     let meta = RequestMetadata { correlation_id: "c1".into(), ..Default::default() };
//!     let event = RequestHeadersEvent::new(meta, "GET", "/admin", Headers::new());
//!     let answer = pool.send_request_headers("waf", event).await?;
//!     assert_eq!(answer.decision.kind(), "block");
//!     Ok(())
//! })
//! # }
//! ```
#![warn(missing_docs)]

pub mod runtime;
pub mod transport;

pub use agent_protocol_core as core;
pub use agent_protocol_driver as driver;
pub use client::{AgentClient, ClientConfig, ClientError, CHANNEL_BUFFER_SIZE};
pub use pool::{AgentPool, AgentPoolConfig, AgentStats, PoolError};
pub use runtime::AsyncStd;

/// [`AgentClient`]: one proxy->agent connection (see
/// [`agent_protocol_driver::client`]).
pub mod client {
    pub use agent_protocol_driver::client::{
        unsupported, ClientError, Command, ConnectionStatus, Connector, ControlMessage, FramedLink,
        Gate, ProxyLink, CHANNEL_BUFFER_SIZE,
    };

    /// One connection to an agent, on async-io.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// use agent_protocol_async_std::client::{AgentClient, ClientConfig};
    /// use agent_protocol_async_std::core::{Event, Headers, RequestHeadersEvent, RequestMetadata};
    /// let client = AgentClient::connect("/run/waf.sock", ClientConfig::default()).await?;
    /// let meta = RequestMetadata { correlation_id: "c1".into(), ..Default::default() };
    /// let answer = client
    ///     .send(Event::RequestHeaders(RequestHeadersEvent::new(meta, "GET", "/", Headers::new())))
    ///     .await?;
    /// println!("{:?}", answer.decision);
    /// # Ok(()) }
    /// ```
    pub type AgentClient = agent_protocol_driver::client::AgentClient<crate::AsyncStd>;

    /// Client settings, on async-io (`transport` is `()`: there is no gRPC here).
    ///
    /// ```
    /// use agent_protocol_async_std::client::ClientConfig;
    /// use agent_protocol_async_std::core::Encoding;
    /// let mut config = ClientConfig::default();
    /// config.connection.handshake.encodings = [Encoding::Json].into_iter().collect();
    /// config.connect_timeout = std::time::Duration::from_secs(1);
    /// ```
    pub type ClientConfig = agent_protocol_driver::client::ClientConfig<crate::AsyncStd>;
}

/// The agent side (see [`agent_protocol_driver::server`]).
pub mod server {
    pub use agent_protocol_driver::server::{
        dispatch, is_stale_socket, shutdown_signal, unix_ms, AgentHandler, Push, ServerConfig,
        ServerHandle, MAX_IN_FLIGHT_BYTES, MAX_PENDING_TRANSMIT,
    };

    /// An agent server on async-io.
    ///
    /// ```no_run
    /// # async fn demo() -> std::io::Result<()> {
    /// use agent_protocol_async_std::server::{AgentHandler, AgentServer, ServerConfig};
    /// struct AllowAll;
    /// impl AgentHandler for AllowAll {}
    /// let server = AgentServer::new(AllowAll, ServerConfig::default());
    /// let listener = server.bind_uds("/run/agent.sock")?;
    /// let handle = server.handle();
    /// // Elsewhere, on a signal: handle.shutdown() stops accepting and drains.
    /// # drop(handle);
    /// server.serve(listener).await
    /// # }
    /// ```
    pub type AgentServer<H> = agent_protocol_driver::server::AgentServer<H, crate::AsyncStd>;

    /// Where a server accepts: a [`UdsListener`], or `Listener::tcp(async_io_tcp_listener)`.
    ///
    /// ```no_run
    /// # async fn demo() -> std::io::Result<()> {
    /// use agent_protocol_async_std::server::{AgentHandler, AgentServer, Listener, ServerConfig};
    /// use async_io::Async;
    /// struct AllowAll;
    /// impl AgentHandler for AllowAll {}
    /// let server = AgentServer::new(AllowAll, ServerConfig::default());
    /// let uds = server.bind_uds("/run/agent.sock")?;
    /// let tcp = Async::<std::net::TcpListener>::bind(([127, 0, 0, 1], 7000))?;
    /// server.serve_all(vec![uds.into(), Listener::tcp(tcp)]).await
    /// # }
    /// ```
    pub type Listener = agent_protocol_driver::server::Listener<crate::AsyncStd>;

    /// A bound Unix socket whose file is removed when it is dropped.
    ///
    /// ```
    /// # fn main() -> std::io::Result<()> {
    /// let dir = std::env::temp_dir().join(format!("ap-doc-{}", std::process::id()));
    /// std::fs::create_dir_all(&dir)?;
    /// let path = dir.join("agent.sock");
    /// let listener: agent_protocol_async_std::server::UdsListener =
    ///     agent_protocol_async_std::server::bind_unix_socket(&path, 0o660)?;
    /// assert_eq!(listener.path(), path);
    /// drop(listener);
    /// assert!(!path.exists());
    /// # std::fs::remove_dir(&dir) }
    /// ```
    pub type UdsListener = agent_protocol_driver::server::UdsListener<crate::AsyncStd>;

    /// Binds a Unix socket at `path` with file mode `mode`. An existing socket file is removed
    /// only if nothing answers on it (a stale file); a live one is an `AddrInUse` error, and a
    /// non-socket file is left alone with an `AlreadyExists` error.
    ///
    /// ```no_run
    /// # fn demo() -> std::io::Result<()> {
    /// let listener =
    ///     agent_protocol_async_std::server::bind_unix_socket("/run/agent.sock".as_ref(), 0o660)?;
    /// # Ok(()) }
    /// ```
    pub fn bind_unix_socket(path: &std::path::Path, mode: u32) -> std::io::Result<UdsListener> {
        agent_protocol_driver::server::bind_unix_socket(path, mode)
    }
}

/// The proxy's agent pool (see [`agent_protocol_driver::pool`]).
pub mod pool {
    pub use agent_protocol_driver::pool::{
        AgentConfigUpdate, AgentStats, PoolError, CONFIG_UPDATE_BUFFER,
    };

    /// The agent pool, on async-io. See [`agent_protocol_driver::pool::AgentPool`].
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// use agent_protocol_async_std::pool::{AgentPool, AgentPoolConfig};
    /// let pool = AgentPool::new(AgentPoolConfig::default());
    /// pool.add_agent("waf", "/run/waf.sock").await?;
    /// # Ok(()) }
    /// ```
    pub type AgentPool = agent_protocol_driver::pool::AgentPool<crate::AsyncStd>;

    /// Pool settings, on async-io.
    ///
    /// ```
    /// use agent_protocol_async_std::pool::AgentPoolConfig;
    /// let config = AgentPoolConfig::default().with_connections_per_agent(2);
    /// assert_eq!(config.connections_per_agent, 2);
    /// ```
    pub type AgentPoolConfig = agent_protocol_driver::pool::AgentPoolConfig<crate::AsyncStd>;
}

/// Reverse connections, the agent dialing the proxy (see [`agent_protocol_driver::reverse`]).
pub mod reverse {
    pub use agent_protocol_driver::reverse::{ReverseAgentConfig, ReverseTarget};

    /// Proxy-side listener for reverse connections, on async-io.
    ///
    /// ```no_run
    /// # async fn demo() -> std::io::Result<()> {
    /// use agent_protocol_async_std::core::registration::RegistrationPolicy;
    /// use agent_protocol_async_std::reverse::ReverseListener;
    /// use agent_protocol_async_std::server::bind_unix_socket;
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
    pub type ReverseListener = agent_protocol_driver::reverse::ReverseListener<crate::AsyncStd>;

    /// Agent-side connector, on async-io.
    ///
    /// ```no_run
    /// # async fn demo() {
    /// use agent_protocol_async_std::reverse::{ReverseAgentConfig, ReverseConnector, ReverseTarget};
    /// use agent_protocol_async_std::server::{AgentHandler, ServerHandle};
    /// struct AllowAll;
    /// impl AgentHandler for AllowAll {}
    /// let mut config = ReverseAgentConfig::new(ReverseTarget::Tcp("127.0.0.1:7001".into()), "waf-1");
    /// config.auth_token = Some("s3cret".into());
    /// let connector: ReverseConnector<AllowAll> =
    ///     ReverseConnector::new(std::sync::Arc::new(AllowAll), config, ServerHandle::new("waf-1"));
    /// connector.run().await; // reconnects with backoff until the handle shuts down
    /// # }
    /// ```
    pub type ReverseConnector<H> =
        agent_protocol_driver::reverse::ReverseConnector<H, crate::AsyncStd>;

    /// An agent that registered, as handed to the admission callback.
    ///
    /// ```
    /// use agent_protocol_async_std::reverse::RegisteredAgent;
    /// fn describe(agent: &RegisteredAgent) -> String {
    ///     format!("{} ({})", agent.agent_id, agent.capabilities.name)
    /// }
    /// ```
    pub type RegisteredAgent = agent_protocol_driver::reverse::RegisteredAgent<crate::AsyncStd>;
}
