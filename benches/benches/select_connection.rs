//! Connection selection and agent lookup: the part of every pool call that happens before any
//! I/O.
//!
//! - `core/{strategy}/{n}`: [`Selector::select`] over `n` plain [`CandidateInfo`] values.
//! - `atomics/{strategy}/{n}`: the same over connections whose state is read from atomics at
//!   selection time, as the Tokio pool's candidate set does.
//! - `lookup_select/{n}` and `lookup_select_churn/{n}`: what the pool does per call, rebuilt
//!   from public pieces (the pool's entries are private): load the `ArcSwap` of the agent map,
//!   find the agent and clone its `Arc`, load its connection list, select (round robin) and
//!   clone the chosen connection's `Arc`; with `n` agents of 4 connections each. The churn
//!   variant has a second thread adding and removing an agent in a loop (clone-modify-store of
//!   the map, as the pool's writers do) the whole time.
//! - `pool_lookup/{n}` and `pool_lookup_churn/{n}`: the real [`AgentPool`]'s lookup path
//!   (`AgentPool::metrics`, which is the pool's agent lookup plus an `Arc` clone) with `n`
//!   real agents over Unix sockets; the churn variant adds and removes a real agent (socket
//!   connect + handshake + close) from a second thread.

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use agent_protocol_benches::{current_thread_runtime, pool_config, AgentThread};
use agent_protocol_core::pool::{
    CandidateInfo, CandidateSet, ErrorRate, LoadBalanceStrategy, Selector,
};
use agent_protocol_core::{Encoding, HealthState};
use agent_protocol_tokio::pool::AgentPool;
use arc_swap::ArcSwap;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};

const SIZES: [usize; 4] = [1, 10, 100, 1000];
const STRATEGIES: [(&str, LoadBalanceStrategy); 4] = [
    ("round_robin", LoadBalanceStrategy::RoundRobin),
    ("least_connections", LoadBalanceStrategy::LeastConnections),
    ("health_based", LoadBalanceStrategy::HealthBased),
    ("random", LoadBalanceStrategy::Random),
];

/// A mixed, realistic set: every 10th connection degraded, every 25th saturated, loads and
/// error rates spread out.
fn candidates(n: usize) -> Vec<CandidateInfo> {
    (0..n)
        .map(|i| {
            let mut c = CandidateInfo::new(
                if i % 10 == 9 {
                    HealthState::Degraded
                } else {
                    HealthState::Healthy
                },
                100,
            );
            c.in_flight = if i % 25 == 24 {
                100
            } else {
                (i * 7 % 13) as u32
            };
            c.recent_error_rate_ppm = (i * 7919 % 5000) as u32;
            c
        })
        .collect()
}

/// A connection whose state lives in atomics, like the pool's (status, pending count, error
/// rate).
struct AtomicConn {
    connected: AtomicBool,
    paused: AtomicBool,
    health: AtomicU8,
    in_flight: AtomicU32,
    pending: AtomicU32,
    limit: AtomicU32,
    errors: ErrorRate,
}

impl AtomicConn {
    fn from_info(c: &CandidateInfo) -> Self {
        Self {
            connected: AtomicBool::new(c.connected),
            paused: AtomicBool::new(c.paused),
            health: AtomicU8::new(c.health.as_u8()),
            in_flight: AtomicU32::new(c.in_flight),
            pending: AtomicU32::new(0),
            limit: AtomicU32::new(c.max_in_flight),
            errors: ErrorRate::new(),
        }
    }

    fn candidate(&self) -> CandidateInfo {
        CandidateInfo {
            health: HealthState::from_u8(self.health.load(Ordering::Acquire)),
            connected: self.connected.load(Ordering::Acquire),
            paused: self.paused.load(Ordering::Acquire),
            in_flight: self
                .in_flight
                .load(Ordering::Acquire)
                .max(self.pending.load(Ordering::Acquire)),
            max_in_flight: self.limit.load(Ordering::Acquire),
            recent_error_rate_ppm: self.errors.ppm(),
        }
    }
}

struct Conns<'a>(&'a [Arc<AtomicConn>]);

impl CandidateSet for Conns<'_> {
    fn len(&self) -> usize {
        self.0.len()
    }

    fn candidate(&self, index: usize) -> CandidateInfo {
        self.0
            .get(index)
            .map_or(CandidateInfo::UNAVAILABLE, |c| c.candidate())
    }
}

fn core_selector(c: &mut Criterion) {
    let mut g = c.benchmark_group("select_connection/core");
    for (name, strategy) in STRATEGIES {
        for n in SIZES {
            let set = candidates(n);
            let selector = Selector::new(42);
            g.bench_with_input(BenchmarkId::new(name, n), &set, |b, set| {
                b.iter(|| black_box(selector.select(strategy, black_box(set.as_slice()))))
            });
        }
    }
    g.finish();

    let mut g = c.benchmark_group("select_connection/atomics");
    for (name, strategy) in STRATEGIES {
        for n in SIZES {
            let conns: Vec<Arc<AtomicConn>> = candidates(n)
                .iter()
                .map(|c| Arc::new(AtomicConn::from_info(c)))
                .collect();
            let selector = Selector::new(42);
            g.bench_with_input(BenchmarkId::new(name, n), &conns, |b, conns| {
                b.iter(|| black_box(selector.select(strategy, &Conns(black_box(conns)))))
            });
        }
    }
    g.finish();
}

/// One agent as the pool keeps it (the parts the request path touches).
struct Entry {
    conns: ArcSwap<Vec<Arc<AtomicConn>>>,
    selector: Selector,
}

fn entry() -> Arc<Entry> {
    let conns = candidates(4)
        .iter()
        .map(|c| Arc::new(AtomicConn::from_info(c)))
        .collect();
    Arc::new(Entry {
        conns: ArcSwap::from_pointee(conns),
        selector: Selector::new(7),
    })
}

type AgentMap = ArcSwap<HashMap<String, Arc<Entry>>>;

fn agent_map(n: usize) -> (Arc<AgentMap>, Vec<String>) {
    let ids: Vec<String> = (0..n).map(|i| format!("agent-{i:04}")).collect();
    let map: HashMap<String, Arc<Entry>> = ids.iter().map(|id| (id.clone(), entry())).collect();
    (Arc::new(ArcSwap::from_pointee(map)), ids)
}

/// The pool's per-call path up to the chosen connection.
fn lookup_select(map: &AgentMap, id: &str) -> Option<Arc<AtomicConn>> {
    let entry = map.load().get(id).cloned()?;
    let conns = entry.conns.load();
    let i = entry
        .selector
        .select(LoadBalanceStrategy::RoundRobin, &Conns(&conns))
        .ok()?;
    conns.get(i).cloned()
}

/// Adds and removes one agent in a loop until `stop`, the way the pool's writers replace the
/// map.
fn churn(map: Arc<AgentMap>, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut rounds = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let mut m = HashMap::clone(&map.load());
            m.insert("churn".to_owned(), entry());
            map.store(Arc::new(m));
            let mut m = HashMap::clone(&map.load());
            m.remove("churn");
            map.store(Arc::new(m));
            rounds += 1;
        }
        rounds
    })
}

fn lookup(c: &mut Criterion) {
    let mut g = c.benchmark_group("select_connection");
    for n in SIZES {
        let (map, ids) = agent_map(n);
        let mut k = 0usize;
        g.bench_function(BenchmarkId::new("lookup_select", n), |b| {
            b.iter(|| {
                k = (k + 1) % ids.len();
                black_box(lookup_select(&map, &ids[k]))
            })
        });
        let stop = Arc::new(AtomicBool::new(false));
        let writer = churn(map.clone(), stop.clone());
        g.bench_function(BenchmarkId::new("lookup_select_churn", n), |b| {
            b.iter(|| {
                k = (k + 1) % ids.len();
                black_box(lookup_select(&map, &ids[k]))
            })
        });
        stop.store(true, Ordering::Relaxed);
        let rounds = writer.join().expect("writer");
        eprintln!("  (lookup_select_churn/{n}: writer replaced the map {rounds} times)");
    }
    g.finish();
}

/// The real pool: `n` agents (one connection each) on one agent server.
fn pool_lookup(c: &mut Criterion) {
    let agent = AgentThread::start();
    let endpoint = agent.endpoint();
    let rt = current_thread_runtime();
    let mut g = c.benchmark_group("select_connection");
    for n in [1usize, 10, 100] {
        let pool = rt.block_on(async {
            let pool = AgentPool::new(pool_config(Encoding::MsgPack, 1));
            for i in 0..n {
                pool.add_agent(&format!("agent-{i:04}"), &endpoint)
                    .await
                    .expect("add agent");
            }
            pool
        });
        let ids: Vec<String> = pool.agent_ids();
        let mut k = 0usize;
        g.bench_function(BenchmarkId::new("pool_lookup", n), |b| {
            b.iter(|| {
                k = (k + 1) % ids.len();
                black_box(pool.metrics(&ids[k]))
            })
        });

        let stop = Arc::new(AtomicBool::new(false));
        let writer = {
            let pool = pool.clone();
            let stop = stop.clone();
            let endpoint = endpoint.clone();
            std::thread::spawn(move || {
                current_thread_runtime().block_on(async move {
                    let mut rounds = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        pool.add_agent("churn", &endpoint).await.expect("add churn");
                        pool.remove_agent("churn").await.expect("remove churn");
                        rounds += 1;
                    }
                    rounds
                })
            })
        };
        g.bench_function(BenchmarkId::new("pool_lookup_churn", n), |b| {
            b.iter(|| {
                k = (k + 1) % ids.len();
                black_box(pool.metrics(&ids[k]))
            })
        });
        stop.store(true, Ordering::Relaxed);
        let rounds = writer.join().expect("writer");
        eprintln!("  (pool_lookup_churn/{n}: {rounds} real add/remove rounds)");
        rt.block_on(pool.shutdown(Duration::from_secs(1)));
    }
    g.finish();
}

criterion_group!(benches, core_selector, lookup, pool_lookup);
criterion_main!(benches);
