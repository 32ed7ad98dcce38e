//! The hottest message, RequestHeaders, written as JSON directly: exactly the bytes the general
//! (serde_json) encoder produces, without a serializer in between. Text that needs no escaping
//! (no `"`, `\` or control character: nearly all of it) is copied as it is; anything else is
//! escaped by serde_json itself, so the two cannot differ. The property test compares them byte
//! for byte.

use bytes::{BufMut, BytesMut};

use crate::event::RequestHeadersEvent;

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

/// Whether `bytes` hold a `"`, a `\` or a control character, eight bytes at a time. (The
/// word tests find every such byte; were one ever to flag a clean word, the text would only
/// take serde_json's path, which writes the same bytes.)
fn needs_escape(bytes: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let zero_byte = |w: u64| w.wrapping_sub(ONES) & !w & HIGHS;
    let mut words = bytes.chunks_exact(8);
    for word in &mut words {
        let mut le = [0u8; 8];
        le.copy_from_slice(word);
        let w = u64::from_le_bytes(le);
        let control = w.wrapping_sub(ONES * 0x20) & !w & HIGHS;
        let quote = zero_byte(w ^ (ONES * u64::from(b'"')));
        let backslash = zero_byte(w ^ (ONES * u64::from(b'\\')));
        if control | quote | backslash != 0 {
            return true;
        }
    }
    words
        .remainder()
        .iter()
        .any(|&b| b == b'"' || b == b'\\' || b < 0x20)
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
