//! Body-chunk sequencing on the proxy side: per request and direction, chunk indexes start at 0
//! and are contiguous, nothing follows `is_last`, and byte totals add up.
//!
//! The sequencer *computes* the running byte count (`bytes_received` / `bytes_sent`) rather
//! than trusting the caller's, so what reaches the agent is always consistent, and it checks a
//! declared `total_size` against what was actually sent. The table is bounded; streams stay only
//! until [`BodySequencer::forget`] (whenever the request ends: RequestComplete, a final answer,
//! timeout, cancel, failure, or the caller ending it) or idle expiry.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use foldhash::{HashMap, HashMapExt};

/// Which body.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Request body (0x11).
    Request,
    /// Response body (0x13).
    Response,
}

/// A chunk that breaks the sequence.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SequenceError {
    /// Index not the next expected.
    #[error("{direction:?} body chunk {got} out of sequence (expected {expected})")]
    OutOfOrder {
        /// Body.
        direction: Direction,
        /// Expected index.
        expected: u32,
        /// Index given.
        got: u32,
    },
    /// A chunk after the one marked `is_last`.
    #[error("{direction:?} body chunk {got} sent after the last chunk")]
    AfterLast {
        /// Body.
        direction: Direction,
        /// Index given.
        got: u32,
    },
    /// The declared total size disagrees with the bytes sent.
    #[error("{direction:?} body declared total_size {declared} but {actual} bytes were sent")]
    SizeMismatch {
        /// Body.
        direction: Direction,
        /// Declared.
        declared: u64,
        /// Sent so far (including this chunk).
        actual: u64,
    },
}

#[derive(Clone, Debug)]
struct StreamState {
    next_index: u32,
    bytes: u64,
    total_size: Option<u64>,
    finished: bool,
    last_activity: Instant,
}

/// What a checked chunk should carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Admitted {
    /// Running total including this chunk (to put in `bytes_received` / `bytes_sent`).
    pub bytes_transferred: u64,
}

/// Tracks body streams.
///
/// ```
/// use std::time::Instant;
/// use agent_protocol_core::body_sequence::{BodySequencer, Direction};
/// let mut seq = BodySequencer::new(16);
/// let now = Instant::now();
/// let key = ("c1", Direction::Request);
/// let first = seq.check(key.0, key.1, 0, 10, false, None, now).unwrap();
/// seq.commit(key.0, key.1, 0, 10, false, None, now);
/// assert_eq!(first.bytes_transferred, 10);
/// assert!(seq.check(key.0, key.1, 2, 10, false, None, now).is_err()); // skipped index 1
/// ```
#[derive(Debug)]
pub struct BodySequencer {
    /// Keyed by correlation id alone so lookups borrow the caller's `&str` (no allocation per
    /// chunk); both directions share the entry.
    streams: HashMap<String, [Option<StreamState>; 2]>,
    capacity: usize,
    /// Requests whose streams have all ended, oldest first: they only guard against chunks
    /// after `is_last`, so they are the first to go when the table is full (entries may be
    /// stale, i.e. already forgotten; they are skipped).
    finished: VecDeque<String>,
}

fn all_finished(pair: &[Option<StreamState>; 2]) -> bool {
    pair.iter().flatten().all(|s| s.finished) && pair.iter().any(Option::is_some)
}

fn slot(direction: Direction) -> usize {
    match direction {
        Direction::Request => 0,
        Direction::Response => 1,
    }
}

/// Result of [`BodySequencer::check`] when the table is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TableFull(pub usize);

impl BodySequencer {
    /// A sequencer tracking at most `capacity` streams.
    pub fn new(capacity: usize) -> Self {
        Self {
            streams: HashMap::new(),
            capacity,
            finished: VecDeque::new(),
        }
    }

    /// Requests with a tracked body stream.
    pub fn len(&self) -> usize {
        self.streams.len()
    }

    /// Whether nothing is tracked.
    pub fn is_empty(&self) -> bool {
        self.streams.is_empty()
    }

    /// Validates a chunk without recording it. `Err(Ok(_))` is a sequence error,
    /// `Err(Err(TableFull))` means a new stream cannot be tracked.
    #[allow(clippy::too_many_arguments)]
    pub fn check(
        &self,
        correlation_id: &str,
        direction: Direction,
        chunk_index: u32,
        len: usize,
        is_last: bool,
        total_size: Option<u64>,
        _now: Instant,
    ) -> Result<Admitted, Result<SequenceError, TableFull>> {
        let entry = self.streams.get(correlation_id);
        let state = entry.and_then(|e| e[slot(direction)].as_ref());
        let (expected, bytes, declared) = match state {
            Some(s) if s.finished => {
                return Err(Ok(SequenceError::AfterLast {
                    direction,
                    got: chunk_index,
                }))
            }
            Some(s) => (s.next_index, s.bytes, s.total_size.or(total_size)),
            None => {
                if entry.is_none() && self.streams.len() >= self.capacity && !self.has_evictable() {
                    return Err(Err(TableFull(self.capacity)));
                }
                (0, 0, total_size)
            }
        };
        if chunk_index != expected {
            return Err(Ok(SequenceError::OutOfOrder {
                direction,
                expected,
                got: chunk_index,
            }));
        }
        let actual = bytes.saturating_add(len as u64);
        if let Some(declared) = declared {
            if actual > declared || (is_last && actual != declared) {
                return Err(Ok(SequenceError::SizeMismatch {
                    direction,
                    declared,
                    actual,
                }));
            }
        }
        Ok(Admitted {
            bytes_transferred: actual,
        })
    }

    /// Records a chunk that [`BodySequencer::check`] admitted and that was sent.
    #[allow(clippy::too_many_arguments)]
    pub fn commit(
        &mut self,
        correlation_id: &str,
        direction: Direction,
        chunk_index: u32,
        len: usize,
        is_last: bool,
        total_size: Option<u64>,
        now: Instant,
    ) {
        let fresh = StreamState {
            next_index: 0,
            bytes: 0,
            total_size: None,
            finished: false,
            last_activity: now,
        };
        if !self.streams.contains_key(correlation_id) && self.streams.len() >= self.capacity {
            self.evict_one_finished();
        }
        let entry = match self.streams.get_mut(correlation_id) {
            Some(e) => e,
            None => self
                .streams
                .entry(correlation_id.to_owned())
                .or_insert([None, None]),
        };
        let state = entry[slot(direction)].get_or_insert(fresh);
        state.next_index = chunk_index.saturating_add(1);
        state.bytes = state.bytes.saturating_add(len as u64);
        state.total_size = state.total_size.or(total_size);
        state.finished = is_last;
        state.last_activity = now;
        if is_last && all_finished(entry) {
            self.finished.push_back(correlation_id.to_owned());
            // Forgotten streams leave stale names behind; sweep them once the queue outgrows the
            // table (amortised O(1) per push) so it stays bounded.
            if self.finished.len() > 2 * self.capacity.max(16) {
                let streams = &self.streams;
                self.finished
                    .retain(|cid| streams.get(cid).is_some_and(all_finished));
            }
        }
    }

    fn has_evictable(&self) -> bool {
        self.finished
            .iter()
            .any(|cid| self.streams.get(cid).is_some_and(all_finished))
    }

    fn evict_one_finished(&mut self) {
        while let Some(cid) = self.finished.pop_front() {
            if self.streams.get(&cid).is_some_and(all_finished) {
                self.streams.remove(&cid);
                return;
            }
        }
    }

    /// Drops both streams of a request; returns whether it had any.
    pub fn forget(&mut self, correlation_id: &str) -> bool {
        let had = self.streams.remove(correlation_id).is_some();
        if self.streams.is_empty() {
            self.finished.clear();
        }
        had
    }

    /// Drops streams idle for longer than `ttl`; returns how many.
    pub fn expire(&mut self, now: Instant, ttl: Duration) -> usize {
        let streams = &self.streams;
        self.finished.retain(|cid| streams.contains_key(cid));
        let before = self.streams.len();
        self.streams.retain(|_, pair| {
            pair.iter()
                .flatten()
                .any(|s| now.saturating_duration_since(s.last_activity) < ttl)
        });
        before - self.streams.len()
    }

    /// Earliest time a stream could expire.
    pub fn next_expiry(&self, ttl: Duration) -> Option<Instant> {
        self.streams
            .values()
            .flat_map(|pair| pair.iter().flatten())
            .map(|s| s.last_activity + ttl)
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_after_last_and_sizes_add_up() {
        let mut s = BodySequencer::new(4);
        let now = Instant::now();
        let d = Direction::Response;
        assert!(s.check("a", d, 0, 5, false, Some(8), now).is_ok());
        s.commit("a", d, 0, 5, false, Some(8), now);
        assert_eq!(
            s.check("a", d, 1, 2, true, None, now),
            Err(Ok(SequenceError::SizeMismatch {
                direction: d,
                declared: 8,
                actual: 7
            }))
        );
        assert_eq!(
            s.check("a", d, 1, 3, true, None, now)
                .unwrap()
                .bytes_transferred,
            8
        );
        s.commit("a", d, 1, 3, true, None, now);
        assert_eq!(
            s.check("a", d, 2, 0, true, None, now),
            Err(Ok(SequenceError::AfterLast {
                direction: d,
                got: 2
            }))
        );
        s.forget("a");
        assert!(s.is_empty());
    }

    #[test]
    fn finished_streams_make_room_for_new_ones() {
        let mut s = BodySequencer::new(2);
        let now = Instant::now();
        s.commit("done", Direction::Request, 0, 1, true, None, now);
        s.commit("open", Direction::Request, 0, 1, false, None, now);
        // Full, but "done" only guards against late chunks: it gives way.
        assert!(s
            .check("new", Direction::Request, 0, 1, false, None, now)
            .is_ok());
        s.commit("new", Direction::Request, 0, 1, false, None, now);
        assert_eq!(s.len(), 2);
        assert!(s
            .check("open", Direction::Request, 1, 1, false, None, now)
            .is_ok());
        // Now nothing is finished: a fourth stream does not fit.
        assert_eq!(
            s.check("more", Direction::Request, 0, 1, false, None, now),
            Err(Err(TableFull(2)))
        );
    }

    #[test]
    fn bounded_and_expiring() {
        let mut s = BodySequencer::new(1);
        let now = Instant::now();
        s.commit("a", Direction::Request, 0, 1, false, None, now);
        assert_eq!(
            s.check("b", Direction::Request, 0, 1, false, None, now),
            Err(Err(TableFull(1)))
        );
        assert_eq!(
            s.expire(now + Duration::from_secs(61), Duration::from_secs(60)),
            1
        );
        assert!(s
            .check("b", Direction::Request, 0, 1, false, None, now)
            .is_ok());
    }
}
