//! The hottest message, RequestHeaders in MessagePack, read and written directly.
//!
//! Writing ([`write_request_headers`]) produces exactly the bytes the general (serde) encoder
//! produces, one reservation and no serializer state; the property test compares the two byte
//! for byte.
//!
//! Reading ([`request_headers`]) goes straight from the payload's bytes to the event: no serde
//! plumbing, no thread-local lookup per string, each string checked as UTF-8 once and kept as a
//! slice of the payload.
//!
//! It takes only the shapes our proxy and the reference send (the event as a map of its five
//! fields; the metadata as a map, or as the reference's positional array of 11 or 12 items;
//! headers as a map of `str` to an array of `str`, or to one `str`), and only while they are
//! within every limit. Anything else (another type where a string was expected, a repeated or
//! unknown key, a limit reached, malformed bytes) makes it give up, and the caller decodes the
//! payload the general way, which reaches the decision. So a payload it accepts decodes to the
//! event the general decoder gives, and one it does not is decided by the general decoder
//! alone: the property test and the fuzz target hold the two to that.

use std::ops::Range;

use bytes::{BufMut, Bytes, BytesMut};
use rmp::Marker;

use super::deserializer::Deserializer;
use super::header::Header;
use crate::byte_str::ByteStr;
use crate::event::{RequestHeadersEvent, RequestMetadata};
use crate::headers::{HeaderValues, Headers};
use crate::limits::MessageLimits;

/// The event in `payload`, or `None` when the general decoder must decide.
pub(crate) fn request_headers(
    payload: &Bytes,
    limits: &MessageLimits,
) -> Option<RequestHeadersEvent> {
    let mut reader = Reader {
        de: Deserializer::new(payload),
        payload,
        limits,
        elements: 0,
        header_values: 0,
        header_bytes: 0,
    };
    let event = reader.event()?;
    (reader.de.pos == payload.len()).then_some(event)
}

struct Reader<'a> {
    de: Deserializer<'a>,
    payload: &'a Bytes,
    limits: &'a MessageLimits,
    /// Array items and map entries read so far (see [`crate::element_count`]).
    elements: usize,
    /// What the header limits count: values, and bytes of names and values.
    header_values: usize,
    header_bytes: usize,
}

/// Fills an empty slot; a repeated key gives up.
fn once<T>(slot: &mut Option<T>, value: T) -> Option<()> {
    match slot {
        Some(_) => None,
        None => {
            *slot = Some(value);
            Some(())
        }
    }
}

impl<'a> Reader<'a> {
    fn header(&mut self) -> Option<Header<'a>> {
        self.de.read_header().ok()
    }

    /// Counts a container's elements against the message's budget.
    fn count(&mut self, n: usize) -> Option<()> {
        self.elements = self.elements.saturating_add(n);
        (self.elements <= self.limits.max_elements).then_some(())
    }

    /// Counts header values and bytes against the header limits.
    fn charge(&mut self, values: usize, bytes: usize) -> Option<()> {
        self.header_values += values;
        self.header_bytes += bytes;
        let verdict = self
            .limits
            .headers
            .check(self.header_values, self.header_bytes);
        verdict.ok()
    }

    fn map(&mut self) -> Option<usize> {
        let n = match self.de.peek_byte()? {
            // A fixmap (up to 15 entries), read here: the common case needs no general header.
            b @ 0x80..=0x8f => {
                self.de.pos += 1;
                usize::from(b & 0x0f)
            }
            _ => match self.header()? {
                Header::Map(n) => n,
                _ => return None,
            },
        };
        self.count(n).map(|()| n)
    }

    /// Where the bytes of a `str` value lie in the payload; `None` for any other type. A
    /// fixstr or str8 (what names and short values are) is read here; the general header
    /// reader takes the rest.
    fn str_range(&mut self) -> Option<Range<usize>> {
        let input = self.de.input;
        let at = self.de.pos;
        let (start, len) = match *input.get(at)? {
            b @ 0xa0..=0xbf => (at + 1, usize::from(b & 0x1f)),
            0xd9 => (at + 2, usize::from(*input.get(at + 1)?)),
            _ => return self.general_str_range(),
        };
        let end = start + len;
        if end > input.len() {
            return None;
        }
        self.de.pos = end;
        Some(start..end)
    }

    fn general_str_range(&mut self) -> Option<Range<usize>> {
        match self.header()? {
            Header::Str(bytes) => {
                let start = bytes.as_ptr() as usize - self.de.input.as_ptr() as usize;
                Some(start..start + bytes.len())
            }
            _ => None,
        }
    }

    fn key(&mut self) -> Option<&'a [u8]> {
        let range = self.str_range()?;
        Some(&self.de.input[range])
    }

    fn text(&mut self) -> Option<ByteStr> {
        let range = self.str_range()?;
        ByteStr::from_payload(self.payload, range)
    }

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

    fn event(&mut self) -> Option<RequestHeadersEvent> {
        let (mut correlation_id, mut metadata, mut method, mut uri, mut headers) =
            (None, None, None, None, None);
        for _ in 0..self.map()? {
            match self.key()? {
                b"correlation_id" => once(&mut correlation_id, self.text()?)?,
                b"metadata" => once(&mut metadata, self.metadata()?)?,
                b"method" => once(&mut method, self.text()?)?,
                b"uri" => once(&mut uri, self.text()?)?,
                b"headers" => once(&mut headers, self.headers()?)?,
                _ => return None,
            }
        }
        Some(RequestHeadersEvent {
            correlation_id: correlation_id.unwrap_or_default(),
            metadata: metadata?,
            method: method?,
            uri: uri?,
            headers: headers?,
        })
    }

    fn metadata(&mut self) -> Option<RequestMetadata> {
        match self.header()? {
            Header::Map(n) => {
                self.count(n)?;
                self.metadata_map(n)
            }
            // The reference's positional form: the fields in order, traceparent left out when
            // absent.
            Header::Array(n @ (11 | 12)) => {
                self.count(n)?;
                Some(RequestMetadata {
                    correlation_id: self.text()?,
                    request_id: self.text()?,
                    client_ip: self.text()?,
                    client_port: self.port()?,
                    server_name: self.optional_text()?,
                    protocol: self.text()?,
                    tls_version: self.optional_text()?,
                    tls_cipher: self.optional_text()?,
                    route_id: self.optional_text()?,
                    upstream_id: self.optional_text()?,
                    timestamp: self.text()?,
                    traceparent: if n == 12 { self.optional_text()? } else { None },
                })
            }
            _ => None,
        }
    }

    fn metadata_map(&mut self, n: usize) -> Option<RequestMetadata> {
        let (mut correlation_id, mut request_id, mut client_ip, mut client_port) =
            (None, None, None, None);
        let (mut server_name, mut protocol, mut tls_version, mut tls_cipher) =
            (None, None, None, None);
        let (mut route_id, mut upstream_id, mut timestamp, mut traceparent) =
            (None, None, None, None);
        for _ in 0..n {
            match self.key()? {
                b"correlation_id" => once(&mut correlation_id, self.text()?)?,
                b"request_id" => once(&mut request_id, self.text()?)?,
                b"client_ip" => once(&mut client_ip, self.text()?)?,
                b"client_port" => once(&mut client_port, self.port()?)?,
                b"server_name" => once(&mut server_name, self.optional_text()?)?,
                b"protocol" => once(&mut protocol, self.text()?)?,
                b"tls_version" => once(&mut tls_version, self.optional_text()?)?,
                b"tls_cipher" => once(&mut tls_cipher, self.optional_text()?)?,
                b"route_id" => once(&mut route_id, self.optional_text()?)?,
                b"upstream_id" => once(&mut upstream_id, self.optional_text()?)?,
                b"timestamp" => once(&mut timestamp, self.text()?)?,
                b"traceparent" => once(&mut traceparent, self.optional_text()?)?,
                _ => return None,
            }
        }
        Some(RequestMetadata {
            correlation_id: correlation_id?,
            request_id: request_id?,
            client_ip: client_ip?,
            client_port: client_port?,
            server_name: server_name.flatten(),
            protocol: protocol?,
            tls_version: tls_version.flatten(),
            tls_cipher: tls_cipher.flatten(),
            route_id: route_id.flatten(),
            upstream_id: upstream_id.flatten(),
            timestamp: timestamp?,
            traceparent: traceparent.flatten(),
        })
    }

    fn headers(&mut self) -> Option<Headers> {
        let n = self.map()?;
        let mut headers = Headers::with_capacity(n.min(128));
        for _ in 0..n {
            let name = self.text()?;
            self.charge(0, name.len())?;
            let (values, bytes) = self.values()?;
            headers.push_exact(name, values, bytes);
        }
        Some(headers)
    }

    /// One header's values and their length together.
    fn values(&mut self) -> Option<(HeaderValues, usize)> {
        let at = self.de.pos;
        let n = match self.de.peek_byte()? {
            // A fixarray (up to 15 values), read here.
            b @ 0x90..=0x9f => {
                self.de.pos += 1;
                usize::from(b & 0x0f)
            }
            _ => match self.header()? {
                Header::Array(n) => n,
                // One value where an array was expected: accepted, as by the general decoder.
                Header::Str(_) => {
                    self.de.pos = at;
                    let value = self.text()?;
                    self.charge(1, value.len())?;
                    let bytes = value.len();
                    return Some((smallvec::smallvec![value], bytes));
                }
                _ => return None,
            },
        };
        self.count(n)?;
        let mut values = HeaderValues::new();
        let mut bytes = 0;
        for _ in 0..n {
            let value = self.text()?;
            self.charge(1, value.len())?;
            bytes += value.len();
            values.push(value);
        }
        Some((values, bytes))
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
    put_uint(out, m.client_port);
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
    for entry in event.headers.entries() {
        put_str(out, &entry.name);
        put_len(out, entry.values.len(), 0x90, 0xdc);
        for value in &entry.values {
            put_str(out, value);
        }
    }
}

fn put_map_len(out: &mut BytesMut, n: usize) {
    put_len(out, n, 0x80, 0xde);
}

/// An array's or map's length: the fix form up to 15, else the 16- or 32-bit form.
fn put_len(out: &mut BytesMut, n: usize, fix: u8, wide16: u8) {
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

fn put_str(out: &mut BytesMut, text: &str) {
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
fn put_uint(out: &mut BytesMut, v: u16) {
    if v < 128 {
        out.put_u8(v as u8);
    } else if let Ok(v) = u8::try_from(v) {
        out.put_u8(0xcc);
        out.put_u8(v);
    } else {
        out.put_u8(0xcd);
        out.put_u16(v);
    }
}
