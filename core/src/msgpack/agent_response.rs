//! A simple allow (see `crate::simple_allow`) in MessagePack: what rmp-serde writes, a map of
//! the ten fields in declaration order, each key a fixstr, each header operation a one-entry map
//! from its variant to a map of its fields.
//!
//! The reader gives up on keys in another order or encoding and on a number wider than the
//! general decoder's own reading of it; strings of every width are read as the general decoder
//! reads them.

use bytes::{BufMut, Bytes, BytesMut};

use super::request_headers::{put_len, put_str, put_uint};
use crate::byte_str::ByteStr;
use crate::response::{AgentResponse, HeaderOp};
use crate::simple_allow::{self, SimpleAllow, MAX_DIRECT_OPS};

/// The simple allow in `payload`, or `None` when the general decoder must decide. The routing
/// id is a slice of `payload` (see [`crate::encoding::decode_response`]).
pub(crate) fn read_simple_allow(payload: &Bytes) -> Option<AgentResponse> {
    simple_allow::read::<Reader>(payload)
}

/// Appends `allow` as rmp-serde writes it, byte for byte.
pub(crate) fn write_simple_allow(out: &mut BytesMut, allow: &SimpleAllow<'_>) {
    simple_allow::write::<MsgPack>(out, allow)
}

struct MsgPack;

const ID_KEY: &[u8] = b"\xaecorrelation_id";
// An operation: a map of one entry, the variant's name to a map of its fields.
const SET: &[u8] = b"\x81\xa3set\x82\xa4name";
const ADD: &[u8] = b"\x81\xa3add\x82\xa4name";
const REMOVE: &[u8] = b"\x81\xa6remove\x81\xa4name";
const VALUE: &[u8] = b"\xa5value";

impl simple_allow::Syntax for MsgPack {
    const HEAD: &'static [u8] = b"\x8a\xa7version";
    const REQUEST_HEADERS: &'static [u8] = b"\xa8decision\xa5allow\xafrequest_headers";
    const RESPONSE_HEADERS: &'static [u8] = b"\xb0response_headers";
    const BODY: &'static [u8] = b"\xb0routing_metadata\x80\xa5audit\x85\xa4tags\x90\
        \xa8rule_ids\x90\xaaconfidence\xc0\xacreason_codes\x90\xa6custom";
    const NEEDS_MORE: &'static [u8] = b"\xaaneeds_more";
    const TAIL: &'static [u8] = b"\xb5request_body_mutation\xc0\xb6response_body_mutation\xc0\
        \xb2websocket_decision\xc0";

    fn put_version(out: &mut BytesMut, version: u32) {
        put_uint(out, version);
    }

    fn put_ops(out: &mut BytesMut, ops: &[HeaderOp]) {
        // The narrowest array header, as rmp writes one.
        put_len(out, ops.len(), 0x90, 0xdc);
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

    /// `custom` is a map of no entry, or of the routing id's.
    fn put_correlation_id(out: &mut BytesMut, id: Option<&str>) {
        match id {
            None => out.put_u8(0x80),
            Some(id) => {
                out.put_u8(0x81);
                out.put_slice(ID_KEY);
                put_str(out, id);
            }
        }
    }

    fn put_needs_more(out: &mut BytesMut, needs_more: bool) {
        out.put_u8(if needs_more { 0xc3 } else { 0xc2 });
    }
}

struct Reader<'a> {
    payload: &'a Bytes,
    input: &'a [u8],
}

impl<'a> simple_allow::Reader<'a> for Reader<'a> {
    type Syntax = MsgPack;

    fn new(payload: &'a Bytes) -> Self {
        Self {
            payload,
            input: payload,
        }
    }

    fn rest(&self) -> &[u8] {
        self.input
    }

    fn fixed(&mut self, expected: &[u8]) -> Option<()> {
        (self.take(expected.len())? == expected).then_some(())
    }

    fn version(&mut self) -> Option<u32> {
        self.u32()
    }

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

    fn correlation_id(&mut self) -> Option<Option<ByteStr>> {
        match self.next()? {
            0x80 => Some(None),
            0x81 => {
                self.fixed(ID_KEY)?;
                let id = self.text()?;
                let start = self.payload.len() - self.input.len() - id.len();
                ByteStr::from_payload(self.payload, start..start + id.len()).map(Some)
            }
            _ => None,
        }
    }

    fn needs_more(&mut self) -> Option<bool> {
        match self.next()? {
            0xc2 => Some(false),
            0xc3 => Some(true),
            _ => None,
        }
    }
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
}
