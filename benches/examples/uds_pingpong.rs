//! The c=1 floor `agentctl bench --concurrency 1` is compared with: a raw blocking ping-pong
//! over a Unix socket pair, the request the size of the 20-header RequestHeaders frame and the
//! answer the size of an allow, no protocol at all. Run it pinned to the CPU the agent and the
//! bench are pinned to, alternating with them in one run:
//!
//! ```sh
//! cargo build --release -p agent-protocol-benches --example uds_pingpong
//! taskset -c 0 target/release/examples/uds_pingpong 200000
//! ```
//!
//! Arguments: round trips (default 200000), request bytes (700), answer bytes (100). Prints the
//! p50, p99 and mean round trip in microseconds, as `agentctl bench` does.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Instant;

fn main() {
    let mut args = std::env::args().skip(1).map(|a| a.parse::<usize>().ok());
    let rounds = args.next().flatten().unwrap_or(200_000).max(1);
    let request = args.next().flatten().unwrap_or(700).max(1);
    let answer = args.next().flatten().unwrap_or(100).max(1);

    let (mut proxy, mut agent) = UnixStream::pair().expect("socket pair");
    let echo = std::thread::spawn(move || {
        let mut got = vec![0u8; request];
        let reply = vec![1u8; answer];
        while agent.read_exact(&mut got).is_ok() {
            if agent.write_all(&reply).is_err() {
                break;
            }
        }
    });
    let sent = vec![7u8; request];
    let mut back = vec![0u8; answer];
    // Nanoseconds per round trip, sorted afterwards (no histogram crate needed for two
    // quantiles).
    let mut nanos: Vec<u64> = Vec::with_capacity(rounds);
    let started = Instant::now();
    for _ in 0..rounds {
        let t = Instant::now();
        proxy.write_all(&sent).expect("write");
        proxy.read_exact(&mut back).expect("read");
        nanos.push(t.elapsed().as_nanos() as u64);
    }
    let total = started.elapsed();
    drop(proxy);
    let _ = echo.join();
    nanos.sort_unstable();
    let us = |q: f64| nanos[((nanos.len() - 1) as f64 * q) as usize] as f64 / 1000.0;
    println!(
        "{rounds} round trips ({request} B / {answer} B): {:.0} per s, p50 {:.1} us, p99 {:.1} us, mean {:.1} us",
        rounds as f64 / total.as_secs_f64(),
        us(0.5),
        us(0.99),
        total.as_secs_f64() * 1e6 / rounds as f64,
    );
}
