//! The byte level of the deserializer: taking bytes and big-endian integers off the input.
//!
//! A read that finds too few bytes fails without moving the cursor, and a length prefix is checked
//! against the bytes that remain before anything acts on it.

use super::deserializer::Deserializer;
use super::error::MsgPackError;
use super::Result;

impl<'de> Deserializer<'de> {
    pub(super) fn remaining(&self) -> usize {
        self.input.len().saturating_sub(self.pos)
    }

    fn eof(&self, what: &str) -> MsgPackError {
        MsgPackError::new(
            self.pos,
            format!("unexpected end of input while reading {what}"),
        )
    }

    /// Takes the next `n` bytes, or fails without moving when fewer remain.
    pub(super) fn take(&mut self, n: usize, what: &str) -> Result<&'de [u8]> {
        if n > self.remaining() {
            return Err(MsgPackError::new(
                self.pos,
                format!(
                    "{what} needs {n} byte(s) but only {} remain",
                    self.remaining()
                ),
            ));
        }
        let bytes = &self.input[self.pos..self.pos + n];
        self.pos += n;
        Ok(bytes)
    }

    pub(super) fn take_array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let bytes = self.take(N, what)?;
        let mut out = [0u8; N];
        out.copy_from_slice(bytes);
        Ok(out)
    }

    pub(super) fn peek_byte(&self) -> Option<u8> {
        self.input.get(self.pos).copied()
    }

    pub(super) fn read_u8(&mut self, what: &str) -> Result<u8> {
        match self.peek_byte() {
            Some(b) => {
                self.pos += 1;
                Ok(b)
            }
            None => Err(self.eof(what)),
        }
    }

    pub(super) fn read_u16(&mut self, what: &str) -> Result<u16> {
        self.take_array(what).map(u16::from_be_bytes)
    }

    pub(super) fn read_u32(&mut self, what: &str) -> Result<u32> {
        self.take_array(what).map(u32::from_be_bytes)
    }

    pub(super) fn read_u64(&mut self, what: &str) -> Result<u64> {
        self.take_array(what).map(u64::from_be_bytes)
    }

    pub(super) fn read_len32(&mut self, what: &str) -> Result<usize> {
        let n = self.read_u32(what)?;
        usize::try_from(n).map_err(|_| MsgPackError::new(self.pos, "length does not fit in usize"))
    }

    /// Checks that `count` items of at least `min_bytes` each can still follow, so that no
    /// consumer acts on a length prefix the input cannot hold.
    pub(super) fn check_count(
        &self,
        start: usize,
        count: usize,
        min_bytes: usize,
        what: &str,
    ) -> Result<()> {
        let needed = count.saturating_mul(min_bytes);
        if needed > self.remaining() {
            return Err(MsgPackError::new(
                start,
                format!(
                    "{what} declares {count} element(s) but only {} byte(s) remain",
                    self.remaining()
                ),
            ));
        }
        Ok(())
    }
}
