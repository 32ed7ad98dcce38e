//! Tower middleware around an [`AgentHandler`]: [`HandlerService`] is a handler as a
//! `tower_service::Service<Event>`, so tower's layers (timeout, concurrency limit, rate limit,
//! load shedding, your own) wrap it; [`ServiceHandler`] turns the layered service back into a
//! handler for [`AgentServer`](super::AgentServer).
//!
//! A layer's error (the timeout elapsed, the load shedder refused, the rate limiter's buffer
//! failed) is never an allow: the event is answered with the fail-closed block
//! [`handler_failed_answer`] (status 503, reason code `HANDLER_FAILED`).
//!
//! Each event calls a clone of the service, as tower services shared across tasks are used: a
//! layer whose state must be shared by every connection (a rate limit) goes inside a
//! `tower::buffer::Buffer`; a concurrency limit already shares its semaphore between clones.
//!
//! ```
//! use std::time::Duration;
//! use agent_protocol_core::{AgentResponse, RequestHeadersEvent};
//! use agent_protocol_tokio::server::{AgentHandler, AgentServer, HandlerService, ServerConfig, ServiceHandler};
//! use tower::ServiceBuilder;
//!
//! struct Waf;
//! impl AgentHandler for Waf {
//!     async fn on_request_headers(&self, _event: RequestHeadersEvent) -> AgentResponse {
//!         AgentResponse::allow()
//!     }
//! }
//!
//! let layered = ServiceBuilder::new()
//!     .concurrency_limit(256)
//!     .timeout(Duration::from_millis(50)) // a slow verdict becomes a 503 block, not a hang
//!     .service(HandlerService::new(Waf));
//! let server = AgentServer::new(ServiceHandler::new(layered), ServerConfig::default());
//! # drop(server);
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use agent_protocol_core::agent::{handler_failed_answer, RequestId};
use agent_protocol_core::{
    AgentResponse, ConfigureEvent, Event, GuardrailInspectEvent, RequestBodyChunkEvent,
    RequestCompleteEvent, RequestHeadersEvent, ResponseBodyChunkEvent, ResponseHeadersEvent,
    WebSocketFrameEvent,
};
use tower_service::Service;

use super::handler::{dispatch, AgentHandler};

/// An [`AgentHandler`] as a tower service: every event goes to the method for its kind. It is
/// always ready and never fails; the layers around it are what may.
pub struct HandlerService<H> {
    handler: Arc<H>,
}

impl<H> HandlerService<H> {
    /// Wraps `handler`.
    pub fn new(handler: H) -> Self {
        Self::from_shared(Arc::new(handler))
    }

    /// Wraps a handler shared with something else.
    pub fn from_shared(handler: Arc<H>) -> Self {
        Self { handler }
    }
}

impl<H> Clone for HandlerService<H> {
    fn clone(&self) -> Self {
        Self {
            handler: self.handler.clone(),
        }
    }
}

impl<H> fmt::Debug for HandlerService<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HandlerService")
    }
}

impl<H: AgentHandler> Service<Event> for HandlerService<H> {
    type Response = AgentResponse;
    type Error = std::convert::Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<AgentResponse, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, event: Event) -> Self::Future {
        let handler = self.handler.clone();
        // Tower's futures are named types, so this one is boxed; the plain handler path
        // (without tower) keeps its unboxed futures.
        Box::pin(async move {
            let (_, response) = dispatch(handler, RequestId::from_raw(0), event).await;
            Ok(response)
        })
    }
}

/// A tower service over [`Event`]s as an [`AgentHandler`]: serve it with
/// [`AgentServer`](super::AgentServer) (or a reverse connector). An error of the service,
/// or of its readiness, answers the event with [`handler_failed_answer`].
pub struct ServiceHandler<S> {
    service: S,
}

impl<S> ServiceHandler<S> {
    /// Serves `service`.
    pub fn new(service: S) -> Self {
        Self { service }
    }
}

impl<S> fmt::Debug for ServiceHandler<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ServiceHandler")
    }
}

impl<S> ServiceHandler<S>
where
    S: Service<Event, Response = AgentResponse> + Clone + Send + Sync + 'static,
    S::Error: fmt::Display + Send,
    S::Future: Send,
{
    fn answer(&self, event: Event) -> impl Future<Output = AgentResponse> + Send {
        let mut service = self.service.clone();
        async move {
            let frame_type = event.frame_type();
            let ready = std::future::poll_fn(|cx| service.poll_ready(cx)).await;
            let result = match ready {
                Ok(()) => service.call(event).await,
                Err(e) => Err(e),
            };
            result.unwrap_or_else(|error| {
                tracing::warn!(%error, "agent handler failed; answering fail-closed");
                handler_failed_answer(frame_type)
            })
        }
    }
}

impl<S> AgentHandler for ServiceHandler<S>
where
    S: Service<Event, Response = AgentResponse> + Clone + Send + Sync + 'static,
    S::Error: fmt::Display + Send,
    S::Future: Send,
{
    fn on_request_headers(
        &self,
        event: RequestHeadersEvent,
    ) -> impl Future<Output = AgentResponse> + Send {
        self.answer(Event::RequestHeaders(event))
    }

    fn on_request_body_chunk(
        &self,
        event: RequestBodyChunkEvent,
    ) -> impl Future<Output = AgentResponse> + Send {
        self.answer(Event::RequestBodyChunk(event))
    }

    fn on_response_headers(
        &self,
        event: ResponseHeadersEvent,
    ) -> impl Future<Output = AgentResponse> + Send {
        self.answer(Event::ResponseHeaders(event))
    }

    fn on_response_body_chunk(
        &self,
        event: ResponseBodyChunkEvent,
    ) -> impl Future<Output = AgentResponse> + Send {
        self.answer(Event::ResponseBodyChunk(event))
    }

    fn on_request_complete(
        &self,
        event: RequestCompleteEvent,
    ) -> impl Future<Output = AgentResponse> + Send {
        self.answer(Event::RequestComplete(event))
    }

    fn on_websocket_frame(
        &self,
        event: WebSocketFrameEvent,
    ) -> impl Future<Output = AgentResponse> + Send {
        self.answer(Event::WebSocketFrame(event))
    }

    fn on_guardrail_inspect(
        &self,
        event: GuardrailInspectEvent,
    ) -> impl Future<Output = AgentResponse> + Send {
        self.answer(Event::GuardrailInspect(event))
    }

    fn on_configure(&self, event: ConfigureEvent) -> impl Future<Output = AgentResponse> + Send {
        self.answer(Event::Configure(event))
    }
}
