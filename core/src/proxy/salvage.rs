//! Reading the correlation id of an AgentResponse that does not decode, so that only its
//! request fails rather than the whole connection.

use serde::de::IgnoredAny;
use serde::Deserialize;

use crate::encoding::{self, Encoding};

/// Finds `audit.custom.correlation_id` in an AgentResponse that failed to decode as a whole
/// (map or the reference's positional array, where `audit` is element 5).
///
/// Nothing but the id is built: every other value is skipped unread, so salvaging an answer
/// refused for its size (millions of `audit.custom` entries, say) allocates nothing per entry.
pub(super) fn salvage_response_id(encoding: Encoding, payload: &[u8]) -> Option<String> {
    #[derive(Deserialize, Default)]
    #[serde(default)]
    struct Audit {
        tags: IgnoredAny,
        rule_ids: IgnoredAny,
        confidence: IgnoredAny,
        reason_codes: IgnoredAny,
        custom: CustomId,
    }
    #[derive(Deserialize, Default)]
    #[serde(default)]
    struct Probe {
        version: IgnoredAny,
        decision: IgnoredAny,
        request_headers: IgnoredAny,
        response_headers: IgnoredAny,
        routing_metadata: IgnoredAny,
        audit: Audit,
    }
    let probe: Probe = match encoding::effective_encoding(encoding, payload) {
        Encoding::Json => serde_json::from_slice(payload).ok()?,
        Encoding::MsgPack => crate::msgpack::from_slice(payload).ok()?,
    };
    probe.audit.custom.0
}

/// The `audit.custom` map, read for its correlation id alone (the last one, if the key repeats;
/// `None` unless it is a string).
#[derive(Default)]
struct CustomId(Option<String>);

impl<'de> Deserialize<'de> for CustomId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MapVisitor;
        impl<'de> serde::de::Visitor<'de> for MapVisitor {
            type Value = CustomId;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a map")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<CustomId, A::Error> {
                let mut id = None;
                while let Some(key) = map.next_key::<crate::event::KeyName>()? {
                    if key.0 == crate::response::CORRELATION_KEY {
                        id = map.next_value::<StringOrSkip>()?.0;
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(CustomId(id))
            }
        }
        deserializer.deserialize_map(MapVisitor)
    }
}

/// A string, or any other value skipped unread (`None`).
struct StringOrSkip(Option<String>);

impl<'de> Deserialize<'de> for StringOrSkip {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = StringOrSkip;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("any value")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<StringOrSkip, E> {
                Ok(StringOrSkip(Some(v.to_owned())))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<StringOrSkip, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(StringOrSkip(None))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<StringOrSkip, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(StringOrSkip(None))
            }
            fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<StringOrSkip, E> {
                Ok(StringOrSkip(None))
            }
            fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<StringOrSkip, E> {
                Ok(StringOrSkip(None))
            }
            fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<StringOrSkip, E> {
                Ok(StringOrSkip(None))
            }
            fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<StringOrSkip, E> {
                Ok(StringOrSkip(None))
            }
            fn visit_bytes<E: serde::de::Error>(self, _: &[u8]) -> Result<StringOrSkip, E> {
                Ok(StringOrSkip(None))
            }
            fn visit_unit<E: serde::de::Error>(self) -> Result<StringOrSkip, E> {
                Ok(StringOrSkip(None))
            }
        }
        deserializer.deserialize_any(V)
    }
}
