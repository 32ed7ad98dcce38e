//! MessagePack decides exactly as JSON does.
//!
//! Every event and every AgentResponse is turned into a logical tree, mutated the way a hostile
//! or broken peer would (a key repeated with the same or another value, `nil` anywhere, a header
//! name repeated, a header value given as a lone string, a struct given as a positional array,
//! a field dropped or of the wrong type, the reference's repeated top-level `correlation_id`),
//! written in both encodings, and decoded by both decoders: they must both refuse it, or both
//! accept it with equal values. Under tight header limits and a tight element budget too, where
//! both must stop at the same limit (and both element scans must count the tree's elements).

use agent_protocol_core::encoding::{decode_event, encode_event, encode_frame};
use agent_protocol_core::frame::FrameType;
use agent_protocol_core::limits::{HeaderLimits, LimitExceeded, MessageLimits};
use agent_protocol_core::{Encoding, Event};
use agent_protocol_tests::differential::{
    decide_event, decide_response, decide_response_within, Decision, Logical, Mutation,
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

const TIGHT: HeaderLimits = HeaderLimits::UNLIMITED.with_max_count(3).with_max_bytes(48);

/// Element budgets near the median of the generated events (7 elements; 90% have at most 20)
/// and answers (40; 31 to 49 for 80% of them), so that about half are refused.
const TIGHT_EVENT_ELEMENTS: usize = 8;
const TIGHT_RESPONSE_ELEMENTS: usize = 40;

/// Every set of limits the generated messages are decided under.
fn all_limits() -> [MessageLimits; 4] {
    [
        MessageLimits::default(),
        MessageLimits::from(TIGHT),
        MessageLimits::default().with_max_elements(TIGHT_EVENT_ELEMENTS),
        MessageLimits::default()
            .with_headers(TIGHT)
            .with_max_elements(TIGHT_EVENT_ELEMENTS),
    ]
}

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
            decide_event(frame_type, &message, MessageLimits::UNLIMITED).unwrap()
        {
            prop_assert_eq!(back, event);
        } else {
            prop_assert!(false, "an untouched event was refused");
        }
        for m in &mutations {
            m.apply(&mut message);
        }
        for limits in all_limits() {
            if let Err(mismatch) = decide_event(frame_type, &message, limits) {
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
        for max_elements in [usize::MAX, TIGHT_RESPONSE_ELEMENTS] {
            if let Err(mismatch) = decide_response_within(&message, max_elements) {
                prop_assert!(false, "{mutations:?}\n{}\n{}", mismatch.json, mismatch.detail);
            }
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
        HeaderLimits::default(),
    )
    .unwrap() else {
        panic!("both should accept it")
    };
    assert_eq!(
        e.headers.get("x-role").unwrap().collect::<Vec<_>>(),
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
            HeaderLimits::default()
        )
        .unwrap(),
        Decision::Refused { limit: None }
    );
}

#[test]
fn nil_where_a_map_is_required_is_refused_in_both_encodings() {
    let message = response_headers(Logical::Nil);
    assert_eq!(
        decide_event(
            FrameType::ResponseHeaders,
            &message,
            HeaderLimits::default()
        )
        .unwrap(),
        Decision::Refused { limit: None }
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
        decide_event(FrameType::ResponseHeaders, &same, limits).unwrap(),
        Decision::Accepted(e) if e.correlation_id() == "c1"
    ));
    let differ = map(&[
        ("correlation_id", s("c1")),
        ("correlation_id", s("c2")),
        ("status", Logical::UInt(200)),
        ("headers", map(&[])),
    ]);
    assert_eq!(
        decide_event(FrameType::ResponseHeaders, &differ, limits).unwrap(),
        Decision::Refused { limit: None }
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
        decide_event(FrameType::RequestHeaders, &nested, limits).unwrap(),
        Decision::Refused { limit: None }
    );
}

#[test]
fn header_limits_stop_both_decoders() {
    let many: Vec<(String, Logical)> = (0..10)
        .map(|i| (format!("h{i}"), Logical::Array(vec![s("v")])))
        .collect();
    let message = response_headers(Logical::Map(many));
    assert_eq!(
        decide_event(FrameType::ResponseHeaders, &message, TIGHT).unwrap(),
        Decision::Refused {
            limit: Some(LimitExceeded::HeaderCount { max: 3 })
        }
    );
    assert!(matches!(
        decide_event(
            FrameType::ResponseHeaders,
            &message,
            HeaderLimits::default()
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

#[test]
fn the_element_budget_stops_both_decoders_at_the_same_count() {
    // 3 top-level entries, 10 header names, 10 values: 23 elements.
    let many: Vec<(String, Logical)> = (0..10)
        .map(|i| (format!("h{i}"), Logical::Array(vec![s("v")])))
        .collect();
    let message = response_headers(Logical::Map(many));
    assert_eq!(message.elements(), 23);
    let budget = |max_elements| MessageLimits::default().with_max_elements(max_elements);
    assert_eq!(
        decide_event(FrameType::ResponseHeaders, &message, budget(22)).unwrap(),
        Decision::Refused {
            limit: Some(LimitExceeded::Elements { max: 22 })
        }
    );
    assert!(matches!(
        decide_event(FrameType::ResponseHeaders, &message, budget(23)).unwrap(),
        Decision::Accepted(_)
    ));
    // Checked before decoding: over the budget, a message that would be refused anyway (a
    // repeated field) is refused for the budget, in both encodings alike.
    let mut broken = message.clone();
    if let Logical::Map(entries) = &mut broken {
        entries.push(("status".into(), Logical::UInt(403)));
    }
    assert_eq!(
        decide_event(FrameType::ResponseHeaders, &broken, budget(22)).unwrap(),
        Decision::Refused {
            limit: Some(LimitExceeded::Elements { max: 22 })
        }
    );
    assert_eq!(
        decide_event(FrameType::ResponseHeaders, &broken, budget(24)).unwrap(),
        Decision::Refused { limit: None }
    );
}

#[test]
fn the_element_budget_applies_to_agent_responses_in_both_encodings() {
    let tags = Logical::Array((0..5).map(|i| s(&format!("t{i}"))).collect());
    let message = map(&[
        ("version", Logical::UInt(2)),
        ("decision", s("allow")),
        ("audit", map(&[("tags", tags)])),
    ]);
    // 3 top-level entries, 1 in audit, 5 tags.
    assert_eq!(message.elements(), 9);
    assert_eq!(
        decide_response_within(&message, 8).unwrap(),
        Decision::Refused {
            limit: Some(LimitExceeded::Elements { max: 8 })
        }
    );
    assert!(matches!(
        decide_response_within(&message, 9).unwrap(),
        Decision::Accepted(_)
    ));
}
