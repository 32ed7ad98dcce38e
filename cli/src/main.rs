//! `agentctl`: run, probe and measure Agent Protocol v2 agents.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agent_protocol_core::registration::RegistrationPolicy;
use agent_protocol_core::Encoding;
use agent_protocol_tokio::client::{AgentClient, ClientConfig};
use agent_protocol_tokio::grpc::ServeGrpc;
use agent_protocol_tokio::pool::{AgentPool, AgentPoolConfig};
use agent_protocol_tokio::reverse::{
    ReverseAgentConfig, ReverseConnector, ReverseListener, ReverseTarget,
};
use agent_protocol_tokio::server::{bind_unix_socket, AgentServer, Listener, ServerConfig};
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
        } => serve(uds, tcp, grpc, rules, encoding).await,
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

fn pool_config(encodings: &[Encoding], connections: usize, timeout: Duration) -> AgentPoolConfig {
    let mut config = AgentPoolConfig {
        connections_per_agent: connections,
        request_timeout: timeout,
        ..Default::default()
    };
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
        let spec = LoadSpec {
            agent_id: agent_id.to_owned(),
            requests,
            concurrency,
            mix: Mix::default(),
            timeout,
            id_prefix: name.replace(' ', "-"),
        };
        let progress = Progress::start(name.to_owned(), requests);
        let (rec, elapsed) = load::run(&pool, &spec, progress.counter()).await;
        progress.finish().await;
        let summary = rec.summary(name, elapsed);
        let blocked = summary.decisions.get("block").copied().unwrap_or(0);
        if summary.errors > 0 || summary.requests != requests || blocked == 0 {
            failed = true;
        }
        rows.push(summary);
        if encoding.is_some() || grpc {
            pool.shutdown(Duration::from_secs(1)).await;
        }
    }
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

async fn bench(endpoint: &str, args: BenchArgs) -> Result<ExitCode> {
    let pool = AgentPool::new(pool_config(
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
    let name = if is_grpc(endpoint) {
        format!("grpc c={}", args.concurrency)
    } else {
        format!("{} c={}", args.encoding, args.concurrency)
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
