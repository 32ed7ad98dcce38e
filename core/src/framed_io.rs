//! [`FramedIo`]: the buffers of a framed byte stream, as both roles' codecs keep them.

use bytes::{Bytes, BytesMut};

use crate::frame::{Decoded, FrameDecoder, FrameError};

/// A read buffer and its frame decoder, and the output written for the socket. The codecs
/// (`AgentCodec`, `ProxyCodec`) decide what the frames mean; this is only the bytes.
#[derive(Debug)]
pub(crate) struct FramedIo {
    pub(crate) decoder: FrameDecoder,
    pub(crate) read_buf: BytesMut,
    pub(crate) out: BytesMut,
}

impl FramedIo {
    pub(crate) fn new(max_frame_len: u32) -> Self {
        Self {
            decoder: FrameDecoder::with_max_frame_len(max_frame_len),
            read_buf: BytesMut::new(),
            out: BytesMut::new(),
        }
    }

    /// The next frame (or skipped unknown frame) in the read buffer, if whole.
    pub(crate) fn decode(&mut self) -> Result<Option<Decoded>, FrameError> {
        self.decoder.decode(&mut self.read_buf)
    }

    /// Drops whatever was read and not decoded, memory included: nothing after a framing error
    /// can be trusted.
    pub(crate) fn discard_input(&mut self) {
        self.read_buf = BytesMut::new();
    }

    /// Everything written so far, coalesced into one buffer (several frames), or `None`.
    pub(crate) fn take_output(&mut self) -> Option<Bytes> {
        if self.out.is_empty() {
            None
        } else {
            Some(self.out.split().freeze())
        }
    }
}
