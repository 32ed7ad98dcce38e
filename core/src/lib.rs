//! Sans-IO core of Agent Protocol v2.
// One audited exception: `ByteStr::from_str_bytes` (strings sliced from a payload the decoder
// already checked as UTF-8 are not checked twice).
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod agent;
pub mod body;
pub mod body_sequence;
mod byte_str;
pub mod capabilities;
pub mod control;
pub mod element_count;
pub mod encoding;
pub mod error;
pub mod event;
pub mod frame;
mod framed_io;
pub mod handshake;
pub mod headers;
pub mod health;
mod json_agent_response;
mod json_request_headers;
pub mod limits;
pub mod metrics;
pub mod msgpack;
pub mod pool;
pub mod proxy;
pub mod registration;
pub mod repeated_id;
mod request_headers_reader;
mod request_id;
pub mod response;
mod response_wire;
mod shared_frame;
mod simple_allow;
#[cfg(any(test, feature = "test-util"))]
pub mod testing;

pub use agent::{
    AgentCodec, AgentConfig, AgentConnection, AgentEvent, AgentIncoming, AgentOutgoing, RequestId,
    RespondError, SendError,
};
pub use byte_str::ByteStr;
pub use capabilities::{Capabilities, EventKind, EventSet, Features, Limits};
pub use control::{
    Cancel, CancelReason, ConfigUpdateRequest, ConfigUpdateResponse, ConfigUpdateType, FlowAction,
    FlowControl, HealthStatus, MetricsReport, Ping,
};
pub use encoding::{DecodeError, EncodeError, Encoding};
pub use error::{ConnectionError, Fault, RequestError, SubmitError};
pub use event::{
    BodyChunk, ConfigureEvent, Event, GuardrailInspectEvent, GuardrailInspectionType,
    RequestBodyChunkEvent, RequestCompleteEvent, RequestHeadersEvent, RequestMetadata,
    ResponseBodyChunkEvent, ResponseHeadersEvent, WebSocketFrameEvent, WebSocketOpcode,
};
pub use headers::{HeaderEntries, HeaderValues, Headers};
pub use health::HealthState;
pub use response::{
    AgentResponse, AuditMetadata, BodyMutation, Decision, GuardrailDetection, GuardrailResponse,
    GuardrailSeverity, HeaderOp, WebSocketDecision,
};
