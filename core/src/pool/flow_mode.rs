//! What the pool does with a request when every usable connection of the agent is paused by the
//! agent's flow control: fail closed, fail open, or wait for a resume up to a bound.
//!
//! The decision is a pure function of the configured mode and two instants; the adapter does the
//! waiting (on a resume notification or the deadline), then asks again.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::saturating_add;

/// The configured reaction to backpressure.
///
/// ```
/// use agent_protocol_core::pool::FlowControlMode;
/// assert_eq!(FlowControlMode::default(), FlowControlMode::FailClosed);
/// let m: FlowControlMode = serde_json::from_str("\"wait_and_retry\"").unwrap();
/// assert_eq!(m, FlowControlMode::WaitAndRetry);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FlowControlMode {
    /// Fail the request with a flow-control error (safe default: nothing passes unchecked).
    #[default]
    FailClosed,
    /// Let the request through without consulting the agent.
    FailOpen,
    /// Wait up to [`FlowControlPolicy::max_wait`] from submission for a resume, then fail closed.
    WaitAndRetry,
}

/// What to do with one request that found the agent paused.
///
/// ```
/// use agent_protocol_core::pool::{FlowControlPolicy, FlowDecision};
/// use std::time::Instant;
/// let now = Instant::now();
/// assert_eq!(FlowControlPolicy::default().on_paused(now, now), FlowDecision::Reject);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FlowDecision {
    /// Fail the request with a flow-control error.
    Reject,
    /// Treat the request as allowed without sending it to the agent.
    AllowWithoutAgent,
    /// Wait for a resume, but not past this instant; then call
    /// [`FlowControlPolicy::on_paused`] again if still paused.
    WaitUntil(Instant),
}

/// Flow-control mode plus its wait bound.
///
/// Built from [`Default`] and the `with_*` setters, which are `const` (fields may be added in any
/// release, so the struct cannot be built literally outside this crate); the fields stay public
/// to read and set.
///
/// ```
/// use agent_protocol_core::pool::{FlowControlMode, FlowControlPolicy, FlowDecision};
/// use std::time::{Duration, Instant};
///
/// let policy = FlowControlPolicy::default().with_mode(FlowControlMode::WaitAndRetry);
/// let submitted = Instant::now();
/// let deadline = submitted + Duration::from_millis(100);
/// assert_eq!(policy.on_paused(submitted, submitted), FlowDecision::WaitUntil(deadline));
/// assert_eq!(policy.on_paused(submitted, deadline), FlowDecision::Reject);
/// ```
///
/// Deserializes from a configuration section: keys left out keep their defaults, an unknown key
/// is an error, `max_wait` is a string such as `"100ms"`. Every value is valid.
///
/// ```
/// use agent_protocol_core::pool::{FlowControlMode, FlowControlPolicy};
/// let p: FlowControlPolicy =
///     serde_json::from_str(r#"{"mode": "wait_and_retry", "max_wait": "250ms"}"#).unwrap();
/// assert_eq!(p.mode, FlowControlMode::WaitAndRetry);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct FlowControlPolicy {
    /// The reaction to backpressure.
    pub mode: FlowControlMode,
    /// For [`FlowControlMode::WaitAndRetry`]: longest wait, counted from when the caller submitted
    /// the request (queueing included, as every request timeout in this protocol).
    #[serde(with = "humantime_serde")]
    pub max_wait: Duration,
}

impl Default for FlowControlPolicy {
    fn default() -> Self {
        Self {
            mode: FlowControlMode::FailClosed,
            max_wait: Duration::from_millis(100),
        }
    }
}

impl FlowControlPolicy {
    /// Sets [`mode`](Self::mode), the reaction to backpressure.
    #[must_use]
    pub const fn with_mode(mut self, mode: FlowControlMode) -> Self {
        self.mode = mode;
        self
    }

    /// Sets [`max_wait`](Self::max_wait), the longest wait of
    /// [`FlowControlMode::WaitAndRetry`].
    #[must_use]
    pub const fn with_max_wait(mut self, max_wait: Duration) -> Self {
        self.max_wait = max_wait;
        self
    }

    /// The decision for a request submitted at `submitted_at` that finds the agent paused at
    /// `now`.
    pub fn on_paused(&self, submitted_at: Instant, now: Instant) -> FlowDecision {
        match self.mode {
            FlowControlMode::FailClosed => FlowDecision::Reject,
            FlowControlMode::FailOpen => FlowDecision::AllowWithoutAgent,
            FlowControlMode::WaitAndRetry => {
                let deadline = saturating_add(submitted_at, self.max_wait);
                if now >= deadline {
                    FlowDecision::Reject
                } else {
                    FlowDecision::WaitUntil(deadline)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_mode() {
        let t = Instant::now();
        let later = t + Duration::from_millis(50);
        let p = |mode| FlowControlPolicy {
            mode,
            max_wait: Duration::from_millis(100),
        };
        assert_eq!(
            p(FlowControlMode::FailClosed).on_paused(t, later),
            FlowDecision::Reject
        );
        assert_eq!(
            p(FlowControlMode::FailOpen).on_paused(t, later),
            FlowDecision::AllowWithoutAgent
        );
        assert_eq!(
            p(FlowControlMode::WaitAndRetry).on_paused(t, later),
            FlowDecision::WaitUntil(t + Duration::from_millis(100))
        );
        assert_eq!(
            p(FlowControlMode::WaitAndRetry).on_paused(t, t + Duration::from_secs(1)),
            FlowDecision::Reject
        );
    }

    #[test]
    fn zero_and_huge_waits() {
        let t = Instant::now();
        let zero = FlowControlPolicy {
            mode: FlowControlMode::WaitAndRetry,
            max_wait: Duration::ZERO,
        };
        assert_eq!(zero.on_paused(t, t), FlowDecision::Reject);
        let huge = FlowControlPolicy {
            mode: FlowControlMode::WaitAndRetry,
            max_wait: Duration::MAX,
        };
        assert!(matches!(huge.on_paused(t, t), FlowDecision::WaitUntil(d) if d > t));
    }

    #[test]
    fn serde_round_trip() {
        let p = FlowControlPolicy {
            mode: FlowControlMode::FailOpen,
            max_wait: Duration::from_millis(5),
        };
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(json, r#"{"mode":"fail_open","max_wait":"5ms"}"#);
        assert_eq!(serde_json::from_str::<FlowControlPolicy>(&json).unwrap(), p);
    }

    #[test]
    fn deserializes_over_its_defaults() {
        let p: FlowControlPolicy = serde_json::from_str(r#"{"max_wait": "250ms"}"#).unwrap();
        assert_eq!(
            p,
            FlowControlPolicy::default().with_max_wait(Duration::from_millis(250))
        );
        let err = serde_json::from_str::<FlowControlPolicy>(r#"{"wait": "1s"}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field `wait`"), "{err}");
        let err =
            serde_json::from_str::<FlowControlPolicy>(r#"{"mode": "fail_opened"}"#).unwrap_err();
        assert!(err.to_string().contains("fail_opened"), "{err}");
    }
}
