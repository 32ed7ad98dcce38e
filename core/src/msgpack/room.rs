//! Writing a message into room reserved for it once.
//!
//! Appending to a `BytesMut` value by value checks its capacity and moves its length at every
//! marker byte and string; a message with sixty short strings spends more on that bookkeeping
//! than on the bytes. A writer that knows an upper bound of what it writes takes that much room
//! once ([`Room::write`]) and fills it through a plain cursor. The narrowest-form rules of
//! MessagePack's markers are written once, in [`str_head`] and [`len_head`], for both ways of
//! writing.

use bytes::BytesMut;

/// Bytes a string's or container's marker and length take at most.
pub(super) const MAX_HEAD: usize = 5;

/// The marker and length of a string of `n` bytes in the narrowest form, as rmp writes it: the
/// bytes, and how many of them are used.
#[inline]
pub(super) fn str_head(n: usize) -> ([u8; MAX_HEAD], usize) {
    if n < 32 {
        ([0xa0 | n as u8, 0, 0, 0, 0], 1)
    } else if let Ok(n) = u8::try_from(n) {
        ([0xd9, n, 0, 0, 0], 2)
    } else if let Ok(n) = u16::try_from(n) {
        let [a, b] = n.to_be_bytes();
        ([0xda, a, b, 0, 0], 3)
    } else {
        let [a, b, c, d] = (n as u32).to_be_bytes();
        ([0xdb, a, b, c, d], 5)
    }
}

/// An array's or map's marker and length: the fix form (`fix`) up to 15, else the 16-bit
/// (`wide16`) or 32-bit form.
#[inline]
pub(super) fn len_head(n: usize, fix: u8, wide16: u8) -> ([u8; MAX_HEAD], usize) {
    if n < 16 {
        ([fix | n as u8, 0, 0, 0, 0], 1)
    } else if let Ok(n) = u16::try_from(n) {
        let [a, b] = n.to_be_bytes();
        ([wide16, a, b, 0, 0], 3)
    } else {
        let [a, b, c, d] = (n as u32).to_be_bytes();
        ([wide16 + 1, a, b, c, d], 5)
    }
}

/// The smallest unsigned form of `v`, as rmp writes integers.
#[inline]
pub(super) fn uint_head(v: u32) -> ([u8; MAX_HEAD], usize) {
    if v < 128 {
        ([v as u8, 0, 0, 0, 0], 1)
    } else if let Ok(v) = u8::try_from(v) {
        ([0xcc, v, 0, 0, 0], 2)
    } else if let Ok(v) = u16::try_from(v) {
        let [a, b] = v.to_be_bytes();
        ([0xcd, a, b, 0, 0], 3)
    } else {
        let [a, b, c, d] = v.to_be_bytes();
        ([0xce, a, b, c, d], 5)
    }
}

/// A cursor over room taken at the end of a buffer.
pub(super) struct Room<'a> {
    buf: &'a mut [u8],
    at: usize,
}

impl Room<'_> {
    /// Runs `write` over `bound` bytes of room at the end of `out` and keeps what it wrote.
    /// `bound` must be at least that much: writing past it panics (a wrong bound is a bug of
    /// the caller, which the encoders' property tests would catch).
    pub(super) fn write(out: &mut BytesMut, bound: usize, write: impl FnOnce(&mut Room<'_>)) {
        let start = out.len();
        // Zeroing the room costs one memset, far less than a capacity check per write.
        out.resize(start + bound, 0);
        let mut room = Room {
            buf: &mut out[start..],
            at: 0,
        };
        write(&mut room);
        let end = start + room.at;
        out.truncate(end);
    }

    #[inline]
    pub(super) fn byte(&mut self, b: u8) {
        self.buf[self.at] = b;
        self.at += 1;
    }

    #[inline]
    pub(super) fn bytes(&mut self, bytes: &[u8]) {
        self.buf[self.at..self.at + bytes.len()].copy_from_slice(bytes);
        self.at += bytes.len();
    }

    /// A marker and length from [`str_head`], [`len_head`] or [`uint_head`].
    #[inline]
    pub(super) fn head(&mut self, (head, n): ([u8; MAX_HEAD], usize)) {
        if n == 1 {
            self.byte(head[0]);
        } else {
            self.bytes(&head[..n]);
        }
    }

    /// A string in the narrowest form.
    #[inline]
    pub(super) fn str(&mut self, text: &str) {
        self.head(str_head(text.len()));
        self.bytes(text.as_bytes());
    }

    /// A string, or nil.
    #[inline]
    pub(super) fn optional_str(&mut self, text: Option<&str>) {
        match text {
            Some(text) => self.str(text),
            None => self.byte(rmp::Marker::Null.to_u8()),
        }
    }
}
