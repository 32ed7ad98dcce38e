//! Test agents ([`AgentHandler`]s) the client/server and reverse scenarios serve, and the
//! events they are fed.
//!
//! The handlers never name a runtime: when they have to wait they use async-io's [`Timer`],
//! which runs under tokio and async-std alike, so each one serves both adapters unchanged.

use std::sync::Mutex;
use std::time::Duration;

use agent_protocol_core::capabilities::EventKind;
use agent_protocol_core::*;
use agent_protocol_driver::server::AgentHandler;
use async_io::Timer;
use bytes::Bytes;

/// Answers every event kind with something the caller can check, and records what it saw.
///
/// Request headers are steered by the URI:
/// - `/sleep/N` answers after N ms (long values stand for "never", until cancelled);
/// - `/hold/N` answers only once N other requests have been answered (a deterministic way to
///   make answers come back out of order);
/// - `/yield` wakes itself and is pending once before answering (a future that relies on the
///   waker of the poll that returned pending);
/// - `/admin...` is blocked with 403;
/// - anything else is allowed with header mutations: `x-seen: <uri>` set, `cookie` removed,
///   `x-host: <host header>` added.
///
/// Request body chunks are echoed as routing metadata (`len`, `total` = bytes transferred so
/// far, `sum` of the bytes, `index`) and blocked with 400 when they contain `evil`.
#[derive(Default)]
pub struct TestAgent {
    /// Kinds of the events the handler saw, in order.
    pub kinds: Mutex<Vec<EventKind>>,
    /// URIs of request headers, in the order their answers were produced.
    pub answered: Mutex<Vec<String>>,
}

impl TestAgent {
    fn saw(&self, kind: EventKind) {
        self.kinds.lock().unwrap().push(kind);
    }
}

impl AgentHandler for TestAgent {
    async fn on_request_headers(&self, event: RequestHeadersEvent) -> AgentResponse {
        self.saw(EventKind::RequestHeaders);
        if let Some(ms) = event.uri.strip_prefix("/sleep/") {
            Timer::after(Duration::from_millis(ms.parse().unwrap())).await;
        }
        if event.uri == "/yield" {
            YieldOnce(false).await;
        }
        if let Some(n) = event.uri.strip_prefix("/hold/") {
            let n: usize = n.parse().unwrap();
            while self.answered.lock().unwrap().len() < n {
                Timer::after(Duration::from_millis(1)).await;
            }
        }
        self.answered.lock().unwrap().push(event.uri.to_string());
        if event.uri.starts_with("/admin") {
            return AgentResponse::block(403, "admin");
        }
        let mut r = AgentResponse::allow();
        r.request_headers.push(HeaderOp::Set {
            name: "x-seen".into(),
            value: event.uri.to_string(),
        });
        r.request_headers.push(HeaderOp::Remove {
            name: "cookie".into(),
        });
        if let Some(host) = event.headers.first("host") {
            r.request_headers.push(HeaderOp::Add {
                name: "x-host".into(),
                value: host.to_owned(),
            });
        }
        r
    }

    async fn on_request_body_chunk(&self, event: RequestBodyChunkEvent) -> AgentResponse {
        self.saw(EventKind::RequestBodyChunk);
        let mut r = AgentResponse::allow();
        let sum: u64 = event.0.data.iter().map(|&b| u64::from(b)).sum();
        r.routing_metadata
            .insert("len".into(), event.0.data.len().to_string());
        r.routing_metadata
            .insert("total".into(), event.0.bytes_transferred.to_string());
        r.routing_metadata.insert("sum".into(), sum.to_string());
        r.routing_metadata
            .insert("index".into(), event.0.chunk_index.to_string());
        if event.0.data.windows(4).any(|w| w == b"evil") {
            r.decision = Decision::block(400, None);
        }
        r
    }

    async fn on_response_headers(&self, event: ResponseHeadersEvent) -> AgentResponse {
        self.saw(EventKind::ResponseHeaders);
        let mut r = AgentResponse::allow();
        r.response_headers.push(HeaderOp::Set {
            name: "x-status".into(),
            value: event.status.to_string(),
        });
        r.response_headers.push(HeaderOp::Remove {
            name: "server".into(),
        });
        r
    }

    async fn on_response_body_chunk(&self, event: ResponseBodyChunkEvent) -> AgentResponse {
        self.saw(EventKind::ResponseBodyChunk);
        let mut r = AgentResponse::allow();
        let upper: Vec<u8> = event.0.data.to_ascii_uppercase();
        r.response_body_mutation = Some(BodyMutation::replace(event.0.chunk_index, upper));
        r
    }

    async fn on_request_complete(&self, event: RequestCompleteEvent) -> AgentResponse {
        self.saw(EventKind::RequestComplete);
        let mut r = AgentResponse::allow();
        r.routing_metadata
            .insert("status".into(), event.status.to_string());
        r
    }

    async fn on_websocket_frame(&self, event: WebSocketFrameEvent) -> AgentResponse {
        self.saw(EventKind::WebSocketFrame);
        let mut r = AgentResponse::allow();
        r.websocket_decision = Some(if event.data.starts_with(b"drop") {
            WebSocketDecision::Drop
        } else {
            WebSocketDecision::Allow
        });
        r
    }

    async fn on_guardrail_inspect(&self, event: GuardrailInspectEvent) -> AgentResponse {
        self.saw(EventKind::GuardrailInspect);
        let detected = event.content.contains("ignore previous");
        AgentResponse::allow().with_guardrail(&GuardrailResponse {
            detected,
            confidence: if detected { 0.9 } else { 0.0 },
            ..Default::default()
        })
    }

    async fn on_configure(&self, event: ConfigureEvent) -> AgentResponse {
        self.saw(EventKind::Configure);
        let mut r = AgentResponse::allow();
        r.routing_metadata
            .insert("mode".into(), event.config["mode"].to_string());
        r
    }
}

/// The agent the reverse scenarios register: blocks (403) request headers whose URI contains
/// `attack`, allows everything else.
pub struct Waf;

impl AgentHandler for Waf {
    async fn on_request_headers(&self, event: RequestHeadersEvent) -> AgentResponse {
        if event.uri.contains("attack") {
            AgentResponse::block(403, "nope")
        } else {
            AgentResponse::allow()
        }
    }
}

/// Request metadata for correlation id `cid`.
pub fn meta(cid: &str) -> RequestMetadata {
    RequestMetadata {
        correlation_id: cid.into(),
        request_id: cid.into(),
        client_ip: "10.0.0.1".into(),
        client_port: 5555,
        protocol: "HTTP/1.1".into(),
        timestamp: "2026-11-29T00:00:00Z".into(),
        ..Default::default()
    }
}

/// `GET uri` with a `host` and a `cookie` header.
pub fn request_headers(cid: &str, uri: &str) -> RequestHeadersEvent {
    RequestHeadersEvent::new(
        meta(cid),
        "GET",
        uri,
        Headers::from_iter([("host", "example.com"), ("cookie", "session=1")]),
    )
}

/// [`request_headers`] as an [`Event`].
pub fn headers(cid: &str, uri: &str) -> Event {
    Event::RequestHeaders(request_headers(cid, uri))
}

/// Request body chunk `index` of request `cid`.
pub fn body_chunk(cid: &str, data: &[u8], index: u32, is_last: bool, total: u64) -> Event {
    Event::RequestBodyChunk(RequestBodyChunkEvent(BodyChunk {
        correlation_id: cid.into(),
        data: Bytes::copy_from_slice(data),
        is_last,
        total_size: Some(total),
        chunk_index: index,
        bytes_transferred: 0,
    }))
}

/// Pending once, after waking the waker it was polled with, then ready.
struct YieldOnce(bool);

impl std::future::Future for YieldOnce {
    type Output = ();

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        if self.0 {
            return std::task::Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    }
}
