//! Golden vectors, framing only: each of the 84 frames the reference implementation put on a real
//! socket (tests/vectors/vectors.jsonl, a verbatim copy of the captured original) decodes
//! to exactly one frame with the recorded type byte and length, and the payload is the rest.
//!
//! The vectors are read from the in-repo copy so the test runs on a fresh clone; when the shared
//! original sits next to the workspace (in a `shared` folder), the copy is checked against it.

use agent_protocol_core::frame::{Decoded, FrameDecoder, FrameType, FRAME_HEADER_LEN};
use bytes::BytesMut;
use serde_json::Value;

const VECTORS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/vectors/vectors.jsonl");
/// The captured original, in a `shared` folder next to the workspace (absent on a fresh clone).
const SHARED_VECTORS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../..",
    "/shared/vectors/vectors.jsonl"
);
const EXPECTED_LINES: usize = 84;

fn hex_decode(s: &str) -> Vec<u8> {
    fn nibble(c: u8) -> u8 {
        match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            b'A'..=b'F' => c - b'A' + 10,
            _ => panic!("not a hex digit: {:?}", c as char),
        }
    }
    let pairs = s.as_bytes().chunks_exact(2);
    assert!(pairs.remainder().is_empty(), "odd number of hex digits");
    pairs.map(|p| (nibble(p[0]) << 4) | nibble(p[1])).collect()
}

/// A parsed vector line.
struct Vector {
    label: String,
    json: Value,
    frame: Vec<u8>,
    type_byte: u8,
    frame_len: usize,
}

fn load() -> Vec<Vector> {
    let text = std::fs::read_to_string(VECTORS).unwrap_or_else(|e| panic!("{VECTORS}: {e}"));
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| {
            let json: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("line {}: not JSON: {e}", i + 1));
            let str_field = |k: &str| {
                json[k]
                    .as_str()
                    .unwrap_or_else(|| panic!("line {}: `{k}` is not a string", i + 1))
                    .to_owned()
            };
            let label = format!(
                "line {} ({} / {} / {})",
                i + 1,
                str_field("name"),
                str_field("session_encoding"),
                str_field("reference_build"),
            );
            let type_str = str_field("type_byte");
            let type_byte = u8::from_str_radix(
                type_str
                    .strip_prefix("0x")
                    .unwrap_or_else(|| panic!("{label}: type_byte {type_str:?}")),
                16,
            )
            .unwrap_or_else(|e| panic!("{label}: type_byte {type_str:?}: {e}"));
            let frame_len = json["frame_len"]
                .as_u64()
                .unwrap_or_else(|| panic!("{label}: frame_len is not a number"))
                as usize;
            let frame = hex_decode(&str_field("frame_hex"));
            Vector {
                label,
                json,
                frame,
                type_byte,
                frame_len,
            }
        })
        .collect()
}

#[test]
fn every_vector_decodes_to_one_frame() {
    let vectors = load();
    assert_eq!(vectors.len(), EXPECTED_LINES, "vector count");
    let mut seen = std::collections::BTreeSet::new();

    for v in &vectors {
        let label = &v.label;
        assert_eq!(v.frame.len(), v.frame_len, "{label}: frame_len");
        let prefix = u32::from_be_bytes(v.frame[..4].try_into().unwrap()) as usize;
        assert_eq!(prefix + 4, v.frame_len, "{label}: length prefix");

        let mut decoder = FrameDecoder::new();
        let mut buf = BytesMut::from(&v.frame[..]);
        let frame = match decoder.decode(&mut buf) {
            Ok(Some(Decoded::Frame(frame))) => frame,
            other => panic!("{label}: expected one frame, got {other:?}"),
        };
        assert_eq!(decoder.decode(&mut buf), Ok(None), "{label}: a second item");
        assert!(buf.is_empty(), "{label}: {} bytes left", buf.len());

        assert_eq!(
            frame.frame_type.as_byte(),
            v.type_byte,
            "{label}: type byte"
        );
        assert_eq!(
            format!("{:?}", frame.frame_type),
            v.json["type_name"].as_str().unwrap(),
            "{label}: type_name"
        );
        assert_eq!(
            FRAME_HEADER_LEN + frame.payload.len(),
            v.frame_len,
            "{label}: total length"
        );
        assert_eq!(
            &frame.payload[..],
            &v.frame[FRAME_HEADER_LEN..],
            "{label}: payload"
        );
        // JSON payloads are recorded verbatim in `payload_decoded`.
        if v.json["encoding"] == "json" {
            assert_eq!(
                Some(&frame.payload[..]),
                v.json["payload_decoded"].as_str().map(str::as_bytes),
                "{label}: JSON payload"
            );
        }
        seen.insert(v.type_byte);
    }

    // The capture covers every type byte the protocol defines.
    let all: std::collections::BTreeSet<u8> = FrameType::ALL.iter().map(|t| t.as_byte()).collect();
    assert_eq!(seen, all, "type bytes covered by the vectors");
}

/// All 84 frames back to back, read in awkward sizes, come out in order.
#[test]
fn concatenated_vectors_decode_in_order_under_splits() {
    let vectors = load();
    let wire: Vec<u8> = vectors
        .iter()
        .flat_map(|v| v.frame.iter().copied())
        .collect();
    for read in [1usize, 2, 3, 4, 5, 7, 13, 64, 1000, 4096, wire.len()] {
        let mut decoder = FrameDecoder::new();
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for chunk in wire.chunks(read) {
            buf.extend_from_slice(chunk);
            while let Some(d) = decoder.decode(&mut buf).unwrap() {
                match d {
                    Decoded::Frame(f) => got.push((f.frame_type.as_byte(), f.payload)),
                    Decoded::Skipped { type_byte, .. } => {
                        panic!("read size {read}: type {type_byte:#04x} skipped")
                    }
                }
            }
        }
        assert!(buf.is_empty(), "read size {read}: bytes left");
        assert_eq!(got.len(), vectors.len(), "read size {read}: frame count");
        for (v, (ty, payload)) in vectors.iter().zip(&got) {
            assert_eq!(*ty, v.type_byte, "read size {read}: {}", v.label);
            assert_eq!(&payload[..], &v.frame[FRAME_HEADER_LEN..], "{}", v.label);
        }
    }
}

/// The in-repo copy must not drift from the shared original, when the original is available.
#[test]
fn in_repo_copy_matches_shared_vectors() {
    match std::fs::read(SHARED_VECTORS) {
        Ok(shared) => assert!(
            shared == std::fs::read(VECTORS).unwrap(),
            "{VECTORS} differs from {SHARED_VECTORS}: re-copy it"
        ),
        Err(_) => eprintln!("{SHARED_VECTORS} not present (fresh clone): using the in-repo copy"),
    }
}

#[test]
fn hex_decoder() {
    assert_eq!(hex_decode(""), Vec::<u8>::new());
    assert_eq!(hex_decode("00ff7Fa0"), vec![0x00, 0xFF, 0x7F, 0xA0]);
}
