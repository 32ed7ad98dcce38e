//! Payload encodings (PROTOCOL.md §4): JSON, and MessagePack when negotiated.
//!
//! We write MessagePack as named maps (`rmp_serde` struct-map mode, bytes as `bin`, no duplicate
//! keys) and read it with the lenient decoder in [`crate::msgpack`], which also takes the
//! reference's positional arrays and duplicated keys. A payload that starts with `{` in a
//! MessagePack session is JSON: the reference proxy always sends Cancel and Ping as JSON, and a
//! bare MessagePack integer 123 (the byte `{`) is never a valid message, so the sniff is
//! unambiguous.

use std::fmt;

use bytes::{BufMut, BytesMut};
use serde::{Deserialize, Serialize};

use crate::event::{
    ConfigureEvent, Event, GuardrailInspectEvent, RequestBodyChunkEvent, RequestCompleteEvent,
    RequestHeadersEvent, ResponseBodyChunkEvent, ResponseHeadersEvent, WebSocketFrameEvent,
};
use crate::frame::{FrameType, FrameWriter, PayloadTooLarge};

/// A payload encoding.
///
/// ```
/// use agent_protocol_core::Encoding;
/// assert_eq!(Encoding::from_name("msgpack"), Some(Encoding::MsgPack));
/// assert_eq!(Encoding::from_name("cbor"), None);
/// assert_eq!(Encoding::Json.as_str(), "json");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Encoding {
    /// JSON (always supported; the handshake itself is JSON).
    #[default]
    Json,
    /// MessagePack.
    #[serde(rename = "msgpack")]
    MsgPack,
}

impl Encoding {
    /// Wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Json => "json",
            Self::MsgPack => "msgpack",
        }
    }

    /// Parses a wire name; unknown names give `None` (and are ignored in negotiation).
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "json" => Some(Self::Json),
            "msgpack" => Some(Self::MsgPack),
            _ => None,
        }
    }
}

impl fmt::Display for Encoding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A value could not be encoded. Local fault: nothing was written.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// The serializer refused the value.
    #[error("cannot encode {frame_type:?} as {encoding}: {message}")]
    Serialize {
        /// Frame being built.
        frame_type: FrameType,
        /// Encoding in use.
        encoding: Encoding,
        /// Serializer message.
        message: String,
    },
    /// The encoded payload exceeds the frame limit.
    #[error(transparent)]
    TooLarge(#[from] PayloadTooLarge),
}

/// A payload could not be decoded: the peer's fault, fatal only for what it carried.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("malformed {frame_type:?} payload ({encoding}): {message}")]
pub struct DecodeError {
    /// Frame being decoded.
    pub frame_type: FrameType,
    /// Encoding tried.
    pub encoding: Encoding,
    /// What was wrong.
    pub message: String,
}

/// Appends one frame carrying `value` in `encoding` to `out`. On error `out` is unchanged.
///
/// ```
/// use agent_protocol_core::{encoding::encode_frame, Encoding, Ping};
/// use agent_protocol_core::frame::FrameType;
/// let mut out = bytes::BytesMut::new();
/// encode_frame(&mut out, FrameType::Ping, Encoding::Json, &Ping { sequence: 0, timestamp_ms: 1 }).unwrap();
/// assert_eq!(&out[5..], br#"{"sequence":0,"timestamp_ms":1}"#);
/// ```
pub fn encode_frame<T: Serialize + ?Sized>(
    out: &mut BytesMut,
    frame_type: FrameType,
    encoding: Encoding,
    value: &T,
) -> Result<(), EncodeError> {
    let mut frame = FrameWriter::begin(out, frame_type);
    let result = match encoding {
        Encoding::Json => {
            serde_json::to_writer(frame.payload().writer(), value).map_err(|e| e.to_string())
        }
        Encoding::MsgPack => {
            let mut w = frame.payload().writer();
            rmp_serde::encode::write_named(&mut w, value).map_err(|e| e.to_string())
        }
    };
    match result {
        Ok(()) => Ok(frame.finish()?),
        Err(message) => {
            frame.abort();
            Err(EncodeError::Serialize {
                frame_type,
                encoding,
                message,
            })
        }
    }
}

/// Decodes a payload of `frame_type` sent in `encoding`.
pub fn decode_payload<'a, T: Deserialize<'a>>(
    frame_type: FrameType,
    encoding: Encoding,
    payload: &'a [u8],
) -> Result<T, DecodeError> {
    let effective = effective_encoding(encoding, payload);
    let result = match effective {
        Encoding::Json => serde_json::from_slice(payload).map_err(|e| e.to_string()),
        Encoding::MsgPack => crate::msgpack::from_slice(payload).map_err(|e| e.to_string()),
    };
    result.map_err(|message| DecodeError {
        frame_type,
        encoding: effective,
        message,
    })
}

/// The encoding a payload is actually in, given the session's (see the module docs).
pub fn effective_encoding(session: Encoding, payload: &[u8]) -> Encoding {
    if session == Encoding::MsgPack && payload.first() == Some(&b'{') {
        Encoding::Json
    } else {
        session
    }
}

/// Appends the frame for an event.
pub fn encode_event(
    out: &mut BytesMut,
    encoding: Encoding,
    event: &Event,
) -> Result<(), EncodeError> {
    let ty = event.frame_type();
    match event {
        Event::RequestHeaders(e) => encode_frame(out, ty, encoding, e),
        Event::RequestBodyChunk(e) => encode_frame(out, ty, encoding, e),
        Event::ResponseHeaders(e) => encode_frame(out, ty, encoding, e),
        Event::ResponseBodyChunk(e) => encode_frame(out, ty, encoding, e),
        Event::RequestComplete(e) => encode_frame(out, ty, encoding, e),
        Event::WebSocketFrame(e) => encode_frame(out, ty, encoding, e),
        Event::GuardrailInspect(e) => encode_frame(out, ty, encoding, e),
        Event::Configure(e) => encode_frame(out, ty, encoding, e),
    }
}

/// Decodes an event frame. `None` if `frame_type` is not an event type.
pub fn decode_event(
    frame_type: FrameType,
    encoding: Encoding,
    payload: &[u8],
) -> Option<Result<Event, DecodeError>> {
    let p = payload;
    let e = encoding;
    let ty = frame_type;
    let event = match frame_type {
        FrameType::RequestHeaders => {
            decode_payload::<RequestHeadersEvent>(ty, e, p).map(Event::RequestHeaders)
        }
        FrameType::RequestBodyChunk => {
            decode_payload::<RequestBodyChunkEvent>(ty, e, p).map(Event::RequestBodyChunk)
        }
        FrameType::ResponseHeaders => {
            decode_payload::<ResponseHeadersEvent>(ty, e, p).map(Event::ResponseHeaders)
        }
        FrameType::ResponseBodyChunk => {
            decode_payload::<ResponseBodyChunkEvent>(ty, e, p).map(Event::ResponseBodyChunk)
        }
        FrameType::RequestComplete => {
            decode_payload::<RequestCompleteEvent>(ty, e, p).map(Event::RequestComplete)
        }
        FrameType::WebSocketFrame => {
            decode_payload::<WebSocketFrameEvent>(ty, e, p).map(Event::WebSocketFrame)
        }
        FrameType::GuardrailInspect => {
            decode_payload::<GuardrailInspectEvent>(ty, e, p).map(Event::GuardrailInspect)
        }
        FrameType::Configure => decode_payload::<ConfigureEvent>(ty, e, p).map(Event::Configure),
        _ => return None,
    };
    Some(event.map(|mut ev| {
        ev.normalize();
        ev
    }))
}

/// Best-effort extraction of the correlation id of an event payload that failed to decode, so
/// the agent can fail just that request (answering it with an error rather than an allow, D16).
pub fn salvage_correlation_id(encoding: Encoding, payload: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Meta {
        correlation_id: String,
    }
    #[derive(Deserialize)]
    struct Probe {
        #[serde(default)]
        correlation_id: Option<String>,
        #[serde(default)]
        metadata: Option<Meta>,
    }
    let probe: Probe = match effective_encoding(encoding, payload) {
        Encoding::Json => serde_json::from_slice(payload).ok()?,
        Encoding::MsgPack => crate::msgpack::from_slice(payload).ok()?,
    };
    probe
        .correlation_id
        .filter(|s| !s.is_empty())
        .or(probe.metadata.map(|m| m.correlation_id))
}
