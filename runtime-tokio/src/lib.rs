//! Agent Protocol v2 on tokio.
//!
//! The drivers live in [`agent_protocol_driver`] (the same code runs on async-std and smol
//! through `agent-protocol-async-std`); this crate supplies the [`Tokio`] runtime (tasks,
//! timers, Unix and TCP sockets), re-exports every driver type with it filled in, and adds the
//! gRPC transport (tonic), which exists only here. Every protocol decision lives in
//! [`agent_protocol_core`]'s Sans-IO state machines.
//!
//! - [`client::AgentClient`]: one proxy->agent connection (UDS, or gRPC with the `grpc`
//!   feature, on by default; see [`grpc`]).
//! - [`pool::AgentPool`]: several connections per agent, load balancing, affinity, flow
//!   control, circuit breaking, reconnection and metrics.
//! - [`server::AgentServer`]: the agent side, on Unix sockets, TCP and (see
//!   [`grpc::ServeGrpc`]) gRPC.
//! - [`reverse`]: connections the agent dials.
#![warn(missing_docs)]

#[cfg(feature = "grpc")]
pub mod grpc;
pub mod runtime;
pub mod transport;

pub use agent_protocol_core as core;
pub use agent_protocol_driver as driver;
pub use client::{AgentClient, ClientConfig, ClientError, CHANNEL_BUFFER_SIZE};
pub use pool::{AgentPool, AgentPoolConfig, AgentStats, PoolError};
pub use runtime::Tokio;

/// [`AgentClient`]: one proxy->agent connection (see
/// [`agent_protocol_driver::client`]).
pub mod client {
    pub use agent_protocol_driver::client::{
        unsupported, ClientError, Command, ConnectionStatus, Connector, ControlMessage, FramedLink,
        Gate, ProxyLink, CHANNEL_BUFFER_SIZE,
    };

    /// One connection to an agent, on tokio.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// use agent_protocol_tokio::client::{AgentClient, ClientConfig};
    /// use agent_protocol_tokio::core::{Event, Headers, RequestHeadersEvent, RequestMetadata};
    /// let client = AgentClient::connect("/run/waf.sock", ClientConfig::default()).await?;
    /// let meta = RequestMetadata { correlation_id: "c1".into(), ..Default::default() };
    /// let answer = client
    ///     .send(Event::RequestHeaders(RequestHeadersEvent::new(meta, "GET", "/", Headers::new())))
    ///     .await?;
    /// println!("{:?}", answer.decision);
    /// # Ok(()) }
    /// ```
    pub type AgentClient = agent_protocol_driver::client::AgentClient<crate::Tokio>;
    /// Client settings, on tokio (`transport` holds the gRPC options).
    pub type ClientConfig = agent_protocol_driver::client::ClientConfig<crate::Tokio>;
}

/// The agent side (see [`agent_protocol_driver::server`]).
pub mod server {
    pub use agent_protocol_driver::server::{
        dispatch, is_stale_socket, shutdown_signal, unix_ms, AgentHandler, Push, ServerConfig,
        ServerHandle, MAX_IN_FLIGHT_BYTES, MAX_PENDING_TRANSMIT,
    };

    /// An agent server on tokio.
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
    pub type AgentServer<H> = agent_protocol_driver::server::AgentServer<H, crate::Tokio>;
    /// Where a server accepts: a [`UdsListener`], or `Listener::tcp(tokio_tcp_listener)`.
    pub type Listener = agent_protocol_driver::server::Listener<crate::Tokio>;
    /// A bound Unix socket whose file is removed when it is dropped.
    pub type UdsListener = agent_protocol_driver::server::UdsListener<crate::Tokio>;

    /// Binds a Unix socket at `path` with file mode `mode`. An existing socket file is removed
    /// only if nothing answers on it (a stale file); a live one is an `AddrInUse` error, and a
    /// non-socket file is left alone with an `AlreadyExists` error.
    ///
    /// ```no_run
    /// # async fn demo() -> std::io::Result<()> {
    /// let listener = agent_protocol_tokio::server::bind_unix_socket("/run/agent.sock".as_ref(), 0o660)?;
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

    /// The agent pool, on tokio. See [`agent_protocol_driver::pool::AgentPool`].
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// use agent_protocol_tokio::pool::{AgentPool, AgentPoolConfig};
    /// let pool = AgentPool::new(AgentPoolConfig::default());
    /// pool.add_agent("waf", "/run/waf.sock").await?;
    /// # Ok(()) }
    /// ```
    pub type AgentPool = agent_protocol_driver::pool::AgentPool<crate::Tokio>;
    /// Pool settings, on tokio.
    pub type AgentPoolConfig = agent_protocol_driver::pool::AgentPoolConfig<crate::Tokio>;
}

/// Reverse connections, the agent dialing the proxy (see [`agent_protocol_driver::reverse`]).
pub mod reverse {
    pub use agent_protocol_driver::reverse::{ReverseAgentConfig, ReverseTarget};

    /// Proxy-side listener for reverse connections, on tokio.
    pub type ReverseListener = agent_protocol_driver::reverse::ReverseListener<crate::Tokio>;
    /// Agent-side connector, on tokio.
    pub type ReverseConnector<H> =
        agent_protocol_driver::reverse::ReverseConnector<H, crate::Tokio>;
    /// An agent that registered, as handed to the admission callback.
    pub type RegisteredAgent = agent_protocol_driver::reverse::RegisteredAgent<crate::Tokio>;
}
