//! Closed-loop load through an [`AgentPool`] on any runtime: `concurrency` workers (tasks of
//! that runtime) each send the next request as soon as their previous one finished.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agent_protocol_core::{AgentResponse, Decision};
use agent_protocol_driver::pool::{AgentPool, PoolError};
use agent_protocol_driver::Runtime;

use crate::report::Recorder;
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

/// Runs the load; returns the merged recorder and the wall time. `progress` counts finished
/// requests.
pub async fn run<R: Runtime>(
    pool: &AgentPool<R>,
    spec: &LoadSpec,
    progress: Arc<AtomicU64>,
) -> (Recorder, Duration) {
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut workers = Vec::with_capacity(spec.concurrency.max(1));
    for _ in 0..spec.concurrency.max(1) {
        let pool = pool.clone();
        let spec = spec.clone();
        let next = next.clone();
        let progress = progress.clone();
        let (done, finished) = tokio::sync::oneshot::channel();
        workers.push(finished);
        R::spawn(async move {
            let mut rec = Recorder::default();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= spec.requests {
                    break;
                }
                let cid = format!("{}-{i}", spec.id_prefix);
                let request = spec.mix.request(i, &cid);
                let t0 = Instant::now();
                let outcome = one_request(&pool, &spec, &cid, request, &mut rec).await;
                let elapsed = t0.elapsed();
                match outcome {
                    Ok(kind) => rec.ok(elapsed, kind),
                    Err(e) => rec.err(elapsed, error_kind(&e)),
                }
                progress.fetch_add(1, Ordering::Relaxed);
            }
            let _ = done.send(rec);
        });
    }
    let mut total = Recorder::default();
    for finished in workers {
        if let Ok(r) = finished.await {
            total.merge(r);
        }
    }
    (total, started.elapsed())
}

/// Sends one request's headers and, unless already decided, its body chunks. The decision is
/// the first non-allow answer, or allow.
async fn one_request<R: Runtime>(
    pool: &AgentPool<R>,
    spec: &LoadSpec,
    cid: &str,
    request: crate::workload::Request,
    rec: &mut Recorder,
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
            rec.body_bytes += chunk.0.data.len() as u64;
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
