//! [`ProxyConfig`]: the settings of one proxy-side connection.

use std::time::Duration;

use serde::{Deserialize, Serialize};

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
///
/// Deserializes from a configuration section: keys left out keep their defaults, an unknown key
/// (at any depth) is an error, durations are strings such as `"30s"` or `"250ms"`, and
/// `"ping_interval": null` disables pings. No value needs checking: the setters take any value
/// too, and `max_frame_len` is clamped where the codec uses it.
///
/// ```
/// use std::time::Duration;
/// use agent_protocol_core::proxy::ProxyConfig;
/// let config: ProxyConfig =
///     serde_json::from_str(r#"{"request_timeout": "200ms", "ping_interval": null}"#).unwrap();
/// assert_eq!(config.request_timeout, Duration::from_millis(200));
/// assert_eq!(config.ping_interval, None);
/// assert_eq!(config.max_in_flight, 1024);
/// ```
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct ProxyConfig {
    /// Handshake settings (ids, encodings offered, timeout).
    pub handshake: ProxyHandshakeConfig,
    /// Default per-request deadline, counted from submission.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Ping a connection after this long without hearing from the agent; `None` (or zero)
    /// disables.
    #[serde(with = "humantime_serde")]
    pub ping_interval: Option<Duration>,
    /// After a ping, how long to wait for any sign of life before declaring the peer dead.
    #[serde(with = "humantime_serde")]
    pub ping_timeout: Duration,
    /// Our own cap on requests in flight (the agent's `max_concurrency` may lower it).
    pub max_in_flight: u32,
    /// Cap on written, unsent output of a framed connection ([`ProxyCodec`](super::ProxyCodec));
    /// beyond it events are refused with `SendBufferFull`.
    pub max_send_buffer: usize,
    /// Cap on requests with a tracked body stream (and per-request flow state).
    pub max_body_streams: usize,
    /// Idle body streams are forgotten after this long.
    #[serde(with = "humantime_serde")]
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deserializes_over_its_defaults() {
        let config: ProxyConfig = serde_json::from_str(
            r#"{"request_timeout": "250ms", "ping_interval": "1m 30s", "max_in_flight": 8,
                "handshake": {"proxy_id": "edge-1"}}"#,
        )
        .unwrap();
        assert_eq!(config.request_timeout, Duration::from_millis(250));
        assert_eq!(config.ping_interval, Some(Duration::from_secs(90)));
        let expected = ProxyConfig::default()
            .with_request_timeout(Duration::from_millis(250))
            .with_ping_interval(Some(Duration::from_secs(90)))
            .with_max_in_flight(8)
            .with_handshake(ProxyHandshakeConfig::default().with_proxy_id("edge-1"));
        assert_eq!(format!("{config:?}"), format!("{expected:?}"));

        let off: ProxyConfig = serde_json::from_str(r#"{"ping_interval": null}"#).unwrap();
        assert_eq!(off.ping_interval, None);
    }

    #[test]
    fn unknown_keys_and_bare_numbers_are_refused() {
        let err = serde_json::from_str::<ProxyConfig>(r#"{"request_timeout_ms": 5}"#).unwrap_err();
        assert!(
            err.to_string()
                .contains("unknown field `request_timeout_ms`"),
            "{err}"
        );
        let err = serde_json::from_str::<ProxyConfig>(r#"{"handshake": {"id": "x"}}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field `id`"), "{err}");
        // A number has no unit, and guessing one is how a 30 s timeout becomes 30 ms.
        assert!(serde_json::from_str::<ProxyConfig>(r#"{"ping_timeout": 30}"#).is_err());
        assert!(serde_json::from_str::<ProxyConfig>(r#"{"ping_timeout": "30"}"#).is_err());
    }

    #[test]
    fn round_trips() {
        let config = ProxyConfig::default()
            .with_ping_interval(None)
            .with_body_stream_ttl(Duration::from_millis(1));
        let back: ProxyConfig =
            serde_json::from_value(serde_json::to_value(&config).unwrap()).unwrap();
        assert_eq!(format!("{back:?}"), format!("{config:?}"));
    }
}
