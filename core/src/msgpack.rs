//! A lenient MessagePack [`serde::Deserializer`] over a borrowed byte slice.
//!
//! It accepts everything the reference implementation puts on the wire (see the MessagePack
//! section of `docs/protocol.md`), which `rmp_serde::from_slice` does not:
//!
//! - **Map entries reach the visitor as they are**, repeated keys included, exactly as
//!   `serde_json` hands them over: a struct rejects a repeated field, a header map merges a
//!   repeated name, so a MessagePack payload is decided as its JSON twin would be. The one
//!   repetition the reference proxy really sends (the same `correlation_id` twice at the top level
//!   of an event) is tolerated for both encodings by [`crate::repeated_id`], not here.
//! - **Structs are accepted as maps (by key) or arrays (by position).** A short array works when
//!   the missing trailing fields have `#[serde(default)]`; an array with more elements than the
//!   struct has fields is an error (as with `rmp_serde`).
//! - **Strings and binaries are interchangeable**: a string-typed field accepts `str` or a `bin`
//!   holding valid UTF-8, and a byte-typed field accepts `bin` or `str`.
//! - **Enums** are a `str` (unit variant) or a one-entry map `{variant: content}`, the content
//!   being a value, an array (tuple variant, or struct variant by position) or a map (struct
//!   variant by key).
//!
//! The decoder never panics, never allocates (strings and binaries are borrowed from the input),
//! does work linear in the input, rejects any
//! length prefix that the remaining input cannot possibly hold before acting on it, and bounds
//! nesting at [`MAX_DEPTH`]. [`Deserializer::is_human_readable`](serde::Deserializer) is `false`,
//! so types that base64 their bytes in JSON receive raw bytes here.

use std::borrow::Cow;
use std::fmt;

use rmp::Marker;
use serde::de::{self, DeserializeSeed, Visitor};
use serde::forward_to_deserialize_any;

/// Deepest nesting of arrays, maps and enum wrappers that [`from_slice`] accepts.
pub const MAX_DEPTH: usize = 128;

/// Decodes one MessagePack value from `input` into `T`.
///
/// The whole input must be consumed: bytes left over after the value are an error.
///
/// ```
/// use agent_protocol_core::msgpack::from_slice;
/// use serde::Deserialize;
///
/// #[derive(Deserialize, Debug, PartialEq)]
/// struct Ping {
///     sequence: u64,
///     timestamp_ms: u64,
/// }
///
/// // {"sequence": 7, "timestamp_ms": 1}
/// let bytes = [
///     0x82, 0xa8, b's', b'e', b'q', b'u', b'e', b'n', b'c', b'e', 0x07,
///     0xac, b't', b'i', b'm', b'e', b's', b't', b'a', b'm', b'p', b'_', b'm', b's', 0x01,
/// ];
/// let ping: Ping = from_slice(&bytes).unwrap();
/// assert_eq!(ping, Ping { sequence: 7, timestamp_ms: 1 });
///
/// // The same struct as a positional array [7, 1].
/// assert_eq!(from_slice::<Ping>(&[0x92, 0x07, 0x01]).unwrap(), ping);
///
/// // Truncated input is an error that names the offset of the incomplete value.
/// let err = from_slice::<Ping>(&[0x92, 0x07, 0xcd, 0x01]).unwrap_err();
/// assert_eq!(err.offset(), Some(2));
/// assert_eq!(
///     err.to_string(),
///     "invalid MessagePack at byte offset 2: a u16 needs 2 byte(s) but only 1 remain"
/// );
/// ```
pub fn from_slice<'de, T: de::Deserialize<'de>>(
    input: &'de [u8],
) -> std::result::Result<T, MsgPackError> {
    from_slice_with(input, |de| T::deserialize(de))
}

/// Runs `decode` over a deserializer of `input` (a wrapper such as [`crate::repeated_id`] goes
/// between the deserializer and the type), then checks that the whole input was consumed.
pub(crate) fn from_slice_with<'de, T>(
    input: &'de [u8],
    decode: impl FnOnce(&mut Deserializer<'de>) -> Result<T>,
) -> std::result::Result<T, MsgPackError> {
    let mut de = Deserializer {
        input,
        pos: 0,
        depth: 0,
    };
    let value = decode(&mut de).map_err(|e| e.at(de.pos))?;
    if de.pos != input.len() {
        return Err(MsgPackError::new(
            de.pos,
            format!(
                "{} trailing byte(s) after the MessagePack value",
                input.len() - de.pos
            ),
        ));
    }
    Ok(value)
}

/// Why a MessagePack payload could not be decoded, and where.
///
/// The message says what was wrong (a truncated value, invalid UTF-8, an unexpected type, a
/// missing field, ...). The offset is the byte offset into the input of the value being decoded
/// when the problem was found; errors returned by [`from_slice`] always carry one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct MsgPackError(Box<ErrorInner>);

/// Boxed so that `Result<_, MsgPackError>` stays one pointer wide on the hot (`Ok`) path.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ErrorInner {
    message: Cow<'static, str>,
    offset: Option<usize>,
}

impl fmt::Display for ErrorInner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("invalid MessagePack")?;
        if let Some(offset) = self.offset {
            write!(f, " at byte offset {offset}")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl MsgPackError {
    #[cold]
    fn new(offset: usize, message: impl Into<Cow<'static, str>>) -> Self {
        MsgPackError(Box::new(ErrorInner {
            message: message.into(),
            offset: Some(offset),
        }))
    }

    /// Attaches `offset` unless the error already has a (more precise) one.
    #[cold]
    fn at(mut self, offset: usize) -> Self {
        if self.0.offset.is_none() {
            self.0.offset = Some(offset);
        }
        self
    }

    /// Sets the offset, replacing any other.
    #[cold]
    fn with_offset(mut self, offset: usize) -> Self {
        self.0.offset = Some(offset);
        self
    }

    /// What was wrong, without the offset.
    pub fn message(&self) -> &str {
        &self.0.message
    }

    /// Byte offset into the input where the problem was found.
    pub fn offset(&self) -> Option<usize> {
        self.0.offset
    }
}

impl de::Error for MsgPackError {
    #[cold]
    fn custom<T: fmt::Display>(msg: T) -> Self {
        MsgPackError(Box::new(ErrorInner {
            message: Cow::Owned(msg.to_string()),
            offset: None,
        }))
    }
}

type Result<T> = std::result::Result<T, MsgPackError>;

/// One decoded MessagePack header. Strings, binaries and extensions carry their (borrowed) body;
/// arrays and maps only their element count, already checked against the remaining input.
#[derive(Clone, Copy)]
enum Header<'de> {
    Nil,
    Bool(bool),
    Uint(u64),
    Int(i64),
    F32(f32),
    F64(f64),
    Str(&'de [u8]),
    Bin(&'de [u8]),
    Array(usize),
    Map(usize),
    Ext,
}

impl Header<'_> {
    fn kind(&self) -> &'static str {
        match self {
            Header::Nil => "nil",
            Header::Bool(_) => "bool",
            Header::Uint(_) | Header::Int(_) => "integer",
            Header::F32(_) | Header::F64(_) => "float",
            Header::Str(_) => "str",
            Header::Bin(_) => "bin",
            Header::Array(_) => "array",
            Header::Map(_) => "map",
            Header::Ext => "ext",
        }
    }
}

/// The deserializer proper: a cursor into the input and the current nesting depth.
pub(crate) struct Deserializer<'de> {
    input: &'de [u8],
    pos: usize,
    depth: usize,
}

impl<'de> Deserializer<'de> {
    fn remaining(&self) -> usize {
        self.input.len().saturating_sub(self.pos)
    }

    fn eof(&self, what: &str) -> MsgPackError {
        MsgPackError::new(
            self.pos,
            format!("unexpected end of input while reading {what}"),
        )
    }

    /// Takes the next `n` bytes, or fails without moving when fewer remain.
    fn take(&mut self, n: usize, what: &str) -> Result<&'de [u8]> {
        if n > self.remaining() {
            return Err(MsgPackError::new(
                self.pos,
                format!(
                    "{what} needs {n} byte(s) but only {} remain",
                    self.remaining()
                ),
            ));
        }
        let bytes = &self.input[self.pos..self.pos + n];
        self.pos += n;
        Ok(bytes)
    }

    fn take_array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let bytes = self.take(N, what)?;
        let mut out = [0u8; N];
        out.copy_from_slice(bytes);
        Ok(out)
    }

    fn peek_byte(&self) -> Option<u8> {
        self.input.get(self.pos).copied()
    }

    fn read_u8(&mut self, what: &str) -> Result<u8> {
        match self.peek_byte() {
            Some(b) => {
                self.pos += 1;
                Ok(b)
            }
            None => Err(self.eof(what)),
        }
    }

    fn read_u16(&mut self, what: &str) -> Result<u16> {
        self.take_array(what).map(u16::from_be_bytes)
    }

    fn read_u32(&mut self, what: &str) -> Result<u32> {
        self.take_array(what).map(u32::from_be_bytes)
    }

    fn read_u64(&mut self, what: &str) -> Result<u64> {
        self.take_array(what).map(u64::from_be_bytes)
    }

    fn read_len32(&mut self, what: &str) -> Result<usize> {
        let n = self.read_u32(what)?;
        usize::try_from(n).map_err(|_| MsgPackError::new(self.pos, "length does not fit in usize"))
    }

    /// Checks that `count` items of at least `min_bytes` each can still follow, so that no
    /// consumer acts on a length prefix the input cannot hold.
    fn check_count(&self, start: usize, count: usize, min_bytes: usize, what: &str) -> Result<()> {
        let needed = count.saturating_mul(min_bytes);
        if needed > self.remaining() {
            return Err(MsgPackError::new(
                start,
                format!(
                    "{what} declares {count} element(s) but only {} byte(s) remain",
                    self.remaining()
                ),
            ));
        }
        Ok(())
    }

    /// Reads one header: the marker, its length or scalar value, and for str/bin/ext the body.
    /// Errors point at the start of the value.
    fn read_header(&mut self) -> Result<Header<'de>> {
        let start = self.pos;
        self.read_header_at(start).map_err(|e| e.with_offset(start))
    }

    fn read_header_at(&mut self, start: usize) -> Result<Header<'de>> {
        let marker = Marker::from_u8(self.read_u8("a value marker")?);
        let header = match marker {
            Marker::Null => Header::Nil,
            Marker::True => Header::Bool(true),
            Marker::False => Header::Bool(false),
            Marker::FixPos(v) => Header::Uint(u64::from(v)),
            Marker::FixNeg(v) => Header::Int(i64::from(v)),
            Marker::U8 => Header::Uint(u64::from(self.read_u8("a u8")?)),
            Marker::U16 => Header::Uint(u64::from(self.read_u16("a u16")?)),
            Marker::U32 => Header::Uint(u64::from(self.read_u32("a u32")?)),
            Marker::U64 => Header::Uint(self.read_u64("a u64")?),
            Marker::I8 => int_header(i64::from(i8::from_be_bytes(self.take_array("an i8")?))),
            Marker::I16 => int_header(i64::from(i16::from_be_bytes(self.take_array("an i16")?))),
            Marker::I32 => int_header(i64::from(i32::from_be_bytes(self.take_array("an i32")?))),
            Marker::I64 => int_header(i64::from_be_bytes(self.take_array("an i64")?)),
            Marker::F32 => Header::F32(f32::from_be_bytes(self.take_array("an f32")?)),
            Marker::F64 => Header::F64(f64::from_be_bytes(self.take_array("an f64")?)),
            Marker::FixStr(n) => Header::Str(self.take(usize::from(n), "a str body")?),
            Marker::Str8 => {
                let n = self.read_u8("a str8 length")?;
                Header::Str(self.take(usize::from(n), "a str body")?)
            }
            Marker::Str16 => {
                let n = self.read_u16("a str16 length")?;
                Header::Str(self.take(usize::from(n), "a str body")?)
            }
            Marker::Str32 => {
                let n = self.read_len32("a str32 length")?;
                Header::Str(self.take(n, "a str body")?)
            }
            Marker::Bin8 => {
                let n = self.read_u8("a bin8 length")?;
                Header::Bin(self.take(usize::from(n), "a bin body")?)
            }
            Marker::Bin16 => {
                let n = self.read_u16("a bin16 length")?;
                Header::Bin(self.take(usize::from(n), "a bin body")?)
            }
            Marker::Bin32 => {
                let n = self.read_len32("a bin32 length")?;
                Header::Bin(self.take(n, "a bin body")?)
            }
            Marker::FixArray(n) => Header::Array(usize::from(n)),
            Marker::Array16 => Header::Array(usize::from(self.read_u16("an array16 length")?)),
            Marker::Array32 => Header::Array(self.read_len32("an array32 length")?),
            Marker::FixMap(n) => Header::Map(usize::from(n)),
            Marker::Map16 => Header::Map(usize::from(self.read_u16("a map16 length")?)),
            Marker::Map32 => Header::Map(self.read_len32("a map32 length")?),
            Marker::FixExt1 => self.ext_body(1)?,
            Marker::FixExt2 => self.ext_body(2)?,
            Marker::FixExt4 => self.ext_body(4)?,
            Marker::FixExt8 => self.ext_body(8)?,
            Marker::FixExt16 => self.ext_body(16)?,
            Marker::Ext8 => {
                let n = self.read_u8("an ext8 length")?;
                self.ext_body(usize::from(n))?
            }
            Marker::Ext16 => {
                let n = self.read_u16("an ext16 length")?;
                self.ext_body(usize::from(n))?
            }
            Marker::Ext32 => {
                let n = self.read_len32("an ext32 length")?;
                self.ext_body(n)?
            }
            Marker::Reserved => {
                return Err(MsgPackError::new(
                    start,
                    "reserved marker byte 0xc1 is not a MessagePack value",
                ))
            }
        };
        match header {
            Header::Array(n) => self.check_count(start, n, 1, "array")?,
            Header::Map(n) => self.check_count(start, n, 2, "map")?,
            _ => {}
        }
        Ok(header)
    }

    /// Consumes an extension's type byte and `len` data bytes.
    fn ext_body(&mut self, len: usize) -> Result<Header<'de>> {
        self.read_u8("an ext type")?;
        self.take(len, "an ext body")?;
        Ok(Header::Ext)
    }

    /// Skips one complete value, however deeply nested, iteratively and without allocating.
    fn skip_value(&mut self) -> Result<()> {
        let mut pending: u64 = 1;
        while pending > 0 {
            pending -= 1;
            match self.read_header()? {
                Header::Array(n) => pending = pending.saturating_add(n as u64),
                Header::Map(n) => pending = pending.saturating_add((n as u64).saturating_mul(2)),
                _ => {}
            }
        }
        Ok(())
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

    fn str_from_utf8(bytes: &'de [u8], start: usize, what: &str) -> Result<&'de str> {
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

/// `I8`..`I64` markers may hold non-negative values; those are visited as unsigned.
fn int_header(v: i64) -> Header<'static> {
    match u64::try_from(v) {
        Ok(u) => Header::Uint(u),
        Err(_) => Header::Int(v),
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

/// Elements of an array; `remaining` is exact and never exceeds the remaining input bytes.
struct SeqAccess<'a, 'de> {
    de: &'a mut Deserializer<'de>,
    remaining: usize,
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
struct MapAccess<'a, 'de> {
    de: &'a mut Deserializer<'de>,
    remaining: usize,
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

/// The content of an enum given as a bare `str`/`bin`: only a unit variant fits.
struct UnitOnly;

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
struct UnitVariantAccess<'a, 'de> {
    de: &'a mut Deserializer<'de>,
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
struct MapVariantAccess<'a, 'de> {
    de: &'a mut Deserializer<'de>,
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde::de::IgnoredAny;
    use serde::{Deserialize, Serialize};
    use std::collections::{BTreeMap, HashMap};

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
            e.headers.get("content-type").unwrap().as_slice(),
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
}
