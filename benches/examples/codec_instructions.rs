//! Runs one codec operation `N` times, for instruction counting under callgrind (stable where
//! wall time is not). Per-operation counts come from the difference of two runs:
//!
//! ```sh
//! cargo build --release -p agent-protocol-benches --example codec_instructions
//! for n in 1000 2000; do
//!   valgrind --tool=callgrind --callgrind-out-file=cg.$n \
//!     target/release/examples/codec_instructions encode msgpack $n
//! done
//! # (Ir of cg.2000 - Ir of cg.1000) / 1000 = instructions per encode
//! ```
//!
//! Operations: `encode` / `decode` (the 20-header RequestHeaders event through `encode_event`
//! / `decode_event`, what connections use), `encode_response` / `decode_response` (an allow with two header ops),
//! `clone` (cloning the event). Encodings: `json`, `msgpack`.

use std::hint::black_box;

use agent_protocol_benches::{allow_with_header_ops, request_headers};
use agent_protocol_core::encoding::{decode_event, decode_payload, encode_event, encode_frame};
use agent_protocol_core::frame::FrameType;
use agent_protocol_core::{AgentResponse, Encoding, Event};
use bytes::BytesMut;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let op = args.get(1).map(String::as_str).unwrap_or("encode");
    let enc = args
        .get(2)
        .and_then(|e| Encoding::from_name(e))
        .unwrap_or(Encoding::MsgPack);
    let n: u64 = args.get(3).and_then(|n| n.parse().ok()).unwrap_or(1000);

    let event = request_headers("bench-correlation-0001");
    let wrapped = Event::RequestHeaders(event.clone());
    let response = allow_with_header_ops("bench-correlation-0001");
    let mut out = BytesMut::with_capacity(4096);
    let mut request_frame = BytesMut::new();
    encode_frame(&mut request_frame, FrameType::RequestHeaders, enc, &event).expect("encode");
    let request_payload = request_frame.split_off(5).freeze();
    let mut response_frame = BytesMut::new();
    encode_frame(
        &mut response_frame,
        FrameType::AgentResponse,
        enc,
        &response,
    )
    .expect("encode");
    let response_payload = response_frame.split_off(5).freeze();

    for _ in 0..n {
        match op {
            "encode" => {
                out.clear();
                encode_event(&mut out, enc, black_box(&wrapped)).expect("encode");
                black_box(out.len());
            }
            "decode" => {
                let e = decode_event(FrameType::RequestHeaders, enc, black_box(&request_payload))
                    .expect("event type")
                    .expect("decode");
                black_box(e);
            }
            "encode_response" => {
                out.clear();
                encode_frame(
                    &mut out,
                    FrameType::AgentResponse,
                    enc,
                    black_box(&response),
                )
                .expect("encode");
                black_box(out.len());
            }
            "decode_response" => {
                let r: AgentResponse =
                    decode_payload(FrameType::AgentResponse, enc, black_box(&response_payload))
                        .expect("decode");
                black_box(r);
            }
            "clone" => {
                black_box(black_box(&event).clone());
            }
            other => panic!("unknown operation {other}"),
        }
    }
}
