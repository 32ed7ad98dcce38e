//! AgentPool basics over real Unix sockets, against the scripted [`FakeAgent`]: round trips of
//! every event kind in both encodings, load balancing (round robin and the other strategies),
//! correlation affinity (body chunks follow their headers, per agent), adding and removing
//! agents at runtime (duplicate ids, draining, endpoint errors, gRPC endpoints), the handshake
//! deadline of `add_agent`, Prometheus output with agent-reported metrics, and config-update
//! requests.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use agent_protocol_core::capabilities::EventKind;
use agent_protocol_core::control::{CounterMetric, GaugeMetric};
use agent_protocol_core::pool::LoadBalanceStrategy;
use agent_protocol_core::{
    ConfigUpdateRequest, ConfigUpdateType, ConfigureEvent, Decision, Encoding, Event,
    GuardrailInspectEvent, MetricsReport, RequestCompleteEvent, ResponseBodyChunkEvent,
    ResponseHeadersEvent, WebSocketFrameEvent,
};
use agent_protocol_driver::pool::{AgentPool, PoolError};

use crate::pool_support::{chunk, fast_config, guardrail, headers, stats, FakeAgent, WAIT};
use crate::support::{eventually, spawn, timeout};
use crate::Harness;

pub async fn round_trip_every_event_kind_json_and_msgpack<R: Harness>() {
    let dir = tempfile::tempdir().unwrap();
    let json_agent = FakeAgent::<R>::start(dir.path(), "json", &[Encoding::Json]).await;
    let mp_agent =
        FakeAgent::<R>::start(dir.path(), "mp", &[Encoding::MsgPack, Encoding::Json]).await;
    let pool = AgentPool::<R>::new(fast_config());
    pool.add_agent("json", &json_agent.endpoint())
        .await
        .unwrap();
    pool.add_agent("mp", &mp_agent.endpoint()).await.unwrap();

    assert_eq!(json_agent.negotiated(), vec![Encoding::Json; 4]);
    // This crate builds the driver with `msgpack`, so the pool offers it first.
    assert_eq!(mp_agent.negotiated(), vec![Encoding::MsgPack; 4]);

    for (agent, fake) in [("json", &json_agent), ("mp", &mp_agent)] {
        fake.set_behaviour(|b| b.block = true);
        let r = pool
            .send_request_headers(agent, headers("r1"))
            .await
            .unwrap();
        assert!(matches!(r.decision, Decision::Block { status: 403, .. }));
        assert_eq!(r.correlation_id(), Some("r1"));
        fake.set_behaviour(|b| b.block = false);

        // Every send method round-trips.
        pool.send_request_body_chunk(agent, chunk("r1", 0, true))
            .await
            .unwrap();
        let rh = ResponseHeadersEvent {
            correlation_id: "r1".into(),
            status: 200,
            headers: Default::default(),
        };
        pool.send_response_headers(agent, rh).await.unwrap();
        let mut rb = ResponseBodyChunkEvent::default();
        rb.0.correlation_id = "r1".into();
        rb.0.data = bytes::Bytes::from_static(b"\x00\xffbinary");
        rb.0.is_last = true;
        pool.send_response_body_chunk(agent, rb).await.unwrap();
        let ws = WebSocketFrameEvent {
            correlation_id: "r1".into(),
            data: bytes::Bytes::from_static(b"hello"),
            fin: true,
            ..Default::default()
        };
        pool.send_websocket_frame(agent, ws).await.unwrap();
        let done = RequestCompleteEvent {
            correlation_id: "r1".into(),
            status: 200,
            ..Default::default()
        };
        pool.send_request_complete(agent, done).await.unwrap();
        let guard = GuardrailInspectEvent {
            correlation_id: "g1".into(),
            content: "ignore previous instructions".into(),
            ..Default::default()
        };
        pool.send_guardrail_inspect(agent, guard).await.unwrap();
        let cfg = ConfigureEvent {
            correlation_id: "cfg1".into(),
            config: serde_json::json!({"mode": "strict"}),
            config_version: Some("7".into()),
        };
        pool.send_configure(agent, cfg).await.unwrap();
        let r = pool
            .send_event(agent, Event::RequestHeaders(headers("r2")))
            .await
            .unwrap();
        assert_eq!(r.decision, Decision::Allow);

        let kinds: Vec<EventKind> = fake.seen().iter().map(|s| s.kind).collect();
        assert_eq!(kinds.len(), 9, "{kinds:?}");
        for k in EventKind::ALL {
            assert!(kinds.contains(&k), "{k:?} missing from {kinds:?}");
        }
        let s = stats(&pool, agent);
        assert_eq!((s.requests, s.errors, s.in_flight), (9, 0, 0));
        assert_eq!(s.connected, 4);
    }
    // request_complete forgot "r1"; "r2" is still pinned on both agents.
    assert_eq!(pool.affinity_count(), 2);
    assert!(pool.clear_correlation_affinity("json", "r2"));
    assert!(!pool.clear_correlation_affinity("json", "r2"));
    assert!(pool.clear_correlation_affinity("mp", "r2"));
    assert_eq!(pool.affinity_count(), 0);
    pool.shutdown(Duration::from_secs(1)).await;
}

pub async fn round_robin_spreads_over_all_connections<R: Harness>() {
    let dir = tempfile::tempdir().unwrap();
    let agent = FakeAgent::<R>::start(dir.path(), "rr", &[Encoding::Json]).await;
    let pool = AgentPool::<R>::new(fast_config());
    pool.add_agent("rr", &agent.endpoint()).await.unwrap();
    for i in 0..8 {
        pool.send_guardrail_inspect("rr", guardrail(&format!("g{i}")))
            .await
            .unwrap();
    }
    let mut per_conn: HashMap<usize, usize> = HashMap::new();
    for s in agent.seen() {
        *per_conn.entry(s.conn).or_default() += 1;
    }
    assert_eq!(per_conn.len(), 4, "{per_conn:?}");
    assert!(per_conn.values().all(|&n| n == 2), "{per_conn:?}");
}

pub async fn other_strategies_use_every_connection<R: Harness>() {
    for strategy in [
        LoadBalanceStrategy::LeastConnections,
        LoadBalanceStrategy::Random,
        LoadBalanceStrategy::HealthBased,
    ] {
        let dir = tempfile::tempdir().unwrap();
        let agent = FakeAgent::<R>::start(dir.path(), "s", &[Encoding::Json]).await;
        // Slow answers so concurrent requests overlap and in-flight counts differ.
        agent.set_behaviour(|b| b.delay = Duration::from_millis(100));
        let pool = AgentPool::<R>::new(fast_config().with_load_balance_strategy(strategy));
        pool.add_agent("s", &agent.endpoint()).await.unwrap();
        let tasks: Vec<_> = (0..40)
            .map(|i| {
                let pool = pool.clone();
                spawn::<R, _>(async move {
                    pool.send_request_headers("s", headers(&format!("c{i}")))
                        .await
                })
            })
            .collect();
        for t in tasks {
            timeout::<R, _>(WAIT, "concurrent request", t)
                .await
                .unwrap()
                .unwrap();
        }
        let conns: HashSet<usize> = agent.seen().iter().map(|s| s.conn).collect();
        assert_eq!(conns.len(), 4, "{strategy:?} used {conns:?}");
        assert_eq!(stats(&pool, "s").in_flight, 0);
    }
}

pub async fn body_chunks_follow_their_headers<R: Harness>() {
    let dir = tempfile::tempdir().unwrap();
    let agent =
        FakeAgent::<R>::start(dir.path(), "aff", &[Encoding::MsgPack, Encoding::Json]).await;
    let pool = AgentPool::<R>::new(fast_config());
    pool.add_agent("aff", &agent.endpoint()).await.unwrap();

    // Interleave eight requests so round robin spreads their headers.
    for i in 0..8 {
        pool.send_request_headers("aff", headers(&format!("req{i}")))
            .await
            .unwrap();
    }
    for index in 0..3 {
        for i in 0..8 {
            pool.send_request_body_chunk("aff", chunk(&format!("req{i}"), index, false))
                .await
                .unwrap();
            // Unrelated traffic moves the round-robin counter in between.
            pool.send_guardrail_inspect("aff", guardrail(&format!("noise{index}-{i}")))
                .await
                .unwrap();
        }
    }
    let seen = agent.seen();
    let header_conn: HashMap<String, usize> = seen
        .iter()
        .filter(|s| s.kind == EventKind::RequestHeaders)
        .map(|s| (s.cid.clone(), s.conn))
        .collect();
    assert_eq!(
        header_conn.values().collect::<HashSet<_>>().len(),
        4,
        "headers were spread"
    );
    for s in seen
        .iter()
        .filter(|s| s.kind == EventKind::RequestBodyChunk)
    {
        assert_eq!(s.conn, header_conn[&s.cid], "chunk of {} strayed", s.cid);
    }

    // The connection of req0 dies: its next chunk fails instead of going elsewhere.
    let victim = header_conn["req0"];
    pool.send_request_headers("aff", headers("late"))
        .await
        .unwrap();
    agent.close_connection(victim);
    // Either the pool still lists it as disconnected, or it already replaced it (the agent then
    // accepted a fifth connection): both mean the pool has seen it die.
    eventually::<R>("pool notices the closed connection", WAIT, || {
        stats(&pool, "aff").connected < 4 || agent.accepted() > 4
    })
    .await;
    let err = pool
        .send_request_body_chunk("aff", chunk("req0", 3, true))
        .await
        .unwrap_err();
    assert!(matches!(err, PoolError::AffinityLost { .. }), "{err}");
    assert!(err.is_unavailable());
    // Requests pinned elsewhere are unaffected.
    let other = (1..8)
        .map(|i| format!("req{i}"))
        .find(|c| header_conn[c] != victim)
        .unwrap();
    pool.send_request_body_chunk("aff", chunk(&other, 3, true))
        .await
        .unwrap();
    // And the slot is refilled.
    eventually::<R>("dead connection replaced", WAIT, || {
        stats(&pool, "aff").connected == 4
    })
    .await;
    assert_eq!(stats(&pool, "aff").connections, 4);
}

pub async fn affinity_is_per_agent<R: Harness>() {
    let dir = tempfile::tempdir().unwrap();
    let a = FakeAgent::<R>::start(dir.path(), "a", &[Encoding::Json]).await;
    let b = FakeAgent::<R>::start(dir.path(), "b", &[Encoding::Json]).await;
    let pool = AgentPool::<R>::new(fast_config());
    pool.add_agent("a", &a.endpoint()).await.unwrap();
    pool.add_agent("b", &b.endpoint()).await.unwrap();
    // The same correlation id on two agents: each keeps its own pin (affinity is keyed by agent
    // and id). The guardrail call moves b's round-robin counter so the two pins land on
    // different connection numbers.
    pool.send_request_headers("a", headers("same"))
        .await
        .unwrap();
    pool.send_guardrail_inspect("b", guardrail("x"))
        .await
        .unwrap();
    pool.send_request_headers("b", headers("same"))
        .await
        .unwrap();
    pool.send_request_body_chunk("a", chunk("same", 0, true))
        .await
        .unwrap();
    pool.send_request_body_chunk("b", chunk("same", 0, true))
        .await
        .unwrap();
    for fake in [&a, &b] {
        let seen = fake.seen();
        let h = seen
            .iter()
            .find(|s| s.kind == EventKind::RequestHeaders)
            .unwrap();
        let c = seen
            .iter()
            .find(|s| s.kind == EventKind::RequestBodyChunk)
            .unwrap();
        assert_eq!(h.conn, c.conn, "{seen:?}");
    }
    assert_eq!(pool.affinity_count(), 2);
}

pub async fn add_and_remove_agents_at_runtime<R: Harness>() {
    let dir = tempfile::tempdir().unwrap();
    let a = FakeAgent::<R>::start(dir.path(), "a", &[Encoding::Json]).await;
    let b = FakeAgent::<R>::start(dir.path(), "b", &[Encoding::Json]).await;
    let pool = AgentPool::<R>::new(fast_config().with_connections_per_agent(2));
    pool.add_agent("a", &a.endpoint()).await.unwrap();
    assert_eq!(a.live_connections(), 2);

    // Same id again: refused, and the live agent is untouched (not replaced and leaked).
    let err = pool.add_agent("a", &b.endpoint()).await.unwrap_err();
    assert!(matches!(err, PoolError::AlreadyExists(_)), "{err}");
    assert_eq!(b.live_connections(), 0);

    pool.add_agent("b", &b.endpoint()).await.unwrap();
    assert_eq!(pool.agent_ids(), vec!["a".to_string(), "b".to_string()]);
    pool.send_request_headers("b", headers("x")).await.unwrap();

    // Removing waits for in-flight requests, then closes the connections.
    b.set_behaviour(|s| s.delay = Duration::from_millis(200));
    let in_flight = {
        let pool = pool.clone();
        spawn::<R, _>(async move { pool.send_request_headers("b", headers("y")).await })
    };
    eventually::<R>("request reached b", WAIT, || b.seen().len() == 2).await;
    pool.remove_agent("b").await.unwrap();
    let drained = timeout::<R, _>(WAIT, "in-flight request", in_flight)
        .await
        .unwrap();
    assert!(drained.is_ok(), "in-flight request drained: {drained:?}");
    eventually::<R>("b's connections closed", WAIT, || b.live_connections() == 0).await;
    let err = pool
        .send_request_headers("b", headers("z"))
        .await
        .unwrap_err();
    assert!(matches!(err, PoolError::AgentNotFound(_)), "{err}");
    assert!(matches!(
        pool.remove_agent("b").await,
        Err(PoolError::AgentNotFound(_))
    ));
    assert_eq!(pool.agent_ids(), vec!["a".to_string()]);
    // The id can be reused.
    pool.add_agent("b", &b.endpoint()).await.unwrap();
    pool.send_request_headers("b", headers("w")).await.unwrap();

    // gRPC endpoints (nothing listens on port 1): tried where the adapter opens gRPC (tokio
    // with its default `grpc` feature), refused up front elsewhere.
    for endpoint in ["127.0.0.1:1", "http://127.0.0.1:1"] {
        let err = pool.add_agent("g", endpoint).await.unwrap_err();
        if R::default_connector().is_some() {
            assert!(matches!(err, PoolError::ConnectFailed { .. }), "{err}");
        } else {
            assert!(matches!(err, PoolError::GrpcUnavailable { .. }), "{err}");
        }
    }
    let err = pool.add_agent("g", "").await.unwrap_err();
    assert!(matches!(err, PoolError::Endpoint { .. }), "{err}");
    let missing = dir.path().join("nobody.sock");
    let err = pool
        .add_agent("g", &missing.display().to_string())
        .await
        .unwrap_err();
    assert!(
        matches!(err, PoolError::ConnectFailed { attempted: 2, .. }),
        "{err}"
    );
    assert!(!pool.has_agent("g"));
}

pub async fn add_agent_fails_on_a_silent_handshake<R: Harness>() {
    let dir = tempfile::tempdir().unwrap();
    let agent = FakeAgent::<R>::start(dir.path(), "mute", &[Encoding::Json]).await;
    agent.set_behaviour(|b| b.hang_handshake = true);
    let handshake_timeout = Duration::from_millis(300);
    // Only the handshake deadline can end the attempt within the guard below.
    let mut config = fast_config()
        .with_connect_timeout(Duration::from_secs(30))
        .with_request_timeout(Duration::from_secs(30));
    config.client.connection.handshake.timeout = handshake_timeout;
    let pool = AgentPool::<R>::new(config);
    let started = Instant::now();
    // A silent agent: bounded by the handshake deadline; the guard only turns a hang into a
    // failure (and sits below the 5 s default handshake timeout).
    let err = timeout::<R, _>(
        Duration::from_secs(3),
        "add_agent on a mute agent",
        pool.add_agent("mute", &agent.endpoint()),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, PoolError::ConnectFailed { attempted: 4, .. }),
        "{err}"
    );
    assert!(started.elapsed() >= handshake_timeout, "gave up early");
    assert!(!pool.has_agent("mute"));
}

pub async fn prometheus_has_pool_and_agent_families<R: Harness>() {
    let dir = tempfile::tempdir().unwrap();
    let agent =
        FakeAgent::<R>::start(dir.path(), "waf", &[Encoding::MsgPack, Encoding::Json]).await;
    let pool = AgentPool::<R>::new(fast_config());
    pool.add_agent("waf", &agent.endpoint()).await.unwrap();
    pool.send_request_headers("waf", headers("a"))
        .await
        .unwrap();
    agent.set_behaviour(|b| b.block = true);
    pool.send_request_headers("waf", headers("b"))
        .await
        .unwrap();

    let mut labels = HashMap::new();
    labels.insert("rule".to_string(), "sqli".to_string());
    agent.metrics(&MetricsReport {
        agent_id: "someone-else".into(),
        counters: vec![CounterMetric {
            name: "agent_requests_blocked_total".into(),
            help: Some("Blocked requests".into()),
            labels,
            value: 42,
        }],
        gauges: vec![GaugeMetric {
            name: "agent_queue_depth".into(),
            help: None,
            labels: HashMap::new(),
            value: 3.0,
        }],
        ..Default::default()
    });
    eventually::<R>("agent metrics ingested", WAIT, || {
        pool.render_prometheus()
            .contains("agent_requests_blocked_total{")
    })
    .await;

    let text = pool.render_prometheus();
    for needle in [
        "# TYPE agent_protocol_requests counter",
        "agent_protocol_requests_total{agent=\"waf\"} 2",
        "agent_protocol_responses_total{agent=\"waf\",decision=\"allow\"} 1",
        "agent_protocol_responses_total{agent=\"waf\",decision=\"block\"} 1",
        "agent_protocol_errors_total{agent=\"waf\",cause=\"connection\"} 0",
        "agent_protocol_timeouts_total{agent=\"waf\"} 0",
        "agent_protocol_in_flight_requests{agent=\"waf\"} 0",
        "# TYPE agent_protocol_request_duration_seconds histogram",
        "agent_protocol_request_duration_seconds_count{agent=\"waf\"} 2",
        "agent_protocol_connections{agent=\"waf\",state=\"healthy\"} 4",
        "agent_protocol_paused_connections{agent=\"waf\"} 0",
        "agent_protocol_circuit_state{agent=\"waf\"} 0",
        "agent_protocol_correlation_affinities 2",
        "# TYPE agent_requests_blocked counter",
        "agent_id=\"waf\"",
        "rule=\"sqli\"",
        "agent_queue_depth{agent_id=\"waf\"} 3",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in\n{text}");
    }
    // The agent cannot speak for another: its series carry the pool's id for it.
    assert!(!text.contains("someone-else"), "{text}");
    // Every family header appears once.
    let types: Vec<&str> = text.lines().filter(|l| l.starts_with("# TYPE")).collect();
    let unique: HashSet<&&str> = types.iter().collect();
    assert_eq!(types.len(), unique.len(), "{text}");

    let s = stats(&pool, "waf");
    assert_eq!((s.requests, s.errors, s.connections), (2, 0, 4));

    // Removing the agent drops its reported series.
    pool.remove_agent("waf").await.unwrap();
    assert!(!pool
        .render_prometheus()
        .contains("agent_requests_blocked_total"));
}

pub async fn config_updates_reach_the_receiver<R: Harness>() {
    let dir = tempfile::tempdir().unwrap();
    let agent = FakeAgent::<R>::start(dir.path(), "cu", &[Encoding::Json]).await;
    let pool = AgentPool::<R>::new(fast_config().with_connections_per_agent(1));
    let mut updates = pool.take_config_updates().unwrap();
    assert!(pool.take_config_updates().is_none());
    pool.add_agent("cu", &agent.endpoint()).await.unwrap();
    let request = ConfigUpdateRequest {
        update_type: ConfigUpdateType::RequestReload,
        request_id: "u1".into(),
        timestamp_ms: 1,
    };
    agent.send_frame(|enc, out| {
        agent_protocol_core::encoding::encode_frame(
            out,
            agent_protocol_core::frame::FrameType::ConfigUpdateRequest,
            enc,
            &request,
        )
        .unwrap();
    });
    let got = timeout::<R, _>(WAIT, "config update", updates.recv())
        .await
        .unwrap();
    assert_eq!(got.agent_id, "cu");
    assert_eq!(got.request, request);
}

crate::on_both_runtimes!(
    round_trip_every_event_kind_json_and_msgpack,
    round_robin_spreads_over_all_connections,
    other_strategies_use_every_connection,
    body_chunks_follow_their_headers,
    affinity_is_per_agent,
    add_and_remove_agents_at_runtime,
    add_agent_fails_on_a_silent_handshake,
    prometheus_has_pool_and_agent_families,
    config_updates_reach_the_receiver,
);
