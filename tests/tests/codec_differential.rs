//! MessagePack decides exactly as JSON does.
//!
//! Every event and every AgentResponse is turned into a logical tree, mutated the way a hostile
//! or broken peer would (a key repeated with the same or another value, `nil` anywhere, a header
//! name repeated, a header value given as a lone string, a struct given as a positional array,
//! a field dropped or of the wrong type, the reference's repeated top-level `correlation_id`),
//! written in both encodings, and decoded by both decoders: they must both refuse it, or both
//! accept it with equal values. Under tight header limits too, where both must stop at the limit.

use agent_protocol_core::encoding::{decode_event, encode_event, encode_frame};
use agent_protocol_core::frame::FrameType;
use agent_protocol_core::limits::HeaderLimits;
use agent_protocol_core::{Encoding, Event};
use agent_protocol_tests::differential::{
    decide_event, decide_response, Decision, Logical, Mutation,
};
use agent_protocol_tests::strategies::{agent_response, any_event};
use bytes::BytesMut;
use proptest::prelude::*;

fn mutation() -> impl Strategy<Value = Mutation> {
    let i = || any::<usize>();
    prop_oneof![
        3 => (i(), i(), any::<bool>()).prop_map(|(map, entry, same)| Mutation::RepeatKey { map, entry, same }),
        1 => any::<bool>().prop_map(|same| Mutation::RepeatTopId { same }),
        2 => i().prop_map(|node| Mutation::Nil { node }),
        1 => (i(), i()).prop_map(|(map, entry)| Mutation::Drop { map, entry }),
        1 => i().prop_map(|array| Mutation::Unwrap { array }),
        1 => i().prop_map(|map| Mutation::ToArray { map }),
        1 => (i(), any::<u8>()).prop_map(|(node, to)| Mutation::Retype { node, to }),
    ]
}

fn logical_event(event: &Event) -> Logical {
    let mut out = BytesMut::new();
    encode_event(&mut out, Encoding::Json, event).expect("encodes");
    Logical::from_json(&out[5..]).expect("our JSON")
}

const TIGHT: HeaderLimits = HeaderLimits {
    max_count: 3,
    max_bytes: 48,
};

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    #[test]
    fn events_decode_the_same_in_both_encodings(
        event in any_event(),
        mutations in prop::collection::vec(mutation(), 0..4),
    ) {
        let frame_type = event.frame_type();
        let mut message = logical_event(&event);
        // Untouched, both accept it as the event itself: the comparison is not vacuous.
        if let Decision::Accepted(back) =
            decide_event(frame_type, &message, &HeaderLimits::UNLIMITED).unwrap()
        {
            prop_assert_eq!(back, event);
        } else {
            prop_assert!(false, "an untouched event was refused");
        }
        for m in &mutations {
            m.apply(&mut message);
        }
        for limits in [HeaderLimits::default(), TIGHT] {
            if let Err(mismatch) = decide_event(frame_type, &message, &limits) {
                prop_assert!(false, "{frame_type:?} {mutations:?}\n{}\n{}", mismatch.json, mismatch.detail);
            }
        }
    }

    #[test]
    fn agent_responses_decode_the_same_in_both_encodings(
        response in agent_response(),
        mutations in prop::collection::vec(mutation(), 0..4),
    ) {
        let mut out = BytesMut::new();
        encode_frame(&mut out, FrameType::AgentResponse, Encoding::Json, &response).unwrap();
        let mut message = Logical::from_json(&out[5..]).unwrap();
        prop_assert_eq!(decide_response(&message).unwrap(), Decision::Accepted(response));
        for m in &mutations {
            m.apply(&mut message);
        }
        if let Err(mismatch) = decide_response(&message) {
            prop_assert!(false, "{mutations:?}\n{}\n{}", mismatch.json, mismatch.detail);
        }
    }
}

// ----- the cases that used to decide differently ------------------------------------------

fn map(entries: &[(&str, Logical)]) -> Logical {
    Logical::Map(
        entries
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
    )
}

fn s(v: &str) -> Logical {
    Logical::Str(v.into())
}

fn response_headers(headers: Logical) -> Logical {
    map(&[
        ("correlation_id", s("c1")),
        ("status", Logical::UInt(200)),
        ("headers", headers),
    ])
}

#[test]
fn a_repeated_header_name_merges_its_values_in_both_encodings() {
    // A rule on the second value must fire whatever the encoding.
    let message = response_headers(map(&[
        ("x-role", Logical::Array(vec![s("user")])),
        ("x-role", Logical::Array(vec![s("admin")])),
    ]));
    let Decision::Accepted(Event::ResponseHeaders(e)) = decide_event(
        FrameType::ResponseHeaders,
        &message,
        &HeaderLimits::default(),
    )
    .unwrap() else {
        panic!("both should accept it")
    };
    assert_eq!(
        e.headers.get("x-role").unwrap().as_slice(),
        ["user", "admin"]
    );
}

#[test]
fn a_field_repeated_with_another_value_is_refused_in_both_encodings() {
    let message = map(&[
        ("correlation_id", s("c1")),
        ("status", Logical::UInt(200)),
        ("status", Logical::UInt(403)),
        ("headers", map(&[])),
    ]);
    assert_eq!(
        decide_event(
            FrameType::ResponseHeaders,
            &message,
            &HeaderLimits::default()
        )
        .unwrap(),
        Decision::Refused { limit: false }
    );
}

#[test]
fn nil_where_a_map_is_required_is_refused_in_both_encodings() {
    let message = response_headers(Logical::Nil);
    assert_eq!(
        decide_event(
            FrameType::ResponseHeaders,
            &message,
            &HeaderLimits::default()
        )
        .unwrap(),
        Decision::Refused { limit: false }
    );
}

#[test]
fn the_reference_repeated_correlation_id_is_accepted_only_when_identical() {
    let same = map(&[
        ("correlation_id", s("c1")),
        ("correlation_id", s("c1")),
        ("status", Logical::UInt(200)),
        ("headers", map(&[])),
    ]);
    let limits = HeaderLimits::default();
    assert!(matches!(
        decide_event(FrameType::ResponseHeaders, &same, &limits).unwrap(),
        Decision::Accepted(e) if e.correlation_id() == "c1"
    ));
    let differ = map(&[
        ("correlation_id", s("c1")),
        ("correlation_id", s("c2")),
        ("status", Logical::UInt(200)),
        ("headers", map(&[])),
    ]);
    assert_eq!(
        decide_event(FrameType::ResponseHeaders, &differ, &limits).unwrap(),
        Decision::Refused { limit: false }
    );
    // Only at the top level: nested, a repeated field is refused as any other.
    let nested = map(&[
        ("correlation_id", s("c1")),
        (
            "metadata",
            map(&[("correlation_id", s("c1")), ("correlation_id", s("c1"))]),
        ),
    ]);
    assert_eq!(
        decide_event(FrameType::RequestHeaders, &nested, &limits).unwrap(),
        Decision::Refused { limit: false }
    );
}

#[test]
fn header_limits_stop_both_decoders() {
    let many: Vec<(String, Logical)> = (0..10)
        .map(|i| (format!("h{i}"), Logical::Array(vec![s("v")])))
        .collect();
    let message = response_headers(Logical::Map(many));
    assert_eq!(
        decide_event(FrameType::ResponseHeaders, &message, &TIGHT).unwrap(),
        Decision::Refused { limit: true }
    );
    assert!(matches!(
        decide_event(
            FrameType::ResponseHeaders,
            &message,
            &HeaderLimits::default()
        )
        .unwrap(),
        Decision::Accepted(_)
    ));
}

#[test]
fn the_differential_model_reads_our_own_msgpack_back() {
    let message = response_headers(map(&[("a", Logical::Array(vec![s("1")]))]));
    assert_eq!(
        Logical::from_msgpack(&message.to_msgpack()).as_ref(),
        Some(&message)
    );
    // bin outside a body key has no JSON twin.
    let mut odd = Vec::new();
    rmp::encode::write_map_len(&mut odd, 1).unwrap();
    rmp::encode::write_str(&mut odd, "uri").unwrap();
    rmp::encode::write_bin(&mut odd, b"/").unwrap();
    assert_eq!(Logical::from_msgpack(&odd), None);
    // decode_event is the path the agent uses.
    let json = message.to_json();
    assert!(
        decode_event(FrameType::ResponseHeaders, Encoding::Json, &json)
            .unwrap()
            .is_ok()
    );
}
