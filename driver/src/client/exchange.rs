//! [`Exchange`]: a request's one allocation, which carries its event to the connection task and
//! brings the answer back.
//!
//! An event is some 600 bytes and an answer some 450. Moved by value, each would be copied at
//! every step between the caller and the connection task: into the command, out of it, into the
//! reply channel, out of it, and once more through each layer of the request's future. Boxed
//! once, they move as a pointer; and the box that took the event to the task is the one that
//! brings the answer back, so the request still costs a single allocation.

use agent_protocol_core::{AgentResponse, Event};

/// A request's event on its way to the connection task, then its answer on the way back.
pub(crate) struct Exchange(Stage);

// The box holds the largest stage anyway; the small one is the moment in between.
#[allow(clippy::large_enum_variant)]
enum Stage {
    Event(Event),
    /// The event was handed to the connection (and dropped once written); no answer yet.
    Sent,
    Answer(AgentResponse),
}

impl Exchange {
    /// The box for a request's event.
    pub(crate) fn new(event: Event) -> Box<Self> {
        Box::new(Self(Stage::Event(event)))
    }

    /// The event, until it is taken.
    pub(crate) fn event(&self) -> Option<&Event> {
        match &self.0 {
            Stage::Event(event) => Some(event),
            _ => None,
        }
    }

    /// Takes the event out to send it; the box waits for the answer.
    pub(crate) fn take_event(&mut self) -> Option<Event> {
        match std::mem::replace(&mut self.0, Stage::Sent) {
            Stage::Event(event) => Some(event),
            other => {
                self.0 = other;
                None
            }
        }
    }

    /// Puts the answer in the box, for the caller.
    pub(crate) fn answer(mut self: Box<Self>, response: AgentResponse) -> Answered {
        self.0 = Stage::Answer(response);
        Answered(self)
    }
}

/// An exchange holding its answer (only [`Exchange::answer`] and [`Answered::local`] make one),
/// passed up the request's layers as a pointer and opened by the outermost.
pub(crate) struct Answered(Box<Exchange>);

impl Answered {
    /// An answer decided without the agent (a flow-control policy that allows).
    pub(crate) fn local(response: AgentResponse) -> Self {
        Self(Box::new(Exchange(Stage::Answer(response))))
    }

    pub(crate) fn response(&self) -> &AgentResponse {
        match &self.0 .0 {
            Stage::Answer(response) => response,
            Stage::Event(_) | Stage::Sent => unreachable!("an Answered exchange holds its answer"),
        }
    }

    pub(crate) fn into_response(self) -> AgentResponse {
        match self.0 .0 {
            Stage::Answer(response) => response,
            Stage::Event(_) | Stage::Sent => unreachable!("an Answered exchange holds its answer"),
        }
    }
}

impl std::fmt::Debug for Answered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.response().fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_protocol_core::{Decision, RequestCompleteEvent};

    #[test]
    fn the_box_that_carried_the_event_brings_the_answer_back() {
        let event = Event::RequestComplete(RequestCompleteEvent {
            correlation_id: "c-1".into(),
            ..Default::default()
        });
        let mut exchange = Exchange::new(event.clone());
        assert_eq!(exchange.event(), Some(&event));
        let at = &*exchange as *const Exchange;
        assert_eq!(exchange.take_event(), Some(event));
        assert!(exchange.event().is_none());
        assert!(exchange.take_event().is_none(), "the event is taken once");
        let answered = exchange.answer(AgentResponse::block(403, "no"));
        assert_eq!(&*answered.0 as *const Exchange, at, "no new allocation");
        assert!(matches!(
            answered.response().decision,
            Decision::Block { status: 403, .. }
        ));
        assert_eq!(answered.into_response().decision.kind(), "block");
    }
}
