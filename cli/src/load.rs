//! Closed-loop load through an [`AgentPool`] on any runtime: `concurrency` workers (tasks of
//! that runtime) each send the next request as soon as their previous one finished.
//!
//! Memory does not grow with the concurrency beyond a small per-task cost (the task's own
//! future): the workers share a [`ThreadRecorders`] (one latency histogram per OS thread that
//! ran any of them, merged at the end) instead of each keeping its own, and no more workers are
//! started than there are requests.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agent_protocol_core::{AgentResponse, Decision};
use agent_protocol_driver::pool::{AgentPool, PoolError};
use agent_protocol_driver::Runtime;
use tokio::sync::Notify;

use crate::report::{Recorder, ThreadRecorders};
use crate::workload::Mix;

/// A load run's parameters.
#[derive(Clone, Debug)]
pub struct LoadSpec {
    /// Agent to load.
    pub agent_id: String,
    /// Total requests.
    pub requests: u64,
    /// Workers.
    pub concurrency: usize,
    /// What the requests look like.
    pub mix: Mix,
    /// Per-event timeout.
    pub timeout: Duration,
    /// Prefix for correlation ids (unique per run).
    pub id_prefix: String,
}

fn decision_kind(r: &AgentResponse) -> &'static str {
    match r.decision {
        Decision::Allow => "allow",
        Decision::Block { .. } => "block",
        Decision::Redirect { .. } => "redirect",
        Decision::Challenge { .. } => "challenge",
    }
}

/// How many workers a run starts: the requested concurrency, at least one, at most one per
/// request (extra workers would only sit idle).
pub fn worker_count(spec: &LoadSpec) -> usize {
    let requests = usize::try_from(spec.requests).unwrap_or(usize::MAX);
    spec.concurrency.clamp(1, requests.max(1))
}

/// Runs the load; returns the merged recorder and the wall time. `progress` counts finished
/// requests.
pub async fn run<R: Runtime>(
    pool: &AgentPool<R>,
    spec: &LoadSpec,
    progress: Arc<AtomicU64>,
) -> (Recorder, Duration) {
    let workers = worker_count(spec);
    let spec = Arc::new(spec.clone());
    let next = Arc::new(AtomicU64::new(0));
    let recorders = Arc::new(ThreadRecorders::new());
    let running = Arc::new(AtomicUsize::new(workers));
    let all_done = Arc::new(Notify::new());
    let started = Instant::now();
    for _ in 0..workers {
        let pool = pool.clone();
        let spec = spec.clone();
        let next = next.clone();
        let progress = progress.clone();
        let recorders = recorders.clone();
        let running = running.clone();
        let all_done = all_done.clone();
        R::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= spec.requests {
                    break;
                }
                let cid = format!("{}-{i}", spec.id_prefix);
                let request = spec.mix.request(i, &cid);
                let t0 = Instant::now();
                let mut body_bytes = 0;
                let outcome = one_request(&pool, &spec, &cid, request, &mut body_bytes).await;
                let elapsed = t0.elapsed();
                recorders.with(|rec| {
                    rec.body_bytes += body_bytes;
                    match outcome {
                        Ok(kind) => rec.ok(elapsed, kind),
                        Err(e) => rec.err(elapsed, error_kind(&e)),
                    }
                });
                progress.fetch_add(1, Ordering::Relaxed);
            }
            if running.fetch_sub(1, Ordering::AcqRel) == 1 {
                // Stores a permit if nobody waits yet: the wake-up cannot be lost.
                all_done.notify_one();
            }
        });
    }
    all_done.notified().await;
    let elapsed = started.elapsed();
    (recorders.merge(), elapsed)
}

/// Sends one request's headers and, unless already decided, its body chunks. The decision is
/// the first non-allow answer, or allow.
async fn one_request<R: Runtime>(
    pool: &AgentPool<R>,
    spec: &LoadSpec,
    cid: &str,
    request: crate::workload::Request,
    body_bytes: &mut u64,
) -> Result<&'static str, PoolError> {
    let agent = spec.agent_id.as_str();
    let headers = pool
        .send_event_with_timeout(
            agent,
            agent_protocol_core::Event::RequestHeaders(request.headers),
            spec.timeout,
        )
        .await;
    let headers = match headers {
        Ok(r) => r,
        Err(e) => return Err(e),
    };
    let mut kind = decision_kind(&headers);
    if kind == "allow" {
        for chunk in request.body {
            *body_bytes += chunk.0.data.len() as u64;
            let r = pool
                .send_event_with_timeout(
                    agent,
                    agent_protocol_core::Event::RequestBodyChunk(chunk),
                    spec.timeout,
                )
                .await;
            match r {
                Ok(r) => {
                    kind = decision_kind(&r);
                    if kind != "allow" {
                        break;
                    }
                }
                Err(e) => {
                    pool.clear_correlation_affinity(agent, cid);
                    return Err(e);
                }
            }
        }
    }
    pool.clear_correlation_affinity(agent, cid);
    Ok(kind)
}

fn error_kind(e: &PoolError) -> String {
    let s = e.to_string();
    // Keep the kind, not the per-request detail (ids, durations).
    s.split([':', '(']).next().unwrap_or(&s).trim().to_owned()
}
