//! Proxy-side connection state machine, driven against hand-written agent frames.

use std::time::{Duration, Instant};

use agent_protocol_core::encoding::{self, encode_frame};
use agent_protocol_core::frame::{Decoded, Frame, FrameDecoder, FrameType};
use agent_protocol_core::proxy::{ConnectionState, ProxyConfig, ProxyConnection, ProxyEvent};
use agent_protocol_core::testing::FramedProxy;
use agent_protocol_core::*;
use bytes::{Bytes, BytesMut};
use serde_json::json;

fn open(encoding: Encoding, caps: Capabilities) -> (FramedProxy, Instant) {
    let now = Instant::now();
    let mut conn = FramedProxy::new(ProxyConfig::default(), now);
    let hello = frames(conn.poll_transmit().unwrap());
    assert_eq!(hello[0].frame_type, FrameType::HandshakeRequest);
    let answer = json!({"protocol_version": 2, "capabilities": caps, "success": true, "encoding": encoding.as_str()});
    let mut wire = BytesMut::new();
    encode_frame(
        &mut wire,
        FrameType::HandshakeResponse,
        Encoding::Json,
        &answer,
    )
    .unwrap();
    conn.handle_input(now, &wire);
    match conn.poll_event() {
        Some(ProxyEvent::Connected(n)) => assert_eq!(n.encoding, encoding),
        other => panic!("{other:?}"),
    }
    (conn, now)
}

fn frames(bytes: Bytes) -> Vec<Frame> {
    let mut buf = BytesMut::from(&bytes[..]);
    let mut dec = FrameDecoder::new();
    let mut out = Vec::new();
    while let Some(d) = dec.decode(&mut buf).unwrap() {
        if let Decoded::Frame(f) = d {
            out.push(f);
        }
    }
    assert!(buf.is_empty());
    out
}

fn headers(cid: &str) -> Event {
    let meta = RequestMetadata {
        correlation_id: cid.into(),
        request_id: format!("req-{cid}").into(),
        client_ip: "127.0.0.1".into(),
        client_port: 1234,
        protocol: "HTTP/1.1".into(),
        timestamp: "2026-01-01T00:00:00Z".into(),
        ..Default::default()
    };
    Event::RequestHeaders(RequestHeadersEvent::new(
        meta,
        "GET",
        "/",
        Headers::from_iter([("host", "example.com")]),
    ))
}

fn chunk(cid: &str, index: u32, data: &'static [u8], is_last: bool) -> Event {
    Event::RequestBodyChunk(RequestBodyChunkEvent(BodyChunk {
        correlation_id: cid.into(),
        data: Bytes::from_static(data),
        is_last,
        total_size: None,
        chunk_index: index,
        bytes_transferred: 0,
    }))
}

fn answer(conn: &mut FramedProxy, now: Instant, encoding: Encoding, response: &AgentResponse) {
    let mut wire = BytesMut::new();
    encode_frame(&mut wire, FrameType::AgentResponse, encoding, response).unwrap();
    conn.handle_input(now, &wire);
}

fn drain(conn: &mut FramedProxy) -> Vec<ProxyEvent> {
    std::iter::from_fn(|| conn.poll_event()).collect()
}

#[test]
fn pipelined_requests_answered_out_of_order_reach_their_callers() {
    for encoding in [Encoding::Json, Encoding::MsgPack] {
        let (mut conn, now) = open(encoding, Capabilities::default());
        let ids: Vec<_> = ["a", "b", "c"]
            .iter()
            .map(|c| conn.send_event(now, headers(c), None).unwrap())
            .collect();
        let sent = frames(conn.poll_transmit().unwrap());
        assert_eq!(sent.len(), 3, "three frames coalesced in one transmit");
        for f in &sent {
            let e = encoding::decode_event(f.frame_type, encoding, &f.payload)
                .unwrap()
                .unwrap();
            assert_eq!(e.kind(), EventKind::RequestHeaders);
        }
        for (cid, status) in [("c", 403), ("a", 401), ("b", 402)] {
            answer(
                &mut conn,
                now,
                encoding,
                &AgentResponse::block(status, "x").with_correlation_id(cid),
            );
        }
        let got: Vec<_> = drain(&mut conn)
            .into_iter()
            .map(|e| match e {
                ProxyEvent::Response { id, response, .. } => match response.decision {
                    Decision::Block { status, .. } => (id, status),
                    d => panic!("{d:?}"),
                },
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(got, vec![(ids[2], 403), (ids[0], 401), (ids[1], 402)]);
        assert_eq!(conn.in_flight(), 0);
    }
}

#[test]
fn reference_msgpack_array_response_is_routed() {
    let (mut conn, now) = open(Encoding::MsgPack, Capabilities::default());
    let id = conn.send_event(now, headers("rh-block"), None).unwrap();
    // The reference agent writes the compact positional form (rmp_serde::to_vec).
    let response =
        rmp_serde::to_vec(&AgentResponse::block(403, "Forbidden").with_correlation_id("rh-block"))
            .unwrap();
    let mut wire = BytesMut::new();
    agent_protocol_core::frame::encode_frame(&mut wire, FrameType::AgentResponse, &response)
        .unwrap();
    conn.handle_input(now, &wire);
    match conn.poll_event() {
        Some(ProxyEvent::Response {
            id: got, response, ..
        }) => {
            assert_eq!(got, id);
            assert_eq!(response.decision.kind(), "block");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn timeout_fails_once_tells_the_agent_and_late_answer_is_unroutable() {
    let (mut conn, now) = open(Encoding::Json, Capabilities::default());
    let id = conn
        .send_event(now, headers("t1"), Some(Duration::from_millis(100)))
        .unwrap();
    conn.poll_transmit();
    assert_eq!(conn.poll_timeout(), Some(now + Duration::from_millis(100)));
    conn.handle_timeout(now + Duration::from_millis(99));
    assert!(conn.poll_event().is_none());
    conn.handle_timeout(now + Duration::from_millis(100));
    match drain(&mut conn).as_slice() {
        [ProxyEvent::Failed {
            id: got,
            error: RequestError::Timeout(d),
            ..
        }] => {
            assert_eq!(*got, id);
            assert_eq!(*d, Duration::from_millis(100));
        }
        other => panic!("{other:?}"),
    }
    let cancel = frames(conn.poll_transmit().unwrap());
    assert_eq!(cancel[0].frame_type, FrameType::Cancel);
    let c: Cancel = serde_json::from_slice(&cancel[0].payload).unwrap();
    assert_eq!(
        (c.correlation_id.as_str(), c.reason),
        ("t1", CancelReason::Timeout)
    );
    answer(
        &mut conn,
        now,
        Encoding::Json,
        &AgentResponse::allow().with_correlation_id("t1"),
    );
    assert!(matches!(
        conn.poll_event(),
        Some(ProxyEvent::UnroutableResponse { .. })
    ));
    assert_eq!(conn.in_flight(), 0);
    assert_eq!(conn.stats().timeouts, 1);
}

#[test]
fn cancel_completes_at_once_and_sends_0x40() {
    let (mut conn, now) = open(Encoding::MsgPack, Capabilities::default());
    let id = conn.send_event(now, headers("x"), None).unwrap();
    conn.poll_transmit();
    assert!(conn.cancel(now, "x", CancelReason::ClientDisconnect));
    assert!(!conn.cancel(now, "x", CancelReason::ClientDisconnect));
    assert!(matches!(
        conn.poll_event(),
        Some(ProxyEvent::Failed { id: got, error: RequestError::Cancelled(CancelReason::ClientDisconnect), .. }) if got == id
    ));
    let sent = frames(conn.poll_transmit().unwrap());
    assert_eq!(sent[0].frame_type, FrameType::Cancel);
    // Cancel is JSON even in a MessagePack session (what reference agents expect).
    assert_eq!(sent[0].payload[0], b'{');
    assert_eq!(conn.poll_timeout().map(|t| t > now), Some(true));
    assert_eq!(conn.in_flight(), 0);
}

#[test]
fn flow_control_pause_resume_and_credit_are_enforced() {
    let (mut conn, now) = open(Encoding::Json, Capabilities::default());
    let signal = |conn: &mut FramedProxy, v: serde_json::Value| {
        let mut wire = BytesMut::new();
        encode_frame(&mut wire, FrameType::FlowControl, Encoding::Json, &v).unwrap();
        conn.handle_input(now, &wire);
        assert!(matches!(
            conn.poll_event(),
            Some(ProxyEvent::FlowControl(_))
        ));
    };
    signal(&mut conn, json!({"action": 1}));
    assert!(!conn.is_accepting());
    assert!(matches!(
        conn.send_event(now, headers("p"), None),
        Err(SubmitError::FlowControlPaused {
            correlation_id: None
        })
    ));
    signal(&mut conn, json!({"action": 2}));
    conn.send_event(now, headers("p"), None).unwrap();
    answer(
        &mut conn,
        now,
        Encoding::Json,
        &AgentResponse::allow().with_correlation_id("p"),
    );
    assert!(matches!(
        conn.poll_event(),
        Some(ProxyEvent::Response { .. })
    ));

    // Per-request pause stops that request's body only.
    signal(&mut conn, json!({"action": 1, "correlation_id": "p"}));
    assert!(matches!(
        conn.send_event(now, chunk("p", 0, b"abc", false), None),
        Err(SubmitError::FlowControlPaused {
            correlation_id: Some(_)
        })
    ));
    conn.send_event(now, headers("q"), None).unwrap();
    signal(&mut conn, json!({"action": 2, "correlation_id": "p"}));

    // Credit of 4 bytes: a 3-byte chunk passes, then 2 more do not fit.
    signal(&mut conn, json!({"action": 3, "buffer_available": 4}));
    conn.send_event(now, chunk("p", 0, b"abc", false), None)
        .unwrap();
    answer(
        &mut conn,
        now,
        Encoding::Json,
        &AgentResponse::allow().with_correlation_id("p"),
    );
    let _ = conn.poll_event();
    assert!(matches!(
        conn.send_event(now, chunk("p", 1, b"de", true), None),
        Err(SubmitError::InsufficientCredit {
            needed: 2,
            available: 1
        })
    ));
    // A rejected chunk leaves no trace in the sequence: index 1 is still next.
    signal(&mut conn, json!({"action": 2}));
    conn.send_event(now, chunk("p", 1, b"de", true), None)
        .unwrap();
    assert_eq!(conn.stats().pauses, 2);
}

#[test]
fn agent_limits_are_enforced() {
    let caps = Capabilities::default()
        .with_max_concurrency(2)
        .with_max_body_size(5);
    let (mut conn, now) = open(Encoding::Json, caps);
    conn.send_event(now, headers("a"), None).unwrap();
    conn.send_event(now, headers("b"), None).unwrap();
    assert!(matches!(
        conn.send_event(now, headers("c"), None),
        Err(SubmitError::TooManyInFlight { limit: 2 })
    ));
    assert!(matches!(
        conn.send_event(now, headers("a"), None),
        Err(SubmitError::TooManyInFlight { .. }) | Err(SubmitError::DuplicateCorrelationId(_))
    ));
    answer(
        &mut conn,
        now,
        Encoding::Json,
        &AgentResponse::allow().with_correlation_id("a"),
    );
    let _ = conn.poll_event();
    conn.send_event(now, chunk("a", 0, b"1234", false), None)
        .unwrap();
    answer(
        &mut conn,
        now,
        Encoding::Json,
        &AgentResponse::allow().with_correlation_id("a"),
    );
    let _ = conn.poll_event();
    assert!(matches!(
        conn.send_event(now, chunk("a", 1, b"56", true), None),
        Err(SubmitError::BodyTooLarge { total: 6, limit: 5 })
    ));
}

#[test]
fn body_chunks_are_sequenced_and_counted() {
    let (mut conn, now) = open(Encoding::Json, Capabilities::default());
    let ok = |conn: &mut FramedProxy, e: Event| {
        let cid = e.correlation_id().to_owned();
        conn.send_event(now, e, None).unwrap();
        answer(
            conn,
            now,
            Encoding::Json,
            &AgentResponse::allow().with_correlation_id(&cid),
        );
        assert!(matches!(
            conn.poll_event(),
            Some(ProxyEvent::Response { .. })
        ));
    };
    assert!(matches!(
        conn.send_event(now, chunk("s", 1, b"x", false), None),
        Err(SubmitError::BodyOutOfSequence(_))
    ));
    ok(&mut conn, chunk("s", 0, b"hello", false));
    ok(&mut conn, chunk("s", 1, b"world", true));
    let sent = frames(conn.poll_transmit().unwrap());
    let last: serde_json::Value = serde_json::from_slice(&sent[1].payload).unwrap();
    assert_eq!(
        last["bytes_received"], 10,
        "running total filled in by the core"
    );
    assert_eq!(last["data"], "d29ybGQ=");
    assert!(matches!(
        conn.send_event(now, chunk("s", 2, b"!", true), None),
        Err(SubmitError::BodyOutOfSequence(_))
    ));
    // RequestComplete ends the stream's bookkeeping.
    let complete = Event::RequestComplete(RequestCompleteEvent {
        correlation_id: "s".into(),
        status: 200,
        ..Default::default()
    });
    ok(&mut conn, complete);
    assert_eq!(conn.body_streams(), 0);
}

#[test]
fn connection_loss_fails_every_pending_request_at_once() {
    let (mut conn, now) = open(Encoding::Json, Capabilities::default());
    let ids: Vec<_> = (0..5)
        .map(|i| {
            conn.send_event(now, headers(&format!("r{i}")), None)
                .unwrap()
        })
        .collect();
    conn.handle_eof();
    let events = drain(&mut conn);
    assert_eq!(events.len(), 6);
    for (i, e) in events[..5].iter().enumerate() {
        match e {
            ProxyEvent::Failed {
                id,
                error: RequestError::ConnectionClosed(ConnectionError::PeerClosed),
                ..
            } => assert_eq!(*id, ids[i]),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(events[5], ProxyEvent::Closed(ConnectionError::PeerClosed));
    assert_eq!(conn.state(), ConnectionState::Closed);
    assert_eq!(conn.in_flight(), 0);
    assert!(matches!(
        conn.send_event(now, headers("late"), None),
        Err(SubmitError::Closed(ConnectionError::PeerClosed))
    ));
    conn.handle_eof();
    assert!(conn.poll_event().is_none(), "Closed is reported once");
}

#[test]
fn malformed_answer_fails_only_its_request_when_attributable() {
    let (mut conn, now) = open(Encoding::Json, Capabilities::default());
    let a = conn.send_event(now, headers("a"), None).unwrap();
    conn.send_event(now, headers("b"), None).unwrap();
    let bad = json!({"version": 2, "decision": {"explode": {}}, "audit": {"custom": {"correlation_id": "a"}}});
    let mut wire = BytesMut::new();
    encode_frame(&mut wire, FrameType::AgentResponse, Encoding::Json, &bad).unwrap();
    conn.handle_input(now, &wire);
    assert!(matches!(
        conn.poll_event(),
        Some(ProxyEvent::Failed { id, error: RequestError::MalformedResponse(_), .. }) if id == a
    ));
    assert_eq!(conn.state(), ConnectionState::Open);
    // Garbage that names no request ends the connection: b fails at once.
    let mut wire = BytesMut::new();
    agent_protocol_core::frame::encode_frame(&mut wire, FrameType::AgentResponse, b"not json")
        .unwrap();
    conn.handle_input(now, &wire);
    let events = drain(&mut conn);
    assert!(matches!(
        events[0],
        ProxyEvent::Failed {
            error: RequestError::ConnectionClosed(ConnectionError::Malformed(_)),
            ..
        }
    ));
    assert!(matches!(events[1], ProxyEvent::Closed(_)));
}

#[test]
fn idle_connections_are_pinged_and_dead_peers_detected() {
    let (mut conn, now) = open(Encoding::Json, Capabilities::default());
    conn.poll_transmit();
    let ping_at = now + Duration::from_secs(10);
    assert_eq!(conn.poll_timeout(), Some(ping_at));
    conn.handle_timeout(ping_at);
    let sent = frames(conn.poll_transmit().unwrap());
    assert_eq!(sent[0].frame_type, FrameType::Ping);
    // Echo it back: Pong with RTT.
    let mut wire = BytesMut::new();
    agent_protocol_core::frame::encode_frame(&mut wire, FrameType::Pong, &sent[0].payload).unwrap();
    conn.handle_input(ping_at + Duration::from_millis(3), &wire);
    assert_eq!(
        conn.poll_event(),
        Some(ProxyEvent::Pong {
            sequence: 0,
            rtt: Duration::from_millis(3)
        })
    );
    // Next ping goes unanswered: the connection dies after ping_timeout.
    let second = ping_at + Duration::from_millis(3) + Duration::from_secs(10);
    conn.handle_timeout(second);
    conn.send_event(second, headers("w"), None).unwrap();
    conn.handle_timeout(second + Duration::from_secs(5));
    let events = drain(&mut conn);
    assert!(matches!(
        events[0],
        ProxyEvent::Failed {
            error: RequestError::ConnectionClosed(ConnectionError::PingTimeout(_)),
            ..
        }
    ));
    assert!(matches!(
        events[1],
        ProxyEvent::Closed(ConnectionError::PingTimeout(_))
    ));
}

#[test]
fn unknown_frames_are_skipped_and_health_is_tracked() {
    let (mut conn, now) = open(Encoding::Json, Capabilities::default());
    let id = conn.send_event(now, headers("u"), None).unwrap();
    let mut wire = BytesMut::from(&[0, 0, 0, 3, 0xF0, 1, 2][..]);
    encode_frame(
        &mut wire,
        FrameType::HealthStatus,
        Encoding::Json,
        &json!({"state": 3}),
    )
    .unwrap();
    encode_frame(
        &mut wire,
        FrameType::AgentResponse,
        Encoding::Json,
        &AgentResponse::allow().with_correlation_id("u"),
    )
    .unwrap();
    // Byte by byte: any split gives the same result.
    for b in wire.iter() {
        conn.handle_input(now, &[*b]);
    }
    let events = drain(&mut conn);
    assert_eq!(conn.codec.frames_skipped(), 1);
    assert!(matches!(&events[0], ProxyEvent::Health(h) if h.state == HealthState::Draining));
    assert!(matches!(&events[1], ProxyEvent::Response { id: got, .. } if *got == id));
    assert_eq!(conn.health(), HealthState::Draining);
}

#[test]
fn handshake_failures_close_with_a_typed_error() {
    let now = Instant::now();
    let mut conn = FramedProxy::new(ProxyConfig::default(), now);
    conn.handle_timeout(now + Duration::from_secs(5));
    assert!(matches!(
        conn.poll_event(),
        Some(ProxyEvent::Closed(ConnectionError::Handshake(_)))
    ));

    let mut conn = FramedProxy::new(ProxyConfig::default(), now);
    let mut wire = BytesMut::new();
    encode_frame(
        &mut wire,
        FrameType::HandshakeResponse,
        Encoding::Json,
        &json!({"protocol_version": 2, "capabilities": {}, "success": false, "error": "go away"}),
    )
    .unwrap();
    conn.handle_input(now, &wire);
    match conn.poll_event() {
        Some(ProxyEvent::Closed(e)) => assert!(e.to_string().contains("go away"), "{e}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn message_transport_shares_every_behaviour() {
    use agent_protocol_core::handshake::HandshakeResponse;
    use agent_protocol_core::proxy::{ProxyIncoming as Incoming, ProxyOutgoing as Outgoing};
    let now = Instant::now();
    let mut conn = ProxyConnection::new(ProxyConfig::default(), now);
    assert!(matches!(conn.poll_message(), Some(Outgoing::Handshake(_))));
    conn.handle_message(
        now,
        Incoming::Handshake(HandshakeResponse {
            protocol_version: 2,
            capabilities: Capabilities::default(),
            success: true,
            error: None,
            encoding: "json".into(),
        }),
    );
    assert!(matches!(conn.poll_event(), Some(ProxyEvent::Connected(_))));
    let mut sent = Vec::new();
    let mut wire = |m| {
        sent.push(m);
        Ok(())
    };
    let a = conn.send_event(now, headers("a"), None, &mut wire).unwrap();
    let b = conn
        .send_event(
            now,
            headers("b"),
            Some(Duration::from_millis(10)),
            &mut wire,
        )
        .unwrap();
    assert!(matches!(&sent[0], Outgoing::Event(e) if e.correlation_id() == "a"));
    assert!(matches!(&sent[1], Outgoing::Event(_)));
    // The answer's id travels beside its audit values, which stay exactly as the agent sent
    // them (a `correlation_id` key of its own included).
    let mut response = AgentResponse::allow().with_correlation_id("a");
    response.audit.custom.insert("k".into(), json!("v"));
    response
        .audit
        .custom
        .insert("correlation_id".into(), json!("the agent's own"));
    conn.handle_message(
        now,
        Incoming::Response {
            response: response.clone(),
        },
    );
    match conn.poll_event() {
        Some(ProxyEvent::Response {
            id, response: r, ..
        }) => {
            assert_eq!(id, a);
            assert_eq!(r, response);
        }
        other => panic!("{other:?}"),
    }
    conn.handle_timeout(now + Duration::from_millis(10));
    assert!(matches!(conn.poll_event(), Some(ProxyEvent::Failed { id, .. }) if id == b));
    assert!(matches!(conn.poll_message(), Some(Outgoing::Cancel(c)) if c.correlation_id == "b"));
}

#[test]
fn message_transport_fails_one_request_for_an_undecodable_answer() {
    use agent_protocol_core::encoding::DecodeError;
    use agent_protocol_core::frame::FrameType;
    use agent_protocol_core::handshake::HandshakeResponse;
    use agent_protocol_core::proxy::ProxyIncoming as Incoming;
    let now = Instant::now();
    let mut conn = ProxyConnection::new(ProxyConfig::default(), now);
    conn.handle_message(
        now,
        Incoming::Handshake(HandshakeResponse {
            protocol_version: 2,
            capabilities: Capabilities::default(),
            success: true,
            error: None,
            encoding: "json".into(),
        }),
    );
    assert!(matches!(conn.poll_event(), Some(ProxyEvent::Connected(_))));
    let mut wire = |_| Ok(());
    let a = conn.send_event(now, headers("a"), None, &mut wire).unwrap();
    conn.send_event(now, headers("b"), None, &mut wire).unwrap();
    let error = DecodeError {
        frame_type: FrameType::AgentResponse,
        encoding: Encoding::Json,
        message: "block status 70000 out of range".into(),
        limit: None,
    };
    for cid in ["a", "nobody"] {
        conn.handle_message(
            now,
            Incoming::MalformedResponse {
                correlation_id: cid.into(),
                error: error.clone(),
            },
        );
    }
    match conn.poll_event() {
        Some(ProxyEvent::Failed {
            id,
            error: RequestError::MalformedResponse(e),
            ..
        }) => {
            assert_eq!(id, a);
            assert_eq!(e, error);
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        conn.poll_event(),
        Some(ProxyEvent::UnroutableResponse { correlation_id }) if correlation_id == "nobody"
    ));
    assert_eq!(conn.in_flight(), 1, "the other request is still pending");
}

#[test]
fn a_zero_ping_interval_disables_pings() {
    let now = Instant::now();
    let mut config = ProxyConfig::default();
    config.ping_interval = Some(Duration::ZERO);
    config.ping_timeout = Duration::ZERO;
    let mut conn = FramedProxy::new(config, now);
    let answer =
        json!({"protocol_version": 2, "capabilities": {}, "success": true, "encoding": "json"});
    let mut wire = BytesMut::new();
    encode_frame(
        &mut wire,
        FrameType::HandshakeResponse,
        Encoding::Json,
        &answer,
    )
    .unwrap();
    conn.poll_transmit();
    conn.handle_input(now, &wire);
    assert!(matches!(conn.poll_event(), Some(ProxyEvent::Connected(_))));
    assert_eq!(
        conn.poll_timeout(),
        None,
        "nothing scheduled without requests or streams"
    );
    conn.handle_timeout(now + Duration::from_secs(3600));
    assert!(conn.poll_transmit().is_none(), "no ping sent");
    assert_eq!(conn.state(), ConnectionState::Open);
}

#[test]
fn send_buffer_and_body_stream_caps_refuse_without_tracking() {
    let now = Instant::now();
    let mut config = ProxyConfig::default();
    config.max_send_buffer = 64;
    config.max_body_streams = 1;
    let mut conn = FramedProxy::new(config, now);
    let answer =
        json!({"protocol_version": 2, "capabilities": {}, "success": true, "encoding": "json"});
    let mut wire = BytesMut::new();
    encode_frame(
        &mut wire,
        FrameType::HandshakeResponse,
        Encoding::Json,
        &answer,
    )
    .unwrap();
    conn.poll_transmit();
    conn.handle_input(now, &wire);
    assert!(matches!(conn.poll_event(), Some(ProxyEvent::Connected(_))));

    // One open body stream fills the table: a second request's first chunk is refused.
    conn.send_event(now, chunk("s1", 0, b"x", false), None)
        .unwrap();
    conn.poll_transmit();
    match conn.send_event(now, chunk("s2", 0, b"y", false), None) {
        Err(e @ SubmitError::TooManyStreams(1)) => assert_eq!(e.fault(), Fault::Limit),
        other => panic!("{other:?}"),
    }
    // Unsent output over 64 bytes refuses new events until it is written.
    conn.send_event(now, headers("h0"), None).unwrap();
    match conn.send_event(now, headers("h"), None) {
        Err(e @ SubmitError::SendBufferFull { .. }) => assert_eq!(e.fault(), Fault::Limit),
        other => panic!("{other:?}"),
    }
    assert_eq!(conn.in_flight(), 2, "refused submissions are not tracked");
    conn.poll_transmit();
    conn.send_event(now, headers("h"), None).unwrap();
}

#[test]
fn cancels_queued_before_a_close_are_still_handed_over() {
    let (mut conn, now) = open(Encoding::Json, Capabilities::default());
    conn.send_event(now, headers("late"), Some(Duration::from_millis(10)))
        .unwrap();
    let _ = conn.poll_transmit();
    // The request times out (a Cancel is queued) and the connection closes in the same step.
    conn.handle_timeout(now + Duration::from_millis(10));
    conn.close();
    let events = drain(&mut conn);
    assert!(matches!(
        events[0],
        ProxyEvent::Failed {
            error: RequestError::Timeout(_),
            ..
        }
    ));
    let sent = frames(conn.poll_transmit().expect("the cancel is still written"));
    assert_eq!(sent[0].frame_type, FrameType::Cancel);
}
