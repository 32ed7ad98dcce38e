//! The contents of arrays and maps, handed to serde one element or entry at a time.
//!
//! A map key that is a `str` (the usual case) is read once and handed over as a [`StrKey`], which
//! answers every serde request as the main deserializer would on that `str`.

use serde::de::{self, DeserializeSeed, Visitor};
use serde::forward_to_deserialize_any;

use super::deserializer::Deserializer;
use super::enums::UnitOnly;
use super::error::MsgPackError;
use super::header::Header;
use super::Result;

/// Elements of an array; `remaining` is exact and never exceeds the remaining input bytes.
pub(super) struct SeqAccess<'a, 'de> {
    pub(super) de: &'a mut Deserializer<'de>,
    pub(super) remaining: usize,
}

impl<'de> de::SeqAccess<'de> for SeqAccess<'_, 'de> {
    type Error = MsgPackError;

    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>> {
        if self.remaining == 0 {
            return Ok(None);
        }
        self.remaining -= 1;
        let start = self.de.pos;
        seed.deserialize(&mut *self.de)
            .map(Some)
            .map_err(|e| e.at(start))
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.remaining.min(self.de.remaining()))
    }
}

/// Entries of a map; `remaining` is exact and never exceeds half the remaining input bytes.
pub(super) struct MapAccess<'a, 'de> {
    pub(super) de: &'a mut Deserializer<'de>,
    pub(super) remaining: usize,
}

impl<'de> de::MapAccess<'de> for MapAccess<'_, 'de> {
    type Error = MsgPackError;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>> {
        if self.remaining == 0 {
            return Ok(None);
        }
        self.remaining -= 1;
        let start = self.de.pos;
        let key = if let Header::Str(key) = self.de.read_header()? {
            // The usual case: hand over the string already read.
            let key = Deserializer::str_from_utf8(key, start, "map key")?;
            seed.deserialize(StrKey(key))
        } else {
            // Let the seed read any other key itself, however it wants to.
            self.de.pos = start;
            seed.deserialize(&mut *self.de)
        };
        key.map(Some).map_err(|e| e.at(start))
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value> {
        let start = self.de.pos;
        seed.deserialize(&mut *self.de).map_err(|e| e.at(start))
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.remaining.min(self.de.remaining() / 2))
    }
}

/// A map key that is a `str`, already read and validated: behaves as the main deserializer would
/// on that `str`.
struct StrKey<'de>(&'de str);

impl<'de> de::Deserializer<'de> for StrKey<'de> {
    type Error = MsgPackError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_borrowed_str(self.0)
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_borrowed_bytes(self.0.as_bytes())
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.deserialize_bytes(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_some(self)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value> {
        visitor.visit_enum(self)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_unit()
    }

    fn is_human_readable(&self) -> bool {
        false
    }

    forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string unit unit_struct
        seq tuple tuple_struct map struct identifier
    }
}

impl<'de> de::EnumAccess<'de> for StrKey<'de> {
    type Error = MsgPackError;
    type Variant = UnitOnly;

    fn variant_seed<V: DeserializeSeed<'de>>(self, seed: V) -> Result<(V::Value, UnitOnly)> {
        Ok((seed.deserialize(self)?, UnitOnly))
    }
}
