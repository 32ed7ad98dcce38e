//! Fixtures and in-process setup shared by the criterion benches (`benches/`) and the
//! allocation-budget test (`tests/alloc_budget.rs`).
//!
//! Topology used by every socket benchmark, so the numbers compare like with like: the agent
//! (or the floor's echo side) runs on its own thread with a current-thread Tokio runtime; the
//! proxy side (the [`AgentPool`], its connection tasks and the calling tasks) runs on the bench
//! thread, also on a current-thread runtime. On a 2-core machine that gives each side one core.
#![warn(missing_docs)]

use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::Duration;

use agent_protocol_core::agent::{AgentConfig, AgentEvent, RequestId};
use agent_protocol_core::proxy::{ProxyConfig, ProxyEvent, RequestId as ProxyRequestId};
use agent_protocol_core::testing::{FramedAgent, FramedProxy};
use agent_protocol_core::{
    AgentResponse, AuditMetadata, Capabilities, Decision, Encoding, HeaderOp, RequestHeadersEvent,
};
use agent_protocol_tokio::pool::{AgentPool, AgentPoolConfig};
use agent_protocol_tokio::server::{AgentHandler, AgentServer, ServerConfig, ServerHandle};
use tokio::runtime::Runtime;

pub use agentctl::workload::{body_chunks, browser_headers};

/// Both payload encodings, for parameterised benches.
pub const ENCODINGS: [Encoding; 2] = [Encoding::Json, Encoding::MsgPack];

/// The URI of the browser-like GET used everywhere.
pub const URI: &str = "/shop/electronics/audio/headphones?brand=acme&color=blue&p=2";

/// The browser-like 20-header request (about 1 KB on the wire) for `correlation_id`.
pub fn request_headers(correlation_id: &str) -> RequestHeadersEvent {
    browser_headers(correlation_id, "GET", URI)
}

/// A typical allow: two request-header mutations, and the correlation id in
/// `audit.custom` as every UDS answer carries it.
pub fn allow_with_header_ops(correlation_id: &str) -> AgentResponse {
    let mut r = AgentResponse::allow();
    r.request_headers.push(HeaderOp::Set {
        name: "x-waf-score".into(),
        value: "3".into(),
    });
    r.request_headers.push(HeaderOp::Add {
        name: "x-agent-checked".into(),
        value: "waf".into(),
    });
    r.with_correlation_id(correlation_id)
}

/// A typical block: status and body, with audit data (tags, rule ids, confidence, reason
/// codes) and the correlation id.
pub fn block_with_audit(correlation_id: &str) -> AgentResponse {
    let mut r = AgentResponse::new(Decision::block(
        403,
        Some("Request blocked by rule 942100".into()),
    ));
    r.audit = AuditMetadata {
        tags: vec!["sqli".into(), "owasp-crs".into()],
        rule_ids: vec!["942100".into()],
        confidence: Some(0.93),
        reason_codes: vec!["SQL_INJECTION".into()],
        custom: serde_json::Map::new(),
    };
    r.with_correlation_id(correlation_id)
}

/// Wall time and CPU time of a measured section: the calling thread's (the proxy side in the
/// socket benches) and the whole process's (the difference is the agent thread, or the echo
/// thread of the floor). CPU time does not count the time a thread waits for a core, so it
/// stays meaningful on a machine shared with other work, where wall time does not.
#[derive(Clone, Copy, Debug)]
pub struct CpuTimes {
    /// Elapsed wall time.
    pub wall: Duration,
    /// CPU time of the calling thread.
    pub this_thread: Duration,
    /// CPU time of every thread of the process.
    pub process: Duration,
}

impl CpuTimes {
    /// CPU time of the other threads (the agent side).
    pub fn others(&self) -> Duration {
        self.process.saturating_sub(self.this_thread)
    }

    /// One line for the bench output: each time divided by `per` units of `unit`.
    pub fn report(&self, name: &str, per: u64, unit: &str) -> String {
        let us = |d: Duration| d.as_secs_f64() * 1e6 / per as f64;
        format!(
            "cpu {name}: wall {:.2} µs/{unit}, this thread {:.2} µs/{unit}, other threads \
             {:.2} µs/{unit} ({per} {unit}s)",
            us(self.wall),
            us(self.this_thread),
            us(self.others()),
        )
    }
}

fn cpu_clock(id: libc::clockid_t) -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the clock ids used are always supported on
    // Linux.
    let rc = unsafe { libc::clock_gettime(id, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Runs `f` and returns its result with the wall and CPU time it took (see [`CpuTimes`]).
pub fn measure_cpu<T>(f: impl FnOnce() -> T) -> (T, CpuTimes) {
    let wall = std::time::Instant::now();
    let thread = cpu_clock(libc::CLOCK_THREAD_CPUTIME_ID);
    let process = cpu_clock(libc::CLOCK_PROCESS_CPUTIME_ID);
    let out = f();
    let times = CpuTimes {
        process: cpu_clock(libc::CLOCK_PROCESS_CPUTIME_ID) - process,
        this_thread: cpu_clock(libc::CLOCK_THREAD_CPUTIME_ID) - thread,
        wall: wall.elapsed(),
    };
    (out, times)
}

/// The agent used by the socket benches: allows everything (the handler does no work, so the
/// benches measure the protocol and the runtime).
#[derive(Clone, Copy, Debug, Default)]
pub struct AllowAll;

impl AgentHandler for AllowAll {}

/// An [`AgentServer`] on a Unix socket in a temporary directory, served from its own thread
/// (current-thread runtime). Shut down and joined on drop.
pub struct AgentThread {
    path: PathBuf,
    handle: ServerHandle,
    thread: Option<JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl AgentThread {
    /// Starts the allow-all agent; returns once its socket is bound.
    pub fn start() -> Self {
        Self::start_with(|| {})
    }

    /// Like [`AgentThread::start`], running `on_thread` first on the agent's thread (an
    /// allocation count, say, to mark it).
    pub fn start_with(on_thread: fn()) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("agent.sock");
        let (tx, rx) = std::sync::mpsc::channel();
        let socket = path.clone();
        let thread = std::thread::Builder::new()
            .name("bench-agent".into())
            .spawn(move || {
                on_thread();
                let rt = current_thread_runtime();
                rt.block_on(async move {
                    let config =
                        ServerConfig::default().with_drain_timeout(Duration::from_millis(200));
                    let server = AgentServer::new(AllowAll, config);
                    let listener = server.bind_uds(&socket).expect("bind agent socket");
                    tx.send(server.handle()).expect("report handle");
                    server.serve(listener).await.expect("serve");
                });
            })
            .expect("spawn agent thread");
        let handle = rx.recv().expect("agent started");
        Self {
            path,
            handle,
            thread: Some(thread),
            _dir: dir,
        }
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The endpoint string for [`AgentPool::add_agent`].
    pub fn endpoint(&self) -> String {
        format!("unix:{}", self.path.display())
    }
}

impl Drop for AgentThread {
    fn drop(&mut self) {
        self.handle.shutdown();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A current-thread Tokio runtime with I/O and timers.
pub fn current_thread_runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Pool settings for the benches: `connections` per agent, only `encoding` offered, no idle
/// closing, no pings (nothing periodic disturbs a measurement).
pub fn pool_config(encoding: Encoding, connections: usize) -> AgentPoolConfig {
    let mut config = AgentPoolConfig::default()
        .with_connections_per_agent(connections)
        .with_request_timeout(Duration::from_secs(10))
        .with_idle_timeout(None)
        .with_health_check_interval(Duration::from_secs(3600));
    config.client.connection.handshake.encodings = [encoding].into_iter().collect();
    config.client.connection.ping_interval = None;
    config
}

/// A pool (created on `rt`) with one agent, `"bench"`, connected to `agent` in `encoding`.
pub fn connect_pool(
    rt: &Runtime,
    agent: &AgentThread,
    encoding: Encoding,
    connections: usize,
) -> AgentPool {
    rt.block_on(async {
        let pool = AgentPool::new(pool_config(encoding, connections));
        pool.add_agent("bench", &agent.endpoint())
            .await
            .expect("add agent");
        pool
    })
}

/// A proxy ([`FramedProxy`]) and an agent ([`FramedAgent`]) wired together in memory after a
/// real handshake in `encoding`: the deterministic harness of the allocation budgets.
///
/// Each side is driven the way the drivers drive it: the connection behind its codec, output
/// taken whole from the codec, input read straight into the codec's read buffer.
pub struct MemoryPair {
    /// The proxy side.
    pub proxy: FramedProxy,
    /// The agent side.
    pub agent: FramedAgent,
    /// Simulated clock.
    pub now: std::time::Instant,
    /// What the proxy wrote and the agent has not read yet.
    wire: bytes::Bytes,
}

impl MemoryPair {
    /// Handshakes a pair in `encoding`.
    pub fn new(encoding: Encoding) -> Self {
        let now = std::time::Instant::now();
        let mut pcfg = ProxyConfig::default();
        pcfg.ping_interval = None;
        pcfg.handshake.encodings = [encoding].into_iter().collect();
        let mut acfg = AgentConfig::default();
        acfg.handshake.encodings = [encoding].into_iter().collect();
        acfg.handshake.capabilities = Capabilities::new("bench-agent", "Bench", "1")
            .with_all_events()
            .with_control_features();
        let mut pair = Self {
            proxy: FramedProxy::new(pcfg, now),
            agent: FramedAgent::new(acfg, now),
            now,
            wire: bytes::Bytes::new(),
        };
        pair.proxy_to_agent();
        while pair.agent.poll_event().is_some() {}
        pair.agent_to_proxy();
        while let Some(e) = pair.proxy.poll_event() {
            assert!(matches!(e, ProxyEvent::Connected(_)), "{e:?}");
        }
        assert_eq!(pair.proxy.encoding(), encoding);
        pair
    }

    /// Moves the proxy's queued output to the agent.
    pub fn proxy_to_agent(&mut self) {
        if let Some(wire) = self.proxy.poll_transmit() {
            self.agent.handle_input(self.now, &wire);
        }
    }

    /// Proxy-side calls only: encode the event through the codec and take its bytes for
    /// writing.
    pub fn proxy_submit(&mut self, event: agent_protocol_core::Event) -> ProxyRequestId {
        let id = self
            .proxy
            .send_event(self.now, event, None)
            .expect("submit");
        self.wire = self.proxy.poll_transmit().unwrap_or_default();
        id
    }

    /// Agent side: read what the proxy wrote (from [`MemoryPair::proxy_submit`]), and return
    /// the request it decoded.
    pub fn agent_receive(&mut self) -> (RequestId, agent_protocol_core::Event) {
        let wire = std::mem::take(&mut self.wire);
        self.agent.handle_input(self.now, &wire);
        match self.agent.poll_event() {
            Some(AgentEvent::Request { id, event }) => (id, *event),
            other => panic!("expected a request, got {other:?}"),
        }
    }

    /// Agent side: answer and return the bytes it queued.
    pub fn agent_answer(&mut self, id: RequestId, response: AgentResponse) -> bytes::Bytes {
        self.agent.respond(id, response).expect("respond");
        self.agent.poll_transmit().expect("answer bytes")
    }

    /// Proxy-side calls only: feed the agent's bytes and deliver the decided response.
    pub fn proxy_deliver(&mut self, wire: &[u8]) -> AgentResponse {
        self.proxy.codec.read_buffer().extend_from_slice(wire);
        self.proxy.process_input(self.now);
        match self.proxy.poll_event() {
            Some(ProxyEvent::Response { response, .. }) => response,
            other => panic!("expected a response, got {other:?}"),
        }
    }

    /// Moves the agent's queued output to the proxy.
    pub fn agent_to_proxy(&mut self) {
        if let Some(b) = self.agent.poll_transmit() {
            self.proxy.handle_input(self.now, &b);
        }
    }
}
