//! Peak memory of decoding the worst 16 MiB messages, measured in this process.
//!
//! A message can decode to far more memory than its bytes: a 1-byte MessagePack `0` in an array
//! becomes a 32-byte `serde_json::Value`, a 9-byte JSON entry `"k1x":1,` a map entry of ~100
//! bytes. Each case below fills one frame (just under the 16 MiB limit) with the cheapest
//! element its message has room for, feeds the frame to a real connection (the agent for an
//! event, the proxy for an answer, as the other side would send it), and measures the growth of
//! the process's peak resident set (VmHWM, reset through `/proc/self/clear_refs` before each
//! case) against the bytes received. The bound is 4x: the frame buffer itself is 1x.
//!
//! Every case must also end fail-closed: the agent answers a block and never hands the event to
//! the application; the proxy fails the request with a typed error, never an allow.
//!
//! Run in release with `--nocapture` to see the table:
//! `cargo test --release -p agent-protocol-tests --test decode_memory -- --nocapture`.

use std::time::{Duration, Instant};

use agent_protocol_core::agent::{AgentConfig, AgentEvent};
use agent_protocol_core::encoding::encode_frame;
use agent_protocol_core::frame::{self, Decoded, FrameDecoder, FrameType, MAX_FRAME_LEN};
use agent_protocol_core::limits::{LimitExceeded, DEFAULT_MAX_ELEMENTS};
use agent_protocol_core::proxy::{ProxyConfig, ProxyEvent};
use agent_protocol_core::testing::{FramedAgent, FramedProxy};
use agent_protocol_core::*;
use bytes::BytesMut;

/// Payload bytes per case: the largest frame, less room for the frame header.
const TARGET: usize = MAX_FRAME_LEN as usize - 64;

/// Largest peak RSS growth allowed per byte received.
const MAX_GROWTH_RATIO: f64 = 4.0;

fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .unwrap_or_else(|| panic!("{field} in /proc/self/status"));
    line[field.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .expect("a number of kB")
}

/// Returns freed heap to the kernel, then makes the peak resident set the current one, so that
/// the next peak measures the next case alone.
fn reset_peak() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases free heap memory; it has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
    std::fs::write("/proc/self/clear_refs", "5").expect("reset VmHWM through clear_refs");
}

/// Peak resident growth (bytes) while `work` runs, and its wall time.
fn peak_growth<R>(work: impl FnOnce() -> R) -> (u64, Duration, R) {
    reset_peak();
    let before = status_kib("VmRSS:");
    let start = Instant::now();
    let result = work();
    let elapsed = start.elapsed();
    let peak = status_kib("VmHWM:");
    (peak.saturating_sub(before) * 1024, elapsed, result)
}

/// `"<key>":<value>,` entries with distinct short keys until `budget` bytes are used or there
/// are `max_entries` of them.
fn json_entries(out: &mut Vec<u8>, budget: usize, max_entries: usize, value: &str) {
    const DIGITS: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let end = out.len() + budget;
    let mut first = true;
    for mut i in 0..max_entries {
        if out.len() + 16 > end {
            break;
        }
        if !first {
            out.push(b',');
        }
        first = false;
        out.push(b'"');
        loop {
            out.push(DIGITS[i % DIGITS.len()]);
            i /= DIGITS.len();
            if i == 0 {
                break;
            }
        }
        out.extend_from_slice(b"\":");
        out.extend_from_slice(value.as_bytes());
    }
}

/// `head` + filler + `tail`, the filler sized so the whole is about [`TARGET`] bytes.
fn json_message(head: &str, fill: impl FnOnce(&mut Vec<u8>, usize), tail: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(TARGET);
    out.extend_from_slice(head.as_bytes());
    fill(&mut out, TARGET - head.len() - tail.len());
    out.extend_from_slice(tail.as_bytes());
    assert!(out.len() <= TARGET);
    out
}

/// `"",` strings until `budget` bytes are used.
fn json_empty_strings(out: &mut Vec<u8>, budget: usize) {
    let n = budget / 3;
    for i in 0..n {
        out.extend_from_slice(if i == 0 { b"\"\"" } else { b",\"\"" });
    }
}

fn configure_json_object(entries: usize) -> Vec<u8> {
    json_message(
        r#"{"correlation_id":"c1","config":{"#,
        |out, budget| json_entries(out, budget, entries, "1"),
        "}}",
    )
}

fn configure_msgpack_array(items: usize) -> Vec<u8> {
    use rmp::encode::*;
    let mut out = Vec::with_capacity(TARGET);
    write_map_len(&mut out, 2).unwrap();
    write_str(&mut out, "correlation_id").unwrap();
    write_str(&mut out, "c1").unwrap();
    write_str(&mut out, "config").unwrap();
    let n = (TARGET - out.len() - 5).min(items);
    write_array_len(&mut out, n as u32).unwrap();
    out.resize(out.len() + n, 0x00); // positive fixint 0, one byte each
    out
}

fn guardrail_json_metadata(entries: usize) -> Vec<u8> {
    json_message(
        r#"{"correlation_id":"c1","inspection_type":"pii_detection","content":"","metadata":{"#,
        |out, budget| json_entries(out, budget, entries, "\"\""),
        "}}",
    )
}

fn response_json_tags() -> Vec<u8> {
    json_message(
        r#"{"version":2,"decision":"allow","audit":{"custom":{"correlation_id":"c1"},"tags":["#,
        json_empty_strings,
        "]}}",
    )
}

fn response_msgpack_tags() -> Vec<u8> {
    use rmp::encode::*;
    let mut out = Vec::with_capacity(TARGET);
    write_map_len(&mut out, 3).unwrap();
    write_str(&mut out, "version").unwrap();
    write_uint(&mut out, 2).unwrap();
    write_str(&mut out, "decision").unwrap();
    write_str(&mut out, "allow").unwrap();
    write_str(&mut out, "audit").unwrap();
    write_map_len(&mut out, 2).unwrap();
    write_str(&mut out, "custom").unwrap();
    write_map_len(&mut out, 1).unwrap();
    write_str(&mut out, "correlation_id").unwrap();
    write_str(&mut out, "c1").unwrap();
    write_str(&mut out, "tags").unwrap();
    let n = TARGET - out.len() - 5;
    write_array_len(&mut out, n as u32).unwrap();
    out.resize(out.len() + n, 0xa0); // fixstr of length 0, one byte each
    out
}

fn response_json_custom() -> Vec<u8> {
    json_message(
        r#"{"version":2,"decision":"allow","audit":{"custom":{"correlation_id":"c1","#,
        |out, budget| json_entries(out, budget, usize::MAX, "1"),
        "}}}",
    )
}

fn frame_of(frame_type: FrameType, payload: &[u8]) -> BytesMut {
    let mut wire = BytesMut::with_capacity(payload.len() + 8);
    frame::encode_frame(&mut wire, frame_type, payload).expect("fits in a frame");
    wire
}

/// What the agent did with an event: refused it fail-closed (the status of its block) or
/// handed it to the application.
// The payloads are read through `Debug`, in failure messages.
#[allow(dead_code)]
#[derive(Debug)]
enum AgentOutcome {
    Refused {
        status: u16,
        limit: Option<LimitExceeded>,
    },
    HandedOver,
    Other(String),
}

fn agent_case(encoding: Encoding, frame_type: FrameType, payload: &[u8]) -> (u64, AgentOutcome) {
    let wire = frame_of(frame_type, payload);
    let mut conn = FramedAgent::established(AgentConfig::default(), encoding);
    let (growth, elapsed, outcome) = peak_growth(|| {
        conn.handle_input(Instant::now(), &wire);
        let mut limit = None;
        let mut handed_over = false;
        while let Some(ev) = conn.poll_event() {
            match ev {
                AgentEvent::MalformedEvent { error, .. } => limit = error.limit,
                AgentEvent::Request { .. } => handed_over = true,
                _ => {}
            }
        }
        if handed_over {
            return AgentOutcome::HandedOver;
        }
        let mut out = BytesMut::new();
        while let Some(bytes) = conn.poll_transmit() {
            out.extend_from_slice(&bytes);
        }
        let mut decoder = FrameDecoder::new();
        match decoder.decode(&mut out) {
            Ok(Some(Decoded::Frame(f))) => {
                match encoding::decode_payload::<AgentResponse>(f.frame_type, encoding, &f.payload)
                {
                    Ok(AgentResponse {
                        decision: Decision::Block { status, .. },
                        ..
                    }) => AgentOutcome::Refused { status, limit },
                    other => AgentOutcome::Other(format!("{other:?}")),
                }
            }
            other => AgentOutcome::Other(format!("{other:?}")),
        }
    });
    eprintln!("  decode + answer: {elapsed:?}");
    (growth, outcome)
}

fn open_proxy(encoding: Encoding) -> FramedProxy {
    let now = Instant::now();
    let mut conn = FramedProxy::new(ProxyConfig::default(), now);
    let _hello = conn.poll_transmit();
    let answer = serde_json::json!({"protocol_version": 2, "capabilities": {}, "success": true, "encoding": encoding.as_str()});
    let mut wire = BytesMut::new();
    encode_frame(
        &mut wire,
        FrameType::HandshakeResponse,
        Encoding::Json,
        &answer,
    )
    .unwrap();
    conn.handle_input(now, &wire);
    assert!(matches!(conn.poll_event(), Some(ProxyEvent::Connected(_))));
    let meta = RequestMetadata {
        correlation_id: "c1".into(),
        ..Default::default()
    };
    let event = Event::RequestHeaders(RequestHeadersEvent::new(meta, "GET", "/", Headers::new()));
    conn.send_event(now, event, None).expect("submitted");
    while conn.poll_transmit().is_some() {}
    conn
}

/// What the proxy did with an answer.
// The payloads are read through `Debug`, in failure messages.
#[allow(dead_code)]
#[derive(Debug)]
enum ProxyOutcome {
    Failed(RequestError),
    Delivered(Decision),
    Other(String),
}

fn proxy_case(encoding: Encoding, payload: &[u8]) -> (u64, ProxyOutcome) {
    let wire = frame_of(FrameType::AgentResponse, payload);
    let mut conn = open_proxy(encoding);
    let (growth, elapsed, outcome) = peak_growth(|| {
        conn.handle_input(Instant::now(), &wire);
        match conn.poll_event() {
            Some(ProxyEvent::Failed { error, .. }) => ProxyOutcome::Failed(error),
            Some(ProxyEvent::Response { response, .. }) => {
                ProxyOutcome::Delivered(response.decision)
            }
            other => ProxyOutcome::Other(format!("{other:?}")),
        }
    });
    eprintln!("  decode: {elapsed:?}");
    (growth, outcome)
}

fn report(name: &str, bytes: usize, growth: u64) -> f64 {
    let ratio = growth as f64 / bytes as f64;
    eprintln!(
        "{name}: {bytes} bytes received, peak RSS growth {:.1} MiB, {ratio:.2}x",
        growth as f64 / (1 << 20) as f64
    );
    ratio
}

/// A message for the agent: name, encoding, frame type, and its builder (given the most
/// elements it may have).
type AgentCase = (&'static str, Encoding, FrameType, fn(usize) -> Vec<u8>);

/// An answer for the proxy: name, encoding, builder.
type ProxyCase = (&'static str, Encoding, fn() -> Vec<u8>);

/// The peak resident set is per process: tests measuring it in parallel would measure each
/// other, so each holds this lock, and runs its cases in sequence.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn the_worst_16_mib_messages_cost_under_4x_their_bytes_and_are_refused() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut failures = Vec::new();

    let agent_cases: [AgentCase; 3] = [
        (
            "Configure, JSON object of tiny entries",
            Encoding::Json,
            FrameType::Configure,
            configure_json_object,
        ),
        (
            "Configure, MessagePack array of 1-byte zeros",
            Encoding::MsgPack,
            FrameType::Configure,
            configure_msgpack_array,
        ),
        (
            "GuardrailInspect, JSON metadata of tiny entries",
            Encoding::Json,
            FrameType::GuardrailInspect,
            guardrail_json_metadata,
        ),
    ];
    for (name, encoding, frame_type, build) in agent_cases {
        let payload = build(usize::MAX);
        let (growth, outcome) = agent_case(encoding, frame_type, &payload);
        let ratio = report(name, payload.len(), growth);
        eprintln!("  agent: {outcome:?}");
        if ratio >= MAX_GROWTH_RATIO {
            failures.push(format!("{name}: {ratio:.2}x"));
        }
        if !matches!(
            outcome,
            AgentOutcome::Refused {
                status: 413,
                limit: Some(LimitExceeded::Elements { .. })
            }
        ) {
            failures.push(format!("{name}: not refused fail-closed: {outcome:?}"));
        }
    }

    let proxy_cases: [ProxyCase; 3] = [
        (
            "AgentResponse, JSON audit.tags of empty strings",
            Encoding::Json,
            response_json_tags,
        ),
        (
            "AgentResponse, MessagePack audit.tags of 1-byte empty strings",
            Encoding::MsgPack,
            response_msgpack_tags,
        ),
        (
            "AgentResponse, JSON audit.custom of tiny entries",
            Encoding::Json,
            response_json_custom,
        ),
    ];
    for (name, encoding, build) in proxy_cases {
        let payload = build();
        let (growth, outcome) = proxy_case(encoding, &payload);
        let ratio = report(name, payload.len(), growth);
        eprintln!("  proxy: {outcome:?}");
        if ratio >= MAX_GROWTH_RATIO {
            failures.push(format!("{name}: {ratio:.2}x"));
        }
        let over_budget = |e: &DecodeError| matches!(e.limit, Some(LimitExceeded::Elements { .. }));
        if !matches!(&outcome, ProxyOutcome::Failed(RequestError::MalformedResponse(e)) if over_budget(e))
        {
            failures.push(format!("{name}: not failed: {outcome:?}"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// Peak growth allowed for a message within the default element budget: its bytes (the frame
/// buffer, the strings) a few times over, plus a bounded cost per element.
fn within_budget_bound(bytes: usize) -> u64 {
    const PER_ELEMENT: u64 = 200;
    4 * bytes as u64 + DEFAULT_MAX_ELEMENTS as u64 * PER_ELEMENT
}

// The costliest messages the default budget lets through: the cheapest elements on the wire,
// as many as allowed. Their decoded cost per element is what the budget bounds.
#[test]
fn messages_at_the_element_budget_are_handed_over_within_a_bounded_cost() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // Room for the few top-level entries.
    let n = DEFAULT_MAX_ELEMENTS - 8;
    let cases: [(&str, Encoding, FrameType, Vec<u8>); 3] = [
        (
            "Configure, JSON object of tiny entries, at the budget",
            Encoding::Json,
            FrameType::Configure,
            configure_json_object(n),
        ),
        (
            "Configure, MessagePack array of 1-byte zeros, at the budget",
            Encoding::MsgPack,
            FrameType::Configure,
            configure_msgpack_array(n),
        ),
        (
            "GuardrailInspect, JSON metadata of tiny entries, at the budget",
            Encoding::Json,
            FrameType::GuardrailInspect,
            guardrail_json_metadata(n),
        ),
    ];
    let mut failures = Vec::new();
    for (name, encoding, frame_type, payload) in cases {
        let (growth, outcome) = agent_case(encoding, frame_type, &payload);
        report(name, payload.len(), growth);
        eprintln!(
            "  agent: {outcome:?}, {:.0} bytes per element",
            growth as f64 / n as f64
        );
        if growth > within_budget_bound(payload.len()) {
            failures.push(format!("{name}: {growth} bytes"));
        }
        if !matches!(outcome, AgentOutcome::HandedOver) {
            failures.push(format!("{name}: not handed over: {outcome:?}"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}
