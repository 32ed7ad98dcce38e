//! The floor: a raw ~1 KB ping-pong over a Unix socket pair, with no protocol at all, so the
//! round-trip benches can be compared with it in the same run.
//!
//! - `tokio_cross_thread`: the topology of the round-trip benches (the echo side on its own
//!   thread and current-thread runtime, the caller on the bench thread's runtime).
//! - `tokio_same_thread`: both tasks on one current-thread runtime (no cross-thread wake-up).
//! - `std_threads_blocking`: blocking std sockets, echo on a second thread.
//!
//! Each variant is followed by a `cpu ...` line: wall and CPU time per round trip of the
//! calling side and of the echo side.
//!
//! `uds_floor_bulk_copy/tokio_cross_thread_8x1mib_64k`: the floor of `body_chunk_streaming`'s
//! `64k_c8`, eight 1 MiB bodies at once in 64 KiB writes over eight socket pairs, each
//! acknowledged by one byte once wholly read on the other thread; `thrpt` is bytes per second.

use std::hint::black_box;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::time::{Duration, Instant};

use agent_protocol_benches::{current_thread_runtime, measure_cpu};
use criterion::{criterion_group, criterion_main, Criterion};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// Bytes each way per round trip (about the browser-like request frame).
const MESSAGE: usize = 1024;

async fn echo(mut s: UnixStream) {
    let mut buf = vec![0u8; MESSAGE];
    while s.read_exact(&mut buf).await.is_ok() {
        if s.write_all(&buf).await.is_err() {
            break;
        }
    }
}

async fn round_trips(s: &mut UnixStream, iters: u64) -> Duration {
    let out = vec![7u8; MESSAGE];
    let mut back = vec![0u8; MESSAGE];
    let start = Instant::now();
    for _ in 0..iters {
        s.write_all(&out).await.expect("write");
        s.read_exact(&mut back).await.expect("read");
    }
    black_box(&back);
    start.elapsed()
}

/// Round trips of the CPU-time report after each variant.
const REPORT: u64 = 20_000;

fn floor(c: &mut Criterion) {
    let mut g = c.benchmark_group("uds_floor_1k_ping_pong");
    let mut reports = Vec::new();

    // Echo on its own thread and runtime; caller on the bench thread's runtime.
    {
        let (a, b) = StdUnixStream::pair().expect("socket pair");
        a.set_nonblocking(true).expect("nonblocking");
        b.set_nonblocking(true).expect("nonblocking");
        let echo_thread = std::thread::spawn(move || {
            current_thread_runtime()
                .block_on(async move { echo(UnixStream::from_std(b).expect("tokio stream")).await })
        });
        let rt = current_thread_runtime();
        let mut client = rt.block_on(async { UnixStream::from_std(a).expect("tokio stream") });
        g.bench_function("tokio_cross_thread", |bench| {
            bench.iter_custom(|iters| rt.block_on(round_trips(&mut client, iters)))
        });
        let (_, cpu) = measure_cpu(|| rt.block_on(round_trips(&mut client, REPORT)));
        reports.push(cpu.report("tokio_cross_thread", REPORT, "round trip"));
        drop(client);
        echo_thread.join().expect("echo thread");
    }

    // Both ends on one current-thread runtime.
    {
        let rt = current_thread_runtime();
        let (mut client, server) = rt.block_on(async { UnixStream::pair().expect("pair") });
        let echo_task = rt.spawn(echo(server));
        g.bench_function("tokio_same_thread", |bench| {
            bench.iter_custom(|iters| rt.block_on(round_trips(&mut client, iters)))
        });
        let (_, cpu) = measure_cpu(|| rt.block_on(round_trips(&mut client, REPORT)));
        reports.push(cpu.report("tokio_same_thread", REPORT, "round trip"));
        drop(client);
        rt.block_on(echo_task).expect("echo task");
    }

    // Blocking std sockets and threads.
    {
        let (mut a, mut b) = StdUnixStream::pair().expect("socket pair");
        let echo_thread = std::thread::spawn(move || {
            let mut buf = vec![0u8; MESSAGE];
            while b.read_exact(&mut buf).is_ok() {
                if b.write_all(&buf).is_err() {
                    break;
                }
            }
        });
        let out = vec![7u8; MESSAGE];
        let mut back = vec![0u8; MESSAGE];
        let mut one = || {
            a.write_all(&out).expect("write");
            a.read_exact(&mut back).expect("read");
            black_box(back[0])
        };
        g.bench_function("std_threads_blocking", |bench| bench.iter(&mut one));
        let (_, cpu) = measure_cpu(|| {
            (0..REPORT).for_each(|_| {
                one();
            })
        });
        reports.push(cpu.report("std_threads_blocking", REPORT, "round trip"));
        drop(a);
        echo_thread.join().expect("echo thread");
    }
    g.finish();
    for r in reports {
        println!("{r}");
    }
}

/// Bodies in flight at once, their size and the size of each write, as in `64k_c8`.
const STREAMS: usize = 8;
const BODY: usize = 1024 * 1024;
const CHUNK: usize = 64 * 1024;

/// Reads whole bodies and acknowledges each with one byte.
async fn sink(mut s: UnixStream) {
    let mut buf = vec![0u8; CHUNK];
    loop {
        let mut left = BODY;
        while left > 0 {
            match s.read(&mut buf[..left.min(CHUNK)]).await {
                Ok(0) | Err(_) => return,
                Ok(n) => left -= n,
            }
        }
        if s.write_all(&[1]).await.is_err() {
            return;
        }
    }
}

/// Sends one body in `CHUNK` writes and waits for its acknowledgement.
async fn send_body(mut s: UnixStream, body: std::sync::Arc<Vec<u8>>) -> UnixStream {
    for chunk in body.chunks(CHUNK) {
        s.write_all(chunk).await.expect("write");
    }
    let mut ack = [0u8; 1];
    s.read_exact(&mut ack).await.expect("ack");
    s
}

fn bulk(c: &mut Criterion) {
    let mut g = c.benchmark_group("uds_floor_bulk_copy");
    g.throughput(criterion::Throughput::Bytes((STREAMS * BODY) as u64));
    let rt = current_thread_runtime();
    let mut senders = Vec::new();
    let mut receivers = Vec::new();
    for _ in 0..STREAMS {
        let (a, b) = StdUnixStream::pair().expect("socket pair");
        a.set_nonblocking(true).expect("nonblocking");
        b.set_nonblocking(true).expect("nonblocking");
        senders.push(a);
        receivers.push(b);
    }
    let sink_thread = std::thread::spawn(move || {
        current_thread_runtime().block_on(async move {
            let tasks: Vec<_> = receivers
                .into_iter()
                .map(|b| tokio::spawn(sink(UnixStream::from_std(b).expect("tokio stream"))))
                .collect();
            for t in tasks {
                let _ = t.await;
            }
        })
    });
    let mut streams: Vec<UnixStream> = rt.block_on(async {
        senders
            .into_iter()
            .map(|a| UnixStream::from_std(a).expect("tokio stream"))
            .collect()
    });
    let body = std::sync::Arc::new(vec![7u8; BODY]);
    g.bench_function("tokio_cross_thread_8x1mib_64k", |bench| {
        bench.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let sending: Vec<_> = streams
                        .drain(..)
                        .map(|s| tokio::spawn(send_body(s, body.clone())))
                        .collect();
                    for t in sending {
                        streams.push(t.await.expect("sender"));
                    }
                }
                start.elapsed()
            })
        })
    });
    g.finish();
    drop(streams);
    sink_thread.join().expect("sink thread");
}

criterion_group!(benches, floor, bulk);
criterion_main!(benches);
