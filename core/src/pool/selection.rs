//! Connection selection: which of an agent's connections gets the next request.
//!
//! The adapter describes each connection as a [`CandidateInfo`] (through a [`CandidateSet`], so
//! it can read its atomics lazily instead of copying them into a vector) and asks a [`Selector`]
//! for an index. Selection takes `&self`, allocates nothing and takes no lock: it is on the path of
//! every request.
//!
//! Unlike the reference pool, the agent's reported health, flow-control pauses and
//! per-connection capacity all count, healthy connections are preferred over degraded ones, and
//! the error rate used by [`LoadBalanceStrategy::HealthBased`] decays ([`ErrorRate`]) so a
//! connection that once failed can win again (the reference's lifetime ratio never forgets).

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};

use serde::{Deserialize, Serialize};

use crate::HealthState;

/// How the pool spreads requests over an agent's eligible connections.
///
/// Whatever the strategy, healthy connections are chosen before degraded ones; degraded ones are
/// used only when no healthy connection is eligible.
///
/// ```
/// use agent_protocol_core::pool::LoadBalanceStrategy;
/// assert_eq!(LoadBalanceStrategy::default(), LoadBalanceStrategy::RoundRobin);
/// let s: LoadBalanceStrategy = serde_json::from_str("\"least_connections\"").unwrap();
/// assert_eq!(s, LoadBalanceStrategy::LeastConnections);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LoadBalanceStrategy {
    /// Take turns: a shared counter modulo the number of eligible connections.
    #[default]
    RoundRobin,
    /// The connection with the fewest requests in flight; ties go to the first.
    LeastConnections,
    /// The connection with the lowest recent error rate, then the fewest in flight; ties go to
    /// the first.
    HealthBased,
    /// A pseudo-random eligible connection (xorshift; not for anything security related).
    Random,
}

/// What the selector needs to know about one connection, read at selection time.
///
/// A connection is eligible when it is connected, its health is selectable (healthy or
/// degraded), it is not paused by flow control and it has room for one more request.
///
/// ```
/// use agent_protocol_core::pool::{CandidateInfo, IneligibleReason};
/// use agent_protocol_core::HealthState;
///
/// let mut c = CandidateInfo::new(HealthState::Healthy, 2);
/// assert!(c.is_eligible());
/// c.in_flight = 2;
/// assert_eq!(c.ineligible_reason(), Some(IneligibleReason::Saturated));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CandidateInfo {
    /// Health last reported by the agent (or derived by the pool).
    pub health: HealthState,
    /// Whether the transport is up.
    pub connected: bool,
    /// Whether the agent paused the connection with a FlowControl frame.
    pub paused: bool,
    /// Requests currently outstanding on the connection.
    pub in_flight: u32,
    /// Most requests the connection may have outstanding (the pool's cap, or the agent's
    /// advertised `max_concurrency` if lower).
    pub max_in_flight: u32,
    /// Recent error rate in parts per million (see [`ErrorRate::ppm`]).
    pub recent_error_rate_ppm: u32,
}

impl CandidateInfo {
    /// What a missing candidate reads as: never eligible. Used when a [`CandidateSet`] is asked
    /// for an index it does not have, so a set that shrank mid-selection cannot cause a panic.
    pub const UNAVAILABLE: CandidateInfo = CandidateInfo {
        health: HealthState::Unhealthy,
        connected: false,
        paused: false,
        in_flight: 0,
        max_in_flight: 0,
        recent_error_rate_ppm: 0,
    };

    /// A connected, unpaused, idle connection with the given health and capacity.
    pub const fn new(health: HealthState, max_in_flight: u32) -> Self {
        Self {
            health,
            connected: true,
            paused: false,
            in_flight: 0,
            max_in_flight,
            recent_error_rate_ppm: 0,
        }
    }

    /// Why the connection cannot take a request now, or `None` if it can.
    ///
    /// When several reasons apply, the most fundamental wins (disconnected, then unhealthy, then
    /// paused, then saturated), so each connection is counted once in [`SelectError`] and "all
    /// paused" really means every connection would be usable but for flow control.
    pub fn ineligible_reason(&self) -> Option<IneligibleReason> {
        if !self.connected {
            Some(IneligibleReason::Disconnected)
        } else if !self.health.is_selectable() {
            Some(IneligibleReason::Unhealthy)
        } else if self.paused {
            Some(IneligibleReason::Paused)
        } else if self.in_flight >= self.max_in_flight {
            Some(IneligibleReason::Saturated)
        } else {
            None
        }
    }

    /// Whether the connection can take a request now.
    pub fn is_eligible(&self) -> bool {
        self.ineligible_reason().is_none()
    }
}

/// Why a connection is not eligible (see [`CandidateInfo::ineligible_reason`]).
///
/// ```
/// use agent_protocol_core::pool::{CandidateInfo, IneligibleReason};
/// use agent_protocol_core::HealthState;
/// let c = CandidateInfo::new(HealthState::Draining, 10);
/// assert_eq!(c.ineligible_reason(), Some(IneligibleReason::Unhealthy));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IneligibleReason {
    /// The transport is down.
    Disconnected,
    /// Draining or unhealthy.
    Unhealthy,
    /// Paused by the agent's flow control.
    Paused,
    /// At its in-flight limit.
    Saturated,
}

/// The connections the selector chooses among, addressed by index.
///
/// Implemented for slices, arrays and vectors of [`CandidateInfo`]; an adapter can implement it
/// over its own connection list so the selector reads each connection's atomics directly. The
/// selector reads [`CandidateSet::len`] once and may read a candidate more than once; values may
/// change between reads (other threads), which the selector tolerates.
///
/// ```
/// use agent_protocol_core::pool::{CandidateInfo, CandidateSet};
/// use agent_protocol_core::HealthState;
/// let conns = vec![CandidateInfo::new(HealthState::Healthy, 1)];
/// assert_eq!(conns.len(), 1);
/// assert!(CandidateSet::candidate(&conns, 0).is_eligible());
/// assert!(!CandidateSet::candidate(&conns, 5).is_eligible());
/// ```
pub trait CandidateSet {
    /// Number of connections.
    fn len(&self) -> usize;

    /// The connection at `index`. Should return [`CandidateInfo::UNAVAILABLE`] (or anything not
    /// eligible) for an index out of range rather than panic.
    fn candidate(&self, index: usize) -> CandidateInfo;

    /// Whether there are no connections at all.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl CandidateSet for [CandidateInfo] {
    fn len(&self) -> usize {
        <[CandidateInfo]>::len(self)
    }

    fn candidate(&self, index: usize) -> CandidateInfo {
        self.get(index)
            .copied()
            .unwrap_or(CandidateInfo::UNAVAILABLE)
    }
}

impl<const N: usize> CandidateSet for [CandidateInfo; N] {
    fn len(&self) -> usize {
        N
    }

    fn candidate(&self, index: usize) -> CandidateInfo {
        self.as_slice().candidate(index)
    }
}

impl CandidateSet for Vec<CandidateInfo> {
    fn len(&self) -> usize {
        self.as_slice().len()
    }

    fn candidate(&self, index: usize) -> CandidateInfo {
        self.as_slice().candidate(index)
    }
}

impl<T: CandidateSet + ?Sized> CandidateSet for &T {
    fn len(&self) -> usize {
        (**self).len()
    }

    fn candidate(&self, index: usize) -> CandidateInfo {
        (**self).candidate(index)
    }
}

/// Why no connection could be selected.
///
/// ```
/// use agent_protocol_core::pool::{CandidateInfo, LoadBalanceStrategy, SelectError, Selector};
/// use agent_protocol_core::HealthState;
///
/// let mut c = CandidateInfo::new(HealthState::Healthy, 10);
/// c.paused = true;
/// let err = Selector::new(1).select(LoadBalanceStrategy::RoundRobin, &[c, c]).unwrap_err();
/// assert!(err.all_paused()); // the adapter applies its flow-control mode here
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
pub enum SelectError {
    /// The agent has no connections at all.
    #[error("agent has no connections")]
    NoConnections,
    /// Every connection is ineligible; each is counted once, under its most fundamental reason
    /// (see [`CandidateInfo::ineligible_reason`]).
    #[error(
        "no connection available ({paused} paused, {unhealthy} unhealthy, \
         {disconnected} disconnected, {saturated} saturated)"
    )]
    AllUnavailable {
        /// Connected, selectable health, but paused by flow control.
        paused: usize,
        /// Draining or unhealthy.
        unhealthy: usize,
        /// Transport down.
        disconnected: usize,
        /// At the in-flight limit.
        saturated: usize,
    },
}

impl SelectError {
    /// True when connections exist and the only thing keeping them all out is flow control: the
    /// caller should apply its [`crate::pool::FlowControlMode`] rather than fail as unavailable.
    pub fn all_paused(&self) -> bool {
        matches!(
            self,
            Self::AllUnavailable { paused, unhealthy: 0, disconnected: 0, saturated: 0 } if *paused > 0
        )
    }
}

/// Tallies of one pass over the candidates.
#[derive(Default)]
struct Tally {
    healthy: usize,
    degraded: usize,
    paused: usize,
    unhealthy: usize,
    disconnected: usize,
    saturated: usize,
    /// First eligible index of each tier, the fallback when the set changes between passes.
    first_healthy: Option<usize>,
    first_degraded: Option<usize>,
}

impl Tally {
    fn add(&mut self, index: usize, c: &CandidateInfo) {
        match c.ineligible_reason() {
            Some(IneligibleReason::Disconnected) => self.disconnected += 1,
            Some(IneligibleReason::Unhealthy) => self.unhealthy += 1,
            Some(IneligibleReason::Paused) => self.paused += 1,
            Some(IneligibleReason::Saturated) => self.saturated += 1,
            None if c.health == HealthState::Healthy => {
                self.healthy += 1;
                self.first_healthy.get_or_insert(index);
            }
            None => {
                self.degraded += 1;
                self.first_degraded.get_or_insert(index);
            }
        }
    }

    fn error(&self) -> SelectError {
        SelectError::AllUnavailable {
            paused: self.paused,
            unhealthy: self.unhealthy,
            disconnected: self.disconnected,
            saturated: self.saturated,
        }
    }
}

/// Whether `c` is eligible and in the tier being chosen from (healthy, or degraded when no healthy
/// one is eligible).
fn in_tier(c: &CandidateInfo, healthy_tier: bool) -> bool {
    c.is_eligible() && ((c.health == HealthState::Healthy) == healthy_tier)
}

/// Picks a connection index; lock-free and allocation-free, shareable across threads.
///
/// Holds the round-robin counter and the random state, both atomics, so one `Selector` per agent
/// can be used through `&self` from every thread. The random state is seeded by the caller
/// because the core does not touch the system's entropy (tests pass fixed seeds).
///
/// ```
/// use agent_protocol_core::pool::{CandidateInfo, LoadBalanceStrategy, Selector};
/// use agent_protocol_core::HealthState;
///
/// let selector = Selector::new(42);
/// let mut conns = [CandidateInfo::new(HealthState::Healthy, 100); 3];
/// conns[0].in_flight = 5;
/// conns[1].in_flight = 1;
/// conns[2].in_flight = 1;
/// assert_eq!(selector.select(LoadBalanceStrategy::LeastConnections, &conns), Ok(1));
///
/// // Healthy beats degraded, whatever the load.
/// conns[1].health = HealthState::Degraded;
/// conns[2].health = HealthState::Degraded;
/// assert_eq!(selector.select(LoadBalanceStrategy::LeastConnections, &conns), Ok(0));
/// ```
#[derive(Debug)]
pub struct Selector {
    counter: AtomicUsize,
    rng: AtomicU64,
}

impl Default for Selector {
    fn default() -> Self {
        Self::new(0)
    }
}

/// Replaces a zero seed: xorshift has a fixed point at zero and would return zero forever.
const NONZERO_SEED: u64 = 0x9E37_79B9_7F4A_7C15;

fn xorshift64(mut x: u64) -> u64 {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    x
}

impl Selector {
    /// A selector whose random strategy starts from `seed` (any value; zero is remapped).
    pub fn new(seed: u64) -> Self {
        Self {
            counter: AtomicUsize::new(0),
            rng: AtomicU64::new(if seed == 0 { NONZERO_SEED } else { seed }),
        }
    }

    /// Next pseudo-random value. A compare-and-swap loop so concurrent callers get distinct
    /// values; it is lock-free (some caller always makes progress).
    fn next_random(&self) -> u64 {
        let step = |x: u64| Some(xorshift64(if x == 0 { NONZERO_SEED } else { x }));
        let previous = match self
            .rng
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, step)
        {
            Ok(v) | Err(v) => v,
        };
        // The stored state is the output; recompute it from the value we replaced.
        xorshift64(if previous == 0 {
            NONZERO_SEED
        } else {
            previous
        })
    }

    /// Chooses the index of an eligible connection of `set` according to `strategy`.
    ///
    /// Returns `Err` exactly when no candidate is eligible (as read during the call). Only the
    /// healthy tier is considered when it has an eligible member; otherwise the degraded tier.
    pub fn select<S: CandidateSet + ?Sized>(
        &self,
        strategy: LoadBalanceStrategy,
        set: &S,
    ) -> Result<usize, SelectError> {
        let n = set.len();
        if n == 0 {
            return Err(SelectError::NoConnections);
        }
        match strategy {
            LoadBalanceStrategy::LeastConnections => {
                Self::select_best(set, n, |c| (u64::from(c.in_flight), 0))
            }
            LoadBalanceStrategy::HealthBased => Self::select_best(set, n, |c| {
                (u64::from(c.recent_error_rate_ppm), u64::from(c.in_flight))
            }),
            LoadBalanceStrategy::RoundRobin => {
                let ticket = self.counter.fetch_add(1, Ordering::Relaxed);
                Self::select_nth(set, n, |count| ticket % count)
            }
            LoadBalanceStrategy::Random => {
                let random = self.next_random();
                // Multiply-shift maps a u64 onto 0..count without modulo bias worth noticing.
                Self::select_nth(set, n, |count| {
                    ((u128::from(random) * count as u128) >> 64) as usize
                })
            }
        }
    }

    /// One pass: the eligible candidate with the smallest key in the best tier (first on ties).
    fn select_best<S, K>(set: &S, n: usize, key: K) -> Result<usize, SelectError>
    where
        S: CandidateSet + ?Sized,
        K: Fn(&CandidateInfo) -> (u64, u64),
    {
        let mut tally = Tally::default();
        let mut best_healthy: Option<(usize, (u64, u64))> = None;
        let mut best_degraded: Option<(usize, (u64, u64))> = None;
        for i in 0..n {
            let c = set.candidate(i);
            tally.add(i, &c);
            if !c.is_eligible() {
                continue;
            }
            let slot = if c.health == HealthState::Healthy {
                &mut best_healthy
            } else {
                &mut best_degraded
            };
            let k = key(&c);
            if slot.is_none_or(|(_, best)| k < best) {
                *slot = Some((i, k));
            }
        }
        best_healthy
            .or(best_degraded)
            .map(|(i, _)| i)
            .ok_or_else(|| tally.error())
    }

    /// Two passes: count the eligible candidates of each tier, then walk to the `pick(count)`-th
    /// one of the chosen tier. Counting first is what lets this avoid collecting indices.
    fn select_nth<S, P>(set: &S, n: usize, pick: P) -> Result<usize, SelectError>
    where
        S: CandidateSet + ?Sized,
        P: FnOnce(usize) -> usize,
    {
        let mut first = Tally::default();
        for i in 0..n {
            first.add(i, &set.candidate(i));
        }
        let (healthy_tier, count) = match (first.healthy, first.degraded) {
            (0, 0) => return Err(first.error()),
            (0, d) => (false, d),
            (h, _) => (true, h),
        };
        let target = pick(count).min(count - 1);

        // Candidates may change between the passes (other threads update them), so the second
        // pass re-checks every candidate and keeps its own tally as a fallback.
        let mut second = Tally::default();
        let mut seen = 0usize;
        for i in 0..n {
            let c = set.candidate(i);
            second.add(i, &c);
            if in_tier(&c, healthy_tier) {
                if seen == target {
                    return Ok(i);
                }
                seen += 1;
            }
        }
        second
            .first_healthy
            .or(second.first_degraded)
            .ok_or_else(|| second.error())
    }
}

/// A connection's recent error rate, decaying exponentially, in parts per million.
///
/// Each outcome moves the rate a fixed fraction (1/2^`weight_shift`, default 1/16) of the way
/// toward 0 (success) or 1,000,000 (failure), so old failures fade: unlike the reference's
/// lifetime ratio, a connection that recovers wins traffic back. Because
/// [`LoadBalanceStrategy::HealthBased`] avoids high-rate connections, such a connection may get
/// no outcomes at all; the maintenance tick calls [`ErrorRate::tick`] so the rate still fades
/// with time. Rounding always moves at least one ppm toward the target, so the rate really
/// reaches 0 and 1,000,000 instead of stalling just short.
///
/// Kept in one `AtomicU32`, updated with compare-and-swap: shareable across threads, no lock.
///
/// ```
/// use agent_protocol_core::pool::ErrorRate;
/// let rate = ErrorRate::new();
/// rate.record(false);
/// let after_failure = rate.ppm();
/// assert!(after_failure > 0);
/// for _ in 0..400 {
///     rate.record(true);
/// }
/// assert_eq!(rate.ppm(), 0);
/// ```
#[derive(Debug)]
pub struct ErrorRate {
    ppm: AtomicU32,
    shift: u32,
}

impl Default for ErrorRate {
    fn default() -> Self {
        Self::new()
    }
}

/// One million: the "always failing" end of the scale.
const PPM_MAX: u32 = 1_000_000;

impl ErrorRate {
    /// Default smoothing: each outcome moves the rate 1/16 of the way to its target.
    pub const DEFAULT_WEIGHT_SHIFT: u32 = 4;

    /// A rate starting at 0 with the default smoothing.
    pub const fn new() -> Self {
        Self::with_weight_shift(Self::DEFAULT_WEIGHT_SHIFT)
    }

    /// A rate starting at 0 whose outcomes weigh 1/2^`shift` each (`shift` is clamped to 0..=20;
    /// 0 means "last outcome only").
    pub const fn with_weight_shift(shift: u32) -> Self {
        Self {
            ppm: AtomicU32::new(0),
            shift: if shift > 20 { 20 } else { shift },
        }
    }

    /// Moves `current` toward `target` by 1/2^shift of the gap, at least 1 ppm.
    fn step(current: u32, target: u32, shift: u32) -> u32 {
        let current = current.min(PPM_MAX);
        if current == target {
            return current;
        }
        let gap = current.abs_diff(target);
        let delta = (gap >> shift).max(1);
        if target > current {
            current + delta
        } else {
            current - delta
        }
    }

    fn apply(&self, target: u32, shift: u32) {
        // The closure always returns Some, so fetch_update cannot fail; both arms are the same.
        let _ = self
            .ppm
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |x| {
                Some(Self::step(x, target, shift))
            });
    }

    /// Records the outcome of one request on the connection.
    pub fn record(&self, success: bool) {
        self.apply(if success { 0 } else { PPM_MAX }, self.shift);
    }

    /// Time-based decay: halves the rate. Called on every maintenance tick so a connection that
    /// is no longer chosen (because of its rate) still recovers.
    pub fn tick(&self) {
        self.apply(0, 1);
    }

    /// The current rate in parts per million (0 to 1,000,000).
    pub fn ppm(&self) -> u32 {
        self.ppm.load(Ordering::Relaxed).min(PPM_MAX)
    }

    /// Forgets all history (e.g. after a reconnect).
    pub fn reset(&self) {
        self.ppm.store(0, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ALL: [LoadBalanceStrategy; 4] = [
        LoadBalanceStrategy::RoundRobin,
        LoadBalanceStrategy::LeastConnections,
        LoadBalanceStrategy::HealthBased,
        LoadBalanceStrategy::Random,
    ];

    fn healthy(in_flight: u32) -> CandidateInfo {
        CandidateInfo {
            in_flight,
            ..CandidateInfo::new(HealthState::Healthy, 10)
        }
    }

    #[test]
    fn empty_set_is_no_connections() {
        let empty: [CandidateInfo; 0] = [];
        for s in ALL {
            assert_eq!(
                Selector::new(1).select(s, &empty),
                Err(SelectError::NoConnections)
            );
        }
    }

    #[test]
    fn round_robin_cycles_over_eligible_only() {
        let sel = Selector::new(1);
        let mut conns = [healthy(0); 4];
        conns[1].paused = true;
        let picks: Vec<usize> = (0..6)
            .map(|_| sel.select(LoadBalanceStrategy::RoundRobin, &conns).unwrap())
            .collect();
        assert_eq!(picks, vec![0, 2, 3, 0, 2, 3]);
    }

    #[test]
    fn least_connections_ties_go_first() {
        let conns = [healthy(3), healthy(1), healthy(1), healthy(2)];
        assert_eq!(
            Selector::new(1).select(LoadBalanceStrategy::LeastConnections, &conns),
            Ok(1)
        );
    }

    #[test]
    fn health_based_prefers_low_error_rate_then_low_load() {
        let mut conns = [healthy(0), healthy(5), healthy(2)];
        conns[0].recent_error_rate_ppm = 500;
        conns[1].recent_error_rate_ppm = 10;
        conns[2].recent_error_rate_ppm = 10;
        assert_eq!(
            Selector::new(1).select(LoadBalanceStrategy::HealthBased, &conns),
            Ok(2)
        );
    }

    #[test]
    fn random_covers_every_eligible_index() {
        let sel = Selector::new(12345);
        let conns = [healthy(0); 5];
        let mut hits = [0u32; 5];
        for _ in 0..1000 {
            hits[sel.select(LoadBalanceStrategy::Random, &conns).unwrap()] += 1;
        }
        assert!(hits.iter().all(|&h| h > 100), "{hits:?}");
    }

    #[test]
    fn degraded_used_only_without_healthy() {
        let mut conns = [healthy(0), healthy(0)];
        conns[0].health = HealthState::Degraded;
        conns[1].in_flight = 10; // saturated
        for s in ALL {
            assert_eq!(Selector::new(3).select(s, &conns), Ok(0));
        }
    }

    #[test]
    fn error_counts_each_reason_once() {
        let mut conns = [healthy(0); 5];
        conns[0].connected = false;
        conns[0].paused = true; // disconnected wins
        conns[1].health = HealthState::Unhealthy;
        conns[2].health = HealthState::Draining;
        conns[3].paused = true;
        conns[4].in_flight = 10;
        let err = Selector::new(1)
            .select(LoadBalanceStrategy::RoundRobin, &conns)
            .unwrap_err();
        assert_eq!(
            err,
            SelectError::AllUnavailable {
                paused: 1,
                unhealthy: 2,
                disconnected: 1,
                saturated: 1
            }
        );
        assert!(!err.all_paused());
    }

    #[test]
    fn zero_capacity_is_saturated() {
        let conns = [CandidateInfo::new(HealthState::Healthy, 0)];
        assert!(Selector::new(1)
            .select(LoadBalanceStrategy::Random, &conns)
            .is_err());
    }

    /// A set whose candidates all turn ineligible after the first pass, as if another thread
    /// paused them meanwhile: the selector must still answer consistently and not panic.
    struct Flaky {
        reads: std::cell::Cell<usize>,
        n: usize,
    }

    impl CandidateSet for Flaky {
        fn len(&self) -> usize {
            self.n
        }
        fn candidate(&self, _index: usize) -> CandidateInfo {
            let r = self.reads.get();
            self.reads.set(r + 1);
            let mut c = healthy(0);
            c.paused = r >= self.n;
            c
        }
    }

    #[test]
    fn set_changing_between_passes_is_tolerated() {
        for s in [LoadBalanceStrategy::RoundRobin, LoadBalanceStrategy::Random] {
            let flaky = Flaky {
                reads: std::cell::Cell::new(0),
                n: 3,
            };
            let err = Selector::new(9).select(s, &flaky).unwrap_err();
            assert!(err.all_paused());
        }
    }

    #[test]
    fn error_rate_decays_and_saturates() {
        let r = ErrorRate::new();
        for _ in 0..1000 {
            r.record(false);
        }
        assert_eq!(r.ppm(), 1_000_000);
        for _ in 0..40 {
            r.tick();
        }
        assert_eq!(r.ppm(), 0);
        let last_only = ErrorRate::with_weight_shift(0);
        last_only.record(false);
        assert_eq!(last_only.ppm(), 1_000_000);
        last_only.record(true);
        assert_eq!(last_only.ppm(), 0);
    }

    fn arb_candidate() -> impl Strategy<Value = CandidateInfo> {
        (
            prop_oneof![
                Just(HealthState::Healthy),
                Just(HealthState::Degraded),
                Just(HealthState::Draining),
                Just(HealthState::Unhealthy)
            ],
            any::<bool>(),
            any::<bool>(),
            0u32..6,
            0u32..6,
            0u32..1_000_001,
        )
            .prop_map(
                |(health, connected, paused, in_flight, max_in_flight, rate)| CandidateInfo {
                    health,
                    connected,
                    paused,
                    in_flight,
                    max_in_flight,
                    recent_error_rate_ppm: rate,
                },
            )
    }

    fn arb_strategy() -> impl Strategy<Value = LoadBalanceStrategy> {
        prop_oneof![
            Just(LoadBalanceStrategy::RoundRobin),
            Just(LoadBalanceStrategy::LeastConnections),
            Just(LoadBalanceStrategy::HealthBased),
            Just(LoadBalanceStrategy::Random),
        ]
    }

    proptest! {
        #[test]
        fn selection_is_sound(
            conns in proptest::collection::vec(arb_candidate(), 0..12),
            strategy in arb_strategy(),
            seed in any::<u64>(),
            spins in 0usize..20,
        ) {
            let sel = Selector::new(seed);
            // Advance the round-robin counter and the random state to arbitrary positions.
            for _ in 0..spins {
                let _ = sel.select(strategy, &conns);
            }
            let any_eligible = conns.iter().any(CandidateInfo::is_eligible);
            let any_healthy = conns
                .iter()
                .any(|c| c.is_eligible() && c.health == HealthState::Healthy);
            match sel.select(strategy, &conns) {
                Ok(i) => {
                    prop_assert!(i < conns.len());
                    prop_assert!(conns[i].is_eligible());
                    if any_healthy {
                        prop_assert_eq!(conns[i].health, HealthState::Healthy);
                    }
                }
                Err(SelectError::NoConnections) => prop_assert!(conns.is_empty()),
                Err(SelectError::AllUnavailable { paused, unhealthy, disconnected, saturated }) => {
                    prop_assert!(!any_eligible);
                    prop_assert_eq!(paused + unhealthy + disconnected + saturated, conns.len());
                }
            }
        }

        #[test]
        fn error_rate_stays_in_range(outcomes in proptest::collection::vec(any::<bool>(), 0..200), shift in 0u32..40) {
            let r = ErrorRate::with_weight_shift(shift);
            for o in outcomes {
                r.record(o);
                prop_assert!(r.ppm() <= 1_000_000);
            }
        }
    }
}
