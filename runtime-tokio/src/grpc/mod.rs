//! The gRPC transport (`zentinel.agent.v2.AgentServiceV2`), on tonic.
//!
//! Both ends drive the same Sans-IO state machines as the UDS transport: the agent side one
//! [`AgentConnection`] per `ProcessStream`, run by the driver's one agent connection task over a
//! gRPC [`AgentLink`] (the UDS server runs it over a framed one), the proxy side a
//! [`ProxyConnection`] run by the driver's one client task over a gRPC [`ProxyLink`], inside an
//! ordinary [`AgentClient`]. Deadlines, cancel, pings,
//! flow control, health, limits and body sequencing therefore behave exactly as on UDS; only the
//! framing differs (protobuf over HTTP/2, converted by [`agent_protocol_proto::convert`]).
//!
//! - Agent: [`ServeGrpc::serve_grpc`] serves the same [`AgentHandler`] as the UDS server
//!   (requests processed concurrently on each stream, Cancel drops the handler's future, Ping is
//!   answered at once, every event type answered, events before the handshake answered with an
//!   error instead of dropped). `ControlStream` answers config updates and streams what the
//!   [`ServerHandle`] pushes; `ProcessEvent` answers any single event.
//! - Proxy: [`AgentClient::connect`] takes `host:port`, `http://host:port` and (with the `tls`
//!   feature) `https://host:port`; the pool opens such endpoints over gRPC.
//! - Messages up to [`MAX_MESSAGE_SIZE`] (16 MiB) in both directions on both sides (tonic's
//!   default receive limit, which the reference runs with, is 4 MiB).
//! - Against hostile peers: an agent stream stops reading while
//!   [`server::MAX_UNSENT_ANSWERS`] answers wait for a proxy that does not read them; a message
//!   over the limit ends the stream with `RESOURCE_EXHAUSTED` (agent side) or fails every request
//!   on it with an error naming the limit (proxy side); events without a correlation id are
//!   blocked, never handled; and both sides' loops serve timers, writes and commands before
//!   reads, so a peer flooding valid messages cannot hold requests past their deadlines. See
//!   [`server`] for the details of each.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use agent_protocol_tokio::client::{AgentClient, ClientConfig};
//! use agent_protocol_tokio::grpc::ServeGrpc;
//! use agent_protocol_tokio::server::{AgentHandler, AgentServer, ServerConfig};
//!
//! struct AllowAll;
//! impl AgentHandler for AllowAll {}
//!
//! let server = AgentServer::new(AllowAll, ServerConfig::default());
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:50051").await?;
//! tokio::spawn(async move { server.serve_grpc(listener).await });
//!
//! let client = AgentClient::connect("127.0.0.1:50051", ClientConfig::default()).await?;
//! println!("rtt {:?}", client.ping().await?);
//! # Ok(()) }
//! ```
//!
//! [`AgentConnection`]: agent_protocol_core::AgentConnection
//! [`AgentLink`]: agent_protocol_driver::server::AgentLink
//! [`ProxyConnection`]: agent_protocol_core::proxy::ProxyConnection
//! [`ProxyLink`]: agent_protocol_driver::client::ProxyLink
//! [`AgentClient`]: crate::client::AgentClient
//! [`AgentClient::connect`]: crate::client::AgentClient::connect
//! [`AgentHandler`]: crate::server::AgentHandler
//! [`ServerHandle`]: crate::server::ServerHandle

mod client;
pub mod server;
#[cfg(feature = "tls")]
pub mod tls;

pub use agent_protocol_proto::MAX_MESSAGE_SIZE;
pub use client::GrpcConnector;
pub use server::{GrpcService, ServeGrpc};

use std::time::Duration;

/// HTTP/2 flow-control window per stream (both sides): large enough that a 1 MiB body in 64 KiB
/// chunks flows without waiting for window updates.
pub(crate) const STREAM_WINDOW: u32 = 2 * 1024 * 1024;
/// HTTP/2 flow-control window per connection (both sides).
pub(crate) const CONNECTION_WINDOW: u32 = 8 * 1024 * 1024;
/// Messages buffered between a stream's driver task and tonic, per direction.
pub(crate) const STREAM_BUFFER: usize = 64;

/// Milliseconds since the Unix epoch, now.
pub(crate) fn unix_ms() -> u64 {
    crate::server::unix_ms()
}

/// A duration in whole milliseconds, saturating.
pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
