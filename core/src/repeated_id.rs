//! The one repeated key we accept: an event's top-level `correlation_id`, twice, with the same
//! value.
//!
//! The reference proxy writes most MessagePack events as a map whose `correlation_id` key appears
//! twice with the same value (a flattened wrapper adds its own copy). Everything else that
//! repeats a key is decided as `serde_json` decides it, in both encodings: a struct rejects a
//! repeated field, a header map merges a repeated name, other maps keep the last value. So the
//! tolerance is written here once, as a wrapper around whatever deserializer reads the event,
//! and applies to JSON and MessagePack alike:
//!
//! - at the top level of the event map, a `correlation_id` entry whose value is the same string
//!   as the first one is dropped before the event's own decoder sees it;
//! - a `correlation_id` repeated with a *different* value is an error: which of the two would
//!   the answer be routed by? The agent answers it fail-closed like any malformed event;
//! - nested maps, arrays and every other key pass through untouched.
//!
//! ```
//! use agent_protocol_core::encoding::decode_event;
//! use agent_protocol_core::frame::FrameType;
//! use agent_protocol_core::{Encoding, Event};
//!
//! let same = br#"{"correlation_id":"c1","correlation_id":"c1","status":200,"headers":{}}"#;
//! let event = decode_event(FrameType::ResponseHeaders, Encoding::Json, same).unwrap().unwrap();
//! assert_eq!(event.correlation_id(), "c1");
//!
//! let differ = br#"{"correlation_id":"c1","correlation_id":"c2","status":200,"headers":{}}"#;
//! assert!(decode_event(FrameType::ResponseHeaders, Encoding::Json, differ).unwrap().is_err());
//! ```

use std::borrow::Cow;
use std::fmt;

use serde::de::value::{BorrowedBytesDeserializer, BorrowedStrDeserializer, BytesDeserializer};
use serde::de::{self, DeserializeSeed, Deserializer, IntoDeserializer, MapAccess, Visitor};

const CORRELATION_ID: &str = "correlation_id";

/// Deserializes an event with `deserializer`, tolerating an identical repeated top-level
/// `correlation_id` (see the module docs).
pub(crate) fn deserialize<'de, T, D>(deserializer: D) -> Result<T, D::Error>
where
    T: de::Deserialize<'de>,
    D: Deserializer<'de>,
{
    T::deserialize(TopLevel(deserializer))
}

/// Wraps the deserializer of the whole event: every request is forwarded, with the visitor
/// wrapped so that the top-level map (and only it) goes through [`RepeatedIdMap`].
struct TopLevel<D>(D);

macro_rules! forward_wrapped {
    ($($method:ident),* $(,)?) => {
        $(
            fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
                self.0.$method(TopVisitor(visitor))
            }
        )*
    };
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for TopLevel<D> {
    type Error = D::Error;

    forward_wrapped!(
        deserialize_any,
        deserialize_map,
        deserialize_bool,
        deserialize_i8,
        deserialize_i16,
        deserialize_i32,
        deserialize_i64,
        deserialize_u8,
        deserialize_u16,
        deserialize_u32,
        deserialize_u64,
        deserialize_f32,
        deserialize_f64,
        deserialize_char,
        deserialize_str,
        deserialize_string,
        deserialize_bytes,
        deserialize_byte_buf,
        deserialize_option,
        deserialize_unit,
        deserialize_seq,
        deserialize_identifier,
        deserialize_ignored_any,
    );

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.0.deserialize_struct(name, fields, TopVisitor(visitor))
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.0.deserialize_newtype_struct(name, TopVisitor(visitor))
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.0.deserialize_unit_struct(name, TopVisitor(visitor))
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.0.deserialize_tuple(len, TopVisitor(visitor))
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.0
            .deserialize_tuple_struct(name, len, TopVisitor(visitor))
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.0.deserialize_enum(name, variants, TopVisitor(visitor))
    }

    fn is_human_readable(&self) -> bool {
        self.0.is_human_readable()
    }
}

/// The event's own visitor, handed the top-level map through [`RepeatedIdMap`]; every other
/// shape (a positional array, a newtype wrapper) is forwarded as it is.
struct TopVisitor<V>(V);

impl<'de, V: Visitor<'de>> Visitor<'de> for TopVisitor<V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        self.0.expecting(f)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<V::Value, A::Error> {
        self.0.visit_map(RepeatedIdMap {
            inner: map,
            first_id: None,
            capture: false,
        })
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<V::Value, D::Error> {
        // A newtype event (a body chunk) is its inner struct: keep looking for the map.
        self.0.visit_newtype_struct(TopLevel(d))
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, seq: A) -> Result<V::Value, A::Error> {
        self.0.visit_seq(seq)
    }
    fn visit_enum<A: de::EnumAccess<'de>>(self, data: A) -> Result<V::Value, A::Error> {
        self.0.visit_enum(data)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<V::Value, D::Error> {
        self.0.visit_some(d)
    }
    fn visit_none<E: de::Error>(self) -> Result<V::Value, E> {
        self.0.visit_none()
    }
    fn visit_unit<E: de::Error>(self) -> Result<V::Value, E> {
        self.0.visit_unit()
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<V::Value, E> {
        self.0.visit_bool(v)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<V::Value, E> {
        self.0.visit_i64(v)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<V::Value, E> {
        self.0.visit_u64(v)
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<V::Value, E> {
        self.0.visit_f64(v)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<V::Value, E> {
        self.0.visit_str(v)
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<V::Value, E> {
        self.0.visit_borrowed_str(v)
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<V::Value, E> {
        self.0.visit_string(v)
    }
    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<V::Value, E> {
        self.0.visit_bytes(v)
    }
    fn visit_borrowed_bytes<E: de::Error>(self, v: &'de [u8]) -> Result<V::Value, E> {
        self.0.visit_borrowed_bytes(v)
    }
    fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<V::Value, E> {
        self.0.visit_byte_buf(v)
    }
}

/// The top-level map of an event: drops a repeated `correlation_id` entry whose value equals the
/// first one, refuses one that differs, and passes every other entry through.
struct RepeatedIdMap<'de, A> {
    inner: A,
    /// The value of the first `correlation_id` entry, once read.
    first_id: Option<Cow<'de, str>>,
    /// The key just handed out was the first `correlation_id`: read its value ourselves.
    capture: bool,
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for RepeatedIdMap<'de, A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        loop {
            let Some(key) = self.inner.next_key::<Key<'de>>()? else {
                return Ok(None);
            };
            if key.is_correlation_id() {
                match &self.first_id {
                    None => self.capture = true,
                    Some(first) => {
                        let again = self.inner.next_value::<Text<'de>>()?.0;
                        if again == *first {
                            continue;
                        }
                        return Err(de::Error::custom(
                            "correlation_id repeated with a different value",
                        ));
                    }
                }
            }
            return key.hand_to(seed).map(Some);
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, A::Error> {
        if !std::mem::take(&mut self.capture) {
            return self.inner.next_value_seed(seed);
        }
        let id = self.inner.next_value::<Text<'de>>()?.0;
        let value = match &id {
            Cow::Borrowed(s) => seed.deserialize(BorrowedStrDeserializer::new(s)),
            Cow::Owned(s) => seed.deserialize(s.as_str().into_deserializer()),
        };
        self.first_id = Some(id);
        value
    }

    fn size_hint(&self) -> Option<usize> {
        self.inner.size_hint()
    }
}

/// A map key as the decoder produced it, so the event's own field visitor sees exactly what it
/// would have seen without the wrapper (a `str`, the bytes of a MessagePack `bin`, or a field
/// index).
enum Key<'de> {
    Str(Cow<'de, str>),
    Bytes(Cow<'de, [u8]>),
    Index(u64),
}

impl<'de> Key<'de> {
    fn is_correlation_id(&self) -> bool {
        match self {
            Key::Str(s) => s == CORRELATION_ID,
            Key::Bytes(b) => **b == *CORRELATION_ID.as_bytes(),
            Key::Index(_) => false,
        }
    }

    fn hand_to<K: DeserializeSeed<'de>, E: de::Error>(self, seed: K) -> Result<K::Value, E> {
        match self {
            Key::Str(Cow::Borrowed(s)) => seed.deserialize(BorrowedStrDeserializer::new(s)),
            Key::Str(Cow::Owned(s)) => seed.deserialize(s.into_deserializer()),
            Key::Bytes(Cow::Borrowed(b)) => seed.deserialize(BorrowedBytesDeserializer::new(b)),
            Key::Bytes(Cow::Owned(b)) => seed.deserialize(BytesDeserializer::new(&b)),
            Key::Index(i) => seed.deserialize(i.into_deserializer()),
        }
    }
}

impl<'de> de::Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a field name")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key::Str(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key::Str(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Key<'de>, E> {
                Ok(Key::Str(Cow::Owned(v)))
            }
            fn visit_borrowed_bytes<E: de::Error>(self, v: &'de [u8]) -> Result<Key<'de>, E> {
                Ok(Key::Bytes(Cow::Borrowed(v)))
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Key<'de>, E> {
                Ok(Key::Bytes(Cow::Owned(v.to_owned())))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Key<'de>, E> {
                Ok(Key::Index(v))
            }
        }
        d.deserialize_identifier(V)
    }
}

/// A string value, borrowed from the input when the input allows it.
struct Text<'de>(Cow<'de, str>);

impl<'de> de::Deserialize<'de> for Text<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a correlation id string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}
