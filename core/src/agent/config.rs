//! [`AgentConfig`]: what one agent connection accepts and how much it holds.

use serde::{Deserialize, Serialize};

use crate::frame::MAX_FRAME_LEN;
use crate::handshake::AgentHandshakeConfig;
use crate::limits::{HeaderLimits, DEFAULT_MAX_ELEMENTS};

/// Default bound on requests tracked at once ([`AgentConfig::max_in_flight`]).
pub const DEFAULT_MAX_IN_FLIGHT: usize = 4096;

/// Informational events ([`AgentEvent::Ignored`](super::AgentEvent::Ignored),
/// [`AgentEvent::MalformedEvent`](super::AgentEvent::MalformedEvent),
/// [`AgentEvent::Overloaded`](super::AgentEvent::Overloaded)) are dropped, and counted in
/// [`AgentConnection::notices_dropped`](super::AgentConnection::notices_dropped), while this many
/// events wait to be polled, so an adapter that feeds input without polling cannot be made to
/// queue notices without bound. Requests, cancellations and the close are never dropped.
pub const MAX_QUEUED_NOTICES: usize = 1024;

/// Settings of an [`AgentConnection`](super::AgentConnection) and of the
/// [`AgentCodec`](super::AgentCodec) in front of it.
///
/// Built from [`Default`] and the `with_*` setters (fields may be added in any release, so the
/// struct cannot be built literally outside this crate); the fields stay public to read and set.
///
/// ```
/// use agent_protocol_core::agent::AgentConfig;
/// // Answer the 65th concurrent event with a 503 block.
/// let config = AgentConfig::default().with_max_in_flight(64);
/// assert_eq!(config.max_in_flight, 64);
/// ```
///
/// Deserializes from a configuration section: keys left out keep their defaults, an unknown key
/// (at any depth) is an error, durations are strings such as `"5s"`. No value needs checking:
/// `max_frame_len` is clamped where the codec uses it, as with the setter.
///
/// ```
/// use agent_protocol_core::agent::AgentConfig;
/// let config: AgentConfig =
///     serde_json::from_str(r#"{"max_in_flight": 64, "handshake": {"timeout": "2s"}}"#).unwrap();
/// assert_eq!(config.max_in_flight, 64);
/// assert_eq!(config.max_elements, AgentConfig::default().max_elements);
/// ```
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct AgentConfig {
    /// Handshake settings: capabilities announced, encodings supported, deadline. A transport
    /// that encodes messages itself (gRPC) offers only [`Encoding::Json`](crate::Encoding::Json)
    /// here, its nominal encoding.
    pub handshake: AgentHandshakeConfig,
    /// Largest frame length prefix accepted by the framed codec (clamped to [`MAX_FRAME_LEN`]).
    pub max_frame_len: u32,
    /// Largest number of unanswered requests tracked at once. An event beyond it is answered
    /// immediately with a block (503, [`AGENT_OVERLOADED_REASON`](super::AGENT_OVERLOADED_REASON)).
    /// Zero refuses every event.
    pub max_in_flight: usize,
    /// Header values and bytes one event may carry; an event over them is answered with a block
    /// (431, [`HEADER_LIMIT_REASON`](super::HEADER_LIMIT_REASON)). The framed codec checks them
    /// while decoding, before anything over them is allocated.
    pub header_limits: HeaderLimits,
    /// Array items plus map entries one event may carry, anywhere in it (see
    /// [`MessageLimits::max_elements`](crate::limits::MessageLimits::max_elements)), counted by
    /// the framed codec before it decodes; an event over it is answered with a block (413,
    /// [`MESSAGE_TOO_COMPLEX_REASON`](super::MESSAGE_TOO_COMPLEX_REASON)) without being decoded.
    /// Default [`DEFAULT_MAX_ELEMENTS`].
    pub max_elements: usize,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            handshake: AgentHandshakeConfig::default(),
            max_frame_len: MAX_FRAME_LEN,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            header_limits: HeaderLimits::default(),
            max_elements: DEFAULT_MAX_ELEMENTS,
        }
    }
}

impl AgentConfig {
    /// Sets [`handshake`](Self::handshake): capabilities, encodings and deadline of the handshake.
    #[must_use]
    pub fn with_handshake(mut self, handshake: AgentHandshakeConfig) -> Self {
        self.handshake = handshake;
        self
    }

    /// Sets [`max_frame_len`](Self::max_frame_len), the largest frame accepted.
    #[must_use]
    pub fn with_max_frame_len(mut self, max_frame_len: u32) -> Self {
        self.max_frame_len = max_frame_len;
        self
    }

    /// Sets [`max_in_flight`](Self::max_in_flight), the unanswered requests tracked at once.
    #[must_use]
    pub fn with_max_in_flight(mut self, max_in_flight: usize) -> Self {
        self.max_in_flight = max_in_flight;
        self
    }

    /// Sets [`header_limits`](Self::header_limits), the headers one event may carry.
    #[must_use]
    pub fn with_header_limits(mut self, header_limits: HeaderLimits) -> Self {
        self.header_limits = header_limits;
        self
    }

    /// Sets [`max_elements`](Self::max_elements), the array items plus map entries of one event.
    #[must_use]
    pub fn with_max_elements(mut self, max_elements: usize) -> Self {
        self.max_elements = max_elements;
        self
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::Encoding;

    #[test]
    fn deserializes_over_its_defaults() {
        let config: AgentConfig = serde_json::from_str(
            r#"{"max_in_flight": 64, "header_limits": {"max_count": 100},
                "handshake": {"timeout": "250ms", "encodings": ["json"]}}"#,
        )
        .unwrap();
        assert_eq!(config.max_in_flight, 64);
        assert_eq!(config.handshake.timeout, Duration::from_millis(250));
        let expected = AgentConfig::default()
            .with_max_in_flight(64)
            .with_header_limits(HeaderLimits::default().with_max_count(100))
            .with_handshake(
                AgentHandshakeConfig::default()
                    .with_timeout(Duration::from_millis(250))
                    .with_encodings([Encoding::Json]),
            );
        assert_eq!(format!("{config:?}"), format!("{expected:?}"));
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = serde_json::from_str::<AgentConfig>(r#"{"max_inflight": 1}"#).unwrap_err();
        assert!(
            err.to_string().contains("unknown field `max_inflight`"),
            "{err}"
        );
        let err =
            serde_json::from_str::<AgentConfig>(r#"{"header_limits": {"count": 1}}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field `count`"), "{err}");
    }

    #[test]
    fn round_trips() {
        let config = AgentConfig::default().with_max_elements(10);
        let back: AgentConfig =
            serde_json::from_value(serde_json::to_value(&config).unwrap()).unwrap();
        assert_eq!(format!("{back:?}"), format!("{config:?}"));
    }
}
