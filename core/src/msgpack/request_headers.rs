//! The hottest message, RequestHeaders in MessagePack, read and written directly.
//!
//! Writing ([`write_request_headers`]) produces exactly the bytes the general (serde) encoder
//! produces, one reservation and no serializer state; the property test compares the two byte
//! for byte.
//!
//! Reading ([`request_headers`]) is the direct reader of `crate::request_headers_reader` over
//! MessagePack's syntax: each string checked as UTF-8 once (ASCII a word at a time) and kept as
//! a slice of the payload, fixstr/str8/fixmap/fixarray read inline. Besides maps it takes the
//! metadata as the reference's positional array of 11 or 12 items.

use std::ops::Range;

use bytes::{BufMut, Bytes, BytesMut};
use rmp::Marker;

use super::deserializer::Deserializer;
use super::header::Header;
use crate::byte_str::ByteStr;
use crate::event::{RequestHeadersEvent, RequestMetadata};
use crate::headers::{ExactBuilder, Span};
use crate::limits::MessageLimits;
use crate::request_headers_reader::{
    read_event, read_metadata_fields, Budget, MetadataField, MetadataFields, Syntax,
};

/// The event in `payload`, or `None` when the general decoder must decide.
pub(crate) fn request_headers(
    payload: &Bytes,
    limits: &MessageLimits,
) -> Option<RequestHeadersEvent> {
    let mut reader = Reader {
        de: Deserializer::new(payload),
        payload,
        budget: Budget::new(limits),
    };
    let event = read_event(&mut reader)?;
    (reader.de.pos == payload.len()).then_some(event)
}

struct Reader<'a> {
    de: Deserializer<'a>,
    payload: &'a Bytes,
    budget: Budget<'a>,
}

impl<'a> Reader<'a> {
    fn header(&mut self) -> Option<Header<'a>> {
        self.de.read_header().ok()
    }

    /// A map's entry count, counted; a fixmap (up to 15 entries) is read here.
    #[inline]
    fn map(&mut self) -> Option<usize> {
        let n = match self.de.peek_byte()? {
            b @ 0x80..=0x8f => {
                self.de.pos += 1;
                usize::from(b & 0x0f)
            }
            _ => match self.header()? {
                Header::Map(n) => n,
                _ => return None,
            },
        };
        self.budget.count(n).map(|()| n)
    }

    /// Where the bytes of a `str` value lie in the payload; `None` for any other type. A
    /// fixstr or str8 (what names and short values are) is read here; the general header
    /// reader takes the rest.
    #[inline]
    fn str_range(&mut self) -> Option<Range<usize>> {
        let input = self.de.input;
        let at = self.de.pos;
        let (start, len) = match *input.get(at)? {
            b @ 0xa0..=0xbf => (at + 1, usize::from(b & 0x1f)),
            0xd9 => (at + 2, usize::from(*input.get(at + 1)?)),
            _ => {
                return match self.header()? {
                    Header::Str(bytes) => {
                        let start = bytes.as_ptr() as usize - input.as_ptr() as usize;
                        Some(start..start + bytes.len())
                    }
                    _ => None,
                }
            }
        };
        let end = start + len;
        if end > input.len() {
            return None;
        }
        self.de.pos = end;
        Some(start..end)
    }
}

impl<'a> Syntax<'a> for Reader<'a> {
    fn budget(&mut self) -> &mut Budget<'a> {
        &mut self.budget
    }

    fn payload(&self) -> &'a Bytes {
        self.payload
    }

    fn fields(&mut self, mut field: impl FnMut(&mut Self, &'a [u8]) -> Option<()>) -> Option<()> {
        for _ in 0..self.map()? {
            let input = self.de.input;
            let name = self.str_range()?;
            field(self, &input[name])?;
        }
        Some(())
    }

    fn header_map(&mut self, headers: &mut ExactBuilder) -> Option<()> {
        for _ in 0..self.map()? {
            self.header_name(headers)?;
            self.values(headers)?;
        }
        Some(())
    }

    fn values(&mut self, headers: &mut ExactBuilder) -> Option<()> {
        let n = match self.de.peek_byte()? {
            // A fixarray (up to 15 values), read here.
            b @ 0x90..=0x9f => {
                self.de.pos += 1;
                usize::from(b & 0x0f)
            }
            _ => {
                let at = self.de.pos;
                match self.header()? {
                    Header::Array(n) => n,
                    // One value where an array was expected: taken, as by the general decoder.
                    Header::Str(_) => {
                        self.de.pos = at;
                        return self.value(headers);
                    }
                    _ => return None,
                }
            }
        };
        self.budget.count(n)?;
        for _ in 0..n {
            self.value(headers)?;
        }
        Some(())
    }

    #[inline]
    fn text(&mut self) -> Option<ByteStr> {
        let range = self.str_range()?;
        ByteStr::from_payload(self.payload, range)
    }

    #[inline]
    fn header_text(&mut self, _: &mut ExactBuilder) -> Option<Span> {
        let range = self.str_range()?;
        Span::checked(self.payload, range)
    }

    #[inline]
    fn optional_text(&mut self) -> Option<Option<ByteStr>> {
        if self.de.peek_byte() == Some(Marker::Null.to_u8()) {
            self.de.pos += 1;
            return Some(None);
        }
        self.text().map(Some)
    }

    fn port(&mut self) -> Option<u16> {
        match self.header()? {
            Header::Uint(port) => u16::try_from(port).ok(),
            _ => None,
        }
    }

    fn metadata(&mut self) -> Option<RequestMetadata> {
        // The reference's positional form, a fixarray of 11 or 12: the fields in order,
        // traceparent left out when absent. (Any other array is left to the general decoder.)
        if let b @ (0x9b | 0x9c) = self.de.peek_byte()? {
            self.de.pos += 1;
            let n = usize::from(b & 0x0f);
            self.budget.count(n)?;
            let mut fields = MetadataFields::default();
            for field in &MetadataField::POSITIONAL[..n] {
                fields.read(self, *field)?;
            }
            return fields.finish();
        }
        read_metadata_fields(self)
    }
}

/// Appends `event` as the general encoder writes it (rmp-serde, structs as maps of their fields
/// in declaration order, `None` as nil, an absent traceparent left out).
pub(crate) fn write_request_headers(out: &mut BytesMut, event: &RequestHeadersEvent) {
    let m = &event.metadata;
    out.reserve(256 + event.uri.len() + event.headers.load().1 + 4 * event.headers.value_count());
    put_map_len(out, 5);
    put_str(out, "correlation_id");
    put_str(out, &event.correlation_id);
    put_str(out, "metadata");
    put_map_len(out, 11 + usize::from(m.traceparent.is_some()));
    for (key, value) in [
        ("correlation_id", &m.correlation_id),
        ("request_id", &m.request_id),
        ("client_ip", &m.client_ip),
    ] {
        put_str(out, key);
        put_str(out, value);
    }
    put_str(out, "client_port");
    put_uint(out, u32::from(m.client_port));
    put_str(out, "server_name");
    put_optional_str(out, m.server_name.as_deref());
    put_str(out, "protocol");
    put_str(out, &m.protocol);
    for (key, value) in [
        ("tls_version", &m.tls_version),
        ("tls_cipher", &m.tls_cipher),
        ("route_id", &m.route_id),
        ("upstream_id", &m.upstream_id),
    ] {
        put_str(out, key);
        put_optional_str(out, value.as_deref());
    }
    put_str(out, "timestamp");
    put_str(out, &m.timestamp);
    if let Some(traceparent) = &m.traceparent {
        put_str(out, "traceparent");
        put_str(out, traceparent);
    }
    put_str(out, "method");
    put_str(out, &event.method);
    put_str(out, "uri");
    put_str(out, &event.uri);
    put_str(out, "headers");
    put_map_len(out, event.headers.len());
    for (name, values) in event.headers.entries() {
        put_str(out, name);
        put_len(out, values.len(), 0x90, 0xdc);
        for value in values {
            put_str(out, value);
        }
    }
}

fn put_map_len(out: &mut BytesMut, n: usize) {
    put_len(out, n, 0x80, 0xde);
}

/// An array's or map's length: the fix form up to 15, else the 16- or 32-bit form.
pub(super) fn put_len(out: &mut BytesMut, n: usize, fix: u8, wide16: u8) {
    if n < 16 {
        out.put_u8(fix | n as u8);
    } else if let Ok(n) = u16::try_from(n) {
        out.put_u8(wide16);
        out.put_u16(n);
    } else {
        out.put_u8(wide16 + 1);
        out.put_u32(n as u32);
    }
}

/// A string in the narrowest form, as rmp writes strings.
pub(super) fn put_str(out: &mut BytesMut, text: &str) {
    let n = text.len();
    if n < 32 {
        out.put_u8(0xa0 | n as u8);
    } else if let Ok(n) = u8::try_from(n) {
        out.put_u8(0xd9);
        out.put_u8(n);
    } else if let Ok(n) = u16::try_from(n) {
        out.put_u8(0xda);
        out.put_u16(n);
    } else {
        out.put_u8(0xdb);
        out.put_u32(n as u32);
    }
    out.put_slice(text.as_bytes());
}

fn put_optional_str(out: &mut BytesMut, text: Option<&str>) {
    match text {
        Some(text) => put_str(out, text),
        None => out.put_u8(Marker::Null.to_u8()),
    }
}

/// The smallest unsigned form, as rmp writes integers.
pub(super) fn put_uint(out: &mut BytesMut, v: u32) {
    if v < 128 {
        out.put_u8(v as u8);
    } else if let Ok(v) = u8::try_from(v) {
        out.put_u8(0xcc);
        out.put_u8(v);
    } else if let Ok(v) = u16::try_from(v) {
        out.put_u8(0xcd);
        out.put_u16(v);
    } else {
        out.put_u8(0xce);
        out.put_u32(v);
    }
}
