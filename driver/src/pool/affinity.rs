//! The pool's correlation-affinity table, striped over a few mutexes so no single lock sits on
//! every request.
//!
//! Each stripe is a core [`AffinityTable`] keyed by (agent index, correlation id); a key always
//! hashes to the same stripe. The capacity is divided evenly between stripes, so with a very
//! uneven key distribution one stripe can refuse an entry slightly before the whole table is
//! full (the refusal is counted; the request still goes out, only its chunks lose affinity).

use std::hash::BuildHasher;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use agent_protocol_core::pool::{AffinityFull, AffinityTable};
use agent_protocol_core::ByteStr;
use foldhash::fast::RandomState;

/// A connection's pool-wide id.
pub(crate) type ConnId = u64;

/// Most stripes; fewer when the capacity is tiny.
const MAX_STRIPES: usize = 16;

pub(crate) struct ShardedAffinity {
    stripes: Box<[Mutex<AffinityTable<ConnId>>]>,
    hasher: RandomState,
}

impl ShardedAffinity {
    pub(crate) fn new(capacity: usize, ttl: Duration) -> Self {
        let n = capacity.clamp(1, MAX_STRIPES);
        let per = capacity.div_ceil(n);
        let stripes = (0..n)
            .map(|_| Mutex::new(AffinityTable::with_limits(per, ttl)))
            .collect();
        Self {
            stripes,
            hasher: RandomState::default(),
        }
    }

    fn stripe(&self, agent: u32, cid: &str) -> MutexGuard<'_, AffinityTable<ConnId>> {
        let i = if self.stripes.len() == 1 {
            0
        } else {
            (self.hasher.hash_one((agent, cid)) % self.stripes.len() as u64) as usize
        };
        // A panic while holding a stripe cannot leave the table inconsistent in a way that
        // matters (every operation is a single map update), so poisoning is ignored.
        match self.stripes[i].lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    fn each(&self, mut f: impl FnMut(&mut AffinityTable<ConnId>)) {
        for s in self.stripes.iter() {
            let mut g = match s.lock() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            f(&mut g);
        }
    }

    pub(crate) fn insert(
        &self,
        agent: u32,
        cid: impl Into<ByteStr>,
        conn: ConnId,
        now: Instant,
    ) -> Result<(), AffinityFull> {
        let cid = cid.into();
        self.stripe(agent, &cid).insert(agent, cid, conn, now)
    }

    pub(crate) fn get(&self, agent: u32, cid: &str, now: Instant) -> Option<ConnId> {
        self.stripe(agent, cid).get(agent, cid, now)
    }

    pub(crate) fn remove_entry(&self, agent: u32, cid: &str) -> Option<(ByteStr, ConnId)> {
        self.stripe(agent, cid).remove_entry(agent, cid)
    }

    pub(crate) fn remove(&self, agent: u32, cid: &str) -> Option<ConnId> {
        self.stripe(agent, cid).remove(agent, cid)
    }

    pub(crate) fn expire(&self, now: Instant) -> usize {
        let mut n = 0;
        self.each(|t| n += t.expire(now));
        n
    }

    pub(crate) fn remove_agent(&self, agent: u32) -> usize {
        let mut n = 0;
        self.each(|t| n += t.remove_agent(agent));
        n
    }

    pub(crate) fn clear(&self) {
        self.each(|t| t.clear());
    }

    pub(crate) fn len(&self) -> usize {
        let mut n = 0;
        self.each(|t| n += t.len());
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stripes_keep_keys_apart() {
        let t = ShardedAffinity::new(1000, Duration::from_secs(60));
        let now = std::time::Instant::now();
        for i in 0..200u64 {
            t.insert((i % 3) as u32, format!("c{i}"), i, now).unwrap();
        }
        assert_eq!(t.len(), 200);
        assert_eq!(t.get(1, "c1", now), Some(1));
        assert_eq!(t.get(2, "c1", now), None);
        assert_eq!(t.remove(1, "c1"), Some(1));
        assert_eq!(t.get(1, "c1", now), None);
        let removed = t.remove_agent(0);
        assert_eq!(removed, 67);
        assert_eq!(t.expire(now + Duration::from_secs(61)), 132);
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn tiny_capacity_is_one_stripe() {
        let t = ShardedAffinity::new(1, Duration::from_secs(60));
        let now = std::time::Instant::now();
        t.insert(0, "a", 1, now).unwrap();
        assert!(t.insert(0, "b", 2, now).is_err());
        t.clear();
        assert_eq!(t.len(), 0);
    }
}
