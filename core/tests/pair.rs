//! A proxy connection wired to an agent connection in memory, with a simulated clock: the
//! deterministic harness for whole-protocol behaviour (as quinn-proto's `Pair`).

use std::collections::HashSet;
use std::time::Duration;

use agent_protocol_core::agent::Unsent;
use agent_protocol_core::proxy::{ProxyConfig, RequestId};
use agent_protocol_core::testing::{Pair, Transport};
use agent_protocol_core::*;
use bytes::Bytes;
use proptest::prelude::*;

/// What the tests' agent answers: an allow echoing the correlation id in a header op, so a
/// misrouted answer shows.
trait EchoAnswer {
    fn answer(&mut self, index: usize) -> bool;
}

impl EchoAnswer for Pair {
    fn answer(&mut self, index: usize) -> bool {
        self.answer_nth(index, |cid| {
            let mut r = AgentResponse::allow();
            r.request_headers.push(HeaderOp::Set {
                name: "x-cid".into(),
                value: cid.to_owned(),
            });
            r
        })
    }
}

/// Both transports, for the tests that hold on either.
const TRANSPORTS: [Transport; 2] = [Transport::Framed, Transport::Messages];

fn headers(cid: &str) -> Event {
    let meta = RequestMetadata {
        correlation_id: cid.into(),
        ..Default::default()
    };
    Event::RequestHeaders(RequestHeadersEvent::new(
        meta,
        "GET",
        "/",
        Headers::from_iter([("a", "b")]),
    ))
}

fn chunk(cid: &str, index: u32, is_last: bool) -> Event {
    Event::RequestBodyChunk(RequestBodyChunkEvent(BodyChunk {
        correlation_id: cid.into(),
        data: Bytes::from_static(b"chunk"),
        is_last,
        total_size: None,
        chunk_index: index,
        bytes_transferred: 0,
    }))
}

#[test]
fn handshake_negotiates_and_pipelined_requests_route_out_of_order() {
    for (p, a, expect) in [
        (
            vec![Encoding::MsgPack, Encoding::Json],
            vec![Encoding::MsgPack, Encoding::Json],
            Encoding::MsgPack,
        ),
        (
            vec![Encoding::MsgPack, Encoding::Json],
            vec![Encoding::Json],
            Encoding::Json,
        ),
        (
            vec![Encoding::Json],
            vec![Encoding::MsgPack, Encoding::Json],
            Encoding::Json,
        ),
    ] {
        let mut pair = Pair::new(Transport::Framed, &p, &a);
        assert_eq!(pair.proxy.encoding(), expect);
        assert_eq!(pair.agent.encoding(), Some(expect));
        let ids: Vec<_> = (0..10)
            .map(|i| pair.submit(headers(&format!("c{i}")), None).unwrap())
            .collect();
        assert_eq!(pair.agent_pending.len(), 10);
        // Answer in a scrambled order.
        for k in [7usize, 3, 5, 0, 1, 1, 0, 2, 0, 0] {
            assert!(pair.answer(k));
        }
        for (i, id) in ids.iter().enumerate() {
            let r = pair.outcomes[id].as_ref().unwrap();
            assert_eq!(
                r.request_headers,
                vec![HeaderOp::Set {
                    name: "x-cid".into(),
                    value: format!("c{i}")
                }]
            );
        }
        assert_eq!(pair.proxy.in_flight(), 0);
        assert_eq!(pair.agent.in_flight(), 0);
    }
}

#[test]
fn timeouts_cancel_at_the_agent_and_leave_nothing_behind() {
    for transport in TRANSPORTS {
        let mut pair = Pair::new(
            transport,
            &[Encoding::MsgPack],
            &[Encoding::MsgPack, Encoding::Json],
        );
        let id = pair
            .submit(headers("slow"), Some(Duration::from_millis(50)))
            .unwrap();
        pair.advance(Duration::from_millis(50));
        assert!(matches!(pair.outcomes[&id], Err(RequestError::Timeout(_))));
        assert_eq!(pair.agent_cancelled, vec!["slow".to_string()]);
        assert!(pair.agent_pending.is_empty());
        assert_eq!(pair.agent.in_flight(), 0);
        assert_eq!(pair.proxy.in_flight(), 0);
    }
}

#[test]
fn cancel_and_pause_resume_through_the_agent() {
    for transport in TRANSPORTS {
        let mut pair = Pair::new(transport, &[Encoding::Json], &[Encoding::Json]);
        let id = pair.submit(headers("x"), None).unwrap();
        assert!(pair.proxy.cancel(pair.now, "x", CancelReason::Manual));
        pair.drive();
        assert!(matches!(
            pair.outcomes[&id],
            Err(RequestError::Cancelled(CancelReason::Manual))
        ));
        assert_eq!(pair.agent.in_flight(), 0);

        pair.agent
            .send_flow_control(&FlowControl {
                action: FlowAction::Pause,
                correlation_id: None,
                buffer_available: None,
                timestamp_ms: 0,
            })
            .unwrap();
        pair.drive();
        assert!(matches!(
            pair.submit(headers("y"), None),
            Err(SubmitError::FlowControlPaused { .. })
        ));
        pair.agent
            .send_flow_control(&FlowControl {
                action: FlowAction::Resume,
                correlation_id: None,
                buffer_available: None,
                timestamp_ms: 0,
            })
            .unwrap();
        pair.drive();
        let id = pair.submit(headers("y"), None).unwrap();
        pair.answer(0);
        assert!(pair.outcomes[&id].is_ok());
    }
}

#[test]
fn connection_loss_fails_everything_at_once() {
    for transport in TRANSPORTS {
        let mut pair = Pair::new(transport, &[Encoding::MsgPack], &[Encoding::MsgPack]);
        let ids: Vec<_> = (0..4)
            .map(|i| pair.submit(headers(&format!("l{i}")), None).unwrap())
            .collect();
        pair.proxy.handle_eof();
        pair.drive();
        for id in ids {
            assert!(matches!(
                pair.outcomes[&id],
                Err(RequestError::ConnectionClosed(ConnectionError::PeerClosed))
            ));
        }
        assert_eq!(pair.proxy_closed, Some(ConnectionError::PeerClosed));
    }
}

#[test]
fn dead_wire_is_detected_by_ping() {
    for transport in TRANSPORTS {
        let mut pair = Pair::new(transport, &[Encoding::Json], &[Encoding::Json]);
        pair.wire_up = false;
        let id = pair
            .submit(headers("d"), Some(Duration::from_secs(60)))
            .unwrap();
        pair.advance(Duration::from_secs(10)); // ping sent, never arrives
        pair.advance(Duration::from_secs(5)); // no sign of life: dead
        assert!(matches!(
            pair.outcomes[&id],
            Err(RequestError::ConnectionClosed(
                ConnectionError::PingTimeout(_)
            ))
        ));
    }
}

#[test]
fn body_stream_flows_through_the_pair() {
    for transport in TRANSPORTS {
        let mut pair = Pair::new(transport, &[Encoding::MsgPack], &[Encoding::MsgPack]);
        pair.submit(headers("b"), None).unwrap();
        pair.answer(0);
        for i in 0..3 {
            let id = pair.submit(chunk("b", i, i == 2), None).unwrap();
            pair.answer(0);
            assert!(pair.outcomes[&id].is_ok());
        }
        assert!(matches!(
            pair.submit(chunk("b", 3, true), None),
            Err(SubmitError::BodyOutOfSequence(_))
        ));
    }
}

#[derive(Debug, Clone)]
enum Op {
    Submit { cid: u8, timeout_ms: Option<u16> },
    Chunk { cid: u8, index: u8, last: bool },
    Answer(usize),
    Cancel(u8),
    Advance(u16),
    AgentPause,
    AgentResume,
    Garbage(Vec<u8>),
    Eof,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u8..8, proptest::option::of(1u16..500)).prop_map(|(cid, timeout_ms)| Op::Submit { cid, timeout_ms }),
        2 => (0u8..8, 0u8..4, any::<bool>()).prop_map(|(cid, index, last)| Op::Chunk { cid, index, last }),
        6 => any::<usize>().prop_map(Op::Answer),
        2 => (0u8..8).prop_map(Op::Cancel),
        3 => (0u16..600).prop_map(Op::Advance),
        1 => Just(Op::AgentPause),
        1 => Just(Op::AgentResume),
        1 => proptest::collection::vec(any::<u8>(), 0..16).prop_map(Op::Garbage),
        1 => Just(Op::Eof),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Whatever happens, every accepted request ends exactly once (the harness asserts no second
    /// outcome), and once everything has settled nothing is left in flight on either side.
    #[test]
    fn every_request_ends_exactly_once(ops in proptest::collection::vec(op(), 1..80), msgpack in any::<bool>(), messages in any::<bool>()) {
        let enc = if msgpack { Encoding::MsgPack } else { Encoding::Json };
        let transport = if messages { Transport::Messages } else { Transport::Framed };
        let mut pair = Pair::new(transport, &[enc], &[enc]);
        let mut accepted: HashSet<RequestId> = HashSet::new();
        for op in ops {
            match op {
                Op::Submit { cid, timeout_ms } => {
                    let t = timeout_ms.map(|ms| Duration::from_millis(ms.into()));
                    if let Ok(id) = pair.submit(headers(&format!("c{cid}")), t) {
                        prop_assert!(accepted.insert(id));
                    }
                }
                Op::Chunk { cid, index, last } => {
                    if let Ok(id) = pair.submit(chunk(&format!("c{cid}"), index.into(), last), None) {
                        prop_assert!(accepted.insert(id));
                    }
                }
                Op::Answer(i) => { pair.answer(i); }
                Op::Cancel(cid) => { pair.proxy.cancel(pair.now, &format!("c{cid}"), CancelReason::Manual); pair.drive(); }
                Op::Advance(ms) => pair.advance(Duration::from_millis(ms.into())),
                Op::AgentPause | Op::AgentResume => {
                    let action = if matches!(op, Op::AgentPause) { FlowAction::Pause } else { FlowAction::Resume };
                    let _ = pair.agent.send_flow_control(&FlowControl { action, correlation_id: None, buffer_available: None, timestamp_ms: 0 });
                    pair.drive();
                }
                Op::Garbage(bytes) => { pair.proxy.handle_input(pair.now, &bytes); pair.drive(); }
                Op::Eof => { pair.proxy.handle_eof(); pair.drive(); }
            }
            prop_assert!(pair.proxy.in_flight() <= accepted.len());
            // Every outcome belongs to an accepted request.
            for id in pair.outcomes.keys() {
                prop_assert!(accepted.contains(id));
            }
        }
        // Let every deadline pass: all requests must have ended.
        pair.advance(Duration::from_secs(31));
        pair.advance(Duration::from_secs(31));
        for id in &accepted {
            prop_assert!(pair.outcomes.contains_key(id), "request {} never ended", id);
        }
        prop_assert_eq!(pair.proxy.in_flight(), 0);
        // Body streams without RequestComplete are kept until their idle TTL (5 min).
        pair.advance(Duration::from_secs(400));
        prop_assert_eq!(pair.proxy.body_streams(), 0);
    }
}

/// Submits chunk 0 (not the last) of `cid` and has the agent answer it with `response`.
fn chunk_answered(pair: &mut Pair, cid: &str, response: AgentResponse) -> RequestId {
    let id = pair
        .submit(chunk(cid, 0, false), None)
        .unwrap_or_else(|e| panic!("chunk of {cid} refused: {e}"));
    pair.answer_with(response).unwrap();
    id
}

#[test]
fn blocked_bodies_release_their_streams_at_once() {
    for transport in TRANSPORTS {
        let mut pair = Pair::new(transport, &[Encoding::MsgPack], &[Encoding::MsgPack]);
        let cap = ProxyConfig::default().max_body_streams;
        // More blocked bodies than the table holds: each one's stream must be gone with its block,
        // or the table fills and every new body is refused until the idle expiry (minutes).
        for i in 0..cap + 10 {
            let id = chunk_answered(
                &mut pair,
                &format!("blocked-{i}"),
                AgentResponse::block(403, "no"),
            );
            assert!(pair.outcomes[&id].is_ok());
            assert_eq!(pair.proxy.body_streams(), 0, "after block {i}");
        }
        // A body that goes on still works, and a provisional block (needs_more) keeps its stream.
        let mut provisional = AgentResponse::block(403, "maybe");
        provisional.needs_more = true;
        chunk_answered(&mut pair, "provisional", provisional);
        assert_eq!(pair.proxy.body_streams(), 1);
        pair.submit(chunk("provisional", 1, true), None).unwrap();
        pair.answer(0);
        // Other final answers end the request too: a redirect, a challenge.
        for (i, decision) in [
            Decision::Redirect {
                url: "/x".into(),
                status: 302,
            },
            Decision::Challenge {
                challenge_type: "captcha".into(),
                params: Default::default(),
            },
        ]
        .into_iter()
        .enumerate()
        {
            chunk_answered(
                &mut pair,
                &format!("final-{i}"),
                AgentResponse::new(decision),
            );
        }
        // A WebSocket decision on a body chunk's answer means nothing: the body goes on.
        let mut stray = AgentResponse::allow();
        stray.websocket_decision = Some(WebSocketDecision::Close {
            code: 1008,
            reason: "policy".into(),
        });
        chunk_answered(&mut pair, "ws-stray", stray);
        assert_eq!(pair.proxy.body_streams(), 2);
        pair.submit(chunk("ws-stray", 1, true), None).unwrap();
        pair.answer(0);
        // A guardrail inspection's block is about its content, not the request under that id.
        let id = pair
            .submit(
                Event::GuardrailInspect(GuardrailInspectEvent {
                    correlation_id: "ws-stray".into(),
                    ..Default::default()
                }),
                None,
            )
            .unwrap();
        pair.answer_with(AgentResponse::block(403, "flagged"))
            .unwrap();
        assert!(pair.outcomes[&id].is_ok());
        assert_eq!(pair.proxy.body_streams(), 2);
        pair.proxy.end_request("ws-stray");
        assert_eq!(pair.proxy.body_streams(), 1, "only 'provisional' is left");
        pair.submit(
            Event::RequestComplete(RequestCompleteEvent {
                correlation_id: "provisional".into(),
                ..Default::default()
            }),
            None,
        )
        .unwrap();
        assert_eq!(pair.proxy.body_streams(), 0);
    }
}

#[test]
fn every_other_end_releases_the_body_stream() {
    for transport in TRANSPORTS {
        let mut pair = Pair::new(transport, &[Encoding::Json], &[Encoding::Json]);
        let cap = ProxyConfig::default().max_body_streams;
        for i in 0..cap + 10 {
            let cid = format!("r{i}");
            match i % 4 {
                // The chunk times out.
                0 => {
                    let id = pair
                        .submit(chunk(&cid, 0, false), Some(Duration::from_millis(5)))
                        .unwrap();
                    pair.advance(Duration::from_millis(5));
                    assert!(matches!(pair.outcomes[&id], Err(RequestError::Timeout(_))));
                }
                // The chunk is cancelled while pending.
                1 => {
                    pair.submit(chunk(&cid, 0, false), None).unwrap();
                    assert!(pair.proxy.cancel(pair.now, &cid, CancelReason::Manual));
                    pair.drive();
                }
                // Cancelled between two chunks: nothing pending, but the request is over.
                2 => {
                    chunk_answered(&mut pair, &cid, AgentResponse::allow());
                    assert!(!pair
                        .proxy
                        .cancel(pair.now, &cid, CancelReason::UpstreamError));
                    pair.drive();
                }
                // The caller ends it without RequestComplete (the proxy answered the client itself).
                _ => {
                    chunk_answered(&mut pair, &cid, AgentResponse::allow());
                    assert!(pair.proxy.end_request(&cid));
                    assert!(
                        !pair.proxy.end_request(&cid),
                        "nothing left the second time"
                    );
                }
            }
            assert_eq!(pair.proxy.body_streams(), 0, "after request {i}");
        }
        assert!(pair.agent_pending.is_empty());
        let id = pair.submit(chunk("fresh", 0, true), None).unwrap();
        pair.answer(0);
        assert!(pair.outcomes[&id].is_ok());
    }
}

#[test]
fn an_answer_too_large_for_a_frame_is_answered_fail_closed() {
    const OVER: usize = 17 * 1024 * 1024; // the frame limit is 16 MiB
    for enc in [Encoding::Json, Encoding::MsgPack] {
        let mut pair = Pair::new(Transport::Framed, &[enc], &[enc]);
        let ws = Event::WebSocketFrame(WebSocketFrameEvent {
            correlation_id: "big-ws".into(),
            data: Bytes::from_static(b"hi"),
            fin: true,
            ..Default::default()
        });
        // The last is a simple allow (header operations only), which is written without serde.
        for (cid, event) in [
            ("big", headers("big")),
            ("big-ws", ws),
            ("big-op", headers("big-op")),
        ] {
            let id = pair.submit(event, None).unwrap();
            let mut huge = AgentResponse::allow();
            match enc {
                _ if cid == "big-op" => huge.request_headers.push(HeaderOp::Set {
                    name: "x-dump".into(),
                    value: "x".repeat(OVER),
                }),
                // Audit data in JSON, a body mutation (raw bin) in MessagePack.
                Encoding::Json => {
                    huge.audit
                        .custom
                        .insert("dump".into(), "x".repeat(OVER).into());
                }
                Encoding::MsgPack => {
                    huge.request_body_mutation = Some(BodyMutation::replace(0, vec![b'x'; OVER]));
                }
            }
            pair.answer_with(huge).unwrap();
            match pair.agent.unsent.pop() {
                Some(Unsent::Replaced(EncodeError::TooLarge(t))) => assert!(t.len > t.max),
                other => panic!("{enc}: {other:?}"),
            }
            assert_eq!(
                pair.agent.in_flight(),
                0,
                "{enc}: the agent still tracks {cid}"
            );
            assert_eq!(
                pair.proxy.in_flight(),
                0,
                "{enc}: the proxy still waits for {cid}"
            );
            let answer = match &pair.outcomes[&id] {
                Ok(r) => r,
                Err(e) => panic!("{enc}: {cid} failed instead of being blocked: {e}"),
            };
            assert!(
                matches!(answer.decision, Decision::Block { status: 500, .. }),
                "{enc}: {answer:?}"
            );
            assert_eq!(
                answer.audit.reason_codes,
                [agent_protocol_core::agent::RESPONSE_TOO_LARGE_REASON]
            );
            // A WebSocket frame with a bare block would be forwarded: it is closed instead.
            assert!(matches!(
                answer.websocket_decision,
                Some(WebSocketDecision::Close { code: 1011, .. })
            ));
        }
        // The connection lives on.
        let id = pair.submit(headers("next"), None).unwrap();
        pair.answer(0);
        assert!(pair.outcomes[&id].is_ok());
    }
}
