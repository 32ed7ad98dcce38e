//! MessagePack decides exactly as JSON does (see `agent_protocol_tests::differential`): a
//! logical message, written in both encodings, is refused by both decoders or accepted by both
//! with equal values, as an event of every type (under default and tight header limits and
//! element budgets) and as an AgentResponse (under the default and a tight element budget). Both
//! element scans must also count the tree's own elements.
//!
//! The message is one of a few valid events and answers mutated by fuzzer-chosen mutations
//! (repeated keys, nils, dropped and retyped fields, positional arrays, ...), or, for the rest
//! of the input space, any MessagePack value that has a faithful JSON twin.
#![no_main]

use agent_protocol_core::encoding::{encode_event, encode_frame};
use agent_protocol_core::frame::FrameType;
use agent_protocol_core::limits::{HeaderLimits, MessageLimits, DEFAULT_MAX_ELEMENTS};
use agent_protocol_core::*;
use agent_protocol_tests::differential::{decide_event, decide_response_within, Logical, Mutation};
use bytes::{Bytes, BytesMut};
use libfuzzer_sys::arbitrary::{self, Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;

const EVENT_TYPES: [FrameType; 8] = [
    FrameType::RequestHeaders,
    FrameType::RequestBodyChunk,
    FrameType::ResponseHeaders,
    FrameType::ResponseBodyChunk,
    FrameType::RequestComplete,
    FrameType::WebSocketFrame,
    FrameType::GuardrailInspect,
    FrameType::Configure,
];

const TIGHT: HeaderLimits = HeaderLimits::UNLIMITED.with_max_count(3).with_max_bytes(48);

/// Element budgets the templates straddle, so that mutations push them either way: the event
/// templates have 21 (RequestHeaders), 6 (RequestBodyChunk) and 8 (ResponseHeaders) elements,
/// the answer 24.
const TIGHT_ELEMENTS: usize = 8;
const TIGHT_RESPONSE_ELEMENTS: usize = 24;

const LIMITS: [MessageLimits; 3] = [
    MessageLimits::UNLIMITED.with_headers(TIGHT),
    MessageLimits::UNLIMITED.with_max_elements(TIGHT_ELEMENTS),
    MessageLimits::UNLIMITED
        .with_headers(TIGHT)
        .with_max_elements(TIGHT_ELEMENTS),
];

fn templates() -> Vec<Logical> {
    let headers: Headers = [
        ("host", "a.example"),
        ("x-role", "user"),
        ("x-role", "admin"),
    ]
    .into_iter()
    .collect();
    let meta = RequestMetadata {
        correlation_id: "c1".into(),
        request_id: "r1".into(),
        client_ip: "10.0.0.1".into(),
        client_port: 4000,
        ..Default::default()
    };
    let chunk = BodyChunk {
        correlation_id: "c1".into(),
        data: Bytes::from_static(b"user=alice"),
        is_last: true,
        total_size: Some(10),
        chunk_index: 0,
        bytes_transferred: 10,
    };
    let events = [
        Event::RequestHeaders(RequestHeadersEvent::new(
            meta,
            "GET",
            "/admin",
            headers.clone(),
        )),
        Event::RequestBodyChunk(RequestBodyChunkEvent(chunk)),
        Event::ResponseHeaders(ResponseHeadersEvent {
            correlation_id: "c1".into(),
            status: 200,
            headers,
        }),
    ];
    let mut out: Vec<Logical> = events
        .iter()
        .map(|event| {
            let mut wire = BytesMut::new();
            encode_event(&mut wire, Encoding::Json, event).unwrap();
            Logical::from_json(&wire[5..]).unwrap()
        })
        .collect();
    let mut answer = AgentResponse::block(403, "no");
    answer.request_headers.push(HeaderOp::Set {
        name: "x-waf".into(),
        value: "1".into(),
    });
    answer.set_correlation_id("c1");
    let mut wire = BytesMut::new();
    encode_frame(&mut wire, FrameType::AgentResponse, Encoding::Json, &answer).unwrap();
    out.push(Logical::from_json(&wire[5..]).unwrap());
    out
}

/// The message to compare and the frame type to read it as.
struct Case {
    message: Logical,
    frame_type: FrameType,
}

impl<'a> Arbitrary<'a> for Case {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        let frame_type = EVENT_TYPES[u.choose_index(EVENT_TYPES.len())?];
        let message = if u.ratio(7, 8)? {
            let templates = templates();
            let mut message = templates[u.choose_index(templates.len())?].clone();
            for _ in 0..u.int_in_range(0..=6u8)? {
                let m = Mutation::from_parts(
                    u.arbitrary()?,
                    u.arbitrary()?,
                    u.arbitrary()?,
                    u.arbitrary()?,
                );
                m.apply(&mut message);
            }
            message
        } else {
            let rest = u.bytes(u.len())?;
            Logical::from_msgpack(rest).ok_or(arbitrary::Error::IncorrectFormat)?
        };
        Ok(Case {
            message,
            frame_type,
        })
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(case) = Case::arbitrary(&mut Unstructured::new(data)) else {
        return;
    };
    let limits = [MessageLimits::default()].into_iter().chain(LIMITS);
    for limits in limits {
        if let Err(m) = decide_event(case.frame_type, &case.message, limits) {
            panic!(
                "{:?} decided two ways\n{}\n{}",
                case.frame_type, m.json, m.detail
            );
        }
    }
    for max_elements in [DEFAULT_MAX_ELEMENTS, TIGHT_RESPONSE_ELEMENTS] {
        if let Err(m) = decide_response_within(&case.message, max_elements) {
            panic!("AgentResponse decided two ways\n{}\n{}", m.json, m.detail);
        }
    }
});
