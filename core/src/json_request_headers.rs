//! The hottest message, RequestHeaders, in JSON, written and read directly.
//!
//! Writing ([`write_request_headers`]) produces exactly the bytes the general (serde_json)
//! encoder produces, without a serializer in between. Text that needs no escaping (no `"`, `\`
//! or control character: nearly all of it) is copied as it is; anything else is escaped by
//! serde_json itself, so the two cannot differ. The property test compares them byte for byte.
//!
//! Reading ([`read_request_headers`]) is the direct reader of `crate::request_headers_reader`
//! over JSON's syntax: plain text scanned eight bytes at a time and kept as a slice of the
//! payload, escaped text unescaped into one side buffer of the event's own (one allocation for
//! all its escaped strings, however many: sec-ch-ua, if-none-match...); a field name with escapes, a
//! number that is not a plain `u16`, a surrogate or unknown escape and a raw control character
//! are left to the general decoder.

use std::ops::Range;

use bytes::{BufMut, Bytes, BytesMut};

use crate::byte_str::ByteStr;
use crate::event::RequestHeadersEvent;
use crate::headers::{ExactBuilder, Span};
use crate::limits::MessageLimits;
use crate::request_headers_reader::{read_event, Budget, Syntax};

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
    put_uint(out, u32::from(m.client_port));
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
    for (i, (name, values)) in event.headers.entries().enumerate() {
        if i > 0 {
            out.put_u8(b',');
        }
        put_str(out, name);
        out.put_slice(b":[");
        for (j, value) in values.enumerate() {
            if j > 0 {
                out.put_u8(b',');
            }
            put_str(out, value);
        }
        out.put_u8(b']');
    }
    out.put_slice(b"}}");
}

/// A JSON string, escaped as serde_json escapes it.
pub(crate) fn put_str(out: &mut BytesMut, text: &str) {
    if needs_escape(text.as_bytes()) {
        return put_escaped_str(out, text);
    }
    out.reserve(text.len() + 2);
    out.put_u8(b'"');
    out.put_slice(text.as_bytes());
    out.put_u8(b'"');
}

/// A string that needs escaping, written by serde_json itself so that the bytes cannot differ.
#[cold]
fn put_escaped_str(out: &mut BytesMut, text: &str) {
    // Writing a `str` into a BytesMut cannot fail.
    let written = serde_json::to_writer(out.writer(), text);
    debug_assert!(written.is_ok());
}

/// Whether `bytes` hold a `"`, a `\` or a control character, eight bytes at a time: the
/// words OR-ed without an early exit (header text almost never needs escaping), the last eight
/// bytes read again where the length is not a multiple of eight.
#[inline(always)]
fn needs_escape(bytes: &[u8]) -> bool {
    let n = bytes.len();
    if n < 8 {
        return bytes.iter().copied().any(byte_needs_escape);
    }
    let word = |chunk: &[u8]| {
        let mut le = [0u8; 8];
        le.copy_from_slice(chunk);
        escape_mask(u64::from_le_bytes(le))
    };
    let last = word(&bytes[n - 8..]);
    bytes.chunks_exact(8).fold(last, |acc, c| acc | word(c)) != 0
}

fn byte_needs_escape(b: u8) -> bool {
    b == b'"' || b == b'\\' || b < 0x20
}

/// The high bit of each byte of `w` (read little-endian) that may be a `"`, a `\` or a control
/// character. Every such byte is flagged; a borrow can also flag a byte above a flagged one,
/// never below, so the lowest flag is always a real one.
#[inline(always)]
fn escape_mask(w: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let zero_byte = |w: u64| w.wrapping_sub(ONES) & !w & HIGHS;
    let control = w.wrapping_sub(ONES * 0x20) & !w & HIGHS;
    let quote = zero_byte(w ^ (ONES * u64::from(b'"')));
    let backslash = zero_byte(w ^ (ONES * u64::from(b'\\')));
    control | quote | backslash
}

fn put_optional_str(out: &mut BytesMut, text: Option<&str>) {
    match text {
        Some(text) => put_str(out, text),
        None => out.put_slice(b"null"),
    }
}

/// An unsigned integer in decimal, as serde_json writes it.
pub(crate) fn put_uint(out: &mut BytesMut, v: u32) {
    let mut digits = [0u8; 10];
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

/// How much room to leave after a copy of `payload` for its unescaped text: none without a
/// backslash, else the payload's length (unescaped text is never longer than its escaped form).
pub(crate) fn unescape_room(payload: &[u8]) -> usize {
    if memchr::memchr(b'\\', payload).is_some() {
        payload.len()
    } else {
        0
    }
}

/// The event in the JSON `payload`, or `None` when the general decoder must decide. Escaped
/// strings are unescaped into `room` (at least [`unescape_room`] bytes free, ideally the rest
/// of the payload's own allocation) and split off it, so they share that allocation too.
pub(crate) fn read_request_headers(
    payload: &Bytes,
    room: BytesMut,
    limits: &MessageLimits,
) -> Option<RequestHeadersEvent> {
    let mut reader = Reader {
        input: payload,
        pos: 0,
        payload,
        budget: Budget::new(limits),
        unescaped: room,
    };
    let event = read_event(&mut reader)?;
    reader.skip_space();
    (reader.pos == payload.len()).then_some(event)
}

struct Reader<'a> {
    input: &'a [u8],
    pos: usize,
    payload: &'a Bytes,
    budget: Budget<'a>,
    /// Where escaped strings are unescaped, each split off as a string of the event: room
    /// for all of them, so it never grows.
    unescaped: BytesMut,
}

impl<'a> Reader<'a> {
    #[inline]
    fn skip_space(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.input.get(self.pos) {
            self.pos += 1;
        }
    }

    /// The next byte after any whitespace, not consumed. (Compact JSON, what proxies send,
    /// has no whitespace: the next byte is looked at first.)
    #[inline(always)]
    fn peek(&mut self) -> Option<u8> {
        match self.input.get(self.pos) {
            Some(&b) if b > b' ' => Some(b),
            _ => {
                self.skip_space();
                self.input.get(self.pos).copied()
            }
        }
    }

    #[inline(always)]
    fn eat(&mut self, byte: u8) -> Option<()> {
        (self.peek()? == byte).then(|| self.pos += 1)
    }

    /// Walks an object or array (`open`, `close`): `item` reads each entry or item, counted.
    fn each(
        &mut self,
        open: u8,
        close: u8,
        mut item: impl FnMut(&mut Self) -> Option<()>,
    ) -> Option<()> {
        self.eat(open)?;
        if self.peek()? == close {
            self.pos += 1;
            return Some(());
        }
        loop {
            self.budget.count(1)?;
            item(self)?;
            match self.peek()? {
                b',' => self.pos += 1,
                b if b == close => {
                    self.pos += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// The text the escaped string `raw` stands for, unescaped into the room after the payload.
    fn unescaped(&mut self, raw: Range<usize>) -> Option<ByteStr> {
        let raw = std::str::from_utf8(&self.input[raw]).ok()?;
        unescape(raw, &mut self.unescaped)?;
        let text = self.unescaped.split().freeze();
        Some(ByteStr::from_utf8_slice(&text, 0..text.len()))
    }

    /// A string's raw contents (between the quotes). Control characters are not allowed in
    /// JSON strings.
    ///
    /// One pass, eight bytes at a time, finds the closing quote, whether there were escapes and
    /// whether the text is ASCII, so that plain ASCII text (nearly all header text) is not
    /// looked at again to check its UTF-8.
    #[inline(always)]
    fn raw_string(&mut self) -> Option<Raw> {
        self.eat(b'"')?;
        let start = self.pos;
        let mut escaped = false;
        // Every byte of the text, OR-ed: a high bit means the text is not ASCII.
        let mut seen = 0u64;
        loop {
            let stop = match self.input.get(self.pos..self.pos + 8) {
                Some(word) => {
                    let w = u64::from_le_bytes(word.try_into().ok()?);
                    let stops = escape_mask(w);
                    if stops == 0 {
                        seen |= w;
                        self.pos += 8;
                        continue;
                    }
                    // The lowest flagged byte is a real one (see `escape_mask`); the bytes
                    // before it are text.
                    let before = stops.trailing_zeros() / 8;
                    seen |= w & ((1u64 << (8 * before)) - 1);
                    self.pos += before as usize;
                    self.input[self.pos]
                }
                // The last few bytes of the payload, one at a time.
                None => {
                    let b = *self.input.get(self.pos)?;
                    if !byte_needs_escape(b) {
                        seen |= u64::from(b);
                        self.pos += 1;
                        continue;
                    }
                    b
                }
            };
            match stop {
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
        Some(Raw {
            range: start..end,
            escaped,
            ascii: seen & 0x8080_8080_8080_8080 == 0,
        })
    }
}

/// A string's raw contents, as [`Reader::raw_string`] found them.
struct Raw {
    range: Range<usize>,
    escaped: bool,
    /// Every byte is ASCII, so the text is UTF-8 without a further check.
    ascii: bool,
}

impl<'a> Syntax<'a> for Reader<'a> {
    fn budget(&mut self) -> &mut Budget<'a> {
        &mut self.budget
    }

    fn payload(&self) -> &'a Bytes {
        self.payload
    }

    fn fields(&mut self, mut field: impl FnMut(&mut Self, &'a [u8]) -> Option<()>) -> Option<()> {
        self.each(b'{', b'}', |r| {
            // A field name with escapes is left to the general decoder.
            let name = r.raw_string()?;
            if name.escaped {
                return None;
            }
            r.eat(b':')?;
            let input = r.input;
            field(r, &input[name.range])
        })
    }

    fn header_map(&mut self, headers: &mut ExactBuilder) -> Option<()> {
        // Escaped header text is unescaped into the room after the payload too.
        headers.lend_room(std::mem::take(&mut self.unescaped));
        self.each(b'{', b'}', |r| {
            r.header_name(headers)?;
            r.eat(b':')?;
            r.values(headers)
        })?;
        self.unescaped = headers.spare_room();
        Some(())
    }

    fn values(&mut self, headers: &mut ExactBuilder) -> Option<()> {
        if self.peek()? == b'"' {
            // One value where an array was expected: taken, as by the general decoder.
            return self.value(headers);
        }
        self.each(b'[', b']', |r| r.value(headers))
    }

    #[inline(always)]
    fn text(&mut self) -> Option<ByteStr> {
        match self.raw_string()? {
            Raw {
                range,
                escaped: false,
                ascii: true,
            } => Some(ByteStr::from_utf8_slice(self.payload, range)),
            Raw {
                range,
                escaped: false,
                ascii: false,
            } => ByteStr::from_payload(self.payload, range),
            Raw { range, .. } => self.unescaped(range),
        }
    }

    #[inline(always)]
    fn header_text(&mut self, headers: &mut ExactBuilder) -> Option<Span> {
        match self.raw_string()? {
            Raw {
                range,
                escaped: false,
                ascii: true,
            } => Span::of_utf8(range),
            Raw {
                range,
                escaped: false,
                ascii: false,
            } => Span::checked(self.payload, range),
            Raw { range, .. } => {
                // Rewritten text goes to the headers' own buffer.
                let raw = std::str::from_utf8(&self.input[range]).ok()?;
                headers.own(|own| unescape(raw, own))
            }
        }
    }

    #[inline]
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
}

/// Appends the text a JSON string's raw contents stand for (whole UTF-8 characters, never
/// more bytes than `raw`); `None` for an escape the general decoder should judge (a surrogate,
/// a malformed `\u`, an unknown escape).
fn unescape(raw: &str, out: &mut impl BufMut) -> Option<()> {
    let mut rest = raw.as_bytes();
    let mut utf8 = [0; 4];
    // Runs between escapes are copied whole (a backslash is ASCII, so they are whole UTF-8).
    while let Some(at) = memchr::memchr(b'\\', rest) {
        out.put_slice(&rest[..at]);
        let (&kind, after) = rest[at + 1..].split_first()?;
        rest = after;
        let c = match kind {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                let (hex, after) = rest.split_at_checked(4)?;
                rest = after;
                let mut code = 0;
                for &digit in hex {
                    code = code * 16 + char::from(digit).to_digit(16)?;
                }
                char::from_u32(code)?
            }
            _ => return None,
        };
        out.put_slice(c.encode_utf8(&mut utf8).as_bytes());
    }
    out.put_slice(rest);
    Some(())
}

#[cfg(test)]
mod tests {
    use super::{needs_escape, Budget, MessageLimits, Reader};

    /// What `raw_string` should find in `input` (which starts after an opening quote), byte by
    /// byte: the end of the text, whether it held escapes and whether it is ASCII.
    fn raw_string_by_bytes(input: &[u8]) -> Option<(usize, bool, bool)> {
        let (mut at, mut escaped, mut ascii) = (0, false, true);
        loop {
            match *input.get(at)? {
                b'"' => return Some((at, escaped, ascii)),
                b'\\' => {
                    escaped = true;
                    at += 2;
                }
                b if b < 0x20 => return None,
                b => {
                    ascii &= b < 0x80;
                    at += 1;
                }
            }
        }
    }

    proptest::proptest! {
        /// The word-at-a-time scan finds the same end, escapes and ASCII-ness as a byte-by-byte
        /// one, wherever the stopping byte sits in a word and however near the payload's end.
        #[test]
        fn raw_string_agrees_with_a_byte_by_byte_scan(
            bytes in proptest::collection::vec(
                proptest::sample::select(vec![
                    b'a', b'a', b'a', b'a', b'a', b'a', b'a', b'a', 0x21, 0x7f, 0x80, 0xc3, 0xa9,
                    0xff, 0x1f, 0x00, b'"', b'\\',
                ]),
                0..40,
            )
        ) {
            let mut payload = vec![b'"'];
            payload.extend_from_slice(&bytes);
            let payload = bytes::Bytes::from(payload);
            let limits = MessageLimits::default();
            let mut reader = Reader {
                input: &payload,
                pos: 0,
                payload: &payload,
                budget: Budget::new(&limits),
                unescaped: bytes::BytesMut::new(),
            };
            let found = reader.raw_string().map(|raw| {
                proptest::prop_assert_eq!(raw.range.start, 1);
                Ok((raw.range.end - 1, raw.escaped, raw.ascii))
            });
            let found = found.transpose()?;
            proptest::prop_assert_eq!(found, raw_string_by_bytes(&bytes));
        }

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

#[cfg(test)]
mod sharing_tests {
    use crate::encoding::{decode_shared_event, encode_event, Encoding};
    use crate::event::{Event, RequestHeadersEvent, RequestMetadata};
    use crate::frame::{FrameType, FRAME_HEADER_LEN};
    use crate::headers::Headers;
    use crate::limits::MessageLimits;

    /// Escaped and plain text alike are slices of one allocation, the payload's copy with room
    /// after it, and the event is weighed at that whole allocation.
    #[test]
    fn unescaped_text_shares_the_payload_allocation() {
        let headers = Headers::copy_from([
            ("sec-ch-ua", r#""Chromium";v="124""#),
            ("host", "example.com"),
            ("x-tab", "a\tb\\c"),
        ]);
        let meta = RequestMetadata {
            correlation_id: "c-1".into(),
            ..Default::default()
        };
        let event = Event::RequestHeaders(RequestHeadersEvent::new(meta, "GET", "/", headers));
        let mut frame = bytes::BytesMut::new();
        encode_event(&mut frame, Encoding::Json, &event).unwrap();
        let payload = &frame[FRAME_HEADER_LEN..];
        let (back, weight) = decode_shared_event(
            FrameType::RequestHeaders,
            Encoding::Json,
            payload,
            MessageLimits::default(),
        )
        .unwrap()
        .unwrap();
        assert_eq!(back, event);
        assert_eq!(weight, 2 * payload.len());
        let Event::RequestHeaders(e) = &back else {
            unreachable!()
        };
        let start = e.uri.as_ptr() as usize;
        for escaped in ["sec-ch-ua", "x-tab"] {
            let at = e.headers.first(escaped).unwrap().as_ptr() as usize;
            assert!(
                at > start && at < start + weight,
                "{escaped} is not in the payload's room"
            );
        }
    }
}
