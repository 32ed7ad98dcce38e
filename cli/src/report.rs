//! Measuring runs: per-thread recorders merged at the end (no contended lock on the hot path,
//! and memory that does not grow with the number of workers), the run's [`Summary`], and its
//! text renderings (the demo's table, bench's report).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// What the workers of one run saw (or one thread's share of it).
///
/// Latency is kept for successful requests only: a failure that took 1 µs (refused locally)
/// or 5 s (timed out) says nothing about how fast the agent answers, and mixing them in is how
/// a load tool reports a broken run as a fast one. Failures are counted by their typed kind
/// ([`PoolError::kind`](agent_protocol_driver::pool::PoolError::kind)), with one full message
/// kept per kind as an example, so the counts add up and the memory stays bounded.
#[derive(Debug)]
pub struct Recorder {
    latency_us: Histogram<u64>,
    /// Requests answered by the agent.
    pub successes: u64,
    /// Answers by decision.
    pub decisions: BTreeMap<&'static str, u64>,
    /// Failed requests by kind: count and the first message seen.
    pub errors: BTreeMap<&'static str, (u64, String)>,
    /// Body bytes sent.
    pub body_bytes: u64,
}

impl Default for Recorder {
    fn default() -> Self {
        Self {
            // 1 us .. 1000 s at 3 significant digits.
            latency_us: Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
                .unwrap_or_else(|_| Histogram::new(3).expect("3 significant digits is valid")),
            successes: 0,
            decisions: BTreeMap::new(),
            errors: BTreeMap::new(),
            body_bytes: 0,
        }
    }
}

const MAX_LATENCY_US: u64 = 1_000_000_000;

impl Recorder {
    /// Records an answered request.
    pub fn ok(&mut self, latency: Duration, decision: &'static str) {
        self.successes += 1;
        *self.decisions.entry(decision).or_default() += 1;
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        let _ = self.latency_us.record(us.clamp(1, MAX_LATENCY_US));
    }

    /// Records a failed request of `kind`; `message` is only built for the first of a kind.
    pub fn err(&mut self, kind: &'static str, message: impl FnOnce() -> String) {
        self.errors.entry(kind).or_insert_with(|| (0, message())).0 += 1;
    }

    /// Failed requests.
    pub fn error_count(&self) -> u64 {
        self.errors.values().map(|(n, _)| n).sum()
    }

    /// Folds another recorder's numbers in.
    pub fn merge(&mut self, other: Recorder) {
        let _ = self.latency_us.add(&other.latency_us);
        self.successes += other.successes;
        self.body_bytes += other.body_bytes;
        for (k, v) in other.decisions {
            *self.decisions.entry(k).or_default() += v;
        }
        for (k, (n, example)) in other.errors {
            self.errors.entry(k).or_insert((0, example)).0 += n;
        }
    }

    /// The summary of a run that took `elapsed` and ended as `outcome`, after `planned`
    /// requests when it was given a number.
    pub fn summary(
        &self,
        name: &str,
        outcome: Outcome,
        elapsed: Duration,
        planned: Option<u64>,
    ) -> Summary {
        let secs = elapsed.as_secs_f64().max(1e-9);
        let errors = self.error_count();
        let requests = self.successes + errors;
        let h = &self.latency_us;
        let latency = (self.successes > 0).then(|| LatencyStats {
            mean: h.mean(),
            min: h.min(),
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p95: h.value_at_quantile(0.95),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        });
        Summary {
            name: name.to_owned(),
            outcome,
            elapsed_s: secs,
            planned,
            requests,
            successes: self.successes,
            errors,
            error_rate: if requests == 0 {
                0.0
            } else {
                errors as f64 / requests as f64
            },
            req_per_s: self.successes as f64 / secs,
            mib_per_s: (self.body_bytes > 0)
                .then(|| self.body_bytes as f64 / (1024.0 * 1024.0) / secs),
            latency_us: latency,
            histogram: self.buckets(10),
            decisions: self
                .decisions
                .iter()
                .map(|(k, v)| ((*k).to_owned(), *v))
                .collect(),
            error_kinds: self
                .errors
                .iter()
                .map(|(k, (n, _))| ((*k).to_owned(), *n))
                .collect(),
            error_examples: self
                .errors
                .iter()
                .map(|(k, (_, m))| ((*k).to_owned(), m.clone()))
                .collect(),
        }
    }

    /// Up to `count` log-spaced latency buckets from the fastest to the slowest success, each
    /// recorded value counted exactly once.
    fn buckets(&self, count: usize) -> Vec<Bucket> {
        let h = &self.latency_us;
        if self.successes == 0 {
            return Vec::new();
        }
        let (lo, hi) = (h.min().max(1) as f64, h.max().max(1) as f64);
        let mut edges: Vec<u64> = (1..=count)
            .map(|k| (lo * (hi / lo).powf(k as f64 / count as f64)).ceil() as u64)
            .collect();
        edges.dedup();
        if let Some(last) = edges.last_mut() {
            *last = (*last).max(h.max());
        }
        let mut buckets: Vec<Bucket> = edges
            .iter()
            .map(|&le| Bucket {
                le_us: le,
                count: 0,
            })
            .collect();
        for v in h.iter_recorded() {
            let value = h.highest_equivalent(v.value_iterated_to()).min(h.max());
            let i = edges.partition_point(|&e| e < value).min(buckets.len() - 1);
            buckets[i].count += v.count_since_last_iteration();
        }
        buckets
    }
}

/// How a run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Every planned request was sent (or the duration ran out).
    Completed,
    /// Stopped by Ctrl-C (or SIGTERM): the numbers cover what finished.
    Interrupted,
    /// Stopped because the pool's circuit breaker opened for the agent: it kept failing, and
    /// sending the rest would only count refusals.
    CircuitOpen,
}

impl Outcome {
    /// How the text report names it.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Completed => "completed",
            Self::Interrupted => "interrupted (partial results)",
            Self::CircuitOpen => "stopped: the circuit breaker opened (the agent kept failing)",
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
/// assert_eq!(total.successes, 5);
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

/// Latency statistics of the successful requests, in microseconds.
#[derive(Debug, Clone, Serialize)]
pub struct LatencyStats {
    /// Arithmetic mean.
    pub mean: f64,
    /// Fastest.
    pub min: u64,
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 95th percentile.
    pub p95: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Slowest.
    pub max: u64,
}

/// One histogram bucket: successes slower than the previous bucket's bound, up to `le_us`.
#[derive(Debug, Clone, Serialize)]
pub struct Bucket {
    /// Upper bound, microseconds (inclusive).
    pub le_us: u64,
    /// Successes in the bucket.
    pub count: u64,
}

/// A run's result: the `result` of `bench --output json`, a row of the demo's table.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// What ran (transport / encoding).
    pub name: String,
    /// How the run ended.
    pub outcome: Outcome,
    /// Wall time of the measured part (warm-up excluded).
    pub elapsed_s: f64,
    /// Requests the run meant to measure, when it was given a number; with an outcome other
    /// than `completed`, `planned - requests` were never sent.
    pub planned: Option<u64>,
    /// Requests that finished, successfully or not: `successes + errors`.
    pub requests: u64,
    /// Requests the agent answered.
    pub successes: u64,
    /// Requests that failed.
    pub errors: u64,
    /// `errors / requests`.
    pub error_rate: f64,
    /// Successful requests per second.
    pub req_per_s: f64,
    /// Body throughput of the run, when bodies were sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mib_per_s: Option<f64>,
    /// Latency of the successful requests; absent when none succeeded.
    pub latency_us: Option<LatencyStats>,
    /// Latency histogram of the successful requests.
    pub histogram: Vec<Bucket>,
    /// Answers by decision.
    pub decisions: BTreeMap<String, u64>,
    /// Failed requests by kind; the counts add up to `errors`.
    pub error_kinds: BTreeMap<String, u64>,
    /// One full error message per kind.
    pub error_examples: BTreeMap<String, String>,
}

/// A latency in microseconds with a unit that fits: `812 µs`, `1.68 ms`, `2.50 s`.
///
/// ```
/// use agentctl::report::human_us;
/// assert_eq!(human_us(812.0), "812 µs");
/// assert_eq!(human_us(1680.0), "1.68 ms");
/// assert_eq!(human_us(2_500_000.0), "2.50 s");
/// assert_eq!(human_us(7.25), "7.25 µs");
/// ```
pub fn human_us(us: f64) -> String {
    let (value, unit) = if us >= 1e6 {
        (us / 1e6, "s")
    } else if us >= 1e3 {
        (us / 1e3, "ms")
    } else {
        (us, "µs")
    };
    let digits = if value >= 100.0 {
        0
    } else if value >= 10.0 {
        1
    } else {
        2
    };
    format!("{value:.digits$} {unit}")
}

/// Prints summaries as a table, one row per run (the demo's output).
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
        "p50",
        "p99",
        "p99.9"
    )?;
    for s in rows {
        let allow = s.decisions.get("allow").copied().unwrap_or(0);
        let block = s.decisions.get("block").copied().unwrap_or(0);
        let other: u64 = s.decisions.values().sum::<u64>() - allow - block;
        let q = |f: fn(&LatencyStats) -> u64| {
            s.latency_us
                .as_ref()
                .map_or_else(|| "-".to_owned(), |l| human_us(f(l) as f64))
        };
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
            q(|l| l.p50),
            q(|l| l.p99),
            q(|l| l.p999)
        )?;
    }
    for s in rows {
        if s.outcome != Outcome::Completed {
            writeln!(out, "  {}: {}", s.name, s.outcome.describe())?;
        }
        for (kind, n) in &s.error_kinds {
            let example = s.error_examples.get(kind).map_or("", String::as_str);
            writeln!(out, "  {}: {n} x {kind} (e.g. {example})", s.name)?;
        }
    }
    Ok(())
}

/// Prints one run's result: outcome and counts, latency percentiles, the histogram, decisions
/// and errors by kind (the body of `bench`'s text output).
pub fn print_summary(out: &mut impl Write, s: &Summary) -> std::io::Result<()> {
    writeln!(out, "Summary")?;
    writeln!(out, "  outcome      {}", s.outcome.describe())?;
    writeln!(out, "  elapsed      {:.3} s", s.elapsed_s)?;
    let pct = |n: u64| {
        if s.requests == 0 {
            0.0
        } else {
            100.0 * n as f64 / s.requests as f64
        }
    };
    writeln!(
        out,
        "  successes    {} ({:.2}%)",
        s.successes,
        pct(s.successes)
    )?;
    writeln!(out, "  errors       {} ({:.2}%)", s.errors, pct(s.errors))?;
    if let Some(planned) = s.planned.filter(|&p| p > s.requests) {
        writeln!(
            out,
            "  not sent     {} of {planned} planned",
            planned - s.requests
        )?;
    }
    writeln!(
        out,
        "  throughput   {:.1} req/s (successful requests)",
        s.req_per_s
    )?;
    if let Some(m) = s.mib_per_s {
        writeln!(out, "  body         {m:.1} MiB/s")?;
    }
    writeln!(out)?;
    match &s.latency_us {
        None => writeln!(out, "Latency: no successful request")?,
        Some(l) => {
            writeln!(out, "Latency (successful requests)")?;
            writeln!(out, "  mean   {}", human_us(l.mean))?;
            for (name, v) in [
                ("p50", l.p50),
                ("p90", l.p90),
                ("p95", l.p95),
                ("p99", l.p99),
                ("p99.9", l.p999),
                ("max", l.max),
            ] {
                writeln!(out, "  {name:<6} {}", human_us(v as f64))?;
            }
            writeln!(out)?;
            writeln!(out, "Histogram")?;
            let most = s
                .histogram
                .iter()
                .map(|b| b.count)
                .max()
                .unwrap_or(1)
                .max(1);
            for b in &s.histogram {
                let bar = "■".repeat(((b.count * 40).div_ceil(most)) as usize);
                writeln!(
                    out,
                    "  {:>9} [{:>9}] {bar}",
                    human_us(b.le_us as f64),
                    b.count
                )?;
            }
        }
    }
    if !s.decisions.is_empty() {
        writeln!(out)?;
        writeln!(out, "Decisions")?;
        for (kind, n) in &s.decisions {
            writeln!(out, "  {kind:<12} {n}")?;
        }
    }
    if !s.error_kinds.is_empty() {
        writeln!(out)?;
        writeln!(out, "Errors by kind")?;
        for (kind, n) in &s.error_kinds {
            let example = s.error_examples.get(kind).map_or("", String::as_str);
            writeln!(out, "  {kind:<24} {n:>9}  e.g. {example}")?;
        }
    }
    Ok(())
}
