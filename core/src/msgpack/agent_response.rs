//! The commonest answer, a simple allow (an allow with nothing in it but header operations), in
//! MessagePack: written directly by the agent, read directly by the proxy.
//!
//! Nearly every answer is such an allow, written by serde in one fixed shape: a map of the ten
//! fields in declaration order, each header operation a one-entry map from its variant to a map
//! of its fields, empty lists and maps, `nil` for what is absent, the routing id as the only
//! custom audit value. Going through serde for it costs thousands of instructions on each side
//! (sixteen keys written, then matched and UTF-8-checked, a visitor per field). The writer puts
//! down serde's bytes around fixed templates; the reader matches that shape byte for byte and
//! returns `None` for anything else (another decision, more than [`MAX_DIRECT_OPS`] operations
//! in a list, keys in another order or encoding, a number wider than the general decoder's own
//! reading of it), leaving it to the general decoder. What it takes it decodes exactly as the
//! general decoder does (tests/tests/fast_path.rs and the codec fuzz targets hold both
//! directions to serde); it has at most a few hundred elements, far under any element budget.

use bytes::{BufMut, Bytes, BytesMut};

use super::request_headers::{put_str, put_uint};
use crate::byte_str::ByteStr;
use crate::response::{AgentResponse, Decision, HeaderOp};
use crate::response_wire::{SimpleAllow, MAX_DIRECT_OPS};

// The fixed bytes of the shape, around the values that vary: a map of ten entries (each key a
// fixstr), up to the version; then up to the request's header operations; then up to the
// response's; then up to the `custom` map; then the `needs_more` key; then the rest.
const HEAD: &[u8] = b"\x8a\xa7version";
const REQUEST_HEADERS: &[u8] = b"\xa8decision\xa5allow\xafrequest_headers";
const RESPONSE_HEADERS: &[u8] = b"\xb0response_headers";
const BODY: &[u8] = b"\xb0routing_metadata\x80\xa5audit\x85\xa4tags\x90\xa8rule_ids\x90\
    \xaaconfidence\xc0\xacreason_codes\x90\xa6custom";
const ID_KEY: &[u8] = b"\xaecorrelation_id";
const NEEDS_MORE: &[u8] = b"\xaaneeds_more";
const TAIL: &[u8] = b"\xb5request_body_mutation\xc0\xb6response_body_mutation\xc0\
    \xb2websocket_decision\xc0";

// An operation, as serde writes an externally tagged variant: a map of one entry, the variant's
// name to a map of its fields.
const SET: &[u8] = b"\x81\xa3set\x82\xa4name";
const ADD: &[u8] = b"\x81\xa3add\x82\xa4name";
const REMOVE: &[u8] = b"\x81\xa6remove\x81\xa4name";
const VALUE: &[u8] = b"\xa5value";

/// The simple allow in `payload`, or `None` when the general decoder must decide. The routing
/// id is a slice of `payload` (see [`crate::encoding::decode_response`]).
pub(crate) fn read_simple_allow(payload: &Bytes) -> Option<AgentResponse> {
    let mut r = Reader {
        input: payload.strip_prefix(HEAD)?,
    };
    let version = r.u32()?;
    r.fixed(REQUEST_HEADERS)?;
    let request_headers = r.ops()?;
    r.fixed(RESPONSE_HEADERS)?;
    let response_headers = r.ops()?;
    r.fixed(BODY)?;
    let correlation_id = match r.next()? {
        0x80 => None,
        0x81 => {
            r.fixed(ID_KEY)?;
            let id = r.text()?;
            let start = payload.len() - r.input.len() - id.len();
            Some(ByteStr::from_payload(payload, start..start + id.len())?)
        }
        _ => return None,
    };
    r.fixed(NEEDS_MORE)?;
    let needs_more = match r.next()? {
        0xc2 => false,
        0xc3 => true,
        _ => return None,
    };
    if r.input != TAIL {
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

/// Appends `allow` as serde writes it, byte for byte.
pub(crate) fn write_simple_allow(out: &mut BytesMut, allow: &SimpleAllow<'_>) {
    out.put_slice(HEAD);
    put_uint(out, allow.version);
    out.put_slice(REQUEST_HEADERS);
    put_ops(out, allow.request_headers);
    out.put_slice(RESPONSE_HEADERS);
    put_ops(out, allow.response_headers);
    out.put_slice(BODY);
    match allow.correlation_id {
        None => out.put_u8(0x80),
        Some(id) => {
            out.put_u8(0x81);
            out.put_slice(ID_KEY);
            put_str(out, id);
        }
    }
    out.put_slice(NEEDS_MORE);
    out.put_u8(if allow.needs_more { 0xc3 } else { 0xc2 });
    out.put_slice(TAIL);
}

fn put_ops(out: &mut BytesMut, ops: &[HeaderOp]) {
    // The narrowest array header, as rmp writes one.
    let n = ops.len();
    if n < 16 {
        out.put_u8(0x90 | n as u8);
    } else if let Ok(n) = u16::try_from(n) {
        out.put_u8(0xdc);
        out.put_u16(n);
    } else {
        out.put_u8(0xdd);
        out.put_u32(n as u32);
    }
    for op in ops {
        match op {
            HeaderOp::Set { name, value } | HeaderOp::Add { name, value } => {
                let set = matches!(op, HeaderOp::Set { .. });
                out.put_slice(if set { SET } else { ADD });
                put_str(out, name);
                out.put_slice(VALUE);
                put_str(out, value);
            }
            HeaderOp::Remove { name } => {
                out.put_slice(REMOVE);
                put_str(out, name);
            }
        }
    }
}

struct Reader<'a> {
    input: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (taken, rest) = self.input.split_at_checked(n)?;
        self.input = rest;
        Some(taken)
    }

    fn next(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    /// The fixed bytes `expected`.
    fn fixed(&mut self, expected: &[u8]) -> Option<()> {
        (self.take(expected.len())? == expected).then_some(())
    }

    /// A non-negative integer in the widths serde writes a `u32` in.
    fn u32(&mut self) -> Option<u32> {
        match self.next()? {
            b @ 0x00..=0x7f => Some(u32::from(b)),
            0xcc => self.next().map(u32::from),
            0xcd => Some(u32::from(u16::from_be_bytes(
                self.take(2)?.try_into().ok()?,
            ))),
            0xce => Some(u32::from_be_bytes(self.take(4)?.try_into().ok()?)),
            _ => None,
        }
    }

    /// The bytes of a string of any width (their UTF-8 is checked by the caller).
    fn text(&mut self) -> Option<&'a [u8]> {
        let len = match self.next()? {
            b @ 0xa0..=0xbf => usize::from(b & 0x1f),
            0xd9 => usize::from(self.next()?),
            0xda => usize::from(u16::from_be_bytes(self.take(2)?.try_into().ok()?)),
            0xdb => usize::try_from(u32::from_be_bytes(self.take(4)?.try_into().ok()?)).ok()?,
            _ => return None,
        };
        self.take(len)
    }

    /// A UTF-8 string of any width, as an owned `String` (what a header operation holds).
    fn owned_text(&mut self) -> Option<String> {
        std::str::from_utf8(self.text()?).ok().map(str::to_owned)
    }

    /// A list of at most [`MAX_DIRECT_OPS`] header operations in serde's shape.
    fn ops(&mut self) -> Option<Vec<HeaderOp>> {
        let n = match self.next()? {
            b @ 0x90..=0x9f => usize::from(b & 0x0f),
            0xdc => usize::from(u16::from_be_bytes(self.take(2)?.try_into().ok()?)),
            _ => return None,
        };
        if n > MAX_DIRECT_OPS {
            return None;
        }
        let mut ops = Vec::with_capacity(n);
        for _ in 0..n {
            let op = if self.input.starts_with(REMOVE) {
                self.fixed(REMOVE)?;
                HeaderOp::Remove {
                    name: self.owned_text()?,
                }
            } else {
                let set = self.input.starts_with(SET);
                self.fixed(if set { SET } else { ADD })?;
                let name = self.owned_text()?;
                self.fixed(VALUE)?;
                let value = self.owned_text()?;
                if set {
                    HeaderOp::Set { name, value }
                } else {
                    HeaderOp::Add { name, value }
                }
            };
            ops.push(op);
        }
        Some(ops)
    }
}
