//! [`Connector`]: how a client opens an endpoint that is not a Unix socket: a transport with a
//! client of its own (gRPC, on tokio).

use std::fmt;

use agent_protocol_core::pool::Endpoint;
use futures_util::future::BoxFuture;
use tokio::sync::mpsc;

use super::{AgentClient, ClientConfig, ClientError, ControlMessage};
use crate::runtime::Runtime;

/// Opens the endpoints a [`ClientConfig`] cannot reach through the runtime's sockets.
///
/// The config holds one ([`ClientConfig::connector`]), starting as the runtime adapter's own
/// ([`Runtime::default_connector`]: on tokio with the `grpc` feature, the gRPC connector; none
/// elsewhere), so the runtime stays a runtime and the choice of transport is the config's. Swap it
/// to change transport settings (TLS for `https://` gRPC endpoints) or to add a transport.
///
/// ```
/// use std::sync::Arc;
/// use agent_protocol_driver::client::{AgentClient, ClientConfig, ClientError, Connector, ControlMessage};
/// use agent_protocol_driver::core::pool::Endpoint;
/// use agent_protocol_driver::Runtime;
/// use futures_util::future::BoxFuture;
///
/// /// Refuses everything, politely.
/// #[derive(Debug)]
/// struct Nothing;
///
/// impl<R: Runtime> Connector<R> for Nothing {
///     fn opens(&self, _endpoint: &Endpoint) -> bool {
///         false
///     }
///     fn connect<'a>(
///         &'a self,
///         endpoint: &'a Endpoint,
///         _config: ClientConfig<R>,
///         _control: Option<tokio::sync::mpsc::Sender<ControlMessage>>,
///     ) -> BoxFuture<'a, Result<AgentClient<R>, ClientError>> {
///         Box::pin(async move { Err(agent_protocol_driver::client::unsupported(endpoint)) })
///     }
/// }
/// ```
pub trait Connector<R: Runtime>: fmt::Debug + Send + Sync + 'static {
    /// Whether it opens `endpoint`; the pool refuses the others up front.
    fn opens(&self, endpoint: &Endpoint) -> bool;

    /// Opens `endpoint` and completes the handshake, each within `config`'s timeouts.
    fn connect<'a>(
        &'a self,
        endpoint: &'a Endpoint,
        config: ClientConfig<R>,
        control: Option<mpsc::Sender<ControlMessage>>,
    ) -> BoxFuture<'a, Result<AgentClient<R>, ClientError>>;
}

/// The error for an endpoint no connector of the config opens.
pub fn unsupported(endpoint: &Endpoint) -> ClientError {
    ClientError::Connect {
        endpoint: endpoint.to_string(),
        source: std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            format!("no connector of this client opens {endpoint} (gRPC needs agent-protocol-tokio with its `grpc` feature)"),
        ),
    }
}
