//! [`ByteStr`]: the text of events, a UTF-8 string that shares the bytes it came from.
//!
//! An event decoded from a frame keeps its strings (ids, method, URI, every header name and
//! value) as slices of that frame's payload, so decoding allocates nothing per string: each is
//! a reference count on the payload, not a copy (see [`crate::shared_frame`]). A proxy building
//! events clones them just as cheaply, and strings made with [`ByteStr::from_static`] cost
//! nothing at all.
//!
//! The price of sharing: a string taken from an event keeps the whole frame it arrived in (at
//! most one frame, [`MAX_FRAME_LEN`](crate::frame::MAX_FRAME_LEN) bytes) alive while it lives.
//! A handler that stores a few strings beyond the request should copy them
//! ([`ByteStr::detached`]).

use std::borrow::Borrow;
use std::fmt;
use std::ops::Deref;

use bytes::Bytes;
use bytestring::ByteString;
use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An immutable UTF-8 string backed by [`Bytes`]: cloning and slicing share the bytes.
///
/// It dereferences to `str`, compares with `str`, `&str` and `String`, hashes like `str` (so it
/// can be looked up by `&str` in maps), and converts from `&str` (copied), `String` (moved, no
/// copy) and `&'static str` ([`ByteStr::from_static`], no copy, no allocation).
///
/// ```
/// use agent_protocol_core::ByteStr;
/// let uri = ByteStr::from_static("/admin/users");
/// assert!(uri.starts_with("/admin"));
/// assert_eq!(uri, "/admin/users");
/// let owned: ByteStr = format!("/item/{}", 7).into();
/// assert_eq!(owned.len(), 7);
/// let back: String = owned.into();
/// assert_eq!(back, "/item/7");
/// ```
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteStr(ByteString);

impl ByteStr {
    /// The empty string.
    pub const fn new() -> Self {
        Self(ByteString::new())
    }

    /// A string pointing at static text: no copy, no allocation, and clones are free.
    pub const fn from_static(text: &'static str) -> Self {
        Self(ByteString::from_static(text))
    }

    /// Wraps bytes that must be UTF-8, without copying them.
    ///
    /// ```
    /// use agent_protocol_core::ByteStr;
    /// let s = ByteStr::from_utf8(bytes::Bytes::from_static(b"ok")).unwrap();
    /// assert_eq!(s, "ok");
    /// assert!(ByteStr::from_utf8(bytes::Bytes::from_static(&[0xff])).is_err());
    /// ```
    pub fn from_utf8(bytes: Bytes) -> Result<Self, std::str::Utf8Error> {
        ByteString::try_from(bytes).map(Self)
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The bytes behind the text (shared, not copied).
    pub fn as_bytes(&self) -> &Bytes {
        self.0.as_bytes()
    }

    /// The bytes behind the text.
    pub fn into_bytes(self) -> Bytes {
        self.0.into_bytes()
    }

    /// Text the decoder read straight out of its input: shared when that input is the frame
    /// being decoded ([`crate::shared_frame`]), copied otherwise.
    pub(crate) fn decoded(text: &str) -> Self {
        match crate::shared_frame::slice(text.as_bytes()) {
            Some(shared) => Self::from_str_bytes(shared),
            None => Self::from(text),
        }
    }

    /// `payload[range]` as a slice of it, if it is UTF-8 (panics if the range is out of
    /// bounds).
    #[inline(always)]
    pub(crate) fn from_payload(payload: &Bytes, range: std::ops::Range<usize>) -> Option<Self> {
        if !is_utf8(&payload[range.clone()]) {
            return None;
        }
        Some(Self::from_str_bytes(payload.slice(range)))
    }

    /// `text[range]`, which the caller knows to be UTF-8 (whole strings copied from `str`s,
    /// text checked as it was scanned); panics if out of bounds.
    #[inline]
    pub(crate) fn from_utf8_slice(text: &Bytes, range: std::ops::Range<usize>) -> Self {
        debug_assert!(std::str::from_utf8(&text[range.clone()]).is_ok());
        Self::from_str_bytes(text.slice(range))
    }

    /// Bytes that are UTF-8: `decoded` and `from_utf8_slice` slice them from a `str`'s
    /// bytes, `from_payload` checks them just before.
    #[allow(unsafe_code)]
    #[inline]
    fn from_str_bytes(bytes: Bytes) -> Self {
        // SAFETY: the bytes are those of a `str`, so UTF-8. Checking them again would cost
        // about as much as the decoder's own check, on every string of every event.
        Self(unsafe { ByteString::from_bytes_unchecked(bytes) })
    }

    /// A copy in its own allocation, so that keeping it does not keep alive the frame the
    /// original was decoded from.
    pub fn detached(&self) -> Self {
        Self::from(self.as_str())
    }
}

impl Deref for ByteStr {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for ByteStr {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl AsRef<[u8]> for ByteStr {
    fn as_ref(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl Borrow<str> for ByteStr {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ByteStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self.as_str(), f)
    }
}

impl fmt::Debug for ByteStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl From<&str> for ByteStr {
    fn from(text: &str) -> Self {
        Self(ByteString::from(text))
    }
}

impl From<&String> for ByteStr {
    fn from(text: &String) -> Self {
        Self::from(text.as_str())
    }
}

impl From<String> for ByteStr {
    fn from(text: String) -> Self {
        Self(ByteString::from(text))
    }
}

impl From<&ByteStr> for ByteStr {
    fn from(text: &ByteStr) -> Self {
        text.clone()
    }
}

impl From<ByteStr> for String {
    fn from(text: ByteStr) -> Self {
        text.0.into()
    }
}

impl From<ByteStr> for Bytes {
    fn from(text: ByteStr) -> Self {
        text.into_bytes()
    }
}

impl PartialEq<str> for ByteStr {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for ByteStr {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialEq<String> for ByteStr {
    fn eq(&self, other: &String) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<ByteStr> for str {
    fn eq(&self, other: &ByteStr) -> bool {
        self == other.as_str()
    }
}

impl PartialEq<ByteStr> for &str {
    fn eq(&self, other: &ByteStr) -> bool {
        *self == other.as_str()
    }
}

impl PartialEq<ByteStr> for String {
    fn eq(&self, other: &ByteStr) -> bool {
        self == other.as_str()
    }
}

impl Serialize for ByteStr {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ByteStr {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(ByteStrVisitor)
    }
}

struct ByteStrVisitor;

impl<'de> Visitor<'de> for ByteStrVisitor {
    type Value = ByteStr;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<ByteStr, E> {
        Ok(ByteStr::decoded(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteStr, E> {
        Ok(ByteStr::from(v))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<ByteStr, E> {
        Ok(ByteStr::from(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn hashes_like_str_so_maps_find_it_by_str() {
        let mut m = HashMap::new();
        m.insert(ByteStr::from("k"), 1);
        assert_eq!(m.get("k"), Some(&1));
    }

    #[test]
    fn decoding_inside_a_frame_shares_it_and_outside_copies() {
        let frame = Bytes::from(br#"{"a":"shared","b":"esc\"aped"}"#.to_vec());
        let decoded: HashMap<String, ByteStr> =
            crate::shared_frame::decode_sharing(&frame, || serde_json::from_slice(&frame).unwrap());
        let within = |s: &ByteStr| {
            let p = s.as_bytes().as_ptr() as usize;
            p >= frame.as_ptr() as usize && p < frame.as_ptr() as usize + frame.len()
        };
        assert_eq!(decoded["a"], "shared");
        assert!(within(&decoded["a"]));
        // An escaped string has no slice of the frame to share: it is copied.
        assert_eq!(decoded["b"], "esc\"aped");
        assert!(!within(&decoded["b"]));
        let outside: HashMap<String, ByteStr> = serde_json::from_slice(&frame).unwrap();
        assert!(!within(&outside["a"]));
        assert!(!within(&decoded["a"].detached()));
    }
}

/// Whether `bytes` is UTF-8. Decoded text is short (a header name, a value, an id) and nearly
/// always ASCII, so ASCII is checked first eight bytes at a time, the last eight read again
/// where the length is not a multiple of eight: no per-byte tail loop, no alignment prologue.
#[inline(always)]
pub(crate) fn is_utf8(bytes: &[u8]) -> bool {
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let word = |chunk: &[u8]| {
        let mut w = [0u8; 8];
        w.copy_from_slice(chunk);
        u64::from_ne_bytes(w)
    };
    let ascii = if bytes.len() >= 8 {
        let chunks = bytes.chunks_exact(8);
        let last = word(&bytes[bytes.len() - 8..]);
        chunks.fold(last, |acc, c| acc | word(c)) & HIGH == 0
    } else {
        bytes.iter().fold(0u8, |acc, b| acc | b) < 0x80
    };
    ascii || std::str::from_utf8(bytes).is_ok()
}

#[cfg(test)]
mod utf8_tests {
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn is_utf8_agrees_with_std(bytes in proptest::collection::vec(any::<u8>(), 0..40), ascii in "[ -~]{0,40}") {
            prop_assert_eq!(super::is_utf8(&bytes), std::str::from_utf8(&bytes).is_ok());
            prop_assert!(super::is_utf8(ascii.as_bytes()));
            // One high byte anywhere in ASCII text is caught, in the word loop or the tail.
            for i in 0..ascii.len() {
                let mut b = ascii.clone().into_bytes();
                b[i] = 0xff;
                prop_assert!(!super::is_utf8(&b));
            }
        }
    }
}
