//! The commonest answer, a plain allow, in JSON: written directly by the agent, read directly
//! by the proxy; the JSON twin of `crate::msgpack::agent_response`.
//!
//! The writer puts down the compact text serde_json writes for an allow with nothing else in
//! it. The reader matches that text byte for byte, reading only the version, `needs_more` and the routing id; an id with an escape or a
//! control character, a version with a sign, fraction, exponent, leading zero or beyond `u32`,
//! whitespace, another decision or any other shape is left to the general decoder, so what it
//! takes it decodes exactly as the general decoder does (tests/tests/fast_path.rs and the codec
//! fuzz targets hold it to that).

use bytes::{BufMut, Bytes, BytesMut};

use crate::byte_str::ByteStr;
use crate::json_request_headers::{put_str, put_uint};
use crate::response::{AgentResponse, Decision};
use crate::response_wire::PlainAllow;

const HEAD: &[u8] = br#"{"version":"#;
const BODY: &[u8] = br#","decision":"allow","request_headers":[],"response_headers":[],"routing_metadata":{},"audit":{"tags":[],"rule_ids":[],"confidence":null,"reason_codes":[],"custom":{"#;
const ID_KEY: &[u8] = br#""correlation_id":""#;
const NEEDS_MORE: &[u8] = br#"}},"needs_more":"#;
const TAIL: &[u8] =
    br#","request_body_mutation":null,"response_body_mutation":null,"websocket_decision":null}"#;

/// The plain allow in `payload`, or `None` when the general decoder must decide. The routing id
/// is a slice of `payload` (see [`crate::encoding::decode_response`]).
pub(crate) fn read_plain_allow(payload: &Bytes) -> Option<AgentResponse> {
    let rest = payload.strip_prefix(HEAD)?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    let (number, rest) = rest.split_at(digits);
    if number.is_empty() || (number[0] == b'0' && number.len() > 1) || number.len() > 10 {
        return None;
    }
    let version = number.iter().try_fold(0u32, |v, d| {
        v.checked_mul(10)?.checked_add(u32::from(d - b'0'))
    })?;
    let rest = rest.strip_prefix(BODY)?;
    let (correlation_id, rest) = match rest.strip_prefix(ID_KEY) {
        Some(after_key) => {
            let end = after_key
                .iter()
                .position(|&b| b == b'"' || b == b'\\' || b < 0x20)?;
            if after_key[end] != b'"' {
                return None;
            }
            let start = payload.len() - after_key.len();
            let id = ByteStr::from_payload(payload, start..start + end)?;
            (Some(id), &after_key[end + 1..])
        }
        None => (None, rest),
    };
    let rest = rest.strip_prefix(NEEDS_MORE)?;
    let (needs_more, rest) = if let Some(rest) = rest.strip_prefix(b"false") {
        (false, rest)
    } else {
        (true, rest.strip_prefix(b"true")?)
    };
    if rest != TAIL {
        return None;
    }
    let mut response = AgentResponse::new(Decision::Allow);
    response.version = version;
    response.needs_more = needs_more;
    response.correlation_id = correlation_id;
    Some(response)
}

/// Appends `allow` as serde_json writes it, byte for byte.
pub(crate) fn write_plain_allow(out: &mut BytesMut, allow: &PlainAllow<'_>) {
    out.put_slice(HEAD);
    put_uint(out, allow.version);
    out.put_slice(BODY);
    if let Some(id) = allow.correlation_id {
        // The key without its opening quote of the value: `put_str` writes the quotes.
        out.put_slice(&ID_KEY[..ID_KEY.len() - 1]);
        put_str(out, id);
    }
    out.put_slice(NEEDS_MORE);
    out.put_slice(if allow.needs_more { b"true" } else { b"false" });
    out.put_slice(TAIL);
}
