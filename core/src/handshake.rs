//! The UDS handshake: its two messages (0x01 and 0x02), encoding negotiation, and one state
//! machine per role.
//!
//! The handshake is always JSON. The proxy offers encodings in preference order; the agent picks
//! the first it supports (JSON when nothing matches); the proxy refuses an answer naming an
//! encoding it did not offer. Both sides give up after a deadline that the caller drives with
//! `handle_timeout(now)`.

use std::time::{Duration, Instant};

use bytes::BytesMut;
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

use crate::capabilities::Capabilities;
use crate::encoding::{self, EncodeError, Encoding};
use crate::frame::{Frame, FrameType};

/// The protocol version this crate speaks.
pub const PROTOCOL_VERSION: u32 = 2;

/// Default handshake deadline (both roles).
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// 0x01 from the proxy (`UdsHandshakeRequest`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HandshakeRequest {
    /// Versions the proxy speaks.
    pub supported_versions: Vec<u32>,
    /// Proxy identifier.
    pub proxy_id: String,
    /// Proxy version.
    pub proxy_version: String,
    /// Agent configuration, if any.
    #[serde(default)]
    pub config: Option<serde_json::Value>,
    /// Encodings offered, preferred first. Kept as text so an unknown name (say `"cbor"`) is
    /// ignored instead of making the whole request unparsable (as it does for the reference).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub supported_encodings: Vec<String>,
}

/// 0x02 from the agent (`UdsHandshakeResponse`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HandshakeResponse {
    /// Version the agent will speak.
    pub protocol_version: u32,
    /// The agent's capabilities (sent even on failure).
    pub capabilities: Capabilities,
    /// Whether the agent accepted.
    pub success: bool,
    /// Why not.
    #[serde(default)]
    pub error: Option<String>,
    /// Chosen encoding name; missing means JSON.
    #[serde(default = "json_name")]
    pub encoding: String,
}

fn json_name() -> String {
    Encoding::Json.as_str().to_owned()
}

/// Reads a HandshakeRequest payload (always JSON, whatever encoding is negotiated after it).
pub fn decode_request(payload: &[u8]) -> Result<HandshakeRequest, HandshakeError> {
    serde_json::from_slice(payload).map_err(|e| HandshakeError::Malformed(e.to_string()))
}

/// The agent's choice: the first offered encoding it supports, else JSON.
///
/// ```
/// use agent_protocol_core::{handshake::negotiate_encoding, Encoding};
/// let offered = vec!["cbor".to_string(), "msgpack".into(), "json".into()];
/// assert_eq!(negotiate_encoding(&offered, &[Encoding::Json, Encoding::MsgPack]), Encoding::MsgPack);
/// assert_eq!(negotiate_encoding(&offered, &[Encoding::Json]), Encoding::Json);
/// assert_eq!(negotiate_encoding(&[], &[Encoding::MsgPack]), Encoding::Json);
/// ```
pub fn negotiate_encoding(offered: &[String], supported: &[Encoding]) -> Encoding {
    offered
        .iter()
        .filter_map(|name| Encoding::from_name(name))
        .find(|e| *e == Encoding::Json || supported.contains(e))
        .unwrap_or(Encoding::Json)
}

/// Why a handshake failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// No answer before the deadline.
    #[error("handshake timed out after {0:?}")]
    Timeout(Duration),
    /// The first frame was of the wrong type.
    #[error("expected {expected:?} as the first frame, got type 0x{got:02x}")]
    UnexpectedFrame {
        /// Expected type.
        expected: FrameType,
        /// Type byte received.
        got: u8,
    },
    /// The handshake JSON did not parse.
    #[error("malformed handshake: {0}")]
    Malformed(String),
    /// The peer refused.
    #[error("handshake rejected by peer: {0}")]
    Rejected(String),
    /// The agent chose an encoding the proxy did not offer.
    #[error("agent chose encoding {chosen:?}, which the proxy did not offer")]
    EncodingNotOffered {
        /// What the agent named.
        chosen: String,
    },
    /// No common protocol version.
    #[error("no common protocol version: peer supports {peer:?}, we speak {PROTOCOL_VERSION}")]
    VersionMismatch {
        /// Versions the peer listed.
        peer: Vec<u32>,
    },
}

/// What a successful handshake settled.
#[derive(Clone, Debug, PartialEq)]
pub struct Negotiated {
    /// Encoding for every later frame.
    pub encoding: Encoding,
    /// The agent's capabilities.
    pub capabilities: Capabilities,
    /// Version the agent announced.
    pub protocol_version: u32,
}

/// Proxy-side handshake settings.
///
/// Built from [`Default`] and the `with_*` setters (fields may be added in any release, so the
/// struct cannot be built literally outside this crate); the fields stay public to read and set.
///
/// ```
/// use std::time::Duration;
/// use agent_protocol_core::handshake::ProxyHandshakeConfig;
/// use agent_protocol_core::Encoding;
/// let config = ProxyHandshakeConfig::default()
///     .with_proxy_id("edge-1")
///     .with_encodings([Encoding::Json])
///     .with_timeout(Duration::from_secs(2));
/// assert_eq!(config.encodings.as_slice(), &[Encoding::Json]);
/// ```
///
/// Deserializes from a configuration section: keys left out keep their defaults, an unknown key
/// is an error, the timeout is a string such as `"2s"` or `"500ms"`. No value needs checking: an
/// empty `encodings` offers JSON, as with the setter.
///
/// ```
/// use std::time::Duration;
/// use agent_protocol_core::handshake::ProxyHandshakeConfig;
/// use agent_protocol_core::Encoding;
/// let config: ProxyHandshakeConfig =
///     serde_json::from_str(r#"{"proxy_id": "edge-1", "encodings": ["json"], "timeout": "2s"}"#)
///         .unwrap();
/// assert_eq!(config.timeout, Duration::from_secs(2));
/// assert_eq!(config.encodings.as_slice(), &[Encoding::Json]);
/// ```
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct ProxyHandshakeConfig {
    /// Our identifier.
    pub proxy_id: String,
    /// Our version.
    pub proxy_version: String,
    /// Encodings to offer, preferred first.
    pub encodings: SmallVec<[Encoding; 2]>,
    /// Configuration passed to the agent in the handshake.
    pub config: Option<serde_json::Value>,
    /// Deadline for the agent's answer.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for ProxyHandshakeConfig {
    fn default() -> Self {
        Self {
            proxy_id: "agent-protocol-rs".to_owned(),
            proxy_version: env!("CARGO_PKG_VERSION").to_owned(),
            encodings: smallvec::smallvec![Encoding::MsgPack, Encoding::Json],
            config: None,
            timeout: DEFAULT_HANDSHAKE_TIMEOUT,
        }
    }
}

impl ProxyHandshakeConfig {
    /// Sets [`proxy_id`](Self::proxy_id), the identifier announced to the agent.
    #[must_use]
    pub fn with_proxy_id(mut self, proxy_id: impl Into<String>) -> Self {
        self.proxy_id = proxy_id.into();
        self
    }

    /// Sets [`proxy_version`](Self::proxy_version), the version announced to the agent.
    #[must_use]
    pub fn with_proxy_version(mut self, proxy_version: impl Into<String>) -> Self {
        self.proxy_version = proxy_version.into();
        self
    }

    /// Sets [`encodings`](Self::encodings), the encodings offered, preferred first.
    #[must_use]
    pub fn with_encodings(mut self, encodings: impl IntoIterator<Item = Encoding>) -> Self {
        self.encodings = encodings.into_iter().collect();
        self
    }

    /// Sets [`config`](Self::config) to `config`, the configuration passed to the agent.
    #[must_use]
    pub fn with_config(mut self, config: serde_json::Value) -> Self {
        self.config = Some(config);
        self
    }

    /// Sets [`timeout`](Self::timeout), the deadline for the agent's answer.
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

/// The proxy's side: sends 0x01 at creation, waits for 0x02.
///
/// ```
/// use std::time::Instant;
/// use agent_protocol_core::handshake::{ProxyHandshake, ProxyHandshakeConfig};
/// let mut out = bytes::BytesMut::new();
/// let hs = ProxyHandshake::start(&ProxyHandshakeConfig::default(), Instant::now(), &mut out).unwrap();
/// assert_eq!(out[4], 0x01);
/// assert!(hs.deadline() > Instant::now() - std::time::Duration::from_secs(1));
/// ```
#[derive(Debug)]
pub struct ProxyHandshake {
    offered: SmallVec<[Encoding; 2]>,
    deadline: Instant,
    timeout: Duration,
}

impl ProxyHandshake {
    /// Writes the request frame to `out` and starts the clock.
    pub fn start(
        config: &ProxyHandshakeConfig,
        now: Instant,
        out: &mut BytesMut,
    ) -> Result<Self, EncodeError> {
        let (hs, request) = Self::start_request(config, now);
        encoding::encode_frame(out, FrameType::HandshakeRequest, Encoding::Json, &request)?;
        Ok(hs)
    }

    /// Starts the clock and returns the request for a transport that frames it itself (gRPC).
    pub fn start_request(config: &ProxyHandshakeConfig, now: Instant) -> (Self, HandshakeRequest) {
        let mut offered = config.encodings.clone();
        if offered.is_empty() {
            offered.push(Encoding::Json);
        }
        let request = HandshakeRequest {
            supported_versions: vec![PROTOCOL_VERSION],
            proxy_id: config.proxy_id.clone(),
            proxy_version: config.proxy_version.clone(),
            config: config.config.clone(),
            supported_encodings: offered.iter().map(|e| e.as_str().to_owned()).collect(),
        };
        let hs = Self {
            offered,
            deadline: now + config.timeout,
            timeout: config.timeout,
        };
        (hs, request)
    }

    /// When the handshake gives up.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Checks the deadline.
    pub fn handle_timeout(&self, now: Instant) -> Result<(), HandshakeError> {
        if now >= self.deadline {
            Err(HandshakeError::Timeout(self.timeout))
        } else {
            Ok(())
        }
    }

    /// Processes the agent's first frame.
    pub fn handle_frame(&self, frame: &Frame) -> Result<Negotiated, HandshakeError> {
        if frame.frame_type != FrameType::HandshakeResponse {
            return Err(HandshakeError::UnexpectedFrame {
                expected: FrameType::HandshakeResponse,
                got: frame.frame_type.as_byte(),
            });
        }
        let response: HandshakeResponse = serde_json::from_slice(&frame.payload)
            .map_err(|e| HandshakeError::Malformed(e.to_string()))?;
        self.handle_response(response, true)
    }

    /// Processes the agent's answer. `check_encoding` is false on transports without payload
    /// encodings (gRPC), where the answer's `encoding` is meaningless.
    pub fn handle_response(
        &self,
        response: HandshakeResponse,
        check_encoding: bool,
    ) -> Result<Negotiated, HandshakeError> {
        if !response.success {
            return Err(HandshakeError::Rejected(
                response
                    .error
                    .unwrap_or_else(|| "agent gave no reason".to_owned()),
            ));
        }
        let encoding = if check_encoding {
            Encoding::from_name(&response.encoding)
                .filter(|e| self.offered.contains(e))
                .ok_or(HandshakeError::EncodingNotOffered {
                    chosen: response.encoding.clone(),
                })?
        } else {
            Encoding::Json
        };
        Ok(Negotiated {
            encoding,
            capabilities: response.capabilities,
            protocol_version: response.protocol_version,
        })
    }
}

/// Agent-side handshake settings.
///
/// Built from [`Default`] and the `with_*` setters (fields may be added in any release, so the
/// struct cannot be built literally outside this crate); the fields stay public to read and set.
///
/// ```
/// use agent_protocol_core::handshake::AgentHandshakeConfig;
/// use agent_protocol_core::{Capabilities, Encoding};
/// let config = AgentHandshakeConfig::default()
///     .with_capabilities(Capabilities::new("waf-1", "WAF", "1.0.0"))
///     .with_encodings([Encoding::Json]);
/// assert_eq!(config.capabilities.agent_id, "waf-1");
/// ```
///
/// Deserializes from a configuration section: keys left out keep their defaults, an unknown key
/// is an error (inside `capabilities` too, see [`capabilities::strict`](crate::capabilities::strict)),
/// the timeout is a string such as `"5s"`. No value needs checking: JSON is accepted whether
/// `encodings` lists it or not, as with the setter.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct AgentHandshakeConfig {
    /// What we announce.
    #[serde(with = "crate::capabilities::strict")]
    pub capabilities: Capabilities,
    /// Encodings we can speak (JSON is always among them).
    pub encodings: SmallVec<[Encoding; 2]>,
    /// Deadline for the proxy's request.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for AgentHandshakeConfig {
    fn default() -> Self {
        Self {
            capabilities: Capabilities::default(),
            encodings: smallvec::smallvec![Encoding::MsgPack, Encoding::Json],
            timeout: DEFAULT_HANDSHAKE_TIMEOUT,
        }
    }
}

impl AgentHandshakeConfig {
    /// Sets [`capabilities`](Self::capabilities), what the agent announces.
    #[must_use]
    pub fn with_capabilities(mut self, capabilities: Capabilities) -> Self {
        self.capabilities = capabilities;
        self
    }

    /// Sets [`encodings`](Self::encodings), the encodings the agent can speak.
    #[must_use]
    pub fn with_encodings(mut self, encodings: impl IntoIterator<Item = Encoding>) -> Self {
        self.encodings = encodings.into_iter().collect();
        self
    }

    /// Sets [`timeout`](Self::timeout), the deadline for the proxy's request.
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

/// The agent's side: waits for 0x01, answers 0x02.
#[derive(Debug)]
pub struct AgentHandshake {
    deadline: Instant,
    timeout: Duration,
}

impl AgentHandshake {
    /// Starts waiting for the proxy's request.
    pub fn new(config: &AgentHandshakeConfig, now: Instant) -> Self {
        Self {
            deadline: now + config.timeout,
            timeout: config.timeout,
        }
    }

    /// When the handshake gives up.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Checks the deadline.
    pub fn handle_timeout(&self, now: Instant) -> Result<(), HandshakeError> {
        if now >= self.deadline {
            Err(HandshakeError::Timeout(self.timeout))
        } else {
            Ok(())
        }
    }

    /// Processes the proxy's first frame and writes the answer to `out`: what a framed
    /// transport's codec and [`AgentHandshake::handle_request`] do together, for a peer that
    /// needs nothing else (test agents). On a version mismatch the answer is a refusal (written
    /// to `out`) and the error says so; a frame of the wrong type or unparsable JSON gets no
    /// answer.
    pub fn handle_frame(
        &self,
        config: &AgentHandshakeConfig,
        frame: &Frame,
        out: &mut BytesMut,
    ) -> Result<(Negotiated, HandshakeRequest), HandshakeError> {
        if frame.frame_type != FrameType::HandshakeRequest {
            return Err(HandshakeError::UnexpectedFrame {
                expected: FrameType::HandshakeRequest,
                got: frame.frame_type.as_byte(),
            });
        }
        let request = decode_request(&frame.payload)?;
        let (response, outcome) = self.handle_request(config, request);
        encoding::encode_frame(out, FrameType::HandshakeResponse, Encoding::Json, &response)
            .map_err(|e| HandshakeError::Malformed(e.to_string()))?;
        outcome
    }

    /// Answers the proxy's request: the version check, and the first of the proxy's encodings
    /// that `config.encodings` supports. The answer is returned in both cases: a refusal on a
    /// version mismatch, to be sent before closing.
    pub fn handle_request(
        &self,
        config: &AgentHandshakeConfig,
        request: HandshakeRequest,
    ) -> (
        HandshakeResponse,
        Result<(Negotiated, HandshakeRequest), HandshakeError>,
    ) {
        Self::answer(config, request, &config.encodings)
    }

    fn answer(
        config: &AgentHandshakeConfig,
        request: HandshakeRequest,
        encodings: &[Encoding],
    ) -> (
        HandshakeResponse,
        Result<(Negotiated, HandshakeRequest), HandshakeError>,
    ) {
        let chosen = negotiate_encoding(&request.supported_encodings, encodings);
        let version_ok = request.supported_versions.contains(&PROTOCOL_VERSION);
        let response = HandshakeResponse {
            protocol_version: PROTOCOL_VERSION,
            capabilities: config.capabilities.clone(),
            success: version_ok,
            error: (!version_ok).then(|| {
                format!(
                    "unsupported protocol versions {:?}; this agent speaks {PROTOCOL_VERSION}",
                    request.supported_versions
                )
            }),
            encoding: chosen.as_str().to_owned(),
        };
        if !version_ok {
            return (
                response,
                Err(HandshakeError::VersionMismatch {
                    peer: request.supported_versions,
                }),
            );
        }
        let negotiated = Negotiated {
            encoding: chosen,
            capabilities: config.capabilities.clone(),
            protocol_version: PROTOCOL_VERSION,
        };
        (response, Ok((negotiated, request)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{Decoded, FrameDecoder};

    fn one_frame(buf: &mut BytesMut) -> Frame {
        match FrameDecoder::new().decode(buf).unwrap() {
            Some(Decoded::Frame(f)) => f,
            other => panic!("no frame: {other:?}"),
        }
    }

    #[test]
    fn both_roles_agree_on_msgpack() {
        let now = Instant::now();
        let mut wire = BytesMut::new();
        let proxy =
            ProxyHandshake::start(&ProxyHandshakeConfig::default(), now, &mut wire).unwrap();
        let agent_cfg = AgentHandshakeConfig::default();
        let agent = AgentHandshake::new(&agent_cfg, now);
        let req = one_frame(&mut wire);
        let (agent_side, request) = agent.handle_frame(&agent_cfg, &req, &mut wire).unwrap();
        assert_eq!(request.supported_encodings, ["msgpack", "json"]);
        let resp = one_frame(&mut wire);
        let proxy_side = proxy.handle_frame(&resp).unwrap();
        assert_eq!(proxy_side.encoding, Encoding::MsgPack);
        assert_eq!(agent_side.encoding, Encoding::MsgPack);
    }

    #[test]
    fn proxy_refuses_an_encoding_it_did_not_offer() {
        let now = Instant::now();
        let mut wire = BytesMut::new();
        let cfg = ProxyHandshakeConfig::default().with_encodings([Encoding::Json]);
        let proxy = ProxyHandshake::start(&cfg, now, &mut wire).unwrap();
        let body = br#"{"protocol_version":2,"capabilities":{},"success":true,"error":null,"encoding":"msgpack"}"#;
        let frame = Frame {
            frame_type: FrameType::HandshakeResponse,
            payload: bytes::Bytes::from_static(body),
        };
        assert_eq!(
            proxy.handle_frame(&frame),
            Err(HandshakeError::EncodingNotOffered {
                chosen: "msgpack".into()
            })
        );
    }

    #[test]
    fn agent_refuses_version_1_with_an_answer() {
        let now = Instant::now();
        let cfg = AgentHandshakeConfig::default();
        let agent = AgentHandshake::new(&cfg, now);
        let frame = Frame {
            frame_type: FrameType::HandshakeRequest,
            payload: bytes::Bytes::from_static(
                br#"{"supported_versions":[1],"proxy_id":"p","proxy_version":"0","supported_encodings":["cbor"]}"#,
            ),
        };
        let mut out = BytesMut::new();
        let err = agent.handle_frame(&cfg, &frame, &mut out).unwrap_err();
        assert!(matches!(err, HandshakeError::VersionMismatch { .. }));
        let answer: HandshakeResponse =
            serde_json::from_slice(&one_frame(&mut out).payload).unwrap();
        assert!(!answer.success);
        assert!(answer.error.unwrap().contains("unsupported"));
    }

    #[test]
    fn proxy_config_deserializes_over_its_defaults() {
        let config: ProxyHandshakeConfig = serde_json::from_str(
            r#"{"proxy_id": "edge-1", "timeout": "250ms", "config": {"rules": 3}}"#,
        )
        .unwrap();
        assert_eq!(config.proxy_id, "edge-1");
        assert_eq!(config.timeout, Duration::from_millis(250));
        let expected = ProxyHandshakeConfig::default()
            .with_proxy_id("edge-1")
            .with_timeout(Duration::from_millis(250))
            .with_config(serde_json::json!({"rules": 3}));
        assert_eq!(format!("{config:?}"), format!("{expected:?}"));

        let err = serde_json::from_str::<ProxyHandshakeConfig>(r#"{"proxy": "x"}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field `proxy`"), "{err}");
        let err = serde_json::from_str::<ProxyHandshakeConfig>(r#"{"timeout": 5}"#).unwrap_err();
        assert!(err.to_string().contains("duration"), "{err}");
        let err =
            serde_json::from_str::<ProxyHandshakeConfig>(r#"{"encodings": ["cbor"]}"#).unwrap_err();
        assert!(err.to_string().contains("cbor"), "{err}");
    }

    #[test]
    fn agent_config_deserializes_over_its_defaults() {
        let config: AgentHandshakeConfig = serde_json::from_str(
            r#"{"encodings": ["json"], "timeout": "1m 30s",
                "capabilities": {"agent_id": "waf-1", "limits": {"max_concurrency": 8}}}"#,
        )
        .unwrap();
        assert_eq!(config.timeout, Duration::from_secs(90));
        let mut capabilities = Capabilities {
            agent_id: "waf-1".into(),
            ..Capabilities::default()
        };
        capabilities.limits.max_concurrency = 8;
        let expected = AgentHandshakeConfig::default()
            .with_encodings([Encoding::Json])
            .with_timeout(Duration::from_secs(90))
            .with_capabilities(capabilities);
        assert_eq!(format!("{config:?}"), format!("{expected:?}"));

        let err =
            serde_json::from_str::<AgentHandshakeConfig>(r#"{"timeouts": "1s"}"#).unwrap_err();
        assert!(
            err.to_string().contains("unknown field `timeouts`"),
            "{err}"
        );
        let err = serde_json::from_str::<AgentHandshakeConfig>(
            r#"{"capabilities": {"features": {"websockets": true}}}"#,
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("unknown field `websockets`"),
            "{err}"
        );
    }

    #[test]
    fn configs_serialize_to_what_they_read() {
        let proxy = ProxyHandshakeConfig::default().with_timeout(Duration::from_millis(1500));
        let json = serde_json::to_value(&proxy).unwrap();
        assert_eq!(json["timeout"], "1s 500ms");
        let back: ProxyHandshakeConfig = serde_json::from_value(json).unwrap();
        assert_eq!(format!("{back:?}"), format!("{proxy:?}"));
        let agent = AgentHandshakeConfig::default();
        let back: AgentHandshakeConfig =
            serde_json::from_value(serde_json::to_value(&agent).unwrap()).unwrap();
        assert_eq!(format!("{back:?}"), format!("{agent:?}"));
    }

    #[test]
    fn deadlines_fire() {
        let now = Instant::now();
        let mut out = BytesMut::new();
        let p = ProxyHandshake::start(&ProxyHandshakeConfig::default(), now, &mut out).unwrap();
        assert!(p.handle_timeout(now + Duration::from_secs(4)).is_ok());
        assert!(matches!(
            p.handle_timeout(now + Duration::from_secs(5)),
            Err(HandshakeError::Timeout(_))
        ));
    }
}
