//! The subcommands, one file each, and what they share: logging, signals, pool settings.

pub mod bench;
pub mod demo;
pub mod metrics_http;
pub mod probe;
pub mod serve;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use agent_protocol_core::pool::Endpoint;
use agent_protocol_core::Encoding;
use agent_protocol_driver::pool::AgentPoolConfig;
use agent_protocol_driver::Runtime;

/// What the subcommands return: an exit code, or an error printed as `agentctl: {error}` with
/// exit code 2.
pub type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// Exit code after Ctrl-C or SIGTERM, as shells report a process killed by SIGINT.
pub const INTERRUPTED: u8 = 130;

/// Logs to stderr at `RUST_LOG`'s levels, or by `-v` count (warnings only without either).
pub fn install_tracing(verbose: u8) {
    use tracing_subscriber::EnvFilter;
    let default = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Which signal stopped us.
pub async fn stop_signal() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate()).ok();
    let sigterm = async {
        match terminate.as_mut() {
            Some(s) => {
                s.recv().await;
            }
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "SIGINT",
        () = sigterm => "SIGTERM",
    }
}

/// Sets `cancel` at the first Ctrl-C or SIGTERM, so the run stops and reports what it did; at
/// the second, runs `abandon` (cleanup that cannot wait) and exits at once.
pub fn cancel_on_signal(cancel: Arc<AtomicBool>, abandon: impl FnOnce() + Send + 'static) {
    tokio::spawn(async move {
        let signal = stop_signal().await;
        cancel.store(true, Ordering::Relaxed);
        eprintln!(
            "agentctl: {signal}: stopping after the requests in flight (again to quit at once)"
        );
        stop_signal().await;
        abandon();
        std::process::exit(i32::from(INTERRUPTED));
    });
}

/// The pool settings every subcommand uses: `connections` per agent, `timeout` per event,
/// and the encodings to offer.
pub fn pool_config<R: Runtime>(
    encodings: &[Encoding],
    connections: usize,
    timeout: Duration,
) -> AgentPoolConfig<R> {
    let mut config = AgentPoolConfig::default()
        .with_connections_per_agent(connections)
        .with_request_timeout(timeout);
    config.client.connection.request_timeout = timeout;
    config.client.connection.handshake.encodings = encodings.iter().copied().collect();
    config
}

/// The transport an endpoint string names (`uds`, `tcp` or `grpc`), or why it is not one.
pub fn transport(endpoint: &str) -> Result<&'static str> {
    match Endpoint::parse(endpoint) {
        Ok(Endpoint::Uds(_)) => Ok("uds"),
        Ok(Endpoint::Tcp(_)) => Ok("tcp"),
        Ok(Endpoint::Grpc { .. }) => Ok("grpc"),
        Err(e) => Err(format!("endpoint {endpoint:?}: {e}").into()),
    }
}
