//! The pool's background task: expiry, error-rate decay, dead-connection replacement with
//! backoff, idle cleanup and reopening on demand.
//!
//! It holds only a weak reference to the pool, so dropping the last [`AgentPool`] handle ends
//! it (as does [`AgentPool::shutdown`]).
//!
//! [`AgentPool`]: super::AgentPool
//! [`AgentPool::shutdown`]: super::AgentPool::shutdown

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use agent_protocol_core::pool::Endpoint;
use tokio::sync::{watch, Notify};

use super::entry::{lock, AgentEntry, Origin, PooledConnection};
use super::registry::{deadline_after, open_client, random_u64, wait_for, PoolInner};
use crate::client::ClientConfig;
use crate::runtime::{self, Runtime};

/// A retired (idle) connection is closed no sooner than this after leaving the list, so a
/// request that selected it just before is counted in its pending gauge by then.
const RETIRE_GRACE: Duration = Duration::from_millis(50);

/// Never wake more often than this, whatever the schedules say.
const MIN_GAP: Duration = Duration::from_millis(5);

/// The task body: runs one pass on every tick, on every wake-up, and when a reconnection is due.
pub(super) async fn run<R: Runtime>(
    pool: Weak<PoolInner<R>>,
    mut stop: watch::Receiver<bool>,
    wake: Arc<Notify>,
    tick: Duration,
) {
    let mut next_tick = deadline_after(R::now(), tick);
    let mut next_wake = next_tick;
    loop {
        tokio::select! {
            // A change (shutdown) or an error (the pool was dropped) both end the task.
            _ = stop.changed() => break,
            _ = wake.notified() => {}
            _ = R::sleep_until(next_wake) => {}
        }
        let Some(pool) = pool.upgrade() else { break };
        let now = R::now();
        let full = now >= next_tick;
        if full {
            next_tick = deadline_after(now, tick);
        }
        let retry_at = pool.maintain(now, full);
        drop(pool);
        next_wake = retry_at
            .map_or(next_tick, |t| t.min(next_tick))
            .max(now + MIN_GAP);
    }
    tracing::debug!("agent pool maintenance stopped");
}

impl<R: Runtime> PoolInner<R> {
    /// One pass over every agent. `full` on the periodic tick (expiry, decay, idle cleanup);
    /// every pass prunes dead connections and starts due reconnections. Returns the earliest
    /// time a reconnection becomes due.
    pub(super) fn maintain(&self, now: Instant, full: bool) -> Option<Instant> {
        if full {
            let expired = self.affinity.expire(now);
            if expired > 0 {
                tracing::debug!(expired, "correlation affinities expired");
            }
            lock(&self.agent_metrics).expire(now);
        }
        let agents = self.agents.load_full();
        agents
            .values()
            .filter_map(|entry| self.maintain_agent(entry, now, full))
            .min()
    }

    fn maintain_agent(&self, entry: &Arc<AgentEntry>, now: Instant, full: bool) -> Option<Instant> {
        if entry.removed.load(Ordering::SeqCst) {
            return None;
        }
        if full {
            for c in entry.conns.load().iter() {
                c.errors.tick();
                c.observe_pause(&entry.metrics);
            }
        }
        let endpoint = match &entry.origin {
            Origin::Outbound(ep) => Some(ep),
            Origin::Reverse => None,
        };
        let mut retire: Vec<Arc<PooledConnection>> = Vec::new();
        let mut due: Vec<usize> = Vec::new();
        let mut earliest: Option<Instant> = None;
        {
            let mut slots = entry.lock_slots();
            let dead = entry.prune_dead(&mut slots, R::now());
            if !dead.is_empty() {
                tracing::info!(agent = %entry.id, closed = dead.len(), "dropped closed agent connections");
            }

            // Idle cleanup (outbound only: the pool cannot reopen reverse connections).
            if let (true, Some(_), Some(idle)) = (full, endpoint, self.config.idle_timeout) {
                let live = entry.conns.load_full();
                let mut idle_conns: Vec<(Duration, &Arc<PooledConnection>)> = live
                    .iter()
                    .map(|c| (c.client.status().idle_for(now), c))
                    .filter(|(d, c)| {
                        *d >= idle && c.pending() == 0 && c.client.status().in_flight() == 0
                    })
                    .collect();
                idle_conns.sort_by_key(|c| std::cmp::Reverse(c.0));
                let mut remaining = live.len();
                let mut ids = Vec::new();
                for (_, c) in idle_conns {
                    if remaining <= 1 {
                        break;
                    }
                    remaining -= 1;
                    ids.push(c.id);
                    if let Some(s) = slots.get_mut(c.slot) {
                        s.parked = true;
                    }
                    retire.push(c.clone());
                }
                if !ids.is_empty() {
                    entry.remove_conns(&mut slots, &ids);
                    tracing::debug!(agent = %entry.id, closed = ids.len(), "closing idle agent connections");
                }
            }

            // A request arrived while slots were parked: reopen them now.
            if entry.unpark.swap(false, Ordering::AcqRel) {
                for s in slots.iter_mut() {
                    s.parked = false;
                }
            }
            entry
                .parked
                .store(slots.iter().filter(|s| s.parked).count(), Ordering::Release);

            if endpoint.is_some() && !self.is_closing() {
                let live = entry.conns.load();
                for (i, s) in slots.iter_mut().enumerate() {
                    if s.connecting || s.parked || live.iter().any(|c| c.slot == i) {
                        continue;
                    }
                    if s.schedule.is_due(now) {
                        s.connecting = true;
                        due.push(i);
                    } else if let Some(t) = s.schedule.next_attempt() {
                        earliest = Some(earliest.map_or(t, |e: Instant| e.min(t)));
                    }
                }
            }
        }
        for c in retire {
            R::spawn(retire_connection::<R>(c, self.config.request_timeout));
        }
        if let Some(endpoint) = endpoint {
            for slot in due {
                R::spawn(reconnect(
                    self.weak.clone(),
                    entry.clone(),
                    endpoint.clone(),
                    slot,
                    self.client_config.clone(),
                ));
            }
        }
        earliest
    }
}

/// Reopens one slot; on failure the slot's schedule sets the next attempt (jittered backoff,
/// no limit).
async fn reconnect<R: Runtime>(
    pool: Weak<PoolInner<R>>,
    entry: Arc<AgentEntry>,
    endpoint: Endpoint,
    slot: usize,
    config: ClientConfig<R>,
) {
    let result = open_client(pool.clone(), entry.id.clone(), &endpoint, &config).await;
    let Some(pool) = pool.upgrade() else {
        if let Ok(client) = result {
            client.close().await;
        }
        return;
    };
    let now = R::now();
    let mut unwanted = None;
    {
        let mut slots = entry.lock_slots();
        if let Some(s) = slots.get_mut(slot) {
            s.connecting = false;
        }
        match result {
            Ok(client) if entry.removed.load(Ordering::SeqCst) || pool.is_closing() => {
                unwanted = Some(client);
            }
            Ok(client) => {
                if let Some(s) = slots.get_mut(slot) {
                    s.schedule.record_success();
                }
                let conn = pool.wrap(slot, client);
                entry.install(&mut slots, conn);
                tracing::info!(agent = %entry.id, slot, "agent connection reopened");
            }
            Err(e) => {
                if let Some(s) = slots.get_mut(slot) {
                    let next = s.schedule.record_failure(now, random_u64());
                    let failures = s.schedule.failures();
                    let retry_in = next.saturating_duration_since(now);
                    if failures == 1 {
                        tracing::warn!(agent = %entry.id, slot, error = %e, ?retry_in, "agent reconnection failed");
                    } else {
                        tracing::debug!(agent = %entry.id, slot, failures, error = %e, ?retry_in, "agent reconnection failed");
                    }
                }
            }
        }
    }
    if let Some(client) = unwanted {
        client.close().await;
    }
    // Let the task plan its next wake-up around this slot's new schedule.
    pool.wake.notify_one();
}

/// Closes an idle connection once nothing is pending on it.
async fn retire_connection<R: Runtime>(conn: Arc<PooledConnection>, max_wait: Duration) {
    runtime::sleep::<R>(RETIRE_GRACE).await;
    wait_for::<R>(|| conn.pending() == 0, deadline_after(R::now(), max_wait)).await;
    conn.client.close().await;
}
