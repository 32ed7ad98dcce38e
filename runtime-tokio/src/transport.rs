//! Byte streams the protocol runs over on tokio: Unix sockets and TCP, split into owned halves
//! so one task can read and write without a lock.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use agent_protocol_driver::runtime::{ByteRead, ByteWrite, Connection};
use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{tcp, unix, TcpStream, UnixStream};

/// A connected stream.
#[derive(Debug)]
pub enum Stream {
    /// Unix domain socket.
    Unix(UnixStream),
    /// TCP.
    Tcp(TcpStream),
}

/// Read half of a [`Stream`].
#[derive(Debug)]
pub enum ReadHalf {
    /// Unix.
    Unix(unix::OwnedReadHalf),
    /// TCP.
    Tcp(tcp::OwnedReadHalf),
}

/// Write half of a [`Stream`].
#[derive(Debug)]
pub enum WriteHalf {
    /// Unix.
    Unix(unix::OwnedWriteHalf),
    /// TCP.
    Tcp(tcp::OwnedWriteHalf),
}

/// Reads into `buf`'s spare capacity without zeroing it first: tokio's own `read_buf`, polled
/// once (it keeps no state between polls, so a fresh one each time loses nothing).
fn poll_read_into<T: AsyncRead + Unpin>(
    io: &mut T,
    cx: &mut Context<'_>,
    buf: &mut BytesMut,
) -> Poll<io::Result<usize>> {
    use std::future::Future;
    use tokio::io::AsyncReadExt;
    std::pin::pin!(io.read_buf(buf)).poll(cx)
}

macro_rules! both {
    ($value:expr, $inner:ident => $body:expr) => {
        match $value {
            Self::Unix($inner) => $body,
            Self::Tcp($inner) => $body,
        }
    };
}

impl ByteRead for Stream {
    fn poll_read_buf(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
    ) -> Poll<io::Result<usize>> {
        both!(self, s => poll_read_into(s, cx, buf))
    }
}

impl ByteWrite for Stream {
    fn poll_write(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        both!(self, s => Pin::new(s).poll_write(cx, buf))
    }

    fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        both!(self, s => Pin::new(s).poll_shutdown(cx))
    }
}

impl Connection for Stream {
    type ReadHalf = ReadHalf;
    type WriteHalf = WriteHalf;

    fn into_split(self) -> (ReadHalf, WriteHalf) {
        match self {
            Stream::Unix(s) => {
                let (r, w) = s.into_split();
                (ReadHalf::Unix(r), WriteHalf::Unix(w))
            }
            Stream::Tcp(s) => {
                let (r, w) = s.into_split();
                (ReadHalf::Tcp(r), WriteHalf::Tcp(w))
            }
        }
    }
}

impl ByteRead for ReadHalf {
    fn poll_read_buf(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
    ) -> Poll<io::Result<usize>> {
        both!(self, s => poll_read_into(s, cx, buf))
    }
}

impl ByteWrite for WriteHalf {
    fn poll_write(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        both!(self, s => Pin::new(s).poll_write(cx, buf))
    }

    fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        both!(self, s => Pin::new(s).poll_shutdown(cx))
    }
}
