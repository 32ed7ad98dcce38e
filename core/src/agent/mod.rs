//! The agent side of a connection.
//!
//! - [`AgentConnection`] is the protocol: a Sans-IO state machine over typed messages
//!   ([`AgentIncoming`] in, [`AgentOutgoing`] and [`AgentEvent`] out) that answers the handshake,
//!   hands every event to the application as a request with its own [`RequestId`], honours
//!   cancels, bounds what it tracks and answers fail-closed whatever it cannot hand over.
//! - [`AgentCodec`] is the framing in front of it on byte streams (Unix sockets, TCP, reverse
//!   connections); the gRPC adapter converts the same messages to protobuf instead.
//! - [`fail_closed`](unsendable_answer) answers: the blocks, and their reason codes, that an
//!   agent sends on its own.
//!
//! What it does for the agent (see `docs/protocol.md`):
//! - turns every event 0x10..=0x17, GuardrailInspect and Configure included, into an
//!   [`AgentEvent::Request`]; the application answers each with [`AgentConnection::respond`]
//!   exactly once, in any order and concurrently: nothing waits behind an unanswered request;
//! - answers an undecodable event whose id can be salvaged with a *block* (HTTP 500,
//!   [`MALFORMED_EVENT_REASON`]), never an allow, and closes the connection when not even the id
//!   can be read, so the proxy fails everything at once instead of waiting out timeouts;
//! - honours Cancel: the request is dropped, reported as [`AgentEvent::Cancelled`], and a later
//!   answer for it is refused and never sent;
//! - echoes Ping as Pong immediately, never behind a slow request;
//! - bounds what it tracks: beyond [`AgentConfig::max_in_flight`] unanswered requests, a new
//!   event is answered at once with a block (HTTP 503, [`AGENT_OVERLOADED_REASON`]), and it
//!   weighs the events it tracks ([`AgentConnection::in_flight_bytes`]) so the adapter can stop
//!   reading while the application holds too much.

mod codec;
mod config;
mod connection;
mod error;
mod event;
mod fail_closed;
mod message;
#[cfg(test)]
mod tests;

pub use crate::request_id::RequestId;
pub use codec::{AgentCodec, Unsent};
pub use config::{AgentConfig, DEFAULT_MAX_IN_FLIGHT, MAX_QUEUED_NOTICES};
pub use connection::AgentConnection;
pub use error::{RespondError, SendError};
pub use event::AgentEvent;
pub use fail_closed::{
    handler_failed_answer, unsendable_answer, AGENT_OVERLOADED_REASON, HANDLER_FAILED_REASON,
    HANDSHAKE_REQUIRED_REASON, HEADER_LIMIT_REASON, MALFORMED_EVENT_REASON,
    MESSAGE_TOO_COMPLEX_REASON, RESPONSE_TOO_LARGE_REASON, RESPONSE_UNENCODABLE_REASON,
};
pub use message::{AgentIncoming, AgentOutgoing};
