//! AgentPool flow control, agent-reported health and reverse connections over real Unix
//! sockets, against the scripted [`FakeAgent`]: the three pause policies (fail closed, fail
//! open, wait and retry, and what bounds the wait), partial pauses and pinned requests,
//! selection by reported health, and reverse connections (the per-agent cap, metrics through
//! the control channel, concurrent first registrations, gated connections).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use agent_protocol_core::capabilities::EventKind;
use agent_protocol_core::pool::{CircuitState, FlowControlMode, FlowControlPolicy};
use agent_protocol_core::{Decision, Encoding, Event, FlowAction, HealthState};
use agent_protocol_driver::client::AgentClient;
use agent_protocol_driver::pool::{AgentPool, AgentPoolConfig, PoolError};
use tokio::sync::oneshot::error::TryRecvError;

use crate::pool_support::{
    chunk, fast_config, headers, negotiated, reverse_client, stats, stream_pair, FakeAgent, WAIT,
};
use crate::support::{eventually, sleep, spawn, timeout};
use crate::Harness;

/// A pool on one agent ("fc") whose four connections the agent has all paused.
async fn paused_pool<R: Harness>(
    config: AgentPoolConfig<R>,
) -> (tempfile::TempDir, FakeAgent<R>, AgentPool<R>) {
    let dir = tempfile::tempdir().unwrap();
    let agent = FakeAgent::<R>::start(dir.path(), "fc", &[Encoding::Json]).await;
    let pool = AgentPool::<R>::new(config);
    pool.add_agent("fc", &agent.endpoint()).await.unwrap();
    agent.flow_all(FlowAction::Pause);
    eventually::<R>("all connections paused", WAIT, || {
        stats(&pool, "fc").paused == 4
    })
    .await;
    (dir, agent, pool)
}

fn policy<R: Harness>(mode: FlowControlMode, max_wait: Duration) -> AgentPoolConfig<R> {
    fast_config().with_flow_control(
        FlowControlPolicy::default()
            .with_mode(mode)
            .with_max_wait(max_wait),
    )
}

pub async fn pause_fail_closed<R: Harness>() {
    let (_dir, agent, pool) =
        paused_pool::<R>(policy(FlowControlMode::FailClosed, Duration::ZERO)).await;
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
    assert_eq!(stats(&pool, "fc").circuit, CircuitState::Closed);
    // Maintenance counted the pause transition.
    eventually::<R>("pause counted", WAIT, || m.flow_control_pauses_total() >= 1).await;

    agent.flow_all(FlowAction::Resume);
    eventually::<R>("resumed", WAIT, || stats(&pool, "fc").paused == 0).await;
    pool.send_request_headers("fc", headers("b")).await.unwrap();
    assert_eq!(agent.seen().len(), 1);
    eventually::<R>("resume counted", WAIT, || {
        m.flow_control_resumes_total() >= 1
    })
    .await;
}

pub async fn pause_fail_open_allows_without_the_agent<R: Harness>() {
    let (_dir, agent, pool) =
        paused_pool::<R>(policy(FlowControlMode::FailOpen, Duration::ZERO)).await;
    let r = pool.send_request_headers("fc", headers("a")).await.unwrap();
    assert_eq!(r.decision, Decision::Allow);
    assert!(agent.seen().is_empty());
    let m = pool.metrics("fc").unwrap();
    assert_eq!(m.flow_control_rejections_total(), 1);
    assert_eq!(m.in_flight(), 0);
    assert_eq!(pool.affinity_count(), 0);
}

pub async fn pause_wait_and_retry_succeeds_after_resume<R: Harness>() {
    let (_dir, agent, pool) = paused_pool::<R>(
        policy(FlowControlMode::WaitAndRetry, Duration::from_secs(30))
            .with_request_timeout(Duration::from_secs(30)),
    )
    .await;
    let mut waiting = {
        let pool = pool.clone();
        spawn::<R, _>(async move { pool.send_request_headers("fc", headers("w")).await })
    };
    sleep::<R>(Duration::from_millis(150)).await;
    assert!(agent.seen().is_empty(), "still waiting");
    assert!(
        matches!(waiting.try_recv(), Err(TryRecvError::Empty)),
        "still waiting"
    );
    agent.flow_all(FlowAction::Resume);
    // Released by the resume, long before the 30 s max wait and request deadline.
    timeout::<R, _>(WAIT, "released by the resume", waiting)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(agent.seen().len(), 1);
    assert_eq!(
        pool.metrics("fc").unwrap().flow_control_rejections_total(),
        0
    );
}

pub async fn pause_wait_and_retry_gives_up_after_max_wait<R: Harness>() {
    let max_wait = Duration::from_millis(150);
    let (_dir, agent, pool) = paused_pool::<R>(
        policy(FlowControlMode::WaitAndRetry, max_wait)
            .with_request_timeout(Duration::from_secs(30)),
    )
    .await;
    let started = Instant::now();
    let e = timeout::<R, _>(
        WAIT,
        "wait bounded by max_wait, not the 30 s deadline",
        pool.send_request_headers("fc", headers("w")),
    )
    .await
    .unwrap_err();
    assert!(matches!(e, PoolError::FlowControlPaused { .. }), "{e}");
    assert!(started.elapsed() >= max_wait, "{:?}", started.elapsed());
    assert!(agent.seen().is_empty());
    let m = pool.metrics("fc").unwrap();
    assert_eq!((m.flow_control_rejections_total(), m.in_flight()), (1, 0));
}

pub async fn pause_wait_is_bounded_by_the_request_deadline<R: Harness>() {
    // The max wait (30 s) is out of reach: only a request deadline can end these waits.
    let default_timeout = Duration::from_millis(200);
    let (_dir, agent, pool) = paused_pool::<R>(
        policy(FlowControlMode::WaitAndRetry, Duration::from_secs(30))
            .with_request_timeout(default_timeout),
    )
    .await;
    // The pool's request timeout.
    let started = Instant::now();
    let e = timeout::<R, _>(
        WAIT,
        "default deadline",
        pool.send_request_headers("fc", headers("d")),
    )
    .await
    .unwrap_err();
    assert!(e.is_flow_control(), "{e}");
    assert!(started.elapsed() >= default_timeout);
    // A per-call timeout replaces it: a longer one is waited out in full (a lower bound only
    // the per-call deadline can explain).
    let per_call = Duration::from_millis(500);
    let started = Instant::now();
    let e = timeout::<R, _>(
        WAIT,
        "per-call deadline",
        pool.send_event_with_timeout("fc", Event::RequestHeaders(headers("p")), per_call),
    )
    .await
    .unwrap_err();
    assert!(e.is_flow_control(), "{e}");
    assert!(started.elapsed() >= per_call, "{:?}", started.elapsed());
    assert!(agent.seen().is_empty());
    let m = pool.metrics("fc").unwrap();
    assert_eq!((m.flow_control_rejections_total(), m.in_flight()), (2, 0));
}

pub async fn partial_pause_routes_around_and_pins_respect_it<R: Harness>() {
    let dir = tempfile::tempdir().unwrap();
    let agent = FakeAgent::<R>::start(dir.path(), "pp", &[Encoding::Json]).await;
    let pool = AgentPool::<R>::new(fast_config());
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
    eventually::<R>("two paused", WAIT, || stats(&pool, "pp").paused == 2).await;
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

pub async fn reported_health_steers_selection<R: Harness>() {
    let dir = tempfile::tempdir().unwrap();
    let agent = FakeAgent::<R>::start(dir.path(), "h", &[Encoding::Json]).await;
    let pool = AgentPool::<R>::new(fast_config());
    pool.add_agent("h", &agent.endpoint()).await.unwrap();
    let ids = agent.live_ids();
    assert_eq!(ids.len(), 4);
    let used =
        |agent: &FakeAgent<R>| -> HashSet<usize> { agent.seen().iter().map(|s| s.conn).collect() };

    // Three draining: only the fourth is used.
    agent.health(&ids[..3], HealthState::Draining);
    eventually::<R>("health applied", WAIT, || stats(&pool, "h").healthy == 1).await;
    for i in 0..8 {
        pool.send_request_headers("h", headers(&format!("d{i}")))
            .await
            .unwrap();
    }
    assert_eq!(used(&agent), HashSet::from([ids[3]]));

    // Degraded ones serve only when no healthy one is left.
    agent.health(&ids[..3], HealthState::Degraded);
    eventually::<R>("degraded", WAIT, || stats(&pool, "h").degraded == 3).await;
    agent.clear_seen();
    for i in 0..8 {
        pool.send_request_headers("h", headers(&format!("g{i}")))
            .await
            .unwrap();
    }
    assert_eq!(used(&agent), HashSet::from([ids[3]]));
    agent.health(&ids[3..], HealthState::Unhealthy);
    eventually::<R>("unhealthy", WAIT, || stats(&pool, "h").healthy == 0).await;
    agent.clear_seen();
    for i in 0..9 {
        pool.send_request_headers("h", headers(&format!("u{i}")))
            .await
            .unwrap();
    }
    assert_eq!(used(&agent), ids[..3].iter().copied().collect());

    // Nothing selectable: a clear error.
    agent.health(&ids, HealthState::Unhealthy);
    eventually::<R>("all unhealthy", WAIT, || {
        let s = stats(&pool, "h");
        s.healthy == 0 && s.degraded == 0
    })
    .await;
    let e = pool
        .send_request_headers("h", headers("none"))
        .await
        .unwrap_err();
    assert!(
        matches!(e, PoolError::AllUnavailable { unhealthy: 4, .. }),
        "{e}"
    );
    agent.health(&ids, HealthState::Healthy);
    eventually::<R>("healthy again", WAIT, || stats(&pool, "h").healthy == 4).await;
    pool.send_request_headers("h", headers("ok")).await.unwrap();
}

pub async fn reverse_connections_join_and_respect_the_cap<R: Harness>() {
    let dir = tempfile::tempdir().unwrap();
    let agent = FakeAgent::<R>::start(dir.path(), "unused", &[Encoding::Json]).await;
    let pool = AgentPool::<R>::new(fast_config().with_connections_per_agent(2));
    let d = dir.path();
    pool.add_reverse_connection("rev", reverse_client(d, &pool, &agent, "rev").await)
        .unwrap();
    pool.add_reverse_connection("rev", reverse_client(d, &pool, &agent, "rev").await)
        .unwrap();
    let e = pool
        .add_reverse_connection("rev", reverse_client(d, &pool, &agent, "rev").await)
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
    eventually::<R>("reverse metrics ingested", WAIT, || {
        pool.render_prometheus()
            .contains("agent_requests_total{agent_id=\"rev\"} 4")
    })
    .await;

    // One dies: its slot frees up for the agent's next registration; it is not reopened by
    // the pool itself.
    let first = agent.live_ids()[1];
    agent.close_connection(first);
    eventually::<R>("dead reverse connection dropped", WAIT, || {
        stats(&pool, "rev").connections == 1
    })
    .await;
    pool.add_reverse_connection("rev", reverse_client(d, &pool, &agent, "rev").await)
        .unwrap();
    assert_eq!(stats(&pool, "rev").connected, 2);
}

pub async fn concurrent_first_registrations_create_one_agent<R: Harness>() {
    let dir = tempfile::tempdir().unwrap();
    let agent = FakeAgent::<R>::start(dir.path(), "unused", &[Encoding::Json]).await;
    let pool = AgentPool::<R>::new(fast_config().with_connections_per_agent(3));
    let mut clients: Vec<AgentClient<R>> = Vec::new();
    for _ in 0..12 {
        clients.push(reverse_client(dir.path(), &pool, &agent, "race").await);
    }
    // `add_reverse_connection` is synchronous: race it from plain threads, released together.
    let start = std::sync::Barrier::new(clients.len());
    let results: Vec<Result<(), PoolError>> = std::thread::scope(|scope| {
        let threads: Vec<_> = clients
            .into_iter()
            .map(|client| {
                let (pool, start) = (&pool, &start);
                scope.spawn(move || {
                    start.wait();
                    pool.add_reverse_connection("race", client)
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    });
    let mut ok = 0;
    for r in results {
        match r {
            Ok(()) => ok += 1,
            Err(PoolError::Full { .. }) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(ok, 3);
    assert_eq!(pool.agent_ids(), vec!["race".to_string()]);
    assert_eq!(stats(&pool, "race").connections, 3);
}

pub async fn gated_reverse_connection_is_used_once_opened<R: Harness>() {
    let dir = tempfile::tempdir().unwrap();
    let agent = FakeAgent::<R>::start(dir.path(), "unused", &[Encoding::Json]).await;
    let pool = AgentPool::<R>::new(fast_config().with_connections_per_agent(1));
    let (proxy_end, agent_end) = stream_pair::<R>(dir.path()).await;
    agent.adopt_established(agent_end);
    let (client, gate) = AgentClient::<R>::from_established_gated(
        proxy_end,
        pool.config().client.clone(),
        negotiated("gate"),
        None,
    );
    pool.add_reverse_connection("gate", client).unwrap();
    // Not usable before the gate opens, and not pruned as dead by maintenance meanwhile
    // (several 50 ms maintenance ticks pass during the sleep).
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
    sleep::<R>(Duration::from_millis(200)).await;
    assert_eq!(stats(&pool, "gate").connections, 1);
    assert!(agent.seen().is_empty());
    gate.open(bytes::Bytes::new());
    eventually::<R>("gate opened", WAIT, || stats(&pool, "gate").connected == 1).await;
    pool.send_request_headers("gate", headers("late"))
        .await
        .unwrap();
    assert_eq!(agent.seen().len(), 1);
}

crate::on_both_runtimes!(
    pause_fail_closed,
    pause_fail_open_allows_without_the_agent,
    pause_wait_and_retry_succeeds_after_resume,
    pause_wait_and_retry_gives_up_after_max_wait,
    pause_wait_is_bounded_by_the_request_deadline,
    partial_pause_routes_around_and_pins_respect_it,
    reported_health_steers_selection,
    reverse_connections_join_and_respect_the_cap,
    concurrent_first_registrations_create_one_agent,
    gated_reverse_connection_is_used_once_opened,
);
