//! How an [`AgentResponse`] is written and read: its routing id travels inside the audit data.
//!
//! On the wire of framed transports an answer names its request in
//! `audit.custom.correlation_id`; in memory the id is [`AgentResponse::correlation_id`]. Writing
//! puts the id into `custom` as the answer is serialized (in the place a map insert would give
//! it, overriding a handler's own value under that key, without touching the handler's map);
//! reading takes it out as the map is deserialized. Routing an answer then costs no map entry,
//! no `serde_json::Value` and no copy of the key on either side.
//!
//! Reading follows the map's own rule for a repeated key: the last `correlation_id` wins, and it
//! is the routing id only if it is a string (anything else stays in `custom`, and the answer
//! has no routing id), as it would be had the whole map been read first. Both encodings go
//! through the same visitor, so they reach the same answer.

use std::collections::HashMap;
use std::fmt;

use serde::de::{self, MapAccess, Visitor};
use serde::ser::{SerializeMap, SerializeStruct};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

use crate::byte_str::ByteStr;
use crate::response::{
    AgentResponse, AuditMetadata, BodyMutation, Decision, HeaderOp, WebSocketDecision,
    CORRELATION_KEY,
};

impl Serialize for AgentResponse {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // Field by field as the derived form of the struct writes them.
        let mut s = serializer.serialize_struct("AgentResponse", 10)?;
        s.serialize_field("version", &self.version)?;
        s.serialize_field("decision", &self.decision)?;
        s.serialize_field("request_headers", &self.request_headers)?;
        s.serialize_field("response_headers", &self.response_headers)?;
        s.serialize_field("routing_metadata", &self.routing_metadata)?;
        let audit = AuditOut {
            audit: &self.audit,
            correlation_id: self.correlation_id.as_deref(),
        };
        s.serialize_field("audit", &audit)?;
        s.serialize_field("needs_more", &self.needs_more)?;
        s.serialize_field("request_body_mutation", &self.request_body_mutation)?;
        s.serialize_field("response_body_mutation", &self.response_body_mutation)?;
        s.serialize_field("websocket_decision", &self.websocket_decision)?;
        s.end()
    }
}

/// The audit data as written: the handler's, with the routing id in `custom`.
struct AuditOut<'a> {
    audit: &'a AuditMetadata,
    correlation_id: Option<&'a str>,
}

impl Serialize for AuditOut<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let a = self.audit;
        let mut s = serializer.serialize_struct("AuditMetadata", 5)?;
        s.serialize_field("tags", &a.tags)?;
        s.serialize_field("rule_ids", &a.rule_ids)?;
        s.serialize_field("confidence", &a.confidence)?;
        s.serialize_field("reason_codes", &a.reason_codes)?;
        match self.correlation_id {
            None => s.serialize_field("custom", &a.custom)?,
            Some(id) => s.serialize_field("custom", &CustomOut { map: &a.custom, id })?,
        }
        s.end()
    }
}

/// `custom` with the routing id inserted: keys stay in the map's (sorted) order.
struct CustomOut<'a> {
    map: &'a Map<String, Value>,
    id: &'a str,
}

impl Serialize for CustomOut<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let replaces = self.map.contains_key(CORRELATION_KEY);
        let len = self.map.len() + usize::from(!replaces);
        let mut m = serializer.serialize_map(Some(len))?;
        let mut id = Some(self.id);
        for (key, value) in self.map {
            if key.as_str() >= CORRELATION_KEY {
                if let Some(id) = id.take() {
                    m.serialize_entry(CORRELATION_KEY, id)?;
                }
                if key == CORRELATION_KEY {
                    continue;
                }
            }
            m.serialize_entry(key, value)?;
        }
        if let Some(id) = id {
            m.serialize_entry(CORRELATION_KEY, id)?;
        }
        m.end()
    }
}

/// The answer as read, field for field what the derived form of [`AgentResponse`] reads.
#[derive(Deserialize)]
#[serde(rename = "AgentResponse")]
struct ResponseIn {
    version: u32,
    decision: Decision,
    #[serde(default)]
    request_headers: Vec<HeaderOp>,
    #[serde(default)]
    response_headers: Vec<HeaderOp>,
    #[serde(default)]
    routing_metadata: HashMap<String, String>,
    #[serde(default)]
    audit: AuditIn,
    #[serde(default)]
    needs_more: bool,
    #[serde(default)]
    request_body_mutation: Option<BodyMutation>,
    #[serde(default)]
    response_body_mutation: Option<BodyMutation>,
    #[serde(default)]
    websocket_decision: Option<WebSocketDecision>,
}

#[derive(Default, Deserialize)]
#[serde(default, rename = "AuditMetadata")]
struct AuditIn {
    tags: Vec<String>,
    rule_ids: Vec<String>,
    confidence: Option<f32>,
    reason_codes: Vec<String>,
    custom: CustomIn,
}

/// `custom` as read: the routing id apart from the rest.
#[derive(Default)]
struct CustomIn {
    map: Map<String, Value>,
    id: Option<ByteStr>,
}

impl<'de> Deserialize<'de> for AgentResponse {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let r = ResponseIn::deserialize(deserializer)?;
        let AuditIn {
            tags,
            rule_ids,
            confidence,
            reason_codes,
            custom: CustomIn { map, id },
        } = r.audit;
        Ok(AgentResponse {
            version: r.version,
            decision: r.decision,
            request_headers: r.request_headers,
            response_headers: r.response_headers,
            routing_metadata: r.routing_metadata,
            audit: AuditMetadata {
                tags,
                rule_ids,
                confidence,
                reason_codes,
                custom: map,
            },
            needs_more: r.needs_more,
            request_body_mutation: r.request_body_mutation,
            response_body_mutation: r.response_body_mutation,
            websocket_decision: r.websocket_decision,
            correlation_id: id,
        })
    }
}

impl<'de> Deserialize<'de> for CustomIn {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(CustomVisitor)
    }
}

struct CustomVisitor;

impl<'de> Visitor<'de> for CustomVisitor {
    type Value = CustomIn;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a map of custom audit values")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<CustomIn, A::Error> {
        let mut custom = CustomIn::default();
        while let Some(key) = access.next_key::<Key>()? {
            match key {
                Key::Routing => match access.next_value::<Value>()? {
                    Value::String(id) => {
                        custom.map.remove(CORRELATION_KEY);
                        custom.id = Some(id.into());
                    }
                    other => {
                        custom.id = None;
                        custom.map.insert(CORRELATION_KEY.to_owned(), other);
                    }
                },
                Key::Other(key) => {
                    let value = access.next_value()?;
                    custom.map.insert(key, value);
                }
            }
        }
        Ok(custom)
    }
}

/// A key of `custom`: the routing key is recognised without copying it.
enum Key {
    Routing,
    Other(String),
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(KeyVisitor)
    }
}

struct KeyVisitor;

impl Visitor<'_> for KeyVisitor {
    type Value = Key;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string key")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<Key, E> {
        Ok(if key == CORRELATION_KEY {
            Key::Routing
        } else {
            Key::Other(key.to_owned())
        })
    }

    fn visit_bytes<E: de::Error>(self, key: &[u8]) -> Result<Key, E> {
        // As a `String` key reads bytes: only if they are UTF-8.
        match std::str::from_utf8(key) {
            Ok(key) => self.visit_str(key),
            Err(_) => Err(E::invalid_value(de::Unexpected::Bytes(key), &self)),
        }
    }

    fn visit_string<E: de::Error>(self, key: String) -> Result<Key, E> {
        Ok(if key == CORRELATION_KEY {
            Key::Routing
        } else {
            Key::Other(key)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encoding::{decode_payload, Encoding};
    use crate::frame::FrameType;
    use proptest::prelude::*;

    /// The answer as the derived form writes it, the id inserted into `custom` beforehand:
    /// what the wire carried before the id moved out of the map.
    #[derive(Serialize)]
    struct Derived<'a> {
        version: u32,
        decision: &'a Decision,
        request_headers: &'a Vec<HeaderOp>,
        response_headers: &'a Vec<HeaderOp>,
        routing_metadata: &'a HashMap<String, String>,
        audit: AuditMetadata,
        needs_more: bool,
        request_body_mutation: &'a Option<BodyMutation>,
        response_body_mutation: &'a Option<BodyMutation>,
        websocket_decision: &'a Option<WebSocketDecision>,
    }

    fn derived(r: &AgentResponse) -> Derived<'_> {
        let mut audit = r.audit.clone();
        if let Some(id) = r.correlation_id() {
            audit
                .custom
                .insert(CORRELATION_KEY.to_owned(), Value::String(id.to_owned()));
        }
        Derived {
            version: r.version,
            decision: &r.decision,
            request_headers: &r.request_headers,
            response_headers: &r.response_headers,
            routing_metadata: &r.routing_metadata,
            audit,
            needs_more: r.needs_more,
            request_body_mutation: &r.request_body_mutation,
            response_body_mutation: &r.response_body_mutation,
            websocket_decision: &r.websocket_decision,
        }
    }

    fn decode(encoding: Encoding, bytes: &[u8]) -> AgentResponse {
        decode_payload(FrameType::AgentResponse, encoding, bytes).unwrap()
    }

    fn msgpack<T: Serialize>(value: &T) -> Vec<u8> {
        rmp_serde::to_vec_named(value).unwrap()
    }

    /// Keys on both sides of the routing key in sorted order, and the key itself.
    fn key() -> impl Strategy<Value = String> {
        prop::sample::select(vec![
            "a",
            "correlation",
            "correlation_i",
            "correlation_id",
            "correlation_id0",
            "correlation_ie",
            "z",
        ])
        .prop_map(str::to_owned)
    }

    proptest! {
        /// Written byte for byte as the id inserted into the map and the derived form gave,
        /// in both encodings; read back to the same answer.
        #[test]
        fn writes_what_the_map_insert_wrote(
            custom in prop::collection::btree_map(key(), any::<i32>(), 0..5),
            id in prop::option::of("[a-z0-9-]{0,12}"),
            block in any::<bool>(),
        ) {
            let decision = if block { Decision::block(403, Some("no".into())) } else { Decision::Allow };
            let mut r = AgentResponse::new(decision);
            r.audit.custom = custom.into_iter().map(|(k, v)| (k, Value::from(v))).collect();
            r.correlation_id = id.map(ByteStr::from);
            let json = serde_json::to_vec(&r).unwrap();
            prop_assert_eq!(&json, &serde_json::to_vec(&derived(&r)).unwrap());
            let mp = msgpack(&r);
            prop_assert_eq!(&mp, &msgpack(&derived(&r)));
            // Read back: the id out of the map, the handler's own key under it replaced.
            let mut expected = r.clone();
            if expected.correlation_id.is_some() {
                expected.audit.custom.remove(CORRELATION_KEY);
            } else if let Some(own) = expected.audit.custom.remove(CORRELATION_KEY) {
                // A number there is not a routing id: it stays a custom value.
                expected.audit.custom.insert(CORRELATION_KEY.to_owned(), own);
            }
            prop_assert_eq!(&decode(Encoding::Json, &json), &expected);
            prop_assert_eq!(&decode(Encoding::MsgPack, &mp), &expected);
        }
    }

    /// A repeated routing key reads as a map would: the last one counts, and only a string
    /// routes. Both encodings agree.
    #[test]
    fn the_last_routing_key_wins_in_both_encodings() {
        // The custom entries in order; the routing id and number of custom values read.
        type Case<'a> = (&'a [(&'a str, Value)], Option<&'a str>, usize);
        let cases: [Case<'_>; 4] = [
            (
                &[
                    ("correlation_id", Value::from("a")),
                    ("correlation_id", Value::from(5)),
                ],
                None,
                1,
            ),
            (
                &[
                    ("correlation_id", Value::from(5)),
                    ("correlation_id", Value::from("b")),
                ],
                Some("b"),
                0,
            ),
            (
                &[
                    ("correlation_id", Value::from("a")),
                    ("correlation_id", Value::from("c")),
                ],
                Some("c"),
                0,
            ),
            (
                &[("correlation_id", Value::Null), ("k", Value::from(1))],
                None,
                2,
            ),
        ];
        for (entries, id, custom_len) in cases {
            let body: Vec<String> = entries
                .iter()
                .map(|(k, v)| format!("{}:{}", Value::from(*k), v))
                .collect();
            let json = format!(
                r#"{{"version":2,"decision":"allow","audit":{{"custom":{{{}}}}}}}"#,
                body.join(",")
            );
            let from_json = decode(Encoding::Json, json.as_bytes());
            // The same map in MessagePack, duplicates kept (a map type cannot hold them).
            let mut mp = Vec::new();
            rmp::encode::write_map_len(&mut mp, 3).unwrap();
            rmp::encode::write_str(&mut mp, "version").unwrap();
            rmp::encode::write_uint(&mut mp, 2).unwrap();
            rmp::encode::write_str(&mut mp, "decision").unwrap();
            rmp::encode::write_str(&mut mp, "allow").unwrap();
            rmp::encode::write_str(&mut mp, "audit").unwrap();
            rmp::encode::write_map_len(&mut mp, 1).unwrap();
            rmp::encode::write_str(&mut mp, "custom").unwrap();
            rmp::encode::write_map_len(&mut mp, entries.len() as u32).unwrap();
            for (k, v) in entries {
                rmp::encode::write_str(&mut mp, k).unwrap();
                mp.extend(msgpack(v));
            }
            let from_mp = decode(Encoding::MsgPack, &mp);
            for r in [&from_json, &from_mp] {
                assert_eq!(r.correlation_id(), id, "{json}");
                assert_eq!(r.audit.custom.len(), custom_len, "{json}");
            }
            assert_eq!(from_json, from_mp, "{json}");
        }
    }
}
