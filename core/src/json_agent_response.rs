//! A simple allow (see `crate::simple_allow`) in JSON: the compact text serde_json writes.
//!
//! The reader gives up on a string with an escape or a control character, a version with a
//! sign, fraction, exponent, leading zero or beyond `u32`, and whitespace: all of it is left to
//! the general decoder.

use bytes::{BufMut, Bytes, BytesMut};

use crate::byte_str::ByteStr;
use crate::json_request_headers::{put_str, put_uint};
use crate::response::{AgentResponse, HeaderOp};
use crate::simple_allow::{self, SimpleAllow, MAX_DIRECT_OPS};

/// The simple allow in `payload`, or `None` when the general decoder must decide. The routing
/// id is a slice of `payload` (see [`crate::encoding::decode_response`]).
pub(crate) fn read_simple_allow(payload: &Bytes) -> Option<AgentResponse> {
    simple_allow::read::<Reader>(payload)
}

/// Appends `allow` as serde_json writes it, byte for byte.
pub(crate) fn write_simple_allow(out: &mut BytesMut, allow: &SimpleAllow<'_>) {
    simple_allow::write::<Json>(out, allow)
}

struct Json;

const ID_KEY: &[u8] = br#""correlation_id":"#;

impl simple_allow::Syntax for Json {
    const HEAD: &'static [u8] = br#"{"version":"#;
    const REQUEST_HEADERS: &'static [u8] = br#","decision":"allow","request_headers":"#;
    const RESPONSE_HEADERS: &'static [u8] = br#","response_headers":"#;
    const BODY: &'static [u8] = br#","routing_metadata":{},"audit":{"tags":[],"rule_ids":[],"confidence":null,"reason_codes":[],"custom":{"#;
    const NEEDS_MORE: &'static [u8] = br#"}},"needs_more":"#;
    const TAIL: &'static [u8] =
        br#","request_body_mutation":null,"response_body_mutation":null,"websocket_decision":null}"#;

    fn put_version(out: &mut BytesMut, version: u32) {
        put_uint(out, version);
    }

    /// Each operation `{"set":{"name":..,"value":..}}`, as serde writes an externally tagged
    /// variant.
    fn put_ops(out: &mut BytesMut, ops: &[HeaderOp]) {
        out.put_u8(b'[');
        for (i, op) in ops.iter().enumerate() {
            if i > 0 {
                out.put_u8(b',');
            }
            let (variant, name, value): (&[u8], &str, Option<&str>) = match op {
                HeaderOp::Set { name, value } => (br#"{"set":{"name":"#, name, Some(value)),
                HeaderOp::Add { name, value } => (br#"{"add":{"name":"#, name, Some(value)),
                HeaderOp::Remove { name } => (br#"{"remove":{"name":"#, name, None),
            };
            out.put_slice(variant);
            put_str(out, name);
            if let Some(value) = value {
                out.put_slice(br#","value":"#);
                put_str(out, value);
            }
            out.put_slice(b"}}");
        }
        out.put_u8(b']');
    }

    fn put_correlation_id(out: &mut BytesMut, id: Option<&str>) {
        if let Some(id) = id {
            out.put_slice(ID_KEY);
            put_str(out, id);
        }
    }

    fn put_needs_more(out: &mut BytesMut, needs_more: bool) {
        out.put_slice(if needs_more { b"true" } else { b"false" });
    }
}

struct Reader<'a> {
    payload: &'a Bytes,
    pos: usize,
}

impl<'a> simple_allow::Reader<'a> for Reader<'a> {
    type Syntax = Json;

    fn new(payload: &'a Bytes) -> Self {
        Self { payload, pos: 0 }
    }

    fn rest(&self) -> &[u8] {
        &self.payload[self.pos..]
    }

    fn fixed(&mut self, expected: &[u8]) -> Option<()> {
        self.rest().starts_with(expected).then(|| {
            self.pos += expected.len();
        })
    }

    /// A `u32` in canonical digits: no sign, fraction, exponent or leading zero.
    fn version(&mut self) -> Option<u32> {
        let digits = self
            .rest()
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count();
        let number = &self.rest()[..digits];
        if number.is_empty() || (number[0] == b'0' && number.len() > 1) || number.len() > 10 {
            return None;
        }
        let version = number.iter().try_fold(0u32, |v, d| {
            v.checked_mul(10)?.checked_add(u32::from(d - b'0'))
        })?;
        self.pos += digits;
        Some(version)
    }

    fn ops(&mut self) -> Option<Vec<HeaderOp>> {
        self.fixed(b"[")?;
        let mut ops = Vec::new();
        if self.fixed(b"]").is_some() {
            return Some(ops);
        }
        loop {
            if ops.len() == MAX_DIRECT_OPS {
                return None;
            }
            ops.push(self.op()?);
            if self.fixed(b"]").is_some() {
                return Some(ops);
            }
            self.fixed(b",")?;
        }
    }

    fn correlation_id(&mut self) -> Option<Option<ByteStr>> {
        if self.fixed(ID_KEY).is_none() {
            return Some(None);
        }
        let range = self.string()?;
        ByteStr::from_payload(self.payload, range).map(Some)
    }

    fn needs_more(&mut self) -> Option<bool> {
        if self.fixed(b"false").is_some() {
            return Some(false);
        }
        self.fixed(b"true").map(|()| true)
    }
}

impl Reader<'_> {
    /// A string without escapes or control characters: the range of its contents.
    fn string(&mut self) -> Option<std::ops::Range<usize>> {
        use simple_allow::Reader as _;
        self.fixed(b"\"")?;
        let start = self.pos;
        let len = self
            .rest()
            .iter()
            .position(|&b| b == b'"' || b == b'\\' || b < 0x20)?;
        let end = start + len;
        if self.payload[end] != b'"' {
            return None;
        }
        self.pos = end + 1;
        Some(start..end)
    }

    /// The same, as an owned `String` (what a header operation holds).
    fn owned_string(&mut self) -> Option<String> {
        let range = self.string()?;
        std::str::from_utf8(&self.payload[range])
            .ok()
            .map(str::to_owned)
    }

    fn op(&mut self) -> Option<HeaderOp> {
        use simple_allow::Reader as _;
        let op = if self.fixed(br#"{"set":{"name":"#).is_some() {
            let name = self.owned_string()?;
            self.fixed(br#","value":"#)?;
            HeaderOp::Set {
                name,
                value: self.owned_string()?,
            }
        } else if self.fixed(br#"{"add":{"name":"#).is_some() {
            let name = self.owned_string()?;
            self.fixed(br#","value":"#)?;
            HeaderOp::Add {
                name,
                value: self.owned_string()?,
            }
        } else {
            self.fixed(br#"{"remove":{"name":"#)?;
            HeaderOp::Remove {
                name: self.owned_string()?,
            }
        };
        self.fixed(b"}}")?;
        Some(op)
    }
}
