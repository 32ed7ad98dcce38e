//! Agent Protocol v2 drivers, generic over the async runtime.
//!
//! Every protocol decision lives in [`agent_protocol_core`]'s Sans-IO state machines; this
//! crate owns the tasks that drive them over sockets: the proxy-side [`client::AgentClient`]
//! and [`pool::AgentPool`], the agent-side [`server::AgentServer`], and
//! [`reverse`] connections. It names no runtime: each type takes a [`runtime::Runtime`]
//! parameter (spawning, timers, Unix/TCP sockets), supplied by an adapter crate that
//! re-exports the types with it filled in:
//!
//! - `agent-protocol-tokio` (tokio, plus the gRPC transport),
//! - `agent-protocol-async-std` (async-io, for async-std and smol).
//!
//! Both adapters therefore run the same code, byte for byte, and only differ in how a socket
//! is read, a task spawned and a timer armed. The crate uses tokio's `sync` module (channels,
//! `Notify`) and its `select!` macro, which run on any executor; it never starts or needs a
//! tokio runtime.
#![warn(missing_docs)]

mod adapter;
pub mod client;
pub mod metrics;
pub mod pool;
pub mod reverse;
pub mod runtime;
pub mod server;
pub mod spans;
mod stream;

pub use agent_protocol_core as core;
pub use runtime::Runtime;
