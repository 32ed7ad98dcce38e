//! [`ProxyConfig`]: the settings of one proxy-side connection.

use std::time::Duration;

use crate::frame::MAX_FRAME_LEN;
use crate::handshake::ProxyHandshakeConfig;

/// Proxy-side connection settings.
///
/// ```
/// use std::time::Duration;
/// use agent_protocol_core::proxy::ProxyConfig;
/// let config = ProxyConfig::default()
///     .with_request_timeout(Duration::from_millis(200))
///     .with_ping_interval(None);
/// assert_eq!(config.max_in_flight, 1024);
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ProxyConfig {
    /// Handshake settings (ids, encodings offered, timeout).
    pub handshake: ProxyHandshakeConfig,
    /// Default per-request deadline, counted from submission.
    pub request_timeout: Duration,
    /// Ping a connection after this long without hearing from the agent; `None` (or zero)
    /// disables.
    pub ping_interval: Option<Duration>,
    /// After a ping, how long to wait for any sign of life before declaring the peer dead.
    pub ping_timeout: Duration,
    /// Our own cap on requests in flight (the agent's `max_concurrency` may lower it).
    pub max_in_flight: u32,
    /// Cap on written, unsent output of a framed connection ([`ProxyCodec`](super::ProxyCodec));
    /// beyond it events are refused with `SendBufferFull`.
    pub max_send_buffer: usize,
    /// Cap on requests with a tracked body stream (and per-request flow state).
    pub max_body_streams: usize,
    /// Idle body streams are forgotten after this long.
    pub body_stream_ttl: Duration,
    /// Largest frame accepted from the agent.
    pub max_frame_len: u32,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            handshake: ProxyHandshakeConfig::default(),
            request_timeout: Duration::from_secs(30),
            ping_interval: Some(Duration::from_secs(10)),
            ping_timeout: Duration::from_secs(5),
            max_in_flight: 1024,
            max_send_buffer: 32 * 1024 * 1024,
            max_body_streams: 10_000,
            body_stream_ttl: Duration::from_secs(300),
            max_frame_len: MAX_FRAME_LEN,
        }
    }
}

impl ProxyConfig {
    /// Sets [`handshake`](Self::handshake).
    #[must_use]
    pub fn with_handshake(mut self, handshake: ProxyHandshakeConfig) -> Self {
        self.handshake = handshake;
        self
    }

    /// Sets [`request_timeout`](Self::request_timeout).
    #[must_use]
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Sets [`ping_interval`](Self::ping_interval) (`None` disables pings).
    #[must_use]
    pub fn with_ping_interval(mut self, interval: Option<Duration>) -> Self {
        self.ping_interval = interval;
        self
    }

    /// Sets [`ping_timeout`](Self::ping_timeout).
    #[must_use]
    pub fn with_ping_timeout(mut self, timeout: Duration) -> Self {
        self.ping_timeout = timeout;
        self
    }

    /// Sets [`max_in_flight`](Self::max_in_flight).
    #[must_use]
    pub fn with_max_in_flight(mut self, max: u32) -> Self {
        self.max_in_flight = max;
        self
    }

    /// Sets [`max_send_buffer`](Self::max_send_buffer).
    #[must_use]
    pub fn with_max_send_buffer(mut self, bytes: usize) -> Self {
        self.max_send_buffer = bytes;
        self
    }

    /// Sets [`max_body_streams`](Self::max_body_streams).
    #[must_use]
    pub fn with_max_body_streams(mut self, max: usize) -> Self {
        self.max_body_streams = max;
        self
    }

    /// Sets [`body_stream_ttl`](Self::body_stream_ttl).
    #[must_use]
    pub fn with_body_stream_ttl(mut self, ttl: Duration) -> Self {
        self.body_stream_ttl = ttl;
        self
    }

    /// Sets [`max_frame_len`](Self::max_frame_len).
    #[must_use]
    pub fn with_max_frame_len(mut self, max: u32) -> Self {
        self.max_frame_len = max;
        self
    }
}
