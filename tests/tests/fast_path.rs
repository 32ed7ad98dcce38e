//! The direct RequestHeaders writers and readers, and the direct writers and readers of a simple
//! allow answer (an allow with nothing but header operations), in JSON and MessagePack, against the general (serde) encoder and decoder.
//!
//! The writers must produce the general encoder's bytes exactly.
//!
//! A reader must take what our proxy and the reference send, decode it to the event the
//! general decoder gives, and leave everything else (malformed bytes, other shapes, limits
//! reached) to the general decoder, so that the decoder in use always reaches the general
//! decoder's decision. The fuzz targets check the same on arbitrary bytes.

use agent_protocol_core::encoding::{
    decode_event_with_limits, decode_payload, encode_event, encode_frame, encode_response,
};
use agent_protocol_core::frame::FrameType;
use agent_protocol_core::limits::{HeaderLimits, MessageLimits};
use agent_protocol_core::proxy::{ProxyConfig, ProxyEvent};
use agent_protocol_core::testing::{
    decode_event_general, encode_event_general, fast_agent_response, fast_request_headers,
    FramedProxy,
};
use agent_protocol_core::{AgentResponse, Encoding, Event, HeaderOp};
use agent_protocol_tests::strategies::{agent_response, request_headers};
use bytes::BytesMut;
use proptest::prelude::*;
use serde_json::Value;

const VECTORS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/vectors/vectors.jsonl");
const TY: FrameType = FrameType::RequestHeaders;

const BOTH: [Encoding; 2] = [Encoding::Json, Encoding::MsgPack];

/// The payload of `event` as our proxy encodes it (frame header stripped).
fn payload(encoding: Encoding, event: &Event) -> Vec<u8> {
    let mut buf = BytesMut::new();
    encode_event(&mut buf, encoding, event).unwrap();
    buf[5..].to_vec()
}

/// The direct reader's event, normalised as the decoder in use normalises it.
fn fast(encoding: Encoding, payload: &[u8], limits: MessageLimits) -> Option<Event> {
    let mut event = Event::RequestHeaders(fast_request_headers(encoding, payload, limits)?);
    event.normalize();
    Some(event)
}

fn general(encoding: Encoding, payload: &[u8], limits: MessageLimits) -> Result<Event, String> {
    match decode_event_general(TY, encoding, payload, limits) {
        Some(Ok(event)) => Ok(event),
        Some(Err(e)) => Err(e.to_string()),
        None => Err("not an event".into()),
    }
}

#[test]
fn the_reference_s_payloads_take_the_fast_path() {
    let text = std::fs::read_to_string(VECTORS).unwrap();
    let mut taken = 0;
    for line in text.lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        if v["type_byte"] != "0x10" {
            continue;
        }
        let encoding = Encoding::from_name(v["encoding"].as_str().unwrap()).unwrap();
        let hex = v["frame_hex"].as_str().unwrap();
        let frame: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        let payload = &frame[5..];
        let limits = MessageLimits::default();
        let fast = fast(encoding, payload, limits)
            .unwrap_or_else(|| panic!("{} ({encoding}): not taken", v["name"]));
        assert_eq!(
            Ok(fast),
            general(encoding, payload, limits),
            "{}",
            v["name"]
        );
        taken += 1;
    }
    assert_eq!(taken, 5, "RequestHeaders vectors: 3 JSON, 2 MessagePack");
}

/// Escapes the JSON reader turns into text itself, and the ones it leaves to the general
/// decoder; in both cases the decision is the general decoder's.
#[test]
fn json_escapes_decode_as_the_general_decoder_decodes_them() {
    let event = |uri: &str, port: &str| {
        format!(
            r#"{{"correlation_id":"c","metadata":{{"correlation_id":"c","request_id":"r","client_ip":"i","client_port":{port},"server_name":null,"protocol":"p","tls_version":null,"tls_cipher":null,"route_id":null,"upstream_id":null,"timestamp":"t"}},"method":"GET","uri":"{uri}","headers":{{"a\"b":["\u00e9\/"],"x":"y"}}}}"#
        )
    };
    let limits = MessageLimits::default();
    for (uri, port, taken) in [
        (r#"/plain"#, "1", true),
        (r#"/q\"\\\/\b\f\n\r\t\u0041\u00e9"#, "0", true),
        (r#"/pair\ud83d\ude00"#, "1", false),
        (r#"/lone\ud83d"#, "1", false),
        (r#"/bad\x"#, "1", false),
        (r#"/short\u00e"#, "1", false),
        // A raw control character is not JSON (the general decoder refuses it).
        ("/raw\u{1}", "1", false),
        ("/raw\u{1f}", "1", false),
        ("/plain", "65535", true),
        ("/plain", "65536", false),
        ("/plain", "01", false),
        ("/plain", "1.0", false),
        ("/plain", "1e2", false),
        ("/plain", "-1", false),
        ("/plain", "null", false),
    ] {
        let payload = event(uri, port);
        let fast = fast(Encoding::Json, payload.as_bytes(), limits);
        assert_eq!(fast.is_some(), taken, "{uri} {port}");
        let general = general(Encoding::Json, payload.as_bytes(), limits);
        if let Some(fast) = fast {
            assert_eq!(Ok(fast), general, "{uri} {port}");
        }
        let in_use = decode_event_with_limits(TY, Encoding::Json, payload.as_bytes(), limits)
            .unwrap()
            .map_err(|e| e.to_string());
        assert_eq!(in_use, general, "{uri} {port}");
    }
    // Whitespace between tokens, as a pretty-printing proxy would send.
    let compact = event("/plain", "8080");
    let pretty =
        serde_json::to_string_pretty(&serde_json::from_str::<Value>(&compact).unwrap()).unwrap();
    let fast = fast(Encoding::Json, pretty.as_bytes(), limits).expect("pretty JSON taken");
    assert_eq!(Ok(fast), general(Encoding::Json, pretty.as_bytes(), limits));
}

/// Every length form (fix, 8-, 16- and 32-bit strings; fix and 16-bit maps and arrays) and
/// every integer form of the port, byte for byte against the general encoder.
#[test]
fn writers_match_the_general_encoder_at_every_length_boundary() {
    use agent_protocol_core::{Headers, RequestHeadersEvent, RequestMetadata};
    let text = |n: usize| "x".repeat(n);
    for (i, (port, len)) in [
        (0u16, 0usize),
        (127, 31),
        (128, 32),
        (255, 255),
        (256, 256),
        (65535, 65_536),
    ]
    .into_iter()
    .enumerate()
    {
        let mut headers = Headers::new();
        for h in 0..(15 + i) {
            for v in 0..(if h == 0 { 16 } else { 1 }) {
                headers.append(format!("h{h}"), format!("{v}\"\u{1}é"));
            }
        }
        let metadata = RequestMetadata {
            correlation_id: text(len).into(),
            client_port: port,
            traceparent: (i % 2 == 0).then(|| text(len).into()),
            server_name: Some("s\\".into()),
            ..Default::default()
        };
        let event = Event::RequestHeaders(RequestHeadersEvent::new(
            metadata,
            "GET",
            text(len),
            headers,
        ));
        for encoding in [Encoding::Json, Encoding::MsgPack] {
            let mut direct = BytesMut::new();
            encode_event(&mut direct, encoding, &event).unwrap();
            let mut general = BytesMut::new();
            encode_event_general(&mut general, encoding, &event).unwrap();
            assert!(
                direct[..] == general[..],
                "{encoding}, port {port}, length {len}"
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// The direct writers produce the general encoder's bytes, escapes, non-ASCII text, absent
    /// options and empty header lists included.
    #[test]
    fn writers_produce_the_general_encoder_s_bytes(event in request_headers()) {
        let event = Event::RequestHeaders(event);
        for encoding in [Encoding::Json, Encoding::MsgPack] {
            let mut direct = BytesMut::new();
            encode_event(&mut direct, encoding, &event).unwrap();
            let mut general = BytesMut::new();
            encode_event_general(&mut general, encoding, &event).unwrap();
            prop_assert_eq!(&direct[..], &general[..], "{}", encoding);
        }
    }

    /// Everything our proxy sends within the limits is taken, and decodes as the general
    /// decoder decodes it.
    #[test]
    fn takes_what_our_proxy_sends(event in request_headers()) {
        let event = Event::RequestHeaders(event);
        for encoding in BOTH {
            let payload = payload(encoding, &event);
            let limits = MessageLimits::default();
            let fast = fast(encoding, &payload, limits);
            prop_assert!(fast.is_some(), "{} not taken", encoding);
            prop_assert_eq!(Ok(fast.unwrap()), general(encoding, &payload, limits));
        }
    }

    /// Whatever a reader takes from damaged bytes or under tight limits decodes the same the
    /// general way; and the decoder in use decides as the general one, taken or not.
    #[test]
    fn what_it_takes_decodes_the_same_and_the_rest_is_decided_the_general_way(
        event in request_headers(),
        json in any::<bool>(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
        cut in any::<Option<prop::sample::Index>>(),
        max_elements in 0usize..64,
        max_values in 0usize..24,
        max_bytes in 0usize..600,
    ) {
        let encoding = if json { Encoding::Json } else { Encoding::MsgPack };
        let mut payload = payload(encoding, &Event::RequestHeaders(event));
        for (at, byte) in edits {
            let at = at.index(payload.len());
            payload[at] = byte;
        }
        if let Some(cut) = cut {
            payload.truncate(cut.index(payload.len() + 1));
        }
        let limits = MessageLimits::default()
            .with_max_elements(max_elements)
            .with_headers(HeaderLimits::default().with_max_count(max_values).with_max_bytes(max_bytes));
        let general = general(encoding, &payload, limits);
        if let Some(fast) = fast(encoding, &payload, limits) {
            prop_assert_eq!(Ok(fast), general.clone());
        }
        let in_use = match decode_event_with_limits(TY, encoding, &payload, limits) {
            Some(Ok(event)) => Ok(event),
            Some(Err(e)) => Err(e.to_string()),
            None => Err("not an event".into()),
        };
        prop_assert_eq!(in_use, general);
    }
}

/// The AgentResponse payload our agent writes for `response`.
fn answer_payload(encoding: Encoding, response: &AgentResponse) -> Vec<u8> {
    let mut buf = BytesMut::new();
    encode_frame(&mut buf, FrameType::AgentResponse, encoding, response).unwrap();
    buf[5..].to_vec()
}

fn general_answer(encoding: Encoding, payload: &[u8]) -> Result<AgentResponse, String> {
    decode_payload(FrameType::AgentResponse, encoding, payload).map_err(|e| e.to_string())
}

fn encoding() -> impl Strategy<Value = Encoding> {
    prop::sample::select(BOTH.to_vec())
}

/// A header operation with text that may need escaping in JSON.
fn header_op() -> impl Strategy<Value = HeaderOp> {
    let text = "\\PC{0,12}|[a-z\"\\\\\n]{0,6}";
    prop_oneof![
        (text, text).prop_map(|(name, value)| HeaderOp::Set { name, value }),
        (text, text).prop_map(|(name, value)| HeaderOp::Add { name, value }),
        text.prop_map(|name| HeaderOp::Remove { name }),
    ]
}

/// A simple allow, as agents answer nearly every event (header operations at most): the direct
/// reader takes it.
fn simple_allow() -> impl Strategy<Value = AgentResponse> {
    (
        any::<u32>(),
        any::<bool>(),
        prop::option::of("\\PC{0,40}"),
        prop::collection::vec(header_op(), 0..4),
        prop::collection::vec(header_op(), 0..3),
    )
        .prop_map(|(version, needs_more, id, request_ops, response_ops)| {
            let mut r = AgentResponse::allow();
            r.version = version;
            r.needs_more = needs_more;
            r.correlation_id = id.map(Into::into);
            r.request_headers = request_ops;
            r.response_headers = response_ops;
            r
        })
}

/// Whether JSON escapes any character of `text` (the direct JSON reader leaves such text to the
/// general decoder).
fn json_escapes(text: &str) -> bool {
    text.contains(|c: char| c == '"' || c == '\\' || c < ' ')
}

/// Whether any text of a simple allow is escaped in JSON.
fn escaped_in_json(response: &AgentResponse) -> bool {
    let op_text = |op: &HeaderOp| match op {
        HeaderOp::Set { name, value } | HeaderOp::Add { name, value } => {
            json_escapes(name) || json_escapes(value)
        }
        HeaderOp::Remove { name } => json_escapes(name),
    };
    response.correlation_id().is_some_and(json_escapes)
        || response.request_headers.iter().any(op_text)
        || response.response_headers.iter().any(op_text)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Every simple allow takes the direct reader, to the general decoder's answer.
    #[test]
    fn simple_allows_take_the_direct_answer_reader(encoding in encoding(), response in simple_allow()) {
        let payload = answer_payload(encoding, &response);
        let fast = fast_agent_response(encoding, &payload);
        // Text with a character JSON escapes is left to the general decoder.
        if encoding == Encoding::MsgPack || !escaped_in_json(&response) {
            prop_assert_eq!(fast.as_ref(), Some(&response));
        } else {
            prop_assert_eq!(fast.as_ref(), None);
        }
        prop_assert_eq!(general_answer(encoding, &payload), Ok(response));
    }

    /// Every answer, simple allow or not, is written to the bytes serde writes.
    #[test]
    fn answers_are_written_as_serde_writes_them(
        encoding in encoding(),
        response in prop_oneof![simple_allow(), agent_response()],
    ) {
        let (mut direct, mut general) = (BytesMut::new(), BytesMut::new());
        encode_response(&mut direct, encoding, &response).unwrap();
        encode_frame(&mut general, FrameType::AgentResponse, encoding, &response).unwrap();
        prop_assert_eq!(direct, general);
    }

    /// Any other answer is either left to the general decoder or read to its answer.
    #[test]
    fn other_answers_reach_the_general_decision(encoding in encoding(), response in agent_response()) {
        let payload = answer_payload(encoding, &response);
        if let Some(fast) = fast_agent_response(encoding, &payload) {
            prop_assert_eq!(Ok(fast), general_answer(encoding, &payload));
        }
    }

    /// Damaged simple allows (a byte changed, bytes cut or added): whatever the direct reader
    /// takes, the general decoder decodes to the same answer.
    #[test]
    fn damaged_answers_reach_the_general_decision(
        encoding in encoding(),
        response in simple_allow(),
        at in any::<prop::sample::Index>(),
        byte in any::<u8>(),
        edit in 0u8..3,
    ) {
        let mut payload = answer_payload(encoding, &response);
        // Up to one past the end, so a byte can also be appended.
        let i = at.index(payload.len() + 1);
        let last = payload.len() - 1;
        match edit {
            0 => payload[i.min(last)] = byte,
            1 => payload.truncate(i),
            _ => payload.insert(i, byte),
        }
        if let Some(fast) = fast_agent_response(encoding, &payload) {
            prop_assert_eq!(Ok(fast), general_answer(encoding, &payload));
        }
    }
}

/// Simple allows at every width boundary of MessagePack's integers and strings, and with ids
/// JSON escapes, are written as serde writes them and read back by the direct readers.
#[test]
fn simple_allows_at_width_boundaries_round_trip_directly() {
    let versions = [0, 127, 128, 255, 256, 65_535, 65_536, u32::MAX];
    let mut ids: Vec<Option<String>> = [0, 31, 32, 255, 256, 65_535, 65_536]
        .iter()
        .map(|&n| Some("i".repeat(n)))
        .collect();
    ids.extend([None, Some("a\"b\\c\n\u{1}\u{7f}é".to_owned())]);
    for encoding in BOTH {
        for version in versions {
            for id in &ids {
                let mut response = AgentResponse::allow();
                response.version = version;
                response.correlation_id = id.as_deref().map(Into::into);
                let (mut direct, mut general) = (BytesMut::new(), BytesMut::new());
                encode_response(&mut direct, encoding, &response).unwrap();
                encode_frame(&mut general, FrameType::AgentResponse, encoding, &response).unwrap();
                assert_eq!(direct, general, "{encoding:?} {version} {id:?}");
                let escaped = id
                    .as_deref()
                    .is_some_and(|id| id.contains(['"', '\\', '\n']));
                if !(escaped && encoding == Encoding::Json) {
                    let read = fast_agent_response(encoding, &direct[5..]);
                    assert_eq!(
                        read.as_ref(),
                        Some(&response),
                        "{encoding:?} {version} {id:?}"
                    );
                }
            }
        }
    }
}

/// Lists of header operations around MessagePack's array width boundary and the direct readers'
/// own limit: written as serde writes them; read directly up to the limit, and past it left to
/// the general decoder (which refuses a list over the element budget).
#[test]
fn header_operation_counts_around_the_direct_limit() {
    for encoding in BOTH {
        for n in [0, 1, 15, 16, 17, 32, 33, 70_000] {
            let ops: Vec<HeaderOp> = (0..n)
                .map(|i| match i % 3 {
                    0 => HeaderOp::Set {
                        name: format!("x-{i}"),
                        value: "v".into(),
                    },
                    1 => HeaderOp::Add {
                        name: "x-add".into(),
                        value: format!("{i}"),
                    },
                    _ => HeaderOp::Remove {
                        name: "cookie".into(),
                    },
                })
                .collect();
            let mut response = AgentResponse::allow().with_correlation_id("ops");
            response.request_headers = ops.clone();
            response.response_headers = ops.into_iter().take(3).collect();
            let (mut direct, mut general) = (BytesMut::new(), BytesMut::new());
            encode_response(&mut direct, encoding, &response).unwrap();
            encode_frame(&mut general, FrameType::AgentResponse, encoding, &response).unwrap();
            assert!(
                direct == general,
                "{encoding:?} {n}: the direct writer differs"
            );
            let read = fast_agent_response(encoding, &direct[5..]);
            let general = general_answer(encoding, &direct[5..]);
            if n <= 32 {
                assert!(
                    read.as_ref() == Some(&response),
                    "{encoding:?} {n}: not read"
                );
            } else {
                assert!(read.is_none(), "{encoding:?} {n}: read past the limit");
            }
            // The general decoder refuses what is over the element budget (70,000 operations).
            if n < 70_000 {
                assert!(general == Ok(response), "{encoding:?} {n}: general decoder");
            } else {
                assert!(
                    general.is_err(),
                    "{encoding:?} {n}: over the element budget"
                );
            }
        }
    }
}

/// Versions the direct JSON reader must read as the general decoder does, or leave to it.
#[test]
fn json_answer_versions_decode_as_the_general_decoder_decodes_them() {
    let allow = answer_payload(
        Encoding::Json,
        &AgentResponse::allow().with_correlation_id("v"),
    );
    let text = String::from_utf8(allow).unwrap();
    let versions = [
        "0",
        "7",
        "02",
        "4294967295",
        "4294967296",
        "-1",
        "2.0",
        "2e0",
        " 2",
        "99999999999",
    ];
    for version in versions {
        let payload = text.replacen(r#""version":2"#, &format!(r#""version":{version}"#), 1);
        let fast = fast_agent_response(Encoding::Json, payload.as_bytes());
        let general = general_answer(Encoding::Json, payload.as_bytes());
        match fast {
            Some(fast) => assert_eq!(Ok(fast), general, "{version}"),
            // Only what is not a plain u32 in canonical digits may be refused.
            None => assert!(
                general.is_err()
                    || version.starts_with(['0', '-', ' '])
                    || version.contains(['.', 'e']),
                "{version}: a plain version the reader refused"
            ),
        }
    }
}

/// The answer a proxy hands on carries the caller's own id (the bytes of the event's id), not a
/// slice of the frame it was read from: keeping an answer never keeps the transport's buffer.
#[test]
fn answers_carry_the_caller_s_id_not_the_frame_s() {
    for encoding in BOTH {
        let now = std::time::Instant::now();
        let mut proxy = FramedProxy::open(ProxyConfig::default(), encoding, now);
        let event = agent_protocol_core::RequestHeadersEvent::new(
            agent_protocol_core::RequestMetadata {
                correlation_id: "answer-id".into(),
                ..Default::default()
            },
            "GET",
            "/",
            agent_protocol_core::Headers::new(),
        );
        let sent_id = event.metadata.correlation_id.clone();
        proxy
            .send_event(now, Event::RequestHeaders(event), None)
            .unwrap();
        let mut answer = BytesMut::new();
        let allow = AgentResponse::allow().with_correlation_id("answer-id");
        encode_response(&mut answer, encoding, &allow).unwrap();
        proxy.handle_input(now, &answer);
        let delivered = std::iter::from_fn(|| proxy.conn.poll_event())
            .find_map(|e| match e {
                ProxyEvent::Response { response, .. } => Some(response),
                _ => None,
            })
            .expect("the answer is delivered");
        let id = delivered.correlation_id().expect("routing id");
        assert_eq!(id, "answer-id");
        assert_eq!(
            id.as_ptr(),
            sent_id.as_ptr(),
            "{encoding:?}: the frame's copy of the id"
        );
    }
}
