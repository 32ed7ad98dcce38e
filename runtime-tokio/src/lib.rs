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
//!
//! The modules are the driver's, with [`Tokio`] filled in wherever a type takes the runtime
//! (`pool::AgentPool` is `agent_protocol_driver::pool::AgentPool<Tokio>`).
//!
//! ```no_run
//! use agent_protocol_tokio::core::{AgentResponse, Headers, RequestHeadersEvent, RequestMetadata};
//! use agent_protocol_tokio::pool::{AgentPool, AgentPoolConfig};
//! use agent_protocol_tokio::server::{AgentHandler, AgentServer, ServerConfig};
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
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let server = AgentServer::new(BlockAdmin, ServerConfig::default());
//! let listener = server.bind_uds("/run/waf.sock")?;
//! let handle = server.handle();
//! tokio::spawn(async move { server.serve(listener).await });
//!
//! let pool = AgentPool::new(AgentPoolConfig::default());
//! pool.add_agent("waf", "/run/waf.sock").await?;
//! let meta = RequestMetadata { correlation_id: "c1".into(), ..Default::default() };
//! let event = RequestHeadersEvent::new(meta, "GET", "/admin", Headers::new());
//! assert_eq!(pool.send_request_headers("waf", event).await?.decision.kind(), "block");
//! handle.shutdown(); // stops accepting and drains
//! # Ok(()) }
//! ```
#![warn(missing_docs)]

#[cfg(feature = "grpc")]
pub mod grpc;
pub mod runtime;
pub mod transport;

pub use agent_protocol_core as core;
pub use agent_protocol_driver as driver;
pub use runtime::Tokio;

agent_protocol_driver::adapter_modules!(crate::Tokio);
