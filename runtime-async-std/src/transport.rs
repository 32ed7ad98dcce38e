//! Byte streams the protocol runs over on async-io: Unix sockets and TCP, split into halves
//! that share the socket through an [`Arc`] (async-io reads and writes through `&Async<T>`,
//! and keeps separate wakers for the two directions, so one task can read while another
//! writes without a lock).
//!
//! Reads go through safe `std::io::Read`, which needs an initialised slice, so each read zeroes
//! the part of `buf`'s spare capacity it offers. To keep that cheap for small frames, the
//! offered window adapts: it starts at [`INITIAL_WINDOW`], doubles (up to [`MAX_WINDOW`]) after
//! a read that filled it, and halves (down to [`MIN_WINDOW`]) after a read that used less than
//! a quarter of it. A read half that last saw `WouldBlock` waits for the reactor's readiness
//! before zeroing anything, so a task woken for other reasons (a command, a timer) pays
//! nothing on its socket.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use agent_protocol_driver::runtime::{ByteRead, ByteWrite, Connection};
use async_io::Async;
use bytes::BytesMut;

/// Bytes a fresh read half offers to one read.
pub const INITIAL_WINDOW: usize = 8 * 1024;
/// Smallest read window.
pub const MIN_WINDOW: usize = 4 * 1024;
/// Largest read window (the driver reserves this much per read).
pub const MAX_WINDOW: usize = 64 * 1024;

/// A connected stream.
///
/// ```
/// use agent_protocol_async_std::transport::Stream;
/// use async_io::Async;
/// let (a, _b) = Async::<std::os::unix::net::UnixStream>::pair()?;
/// let stream = Stream::from(a);
/// assert!(matches!(stream, Stream::Unix(_)));
/// # std::io::Result::Ok(())
/// ```
#[derive(Debug)]
pub enum Stream {
    /// Unix domain socket.
    Unix(Async<UnixStream>),
    /// TCP.
    Tcp(Async<TcpStream>),
}

impl From<Async<UnixStream>> for Stream {
    fn from(s: Async<UnixStream>) -> Self {
        Stream::Unix(s)
    }
}

impl From<Async<TcpStream>> for Stream {
    fn from(s: Async<TcpStream>) -> Self {
        Stream::Tcp(s)
    }
}

/// The socket both halves of a split [`Stream`] share.
#[derive(Debug)]
enum Shared {
    Unix(Arc<Async<UnixStream>>),
    Tcp(Arc<Async<TcpStream>>),
}

/// Read half of a [`Stream`].
///
/// ```
/// use agent_protocol_async_std::transport::Stream;
/// use agent_protocol_async_std::driver::runtime::{self, Connection};
/// use async_io::Async;
/// use bytes::BytesMut;
///
/// # async_io::block_on(async {
/// let (a, b) = Async::<std::os::unix::net::UnixStream>::pair()?;
/// let (mut read, _write) = Stream::from(a).into_split();
/// let (_read, mut write) = Stream::from(b).into_split();
/// runtime::write_all(&mut write, b"hello").await?;
/// runtime::shutdown(&mut write).await?;
/// let mut buf = BytesMut::with_capacity(1024);
/// assert_eq!(runtime::read_buf(&mut read, &mut buf).await?, 5);
/// assert_eq!(runtime::read_buf(&mut read, &mut buf).await?, 0); // end of stream
/// assert_eq!(&buf[..], b"hello");
/// # std::io::Result::Ok(()) })?;
/// # std::io::Result::Ok(())
/// ```
#[derive(Debug)]
pub struct ReadHalf {
    io: Shared,
    window: Window,
}

/// Write half of a [`Stream`]. [`ByteWrite::poll_shutdown`] shuts the socket's write
/// direction down, so the peer reads end of stream even while the read half lives on (see the
/// example on [`ReadHalf`]).
#[derive(Debug)]
pub struct WriteHalf {
    io: Shared,
}

/// The adaptive read window and whether the last read found the socket empty.
#[derive(Debug, Clone, Copy)]
struct Window {
    size: usize,
    /// The last read hit `WouldBlock`: wait for readiness before zeroing a window again.
    waiting: bool,
}

impl Window {
    const fn new() -> Self {
        Self {
            size: INITIAL_WINDOW,
            waiting: false,
        }
    }

    fn adapt(&mut self, read: usize, offered: usize) {
        if read == offered && offered >= self.size {
            self.size = (self.size * 2).min(MAX_WINDOW);
        } else if read < self.size / 4 {
            self.size = (self.size / 2).max(MIN_WINDOW);
        }
    }
}

/// Reads into `buf`'s spare capacity through a zeroed window of at most `window.size` bytes.
fn poll_read_window<T>(
    io: &Async<T>,
    window: &mut Window,
    cx: &mut Context<'_>,
    buf: &mut BytesMut,
) -> Poll<io::Result<usize>>
where
    for<'a> &'a T: Read,
{
    if buf.capacity() == buf.len() {
        // The driver always leaves room; be safe for other callers.
        buf.reserve(MIN_WINDOW);
    }
    loop {
        if window.waiting {
            ready!(io.poll_readable(cx))?;
            window.waiting = false;
        }
        let start = buf.len();
        let offered = window.size.min(buf.capacity() - start);
        // Within the spare capacity: zeroes, never reallocates.
        buf.resize(start + offered, 0);
        let mut socket: &T = io.get_ref();
        let result = socket.read(&mut buf[start..]);
        match result {
            Ok(n) => {
                buf.truncate(start + n);
                window.adapt(n, offered);
                return Poll::Ready(Ok(n));
            }
            Err(e) => {
                buf.truncate(start);
                match e.kind() {
                    io::ErrorKind::WouldBlock => window.waiting = true,
                    io::ErrorKind::Interrupted => {}
                    _ => return Poll::Ready(Err(e)),
                }
            }
        }
    }
}

fn poll_write_to<T>(io: &Async<T>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>>
where
    for<'a> &'a T: Write,
{
    loop {
        let mut socket: &T = io.get_ref();
        match socket.write(buf) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            result => return Poll::Ready(result),
        }
        ready!(io.poll_writable(cx))?;
    }
}

macro_rules! both {
    ($value:expr, $inner:ident => $body:expr) => {
        match $value {
            Stream::Unix($inner) => $body,
            Stream::Tcp($inner) => $body,
        }
    };
}

macro_rules! shared {
    ($value:expr, $inner:ident => $body:expr) => {
        match $value {
            Shared::Unix($inner) => $body,
            Shared::Tcp($inner) => $body,
        }
    };
}

impl ByteRead for Stream {
    fn poll_read_buf(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
    ) -> Poll<io::Result<usize>> {
        // An unsplit stream only carries the registration exchange: a fixed window will do.
        let mut window = Window::new();
        both!(self, s => poll_read_window(s, &mut window, cx, buf))
    }
}

impl ByteWrite for Stream {
    fn poll_write(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        both!(self, s => poll_write_to(s, cx, buf))
    }

    fn poll_shutdown(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(match self {
            Stream::Unix(s) => s.get_ref().shutdown(Shutdown::Write),
            Stream::Tcp(s) => s.get_ref().shutdown(Shutdown::Write),
        })
    }
}

impl Connection for Stream {
    type ReadHalf = ReadHalf;
    type WriteHalf = WriteHalf;

    fn into_split(self) -> (ReadHalf, WriteHalf) {
        let (r, w) = match self {
            Stream::Unix(s) => {
                let s = Arc::new(s);
                (Shared::Unix(s.clone()), Shared::Unix(s))
            }
            Stream::Tcp(s) => {
                let s = Arc::new(s);
                (Shared::Tcp(s.clone()), Shared::Tcp(s))
            }
        };
        (
            ReadHalf {
                io: r,
                window: Window::new(),
            },
            WriteHalf { io: w },
        )
    }
}

impl ByteRead for ReadHalf {
    fn poll_read_buf(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
    ) -> Poll<io::Result<usize>> {
        let window = &mut self.window;
        shared!(&self.io, s => poll_read_window(s, window, cx, buf))
    }
}

impl ByteWrite for WriteHalf {
    fn poll_write(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        shared!(&self.io, s => poll_write_to(s, cx, buf))
    }

    fn poll_shutdown(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(match &self.io {
            Shared::Unix(s) => s.get_ref().shutdown(Shutdown::Write),
            Shared::Tcp(s) => s.get_ref().shutdown(Shutdown::Write),
        })
    }
}

impl ReadHalf {
    /// Bytes the next read will offer at most (for tests and diagnostics).
    ///
    /// ```
    /// use agent_protocol_async_std::transport::{Stream, INITIAL_WINDOW};
    /// use agent_protocol_async_std::driver::runtime::Connection;
    /// let (a, _b) = async_io::Async::<std::os::unix::net::UnixStream>::pair()?;
    /// let (read, _write) = Stream::from(a).into_split();
    /// assert_eq!(read.window(), INITIAL_WINDOW);
    /// # std::io::Result::Ok(())
    /// ```
    pub fn window(&self) -> usize {
        self.window.size
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_protocol_driver::runtime;

    fn pair() -> (Stream, Stream) {
        let (a, b) = Async::<UnixStream>::pair().unwrap();
        (Stream::Unix(a), Stream::Unix(b))
    }

    #[test]
    fn window_grows_on_full_reads_and_shrinks_on_small_ones() {
        async_io::block_on(async {
            let (a, b) = pair();
            let (mut read, _w) = a.into_split();
            let (_r, mut write) = b.into_split();
            assert_eq!(read.window(), INITIAL_WINDOW);
            // Plenty queued before the first read: every read fills its window, which doubles
            // up to the cap.
            const LEN: usize = 96 * 1024;
            let data: Vec<u8> = (0..LEN).map(|i| (i % 251) as u8).collect();
            runtime::write_all(&mut write, &data).await.unwrap();
            let mut got = BytesMut::new();
            let mut seen = Vec::new();
            while got.len() < LEN {
                got.reserve(MAX_WINDOW);
                let before = got.len();
                let n = runtime::read_buf(&mut read, &mut got).await.unwrap();
                assert!(n > 0 && n <= MAX_WINDOW, "{n}");
                assert_eq!(got.len(), before + n, "nothing beyond what was read");
                seen.push(read.window());
            }
            assert_eq!(seen, [16 * 1024, 32 * 1024, MAX_WINDOW, MAX_WINDOW]);
            assert!(got.iter().enumerate().all(|(i, b)| *b == (i % 251) as u8));
            // Small frames: the window falls back to the minimum.
            for _ in 0..8 {
                runtime::write_all(&mut write, b"tiny").await.unwrap();
                let mut small = BytesMut::with_capacity(MAX_WINDOW);
                assert_eq!(runtime::read_buf(&mut read, &mut small).await.unwrap(), 4);
                assert_eq!(&small[..], b"tiny");
            }
            assert_eq!(read.window(), MIN_WINDOW);
        });
    }

    #[test]
    fn reads_stay_within_the_spare_capacity_and_keep_earlier_bytes() {
        async_io::block_on(async {
            let (mut a, mut b) = pair();
            runtime::write_all(&mut b, &[7u8; 10_000]).await.unwrap();
            let mut buf = BytesMut::with_capacity(100);
            buf.extend_from_slice(b"head");
            let cap = buf.capacity();
            let n = runtime::read_buf(&mut a, &mut buf).await.unwrap();
            assert_eq!(n, cap - 4, "filled exactly the spare capacity");
            assert_eq!(buf.capacity(), cap, "no reallocation");
            assert_eq!(&buf[..4], b"head");
            assert!(buf[4..].iter().all(|&x| x == 7));
        });
    }

    #[test]
    fn shutdown_of_the_write_half_is_seen_as_eof_while_reading_goes_on() {
        async_io::block_on(async {
            let (a, b) = pair();
            let (mut ra, mut wa) = a.into_split();
            let (mut rb, mut wb) = b.into_split();
            runtime::write_all(&mut wa, b"bye").await.unwrap();
            runtime::shutdown(&mut wa).await.unwrap();
            let mut buf = BytesMut::with_capacity(64);
            assert_eq!(runtime::read_buf(&mut rb, &mut buf).await.unwrap(), 3);
            assert_eq!(runtime::read_buf(&mut rb, &mut buf).await.unwrap(), 0);
            // The other direction still works.
            runtime::write_all(&mut wb, b"still here").await.unwrap();
            let mut back = BytesMut::with_capacity(64);
            assert_eq!(runtime::read_buf(&mut ra, &mut back).await.unwrap(), 10);
        });
    }

    #[test]
    fn a_pending_read_is_woken_by_data() {
        async_io::block_on(async {
            let (a, b) = pair();
            let (mut read, _w) = a.into_split();
            let (_r, mut write) = b.into_split();
            let reader = async_global_executor::spawn(async move {
                let mut buf = BytesMut::with_capacity(64);
                let n = runtime::read_buf(&mut read, &mut buf).await.unwrap();
                (n, read.window.waiting)
            });
            async_io::Timer::after(std::time::Duration::from_millis(20)).await;
            runtime::write_all(&mut write, b"late").await.unwrap();
            let (n, waiting) = reader.await;
            assert_eq!(n, 4);
            assert!(!waiting);
        });
    }
}
