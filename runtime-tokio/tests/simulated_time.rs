//! The drivers read the clock only through `Runtime::now`, and tokio's is the paused clock of
//! `start_paused` runtimes: a pool and an agent on real Unix sockets run on simulated time, so an
//! hour-long request timeout passes in an instant and lands exactly on its deadline.

use std::time::Duration;

use agent_protocol_core::{AgentResponse, Headers, RequestHeadersEvent, RequestMetadata};
use agent_protocol_tokio::pool::{AgentPool, AgentPoolConfig, PoolError};
use agent_protocol_tokio::server::{AgentHandler, AgentServer, ServerConfig};

/// An agent that never answers a request (pings still get their pongs).
struct Silent;

impl AgentHandler for Silent {
    async fn on_request_headers(&self, _event: RequestHeadersEvent) -> AgentResponse {
        std::future::pending().await
    }
}

const REQUEST_TIMEOUT: Duration = Duration::from_secs(3600);

#[tokio::test(start_paused = true)]
async fn an_hour_long_request_timeout_passes_on_simulated_time() {
    // Hang guard: were any clock read of the drivers real, the hour would be real too.
    std::thread::spawn(|| {
        std::thread::sleep(Duration::from_secs(120));
        eprintln!("the request timeout ran on the real clock");
        std::process::exit(1);
    });
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("silent.sock");
    let server = AgentServer::new(Silent, ServerConfig::default());
    let listener = server.bind_uds(&path).unwrap();
    tokio::spawn(async move { server.serve(listener).await });

    let pool = AgentPool::new(
        AgentPoolConfig::default()
            .with_connections_per_agent(1)
            .with_request_timeout(REQUEST_TIMEOUT),
    );
    pool.add_agent("silent", path.to_str().unwrap())
        .await
        .unwrap();
    let meta = RequestMetadata {
        correlation_id: "never".into(),
        ..Default::default()
    };
    let event = RequestHeadersEvent::new(meta, "GET", "/", Headers::new());
    let sent = tokio::time::Instant::now();
    let err = pool
        .send_request_headers("silent", event)
        .await
        .unwrap_err();
    let waited = sent.elapsed();
    assert!(err.is_timeout(), "{err}");
    assert!(!matches!(err, PoolError::CircuitOpen { .. }), "{err}");
    // On time: not before the deadline, and not later than the caller's own backstop.
    assert!(waited >= REQUEST_TIMEOUT, "{waited:?}");
    assert!(
        waited < REQUEST_TIMEOUT + Duration::from_secs(1),
        "{waited:?}"
    );
    // The connection lived through the hour: its pings were answered on simulated time too.
    let stats = pool.stats();
    assert_eq!(stats[0].connected, 1, "{stats:?}");
}
