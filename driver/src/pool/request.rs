//! The request path: one event from the caller to its outcome.
//!
//! A call is let in (unless the pool is shutting down), admitted by the agent's circuit
//! breaker, then routed: request headers are load balanced and pin their connection once the
//! agent answers; a request's later events follow that pin (strictly for body chunks, whose
//! stream state lives on that connection). A pause met before or after sending is handled by
//! the configured flow-control policy, which may wait and try again. The outcome is recorded
//! once, in the agent's metrics, in the connection's error rate and in the breaker's verdict.
//!
//! Nothing here takes a lock other than an affinity stripe, and every wait ends by the
//! deadline computed when the call started.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use agent_protocol_core::metrics::{DecisionKind, ErrorCause};
use agent_protocol_core::pool::{FlowControlMode, FlowDecision, SelectError};
use agent_protocol_core::{AgentResponse, ByteStr, CancelReason, Event, RequestError, SubmitError};
use tracing::Instrument;

use super::affinity::ConnId;
use super::entry::{AgentEntry, Candidates, PooledConnection};
use super::registry::{deadline_after, PoolInner};
use super::PoolError;
use crate::client::{Answered, ClientError, Exchange};
use crate::runtime::{self, Runtime};
use crate::spans;

/// While waiting for a resume, re-check at least this often (a per-request resume or a credit
/// update is not visible in the connection's status, only through its notification).
const RESUME_RECHECK: Duration = Duration::from_millis(10);

impl<R: Runtime> PoolInner<R> {
    /// Sends one event to `agent_id` with its own timeout, counted from this call; see
    /// [`AgentPool::send_event_with_timeout`].
    ///
    /// [`AgentPool::send_event_with_timeout`]: super::AgentPool::send_event_with_timeout
    pub(super) async fn request(
        &self,
        agent_id: &str,
        event: Event,
        timeout: Duration,
    ) -> Result<AgentResponse, PoolError> {
        let span = spans::pool_request(agent_id, &event);
        let submitted = R::now();
        let deadline = deadline_after(submitted, timeout);
        let _active = self.enter()?;
        let entry = self
            .entry(agent_id)
            .ok_or_else(|| PoolError::AgentNotFound(agent_id.to_owned()))?;
        let _in_flight = entry.metrics.start_request();
        let permit = match entry.admit(submitted) {
            Ok(p) => p,
            Err(open) => {
                entry.metrics.record_error(ErrorCause::Rejected);
                return Err(PoolError::CircuitOpen {
                    agent: agent_id.to_owned(),
                    retry_in: open.retry_at.saturating_duration_since(submitted),
                });
            }
        };
        let route = Route::of(&event);
        // Shares the event's bytes: the pin and the connection's table keep it without a copy.
        let cid = event.shared_correlation_id().clone();
        let exchange = Exchange::new(event);
        // Wrapping the request's future moves it once more: worth it only when the span is
        // enabled.
        let (result, verdict) = if span.is_disabled() {
            drop(span);
            self.run(&entry, exchange, route, cid, submitted, deadline)
                .await
        } else {
            self.run(&entry, exchange, route, cid, submitted, deadline)
                .instrument(span)
                .await
        };
        match verdict {
            Verdict::Success => permit.success(R::now()),
            Verdict::Failure => permit.failure(R::now()),
            Verdict::Neutral => permit.abandon(),
        }
        // The answer leaves its box here, once, rather than at every layer.
        result.map(Answered::into_response)
    }

    /// Cancels a pending event of a request, on its pinned connection or on all; see
    /// [`AgentPool::cancel_request`].
    ///
    /// [`AgentPool::cancel_request`]: super::AgentPool::cancel_request
    pub(super) async fn cancel(
        &self,
        agent_id: &str,
        correlation_id: &str,
        reason: CancelReason,
    ) -> Result<(), PoolError> {
        let entry = self
            .entry(agent_id)
            .ok_or_else(|| PoolError::AgentNotFound(agent_id.to_owned()))?;
        let conns = entry.conns.load_full();
        let pinned = self
            .affinity
            .remove(entry.index, correlation_id)
            .and_then(|id| conns.iter().find(|c| c.id == id && c.is_connected()));
        match pinned {
            Some(c) => c.client.cancel(correlation_id, reason).await,
            None => {
                for c in conns.iter() {
                    c.client.cancel(correlation_id, reason).await;
                }
            }
        }
        Ok(())
    }

    /// Forgets a request's pin and tells its connection (or, unpinned, every connection) that
    /// the request is over; see [`AgentPool::clear_correlation_affinity`].
    ///
    /// [`AgentPool::clear_correlation_affinity`]: super::AgentPool::clear_correlation_affinity
    pub(super) fn end_request(&self, agent_id: &str, correlation_id: &str) -> bool {
        let Some(entry) = self.entry(agent_id) else {
            return false;
        };
        // The pin's key is the request's id, shared: telling the connection costs no copy.
        let pinned = self.affinity.remove_entry(entry.index, correlation_id);
        let conns = entry.conns.load();
        match &pinned {
            // A pinned connection that is gone took the request's state with it.
            Some((cid, id)) => {
                if let Some(c) = conns.iter().find(|c| c.id == *id) {
                    c.client.end_request::<R>(cid.clone());
                }
            }
            None => {
                let cid = ByteStr::from(correlation_id);
                for c in conns.iter() {
                    c.client.end_request::<R>(cid.clone());
                }
            }
        }
        pinned.is_some()
    }

    /// One request, from connection choice to outcome, with every metric recorded. Returns the
    /// outcome and what it means for the breaker.
    async fn run(
        &self,
        entry: &AgentEntry,
        // The event, boxed once: it moves as a pointer through the request's future and the
        // connection's command channel, and the answer comes back in the same box.
        mut exchange: Box<Exchange>,
        route: Route,
        cid: ByteStr,
        submitted: Instant,
        deadline: Instant,
    ) -> (Result<Answered, PoolError>, Verdict) {
        let retry = self.config.flow_control.mode == FlowControlMode::WaitAndRetry;
        loop {
            let conn = match self.pick(entry, route, &cid, R::now()) {
                Ok(c) => c,
                Err(Pick::Blocked(blockers)) => {
                    match self
                        .backpressure(entry, &blockers, true, submitted, deadline)
                        .await
                    {
                        Flow::Retry => continue,
                        Flow::Done(r) => return (r, Verdict::Neutral),
                    }
                }
                Err(Pick::Fail(e, verdict)) => {
                    let connection_lost = matches!(
                        e,
                        PoolError::NoConnections { .. }
                            | PoolError::AffinityLost { .. }
                            | PoolError::AllUnavailable {
                                paused: 0,
                                unhealthy: 0,
                                saturated: 0,
                                ..
                            }
                    );
                    let cause = if connection_lost {
                        // Let maintenance prune and replace what died now, not at its tick.
                        self.wake.notify_one();
                        ErrorCause::Connection
                    } else {
                        ErrorCause::Rejected
                    };
                    entry.metrics.record_error(cause);
                    return (Err(e), verdict);
                }
            };
            if route == Route::Complete {
                // The pin has been used; forget it now, whatever the outcome (done before the
                // event moves into the connection, so no copy of the id is needed).
                self.affinity.remove(entry.index, &cid);
            }
            // Under wait-and-retry, a pause that races the selection means sending the event
            // again: a copy is kept. Otherwise the event itself goes, saving the copy (and each
            // move of it: an event is some 500 bytes).
            let kept = retry
                .then(|| exchange.event().cloned().map(Exchange::new))
                .flatten();
            let result = {
                let _pending = conn.begin();
                conn.client.send_until::<R>(exchange, deadline).await
            };
            if result.as_ref().is_err_and(ClientError::is_flow_control) {
                let flow = self
                    .backpressure(
                        entry,
                        std::slice::from_ref(&conn),
                        false,
                        submitted,
                        deadline,
                    )
                    .await;
                match (flow, kept) {
                    (Flow::Retry, Some(again)) => {
                        exchange = again;
                        continue;
                    }
                    (Flow::Done(r), _) => return (r, Verdict::Neutral),
                    // Only wait-and-retry waits, and it always keeps the event.
                    (Flow::Retry, None) => {
                        let paused = PoolError::FlowControlPaused {
                            agent: entry.id.to_string(),
                        };
                        return (Err(paused), Verdict::Neutral);
                    }
                }
            }
            // The pin is recorded only for headers the agent actually answered: a failed,
            // timed-out or abandoned request leaves no affinity behind, with no guard. A body
            // chunk cannot overtake its headers on one connection (the connection refuses a
            // second pending event with the same id).
            if route == Route::Bind && result.is_ok() {
                self.bind(entry, cid, conn.id);
            }
            return self.conclude(entry, &conn, result, submitted);
        }
    }

    /// Picks the connection for one attempt. Reads atomics and the affinity stripe only.
    fn pick(
        &self,
        entry: &AgentEntry,
        route: Route,
        cid: &str,
        now: Instant,
    ) -> Result<Arc<PooledConnection>, Pick> {
        let conns = entry.conns.load();
        if matches!(route, Route::Strict | Route::Prefer | Route::Complete) {
            if let Some(pinned) = self.affinity.get(entry.index, cid, now) {
                match conns.iter().find(|c| c.id == pinned && c.is_connected()) {
                    Some(c) if c.is_paused() => return Err(Pick::Blocked(vec![c.clone()])),
                    Some(c) => return Ok(c.clone()),
                    None if route == Route::Strict => {
                        return Err(Pick::Fail(
                            PoolError::AffinityLost {
                                agent: entry.id.to_string(),
                                correlation_id: cid.to_owned(),
                            },
                            Verdict::Failure,
                        ))
                    }
                    None => {}
                }
            }
        }
        entry.note_demand(&self.wake);
        let selected = entry
            .selector
            .select(self.config.load_balance_strategy, &Candidates(&conns));
        match selected {
            Ok(i) => conns.get(i).cloned().ok_or_else(|| {
                Pick::Fail(
                    PoolError::NoConnections {
                        agent: entry.id.to_string(),
                    },
                    Verdict::Failure,
                )
            }),
            Err(e) if e.all_paused() => Err(Pick::Blocked(conns.iter().cloned().collect())),
            Err(SelectError::NoConnections) => Err(Pick::Fail(
                PoolError::NoConnections {
                    agent: entry.id.to_string(),
                },
                Verdict::Failure,
            )),
            Err(SelectError::AllUnavailable {
                paused,
                unhealthy,
                disconnected,
                saturated,
            }) => {
                // Saturation and pauses are load, not agent failure; only an agent that is
                // down or says it cannot serve counts against the breaker.
                let verdict = if paused + saturated == 0 {
                    Verdict::Failure
                } else {
                    Verdict::Neutral
                };
                Err(Pick::Fail(
                    PoolError::AllUnavailable {
                        agent: entry.id.to_string(),
                        paused,
                        unhealthy,
                        disconnected,
                        saturated,
                    },
                    verdict,
                ))
            }
        }
    }

    /// Applies the flow-control policy to a request that met a pause.
    async fn backpressure(
        &self,
        entry: &AgentEntry,
        blockers: &[Arc<PooledConnection>],
        check_status: bool,
        submitted: Instant,
        deadline: Instant,
    ) -> Flow {
        let now = R::now();
        let reject = || {
            entry.metrics.record_flow_control_rejection();
            Flow::Done(Err(PoolError::FlowControlPaused {
                agent: entry.id.to_string(),
            }))
        };
        match self.config.flow_control.on_paused(submitted, now) {
            FlowDecision::Reject => reject(),
            FlowDecision::AllowWithoutAgent => {
                entry.metrics.record_flow_control_rejection();
                Flow::Done(Ok(Answered::local(AgentResponse::allow())))
            }
            FlowDecision::WaitUntil(limit) => {
                let until = limit.min(deadline);
                if until <= now {
                    return reject();
                }
                wait_for_resume::<R>(blockers, until, check_status).await;
                Flow::Retry
            }
        }
    }

    /// Pins `cid` to `conn` (counted when the table is full).
    fn bind(&self, entry: &AgentEntry, cid: ByteStr, conn: ConnId) {
        if self
            .affinity
            .insert(entry.index, cid, conn, R::now())
            .is_err()
        {
            entry.metrics.record_affinity_rejection();
        }
    }

    /// Records the outcome of a sent request.
    fn conclude(
        &self,
        entry: &AgentEntry,
        conn: &PooledConnection,
        result: Result<Answered, ClientError>,
        submitted: Instant,
    ) -> (Result<Answered, PoolError>, Verdict) {
        let m = &entry.metrics;
        match result {
            Ok(response) => {
                m.record_response(
                    DecisionKind::from(&response.response().decision),
                    R::now().saturating_duration_since(submitted),
                );
                conn.errors.record(true);
                (Ok(response), Verdict::Success)
            }
            Err(e) => {
                let verdict = match classify(&e) {
                    Class::Timeout => {
                        m.record_timeout();
                        conn.errors.record(false);
                        Verdict::Failure
                    }
                    Class::Cancelled => {
                        m.record_cancel();
                        Verdict::Neutral
                    }
                    Class::Connection => {
                        m.record_error(ErrorCause::Connection);
                        conn.errors.record(false);
                        self.wake.notify_one();
                        Verdict::Failure
                    }
                    Class::Protocol => {
                        m.record_error(ErrorCause::Protocol);
                        conn.errors.record(false);
                        Verdict::Failure
                    }
                    Class::Serialization => {
                        m.record_error(ErrorCause::Serialization);
                        Verdict::Neutral
                    }
                    Class::Rejected => {
                        m.record_error(ErrorCause::Rejected);
                        Verdict::Neutral
                    }
                };
                (Err(PoolError::Client(e)), verdict)
            }
        }
    }
}

/// Waits until one of `blockers` signals a resume (or closes), `until` passes, or
/// [`RESUME_RECHECK`] elapses. With `check_status`, returns at once when a blocker is already
/// unpaused; the waiters are registered before that check, so a resume in between is not
/// missed.
async fn wait_for_resume<R: Runtime>(
    blockers: &[Arc<PooledConnection>],
    until: Instant,
    check_status: bool,
) {
    type Waiter<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;
    let mut waiters: Vec<Waiter<'_>> = blockers
        .iter()
        .map(|c| Box::pin(c.client.status().resumed()) as Waiter<'_>)
        .collect();
    let mut poll_all = move |cx: &mut std::task::Context<'_>| {
        waiters.iter_mut().any(|w| w.as_mut().poll(cx).is_ready())
    };
    // First poll registers every waiter.
    let ready = std::future::poll_fn(|cx| Poll::Ready(poll_all(cx))).await;
    if ready || (check_status && blockers.iter().any(|c| !c.is_paused())) {
        return;
    }
    let slice = until.min(R::now() + RESUME_RECHECK);
    let wait = std::future::poll_fn(|cx| {
        if poll_all(cx) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    });
    let _ = runtime::timeout_at::<R, _>(slice, wait).await;
}

/// How an event picks its connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    /// Load balancing only (guardrail inspections, configuration).
    Select,
    /// Load balancing, then pin the request to the chosen connection (request headers).
    Bind,
    /// The pinned connection or nothing (body chunks: the stream state lives there).
    Strict,
    /// The pinned connection if it is alive, else load balancing (response headers, WebSocket
    /// frames).
    Prefer,
    /// Like `Prefer`, then forget the pin (request complete).
    Complete,
}

impl Route {
    fn of(event: &Event) -> Self {
        match event {
            Event::RequestHeaders(_) => Self::Bind,
            Event::RequestBodyChunk(_) | Event::ResponseBodyChunk(_) => Self::Strict,
            Event::ResponseHeaders(_) | Event::WebSocketFrame(_) => Self::Prefer,
            Event::RequestComplete(_) => Self::Complete,
            Event::GuardrailInspect(_) | Event::Configure(_) => Self::Select,
        }
    }
}

/// Why no connection was picked.
enum Pick {
    /// Every candidate is paused by flow control: apply the policy, waiting on these.
    Blocked(Vec<Arc<PooledConnection>>),
    /// A plain failure.
    Fail(PoolError, Verdict),
}

/// What a request's outcome means for the agent's circuit breaker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    Success,
    Failure,
    Neutral,
}

/// What the flow-control policy says after a pause was met.
// Built once per pause and consumed at once; boxing the outcome would allocate on the path
// that is already the slow one without saving anything.
#[allow(clippy::large_enum_variant)]
enum Flow {
    Retry,
    Done(Result<Answered, PoolError>),
}

/// How a client error counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    Timeout,
    Cancelled,
    Connection,
    Protocol,
    Serialization,
    Rejected,
}

fn classify(e: &ClientError) -> Class {
    match e {
        ClientError::QueueTimeout(_)
        | ClientError::PingTimeout(_)
        | ClientError::Request(RequestError::Timeout(_)) => Class::Timeout,
        ClientError::Request(RequestError::Cancelled(_)) => Class::Cancelled,
        ClientError::Connect { .. }
        | ClientError::Closed(_)
        | ClientError::Request(RequestError::ConnectionClosed(_))
        | ClientError::Rejected(SubmitError::NotReady | SubmitError::Closed(_)) => {
            Class::Connection
        }
        // A malformed answer, or a way of failing added to the core since.
        ClientError::Request(_) => Class::Protocol,
        ClientError::Rejected(SubmitError::Encode(_)) => Class::Serialization,
        ClientError::Rejected(_) | ClientError::PingRefused => Class::Rejected,
    }
}
