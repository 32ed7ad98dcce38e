//! [`FramedAgent`]: an agent connection behind its codec, fed and drained as bytes.

use std::ops::{Deref, DerefMut};
use std::time::Instant;

use bytes::Bytes;

use crate::agent::{AgentCodec, AgentConfig, AgentConnection, Unsent};
use crate::encoding::Encoding;
use crate::error::ConnectionError;
use crate::registration::RegistrationRequest;

/// An [`AgentConnection`] behind its [`AgentCodec`]: an agent on a byte stream, without the
/// stream. Bytes go in with [`FramedAgent::handle_input`] and come out of
/// [`FramedAgent::poll_transmit`]; everything else is the connection's own API (through
/// `Deref`).
///
/// ```
/// use std::time::Instant;
/// use agent_protocol_core::agent::{AgentConfig, AgentEvent};
/// use agent_protocol_core::handshake::{ProxyHandshake, ProxyHandshakeConfig};
/// use agent_protocol_core::testing::FramedAgent;
///
/// let now = Instant::now();
/// let mut agent = FramedAgent::new(AgentConfig::default(), now);
/// let mut wire = bytes::BytesMut::new();
/// ProxyHandshake::start(&ProxyHandshakeConfig::default(), now, &mut wire).unwrap();
/// agent.handle_input(now, &wire);
/// assert!(matches!(agent.poll_event(), Some(AgentEvent::Established { .. })));
/// assert!(agent.poll_transmit().is_some()); // the handshake answer
/// ```
#[derive(Debug)]
pub struct FramedAgent {
    /// The protocol state machine.
    pub conn: AgentConnection,
    /// The framing in front of it.
    pub codec: AgentCodec,
    /// Messages the codec could not write as given, oldest first.
    pub unsent: Vec<Unsent>,
}

impl FramedAgent {
    /// An accepted connection, waiting for the proxy's handshake.
    pub fn new(config: AgentConfig, now: Instant) -> Self {
        Self {
            codec: AgentCodec::new(&config),
            conn: AgentConnection::new(config, now),
            unsent: Vec::new(),
        }
    }

    /// A reverse connection: it sends `request` and waits for the proxy's acceptance.
    pub fn reverse(config: AgentConfig, request: RegistrationRequest, now: Instant) -> Self {
        Self {
            codec: AgentCodec::registering(&config),
            conn: AgentConnection::new_reverse(config, request, now),
            unsent: Vec::new(),
        }
    }

    /// A connection established without a handshake or registration.
    pub fn established(config: AgentConfig, encoding: Encoding) -> Self {
        Self {
            codec: AgentCodec::established(&config, encoding),
            conn: AgentConnection::new_established(config, encoding),
            unsent: Vec::new(),
        }
    }

    /// Feeds bytes read from the stream, in any split, and processes every complete frame.
    pub fn handle_input(&mut self, now: Instant, data: &[u8]) {
        self.codec.read_buffer().extend_from_slice(data);
        self.process_input(now);
    }

    /// Processes every complete frame already in the codec's read buffer.
    pub fn process_input(&mut self, now: Instant) {
        loop {
            self.flush();
            match self.codec.poll_incoming() {
                Some(Ok(message)) => self.conn.handle_message(now, message),
                Some(Err(reason)) => self.conn.handle_closed(reason),
                None => break,
            }
        }
        self.conn.handle_timeout(now);
        self.flush();
    }

    /// The stream ended (the peer closed it).
    pub fn handle_eof(&mut self) {
        self.conn.handle_closed(ConnectionError::PeerClosed);
    }

    /// Everything the agent has to write, or `None`.
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        self.flush();
        self.codec.poll_transmit()
    }

    /// Moves the connection's messages into the codec.
    fn flush(&mut self) {
        while let Some(message) = self.conn.poll_message() {
            if let Err(unsent) = self.codec.encode(message) {
                if let Unsent::Fatal(error) = &unsent {
                    self.conn
                        .handle_closed(ConnectionError::Encode(error.clone()));
                }
                self.unsent.push(unsent);
            }
        }
    }
}

impl Deref for FramedAgent {
    type Target = AgentConnection;

    fn deref(&self) -> &AgentConnection {
        &self.conn
    }
}

impl DerefMut for FramedAgent {
    fn deref_mut(&mut self) -> &mut AgentConnection {
        &mut self.conn
    }
}
