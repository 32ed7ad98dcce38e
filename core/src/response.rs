//! The agent's answer, 0x20 AgentResponse, and the guardrail result it may carry in its
//! routing metadata.

use std::collections::HashMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::byte_str::ByteStr;

/// The key of `audit.custom` that carries the correlation id on UDS and reverse connections.
pub const CORRELATION_KEY: &str = "correlation_id";

/// The routing-metadata key under which a [`GuardrailResponse`] travels as JSON text.
pub const GUARDRAIL_RESPONSE_KEY: &str = "guardrail_response";

/// What the proxy should do with the request (externally tagged, snake_case).
///
/// ```
/// use agent_protocol_core::Decision;
/// assert_eq!(serde_json::to_string(&Decision::Allow).unwrap(), r#""allow""#);
/// let block = Decision::block(403, Some("no".into()));
/// assert_eq!(
///     serde_json::to_string(&block).unwrap(),
///     r#"{"block":{"status":403,"body":"no","headers":null}}"#
/// );
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// Let the request through.
    #[default]
    Allow,
    /// Answer with an error page.
    Block {
        /// Status code.
        status: u16,
        /// Body text.
        body: Option<String>,
        /// Extra response headers.
        headers: Option<HashMap<String, String>>,
    },
    /// Redirect the client.
    Redirect {
        /// Target.
        url: String,
        /// 301/302/303/307/308.
        status: u16,
    },
    /// Challenge the client (captcha, JS challenge...).
    Challenge {
        /// Kind of challenge.
        challenge_type: String,
        /// Parameters.
        params: HashMap<String, String>,
    },
}

impl Decision {
    /// A block with a status and an optional body.
    pub fn block(status: u16, body: Option<String>) -> Self {
        Self::Block {
            status,
            body,
            headers: None,
        }
    }

    /// Short name of the variant: `allow`, `block`, `redirect` or `challenge`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Block { .. } => "block",
            Self::Redirect { .. } => "redirect",
            Self::Challenge { .. } => "challenge",
        }
    }
}

/// A header mutation (externally tagged).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HeaderOp {
    /// Replace the header.
    Set {
        /// Name.
        name: String,
        /// Value.
        value: String,
    },
    /// Add a value.
    Add {
        /// Name.
        name: String,
        /// Value.
        value: String,
    },
    /// Remove the header.
    Remove {
        /// Name.
        name: String,
    },
}

/// A body-chunk mutation: `None` data passes the chunk unchanged, empty data drops it, anything
/// else replaces it. Data is base64 in JSON and `bin` in MessagePack.
#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct BodyMutation {
    /// Replacement bytes.
    #[serde(
        default,
        serialize_with = "crate::body::serialize_opt",
        deserialize_with = "crate::body::deserialize_opt"
    )]
    pub data: Option<Bytes>,
    /// Chunk this applies to.
    #[serde(default)]
    pub chunk_index: u32,
}

impl BodyMutation {
    /// Replace chunk `chunk_index` with `data`.
    pub fn replace(chunk_index: u32, data: impl Into<Bytes>) -> Self {
        Self {
            data: Some(data.into()),
            chunk_index,
        }
    }

    /// Drop chunk `chunk_index`.
    pub fn drop_chunk(chunk_index: u32) -> Self {
        Self {
            data: Some(Bytes::new()),
            chunk_index,
        }
    }
}

/// What to do with a WebSocket frame.
#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WebSocketDecision {
    /// Forward it.
    #[default]
    Allow,
    /// Drop it silently.
    Drop,
    /// Close the connection.
    Close {
        /// Close code.
        code: u16,
        /// Close reason.
        reason: String,
    },
}

/// Audit data. On framed transports `custom.correlation_id` carries the answer's routing id
/// (see [`AgentResponse`]); in memory that id is not part of `custom`.
#[derive(Clone, Debug, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct AuditMetadata {
    /// Tags.
    pub tags: Vec<String>,
    /// Matched rule ids.
    pub rule_ids: Vec<String>,
    /// Confidence 0..1.
    pub confidence: Option<f32>,
    /// Reason codes.
    pub reason_codes: Vec<String>,
    /// Free-form values.
    pub custom: serde_json::Map<String, serde_json::Value>,
}

/// 0x20 AgentResponse.
///
/// The request it answers is [`AgentResponse::correlation_id`]: on the wire of framed
/// transports that id travels as `audit.custom.correlation_id` (where the reference reads it),
/// but in memory it is kept beside the audit data, never in `audit.custom`, so routing an
/// answer needs no map and a handler's own `custom` values stay exactly as it set them.
///
/// ```
/// use agent_protocol_core::{AgentResponse, Decision};
/// let r = AgentResponse::allow().with_correlation_id("c1");
/// assert_eq!(r.correlation_id(), Some("c1"));
/// assert!(r.audit.custom.is_empty());
/// assert!(serde_json::to_string(&r).unwrap().contains(r#""custom":{"correlation_id":"c1"}"#));
/// let parsed: AgentResponse = serde_json::from_str(
///     r#"{"version":2,"decision":"allow","audit":{"custom":{"correlation_id":"c9","k":1}}}"#,
/// ).unwrap();
/// assert_eq!(parsed.correlation_id(), Some("c9"));
/// assert_eq!(parsed.audit.custom.len(), 1);
/// assert_eq!(parsed.decision, Decision::Allow);
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct AgentResponse {
    /// Protocol version (2).
    pub version: u32,
    /// The decision.
    pub decision: Decision,
    /// Request header mutations.
    pub request_headers: Vec<HeaderOp>,
    /// Response header mutations.
    pub response_headers: Vec<HeaderOp>,
    /// Routing hints for the proxy.
    pub routing_metadata: HashMap<String, String>,
    /// Audit data.
    pub audit: AuditMetadata,
    /// The decision is provisional; more body is needed.
    pub needs_more: bool,
    /// Request body chunk mutation.
    pub request_body_mutation: Option<BodyMutation>,
    /// Response body chunk mutation.
    pub response_body_mutation: Option<BodyMutation>,
    /// WebSocket frame decision.
    pub websocket_decision: Option<WebSocketDecision>,
    /// The request answered. Set by the connection that sends the answer, from the request it
    /// answers (whatever a handler put here); read from the answer by the proxy to route it.
    pub correlation_id: Option<ByteStr>,
}

impl Default for AgentResponse {
    fn default() -> Self {
        Self::new(Decision::Allow)
    }
}

impl AgentResponse {
    /// A response with this decision and nothing else.
    pub fn new(decision: Decision) -> Self {
        Self {
            version: 2,
            decision,
            request_headers: Vec::new(),
            response_headers: Vec::new(),
            routing_metadata: HashMap::new(),
            audit: AuditMetadata::default(),
            needs_more: false,
            request_body_mutation: None,
            response_body_mutation: None,
            websocket_decision: None,
            correlation_id: None,
        }
    }

    /// Allow.
    pub fn allow() -> Self {
        Self::new(Decision::Allow)
    }

    /// Block with a status and body text.
    pub fn block(status: u16, body: impl Into<String>) -> Self {
        Self::new(Decision::block(status, Some(body.into())))
    }

    /// The request this answers (see [`AgentResponse::correlation_id`](#structfield.correlation_id)).
    pub fn correlation_id(&self) -> Option<&str> {
        self.correlation_id.as_deref()
    }

    /// Sets the request this answers.
    pub fn set_correlation_id(&mut self, id: impl Into<ByteStr>) {
        self.correlation_id = Some(id.into());
    }

    /// Builder form of [`AgentResponse::set_correlation_id`].
    pub fn with_correlation_id(mut self, id: impl Into<ByteStr>) -> Self {
        self.set_correlation_id(id);
        self
    }

    /// Attaches a guardrail result as JSON text under `routing_metadata["guardrail_response"]`,
    /// where the proxy looks for it.
    pub fn with_guardrail(mut self, result: &GuardrailResponse) -> Self {
        if let Ok(text) = serde_json::to_string(result) {
            self.routing_metadata
                .insert(GUARDRAIL_RESPONSE_KEY.to_owned(), text);
        }
        self
    }

    /// The guardrail result carried in routing metadata, if any and well formed.
    pub fn guardrail(&self) -> Option<GuardrailResponse> {
        serde_json::from_str(self.routing_metadata.get(GUARDRAIL_RESPONSE_KEY)?).ok()
    }
}

/// Severity of a guardrail finding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GuardrailSeverity {
    /// Low.
    Low,
    /// Medium (default).
    #[default]
    Medium,
    /// High.
    High,
    /// Critical.
    Critical,
}

/// Byte span of a finding in the inspected content.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TextSpan {
    /// Start offset.
    pub start: u64,
    /// End offset.
    pub end: u64,
}

/// One guardrail finding.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GuardrailDetection {
    /// Category.
    pub category: String,
    /// Description.
    pub description: String,
    /// Severity.
    #[serde(default)]
    pub severity: GuardrailSeverity,
    /// Confidence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confidence: Option<f64>,
    /// Where it was found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub span: Option<TextSpan>,
}

/// Result of a guardrail inspection.
#[derive(Clone, Debug, PartialEq, Default, Serialize, Deserialize)]
pub struct GuardrailResponse {
    /// Whether anything was found.
    pub detected: bool,
    /// Overall confidence.
    #[serde(default)]
    pub confidence: f64,
    /// Findings.
    #[serde(default)]
    pub detections: Vec<GuardrailDetection>,
    /// Content with findings redacted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redacted_content: Option<String>,
}
