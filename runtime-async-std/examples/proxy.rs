//! The proxy side: consult an agent through the pool for a few requests. Runs under smol, to
//! show the same types work there (the agent example runs under async-std).
//!
//! ```sh
//! cargo run -p agent-protocol-async-std --example waf_agent -- /tmp/waf.sock &
//! cargo run -p agent-protocol-async-std --example proxy -- /tmp/waf.sock
//! ```

use agent_protocol_async_std::pool::{AgentPool, AgentPoolConfig};
use agent_protocol_core::{
    BodyChunk, Headers, RequestBodyChunkEvent, RequestHeadersEvent, RequestMetadata,
};
use bytes::Bytes;

fn request(cid: &str, method: &str, uri: &str, user_agent: &str) -> RequestHeadersEvent {
    let metadata = RequestMetadata {
        correlation_id: cid.into(),
        request_id: cid.into(),
        client_ip: "192.0.2.10".into(),
        client_port: 40000,
        protocol: "HTTP/1.1".into(),
        timestamp: "2026-11-29T00:00:00Z".into(),
        ..Default::default()
    };
    let headers = Headers::from_iter([("host", "shop.example"), ("user-agent", user_agent)]);
    RequestHeadersEvent::new(metadata, method, uri, headers)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    smol::block_on(run())
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let endpoint = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "/tmp/waf.sock".into());
    let pool = AgentPool::new(AgentPoolConfig::default());
    pool.add_agent("waf", &endpoint).await?;

    for (cid, method, uri, ua) in [
        ("r1", "GET", "/shop", "Mozilla/5.0"),
        ("r2", "GET", "/admin/users", "Mozilla/5.0"),
        ("r3", "GET", "/shop", "sqlmap/1.7"),
    ] {
        let answer = pool
            .send_request_headers("waf", request(cid, method, uri, ua))
            .await?;
        println!(
            "{method} {uri} ({ua}) -> {:?} {:?}",
            answer.decision, answer.request_headers
        );
        pool.clear_correlation_affinity("waf", cid);
    }

    // A POST whose body is streamed in two chunks, on the connection that carried its headers.
    let cid = "r4";
    let first = pool
        .send_request_headers("waf", request(cid, "POST", "/login", "Mozilla/5.0"))
        .await?;
    println!("POST /login headers -> {:?}", first.decision);
    let body: [&[u8]; 2] = [b"user=alice&", b"password=' OR 1=1 --"];
    for (i, part) in body.iter().enumerate() {
        let chunk = RequestBodyChunkEvent(BodyChunk {
            correlation_id: cid.into(),
            data: Bytes::copy_from_slice(part),
            is_last: i == body.len() - 1,
            total_size: None,
            chunk_index: i as u32,
            bytes_transferred: 0,
        });
        let answer = pool.send_request_body_chunk("waf", chunk).await?;
        println!("  body chunk {i} -> {:?}", answer.decision);
    }
    pool.clear_correlation_affinity("waf", cid);
    println!(
        "{}",
        pool.render_prometheus()
            .lines()
            .filter(|l| l.contains("requests_total"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    pool.shutdown(std::time::Duration::from_secs(1)).await;
    Ok(())
}
