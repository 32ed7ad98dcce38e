//! [`ClientHandle`]: what callers hold of a connection (the channel to its task and the shared
//! status), and the [`Command`]s they send on it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use agent_protocol_core::handshake::Negotiated;
use agent_protocol_core::{ByteStr, CancelReason, ConnectionError, RequestError};
use tokio::sync::{mpsc, oneshot};

use super::exchange::{Answered, Exchange};
use super::{ClientError, ConnectionStatus, REPLY_GRACE};
use crate::runtime::{self, Runtime};

/// Where a request's outcome goes: its exchange, holding the answer, or why there is none.
pub(super) type Reply = oneshot::Sender<Result<Answered, ClientError>>;

/// A caller's request to a connection task, queued on the client's channel. Opaque.
pub struct Command(pub(super) CommandKind);

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Command")
    }
}

pub(super) enum CommandKind {
    Send {
        /// The event, boxed in the exchange that brings the answer back: a command is a few
        /// words, written into the channel and read out of it.
        exchange: Box<Exchange>,
        deadline: Instant,
        reply: Reply,
    },
    Cancel {
        correlation_id: String,
        reason: CancelReason,
    },
    Ping {
        reply: oneshot::Sender<Result<Duration, ClientError>>,
    },
    /// The caller stopped waiting for its request under this id.
    Abandon {
        correlation_id: ByteStr,
    },
    /// The request under this id is over: drop its body streams and flow state.
    End {
        correlation_id: ByteStr,
    },
    Close,
}

/// What an [`AgentClient`](super::AgentClient) holds, without the runtime type: the pool keeps
/// these, and names the runtime only where a timer is needed.
#[derive(Clone, Debug)]
pub(crate) struct ClientHandle {
    pub(super) tx: mpsc::Sender<Command>,
    pub(super) status: Arc<ConnectionStatus>,
    pub(super) negotiated: Arc<Negotiated>,
    pub(super) request_timeout: Duration,
}

impl ClientHandle {
    /// A handle whose connection task is `rx`'s owner (or nobody), for unit tests of the pool.
    #[cfg(test)]
    pub(crate) fn detached(status: Arc<ConnectionStatus>) -> (Self, mpsc::Receiver<Command>) {
        use agent_protocol_core::{Capabilities, Encoding};
        let (tx, rx) = mpsc::channel(1);
        let negotiated = Negotiated {
            encoding: Encoding::Json,
            capabilities: Capabilities::new("test", "test", "0"),
            protocol_version: agent_protocol_core::handshake::PROTOCOL_VERSION,
        };
        let handle = ClientHandle {
            tx,
            status,
            negotiated: Arc::new(negotiated),
            request_timeout: Duration::from_secs(1),
        };
        (handle, rx)
    }

    pub(crate) fn status(&self) -> &Arc<ConnectionStatus> {
        &self.status
    }

    pub(crate) fn is_connected(&self) -> bool {
        self.status.is_connected() && !self.tx.is_closed()
    }

    /// The error for a connection whose task is gone: the reason it ended, as it recorded it.
    fn closed(&self) -> ClientError {
        closed_error(&self.status)
    }

    /// Sends the event in `exchange`; the answer comes back in the same box.
    pub(crate) async fn send_until<R: Runtime>(
        &self,
        exchange: Box<Exchange>,
        deadline: Instant,
    ) -> Result<Answered, ClientError> {
        let submitted = R::now();
        self.status.touch(submitted);
        let (reply, rx) = oneshot::channel();
        // Shares the event's bytes, as the connection's own table does: no copy.
        let correlation_id = exchange.event().map(|e| e.shared_correlation_id().clone());
        let command = Command(CommandKind::Send {
            exchange,
            deadline,
            reply,
        });
        // The channel almost always has room: only a full one needs a timer.
        match self.tx.try_send(command) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Closed(_)) => return Err(self.closed()),
            Err(mpsc::error::TrySendError::Full(command)) => {
                match runtime::timeout_at::<R, _>(deadline, self.tx.send(command)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return Err(self.closed()),
                    Err(_) => {
                        return Err(ClientError::QueueTimeout(
                            deadline.saturating_duration_since(submitted),
                        ))
                    }
                }
            }
        }
        // If the caller stops waiting, tell the connection so the agent stops working on it and
        // the in-flight slot frees now rather than at the deadline.
        let mut guard = AbandonGuard {
            tx: &self.tx,
            correlation_id,
        };
        // The connection task answers by the deadline; this wait has its own deadline anyway,
        // a little later so the task's answer (the informative one) normally wins, in case the
        // task is stalled. Then the guard abandons the request.
        let outcome = match runtime::timeout_at::<R, _>(deadline + REPLY_GRACE, rx).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(_)) => Err(self.closed()),
            Err(_) => {
                return Err(ClientError::Request(RequestError::Timeout(
                    deadline.saturating_duration_since(submitted),
                )))
            }
        };
        guard.correlation_id = None;
        outcome
    }

    pub(crate) async fn cancel(&self, correlation_id: &str, reason: CancelReason) {
        let _ = self
            .tx
            .send(Command(CommandKind::Cancel {
                correlation_id: correlation_id.to_owned(),
                reason,
            }))
            .await;
    }

    pub(crate) fn end_request<R: Runtime>(&self, correlation_id: ByteStr) {
        let command = Command(CommandKind::End { correlation_id });
        match self.tx.try_send(command) {
            // Closed: the connection's tables went with it.
            Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => {}
            Err(mpsc::error::TrySendError::Full(command)) => {
                // A busy connection: queue it behind the others rather than leave the stream
                // to the idle expiry.
                let tx = self.tx.clone();
                R::spawn(async move {
                    let _ = tx.send(command).await;
                });
            }
        }
    }

    pub(super) async fn ping<R: Runtime>(&self) -> Result<Duration, ClientError> {
        let (reply, rx) = oneshot::channel();
        if self
            .tx
            .send(Command(CommandKind::Ping { reply }))
            .await
            .is_err()
        {
            return Err(self.closed());
        }
        match runtime::timeout_at::<R, _>(R::now() + self.request_timeout, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(self.closed()),
            Err(_) => Err(ClientError::PingTimeout(self.request_timeout)),
        }
    }

    pub(crate) async fn close(&self) {
        let _ = self.tx.send(Command(CommandKind::Close)).await;
    }
}

/// The error for requests on a connection that ended: its recorded reason (a task that ends
/// always records one before it stops taking commands).
pub(super) fn closed_error(status: &ConnectionStatus) -> ClientError {
    let reason = status.close_reason().cloned();
    ClientError::Closed(reason.unwrap_or(ConnectionError::LocalClose))
}

struct AbandonGuard<'a> {
    tx: &'a mpsc::Sender<Command>,
    correlation_id: Option<ByteStr>,
}

impl Drop for AbandonGuard<'_> {
    fn drop(&mut self) {
        if let Some(correlation_id) = self.correlation_id.take() {
            // Best effort: if the channel is full the request's deadline cleans up instead.
            let _ = self
                .tx
                .try_send(Command(CommandKind::Abandon { correlation_id }));
        }
    }
}

/// What a gated client is told (see
/// [`AgentClient::from_established_gated`](super::AgentClient::from_established_gated)).
#[derive(Debug)]
pub(super) enum GateDecision {
    Open(bytes::Bytes),
    Refuse(bytes::Bytes),
}

/// Holds back a gated client (see
/// [`AgentClient::from_established_gated`](super::AgentClient::from_established_gated)).
#[derive(Debug)]
pub struct Gate {
    pub(super) tx: oneshot::Sender<GateDecision>,
}

impl Gate {
    /// Writes `preamble` (the registration answer) first, then lets traffic flow.
    pub fn open(self, preamble: bytes::Bytes) {
        let _ = self.tx.send(GateDecision::Open(preamble));
    }

    /// Writes `preamble` (a refusal) and closes the connection.
    pub fn refuse(self, preamble: bytes::Bytes) {
        let _ = self.tx.send(GateDecision::Refuse(preamble));
    }
}
