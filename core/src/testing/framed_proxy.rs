//! [`FramedProxy`]: a proxy connection behind its codec, fed and drained as bytes.

use std::ops::{Deref, DerefMut};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::encoding::Encoding;
use crate::error::{ConnectionError, SubmitError};
use crate::event::Event;
use crate::handshake::Negotiated;
use crate::proxy::{ProxyCodec, ProxyConfig, ProxyConnection, RequestId};

/// A [`ProxyConnection`] behind its [`ProxyCodec`]: a proxy on a byte stream, without the
/// stream. Bytes go in with [`FramedProxy::handle_input`] and come out of
/// [`FramedProxy::poll_transmit`]; events are sent with [`FramedProxy::send_event`]; everything
/// else is the connection's own API (through `Deref`).
///
/// ```
/// use std::time::Instant;
/// use agent_protocol_core::proxy::ProxyConfig;
/// use agent_protocol_core::testing::FramedProxy;
///
/// let mut proxy = FramedProxy::new(ProxyConfig::default(), Instant::now());
/// let hello = proxy.poll_transmit().unwrap();
/// assert_eq!(hello[4], 0x01); // the handshake request
/// ```
#[derive(Debug)]
pub struct FramedProxy {
    /// The protocol state machine.
    pub conn: ProxyConnection,
    /// The framing in front of it.
    pub codec: ProxyCodec,
}

impl FramedProxy {
    /// A connection that starts with the handshake.
    pub fn new(config: ProxyConfig, now: Instant) -> Self {
        Self {
            codec: ProxyCodec::new(&config),
            conn: ProxyConnection::new(config, now),
        }
    }

    /// A connection established without a handshake (a reverse connection after registration).
    pub fn established(config: ProxyConfig, negotiated: Negotiated, now: Instant) -> Self {
        Self {
            codec: ProxyCodec::established(&config, negotiated.encoding),
            conn: ProxyConnection::new_established(config, negotiated, now),
        }
    }

    /// A connection established in `encoding` with an agent that accepts every event kind.
    pub fn open(config: ProxyConfig, encoding: Encoding, now: Instant) -> Self {
        let capabilities = crate::Capabilities::new("agent", "agent", "1").with_all_events();
        let negotiated = Negotiated {
            encoding,
            capabilities,
            protocol_version: crate::handshake::PROTOCOL_VERSION,
        };
        Self::established(config, negotiated, now)
    }

    /// Feeds bytes read from the stream, in any split, and processes every complete frame.
    pub fn handle_input(&mut self, now: Instant, data: &[u8]) {
        self.codec.read_buffer().extend_from_slice(data);
        self.process_input(now);
    }

    /// Processes every complete frame already in the codec's read buffer.
    pub fn process_input(&mut self, now: Instant) {
        if !self.codec.read_buffer().is_empty() {
            self.conn.handle_activity(now);
        }
        while let Some(message) = self.codec.poll_incoming() {
            match message {
                Ok(message) => self.conn.handle_message(now, message),
                Err(reason) => self.conn.handle_closed(reason),
            }
        }
    }

    /// The stream ended (the peer closed it).
    pub fn handle_eof(&mut self) {
        self.conn.handle_closed(ConnectionError::PeerClosed);
    }

    /// Sends an event through the codec (see [`ProxyConnection::send_event`]).
    pub fn send_event(
        &mut self,
        now: Instant,
        event: Event,
        timeout: Option<Duration>,
    ) -> Result<RequestId, SubmitError> {
        let codec = &mut self.codec;
        self.conn
            .send_event(now, event, timeout, |message| codec.encode(message))
    }

    /// Moves the connection's queued messages (handshake, cancels, pings) into the codec.
    pub fn flush_messages(&mut self) {
        while let Some(message) = self.conn.poll_message() {
            // Handshakes, cancels and pings are never refused for the buffer's size.
            let _ = self.codec.encode(message);
        }
    }

    /// Everything the proxy has to write, or `None`.
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        self.flush_messages();
        self.codec.poll_transmit()
    }
}

impl Deref for FramedProxy {
    type Target = ProxyConnection;

    fn deref(&self) -> &ProxyConnection {
        &self.conn
    }
}

impl DerefMut for FramedProxy {
    fn deref_mut(&mut self) -> &mut ProxyConnection {
        &mut self.conn
    }
}
