//! Property tests for the UDS frame codec (u32 big-endian length, type byte, payload).
//!
//! - Any sequence of frames (known and unknown type bytes, payloads of 0..2000 bytes) encoded into
//!   one stream decodes to exactly that sequence under any split of the stream into reads; unknown
//!   types come out as `Skipped` with the right payload length.
//! - Arbitrary garbage never panics the decoder, and every split of it gives the same outcome as
//!   feeding it whole: some frames, then possibly `ZeroLength` or `TooLarge` matching the prefix.
//! - A length prefix over the limit is refused before the buffer grows.
//! - A decoder built `with_max_frame_len(n)` accepts L = n and refuses L = n + 1.

use agent_protocol_core::frame::{
    encode_frame, Decoded, Frame, FrameDecoder, FrameError, FrameType, FRAME_HEADER_LEN,
    MAX_FRAME_LEN, MAX_PAYLOAD_LEN,
};
use bytes::{Bytes, BytesMut};
use proptest::prelude::*;

/// One frame to put on the wire: a type byte (known or not) and a payload.
#[derive(Clone, Debug)]
struct WireFrame {
    type_byte: u8,
    payload: Vec<u8>,
}

impl WireFrame {
    /// What the decoder must yield for this frame.
    fn expected(&self) -> Decoded {
        match FrameType::from_byte(self.type_byte) {
            Some(frame_type) => Decoded::Frame(Frame {
                frame_type,
                payload: Bytes::copy_from_slice(&self.payload),
            }),
            None => Decoded::Skipped {
                type_byte: self.type_byte,
                payload_len: self.payload.len(),
            },
        }
    }
}

/// Writes a frame by hand (the encoder only takes known types).
fn raw_frame(out: &mut BytesMut, type_byte: u8, payload: &[u8]) {
    out.extend_from_slice(&(payload.len() as u32 + 1).to_be_bytes());
    out.extend_from_slice(&[type_byte]);
    out.extend_from_slice(payload);
}

/// Encodes the frames into one stream: known types through `encode_frame`, unknown ones by hand.
fn encode_stream(frames: &[WireFrame]) -> BytesMut {
    let mut wire = BytesMut::new();
    for f in frames {
        match FrameType::from_byte(f.type_byte) {
            Some(ty) => encode_frame(&mut wire, ty, &f.payload).expect("payload under the limit"),
            None => raw_frame(&mut wire, f.type_byte, &f.payload),
        }
    }
    wire
}

/// What feeding a stream to a decoder produced.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    decoded: Vec<Decoded>,
    error: Option<FrameError>,
}

/// Feeds `input` to `decoder` in reads of the given sizes (cycled; a size of 0 counts as 1),
/// draining the decoder after every read like a real adapter, and stopping at the first error.
fn feed_split(mut decoder: FrameDecoder, input: &[u8], read_sizes: &[usize]) -> Outcome {
    let mut buf = BytesMut::new();
    let mut decoded = Vec::new();
    let mut pos = 0;
    let mut sizes = read_sizes.iter().copied().cycle();
    while pos < input.len() {
        let n = sizes
            .next()
            .unwrap_or(usize::MAX)
            .max(1)
            .min(input.len() - pos);
        buf.extend_from_slice(&input[pos..pos + n]);
        pos += n;
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(d)) => decoded.push(d),
                Ok(None) => break,
                Err(e) => {
                    return Outcome {
                        decoded,
                        error: Some(e),
                    }
                }
            }
        }
    }
    Outcome {
        decoded,
        error: None,
    }
}

fn feed_whole(decoder: FrameDecoder, input: &[u8]) -> Outcome {
    feed_split(decoder, input, &[usize::MAX])
}

fn type_byte() -> impl Strategy<Value = u8> {
    prop_oneof![
        // Mostly known types, so payloads are actually buffered and returned...
        3 => prop::sample::select(FrameType::ALL.to_vec()).prop_map(FrameType::as_byte),
        // ...and any byte at all, which is mostly unknown ones to skip.
        1 => any::<u8>(),
    ]
}

fn wire_frame() -> impl Strategy<Value = WireFrame> {
    (type_byte(), prop::collection::vec(any::<u8>(), 0..2000))
        .prop_map(|(type_byte, payload)| WireFrame { type_byte, payload })
}

/// Read sizes: tiny reads that split headers, medium ones, and large ones spanning frames.
fn read_sizes() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(prop_oneof![1usize..=8, 1usize..=300, 1usize..=5000], 1..16)
}

/// Input for the garbage test: pure noise (whose first prefix is almost always too large), or a
/// mix of noise, small length prefixes and real frames so the decoder gets past the first header.
fn garbage() -> impl Strategy<Value = Vec<u8>> {
    let segment = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..64),
        (0u32..=300, any::<u8>()).prop_map(|(len, ty)| {
            let mut v = len.to_be_bytes().to_vec();
            v.push(ty);
            v
        }),
        wire_frame().prop_map(|f| encode_stream(&[f]).to_vec()),
    ];
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..4096),
        prop::collection::vec(segment, 0..16).prop_map(|segs| segs.concat()),
    ]
}

proptest! {
    #[test]
    fn any_split_yields_the_encoded_frames(
        frames in prop::collection::vec(wire_frame(), 0..24),
        sizes in read_sizes(),
    ) {
        let wire = encode_stream(&frames);
        let expected: Vec<Decoded> = frames.iter().map(WireFrame::expected).collect();
        let unknown = frames
            .iter()
            .filter(|f| FrameType::from_byte(f.type_byte).is_none())
            .count() as u64;

        let mut decoder = FrameDecoder::new();
        let mut buf = BytesMut::new();
        let mut decoded = Vec::new();
        let mut pos = 0;
        let mut sizes_iter = sizes.iter().copied().cycle();
        while pos < wire.len() {
            let n = sizes_iter.next().unwrap().min(wire.len() - pos);
            buf.extend_from_slice(&wire[pos..pos + n]);
            pos += n;
            while let Some(d) = decoder.decode(&mut buf).expect("a valid stream never errors") {
                decoded.push(d);
            }
            // After draining, what stays buffered is less than one frame.
            prop_assert!(buf.len() < FRAME_HEADER_LEN + 2000);
        }
        prop_assert_eq!(&decoded, &expected);
        prop_assert!(buf.is_empty(), "{} bytes left over", buf.len());
        prop_assert_eq!(decoder.frames_skipped(), unknown);
        prop_assert_eq!(decoder.decode(&mut buf), Ok(None));

        // Byte by byte and all at once agree too.
        prop_assert_eq!(&feed_split(FrameDecoder::new(), &wire, &[1]).decoded, &expected);
        prop_assert_eq!(&feed_whole(FrameDecoder::new(), &wire).decoded, &expected);
    }

    /// Reading exactly what `bytes_wanted` asks for makes progress and yields the same frames.
    #[test]
    fn bytes_wanted_reads_yield_the_encoded_frames(
        frames in prop::collection::vec(wire_frame(), 0..12),
    ) {
        let wire = encode_stream(&frames);
        let expected: Vec<Decoded> = frames.iter().map(WireFrame::expected).collect();
        let mut decoder = FrameDecoder::new();
        let mut buf = BytesMut::new();
        let mut decoded = Vec::new();
        let mut pos = 0;
        while pos < wire.len() {
            let want = decoder.bytes_wanted(&buf);
            prop_assert!(want >= 1);
            let n = want.min(wire.len() - pos);
            buf.extend_from_slice(&wire[pos..pos + n]);
            pos += n;
            while let Some(d) = decoder.decode(&mut buf).unwrap() {
                decoded.push(d);
            }
        }
        prop_assert_eq!(decoded, expected);
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn garbage_never_panics_and_split_does_not_matter(
        garbage in garbage(),
        sizes in read_sizes(),
        max in prop_oneof![Just(MAX_FRAME_LEN), 1u32..=4096],
    ) {
        let whole = feed_whole(FrameDecoder::with_max_frame_len(max), &garbage);
        let split = feed_split(FrameDecoder::with_max_frame_len(max), &garbage, &sizes);
        prop_assert_eq!(&split, &whole);

        // Walk the headers the frames claim to check every item and the terminal error.
        let mut pos = 0;
        for d in &whole.decoded {
            let len = u32::from_be_bytes(garbage[pos..pos + 4].try_into().unwrap());
            prop_assert!(len >= 1 && len <= max);
            let type_byte = garbage[pos + 4];
            let payload = &garbage[pos + FRAME_HEADER_LEN..pos + 4 + len as usize];
            match d {
                Decoded::Frame(f) => {
                    prop_assert_eq!(f.frame_type.as_byte(), type_byte);
                    prop_assert_eq!(&f.payload[..], payload);
                }
                Decoded::Skipped { type_byte: t, payload_len } => {
                    prop_assert_eq!(*t, type_byte);
                    prop_assert!(FrameType::from_byte(*t).is_none());
                    prop_assert_eq!(*payload_len, payload.len());
                }
            }
            pos += 4 + len as usize;
        }
        match whole.error {
            Some(FrameError::ZeroLength) => {
                prop_assert_eq!(&garbage[pos..pos + 4], &[0u8; 4][..]);
            }
            Some(FrameError::TooLarge { len, max: m }) => {
                prop_assert_eq!(m, max);
                prop_assert!(len > max);
                prop_assert_eq!(len, u32::from_be_bytes(garbage[pos..pos + 4].try_into().unwrap()));
            }
            None => {
                // Whatever is left is an incomplete frame whose prefix (if complete) is legal.
                if garbage.len() - pos >= 4 {
                    let len = u32::from_be_bytes(garbage[pos..pos + 4].try_into().unwrap());
                    prop_assert!(len >= 1 && len <= max);
                    prop_assert!(garbage.len() - pos < 4 + len as usize);
                }
            }
        }
    }

    /// The prefix is checked before anything is reserved: an oversized prefix errors with the
    /// buffer untouched (same capacity, same bytes).
    #[test]
    fn oversized_prefix_errors_before_capacity_grows(
        len in (MAX_FRAME_LEN + 1)..=u32::MAX,
        type_byte in any::<u8>(),
        tail in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        let mut input = BytesMut::with_capacity(4 + 1 + tail.len());
        input.extend_from_slice(&len.to_be_bytes());
        input.extend_from_slice(&[type_byte]);
        input.extend_from_slice(&tail);
        let cap = input.capacity();
        let before = input.clone();
        prop_assert_eq!(
            FrameDecoder::new().decode(&mut input),
            Err(FrameError::TooLarge { len, max: MAX_FRAME_LEN })
        );
        prop_assert_eq!(input.capacity(), cap);
        prop_assert_eq!(&input[..], &before[..]);
    }

    /// Same after some valid frames and in reads of 1..=4 bytes: the decoder refuses the prefix
    /// without growing the buffer past what the reads themselves needed.
    #[test]
    fn oversized_prefix_after_frames_in_tiny_reads(
        frames in prop::collection::vec(wire_frame(), 0..4),
        max in prop_oneof![Just(MAX_FRAME_LEN), 1u32..=100_000],
        excess in 1u32..=1000,
        read in 1usize..=4,
    ) {
        let len = max + excess;
        // Keep the frames under this decoder's limit.
        let frames: Vec<WireFrame> = frames
            .into_iter()
            .map(|mut f| {
                f.payload.truncate(max as usize - 1);
                f
            })
            .collect();
        let mut wire = encode_stream(&frames);
        wire.extend_from_slice(&len.to_be_bytes());

        let mut decoder = FrameDecoder::with_max_frame_len(max);
        let mut buf = BytesMut::with_capacity(64);
        let mut decoded = Vec::new();
        let mut error = None;
        for chunk in wire.chunks(read) {
            buf.extend_from_slice(chunk);
            let cap_after_read = buf.capacity();
            loop {
                match decoder.decode(&mut buf) {
                    Ok(Some(d)) => decoded.push(d),
                    Ok(None) => break,
                    Err(e) => {
                        // Refused with the capacity the read left, not a byte more.
                        prop_assert!(buf.capacity() <= cap_after_read);
                        error = Some(e);
                        break;
                    }
                }
            }
            if error.is_some() {
                break;
            }
        }
        prop_assert_eq!(error, Some(FrameError::TooLarge { len, max }));
        let expected: Vec<Decoded> = frames.iter().map(WireFrame::expected).collect();
        prop_assert_eq!(decoded, expected);
    }

    #[test]
    fn max_frame_len_is_inclusive(
        n in 1u32..=70_000,
        ty in type_byte(),
        fill in any::<u8>(),
    ) {
        // L = n: payload n - 1, accepted (as a frame or a skip).
        let ok = WireFrame { type_byte: ty, payload: vec![fill; n as usize - 1] };
        let mut buf = BytesMut::new();
        raw_frame(&mut buf, ok.type_byte, &ok.payload);
        let mut decoder = FrameDecoder::with_max_frame_len(n);
        prop_assert_eq!(decoder.decode(&mut buf), Ok(Some(ok.expected())));
        prop_assert!(buf.is_empty());

        // L = n + 1 is refused, from the prefix alone.
        let mut buf = BytesMut::new();
        raw_frame(&mut buf, ty, &vec![fill; n as usize]);
        prop_assert_eq!(
            FrameDecoder::with_max_frame_len(n).decode(&mut buf),
            Err(FrameError::TooLarge { len: n + 1, max: n })
        );
        let mut prefix = BytesMut::from(&(n + 1).to_be_bytes()[..]);
        prop_assert_eq!(
            FrameDecoder::with_max_frame_len(n).decode(&mut prefix),
            Err(FrameError::TooLarge { len: n + 1, max: n })
        );
    }
}

/// The protocol limit itself: L = 16 MiB (a 16,777,215-byte payload) decodes, L = 16 MiB + 1 is
/// refused, and limits above it are clamped to it.
#[test]
fn protocol_limit_is_inclusive() {
    let payload = vec![0xA5u8; MAX_PAYLOAD_LEN];
    let mut wire = BytesMut::new();
    encode_frame(&mut wire, FrameType::RequestBodyChunk, &payload).unwrap();
    assert_eq!(wire.len(), 4 + MAX_FRAME_LEN as usize);
    match FrameDecoder::new().decode(&mut wire) {
        Ok(Some(Decoded::Frame(f))) => {
            assert_eq!(f.frame_type, FrameType::RequestBodyChunk);
            assert_eq!(f.payload.len(), MAX_PAYLOAD_LEN);
        }
        other => panic!("unexpected {other:?}"),
    }

    for decoder in [
        FrameDecoder::new(),
        FrameDecoder::with_max_frame_len(u32::MAX),
        FrameDecoder::with_max_frame_len(MAX_FRAME_LEN + 1),
    ] {
        let mut decoder = decoder;
        let mut prefix = BytesMut::from(&(MAX_FRAME_LEN + 1).to_be_bytes()[..]);
        assert_eq!(
            decoder.decode(&mut prefix),
            Err(FrameError::TooLarge {
                len: MAX_FRAME_LEN + 1,
                max: MAX_FRAME_LEN
            })
        );
    }

    // An unknown type at the limit is skipped without being buffered whole.
    let mut decoder = FrameDecoder::new();
    let mut buf = BytesMut::new();
    buf.extend_from_slice(&MAX_FRAME_LEN.to_be_bytes());
    buf.extend_from_slice(&[0xF0]);
    let chunk = vec![0u8; 1 << 20];
    let mut skipped = None;
    let mut fed = 0;
    while fed < MAX_PAYLOAD_LEN {
        let n = chunk.len().min(MAX_PAYLOAD_LEN - fed);
        buf.extend_from_slice(&chunk[..n]);
        fed += n;
        if let Some(d) = decoder.decode(&mut buf).unwrap() {
            skipped = Some(d);
        }
        assert!(buf.is_empty());
    }
    assert_eq!(
        skipped,
        Some(Decoded::Skipped {
            type_byte: 0xF0,
            payload_len: MAX_PAYLOAD_LEN
        })
    );
}

/// L = 0 is an error, L = 1 is an empty payload.
#[test]
fn zero_and_one_length_prefixes() {
    let mut buf = BytesMut::from(&[0u8, 0, 0, 0][..]);
    assert_eq!(
        FrameDecoder::new().decode(&mut buf),
        Err(FrameError::ZeroLength)
    );
    let mut buf = BytesMut::from(&[0u8, 0, 0, 1, 0x42][..]);
    assert_eq!(
        FrameDecoder::new().decode(&mut buf),
        Ok(Some(Decoded::Frame(Frame {
            frame_type: FrameType::Pong,
            payload: Bytes::new()
        })))
    );
    let mut buf = BytesMut::from(&[0u8, 0, 0, 1, 0xEE][..]);
    assert_eq!(
        FrameDecoder::new().decode(&mut buf),
        Ok(Some(Decoded::Skipped {
            type_byte: 0xEE,
            payload_len: 0
        }))
    );
}
