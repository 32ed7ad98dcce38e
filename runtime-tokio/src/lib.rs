//! Agent Protocol v2 on tokio.
//!
//! A thin driver around [`agent_protocol_core`]: every protocol decision lives in the core's
//! Sans-IO state machines; this crate owns sockets, tasks and timers.
//!
//! - [`client::AgentClient`]: one proxy->agent connection (UDS, or gRPC with the `grpc`
//!   feature, on by default; see [`grpc`]).
//! - [`pool::AgentPool`]: several connections per agent, load balancing, affinity, flow
//!   control, circuit breaking, reconnection and metrics.
#![warn(missing_docs)]

pub mod client;
#[cfg(feature = "grpc")]
pub mod grpc;
pub mod pool;
pub mod reverse;
pub mod server;
pub mod transport;

pub use agent_protocol_core as core;
pub use client::{AgentClient, ClientConfig, ClientError, CHANNEL_BUFFER_SIZE};
pub use pool::{AgentPool, AgentPoolConfig, AgentStats, PoolError};
