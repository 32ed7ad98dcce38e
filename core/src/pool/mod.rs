//! Pure pool logic: the decisions an `AgentPool` makes, without the pool's I/O.
//!
//! The runtime adapters own the connections, tasks and clocks; this module owns the rules they
//! follow, so every runtime behaves the same and every rule can be tested with a simulated clock:
//!
//! - [`selection`]: which connection of an agent gets the next request
//!   ([`LoadBalanceStrategy`], [`Selector`]), and a decaying per-connection [`ErrorRate`].
//! - [`circuit_breaker`]: fast failure for an agent that keeps failing ([`CircuitBreaker`]).
//! - [`flow_mode`]: what to do with a request when the agent asked for backpressure
//!   ([`FlowControlPolicy`]).
//! - [`affinity`]: which connection carries the body chunks of a request whose headers already
//!   went out ([`AffinityTable`]).
//! - [`backoff`]: when to try reconnecting ([`Backoff`], [`ReconnectSchedule`]).
//! - [`endpoint`]: what an endpoint string in the configuration means ([`Endpoint`]).
//! - [`telemetry`]: the pool's connection gauges and the conversion of agent metric reports
//!   ([`AgentGauges`], [`report_series`]).
//!
//! Nothing here reads the clock, sleeps, spawns or locks: time comes in as [`std::time::Instant`]
//! and randomness as plain `u64` values. The types meant to be shared between threads without a
//! lock ([`Selector`], [`ErrorRate`]) use atomics; the others take `&mut self` and are meant to live
//! inside whatever owner the adapter chooses.
//!
//! ```
//! use agent_protocol_core::pool::{CandidateInfo, LoadBalanceStrategy, Selector};
//! use agent_protocol_core::HealthState;
//!
//! let selector = Selector::new(7);
//! let conns = [CandidateInfo::new(HealthState::Healthy, 100); 3];
//! let index = selector.select(LoadBalanceStrategy::RoundRobin, &conns[..]).unwrap();
//! assert!(index < 3);
//! ```

use std::time::{Duration, Instant};

pub mod affinity;
pub mod backoff;
pub mod circuit_breaker;
pub mod endpoint;
pub mod flow_mode;
pub mod selection;
pub mod telemetry;

pub use affinity::{AffinityFull, AffinityTable};
pub use backoff::{Backoff, ReconnectSchedule};
pub use circuit_breaker::{CircuitBreaker, CircuitBreakerConfig, CircuitOpen, CircuitState};
pub use endpoint::{Endpoint, EndpointError};
pub use flow_mode::{FlowControlMode, FlowControlPolicy, FlowDecision};
pub use selection::{
    CandidateInfo, CandidateSet, ErrorRate, IneligibleReason, LoadBalanceStrategy, SelectError,
    Selector,
};
pub use telemetry::{circuit_state_value, report_series, AgentGauges, ConnectionCounts};

/// `instant + duration`, but never panics: `Instant + Duration` panics on overflow, and durations
/// here come from configuration (a user may write an absurd timeout). On overflow the duration is
/// halved until it fits, which still lands "very far in the future", the only meaningful reading.
pub(crate) fn saturating_add(instant: Instant, duration: Duration) -> Instant {
    let mut duration = duration;
    // 128 halvings take any Duration (at most ~2^94 ns) to zero, so the loop always returns
    // through `checked_add` before it ends; the final fallback is only for the type checker.
    for _ in 0..128 {
        if let Some(later) = instant.checked_add(duration) {
            return later;
        }
        duration /= 2;
    }
    instant
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saturating_add_never_panics() {
        let now = Instant::now();
        let far = saturating_add(now, Duration::MAX);
        assert!(far >= now);
        assert_eq!(
            saturating_add(now, Duration::from_secs(1)),
            now + Duration::from_secs(1)
        );
    }
}
