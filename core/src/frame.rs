//! UDS framing: `u32` big-endian length L, one type byte, L-1 payload bytes.
//!
//! [`FrameDecoder`] is incremental: feed it whatever a read returned, in any split, and it yields
//! the same frames. The length is checked before anything is reserved or buffered, and a frame with
//! an unknown type byte is skipped (its payload consumed without being buffered) rather than
//! killing the connection. [`encode_frame`] and [`FrameWriter`] append frames to one buffer so an
//! adapter can write many frames with one syscall.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Largest legal value of the length prefix L (type byte + payload): 16 MiB.
pub const MAX_FRAME_LEN: u32 = 16 * 1024 * 1024;

/// Largest payload that fits in a frame: `MAX_FRAME_LEN - 1` bytes (16,777,215).
pub const MAX_PAYLOAD_LEN: usize = MAX_FRAME_LEN as usize - 1;

/// Most the decoder reserves ahead of bytes that have not arrived yet.
const RESERVE_STEP: usize = 256 * 1024;

/// Bytes before the payload: four length bytes and the type byte.
pub const FRAME_HEADER_LEN: usize = 5;

/// The message type byte of a frame.
///
/// ```
/// use agent_protocol_core::frame::FrameType;
/// assert_eq!(FrameType::from_byte(0x20), Some(FrameType::AgentResponse));
/// assert_eq!(FrameType::Ping.as_byte(), 0x41);
/// assert_eq!(FrameType::from_byte(0xF0), None);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FrameType {
    /// 0x01: proxy handshake, or an agent's reverse registration.
    HandshakeRequest = 0x01,
    /// 0x02: agent handshake answer, or the proxy's reverse registration answer.
    HandshakeResponse = 0x02,
    /// 0x10
    RequestHeaders = 0x10,
    /// 0x11
    RequestBodyChunk = 0x11,
    /// 0x12
    ResponseHeaders = 0x12,
    /// 0x13
    ResponseBodyChunk = 0x13,
    /// 0x14
    RequestComplete = 0x14,
    /// 0x15
    WebSocketFrame = 0x15,
    /// 0x16
    GuardrailInspect = 0x16,
    /// 0x17
    Configure = 0x17,
    /// 0x20
    AgentResponse = 0x20,
    /// 0x30
    HealthStatus = 0x30,
    /// 0x31
    MetricsReport = 0x31,
    /// 0x32
    ConfigUpdateRequest = 0x32,
    /// 0x33
    FlowControl = 0x33,
    /// 0x40
    Cancel = 0x40,
    /// 0x41
    Ping = 0x41,
    /// 0x42
    Pong = 0x42,
}

impl FrameType {
    /// Every type, in byte order.
    pub const ALL: [FrameType; 18] = [
        Self::HandshakeRequest,
        Self::HandshakeResponse,
        Self::RequestHeaders,
        Self::RequestBodyChunk,
        Self::ResponseHeaders,
        Self::ResponseBodyChunk,
        Self::RequestComplete,
        Self::WebSocketFrame,
        Self::GuardrailInspect,
        Self::Configure,
        Self::AgentResponse,
        Self::HealthStatus,
        Self::MetricsReport,
        Self::ConfigUpdateRequest,
        Self::FlowControl,
        Self::Cancel,
        Self::Ping,
        Self::Pong,
    ];

    /// Parses a type byte; `None` for bytes the protocol does not define.
    pub fn from_byte(byte: u8) -> Option<Self> {
        Some(match byte {
            0x01 => Self::HandshakeRequest,
            0x02 => Self::HandshakeResponse,
            0x10 => Self::RequestHeaders,
            0x11 => Self::RequestBodyChunk,
            0x12 => Self::ResponseHeaders,
            0x13 => Self::ResponseBodyChunk,
            0x14 => Self::RequestComplete,
            0x15 => Self::WebSocketFrame,
            0x16 => Self::GuardrailInspect,
            0x17 => Self::Configure,
            0x20 => Self::AgentResponse,
            0x30 => Self::HealthStatus,
            0x31 => Self::MetricsReport,
            0x32 => Self::ConfigUpdateRequest,
            0x33 => Self::FlowControl,
            0x40 => Self::Cancel,
            0x41 => Self::Ping,
            0x42 => Self::Pong,
            _ => return None,
        })
    }

    /// The byte written on the wire.
    pub fn as_byte(self) -> u8 {
        self as u8
    }

    /// Whether this is a proxy->agent event (0x10..=0x17) that the agent must answer with 0x20.
    pub fn is_event(self) -> bool {
        (0x10..=0x17).contains(&self.as_byte())
    }
}

/// Why a byte stream could not be framed. Every variant is the peer's fault and fatal for the
/// connection: after it the stream position is unknown.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The length prefix was 0, which cannot even hold the type byte.
    #[error("frame length prefix is 0 (a frame needs at least its type byte)")]
    ZeroLength,
    /// The length prefix exceeds the limit; nothing was allocated for it. When its four bytes
    /// are the start of another protocol's first message (see [`FrameError::foreign_protocol`]),
    /// the message says so instead of only quoting a meaningless number.
    #[error("{}", too_large_message(*.len, *.max))]
    TooLarge {
        /// The announced length L.
        len: u32,
        /// The limit in force.
        max: u32,
    },
}

impl FrameError {
    /// The protocol the peer seems to speak instead, when the bytes read as a length prefix
    /// are how that protocol's first message starts: an HTTP/1 request or response, the
    /// HTTP/2 preface (a gRPC client or server), or a TLS record. Such prefixes are always far
    /// above any frame limit, so this only ever names a stream that was refused anyway.
    ///
    /// ```
    /// use agent_protocol_core::frame::FrameError;
    /// let e = FrameError::TooLarge { len: u32::from_be_bytes(*b"HTTP"), max: 16 << 20 };
    /// assert_eq!(e.foreign_protocol(), Some("HTTP"));
    /// assert!(e.to_string().contains("the peer looks like HTTP"));
    /// ```
    pub fn foreign_protocol(&self) -> Option<&'static str> {
        let Self::TooLarge { len, .. } = self else {
            return None;
        };
        let prefix = len.to_be_bytes();
        match &prefix {
            b"HTTP" | b"GET " | b"POST" | b"PUT " | b"HEAD" | b"DELE" | b"OPTI" | b"PATC"
            | b"CONN" | b"TRAC" => Some("HTTP"),
            b"PRI " => Some("HTTP/2 (gRPC?)"),
            // A TLS handshake record: content type 22, version 3.x.
            [0x16, 0x03, 0x00..=0x04, _] => Some("TLS"),
            _ => None,
        }
    }
}

fn too_large_message(len: u32, max: u32) -> String {
    let error = FrameError::TooLarge { len, max };
    match error.foreign_protocol() {
        Some(protocol) => format!(
            "the peer looks like {protocol}, not Agent Protocol v2 (its first bytes {:?} are \
             not a frame length)",
            String::from_utf8_lossy(&len.to_be_bytes())
        ),
        None => format!("frame length prefix {len} exceeds the limit of {max} bytes"),
    }
}

/// A payload too large to frame, refused by the encoder before anything was written.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("payload of {len} bytes exceeds the frame limit of {max} bytes")]
pub struct PayloadTooLarge {
    /// Payload length.
    pub len: usize,
    /// Largest payload allowed.
    pub max: usize,
}

/// One complete frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// The type byte.
    pub frame_type: FrameType,
    /// The payload, sharing the decoder's buffer (no copy).
    pub payload: Bytes,
}

/// What [`FrameDecoder::decode`] produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decoded {
    /// A frame with a known type.
    Frame(Frame),
    /// A frame with an unknown type byte, consumed and dropped (the connection lives on).
    Skipped {
        /// The unknown type byte.
        type_byte: u8,
        /// Payload bytes discarded.
        payload_len: usize,
    },
}

/// Incremental frame decoder.
///
/// ```
/// use agent_protocol_core::frame::{Decoded, FrameDecoder, FrameType, encode_frame};
/// use bytes::BytesMut;
///
/// let mut wire = BytesMut::new();
/// encode_frame(&mut wire, FrameType::Ping, br#"{"sequence":0,"timestamp_ms":1}"#).unwrap();
///
/// let mut decoder = FrameDecoder::new();
/// let mut input = BytesMut::new();
/// input.extend_from_slice(&wire[..3]); // a partial read yields nothing yet
/// assert_eq!(decoder.decode(&mut input).unwrap(), None);
/// input.extend_from_slice(&wire[3..]);
/// match decoder.decode(&mut input).unwrap() {
///     Some(Decoded::Frame(frame)) => assert_eq!(frame.frame_type, FrameType::Ping),
///     other => panic!("unexpected {other:?}"),
/// }
/// ```
#[derive(Debug)]
pub struct FrameDecoder {
    max_frame_len: u32,
    /// Payload bytes of an unknown-type frame still to discard, and its type byte. Skipping in
    /// place means an unknown 16 MiB frame never has to be buffered whole.
    skipping: Option<(u8, usize, usize)>,
    frames_skipped: u64,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameDecoder {
    /// A decoder enforcing [`MAX_FRAME_LEN`].
    pub fn new() -> Self {
        Self::with_max_frame_len(MAX_FRAME_LEN)
    }

    /// A decoder with a lower limit (values above [`MAX_FRAME_LEN`] are clamped to it).
    pub fn with_max_frame_len(max_frame_len: u32) -> Self {
        Self {
            max_frame_len: max_frame_len.clamp(1, MAX_FRAME_LEN),
            skipping: None,
            frames_skipped: 0,
        }
    }

    /// Number of unknown-type frames skipped so far.
    pub fn frames_skipped(&self) -> u64 {
        self.frames_skipped
    }

    /// How many more bytes the decoder needs before it can make progress: a hint for sizing the
    /// next read. Never more than one frame.
    pub fn bytes_wanted(&self, buf: &BytesMut) -> usize {
        if let Some((_, remaining, _)) = self.skipping {
            return remaining.saturating_sub(buf.len()).max(1);
        }
        if buf.len() < FRAME_HEADER_LEN {
            return FRAME_HEADER_LEN - buf.len();
        }
        let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        (len + 4).saturating_sub(buf.len()).max(1)
    }

    /// Takes the next frame from the front of `buf`. `Ok(None)` means more bytes are needed (what
    /// was there stays buffered, except skipped payload which is dropped as it arrives).
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Decoded>, FrameError> {
        if let Some((type_byte, remaining, total)) = self.skipping {
            let take = remaining.min(buf.len());
            buf.advance(take);
            if take < remaining {
                self.skipping = Some((type_byte, remaining - take, total));
                return Ok(None);
            }
            self.skipping = None;
            self.frames_skipped += 1;
            return Ok(Some(Decoded::Skipped {
                type_byte,
                payload_len: total,
            }));
        }
        if buf.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
        if len == 0 {
            return Err(FrameError::ZeroLength);
        }
        if len > self.max_frame_len {
            return Err(FrameError::TooLarge {
                len,
                max: self.max_frame_len,
            });
        }
        if buf.len() < FRAME_HEADER_LEN {
            return Ok(None);
        }
        let payload_len = len as usize - 1;
        let type_byte = buf[4];
        let Some(frame_type) = FrameType::from_byte(type_byte) else {
            buf.advance(FRAME_HEADER_LEN);
            self.skipping = Some((type_byte, payload_len, payload_len));
            return self.decode(buf);
        };
        if buf.len() < FRAME_HEADER_LEN + payload_len {
            // Make room for the rest of the frame, but only up to RESERVE_STEP at a time: a peer
            // that announces 16 MiB and sends nothing more must not make us allocate 16 MiB per
            // connection. A frame that really is large grows the buffer as its bytes arrive.
            let missing = FRAME_HEADER_LEN + payload_len - buf.len();
            buf.reserve(missing.min(RESERVE_STEP));
            return Ok(None);
        }
        buf.advance(FRAME_HEADER_LEN);
        let payload = buf.split_to(payload_len).freeze();
        Ok(Some(Decoded::Frame(Frame {
            frame_type,
            payload,
        })))
    }
}

/// Appends one frame to `out`.
///
/// ```
/// use agent_protocol_core::frame::{encode_frame, FrameType};
/// let mut out = bytes::BytesMut::new();
/// encode_frame(&mut out, FrameType::Pong, b"{}").unwrap();
/// assert_eq!(&out[..], &[0, 0, 0, 3, 0x42, b'{', b'}']);
/// ```
pub fn encode_frame(
    out: &mut BytesMut,
    frame_type: FrameType,
    payload: &[u8],
) -> Result<(), PayloadTooLarge> {
    if payload.len() > MAX_PAYLOAD_LEN {
        return Err(PayloadTooLarge {
            len: payload.len(),
            max: MAX_PAYLOAD_LEN,
        });
    }
    out.reserve(FRAME_HEADER_LEN + payload.len());
    out.put_u32(payload.len() as u32 + 1);
    out.put_u8(frame_type.as_byte());
    out.extend_from_slice(payload);
    Ok(())
}

/// Writes a frame whose payload is serialised straight into the output buffer, so no
/// intermediate `Vec` is needed: [`FrameWriter::begin`] reserves the header, the caller appends
/// the payload to [`FrameWriter::payload`], and [`FrameWriter::finish`] patches the length (or
/// rolls the buffer back if the payload is too large).
///
/// ```
/// use agent_protocol_core::frame::{FrameType, FrameWriter};
/// use bytes::BufMut;
/// let mut out = bytes::BytesMut::new();
/// let mut writer = FrameWriter::begin(&mut out, FrameType::Ping);
/// writer.payload().put_slice(b"{}");
/// writer.finish().unwrap();
/// assert_eq!(&out[..], &[0, 0, 0, 3, 0x41, b'{', b'}']);
/// ```
pub struct FrameWriter<'a> {
    out: &'a mut BytesMut,
    start: usize,
}

impl<'a> FrameWriter<'a> {
    /// Appends a placeholder header to `out`.
    pub fn begin(out: &'a mut BytesMut, frame_type: FrameType) -> Self {
        let start = out.len();
        out.put_u32(0);
        out.put_u8(frame_type.as_byte());
        Self { out, start }
    }

    /// The buffer to append the payload to.
    pub fn payload(&mut self) -> &mut BytesMut {
        self.out
    }

    /// Bytes of payload written so far.
    pub fn payload_len(&self) -> usize {
        self.out.len() - self.start - FRAME_HEADER_LEN
    }

    /// Patches the length prefix. On error the frame is removed from the buffer entirely.
    pub fn finish(self) -> Result<(), PayloadTooLarge> {
        let payload_len = self.payload_len();
        if payload_len > MAX_PAYLOAD_LEN {
            self.out.truncate(self.start);
            return Err(PayloadTooLarge {
                len: payload_len,
                max: MAX_PAYLOAD_LEN,
            });
        }
        let len = (payload_len as u32 + 1).to_be_bytes();
        self.out[self.start..self.start + 4].copy_from_slice(&len);
        Ok(())
    }

    /// Drops the partly written frame.
    pub fn abort(self) {
        self.out.truncate(self.start);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(ty: u8, payload: &[u8]) -> Vec<u8> {
        let mut v = ((payload.len() + 1) as u32).to_be_bytes().to_vec();
        v.push(ty);
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn zero_length_is_an_error() {
        let mut buf = BytesMut::from(&[0u8, 0, 0, 0, 0x41][..]);
        assert_eq!(
            FrameDecoder::new().decode(&mut buf),
            Err(FrameError::ZeroLength)
        );
    }

    #[test]
    fn foreign_protocols_are_named_not_quoted_as_lengths() {
        let cases: [(&[u8], Option<&str>); 5] = [
            (b"HTTP/1.1 400 Bad Request\r\n", Some("HTTP")),
            (b"GET / HTTP/1.1\r\n", Some("HTTP")),
            (b"PRI * HTTP/2.0\r\n", Some("HTTP/2 (gRPC?)")),
            (&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01], Some("TLS")),
            (&[0x7f, 0xff, 0xff, 0xff, 0x10], None),
        ];
        for (bytes, expected) in cases {
            let mut buf = BytesMut::from(bytes);
            let error = FrameDecoder::new().decode(&mut buf).unwrap_err();
            assert!(matches!(error, FrameError::TooLarge { .. }), "{bytes:?}");
            assert_eq!(error.foreign_protocol(), expected, "{bytes:?}");
            let shown = error.to_string();
            match expected {
                Some(p) => assert!(shown.contains(&format!("looks like {p}")), "{shown}"),
                None => assert!(shown.contains("exceeds the limit"), "{shown}"),
            }
        }
    }

    #[test]
    fn oversized_length_rejected_before_reserving() {
        let mut buf = BytesMut::from(&(MAX_FRAME_LEN + 1).to_be_bytes()[..]);
        let cap = buf.capacity();
        assert_eq!(
            FrameDecoder::new().decode(&mut buf),
            Err(FrameError::TooLarge {
                len: MAX_FRAME_LEN + 1,
                max: MAX_FRAME_LEN
            })
        );
        assert_eq!(buf.capacity(), cap);
    }

    #[test]
    fn max_length_accepted_and_l1_is_empty_payload() {
        let mut buf = BytesMut::from(&frame(0x41, b"")[..]);
        let got = FrameDecoder::new().decode(&mut buf).unwrap().unwrap();
        assert_eq!(
            got,
            Decoded::Frame(Frame {
                frame_type: FrameType::Ping,
                payload: Bytes::new()
            })
        );
        let mut header = BytesMut::from(&MAX_FRAME_LEN.to_be_bytes()[..]);
        header.extend_from_slice(&[0x20]);
        assert_eq!(FrameDecoder::new().decode(&mut header), Ok(None));
        // Announcing 16 MiB does not make the decoder allocate 16 MiB up front.
        assert!(
            header.capacity() <= RESERVE_STEP + 64,
            "{}",
            header.capacity()
        );
    }

    #[test]
    fn unknown_type_is_skipped_across_reads() {
        let mut wire = frame(0xF0, &[7u8; 100]);
        wire.extend(frame(0x42, b"{}"));
        let mut dec = FrameDecoder::new();
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for chunk in wire.chunks(7) {
            buf.extend_from_slice(chunk);
            while let Some(d) = dec.decode(&mut buf).unwrap() {
                out.push(d);
            }
            // Skipped payload is never buffered beyond one read.
            assert!(buf.len() <= 7 + FRAME_HEADER_LEN);
        }
        assert_eq!(
            out,
            vec![
                Decoded::Skipped {
                    type_byte: 0xF0,
                    payload_len: 100
                },
                Decoded::Frame(Frame {
                    frame_type: FrameType::Pong,
                    payload: Bytes::from_static(b"{}")
                })
            ]
        );
        assert_eq!(dec.frames_skipped(), 1);
    }

    #[test]
    fn encoder_refuses_oversized_payload_and_writer_rolls_back() {
        let big = vec![0u8; MAX_PAYLOAD_LEN + 1];
        let mut out = BytesMut::from(&b"keep"[..]);
        assert!(encode_frame(&mut out, FrameType::RequestBodyChunk, &big).is_err());
        assert_eq!(&out[..], b"keep");
        let mut w = FrameWriter::begin(&mut out, FrameType::RequestBodyChunk);
        w.payload().extend_from_slice(&big);
        assert!(w.finish().is_err());
        assert_eq!(&out[..], b"keep");
        encode_frame(&mut out, FrameType::RequestBodyChunk, &big[1..]).unwrap();
        assert_eq!(out.len(), 4 + FRAME_HEADER_LEN + MAX_PAYLOAD_LEN);
    }

    #[test]
    fn every_type_byte_round_trips() {
        for ty in FrameType::ALL {
            assert_eq!(FrameType::from_byte(ty.as_byte()), Some(ty));
        }
        let known = (0u8..=255)
            .filter(|b| FrameType::from_byte(*b).is_some())
            .count();
        assert_eq!(known, FrameType::ALL.len());
    }
}
