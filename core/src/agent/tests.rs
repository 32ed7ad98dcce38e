//! The agent connection and its codec, together (as [`FramedAgent`]) on byte streams and alone
//! on typed messages.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use proptest::prelude::*;

use super::*;
use crate::control::{
    Cancel, CancelReason, ConfigUpdateRequest, FlowControl, HealthStatus, MetricsReport, Ping,
};
use crate::encoding::{
    self, decode_payload, encode_event, DecodeError, Encoding, SHARED_PAYLOAD_MAX,
};
use crate::error::ConnectionError;
use crate::event::{
    BodyChunk, ConfigureEvent, Event, GuardrailInspectEvent, GuardrailInspectionType,
    RequestBodyChunkEvent, RequestCompleteEvent, RequestHeadersEvent, RequestMetadata,
    ResponseBodyChunkEvent, ResponseHeadersEvent, WebSocketFrameEvent, WebSocketOpcode,
};
use crate::frame::{
    self, Decoded, Frame, FrameDecoder, FrameType, FRAME_HEADER_LEN, MAX_FRAME_LEN,
};
use crate::handshake::{HandshakeError, HandshakeRequest, HandshakeResponse};
use crate::headers::Headers;
use crate::limits::{HeaderLimits, LimitExceeded};
use crate::response::{AgentResponse, Decision, WebSocketDecision, CORRELATION_KEY};
use crate::testing::FramedAgent;
use crate::{FlowAction, HealthState};

/// The settings a message transport (gRPC) gives its connections: JSON, its nominal encoding.
fn messages_config(mut config: AgentConfig) -> AgentConfig {
    config.handshake.encodings = [Encoding::Json].into_iter().collect();
    config
}

fn malformed(frame_type: FrameType, message: &str) -> DecodeError {
    DecodeError {
        frame_type,
        encoding: Encoding::Json,
        message: message.into(),
        limit: None,
    }
}

fn t0() -> Instant {
    Instant::now()
}

fn raw_frame(type_byte: u8, payload: &[u8]) -> Vec<u8> {
    let mut v = ((payload.len() + 1) as u32).to_be_bytes().to_vec();
    v.push(type_byte);
    v.extend_from_slice(payload);
    v
}

fn handshake_frame(versions: &[u32], encodings: &[&str]) -> Vec<u8> {
    let req = HandshakeRequest {
        supported_versions: versions.to_vec(),
        proxy_id: "test-proxy".into(),
        proxy_version: "0".into(),
        config: Some(serde_json::json!({"mode": "strict"})),
        supported_encodings: encodings.iter().map(|s| s.to_string()).collect(),
    };
    raw_frame(0x01, &serde_json::to_vec(&req).unwrap())
}

fn decode_all(bytes: &[u8]) -> Vec<Frame> {
    let mut buf = BytesMut::from(bytes);
    let mut dec = FrameDecoder::new();
    let mut frames = Vec::new();
    while let Some(d) = dec.decode(&mut buf).unwrap() {
        match d {
            Decoded::Frame(f) => frames.push(f),
            Decoded::Skipped { type_byte, .. } => panic!("agent wrote type 0x{type_byte:02x}"),
        }
    }
    assert!(buf.is_empty(), "trailing partial frame in output");
    frames
}

fn transmitted(conn: &mut FramedAgent) -> Vec<Frame> {
    conn.poll_transmit()
        .map(|b| decode_all(&b))
        .unwrap_or_default()
}

fn events(conn: &mut AgentConnection) -> Vec<AgentEvent> {
    std::iter::from_fn(|| conn.poll_event()).collect()
}

fn responses(conn: &mut FramedAgent, encoding: Encoding) -> Vec<AgentResponse> {
    transmitted(conn)
        .into_iter()
        .map(|f| {
            assert_eq!(f.frame_type, FrameType::AgentResponse);
            decode_payload(f.frame_type, encoding, &f.payload).unwrap()
        })
        .collect()
}

/// A connection that went through a real handshake negotiating `encoding`.
fn established_with(config: AgentConfig, encoding: Encoding) -> FramedAgent {
    let mut conn = FramedAgent::new(config, t0());
    conn.handle_input(t0(), &handshake_frame(&[2], &[encoding.as_str(), "json"]));
    let evs = events(&mut conn);
    assert!(
        matches!(&evs[..], [AgentEvent::Established { negotiated, .. }] if negotiated.encoding == encoding),
        "{evs:?}"
    );
    transmitted(&mut conn);
    conn
}

fn established(encoding: Encoding) -> FramedAgent {
    established_with(AgentConfig::default(), encoding)
}

fn event_frame(encoding: Encoding, event: &Event) -> Vec<u8> {
    let mut out = BytesMut::new();
    encode_event(&mut out, encoding, event).unwrap();
    out.to_vec()
}

fn complete(cid: &str) -> Event {
    Event::RequestComplete(RequestCompleteEvent {
        correlation_id: cid.into(),
        status: 200,
        ..Default::default()
    })
}

fn cancel_frame(cid: &str, reason: CancelReason) -> Vec<u8> {
    let c = Cancel {
        correlation_id: cid.into(),
        reason,
        timestamp_ms: 1,
    };
    raw_frame(0x40, &serde_json::to_vec(&c).unwrap())
}

/// One event of every type 0x10..=0x17, all with correlation id `cid`.
fn every_event(cid: &str) -> Vec<Event> {
    let chunk = BodyChunk {
        correlation_id: cid.into(),
        data: bytes::Bytes::from_static(b"\x00\xffbody"),
        is_last: true,
        total_size: Some(6),
        chunk_index: 0,
        bytes_transferred: 6,
    };
    vec![
        Event::RequestHeaders(RequestHeadersEvent::new(
            RequestMetadata {
                correlation_id: cid.into(),
                request_id: "r".into(),
                client_ip: "127.0.0.1".into(),
                client_port: 1234,
                protocol: "HTTP/1.1".into(),
                timestamp: "2026-01-01T00:00:00Z".into(),
                ..Default::default()
            },
            "GET",
            "/",
            Headers::from_iter([("host", "example.com")]),
        )),
        Event::RequestBodyChunk(RequestBodyChunkEvent(chunk.clone())),
        Event::ResponseHeaders(ResponseHeadersEvent {
            correlation_id: cid.into(),
            status: 404,
            headers: Headers::from_iter([("content-type", "text/plain")]),
        }),
        Event::ResponseBodyChunk(ResponseBodyChunkEvent(chunk)),
        complete(cid),
        Event::WebSocketFrame(WebSocketFrameEvent {
            correlation_id: cid.into(),
            opcode: WebSocketOpcode::Binary,
            data: bytes::Bytes::from_static(b"\x01\x02"),
            client_to_server: true,
            frame_index: 3,
            fin: true,
            route_id: None,
            client_ip: "127.0.0.1".into(),
        }),
        Event::GuardrailInspect(GuardrailInspectEvent {
            correlation_id: cid.into(),
            inspection_type: GuardrailInspectionType::PiiDetection,
            content: "my ssn is 000-00-0000".into(),
            ..Default::default()
        }),
        Event::Configure(ConfigureEvent {
            correlation_id: cid.into(),
            config: serde_json::json!({"rules": [1, 2]}),
            config_version: Some("v1".into()),
        }),
    ]
}

#[test]
fn connection_can_move_between_threads() {
    fn assert_send<T: Send + 'static>() {}
    assert_send::<AgentConnection>();
    assert_send::<AgentEvent>();
}

#[test]
fn handshake_negotiates_json() {
    let now = t0();
    let mut conn = FramedAgent::new(AgentConfig::default(), now);
    assert_eq!(conn.encoding(), None);
    assert!(!conn.is_established());
    conn.handle_input(now, &handshake_frame(&[2], &["json"]));
    let evs = events(&mut conn);
    let [AgentEvent::Established { negotiated, proxy }] = &evs[..] else {
        panic!("{evs:?}")
    };
    assert_eq!(negotiated.encoding, Encoding::Json);
    let proxy = proxy.as_ref().unwrap();
    assert_eq!(proxy.proxy_id, "test-proxy");
    assert_eq!(proxy.config, Some(serde_json::json!({"mode": "strict"})));
    let frames = transmitted(&mut conn);
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0].frame_type, FrameType::HandshakeResponse);
    let answer: HandshakeResponse = serde_json::from_slice(&frames[0].payload).unwrap();
    assert!(answer.success);
    assert_eq!(answer.encoding, "json");
    assert_eq!(conn.encoding(), Some(Encoding::Json));
    assert!(conn.is_established());
    assert_eq!(conn.poll_timeout(), None);
}

#[test]
fn handshake_negotiates_msgpack_and_later_frames_use_it() {
    let now = t0();
    let mut conn = FramedAgent::new(AgentConfig::default(), now);
    // Handshake and a first event in the same read.
    let mut wire = handshake_frame(&[2], &["cbor", "msgpack", "json"]);
    wire.extend(event_frame(Encoding::MsgPack, &complete("m-1")));
    conn.handle_input(now, &wire);
    let evs = events(&mut conn);
    assert!(
        matches!(&evs[0], AgentEvent::Established { negotiated, .. } if negotiated.encoding == Encoding::MsgPack)
    );
    let AgentEvent::Request { id, event } = &evs[1] else {
        panic!("{evs:?}")
    };
    assert_eq!(**event, complete("m-1"));
    let answer: HandshakeResponse =
        serde_json::from_slice(&transmitted(&mut conn)[0].payload).unwrap();
    assert_eq!(answer.encoding, "msgpack");
    conn.respond(*id, AgentResponse::allow()).unwrap();
    let frames = transmitted(&mut conn);
    assert_ne!(frames[0].payload.first(), Some(&b'{'), "msgpack expected");
    let r: AgentResponse = decode_payload(
        FrameType::AgentResponse,
        Encoding::MsgPack,
        &frames[0].payload,
    )
    .unwrap();
    assert_eq!(r.correlation_id(), Some("m-1"));
}

#[test]
fn version_mismatch_is_refused_then_closed() {
    let now = t0();
    let mut conn = FramedAgent::new(AgentConfig::default(), now);
    let mut wire = handshake_frame(&[1], &["json"]);
    wire.extend(event_frame(Encoding::Json, &complete("x"))); // never processed
    conn.handle_input(now, &wire);
    assert!(conn.is_closed());
    let frames = transmitted(&mut conn);
    assert_eq!(frames.len(), 1);
    let answer: HandshakeResponse = serde_json::from_slice(&frames[0].payload).unwrap();
    assert!(!answer.success);
    assert!(answer.error.is_some());
    let evs = events(&mut conn);
    assert!(matches!(
        &evs[..],
        [AgentEvent::Closed(ConnectionError::Handshake(
            HandshakeError::VersionMismatch { .. }
        ))]
    ));
    assert_eq!(conn.poll_event(), None);
}

#[test]
fn wrong_first_frame_closes_without_answer() {
    for first in [
        event_frame(Encoding::Json, &complete("x")),
        raw_frame(0xF0, &[0; 64]),
        raw_frame(0x41, b"{}"),
    ] {
        let mut conn = FramedAgent::new(AgentConfig::default(), t0());
        // Only the header: refused before the payload arrives.
        conn.handle_input(t0(), &first[..FRAME_HEADER_LEN]);
        assert!(conn.is_closed());
        assert_eq!(conn.poll_transmit(), None);
        let evs = events(&mut conn);
        assert!(
            matches!(
                &evs[..],
                [AgentEvent::Closed(ConnectionError::Handshake(
                    HandshakeError::UnexpectedFrame { got, .. }
                ))] if *got == first[4]
            ),
            "{evs:?}"
        );
    }
    let mut conn = FramedAgent::new(AgentConfig::default(), t0());
    conn.handle_input(t0(), &raw_frame(0x01, b"not json"));
    assert!(matches!(
        events(&mut conn)[..],
        [AgentEvent::Closed(ConnectionError::Handshake(
            HandshakeError::Malformed(_)
        ))]
    ));
    assert_eq!(conn.poll_transmit(), None);
}

#[test]
fn handshake_timeout_closes() {
    let now = t0();
    let mut conn = FramedAgent::new(AgentConfig::default(), now);
    let deadline = conn.poll_timeout().unwrap();
    assert_eq!(deadline, now + Duration::from_secs(5));
    conn.handle_timeout(now + Duration::from_secs(4));
    assert!(!conn.is_closed());
    // Half a handshake does not stop the clock.
    let hs = handshake_frame(&[2], &["json"]);
    conn.handle_input(now + Duration::from_secs(4), &hs[..10]);
    conn.handle_timeout(deadline);
    assert!(matches!(
        events(&mut conn)[..],
        [AgentEvent::Closed(ConnectionError::Handshake(
            HandshakeError::Timeout(_)
        ))]
    ));
    assert_eq!(conn.poll_timeout(), None);
    // Late input is ignored.
    conn.handle_input(deadline, &hs[10..]);
    assert_eq!(conn.poll_event(), None);
    assert_eq!(conn.poll_transmit(), None);
}

#[test]
fn every_event_type_is_a_request_answered_with_its_correlation_id() {
    for encoding in [Encoding::Json, Encoding::MsgPack] {
        let mut conn = established(encoding);
        for (i, sent) in every_event(&format!("cid-{encoding}"))
            .into_iter()
            .enumerate()
        {
            conn.handle_input(t0(), &event_frame(encoding, &sent));
            let evs = events(&mut conn);
            let [AgentEvent::Request { id, event }] = &evs[..] else {
                panic!("{encoding} #{i}: {evs:?}")
            };
            assert_eq!(&**event, &sent, "{encoding} #{i}");
            assert_eq!(conn.in_flight(), 1);
            // The handler's own value is overwritten.
            let mut answer = AgentResponse::allow().with_correlation_id("wrong");
            answer
                .audit
                .custom
                .insert("other".into(), serde_json::json!(1));
            conn.respond(*id, answer).unwrap();
            assert_eq!(conn.in_flight(), 0);
            let got = responses(&mut conn, encoding);
            assert_eq!(got.len(), 1);
            assert_eq!(got[0].correlation_id(), Some(sent.correlation_id()));
            assert_eq!(got[0].audit.custom["other"], 1);
            assert_eq!(got[0].decision, Decision::Allow);
        }
    }
}

#[test]
fn out_of_order_answers_and_answer_exactly_once() {
    let mut conn = established(Encoding::Json);
    let mut wire = Vec::new();
    for cid in ["a", "b", "c"] {
        wire.extend(event_frame(Encoding::Json, &complete(cid)));
    }
    conn.handle_input(t0(), &wire);
    let ids: Vec<RequestId> = events(&mut conn)
        .into_iter()
        .map(|e| match e {
            AgentEvent::Request { id, .. } => id,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(ids.len(), 3);
    assert_eq!(conn.correlation_id(ids[1]), Some("b"));
    for &i in &[2, 0, 1] {
        conn.respond(ids[i], AgentResponse::block(403, "no"))
            .unwrap();
    }
    let got: Vec<String> = responses(&mut conn, Encoding::Json)
        .iter()
        .map(|r| r.correlation_id().unwrap().to_owned())
        .collect();
    assert_eq!(got, ["c", "a", "b"]);
    assert!(matches!(
        conn.respond(ids[0], AgentResponse::allow()),
        Err(RespondError::UnknownRequest(id)) if id == ids[0]
    ));
    assert!(matches!(
        conn.respond(RequestId::from_raw(999), AgentResponse::allow()),
        Err(RespondError::UnknownRequest(id)) if id == RequestId::from_raw(999)
    ));
    assert_eq!(conn.codec.pending_transmit(), 0);
}

#[test]
fn several_events_with_one_correlation_id_are_answered_separately() {
    let mut conn = established(Encoding::Json);
    let mut wire = Vec::new();
    for _ in 0..2 {
        wire.extend(event_frame(Encoding::Json, &complete("same")));
    }
    conn.handle_input(t0(), &wire);
    let ids: Vec<RequestId> = events(&mut conn)
        .into_iter()
        .filter_map(|e| match e {
            AgentEvent::Request { id, .. } => Some(id),
            _ => None,
        })
        .collect();
    assert_eq!(ids.len(), 2);
    assert_ne!(ids[0], ids[1]);
    conn.respond(ids[1], AgentResponse::allow()).unwrap();
    conn.respond(ids[0], AgentResponse::allow()).unwrap();
    assert_eq!(responses(&mut conn, Encoding::Json).len(), 2);
    assert!(conn.cancellable() == 0);
}

#[test]
fn cancel_drops_the_request_and_its_answer() {
    // Cancel arrives as JSON even in a MessagePack session (reference proxy).
    let mut conn = established(Encoding::MsgPack);
    let mut wire = Vec::new();
    for cid in ["c1", "c1", "c2"] {
        wire.extend(event_frame(Encoding::MsgPack, &complete(cid)));
    }
    conn.handle_input(t0(), &wire);
    let ids: Vec<RequestId> = events(&mut conn)
        .into_iter()
        .filter_map(|e| match e {
            AgentEvent::Request { id, .. } => Some(id),
            _ => None,
        })
        .collect();
    conn.handle_input(t0(), &cancel_frame("c1", CancelReason::Timeout));
    let evs = events(&mut conn);
    assert_eq!(
        evs,
        vec![
            AgentEvent::Cancelled {
                id: ids[0],
                correlation_id: "c1".into(),
                reason: CancelReason::Timeout
            },
            AgentEvent::Cancelled {
                id: ids[1],
                correlation_id: "c1".into(),
                reason: CancelReason::Timeout
            },
        ]
    );
    assert_eq!(conn.in_flight(), 1);
    for id in &ids[..2] {
        assert!(matches!(
            conn.respond(*id, AgentResponse::allow()),
            Err(RespondError::UnknownRequest(_))
        ));
    }
    assert_eq!(conn.codec.pending_transmit(), 0);
    // Unknown or repeated cancels are ignored.
    conn.handle_input(t0(), &cancel_frame("c1", CancelReason::Manual));
    conn.handle_input(t0(), &cancel_frame("nope", CancelReason::Manual));
    assert_eq!(conn.poll_event(), None);
    // A MessagePack cancel works too.
    let mut mp = BytesMut::new();
    encoding::encode_frame(
        &mut mp,
        FrameType::Cancel,
        Encoding::MsgPack,
        &Cancel {
            correlation_id: "c2".into(),
            reason: CancelReason::ClientDisconnect,
            timestamp_ms: 0,
        },
    )
    .unwrap();
    conn.handle_input(t0(), &mp);
    assert!(matches!(
        &events(&mut conn)[..],
        [AgentEvent::Cancelled { id, reason: CancelReason::ClientDisconnect, .. }] if *id == ids[2]
    ));
    assert_eq!(conn.in_flight(), 0);
    // A malformed cancel is ignored, not fatal.
    conn.handle_input(t0(), &raw_frame(0x40, b"{\"nope\":1}"));
    assert_eq!(events(&mut conn), []);
    assert_eq!(conn.codec.frames_ignored(), 1);
    assert!(conn.is_established());
}

#[test]
fn ping_is_echoed_byte_for_byte_ahead_of_pending_requests() {
    for encoding in [Encoding::Json, Encoding::MsgPack] {
        let mut conn = established(encoding);
        conn.handle_input(t0(), &event_frame(encoding, &complete("slow")));
        assert_eq!(conn.in_flight(), 1);
        // Odd spacing and key order must survive: the bytes are echoed, not re-encoded.
        let payload = br#"{ "timestamp_ms":1750000000000 , "sequence":7}"#;
        conn.handle_input(t0(), &raw_frame(0x41, payload));
        let out = conn.poll_transmit().unwrap();
        assert_eq!(&out[..], &raw_frame(0x42, payload)[..]);
        // Even an empty or non-JSON payload is echoed.
        conn.handle_input(t0(), &raw_frame(0x41, b""));
        conn.handle_input(t0(), &raw_frame(0x41, b"\xff\x00"));
        let out = conn.poll_transmit().unwrap();
        let mut expected = raw_frame(0x42, b"");
        expected.extend(raw_frame(0x42, b"\xff\x00"));
        assert_eq!(&out[..], &expected[..]);
        assert_eq!(conn.in_flight(), 1);
    }
}

#[test]
fn unknown_type_is_skipped_and_the_connection_lives_on() {
    let mut conn = established(Encoding::Json);
    let mut wire = raw_frame(0xF0, &[9; 300]);
    wire.extend(event_frame(Encoding::Json, &complete("after")));
    for chunk in wire.chunks(17) {
        conn.handle_input(t0(), chunk);
    }
    let evs = events(&mut conn);
    let AgentEvent::Request { id, .. } = evs[0] else {
        panic!("{evs:?}")
    };
    conn.respond(id, AgentResponse::allow()).unwrap();
    assert_eq!(responses(&mut conn, Encoding::Json).len(), 1);
    assert_eq!(conn.codec.frames_skipped(), 1);
}

#[test]
fn frames_an_agent_never_expects_are_ignored() {
    let mut conn = established(Encoding::Json);
    for (i, ty) in [0x01, 0x02, 0x20, 0x30, 0x31, 0x32, 0x33, 0x42]
        .into_iter()
        .enumerate()
    {
        conn.handle_input(t0(), &raw_frame(ty, b"{}"));
        assert_eq!(events(&mut conn), []);
        assert_eq!(conn.codec.frames_ignored(), i as u64 + 1);
    }
    assert!(conn.is_established());
    assert_eq!(conn.codec.pending_transmit(), 0);
}

fn assert_fail_closed(r: &AgentResponse, cid: &str, status: u16, reason: &str) {
    assert_eq!(r.correlation_id(), Some(cid));
    assert!(
        matches!(&r.decision, Decision::Block { status: s, .. } if *s == status),
        "{r:?}"
    );
    assert_eq!(r.audit.reason_codes, [reason]);
}

#[test]
fn malformed_event_with_salvageable_id_is_blocked_never_allowed() {
    // JSON: right id, wrong shape.
    let mut conn = established(Encoding::Json);
    conn.handle_input(
        t0(),
        &raw_frame(0x10, br#"{"correlation_id":"bad-1","metadata":7}"#),
    );
    let evs = events(&mut conn);
    assert!(
        matches!(&evs[..], [AgentEvent::MalformedEvent { correlation_id, error }]
            if correlation_id == "bad-1" && error.frame_type == FrameType::RequestHeaders),
        "{evs:?}"
    );
    let got = responses(&mut conn, Encoding::Json);
    assert_fail_closed(&got[0], "bad-1", 500, MALFORMED_EVENT_REASON);
    assert_eq!(got[0].websocket_decision, None);
    assert_eq!(conn.in_flight(), 0);
    // Id only in metadata.
    conn.handle_input(
        t0(),
        &raw_frame(0x10, br#"{"metadata":{"correlation_id":"bad-2"},"uri":5}"#),
    );
    assert_fail_closed(
        &responses(&mut conn, Encoding::Json)[0],
        "bad-2",
        500,
        MALFORMED_EVENT_REASON,
    );
    // A WebSocket frame is closed, not forwarded.
    conn.handle_input(
        t0(),
        &raw_frame(0x15, br#"{"correlation_id":"ws","opcode":"bogus"}"#),
    );
    let got = responses(&mut conn, Encoding::Json);
    assert_fail_closed(&got[0], "ws", 500, MALFORMED_EVENT_REASON);
    assert!(matches!(
        got[0].websocket_decision,
        Some(WebSocketDecision::Close { code: 1011, .. })
    ));
    // MessagePack: a map with the id but a missing field.
    let mut conn = established(Encoding::MsgPack);
    let payload = rmp_serde::to_vec_named(&serde_json::json!({"correlation_id": "bad-3"})).unwrap();
    conn.handle_input(t0(), &raw_frame(0x12, &payload));
    assert_fail_closed(
        &responses(&mut conn, Encoding::MsgPack)[0],
        "bad-3",
        500,
        MALFORMED_EVENT_REASON,
    );
    // The reference's positional form, too short to be a body chunk.
    let payload = rmp_serde::to_vec(&("bad-4", 5)).unwrap();
    conn.handle_input(t0(), &raw_frame(0x11, &payload));
    assert_fail_closed(
        &responses(&mut conn, Encoding::MsgPack)[0],
        "bad-4",
        500,
        MALFORMED_EVENT_REASON,
    );
    assert!(conn.is_established());
}

#[test]
fn undecodable_event_without_id_closes_the_connection() {
    let mut conn = established(Encoding::Json);
    conn.handle_input(t0(), &event_frame(Encoding::Json, &complete("pending")));
    let evs = events(&mut conn);
    let AgentEvent::Request { id, .. } = evs[0] else {
        panic!()
    };
    conn.handle_input(t0(), &raw_frame(0x11, b"not json at all"));
    let evs = events(&mut conn);
    assert!(
        matches!(&evs[..], [AgentEvent::Closed(ConnectionError::Malformed(e))] if e.frame_type == FrameType::RequestBodyChunk),
        "{evs:?}"
    );
    assert_eq!(conn.in_flight(), 0);
    assert!(matches!(
        conn.respond(id, AgentResponse::allow()),
        Err(RespondError::Closed(ConnectionError::Malformed(_)))
    ));
    assert_eq!(conn.codec.pending_transmit(), 0);
}

#[test]
fn overload_is_answered_at_once_and_never_tracked() {
    let config = AgentConfig::default().with_max_in_flight(2);
    let mut conn = established_with(config, Encoding::Json);
    let mut wire = Vec::new();
    for cid in ["a", "b", "c"] {
        wire.extend(event_frame(Encoding::Json, &complete(cid)));
    }
    conn.handle_input(t0(), &wire);
    let evs = events(&mut conn);
    assert_eq!(evs.len(), 3);
    assert!(matches!(
        &evs[2],
        AgentEvent::Overloaded { correlation_id, frame_type: FrameType::RequestComplete } if correlation_id == "c"
    ));
    assert_eq!(conn.in_flight(), 2);
    let got = responses(&mut conn, Encoding::Json);
    assert_fail_closed(&got[0], "c", 503, AGENT_OVERLOADED_REASON);
    // Answering one frees a slot.
    let AgentEvent::Request { id, .. } = evs[0] else {
        panic!()
    };
    conn.respond(id, AgentResponse::allow()).unwrap();
    conn.handle_input(t0(), &event_frame(Encoding::Json, &complete("d")));
    assert!(matches!(
        &events(&mut conn)[..],
        [AgentEvent::Request { .. }]
    ));
    assert_eq!(conn.in_flight(), 2);
}

#[test]
fn framing_errors_close_once_and_everything_after_is_refused() {
    let mut conn = established(Encoding::Json);
    conn.handle_input(t0(), &event_frame(Encoding::Json, &complete("x")));
    let AgentEvent::Request { id, .. } = conn.poll_event().unwrap() else {
        panic!()
    };
    conn.handle_input(t0(), &[0, 0, 0, 0, 0x41]);
    assert_eq!(
        events(&mut conn),
        vec![AgentEvent::Closed(ConnectionError::Frame(
            frame::FrameError::ZeroLength
        ))]
    );
    conn.handle_input(t0(), &event_frame(Encoding::Json, &complete("y")));
    conn.handle_eof();
    conn.handle_closed(ConnectionError::transport("x"));
    conn.close();
    assert_eq!(conn.poll_event(), None);
    assert!(matches!(
        conn.respond(id, AgentResponse::allow()),
        Err(RespondError::Closed(_))
    ));
    let health = HealthStatus {
        agent_id: "a".into(),
        state: HealthState::Healthy,
        message: None,
        timestamp_ms: 0,
    };
    assert!(matches!(
        conn.send_health(&health),
        Err(SendError::Closed(_))
    ));
    assert_eq!(conn.codec.pending_transmit(), 0);
    assert!(conn.codec.read_buffer().is_empty());

    let mut conn = established_with(
        AgentConfig::default().with_max_frame_len(200),
        Encoding::Json,
    );
    conn.handle_input(t0(), &201u32.to_be_bytes());
    assert!(matches!(
        events(&mut conn)[..],
        [AgentEvent::Closed(ConnectionError::Frame(
            frame::FrameError::TooLarge { len: 201, max: 200 }
        ))]
    ));
}

#[test]
fn eof_io_error_and_local_close() {
    for (close, expected) in [
        (0, ConnectionError::PeerClosed),
        (1, ConnectionError::transport("reset")),
        (2, ConnectionError::LocalClose),
    ] {
        let mut conn = established(Encoding::Json);
        conn.handle_input(t0(), &event_frame(Encoding::Json, &complete("x")));
        let AgentEvent::Request { id, .. } = conn.poll_event().unwrap() else {
            panic!()
        };
        match close {
            0 => conn.handle_eof(),
            1 => conn.handle_closed(ConnectionError::transport("reset")),
            _ => conn.close(),
        }
        assert_eq!(
            events(&mut conn),
            vec![AgentEvent::Closed(expected.clone())]
        );
        assert_eq!(conn.close_reason(), Some(&expected));
        assert_eq!(conn.in_flight(), 0);
        assert!(matches!(
            conn.respond(id, AgentResponse::allow()),
            Err(RespondError::Closed(_))
        ));
        assert_eq!(conn.encoding(), Some(Encoding::Json));
    }
}

#[test]
fn answers_queued_before_a_local_close_are_still_transmitted() {
    let mut conn = established(Encoding::Json);
    conn.handle_input(t0(), &event_frame(Encoding::Json, &complete("x")));
    let AgentEvent::Request { id, .. } = conn.poll_event().unwrap() else {
        panic!()
    };
    conn.respond(id, AgentResponse::allow()).unwrap();
    conn.close();
    assert_eq!(responses(&mut conn, Encoding::Json).len(), 1);
}

#[test]
fn control_messages_are_sent_in_the_negotiated_encoding() {
    let mut conn = FramedAgent::new(AgentConfig::default(), t0());
    let flow = FlowControl {
        action: FlowAction::Pause,
        correlation_id: None,
        buffer_available: None,
        timestamp_ms: 1,
    };
    assert!(matches!(
        conn.send_flow_control(&flow),
        Err(SendError::NotEstablished)
    ));
    for encoding in [Encoding::Json, Encoding::MsgPack] {
        let mut conn = established(encoding);
        let health = HealthStatus {
            agent_id: "a".into(),
            state: HealthState::Draining,
            message: Some("bye".into()),
            timestamp_ms: 2,
        };
        let metrics = MetricsReport {
            agent_id: "a".into(),
            timestamp_ms: 3,
            interval_ms: 10,
            ..Default::default()
        };
        let config = ConfigUpdateRequest {
            update_type: crate::ConfigUpdateType::RequestReload,
            request_id: "u1".into(),
            timestamp_ms: 4,
        };
        conn.send_health(&health).unwrap();
        conn.send_flow_control(&flow).unwrap();
        conn.send_metrics(&metrics).unwrap();
        conn.send_config_update(&config).unwrap();
        let frames = transmitted(&mut conn);
        let types: Vec<u8> = frames.iter().map(|f| f.frame_type.as_byte()).collect();
        assert_eq!(types, [0x30, 0x33, 0x31, 0x32]);
        let h: HealthStatus =
            decode_payload(FrameType::HealthStatus, encoding, &frames[0].payload).unwrap();
        assert_eq!(h, health);
        let f: FlowControl =
            decode_payload(FrameType::FlowControl, encoding, &frames[1].payload).unwrap();
        assert_eq!(f, flow);
        let m: MetricsReport =
            decode_payload(FrameType::MetricsReport, encoding, &frames[2].payload).unwrap();
        assert_eq!(m, metrics);
        let c: ConfigUpdateRequest =
            decode_payload(FrameType::ConfigUpdateRequest, encoding, &frames[3].payload).unwrap();
        assert_eq!(c, config);
    }
}

#[test]
fn reverse_connection_starts_established_and_zero_copy_input_works() {
    let mut conn = FramedAgent::established(AgentConfig::default(), Encoding::Json);
    assert_eq!(conn.poll_timeout(), None);
    assert!(matches!(
        conn.poll_event(),
        Some(AgentEvent::Established { proxy: None, negotiated }) if negotiated.encoding == Encoding::Json
    ));
    let wire = event_frame(Encoding::Json, &complete("rv-1"));
    assert_eq!(conn.codec.read_hint(), FRAME_HEADER_LEN);
    conn.codec.read_buffer().extend_from_slice(&wire[..7]);
    conn.process_input(t0());
    assert_eq!(conn.poll_event(), None);
    assert_eq!(conn.codec.read_hint(), wire.len() - 7);
    conn.codec.read_buffer().extend_from_slice(&wire[7..]);
    conn.process_input(t0());
    assert!(matches!(
        conn.poll_event(),
        Some(AgentEvent::Request { .. })
    ));
}

#[test]
fn notices_are_bounded_when_nobody_polls() {
    let config = AgentConfig::default().with_max_in_flight(1);
    let mut conn = established_with(config, Encoding::Json);
    let mut wire = event_frame(Encoding::Json, &complete("kept"));
    // Each of these is answered 503 and reported as a notice.
    for i in 0..(MAX_QUEUED_NOTICES + 10) {
        wire.extend(event_frame(Encoding::Json, &complete(&format!("over-{i}"))));
    }
    conn.handle_input(t0(), &wire);
    assert_eq!(conn.queued_events(), MAX_QUEUED_NOTICES);
    assert_eq!(conn.notices_dropped(), 11);
    // Every refused event was still answered.
    assert_eq!(
        responses(&mut conn, Encoding::Json).len(),
        MAX_QUEUED_NOTICES + 10
    );
    // Requests are never dropped.
    let kept = RequestId::from_raw(0);
    assert_eq!(conn.correlation_id(kept), Some("kept"));
    conn.respond(kept, AgentResponse::allow()).unwrap();
    conn.handle_input(t0(), &event_frame(Encoding::Json, &complete("next")));
    assert_eq!(conn.queued_events(), MAX_QUEUED_NOTICES + 1);
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn vectors() -> Vec<serde_json::Value> {
    let local = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/vectors/vectors.jsonl"
    );
    let text = std::fs::read_to_string(local).expect("tests/vectors/vectors.jsonl not found");
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn reference_proxy_vectors_become_requests() {
    let mut seen = 0;
    let mut requests: HashMap<String, (Encoding, RequestId)> = HashMap::new();
    for v in vectors() {
        if v["direction"] != "proxy_to_agent" {
            continue;
        }
        let type_byte = u8::from_str_radix(
            v["type_byte"].as_str().unwrap().trim_start_matches("0x"),
            16,
        )
        .unwrap();
        let session = Encoding::from_name(v["session_encoding"].as_str().unwrap()).unwrap();
        let frame = hex(v["frame_hex"].as_str().unwrap());
        let name = v["name"].as_str().unwrap();
        let mut conn = FramedAgent::established(AgentConfig::default(), session);
        let _ = conn.poll_event();
        match type_byte {
            0x10..=0x17 => {
                let decoded: serde_json::Value =
                    serde_json::from_str(v["payload_decoded"].as_str().unwrap()).unwrap();
                let expected = decoded
                    .get("correlation_id")
                    .or_else(|| decoded.get(0))
                    .and_then(|c| c.as_str())
                    .unwrap();
                // Byte-at-a-time to exercise the incremental path too.
                for b in &frame {
                    conn.handle_input(t0(), std::slice::from_ref(b));
                }
                let evs = events(&mut conn);
                let [AgentEvent::Request { id, event }] = &evs[..] else {
                    panic!("{name} ({session}): {evs:?}")
                };
                assert_eq!(event.correlation_id(), expected, "{name} ({session})");
                assert_eq!(event.frame_type().as_byte(), type_byte);
                conn.respond(*id, AgentResponse::allow()).unwrap();
                let got = responses(&mut conn, session);
                assert_eq!(got[0].correlation_id(), Some(expected));
                requests.insert(format!("{name}/{session}"), (session, *id));
                seen += 1;
            }
            0x41 => {
                conn.handle_input(t0(), &frame);
                let out = conn.poll_transmit().unwrap();
                assert_eq!(out[4], 0x42);
                assert_eq!(&out[..4], &frame[..4]);
                assert_eq!(&out[5..], &frame[5..], "{name} ({session})");
            }
            0x40 => {
                // The reference's JSON cancel, in either session encoding.
                conn.handle_input(t0(), &event_frame(session, &complete("rh-9")));
                let Some(AgentEvent::Request { id, .. }) = conn.poll_event() else {
                    panic!()
                };
                conn.handle_input(t0(), &frame);
                assert_eq!(
                    events(&mut conn),
                    vec![AgentEvent::Cancelled {
                        id,
                        correlation_id: "rh-9".into(),
                        reason: CancelReason::Timeout
                    }],
                    "{name} ({session})"
                );
            }
            _ => {}
        }
    }
    assert!(seen >= 25, "only {seen} event vectors");
}

/// Pieces of input for the property tests: valid frames and garbage.
#[derive(Clone, Debug)]
enum Piece {
    Event(u8, u8),
    Malformed(u8, u8),
    Cancel(u8),
    Ping(Vec<u8>),
    Unknown(u8, Vec<u8>),
    Raw(u8, Vec<u8>),
    Bytes(Vec<u8>),
}

/// Well-framed input: events, salvageable malformed events, cancels, pings, unknown types.
fn clean_piece() -> impl Strategy<Value = Piece> {
    prop_oneof![
        6 => (0u8..8, 0u8..6).prop_map(|(k, c)| Piece::Event(k, c)),
        1 => (0u8..8, 0u8..6).prop_map(|(k, c)| Piece::Malformed(k, c)),
        2 => (0u8..6).prop_map(Piece::Cancel),
        1 => prop::collection::vec(any::<u8>(), 0..16).prop_map(Piece::Ping),
        1 => (any::<u8>(), prop::collection::vec(any::<u8>(), 0..16))
            .prop_map(|(t, p)| Piece::Unknown(t, p)),
    ]
}

/// Anything: well-framed input, plus event frames with random payloads and raw bytes.
fn piece() -> impl Strategy<Value = Piece> {
    prop_oneof![
        8 => clean_piece(),
        1 => (0x10u8..0x18, prop::collection::vec(any::<u8>(), 0..32))
            .prop_map(|(t, p)| Piece::Raw(t, p)),
        1 => prop::collection::vec(any::<u8>(), 0..24).prop_map(Piece::Bytes),
    ]
}

fn render(piece: &Piece, encoding: Encoding) -> Vec<u8> {
    match piece {
        Piece::Event(kind, cid) => {
            let events = every_event(&format!("p{cid}"));
            event_frame(encoding, &events[usize::from(*kind) % events.len()])
        }
        Piece::Malformed(kind, cid) => raw_frame(
            0x10 + kind % 8,
            format!(r#"{{"correlation_id":"p{cid}","metadata":7,"data":7,"status":"x"}}"#)
                .as_bytes(),
        ),
        Piece::Cancel(cid) => cancel_frame(&format!("p{cid}"), CancelReason::Timeout),
        Piece::Ping(p) => raw_frame(0x41, p),
        Piece::Unknown(t, p) => {
            let t = if FrameType::from_byte(*t).is_some() {
                0xEE
            } else {
                *t
            };
            raw_frame(t, p)
        }
        Piece::Raw(t, p) => raw_frame(*t, p),
        Piece::Bytes(b) => b.clone(),
    }
}

fn encoding_strategy() -> impl Strategy<Value = Encoding> {
    prop_oneof![Just(Encoding::Json), Just(Encoding::MsgPack)]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Arbitrary bytes (mixed with valid frames), split arbitrarily, after a valid
    /// handshake: no panic, the in-flight bound holds, output is always well framed.
    #[test]
    fn arbitrary_input_never_panics(
        encoding in encoding_strategy(),
        pieces in prop::collection::vec(piece(), 0..40),
        splits in prop::collection::vec(1usize..64, 1..20),
        max_in_flight in 0usize..5,
        respond_every in 1usize..4,
    ) {
        let config = AgentConfig::default().with_max_in_flight(max_in_flight);
        let mut conn = established_with(config, encoding);
        let wire: Vec<u8> = pieces.iter().flat_map(|p| render(p, encoding)).collect();
        let mut rest = &wire[..];
        let mut step = 0;
        let mut closed_seen = 0;
        let mut answers = 0;
        let mut allows = 0;
        while !rest.is_empty() {
            let n = splits[step % splits.len()].min(rest.len());
            conn.handle_input(t0(), &rest[..n]);
            rest = &rest[n..];
            step += 1;
            prop_assert!(conn.in_flight() <= max_in_flight);
            while let Some(ev) = conn.poll_event() {
                match ev {
                    AgentEvent::Request { id, .. } if step % respond_every == 0 => {
                        // A Request polled after the input that closed the connection can
                        // no longer be answered.
                        match conn.respond(id, AgentResponse::allow()) {
                            Ok(()) => answers += 1,
                            Err(RespondError::Closed(_)) => prop_assert!(conn.is_closed()),
                            // Its Cancel came in the same input and waits behind it.
                            Err(RespondError::UnknownRequest(_)) => {}
                        }
                    }
                    AgentEvent::Closed(_) => closed_seen += 1,
                    _ => {}
                }
            }
            if let Some(out) = conn.poll_transmit() {
                let frames = decode_all(&out);
                prop_assert!(frames.iter().all(|f| matches!(
                    f.frame_type,
                    FrameType::AgentResponse | FrameType::Pong
                )));
                for f in frames.iter().filter(|f| f.frame_type == FrameType::AgentResponse) {
                    let r: AgentResponse =
                        decode_payload(f.frame_type, encoding, &f.payload).unwrap();
                    prop_assert!(r.correlation_id().is_some());
                    if r.decision == Decision::Allow {
                        allows += 1;
                    }
                }
            }
        }
        // Only explicit answers allow; every automatic answer blocks (fail-closed).
        prop_assert_eq!(allows, answers);
        conn.handle_eof();
        if conn.poll_event().is_some() {
            closed_seen += 1;
        }
        prop_assert_eq!(closed_seen, 1);
        prop_assert_eq!(conn.in_flight(), 0);
    }

    /// Arbitrary interleavings of input, answers and cancels: no request is answered
    /// twice, no cancelled request is answered, and every answer frame is accounted for.
    #[test]
    fn no_request_is_answered_twice(
        encoding in encoding_strategy(),
        ops in prop::collection::vec(
            prop_oneof![
                3 => clean_piece().prop_map(Op::Input),
                3 => (0usize..64).prop_map(Op::Respond),
                1 => (0u8..6).prop_map(Op::Cancel),
            ],
            0..80,
        ),
    ) {
        let config = AgentConfig::default().with_max_in_flight(3);
        let mut conn = established_with(config, encoding);
        let mut issued: Vec<RequestId> = Vec::new();
        let mut answered: HashSet<RequestId> = HashSet::new();
        let mut cancelled: HashSet<RequestId> = HashSet::new();
        let mut auto_answers = 0usize;
        let mut events_per_cid: HashMap<String, usize> = HashMap::new();
        let mut frames_per_cid: HashMap<String, usize> = HashMap::new();
        for op in ops {
            match op {
                Op::Input(p) => conn.handle_input(t0(), &render(&p, encoding)),
                Op::Cancel(c) => conn.handle_input(
                    t0(),
                    &cancel_frame(&format!("p{c}"), CancelReason::Manual),
                ),
                Op::Respond(i) => {
                    if issued.is_empty() {
                        continue;
                    }
                    let id = issued[i % issued.len()];
                    let before = conn.codec.pending_transmit();
                    match conn.respond(id, AgentResponse::allow()) {
                        Ok(()) => {
                            prop_assert!(answered.insert(id), "answered {} twice", id);
                            prop_assert!(!cancelled.contains(&id));
                        }
                        Err(_) => prop_assert_eq!(conn.codec.pending_transmit(), before),
                    }
                }
            }
            while let Some(ev) = conn.poll_event() {
                match ev {
                    AgentEvent::Request { id, event } => {
                        prop_assert!(!issued.contains(&id));
                        issued.push(id);
                        *events_per_cid.entry(event.correlation_id().to_owned()).or_default() += 1;
                    }
                    AgentEvent::Cancelled { id, .. } => {
                        prop_assert!(!answered.contains(&id));
                        prop_assert!(cancelled.insert(id));
                    }
                    AgentEvent::MalformedEvent { correlation_id, .. }
                    | AgentEvent::Overloaded { correlation_id, .. } => {
                        auto_answers += 1;
                        *events_per_cid.entry(correlation_id).or_default() += 1;
                    }
                    _ => {}
                }
            }
            prop_assert!(conn.in_flight() <= 3);
            if let Some(out) = conn.poll_transmit() {
                for f in decode_all(&out) {
                    if f.frame_type == FrameType::AgentResponse {
                        let r: AgentResponse =
                            decode_payload(f.frame_type, encoding, &f.payload).unwrap();
                        let cid = r.correlation_id().unwrap().to_owned();
                        *frames_per_cid.entry(cid).or_default() += 1;
                    }
                }
            }
        }
        // Well-framed input never kills the connection.
        prop_assert!(conn.is_established());
        let total_frames: usize = frames_per_cid.values().sum();
        prop_assert_eq!(total_frames, answered.len() + auto_answers);
        for (cid, n) in &frames_per_cid {
            prop_assert!(*n <= events_per_cid.get(cid).copied().unwrap_or(0), "cid {}", cid);
        }
    }
}

#[derive(Clone, Debug)]
enum Op {
    Input(Piece),
    Respond(usize),
    Cancel(u8),
}

// ----- message transport mode (gRPC) ---------------------------------------------------

fn grpc_handshake(versions: &[u32]) -> AgentIncoming {
    AgentIncoming::Handshake(HandshakeRequest {
        supported_versions: versions.to_vec(),
        proxy_id: "grpc-proxy".into(),
        proxy_version: "0".into(),
        config: Some(serde_json::json!({"k": 1})),
        supported_encodings: vec!["msgpack".into(), "json".into()],
    })
}

fn messages(conn: &mut AgentConnection) -> Vec<AgentOutgoing> {
    std::iter::from_fn(|| conn.poll_message()).collect()
}

fn message_established(config: AgentConfig) -> AgentConnection {
    let mut conn = AgentConnection::new(messages_config(config), t0());
    conn.handle_message(t0(), grpc_handshake(&[2, 1]));
    let out = messages(&mut conn);
    let [AgentOutgoing::Handshake(answer)] = &out[..] else {
        panic!("{out:?}")
    };
    assert!(answer.success);
    // The nominal encoding of a message transport is JSON, whatever the proxy offered.
    assert_eq!(answer.encoding, "json");
    let evs = events(&mut conn);
    assert!(
        matches!(&evs[..], [AgentEvent::Established { proxy: Some(p), .. }] if p.proxy_id == "grpc-proxy"),
        "{evs:?}"
    );
    conn
}

fn answered(out: &[AgentOutgoing]) -> Vec<(&str, &AgentResponse)> {
    out.iter()
        .map(|m| match m {
            AgentOutgoing::Response {
                correlation_id,
                response,
            } => (correlation_id.as_str(), response),
            other => panic!("not a response: {other:?}"),
        })
        .collect()
}

#[test]
fn messages_every_event_is_answered_with_the_id_beside_and_audit_untouched() {
    let mut conn = message_established(AgentConfig::default());
    for event in every_event("m-1") {
        conn.handle_message(t0(), AgentIncoming::from(event));
    }
    let evs = events(&mut conn);
    assert_eq!(evs.len(), 8);
    assert_eq!(conn.in_flight(), 8);
    // Answer in reverse order; the handler's own custom values are left exactly as set,
    // including a `correlation_id` key that framed transports would overwrite.
    for ev in evs.iter().rev() {
        let AgentEvent::Request { id, event } = ev else {
            panic!("{ev:?}")
        };
        let mut r = AgentResponse::block(403, "no");
        r.audit
            .custom
            .insert(CORRELATION_KEY.into(), serde_json::json!("handler's own"));
        r.audit.custom.insert(
            "kind".into(),
            serde_json::json!(format!("{:?}", event.kind())),
        );
        conn.respond(*id, r).unwrap();
    }
    let out = messages(&mut conn);
    let got = answered(&out);
    assert_eq!(got.len(), 8);
    for (cid, r) in got {
        assert_eq!(cid, "m-1");
        assert_eq!(r.audit.custom[CORRELATION_KEY], "handler's own");
        assert_eq!(r.audit.custom.len(), 2);
    }
    assert_eq!(conn.in_flight(), 0);
}

#[test]
fn messages_events_before_the_handshake_get_an_error_answer_not_silence() {
    let mut conn = AgentConnection::new(messages_config(AgentConfig::default()), t0());
    conn.handle_message(t0(), AgentIncoming::from(complete("early")));
    conn.handle_message(
        t0(),
        AgentIncoming::Ping(Ping {
            sequence: 7,
            timestamp_ms: 9,
        }),
    );
    let out = messages(&mut conn);
    assert_eq!(out.len(), 2);
    let [(cid, r)] = &answered(&out[..1])[..] else {
        panic!()
    };
    assert_eq!(*cid, "early");
    assert_eq!(
        r.decision,
        Decision::block(500, Some("event before the handshake".into()))
    );
    assert_eq!(r.audit.reason_codes, [HANDSHAKE_REQUIRED_REASON]);
    assert_eq!(
        out[1],
        AgentOutgoing::Pong(Ping {
            sequence: 7,
            timestamp_ms: 9
        })
    );
    assert!(events(&mut conn).is_empty());
    assert_eq!(conn.in_flight(), 0);
    // The handshake is still accepted afterwards.
    conn.handle_message(t0(), grpc_handshake(&[2]));
    assert!(conn.is_established());
}

#[test]
fn messages_version_mismatch_is_refused_and_closes() {
    let mut conn = AgentConnection::new(messages_config(AgentConfig::default()), t0());
    conn.handle_message(t0(), grpc_handshake(&[1]));
    let out = messages(&mut conn);
    let [AgentOutgoing::Handshake(answer)] = &out[..] else {
        panic!("{out:?}")
    };
    assert!(!answer.success);
    assert!(answer
        .error
        .as_deref()
        .unwrap_or("")
        .contains("unsupported"));
    assert!(conn.is_closed());
    assert!(matches!(
        &events(&mut conn)[..],
        [AgentEvent::Closed(ConnectionError::Handshake(
            HandshakeError::VersionMismatch { .. }
        ))]
    ));
    conn.handle_message(t0(), AgentIncoming::from(complete("x")));
    assert!(messages(&mut conn).is_empty());
}

#[test]
fn messages_handshake_deadline_and_second_handshake() {
    let mut conn = AgentConnection::new(messages_config(AgentConfig::default()), t0());
    let late = t0() + Duration::from_secs(6);
    conn.handle_message(late, grpc_handshake(&[2]));
    assert!(conn.is_closed());
    assert!(messages(&mut conn).is_empty());

    let mut conn = message_established(AgentConfig::default());
    conn.handle_message(t0(), grpc_handshake(&[2]));
    assert!(matches!(
        &events(&mut conn)[..],
        [AgentEvent::Ignored {
            frame_type: FrameType::HandshakeRequest
        }]
    ));
    assert!(messages(&mut conn).is_empty());
    assert!(conn.is_established());
}

#[test]
fn messages_cancel_drops_the_request_and_its_answer() {
    let mut conn = message_established(AgentConfig::default());
    conn.handle_message(t0(), AgentIncoming::from(complete("c1")));
    conn.handle_message(t0(), AgentIncoming::from(complete("c2")));
    let evs = events(&mut conn);
    conn.handle_message(
        t0(),
        AgentIncoming::Cancel(Cancel {
            correlation_id: "c1".into(),
            reason: CancelReason::Timeout,
            timestamp_ms: 0,
        }),
    );
    let AgentEvent::Request { id: first, .. } = evs[0] else {
        panic!()
    };
    let AgentEvent::Request { id: second, .. } = evs[1] else {
        panic!()
    };
    assert!(matches!(
        &events(&mut conn)[..],
        [AgentEvent::Cancelled { id, reason: CancelReason::Timeout, .. }] if *id == first
    ));
    assert!(matches!(
        conn.respond(first, AgentResponse::allow()),
        Err(RespondError::UnknownRequest(_))
    ));
    conn.respond(second, AgentResponse::allow()).unwrap();
    let out = messages(&mut conn);
    assert_eq!(
        answered(&out).iter().map(|a| a.0).collect::<Vec<_>>(),
        ["c2"]
    );
}

#[test]
fn messages_malformed_events_fail_closed_or_close() {
    let mut conn = message_established(AgentConfig::default());
    conn.handle_message(
        t0(),
        AgentIncoming::MalformedEvent {
            correlation_id: Some("bad".into()),
            error: malformed(FrameType::WebSocketFrame, "status out of range"),
        },
    );
    let out = messages(&mut conn);
    let [(cid, r)] = &answered(&out)[..] else {
        panic!("{out:?}")
    };
    assert_eq!(*cid, "bad");
    assert_eq!(r.audit.reason_codes, [MALFORMED_EVENT_REASON]);
    assert!(matches!(
        r.websocket_decision,
        Some(WebSocketDecision::Close { code: 1011, .. })
    ));
    assert!(matches!(
        &events(&mut conn)[..],
        [AgentEvent::MalformedEvent { correlation_id, error }]
            if correlation_id == "bad" && error.frame_type == FrameType::WebSocketFrame
    ));
    conn.handle_message(
        t0(),
        AgentIncoming::MalformedEvent {
            correlation_id: None,
            error: malformed(FrameType::RequestHeaders, "no id"),
        },
    );
    assert!(conn.is_closed());
    assert!(matches!(
        &events(&mut conn)[..],
        [AgentEvent::Closed(ConnectionError::Malformed(_))]
    ));
}

#[test]
fn messages_overload_and_control_messages() {
    let config = AgentConfig::default().with_max_in_flight(1);
    let mut conn = message_established(config);
    conn.handle_message(t0(), AgentIncoming::from(complete("a")));
    conn.handle_message(t0(), AgentIncoming::from(complete("b")));
    let out = messages(&mut conn);
    let [(cid, r)] = &answered(&out)[..] else {
        panic!("{out:?}")
    };
    assert_eq!(*cid, "b");
    assert_fail_closed_untagged(r, 503, AGENT_OVERLOADED_REASON);
    events(&mut conn);

    let health = HealthStatus {
        agent_id: "a".into(),
        state: HealthState::Degraded,
        message: None,
        timestamp_ms: 1,
    };
    let flow = FlowControl {
        action: FlowAction::UpdateCapacity,
        correlation_id: Some("a".into()),
        buffer_available: Some(10),
        timestamp_ms: 2,
    };
    let metrics = MetricsReport {
        agent_id: "a".into(),
        ..Default::default()
    };
    let update = ConfigUpdateRequest {
        update_type: crate::ConfigUpdateType::RequestReload,
        request_id: "r".into(),
        timestamp_ms: 3,
    };
    conn.send_health(&health).unwrap();
    conn.send_flow_control(&flow).unwrap();
    conn.send_metrics(&metrics).unwrap();
    conn.send_config_update(&update).unwrap();
    assert_eq!(
        messages(&mut conn),
        [
            AgentOutgoing::Health(health),
            AgentOutgoing::FlowControl(flow),
            AgentOutgoing::Metrics(metrics),
            AgentOutgoing::ConfigUpdate(update),
        ]
    );
}

fn assert_fail_closed_untagged(r: &AgentResponse, status: u16, reason: &str) {
    assert!(matches!(r.decision, Decision::Block { status: s, .. } if s == status));
    assert_eq!(r.audit.reason_codes, [reason]);
    assert!(r.audit.custom.is_empty());
}

// ----- events the application never sees: over the header limits, no correlation id ------

fn many_headers(cid: &str, names: usize) -> Event {
    let headers: crate::Headers = (0..names).map(|i| (format!("h{i}"), "v")).collect();
    Event::ResponseHeaders(crate::ResponseHeadersEvent {
        correlation_id: cid.into(),
        status: 200,
        headers,
    })
}

fn tight() -> AgentConfig {
    AgentConfig::default().with_header_limits(
        HeaderLimits::default()
            .with_max_count(4)
            .with_max_bytes(1024),
    )
}

#[test]
fn events_over_the_header_limits_are_answered_431_in_both_encodings() {
    for encoding in [Encoding::Json, Encoding::MsgPack] {
        let mut conn = established_with(tight(), encoding);
        let mut wire = event_frame(encoding, &many_headers("big", 5));
        wire.extend(event_frame(encoding, &many_headers("ok", 4)));
        conn.handle_input(t0(), &wire);
        let evs = events(&mut conn);
        assert!(
            matches!(&evs[..], [
                AgentEvent::MalformedEvent { correlation_id, error },
                AgentEvent::Request { .. },
            ] if correlation_id == "big" && error.limit.is_some()),
            "{encoding}: {evs:?}"
        );
        let got = responses(&mut conn, encoding);
        assert_fail_closed(&got[0], "big", 431, HEADER_LIMIT_REASON);
        assert_eq!(
            conn.in_flight(),
            1,
            "only the event within the limits is tracked"
        );
    }
}

fn configure(cid: &str, entries: usize) -> Event {
    let config: serde_json::Map<String, serde_json::Value> =
        (0..entries).map(|i| (format!("k{i}"), i.into())).collect();
    Event::Configure(crate::ConfigureEvent {
        correlation_id: cid.into(),
        config: config.into(),
        config_version: None,
    })
}

#[test]
fn events_over_the_element_budget_are_answered_413_in_both_encodings() {
    // A Configure event has 3 top-level entries plus its config's.
    let config = AgentConfig::default().with_max_elements(10);
    for encoding in [Encoding::Json, Encoding::MsgPack] {
        let mut conn = established_with(config.clone(), encoding);
        let mut wire = event_frame(encoding, &configure("big", 8));
        wire.extend(event_frame(encoding, &configure("ok", 7)));
        conn.handle_input(t0(), &wire);
        let evs = events(&mut conn);
        assert!(
            matches!(&evs[..], [
                AgentEvent::MalformedEvent { correlation_id, error },
                AgentEvent::Request { .. },
            ] if correlation_id == "big"
                && error.limit == Some(LimitExceeded::Elements { max: 10 })),
            "{encoding}: {evs:?}"
        );
        let got = responses(&mut conn, encoding);
        assert_eq!(got.len(), 1, "{encoding}: only the refusal is answered yet");
        assert_fail_closed(&got[0], "big", 413, MESSAGE_TOO_COMPLEX_REASON);
        assert_eq!(
            conn.in_flight(),
            1,
            "only the event within budget is tracked"
        );
    }
}

#[test]
fn an_event_without_a_correlation_id_is_blocked_never_handed_over() {
    for encoding in [Encoding::Json, Encoding::MsgPack] {
        let mut conn = established(encoding);
        conn.handle_input(t0(), &event_frame(encoding, &complete("")));
        let evs = events(&mut conn);
        assert!(
            matches!(&evs[..], [AgentEvent::MalformedEvent { correlation_id, .. }] if correlation_id.is_empty()),
            "{encoding}: {evs:?}"
        );
        let got = responses(&mut conn, encoding);
        assert_fail_closed(&got[0], "", 500, MALFORMED_EVENT_REASON);
        assert_eq!(conn.in_flight(), 0);
    }
}

#[test]
fn message_transports_apply_the_same_refusals() {
    let mut conn = message_established(tight());
    conn.handle_message(t0(), AgentIncoming::from(many_headers("big", 5)));
    conn.handle_message(t0(), AgentIncoming::from(complete("")));
    conn.handle_message(t0(), AgentIncoming::from(many_headers("ok", 4)));
    let out = messages(&mut conn);
    let got = answered(&out);
    assert_eq!(got.len(), 2, "{out:?}");
    assert_eq!(got[0].0, "big");
    assert!(matches!(
        got[0].1.decision,
        Decision::Block { status: 431, .. }
    ));
    assert_eq!(got[0].1.audit.reason_codes, [HEADER_LIMIT_REASON]);
    assert_eq!(got[1].0, "");
    assert!(matches!(
        got[1].1.decision,
        Decision::Block { status: 500, .. }
    ));
    let evs = events(&mut conn);
    assert!(
        matches!(evs.last(), Some(AgentEvent::Request { event, .. }) if event.correlation_id() == "ok"),
        "{evs:?}"
    );
    assert_eq!(conn.in_flight(), 1);
}

fn body_chunk(cid: &str, len: usize) -> Event {
    Event::RequestBodyChunk(RequestBodyChunkEvent(BodyChunk {
        correlation_id: cid.into(),
        data: vec![0xab; len].into(),
        ..Default::default()
    }))
}

fn request_ids(evs: &[AgentEvent]) -> Vec<RequestId> {
    evs.iter()
        .filter_map(|e| match e {
            AgentEvent::Request { id, .. } => Some(*id),
            _ => None,
        })
        .collect()
}

#[test]
fn in_flight_bytes_count_admitted_payloads_until_answered_or_cancelled() {
    for encoding in [Encoding::Json, Encoding::MsgPack] {
        let mut conn = established(encoding);
        assert_eq!(conn.in_flight_bytes(), 0);
        let frames: Vec<Vec<u8>> = ["a", "b", "c"]
            .iter()
            .zip([1000, 20_000, 300])
            .map(|(cid, len)| event_frame(encoding, &body_chunk(cid, len)))
            .collect();
        // What each event holds: its box, its correlation id and its body, and the copy of its
        // payload that its strings share when the payload is small enough to be shared.
        let shared = |i: usize| {
            let len = frames[i].len() - 5;
            if len <= SHARED_PAYLOAD_MAX {
                len
            } else {
                0
            }
        };
        let payload = |i: usize| size_of::<Event>() + 1 + [1000, 20_000, 300][i] + shared(i);
        let mut expected = 0;
        let mut ids = Vec::new();
        for (i, frame) in frames.iter().enumerate() {
            conn.handle_input(t0(), frame);
            ids.extend(request_ids(&events(&mut conn)));
            expected += payload(i);
            assert_eq!(
                conn.in_flight_bytes(),
                expected,
                "{encoding} after admit #{i}"
            );
        }

        conn.respond(ids[1], AgentResponse::allow()).unwrap();
        expected -= payload(1);
        assert_eq!(conn.in_flight_bytes(), expected, "{encoding} after respond");
        // A second answer for the same request changes nothing.
        assert!(conn.respond(ids[1], AgentResponse::allow()).is_err());
        assert_eq!(conn.in_flight_bytes(), expected);

        conn.handle_input(t0(), &cancel_frame("a", CancelReason::Timeout));
        assert!(matches!(
            events(&mut conn)[..],
            [AgentEvent::Cancelled { .. }]
        ));
        expected -= payload(0);
        assert_eq!(conn.in_flight_bytes(), expected, "{encoding} after cancel");
        // Cancelling it again, or an unknown id, changes nothing.
        conn.handle_input(t0(), &cancel_frame("a", CancelReason::Timeout));
        conn.handle_input(t0(), &cancel_frame("zz", CancelReason::Timeout));
        assert_eq!(conn.in_flight_bytes(), expected);
        assert_eq!(expected, payload(2));

        conn.handle_eof();
        assert_eq!(conn.in_flight_bytes(), 0, "{encoding} after close");
        assert_eq!(conn.in_flight(), 0);
    }
}

#[test]
fn refused_events_weigh_nothing() {
    let config = AgentConfig::default().with_max_in_flight(1);
    let mut conn = established_with(config, Encoding::Json);
    let first = event_frame(Encoding::Json, &body_chunk("kept", 5000));
    conn.handle_input(t0(), &first);
    let held = conn.in_flight_bytes();
    // The event's box, the id, the body, and the payload copy the id shares.
    assert_eq!(
        held,
        size_of::<Event>() + "kept".len() + 5000 + first.len() - 5
    );
    // Over max_in_flight (answered 503), malformed (500), unknown type: none is tracked.
    conn.handle_input(
        t0(),
        &event_frame(Encoding::Json, &body_chunk("over", 5000)),
    );
    conn.handle_input(
        t0(),
        &raw_frame(0x11, br#"{"correlation_id":"bad","data":7}"#),
    );
    conn.handle_input(t0(), &raw_frame(0x7e, &[0; 5000]));
    assert_eq!(conn.in_flight_bytes(), held);
    assert_eq!(responses(&mut conn, Encoding::Json).len(), 2);
}

#[test]
fn a_local_close_or_an_unencodable_answer_releases_the_bytes() {
    let mut conn = established(Encoding::Json);
    conn.handle_input(t0(), &event_frame(Encoding::Json, &body_chunk("a", 100)));
    conn.handle_input(t0(), &event_frame(Encoding::Json, &body_chunk("b", 100)));
    let ids = request_ids(&events(&mut conn));
    let one = conn.in_flight_bytes() / 2;
    // An answer too large for a frame is replaced by a block and stops counting too.
    let mut huge = AgentResponse::allow();
    huge.audit.custom.insert(
        "pad".into(),
        serde_json::Value::String("x".repeat(MAX_FRAME_LEN as usize)),
    );
    conn.respond(ids[0], huge).unwrap();
    assert_eq!(conn.in_flight_bytes(), one);
    let [block] = &responses(&mut conn, Encoding::Json)[..] else {
        panic!()
    };
    assert_eq!(block.audit.reason_codes, [RESPONSE_TOO_LARGE_REASON]);
    assert!(matches!(&conn.unsent[..], [Unsent::Replaced(_)]));
    conn.close();
    assert_eq!(conn.in_flight_bytes(), 0);
}

#[test]
fn message_transports_weigh_events_by_their_contents() {
    let mut conn = message_established(AgentConfig::default());
    conn.handle_message(t0(), AgentIncoming::from(body_chunk("c1", 10_000)));
    let mut guard = GuardrailInspectEvent {
        correlation_id: "c2".into(),
        content: "x".repeat(3000).into(),
        ..Default::default()
    };
    guard.categories = vec!["pii".into(); 10];
    conn.handle_message(t0(), AgentIncoming::from(Event::GuardrailInspect(guard)));
    let config = serde_json::json!({"rules": "y".repeat(2000)});
    conn.handle_message(
        t0(),
        AgentIncoming::from(Event::Configure(ConfigureEvent {
            correlation_id: "c3".into(),
            config,
            config_version: None,
        })),
    );
    conn.handle_message(t0(), AgentIncoming::from(many_headers("c4", 100)));
    let ids = request_ids(&events(&mut conn));
    assert_eq!(ids.len(), 4);
    let mut weights = Vec::new();
    let mut before = conn.in_flight_bytes();
    for id in ids {
        conn.respond(id, AgentResponse::allow()).unwrap();
        weights.push(before - conn.in_flight_bytes());
        before = conn.in_flight_bytes();
    }
    assert_eq!(before, 0);
    // Each weighs its box, and what the sender chose to put in it.
    let weights: Vec<usize> = weights.iter().map(|w| w - size_of::<Event>()).collect();
    assert!((10_000..10_100).contains(&weights[0]), "{weights:?}");
    assert!((3030..3100).contains(&weights[1]), "{weights:?}");
    assert!((2000..2100).contains(&weights[2]), "{weights:?}");
    let (_, header_bytes) = many_headers("c4", 100).header_load();
    assert!(
        weights[3] >= header_bytes && header_bytes > 0,
        "{weights:?}"
    );
}

fn registration_request() -> crate::registration::RegistrationRequest {
    crate::registration::RegistrationRequest {
        protocol_version: 2,
        agent_id: "waf-1".into(),
        capabilities: crate::Capabilities::new("waf-1", "WAF", "1"),
        auth_token: Some("s3cret".into()),
        metadata: None,
    }
}

fn registration_answer(success: bool) -> Vec<u8> {
    let answer = crate::registration::RegistrationResponse {
        success,
        error: (!success).then(|| "not in the allowed list".into()),
        proxy_id: "proxy".into(),
        proxy_version: "1".into(),
        connection_id: if success {
            "waf-1-7".into()
        } else {
            String::new()
        },
    };
    raw_frame(0x02, &serde_json::to_vec(&answer).unwrap())
}

#[test]
fn reverse_registration_is_the_first_state_and_frames_behind_the_acceptance_are_served() {
    let now = t0();
    let mut conn = FramedAgent::reverse(AgentConfig::default(), registration_request(), now);
    let sent = transmitted(&mut conn);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].frame_type, FrameType::HandshakeRequest);
    let request: crate::registration::RegistrationRequest =
        serde_json::from_slice(&sent[0].payload).unwrap();
    assert_eq!(request, registration_request());
    assert!(!conn.is_established());
    assert_eq!(
        conn.poll_timeout(),
        Some(now + AgentConfig::default().handshake.timeout)
    );
    // The acceptance and an event in the same read: the event is decoded as JSON and served.
    let mut wire = registration_answer(true);
    wire.extend(event_frame(Encoding::Json, &complete("right-behind")));
    for chunk in wire.chunks(7) {
        conn.handle_input(t0(), chunk);
    }
    let evs = events(&mut conn);
    assert!(
        matches!(&evs[..], [AgentEvent::Established { negotiated, proxy: None }, AgentEvent::Request { event, .. }]
            if negotiated.encoding == Encoding::Json && event.correlation_id() == "right-behind"),
        "{evs:?}"
    );
    assert_eq!(conn.registration().unwrap().connection_id, "waf-1-7");
    assert_eq!(conn.poll_timeout(), None);
}

#[test]
fn reverse_registration_refused_late_or_answered_wrongly_closes_with_its_cause() {
    let refused = {
        let mut conn = FramedAgent::reverse(AgentConfig::default(), registration_request(), t0());
        conn.handle_input(t0(), &registration_answer(false));
        conn.close_reason().cloned().unwrap()
    };
    assert!(
        matches!(&refused, ConnectionError::Registration(crate::registration::RegistrationError::Rejected(m)) if m.contains("allowed list")),
        "{refused:?}"
    );
    assert_eq!(refused.fault(), crate::Fault::Peer);

    let mut conn = FramedAgent::reverse(AgentConfig::default(), registration_request(), t0());
    conn.handle_timeout(t0() + Duration::from_secs(60));
    let late = conn.close_reason().cloned().unwrap();
    assert!(matches!(
        late,
        ConnectionError::Registration(crate::registration::RegistrationError::Timeout(_))
    ));
    assert_eq!(late.fault(), crate::Fault::Timeout);

    // An event header instead of the answer is refused before its payload is read.
    let mut conn = FramedAgent::reverse(AgentConfig::default(), registration_request(), t0());
    conn.handle_input(t0(), &event_frame(Encoding::Json, &complete("x"))[..5]);
    assert!(matches!(
        conn.close_reason(),
        Some(ConnectionError::Registration(
            crate::registration::RegistrationError::UnexpectedFrame { got: 0x14, .. }
        ))
    ));
    assert!(conn.codec.read_buffer().is_empty());
}
