//! Test harnesses (feature `test-util`): the protocol's state machines driven without I/O, the
//! way the drivers drive them, for the tests, benches and fuzz targets of every crate.
//!
//! - [`FramedAgent`]: one agent connection behind its codec, fed and drained as bytes.
//! - [`FramedProxy`]: the same for one proxy connection.
//! - [`Pair`]: a proxy connection and an agent connection wired together in memory with a
//!   simulated clock (as quinn-proto's `Pair`), over framed bytes or typed messages.
//! - [`decode_event_general`] and [`fast_request_headers`]: the two event decoders apart, so
//!   that tests and fuzz targets can hold the fast path to the general one;
//!   [`encode_event_general`] likewise for the direct writers.

mod framed_agent;
mod framed_proxy;
mod pair;

pub use framed_agent::FramedAgent;
pub use framed_proxy::FramedProxy;
pub use pair::{Pair, Transport};

use crate::encoding::{DecodeError, EncodeError, Encoding};
use crate::event::{Event, RequestHeadersEvent};
use crate::frame::FrameType;
use crate::limits::MessageLimits;

/// Decodes an event the general way only (serde, every shape and leniency), never through a
/// fast path: what [`decode_event_with_limits`](crate::encoding::decode_event_with_limits)
/// must agree with whenever a fast path takes the payload.
pub fn decode_event_general(
    frame_type: FrameType,
    encoding: Encoding,
    payload: &[u8],
    limits: MessageLimits,
) -> Option<Result<Event, DecodeError>> {
    crate::encoding::decode_event_general(frame_type, encoding, payload, limits)
}

/// A direct RequestHeaders reader on its own, for a payload in `encoding` (without its frame
/// header): `Some` when it takes the payload, `None` when it leaves the decision to the general
/// decoder. The event is not yet normalised (see [`Event::normalize`]).
pub fn fast_request_headers(
    encoding: Encoding,
    payload: &[u8],
    limits: MessageLimits,
) -> Option<RequestHeadersEvent> {
    let room = bytes::BytesMut::with_capacity(crate::json_request_headers::unescape_room(payload));
    let payload = bytes::Bytes::copy_from_slice(payload);
    let encoding = crate::encoding::effective_encoding(encoding, &payload);
    crate::encoding::read_request_headers(encoding, &payload, room, &limits)
}

/// The direct AgentResponse reader on its own (a simple allow): `Some` when it takes the
/// payload, `None` when it leaves the decision to the general decoder.
pub fn fast_agent_response(encoding: Encoding, payload: &[u8]) -> Option<crate::AgentResponse> {
    crate::encoding::read_simple_allow(encoding, &bytes::Bytes::copy_from_slice(payload))
}

/// Encodes an event the general way only (serde), never through a direct writer: the bytes
/// [`encode_event`](crate::encoding::encode_event) must produce.
pub fn encode_event_general(
    out: &mut bytes::BytesMut,
    encoding: Encoding,
    event: &Event,
) -> Result<(), EncodeError> {
    crate::encoding::encode_event_general(out, encoding, event)
}
