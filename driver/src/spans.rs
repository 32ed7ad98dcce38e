//! The [`tracing`] spans the drivers run their work in, so that what is logged (by the drivers,
//! and by an agent's own handler) can be told apart by connection and by request.
//!
//! | span | level, target | runs | fields |
//! |---|---|---|---|
//! | [`CONNECTION`] (agent side) | `info`, [`CONNECTION_TARGET`] | each connection task of an agent server: Unix socket, TCP, gRPC `ProcessStream`, reverse | `peer` (`unix`, `tcp`, `grpc` or `reverse`), `address` (the Unix socket's path, the proxy's address on gRPC, the reverse target; none on TCP), `agent_id`, then after the handshake `encoding` and `proxy` (the proxy's id) |
//! | [`CONNECTION`] (proxy side) | `info`, [`CONNECTION_TARGET`] | each connection task of an [`AgentClient`](crate::client::AgentClient), alone or in the pool | `agent` (the pool's or the registration's id; none for a client used alone), `endpoint` (`reverse` for a reverse connection), then after the handshake `encoding` |
//! | [`REQUEST`] (agent side) | `debug`, [`REQUEST_TARGET`] | each call of an [`AgentHandler`](crate::server::AgentHandler) method (see [`dispatch`](crate::server::dispatch)), inside the connection's span; gRPC unary calls have no connection span | `correlation_id`, `event` (the kind: `request_headers`...) |
//! | [`REQUEST`] (proxy side) | `debug`, [`REQUEST_TARGET`] | each request through an [`AgentPool`](crate::pool::AgentPool) | `agent`, `correlation_id`, `event` |
//!
//! Connections are few, so their spans are at `info`. Request spans are at `debug`, under a
//! target of their own: while disabled they cost a level check and nothing else (no field is
//! read, nothing allocated, and the request's future is not wrapped, which would copy it), and
//! with an `EnvFilter`, `RUST_LOG=info,agent_protocol::request=debug` turns them on without the
//! drivers' own debug logs. `encoding` is the payload encoding (`msgpack`, `json`), or
//! `protobuf` on gRPC, where the transport encodes every message itself.

use std::fmt::Display;

use agent_protocol_core::Event;
// `display` for the fields comes with the span macros.
use tracing::field::Empty;
use tracing::Span;

/// Name of the span each connection task runs in, on both sides.
pub const CONNECTION: &str = "agent_connection";

/// Name of the span each request runs in: a handler call on the agent side, a pool request on
/// the proxy side.
pub const REQUEST: &str = "agent_request";

/// Target of the [`CONNECTION`] spans.
pub const CONNECTION_TARGET: &str = "agent_protocol::connection";

/// Target of the [`REQUEST`] spans, apart from the drivers' modules so that they can be enabled
/// on their own.
pub const REQUEST_TARGET: &str = "agent_protocol::request";

/// How a proxy reached an agent connection, as its span's `peer` field names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Peer {
    /// An agent server's Unix socket.
    Unix,
    /// An agent server's TCP socket (the framed protocol).
    Tcp,
    /// A gRPC `ProcessStream`.
    Grpc,
    /// A connection the agent dialled itself.
    Reverse,
}

impl Peer {
    /// The field's value.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Unix => "unix",
            Self::Tcp => "tcp",
            Self::Grpc => "grpc",
            Self::Reverse => "reverse",
        }
    }
}

/// The span of one agent-side connection, for a transport that runs
/// [`serve_link`](crate::server::serve_link) itself: run the `serve_link` future in it
/// ([`Instrument`](tracing::Instrument)), and `serve_link` records the handshake's outcome in it
/// rather than opening a span of its own. `address` is what the transport knows of where the
/// connection came from, if anything.
pub fn agent_connection(peer: Peer, address: Option<&dyn Display>, agent_id: &str) -> Span {
    agent_connection_of(Some(peer), address, agent_id)
}

/// The span [`serve_link`](crate::server::serve_link) opens when its caller opened none.
pub(crate) fn agent_connection_unnamed(agent_id: &str) -> Span {
    agent_connection_of(None, None, agent_id)
}

fn agent_connection_of(peer: Option<Peer>, address: Option<&dyn Display>, agent_id: &str) -> Span {
    tracing::info_span!(
        target: CONNECTION_TARGET,
        CONNECTION,
        peer = peer.map(Peer::as_str),
        address = address.map(display),
        agent_id,
        encoding = Empty,
        proxy = Empty,
    )
}

/// The span of one proxy-side connection.
pub(crate) fn proxy_connection(agent: Option<&str>, endpoint: Option<&dyn Display>) -> Span {
    tracing::info_span!(
        target: CONNECTION_TARGET,
        CONNECTION,
        agent,
        endpoint = endpoint.map(display),
        encoding = Empty,
    )
}

/// The current span, when it is an agent-side connection span: whoever set the connection up
/// knew more about it (the transport, the address) than the connection task does.
pub(crate) fn current_agent_connection() -> Option<Span> {
    current_connection("peer")
}

/// The current span, when it is a proxy-side connection span: the pool names the agent, and the
/// connect call the endpoint, before the transport's own code starts the connection task.
pub(crate) fn current_proxy_connection() -> Option<Span> {
    current_connection("endpoint")
}

/// Both sides' connection spans have one name; a field only one of them has tells them apart
/// (an agent's handler may well open a client of its own).
fn current_connection(distinct_field: &str) -> Option<Span> {
    let span = Span::current();
    let ours = span.metadata().is_some_and(|m| {
        m.name() == CONNECTION
            && m.target() == CONNECTION_TARGET
            && m.fields().field(distinct_field).is_some()
    });
    ours.then_some(span)
}

/// The span of a handler's call for `event`. Disabled, it is [`Span::none`] after one level
/// check: nothing is formatted or allocated, the fields are not even read.
#[inline]
pub(crate) fn agent_request(event: &Event) -> Span {
    tracing::debug_span!(
        target: REQUEST_TARGET,
        REQUEST,
        correlation_id = event.correlation_id(),
        event = event.kind().as_str(),
    )
}

/// The span of a pool request for `event` to `agent`; as cheap as [`agent_request`] when
/// disabled.
#[inline]
pub(crate) fn pool_request(agent: &str, event: &Event) -> Span {
    tracing::debug_span!(
        target: REQUEST_TARGET,
        REQUEST,
        agent,
        correlation_id = event.correlation_id(),
        event = event.kind().as_str(),
    )
}
