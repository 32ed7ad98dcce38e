//! [`Pair`]: both ends of one connection in memory, with a simulated clock.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::agent::{AgentConfig, AgentEvent, AgentIncoming, AgentOutgoing};
use crate::agent::{RequestId as AgentRequestId, RespondError};
use crate::capabilities::Capabilities;
use crate::encoding::Encoding;
use crate::error::{ConnectionError, RequestError, SubmitError};
use crate::event::Event;
use crate::proxy::{ProxyConfig, ProxyEvent, ProxyIncoming, ProxyOutgoing, RequestId};
use crate::response::AgentResponse;

use super::{FramedAgent, FramedProxy};

/// What carries the pair's messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// Frames on a byte stream (Unix sockets, TCP): both ends encode and decode, through the
    /// agent's codec.
    Framed,
    /// Typed messages handed over as they are (what gRPC carries after its conversions).
    Messages,
}

/// A proxy connection wired to an agent connection in memory, with a simulated clock and a
/// record of what each side reported: the deterministic harness for whole-protocol behaviour.
///
/// ```
/// use agent_protocol_core::testing::{Pair, Transport};
/// use agent_protocol_core::{AgentResponse, Encoding, Event, RequestCompleteEvent};
///
/// for transport in [Transport::Framed, Transport::Messages] {
///     let mut pair = Pair::new(transport, &[Encoding::MsgPack], &[Encoding::MsgPack, Encoding::Json]);
///     let event = Event::RequestComplete(RequestCompleteEvent { correlation_id: "c1".into(), ..Default::default() });
///     let id = pair.submit(event, None).unwrap();
///     assert!(pair.answer_with(AgentResponse::allow()).is_ok());
///     assert!(pair.outcomes[&id].is_ok());
/// }
/// ```
#[derive(Debug)]
pub struct Pair {
    /// What carries the messages.
    pub transport: Transport,
    /// The simulated clock.
    pub now: Instant,
    /// The proxy end (its codec is idle on [`Transport::Messages`]).
    pub proxy: FramedProxy,
    /// The agent end (its codec is idle on [`Transport::Messages`]).
    pub agent: FramedAgent,
    /// Requests the agent has received and not yet answered: its id, and the correlation id.
    pub agent_pending: Vec<(AgentRequestId, String)>,
    /// The one outcome of each request the proxy accepted.
    pub outcomes: HashMap<RequestId, Result<AgentResponse, RequestError>>,
    /// Why the proxy end closed, once it did.
    pub proxy_closed: Option<ConnectionError>,
    /// Correlation ids the agent saw cancelled.
    pub agent_cancelled: Vec<String>,
    /// When false, whatever either end sends is lost (a dead wire).
    pub wire_up: bool,
    /// Messages the proxy sent on [`Transport::Messages`], not yet delivered.
    to_agent: VecDeque<ProxyOutgoing>,
}

impl Pair {
    /// Connects the two ends, the proxy offering `proxy_encodings` and the agent supporting
    /// `agent_encodings` (on [`Transport::Messages`] both are JSON, the nominal encoding of
    /// transports that encode messages themselves), and runs the handshake.
    pub fn new(
        transport: Transport,
        proxy_encodings: &[Encoding],
        agent_encodings: &[Encoding],
    ) -> Self {
        let now = Instant::now();
        let mut pcfg = ProxyConfig::default();
        pcfg.handshake.encodings = proxy_encodings.iter().copied().collect();
        let mut acfg = AgentConfig::default();
        acfg.handshake.encodings = agent_encodings.iter().copied().collect();
        acfg.handshake.capabilities =
            Capabilities::new("pair-agent", "Pair", "1").with_all_events();
        if transport == Transport::Messages {
            pcfg.handshake.encodings = [Encoding::Json].into_iter().collect();
            acfg.handshake.encodings = [Encoding::Json].into_iter().collect();
        }
        let proxy = FramedProxy::new(pcfg, now);
        let mut pair = Pair {
            transport,
            now,
            proxy,
            agent: FramedAgent::new(acfg, now),
            agent_pending: Vec::new(),
            outcomes: HashMap::new(),
            proxy_closed: None,
            agent_cancelled: Vec::new(),
            wire_up: true,
            to_agent: VecDeque::new(),
        };
        pair.drive();
        pair
    }

    /// Moves everything both ways and collects what each side reports, until nothing changes.
    pub fn drive(&mut self) {
        loop {
            let mut moved = match self.transport {
                Transport::Framed => self.move_bytes(),
                Transport::Messages => self.move_messages(),
            };
            while let Some(e) = self.proxy.poll_event() {
                moved = true;
                match e {
                    ProxyEvent::Response { id, response, .. } => {
                        assert!(
                            self.outcomes.insert(id, Ok(response)).is_none(),
                            "second outcome for {id}"
                        );
                    }
                    ProxyEvent::Failed { id, error, .. } => {
                        assert!(
                            self.outcomes.insert(id, Err(error)).is_none(),
                            "second outcome for {id}"
                        );
                    }
                    ProxyEvent::Closed(e) => self.proxy_closed = Some(e),
                    _ => {}
                }
            }
            while let Some(e) = self.agent.poll_event() {
                moved = true;
                match e {
                    AgentEvent::Request { id, event } => self
                        .agent_pending
                        .push((id, event.correlation_id().to_owned())),
                    AgentEvent::Cancelled {
                        id, correlation_id, ..
                    } => {
                        self.agent_pending.retain(|(i, _)| *i != id);
                        self.agent_cancelled.push(correlation_id);
                    }
                    _ => {}
                }
            }
            if !moved {
                return;
            }
        }
    }

    fn move_bytes(&mut self) -> bool {
        let mut moved = false;
        if let Some(b) = self.proxy.poll_transmit() {
            if self.wire_up {
                self.agent.handle_input(self.now, &b);
            }
            moved = true;
        }
        if let Some(b) = self.agent.poll_transmit() {
            if self.wire_up {
                self.proxy.handle_input(self.now, &b);
            }
            moved = true;
        }
        moved
    }

    fn move_messages(&mut self) -> bool {
        let mut moved = false;
        while let Some(message) = self.proxy.poll_message() {
            self.to_agent.push_back(message);
        }
        while let Some(message) = self.to_agent.pop_front() {
            moved = true;
            if self.wire_up {
                self.agent.conn.handle_message(self.now, to_agent(message));
            }
        }
        while let Some(message) = self.agent.conn.poll_message() {
            moved = true;
            if let (true, Some(message)) = (self.wire_up, to_proxy(message)) {
                self.proxy.handle_message(self.now, message);
            }
        }
        moved
    }

    /// Moves the clock forward, lets both ends see it, and drives.
    pub fn advance(&mut self, by: Duration) {
        self.now += by;
        self.proxy.handle_timeout(self.now);
        self.agent.handle_timeout(self.now);
        self.drive();
    }

    /// The proxy sends `event` (with its own deadline, or the default), then the pair drives.
    pub fn submit(
        &mut self,
        event: Event,
        timeout: Option<Duration>,
    ) -> Result<RequestId, SubmitError> {
        let r = match self.transport {
            Transport::Framed => self.proxy.send_event(self.now, event, timeout),
            Transport::Messages => {
                let queue = &mut self.to_agent;
                let transmit = |message| {
                    queue.push_back(message);
                    Ok(())
                };
                self.proxy
                    .conn
                    .send_event(self.now, event, timeout, transmit)
            }
        };
        self.drive();
        r
    }

    /// The agent answers its oldest pending request with `response`; returns what
    /// `respond` said.
    pub fn answer_with(&mut self, response: AgentResponse) -> Result<(), RespondError> {
        let (id, _) = self.agent_pending.remove(0);
        let r = self.agent.respond(id, response);
        self.drive();
        r
    }

    /// The agent answers its `index`-th pending request (modulo) with what `respond` makes of
    /// its correlation id; false when nothing is pending.
    pub fn answer_nth(
        &mut self,
        index: usize,
        respond: impl FnOnce(&str) -> AgentResponse,
    ) -> bool {
        if self.agent_pending.is_empty() {
            return false;
        }
        let (id, cid) = self.agent_pending.remove(index % self.agent_pending.len());
        let response = respond(&cid);
        self.agent
            .respond(id, response)
            .expect("a pending request is answerable");
        self.drive();
        true
    }
}

/// What the proxy sends, as the agent receives it.
fn to_agent(message: ProxyOutgoing) -> AgentIncoming {
    match message {
        ProxyOutgoing::Handshake(h) => AgentIncoming::Handshake(h),
        ProxyOutgoing::Event(e) => AgentIncoming::from(e),
        ProxyOutgoing::Cancel(c) => AgentIncoming::Cancel(c),
        ProxyOutgoing::Ping(p) => AgentIncoming::Ping(p),
    }
}

/// What the agent sends, as the proxy receives it (registration has no place on a message
/// transport).
fn to_proxy(message: AgentOutgoing) -> Option<ProxyIncoming> {
    Some(match message {
        AgentOutgoing::Handshake(h) => ProxyIncoming::Handshake(h),
        AgentOutgoing::Response {
            correlation_id,
            mut response,
        } => {
            response.correlation_id = Some(correlation_id);
            ProxyIncoming::Response { response }
        }
        AgentOutgoing::Pong(p) => ProxyIncoming::Pong(p),
        AgentOutgoing::Health(h) => ProxyIncoming::Health(h),
        AgentOutgoing::FlowControl(f) => ProxyIncoming::FlowControl(f),
        AgentOutgoing::Metrics(m) => ProxyIncoming::Metrics(m),
        AgentOutgoing::ConfigUpdate(c) => ProxyIncoming::ConfigUpdate(c),
        AgentOutgoing::Register(_) => return None,
    })
}
