//! The agent side of the gRPC transport: a tonic `AgentServiceV2` serving an [`AgentHandler`].
//!
//! Each `ProcessStream` is one task owning an [`AgentConnection`]: the driver's agent connection
//! task ([`serve_link`]), the same code the UDS server runs, over this module's gRPC link instead
//! of a framed one. Handler futures run inside that task, so one stream carries many requests at
//! once and answers leave in the order they finish. A Cancel drops the request's future and
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
//! - each turn of the connection task looks at writes, finished handlers, pushes, shutdown and
//!   the handshake deadline before it reads, and reads one message, so a proxy pipelining
//!   without pause cannot hold back answers, a drain or the handshake deadline.
//!
//! [`MALFORMED_EVENT_REASON`]: agent_protocol_core::agent::MALFORMED_EVENT_REASON
//! [`MAX_IN_FLIGHT_BYTES`]: agent_protocol_driver::server::MAX_IN_FLIGHT_BYTES

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use agent_protocol_core::agent::{
    unsendable_answer, AgentConfig, AgentConnection, AgentEvent, AgentOutgoing, RequestId,
};
use agent_protocol_core::encoding::EncodeError;
use agent_protocol_core::frame::PayloadTooLarge;
use agent_protocol_core::handshake::HandshakeRequest;
use agent_protocol_core::metrics::DecisionKind;
use agent_protocol_core::ConfigUpdateResponse;
use agent_protocol_core::{AgentIncoming, ConfigureEvent, ConnectionError, Encoding, Event};
use agent_protocol_driver::server::{serve_link, AgentLink, Received};
use agent_protocol_driver::spans::{self, Peer};
use agent_protocol_driver::Runtime;
use agent_protocol_proto::convert::{self, ProxyMessage};
use agent_protocol_proto::v2::agent_service_v2_server::{AgentServiceV2, AgentServiceV2Server};
use agent_protocol_proto::v2::{self, AgentControl, AgentToProxy, ProxyControl, ProxyToAgent};
use agent_protocol_proto::MAX_MESSAGE_SIZE;
use futures_util::future::BoxFuture;
use futures_util::stream::StreamExt;
use tokio::net::TcpListener;
use tokio::sync::mpsc::{
    self,
    error::{SendError, TrySendError},
    OwnedPermit,
};
use tonic::codegen::tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::TcpIncoming;
use tonic::{Code, Request, Response, Status, Streaming};
use tracing::Instrument;

use super::{millis, unix_ms, CONNECTION_WINDOW, STREAM_BUFFER, STREAM_WINDOW};
use crate::server::{dispatch, shutdown_signal, AgentHandler, AgentServer, Push, ServerHandle};
use crate::Tokio;

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
            config: Arc::new(grpc_agent_config(self.config().agent_config())),
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
        AgentConnection::new((*self.config).clone(), Tokio::now())
    }
}

#[tonic::async_trait]
impl<H: AgentHandler> AgentServiceV2 for GrpcService<H> {
    type ProcessStreamStream = ReceiverStream<Result<AgentToProxy, Status>>;

    async fn process_stream(
        &self,
        request: Request<Streaming<ProxyToAgent>>,
    ) -> Result<Response<Self::ProcessStreamStream>, Status> {
        let remote = request.remote_addr();
        let span = spans::agent_connection(
            Peer::Grpc,
            remote.as_ref().map(|a| a as &dyn std::fmt::Display),
            self.handle.agent_id(),
        );
        let inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let link = GrpcLink::new(inbound, tx);
        let task = serve_link::<_, H, Tokio>(
            self.connection(),
            link,
            self.handler.clone(),
            self.handle.clone(),
            self.drain_timeout,
        );
        tokio::spawn(task.instrument(span));
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
        let now = Tokio::now();
        let mut incoming = incoming;
        if let Some(event) = take_unanswered_configure(&mut incoming) {
            // The call itself carries the answer: nothing needs correlating.
            handle.requests_started(1);
            let _guard = InFlightGuard(handle);
            let started = Instant::now();
            let (_, response) = dispatch(
                self.handler.clone(),
                RequestId::from_raw(0),
                Event::Configure(event),
            )
            .await;
            handle.metrics().record_answer(
                DecisionKind::from(&response.decision),
                Some(started.elapsed()),
            );
            let mut answer = AgentToProxy {
                message: Some(v2::agent_to_proxy::Message::Response(
                    convert::response_to_proto(String::new(), response),
                )),
            };
            bound_response(&mut answer);
            set_processing_time(&mut answer, started.elapsed());
            return Ok(Response::new(answer));
        }
        match incoming {
            handshake @ AgentIncoming::Handshake(_) => conn.handle_message(now, handshake),
            AgentIncoming::Cancel(_) => {
                return Err(Status::invalid_argument(
                    "cancel applies to requests in flight on ProcessStream",
                ))
            }
            other => {
                // A unary call needs no handshake (as in the reference): open one implicitly.
                conn.handle_message(now, AgentIncoming::Handshake(implicit_handshake()));
                let _ = conn.poll_message();
                conn.handle_message(now, other);
            }
        }
        while let Some(event) = conn.poll_event() {
            if let AgentEvent::Request { id, event } = event {
                handle.requests_started(1);
                let _guard = InFlightGuard(handle);
                let started = Instant::now();
                let (id, response) = dispatch(self.handler.clone(), id, event).await;
                handle.metrics().record_answer(
                    DecisionKind::from(&response.decision),
                    Some(started.elapsed()),
                );
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

/// The status a stream ends with after a message over the limit.
fn message_too_large(what: &str) -> Status {
    Status::resource_exhausted(format!(
        "{what} exceeds the gRPC message limit of {MAX_MESSAGE_SIZE} bytes (16 MiB); the stream cannot continue past it"
    ))
}

/// The agent settings of a gRPC stream: protobuf carries every message, so the handshake offers
/// JSON alone, the nominal encoding of transports that encode messages themselves.
fn grpc_agent_config(mut config: AgentConfig) -> AgentConfig {
    config.handshake.encodings = [Encoding::Json].into_iter().collect();
    config
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
    let mut message = convert::agent_outgoing_to_proto(conn.poll_message()?, unix_ms())?;
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
    let len = message.encoded_len();
    if len <= MAX_MESSAGE_SIZE {
        return;
    }
    let Some(v2::agent_to_proxy::Message::Response(r)) = message.message.as_mut() else {
        return;
    };
    tracing::warn!(correlation_id = %r.correlation_id, "answer exceeds the gRPC message limit; sending a block instead");
    let too_large = PayloadTooLarge {
        len,
        max: MAX_MESSAGE_SIZE,
    };
    let block = unsendable_answer(&EncodeError::TooLarge(too_large));
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

/// What goes into a stream's response queue: a message, or the status that ends the stream.
type Outbound = Result<AgentToProxy, Status>;

/// Waiting for room in a full response queue.
type Room = BoxFuture<'static, Result<OwnedPermit<Outbound>, SendError<()>>>;

/// One `ProcessStream` as the agent's connection task sees it: messages from `inbound`,
/// converted, and messages to the proxy through `tx` (a queue of [`STREAM_BUFFER`] that tonic
/// drains), with at most [`MAX_UNSENT_ANSWERS`] more waiting here.
struct GrpcLink {
    inbound: Streaming<ProxyToAgent>,
    tx: mpsc::Sender<Result<AgentToProxy, Status>>,
    /// Converted messages waiting for room in `tx`; the stream's final status, if it ends
    /// with one, is the last.
    out: VecDeque<Result<AgentToProxy, Status>>,
    /// What the last read brought, for `try_recv`.
    received: Option<Received>,
    /// Why the stream must end, when the transport rather than the connection knows it.
    end_status: Option<Status>,
    /// Waits for room in `tx` once it is full.
    room: Option<Room>,
    /// Resolves when the proxy cancels the call or goes away.
    gone: BoxFuture<'static, ()>,
}

impl GrpcLink {
    fn new(
        inbound: Streaming<ProxyToAgent>,
        tx: mpsc::Sender<Result<AgentToProxy, Status>>,
    ) -> Self {
        let watcher = tx.clone();
        Self {
            inbound,
            tx,
            out: VecDeque::new(),
            received: None,
            end_status: None,
            room: None,
            gone: Box::pin(async move { watcher.closed().await }),
        }
    }

    /// What one message read from the proxy's side of the stream means to the connection.
    fn on_message(&mut self, message: Option<Result<ProxyToAgent, Status>>) -> Option<Received> {
        match message {
            Some(Ok(message)) => match ProxyMessage::from(message) {
                ProxyMessage::Protocol(mut incoming) => {
                    Some(match take_unanswered_configure(&mut incoming) {
                        Some(event) => Received::Unanswered(event),
                        None => Received::Message(incoming),
                    })
                }
                ProxyMessage::Unknown => {
                    tracing::debug!("skipped a ProxyToAgent message of unknown type");
                    None
                }
            },
            None => Some(Received::Closed(ConnectionError::PeerClosed)),
            // tonic's decoder reports a message over the size limit, and only that, as
            // OUT_OF_RANGE. The rest of the stream cannot be read past it.
            Some(Err(status)) if status.code() == Code::OutOfRange => {
                tracing::debug!(%status, "a ProxyToAgent message over the limit ends the stream");
                self.end_status = Some(message_too_large("a ProxyToAgent message"));
                let reason = ConnectionError::transport(status.message());
                Some(Received::Closed(reason))
            }
            Some(Err(status)) => Some(Received::Closed(ConnectionError::transport(
                status.to_string(),
            ))),
        }
    }
}

impl AgentLink for GrpcLink {
    const TIMES_ANSWERS: bool = true;
    const TRANSPORT_ENCODING: Option<&'static str> = Some("protobuf");

    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let message = ready!(self.inbound.poll_next_unpin(cx));
        self.received = self.on_message(message);
        Poll::Ready(())
    }

    fn try_recv(&mut self) -> Option<Received> {
        self.received.take()
    }

    fn send(
        &mut self,
        message: AgentOutgoing,
        handler_time: Option<Duration>,
    ) -> Result<(), ConnectionError> {
        let Some(mut message) = convert::agent_outgoing_to_proto(message, unix_ms()) else {
            return Ok(());
        };
        bound_response(&mut message);
        if let Some(elapsed) = handler_time {
            set_processing_time(&mut message, elapsed);
        }
        self.out.push_back(Ok(message));
        Ok(())
    }

    fn has_unsent(&self) -> bool {
        !self.out.is_empty()
    }

    fn is_backlogged(&self) -> bool {
        self.out.len() >= MAX_UNSENT_ANSWERS
    }

    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ConnectionError>> {
        loop {
            if let Some(room) = self.room.as_mut() {
                let permit = ready!(room.as_mut().poll(cx));
                self.room = None;
                match (permit, self.out.pop_front()) {
                    (Ok(permit), Some(message)) => {
                        permit.send(message);
                    }
                    (Ok(_), None) => {}
                    (Err(_), _) => return Poll::Ready(Err(self.proxy_gone())),
                }
            }
            while !self.out.is_empty() {
                let closed = match self.tx.try_reserve() {
                    Ok(permit) => {
                        if let Some(message) = self.out.pop_front() {
                            permit.send(message);
                        }
                        continue;
                    }
                    Err(TrySendError::Full(())) => false,
                    Err(TrySendError::Closed(())) => true,
                };
                if closed {
                    return Poll::Ready(Err(self.proxy_gone()));
                }
                break;
            }
            if self.out.is_empty() {
                return Poll::Ready(Ok(()));
            }
            // Full: wait for tonic to take some (rare; the proxy is not reading).
            self.room = Some(Box::pin(self.tx.clone().reserve_owned()));
        }
    }

    fn poll_gone(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        self.gone.as_mut().poll(cx)
    }

    fn close(&mut self, reason: &ConnectionError) {
        // After every answer already queued, so the proxy gets those first.
        if let Some(status) = self.end_status.take().or_else(|| close_status(reason)) {
            self.out.push_back(Err(status));
        }
    }
}

impl GrpcLink {
    /// The proxy is gone: nothing queued can reach it any more.
    fn proxy_gone(&mut self) -> ConnectionError {
        self.out.clear();
        ConnectionError::PeerClosed
    }
}

/// The gRPC status a stream ends with after the connection closed for this reason; `None` for
/// an orderly end.
fn close_status(reason: &ConnectionError) -> Option<Status> {
    match reason {
        ConnectionError::PeerClosed | ConnectionError::LocalClose | ConnectionError::Io { .. } => {
            None
        }
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

/// The Configure in `incoming` when it has no correlation id, taken out (what is left is
/// dropped): the reference's gRPC schema gives Configure no id and its proxy waits for no
/// answer, so such a Configure runs without one.
fn take_unanswered_configure(incoming: &mut AgentIncoming) -> Option<ConfigureEvent> {
    match incoming {
        AgentIncoming::Event { event, .. } => match &mut **event {
            Event::Configure(c) if c.correlation_id.is_empty() => Some(std::mem::take(c)),
            _ => None,
        },
        _ => None,
    }
}
