//! [`AgentConnection`]: the agent side of one connection, as a Sans-IO state machine over typed
//! messages.

use std::collections::VecDeque;
use std::time::Instant;

use foldhash::{HashMap, HashMapExt};
use smallvec::SmallVec;

use crate::byte_str::ByteStr;
use crate::control::{Cancel, ConfigUpdateRequest, FlowControl, HealthStatus, MetricsReport};
use crate::encoding::{DecodeError, Encoding};
use crate::error::ConnectionError;
use crate::event::Event;
use crate::frame::FrameType;
use crate::handshake::{AgentHandshake, HandshakeRequest, Negotiated, PROTOCOL_VERSION};
use crate::registration::{AgentRegistration, RegistrationRequest, RegistrationResponse};
use crate::response::AgentResponse;

use super::fail_closed::FailClosed;
use super::{
    AgentConfig, AgentEvent, AgentIncoming, AgentOutgoing, RequestId, RespondError, SendError,
    MAX_QUEUED_NOTICES,
};

/// One request awaiting its answer.
#[derive(Debug)]
struct Tracked {
    /// A clone of the event's id: shares the event's bytes, no copy.
    correlation_id: ByteStr,
    /// What the event weighs in [`AgentConnection::in_flight_bytes`].
    bytes: usize,
}

#[derive(Debug)]
enum State {
    /// A reverse connection waiting for the proxy to accept its registration.
    Registering(AgentRegistration),
    Handshaking(AgentHandshake),
    Established,
    Closed(ConnectionError),
}

/// The agent side of one connection.
///
/// ```
/// use std::time::Instant;
/// use agent_protocol_core::agent::{AgentConfig, AgentConnection, AgentEvent, AgentIncoming, AgentOutgoing};
/// use agent_protocol_core::handshake::HandshakeRequest;
/// use agent_protocol_core::{AgentResponse, Event, RequestCompleteEvent};
///
/// let now = Instant::now();
/// let mut agent = AgentConnection::new(AgentConfig::default(), now);
///
/// // The proxy's handshake request arrives; the agent answers it.
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
/// // An event arrives; the application answers it.
/// let event = Event::RequestComplete(RequestCompleteEvent { correlation_id: "c1".into(), ..Default::default() });
/// agent.handle_message(now, AgentIncoming::from(event));
/// let Some(AgentEvent::Request { id, .. }) = agent.poll_event() else { panic!() };
/// agent.respond(id, AgentResponse::allow()).unwrap();
/// match agent.poll_message() {
///     Some(AgentOutgoing::Response { correlation_id, response }) => {
///         assert_eq!(correlation_id, "c1");
///         assert!(response.audit.custom.is_empty()); // nothing injected
///     }
///     other => panic!("{other:?}"),
/// }
/// assert_eq!(agent.in_flight(), 0);
/// ```
///
/// It is a plain value in the style of quinn-proto: the adapter feeds it the proxy's messages
/// ([`AgentConnection::handle_message`]), the time ([`AgentConnection::handle_timeout`]) and the
/// end of the transport ([`AgentConnection::handle_closed`]), then drains it of events for the
/// application ([`AgentConnection::poll_event`]), messages for the proxy
/// ([`AgentConnection::poll_message`]) and its next deadline
/// ([`AgentConnection::poll_timeout`]). It does no I/O, reads no clock, starts no thread and
/// does not know what carries its messages: the [`AgentCodec`](super::AgentCodec) frames them on
/// byte streams, the gRPC adapter converts them to protobuf.
///
/// Its states and every transition between them are in [`AgentConnection::handle_message`]
/// (handshake, registration), [`AgentConnection::handle_timeout`] (their deadline) and one
/// `close_with` (every end):
///
/// ```text
/// Handshaking  --Handshake ok---> Established --transport end / malformed / close()--> Closed
/// Registering  --Registered ok--/      (reverse connections start in Registering)       ^
///      |--refused / deadline / transport end / close()-----------------------------------|
/// ```
#[derive(Debug)]
pub struct AgentConnection {
    config: AgentConfig,
    state: State,
    /// The negotiated encoding, kept after a close for [`AgentConnection::encoding`].
    encoding: Option<Encoding>,
    events: VecDeque<AgentEvent>,
    outgoing: VecDeque<AgentOutgoing>,
    /// Tracked requests. At most `max_in_flight` entries.
    requests: HashMap<RequestId, Tracked>,
    /// Sum of `Tracked::bytes` over `requests`.
    in_flight_bytes: usize,
    /// Correlation id -> tracked requests carrying it, for Cancel. Holds only ids present in
    /// `requests`, so it is bounded by the same limit. Keyed by the proxy's ids: foldhash,
    /// seeded at random per process, keeps them from being chosen to collide.
    by_correlation: HashMap<ByteStr, SmallVec<[RequestId; 2]>>,
    next_id: RequestId,
    notices_dropped: u64,
    /// Events answered with a block by the connection itself (see `answer_fail_closed`).
    fail_closed_answers: u64,
    /// The proxy's acceptance of a reverse connection's registration.
    registration: Option<RegistrationResponse>,
}

impl AgentConnection {
    /// A connection accepted on the agent's socket: it waits for the proxy's
    /// [`AgentIncoming::Handshake`] until `now + config.handshake.timeout`, and offers the
    /// encodings in `config.handshake.encodings`.
    ///
    /// An event that arrives before the handshake is answered at once with a block (500,
    /// [`HANDSHAKE_REQUIRED_REASON`](super::HANDSHAKE_REQUIRED_REASON)) instead of being
    /// dropped.
    pub fn new(config: AgentConfig, now: Instant) -> Self {
        let handshake = AgentHandshake::new(&config.handshake, now);
        Self::with_state(config, State::Handshaking(handshake), None)
    }

    /// A connection that needs no handshake: a reverse connection whose registration the
    /// adapter completed with [`crate::registration::AgentRegistration`] (reverse connections
    /// use [`Encoding::Json`]). Queues [`AgentEvent::Established`] with `proxy: None`.
    pub fn new_established(config: AgentConfig, encoding: Encoding) -> Self {
        let mut conn = Self::with_state(config, State::Established, None);
        conn.establish_without_handshake(encoding);
        conn
    }

    /// Opens a connection that had no handshake (a reverse one): the capabilities in force are
    /// ours, as announced.
    fn establish_without_handshake(&mut self, encoding: Encoding) {
        let negotiated = Negotiated {
            encoding,
            capabilities: self.config.handshake.capabilities.clone(),
            protocol_version: PROTOCOL_VERSION,
        };
        self.state = State::Established;
        self.encoding = Some(encoding);
        self.events.push_back(AgentEvent::Established {
            negotiated,
            proxy: None,
        });
    }

    /// A reverse connection: the agent dialed the proxy, and the first thing it sends is
    /// `request` ([`AgentOutgoing::Register`]); the proxy must accept it
    /// ([`AgentIncoming::Registered`]) within `config.handshake.timeout`. The connection is then
    /// established in [`Encoding::Json`] (queuing [`AgentEvent::Established`] with
    /// `proxy: None`); a refusal or the deadline closes it with
    /// [`ConnectionError::Registration`].
    ///
    /// ```
    /// use std::time::Instant;
    /// use agent_protocol_core::agent::{AgentConfig, AgentConnection, AgentEvent, AgentIncoming, AgentOutgoing};
    /// use agent_protocol_core::registration::{RegistrationRequest, RegistrationResponse};
    /// use agent_protocol_core::Capabilities;
    ///
    /// let now = Instant::now();
    /// let request = RegistrationRequest {
    ///     protocol_version: 2,
    ///     agent_id: "waf-1".into(),
    ///     capabilities: Capabilities::new("waf-1", "WAF", "1"),
    ///     auth_token: None,
    ///     metadata: None,
    /// };
    /// let mut agent = AgentConnection::new_reverse(AgentConfig::default(), request, now);
    /// assert!(matches!(agent.poll_message(), Some(AgentOutgoing::Register(_))));
    /// agent.handle_message(now, AgentIncoming::Registered(RegistrationResponse {
    ///     success: true,
    ///     error: None,
    ///     proxy_id: "proxy".into(),
    ///     proxy_version: "1".into(),
    ///     connection_id: "waf-1-1".into(),
    /// }));
    /// assert!(matches!(agent.poll_event(), Some(AgentEvent::Established { proxy: None, .. })));
    /// assert_eq!(agent.registration().unwrap().connection_id, "waf-1-1");
    /// ```
    pub fn new_reverse(config: AgentConfig, request: RegistrationRequest, now: Instant) -> Self {
        let registration = AgentRegistration::new(config.handshake.timeout, now);
        let mut conn = Self::with_state(config, State::Registering(registration), None);
        conn.outgoing.push_back(AgentOutgoing::Register(request));
        conn
    }

    fn with_state(config: AgentConfig, state: State, encoding: Option<Encoding>) -> Self {
        Self {
            config,
            state,
            encoding,
            events: VecDeque::new(),
            outgoing: VecDeque::new(),
            requests: HashMap::new(),
            in_flight_bytes: 0,
            by_correlation: HashMap::new(),
            next_id: RequestId::from_raw(0),
            notices_dropped: 0,
            fail_closed_answers: 0,
            registration: None,
        }
    }

    /// The settings it was created with.
    pub fn config(&self) -> &AgentConfig {
        &self.config
    }

    /// Feeds one message from the proxy. Ignored once the connection is closed.
    pub fn handle_message(&mut self, now: Instant, message: AgentIncoming) {
        self.handle_timeout(now);
        if self.is_closed() {
            return;
        }
        match message {
            AgentIncoming::Handshake(request) => self.on_handshake(request),
            AgentIncoming::Registered(response) => self.on_registered(response),
            AgentIncoming::Event { event, shared } => self.on_event(event, shared),
            AgentIncoming::MalformedEvent {
                correlation_id: Some(correlation_id),
                error,
            } => self.refuse(correlation_id, error),
            // Nothing to answer: the proxy would wait out its timeout for this request.
            // Closing makes it fail everything on this connection at once instead.
            AgentIncoming::MalformedEvent {
                correlation_id: None,
                error,
            } => self.close_with(ConnectionError::Malformed(error)),
            AgentIncoming::Cancel(cancel) => self.on_cancel(cancel),
            AgentIncoming::Ping(ping) => self.outgoing.push_back(AgentOutgoing::Pong(ping)),
        }
    }

    fn on_registered(&mut self, response: RegistrationResponse) {
        let State::Registering(registration) = &self.state else {
            self.notice(AgentEvent::Ignored {
                frame_type: FrameType::HandshakeResponse,
            });
            return;
        };
        match registration.handle_response(response) {
            Ok(response) => {
                self.registration = Some(response);
                // Reverse connections always carry JSON.
                self.establish_without_handshake(Encoding::Json);
            }
            Err(e) => self.close_with(ConnectionError::Registration(e)),
        }
    }

    fn on_handshake(&mut self, request: HandshakeRequest) {
        let State::Handshaking(hs) = &self.state else {
            self.notice(AgentEvent::Ignored {
                frame_type: FrameType::HandshakeRequest,
            });
            return;
        };
        let (answer, outcome) = hs.handle_request(&self.config.handshake, request);
        self.outgoing.push_back(AgentOutgoing::Handshake(answer));
        match outcome {
            Ok((negotiated, request)) => {
                self.state = State::Established;
                self.encoding = Some(negotiated.encoding);
                self.events.push_back(AgentEvent::Established {
                    negotiated,
                    proxy: Some(request),
                });
            }
            // The refusal is queued ahead of the close, for the adapter to flush.
            Err(e) => self.close_with(ConnectionError::Handshake(e)),
        }
    }

    /// Holds an event to the limits, then tracks it and hands it to the application, or answers
    /// it at once with a block.
    fn on_event(&mut self, event: Box<Event>, shared: usize) {
        let frame_type = event.frame_type();
        let encoding = self.encoding.unwrap_or_default();
        if matches!(self.state, State::Handshaking(_) | State::Registering(_)) {
            let why = FailClosed::HandshakeRequired;
            self.answer_fail_closed(event.correlation_id().to_owned(), frame_type, why);
            return;
        }
        if event.correlation_id().is_empty() {
            // An answer to it could not be routed, and our proxy never sends one: malformed.
            // (gRPC cannot tell an empty id from a missing one, so this is reachable there.)
            let error = DecodeError {
                frame_type,
                encoding,
                message: "event without a correlation id".into(),
                limit: None,
            };
            self.refuse(String::new(), error);
            return;
        }
        // The framed codec checks these while decoding, before allocating; a transport that
        // decodes events itself is held to the same limits here, with the same answer.
        let (count, header_bytes) = event.header_load();
        if let Err(limit) = self.config.header_limits.check(count, header_bytes) {
            let error = DecodeError {
                frame_type,
                encoding,
                message: limit.to_string(),
                limit: Some(limit),
            };
            self.refuse(event.correlation_id().to_owned(), error);
            return;
        }
        if self.requests.len() >= self.config.max_in_flight {
            let correlation_id = event.correlation_id().to_owned();
            let why = FailClosed::Overloaded;
            if self.answer_fail_closed(correlation_id.clone(), frame_type, why) {
                self.notice(AgentEvent::Overloaded {
                    correlation_id,
                    frame_type,
                });
            }
            return;
        }
        let bytes = event_weight(&event, header_bytes) + shared;
        let id = self.next_id;
        self.next_id = id.next();
        let correlation_id = event.shared_correlation_id().clone();
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

    /// Answers an event the application will not see (undecodable, over a limit, without an
    /// id) with a block, and reports it.
    fn refuse(&mut self, correlation_id: String, error: DecodeError) {
        let why = if matches!(self.state, State::Handshaking(_) | State::Registering(_)) {
            FailClosed::HandshakeRequired
        } else {
            FailClosed::for_decode_error(&error)
        };
        if self.answer_fail_closed(correlation_id.clone(), error.frame_type, why) {
            self.notice(AgentEvent::MalformedEvent {
                correlation_id,
                error,
            });
        }
    }

    /// Queues the block for an event the application never sees; returns whether one was
    /// queued (not on a closed connection).
    fn answer_fail_closed(
        &mut self,
        correlation_id: impl Into<ByteStr>,
        frame_type: FrameType,
        why: FailClosed,
    ) -> bool {
        if self.is_closed() {
            return false;
        }
        self.outgoing.push_back(AgentOutgoing::Response {
            correlation_id: correlation_id.into(),
            response: why.response(Some(frame_type)),
        });
        self.fail_closed_answers += 1;
        true
    }

    fn on_cancel(&mut self, cancel: Cancel) {
        let Some(ids) = self.by_correlation.remove(cancel.correlation_id.as_str()) else {
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

    /// Checks the handshake deadline; closes the connection if it passed while still waiting.
    /// A handshake that arrived in time is accepted even if the adapter hands it over late: the
    /// adapter passes the time it read it.
    pub fn handle_timeout(&mut self, now: Instant) {
        let expired = match &self.state {
            State::Handshaking(hs) => hs.handle_timeout(now).map_err(ConnectionError::Handshake),
            State::Registering(r) => r.handle_timeout(now).map_err(ConnectionError::Registration),
            State::Established | State::Closed(_) => Ok(()),
        };
        if let Err(reason) = expired {
            self.close_with(reason);
        }
    }

    /// The transport ended: the peer closed it ([`ConnectionError::PeerClosed`]), reading or
    /// writing failed ([`ConnectionError::Io`]), or what it carried could not be read at all
    /// (a framing error). Pending requests are dropped.
    pub fn handle_closed(&mut self, reason: ConnectionError) {
        self.close_with(reason);
    }

    /// The next deadline to pass to [`AgentConnection::handle_timeout`]: the handshake's while
    /// it is in progress, otherwise `None` (the agent side has no other timer).
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        match &self.state {
            State::Handshaking(hs) => Some(hs.deadline()),
            State::Registering(r) => Some(r.deadline()),
            _ => None,
        }
    }

    /// The next event for the application. After [`AgentEvent::Closed`] it returns `None`.
    #[must_use]
    #[inline]
    pub fn poll_event(&mut self) -> Option<AgentEvent> {
        self.events.pop_front()
    }

    /// The next message for the proxy. Messages queued before a close (a handshake refusal,
    /// answers) are still returned after it; the adapter should send them if its transport
    /// still works.
    #[must_use]
    #[inline]
    pub fn poll_message(&mut self) -> Option<AgentOutgoing> {
        self.outgoing.pop_front()
    }

    /// Whether a message waits in [`AgentConnection::poll_message`].
    pub fn has_messages(&self) -> bool {
        !self.outgoing.is_empty()
    }

    /// Answers request `id`, exactly once. The answer is queued as
    /// [`AgentOutgoing::Response`] with the event's correlation id beside it; the transport
    /// replaces it with a fail-closed block if it cannot carry it (see
    /// [`unsendable_answer`](super::unsendable_answer)).
    pub fn respond(&mut self, id: RequestId, response: AgentResponse) -> Result<(), RespondError> {
        match &self.state {
            State::Established => {}
            State::Closed(reason) => return Err(RespondError::Closed(reason.clone())),
            State::Handshaking(_) | State::Registering(_) => {
                return Err(RespondError::UnknownRequest(id))
            }
        }
        let correlation_id = self.forget(id).ok_or(RespondError::UnknownRequest(id))?;
        self.outgoing.push_back(AgentOutgoing::Response {
            correlation_id,
            response,
        });
        Ok(())
    }

    /// Queues a HealthStatus.
    pub fn send_health(&mut self, status: &HealthStatus) -> Result<(), SendError> {
        self.send(|| AgentOutgoing::Health(status.clone()))
    }

    /// Queues a FlowControl signal.
    pub fn send_flow_control(&mut self, signal: &FlowControl) -> Result<(), SendError> {
        self.send(|| AgentOutgoing::FlowControl(signal.clone()))
    }

    /// Queues a MetricsReport.
    pub fn send_metrics(&mut self, report: &MetricsReport) -> Result<(), SendError> {
        self.send(|| AgentOutgoing::Metrics(report.clone()))
    }

    /// Queues a ConfigUpdateRequest.
    pub fn send_config_update(&mut self, request: &ConfigUpdateRequest) -> Result<(), SendError> {
        self.send(|| AgentOutgoing::ConfigUpdate(request.clone()))
    }

    fn send(&mut self, message: impl FnOnce() -> AgentOutgoing) -> Result<(), SendError> {
        match &self.state {
            State::Established => {}
            State::Closed(reason) => return Err(SendError::Closed(reason.clone())),
            State::Handshaking(_) | State::Registering(_) => return Err(SendError::NotEstablished),
        }
        self.outgoing.push_back(message());
        Ok(())
    }

    /// Closes the connection locally. Pending requests are dropped (a later
    /// [`AgentConnection::respond`] for them fails); messages already queued stay available from
    /// [`AgentConnection::poll_message`] so the adapter can flush them. Queues
    /// [`AgentEvent::Closed`] with [`ConnectionError::LocalClose`] unless the connection was
    /// already closed.
    pub fn close(&mut self) {
        self.close_with(ConnectionError::LocalClose);
    }

    /// The one way a connection ends, whatever ended it.
    fn close_with(&mut self, reason: ConnectionError) {
        if self.is_closed() {
            return;
        }
        self.requests = HashMap::new();
        self.in_flight_bytes = 0;
        self.by_correlation = HashMap::new();
        self.state = State::Closed(reason.clone());
        self.events.push_back(AgentEvent::Closed(reason));
    }

    /// Unanswered requests being tracked (never more than [`AgentConfig::max_in_flight`]).
    pub fn in_flight(&self) -> usize {
        self.requests.len()
    }

    /// What the unanswered requests weigh, in bytes: for each event, its correlation id, header
    /// names and values, body, URI, inspected text and configuration, close to what it took on
    /// the wire. A request stops counting once it is answered, cancelled or dropped by the
    /// close.
    ///
    /// The application holds each event until it answers, and nothing else bounds their size:
    /// [`AgentConfig::max_in_flight`] events of a 16 MiB frame each would be 64 GiB. An adapter
    /// stops reading while this is above its bound, so a proxy that sends large events to a slow
    /// handler is pushed back instead of growing the agent. The event being decoded always
    /// counts in full, so one event larger than the adapter's bound is still taken, alone.
    ///
    /// ```
    /// use agent_protocol_core::agent::{AgentConfig, AgentConnection, AgentEvent};
    /// use agent_protocol_core::{AgentResponse, BodyChunk, Encoding, Event, RequestBodyChunkEvent};
    /// let mut agent = AgentConnection::new_established(AgentConfig::default(), Encoding::Json);
    /// # let now = std::time::Instant::now();
    /// # while agent.poll_event().is_some() {}
    /// let chunk = BodyChunk { correlation_id: "c1".into(), data: vec![0; 4096].into(), ..Default::default() };
    /// let event = Event::RequestBodyChunk(RequestBodyChunkEvent(chunk));
    /// agent.handle_message(now, agent_protocol_core::agent::AgentIncoming::from(event));
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
        matches!(self.state, State::Established)
    }

    /// Whether the connection is closed.
    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed(_))
    }

    /// The proxy's acceptance of this reverse connection's registration, once it came.
    pub fn registration(&self) -> Option<&RegistrationResponse> {
        self.registration.as_ref()
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

    /// Events this connection answered with a block itself, without the application seeing
    /// them: undecodable, over a limit, over `max_in_flight`, or before the handshake.
    pub fn fail_closed_answers(&self) -> u64 {
        self.fail_closed_answers
    }

    fn notice(&mut self, event: AgentEvent) {
        if self.events.len() < MAX_QUEUED_NOTICES {
            self.events.push_back(event);
        } else {
            self.notices_dropped = self.notices_dropped.saturating_add(1);
        }
    }

    /// Correlation ids a Cancel can still stop.
    #[cfg(test)]
    pub(super) fn cancellable(&self) -> usize {
        self.by_correlation.len()
    }

    /// Events waiting in [`AgentConnection::poll_event`].
    #[cfg(test)]
    pub(super) fn queued_events(&self) -> usize {
        self.events.len()
    }

    /// Stops tracking `id`; returns its correlation id if it was tracked.
    fn forget(&mut self, id: RequestId) -> Option<ByteStr> {
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
}

/// What an event weighs in [`AgentConnection::in_flight_bytes`], before the payload it shares:
/// its box, and the bytes of what the sender chose (correlation id, header names and values,
/// body, URI, inspected text, configuration), not counting per-allocation overhead.
/// `header_bytes` is the second half of [`Event::header_load`], already computed by the caller.
fn event_weight(event: &Event, header_bytes: usize) -> usize {
    let strings = |v: &[String]| v.iter().map(String::len).sum::<usize>();
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
    // The box the event was decoded into counts too: a connection holds one per request.
    std::mem::size_of::<Event>()
        + event.correlation_id().len()
        + header_bytes
        + event.body_len()
        + own
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
