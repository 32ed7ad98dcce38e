//! Differential decoding: one logical message, written in JSON and in MessagePack, must get the
//! same decision from both decoders: both refuse it, or both accept it and produce equal values.
//!
//! A [`Logical`] is a message as a tree, before any encoding: maps are lists of entries, so a key
//! can repeat, and `nil` can stand anywhere. [`Logical::to_json`] and [`Logical::to_msgpack`]
//! write it faithfully (repeated keys and all), body bytes as base64 text in JSON and as `bin`
//! in MessagePack, as the protocol carries them. [`decide_event`] and [`decide_response`]
//! decode both and compare.
//!
//! The property test (`tests/codec_differential.rs`) builds logical messages from valid ones and
//! mutates them (repeated keys with equal or different values, nils, repeated header names,
//! single-string header values, positional arrays, dropped and retyped fields); the fuzz target
//! (`fuzz/fuzz_targets/codec_differential.rs`) mutates them with fuzzer-chosen [`Mutation`]s and
//! also reads them from arbitrary MessagePack.

use std::fmt::Write as _;

use agent_protocol_core::element_count::count_elements;
use agent_protocol_core::encoding::{
    decode_event_with_limits, decode_payload_with_budget, effective_encoding, DecodeError,
};
use agent_protocol_core::frame::FrameType;
use agent_protocol_core::limits::{LimitExceeded, MessageLimits, DEFAULT_MAX_ELEMENTS};
use agent_protocol_core::{AgentResponse, Encoding, Event};
use base64::Engine;

/// Deepest tree [`Logical::from_msgpack`] builds. Both decoders refuse far deeper input, but not
/// at exactly the same depth (serde_json counts its recursion its own way), so the comparison
/// stays below both limits.
pub const MAX_LOGICAL_DEPTH: usize = 48;

/// A message before encoding.
#[derive(Clone, Debug, PartialEq)]
pub enum Logical {
    /// `null` / `nil`.
    Nil,
    /// A boolean.
    Bool(bool),
    /// A non-negative integer.
    UInt(u64),
    /// A negative integer.
    Int(i64),
    /// A finite float.
    Float(f64),
    /// Text.
    Str(String),
    /// Body bytes: base64 text in JSON, `bin` in MessagePack.
    Bytes(Vec<u8>),
    /// An array.
    Array(Vec<Logical>),
    /// A map, entries in order; keys may repeat.
    Map(Vec<(String, Logical)>),
}

/// Map keys whose values are body bytes (base64 in JSON, `bin` in MessagePack).
const BODY_KEYS: &[&str] = &["data"];

impl Logical {
    /// The logical form of a JSON document, keys in order and repeated as they are; strings
    /// under body keys are base64 and become [`Logical::Bytes`].
    pub fn from_json(json: &[u8]) -> Result<Logical, serde_json::Error> {
        let mut value: Logical = serde_json::from_slice(json)?;
        value.decode_bodies(None);
        Ok(value)
    }

    fn decode_bodies(&mut self, key: Option<&str>) {
        match self {
            Logical::Str(s) if key.is_some_and(|k| BODY_KEYS.contains(&k)) => {
                if let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(s.as_bytes()) {
                    *self = Logical::Bytes(bytes);
                }
            }
            Logical::Array(items) => items.iter_mut().for_each(|v| v.decode_bodies(None)),
            Logical::Map(entries) => entries
                .iter_mut()
                .for_each(|(k, v)| v.decode_bodies(Some(k))),
            _ => {}
        }
    }

    /// Reads one MessagePack value as a logical tree, or `None` if it has no faithful JSON twin
    /// (an ext, a non-string key, text that is not UTF-8, `bin` outside a body key, a float that
    /// is not finite, nesting deeper than [`MAX_LOGICAL_DEPTH`], trailing bytes).
    pub fn from_msgpack(mut input: &[u8]) -> Option<Logical> {
        let value = read_msgpack(&mut input, None, 0)?;
        input.is_empty().then_some(value)
    }

    /// Whether the two encodings can say the same thing: body bytes only where a body goes (under
    /// a body key, or in the data slot of a positional body chunk). Elsewhere a MessagePack `bin`
    /// is read as the text it holds while its JSON twin would be base64 text: two different
    /// messages, not one message in two encodings.
    pub fn has_json_twin(&self) -> bool {
        fn walk(node: &Logical, body_slot: bool) -> bool {
            match node {
                Logical::Bytes(_) => body_slot,
                Logical::Array(items) => items.iter().all(|v| walk(v, false)),
                Logical::Map(entries) => entries
                    .iter()
                    .all(|(k, v)| walk(v, BODY_KEYS.contains(&k.as_str()))),
                _ => true,
            }
        }
        match self {
            // A positional body chunk: [correlation_id, data, is_last, ...].
            Logical::Array(items) => items.iter().enumerate().all(|(i, v)| walk(v, i == 1)),
            other => walk(other, false),
        }
    }

    /// Array items plus map entries in this tree, at any depth: what the element budget counts.
    pub fn elements(&self) -> usize {
        match self {
            Logical::Array(items) => {
                items.len() + items.iter().map(Logical::elements).sum::<usize>()
            }
            Logical::Map(entries) => {
                entries.len() + entries.iter().map(|(_, v)| v.elements()).sum::<usize>()
            }
            _ => 0,
        }
    }

    /// The JSON text of this tree, keys repeated as they are.
    pub fn to_json(&self) -> Vec<u8> {
        let mut out = String::new();
        self.write_json(&mut out);
        out.into_bytes()
    }

    fn write_json(&self, out: &mut String) {
        match self {
            Logical::Nil => out.push_str("null"),
            Logical::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Logical::UInt(u) => write!(out, "{u}").unwrap(),
            Logical::Int(i) => write!(out, "{i}").unwrap(),
            Logical::Float(f) => out.push_str(&serde_json::to_string(f).unwrap()),
            Logical::Str(s) => out.push_str(&serde_json::to_string(s).unwrap()),
            Logical::Bytes(b) => {
                let text = base64::engine::general_purpose::STANDARD.encode(b);
                out.push_str(&serde_json::to_string(&text).unwrap());
            }
            Logical::Array(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    item.write_json(out);
                }
                out.push(']');
            }
            Logical::Map(entries) => {
                out.push('{');
                for (i, (k, v)) in entries.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&serde_json::to_string(k).unwrap());
                    out.push(':');
                    v.write_json(out);
                }
                out.push('}');
            }
        }
    }

    /// The MessagePack bytes of this tree, keys repeated as they are.
    pub fn to_msgpack(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_msgpack(&mut out);
        out
    }

    fn write_msgpack(&self, out: &mut Vec<u8>) {
        use rmp::encode;
        match self {
            Logical::Nil => encode::write_nil(out).unwrap(),
            Logical::Bool(b) => encode::write_bool(out, *b).unwrap(),
            Logical::UInt(u) => {
                encode::write_uint(out, *u).unwrap();
            }
            Logical::Int(i) => {
                encode::write_sint(out, *i).unwrap();
            }
            Logical::Float(f) => encode::write_f64(out, *f).unwrap(),
            Logical::Str(s) => encode::write_str(out, s).unwrap(),
            Logical::Bytes(b) => encode::write_bin(out, b).unwrap(),
            Logical::Array(items) => {
                encode::write_array_len(out, items.len() as u32).unwrap();
                for item in items {
                    item.write_msgpack(out);
                }
            }
            Logical::Map(entries) => {
                encode::write_map_len(out, entries.len() as u32).unwrap();
                for (k, v) in entries {
                    encode::write_str(out, k).unwrap();
                    v.write_msgpack(out);
                }
            }
        }
    }
}

fn read_msgpack(input: &mut &[u8], key: Option<&str>, depth: usize) -> Option<Logical> {
    use rmp::Marker;
    if depth > MAX_LOGICAL_DEPTH {
        return None;
    }
    let (&first, rest) = input.split_first()?;
    *input = rest;
    fn take<'a>(input: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        if input.len() < n {
            return None;
        }
        let (head, tail) = input.split_at(n);
        *input = tail;
        Some(head)
    }
    fn be(input: &mut &[u8], n: usize) -> Option<u64> {
        Some(
            take(input, n)?
                .iter()
                .fold(0u64, |acc, b| (acc << 8) | u64::from(*b)),
        )
    }
    let text = |bytes: &[u8]| std::str::from_utf8(bytes).ok().map(str::to_owned);
    let value = match Marker::from_u8(first) {
        Marker::Null => Logical::Nil,
        Marker::True => Logical::Bool(true),
        Marker::False => Logical::Bool(false),
        Marker::FixPos(v) => Logical::UInt(u64::from(v)),
        Marker::FixNeg(v) => Logical::Int(i64::from(v)),
        Marker::U8 => Logical::UInt(be(input, 1)?),
        Marker::U16 => Logical::UInt(be(input, 2)?),
        Marker::U32 => Logical::UInt(be(input, 4)?),
        Marker::U64 => Logical::UInt(be(input, 8)?),
        Marker::I8 => signed(be(input, 1)? as u8 as i8 as i64),
        Marker::I16 => signed(be(input, 2)? as u16 as i16 as i64),
        Marker::I32 => signed(be(input, 4)? as u32 as i32 as i64),
        Marker::I64 => signed(be(input, 8)? as i64),
        Marker::F32 => finite(f64::from(f32::from_bits(be(input, 4)? as u32)))?,
        Marker::F64 => finite(f64::from_bits(be(input, 8)?))?,
        Marker::FixStr(n) => Logical::Str(text(take(input, usize::from(n))?)?),
        Marker::Str8 | Marker::Str16 | Marker::Str32 => {
            let width = match Marker::from_u8(first) {
                Marker::Str8 => 1,
                Marker::Str16 => 2,
                _ => 4,
            };
            let n = be(input, width)? as usize;
            Logical::Str(text(take(input, n)?)?)
        }
        Marker::Bin8 | Marker::Bin16 | Marker::Bin32 => {
            if !key.is_some_and(|k| BODY_KEYS.contains(&k)) {
                return None;
            }
            let width = match Marker::from_u8(first) {
                Marker::Bin8 => 1,
                Marker::Bin16 => 2,
                _ => 4,
            };
            let n = be(input, width)? as usize;
            Logical::Bytes(take(input, n)?.to_vec())
        }
        Marker::FixArray(_) | Marker::Array16 | Marker::Array32 => {
            let n = match Marker::from_u8(first) {
                Marker::FixArray(n) => usize::from(n),
                Marker::Array16 => be(input, 2)? as usize,
                _ => be(input, 4)? as usize,
            };
            if n > input.len() {
                return None;
            }
            let mut items = Vec::with_capacity(n);
            for _ in 0..n {
                items.push(read_msgpack(input, None, depth + 1)?);
            }
            Logical::Array(items)
        }
        Marker::FixMap(_) | Marker::Map16 | Marker::Map32 => {
            let n = match Marker::from_u8(first) {
                Marker::FixMap(n) => usize::from(n),
                Marker::Map16 => be(input, 2)? as usize,
                _ => be(input, 4)? as usize,
            };
            if n > input.len() / 2 {
                return None;
            }
            let mut entries = Vec::with_capacity(n);
            for _ in 0..n {
                let Logical::Str(k) = read_msgpack(input, None, depth + 1)? else {
                    return None;
                };
                let v = read_msgpack(input, Some(&k), depth + 1)?;
                entries.push((k, v));
            }
            Logical::Map(entries)
        }
        _ => return None,
    };
    Some(value)
}

impl<'de> serde::Deserialize<'de> for Logical {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Logical;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_unit<E>(self) -> Result<Logical, E> {
                Ok(Logical::Nil)
            }
            fn visit_bool<E>(self, v: bool) -> Result<Logical, E> {
                Ok(Logical::Bool(v))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Logical, E> {
                Ok(Logical::UInt(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Logical, E> {
                Ok(signed(v))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Logical, E> {
                Ok(Logical::Float(v))
            }
            fn visit_str<E>(self, v: &str) -> Result<Logical, E> {
                Ok(Logical::Str(v.to_owned()))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Logical, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(Logical::Array(items))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Logical, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry::<String, Logical>()? {
                    entries.push(entry);
                }
                Ok(Logical::Map(entries))
            }
        }
        d.deserialize_any(V)
    }
}

fn signed(v: i64) -> Logical {
    match u64::try_from(v) {
        Ok(u) => Logical::UInt(u),
        Err(_) => Logical::Int(v),
    }
}

fn finite(f: f64) -> Option<Logical> {
    f.is_finite().then_some(Logical::Float(f))
}

// ----- mutations ---------------------------------------------------------------------------

/// One change to a logical message. Indices pick a node (or a map, or an entry) modulo the
/// number there is, so every generated mutation applies somewhere.
#[derive(Clone, Debug)]
pub enum Mutation {
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

impl Mutation {
    /// Applies this mutation to `root` (nothing happens where it finds nothing to change).
    pub fn apply(&self, root: &mut Logical) {
        apply(root, self)
    }

    /// A mutation from raw parts (for fuzzers): `kind` picks the variant, `a` and `b` the
    /// places, `flag` the choice.
    pub fn from_parts(kind: u8, a: usize, b: usize, flag: bool) -> Mutation {
        match kind % 7 {
            0 => Mutation::RepeatKey {
                map: a,
                entry: b,
                same: flag,
            },
            1 => Mutation::RepeatTopId { same: flag },
            2 => Mutation::Nil { node: a },
            3 => Mutation::Drop { map: a, entry: b },
            4 => Mutation::Unwrap { array: a },
            5 => Mutation::ToArray { map: a },
            _ => Mutation::Retype {
                node: a,
                to: b as u8,
            },
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

/// What both decoders made of one logical message.
#[derive(Debug, PartialEq)]
pub enum Decision<T> {
    /// Both refused it, for the same limit if a limit was the reason (a header limit, or the
    /// element budget, which both encodings must count alike).
    Refused {
        /// The limit both went over, if any.
        limit: Option<LimitExceeded>,
    },
    /// Both accepted it, with equal values.
    Accepted(T),
    /// The message has no faithful twin in the other encoding ([`Logical::has_json_twin`]):
    /// nothing to compare.
    NoTwin,
}

/// The two decoders disagreed.
#[derive(Debug)]
pub struct Mismatch {
    /// The JSON text decoded.
    pub json: String,
    /// The MessagePack bytes decoded.
    pub msgpack: Vec<u8>,
    /// What each produced.
    pub detail: String,
}

/// Decodes `message` as an event of `frame_type` in both encodings (with `limits`: a
/// [`MessageLimits`], or header limits with the default element budget) and compares.
pub fn decide_event(
    frame_type: FrameType,
    message: &Logical,
    limits: impl Into<MessageLimits>,
) -> Result<Decision<Event>, Mismatch> {
    let limits = limits.into();
    let decode = |encoding, payload: &[u8]| {
        decode_event_with_limits(frame_type, encoding, payload, limits)
            .expect("an event frame type")
    };
    compare(message, decode)
}

/// Decodes `message` as an AgentResponse (what the proxy reads from an agent) in both
/// encodings, within the default element budget, and compares.
pub fn decide_response(message: &Logical) -> Result<Decision<AgentResponse>, Mismatch> {
    decide_response_within(message, DEFAULT_MAX_ELEMENTS)
}

/// [`decide_response`] within `max_elements` array items plus map entries.
pub fn decide_response_within(
    message: &Logical,
    max_elements: usize,
) -> Result<Decision<AgentResponse>, Mismatch> {
    compare(message, |encoding, payload: &[u8]| {
        decode_payload_with_budget::<AgentResponse>(
            FrameType::AgentResponse,
            encoding,
            payload,
            max_elements,
        )
    })
}

fn compare<T: PartialEq + std::fmt::Debug>(
    message: &Logical,
    decode: impl Fn(Encoding, &[u8]) -> Result<T, DecodeError>,
) -> Result<Decision<T>, Mismatch> {
    if !message.has_json_twin() {
        return Ok(Decision::NoTwin);
    }
    let json = message.to_json();
    let msgpack = message.to_msgpack();
    // A MessagePack payload starting with `{` is read as JSON (the reference sends some control
    // frames as JSON in MessagePack sessions); no map or array starts so, so the logical
    // messages worth comparing never do.
    let from_json = decode(Encoding::Json, &json);
    let from_msgpack = decode(Encoding::MsgPack, &msgpack);
    let mismatch = |detail: String| Mismatch {
        json: String::from_utf8_lossy(&json).into_owned(),
        msgpack: msgpack.clone(),
        detail,
    };
    // The element budget is only the same in both encodings if both scans count the tree.
    let counts = [
        count_elements(Encoding::Json, &json, usize::MAX),
        count_elements(
            effective_encoding(Encoding::MsgPack, &msgpack),
            &msgpack,
            usize::MAX,
        ),
    ];
    if counts != [message.elements(); 2] {
        return Err(mismatch(format!(
            "element counts (JSON, MessagePack) {counts:?}, the tree has {}",
            message.elements()
        )));
    }
    match (from_json, from_msgpack) {
        (Ok(a), Ok(b)) if a == b => Ok(Decision::Accepted(a)),
        (Err(a), Err(b)) if a.limit == b.limit => Ok(Decision::Refused { limit: a.limit }),
        (a, b) => Err(mismatch(format!("JSON: {a:?}\nMessagePack: {b:?}"))),
    }
}
