//! Enums: a bare `str`/`bin` names a unit variant; a one-entry map `{variant: content}` carries
//! any variant, its content a value, an array or a map.

use serde::de::{self, DeserializeSeed, Visitor};

use super::deserializer::Deserializer;
use super::error::MsgPackError;
use super::header::Header;
use super::Result;

/// The content of an enum given as a bare `str`/`bin`: only a unit variant fits.
pub(super) struct UnitOnly;

impl<'de> de::VariantAccess<'de> for UnitOnly {
    type Error = MsgPackError;

    fn unit_variant(self) -> Result<()> {
        Ok(())
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, _seed: T) -> Result<T::Value> {
        Err(de::Error::invalid_type(
            de::Unexpected::UnitVariant,
            &"a newtype variant (a one-entry map)",
        ))
    }

    fn tuple_variant<V: Visitor<'de>>(self, _len: usize, _visitor: V) -> Result<V::Value> {
        Err(de::Error::invalid_type(
            de::Unexpected::UnitVariant,
            &"a tuple variant (a one-entry map)",
        ))
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        _fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value> {
        Err(de::Error::invalid_type(
            de::Unexpected::UnitVariant,
            &"a struct variant (a one-entry map)",
        ))
    }
}

/// An enum given as a bare `str`/`bin`: only a unit variant fits.
pub(super) struct UnitVariantAccess<'a, 'de> {
    pub(super) de: &'a mut Deserializer<'de>,
}

impl<'de> de::EnumAccess<'de> for UnitVariantAccess<'_, 'de> {
    type Error = MsgPackError;
    type Variant = UnitOnly;

    fn variant_seed<V: DeserializeSeed<'de>>(self, seed: V) -> Result<(V::Value, UnitOnly)> {
        let value = seed.deserialize(&mut *self.de)?;
        Ok((value, UnitOnly))
    }
}

/// An enum given as a one-entry map `{variant: content}`; the map header is already consumed.
pub(super) struct MapVariantAccess<'a, 'de> {
    pub(super) de: &'a mut Deserializer<'de>,
}

impl<'de> de::EnumAccess<'de> for MapVariantAccess<'_, 'de> {
    type Error = MsgPackError;
    type Variant = Self;

    fn variant_seed<V: DeserializeSeed<'de>>(self, seed: V) -> Result<(V::Value, Self)> {
        let start = self.de.pos;
        let value = seed.deserialize(&mut *self.de).map_err(|e| e.at(start))?;
        Ok((value, self))
    }
}

impl<'de> de::VariantAccess<'de> for MapVariantAccess<'_, 'de> {
    type Error = MsgPackError;

    /// `{variant: nil}` or `{variant: []}`.
    fn unit_variant(self) -> Result<()> {
        let start = self.de.pos;
        match self.de.read_header()? {
            Header::Nil | Header::Array(0) => Ok(()),
            other => Err(MsgPackError::new(
                start,
                format!(
                    "unit variant content must be nil or an empty array, found {}",
                    other.kind()
                ),
            )),
        }
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value> {
        seed.deserialize(&mut *self.de)
    }

    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value> {
        de::Deserializer::deserialize_tuple(&mut *self.de, len, visitor)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value> {
        de::Deserializer::deserialize_struct(&mut *self.de, "", fields, visitor)
    }
}
