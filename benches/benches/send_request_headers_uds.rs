//! Full request round trip: the browser-like 20-header RequestHeaders event through
//! [`AgentPool::send_request_headers`] to a real [`AgentServer`] over a Unix socket and back,
//! in JSON and MessagePack.
//!
//! - `{encoding}/c1`: one request at a time (latency; compare with `uds_floor`).
//! - `{encoding}/c64`: 64 tasks sending concurrently; the time reported is wall time divided
//!   by the requests completed, i.e. the inverse of throughput (criterion's `thrpt` line is
//!   requests per second).
//!
//! Each request also clears its correlation affinity afterwards, as a proxy does when the
//! request ends. The events are built before the timed section (cloning a 20-header event
//! costs about as much as a codec pass; `codec/headers_20/request_event_clone` measures it).
//! The pool has 4 connections to the agent (the default), round robin.
//!
//! After each variant a fixed run prints `cpu ...` lines: wall time and CPU time per request
//! of the proxy thread and of the agent thread. On a machine shared with other work the CPU
//! times are the stable numbers (wall time includes waiting for a core).
//!
//! [`AgentServer`]: agent_protocol_tokio::server::AgentServer

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use agent_protocol_benches::{
    connect_pool, current_thread_runtime, measure_cpu, request_headers, AgentThread, ENCODINGS,
};
use agent_protocol_core::RequestHeadersEvent;
use agent_protocol_tokio::pool::AgentPool;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tokio::runtime::Runtime;

const AGENT: &str = "bench";
/// Events built per untimed batch.
const BATCH: u64 = 2048;
const CONCURRENCY: usize = 64;

static NEXT_ID: AtomicU64 = AtomicU64::new(0);

fn batch(n: u64) -> Vec<(String, RequestHeadersEvent)> {
    (0..n)
        .map(|_| {
            let cid = format!("rt-{}", NEXT_ID.fetch_add(1, Ordering::Relaxed));
            let event = request_headers(&cid);
            (cid, event)
        })
        .collect()
}

async fn one(pool: &AgentPool, cid: &str, event: RequestHeadersEvent) {
    let r = pool
        .send_request_headers(AGENT, event)
        .await
        .expect("round trip");
    std::hint::black_box(r);
    pool.clear_correlation_affinity(AGENT, cid);
}

async fn run_sequential(pool: &AgentPool, events: Vec<(String, RequestHeadersEvent)>) {
    for (cid, event) in events {
        one(pool, &cid, event).await;
    }
}

async fn run_concurrent(pool: &AgentPool, events: Vec<(String, RequestHeadersEvent)>) {
    let mut lanes: Vec<Vec<(String, RequestHeadersEvent)>> =
        (0..CONCURRENCY).map(|_| Vec::new()).collect();
    for (i, e) in events.into_iter().enumerate() {
        lanes[i % CONCURRENCY].push(e);
    }
    let tasks: Vec<_> = lanes
        .into_iter()
        .map(|lane| {
            let pool = pool.clone();
            tokio::spawn(async move {
                for (cid, event) in lane {
                    one(&pool, &cid, event).await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("lane");
    }
}

/// `iters` requests in batches whose events are built outside the timed sections.
fn timed<F, Fut>(rt: &Runtime, pool: &AgentPool, iters: u64, run: F) -> Duration
where
    F: Fn(AgentPool, Vec<(String, RequestHeadersEvent)>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut total = Duration::ZERO;
    let mut done = 0;
    while done < iters {
        let events = batch(BATCH.min(iters - done));
        done += events.len() as u64;
        let start = Instant::now();
        rt.block_on(run(pool.clone(), events));
        total += start.elapsed();
    }
    total
}

/// Requests of the CPU-time report after each bench.
const REPORT_REQUESTS: u64 = 20_000;

fn round_trip(c: &mut Criterion) {
    let agent = AgentThread::start();
    let rt = current_thread_runtime();
    let mut g = c.benchmark_group("send_request_headers_uds");
    g.throughput(Throughput::Elements(1));
    let mut reports = Vec::new();
    for enc in ENCODINGS {
        let pool = connect_pool(&rt, &agent, enc, 4);
        g.bench_function(format!("{enc}/c1"), |b| {
            b.iter_custom(|iters| {
                timed(&rt, &pool, iters, |p, e| async move {
                    run_sequential(&p, e).await
                })
            })
        });
        let events = batch(REPORT_REQUESTS / 4);
        let ((), cpu) = measure_cpu(|| rt.block_on(run_sequential(&pool, events)));
        reports.push(cpu.report(&format!("{enc}/c1"), REPORT_REQUESTS / 4, "request"));

        g.bench_function(format!("{enc}/c64"), |b| {
            b.iter_custom(|iters| {
                timed(&rt, &pool, iters, |p, e| async move {
                    run_concurrent(&p, e).await
                })
            })
        });
        let events = batch(REPORT_REQUESTS);
        let ((), cpu) = measure_cpu(|| rt.block_on(run_concurrent(&pool, events)));
        reports.push(cpu.report(&format!("{enc}/c64"), REPORT_REQUESTS, "request"));
        rt.block_on(pool.shutdown(Duration::from_secs(1)));
    }
    g.finish();
    // Printed last so they are not lost between criterion's own lines.
    for r in reports {
        println!("{r}");
    }
}

criterion_group!(benches, round_trip);
criterion_main!(benches);
