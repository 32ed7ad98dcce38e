//! Proxy->agent events 0x10..=0x17, with the reference's serde names.
//!
//! Every event carries a top-level `correlation_id` on the wire; RequestHeaders carries it in
//! addition to `metadata.correlation_id`. Body data is [`Bytes`]: base64 in JSON, `bin` in
//! MessagePack (see [`crate::body`]).

use std::collections::HashMap;
use std::fmt;

use bytes::Bytes;
use serde::de::{self, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::ser::SerializeStruct;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::byte_str::ByteStr;
use crate::capabilities::EventKind;
use crate::frame::FrameType;
use crate::headers::Headers;

/// Per-request metadata sent with RequestHeaders (`RequestMetadata`).
#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RequestMetadata {
    /// Correlation id of the request.
    pub correlation_id: ByteStr,
    /// The proxy's request id.
    pub request_id: ByteStr,
    /// Client address.
    pub client_ip: ByteStr,
    /// Client port.
    pub client_port: u16,
    /// SNI / Host.
    pub server_name: Option<ByteStr>,
    /// e.g. `"HTTP/1.1"`.
    pub protocol: ByteStr,
    /// TLS version, if TLS.
    pub tls_version: Option<ByteStr>,
    /// TLS cipher, if TLS.
    pub tls_cipher: Option<ByteStr>,
    /// Matched route.
    pub route_id: Option<ByteStr>,
    /// Chosen upstream.
    pub upstream_id: Option<ByteStr>,
    /// RFC 3339 time (milliseconds as a decimal string on the gRPC path).
    pub timestamp: ByteStr,
    /// W3C traceparent. Omitted when absent; defaulted on input so the reference's 11-element
    /// MessagePack array (written without the absent traceparent) decodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<ByteStr>,
}

/// 0x10 RequestHeaders.
///
/// ```
/// use agent_protocol_core::{Headers, RequestHeadersEvent, RequestMetadata};
/// let event = RequestHeadersEvent::new(
///     RequestMetadata { correlation_id: "c1".into(), ..Default::default() },
///     "GET",
///     "/",
///     Headers::from_iter([("host", "example.com")]),
/// );
/// assert_eq!(event.correlation_id, "c1");
/// let json = serde_json::to_value(&event).unwrap();
/// assert_eq!(json["correlation_id"], "c1");
/// assert_eq!(json["metadata"]["correlation_id"], "c1");
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RequestHeadersEvent {
    /// Top-level correlation id. When a peer leaves it out, decoding takes
    /// `metadata.correlation_id` (see [`Event::normalize`]).
    #[serde(default)]
    pub correlation_id: ByteStr,
    /// Request metadata.
    pub metadata: RequestMetadata,
    /// HTTP method.
    pub method: ByteStr,
    /// Request target.
    pub uri: ByteStr,
    /// Request headers.
    pub headers: Headers,
}

impl RequestHeadersEvent {
    /// Builds the event; the top-level id is taken from the metadata.
    pub fn new(
        metadata: RequestMetadata,
        method: impl Into<ByteStr>,
        uri: impl Into<ByteStr>,
        headers: Headers,
    ) -> Self {
        Self {
            correlation_id: metadata.correlation_id.clone(),
            metadata,
            method: method.into(),
            uri: uri.into(),
            headers,
        }
    }
}

/// Fields shared by request and response body chunks.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct BodyChunk {
    /// Correlation id of the request.
    pub correlation_id: ByteStr,
    /// Chunk bytes.
    pub data: Bytes,
    /// Whether this is the final chunk.
    pub is_last: bool,
    /// Total body size when known.
    pub total_size: Option<u64>,
    /// Index of this chunk, from 0, per direction.
    pub chunk_index: u32,
    /// Bytes of this body transferred so far, this chunk included
    /// (`bytes_received` for requests, `bytes_sent` for responses).
    pub bytes_transferred: u64,
}

/// 0x11 RequestBodyChunk.
///
/// ```
/// use agent_protocol_core::{BodyChunk, RequestBodyChunkEvent};
/// let event = RequestBodyChunkEvent(BodyChunk {
///     correlation_id: "c1".into(),
///     data: bytes::Bytes::from_static(b"hi"),
///     is_last: true,
///     total_size: Some(2),
///     chunk_index: 0,
///     bytes_transferred: 2,
/// });
/// assert_eq!(
///     serde_json::to_string(&event).unwrap(),
///     r#"{"correlation_id":"c1","data":"aGk=","is_last":true,"total_size":2,"chunk_index":0,"bytes_received":2}"#
/// );
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct RequestBodyChunkEvent(pub BodyChunk);

/// 0x13 ResponseBodyChunk (same shape, with `bytes_sent`).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct ResponseBodyChunkEvent(pub BodyChunk);

const BYTES_RECEIVED: &str = "bytes_received";
const BYTES_SENT: &str = "bytes_sent";

fn serialize_chunk<S: Serializer>(
    c: &BodyChunk,
    counter_key: &'static str,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    struct Data<'a>(&'a Bytes);
    impl Serialize for Data<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            crate::body::serialize(self.0, s)
        }
    }
    let mut st = serializer.serialize_struct("BodyChunk", 6)?;
    st.serialize_field("correlation_id", &c.correlation_id)?;
    st.serialize_field("data", &Data(&c.data))?;
    st.serialize_field("is_last", &c.is_last)?;
    st.serialize_field("total_size", &c.total_size)?;
    st.serialize_field("chunk_index", &c.chunk_index)?;
    st.serialize_field(counter_key, &c.bytes_transferred)?;
    st.end()
}

impl Serialize for RequestBodyChunkEvent {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serialize_chunk(&self.0, BYTES_RECEIVED, serializer)
    }
}

impl Serialize for ResponseBodyChunkEvent {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serialize_chunk(&self.0, BYTES_SENT, serializer)
    }
}

impl<'de> Deserialize<'de> for RequestBodyChunkEvent {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer
            .deserialize_any(ChunkVisitor {
                counter_key: BYTES_RECEIVED,
            })
            .map(Self)
    }
}

impl<'de> Deserialize<'de> for ResponseBodyChunkEvent {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer
            .deserialize_any(ChunkVisitor {
                counter_key: BYTES_SENT,
            })
            .map(Self)
    }
}

/// Body bytes as a standalone deserializable value.
pub(crate) struct BodyBytes(pub Bytes);

impl<'de> Deserialize<'de> for BodyBytes {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer
            .deserialize_any(crate::body::BodyVisitor)
            .map(BodyBytes)
    }
}

/// Decodes body chunks in every form the reference emits: the string form (map with one
/// counter key), the binary JSON form (map with both counters, one null), and the binary
/// MessagePack arrays whose length depends on which optional fields were present (the reference
/// leaves absent options out, so later fields slide down a slot).
struct ChunkVisitor {
    counter_key: &'static str,
}

impl<'de> Visitor<'de> for ChunkVisitor {
    type Value = BodyChunk;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a body chunk map or array")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<BodyChunk, A::Error> {
        let mut cid: Option<ByteStr> = None;
        let mut data: Option<Bytes> = None;
        let mut is_last: Option<bool> = None;
        let mut total_size: Option<Option<u64>> = None;
        let mut chunk_index: Option<u32> = None;
        let mut counter: Option<Option<u64>> = None;
        /// A repeated field is an error, as for every derived struct (and as serde_json would
        /// decide): the one repetition the reference sends is handled by `repeated_id`.
        fn once<T, E: de::Error>(slot: &mut Option<T>, name: &'static str, v: T) -> Result<(), E> {
            if slot.replace(v).is_some() {
                return Err(E::duplicate_field(name));
            }
            Ok(())
        }
        while let Some(key) = map.next_key::<KeyName>()? {
            match key.0.as_ref() {
                "correlation_id" => once(&mut cid, "correlation_id", map.next_value()?)?,
                "data" => once(&mut data, "data", map.next_value::<BodyBytes>()?.0)?,
                "is_last" => once(&mut is_last, "is_last", map.next_value()?)?,
                "total_size" => once(&mut total_size, "total_size", map.next_value()?)?,
                "chunk_index" => once(
                    &mut chunk_index,
                    "chunk_index",
                    map.next_value::<Option<u32>>()?.unwrap_or(0),
                )?,
                k if k == self.counter_key => once(
                    &mut counter,
                    self.counter_key,
                    map.next_value::<Option<u64>>()?,
                )?,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(BodyChunk {
            correlation_id: cid.ok_or_else(|| de::Error::missing_field("correlation_id"))?,
            data: data.ok_or_else(|| de::Error::missing_field("data"))?,
            is_last: is_last.ok_or_else(|| de::Error::missing_field("is_last"))?,
            total_size: total_size.flatten(),
            chunk_index: chunk_index.unwrap_or(0),
            bytes_transferred: counter.flatten().unwrap_or(0),
        })
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<BodyChunk, A::Error> {
        let correlation_id: ByteStr = seq
            .next_element()?
            .ok_or_else(|| de::Error::invalid_length(0, &self))?;
        let data = seq
            .next_element::<BodyBytes>()?
            .ok_or_else(|| de::Error::invalid_length(1, &self))?
            .0;
        let is_last: bool = seq
            .next_element()?
            .ok_or_else(|| de::Error::invalid_length(2, &self))?;
        let mut rest = [None::<u64>; 4];
        let mut n = 0;
        while let Some(v) = seq.next_element::<Option<u64>>()? {
            if n == rest.len() {
                return Err(de::Error::invalid_length(3 + n + 1, &self));
            }
            rest[n] = v;
            n += 1;
        }
        // The reference writes [cid, data, is_last, total_size?, chunk_index, bytes_received?,
        // bytes_sent?] leaving out absent options, so the meaning of each slot depends on the
        // count. Its binary events always carry their own counter, so: 4 = all present,
        // 3 = total_size + index + counter, 2 = index + counter, 1 = index.
        let own_counter_slot = if self.counter_key == BYTES_RECEIVED {
            2
        } else {
            3
        };
        let (total_size, chunk_index, counter) = match n {
            0 => (None, None, None),
            1 => (None, rest[0], None),
            2 => (None, rest[0], rest[1]),
            3 => (rest[0], rest[1], rest[2]),
            _ => (rest[0], rest[1], rest[own_counter_slot]),
        };
        let chunk_index = match chunk_index {
            Some(i) => u32::try_from(i).map_err(|_| {
                de::Error::invalid_value(de::Unexpected::Unsigned(i), &"a u32 chunk_index")
            })?,
            None => 0,
        };
        Ok(BodyChunk {
            correlation_id,
            data,
            is_last,
            total_size,
            chunk_index,
            bytes_transferred: counter.unwrap_or(0),
        })
    }
}

/// A map key read as text, borrowed when the input allows.
pub(crate) struct KeyName<'de>(pub std::borrow::Cow<'de, str>);

impl<'de> Deserialize<'de> for KeyName<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = KeyName<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a field name")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(KeyName(v.into()))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(KeyName(v.to_owned().into()))
            }
            fn visit_borrowed_bytes<E: de::Error>(self, v: &'de [u8]) -> Result<Self::Value, E> {
                Ok(KeyName(String::from_utf8_lossy(v)))
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Self::Value, E> {
                Ok(KeyName(String::from_utf8_lossy(v).into_owned().into()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(KeyName(v.to_string().into()))
            }
        }
        deserializer.deserialize_identifier(V)
    }
}

/// 0x12 ResponseHeaders.
#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ResponseHeadersEvent {
    /// Correlation id of the request.
    pub correlation_id: ByteStr,
    /// Upstream status code.
    pub status: u16,
    /// Response headers.
    pub headers: Headers,
}

/// 0x14 RequestComplete.
#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RequestCompleteEvent {
    /// Correlation id of the request.
    pub correlation_id: ByteStr,
    /// Final status code.
    pub status: u16,
    /// Total duration.
    pub duration_ms: u64,
    /// Request body bytes.
    pub request_body_size: u64,
    /// Response body bytes.
    pub response_body_size: u64,
    /// Upstream attempts made.
    pub upstream_attempts: u32,
    /// Error text, if the request failed.
    pub error: Option<ByteStr>,
}

/// WebSocket frame opcode (serde names as the reference).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WebSocketOpcode {
    /// 0x0
    Continuation,
    /// 0x1
    #[default]
    Text,
    /// 0x2
    Binary,
    /// 0x8
    Close,
    /// 0x9
    Ping,
    /// 0xA
    Pong,
}

impl WebSocketOpcode {
    /// The RFC 6455 opcode value.
    pub fn as_u8(self) -> u8 {
        match self {
            Self::Continuation => 0x0,
            Self::Text => 0x1,
            Self::Binary => 0x2,
            Self::Close => 0x8,
            Self::Ping => 0x9,
            Self::Pong => 0xA,
        }
    }

    /// From the RFC 6455 opcode value.
    pub fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            0x0 => Self::Continuation,
            0x1 => Self::Text,
            0x2 => Self::Binary,
            0x8 => Self::Close,
            0x9 => Self::Ping,
            0xA => Self::Pong,
            _ => return None,
        })
    }
}

/// 0x15 WebSocketFrame.
#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct WebSocketFrameEvent {
    /// Correlation id of the upgraded request.
    pub correlation_id: ByteStr,
    /// Frame opcode.
    pub opcode: WebSocketOpcode,
    /// Frame payload.
    #[serde(with = "crate::body")]
    pub data: Bytes,
    /// Direction.
    pub client_to_server: bool,
    /// Index per direction from 0.
    pub frame_index: u64,
    /// FIN bit.
    pub fin: bool,
    /// Route.
    pub route_id: Option<ByteStr>,
    /// Client address.
    pub client_ip: ByteStr,
}

/// What a guardrail inspection looks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GuardrailInspectionType {
    /// Prompt-injection detection.
    #[default]
    PromptInjection,
    /// PII detection.
    PiiDetection,
}

/// 0x16 GuardrailInspect.
#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct GuardrailInspectEvent {
    /// Correlation id.
    pub correlation_id: ByteStr,
    /// What to look for.
    pub inspection_type: GuardrailInspectionType,
    /// Text to inspect.
    pub content: ByteStr,
    /// Model name, omitted when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<ByteStr>,
    /// Categories to check.
    #[serde(default)]
    pub categories: Vec<String>,
    /// Route, omitted when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route_id: Option<ByteStr>,
    /// Extra metadata.
    #[serde(default)]
    pub metadata: HashMap<String, String>,
}

/// 0x17 Configure.
#[derive(Clone, Debug, PartialEq, Default, Serialize, Deserialize)]
pub struct ConfigureEvent {
    /// Correlation id (the agent answers Configure like any other event).
    #[serde(default)]
    pub correlation_id: ByteStr,
    /// Agent configuration, any JSON.
    #[serde(default)]
    pub config: serde_json::Value,
    /// Configuration version.
    #[serde(default)]
    pub config_version: Option<ByteStr>,
}

/// Any proxy->agent event.
// Events are moved, never boxed: boxing would cost an allocation per event.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// 0x10
    RequestHeaders(RequestHeadersEvent),
    /// 0x11
    RequestBodyChunk(RequestBodyChunkEvent),
    /// 0x12
    ResponseHeaders(ResponseHeadersEvent),
    /// 0x13
    ResponseBodyChunk(ResponseBodyChunkEvent),
    /// 0x14
    RequestComplete(RequestCompleteEvent),
    /// 0x15
    WebSocketFrame(WebSocketFrameEvent),
    /// 0x16
    GuardrailInspect(GuardrailInspectEvent),
    /// 0x17
    Configure(ConfigureEvent),
}

impl Event {
    /// The correlation id the answer must carry.
    pub fn correlation_id(&self) -> &str {
        self.shared_correlation_id()
    }

    /// The correlation id as the event holds it: a clone shares its bytes rather than copying.
    pub fn shared_correlation_id(&self) -> &ByteStr {
        match self {
            Self::RequestHeaders(e) => &e.correlation_id,
            Self::RequestBodyChunk(e) => &e.0.correlation_id,
            Self::ResponseHeaders(e) => &e.correlation_id,
            Self::ResponseBodyChunk(e) => &e.0.correlation_id,
            Self::RequestComplete(e) => &e.correlation_id,
            Self::WebSocketFrame(e) => &e.correlation_id,
            Self::GuardrailInspect(e) => &e.correlation_id,
            Self::Configure(e) => &e.correlation_id,
        }
    }

    /// Sets the correlation id (both places for RequestHeaders).
    pub fn set_correlation_id(&mut self, id: &str) {
        let slot = match self {
            Self::RequestHeaders(e) => {
                if e.metadata.correlation_id != id {
                    e.metadata.correlation_id = id.into();
                }
                &mut e.correlation_id
            }
            Self::RequestBodyChunk(e) => &mut e.0.correlation_id,
            Self::ResponseHeaders(e) => &mut e.correlation_id,
            Self::ResponseBodyChunk(e) => &mut e.0.correlation_id,
            Self::RequestComplete(e) => &mut e.correlation_id,
            Self::WebSocketFrame(e) => &mut e.correlation_id,
            Self::GuardrailInspect(e) => &mut e.correlation_id,
            Self::Configure(e) => &mut e.correlation_id,
        };
        if slot != id {
            *slot = id.into();
        }
    }

    /// Fills a missing top-level id of RequestHeaders from its metadata (what a peer that
    /// follows the reference's struct, rather than its wire, would send).
    pub fn normalize(&mut self) {
        if let Self::RequestHeaders(e) = self {
            if e.correlation_id.is_empty() {
                e.correlation_id = e.metadata.correlation_id.clone();
            }
        }
    }

    /// The header values this event carries and the bytes of their names and values, as
    /// [`HeaderLimits`](crate::limits::HeaderLimits) counts them.
    ///
    /// ```
    /// use agent_protocol_core::{Event, Headers, ResponseHeadersEvent};
    /// let mut headers = Headers::new();
    /// headers.append("set-cookie", "a=1");
    /// headers.append("set-cookie", "b=2");
    /// let event = Event::ResponseHeaders(ResponseHeadersEvent { headers, ..Default::default() });
    /// // Two values; the name counts once per entry, as on the wire.
    /// assert_eq!(event.header_load(), (2, "set-cookie".len() + 6));
    /// ```
    pub fn header_load(&self) -> (usize, usize) {
        match self {
            Self::RequestHeaders(e) => e.headers.load(),
            Self::ResponseHeaders(e) => e.headers.load(),
            _ => (0, 0),
        }
    }

    /// The event's kind.
    pub fn kind(&self) -> EventKind {
        match self {
            Self::RequestHeaders(_) => EventKind::RequestHeaders,
            Self::RequestBodyChunk(_) => EventKind::RequestBodyChunk,
            Self::ResponseHeaders(_) => EventKind::ResponseHeaders,
            Self::ResponseBodyChunk(_) => EventKind::ResponseBodyChunk,
            Self::RequestComplete(_) => EventKind::RequestComplete,
            Self::WebSocketFrame(_) => EventKind::WebSocketFrame,
            Self::GuardrailInspect(_) => EventKind::GuardrailInspect,
            Self::Configure(_) => EventKind::Configure,
        }
    }

    /// The frame type that carries this event.
    pub fn frame_type(&self) -> FrameType {
        event_frame_type(self.kind())
    }

    /// Body bytes carried (chunk data, WebSocket payload), for flow-control accounting.
    pub fn body_len(&self) -> usize {
        match self {
            Self::RequestBodyChunk(e) => e.0.data.len(),
            Self::ResponseBodyChunk(e) => e.0.data.len(),
            Self::WebSocketFrame(e) => e.data.len(),
            _ => 0,
        }
    }
}

/// Frame type of an event kind.
pub fn event_frame_type(kind: EventKind) -> FrameType {
    match kind {
        EventKind::RequestHeaders => FrameType::RequestHeaders,
        EventKind::RequestBodyChunk => FrameType::RequestBodyChunk,
        EventKind::ResponseHeaders => FrameType::ResponseHeaders,
        EventKind::ResponseBodyChunk => FrameType::ResponseBodyChunk,
        EventKind::RequestComplete => FrameType::RequestComplete,
        EventKind::WebSocketFrame => FrameType::WebSocketFrame,
        EventKind::GuardrailInspect => FrameType::GuardrailInspect,
        EventKind::Configure => FrameType::Configure,
    }
}

/// Event kind carried by a frame type, if it is an event.
pub fn frame_event_kind(frame_type: FrameType) -> Option<EventKind> {
    Some(match frame_type {
        FrameType::RequestHeaders => EventKind::RequestHeaders,
        FrameType::RequestBodyChunk => EventKind::RequestBodyChunk,
        FrameType::ResponseHeaders => EventKind::ResponseHeaders,
        FrameType::ResponseBodyChunk => EventKind::ResponseBodyChunk,
        FrameType::RequestComplete => EventKind::RequestComplete,
        FrameType::WebSocketFrame => EventKind::WebSocketFrame,
        FrameType::GuardrailInspect => EventKind::GuardrailInspect,
        FrameType::Configure => EventKind::Configure,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_json_form_with_both_counters_decodes() {
        let j = r#"{"bytes_received":null,"bytes_sent":28,"chunk_index":0,"correlation_id":"rsb-2","data":"aGk=","is_last":true,"total_size":28}"#;
        let e: ResponseBodyChunkEvent = serde_json::from_str(j).unwrap();
        assert_eq!(e.0.bytes_transferred, 28);
        assert_eq!(&e.0.data[..], b"hi");
        let r: RequestBodyChunkEvent = serde_json::from_str(j).unwrap();
        assert_eq!(r.0.bytes_transferred, 0);
    }

    #[test]
    fn positional_arrays_of_every_length_decode() {
        // [cid, data, is_last, total?, index, counter]
        let six: RequestBodyChunkEvent =
            serde_json::from_str(r#"["c","aGk=",true,46,1,46]"#).unwrap();
        assert_eq!(
            (six.0.total_size, six.0.chunk_index, six.0.bytes_transferred),
            (Some(46), 1, 46)
        );
        let five: RequestBodyChunkEvent =
            serde_json::from_str(r#"["c","aGk=",false,7,17]"#).unwrap();
        assert_eq!(
            (
                five.0.total_size,
                five.0.chunk_index,
                five.0.bytes_transferred
            ),
            (None, 7, 17)
        );
        let seven: ResponseBodyChunkEvent =
            serde_json::from_str(r#"["c","aGk=",false,9,2,null,5]"#).unwrap();
        assert_eq!((seven.0.chunk_index, seven.0.bytes_transferred), (2, 5));
        assert!(
            serde_json::from_str::<RequestBodyChunkEvent>(r#"["c","",false,1,2,3,4,5]"#).is_err()
        );
    }

    #[test]
    fn repeated_chunk_fields_are_refused_except_an_identical_top_level_id() {
        use crate::encoding::decode_event;
        use crate::frame::FrameType;
        use crate::Encoding;
        let same = br#"{"correlation_id":"a","correlation_id":"a","data":"","is_last":true}"#;
        let e = decode_event(FrameType::RequestBodyChunk, Encoding::Json, same).unwrap();
        assert_eq!(e.unwrap().correlation_id(), "a");
        // Outside the event decoder (which allows that one repetition) even that is refused.
        assert!(serde_json::from_slice::<RequestBodyChunkEvent>(same).is_err());
        for bad in [
            &br#"{"correlation_id":"a","correlation_id":"b","data":"","is_last":true}"#[..],
            br#"{"correlation_id":"a","data":"","data":"aGk=","is_last":true}"#,
            br#"{"correlation_id":"a","data":"","is_last":true,"is_last":false}"#,
            br#"{"correlation_id":"a","data":"","is_last":true,"chunk_index":1,"chunk_index":2}"#,
        ] {
            let got = decode_event(FrameType::RequestBodyChunk, Encoding::Json, bad).unwrap();
            assert!(got.is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }
}
