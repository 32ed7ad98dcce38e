//! Body bytes on the wire: base64 text in JSON, raw `bin` in MessagePack.
//!
//! Body data is `bytes::Bytes` everywhere in this crate; the conversion happens only here, at the
//! encoding edge, chosen by the serializer's `is_human_readable()` (true for JSON, false for
//! MessagePack). On input a string is always base64 (standard alphabet, padded) and raw bytes
//! are taken as they are, so both the reference's string and binary forms decode. Unlike the
//! reference, text that is not valid base64 is an error, not silently taken as raw bytes.

use std::fmt;

use base64::Engine;
use bytes::Bytes;
use serde::de::Visitor;
use serde::{Deserializer, Serializer};

/// The base64 engine of the protocol: standard alphabet with padding.
pub const BASE64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Serializes body bytes (for `#[serde(serialize_with = "crate::body::serialize")]`).
pub fn serialize<S: Serializer>(data: &Bytes, serializer: S) -> Result<S::Ok, S::Error> {
    if serializer.is_human_readable() {
        serializer.serialize_str(&BASE64.encode(data))
    } else {
        serializer.serialize_bytes(data)
    }
}

/// Deserializes body bytes from a base64 string or raw bytes.
pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Bytes, D::Error> {
    deserializer.deserialize_any(BodyVisitor)
}

/// Serializes optional body bytes (`None` as null).
pub fn serialize_opt<S: Serializer>(
    data: &Option<Bytes>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match data {
        Some(d) => serialize(d, serializer),
        None => serializer.serialize_none(),
    }
}

/// Deserializes optional body bytes (null or missing as `None`).
pub fn deserialize_opt<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Bytes>, D::Error> {
    struct OptVisitor;
    impl<'de> Visitor<'de> for OptVisitor {
        type Value = Option<Bytes>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("null, base64 text or bytes")
        }
        fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            deserialize(d).map(Some)
        }
    }
    deserializer.deserialize_option(OptVisitor)
}

/// Decodes base64 text into bytes, with an error that says what was wrong.
pub fn decode_base64(text: &str) -> Result<Bytes, base64::DecodeError> {
    BASE64.decode(text).map(Bytes::from)
}

/// Visitor shared by every body field.
pub(crate) struct BodyVisitor;

impl<'de> Visitor<'de> for BodyVisitor {
    type Value = Bytes;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("base64 text or bytes")
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Bytes, E> {
        decode_base64(v).map_err(|e| E::custom(format_args!("body data is not valid base64: {e}")))
    }

    fn visit_borrowed_bytes<E: serde::de::Error>(self, v: &'de [u8]) -> Result<Bytes, E> {
        // Binary read straight out of the frame being decoded is shared, not copied.
        Ok(crate::shared_frame::slice(v).unwrap_or_else(|| Bytes::copy_from_slice(v)))
    }

    fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Bytes, E> {
        Ok(Bytes::copy_from_slice(v))
    }

    fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Bytes, E> {
        Ok(Bytes::from(v))
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Bytes, A::Error> {
        // An array of byte values: what a generic serializer may produce for raw bytes.
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 16));
        while let Some(b) = seq.next_element::<u8>()? {
            out.push(b);
        }
        Ok(Bytes::from(out))
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<Bytes, E> {
        Err(E::custom("body data is null"))
    }

    fn visit_none<E: serde::de::Error>(self) -> Result<Bytes, E> {
        Err(E::invalid_type(serde::de::Unexpected::Option, &self))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::{Deserialize, Serialize};

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct Chunk {
        #[serde(with = "crate::body")]
        data: Bytes,
    }

    #[test]
    fn json_is_base64_and_msgpack_is_bin() {
        let c = Chunk {
            data: Bytes::from_static(&[0, 0xff, b'a']),
        };
        assert_eq!(serde_json::to_string(&c).unwrap(), r#"{"data":"AP9h"}"#);
        let mp = rmp_serde::to_vec_named(&c).unwrap();
        // fixmap(1), fixstr "data", bin8 len 3
        assert_eq!(
            &mp[..],
            &[0x81, 0xa4, b'd', b'a', b't', b'a', 0xc4, 3, 0, 0xff, b'a']
        );
        let back: Chunk = serde_json::from_str(r#"{"data":"AP9h"}"#).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn invalid_base64_is_an_error_not_raw_bytes() {
        let err = serde_json::from_str::<Chunk>(r#"{"data":"not base64!"}"#).unwrap_err();
        assert!(err.to_string().contains("base64"), "{err}");
    }
}
