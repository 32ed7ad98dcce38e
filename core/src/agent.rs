//! The agent side of a UDS or reverse connection, as a Sans-IO state machine.
//!
//! An [`AgentConnection`] is a plain value in the style of quinn-proto and rustls: the adapter
//! feeds it the bytes it read ([`AgentConnection::handle_input`], or
//! [`AgentConnection::read_buffer`] plus [`AgentConnection::process_input`] to read straight into
//! its buffer) and the time ([`AgentConnection::handle_timeout`]), then drains it of events
//! ([`AgentConnection::poll_event`]), bytes to write ([`AgentConnection::poll_transmit`], every
//! queued frame coalesced into one buffer) and its next deadline
//! ([`AgentConnection::poll_timeout`]). It does no I/O, reads no clock and starts no thread.
//!
//! What it does for the agent (see `docs/protocol.md`, without the reference's defects):
//! - answers the proxy's handshake (UDS), or starts established after a reverse registration;
//! - turns every event 0x10..=0x17, GuardrailInspect and Configure included, into an
//!   [`AgentEvent::Request`] with its own [`RequestId`]; the application answers each with
//!   [`AgentConnection::respond`] exactly once, in any order and concurrently: nothing waits
//!   behind an unanswered request (the reference agent handles one request at a time);
//! - sets `audit.custom.correlation_id` on every answer, so the proxy can route it, and answers
//!   with a block ([`RESPONSE_TOO_LARGE_REASON`]) when the application's answer does not fit
//!   in a frame, rather than leaving the proxy waiting;
//! - answers an undecodable event whose id can be salvaged with a *block* (HTTP 500,
//!   [`MALFORMED_EVENT_REASON`]), never an allow, and closes the connection when not even
//!   the id can be read, so the proxy fails everything at once instead of waiting out timeouts;
//! - honours Cancel (0x40): the request is dropped, reported as [`AgentEvent::Cancelled`], and a
//!   later answer for it is refused and never written (the reference agent only logs it);
//! - echoes Ping (0x41) as Pong (0x42) byte for byte, immediately;
//! - skips frames with unknown type bytes instead of dropping the connection;
//! - bounds what it tracks: beyond [`AgentConfig::max_in_flight`] unanswered requests, a new event
//!   is answered at once with a block (HTTP 503, [`AGENT_OVERLOADED_REASON`]), and it counts the
//!   payload bytes of the events it tracks ([`AgentConnection::in_flight_bytes`]) so the adapter
//!   can stop reading while the application holds too much.

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use smallvec::SmallVec;

use crate::capabilities::EventKind;
use crate::control::{
    Cancel, CancelReason, ConfigUpdateRequest, FlowControl, HealthStatus, MetricsReport, Ping,
};
use crate::encoding::{self, DecodeError, EncodeError, Encoding};
use crate::error::{ConnectionError, Fault};
use crate::event::{event_frame_type, Event};
use crate::frame::{
    self, Decoded, Frame, FrameDecoder, FrameType, FRAME_HEADER_LEN, MAX_FRAME_LEN,
};
use crate::handshake::{
    AgentHandshake, AgentHandshakeConfig, HandshakeError, HandshakeRequest, HandshakeResponse,
    Negotiated, PROTOCOL_VERSION,
};
use crate::limits::{HeaderLimits, LimitExceeded, MessageLimits, DEFAULT_MAX_ELEMENTS};
use crate::response::{AgentResponse, Decision, WebSocketDecision};

/// Default bound on requests tracked at once ([`AgentConfig::max_in_flight`]).
pub const DEFAULT_MAX_IN_FLIGHT: usize = 4096;

/// Reason code of the block sent for an event whose payload could not be decoded.
pub const MALFORMED_EVENT_REASON: &str = "MALFORMED_EVENT";

/// Reason code of the block sent in place of an answer too large for a frame (16 MiB, body
/// mutations and audit data included): [`AgentConnection::respond`] returns
/// [`RespondError::Encode`] and the request is answered with this block (HTTP 500) instead of
/// never.
pub const RESPONSE_TOO_LARGE_REASON: &str = "RESPONSE_TOO_LARGE";

/// Reason code of the block sent in place of an answer the serializer refused, as for
/// [`RESPONSE_TOO_LARGE_REASON`].
pub const RESPONSE_UNENCODABLE_REASON: &str = "RESPONSE_UNENCODABLE";

/// Reason code of the block sent for an event that arrived while
/// [`AgentConfig::max_in_flight`] requests were unanswered.
pub const AGENT_OVERLOADED_REASON: &str = "AGENT_OVERLOADED";

/// Reason code of the block (status 431) sent for an event whose headers go over
/// [`AgentConfig::header_limits`]; the application never sees the event.
pub const HEADER_LIMIT_REASON: &str = "HEADER_LIMIT_EXCEEDED";

/// Reason code of the block (status 413) sent for an event with more array items plus map
/// entries than [`AgentConfig::max_elements`]: it is refused before it is decoded, and the
/// application never sees it.
pub const MESSAGE_TOO_COMPLEX_REASON: &str = "MESSAGE_TOO_COMPLEX";

/// Reason code of the block sent, on a message transport, for an event that arrived before the
/// handshake (the reference drops such events silently and the proxy waits out its timeout).
pub const HANDSHAKE_REQUIRED_REASON: &str = "HANDSHAKE_REQUIRED";

/// Informational events ([`AgentEvent::FrameSkipped`], [`AgentEvent::Ignored`],
/// [`AgentEvent::MalformedEvent`], [`AgentEvent::MalformedControl`], [`AgentEvent::Overloaded`])
/// are dropped, and counted in [`AgentConnection::notices_dropped`], while this many events wait
/// to be polled, so an adapter that feeds input without polling cannot be made to queue notices
/// without bound. Requests, cancellations and the close are never dropped.
pub const MAX_QUEUED_NOTICES: usize = 1024;

/// WebSocket close code sent with a fail-closed answer to a malformed WebSocketFrame event
/// (1011, internal error).
const WS_CLOSE_MALFORMED: u16 = 1011;
/// WebSocket close code sent with an overload answer to a WebSocketFrame event (1013, try again
/// later).
const WS_CLOSE_OVERLOADED: u16 = 1013;

/// Settings of an [`AgentConnection`].
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// Handshake settings: capabilities announced, encodings supported, deadline.
    pub handshake: AgentHandshakeConfig,
    /// Largest frame length prefix accepted (clamped to [`MAX_FRAME_LEN`]).
    pub max_frame_len: u32,
    /// Largest number of unanswered requests tracked at once. An event beyond it is answered
    /// immediately with a block (503, [`AGENT_OVERLOADED_REASON`]). Zero refuses every event.
    pub max_in_flight: usize,
    /// Header values and bytes one event may carry, checked while it is decoded; an event over
    /// them is answered with a block (431, [`HEADER_LIMIT_REASON`]).
    pub header_limits: HeaderLimits,
    /// Array items plus map entries one event may carry, anywhere in it (see
    /// [`MessageLimits::max_elements`]), counted before it is decoded; an event over it is
    /// answered with a block (413, [`MESSAGE_TOO_COMPLEX_REASON`]) without being decoded.
    /// Default [`DEFAULT_MAX_ELEMENTS`].
    pub max_elements: usize,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            handshake: AgentHandshakeConfig::default(),
            max_frame_len: MAX_FRAME_LEN,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            header_limits: HeaderLimits::default(),
            max_elements: DEFAULT_MAX_ELEMENTS,
        }
    }
}

/// The agent-side id of one received event, unique within a connection. It is not the
/// correlation id: several events (say, the body chunks of one request) share a correlation id
/// and each still gets its own `RequestId` and its own answer.
pub type RequestId = u64;

/// What the connection has to tell the application.
#[derive(Clone, Debug, PartialEq)]
pub enum AgentEvent {
    /// The connection is ready for events: the handshake succeeded (UDS), or the connection was
    /// created established after a reverse registration (`proxy` is then `None`).
    Established {
        /// Encoding and capabilities in force.
        negotiated: Negotiated,
        /// The proxy's handshake request (its id, version and the configuration it passed).
        proxy: Option<HandshakeRequest>,
    },
    /// An event to answer with [`AgentConnection::respond`]`(id, ..)`, exactly once, in any
    /// order relative to other requests.
    Request {
        /// Handle for the answer.
        id: RequestId,
        /// The event.
        event: Event,
    },
    /// The proxy cancelled this request: stop working on it. It is no longer tracked, and
    /// [`AgentConnection::respond`] for it returns [`RespondError::UnknownRequest`] and writes
    /// nothing.
    Cancelled {
        /// The request.
        id: RequestId,
        /// Its correlation id.
        correlation_id: String,
        /// Why the proxy cancelled.
        reason: CancelReason,
    },
    /// An event payload could not be decoded (or went over [`AgentConfig::header_limits`] or
    /// [`AgentConfig::max_elements`], or had an empty correlation id) but its correlation id
    /// could be read. The connection has **already** answered it fail-closed (block 500,
    /// [`MALFORMED_EVENT_REASON`]; 431, [`HEADER_LIMIT_REASON`], or 413,
    /// [`MESSAGE_TOO_COMPLEX_REASON`], when `error.limit` is set); nothing is left to do but
    /// log it.
    MalformedEvent {
        /// The salvaged correlation id.
        correlation_id: String,
        /// What was wrong.
        error: DecodeError,
    },
    /// An event arrived while [`AgentConfig::max_in_flight`] requests were unanswered. The
    /// connection has already answered it with a block (503, [`AGENT_OVERLOADED_REASON`]).
    Overloaded {
        /// The refused event's correlation id.
        correlation_id: String,
        /// The refused event's frame type.
        frame_type: FrameType,
    },
    /// A control frame (Cancel) could not be decoded; it was ignored and the connection lives
    /// on.
    MalformedControl {
        /// What was wrong.
        error: DecodeError,
    },
    /// A frame with an unknown type byte was skipped; the connection lives on.
    FrameSkipped {
        /// The unknown type byte.
        type_byte: u8,
    },
    /// A frame an agent never expects from the proxy (0x01 or 0x02 after the handshake, 0x20,
    /// 0x30..=0x33, 0x42) was ignored.
    Ignored {
        /// Its type.
        frame_type: FrameType,
    },
    /// The connection ended. Emitted exactly once, last; every tracked request was dropped.
    Closed(ConnectionError),
}

/// Why [`AgentConnection::respond`] wrote nothing.
#[derive(Debug, thiserror::Error)]
pub enum RespondError {
    /// No such request is awaiting an answer: it was already answered, cancelled, dropped by
    /// a close, or never existed.
    #[error("request {0} is not awaiting an answer (answered, cancelled or unknown)")]
    UnknownRequest(RequestId),
    /// The connection is closed.
    #[error("connection closed: {0}")]
    Closed(ConnectionError),
    /// The response could not be encoded (larger than a frame, or refused by the serializer).
    /// The request was answered fail-closed instead, with a block (HTTP 500, reason
    /// [`RESPONSE_TOO_LARGE_REASON`] or [`RESPONSE_UNENCODABLE_REASON`], and a WebSocket close
    /// for frames) and is no longer tracked; if even that block could not be written (a
    /// correlation id near the frame limit) the connection was closed, so the proxy fails the
    /// request at once. Either way nothing is left waiting.
    #[error("answer not sent, replaced by a fail-closed block: {0}")]
    Encode(#[from] EncodeError),
}

impl RespondError {
    /// Whose fault.
    pub fn fault(&self) -> Fault {
        match self {
            Self::UnknownRequest(_) | Self::Encode(_) => Fault::Local,
            Self::Closed(_) => Fault::Closed,
        }
    }
}

/// Why a `send_*` method of [`AgentConnection`] wrote nothing.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The handshake has not finished, so no encoding is agreed yet.
    #[error("connection not established (handshake in progress)")]
    NotEstablished,
    /// The connection is closed.
    #[error("connection closed: {0}")]
    Closed(ConnectionError),
    /// The message could not be encoded.
    #[error(transparent)]
    Encode(#[from] EncodeError),
}

impl SendError {
    /// Whose fault.
    pub fn fault(&self) -> Fault {
        match self {
            Self::NotEstablished | Self::Closed(_) => Fault::Closed,
            Self::Encode(_) => Fault::Local,
        }
    }
}

/// A typed message from the proxy, for transports that frame and encode messages themselves
/// (gRPC); see [`AgentConnection::handle_message`].
// Events dominate; boxing them would cost an allocation per message.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum AgentIncoming {
    /// The proxy's handshake request.
    Handshake(HandshakeRequest),
    /// An event to answer.
    Event(Event),
    /// An event the transport could not turn into an [`Event`]. With a correlation id it is
    /// answered fail-closed (block 500, [`MALFORMED_EVENT_REASON`]) as on framed transports;
    /// without one the connection closes, so the proxy fails everything at once instead of
    /// waiting out its timeouts.
    MalformedEvent {
        /// The correlation id, if the transport could read it.
        correlation_id: Option<String>,
        /// The kind of event it was.
        kind: EventKind,
        /// What was wrong.
        error: String,
    },
    /// Cancel a request.
    Cancel(Cancel),
    /// A ping, answered at once with [`AgentOutgoing::Pong`].
    Ping(Ping),
}

/// A typed message for the proxy, drained with [`AgentConnection::poll_message`] on message
/// transports.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum AgentOutgoing {
    /// The handshake answer (a refusal is followed by the close).
    Handshake(HandshakeResponse),
    /// An answer. The correlation id travels beside the response, which is exactly what the
    /// application gave [`AgentConnection::respond`]: nothing is added to `audit.custom`.
    Response {
        /// The request answered.
        correlation_id: String,
        /// The answer.
        response: AgentResponse,
    },
    /// The answer to a ping: the ping's own sequence and timestamp.
    Pong(Ping),
    /// Health report.
    Health(HealthStatus),
    /// Flow-control signal.
    FlowControl(FlowControl),
    /// Metrics report.
    Metrics(MetricsReport),
    /// Configuration update request.
    ConfigUpdate(ConfigUpdateRequest),
}

/// One request awaiting its answer.
#[derive(Debug)]
struct Tracked {
    correlation_id: String,
    /// What the event weighs in [`AgentConnection::in_flight_bytes`].
    bytes: usize,
}

#[derive(Debug)]
enum State {
    Handshaking(AgentHandshake),
    Established(Encoding),
    Closed(ConnectionError),
}

/// Which fail-closed answer the connection writes on its own.
#[derive(Clone, Copy)]
enum FailClosed {
    Malformed,
    Overloaded,
    HandshakeRequired,
    HeaderLimit,
    TooComplex,
}

/// The agent side of one connection.
///
/// ```
/// use std::time::Instant;
/// use agent_protocol_core::agent::{AgentConfig, AgentConnection, AgentEvent};
/// use agent_protocol_core::encoding::{decode_payload, encode_event};
/// use agent_protocol_core::frame::{Decoded, FrameDecoder, FrameType};
/// use agent_protocol_core::handshake::{ProxyHandshake, ProxyHandshakeConfig};
/// use agent_protocol_core::{AgentResponse, Event, RequestCompleteEvent};
///
/// let now = Instant::now();
/// let mut agent = AgentConnection::new(AgentConfig::default(), now);
///
/// // The proxy's handshake request arrives; the agent answers it.
/// let mut wire = bytes::BytesMut::new();
/// let proxy = ProxyHandshake::start(&ProxyHandshakeConfig::default(), now, &mut wire).unwrap();
/// agent.handle_input(now, &wire);
/// let mut answer = bytes::BytesMut::from(&agent.poll_transmit().unwrap()[..]);
/// let Some(Decoded::Frame(frame)) = FrameDecoder::new().decode(&mut answer).unwrap() else { panic!() };
/// let negotiated = proxy.handle_frame(&frame).unwrap();
/// assert!(matches!(agent.poll_event(), Some(AgentEvent::Established { .. })));
///
/// // An event arrives in the negotiated encoding; the application answers it.
/// let event = Event::RequestComplete(RequestCompleteEvent {
///     correlation_id: "req-1".into(),
///     status: 200,
///     ..Default::default()
/// });
/// let mut wire = bytes::BytesMut::new();
/// encode_event(&mut wire, negotiated.encoding, &event).unwrap();
/// agent.handle_input(now, &wire);
/// let Some(AgentEvent::Request { id, event }) = agent.poll_event() else { panic!() };
/// assert_eq!(event.correlation_id(), "req-1");
/// agent.respond(id, AgentResponse::allow()).unwrap();
///
/// // The answer carries the correlation id the proxy routes by.
/// let mut out = bytes::BytesMut::from(&agent.poll_transmit().unwrap()[..]);
/// let Some(Decoded::Frame(frame)) = FrameDecoder::new().decode(&mut out).unwrap() else { panic!() };
/// assert_eq!(frame.frame_type, FrameType::AgentResponse);
/// let response: AgentResponse =
///     decode_payload(frame.frame_type, negotiated.encoding, &frame.payload).unwrap();
/// assert_eq!(response.correlation_id(), Some("req-1"));
/// assert_eq!(agent.in_flight(), 0);
/// ```
#[derive(Debug)]
pub struct AgentConnection {
    config: AgentConfig,
    state: State,
    /// The negotiated encoding, kept after a close for [`AgentConnection::encoding`].
    encoding: Option<Encoding>,
    decoder: FrameDecoder,
    read_buf: BytesMut,
    out: BytesMut,
    events: VecDeque<AgentEvent>,
    /// Tracked requests. At most `max_in_flight` entries.
    requests: HashMap<RequestId, Tracked>,
    /// Sum of `Tracked::bytes` over `requests`.
    in_flight_bytes: usize,
    /// Correlation id -> tracked requests carrying it, for Cancel. Holds only ids present in
    /// `requests`, so it is bounded by the same limit.
    by_correlation: HashMap<String, SmallVec<[RequestId; 2]>>,
    next_id: RequestId,
    notices_dropped: u64,
    /// `Some` on message transports: what to send, typed, instead of bytes in `out`.
    outgoing: Option<VecDeque<AgentOutgoing>>,
}

impl AgentConnection {
    /// A connection accepted on the agent's socket: it waits for the proxy's 0x01 handshake
    /// request until `now + config.handshake.timeout`.
    pub fn new(config: AgentConfig, now: Instant) -> Self {
        let handshake = AgentHandshake::new(&config.handshake, now);
        Self::with_state(config, State::Handshaking(handshake), None)
    }

    /// A connection that needs no handshake: a reverse connection whose registration the
    /// adapter completed with [`crate::registration::AgentRegistration`] (reverse connections
    /// use [`Encoding::Json`]). Queues [`AgentEvent::Established`] with `proxy: None`.
    pub fn new_established(config: AgentConfig, encoding: Encoding) -> Self {
        let negotiated = Negotiated {
            encoding,
            capabilities: config.handshake.capabilities.clone(),
            protocol_version: PROTOCOL_VERSION,
        };
        let mut conn = Self::with_state(config, State::Established(encoding), Some(encoding));
        conn.events.push_back(AgentEvent::Established {
            negotiated,
            proxy: None,
        });
        conn
    }

    fn with_state(config: AgentConfig, state: State, encoding: Option<Encoding>) -> Self {
        Self {
            decoder: FrameDecoder::with_max_frame_len(config.max_frame_len),
            config,
            state,
            encoding,
            read_buf: BytesMut::new(),
            out: BytesMut::new(),
            events: VecDeque::new(),
            requests: HashMap::new(),
            in_flight_bytes: 0,
            by_correlation: HashMap::new(),
            next_id: 0,
            notices_dropped: 0,
            outgoing: None,
        }
    }

    /// A connection over a transport that frames and encodes messages itself (gRPC): it waits
    /// for [`AgentIncoming::Handshake`] until `now + config.handshake.timeout`. Feed the proxy's
    /// messages with [`AgentConnection::handle_message`] and drain ours with
    /// [`AgentConnection::poll_message`]; everything else (requests, answers in any order,
    /// cancel, limits, fail-closed answers) behaves as on framed transports, except that answers
    /// carry their correlation id beside the response instead of inside `audit.custom`.
    ///
    /// Unlike the reference, an event that arrives before the handshake is answered at
    /// once with a block (500, [`HANDSHAKE_REQUIRED_REASON`]) instead of being dropped.
    ///
    /// ```
    /// use std::time::Instant;
    /// use agent_protocol_core::agent::{AgentConfig, AgentConnection, AgentEvent, AgentIncoming, AgentOutgoing};
    /// use agent_protocol_core::handshake::HandshakeRequest;
    /// use agent_protocol_core::{AgentResponse, Event, RequestCompleteEvent};
    ///
    /// let now = Instant::now();
    /// let mut agent = AgentConnection::new_messages(AgentConfig::default(), now);
    /// agent.handle_message(now, AgentIncoming::Handshake(HandshakeRequest {
    ///     supported_versions: vec![2],
    ///     proxy_id: "proxy".into(),
    ///     proxy_version: "1".into(),
    ///     config: None,
    ///     supported_encodings: vec![],
    /// }));
    /// assert!(matches!(agent.poll_message(), Some(AgentOutgoing::Handshake(h)) if h.success));
    /// assert!(matches!(agent.poll_event(), Some(AgentEvent::Established { .. })));
    ///
    /// let event = Event::RequestComplete(RequestCompleteEvent { correlation_id: "c1".into(), ..Default::default() });
    /// agent.handle_message(now, AgentIncoming::Event(event));
    /// let Some(AgentEvent::Request { id, .. }) = agent.poll_event() else { panic!() };
    /// agent.respond(id, AgentResponse::allow()).unwrap();
    /// match agent.poll_message() {
    ///     Some(AgentOutgoing::Response { correlation_id, response }) => {
    ///         assert_eq!(correlation_id, "c1");
    ///         assert!(response.audit.custom.is_empty()); // nothing injected
    ///     }
    ///     other => panic!("{other:?}"),
    /// }
    /// ```
    pub fn new_messages(config: AgentConfig, now: Instant) -> Self {
        let handshake = AgentHandshake::new(&config.handshake, now);
        let mut conn = Self::with_state(config, State::Handshaking(handshake), None);
        conn.outgoing = Some(VecDeque::new());
        conn
    }

    /// Whether this connection runs on a message transport ([`AgentConnection::new_messages`]).
    pub fn is_message_transport(&self) -> bool {
        self.outgoing.is_some()
    }

    /// The next message to send on a message transport; always `None` on framed ones. Messages
    /// queued before a close are still returned after it.
    pub fn poll_message(&mut self) -> Option<AgentOutgoing> {
        self.outgoing.as_mut()?.pop_front()
    }

    /// Feeds one typed message from the proxy: the input of a connection created with
    /// [`AgentConnection::new_messages`]. On a framed connection the message is ignored (a
    /// framed connection reads bytes). Ignored once the connection is closed.
    pub fn handle_message(&mut self, now: Instant, message: AgentIncoming) {
        if self.outgoing.is_none() || self.is_closed() {
            return;
        }
        self.handle_timeout(now);
        if self.is_closed() {
            return;
        }
        match message {
            AgentIncoming::Handshake(request) => {
                let State::Handshaking(hs) = &self.state else {
                    self.notice(AgentEvent::Ignored {
                        frame_type: FrameType::HandshakeRequest,
                    });
                    return;
                };
                let (answer, outcome) = hs.handle_request(&self.config.handshake, request);
                self.push_outgoing(AgentOutgoing::Handshake(answer));
                match outcome {
                    Ok((negotiated, request)) => {
                        self.state = State::Established(negotiated.encoding);
                        self.encoding = Some(negotiated.encoding);
                        self.events.push_back(AgentEvent::Established {
                            negotiated,
                            proxy: Some(request),
                        });
                    }
                    Err(e) => self.close_with(ConnectionError::Handshake(e)),
                }
            }
            AgentIncoming::Event(event) => {
                if matches!(self.state, State::Handshaking(_)) {
                    let frame_type = event.frame_type();
                    let correlation_id = event.correlation_id().to_owned();
                    self.answer_fail_closed(
                        Encoding::Json,
                        frame_type,
                        &correlation_id,
                        FailClosed::HandshakeRequired,
                    );
                    return;
                }
                // The transport decoded the headers itself: hold them to the same limits a
                // framed connection applies while decoding, with the same answer.
                let (count, bytes) = event.header_load();
                if let Err(limit) = self.config.header_limits.check(count, bytes) {
                    let error = DecodeError {
                        frame_type: event.frame_type(),
                        encoding: Encoding::Json,
                        message: limit.to_string(),
                        limit: Some(limit),
                    };
                    let correlation_id = event.correlation_id().to_owned();
                    self.refuse_event(Encoding::Json, correlation_id, error);
                    return;
                }
                let bytes = message_size(&event);
                self.admit_event(Encoding::Json, event, bytes);
            }
            AgentIncoming::MalformedEvent {
                correlation_id,
                kind,
                error,
            } => {
                let frame_type = event_frame_type(kind);
                let error = DecodeError {
                    frame_type,
                    encoding: Encoding::Json,
                    message: error,
                    limit: None,
                };
                match correlation_id {
                    Some(correlation_id) => {
                        let why = if matches!(self.state, State::Handshaking(_)) {
                            FailClosed::HandshakeRequired
                        } else {
                            FailClosed::Malformed
                        };
                        if self.answer_fail_closed(Encoding::Json, frame_type, &correlation_id, why)
                        {
                            self.notice(AgentEvent::MalformedEvent {
                                correlation_id,
                                error,
                            });
                        }
                    }
                    None => self.close_with(ConnectionError::Malformed(error)),
                }
            }
            AgentIncoming::Cancel(cancel) => self.apply_cancel(cancel),
            AgentIncoming::Ping(ping) => self.push_outgoing(AgentOutgoing::Pong(ping)),
        }
    }

    fn push_outgoing(&mut self, message: AgentOutgoing) {
        if let Some(queue) = self.outgoing.as_mut() {
            queue.push_back(message);
        }
    }

    /// Feeds bytes read from the socket, in any split, and processes every complete frame.
    /// Ignored once the connection is closed.
    pub fn handle_input(&mut self, now: Instant, data: &[u8]) {
        if self.is_closed() || self.outgoing.is_some() {
            return;
        }
        self.read_buf.extend_from_slice(data);
        self.process_input(now);
    }

    /// The internal read buffer, for adapters that read straight into it (then call
    /// [`AgentConnection::process_input`]).
    pub fn read_buffer(&mut self) -> &mut BytesMut {
        &mut self.read_buf
    }

    /// How many more bytes the connection needs before it can make progress: a hint for
    /// sizing the next read into [`AgentConnection::read_buffer`]. Never more than one frame.
    pub fn read_hint(&self) -> usize {
        self.decoder.bytes_wanted(&self.read_buf)
    }

    /// Processes every complete frame in the read buffer; an incomplete one stays there. Once
    /// the connection is closed, the buffer is discarded instead.
    pub fn process_input(&mut self, now: Instant) {
        while !self.is_closed() {
            if let Some(got) = self.premature_frame() {
                self.close_with(ConnectionError::Handshake(
                    HandshakeError::UnexpectedFrame {
                        expected: FrameType::HandshakeRequest,
                        got,
                    },
                ));
                break;
            }
            match self.decoder.decode(&mut self.read_buf) {
                Ok(None) => break,
                Ok(Some(Decoded::Frame(frame))) => self.on_frame(frame),
                Ok(Some(Decoded::Skipped { type_byte, .. })) => self.on_skipped(type_byte),
                Err(e) => self.close_with(ConnectionError::Frame(e)),
            }
        }
        if self.is_closed() {
            self.read_buf = BytesMut::new();
            return;
        }
        // A handshake that arrived in time is accepted even if the adapter processes it late;
        // only a connection still waiting is timed out here.
        self.handle_timeout(now);
    }

    /// While waiting for the handshake, the type byte of a buffered frame header that is not
    /// 0x01: the connection is refused as soon as the header is seen, before its payload (up to
    /// 16 MiB) is buffered or skipped. Zero-length headers are left to the decoder.
    fn premature_frame(&self) -> Option<u8> {
        if !matches!(self.state, State::Handshaking(_)) || self.read_buf.len() < FRAME_HEADER_LEN {
            return None;
        }
        let b = &self.read_buf;
        let len = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
        let ty = b[4];
        (len != 0 && ty != FrameType::HandshakeRequest.as_byte()).then_some(ty)
    }

    /// The peer closed its end (read returned 0). Pending requests are dropped.
    pub fn handle_eof(&mut self) {
        self.close_with(ConnectionError::PeerClosed);
    }

    /// Reading or writing failed. Pending requests are dropped.
    pub fn handle_io_error(&mut self, msg: String) {
        self.close_with(ConnectionError::Io(msg));
    }

    /// Checks the handshake deadline; closes the connection if it passed while still waiting.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let State::Handshaking(hs) = &self.state {
            if let Err(e) = hs.handle_timeout(now) {
                self.close_with(ConnectionError::Handshake(e));
            }
        }
    }

    /// The next deadline to pass to [`AgentConnection::handle_timeout`]: the handshake's while
    /// it is in progress, otherwise `None` (the agent side has no other timer).
    pub fn poll_timeout(&self) -> Option<Instant> {
        match &self.state {
            State::Handshaking(hs) => Some(hs.deadline()),
            _ => None,
        }
    }

    /// The next event for the application. After [`AgentEvent::Closed`] it returns `None`.
    pub fn poll_event(&mut self) -> Option<AgentEvent> {
        self.events.pop_front()
    }

    /// Everything queued for writing, coalesced into one buffer (several frames), or `None`.
    /// Output queued before a close (a handshake refusal, answers) is still returned after it;
    /// the adapter should write it if the socket still works.
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        if self.out.is_empty() {
            None
        } else {
            Some(self.out.split().freeze())
        }
    }

    /// Bytes queued for writing.
    pub fn pending_transmit(&self) -> usize {
        self.out.len()
    }

    /// Answers request `id`: sets `audit.custom.correlation_id` to the event's correlation id
    /// (overwriting whatever is there) and queues a 0x20 frame in the negotiated encoding.
    /// Each request is answered at most once. On [`RespondError::Encode`] (an answer too large
    /// for a frame) the request is answered with a fail-closed block instead and is no longer
    /// tracked; on the other errors nothing is written.
    pub fn respond(
        &mut self,
        id: RequestId,
        mut response: AgentResponse,
    ) -> Result<(), RespondError> {
        let encoding = match &self.state {
            State::Established(encoding) => *encoding,
            State::Closed(reason) => return Err(RespondError::Closed(reason.clone())),
            State::Handshaking(_) => return Err(RespondError::UnknownRequest(id)),
        };
        if self.outgoing.is_some() {
            let correlation_id = self.forget(id).ok_or(RespondError::UnknownRequest(id))?;
            self.push_outgoing(AgentOutgoing::Response {
                correlation_id,
                response,
            });
            return Ok(());
        }
        let tracked = self
            .requests
            .get(&id)
            .ok_or(RespondError::UnknownRequest(id))?;
        response.set_correlation_id(&tracked.correlation_id);
        let written =
            encoding::encode_frame(&mut self.out, FrameType::AgentResponse, encoding, &response);
        let correlation_id = self.forget(id);
        if let Err(error) = written {
            let correlation_id = correlation_id.as_deref().unwrap_or_default();
            self.answer_unencodable(encoding, correlation_id, &error);
            return Err(RespondError::Encode(error));
        }
        Ok(())
    }

    /// Answers a request whose own answer could not be encoded with a block, so the proxy
    /// neither waits out its timeout nor lets the request through; closes the connection if
    /// even the block cannot be written.
    fn answer_unencodable(
        &mut self,
        encoding: Encoding,
        correlation_id: &str,
        error: &EncodeError,
    ) {
        let reason = match error {
            EncodeError::TooLarge(_) => RESPONSE_TOO_LARGE_REASON,
            EncodeError::Serialize { .. } => RESPONSE_UNENCODABLE_REASON,
        };
        let body = "agent answer could not be sent";
        let mut block = AgentResponse::new(Decision::block(500, Some(body.to_owned())));
        block.audit.reason_codes.push(reason.to_owned());
        // Only WebSocket frames read it, and for them a bare block would forward the frame.
        block.websocket_decision = Some(WebSocketDecision::Close {
            code: WS_CLOSE_MALFORMED,
            reason: body.to_owned(),
        });
        block.set_correlation_id(correlation_id);
        if let Err(e) =
            encoding::encode_frame(&mut self.out, FrameType::AgentResponse, encoding, &block)
        {
            self.close_with(ConnectionError::Protocol(format!(
                "cannot answer a request fail-closed after its answer failed to encode: {e}"
            )));
        }
    }

    /// Queues a 0x30 HealthStatus ([`AgentOutgoing::Health`] on message transports).
    pub fn send_health(&mut self, status: &HealthStatus) -> Result<(), SendError> {
        self.send(FrameType::HealthStatus, status, || {
            AgentOutgoing::Health(status.clone())
        })
    }

    /// Queues a 0x33 FlowControl ([`AgentOutgoing::FlowControl`] on message transports).
    pub fn send_flow_control(&mut self, signal: &FlowControl) -> Result<(), SendError> {
        self.send(FrameType::FlowControl, signal, || {
            AgentOutgoing::FlowControl(signal.clone())
        })
    }

    /// Queues a 0x31 MetricsReport ([`AgentOutgoing::Metrics`] on message transports).
    pub fn send_metrics(&mut self, report: &MetricsReport) -> Result<(), SendError> {
        self.send(FrameType::MetricsReport, report, || {
            AgentOutgoing::Metrics(report.clone())
        })
    }

    /// Queues a 0x32 ConfigUpdateRequest ([`AgentOutgoing::ConfigUpdate`] on message
    /// transports).
    pub fn send_config_update(&mut self, request: &ConfigUpdateRequest) -> Result<(), SendError> {
        self.send(FrameType::ConfigUpdateRequest, request, || {
            AgentOutgoing::ConfigUpdate(request.clone())
        })
    }

    fn send<T: serde::Serialize>(
        &mut self,
        frame_type: FrameType,
        value: &T,
        message: impl FnOnce() -> AgentOutgoing,
    ) -> Result<(), SendError> {
        let encoding = match &self.state {
            State::Established(encoding) => *encoding,
            State::Closed(reason) => return Err(SendError::Closed(reason.clone())),
            State::Handshaking(_) => return Err(SendError::NotEstablished),
        };
        if let Some(queue) = self.outgoing.as_mut() {
            queue.push_back(message());
            return Ok(());
        }
        encoding::encode_frame(&mut self.out, frame_type, encoding, value)?;
        Ok(())
    }

    /// Closes the connection locally. Pending requests are dropped (a later
    /// [`AgentConnection::respond`] for them fails); output already queued stays available from
    /// [`AgentConnection::poll_transmit`] so the adapter can flush it before shutting the
    /// socket. Queues [`AgentEvent::Closed`] with [`ConnectionError::LocalClose`] unless the
    /// connection was already closed.
    pub fn close(&mut self) {
        self.close_with(ConnectionError::LocalClose);
    }

    fn close_with(&mut self, reason: ConnectionError) {
        if self.is_closed() {
            return;
        }
        self.requests = HashMap::new();
        self.in_flight_bytes = 0;
        self.by_correlation = HashMap::new();
        self.read_buf = BytesMut::new();
        self.state = State::Closed(reason.clone());
        self.events.push_back(AgentEvent::Closed(reason));
    }

    /// Unanswered requests being tracked (never more than [`AgentConfig::max_in_flight`]).
    pub fn in_flight(&self) -> usize {
        self.requests.len()
    }

    /// What the unanswered requests weigh, in bytes: the sum of their event frames' payload
    /// lengths (on a message transport, an estimate of each event: its body, header names and
    /// values, URI, inspected text and configuration, and correlation id). A request stops
    /// counting once it is answered, cancelled or dropped by the close.
    ///
    /// The application holds each event until it answers, and nothing else bounds their size:
    /// [`AgentConfig::max_in_flight`] events of a 16 MiB frame each would be 64 GiB. An adapter
    /// stops reading while this is above its bound, so a proxy that sends large events to a slow
    /// handler is pushed back instead of growing the agent. The event being decoded always
    /// counts in full, so one event larger than the adapter's bound is still taken, alone.
    ///
    /// ```
    /// use agent_protocol_core::agent::{AgentConfig, AgentConnection, AgentEvent, AgentIncoming};
    /// use agent_protocol_core::handshake::HandshakeRequest;
    /// use agent_protocol_core::{AgentResponse, BodyChunk, Event, RequestBodyChunkEvent};
    /// # let now = std::time::Instant::now();
    /// let mut agent = AgentConnection::new_messages(AgentConfig::default(), now);
    /// # agent.handle_message(now, AgentIncoming::Handshake(HandshakeRequest {
    /// #     supported_versions: vec![2], proxy_id: "p".into(), proxy_version: "1".into(),
    /// #     config: None, supported_encodings: vec![],
    /// # }));
    /// # while agent.poll_event().is_some() {}
    /// let chunk = BodyChunk { correlation_id: "c1".into(), data: vec![0; 4096].into(), ..Default::default() };
    /// agent.handle_message(now, AgentIncoming::Event(Event::RequestBodyChunk(RequestBodyChunkEvent(chunk))));
    /// let Some(AgentEvent::Request { id, .. }) = agent.poll_event() else { panic!() };
    /// assert!(agent.in_flight_bytes() >= 4096);
    /// agent.respond(id, AgentResponse::allow()).unwrap();
    /// assert_eq!(agent.in_flight_bytes(), 0);
    /// ```
    pub fn in_flight_bytes(&self) -> usize {
        self.in_flight_bytes
    }

    /// The negotiated encoding, once established (still reported after a close).
    pub fn encoding(&self) -> Option<Encoding> {
        self.encoding
    }

    /// Whether the handshake is done and the connection open.
    pub fn is_established(&self) -> bool {
        matches!(self.state, State::Established(_))
    }

    /// Whether the connection is closed.
    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed(_))
    }

    /// Why the connection closed, if it did.
    pub fn close_reason(&self) -> Option<&ConnectionError> {
        match &self.state {
            State::Closed(reason) => Some(reason),
            _ => None,
        }
    }

    /// The correlation id of a tracked request.
    pub fn correlation_id(&self, id: RequestId) -> Option<&str> {
        self.requests.get(&id).map(|t| t.correlation_id.as_str())
    }

    /// Informational events dropped because [`MAX_QUEUED_NOTICES`] events were waiting.
    pub fn notices_dropped(&self) -> u64 {
        self.notices_dropped
    }

    /// Frames with unknown type bytes skipped so far.
    pub fn frames_skipped(&self) -> u64 {
        self.decoder.frames_skipped()
    }

    fn notice(&mut self, event: AgentEvent) {
        if self.events.len() < MAX_QUEUED_NOTICES {
            self.events.push_back(event);
        } else {
            self.notices_dropped = self.notices_dropped.saturating_add(1);
        }
    }

    /// Stops tracking `id`; returns its correlation id if it was tracked.
    fn forget(&mut self, id: RequestId) -> Option<String> {
        let Tracked {
            correlation_id,
            bytes,
        } = self.requests.remove(&id)?;
        self.in_flight_bytes -= bytes;
        if let Some(ids) = self.by_correlation.get_mut(&correlation_id) {
            ids.retain(|other| *other != id);
            if ids.is_empty() {
                self.by_correlation.remove(&correlation_id);
            }
        }
        Some(correlation_id)
    }

    fn on_skipped(&mut self, type_byte: u8) {
        if matches!(self.state, State::Handshaking(_)) {
            // Normally caught by `premature_frame` already; kept for completeness.
            self.close_with(ConnectionError::Handshake(
                HandshakeError::UnexpectedFrame {
                    expected: FrameType::HandshakeRequest,
                    got: type_byte,
                },
            ));
        } else {
            self.notice(AgentEvent::FrameSkipped { type_byte });
        }
    }

    fn on_frame(&mut self, frame: Frame) {
        let encoding = match &self.state {
            State::Handshaking(hs) => {
                let result = hs.handle_frame(&self.config.handshake, &frame, &mut self.out);
                match result {
                    Ok((negotiated, request)) => {
                        self.state = State::Established(negotiated.encoding);
                        self.encoding = Some(negotiated.encoding);
                        self.events.push_back(AgentEvent::Established {
                            negotiated,
                            proxy: Some(request),
                        });
                    }
                    // Any refusal the handshake wrote stays queued for poll_transmit.
                    Err(e) => self.close_with(ConnectionError::Handshake(e)),
                }
                return;
            }
            State::Established(encoding) => *encoding,
            State::Closed(_) => return,
        };
        match frame.frame_type {
            ty if ty.is_event() => self.on_event(encoding, ty, &frame.payload),
            FrameType::Cancel => self.on_cancel(encoding, &frame.payload),
            FrameType::Ping => {
                // Echo byte for byte, as the protocol asks; the payload came in a frame within the
                // limit, so it always fits.
                if frame::encode_frame(&mut self.out, FrameType::Pong, &frame.payload).is_err() {
                    self.close_with(ConnectionError::Protocol(
                        "ping payload too large to echo".into(),
                    ));
                }
            }
            frame_type => self.notice(AgentEvent::Ignored { frame_type }),
        }
    }

    fn on_event(&mut self, encoding: Encoding, frame_type: FrameType, payload: &[u8]) {
        let limits = MessageLimits {
            headers: self.config.header_limits,
            max_elements: self.config.max_elements,
        };
        match encoding::decode_event_with_limits(frame_type, encoding, payload, limits) {
            None => self.notice(AgentEvent::Ignored { frame_type }),
            Some(Ok(event)) => self.admit_event(encoding, event, payload.len()),
            Some(Err(error)) => match salvage_correlation_id(encoding, payload) {
                Some(correlation_id) => self.refuse_event(encoding, correlation_id, error),
                // Nothing to answer: the proxy would wait out its timeout for this request.
                // Closing makes it fail everything on this connection at once instead.
                None => self.close_with(ConnectionError::Malformed(error)),
            },
        }
    }

    /// Answers an event the application will not see (undecodable, or over a limit) with a
    /// block, and reports it.
    fn refuse_event(&mut self, encoding: Encoding, correlation_id: String, error: DecodeError) {
        let why = match error.limit {
            None => FailClosed::Malformed,
            Some(LimitExceeded::Elements { .. }) => FailClosed::TooComplex,
            Some(LimitExceeded::HeaderCount { .. } | LimitExceeded::HeaderBytes { .. }) => {
                FailClosed::HeaderLimit
            }
        };
        if self.answer_fail_closed(encoding, error.frame_type, &correlation_id, why) {
            self.notice(AgentEvent::MalformedEvent {
                correlation_id,
                error,
            });
        }
    }

    /// Tracks a decoded event weighing `bytes` and hands it to the application, or answers it
    /// at once with an overload block when [`AgentConfig::max_in_flight`] requests are
    /// unanswered.
    fn admit_event(&mut self, encoding: Encoding, event: Event, bytes: usize) {
        if event.correlation_id().is_empty() {
            // An answer to it could not be routed, and our proxy never sends one: malformed.
            // (gRPC cannot tell an empty id from a missing one, so this is reachable there.)
            let error = DecodeError {
                frame_type: event.frame_type(),
                encoding,
                message: "event without a correlation id".into(),
                limit: None,
            };
            self.refuse_event(encoding, String::new(), error);
            return;
        }
        if self.requests.len() >= self.config.max_in_flight {
            let frame_type = event.frame_type();
            let correlation_id = event.correlation_id().to_owned();
            if self.answer_fail_closed(
                encoding,
                frame_type,
                &correlation_id,
                FailClosed::Overloaded,
            ) {
                self.notice(AgentEvent::Overloaded {
                    correlation_id,
                    frame_type,
                });
            }
            return;
        }
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        let correlation_id = event.correlation_id().to_owned();
        self.by_correlation
            .entry(correlation_id.clone())
            .or_default()
            .push(id);
        self.requests.insert(
            id,
            Tracked {
                correlation_id,
                bytes,
            },
        );
        self.in_flight_bytes += bytes;
        self.events.push_back(AgentEvent::Request { id, event });
    }

    /// Writes a block for an event the application never sees. Returns false (and closes the
    /// connection) if even that cannot be encoded, which only a correlation id near the frame
    /// limit can cause: the proxy then fails the request at once rather than timing out.
    fn answer_fail_closed(
        &mut self,
        encoding: Encoding,
        frame_type: FrameType,
        correlation_id: &str,
        kind: FailClosed,
    ) -> bool {
        let (status, body, reason, ws_code) = match kind {
            FailClosed::Malformed => (
                500,
                "malformed event",
                MALFORMED_EVENT_REASON,
                WS_CLOSE_MALFORMED,
            ),
            FailClosed::Overloaded => (
                503,
                "agent overloaded",
                AGENT_OVERLOADED_REASON,
                WS_CLOSE_OVERLOADED,
            ),
            FailClosed::HandshakeRequired => (
                500,
                "event before the handshake",
                HANDSHAKE_REQUIRED_REASON,
                WS_CLOSE_MALFORMED,
            ),
            FailClosed::HeaderLimit => (
                431,
                "request header fields too large",
                HEADER_LIMIT_REASON,
                WS_CLOSE_MALFORMED,
            ),
            FailClosed::TooComplex => (
                413,
                "message too complex",
                MESSAGE_TOO_COMPLEX_REASON,
                WS_CLOSE_MALFORMED,
            ),
        };
        let mut response = AgentResponse::new(Decision::block(status, Some(body.to_owned())));
        response.audit.reason_codes.push(reason.to_owned());
        if frame_type == FrameType::WebSocketFrame {
            // A WebSocket frame without a websocket_decision is forwarded; close instead.
            response.websocket_decision = Some(WebSocketDecision::Close {
                code: ws_code,
                reason: body.to_owned(),
            });
        }
        if self.outgoing.is_some() {
            self.push_outgoing(AgentOutgoing::Response {
                correlation_id: correlation_id.to_owned(),
                response,
            });
            return true;
        }
        response.set_correlation_id(correlation_id);
        match encoding::encode_frame(&mut self.out, FrameType::AgentResponse, encoding, &response) {
            Ok(()) => true,
            Err(e) => {
                self.close_with(ConnectionError::Protocol(format!(
                    "cannot answer a {frame_type:?} event fail-closed: {e}"
                )));
                false
            }
        }
    }

    fn on_cancel(&mut self, encoding: Encoding, payload: &[u8]) {
        match encoding::decode_payload::<Cancel>(FrameType::Cancel, encoding, payload) {
            Ok(cancel) => self.apply_cancel(cancel),
            Err(error) => self.notice(AgentEvent::MalformedControl { error }),
        }
    }

    fn apply_cancel(&mut self, cancel: Cancel) {
        let Some(ids) = self.by_correlation.remove(&cancel.correlation_id) else {
            return; // already answered, or never seen: nothing to stop
        };
        for id in ids {
            if let Some(tracked) = self.requests.remove(&id) {
                self.in_flight_bytes -= tracked.bytes;
            }
            self.events.push_back(AgentEvent::Cancelled {
                id,
                correlation_id: cancel.correlation_id.clone(),
                reason: cancel.reason,
            });
        }
    }
}

use encoding::salvage_correlation_id;

/// What an event that came as a typed message weighs in [`AgentConnection::in_flight_bytes`]:
/// the bytes it holds on the heap that the sender chose (body, header names and values, URI,
/// inspected text, configuration), not counting per-allocation overhead. A message transport
/// hands over no payload length, and this is close to what its encoding took on the wire.
fn message_size(event: &Event) -> usize {
    let strings = |v: &[String]| v.iter().map(String::len).sum::<usize>();
    let (_, header_bytes) = event.header_load();
    let own = match event {
        Event::RequestHeaders(e) => e.uri.len() + e.method.len(),
        Event::GuardrailInspect(e) => {
            let metadata: usize = e.metadata.iter().map(|(k, v)| k.len() + v.len()).sum();
            e.content.len() + strings(&e.categories) + metadata
        }
        // Configure is rare and its configuration arbitrary JSON: measure it as JSON text.
        Event::Configure(e) => {
            let mut counter = ByteCounter(0);
            let _ = serde_json::to_writer(&mut counter, &e.config);
            counter.0
        }
        _ => 0,
    };
    event.correlation_id().len() + header_bytes + event.body_len() + own
}

/// A writer that only counts what it is given.
struct ByteCounter(usize);

impl std::io::Write for ByteCounter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};
    use std::time::Duration;

    use proptest::prelude::*;

    use super::*;
    use crate::encoding::{decode_payload, encode_event};
    use crate::event::{
        BodyChunk, ConfigureEvent, GuardrailInspectEvent, GuardrailInspectionType,
        RequestBodyChunkEvent, RequestCompleteEvent, RequestHeadersEvent, RequestMetadata,
        ResponseBodyChunkEvent, ResponseHeadersEvent, WebSocketFrameEvent, WebSocketOpcode,
    };
    use crate::handshake::HandshakeResponse;
    use crate::headers::Headers;
    use crate::response::CORRELATION_KEY;
    use crate::{FlowAction, HealthState};

    fn t0() -> Instant {
        Instant::now()
    }

    fn raw_frame(type_byte: u8, payload: &[u8]) -> Vec<u8> {
        let mut v = ((payload.len() + 1) as u32).to_be_bytes().to_vec();
        v.push(type_byte);
        v.extend_from_slice(payload);
        v
    }

    fn handshake_frame(versions: &[u32], encodings: &[&str]) -> Vec<u8> {
        let req = HandshakeRequest {
            supported_versions: versions.to_vec(),
            proxy_id: "test-proxy".into(),
            proxy_version: "0".into(),
            config: Some(serde_json::json!({"mode": "strict"})),
            supported_encodings: encodings.iter().map(|s| s.to_string()).collect(),
        };
        raw_frame(0x01, &serde_json::to_vec(&req).unwrap())
    }

    fn decode_all(bytes: &[u8]) -> Vec<Frame> {
        let mut buf = BytesMut::from(bytes);
        let mut dec = FrameDecoder::new();
        let mut frames = Vec::new();
        while let Some(d) = dec.decode(&mut buf).unwrap() {
            match d {
                Decoded::Frame(f) => frames.push(f),
                Decoded::Skipped { type_byte, .. } => panic!("agent wrote type 0x{type_byte:02x}"),
            }
        }
        assert!(buf.is_empty(), "trailing partial frame in output");
        frames
    }

    fn transmitted(conn: &mut AgentConnection) -> Vec<Frame> {
        conn.poll_transmit()
            .map(|b| decode_all(&b))
            .unwrap_or_default()
    }

    fn events(conn: &mut AgentConnection) -> Vec<AgentEvent> {
        std::iter::from_fn(|| conn.poll_event()).collect()
    }

    fn responses(conn: &mut AgentConnection, encoding: Encoding) -> Vec<AgentResponse> {
        transmitted(conn)
            .into_iter()
            .map(|f| {
                assert_eq!(f.frame_type, FrameType::AgentResponse);
                decode_payload(f.frame_type, encoding, &f.payload).unwrap()
            })
            .collect()
    }

    /// A connection that went through a real handshake negotiating `encoding`.
    fn established_with(config: AgentConfig, encoding: Encoding) -> AgentConnection {
        let mut conn = AgentConnection::new(config, t0());
        conn.handle_input(t0(), &handshake_frame(&[2], &[encoding.as_str(), "json"]));
        let evs = events(&mut conn);
        assert!(
            matches!(&evs[..], [AgentEvent::Established { negotiated, .. }] if negotiated.encoding == encoding),
            "{evs:?}"
        );
        transmitted(&mut conn);
        conn
    }

    fn established(encoding: Encoding) -> AgentConnection {
        established_with(AgentConfig::default(), encoding)
    }

    fn event_frame(encoding: Encoding, event: &Event) -> Vec<u8> {
        let mut out = BytesMut::new();
        encode_event(&mut out, encoding, event).unwrap();
        out.to_vec()
    }

    fn complete(cid: &str) -> Event {
        Event::RequestComplete(RequestCompleteEvent {
            correlation_id: cid.into(),
            status: 200,
            ..Default::default()
        })
    }

    fn cancel_frame(cid: &str, reason: CancelReason) -> Vec<u8> {
        let c = Cancel {
            correlation_id: cid.into(),
            reason,
            timestamp_ms: 1,
        };
        raw_frame(0x40, &serde_json::to_vec(&c).unwrap())
    }

    /// One event of every type 0x10..=0x17, all with correlation id `cid`.
    fn every_event(cid: &str) -> Vec<Event> {
        let chunk = BodyChunk {
            correlation_id: cid.into(),
            data: bytes::Bytes::from_static(b"\x00\xffbody"),
            is_last: true,
            total_size: Some(6),
            chunk_index: 0,
            bytes_transferred: 6,
        };
        vec![
            Event::RequestHeaders(RequestHeadersEvent::new(
                RequestMetadata {
                    correlation_id: cid.into(),
                    request_id: "r".into(),
                    client_ip: "127.0.0.1".into(),
                    client_port: 1234,
                    protocol: "HTTP/1.1".into(),
                    timestamp: "2026-01-01T00:00:00Z".into(),
                    ..Default::default()
                },
                "GET",
                "/",
                Headers::from_iter([("host", "example.com")]),
            )),
            Event::RequestBodyChunk(RequestBodyChunkEvent(chunk.clone())),
            Event::ResponseHeaders(ResponseHeadersEvent {
                correlation_id: cid.into(),
                status: 404,
                headers: Headers::from_iter([("content-type", "text/plain")]),
            }),
            Event::ResponseBodyChunk(ResponseBodyChunkEvent(chunk)),
            complete(cid),
            Event::WebSocketFrame(WebSocketFrameEvent {
                correlation_id: cid.into(),
                opcode: WebSocketOpcode::Binary,
                data: bytes::Bytes::from_static(b"\x01\x02"),
                client_to_server: true,
                frame_index: 3,
                fin: true,
                route_id: None,
                client_ip: "127.0.0.1".into(),
            }),
            Event::GuardrailInspect(GuardrailInspectEvent {
                correlation_id: cid.into(),
                inspection_type: GuardrailInspectionType::PiiDetection,
                content: "my ssn is 000-00-0000".into(),
                ..Default::default()
            }),
            Event::Configure(ConfigureEvent {
                correlation_id: cid.into(),
                config: serde_json::json!({"rules": [1, 2]}),
                config_version: Some("v1".into()),
            }),
        ]
    }

    #[test]
    fn connection_can_move_between_threads() {
        fn assert_send<T: Send + 'static>() {}
        assert_send::<AgentConnection>();
        assert_send::<AgentEvent>();
    }

    #[test]
    fn handshake_negotiates_json() {
        let now = t0();
        let mut conn = AgentConnection::new(AgentConfig::default(), now);
        assert_eq!(conn.encoding(), None);
        assert!(!conn.is_established());
        conn.handle_input(now, &handshake_frame(&[2], &["json"]));
        let evs = events(&mut conn);
        let [AgentEvent::Established { negotiated, proxy }] = &evs[..] else {
            panic!("{evs:?}")
        };
        assert_eq!(negotiated.encoding, Encoding::Json);
        let proxy = proxy.as_ref().unwrap();
        assert_eq!(proxy.proxy_id, "test-proxy");
        assert_eq!(proxy.config, Some(serde_json::json!({"mode": "strict"})));
        let frames = transmitted(&mut conn);
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0].frame_type, FrameType::HandshakeResponse);
        let answer: HandshakeResponse = serde_json::from_slice(&frames[0].payload).unwrap();
        assert!(answer.success);
        assert_eq!(answer.encoding, "json");
        assert_eq!(conn.encoding(), Some(Encoding::Json));
        assert!(conn.is_established());
        assert_eq!(conn.poll_timeout(), None);
    }

    #[test]
    fn handshake_negotiates_msgpack_and_later_frames_use_it() {
        let now = t0();
        let mut conn = AgentConnection::new(AgentConfig::default(), now);
        // Handshake and a first event in the same read.
        let mut wire = handshake_frame(&[2], &["cbor", "msgpack", "json"]);
        wire.extend(event_frame(Encoding::MsgPack, &complete("m-1")));
        conn.handle_input(now, &wire);
        let evs = events(&mut conn);
        assert!(
            matches!(&evs[0], AgentEvent::Established { negotiated, .. } if negotiated.encoding == Encoding::MsgPack)
        );
        let AgentEvent::Request { id, event } = &evs[1] else {
            panic!("{evs:?}")
        };
        assert_eq!(event, &complete("m-1"));
        let answer: HandshakeResponse =
            serde_json::from_slice(&transmitted(&mut conn)[0].payload).unwrap();
        assert_eq!(answer.encoding, "msgpack");
        conn.respond(*id, AgentResponse::allow()).unwrap();
        let frames = transmitted(&mut conn);
        assert_ne!(frames[0].payload.first(), Some(&b'{'), "msgpack expected");
        let r: AgentResponse = decode_payload(
            FrameType::AgentResponse,
            Encoding::MsgPack,
            &frames[0].payload,
        )
        .unwrap();
        assert_eq!(r.correlation_id(), Some("m-1"));
    }

    #[test]
    fn version_mismatch_is_refused_then_closed() {
        let now = t0();
        let mut conn = AgentConnection::new(AgentConfig::default(), now);
        let mut wire = handshake_frame(&[1], &["json"]);
        wire.extend(event_frame(Encoding::Json, &complete("x"))); // never processed
        conn.handle_input(now, &wire);
        assert!(conn.is_closed());
        let frames = transmitted(&mut conn);
        assert_eq!(frames.len(), 1);
        let answer: HandshakeResponse = serde_json::from_slice(&frames[0].payload).unwrap();
        assert!(!answer.success);
        assert!(answer.error.is_some());
        let evs = events(&mut conn);
        assert!(matches!(
            &evs[..],
            [AgentEvent::Closed(ConnectionError::Handshake(
                HandshakeError::VersionMismatch { .. }
            ))]
        ));
        assert_eq!(conn.poll_event(), None);
    }

    #[test]
    fn wrong_first_frame_closes_without_answer() {
        for first in [
            event_frame(Encoding::Json, &complete("x")),
            raw_frame(0xF0, &[0; 64]),
            raw_frame(0x41, b"{}"),
        ] {
            let mut conn = AgentConnection::new(AgentConfig::default(), t0());
            // Only the header: refused before the payload arrives.
            conn.handle_input(t0(), &first[..FRAME_HEADER_LEN]);
            assert!(conn.is_closed());
            assert_eq!(conn.poll_transmit(), None);
            let evs = events(&mut conn);
            assert!(
                matches!(
                    &evs[..],
                    [AgentEvent::Closed(ConnectionError::Handshake(
                        HandshakeError::UnexpectedFrame { got, .. }
                    ))] if *got == first[4]
                ),
                "{evs:?}"
            );
        }
        let mut conn = AgentConnection::new(AgentConfig::default(), t0());
        conn.handle_input(t0(), &raw_frame(0x01, b"not json"));
        assert!(matches!(
            events(&mut conn)[..],
            [AgentEvent::Closed(ConnectionError::Handshake(
                HandshakeError::Malformed(_)
            ))]
        ));
        assert_eq!(conn.poll_transmit(), None);
    }

    #[test]
    fn handshake_timeout_closes() {
        let now = t0();
        let mut conn = AgentConnection::new(AgentConfig::default(), now);
        let deadline = conn.poll_timeout().unwrap();
        assert_eq!(deadline, now + Duration::from_secs(5));
        conn.handle_timeout(now + Duration::from_secs(4));
        assert!(!conn.is_closed());
        // Half a handshake does not stop the clock.
        let hs = handshake_frame(&[2], &["json"]);
        conn.handle_input(now + Duration::from_secs(4), &hs[..10]);
        conn.handle_timeout(deadline);
        assert!(matches!(
            events(&mut conn)[..],
            [AgentEvent::Closed(ConnectionError::Handshake(
                HandshakeError::Timeout(_)
            ))]
        ));
        assert_eq!(conn.poll_timeout(), None);
        // Late input is ignored.
        conn.handle_input(deadline, &hs[10..]);
        assert_eq!(conn.poll_event(), None);
        assert_eq!(conn.poll_transmit(), None);
    }

    #[test]
    fn every_event_type_is_a_request_answered_with_its_correlation_id() {
        for encoding in [Encoding::Json, Encoding::MsgPack] {
            let mut conn = established(encoding);
            for (i, sent) in every_event(&format!("cid-{encoding}"))
                .into_iter()
                .enumerate()
            {
                conn.handle_input(t0(), &event_frame(encoding, &sent));
                let evs = events(&mut conn);
                let [AgentEvent::Request { id, event }] = &evs[..] else {
                    panic!("{encoding} #{i}: {evs:?}")
                };
                assert_eq!(event, &sent, "{encoding} #{i}");
                assert_eq!(conn.in_flight(), 1);
                // The handler's own value is overwritten.
                let mut answer = AgentResponse::allow().with_correlation_id("wrong");
                answer
                    .audit
                    .custom
                    .insert("other".into(), serde_json::json!(1));
                conn.respond(*id, answer).unwrap();
                assert_eq!(conn.in_flight(), 0);
                let got = responses(&mut conn, encoding);
                assert_eq!(got.len(), 1);
                assert_eq!(got[0].correlation_id(), Some(sent.correlation_id()));
                assert_eq!(got[0].audit.custom["other"], 1);
                assert_eq!(got[0].decision, Decision::Allow);
            }
        }
    }

    #[test]
    fn out_of_order_answers_and_answer_exactly_once() {
        let mut conn = established(Encoding::Json);
        let mut wire = Vec::new();
        for cid in ["a", "b", "c"] {
            wire.extend(event_frame(Encoding::Json, &complete(cid)));
        }
        conn.handle_input(t0(), &wire);
        let ids: Vec<RequestId> = events(&mut conn)
            .into_iter()
            .map(|e| match e {
                AgentEvent::Request { id, .. } => id,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(ids.len(), 3);
        assert_eq!(conn.correlation_id(ids[1]), Some("b"));
        for &i in &[2, 0, 1] {
            conn.respond(ids[i], AgentResponse::block(403, "no"))
                .unwrap();
        }
        let got: Vec<String> = responses(&mut conn, Encoding::Json)
            .iter()
            .map(|r| r.correlation_id().unwrap().to_owned())
            .collect();
        assert_eq!(got, ["c", "a", "b"]);
        assert!(matches!(
            conn.respond(ids[0], AgentResponse::allow()),
            Err(RespondError::UnknownRequest(id)) if id == ids[0]
        ));
        assert!(matches!(
            conn.respond(999, AgentResponse::allow()),
            Err(RespondError::UnknownRequest(999))
        ));
        assert_eq!(conn.pending_transmit(), 0);
    }

    #[test]
    fn several_events_with_one_correlation_id_are_answered_separately() {
        let mut conn = established(Encoding::Json);
        let mut wire = Vec::new();
        for _ in 0..2 {
            wire.extend(event_frame(Encoding::Json, &complete("same")));
        }
        conn.handle_input(t0(), &wire);
        let ids: Vec<RequestId> = events(&mut conn)
            .into_iter()
            .filter_map(|e| match e {
                AgentEvent::Request { id, .. } => Some(id),
                _ => None,
            })
            .collect();
        assert_eq!(ids.len(), 2);
        assert_ne!(ids[0], ids[1]);
        conn.respond(ids[1], AgentResponse::allow()).unwrap();
        conn.respond(ids[0], AgentResponse::allow()).unwrap();
        assert_eq!(responses(&mut conn, Encoding::Json).len(), 2);
        assert!(conn.by_correlation.is_empty());
    }

    #[test]
    fn cancel_drops_the_request_and_its_answer() {
        // Cancel arrives as JSON even in a MessagePack session (reference proxy).
        let mut conn = established(Encoding::MsgPack);
        let mut wire = Vec::new();
        for cid in ["c1", "c1", "c2"] {
            wire.extend(event_frame(Encoding::MsgPack, &complete(cid)));
        }
        conn.handle_input(t0(), &wire);
        let ids: Vec<RequestId> = events(&mut conn)
            .into_iter()
            .filter_map(|e| match e {
                AgentEvent::Request { id, .. } => Some(id),
                _ => None,
            })
            .collect();
        conn.handle_input(t0(), &cancel_frame("c1", CancelReason::Timeout));
        let evs = events(&mut conn);
        assert_eq!(
            evs,
            vec![
                AgentEvent::Cancelled {
                    id: ids[0],
                    correlation_id: "c1".into(),
                    reason: CancelReason::Timeout
                },
                AgentEvent::Cancelled {
                    id: ids[1],
                    correlation_id: "c1".into(),
                    reason: CancelReason::Timeout
                },
            ]
        );
        assert_eq!(conn.in_flight(), 1);
        for id in &ids[..2] {
            assert!(matches!(
                conn.respond(*id, AgentResponse::allow()),
                Err(RespondError::UnknownRequest(_))
            ));
        }
        assert_eq!(conn.pending_transmit(), 0);
        // Unknown or repeated cancels are ignored.
        conn.handle_input(t0(), &cancel_frame("c1", CancelReason::Manual));
        conn.handle_input(t0(), &cancel_frame("nope", CancelReason::Manual));
        assert_eq!(conn.poll_event(), None);
        // A MessagePack cancel works too.
        let mut mp = BytesMut::new();
        encoding::encode_frame(
            &mut mp,
            FrameType::Cancel,
            Encoding::MsgPack,
            &Cancel {
                correlation_id: "c2".into(),
                reason: CancelReason::ClientDisconnect,
                timestamp_ms: 0,
            },
        )
        .unwrap();
        conn.handle_input(t0(), &mp);
        assert!(matches!(
            &events(&mut conn)[..],
            [AgentEvent::Cancelled { id, reason: CancelReason::ClientDisconnect, .. }] if *id == ids[2]
        ));
        assert_eq!(conn.in_flight(), 0);
        // A malformed cancel is a notice, not fatal.
        conn.handle_input(t0(), &raw_frame(0x40, b"{\"nope\":1}"));
        assert!(matches!(
            &events(&mut conn)[..],
            [AgentEvent::MalformedControl { .. }]
        ));
        assert!(conn.is_established());
    }

    #[test]
    fn ping_is_echoed_byte_for_byte_ahead_of_pending_requests() {
        for encoding in [Encoding::Json, Encoding::MsgPack] {
            let mut conn = established(encoding);
            conn.handle_input(t0(), &event_frame(encoding, &complete("slow")));
            assert_eq!(conn.in_flight(), 1);
            // Odd spacing and key order must survive: the bytes are echoed, not re-encoded.
            let payload = br#"{ "timestamp_ms":1750000000000 , "sequence":7}"#;
            conn.handle_input(t0(), &raw_frame(0x41, payload));
            let out = conn.poll_transmit().unwrap();
            assert_eq!(&out[..], &raw_frame(0x42, payload)[..]);
            // Even an empty or non-JSON payload is echoed.
            conn.handle_input(t0(), &raw_frame(0x41, b""));
            conn.handle_input(t0(), &raw_frame(0x41, b"\xff\x00"));
            let out = conn.poll_transmit().unwrap();
            let mut expected = raw_frame(0x42, b"");
            expected.extend(raw_frame(0x42, b"\xff\x00"));
            assert_eq!(&out[..], &expected[..]);
            assert_eq!(conn.in_flight(), 1);
        }
    }

    #[test]
    fn unknown_type_is_skipped_and_the_connection_lives_on() {
        let mut conn = established(Encoding::Json);
        let mut wire = raw_frame(0xF0, &[9; 300]);
        wire.extend(event_frame(Encoding::Json, &complete("after")));
        for chunk in wire.chunks(17) {
            conn.handle_input(t0(), chunk);
        }
        let evs = events(&mut conn);
        assert_eq!(evs[0], AgentEvent::FrameSkipped { type_byte: 0xF0 });
        let AgentEvent::Request { id, .. } = evs[1] else {
            panic!("{evs:?}")
        };
        conn.respond(id, AgentResponse::allow()).unwrap();
        assert_eq!(responses(&mut conn, Encoding::Json).len(), 1);
        assert_eq!(conn.frames_skipped(), 1);
    }

    #[test]
    fn frames_an_agent_never_expects_are_ignored() {
        let mut conn = established(Encoding::Json);
        for ty in [0x01, 0x02, 0x20, 0x30, 0x31, 0x32, 0x33, 0x42] {
            conn.handle_input(t0(), &raw_frame(ty, b"{}"));
            assert_eq!(
                events(&mut conn),
                vec![AgentEvent::Ignored {
                    frame_type: FrameType::from_byte(ty).unwrap()
                }]
            );
        }
        assert!(conn.is_established());
        assert_eq!(conn.pending_transmit(), 0);
    }

    fn assert_fail_closed(r: &AgentResponse, cid: &str, status: u16, reason: &str) {
        assert_eq!(r.correlation_id(), Some(cid));
        assert!(
            matches!(&r.decision, Decision::Block { status: s, .. } if *s == status),
            "{r:?}"
        );
        assert_eq!(r.audit.reason_codes, [reason]);
    }

    #[test]
    fn malformed_event_with_salvageable_id_is_blocked_never_allowed() {
        // JSON: right id, wrong shape.
        let mut conn = established(Encoding::Json);
        conn.handle_input(
            t0(),
            &raw_frame(0x10, br#"{"correlation_id":"bad-1","metadata":7}"#),
        );
        let evs = events(&mut conn);
        assert!(
            matches!(&evs[..], [AgentEvent::MalformedEvent { correlation_id, error }]
                if correlation_id == "bad-1" && error.frame_type == FrameType::RequestHeaders),
            "{evs:?}"
        );
        let got = responses(&mut conn, Encoding::Json);
        assert_fail_closed(&got[0], "bad-1", 500, MALFORMED_EVENT_REASON);
        assert_eq!(got[0].websocket_decision, None);
        assert_eq!(conn.in_flight(), 0);
        // Id only in metadata.
        conn.handle_input(
            t0(),
            &raw_frame(0x10, br#"{"metadata":{"correlation_id":"bad-2"},"uri":5}"#),
        );
        assert_fail_closed(
            &responses(&mut conn, Encoding::Json)[0],
            "bad-2",
            500,
            MALFORMED_EVENT_REASON,
        );
        // A WebSocket frame is closed, not forwarded.
        conn.handle_input(
            t0(),
            &raw_frame(0x15, br#"{"correlation_id":"ws","opcode":"bogus"}"#),
        );
        let got = responses(&mut conn, Encoding::Json);
        assert_fail_closed(&got[0], "ws", 500, MALFORMED_EVENT_REASON);
        assert!(matches!(
            got[0].websocket_decision,
            Some(WebSocketDecision::Close { code: 1011, .. })
        ));
        // MessagePack: a map with the id but a missing field.
        let mut conn = established(Encoding::MsgPack);
        let payload =
            rmp_serde::to_vec_named(&serde_json::json!({"correlation_id": "bad-3"})).unwrap();
        conn.handle_input(t0(), &raw_frame(0x12, &payload));
        assert_fail_closed(
            &responses(&mut conn, Encoding::MsgPack)[0],
            "bad-3",
            500,
            MALFORMED_EVENT_REASON,
        );
        // The reference's positional form, too short to be a body chunk.
        let payload = rmp_serde::to_vec(&("bad-4", 5)).unwrap();
        conn.handle_input(t0(), &raw_frame(0x11, &payload));
        assert_fail_closed(
            &responses(&mut conn, Encoding::MsgPack)[0],
            "bad-4",
            500,
            MALFORMED_EVENT_REASON,
        );
        assert!(conn.is_established());
    }

    #[test]
    fn undecodable_event_without_id_closes_the_connection() {
        let mut conn = established(Encoding::Json);
        conn.handle_input(t0(), &event_frame(Encoding::Json, &complete("pending")));
        let evs = events(&mut conn);
        let AgentEvent::Request { id, .. } = evs[0] else {
            panic!()
        };
        conn.handle_input(t0(), &raw_frame(0x11, b"not json at all"));
        let evs = events(&mut conn);
        assert!(
            matches!(&evs[..], [AgentEvent::Closed(ConnectionError::Malformed(e))] if e.frame_type == FrameType::RequestBodyChunk),
            "{evs:?}"
        );
        assert_eq!(conn.in_flight(), 0);
        assert!(matches!(
            conn.respond(id, AgentResponse::allow()),
            Err(RespondError::Closed(ConnectionError::Malformed(_)))
        ));
        assert_eq!(conn.pending_transmit(), 0);
    }

    #[test]
    fn overload_is_answered_at_once_and_never_tracked() {
        let config = AgentConfig {
            max_in_flight: 2,
            ..Default::default()
        };
        let mut conn = established_with(config, Encoding::Json);
        let mut wire = Vec::new();
        for cid in ["a", "b", "c"] {
            wire.extend(event_frame(Encoding::Json, &complete(cid)));
        }
        conn.handle_input(t0(), &wire);
        let evs = events(&mut conn);
        assert_eq!(evs.len(), 3);
        assert!(matches!(
            &evs[2],
            AgentEvent::Overloaded { correlation_id, frame_type: FrameType::RequestComplete } if correlation_id == "c"
        ));
        assert_eq!(conn.in_flight(), 2);
        let got = responses(&mut conn, Encoding::Json);
        assert_fail_closed(&got[0], "c", 503, AGENT_OVERLOADED_REASON);
        // Answering one frees a slot.
        let AgentEvent::Request { id, .. } = evs[0] else {
            panic!()
        };
        conn.respond(id, AgentResponse::allow()).unwrap();
        conn.handle_input(t0(), &event_frame(Encoding::Json, &complete("d")));
        assert!(matches!(
            &events(&mut conn)[..],
            [AgentEvent::Request { .. }]
        ));
        assert_eq!(conn.in_flight(), 2);
    }

    #[test]
    fn framing_errors_close_once_and_everything_after_is_refused() {
        let mut conn = established(Encoding::Json);
        conn.handle_input(t0(), &event_frame(Encoding::Json, &complete("x")));
        let AgentEvent::Request { id, .. } = conn.poll_event().unwrap() else {
            panic!()
        };
        conn.handle_input(t0(), &[0, 0, 0, 0, 0x41]);
        assert_eq!(
            events(&mut conn),
            vec![AgentEvent::Closed(ConnectionError::Frame(
                frame::FrameError::ZeroLength
            ))]
        );
        conn.handle_input(t0(), &event_frame(Encoding::Json, &complete("y")));
        conn.handle_eof();
        conn.handle_io_error("x".into());
        conn.close();
        assert_eq!(conn.poll_event(), None);
        assert!(matches!(
            conn.respond(id, AgentResponse::allow()),
            Err(RespondError::Closed(_))
        ));
        let health = HealthStatus {
            agent_id: "a".into(),
            state: HealthState::Healthy,
            message: None,
            timestamp_ms: 0,
        };
        assert!(matches!(
            conn.send_health(&health),
            Err(SendError::Closed(_))
        ));
        assert_eq!(conn.pending_transmit(), 0);
        assert!(conn.read_buffer().is_empty());

        let mut conn = established_with(
            AgentConfig {
                max_frame_len: 200,
                ..Default::default()
            },
            Encoding::Json,
        );
        conn.handle_input(t0(), &201u32.to_be_bytes());
        assert!(matches!(
            events(&mut conn)[..],
            [AgentEvent::Closed(ConnectionError::Frame(
                frame::FrameError::TooLarge { len: 201, max: 200 }
            ))]
        ));
    }

    #[test]
    fn eof_io_error_and_local_close() {
        for (close, expected) in [
            (0, ConnectionError::PeerClosed),
            (1, ConnectionError::Io("reset".into())),
            (2, ConnectionError::LocalClose),
        ] {
            let mut conn = established(Encoding::Json);
            conn.handle_input(t0(), &event_frame(Encoding::Json, &complete("x")));
            let AgentEvent::Request { id, .. } = conn.poll_event().unwrap() else {
                panic!()
            };
            match close {
                0 => conn.handle_eof(),
                1 => conn.handle_io_error("reset".into()),
                _ => conn.close(),
            }
            assert_eq!(
                events(&mut conn),
                vec![AgentEvent::Closed(expected.clone())]
            );
            assert_eq!(conn.close_reason(), Some(&expected));
            assert_eq!(conn.in_flight(), 0);
            assert!(matches!(
                conn.respond(id, AgentResponse::allow()),
                Err(RespondError::Closed(_))
            ));
            assert_eq!(conn.encoding(), Some(Encoding::Json));
        }
    }

    #[test]
    fn answers_queued_before_a_local_close_are_still_transmitted() {
        let mut conn = established(Encoding::Json);
        conn.handle_input(t0(), &event_frame(Encoding::Json, &complete("x")));
        let AgentEvent::Request { id, .. } = conn.poll_event().unwrap() else {
            panic!()
        };
        conn.respond(id, AgentResponse::allow()).unwrap();
        conn.close();
        assert_eq!(responses(&mut conn, Encoding::Json).len(), 1);
    }

    #[test]
    fn control_messages_are_sent_in_the_negotiated_encoding() {
        let mut conn = AgentConnection::new(AgentConfig::default(), t0());
        let flow = FlowControl {
            action: FlowAction::Pause,
            correlation_id: None,
            buffer_available: None,
            timestamp_ms: 1,
        };
        assert!(matches!(
            conn.send_flow_control(&flow),
            Err(SendError::NotEstablished)
        ));
        for encoding in [Encoding::Json, Encoding::MsgPack] {
            let mut conn = established(encoding);
            let health = HealthStatus {
                agent_id: "a".into(),
                state: HealthState::Draining,
                message: Some("bye".into()),
                timestamp_ms: 2,
            };
            let metrics = MetricsReport {
                agent_id: "a".into(),
                timestamp_ms: 3,
                interval_ms: 10,
                ..Default::default()
            };
            let config = ConfigUpdateRequest {
                update_type: crate::ConfigUpdateType::RequestReload,
                request_id: "u1".into(),
                timestamp_ms: 4,
            };
            conn.send_health(&health).unwrap();
            conn.send_flow_control(&flow).unwrap();
            conn.send_metrics(&metrics).unwrap();
            conn.send_config_update(&config).unwrap();
            let frames = transmitted(&mut conn);
            let types: Vec<u8> = frames.iter().map(|f| f.frame_type.as_byte()).collect();
            assert_eq!(types, [0x30, 0x33, 0x31, 0x32]);
            let h: HealthStatus =
                decode_payload(FrameType::HealthStatus, encoding, &frames[0].payload).unwrap();
            assert_eq!(h, health);
            let f: FlowControl =
                decode_payload(FrameType::FlowControl, encoding, &frames[1].payload).unwrap();
            assert_eq!(f, flow);
            let m: MetricsReport =
                decode_payload(FrameType::MetricsReport, encoding, &frames[2].payload).unwrap();
            assert_eq!(m, metrics);
            let c: ConfigUpdateRequest =
                decode_payload(FrameType::ConfigUpdateRequest, encoding, &frames[3].payload)
                    .unwrap();
            assert_eq!(c, config);
        }
    }

    #[test]
    fn reverse_connection_starts_established_and_zero_copy_input_works() {
        let mut conn = AgentConnection::new_established(AgentConfig::default(), Encoding::Json);
        assert_eq!(conn.poll_timeout(), None);
        assert!(matches!(
            conn.poll_event(),
            Some(AgentEvent::Established { proxy: None, negotiated }) if negotiated.encoding == Encoding::Json
        ));
        let wire = event_frame(Encoding::Json, &complete("rv-1"));
        assert_eq!(conn.read_hint(), FRAME_HEADER_LEN);
        conn.read_buffer().extend_from_slice(&wire[..7]);
        conn.process_input(t0());
        assert_eq!(conn.poll_event(), None);
        assert_eq!(conn.read_hint(), wire.len() - 7);
        conn.read_buffer().extend_from_slice(&wire[7..]);
        conn.process_input(t0());
        assert!(matches!(
            conn.poll_event(),
            Some(AgentEvent::Request { .. })
        ));
    }

    #[test]
    fn notices_are_bounded_when_nobody_polls() {
        let mut conn = established(Encoding::Json);
        let mut wire = Vec::new();
        for _ in 0..(MAX_QUEUED_NOTICES + 10) {
            wire.extend(raw_frame(0xEE, b""));
        }
        conn.handle_input(t0(), &wire);
        assert_eq!(conn.events.len(), MAX_QUEUED_NOTICES);
        assert_eq!(conn.notices_dropped(), 10);
        // Requests are never dropped.
        conn.handle_input(t0(), &event_frame(Encoding::Json, &complete("x")));
        assert_eq!(conn.events.len(), MAX_QUEUED_NOTICES + 1);
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn vectors() -> Vec<serde_json::Value> {
        let local = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/vectors/vectors.jsonl"
        );
        let text = std::fs::read_to_string(local).expect("tests/vectors/vectors.jsonl not found");
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn reference_proxy_vectors_become_requests() {
        let mut seen = 0;
        let mut requests: HashMap<String, (Encoding, RequestId)> = HashMap::new();
        for v in vectors() {
            if v["direction"] != "proxy_to_agent" {
                continue;
            }
            let type_byte = u8::from_str_radix(
                v["type_byte"].as_str().unwrap().trim_start_matches("0x"),
                16,
            )
            .unwrap();
            let session = Encoding::from_name(v["session_encoding"].as_str().unwrap()).unwrap();
            let frame = hex(v["frame_hex"].as_str().unwrap());
            let name = v["name"].as_str().unwrap();
            let mut conn = AgentConnection::new_established(AgentConfig::default(), session);
            conn.poll_event();
            match type_byte {
                0x10..=0x17 => {
                    let decoded: serde_json::Value =
                        serde_json::from_str(v["payload_decoded"].as_str().unwrap()).unwrap();
                    let expected = decoded
                        .get("correlation_id")
                        .or_else(|| decoded.get(0))
                        .and_then(|c| c.as_str())
                        .unwrap();
                    // Byte-at-a-time to exercise the incremental path too.
                    for b in &frame {
                        conn.handle_input(t0(), std::slice::from_ref(b));
                    }
                    let evs = events(&mut conn);
                    let [AgentEvent::Request { id, event }] = &evs[..] else {
                        panic!("{name} ({session}): {evs:?}")
                    };
                    assert_eq!(event.correlation_id(), expected, "{name} ({session})");
                    assert_eq!(event.frame_type().as_byte(), type_byte);
                    conn.respond(*id, AgentResponse::allow()).unwrap();
                    let got = responses(&mut conn, session);
                    assert_eq!(got[0].correlation_id(), Some(expected));
                    requests.insert(format!("{name}/{session}"), (session, *id));
                    seen += 1;
                }
                0x41 => {
                    conn.handle_input(t0(), &frame);
                    let out = conn.poll_transmit().unwrap();
                    assert_eq!(out[4], 0x42);
                    assert_eq!(&out[..4], &frame[..4]);
                    assert_eq!(&out[5..], &frame[5..], "{name} ({session})");
                }
                0x40 => {
                    // The reference's JSON cancel, in either session encoding.
                    conn.handle_input(t0(), &event_frame(session, &complete("rh-9")));
                    let Some(AgentEvent::Request { id, .. }) = conn.poll_event() else {
                        panic!()
                    };
                    conn.handle_input(t0(), &frame);
                    assert_eq!(
                        events(&mut conn),
                        vec![AgentEvent::Cancelled {
                            id,
                            correlation_id: "rh-9".into(),
                            reason: CancelReason::Timeout
                        }],
                        "{name} ({session})"
                    );
                }
                _ => {}
            }
        }
        assert!(seen >= 25, "only {seen} event vectors");
    }

    /// Pieces of input for the property tests: valid frames and garbage.
    #[derive(Clone, Debug)]
    enum Piece {
        Event(u8, u8),
        Malformed(u8, u8),
        Cancel(u8),
        Ping(Vec<u8>),
        Unknown(u8, Vec<u8>),
        Raw(u8, Vec<u8>),
        Bytes(Vec<u8>),
    }

    /// Well-framed input: events, salvageable malformed events, cancels, pings, unknown types.
    fn clean_piece() -> impl Strategy<Value = Piece> {
        prop_oneof![
            6 => (0u8..8, 0u8..6).prop_map(|(k, c)| Piece::Event(k, c)),
            1 => (0u8..8, 0u8..6).prop_map(|(k, c)| Piece::Malformed(k, c)),
            2 => (0u8..6).prop_map(Piece::Cancel),
            1 => prop::collection::vec(any::<u8>(), 0..16).prop_map(Piece::Ping),
            1 => (any::<u8>(), prop::collection::vec(any::<u8>(), 0..16))
                .prop_map(|(t, p)| Piece::Unknown(t, p)),
        ]
    }

    /// Anything: well-framed input, plus event frames with random payloads and raw bytes.
    fn piece() -> impl Strategy<Value = Piece> {
        prop_oneof![
            8 => clean_piece(),
            1 => (0x10u8..0x18, prop::collection::vec(any::<u8>(), 0..32))
                .prop_map(|(t, p)| Piece::Raw(t, p)),
            1 => prop::collection::vec(any::<u8>(), 0..24).prop_map(Piece::Bytes),
        ]
    }

    fn render(piece: &Piece, encoding: Encoding) -> Vec<u8> {
        match piece {
            Piece::Event(kind, cid) => {
                let events = every_event(&format!("p{cid}"));
                event_frame(encoding, &events[usize::from(*kind) % events.len()])
            }
            Piece::Malformed(kind, cid) => raw_frame(
                0x10 + kind % 8,
                format!(r#"{{"correlation_id":"p{cid}","metadata":7,"data":7,"status":"x"}}"#)
                    .as_bytes(),
            ),
            Piece::Cancel(cid) => cancel_frame(&format!("p{cid}"), CancelReason::Timeout),
            Piece::Ping(p) => raw_frame(0x41, p),
            Piece::Unknown(t, p) => {
                let t = if FrameType::from_byte(*t).is_some() {
                    0xEE
                } else {
                    *t
                };
                raw_frame(t, p)
            }
            Piece::Raw(t, p) => raw_frame(*t, p),
            Piece::Bytes(b) => b.clone(),
        }
    }

    fn encoding_strategy() -> impl Strategy<Value = Encoding> {
        prop_oneof![Just(Encoding::Json), Just(Encoding::MsgPack)]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        /// Arbitrary bytes (mixed with valid frames), split arbitrarily, after a valid
        /// handshake: no panic, the in-flight bound holds, output is always well framed.
        #[test]
        fn arbitrary_input_never_panics(
            encoding in encoding_strategy(),
            pieces in prop::collection::vec(piece(), 0..40),
            splits in prop::collection::vec(1usize..64, 1..20),
            max_in_flight in 0usize..5,
            respond_every in 1usize..4,
        ) {
            let config = AgentConfig { max_in_flight, ..Default::default() };
            let mut conn = established_with(config, encoding);
            let wire: Vec<u8> = pieces.iter().flat_map(|p| render(p, encoding)).collect();
            let mut rest = &wire[..];
            let mut step = 0;
            let mut closed_seen = 0;
            let mut answers = 0;
            let mut allows = 0;
            while !rest.is_empty() {
                let n = splits[step % splits.len()].min(rest.len());
                conn.handle_input(t0(), &rest[..n]);
                rest = &rest[n..];
                step += 1;
                prop_assert!(conn.in_flight() <= max_in_flight);
                while let Some(ev) = conn.poll_event() {
                    match ev {
                        AgentEvent::Request { id, .. } if step % respond_every == 0 => {
                            // A Request polled after the input that closed the connection can
                            // no longer be answered.
                            match conn.respond(id, AgentResponse::allow()) {
                                Ok(()) => answers += 1,
                                Err(RespondError::Closed(_)) => prop_assert!(conn.is_closed()),
                                // Its Cancel came in the same input and waits behind it.
                                Err(RespondError::UnknownRequest(_)) => {}
                                Err(e) => prop_assert!(false, "respond failed: {}", e),
                            }
                        }
                        AgentEvent::Closed(_) => closed_seen += 1,
                        _ => {}
                    }
                }
                if let Some(out) = conn.poll_transmit() {
                    let frames = decode_all(&out);
                    prop_assert!(frames.iter().all(|f| matches!(
                        f.frame_type,
                        FrameType::AgentResponse | FrameType::Pong
                    )));
                    for f in frames.iter().filter(|f| f.frame_type == FrameType::AgentResponse) {
                        let r: AgentResponse =
                            decode_payload(f.frame_type, encoding, &f.payload).unwrap();
                        prop_assert!(r.correlation_id().is_some());
                        if r.decision == Decision::Allow {
                            allows += 1;
                        }
                    }
                }
            }
            // Only explicit answers allow; every automatic answer blocks (fail-closed).
            prop_assert_eq!(allows, answers);
            conn.handle_eof();
            if conn.poll_event().is_some() {
                closed_seen += 1;
            }
            prop_assert_eq!(closed_seen, 1);
            prop_assert_eq!(conn.in_flight(), 0);
        }

        /// Arbitrary interleavings of input, answers and cancels: no request is answered
        /// twice, no cancelled request is answered, and every answer frame is accounted for.
        #[test]
        fn no_request_is_answered_twice(
            encoding in encoding_strategy(),
            ops in prop::collection::vec(
                prop_oneof![
                    3 => clean_piece().prop_map(Op::Input),
                    3 => (0usize..64).prop_map(Op::Respond),
                    1 => (0u8..6).prop_map(Op::Cancel),
                ],
                0..80,
            ),
        ) {
            let config = AgentConfig { max_in_flight: 3, ..Default::default() };
            let mut conn = established_with(config, encoding);
            let mut issued: Vec<RequestId> = Vec::new();
            let mut answered: HashSet<RequestId> = HashSet::new();
            let mut cancelled: HashSet<RequestId> = HashSet::new();
            let mut auto_answers = 0usize;
            let mut events_per_cid: HashMap<String, usize> = HashMap::new();
            let mut frames_per_cid: HashMap<String, usize> = HashMap::new();
            for op in ops {
                match op {
                    Op::Input(p) => conn.handle_input(t0(), &render(&p, encoding)),
                    Op::Cancel(c) => conn.handle_input(
                        t0(),
                        &cancel_frame(&format!("p{c}"), CancelReason::Manual),
                    ),
                    Op::Respond(i) => {
                        if issued.is_empty() {
                            continue;
                        }
                        let id = issued[i % issued.len()];
                        let before = conn.pending_transmit();
                        match conn.respond(id, AgentResponse::allow()) {
                            Ok(()) => {
                                prop_assert!(answered.insert(id), "answered {} twice", id);
                                prop_assert!(!cancelled.contains(&id));
                            }
                            Err(_) => prop_assert_eq!(conn.pending_transmit(), before),
                        }
                    }
                }
                while let Some(ev) = conn.poll_event() {
                    match ev {
                        AgentEvent::Request { id, event } => {
                            prop_assert!(!issued.contains(&id));
                            issued.push(id);
                            *events_per_cid.entry(event.correlation_id().to_owned()).or_default() += 1;
                        }
                        AgentEvent::Cancelled { id, .. } => {
                            prop_assert!(!answered.contains(&id));
                            prop_assert!(cancelled.insert(id));
                        }
                        AgentEvent::MalformedEvent { correlation_id, .. }
                        | AgentEvent::Overloaded { correlation_id, .. } => {
                            auto_answers += 1;
                            *events_per_cid.entry(correlation_id).or_default() += 1;
                        }
                        _ => {}
                    }
                }
                prop_assert!(conn.in_flight() <= 3);
                if let Some(out) = conn.poll_transmit() {
                    for f in decode_all(&out) {
                        if f.frame_type == FrameType::AgentResponse {
                            let r: AgentResponse =
                                decode_payload(f.frame_type, encoding, &f.payload).unwrap();
                            let cid = r.audit.custom[CORRELATION_KEY].as_str().unwrap().to_owned();
                            *frames_per_cid.entry(cid).or_default() += 1;
                        }
                    }
                }
            }
            // Well-framed input never kills the connection.
            prop_assert!(conn.is_established());
            let total_frames: usize = frames_per_cid.values().sum();
            prop_assert_eq!(total_frames, answered.len() + auto_answers);
            for (cid, n) in &frames_per_cid {
                prop_assert!(*n <= events_per_cid.get(cid).copied().unwrap_or(0), "cid {}", cid);
            }
        }
    }

    #[derive(Clone, Debug)]
    enum Op {
        Input(Piece),
        Respond(usize),
        Cancel(u8),
    }

    // ----- message transport mode (gRPC) ---------------------------------------------------

    fn grpc_handshake(versions: &[u32]) -> AgentIncoming {
        AgentIncoming::Handshake(HandshakeRequest {
            supported_versions: versions.to_vec(),
            proxy_id: "grpc-proxy".into(),
            proxy_version: "0".into(),
            config: Some(serde_json::json!({"k": 1})),
            supported_encodings: vec!["msgpack".into(), "json".into()],
        })
    }

    fn messages(conn: &mut AgentConnection) -> Vec<AgentOutgoing> {
        std::iter::from_fn(|| conn.poll_message()).collect()
    }

    fn message_established(config: AgentConfig) -> AgentConnection {
        let mut conn = AgentConnection::new_messages(config, t0());
        assert!(conn.is_message_transport());
        conn.handle_message(t0(), grpc_handshake(&[2, 1]));
        let out = messages(&mut conn);
        let [AgentOutgoing::Handshake(answer)] = &out[..] else {
            panic!("{out:?}")
        };
        assert!(answer.success);
        // The nominal encoding of a message transport is JSON, whatever the proxy offered.
        assert_eq!(answer.encoding, "json");
        let evs = events(&mut conn);
        assert!(
            matches!(&evs[..], [AgentEvent::Established { proxy: Some(p), .. }] if p.proxy_id == "grpc-proxy"),
            "{evs:?}"
        );
        conn
    }

    fn answered(out: &[AgentOutgoing]) -> Vec<(&str, &AgentResponse)> {
        out.iter()
            .map(|m| match m {
                AgentOutgoing::Response {
                    correlation_id,
                    response,
                } => (correlation_id.as_str(), response),
                other => panic!("not a response: {other:?}"),
            })
            .collect()
    }

    #[test]
    fn messages_every_event_is_answered_with_the_id_beside_and_audit_untouched() {
        let mut conn = message_established(AgentConfig::default());
        for event in every_event("m-1") {
            conn.handle_message(t0(), AgentIncoming::Event(event));
        }
        let evs = events(&mut conn);
        assert_eq!(evs.len(), 8);
        assert_eq!(conn.in_flight(), 8);
        // Answer in reverse order; the handler's own custom values are left exactly as set,
        // including a `correlation_id` key that framed transports would overwrite.
        for ev in evs.iter().rev() {
            let AgentEvent::Request { id, event } = ev else {
                panic!("{ev:?}")
            };
            let mut r = AgentResponse::block(403, "no");
            r.audit
                .custom
                .insert(CORRELATION_KEY.into(), serde_json::json!("handler's own"));
            r.audit.custom.insert(
                "kind".into(),
                serde_json::json!(format!("{:?}", event.kind())),
            );
            conn.respond(*id, r).unwrap();
        }
        let out = messages(&mut conn);
        let got = answered(&out);
        assert_eq!(got.len(), 8);
        for (cid, r) in got {
            assert_eq!(cid, "m-1");
            assert_eq!(r.audit.custom[CORRELATION_KEY], "handler's own");
            assert_eq!(r.audit.custom.len(), 2);
        }
        assert_eq!(conn.in_flight(), 0);
        // Framed output stays empty on a message transport.
        assert!(conn.poll_transmit().is_none());
    }

    #[test]
    fn messages_events_before_the_handshake_get_an_error_answer_not_silence() {
        let mut conn = AgentConnection::new_messages(AgentConfig::default(), t0());
        conn.handle_message(t0(), AgentIncoming::Event(complete("early")));
        conn.handle_message(
            t0(),
            AgentIncoming::Ping(Ping {
                sequence: 7,
                timestamp_ms: 9,
            }),
        );
        let out = messages(&mut conn);
        assert_eq!(out.len(), 2);
        let [(cid, r)] = &answered(&out[..1])[..] else {
            panic!()
        };
        assert_eq!(*cid, "early");
        assert_eq!(
            r.decision,
            Decision::block(500, Some("event before the handshake".into()))
        );
        assert_eq!(r.audit.reason_codes, [HANDSHAKE_REQUIRED_REASON]);
        assert_eq!(
            out[1],
            AgentOutgoing::Pong(Ping {
                sequence: 7,
                timestamp_ms: 9
            })
        );
        assert!(events(&mut conn).is_empty());
        assert_eq!(conn.in_flight(), 0);
        // The handshake is still accepted afterwards.
        conn.handle_message(t0(), grpc_handshake(&[2]));
        assert!(conn.is_established());
    }

    #[test]
    fn messages_version_mismatch_is_refused_and_closes() {
        let mut conn = AgentConnection::new_messages(AgentConfig::default(), t0());
        conn.handle_message(t0(), grpc_handshake(&[1]));
        let out = messages(&mut conn);
        let [AgentOutgoing::Handshake(answer)] = &out[..] else {
            panic!("{out:?}")
        };
        assert!(!answer.success);
        assert!(answer
            .error
            .as_deref()
            .unwrap_or("")
            .contains("unsupported"));
        assert!(conn.is_closed());
        assert!(matches!(
            &events(&mut conn)[..],
            [AgentEvent::Closed(ConnectionError::Handshake(
                HandshakeError::VersionMismatch { .. }
            ))]
        ));
        conn.handle_message(t0(), AgentIncoming::Event(complete("x")));
        assert!(messages(&mut conn).is_empty());
    }

    #[test]
    fn messages_handshake_deadline_and_second_handshake() {
        let mut conn = AgentConnection::new_messages(AgentConfig::default(), t0());
        let late = t0() + Duration::from_secs(6);
        conn.handle_message(late, grpc_handshake(&[2]));
        assert!(conn.is_closed());
        assert!(messages(&mut conn).is_empty());

        let mut conn = message_established(AgentConfig::default());
        conn.handle_message(t0(), grpc_handshake(&[2]));
        assert!(matches!(
            &events(&mut conn)[..],
            [AgentEvent::Ignored {
                frame_type: FrameType::HandshakeRequest
            }]
        ));
        assert!(messages(&mut conn).is_empty());
        assert!(conn.is_established());
    }

    #[test]
    fn messages_cancel_drops_the_request_and_its_answer() {
        let mut conn = message_established(AgentConfig::default());
        conn.handle_message(t0(), AgentIncoming::Event(complete("c1")));
        conn.handle_message(t0(), AgentIncoming::Event(complete("c2")));
        let evs = events(&mut conn);
        conn.handle_message(
            t0(),
            AgentIncoming::Cancel(Cancel {
                correlation_id: "c1".into(),
                reason: CancelReason::Timeout,
                timestamp_ms: 0,
            }),
        );
        let AgentEvent::Request { id: first, .. } = evs[0] else {
            panic!()
        };
        let AgentEvent::Request { id: second, .. } = evs[1] else {
            panic!()
        };
        assert!(matches!(
            &events(&mut conn)[..],
            [AgentEvent::Cancelled { id, reason: CancelReason::Timeout, .. }] if *id == first
        ));
        assert!(matches!(
            conn.respond(first, AgentResponse::allow()),
            Err(RespondError::UnknownRequest(_))
        ));
        conn.respond(second, AgentResponse::allow()).unwrap();
        let out = messages(&mut conn);
        assert_eq!(
            answered(&out).iter().map(|a| a.0).collect::<Vec<_>>(),
            ["c2"]
        );
    }

    #[test]
    fn messages_malformed_events_fail_closed_or_close() {
        let mut conn = message_established(AgentConfig::default());
        conn.handle_message(
            t0(),
            AgentIncoming::MalformedEvent {
                correlation_id: Some("bad".into()),
                kind: EventKind::WebSocketFrame,
                error: "status out of range".into(),
            },
        );
        let out = messages(&mut conn);
        let [(cid, r)] = &answered(&out)[..] else {
            panic!("{out:?}")
        };
        assert_eq!(*cid, "bad");
        assert_eq!(r.audit.reason_codes, [MALFORMED_EVENT_REASON]);
        assert!(matches!(
            r.websocket_decision,
            Some(WebSocketDecision::Close { code: 1011, .. })
        ));
        assert!(matches!(
            &events(&mut conn)[..],
            [AgentEvent::MalformedEvent { correlation_id, error }]
                if correlation_id == "bad" && error.frame_type == FrameType::WebSocketFrame
        ));
        conn.handle_message(
            t0(),
            AgentIncoming::MalformedEvent {
                correlation_id: None,
                kind: EventKind::RequestHeaders,
                error: "no id".into(),
            },
        );
        assert!(conn.is_closed());
        assert!(matches!(
            &events(&mut conn)[..],
            [AgentEvent::Closed(ConnectionError::Malformed(_))]
        ));
    }

    #[test]
    fn messages_overload_and_control_messages() {
        let config = AgentConfig {
            max_in_flight: 1,
            ..Default::default()
        };
        let mut conn = message_established(config);
        conn.handle_message(t0(), AgentIncoming::Event(complete("a")));
        conn.handle_message(t0(), AgentIncoming::Event(complete("b")));
        let out = messages(&mut conn);
        let [(cid, r)] = &answered(&out)[..] else {
            panic!("{out:?}")
        };
        assert_eq!(*cid, "b");
        assert_fail_closed_untagged(r, 503, AGENT_OVERLOADED_REASON);
        events(&mut conn);

        let health = HealthStatus {
            agent_id: "a".into(),
            state: HealthState::Degraded,
            message: None,
            timestamp_ms: 1,
        };
        let flow = FlowControl {
            action: FlowAction::UpdateCapacity,
            correlation_id: Some("a".into()),
            buffer_available: Some(10),
            timestamp_ms: 2,
        };
        let metrics = MetricsReport {
            agent_id: "a".into(),
            ..Default::default()
        };
        let update = ConfigUpdateRequest {
            update_type: crate::ConfigUpdateType::RequestReload,
            request_id: "r".into(),
            timestamp_ms: 3,
        };
        conn.send_health(&health).unwrap();
        conn.send_flow_control(&flow).unwrap();
        conn.send_metrics(&metrics).unwrap();
        conn.send_config_update(&update).unwrap();
        assert_eq!(
            messages(&mut conn),
            [
                AgentOutgoing::Health(health),
                AgentOutgoing::FlowControl(flow),
                AgentOutgoing::Metrics(metrics),
                AgentOutgoing::ConfigUpdate(update),
            ]
        );
        assert!(conn.poll_transmit().is_none());
        // Framed input means nothing to a message connection, and messages nothing to a framed
        // one.
        conn.handle_input(t0(), &event_frame(Encoding::Json, &complete("z")));
        assert!(events(&mut conn).is_empty());
        let mut framed = established(Encoding::Json);
        framed.handle_message(t0(), AgentIncoming::Event(complete("z")));
        assert!(events(&mut framed).is_empty());
        assert!(framed.poll_message().is_none());
    }

    fn assert_fail_closed_untagged(r: &AgentResponse, status: u16, reason: &str) {
        assert!(matches!(r.decision, Decision::Block { status: s, .. } if s == status));
        assert_eq!(r.audit.reason_codes, [reason]);
        assert!(r.audit.custom.is_empty());
    }

    // ----- events the application never sees: over the header limits, no correlation id ------

    fn many_headers(cid: &str, names: usize) -> Event {
        let headers: crate::Headers = (0..names).map(|i| (format!("h{i}"), "v")).collect();
        Event::ResponseHeaders(crate::ResponseHeadersEvent {
            correlation_id: cid.into(),
            status: 200,
            headers,
        })
    }

    fn tight() -> AgentConfig {
        AgentConfig {
            header_limits: HeaderLimits {
                max_count: 4,
                max_bytes: 1024,
            },
            ..AgentConfig::default()
        }
    }

    #[test]
    fn events_over_the_header_limits_are_answered_431_in_both_encodings() {
        for encoding in [Encoding::Json, Encoding::MsgPack] {
            let mut conn = established_with(tight(), encoding);
            let mut wire = event_frame(encoding, &many_headers("big", 5));
            wire.extend(event_frame(encoding, &many_headers("ok", 4)));
            conn.handle_input(t0(), &wire);
            let evs = events(&mut conn);
            assert!(
                matches!(&evs[..], [
                    AgentEvent::MalformedEvent { correlation_id, error },
                    AgentEvent::Request { .. },
                ] if correlation_id == "big" && error.limit.is_some()),
                "{encoding}: {evs:?}"
            );
            let got = responses(&mut conn, encoding);
            assert_fail_closed(&got[0], "big", 431, HEADER_LIMIT_REASON);
            assert_eq!(
                conn.in_flight(),
                1,
                "only the event within the limits is tracked"
            );
        }
    }

    fn configure(cid: &str, entries: usize) -> Event {
        let config: serde_json::Map<String, serde_json::Value> =
            (0..entries).map(|i| (format!("k{i}"), i.into())).collect();
        Event::Configure(crate::ConfigureEvent {
            correlation_id: cid.into(),
            config: config.into(),
            config_version: None,
        })
    }

    #[test]
    fn events_over_the_element_budget_are_answered_413_in_both_encodings() {
        // A Configure event has 3 top-level entries plus its config's.
        let config = AgentConfig {
            max_elements: 10,
            ..AgentConfig::default()
        };
        for encoding in [Encoding::Json, Encoding::MsgPack] {
            let mut conn = established_with(config.clone(), encoding);
            let mut wire = event_frame(encoding, &configure("big", 8));
            wire.extend(event_frame(encoding, &configure("ok", 7)));
            conn.handle_input(t0(), &wire);
            let evs = events(&mut conn);
            assert!(
                matches!(&evs[..], [
                    AgentEvent::MalformedEvent { correlation_id, error },
                    AgentEvent::Request { .. },
                ] if correlation_id == "big"
                    && error.limit == Some(LimitExceeded::Elements { max: 10 })),
                "{encoding}: {evs:?}"
            );
            let got = responses(&mut conn, encoding);
            assert_eq!(got.len(), 1, "{encoding}: only the refusal is answered yet");
            assert_fail_closed(&got[0], "big", 413, MESSAGE_TOO_COMPLEX_REASON);
            assert_eq!(
                conn.in_flight(),
                1,
                "only the event within budget is tracked"
            );
        }
    }

    #[test]
    fn an_event_without_a_correlation_id_is_blocked_never_handed_over() {
        for encoding in [Encoding::Json, Encoding::MsgPack] {
            let mut conn = established(encoding);
            conn.handle_input(t0(), &event_frame(encoding, &complete("")));
            let evs = events(&mut conn);
            assert!(
                matches!(&evs[..], [AgentEvent::MalformedEvent { correlation_id, .. }] if correlation_id.is_empty()),
                "{encoding}: {evs:?}"
            );
            let got = responses(&mut conn, encoding);
            assert_fail_closed(&got[0], "", 500, MALFORMED_EVENT_REASON);
            assert_eq!(conn.in_flight(), 0);
        }
    }

    #[test]
    fn message_transports_apply_the_same_refusals() {
        let mut conn = message_established(tight());
        conn.handle_message(t0(), AgentIncoming::Event(many_headers("big", 5)));
        conn.handle_message(t0(), AgentIncoming::Event(complete("")));
        conn.handle_message(t0(), AgentIncoming::Event(many_headers("ok", 4)));
        let out = messages(&mut conn);
        let got = answered(&out);
        assert_eq!(got.len(), 2, "{out:?}");
        assert_eq!(got[0].0, "big");
        assert!(matches!(
            got[0].1.decision,
            Decision::Block { status: 431, .. }
        ));
        assert_eq!(got[0].1.audit.reason_codes, [HEADER_LIMIT_REASON]);
        assert_eq!(got[1].0, "");
        assert!(matches!(
            got[1].1.decision,
            Decision::Block { status: 500, .. }
        ));
        let evs = events(&mut conn);
        assert!(
            matches!(evs.last(), Some(AgentEvent::Request { event, .. }) if event.correlation_id() == "ok"),
            "{evs:?}"
        );
        assert_eq!(conn.in_flight(), 1);
    }

    fn body_chunk(cid: &str, len: usize) -> Event {
        Event::RequestBodyChunk(RequestBodyChunkEvent(BodyChunk {
            correlation_id: cid.into(),
            data: vec![0xab; len].into(),
            ..Default::default()
        }))
    }

    fn request_ids(evs: &[AgentEvent]) -> Vec<RequestId> {
        evs.iter()
            .filter_map(|e| match e {
                AgentEvent::Request { id, .. } => Some(*id),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn in_flight_bytes_count_admitted_payloads_until_answered_or_cancelled() {
        for encoding in [Encoding::Json, Encoding::MsgPack] {
            let mut conn = established(encoding);
            assert_eq!(conn.in_flight_bytes(), 0);
            let frames: Vec<Vec<u8>> = ["a", "b", "c"]
                .iter()
                .zip([1000, 20_000, 300])
                .map(|(cid, len)| event_frame(encoding, &body_chunk(cid, len)))
                .collect();
            let payload = |i: usize| frames[i].len() - FRAME_HEADER_LEN;
            let mut expected = 0;
            let mut ids = Vec::new();
            for (i, frame) in frames.iter().enumerate() {
                conn.handle_input(t0(), frame);
                ids.extend(request_ids(&events(&mut conn)));
                expected += payload(i);
                assert_eq!(
                    conn.in_flight_bytes(),
                    expected,
                    "{encoding} after admit #{i}"
                );
            }
            // The payload carries the body at least once (base64 in JSON).
            assert!(payload(1) > 20_000);

            conn.respond(ids[1], AgentResponse::allow()).unwrap();
            expected -= payload(1);
            assert_eq!(conn.in_flight_bytes(), expected, "{encoding} after respond");
            // A second answer for the same request changes nothing.
            assert!(conn.respond(ids[1], AgentResponse::allow()).is_err());
            assert_eq!(conn.in_flight_bytes(), expected);

            conn.handle_input(t0(), &cancel_frame("a", CancelReason::Timeout));
            assert!(matches!(
                events(&mut conn)[..],
                [AgentEvent::Cancelled { .. }]
            ));
            expected -= payload(0);
            assert_eq!(conn.in_flight_bytes(), expected, "{encoding} after cancel");
            // Cancelling it again, or an unknown id, changes nothing.
            conn.handle_input(t0(), &cancel_frame("a", CancelReason::Timeout));
            conn.handle_input(t0(), &cancel_frame("zz", CancelReason::Timeout));
            assert_eq!(conn.in_flight_bytes(), expected);
            assert_eq!(expected, payload(2));

            conn.handle_eof();
            assert_eq!(conn.in_flight_bytes(), 0, "{encoding} after close");
            assert_eq!(conn.in_flight(), 0);
        }
    }

    #[test]
    fn refused_events_weigh_nothing() {
        let config = AgentConfig {
            max_in_flight: 1,
            ..AgentConfig::default()
        };
        let mut conn = established_with(config, Encoding::Json);
        let first = event_frame(Encoding::Json, &body_chunk("kept", 5000));
        conn.handle_input(t0(), &first);
        let held = conn.in_flight_bytes();
        assert_eq!(held, first.len() - FRAME_HEADER_LEN);
        // Over max_in_flight (answered 503), malformed (500), unknown type: none is tracked.
        conn.handle_input(
            t0(),
            &event_frame(Encoding::Json, &body_chunk("over", 5000)),
        );
        conn.handle_input(
            t0(),
            &raw_frame(0x11, br#"{"correlation_id":"bad","data":7}"#),
        );
        conn.handle_input(t0(), &raw_frame(0x7e, &[0; 5000]));
        assert_eq!(conn.in_flight_bytes(), held);
        assert_eq!(responses(&mut conn, Encoding::Json).len(), 2);
    }

    #[test]
    fn a_local_close_or_an_unencodable_answer_releases_the_bytes() {
        let mut conn = established(Encoding::Json);
        conn.handle_input(t0(), &event_frame(Encoding::Json, &body_chunk("a", 100)));
        conn.handle_input(t0(), &event_frame(Encoding::Json, &body_chunk("b", 100)));
        let ids = request_ids(&events(&mut conn));
        let one = conn.in_flight_bytes() / 2;
        // An answer too large for a frame is replaced by a block and stops counting too.
        let mut huge = AgentResponse::allow();
        huge.audit.custom.insert(
            "pad".into(),
            serde_json::Value::String("x".repeat(MAX_FRAME_LEN as usize)),
        );
        assert!(matches!(
            conn.respond(ids[0], huge),
            Err(RespondError::Encode(_))
        ));
        assert_eq!(conn.in_flight_bytes(), one);
        conn.close();
        assert_eq!(conn.in_flight_bytes(), 0);
    }

    #[test]
    fn message_transports_weigh_events_by_their_contents() {
        let mut conn = message_established(AgentConfig::default());
        conn.handle_message(t0(), AgentIncoming::Event(body_chunk("c1", 10_000)));
        let mut guard = GuardrailInspectEvent {
            correlation_id: "c2".into(),
            content: "x".repeat(3000),
            ..Default::default()
        };
        guard.categories = vec!["pii".into(); 10];
        conn.handle_message(t0(), AgentIncoming::Event(Event::GuardrailInspect(guard)));
        let config = serde_json::json!({"rules": "y".repeat(2000)});
        conn.handle_message(
            t0(),
            AgentIncoming::Event(Event::Configure(ConfigureEvent {
                correlation_id: "c3".into(),
                config,
                config_version: None,
            })),
        );
        conn.handle_message(t0(), AgentIncoming::Event(many_headers("c4", 100)));
        let ids = request_ids(&events(&mut conn));
        assert_eq!(ids.len(), 4);
        let mut weights = Vec::new();
        let mut before = conn.in_flight_bytes();
        for id in ids {
            conn.respond(id, AgentResponse::allow()).unwrap();
            weights.push(before - conn.in_flight_bytes());
            before = conn.in_flight_bytes();
        }
        assert_eq!(before, 0);
        assert!((10_000..10_100).contains(&weights[0]), "{weights:?}");
        assert!((3030..3100).contains(&weights[1]), "{weights:?}");
        assert!((2000..2100).contains(&weights[2]), "{weights:?}");
        let (_, header_bytes) = many_headers("c4", 100).header_load();
        assert!(
            weights[3] >= header_bytes && header_bytes > 0,
            "{weights:?}"
        );
    }
}
