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
use super::room::{len_head, str_head, uint_head, Room, MAX_HEAD};
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
    #[inline(always)]
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

    #[inline(always)]
    fn text(&mut self) -> Option<ByteStr> {
        let range = self.str_range()?;
        ByteStr::from_payload(self.payload, range)
    }

    #[inline(always)]
    fn header_text(&mut self, _: &mut ExactBuilder) -> Option<Span> {
        let range = self.str_range()?;
        Span::checked(self.payload, range)
    }

    #[inline(always)]
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

/// Bytes of a RequestHeaders message besides its values: field names with their markers, the
/// three maps' headers, the port and nil markers (about 190; the rest is margin).
const FIXED_BOUND: usize = 256;

/// Appends `event` as the general encoder writes it (rmp-serde, structs as maps of their fields
/// in declaration order, `None` as nil, an absent traceparent left out), into room taken once.
pub(crate) fn write_request_headers(out: &mut BytesMut, event: &RequestHeadersEvent) {
    let m = &event.metadata;
    let strings = [
        Some(&event.correlation_id),
        Some(&m.correlation_id),
        Some(&m.request_id),
        Some(&m.client_ip),
        m.server_name.as_ref(),
        Some(&m.protocol),
        m.tls_version.as_ref(),
        m.tls_cipher.as_ref(),
        m.route_id.as_ref(),
        m.upstream_id.as_ref(),
        Some(&m.timestamp),
        m.traceparent.as_ref(),
        Some(&event.method),
        Some(&event.uri),
    ];
    let text: usize = strings.iter().flatten().map(|s| s.len() + MAX_HEAD).sum();
    let headers = &event.headers;
    let (values, header_bytes) = headers.load();
    let bound = FIXED_BOUND + text + header_bytes + MAX_HEAD * (2 * headers.len() + values + 1);
    Room::write(out, bound, |out| {
        out.byte(0x85);
        out.bytes(b"\xaecorrelation_id");
        out.str(&event.correlation_id);
        out.bytes(b"\xa8metadata");
        out.byte(0x8b + u8::from(m.traceparent.is_some()));
        out.bytes(b"\xaecorrelation_id");
        out.str(&m.correlation_id);
        out.bytes(b"\xaarequest_id");
        out.str(&m.request_id);
        out.bytes(b"\xa9client_ip");
        out.str(&m.client_ip);
        out.bytes(b"\xabclient_port");
        out.head(uint_head(u32::from(m.client_port)));
        out.bytes(b"\xabserver_name");
        out.optional_str(m.server_name.as_deref());
        out.bytes(b"\xa8protocol");
        out.str(&m.protocol);
        out.bytes(b"\xabtls_version");
        out.optional_str(m.tls_version.as_deref());
        out.bytes(b"\xaatls_cipher");
        out.optional_str(m.tls_cipher.as_deref());
        out.bytes(b"\xa8route_id");
        out.optional_str(m.route_id.as_deref());
        out.bytes(b"\xabupstream_id");
        out.optional_str(m.upstream_id.as_deref());
        out.bytes(b"\xa9timestamp");
        out.str(&m.timestamp);
        if let Some(traceparent) = &m.traceparent {
            out.bytes(b"\xabtraceparent");
            out.str(traceparent);
        }
        out.bytes(b"\xa6method");
        out.str(&event.method);
        out.bytes(b"\xa3uri");
        out.str(&event.uri);
        out.bytes(b"\xa7headers");
        out.head(len_head(headers.len(), 0x80, 0xde));
        for (name, values) in headers.entries() {
            out.str(name);
            out.head(len_head(values.len(), 0x90, 0xdc));
            for value in values {
                out.str(value);
            }
        }
    });
}

/// An array's or map's length: the fix form up to 15, else the 16- or 32-bit form.
pub(super) fn put_len(out: &mut BytesMut, n: usize, fix: u8, wide16: u8) {
    put_head(out, len_head(n, fix, wide16));
}

/// A string in the narrowest form, as rmp writes strings.
pub(super) fn put_str(out: &mut BytesMut, text: &str) {
    put_head(out, str_head(text.len()));
    out.put_slice(text.as_bytes());
}

/// The smallest unsigned form, as rmp writes integers.
pub(super) fn put_uint(out: &mut BytesMut, v: u32) {
    put_head(out, uint_head(v));
}

fn put_head(out: &mut BytesMut, (head, n): ([u8; MAX_HEAD], usize)) {
    out.put_slice(&head[..n]);
}
