//! Payload encodings: JSON, and MessagePack when negotiated in the handshake.
//!
//! We write MessagePack as named maps (`rmp_serde` struct-map mode, bytes as `bin`, no duplicate
//! keys) and read it with the lenient decoder in [`crate::msgpack`], which also takes the
//! reference's positional arrays and duplicated keys. A payload that starts with `{` in a
//! MessagePack session is JSON: the reference proxy always sends Cancel and Ping as JSON, and a
//! bare MessagePack integer 123 (the byte `{`) is never a valid message, so the sniff is
//! unambiguous.

use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

use crate::event::{
    ConfigureEvent, Event, GuardrailInspectEvent, RequestBodyChunkEvent, RequestCompleteEvent,
    RequestHeadersEvent, ResponseBodyChunkEvent, ResponseHeadersEvent, WebSocketFrameEvent,
};
use crate::frame::{FrameType, FrameWriter, PayloadTooLarge};
use crate::limits::{self, LimitExceeded, MessageLimits, DEFAULT_MAX_ELEMENTS};
use crate::response::AgentResponse;

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
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
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
    /// Set when the message was refused for going over a limit (the payload may be otherwise
    /// well formed): a header limit, reached while decoding, or the element budget, checked
    /// before decoding anything.
    pub limit: Option<LimitExceeded>,
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

/// Decodes a payload of `frame_type` sent in `encoding`, refused unread if it carries more
/// than [`DEFAULT_MAX_ELEMENTS`] elements (see [`decode_payload_with_budget`]).
pub fn decode_payload<'a, T: Deserialize<'a>>(
    frame_type: FrameType,
    encoding: Encoding,
    payload: &'a [u8],
) -> Result<T, DecodeError> {
    decode_payload_with_budget(frame_type, encoding, payload, DEFAULT_MAX_ELEMENTS)
}

/// Decodes a payload of `frame_type` sent in `encoding`, if it carries at most `max_elements`
/// array items plus map entries; over that it is refused before anything is decoded, with
/// [`DecodeError::limit`] set to [`LimitExceeded::Elements`].
///
/// ```
/// use agent_protocol_core::encoding::decode_payload_with_budget;
/// use agent_protocol_core::frame::FrameType;
/// use agent_protocol_core::limits::LimitExceeded;
/// use agent_protocol_core::{AgentResponse, Encoding};
///
/// // Seven elements: three top-level entries, one in `audit`, three tags.
/// let answer = br#"{"version":2,"decision":"allow","audit":{"tags":["a","b","c"]}}"#;
/// let ty = FrameType::AgentResponse;
/// assert!(decode_payload_with_budget::<AgentResponse>(ty, Encoding::Json, answer, 7).is_ok());
/// let err = decode_payload_with_budget::<AgentResponse>(ty, Encoding::Json, answer, 6).unwrap_err();
/// assert_eq!(err.limit, Some(LimitExceeded::Elements { max: 6 }));
/// ```
pub fn decode_payload_with_budget<'a, T: Deserialize<'a>>(
    frame_type: FrameType,
    encoding: Encoding,
    payload: &'a [u8],
    max_elements: usize,
) -> Result<T, DecodeError> {
    let effective = effective_encoding(encoding, payload);
    check_elements(frame_type, effective, payload, max_elements)?;
    let result = match effective {
        Encoding::Json => serde_json::from_slice(payload).map_err(|e| e.to_string()),
        Encoding::MsgPack => crate::msgpack::from_slice(payload).map_err(|e| e.to_string()),
    };
    result.map_err(|message| DecodeError {
        frame_type,
        encoding: effective,
        message,
        limit: None,
    })
}

/// Encodes an AgentResponse frame as [`encode_frame`] does, to the same bytes; a simple allow
/// (nearly every answer: an allow with nothing but header operations) is written directly,
/// without serde.
///
/// ```
/// use agent_protocol_core::encoding::{encode_frame, encode_response, Encoding};
/// use agent_protocol_core::frame::FrameType;
/// use agent_protocol_core::AgentResponse;
/// let answer = AgentResponse::allow().with_correlation_id("r1");
/// let (mut direct, mut general) = (bytes::BytesMut::new(), bytes::BytesMut::new());
/// encode_response(&mut direct, Encoding::MsgPack, &answer).unwrap();
/// encode_frame(&mut general, FrameType::AgentResponse, Encoding::MsgPack, &answer).unwrap();
/// assert_eq!(direct, general);
/// ```
pub fn encode_response(
    out: &mut BytesMut,
    encoding: Encoding,
    response: &AgentResponse,
) -> Result<(), EncodeError> {
    let ty = FrameType::AgentResponse;
    let Some(allow) = response.as_simple_allow() else {
        return encode_frame(out, ty, encoding, response);
    };
    let mut frame = FrameWriter::begin(out, ty);
    match encoding {
        Encoding::Json => crate::json_agent_response::write_simple_allow(frame.payload(), &allow),
        Encoding::MsgPack => crate::msgpack::write_simple_allow(frame.payload(), &allow),
    }
    Ok(frame.finish()?)
}

/// Decodes an AgentResponse payload as [`decode_payload`] does; a simple allow (nearly every
/// answer) is read directly, without serde, to the same answer.
///
/// The routing id of a simple allow is a slice of `payload`, not a copy: the proxy connection
/// swaps it at once for its own copy of the id (the one it routed the answer by), so the answer
/// it hands on never keeps the frame's buffer alive.
pub(crate) fn decode_response(
    encoding: Encoding,
    payload: &Bytes,
) -> Result<AgentResponse, DecodeError> {
    match read_simple_allow(encoding, payload) {
        Some(response) => Ok(response),
        None => decode_payload(FrameType::AgentResponse, encoding, payload),
    }
}

/// The direct reader of a simple allow in the payload's own encoding, or `None` when the
/// general decoder must decide.
pub(crate) fn read_simple_allow(encoding: Encoding, payload: &Bytes) -> Option<AgentResponse> {
    match effective_encoding(encoding, payload) {
        Encoding::Json => crate::json_agent_response::read_simple_allow(payload),
        Encoding::MsgPack => crate::msgpack::read_simple_allow(payload),
    }
}

/// Refuses a payload over the element budget before any of it is decoded.
fn check_elements(
    frame_type: FrameType,
    effective: Encoding,
    payload: &[u8],
    max_elements: usize,
) -> Result<(), DecodeError> {
    crate::element_count::check_elements(effective, payload, max_elements).map_err(|limit| {
        DecodeError {
            frame_type,
            encoding: effective,
            message: limit.to_string(),
            limit: Some(limit),
        }
    })
}

/// Decodes an event payload: refused unread over the element budget; the top level may repeat
/// `correlation_id` with the same value (see [`crate::repeated_id`]), and header maps are held
/// to the header limits as they are read.
fn decode_event_payload<'a, T: Deserialize<'a>>(
    frame_type: FrameType,
    encoding: Encoding,
    payload: &'a [u8],
    limits: &MessageLimits,
) -> Result<T, DecodeError> {
    let effective = effective_encoding(encoding, payload);
    check_elements(frame_type, effective, payload, limits.max_elements)?;
    let (result, limit) = limits::decode_with(&limits.headers, || match effective {
        Encoding::Json => {
            let mut de = serde_json::Deserializer::from_slice(payload);
            crate::repeated_id::deserialize(&mut de)
                .and_then(|value| de.end().map(|()| value))
                .map_err(|e| e.to_string())
        }
        Encoding::MsgPack => {
            crate::msgpack::from_slice_with(payload, |de| crate::repeated_id::deserialize(de))
                .map_err(|e| e.to_string())
        }
    });
    result.map_err(|message| DecodeError {
        frame_type,
        encoding: effective,
        message,
        limit,
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
        // The hottest message is written directly, to the same bytes.
        Event::RequestHeaders(e) => {
            let mut frame = FrameWriter::begin(out, ty);
            match encoding {
                Encoding::Json => {
                    crate::json_request_headers::write_request_headers(frame.payload(), e)
                }
                Encoding::MsgPack => crate::msgpack::write_request_headers(frame.payload(), e),
            }
            Ok(frame.finish()?)
        }
        Event::RequestBodyChunk(e) => encode_frame(out, ty, encoding, e),
        Event::ResponseHeaders(e) => encode_frame(out, ty, encoding, e),
        Event::ResponseBodyChunk(e) => encode_frame(out, ty, encoding, e),
        Event::RequestComplete(e) => encode_frame(out, ty, encoding, e),
        Event::WebSocketFrame(e) => encode_frame(out, ty, encoding, e),
        Event::GuardrailInspect(e) => encode_frame(out, ty, encoding, e),
        Event::Configure(e) => encode_frame(out, ty, encoding, e),
    }
}

/// Decodes an event frame with the default [`MessageLimits`]. `None` if `frame_type` is not an
/// event type.
///
/// A payload of at most [`SHARED_PAYLOAD_MAX`] bytes is copied once and the event's strings
/// (and MessagePack body bytes) are slices of that copy, every one but an escaped JSON string,
/// so decoding allocates nothing per header; larger payloads get strings of their own. See
/// [`ByteStr`](crate::ByteStr).
///
/// Both encodings reach the same decision on the same logical event: a repeated field is an
/// error (except an identical repeated top-level `correlation_id`, which the reference proxy
/// sends), a repeated header name merges its values, `null` where a map is required is an error.
///
/// ```
/// use agent_protocol_core::encoding::decode_event;
/// use agent_protocol_core::frame::FrameType;
/// use agent_protocol_core::Encoding;
///
/// let json = br#"{"correlation_id":"c","status":200,"headers":{"x":["1"],"x":["2"]}}"#;
/// let event = decode_event(FrameType::ResponseHeaders, Encoding::Json, json).unwrap().unwrap();
/// let agent_protocol_core::Event::ResponseHeaders(e) = event else { unreachable!() };
/// assert_eq!(e.headers.get("x").unwrap().collect::<Vec<_>>(), ["1", "2"]);
/// ```
pub fn decode_event(
    frame_type: FrameType,
    encoding: Encoding,
    payload: &[u8],
) -> Option<Result<Event, DecodeError>> {
    decode_event_with_limits(frame_type, encoding, payload, MessageLimits::default())
}

/// [`decode_event`] with explicit limits: a [`MessageLimits`], or a
/// [`HeaderLimits`](crate::limits::HeaderLimits) with the default element budget.
pub fn decode_event_with_limits(
    frame_type: FrameType,
    encoding: Encoding,
    payload: &[u8],
    limits: impl Into<MessageLimits>,
) -> Option<Result<Event, DecodeError>> {
    decode_shared_event(frame_type, encoding, payload, limits.into()).map(|r| r.map(|(e, _)| e))
}

/// Payloads up to this size are decoded into events whose strings and body bytes share one
/// copy of the payload (one allocation for the whole event, instead of one per string); larger
/// ones are decoded into strings of their own, so that a few bytes kept from a large frame (a
/// body chunk's correlation id) do not keep the whole frame alive.
pub const SHARED_PAYLOAD_MAX: usize = 16 * 1024;

/// Decodes an event, and says how many bytes of shared payload it keeps alive beyond its own
/// fields (0 when it shares nothing): what [`AgentConnection`](crate::agent::AgentConnection)
/// weighs an event at counts them. The payload is copied first, so the event never keeps the
/// transport's read buffer alive, only its own bytes.
pub(crate) fn decode_shared_event(
    frame_type: FrameType,
    encoding: Encoding,
    payload: &[u8],
    limits: MessageLimits,
) -> Option<Result<(Event, usize), DecodeError>> {
    if !frame_type.is_event() {
        return None;
    }
    if payload.len() > SHARED_PAYLOAD_MAX {
        return decode_event_from(frame_type, encoding, payload, limits).map(|r| r.map(|e| (e, 0)));
    }
    let encoding = effective_encoding(encoding, payload);
    // JSON text with escapes is unescaped into room left after the copy, in the same
    // allocation: the whole event then shares one buffer, whose size it is weighed at.
    let room = if frame_type == FrameType::RequestHeaders && encoding == Encoding::Json {
        crate::json_request_headers::unescape_room(payload)
    } else {
        0
    };
    let mut buf = BytesMut::with_capacity(payload.len() + room);
    buf.extend_from_slice(payload);
    let own = buf.split().freeze();
    let weight = own.len() + room;
    if frame_type == FrameType::RequestHeaders {
        if let Some(event) = read_request_headers(encoding, &own, buf, &limits) {
            let mut event = Event::RequestHeaders(event);
            event.normalize();
            return Some(Ok((event, weight)));
        }
    }
    crate::shared_frame::decode_sharing(&own, || {
        decode_event_from(frame_type, encoding, &own, limits)
    })
    .map(|r| r.map(|e| (e, weight)))
}

/// The direct RequestHeaders reader of `encoding` (the payload's own): the event, or `None`
/// when the general decoder must decide. JSON unescapes into `room` (see
/// `json_request_headers::unescape_room`).
pub(crate) fn read_request_headers(
    encoding: Encoding,
    payload: &Bytes,
    room: BytesMut,
    limits: &MessageLimits,
) -> Option<RequestHeadersEvent> {
    match encoding {
        Encoding::Json => crate::json_request_headers::read_request_headers(payload, room, limits),
        Encoding::MsgPack => crate::msgpack::request_headers(payload, limits),
    }
}

/// The general (serde) encoder alone, for the tests that hold the direct writers to it.
#[cfg(feature = "test-util")]
pub(crate) fn encode_event_general(
    out: &mut BytesMut,
    encoding: Encoding,
    event: &Event,
) -> Result<(), EncodeError> {
    match event {
        Event::RequestHeaders(e) => encode_frame(out, event.frame_type(), encoding, e),
        other => encode_event(out, encoding, other),
    }
}

/// The general decoder alone (sharing a copy of the payload, as `decode_shared_event`), for the
/// tests that hold the fast paths to it.
#[cfg(feature = "test-util")]
pub(crate) fn decode_event_general(
    frame_type: FrameType,
    encoding: Encoding,
    payload: &[u8],
    limits: MessageLimits,
) -> Option<Result<Event, DecodeError>> {
    let own = Bytes::copy_from_slice(payload);
    crate::shared_frame::decode_sharing(&own, || {
        decode_event_from(frame_type, encoding, &own, limits)
    })
}

fn decode_event_from(
    frame_type: FrameType,
    encoding: Encoding,
    payload: &[u8],
    limits: MessageLimits,
) -> Option<Result<Event, DecodeError>> {
    let p = payload;
    let e = encoding;
    let ty = frame_type;
    let l = &limits;
    let event = match frame_type {
        FrameType::RequestHeaders => {
            decode_event_payload::<RequestHeadersEvent>(ty, e, p, l).map(Event::RequestHeaders)
        }
        FrameType::RequestBodyChunk => {
            decode_event_payload::<RequestBodyChunkEvent>(ty, e, p, l).map(Event::RequestBodyChunk)
        }
        FrameType::ResponseHeaders => {
            decode_event_payload::<ResponseHeadersEvent>(ty, e, p, l).map(Event::ResponseHeaders)
        }
        FrameType::ResponseBodyChunk => decode_event_payload::<ResponseBodyChunkEvent>(ty, e, p, l)
            .map(Event::ResponseBodyChunk),
        FrameType::RequestComplete => {
            decode_event_payload::<RequestCompleteEvent>(ty, e, p, l).map(Event::RequestComplete)
        }
        FrameType::WebSocketFrame => {
            decode_event_payload::<WebSocketFrameEvent>(ty, e, p, l).map(Event::WebSocketFrame)
        }
        FrameType::GuardrailInspect => {
            decode_event_payload::<GuardrailInspectEvent>(ty, e, p, l).map(Event::GuardrailInspect)
        }
        FrameType::Configure => {
            decode_event_payload::<ConfigureEvent>(ty, e, p, l).map(Event::Configure)
        }
        _ => return None,
    };
    Some(event.map(|mut ev| {
        ev.normalize();
        ev
    }))
}

/// Best-effort extraction of the correlation id of an event payload that failed to decode, so
/// the agent can fail just that request (answering it with a block, never an allow).
///
/// Reads the document generically, without a schema: a top-level `correlation_id` string, else
/// `metadata.correlation_id`; positional arrays (the reference's compact MessagePack) are read
/// by their first element, recursively. Body bytes (`bin`) are skipped, never copied.
pub fn salvage_correlation_id(encoding: Encoding, payload: &[u8]) -> Option<String> {
    let probe: IdProbe = match effective_encoding(encoding, payload) {
        Encoding::Json => serde_json::from_slice(payload).ok()?,
        Encoding::MsgPack => crate::msgpack::from_slice(payload).ok()?,
    };
    probe.0.filter(|s| !s.is_empty())
}

/// Whatever id a value carries: itself if it is a string, its `correlation_id` (then its
/// `metadata`'s) if it is a map, its first element if it is an array.
struct IdProbe(Option<String>);

impl<'de> Deserialize<'de> for IdProbe {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(IdVisitor)
    }
}

struct IdVisitor;

impl<'de> serde::de::Visitor<'de> for IdVisitor {
    type Value = IdProbe;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any value")
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<IdProbe, E> {
        Ok(IdProbe(Some(v.to_owned())))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<IdProbe, A::Error> {
        let mut top = None;
        let mut meta = None;
        while let Some(key) = map.next_key::<crate::event::KeyName>()? {
            match key.0.as_ref() {
                "correlation_id" if top.is_none() => top = map.next_value::<IdProbe>()?.0,
                "metadata" if meta.is_none() => meta = map.next_value::<IdProbe>()?.0,
                _ => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
            }
        }
        Ok(IdProbe(top.filter(|s| !s.is_empty()).or(meta)))
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<IdProbe, A::Error> {
        let first = seq.next_element::<IdProbe>()?.and_then(|p| p.0);
        while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
        Ok(IdProbe(first))
    }

    fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<IdProbe, E> {
        Ok(IdProbe(None))
    }
    fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<IdProbe, E> {
        Ok(IdProbe(None))
    }
    fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<IdProbe, E> {
        Ok(IdProbe(None))
    }
    fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<IdProbe, E> {
        Ok(IdProbe(None))
    }
    fn visit_bytes<E: serde::de::Error>(self, _: &[u8]) -> Result<IdProbe, E> {
        Ok(IdProbe(None))
    }
    fn visit_unit<E: serde::de::Error>(self) -> Result<IdProbe, E> {
        Ok(IdProbe(None))
    }
    fn visit_none<E: serde::de::Error>(self) -> Result<IdProbe, E> {
        Ok(IdProbe(None))
    }
    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<IdProbe, D::Error> {
        IdProbe::deserialize(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn salvage_reads_maps_metadata_and_positional_arrays() {
        let cases: [(&[u8], Option<&str>); 5] = [
            (br#"{"correlation_id":"a","status":"bad"}"#, Some("a")),
            (
                br#"{"metadata":{"correlation_id":"m"},"method":7}"#,
                Some("m"),
            ),
            (br#"{"correlation_id":"x","metadata":7}"#, Some("x")),
            (br#"["p","AAAA",true,1,2]"#, Some("p")),
            (br#"{"nothing":1}"#, None),
        ];
        for (payload, want) in cases {
            assert_eq!(
                salvage_correlation_id(Encoding::Json, payload).as_deref(),
                want
            );
        }
        // The reference's compact metadata array inside a map, next to bin data, in MessagePack.
        #[derive(Serialize)]
        struct Compact {
            data: bytes::Bytes,
            metadata: (&'static str, &'static str),
        }
        let mp = rmp_serde::to_vec_named(&Compact {
            data: bytes::Bytes::from_static(&[0, 0xff]),
            metadata: ("c-meta", "req"),
        })
        .unwrap();
        assert_eq!(
            salvage_correlation_id(Encoding::MsgPack, &mp).as_deref(),
            Some("c-meta")
        );
        let arr = rmp_serde::to_vec(&("c-mp", 5u8, true)).unwrap();
        assert_eq!(
            salvage_correlation_id(Encoding::MsgPack, &arr).as_deref(),
            Some("c-mp")
        );
    }
}
