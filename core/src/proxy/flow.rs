//! The agent's flow control as the proxy applies it: pause and resume, per connection or per
//! request, and byte credit for body chunks.

use foldhash::HashMap;

use crate::control::{FlowAction, FlowControl};
use crate::error::SubmitError;

/// One request's flow state (or the connection's).
#[derive(Debug, Default, Clone, Copy)]
struct Gate {
    paused: bool,
    /// Bytes of body the agent can take, when it said so.
    credit: Option<u64>,
}

impl Gate {
    /// Applies `action`; returns whether it was a pause.
    fn apply(&mut self, action: FlowAction, buffer_available: Option<u64>) -> bool {
        match action {
            FlowAction::Pause => self.paused = true,
            FlowAction::Resume => {
                self.paused = false;
                self.credit = None;
            }
            FlowAction::UpdateCapacity => {
                if let Some(bytes) = buffer_available {
                    self.credit = Some(bytes);
                }
            }
        }
        action == FlowAction::Pause
    }
}

/// What the agent's flow-control signals allow, for the connection and per request.
#[derive(Debug, Default)]
pub(super) struct FlowState {
    connection: Gate,
    requests: HashMap<String, Gate>,
}

impl FlowState {
    /// Whether the agent paused the whole connection.
    pub(super) fn is_paused(&self) -> bool {
        self.connection.paused
    }

    /// Applies a signal. Per-request state is bounded by `max_requests`: past it a per-request
    /// signal is applied connection-wide, which is conservative for pause and harmless for
    /// resume. Returns whether it was a pause.
    pub(super) fn apply(&mut self, signal: &FlowControl, max_requests: usize) -> bool {
        let Some(cid) = &signal.correlation_id else {
            return self
                .connection
                .apply(signal.action, signal.buffer_available);
        };
        let len = self.requests.len();
        let gate = match self.requests.get_mut(cid.as_str()) {
            Some(gate) => gate,
            None if len >= max_requests => &mut self.connection,
            None => self.requests.entry(cid.clone()).or_default(),
        };
        gate.apply(signal.action, signal.buffer_available)
    }

    /// Checks that a body chunk of `len` bytes for `cid` may be sent now.
    pub(super) fn admit_chunk(&self, cid: &str, len: u64) -> Result<(), SubmitError> {
        let request = self.requests.get(cid);
        if request.is_some_and(|g| g.paused) {
            return Err(SubmitError::FlowControlPaused {
                correlation_id: Some(cid.to_owned()),
            });
        }
        let credits = [self.connection.credit, request.and_then(|g| g.credit)];
        for credit in credits.into_iter().flatten() {
            if len > credit {
                return Err(SubmitError::InsufficientCredit {
                    needed: len,
                    available: credit,
                });
            }
        }
        Ok(())
    }

    /// A chunk of `len` bytes for `cid` was sent: it uses up credit.
    pub(super) fn consume(&mut self, cid: &str, len: u64) {
        let request = self.requests.get_mut(cid).map(|g| &mut g.credit);
        for credit in [Some(&mut self.connection.credit), request]
            .into_iter()
            .flatten()
        {
            if let Some(c) = credit.as_mut() {
                *c = c.saturating_sub(len);
            }
        }
    }

    /// Forgets the request's state; returns whether there was any.
    pub(super) fn forget(&mut self, cid: &str) -> bool {
        self.requests.remove(cid).is_some()
    }
}
