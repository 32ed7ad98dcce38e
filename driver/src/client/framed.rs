//! [`FramedLink`]: the proxy's [`ProxyLink`] over a byte stream (Unix socket, TCP, reverse
//! connection), with the core's [`ProxyCodec`] doing the framing.

use std::task::{Context, Poll};

use agent_protocol_core::proxy::{ProxyCodec, ProxyIncoming, ProxyOutgoing};
use agent_protocol_core::{ConnectionError, SubmitError};

use super::connection::ProxyLink;
use crate::runtime::{ByteRead, ByteWrite};
use crate::stream::ByteStream;

/// A proxy connection's byte stream, split in halves so a write can wait while reading goes
/// on, with the codec between the stream and the connection. Reads take up to 64 KiB at a time
/// and every frame in them is decoded before the next read; the events of a burst of requests
/// leave in one write.
#[derive(Debug)]
pub struct FramedLink<Rd, Wr> {
    codec: ProxyCodec,
    stream: ByteStream<Rd, Wr>,
}

impl<Rd: ByteRead, Wr: ByteWrite> FramedLink<Rd, Wr> {
    /// A link over `read` and `write` through `codec`.
    pub fn new(codec: ProxyCodec, read: Rd, write: Wr) -> Self {
        Self {
            codec,
            stream: ByteStream::new(read, write),
        }
    }
}

impl<Rd: ByteRead, Wr: ByteWrite> ProxyLink for FramedLink<Rd, Wr> {
    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        self.stream.poll_read(cx, self.codec.read_buffer())
    }

    #[inline]
    fn try_recv(&mut self) -> Option<Result<ProxyIncoming, ConnectionError>> {
        match self.codec.poll_incoming() {
            Some(message) => Some(message),
            None => self.stream.take_ended(self.codec.read_buffer()).map(Err),
        }
    }

    #[inline]
    fn send(&mut self, message: ProxyOutgoing) -> Result<(), SubmitError> {
        self.codec.encode(message)
    }

    fn has_unsent(&self) -> bool {
        self.stream.writing() > 0 || self.codec.pending_transmit() > 0
    }

    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ConnectionError>> {
        let codec = &mut self.codec;
        self.stream.poll_write(cx, || codec.poll_transmit())
    }

    async fn shutdown(&mut self) {
        self.stream.shutdown().await;
    }
}
