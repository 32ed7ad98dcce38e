//! Reverse connections over real sockets: the agent dials the proxy and registers.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent_protocol_core::registration::{RegistrationError, RegistrationPolicy};
use agent_protocol_core::*;
use agent_protocol_tokio::client::AgentClient;
use agent_protocol_tokio::reverse::{
    RegisteredAgent, ReverseAgentConfig, ReverseConnector, ReverseListener, ReverseTarget,
};
use agent_protocol_tokio::server::{bind_unix_socket, AgentHandler, Listener, ServerHandle};

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
    tokio::spawn(async move {
        serving
            .serve(listener, move |agent: RegisteredAgent| {
                if refuse {
                    return Err("pool is full".into());
                }
                a.lock().unwrap().push((agent.agent_id, agent.client));
                Ok(())
            })
            .await
    });
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

async fn wait_admitted(admitted: &Admitted) -> AgentClient {
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Some((_, c)) = admitted.lock().unwrap().first() {
                return c.clone();
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("agent admitted")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registered_agent_serves_traffic_over_uds_and_tcp() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("reverse.sock");
    let policy = RegistrationPolicy {
        tokens: vec!["s3cret".into()],
        allowed_agents: ["waf-1".to_string()].into_iter().collect(),
        ..Default::default()
    };
    let uds = bind_unix_socket(&path, 0o660).unwrap();
    let (_rl, admitted) = listener_with(policy.clone(), uds.into(), false);
    let agent = connector(ReverseTarget::Unix(path.clone()), "waf-1", Some("s3cret"));
    let serving = tokio::spawn(async move { agent.connect_once().await });
    let client = wait_admitted(&admitted).await;
    assert_eq!(client.encoding(), Encoding::Json);
    let ok = client.send(headers("r1", "/")).await.unwrap();
    assert_eq!(ok.decision, Decision::Allow);
    let blocked = client.send(headers("r2", "/attack")).await.unwrap();
    assert_eq!(blocked.decision.kind(), "block");
    client.close().await;
    let response = serving.await.unwrap().unwrap();
    assert!(response.success);
    assert!(response.connection_id.starts_with("waf-1-"));

    // TCP works the same way.
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap().to_string();
    let (_rl, admitted) = listener_with(policy, Listener::tcp(tcp), false);
    let agent = connector(ReverseTarget::Tcp(addr), "waf-1", Some("s3cret"));
    tokio::spawn(async move { agent.connect_once().await });
    let client = wait_admitted(&admitted).await;
    let ok = client.send(headers("t1", "/")).await.unwrap();
    assert_eq!(ok.correlation_id(), Some("t1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_token_unknown_agent_and_full_pool_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("reverse.sock");
    let policy = RegistrationPolicy {
        tokens: vec!["s3cret".into()],
        allowed_agents: ["waf-1".to_string()].into_iter().collect(),
        ..Default::default()
    };
    let uds = bind_unix_socket(&path, 0o660).unwrap();
    let (_rl, admitted) = listener_with(policy.clone(), uds.into(), false);
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
    assert!(matches!(missing, Err(RegistrationError::Rejected(_))));
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
    let (_rl, _) = listener_with(policy, uds.into(), true);
    let full = connector(ReverseTarget::Unix(path2), "waf-1", Some("s3cret"))
        .connect_once()
        .await;
    assert!(
        matches!(&full, Err(RegistrationError::Rejected(msg)) if msg.contains("pool is full")),
        "{full:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reverse_agent_joins_the_pool_and_its_metrics_reach_it() {
    use agent_protocol_core::control::{CounterMetric, MetricsReport};
    use agent_protocol_tokio::pool::AgentPool;
    use agent_protocol_tokio::server::Push;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("reverse.sock");
    let pool = AgentPool::new(Default::default());
    let admit_pool = pool.clone();
    let control_pool = pool.clone();
    let rl = ReverseListener::new(RegistrationPolicy::default(), Default::default())
        .with_control(move |id| control_pool.control_sender(id));
    let uds = bind_unix_socket(&path, 0o660).unwrap();
    let serving = rl.clone();
    tokio::spawn(async move {
        serving
            .serve(uds.into(), move |agent: RegisteredAgent| {
                admit_pool
                    .add_reverse_connection(&agent.agent_id, agent.client)
                    .map_err(|e| e.to_string())
            })
            .await
    });
    let handle = ServerHandle::new("rev-1");
    let mut cfg = ReverseAgentConfig::new(ReverseTarget::Unix(path), "rev-1");
    cfg.auth_token = None;
    let connector = ReverseConnector::new(Arc::new(Waf), cfg, handle.clone());
    tokio::spawn(async move { connector.run().await });
    let answer = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match pool
                .send_request_headers(
                    "rev-1",
                    match headers("p1", "/attack") {
                        Event::RequestHeaders(h) => h,
                        _ => unreachable!(),
                    },
                )
                .await
            {
                Ok(r) => return r,
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    })
    .await
    .unwrap();
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
    tokio::time::timeout(Duration::from_secs(5), async {
        while !pool
            .render_prometheus()
            .contains("waf_hits_total{agent_id=\"rev-1\"} 3")
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("metrics not exported:\n{}", pool.render_prometheus()));
}
