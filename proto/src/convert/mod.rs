//! Conversions between the core's wire types and the generated protobuf messages.
//!
//! Core to proto is infallible and consumes its input: strings, maps and body [`Bytes`](bytes::Bytes) are
//! moved, never copied (headers through [`Headers::into_flat`], which clones a name only for its
//! second and later values). Proto to core checks what protobuf cannot express (a status code or
//! port above `u16::MAX`, a missing decision, JSON text that does not parse) and fails with a
//! [`ConvertError`] that keeps the correlation id when there is one, so the receiver can fail or
//! answer just that request.
//!
//! What the reference schema cannot carry travels in the extension fields (numbers 100 and up,
//! see `agent_v2.proto`), so that for every message core -> proto -> core is the identity, with
//! these documented normalisations:
//! - a RequestHeaders event has one correlation id on gRPC (`metadata.correlation_id`): the
//!   top-level id is sent and both fields read back as it;
//! - a header name listed with no value cannot be expressed as `(name, value)` pairs and is
//!   dropped;
//! - JSON values (audit custom values, configurations, rule definitions) travel as JSON text:
//!   `audit.custom` values are the JSON text of each value, exactly as the reference agent writes
//!   them, so strings come back as strings and numbers as numbers (the reference proxy instead
//!   wraps the text in another string); text that is not JSON, as a third-party agent might
//!   send, is read as a JSON string.
//!
//! [`Headers::into_flat`]: agent_protocol_core::Headers::into_flat

// One file per concept, each with both directions:
// - headers:   header lists;
// - time:      RFC 3339 and the metadata timestamp;
// - event:     the proxy's events;
// - handshake: handshake and capabilities;
// - control:   cancel, ping, pong, health, flow control, metrics, config updates;
// - response:  the agent's answer;
// - message:   whole messages (the oneofs of both streams).
// This file keeps the error and the helpers they share.

mod control;
mod event;
mod handshake;
mod headers;
mod message;
mod response;
mod time;

pub use control::{ping_of, pong_for};
pub use event::event_from_proto;
pub use message::{agent_outgoing_to_proto, AgentMessage, ProxyMessage};
pub use response::{response_from_proto, response_to_proto};
pub use time::rfc3339_millis;

/// A protobuf message that has no faithful core equivalent.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid {message}: {reason}")]
pub struct ConvertError {
    /// The protobuf message at fault.
    pub message: &'static str,
    /// What was wrong.
    pub reason: String,
    /// The correlation id it carried, when it has one and it could be read.
    pub correlation_id: Option<String>,
}

impl ConvertError {
    fn new(message: &'static str, reason: impl Into<String>) -> Self {
        Self {
            message,
            reason: reason.into(),
            correlation_id: None,
        }
    }

    fn with_id(mut self, correlation_id: &str) -> Self {
        if !correlation_id.is_empty() {
            self.correlation_id = Some(correlation_id.to_owned());
        }
        self
    }
}

/// Bytes decoded from a message, in an allocation of their own. prost hands `bytes` fields over
/// as slices of the buffer tonic read the message into, which grows to the largest message the
/// stream has carried: kept as they are, a one-byte body chunk held by a handler would keep
/// megabytes alive while weighing one byte. This copy is the payload's one copy on this side (a
/// framed transport copies out of its read buffer alike).
fn owned(bytes: bytes::Bytes) -> bytes::Bytes {
    bytes::Bytes::copy_from_slice(&bytes)
}

fn u16_field(message: &'static str, field: &str, value: u32) -> Result<u16, ConvertError> {
    u16::try_from(value)
        .map_err(|_| ConvertError::new(message, format!("{field} {value} is above 65535")))
}

/// Reads JSON text; empty text is `null`.
fn json_text(message: &'static str, text: &str) -> Result<serde_json::Value, ConvertError> {
    if text.is_empty() {
        return Ok(serde_json::Value::Null);
    }
    serde_json::from_str(text).map_err(|e| ConvertError::new(message, format!("bad JSON: {e}")))
}
