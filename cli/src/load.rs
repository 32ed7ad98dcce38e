//! Load through an [`AgentPool`] on any runtime: `concurrency` workers (tasks of that runtime)
//! each send the next request as soon as their previous one finished (closed loop), or, with a
//! rate, when its turn on a fixed schedule comes (open loop).
//!
//! Open-loop latency is corrected for coordinated omission the way wrk2 does it: a request that
//! starts late because every worker was still busy (the agent is slow) is timed from when it
//! was *scheduled*, so a stall shows in the percentiles instead of silently lowering the rate.
//! A worker that is early waits and is timed from when it really sent: the wake-up lag of our
//! own timer is ours, not the agent's.
//!
//! Memory does not grow with the concurrency beyond a small per-task cost (the task's own
//! future): the workers share a [`ThreadRecorders`] (one latency histogram per OS thread that
//! ran any of them, merged at the end) instead of each keeping its own, and no more workers are
//! started than there are requests.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agent_protocol_core::{Decision, Event};
use agent_protocol_driver::pool::{AgentPool, PoolError};
use agent_protocol_driver::Runtime;
use tokio::sync::Notify;

use crate::progress::{Extent, LiveCounters};
use crate::report::{Outcome, Recorder, ThreadRecorders};
use crate::workload::{Mix, Request, RequestTemplate};

/// What the requests of a run look like.
#[derive(Clone, Debug)]
pub enum Workload {
    /// The demo's mix of GETs, blocked paths and POSTs with bodies.
    Mix(Mix),
    /// The same request every time.
    Template(Arc<RequestTemplate>),
}

impl Workload {
    /// Request number `i`, with correlation id `cid`.
    pub fn request(&self, i: u64, cid: &str) -> Request {
        match self {
            Self::Mix(mix) => mix.request(i, cid),
            Self::Template(template) => template.request(cid),
        }
    }
}

/// A load run's parameters.
#[derive(Clone, Debug)]
pub struct LoadSpec {
    /// Agent to load.
    pub agent_id: String,
    /// How many requests, or for how long (warm-up not included).
    pub extent: Extent,
    /// Requests sent first and not recorded, while connections and caches warm up.
    pub warmup: Duration,
    /// Requests per second on a fixed schedule (open loop); `None`: closed loop.
    pub rate: Option<f64>,
    /// Workers: the most requests in flight at once.
    pub concurrency: usize,
    /// What the requests look like.
    pub workload: Workload,
    /// Per-event timeout.
    pub timeout: Duration,
    /// Prefix for correlation ids (unique per run).
    pub id_prefix: String,
}

/// What a run measured.
#[derive(Debug)]
pub struct LoadResult {
    /// The merged numbers of every worker (warm-up excluded).
    pub recorder: Recorder,
    /// From the end of the warm-up to the last request's end.
    pub elapsed: Duration,
    /// How the run ended.
    pub outcome: Outcome,
    /// Requests sent during the warm-up.
    pub warmup_requests: u64,
}

/// How many workers a run starts: the requested concurrency, at least one, at most one per
/// request (extra workers would only sit idle).
pub fn worker_count(spec: &LoadSpec) -> usize {
    let most = match spec.extent {
        Extent::Requests(n) if spec.warmup.is_zero() => usize::try_from(n).unwrap_or(usize::MAX),
        _ => usize::MAX,
    };
    spec.concurrency.clamp(1, most.max(1))
}

/// Why the workers stop early (Ctrl-C has its own flag, the caller's); `RUNNING` while they go
/// on.
const RUNNING: u8 = 0;
const CIRCUIT_OPEN: u8 = 1;

/// Shared by the workers of one run.
struct Shared {
    spec: LoadSpec,
    start: Instant,
    measured_from: Instant,
    /// Schedule slots taken (open loop).
    ticks: AtomicU64,
    /// Measured requests started.
    measured: AtomicU64,
    warmup_requests: AtomicU64,
    recorders: ThreadRecorders,
    counters: Arc<LiveCounters>,
    cancel: Arc<AtomicBool>,
    stop: AtomicU8,
    running: AtomicUsize,
    all_done: Notify,
}

impl Shared {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed) != RUNNING || self.cancel.load(Ordering::Relaxed)
    }

    /// The next request to send, when to time it from, and whether it is measured; `None`
    /// when the run is over.
    async fn next_turn<R: Runtime>(&self) -> Option<(u64, Instant, bool)> {
        let scheduled = self.spec.rate.map(|rate| {
            let tick = self.ticks.fetch_add(1, Ordering::Relaxed);
            self.start + Duration::from_secs_f64(tick as f64 / rate)
        });
        let at = scheduled.unwrap_or_else(Instant::now);
        let measured = at >= self.measured_from;
        if let Extent::Duration(d) = self.spec.extent {
            if at >= self.measured_from + d {
                return None;
            }
        }
        let index = if measured {
            let i = self.measured.fetch_add(1, Ordering::Relaxed);
            if matches!(self.spec.extent, Extent::Requests(n) if i >= n) {
                return None;
            }
            i
        } else {
            self.warmup_requests.fetch_add(1, Ordering::Relaxed)
        };
        let from = match scheduled {
            Some(at) if at > Instant::now() => {
                R::sleep_until(at).await;
                Instant::now()
            }
            // Late (or closed loop): the wait since the schedule is part of the latency.
            Some(at) => at,
            None => Instant::now(),
        };
        (!self.stopped()).then_some((index, from, measured))
    }
}

/// Runs the load until its extent is reached, `cancel` is set (Ctrl-C) or the pool's circuit
/// breaker opens for the agent. `counters` follow the run live.
pub async fn run<R: Runtime>(
    pool: &AgentPool<R>,
    spec: &LoadSpec,
    counters: Arc<LiveCounters>,
    cancel: Arc<AtomicBool>,
) -> LoadResult {
    let workers = worker_count(spec);
    let start = Instant::now();
    let shared = Arc::new(Shared {
        spec: spec.clone(),
        start,
        measured_from: start + spec.warmup,
        ticks: AtomicU64::new(0),
        measured: AtomicU64::new(0),
        warmup_requests: AtomicU64::new(0),
        recorders: ThreadRecorders::new(),
        counters,
        cancel,
        stop: AtomicU8::new(RUNNING),
        running: AtomicUsize::new(workers),
        all_done: Notify::new(),
    });
    for _ in 0..workers {
        let pool = pool.clone();
        let shared = shared.clone();
        R::spawn(async move {
            while let Some((i, from, measured)) = shared.next_turn::<R>().await {
                worker_request(&pool, &shared, i, from, measured).await;
            }
            if shared.running.fetch_sub(1, Ordering::AcqRel) == 1 {
                // Stores a permit if nobody waits yet: the wake-up cannot be lost.
                shared.all_done.notify_one();
            }
        });
    }
    shared.all_done.notified().await;
    let elapsed = Instant::now().saturating_duration_since(shared.measured_from);
    let outcome = match shared.stop.load(Ordering::Relaxed) {
        CIRCUIT_OPEN => Outcome::CircuitOpen,
        _ if shared.cancel.load(Ordering::Relaxed) => Outcome::Interrupted,
        _ => Outcome::Completed,
    };
    LoadResult {
        recorder: shared.recorders.merge(),
        elapsed,
        outcome,
        warmup_requests: shared.warmup_requests.load(Ordering::Relaxed),
    }
}

async fn worker_request<R: Runtime>(
    pool: &AgentPool<R>,
    shared: &Shared,
    i: u64,
    from: Instant,
    measured: bool,
) {
    let spec = &shared.spec;
    let phase = if measured { "" } else { "warmup-" };
    let cid = format!("{}-{phase}{i}", spec.id_prefix);
    let request = spec.workload.request(i, &cid);
    let mut body_bytes = 0;
    let outcome = one_request(pool, spec, &cid, request, &mut body_bytes).await;
    let elapsed = from.elapsed();
    if let Err(e) = &outcome {
        if matches!(e, PoolError::CircuitOpen { .. }) {
            // Every request after this one would be refused in microseconds and counted as
            // served: stop and say why instead.
            let _ = shared.stop.compare_exchange(
                RUNNING,
                CIRCUIT_OPEN,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
    }
    if measured {
        shared.counters.done.fetch_add(1, Ordering::Relaxed);
        if outcome.is_err() {
            shared.counters.errors.fetch_add(1, Ordering::Relaxed);
        }
        shared.recorders.with(|rec| {
            rec.body_bytes += body_bytes;
            match &outcome {
                Ok(kind) => rec.ok(elapsed, kind),
                Err(e) => rec.err(e.kind(), || e.to_string()),
            }
        });
    }
}

/// Sends one request's headers and, unless already decided, its body chunks. The decision is
/// the first non-allow answer, or allow.
async fn one_request<R: Runtime>(
    pool: &AgentPool<R>,
    spec: &LoadSpec,
    cid: &str,
    request: Request,
    body_bytes: &mut u64,
) -> Result<&'static str, PoolError> {
    let agent = spec.agent_id.as_str();
    let headers = pool
        .send_event_with_timeout(agent, Event::RequestHeaders(request.headers), spec.timeout)
        .await?;
    let mut kind = headers.decision.kind();
    let mut result = Ok(());
    if matches!(headers.decision, Decision::Allow) {
        for chunk in request.body {
            *body_bytes += chunk.0.data.len() as u64;
            let event = Event::RequestBodyChunk(chunk);
            match pool
                .send_event_with_timeout(agent, event, spec.timeout)
                .await
            {
                Ok(r) => {
                    kind = r.decision.kind();
                    if !matches!(r.decision, Decision::Allow) {
                        break;
                    }
                }
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
    }
    // The request is over: its body stream no longer needs the connection that carried it.
    pool.clear_correlation_affinity(agent, cid);
    result.map(|()| kind)
}
