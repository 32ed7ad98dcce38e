//! [`LatencyHistogram`]: request latencies in fixed Prometheus buckets, recorded on atomics.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the latency histogram's finite buckets, in nanoseconds (integers, so recording
/// needs no floating point).
const BUCKET_BOUNDS_NANOS: [u64; 16] = [
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
];

/// Upper bounds of the latency histogram's finite buckets, in seconds (the `+Inf` bucket follows).
pub const LATENCY_BUCKETS_SECONDS: [f64; 16] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0,
];

/// A fixed-bucket latency histogram on atomics.
///
/// Each observation increments one (non-cumulative) slot and adds to the nanosecond sum;
/// [`snapshot`](Self::snapshot) turns the slots into cumulative Prometheus buckets and derives the
/// count from them, so a snapshot's `+Inf` bucket always equals its count even while other threads
/// record.
///
/// ```
/// use agent_protocol_core::metrics::LatencyHistogram;
/// use std::time::Duration;
///
/// let h = LatencyHistogram::new();
/// h.record(Duration::from_micros(30));
/// h.record(Duration::from_secs(60));
/// let s = h.snapshot();
/// assert_eq!(s.cumulative[0], 1); // le="0.00005"
/// assert_eq!(s.cumulative[16], 2); // le="+Inf"
/// assert_eq!(s.count, 2);
/// ```
#[derive(Debug, Default)]
pub struct LatencyHistogram {
    slots: [AtomicU64; 17],
    sum_nanos: AtomicU64,
}

/// A point-in-time copy of a [`LatencyHistogram`].
///
/// ```
/// use agent_protocol_core::metrics::LatencyHistogram;
/// let s = LatencyHistogram::new().snapshot();
/// assert_eq!((s.count, s.sum_seconds), (0, 0.0));
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HistogramSnapshot {
    /// Cumulative counts per bucket: 16 finite bounds ([`LATENCY_BUCKETS_SECONDS`]) then `+Inf`.
    pub cumulative: [u64; 17],
    /// Sum of all observations, in seconds.
    pub sum_seconds: f64,
    /// Number of observations (equal to the `+Inf` bucket).
    pub count: u64,
}

impl LatencyHistogram {
    /// An empty histogram.
    pub const fn new() -> Self {
        Self {
            slots: [const { AtomicU64::new(0) }; 17],
            sum_nanos: AtomicU64::new(0),
        }
    }

    /// Records one observation.
    pub fn record(&self, latency: Duration) {
        let nanos = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        // `le` is inclusive: a value equal to a bound belongs to that bucket.
        let slot = BUCKET_BOUNDS_NANOS.partition_point(|&bound| bound < nanos);
        if let Some(s) = self.slots.get(slot) {
            s.fetch_add(1, Ordering::Relaxed);
        }
        // Saturate rather than wrap: a wrapped sum would make the rate of _sum go negative.
        let _ = self
            .sum_nanos
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |s| {
                Some(s.saturating_add(nanos))
            });
    }

    /// Cumulative buckets, sum and count.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut cumulative = [0u64; 17];
        let mut running = 0u64;
        for (out, slot) in cumulative.iter_mut().zip(&self.slots) {
            running = running.saturating_add(slot.load(Ordering::Relaxed));
            *out = running;
        }
        HistogramSnapshot {
            cumulative,
            sum_seconds: self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9,
            count: running,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_bucket_edges_are_inclusive() {
        let h = LatencyHistogram::new();
        h.record(Duration::from_micros(50));
        h.record(Duration::from_nanos(50_001));
        h.record(Duration::from_secs(5));
        h.record(Duration::MAX);
        let s = h.snapshot();
        assert_eq!(s.cumulative[0], 1);
        assert_eq!(s.cumulative[1], 2);
        assert_eq!(s.cumulative[15], 3);
        assert_eq!(s.cumulative[16], 4);
        assert_eq!(s.count, 4);
        assert!(s.sum_seconds.is_finite());
        for (nanos, secs) in BUCKET_BOUNDS_NANOS.iter().zip(LATENCY_BUCKETS_SECONDS) {
            assert_eq!(Duration::from_nanos(*nanos), Duration::from_secs_f64(secs));
        }
    }
}
