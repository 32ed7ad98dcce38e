//! [`adapter_modules!`](crate::adapter_modules): the modules a runtime adapter exports, the
//! driver's types with its runtime filled in, written once for every adapter.

/// Declares the `client`, `server`, `pool` and `reverse` modules of a runtime adapter crate
/// (and re-exports [`spans`](crate::spans)):
/// the driver's public items, with `$runtime` filled in where a type takes the runtime, so
/// users write `pool::AgentPool` rather than `AgentPool<Tokio>`.
///
/// An adapter's `lib.rs` defines its runtime type and calls it once, as
/// `agent_protocol_driver::adapter_modules!(crate::MyRuntime);` (see `agent-protocol-tokio`'s).
#[macro_export]
macro_rules! adapter_modules {
    ($runtime:ty) => {
        pub use agent_protocol_driver::metrics;

        /// One proxy->agent connection (see [`agent_protocol_driver::client`]).
        pub mod client {
            pub use agent_protocol_driver::client::{
                unsupported, ClientError, Command, ConnectionStatus, Connector, ControlMessage,
                FramedLink, Gate, ProxyLink, CHANNEL_BUFFER_SIZE,
            };

            /// One connection to an agent ([`agent_protocol_driver::client::AgentClient`]).
            pub type AgentClient = agent_protocol_driver::client::AgentClient<$runtime>;
            /// Client settings ([`agent_protocol_driver::client::ClientConfig`]).
            pub type ClientConfig = agent_protocol_driver::client::ClientConfig<$runtime>;
        }

        /// The agent side (see [`agent_protocol_driver::server`]).
        pub mod server {
            pub use agent_protocol_driver::server::{
                dispatch, is_stale_socket, shutdown_signal, unix_ms, AgentHandler, HandlerService,
                Push, ServerConfig, ServerHandle, ServiceHandler, MAX_IN_FLIGHT_BYTES,
                MAX_PENDING_TRANSMIT,
            };

            /// An agent server ([`agent_protocol_driver::server::AgentServer`]).
            pub type AgentServer<H> = agent_protocol_driver::server::AgentServer<H, $runtime>;
            /// Where a server accepts: a [`UdsListener`], or `Listener::tcp(tcp_listener)`.
            pub type Listener = agent_protocol_driver::server::Listener<$runtime>;
            /// A bound Unix socket whose file is removed when it is dropped.
            pub type UdsListener = agent_protocol_driver::server::UdsListener<$runtime>;

            /// Binds a Unix socket at `path` with file mode `mode` (see
            /// [`agent_protocol_driver::server::bind_unix_socket`]).
            pub fn bind_unix_socket(
                path: &std::path::Path,
                mode: u32,
            ) -> std::io::Result<UdsListener> {
                agent_protocol_driver::server::bind_unix_socket(path, mode)
            }
        }

        /// The proxy's agent pool (see [`agent_protocol_driver::pool`]).
        pub mod pool {
            pub use agent_protocol_driver::pool::{
                AgentConfigUpdate, AgentStats, PoolError, CONFIG_UPDATE_BUFFER,
            };

            /// The agent pool ([`agent_protocol_driver::pool::AgentPool`]).
            pub type AgentPool = agent_protocol_driver::pool::AgentPool<$runtime>;
            /// Pool settings ([`agent_protocol_driver::pool::AgentPoolConfig`]).
            pub type AgentPoolConfig = agent_protocol_driver::pool::AgentPoolConfig<$runtime>;
        }

        /// Reverse connections, the agent dialing the proxy (see
        /// [`agent_protocol_driver::reverse`]).
        pub mod reverse {
            pub use agent_protocol_driver::reverse::{ReverseAgentConfig, ReverseTarget};

            /// Proxy-side listener ([`agent_protocol_driver::reverse::ReverseListener`]).
            pub type ReverseListener = agent_protocol_driver::reverse::ReverseListener<$runtime>;
            /// Agent-side connector ([`agent_protocol_driver::reverse::ReverseConnector`]).
            pub type ReverseConnector<H> =
                agent_protocol_driver::reverse::ReverseConnector<H, $runtime>;
            /// An agent that registered, as handed to the admission callback.
            pub type RegisteredAgent = agent_protocol_driver::reverse::RegisteredAgent<$runtime>;
        }

        pub use agent_protocol_driver::spans;
        pub use client::{AgentClient, ClientConfig, ClientError, CHANNEL_BUFFER_SIZE};
        pub use pool::{AgentPool, AgentPoolConfig, AgentStats, PoolError};
    };
}
