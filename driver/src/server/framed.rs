//! [`FramedLink`]: the agent's [`AgentLink`] over a byte stream (Unix socket, TCP, reverse
//! connection), with the core's [`AgentCodec`] doing the framing.

use std::task::{Context, Poll};
use std::time::Duration;

use agent_protocol_core::agent::{AgentCodec, AgentOutgoing, Unsent};
use agent_protocol_core::ConnectionError;

use super::connection::{AgentLink, Received};
use crate::runtime::{ByteRead, ByteWrite};
use crate::stream::ByteStream;

/// Unsent output (answers, pongs, pushes), in bytes, past which an agent connection stops
/// reading until its socket drains.
///
/// Every event earns an answer, even a malformed one, so a proxy that writes without reading
/// would otherwise make the agent queue answers without limit; with reading paused, the proxy's
/// writes block instead. Output can overshoot the bound by what one read's events produce plus
/// the answers of handlers already running (at most the in-flight limit of them).
pub const MAX_PENDING_TRANSMIT: usize = 1024 * 1024;

/// An agent connection's byte stream, split in halves so a write can wait while reading goes
/// on, with the codec between the stream and the connection.
#[derive(Debug)]
pub struct FramedLink<Rd, Wr> {
    codec: AgentCodec,
    stream: ByteStream<Rd, Wr>,
}

impl<Rd: ByteRead, Wr: ByteWrite> FramedLink<Rd, Wr> {
    /// A link over `read` and `write` through `codec` (which may already hold bytes read with a
    /// registration answer).
    pub fn new(codec: AgentCodec, read: Rd, write: Wr) -> Self {
        Self {
            codec,
            stream: ByteStream::new(read, write),
        }
    }
}

impl<Rd: ByteRead, Wr: ByteWrite> AgentLink for FramedLink<Rd, Wr> {
    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        self.stream.poll_read(cx, self.codec.read_buffer())
    }

    #[inline]
    fn try_recv(&mut self) -> Option<Received> {
        match self.codec.poll_incoming() {
            Some(Ok(message)) => Some(Received::Message(message)),
            Some(Err(reason)) => Some(Received::Closed(reason)),
            None => self
                .stream
                .take_ended(self.codec.read_buffer())
                .map(Received::Closed),
        }
    }

    #[inline]
    fn send(
        &mut self,
        message: AgentOutgoing,
        _handler_time: Option<Duration>,
    ) -> Result<(), ConnectionError> {
        match self.codec.encode(message) {
            Ok(()) => Ok(()),
            Err(Unsent::Fatal(error)) => Err(ConnectionError::Encode(error)),
            Err(unsent) => {
                tracing::warn!(%unsent, "a message to the proxy could not be sent as given");
                Ok(())
            }
        }
    }

    fn has_unsent(&self) -> bool {
        self.stream.writing() > 0 || self.codec.pending_transmit() > 0
    }

    fn is_backlogged(&self) -> bool {
        self.stream.writing() + self.codec.pending_transmit() > MAX_PENDING_TRANSMIT
    }

    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ConnectionError>> {
        let codec = &mut self.codec;
        self.stream.poll_write(cx, || codec.poll_transmit())
    }

    async fn shutdown(&mut self) {
        self.stream.shutdown().await;
    }
}
