//! The commonest answer, a plain allow, read directly from MessagePack on the proxy side.
//!
//! Nearly every answer a proxy reads is an allow with nothing else in it, written by serde in
//! one fixed shape: a map of the ten fields in declaration order, empty lists and maps, `nil`
//! for what is absent, the routing id as the only custom audit value. Going through serde for
//! it costs thousands of instructions (sixteen keys matched and UTF-8-checked, a visitor per
//! field); this reader matches that shape byte for byte and returns `None` for anything else
//! (another decision, any header operation, keys in another order or encoding, a number wider
//! than the general decoder's own reading of it), leaving it to the general decoder. What it
//! takes it decodes exactly as the general decoder does (tests/tests/fast_path.rs and the codec
//! fuzz targets hold it to that); it has at most 33 elements, far under any element budget.

use crate::byte_str::ByteStr;
use crate::response::{AgentResponse, Decision};

/// The plain allow in `payload`, or `None` when the general decoder must decide.
pub(crate) fn read_plain_allow(payload: &[u8]) -> Option<AgentResponse> {
    let mut r = Reader { input: payload };
    r.byte(0x8a)?; // a map of ten entries
    r.key(b"version")?;
    let version = r.u32()?;
    r.key(b"decision")?;
    r.key(b"allow")?; // the unit variant, as a string
    r.key(b"request_headers")?;
    r.byte(0x90)?;
    r.key(b"response_headers")?;
    r.byte(0x90)?;
    r.key(b"routing_metadata")?;
    r.byte(0x80)?;
    r.key(b"audit")?;
    r.byte(0x85)?;
    r.key(b"tags")?;
    r.byte(0x90)?;
    r.key(b"rule_ids")?;
    r.byte(0x90)?;
    r.key(b"confidence")?;
    r.byte(0xc0)?;
    r.key(b"reason_codes")?;
    r.byte(0x90)?;
    r.key(b"custom")?;
    let correlation_id = match r.next()? {
        0x80 => None,
        0x81 => {
            r.key(b"correlation_id")?;
            Some(r.text()?)
        }
        _ => return None,
    };
    r.key(b"needs_more")?;
    let needs_more = match r.next()? {
        0xc2 => false,
        0xc3 => true,
        _ => return None,
    };
    for key in [
        &b"request_body_mutation"[..],
        b"response_body_mutation",
        b"websocket_decision",
    ] {
        r.key(key)?;
        r.byte(0xc0)?;
    }
    if !r.input.is_empty() {
        return None;
    }
    let mut response = AgentResponse::new(Decision::Allow);
    response.version = version;
    response.needs_more = needs_more;
    response.correlation_id = correlation_id;
    Some(response)
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

    fn byte(&mut self, expected: u8) -> Option<()> {
        (self.next()? == expected).then_some(())
    }

    /// A short string (fixstr) equal to `text`.
    fn key(&mut self, text: &[u8]) -> Option<()> {
        let len = u8::try_from(text.len()).ok().filter(|&n| n < 32)?;
        self.byte(0xa0 | len)?;
        (self.take(text.len())? == text).then_some(())
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

    /// A string of any width that is UTF-8.
    fn text(&mut self) -> Option<ByteStr> {
        let len = match self.next()? {
            b @ 0xa0..=0xbf => usize::from(b & 0x1f),
            0xd9 => usize::from(self.next()?),
            0xda => usize::from(u16::from_be_bytes(self.take(2)?.try_into().ok()?)),
            0xdb => usize::try_from(u32::from_be_bytes(self.take(4)?.try_into().ok()?)).ok()?,
            _ => return None,
        };
        std::str::from_utf8(self.take(len)?).ok().map(ByteStr::from)
    }
}
