//! Measuring runs: per-thread recorders merged at the end (no contended lock on the hot path,
//! and memory that does not grow with the number of workers), a progress bar on a terminal,
//! and the result table / JSON.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// What one worker saw.
#[derive(Debug)]
pub struct Recorder {
    latency_us: Histogram<u64>,
    /// Requests completed (answered or failed).
    pub requests: u64,
    /// Requests that failed.
    pub errors: u64,
    /// Decisions by kind.
    pub decisions: BTreeMap<&'static str, u64>,
    /// Errors by message (first few kinds).
    pub error_kinds: BTreeMap<String, u64>,
    /// Body bytes sent.
    pub body_bytes: u64,
}

impl Default for Recorder {
    fn default() -> Self {
        Self {
            // 1 us .. 100 s at 3 significant digits.
            latency_us: Histogram::new_with_bounds(1, 100_000_000, 3)
                .unwrap_or_else(|_| Histogram::new(3).expect("3 significant digits is valid")),
            requests: 0,
            errors: 0,
            decisions: BTreeMap::new(),
            error_kinds: BTreeMap::new(),
            body_bytes: 0,
        }
    }
}

impl Recorder {
    /// Records an answered request.
    pub fn ok(&mut self, latency: Duration, decision: &'static str) {
        self.requests += 1;
        *self.decisions.entry(decision).or_default() += 1;
        self.record_latency(latency);
    }

    /// Records a failed request.
    pub fn err(&mut self, latency: Duration, what: String) {
        self.requests += 1;
        self.errors += 1;
        if self.error_kinds.len() < 16 || self.error_kinds.contains_key(&what) {
            *self.error_kinds.entry(what).or_default() += 1;
        }
        self.record_latency(latency);
    }

    fn record_latency(&mut self, latency: Duration) {
        let us = (latency.as_micros() as u64).clamp(1, 100_000_000);
        let _ = self.latency_us.record(us);
    }

    /// Folds another worker's numbers in.
    pub fn merge(&mut self, other: Recorder) {
        let _ = self.latency_us.add(&other.latency_us);
        self.requests += other.requests;
        self.errors += other.errors;
        self.body_bytes += other.body_bytes;
        for (k, v) in other.decisions {
            *self.decisions.entry(k).or_default() += v;
        }
        for (k, v) in other.error_kinds {
            *self.error_kinds.entry(k).or_default() += v;
        }
    }

    /// The summary of a run that took `elapsed`.
    pub fn summary(&self, name: &str, elapsed: Duration) -> Summary {
        let secs = elapsed.as_secs_f64().max(1e-9);
        let q = |p: f64| self.latency_us.value_at_quantile(p);
        Summary {
            name: name.to_owned(),
            requests: self.requests,
            errors: self.errors,
            seconds: secs,
            req_per_s: self.requests as f64 / secs,
            p50_us: q(0.50),
            p99_us: q(0.99),
            p999_us: q(0.999),
            max_us: self.latency_us.max(),
            mib_per_s: (self.body_bytes > 0)
                .then(|| self.body_bytes as f64 / (1024.0 * 1024.0) / secs),
            decisions: self
                .decisions
                .iter()
                .map(|(k, v)| ((*k).to_owned(), *v))
                .collect(),
            error_kinds: self.error_kinds.clone(),
        }
    }
}

/// The recorders of one run's workers, one per OS thread that ran any of them: a worker
/// records into the recorder of the thread it is on at that moment, so tens of thousands of
/// workers cost as many latency histograms (~150 KiB each) as the runtime has threads, not one
/// each. Each recorder is only ever locked by its own thread until [`ThreadRecorders::merge`],
/// so the lock is never contended during the run.
///
/// ```
/// use std::time::Duration;
/// use agentctl::report::ThreadRecorders;
/// let recorders = ThreadRecorders::new();
/// std::thread::scope(|s| {
///     for _ in 0..4 {
///         s.spawn(|| recorders.with(|r| r.ok(Duration::from_micros(50), "allow")));
///     }
/// });
/// recorders.with(|r| r.ok(Duration::from_micros(70), "block"));
/// assert_eq!(recorders.threads(), 5);
/// let total = recorders.merge();
/// assert_eq!(total.requests, 5);
/// assert_eq!(total.decisions["allow"], 4);
/// ```
#[derive(Debug)]
pub struct ThreadRecorders {
    /// Tells this run's recorders apart from other runs' in a thread's list.
    run: u64,
    all: Mutex<Vec<Arc<Mutex<Recorder>>>>,
}

thread_local! {
    /// This thread's recorder of each live run. Weak, so a finished run's histograms go with
    /// its `merge` rather than staying with every thread that ever ran one of its workers.
    static LOCAL: RefCell<Vec<(u64, Weak<Mutex<Recorder>>)>> = const { RefCell::new(Vec::new()) };
}

impl Default for ThreadRecorders {
    fn default() -> Self {
        Self::new()
    }
}

impl ThreadRecorders {
    /// No recorders yet; each thread gets one the first time it records.
    pub fn new() -> Self {
        static NEXT_RUN: AtomicU64 = AtomicU64::new(0);
        Self {
            run: NEXT_RUN.fetch_add(1, Ordering::Relaxed),
            all: Mutex::new(Vec::new()),
        }
    }

    /// Runs `f` on the calling thread's recorder. Do not call it again from inside `f`.
    pub fn with<T>(&self, f: impl FnOnce(&mut Recorder) -> T) -> T {
        let mine = LOCAL.with(|local| {
            let mut local = local.borrow_mut();
            let found = local
                .iter()
                .find(|(run, _)| *run == self.run)
                .and_then(|(_, weak)| weak.upgrade());
            found.unwrap_or_else(|| {
                local.retain(|(_, weak)| weak.strong_count() > 0);
                let fresh = Arc::new(Mutex::new(Recorder::default()));
                lock(&self.all).push(fresh.clone());
                local.push((self.run, Arc::downgrade(&fresh)));
                fresh
            })
        });
        let mut recorder = lock(&mine);
        f(&mut recorder)
    }

    /// Threads that have recorded so far (the number of histograms held).
    pub fn threads(&self) -> usize {
        lock(&self.all).len()
    }

    /// Everything recorded, folded into one recorder. Call once the workers are done: the
    /// per-thread recorders are taken out (and freed), so a later `with` starts afresh.
    pub fn merge(&self) -> Recorder {
        let all = std::mem::take(&mut *lock(&self.all));
        let mut total = Recorder::default();
        for recorder in all {
            let taken = match Arc::try_unwrap(recorder) {
                Ok(alone) => alone.into_inner().unwrap_or_else(PoisonError::into_inner),
                // A worker still holds it (merge called early): copy its numbers out.
                Err(shared) => std::mem::take(&mut *lock(&shared)),
            };
            total.merge(taken);
        }
        total
    }
}

/// A recorder is plain counters: a panic while one was held cannot leave it half-updated in a
/// way that matters, so poisoning is ignored.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A run's result, also the `--json` output of `bench`.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// What ran (transport / encoding).
    pub name: String,
    /// Requests completed.
    pub requests: u64,
    /// Requests failed.
    pub errors: u64,
    /// Wall time.
    pub seconds: f64,
    /// Throughput.
    pub req_per_s: f64,
    /// Median latency.
    pub p50_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// 99.9th percentile.
    pub p999_us: u64,
    /// Worst.
    pub max_us: u64,
    /// Body throughput, when bodies were sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mib_per_s: Option<f64>,
    /// Decisions by kind.
    pub decisions: BTreeMap<String, u64>,
    /// Errors by kind.
    pub error_kinds: BTreeMap<String, u64>,
}

/// Prints summaries as a table.
pub fn print_table(out: &mut impl Write, rows: &[Summary]) -> std::io::Result<()> {
    writeln!(
        out,
        "{:<22} {:>9} {:>7} {:>9} {:>8} {:>9} {:>10} {:>10} {:>10} {:>10}",
        "transport",
        "requests",
        "errors",
        "allow",
        "block",
        "other",
        "req/s",
        "p50 us",
        "p99 us",
        "p99.9 us"
    )?;
    for s in rows {
        let allow = s.decisions.get("allow").copied().unwrap_or(0);
        let block = s.decisions.get("block").copied().unwrap_or(0);
        let other: u64 = s.decisions.values().sum::<u64>() - allow - block;
        writeln!(
            out,
            "{:<22} {:>9} {:>7} {:>9} {:>8} {:>9} {:>10.0} {:>10} {:>10} {:>10}",
            s.name,
            s.requests,
            s.errors,
            allow,
            block,
            other,
            s.req_per_s,
            s.p50_us,
            s.p99_us,
            s.p999_us
        )?;
    }
    for s in rows {
        for (k, v) in &s.error_kinds {
            writeln!(out, "  {}: {v} x {k}", s.name)?;
        }
    }
    Ok(())
}

/// A progress bar on stderr, drawn only when stderr is a terminal.
pub struct Progress {
    done: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Progress {
    /// Starts drawing `label` with `total` steps.
    pub fn start(label: String, total: u64) -> Self {
        let done = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let task = std::io::stderr().is_terminal().then(|| {
            let done = done.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                loop {
                    let d = done.load(Ordering::Relaxed).min(total);
                    let width = 30usize;
                    let filled = (d * width as u64).checked_div(total).unwrap_or(0) as usize;
                    eprint!(
                        "\r{label:<22} [{}{}] {d}/{total}",
                        "#".repeat(filled),
                        ".".repeat(width - filled)
                    );
                    if stop.load(Ordering::Relaxed) {
                        eprintln!();
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            })
        });
        Self { done, stop, task }
    }

    /// The counter workers bump.
    pub fn counter(&self) -> Arc<AtomicU64> {
        self.done.clone()
    }

    /// Draws the final state and stops.
    pub async fn finish(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}
