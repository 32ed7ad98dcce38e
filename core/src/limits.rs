//! Per-message limits: header limits, enforced while a message is decoded, and an element
//! budget, enforced before.
//!
//! A frame may be 16 MiB, and a message costs a decoder far more memory than its bytes on the
//! wire: the 5 MessagePack bytes of `{"a": ["b"]}` become two heap strings and a table entry,
//! well over a hundred bytes. Two bounds keep one message's decoded size near its bytes:
//!
//! - [`HeaderLimits`]: the count of header values and the bytes of header names and values in
//!   one message, checked *as the headers are read*: decoding stops at the first header past
//!   the limit, before the rest is allocated. An agent answers such an event fail-closed
//!   (status 431, [`crate::agent::HEADER_LIMIT_REASON`]).
//! - [`MessageLimits::max_elements`]: array items plus map entries anywhere in the message,
//!   counted by a scan of the payload bytes *before* anything is decoded
//!   ([`crate::element_count`]), the same count in JSON and MessagePack. An agent answers such
//!   an event fail-closed (status 413, [`crate::agent::MESSAGE_TOO_COMPLEX_REASON`]); a proxy
//!   fails the request the answer was for, as for a malformed answer.
//!
//! Either way the message is refused whole with a [`LimitExceeded`].
//!
//! The defaults are generous for real traffic: [`DEFAULT_MAX_HEADER_COUNT`] values (Node.js's
//! default `maxHeadersCount`), [`DEFAULT_MAX_HEADER_BYTES`] (Go's default `MaxHeaderBytes`);
//! common servers refuse far less (nginx: 32 KiB of request headers by default). See
//! [`DEFAULT_MAX_ELEMENTS`] for the element budget.
//!
//! ```
//! use agent_protocol_core::encoding::decode_event_with_limits;
//! use agent_protocol_core::frame::FrameType;
//! use agent_protocol_core::limits::{HeaderLimits, LimitExceeded, MessageLimits};
//! use agent_protocol_core::Encoding;
//!
//! let payload = br#"{"correlation_id":"c","status":200,"headers":{"a":["1","2"],"b":["3"]}}"#;
//! let tight = HeaderLimits::default().with_max_count(2);
//! let err = decode_event_with_limits(FrameType::ResponseHeaders, Encoding::Json, payload, &tight)
//!     .unwrap()
//!     .unwrap_err();
//! assert_eq!(err.limit, Some(LimitExceeded::HeaderCount { max: 2 }));
//!
//! // Eight elements: three top-level entries, two header names, three header values.
//! let few = MessageLimits::default().with_max_elements(7);
//! let err = decode_event_with_limits(FrameType::ResponseHeaders, Encoding::Json, payload, few)
//!     .unwrap()
//!     .unwrap_err();
//! assert_eq!(err.limit, Some(LimitExceeded::Elements { max: 7 }));
//! ```

use std::cell::Cell;

use serde::{Deserialize, Serialize};

/// Default [`HeaderLimits::max_count`]: header values in one message.
pub const DEFAULT_MAX_HEADER_COUNT: usize = 2000;

/// Default [`HeaderLimits::max_bytes`]: bytes of header names and values in one message.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 1024 * 1024;

/// Default [`MessageLimits::max_elements`]: array items plus map entries in one message.
///
/// Real messages are far below it: a RequestHeaders event with 20 headers has about 60
/// elements, one at the default header limits (2,000 values) about 4,100; an answer with a
/// hundred header operations and tags a few hundred. The largest legitimate messages are
/// Configure events carrying a rule set: 100,000 elements is, say, 5,000 rules of 20 fields
/// each, more than large WAF rule sets (a few thousand rules).
///
/// It bounds what the elements of one message can cost once decoded: the costliest elements
/// measured (a map entry of a `serde_json::Value` object or of a `HashMap<String, String>`)
/// take about 150 bytes each beyond the bytes of their strings, so 100,000 of them take about
/// 15 MiB: a message at the 16 MiB frame limit then peaks under 4x its bytes received (frame
/// buffer included), while without the budget the same frame packed with 1-byte elements
/// decodes to ~600 MiB.
pub const DEFAULT_MAX_ELEMENTS: usize = 100_000;

/// How many headers one message may carry. Every header map of the message counts (request and
/// response headers, a block decision's headers): names and values both count towards
/// `max_bytes`, each value counts once towards `max_count`.
///
/// Built from [`Default`] (or [`HeaderLimits::UNLIMITED`]) and the `with_*` setters, which are
/// `const` (fields may be added in any release, so the struct cannot be built literally outside
/// this crate); the fields stay public to read and set.
///
/// ```
/// use agent_protocol_core::limits::HeaderLimits;
/// let limits = HeaderLimits::default().with_max_count(100).with_max_bytes(64 * 1024);
/// assert_eq!(limits.check(100, 64 * 1024), Ok(()));
/// assert!(limits.check(101, 0).is_err());
/// const STRICT: HeaderLimits = HeaderLimits::UNLIMITED.with_max_count(10).with_max_bytes(1024);
/// # assert_eq!(STRICT.max_count, 10);
/// ```
///
/// Deserializes from a configuration section (`{"max_count": 100}`): keys left out keep their
/// defaults, an unknown key is an error. Every `usize` is valid, so there is nothing to check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct HeaderLimits {
    /// Header values in one message.
    pub max_count: usize,
    /// Bytes of header names and values in one message.
    pub max_bytes: usize,
}

impl Default for HeaderLimits {
    fn default() -> Self {
        Self {
            max_count: DEFAULT_MAX_HEADER_COUNT,
            max_bytes: DEFAULT_MAX_HEADER_BYTES,
        }
    }
}

impl HeaderLimits {
    /// No limit at all (for trusted input, such as a message this process encoded).
    pub const UNLIMITED: Self = Self {
        max_count: usize::MAX,
        max_bytes: usize::MAX,
    };

    /// Sets [`max_count`](Self::max_count), the header values one message may carry.
    #[must_use]
    pub const fn with_max_count(mut self, max_count: usize) -> Self {
        self.max_count = max_count;
        self
    }

    /// Sets [`max_bytes`](Self::max_bytes), the bytes of header names and values in one message.
    #[must_use]
    pub const fn with_max_bytes(mut self, max_bytes: usize) -> Self {
        self.max_bytes = max_bytes;
        self
    }

    /// Checks headers already decoded (by a transport that decodes them itself, such as gRPC)
    /// against the limits: `count` values and `bytes` bytes of names and values.
    pub fn check(&self, count: usize, bytes: usize) -> Result<(), LimitExceeded> {
        if count > self.max_count {
            Err(LimitExceeded::HeaderCount {
                max: self.max_count,
            })
        } else if bytes > self.max_bytes {
            Err(LimitExceeded::HeaderBytes {
                max: self.max_bytes,
            })
        } else {
            Ok(())
        }
    }
}

/// Everything one message may carry: its headers and its element budget.
///
/// Built from [`Default`] (or [`MessageLimits::UNLIMITED`], or a [`HeaderLimits`]) and the
/// `with_*` setters, which are `const` (fields may be added in any release, so the struct cannot
/// be built literally outside this crate); the fields stay public to read and set.
///
/// `From<HeaderLimits>` (and `From<&HeaderLimits>`) keep the given header limits with the
/// default element budget: an element budget is never lifted implicitly, not even by
/// [`HeaderLimits::UNLIMITED`]; use [`MessageLimits::UNLIMITED`] for that.
///
/// ```
/// use agent_protocol_core::limits::{HeaderLimits, MessageLimits, DEFAULT_MAX_ELEMENTS};
/// let limits = MessageLimits::from(HeaderLimits::UNLIMITED);
/// assert_eq!(limits.max_elements, DEFAULT_MAX_ELEMENTS);
/// let strict = MessageLimits::default().with_max_elements(1_000);
/// assert_eq!(strict.headers, HeaderLimits::default());
/// ```
///
/// Deserializes like [`HeaderLimits`]: keys left out keep their defaults (here too the element
/// budget is never lifted by leaving it out), an unknown key is an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct MessageLimits {
    /// Header values and bytes, checked while headers are decoded.
    pub headers: HeaderLimits,
    /// Array items plus map entries anywhere in the message, counted before it is decoded
    /// (see [`crate::element_count`]).
    pub max_elements: usize,
}

impl Default for MessageLimits {
    fn default() -> Self {
        Self {
            headers: HeaderLimits::default(),
            max_elements: DEFAULT_MAX_ELEMENTS,
        }
    }
}

impl MessageLimits {
    /// No limit at all (for trusted input, such as a message this process encoded).
    pub const UNLIMITED: Self = Self {
        headers: HeaderLimits::UNLIMITED,
        max_elements: usize::MAX,
    };

    /// Sets [`headers`](Self::headers), the header limits checked while headers are decoded.
    #[must_use]
    pub const fn with_headers(mut self, headers: HeaderLimits) -> Self {
        self.headers = headers;
        self
    }

    /// Sets [`max_elements`](Self::max_elements), the array items plus map entries of one
    /// message.
    #[must_use]
    pub const fn with_max_elements(mut self, max_elements: usize) -> Self {
        self.max_elements = max_elements;
        self
    }
}

impl From<HeaderLimits> for MessageLimits {
    fn from(headers: HeaderLimits) -> Self {
        Self {
            headers,
            max_elements: DEFAULT_MAX_ELEMENTS,
        }
    }
}

impl From<&HeaderLimits> for MessageLimits {
    fn from(headers: &HeaderLimits) -> Self {
        Self::from(*headers)
    }
}

impl From<&MessageLimits> for MessageLimits {
    fn from(limits: &MessageLimits) -> Self {
        *limits
    }
}

/// A message went over a [`MessageLimits`] bound. The peer's fault; the message is refused
/// whole.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LimitExceeded {
    /// More header values than [`HeaderLimits::max_count`].
    #[error("more than {max} header values in one message")]
    HeaderCount {
        /// The limit.
        max: usize,
    },
    /// More bytes of header names and values than [`HeaderLimits::max_bytes`].
    #[error("more than {max} bytes of header names and values in one message")]
    HeaderBytes {
        /// The limit.
        max: usize,
    },
    /// More array items plus map entries than [`MessageLimits::max_elements`]; the message was
    /// not decoded at all.
    #[error("more than {max} elements (array items and map entries) in one message")]
    Elements {
        /// The limit.
        max: usize,
    },
}

/// What the message being decoded on this thread may still spend, and whether it overspent.
#[derive(Clone, Copy)]
struct Budget {
    limits: HeaderLimits,
    count: usize,
    bytes: usize,
    exceeded: Option<LimitExceeded>,
}

thread_local! {
    // serde gives a visitor no context, so the budget of the message being decoded lives here,
    // for the duration of one synchronous `decode_with` call on this thread.
    static BUDGET: Cell<Option<Budget>> = const { Cell::new(None) };
}

/// Runs `decode` with `limits` applying to every header map it reads; returns its result and
/// the limit it went over, if any. Nested calls each get their own budget.
pub(crate) fn decode_with<R>(
    limits: &HeaderLimits,
    decode: impl FnOnce() -> R,
) -> (R, Option<LimitExceeded>) {
    struct Restore(Option<Budget>);
    impl Drop for Restore {
        fn drop(&mut self) {
            BUDGET.set(self.0.take());
        }
    }
    let outer = BUDGET.replace(Some(Budget {
        limits: *limits,
        count: 0,
        bytes: 0,
        exceeded: None,
    }));
    let _restore = Restore(outer);
    let result = decode();
    let exceeded = BUDGET.get().and_then(|b| b.exceeded);
    (result, exceeded)
}

/// Charges one header value (`values` of them, really) and `bytes` bytes to the message being
/// decoded. Outside [`decode_with`] nothing is counted.
pub(crate) fn charge(values: usize, bytes: usize) -> Result<(), LimitExceeded> {
    let Some(mut budget) = BUDGET.get() else {
        return Ok(());
    };
    budget.count = budget.count.saturating_add(values);
    budget.bytes = budget.bytes.saturating_add(bytes);
    let verdict = budget.limits.check(budget.count, budget.bytes);
    if let Err(limit) = verdict {
        budget.exceeded.get_or_insert(limit);
    }
    BUDGET.set(Some(budget));
    verdict
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charges_count_only_inside_a_scope_and_scopes_nest() {
        assert_eq!(charge(usize::MAX, usize::MAX), Ok(()));
        let tight = HeaderLimits::default().with_max_count(2).with_max_bytes(10);
        let ((), over) = decode_with(&tight, || {
            assert_eq!(charge(1, 4), Ok(()));
            let ((), inner) = decode_with(&HeaderLimits::UNLIMITED, || {
                assert_eq!(charge(100, 100), Ok(()));
            });
            assert_eq!(inner, None);
            assert_eq!(charge(1, 4), Ok(()));
            assert_eq!(charge(0, 3), Err(LimitExceeded::HeaderBytes { max: 10 }));
            assert_eq!(charge(1, 0), Err(LimitExceeded::HeaderCount { max: 2 }));
        });
        assert_eq!(over, Some(LimitExceeded::HeaderBytes { max: 10 }));
        assert_eq!(charge(usize::MAX, 1), Ok(()));
    }

    #[test]
    fn limits_deserialize_over_their_defaults_and_refuse_unknown_keys() {
        let headers: HeaderLimits = serde_json::from_str(r#"{"max_count": 10}"#).unwrap();
        assert_eq!(headers, HeaderLimits::default().with_max_count(10));
        let message: MessageLimits =
            serde_json::from_str(r#"{"headers": {"max_bytes": 512}}"#).unwrap();
        assert_eq!(
            message,
            MessageLimits::default().with_headers(HeaderLimits::default().with_max_bytes(512))
        );
        let err = serde_json::from_str::<HeaderLimits>(r#"{"max_counts": 10}"#).unwrap_err();
        assert!(
            err.to_string().contains("unknown field `max_counts`"),
            "{err}"
        );
        let err = serde_json::from_str::<MessageLimits>(r#"{"max_element": 1}"#).unwrap_err();
        assert!(
            err.to_string().contains("unknown field `max_element`"),
            "{err}"
        );
    }

    #[test]
    fn a_panic_inside_the_scope_restores_the_outer_budget() {
        let result = std::panic::catch_unwind(|| {
            decode_with(&HeaderLimits::default(), || panic!("decoder bug"));
        });
        assert!(result.is_err());
        assert_eq!(charge(usize::MAX, usize::MAX), Ok(()));
    }
}
