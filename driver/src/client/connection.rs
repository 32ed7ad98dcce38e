//! The one connection task of the proxy side, whatever the transport: it drives a
//! [`ProxyConnection`] over a [`ProxyLink`], takes the callers' commands and delivers each
//! request's outcome.

use std::future::{poll_fn, Future};
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use agent_protocol_core::handshake::Negotiated;
use agent_protocol_core::proxy::{
    ProxyConnection, ProxyEvent, ProxyIncoming, ProxyOutgoing, RequestId,
};
use agent_protocol_core::{CancelReason, ConnectionError, FlowAction, RequestError, SubmitError};
use foldhash::{HashMap, HashMapExt};
use tokio::sync::{mpsc, oneshot};

use super::exchange::Exchange;
use super::handle::{closed_error, Command, CommandKind, Reply};
use super::{ClientError, ConnectionStatus, ControlMessage, CHANNEL_BUFFER_SIZE};
use crate::runtime::{self, Runtime};

/// One proxy connection's transport, as the connection task sees it: messages in, messages out.
///
/// Implemented by [`FramedLink`](super::FramedLink) (byte streams, through the core's
/// [`ProxyCodec`](agent_protocol_core::proxy::ProxyCodec)) and by the tokio adapter's gRPC
/// stream. Poll methods follow the usual contract: `Pending` registers the waker.
pub trait ProxyLink: Send + 'static {
    /// The encoding of every message on this transport when the transport chooses it rather
    /// than the handshake (gRPC: `protobuf`); the connection's span records it as its
    /// `encoding` instead of the negotiated one.
    const TRANSPORT_ENCODING: Option<&'static str> = None;

    /// Reads from the transport once; what arrived comes out of [`ProxyLink::try_recv`].
    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<()>;

    /// The next thing already received, without touching the transport: a message, or how the
    /// transport ended (after everything received before it).
    fn try_recv(&mut self) -> Option<Result<ProxyIncoming, ConnectionError>>;

    /// Queues one of the connection's messages. An event may be refused (too large for the
    /// transport, too much unsent); nothing is queued then.
    fn send(&mut self, message: ProxyOutgoing) -> Result<(), SubmitError>;

    /// Whether anything queued is still unsent.
    fn has_unsent(&self) -> bool;

    /// Sends some of what is queued. An error ends the connection, and what was unsent is
    /// dropped.
    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ConnectionError>>;

    /// Ends the transport (shuts the write direction of a socket down).
    fn shutdown(&mut self) -> impl Future<Output = ()> + Send {
        async {}
    }
}

/// What the connection task keeps beside the core connection: callers' one-shots, the ping
/// waiter, the control channel, and the status shared with the pool.
pub(super) struct ClientTask {
    pub(super) conn: ProxyConnection,
    pub(super) rx: mpsc::Receiver<Command>,
    pub(super) status: Arc<ConnectionStatus>,
    /// Each pending request's reply and the box its answer goes back in.
    waiters: HashMap<RequestId, (Reply, Box<Exchange>)>,
    ping_waiter: Option<(u64, oneshot::Sender<Result<Duration, ClientError>>)>,
    control: Option<mpsc::Sender<ControlMessage>>,
    /// Told when the handshake completes, or the connection closes first.
    ready: Option<oneshot::Sender<Result<Negotiated, ConnectionError>>>,
}

/// What woke the connection task, in the order the task looks at them.
enum Wake {
    Flushed(Result<(), ConnectionError>),
    Deadline,
    /// A command came; it is in the task's `command` slot (kept out of this enum, so waking
    /// stays a small copy).
    Command,
    CommandsClosed,
    Read,
}

impl ClientTask {
    pub(super) fn new(
        conn: ProxyConnection,
        rx: mpsc::Receiver<Command>,
        status: Arc<ConnectionStatus>,
        control: Option<mpsc::Sender<ControlMessage>>,
        ready: Option<oneshot::Sender<Result<Negotiated, ConnectionError>>>,
    ) -> Self {
        Self {
            conn,
            rx,
            status,
            waiters: HashMap::new(),
            ping_waiter: None,
            control,
            ready,
        }
    }

    /// The connection loop, the same for every transport.
    ///
    /// Fairness: an agent can keep its transport readable forever, so reading is the last
    /// thing the task looks at each turn; writes, the next deadline and callers' commands come
    /// first, and each is ready only when it has work. A turn reads once and hands everything
    /// that read completed to the connection, then handles every deadline that passed
    /// meanwhile, so a request ends within its timeout whatever the agent sends. A burst of
    /// commands is taken together, so its events leave in one write.
    pub(super) async fn run<L: ProxyLink, R: Runtime>(mut self, mut link: L) {
        let mut commands_open = true;
        loop {
            self.receive::<L, R>(&mut link);
            self.flush_messages(&mut link);
            // The status first: a caller woken by its answer sees the request gone.
            self.status.publish(&self.conn);
            self.dispatch_events();
            let closed = self.conn.is_closed();
            if closed && !link.has_unsent() {
                break;
            }
            let deadline = self.conn.poll_timeout();
            let flushing = link.has_unsent();
            let taking = commands_open && !closed;
            let mut timer = pin!(runtime::sleep_until_opt::<R>(deadline));
            let rx = &mut self.rx;
            let link_ref = &mut link;
            let mut command = None;
            // A hand-written biased select: each source is looked at only when it has work, and
            // reading comes last.
            let wake = poll_fn(|cx| {
                if flushing {
                    if let Poll::Ready(r) = link_ref.poll_flush(cx) {
                        return Poll::Ready(Wake::Flushed(r));
                    }
                }
                if deadline.is_some() && timer.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Wake::Deadline);
                }
                if taking {
                    match rx.poll_recv(cx) {
                        Poll::Ready(Some(c)) => {
                            command = Some(c);
                            return Poll::Ready(Wake::Command);
                        }
                        Poll::Ready(None) => return Poll::Ready(Wake::CommandsClosed),
                        Poll::Pending => {}
                    }
                }
                if !closed && link_ref.poll_read(cx).is_ready() {
                    return Poll::Ready(Wake::Read);
                }
                Poll::Pending
            })
            .await;
            match wake {
                Wake::Flushed(Ok(())) => {}
                Wake::Flushed(Err(reason)) => self.conn.handle_closed(reason),
                Wake::Deadline => self.conn.handle_timeout(R::now()),
                Wake::Command => {
                    let now = R::now();
                    if let Some(command) = command {
                        self.handle_command(now, command, &mut link);
                    }
                    // Drain the burst so it leaves in one write.
                    for _ in 0..CHANNEL_BUFFER_SIZE {
                        match self.rx.try_recv() {
                            Ok(command) => self.handle_command(now, command, &mut link),
                            Err(_) => break,
                        }
                    }
                }
                Wake::CommandsClosed => {
                    commands_open = false;
                    self.conn.close();
                }
                Wake::Read => self.conn.handle_activity(R::now()),
            }
        }
        self.wind_down();
        link.shutdown().await;
    }

    /// Hands everything the link has already received to the connection, then handles the
    /// deadlines that passed meanwhile: decoding a large read takes time, and the timer must
    /// not be the only way a deadline is noticed.
    fn receive<L: ProxyLink, R: Runtime>(&mut self, link: &mut L) {
        let mut received = false;
        let now = R::now();
        while let Some(message) = link.try_recv() {
            received = true;
            match message {
                Ok(message) => self.conn.handle_message(now, message),
                Err(reason) => self.conn.handle_closed(reason),
            }
        }
        if received {
            let now = R::now();
            if self.conn.poll_timeout().is_some_and(|due| due <= now) {
                self.conn.handle_timeout(now);
            }
        }
    }

    /// Moves the connection's queued messages (cancels, pings, the handshake) to the link.
    fn flush_messages<L: ProxyLink>(&mut self, link: &mut L) {
        while let Some(message) = self.conn.poll_message() {
            if let Err(e) = link.send(message) {
                tracing::debug!(error = %e, "a message to the agent could not be sent");
            }
        }
    }

    /// After the connection closed: deliver its last outcomes, record why it ended, and fail
    /// callers still queued with that reason rather than a dropped channel.
    fn wind_down(&mut self) {
        self.dispatch_events();
        let reason = self
            .conn
            .close_reason()
            .cloned()
            .unwrap_or(ConnectionError::LocalClose);
        self.status.mark_closed(reason);
        self.rx.close();
        while let Ok(command) = self.rx.try_recv() {
            if let CommandKind::Send { reply, .. } = command.0 {
                let _ = reply.send(Err(closed_error(&self.status)));
            }
        }
    }

    /// Carries out one caller's command on the core connection.
    fn handle_command<L: ProxyLink>(&mut self, now: Instant, command: Command, link: &mut L) {
        match command.0 {
            CommandKind::Send {
                mut exchange,
                deadline,
                reply,
            } => {
                if deadline <= now {
                    let _ = reply.send(Err(ClientError::QueueTimeout(Duration::ZERO)));
                    return;
                }
                // A handle sends each exchange once, with its event in it. (Were one ever sent
                // empty, dropping `reply` fails that caller as if the connection had closed.)
                let Some(event) = exchange.take_event() else {
                    return;
                };
                let timeout = Some(deadline - now);
                match self.conn.send_event(now, event, timeout, |m| link.send(m)) {
                    Ok(id) => {
                        self.waiters.insert(id, (reply, exchange));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(match e {
                            SubmitError::Closed(c) => ClientError::Closed(c),
                            other => ClientError::Rejected(other),
                        }));
                    }
                }
            }
            CommandKind::Cancel {
                correlation_id,
                reason,
            } => {
                self.conn.cancel(now, &correlation_id, reason);
            }
            CommandKind::Ping { reply } => match self.conn.ping(now) {
                Some(sequence) => self.ping_waiter = Some((sequence, reply)),
                None => {
                    let _ = reply.send(Err(ClientError::PingRefused));
                }
            },
            CommandKind::Abandon { correlation_id } => {
                // Only if the request under this id is still the abandoned one: by now a new
                // request (another caller's) may have taken the id over.
                let abandoned = self
                    .conn
                    .pending_id(&correlation_id)
                    .and_then(|id| self.waiters.get(&id))
                    .is_some_and(|(reply, _)| reply.is_closed());
                if abandoned {
                    self.conn
                        .cancel(now, &correlation_id, CancelReason::ClientDisconnect);
                }
            }
            CommandKind::End { correlation_id } => {
                self.conn.end_request(&correlation_id);
            }
            CommandKind::Close => self.conn.close(),
        }
    }

    /// Delivers what the core produced: answers and failures to their callers, resumes to the
    /// shared status, metrics and config requests to the control channel.
    fn dispatch_events(&mut self) {
        while let Some(event) = self.conn.poll_event() {
            match event {
                ProxyEvent::Connected(negotiated) => {
                    self.status.mark_connected();
                    if let Some(ready) = self.ready.take() {
                        let _ = ready.send(Ok(negotiated));
                    }
                }
                ProxyEvent::Response { id, response, .. } => {
                    if let Some((reply, exchange)) = self.waiters.remove(&id) {
                        let _ = reply.send(Ok(exchange.answer(response)));
                    }
                }
                ProxyEvent::Failed { id, error, .. } => {
                    if let Some((reply, _)) = self.waiters.remove(&id) {
                        let _ = reply.send(Err(match error {
                            RequestError::ConnectionClosed(c) => ClientError::Closed(c),
                            other => ClientError::Request(other),
                        }));
                    }
                }
                ProxyEvent::FlowControl(signal) => {
                    if signal.action != FlowAction::Pause {
                        self.status.resumed.notify_waiters();
                    }
                }
                ProxyEvent::Pong { sequence, rtt } => {
                    if let Some((seq, reply)) = self.ping_waiter.take() {
                        if seq == sequence {
                            let _ = reply.send(Ok(rtt));
                        } else {
                            self.ping_waiter = Some((seq, reply));
                        }
                    }
                }
                ProxyEvent::Metrics(report) => self.forward(ControlMessage::Metrics(report)),
                ProxyEvent::ConfigUpdate(req) => self.forward(ControlMessage::ConfigUpdate(req)),
                ProxyEvent::UnroutableResponse { correlation_id } => {
                    tracing::debug!(%correlation_id, "answer for no pending request (late or unknown)");
                }
                ProxyEvent::Closed(error) => {
                    tracing::debug!(%error, "agent connection closed");
                    if let Some(ready) = self.ready.take() {
                        let _ = ready.send(Err(error));
                    }
                }
                other => tracing::trace!(?other, "agent connection event"),
            }
        }
    }

    fn forward(&self, message: ControlMessage) {
        if let Some(tx) = &self.control {
            // Bounded: a flood of reports is dropped rather than buffered without limit.
            let _ = tx.try_send(message);
        }
    }
}
