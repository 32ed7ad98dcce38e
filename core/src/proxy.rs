//! The proxy side of one agent connection, as a Sans-IO state machine.
//!
//! A [`ProxyConnection`] is fed the bytes read from the socket ([`ProxyConnection::handle_input`])
//! and the time ([`ProxyConnection::handle_timeout`]); it is drained of the bytes to write
//! ([`ProxyConnection::poll_transmit`]), of what happened ([`ProxyConnection::poll_event`]) and of
//! its next deadline ([`ProxyConnection::poll_timeout`]). Callers submit events with
//! [`ProxyConnection::send_event`] and get a [`RequestId`]; every accepted request later yields
//! exactly one [`ProxyEvent::Response`] or [`ProxyEvent::Failed`] for that id.
//!
//! What it enforces (`docs/protocol.md` says where the reference proxy differs):
//! answers routed by `audit.custom.correlation_id` in any order; per-request deadlines; cancel;
//! pings on idle connections and dead-peer detection; the agent's flow control (pause/resume per
//! connection or request, byte credit); the agent's `max_concurrency` and `max_body_size`; body
//! chunk sequencing; and on connection loss every pending request fails at once.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use agent_protocol_core::proxy::{ProxyConfig, ProxyConnection, ProxyEvent};
//! use agent_protocol_core::*;
//!
//! let now = Instant::now();
//! let mut conn = ProxyConnection::new(ProxyConfig::default(), now);
//! let hello = conn.poll_transmit().unwrap(); // the 0x01 handshake frame
//! assert_eq!(hello[4], 0x01);
//!
//! // The agent answers the handshake choosing JSON.
//! let answer = serde_json::json!({"protocol_version": 2, "capabilities": {}, "success": true, "encoding": "json"});
//! let mut wire = bytes::BytesMut::new();
//! agent_protocol_core::encoding::encode_frame(&mut wire, frame::FrameType::HandshakeResponse, Encoding::Json, &answer).unwrap();
//! conn.handle_input(now, &wire);
//! assert!(matches!(conn.poll_event(), Some(ProxyEvent::Connected(_))));
//!
//! let meta = RequestMetadata { correlation_id: "c1".into(), ..Default::default() };
//! let event = Event::RequestHeaders(RequestHeadersEvent::new(meta, "GET", "/", Headers::new()));
//! let id = conn.send_event(now, event, None).unwrap();
//! assert_eq!(conn.in_flight(), 1);
//! conn.handle_timeout(now + Duration::from_secs(31));
//! match conn.poll_event() {
//!     Some(ProxyEvent::Failed { id: failed, error: RequestError::Timeout(_), .. }) => assert_eq!(failed, id),
//!     other => panic!("{other:?}"),
//! }
//! assert_eq!(conn.in_flight(), 0);
//! ```

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use serde::de::IgnoredAny;
use serde::Deserialize;

use crate::body_sequence::{BodySequencer, Direction};
use crate::capabilities::{Capabilities, EventKind};
use crate::control::{
    Cancel, CancelReason, ConfigUpdateRequest, FlowAction, FlowControl, HealthStatus,
    MetricsReport, Ping,
};
use crate::encoding::{self, DecodeError, Encoding};
use crate::error::{ConnectionError, RequestError, SubmitError};
use crate::event::Event;
use crate::frame::{Decoded, Frame, FrameDecoder, FrameType, MAX_FRAME_LEN};
use crate::handshake::{Negotiated, ProxyHandshake, ProxyHandshakeConfig};
use crate::response::{AgentResponse, Decision};
use crate::HealthState;

/// Identifies one submitted request on one connection.
pub type RequestId = u64;

/// Proxy-side connection settings.
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    /// Handshake settings (ids, encodings offered, timeout).
    pub handshake: ProxyHandshakeConfig,
    /// Default per-request deadline, counted from submission.
    pub request_timeout: Duration,
    /// Ping a connection after this long without hearing from the agent; `None` (or zero)
    /// disables.
    pub ping_interval: Option<Duration>,
    /// After a ping, how long to wait for any sign of life before declaring the peer dead.
    pub ping_timeout: Duration,
    /// Our own cap on requests in flight (the agent's `max_concurrency` may lower it).
    pub max_in_flight: u32,
    /// Cap on queued, unsent output; beyond it submissions fail with `SendBufferFull`.
    pub max_send_buffer: usize,
    /// Cap on requests with a tracked body stream (and per-request flow state).
    pub max_body_streams: usize,
    /// Idle body streams are forgotten after this long.
    pub body_stream_ttl: Duration,
    /// Largest frame accepted from the agent.
    pub max_frame_len: u32,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            handshake: ProxyHandshakeConfig::default(),
            request_timeout: Duration::from_secs(30),
            ping_interval: Some(Duration::from_secs(10)),
            ping_timeout: Duration::from_secs(5),
            max_in_flight: 1024,
            max_send_buffer: 32 * 1024 * 1024,
            max_body_streams: 10_000,
            body_stream_ttl: Duration::from_secs(300),
            max_frame_len: MAX_FRAME_LEN,
        }
    }
}

/// What the connection reports.
// Responses are the common case; boxing them would add an allocation per answer.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum ProxyEvent {
    /// The handshake finished.
    Connected(Negotiated),
    /// A request got its answer.
    Response {
        /// The request.
        id: RequestId,
        /// Its correlation id.
        correlation_id: Arc<str>,
        /// The agent's answer.
        response: AgentResponse,
    },
    /// A request ended without an answer.
    Failed {
        /// The request.
        id: RequestId,
        /// Its correlation id.
        correlation_id: Arc<str>,
        /// Why.
        error: RequestError,
    },
    /// The agent sent a flow-control signal (already applied).
    FlowControl(FlowControl),
    /// The agent reported its health (already applied, see [`ProxyConnection::health`]).
    Health(HealthStatus),
    /// The agent reported metrics.
    Metrics(MetricsReport),
    /// The agent asked for a configuration change.
    ConfigUpdate(ConfigUpdateRequest),
    /// A ping was answered.
    Pong {
        /// Ping sequence number.
        sequence: u64,
        /// Round-trip time.
        rtt: Duration,
    },
    /// An answer arrived for no pending request (typically one that already timed out).
    UnroutableResponse {
        /// The id it carried.
        correlation_id: String,
    },
    /// A frame was skipped or ignored; the connection goes on.
    Notice(Notice),
    /// The connection ended; emitted once, after every pending request's `Failed`.
    Closed(ConnectionError),
}

/// A typed message from the agent, for transports that frame and encode messages themselves
/// (gRPC); see [`ProxyConnection::handle_message`].
// Responses and events dominate; boxing them would cost an allocation per message.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum Incoming {
    /// The handshake answer.
    Handshake(crate::handshake::HandshakeResponse),
    /// An answer, with the correlation id the transport carries beside it.
    Response {
        /// The request it answers.
        correlation_id: String,
        /// The answer.
        response: AgentResponse,
    },
    /// Health report.
    Health(HealthStatus),
    /// Flow-control signal.
    FlowControl(FlowControl),
    /// Metrics report.
    Metrics(MetricsReport),
    /// Configuration update request.
    ConfigUpdate(ConfigUpdateRequest),
    /// Answer to a ping.
    Pong(Ping),
    /// An answer the transport could not decode, for the request with this correlation id:
    /// that request fails with [`RequestError::MalformedResponse`] (an unknown id is counted as
    /// unroutable). The connection lives on.
    MalformedResponse {
        /// The request it was for.
        correlation_id: String,
        /// What was wrong.
        error: DecodeError,
    },
}

/// A typed message for the agent, drained with [`ProxyConnection::poll_message`] on
/// message transports.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum Outgoing {
    /// The handshake request.
    Handshake(crate::handshake::HandshakeRequest),
    /// An event.
    Event(Event),
    /// A cancel.
    Cancel(Cancel),
    /// A ping.
    Ping(Ping),
}

/// Non-fatal oddities, reported for logging and counters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Notice {
    /// A frame with an unknown type byte was skipped.
    FrameSkipped {
        /// The type byte.
        type_byte: u8,
    },
    /// A control frame (health, metrics, flow control, config update, pong) did not decode.
    ControlFrameIgnored {
        /// Its type.
        frame_type: FrameType,
        /// What was wrong.
        error: String,
    },
    /// A frame an agent should not send (an event, a second handshake...).
    UnexpectedFrame {
        /// Its type.
        frame_type: FrameType,
    },
}

/// Lifecycle of the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectionState {
    /// Waiting for the agent's handshake answer.
    Handshaking,
    /// Carrying requests.
    Open,
    /// Ended.
    Closed,
}

/// Counters of one connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProxyStats {
    /// Requests accepted by `send_event`.
    pub requests: u64,
    /// Answers delivered.
    pub responses: u64,
    /// Requests that timed out.
    pub timeouts: u64,
    /// Requests cancelled.
    pub cancels: u64,
    /// Requests failed for other reasons (closed connection, malformed answer).
    pub failures: u64,
    /// Answers for no pending request.
    pub unroutable: u64,
    /// Unknown frames skipped.
    pub frames_skipped: u64,
    /// Control frames that did not decode.
    pub control_ignored: u64,
    /// Pause signals received.
    pub pauses: u64,
}

#[derive(Debug)]
struct Pending {
    id: RequestId,
    deadline: Instant,
    timeout: Duration,
    /// What the event was: whether its answer can end the request depends on it.
    kind: EventKind,
}

#[derive(Debug, Default, Clone, Copy)]
struct RequestFlow {
    paused: bool,
    credit: Option<u64>,
}

#[derive(Debug, Default)]
struct FlowState {
    paused: bool,
    credit: Option<u64>,
    requests: HashMap<String, RequestFlow>,
}

#[derive(Debug)]
struct PingState {
    next_sequence: u64,
    outstanding: Option<(u64, Instant)>,
    last_received: Instant,
}

#[derive(Debug)]
enum State {
    Handshaking(ProxyHandshake),
    Open,
    Closed,
}

/// The proxy side of one connection. See the [module docs](self).
#[derive(Debug)]
pub struct ProxyConnection {
    config: ProxyConfig,
    state: State,
    encoding: Encoding,
    capabilities: Option<Capabilities>,
    decoder: FrameDecoder,
    read_buf: BytesMut,
    out: BytesMut,
    pending: HashMap<Arc<str>, Pending>,
    deadlines: BTreeMap<(Instant, RequestId), Arc<str>>,
    next_id: RequestId,
    events: VecDeque<ProxyEvent>,
    flow: FlowState,
    health: HealthState,
    bodies: BodySequencer,
    ping: PingState,
    next_housekeeping: Instant,
    unix_base: (Instant, u64),
    stats: ProxyStats,
    closed_emitted: bool,
    close_reason: Option<ConnectionError>,
    /// `Some` on message transports: what to send, typed, instead of bytes in `out`.
    outgoing: Option<VecDeque<Outgoing>>,
}

impl ProxyConnection {
    /// A connection that starts with the UDS handshake (its 0x01 frame is queued).
    pub fn new(config: ProxyConfig, now: Instant) -> Self {
        let mut conn = Self::blank(config, now);
        match ProxyHandshake::start(&conn.config.handshake, now, &mut conn.out) {
            Ok(hs) => conn.state = State::Handshaking(hs),
            // Our own configuration (proxy id, encodings) could not be encoded: our fault.
            Err(e) => conn.close_with(ConnectionError::Encode(e)),
        }
        conn
    }

    /// A connection over a transport that frames and encodes messages itself (gRPC): the
    /// handshake request is queued as [`Outgoing::Handshake`]; feed the agent's messages with
    /// [`ProxyConnection::handle_message`] and drain ours with [`ProxyConnection::poll_message`].
    /// Every other behaviour (deadlines, flow control, sequencing, ...) is the same.
    pub fn new_messages(config: ProxyConfig, now: Instant) -> Self {
        let mut conn = Self::blank(config, now);
        let (hs, request) = ProxyHandshake::start_request(&conn.config.handshake, now);
        conn.outgoing = Some(VecDeque::from([Outgoing::Handshake(request)]));
        conn.state = State::Handshaking(hs);
        conn
    }

    /// The next message to send on a message transport.
    pub fn poll_message(&mut self) -> Option<Outgoing> {
        self.outgoing.as_mut()?.pop_front()
    }

    /// A connection whose setup already happened elsewhere: a reverse connection after
    /// registration (JSON), or a test harness.
    pub fn new_established(config: ProxyConfig, negotiated: Negotiated, now: Instant) -> Self {
        let mut conn = Self::blank(config, now);
        conn.open(negotiated, false);
        conn
    }

    fn blank(mut config: ProxyConfig, now: Instant) -> Self {
        // A zero interval would ping (and, with a zero timeout, declare the peer dead) in the
        // same instant: read it as "no pings", the only sensible meaning.
        if config.ping_interval == Some(Duration::ZERO) {
            config.ping_interval = None;
        }
        // Likewise a housekeeping period of zero would spin.
        config.body_stream_ttl = config.body_stream_ttl.max(Duration::from_millis(4));
        Self {
            decoder: FrameDecoder::with_max_frame_len(config.max_frame_len),
            bodies: BodySequencer::new(config.max_body_streams),
            next_housekeeping: now + config.body_stream_ttl,
            config,
            state: State::Closed,
            encoding: Encoding::Json,
            capabilities: None,
            read_buf: BytesMut::new(),
            out: BytesMut::new(),
            pending: HashMap::new(),
            deadlines: BTreeMap::new(),
            next_id: 1,
            events: VecDeque::new(),
            flow: FlowState::default(),
            health: HealthState::Healthy,
            ping: PingState {
                next_sequence: 0,
                outstanding: None,
                last_received: now,
            },
            unix_base: (now, 0),
            stats: ProxyStats::default(),
            closed_emitted: false,
            close_reason: None,
            outgoing: None,
        }
    }

    /// Tells the connection the wall-clock time (Unix ms) at instant `now`, so the timestamps it
    /// puts in Cancel and Ping are real times. Without it they count from the connection's start.
    pub fn set_unix_time(&mut self, now: Instant, unix_ms: u64) {
        self.unix_base = (now, unix_ms);
    }

    fn unix_ms(&self, now: Instant) -> u64 {
        let (base, ms) = self.unix_base;
        ms.saturating_add(now.saturating_duration_since(base).as_millis() as u64)
    }

    fn open(&mut self, negotiated: Negotiated, announce: bool) {
        self.encoding = negotiated.encoding;
        self.capabilities = Some(negotiated.capabilities.clone());
        self.state = State::Open;
        if announce {
            self.events.push_back(ProxyEvent::Connected(negotiated));
        }
    }

    // ----- accessors -------------------------------------------------------------------------

    /// Lifecycle state.
    pub fn state(&self) -> ConnectionState {
        match self.state {
            State::Handshaking(_) => ConnectionState::Handshaking,
            State::Open => ConnectionState::Open,
            State::Closed => ConnectionState::Closed,
        }
    }

    /// Whether requests can be submitted (open, not paused).
    pub fn is_accepting(&self) -> bool {
        matches!(self.state, State::Open) && !self.flow.paused
    }

    /// Negotiated encoding.
    pub fn encoding(&self) -> Encoding {
        self.encoding
    }

    /// The agent's capabilities, once known.
    pub fn capabilities(&self) -> Option<&Capabilities> {
        self.capabilities.as_ref()
    }

    /// Health as last reported by the agent (Healthy until it says otherwise).
    pub fn health(&self) -> HealthState {
        self.health
    }

    /// Whether the agent paused the whole connection.
    pub fn is_paused(&self) -> bool {
        self.flow.paused
    }

    /// Requests awaiting an answer.
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// The id of the request awaiting an answer under this correlation id, if any.
    pub fn pending_id(&self, correlation_id: &str) -> Option<RequestId> {
        self.pending.get(correlation_id).map(|p| p.id)
    }

    /// Requests with tracked body state.
    pub fn body_streams(&self) -> usize {
        self.bodies.len()
    }

    /// The effective in-flight limit: ours, lowered by the agent's `max_concurrency`.
    pub fn in_flight_limit(&self) -> u32 {
        let agent = self
            .capabilities
            .as_ref()
            .map(|c| c.limits.max_concurrency)
            .filter(|n| *n > 0)
            .unwrap_or(u32::MAX);
        self.config.max_in_flight.min(agent)
    }

    /// Counters.
    pub fn stats(&self) -> ProxyStats {
        self.stats
    }

    // ----- input -----------------------------------------------------------------------------

    /// Feeds bytes read from the socket.
    pub fn handle_input(&mut self, now: Instant, data: &[u8]) {
        if matches!(self.state, State::Closed) {
            return;
        }
        self.read_buf.extend_from_slice(data);
        self.process_input(now);
    }

    /// The read buffer, for adapters that read straight into it; call
    /// [`ProxyConnection::process_input`] afterwards.
    pub fn read_buffer(&mut self) -> &mut BytesMut {
        &mut self.read_buf
    }

    /// Processes every complete frame in the read buffer.
    pub fn process_input(&mut self, now: Instant) {
        if !self.read_buf.is_empty() {
            self.ping.last_received = now;
        }
        loop {
            if matches!(self.state, State::Closed) {
                self.read_buf.clear();
                return;
            }
            match self.decoder.decode(&mut self.read_buf) {
                Ok(Some(Decoded::Frame(frame))) => self.handle_frame(now, frame),
                Ok(Some(Decoded::Skipped { type_byte, .. })) => {
                    self.stats.frames_skipped += 1;
                    self.events
                        .push_back(ProxyEvent::Notice(Notice::FrameSkipped { type_byte }));
                }
                Ok(None) => return,
                Err(e) => {
                    self.close_with(ConnectionError::Frame(e));
                    return;
                }
            }
        }
    }

    /// The peer closed its end.
    pub fn handle_eof(&mut self) {
        self.close_with(ConnectionError::PeerClosed);
    }

    /// The transport failed: `error` says how (usually [`ConnectionError::Io`], with its kind).
    pub fn handle_io_error(&mut self, error: ConnectionError) {
        self.close_with(error);
    }

    /// Closes the connection from our side; pending requests fail at once.
    pub fn close(&mut self) {
        self.close_with(ConnectionError::LocalClose);
    }

    fn handle_frame(&mut self, now: Instant, frame: Frame) {
        if let State::Handshaking(hs) = &self.state {
            match hs.handle_frame(&frame) {
                Ok(negotiated) => self.open(negotiated, true),
                Err(e) => self.close_with(ConnectionError::Handshake(e)),
            }
            return;
        }
        let incoming = match frame.frame_type {
            FrameType::AgentResponse => return self.on_response_payload(frame.payload),
            FrameType::HealthStatus => self.decode_control(&frame).map(Incoming::Health),
            FrameType::FlowControl => self.decode_control(&frame).map(Incoming::FlowControl),
            FrameType::MetricsReport => self.decode_control(&frame).map(Incoming::Metrics),
            FrameType::ConfigUpdateRequest => {
                self.decode_control(&frame).map(Incoming::ConfigUpdate)
            }
            FrameType::Pong => self.decode_control(&frame).map(Incoming::Pong),
            other => {
                self.events
                    .push_back(ProxyEvent::Notice(Notice::UnexpectedFrame {
                        frame_type: other,
                    }));
                None
            }
        };
        if let Some(incoming) = incoming {
            self.handle_incoming(now, incoming);
        }
    }

    /// Feeds one typed message from the agent: the input of a connection created with
    /// [`ProxyConnection::new_messages`] (gRPC), whose transport does its own framing and
    /// encoding. Framed connections decode their bytes into the same messages internally.
    pub fn handle_message(&mut self, now: Instant, message: Incoming) {
        self.ping.last_received = now;
        if matches!(self.state, State::Closed) {
            return;
        }
        if let State::Handshaking(hs) = &self.state {
            match message {
                Incoming::Handshake(response) => match hs.handle_response(response, false) {
                    Ok(negotiated) => self.open(negotiated, true),
                    Err(e) => self.close_with(ConnectionError::Handshake(e)),
                },
                _ => self.close_with(ConnectionError::Handshake(
                    crate::handshake::HandshakeError::Malformed(
                        "expected the handshake answer first".into(),
                    ),
                )),
            }
            return;
        }
        self.handle_incoming(now, message);
    }

    fn handle_incoming(&mut self, now: Instant, incoming: Incoming) {
        match incoming {
            Incoming::Handshake(_) => {
                self.events
                    .push_back(ProxyEvent::Notice(Notice::UnexpectedFrame {
                        frame_type: FrameType::HandshakeResponse,
                    }))
            }
            Incoming::Response {
                correlation_id,
                response,
            } => self.route_response(&correlation_id, response),
            Incoming::Health(h) => {
                self.health = h.state;
                self.events.push_back(ProxyEvent::Health(h));
            }
            Incoming::FlowControl(signal) => {
                self.apply_flow_control(&signal);
                self.events.push_back(ProxyEvent::FlowControl(signal));
            }
            Incoming::MalformedResponse {
                correlation_id,
                error,
            } => match self.pending.remove_entry(correlation_id.as_str()) {
                Some((cid, p)) => self.fail_malformed(cid, p, error),
                None => self.unroutable(correlation_id),
            },
            Incoming::Metrics(m) => self.events.push_back(ProxyEvent::Metrics(m)),
            Incoming::ConfigUpdate(c) => self.events.push_back(ProxyEvent::ConfigUpdate(c)),
            Incoming::Pong(p) => {
                if let Some((seq, sent)) = self.ping.outstanding {
                    if seq == p.sequence {
                        self.ping.outstanding = None;
                        self.events.push_back(ProxyEvent::Pong {
                            sequence: seq,
                            rtt: now.saturating_duration_since(sent),
                        });
                    }
                }
            }
        }
    }

    fn route_response(&mut self, correlation_id: &str, response: AgentResponse) {
        match self.pending.remove_entry(correlation_id) {
            Some(found) => self.deliver(found, response),
            None => self.unroutable(correlation_id.to_owned()),
        }
    }

    fn deliver(&mut self, (cid, p): (Arc<str>, Pending), response: AgentResponse) {
        self.deadlines.remove(&(p.deadline, p.id));
        if ends_request(p.kind, &response) {
            self.release_request(&cid);
        }
        self.stats.responses += 1;
        self.events.push_back(ProxyEvent::Response {
            id: p.id,
            correlation_id: cid,
            response,
        });
    }

    fn unroutable(&mut self, correlation_id: String) {
        self.stats.unroutable += 1;
        self.events
            .push_back(ProxyEvent::UnroutableResponse { correlation_id });
    }

    fn decode_control<'a, T: Deserialize<'a>>(&mut self, frame: &'a Frame) -> Option<T> {
        match encoding::decode_payload(frame.frame_type, self.encoding, &frame.payload) {
            Ok(v) => Some(v),
            Err(e) => {
                self.stats.control_ignored += 1;
                self.events
                    .push_back(ProxyEvent::Notice(Notice::ControlFrameIgnored {
                        frame_type: frame.frame_type,
                        error: e.message,
                    }));
                None
            }
        }
    }

    fn on_response_payload(&mut self, payload: Bytes) {
        let decoded: Result<AgentResponse, DecodeError> =
            encoding::decode_payload(FrameType::AgentResponse, self.encoding, &payload);
        match decoded {
            Ok(response) => {
                let found = self
                    .pending
                    .remove_entry(response.correlation_id().unwrap_or(""));
                match found {
                    Some(found) => self.deliver(found, response),
                    None => {
                        let cid = response.correlation_id().unwrap_or("").to_owned();
                        self.unroutable(cid);
                    }
                }
            }
            Err(error) => {
                // Fail just the request it was for, when we can tell which; otherwise the
                // stream can no longer be trusted to route answers, so end it (every pending
                // request fails at once instead of waiting out its timeout).
                let cid = salvage_response_id(self.encoding, &payload);
                match cid.and_then(|c| self.pending.remove_entry(c.as_str())) {
                    Some((cid, p)) => self.fail_malformed(cid, p, error),
                    None => self.close_with(ConnectionError::Malformed(error)),
                }
            }
        }
    }

    fn fail_malformed(&mut self, cid: Arc<str>, p: Pending, error: DecodeError) {
        self.deadlines.remove(&(p.deadline, p.id));
        self.release_request(&cid);
        self.stats.failures += 1;
        self.events.push_back(ProxyEvent::Failed {
            id: p.id,
            correlation_id: cid,
            error: RequestError::MalformedResponse(error),
        });
    }

    fn apply_flow_control(&mut self, signal: &FlowControl) {
        match &signal.correlation_id {
            None => match signal.action {
                FlowAction::Pause => {
                    self.flow.paused = true;
                    self.stats.pauses += 1;
                }
                FlowAction::Resume => {
                    self.flow.paused = false;
                    self.flow.credit = None;
                }
                FlowAction::UpdateCapacity => {
                    if let Some(bytes) = signal.buffer_available {
                        self.flow.credit = Some(bytes);
                    }
                }
            },
            Some(cid) => {
                let len = self.flow.requests.len();
                let entry = match self.flow.requests.get_mut(cid.as_str()) {
                    Some(e) => e,
                    // Bounded: past the cap a per-request signal is applied connection-wide,
                    // which is conservative for pause and harmless for resume.
                    None if len >= self.config.max_body_streams => {
                        let mut wide = signal.clone();
                        wide.correlation_id = None;
                        return self.apply_flow_control(&wide);
                    }
                    None => self.flow.requests.entry(cid.clone()).or_default(),
                };
                match signal.action {
                    FlowAction::Pause => {
                        entry.paused = true;
                        self.stats.pauses += 1;
                    }
                    FlowAction::Resume => {
                        entry.paused = false;
                        entry.credit = None;
                    }
                    FlowAction::UpdateCapacity => {
                        if let Some(bytes) = signal.buffer_available {
                            entry.credit = Some(bytes);
                        }
                    }
                }
            }
        }
    }

    // ----- commands --------------------------------------------------------------------------

    /// Submits an event. `timeout` overrides the configured request timeout. On success the
    /// frame is queued and exactly one `Response` or `Failed` will follow for the returned id.
    /// On error nothing was queued or tracked.
    pub fn send_event(
        &mut self,
        now: Instant,
        mut event: Event,
        timeout: Option<Duration>,
    ) -> Result<RequestId, SubmitError> {
        match &self.state {
            State::Open => {}
            State::Handshaking(_) => return Err(SubmitError::NotReady),
            State::Closed => {
                return Err(SubmitError::Closed(
                    self.close_reason
                        .clone()
                        .unwrap_or(ConnectionError::LocalClose),
                ))
            }
        }
        let cid = event.correlation_id();
        if cid.is_empty() {
            return Err(SubmitError::EmptyCorrelationId);
        }
        if self.pending.contains_key(cid) {
            return Err(SubmitError::DuplicateCorrelationId(cid.to_owned()));
        }
        if self.flow.paused {
            return Err(SubmitError::FlowControlPaused {
                correlation_id: None,
            });
        }
        let limit = self.in_flight_limit();
        if self.pending.len() >= limit as usize {
            return Err(SubmitError::TooManyInFlight { limit });
        }
        if self.out.len() > self.config.max_send_buffer {
            return Err(SubmitError::SendBufferFull {
                buffered: self.out.len(),
                limit: self.config.max_send_buffer,
            });
        }
        let body = self.admit_body(now, &mut event)?;
        if self.outgoing.is_none() {
            encoding::encode_event(&mut self.out, self.encoding, &event)?;
        }

        // Committed: from here on the request is tracked and will end exactly once.
        if let Some((direction, index, len, is_last, total)) = body {
            let cid = event.correlation_id();
            self.bodies
                .commit(cid, direction, index, len, is_last, total, now);
            self.consume_credit(cid, len as u64);
        }
        let kind = event.kind();
        let cid: Arc<str> = match self.outgoing.as_mut() {
            Some(queue) => {
                let cid = Arc::from(event.correlation_id());
                queue.push_back(Outgoing::Event(event));
                cid
            }
            None => Arc::from(take_correlation_id(event)),
        };
        if kind == EventKind::RequestComplete {
            self.release_request(&cid);
        }
        let id = self.next_id;
        self.next_id += 1;
        let timeout = timeout.unwrap_or(self.config.request_timeout);
        let deadline = now + timeout;
        self.deadlines.insert((deadline, id), cid.clone());
        self.pending.insert(
            cid,
            Pending {
                id,
                deadline,
                timeout,
                kind,
            },
        );
        self.stats.requests += 1;
        Ok(id)
    }

    /// Checks a body chunk against flow control, limits and sequencing, and fills in its running
    /// byte count. Returns what to commit once the frame is queued.
    #[allow(clippy::type_complexity)]
    fn admit_body(
        &self,
        now: Instant,
        event: &mut Event,
    ) -> Result<Option<(Direction, u32, usize, bool, Option<u64>)>, SubmitError> {
        let (direction, chunk) = match event {
            Event::RequestBodyChunk(e) => (Direction::Request, &mut e.0),
            Event::ResponseBodyChunk(e) => (Direction::Response, &mut e.0),
            _ => return Ok(None),
        };
        let len = chunk.data.len() as u64;
        let request_flow = self.flow.requests.get(chunk.correlation_id.as_str());
        if request_flow.is_some_and(|f| f.paused) {
            return Err(SubmitError::FlowControlPaused {
                correlation_id: Some(chunk.correlation_id.clone()),
            });
        }
        for credit in [self.flow.credit, request_flow.and_then(|f| f.credit)]
            .into_iter()
            .flatten()
        {
            if len > credit {
                return Err(SubmitError::InsufficientCredit {
                    needed: len,
                    available: credit,
                });
            }
        }
        let admitted = self
            .bodies
            .check(
                &chunk.correlation_id,
                direction,
                chunk.chunk_index,
                chunk.data.len(),
                chunk.is_last,
                chunk.total_size,
                now,
            )
            .map_err(|e| match e {
                Ok(seq) => SubmitError::BodyOutOfSequence(seq),
                Err(full) => SubmitError::TooManyStreams(full.0),
            })?;
        if direction == Direction::Request {
            let limit = self
                .capabilities
                .as_ref()
                .map(|c| c.limits.max_body_size)
                .unwrap_or(0);
            if limit > 0 && admitted.bytes_transferred > limit {
                return Err(SubmitError::BodyTooLarge {
                    total: admitted.bytes_transferred,
                    limit,
                });
            }
        }
        chunk.bytes_transferred = admitted.bytes_transferred;
        Ok(Some((
            direction,
            chunk.chunk_index,
            chunk.data.len(),
            chunk.is_last,
            chunk.total_size,
        )))
    }

    fn consume_credit(&mut self, cid: &str, len: u64) {
        if let Some(c) = self.flow.credit.as_mut() {
            *c = c.saturating_sub(len);
        }
        if let Some(c) = self
            .flow
            .requests
            .get_mut(cid)
            .and_then(|f| f.credit.as_mut())
        {
            *c = c.saturating_sub(len);
        }
    }

    /// The one place a request's per-request state goes: its body streams (both directions)
    /// and its flow-control entry. Every way a request ends on this side calls it: RequestComplete
    /// sent, a final block/redirect/challenge delivered, timeout, cancel, malformed answer, and
    /// [`ProxyConnection::end_request`] for ends only the caller knows about (a close drops the
    /// whole tables at once). Returns whether anything was held.
    fn release_request(&mut self, cid: &str) -> bool {
        let had_body = self.bodies.forget(cid);
        let had_flow = self.flow.requests.remove(cid).is_some();
        had_body || had_flow
    }

    /// Ends the request with this correlation id on this connection: its body streams and
    /// per-request flow-control state are dropped now rather than at the idle expiry
    /// ([`ProxyConfig::body_stream_ttl`]). Call it when a request stops early without a
    /// RequestComplete event (the proxy answered the client itself, the client went away, an
    /// upstream error...). Requests ended by a final answer, a timeout, a cancel or
    /// RequestComplete need no call: those release their state themselves. An event of the
    /// request still awaiting its answer is unaffected (see [`ProxyConnection::cancel`]); a
    /// later body chunk starts a new stream at index 0. Returns whether anything was held.
    ///
    /// ```
    /// # use std::time::Instant;
    /// # use agent_protocol_core::proxy::{ProxyConfig, ProxyConnection};
    /// # use agent_protocol_core::handshake::{Negotiated, PROTOCOL_VERSION};
    /// # use agent_protocol_core::*;
    /// # let now = Instant::now();
    /// # let negotiated = Negotiated { encoding: Encoding::Json, capabilities: Capabilities::new("a", "a", "1").with_all_events(), protocol_version: PROTOCOL_VERSION };
    /// let mut conn = ProxyConnection::new_established(ProxyConfig::default(), negotiated, now);
    /// let chunk = BodyChunk { correlation_id: "c1".into(), data: bytes::Bytes::from_static(b"abc"), ..Default::default() };
    /// conn.send_event(now, Event::RequestBodyChunk(RequestBodyChunkEvent(chunk)), None).unwrap();
    /// assert_eq!(conn.body_streams(), 1);
    /// assert!(conn.end_request("c1"));
    /// assert_eq!(conn.body_streams(), 0);
    /// ```
    pub fn end_request(&mut self, correlation_id: &str) -> bool {
        self.release_request(correlation_id)
    }

    /// Cancels the pending request with this correlation id: the agent is told (0x40, JSON, as
    /// the reference proxy sends it) and the request fails at once with `Cancelled`. Returns
    /// whether a request was pending.
    pub fn cancel(&mut self, now: Instant, correlation_id: &str, reason: CancelReason) -> bool {
        let Some((cid, p)) = self.pending.remove_entry(correlation_id) else {
            // Cancelled between two events: nothing to fail or tell the agent, but the request
            // is over all the same.
            self.release_request(correlation_id);
            return false;
        };
        self.deadlines.remove(&(p.deadline, p.id));
        self.queue_cancel(now, &cid, reason);
        self.release_request(&cid);
        self.stats.cancels += 1;
        self.events.push_back(ProxyEvent::Failed {
            id: p.id,
            correlation_id: cid,
            error: RequestError::Cancelled(reason),
        });
        true
    }

    fn queue_cancel(&mut self, now: Instant, cid: &str, reason: CancelReason) {
        let cancel = Cancel {
            correlation_id: cid.to_owned(),
            reason,
            timestamp_ms: self.unix_ms(now),
        };
        match self.outgoing.as_mut() {
            Some(queue) => queue.push_back(Outgoing::Cancel(cancel)),
            None => {
                // Cannot fail for this plain struct; if it did, the request still ends here.
                let _ = encoding::encode_frame(
                    &mut self.out,
                    FrameType::Cancel,
                    Encoding::Json,
                    &cancel,
                );
            }
        }
    }

    /// Sends a ping now (JSON, as the reference proxy does). Returns its sequence number, or
    /// `None` if the connection is not open or a ping is already outstanding.
    pub fn ping(&mut self, now: Instant) -> Option<u64> {
        if !matches!(self.state, State::Open) || self.ping.outstanding.is_some() {
            return None;
        }
        let sequence = self.ping.next_sequence;
        let ping = Ping {
            sequence,
            timestamp_ms: self.unix_ms(now),
        };
        match self.outgoing.as_mut() {
            Some(queue) => queue.push_back(Outgoing::Ping(ping)),
            None => encoding::encode_frame(&mut self.out, FrameType::Ping, Encoding::Json, &ping)
                .ok()?,
        }
        self.ping.next_sequence += 1;
        self.ping.outstanding = Some((sequence, now));
        Some(sequence)
    }

    // ----- time ------------------------------------------------------------------------------

    /// Processes every deadline at or before `now`: handshake, request timeouts (each fails and
    /// the agent is told to cancel), pings and dead-peer detection, idle body streams.
    pub fn handle_timeout(&mut self, now: Instant) {
        match &self.state {
            State::Closed => return,
            State::Handshaking(hs) => {
                if let Err(e) = hs.handle_timeout(now) {
                    self.close_with(ConnectionError::Handshake(e));
                }
                return;
            }
            State::Open => {}
        }
        while let Some(entry) = self.deadlines.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let ((_, id), cid) = entry.remove_entry();
            let timeout = self
                .pending
                .remove(&cid)
                .map(|p| p.timeout)
                .unwrap_or_default();
            self.queue_cancel(now, &cid, CancelReason::Timeout);
            self.release_request(&cid);
            self.stats.timeouts += 1;
            self.events.push_back(ProxyEvent::Failed {
                id,
                correlation_id: cid,
                error: RequestError::Timeout(timeout),
            });
        }
        if let Some(interval) = self.config.ping_interval {
            match self.ping.outstanding {
                Some((_, sent)) if self.ping.last_received < sent => {
                    if now >= sent + self.config.ping_timeout {
                        self.close_with(ConnectionError::PingTimeout(self.config.ping_timeout));
                        return;
                    }
                }
                Some(_) => {
                    // Heard from the agent since the ping: alive, even if the pong is late.
                    self.ping.outstanding = None;
                }
                None => {
                    if now >= self.ping.last_received + interval {
                        self.ping(now);
                    }
                }
            }
        }
        if now >= self.next_housekeeping {
            self.bodies.expire(now, self.config.body_stream_ttl);
            self.next_housekeeping = now + self.config.body_stream_ttl / 4;
        }
    }

    /// The earliest instant at which [`ProxyConnection::handle_timeout`] has work to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut earliest = match &self.state {
            State::Closed => return None,
            State::Handshaking(hs) => return Some(hs.deadline()),
            State::Open => self.deadlines.keys().next().map(|(d, _)| *d),
        };
        let mut consider = |t: Instant| {
            earliest = Some(earliest.map_or(t, |e: Instant| e.min(t)));
        };
        if let Some(interval) = self.config.ping_interval {
            match self.ping.outstanding {
                Some((_, sent)) => consider(sent + self.config.ping_timeout),
                None => consider(self.ping.last_received + interval),
            }
        }
        if !self.bodies.is_empty() {
            consider(self.next_housekeeping);
        }
        earliest
    }

    // ----- output ----------------------------------------------------------------------------

    /// Everything queued for the socket, coalesced into one buffer; `None` if nothing is queued.
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        if self.out.is_empty() {
            None
        } else {
            Some(self.out.split().freeze())
        }
    }

    /// Moves all queued output into `into` without copying when `into` is empty (the two
    /// buffers swap, so an adapter that writes from `into` and clears it recycles both
    /// allocations); appends otherwise.
    pub fn take_transmit(&mut self, into: &mut BytesMut) {
        if into.is_empty() {
            std::mem::swap(into, &mut self.out);
        } else {
            into.extend_from_slice(&self.out);
            self.out.clear();
        }
    }

    /// Queued output, for adapters that write from it in place (then call
    /// [`ProxyConnection::advance_transmit`]); the buffer's memory is then reused.
    pub fn transmit_buffer(&self) -> &[u8] {
        &self.out
    }

    /// Marks `n` bytes of [`ProxyConnection::transmit_buffer`] as written.
    pub fn advance_transmit(&mut self, n: usize) {
        self.out.advance(n.min(self.out.len()));
    }

    /// What happened, in order.
    pub fn poll_event(&mut self) -> Option<ProxyEvent> {
        self.events.pop_front()
    }

    // ----- closing ---------------------------------------------------------------------------

    fn close_with(&mut self, error: ConnectionError) {
        if self.closed_emitted {
            return;
        }
        self.closed_emitted = true;
        self.close_reason = Some(error.clone());
        self.state = State::Closed;
        let pending = std::mem::take(&mut self.pending);
        self.deadlines.clear();
        let mut failed: Vec<(RequestId, Arc<str>)> =
            pending.into_iter().map(|(cid, p)| (p.id, cid)).collect();
        // Submission order, so callers and tests see a deterministic sequence.
        failed.sort_unstable_by_key(|(id, _)| *id);
        self.stats.failures += failed.len() as u64;
        for (id, cid) in failed {
            self.events.push_back(ProxyEvent::Failed {
                id,
                correlation_id: cid,
                error: RequestError::ConnectionClosed(error.clone()),
            });
        }
        self.bodies = BodySequencer::new(self.config.max_body_streams);
        self.flow = FlowState::default();
        self.read_buf = BytesMut::new();
        self.events.push_back(ProxyEvent::Closed(error));
    }
}

/// Whether an answer to an event of `kind` ends its request: a final (not `needs_more`) block,
/// redirect or challenge of the request's headers or body phases. The proxy acts on it and
/// sends nothing more of the request's bodies, so its streams can go (a later chunk would start
/// a new stream at index 0). Other events' decisions (WebSocket frames, which carry their own
/// `websocket_decision`, guardrail inspections, configuration) end nothing here.
fn ends_request(kind: EventKind, response: &AgentResponse) -> bool {
    matches!(
        kind,
        EventKind::RequestHeaders
            | EventKind::RequestBodyChunk
            | EventKind::ResponseHeaders
            | EventKind::ResponseBodyChunk
    ) && !matches!(response.decision, Decision::Allow)
        && !response.needs_more
}

/// Takes the correlation id out of a sent event without cloning it.
fn take_correlation_id(event: Event) -> String {
    match event {
        Event::RequestHeaders(e) => e.correlation_id,
        Event::RequestBodyChunk(e) => e.0.correlation_id,
        Event::ResponseHeaders(e) => e.correlation_id,
        Event::ResponseBodyChunk(e) => e.0.correlation_id,
        Event::RequestComplete(e) => e.correlation_id,
        Event::WebSocketFrame(e) => e.correlation_id,
        Event::GuardrailInspect(e) => e.correlation_id,
        Event::Configure(e) => e.correlation_id,
    }
}

/// Finds `audit.custom.correlation_id` in an AgentResponse that failed to decode as a whole
/// (map or the reference's positional array, where `audit` is element 5).
///
/// Nothing but the id is built: every other value is skipped unread, so salvaging an answer
/// refused for its size (millions of `audit.custom` entries, say) allocates nothing per entry.
fn salvage_response_id(encoding: Encoding, payload: &[u8]) -> Option<String> {
    #[derive(Deserialize, Default)]
    #[serde(default)]
    struct Audit {
        tags: IgnoredAny,
        rule_ids: IgnoredAny,
        confidence: IgnoredAny,
        reason_codes: IgnoredAny,
        custom: CustomId,
    }
    #[derive(Deserialize, Default)]
    #[serde(default)]
    struct Probe {
        version: IgnoredAny,
        decision: IgnoredAny,
        request_headers: IgnoredAny,
        response_headers: IgnoredAny,
        routing_metadata: IgnoredAny,
        audit: Audit,
    }
    let probe: Probe = match encoding::effective_encoding(encoding, payload) {
        Encoding::Json => serde_json::from_slice(payload).ok()?,
        Encoding::MsgPack => crate::msgpack::from_slice(payload).ok()?,
    };
    probe.audit.custom.0
}

/// The `audit.custom` map, read for its correlation id alone (the last one, if the key repeats;
/// `None` unless it is a string).
#[derive(Default)]
struct CustomId(Option<String>);

impl<'de> Deserialize<'de> for CustomId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MapVisitor;
        impl<'de> serde::de::Visitor<'de> for MapVisitor {
            type Value = CustomId;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a map")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<CustomId, A::Error> {
                let mut id = None;
                while let Some(key) = map.next_key::<crate::event::KeyName>()? {
                    if key.0 == crate::response::CORRELATION_KEY {
                        id = map.next_value::<StringOrSkip>()?.0;
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(CustomId(id))
            }
        }
        deserializer.deserialize_map(MapVisitor)
    }
}

/// A string, or any other value skipped unread (`None`).
struct StringOrSkip(Option<String>);

impl<'de> Deserialize<'de> for StringOrSkip {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = StringOrSkip;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("any value")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<StringOrSkip, E> {
                Ok(StringOrSkip(Some(v.to_owned())))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<StringOrSkip, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(StringOrSkip(None))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<StringOrSkip, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(StringOrSkip(None))
            }
            fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<StringOrSkip, E> {
                Ok(StringOrSkip(None))
            }
            fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<StringOrSkip, E> {
                Ok(StringOrSkip(None))
            }
            fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<StringOrSkip, E> {
                Ok(StringOrSkip(None))
            }
            fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<StringOrSkip, E> {
                Ok(StringOrSkip(None))
            }
            fn visit_bytes<E: serde::de::Error>(self, _: &[u8]) -> Result<StringOrSkip, E> {
                Ok(StringOrSkip(None))
            }
            fn visit_unit<E: serde::de::Error>(self) -> Result<StringOrSkip, E> {
                Ok(StringOrSkip(None))
            }
        }
        deserializer.deserialize_any(V)
    }
}
