//! Feeds arbitrary bytes to `FrameDecoder`, cut into fuzzer-chosen reads, and checks that:
//! - nothing panics;
//! - the items (and the terminal error, if any) are the same as feeding everything at once;
//! - every frame re-encodes to exactly the bytes it was decoded from, every skip matches its
//!   header, and an error matches the prefix that caused it (zero length, or over 16 MiB);
//! - the decoder never holds more than one frame of the stream, and an error leaves the buffer
//!   as it was.
#![no_main]

use agent_protocol_core::frame::{
    encode_frame, Decoded, FrameDecoder, FrameError, FRAME_HEADER_LEN, MAX_FRAME_LEN,
};
use agent_protocol_fuzz::ReadSizes;
use bytes::BytesMut;
use libfuzzer_sys::arbitrary::{self, Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;

#[derive(Debug)]
struct Input<'a> {
    max_frame_len: u32,
    reads: ReadSizes,
    stream: &'a [u8],
}

impl<'a> Arbitrary<'a> for Input<'a> {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        // Small limits make TooLarge and the limit boundary reachable with short inputs.
        let max_frame_len = if u.arbitrary::<bool>()? {
            MAX_FRAME_LEN
        } else {
            u.int_in_range(0..=u32::from(u16::MAX))?
        };
        let reads = ReadSizes::arbitrary(u)?;
        let stream = u.bytes(u.len())?;
        Ok(Input {
            max_frame_len,
            reads,
            stream,
        })
    }
}

#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    items: Vec<Decoded>,
    error: Option<FrameError>,
    skipped: u64,
}

fn feed<'i>(max_frame_len: u32, reads: impl Iterator<Item = &'i [u8]>) -> Outcome {
    let mut decoder = FrameDecoder::with_max_frame_len(max_frame_len);
    let mut buf = BytesMut::new();
    let mut items = Vec::new();
    for read in reads {
        buf.extend_from_slice(read);
        loop {
            let _ = decoder.bytes_wanted(&buf);
            let before = buf.clone();
            match decoder.decode(&mut buf) {
                Ok(Some(item)) => items.push(item),
                Ok(None) => break,
                Err(error) => {
                    assert_eq!(buf, before, "an error must leave the buffer untouched");
                    return Outcome {
                        items,
                        error: Some(error),
                        skipped: decoder.frames_skipped(),
                    };
                }
            }
        }
        // Whatever stays buffered is less than one frame (header + payload under the limit).
        assert!(buf.len() < 4 + max_frame_len.clamp(1, MAX_FRAME_LEN) as usize);
    }
    Outcome {
        items,
        error: None,
        skipped: decoder.frames_skipped(),
    }
}

fuzz_target!(|input: Input<'_>| {
    let Input {
        max_frame_len,
        reads,
        stream,
    } = input;
    let limit = max_frame_len.clamp(1, MAX_FRAME_LEN);

    let whole = feed(
        max_frame_len,
        std::iter::once(stream).filter(|s| !s.is_empty()),
    );
    let split = feed(max_frame_len, reads.chunks(stream));
    assert_eq!(split, whole, "the split into reads changed the result");

    // Check every item against the bytes it came from.
    let prefix_at = |pos: usize| u32::from_be_bytes(stream[pos..pos + 4].try_into().unwrap());
    let mut pos = 0;
    let mut skips = 0;
    for item in &whole.items {
        let len = prefix_at(pos) as usize;
        assert!(len >= 1 && len <= limit as usize);
        match item {
            Decoded::Frame(frame) => {
                let mut reencoded = BytesMut::new();
                encode_frame(&mut reencoded, frame.frame_type, &frame.payload).unwrap();
                assert_eq!(&reencoded[..], &stream[pos..pos + 4 + len]);
            }
            Decoded::Skipped {
                type_byte,
                payload_len,
            } => {
                assert_eq!(*type_byte, stream[pos + 4]);
                assert_eq!(*payload_len, len - 1);
                skips += 1;
            }
        }
        pos += 4 + len;
    }
    assert_eq!(whole.skipped, skips);
    match whole.error {
        Some(FrameError::ZeroLength) => assert_eq!(prefix_at(pos), 0),
        Some(FrameError::TooLarge { len, max }) => {
            assert_eq!(max, limit);
            assert!(len > limit);
            assert_eq!(len, prefix_at(pos));
        }
        None => {
            // The rest is an incomplete frame.
            let rest = stream.len() - pos;
            assert!(rest < FRAME_HEADER_LEN || rest < 4 + prefix_at(pos) as usize);
        }
    }
});
