//! AgentPool flow control, agent health and reverse connections over real Unix sockets.

mod pool_support;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use agent_protocol_core::capabilities::EventKind;
use agent_protocol_core::handshake::{Negotiated, PROTOCOL_VERSION};
use agent_protocol_core::pool::{FlowControlMode, FlowControlPolicy};
use agent_protocol_core::{Capabilities, Decision, Encoding, FlowAction, HealthState};
use agent_protocol_tokio::client::AgentClient;
use agent_protocol_tokio::pool::{AgentPool, AgentPoolConfig, PoolError};
use agent_protocol_tokio::transport::Stream;
use pool_support::{chunk, eventually, fast_config, headers, stats, FakeAgent};

const WAIT: Duration = Duration::from_secs(5);

async fn paused_pool(
    mode: FlowControlMode,
    max_wait: Duration,
) -> (tempfile::TempDir, FakeAgent, AgentPool) {
    let dir = tempfile::tempdir().unwrap();
    let agent = FakeAgent::start(dir.path(), "fc", &[Encoding::Json]).await;
    let pool = AgentPool::new(AgentPoolConfig {
        flow_control: FlowControlPolicy { mode, max_wait },
        ..fast_config()
    });
    pool.add_agent("fc", &agent.endpoint()).await.unwrap();
    agent.flow_all(FlowAction::Pause);
    eventually("all connections paused", WAIT, || {
        stats(&pool, "fc").paused == 4
    })
    .await;
    (dir, agent, pool)
}

#[tokio::test]
async fn pause_fail_closed() {
    let (_dir, agent, pool) = paused_pool(FlowControlMode::FailClosed, Duration::ZERO).await;
    let e = pool
        .send_request_headers("fc", headers("a"))
        .await
        .unwrap_err();
    assert!(matches!(e, PoolError::FlowControlPaused { .. }), "{e}");
    assert!(e.is_flow_control());
    let m = pool.metrics("fc").unwrap();
    assert_eq!(m.flow_control_rejections_total(), 1);
    assert_eq!(m.in_flight(), 0);
    assert!(agent.seen().is_empty(), "nothing reached the paused agent");
    // A rejection is not an agent failure.
    for _ in 0..10 {
        let _ = pool.send_request_headers("fc", headers("a")).await;
    }
    assert_eq!(
        stats(&pool, "fc").circuit,
        agent_protocol_core::pool::CircuitState::Closed
    );
    // Maintenance counted the pause transition.
    eventually("pause counted", WAIT, || m.flow_control_pauses_total() >= 1).await;

    agent.flow_all(FlowAction::Resume);
    eventually("resumed", WAIT, || stats(&pool, "fc").paused == 0).await;
    pool.send_request_headers("fc", headers("b")).await.unwrap();
    eventually("resume counted", WAIT, || {
        m.flow_control_resumes_total() >= 1
    })
    .await;
}

#[tokio::test]
async fn pause_fail_open_allows_without_the_agent() {
    let (_dir, agent, pool) = paused_pool(FlowControlMode::FailOpen, Duration::ZERO).await;
    let r = pool.send_request_headers("fc", headers("a")).await.unwrap();
    assert_eq!(r.decision, Decision::Allow);
    assert!(agent.seen().is_empty());
    let m = pool.metrics("fc").unwrap();
    assert_eq!(m.flow_control_rejections_total(), 1);
    assert_eq!(m.in_flight(), 0);
    assert_eq!(pool.affinity_count(), 0);
}

#[tokio::test]
async fn pause_wait_and_retry_succeeds_after_resume() {
    let (_dir, agent, pool) =
        paused_pool(FlowControlMode::WaitAndRetry, Duration::from_secs(3)).await;
    let waiting = {
        let pool = pool.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let r = pool.send_request_headers("fc", headers("w")).await;
            (r, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(agent.seen().is_empty(), "still waiting");
    agent.flow_all(FlowAction::Resume);
    let (r, took) = waiting.await.unwrap();
    r.unwrap();
    assert!(took >= Duration::from_millis(140), "{took:?}");
    assert!(
        took < Duration::from_secs(2),
        "released by the resume, not the 3 s limit: {took:?}"
    );
    assert_eq!(agent.seen().len(), 1);
    assert_eq!(
        pool.metrics("fc").unwrap().flow_control_rejections_total(),
        0
    );
}

#[tokio::test]
async fn pause_wait_and_retry_gives_up_after_max_wait() {
    let (_dir, agent, pool) =
        paused_pool(FlowControlMode::WaitAndRetry, Duration::from_millis(150)).await;
    let started = Instant::now();
    let e = pool
        .send_request_headers("fc", headers("w"))
        .await
        .unwrap_err();
    let took = started.elapsed();
    assert!(matches!(e, PoolError::FlowControlPaused { .. }), "{e}");
    assert!(
        took >= Duration::from_millis(140) && took < Duration::from_secs(2),
        "{took:?}"
    );
    assert!(agent.seen().is_empty());
    let m = pool.metrics("fc").unwrap();
    assert_eq!((m.flow_control_rejections_total(), m.in_flight()), (1, 0));

    // The request deadline bounds the wait too.
    let started = Instant::now();
    let e = pool
        .send_event_with_timeout(
            "fc",
            agent_protocol_core::Event::RequestHeaders(headers("short")),
            Duration::from_millis(40),
        )
        .await
        .unwrap_err();
    assert!(e.is_flow_control(), "{e}");
    // Well under the 3 s default: the shorter deadline bounded the wait (generous for slow CI).
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn partial_pause_routes_around_and_pins_respect_it() {
    let dir = tempfile::tempdir().unwrap();
    let agent = FakeAgent::start(dir.path(), "pp", &[Encoding::Json]).await;
    let pool = AgentPool::new(fast_config());
    pool.add_agent("pp", &agent.endpoint()).await.unwrap();
    // Pin one request to every connection first.
    for i in 0..4 {
        pool.send_request_headers("pp", headers(&format!("pin{i}")))
            .await
            .unwrap();
    }
    let pins: Vec<(String, usize)> = agent
        .seen()
        .iter()
        .map(|s| (s.cid.clone(), s.conn))
        .collect();
    let ids = agent.live_ids();
    let paused: Vec<usize> = ids[..2].to_vec();
    agent.flow(&paused, FlowAction::Pause);
    eventually("two paused", WAIT, || stats(&pool, "pp").paused == 2).await;
    agent.clear_seen();
    for i in 0..20 {
        pool.send_request_headers("pp", headers(&format!("n{i}")))
            .await
            .unwrap();
    }
    let used: HashSet<usize> = agent.seen().iter().map(|s| s.conn).collect();
    assert_eq!(used.len(), 2);
    assert!(used.iter().all(|c| !paused.contains(c)), "{used:?}");

    // A body chunk pinned to a paused connection is not diverted: the policy applies.
    let (pinned_cid, _) = pins.iter().find(|(_, c)| paused.contains(c)).unwrap();
    let e = pool
        .send_request_body_chunk("pp", chunk(pinned_cid, 0, true))
        .await
        .unwrap_err();
    assert!(matches!(e, PoolError::FlowControlPaused { .. }), "{e}");
    let (free_cid, free_conn) = pins.iter().find(|(_, c)| !paused.contains(c)).unwrap();
    pool.send_request_body_chunk("pp", chunk(free_cid, 0, true))
        .await
        .unwrap();
    let last = agent.seen().into_iter().last().unwrap();
    assert_eq!(
        (last.kind, last.conn),
        (EventKind::RequestBodyChunk, *free_conn)
    );
}

#[tokio::test]
async fn reported_health_steers_selection() {
    let dir = tempfile::tempdir().unwrap();
    let agent = FakeAgent::start(dir.path(), "h", &[Encoding::Json]).await;
    let pool = AgentPool::new(fast_config());
    pool.add_agent("h", &agent.endpoint()).await.unwrap();
    let ids = agent.live_ids();

    // Three draining: only the fourth is used.
    agent.health(&ids[..3], HealthState::Draining);
    eventually("health applied", WAIT, || stats(&pool, "h").healthy == 1).await;
    for i in 0..8 {
        pool.send_request_headers("h", headers(&format!("d{i}")))
            .await
            .unwrap();
    }
    let used: HashSet<usize> = agent.seen().iter().map(|s| s.conn).collect();
    assert_eq!(used, HashSet::from([ids[3]]));

    // Degraded ones serve only when no healthy one is left.
    agent.health(&ids[..3], HealthState::Degraded);
    eventually("degraded", WAIT, || stats(&pool, "h").degraded == 3).await;
    agent.clear_seen();
    for i in 0..8 {
        pool.send_request_headers("h", headers(&format!("g{i}")))
            .await
            .unwrap();
    }
    let used: HashSet<usize> = agent.seen().iter().map(|s| s.conn).collect();
    assert_eq!(used, HashSet::from([ids[3]]));
    agent.health(&ids[3..], HealthState::Unhealthy);
    eventually("unhealthy", WAIT, || stats(&pool, "h").healthy == 0).await;
    agent.clear_seen();
    for i in 0..9 {
        pool.send_request_headers("h", headers(&format!("u{i}")))
            .await
            .unwrap();
    }
    let used: HashSet<usize> = agent.seen().iter().map(|s| s.conn).collect();
    assert_eq!(used, ids[..3].iter().copied().collect());

    // Nothing selectable: a clear error.
    agent.health(&ids, HealthState::Unhealthy);
    eventually("all unhealthy", WAIT, || stats(&pool, "h").degraded == 0).await;
    let e = pool
        .send_request_headers("h", headers("none"))
        .await
        .unwrap_err();
    assert!(
        matches!(e, PoolError::AllUnavailable { unhealthy: 4, .. }),
        "{e}"
    );
    agent.health(&ids, HealthState::Healthy);
    eventually("healthy again", WAIT, || stats(&pool, "h").healthy == 4).await;
    pool.send_request_headers("h", headers("ok")).await.unwrap();
}

fn reverse_pair(pool: &AgentPool, agent: &FakeAgent, id: &str) -> AgentClient {
    let (proxy_end, agent_end) = tokio::net::UnixStream::pair().unwrap();
    agent.adopt_established(agent_end);
    let negotiated = Negotiated {
        encoding: Encoding::Json,
        capabilities: Capabilities::new(id, id, "1").with_all_events(),
        protocol_version: PROTOCOL_VERSION,
    };
    AgentClient::from_established(
        Stream::Unix(proxy_end),
        pool.config().client.clone(),
        negotiated,
        Some(pool.control_sender(id)),
    )
}

#[tokio::test]
async fn reverse_connections_join_and_respect_the_cap() {
    let dir = tempfile::tempdir().unwrap();
    let agent = FakeAgent::start(dir.path(), "unused", &[Encoding::Json]).await;
    let pool = AgentPool::new(AgentPoolConfig {
        connections_per_agent: 2,
        ..fast_config()
    });
    pool.add_reverse_connection("rev", reverse_pair(&pool, &agent, "rev"))
        .unwrap();
    pool.add_reverse_connection("rev", reverse_pair(&pool, &agent, "rev"))
        .unwrap();
    let e = pool
        .add_reverse_connection("rev", reverse_pair(&pool, &agent, "rev"))
        .unwrap_err();
    assert!(matches!(e, PoolError::Full { limit: 2, .. }), "{e}");
    let s = stats(&pool, "rev");
    assert_eq!((s.connections, s.endpoint.clone()), (2, None));

    for i in 0..4 {
        pool.send_request_headers("rev", headers(&format!("r{i}")))
            .await
            .unwrap();
    }
    let used: HashSet<usize> = agent.seen().iter().map(|s| s.conn).collect();
    assert_eq!(used.len(), 2);

    // Metrics reported over a reverse connection are attributed through control_sender.
    agent.metrics(&agent_protocol_core::MetricsReport {
        counters: vec![agent_protocol_core::control::CounterMetric {
            name: "agent_requests_total".into(),
            help: None,
            labels: Default::default(),
            value: 4,
        }],
        ..Default::default()
    });
    eventually("reverse metrics ingested", WAIT, || {
        pool.render_prometheus()
            .contains("agent_requests_total{agent_id=\"rev\"} 4")
    })
    .await;

    // One dies: its slot frees up for the agent's next registration; it is not reopened by
    // the pool itself.
    let first = agent.live_ids()[1];
    agent.close_connection(first);
    eventually("dead reverse connection dropped", WAIT, || {
        stats(&pool, "rev").connections == 1
    })
    .await;
    pool.add_reverse_connection("rev", reverse_pair(&pool, &agent, "rev"))
        .unwrap();
    assert_eq!(stats(&pool, "rev").connected, 2);
}

#[tokio::test]
async fn concurrent_first_registrations_create_one_agent() {
    let dir = tempfile::tempdir().unwrap();
    let agent = FakeAgent::start(dir.path(), "unused", &[Encoding::Json]).await;
    let pool = AgentPool::new(AgentPoolConfig {
        connections_per_agent: 3,
        ..fast_config()
    });
    let clients: Vec<AgentClient> = (0..12)
        .map(|_| reverse_pair(&pool, &agent, "race"))
        .collect();
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|c| {
            let pool = pool.clone();
            tokio::task::spawn_blocking(move || pool.add_reverse_connection("race", c))
        })
        .collect();
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(()) => ok += 1,
            Err(PoolError::Full { .. }) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(ok, 3);
    assert_eq!(pool.agent_ids(), vec!["race".to_string()]);
    assert_eq!(stats(&pool, "race").connections, 3);
}

#[tokio::test]
async fn gated_reverse_connection_is_used_once_opened() {
    let dir = tempfile::tempdir().unwrap();
    let agent = FakeAgent::start(dir.path(), "unused", &[Encoding::Json]).await;
    let pool = AgentPool::new(AgentPoolConfig {
        connections_per_agent: 1,
        ..fast_config()
    });
    let (proxy_end, agent_end) = tokio::net::UnixStream::pair().unwrap();
    agent.adopt_established(agent_end);
    let negotiated = Negotiated {
        encoding: Encoding::Json,
        capabilities: Capabilities::new("gate", "gate", "1").with_all_events(),
        protocol_version: PROTOCOL_VERSION,
    };
    let (client, gate) = AgentClient::from_established_gated(
        Stream::Unix(proxy_end),
        pool.config().client.clone(),
        negotiated,
        None,
    );
    pool.add_reverse_connection("gate", client).unwrap();
    // Not usable before the gate opens, and not pruned as dead by maintenance meanwhile.
    let e = pool
        .send_request_headers("gate", headers("early"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            PoolError::AllUnavailable {
                disconnected: 1,
                ..
            }
        ),
        "{e}"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(stats(&pool, "gate").connections, 1);
    gate.open(bytes::Bytes::new());
    eventually("gate opened", WAIT, || stats(&pool, "gate").connected == 1).await;
    pool.send_request_headers("gate", headers("late"))
        .await
        .unwrap();
}
