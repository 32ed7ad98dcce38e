//! [`AgentHandler`]: what an agent does with each event, and [`dispatch`], which routes an event
//! to the method for its kind.

use std::future::Future;
use std::sync::Arc;

use agent_protocol_core::agent::RequestId;
use agent_protocol_core::{
    AgentResponse, ConfigureEvent, Event, GuardrailInspectEvent, GuardrailResponse,
    RequestBodyChunkEvent, RequestCompleteEvent, RequestHeadersEvent, ResponseBodyChunkEvent,
    ResponseHeadersEvent, WebSocketDecision, WebSocketFrameEvent,
};
use tracing::Instrument;

use crate::spans;

/// What an agent does with each event. Every method has a default that allows, so an agent
/// implements only what it inspects.
///
/// ```
/// use agent_protocol_tokio::server::AgentHandler;
/// use agent_protocol_core::{AgentResponse, RequestHeadersEvent};
///
/// struct BlockAdmin;
/// impl AgentHandler for BlockAdmin {
///     async fn on_request_headers(&self, event: RequestHeadersEvent) -> AgentResponse {
///         if event.uri.starts_with("/admin") {
///             AgentResponse::block(403, "forbidden")
///         } else {
///             AgentResponse::allow()
///         }
///     }
/// }
/// ```
///
/// # Logging and tracing
///
/// Each method's future runs inside two [`tracing`] spans (see [`spans`](crate::spans)):
///
/// - `agent_connection` (`info`, target `agent_protocol::connection`), one per connection:
///   `peer` (`unix`, `tcp`, `grpc` or `reverse`), `address` when the transport knows it,
///   `agent_id`, and once the handshake is done `encoding` (`msgpack`, `json`, `protobuf` on
///   gRPC) and `proxy` (the proxy's id);
/// - inside it, `agent_request` (`debug`, target `agent_protocol::request`), one per call:
///   `correlation_id` and `event` (`request_headers`, `request_body_chunk`, ...).
///
/// So a handler logs with plain `tracing` macros and each line carries the request it belongs
/// to, on every transport (Unix sockets, TCP, gRPC streams and unary calls, reverse
/// connections), including after an `.await` and when a cancelled request's future is dropped.
/// The request span is at `debug` so that it costs nothing while disabled; enable that one
/// target (an `EnvFilter` or `Targets` directive `agent_protocol::request=debug`) to get the
/// correlation id at any other level:
///
/// ```
/// use agent_protocol_tokio::server::AgentHandler;
/// use agent_protocol_core::{AgentResponse, RequestHeadersEvent};
///
/// struct Audit;
/// impl AgentHandler for Audit {
///     async fn on_request_headers(&self, event: RequestHeadersEvent) -> AgentResponse {
///         // A `fmt` subscriber prints `agent_connection{peer="unix" ... encoding="msgpack"}:
///         // agent_request{correlation_id="req-1" event="request_headers"}: audited uri=/x`.
///         tracing::info!(uri = %event.uri, "audited");
///         AgentResponse::allow()
///     }
/// }
/// ```
pub trait AgentHandler: Send + Sync + 'static {
    /// 0x10.
    fn on_request_headers(
        &self,
        event: RequestHeadersEvent,
    ) -> impl Future<Output = AgentResponse> + Send {
        let _ = event;
        async { AgentResponse::allow() }
    }

    /// 0x11.
    fn on_request_body_chunk(
        &self,
        event: RequestBodyChunkEvent,
    ) -> impl Future<Output = AgentResponse> + Send {
        let _ = event;
        async { AgentResponse::allow() }
    }

    /// 0x12.
    fn on_response_headers(
        &self,
        event: ResponseHeadersEvent,
    ) -> impl Future<Output = AgentResponse> + Send {
        let _ = event;
        async { AgentResponse::allow() }
    }

    /// 0x13.
    fn on_response_body_chunk(
        &self,
        event: ResponseBodyChunkEvent,
    ) -> impl Future<Output = AgentResponse> + Send {
        let _ = event;
        async { AgentResponse::allow() }
    }

    /// 0x14.
    fn on_request_complete(
        &self,
        event: RequestCompleteEvent,
    ) -> impl Future<Output = AgentResponse> + Send {
        let _ = event;
        async { AgentResponse::allow() }
    }

    /// 0x15. The default forwards the frame.
    fn on_websocket_frame(
        &self,
        event: WebSocketFrameEvent,
    ) -> impl Future<Output = AgentResponse> + Send {
        let _ = event;
        async {
            let mut r = AgentResponse::allow();
            r.websocket_decision = Some(WebSocketDecision::Allow);
            r
        }
    }

    /// 0x16. The default reports nothing detected.
    fn on_guardrail_inspect(
        &self,
        event: GuardrailInspectEvent,
    ) -> impl Future<Output = AgentResponse> + Send {
        let _ = event;
        async { AgentResponse::allow().with_guardrail(&GuardrailResponse::default()) }
    }

    /// 0x17. The default accepts the configuration.
    fn on_configure(&self, event: ConfigureEvent) -> impl Future<Output = AgentResponse> + Send {
        let _ = event;
        async { AgentResponse::allow() }
    }
}

/// Calls the handler method for `$event`'s kind, then `$then` with that call's future as
/// `$call`: the match is written once for both ways of awaiting it.
macro_rules! on_event {
    ($handler:ident, $event:expr, $call:ident => $then:expr) => {
        match $event {
            Event::RequestHeaders(e) => {
                let $call = $handler.on_request_headers(e);
                $then
            }
            Event::RequestBodyChunk(e) => {
                let $call = $handler.on_request_body_chunk(e);
                $then
            }
            Event::ResponseHeaders(e) => {
                let $call = $handler.on_response_headers(e);
                $then
            }
            Event::ResponseBodyChunk(e) => {
                let $call = $handler.on_response_body_chunk(e);
                $then
            }
            Event::RequestComplete(e) => {
                let $call = $handler.on_request_complete(e);
                $then
            }
            Event::WebSocketFrame(e) => {
                let $call = $handler.on_websocket_frame(e);
                $then
            }
            Event::GuardrailInspect(e) => {
                let $call = $handler.on_guardrail_inspect(e);
                $then
            }
            Event::Configure(e) => {
                let $call = $handler.on_configure(e);
                $then
            }
        }
    };
}

/// Routes an event to its handler method, in the event's [`REQUEST`](crate::spans::REQUEST)
/// span (see [`spans`](crate::spans)), so what the handler logs carries the request's
/// correlation id. One `async fn`, so every request's future has the same type and no boxing is
/// needed to run them side by side.
///
/// The event comes by value or, as the connection task holds it, boxed
/// ([`AgentEvent::Request`](agent_protocol_core::agent::AgentEvent::Request)): a boxed event
/// leaves its box only into the handler's call.
pub async fn dispatch<H: AgentHandler>(
    handler: Arc<H>,
    id: RequestId,
    event: impl HeldEvent,
) -> (RequestId, AgentResponse) {
    let span = spans::agent_request(event.event());
    // Wrapping the handler's future moves it once more: worth it only when the span is enabled.
    let response = if span.is_disabled() {
        drop(span);
        on_event!(handler, event.into_event(), call => call.await)
    } else {
        on_event!(handler, event.into_event(), call => call.instrument(span).await)
    };
    (id, response)
}

/// An event as [`dispatch`] takes it: an [`Event`], or a `Box<Event>`.
///
/// ```
/// use std::sync::Arc;
/// use agent_protocol_core::agent::RequestId;
/// use agent_protocol_core::{AgentResponse, Event, RequestHeadersEvent};
/// use agent_protocol_driver::server::{dispatch, AgentHandler};
///
/// struct Deny;
/// impl AgentHandler for Deny {
///     async fn on_request_headers(&self, _: RequestHeadersEvent) -> AgentResponse {
///         AgentResponse::block(403, "no")
///     }
/// }
/// let event = Event::RequestHeaders(RequestHeadersEvent::default());
/// let id = RequestId::from_raw(7);
/// let by_value = dispatch(Arc::new(Deny), id, event.clone());
/// let boxed = dispatch(Arc::new(Deny), id, Box::new(event));
/// for answer in [block_on(by_value), block_on(boxed)] {
///     assert_eq!(answer.0, id);
///     assert_eq!(answer.1.decision.kind(), "block");
/// }
/// # fn block_on<F: std::future::Future>(f: F) -> F::Output {
/// #     let mut f = std::pin::pin!(f);
/// #     let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
/// #     loop {
/// #         if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) { return v; }
/// #     }
/// # }
/// ```
pub trait HeldEvent: Send + 'static {
    /// The event, to look at.
    fn event(&self) -> &Event;
    /// The event, for the handler's call.
    fn into_event(self) -> Event;
}

impl HeldEvent for Event {
    fn event(&self) -> &Event {
        self
    }

    fn into_event(self) -> Event {
        self
    }
}

impl HeldEvent for Box<Event> {
    fn event(&self) -> &Event {
        self
    }

    fn into_event(self) -> Event {
        *self
    }
}
