//! `serve --metrics ADDR`: the agent's metrics at `GET /metrics` in the OpenMetrics text
//! format, for a Prometheus server to scrape. hyper serves HTTP/1.1 (it is already in the
//! build through tonic); everything else answers 404.

use std::convert::Infallible;
use std::sync::Arc;

use agent_protocol_driver::metrics::prometheus_client::registry::Registry;
use agent_protocol_driver::metrics::render_openmetrics;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};

use super::Result;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Binds `addr` and serves `registry` until the process ends.
pub async fn serve(addr: &str, registry: Registry) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("--metrics {addr}: {e}"))?;
    let registry = Arc::new(registry);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let registry = registry.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request: Request<_>| {
                    let registry = registry.clone();
                    async move { Ok::<_, Infallible>(answer(&request, &registry)) }
                });
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, service)
                    .await;
            });
        }
    });
    Ok(())
}

fn answer<B>(request: &Request<B>, registry: &Registry) -> Response<Full<Bytes>> {
    if request.uri().path() != "/metrics" {
        let mut response = Response::new(Full::new(Bytes::from_static(b"not found\n")));
        *response.status_mut() = StatusCode::NOT_FOUND;
        return response;
    }
    let mut response = Response::new(Full::new(Bytes::from(render_openmetrics(registry))));
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(OPENMETRICS),
    );
    response
}
