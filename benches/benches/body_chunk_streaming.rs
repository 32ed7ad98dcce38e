//! Body streaming: a 1 MiB request body in 1, 16 and 64 KiB chunks through the pool to a real
//! agent over a Unix socket, each chunk waiting for its answer (as a proxy that lets the agent
//! decide per chunk does), JSON (base64 bodies) and MessagePack (`bin` bodies). Criterion's
//! `thrpt` line is body bytes per second.
//!
//! The request's headers are sent first (the chunks follow their connection) but outside the
//! timed section; so is building the chunk events (`Bytes` slices of one body, no copy).
//! `{encoding}/64k_c8` streams eight 1 MiB bodies concurrently (64 KiB chunks), to see what
//! pipelining over the pool's 4 connections adds.
//!
//! The sequential variants are followed by `cpu ...` lines: wall and CPU time per MiB of the
//! proxy thread and of the agent thread.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use agent_protocol_benches::{
    body_chunks, browser_headers, connect_pool, current_thread_runtime, measure_cpu, AgentThread,
    ENCODINGS,
};
use agent_protocol_core::RequestBodyChunkEvent;
use agent_protocol_tokio::pool::AgentPool;
use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};

const AGENT: &str = "bench";
const BODY: usize = 1024 * 1024;

/// Bodies streamed by the CPU-time report after each variant (the report includes sending
/// each body's headers).
const REPORT_MIB: u64 = 16;

static NEXT_ID: AtomicU64 = AtomicU64::new(0);

/// Sends the headers of a new request (untimed), returns its id and chunk events.
async fn open_stream(
    pool: &AgentPool,
    body: &Bytes,
    chunk: usize,
) -> (String, Vec<RequestBodyChunkEvent>) {
    let cid = format!("body-{}", NEXT_ID.fetch_add(1, Ordering::Relaxed));
    pool.send_request_headers(AGENT, browser_headers(&cid, "POST", "/upload"))
        .await
        .expect("headers");
    let chunks = body_chunks(&cid, body, chunk);
    (cid, chunks)
}

async fn stream(pool: &AgentPool, cid: &str, chunks: Vec<RequestBodyChunkEvent>) {
    for c in chunks {
        let r = pool.send_request_body_chunk(AGENT, c).await.expect("chunk");
        std::hint::black_box(r);
    }
    pool.clear_correlation_affinity(AGENT, cid);
}

async fn sequential(pool: &AgentPool, body: &Bytes, chunk: usize, iters: u64) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let (cid, chunks) = open_stream(pool, body, chunk).await;
        let start = Instant::now();
        stream(pool, &cid, chunks).await;
        total += start.elapsed();
    }
    total
}

async fn concurrent(
    pool: &AgentPool,
    body: &Bytes,
    chunk: usize,
    streams: usize,
    iters: u64,
) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let mut opened = Vec::with_capacity(streams);
        for _ in 0..streams {
            opened.push(open_stream(pool, body, chunk).await);
        }
        let start = Instant::now();
        let tasks: Vec<_> = opened
            .into_iter()
            .map(|(cid, chunks)| {
                let pool = pool.clone();
                tokio::spawn(async move { stream(&pool, &cid, chunks).await })
            })
            .collect();
        for t in tasks {
            t.await.expect("stream");
        }
        total += start.elapsed();
    }
    total
}

fn body_streaming(c: &mut Criterion) {
    let agent = AgentThread::start();
    let rt = current_thread_runtime();
    let body = Bytes::from((0..BODY).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
    let mut reports = Vec::new();
    let mut g = c.benchmark_group("body_chunk_streaming_1mib");
    g.sampling_mode(SamplingMode::Flat);
    g.sample_size(10);
    for enc in ENCODINGS {
        let pool = connect_pool(&rt, &agent, enc, 4);
        g.throughput(Throughput::Bytes(BODY as u64));
        for kib in [1usize, 16, 64] {
            g.bench_function(format!("{enc}/{kib}k"), |b| {
                b.iter_custom(|iters| rt.block_on(sequential(&pool, &body, kib * 1024, iters)))
            });
            let (_, cpu) =
                measure_cpu(|| rt.block_on(sequential(&pool, &body, kib * 1024, REPORT_MIB)));
            reports.push(cpu.report(&format!("{enc}/{kib}k"), REPORT_MIB, "MiB"));
        }
        const STREAMS: usize = 8;
        g.throughput(Throughput::Bytes((STREAMS * BODY) as u64));
        g.bench_function(format!("{enc}/64k_c{STREAMS}"), |b| {
            b.iter_custom(|iters| rt.block_on(concurrent(&pool, &body, 64 * 1024, STREAMS, iters)))
        });
        rt.block_on(pool.shutdown(Duration::from_secs(1)));
    }
    g.finish();
    for r in reports {
        println!("{r}");
    }
}

criterion_group!(benches, body_streaming);
criterion_main!(benches);
