//! [`MsgPackError`]: why a MessagePack payload could not be decoded, and where.

use std::borrow::Cow;
use std::fmt;

use serde::de;

/// Why a MessagePack payload could not be decoded, and where.
///
/// The message says what was wrong (a truncated value, invalid UTF-8, an unexpected type, a
/// missing field, ...). The offset is the byte offset into the input of the value being decoded
/// when the problem was found; errors returned by [`from_slice`](super::from_slice) always carry
/// one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct MsgPackError(Box<ErrorInner>);

/// Boxed so that `Result<_, MsgPackError>` stays one pointer wide on the hot (`Ok`) path.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ErrorInner {
    message: Cow<'static, str>,
    offset: Option<usize>,
}

impl fmt::Display for ErrorInner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("invalid MessagePack")?;
        if let Some(offset) = self.offset {
            write!(f, " at byte offset {offset}")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl MsgPackError {
    #[cold]
    pub(super) fn new(offset: usize, message: impl Into<Cow<'static, str>>) -> Self {
        MsgPackError(Box::new(ErrorInner {
            message: message.into(),
            offset: Some(offset),
        }))
    }

    /// Attaches `offset` unless the error already has a (more precise) one.
    #[cold]
    pub(super) fn at(mut self, offset: usize) -> Self {
        if self.0.offset.is_none() {
            self.0.offset = Some(offset);
        }
        self
    }

    /// Sets the offset, replacing any other.
    #[cold]
    pub(super) fn with_offset(mut self, offset: usize) -> Self {
        self.0.offset = Some(offset);
        self
    }

    /// What was wrong, without the offset.
    pub fn message(&self) -> &str {
        &self.0.message
    }

    /// Byte offset into the input where the problem was found.
    pub fn offset(&self) -> Option<usize> {
        self.0.offset
    }
}

impl de::Error for MsgPackError {
    #[cold]
    fn custom<T: fmt::Display>(msg: T) -> Self {
        MsgPackError(Box::new(ErrorInner {
            message: Cow::Owned(msg.to_string()),
            offset: None,
        }))
    }
}
