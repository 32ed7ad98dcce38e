//! A lenient MessagePack [`serde::Deserializer`] over a borrowed byte slice.
//!
//! It accepts everything the reference implementation puts on the wire (see the MessagePack
//! section of `docs/protocol.md`), which `rmp_serde::from_slice` does not:
//!
//! - **Map entries reach the visitor as they are**, repeated keys included, exactly as
//!   `serde_json` hands them over: a struct rejects a repeated field, a header map merges a
//!   repeated name, so a MessagePack payload is decided as its JSON twin would be. The one
//!   repetition the reference proxy really sends (the same `correlation_id` twice at the top level
//!   of an event) is tolerated for both encodings by [`crate::repeated_id`], not here.
//! - **Structs are accepted as maps (by key) or arrays (by position).** A short array works when
//!   the missing trailing fields have `#[serde(default)]`; an array with more elements than the
//!   struct has fields is an error (as with `rmp_serde`).
//! - **Strings and binaries are interchangeable**: a string-typed field accepts `str` or a `bin`
//!   holding valid UTF-8, and a byte-typed field accepts `bin` or `str`.
//! - **Enums** are a `str` (unit variant) or a one-entry map `{variant: content}`, the content
//!   being a value, an array (tuple variant, or struct variant by position) or a map (struct
//!   variant by key).
//!
//! The decoder never panics, never allocates (strings and binaries are borrowed from the input),
//! does work linear in the input, rejects any
//! length prefix that the remaining input cannot possibly hold before acting on it, and bounds
//! nesting at [`MAX_DEPTH`]. [`Deserializer::is_human_readable`](serde::Deserializer) is `false`,
//! so types that base64 their bytes in JSON receive raw bytes here.
//!
//! The decoder is layered, one file per level: `cursor` takes bytes off the input, `header` reads
//! one value header (marker, length, body), `deserializer` answers serde's requests from those
//! headers, `containers` and `enums` walk the contents of arrays, maps and enums, and `error`
//! holds [`MsgPackError`].

mod agent_response;
mod containers;
mod cursor;
mod deserializer;
mod enums;
mod error;
mod header;
mod request_headers;
mod room;
#[cfg(test)]
mod tests;

use serde::de;

pub(crate) use agent_response::{read_simple_allow, write_simple_allow};
use deserializer::Deserializer;
pub use error::MsgPackError;
pub(crate) use request_headers::{request_headers, write_request_headers};

/// What every step of decoding returns.
type Result<T> = std::result::Result<T, MsgPackError>;

/// Deepest nesting of arrays, maps and enum wrappers that [`from_slice`] accepts.
pub const MAX_DEPTH: usize = 128;

/// Decodes one MessagePack value from `input` into `T`.
///
/// The whole input must be consumed: bytes left over after the value are an error.
///
/// ```
/// use agent_protocol_core::msgpack::from_slice;
/// use serde::Deserialize;
///
/// #[derive(Deserialize, Debug, PartialEq)]
/// struct Ping {
///     sequence: u64,
///     timestamp_ms: u64,
/// }
///
/// // {"sequence": 7, "timestamp_ms": 1}
/// let bytes = [
///     0x82, 0xa8, b's', b'e', b'q', b'u', b'e', b'n', b'c', b'e', 0x07,
///     0xac, b't', b'i', b'm', b'e', b's', b't', b'a', b'm', b'p', b'_', b'm', b's', 0x01,
/// ];
/// let ping: Ping = from_slice(&bytes).unwrap();
/// assert_eq!(ping, Ping { sequence: 7, timestamp_ms: 1 });
///
/// // The same struct as a positional array [7, 1].
/// assert_eq!(from_slice::<Ping>(&[0x92, 0x07, 0x01]).unwrap(), ping);
///
/// // Truncated input is an error that names the offset of the incomplete value.
/// let err = from_slice::<Ping>(&[0x92, 0x07, 0xcd, 0x01]).unwrap_err();
/// assert_eq!(err.offset(), Some(2));
/// assert_eq!(
///     err.to_string(),
///     "invalid MessagePack at byte offset 2: a u16 needs 2 byte(s) but only 1 remain"
/// );
/// ```
pub fn from_slice<'de, T: de::Deserialize<'de>>(
    input: &'de [u8],
) -> std::result::Result<T, MsgPackError> {
    from_slice_with(input, |de| T::deserialize(de))
}

/// Runs `decode` over a deserializer of `input` (a wrapper such as [`crate::repeated_id`] goes
/// between the deserializer and the type), then checks that the whole input was consumed.
pub(crate) fn from_slice_with<'de, T>(
    input: &'de [u8],
    decode: impl FnOnce(&mut Deserializer<'de>) -> Result<T>,
) -> std::result::Result<T, MsgPackError> {
    let mut de = Deserializer::new(input);
    let value = decode(&mut de).map_err(|e| e.at(de.pos))?;
    if de.pos != input.len() {
        return Err(MsgPackError::new(
            de.pos,
            format!(
                "{} trailing byte(s) after the MessagePack value",
                input.len() - de.pos
            ),
        ));
    }
    Ok(value)
}
