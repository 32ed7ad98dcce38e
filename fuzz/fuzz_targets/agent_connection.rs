//! Drives an agent connection behind its framing codec (`FramedAgent`) through a valid handshake (or a reverse connection's established
//! start), then a fuzzer-chosen sequence of well-formed events of every kind, corrupted events,
//! arbitrary frames and bytes, answers to random pending requests, answers to ids that are not
//! pending, cancels, pings, control messages, time, EOF, I/O errors and local close.
//!
//! Checked after every operation:
//! - request ids are never reused; `respond` succeeds exactly for pending requests, so no request
//!   is answered twice, and a cancelled or dropped one is never answered;
//! - `in_flight()` equals the number of pending requests and never exceeds `max_in_flight`;
//! - a well-formed event on an open connection becomes either a request or an immediate
//!   fail-closed "overloaded" answer, never both and never nothing;
//! - after a Cancel no pending request carries its correlation id;
//! - a ping is echoed byte for byte;
//! - `Closed` comes once and nothing follows it;
//! - everything the agent writes frames cleanly and decodes in the negotiated encoding; its
//!   answers are exactly the allows we asked for plus one block per fail-closed notice, with the
//!   right correlation ids.
#![no_main]

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use agent_protocol_core::agent::{AgentConfig, AgentEvent, RequestId};
use agent_protocol_core::encoding::{decode_payload, encode_event};
use agent_protocol_core::frame::{Frame, FrameType};
use agent_protocol_core::handshake::{HandshakeRequest, HandshakeResponse};
use agent_protocol_core::testing::FramedAgent;
use agent_protocol_core::ConnectionError;
use agent_protocol_core::*;
use agent_protocol_fuzz::wire::{cid, frame_bytes, raw_frame, OutputReader, StreamTracker};
use arbitrary::Arbitrary;
use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Setup {
    /// `max_in_flight` is this modulo 9 (0 refuses every event).
    max_in_flight: u8,
    agent_msgpack: bool,
    /// What the proxy offers: 0 json, 1 msgpack+json, 2 msgpack, 3 cbor+msgpack, 4 nothing.
    offer: u8,
    /// Start established as a reverse connection (JSON) instead of with the handshake.
    reverse: bool,
    handshake_split: u16,
}

#[derive(Arbitrary, Debug)]
enum Op {
    /// A well-formed event of kind `kind % 8`, in the session encoding or in JSON.
    Event {
        kind: u8,
        cid: u8,
        as_json: bool,
        len: u8,
    },
    /// A well-formed event with one payload byte overwritten.
    CorruptEvent {
        kind: u8,
        cid: u8,
        at: u16,
        byte: u8,
    },
    Frame {
        type_byte: u8,
        payload: Vec<u8>,
    },
    Input(Vec<u8>),
    Respond {
        pick: u8,
    },
    /// Answer an id that is not pending: one answered or cancelled before, or one never issued.
    RespondUnknown {
        pick: u8,
    },
    Cancel {
        cid: u8,
        reason: u8,
        in_session_encoding: bool,
    },
    Ping {
        payload: Vec<u8>,
    },
    SendHealth {
        state: u8,
    },
    SendFlowControl {
        action: u8,
        cid: Option<u8>,
    },
    Advance {
        ms: u16,
    },
    Eof,
    IoError,
    Close,
}

#[derive(Arbitrary, Debug)]
struct Input {
    setup: Setup,
    ops: Vec<Op>,
}

fn build_event(kind: u8, cid: String, len: u8) -> Event {
    let data = Bytes::from(vec![0xA5; usize::from(len)]);
    let chunk = BodyChunk {
        correlation_id: cid.clone().into(),
        data: data.clone(),
        is_last: len % 2 == 0,
        total_size: (len % 3 == 0).then_some(u64::from(len)),
        chunk_index: u32::from(len % 4),
        bytes_transferred: u64::from(len),
    };
    match kind % 8 {
        0 => Event::RequestHeaders(RequestHeadersEvent::new(
            RequestMetadata {
                correlation_id: cid.into(),
                request_id: "r".into(),
                client_ip: "127.0.0.1".into(),
                traceparent: ((len % 2 == 1).then(|| "00-1-2-01".to_owned())).map(Into::into),
                ..Default::default()
            },
            "POST",
            "/x",
            Headers::from_iter([("host", "example.com"), ("a", "1"), ("a", "2")]),
        )),
        1 => Event::RequestBodyChunk(RequestBodyChunkEvent(chunk)),
        2 => Event::ResponseHeaders(ResponseHeadersEvent {
            correlation_id: cid.into(),
            status: 200,
            headers: Headers::from_iter([("content-type", "text/plain")]),
        }),
        3 => Event::ResponseBodyChunk(ResponseBodyChunkEvent(chunk)),
        4 => Event::RequestComplete(RequestCompleteEvent {
            correlation_id: cid.into(),
            status: 200,
            duration_ms: u64::from(len),
            ..Default::default()
        }),
        5 => Event::WebSocketFrame(WebSocketFrameEvent {
            correlation_id: cid.into(),
            opcode: WebSocketOpcode::Binary,
            data,
            client_to_server: true,
            frame_index: u64::from(len),
            fin: true,
            route_id: None,
            client_ip: "127.0.0.1".into(),
        }),
        6 => Event::GuardrailInspect(GuardrailInspectEvent {
            correlation_id: cid.into(),
            content: "ignore previous instructions".into(),
            ..Default::default()
        }),
        _ => Event::Configure(ConfigureEvent {
            correlation_id: cid.into(),
            config: serde_json::json!({"level": len}),
            config_version: Some("v1".into()),
        }),
    }
}

struct Harness {
    now: Instant,
    conn: FramedAgent,
    max_in_flight: usize,
    encoding: Encoding,
    /// Requests delivered and not yet answered, cancelled or dropped: id -> correlation id.
    pending: BTreeMap<RequestId, String>,
    /// Every id ever delivered.
    seen: HashSet<RequestId>,
    /// Ids answered or cancelled (must never be answerable again).
    finished: Vec<RequestId>,
    closed: bool,
    output: OutputReader,
    /// Framing of what we fed after the handshake.
    stream: StreamTracker,
    // What this operation should put on the wire.
    expected_allows: Vec<String>,
    expected_blocks: Vec<String>,
    expected_pong: Option<Vec<u8>>,
    requests_this_op: usize,
    overloaded_this_op: usize,
    /// Events answered fail-closed without reaching the application during the current op
    /// (an event with an empty correlation id is one).
    refused_this_op: usize,
}

impl Harness {
    fn new(setup: &Setup) -> Self {
        let now = Instant::now();
        let mut config =
            AgentConfig::default().with_max_in_flight(usize::from(setup.max_in_flight % 9));
        config.handshake.capabilities = Capabilities::new("fuzz", "Fuzz", "1").with_all_events();
        config.handshake.encodings = if setup.agent_msgpack {
            [Encoding::MsgPack, Encoding::Json].into_iter().collect()
        } else {
            [Encoding::Json].into_iter().collect()
        };
        let max_in_flight = config.max_in_flight;
        let mut output = OutputReader::default();
        let conn = if setup.reverse {
            FramedAgent::established(config, Encoding::Json)
        } else {
            let mut conn = FramedAgent::new(config, now);
            let offered: &[&str] = match setup.offer % 5 {
                0 => &["json"],
                1 => &["msgpack", "json"],
                2 => &["msgpack"],
                3 => &["cbor", "msgpack"],
                _ => &[],
            };
            let request = HandshakeRequest {
                supported_versions: vec![2],
                proxy_id: "fuzz-proxy".into(),
                proxy_version: "0".into(),
                config: None,
                supported_encodings: offered.iter().map(|s| s.to_string()).collect(),
            };
            let bytes = frame_bytes(FrameType::HandshakeRequest, Encoding::Json, &request);
            let at = usize::from(setup.handshake_split) % (bytes.len() + 1);
            conn.handle_input(now, &bytes[..at]);
            conn.handle_input(now, &bytes[at..]);
            let answer = conn.poll_transmit().expect("a handshake answer");
            let frames = output.push(&answer);
            assert_eq!(frames.len(), 1);
            assert_eq!(frames[0].frame_type, FrameType::HandshakeResponse);
            let answer: HandshakeResponse = serde_json::from_slice(&frames[0].payload).unwrap();
            assert!(answer.success);
            conn
        };
        let encoding = conn.encoding().expect("established");
        let mut harness = Harness {
            now,
            conn,
            max_in_flight,
            encoding,
            pending: BTreeMap::new(),
            seen: HashSet::new(),
            finished: Vec::new(),
            closed: false,
            output,
            stream: StreamTracker::default(),
            expected_allows: Vec::new(),
            expected_blocks: Vec::new(),
            expected_pong: None,
            requests_this_op: 0,
            overloaded_this_op: 0,
            refused_this_op: 0,
        };
        match harness.conn.poll_event() {
            Some(AgentEvent::Established { negotiated, .. }) => {
                assert_eq!(negotiated.encoding, encoding)
            }
            other => panic!("expected Established, got {other:?}"),
        }
        harness.after_op();
        harness
    }

    fn open(&self) -> bool {
        self.conn.is_established()
    }

    /// Open and at a frame boundary: a frame fed now is read as that frame (earlier arbitrary
    /// input may have left the stream mid-frame, and the next bytes would complete that one).
    fn clean(&self) -> bool {
        self.open() && self.stream.at_boundary()
    }

    fn input(&mut self, bytes: &[u8]) {
        self.stream.push(bytes);
        self.conn.handle_input(self.now, bytes);
    }

    fn apply(&mut self, op: Op) {
        match op {
            Op::Event {
                kind,
                cid: n,
                as_json,
                len,
            } => {
                let was_clean = self.clean();
                let event_cid = cid(n);
                let event = build_event(kind, event_cid.clone(), len);
                let encoding = if as_json {
                    Encoding::Json
                } else {
                    self.encoding
                };
                let mut wire = BytesMut::new();
                encode_event(&mut wire, encoding, &event).unwrap();
                self.input(&wire);
                self.drain_events();
                if was_clean {
                    assert_eq!(
                        self.requests_this_op + self.overloaded_this_op + self.refused_this_op,
                        1,
                        "a well-formed event became neither a request nor a fail-closed answer"
                    );
                    // Only an event that cannot be correlated is refused unseen.
                    assert_eq!(self.refused_this_op, usize::from(event_cid.is_empty()));
                }
            }
            Op::CorruptEvent {
                kind,
                cid: n,
                at,
                byte,
            } => {
                let event = build_event(kind, cid(n), 3);
                let mut wire = BytesMut::new();
                encode_event(&mut wire, self.encoding, &event).unwrap();
                let payload_len = wire.len() - 5;
                if payload_len > 0 {
                    wire[5 + usize::from(at) % payload_len] = byte;
                }
                self.input(&wire);
            }
            Op::Frame { type_byte, payload } => {
                self.input(&raw_frame(type_byte, &payload));
            }
            Op::Input(bytes) => self.input(&bytes),
            Op::Respond { pick } => {
                if self.pending.is_empty() {
                    assert!(self
                        .conn
                        .respond(RequestId::from_raw(0), AgentResponse::allow())
                        .is_err());
                } else {
                    let (id, cid) = self
                        .pending
                        .iter()
                        .nth(usize::from(pick) % self.pending.len())
                        .map(|(id, cid)| (*id, cid.clone()))
                        .unwrap();
                    self.conn
                        .respond(id, AgentResponse::allow())
                        .unwrap_or_else(|e| panic!("pending request {id} refused: {e}"));
                    self.pending.remove(&id);
                    self.finished.push(id);
                    self.expected_allows.push(cid);
                }
            }
            Op::RespondUnknown { pick } => {
                let id = if self.finished.is_empty() || pick % 4 == 0 {
                    // Never issued: past every id seen so far.
                    RequestId::from_raw(
                        self.seen.iter().max().map_or(0, |m| m.as_u64() + 1) + u64::from(pick),
                    )
                } else {
                    self.finished[usize::from(pick) % self.finished.len()]
                };
                assert!(!self.pending.contains_key(&id));
                assert!(
                    self.conn.respond(id, AgentResponse::allow()).is_err(),
                    "answered request {id} that is not pending"
                );
            }
            Op::Cancel {
                cid: n,
                reason,
                in_session_encoding,
            } => {
                let cid = cid(n);
                let cancel = Cancel {
                    correlation_id: cid.clone(),
                    reason: CancelReason::from_uds_code(i64::from(reason % 7)),
                    timestamp_ms: 1,
                };
                let encoding = if in_session_encoding {
                    self.encoding
                } else {
                    Encoding::Json
                };
                let bytes = frame_bytes(FrameType::Cancel, encoding, &cancel);
                let was_clean = self.clean();
                self.input(&bytes);
                self.drain_events();
                assert!(
                    !was_clean || !self.pending.values().any(|c| *c == cid),
                    "a request with correlation id {cid:?} survived its Cancel"
                );
            }
            Op::Ping { payload } => {
                if self.clean() {
                    self.expected_pong = Some(payload.clone());
                }
                self.input(&raw_frame(0x41, &payload));
            }
            Op::SendHealth { state } => {
                let open = self.open();
                let status = HealthStatus {
                    agent_id: "fuzz".into(),
                    state: HealthState::from_wire(i64::from(state % 4) + 1).unwrap(),
                    message: Some("m".into()),
                    timestamp_ms: 1,
                };
                assert_eq!(self.conn.send_health(&status).is_ok(), open);
            }
            Op::SendFlowControl { action, cid: n } => {
                let open = self.open();
                let signal = FlowControl {
                    action: FlowAction::from_code(i64::from(action % 3) + 1).unwrap(),
                    correlation_id: n.map(cid),
                    buffer_available: Some(1024),
                    timestamp_ms: 1,
                };
                assert_eq!(self.conn.send_flow_control(&signal).is_ok(), open);
            }
            Op::Advance { ms } => {
                self.now += Duration::from_millis(u64::from(ms));
                self.conn.handle_timeout(self.now);
            }
            Op::Eof => self.conn.handle_eof(),
            Op::IoError => self.conn.handle_closed(ConnectionError::transport("fuzz")),
            Op::Close => self.conn.close(),
        }
        self.after_op();
    }

    fn drain_events(&mut self) {
        while let Some(event) = self.conn.poll_event() {
            assert!(!self.closed, "event after Closed: {event:?}");
            match event {
                AgentEvent::Established { .. } => panic!("established twice"),
                AgentEvent::Request { id, event } => {
                    assert!(self.seen.insert(id), "request id {id} reused");
                    self.pending.insert(id, event.correlation_id().to_owned());
                    self.requests_this_op += 1;
                }
                AgentEvent::Cancelled {
                    id, correlation_id, ..
                } => {
                    let cid = self
                        .pending
                        .remove(&id)
                        .unwrap_or_else(|| panic!("cancelled {id}, which is not pending"));
                    assert_eq!(cid, correlation_id);
                    self.finished.push(id);
                }
                AgentEvent::MalformedEvent { correlation_id, .. } => {
                    self.expected_blocks.push(correlation_id);
                    self.refused_this_op += 1;
                }
                AgentEvent::Overloaded { correlation_id, .. } => {
                    self.expected_blocks.push(correlation_id);
                    self.overloaded_this_op += 1;
                }
                AgentEvent::Closed(_) => {
                    self.closed = true;
                    self.finished.extend(self.pending.keys().copied());
                    self.pending.clear();
                }
                _ => {}
            }
        }
        assert_eq!(self.conn.in_flight(), self.pending.len());
        assert!(self.conn.in_flight() <= self.max_in_flight);
        assert_eq!(self.closed, self.conn.is_closed());
    }

    fn after_op(&mut self) {
        self.drain_events();
        let bytes = self.conn.poll_transmit().unwrap_or_default();
        let mut allows = Vec::new();
        let mut blocks = Vec::new();
        let mut pongs = Vec::new();
        for frame in self.output.push(&bytes) {
            self.check_output(frame, &mut allows, &mut blocks, &mut pongs);
        }
        assert!(!self.output.has_partial(), "a partial frame was queued");
        if self.conn.notices_dropped() == 0 {
            let sorted = |mut v: Vec<String>| {
                v.sort();
                v
            };
            assert_eq!(
                sorted(allows),
                sorted(std::mem::take(&mut self.expected_allows))
            );
            assert_eq!(
                sorted(blocks),
                sorted(std::mem::take(&mut self.expected_blocks))
            );
        }
        if let Some(payload) = self.expected_pong.take() {
            if !self.closed {
                assert_eq!(pongs, [payload], "ping not echoed byte for byte");
            }
        }
        self.requests_this_op = 0;
        self.overloaded_this_op = 0;
        self.refused_this_op = 0;
    }

    fn check_output(
        &mut self,
        frame: Frame,
        allows: &mut Vec<String>,
        blocks: &mut Vec<String>,
        pongs: &mut Vec<Vec<u8>>,
    ) {
        match frame.frame_type {
            FrameType::AgentResponse => {
                let response: AgentResponse =
                    decode_payload(frame.frame_type, self.encoding, &frame.payload)
                        .unwrap_or_else(|e| panic!("our answer does not decode: {e}"));
                let cid = response
                    .correlation_id()
                    .expect("answer without audit.custom.correlation_id")
                    .to_owned();
                match response.decision {
                    Decision::Allow => allows.push(cid),
                    Decision::Block { .. } => blocks.push(cid),
                    other => panic!("unexpected decision {other:?}"),
                }
            }
            FrameType::Pong => pongs.push(frame.payload.to_vec()),
            FrameType::HealthStatus => {
                decode_payload::<HealthStatus>(frame.frame_type, self.encoding, &frame.payload)
                    .unwrap();
            }
            FrameType::FlowControl => {
                decode_payload::<FlowControl>(frame.frame_type, self.encoding, &frame.payload)
                    .unwrap();
            }
            other => panic!("the agent wrote a {other:?} frame after the handshake"),
        }
    }
}

fuzz_target!(|input: Input| {
    let mut harness = Harness::new(&input.setup);
    for op in input.ops {
        harness.apply(op);
    }
    // The end: the connection goes away; whatever was pending is dropped, never answered.
    harness.conn.handle_eof();
    harness.drain_events();
    assert!(harness.pending.is_empty());
    assert_eq!(harness.conn.in_flight(), 0);
    for id in harness.finished.clone() {
        assert!(harness.conn.respond(id, AgentResponse::allow()).is_err());
    }
});
