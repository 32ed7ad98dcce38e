//! Reconnection delays: exponential backoff with jitter, and a schedule that never gives up.
//!
//! The reference stops retrying an agent for good after `max_reconnect_attempts` failures in a
//! row; we keep retrying for as long as the agent is configured, so there is
//! no attempt limit here: the delay just stops growing at `max`.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::saturating_add;

/// Exponential backoff parameters.
///
/// The delay before retry number `attempt` (0-based) is `initial * multiplier^attempt`, capped at
/// `max`, then scaled by a random factor in `[1 - jitter, 1 + jitter)` so that many proxies losing
/// the same agent do not reconnect in lockstep. Out-of-range parameters are tolerated: a
/// multiplier below 1 (or NaN) is read as 1, jitter is clamped to `[0, 1]` (NaN reads as 0).
///
/// Built from [`Default`] and the `with_*` setters, which are `const` (fields may be added in any
/// release, so the struct cannot be built literally outside this crate); the fields stay public
/// to read and set.
///
/// ```
/// use agent_protocol_core::pool::Backoff;
/// use std::time::Duration;
///
/// let b = Backoff::default().with_jitter(0.0);
/// assert_eq!(b.delay(0, 0), Duration::from_millis(100));
/// assert_eq!(b.delay(3, 0), Duration::from_millis(800));
/// assert_eq!(b.delay(u32::MAX, 0), Duration::from_secs(30));
/// ```
///
/// Deserializes from a configuration section: keys left out keep their defaults, an unknown key
/// is an error, `initial` and `max` are strings such as `"100ms"` or `"30s"`. Out-of-range numbers
/// read from a file are tolerated as described above, as when they are set in code.
///
/// ```
/// use agent_protocol_core::pool::Backoff;
/// use std::time::Duration;
/// let b: Backoff = serde_json::from_str(r#"{"initial": "250ms", "jitter": 0}"#).unwrap();
/// assert_eq!(b.delay(1, 0), Duration::from_millis(500));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct Backoff {
    /// Delay before the first retry.
    #[serde(with = "humantime_serde")]
    pub initial: Duration,
    /// Largest delay before jitter.
    #[serde(with = "humantime_serde")]
    pub max: Duration,
    /// Growth factor per attempt.
    pub multiplier: f64,
    /// Relative jitter, 0.2 meaning ±20%.
    pub jitter: f64,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(30),
            multiplier: 2.0,
            jitter: 0.2,
        }
    }
}

impl Backoff {
    /// Sets [`initial`](Self::initial), the delay before the first retry.
    #[must_use]
    pub const fn with_initial(mut self, initial: Duration) -> Self {
        self.initial = initial;
        self
    }

    /// Sets [`max`](Self::max), the largest delay before jitter.
    #[must_use]
    pub const fn with_max(mut self, max: Duration) -> Self {
        self.max = max;
        self
    }

    /// Sets [`multiplier`](field@Self::multiplier), the growth factor per attempt.
    #[must_use]
    pub const fn with_multiplier(mut self, multiplier: f64) -> Self {
        self.multiplier = multiplier;
        self
    }

    /// Sets [`jitter`](field@Self::jitter), the relative jitter (0.2 meaning ±20%).
    #[must_use]
    pub const fn with_jitter(mut self, jitter: f64) -> Self {
        self.jitter = jitter;
        self
    }

    fn multiplier(&self) -> f64 {
        // NaN compares false, so it lands on 1.0 too.
        if self.multiplier >= 1.0 {
            self.multiplier
        } else {
            1.0
        }
    }

    fn jitter(&self) -> f64 {
        if self.jitter.is_nan() {
            0.0
        } else {
            self.jitter.clamp(0.0, 1.0)
        }
    }

    /// The delay for `attempt` before jitter: non-decreasing in `attempt`, at most `max`.
    pub fn base_delay(&self, attempt: u32) -> Duration {
        let initial = self.initial.min(self.max);
        let exponent = i32::try_from(attempt).unwrap_or(i32::MAX);
        let factor = self.multiplier().powi(exponent);
        let secs = initial.as_secs_f64() * factor;
        // Overflow to infinity (huge attempt counts) lands on the cap.
        Duration::try_from_secs_f64(secs)
            .map_or(self.max, |d| d.min(self.max))
            .max(initial)
    }

    /// The delay before retry number `attempt`, jittered by `random` (any `u64`, e.g. from the
    /// adapter's RNG). Always within `[0, max * (1 + jitter)]`; never panics.
    pub fn delay(&self, attempt: u32, random: u64) -> Duration {
        let base = self.base_delay(attempt);
        let jitter = self.jitter();
        if jitter == 0.0 {
            return base;
        }
        // A uniform value in [0, 1) from the top 53 bits, the precision of an f64 mantissa.
        let unit = (random >> 11) as f64 / (1u64 << 53) as f64;
        let factor = 1.0 + jitter * (2.0 * unit - 1.0);
        let upper = self.max.as_secs_f64() * (1.0 + jitter);
        let secs = (base.as_secs_f64() * factor).clamp(0.0, upper);
        Duration::try_from_secs_f64(secs).unwrap_or(base)
    }
}

/// Tracks reconnection attempts for one connection slot: when the next attempt is due.
///
/// ```
/// use agent_protocol_core::pool::{Backoff, ReconnectSchedule};
/// use std::time::{Duration, Instant};
///
/// let t0 = Instant::now();
/// let mut s = ReconnectSchedule::new(Backoff::default().with_jitter(0.0));
/// assert!(s.is_due(t0)); // nothing failed yet
/// let next = s.record_failure(t0, 0);
/// assert_eq!(next, t0 + Duration::from_millis(100));
/// assert!(!s.is_due(t0));
/// assert_eq!(s.record_failure(next, 0), next + Duration::from_millis(200));
/// s.record_success();
/// assert_eq!(s.failures(), 0);
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ReconnectSchedule {
    backoff: Backoff,
    failures: u32,
    next_attempt: Option<Instant>,
}

impl ReconnectSchedule {
    /// A schedule with no failures, so an attempt is due at once.
    pub fn new(backoff: Backoff) -> Self {
        Self {
            backoff,
            failures: 0,
            next_attempt: None,
        }
    }

    /// Consecutive failed attempts since the last success.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// When the next attempt is allowed, or `None` if it is allowed now.
    pub fn next_attempt(&self) -> Option<Instant> {
        self.next_attempt
    }

    /// Whether an attempt may be made at `now`.
    pub fn is_due(&self, now: Instant) -> bool {
        self.next_attempt.is_none_or(|t| now >= t)
    }

    /// Records a failed attempt at `now`; returns when the next one is due. There is no limit:
    /// the delay grows to the backoff's maximum and stays there.
    pub fn record_failure(&mut self, now: Instant, random: u64) -> Instant {
        let at = saturating_add(now, self.backoff.delay(self.failures, random));
        self.failures = self.failures.saturating_add(1);
        self.next_attempt = Some(at);
        at
    }

    /// Records a successful connection: the next failure starts from the initial delay again.
    pub fn record_success(&mut self) {
        self.failures = 0;
        self.next_attempt = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn default_sequence_doubles_to_cap() {
        let b = Backoff::default().with_jitter(0.0);
        let ms: Vec<u128> = (0..12).map(|a| b.delay(a, 0).as_millis()).collect();
        assert_eq!(
            ms,
            vec![100, 200, 400, 800, 1600, 3200, 6400, 12800, 25600, 30000, 30000, 30000]
        );
    }

    #[test]
    fn jitter_spans_both_sides() {
        let b = Backoff::default();
        assert_eq!(b.delay(0, 0), Duration::from_millis(80));
        let high = b.delay(0, u64::MAX);
        assert!(high > Duration::from_millis(119) && high <= Duration::from_millis(120));
    }

    #[test]
    fn degenerate_parameters() {
        let nan = Backoff {
            initial: Duration::from_secs(1),
            max: Duration::MAX,
            multiplier: f64::NAN,
            jitter: f64::NAN,
        };
        assert_eq!(nan.delay(1000, 5), Duration::from_secs(1));
        let huge = Backoff {
            initial: Duration::MAX,
            max: Duration::MAX,
            multiplier: f64::INFINITY,
            jitter: 5.0,
        };
        let _ = huge.delay(u32::MAX, u64::MAX);
        let zero = Backoff {
            initial: Duration::ZERO,
            max: Duration::ZERO,
            multiplier: 2.0,
            jitter: 0.5,
        };
        assert_eq!(zero.delay(10, 99), Duration::ZERO);
        let inverted = Backoff {
            initial: Duration::from_secs(10),
            max: Duration::from_secs(1),
            multiplier: 2.0,
            jitter: 0.0,
        };
        assert_eq!(inverted.delay(0, 0), Duration::from_secs(1));
    }

    #[test]
    fn deserializes_over_its_defaults() {
        let b: Backoff = serde_json::from_str(r#"{"max": "1m 30s", "multiplier": 3}"#).unwrap();
        assert_eq!(
            b,
            Backoff::default()
                .with_max(Duration::from_secs(90))
                .with_multiplier(3.0)
        );
        let err = serde_json::from_str::<Backoff>(r#"{"initial_delay": "1s"}"#).unwrap_err();
        assert!(
            err.to_string().contains("unknown field `initial_delay`"),
            "{err}"
        );
        assert!(serde_json::from_str::<Backoff>(r#"{"initial": 100}"#).is_err());
        let json = serde_json::to_value(b).unwrap();
        assert_eq!(json["max"], "1m 30s");
        assert_eq!(serde_json::from_value::<Backoff>(json).unwrap(), b);
    }

    #[test]
    fn schedule_never_gives_up() {
        let t0 = Instant::now();
        let mut s = ReconnectSchedule::new(Backoff::default());
        let mut now = t0;
        for i in 0..100u64 {
            now = s.record_failure(now, i.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            assert!(!s.is_due(now - Duration::from_nanos(1)));
            assert!(s.is_due(now));
        }
        assert_eq!(s.failures(), 100);
    }

    proptest! {
        #[test]
        fn delay_within_bounds(
            initial_ms in 0u64..100_000,
            max_ms in 0u64..1_000_000,
            multiplier in 0.0f64..10.0,
            jitter in 0.0f64..1.0,
            attempt in any::<u32>(),
            random in any::<u64>(),
        ) {
            let b = Backoff {
                initial: Duration::from_millis(initial_ms),
                max: Duration::from_millis(max_ms),
                multiplier,
                jitter,
            };
            let d = b.delay(attempt, random).as_secs_f64();
            let upper = b.max.as_secs_f64() * (1.0 + jitter);
            prop_assert!(d >= 0.0);
            prop_assert!(d <= upper + 1e-9, "{} > {}", d, upper);
            // The base never decreases with the attempt number.
            prop_assert!(b.base_delay(attempt) <= b.base_delay(attempt.saturating_add(1)));
            prop_assert!(b.base_delay(attempt) <= b.max);
            // Jitter stays within its band around the base.
            let base = b.base_delay(attempt).as_secs_f64();
            prop_assert!(d >= base * (1.0 - jitter) - 1e-9);
            prop_assert!(d <= base * (1.0 + jitter) + 1e-9);
        }
    }
}
