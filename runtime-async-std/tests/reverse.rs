//! Reverse connections over real sockets on async-io: the agent dials the proxy and registers.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agent_protocol_async_std::client::AgentClient;
use agent_protocol_async_std::pool::AgentPool;
use agent_protocol_async_std::reverse::{
    RegisteredAgent, ReverseAgentConfig, ReverseConnector, ReverseListener, ReverseTarget,
};
use agent_protocol_async_std::server::{bind_unix_socket, AgentHandler, Listener, ServerHandle};
use agent_protocol_core::registration::{RegistrationError, RegistrationPolicy};
use agent_protocol_core::*;
use async_io::{Async, Timer};

const WAIT: Duration = Duration::from_secs(5);

struct Waf;

impl AgentHandler for Waf {
    async fn on_request_headers(&self, event: RequestHeadersEvent) -> AgentResponse {
        if event.uri.contains("attack") {
            AgentResponse::block(403, "nope")
        } else {
            AgentResponse::allow()
        }
    }
}

type Admitted = Arc<Mutex<Vec<(String, AgentClient)>>>;

fn listener_with(
    policy: RegistrationPolicy,
    listener: Listener,
    refuse: bool,
) -> (ReverseListener, Admitted) {
    let admitted: Admitted = Arc::default();
    let rl = ReverseListener::new(policy, Default::default());
    let a = admitted.clone();
    let serving = rl.clone();
    async_global_executor::spawn(async move {
        serving
            .serve(listener, move |agent: RegisteredAgent| {
                if refuse {
                    return Err("pool is full".into());
                }
                a.lock().unwrap().push((agent.agent_id, agent.client));
                Ok(())
            })
            .await
    })
    .detach();
    (rl, admitted)
}

fn headers(cid: &str, uri: &str) -> Event {
    let meta = RequestMetadata {
        correlation_id: cid.into(),
        ..Default::default()
    };
    Event::RequestHeaders(RequestHeadersEvent::new(meta, "GET", uri, Headers::new()))
}

fn connector(target: ReverseTarget, id: &str, token: Option<&str>) -> ReverseConnector<Waf> {
    let mut cfg = ReverseAgentConfig::new(target, id);
    cfg.auth_token = token.map(str::to_owned);
    ReverseConnector::new(Arc::new(Waf), cfg, ServerHandle::new(id))
}

async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    futures_lite::future::or(async { Some(future.await) }, async {
        Timer::after(WAIT).await;
        None
    })
    .await
    .unwrap_or_else(|| panic!("timed out: {what}"))
}

async fn wait_admitted(admitted: &Admitted) -> AgentClient {
    let start = Instant::now();
    loop {
        if let Some((_, c)) = admitted.lock().unwrap().first() {
            return c.clone();
        }
        assert!(start.elapsed() < WAIT, "agent not admitted");
        Timer::after(Duration::from_millis(5)).await;
    }
}

fn policy() -> RegistrationPolicy {
    RegistrationPolicy {
        tokens: vec!["s3cret".into()],
        allowed_agents: ["waf-1".to_string()].into_iter().collect(),
        ..Default::default()
    }
}

#[async_std::test]
async fn registered_agent_serves_traffic_over_uds() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("reverse.sock");
    let uds = bind_unix_socket(&path, 0o660).unwrap();
    let (_rl, admitted) = listener_with(policy(), uds.into(), false);
    let agent = connector(ReverseTarget::Unix(path.clone()), "waf-1", Some("s3cret"));
    let serving = async_std::task::spawn(async move { agent.connect_once().await });
    let client = wait_admitted(&admitted).await;
    assert_eq!(client.encoding(), Encoding::Json);
    assert_eq!(client.capabilities().agent_id, "waf-1");
    let ok = client.send(headers("r1", "/")).await.unwrap();
    assert_eq!(ok.decision, Decision::Allow);
    let blocked = client.send(headers("r2", "/attack")).await.unwrap();
    assert_eq!(blocked.decision.kind(), "block");
    client.close().await;
    let response = within("connector returns once the proxy closes", serving)
        .await
        .unwrap();
    assert!(response.success);
    assert!(response.connection_id.starts_with("waf-1-"));
}

#[test]
fn registered_agent_serves_traffic_over_tcp_under_smol() {
    smol::block_on(async {
        let tcp = Async::<std::net::TcpListener>::bind(([127, 0, 0, 1], 0)).unwrap();
        let addr = tcp.get_ref().local_addr().unwrap().to_string();
        let (rl, admitted) = listener_with(policy(), Listener::tcp(tcp), false);
        let agent = connector(ReverseTarget::Tcp(addr), "waf-1", Some("s3cret"));
        let serving = smol::spawn(async move { agent.connect_once().await });
        let client = wait_admitted(&admitted).await;
        let ok = client.send(headers("t1", "/")).await.unwrap();
        assert_eq!(ok.correlation_id(), Some("t1"));
        let blocked = client.send(headers("t2", "/attack")).await.unwrap();
        assert_eq!(blocked.decision.kind(), "block");
        client.close().await;
        assert!(within("connector returns", serving).await.unwrap().success);
        rl.shutdown();
    });
}

#[async_std::test]
async fn wrong_token_unknown_agent_and_full_pool_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("reverse.sock");
    let uds = bind_unix_socket(&path, 0o660).unwrap();
    let (_rl, admitted) = listener_with(policy(), uds.into(), false);
    let target = ReverseTarget::Unix(path.clone());

    let wrong = connector(target.clone(), "waf-1", Some("guess"))
        .connect_once()
        .await;
    assert!(
        matches!(&wrong, Err(RegistrationError::Rejected(msg)) if msg.contains("authentication failed")),
        "{wrong:?}"
    );
    let missing = connector(target.clone(), "waf-1", None)
        .connect_once()
        .await;
    assert!(
        matches!(missing, Err(RegistrationError::Rejected(_))),
        "{missing:?}"
    );
    let unknown = connector(target.clone(), "intruder", Some("s3cret"))
        .connect_once()
        .await;
    assert!(
        matches!(&unknown, Err(RegistrationError::Rejected(msg)) if msg.contains("not in the allowed list")),
        "{unknown:?}"
    );
    assert!(admitted.lock().unwrap().is_empty());

    // The pool refusing the connection is reported before any success is announced.
    let path2 = dir.path().join("full.sock");
    let uds = bind_unix_socket(&path2, 0o660).unwrap();
    let (_rl, _) = listener_with(policy(), uds.into(), true);
    let full = connector(ReverseTarget::Unix(path2), "waf-1", Some("s3cret"))
        .connect_once()
        .await;
    assert!(
        matches!(&full, Err(RegistrationError::Rejected(msg)) if msg.contains("pool is full")),
        "{full:?}"
    );

    // The listener survived all of that: a good agent still gets in.
    let good = connector(target, "waf-1", Some("s3cret"));
    async_std::task::spawn(async move { good.connect_once().await });
    let client = wait_admitted(&admitted).await;
    client.send(headers("ok", "/")).await.unwrap();
}

#[async_std::test]
async fn reverse_agent_joins_the_pool_and_its_metrics_reach_it() {
    use agent_protocol_async_std::server::Push;
    use agent_protocol_core::control::{CounterMetric, MetricsReport};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("reverse.sock");
    let pool = AgentPool::new(Default::default());
    let admit_pool = pool.clone();
    let control_pool = pool.clone();
    let rl = ReverseListener::new(RegistrationPolicy::default(), Default::default())
        .with_control(move |id| control_pool.control_sender(id));
    let uds = bind_unix_socket(&path, 0o660).unwrap();
    let serving = rl.clone();
    async_std::task::spawn(async move {
        serving
            .serve(uds.into(), move |agent: RegisteredAgent| {
                admit_pool
                    .add_reverse_connection(&agent.agent_id, agent.client)
                    .map_err(|e| e.to_string())
            })
            .await
    });
    let handle = ServerHandle::new("rev-1");
    let cfg = ReverseAgentConfig::new(ReverseTarget::Unix(path), "rev-1");
    let connector = ReverseConnector::new(Arc::new(Waf), cfg, handle.clone());
    let running = async_std::task::spawn(async move { connector.run().await });
    let started = Instant::now();
    let answer = loop {
        let event = match headers("p1", "/attack") {
            Event::RequestHeaders(h) => h,
            _ => unreachable!(),
        };
        match pool.send_request_headers("rev-1", event).await {
            Ok(r) => break r,
            Err(e) => {
                assert!(started.elapsed() < WAIT, "never admitted: {e}");
                Timer::after(Duration::from_millis(20)).await;
            }
        }
    };
    assert_eq!(answer.decision.kind(), "block");
    handle.push(Push::Metrics(MetricsReport {
        agent_id: "someone-else".into(),
        counters: vec![CounterMetric {
            name: "waf_hits_total".into(),
            help: None,
            labels: Default::default(),
            value: 3,
        }],
        ..Default::default()
    }));
    let started = Instant::now();
    while !pool
        .render_prometheus()
        .contains("waf_hits_total{agent_id=\"rev-1\"} 3")
    {
        assert!(
            started.elapsed() < WAIT,
            "metrics not exported:\n{}",
            pool.render_prometheus()
        );
        Timer::after(Duration::from_millis(20)).await;
    }
    // Shutting the connector down ends its run loop.
    handle.shutdown();
    within("connector run loop ends", running).await;
}
