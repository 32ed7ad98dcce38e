//! [`ByteStream`]: the halves of a socket as both roles' framed links use them: reading goes on
//! while a write waits, reads are sized for many frames per syscall, and how the stream ended is
//! kept until what was read before it has been decoded.

use std::io;
use std::task::{Context, Poll};

use agent_protocol_core::ConnectionError;
use bytes::{Buf, Bytes, BytesMut};

use crate::runtime::{self, ByteRead, ByteWrite};

/// Reads at least this much per read call so many frames are decoded per syscall.
pub(crate) const READ_CHUNK: usize = 64 * 1024;

/// A byte stream split in halves, with the output being written.
#[derive(Debug)]
pub(crate) struct ByteStream<Rd, Wr> {
    read: Rd,
    write: Wr,
    /// What the socket is writing now: a codec's output, taken whole.
    writing: Bytes,
    /// How the stream ended, once a read saw it; reported after what was read before it.
    ended: Option<ConnectionError>,
}

impl<Rd: ByteRead, Wr: ByteWrite> ByteStream<Rd, Wr> {
    pub(crate) fn new(read: Rd, write: Wr) -> Self {
        Self {
            read,
            write,
            writing: Bytes::new(),
            ended: None,
        }
    }

    /// Reads once into `buf` (a codec's read buffer), making room for [`READ_CHUNK`] when
    /// little is left. Ready once something arrived or the stream ended (see
    /// [`ByteStream::take_ended`]).
    pub(crate) fn poll_read(&mut self, cx: &mut Context<'_>, buf: &mut BytesMut) -> Poll<()> {
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

    /// How the stream ended, once everything read before is decoded: call it when the codec has
    /// nothing more. Also gives back the memory of a read buffer grown for a large frame.
    pub(crate) fn take_ended(&mut self, read_buf: &mut BytesMut) -> Option<ConnectionError> {
        // Once a large frame has passed, a fresh buffer of the usual size replaces the grown
        // one: the memory goes back, and one read stays near READ_CHUNK instead of filling
        // megabytes of spare room with small frames.
        if read_buf.is_empty() && read_buf.capacity() > 4 * READ_CHUNK {
            *read_buf = BytesMut::with_capacity(READ_CHUNK);
        }
        self.ended.take()
    }

    /// Bytes being written.
    pub(crate) fn writing(&self) -> usize {
        self.writing.len()
    }

    /// Writes some of the output, taking the codec's next batch (`next`) when the last one is
    /// written. Ready with `Ok` once something was written or nothing is left; an error means
    /// nothing more can reach the peer, and what was unsent is dropped (the codec's too).
    pub(crate) fn poll_write(
        &mut self,
        cx: &mut Context<'_>,
        mut next: impl FnMut() -> Option<Bytes>,
    ) -> Poll<Result<(), ConnectionError>> {
        if self.writing.is_empty() {
            match next() {
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
                if self.writing.is_empty() {
                    // Let go of the written batch now: the codec can then reuse its buffer in
                    // place instead of allocating a new one for the next.
                    self.writing = Bytes::new();
                }
                Ok(())
            }
            Err(e) => {
                self.writing = Bytes::new();
                let _ = next();
                Err(e.into())
            }
        })
    }

    /// Shuts the write direction down.
    pub(crate) async fn shutdown(&mut self) {
        let _ = runtime::shutdown(&mut self.write).await;
    }
}
