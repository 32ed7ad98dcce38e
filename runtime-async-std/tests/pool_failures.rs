//! AgentPool failure handling over real Unix sockets on async-io: dead agents, reconnection,
//! garbage on the wire, timeouts, cancels, dropped callers, the circuit breaker, idle cleanup
//! and shutdown.

mod pool_support;

use std::time::{Duration, Instant};

use agent_protocol_async_std::client::ClientError;
use agent_protocol_async_std::pool::{AgentPool, AgentPoolConfig, PoolError};
use agent_protocol_core::pool::{CircuitBreakerConfig, CircuitState};
use agent_protocol_core::{CancelReason, Encoding, RequestError};
use pool_support::{eventually, fast_config, headers, sleep, stats, within, FakeAgent};

const WAIT: Duration = Duration::from_secs(5);

fn is_closed(e: &PoolError) -> bool {
    matches!(
        e,
        PoolError::Client(ClientError::Closed(_))
            | PoolError::Client(ClientError::Request(RequestError::ConnectionClosed(_)))
    )
}

/// Sends until the breaker admits the request (after its open timeout); any other error fails.
async fn until_admitted(
    pool: &AgentPool,
    agent: &str,
    cid: &str,
) -> agent_protocol_core::AgentResponse {
    let started = Instant::now();
    loop {
        match pool.send_request_headers(agent, headers(cid)).await {
            Ok(r) => return r,
            Err(PoolError::CircuitOpen { .. }) if started.elapsed() < WAIT => {
                sleep(Duration::from_millis(20)).await
            }
            Err(e) => panic!("{e} after {:?}: {:?}", started.elapsed(), pool.stats()),
        }
    }
}

#[async_std::test]
async fn killed_agent_fails_pending_at_once_and_is_reconnected() {
    let dir = tempfile::tempdir().unwrap();
    let mut agent = FakeAgent::start(dir.path(), "k", &[Encoding::Json]).await;
    agent.set_behaviour(|b| b.silent = true);
    let pool = AgentPool::new(AgentPoolConfig {
        request_timeout: Duration::from_secs(60),
        // Keep the breaker out of the way: this test is about the connections.
        circuit_breaker: CircuitBreakerConfig {
            failure_threshold: 1000,
            ..Default::default()
        },
        ..fast_config()
    });
    pool.add_agent("k", &agent.endpoint()).await.unwrap();

    let pending: Vec<_> = (0..8)
        .map(|i| {
            let pool = pool.clone();
            async_std::task::spawn(async move {
                pool.send_request_headers("k", headers(&format!("p{i}")))
                    .await
            })
        })
        .collect();
    eventually("agent saw every request", WAIT, || agent.seen().len() == 8).await;
    assert_eq!(stats(&pool, "k").in_flight, 8);

    agent.kill().await;
    for p in pending {
        // Long before the 60 s request deadline: the closed connection fails them.
        let e = within("pending request fails on EOF", WAIT, p)
            .await
            .unwrap_err();
        assert!(is_closed(&e), "{e}");
        assert!(e.is_unavailable());
    }
    let s = stats(&pool, "k");
    assert_eq!(s.in_flight, 0);
    assert_eq!(s.errors, 8);
    assert_eq!(pool.affinity_count(), 0, "failed headers leave no affinity");
    eventually("pool drops the dead connections", WAIT, || {
        stats(&pool, "k").connections == 0
    })
    .await;

    // While the agent is down, requests fail with a clear error.
    let e = pool
        .send_request_headers("k", headers("down"))
        .await
        .unwrap_err();
    assert!(matches!(e, PoolError::NoConnections { .. }), "{e}");

    // Reconnection keeps trying (with backoff) and recovers once the agent is back.
    sleep(Duration::from_millis(300)).await;
    agent.set_behaviour(|b| b.silent = false);
    agent.restart().await;
    eventually("pool reconnects", WAIT, || stats(&pool, "k").connected == 4).await;
    // Replaced, not accumulated.
    sleep(Duration::from_millis(200)).await;
    assert_eq!(stats(&pool, "k").connections, 4);
    assert_eq!(agent.live_connections(), 4);
    let r = pool
        .send_request_headers("k", headers("back"))
        .await
        .unwrap();
    assert_eq!(r.correlation_id(), Some("back"));
}

#[async_std::test]
async fn breaker_opens_while_the_agent_is_down_and_requests_succeed_after_recovery() {
    let dir = tempfile::tempdir().unwrap();
    let mut agent = FakeAgent::start(dir.path(), "down", &[Encoding::MsgPack]).await;
    let pool = AgentPool::new(AgentPoolConfig {
        circuit_breaker: CircuitBreakerConfig {
            failure_threshold: 5,
            success_threshold: 1,
            // Long enough that the check right after opening never races it, even on a
            // loaded machine.
            open_timeout: Duration::from_secs(1),
            half_open_max_requests: 1,
        },
        ..fast_config()
    });
    pool.add_agent("down", &agent.endpoint()).await.unwrap();
    pool.send_request_headers("down", headers("a"))
        .await
        .unwrap();
    agent.kill().await;
    eventually("dead connections dropped", WAIT, || {
        stats(&pool, "down").connections == 0
    })
    .await;
    for _ in 0..5 {
        let e = pool
            .send_request_headers("down", headers("x"))
            .await
            .unwrap_err();
        assert!(matches!(e, PoolError::NoConnections { .. }), "{e}");
    }
    let e = pool
        .send_request_headers("down", headers("x"))
        .await
        .unwrap_err();
    assert!(matches!(e, PoolError::CircuitOpen { .. }), "{e}");
    assert_eq!(stats(&pool, "down").circuit, CircuitState::Open);

    // The agent comes back: the pool reconnects, and once the breaker lets a probe through,
    // requests succeed again.
    agent.restart().await;
    eventually("reconnected", WAIT, || stats(&pool, "down").connected == 4).await;
    let r = until_admitted(&pool, "down", "b").await;
    assert_eq!(r.correlation_id(), Some("b"));
    assert_eq!(stats(&pool, "down").circuit, CircuitState::Closed);
}

#[async_std::test]
async fn garbage_from_one_agent_connection_fails_only_that_connection() {
    let dir = tempfile::tempdir().unwrap();
    let agent = FakeAgent::start(dir.path(), "g", &[Encoding::Json]).await;
    agent.set_behaviour(|b| b.delay = Duration::from_millis(300));
    let pool = AgentPool::new(AgentPoolConfig {
        circuit_breaker: CircuitBreakerConfig {
            failure_threshold: 1000,
            ..Default::default()
        },
        ..fast_config()
    });
    pool.add_agent("g", &agent.endpoint()).await.unwrap();
    // One slow request on each connection.
    let pending: Vec<_> = (0..4)
        .map(|i| {
            let pool = pool.clone();
            async_std::task::spawn(async move {
                pool.send_request_headers("g", headers(&format!("q{i}")))
                    .await
            })
        })
        .collect();
    eventually("every request arrived", WAIT, || agent.seen().len() == 4).await;
    let seen = agent.seen();
    let victim = seen[0].conn;
    // A length prefix far beyond any frame limit, then noise.
    agent.garbage(&[victim], &[0xff, 0xff, 0xff, 0xff, 0x10, 1, 2, 3, 4, 5]);
    let mut failed = Vec::new();
    for (i, p) in pending.into_iter().enumerate() {
        match within("request outcome", WAIT, p).await {
            Ok(r) => assert_eq!(r.correlation_id(), Some(format!("q{i}").as_str())),
            Err(e) => {
                assert!(is_closed(&e), "{e}");
                failed.push(format!("q{i}"));
            }
        }
    }
    let mut on_victim: Vec<String> = seen
        .iter()
        .filter(|s| s.conn == victim)
        .map(|s| s.cid.clone())
        .collect();
    assert!(on_victim.len() < 4, "requests were spread: {seen:?}");
    on_victim.sort();
    failed.sort();
    assert_eq!(failed, on_victim, "only the garbage connection failed");
    // The pool replaces it and keeps serving.
    eventually("replaced", WAIT, || {
        stats(&pool, "g").connected == 4 && agent.accepted() == 5
    })
    .await;
    agent.set_behaviour(|b| b.delay = Duration::ZERO);
    pool.send_request_headers("g", headers("after"))
        .await
        .unwrap();
}

#[async_std::test]
async fn timeouts_and_cancels_leave_nothing_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let agent = FakeAgent::start(dir.path(), "t", &[Encoding::Json]).await;
    agent.set_behaviour(|b| b.silent = true);
    let pool = AgentPool::new(AgentPoolConfig {
        request_timeout: Duration::from_millis(150),
        ..fast_config()
    });
    pool.add_agent("t", &agent.endpoint()).await.unwrap();
    let metrics = pool.metrics("t").unwrap();

    // Timeout: not before its deadline, counted, nothing left over.
    let started = Instant::now();
    let e = pool
        .send_request_headers("t", headers("slow"))
        .await
        .unwrap_err();
    assert!(e.is_timeout(), "{e}");
    assert!(started.elapsed() >= Duration::from_millis(140));
    assert_eq!(metrics.timeouts_total(), 1);
    assert_eq!(metrics.in_flight(), 0);
    assert_eq!(stats(&pool, "t").in_flight, 0);
    assert_eq!(pool.affinity_count(), 0);
    eventually("agent told to cancel the timed-out request", WAIT, || {
        agent.cancelled().contains("slow")
    })
    .await;

    // Per-call timeout.
    let e = pool
        .send_event_with_timeout(
            "t",
            agent_protocol_core::Event::RequestHeaders(headers("quick")),
            Duration::from_millis(30),
        )
        .await
        .unwrap_err();
    assert!(e.is_timeout(), "{e}");
    assert_eq!(metrics.timeouts_total(), 2);

    // Cancel: the waiting caller gets Cancelled (long before its 60 s deadline), the agent is
    // told.
    let pool2 = AgentPool::new(AgentPoolConfig {
        request_timeout: Duration::from_secs(60),
        ..fast_config()
    });
    pool2.add_agent("t", &agent.endpoint()).await.unwrap();
    let waiting = {
        let pool2 = pool2.clone();
        async_std::task::spawn(async move { pool2.send_request_headers("t", headers("cx")).await })
    };
    eventually("request reached the agent", WAIT, || {
        agent.seen().iter().any(|s| s.cid == "cx")
    })
    .await;
    pool2
        .cancel_request("t", "cx", CancelReason::ClientDisconnect)
        .await
        .unwrap();
    match within("cancelled request", WAIT, waiting).await {
        Err(PoolError::Client(ClientError::Request(RequestError::Cancelled(
            CancelReason::ClientDisconnect,
        )))) => {}
        other => panic!("expected cancelled, got {other:?}"),
    }
    let m2 = pool2.metrics("t").unwrap();
    assert_eq!((m2.cancels_total(), m2.in_flight()), (1, 0));
    assert_eq!(pool2.affinity_count(), 0);
    eventually("agent got the cancel", WAIT, || {
        agent.cancelled().contains("cx")
    })
    .await;
    pool2
        .cancel_request("t", "nothing", CancelReason::Manual)
        .await
        .unwrap();
    assert!(matches!(
        pool2.cancel_request("zz", "x", CancelReason::Manual).await,
        Err(PoolError::AgentNotFound(_))
    ));

    // A caller that gives up (drops its future) leaks nothing either.
    for i in 0..10 {
        let r = async_std::future::timeout(
            Duration::from_millis(20),
            pool2.send_request_headers("t", headers(&format!("drop{i}"))),
        )
        .await;
        assert!(r.is_err(), "the agent is silent");
    }
    assert_eq!(m2.in_flight(), 0);
    assert_eq!(stats(&pool2, "t").in_flight, 0);
    assert_eq!(
        pool2.affinity_count(),
        0,
        "dropped headers leave no affinity"
    );
    assert_eq!(stats(&pool2, "t").circuit, CircuitState::Closed);
    eventually("agent told about abandoned requests", WAIT, || {
        (0..10).all(|i| agent.cancelled().contains(&format!("drop{i}")))
    })
    .await;
}

#[async_std::test]
async fn circuit_opens_after_repeated_failures_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let agent = FakeAgent::start(dir.path(), "cb", &[Encoding::Json]).await;
    agent.set_behaviour(|b| b.silent = true);
    let pool = AgentPool::new(AgentPoolConfig {
        request_timeout: Duration::from_millis(50),
        circuit_breaker: CircuitBreakerConfig {
            failure_threshold: 3,
            success_threshold: 1,
            // Long enough that the checks right after opening never race it.
            open_timeout: Duration::from_secs(1),
            half_open_max_requests: 1,
        },
        ..fast_config()
    });
    pool.add_agent("cb", &agent.endpoint()).await.unwrap();
    for i in 0..3 {
        let e = pool
            .send_request_headers("cb", headers(&format!("f{i}")))
            .await
            .unwrap_err();
        assert!(e.is_timeout(), "{e}");
    }
    assert_eq!(stats(&pool, "cb").circuit, CircuitState::Open);
    let e = pool
        .send_request_headers("cb", headers("fast"))
        .await
        .unwrap_err();
    assert!(matches!(e, PoolError::CircuitOpen { .. }), "{e}");
    assert!(
        !agent.seen().iter().any(|s| s.cid == "fast"),
        "agent not contacted"
    );
    assert!(pool
        .render_prometheus()
        .contains("agent_protocol_circuit_state{agent=\"cb\"} 2"));

    // After the open timeout a probe goes through; its success closes the circuit.
    agent.set_behaviour(|b| b.silent = false);
    until_admitted(&pool, "cb", "probe").await;
    assert_eq!(stats(&pool, "cb").circuit, CircuitState::Closed);

    // A block decision is a success, not a failure.
    agent.set_behaviour(|b| b.block = true);
    for i in 0..5 {
        pool.send_request_headers("cb", headers(&format!("b{i}")))
            .await
            .unwrap();
    }
    assert_eq!(stats(&pool, "cb").circuit, CircuitState::Closed);
}

#[async_std::test]
async fn shutdown_drains_before_closing() {
    let dir = tempfile::tempdir().unwrap();
    let agent = FakeAgent::start(dir.path(), "sd", &[Encoding::Json]).await;
    agent.set_behaviour(|b| b.delay = Duration::from_millis(200));
    let pool = AgentPool::new(fast_config());
    pool.add_agent("sd", &agent.endpoint()).await.unwrap();
    let in_flight: Vec<_> = (0..4)
        .map(|i| {
            let pool = pool.clone();
            async_std::task::spawn(async move {
                pool.send_request_headers("sd", headers(&format!("s{i}")))
                    .await
            })
        })
        .collect();
    eventually("requests reached the agent", WAIT, || {
        agent.seen().len() == 4
    })
    .await;
    pool.shutdown(Duration::from_secs(30)).await;
    for t in in_flight {
        t.await
            .expect("in-flight requests complete during the drain");
    }
    assert!(agent.cancelled().is_empty(), "nothing cancelled");
    let e = pool
        .send_request_headers("sd", headers("late"))
        .await
        .unwrap_err();
    assert!(matches!(e, PoolError::ShuttingDown), "{e}");
    assert!(matches!(
        pool.add_agent("x", &agent.endpoint()).await,
        Err(PoolError::ShuttingDown)
    ));
    eventually("connections closed", WAIT, || agent.live_connections() == 0).await;
    assert!(pool.stats().is_empty());
    // Twice is harmless.
    pool.shutdown(Duration::from_millis(10)).await;
}

#[async_std::test]
async fn shutdown_closes_after_the_drain_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let agent = FakeAgent::start(dir.path(), "sd2", &[Encoding::Json]).await;
    agent.set_behaviour(|b| b.silent = true);
    let pool = AgentPool::new(AgentPoolConfig {
        request_timeout: Duration::from_secs(60),
        ..fast_config()
    });
    pool.add_agent("sd2", &agent.endpoint()).await.unwrap();
    let stuck = {
        let pool = pool.clone();
        async_std::task::spawn(
            async move { pool.send_request_headers("sd2", headers("stuck")).await },
        )
    };
    eventually("request reached the agent", WAIT, || {
        agent.seen().len() == 1
    })
    .await;
    let started = Instant::now();
    within("shutdown", WAIT, pool.shutdown(Duration::from_millis(100))).await;
    assert!(started.elapsed() >= Duration::from_millis(100));
    let e = within("stuck request", WAIT, stuck).await.unwrap_err();
    assert!(is_closed(&e), "{e}");
}

#[async_std::test]
async fn idle_connections_close_and_reopen_on_demand() {
    let dir = tempfile::tempdir().unwrap();
    let agent = FakeAgent::start(dir.path(), "idle", &[Encoding::Json]).await;
    let pool = AgentPool::new(AgentPoolConfig {
        idle_timeout: Some(Duration::from_millis(150)),
        ..fast_config()
    });
    pool.add_agent("idle", &agent.endpoint()).await.unwrap();
    eventually("idle connections closed down to one", WAIT, || {
        stats(&pool, "idle").connections == 1 && agent.live_connections() == 1
    })
    .await;
    // Stays at one, never zero.
    sleep(Duration::from_millis(300)).await;
    assert_eq!(stats(&pool, "idle").connections, 1);
    pool.send_request_headers("idle", headers("wake"))
        .await
        .unwrap();
    eventually("parked slots reopened", WAIT, || agent.accepted() > 4).await;
}
