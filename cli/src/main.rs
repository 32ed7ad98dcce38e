//! `agentctl`: run, probe and measure Agent Protocol v2 agents.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agent_protocol_async_std::AsyncStd;
use agent_protocol_core::registration::RegistrationPolicy;
use agent_protocol_core::Encoding;
use agent_protocol_driver::Runtime;
use agent_protocol_tokio::client::{AgentClient, ClientConfig};
use agent_protocol_tokio::grpc::ServeGrpc;
use agent_protocol_tokio::pool::AgentPool;
use agent_protocol_tokio::reverse::{
    ReverseAgentConfig, ReverseConnector, ReverseListener, ReverseTarget,
};
use agent_protocol_tokio::server::{bind_unix_socket, AgentServer, Listener, ServerConfig};
use agent_protocol_tokio::Tokio;
use agentctl::load::{self, LoadSpec};
use agentctl::report::{print_table, Progress, Summary};
use agentctl::rules::{RuleSet, RulesAgent};
use agentctl::workload::{browser_headers, Mix};
use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "agentctl",
    version,
    about = "Run, probe and measure Agent Protocol v2 agents"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum EncodingArg {
    Auto,
    Json,
    Msgpack,
}

/// Which runtime adapter runs the pool (bench) or the agent server (serve).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum RuntimeArg {
    /// agent-protocol-tokio.
    Tokio,
    /// agent-protocol-async-std (async-io and async-global-executor; no gRPC).
    AsyncStd,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum BenchEncoding {
    Json,
    Msgpack,
}

#[derive(Subcommand)]
enum Command {
    /// Run the whole system on an embedded default: example agents, the pool, every transport,
    /// a realistic workload; print a table per transport. Exits non-zero if any request was
    /// lost or failed.
    Demo {
        /// Requests per transport.
        #[arg(long, default_value_t = 20_000)]
        requests: u64,
        /// Concurrent requests in flight.
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
    },
    /// Run the example rules agent until Ctrl-C.
    Serve {
        /// Unix socket to listen on.
        #[arg(long)]
        uds: PathBuf,
        /// Also listen on TCP (same framed protocol).
        #[arg(long)]
        tcp: Option<String>,
        /// Also serve gRPC on this address.
        #[arg(long)]
        grpc: Option<String>,
        /// Rules file (JSON, see the README); without it everything is allowed.
        #[arg(long)]
        rules: Option<PathBuf>,
        /// Encodings to accept.
        #[arg(long, value_enum, default_value_t = EncodingArg::Auto)]
        encoding: EncodingArg,
        /// Runtime adapter serving the agent (gRPC needs tokio).
        #[arg(long, value_enum, default_value_t = RuntimeArg::Tokio)]
        runtime: RuntimeArg,
    },
    /// Connect, handshake, print capabilities, encoding and round-trip times.
    Probe {
        /// `PATH`, `unix:PATH`, or gRPC `host:port`, `http://host:port`.
        endpoint: String,
        /// One JSON object on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Closed-loop load through the pool with the browser-like 20-header request.
    Bench {
        /// `PATH`, `unix:PATH`, or gRPC `host:port`, `http://host:port`.
        endpoint: String,
        /// Requests in flight.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Total requests.
        #[arg(long, default_value_t = 100_000)]
        requests: u64,
        /// Pool connections to the agent.
        #[arg(long, default_value_t = 4)]
        connections: usize,
        /// Payload encoding (UDS; gRPC is always protobuf).
        #[arg(long, value_enum, default_value_t = BenchEncoding::Msgpack)]
        encoding: BenchEncoding,
        /// Body bytes per request (0: headers only).
        #[arg(long, default_value_t = 0)]
        body_bytes: usize,
        /// Body chunk size.
        #[arg(long, default_value_t = 64 * 1024)]
        chunk_bytes: usize,
        /// Per-event timeout.
        #[arg(long, default_value_t = 5_000)]
        timeout_ms: u64,
        /// One JSON object on stdout.
        #[arg(long)]
        json: bool,
        /// Runtime adapter running the pool and the load workers (gRPC needs tokio).
        #[arg(long, value_enum, default_value_t = RuntimeArg::Tokio)]
        runtime: RuntimeArg,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo {
            requests,
            concurrency,
        } => demo(requests, concurrency).await,
        Command::Serve {
            uds,
            tcp,
            grpc,
            rules,
            encoding,
            runtime,
        } => serve(uds, tcp, grpc, rules, encoding, runtime).await,
        Command::Probe { endpoint, json } => probe(&endpoint, json).await,
        Command::Bench {
            endpoint,
            concurrency,
            requests,
            connections,
            encoding,
            body_bytes,
            chunk_bytes,
            timeout_ms,
            json,
            runtime,
        } => {
            let encoding = match encoding {
                BenchEncoding::Json => Encoding::Json,
                BenchEncoding::Msgpack => Encoding::MsgPack,
            };
            bench(
                &endpoint,
                BenchArgs {
                    concurrency,
                    requests,
                    connections,
                    encoding,
                    body_bytes,
                    chunk_bytes,
                    timeout: Duration::from_millis(timeout_ms),
                    json,
                },
                runtime,
            )
            .await
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("agentctl: {e}");
            ExitCode::from(2)
        }
    }
}

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

fn pool_config<R: Runtime>(
    encodings: &[Encoding],
    connections: usize,
    timeout: Duration,
) -> agent_protocol_driver::pool::AgentPoolConfig<R> {
    let mut config = agent_protocol_driver::pool::AgentPoolConfig::default()
        .with_connections_per_agent(connections)
        .with_request_timeout(timeout);
    config.client.connection.request_timeout = timeout;
    config.client.connection.handshake.encodings = encodings.iter().copied().collect();
    config
}

async fn demo(requests: u64, concurrency: usize) -> Result<ExitCode> {
    let dir = std::env::temp_dir().join(format!("agentctl-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let _cleanup = RemoveDir(dir.clone());
    let agent = Arc::new(RulesAgent::new(RuleSet::demo()));

    // The example agent on a Unix socket, speaking both encodings.
    let agent_sock = dir.join("waf.sock");
    let server = Arc::new(AgentServer::with_shared_handler(
        agent.clone(),
        ServerConfig::default(),
    ));
    let listener = server.bind_uds(&agent_sock)?;
    let s = server.clone();
    let serving = tokio::spawn(async move { s.serve(listener).await });

    // A reverse listener on the proxy side and the same agent dialing it.
    let reverse_sock = dir.join("reverse.sock");
    let token = "demo-token";
    let policy = RegistrationPolicy {
        tokens: vec![token.into()],
        ..Default::default()
    };
    let reverse_pool = AgentPool::new(pool_config(&[Encoding::Json], 4, Duration::from_secs(5)));
    let control_pool = reverse_pool.clone();
    let reverse_listener = ReverseListener::new(policy, reverse_pool.config().client.clone())
        .with_control(move |id| control_pool.control_sender(id));
    let rl = reverse_listener.clone();
    let admit_pool = reverse_pool.clone();
    let reverse_uds = bind_unix_socket(&reverse_sock, 0o660)?;
    tokio::spawn(async move {
        rl.serve(Listener::from(reverse_uds), move |registered| {
            admit_pool
                .add_reverse_connection(&registered.agent_id, registered.client)
                .map_err(|e| e.to_string())
        })
        .await
    });
    // The same agent over gRPC on loopback TCP.
    let grpc_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let grpc_endpoint = grpc_listener.local_addr()?.to_string();
    let s = server.clone();
    let serving_grpc = tokio::spawn(async move { s.serve_grpc(grpc_listener).await });

    let reverse_handle = server.handle();
    let mut connectors = Vec::new();
    for _ in 0..4 {
        let mut cfg =
            ReverseAgentConfig::new(ReverseTarget::Unix(reverse_sock.clone()), "waf-reverse");
        cfg.auth_token = Some(token.into());
        let connector = ReverseConnector::new(agent.clone(), cfg, reverse_handle.clone());
        connectors.push(tokio::spawn(async move { connector.run().await }));
    }

    let timeout = Duration::from_secs(5);
    let mut rows: Vec<Summary> = Vec::new();
    let mut failed = false;
    let transports: [(&str, Option<Encoding>, bool); 4] = [
        ("uds json", Some(Encoding::Json), false),
        ("uds msgpack", Some(Encoding::MsgPack), false),
        ("grpc", None, true),
        ("reverse uds (json)", None, false),
    ];
    for (name, encoding, grpc) in transports {
        let (pool, agent_id) = match encoding {
            _ if grpc => {
                let pool = AgentPool::new(pool_config(&[Encoding::Json], 4, timeout));
                pool.add_agent("waf", &grpc_endpoint).await?;
                (pool, "waf")
            }
            Some(enc) => {
                let pool = AgentPool::new(pool_config(&[enc], 4, timeout));
                pool.add_agent("waf", agent_sock.to_str().unwrap_or_default())
                    .await?;
                (pool, "waf")
            }
            None => {
                wait_for_connections(&reverse_pool, "waf-reverse", 4, Duration::from_secs(10))
                    .await?;
                (reverse_pool.clone(), "waf-reverse")
            }
        };
        let summary = demo_row(&pool, agent_id, name, requests, concurrency, timeout).await;
        failed |= !summary_ok(&summary, requests);
        rows.push(summary);
        if encoding.is_some() || grpc {
            pool.shutdown(Duration::from_secs(1)).await;
        }
    }

    // The same agent and workload with both ends on the async-std adapter (async-io sockets and
    // timers, async-global-executor tasks): same protocol code, another runtime.
    let as_sock = dir.join("waf-async-std.sock");
    let as_server = Arc::new(
        agent_protocol_async_std::server::AgentServer::with_shared_handler(
            agent.clone(),
            ServerConfig::default(),
        ),
    );
    let as_listener = as_server.bind_uds(&as_sock)?;
    let s = as_server.clone();
    let (as_done, as_serving) = tokio::sync::oneshot::channel();
    AsyncStd::spawn(async move {
        let _ = as_done.send(s.serve(as_listener).await);
    });
    let as_pool = agent_protocol_async_std::pool::AgentPool::new(pool_config(
        &[Encoding::MsgPack],
        4,
        timeout,
    ));
    as_pool
        .add_agent("waf", as_sock.to_str().unwrap_or_default())
        .await?;
    let name = "async-std uds msgpack";
    let summary = demo_row(&as_pool, "waf", name, requests, concurrency, timeout).await;
    failed |= !summary_ok(&summary, requests);
    rows.push(summary);
    as_pool.shutdown(Duration::from_secs(1)).await;
    as_server.handle().shutdown();
    let _ = tokio::time::timeout(Duration::from_secs(5), as_serving).await;
    println!();
    print_table(&mut std::io::stdout(), &rows)?;
    println!(
        "\nagent handled {} events; every request got exactly one decision: {}",
        agent.requests(),
        if failed { "NO" } else { "yes" }
    );
    reverse_listener.shutdown();
    reverse_pool.shutdown(Duration::from_secs(1)).await;
    server.handle().shutdown();
    for c in connectors {
        c.abort();
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), serving).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), serving_grpc).await;
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Runs the demo workload through `pool` (on its own runtime's tasks) and summarises it.
async fn demo_row<R: Runtime>(
    pool: &agent_protocol_driver::pool::AgentPool<R>,
    agent_id: &str,
    name: &str,
    requests: u64,
    concurrency: usize,
    timeout: Duration,
) -> Summary {
    let spec = LoadSpec {
        agent_id: agent_id.to_owned(),
        requests,
        concurrency,
        mix: Mix::default(),
        timeout,
        id_prefix: name.replace(' ', "-"),
    };
    let progress = Progress::start(name.to_owned(), requests);
    let (rec, elapsed) = load::run(pool, &spec, progress.counter()).await;
    progress.finish().await;
    rec.summary(name, elapsed)
}

/// Every request answered, none failed, and the rules blocked some (the demo mix has attacks).
fn summary_ok(summary: &Summary, requests: u64) -> bool {
    let blocked = summary.decisions.get("block").copied().unwrap_or(0);
    summary.errors == 0 && summary.requests == requests && blocked > 0
}

async fn wait_for_connections(
    pool: &AgentPool,
    agent: &str,
    want: usize,
    within: Duration,
) -> Result<()> {
    let deadline = Instant::now() + within;
    loop {
        let connected = pool
            .stats()
            .iter()
            .find(|s| s.agent_id == agent)
            .map_or(0, |s| s.connected);
        if connected >= want {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(
                format!("only {connected} of {want} reverse connections registered").into(),
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

struct RemoveDir(PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn serve(
    uds: PathBuf,
    tcp: Option<String>,
    grpc: Option<String>,
    rules: Option<PathBuf>,
    encoding: EncodingArg,
    runtime: RuntimeArg,
) -> Result<ExitCode> {
    let rules = match rules {
        Some(path) => RuleSet::from_json(&std::fs::read_to_string(&path)?)
            .map_err(|e| format!("{}: {e}", path.display()))?,
        None => RuleSet::default(),
    };
    let mut config = ServerConfig::default();
    config.capabilities.agent_id = "agentctl-waf".into();
    config.capabilities.name = "agentctl example WAF".into();
    config.encodings = match encoding {
        EncodingArg::Auto => vec![Encoding::MsgPack, Encoding::Json],
        EncodingArg::Json => vec![Encoding::Json],
        EncodingArg::Msgpack => vec![Encoding::MsgPack, Encoding::Json],
    };
    if runtime == RuntimeArg::AsyncStd {
        if grpc.is_some() {
            return Err("--grpc needs --runtime tokio (gRPC is tokio-only)".into());
        }
        return serve_async_std(uds, tcp, RulesAgent::new(rules), config).await;
    }
    let server = AgentServer::new(RulesAgent::new(rules), config);
    let mut listeners = vec![Listener::from(server.bind_uds(&uds)?)];
    if let Some(addr) = &tcp {
        listeners.push(Listener::tcp(tokio::net::TcpListener::bind(addr).await?));
    }
    let grpc_listener = match &grpc {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| format!("--grpc {addr}: {e}"))?,
        ),
        None => None,
    };
    eprintln!(
        "agentctl: serving on {}{}{}; Ctrl-C to stop",
        uds.display(),
        tcp.map(|a| format!(" and tcp {a}")).unwrap_or_default(),
        grpc.map(|a| format!(" and grpc {a}")).unwrap_or_default()
    );
    let handle = server.handle();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        handle.shutdown();
    });
    match grpc_listener {
        Some(grpc) => {
            tokio::try_join!(server.serve_all(listeners), server.serve_grpc(grpc))?;
        }
        None => server.serve_all(listeners).await?,
    }
    Ok(ExitCode::SUCCESS)
}

/// `serve --runtime async-std`: the same agent on the async-std adapter. The server runs on
/// async-io and async-global-executor; tokio only waits for Ctrl-C.
async fn serve_async_std(
    uds: PathBuf,
    tcp: Option<String>,
    agent: RulesAgent,
    config: ServerConfig,
) -> Result<ExitCode> {
    use agent_protocol_async_std::server::{AgentServer, Listener};
    let server = AgentServer::new(agent, config);
    let mut listeners = vec![Listener::from(server.bind_uds(&uds)?)];
    if let Some(addr) = &tcp {
        let addr: std::net::SocketAddr = addr.parse().map_err(|e| format!("--tcp {addr}: {e}"))?;
        listeners.push(Listener::tcp(
            async_io::Async::<std::net::TcpListener>::bind(addr)?,
        ));
    }
    eprintln!(
        "agentctl: serving on {}{} (async-std adapter); Ctrl-C to stop",
        uds.display(),
        tcp.map(|a| format!(" and tcp {a}")).unwrap_or_default(),
    );
    let handle = server.handle();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        handle.shutdown();
    });
    let (done, served) = tokio::sync::oneshot::channel();
    AsyncStd::spawn(async move {
        let _ = done.send(server.serve_all(listeners).await);
    });
    served.await.map_err(|_| "server task ended early")??;
    Ok(ExitCode::SUCCESS)
}

fn is_grpc(endpoint: &str) -> bool {
    matches!(
        agent_protocol_core::pool::Endpoint::parse(endpoint),
        Ok(agent_protocol_core::pool::Endpoint::Grpc { .. })
    )
}

async fn probe(endpoint: &str, json: bool) -> Result<ExitCode> {
    let started = Instant::now();
    let client = AgentClient::connect(endpoint, ClientConfig::default()).await?;
    let connect = started.elapsed();
    let mut pings = Vec::new();
    for _ in 0..3 {
        pings.push(client.ping().await?);
    }
    let t0 = Instant::now();
    let answer = client
        .send(agent_protocol_core::Event::RequestHeaders(browser_headers(
            "probe-1", "GET", "/",
        )))
        .await?;
    let request = t0.elapsed();
    let caps = client.capabilities();
    let grpc = is_grpc(endpoint);
    let encoding = if grpc {
        "protobuf"
    } else {
        client.encoding().as_str()
    };
    if json {
        let out = serde_json::json!({
            "endpoint": endpoint,
            "transport": if grpc { "grpc" } else { "uds" },
            "encoding": encoding,
            "protocol_version": client.negotiated().protocol_version,
            "capabilities": caps,
            "connect_us": connect.as_micros() as u64,
            "ping_us": pings.iter().map(|d| d.as_micros() as u64).collect::<Vec<_>>(),
            "request_us": request.as_micros() as u64,
            "decision": answer.decision.kind(),
        });
        println!("{out}");
    } else {
        println!("endpoint:     {endpoint}");
        println!(
            "agent:        {} ({}) v{}",
            caps.agent_id, caps.name, caps.version
        );
        println!("protocol:     {}", client.negotiated().protocol_version);
        println!("encoding:     {encoding}");
        let events: Vec<String> = caps
            .supported_events
            .iter()
            .map(|k| format!("{k:?}"))
            .collect();
        println!("events:       {}", events.join(", "));
        println!("features:     {}", serde_json::to_string(&caps.features)?);
        println!("limits:       {}", serde_json::to_string(&caps.limits)?);
        println!("connect+hs:   {connect:?}");
        for (i, p) in pings.iter().enumerate() {
            println!("ping {i}:       {p:?}");
        }
        println!("request:      {request:?} -> {}", answer.decision.kind());
    }
    client.close().await;
    Ok(ExitCode::SUCCESS)
}

struct BenchArgs {
    concurrency: usize,
    requests: u64,
    connections: usize,
    encoding: Encoding,
    body_bytes: usize,
    chunk_bytes: usize,
    timeout: Duration,
    json: bool,
}

async fn bench(endpoint: &str, args: BenchArgs, runtime: RuntimeArg) -> Result<ExitCode> {
    match runtime {
        RuntimeArg::Tokio => bench_on::<Tokio>(endpoint, args).await,
        RuntimeArg::AsyncStd if is_grpc(endpoint) => {
            Err("gRPC endpoints need --runtime tokio (gRPC is tokio-only)".into())
        }
        // The pool's connection tasks and the load workers are async-std tasks; this (tokio)
        // task only waits for the result.
        RuntimeArg::AsyncStd => bench_on::<AsyncStd>(endpoint, args).await,
    }
}

/// Closed-loop load through a pool of runtime `R`.
async fn bench_on<R: Runtime>(endpoint: &str, args: BenchArgs) -> Result<ExitCode> {
    let pool = agent_protocol_driver::pool::AgentPool::<R>::new(pool_config(
        &[args.encoding],
        args.connections,
        args.timeout,
    ));
    pool.add_agent("bench", endpoint).await?;
    let mix = Mix {
        admin_every: 0,
        body_every: if args.body_bytes > 0 { 1 } else { 0 },
        sqli_every: 0,
        body_bytes: args.body_bytes,
        chunk_bytes: args.chunk_bytes,
    };
    let spec = LoadSpec {
        agent_id: "bench".into(),
        requests: args.requests,
        concurrency: args.concurrency,
        mix,
        timeout: args.timeout,
        id_prefix: format!("bench-{}", std::process::id()),
    };
    // "Tokio" / "AsyncStd": which adapter ran the pool, for side-by-side runs.
    let runtime = std::any::type_name::<R>()
        .rsplit("::")
        .next()
        .unwrap_or("?");
    let name = if is_grpc(endpoint) {
        format!("grpc c={} {runtime}", args.concurrency)
    } else {
        format!("{} c={} {runtime}", args.encoding, args.concurrency)
    };
    let progress = Progress::start(name.clone(), args.requests);
    let (rec, elapsed) = load::run(&pool, &spec, progress.counter()).await;
    progress.finish().await;
    let summary = rec.summary(&name, elapsed);
    if args.json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        print_table(&mut std::io::stdout(), std::slice::from_ref(&summary))?;
        if let Some(m) = summary.mib_per_s {
            println!("body throughput: {m:.1} MiB/s");
        }
    }
    pool.shutdown(Duration::from_secs(1)).await;
    Ok(if summary.errors > 0 || summary.requests != args.requests {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
