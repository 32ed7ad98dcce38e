//! Codec micro-benchmarks: the 20-header RequestHeaders event and typical AgentResponses
//! through `encoding::encode_frame` / `decode_event` / `decode_payload` in both encodings;
//! 64 KiB body chunks; header conversions; the frame decoder over a buffer of many frames.

use std::hint::black_box;

use agent_protocol_benches::{
    allow_with_header_ops, block_with_audit, body_chunks, request_headers, ENCODINGS,
};
use agent_protocol_core::encoding::{decode_event, decode_payload, encode_frame};
use agent_protocol_core::frame::{Decoded, FrameDecoder, FrameType};
use agent_protocol_core::{AgentResponse, ByteStr, Event, Headers};
use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

fn encoded<T: serde::Serialize>(ty: FrameType, enc: agent_protocol_core::Encoding, v: &T) -> Bytes {
    let mut out = BytesMut::new();
    encode_frame(&mut out, ty, enc, v).expect("encode");
    out.freeze()
}

fn request_headers_codec(c: &mut Criterion) {
    let mut g = c.benchmark_group("codec/request_headers_20");
    let event = request_headers("bench-correlation-0001");
    for enc in ENCODINGS {
        let frame = encoded(FrameType::RequestHeaders, enc, &event);
        g.throughput(Throughput::Bytes(frame.len() as u64));
        let mut out = BytesMut::with_capacity(4096);
        g.bench_function(format!("encode/{enc}"), |b| {
            b.iter(|| {
                out.clear();
                encode_frame(&mut out, FrameType::RequestHeaders, enc, black_box(&event))
                    .expect("encode");
                black_box(out.len())
            })
        });
        let payload = frame.slice(5..);
        g.bench_function(format!("decode/{enc}"), |b| {
            b.iter(|| {
                let e = decode_event(FrameType::RequestHeaders, enc, black_box(&payload))
                    .expect("event type")
                    .expect("decode");
                black_box(e)
            })
        });
    }
    g.finish();
}

fn response_codec(c: &mut Criterion) {
    let mut g = c.benchmark_group("codec/agent_response");
    let cases: [(&str, AgentResponse); 2] = [
        (
            "allow_2_header_ops",
            allow_with_header_ops("bench-correlation-0001"),
        ),
        (
            "block_with_audit",
            block_with_audit("bench-correlation-0001"),
        ),
    ];
    for (name, response) in &cases {
        for enc in ENCODINGS {
            let frame = encoded(FrameType::AgentResponse, enc, response);
            g.throughput(Throughput::Bytes(frame.len() as u64));
            let mut out = BytesMut::with_capacity(1024);
            g.bench_function(format!("{name}/encode/{enc}"), |b| {
                b.iter(|| {
                    out.clear();
                    encode_frame(&mut out, FrameType::AgentResponse, enc, black_box(response))
                        .expect("encode");
                    black_box(out.len())
                })
            });
            let payload = frame.slice(5..);
            g.bench_function(format!("{name}/decode/{enc}"), |b| {
                b.iter(|| {
                    let r: AgentResponse =
                        decode_payload(FrameType::AgentResponse, enc, black_box(&payload))
                            .expect("decode");
                    black_box(r)
                })
            });
        }
    }
    g.finish();
}

fn body_chunk_codec(c: &mut Criterion) {
    let mut g = c.benchmark_group("codec/body_chunk_64k");
    let body = Bytes::from(vec![b'a'; 64 * 1024]);
    let chunk = body_chunks("bench-correlation-0001", &body, 64 * 1024)
        .pop()
        .expect("one chunk");
    let event = Event::RequestBodyChunk(chunk);
    g.throughput(Throughput::Bytes(body.len() as u64));
    for enc in ENCODINGS {
        let mut out = BytesMut::with_capacity(128 * 1024);
        g.bench_function(format!("encode/{enc}"), |b| {
            b.iter(|| {
                out.clear();
                agent_protocol_core::encoding::encode_event(&mut out, enc, black_box(&event))
                    .expect("encode");
                black_box(out.len())
            })
        });
        let mut frame = BytesMut::new();
        agent_protocol_core::encoding::encode_event(&mut frame, enc, &event).expect("encode");
        let payload = frame.freeze().slice(5..);
        g.bench_function(format!("decode/{enc}"), |b| {
            b.iter(|| {
                let e = decode_event(FrameType::RequestBodyChunk, enc, black_box(&payload))
                    .expect("event type")
                    .expect("decode");
                black_box(e)
            })
        });
    }
    g.finish();
}

fn headers_conversion(c: &mut Criterion) {
    let mut g = c.benchmark_group("headers_20");
    let headers = request_headers("c").headers;
    let pairs: Vec<(String, String)> = headers
        .iter_flat()
        .map(|(n, v)| (n.to_owned(), v.to_owned()))
        .collect();
    g.bench_function("iter_flat", |b| {
        b.iter(|| {
            let mut total = 0usize;
            for (n, v) in black_box(&headers).iter_flat() {
                total += n.len() + v.len();
            }
            black_box(total)
        })
    });
    g.bench_function("into_flat_collect", |b| {
        b.iter_batched(
            || headers.clone(),
            |h| black_box(h.into_flat().collect::<Vec<(ByteStr, ByteStr)>>()),
            BatchSize::SmallInput,
        )
    });
    g.bench_function("from_iter_str", |b| {
        b.iter(|| {
            let h: Headers = black_box(&pairs)
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_str()))
                .collect();
            black_box(h)
        })
    });
    g.bench_function("from_iter_owned", |b| {
        b.iter_batched(
            || pairs.clone(),
            |p| black_box(p.into_iter().collect::<Headers>()),
            BatchSize::SmallInput,
        )
    });
    g.bench_function("clone", |b| {
        b.iter(|| black_box(black_box(&headers).clone()))
    });
    let event = request_headers("bench-correlation-0001");
    g.bench_function("request_event_clone", |b| {
        b.iter(|| black_box(black_box(&event).clone()))
    });
    g.finish();
}

fn frame_decoder(c: &mut Criterion) {
    let mut g = c.benchmark_group("frame_decoder");
    const FRAMES: usize = 1000;
    for enc in ENCODINGS {
        let event = request_headers("bench-correlation-0001");
        let mut wire = BytesMut::new();
        for _ in 0..FRAMES {
            encode_frame(&mut wire, FrameType::RequestHeaders, enc, &event).expect("encode");
        }
        g.throughput(Throughput::Bytes(wire.len() as u64));
        g.bench_function(format!("1000_request_frames/{enc}"), |b| {
            b.iter_batched(
                || wire.clone(),
                |mut buf| {
                    let mut decoder = FrameDecoder::new();
                    let mut n = 0usize;
                    while let Some(Decoded::Frame(f)) = decoder.decode(&mut buf).expect("frame") {
                        n += f.payload.len();
                    }
                    black_box(n)
                },
                BatchSize::LargeInput,
            )
        });
    }
    g.finish();
}

criterion_group!(
    benches,
    request_headers_codec,
    response_codec,
    body_chunk_codec,
    headers_conversion,
    frame_decoder
);
criterion_main!(benches);
