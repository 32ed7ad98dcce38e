//! AgentPool failure handling over real Unix sockets, against the scripted [`FakeAgent`]:
//! killed agents (pending requests fail at once, reconnection with backoff, no accumulation of
//! connections), the circuit breaker (opening while the agent is down or timing out, probing,
//! recovering), garbage on one connection, timeouts (pool default and per call), cancels,
//! callers that drop their future, idle cleanup, and shutdown (draining, drain timeout).

use std::time::{Duration, Instant};

use agent_protocol_core::pool::{CircuitBreakerConfig, CircuitState};
use agent_protocol_core::{AgentResponse, CancelReason, Encoding, Event, RequestError};
use agent_protocol_driver::client::ClientError;
use agent_protocol_driver::pool::{AgentPool, PoolError};
use agent_protocol_driver::runtime::timeout_at;

use crate::pool_support::{fast_config, headers, stats, FakeAgent, WAIT};
use crate::support::{eventually, sleep, spawn, timeout};
use crate::Harness;

fn is_closed(e: &PoolError) -> bool {
    matches!(
        e,
        PoolError::Client(ClientError::Closed(_))
            | PoolError::Client(ClientError::Request(RequestError::ConnectionClosed(_)))
    )
}

/// A breaker that keeps out of the way: these scenarios are about the connections.
fn no_breaker() -> CircuitBreakerConfig {
    CircuitBreakerConfig::default().with_failure_threshold(1000)
}

/// A breaker that opens after `failures` and stays open for 1 s: long enough that checks right
/// after it opened never race its half-open transition, even on a loaded machine.
fn quick_breaker(failures: u32) -> CircuitBreakerConfig {
    CircuitBreakerConfig::default()
        .with_failure_threshold(failures)
        .with_success_threshold(1)
        .with_open_timeout(Duration::from_secs(1))
        .with_half_open_max_requests(1)
}

/// Sends until the breaker admits the request (after its open timeout); any other error fails.
async fn until_admitted<R: Harness>(pool: &AgentPool<R>, agent: &str, cid: &str) -> AgentResponse {
    let started = Instant::now();
    loop {
        match pool.send_request_headers(agent, headers(cid)).await {
            Ok(r) => return r,
            Err(PoolError::CircuitOpen { .. }) if started.elapsed() < WAIT => {
                sleep::<R>(Duration::from_millis(20)).await
            }
            Err(e) => panic!("{e} after {:?}: {:?}", started.elapsed(), pool.stats()),
        }
    }
}

pub async fn killed_agent_fails_pending_at_once_and_is_reconnected<R: Harness>() {
    let dir = tempfile::tempdir().unwrap();
    let mut agent = FakeAgent::<R>::start(dir.path(), "k", &[Encoding::Json]).await;
    agent.set_behaviour(|b| b.silent = true);
    let pool = AgentPool::<R>::new(
        fast_config()
            .with_request_timeout(Duration::from_secs(60))
            .with_circuit_breaker(no_breaker()),
    );
    pool.add_agent("k", &agent.endpoint()).await.unwrap();

    let pending: Vec<_> = (0..8)
        .map(|i| {
            let pool = pool.clone();
            spawn::<R, _>(async move {
                pool.send_request_headers("k", headers(&format!("p{i}")))
                    .await
            })
        })
        .collect();
    eventually::<R>("agent saw every request", WAIT, || agent.seen().len() == 8).await;
    assert_eq!(stats(&pool, "k").in_flight, 8);

    agent.kill().await;
    for p in pending {
        // Long before the 60 s request deadline: the closed connection fails them at once.
        let e = timeout::<R, _>(WAIT, "pending request fails on EOF", p)
            .await
            .unwrap()
            .unwrap_err();
        assert!(is_closed(&e), "{e}");
        assert!(e.is_unavailable());
    }
    let s = stats(&pool, "k");
    assert_eq!(s.in_flight, 0);
    assert_eq!(s.errors, 8);
    assert_eq!(pool.affinity_count(), 0, "failed headers leave no affinity");
    eventually::<R>("pool drops the dead connections", WAIT, || {
        stats(&pool, "k").connections == 0
    })
    .await;

    // While the agent is down, requests fail at once with a clear error.
    let e = pool
        .send_request_headers("k", headers("down"))
        .await
        .unwrap_err();
    assert!(matches!(e, PoolError::NoConnections { .. }), "{e}");

    // Reconnection keeps trying (with backoff) and recovers once the agent is back.
    sleep::<R>(Duration::from_millis(300)).await;
    agent.set_behaviour(|b| b.silent = false);
    agent.restart().await;
    eventually::<R>("pool reconnects", WAIT, || stats(&pool, "k").connected == 4).await;
    // Replaced, not accumulated.
    sleep::<R>(Duration::from_millis(200)).await;
    assert_eq!(stats(&pool, "k").connections, 4);
    assert_eq!(agent.live_connections(), 4);
    let r = pool
        .send_request_headers("k", headers("back"))
        .await
        .unwrap();
    assert_eq!(r.correlation_id(), Some("back"));
}

pub async fn breaker_opens_while_the_agent_is_down_and_requests_succeed_after_recovery<
    R: Harness,
>() {
    let dir = tempfile::tempdir().unwrap();
    let mut agent = FakeAgent::<R>::start(dir.path(), "down", &[Encoding::MsgPack]).await;
    let pool = AgentPool::<R>::new(
        fast_config()
            .with_connections_per_agent(2)
            .with_circuit_breaker(quick_breaker(5)),
    );
    pool.add_agent("down", &agent.endpoint()).await.unwrap();
    pool.send_request_headers("down", headers("a"))
        .await
        .unwrap();
    agent.kill().await;
    eventually::<R>("dead connections dropped", WAIT, || {
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

    // Let several reconnection attempts fail (backoff from 20 ms), then bring the agent back:
    // the pool reconnects, and once the breaker lets a probe through, requests succeed again.
    sleep::<R>(Duration::from_millis(300)).await;
    agent.restart().await;
    eventually::<R>("reconnected", WAIT, || stats(&pool, "down").connected == 2).await;
    let r = until_admitted(&pool, "down", "b").await;
    assert_eq!(r.correlation_id(), Some("b"));
    assert_eq!(stats(&pool, "down").circuit, CircuitState::Closed);
    // Reconnected in the only encoding the agent speaks.
    let negotiated = agent.negotiated();
    assert!(negotiated.len() >= 4, "{negotiated:?}");
    assert!(negotiated.iter().all(|e| *e == Encoding::MsgPack));
}

pub async fn garbage_from_one_agent_connection_fails_only_that_connection<R: Harness>() {
    let dir = tempfile::tempdir().unwrap();
    let agent = FakeAgent::<R>::start(dir.path(), "g", &[Encoding::Json]).await;
    agent.set_behaviour(|b| b.delay = Duration::from_millis(300));
    let pool = AgentPool::<R>::new(fast_config().with_circuit_breaker(no_breaker()));
    pool.add_agent("g", &agent.endpoint()).await.unwrap();
    // Slow requests spread over the connections.
    let pending: Vec<_> = (0..4)
        .map(|i| {
            let pool = pool.clone();
            spawn::<R, _>(async move {
                pool.send_request_headers("g", headers(&format!("q{i}")))
                    .await
            })
        })
        .collect();
    eventually::<R>("every request arrived", WAIT, || agent.seen().len() == 4).await;
    let seen = agent.seen();
    let victim = seen[0].conn;
    // A length prefix far beyond any frame limit, then noise.
    agent.garbage(&[victim], &[0xff, 0xff, 0xff, 0xff, 0x10, 1, 2, 3, 4, 5]);
    let mut failed = Vec::new();
    for (i, p) in pending.into_iter().enumerate() {
        match timeout::<R, _>(WAIT, "request outcome", p).await.unwrap() {
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
    eventually::<R>("replaced", WAIT, || {
        stats(&pool, "g").connected == 4 && agent.accepted() == 5
    })
    .await;
    agent.set_behaviour(|b| b.delay = Duration::ZERO);
    pool.send_request_headers("g", headers("after"))
        .await
        .unwrap();
}

pub async fn timeouts_and_cancels_leave_nothing_in_flight<R: Harness>() {
    let dir = tempfile::tempdir().unwrap();
    let agent = FakeAgent::<R>::start(dir.path(), "t", &[Encoding::Json]).await;
    agent.set_behaviour(|b| b.silent = true);
    let request_timeout = Duration::from_millis(150);
    let pool = AgentPool::<R>::new(fast_config().with_request_timeout(request_timeout));
    pool.add_agent("t", &agent.endpoint()).await.unwrap();
    let metrics = pool.metrics("t").unwrap();

    // Timeout: not before its deadline, counted, nothing left over.
    let started = Instant::now();
    let e = timeout::<R, _>(
        WAIT,
        "request timeout",
        pool.send_request_headers("t", headers("slow")),
    )
    .await
    .unwrap_err();
    assert!(e.is_timeout(), "{e}");
    assert!(
        started.elapsed() >= request_timeout,
        "{:?}",
        started.elapsed()
    );
    assert_eq!(metrics.timeouts_total(), 1);
    assert_eq!(metrics.in_flight(), 0);
    assert_eq!(stats(&pool, "t").in_flight, 0);
    assert_eq!(pool.affinity_count(), 0);
    eventually::<R>("agent told to cancel the timed-out request", WAIT, || {
        agent.cancelled().contains("slow")
    })
    .await;

    // A per-call timeout replaces the default: a longer one is waited out in full.
    let per_call = Duration::from_millis(400);
    let started = Instant::now();
    let e = timeout::<R, _>(
        WAIT,
        "per-call timeout",
        pool.send_event_with_timeout("t", Event::RequestHeaders(headers("long")), per_call),
    )
    .await
    .unwrap_err();
    assert!(e.is_timeout(), "{e}");
    assert!(started.elapsed() >= per_call, "{:?}", started.elapsed());
    assert_eq!(metrics.timeouts_total(), 2);

    // Cancel: the waiting caller gets Cancelled long before its 60 s deadline, the agent is
    // told.
    let pool2 = AgentPool::<R>::new(fast_config().with_request_timeout(Duration::from_secs(60)));
    pool2.add_agent("t", &agent.endpoint()).await.unwrap();
    let m2 = pool2.metrics("t").unwrap();
    // And a short per-call timeout ends a request long before that default.
    let e = timeout::<R, _>(
        WAIT,
        "short per-call timeout",
        pool2.send_event_with_timeout(
            "t",
            Event::RequestHeaders(headers("quick")),
            Duration::from_millis(30),
        ),
    )
    .await
    .unwrap_err();
    assert!(e.is_timeout(), "{e}");
    assert_eq!(m2.timeouts_total(), 1);

    let waiting = {
        let pool2 = pool2.clone();
        spawn::<R, _>(async move { pool2.send_request_headers("t", headers("cx")).await })
    };
    eventually::<R>("request reached the agent", WAIT, || {
        agent.seen().iter().any(|s| s.cid == "cx")
    })
    .await;
    pool2
        .cancel_request("t", "cx", CancelReason::ClientDisconnect)
        .await
        .unwrap();
    match timeout::<R, _>(WAIT, "cancelled request", waiting)
        .await
        .unwrap()
    {
        Err(PoolError::Client(ClientError::Request(RequestError::Cancelled(
            CancelReason::ClientDisconnect,
        )))) => {}
        other => panic!("expected cancelled, got {other:?}"),
    }
    assert_eq!((m2.cancels_total(), m2.in_flight()), (1, 0));
    assert_eq!(pool2.affinity_count(), 0);
    eventually::<R>("agent got the cancel", WAIT, || {
        agent.cancelled().contains("cx")
    })
    .await;
    // Cancelling an unknown request is harmless; an unknown agent is an error.
    pool2
        .cancel_request("t", "nothing", CancelReason::Manual)
        .await
        .unwrap();
    assert!(matches!(
        pool2.cancel_request("zz", "x", CancelReason::Manual).await,
        Err(PoolError::AgentNotFound(_))
    ));

    // A caller that gives up (drops its future) leaks nothing either (gauges are held by guards).
    for i in 0..10 {
        let r = timeout_at::<R, _>(
            Instant::now() + Duration::from_millis(20),
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
    eventually::<R>("agent told about abandoned requests", WAIT, || {
        (0..10).all(|i| agent.cancelled().contains(&format!("drop{i}")))
    })
    .await;
}

pub async fn circuit_opens_after_repeated_failures_and_recovers<R: Harness>() {
    let dir = tempfile::tempdir().unwrap();
    let agent = FakeAgent::<R>::start(dir.path(), "cb", &[Encoding::Json]).await;
    agent.set_behaviour(|b| b.silent = true);
    let pool = AgentPool::<R>::new(
        fast_config()
            .with_request_timeout(Duration::from_millis(50))
            .with_circuit_breaker(quick_breaker(3)),
    );
    pool.add_agent("cb", &agent.endpoint()).await.unwrap();
    for i in 0..3 {
        let e = pool
            .send_request_headers("cb", headers(&format!("f{i}")))
            .await
            .unwrap_err();
        assert!(e.is_timeout(), "{e}");
    }
    assert_eq!(stats(&pool, "cb").circuit, CircuitState::Open);
    // Refused without contacting the agent (a silent agent would have made it a timeout).
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
    // Only the admitted probe reached the agent, not the refused attempts before it.
    let probes = agent.seen().iter().filter(|s| s.cid == "probe").count();
    assert_eq!(probes, 1);
    pool.send_request_headers("cb", headers("ok"))
        .await
        .unwrap();

    // A block decision is a success, not a failure.
    agent.set_behaviour(|b| b.block = true);
    for i in 0..5 {
        pool.send_request_headers("cb", headers(&format!("b{i}")))
            .await
            .unwrap();
    }
    assert_eq!(stats(&pool, "cb").circuit, CircuitState::Closed);
}

pub async fn shutdown_drains_before_closing<R: Harness>() {
    let dir = tempfile::tempdir().unwrap();
    let agent = FakeAgent::<R>::start(dir.path(), "sd", &[Encoding::Json]).await;
    agent.set_behaviour(|b| b.delay = Duration::from_millis(200));
    let pool = AgentPool::<R>::new(fast_config());
    pool.add_agent("sd", &agent.endpoint()).await.unwrap();
    let in_flight: Vec<_> = (0..4)
        .map(|i| {
            let pool = pool.clone();
            spawn::<R, _>(async move {
                pool.send_request_headers("sd", headers(&format!("s{i}")))
                    .await
            })
        })
        .collect();
    eventually::<R>("requests reached the agent", WAIT, || {
        agent.seen().len() == 4
    })
    .await;
    // Ends when the drain is done, not at its 30 s limit.
    timeout::<R, _>(WAIT, "drain", pool.shutdown(Duration::from_secs(30))).await;
    for t in in_flight {
        timeout::<R, _>(WAIT, "drained request", t)
            .await
            .unwrap()
            .expect("in-flight requests complete during the drain, not cancelled before it");
    }
    assert!(
        agent.cancelled().is_empty(),
        "nothing cancelled before draining"
    );
    let e = pool
        .send_request_headers("sd", headers("late"))
        .await
        .unwrap_err();
    assert!(matches!(e, PoolError::ShuttingDown), "{e}");
    assert!(matches!(
        pool.add_agent("x", &agent.endpoint()).await,
        Err(PoolError::ShuttingDown)
    ));
    eventually::<R>("connections closed", WAIT, || agent.live_connections() == 0).await;
    assert!(pool.stats().is_empty());
    // Twice is harmless.
    pool.shutdown(Duration::from_millis(10)).await;
}

pub async fn shutdown_closes_after_the_drain_timeout<R: Harness>() {
    let dir = tempfile::tempdir().unwrap();
    let agent = FakeAgent::<R>::start(dir.path(), "sd2", &[Encoding::Json]).await;
    agent.set_behaviour(|b| b.silent = true);
    let pool = AgentPool::<R>::new(fast_config().with_request_timeout(Duration::from_secs(60)));
    pool.add_agent("sd2", &agent.endpoint()).await.unwrap();
    let stuck = {
        let pool = pool.clone();
        spawn::<R, _>(async move { pool.send_request_headers("sd2", headers("stuck")).await })
    };
    eventually::<R>("request reached the agent", WAIT, || {
        agent.seen().len() == 1
    })
    .await;
    let drain = Duration::from_millis(100);
    let started = Instant::now();
    timeout::<R, _>(WAIT, "shutdown", pool.shutdown(drain)).await;
    assert!(started.elapsed() >= drain, "{:?}", started.elapsed());
    // Closed, long before its 60 s deadline.
    let e = timeout::<R, _>(WAIT, "stuck request", stuck)
        .await
        .unwrap()
        .unwrap_err();
    assert!(is_closed(&e), "{e}");
    eventually::<R>("connections closed", WAIT, || agent.live_connections() == 0).await;
}

pub async fn idle_connections_close_and_reopen_on_demand<R: Harness>() {
    let dir = tempfile::tempdir().unwrap();
    let agent = FakeAgent::<R>::start(dir.path(), "idle", &[Encoding::Json]).await;
    let pool =
        AgentPool::<R>::new(fast_config().with_idle_timeout(Some(Duration::from_millis(150))));
    pool.add_agent("idle", &agent.endpoint()).await.unwrap();
    eventually::<R>("idle connections closed down to one", WAIT, || {
        stats(&pool, "idle").connections == 1 && agent.live_connections() == 1
    })
    .await;
    // Stays at one, never zero (several idle periods pass).
    sleep::<R>(Duration::from_millis(300)).await;
    assert_eq!(stats(&pool, "idle").connections, 1);
    assert_eq!(agent.accepted(), 4, "nothing reopened without demand");
    // Demand reopens the parked slots. (Reopened connections may be closed again for
    // idleness later, hence "accepted".)
    pool.send_request_headers("idle", headers("wake"))
        .await
        .unwrap();
    eventually::<R>("parked slots reopened", WAIT, || agent.accepted() > 4).await;
}

pub async fn dead_agent_does_not_accumulate_connections<R: Harness>() {
    let dir = tempfile::tempdir().unwrap();
    let mut agent = FakeAgent::<R>::start(dir.path(), "acc", &[Encoding::Json]).await;
    let pool = AgentPool::<R>::new(fast_config());
    pool.add_agent("acc", &agent.endpoint()).await.unwrap();
    for _ in 0..3 {
        agent.kill().await;
        // Several reconnection attempts fail meanwhile.
        sleep::<R>(Duration::from_millis(150)).await;
        assert!(stats(&pool, "acc").connections <= 4);
        agent.restart().await;
        eventually::<R>("reconnected", WAIT, || stats(&pool, "acc").connected == 4).await;
        sleep::<R>(Duration::from_millis(100)).await;
        assert_eq!(stats(&pool, "acc").connections, 4);
        assert_eq!(agent.live_connections(), 4);
    }
}

crate::on_both_runtimes!(
    killed_agent_fails_pending_at_once_and_is_reconnected,
    breaker_opens_while_the_agent_is_down_and_requests_succeed_after_recovery,
    garbage_from_one_agent_connection_fails_only_that_connection,
    timeouts_and_cancels_leave_nothing_in_flight,
    circuit_opens_after_repeated_failures_and_recovers,
    shutdown_drains_before_closing,
    shutdown_closes_after_the_drain_timeout,
    idle_connections_close_and_reopen_on_demand,
    dead_agent_does_not_accumulate_connections,
);
