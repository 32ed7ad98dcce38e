//! [`RequestId`]: how a connection names the requests it tracks, on either side.

use std::fmt;

/// The handle of one request on one connection: on the proxy side an event submitted with
/// `send_event`, on the agent side an event received and not yet answered. It is not the
/// correlation id: the events of one HTTP request share a correlation id, and each still gets
/// its own `RequestId` and its own outcome. Unique within its connection, never reused.
///
/// ```
/// use agent_protocol_core::RequestId;
/// let id = RequestId::from_raw(7);
/// assert_eq!(id.as_u64(), 7);
/// assert_eq!(id.to_string(), "7");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(u64);

impl RequestId {
    /// The id with this number.
    pub const fn from_raw(raw: u64) -> Self {
        Self(raw)
    }

    /// Its number.
    pub const fn as_u64(self) -> u64 {
        self.0
    }

    /// The id after this one.
    pub(crate) fn next(self) -> Self {
        Self(self.0.wrapping_add(1))
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}
