//! Property tests of the payload codecs, through the frame layer, in both encodings.
//!
//! - Round trip: arbitrary instances of every event (0x10..=0x17), of `AgentResponse` (every
//!   `Decision`, header ops, body mutations, WebSocket decisions, audit data with custom string,
//!   number and bool values), of every control message and of the handshake and registration
//!   messages are written with `encode_frame`/`encode_event`, read back with `FrameDecoder`, and
//!   decode to exactly the value written, in JSON and in MessagePack.
//! - Our MessagePack (named maps only): every message is a map at the top level, no map has a
//!   duplicate key at any depth, every key is a `str`, and body bytes are `bin` exactly where a
//!   body is (chunk and WebSocket `data`, body-mutation `data`) and nowhere else. Checked with a
//!   small hand-written MessagePack walker ([`mp`]).
//! - The reference's strict decoders accept what we write: our MessagePack
//!   decodes with `rmp_serde::from_slice`, and our JSON with `serde_json`, into serde-derived
//!   mirror structs written here as the reference declares them: `String` fields, required keys
//!   without defaults, `#[serde(default)]` only where the reference has it, duplicate keys
//!   rejected (serde derive does that), for RequestHeaders (with and without `traceparent`),
//!   RequestBodyChunk, ResponseHeaders, RequestComplete and AgentResponse. The mirrors also deny
//!   unknown fields, so we send exactly the reference's keys (plus the top-level `correlation_id`
//!   the reference proxy adds to RequestHeaders).

use std::collections::HashMap;
use std::fmt::Debug;

use agent_protocol_core::control::GaugeMetric;
use agent_protocol_core::encoding::{decode_event, decode_payload, encode_event, encode_frame};
use agent_protocol_core::frame::{Decoded, FrameDecoder, FrameType};
use agent_protocol_core::response::TextSpan;
use agent_protocol_core::*;
use base64::Engine;
use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

use agent_protocol_tests::strategies::*;

const ENCODINGS: [Encoding; 2] = [Encoding::Json, Encoding::MsgPack];

// ----- the frame layer ---------------------------------------------------------------------

/// Reads back the single frame in `wire` and returns its payload.
fn read_frame(frame_type: FrameType, mut wire: BytesMut) -> Bytes {
    let mut decoder = FrameDecoder::new();
    let frame = match decoder.decode(&mut wire) {
        Ok(Some(Decoded::Frame(frame))) => frame,
        other => panic!("our {frame_type:?} frame did not decode: {other:?}"),
    };
    assert!(wire.is_empty(), "bytes after our frame");
    assert_eq!(frame.frame_type, frame_type);
    frame.payload
}

/// `value` as the payload of a `frame_type` frame in `encoding`, read back through the decoder.
fn framed<T: Serialize>(frame_type: FrameType, encoding: Encoding, value: &T) -> Bytes {
    let mut wire = BytesMut::new();
    encode_frame(&mut wire, frame_type, encoding, value).expect("encodes");
    read_frame(frame_type, wire)
}

fn framed_event(encoding: Encoding, event: &Event) -> Bytes {
    let mut wire = BytesMut::new();
    encode_event(&mut wire, encoding, event).expect("encodes");
    read_frame(event.frame_type(), wire)
}

/// Where `bin` may (and, for non-nil values, must) appear in a message's MessagePack.
fn body_paths(frame_type: FrameType) -> &'static [&'static str] {
    match frame_type {
        FrameType::RequestBodyChunk | FrameType::ResponseBodyChunk | FrameType::WebSocketFrame => {
            &["data"]
        }
        FrameType::AgentResponse => &["request_body_mutation.data", "response_body_mutation.data"],
        _ => &[],
    }
}

/// Round trip of a typed message in both encodings, with the MessagePack shape checks.
fn round_trip<T>(frame_type: FrameType, value: &T)
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    for encoding in ENCODINGS {
        let payload = framed(frame_type, encoding, value);
        let back: T = decode_payload(frame_type, encoding, &payload)
            .unwrap_or_else(|e| panic!("{encoding}: {e}"));
        assert_eq!(&back, value, "{encoding} round trip");
        if encoding == Encoding::MsgPack {
            mp::check_shape(&payload, body_paths(frame_type));
        }
    }
}

fn round_trip_event(event: &Event) {
    for encoding in ENCODINGS {
        let payload = framed_event(encoding, event);
        let back = decode_event(event.frame_type(), encoding, &payload)
            .expect("an event type")
            .unwrap_or_else(|e| panic!("{encoding}: {e}"));
        assert_eq!(&back, event, "{encoding} round trip");
        if encoding == Encoding::MsgPack {
            mp::check_shape(&payload, body_paths(event.frame_type()));
        }
    }
}

// ----- round trips -------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn every_event_round_trips(event in any_event()) {
        round_trip_event(&event);
    }

    #[test]
    fn agent_response_round_trips(response in agent_response()) {
        round_trip(FrameType::AgentResponse, &response);
    }

    #[test]
    fn control_messages_round_trip(
        health in health_status(),
        flow in flow_control(),
        metrics in metrics_report(),
        config in config_update_request(),
        cancel in (text(), cancel_reason(), any::<u64>()),
        ping in (any::<u64>(), any::<u64>()),
    ) {
        round_trip(FrameType::HealthStatus, &health);
        round_trip(FrameType::FlowControl, &flow);
        round_trip(FrameType::MetricsReport, &metrics);
        round_trip(FrameType::ConfigUpdateRequest, &config);
        let (correlation_id, reason, timestamp_ms) = cancel;
        round_trip(FrameType::Cancel, &Cancel { correlation_id, reason, timestamp_ms });
        let ping = Ping { sequence: ping.0, timestamp_ms: ping.1 };
        round_trip(FrameType::Ping, &ping);
        round_trip(FrameType::Pong, &ping);
    }

    #[test]
    fn handshake_and_registration_round_trip(
        hs_request in handshake_request(),
        hs_response in handshake_response(),
        reg_request in registration_request(),
        reg_response in registration_response(),
    ) {
        round_trip(FrameType::HandshakeRequest, &hs_request);
        round_trip(FrameType::HandshakeResponse, &hs_response);
        round_trip(FrameType::HandshakeRequest, &reg_request);
        round_trip(FrameType::HandshakeResponse, &reg_response);
    }
}

// ----- the reference's strict decoders -----------------------------------------------------

/// Body bytes as the reference reads them: a base64 (standard, padded) string in JSON, `bin`
/// (nothing else) in MessagePack.
#[derive(Debug, PartialEq)]
struct StrictBody(Vec<u8>);

impl<'de> Deserialize<'de> for StrictBody {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        if d.is_human_readable() {
            let text = String::deserialize(d)?;
            base64::engine::general_purpose::STANDARD
                .decode(text)
                .map(StrictBody)
                .map_err(D::Error::custom)
        } else {
            struct BinOnly;
            impl<'de> serde::de::Visitor<'de> for BinOnly {
                type Value = StrictBody;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("MessagePack bin")
                }
                fn visit_bytes<E: Error>(self, v: &[u8]) -> Result<StrictBody, E> {
                    Ok(StrictBody(v.to_vec()))
                }
                fn visit_byte_buf<E: Error>(self, v: Vec<u8>) -> Result<StrictBody, E> {
                    Ok(StrictBody(v))
                }
            }
            d.deserialize_bytes(BinOnly)
        }
    }
}

/// The reference's `RequestMetadata`: `traceparent` is an Option without a default, omitted
/// when None.
#[derive(Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct RefRequestMetadata {
    correlation_id: String,
    request_id: String,
    client_ip: String,
    client_port: u16,
    server_name: Option<String>,
    protocol: String,
    tls_version: Option<String>,
    tls_cipher: Option<String>,
    route_id: Option<String>,
    upstream_id: Option<String>,
    timestamp: String,
    traceparent: Option<String>,
}

/// `RequestHeadersEvent` with the top-level id the reference proxy adds on the wire.
#[derive(Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct RefRequestHeaders {
    correlation_id: String,
    metadata: RefRequestMetadata,
    method: String,
    uri: String,
    headers: HashMap<String, Vec<String>>,
}

/// `RequestBodyChunkEvent` (string form: body bytes as base64 text in JSON, `bin` in MessagePack).
#[derive(Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct RefRequestBodyChunk {
    correlation_id: String,
    data: StrictBody,
    is_last: bool,
    total_size: Option<u64>,
    #[serde(default)]
    chunk_index: u32,
    #[serde(default)]
    bytes_received: u64,
}

/// `ResponseHeadersEvent`.
#[derive(Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct RefResponseHeaders {
    correlation_id: String,
    status: u16,
    headers: HashMap<String, Vec<String>>,
}

/// `RequestCompleteEvent`.
#[derive(Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct RefRequestComplete {
    correlation_id: String,
    status: u16,
    duration_ms: u64,
    request_body_size: u64,
    response_body_size: u64,
    upstream_attempts: u32,
    error: Option<String>,
}

/// `Decision`: externally tagged, snake_case, every key of a variant required except the
/// Options.
#[derive(Debug, PartialEq, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum RefDecision {
    Allow,
    Block {
        status: u16,
        body: Option<String>,
        headers: Option<HashMap<String, String>>,
    },
    Redirect {
        url: String,
        status: u16,
    },
    Challenge {
        challenge_type: String,
        params: HashMap<String, String>,
    },
}

#[derive(Debug, PartialEq, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum RefHeaderOp {
    Set { name: String, value: String },
    Add { name: String, value: String },
    Remove { name: String },
}

/// `BodyMutation`: `data` is an Option without a default attribute; `chunk_index` has one.
#[derive(Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct RefBodyMutation {
    data: Option<StrictBody>,
    #[serde(default)]
    chunk_index: u32,
}

#[derive(Debug, PartialEq, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum RefWebSocketDecision {
    Allow,
    Drop,
    Close { code: u16, reason: String },
}

#[derive(Debug, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RefAudit {
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    rule_ids: Vec<String>,
    confidence: Option<f32>,
    #[serde(default)]
    reason_codes: Vec<String>,
    #[serde(default)]
    custom: Map<String, Value>,
}

/// `AgentResponse`: `version` and `decision` required, the rest defaulted.
#[derive(Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct RefAgentResponse {
    version: u32,
    decision: RefDecision,
    #[serde(default)]
    request_headers: Vec<RefHeaderOp>,
    #[serde(default)]
    response_headers: Vec<RefHeaderOp>,
    #[serde(default)]
    routing_metadata: HashMap<String, String>,
    #[serde(default)]
    audit: RefAudit,
    #[serde(default)]
    needs_more: bool,
    #[serde(default)]
    request_body_mutation: Option<RefBodyMutation>,
    #[serde(default)]
    response_body_mutation: Option<RefBodyMutation>,
    #[serde(default)]
    websocket_decision: Option<RefWebSocketDecision>,
}

fn ref_headers(headers: &Headers) -> HashMap<String, Vec<String>> {
    headers
        .entries()
        .map(|(name, values)| (name.to_string(), values.map(str::to_string).collect()))
        .collect()
}

fn ref_request_headers(e: &RequestHeadersEvent) -> RefRequestHeaders {
    let m = &e.metadata;
    RefRequestHeaders {
        correlation_id: e.correlation_id.to_string(),
        metadata: RefRequestMetadata {
            correlation_id: m.correlation_id.to_string(),
            request_id: m.request_id.to_string(),
            client_ip: m.client_ip.to_string(),
            client_port: m.client_port,
            server_name: m.server_name.clone().map(Into::into),
            protocol: m.protocol.to_string(),
            tls_version: m.tls_version.clone().map(Into::into),
            tls_cipher: m.tls_cipher.clone().map(Into::into),
            route_id: m.route_id.clone().map(Into::into),
            upstream_id: m.upstream_id.clone().map(Into::into),
            timestamp: m.timestamp.to_string(),
            traceparent: m.traceparent.clone().map(Into::into),
        },
        method: e.method.to_string(),
        uri: e.uri.to_string(),
        headers: ref_headers(&e.headers),
    }
}

fn ref_header_op(op: &HeaderOp) -> RefHeaderOp {
    match op.clone() {
        HeaderOp::Set { name, value } => RefHeaderOp::Set { name, value },
        HeaderOp::Add { name, value } => RefHeaderOp::Add { name, value },
        HeaderOp::Remove { name } => RefHeaderOp::Remove { name },
    }
}

fn ref_mutation(m: &BodyMutation) -> RefBodyMutation {
    RefBodyMutation {
        data: m.data.as_ref().map(|d| StrictBody(d.to_vec())),
        chunk_index: m.chunk_index,
    }
}

fn ref_agent_response(r: &AgentResponse) -> RefAgentResponse {
    RefAgentResponse {
        version: r.version,
        decision: match r.decision.clone() {
            Decision::Allow => RefDecision::Allow,
            Decision::Block {
                status,
                body,
                headers,
            } => RefDecision::Block {
                status,
                body,
                headers,
            },
            Decision::Redirect { url, status } => RefDecision::Redirect { url, status },
            Decision::Challenge {
                challenge_type,
                params,
            } => RefDecision::Challenge {
                challenge_type,
                params,
            },
        },
        request_headers: r.request_headers.iter().map(ref_header_op).collect(),
        response_headers: r.response_headers.iter().map(ref_header_op).collect(),
        routing_metadata: r.routing_metadata.clone(),
        audit: RefAudit {
            tags: r.audit.tags.clone(),
            rule_ids: r.audit.rule_ids.clone(),
            confidence: r.audit.confidence,
            reason_codes: r.audit.reason_codes.clone(),
            // The reference keeps the routing id among the custom values, where it travels.
            custom: {
                let mut custom = r.audit.custom.clone();
                if let Some(id) = r.correlation_id() {
                    custom.insert("correlation_id".into(), Value::String(id.into()));
                }
                custom
            },
        },
        needs_more: r.needs_more,
        request_body_mutation: r.request_body_mutation.as_ref().map(ref_mutation),
        response_body_mutation: r.response_body_mutation.as_ref().map(ref_mutation),
        websocket_decision: r.websocket_decision.clone().map(|d| match d {
            WebSocketDecision::Allow => RefWebSocketDecision::Allow,
            WebSocketDecision::Drop => RefWebSocketDecision::Drop,
            WebSocketDecision::Close { code, reason } => {
                RefWebSocketDecision::Close { code, reason }
            }
        }),
    }
}

/// Decodes our `payload` in `encoding` the way the reference does: `rmp_serde::from_slice` for
/// MessagePack, `serde_json` for JSON, into the strict mirror `R`.
fn strict_decode<R: DeserializeOwned>(encoding: Encoding, payload: &[u8]) -> R {
    let result = match encoding {
        Encoding::Json => serde_json::from_slice(payload).map_err(|e| e.to_string()),
        Encoding::MsgPack => rmp_serde::from_slice(payload).map_err(|e| e.to_string()),
    };
    result.unwrap_or_else(|e| {
        panic!(
            "the reference's strict {encoding} decoder refuses our payload: {e}\n{}",
            String::from_utf8_lossy(payload)
        )
    })
}

fn check_strict_request_headers(event: &RequestHeadersEvent) {
    let expected = ref_request_headers(event);
    for encoding in ENCODINGS {
        let payload = framed_event(encoding, &Event::RequestHeaders(event.clone()));
        let got: RefRequestHeaders = strict_decode(encoding, &payload);
        assert_eq!(got, expected, "{encoding}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn reference_decodes_request_headers_with_traceparent(
        event in request_headers_with(text().prop_map(Some).boxed())
    ) {
        check_strict_request_headers(&event);
    }

    #[test]
    fn reference_decodes_request_headers_without_traceparent(
        event in request_headers_with(Just(None).boxed())
    ) {
        check_strict_request_headers(&event);
    }

    #[test]
    fn reference_decodes_request_body_chunks(chunk in body_chunk()) {
        let expected = RefRequestBodyChunk {
            correlation_id: chunk.correlation_id.to_string(),
            data: StrictBody(chunk.data.to_vec()),
            is_last: chunk.is_last,
            total_size: chunk.total_size,
            chunk_index: chunk.chunk_index,
            bytes_received: chunk.bytes_transferred,
        };
        let event = Event::RequestBodyChunk(RequestBodyChunkEvent(chunk));
        for encoding in ENCODINGS {
            let got: RefRequestBodyChunk = strict_decode(encoding, &framed_event(encoding, &event));
            prop_assert_eq!(&got, &expected, "{}", encoding);
        }
    }

    #[test]
    fn reference_decodes_response_headers(event in response_headers()) {
        let expected = RefResponseHeaders {
            correlation_id: event.correlation_id.to_string(),
            status: event.status,
            headers: ref_headers(&event.headers),
        };
        let event = Event::ResponseHeaders(event);
        for encoding in ENCODINGS {
            let got: RefResponseHeaders = strict_decode(encoding, &framed_event(encoding, &event));
            prop_assert_eq!(&got, &expected, "{}", encoding);
        }
    }

    #[test]
    fn reference_decodes_request_complete(event in request_complete()) {
        let expected = RefRequestComplete {
            correlation_id: event.correlation_id.to_string(),
            status: event.status,
            duration_ms: event.duration_ms,
            request_body_size: event.request_body_size,
            response_body_size: event.response_body_size,
            upstream_attempts: event.upstream_attempts,
            error: event.error.clone().map(Into::into),
        };
        let event = Event::RequestComplete(event);
        for encoding in ENCODINGS {
            let got: RefRequestComplete = strict_decode(encoding, &framed_event(encoding, &event));
            prop_assert_eq!(&got, &expected, "{}", encoding);
        }
    }

    #[test]
    fn reference_decodes_agent_responses(response in agent_response()) {
        let expected = ref_agent_response(&response);
        for encoding in ENCODINGS {
            let payload = framed(FrameType::AgentResponse, encoding, &response);
            let got: RefAgentResponse = strict_decode(encoding, &payload);
            prop_assert_eq!(&got, &expected, "{}", encoding);
        }
    }
}

/// The smallest valid UDS answer the reference accepts reads as an allow, and one answer of each
/// decision kind reaches the strict mirror in both encodings (a fixed check next to the random
/// ones, so a broken strategy cannot hide a variant).
#[test]
fn every_decision_kind_reaches_the_strict_decoder() {
    let minimal: RefAgentResponse = serde_json::from_str(
        r#"{"version":2,"decision":"allow","audit":{"custom":{"correlation_id":"c"}}}"#,
    )
    .unwrap();
    assert_eq!(minimal.decision, RefDecision::Allow);
    let decisions = [
        Decision::Allow,
        Decision::block(403, None),
        Decision::Block {
            status: 429,
            body: Some("slow down".into()),
            headers: Some([("retry-after".to_string(), "1".to_string())].into()),
        },
        Decision::Redirect {
            url: "https://example.com/".into(),
            status: 302,
        },
        Decision::Challenge {
            challenge_type: "captcha".into(),
            params: [("site".to_string(), "k".to_string())].into(),
        },
    ];
    for decision in decisions {
        let mut response = AgentResponse::new(decision).with_correlation_id("c1");
        response.request_body_mutation = Some(BodyMutation::drop_chunk(1));
        response.response_body_mutation = Some(BodyMutation::replace(2, &b"\x00\xff"[..]));
        response.websocket_decision = Some(WebSocketDecision::Close {
            code: 1008,
            reason: "policy".into(),
        });
        response
            .audit
            .custom
            .insert("score".into(), Value::from(0.25));
        response.audit.custom.insert("hits".into(), Value::from(3));
        response
            .audit
            .custom
            .insert("final".into(), Value::from(true));
        let expected = ref_agent_response(&response);
        for encoding in ENCODINGS {
            let payload = framed(FrameType::AgentResponse, encoding, &response);
            assert_eq!(
                strict_decode::<RefAgentResponse>(encoding, &payload),
                expected
            );
        }
        round_trip(FrameType::AgentResponse, &response);
    }
}

/// JSON floats read back bit for bit (serde_json's default parser can be one ULP off; core
/// enables its `float_roundtrip` feature). The value is one the property tests tripped on.
#[test]
fn json_floats_read_back_exactly() {
    let x = 3.851380302800766e-181_f64;
    let event = Event::Configure(ConfigureEvent {
        correlation_id: "c".into(),
        config: serde_json::json!({ "x": x }),
        config_version: None,
    });
    round_trip_event(&event);
    let report = MetricsReport {
        gauges: vec![GaugeMetric {
            name: "g".into(),
            help: None,
            labels: HashMap::new(),
            value: x,
        }],
        ..Default::default()
    };
    round_trip(FrameType::MetricsReport, &report);
}

/// Spans and detections travel as JSON text in routing metadata (`guardrail_response`); that text
/// survives both encodings.
#[test]
fn guardrail_result_in_routing_metadata_survives_both_encodings() {
    let result = GuardrailResponse {
        detected: true,
        confidence: 0.75,
        detections: vec![GuardrailDetection {
            category: "pii".into(),
            description: "ssn".into(),
            severity: GuardrailSeverity::High,
            confidence: Some(0.5),
            span: Some(TextSpan { start: 3, end: 14 }),
        }],
        redacted_content: Some("my ssn is [REDACTED]".into()),
    };
    let response = AgentResponse::allow().with_guardrail(&result);
    for encoding in ENCODINGS {
        let payload = framed(FrameType::AgentResponse, encoding, &response);
        let back: AgentResponse =
            decode_payload(FrameType::AgentResponse, encoding, &payload).expect("decodes");
        assert_eq!(back.guardrail(), Some(result.clone()));
    }
}

// ----- a small MessagePack walker ----------------------------------------------------------

mod mp {
    use rmp::Marker;

    /// One MessagePack value, as written (maps keep their entries in order, duplicates included).
    #[derive(Debug, Clone, PartialEq)]
    pub enum Mp {
        Nil,
        Bool(bool),
        Int(i128),
        Float(f64),
        Str(String),
        Bin(Vec<u8>),
        Array(Vec<Mp>),
        Map(Vec<(Mp, Mp)>),
        Ext(i8, Vec<u8>),
    }

    struct Reader<'a> {
        bytes: &'a [u8],
        pos: usize,
    }

    impl<'a> Reader<'a> {
        fn take(&mut self, n: usize) -> &'a [u8] {
            let end = self.pos + n;
            assert!(
                end <= self.bytes.len(),
                "truncated MessagePack at {}",
                self.pos
            );
            let s = &self.bytes[self.pos..end];
            self.pos = end;
            s
        }

        fn uint(&mut self, n: usize) -> u64 {
            self.take(n)
                .iter()
                .fold(0u64, |acc, b| (acc << 8) | u64::from(*b))
        }

        fn int(&mut self, n: usize) -> i128 {
            let v = self.uint(n);
            let shift = 64 - 8 * n as u32;
            i128::from(((v << shift) as i64) >> shift)
        }

        fn str(&mut self, n: u64) -> Mp {
            let bytes = self.take(n as usize).to_vec();
            Mp::Str(String::from_utf8(bytes).expect("a str that is not UTF-8"))
        }

        fn array(&mut self, n: u64) -> Mp {
            Mp::Array((0..n).map(|_| self.value()).collect())
        }

        fn map(&mut self, n: u64) -> Mp {
            Mp::Map((0..n).map(|_| (self.value(), self.value())).collect())
        }

        fn ext(&mut self, n: u64) -> Mp {
            let ty = self.take(1)[0] as i8;
            Mp::Ext(ty, self.take(n as usize).to_vec())
        }

        fn value(&mut self) -> Mp {
            let marker = Marker::from_u8(self.take(1)[0]);
            match marker {
                Marker::FixPos(v) => Mp::Int(i128::from(v)),
                Marker::FixNeg(v) => Mp::Int(i128::from(v)),
                Marker::Null => Mp::Nil,
                Marker::True => Mp::Bool(true),
                Marker::False => Mp::Bool(false),
                Marker::U8 => Mp::Int(i128::from(self.uint(1))),
                Marker::U16 => Mp::Int(i128::from(self.uint(2))),
                Marker::U32 => Mp::Int(i128::from(self.uint(4))),
                Marker::U64 => Mp::Int(i128::from(self.uint(8))),
                Marker::I8 => Mp::Int(self.int(1)),
                Marker::I16 => Mp::Int(self.int(2)),
                Marker::I32 => Mp::Int(self.int(4)),
                Marker::I64 => Mp::Int(self.int(8)),
                Marker::F32 => Mp::Float(f64::from(f32::from_bits(self.uint(4) as u32))),
                Marker::F64 => Mp::Float(f64::from_bits(self.uint(8))),
                Marker::FixStr(n) => self.str(u64::from(n)),
                Marker::Str8 => {
                    let n = self.uint(1);
                    self.str(n)
                }
                Marker::Str16 => {
                    let n = self.uint(2);
                    self.str(n)
                }
                Marker::Str32 => {
                    let n = self.uint(4);
                    self.str(n)
                }
                Marker::Bin8 | Marker::Bin16 | Marker::Bin32 => {
                    let width = match marker {
                        Marker::Bin8 => 1,
                        Marker::Bin16 => 2,
                        _ => 4,
                    };
                    let n = self.uint(width);
                    Mp::Bin(self.take(n as usize).to_vec())
                }
                Marker::FixArray(n) => self.array(u64::from(n)),
                Marker::Array16 => {
                    let n = self.uint(2);
                    self.array(n)
                }
                Marker::Array32 => {
                    let n = self.uint(4);
                    self.array(n)
                }
                Marker::FixMap(n) => self.map(u64::from(n)),
                Marker::Map16 => {
                    let n = self.uint(2);
                    self.map(n)
                }
                Marker::Map32 => {
                    let n = self.uint(4);
                    self.map(n)
                }
                Marker::FixExt1 => self.ext(1),
                Marker::FixExt2 => self.ext(2),
                Marker::FixExt4 => self.ext(4),
                Marker::FixExt8 => self.ext(8),
                Marker::FixExt16 => self.ext(16),
                Marker::Ext8 => {
                    let n = self.uint(1);
                    self.ext(n)
                }
                Marker::Ext16 => {
                    let n = self.uint(2);
                    self.ext(n)
                }
                Marker::Ext32 => {
                    let n = self.uint(4);
                    self.ext(n)
                }
                Marker::Reserved => panic!("reserved MessagePack marker 0xc1"),
            }
        }
    }

    /// Parses exactly one value covering all of `bytes`.
    pub fn parse(bytes: &[u8]) -> Mp {
        let mut reader = Reader { bytes, pos: 0 };
        let value = reader.value();
        assert_eq!(reader.pos, bytes.len(), "bytes after the MessagePack value");
        value
    }

    /// Every `bin` in `value`, by path (`a.b[2].c`); panics on a non-`str` key or a duplicate
    /// key in any map.
    fn walk(value: &Mp, path: &str, bins: &mut Vec<String>) {
        match value {
            Mp::Bin(_) => bins.push(path.to_owned()),
            Mp::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    walk(item, &format!("{path}[{i}]"), bins);
                }
            }
            Mp::Map(entries) => {
                let mut seen = std::collections::HashSet::new();
                for (key, item) in entries {
                    let Mp::Str(key) = key else {
                        panic!("non-str key {key:?} at {path:?}")
                    };
                    assert!(seen.insert(key), "duplicate key {key:?} at {path:?}");
                    let child = if path.is_empty() {
                        key.clone()
                    } else {
                        format!("{path}.{key}")
                    };
                    walk(item, &child, bins);
                }
            }
            Mp::Ext(..) => panic!("ext value at {path:?}"),
            _ => {}
        }
    }

    /// Our MessagePack rules: a map at the top level, no duplicate keys at any level, `str` keys,
    /// and `bin` only at `body_paths`, where a value that is not nil must be `bin`.
    pub fn check_shape(payload: &[u8], body_paths: &[&str]) {
        let value = parse(payload);
        let Mp::Map(top) = &value else {
            panic!("top level is not a map: {value:?}")
        };
        let mut bins = Vec::new();
        walk(&value, "", &mut bins);
        for bin in &bins {
            assert!(
                body_paths.contains(&bin.as_str()),
                "bin outside a body at {bin}"
            );
        }
        for path in body_paths {
            let mut node = Some(&value);
            let mut entries = top;
            for (i, part) in path.split('.').enumerate() {
                if i > 0 {
                    match node {
                        Some(Mp::Map(m)) => entries = m,
                        _ => {
                            node = None;
                            break;
                        }
                    }
                }
                node = entries
                    .iter()
                    .find(|(k, _)| *k == Mp::Str(part.to_owned()))
                    .map(|(_, v)| v);
            }
            match node {
                None | Some(Mp::Nil) | Some(Mp::Bin(_)) => {}
                Some(other) => panic!("body at {path} is not bin: {other:?}"),
            }
        }
    }
}

#[test]
fn the_walker_sees_duplicates_and_bins() {
    // {"a": 1, "a": 2}
    let dup = [0x82, 0xa1, b'a', 0x01, 0xa1, b'a', 0x02];
    assert!(std::panic::catch_unwind(|| mp::check_shape(&dup, &[])).is_err());
    // {"data": bin[1]}: allowed only where a body is.
    let bin = [0x81, 0xa4, b'd', b'a', b't', b'a', 0xc4, 0x01, 0xff];
    mp::check_shape(&bin, &["data"]);
    assert!(std::panic::catch_unwind(|| mp::check_shape(&bin, &[])).is_err());
    // {"data": "x"}: a body written as str.
    let text = [0x81, 0xa4, b'd', b'a', b't', b'a', 0xa1, b'x'];
    assert!(std::panic::catch_unwind(|| mp::check_shape(&text, &["data"])).is_err());
    // [1]: not a map.
    assert!(std::panic::catch_unwind(|| mp::check_shape(&[0x91, 0x01], &[])).is_err());
    assert_eq!(
        mp::parse(&[0xd0, 0xfe]),
        mp::Mp::Int(-2),
        "signed integers are sign-extended"
    );
}
