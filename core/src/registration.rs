//! Reverse connections: the agent dials the proxy and registers with 0x01
//! `RegistrationRequest`; the proxy answers 0x02 `RegistrationResponse`. Both always JSON; after
//! registration the connection carries the usual events, JSON encoded.
//!
//! The proxy checks, in order: version 2, non-empty agent id, allow-list, and (when required) the
//! token *value* in constant time. It answers success only after the pool has accepted the
//! connection: [`ProxyRegistration::handle_frame`] yields a [`PendingRegistration`], and the
//! adapter calls [`PendingRegistration::accept`] or [`PendingRegistration::reject`].

use std::collections::HashSet;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use serde::{Deserialize, Serialize};

use crate::capabilities::Capabilities;
use crate::encoding::{self, EncodeError, Encoding};
use crate::frame::{Frame, FrameType};
use crate::handshake::PROTOCOL_VERSION;

/// Default deadline for the registration exchange.
pub const DEFAULT_REGISTRATION_TIMEOUT: Duration = Duration::from_secs(10);

/// 0x01 from an agent on a reverse connection.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RegistrationRequest {
    /// Must be 2.
    pub protocol_version: u32,
    /// Who the agent is.
    pub agent_id: String,
    /// What it can do.
    pub capabilities: Capabilities,
    /// Shared secret.
    #[serde(default)]
    pub auth_token: Option<String>,
    /// Free-form metadata.
    #[serde(default)]
    pub metadata: Option<serde_json::Value>,
}

/// 0x02 from the proxy on a reverse connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistrationResponse {
    /// Whether the agent was admitted.
    pub success: bool,
    /// Why not.
    #[serde(default)]
    pub error: Option<String>,
    /// Proxy id.
    #[serde(default)]
    pub proxy_id: String,
    /// Proxy version.
    #[serde(default)]
    pub proxy_version: String,
    /// Connection id on success, empty on failure.
    #[serde(default)]
    pub connection_id: String,
}

/// Why a registration failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RegistrationError {
    /// Nothing arrived in time.
    #[error("registration timed out after {0:?}")]
    Timeout(Duration),
    /// First frame of the wrong type.
    #[error("expected {expected:?} as the first frame, got type 0x{got:02x}")]
    UnexpectedFrame {
        /// Expected type.
        expected: FrameType,
        /// Type byte received.
        got: u8,
    },
    /// The JSON did not parse.
    #[error("malformed registration: {0}")]
    Malformed(String),
    /// Wrong protocol version.
    #[error("Protocol version mismatch: expected {PROTOCOL_VERSION}, got {0}")]
    VersionMismatch(u32),
    /// Empty agent id.
    #[error("agent_id must not be empty")]
    EmptyAgentId,
    /// Not on the allow-list.
    #[error("Agent '{0}' is not in the allowed list")]
    NotAllowed(String),
    /// Missing or wrong token (which one is not revealed).
    #[error("authentication failed for agent '{0}'")]
    AuthFailed(String),
    /// The pool refused the connection.
    #[error("connection refused by the pool: {0}")]
    PoolRefused(String),
    /// The proxy refused (agent side).
    #[error("registration rejected by proxy: {0}")]
    Rejected(String),
}

impl RegistrationError {
    /// Whose fault: a deadline is a timeout, the pool refusing an agent is our own (the proxy's)
    /// decision, and everything else is what the peer sent or decided.
    pub fn fault(&self) -> crate::error::Fault {
        use crate::error::Fault;
        match self {
            Self::Timeout(_) => Fault::Timeout,
            Self::PoolRefused(_) => Fault::Local,
            Self::UnexpectedFrame { .. }
            | Self::Malformed(_)
            | Self::VersionMismatch(_)
            | Self::EmptyAgentId
            | Self::NotAllowed(_)
            | Self::AuthFailed(_)
            | Self::Rejected(_) => Fault::Peer,
        }
    }
}

/// Proxy-side registration policy.
#[derive(Clone, Debug)]
pub struct RegistrationPolicy {
    /// Agent ids allowed; empty means any.
    pub allowed_agents: HashSet<String>,
    /// Accepted tokens; when non-empty, every agent must present one of them.
    pub tokens: Vec<String>,
    /// Deadline for the agent's request.
    pub timeout: Duration,
    /// Our id in the answer.
    pub proxy_id: String,
    /// Our version in the answer.
    pub proxy_version: String,
}

impl Default for RegistrationPolicy {
    fn default() -> Self {
        Self {
            allowed_agents: HashSet::new(),
            tokens: Vec::new(),
            timeout: DEFAULT_REGISTRATION_TIMEOUT,
            proxy_id: "agent-protocol-rs".to_owned(),
            proxy_version: env!("CARGO_PKG_VERSION").to_owned(),
        }
    }
}

/// Compares secrets without leaking, through timing, where they first differ. The loop runs
/// over the longer input so only the lengths' maximum is observable.
///
/// ```
/// use agent_protocol_core::registration::constant_time_eq;
/// assert!(constant_time_eq(b"secret", b"secret"));
/// assert!(!constant_time_eq(b"secret", b"secreT"));
/// assert!(!constant_time_eq(b"secret", b"secret2"));
/// ```
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let n = a.len().max(b.len());
    let mut diff = (a.len() ^ b.len()) as u64;
    for i in 0..n {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= u64::from(x ^ y);
    }
    diff == 0
}

/// The proxy's side of a reverse connection's registration.
///
/// ```
/// use std::time::Instant;
/// use agent_protocol_core::registration::*;
/// use agent_protocol_core::{frame::{Frame, FrameType}, Capabilities};
/// let policy = RegistrationPolicy { tokens: vec!["s3cret".into()], ..Default::default() };
/// let reg = ProxyRegistration::new(&policy, Instant::now());
/// let request = RegistrationRequest {
///     protocol_version: 2, agent_id: "waf".into(), capabilities: Capabilities::default(),
///     auth_token: Some("s3cret".into()), metadata: None,
/// };
/// let frame = Frame { frame_type: FrameType::HandshakeRequest,
///                     payload: serde_json::to_vec(&request).unwrap().into() };
/// let mut out = bytes::BytesMut::new();
/// let pending = reg.handle_frame(&policy, &frame, &mut out).unwrap();
/// assert!(out.is_empty()); // nothing is said before the pool decides
/// pending.accept(&policy, "waf-1", &mut out).unwrap();
/// assert_eq!(out[4], 0x02);
/// ```
#[derive(Debug)]
pub struct ProxyRegistration {
    deadline: Instant,
    timeout: Duration,
}

/// A registration that passed the checks and awaits the pool's decision.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingRegistration {
    /// The agent's request (token removed).
    pub request: RegistrationRequest,
}

impl ProxyRegistration {
    /// Starts waiting for the agent's request.
    pub fn new(policy: &RegistrationPolicy, now: Instant) -> Self {
        Self {
            deadline: now + policy.timeout,
            timeout: policy.timeout,
        }
    }

    /// When the exchange gives up.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Checks the deadline.
    pub fn handle_timeout(&self, now: Instant) -> Result<(), RegistrationError> {
        if now >= self.deadline {
            Err(RegistrationError::Timeout(self.timeout))
        } else {
            Ok(())
        }
    }

    /// Validates the agent's first frame. On failure a refusal is written to `out` (except for
    /// a frame of the wrong type, which gets no answer) and the caller closes after flushing.
    pub fn handle_frame(
        &self,
        policy: &RegistrationPolicy,
        frame: &Frame,
        out: &mut BytesMut,
    ) -> Result<PendingRegistration, RegistrationError> {
        if frame.frame_type != FrameType::HandshakeRequest {
            return Err(RegistrationError::UnexpectedFrame {
                expected: FrameType::HandshakeRequest,
                got: frame.frame_type.as_byte(),
            });
        }
        let result = serde_json::from_slice::<RegistrationRequest>(&frame.payload)
            .map_err(|e| RegistrationError::Malformed(e.to_string()))
            .and_then(|request| Self::check(policy, request));
        match result {
            Ok(pending) => Ok(pending),
            Err(err) => {
                // Best effort: the error is what matters to the caller.
                let _ = write_response(out, policy, false, Some(err.to_string()), String::new());
                Err(err)
            }
        }
    }

    fn check(
        policy: &RegistrationPolicy,
        mut request: RegistrationRequest,
    ) -> Result<PendingRegistration, RegistrationError> {
        if request.protocol_version != PROTOCOL_VERSION {
            return Err(RegistrationError::VersionMismatch(request.protocol_version));
        }
        if request.agent_id.is_empty() {
            return Err(RegistrationError::EmptyAgentId);
        }
        if !policy.allowed_agents.is_empty() && !policy.allowed_agents.contains(&request.agent_id) {
            return Err(RegistrationError::NotAllowed(request.agent_id));
        }
        if !policy.tokens.is_empty() {
            let presented = request.auth_token.take().unwrap_or_default();
            // Compare against every token, without stopping early, so the time taken does not
            // tell which (if any) matched.
            let matched = policy.tokens.iter().fold(false, |acc, t| {
                acc | constant_time_eq(t.as_bytes(), presented.as_bytes())
            });
            if !matched {
                return Err(RegistrationError::AuthFailed(request.agent_id));
            }
        }
        request.auth_token = None;
        Ok(PendingRegistration { request })
    }
}

impl PendingRegistration {
    /// The pool took the connection: writes the success answer.
    pub fn accept(
        &self,
        policy: &RegistrationPolicy,
        connection_id: &str,
        out: &mut BytesMut,
    ) -> Result<(), EncodeError> {
        write_response(out, policy, true, None, connection_id.to_owned())
    }

    /// The pool refused: writes the refusal; the caller closes after flushing.
    pub fn reject(
        &self,
        policy: &RegistrationPolicy,
        reason: &str,
        out: &mut BytesMut,
    ) -> Result<RegistrationError, EncodeError> {
        let err = RegistrationError::PoolRefused(reason.to_owned());
        write_response(out, policy, false, Some(err.to_string()), String::new())?;
        Ok(err)
    }
}

fn write_response(
    out: &mut BytesMut,
    policy: &RegistrationPolicy,
    success: bool,
    error: Option<String>,
    connection_id: String,
) -> Result<(), EncodeError> {
    let response = RegistrationResponse {
        success,
        error,
        proxy_id: policy.proxy_id.clone(),
        proxy_version: policy.proxy_version.clone(),
        connection_id,
    };
    encoding::encode_frame(out, FrameType::HandshakeResponse, Encoding::Json, &response)
}

/// The agent's side of a reverse connection's registration: its deadline and its reading of
/// the proxy's answer. The [`AgentConnection`](crate::agent::AgentConnection) of a reverse
/// connection drives it (see `AgentConnection::new_reverse`).
#[derive(Debug)]
pub struct AgentRegistration {
    deadline: Instant,
    timeout: Duration,
}

impl AgentRegistration {
    /// Starts the clock: the answer must come within `timeout` of `now`.
    pub fn new(timeout: Duration, now: Instant) -> Self {
        Self {
            deadline: now + timeout,
            timeout,
        }
    }

    /// When the exchange gives up.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Checks the deadline.
    pub fn handle_timeout(&self, now: Instant) -> Result<(), RegistrationError> {
        if now >= self.deadline {
            Err(RegistrationError::Timeout(self.timeout))
        } else {
            Ok(())
        }
    }

    /// Reads the proxy's answer: the response on success, [`RegistrationError::Rejected`] with
    /// the proxy's reason otherwise.
    pub fn handle_response(
        &self,
        response: RegistrationResponse,
    ) -> Result<RegistrationResponse, RegistrationError> {
        if response.success {
            Ok(response)
        } else {
            Err(RegistrationError::Rejected(
                response
                    .error
                    .unwrap_or_else(|| "proxy gave no reason".to_owned()),
            ))
        }
    }
}

/// Reads a RegistrationResponse payload (always JSON).
pub fn decode_response(payload: &[u8]) -> Result<RegistrationResponse, RegistrationError> {
    serde_json::from_slice(payload).map_err(|e| RegistrationError::Malformed(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame_for(req: &RegistrationRequest) -> Frame {
        Frame {
            frame_type: FrameType::HandshakeRequest,
            payload: serde_json::to_vec(req).unwrap().into(),
        }
    }

    fn request(id: &str, token: Option<&str>, version: u32) -> RegistrationRequest {
        RegistrationRequest {
            protocol_version: version,
            agent_id: id.into(),
            capabilities: Capabilities::new(id, id, "1"),
            auth_token: token.map(str::to_owned),
            metadata: None,
        }
    }

    fn check(
        policy: &RegistrationPolicy,
        req: RegistrationRequest,
    ) -> Result<(), RegistrationError> {
        let reg = ProxyRegistration::new(policy, Instant::now());
        let mut out = BytesMut::new();
        let r = reg
            .handle_frame(policy, &frame_for(&req), &mut out)
            .map(|_| ());
        // A refusal always carries an answer; an admission never does (yet).
        assert_eq!(r.is_err(), !out.is_empty());
        r
    }

    #[test]
    fn checks_run_in_order() {
        let policy = RegistrationPolicy {
            allowed_agents: ["waf".to_string()].into_iter().collect(),
            tokens: vec!["t1".into(), "t2".into()],
            ..Default::default()
        };
        assert_eq!(
            check(&policy, request("nope", None, 1)),
            Err(RegistrationError::VersionMismatch(1))
        );
        assert_eq!(
            check(&policy, request("", None, 2)),
            Err(RegistrationError::EmptyAgentId)
        );
        assert_eq!(
            check(&policy, request("nope", Some("t1"), 2)),
            Err(RegistrationError::NotAllowed("nope".into()))
        );
        assert_eq!(
            check(&policy, request("waf", None, 2)),
            Err(RegistrationError::AuthFailed("waf".into()))
        );
        assert_eq!(
            check(&policy, request("waf", Some("t3"), 2)),
            Err(RegistrationError::AuthFailed("waf".into()))
        );
        assert_eq!(check(&policy, request("waf", Some("t2"), 2)), Ok(()));
    }

    #[test]
    fn agent_sees_rejection_text() {
        let policy = RegistrationPolicy::default();
        let mut wire = BytesMut::new();
        let agent = AgentRegistration::new(Duration::from_secs(1), Instant::now());
        let sent = request("a", None, 1);
        encoding::encode_frame(
            &mut wire,
            FrameType::HandshakeRequest,
            Encoding::Json,
            &sent,
        )
        .unwrap();
        let mut dec = crate::frame::FrameDecoder::new();
        let Some(crate::frame::Decoded::Frame(f)) = dec.decode(&mut wire).unwrap() else {
            panic!("no frame")
        };
        let reg = ProxyRegistration::new(&policy, Instant::now());
        assert!(reg.handle_frame(&policy, &f, &mut wire).is_err());
        let Some(crate::frame::Decoded::Frame(answer)) = dec.decode(&mut wire).unwrap() else {
            panic!("no answer")
        };
        assert_eq!(
            agent.handle_response(decode_response(&answer.payload).unwrap()),
            Err(RegistrationError::Rejected(
                "Protocol version mismatch: expected 2, got 1".into()
            ))
        );
    }
}
