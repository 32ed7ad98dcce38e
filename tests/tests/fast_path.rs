//! The direct RequestHeaders writers and the MessagePack RequestHeaders reader against the
//! general (serde) encoder and decoder.
//!
//! The writers must produce the general encoder's bytes exactly, in both encodings.
//!
//! The fast path must take what our proxy and the reference send, decode it to the event the
//! general decoder gives, and leave everything else (malformed bytes, other shapes, limits
//! reached) to the general decoder, so that the decoder in use always reaches the general
//! decoder's decision. The fuzz targets check the same on arbitrary bytes.

use agent_protocol_core::encoding::{decode_event_with_limits, encode_event};
use agent_protocol_core::frame::FrameType;
use agent_protocol_core::limits::{HeaderLimits, MessageLimits};
use agent_protocol_core::testing::{
    decode_event_general, encode_event_general, fast_request_headers,
};
use agent_protocol_core::{Encoding, Event};
use agent_protocol_tests::strategies::request_headers;
use bytes::BytesMut;
use proptest::prelude::*;
use serde_json::Value;

const VECTORS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/vectors/vectors.jsonl");
const TY: FrameType = FrameType::RequestHeaders;

/// The MessagePack payload of `event` as our proxy encodes it (frame header stripped).
fn payload(event: &Event) -> Vec<u8> {
    let mut buf = BytesMut::new();
    encode_event(&mut buf, Encoding::MsgPack, event).unwrap();
    buf[5..].to_vec()
}

/// The fast path's event, normalised as the decoder in use normalises it.
fn fast(payload: &[u8], limits: MessageLimits) -> Option<Event> {
    let mut event = Event::RequestHeaders(fast_request_headers(payload, limits)?);
    event.normalize();
    Some(event)
}

fn general(payload: &[u8], limits: MessageLimits) -> Result<Event, String> {
    match decode_event_general(TY, Encoding::MsgPack, payload, limits) {
        Some(Ok(event)) => Ok(event),
        Some(Err(e)) => Err(e.to_string()),
        None => Err("not an event".into()),
    }
}

#[test]
fn the_reference_s_payload_takes_the_fast_path() {
    let text = std::fs::read_to_string(VECTORS).unwrap();
    let mut taken = 0;
    for line in text.lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        if v["encoding"] != "msgpack" || v["type_byte"] != "0x10" {
            continue;
        }
        let hex = v["frame_hex"].as_str().unwrap();
        let frame: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        let payload = &frame[5..];
        let limits = MessageLimits::default();
        let fast = fast(payload, limits).unwrap_or_else(|| panic!("{}: not taken", v["name"]));
        assert_eq!(Ok(fast), general(payload, limits), "{}", v["name"]);
        taken += 1;
    }
    assert!(taken > 0, "no MessagePack RequestHeaders vector found");
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
        let payload = payload(&Event::RequestHeaders(event));
        let limits = MessageLimits::default();
        let fast = fast(&payload, limits);
        prop_assert!(fast.is_some(), "not taken");
        prop_assert_eq!(Ok(fast.unwrap()), general(&payload, limits));
    }

    /// Whatever the fast path takes from damaged bytes or under tight limits decodes the same
    /// the general way; and the decoder in use decides as the general one, taken or not.
    #[test]
    fn what_it_takes_decodes_the_same_and_the_rest_is_decided_the_general_way(
        event in request_headers(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
        cut in any::<Option<prop::sample::Index>>(),
        max_elements in 0usize..64,
        max_values in 0usize..24,
        max_bytes in 0usize..600,
    ) {
        let mut payload = payload(&Event::RequestHeaders(event));
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
        let general = general(&payload, limits);
        if let Some(fast) = fast(&payload, limits) {
            prop_assert_eq!(Ok(fast), general.clone());
        }
        let in_use = match decode_event_with_limits(TY, Encoding::MsgPack, &payload, limits) {
            Some(Ok(event)) => Ok(event),
            Some(Err(e)) => Err(e.to_string()),
            None => Err("not an event".into()),
        };
        prop_assert_eq!(in_use, general);
    }
}
