//! The proxy side of the gRPC transport: an [`AgentClient`] whose connection task owns a
//! message-mode [`ProxyConnection`] and one `ProcessStream`.
//!
//! Requests are multiplexed on the stream by correlation id exactly as on UDS (the core routes
//! answers); when the stream breaks, every pending request fails at once with a closed error and
//! the client reports itself disconnected, so the pool replaces it.
//!
//! An agent cannot starve the connection task by flooding it with valid messages (health
//! reports, pongs, answers for unknown ids): each turn handles the timers, the request stream and
//! the callers' commands before it reads one message from the agent, and request deadlines are
//! checked again after every message read, so requests are still sent and still time out on
//! time. An answer over [`MAX_MESSAGE_SIZE`] fails every request on the stream at once, with an
//! error naming the limit.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use agent_protocol_core::handshake::HandshakeError;
use agent_protocol_core::pool::Endpoint;
use agent_protocol_core::proxy::{ConnectionState, ProxyConnection};
use agent_protocol_core::ConnectionError;
use agent_protocol_proto::convert::AgentMessage;
use agent_protocol_proto::v2::agent_service_v2_client::AgentServiceV2Client;
use agent_protocol_proto::v2::{self, AgentToProxy, ProxyToAgent};
use agent_protocol_proto::MAX_MESSAGE_SIZE;
use tokio::sync::{mpsc, oneshot};
use tonic::codegen::tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::Streaming;

use super::{sleep_until, CONNECTION_WINDOW, STREAM_BUFFER, STREAM_WINDOW};
use crate::client::{
    AgentClient, ClientConfig, ClientDriver, ClientError, ConnectionStatus, ControlMessage,
    CHANNEL_BUFFER_SIZE,
};

/// Largest body (chunk data or WebSocket payload) one event may carry on gRPC: the message
/// limit less room for the event's other fields. A larger one is refused before it is sent,
/// since a message over the limit would end the whole stream (and every request on it).
pub(crate) const MAX_BODY_PER_MESSAGE: usize = MAX_MESSAGE_SIZE - 64 * 1024;

/// Settings that only gRPC endpoints use, in [`ClientConfig`]'s `transport` field.
///
/// ```
/// use agent_protocol_tokio::client::ClientConfig;
/// let config = ClientConfig::default();
/// # #[cfg(feature = "tls")]
/// assert!(config.transport.tls.is_none());
/// # let _ = config;
/// ```
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct GrpcOptions {
    /// TLS for `https://` endpoints: the CA that signed the agent's certificate, and optionally
    /// our own certificate for mTLS. An `https://` endpoint without it is refused.
    #[cfg(feature = "tls")]
    pub tls: Option<super::tls::ClientTls>,
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
pub(crate) async fn connect(
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
        with_tls(builder, &config, endpoint)?
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
    config: &ClientConfig,
    endpoint: &Endpoint,
) -> Result<tonic::transport::Endpoint, ClientError> {
    let Some(tls) = config.transport.tls.clone() else {
        return Err(connect_error(
            endpoint,
            "https endpoint without TLS settings (set ClientConfig::transport.tls)",
        ));
    };
    builder
        .tls_config(tls.into_tonic())
        .map_err(|e| connect_error(endpoint, error_chain(&e)))
}

#[cfg(not(feature = "tls"))]
fn with_tls(
    _builder: tonic::transport::Endpoint,
    _config: &ClientConfig,
    endpoint: &Endpoint,
) -> Result<tonic::transport::Endpoint, ClientError> {
    Err(connect_error(
        endpoint,
        "https endpoints need the `tls` feature of agent-protocol-tokio",
    ))
}

/// The error and its sources on one line (tonic's top-level message is just "transport error").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

async fn start(
    channel: Channel,
    config: ClientConfig,
    control: Option<mpsc::Sender<ControlMessage>>,
) -> Result<AgentClient, ClientError> {
    let request_timeout = config.connection.request_timeout;
    let handshake_timeout = config.connection.handshake.timeout;
    let mut conn = ProxyConnection::new_messages(config.connection, Instant::now());
    crate::client::set_wall_clock(&mut conn);
    let (out_tx, out_rx) = mpsc::channel::<ProxyToAgent>(STREAM_BUFFER);
    // The handshake leads the request stream.
    let mut out = VecDeque::new();
    while let Some(message) = conn.poll_message() {
        out.push_back(ProxyToAgent::from(message));
    }
    while let Some(first) = out.pop_front() {
        // Cannot be full: the channel is new and larger than what the core queues at start.
        if out_tx.try_send(first).is_err() {
            return Err(ClientError::Closed(ConnectionError::LocalClose));
        }
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
                "ProcessStream refused: {status}"
            ))))
        }
        Err(_) => {
            return Err(ClientError::Closed(ConnectionError::Handshake(
                HandshakeError::Timeout(handshake_timeout),
            )))
        }
    };
    let (tx, rx) = mpsc::channel(CHANNEL_BUFFER_SIZE);
    let status = Arc::new(ConnectionStatus::new());
    let (ready_tx, ready_rx) = oneshot::channel();
    let mut driver = ClientDriver::new(conn, rx, status.clone(), control, ready_tx);
    // A message over the limit would end the whole stream (and every request on it).
    driver.set_max_event_body(MAX_BODY_PER_MESSAGE);
    tokio::spawn(run(driver, inbound, out_tx));
    // The core enforces the handshake deadline, so this resolves in bounded time.
    let negotiated = ready_rx
        .await
        .map_err(|_| ClientError::Closed(ConnectionError::LocalClose))?
        .map_err(ClientError::Closed)?;
    Ok(AgentClient::from_parts(
        tx,
        status,
        negotiated,
        request_timeout,
    ))
}

/// The connection task: feeds the core what the stream brings, commands from callers, and the
/// time; moves what the core queues onto the request stream.
async fn run(
    mut driver: ClientDriver,
    mut inbound: Streaming<AgentToProxy>,
    out_tx: mpsc::Sender<ProxyToAgent>,
) {
    let mut out: VecDeque<ProxyToAgent> = VecDeque::new();
    let mut commands_open = true;
    loop {
        driver.dispatch_events();
        while let Some(message) = driver.conn.poll_message() {
            out.push_back(ProxyToAgent::from(message));
        }
        let closed = driver.conn.state() == ConnectionState::Closed;
        if closed {
            break;
        }
        let deadline = driver.conn.poll_timeout();
        // Timers, writes and commands before reads, one read per turn: however fast the agent
        // sends, requests are sent and time out on time.
        tokio::select! {
            biased;
            _ = sleep_until(deadline), if deadline.is_some() => {
                driver.conn.handle_timeout(Instant::now());
            }
            permit = out_tx.reserve(), if !out.is_empty() => match permit {
                Ok(permit) => {
                    if let Some(message) = out.pop_front() {
                        permit.send(message);
                    }
                    while !out.is_empty() {
                        match out_tx.try_reserve() {
                            Ok(permit) => {
                                if let Some(message) = out.pop_front() {
                                    permit.send(message);
                                }
                            }
                            Err(_) => break,
                        }
                    }
                }
                Err(_) => driver.conn.handle_io_error(ConnectionError::transport("gRPC request stream closed")),
            },
            cmd = driver.rx.recv(), if commands_open => match cmd {
                Some(cmd) => {
                    let now = Instant::now();
                    driver.handle_command(now, cmd);
                    // Drain the burst so it is converted and queued together.
                    for _ in 0..CHANNEL_BUFFER_SIZE {
                        match driver.rx.try_recv() {
                            Ok(cmd) => driver.handle_command(now, cmd),
                            Err(_) => break,
                        }
                    }
                }
                None => {
                    commands_open = false;
                    driver.conn.close();
                }
            },
            message = inbound.message() => {
                let now = Instant::now();
                match message {
                    Ok(Some(message)) => match AgentMessage::from(message) {
                        AgentMessage::Protocol(incoming) => driver.conn.handle_message(now, incoming),
                        AgentMessage::Log(log) => log_from_agent(&log),
                        AgentMessage::Invalid(e) => {
                            tracing::debug!(error = %e, "ignored a control message from the agent");
                        }
                        AgentMessage::Unknown => {
                            tracing::debug!("skipped an AgentToProxy message of unknown type");
                        }
                    },
                    Ok(None) => driver.conn.handle_eof(),
                    Err(status) => driver.conn.handle_io_error(ConnectionError::transport(stream_error(&status))),
                }
                // The timer branch only runs when nothing else is ready; an agent that keeps
                // this branch ready must not keep a passed deadline from being seen.
                if deadline.is_some_and(|d| now >= d) {
                    driver.conn.handle_timeout(now);
                }
            }
        }
        driver.publish_status();
    }
    driver.wind_down();
    // Dropping the request stream's sender and the response stream ends the RPC; the channel
    // closes its connection when the last handle to it is gone.
    drop(out_tx);
    drop(inbound);
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
        format!("gRPC stream: {status}")
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
