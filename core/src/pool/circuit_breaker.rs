//! A per-agent circuit breaker: stop sending to an agent that keeps failing, probe it after a
//! pause, and resume when probes succeed.
//!
//! The reference protocol crate has none; the reference proxy wraps agents in a breaker with the
//! defaults used here. This one is a plain value fed with outcomes and time, so the adapter keeps
//! it wherever it keeps per-agent state (typically behind the agent entry's own lock).

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::saturating_add;

/// Thresholds of a [`CircuitBreaker`].
///
/// Zero thresholds are treated as 1: a breaker that opens before any failure, closes before any
/// success, or admits no probe at all would never let the agent recover.
///
/// Built from [`Default`] and the `with_*` setters, which are `const` (fields may be added in any
/// release, so the struct cannot be built literally outside this crate); the fields stay public
/// to read and set.
///
/// ```
/// use agent_protocol_core::pool::CircuitBreakerConfig;
/// use std::time::Duration;
/// let c = CircuitBreakerConfig::default();
/// assert_eq!((c.failure_threshold, c.success_threshold, c.half_open_max_requests), (5, 2, 1));
/// assert_eq!(c.open_timeout, Duration::from_secs(30));
/// let config = CircuitBreakerConfig::default()
///     .with_failure_threshold(3)
///     .with_open_timeout(Duration::from_secs(5));
/// assert_eq!(config.failure_threshold, 3);
/// ```
///
/// Deserializes from a configuration section: keys left out keep their defaults, an unknown key
/// is an error, `open_timeout` is a string such as `"30s"`. A zero threshold read from a file is
/// accepted and treated as 1, exactly as when it is set in code.
///
/// ```
/// use agent_protocol_core::pool::CircuitBreakerConfig;
/// use std::time::Duration;
/// let c: CircuitBreakerConfig =
///     serde_json::from_str(r#"{"failure_threshold": 3, "open_timeout": "5s"}"#).unwrap();
/// assert_eq!(c, CircuitBreakerConfig::default()
///     .with_failure_threshold(3)
///     .with_open_timeout(Duration::from_secs(5)));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct CircuitBreakerConfig {
    /// Consecutive failures (while closed) that open the circuit.
    pub failure_threshold: u32,
    /// Successes while half-open that close the circuit.
    pub success_threshold: u32,
    /// How long the circuit stays open before it lets a probe through.
    #[serde(with = "humantime_serde")]
    pub open_timeout: Duration,
    /// Most probe requests in flight at once while half-open.
    pub half_open_max_requests: u32,
}

impl Default for CircuitBreakerConfig {
    fn default() -> Self {
        Self {
            failure_threshold: 5,
            success_threshold: 2,
            open_timeout: Duration::from_secs(30),
            half_open_max_requests: 1,
        }
    }
}

impl CircuitBreakerConfig {
    /// Sets [`failure_threshold`](Self::failure_threshold), the consecutive failures that open
    /// the circuit.
    #[must_use]
    pub const fn with_failure_threshold(mut self, failure_threshold: u32) -> Self {
        self.failure_threshold = failure_threshold;
        self
    }

    /// Sets [`success_threshold`](Self::success_threshold), the half-open successes that close
    /// the circuit.
    #[must_use]
    pub const fn with_success_threshold(mut self, success_threshold: u32) -> Self {
        self.success_threshold = success_threshold;
        self
    }

    /// Sets [`open_timeout`](Self::open_timeout), how long the circuit stays open before a probe.
    #[must_use]
    pub const fn with_open_timeout(mut self, open_timeout: Duration) -> Self {
        self.open_timeout = open_timeout;
        self
    }

    /// Sets [`half_open_max_requests`](Self::half_open_max_requests), the probes in flight at
    /// once while half-open.
    #[must_use]
    pub const fn with_half_open_max_requests(mut self, half_open_max_requests: u32) -> Self {
        self.half_open_max_requests = half_open_max_requests;
        self
    }
}

/// The externally visible state of a [`CircuitBreaker`].
///
/// ```
/// use agent_protocol_core::pool::{CircuitBreaker, CircuitState};
/// assert_eq!(CircuitBreaker::default().state(), CircuitState::Closed);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CircuitState {
    /// Requests flow; consecutive failures are counted.
    Closed,
    /// Requests are refused until the open timeout has passed.
    Open,
    /// A limited number of probe requests are let through.
    HalfOpen,
}

/// Returned by [`CircuitBreaker::try_acquire`] when the request must not be sent.
///
/// `retry_at` is when the breaker will next admit a probe. While half-open with every probe slot
/// taken, it is the time of the refused call: a slot frees as soon as a probe finishes, which has
/// no deadline the breaker knows.
///
/// ```
/// use agent_protocol_core::pool::{CircuitBreaker, CircuitBreakerConfig};
/// use std::time::{Duration, Instant};
/// let now = Instant::now();
/// let mut b = CircuitBreaker::new(CircuitBreakerConfig::default().with_failure_threshold(1));
/// b.record_failure(now);
/// let err = b.try_acquire(now).unwrap_err();
/// assert_eq!(err.retry_at, now + Duration::from_secs(30));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
#[error("circuit open")]
pub struct CircuitOpen {
    /// Earliest time a request may be admitted.
    pub retry_at: Instant,
}

/// Internal state, with the data each state needs and nothing else.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Inner {
    Closed { consecutive_failures: u32 },
    Open { retry_at: Instant },
    HalfOpen { in_flight: u32, successes: u32 },
}

/// What happened, with the time it happened where time matters; every transition is a response
/// to one of these.
#[derive(Clone, Copy, Debug)]
enum Event {
    Acquire(Instant),
    Success,
    Failure(Instant),
    Abandoned,
}

/// Closed / Open / HalfOpen circuit breaker with injected time.
///
/// - Closed → Open after `failure_threshold` consecutive failures.
/// - Open → HalfOpen on the first [`try_acquire`](Self::try_acquire) at or after the open timeout;
///   that call is admitted as the first probe.
/// - HalfOpen admits at most `half_open_max_requests` probes in flight; each outcome or
///   [`record_abandoned`](Self::record_abandoned) frees a slot.
/// - HalfOpen → Closed after `success_threshold` successes; any failure → Open again.
/// - Outcomes that arrive while Open (requests admitted before it opened) change nothing: the
///   circuit is already open and its timer should not be extended by stale news.
///
/// Callers report exactly one outcome (success, failure or abandoned) per admitted request.
///
/// ```
/// use agent_protocol_core::pool::{CircuitBreaker, CircuitBreakerConfig, CircuitState};
/// use std::time::{Duration, Instant};
///
/// let t0 = Instant::now();
/// let mut b = CircuitBreaker::new(CircuitBreakerConfig::default());
/// for _ in 0..5 {
///     b.try_acquire(t0).unwrap();
///     b.record_failure(t0);
/// }
/// assert_eq!(b.state(), CircuitState::Open);
/// assert!(b.try_acquire(t0).is_err());
///
/// let later = t0 + Duration::from_secs(30);
/// b.try_acquire(later).unwrap(); // the probe
/// assert_eq!(b.state(), CircuitState::HalfOpen);
/// assert!(b.try_acquire(later).is_err()); // one probe at a time
/// b.record_success(later);
/// b.try_acquire(later).unwrap();
/// b.record_success(later);
/// assert_eq!(b.state(), CircuitState::Closed);
/// ```
#[derive(Clone, Debug)]
pub struct CircuitBreaker {
    config: CircuitBreakerConfig,
    inner: Inner,
}

impl Default for CircuitBreaker {
    fn default() -> Self {
        Self::new(CircuitBreakerConfig::default())
    }
}

impl CircuitBreaker {
    /// A closed breaker with the given thresholds.
    pub fn new(config: CircuitBreakerConfig) -> Self {
        Self {
            config,
            inner: Inner::Closed {
                consecutive_failures: 0,
            },
        }
    }

    /// The thresholds this breaker was built with.
    pub fn config(&self) -> &CircuitBreakerConfig {
        &self.config
    }

    /// The current state. An open breaker whose timeout has passed still reads `Open` until the
    /// next [`try_acquire`](Self::try_acquire) turns it half-open.
    pub fn state(&self) -> CircuitState {
        match self.inner {
            Inner::Closed { .. } => CircuitState::Closed,
            Inner::Open { .. } => CircuitState::Open,
            Inner::HalfOpen { .. } => CircuitState::HalfOpen,
        }
    }

    /// Probes currently admitted while half-open (0 in the other states).
    pub fn half_open_in_flight(&self) -> u32 {
        match self.inner {
            Inner::HalfOpen { in_flight, .. } => in_flight,
            _ => 0,
        }
    }

    /// Asks to send one request at `now`. On `Ok` the caller must later report its outcome with
    /// [`record_success`](Self::record_success), [`record_failure`](Self::record_failure) or
    /// [`record_abandoned`](Self::record_abandoned).
    pub fn try_acquire(&mut self, now: Instant) -> Result<(), CircuitOpen> {
        self.transition(Event::Acquire(now))
    }

    /// Reports that an admitted request succeeded. `now` is accepted for symmetry with the other
    /// calls; a success never starts a timer.
    pub fn record_success(&mut self, now: Instant) {
        let _ = now;
        // Outcomes are never refused; only Acquire can fail.
        let _ = self.transition(Event::Success);
    }

    /// Reports that an admitted request failed (timeout, connection error, protocol error).
    pub fn record_failure(&mut self, now: Instant) {
        let _ = self.transition(Event::Failure(now));
    }

    /// Reports that an admitted request ended with neither success nor failure (for example it
    /// was cancelled by the client): it frees its half-open slot without counting either way.
    pub fn record_abandoned(&mut self) {
        let _ = self.transition(Event::Abandoned);
    }

    /// The whole transition table in one match, so it can be read (and reviewed) in one place.
    fn transition(&mut self, event: Event) -> Result<(), CircuitOpen> {
        let failure_threshold = self.config.failure_threshold.max(1);
        let success_threshold = self.config.success_threshold.max(1);
        let half_open_max = self.config.half_open_max_requests.max(1);
        let open_timeout = self.config.open_timeout;
        let open = |now: Instant| Inner::Open {
            retry_at: saturating_add(now, open_timeout),
        };
        let closed = Inner::Closed {
            consecutive_failures: 0,
        };

        let (next, result) = match (self.inner, event) {
            // Closed: admit everything, count consecutive failures.
            (state @ Inner::Closed { .. }, Event::Acquire(_) | Event::Abandoned) => (state, Ok(())),
            (Inner::Closed { .. }, Event::Success) => (closed, Ok(())),
            (
                Inner::Closed {
                    consecutive_failures,
                },
                Event::Failure(now),
            ) => {
                let failures = consecutive_failures.saturating_add(1);
                if failures >= failure_threshold {
                    (open(now), Ok(()))
                } else {
                    (
                        Inner::Closed {
                            consecutive_failures: failures,
                        },
                        Ok(()),
                    )
                }
            }

            // Open: refuse until the timeout, then let the first caller through as a probe.
            (Inner::Open { retry_at }, Event::Acquire(now)) if now >= retry_at => (
                Inner::HalfOpen {
                    in_flight: 1,
                    successes: 0,
                },
                Ok(()),
            ),
            (state @ Inner::Open { retry_at }, Event::Acquire(_)) => {
                (state, Err(CircuitOpen { retry_at }))
            }
            (state @ Inner::Open { .. }, Event::Success | Event::Failure(_) | Event::Abandoned) => {
                (state, Ok(()))
            }

            // HalfOpen: a bounded number of probes; enough successes close, any failure reopens.
            (
                Inner::HalfOpen {
                    in_flight,
                    successes,
                },
                Event::Acquire(_),
            ) if in_flight < half_open_max => (
                Inner::HalfOpen {
                    in_flight: in_flight + 1,
                    successes,
                },
                Ok(()),
            ),
            (state @ Inner::HalfOpen { .. }, Event::Acquire(now)) => {
                (state, Err(CircuitOpen { retry_at: now }))
            }
            (
                Inner::HalfOpen {
                    in_flight,
                    successes,
                },
                Event::Success,
            ) => {
                let successes = successes.saturating_add(1);
                if successes >= success_threshold {
                    (closed, Ok(()))
                } else {
                    let in_flight = in_flight.saturating_sub(1);
                    (
                        Inner::HalfOpen {
                            in_flight,
                            successes,
                        },
                        Ok(()),
                    )
                }
            }
            (Inner::HalfOpen { .. }, Event::Failure(now)) => (open(now), Ok(())),
            (
                Inner::HalfOpen {
                    in_flight,
                    successes,
                },
                Event::Abandoned,
            ) => {
                let in_flight = in_flight.saturating_sub(1);
                (
                    Inner::HalfOpen {
                        in_flight,
                        successes,
                    },
                    Ok(()),
                )
            }
        };
        self.inner = next;
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cfg(failures: u32, successes: u32, probes: u32) -> CircuitBreakerConfig {
        CircuitBreakerConfig {
            failure_threshold: failures,
            success_threshold: successes,
            open_timeout: Duration::from_secs(10),
            half_open_max_requests: probes,
        }
    }

    #[test]
    fn success_resets_consecutive_failures() {
        let t = Instant::now();
        let mut b = CircuitBreaker::new(cfg(3, 1, 1));
        b.record_failure(t);
        b.record_failure(t);
        b.record_success(t);
        b.record_failure(t);
        b.record_failure(t);
        assert_eq!(b.state(), CircuitState::Closed);
        b.record_failure(t);
        assert_eq!(b.state(), CircuitState::Open);
    }

    #[test]
    fn half_open_failure_reopens_with_new_timer() {
        let t = Instant::now();
        let mut b = CircuitBreaker::new(cfg(1, 2, 1));
        b.record_failure(t);
        let t1 = t + Duration::from_secs(10);
        assert_eq!(
            b.try_acquire(t1 - Duration::from_millis(1)),
            Err(CircuitOpen { retry_at: t1 })
        );
        b.try_acquire(t1).unwrap();
        b.record_failure(t1);
        assert_eq!(b.state(), CircuitState::Open);
        assert_eq!(
            b.try_acquire(t1),
            Err(CircuitOpen {
                retry_at: t1 + Duration::from_secs(10)
            })
        );
    }

    #[test]
    fn abandoned_probe_frees_its_slot() {
        let t = Instant::now();
        let mut b = CircuitBreaker::new(cfg(1, 1, 1));
        b.record_failure(t);
        let t1 = t + Duration::from_secs(10);
        b.try_acquire(t1).unwrap();
        assert!(b.try_acquire(t1).is_err());
        b.record_abandoned();
        assert_eq!(b.state(), CircuitState::HalfOpen);
        b.try_acquire(t1).unwrap();
        b.record_success(t1);
        assert_eq!(b.state(), CircuitState::Closed);
    }

    #[test]
    fn late_outcomes_while_open_change_nothing() {
        let t = Instant::now();
        let mut b = CircuitBreaker::new(cfg(1, 1, 1));
        b.record_failure(t);
        b.record_failure(t + Duration::from_secs(5)); // must not push the timer out
        b.record_success(t);
        b.record_abandoned();
        assert_eq!(
            b.try_acquire(t),
            Err(CircuitOpen {
                retry_at: t + Duration::from_secs(10)
            })
        );
    }

    #[test]
    fn config_deserializes_over_its_defaults() {
        let c: CircuitBreakerConfig =
            serde_json::from_str(r#"{"success_threshold": 4, "open_timeout": "250ms"}"#).unwrap();
        assert_eq!(
            c,
            CircuitBreakerConfig::default()
                .with_success_threshold(4)
                .with_open_timeout(Duration::from_millis(250))
        );
        let err = serde_json::from_str::<CircuitBreakerConfig>(r#"{"failures": 1}"#).unwrap_err();
        assert!(
            err.to_string().contains("unknown field `failures`"),
            "{err}"
        );
        assert!(serde_json::from_str::<CircuitBreakerConfig>(r#"{"open_timeout": 30}"#).is_err());
        let json = serde_json::to_value(c).unwrap();
        assert_eq!(json["open_timeout"], "250ms");
        assert_eq!(
            serde_json::from_value::<CircuitBreakerConfig>(json).unwrap(),
            c
        );
    }

    #[test]
    fn zero_thresholds_and_huge_timeout_do_not_panic() {
        let t = Instant::now();
        let mut b = CircuitBreaker::new(CircuitBreakerConfig {
            failure_threshold: 0,
            success_threshold: 0,
            open_timeout: Duration::MAX,
            half_open_max_requests: 0,
        });
        b.record_failure(t);
        assert_eq!(b.state(), CircuitState::Open);
        assert!(b.try_acquire(t).is_err());
    }

    #[derive(Clone, Copy, Debug)]
    enum Op {
        Acquire(u64),
        Success(u64),
        Failure(u64),
        Abandon,
    }

    fn arb_op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u64..8).prop_map(Op::Acquire),
            (0u64..8).prop_map(Op::Success),
            (0u64..8).prop_map(Op::Failure),
            Just(Op::Abandon),
        ]
    }

    /// An independent model of the transition table, in terms of observable state only.
    #[derive(Debug)]
    struct Model {
        state: CircuitState,
        failures: u32,
        successes: u32,
        probes: u32,
        open_until: u64,
    }

    proptest! {
        #[test]
        fn follows_transition_table(
            ops in proptest::collection::vec(arb_op(), 0..200),
            failure_threshold in 1u32..5,
            success_threshold in 1u32..4,
            max_probes in 1u32..4,
        ) {
            let base = Instant::now();
            let timeout = 5u64;
            let mut b = CircuitBreaker::new(CircuitBreakerConfig {
                failure_threshold,
                success_threshold,
                open_timeout: Duration::from_secs(timeout),
                half_open_max_requests: max_probes,
            });
            let mut m = Model { state: CircuitState::Closed, failures: 0, successes: 0, probes: 0, open_until: 0 };
            // Time only moves forward, as a real clock does.
            let mut clock = 0u64;
            for op in ops {
                let result = match op {
                    Op::Acquire(dt) => {
                        clock += dt;
                        let now = base + Duration::from_secs(clock);
                        let r = b.try_acquire(now);
                        let expect_ok = match m.state {
                            CircuitState::Closed => true,
                            CircuitState::Open if clock >= m.open_until => {
                                m.state = CircuitState::HalfOpen;
                                m.probes = 1;
                                m.successes = 0;
                                true
                            }
                            CircuitState::Open => false,
                            CircuitState::HalfOpen if m.probes < max_probes => {
                                m.probes += 1;
                                true
                            }
                            CircuitState::HalfOpen => false,
                        };
                        prop_assert_eq!(r.is_ok(), expect_ok);
                        if let Err(e) = r {
                            prop_assert!(e.retry_at >= now || m.state == CircuitState::Open);
                        }
                        r.is_ok()
                    }
                    Op::Success(dt) => {
                        clock += dt;
                        b.record_success(base + Duration::from_secs(clock));
                        match m.state {
                            CircuitState::Closed => m.failures = 0,
                            CircuitState::Open => {}
                            CircuitState::HalfOpen => {
                                m.successes += 1;
                                m.probes = m.probes.saturating_sub(1);
                                if m.successes >= success_threshold {
                                    m.state = CircuitState::Closed;
                                    m.failures = 0;
                                }
                            }
                        }
                        true
                    }
                    Op::Failure(dt) => {
                        clock += dt;
                        b.record_failure(base + Duration::from_secs(clock));
                        match m.state {
                            CircuitState::Closed => {
                                m.failures += 1;
                                if m.failures >= failure_threshold {
                                    m.state = CircuitState::Open;
                                    m.open_until = clock + timeout;
                                }
                            }
                            CircuitState::Open => {}
                            CircuitState::HalfOpen => {
                                m.state = CircuitState::Open;
                                m.open_until = clock + timeout;
                            }
                        }
                        true
                    }
                    Op::Abandon => {
                        b.record_abandoned();
                        if m.state == CircuitState::HalfOpen {
                            m.probes = m.probes.saturating_sub(1);
                        }
                        true
                    }
                };
                let _ = result;
                prop_assert_eq!(b.state(), m.state);
                // The admission limit: never more probes outstanding than configured.
                prop_assert!(b.half_open_in_flight() <= max_probes);
                if m.state == CircuitState::HalfOpen {
                    prop_assert_eq!(b.half_open_in_flight(), m.probes);
                }
            }
        }
    }
}
