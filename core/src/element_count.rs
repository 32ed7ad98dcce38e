//! Counting the elements of a message before decoding it.
//!
//! An element is an array item or a map entry, at any depth. A message decodes to far more
//! memory than its bytes when it packs many small elements: a 1-byte MessagePack `0` in an array
//! becomes a 32-byte `serde_json::Value`, a 9-byte JSON entry `"k1x":1,` a map entry of ~130
//! bytes. [`count_elements`] reads the payload once, without decoding or allocating anything, so
//! that a message over [`MessageLimits::max_elements`](crate::limits::MessageLimits) is refused
//! before any of it is built.
//!
//! Both encodings give one logical message the same count: a map of `n` entries counts `n`
//! (JSON object or MessagePack map), an array of `n` items counts `n`, scalars count nothing
//! (body bytes are a base64 string in JSON and `bin` in MessagePack: neither counts). The
//! scan is linear in the payload and needs no stack however deep the nesting:
//!
//! - MessagePack: walk the markers, skipping scalar bodies by their length, adding each array's
//!   and map's declared length (a truncated payload counts what it declares, so a 6-byte header
//!   declaring four billion entries is over any budget);
//! - JSON: outside strings, every `,` separates two elements of one container, so the count is
//!   the commas plus the non-empty containers (each has one element more than commas). Strings
//!   are skipped honouring `\"` escapes, so brackets, commas and colons inside them never count.
//!   A payload that is not JSON gets some count; the decoder refuses it anyway.
//!
//! ```
//! use agent_protocol_core::element_count::count_elements;
//! use agent_protocol_core::Encoding;
//!
//! let json = br#"{"a":[1,2,3],"b":{},"c":"[,:\"]"}"#;
//! assert_eq!(count_elements(Encoding::Json, json, usize::MAX), 6);
//! // The same tree in MessagePack.
//! let msgpack = rmp_serde::to_vec(&serde_json::json!({"a": [1, 2, 3], "b": {}, "c": "[,:\"]"})).unwrap();
//! assert_eq!(count_elements(Encoding::MsgPack, &msgpack, usize::MAX), 6);
//! // The scan stops as soon as the count goes over `stop_above`.
//! assert!(count_elements(Encoding::Json, json, 2) > 2);
//! ```

use crate::encoding::Encoding;
use crate::limits::LimitExceeded;

/// The elements (array items plus map entries, at any depth) of the one message in `payload`,
/// written in `encoding` (the payload's own, see
/// [`effective_encoding`](crate::encoding::effective_encoding)).
///
/// Stops as soon as the count exceeds `stop_above` and returns a count above it (not
/// necessarily the full count); pass `usize::MAX` for the full count. Never allocates; linear
/// in `payload.len()`. Input that is malformed or truncated gets the count of what was read
/// (and, in MessagePack, declared) before the scan ran out.
pub fn count_elements(encoding: Encoding, payload: &[u8], stop_above: usize) -> usize {
    match encoding {
        Encoding::Json => json(payload, stop_above),
        Encoding::MsgPack => msgpack(payload, stop_above),
    }
}

/// `Err(LimitExceeded::Elements { max })` if `payload` carries more than `max` elements (see
/// [`count_elements`]).
pub fn check_elements(encoding: Encoding, payload: &[u8], max: usize) -> Result<(), LimitExceeded> {
    if count_elements(encoding, payload, max) > max {
        Err(LimitExceeded::Elements { max })
    } else {
        Ok(())
    }
}

fn json(p: &[u8], stop_above: usize) -> usize {
    let mut count = 0usize;
    let mut i = 0;
    while i < p.len() {
        let byte = p[i];
        i += 1;
        match byte {
            b'"' => i = string_end(p, i),
            b',' => count += 1,
            b'{' | b'[' => {
                // Peek past whitespace: an empty container has no element and no comma. Only
                // whitespace is read twice, so the scan stays linear.
                let next = p[i..]
                    .iter()
                    .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'));
                if matches!(next, Some(b) if *b != b'}' && *b != b']') {
                    count += 1;
                }
            }
            _ => continue,
        }
        if count > stop_above {
            break;
        }
    }
    count
}

/// The index just past the string whose first content byte is at `i`: past the first quote not
/// escaped by a backslash, or the end of the input.
fn string_end(p: &[u8], mut i: usize) -> usize {
    loop {
        i = next_quote_or_backslash(p, i);
        match p.get(i) {
            Some(b'"') => return i + 1,
            Some(_) => i += 2, // a backslash: the next byte is escaped, whatever it is
            None => return p.len(),
        }
    }
}

/// The index of the first `"` or `\` at or after `i` (or `p.len()`), eight bytes at a time:
/// strings (header values, keys) are most of a JSON message, and a byte-at-a-time search over
/// them would cost as much as decoding the message.
fn next_quote_or_backslash(p: &[u8], mut i: usize) -> usize {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    const QUOTES: u64 = u64::from_ne_bytes([b'"'; 8]);
    const BACKSLASHES: u64 = u64::from_ne_bytes([b'\\'; 8]);
    // The high bit of each zero byte of `x` (and possibly of bytes after the first zero byte,
    // which the little-endian load puts at higher positions, so the lowest set bit is exact).
    let zero_bytes = |x: u64| x.wrapping_sub(ONES) & !x & HIGHS;
    while let Some(chunk) = p.get(i..i + 8) {
        let word = u64::from_le_bytes(chunk.try_into().expect("eight bytes"));
        let found = zero_bytes(word ^ QUOTES) | zero_bytes(word ^ BACKSLASHES);
        if found != 0 {
            return i + (found.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while let Some(&b) = p.get(i) {
        if b == b'"' || b == b'\\' {
            return i;
        }
        i += 1;
    }
    p.len()
}

/// Reads a big-endian length of `width` bytes at `*pos`, advancing past it.
fn read_len(p: &[u8], pos: &mut usize, width: usize) -> Option<usize> {
    let bytes = p.get(*pos..pos.checked_add(width)?)?;
    *pos += width;
    Some(bytes.iter().fold(0usize, |n, b| (n << 8) | usize::from(*b)))
}

fn msgpack(p: &[u8], stop_above: usize) -> usize {
    /// What one marker stands for.
    enum Value {
        /// A scalar whose body is this many bytes (after any length field).
        Skip(usize),
        /// A str, bin or ext: the body length is a `width`-byte field, plus `extra` bytes (the
        /// ext type).
        SkipLen {
            width: usize,
            extra: usize,
        },
        Array(usize),
        ArrayLen(usize),
        Map(usize),
        MapLen(usize),
        /// The reserved marker 0xc1: not MessagePack, the decoder refuses it.
        Invalid,
    }
    let mut pos = 0usize;
    // Values still to read: the message, then each container's items (two per map entry).
    let mut pending = 1usize;
    let mut count = 0usize;
    while pending > 0 {
        pending -= 1;
        let Some(&marker) = p.get(pos) else { break };
        pos += 1;
        let value = match marker {
            0x00..=0x7f | 0xc0 | 0xc2 | 0xc3 | 0xe0..=0xff => Value::Skip(0),
            0x80..=0x8f => Value::Map(usize::from(marker & 0x0f)),
            0x90..=0x9f => Value::Array(usize::from(marker & 0x0f)),
            0xa0..=0xbf => Value::Skip(usize::from(marker & 0x1f)),
            0xc1 => Value::Invalid,
            0xc4 | 0xd9 => Value::SkipLen { width: 1, extra: 0 },
            0xc5 | 0xda => Value::SkipLen { width: 2, extra: 0 },
            0xc6 | 0xdb => Value::SkipLen { width: 4, extra: 0 },
            0xc7 => Value::SkipLen { width: 1, extra: 1 },
            0xc8 => Value::SkipLen { width: 2, extra: 1 },
            0xc9 => Value::SkipLen { width: 4, extra: 1 },
            0xcc | 0xd0 => Value::Skip(1),
            0xcd | 0xd1 => Value::Skip(2),
            0xca | 0xce | 0xd2 => Value::Skip(4),
            0xcb | 0xcf | 0xd3 => Value::Skip(8),
            0xd4 => Value::Skip(2),
            0xd5 => Value::Skip(3),
            0xd6 => Value::Skip(5),
            0xd7 => Value::Skip(9),
            0xd8 => Value::Skip(17),
            0xdc => Value::ArrayLen(2),
            0xdd => Value::ArrayLen(4),
            0xde => Value::MapLen(2),
            0xdf => Value::MapLen(4),
        };
        let (items, values) = match value {
            Value::Skip(n) => {
                pos = pos.saturating_add(n);
                continue;
            }
            Value::SkipLen { width, extra } => {
                let Some(n) = read_len(p, &mut pos, width) else {
                    break;
                };
                pos = pos.saturating_add(extra).saturating_add(n);
                continue;
            }
            Value::Invalid => break,
            Value::Array(n) => (n, n),
            Value::Map(n) => (n, n.saturating_mul(2)),
            Value::ArrayLen(width) => {
                let Some(n) = read_len(p, &mut pos, width) else {
                    break;
                };
                (n, n)
            }
            Value::MapLen(width) => {
                let Some(n) = read_len(p, &mut pos, width) else {
                    break;
                };
                (n, n.saturating_mul(2))
            }
        };
        count = count.saturating_add(items);
        if count > stop_above {
            break;
        }
        pending = pending.saturating_add(values);
    }
    count
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn both(value: &Value) -> (usize, usize) {
        let json = serde_json::to_vec(value).unwrap();
        let msgpack = rmp_serde::to_vec(value).unwrap();
        (
            count_elements(Encoding::Json, &json, usize::MAX),
            count_elements(Encoding::MsgPack, &msgpack, usize::MAX),
        )
    }

    /// The count by definition, from the decoded tree.
    fn reference_count(value: &Value) -> usize {
        match value {
            Value::Array(items) => items.len() + items.iter().map(reference_count).sum::<usize>(),
            Value::Object(map) => map.len() + map.values().map(reference_count).sum::<usize>(),
            _ => 0,
        }
    }

    #[test]
    fn the_same_tree_counts_the_same_in_both_encodings() {
        let cases = [
            json!(null),
            json!(7),
            json!("text"),
            json!([]),
            json!({}),
            json!([[], {}, [[]], {"a": {}}]),
            json!({"a": [1, 2, 3], "b": {"c": null, "d": [true, false]}, "e": 1.5}),
            json!({"correlation_id": "c", "status": 200, "headers": {"x": ["1", "2"], "y": ["3"]}}),
            json!([-1, -200, 70000, 5_000_000_000u64, -5_000_000_000i64, 0.25]),
            json!(["", "a".repeat(40), "b".repeat(300), "c".repeat(70_000)]),
        ];
        for value in &cases {
            let want = reference_count(value);
            assert_eq!(both(value), (want, want), "{value}");
        }
    }

    #[test]
    fn nesting_counts_every_level_and_needs_no_stack() {
        // 100,000 levels: a recursive scan would overflow the stack.
        let depth = 100_000;
        let json = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        assert_eq!(
            count_elements(Encoding::Json, json.as_bytes(), usize::MAX),
            depth - 1
        );
        let msgpack = vec![0x91u8; depth]; // fixarray of one item, nested
        assert_eq!(
            count_elements(Encoding::MsgPack, &msgpack, usize::MAX),
            depth
        );
        let nested = json!({"a": {"b": {"c": [[1], [2, 3]]}}});
        assert_eq!(both(&nested), (8, 8));
    }

    #[test]
    fn json_strings_hide_brackets_commas_colons_and_escaped_quotes() {
        let tricky = [
            r#"{"k,[{":"v],}:"}"#,
            r#"{"k":"a \"quoted, [string]\" here"}"#,
            r#"{"k":"ends in a backslash \\"}"#,
            r#"{"k":"\\\"{,,,}\\"}"#,
            r#"{"k":"\u0022,\u005b"}"#,
        ];
        for text in tricky {
            let value: Value = serde_json::from_str(text).unwrap();
            assert_eq!(reference_count(&value), 1, "{text}");
            assert_eq!(
                count_elements(Encoding::Json, text.as_bytes(), usize::MAX),
                1,
                "{text}"
            );
            assert_eq!(both(&value), (1, 1), "{text}");
        }
    }

    #[test]
    fn escapes_at_every_offset_of_the_eight_byte_search() {
        // Strings of every length up to past two words, with quotes, backslashes and
        // brackets at every position, as serde_json escapes them.
        let alphabet = ['a', '"', '\\', '[', ',', ':', '{', '\u{e9}'];
        for len in 0..20 {
            for special in alphabet {
                for at in 0..len.max(1) {
                    let text: String = (0..len)
                        .map(|i| if i == at { special } else { 'a' })
                        .collect();
                    let value = json!([text, {"k": [text, text]}, text]);
                    assert_eq!(both(&value), (6, 6), "{value}");
                }
            }
        }
        // A run of backslashes straddling a word boundary before the closing quote.
        for run in 0..20 {
            let text = "\\".repeat(run);
            assert_eq!(both(&json!([text, "x"])), (2, 2), "{run}");
        }
    }

    #[test]
    fn whitespace_and_empty_containers() {
        let text = b" { \"a\" : [ ] , \"b\" : {\n\t} , \"c\" : [ 1 , 2 ] } ";
        assert_eq!(count_elements(Encoding::Json, text, usize::MAX), 5);
        assert_eq!(count_elements(Encoding::Json, b"[ ]", usize::MAX), 0);
        assert_eq!(count_elements(Encoding::Json, b"{\r\n}", usize::MAX), 0);
        assert_eq!(count_elements(Encoding::Json, b"", usize::MAX), 0);
        assert_eq!(count_elements(Encoding::MsgPack, b"", usize::MAX), 0);
        assert_eq!(count_elements(Encoding::MsgPack, &[0x80], usize::MAX), 0);
        assert_eq!(count_elements(Encoding::MsgPack, &[0x90], usize::MAX), 0);
    }

    #[test]
    fn truncated_input_counts_what_it_read_and_declared() {
        // JSON cut inside a string: the brackets after the cut are never seen.
        assert_eq!(
            count_elements(Encoding::Json, br#"{"a":[1,2],"b":"[,,"#, usize::MAX),
            4
        );
        assert_eq!(count_elements(Encoding::Json, b"[1,2,", usize::MAX), 3);
        assert_eq!(count_elements(Encoding::Json, b"[", usize::MAX), 0);
        assert_eq!(count_elements(Encoding::Json, b"\"\\", usize::MAX), 0);
        // MessagePack: a map32 declaring 2^32-1 entries and nothing else.
        let huge = [0xdf, 0xff, 0xff, 0xff, 0xff];
        assert_eq!(
            count_elements(Encoding::MsgPack, &huge, usize::MAX),
            u32::MAX as usize
        );
        assert_eq!(
            check_elements(Encoding::MsgPack, &huge, 100_000),
            Err(LimitExceeded::Elements { max: 100_000 })
        );
        // Cut inside a length field, a str body, after a container header.
        assert_eq!(
            count_elements(Encoding::MsgPack, &[0xdc, 0x00], usize::MAX),
            0
        );
        assert_eq!(
            count_elements(Encoding::MsgPack, &[0x92, 0xa5, b'a'], usize::MAX),
            2
        );
        assert_eq!(
            count_elements(Encoding::MsgPack, &[0x93, 0x01], usize::MAX),
            3
        );
        // The reserved marker stops the scan.
        assert_eq!(
            count_elements(Encoding::MsgPack, &[0x92, 0xc1, 0x91, 0x01], usize::MAX),
            2
        );
    }

    #[test]
    fn msgpack_scalars_of_every_width_are_skipped_whole() {
        use rmp::encode::*;
        let mut p = Vec::new();
        write_array_len(&mut p, 12).unwrap();
        write_u8(&mut p, 200).unwrap();
        write_u16(&mut p, 0x9191).unwrap(); // bytes that look like array markers
        write_u32(&mut p, 0x9191_9191).unwrap();
        write_u64(&mut p, 0x9191_9191_9191_9191).unwrap();
        write_i8(&mut p, -100).unwrap();
        write_f32(&mut p, 1.5).unwrap();
        write_f64(&mut p, 2.5).unwrap();
        write_str(&mut p, &"\u{91}".repeat(200)).unwrap(); // str8/str16 of 0xc2 0x91 pairs
        write_bin(&mut p, &[0x91; 70_000]).unwrap(); // bin32
        write_ext_meta(&mut p, 4, 7).unwrap(); // fixext4
        p.extend_from_slice(&[0x91; 4]);
        write_ext_meta(&mut p, 300, 7).unwrap(); // ext16
        p.extend_from_slice(&[0x91; 300]);
        write_array_len(&mut p, 1).unwrap();
        write_nil(&mut p).unwrap();
        assert_eq!(count_elements(Encoding::MsgPack, &p, usize::MAX), 13);
    }

    #[test]
    fn the_scan_stops_just_past_the_budget() {
        let json = format!("[{}0]", "0,".repeat(1000));
        assert_eq!(
            count_elements(Encoding::Json, json.as_bytes(), usize::MAX),
            1001
        );
        assert_eq!(count_elements(Encoding::Json, json.as_bytes(), 10), 11);
        assert_eq!(
            check_elements(Encoding::Json, json.as_bytes(), 1001),
            Ok(())
        );
        assert_eq!(
            check_elements(Encoding::Json, json.as_bytes(), 1000),
            Err(LimitExceeded::Elements { max: 1000 })
        );
    }
}
