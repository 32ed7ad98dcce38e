//! Golden vectors, payloads: each of the 84 frames the reference implementation put on a real
//! socket (tests/vectors/vectors.jsonl) decodes, in its recorded `encoding`, into our typed message
//! for its type byte and direction, through the same `encoding` API the connections use.
//!
//! Beyond decoding:
//! - JSON payloads re-encoded by our JSON encoder give back the original JSON value, except for the
//!   few fields where we intentionally differ from the reference; [`intended_json_differences`]
//!   lists every one of them, and any other difference fails.
//! - MessagePack payloads decode to the same message as the JSON capture of the same name,
//!   except the agent responses that were not the handler's answer (the reference agent could not
//!   decode the reference proxy's MessagePack event, whose correlation id appears twice, and
//!   answered a default allow).
//! - Every decoded message survives our own encoders (JSON and MessagePack) unchanged.

use std::collections::BTreeMap;

use agent_protocol_core::encoding::{decode_event, decode_payload, encode_event, encode_frame};
use agent_protocol_core::frame::{FrameType, FRAME_HEADER_LEN};
use agent_protocol_core::handshake::{HandshakeRequest, HandshakeResponse};
use agent_protocol_core::registration::{RegistrationRequest, RegistrationResponse};
use agent_protocol_core::{
    AgentResponse, Cancel, ConfigUpdateRequest, Decision, Encoding, Event, FlowAction, FlowControl,
    HealthState, HealthStatus, MetricsReport, Ping, WebSocketDecision,
};
use bytes::BytesMut;
use serde_json::{json, Value};

const VECTORS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/vectors/vectors.jsonl");
const EXPECTED_LINES: usize = 84;

/// Vectors our types cannot decode yet, with the reason. Each must still FAIL to decode: when one
/// starts decoding, remove it from here so that it is checked like the others.
const KNOWN_DECODE_GAPS: &[(&str, &str, &str)] = &[];

/// Marker in `notes` of the MessagePack agent responses that are the reference agent's fallback.
const NOT_HANDLER_ANSWER: &str = "NOT the handler's answer";

fn hex_decode(s: &str) -> Vec<u8> {
    assert_eq!(s.len() % 2, 0, "odd number of hex digits");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex digit"))
        .collect()
}

/// A parsed vector line.
struct Vector {
    name: String,
    label: String,
    direction: String,
    encoding: Encoding,
    frame_type: FrameType,
    notes: String,
    payload: Vec<u8>,
}

fn load() -> Vec<Vector> {
    let text = std::fs::read_to_string(VECTORS).unwrap_or_else(|e| panic!("{VECTORS}: {e}"));
    let vectors: Vec<Vector> = text
        .lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| {
            let json: Value = serde_json::from_str(line).expect("vector line is JSON");
            let field = |k: &str| json[k].as_str().unwrap_or_default().to_owned();
            let label = format!(
                "line {} ({} / {} / {})",
                i + 1,
                field("name"),
                field("encoding"),
                field("reference_build")
            );
            let frame = hex_decode(&field("frame_hex"));
            let frame_type = FrameType::from_byte(frame[4])
                .unwrap_or_else(|| panic!("{label}: unknown type byte"));
            Vector {
                name: field("name"),
                direction: field("direction"),
                encoding: Encoding::from_name(&field("encoding"))
                    .unwrap_or_else(|| panic!("{label}: encoding")),
                frame_type,
                notes: field("notes"),
                payload: frame[FRAME_HEADER_LEN..].to_vec(),
                label,
            }
        })
        .collect();
    assert_eq!(vectors.len(), EXPECTED_LINES, "vector count");
    vectors
}

/// Our typed message for each (type byte, direction).
#[derive(Debug, PartialEq)]
enum Msg {
    HandshakeRequest(HandshakeRequest),
    HandshakeResponse(HandshakeResponse),
    RegistrationRequest(RegistrationRequest),
    RegistrationResponse(RegistrationResponse),
    Event(Event),
    AgentResponse(AgentResponse),
    HealthStatus(HealthStatus),
    MetricsReport(MetricsReport),
    ConfigUpdateRequest(ConfigUpdateRequest),
    FlowControl(FlowControl),
    Cancel(Cancel),
    Ping(Ping),
    Pong(Ping),
}

/// Decodes a payload the way a connection would. 0x01/0x02 are the handshake on UDS
/// (proxy->agent request, agent->proxy answer) and the registration on reverse connections
/// (agent->proxy request, proxy->agent answer).
fn decode(ty: FrameType, direction: &str, enc: Encoding, p: &[u8]) -> Result<Msg, String> {
    let agent_to_proxy = direction == "agent_to_proxy";
    let err = |e: agent_protocol_core::DecodeError| e.to_string();
    Ok(match ty {
        FrameType::HandshakeRequest if agent_to_proxy => {
            Msg::RegistrationRequest(decode_payload(ty, enc, p).map_err(err)?)
        }
        FrameType::HandshakeRequest => {
            Msg::HandshakeRequest(decode_payload(ty, enc, p).map_err(err)?)
        }
        FrameType::HandshakeResponse if agent_to_proxy => {
            Msg::HandshakeResponse(decode_payload(ty, enc, p).map_err(err)?)
        }
        FrameType::HandshakeResponse => {
            Msg::RegistrationResponse(decode_payload(ty, enc, p).map_err(err)?)
        }
        FrameType::AgentResponse => Msg::AgentResponse(decode_payload(ty, enc, p).map_err(err)?),
        FrameType::HealthStatus => Msg::HealthStatus(decode_payload(ty, enc, p).map_err(err)?),
        FrameType::MetricsReport => Msg::MetricsReport(decode_payload(ty, enc, p).map_err(err)?),
        FrameType::ConfigUpdateRequest => {
            Msg::ConfigUpdateRequest(decode_payload(ty, enc, p).map_err(err)?)
        }
        FrameType::FlowControl => Msg::FlowControl(decode_payload(ty, enc, p).map_err(err)?),
        FrameType::Cancel => Msg::Cancel(decode_payload(ty, enc, p).map_err(err)?),
        FrameType::Ping => Msg::Ping(decode_payload(ty, enc, p).map_err(err)?),
        FrameType::Pong => Msg::Pong(decode_payload(ty, enc, p).map_err(err)?),
        _ => Msg::Event(
            decode_event(ty, enc, p)
                .ok_or_else(|| format!("{ty:?} is not an event type"))?
                .map_err(err)?,
        ),
    })
}

/// Encodes a message with our encoder and returns the payload.
fn encode(ty: FrameType, enc: Encoding, m: &Msg) -> Vec<u8> {
    let mut out = BytesMut::new();
    match m {
        Msg::HandshakeRequest(v) => encode_frame(&mut out, ty, enc, v),
        Msg::HandshakeResponse(v) => encode_frame(&mut out, ty, enc, v),
        Msg::RegistrationRequest(v) => encode_frame(&mut out, ty, enc, v),
        Msg::RegistrationResponse(v) => encode_frame(&mut out, ty, enc, v),
        Msg::Event(v) => {
            assert_eq!(v.frame_type(), ty);
            encode_event(&mut out, enc, v)
        }
        Msg::AgentResponse(v) => encode_frame(&mut out, ty, enc, v),
        Msg::HealthStatus(v) => encode_frame(&mut out, ty, enc, v),
        Msg::MetricsReport(v) => encode_frame(&mut out, ty, enc, v),
        Msg::ConfigUpdateRequest(v) => encode_frame(&mut out, ty, enc, v),
        Msg::FlowControl(v) => encode_frame(&mut out, ty, enc, v),
        Msg::Cancel(v) => encode_frame(&mut out, ty, enc, v),
        Msg::Ping(v) => encode_frame(&mut out, ty, enc, v),
        Msg::Pong(v) => encode_frame(&mut out, ty, enc, v),
    }
    .unwrap_or_else(|e| panic!("encoding {ty:?} as {enc}: {e}"));
    assert_eq!(out[4], ty.as_byte());
    out[FRAME_HEADER_LEN..].to_vec()
}

fn is_known_gap(v: &Vector) -> bool {
    KNOWN_DECODE_GAPS
        .iter()
        .any(|(name, enc, _)| *name == v.name && *enc == v.encoding.as_str())
}

/// Every vector that decodes, with its message.
fn decoded(vectors: &[Vector]) -> Vec<(&Vector, Msg)> {
    vectors
        .iter()
        .filter(|v| !is_known_gap(v))
        .map(|v| {
            let m = decode(v.frame_type, &v.direction, v.encoding, &v.payload)
                .unwrap_or_else(|e| panic!("{}: {e}", v.label));
            (v, m)
        })
        .collect()
}

#[test]
fn every_vector_decodes_into_its_typed_message() {
    let vectors = load();
    let mut counts: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    for v in &vectors {
        let result = decode(v.frame_type, &v.direction, v.encoding, &v.payload);
        if is_known_gap(v) {
            assert!(
                result.is_err(),
                "{}: decodes now; remove it from KNOWN_DECODE_GAPS",
                v.label
            );
            continue;
        }
        let m = result.unwrap_or_else(|e| panic!("{}: {e}", v.label));
        let kind = match &m {
            Msg::HandshakeRequest(_) => "HandshakeRequest",
            Msg::HandshakeResponse(_) => "HandshakeResponse",
            Msg::RegistrationRequest(_) => "RegistrationRequest",
            Msg::RegistrationResponse(_) => "RegistrationResponse",
            Msg::Event(e) => {
                assert_eq!(e.frame_type(), v.frame_type, "{}", v.label);
                // Every event carries a correlation id, RequestHeaders in both places.
                assert!(!e.correlation_id().is_empty(), "{}: empty id", v.label);
                if let Event::RequestHeaders(h) = e {
                    assert_eq!(h.metadata.correlation_id, h.correlation_id, "{}", v.label);
                }
                "Event"
            }
            Msg::AgentResponse(r) => {
                assert!(r.correlation_id().is_some(), "{}: no routing id", v.label);
                "AgentResponse"
            }
            Msg::HealthStatus(_) => "HealthStatus",
            Msg::MetricsReport(_) => "MetricsReport",
            Msg::ConfigUpdateRequest(_) => "ConfigUpdateRequest",
            Msg::FlowControl(_) => "FlowControl",
            Msg::Cancel(_) => "Cancel",
            Msg::Ping(_) => "Ping",
            Msg::Pong(_) => "Pong",
        };
        *counts.entry((kind, v.encoding.as_str())).or_default() += 1;
    }
    let total: usize = counts.values().sum();
    assert_eq!(
        total + KNOWN_DECODE_GAPS.len(),
        EXPECTED_LINES,
        "{counts:?}"
    );
    // Both encodings of the messages that have them are covered.
    for kind in [
        "Event",
        "AgentResponse",
        "HealthStatus",
        "FlowControl",
        "Pong",
    ] {
        assert!(counts.contains_key(&(kind, "json")), "{kind} json");
        assert!(counts.contains_key(&(kind, "msgpack")), "{kind} msgpack");
    }
}

/// Spot checks of values in the reference's positional and duplicated-key MessagePack forms.
#[test]
fn reference_msgpack_layouts_decode_to_the_right_values() {
    let vectors = load();
    let find = |name: &str, enc: Encoding| {
        let v = vectors
            .iter()
            .find(|v| v.name == name && v.encoding == enc)
            .unwrap_or_else(|| panic!("no vector {name} {enc}"));
        decode(v.frame_type, &v.direction, v.encoding, &v.payload)
            .unwrap_or_else(|e| panic!("{}: {e}", v.label))
    };
    let mp = Encoding::MsgPack;

    // The reference proxy's repeated id: {correlation_id, correlation_id, status, headers}.
    match find("response_headers", mp) {
        Msg::Event(Event::ResponseHeaders(e)) => {
            assert_eq!(e.correlation_id, "rsh-1");
            assert_eq!(e.status, 200);
        }
        other => panic!("{other:?}"),
    }
    // The reference's binary chunk array, absent options left out: [cid, bin, is_last,
    // total_size, chunk_index, bytes_received] and the 5-element form without total_size.
    match find("request_body_chunk_binary", mp) {
        Msg::Event(Event::RequestBodyChunk(e)) => {
            assert_eq!(e.0.correlation_id, "rb-2");
            assert_eq!(&e.0.data[..], b"user=alice&pw=s3cret\0\xff\xfe");
            assert_eq!(
                (e.0.total_size, e.0.chunk_index, e.0.bytes_transferred),
                (Some(46), 1, 46)
            );
        }
        other => panic!("{other:?}"),
    }
    match find("request_body_chunk_binary_no_total_size", mp) {
        Msg::Event(Event::RequestBodyChunk(e)) => {
            assert_eq!(
                (e.0.total_size, e.0.chunk_index, e.0.bytes_transferred),
                (None, 7, 17)
            );
        }
        other => panic!("{other:?}"),
    }
    // Compact 10-element AgentResponse with a struct variant as an array and an f32 confidence.
    match find("agent_response_block_status_body_headers_audit", mp) {
        Msg::AgentResponse(r) => {
            match &r.decision {
                Decision::Block {
                    status,
                    body,
                    headers,
                } => {
                    assert_eq!(*status, 403);
                    assert_eq!(body.as_deref(), Some("Forbidden by WAF"));
                    assert_eq!(headers.as_ref().unwrap()["x-blocked-by"], "vec-agent");
                }
                other => panic!("{other:?}"),
            }
            assert_eq!(r.audit.confidence, Some(0.875));
            assert_eq!(r.correlation_id(), Some("rh-block"));
        }
        other => panic!("{other:?}"),
    }
    // The reference's own HealthStatus / FlowControl serde types, positional.
    match find("health_status_reference_type", mp) {
        Msg::HealthStatus(h) => assert_eq!(h.state, HealthState::Healthy),
        other => panic!("{other:?}"),
    }
    match find("flow_control_pause_reference_type", mp) {
        Msg::FlowControl(f) => assert_eq!(f.action, FlowAction::Pause),
        other => panic!("{other:?}"),
    }
}

/// The reference JSON value our JSON encoder is expected to produce for `name`: the original
/// payload with our intentional differences applied. Every difference is listed here.
fn intended_json_differences(name: &str, original: &Value) -> Value {
    let mut expected = original.clone();
    let obj = expected.as_object_mut().expect("JSON payloads are objects");
    match name {
        // The reference's `send_*_body_chunk_binary` serializes its binary chunk type, which has
        // both counters (the other direction's null). Our request and response chunks are
        // distinct types and each writes only its own counter, exactly like the reference's
        // string-form chunks (legacy_base64). The reference's decoders default the absent one.
        "request_body_chunk_binary" | "request_body_chunk_binary_no_total_size" => {
            assert_eq!(obj.remove("bytes_sent"), Some(Value::Null), "{name}");
        }
        "response_body_chunk_binary" => {
            assert_eq!(obj.remove("bytes_received"), Some(Value::Null), "{name}");
        }
        // HealthStatus: we always write `message` (null when absent) ...
        "health_status_client_parser_form" => {
            obj.insert("message".into(), Value::Null);
        }
        // ... and the integer state the reference proxy parses (`{"state": n}`), not
        // the reference type's tagged `{"status":..}` object, which that proxy cannot read; the
        // type's load/resources/valid_until_ms are not part of our message.
        "health_status_reference_type" => {
            assert_eq!(obj["state"], json!({"status": "healthy"}));
            obj.insert("state".into(), json!(1));
            for key in ["load", "resources", "valid_until_ms"] {
                assert_eq!(obj.remove(key), Some(Value::Null), "{name}: {key}");
            }
        }
        // FlowControl: we always write `buffer_available` (null unless granting capacity) ...
        "flow_control_pause_client_parser_form" | "flow_control_resume_client_parser_form" => {
            obj.insert("buffer_available".into(), Value::Null);
        }
        // ... and the integer action the reference proxy parses (`{"action": n}`), not the
        // reference type's tagged `{"type":"pause"}`.
        "flow_control_pause_reference_type" => {
            assert_eq!(obj["action"], json!({"type": "pause"}));
            obj.insert("action".into(), json!(1));
            obj.insert("buffer_available".into(), Value::Null);
        }
        _ => {}
    }
    expected
}

#[test]
fn json_vectors_reencode_to_the_same_json_value() {
    let vectors = load();
    let mut checked = 0;
    for (v, m) in decoded(&vectors) {
        if v.encoding != Encoding::Json {
            continue;
        }
        let original: Value = serde_json::from_slice(&v.payload).expect("JSON payload");
        let ours: Value = serde_json::from_slice(&encode(v.frame_type, Encoding::Json, &m))
            .expect("our JSON is JSON");
        let expected = intended_json_differences(&v.name, &original);
        assert_eq!(
            ours, expected,
            "{}: our JSON differs from the reference's beyond the intended differences",
            v.label
        );
        checked += 1;
    }
    assert_eq!(checked, 51, "JSON vectors");
}

#[test]
fn msgpack_vectors_decode_like_their_json_twins() {
    let vectors = load();
    let all = decoded(&vectors);
    let mut compared = 0;
    let mut fallbacks = 0;
    for (v, m) in all.iter().filter(|(v, _)| v.encoding == Encoding::MsgPack) {
        let Some((twin, twin_msg)) = all.iter().find(|(t, _)| {
            t.name == v.name && t.encoding == Encoding::Json && t.frame_type == v.frame_type
        }) else {
            // pong_echo_of_msgpack_ping: the JSON Pong vector echoes a different ping.
            assert_eq!(
                v.name, "pong_echo_of_msgpack_ping",
                "{}: no JSON twin",
                v.label
            );
            continue;
        };
        if v.notes.contains(NOT_HANDLER_ANSWER) {
            // The reference agent failed to decode the reference proxy's MessagePack event (the
            // correlation id appears twice) and answered its default allow with an empty id; the
            // JSON twin is the real answer.
            let Msg::AgentResponse(r) = m else {
                panic!("{}: expected an AgentResponse", v.label)
            };
            assert_eq!(r.correlation_id(), Some(""), "{}", v.label);
            assert_eq!(r.decision, Decision::Allow, "{}", v.label);
            assert!(
                !r.needs_more && r.request_body_mutation.is_none(),
                "{}",
                v.label
            );
            assert!(
                matches!(r.websocket_decision, None | Some(WebSocketDecision::Allow)),
                "{}",
                v.label
            );
            assert_ne!(m, twin_msg, "{} vs {}", v.label, twin.label);
            fallbacks += 1;
            continue;
        }
        if v.name == "request_headers_browser_20_headers" {
            // Same headers, different order: the reference writes the MessagePack headers from a
            // HashMap (random order) and the JSON ones sorted. Compare as JSON values (maps).
            let a: Value =
                serde_json::from_slice(&encode(v.frame_type, Encoding::Json, m)).unwrap();
            let b: Value =
                serde_json::from_slice(&encode(v.frame_type, Encoding::Json, twin_msg)).unwrap();
            assert_eq!(a, b, "{} vs {}", v.label, twin.label);
        } else {
            assert_eq!(m, twin_msg, "{} vs {}", v.label, twin.label);
        }
        compared += 1;
    }
    assert_eq!(
        fallbacks, 5,
        "agent responses that were not the handler's answer"
    );
    // 33 MessagePack vectors, less the twinless pong, the 5 fallbacks and the known gaps.
    let msgpack_gaps = KNOWN_DECODE_GAPS
        .iter()
        .filter(|(_, enc, _)| *enc == "msgpack")
        .count();
    assert_eq!(
        compared,
        33 - 1 - 5 - msgpack_gaps,
        "MessagePack vectors compared"
    );

    // In particular, every agent response that was the handler's answer agrees across encodings.
    let responses = all
        .iter()
        .filter(|(v, _)| {
            v.encoding == Encoding::MsgPack
                && v.frame_type == FrameType::AgentResponse
                && !v.notes.contains(NOT_HANDLER_ANSWER)
        })
        .count();
    assert_eq!(responses, 8, "agent responses compared across encodings");
}

#[test]
fn decoded_vectors_survive_our_encoders() {
    let vectors = load();
    for (v, m) in decoded(&vectors) {
        for enc in [Encoding::Json, Encoding::MsgPack] {
            let payload = encode(v.frame_type, enc, &m);
            let back = decode(v.frame_type, &v.direction, enc, &payload)
                .unwrap_or_else(|e| panic!("{} re-encoded as {enc}: {e}", v.label));
            assert_eq!(back, m, "{} re-encoded as {enc}", v.label);
        }
    }
}
