//! The spans the drivers open, seen by a real subscriber: what a handler logs carries its
//! request's correlation id and its connection's fields, on every transport, and the proxy's
//! connections and pool requests have spans of their own.
//!
//! Each test installs its subscriber for its own thread only and runs on a current-thread
//! runtime, so the agent, the proxy and every task they spawn report to it and to no other test.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent_protocol_core::registration::RegistrationPolicy;
use agent_protocol_core::*;
use agent_protocol_tokio::client::{AgentClient, ClientConfig};
use agent_protocol_tokio::pool::{AgentPool, AgentPoolConfig};
use agent_protocol_tokio::reverse::{
    RegisteredAgent, ReverseAgentConfig, ReverseConnector, ReverseListener, ReverseTarget,
};
use agent_protocol_tokio::server::{AgentHandler, AgentServer, ServerConfig, ServerHandle};
use agent_protocol_tokio::spans;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event as TracingEvent, Level, Subscriber};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

/// A span as last seen: its name and every field recorded so far, as text.
#[derive(Clone, Debug)]
struct SpanSeen {
    name: &'static str,
    fields: BTreeMap<String, String>,
}

impl SpanSeen {
    fn field(&self, name: &str) -> Option<&str> {
        self.fields.get(name).map(String::as_str)
    }
}

/// An event: its message, and the spans it happened in, outermost first, as they were then.
#[derive(Clone, Debug)]
struct EventSeen {
    message: String,
    scope: Vec<SpanSeen>,
}

impl EventSeen {
    fn span(&self, name: &str) -> Option<&SpanSeen> {
        self.scope.iter().rev().find(|s| s.name == name)
    }
}

#[derive(Default)]
struct Seen {
    spans: Vec<SpanSeen>,
    events: Vec<EventSeen>,
}

/// Keeps every span and event reported to it.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Seen>>);

/// Where a span's entry is in [`Seen::spans`], kept in the span's extensions.
struct Index(usize);

struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Capture {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut fields = BTreeMap::new();
        attrs.record(&mut Fields(&mut fields));
        let mut seen = self.0.lock().unwrap();
        seen.spans.push(SpanSeen {
            name: attrs.metadata().name(),
            fields,
        });
        let index = seen.spans.len() - 1;
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(Index(index));
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let Some(Index(index)) = span.extensions().get::<Index>().map(|i| Index(i.0)) else {
            return;
        };
        values.record(&mut Fields(&mut self.0.lock().unwrap().spans[index].fields));
    }

    fn on_event(&self, event: &TracingEvent<'_>, ctx: Context<'_, S>) {
        let mut fields = BTreeMap::new();
        event.record(&mut Fields(&mut fields));
        let mut seen = self.0.lock().unwrap();
        let scope = ctx
            .event_scope(event)
            .into_iter()
            .flat_map(|scope| scope.from_root())
            .filter_map(|span| span.extensions().get::<Index>().map(|i| i.0))
            .map(|index| seen.spans[index].clone())
            .collect();
        let message = fields.remove("message").unwrap_or_default();
        seen.events.push(EventSeen { message, scope });
    }
}

impl Capture {
    /// Installs the capture for this thread: `info` and above, and the request spans at `debug`
    /// when `request_spans`.
    fn install(&self, request_spans: bool) -> tracing::subscriber::DefaultGuard {
        let mut filter = Targets::new().with_default(Level::INFO);
        if request_spans {
            filter = filter.with_target(spans::REQUEST_TARGET, Level::DEBUG);
        }
        let subscriber = tracing_subscriber::registry().with(self.clone().with_filter(filter));
        tracing::subscriber::set_default(subscriber)
    }

    fn events(&self, message: &str) -> Vec<EventSeen> {
        let seen = self.0.lock().unwrap();
        seen.events
            .iter()
            .filter(|e| e.message == message)
            .cloned()
            .collect()
    }

    fn spans(&self, name: &str) -> Vec<SpanSeen> {
        let seen = self.0.lock().unwrap();
        seen.spans
            .iter()
            .filter(|s| s.name == name)
            .cloned()
            .collect()
    }

    /// The spans named `name` that record `field` (the proxy's spans record `endpoint` or
    /// `agent`, the agent's do not).
    fn spans_with(&self, name: &str, field: &str) -> Vec<SpanSeen> {
        let mut spans = self.spans(name);
        spans.retain(|s| s.fields.contains_key(field));
        spans
    }

    /// The one event logged with `message` in the request `correlation_id`.
    fn handler_event(&self, message: &str, correlation_id: &str) -> EventSeen {
        let found: Vec<_> = self
            .events(message)
            .into_iter()
            .filter(|e| {
                e.span(spans::REQUEST)
                    .is_some_and(|r| r.field("correlation_id") == Some(correlation_id))
            })
            .collect();
        assert_eq!(
            found.len(),
            1,
            "{message} in {correlation_id}: {:#?}",
            self.events(message)
        );
        found.into_iter().next().unwrap()
    }
}

/// Logs as an agent author would, before answering: at once, or after a wait (so the handler
/// is polled again later, by the connection task, not only when it starts).
struct Logging;

impl AgentHandler for Logging {
    async fn on_request_headers(&self, event: RequestHeadersEvent) -> AgentResponse {
        if event.uri == "/wait" {
            tokio::time::sleep(Duration::from_millis(20)).await;
            tracing::info!("inside after a wait");
        } else {
            tracing::info!(uri = %event.uri, "inside");
        }
        AgentResponse::allow()
    }

    async fn on_request_body_chunk(&self, _event: RequestBodyChunkEvent) -> AgentResponse {
        tracing::info!("inside a chunk");
        AgentResponse::allow()
    }
}

fn headers(correlation_id: &str, uri: &str) -> RequestHeadersEvent {
    let meta = RequestMetadata {
        correlation_id: correlation_id.into(),
        ..Default::default()
    };
    RequestHeadersEvent::new(meta, "GET", uri, Headers::new())
}

fn chunk(correlation_id: &str) -> RequestBodyChunkEvent {
    RequestBodyChunkEvent(BodyChunk {
        correlation_id: correlation_id.into(),
        data: bytes::Bytes::from_static(b"body"),
        is_last: true,
        total_size: None,
        chunk_index: 0,
        bytes_transferred: 4,
    })
}

fn server_config(agent_id: &str) -> ServerConfig {
    let mut config = ServerConfig::default();
    config.capabilities.agent_id = agent_id.into();
    config
}

/// A Unix-socket agent serving [`Logging`]; returns the socket's path.
fn serve_uds(dir: &tempfile::TempDir, agent_id: &str) -> (String, ServerHandle) {
    let path = dir.path().join("agent.sock");
    let server = AgentServer::new(Logging, server_config(agent_id));
    let listener = server.bind_uds(&path).unwrap();
    let handle = server.handle();
    tokio::spawn(async move { server.serve(listener).await });
    (path.to_str().unwrap().to_owned(), handle)
}

#[tokio::test]
async fn handler_logs_on_a_unix_socket_carry_the_request_and_the_connection() {
    let capture = Capture::default();
    let _installed = capture.install(true);
    let dir = tempfile::tempdir().unwrap();
    let (path, handle) = serve_uds(&dir, "waf-uds");
    let client = AgentClient::connect(&path, ClientConfig::default())
        .await
        .unwrap();
    for cid in ["uds-1", "uds-2"] {
        client
            .send(Event::RequestHeaders(headers(cid, "/page")))
            .await
            .unwrap();
    }
    client
        .send(Event::RequestHeaders(headers("uds-slow", "/wait")))
        .await
        .unwrap();
    client
        .send(Event::RequestBodyChunk(chunk("uds-1")))
        .await
        .unwrap();

    for cid in ["uds-1", "uds-2"] {
        let event = capture.handler_event("inside", cid);
        let request = event.span(spans::REQUEST).unwrap();
        assert_eq!(request.field("event"), Some("request_headers"));
        // The agent's connection is the request's parent, with what the handshake settled.
        let names: Vec<_> = event.scope.iter().map(|s| s.name).collect();
        assert_eq!(names, [spans::CONNECTION, spans::REQUEST], "{event:#?}");
        let connection = event.span(spans::CONNECTION).unwrap();
        assert_eq!(connection.field("peer"), Some("unix"));
        assert_eq!(connection.field("address"), Some(path.as_str()));
        assert_eq!(connection.field("agent_id"), Some("waf-uds"));
        assert_eq!(connection.field("encoding"), Some("msgpack"));
        assert!(connection.field("proxy").is_some(), "{connection:?}");
    }
    let slow = capture.handler_event("inside after a wait", "uds-slow");
    assert_eq!(
        slow.span(spans::CONNECTION).unwrap().field("encoding"),
        Some("msgpack")
    );
    let body = capture.handler_event("inside a chunk", "uds-1");
    assert_eq!(
        body.span(spans::REQUEST).unwrap().field("event"),
        Some("request_body_chunk")
    );

    // The proxy's side of the same connection: a client used alone names no agent.
    let proxy: Vec<_> = capture.spans_with(spans::CONNECTION, "endpoint");
    assert_eq!(proxy.len(), 1, "{proxy:#?}");
    assert_eq!(
        proxy[0].field("endpoint"),
        Some(format!("unix:{path}").as_str())
    );
    assert_eq!(proxy[0].field("encoding"), Some("msgpack"));
    assert_eq!(proxy[0].field("agent"), None);
    handle.shutdown();
}

#[tokio::test]
async fn pool_connections_name_the_agent_and_pool_requests_have_spans() {
    let capture = Capture::default();
    let _installed = capture.install(true);
    let dir = tempfile::tempdir().unwrap();
    let (path, handle) = serve_uds(&dir, "waf-pool");
    let mut config = AgentPoolConfig::default();
    config.client.connection.handshake.encodings = [Encoding::Json].into_iter().collect();
    config.connections_per_agent = 2;
    let pool = AgentPool::new(config);
    pool.add_agent("waf", &path).await.unwrap();
    pool.send_request_headers("waf", headers("pool-1", "/page"))
        .await
        .unwrap();

    let event = capture.handler_event("inside", "pool-1");
    let connection = event.span(spans::CONNECTION).unwrap();
    assert_eq!(connection.field("encoding"), Some("json"));
    assert_eq!(connection.field("agent_id"), Some("waf-pool"));

    let proxy: Vec<_> = capture.spans_with(spans::CONNECTION, "endpoint");
    assert_eq!(proxy.len(), 2, "one per pooled connection: {proxy:#?}");
    for span in &proxy {
        assert_eq!(span.field("agent"), Some("waf"));
        assert_eq!(
            span.field("endpoint"),
            Some(format!("unix:{path}").as_str())
        );
        assert_eq!(span.field("encoding"), Some("json"));
    }
    let requests: Vec<_> = capture.spans_with(spans::REQUEST, "agent");
    assert_eq!(requests.len(), 1, "{requests:#?}");
    assert_eq!(requests[0].field("agent"), Some("waf"));
    assert_eq!(requests[0].field("correlation_id"), Some("pool-1"));
    assert_eq!(requests[0].field("event"), Some("request_headers"));
    pool.shutdown(Duration::from_secs(1)).await;
    handle.shutdown();
}

#[cfg(feature = "grpc")]
#[tokio::test]
async fn handler_logs_on_grpc_carry_the_request_on_streams_and_unary_calls() {
    use agent_protocol_proto::v2;
    use agent_protocol_tokio::grpc::ServeGrpc;

    let capture = Capture::default();
    let _installed = capture.install(true);
    let server = AgentServer::new(Logging, server_config("waf-grpc"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let handle = server.handle();
    tokio::spawn(async move { server.serve_grpc(listener).await });

    let client = AgentClient::connect(&addr.to_string(), ClientConfig::default())
        .await
        .unwrap();
    client
        .send(Event::RequestHeaders(headers("grpc-1", "/page")))
        .await
        .unwrap();
    client
        .send(Event::RequestHeaders(headers("grpc-slow", "/wait")))
        .await
        .unwrap();
    for (message, cid) in [("inside", "grpc-1"), ("inside after a wait", "grpc-slow")] {
        let event = capture.handler_event(message, cid);
        let connection = event.span(spans::CONNECTION).unwrap();
        assert_eq!(connection.field("peer"), Some("grpc"));
        assert_eq!(connection.field("agent_id"), Some("waf-grpc"));
        assert_eq!(connection.field("encoding"), Some("protobuf"));
        let address = connection.field("address").unwrap();
        assert!(address.starts_with("127.0.0.1:"), "{address}");
    }
    let proxy: Vec<_> = capture.spans_with(spans::CONNECTION, "endpoint");
    assert_eq!(proxy.len(), 1, "{proxy:#?}");
    assert_eq!(proxy[0].field("encoding"), Some("protobuf"));

    // A unary call is no connection, but its handler runs in the request's span all the same.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut raw = v2::agent_service_v2_client::AgentServiceV2Client::new(channel);
    raw.process_event(v2::ProxyToAgent::from(Event::RequestHeaders(headers(
        "unary-1", "/page",
    ))))
    .await
    .unwrap();
    let unary = capture.handler_event("inside", "unary-1");
    assert_eq!(
        unary.span(spans::REQUEST).unwrap().field("event"),
        Some("request_headers")
    );
    handle.shutdown();
}

#[tokio::test]
async fn reverse_connections_have_spans_on_both_sides() {
    let capture = Capture::default();
    let _installed = capture.install(true);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("reverse.sock");
    let pool = AgentPool::new(AgentPoolConfig::default());
    let policy = RegistrationPolicy {
        tokens: vec!["s3cret".into()],
        ..Default::default()
    };
    let listener = ReverseListener::new(policy, pool.config().client.clone());
    let socket = agent_protocol_tokio::server::bind_unix_socket(&path, 0o660).unwrap();
    let admitting = pool.clone();
    let accepting = listener.clone();
    tokio::spawn(async move {
        accepting
            .serve(socket.into(), move |agent: RegisteredAgent| {
                admitting
                    .add_reverse_connection(&agent.agent_id, agent.client)
                    .map_err(|e| e.to_string())
            })
            .await
    });
    let config = ReverseAgentConfig::new(ReverseTarget::Unix(path.clone()), "rev-agent")
        .with_auth_token("s3cret");
    let handle = ServerHandle::new("rev-agent");
    let connector = Arc::new(ReverseConnector::new(
        Arc::new(Logging),
        config,
        handle.clone(),
    ));
    let dialing = connector.clone();
    tokio::spawn(async move { dialing.run().await });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while pool.stats().iter().all(|s| s.connected == 0) {
        assert!(tokio::time::Instant::now() < deadline, "never registered");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    pool.send_request_headers("rev-agent", headers("rev-1", "/page"))
        .await
        .unwrap();

    let event = capture.handler_event("inside", "rev-1");
    let connection = event.span(spans::CONNECTION).unwrap();
    assert_eq!(connection.field("peer"), Some("reverse"));
    assert_eq!(
        connection.field("address"),
        Some(format!("unix:{}", path.display()).as_str())
    );
    assert_eq!(connection.field("agent_id"), Some("rev-agent"));
    assert_eq!(connection.field("encoding"), Some("json"));
    let proxy: Vec<_> = capture.spans_with(spans::CONNECTION, "endpoint");
    assert_eq!(proxy.len(), 1, "{proxy:#?}");
    assert_eq!(proxy[0].field("agent"), Some("rev-agent"));
    assert_eq!(proxy[0].field("endpoint"), Some("reverse"));
    assert_eq!(proxy[0].field("encoding"), Some("json"));
    handle.shutdown();
    listener.shutdown();
    pool.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn without_request_spans_handler_logs_still_carry_the_connection() {
    let capture = Capture::default();
    let _installed = capture.install(false);
    let dir = tempfile::tempdir().unwrap();
    let (path, handle) = serve_uds(&dir, "waf-info");
    let pool = AgentPool::new(AgentPoolConfig::default());
    pool.add_agent("waf", &path).await.unwrap();
    for (cid, uri) in [("info-1", "/page"), ("info-slow", "/wait")] {
        pool.send_request_headers("waf", headers(cid, uri))
            .await
            .unwrap();
    }
    let events: Vec<_> = ["inside", "inside after a wait"]
        .iter()
        .flat_map(|m| capture.events(m))
        .collect();
    assert_eq!(events.len(), 2, "{events:#?}");
    for event in events {
        let names: Vec<_> = event.scope.iter().map(|s| s.name).collect();
        assert_eq!(names, [spans::CONNECTION], "{event:#?}");
    }
    assert!(capture.spans(spans::REQUEST).is_empty());
    pool.shutdown(Duration::from_secs(1)).await;
    handle.shutdown();
}
