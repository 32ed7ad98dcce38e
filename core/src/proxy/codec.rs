//! [`ProxyCodec`]: the framing layer a proxy puts in front of its
//! [`ProxyConnection`](super::ProxyConnection) on byte streams (Unix sockets, TCP, reverse
//! connections).

use bytes::{Bytes, BytesMut};
use serde::Deserialize;

use crate::encoding::{self, Encoding};
use crate::error::{ConnectionError, SubmitError};
use crate::frame::{Decoded, Frame, FrameType};
use crate::framed_io::FramedIo;
use crate::handshake::{HandshakeError, HandshakeResponse};

use super::salvage::salvage_response_id;
use super::{ProxyConfig, ProxyIncoming, ProxyOutgoing};

/// Where the codec is in the connection's life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Only the agent's HandshakeResponse may come.
    AwaitingHandshake,
    /// Frames carry payloads in this encoding.
    Open(Encoding),
    /// The stream cannot be read any further (a framing error, a refused handshake).
    Broken,
}

/// The framing layer of one proxy connection.
///
/// It owns everything that exists only because messages travel as frames: the read buffer and
/// the frame decoder, the negotiated payload encoding (learnt from the agent's handshake
/// answer), salvaging the correlation id of an answer that does not decode (so that only its
/// request fails), skipping frames of unknown or unexpected types and control frames that do
/// not decode, and the bound on written but unsent output
/// ([`ProxyConfig::max_send_buffer`]). What it decodes it hands over as [`ProxyIncoming`]; what
/// it is given as [`ProxyOutgoing`] it writes into one output buffer. Handshakes, cancels and
/// pings are JSON whatever was negotiated, as the reference proxy sends them.
///
/// See the [module docs](super) for the loop that joins it to a connection.
#[derive(Debug)]
pub struct ProxyCodec {
    io: FramedIo,
    phase: Phase,
    max_send_buffer: usize,
    frames_ignored: u64,
}

impl ProxyCodec {
    /// The codec of a connection that starts with the handshake: the first frame must be the
    /// agent's answer.
    pub fn new(config: &ProxyConfig) -> Self {
        Self::with_phase(config, Phase::AwaitingHandshake)
    }

    /// The codec of a connection that starts established (a reverse connection, after its
    /// registration), reading and writing payloads in `encoding`.
    pub fn established(config: &ProxyConfig, encoding: Encoding) -> Self {
        Self::with_phase(config, Phase::Open(encoding))
    }

    fn with_phase(config: &ProxyConfig, phase: Phase) -> Self {
        Self {
            io: FramedIo::new(config.max_frame_len),
            phase,
            max_send_buffer: config.max_send_buffer,
            frames_ignored: 0,
        }
    }

    /// The read buffer, for adapters that read straight into it (then call
    /// [`ProxyCodec::poll_incoming`]).
    pub fn read_buffer(&mut self) -> &mut BytesMut {
        &mut self.io.read_buf
    }

    /// The next message decoded from the read buffer; `None` when no whole frame is buffered.
    /// An `Err` means the stream cannot be read any further (hand it to
    /// [`ProxyConnection::handle_closed`](super::ProxyConnection::handle_closed)); nothing is
    /// decoded after it and the read buffer is discarded.
    #[must_use]
    pub fn poll_incoming(&mut self) -> Option<Result<ProxyIncoming, ConnectionError>> {
        loop {
            if self.phase == Phase::Broken {
                // Nothing after a framing error can be trusted; nothing is kept either.
                self.io.discard_input();
                return None;
            }
            let frame = match self.io.decode() {
                Ok(None) => return None,
                Ok(Some(Decoded::Frame(frame))) => frame,
                Ok(Some(Decoded::Skipped { .. })) => continue,
                Err(e) => return Some(Err(self.break_with(e))),
            };
            let decoded = match self.phase {
                Phase::Open(encoding) => self.on_frame(encoding, frame),
                _ => Some(self.on_handshake(frame)),
            };
            if decoded.is_some() {
                return decoded;
            }
        }
    }

    fn on_handshake(&mut self, frame: Frame) -> Result<ProxyIncoming, ConnectionError> {
        if frame.frame_type != FrameType::HandshakeResponse {
            return Err(self.break_with(HandshakeError::UnexpectedFrame {
                expected: FrameType::HandshakeResponse,
                got: frame.frame_type.as_byte(),
            }));
        }
        let response: HandshakeResponse = match serde_json::from_slice(&frame.payload) {
            Ok(response) => response,
            Err(e) => return Err(self.break_with(HandshakeError::Malformed(e.to_string()))),
        };
        // Whether the agent may choose this encoding is the connection's call; the codec only
        // needs to know how to read what follows.
        self.phase = match Encoding::from_name(&response.encoding) {
            Some(encoding) if response.success => Phase::Open(encoding),
            _ => Phase::Broken,
        };
        Ok(ProxyIncoming::Handshake(response))
    }

    fn on_frame(
        &mut self,
        encoding: Encoding,
        frame: Frame,
    ) -> Option<Result<ProxyIncoming, ConnectionError>> {
        let payload = &frame.payload;
        let message = match frame.frame_type {
            FrameType::AgentResponse => {
                match encoding::decode_response(encoding, payload) {
                    Ok(response) => ProxyIncoming::Response { response },
                    // Fail just the request it was for, when we can tell which; otherwise the
                    // stream can no longer be trusted to route answers, so it ends (every
                    // pending request fails at once instead of waiting out its timeout).
                    Err(error) => match salvage_response_id(encoding, payload) {
                        Some(correlation_id) => ProxyIncoming::MalformedResponse {
                            correlation_id,
                            error,
                        },
                        None => return Some(Err(self.break_with(error))),
                    },
                }
            }
            FrameType::HealthStatus => ProxyIncoming::Health(self.control(encoding, &frame)?),
            FrameType::FlowControl => ProxyIncoming::FlowControl(self.control(encoding, &frame)?),
            FrameType::MetricsReport => ProxyIncoming::Metrics(self.control(encoding, &frame)?),
            FrameType::ConfigUpdateRequest => {
                ProxyIncoming::ConfigUpdate(self.control(encoding, &frame)?)
            }
            FrameType::Pong => ProxyIncoming::Pong(self.control(encoding, &frame)?),
            // Frames a proxy never expects (events, a second handshake, pings).
            _ => {
                self.frames_ignored += 1;
                return None;
            }
        };
        Some(Ok(message))
    }

    /// A control frame's payload; one that does not decode is skipped (and counted), since it
    /// concerns no request.
    fn control<'a, T: Deserialize<'a>>(
        &mut self,
        encoding: Encoding,
        frame: &'a Frame,
    ) -> Option<T> {
        let decoded = encoding::decode_payload(frame.frame_type, encoding, &frame.payload);
        if decoded.is_err() {
            self.frames_ignored += 1;
        }
        decoded.ok()
    }

    fn break_with(&mut self, reason: impl Into<ConnectionError>) -> ConnectionError {
        self.phase = Phase::Broken;
        self.io.discard_input();
        reason.into()
    }

    /// Writes one of the connection's messages into the output buffer. An event is refused,
    /// with nothing written, when the output already holds more than
    /// [`ProxyConfig::max_send_buffer`] unsent bytes or when it cannot be encoded (too large
    /// for a frame). Handshakes, cancels and pings are small and written in JSON.
    pub fn encode(&mut self, message: ProxyOutgoing) -> Result<(), SubmitError> {
        let out = &mut self.io.out;
        let json = Encoding::Json;
        let written = match &message {
            ProxyOutgoing::Event(event) => {
                if out.len() > self.max_send_buffer {
                    return Err(SubmitError::SendBufferFull {
                        buffered: out.len(),
                        limit: self.max_send_buffer,
                    });
                }
                let encoding = match self.phase {
                    Phase::Open(encoding) => encoding,
                    _ => json,
                };
                encoding::encode_event(out, encoding, event)
            }
            ProxyOutgoing::Handshake(m) => {
                encoding::encode_frame(out, FrameType::HandshakeRequest, json, m)
            }
            ProxyOutgoing::Cancel(m) => encoding::encode_frame(out, FrameType::Cancel, json, m),
            ProxyOutgoing::Ping(m) => encoding::encode_frame(out, FrameType::Ping, json, m),
        };
        Ok(written?)
    }

    /// Everything written so far, coalesced into one buffer (several frames), or `None`.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        self.io.take_output()
    }

    /// Bytes written and not yet taken by [`ProxyCodec::poll_transmit`].
    pub fn pending_transmit(&self) -> usize {
        self.io.out.len()
    }

    /// Frames with unknown type bytes skipped so far.
    pub fn frames_skipped(&self) -> u64 {
        self.io.decoder.frames_skipped()
    }

    /// Frames of known types a proxy never expects (events, a second handshake, pings), and
    /// control frames that did not decode, ignored so far.
    pub fn frames_ignored(&self) -> u64 {
        self.frames_ignored
    }
}
