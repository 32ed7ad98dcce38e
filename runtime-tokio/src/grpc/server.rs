//! The agent side of the gRPC transport: a tonic `AgentServiceV2` serving an [`AgentHandler`].
//!
//! Each `ProcessStream` is one task owning a message-mode [`AgentConnection`]; handler futures
//! run inside that task (a `FuturesUnordered`, as on UDS), so one stream carries many requests
//! at once and answers leave in the order they finish. A Cancel drops the request's future and
//! nothing is sent for it; a Ping is answered as soon as it is read.
//!
//! Against a hostile or broken proxy:
//! - a stream stops reading while [`MAX_UNSENT_ANSWERS`] answers wait for a proxy that does not
//!   read them, so HTTP/2 flow control pushes back on the proxy's sends instead of the agent
//!   growing by one answer per event; it resumes as the proxy reads, and everything the stream
//!   holds is dropped when the call ends or is cancelled;
//! - a stream also stops reading while the events its handlers hold weigh more than
//!   [`MAX_IN_FLIGHT_BYTES`] (as on UDS), and resumes as they finish, so large events sent to a
//!   slow handler push back on the proxy instead of growing the agent;
//! - a message over [`MAX_MESSAGE_SIZE`] ends its stream with `RESOURCE_EXHAUSTED`, naming the
//!   limit (the stream's framing cannot be recovered past it);
//! - an event without a correlation id is malformed: it is answered with a block (500,
//!   [`MALFORMED_EVENT_REASON`]) and never reaches the handler, on `ProcessStream` and on
//!   `ProcessEvent` alike. Configure is the exception: its reference schema has no correlation
//!   id and the reference proxy sends it without waiting for an answer, so an id-less Configure
//!   is handed to the handler and answered only on `ProcessEvent` (where the call carries the
//!   answer); one carrying an id (this schema's extension field) is answered under that id;
//! - each loop turn looks at shutdown, the handshake deadline, pushes, finished handlers and
//!   writes before it reads, and reads one message, so a proxy pipelining without pause cannot
//!   hold back answers, a drain or the handshake deadline.
//!
//! [`MALFORMED_EVENT_REASON`]: agent_protocol_core::agent::MALFORMED_EVENT_REASON

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agent_protocol_core::agent::{AgentConfig, AgentConnection, AgentEvent, RequestId};
use agent_protocol_core::handshake::HandshakeRequest;
use agent_protocol_core::{
    AgentIncoming, AgentResponse, ConfigUpdateResponse, ConfigureEvent, ConnectionError, Event,
    HealthState, HealthStatus,
};
use agent_protocol_proto::convert::{self, ProxyMessage};
use agent_protocol_proto::v2::agent_service_v2_server::{AgentServiceV2, AgentServiceV2Server};
use agent_protocol_proto::v2::{self, AgentControl, AgentToProxy, ProxyControl, ProxyToAgent};
use agent_protocol_proto::MAX_MESSAGE_SIZE;
use futures_util::future::{AbortHandle, Abortable, BoxFuture, FutureExt, OptionFuture};
use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tonic::codegen::tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::TcpIncoming;
use tonic::{Code, Request, Response, Status, Streaming};

use super::{millis, sleep_until, unix_ms, CONNECTION_WINDOW, STREAM_BUFFER, STREAM_WINDOW};
use crate::server::{dispatch, shutdown_signal, AgentHandler, AgentServer, Push, ServerHandle};
use agent_protocol_driver::server::MAX_IN_FLIGHT_BYTES;

/// The tonic service behind [`ServeGrpc::serve_grpc`], for embedding in a tonic server of your
/// own (see [`ServeGrpc::grpc_service`]).
pub struct GrpcService<H> {
    handler: Arc<H>,
    config: Arc<AgentConfig>,
    handle: ServerHandle,
    drain_timeout: Duration,
}

impl<H> std::fmt::Debug for GrpcService<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrpcService")
            .field("agent_id", &self.config.handshake.capabilities.agent_id)
            .finish_non_exhaustive()
    }
}

/// gRPC serving for an [`AgentServer`] (tokio only: tonic needs it).
///
/// ```no_run
/// # async fn demo() -> std::io::Result<()> {
/// use agent_protocol_tokio::grpc::ServeGrpc;
/// use agent_protocol_tokio::server::{AgentHandler, AgentServer, ServerConfig};
/// struct AllowAll;
/// impl AgentHandler for AllowAll {}
/// let server = AgentServer::new(AllowAll, ServerConfig::default());
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:50051").await?;
/// server.serve_grpc(listener).await
/// # }
/// ```
pub trait ServeGrpc<H> {
    /// The gRPC service for this server's handler, with 16 MiB message limits both ways. It
    /// shares the handler and the [`ServerHandle`] with the UDS listeners, so health, flow
    /// control and metrics pushed through the handle reach gRPC proxies too, and shutdown drains
    /// gRPC streams as well.
    fn grpc_service(&self) -> AgentServiceV2Server<GrpcService<H>>;

    /// Serves gRPC (plain HTTP/2) on `listener` until [`ServerHandle::shutdown`], then lets open
    /// streams drain (up to the configured `drain_timeout`) and returns.
    fn serve_grpc(&self, listener: TcpListener) -> impl Future<Output = io::Result<()>> + Send;

    /// Like [`ServeGrpc::serve_grpc`], with TLS: the server presents `tls`'s certificate, and
    /// when `tls` names a client CA, proxies must present a certificate it signed (mTLS).
    #[cfg(feature = "tls")]
    fn serve_grpc_tls(
        &self,
        listener: TcpListener,
        tls: super::tls::ServerTls,
    ) -> impl Future<Output = io::Result<()>> + Send;
}

impl<H: AgentHandler> ServeGrpc<H> for AgentServer<H> {
    fn grpc_service(&self) -> AgentServiceV2Server<GrpcService<H>> {
        let service = GrpcService {
            handler: self.handler().clone(),
            config: Arc::new(self.config().agent_config()),
            handle: self.handle(),
            drain_timeout: self.config().drain_timeout,
        };
        AgentServiceV2Server::new(service)
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE)
    }

    async fn serve_grpc(&self, listener: TcpListener) -> io::Result<()> {
        serve_grpc_with(self, tonic::transport::Server::builder(), listener).await
    }

    #[cfg(feature = "tls")]
    async fn serve_grpc_tls(
        &self,
        listener: TcpListener,
        tls: super::tls::ServerTls,
    ) -> io::Result<()> {
        let builder = tonic::transport::Server::builder()
            .tls_config(tls.into_tonic())
            .map_err(io::Error::other)?;
        serve_grpc_with(self, builder, listener).await
    }
}

async fn serve_grpc_with<H: AgentHandler>(
    server: &AgentServer<H>,
    builder: tonic::transport::Server,
    listener: TcpListener,
) -> io::Result<()> {
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let builder = builder
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW);
    let handle = server.handle();
    let mut stop = handle.shutdown_receiver();
    let signal = async move { shutdown_signal(&mut stop).await };
    let serve = builder.serve_with_incoming_shutdown(server.grpc_service(), incoming, signal);
    // After the signal, tonic waits for connections to close; streams drain themselves
    // within drain_timeout, and a proxy that keeps its connection open anyway is cut off.
    let mut stop = handle.shutdown_receiver();
    let grace = server.config().drain_timeout + Duration::from_secs(1);
    let cutoff = async move {
        shutdown_signal(&mut stop).await;
        tokio::time::sleep(grace).await;
    };
    tokio::select! {
        r = serve => r.map_err(io::Error::other),
        _ = cutoff => Ok(()),
    }
}

impl<H> GrpcService<H> {
    fn connection(&self) -> AgentConnection {
        AgentConnection::new_messages((*self.config).clone(), Instant::now())
    }
}

#[tonic::async_trait]
impl<H: AgentHandler> AgentServiceV2 for GrpcService<H> {
    type ProcessStreamStream = ReceiverStream<Result<AgentToProxy, Status>>;

    async fn process_stream(
        &self,
        request: Request<Streaming<ProxyToAgent>>,
    ) -> Result<Response<Self::ProcessStreamStream>, Status> {
        let inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let stream = StreamDriver {
            conn: self.connection(),
            handler: self.handler.clone(),
            handle: self.handle.clone(),
            drain_timeout: self.drain_timeout,
            out: VecDeque::new(),
            end_status: None,
        };
        tokio::spawn(stream.run(inbound, tx));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    type ControlStreamStream = ReceiverStream<Result<ProxyControl, Status>>;

    async fn control_stream(
        &self,
        request: Request<Streaming<AgentControl>>,
    ) -> Result<Response<Self::ControlStreamStream>, Status> {
        let inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        tokio::spawn(control_stream(inbound, tx, self.handle.clone()));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn process_event(
        &self,
        request: Request<ProxyToAgent>,
    ) -> Result<Response<AgentToProxy>, Status> {
        let incoming = match ProxyMessage::from(request.into_inner()) {
            ProxyMessage::Protocol(incoming) => incoming,
            ProxyMessage::Unknown => {
                return Err(Status::invalid_argument(
                    "empty or unknown ProxyToAgent message",
                ))
            }
        };
        let handle = &self.handle;
        let mut conn = self.connection();
        let now = Instant::now();
        match incoming {
            handshake @ AgentIncoming::Handshake(_) => conn.handle_message(now, handshake),
            AgentIncoming::Cancel(_) => {
                return Err(Status::invalid_argument(
                    "cancel applies to requests in flight on ProcessStream",
                ))
            }
            AgentIncoming::Event(Event::Configure(event)) if event.correlation_id.is_empty() => {
                // The call itself carries the answer: nothing needs correlating.
                handle.requests_started(1);
                let _guard = InFlightGuard(handle);
                let started = Instant::now();
                let (_, response) =
                    dispatch(self.handler.clone(), 0, Event::Configure(event)).await;
                let mut answer = AgentToProxy {
                    message: Some(v2::agent_to_proxy::Message::Response(
                        convert::response_to_proto(String::new(), response),
                    )),
                };
                bound_response(&mut answer);
                set_processing_time(&mut answer, started.elapsed());
                return Ok(Response::new(answer));
            }
            other => {
                // A unary call needs no handshake (as in the reference): open one implicitly.
                conn.handle_message(now, AgentIncoming::Handshake(implicit_handshake()));
                let _ = conn.poll_message();
                conn.handle_message(now, refuse_uncorrelated(other));
            }
        }
        while let Some(event) = conn.poll_event() {
            if let AgentEvent::Request { id, event } = event {
                handle.requests_started(1);
                let _guard = InFlightGuard(handle);
                let started = Instant::now();
                let (id, response) = dispatch(self.handler.clone(), id, event).await;
                let _ = conn.respond(id, response);
                let mut answer = next_answer(&mut conn)
                    .ok_or_else(|| Status::internal("the agent produced no answer"))?;
                set_processing_time(&mut answer, started.elapsed());
                return Ok(Response::new(answer));
            }
        }
        next_answer(&mut conn)
            .map(Response::new)
            .ok_or_else(|| Status::invalid_argument("nothing to answer"))
    }
}

/// An event without a correlation id, handed to the core as the malformed event it is: the core
/// answers it with a block (500, `MALFORMED_EVENT`) and the handler never sees it, since an answer
/// nobody can match to a request must never be an allow. proto3 cannot tell an empty id from a
/// missing one. (An id-less Configure is taken care of before this: see the module docs.)
fn refuse_uncorrelated(incoming: AgentIncoming) -> AgentIncoming {
    match incoming {
        AgentIncoming::Event(event) if event.correlation_id().is_empty() => {
            AgentIncoming::MalformedEvent {
                correlation_id: Some(String::new()),
                kind: event.kind(),
                error: "event without a correlation id".into(),
            }
        }
        other => other,
    }
}

/// The status a stream ends with after a message over the limit.
fn message_too_large(what: &str) -> Status {
    Status::resource_exhausted(format!(
        "{what} exceeds the gRPC message limit of {MAX_MESSAGE_SIZE} bytes (16 MiB); the stream cannot continue past it"
    ))
}

/// Runs id-less Configure events (see the module docs) one at a time, without an answer. While
/// one runs, a newer one waits and replaces any older one still waiting: configurations supersede
/// each other, and a proxy cannot queue them without bound.
struct UnansweredConfigure {
    running: Option<BoxFuture<'static, ()>>,
    next: Option<ConfigureEvent>,
}

impl UnansweredConfigure {
    fn new() -> Self {
        Self {
            running: None,
            next: None,
        }
    }

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
            let (_, response) = dispatch(handler, 0, Event::Configure(event)).await;
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

    /// The stream ended: drop what runs (counted as finished) and what waits.
    fn abandon(&mut self, handle: &ServerHandle) {
        if self.running.take().is_some() {
            handle.requests_finished(1);
        }
        self.next = None;
    }
}

/// What a unary event call is treated as having negotiated.
fn implicit_handshake() -> HandshakeRequest {
    HandshakeRequest {
        supported_versions: vec![agent_protocol_core::handshake::PROTOCOL_VERSION],
        proxy_id: "unary".into(),
        proxy_version: String::new(),
        config: None,
        supported_encodings: Vec::new(),
    }
}

fn next_answer(conn: &mut AgentConnection) -> Option<AgentToProxy> {
    let mut message = convert::agent_outgoing_to_proto(conn.poll_message()?, unix_ms());
    bound_response(&mut message);
    Some(message)
}

/// Reason code of the block that replaces an answer too large for one gRPC message: the same
/// code the core uses for an answer too large for a frame.
pub use agent_protocol_core::agent::RESPONSE_TOO_LARGE_REASON;

/// An answer over the message limit would end the whole stream (every request on it): it is
/// replaced by a block (500, [`RESPONSE_TOO_LARGE_REASON`]) for its request alone. Only answers
/// carrying sizeable body mutations are measured.
fn bound_response(message: &mut AgentToProxy) {
    let Some(v2::agent_to_proxy::Message::Response(r)) = message.message.as_mut() else {
        return;
    };
    let mutation_len = |m: &Option<v2::BodyMutation>| {
        m.as_ref()
            .and_then(|m| m.data.as_ref())
            .map_or(0, |d| d.len())
    };
    let bulky = mutation_len(&r.request_body_mutation) + mutation_len(&r.response_body_mutation);
    if bulky < 1024 * 1024 {
        return;
    }
    use agent_protocol_proto::prost::Message as _;
    if message.encoded_len() <= MAX_MESSAGE_SIZE {
        return;
    }
    let Some(v2::agent_to_proxy::Message::Response(r)) = message.message.as_mut() else {
        return;
    };
    tracing::warn!(correlation_id = %r.correlation_id, "answer exceeds the gRPC message limit; sending a block instead");
    let mut block = AgentResponse::block(500, "agent response too large");
    block
        .audit
        .reason_codes
        .push(RESPONSE_TOO_LARGE_REASON.to_owned());
    let correlation_id = std::mem::take(&mut r.correlation_id);
    *r = convert::response_to_proto(correlation_id, block);
}

fn set_processing_time(message: &mut AgentToProxy, elapsed: Duration) {
    if let Some(v2::agent_to_proxy::Message::Response(r)) = message.message.as_mut() {
        r.processing_time_ms = Some(millis(elapsed));
    }
}

struct InFlightGuard<'a>(&'a ServerHandle);

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        self.0.requests_finished(1);
    }
}

type Done = Result<(RequestId, AgentResponse, Instant), futures_util::future::Aborted>;

/// Messages (answers, pongs, health) a `ProcessStream` keeps for a proxy that is not taking them,
/// on top of the 64 already handed to tonic. While this many wait, the stream reads nothing more
/// from the proxy, so a proxy that sends events without reading the answers is pushed back by
/// HTTP/2 flow control rather than growing the agent by one answer (about 1-2 KiB) per event;
/// reading resumes as soon as the proxy takes answers again.
///
/// Handlers already running still finish and queue their answers, so one stream holds at most
/// this many plus [`AgentConfig::max_in_flight`] plus 64 messages, however much the proxy sends.
/// Everything is dropped when the call ends or the proxy cancels it.
pub const MAX_UNSENT_ANSWERS: usize = 256;

/// One `ProcessStream`: the connection state machine, the handler futures, and the outbound
/// queue towards tonic.
struct StreamDriver<H> {
    conn: AgentConnection,
    handler: Arc<H>,
    handle: ServerHandle,
    drain_timeout: Duration,
    /// Converted messages waiting for room in `tx` (at most about [`MAX_UNSENT_ANSWERS`]); the
    /// stream's final status, if it ends with one, is the last.
    out: VecDeque<Result<AgentToProxy, Status>>,
    /// Why the stream must end, when the transport rather than the core knows it.
    end_status: Option<Status>,
}

impl<H: AgentHandler> StreamDriver<H> {
    async fn run(
        mut self,
        mut inbound: Streaming<ProxyToAgent>,
        tx: mpsc::Sender<Result<AgentToProxy, Status>>,
    ) {
        let handle = self.handle.clone();
        handle.connection_opened();
        let mut running = FuturesUnordered::new();
        let mut aborts: HashMap<RequestId, AbortHandle> = HashMap::new();
        let mut configure = UnansweredConfigure::new();
        let mut push_rx = handle.subscribe_pushes();
        let mut shutdown = handle.shutdown_receiver();
        let mut draining: Option<Instant> = None;
        let mut peer_gone = false;
        let mut final_status_queued = false;
        loop {
            while let Some(event) = self.conn.poll_event() {
                match event {
                    AgentEvent::Request { id, event } => {
                        let (abort, registration) = AbortHandle::new_pair();
                        aborts.insert(id, abort);
                        handle.requests_started(1);
                        let handler = self.handler.clone();
                        running.push(Abortable::new(
                            async move {
                                let started = Instant::now();
                                let (id, response) = dispatch(handler, id, event).await;
                                (id, response, started)
                            },
                            registration,
                        ));
                    }
                    AgentEvent::Cancelled { id, .. } => {
                        if let Some(abort) = aborts.remove(&id) {
                            abort.abort();
                        }
                    }
                    AgentEvent::Closed(reason) => {
                        tracing::debug!(%reason, "gRPC ProcessStream closed");
                    }
                    other => tracing::debug!(?other, "gRPC ProcessStream event"),
                }
            }
            self.collect_output(None);
            let closed = self.conn.is_closed();
            if closed && !final_status_queued {
                final_status_queued = true;
                // After every answer already queued, so the proxy gets those first.
                let status = self
                    .end_status
                    .take()
                    .or_else(|| self.conn.close_reason().and_then(close_status));
                if let Some(status) = status {
                    self.out.push_back(Err(status));
                }
            }
            if peer_gone || (closed && self.out.is_empty()) {
                break;
            }
            if let Some(since) = draining {
                if (running.is_empty() && self.out.is_empty())
                    || since.elapsed() >= self.drain_timeout
                {
                    self.conn.close();
                    break;
                }
            }
            let deadline = self.conn.poll_timeout();
            let readable = !closed
                && draining.is_none()
                && self.out.len() < MAX_UNSENT_ANSWERS
                && self.conn.in_flight_bytes() <= MAX_IN_FLIGHT_BYTES;
            // Everything that is not reading comes first, and a turn reads one message: a proxy
            // that pipelines without pause cannot hold back answers, pushes, a drain or the
            // handshake deadline.
            tokio::select! {
                biased;
                _ = shutdown_signal(&mut shutdown), if draining.is_none() => {
                    draining = Some(Instant::now());
                    if self.conn.is_established() {
                        let _ = self.conn.send_health(&HealthStatus {
                            agent_id: handle.agent_id().to_owned(),
                            state: HealthState::Draining,
                            message: Some("shutting down".into()),
                            timestamp_ms: unix_ms(),
                        });
                    }
                }
                _ = sleep_until(deadline), if deadline.is_some() => {
                    self.conn.handle_timeout(Instant::now());
                }
                _ = tx.closed() => peer_gone = true,
                push = push_rx.recv(), if !closed && self.conn.is_established() => {
                    let result = match push {
                        Ok(Push::Health(h)) => self.conn.send_health(&h),
                        Ok(Push::FlowControl(f)) => self.conn.send_flow_control(&f),
                        Ok(Push::Metrics(m)) => self.conn.send_metrics(&m),
                        Err(_) => Ok(()),
                    };
                    if let Err(e) = result {
                        tracing::debug!(error = %e, "could not push a control message");
                    }
                }
                permit = tx.reserve(), if !self.out.is_empty() => match permit {
                    Ok(permit) => {
                        if let Some(message) = self.out.pop_front() {
                            permit.send(message);
                        }
                        while !self.out.is_empty() {
                            match tx.try_reserve() {
                                Ok(permit) => {
                                    if let Some(message) = self.out.pop_front() {
                                        permit.send(message);
                                    }
                                }
                                Err(_) => break,
                            }
                        }
                    }
                    Err(_) => peer_gone = true,
                },
                Some(done) = running.next(), if !running.is_empty() => {
                    self.finish(done, &mut aborts);
                    // Everything else already finished goes out with it.
                    while let Some(Some(done)) = running.next().now_or_never() {
                        self.finish(done, &mut aborts);
                    }
                }
                Some(()) = OptionFuture::from(configure.running.as_mut()), if configure.running.is_some() => {
                    configure.finished(&self.handler, &handle);
                }
                message = inbound.message(), if readable => {
                    self.on_message(message, &mut configure);
                }
                _ = tokio::time::sleep(Duration::from_millis(50)), if draining.is_some() => {}
            }
        }
        for (_, abort) in aborts.drain() {
            abort.abort();
        }
        configure.abandon(&handle);
        handle.requests_finished(running.len());
        handle.connection_closed();
    }

    /// One read from the proxy's side of the stream.
    fn on_message(
        &mut self,
        message: Result<Option<ProxyToAgent>, Status>,
        configure: &mut UnansweredConfigure,
    ) {
        let now = Instant::now();
        match message {
            Ok(Some(message)) => match ProxyMessage::from(message) {
                ProxyMessage::Protocol(AgentIncoming::Event(Event::Configure(event)))
                    if event.correlation_id.is_empty() =>
                {
                    if self.conn.is_established() {
                        configure.offer(&self.handler, &self.handle, event);
                    } else {
                        tracing::debug!("skipped a Configure without a correlation id sent before the handshake");
                    }
                }
                ProxyMessage::Protocol(incoming) => {
                    self.conn.handle_message(now, refuse_uncorrelated(incoming))
                }
                ProxyMessage::Unknown => {
                    tracing::debug!("skipped a ProxyToAgent message of unknown type");
                }
            },
            Ok(None) => self.conn.handle_eof(),
            // tonic's decoder reports a message over the size limit, and only that, as
            // OUT_OF_RANGE. The rest of the stream cannot be read past it.
            Err(status) if status.code() == Code::OutOfRange => {
                tracing::debug!(%status, "a ProxyToAgent message over the limit ends the stream");
                self.end_status = Some(message_too_large("a ProxyToAgent message"));
                self.conn.handle_io_error(status.message().to_owned());
            }
            Err(status) => self.conn.handle_io_error(status.to_string()),
        }
    }

    fn finish(&mut self, done: Done, aborts: &mut HashMap<RequestId, AbortHandle>) {
        self.handle.requests_finished(1);
        let Ok((id, response, started)) = done else {
            return; // cancelled: nothing is sent
        };
        aborts.remove(&id);
        // UnknownRequest means it was cancelled meanwhile: nothing to send.
        if self.conn.respond(id, response).is_ok() {
            self.collect_output(Some(started.elapsed()));
        }
    }

    /// Moves everything the connection queued into the outbound queue, converted. With
    /// `answered`, the last message is the response just given and gets its processing time.
    fn collect_output(&mut self, answered: Option<Duration>) {
        let now_ms = unix_ms();
        while let Some(message) = self.conn.poll_message() {
            let mut message = convert::agent_outgoing_to_proto(message, now_ms);
            bound_response(&mut message);
            self.out.push_back(Ok(message));
        }
        if let (Some(elapsed), Some(Ok(last))) = (answered, self.out.back_mut()) {
            set_processing_time(last, elapsed);
        }
    }
}

/// The gRPC status a stream ends with after the connection closed for this reason; `None` for
/// an orderly end.
fn close_status(reason: &ConnectionError) -> Option<Status> {
    match reason {
        ConnectionError::PeerClosed | ConnectionError::LocalClose | ConnectionError::Io(_) => None,
        // The refusal itself was sent as a handshake answer.
        ConnectionError::Handshake(
            agent_protocol_core::handshake::HandshakeError::VersionMismatch { .. },
        ) => None,
        ConnectionError::Handshake(e) => Some(Status::failed_precondition(e.to_string())),
        other => Some(Status::invalid_argument(other.to_string())),
    }
}

/// `ControlStream`: what the handle pushes (health, metrics, flow control) goes out as
/// `ProxyControl` extension messages; a `config_update` from the caller is answered with a
/// `config_response` (refused: the handler has no hook for configuration updates); health,
/// metrics and logs from the caller are logged. Unlike the reference's, nothing here can
/// panic and no message of the wrong direction is sent.
async fn control_stream(
    mut inbound: Streaming<AgentControl>,
    tx: mpsc::Sender<Result<ProxyControl, Status>>,
    handle: ServerHandle,
) {
    use v2::agent_control::Message as In;
    use v2::proxy_control::Message as Out;
    let mut push_rx = handle.subscribe_pushes();
    let mut shutdown = handle.shutdown_receiver();
    loop {
        let out = tokio::select! {
            message = inbound.message() => match message {
                Ok(Some(AgentControl { message: Some(In::ConfigUpdate(request)) })) => {
                    Out::ConfigResponse(ConfigUpdateResponse {
                        request_id: request.request_id,
                        accepted: false,
                        error: Some("this agent does not take configuration updates over ControlStream; send a Configure event".into()),
                        timestamp_ms: unix_ms(),
                    }.into())
                }
                Ok(Some(AgentControl { message: Some(other) })) => {
                    tracing::debug!(?other, "ControlStream message");
                    continue;
                }
                Ok(Some(AgentControl { message: None })) => continue,
                Ok(None) | Err(_) => break,
            },
            push = push_rx.recv() => match push {
                Ok(Push::Health(h)) => Out::Health(h.into()),
                Ok(Push::Metrics(m)) => Out::Metrics(m.into()),
                Ok(Push::FlowControl(f)) => Out::FlowControl(f.into()),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(_) => break,
            },
            _ = shutdown_signal(&mut shutdown) => break,
            _ = tx.closed() => break,
        };
        if tx
            .send(Ok(ProxyControl { message: Some(out) }))
            .await
            .is_err()
        {
            break;
        }
    }
}
