//! `agentctl demo`: the whole system on an embedded default. The example rules agent serves a
//! Unix socket (both encodings), gRPC and reverse connections, on tokio and on async-std; a
//! pool per transport sends the demo mix; one table row per transport.
//!
//! Everything lives in a temporary directory removed on every exit path, Ctrl-C included
//! (the first Ctrl-C stops the run and prints the rows so far; a second one quits at once,
//! still removing the directory).

use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agent_protocol_async_std::AsyncStd;
use agent_protocol_core::registration::RegistrationPolicy;
use agent_protocol_core::Encoding;
use agent_protocol_driver::pool::AgentPool as GenericPool;
use agent_protocol_driver::Runtime;
use agent_protocol_tokio::grpc::ServeGrpc;
use agent_protocol_tokio::pool::AgentPool;
use agent_protocol_tokio::reverse::{
    ReverseAgentConfig, ReverseConnector, ReverseListener, ReverseTarget,
};
use agent_protocol_tokio::server::{bind_unix_socket, AgentServer, Listener, ServerConfig};
use agentctl::load::{self, LoadSpec, Workload};
use agentctl::progress::{Extent, LiveCounters, Progress};
use agentctl::report::{print_table, Outcome, Summary};
use agentctl::rules::{RuleSet, RulesAgent};
use agentctl::workload::Mix;

use super::{cancel_on_signal, pool_config, Result, INTERRUPTED};

/// Runs the demo: `requests` per transport, `concurrency` in flight.
pub async fn run(requests: u64, concurrency: usize) -> Result<ExitCode> {
    let tmp = std::env::temp_dir();
    let dir = tempfile::Builder::new()
        .prefix("agentctl-demo-")
        .tempdir()
        .map_err(|e| {
            format!(
                "cannot create a temporary directory in {} (set TMPDIR to a writable directory): {e}",
                tmp.display()
            )
        })?;
    let cancel = Arc::new(AtomicBool::new(false));
    let doomed = dir.path().to_owned();
    cancel_on_signal(cancel.clone(), move || {
        let _ = std::fs::remove_dir_all(&doomed);
    });
    let demo = Demo {
        requests,
        concurrency,
        cancel,
    };
    demo.run(dir.path()).await
}

struct Demo {
    requests: u64,
    concurrency: usize,
    cancel: Arc<AtomicBool>,
}

impl Demo {
    async fn run(&self, dir: &Path) -> Result<ExitCode> {
        let agent = Arc::new(RulesAgent::new(RuleSet::demo()));

        // The example agent on a Unix socket, speaking both encodings.
        let agent_sock = dir.join("waf.sock");
        let server = Arc::new(AgentServer::with_shared_handler(
            agent.clone(),
            ServerConfig::default(),
        ));
        let listener = server.bind_uds(&agent_sock)?;
        let s = server.clone();
        let serving = tokio::spawn(async move { s.serve(listener).await });

        // A reverse listener on the proxy side and the same agent dialing it.
        let reverse_sock = dir.join("reverse.sock");
        let token = "demo-token";
        let policy = RegistrationPolicy {
            tokens: vec![token.into()],
            ..Default::default()
        };
        let reverse_pool =
            AgentPool::new(pool_config(&[Encoding::Json], 4, Duration::from_secs(5)));
        let control_pool = reverse_pool.clone();
        let reverse_listener = ReverseListener::new(policy, reverse_pool.config().client.clone())
            .with_control(move |id| control_pool.control_sender(id));
        let rl = reverse_listener.clone();
        let admit_pool = reverse_pool.clone();
        let reverse_uds = bind_unix_socket(&reverse_sock, 0o660)?;
        tokio::spawn(async move {
            rl.serve(Listener::from(reverse_uds), move |registered| {
                admit_pool
                    .add_reverse_connection(&registered.agent_id, registered.client)
                    .map_err(|e| e.to_string())
            })
            .await
        });
        // The same agent over gRPC on loopback TCP.
        let grpc_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let grpc_endpoint = grpc_listener.local_addr()?.to_string();
        let s = server.clone();
        let serving_grpc = tokio::spawn(async move { s.serve_grpc(grpc_listener).await });

        let reverse_handle = server.handle();
        let mut connectors = Vec::new();
        for _ in 0..4 {
            let mut cfg =
                ReverseAgentConfig::new(ReverseTarget::Unix(reverse_sock.clone()), "waf-reverse");
            cfg.auth_token = Some(token.into());
            let connector = ReverseConnector::new(agent.clone(), cfg, reverse_handle.clone());
            connectors.push(tokio::spawn(async move { connector.run().await }));
        }

        let timeout = Duration::from_secs(5);
        let mut rows: Vec<Summary> = Vec::new();
        let transports: [(&str, Option<Encoding>, bool); 4] = [
            ("uds json", Some(Encoding::Json), false),
            ("uds msgpack", Some(Encoding::MsgPack), false),
            ("grpc", None, true),
            ("reverse uds (json)", None, false),
        ];
        for (name, encoding, grpc) in transports {
            if self.cancel.load(Ordering::Relaxed) {
                break;
            }
            let (pool, agent_id) = match encoding {
                _ if grpc => {
                    let pool = AgentPool::new(pool_config(&[Encoding::Json], 4, timeout));
                    pool.add_agent("waf", &grpc_endpoint).await?;
                    (pool, "waf")
                }
                Some(enc) => {
                    let pool = AgentPool::new(pool_config(&[enc], 4, timeout));
                    let endpoint = format!("unix:{}", agent_sock.display());
                    pool.add_agent("waf", &endpoint).await?;
                    (pool, "waf")
                }
                None => {
                    wait_for_connections(&reverse_pool, "waf-reverse", 4, Duration::from_secs(10))
                        .await?;
                    (reverse_pool.clone(), "waf-reverse")
                }
            };
            rows.push(self.row(&pool, agent_id, name, timeout).await);
            if encoding.is_some() || grpc {
                pool.shutdown(Duration::from_secs(1)).await;
            }
        }

        // The same agent and workload with both ends on the async-std adapter (async-io
        // sockets and timers, async-global-executor tasks): same protocol code, another
        // runtime.
        if !self.cancel.load(Ordering::Relaxed) {
            let as_sock = dir.join("waf-async-std.sock");
            let as_server = Arc::new(
                agent_protocol_async_std::server::AgentServer::with_shared_handler(
                    agent.clone(),
                    ServerConfig::default(),
                ),
            );
            let as_listener = as_server.bind_uds(&as_sock)?;
            let s = as_server.clone();
            let (as_done, as_serving) = tokio::sync::oneshot::channel();
            AsyncStd::spawn(async move {
                let _ = as_done.send(s.serve(as_listener).await);
            });
            let as_pool = agent_protocol_async_std::pool::AgentPool::new(pool_config(
                &[Encoding::MsgPack],
                4,
                timeout,
            ));
            as_pool
                .add_agent("waf", &format!("unix:{}", as_sock.display()))
                .await?;
            let name = "async-std uds msgpack";
            rows.push(self.row(&as_pool, "waf", name, timeout).await);
            as_pool.shutdown(Duration::from_secs(1)).await;
            as_server.handle().shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(5), as_serving).await;
        }
        println!();
        print_table(&mut std::io::stdout(), &rows)?;
        let interrupted = self.cancel.load(Ordering::Relaxed);
        let all_ok = rows.iter().all(|s| self.row_ok(s)) && rows.len() == 5;
        println!(
            "\nagent handled {} events; every request got exactly one decision: {}",
            agent.requests(),
            if interrupted {
                "interrupted"
            } else if all_ok {
                "yes"
            } else {
                "NO"
            }
        );
        reverse_listener.shutdown();
        reverse_pool.shutdown(Duration::from_secs(1)).await;
        server.handle().shutdown();
        for c in connectors {
            c.abort();
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), serving).await;
        let _ = tokio::time::timeout(Duration::from_secs(5), serving_grpc).await;
        Ok(if interrupted {
            ExitCode::from(INTERRUPTED)
        } else if all_ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        })
    }

    /// Runs the demo mix through `pool` (on its own runtime's tasks) and summarises it.
    async fn row<R: Runtime>(
        &self,
        pool: &GenericPool<R>,
        agent_id: &str,
        name: &str,
        timeout: Duration,
    ) -> Summary {
        let spec = LoadSpec {
            agent_id: agent_id.to_owned(),
            extent: Extent::Requests(self.requests),
            warmup: Duration::ZERO,
            rate: None,
            concurrency: self.concurrency,
            workload: Workload::Mix(Mix::default()),
            timeout,
            id_prefix: name.replace(' ', "-"),
        };
        let counters = Arc::new(LiveCounters::default());
        let progress = Progress::start(name, spec.extent, counters.clone());
        let result = load::run(pool, &spec, counters, self.cancel.clone()).await;
        progress.finish();
        result
            .recorder
            .summary(name, result.outcome, result.elapsed, Some(self.requests))
    }

    /// Every request answered, none failed, and the rules blocked some (the mix has attacks).
    fn row_ok(&self, summary: &Summary) -> bool {
        let blocked = summary.decisions.get("block").copied().unwrap_or(0);
        summary.outcome == Outcome::Completed
            && summary.errors == 0
            && summary.requests == self.requests
            && blocked > 0
    }
}

async fn wait_for_connections(
    pool: &AgentPool,
    agent: &str,
    want: usize,
    within: Duration,
) -> Result<()> {
    let deadline = Instant::now() + within;
    loop {
        let connected = pool
            .stats()
            .iter()
            .find(|s| s.agent_id == agent)
            .map_or(0, |s| s.connected);
        if connected >= want {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(
                format!("only {connected} of {want} reverse connections registered").into(),
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
