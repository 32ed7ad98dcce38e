//! Handshake and capabilities, both directions.

use crate::v2;
use agent_protocol_core::capabilities::EventKind;
use agent_protocol_core::handshake::{HandshakeRequest, HandshakeResponse};
use agent_protocol_core::{Capabilities, Encoding, EventSet, Features, Limits};

impl From<HandshakeRequest> for v2::HandshakeRequest {
    fn from(r: HandshakeRequest) -> Self {
        v2::HandshakeRequest {
            supported_versions: r.supported_versions,
            proxy_id: r.proxy_id,
            proxy_version: r.proxy_version,
            config_json: r.config.map(|c| c.to_string()).unwrap_or_default(),
            supported_encodings: r.supported_encodings,
        }
    }
}

impl From<v2::HandshakeRequest> for HandshakeRequest {
    /// Lenient like the reference: configuration text that is not JSON reads as no
    /// configuration.
    fn from(r: v2::HandshakeRequest) -> Self {
        let config = if r.config_json.is_empty() {
            None
        } else {
            serde_json::from_str(&r.config_json).ok()
        };
        HandshakeRequest {
            supported_versions: r.supported_versions,
            proxy_id: r.proxy_id,
            proxy_version: r.proxy_version,
            config,
            supported_encodings: r.supported_encodings,
        }
    }
}

fn capabilities_to_proto(c: Capabilities, protocol_version: u32) -> v2::AgentCapabilities {
    let f = c.features;
    v2::AgentCapabilities {
        protocol_version,
        agent_id: c.agent_id,
        name: c.name,
        version: c.version,
        supported_events: c.supported_events.iter().map(EventKind::code).collect(),
        features: Some(v2::AgentFeatures {
            streaming_body: f.streaming_body,
            websocket: f.websocket,
            guardrails: f.guardrails,
            config_push: f.config_push,
            metrics_export: f.metrics_export,
            concurrent_requests: f.concurrent_requests,
            cancellation: f.cancellation,
            flow_control: f.flow_control,
            health_reporting: f.health_reporting,
        }),
        limits: Some(v2::AgentLimits {
            max_body_size: c.limits.max_body_size,
            max_concurrency: c.limits.max_concurrency,
            preferred_chunk_size: c.limits.preferred_chunk_size,
            max_memory: None,
            max_processing_time_ms: None,
        }),
        health_config: None,
    }
}

impl From<v2::AgentCapabilities> for Capabilities {
    /// Lenient: missing feature or limit messages take the core's defaults; event code 0
    /// (`EVENT_TYPE_UNSPECIFIED` on gRPC) and unknown codes are ignored.
    fn from(c: v2::AgentCapabilities) -> Self {
        let features = c
            .features
            .map(|f| Features {
                streaming_body: f.streaming_body,
                websocket: f.websocket,
                guardrails: f.guardrails,
                config_push: f.config_push,
                metrics_export: f.metrics_export,
                concurrent_requests: f.concurrent_requests,
                cancellation: f.cancellation,
                flow_control: f.flow_control,
                health_reporting: f.health_reporting,
            })
            .unwrap_or_default();
        let limits = c
            .limits
            .map(|l| Limits {
                max_body_size: l.max_body_size,
                max_concurrency: l.max_concurrency,
                preferred_chunk_size: l.preferred_chunk_size,
            })
            .unwrap_or_default();
        Capabilities {
            agent_id: c.agent_id,
            name: c.name,
            version: c.version,
            supported_events: c
                .supported_events
                .into_iter()
                .filter(|code| *code != 0)
                .filter_map(|code| EventKind::from_code(i64::from(code)))
                .collect::<EventSet>(),
            features,
            limits,
        }
    }
}

impl From<HandshakeResponse> for v2::HandshakeResponse {
    fn from(r: HandshakeResponse) -> Self {
        v2::HandshakeResponse {
            protocol_version: r.protocol_version,
            capabilities: Some(capabilities_to_proto(r.capabilities, r.protocol_version)),
            success: r.success,
            error: r.error,
            encoding: r.encoding,
        }
    }
}

impl From<v2::HandshakeResponse> for HandshakeResponse {
    fn from(r: v2::HandshakeResponse) -> Self {
        HandshakeResponse {
            protocol_version: r.protocol_version,
            capabilities: r.capabilities.map(Capabilities::from).unwrap_or_default(),
            success: r.success,
            error: r.error,
            encoding: if r.encoding.is_empty() {
                Encoding::Json.as_str().to_owned()
            } else {
                r.encoding
            },
        }
    }
}
