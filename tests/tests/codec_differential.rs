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
use agent_protocol_tests::differential::{decide_event, decide_response, Decision, Logical};
use agent_protocol_tests::strategies::{agent_response, any_event};
use bytes::BytesMut;
use proptest::prelude::*;

/// One change to a logical message. Indices pick a node (or a map, or an entry) modulo the
/// number there is, so every generated mutation applies somewhere.
#[derive(Clone, Debug)]
enum Mutation {
    /// Repeat a map entry right after itself, with the same value or a different one.
    RepeatKey {
        map: usize,
        entry: usize,
        same: bool,
    },
    /// Repeat the top-level `correlation_id` (the reference proxy's shape when `same`).
    RepeatTopId { same: bool },
    /// Replace a node with `nil`.
    Nil { node: usize },
    /// Remove a map entry.
    Drop { map: usize, entry: usize },
    /// Replace an array with its first element (a header value list becomes a lone string).
    Unwrap { array: usize },
    /// Replace a map with the array of its values (a struct by position).
    ToArray { map: usize },
    /// Replace a node with a value of another type.
    Retype { node: usize, to: u8 },
}

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

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Any,
    Map,
    Array,
}

fn matches(kind: Kind, node: &Logical) -> bool {
    match kind {
        Kind::Any => true,
        Kind::Map => matches!(node, Logical::Map(_)),
        Kind::Array => matches!(node, Logical::Array(_)),
    }
}

fn count(node: &Logical, kind: Kind) -> usize {
    let own = usize::from(matches(kind, node));
    own + match node {
        Logical::Array(items) => items.iter().map(|n| count(n, kind)).sum(),
        Logical::Map(entries) => entries.iter().map(|(_, n)| count(n, kind)).sum(),
        _ => 0,
    }
}

/// Applies `f` to the `target`-th node of `kind` in pre-order.
fn visit(node: &mut Logical, kind: Kind, target: &mut usize, f: &mut dyn FnMut(&mut Logical)) {
    if matches(kind, node) {
        if *target == 0 {
            f(node);
            *target = usize::MAX;
            return;
        }
        *target -= 1;
    }
    match node {
        Logical::Array(items) => {
            for n in items {
                visit(n, kind, target, f);
            }
        }
        Logical::Map(entries) => {
            for (_, n) in entries {
                visit(n, kind, target, f);
            }
        }
        _ => {}
    }
}

fn at(root: &mut Logical, kind: Kind, index: usize, mut f: impl FnMut(&mut Logical)) {
    let n = count(root, kind);
    if n > 0 {
        let mut target = index % n;
        visit(root, kind, &mut target, &mut f);
    }
}

/// A value of the same type that differs from `v`.
fn differ(v: &Logical) -> Logical {
    match v {
        Logical::Nil => Logical::Str("x".into()),
        Logical::Bool(b) => Logical::Bool(!b),
        Logical::UInt(u) => Logical::UInt(u ^ 1),
        Logical::Int(i) => Logical::Int(i.saturating_sub(1)),
        Logical::Float(f) => Logical::Float(f + 1.0),
        Logical::Str(s) => Logical::Str(format!("{s}x")),
        Logical::Bytes(b) => Logical::Bytes([b.as_slice(), b"x"].concat()),
        Logical::Array(items) => Logical::Array([items.as_slice(), &[Logical::Nil]].concat()),
        Logical::Map(entries) => {
            let mut entries = entries.clone();
            entries.push(("zz".into(), Logical::Nil));
            Logical::Map(entries)
        }
    }
}

fn apply(root: &mut Logical, m: &Mutation) {
    match *m {
        Mutation::RepeatKey { map, entry, same } => at(root, Kind::Map, map, |node| {
            if let Logical::Map(entries) = node {
                if !entries.is_empty() {
                    let i = entry % entries.len();
                    let (k, v) = entries[i].clone();
                    let v = if same { v } else { differ(&v) };
                    entries.insert(i + 1, (k, v));
                }
            }
        }),
        Mutation::RepeatTopId { same } => {
            if let Logical::Map(entries) = root {
                let id = entries
                    .iter()
                    .find(|(k, _)| k == "correlation_id")
                    .map(|(_, v)| v.clone())
                    .unwrap_or(Logical::Str("c".into()));
                let id = if same { id } else { differ(&id) };
                entries.insert(0, ("correlation_id".into(), id));
            }
        }
        Mutation::Nil { node } => at(root, Kind::Any, node, |n| *n = Logical::Nil),
        Mutation::Drop { map, entry } => at(root, Kind::Map, map, |node| {
            if let Logical::Map(entries) = node {
                if !entries.is_empty() {
                    let i = entry % entries.len();
                    entries.remove(i);
                }
            }
        }),
        Mutation::Unwrap { array } => at(root, Kind::Array, array, |node| {
            if let Logical::Array(items) = node {
                if let Some(first) = items.first().cloned() {
                    *node = first;
                }
            }
        }),
        Mutation::ToArray { map } => at(root, Kind::Map, map, |node| {
            if let Logical::Map(entries) = node {
                *node = Logical::Array(entries.iter().map(|(_, v)| v.clone()).collect());
            }
        }),
        Mutation::Retype { node, to } => at(root, Kind::Any, node, |n| {
            *n = match to % 6 {
                0 => Logical::Bool(true),
                1 => Logical::UInt(7),
                2 => Logical::Int(-7),
                3 => Logical::Str("7".into()),
                4 => Logical::Array(vec![]),
                _ => Logical::Map(vec![]),
            }
        }),
    }
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
            apply(&mut message, m);
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
            apply(&mut message, m);
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
