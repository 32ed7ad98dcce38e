//! Drives a `ProxyConnection` with a fuzzer-chosen sequence of operations on a simulated clock:
//! handshake answers, well-formed and malformed agent answers, arbitrary agent bytes and frames,
//! control frames, submissions of every event kind (body chunks with arbitrary index, `is_last`
//! and sizes), cancels, pings, partial writes, time, EOF, I/O errors and local close.
//!
//! Checked after every operation:
//! - every accepted `RequestId` is new, and ends with exactly one `Response` or `Failed` carrying
//!   its correlation id; `in_flight()` is exactly the number of accepted, unended requests and
//!   never exceeds the in-flight limit;
//! - a refused submission queues nothing and tracks nothing; a cancel reports whether the request
//!   was pending; an answer for a pending request ends it at once;
//! - `Closed` comes once, after every pending request failed, and nothing follows it;
//! - timers settle: after `handle_timeout(now)` a couple of rounds leave `poll_timeout()` in the
//!   future;
//! - everything the proxy writes frames cleanly and decodes: the handshake, one event frame per
//!   accepted submission (in the negotiated encoding), one Cancel per cancelled or timed-out
//!   request, pings.
//!
//! At the end the clock jumps a day ahead: every request must have ended and `in_flight()` be 0.
#![no_main]

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use agent_protocol_core::encoding::decode_event;
use agent_protocol_core::frame::{Frame, FrameType};
use agent_protocol_core::handshake::{HandshakeRequest, HandshakeResponse, Negotiated};
use agent_protocol_core::proxy::{ConnectionState, ProxyConfig, ProxyEvent, RequestId};
use agent_protocol_core::testing::FramedProxy;
use agent_protocol_core::*;
use agent_protocol_fuzz::wire::{cid, frame_bytes, raw_frame, OutputReader, StreamTracker};
use arbitrary::Arbitrary;
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug, Clone, Copy)]
struct AgentLimits {
    max_concurrency: u8,
    max_body_size: u16,
}

#[derive(Arbitrary, Debug)]
struct Setup {
    /// `Some(msgpack)`: start established (as after a reverse registration) in that encoding.
    established: Option<bool>,
    offer_msgpack: bool,
    max_in_flight: u8,
    request_timeout_ms: u16,
    ping_interval_ms: Option<u16>,
    ping_timeout_ms: u16,
    max_send_buffer: u16,
    max_body_streams: u8,
    limits: AgentLimits,
}

#[derive(Arbitrary, Debug)]
enum EventOp {
    Headers,
    RequestBody {
        index: u8,
        is_last: bool,
        len: u8,
        total_size: Option<u16>,
    },
    ResponseHeaders {
        status: u16,
    },
    ResponseBody {
        index: u8,
        is_last: bool,
        len: u8,
        total_size: Option<u16>,
    },
    Complete {
        status: u16,
    },
    WebSocket {
        len: u8,
    },
    Guardrail,
    Configure,
}

#[derive(Arbitrary, Debug)]
enum Op {
    /// The agent's handshake answer (encoding 0 json, 1 msgpack, 2 an unknown name, 3 empty).
    HandshakeAnswer {
        encoding: u8,
        success: bool,
        limits: AgentLimits,
        split: u16,
    },
    /// Arbitrary bytes from the agent.
    Input(Vec<u8>),
    /// A frame of any type byte from the agent.
    Frame {
        type_byte: u8,
        payload: Vec<u8>,
    },
    /// A well-formed answer for the `pick`-th pending request, or for nobody when `stray`.
    Respond {
        pick: u8,
        stray: bool,
        decision: u8,
        as_json: bool,
        split: u16,
    },
    /// An answer that does not decode; its correlation id is readable when `salvageable`.
    MalformedResponse {
        pick: u8,
        salvageable: bool,
    },
    Submit {
        cid: u8,
        event: EventOp,
        timeout_ms: Option<u16>,
    },
    Cancel {
        cid: u8,
        reason: u8,
    },
    FlowControl {
        action: u8,
        cid: Option<u8>,
        buffer: Option<u16>,
    },
    Health {
        state: u8,
    },
    Pong {
        sequence: u8,
    },
    Ping,
    Advance {
        ms: u16,
    },
    AdvanceSecs {
        secs: u8,
    },
    /// Drain output, taken whole as the drivers take it.
    Transmit,
    Eof,
    IoError,
    Close,
}

#[derive(Arbitrary, Debug)]
struct Input {
    setup: Setup,
    ops: Vec<Op>,
}

fn capabilities(limits: AgentLimits) -> Capabilities {
    let mut caps = Capabilities::new("fuzz-agent", "Fuzz", "1").with_all_events();
    caps.limits.max_concurrency = u32::from(limits.max_concurrency);
    caps.limits.max_body_size = u64::from(limits.max_body_size);
    caps
}

struct Harness {
    now: Instant,
    conn: FramedProxy,
    started_established: bool,
    /// Accepted requests not yet ended: id -> correlation id.
    outstanding: BTreeMap<RequestId, String>,
    last_id: Option<RequestId>,
    /// Correlation ids ever accepted.
    ever_accepted: HashSet<String>,
    connected: bool,
    closed: bool,
    output: OutputReader,
    /// Framing of what we fed.
    stream: StreamTracker,
    // Counts checked against the output at the end.
    accepted: u64,
    event_frames: u64,
    cancels_expected: u64,
    cancel_frames: u64,
}

impl Harness {
    fn new(setup: &Setup) -> Self {
        let now = Instant::now();
        let mut config = ProxyConfig::default();
        config.handshake.encodings = if setup.offer_msgpack {
            [Encoding::MsgPack, Encoding::Json].into_iter().collect()
        } else {
            [Encoding::Json].into_iter().collect()
        };
        config.max_in_flight = u32::from(setup.max_in_flight);
        config.request_timeout = Duration::from_millis(u64::from(setup.request_timeout_ms));
        // Zero intervals would ping in a loop by design; keep them at 1 ms or more.
        config.ping_interval = setup
            .ping_interval_ms
            .map(|ms| Duration::from_millis(u64::from(ms) + 1));
        config.ping_timeout = Duration::from_millis(u64::from(setup.ping_timeout_ms) + 1);
        config.max_send_buffer = usize::from(setup.max_send_buffer);
        config.max_body_streams = usize::from(setup.max_body_streams);
        let conn = match setup.established {
            Some(msgpack) => {
                let negotiated = Negotiated {
                    encoding: if msgpack {
                        Encoding::MsgPack
                    } else {
                        Encoding::Json
                    },
                    capabilities: capabilities(setup.limits),
                    protocol_version: 2,
                };
                FramedProxy::established(config, negotiated, now)
            }
            None => FramedProxy::new(config, now),
        };
        Harness {
            now,
            conn,
            started_established: setup.established.is_some(),
            outstanding: BTreeMap::new(),
            last_id: None,
            ever_accepted: HashSet::new(),
            connected: false,
            closed: false,
            output: OutputReader::default(),
            stream: StreamTracker::default(),
            accepted: 0,
            event_frames: 0,
            cancels_expected: 0,
            cancel_frames: 0,
        }
    }

    fn feed(&mut self, bytes: &[u8], split: u16) {
        let at = usize::from(split) % (bytes.len() + 1);
        self.input(&bytes[..at]);
        self.input(&bytes[at..]);
    }

    fn input(&mut self, bytes: &[u8]) {
        self.stream.push(bytes);
        self.conn.handle_input(self.now, bytes);
    }

    fn encoding(&self) -> Encoding {
        self.conn.encoding()
    }

    fn pick(&self, pick: u8) -> Option<(RequestId, String)> {
        if self.outstanding.is_empty() {
            return None;
        }
        let (id, cid) = self
            .outstanding
            .iter()
            .nth(usize::from(pick) % self.outstanding.len())
            .unwrap();
        Some((*id, cid.clone()))
    }

    fn is_pending(&self, cid: &str) -> bool {
        self.outstanding.values().any(|c| c == cid)
    }

    fn build_event(&self, cid: String, op: &EventOp) -> Event {
        let chunk = |index: &u8, is_last: &bool, len: &u8, total: &Option<u16>| BodyChunk {
            correlation_id: cid.clone().into(),
            data: Bytes::from(vec![b'x'; usize::from(*len)]),
            is_last: *is_last,
            total_size: total.map(u64::from),
            chunk_index: u32::from(*index),
            bytes_transferred: 0,
        };
        match op {
            EventOp::Headers => {
                let meta = RequestMetadata {
                    correlation_id: cid.clone().into(),
                    request_id: "r".into(),
                    ..Default::default()
                };
                Event::RequestHeaders(RequestHeadersEvent::new(
                    meta,
                    "GET",
                    "/",
                    Headers::from_iter([("host", "example.com")]),
                ))
            }
            EventOp::RequestBody {
                index,
                is_last,
                len,
                total_size,
            } => Event::RequestBodyChunk(RequestBodyChunkEvent(chunk(
                index, is_last, len, total_size,
            ))),
            EventOp::ResponseHeaders { status } => Event::ResponseHeaders(ResponseHeadersEvent {
                correlation_id: cid.into(),
                status: *status,
                headers: Headers::new(),
            }),
            EventOp::ResponseBody {
                index,
                is_last,
                len,
                total_size,
            } => Event::ResponseBodyChunk(ResponseBodyChunkEvent(chunk(
                index, is_last, len, total_size,
            ))),
            EventOp::Complete { status } => Event::RequestComplete(RequestCompleteEvent {
                correlation_id: cid.into(),
                status: *status,
                ..Default::default()
            }),
            EventOp::WebSocket { len } => Event::WebSocketFrame(WebSocketFrameEvent {
                correlation_id: cid.into(),
                data: Bytes::from(vec![1; usize::from(*len)]),
                ..Default::default()
            }),
            EventOp::Guardrail => Event::GuardrailInspect(GuardrailInspectEvent {
                correlation_id: cid.into(),
                content: "text".into(),
                ..Default::default()
            }),
            EventOp::Configure => Event::Configure(ConfigureEvent {
                correlation_id: cid.into(),
                config: serde_json::json!({"k": 1}),
                config_version: None,
            }),
        }
    }

    fn apply(&mut self, op: Op) {
        match op {
            Op::HandshakeAnswer {
                encoding,
                success,
                limits,
                split,
            } => {
                let name = ["json", "msgpack", "cbor", ""][usize::from(encoding % 4)];
                let answer = HandshakeResponse {
                    protocol_version: 2,
                    capabilities: capabilities(limits),
                    success,
                    error: None,
                    encoding: name.to_owned(),
                };
                let bytes = frame_bytes(FrameType::HandshakeResponse, Encoding::Json, &answer);
                self.feed(&bytes, split);
            }
            Op::Input(bytes) => self.input(&bytes),
            Op::Frame { type_byte, payload } => self.input(&raw_frame(type_byte, &payload)),
            Op::Respond {
                pick,
                stray,
                decision,
                as_json,
                split,
            } => {
                let target = if stray { None } else { self.pick(pick) };
                let cid = target
                    .as_ref()
                    .map_or_else(|| "stray".to_owned(), |(_, c)| c.clone());
                let mut response = match decision % 4 {
                    0 => AgentResponse::allow(),
                    1 => AgentResponse::block(403, "no"),
                    2 => AgentResponse::new(Decision::Redirect {
                        url: "https://example.com/".into(),
                        status: 302,
                    }),
                    _ => {
                        let mut r = AgentResponse::allow();
                        r.needs_more = true;
                        r.request_body_mutation = Some(BodyMutation::replace(0, &b"x"[..]));
                        r.audit.confidence = Some(0.5);
                        r
                    }
                };
                response.set_correlation_id(&cid);
                let encoding = if as_json {
                    Encoding::Json
                } else {
                    self.encoding()
                };
                let bytes = frame_bytes(FrameType::AgentResponse, encoding, &response);
                // Earlier arbitrary input may have left the stream mid-frame; this frame then
                // completes that one instead of being read as itself.
                let clean = self.stream.at_boundary();
                self.feed(&bytes, split);
                self.drain_events();
                if let (Some((id, _)), true) = (target, clean) {
                    assert!(
                        !self.outstanding.contains_key(&id),
                        "an answer for pending request {id} did not end it"
                    );
                }
            }
            Op::MalformedResponse { pick, salvageable } => {
                let target = self.pick(pick);
                let was_open = self.conn.state() == ConnectionState::Open;
                let clean = self.stream.at_boundary();
                let payload = if salvageable {
                    let cid = target.as_ref().map_or("stray", |(_, c)| c.as_str());
                    serde_json::json!({
                        "version": 2,
                        "decision": {"bogus": 1},
                        "audit": {"custom": {"correlation_id": cid}},
                    })
                } else {
                    serde_json::json!({"version": "two"})
                };
                // JSON is read in either session encoding (the `{` sniff).
                let bytes = raw_frame(0x20, &serde_json::to_vec(&payload).unwrap());
                self.input(&bytes);
                self.drain_events();
                if was_open && clean {
                    match (salvageable, target) {
                        (true, Some((id, _))) => {
                            assert!(!self.outstanding.contains_key(&id));
                            assert_eq!(self.conn.state(), ConnectionState::Open);
                        }
                        (false, _) => assert_eq!(self.conn.state(), ConnectionState::Closed),
                        (true, None) => {}
                    }
                }
            }
            Op::Submit {
                cid: n,
                event,
                timeout_ms,
            } => {
                let cid = cid(n);
                let event = self.build_event(cid.clone(), &event);
                // What the connection queued before (cancels, pings) goes ahead of the event.
                self.conn.flush_messages();
                let queued = self.conn.codec.pending_transmit();
                let in_flight = self.conn.in_flight();
                let open = self.conn.state() == ConnectionState::Open;
                let duplicate = self.is_pending(&cid);
                let timeout = timeout_ms.map(|ms| Duration::from_millis(u64::from(ms)));
                match self.conn.send_event(self.now, event, timeout) {
                    Ok(id) => {
                        assert!(open, "accepted while not open");
                        assert!(!cid.is_empty() && !duplicate, "accepted cid {cid:?}");
                        assert!(self.last_id.is_none_or(|last| id > last), "id reused");
                        self.last_id = Some(id);
                        self.outstanding.insert(id, cid.clone());
                        self.ever_accepted.insert(cid);
                        self.accepted += 1;
                    }
                    Err(e) => {
                        assert_eq!(self.conn.codec.pending_transmit(), queued, "{e}: queued");
                        assert_eq!(self.conn.in_flight(), in_flight, "{e}: tracked");
                        if open && !cid.is_empty() && duplicate {
                            assert!(matches!(e, SubmitError::DuplicateCorrelationId(_)), "{e}");
                        }
                    }
                }
            }
            Op::Cancel { cid: n, reason } => {
                let cid = cid(n);
                let expected = self.is_pending(&cid);
                let reason = CancelReason::from_uds_code(i64::from(reason % 7));
                assert_eq!(self.conn.cancel(self.now, &cid, reason), expected);
                self.drain_events();
                assert!(!self.is_pending(&cid), "cancelled {cid} still pending");
            }
            Op::FlowControl {
                action,
                cid: n,
                buffer,
            } => {
                let signal = FlowControl {
                    action: FlowAction::from_code(i64::from(action % 3) + 1).unwrap(),
                    correlation_id: n.map(cid),
                    buffer_available: buffer.map(u64::from),
                    timestamp_ms: 0,
                };
                let bytes = frame_bytes(FrameType::FlowControl, self.encoding(), &signal);
                self.input(&bytes);
            }
            Op::Health { state } => {
                let status = HealthStatus {
                    agent_id: "fuzz-agent".into(),
                    state: HealthState::from_wire(i64::from(state % 4) + 1).unwrap(),
                    message: None,
                    timestamp_ms: 0,
                };
                let bytes = frame_bytes(FrameType::HealthStatus, self.encoding(), &status);
                self.input(&bytes);
            }
            Op::Pong { sequence } => {
                let pong = Ping {
                    sequence: u64::from(sequence),
                    timestamp_ms: 0,
                };
                let bytes = frame_bytes(FrameType::Pong, Encoding::Json, &pong);
                self.input(&bytes);
            }
            Op::Ping => {
                self.conn.ping(self.now);
            }
            Op::Advance { ms } => self.advance(Duration::from_millis(u64::from(ms))),
            Op::AdvanceSecs { secs } => self.advance(Duration::from_secs(u64::from(secs))),
            Op::Transmit => self.transmit(),
            Op::Eof => self.conn.handle_eof(),
            Op::IoError => self.conn.handle_closed(ConnectionError::transport("fuzz")),
            Op::Close => self.conn.close(),
        }
        self.drain_events();
    }

    fn advance(&mut self, by: Duration) {
        self.now += by;
        self.conn.handle_timeout(self.now);
        // Timers settle: at most a couple more rounds at the same instant (a ping that was
        // answered by other traffic is cleared in one round and the next one sent in another).
        let mut rounds = 0;
        while let Some(at) = self.conn.poll_timeout() {
            if at > self.now {
                break;
            }
            rounds += 1;
            assert!(rounds <= 3, "poll_timeout stays at or before now");
            self.conn.handle_timeout(self.now);
        }
    }

    fn transmit(&mut self) {
        let bytes = self.conn.poll_transmit().unwrap_or_default();
        for frame in self.output.push(&bytes) {
            self.check_output(frame);
        }
    }

    fn check_output(&mut self, frame: Frame) {
        match frame.frame_type {
            FrameType::HandshakeRequest => {
                assert!(
                    !self.started_established,
                    "handshake on an established connection"
                );
                serde_json::from_slice::<HandshakeRequest>(&frame.payload).unwrap();
            }
            ty if ty.is_event() => match decode_event(ty, self.encoding(), &frame.payload) {
                Some(Ok(event)) => {
                    assert!(self.ever_accepted.contains(event.correlation_id()));
                    self.event_frames += 1;
                }
                other => panic!("our {ty:?} frame does not decode: {other:?}"),
            },
            FrameType::Cancel => {
                let cancel: Cancel = serde_json::from_slice(&frame.payload).unwrap();
                assert!(self.ever_accepted.contains(&cancel.correlation_id));
                self.cancel_frames += 1;
            }
            FrameType::Ping => {
                serde_json::from_slice::<Ping>(&frame.payload).unwrap();
            }
            other => panic!("the proxy wrote a {other:?} frame"),
        }
    }

    fn drain_events(&mut self) {
        while let Some(event) = self.conn.poll_event() {
            assert!(!self.closed, "event after Closed: {event:?}");
            match event {
                ProxyEvent::Connected(_) => {
                    assert!(!self.started_established && !self.connected);
                    self.connected = true;
                }
                ProxyEvent::Response {
                    id,
                    correlation_id,
                    response,
                } => {
                    let cid = self
                        .outstanding
                        .remove(&id)
                        .unwrap_or_else(|| panic!("second or unknown outcome for {id}"));
                    assert_eq!(&*correlation_id, cid);
                    assert_eq!(response.correlation_id(), Some(cid.as_str()));
                }
                ProxyEvent::Failed {
                    id,
                    correlation_id,
                    error,
                } => {
                    let cid = self
                        .outstanding
                        .remove(&id)
                        .unwrap_or_else(|| panic!("second or unknown outcome for {id}"));
                    assert_eq!(&*correlation_id, cid);
                    if matches!(error, RequestError::Timeout(_) | RequestError::Cancelled(_)) {
                        self.cancels_expected += 1;
                    }
                }
                ProxyEvent::Closed(_) => {
                    assert!(
                        self.outstanding.is_empty(),
                        "Closed before every pending request ended: {:?}",
                        self.outstanding
                    );
                    self.closed = true;
                }
                _ => {}
            }
        }
        assert_eq!(self.conn.in_flight(), self.outstanding.len());
        assert!(self.conn.in_flight() <= self.conn.in_flight_limit() as usize);
        assert_eq!(
            self.closed,
            self.conn.state() == ConnectionState::Closed,
            "state and Closed event disagree"
        );
    }

    fn finish(mut self) {
        self.advance(Duration::from_secs(86_400));
        self.drain_events();
        assert_eq!(
            self.conn.in_flight(),
            0,
            "requests left after every deadline"
        );
        assert!(self.outstanding.is_empty());
        self.transmit();
        assert!(
            !self.output.has_partial(),
            "a partial frame was left queued"
        );
        assert_eq!(self.event_frames, self.accepted, "event frames != accepted");
        assert_eq!(self.cancel_frames, self.cancels_expected, "cancel frames");
    }
}

fuzz_target!(|input: Input| {
    let mut harness = Harness::new(&input.setup);
    harness.drain_events();
    for op in input.ops {
        harness.apply(op);
    }
    harness.finish();
});
