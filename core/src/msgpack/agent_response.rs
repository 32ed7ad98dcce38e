//! The commonest answer, a plain allow, in MessagePack: written directly by the agent, read
//! directly by the proxy.
//!
//! Nearly every answer is an allow with nothing else in it, written by serde in one fixed
//! shape: a map of the ten fields in declaration order, empty lists and maps, `nil` for what is
//! absent, the routing id as the only custom audit value. Going through serde for it costs
//! thousands of instructions on each side (sixteen keys written, then matched and
//! UTF-8-checked, a visitor per field). The writer puts down serde's bytes for it from a
//! template; the reader matches that shape byte for byte and returns `None` for anything else
//! (another decision, any header operation, keys in another order or encoding, a number wider
//! than the general decoder's own reading of it), leaving it to the general decoder. What it
//! takes it decodes exactly as the general decoder does (tests/tests/fast_path.rs and the codec
//! fuzz targets hold both directions to serde); it has at most 33 elements, far under any
//! element budget.

use bytes::{BufMut, Bytes, BytesMut};

use crate::byte_str::ByteStr;
use crate::response::{AgentResponse, Decision};
use crate::response_wire::PlainAllow;

// The fixed bytes of the shape, around the three values that vary: a map of ten entries (each
// key a fixstr), up to the version; then up to the `custom` map; then the `needs_more` key;
// then the rest.
const HEAD: &[u8] = b"\x8a\xa7version";
const BODY: &[u8] = b"\xa8decision\xa5allow\xafrequest_headers\x90\xb0response_headers\x90\
    \xb0routing_metadata\x80\xa5audit\x85\xa4tags\x90\xa8rule_ids\x90\xaaconfidence\xc0\
    \xacreason_codes\x90\xa6custom";
const ID_KEY: &[u8] = b"\xaecorrelation_id";
const NEEDS_MORE: &[u8] = b"\xaaneeds_more";
const TAIL: &[u8] = b"\xb5request_body_mutation\xc0\xb6response_body_mutation\xc0\
    \xb2websocket_decision\xc0";

/// The plain allow in `payload`, or `None` when the general decoder must decide. The routing id
/// is a slice of `payload` (see [`crate::encoding::decode_response`]).
pub(crate) fn read_plain_allow(payload: &Bytes) -> Option<AgentResponse> {
    let mut r = Reader {
        input: payload.strip_prefix(HEAD)?,
    };
    let version = r.u32()?;
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
    response.needs_more = needs_more;
    response.correlation_id = correlation_id;
    Some(response)
}

/// Appends `allow` as serde writes it, byte for byte.
pub(crate) fn write_plain_allow(out: &mut BytesMut, allow: &PlainAllow<'_>) {
    out.put_slice(HEAD);
    super::request_headers::put_uint(out, allow.version);
    out.put_slice(BODY);
    match allow.correlation_id {
        None => out.put_u8(0x80),
        Some(id) => {
            out.put_u8(0x81);
            out.put_slice(ID_KEY);
            super::request_headers::put_str(out, id);
        }
    }
    out.put_slice(NEEDS_MORE);
    out.put_u8(if allow.needs_more { 0xc3 } else { 0xc2 });
    out.put_slice(TAIL);
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
}
