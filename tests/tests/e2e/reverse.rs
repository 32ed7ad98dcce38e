//! Reverse connections over real sockets, on both runtime adapters: the agent
//! (`ReverseConnector`) dials the proxy's `ReverseListener` and registers, then serves requests
//! on that connection.
//!
//! Covers: registration with a token over a Unix socket and over TCP, then traffic both ways
//! (allowed and blocked) until the proxy closes; a wrong or missing token and an agent not in
//! the allowed list refused (and the listener still admitting good agents afterwards); the
//! pool's refusal reported to the agent; a reverse agent joining an `AgentPool`, its pushed
//! metrics exported under its registered id, and its run loop ending on shutdown.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent_protocol_core::control::{CounterMetric, MetricsReport};
use agent_protocol_core::registration::{RegistrationError, RegistrationPolicy};
use agent_protocol_core::*;
use agent_protocol_driver::client::AgentClient;
use agent_protocol_driver::pool::AgentPool;
use agent_protocol_driver::reverse::{
    RegisteredAgent, ReverseAgentConfig, ReverseConnector, ReverseListener, ReverseTarget,
};
use agent_protocol_driver::server::{bind_unix_socket, Listener, Push, ServerHandle};

use crate::agents::{headers, request_headers, Waf};
use crate::support::{eventually, sleep, spawn, timeout};
use crate::Harness;

/// Hang guard for anything a scenario waits on (registration times out after 10 s by default).
const WAIT: Duration = Duration::from_secs(5);

/// Agents the listener admitted, with their connections.
type Admitted<R> = Arc<Mutex<Vec<(String, AgentClient<R>)>>>;

/// Tokens `s3cret`, only agent `waf-1` allowed.
fn policy() -> RegistrationPolicy {
    RegistrationPolicy {
        tokens: vec!["s3cret".into()],
        allowed_agents: ["waf-1".to_string()].into_iter().collect(),
        ..Default::default()
    }
}

/// Serves a reverse listener on `listener`; admission records the agent, or refuses every
/// agent with "pool is full" when `refuse`.
fn listener_with<R: Harness>(
    policy: RegistrationPolicy,
    listener: Listener<R>,
    refuse: bool,
) -> (ReverseListener<R>, Admitted<R>) {
    let admitted: Admitted<R> = Arc::default();
    let rl = ReverseListener::<R>::new(policy, Default::default());
    let a = admitted.clone();
    let serving = rl.clone();
    R::spawn(async move {
        let _ = serving
            .serve(listener, move |agent: RegisteredAgent<R>| {
                if refuse {
                    return Err("pool is full".into());
                }
                a.lock().unwrap().push((agent.agent_id, agent.client));
                Ok(())
            })
            .await;
    });
    (rl, admitted)
}

fn connector<R: Harness>(
    target: ReverseTarget,
    id: &str,
    token: Option<&str>,
) -> ReverseConnector<Waf, R> {
    let mut cfg = ReverseAgentConfig::new(target, id);
    cfg.auth_token = token.map(str::to_owned);
    ReverseConnector::new(Arc::new(Waf), cfg, ServerHandle::new(id))
}

/// The first admitted agent's connection.
async fn wait_admitted<R: Harness>(admitted: &Admitted<R>) -> AgentClient<R> {
    eventually::<R>("agent admitted", WAIT, || {
        !admitted.lock().unwrap().is_empty()
    })
    .await;
    admitted.lock().unwrap()[0].1.clone()
}

/// Registers `waf-1` at `target`, checks traffic both ways, closes from the proxy side and
/// checks the connector's registration answer.
async fn serve_traffic<R: Harness>(target: ReverseTarget, admitted: &Admitted<R>) {
    let agent = connector::<R>(target, "waf-1", Some("s3cret"));
    let serving = spawn::<R, _>(async move { agent.connect_once().await });
    let client = wait_admitted(admitted).await;
    assert_eq!(admitted.lock().unwrap()[0].0, "waf-1");
    assert_eq!(client.encoding(), Encoding::Json);
    assert_eq!(client.capabilities().agent_id, "waf-1");
    let ok = client.send(headers("r1", "/")).await.unwrap();
    assert_eq!(ok.correlation_id(), Some("r1"));
    assert_eq!(ok.decision, Decision::Allow);
    let blocked = client.send(headers("r2", "/attack")).await.unwrap();
    assert_eq!(blocked.decision, Decision::block(403, Some("nope".into())));
    // `connect_once` serves until the proxy closes, then returns what registration said.
    client.close().await;
    let response = timeout::<R, _>(WAIT, "connector returns once the proxy closes", serving)
        .await
        .unwrap()
        .unwrap();
    assert!(response.success);
    assert!(
        response.connection_id.starts_with("waf-1-"),
        "{}",
        response.connection_id
    );
}

pub async fn registered_agent_serves_traffic_over_uds<R: Harness>() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("reverse.sock");
    let uds = bind_unix_socket::<R>(&path, 0o660).unwrap();
    let (rl, admitted) = listener_with(policy(), uds.into(), false);
    serve_traffic(ReverseTarget::Unix(path), &admitted).await;
    rl.shutdown();
}

pub async fn registered_agent_serves_traffic_over_tcp<R: Harness>() {
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = tcp.local_addr().unwrap().to_string();
    let tcp = R::tcp_listener(tcp).unwrap();
    let (rl, admitted) = listener_with(policy(), Listener::<R>::tcp(tcp), false);
    serve_traffic(ReverseTarget::Tcp(addr), &admitted).await;
    rl.shutdown();
}

pub async fn wrong_or_missing_token_and_unknown_agent_are_refused<R: Harness>() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("reverse.sock");
    let uds = bind_unix_socket::<R>(&path, 0o660).unwrap();
    let (_rl, admitted) = listener_with(policy(), uds.into(), false);
    let target = ReverseTarget::Unix(path);

    let wrong = connector::<R>(target.clone(), "waf-1", Some("guess"))
        .connect_once()
        .await;
    assert!(
        matches!(&wrong, Err(ConnectionError::Registration(RegistrationError::Rejected(msg))) if msg.contains("authentication failed")),
        "{wrong:?}"
    );
    let missing = connector::<R>(target.clone(), "waf-1", None)
        .connect_once()
        .await;
    assert!(
        matches!(&missing, Err(ConnectionError::Registration(RegistrationError::Rejected(msg))) if msg.contains("authentication failed")),
        "{missing:?}"
    );
    let unknown = connector::<R>(target.clone(), "intruder", Some("s3cret"))
        .connect_once()
        .await;
    assert!(
        matches!(&unknown, Err(ConnectionError::Registration(RegistrationError::Rejected(msg))) if msg.contains("not in the allowed list")),
        "{unknown:?}"
    );
    assert!(admitted.lock().unwrap().is_empty());

    // The listener survived all of that: a good agent still gets in.
    let good = connector::<R>(target, "waf-1", Some("s3cret"));
    R::spawn(async move {
        let _ = good.connect_once().await;
    });
    let client = wait_admitted(&admitted).await;
    let r = client.send(headers("ok", "/")).await.unwrap();
    assert_eq!(r.correlation_id(), Some("ok"));
    assert_eq!(admitted.lock().unwrap().len(), 1);
}

pub async fn full_pool_refusal_is_reported_to_the_agent<R: Harness>() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("full.sock");
    let uds = bind_unix_socket::<R>(&path, 0o660).unwrap();
    let (_rl, admitted) = listener_with(policy(), uds.into(), true);
    // The refusal arrives as the registration answer, before any success is announced.
    let full = connector::<R>(ReverseTarget::Unix(path), "waf-1", Some("s3cret"))
        .connect_once()
        .await;
    assert!(
        matches!(&full, Err(ConnectionError::Registration(RegistrationError::Rejected(msg))) if msg.contains("pool is full")),
        "{full:?}"
    );
    assert!(admitted.lock().unwrap().is_empty());
}

pub async fn reverse_agent_joins_the_pool_and_its_metrics_reach_it<R: Harness>() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("reverse.sock");
    let pool = AgentPool::<R>::new(Default::default());
    let admit_pool = pool.clone();
    let control_pool = pool.clone();
    let rl = ReverseListener::<R>::new(RegistrationPolicy::default(), Default::default())
        .with_control(move |id| control_pool.control_sender(id));
    let uds = bind_unix_socket::<R>(&path, 0o660).unwrap();
    let serving = rl.clone();
    R::spawn(async move {
        let _ = serving
            .serve(uds.into(), move |agent: RegisteredAgent<R>| {
                admit_pool
                    .add_reverse_connection(&agent.agent_id, agent.client)
                    .map_err(|e| e.to_string())
            })
            .await;
    });
    let handle = ServerHandle::new("rev-1");
    let cfg = ReverseAgentConfig::new(ReverseTarget::Unix(path), "rev-1");
    let connector = ReverseConnector::<Waf, R>::new(Arc::new(Waf), cfg, handle.clone());
    let running = spawn::<R, _>(async move { connector.run().await });

    // Until the agent has registered, the pool does not know it: retry.
    let answer = timeout::<R, _>(WAIT, "reverse agent answers through the pool", async {
        loop {
            match pool
                .send_request_headers("rev-1", request_headers("p1", "/attack"))
                .await
            {
                Ok(r) => return r,
                Err(_) => sleep::<R>(Duration::from_millis(10)).await,
            }
        }
    })
    .await;
    assert!(pool.has_agent("rev-1"));
    assert_eq!(answer.decision.kind(), "block");

    // Metrics are exported under the id the agent registered with, whatever the report says.
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
    let mut rendered = String::new();
    timeout::<R, _>(WAIT, "metrics exported", async {
        loop {
            rendered = pool.render_prometheus();
            if rendered.contains("waf_hits_total{agent_id=\"rev-1\"} 3") {
                break;
            }
            sleep::<R>(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(!rendered.contains("someone-else"), "{rendered}");

    // Shutting the connector down ends its run loop.
    handle.shutdown();
    timeout::<R, _>(WAIT, "connector run loop ends", running)
        .await
        .unwrap();
    rl.shutdown();
}

crate::on_both_runtimes!(
    registered_agent_serves_traffic_over_uds,
    registered_agent_serves_traffic_over_tcp,
    wrong_or_missing_token_and_unknown_agent_are_refused,
    full_pool_refusal_is_reported_to_the_agent,
    reverse_agent_joins_the_pool_and_its_metrics_reach_it,
);
