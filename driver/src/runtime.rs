//! [`Runtime`]: what the drivers need from an async runtime (tasks, timers, sockets), and the
//! byte-stream traits the connection tasks read and write through.
//!
//! The drivers in this crate never name a runtime. `agent-protocol-tokio` implements [`Runtime`]
//! on tokio, `agent-protocol-async-std` on async-io (the reactor async-std and smol share); each
//! re-exports the drivers under their usual names (`AgentPool`, `AgentServer`, ...) with its
//! runtime filled in, so users never write the type parameter.
//!
//! The traits are poll-based on purpose: a connection task waits on its socket, its command
//! channel and its timer at once, and drops whichever futures lose; a poll function turned into
//! a future with [`std::future::poll_fn`] loses nothing when dropped.
//!
//! ```
//! use agent_protocol_driver::runtime::{self, ByteRead, ByteWrite};
//! use bytes::BytesMut;
//!
//! // Any `ByteRead`/`ByteWrite` pair works with the helpers, whatever the runtime.
//! async fn echo_once<S: ByteRead + ByteWrite>(s: &mut S) -> std::io::Result<()> {
//!     let mut buf = BytesMut::with_capacity(1024);
//!     if runtime::read_buf(s, &mut buf).await? > 0 {
//!         runtime::write_all(s, &buf).await?;
//!     }
//!     Ok(())
//! }
//! ```

use std::fmt::Debug;
use std::future::{poll_fn, Future};
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::{Buf, BytesMut};

use crate::client::Connector;

/// The read side of a connected socket.
pub trait ByteRead: Send + Unpin + 'static {
    /// Reads into the spare capacity of `buf` (appending), returning how many bytes arrived;
    /// 0 means end of stream. `buf` has spare capacity when this is called.
    fn poll_read_buf(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
    ) -> Poll<io::Result<usize>>;
}

/// The write side of a connected socket.
pub trait ByteWrite: Send + Unpin + 'static {
    /// Writes a prefix of `buf`, returning its length.
    fn poll_write(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>>;

    /// Shuts the write direction down (the peer reads end of stream).
    fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
}

/// A connected socket (Unix or TCP) that a connection task owns.
pub trait Connection: ByteRead + ByteWrite + Debug {
    /// Read half, owned by the connection task beside the write half.
    type ReadHalf: ByteRead;
    /// Write half.
    type WriteHalf: ByteWrite;

    /// Splits into halves so one task can wait on reading while a write is pending.
    fn into_split(self) -> (Self::ReadHalf, Self::WriteHalf);
}

/// An async runtime: spawning, timers and the clock, and Unix/TCP sockets. Nothing about
/// transports beyond byte streams: those are a [`Connector`]'s, held by the client config.
///
/// Implemented by a zero-sized marker type (`agent_protocol_tokio::Tokio`,
/// `agent_protocol_async_std::AsyncStd`); every method is an associated function.
pub trait Runtime: Clone + Copy + Debug + Default + Send + Sync + 'static {
    /// A connected socket.
    type Stream: Connection;
    /// A bound Unix listening socket.
    type UnixListener: Debug + Send + Sync + 'static;
    /// A bound TCP listening socket.
    type TcpListener: Debug + Send + Sync + 'static;
    /// What [`Runtime::sleep_until`] returns.
    type Sleep: Future<Output = ()> + Send;

    /// Runs `future` as an independent task.
    fn spawn<F: Future<Output = ()> + Send + 'static>(future: F);

    /// A future that completes at `deadline`.
    fn sleep_until(deadline: Instant) -> Self::Sleep;

    /// The current time, on the clock [`Runtime::sleep_until`] counts on. Every clock read of
    /// the drivers goes through it, so a runtime whose clock can be paused and advanced (tokio's
    /// test-util) runs them on simulated time.
    fn now() -> Instant {
        Instant::now()
    }

    /// Connects to a Unix socket.
    fn connect_unix(path: &Path) -> impl Future<Output = io::Result<Self::Stream>> + Send;

    /// Connects to `host:port` over TCP with Nagle's algorithm off (small frames must leave at
    /// once).
    fn connect_tcp(addr: &str) -> impl Future<Output = io::Result<Self::Stream>> + Send;

    /// Takes over a bound, listening std Unix socket (the crate binds it itself to set the
    /// file mode and clean up stale files safely).
    fn unix_listener(listener: std::os::unix::net::UnixListener) -> io::Result<Self::UnixListener>;

    /// Accepts one connection.
    fn accept_unix(
        listener: &Self::UnixListener,
    ) -> impl Future<Output = io::Result<Self::Stream>> + Send;

    /// Accepts one connection, with Nagle's algorithm off.
    fn accept_tcp(
        listener: &Self::TcpListener,
    ) -> impl Future<Output = io::Result<Self::Stream>> + Send;

    /// The connector a [`ClientConfig`](crate::client::ClientConfig) starts with, for
    /// endpoints that are not Unix sockets (see [`Connector`]). `None`: such endpoints are
    /// refused.
    fn default_connector() -> Option<Arc<dyn Connector<Self>>> {
        None
    }
}

/// Reads into `buf`'s spare capacity (reserving some if there is none); 0 means end of stream.
pub async fn read_buf<R: ByteRead + ?Sized>(r: &mut R, buf: &mut BytesMut) -> io::Result<usize> {
    if buf.capacity() == buf.len() {
        buf.reserve(4096);
    }
    poll_fn(|cx| r.poll_read_buf(cx, buf)).await
}

/// Writes a prefix of `buf` and advances past it.
pub async fn write_buf<W: ByteWrite + ?Sized, B: Buf>(w: &mut W, buf: &mut B) -> io::Result<usize> {
    let n = poll_fn(|cx| w.poll_write(cx, buf.chunk())).await?;
    if n == 0 && buf.has_remaining() {
        return Err(io::ErrorKind::WriteZero.into());
    }
    buf.advance(n);
    Ok(n)
}

/// Writes all of `bytes`.
pub async fn write_all<W: ByteWrite + ?Sized>(w: &mut W, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        write_buf(w, &mut bytes).await?;
    }
    Ok(())
}

/// Shuts the write direction down.
pub async fn shutdown<W: ByteWrite + ?Sized>(w: &mut W) -> io::Result<()> {
    poll_fn(|cx| w.poll_shutdown(cx)).await
}

/// A deadline passed (see [`timeout_at`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("deadline elapsed")]
pub struct Elapsed;

/// Runs `future` until `deadline`.
pub async fn timeout_at<R: Runtime, F: Future>(
    deadline: Instant,
    future: F,
) -> Result<F::Output, Elapsed> {
    tokio::select! {
        biased;
        out = future => Ok(out),
        _ = R::sleep_until(deadline) => Err(Elapsed),
    }
}

/// Sleeps until `deadline`, or forever when there is none (a `select!` branch that never
/// fires).
pub async fn sleep_until_opt<R: Runtime>(deadline: Option<Instant>) {
    match deadline {
        Some(d) => R::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Sleeps for `duration`.
pub async fn sleep<R: Runtime>(duration: std::time::Duration) {
    R::sleep_until(R::now() + duration).await
}
