//! [`AgentConfig`]: what one agent connection accepts and how much it holds.

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
/// ```
/// use agent_protocol_core::agent::AgentConfig;
/// let mut config = AgentConfig::default();
/// config.max_in_flight = 64; // answer the 65th concurrent event with a 503 block
/// ```
#[derive(Clone, Debug)]
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
