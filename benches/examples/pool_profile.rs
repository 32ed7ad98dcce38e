//! A fixed pool workload to run under a profiler: the 20-header request through the pool to
//! the in-process agent, `CONCURRENCY` tasks, the events built before the measured phase.
//!
//! ```sh
//! cargo build --release -p agent-protocol-benches --example pool_profile
//! perf record -g -D 3000 target/release/examples/pool_profile msgpack 64 400000
//! ```
//!
//! Arguments: encoding (`json` or `msgpack`, default msgpack), concurrency (default 64),
//! requests (default 200000). It sleeps until 3 s after start before sending, so
//! `perf record -D 3000` skips the setup; then it prints the wall and CPU time per request of
//! the proxy thread (`pool_profile`) and of the agent thread (`bench-agent`). Each request's
//! event is built just before it is sent (a clone of a template), as a proxy builds it from
//! the HTTP request: that clone is part of the proxy thread's time.

use std::time::{Duration, Instant};

use agent_protocol_benches::{
    connect_pool, current_thread_runtime, measure_cpu, request_headers, AgentThread,
};
use agent_protocol_core::{ByteStr, Encoding};

fn main() {
    let started = Instant::now();
    let mut args = std::env::args().skip(1);
    let encoding = args
        .next()
        .and_then(|e| Encoding::from_name(&e))
        .unwrap_or(Encoding::MsgPack);
    let concurrency: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(64);
    let requests: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(200_000);

    let agent = AgentThread::start();
    let rt = current_thread_runtime();
    let pool = connect_pool(&rt, &agent, encoding, 4);
    let template = request_headers("p-template");
    std::thread::sleep(Duration::from_secs(3).saturating_sub(started.elapsed()));
    let per_lane = requests / concurrency;
    let requests = per_lane * concurrency;
    let ((), cpu) = measure_cpu(|| {
        rt.block_on(async {
            let tasks: Vec<_> = (0..concurrency)
                .map(|lane| {
                    let pool = pool.clone();
                    let template = template.clone();
                    tokio::spawn(async move {
                        for i in 0..per_lane {
                            // What a proxy does per request: build the event (here a clone of
                            // a template, whose strings are shared, not copied; see
                            // codec/headers_20/request_event_clone for its cost).
                            let cid = ByteStr::from(format!("p-{lane}-{i}"));
                            let mut event = template.clone();
                            event.correlation_id = cid.clone();
                            event.metadata.correlation_id = cid.clone();
                            let r = pool
                                .send_request_headers("bench", event)
                                .await
                                .expect("round trip");
                            drop(r);
                            pool.clear_correlation_affinity("bench", &cid);
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.await.expect("lane");
            }
        })
    });
    println!(
        "{}",
        cpu.report(
            &format!("pool_profile {encoding} c={concurrency}"),
            requests as u64,
            "request"
        )
    );
    rt.block_on(pool.shutdown(Duration::from_secs(1)));
}
