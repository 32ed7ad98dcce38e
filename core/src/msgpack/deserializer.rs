//! The deserializer proper: how each serde request (`deserialize_str`, `deserialize_struct`, ...)
//! is answered from the next value header, and where nesting is bounded.
//!
//! Reading bytes and headers is in [`cursor`](super::cursor) and [`header`](super::header); the
//! walk through arrays and maps in [`containers`](super::containers), and enums in
//! [`enums`](super::enums).

use rmp::Marker;
use serde::de::{self, Visitor};
use serde::forward_to_deserialize_any;

use super::containers::{MapAccess, SeqAccess};
use super::enums::{MapVariantAccess, UnitVariantAccess};
use super::error::MsgPackError;
use super::header::Header;
use super::{Result, MAX_DEPTH};

/// The deserializer proper: a cursor into the input and the current nesting depth.
///
/// Its methods are spread over this module's files by level: bytes in `cursor`, headers in
/// `header`, serde requests here.
pub(crate) struct Deserializer<'de> {
    pub(super) input: &'de [u8],
    /// Offset of the next unread byte; every error names an offset, so this is read everywhere.
    pub(super) pos: usize,
    depth: usize,
}

impl<'de> Deserializer<'de> {
    /// A deserializer at the start of `input`, outside any container.
    pub(super) fn new(input: &'de [u8]) -> Self {
        Deserializer {
            input,
            pos: 0,
            depth: 0,
        }
    }

    fn enter(&mut self, start: usize) -> Result<()> {
        if self.depth >= MAX_DEPTH {
            return Err(MsgPackError::new(
                start,
                format!("nesting deeper than {MAX_DEPTH} levels"),
            ));
        }
        self.depth += 1;
        Ok(())
    }

    pub(super) fn str_from_utf8(bytes: &'de [u8], start: usize, what: &str) -> Result<&'de str> {
        std::str::from_utf8(bytes)
            .map_err(|e| MsgPackError::new(start, format!("{what} is not valid UTF-8: {e}")))
    }

    /// Hands an already-read header to `visitor` the natural way (`deserialize_any`).
    fn visit_header<V: Visitor<'de>>(
        &mut self,
        header: Header<'de>,
        start: usize,
        visitor: V,
    ) -> Result<V::Value> {
        match header {
            Header::Nil => visitor.visit_unit(),
            Header::Bool(b) => visitor.visit_bool(b),
            Header::Uint(v) => visitor.visit_u64(v),
            Header::Int(v) => visitor.visit_i64(v),
            Header::F32(v) => visitor.visit_f32(v),
            Header::F64(v) => visitor.visit_f64(v),
            Header::Str(bytes) => {
                visitor.visit_borrowed_str(Self::str_from_utf8(bytes, start, "str")?)
            }
            Header::Bin(bytes) => visitor.visit_borrowed_bytes(bytes),
            Header::Array(len) => self.visit_array(len, start, visitor),
            Header::Map(len) => self.visit_map(len, start, visitor),
            Header::Ext => Err(MsgPackError::new(
                start,
                "MessagePack ext values are not supported",
            )),
        }
    }

    fn visit_array<V: Visitor<'de>>(
        &mut self,
        len: usize,
        start: usize,
        visitor: V,
    ) -> Result<V::Value> {
        self.enter(start)?;
        let mut access = SeqAccess {
            de: self,
            remaining: len,
        };
        let result = visitor.visit_seq(&mut access);
        let left = access.remaining;
        self.depth -= 1;
        let value = result?;
        if left != 0 {
            return Err(MsgPackError::new(
                self.pos,
                format!("array of {len} element(s) is too long: {left} element(s) left unread"),
            ));
        }
        Ok(value)
    }

    fn visit_map<V: Visitor<'de>>(
        &mut self,
        len: usize,
        start: usize,
        visitor: V,
    ) -> Result<V::Value> {
        self.enter(start)?;
        let mut access = MapAccess {
            de: self,
            remaining: len,
        };
        let result = visitor.visit_map(&mut access);
        let left = access.remaining;
        self.depth -= 1;
        let value = result?;
        if left != 0 {
            return Err(MsgPackError::new(
                self.pos,
                format!("map of {len} entries: {left} entries left unread"),
            ));
        }
        Ok(value)
    }

    fn any<V: Visitor<'de>>(&mut self, visitor: V) -> Result<V::Value> {
        let start = self.pos;
        let header = self.read_header()?;
        self.visit_header(header, start, visitor)
    }

    fn string_like<V: Visitor<'de>>(&mut self, visitor: V, identifier: bool) -> Result<V::Value> {
        let start = self.pos;
        match self.read_header()? {
            Header::Str(bytes) => {
                visitor.visit_borrowed_str(Self::str_from_utf8(bytes, start, "str")?)
            }
            Header::Bin(bytes) => match std::str::from_utf8(bytes) {
                Ok(s) => visitor.visit_borrowed_str(s),
                // Field and variant identifiers also match on bytes; let the visitor decide.
                Err(_) if identifier => visitor.visit_borrowed_bytes(bytes),
                Err(e) => Err(MsgPackError::new(
                    start,
                    format!("bin used as a string is not valid UTF-8: {e}"),
                )),
            },
            other => self.visit_header(other, start, visitor),
        }
    }

    fn bytes_like<V: Visitor<'de>>(&mut self, visitor: V) -> Result<V::Value> {
        let start = self.pos;
        match self.read_header()? {
            Header::Str(bytes) | Header::Bin(bytes) => visitor.visit_borrowed_bytes(bytes),
            other => self.visit_header(other, start, visitor),
        }
    }

    fn option<V: Visitor<'de>>(&mut self, visitor: V) -> Result<V::Value> {
        if self.peek_byte() == Some(Marker::Null.to_u8()) {
            self.pos += 1;
            visitor.visit_none()
        } else {
            visitor.visit_some(self)
        }
    }

    fn enumeration<V: Visitor<'de>>(&mut self, name: &str, visitor: V) -> Result<V::Value> {
        let start = self.pos;
        match self.read_header()? {
            Header::Str(_) | Header::Bin(_) => {
                self.pos = start;
                visitor.visit_enum(UnitVariantAccess { de: self })
            }
            Header::Map(1) => {
                self.enter(start)?;
                let result = visitor.visit_enum(MapVariantAccess { de: self });
                self.depth -= 1;
                result
            }
            Header::Map(n) => Err(MsgPackError::new(
                start,
                format!("enum {name} as a map needs exactly one entry, found {n}"),
            )),
            other => Err(MsgPackError::new(
                start,
                format!(
                    "enum {name} must be a str or a one-entry map, found {}",
                    other.kind()
                ),
            )),
        }
    }
}

impl<'de> de::Deserializer<'de> for &mut Deserializer<'de> {
    type Error = MsgPackError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        let start = self.pos;
        self.any(visitor).map_err(|e| e.at(start))
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        let start = self.pos;
        self.option(visitor).map_err(|e| e.at(start))
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        let start = self.pos;
        self.string_like(visitor, false).map_err(|e| e.at(start))
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.deserialize_str(visitor)
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        let start = self.pos;
        self.string_like(visitor, true).map_err(|e| e.at(start))
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        let start = self.pos;
        self.bytes_like(visitor).map_err(|e| e.at(start))
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.deserialize_bytes(visitor)
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
        name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value> {
        let start = self.pos;
        self.enumeration(name, visitor).map_err(|e| e.at(start))
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.skip_value()?;
        visitor.visit_unit()
    }

    fn is_human_readable(&self) -> bool {
        false
    }

    // Containers and unit take only their own type, as serde_json's do: a visitor that also
    // accepts `nil` (serde_json's `Map` does) must not get it here when JSON's `null` would be
    // refused, or one logical message would be decided two ways.
    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.typed(&["map"], visitor)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value> {
        self.typed(&["map", "array"], visitor)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.typed(&["array"], visitor)
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, _len: usize, visitor: V) -> Result<V::Value> {
        self.typed(&["array"], visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value> {
        self.typed(&["array"], visitor)
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.typed(&["nil"], visitor)
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value> {
        self.typed(&["nil"], visitor)
    }

    forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char
    }
}

impl<'de> Deserializer<'de> {
    /// Reads a value that must be of one of the `kinds` (as [`Header::kind`] names them) and
    /// hands it to `visitor`; any other type is an error naming what was expected.
    fn typed<V: Visitor<'de>>(&mut self, kinds: &[&str], visitor: V) -> Result<V::Value> {
        let start = self.pos;
        let header = self.read_header()?;
        if !kinds.contains(&header.kind()) {
            let err: MsgPackError = de::Error::invalid_type(unexpected(&header), &visitor);
            return Err(err.at(start));
        }
        self.visit_header(header, start, visitor)
            .map_err(|e| e.at(start))
    }
}

/// The serde description of a value of `header`'s type, for type errors.
fn unexpected<'a>(header: &Header<'a>) -> de::Unexpected<'a> {
    match *header {
        Header::Nil => de::Unexpected::Unit,
        Header::Bool(b) => de::Unexpected::Bool(b),
        Header::Uint(v) => de::Unexpected::Unsigned(v),
        Header::Int(v) => de::Unexpected::Signed(v),
        Header::F32(v) => de::Unexpected::Float(f64::from(v)),
        Header::F64(v) => de::Unexpected::Float(v),
        Header::Str(_) => de::Unexpected::Other("a str"),
        Header::Bin(b) => de::Unexpected::Bytes(b),
        Header::Array(_) => de::Unexpected::Seq,
        Header::Map(_) => de::Unexpected::Map,
        Header::Ext => de::Unexpected::Other("an ext value"),
    }
}
