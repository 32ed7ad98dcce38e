//! The proxy side of the gRPC transport: an [`AgentClient`] whose connection task (the driver's
//! one client task) drives a [`ProxyConnection`] over a `GrpcLink`: one `ProcessStream`.
//!
//! Requests are multiplexed on the stream by correlation id exactly as on UDS (the core routes
//! answers); when the stream breaks, every pending request fails at once with a closed error and
//! the client reports itself disconnected, so the pool replaces it.
//!
//! An agent cannot starve the connection task by flooding it with valid messages (health
//! reports, pongs, answers for unknown ids): the task is the same as on sockets, so each turn
//! handles the request stream, the timers and the callers' commands before it reads one message
//! from the agent, and request deadlines are checked again after every message read. An answer
//! over [`MAX_MESSAGE_SIZE`] fails every request on the stream at once, with an error naming the
//! limit; an event whose body would not fit one message is refused before it is sent.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use agent_protocol_core::encoding::EncodeError;
use agent_protocol_core::frame::PayloadTooLarge;
use agent_protocol_core::handshake::HandshakeError;
use agent_protocol_core::pool::Endpoint;
use agent_protocol_core::proxy::{ProxyConnection, ProxyIncoming, ProxyOutgoing};
use agent_protocol_core::{ConnectionError, Encoding, SubmitError};
use agent_protocol_driver::client::{Connector, ProxyLink};
use agent_protocol_driver::Runtime;
use agent_protocol_proto::convert::AgentMessage;
use agent_protocol_proto::v2::agent_service_v2_client::AgentServiceV2Client;
use agent_protocol_proto::v2::{self, AgentToProxy, ProxyToAgent};
use agent_protocol_proto::MAX_MESSAGE_SIZE;
use futures_util::future::BoxFuture;
use futures_util::Stream;
use tokio::sync::mpsc::error::{SendError, TrySendError};
use tokio::sync::mpsc::{self, OwnedPermit};
use tonic::codegen::tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::Streaming;

use super::{CONNECTION_WINDOW, STREAM_BUFFER, STREAM_WINDOW};
use crate::client::{AgentClient, ClientConfig, ClientError, ControlMessage};
use crate::Tokio;

/// Largest body (chunk data or WebSocket payload) one event may carry on gRPC: the message
/// limit less room for the event's other fields. A larger one is refused before it is sent,
/// since a message over the limit would end the whole stream (and every request on it).
pub(crate) const MAX_BODY_PER_MESSAGE: usize = MAX_MESSAGE_SIZE - 64 * 1024;

/// The [`Connector`] of gRPC endpoints (`host:port`, `http://host:port`, `https://host:port`):
/// the one a tokio [`ClientConfig`] starts with. Replace it to reach `https://` agents, with the
/// CA that signed their certificate (and our own certificate for mTLS).
///
/// ```
/// use agent_protocol_tokio::client::ClientConfig;
/// use agent_protocol_tokio::grpc::GrpcConnector;
/// let config = ClientConfig::default().with_connector(GrpcConnector::new());
/// # #[cfg(feature = "tls")]
/// # fn with_tls(ca_pem: Vec<u8>) -> ClientConfig {
/// use agent_protocol_tokio::grpc::tls::ClientTls;
/// let tls = ClientTls::new(ca_pem).domain("agent.local");
/// ClientConfig::default().with_connector(GrpcConnector::new().with_tls(tls))
/// # }
/// ```
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct GrpcConnector {
    /// TLS for `https://` endpoints; an `https://` endpoint without it is refused.
    #[cfg(feature = "tls")]
    pub tls: Option<super::tls::ClientTls>,
}

impl GrpcConnector {
    /// A connector for plain-text gRPC (`https://` endpoints are refused until TLS settings
    /// are given, with the `tls` feature's `with_tls`).
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the TLS settings of `https://` endpoints.
    #[cfg(feature = "tls")]
    #[must_use]
    pub fn with_tls(mut self, tls: super::tls::ClientTls) -> Self {
        self.tls = Some(tls);
        self
    }
}

impl Connector<Tokio> for GrpcConnector {
    fn opens(&self, endpoint: &Endpoint) -> bool {
        matches!(endpoint, Endpoint::Grpc { .. })
    }

    fn connect<'a>(
        &'a self,
        endpoint: &'a Endpoint,
        config: ClientConfig,
        control: Option<mpsc::Sender<ControlMessage>>,
    ) -> BoxFuture<'a, Result<AgentClient, ClientError>> {
        Box::pin(connect(self, endpoint, config, control))
    }
}

fn connect_error(endpoint: &Endpoint, e: impl std::fmt::Display) -> ClientError {
    ClientError::Connect {
        endpoint: endpoint.to_string(),
        source: std::io::Error::new(std::io::ErrorKind::ConnectionRefused, e.to_string()),
    }
}

/// Opens the HTTP/2 channel (within `connect_timeout`), starts `ProcessStream` with the
/// handshake as its first message, and waits for the agent's answer (within the handshake
/// timeout the core enforces).
async fn connect(
    connector: &GrpcConnector,
    endpoint: &Endpoint,
    config: ClientConfig,
    control: Option<mpsc::Sender<ControlMessage>>,
) -> Result<AgentClient, ClientError> {
    let Endpoint::Grpc { uri, tls } = endpoint else {
        return Err(connect_error(endpoint, "not a gRPC endpoint"));
    };
    let builder = tonic::transport::Endpoint::from_shared(uri.clone())
        .map_err(|e| connect_error(endpoint, e))?
        .connect_timeout(config.connect_timeout)
        .tcp_nodelay(true)
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW);
    let builder = if *tls {
        with_tls(builder, connector, endpoint)?
    } else {
        builder
    };
    let channel = builder
        .connect()
        .await
        .map_err(|e| connect_error(endpoint, error_chain(&e)))?;
    start(channel, config, control).await
}

#[cfg(feature = "tls")]
fn with_tls(
    builder: tonic::transport::Endpoint,
    connector: &GrpcConnector,
    endpoint: &Endpoint,
) -> Result<tonic::transport::Endpoint, ClientError> {
    let Some(tls) = connector.tls.clone() else {
        return Err(connect_error(
            endpoint,
            "https endpoint without TLS settings (use GrpcConnector::with_tls)",
        ));
    };
    builder
        .tls_config(tls.into_tonic())
        .map_err(|e| connect_error(endpoint, error_chain(&e)))
}

#[cfg(not(feature = "tls"))]
fn with_tls(
    _builder: tonic::transport::Endpoint,
    _connector: &GrpcConnector,
    endpoint: &Endpoint,
) -> Result<tonic::transport::Endpoint, ClientError> {
    Err(connect_error(
        endpoint,
        "https endpoints need the `tls` feature of agent-protocol-tokio",
    ))
}

/// The error and its sources on one line (tonic's top-level message is just "transport error"),
/// each cause by its Display, and a cause that only repeats the text so far left out (hyper
/// and tonic often wrap an error in one that says the same).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        push_cause(&mut text, &s.to_string());
        source = s.source();
    }
    text
}

/// Appends what `cause` adds to `text`: its leading `part: ` pieces that `text` already says
/// are dropped.
fn push_cause(text: &mut String, cause: &str) {
    let mut rest = cause;
    while let Some((head, tail)) = rest.split_once(": ") {
        if !text.contains(head) {
            break;
        }
        rest = tail;
    }
    if !text.contains(rest) {
        text.push_str(": ");
        text.push_str(rest);
    }
}

/// A gRPC status as a sentence: what its code means, its message, then its causes
/// ([`error_chain`]). tonic's own Display shows the cause in its Debug form.
fn status_text(status: &tonic::Status) -> String {
    let mut text = status.code().description().to_owned();
    match std::error::Error::source(status) {
        // A status made from an error carries that error's text as its message too.
        Some(source) => push_cause(&mut text, &error_chain(source)),
        None if !status.message().is_empty() => push_cause(&mut text, status.message()),
        None => {}
    }
    text
}

async fn start(
    channel: Channel,
    mut config: ClientConfig,
    control: Option<mpsc::Sender<ControlMessage>>,
) -> Result<AgentClient, ClientError> {
    // Protobuf carries the messages: payload encodings mean nothing here.
    config.connection.handshake.encodings = [Encoding::Json].into_iter().collect();
    let handshake_timeout = config.connection.handshake.timeout;
    let mut conn = ProxyConnection::new(config.connection, Tokio::now());
    let (out_tx, out_rx) = mpsc::channel::<ProxyToAgent>(STREAM_BUFFER);
    // The handshake leads the request stream: tonic sends the call's headers only with a first
    // message to hand over.
    while let Some(message) = conn.poll_message() {
        // Cannot be full: the channel is new and larger than what the core queues at start.
        let _ = out_tx.try_send(ProxyToAgent::from(message));
    }
    let mut client = AgentServiceV2Client::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_SIZE)
        .max_encoding_message_size(MAX_MESSAGE_SIZE);
    let opened = tokio::time::timeout(
        handshake_timeout,
        client.process_stream(ReceiverStream::new(out_rx)),
    )
    .await;
    let inbound = match opened {
        Ok(Ok(response)) => response.into_inner(),
        Ok(Err(status)) => {
            return Err(ClientError::Closed(ConnectionError::transport(format!(
                "the gRPC stream could not be opened (is the endpoint a gRPC agent?): {}",
                status_text(&status)
            ))))
        }
        Err(_) => {
            return Err(ClientError::Closed(ConnectionError::Handshake(
                HandshakeError::Timeout(handshake_timeout),
            )))
        }
    };
    AgentClient::start(conn, GrpcLink::new(inbound, out_tx), control).await
}

/// The proxy's [`ProxyLink`] over one `ProcessStream`: the response stream in, the request
/// stream out, one message per read.
struct GrpcLink {
    inbound: Streaming<AgentToProxy>,
    out_tx: mpsc::Sender<ProxyToAgent>,
    /// Converted messages the request stream has no room for yet.
    out: VecDeque<ProxyToAgent>,
    /// Waiting for room on a full request stream (rare: only then is a future kept).
    room: Option<Room>,
    /// What the last read brought.
    received: Option<Result<ProxyIncoming, ConnectionError>>,
}

type Room = Pin<Box<dyn Future<Output = Result<OwnedPermit<ProxyToAgent>, SendError<()>>> + Send>>;

impl GrpcLink {
    fn new(inbound: Streaming<AgentToProxy>, out_tx: mpsc::Sender<ProxyToAgent>) -> Self {
        Self {
            inbound,
            out_tx,
            out: VecDeque::new(),
            room: None,
            received: None,
        }
    }

    fn stream_closed() -> ConnectionError {
        ConnectionError::transport("gRPC request stream closed")
    }
}

impl ProxyLink for GrpcLink {
    const TRANSPORT_ENCODING: Option<&'static str> = Some("protobuf");

    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let message = match Pin::new(&mut self.inbound).poll_next(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(message) => message,
        };
        self.received = match message {
            Some(Ok(message)) => match AgentMessage::from(message) {
                AgentMessage::Protocol(incoming) => Some(Ok(incoming)),
                AgentMessage::Log(log) => {
                    log_from_agent(&log);
                    None
                }
                AgentMessage::Invalid(e) => {
                    tracing::debug!(error = %e, "ignored a control message from the agent");
                    None
                }
                AgentMessage::Unknown => {
                    tracing::debug!("skipped an AgentToProxy message of unknown type");
                    None
                }
            },
            None => Some(Err(ConnectionError::PeerClosed)),
            Some(Err(status)) => Some(Err(ConnectionError::transport(stream_error(&status)))),
        };
        Poll::Ready(())
    }

    fn try_recv(&mut self) -> Option<Result<ProxyIncoming, ConnectionError>> {
        self.received.take()
    }

    fn send(&mut self, message: ProxyOutgoing) -> Result<(), SubmitError> {
        if let ProxyOutgoing::Event(event) = &message {
            // A message over the limit would end the whole stream (and every request on it).
            if event.body_len() > MAX_BODY_PER_MESSAGE {
                return Err(SubmitError::Encode(EncodeError::TooLarge(
                    PayloadTooLarge {
                        len: event.body_len(),
                        max: MAX_BODY_PER_MESSAGE,
                    },
                )));
            }
        }
        self.out.push_back(ProxyToAgent::from(message));
        Ok(())
    }

    fn has_unsent(&self) -> bool {
        !self.out.is_empty()
    }

    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ConnectionError>> {
        while let Some(message) = self.out.pop_front() {
            if let Some(room) = self.room.as_mut() {
                match room.as_mut().poll(cx) {
                    Poll::Pending => {
                        self.out.push_front(message);
                        return Poll::Pending;
                    }
                    Poll::Ready(Ok(permit)) => {
                        self.room = None;
                        permit.send(message);
                        continue;
                    }
                    Poll::Ready(Err(_)) => return Poll::Ready(Err(Self::stream_closed())),
                }
            }
            match self.out_tx.try_send(message) {
                Ok(()) => {}
                Err(TrySendError::Full(message)) => {
                    self.out.push_front(message);
                    self.room = Some(Box::pin(self.out_tx.clone().reserve_owned()));
                }
                Err(TrySendError::Closed(_)) => return Poll::Ready(Err(Self::stream_closed())),
            }
        }
        Poll::Ready(Ok(()))
    }
}

/// What a broken response stream is reported as. A message over the limit (which tonic's
/// decoder, and only it, reports as OUT_OF_RANGE) is named as such, with the limit.
fn stream_error(status: &tonic::Status) -> String {
    if status.code() == tonic::Code::OutOfRange {
        format!(
            "gRPC stream: an answer exceeded the message limit of {MAX_MESSAGE_SIZE} bytes (16 MiB): {}",
            status.message()
        )
    } else {
        format!("gRPC stream: {}", status_text(status))
    }
}

fn log_from_agent(log: &v2::LogMessage) {
    let level = v2::LogLevel::try_from(log.level).unwrap_or(v2::LogLevel::Unspecified);
    let cid = log.correlation_id.as_deref().unwrap_or("");
    match level {
        v2::LogLevel::Error | v2::LogLevel::Warn => {
            tracing::warn!(correlation_id = cid, fields = ?log.fields, "agent: {}", log.message)
        }
        v2::LogLevel::Info => {
            tracing::info!(correlation_id = cid, fields = ?log.fields, "agent: {}", log.message)
        }
        _ => tracing::debug!(correlation_id = cid, fields = ?log.fields, "agent: {}", log.message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Layer(&'static str, Option<Box<Layer>>);

    impl std::fmt::Display for Layer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl std::error::Error for Layer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|l| l as _)
        }
    }

    #[test]
    fn statuses_read_as_sentences_without_debug_dumps_or_repeats() {
        let plain = tonic::Status::unavailable("agent draining");
        assert_eq!(
            status_text(&plain),
            "The service is currently unavailable: agent draining"
        );
        let cause = Layer(
            "transport error",
            Some(Box::new(Layer("canceled: connection closed", None))),
        );
        let wrapped = tonic::Status::from_error(Box::new(Layer("canceled", Some(Box::new(cause)))));
        let text = status_text(&wrapped);
        assert_eq!(text.matches("canceled").count(), 1, "{text}");
        assert!(
            text.ends_with("transport error: connection closed"),
            "{text}"
        );
        assert!(!text.contains("Layer("), "{text}");
    }
}
