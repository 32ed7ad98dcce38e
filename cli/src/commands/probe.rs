//! `agentctl probe`: connect, handshake, print what the agent advertises and a few round trips.

use std::process::ExitCode;
use std::time::Instant;

use agent_protocol_tokio::client::{AgentClient, ClientConfig};
use agentctl::workload::browser_headers;

use super::{transport, Result};

/// Probes `endpoint`; `json` prints one JSON object instead of the text form.
pub async fn run(endpoint: &str, json: bool) -> Result<ExitCode> {
    let transport = transport(endpoint)?;
    let started = Instant::now();
    let client = AgentClient::connect(endpoint, ClientConfig::default()).await?;
    let connect = started.elapsed();
    let mut pings = Vec::new();
    for _ in 0..3 {
        pings.push(client.ping().await?);
    }
    let t0 = Instant::now();
    let answer = client
        .send(agent_protocol_core::Event::RequestHeaders(browser_headers(
            "probe-1", "GET", "/",
        )))
        .await?;
    let request = t0.elapsed();
    let caps = client.capabilities();
    let grpc = transport == "grpc";
    let encoding = if grpc {
        "protobuf"
    } else {
        client.encoding().as_str()
    };
    if json {
        let out = serde_json::json!({
            "endpoint": endpoint,
            "transport": transport,
            "encoding": encoding,
            "protocol_version": client.negotiated().protocol_version,
            "capabilities": caps,
            "connect_us": connect.as_micros() as u64,
            "ping_us": pings.iter().map(|d| d.as_micros() as u64).collect::<Vec<_>>(),
            "request_us": request.as_micros() as u64,
            "decision": answer.decision.kind(),
        });
        println!("{out}");
    } else {
        println!("endpoint:     {endpoint}");
        println!(
            "agent:        {} ({}) v{}",
            caps.agent_id, caps.name, caps.version
        );
        println!("protocol:     {}", client.negotiated().protocol_version);
        println!("encoding:     {encoding}");
        let events: Vec<String> = caps
            .supported_events
            .iter()
            .map(|k| format!("{k:?}"))
            .collect();
        println!("events:       {}", events.join(", "));
        println!("features:     {}", serde_json::to_string(&caps.features)?);
        println!("limits:       {}", serde_json::to_string(&caps.limits)?);
        println!("connect+hs:   {connect:?}");
        for (i, p) in pings.iter().enumerate() {
            println!("ping {i}:       {p:?}");
        }
        println!("request:      {request:?} -> {}", answer.decision.kind());
    }
    client.close().await;
    Ok(ExitCode::SUCCESS)
}
