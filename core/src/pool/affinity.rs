//! Correlation affinity: the body chunks of a request go down the connection its headers took.
//!
//! The agent keeps per-request state on the connection that saw the headers, so later events of
//! the same request must follow. The reference keys this map by correlation id alone, so with
//! several agents in one pool agent A's chunk can go down agent B's connection; here
//! the key is the pair (agent, correlation id). The table is bounded and entries expire after an
//! idle TTL, with time passed in.

use std::time::{Duration, Instant};

use foldhash::{HashMap, HashMapExt};

use super::saturating_add;
use crate::byte_str::ByteStr;

/// Returned by [`AffinityTable::insert`] when the table is full even after expiring idle entries.
///
/// ```
/// use agent_protocol_core::pool::{AffinityFull, AffinityTable};
/// use std::time::{Duration, Instant};
/// let now = Instant::now();
/// let mut t = AffinityTable::<u64>::with_limits(1, Duration::from_secs(60));
/// t.insert(0, "a", 7, now).unwrap();
/// assert_eq!(t.insert(0, "b", 7, now), Err(AffinityFull { capacity: 1 }));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
#[error("affinity table full ({capacity} entries)")]
pub struct AffinityFull {
    /// The table's capacity.
    pub capacity: usize,
}

#[derive(Clone, Debug)]
struct Entry<C> {
    conn: C,
    last_access: Instant,
}

/// Bounded map from (agent key, correlation id) to a connection id, with idle expiry.
///
/// `C` is whatever the adapter uses to name a connection (an index, a slot id); agents are named
/// by a `u32` key the adapter assigns, which keeps entries small. Every operation takes the
/// current time from the caller. Inserting into a full table first expires idle entries and only
/// then fails with [`AffinityFull`] (the request still goes out; only its chunks lose affinity).
///
/// ```
/// use agent_protocol_core::pool::AffinityTable;
/// use std::time::{Duration, Instant};
///
/// let t0 = Instant::now();
/// let mut table: AffinityTable<usize> = AffinityTable::new();
/// table.insert(1, "req-1", 3, t0).unwrap();
/// assert_eq!(table.get(1, "req-1", t0), Some(3));
/// assert_eq!(table.get(2, "req-1", t0), None); // another agent's request
/// assert_eq!(table.expire(t0 + Duration::from_secs(301)), 1);
/// assert!(table.is_empty());
/// ```
#[derive(Clone, Debug)]
pub struct AffinityTable<C: Copy> {
    /// Nested by agent so lookups can borrow the correlation id as `&str` (a tuple key could
    /// not) and removing an agent is one map removal.
    agents: HashMap<u32, HashMap<ByteStr, Entry<C>>>,
    len: usize,
    capacity: usize,
    ttl: Duration,
    /// No entry can expire before this instant: the oldest `last_access` seen by the last full
    /// scan, plus the TTL. Touches and inserts only make entries younger, so it stays a valid
    /// lower bound, and a full table under insert pressure does not rescan on every insert.
    next_expiry: Option<Instant>,
}

impl<C: Copy> Default for AffinityTable<C> {
    fn default() -> Self {
        Self::new()
    }
}

impl<C: Copy> AffinityTable<C> {
    /// Default capacity, as the reference's `max_correlation_affinities`.
    pub const DEFAULT_CAPACITY: usize = 100_000;
    /// Default idle TTL, as the reference's `correlation_affinity_ttl`.
    pub const DEFAULT_TTL: Duration = Duration::from_secs(300);

    /// An empty table with the default capacity (100,000) and idle TTL (5 minutes).
    pub fn new() -> Self {
        Self::with_limits(Self::DEFAULT_CAPACITY, Self::DEFAULT_TTL)
    }

    /// An empty table holding at most `capacity` entries, each expiring after `ttl` without use.
    /// Nothing is allocated up front: most pools never come near the capacity.
    pub fn with_limits(capacity: usize, ttl: Duration) -> Self {
        Self {
            agents: HashMap::new(),
            len: 0,
            capacity,
            ttl,
            next_expiry: None,
        }
    }

    /// Number of entries (including expired ones not yet swept).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the table has no entries.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Most entries the table will hold.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Idle time after which an entry expires.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    fn is_expired(&self, entry: &Entry<C>, now: Instant) -> bool {
        now.saturating_duration_since(entry.last_access) >= self.ttl
    }

    /// Records that `(agent, correlation_id)` is served by `conn`. Replacing an existing entry
    /// always succeeds; a new entry needs room. The table keeps the id it is given: a
    /// [`ByteStr`] clone of the event's id costs no copy.
    pub fn insert(
        &mut self,
        agent: u32,
        correlation_id: impl Into<ByteStr>,
        conn: C,
        now: Instant,
    ) -> Result<(), AffinityFull> {
        let correlation_id = correlation_id.into();
        if let Some(entry) = self
            .agents
            .get_mut(&agent)
            .and_then(|m| m.get_mut(correlation_id.as_str()))
        {
            *entry = Entry {
                conn,
                last_access: now,
            };
            return Ok(());
        }
        if self.len >= self.capacity {
            if self.next_expiry.is_none_or(|t| now >= t) {
                self.expire(now);
            }
            if self.len >= self.capacity {
                return Err(AffinityFull {
                    capacity: self.capacity,
                });
            }
        }
        self.agents.entry(agent).or_default().insert(
            correlation_id,
            Entry {
                conn,
                last_access: now,
            },
        );
        self.len += 1;
        Ok(())
    }

    /// The connection for `(agent, correlation_id)`, refreshing its idle timer. An expired entry
    /// is removed and reads as absent, so a stale mapping is never used even between sweeps.
    pub fn get(&mut self, agent: u32, correlation_id: &str, now: Instant) -> Option<C> {
        let ttl = self.ttl;
        let map = self.agents.get_mut(&agent)?;
        let entry = map.get_mut(correlation_id)?;
        if now.saturating_duration_since(entry.last_access) >= ttl {
            self.remove(agent, correlation_id);
            return None;
        }
        // Never move the timer backwards if callers' clocks disagree slightly.
        entry.last_access = entry.last_access.max(now);
        Some(entry.conn)
    }

    /// Removes the entry (when the request completes, fails or is cancelled).
    pub fn remove(&mut self, agent: u32, correlation_id: &str) -> Option<C> {
        self.remove_entry(agent, correlation_id)
            .map(|(_, conn)| conn)
    }

    /// Removes the entry and returns it with the id it was kept under (shared, not copied).
    pub fn remove_entry(&mut self, agent: u32, correlation_id: &str) -> Option<(ByteStr, C)> {
        let map = self.agents.get_mut(&agent)?;
        // An emptied map is kept (expiry sweeps drop it): with few requests in flight it
        // empties all the time, and dropping it would allocate a new table for the next one.
        let (key, entry) = map.remove_entry(correlation_id)?;
        self.len -= 1;
        Some((key, entry.conn))
    }

    /// Removes every entry idle for at least the TTL; returns how many were removed.
    pub fn expire(&mut self, now: Instant) -> usize {
        let ttl = self.ttl;
        let mut removed = 0;
        let mut oldest: Option<Instant> = None;
        self.agents.retain(|_, map| {
            map.retain(|_, e| {
                if now.saturating_duration_since(e.last_access) >= ttl {
                    removed += 1;
                    false
                } else {
                    oldest = Some(oldest.map_or(e.last_access, |o| o.min(e.last_access)));
                    true
                }
            });
            !map.is_empty()
        });
        self.len -= removed;
        self.next_expiry = oldest.map(|o| saturating_add(o, ttl));
        removed
    }

    /// Removes every entry pointing at `conn` (it closed); returns how many were removed.
    pub fn remove_connection(&mut self, conn: C) -> usize
    where
        C: PartialEq,
    {
        self.remove_where(|_, c| c == conn)
    }

    /// Removes every entry of `agent` (it was removed from the pool); returns how many.
    pub fn remove_agent(&mut self, agent: u32) -> usize {
        let removed = self.agents.remove(&agent).map_or(0, |m| m.len());
        self.len -= removed;
        removed
    }

    /// Removes everything.
    pub fn clear(&mut self) {
        self.agents.clear();
        self.len = 0;
        self.next_expiry = None;
    }

    fn remove_where(&mut self, mut pred: impl FnMut(u32, C) -> bool) -> usize {
        let mut removed = 0;
        self.agents.retain(|&agent, map| {
            map.retain(|_, e| {
                let drop = pred(agent, e.conn);
                removed += usize::from(drop);
                !drop
            });
            !map.is_empty()
        });
        self.len -= removed;
        removed
    }

    /// Whether the entry exists and is live at `now`, without touching it.
    pub fn contains(&self, agent: u32, correlation_id: &str, now: Instant) -> bool {
        self.agents
            .get(&agent)
            .and_then(|m| m.get(correlation_id))
            .is_some_and(|e| !self.is_expired(e, now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const TTL: Duration = Duration::from_secs(10);

    #[test]
    fn keyed_by_agent_and_correlation_id() {
        let t = Instant::now();
        let mut a = AffinityTable::with_limits(10, TTL);
        a.insert(1, "x", 10u32, t).unwrap();
        a.insert(2, "x", 20u32, t).unwrap();
        assert_eq!(a.len(), 2);
        assert_eq!(a.get(1, "x", t), Some(10));
        assert_eq!(a.get(2, "x", t), Some(20));
        assert_eq!(a.remove(1, "x"), Some(10));
        assert_eq!(a.get(1, "x", t), None);
        assert_eq!(a.len(), 1);
    }

    #[test]
    fn get_touches_and_expired_reads_absent() {
        let t = Instant::now();
        let mut a = AffinityTable::with_limits(10, TTL);
        a.insert(1, "x", 1u8, t).unwrap();
        assert_eq!(a.get(1, "x", t + Duration::from_secs(9)), Some(1));
        // Touched at 9 s, so still live at 18 s.
        assert_eq!(a.expire(t + Duration::from_secs(18)), 0);
        assert_eq!(a.get(1, "x", t + Duration::from_secs(19)), None);
        assert!(a.is_empty());
    }

    #[test]
    fn full_table_expires_then_fails() {
        let t = Instant::now();
        let mut a = AffinityTable::with_limits(2, TTL);
        a.insert(1, "a", 1u8, t).unwrap();
        a.insert(1, "b", 2u8, t + Duration::from_secs(5)).unwrap();
        assert_eq!(
            a.insert(1, "c", 3, t + Duration::from_secs(6)),
            Err(AffinityFull { capacity: 2 })
        );
        // Replacing an existing key is fine when full.
        a.insert(1, "b", 4, t + Duration::from_secs(6)).unwrap();
        // At 10 s "a" has expired and makes room.
        a.insert(1, "c", 3, t + Duration::from_secs(10)).unwrap();
        assert_eq!(a.len(), 2);
        assert!(!a.contains(1, "a", t + Duration::from_secs(10)));
    }

    #[test]
    fn remove_connection_and_agent() {
        let t = Instant::now();
        let mut a = AffinityTable::with_limits(10, TTL);
        a.insert(1, "a", 7u8, t).unwrap();
        a.insert(2, "b", 7u8, t).unwrap();
        a.insert(2, "c", 8u8, t).unwrap();
        a.insert(3, "d", 9u8, t).unwrap();
        assert_eq!(a.remove_connection(7), 2);
        assert_eq!(a.remove_agent(3), 1);
        assert_eq!(a.len(), 1);
        assert_eq!(a.get(2, "c", t), Some(8));
        a.clear();
        assert!(a.is_empty());
    }

    #[test]
    fn zero_capacity_rejects() {
        let t = Instant::now();
        let mut a = AffinityTable::with_limits(0, TTL);
        assert!(a.insert(1, "a", 1u8, t).is_err());
    }

    #[derive(Clone, Debug)]
    enum Op {
        Insert(u32, u8, u8, u64),
        Get(u32, u8, u64),
        Remove(u32, u8),
        Expire(u64),
        RemoveConn(u8),
    }

    fn arb_op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u32..3, 0u8..20, 0u8..4, 0u64..4).prop_map(|(a, c, k, d)| Op::Insert(a, c, k, d)),
            (0u32..3, 0u8..20, 0u64..4).prop_map(|(a, c, d)| Op::Get(a, c, d)),
            (0u32..3, 0u8..20).prop_map(|(a, c)| Op::Remove(a, c)),
            (0u64..4).prop_map(Op::Expire),
            (0u8..4).prop_map(Op::RemoveConn),
        ]
    }

    proptest! {
        #[test]
        fn never_exceeds_capacity(capacity in 0usize..8, ops in proptest::collection::vec(arb_op(), 0..300)) {
            let base = Instant::now();
            let mut clock = 0u64;
            let mut a = AffinityTable::with_limits(capacity, Duration::from_secs(5));
            let mut model: HashMap<(u32, String), (u8, u64)> = HashMap::new();
            for op in ops {
                match op {
                    Op::Insert(agent, cid, conn, dt) => {
                        clock += dt;
                        let cid = cid.to_string();
                        let now = base + Duration::from_secs(clock);
                        let r = a.insert(agent, &cid, conn, now);
                        let key = (agent, cid);
                        if model.contains_key(&key) {
                            // Replacing (even an expired entry) never needs room.
                            prop_assert!(r.is_ok());
                        } else if model.len() >= capacity {
                            // A full table sweeps expired entries before deciding.
                            model.retain(|_, &mut (_, t)| clock - t < 5);
                            prop_assert_eq!(r.is_ok(), model.len() < capacity);
                        } else {
                            prop_assert!(r.is_ok());
                        }
                        if r.is_ok() {
                            model.insert(key, (conn, clock));
                        }
                    }
                    Op::Get(agent, cid, dt) => {
                        clock += dt;
                        let cid = cid.to_string();
                        let got = a.get(agent, &cid, base + Duration::from_secs(clock));
                        let want = match model.get_mut(&(agent, cid.clone())) {
                            Some((conn, t)) if clock - *t < 5 => { *t = clock; Some(*conn) }
                            _ => { model.remove(&(agent, cid)); None }
                        };
                        prop_assert_eq!(got, want);
                    }
                    Op::Remove(agent, cid) => {
                        let cid = cid.to_string();
                        let got = a.remove(agent, &cid);
                        prop_assert_eq!(got, model.remove(&(agent, cid)).map(|(c, _)| c));
                    }
                    Op::Expire(dt) => {
                        clock += dt;
                        let before = model.len();
                        model.retain(|_, &mut (_, t)| clock - t < 5);
                        prop_assert_eq!(a.expire(base + Duration::from_secs(clock)), before - model.len());
                    }
                    Op::RemoveConn(conn) => {
                        let before = model.len();
                        model.retain(|_, &mut (c, _)| c != conn);
                        prop_assert_eq!(a.remove_connection(conn), before - model.len());
                    }
                }
                prop_assert!(a.len() <= capacity);
                prop_assert_eq!(a.len(), model.len());
            }
        }
    }
}
