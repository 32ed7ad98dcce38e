//! Header lists: core [`Headers`] <-> repeated `(name, value)` pairs.

use crate::v2;
use agent_protocol_core::Headers;

pub(super) fn headers_to_proto(headers: Headers) -> Vec<v2::Header> {
    let mut out = Vec::with_capacity(headers.value_count());
    out.extend(headers.into_flat().map(|(name, value)| v2::Header {
        name: name.into(),
        value: value.into(),
    }));
    out
}

pub(super) fn headers_from_proto(flat: Vec<v2::Header>) -> Headers {
    let mut headers = Headers::with_capacity(flat.len().min(128));
    for v2::Header { name, value } in flat {
        headers.append_exact(name, value);
    }
    headers
}
