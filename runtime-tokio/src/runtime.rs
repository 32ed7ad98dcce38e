//! [`Tokio`]: the [`Runtime`] the drivers run on in this crate.

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use agent_protocol_driver::client::Connector;
use agent_protocol_driver::Runtime;
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};

use crate::transport::Stream;

/// Tokio as a [`Runtime`]: tasks on the current tokio runtime, tokio timers and sockets, and
/// (with the `grpc` feature) gRPC endpoints through tonic.
///
/// Every type this crate exports has it filled in already; name it only to write code generic
/// over runtimes.
///
/// ```
/// use agent_protocol_driver::Runtime;
/// fn assert_runtime<R: Runtime>() {}
/// assert_runtime::<agent_protocol_tokio::Tokio>();
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct Tokio;

impl Runtime for Tokio {
    type Stream = Stream;
    type UnixListener = UnixListener;
    type TcpListener = TcpListener;
    type Sleep = tokio::time::Sleep;

    fn spawn<F: std::future::Future<Output = ()> + Send + 'static>(future: F) {
        tokio::spawn(future);
    }

    fn sleep_until(deadline: Instant) -> Self::Sleep {
        tokio::time::sleep_until(deadline.into())
    }

    /// Tokio's clock: the real time, unless the runtime's clock is paused (`start_paused`,
    /// `tokio::time::pause`), when it is the simulated time its timers fire on.
    fn now() -> Instant {
        tokio::time::Instant::now().into_std()
    }

    async fn connect_unix(path: &Path) -> io::Result<Stream> {
        UnixStream::connect(path).await.map(Stream::Unix)
    }

    async fn connect_tcp(addr: &str) -> io::Result<Stream> {
        let s = TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        Ok(Stream::Tcp(s))
    }

    fn unix_listener(listener: std::os::unix::net::UnixListener) -> io::Result<UnixListener> {
        UnixListener::from_std(listener)
    }

    async fn accept_unix(listener: &UnixListener) -> io::Result<Stream> {
        listener.accept().await.map(|(s, _)| Stream::Unix(s))
    }

    async fn accept_tcp(listener: &TcpListener) -> io::Result<Stream> {
        let (s, _) = listener.accept().await?;
        s.set_nodelay(true)?;
        Ok(Stream::Tcp(s))
    }

    /// With the `grpc` feature, the gRPC connector (without TLS settings: replace it with one
    /// that has them to reach `https://` agents).
    fn default_connector() -> Option<Arc<dyn Connector<Self>>> {
        #[cfg(feature = "grpc")]
        {
            Some(Arc::new(crate::grpc::GrpcConnector::new()))
        }
        #[cfg(not(feature = "grpc"))]
        {
            None
        }
    }
}
