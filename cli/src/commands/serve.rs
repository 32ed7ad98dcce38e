//! `agentctl serve`: the example rules agent on a Unix socket (and optionally framed TCP and
//! gRPC) until Ctrl-C or SIGTERM; then it stops accepting, lets the requests in flight finish,
//! removes its socket and prints one line of what it served.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use agent_protocol_async_std::AsyncStd;
use agent_protocol_core::Encoding;
use agent_protocol_driver::metrics::prometheus_client::registry::Registry;
use agent_protocol_driver::server::AgentHandler;
use agent_protocol_driver::Runtime;
use agent_protocol_tokio::grpc::ServeGrpc;
use agent_protocol_tokio::server::{AgentServer, Listener, ServerConfig};
use agentctl::rules::{RuleSet, RulesAgent};
use clap::Args;

use super::{stop_signal, Result};
use crate::{EncodingArg, RuntimeArg};

/// `agentctl serve`.
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Unix socket to listen on.
    #[arg(long)]
    pub uds: PathBuf,
    /// Also listen on TCP, same framed protocol (`127.0.0.1:7000`; reach it as
    /// `tcp://127.0.0.1:7000`).
    #[arg(long)]
    pub tcp: Option<String>,
    /// Also serve gRPC on this address (`127.0.0.1:50051`).
    #[arg(long)]
    pub grpc: Option<String>,
    /// Serve the agent's metrics at `GET /metrics` on this address (`127.0.0.1:9100`).
    #[arg(long)]
    pub metrics: Option<String>,
    /// Rules file (JSON, see the README); without it everything is allowed.
    #[arg(long)]
    pub rules: Option<PathBuf>,
    /// Encodings to accept.
    #[arg(long, value_enum, default_value_t = EncodingArg::Auto)]
    pub encoding: EncodingArg,
    /// Runtime adapter serving the agent (gRPC needs tokio).
    #[arg(long, value_enum, default_value_t = RuntimeArg::Tokio)]
    pub runtime: RuntimeArg,
}

/// Serves until a stop signal.
pub async fn run(args: ServeArgs) -> Result<ExitCode> {
    let rules = match &args.rules {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("--rules {}: {e}", path.display()))?;
            RuleSet::from_json(&text).map_err(|e| format!("--rules {}: {e}", path.display()))?
        }
        None => RuleSet::default(),
    };
    let mut config = ServerConfig::default();
    config.capabilities.agent_id = "agentctl-waf".into();
    config.capabilities.name = "agentctl example WAF".into();
    config.encodings = match args.encoding {
        EncodingArg::Auto | EncodingArg::Msgpack => vec![Encoding::MsgPack, Encoding::Json],
        EncodingArg::Json => vec![Encoding::Json],
    };
    let agent = Arc::new(RulesAgent::new(rules));
    let started = Instant::now();
    let signal = match args.runtime {
        RuntimeArg::Tokio => serve_tokio(&args, agent.clone(), config).await?,
        RuntimeArg::AsyncStd if args.grpc.is_some() => {
            return Err("--grpc needs --runtime tokio (gRPC is tokio-only)".into())
        }
        RuntimeArg::AsyncStd => serve_async_std(&args, agent.clone(), config).await?,
    };
    eprintln!(
        "agentctl: {signal}: drained and stopped after {:.1} s; {} events answered ({} refused); {} removed",
        started.elapsed().as_secs_f64(),
        agent.requests(),
        agent.refused(),
        args.uds.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn announce(args: &ServeArgs, adapter: &str) {
    eprintln!(
        "agentctl: serving on {}{}{}{}{adapter}; Ctrl-C or SIGTERM to stop",
        args.uds.display(),
        args.tcp
            .as_ref()
            .map(|a| format!(" and tcp://{a}"))
            .unwrap_or_default(),
        args.grpc
            .as_ref()
            .map(|a| format!(" and grpc {a}"))
            .unwrap_or_default(),
        args.metrics
            .as_ref()
            .map(|a| format!(" (metrics at http://{a}/metrics)"))
            .unwrap_or_default()
    );
}

async fn serve_tokio(
    args: &ServeArgs,
    agent: Arc<RulesAgent>,
    config: ServerConfig,
) -> Result<&'static str> {
    let server = AgentServer::with_shared_handler(agent, config);
    let mut listeners = vec![bind_uds(&server, &args.uds)?];
    if let Some(addr) = &args.tcp {
        let tcp = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| format!("--tcp {addr}: {e}"))?;
        listeners.push(Listener::tcp(tcp));
    }
    let grpc = match &args.grpc {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| format!("--grpc {addr}: {e}"))?,
        ),
        None => None,
    };
    announce(args, "");
    serve_metrics(args, &server.handle()).await?;
    let stopped = shutdown_on_signal(server.handle());
    match grpc {
        Some(grpc) => {
            tokio::try_join!(server.serve_all(listeners), server.serve_grpc(grpc))?;
        }
        None => server.serve_all(listeners).await?,
    }
    Ok(stopped.signal())
}

/// The same agent on the async-std adapter: the server runs on async-io and
/// async-global-executor; tokio only waits for the signal.
async fn serve_async_std(
    args: &ServeArgs,
    agent: Arc<RulesAgent>,
    config: ServerConfig,
) -> Result<&'static str> {
    use agent_protocol_async_std::server::{AgentServer, Listener};
    let server = AgentServer::with_shared_handler(agent, config);
    let mut listeners = vec![bind_uds(&server, &args.uds)?];
    if let Some(addr) = &args.tcp {
        let parsed: std::net::SocketAddr = addr
            .parse()
            .map_err(|e| format!("--tcp {addr}: {e} (the async-std adapter needs an IP:port)"))?;
        let tcp = async_io::Async::<std::net::TcpListener>::bind(parsed)
            .map_err(|e| format!("--tcp {addr}: {e}"))?;
        listeners.push(Listener::tcp(tcp));
    }
    announce(args, " (async-std adapter)");
    serve_metrics(args, &server.handle()).await?;
    let stopped = shutdown_on_signal(server.handle());
    let (done, served) = tokio::sync::oneshot::channel();
    AsyncStd::spawn(async move {
        let _ = done.send(server.serve_all(listeners).await);
    });
    served.await.map_err(|_| "server task ended early")??;
    Ok(stopped.signal())
}

/// `--uds`: the socket, with an error that names the flag.
fn bind_uds<H: AgentHandler, R: Runtime>(
    server: &agent_protocol_driver::server::AgentServer<H, R>,
    path: &std::path::Path,
) -> Result<agent_protocol_driver::server::Listener<R>> {
    let listener = server
        .bind_uds(path)
        .map_err(|e| format!("--uds {}: {e}", path.display()))?;
    Ok(listener.into())
}

/// `--metrics`: the server's metrics over HTTP.
async fn serve_metrics(
    args: &ServeArgs,
    handle: &agent_protocol_driver::server::ServerHandle,
) -> Result<()> {
    let Some(addr) = &args.metrics else {
        return Ok(());
    };
    let mut registry = Registry::default();
    handle.register_metrics(&mut registry);
    super::metrics_http::serve(addr, registry).await
}

/// Shuts the server down at Ctrl-C or SIGTERM, noting which.
struct ShutdownOnSignal {
    seen: Arc<OnceLock<&'static str>>,
    task: tokio::task::JoinHandle<()>,
}

fn shutdown_on_signal(handle: agent_protocol_driver::server::ServerHandle) -> ShutdownOnSignal {
    let seen = Arc::new(OnceLock::new());
    let noted = seen.clone();
    let task = tokio::spawn(async move {
        // Noted before the shutdown starts, so it is known however fast the server drains.
        let _ = noted.set(stop_signal().await);
        handle.shutdown();
    });
    ShutdownOnSignal { seen, task }
}

impl ShutdownOnSignal {
    /// The server ended: which signal stopped it, if one did.
    fn signal(self) -> &'static str {
        self.task.abort();
        self.seen.get().copied().unwrap_or("shutdown")
    }
}
