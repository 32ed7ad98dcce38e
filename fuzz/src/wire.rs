//! Reading what a connection under test writes, and small builders shared by the connection
//! targets.

use agent_protocol_core::encoding::encode_frame;
use agent_protocol_core::frame::FrameType;
use agent_protocol_core::frame::{Decoded, Frame, FrameDecoder};
use agent_protocol_core::Encoding;
use bytes::BytesMut;
use serde::Serialize;

/// Reassembles the byte stream a connection transmits. Everything we write must frame cleanly:
/// no framing error and no unknown type byte, ever.
#[derive(Default)]
pub struct OutputReader {
    decoder: FrameDecoder,
    buf: BytesMut,
}

impl OutputReader {
    /// Appends transmitted bytes and returns every frame they complete.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<Frame> {
        self.buf.extend_from_slice(bytes);
        let mut frames = Vec::new();
        loop {
            match self.decoder.decode(&mut self.buf) {
                Ok(Some(Decoded::Frame(frame))) => frames.push(frame),
                Ok(Some(Decoded::Skipped { type_byte, .. })) => {
                    panic!("we wrote a frame of unknown type 0x{type_byte:02x}")
                }
                Ok(None) => return frames,
                Err(e) => panic!("we wrote an unframeable stream: {e}"),
            }
        }
    }

    /// Whether a partial frame is left over.
    pub fn has_partial(&self) -> bool {
        !self.buf.is_empty()
    }
}

/// One frame carrying `value` in `encoding`, as bytes.
pub fn frame_bytes<T: Serialize>(frame_type: FrameType, encoding: Encoding, value: &T) -> Vec<u8> {
    let mut out = BytesMut::new();
    encode_frame(&mut out, frame_type, encoding, value).expect("small test message encodes");
    out.to_vec()
}

/// One frame with any type byte and payload, as bytes.
pub fn raw_frame(type_byte: u8, payload: &[u8]) -> Vec<u8> {
    let mut v = ((payload.len() + 1) as u32).to_be_bytes().to_vec();
    v.push(type_byte);
    v.extend_from_slice(payload);
    v
}

/// A correlation id from a small set, so that ids collide often; one value in nine is empty.
pub fn cid(n: u8) -> String {
    match n % 9 {
        8 => String::new(),
        k => format!("c{k}"),
    }
}

/// Follows the framing of a byte stream fed to a connection, to tell whether the next byte
/// starts a frame. A connection's read buffer can be empty while it is in the middle of a frame
/// (an unknown-type frame is skipped as it arrives), so the buffer alone cannot tell.
#[derive(Default)]
pub struct StreamTracker {
    header: Vec<u8>,
    remaining: usize,
    broken: bool,
}

impl StreamTracker {
    /// Follows `bytes` fed to the connection.
    pub fn push(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() && !self.broken {
            if self.remaining > 0 {
                let n = self.remaining.min(bytes.len());
                bytes = &bytes[n..];
                self.remaining -= n;
                continue;
            }
            let n = (4 - self.header.len()).min(bytes.len());
            self.header.extend_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
            if self.header.len() == 4 {
                let len = u32::from_be_bytes(self.header[..].try_into().unwrap());
                self.header.clear();
                if len == 0 || len > agent_protocol_core::frame::MAX_FRAME_LEN {
                    self.broken = true;
                } else {
                    self.remaining = len as usize;
                }
            }
        }
    }

    /// Whether the stream is at a frame boundary (and still framed).
    pub fn at_boundary(&self) -> bool {
        !self.broken && self.header.is_empty() && self.remaining == 0
    }
}
