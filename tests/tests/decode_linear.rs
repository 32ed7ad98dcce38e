//! Decoding is linear in the input: an event with 100,000 distinct header names costs about ten
//! times one with 10,000, in JSON, in MessagePack, and through `Headers::append_exact` (how the
//! gRPC conversion rebuilds headers). A quadratic merge (each new name compared with every
//! earlier one, as before) costs about a hundred times as much, and took ~17 s of CPU for the
//! 100,000-name event.
//!
//! The element scan that runs before every decode (`element_count::count_elements`) is held to
//! the same bound, over 10x the elements in both encodings, for many tiny elements and for
//! deep nesting (it keeps no stack).
//!
//! Measured in CPU time of this thread (not wall time), best of three, as a ratio within one
//! run: the bound (30x for 10x the names) is far from both the linear (~10x) and the quadratic
//! (~100x) cost, so machine noise cannot flip the verdict.

use std::time::Duration;

use agent_protocol_core::element_count::count_elements;
use agent_protocol_core::encoding::decode_event_with_limits;
use agent_protocol_core::frame::FrameType;
use agent_protocol_core::limits::{LimitExceeded, MessageLimits};
use agent_protocol_core::{Encoding, Event, Headers};

fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Best-of-three CPU time of `work`.
fn cpu_cost(mut work: impl FnMut()) -> Duration {
    (0..3)
        .map(|_| {
            let start = thread_cpu_time();
            work();
            thread_cpu_time() - start
        })
        .min()
        .unwrap()
}

fn json_event(names: usize) -> Vec<u8> {
    let mut out = String::from(r#"{"correlation_id":"c","status":200,"headers":{"#);
    for i in 0..names {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&format!(r#""h{i}":["v"]"#));
    }
    out.push_str("}}");
    out.into_bytes()
}

fn msgpack_event(names: usize) -> Vec<u8> {
    use rmp::encode::*;
    let mut out = Vec::new();
    write_map_len(&mut out, 3).unwrap();
    write_str(&mut out, "correlation_id").unwrap();
    write_str(&mut out, "c").unwrap();
    write_str(&mut out, "status").unwrap();
    write_uint(&mut out, 200).unwrap();
    write_str(&mut out, "headers").unwrap();
    write_map_len(&mut out, names as u32).unwrap();
    for i in 0..names {
        write_str(&mut out, &format!("h{i}")).unwrap();
        write_array_len(&mut out, 1).unwrap();
        write_str(&mut out, "v").unwrap();
    }
    out
}

fn decode(encoding: Encoding, payload: &[u8], names: usize) {
    let event = decode_event_with_limits(
        FrameType::ResponseHeaders,
        encoding,
        payload,
        MessageLimits::UNLIMITED,
    )
    .unwrap()
    .unwrap();
    let Event::ResponseHeaders(e) = event else {
        panic!("{event:?}")
    };
    assert_eq!(e.headers.len(), names);
}

fn assert_linear(what: &str, small: Duration, large: Duration) {
    let ratio = large.as_secs_f64() / small.as_secs_f64().max(1e-6);
    eprintln!("{what}: 10x smaller {small:?}, 10x larger {large:?}, ratio {ratio:.1}");
    assert!(
        ratio < 30.0,
        "{what}: 10x the names cost {ratio:.1}x the CPU time ({small:?} -> {large:?}): not linear"
    );
}

#[test]
fn json_decoding_is_linear_in_distinct_header_names() {
    let (small, large) = (json_event(10_000), json_event(100_000));
    let a = cpu_cost(|| decode(Encoding::Json, &small, 10_000));
    let b = cpu_cost(|| decode(Encoding::Json, &large, 100_000));
    assert_linear("JSON", a, b);
}

#[test]
fn msgpack_decoding_is_linear_in_distinct_header_names() {
    let (small, large) = (msgpack_event(10_000), msgpack_event(100_000));
    let a = cpu_cost(|| decode(Encoding::MsgPack, &small, 10_000));
    let b = cpu_cost(|| decode(Encoding::MsgPack, &large, 100_000));
    assert_linear("MessagePack", a, b);
}

#[test]
fn append_exact_is_linear_in_distinct_header_names() {
    let pairs = |n: usize| -> Vec<(String, String)> {
        (0..n).map(|i| (format!("h{i}"), "v".to_owned())).collect()
    };
    let build = |pairs: &[(String, String)]| {
        let mut headers = Headers::new();
        for (n, v) in pairs {
            headers.append_exact(n.clone(), v.clone());
        }
        // Repeats of every name merge into the existing entries, found through the index.
        for (n, v) in pairs.iter().step_by(7) {
            headers.append_exact(n.clone(), v.clone());
        }
        assert_eq!(headers.len(), pairs.len());
    };
    let (small, large) = (pairs(10_000), pairs(100_000));
    let a = cpu_cost(|| build(&small));
    let b = cpu_cost(|| build(&large));
    assert_linear("append_exact", a, b);
}

#[test]
fn default_limits_refuse_the_100_000_name_event_in_both_encodings() {
    for (encoding, payload) in [
        (Encoding::Json, json_event(100_000)),
        (Encoding::MsgPack, msgpack_event(100_000)),
    ] {
        let refusal = |limits: MessageLimits| {
            decode_event_with_limits(FrameType::ResponseHeaders, encoding, &payload, limits)
                .unwrap()
                .unwrap_err()
                .limit
        };
        // 200,003 elements: refused unread by the element budget...
        assert_eq!(
            refusal(MessageLimits::default()),
            Some(LimitExceeded::Elements { max: 100_000 }),
            "{encoding}"
        );
        // ... and, were the budget lifted, by the header limits while decoding.
        assert_eq!(
            refusal(MessageLimits::default().with_max_elements(usize::MAX)),
            Some(LimitExceeded::HeaderCount { max: 2000 }),
            "{encoding}"
        );
    }
}

/// Best-of-three CPU time of scanning `payload` whole, checking it has `elements`.
fn scan_cost(encoding: Encoding, payload: &[u8], elements: usize) -> Duration {
    cpu_cost(|| {
        let n = count_elements(encoding, std::hint::black_box(payload), usize::MAX);
        assert_eq!(n, elements);
    })
}

/// `[0,0,...]`: `n` items of two bytes, the most elements JSON fits in a byte count.
fn json_zeros(n: usize) -> Vec<u8> {
    format!("[{}0]", "0,".repeat(n - 1)).into_bytes()
}

fn msgpack_zeros(n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    rmp::encode::write_array_len(&mut out, n as u32).unwrap();
    out.resize(out.len() + n, 0);
    out
}

#[test]
fn the_element_scan_is_linear_in_both_encodings() {
    // The header events (two elements per name, strings to skip) and bare arrays of zeros.
    let events = |n| {
        [
            (Encoding::Json, json_event(n)),
            (Encoding::MsgPack, msgpack_event(n)),
        ]
    };
    for ((encoding, small), (_, large)) in events(100_000).into_iter().zip(events(1_000_000)) {
        let a = scan_cost(encoding, &small, 2 * 100_000 + 3);
        let b = scan_cost(encoding, &large, 2 * 1_000_000 + 3);
        assert_linear(&format!("{encoding} scan of header names"), a, b);
    }
    let a = scan_cost(Encoding::Json, &json_zeros(1_000_000), 1_000_000);
    let b = scan_cost(Encoding::Json, &json_zeros(10_000_000), 10_000_000);
    assert_linear("JSON scan of an array of zeros", a, b);
    let a = scan_cost(Encoding::MsgPack, &msgpack_zeros(1_000_000), 1_000_000);
    let b = scan_cost(Encoding::MsgPack, &msgpack_zeros(10_000_000), 10_000_000);
    assert_linear("MessagePack scan of an array of zeros", a, b);
}

#[test]
fn the_element_scan_is_linear_in_nesting_depth() {
    let json = |depth: usize| format!("{}{}", "[".repeat(depth), "]".repeat(depth)).into_bytes();
    let a = scan_cost(Encoding::Json, &json(1_000_000), 1_000_000 - 1);
    let b = scan_cost(Encoding::Json, &json(10_000_000), 10_000_000 - 1);
    assert_linear("JSON scan of nested arrays", a, b);
    let msgpack = |depth: usize| vec![0x91u8; depth]; // each array holds the next
    let a = scan_cost(Encoding::MsgPack, &msgpack(1_000_000), 1_000_000);
    let b = scan_cost(Encoding::MsgPack, &msgpack(10_000_000), 10_000_000);
    assert_linear("MessagePack scan of nested arrays", a, b);
}
