//! The commonest answer, a simple allow (an allow with nothing in it but header operations), in
//! JSON: written directly by the agent, read directly by the proxy; the JSON twin of
//! `crate::msgpack::agent_response`.
//!
//! The writer puts down the compact text serde_json writes for such an answer. The reader
//! matches that text byte for byte around the values that vary (the version, the header
//! operations, `needs_more` and the routing id); a string with an escape or a control character,
//! a version with a sign, fraction, exponent, leading zero or beyond `u32`, whitespace, more than
//! [`MAX_DIRECT_OPS`] operations in a list, another decision or any other shape is left to the
//! general decoder, so what it takes it decodes exactly as the general decoder does
//! (tests/tests/fast_path.rs and the codec fuzz targets hold it to that).

use bytes::{BufMut, Bytes, BytesMut};

use crate::byte_str::ByteStr;
use crate::json_request_headers::{put_str, put_uint};
use crate::response::{AgentResponse, Decision, HeaderOp};
use crate::response_wire::{SimpleAllow, MAX_DIRECT_OPS};

const HEAD: &[u8] = br#"{"version":"#;
const REQUEST_HEADERS: &[u8] = br#","decision":"allow","request_headers":"#;
const RESPONSE_HEADERS: &[u8] = br#","response_headers":"#;
const BODY: &[u8] = br#","routing_metadata":{},"audit":{"tags":[],"rule_ids":[],"confidence":null,"reason_codes":[],"custom":{"#;
const ID_KEY: &[u8] = br#""correlation_id":"#;
const NEEDS_MORE: &[u8] = br#"}},"needs_more":"#;
const TAIL: &[u8] =
    br#","request_body_mutation":null,"response_body_mutation":null,"websocket_decision":null}"#;

/// The simple allow in `payload`, or `None` when the general decoder must decide. The routing
/// id is a slice of `payload` (see [`crate::encoding::decode_response`]).
pub(crate) fn read_simple_allow(payload: &Bytes) -> Option<AgentResponse> {
    let mut r = Reader { payload, pos: 0 };
    r.fixed(HEAD)?;
    let version = r.version()?;
    r.fixed(REQUEST_HEADERS)?;
    let request_headers = r.ops()?;
    r.fixed(RESPONSE_HEADERS)?;
    let response_headers = r.ops()?;
    r.fixed(BODY)?;
    let correlation_id = if r.rest().starts_with(ID_KEY) {
        r.fixed(ID_KEY)?;
        let range = r.string()?;
        Some(ByteStr::from_payload(payload, range)?)
    } else {
        None
    };
    r.fixed(NEEDS_MORE)?;
    let needs_more = if r.rest().starts_with(b"false") {
        r.fixed(b"false")?;
        false
    } else {
        r.fixed(b"true")?;
        true
    };
    if r.rest() != TAIL {
        return None;
    }
    let mut response = AgentResponse::new(Decision::Allow);
    response.version = version;
    response.request_headers = request_headers;
    response.response_headers = response_headers;
    response.needs_more = needs_more;
    response.correlation_id = correlation_id;
    Some(response)
}

/// Appends `allow` as serde_json writes it, byte for byte.
pub(crate) fn write_simple_allow(out: &mut BytesMut, allow: &SimpleAllow<'_>) {
    out.put_slice(HEAD);
    put_uint(out, allow.version);
    out.put_slice(REQUEST_HEADERS);
    put_ops(out, allow.request_headers);
    out.put_slice(RESPONSE_HEADERS);
    put_ops(out, allow.response_headers);
    out.put_slice(BODY);
    if let Some(id) = allow.correlation_id {
        out.put_slice(ID_KEY);
        put_str(out, id);
    }
    out.put_slice(NEEDS_MORE);
    out.put_slice(if allow.needs_more { b"true" } else { b"false" });
    out.put_slice(TAIL);
}

/// A list of header operations, each `{"set":{"name":..,"value":..}}` as serde writes an
/// externally tagged variant.
fn put_ops(out: &mut BytesMut, ops: &[HeaderOp]) {
    out.put_u8(b'[');
    for (i, op) in ops.iter().enumerate() {
        if i > 0 {
            out.put_u8(b',');
        }
        let (variant, name, value) = op_parts(op);
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

/// An operation's text up to its name's value, its name and its value.
fn op_parts(op: &HeaderOp) -> (&'static [u8], &str, Option<&str>) {
    match op {
        HeaderOp::Set { name, value } => (br#"{"set":{"name":"#, name, Some(value)),
        HeaderOp::Add { name, value } => (br#"{"add":{"name":"#, name, Some(value)),
        HeaderOp::Remove { name } => (br#"{"remove":{"name":"#, name, None),
    }
}

struct Reader<'a> {
    payload: &'a Bytes,
    pos: usize,
}

impl Reader<'_> {
    fn rest(&self) -> &[u8] {
        &self.payload[self.pos..]
    }

    /// The fixed bytes `expected`.
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

    /// A string without escapes or control characters: the range of its contents.
    fn string(&mut self) -> Option<std::ops::Range<usize>> {
        self.fixed(b"\"")?;
        let start = self.pos;
        let end = start
            + self
                .rest()
                .iter()
                .position(|&b| b == b'"' || b == b'\\' || b < 0x20)?;
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

    /// A list of at most [`MAX_DIRECT_OPS`] header operations in serde's shape.
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

    fn op(&mut self) -> Option<HeaderOp> {
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
