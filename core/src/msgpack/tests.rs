//! Tests of the MessagePack deserializer: hand-encoded inputs for every leniency the module
//! documents, the `rmp_serde` encodings of the protocol types, malformed and hostile inputs, and
//! property tests (never panics, JSON values round-trip, every truncation is refused).

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use serde::de::{self, IgnoredAny, Visitor};
use serde::{Deserialize, Serialize};

use super::{from_slice, MAX_DEPTH};

// ---- hand-encoding helpers -------------------------------------------------------------

fn s(out: &mut Vec<u8>, v: &str) {
    rmp::encode::write_str(out, v).unwrap();
}
fn bin(out: &mut Vec<u8>, v: &[u8]) {
    rmp::encode::write_bin(out, v).unwrap();
}
fn uint(out: &mut Vec<u8>, v: u64) {
    rmp::encode::write_uint(out, v).unwrap();
}
fn map(out: &mut Vec<u8>, n: u32) {
    rmp::encode::write_map_len(out, n).unwrap();
}
fn arr(out: &mut Vec<u8>, n: u32) {
    rmp::encode::write_array_len(out, n).unwrap();
}
fn nil(out: &mut Vec<u8>) {
    out.push(0xc0);
}

fn hex(s: &str) -> Vec<u8> {
    assert_eq!(s.len() % 2, 0, "odd hex length");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

// ---- test types --------------------------------------------------------------------------

#[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
struct Meta {
    correlation_id: String,
    request_id: String,
    client_port: u16,
    tls_version: Option<String>,
    #[serde(default)]
    traceparent: Option<String>,
}

#[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
struct NoDefaults {
    a: u32,
    b: Option<String>,
}

#[derive(Deserialize, Debug, PartialEq)]
struct Chunk {
    correlation_id: String,
    data: String,
    is_last: bool,
    total_size: Option<u64>,
    chunk_index: u32,
    #[serde(default)]
    bytes_received: u64,
}

#[derive(Deserialize, Debug, PartialEq)]
struct BinChunk {
    correlation_id: String,
    data: bytes::Bytes,
    is_last: bool,
}

#[derive(Deserialize, Debug, PartialEq)]
struct Borrowed<'a> {
    name: &'a str,
    #[serde(borrow)]
    raw: &'a [u8],
}

#[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
#[serde(rename_all = "snake_case")]
enum Decision {
    Allow,
    Block {
        status: u16,
        body: Option<String>,
        headers: Option<BTreeMap<String, String>>,
    },
    Redirect {
        url: String,
        status: u16,
    },
    Tag(String),
    Pair(u8, i32),
}

#[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
struct Response {
    version: u32,
    decision: Decision,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    confidence: Option<f32>,
    #[serde(default)]
    custom: HashMap<String, serde_json::Value>,
}

#[derive(Deserialize, Debug, PartialEq)]
struct Numbers {
    a: i8,
    b: i16,
    c: i32,
    d: i64,
    e: u8,
    f: f32,
    g: f64,
}

/// Accepts every MessagePack value except ext, bytes included, and renders it in the
/// vectors' `payload_decoded` notation (`{"$bin_hex":..}`, `{"$f32":..}`).
#[derive(Debug, Clone, PartialEq)]
enum Generic {
    Nil,
    Bool(bool),
    U(u64),
    I(i64),
    F32(f32),
    F64(f64),
    Str(String),
    Bin(Vec<u8>),
    Arr(Vec<Generic>),
    Map(Vec<(Generic, Generic)>),
}

impl<'de> Deserialize<'de> for Generic {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Generic;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any MessagePack value")
            }
            fn visit_unit<E>(self) -> std::result::Result<Generic, E> {
                Ok(Generic::Nil)
            }
            fn visit_bool<E>(self, v: bool) -> std::result::Result<Generic, E> {
                Ok(Generic::Bool(v))
            }
            fn visit_u64<E>(self, v: u64) -> std::result::Result<Generic, E> {
                Ok(Generic::U(v))
            }
            fn visit_i64<E>(self, v: i64) -> std::result::Result<Generic, E> {
                Ok(Generic::I(v))
            }
            fn visit_f32<E>(self, v: f32) -> std::result::Result<Generic, E> {
                Ok(Generic::F32(v))
            }
            fn visit_f64<E>(self, v: f64) -> std::result::Result<Generic, E> {
                Ok(Generic::F64(v))
            }
            fn visit_str<E>(self, v: &str) -> std::result::Result<Generic, E> {
                Ok(Generic::Str(v.to_owned()))
            }
            fn visit_bytes<E>(self, v: &[u8]) -> std::result::Result<Generic, E> {
                Ok(Generic::Bin(v.to_vec()))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> std::result::Result<Generic, A::Error> {
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
                while let Some(v) = seq.next_element()? {
                    out.push(v);
                }
                Ok(Generic::Arr(out))
            }
            fn visit_map<A: de::MapAccess<'de>>(
                self,
                mut m: A,
            ) -> std::result::Result<Generic, A::Error> {
                let mut out = Vec::new();
                while let Some(kv) = m.next_entry()? {
                    out.push(kv);
                }
                Ok(Generic::Map(out))
            }
        }
        d.deserialize_any(V)
    }
}

impl Generic {
    fn to_json(&self) -> serde_json::Value {
        use serde_json::{json, Value};
        match self {
            Generic::Nil => Value::Null,
            Generic::Bool(b) => json!(b),
            Generic::U(v) => json!(v),
            Generic::I(v) => json!(v),
            Generic::F32(v) => json!({ "$f32": f64::from(*v) }),
            Generic::F64(v) => json!(v),
            Generic::Str(v) => json!(v),
            Generic::Bin(v) => {
                let h: String = v.iter().map(|b| format!("{b:02x}")).collect();
                json!({ "$bin_hex": h })
            }
            Generic::Arr(v) => Value::Array(v.iter().map(Generic::to_json).collect()),
            Generic::Map(v) => Value::Object(
                v.iter()
                    .map(|(k, v)| match k {
                        Generic::Str(k) => (k.clone(), v.to_json()),
                        other => (other.to_json().to_string(), v.to_json()),
                    })
                    .collect(),
            ),
        }
    }
}

fn meta() -> Meta {
    Meta {
        correlation_id: "c-1".into(),
        request_id: "r-1".into(),
        client_port: 54321,
        tls_version: None,
        traceparent: Some("00-abc-01".into()),
    }
}

// ---- structs -----------------------------------------------------------------------------

#[test]
fn struct_from_named_map() {
    let bytes = rmp_serde::to_vec_named(&meta()).unwrap();
    assert_eq!(from_slice::<Meta>(&bytes).unwrap(), meta());
}

#[test]
fn struct_from_positional_array() {
    let bytes = rmp_serde::to_vec(&meta()).unwrap();
    assert_eq!(bytes[0], 0x95, "compact form is a 5-element array");
    assert_eq!(from_slice::<Meta>(&bytes).unwrap(), meta());
}

#[test]
fn map_keys_in_any_order_and_unknown_keys_ignored() {
    let mut b = Vec::new();
    map(&mut b, 6);
    s(&mut b, "unknown");
    arr(&mut b, 2);
    map(&mut b, 1);
    s(&mut b, "x");
    bin(&mut b, &[0xff]);
    b.extend_from_slice(&[0xd4, 1, 2]); // fixext1 inside an ignored value's sibling
    s(&mut b, "client_port");
    uint(&mut b, 80);
    s(&mut b, "request_id");
    s(&mut b, "r");
    s(&mut b, "tls_version");
    s(&mut b, "TLSv1.3");
    s(&mut b, "correlation_id");
    s(&mut b, "c");
    s(&mut b, "ext");
    b.extend_from_slice(&[0xc7, 3, 9, 1, 2, 3]);
    let m: Meta = from_slice(&b).unwrap();
    assert_eq!(
        m,
        Meta {
            correlation_id: "c".into(),
            request_id: "r".into(),
            client_port: 80,
            tls_version: Some("TLSv1.3".into()),
            traceparent: None,
        }
    );
}

#[test]
fn short_array_takes_defaults_for_defaulted_trailing_fields() {
    // The reference's metadata array without its trailing traceparent (left out when None).
    let mut b = Vec::new();
    arr(&mut b, 4);
    s(&mut b, "c");
    s(&mut b, "r");
    uint(&mut b, 1);
    nil(&mut b);
    let m: Meta = from_slice(&b).unwrap();
    assert_eq!(m.traceparent, None);
    assert_eq!(m.tls_version, None);

    // Body chunk without bytes_received.
    let mut b = Vec::new();
    arr(&mut b, 5);
    s(&mut b, "cid");
    s(&mut b, "data");
    b.push(0xc3);
    uint(&mut b, 10);
    uint(&mut b, 0);
    let c: Chunk = from_slice(&b).unwrap();
    assert_eq!(c.bytes_received, 0);
    assert_eq!(c.total_size, Some(10));
}

#[test]
fn short_array_without_defaults_is_an_error() {
    let mut b = Vec::new();
    arr(&mut b, 1);
    uint(&mut b, 1);
    let err = from_slice::<NoDefaults>(&b).unwrap_err();
    assert!(err.message().contains("invalid length"), "{err}");
    assert_eq!(err.offset(), Some(0));
    // An empty array likewise.
    assert!(from_slice::<NoDefaults>(&[0x90]).is_err());
}

#[test]
fn long_array_is_an_error() {
    let mut b = Vec::new();
    arr(&mut b, 3);
    uint(&mut b, 1);
    nil(&mut b);
    uint(&mut b, 3);
    let err = from_slice::<NoDefaults>(&b).unwrap_err();
    assert!(err.message().contains("too long"), "{err}");
    assert_eq!(err.offset(), Some(3));
    // Tuples behave the same way.
    assert!(from_slice::<(u8, u8)>(&[0x93, 1, 2, 3]).is_err());
    assert_eq!(from_slice::<(u8, u8)>(&[0x92, 1, 2]).unwrap(), (1, 2));
}

#[test]
fn exact_size_hint_for_arrays() {
    struct Probe;
    impl<'de> Deserialize<'de> for Probe {
        fn deserialize<D: de::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = Probe;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("array")
                }
                fn visit_seq<A: de::SeqAccess<'de>>(
                    self,
                    mut seq: A,
                ) -> std::result::Result<Probe, A::Error> {
                    let mut expected = 3;
                    assert_eq!(seq.size_hint(), Some(expected));
                    while seq.next_element::<IgnoredAny>()?.is_some() {
                        expected -= 1;
                        assert_eq!(seq.size_hint(), Some(expected));
                    }
                    Ok(Probe)
                }
            }
            d.deserialize_seq(V)
        }
    }
    from_slice::<Probe>(&[0x93, 1, 2, 3]).unwrap();
}

// ---- duplicate keys ----------------------------------------------------------------------

fn duplicated_chunk() -> Vec<u8> {
    // The reference's shape: {correlation_id, correlation_id, data, is_last, total_size, chunk_index}
    let mut b = Vec::new();
    map(&mut b, 6);
    s(&mut b, "correlation_id");
    s(&mut b, "first");
    s(&mut b, "correlation_id");
    s(&mut b, "second");
    s(&mut b, "data");
    s(&mut b, "aGk=");
    s(&mut b, "is_last");
    b.push(0xc2);
    s(&mut b, "total_size");
    nil(&mut b);
    s(&mut b, "chunk_index");
    uint(&mut b, 2);
    b
}

#[test]
fn repeated_keys_reach_the_visitor_as_serde_json_hands_them_over() {
    let b = duplicated_chunk();
    // A struct rejects the repeated field, as rmp_serde and serde_json do.
    let err = from_slice::<Chunk>(&b).unwrap_err();
    assert!(err.message().contains("duplicate field"), "{err}");
    assert!(rmp_serde::from_slice::<Chunk>(&b).is_err());
    let json = r#"{"correlation_id":"first","correlation_id":"second","data":"aGk=","is_last":false,"total_size":null,"chunk_index":2}"#;
    assert!(serde_json::from_str::<Chunk>(json).is_err());

    // Generic consumers see every entry; maps keep the last value, as with serde_json.
    let g: Generic = from_slice(&b).unwrap();
    match g {
        Generic::Map(entries) => assert_eq!(entries.len(), 6),
        other => panic!("{other:?}"),
    }
    let v: serde_json::Value = from_slice(&b).unwrap();
    assert_eq!(v, serde_json::from_str::<serde_json::Value>(json).unwrap());
    assert_eq!(v["correlation_id"], "second");
}

#[test]
fn repeated_key_with_nested_value_is_read_not_skipped() {
    let mut b = Vec::new();
    map(&mut b, 3);
    s(&mut b, "a");
    uint(&mut b, 1);
    s(&mut b, "a");
    arr(&mut b, 2);
    map(&mut b, 1);
    s(&mut b, "deep");
    arr(&mut b, 1);
    nil(&mut b);
    bin(&mut b, b"zz");
    s(&mut b, "b");
    s(&mut b, "x");
    assert!(from_slice::<NoDefaults>(&b).is_err());
    // The repeated value holds a bin, which serde_json::Value cannot take: now it is seen.
    assert!(from_slice::<HashMap<String, serde_json::Value>>(&b).is_err());
    let m: HashMap<String, IgnoredAny> = from_slice(&b).unwrap();
    assert_eq!(m.len(), 2);
}

#[test]
fn repeated_keys_in_large_maps_keep_the_last_value() {
    // 40 distinct keys, each repeated once later with a different value.
    let mut b = Vec::new();
    map(&mut b, 80);
    for i in 0..40u64 {
        s(&mut b, &format!("k{i}"));
        uint(&mut b, i);
    }
    for i in 0..40u64 {
        s(&mut b, &format!("k{i}"));
        uint(&mut b, 1000 + i);
    }
    let m: HashMap<String, u64> = from_slice(&b).unwrap();
    assert_eq!(m.len(), 40);
    assert!((0..40).all(|i| m[&format!("k{i}")] == 1000 + i));
}

#[test]
fn str_and_bin_keys_are_the_same_key() {
    let mut b = Vec::new();
    map(&mut b, 2);
    bin(&mut b, b"a");
    uint(&mut b, 1);
    s(&mut b, "a");
    uint(&mut b, 2);
    let m: BTreeMap<String, u32> = from_slice(&b).unwrap();
    assert_eq!(m, BTreeMap::from([("a".to_owned(), 2)]));
}

#[test]
fn non_string_keys_pass_through() {
    let mut b = Vec::new();
    map(&mut b, 3);
    uint(&mut b, 1);
    s(&mut b, "one");
    b.push(0xff); // -1
    s(&mut b, "minus one");
    uint(&mut b, 1);
    s(&mut b, "again");
    let m: Vec<(i64, String)> = match from_slice::<Generic>(&b).unwrap() {
        Generic::Map(entries) => entries
            .into_iter()
            .map(|(k, v)| match (k, v) {
                (Generic::U(k), Generic::Str(v)) => (k as i64, v),
                (Generic::I(k), Generic::Str(v)) => (k, v),
                other => panic!("{other:?}"),
            })
            .collect(),
        other => panic!("{other:?}"),
    };
    // The consumer sees all three entries.
    assert_eq!(m.len(), 3);
    let m: BTreeMap<i64, String> = from_slice(&b).unwrap();
    assert_eq!(m[&-1], "minus one");
    // Integer keys name struct fields by index, as with rmp_serde.
    let mut b = Vec::new();
    map(&mut b, 1);
    uint(&mut b, 0);
    uint(&mut b, 7);
    assert_eq!(
        from_slice::<NoDefaults>(&b).unwrap(),
        NoDefaults { a: 7, b: None }
    );
}

#[test]
fn string_keys_into_various_key_types() {
    #[derive(Deserialize, Debug, PartialEq, Eq, PartialOrd, Ord)]
    #[serde(rename_all = "snake_case")]
    enum Kind {
        Alpha,
        Beta,
    }
    #[derive(Deserialize, Debug, PartialEq, Eq, PartialOrd, Ord)]
    struct Name(String);

    let mut b = Vec::new();
    map(&mut b, 3);
    s(&mut b, "alpha");
    uint(&mut b, 1);
    s(&mut b, "beta");
    uint(&mut b, 2);
    s(&mut b, "alpha");
    uint(&mut b, 3);
    let m: BTreeMap<Kind, u8> = from_slice(&b).unwrap();
    assert_eq!(m, BTreeMap::from([(Kind::Alpha, 3), (Kind::Beta, 2)]));
    let m: BTreeMap<Name, u8> = from_slice(&b).unwrap();
    assert_eq!(m[&Name("beta".into())], 2);
    let m: BTreeMap<&str, u8> = from_slice(&b).unwrap();
    assert_eq!(m["alpha"], 3);
    let m: BTreeMap<bytes::Bytes, u8> = from_slice(&b).unwrap();
    assert_eq!(m[&bytes::Bytes::from_static(b"beta")], 2);
    let m: BTreeMap<char, u8> = from_slice(&[0x81, 0xa1, b'c', 0x05]).unwrap();
    assert_eq!(m[&'c'], 5);
    // A str key that is not a valid enum variant, and one that is not UTF-8.
    let mut b = Vec::new();
    map(&mut b, 1);
    s(&mut b, "gamma");
    uint(&mut b, 1);
    let err = from_slice::<BTreeMap<Kind, u8>>(&b).unwrap_err();
    assert_eq!(err.offset(), Some(1));
    assert!(err.message().contains("unknown variant"), "{err}");
    assert!(from_slice::<BTreeMap<String, u8>>(&[0x81, 0xa1, 0xff, 0x01]).is_err());
    assert!(from_slice::<Generic>(&[0x81, 0xa1, 0xff, 0x01]).is_err());
    // A str key cannot be a number.
    assert!(from_slice::<BTreeMap<u8, u8>>(&[0x81, 0xa1, b'1', 0x01]).is_err());
}

// ---- str / bin ---------------------------------------------------------------------------

#[test]
fn string_fields_accept_bin_and_byte_fields_accept_str() {
    // The reference's binary body chunk: [cid, bin, is_last, ...] decoded into String data.
    let mut b = Vec::new();
    arr(&mut b, 5);
    bin(&mut b, b"cid");
    bin(&mut b, b"user=alice");
    b.push(0xc3);
    uint(&mut b, 10);
    uint(&mut b, 0);
    let c: Chunk = from_slice(&b).unwrap();
    assert_eq!(c.correlation_id, "cid");
    assert_eq!(c.data, "user=alice");

    let mut b = Vec::new();
    arr(&mut b, 3);
    s(&mut b, "cid");
    s(&mut b, "text");
    b.push(0xc2);
    let c: BinChunk = from_slice(&b).unwrap();
    assert_eq!(&c.data[..], b"text");

    let mut b = Vec::new();
    arr(&mut b, 3);
    s(&mut b, "cid");
    bin(&mut b, &[0, 0xff, 0xfe]);
    b.push(0xc2);
    let c: BinChunk = from_slice(&b).unwrap();
    assert_eq!(&c.data[..], &[0, 0xff, 0xfe]);
}

#[test]
fn borrowed_fields_borrow_from_the_input() {
    let mut b = Vec::new();
    map(&mut b, 2);
    s(&mut b, "name");
    bin(&mut b, b"n");
    s(&mut b, "raw");
    s(&mut b, "r");
    let v: Borrowed<'_> = from_slice(&b).unwrap();
    assert_eq!(v.name, "n");
    assert_eq!(v.raw, b"r");
    let v: &str = from_slice(&[0xa1, b'q']).unwrap();
    assert_eq!(v, "q");
}

#[test]
fn invalid_utf8_is_an_error() {
    // bin that is not UTF-8 into a String field.
    let mut b = Vec::new();
    arr(&mut b, 5);
    s(&mut b, "cid");
    bin(&mut b, &[0xff, 0xfe]);
    b.push(0xc3);
    uint(&mut b, 10);
    uint(&mut b, 0);
    let err = from_slice::<Chunk>(&b).unwrap_err();
    assert!(err.message().contains("UTF-8"), "{err}");
    assert_eq!(err.offset(), Some(5));
    // A str marker with invalid UTF-8 inside, via deserialize_any and deserialize_str.
    let bad = [0xa2, 0xc3, 0x28];
    assert!(from_slice::<serde_json::Value>(&bad).is_err());
    assert!(from_slice::<String>(&bad).is_err());
    // ... but as bytes it is fine.
    assert_eq!(
        &from_slice::<bytes::Bytes>(&bad).unwrap()[..],
        &[0xc3, 0x28]
    );
}

#[test]
fn bin_into_json_value_is_an_error_but_generic_accepts_it() {
    let b = [0xc4, 2, 1, 2];
    assert!(from_slice::<serde_json::Value>(&b).is_err());
    assert_eq!(from_slice::<Generic>(&b).unwrap(), Generic::Bin(vec![1, 2]));
}

// ---- enums -------------------------------------------------------------------------------

#[test]
fn enum_unit_variant_from_str_or_bin() {
    assert_eq!(
        from_slice::<Decision>(&rmp_serde::to_vec(&Decision::Allow).unwrap()).unwrap(),
        Decision::Allow
    );
    let mut b = Vec::new();
    bin(&mut b, b"allow");
    assert_eq!(from_slice::<Decision>(&b).unwrap(), Decision::Allow);
    // {"allow": nil} and {"allow": []} are accepted too.
    for content in [0xc0u8, 0x90] {
        let mut b = Vec::new();
        map(&mut b, 1);
        s(&mut b, "allow");
        b.push(content);
        assert_eq!(from_slice::<Decision>(&b).unwrap(), Decision::Allow);
    }
    let mut b = Vec::new();
    map(&mut b, 1);
    s(&mut b, "allow");
    uint(&mut b, 1);
    assert!(from_slice::<Decision>(&b).is_err());
    let mut b = Vec::new();
    s(&mut b, "nope");
    assert!(from_slice::<Decision>(&b)
        .unwrap_err()
        .message()
        .contains("unknown variant"));
    // A bare string cannot carry a struct variant's content.
    let mut b = Vec::new();
    s(&mut b, "block");
    assert!(from_slice::<Decision>(&b).is_err());
}

#[test]
fn enum_struct_variant_from_array_and_map() {
    // {"block": [403, "x", nil]}: the reference's compact form.
    let mut b = Vec::new();
    map(&mut b, 1);
    s(&mut b, "block");
    arr(&mut b, 3);
    uint(&mut b, 403);
    s(&mut b, "x");
    nil(&mut b);
    let expected = Decision::Block {
        status: 403,
        body: Some("x".into()),
        headers: None,
    };
    assert_eq!(from_slice::<Decision>(&b).unwrap(), expected);
    assert_eq!(rmp_serde::to_vec(&expected).unwrap(), b);

    let named = rmp_serde::to_vec_named(&expected).unwrap();
    assert_eq!(from_slice::<Decision>(&named).unwrap(), expected);

    let redirect = Decision::Redirect {
        url: "https://x/".into(),
        status: 302,
    };
    for bytes in [
        rmp_serde::to_vec(&redirect).unwrap(),
        rmp_serde::to_vec_named(&redirect).unwrap(),
    ] {
        assert_eq!(from_slice::<Decision>(&bytes).unwrap(), redirect);
    }
}

#[test]
fn enum_newtype_and_tuple_variants() {
    for d in [Decision::Tag("t".into()), Decision::Pair(1, -5)] {
        for bytes in [
            rmp_serde::to_vec(&d).unwrap(),
            rmp_serde::to_vec_named(&d).unwrap(),
        ] {
            assert_eq!(from_slice::<Decision>(&bytes).unwrap(), d);
        }
    }
    // Tuple variant with the wrong arity.
    let mut b = Vec::new();
    map(&mut b, 1);
    s(&mut b, "pair");
    arr(&mut b, 3);
    uint(&mut b, 1);
    uint(&mut b, 2);
    uint(&mut b, 3);
    assert!(from_slice::<Decision>(&b).is_err());
}

#[test]
fn enum_rejects_other_shapes() {
    let mut two = Vec::new();
    map(&mut two, 2);
    s(&mut two, "allow");
    nil(&mut two);
    s(&mut two, "tag");
    s(&mut two, "x");
    let err = from_slice::<Decision>(&two).unwrap_err();
    assert!(err.message().contains("exactly one entry"), "{err}");
    for bad in [&[0x80][..], &[0x01], &[0xc0], &[0x91, 0xa1, b'a'], &[0xc3]] {
        assert!(from_slice::<Decision>(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn nested_enum_in_positional_response() {
    let r = Response {
        version: 2,
        decision: Decision::Block {
            status: 403,
            body: None,
            headers: Some(BTreeMap::from([("x-a".into(), "b".into())])),
        },
        tags: vec!["waf".into()],
        confidence: Some(0.875),
        custom: HashMap::from([("correlation_id".into(), serde_json::json!("rh-1"))]),
    };
    for bytes in [
        rmp_serde::to_vec(&r).unwrap(),
        rmp_serde::to_vec_named(&r).unwrap(),
    ] {
        assert_eq!(from_slice::<Response>(&bytes).unwrap(), r);
    }
    // Short array: [2, "allow"]
    let mut b = Vec::new();
    arr(&mut b, 2);
    uint(&mut b, 2);
    s(&mut b, "allow");
    let short: Response = from_slice(&b).unwrap();
    assert_eq!(short.decision, Decision::Allow);
    assert!(short.tags.is_empty() && short.confidence.is_none());
}

// ---- scalars -----------------------------------------------------------------------------

#[test]
fn option_nil_and_some() {
    assert_eq!(from_slice::<Option<u8>>(&[0xc0]).unwrap(), None);
    assert_eq!(from_slice::<Option<u8>>(&[0x05]).unwrap(), Some(5));
    assert_eq!(
        from_slice::<Option<Option<String>>>(&[0xa1, b'z']).unwrap(),
        Some(Some("z".into()))
    );
    assert_eq!(from_slice::<()>(&[0xc0]).unwrap(), ());
    assert_eq!(
        from_slice::<serde_json::Value>(&[0xc0]).unwrap(),
        serde_json::Value::Null
    );
}

#[test]
fn floats() {
    let b = rmp_serde::to_vec(&0.875f32).unwrap();
    assert_eq!(b[0], 0xca);
    assert_eq!(from_slice::<f32>(&b).unwrap(), 0.875);
    assert_eq!(from_slice::<f64>(&b).unwrap(), 0.875);
    assert_eq!(from_slice::<Generic>(&b).unwrap(), Generic::F32(0.875));
    let b = rmp_serde::to_vec(&-2.5f64).unwrap();
    assert_eq!(b[0], 0xcb);
    assert_eq!(from_slice::<f64>(&b).unwrap(), -2.5);
    assert_eq!(from_slice::<Generic>(&b).unwrap(), Generic::F64(-2.5));
    // Integers widen into floats.
    assert_eq!(from_slice::<f64>(&[0x07]).unwrap(), 7.0);
}

#[test]
fn integers_of_every_width() {
    let cases: [(i64, u8); 8] = [
        (-1, 0xff),
        (-32, 0xe0),
        (-33, 0xd0),
        (-129, 0xd1),
        (-40_000, 0xd2),
        (-5_000_000_000, 0xd3),
        (i64::MIN, 0xd3),
        (127, 0x7f),
    ];
    for (v, marker) in cases {
        let b = rmp_serde::to_vec(&v).unwrap();
        assert_eq!(b[0], marker, "{v}");
        assert_eq!(from_slice::<i64>(&b).unwrap(), v);
        let g = from_slice::<Generic>(&b).unwrap();
        if v < 0 {
            assert_eq!(g, Generic::I(v));
        } else {
            assert_eq!(g, Generic::U(v as u64));
        }
    }
    for v in [0u64, 200, 60_000, 4_000_000_000, u64::MAX] {
        let b = rmp_serde::to_vec(&v).unwrap();
        assert_eq!(from_slice::<u64>(&b).unwrap(), v);
        assert_eq!(from_slice::<Generic>(&b).unwrap(), Generic::U(v));
    }
    // Signed markers holding non-negative values are visited as unsigned.
    assert_eq!(from_slice::<Generic>(&[0xd0, 0x05]).unwrap(), Generic::U(5));
    assert_eq!(
        from_slice::<u8>(&[0xd3, 0, 0, 0, 0, 0, 0, 0, 9]).unwrap(),
        9
    );
    // Range checks are the visitor's.
    assert!(from_slice::<u8>(&[0xcd, 0x01, 0x00]).is_err());
    assert!(from_slice::<u32>(&[0xff]).is_err());
    assert_eq!(from_slice::<i128>(&[0xff]).unwrap(), -1);

    let mut b = Vec::new();
    arr(&mut b, 7);
    rmp::encode::write_sint(&mut b, -100).unwrap();
    rmp::encode::write_sint(&mut b, -30_000).unwrap();
    rmp::encode::write_sint(&mut b, -2_000_000_000).unwrap();
    rmp::encode::write_sint(&mut b, i64::MIN + 1).unwrap();
    uint(&mut b, 255);
    rmp::encode::write_f32(&mut b, 1.5).unwrap();
    rmp::encode::write_f64(&mut b, -0.25).unwrap();
    assert_eq!(
        from_slice::<Numbers>(&b).unwrap(),
        Numbers {
            a: -100,
            b: -30_000,
            c: -2_000_000_000,
            d: i64::MIN + 1,
            e: 255,
            f: 1.5,
            g: -0.25
        }
    );
}

#[test]
fn not_human_readable() {
    struct Probe(bool);
    impl<'de> Deserialize<'de> for Probe {
        fn deserialize<D: de::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
            let hr = d.is_human_readable();
            IgnoredAny::deserialize(d)?;
            Ok(Probe(hr))
        }
    }
    assert!(!from_slice::<Probe>(&[0xc0]).unwrap().0);
}

// ---- robustness --------------------------------------------------------------------------

fn nested_arrays(depth: usize) -> Vec<u8> {
    let mut b = vec![0x91; depth];
    b.push(0xc0);
    b
}

#[test]
fn nesting_depth_is_bounded() {
    assert!(from_slice::<serde_json::Value>(&nested_arrays(MAX_DEPTH)).is_ok());
    let err = from_slice::<serde_json::Value>(&nested_arrays(MAX_DEPTH + 1)).unwrap_err();
    assert!(err.message().contains("nesting"), "{err}");
    assert_eq!(err.offset(), Some(MAX_DEPTH));
    // Far deeper inputs fail the same way instead of overflowing the stack.
    assert!(from_slice::<Generic>(&nested_arrays(1_000_000)).is_err());
    let mut maps = Vec::new();
    for _ in 0..100_000 {
        map(&mut maps, 1);
        s(&mut maps, "k");
    }
    nil(&mut maps);
    assert!(from_slice::<serde_json::Value>(&maps).is_err());
    // Enum wrappers count too.
    let mut enums = Vec::new();
    for _ in 0..10_000 {
        map(&mut enums, 1);
        s(&mut enums, "tag");
    }
    s(&mut enums, "x");
    assert!(from_slice::<Decision>(&enums).is_err());
    // Skipping (ignored values) is iterative and has no depth limit.
    from_slice::<IgnoredAny>(&nested_arrays(1_000_000)).unwrap();
}

#[test]
fn truncated_input_is_an_error_at_every_offset() {
    let r = Response {
        version: 2,
        decision: Decision::Block {
            status: 403,
            body: Some("Forbidden".into()),
            headers: Some(BTreeMap::from([("x-b".into(), "waf".into())])),
        },
        tags: vec!["a".into(), "b".into()],
        confidence: Some(0.5),
        custom: HashMap::from([("k".into(), serde_json::json!([1, -2, 3.5, null]))]),
    };
    let encodings = [
        rmp_serde::to_vec(&r).unwrap(),
        rmp_serde::to_vec_named(&r).unwrap(),
        rmp_serde::to_vec(&meta()).unwrap(),
        duplicated_chunk(),
        rmp_serde::to_vec(&u64::MAX).unwrap(),
        rmp_serde::to_vec(&-2.5f64).unwrap(),
    ];
    for full in &encodings {
        for cut in 0..full.len() {
            let part = &full[..cut];
            assert!(from_slice::<Response>(part).is_err(), "cut {cut}");
            assert!(from_slice::<Meta>(part).is_err(), "cut {cut}");
            assert!(from_slice::<Chunk>(part).is_err(), "cut {cut}");
            assert!(from_slice::<serde_json::Value>(part).is_err(), "cut {cut}");
            assert!(from_slice::<Generic>(part).is_err(), "cut {cut}");
            assert!(from_slice::<IgnoredAny>(part).is_err(), "cut {cut}");
            assert!(from_slice::<u64>(part).is_err(), "cut {cut}");
        }
        from_slice::<IgnoredAny>(full).unwrap();
        from_slice::<Generic>(full).unwrap();
    }
    let err = from_slice::<Meta>(&encodings[2][..10]).unwrap_err();
    assert!(err.message().contains("remain"), "{err}");
    assert!(err.to_string().contains("byte offset"), "{err}");
}

#[test]
fn trailing_bytes_are_an_error() {
    let mut b = rmp_serde::to_vec(&meta()).unwrap();
    let len = b.len();
    b.push(0xc0);
    let err = from_slice::<Meta>(&b).unwrap_err();
    assert_eq!(err.offset(), Some(len));
    assert!(err.message().contains("trailing"), "{err}");
    assert_eq!(
        err.to_string(),
        format!("invalid MessagePack at byte offset {len}: 1 trailing byte(s) after the MessagePack value")
    );
    assert!(from_slice::<IgnoredAny>(&[0xc0, 0xc0]).is_err());
    assert!(from_slice::<IgnoredAny>(&[]).is_err());
}

#[test]
fn huge_length_prefixes_are_rejected_before_use() {
    let cases: [&[u8]; 8] = [
        &[0xdd, 0xff, 0xff, 0xff, 0xff, 0xc0],
        &[0xdf, 0xff, 0xff, 0xff, 0xff, 0xc0, 0xc0],
        &[0xdb, 0xff, 0xff, 0xff, 0xff, b'a'],
        &[0xc6, 0xff, 0xff, 0xff, 0xff, 0x00],
        &[0xc9, 0xff, 0xff, 0xff, 0xff, 0x01, 0x00],
        &[0xdc, 0xff, 0xff, 0x01],
        &[0xde, 0x00, 0x02, 0x01, 0x02, 0x03],
        &[0x9f, 0x01],
    ];
    for b in cases {
        assert!(from_slice::<Vec<u64>>(b).is_err(), "{b:?}");
        assert!(from_slice::<HashMap<u8, u8>>(b).is_err(), "{b:?}");
        assert!(from_slice::<serde_json::Value>(b).is_err(), "{b:?}");
        assert!(from_slice::<Generic>(b).is_err(), "{b:?}");
        assert!(from_slice::<IgnoredAny>(b).is_err(), "{b:?}");
        assert!(from_slice::<String>(b).is_err(), "{b:?}");
        assert!(from_slice::<bytes::Bytes>(b).is_err(), "{b:?}");
    }
    let err = from_slice::<Vec<u8>>(&[0xdd, 0xff, 0xff, 0xff, 0xff, 0xc0]).unwrap_err();
    assert_eq!(err.offset(), Some(0));
    assert!(err.message().contains("declares"), "{err}");
}

#[test]
fn ext_and_reserved_markers() {
    let fixext = [0xd4, 0x01, 0x02];
    let err = from_slice::<serde_json::Value>(&fixext).unwrap_err();
    assert!(err.message().contains("ext"), "{err}");
    from_slice::<IgnoredAny>(&fixext).unwrap();
    from_slice::<IgnoredAny>(&[0xd8, 0x01, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])
        .unwrap();
    assert!(from_slice::<IgnoredAny>(&[0xd8, 0x01, 0]).is_err());
    let err = from_slice::<IgnoredAny>(&[0xc1]).unwrap_err();
    assert!(err.message().contains("reserved"), "{err}");
    assert!(from_slice::<serde_json::Value>(&[0x91, 0xc1]).is_err());
}

#[test]
fn error_offsets_point_at_the_offending_value() {
    // [1, "x"] into (u8, u8): the string at offset 2 is the problem.
    let err = from_slice::<(u8, u8)>(&[0x92, 0x01, 0xa1, b'x']).unwrap_err();
    assert_eq!(err.offset(), Some(2));
    assert!(err.message().contains("invalid type"), "{err}");
    // Missing field: reported at the map.
    let mut b = vec![0x00];
    map(&mut b, 1);
    s(&mut b, "b");
    nil(&mut b);
    let err = from_slice::<Vec<NoDefaults>>(&[&[0x91][..], &b[1..]].concat()).unwrap_err();
    assert!(err.message().contains("missing field"), "{err}");
    assert_eq!(err.offset(), Some(1));
}

// ---- golden vectors ----------------------------------------------------------------------

/// The frames captured from the reference implementation, kept in the repository.
fn vectors_jsonl() -> String {
    let in_repo = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/vectors/vectors.jsonl"
    );
    std::fs::read_to_string(in_repo)
        .expect("golden vectors (tests/vectors/vectors.jsonl) not found")
}

#[test]
fn every_msgpack_reference_vector_parses_structurally() {
    let text = vectors_jsonl();
    let mut checked = 0;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        if v["encoding"] != "msgpack" {
            continue;
        }
        let name = v["name"].as_str().unwrap();
        let frame = hex(v["frame_hex"].as_str().unwrap());
        let payload = &frame[crate::frame::FRAME_HEADER_LEN..];
        let declared = u32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]) as usize;
        assert_eq!(declared, payload.len() + 1, "{name}");

        let generic: Generic = from_slice(payload).unwrap_or_else(|e| panic!("{name}: {e}"));
        from_slice::<IgnoredAny>(payload).unwrap_or_else(|e| panic!("{name}: {e}"));
        // Same structure as the capture's JSON rendering (in which a repeated key also
        // collapses to one entry).
        let expected: serde_json::Value =
            serde_json::from_str(v["payload_decoded"].as_str().unwrap()).unwrap();
        assert_eq!(generic.to_json(), expected, "{name}");
        // serde_json::Value reads it through deserialize_any too, unless it holds a bin.
        let as_value = from_slice::<serde_json::Value>(payload);
        let rendered = expected.to_string();
        if rendered.contains("$bin_hex") {
            assert!(as_value.is_err(), "{name}");
        } else {
            let as_value = as_value.unwrap_or_else(|e| panic!("{name}: {e}"));
            if !rendered.contains("$f32") {
                assert_eq!(as_value, expected, "{name}");
            }
        }
        // Every truncation fails cleanly.
        for cut in 0..payload.len() {
            assert!(
                from_slice::<Generic>(&payload[..cut]).is_err(),
                "{name} cut {cut}"
            );
        }
        checked += 1;
    }
    assert_eq!(checked, 33, "msgpack vectors in vectors.jsonl");
}

#[test]
fn reference_repeated_id_event_decodes_through_the_event_decoder() {
    // response_headers (0x12) as sent by the reference proxy: correlation_id twice, same value.
    let payload = hex(concat!(
        "84ae636f7272656c6174696f6e5f6964a57273682d31ae636f7272656c6174696f6e5f6964a572",
        "73682d31a6737461747573ccc8a76865616465727381ac636f6e74656e742d7479706591b874",
        "6578742f68746d6c3b20636861727365743d7574662d38"
    ));
    // A plain struct decode refuses the repeated field, like rmp_serde and serde_json.
    assert!(from_slice::<crate::ResponseHeadersEvent>(&payload).is_err());
    assert!(rmp_serde::from_slice::<crate::ResponseHeadersEvent>(&payload).is_err());
    let event = crate::encoding::decode_event(
        crate::frame::FrameType::ResponseHeaders,
        crate::Encoding::MsgPack,
        &payload,
    )
    .unwrap()
    .unwrap();
    let crate::Event::ResponseHeaders(e) = event else {
        panic!("{event:?}")
    };
    assert_eq!(e.correlation_id, "rsh-1");
    assert_eq!(e.status, 200);
    assert_eq!(
        e.headers.get("content-type").unwrap().collect::<Vec<_>>(),
        ["text/html; charset=utf-8"]
    );
}

// ---- properties --------------------------------------------------------------------------

fn arb_json() -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
    use proptest::prelude::*;
    use serde_json::Value;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<u64>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,40}".prop_map(Value::String),
    ];
    leaf.prop_recursive(6, 128, 8, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            proptest::collection::btree_map(".{0,8}", inner, 0..8)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
        let _ = from_slice::<serde_json::Value>(&bytes);
        let _ = from_slice::<Generic>(&bytes);
        let _ = from_slice::<IgnoredAny>(&bytes);
        let _ = from_slice::<Response>(&bytes);
        let _ = from_slice::<Meta>(&bytes);
        let _ = from_slice::<Chunk>(&bytes);
        let _ = from_slice::<Decision>(&bytes);
        let _ = from_slice::<Vec<Option<String>>>(&bytes);
        let _ = from_slice::<HashMap<String, bytes::Bytes>>(&bytes);
    }

    #[test]
    fn mutated_valid_encodings_never_panic(
        idx in 0usize..1000,
        byte in proptest::prelude::any::<u8>(),
    ) {
        let mut b = rmp_serde::to_vec(&Response {
            version: 2,
            decision: Decision::Block { status: 403, body: Some("no".into()), headers: None },
            tags: vec!["t".into()],
            confidence: Some(0.25),
            custom: HashMap::from([("k".into(), serde_json::json!({"a": [1, 2]}))]),
        }).unwrap();
        let i = idx % b.len();
        b[i] = byte;
        let _ = from_slice::<Response>(&b);
        let _ = from_slice::<Generic>(&b);
        let _ = from_slice::<serde_json::Value>(&b);
        let _ = from_slice::<IgnoredAny>(&b);
    }

    #[test]
    fn json_values_round_trip(value in arb_json()) {
        let bytes = rmp_serde::to_vec(&value).unwrap();
        let back: serde_json::Value = from_slice(&bytes).unwrap();
        proptest::prop_assert_eq!(&back, &value);
        from_slice::<IgnoredAny>(&bytes).unwrap();
        for cut in 0..bytes.len() {
            proptest::prop_assert!(from_slice::<serde_json::Value>(&bytes[..cut]).is_err());
        }
    }
}
