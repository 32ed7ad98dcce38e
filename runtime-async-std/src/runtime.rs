//! [`AsyncStd`]: the [`Runtime`] the drivers run on in this crate, built on async-io (the
//! reactor async-std and smol share) and async-global-executor (the executor async-std's own
//! `task::spawn` feeds).

use std::future::Future;
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use agent_protocol_driver::Runtime;
use async_io::{Async, Timer};

use crate::transport::Stream;

/// async-io as a [`Runtime`]: tasks on async-global-executor's thread pool (the one async-std
/// spawns onto; it starts its own threads under smol or any other executor), async-io timers
/// and sockets.
///
/// Every type this crate exports has it filled in already; name it only to write code generic
/// over runtimes.
///
/// ```
/// use agent_protocol_async_std::driver::Runtime;
/// fn assert_runtime<R: Runtime>() {}
/// assert_runtime::<agent_protocol_async_std::AsyncStd>();
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct AsyncStd;

/// What [`AsyncStd::sleep_until`](Runtime::sleep_until) returns: an async-io [`Timer`]
/// resolving to `()`.
///
/// ```
/// use agent_protocol_async_std::driver::Runtime;
/// use agent_protocol_async_std::AsyncStd;
/// use std::time::{Duration, Instant};
///
/// let start = Instant::now();
/// async_io::block_on(AsyncStd::sleep_until(start + Duration::from_millis(5)));
/// assert!(start.elapsed() >= Duration::from_millis(5));
/// ```
#[derive(Debug)]
#[must_use = "a Sleep does nothing unless awaited"]
pub struct Sleep(Timer);

impl Future for Sleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        Pin::new(&mut self.0).poll(cx).map(|_| ())
    }
}

impl Runtime for AsyncStd {
    type Stream = Stream;
    type UnixListener = Async<UnixListener>;
    type TcpListener = Async<TcpListener>;
    type Sleep = Sleep;

    fn spawn<F: Future<Output = ()> + Send + 'static>(future: F) {
        // Dropping an async-executor task cancels it: detach so it runs to completion.
        async_global_executor::spawn(future).detach();
    }

    fn sleep_until(deadline: Instant) -> Sleep {
        Sleep(Timer::at(deadline))
    }

    async fn connect_unix(path: &Path) -> io::Result<Stream> {
        Async::<UnixStream>::connect(path).await.map(Stream::Unix)
    }

    async fn connect_tcp(addr: &str) -> io::Result<Stream> {
        let addrs: Vec<SocketAddr> = match addr.parse::<SocketAddr>() {
            Ok(a) => vec![a],
            // A host name: resolve on the blocking pool, never on an executor thread.
            Err(_) => {
                let owned = addr.to_owned();
                async_global_executor::spawn_blocking(move || {
                    owned.to_socket_addrs().map(Iterator::collect)
                })
                .await?
            }
        };
        let mut last_error = None;
        for a in addrs {
            match Async::<TcpStream>::connect(a).await {
                Ok(s) => {
                    s.get_ref().set_nodelay(true)?;
                    return Ok(Stream::Tcp(s));
                }
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.unwrap_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{addr} resolved to no address"),
            )
        }))
    }

    fn unix_listener(listener: UnixListener) -> io::Result<Async<UnixListener>> {
        // `Async::new` (re)sets non-blocking mode: one fcntl, and safe for a listener that was
        // not set non-blocking by its caller.
        Async::new(listener)
    }

    async fn accept_unix(listener: &Async<UnixListener>) -> io::Result<Stream> {
        listener.accept().await.map(|(s, _)| Stream::Unix(s))
    }

    async fn accept_tcp(listener: &Async<TcpListener>) -> io::Result<Stream> {
        let (s, _) = listener.accept().await?;
        s.get_ref().set_nodelay(true)?;
        Ok(Stream::Tcp(s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_protocol_driver::client::{AgentClient, ClientError};
    use std::time::Duration;

    #[test]
    fn tcp_streams_have_nagle_off_on_both_ends() {
        async_io::block_on(async {
            let listener = Async::<TcpListener>::bind(([127, 0, 0, 1], 0)).unwrap();
            let addr = listener.get_ref().local_addr().unwrap().to_string();
            let (client, server) = futures_lite::future::zip(
                AsyncStd::connect_tcp(&addr),
                AsyncStd::accept_tcp(&listener),
            )
            .await;
            for stream in [client.unwrap(), server.unwrap()] {
                let Stream::Tcp(s) = stream else {
                    panic!("not TCP")
                };
                assert!(s.get_ref().nodelay().unwrap());
            }
            // Nothing listens on a closed port: the error is the OS's, not a hang.
            drop(listener);
            let err = AsyncStd::connect_tcp(&addr).await.unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused);
        });
    }

    #[test]
    fn unix_listener_accepts_and_connects() {
        async_io::block_on(async {
            let dir = std::env::temp_dir().join(format!("ap-rt-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let path = dir.join("l.sock");
            let _ = std::fs::remove_file(&path);
            // Left blocking on purpose: the adapter makes it non-blocking itself.
            let listener = AsyncStd::unix_listener(UnixListener::bind(&path).unwrap()).unwrap();
            let (client, server) = futures_lite::future::zip(
                AsyncStd::connect_unix(&path),
                AsyncStd::accept_unix(&listener),
            )
            .await;
            assert!(matches!(client.unwrap(), Stream::Unix(_)));
            assert!(matches!(server.unwrap(), Stream::Unix(_)));
            std::fs::remove_dir_all(&dir).unwrap();
        });
    }

    #[test]
    fn sleep_until_does_not_wake_early_and_spawned_tasks_run() {
        let start = Instant::now();
        let (tx, rx) = std::sync::mpsc::channel();
        AsyncStd::spawn(async move {
            AsyncStd::sleep_until(start + Duration::from_millis(30)).await;
            tx.send(start.elapsed()).unwrap();
        });
        // Nothing drives this thread: the task runs on the executor's own threads.
        let slept = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert!(slept >= Duration::from_millis(30), "{slept:?}");
        // A deadline in the past is ready at once.
        async_io::block_on(AsyncStd::sleep_until(start));
    }

    #[test]
    fn grpc_endpoints_are_refused_with_a_clear_error() {
        assert!(AsyncStd::default_connector().is_none());
        async_io::block_on(async {
            for endpoint in ["127.0.0.1:50051", "http://127.0.0.1:50051"] {
                let err = AgentClient::<AsyncStd>::connect(endpoint, Default::default())
                    .await
                    .unwrap_err();
                let ClientError::Connect { source, .. } = &err else {
                    panic!("{err:?}")
                };
                assert_eq!(source.kind(), io::ErrorKind::Unsupported);
                assert!(err.to_string().contains("agent-protocol-tokio"), "{err}");
            }
        });
    }
}
