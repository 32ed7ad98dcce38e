//! Byte streams the protocol runs over: Unix sockets and TCP, split into owned halves so one
//! task can read and write without a lock.

use std::io;
use std::path::Path;
use std::time::Duration;

use agent_protocol_core::pool::Endpoint;
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

impl Stream {
    /// Connects to a UDS path or a `host:port` TCP address, within `timeout`.
    pub async fn connect(endpoint: &Endpoint, timeout: Duration) -> io::Result<Stream> {
        let fut = async {
            match endpoint {
                Endpoint::Uds(path) => UnixStream::connect(path).await.map(Stream::Unix),
                Endpoint::Grpc { uri, .. } => {
                    let addr = uri
                        .trim_start_matches("http://")
                        .trim_start_matches("https://");
                    let s = TcpStream::connect(addr).await?;
                    s.set_nodelay(true)?;
                    Ok(Stream::Tcp(s))
                }
            }
        };
        tokio::time::timeout(timeout, fut).await.map_err(|_| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("connect to {endpoint} timed out after {timeout:?}"),
            )
        })?
    }

    /// Connects to a Unix socket path.
    pub async fn connect_unix(path: impl AsRef<Path>) -> io::Result<Stream> {
        UnixStream::connect(path).await.map(Stream::Unix)
    }

    /// Splits into halves owned by the connection task.
    pub fn into_split(self) -> (ReadHalf, WriteHalf) {
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

impl AsyncRead for ReadHalf {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        match self.get_mut() {
            ReadHalf::Unix(r) => std::pin::Pin::new(r).poll_read(cx, buf),
            ReadHalf::Tcp(r) => std::pin::Pin::new(r).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for WriteHalf {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        match self.get_mut() {
            WriteHalf::Unix(w) => std::pin::Pin::new(w).poll_write(cx, buf),
            WriteHalf::Tcp(w) => std::pin::Pin::new(w).poll_write(cx, buf),
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        match self.get_mut() {
            WriteHalf::Unix(w) => std::pin::Pin::new(w).poll_flush(cx),
            WriteHalf::Tcp(w) => std::pin::Pin::new(w).poll_flush(cx),
        }
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        match self.get_mut() {
            WriteHalf::Unix(w) => std::pin::Pin::new(w).poll_shutdown(cx),
            WriteHalf::Tcp(w) => std::pin::Pin::new(w).poll_shutdown(cx),
        }
    }
}

/// Reads at least this much per read call so many frames are decoded per syscall.
pub(crate) const READ_CHUNK: usize = 64 * 1024;
