//! Header lists: core [`Headers`] <-> repeated `(name, value)` pairs.
//!
//! The event header lists are generated as `RawHeader` (name and value as `Bytes`; the same
//! bytes on the wire as `Header`'s strings, see `build.rs`): decoding slices the received message
//! rather than allocating a `String` per name and value, and encoding hands over the headers'
//! shared text. The UTF-8 that prost checks for a `string` is checked here, and text that is not
//! UTF-8 makes the event malformed (answered fail-closed), as any other unreadable field does.

use crate::v2;
use agent_protocol_core::Headers;

use super::ConvertError;

pub(super) fn headers_to_proto(headers: Headers) -> Vec<v2::RawHeader> {
    let mut out = Vec::with_capacity(headers.value_count());
    out.extend(headers.into_flat().map(|(name, value)| v2::RawHeader {
        name: name.into(),
        value: value.into(),
    }));
    out
}

/// The headers of `message` (its name, for the error), each name and value checked as UTF-8.
pub(super) fn headers_from_proto(
    message: &'static str,
    flat: Vec<v2::RawHeader>,
) -> Result<Headers, ConvertError> {
    let mut headers = Headers::with_capacity(flat.len().min(128));
    for v2::RawHeader { name, value } in &flat {
        let (Ok(name), Ok(value)) = (std::str::from_utf8(name), std::str::from_utf8(value)) else {
            return Err(ConvertError::new(
                message,
                "a header name or value is not UTF-8",
            ));
        };
        headers.append_exact(name, value);
    }
    Ok(headers)
}
