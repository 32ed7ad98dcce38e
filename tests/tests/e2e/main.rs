//! End-to-end scenarios over real sockets, written once against the runtime-generic drivers
//! (`agent-protocol-driver`) and run on both adapters: every scenario is an
//! `async fn name<R: Harness>()` and [`on_both_runtimes!`] turns it into two tests,
//! `module::name::tokio` (agent-protocol-tokio, a multi-thread tokio runtime) and
//! `module::name::async_std` (agent-protocol-async-std, under async-std's executor).
//!
//! Scenarios use only runtime-neutral tools ([`Runtime::spawn`], [`support::sleep`],
//! [`support::timeout`], [`support::spawn`]) so the same code exercises both adapters.

use std::future::Future;

use agent_protocol_async_std::AsyncStd;
use agent_protocol_driver::Runtime;
use agent_protocol_tokio::Tokio;

mod support;

// Agents (handlers) shared by the scenarios.
mod agents;
// The proxy-side pool against a scripted fake agent (pool_support).
mod pool_basic;
mod pool_failures;
mod pool_flow;
mod pool_support;
// Early-ended requests give back their body streams.
mod body_release;
// AgentClient <-> AgentServer, and reverse connections.
mod client_server;
mod reverse;
// Hostile peers against the connection loops; bytes that arrive with a handshake answer.
mod hostile_loops;
mod reverse_leftover;
// Replacing a socket file only when it is stale.
mod stale_socket;
// A tokio side against an async-std side, in one test.
mod cross_runtime;
// Hostile peers: expensive input on one connection.
mod hostile_decode;
// Events held by slow handlers: bounded by bytes, and the amplification report.
mod amplification;
mod memory_bound;

/// A runtime the scenarios can run on: the adapter's [`Runtime`] plus a way to block on a
/// future with that runtime's executor.
pub trait Harness: Runtime {
    /// Runs `future` to completion on this runtime.
    fn block_on<F: Future>(future: F) -> F::Output;

    /// Takes over a bound std TCP listener as this runtime's [`Runtime::TcpListener`] (whose
    /// type differs per runtime); call it inside [`Harness::block_on`].
    fn tcp_listener(listener: std::net::TcpListener) -> std::io::Result<Self::TcpListener>;
}

impl Harness for Tokio {
    fn block_on<F: Future>(future: F) -> F::Output {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime")
            .block_on(Box::pin(future))
    }

    fn tcp_listener(listener: std::net::TcpListener) -> std::io::Result<Self::TcpListener> {
        listener.set_nonblocking(true)?;
        tokio::net::TcpListener::from_std(listener)
    }
}

impl Harness for AsyncStd {
    fn block_on<F: Future>(future: F) -> F::Output {
        // A scenario is one large future; on the heap, an unoptimised build does not need
        // more than the test thread's default stack to run it.
        async_std::task::block_on(Box::pin(future))
    }

    fn tcp_listener(listener: std::net::TcpListener) -> std::io::Result<Self::TcpListener> {
        async_io::Async::new(listener)
    }
}

/// `on_both_runtimes!(a, b, ...)`: for each generic scenario `a::<R>()` in the current module,
/// a module `a` with the tests `tokio` and `async_std`.
#[macro_export]
macro_rules! on_both_runtimes {
    ($($scenario:ident),* $(,)?) => {
        $(
            mod $scenario {
                #[test]
                fn tokio() {
                    <agent_protocol_tokio::Tokio as $crate::Harness>::block_on(
                        super::$scenario::<agent_protocol_tokio::Tokio>(),
                    )
                }

                #[test]
                fn async_std() {
                    <agent_protocol_async_std::AsyncStd as $crate::Harness>::block_on(
                        super::$scenario::<agent_protocol_async_std::AsyncStd>(),
                    )
                }
            }
        )*
    };
}
