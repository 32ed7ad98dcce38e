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
pub use runtime::AsyncStd;

agent_protocol_driver::adapter_modules!(crate::AsyncStd);
