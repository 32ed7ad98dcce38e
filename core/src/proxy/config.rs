//! [`ProxyConfig`]: the settings of one proxy-side connection.

use std::time::Duration;

use crate::frame::MAX_FRAME_LEN;
use crate::handshake::ProxyHandshakeConfig;

/// Proxy-side connection settings.
///
/// ```
/// use std::time::Duration;
/// use agent_protocol_core::proxy::ProxyConfig;
/// let mut config = ProxyConfig::default();
/// config.request_timeout = Duration::from_millis(200);
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
