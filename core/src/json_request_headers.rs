//! The hottest message, RequestHeaders, in JSON, written and read directly.
//!
//! Writing ([`write_request_headers`]) produces exactly the bytes the general (serde_json)
//! encoder produces, without a serializer in between. Text that needs no escaping (no `"`, `\`
//! or control character: nearly all of it) is copied as it is; anything else is escaped by
//! serde_json itself, so the two cannot differ. The property test compares them byte for byte.
//!
//! Reading ([`read_request_headers`]) goes straight from the payload to the event, every string
//! without escapes a slice of the payload. Like the MessagePack reader it takes only the shape
//! our proxy and the reference send (objects, the five event fields and the twelve metadata
//! fields, headers as name -> array of strings or one string) within every limit, and gives up
//! on anything else (an array where an object was expected, a repeated or unknown or escaped
//! field name, a number that is not a plain `u16`, a surrogate escape, malformed or trailing
//! bytes): the general decoder then decides, so the decision is always its decision.

use std::ops::Range;

use bytes::{BufMut, Bytes, BytesMut};

use crate::byte_str::ByteStr;
use crate::event::{RequestHeadersEvent, RequestMetadata};
use crate::headers::{HeaderValues, Headers};
use crate::limits::MessageLimits;

/// Appends `event` as serde_json writes it (compact, fields in declaration order, `None` as
/// `null`, an absent traceparent left out).
pub(crate) fn write_request_headers(out: &mut BytesMut, event: &RequestHeadersEvent) {
    let m = &event.metadata;
    out.reserve(512 + event.uri.len() + event.headers.load().1 + 6 * event.headers.value_count());
    out.put_slice(b"{\"correlation_id\":");
    put_str(out, &event.correlation_id);
    out.put_slice(b",\"metadata\":{\"correlation_id\":");
    put_str(out, &m.correlation_id);
    out.put_slice(b",\"request_id\":");
    put_str(out, &m.request_id);
    out.put_slice(b",\"client_ip\":");
    put_str(out, &m.client_ip);
    out.put_slice(b",\"client_port\":");
    put_u16(out, m.client_port);
    out.put_slice(b",\"server_name\":");
    put_optional_str(out, m.server_name.as_deref());
    out.put_slice(b",\"protocol\":");
    put_str(out, &m.protocol);
    out.put_slice(b",\"tls_version\":");
    put_optional_str(out, m.tls_version.as_deref());
    out.put_slice(b",\"tls_cipher\":");
    put_optional_str(out, m.tls_cipher.as_deref());
    out.put_slice(b",\"route_id\":");
    put_optional_str(out, m.route_id.as_deref());
    out.put_slice(b",\"upstream_id\":");
    put_optional_str(out, m.upstream_id.as_deref());
    out.put_slice(b",\"timestamp\":");
    put_str(out, &m.timestamp);
    if let Some(traceparent) = &m.traceparent {
        out.put_slice(b",\"traceparent\":");
        put_str(out, traceparent);
    }
    out.put_slice(b"},\"method\":");
    put_str(out, &event.method);
    out.put_slice(b",\"uri\":");
    put_str(out, &event.uri);
    out.put_slice(b",\"headers\":{");
    for (i, entry) in event.headers.entries().iter().enumerate() {
        if i > 0 {
            out.put_u8(b',');
        }
        put_str(out, &entry.name);
        out.put_slice(b":[");
        for (j, value) in entry.values.iter().enumerate() {
            if j > 0 {
                out.put_u8(b',');
            }
            put_str(out, value);
        }
        out.put_u8(b']');
    }
    out.put_slice(b"}}");
}

fn put_str(out: &mut BytesMut, text: &str) {
    if needs_escape(text.as_bytes()) {
        // Writing a `str` into a BytesMut cannot fail.
        let written = serde_json::to_writer(out.writer(), text);
        debug_assert!(written.is_ok());
        return;
    }
    out.put_u8(b'"');
    out.put_slice(text.as_bytes());
    out.put_u8(b'"');
}

/// Whether `bytes` hold a `"`, a `\` or a control character, eight bytes at a time.
fn needs_escape(bytes: &[u8]) -> bool {
    let mut words = bytes.chunks_exact(8);
    if words.by_ref().any(word_needs_escape) {
        return true;
    }
    words.remainder().iter().copied().any(byte_needs_escape)
}

fn byte_needs_escape(b: u8) -> bool {
    b == b'"' || b == b'\\' || b < 0x20
}

/// Whether eight bytes hold a `"`, a `\` or a control character. (The word tests find every
/// such byte; were one ever to flag a clean word, the bytes would only be looked at one by one,
/// or a string written by serde_json, which writes the same bytes.)
fn word_needs_escape(word: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let zero_byte = |w: u64| w.wrapping_sub(ONES) & !w & HIGHS;
    let mut le = [0u8; 8];
    le.copy_from_slice(word);
    let w = u64::from_le_bytes(le);
    let control = w.wrapping_sub(ONES * 0x20) & !w & HIGHS;
    let quote = zero_byte(w ^ (ONES * u64::from(b'"')));
    let backslash = zero_byte(w ^ (ONES * u64::from(b'\\')));
    control | quote | backslash != 0
}

fn put_optional_str(out: &mut BytesMut, text: Option<&str>) {
    match text {
        Some(text) => put_str(out, text),
        None => out.put_slice(b"null"),
    }
}

fn put_u16(out: &mut BytesMut, v: u16) {
    let mut digits = [0u8; 5];
    let mut at = digits.len();
    let mut v = v;
    loop {
        at -= 1;
        digits[at] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.put_slice(&digits[at..]);
}

/// The event in the JSON `payload`, or `None` when the general decoder must decide.
pub(crate) fn read_request_headers(
    payload: &Bytes,
    limits: &MessageLimits,
) -> Option<RequestHeadersEvent> {
    let mut reader = Reader {
        input: payload,
        pos: 0,
        payload,
        limits,
        elements: 0,
        header_values: 0,
        header_bytes: 0,
    };
    let event = reader.event()?;
    reader.skip_space();
    (reader.pos == payload.len()).then_some(event)
}

struct Reader<'a> {
    input: &'a [u8],
    pos: usize,
    payload: &'a Bytes,
    limits: &'a MessageLimits,
    /// Object entries and array items read so far (see [`crate::element_count`]).
    elements: usize,
    /// What the header limits count: values, and bytes of names and values.
    header_values: usize,
    header_bytes: usize,
}

/// Fills an empty slot; a repeated field gives up.
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
    fn skip_space(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.input.get(self.pos) {
            self.pos += 1;
        }
    }

    /// The next byte after any whitespace, not consumed.
    fn peek(&mut self) -> Option<u8> {
        self.skip_space();
        self.input.get(self.pos).copied()
    }

    fn eat(&mut self, byte: u8) -> Option<()> {
        (self.peek()? == byte).then(|| self.pos += 1)
    }

    fn count(&mut self) -> Option<()> {
        self.elements += 1;
        (self.elements <= self.limits.max_elements).then_some(())
    }

    fn charge(&mut self, values: usize, bytes: usize) -> Option<()> {
        self.header_values += values;
        self.header_bytes += bytes;
        let verdict = self
            .limits
            .headers
            .check(self.header_values, self.header_bytes);
        verdict.ok()
    }

    /// Walks an object: `entry` reads each value after its name (already counted).
    fn object(
        &mut self,
        mut entry: impl FnMut(&mut Self, Range<usize>) -> Option<()>,
    ) -> Option<()> {
        self.eat(b'{')?;
        if self.peek()? == b'}' {
            self.pos += 1;
            return Some(());
        }
        loop {
            self.count()?;
            let name = self.plain_string()?;
            self.eat(b':')?;
            entry(self, name)?;
            match self.peek()? {
                b',' => self.pos += 1,
                b'}' => {
                    self.pos += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// A string's raw contents (between the quotes), and whether they hold escapes. Control
    /// characters are not allowed in JSON strings.
    fn raw_string(&mut self) -> Option<(Range<usize>, bool)> {
        self.eat(b'"')?;
        let start = self.pos;
        let mut escaped = false;
        loop {
            // Plain text goes by eight bytes at a time, then byte by byte up to the quote,
            // backslash or control character that stopped it.
            while let Some(word) = self.input.get(self.pos..self.pos + 8) {
                if word_needs_escape(word) {
                    break;
                }
                self.pos += 8;
            }
            while !byte_needs_escape(*self.input.get(self.pos)?) {
                self.pos += 1;
            }
            match self.input[self.pos] {
                b'"' => break,
                b'\\' => {
                    escaped = true;
                    self.pos += 2;
                }
                _ => return None, // a control character
            }
        }
        let end = self.pos;
        self.pos += 1;
        Some((start..end, escaped))
    }

    /// A field name: a string without escapes.
    fn plain_string(&mut self) -> Option<Range<usize>> {
        match self.raw_string()? {
            (range, false) => Some(range),
            (_, true) => None,
        }
    }

    fn text(&mut self) -> Option<ByteStr> {
        let (range, escaped) = self.raw_string()?;
        if !escaped {
            return ByteStr::from_payload(self.payload, range);
        }
        let raw = std::str::from_utf8(&self.input[range]).ok()?;
        unescape(raw).map(ByteStr::from)
    }

    fn optional_text(&mut self) -> Option<Option<ByteStr>> {
        if self.peek()? == b'n' {
            return self.input[self.pos..].starts_with(b"null").then(|| {
                self.pos += 4;
                None
            });
        }
        self.text().map(Some)
    }

    /// A plain unsigned integer that fits a `u16` (no sign, fraction, exponent or leading 0).
    fn port(&mut self) -> Option<u16> {
        self.skip_space();
        let start = self.pos;
        while let Some(b'0'..=b'9') = self.input.get(self.pos) {
            self.pos += 1;
        }
        let digits = &self.input[start..self.pos];
        if digits.is_empty() || digits.len() > 5 || (digits[0] == b'0' && digits.len() > 1) {
            return None;
        }
        if let Some(b'.' | b'e' | b'E') = self.input.get(self.pos) {
            return None;
        }
        let value = digits
            .iter()
            .fold(0u32, |v, d| v * 10 + u32::from(d - b'0'));
        u16::try_from(value).ok()
    }

    fn name(&self, range: Range<usize>) -> &'a [u8] {
        &self.input[range]
    }

    fn event(&mut self) -> Option<RequestHeadersEvent> {
        let (mut correlation_id, mut metadata, mut method, mut uri, mut headers) =
            (None, None, None, None, None);
        self.object(|r, name| match r.name(name) {
            b"correlation_id" => once(&mut correlation_id, r.text()?),
            b"metadata" => once(&mut metadata, r.metadata()?),
            b"method" => once(&mut method, r.text()?),
            b"uri" => once(&mut uri, r.text()?),
            b"headers" => once(&mut headers, r.headers()?),
            _ => None,
        })?;
        Some(RequestHeadersEvent {
            correlation_id: correlation_id.unwrap_or_default(),
            metadata: metadata?,
            method: method?,
            uri: uri?,
            headers: headers?,
        })
    }

    fn metadata(&mut self) -> Option<RequestMetadata> {
        let (mut correlation_id, mut request_id, mut client_ip, mut client_port) =
            (None, None, None, None);
        let (mut server_name, mut protocol, mut tls_version, mut tls_cipher) =
            (None, None, None, None);
        let (mut route_id, mut upstream_id, mut timestamp, mut traceparent) =
            (None, None, None, None);
        self.object(|r, name| match r.name(name) {
            b"correlation_id" => once(&mut correlation_id, r.text()?),
            b"request_id" => once(&mut request_id, r.text()?),
            b"client_ip" => once(&mut client_ip, r.text()?),
            b"client_port" => once(&mut client_port, r.port()?),
            b"server_name" => once(&mut server_name, r.optional_text()?),
            b"protocol" => once(&mut protocol, r.text()?),
            b"tls_version" => once(&mut tls_version, r.optional_text()?),
            b"tls_cipher" => once(&mut tls_cipher, r.optional_text()?),
            b"route_id" => once(&mut route_id, r.optional_text()?),
            b"upstream_id" => once(&mut upstream_id, r.optional_text()?),
            b"timestamp" => once(&mut timestamp, r.text()?),
            b"traceparent" => once(&mut traceparent, r.optional_text()?),
            _ => None,
        })?;
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
        let mut headers = Headers::with_capacity(24);
        self.eat(b'{')?;
        if self.peek()? == b'}' {
            self.pos += 1;
            return Some(headers);
        }
        loop {
            self.count()?;
            let name = self.text()?;
            self.charge(0, name.len())?;
            self.eat(b':')?;
            let (values, bytes) = self.values()?;
            headers.push_exact(name, values, bytes);
            match self.peek()? {
                b',' => self.pos += 1,
                b'}' => {
                    self.pos += 1;
                    return Some(headers);
                }
                _ => return None,
            }
        }
    }

    /// One header's values and their length together: an array of strings, or one string.
    fn values(&mut self) -> Option<(HeaderValues, usize)> {
        let mut values = HeaderValues::new();
        let mut bytes = 0;
        if self.peek()? == b'"' {
            let value = self.text()?;
            self.charge(1, value.len())?;
            bytes = value.len();
            values.push(value);
            return Some((values, bytes));
        }
        self.eat(b'[')?;
        if self.peek()? == b']' {
            self.pos += 1;
            return Some((values, bytes));
        }
        loop {
            self.count()?;
            let value = self.text()?;
            self.charge(1, value.len())?;
            bytes += value.len();
            values.push(value);
            match self.peek()? {
                b',' => self.pos += 1,
                b']' => {
                    self.pos += 1;
                    return Some((values, bytes));
                }
                _ => return None,
            }
        }
    }
}

/// The text a JSON string's raw contents stand for; `None` for an escape the general decoder
/// should judge (a surrogate, a malformed `\u`, an unknown escape).
fn unescape(raw: &str) -> Option<String> {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        out.push(match chars.next()? {
            '"' => '"',
            '\\' => '\\',
            '/' => '/',
            'b' => '\u{8}',
            'f' => '\u{c}',
            'n' => '\n',
            'r' => '\r',
            't' => '\t',
            'u' => {
                let hex: String = chars.by_ref().take(4).collect();
                if hex.len() != 4 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return None;
                }
                char::from_u32(u32::from_str_radix(&hex, 16).ok()?)?
            }
            _ => return None,
        });
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::needs_escape;

    proptest::proptest! {
        /// The word-at-a-time test never misses a byte that needs escaping, wherever it sits.
        #[test]
        fn finds_every_byte_that_needs_escaping(
            bytes in proptest::collection::vec(
                // Mostly clean bytes, the ones either side of each boundary included.
                proptest::sample::select(vec![
                    b'a', b'a', b'a', b'a', b'a', b'a', 0x21, 0x23, 0x5b, 0x5d, 0x7f, 0x80, 0xff,
                    0x20, 0x1f, 0x00, b'"', b'\\',
                ]),
                0..40,
            )
        ) {
            let expected = bytes.iter().any(|&b| b == b'"' || b == b'\\' || b < 0x20);
            proptest::prop_assert_eq!(needs_escape(&bytes), expected);
        }
    }
}
