//! [`ProxyConnection`]: the proxy side of one agent connection, as a Sans-IO state machine over
//! typed messages.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use foldhash::{HashMap, HashMapExt};

use crate::body_sequence::{BodySequencer, Direction};
use crate::byte_str::ByteStr;
use crate::capabilities::{Capabilities, EventKind};
use crate::control::{Cancel, CancelReason, Ping};
use crate::encoding::{DecodeError, Encoding};
use crate::error::{ConnectionError, RequestError, SubmitError};
use crate::event::Event;
use crate::handshake::{HandshakeError, Negotiated, ProxyHandshake};
use crate::response::{AgentResponse, Decision};
use crate::HealthState;

use super::flow::FlowState;
use super::{ProxyConfig, ProxyEvent, ProxyIncoming, ProxyOutgoing, RequestId};

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
#[non_exhaustive]
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
    /// Messages ignored because they make no sense where they came (a second handshake answer).
    pub unexpected: u64,
    /// Pause signals received.
    pub pauses: u64,
}

/// A request awaiting its answer.
#[derive(Debug)]
struct Pending {
    id: RequestId,
    deadline: Instant,
    timeout: Duration,
    /// What the event was: whether its answer can end the request depends on it.
    kind: EventKind,
}

/// A body chunk admitted for sending, committed once it is written.
struct AdmittedChunk {
    direction: Direction,
    index: u32,
    len: usize,
    is_last: bool,
    total: Option<u64>,
}

#[derive(Debug)]
struct PingState {
    next_sequence: u64,
    outstanding: Option<(u64, Instant)>,
    last_received: Instant,
}

/// The states, and what each holds.
#[derive(Debug)]
enum State {
    Handshaking(ProxyHandshake),
    Open,
    Closed(ConnectionError),
}

/// The proxy side of one connection. See the [module docs](super).
///
/// Input: [`ProxyConnection::handle_message`] (what the agent sent),
/// [`ProxyConnection::handle_timeout`] (the time), [`ProxyConnection::handle_closed`] (the
/// transport ended) and the commands ([`ProxyConnection::send_event`],
/// [`ProxyConnection::cancel`], [`ProxyConnection::ping`], [`ProxyConnection::end_request`],
/// [`ProxyConnection::close`]). Output: [`ProxyConnection::poll_message`] (what to send),
/// [`ProxyConnection::poll_event`] (what happened) and [`ProxyConnection::poll_timeout`] (when
/// to call again). Every event accepted by `send_event` later yields exactly one
/// [`ProxyEvent::Response`] or [`ProxyEvent::Failed`] for its [`RequestId`].
#[derive(Debug)]
pub struct ProxyConnection {
    config: ProxyConfig,
    state: State,
    encoding: Encoding,
    capabilities: Option<Capabilities>,
    /// Keyed by ids a client may have chosen. Like every per-request table here it hashes with
    /// foldhash, seeded at random per process so no peer can precompute colliding ids, at a
    /// fraction of SipHash's cost on lookups every request makes.
    pending: HashMap<ByteStr, Pending>,
    deadlines: BTreeMap<(Instant, RequestId), ByteStr>,
    next_id: RequestId,
    events: VecDeque<ProxyEvent>,
    outgoing: VecDeque<ProxyOutgoing>,
    flow: FlowState,
    health: HealthState,
    bodies: BodySequencer,
    ping: PingState,
    next_housekeeping: Instant,
    unix_base: (Instant, u64),
    stats: ProxyStats,
}

impl ProxyConnection {
    /// A connection that starts with the handshake: its request is queued as
    /// [`ProxyOutgoing::Handshake`], and the agent's answer must come first.
    pub fn new(config: ProxyConfig, now: Instant) -> Self {
        let (handshake, request) = ProxyHandshake::start_request(&config.handshake, now);
        let mut conn = Self::with_state(config, State::Handshaking(handshake), now);
        conn.outgoing.push_back(ProxyOutgoing::Handshake(request));
        conn
    }

    /// A connection whose setup already happened elsewhere: a reverse connection after
    /// registration (JSON), or a test harness.
    pub fn new_established(config: ProxyConfig, negotiated: Negotiated, now: Instant) -> Self {
        let mut conn = Self::with_state(config, State::Open, now);
        conn.encoding = negotiated.encoding;
        conn.capabilities = Some(negotiated.capabilities);
        conn
    }

    fn with_state(mut config: ProxyConfig, state: State, now: Instant) -> Self {
        // A zero interval would ping (and, with a zero timeout, declare the peer dead) in the
        // same instant: read it as "no pings", the only sensible meaning.
        if config.ping_interval == Some(Duration::ZERO) {
            config.ping_interval = None;
        }
        // Likewise a housekeeping period of zero would spin.
        config.body_stream_ttl = config.body_stream_ttl.max(Duration::from_millis(4));
        Self {
            bodies: BodySequencer::new(config.max_body_streams),
            next_housekeeping: now + config.body_stream_ttl,
            config,
            state,
            encoding: Encoding::Json,
            capabilities: None,
            pending: HashMap::new(),
            deadlines: BTreeMap::new(),
            next_id: RequestId::from_raw(1),
            events: VecDeque::new(),
            outgoing: VecDeque::new(),
            flow: FlowState::default(),
            health: HealthState::Healthy,
            ping: PingState {
                next_sequence: 0,
                outstanding: None,
                last_received: now,
            },
            unix_base: (now, 0),
            stats: ProxyStats::default(),
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

    // ----- accessors -------------------------------------------------------------------------

    /// The settings in force (a zero ping interval reads as none).
    pub fn config(&self) -> &ProxyConfig {
        &self.config
    }

    /// Lifecycle state.
    pub fn state(&self) -> ConnectionState {
        match self.state {
            State::Handshaking(_) => ConnectionState::Handshaking,
            State::Open => ConnectionState::Open,
            State::Closed(_) => ConnectionState::Closed,
        }
    }

    /// Whether the connection ended.
    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed(_))
    }

    /// Why the connection ended, once it did.
    pub fn close_reason(&self) -> Option<&ConnectionError> {
        match &self.state {
            State::Closed(reason) => Some(reason),
            _ => None,
        }
    }

    /// Whether requests can be submitted (open, not paused).
    pub fn is_accepting(&self) -> bool {
        matches!(self.state, State::Open) && !self.flow.is_paused()
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
        self.flow.is_paused()
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

    /// Feeds one message from the agent.
    pub fn handle_message(&mut self, now: Instant, message: ProxyIncoming) {
        self.handle_activity(now);
        match (&self.state, message) {
            (State::Closed(_), _) => {}
            (State::Handshaking(hs), ProxyIncoming::Handshake(response)) => {
                match hs.handle_response(response, true) {
                    Ok(negotiated) => {
                        self.encoding = negotiated.encoding;
                        self.capabilities = Some(negotiated.capabilities.clone());
                        self.state = State::Open;
                        self.events.push_back(ProxyEvent::Connected(negotiated));
                    }
                    Err(e) => self.close_with(ConnectionError::Handshake(e)),
                }
            }
            (State::Handshaking(_), _) => self.close_with(ConnectionError::Handshake(
                HandshakeError::Malformed("expected the handshake answer first".into()),
            )),
            (State::Open, message) => self.handle_open(now, message),
        }
    }

    /// Something arrived from the agent, even if not yet a whole message: it is alive. (A large
    /// answer still arriving must not get the connection declared dead by its ping timeout.)
    pub fn handle_activity(&mut self, now: Instant) {
        self.ping.last_received = self.ping.last_received.max(now);
    }

    fn handle_open(&mut self, now: Instant, message: ProxyIncoming) {
        match message {
            ProxyIncoming::Response { response } => {
                let cid = response.correlation_id().unwrap_or("");
                match self.pending.remove_entry(cid) {
                    Some((cid, pending)) => {
                        let ends = ends_request(pending.kind, &response);
                        self.stats.responses += 1;
                        self.end(cid, pending, ends, Ok(response));
                    }
                    None => {
                        let cid = cid.to_owned();
                        self.unroutable(cid);
                    }
                }
            }
            ProxyIncoming::MalformedResponse {
                correlation_id,
                error,
            } => match self.pending.remove_entry(correlation_id.as_str()) {
                Some((cid, pending)) => self.fail_malformed(cid, pending, error),
                None => self.unroutable(correlation_id),
            },
            ProxyIncoming::Health(h) => {
                self.health = h.state;
                self.events.push_back(ProxyEvent::Health(h));
            }
            ProxyIncoming::FlowControl(signal) => {
                if self.flow.apply(&signal, self.config.max_body_streams) {
                    self.stats.pauses += 1;
                }
                self.events.push_back(ProxyEvent::FlowControl(signal));
            }
            ProxyIncoming::Metrics(m) => self.events.push_back(ProxyEvent::Metrics(m)),
            ProxyIncoming::ConfigUpdate(c) => self.events.push_back(ProxyEvent::ConfigUpdate(c)),
            ProxyIncoming::Pong(p) => {
                if let Some((sequence, sent)) = self.ping.outstanding {
                    if sequence == p.sequence {
                        self.ping.outstanding = None;
                        let rtt = now.saturating_duration_since(sent);
                        self.events.push_back(ProxyEvent::Pong { sequence, rtt });
                    }
                }
            }
            ProxyIncoming::Handshake(_) => self.stats.unexpected += 1,
        }
    }

    fn fail_malformed(&mut self, cid: ByteStr, pending: Pending, error: DecodeError) {
        self.stats.failures += 1;
        let error = RequestError::MalformedResponse(error);
        self.end(cid, pending, true, Err(error));
    }

    fn unroutable(&mut self, correlation_id: String) {
        self.stats.unroutable += 1;
        self.events
            .push_back(ProxyEvent::UnroutableResponse { correlation_id });
    }

    /// The transport ended (`reason` says how: the peer closed, an I/O error, a framing error
    /// the codec found...). Every pending request fails at once.
    pub fn handle_closed(&mut self, reason: ConnectionError) {
        self.close_with(reason);
    }

    /// Closes the connection from our side; pending requests fail at once.
    pub fn close(&mut self) {
        self.close_with(ConnectionError::LocalClose);
    }

    // ----- commands --------------------------------------------------------------------------

    /// Submits an event. `timeout` overrides the configured request timeout. After every check
    /// passed, the event is handed to `transmit` (the codec's
    /// [`encode`](super::ProxyCodec::encode), or a message transport's queue), behind whatever
    /// the connection had queued for [`ProxyConnection::poll_message`], so the wire keeps the
    /// order in which things happened (a cancel before a later event reusing its correlation
    /// id). If `transmit` accepts it, the request is tracked and exactly one `Response` or
    /// `Failed` will follow for the returned id; on any error nothing was tracked.
    pub fn send_event(
        &mut self,
        now: Instant,
        mut event: Event,
        timeout: Option<Duration>,
        mut transmit: impl FnMut(ProxyOutgoing) -> Result<(), SubmitError>,
    ) -> Result<RequestId, SubmitError> {
        match &self.state {
            State::Open => {}
            State::Handshaking(_) => return Err(SubmitError::NotReady),
            State::Closed(reason) => return Err(SubmitError::Closed(reason.clone())),
        }
        let cid = event.correlation_id();
        if cid.is_empty() {
            return Err(SubmitError::EmptyCorrelationId);
        }
        if self.pending.contains_key(cid) {
            return Err(SubmitError::DuplicateCorrelationId(cid.to_owned()));
        }
        if self.flow.is_paused() {
            return Err(SubmitError::FlowControlPaused {
                correlation_id: None,
            });
        }
        let limit = self.in_flight_limit();
        if self.pending.len() >= limit as usize {
            return Err(SubmitError::TooManyInFlight { limit });
        }
        let chunk = self.admit_chunk(now, &mut event)?;
        // A clone of the event's id shares its bytes (the proxy built it; no copy).
        let cid = event.shared_correlation_id().clone();
        let kind = event.kind();
        while let Some(queued) = self.outgoing.pop_front() {
            // Cancels and pings: small, and written whatever the buffer holds.
            let _ = transmit(queued);
        }
        transmit(ProxyOutgoing::Event(event))?;

        // Committed: from here on the request is tracked and will end exactly once.
        if let Some(c) = chunk {
            let bodies = &mut self.bodies;
            bodies.commit(&cid, c.direction, c.index, c.len, c.is_last, c.total, now);
            self.flow.consume(&cid, c.len as u64);
        }
        if kind == EventKind::RequestComplete {
            self.release_request(&cid);
        }
        let id = self.next_id;
        self.next_id = id.next();
        let timeout = timeout.unwrap_or(self.config.request_timeout);
        let deadline = now + timeout;
        self.deadlines.insert((deadline, id), cid.clone());
        let pending = Pending {
            id,
            deadline,
            timeout,
            kind,
        };
        self.pending.insert(cid, pending);
        self.stats.requests += 1;
        Ok(id)
    }

    /// Checks a body chunk against flow control, limits and sequencing, and fills in its running
    /// byte count. Returns what to commit once it is written.
    fn admit_chunk(
        &self,
        now: Instant,
        event: &mut Event,
    ) -> Result<Option<AdmittedChunk>, SubmitError> {
        let (direction, chunk) = match event {
            Event::RequestBodyChunk(e) => (Direction::Request, &mut e.0),
            Event::ResponseBodyChunk(e) => (Direction::Response, &mut e.0),
            _ => return Ok(None),
        };
        let len = chunk.data.len();
        self.flow.admit_chunk(&chunk.correlation_id, len as u64)?;
        let admitted = self
            .bodies
            .check(
                &chunk.correlation_id,
                direction,
                chunk.chunk_index,
                len,
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
        Ok(Some(AdmittedChunk {
            direction,
            index: chunk.chunk_index,
            len,
            is_last: chunk.is_last,
            total: chunk.total_size,
        }))
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
    /// let mut sent = Vec::new();
    /// let event = Event::RequestBodyChunk(RequestBodyChunkEvent(chunk));
    /// conn.send_event(now, event, None, |m| { sent.push(m); Ok(()) }).unwrap();
    /// assert_eq!(conn.body_streams(), 1);
    /// assert!(conn.end_request("c1"));
    /// assert_eq!(conn.body_streams(), 0);
    /// ```
    pub fn end_request(&mut self, correlation_id: &str) -> bool {
        self.release_request(correlation_id)
    }

    /// Cancels the pending request with this correlation id: the agent is told (a Cancel is
    /// queued) and the request fails at once with `Cancelled`. Returns whether a request was
    /// pending.
    pub fn cancel(&mut self, now: Instant, correlation_id: &str, reason: CancelReason) -> bool {
        let Some((cid, pending)) = self.pending.remove_entry(correlation_id) else {
            // Cancelled between two events: nothing to fail or tell the agent, but the request
            // is over all the same.
            self.release_request(correlation_id);
            return false;
        };
        self.queue_cancel(now, &cid, reason);
        self.stats.cancels += 1;
        self.end(cid, pending, true, Err(RequestError::Cancelled(reason)));
        true
    }

    fn queue_cancel(&mut self, now: Instant, cid: &str, reason: CancelReason) {
        self.outgoing.push_back(ProxyOutgoing::Cancel(Cancel {
            correlation_id: cid.to_owned(),
            reason,
            timestamp_ms: self.unix_ms(now),
        }));
    }

    /// Queues a ping now. Returns its sequence number, or `None` if the connection is not open
    /// or a ping is already outstanding.
    pub fn ping(&mut self, now: Instant) -> Option<u64> {
        if !matches!(self.state, State::Open) || self.ping.outstanding.is_some() {
            return None;
        }
        let sequence = self.ping.next_sequence;
        self.outgoing.push_back(ProxyOutgoing::Ping(Ping {
            sequence,
            timestamp_ms: self.unix_ms(now),
        }));
        self.ping.next_sequence += 1;
        self.ping.outstanding = Some((sequence, now));
        Some(sequence)
    }

    // ----- how a request ends ------------------------------------------------------------------

    /// The one place a request that was awaiting its answer ends: its deadline goes, its
    /// per-request state too when `release` (see [`ProxyConnection::release_request`]), and its
    /// outcome is reported.
    fn end(
        &mut self,
        cid: ByteStr,
        pending: Pending,
        release: bool,
        outcome: Result<AgentResponse, RequestError>,
    ) {
        self.deadlines.remove(&(pending.deadline, pending.id));
        if release {
            self.release_request(&cid);
        }
        let (id, correlation_id) = (pending.id, cid);
        self.events.push_back(match outcome {
            Ok(mut response) => {
                // The same id as the answer's, shared with the caller's event instead of read
                // from the frame: the answer keeps no part of the transport's buffer.
                response.correlation_id = Some(correlation_id.clone());
                ProxyEvent::Response {
                    id,
                    correlation_id,
                    response,
                }
            }
            Err(error) => ProxyEvent::Failed {
                id,
                correlation_id,
                error,
            },
        });
    }

    /// The one place a request's per-request state goes: its body streams (both directions)
    /// and its flow-control entry. Every way a request ends on this side calls it: RequestComplete
    /// sent, a final block/redirect/challenge delivered, timeout, cancel, malformed answer, and
    /// [`ProxyConnection::end_request`] for ends only the caller knows about (a close drops the
    /// whole tables at once). Returns whether anything was held.
    fn release_request(&mut self, cid: &str) -> bool {
        let had_body = self.bodies.forget(cid);
        let had_flow = self.flow.forget(cid);
        had_body || had_flow
    }

    // ----- time ------------------------------------------------------------------------------

    /// Processes every deadline at or before `now`: handshake, request timeouts (each fails and
    /// the agent is told to cancel), pings and dead-peer detection, idle body streams.
    pub fn handle_timeout(&mut self, now: Instant) {
        match &self.state {
            State::Closed(_) => return,
            State::Handshaking(hs) => {
                if let Err(e) = hs.handle_timeout(now) {
                    self.close_with(ConnectionError::Handshake(e));
                }
                return;
            }
            State::Open => {}
        }
        while self
            .deadlines
            .first_key_value()
            .is_some_and(|((due, _), _)| *due <= now)
        {
            let Some((_, cid)) = self.deadlines.pop_first() else {
                break;
            };
            if let Some((cid, pending)) = self.pending.remove_entry(&cid) {
                self.queue_cancel(now, &cid, CancelReason::Timeout);
                self.stats.timeouts += 1;
                let error = RequestError::Timeout(pending.timeout);
                self.end(cid, pending, true, Err(error));
            }
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
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut earliest = match &self.state {
            State::Closed(_) => return None,
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

    /// The next message to send (the handshake, cancels, pings; events go out through
    /// [`ProxyConnection::send_event`]'s `transmit`).
    #[must_use]
    pub fn poll_message(&mut self) -> Option<ProxyOutgoing> {
        self.outgoing.pop_front()
    }

    /// What happened, in order.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<ProxyEvent> {
        self.events.pop_front()
    }

    // ----- closing ---------------------------------------------------------------------------

    fn close_with(&mut self, reason: ConnectionError) {
        if self.is_closed() {
            return;
        }
        self.state = State::Closed(reason.clone());
        // What is queued (the cancels of requests that just ended) is still handed over: on a
        // local close the transport may still carry it, and the agent learns of every cancel.
        let pending = std::mem::take(&mut self.pending);
        self.deadlines.clear();
        let mut failed: Vec<(RequestId, ByteStr)> =
            pending.into_iter().map(|(cid, p)| (p.id, cid)).collect();
        // Submission order, so callers and tests see a deterministic sequence.
        failed.sort_unstable_by_key(|(id, _)| *id);
        self.stats.failures += failed.len() as u64;
        for (id, correlation_id) in failed {
            self.events.push_back(ProxyEvent::Failed {
                id,
                correlation_id,
                error: RequestError::ConnectionClosed(reason.clone()),
            });
        }
        self.bodies = BodySequencer::new(self.config.max_body_streams);
        self.flow = FlowState::default();
        self.events.push_back(ProxyEvent::Closed(reason));
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
