//! `agentctl`: run, probe and measure Agent Protocol v2 agents.

mod commands;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "agentctl",
    version,
    about = "Run, probe and measure Agent Protocol v2 agents"
)]
struct Cli {
    /// More log output on stderr (-v: info, -vv: debug, -vvv: trace); RUST_LOG overrides it.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

/// Which encodings `serve` accepts.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum EncodingArg {
    /// MessagePack or JSON, as the proxy prefers.
    Auto,
    /// JSON only.
    Json,
    /// MessagePack preferred (JSON still accepted: every proxy speaks it).
    Msgpack,
}

/// Which runtime adapter runs the pool (bench) or the agent server (serve).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum RuntimeArg {
    /// agent-protocol-tokio.
    Tokio,
    /// agent-protocol-async-std (async-io and async-global-executor; no gRPC).
    AsyncStd,
}

/// The payload encoding bench asks for.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum BenchEncoding {
    /// JSON.
    Json,
    /// MessagePack.
    Msgpack,
}

/// How bench prints its result.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// The configuration, the summary, latency percentiles and histogram, errors by kind.
    Text,
    /// One JSON object (fields in the README).
    Json,
    /// A header line and one row.
    Csv,
}

#[derive(Subcommand)]
enum Command {
    /// Run the whole system on an embedded default: example agents, the pool, every transport,
    /// a realistic workload; print a table per transport. Exits non-zero if any request was
    /// lost or failed (130 on Ctrl-C, after printing what ran).
    Demo {
        /// Requests per transport.
        #[arg(short = 'n', long, default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..))]
        requests: u64,
        /// Concurrent requests in flight.
        #[arg(short = 'c', long, default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..=100_000))]
        concurrency: u64,
    },
    /// Run the example rules agent until Ctrl-C or SIGTERM (then drain, remove the socket and
    /// print a one-line summary).
    Serve(commands::serve::ServeArgs),
    /// Connect, handshake, print capabilities, encoding and round-trip times.
    Probe {
        /// `PATH`, `unix:PATH`, `tcp://host:port`, or gRPC `host:port`, `http://host:port`.
        endpoint: String,
        /// One JSON object on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Load an agent through the pool and report throughput, latency and errors by kind.
    Bench(BenchArgs),
}

/// `agentctl bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// `PATH`, `unix:PATH`, `tcp://host:port` (framed TCP), or gRPC `host:port`,
    /// `http://host:port`.
    pub endpoint: String,
    /// Requests to measure (default 100000 unless --duration is given).
    #[arg(short = 'n', long, value_parser = clap::value_parser!(u64).range(1..), conflicts_with = "duration")]
    pub requests: Option<u64>,
    /// Measure for this long instead of a number of requests (`10s`, `1m 30s`).
    #[arg(short = 'z', long, value_parser = positive_duration)]
    pub duration: Option<Duration>,
    /// Requests in flight at once (the number of workers).
    #[arg(short = 'c', long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub concurrency: u64,
    /// Pool connections to the agent.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub connections: u64,
    /// Send requests for this long first without recording them (`2s`).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "0s")]
    pub warmup: Duration,
    /// Open loop: this many requests per second on a fixed schedule, latency corrected for
    /// coordinated omission (timed from when each request was due). Without it: closed loop.
    #[arg(long, value_parser = positive_rate)]
    pub rate: Option<f64>,
    /// Per-event timeout (`500ms`, `5s`; at least 1ms).
    #[arg(long, value_parser = positive_duration, default_value = "5s")]
    pub timeout: Duration,
    /// Payload encoding (UDS and TCP; gRPC is always protobuf).
    #[arg(long, value_enum, default_value_t = BenchEncoding::Msgpack)]
    pub encoding: BenchEncoding,
    /// Request method (default GET, or POST with a body).
    #[arg(short = 'm', long)]
    pub method: Option<String>,
    /// Request path and query (default a product page of the browser-like request).
    #[arg(long)]
    pub path: Option<String>,
    /// `name: value` replaces the headers of that name or adds one; `name:` removes them.
    /// Repeatable. The default request has 20 browser headers.
    #[arg(short = 'H', long = "header")]
    pub headers: Vec<String>,
    /// Request body, as text.
    #[arg(short = 'd', long, conflicts_with_all = ["body_file", "body_bytes"])]
    pub body: Option<String>,
    /// Request body, read from a file.
    #[arg(long, conflicts_with = "body_bytes")]
    pub body_file: Option<PathBuf>,
    /// Request body of this many bytes (filler).
    #[arg(long, default_value_t = 0)]
    pub body_bytes: usize,
    /// Body chunk size (1 byte to 16 MiB).
    #[arg(long, default_value_t = 64 * 1024, value_parser = clap::value_parser!(u64).range(1..=16 * 1024 * 1024))]
    pub chunk_bytes: u64,
    /// Output format.
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
    /// Same as `--output json`.
    #[arg(long, conflicts_with = "output")]
    pub json: bool,
    /// Runtime adapter running the pool and the load workers (gRPC needs tokio).
    #[arg(long, value_enum, default_value_t = RuntimeArg::Tokio)]
    pub runtime: RuntimeArg,
}

fn positive_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if d < Duration::from_millis(1) {
        return Err(format!("{s} is shorter than 1ms"));
    }
    Ok(d)
}

fn positive_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 && r <= 10_000_000.0 => Ok(r),
        _ => Err(format!(
            "{s} is not a rate in requests per second (0 < rate <= 10000000)"
        )),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    commands::install_tracing(cli.verbose);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("agentctl: cannot start the tokio runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Demo {
                requests,
                concurrency,
            } => commands::demo::run(requests, concurrency as usize).await,
            Command::Serve(args) => commands::serve::run(args).await,
            Command::Probe { endpoint, json } => commands::probe::run(&endpoint, json).await,
            Command::Bench(args) => commands::bench::run(args).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("agentctl: {e}");
            ExitCode::from(2)
        }
    }
}
