//! [`AgentCodec`]: the framing layer an agent puts in front of its
//! [`AgentConnection`](super::AgentConnection) on byte streams (Unix sockets, TCP, reverse
//! connections).

use bytes::{Bytes, BytesMut};

use crate::byte_str::ByteStr;
use crate::control::Cancel;
use crate::encoding::{self, EncodeError, Encoding};
use crate::error::ConnectionError;
use crate::frame::{self, Decoded, Frame, FrameType, FRAME_HEADER_LEN};
use crate::framed_io::FramedIo;
use crate::handshake::{self, HandshakeError};
use crate::limits::MessageLimits;
use crate::registration::{self, RegistrationError};

use super::fail_closed::FailClosed;
use super::{AgentConfig, AgentIncoming, AgentOutgoing};

/// Where the codec is in the connection's life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// A reverse connection: only the proxy's RegistrationResponse may come.
    AwaitingRegistration,
    /// Only a HandshakeRequest may come.
    AwaitingHandshake,
    /// The handshake request was read; nothing more is decoded until the answer is written.
    AwaitingAnswer,
    /// Frames carry payloads in this encoding.
    Open(Encoding),
    /// The stream cannot be read any further (a framing error, a refused handshake).
    Broken,
}

/// What became of a message given to [`AgentCodec::encode`] that could not be written as
/// given.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Unsent {
    /// The application's answer could not be encoded (too large for a frame, or refused by the
    /// serializer); a fail-closed block was written in its place (see
    /// [`unsendable_answer`](super::unsendable_answer)).
    #[error("answer replaced by a fail-closed block: {0}")]
    Replaced(EncodeError),
    /// A message other than an answer could not be encoded and was dropped.
    #[error("message dropped: {0}")]
    Dropped(EncodeError),
    /// Not even the fail-closed block could be written in an answer's place (a correlation id
    /// near the frame limit): the connection must close, so the proxy fails the request at once
    /// rather than waiting out its timeout.
    #[error("cannot answer a request, not even fail-closed: {0}")]
    Fatal(EncodeError),
}

/// The framing layer of one agent connection.
///
/// It owns everything that exists only because messages travel as frames: the read buffer and
/// the frame decoder, the negotiated payload encoding, the limits checked while a payload is
/// decoded (before anything over them is allocated), salvaging the correlation id of an event
/// that does not decode, echoing pings byte for byte, skipping frames of unknown or unexpected
/// types, and writing answers with their correlation id in `audit.custom`. What it decodes it
/// hands over as [`AgentIncoming`]; what it is given as [`AgentOutgoing`] it writes into one
/// output buffer.
///
/// The handshake request is always JSON and fixes the encoding of everything after it, so once
/// the codec has read it, it decodes nothing more until it has written the answer (and so learnt
/// the encoding): an adapter hands each decoded message to the connection and writes the
/// connection's messages before asking for the next one.
///
/// ```
/// use std::time::Instant;
/// use agent_protocol_core::agent::{AgentCodec, AgentConfig, AgentConnection, AgentEvent};
/// use agent_protocol_core::frame::{Decoded, FrameDecoder, FrameType};
/// use agent_protocol_core::handshake::{ProxyHandshake, ProxyHandshakeConfig};
///
/// let now = Instant::now();
/// let config = AgentConfig::default();
/// let mut codec = AgentCodec::new(&config);
/// let mut agent = AgentConnection::new(config, now);
///
/// // The proxy's handshake arrives on the socket.
/// let mut wire = bytes::BytesMut::new();
/// let proxy = ProxyHandshake::start(&ProxyHandshakeConfig::default(), now, &mut wire).unwrap();
/// codec.read_buffer().extend_from_slice(&wire);
///
/// // The adapter's loop: decoded messages in, the connection's messages out.
/// while let Some(message) = codec.poll_incoming() {
///     match message {
///         Ok(message) => agent.handle_message(now, message),
///         Err(reason) => agent.handle_closed(reason),
///     }
///     while let Some(out) = agent.poll_message() {
///         codec.encode(out).unwrap();
///     }
/// }
/// assert!(matches!(agent.poll_event(), Some(AgentEvent::Established { .. })));
///
/// let mut answer = bytes::BytesMut::from(&codec.poll_transmit().unwrap()[..]);
/// let Some(Decoded::Frame(frame)) = FrameDecoder::new().decode(&mut answer).unwrap() else { panic!() };
/// assert_eq!(frame.frame_type, FrameType::HandshakeResponse);
/// assert!(proxy.handle_frame(&frame).is_ok());
/// ```
#[derive(Debug)]
pub struct AgentCodec {
    io: FramedIo,
    phase: Phase,
    limits: MessageLimits,
    frames_ignored: u64,
}

impl AgentCodec {
    /// The codec of a connection accepted on the agent's socket: the first frame must be the
    /// proxy's handshake request.
    pub fn new(config: &AgentConfig) -> Self {
        Self::with_phase(config, Phase::AwaitingHandshake)
    }

    /// The codec of a reverse connection: it writes the registration, and the first frame read
    /// must be the proxy's answer; after a successful one, payloads are JSON.
    pub fn registering(config: &AgentConfig) -> Self {
        Self::with_phase(config, Phase::AwaitingRegistration)
    }

    /// The codec of a connection that starts established (a reverse connection, after its
    /// registration), reading and writing payloads in `encoding`.
    pub fn established(config: &AgentConfig, encoding: Encoding) -> Self {
        Self::with_phase(config, Phase::Open(encoding))
    }

    fn with_phase(config: &AgentConfig, phase: Phase) -> Self {
        Self {
            io: FramedIo::new(config.max_frame_len),
            phase,
            limits: MessageLimits::default()
                .with_headers(config.header_limits)
                .with_max_elements(config.max_elements),
            frames_ignored: 0,
        }
    }

    /// The read buffer, for adapters that read straight into it (then call
    /// [`AgentCodec::poll_incoming`]).
    pub fn read_buffer(&mut self) -> &mut BytesMut {
        &mut self.io.read_buf
    }

    /// How many more bytes the codec needs before it can make progress: a hint for sizing the
    /// next read into [`AgentCodec::read_buffer`]. Never more than one frame.
    pub fn read_hint(&self) -> usize {
        self.io.decoder.bytes_wanted(&self.io.read_buf)
    }

    /// The next message decoded from the read buffer; `None` when a frame is incomplete, or
    /// while the handshake answer is not written yet. An `Err` means the stream cannot be read
    /// any further (hand it to
    /// [`AgentConnection::handle_closed`](super::AgentConnection::handle_closed)); nothing is
    /// decoded after it and the read buffer is discarded.
    #[must_use]
    pub fn poll_incoming(&mut self) -> Option<Result<AgentIncoming, ConnectionError>> {
        loop {
            let encoding = match self.phase {
                Phase::Open(encoding) => Some(encoding),
                Phase::AwaitingHandshake | Phase::AwaitingRegistration => {
                    if let Some(got) = self.premature_frame() {
                        return Some(Err(self.unexpected_first_frame(got)));
                    }
                    None
                }
                Phase::AwaitingAnswer => return None,
                Phase::Broken => {
                    // Nothing after a framing error can be trusted; nothing is kept either.
                    self.io.discard_input();
                    return None;
                }
            };
            let frame = match self.io.decode() {
                Ok(None) => return None,
                Ok(Some(Decoded::Frame(frame))) => frame,
                Ok(Some(Decoded::Skipped { type_byte, .. })) => {
                    if encoding.is_none() {
                        // Normally caught by `premature_frame` already (zero-length headers
                        // are not).
                        return Some(Err(self.unexpected_first_frame(type_byte)));
                    }
                    continue;
                }
                Err(e) => return Some(Err(self.break_with(e))),
            };
            let decoded = match encoding {
                None => self.on_first_frame(frame),
                Some(encoding) => self.on_frame(encoding, frame),
            };
            if decoded.is_some() {
                return decoded;
            }
        }
    }

    /// The type of the one frame that may come first: the proxy's handshake request, or its
    /// answer to a reverse connection's registration.
    fn first_frame_type(&self) -> FrameType {
        match self.phase {
            Phase::AwaitingRegistration => FrameType::HandshakeResponse,
            _ => FrameType::HandshakeRequest,
        }
    }

    /// Before the first frame, the type byte of a buffered frame header of another type: the
    /// connection is refused as soon as the header is seen, before its payload (up to 16 MiB) is
    /// buffered or skipped. Zero-length headers are left to the decoder.
    fn premature_frame(&self) -> Option<u8> {
        let b = &self.io.read_buf;
        if b.len() < FRAME_HEADER_LEN {
            return None;
        }
        let len = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
        let ty = b[4];
        (len != 0 && ty != self.first_frame_type().as_byte()).then_some(ty)
    }

    fn unexpected_first_frame(&mut self, got: u8) -> ConnectionError {
        let expected = self.first_frame_type();
        match self.phase {
            Phase::AwaitingRegistration => {
                self.break_with(RegistrationError::UnexpectedFrame { expected, got })
            }
            _ => self.break_with(HandshakeError::UnexpectedFrame { expected, got }),
        }
    }

    fn on_first_frame(&mut self, frame: Frame) -> Option<Result<AgentIncoming, ConnectionError>> {
        if frame.frame_type != self.first_frame_type() {
            return Some(Err(self.unexpected_first_frame(frame.frame_type.as_byte())));
        }
        Some(match self.phase {
            Phase::AwaitingRegistration => match registration::decode_response(&frame.payload) {
                Ok(response) => {
                    // Frames the proxy sends right behind its acceptance are events, in JSON.
                    self.phase = if response.success {
                        Phase::Open(Encoding::Json)
                    } else {
                        Phase::Broken
                    };
                    Ok(AgentIncoming::Registered(response))
                }
                Err(e) => Err(self.break_with(e)),
            },
            _ => match handshake::decode_request(&frame.payload) {
                Ok(request) => {
                    self.phase = Phase::AwaitingAnswer;
                    Ok(AgentIncoming::Handshake(request))
                }
                Err(e) => Err(self.break_with(e)),
            },
        })
    }

    fn on_frame(
        &mut self,
        encoding: Encoding,
        frame: Frame,
    ) -> Option<Result<AgentIncoming, ConnectionError>> {
        let payload = &frame.payload;
        let message = match frame.frame_type {
            ty if ty.is_event() => {
                match encoding::decode_shared_event(ty, encoding, payload, self.limits)? {
                    Ok((event, shared)) => AgentIncoming::Event {
                        event: Box::new(event),
                        shared,
                    },
                    Err(error) => AgentIncoming::MalformedEvent {
                        correlation_id: encoding::salvage_correlation_id(encoding, payload),
                        error,
                    },
                }
            }
            FrameType::Cancel => {
                match encoding::decode_payload::<Cancel>(FrameType::Cancel, encoding, payload) {
                    Ok(cancel) => AgentIncoming::Cancel(cancel),
                    // A cancel nobody can read stops nothing; the request still gets its answer.
                    Err(_) => return self.ignore(),
                }
            }
            FrameType::Ping => {
                // Echoed byte for byte, ahead of any answer still to come; the payload came in a
                // frame within the limit, so it always fits one.
                let echoed = frame::encode_frame(&mut self.io.out, FrameType::Pong, payload);
                debug_assert!(echoed.is_ok());
                return None;
            }
            // Frames an agent never expects (a second handshake, answers, agent-side control).
            _ => return self.ignore(),
        };
        Some(Ok(message))
    }

    fn ignore(&mut self) -> Option<Result<AgentIncoming, ConnectionError>> {
        self.frames_ignored += 1;
        None
    }

    fn break_with(&mut self, reason: impl Into<ConnectionError>) -> ConnectionError {
        self.phase = Phase::Broken;
        self.io.discard_input();
        reason.into()
    }

    /// Writes one of the connection's messages into the output buffer. An answer carries its
    /// correlation id in `audit.custom.correlation_id` (overwriting whatever is there), where
    /// framed proxies read it. A successful handshake answer switches decoding to the
    /// negotiated encoding; a refusal ends decoding.
    pub fn encode(&mut self, message: AgentOutgoing) -> Result<(), Unsent> {
        let encoding = match self.phase {
            Phase::Open(encoding) => encoding,
            _ => Encoding::Json,
        };
        let out = &mut self.io.out;
        let written = match message {
            AgentOutgoing::Response {
                correlation_id,
                mut response,
            } => {
                response.correlation_id = Some(correlation_id);
                let written = encoding::encode_response(out, encoding, &response);
                return match written {
                    Ok(()) => Ok(()),
                    Err(error) => {
                        let correlation_id = response.correlation_id.unwrap_or_default();
                        Err(self.replace_answer(encoding, correlation_id, error))
                    }
                };
            }
            AgentOutgoing::Register(request) => {
                encoding::encode_frame(out, FrameType::HandshakeRequest, Encoding::Json, &request)
            }
            AgentOutgoing::Handshake(answer) => {
                let ty = FrameType::HandshakeResponse;
                let written = encoding::encode_frame(out, ty, Encoding::Json, &answer);
                self.phase = match Encoding::from_name(&answer.encoding) {
                    Some(negotiated) if answer.success && written.is_ok() => {
                        Phase::Open(negotiated)
                    }
                    _ => Phase::Broken,
                };
                written
            }
            // Pongs stay JSON, as pings are sent.
            AgentOutgoing::Pong(ping) => {
                encoding::encode_frame(out, FrameType::Pong, Encoding::Json, &ping)
            }
            AgentOutgoing::Health(m) => {
                encoding::encode_frame(out, FrameType::HealthStatus, encoding, &m)
            }
            AgentOutgoing::FlowControl(m) => {
                encoding::encode_frame(out, FrameType::FlowControl, encoding, &m)
            }
            AgentOutgoing::Metrics(m) => {
                encoding::encode_frame(out, FrameType::MetricsReport, encoding, &m)
            }
            AgentOutgoing::ConfigUpdate(m) => {
                encoding::encode_frame(out, FrameType::ConfigUpdateRequest, encoding, &m)
            }
        };
        written.map_err(Unsent::Dropped)
    }

    /// Writes the fail-closed block in place of an answer that could not be encoded.
    fn replace_answer(
        &mut self,
        encoding: Encoding,
        correlation_id: ByteStr,
        error: EncodeError,
    ) -> Unsent {
        let mut block = FailClosed::for_encode_error(&error).response(None);
        block.set_correlation_id(correlation_id);
        match encoding::encode_frame(&mut self.io.out, FrameType::AgentResponse, encoding, &block) {
            Ok(()) => Unsent::Replaced(error),
            Err(_) => Unsent::Fatal(error),
        }
    }

    /// Everything written so far, coalesced into one buffer (several frames), or `None`.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        self.io.take_output()
    }

    /// Bytes written and not yet taken by [`AgentCodec::poll_transmit`].
    pub fn pending_transmit(&self) -> usize {
        self.io.out.len()
    }

    /// Frames with unknown type bytes skipped so far.
    pub fn frames_skipped(&self) -> u64 {
        self.io.decoder.frames_skipped()
    }

    /// Frames of known types an agent never expects (a second handshake, answers, agent-side
    /// control messages) and unreadable cancels, ignored so far.
    pub fn frames_ignored(&self) -> u64 {
        self.frames_ignored
    }
}
