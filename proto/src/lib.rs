//! The gRPC schema of Agent Protocol v2 (`zentinel.agent.v2`, service `AgentServiceV2`) and
//! conversions between its messages and the core's wire types.
//!
//! - [`v2`]: the prost messages and the tonic client and server generated from `agent_v2.proto`
//!   at build time by protox (a protobuf compiler written in Rust) and tonic-prost-build, so no
//!   `protoc` is needed. Every message, field number and enum value of the reference schema is
//!   kept; fields numbered 100 and up are this implementation's extensions (ignored by reference
//!   peers) for what the reference schema cannot carry. `bytes` fields are [`bytes::Bytes`], so
//!   decoding a body chunk slices the received buffer instead of copying it. The header lists
//!   of `RequestHeadersEvent` and `ResponseHeadersEvent` are generated as [`v2::RawHeader`]:
//!   `Header` with `bytes` for its `string`s, the same bytes on the wire, so a request's header
//!   names and values are slices too rather than a `String` each (the conversion checks their
//!   UTF-8, and an event whose header text is not UTF-8 is malformed, answered fail-closed).
//! - [`convert`]: core <-> proto, moving strings and bytes rather than copying them.
//!
//! ```
//! use agent_protocol_core::{Event, RequestCompleteEvent};
//! use agent_protocol_proto::convert::{event_from_proto, ProxyMessage};
//! use agent_protocol_proto::v2;
//! use prost::Message;
//!
//! let event = Event::RequestComplete(RequestCompleteEvent {
//!     correlation_id: "c1".into(),
//!     status: 200,
//!     upstream_attempts: 2,
//!     ..Default::default()
//! });
//! let wire = v2::ProxyToAgent::from(event.clone()).encode_to_vec();
//! let decoded = v2::ProxyToAgent::decode(wire.as_slice()).unwrap();
//! assert_eq!(event_from_proto(decoded.message.unwrap()).unwrap(), event);
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod convert;

/// Generated from `agent_v2.proto` (package `zentinel.agent.v2`).
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod v2 {
    tonic::include_proto!("zentinel.agent.v2");
}

/// Largest gRPC message either side sends or accepts: 16 MiB, the same bound as a UDS frame.
/// tonic's default receive limit is 4 MiB (the reference runs with it); both the client and
/// the server set this explicitly in both directions.
pub const MAX_MESSAGE_SIZE: usize = 16 * 1024 * 1024;

/// The compiled `agent_v2.proto` as an encoded `FileDescriptorSet` (for gRPC server reflection
/// and schema checks).
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/agent_v2_descriptor.bin"));

/// The service's full name, as it appears in request paths.
pub const SERVICE_NAME: &str = "zentinel.agent.v2.AgentServiceV2";

pub use convert::ConvertError;
/// The protobuf runtime the generated messages use (for `prost::Message` methods such as
/// `encode`, `decode` and `encoded_len` without a separate, version-matched dependency).
pub use prost;
