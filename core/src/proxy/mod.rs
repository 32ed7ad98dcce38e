//! The proxy side of a connection.
//!
//! - [`ProxyConnection`] is the protocol: a Sans-IO state machine over typed messages
//!   ([`ProxyIncoming`] in, [`ProxyOutgoing`] and [`ProxyEvent`] out) that runs the handshake,
//!   tracks every submitted event as a request with its own [`RequestId`] until it ends exactly
//!   once, and enforces the agent's flow control and limits.
//! - [`ProxyCodec`] is the framing in front of it on byte streams (Unix sockets, TCP, reverse
//!   connections); the gRPC adapter converts the same messages to protobuf instead.
//!
//! What it enforces (`docs/protocol.md` says where the reference proxy differs):
//! answers routed by correlation id in any order; per-request deadlines counted from submission;
//! cancel; pings on idle connections and dead-peer detection; the agent's flow control
//! (pause/resume per connection or per request, byte credit); the agent's `max_concurrency` and
//! `max_body_size`; body chunk sequencing; and on connection loss every pending request fails at
//! once.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use agent_protocol_core::proxy::{ProxyCodec, ProxyConfig, ProxyConnection, ProxyEvent};
//! use agent_protocol_core::*;
//!
//! let now = Instant::now();
//! let config = ProxyConfig::default();
//! let mut codec = ProxyCodec::new(&config);
//! let mut conn = ProxyConnection::new(config, now);
//! while let Some(message) = conn.poll_message() {
//!     codec.encode(message).unwrap();
//! }
//! let hello = codec.poll_transmit().unwrap(); // the 0x01 handshake frame
//! assert_eq!(hello[4], 0x01);
//!
//! // The agent answers the handshake choosing JSON.
//! let answer = serde_json::json!({"protocol_version": 2, "capabilities": {}, "success": true, "encoding": "json"});
//! encoding::encode_frame(codec.read_buffer(), frame::FrameType::HandshakeResponse, Encoding::Json, &answer).unwrap();
//! while let Some(message) = codec.poll_incoming() {
//!     conn.handle_message(now, message.unwrap());
//! }
//! assert!(matches!(conn.poll_event(), Some(ProxyEvent::Connected(_))));
//!
//! // An event is written through the codec, then tracked until it ends.
//! let meta = RequestMetadata { correlation_id: "c1".into(), ..Default::default() };
//! let event = Event::RequestHeaders(RequestHeadersEvent::new(meta, "GET", "/", Headers::new()));
//! let id = conn.send_event(now, event, None, |m| codec.encode(m)).unwrap();
//! assert_eq!(conn.in_flight(), 1);
//! conn.handle_timeout(now + Duration::from_secs(31));
//! match conn.poll_event() {
//!     Some(ProxyEvent::Failed { id: failed, error: RequestError::Timeout(_), .. }) => assert_eq!(failed, id),
//!     other => panic!("{other:?}"),
//! }
//! assert_eq!(conn.in_flight(), 0);
//! ```

mod codec;
mod config;
mod connection;
mod event;
mod flow;
mod message;
mod salvage;

pub use crate::request_id::RequestId;
pub use codec::ProxyCodec;
pub use config::ProxyConfig;
pub use connection::{ConnectionState, ProxyConnection, ProxyStats};
pub use event::ProxyEvent;
pub use message::{ProxyIncoming, ProxyOutgoing};
