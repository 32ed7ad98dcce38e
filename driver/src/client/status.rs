//! [`ConnectionStatus`]: the live state of one client connection, shared with the pool without
//! a lock.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use agent_protocol_core::proxy::ProxyConnection;
use agent_protocol_core::{ConnectionError, HealthState};
use tokio::sync::Notify;

/// Live state of a connection, shared with the pool without a lock.
///
/// ```
/// use agent_protocol_driver::client::ConnectionStatus;
/// let status = ConnectionStatus::new();
/// assert!(!status.is_connected());
/// assert!(status.close_reason().is_none());
/// ```
#[derive(Debug)]
pub struct ConnectionStatus {
    connected: AtomicBool,
    /// Set together with `connected` the first time, never cleared.
    was_connected: AtomicBool,
    paused: AtomicBool,
    health: AtomicU8,
    in_flight: AtomicU32,
    in_flight_limit: AtomicU32,
    last_used_ms: AtomicU64,
    epoch: Instant,
    pub(super) resumed: Notify,
    /// Why the connection ended, set once by its task before it stops taking commands.
    close_reason: OnceLock<ConnectionError>,
}

impl ConnectionStatus {
    /// A fresh status: not connected, healthy, nothing in flight.
    pub fn new() -> Self {
        Self::default()
    }

    /// A fresh status whose idle time counts from `now` (the runtime's clock).
    pub(crate) fn starting_at(now: Instant) -> Self {
        Self {
            epoch: now,
            ..Self::default()
        }
    }
}

impl Default for ConnectionStatus {
    fn default() -> Self {
        Self {
            connected: AtomicBool::new(false),
            was_connected: AtomicBool::new(false),
            paused: AtomicBool::new(false),
            health: AtomicU8::new(HealthState::Healthy.as_u8()),
            in_flight: AtomicU32::new(0),
            in_flight_limit: AtomicU32::new(u32::MAX),
            last_used_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            resumed: Notify::new(),
            close_reason: OnceLock::new(),
        }
    }
}

impl ConnectionStatus {
    /// Whether the connection is open.
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    /// Whether the connection was ever open (handshake done, or a reverse connection's
    /// registration answered): a connection that is not open but was is dead, not starting.
    pub fn was_connected(&self) -> bool {
        self.was_connected.load(Ordering::Acquire)
    }

    pub(crate) fn mark_connected(&self) {
        self.was_connected.store(true, Ordering::Release);
        self.connected.store(true, Ordering::Release);
    }

    /// Why the connection ended, once it did (the peer closed, an I/O error, a ping timeout,
    /// our own close...).
    pub fn close_reason(&self) -> Option<&ConnectionError> {
        self.close_reason.get()
    }

    /// The connection ended for `reason`: it is no longer connected, nothing is in flight, and
    /// whoever waits for a resume wakes up.
    pub(crate) fn mark_closed(&self, reason: ConnectionError) {
        let _ = self.close_reason.set(reason);
        self.connected.store(false, Ordering::Release);
        self.in_flight.store(0, Ordering::Release);
        self.resumed.notify_waiters();
    }

    /// Whether the agent paused it.
    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::Acquire)
    }

    /// Health the agent last reported.
    pub fn health(&self) -> HealthState {
        HealthState::from_u8(self.health.load(Ordering::Acquire))
    }

    /// Requests awaiting answers.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Effective in-flight limit.
    pub fn in_flight_limit(&self) -> u32 {
        self.in_flight_limit.load(Ordering::Acquire)
    }

    /// Time since the connection was last used.
    pub fn idle_for(&self, now: Instant) -> Duration {
        let used = Duration::from_millis(self.last_used_ms.load(Ordering::Relaxed));
        now.saturating_duration_since(self.epoch + used)
    }

    pub(super) fn touch(&self, now: Instant) {
        let ms = now.saturating_duration_since(self.epoch).as_millis() as u64;
        self.last_used_ms.store(ms, Ordering::Relaxed);
    }

    /// Resolves when the agent resumes a paused connection (or it closes).
    pub async fn resumed(&self) {
        self.resumed.notified().await
    }

    /// Copies in-flight count, pause, health and limits from the connection.
    pub(super) fn publish(&self, conn: &ProxyConnection) {
        self.in_flight
            .store(conn.in_flight() as u32, Ordering::Release);
        self.paused.store(conn.is_paused(), Ordering::Release);
        self.health.store(conn.health().as_u8(), Ordering::Release);
        self.in_flight_limit
            .store(conn.in_flight_limit(), Ordering::Release);
    }
}
