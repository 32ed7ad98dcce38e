//! Round-trip stability of the payload codecs, shared by the `codec_json` and `codec_msgpack`
//! targets.
//!
//! The first input byte picks one of the 18 frame types; the rest is decoded as that type's
//! payload in the target's encoding, into the matching typed message (both the UDS handshake and
//! the reverse-registration message for 0x01 and 0x02). Whatever decodes is re-encoded in the
//! same encoding through the frame layer, the frame is read back with [`FrameDecoder`], and the
//! payload must decode again to the same value. Decoding is lenient (the reference's positional
//! arrays, its repeated correlation id, `bin` for strings, a JSON payload in a MessagePack
//! session...), so the first decode may normalize; what we write must then be a fixed point.

use std::fmt::Debug;

use agent_protocol_core::encoding::{
    decode_event, decode_payload, effective_encoding, encode_event, encode_frame, encode_response,
};
use agent_protocol_core::frame::{Decoded, FrameDecoder, FrameType};
use agent_protocol_core::handshake::{HandshakeRequest, HandshakeResponse};
use agent_protocol_core::limits::MessageLimits;
use agent_protocol_core::registration::{RegistrationRequest, RegistrationResponse};
use agent_protocol_core::{
    testing, AgentResponse, Cancel, ConfigUpdateRequest, Encoding, Event, FlowControl,
    HealthStatus, MetricsReport, Ping,
};
use bytes::{Bytes, BytesMut};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// How two decodes of the same message are compared.
#[derive(Clone, Copy)]
enum Compare {
    /// `PartialEq`: the type holds no float (a `serde_json::Value` cannot hold NaN or infinity).
    Exact,
    /// Through `serde_json::to_value`, for types with `f32`/`f64` fields. Two legitimate
    /// instabilities make `==` wrong for them:
    /// - NaN (which MessagePack carries) is not equal to itself;
    /// - JSON has no non-finite numbers: serde_json writes NaN and ±infinity as `null`, so a
    ///   confidence of `1e39` (infinite once narrowed to `f32`) decodes as `Some(inf)` and comes
    ///   back as `None`; and a histogram `le` of `"-Inf"` is written back as `"+Inf"`, as the
    ///   reference writes every infinite bound.
    ///
    /// The JSON-value view collapses exactly those (non-finite floats become `null`, every
    /// infinite `le` becomes `"+Inf"`), sorts map keys, and keeps every finite float bit for bit.
    JsonView,
}

/// Runs one round trip: `data[0]` selects the frame type, `data[1..]` is the payload.
pub fn round_trip(encoding: Encoding, data: &[u8]) {
    let Some((&selector, payload)) = data.split_first() else {
        return;
    };
    let frame_type = FrameType::ALL[usize::from(selector) % FrameType::ALL.len()];
    use Compare::*;
    match frame_type {
        ty if ty.is_event() => event(ty, encoding, payload),
        FrameType::HandshakeRequest => {
            typed::<HandshakeRequest>(frame_type, encoding, payload, Exact);
            typed::<RegistrationRequest>(frame_type, encoding, payload, Exact);
        }
        FrameType::HandshakeResponse => {
            typed::<HandshakeResponse>(frame_type, encoding, payload, Exact);
            typed::<RegistrationResponse>(frame_type, encoding, payload, Exact);
        }
        FrameType::AgentResponse => typed::<AgentResponse>(frame_type, encoding, payload, JsonView),
        FrameType::HealthStatus => typed::<HealthStatus>(frame_type, encoding, payload, Exact),
        FrameType::MetricsReport => typed::<MetricsReport>(frame_type, encoding, payload, JsonView),
        FrameType::ConfigUpdateRequest => {
            typed::<ConfigUpdateRequest>(frame_type, encoding, payload, Exact)
        }
        FrameType::FlowControl => typed::<FlowControl>(frame_type, encoding, payload, Exact),
        FrameType::Cancel => typed::<Cancel>(frame_type, encoding, payload, Exact),
        FrameType::Ping | FrameType::Pong => typed::<Ping>(frame_type, encoding, payload, Exact),
        other => unreachable!("{other:?} is an event type"),
    }
}

/// Puts `payload` through the frame layer and returns what a decoder reads back.
fn reframe(frame_type: FrameType, encoding: Encoding, wire: BytesMut) -> Bytes {
    let mut wire = wire;
    let total = wire.len();
    let mut decoder = FrameDecoder::new();
    let frame = match decoder.decode(&mut wire) {
        Ok(Some(Decoded::Frame(frame))) => frame,
        other => panic!("our own {total}-byte {frame_type:?} frame did not decode: {other:?}"),
    };
    assert!(wire.is_empty(), "bytes left after our own frame");
    assert_eq!(frame.frame_type, frame_type);
    // Our output must not be mistaken for the other encoding by the `{` sniff.
    assert_eq!(
        effective_encoding(encoding, &frame.payload),
        encoding,
        "our {encoding} payload is sniffed as another encoding"
    );
    frame.payload
}

fn typed<T>(frame_type: FrameType, encoding: Encoding, payload: &[u8], compare: Compare)
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let Ok(first) = decode_payload::<T>(frame_type, encoding, payload) else {
        return;
    };
    let mut wire = BytesMut::new();
    encode_frame(&mut wire, frame_type, encoding, &first)
        .unwrap_or_else(|e| panic!("cannot re-encode what we decoded ({first:?}): {e}"));
    let payload2 = reframe(frame_type, encoding, wire);
    let second = decode_payload::<T>(frame_type, encoding, &payload2).unwrap_or_else(|e| {
        panic!(
            "our re-encoding of {first:?} does not decode: {e}\npayload: {}",
            String::from_utf8_lossy(&payload2)
        )
    });
    let same = match compare {
        Compare::Exact => first == second,
        Compare::JsonView => json_view(&first) == json_view(&second),
    };
    assert!(same, "round trip changed the value:\n{first:?}\n{second:?}");
}

fn json_view<T: Serialize + Debug>(value: &T) -> serde_json::Value {
    serde_json::to_value(value).unwrap_or_else(|e| panic!("no JSON view of {value:?}: {e}"))
}

fn event(frame_type: FrameType, encoding: Encoding, payload: &[u8]) {
    fast_path_agrees(frame_type, encoding, payload);
    let Some(Ok(first)) = decode_event(frame_type, encoding, payload) else {
        return;
    };
    assert_eq!(first.frame_type(), frame_type);
    let mut wire = BytesMut::new();
    encode_event(&mut wire, encoding, &first)
        .unwrap_or_else(|e| panic!("cannot re-encode what we decoded ({first:?}): {e}"));
    let payload2 = reframe(frame_type, encoding, wire);
    let second = match decode_event(frame_type, encoding, &payload2) {
        Some(Ok(event)) => event,
        other => panic!(
            "our re-encoding of {first:?} does not decode: {other:?}\npayload: {}",
            String::from_utf8_lossy(&payload2)
        ),
    };
    // Events hold no float outside `serde_json::Value`, so `==` is exact.
    assert_eq!(first, second, "round trip changed the event");
}

/// Whatever a direct RequestHeaders reader takes decodes, the general way, to the same
/// event; and the decoder connections use reaches the general decoder's decision either way.
fn fast_path_agrees(frame_type: FrameType, encoding: Encoding, payload: &[u8]) {
    let limits = MessageLimits::default();
    let general = testing::decode_event_general(frame_type, encoding, payload, limits);
    let used = decode_event(frame_type, encoding, payload);
    assert_eq!(
        used.as_ref().map(|r| r.as_ref().ok()),
        general.as_ref().map(|r| r.as_ref().ok()),
        "the decoder in use and the general one disagree"
    );
    assert_eq!(
        used.as_ref().map(Result::is_ok),
        general.as_ref().map(Result::is_ok)
    );
    if frame_type == FrameType::AgentResponse {
        // The direct reader of a plain allow takes only what the general decoder reads the same.
        if let Some(fast) = testing::fast_agent_response(encoding, payload) {
            let general = decode_payload::<AgentResponse>(frame_type, encoding, payload);
            assert_eq!(
                general.ok(),
                Some(fast),
                "the direct answer reader disagrees"
            );
        }
        // Whatever answer the bytes hold, the direct writer writes it as serde does.
        if let Ok(answer) = decode_payload::<AgentResponse>(frame_type, encoding, payload) {
            let (mut direct, mut general) = (BytesMut::new(), BytesMut::new());
            let direct_ok = encode_response(&mut direct, encoding, &answer).is_ok();
            let general_ok = encode_frame(&mut general, frame_type, encoding, &answer).is_ok();
            assert_eq!(direct_ok, general_ok);
            assert_eq!(direct, general, "the direct answer writer disagrees");
        }
        return;
    }
    if frame_type != FrameType::RequestHeaders {
        return;
    }
    if let Some(fast) = testing::fast_request_headers(encoding, payload, limits) {
        let mut fast = Event::RequestHeaders(fast);
        fast.normalize();
        match general {
            Some(Ok(general)) => assert_eq!(fast, general, "the fast path decoded another event"),
            other => panic!("the fast path took a payload the general decoder refuses: {other:?}"),
        }
    }
}
