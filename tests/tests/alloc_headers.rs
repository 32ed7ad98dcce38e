//! Heap allocations on the RequestHeaders hot path, counted with a `#[global_allocator]` that
//! wraps `System` (this file is its own test binary, so the allocator affects nothing else).
//!
//! The event is the browser-like request of the golden vector `request_headers_browser_20_headers`
//! (20 single-valued headers, full metadata with traceparent). Measured:
//! - (a) JSON decode of its payload and (b) MessagePack decode (our encoding of the event, and
//!   the reference proxy's own bytes from the vector, whose metadata is a positional array);
//! - (c) encoding into a reused `BytesMut` frame buffer, after a warm-up, in both encodings;
//! - (d) `Headers::into_flat()` into a `Vec<(ByteStr, ByteStr)>`: only the output `Vec` and
//!   one reference count for the headers' text may allocate (the strings share it, not copied);
//! - (e) `Headers::iter_flat()`: nothing.
//!
//! Counting is per thread: the allocator counts only while the measuring thread has its window
//! open, in thread-local counters, so tests running in parallel do not disturb each other. A
//! `realloc` counts as one allocation. Run with `--nocapture` to see the table.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use agent_protocol_core::encoding::{decode_event, encode_event};
use agent_protocol_core::frame::FrameType;
use agent_protocol_core::{Encoding, Event, Headers, RequestHeadersEvent, RequestMetadata};
use bytes::BytesMut;
use serde_json::Value;

struct Counting;

thread_local! {
    static ACTIVE: Cell<bool> = const { Cell::new(false) };
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
    static BYTES: Cell<u64> = const { Cell::new(0) };
}

fn record(size: usize) {
    // `try_with`: the allocator may run while this thread's locals are being torn down.
    if ACTIVE.try_with(Cell::get).unwrap_or(false) {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        let _ = BYTES.try_with(|c| c.set(c.get() + size as u64));
    }
}

// SAFETY: every call is forwarded unchanged to `System`; the counting touches only
// thread-local `Cell`s, which never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        record(layout.size());
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        record(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        record(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations (and bytes requested) on this thread while `f` runs. `f`'s result is returned
/// and dropped by the caller, outside the window.
fn measure<R>(f: impl FnOnce() -> R) -> (R, u64, u64) {
    ALLOCS.with(|c| c.set(0));
    BYTES.with(|c| c.set(0));
    ACTIVE.with(|a| a.set(true));
    let result = std::hint::black_box(f());
    ACTIVE.with(|a| a.set(false));
    (result, ALLOCS.with(Cell::get), BYTES.with(Cell::get))
}

const VECTORS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/vectors/vectors.jsonl");

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// The vector's raw JSON and MessagePack payloads (frame headers stripped).
fn browser_vector() -> (Vec<u8>, Vec<u8>) {
    let text = std::fs::read_to_string(VECTORS).unwrap();
    let mut json = None;
    let mut msgpack = None;
    for line in text.lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        if v["name"] != "request_headers_browser_20_headers" {
            continue;
        }
        let frame = hex(v["frame_hex"].as_str().unwrap());
        match v["encoding"].as_str().unwrap() {
            "json" => json = Some(frame[5..].to_vec()),
            _ => msgpack = Some(frame[5..].to_vec()),
        }
    }
    (json.expect("json vector"), msgpack.expect("msgpack vector"))
}

/// The event, built from the vector's header set and metadata.
fn browser_event(payload: &Value) -> RequestHeadersEvent {
    let mut headers = Headers::new();
    for (name, values) in payload["headers"].as_object().unwrap() {
        for value in values.as_array().unwrap() {
            headers.append(name.as_str(), value.as_str().unwrap());
        }
    }
    let metadata: RequestMetadata = serde_json::from_value(payload["metadata"].clone()).unwrap();
    RequestHeadersEvent::new(
        metadata,
        payload["method"].as_str().unwrap(),
        payload["uri"].as_str().unwrap(),
        headers,
    )
}

fn encoded(encoding: Encoding, event: &Event) -> Vec<u8> {
    let mut buf = BytesMut::new();
    encode_event(&mut buf, encoding, event).unwrap();
    buf[5..].to_vec()
}

struct Row {
    what: &'static str,
    allocs: u64,
    bytes: u64,
    budget: u64,
}

#[test]
fn request_headers_allocation_budgets() {
    let (vector_json, vector_msgpack) = browser_vector();
    let event = browser_event(&serde_json::from_slice(&vector_json).unwrap());
    assert_eq!(event.headers.len(), 20, "the browser vector has 20 headers");
    assert_eq!(event.headers.value_count(), 20);
    let event = Event::RequestHeaders(event);
    let json = encoded(Encoding::Json, &event);
    let msgpack = encoded(Encoding::MsgPack, &event);
    let ty = FrameType::RequestHeaders;
    let decode = |encoding: Encoding, payload: &[u8]| {
        measure(|| decode_event(ty, encoding, payload).unwrap().unwrap())
    };

    let mut rows = Vec::new();
    // Budgets: the counts measured, plus a margin of about two, so that anything adding an
    // allocation per header (20 more) or a few per event fails here. Measured, and what they
    // are made of:
    // - (a) JSON decode, 3: the copy of the payload, with room after it for the unescaped text
    //   of the values with escaped quotes (sec-ch-ua, if-none-match...), in one allocation (1),
    //   the reference count that lets every string share it (1: `bytes` allocates it when a
    //   buffer is first split), and the entries Vec (1: a JSON object gives no size hint, so the
    //   decoder starts with room for 24 headers). It was 9 while each escaped value was
    //   unescaped into a string of its own, 59 before events shared their payload (one String
    //   per name and value). The reference's bytes cost the same. Budget 5.
    // - (b) MessagePack decode, 3: the payload copy, its shared reference count and the
    //   exact-size entries Vec (a MessagePack map announces its length); every string is a
    //   slice of the payload copy, escapes do not exist (was 55). The reference's bytes
    //   (metadata as a short positional array) cost the same. Budget 5.
    // - (c) encode into a warm buffer, 0 in both encodings: serde_json and rmp-serde write
    //   straight into the frame buffer, and every map length is known up front, so nothing is
    //   buffered.
    // - (d) into_flat, 2 with `Vec::with_capacity(value_count())`: the output Vec, and the
    //   reference count that lets every string share the headers' one buffer of text (these
    //   headers were appended by hand, so their text is the headers' own). With `collect()` the
    //   Vec grows from an unknown size instead: 3 more allocations (4, 8, 16, 32 pairs).
    // - (e) iter_flat, 0.

    // (a) JSON decode.
    let (back, allocs, bytes) = decode(Encoding::Json, &json);
    assert_eq!(back, event);
    rows.push(Row {
        what: "(a) JSON decode (our payload)",
        allocs,
        bytes,
        budget: 5,
    });
    let (back, allocs, bytes) = decode(Encoding::Json, &vector_json);
    assert_eq!(back, event);
    rows.push(Row {
        what: "(a) JSON decode (reference payload)",
        allocs,
        bytes,
        budget: 5,
    });

    // (b) MessagePack decode.
    let (back, allocs, bytes) = decode(Encoding::MsgPack, &msgpack);
    assert_eq!(back, event);
    rows.push(Row {
        what: "(b) MessagePack decode (our payload)",
        allocs,
        bytes,
        budget: 5,
    });
    let (back, allocs, bytes) = decode(Encoding::MsgPack, &vector_msgpack);
    assert_eq!(back.correlation_id(), event.correlation_id());
    rows.push(Row {
        what: "(b) MessagePack decode (reference payload)",
        allocs,
        bytes,
        budget: 5,
    });

    // (c) Encode into a reused frame buffer, after a warm-up.
    for (what, encoding) in [
        ("(c) JSON encode, warm buffer", Encoding::Json),
        ("(c) MessagePack encode, warm buffer", Encoding::MsgPack),
    ] {
        let mut buf = BytesMut::new();
        for _ in 0..2 {
            buf.clear();
            encode_event(&mut buf, encoding, &event).unwrap();
        }
        buf.clear();
        let ((), allocs, bytes) = measure(|| encode_event(&mut buf, encoding, &event).unwrap());
        assert_eq!(buf.len() - 5, encoded(encoding, &event).len());
        rows.push(Row {
            what,
            allocs,
            bytes,
            budget: 0,
        });
    }

    // (d) Headers into a flat list: only the output Vec.
    let Event::RequestHeaders(e) = &event else {
        unreachable!()
    };
    let headers = e.headers.clone();
    let n = headers.value_count();
    let (flat, allocs, bytes) = measure(|| {
        let mut out = Vec::with_capacity(n);
        out.extend(headers.into_flat());
        out
    });
    assert_eq!(flat.len(), 20);
    rows.push(Row {
        what: "(d) into_flat into Vec::with_capacity",
        allocs,
        bytes,
        budget: 2,
    });
    let headers = e.headers.clone();
    let (flat, allocs, bytes) = measure(|| headers.into_flat().collect::<Vec<_>>());
    assert_eq!(flat.len(), 20);
    rows.push(Row {
        what: "(d) into_flat().collect()",
        allocs,
        bytes,
        budget: 5,
    });
    drop(flat);

    // (e) Iterating without allocating.
    let (total, allocs, bytes) = measure(|| {
        e.headers
            .iter_flat()
            .map(|(name, value)| name.len() + value.len())
            .sum::<usize>()
    });
    assert!(total > 0);
    rows.push(Row {
        what: "(e) iter_flat",
        allocs,
        bytes,
        budget: 0,
    });

    // (f) Building the headers from a proxy's own borrowed pairs, as a proxy builds an event:
    // 2, the text and the entry list (3 while the builder cloned the text, which gave it a
    // reference count before anything shared it). Encoding never clones them.
    let pairs: Vec<(String, String)> = e
        .headers
        .iter_flat()
        .map(|(n, v)| (n.to_owned(), v.to_owned()))
        .collect();
    let (built, allocs, bytes) =
        measure(|| Headers::copy_from(pairs.iter().map(|(n, v)| (n.as_str(), v.as_str()))));
    assert_eq!(built, e.headers);
    rows.push(Row {
        what: "(f) Headers::copy_from, 20 pairs",
        allocs,
        bytes,
        budget: 2,
    });
    let event = Event::RequestHeaders(RequestHeadersEvent::new(
        RequestMetadata::default(),
        "GET",
        "/",
        built,
    ));
    let mut buf = BytesMut::with_capacity(4096);
    let ((), allocs, _) = measure(|| encode_event(&mut buf, Encoding::MsgPack, &event).unwrap());
    assert_eq!(
        allocs, 0,
        "writing built headers allocates (a reference count?)"
    );

    println!(
        "{:<45} {:>7} {:>8} {:>7}",
        "measurement", "allocs", "bytes", "budget"
    );
    for r in &rows {
        println!(
            "{:<45} {:>7} {:>8} {:>7}",
            r.what, r.allocs, r.bytes, r.budget
        );
    }
    let over: Vec<_> = rows.iter().filter(|r| r.allocs > r.budget).collect();
    assert!(
        over.is_empty(),
        "over budget: {:?}",
        over.iter()
            .map(|r| (r.what, r.allocs, r.budget))
            .collect::<Vec<_>>()
    );
}

#[test]
fn the_counter_counts() {
    let (v, allocs, bytes) = measure(|| Vec::<u8>::with_capacity(100));
    assert_eq!((allocs, bytes), (1, 100));
    drop(v);
    let ((), allocs, _) = measure(|| ());
    assert_eq!(allocs, 0);
}
