//! The answers an agent writes on its own: a *block*, never an allow, for every event the
//! application does not get to answer, and for every answer that cannot be sent as given.
//!
//! A proxy waits for an answer to each event it sends; silence costs it a timeout, and an allow
//! would let through a request nobody inspected. So each refusal below is answered at once with a
//! block whose audit carries one of the reason codes, and, for a WebSocket frame (which a block
//! without a `websocket_decision` would forward), a close.

use crate::encoding::{DecodeError, EncodeError};
use crate::frame::FrameType;
use crate::limits::LimitExceeded;
use crate::response::{AgentResponse, Decision, WebSocketDecision};

/// Reason code of the block sent for an event whose payload could not be decoded, or that had no
/// correlation id.
pub const MALFORMED_EVENT_REASON: &str = "MALFORMED_EVENT";

/// Reason code of the block sent in place of an answer too large for the transport (16 MiB,
/// body mutations and audit data included), so the request is refused rather than never answered.
pub const RESPONSE_TOO_LARGE_REASON: &str = "RESPONSE_TOO_LARGE";

/// Reason code of the block sent in place of an answer the serializer refused, as for
/// [`RESPONSE_TOO_LARGE_REASON`].
pub const RESPONSE_UNENCODABLE_REASON: &str = "RESPONSE_UNENCODABLE";

/// Reason code of the block (status 503) sent for an event that arrived while
/// [`AgentConfig::max_in_flight`](super::AgentConfig::max_in_flight) requests were unanswered.
pub const AGENT_OVERLOADED_REASON: &str = "AGENT_OVERLOADED";

/// Reason code of the block (status 431) sent for an event whose headers go over
/// [`AgentConfig::header_limits`](super::AgentConfig::header_limits); the application never
/// sees the event.
pub const HEADER_LIMIT_REASON: &str = "HEADER_LIMIT_EXCEEDED";

/// Reason code of the block (status 413) sent for an event with more array items plus map
/// entries than [`AgentConfig::max_elements`](super::AgentConfig::max_elements): it is refused
/// before it is decoded, and the application never sees it.
pub const MESSAGE_TOO_COMPLEX_REASON: &str = "MESSAGE_TOO_COMPLEX";

/// Reason code of the block sent for an event that arrived before the handshake (only a message
/// transport can deliver one: a framed connection closes on any frame before the handshake).
/// Dropping it instead would leave the proxy waiting out its timeout.
pub const HANDSHAKE_REQUIRED_REASON: &str = "HANDSHAKE_REQUIRED";

/// Reason code of the block (status 503) an adapter sends when the handler could not answer: a
/// middleware around it gave up (a timeout, a load shedder) or failed. An event is answered
/// whatever happens inside the agent, and never with an allow nobody decided.
pub const HANDLER_FAILED_REASON: &str = "HANDLER_FAILED";

/// WebSocket close code for a refused frame (1011, internal error).
const WS_CLOSE_INTERNAL: u16 = 1011;
/// WebSocket close code for a frame refused under overload (1013, try again later).
const WS_CLOSE_TRY_AGAIN: u16 = 1013;

/// Why the agent answers on its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FailClosed {
    /// The event could not be decoded, or had no correlation id.
    Malformed,
    /// [`AgentConfig::max_in_flight`](super::AgentConfig::max_in_flight) requests were waiting.
    Overloaded,
    /// The event came before the handshake.
    HandshakeRequired,
    /// The event's headers went over the header limits.
    HeaderLimit,
    /// The event went over the element budget.
    TooComplex,
    /// The application's answer was too large for the transport.
    AnswerTooLarge,
    /// The serializer refused the application's answer.
    AnswerUnencodable,
    /// The handler (or a middleware around it) failed to answer.
    HandlerFailed,
}

impl FailClosed {
    /// The refusal for an event that failed to decode.
    pub(crate) fn for_decode_error(error: &DecodeError) -> Self {
        match error.limit {
            None => Self::Malformed,
            Some(LimitExceeded::Elements { .. }) => Self::TooComplex,
            Some(LimitExceeded::HeaderCount { .. } | LimitExceeded::HeaderBytes { .. }) => {
                Self::HeaderLimit
            }
        }
    }

    /// The replacement for an answer that failed to encode.
    pub(crate) fn for_encode_error(error: &EncodeError) -> Self {
        match error {
            EncodeError::TooLarge(_) => Self::AnswerTooLarge,
            EncodeError::Serialize { .. } => Self::AnswerUnencodable,
        }
    }

    /// The block answering an event carried by `frame_type` (`None` when the answer replaces one
    /// whose event is no longer known: it then carries a WebSocket close in case it was a frame).
    pub(crate) fn response(self, frame_type: Option<FrameType>) -> AgentResponse {
        let (status, body, reason, ws_code) = match self {
            Self::Malformed => (
                500,
                "malformed event",
                MALFORMED_EVENT_REASON,
                WS_CLOSE_INTERNAL,
            ),
            Self::Overloaded => (
                503,
                "agent overloaded",
                AGENT_OVERLOADED_REASON,
                WS_CLOSE_TRY_AGAIN,
            ),
            Self::HandshakeRequired => (
                500,
                "event before the handshake",
                HANDSHAKE_REQUIRED_REASON,
                WS_CLOSE_INTERNAL,
            ),
            Self::HeaderLimit => (
                431,
                "request header fields too large",
                HEADER_LIMIT_REASON,
                WS_CLOSE_INTERNAL,
            ),
            Self::TooComplex => (
                413,
                "message too complex",
                MESSAGE_TOO_COMPLEX_REASON,
                WS_CLOSE_INTERNAL,
            ),
            Self::AnswerTooLarge => (
                500,
                "agent answer could not be sent",
                RESPONSE_TOO_LARGE_REASON,
                WS_CLOSE_INTERNAL,
            ),
            Self::AnswerUnencodable => (
                500,
                "agent answer could not be sent",
                RESPONSE_UNENCODABLE_REASON,
                WS_CLOSE_INTERNAL,
            ),
            Self::HandlerFailed => (
                503,
                "agent handler failed",
                HANDLER_FAILED_REASON,
                WS_CLOSE_TRY_AGAIN,
            ),
        };
        let mut response = AgentResponse::new(Decision::block(status, Some(body.to_owned())));
        response.audit.reason_codes.push(reason.to_owned());
        if frame_type.is_none_or(|ty| ty == FrameType::WebSocketFrame) {
            // A WebSocket frame without a websocket_decision is forwarded; close instead.
            response.websocket_decision = Some(WebSocketDecision::Close {
                code: ws_code,
                reason: body.to_owned(),
            });
        }
        response
    }
}

/// The block a transport sends in place of an answer it cannot carry (`error` says why: too
/// large, or refused by the serializer), so the proxy neither waits out its timeout nor lets
/// the request through. It carries a WebSocket close, since the event it answers may have been
/// a frame.
///
/// ```
/// use agent_protocol_core::agent::{unsendable_answer, RESPONSE_TOO_LARGE_REASON};
/// use agent_protocol_core::encoding::EncodeError;
/// use agent_protocol_core::frame::PayloadTooLarge;
/// let block = unsendable_answer(&EncodeError::TooLarge(PayloadTooLarge { len: 1 << 25, max: 1 << 24 }));
/// assert_eq!(block.decision.kind(), "block");
/// assert_eq!(block.audit.reason_codes, [RESPONSE_TOO_LARGE_REASON]);
/// ```
pub fn unsendable_answer(error: &EncodeError) -> AgentResponse {
    FailClosed::for_encode_error(error).response(None)
}

/// The block answering an event carried by `frame_type` that the handler failed to answer (a
/// middleware around it timed out, shed the load, or failed): status 503, reason code
/// [`HANDLER_FAILED_REASON`], and a WebSocket close for a frame.
///
/// ```
/// use agent_protocol_core::agent::{handler_failed_answer, HANDLER_FAILED_REASON};
/// use agent_protocol_core::frame::FrameType;
/// let block = handler_failed_answer(FrameType::RequestHeaders);
/// assert_eq!(block.decision.kind(), "block");
/// assert_eq!(block.audit.reason_codes, [HANDLER_FAILED_REASON]);
/// assert!(handler_failed_answer(FrameType::WebSocketFrame).websocket_decision.is_some());
/// ```
pub fn handler_failed_answer(frame_type: FrameType) -> AgentResponse {
    FailClosed::HandlerFailed.response(Some(frame_type))
}
