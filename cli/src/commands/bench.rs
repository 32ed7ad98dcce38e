//! `agentctl bench`: load an agent through the pool, as a proxy would, and report what came
//! back: throughput and latency of the successful requests, failures by typed kind, and how
//! the run ended (completed, interrupted by Ctrl-C, or stopped by the circuit breaker).
//!
//! Before loading, it connects once to read what the agent advertises and says what will
//! happen when the run asks for more (more requests in flight than the agent takes, a body
//! larger than it accepts).

use std::io::Write;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use agent_protocol_async_std::AsyncStd;
use agent_protocol_core::{Capabilities, Encoding, EventKind};
use agent_protocol_driver::client::AgentClient;
use agent_protocol_driver::pool::AgentPool;
use agent_protocol_driver::Runtime;
use agent_protocol_tokio::Tokio;
use agentctl::load::{self, LoadResult, LoadSpec, Workload};
use agentctl::progress::{Extent, LiveCounters, Progress};
use agentctl::report::{print_summary, Outcome, Summary};
use agentctl::workload::RequestTemplate;
use bytes::Bytes;
use serde::Serialize;

use super::{cancel_on_signal, pool_config, transport, Result, INTERRUPTED};
use crate::{BenchArgs, BenchEncoding, OutputFormat, RuntimeArg};

/// Version of the JSON report's layout; bumped when a field changes meaning or goes away.
pub const SCHEMA_VERSION: u32 = 1;

/// The run's settings, echoed at the top of every report.
#[derive(Debug, Clone, Serialize)]
pub struct BenchConfig {
    /// The endpoint as given.
    pub endpoint: String,
    /// `uds`, `tcp` or `grpc`.
    pub transport: &'static str,
    /// `json`, `msgpack`, or `protobuf` (gRPC).
    pub encoding: &'static str,
    /// `tokio` or `async-std`.
    pub runtime: &'static str,
    /// Pool connections.
    pub connections: u64,
    /// Requests in flight at most.
    pub concurrency: u64,
    /// Requests to measure, when the run is by count.
    pub requests: Option<u64>,
    /// Seconds to measure, when the run is by time.
    pub duration_s: Option<f64>,
    /// Seconds of unrecorded warm-up.
    pub warmup_s: f64,
    /// Requests per second (open loop), or none (closed loop).
    pub rate: Option<f64>,
    /// Per-event timeout, milliseconds.
    pub timeout_ms: u64,
    /// Request method.
    pub method: String,
    /// Request path.
    pub path: String,
    /// Request headers.
    pub headers: usize,
    /// Request body bytes.
    pub body_bytes: usize,
    /// Body chunk size.
    pub chunk_bytes: u64,
}

/// What the agent said about itself in the handshake.
#[derive(Debug, Clone, Serialize)]
pub struct AgentInfo {
    /// Its id.
    pub agent_id: String,
    /// Its name.
    pub name: String,
    /// Its version.
    pub version: String,
    /// Requests it takes in flight per connection.
    pub max_concurrency: u32,
    /// Largest body it accepts.
    pub max_body_size: u64,
}

/// `bench --output json`.
#[derive(Debug, Serialize)]
pub struct BenchReport<'a> {
    /// [`SCHEMA_VERSION`].
    pub schema_version: u32,
    /// The run's settings.
    pub config: &'a BenchConfig,
    /// The agent.
    pub agent: &'a AgentInfo,
    /// Requests sent during the warm-up (not in `result`).
    pub warmup_requests: u64,
    /// What was measured.
    pub result: &'a Summary,
}

/// `bench --output csv`: the configuration and the result, flat.
#[derive(Debug, Serialize)]
struct CsvRow<'a> {
    schema_version: u32,
    endpoint: &'a str,
    transport: &'a str,
    encoding: &'a str,
    runtime: &'a str,
    connections: u64,
    concurrency: u64,
    rate: Option<f64>,
    outcome: Outcome,
    elapsed_s: f64,
    requests: u64,
    successes: u64,
    errors: u64,
    error_rate: f64,
    req_per_s: f64,
    mean_us: Option<f64>,
    p50_us: Option<u64>,
    p90_us: Option<u64>,
    p95_us: Option<u64>,
    p99_us: Option<u64>,
    p999_us: Option<u64>,
    max_us: Option<u64>,
    allow: u64,
    block: u64,
    redirect: u64,
    challenge: u64,
}

/// Runs `bench`.
pub async fn run(args: BenchArgs) -> Result<ExitCode> {
    let transport = transport(&args.endpoint)?;
    if transport == "grpc" && args.runtime == RuntimeArg::AsyncStd {
        return Err("gRPC endpoints need --runtime tokio (gRPC is tokio-only)".into());
    }
    let template = template(&args)?;
    let config = BenchConfig {
        endpoint: args.endpoint.clone(),
        transport,
        encoding: match (transport, args.encoding) {
            ("grpc", _) => "protobuf",
            (_, BenchEncoding::Json) => "json",
            (_, BenchEncoding::Msgpack) => "msgpack",
        },
        runtime: match args.runtime {
            RuntimeArg::Tokio => "tokio",
            RuntimeArg::AsyncStd => "async-std",
        },
        connections: args.connections,
        concurrency: args.concurrency,
        requests: match args.duration {
            Some(_) => None,
            None => Some(args.requests.unwrap_or(100_000)),
        },
        duration_s: args.duration.map(|d| d.as_secs_f64()),
        warmup_s: args.warmup.as_secs_f64(),
        rate: args.rate,
        timeout_ms: u64::try_from(args.timeout.as_millis()).unwrap_or(u64::MAX),
        method: template.method.clone(),
        path: template.uri.clone(),
        headers: template.headers.len(),
        body_bytes: template.body.len(),
        chunk_bytes: args.chunk_bytes,
    };
    match args.runtime {
        RuntimeArg::Tokio => bench_on::<Tokio>(&args, config, template).await,
        // The pool's connection tasks and the load workers are async-std tasks; this (tokio)
        // task only waits for the result.
        RuntimeArg::AsyncStd => bench_on::<AsyncStd>(&args, config, template).await,
    }
}

/// The request every worker sends, from the flags.
fn template(args: &BenchArgs) -> Result<RequestTemplate> {
    let mut t = RequestTemplate::browser();
    if let Some(m) = &args.method {
        t.set_method(m).map_err(|e| format!("--method: {e}"))?;
    }
    if let Some(p) = &args.path {
        t.set_path(p).map_err(|e| format!("--path: {e}"))?;
    }
    for h in &args.headers {
        t.set_header(h).map_err(|e| format!("--header: {e}"))?;
    }
    let body = match (&args.body, &args.body_file) {
        (Some(text), _) => Bytes::from(text.clone().into_bytes()),
        (None, Some(path)) => Bytes::from(
            std::fs::read(path).map_err(|e| format!("--body-file {}: {e}", path.display()))?,
        ),
        (None, None) => Bytes::from(vec![b'a'; args.body_bytes]),
    };
    let chunk = usize::try_from(args.chunk_bytes).unwrap_or(usize::MAX);
    t.set_body(body, chunk);
    Ok(t)
}

async fn bench_on<R: Runtime>(
    args: &BenchArgs,
    config: BenchConfig,
    template: RequestTemplate,
) -> Result<ExitCode> {
    let encoding = match args.encoding {
        BenchEncoding::Json => Encoding::Json,
        BenchEncoding::Msgpack => Encoding::MsgPack,
    };
    let connections = usize::try_from(args.connections).unwrap_or(usize::MAX);
    let pool = AgentPool::<R>::new(pool_config(&[encoding], connections, args.timeout));
    // One connection of our own first: what the agent advertises decides what the run can do.
    let probe = AgentClient::<R>::connect(&args.endpoint, pool.config().client.clone()).await?;
    let agent = agent_info(probe.capabilities());
    for note in notes(&config, probe.capabilities()) {
        eprintln!("agentctl: note: {note}");
    }
    probe.close().await;
    pool.add_agent("bench", &args.endpoint).await?;

    let format = if args.json {
        OutputFormat::Json
    } else {
        args.output
    };
    if format == OutputFormat::Text {
        print_config(&mut std::io::stdout(), &config, &agent)?;
    }
    let extent = match args.duration {
        Some(d) => Extent::Duration(d),
        None => Extent::Requests(config.requests.unwrap_or(100_000)),
    };
    let spec = LoadSpec {
        agent_id: "bench".into(),
        extent,
        warmup: args.warmup,
        rate: args.rate,
        concurrency: usize::try_from(args.concurrency).unwrap_or(usize::MAX),
        workload: Workload::Template(Arc::new(template)),
        timeout: args.timeout,
        id_prefix: format!("bench-{}", std::process::id()),
    };
    let cancel = Arc::new(AtomicBool::new(false));
    cancel_on_signal(cancel.clone(), || {});
    let counters = Arc::new(LiveCounters::default());
    let label = format!("{} {}", config.transport, config.encoding);
    // A run by time shows the warm-up on its bar too (the bar follows the clock).
    let bar = match extent {
        Extent::Duration(d) => Extent::Duration(d + args.warmup),
        requests => requests,
    };
    let progress = Progress::start(&label, bar, counters.clone());
    let LoadResult {
        recorder,
        elapsed,
        outcome,
        warmup_requests,
    } = load::run(&pool, &spec, counters, cancel).await;
    progress.finish();
    let summary = recorder.summary(&label, outcome, elapsed, config.requests);
    let mut out = std::io::stdout().lock();
    match format {
        OutputFormat::Text => print_summary(&mut out, &summary)?,
        OutputFormat::Json => {
            let report = BenchReport {
                schema_version: SCHEMA_VERSION,
                config: &config,
                agent: &agent,
                warmup_requests,
                result: &summary,
            };
            serde_json::to_writer(&mut out, &report)?;
            writeln!(out)?;
        }
        OutputFormat::Csv => write_csv(&mut out, &config, &summary)?,
    }
    drop(out);
    pool.shutdown(Duration::from_secs(1)).await;
    Ok(match summary.outcome {
        Outcome::Interrupted => ExitCode::from(INTERRUPTED),
        Outcome::CircuitOpen => ExitCode::FAILURE,
        Outcome::Completed if summary.errors > 0 => ExitCode::FAILURE,
        Outcome::Completed => ExitCode::SUCCESS,
    })
}

fn agent_info(caps: &Capabilities) -> AgentInfo {
    AgentInfo {
        agent_id: caps.agent_id.clone(),
        name: caps.name.clone(),
        version: caps.version.clone(),
        max_concurrency: caps.limits.max_concurrency,
        max_body_size: caps.limits.max_body_size,
    }
}

/// What will happen, given what the agent advertises, when the run asks for more.
pub fn notes(config: &BenchConfig, caps: &Capabilities) -> Vec<String> {
    let mut notes = Vec::new();
    let per_connection = u64::from(caps.limits.max_concurrency);
    let takes = per_connection.saturating_mul(config.connections);
    if config.concurrency > takes {
        notes.push(format!(
            "the agent takes at most {per_connection} requests in flight per connection; \
             {} take {takes}, fewer than --concurrency {}: the pool will refuse the rest at \
             once (errors of kind `saturated`); use --connections {} or lower --concurrency",
            if config.connections == 1 {
                "1 connection".to_owned()
            } else {
                format!("{} connections", config.connections)
            },
            config.concurrency,
            config.concurrency.div_ceil(per_connection.max(1)),
        ));
    }
    let body = config.body_bytes as u64;
    if body > 0 && body > caps.limits.max_body_size {
        notes.push(format!(
            "the body ({body} bytes) is larger than the agent's max_body_size ({}): the pool \
             will refuse it (errors of kind `body_too_large`)",
            caps.limits.max_body_size
        ));
    }
    if body > 0 && !caps.supported_events.contains(EventKind::RequestBodyChunk) {
        notes.push(
            "the agent does not handle request body chunks: bodies are not sent to it".into(),
        );
    }
    notes
}

fn print_config(out: &mut impl Write, c: &BenchConfig, a: &AgentInfo) -> std::io::Result<()> {
    writeln!(out, "agentctl bench {}", c.endpoint)?;
    writeln!(
        out,
        "  agent        {} ({}) {}: {} in flight per connection, bodies up to {} bytes",
        a.agent_id, a.name, a.version, a.max_concurrency, a.max_body_size
    )?;
    writeln!(
        out,
        "  transport    {}, {}, {} runtime",
        c.transport, c.encoding, c.runtime
    )?;
    let extent = match (c.requests, c.duration_s) {
        (Some(n), _) => format!("{n} requests"),
        (None, Some(s)) => format!("{s} s"),
        (None, None) => String::new(),
    };
    let mode = match c.rate {
        Some(r) => format!("open loop at {r} req/s (latency from each request's schedule)"),
        None => "closed loop".into(),
    };
    writeln!(
        out,
        "  load         {extent}, {mode}, up to {} in flight over {} connection{}, timeout {} ms{}",
        c.concurrency,
        c.connections,
        if c.connections == 1 { "" } else { "s" },
        c.timeout_ms,
        if c.warmup_s > 0.0 {
            format!(", {} s warm-up", c.warmup_s)
        } else {
            String::new()
        }
    )?;
    writeln!(
        out,
        "  request      {} {}, {} headers, {}",
        c.method,
        c.path,
        c.headers,
        if c.body_bytes == 0 {
            "no body".to_owned()
        } else {
            format!("{} body bytes in chunks of {}", c.body_bytes, c.chunk_bytes)
        }
    )?;
    writeln!(out)
}

fn write_csv(out: &mut impl Write, c: &BenchConfig, s: &Summary) -> Result<()> {
    let l = s.latency_us.as_ref();
    let decided = |k: &str| s.decisions.get(k).copied().unwrap_or(0);
    let row = CsvRow {
        schema_version: SCHEMA_VERSION,
        endpoint: &c.endpoint,
        transport: c.transport,
        encoding: c.encoding,
        runtime: c.runtime,
        connections: c.connections,
        concurrency: c.concurrency,
        rate: c.rate,
        outcome: s.outcome,
        elapsed_s: s.elapsed_s,
        requests: s.requests,
        successes: s.successes,
        errors: s.errors,
        error_rate: s.error_rate,
        req_per_s: s.req_per_s,
        mean_us: l.map(|l| l.mean),
        p50_us: l.map(|l| l.p50),
        p90_us: l.map(|l| l.p90),
        p95_us: l.map(|l| l.p95),
        p99_us: l.map(|l| l.p99),
        p999_us: l.map(|l| l.p999),
        max_us: l.map(|l| l.max),
        allow: decided("allow"),
        block: decided("block"),
        redirect: decided("redirect"),
        challenge: decided("challenge"),
    };
    let mut writer = csv::Writer::from_writer(out);
    writer.serialize(row)?;
    writer.flush()?;
    Ok(())
}
