//! A value header: the marker byte and what it announces (a scalar, a `str`/`bin`/`ext` body, or
//! an array's or map's element count), read in one step and skipped whole when nobody wants it.

use rmp::Marker;

use super::deserializer::Deserializer;
use super::error::MsgPackError;
use super::Result;

/// One decoded MessagePack header. Strings, binaries and extensions carry their (borrowed) body;
/// arrays and maps only their element count, already checked against the remaining input.
#[derive(Clone, Copy)]
pub(super) enum Header<'de> {
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
    /// The name of this header's type, for error messages and for matching an expected type.
    pub(super) fn kind(&self) -> &'static str {
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

/// `I8`..`I64` markers may hold non-negative values; those are visited as unsigned.
fn int_header(v: i64) -> Header<'static> {
    match u64::try_from(v) {
        Ok(u) => Header::Uint(u),
        Err(_) => Header::Int(v),
    }
}

impl<'de> Deserializer<'de> {
    /// Reads one header: the marker, its length or scalar value, and for str/bin/ext the body.
    /// Errors point at the start of the value.
    pub(super) fn read_header(&mut self) -> Result<Header<'de>> {
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
    pub(super) fn skip_value(&mut self) -> Result<()> {
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
}
