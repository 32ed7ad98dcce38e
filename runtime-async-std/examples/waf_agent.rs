//! A small WAF-like agent: blocks by path and header rules and inspects request bodies. Runs
//! under async-std's executor; stop it with Ctrl-C (the next start replaces the stale socket
//! file).
//!
//! ```sh
//! cargo run -p agent-protocol-async-std --example waf_agent -- /tmp/waf.sock
//! ```

use agent_protocol_async_std::server::{AgentHandler, AgentServer, ServerConfig};
use agent_protocol_core::{
    AgentResponse, Capabilities, Decision, HeaderOp, RequestBodyChunkEvent, RequestHeadersEvent,
};

/// Paths nobody outside may reach.
const BLOCKED_PREFIXES: &[&str] = &["/admin", "/.git", "/wp-login.php"];
/// User agents of well-known scanners.
const SCANNERS: &[&str] = &["sqlmap", "nikto", "nmap"];
/// Byte patterns that mark an injection attempt in a body.
const BODY_PATTERNS: &[&[u8]] = &[b"' OR 1=1", b"<script>", b"../../"];

struct Waf;

impl AgentHandler for Waf {
    async fn on_request_headers(&self, event: RequestHeadersEvent) -> AgentResponse {
        let path = event.uri.split('?').next().unwrap_or_default();
        if let Some(prefix) = BLOCKED_PREFIXES.iter().find(|p| path.starts_with(**p)) {
            let mut r = AgentResponse::new(Decision::block(403, Some("forbidden".into())));
            r.audit.rule_ids.push(format!("path:{prefix}"));
            return r;
        }
        let ua = event
            .headers
            .first("user-agent")
            .unwrap_or_default()
            .to_ascii_lowercase();
        if let Some(scanner) = SCANNERS.iter().find(|s| ua.contains(**s)) {
            let mut r = AgentResponse::new(Decision::block(403, Some("scanner".into())));
            r.audit.rule_ids.push(format!("ua:{scanner}"));
            return r;
        }
        // Tell the upstream this request was inspected.
        let mut r = AgentResponse::allow();
        r.request_headers.push(HeaderOp::Set {
            name: "x-waf".into(),
            value: "inspected".into(),
        });
        r
    }

    async fn on_request_body_chunk(&self, event: RequestBodyChunkEvent) -> AgentResponse {
        let data = &event.0.data;
        for pattern in BODY_PATTERNS {
            if data.windows(pattern.len()).any(|w| w == *pattern) {
                let mut r = AgentResponse::new(Decision::block(400, Some("bad body".into())));
                r.audit.reason_codes.push("BODY_INJECTION".into());
                return r;
            }
        }
        AgentResponse::allow()
    }
}

#[async_std::main]
async fn main() -> std::io::Result<()> {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "/tmp/waf.sock".into());
    let config = ServerConfig::default().with_capabilities(
        Capabilities::new("example-waf", "Example WAF", "1.0.0")
            .with_event(agent_protocol_core::EventKind::RequestBodyChunk)
            .with_control_features(),
    );
    let server = AgentServer::new(Waf, config);
    let listener = server.bind_uds(&path)?;
    eprintln!("waf agent listening on {path}");
    // `server.handle().shutdown()` (from a signal handler, an admin endpoint, ...) would stop
    // accepting, drain in-flight requests and return.
    server.serve(listener).await
}
