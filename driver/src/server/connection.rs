//! The one connection task of the agent side, whatever the transport: [`serve_link`] drives an
//! [`AgentConnection`] over an [`AgentLink`] and runs the handler's futures beside it.

use std::future::{poll_fn, Future};
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use agent_protocol_core::agent::{
    AgentConnection, AgentEvent, AgentIncoming, AgentOutgoing, RequestId,
};
use agent_protocol_core::metrics::DecisionKind;
use agent_protocol_core::{
    AgentResponse, ConfigureEvent, ConnectionError, Event, HealthState, HealthStatus,
};
use foldhash::{HashMap, HashMapExt};
use futures_util::future::{AbortHandle, Abortable, Aborted, BoxFuture, FutureExt};
use futures_util::stream::{FuturesUnordered, StreamExt};

use tokio::sync::broadcast::error::RecvError;
use tracing::{Instrument, Span};

use super::{dispatch, shutdown_signal, unix_ms, AgentHandler, Push, ServerHandle};
use crate::runtime::{self, Runtime};
use crate::spans;

/// Bytes the unanswered events hold ([`AgentConnection::in_flight_bytes`]: each event's box,
/// bodies, headers, ids, the payload copies they share) past which an agent connection stops
/// reading until handlers finish.
///
/// A handler holds its event until it answers, and the in-flight limit bounds only how many
/// events that is, not their size: 4096 body chunks of up to 16 MiB each would be 64 GiB, so a
/// proxy sending large events to a slow handler could grow the agent without bound. With reading
/// paused, the proxy's writes block instead: back-pressure, not refusal, so a legitimate burst
/// only waits for handlers to finish. 64 MiB is four maximal frames, enough to keep many
/// ordinary requests moving at once.
///
/// The check is made before each read: what one read completes is still decoded and handed to
/// the handlers, so the bytes held can exceed the bound by one read (up to a frame), and a
/// single event larger than the bound is still processed, alone. While reading is paused
/// nothing else arrives, Cancel and Ping included, so a handler that waits for a later event of
/// the same connection before answering must not hold this much; and a handler must end on
/// its own, since a paused connection only notices the proxy leaving when it next writes.
pub const MAX_IN_FLIGHT_BYTES: usize = 64 * 1024 * 1024;

/// What a transport received for the connection.
// Messages are the common case; boxing them would cost an allocation each.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
#[non_exhaustive]
pub enum Received {
    /// A message from the proxy.
    Message(AgentIncoming),
    /// A Configure to run without an answer: the reference's gRPC schema gives Configure no
    /// correlation id and its proxy does not wait for an answer. At most one runs at a time; a
    /// newer one waiting replaces an older one (configurations supersede each other).
    Unanswered(ConfigureEvent),
    /// The transport ended, or failed, for this reason.
    Closed(ConnectionError),
}

/// One agent connection's transport, as the connection task sees it: messages in, messages out.
///
/// Implemented by [`FramedLink`](super::FramedLink) (byte streams, through the core's
/// [`AgentCodec`](agent_protocol_core::agent::AgentCodec)) and by the tokio adapter's gRPC
/// stream. Poll methods follow the usual contract: `Pending` registers the waker.
pub trait AgentLink: Send {
    /// Whether answers are sent with the time the handler took (gRPC's `processing_time_ms`);
    /// the task reads the clock around each handler only then.
    const TIMES_ANSWERS: bool = false;

    /// The encoding of every message on this transport when the transport chooses it rather
    /// than the handshake (gRPC: `protobuf`); the connection's span records it as its
    /// `encoding` instead of the negotiated one.
    const TRANSPORT_ENCODING: Option<&'static str> = None;

    /// Reads from the transport once; what arrived comes out of [`AgentLink::try_recv`].
    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<()>;

    /// The next thing already received, without touching the transport.
    fn try_recv(&mut self) -> Option<Received>;

    /// Queues one of the connection's messages; `handler_time` is set for an answer when
    /// [`AgentLink::TIMES_ANSWERS`]. An `Err` means the connection cannot go on (not even a
    /// fail-closed answer could be queued in an answer's place).
    fn send(
        &mut self,
        message: AgentOutgoing,
        handler_time: Option<Duration>,
    ) -> Result<(), ConnectionError>;

    /// Whether anything queued is still unsent.
    fn has_unsent(&self) -> bool;

    /// Whether so much is unsent that the task should stop reading until the peer takes some:
    /// a proxy that writes without reading must not make the agent queue answers without limit.
    fn is_backlogged(&self) -> bool;

    /// Sends some of what is queued. An error ends the connection, and what was unsent is
    /// dropped.
    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ConnectionError>>;

    /// Resolves when the peer is known to be gone even though nothing is being read or written
    /// (a gRPC proxy cancelling its call). The default never resolves.
    fn poll_gone(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let _ = cx;
        Poll::Pending
    }

    /// The connection closed for `reason`: queue whatever the transport sends last (a gRPC
    /// status). Called once; the task then flushes what is unsent and calls
    /// [`AgentLink::shutdown`].
    fn close(&mut self, reason: &ConnectionError) {
        let _ = reason;
    }

    /// Ends the transport (shuts the write direction of a socket down).
    fn shutdown(&mut self) -> impl Future<Output = ()> + Send {
        async {}
    }
}

/// Serves one agent connection over `link` until it closes: hands each event to `handler`,
/// sends the answers, and drains on shutdown within `drain_timeout`. Counts itself in `handle`.
/// Returns the closed connection, for what it learnt ([`AgentConnection::close_reason`],
/// [`AgentConnection::registration`]).
///
/// The framed link ([`FramedLink`](super::FramedLink): Unix sockets, TCP, reverse connections)
/// lives in this crate, the gRPC link in the tokio adapter; fairness, back-pressure, draining
/// and the handshake deadline are written here once for both.
///
/// Fairness: a peer can keep its transport readable forever, so reading is the last thing the
/// task looks at each turn; writes, finished handlers, pushes, shutdown and the handshake deadline
/// come first, and each is ready only when it has work. A turn reads once and hands what that
/// read completed to the connection before going round again, so nothing waits behind more than
/// one read's worth of decoding. Reading pauses while the link has too much unsent (see
/// [`AgentLink::is_backlogged`]) and while the events handlers hold weigh more than
/// [`MAX_IN_FLIGHT_BYTES`]; it resumes as the transport drains and handlers finish.
///
/// The task runs in a [`CONNECTION`](crate::spans::CONNECTION) span: the current one when it is
/// such a span (see [`spans::agent_connection`]), else one of its own, which names no peer.
/// The handshake's outcome is recorded in it.
pub async fn serve_link<L: AgentLink, H: AgentHandler, R: Runtime>(
    conn: AgentConnection,
    link: L,
    handler: Arc<H>,
    handle: ServerHandle,
    drain_timeout: Duration,
) -> AgentConnection {
    handle.connection_opened();
    let adopted = spans::current_agent_connection();
    let own = adopted.is_none();
    let span = adopted.unwrap_or_else(|| spans::agent_connection_unnamed(handle.agent_id()));
    let mut task = ConnectionTask {
        conn,
        link,
        handler,
        handle: handle.clone(),
        aborts: HashMap::new(),
        configure: UnansweredConfigure::default(),
        link_closed: false,
        span: span.clone(),
        fail_closed_counted: 0,
    };
    if own {
        task.run::<R>(drain_timeout).instrument(span).await;
    } else {
        task.run::<R>(drain_timeout).await;
    }
    handle.connection_closed();
    task.conn
}

/// How often a draining connection looks at its drain deadline.
const DRAIN_TICK: Duration = Duration::from_millis(50);

/// A finished handler: the request and its answer.
type Answer = (RequestId, AgentResponse);

/// A running handler: how to abort it, and when it started (kept only when the link times
/// answers, beside the future rather than in it, which would move each event once more).
type Running = (AbortHandle, Option<Instant>);

struct ConnectionTask<L, H> {
    conn: AgentConnection,
    link: L,
    handler: Arc<H>,
    handle: ServerHandle,
    aborts: HashMap<RequestId, Running>,
    configure: UnansweredConfigure,
    /// Whether [`AgentLink::close`] was called.
    link_closed: bool,
    /// The connection's span, for what the handshake settles.
    span: Span,
    /// The connection's fail-closed answers already added to the server's metrics.
    fail_closed_counted: u64,
}

/// What woke the connection task, in the order the task looks at them.
enum Wake {
    Flushed(Result<(), ConnectionError>),
    /// A handler finished; its answer is in the task's `answered` slot (kept out of this enum,
    /// so waking stays a small copy).
    Answered,
    Configured,
    Pushed(Result<Push, RecvError>),
    Shutdown,
    Deadline,
    Gone,
    Tick,
    Read,
}

impl<L: AgentLink, H: AgentHandler> ConnectionTask<L, H> {
    async fn run<R: Runtime>(&mut self, drain_timeout: Duration) {
        let mut running = FuturesUnordered::new();
        // Where each handler future is first polled; see `start`.
        let mut first_poll = Box::pin(None);
        let mut push_rx = self.handle.subscribe_pushes();
        let mut shutdown = self.handle.shutdown_receiver();
        let mut draining: Option<Instant> = None;
        loop {
            // Whatever is already received (bytes that came with a handshake or registration
            // answer, the rest of the last read) goes to the connection first.
            self.receive();
            while let Some(event) = self.conn.poll_event() {
                match event {
                    AgentEvent::Request { id, event } => {
                        let timed = L::TIMES_ANSWERS || self.handle.metrics().timed();
                        let started = timed.then(Instant::now);
                        self.handle.requests_started(1);
                        let request = dispatch(self.handler.clone(), id, event);
                        match start(&mut first_poll, request) {
                            Some(answer) => self.finish(Ok(answer), started),
                            None => {
                                let (abort, registration) = AbortHandle::new_pair();
                                self.aborts.insert(id, (abort, started));
                                let parked = std::mem::replace(&mut first_poll, Box::pin(None));
                                running.push(Abortable::new(Parked(parked), registration));
                            }
                        }
                    }
                    AgentEvent::Cancelled { id, .. } => {
                        if let Some((abort, _)) = self.aborts.remove(&id) {
                            abort.abort();
                        }
                    }
                    AgentEvent::Established { negotiated, proxy } => {
                        let encoding =
                            L::TRANSPORT_ENCODING.unwrap_or(negotiated.encoding.as_str());
                        self.span.record("encoding", encoding);
                        if let Some(proxy) = &proxy {
                            self.span.record("proxy", proxy.proxy_id.as_str());
                        }
                        tracing::debug!(encoding, "proxy connection established");
                    }
                    AgentEvent::Closed(reason) => {
                        tracing::debug!(%reason, "proxy connection closed");
                    }
                    other => tracing::debug!(?other, "agent connection event"),
                }
            }
            self.count_fail_closed();
            self.flush_messages(None);
            let closed = self.conn.is_closed();
            if closed && !self.link_closed {
                self.link_closed = true;
                if let Some(reason) = self.conn.close_reason() {
                    self.link.close(reason);
                }
            }
            if closed && !self.link.has_unsent() {
                break;
            }
            if let Some(since) = draining {
                if (running.is_empty() && !self.link.has_unsent())
                    || R::now().saturating_duration_since(since) >= drain_timeout
                {
                    self.conn.close();
                    break;
                }
            }
            let deadline = self.conn.poll_timeout();
            let reading = !closed
                && draining.is_none()
                && !self.link.is_backlogged()
                && self.conn.in_flight_bytes() <= MAX_IN_FLIGHT_BYTES;
            let flushing = self.link.has_unsent();
            let pushes = !closed && self.conn.is_established();
            let mut pushed = pin!(push_rx.recv());
            let mut stopped = pin!(shutdown_signal(&mut shutdown));
            let mut timer = pin!(runtime::sleep_until_opt::<R>(deadline));
            let mut tick = pin!(runtime::sleep_until_opt::<R>(
                draining.map(|_| R::now() + DRAIN_TICK)
            ));
            let link = &mut self.link;
            let configure = &mut self.configure.running;
            let mut answered = None;
            // A hand-written biased select: each source is looked at only when it has work,
            // and reading comes last, so a peer that keeps the transport readable cannot hold
            // back answers, pushes, a drain or the handshake deadline.
            let wake = poll_fn(|cx| {
                if flushing {
                    if let Poll::Ready(r) = link.poll_flush(cx) {
                        return Poll::Ready(Wake::Flushed(r));
                    }
                }
                if let Poll::Ready(Some(done)) = running.poll_next_unpin(cx) {
                    answered = Some(done);
                    return Poll::Ready(Wake::Answered);
                }
                if let Some(future) = configure.as_mut() {
                    if future.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Wake::Configured);
                    }
                }
                if pushes {
                    if let Poll::Ready(push) = pushed.as_mut().poll(cx) {
                        return Poll::Ready(Wake::Pushed(push));
                    }
                }
                if draining.is_none() && stopped.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Wake::Shutdown);
                }
                if timer.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Wake::Deadline);
                }
                if link.poll_gone(cx).is_ready() {
                    return Poll::Ready(Wake::Gone);
                }
                if tick.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Wake::Tick);
                }
                if reading && link.poll_read(cx).is_ready() {
                    return Poll::Ready(Wake::Read);
                }
                Poll::Pending
            })
            .await;
            match wake {
                Wake::Flushed(Err(reason)) => self.conn.handle_closed(reason),
                Wake::Flushed(Ok(())) | Wake::Tick | Wake::Read => {}
                Wake::Answered => {
                    if let Some(done) = answered {
                        self.finish_running(done);
                    }
                    // Everything else already finished goes out with it.
                    while let Some(Some(done)) = running.next().now_or_never() {
                        self.finish_running(done);
                    }
                }
                Wake::Configured => self.configure.finished(&self.handler, &self.handle),
                Wake::Pushed(push) => {
                    let sent = match push {
                        Ok(Push::Health(h)) => self.conn.send_health(&h),
                        Ok(Push::FlowControl(f)) => self.conn.send_flow_control(&f),
                        Ok(Push::Metrics(m)) => self.conn.send_metrics(&m),
                        Err(_) => Ok(()),
                    };
                    if let Err(e) = sent {
                        tracing::debug!(error = %e, "could not push a control message");
                    }
                }
                Wake::Shutdown => {
                    draining = Some(R::now());
                    if self.conn.is_established() {
                        let _ = self.conn.send_health(&HealthStatus {
                            agent_id: self.handle.agent_id().to_owned(),
                            state: HealthState::Draining,
                            message: Some("shutting down".into()),
                            timestamp_ms: unix_ms(),
                        });
                    }
                }
                Wake::Deadline => self.conn.handle_timeout(R::now()),
                Wake::Gone => self.conn.handle_closed(ConnectionError::PeerClosed),
            }
        }
        // Whatever is still running is abandoned with the connection.
        for (_, (abort, _)) in self.aborts.drain() {
            abort.abort();
        }
        self.configure.abandon(&self.handle);
        self.handle.requests_finished(running.len());
        for _ in 0..running.len() {
            self.handle.metrics().record_cancelled();
        }
        self.count_fail_closed();
        self.link.shutdown().await;
    }

    /// Hands everything the link has already received to the connection, one message at a
    /// time, sending the connection's messages after each: the framed link decodes nothing
    /// after a handshake request until the answer is written.
    fn receive(&mut self) {
        // Read the clock only when something arrived, once per batch.
        let mut now = None;
        while let Some(received) = self.link.try_recv() {
            let now = *now.get_or_insert_with(Instant::now);
            match received {
                Received::Message(message) => self.conn.handle_message(now, message),
                Received::Unanswered(event) => {
                    if self.conn.is_established() {
                        self.configure.offer(&self.handler, &self.handle, event);
                    } else {
                        tracing::debug!("skipped a Configure without a correlation id sent before the handshake");
                    }
                }
                Received::Closed(reason) => self.conn.handle_closed(reason),
            }
            self.flush_messages(None);
        }
    }

    /// Moves the connection's messages to the link; `handler_time` goes with the last one (the
    /// answer just given).
    fn flush_messages(&mut self, handler_time: Option<Duration>) {
        while let Some(message) = self.conn.poll_message() {
            let time = if self.conn.has_messages() {
                None
            } else {
                handler_time
            };
            if let Err(reason) = self.link.send(message, time) {
                self.conn.handle_closed(reason);
            }
        }
    }

    /// A handler that was kept running finished (or was aborted).
    fn finish_running(&mut self, done: Result<Answer, Aborted>) {
        let started = match &done {
            Ok((id, _)) => self.aborts.remove(id).and_then(|(_, started)| started),
            Err(Aborted) => None,
        };
        self.finish(done, started);
    }

    fn finish(&mut self, done: Result<Answer, Aborted>, started: Option<Instant>) {
        self.handle.requests_finished(1);
        let metrics = self.handle.metrics();
        let Ok((id, response)) = done else {
            metrics.record_cancelled();
            return; // nothing is sent
        };
        let took = started.map(|s| s.elapsed());
        metrics.record_answer(DecisionKind::from(&response.decision), took);
        // UnknownRequest means it was cancelled meanwhile: nothing to send.
        if self.conn.respond(id, response).is_ok() {
            self.flush_messages(took);
        }
    }

    /// Adds the connection's fail-closed answers since the last call to the server's metrics.
    fn count_fail_closed(&mut self) {
        let total = self.conn.fail_closed_answers();
        if total != self.fail_closed_counted {
            self.handle
                .metrics()
                .add_fail_closed(total - self.fail_closed_counted);
            self.fail_closed_counted = total;
        }
    }
}

/// Polls a new handler future once, in `slot`: most handlers answer at once, and such an answer
/// is returned with no task, abort handle or allocation spent on the request. A future that is
/// not done stays pinned in `slot`, which the caller then moves (the box, not the future) to the
/// running set, where it is polled again with the connection task's waker.
///
/// The first poll has no waker to give (the task is between polls); a future must accept being
/// polled again, and the running set polls a newly added future at once, so nothing is missed.
fn start<F: Future>(slot: &mut Pin<Box<Option<F>>>, future: F) -> Option<F::Output> {
    slot.set(Some(future));
    let pending = slot.as_mut().as_pin_mut()?;
    match pending.poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(answer) => {
            slot.set(None);
            Some(answer)
        }
        Poll::Pending => None,
    }
}

/// A handler future that did not answer at its first poll, still in the box it was first polled
/// in (see [`start`]).
struct Parked<F>(Pin<Box<Option<F>>>);

impl<F: Future> Future for Parked<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        match self.0.as_mut().as_pin_mut() {
            Some(future) => future.poll(cx),
            // `start` leaves only unfinished futures here, and a finished one is not polled.
            None => Poll::Pending,
        }
    }
}

/// The id-less Configure events of a connection (see [`Received::Unanswered`]): one runs at a
/// time, and a newer one waiting replaces an older one, so a proxy cannot queue them without
/// bound.
#[derive(Default)]
struct UnansweredConfigure {
    running: Option<BoxFuture<'static, ()>>,
    next: Option<ConfigureEvent>,
}

impl UnansweredConfigure {
    fn offer<H: AgentHandler>(
        &mut self,
        handler: &Arc<H>,
        handle: &ServerHandle,
        event: ConfigureEvent,
    ) {
        if self.running.is_some() {
            self.next = Some(event);
        } else {
            self.start(handler, handle, event);
        }
    }

    fn start<H: AgentHandler>(
        &mut self,
        handler: &Arc<H>,
        handle: &ServerHandle,
        event: ConfigureEvent,
    ) {
        handle.requests_started(1);
        let handler = handler.clone();
        self.running = Some(Box::pin(async move {
            let version = event.config_version.clone();
            let (_, response) =
                dispatch(handler, RequestId::from_raw(0), Event::Configure(event)).await;
            if response.decision.kind() != "allow" {
                tracing::warn!(?version, decision = ?response.decision, "the handler refused a configuration pushed without a correlation id");
            }
        }));
    }

    /// The running one finished: start the waiting one, if any.
    fn finished<H: AgentHandler>(&mut self, handler: &Arc<H>, handle: &ServerHandle) {
        handle.requests_finished(1);
        self.running = None;
        if let Some(event) = self.next.take() {
            self.start(handler, handle, event);
        }
    }

    /// The connection ended: drop what runs (counted as finished) and what waits.
    fn abandon(&mut self, handle: &ServerHandle) {
        if self.running.take().is_some() {
            handle.requests_finished(1);
        }
        self.next = None;
    }
}
