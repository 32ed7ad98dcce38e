//! [`FramedLink`]: the agent's [`AgentLink`] over a byte stream (Unix socket, TCP, reverse
//! connection), with the core's [`AgentCodec`] doing the framing.

use std::io;
use std::task::{Context, Poll};
use std::time::Duration;

use agent_protocol_core::agent::{AgentCodec, AgentOutgoing, Unsent};
use agent_protocol_core::ConnectionError;
use bytes::{Buf, Bytes};

use super::connection::{AgentLink, Received};
use crate::client::{shrink_after_large_frame, READ_CHUNK};
use crate::runtime::{self, ByteRead, ByteWrite};

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
    read: Rd,
    write: Wr,
    /// What the socket is writing now: the codec's output, taken whole.
    writing: Bytes,
    /// How the stream ended, once a read saw it; reported after what was read before it.
    ended: Option<ConnectionError>,
}

impl<Rd: ByteRead, Wr: ByteWrite> FramedLink<Rd, Wr> {
    /// A link over `read` and `write` through `codec` (which may already hold bytes read with a
    /// registration answer).
    pub fn new(codec: AgentCodec, read: Rd, write: Wr) -> Self {
        Self {
            codec,
            read,
            write,
            writing: Bytes::new(),
            ended: None,
        }
    }
}

impl<Rd: ByteRead, Wr: ByteWrite> AgentLink for FramedLink<Rd, Wr> {
    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let buf = self.codec.read_buffer();
        if buf.capacity() - buf.len() < READ_CHUNK / 4 {
            buf.reserve(READ_CHUNK);
        }
        match self.read.poll_read_buf(cx, buf) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Ok(0)) => self.ended = Some(ConnectionError::PeerClosed),
            Poll::Ready(Ok(_)) => {}
            Poll::Ready(Err(e)) => self.ended = Some(e.into()),
        }
        Poll::Ready(())
    }

    #[inline]
    fn try_recv(&mut self) -> Option<Received> {
        match self.codec.poll_incoming() {
            Some(Ok(message)) => Some(Received::Message(message)),
            Some(Err(reason)) => Some(Received::Closed(reason)),
            None => {
                shrink_after_large_frame(self.codec.read_buffer());
                self.ended.take().map(Received::Closed)
            }
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
        !self.writing.is_empty() || self.codec.pending_transmit() > 0
    }

    fn is_backlogged(&self) -> bool {
        self.writing.len() + self.codec.pending_transmit() > MAX_PENDING_TRANSMIT
    }

    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ConnectionError>> {
        if self.writing.is_empty() {
            match self.codec.poll_transmit() {
                Some(bytes) => self.writing = bytes,
                None => return Poll::Ready(Ok(())),
            }
        }
        let written = match self.write.poll_write(cx, &self.writing) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Ok(0)) => Err(io::Error::from(io::ErrorKind::WriteZero)),
            Poll::Ready(written) => written,
        };
        Poll::Ready(match written {
            Ok(n) => {
                self.writing.advance(n);
                Ok(())
            }
            Err(e) => {
                // Nothing more can reach the peer.
                self.writing = Bytes::new();
                let _ = self.codec.poll_transmit();
                Err(e.into())
            }
        })
    }

    async fn shutdown(&mut self) {
        let _ = runtime::shutdown(&mut self.write).await;
    }
}
