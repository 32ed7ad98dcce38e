//! Conversions between the core's wire types and the generated protobuf messages.
//!
//! Core to proto is infallible and consumes its input: strings, maps and body [`Bytes`](bytes::Bytes) are
//! moved, never copied (headers through [`Headers::into_flat`], which clones a name only for its
//! second and later values). Proto to core checks what protobuf cannot express (a status code or
//! port above `u16::MAX`, a missing decision, JSON text that does not parse) and fails with a
//! [`ConvertError`] that keeps the correlation id when there is one, so the receiver can fail or
//! answer just that request.
//!
//! What the reference schema cannot carry travels in the extension fields (numbers 100 and up,
//! see `agent_v2.proto`), so that for every message core -> proto -> core is the identity, with
//! these documented normalisations:
//! - a RequestHeaders event has one correlation id on gRPC (`metadata.correlation_id`): the
//!   top-level id is sent and both fields read back as it;
//! - a header name listed with no value cannot be expressed as `(name, value)` pairs and is
//!   dropped;
//! - JSON values (audit custom values, configurations, rule definitions) travel as JSON text:
//!   `audit.custom` values are the JSON text of each value, exactly as the reference agent writes
//!   them, so strings come back as strings and numbers as numbers (the reference proxy instead
//!   wraps the text in another string); text that is not JSON, as a third-party agent might
//!   send, is read as a JSON string.

use std::collections::HashMap;

use crate::v2;
use agent_protocol_core::capabilities::EventKind;
use agent_protocol_core::control::{
    CounterMetric, GaugeMetric, HistogramBucket, HistogramMetric, RuleDefinition,
};
use agent_protocol_core::encoding::DecodeError;
use agent_protocol_core::event::event_frame_type;
use agent_protocol_core::frame::FrameType;
use agent_protocol_core::handshake::{HandshakeRequest, HandshakeResponse};
use agent_protocol_core::proxy::{Incoming, Outgoing};
use agent_protocol_core::{
    AgentIncoming, AgentOutgoing, AgentResponse, AuditMetadata, BodyChunk, BodyMutation, Cancel,
    CancelReason, Capabilities, ConfigUpdateRequest, ConfigUpdateResponse, ConfigUpdateType,
    ConfigureEvent, Decision, Encoding, Event, EventSet, Features, FlowAction, FlowControl,
    GuardrailInspectEvent, GuardrailInspectionType, HeaderOp, Headers, HealthState, HealthStatus,
    Limits, MetricsReport, Ping, RequestBodyChunkEvent, RequestCompleteEvent, RequestHeadersEvent,
    RequestMetadata, ResponseBodyChunkEvent, ResponseHeadersEvent, WebSocketDecision,
    WebSocketFrameEvent, WebSocketOpcode,
};

/// A protobuf message that has no faithful core equivalent.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid {message}: {reason}")]
pub struct ConvertError {
    /// The protobuf message at fault.
    pub message: &'static str,
    /// What was wrong.
    pub reason: String,
    /// The correlation id it carried, when it has one and it could be read.
    pub correlation_id: Option<String>,
}

impl ConvertError {
    fn new(message: &'static str, reason: impl Into<String>) -> Self {
        Self {
            message,
            reason: reason.into(),
            correlation_id: None,
        }
    }

    fn with_id(mut self, correlation_id: &str) -> Self {
        if !correlation_id.is_empty() {
            self.correlation_id = Some(correlation_id.to_owned());
        }
        self
    }
}

fn u16_field(message: &'static str, field: &str, value: u32) -> Result<u16, ConvertError> {
    u16::try_from(value)
        .map_err(|_| ConvertError::new(message, format!("{field} {value} is above 65535")))
}

/// Reads JSON text; empty text is `null`.
fn json_text(message: &'static str, text: &str) -> Result<serde_json::Value, ConvertError> {
    if text.is_empty() {
        return Ok(serde_json::Value::Null);
    }
    serde_json::from_str(text).map_err(|e| ConvertError::new(message, format!("bad JSON: {e}")))
}

// ----- headers ---------------------------------------------------------------------------------

fn headers_to_proto(headers: Headers) -> Vec<v2::Header> {
    let mut out = Vec::with_capacity(headers.value_count());
    out.extend(
        headers
            .into_flat()
            .map(|(name, value)| v2::Header { name, value }),
    );
    out
}

fn headers_from_proto(flat: Vec<v2::Header>) -> Headers {
    let mut headers = Headers::with_capacity(flat.len().min(128));
    for v2::Header { name, value } in flat {
        headers.append_exact(name, value);
    }
    headers
}

// ----- timestamps ------------------------------------------------------------------------------

/// Milliseconds since the Unix epoch of an RFC 3339 time such as `2026-11-29T10:00:00.250Z` or
/// `2026-11-29T11:00:00+01:00`; `None` for anything else or a time before 1970.
///
/// ```
/// use agent_protocol_proto::convert::rfc3339_millis;
/// assert_eq!(rfc3339_millis("1970-01-01T00:00:01.5Z"), Some(1500));
/// assert_eq!(rfc3339_millis("2026-11-29T01:00:00+01:00"), rfc3339_millis("2026-11-29T00:00:00Z"));
/// assert_eq!(rfc3339_millis("yesterday"), None);
/// ```
pub fn rfc3339_millis(text: &str) -> Option<u64> {
    let b = text.as_bytes();
    if b.len() < 20 {
        return None;
    }
    let num = |range: std::ops::Range<usize>| -> Option<i64> {
        let s = text.get(range)?;
        if !s.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        s.parse().ok()
    };
    if b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return None;
    }
    if second > 60 {
        return None;
    }
    let mut i = 19;
    let mut millis = 0i64;
    if b[i] == b'.' {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            if i - start < 3 {
                millis = millis * 10 + i64::from(b[i] - b'0');
            }
            i += 1;
        }
        if i == start {
            return None;
        }
        for _ in (i - start)..3 {
            millis *= 10;
        }
    }
    let offset_minutes = match b.get(i)? {
        b'Z' | b'z' if i + 1 == b.len() => 0,
        sign @ (b'+' | b'-') if i + 6 == b.len() && b[i + 3] == b':' => {
            let (h, m) = (num(i + 1..i + 3)?, num(i + 4..i + 6)?);
            if h > 23 || m > 59 {
                return None;
            }
            let total = h * 60 + m;
            if *sign == b'+' {
                total
            } else {
                -total
            }
        }
        _ => return None,
    };
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second - offset_minutes * 60;
    u64::try_from(seconds.checked_mul(1000)?.checked_add(millis)?).ok()
}

/// The metadata timestamp as (`timestamp_ms`, extension text): a canonical non-zero decimal
/// travels as the number alone; anything else also travels as text.
fn timestamp_to_proto(text: String) -> (u64, Option<String>) {
    let canonical_decimal =
        !text.is_empty() && text.bytes().all(|c| c.is_ascii_digit()) && !text.starts_with('0');
    if canonical_decimal {
        if let Ok(ms) = text.parse::<u64>() {
            return (ms, None);
        }
    }
    if text.is_empty() {
        return (0, None);
    }
    (rfc3339_millis(&text).unwrap_or(0), Some(text))
}

fn timestamp_from_proto(ms: u64, text: Option<String>) -> String {
    match (text, ms) {
        (Some(text), _) => text,
        (None, 0) => String::new(),
        (None, ms) => ms.to_string(),
    }
}

// ----- events: core -> proto -------------------------------------------------------------------

fn metadata_to_proto(m: RequestMetadata, correlation_id: String) -> v2::RequestMetadata {
    let (timestamp_ms, timestamp) = timestamp_to_proto(m.timestamp);
    v2::RequestMetadata {
        correlation_id,
        request_id: m.request_id,
        client_ip: m.client_ip,
        client_port: u32::from(m.client_port),
        server_name: m.server_name,
        protocol: m.protocol,
        tls_version: m.tls_version,
        route_id: m.route_id,
        upstream_id: m.upstream_id,
        timestamp_ms,
        traceparent: m.traceparent,
        tls_cipher: m.tls_cipher,
        timestamp,
    }
}

impl From<RequestHeadersEvent> for v2::RequestHeadersEvent {
    fn from(e: RequestHeadersEvent) -> Self {
        let metadata = metadata_to_proto(e.metadata, e.correlation_id);
        v2::RequestHeadersEvent {
            http_version: metadata.protocol.clone(),
            metadata: Some(metadata),
            method: e.method,
            uri: e.uri,
            headers: headers_to_proto(e.headers),
        }
    }
}

fn chunk_to_proto(c: BodyChunk) -> v2::BodyChunkEvent {
    v2::BodyChunkEvent {
        correlation_id: c.correlation_id,
        chunk_index: c.chunk_index,
        data: c.data,
        is_last: c.is_last,
        total_size: c.total_size,
        bytes_transferred: c.bytes_transferred,
        proxy_buffer_available: 0,
        timestamp_ms: 0,
    }
}

impl From<ResponseHeadersEvent> for v2::ResponseHeadersEvent {
    fn from(e: ResponseHeadersEvent) -> Self {
        v2::ResponseHeadersEvent {
            correlation_id: e.correlation_id,
            status_code: u32::from(e.status),
            headers: headers_to_proto(e.headers),
        }
    }
}

impl From<RequestCompleteEvent> for v2::RequestCompleteEvent {
    fn from(e: RequestCompleteEvent) -> Self {
        v2::RequestCompleteEvent {
            correlation_id: e.correlation_id,
            status_code: u32::from(e.status),
            duration_ms: e.duration_ms,
            bytes_received: e.request_body_size,
            bytes_sent: e.response_body_size,
            upstream: None,
            from_cache: false,
            error: e.error,
            upstream_attempts: e.upstream_attempts,
        }
    }
}

fn frame_type_of(opcode: WebSocketOpcode) -> v2::web_socket_frame_event::FrameType {
    use v2::web_socket_frame_event::FrameType as F;
    match opcode {
        WebSocketOpcode::Text => F::Text,
        WebSocketOpcode::Binary => F::Binary,
        WebSocketOpcode::Ping => F::Ping,
        WebSocketOpcode::Pong => F::Pong,
        WebSocketOpcode::Close => F::Close,
        WebSocketOpcode::Continuation => F::Unspecified,
    }
}

impl From<WebSocketFrameEvent> for v2::WebSocketFrameEvent {
    fn from(e: WebSocketFrameEvent) -> Self {
        v2::WebSocketFrameEvent {
            correlation_id: e.correlation_id,
            client_to_server: e.client_to_server,
            frame_type: frame_type_of(e.opcode) as i32,
            payload: e.data,
            opcode: Some(u32::from(e.opcode.as_u8())),
            frame_index: e.frame_index,
            fin: Some(e.fin),
            route_id: e.route_id,
            client_ip: e.client_ip,
        }
    }
}

impl From<GuardrailInspectEvent> for v2::GuardrailInspectEvent {
    fn from(e: GuardrailInspectEvent) -> Self {
        let inspection_type = match e.inspection_type {
            GuardrailInspectionType::PromptInjection => {
                v2::GuardrailInspectionType::PromptInjection
            }
            GuardrailInspectionType::PiiDetection => v2::GuardrailInspectionType::PiiDetection,
        };
        v2::GuardrailInspectEvent {
            correlation_id: e.correlation_id,
            content: e.content,
            content_type: v2::GuardrailContentType::Unspecified as i32,
            model: e.model,
            context_json: String::new(),
            inspection_type: inspection_type as i32,
            categories: e.categories,
            route_id: e.route_id,
            metadata: e.metadata,
        }
    }
}

impl From<ConfigureEvent> for v2::ConfigureEvent {
    fn from(e: ConfigureEvent) -> Self {
        v2::ConfigureEvent {
            config_json: e.config.to_string(),
            config_version: e.config_version,
            is_initial: false,
            timestamp_ms: 0,
            correlation_id: e.correlation_id,
        }
    }
}

impl From<Event> for v2::proxy_to_agent::Message {
    fn from(event: Event) -> Self {
        use v2::proxy_to_agent::Message as M;
        match event {
            Event::RequestHeaders(e) => M::RequestHeaders(e.into()),
            Event::RequestBodyChunk(e) => M::RequestBodyChunk(chunk_to_proto(e.0)),
            Event::ResponseHeaders(e) => M::ResponseHeaders(e.into()),
            Event::ResponseBodyChunk(e) => M::ResponseBodyChunk(chunk_to_proto(e.0)),
            Event::RequestComplete(e) => M::RequestComplete(e.into()),
            Event::WebSocketFrame(e) => M::WebsocketFrame(e.into()),
            Event::GuardrailInspect(e) => M::Guardrail(e.into()),
            Event::Configure(e) => M::Configure(e.into()),
        }
    }
}

impl From<Event> for v2::ProxyToAgent {
    fn from(event: Event) -> Self {
        v2::ProxyToAgent {
            message: Some(event.into()),
        }
    }
}

// ----- events: proto -> core -------------------------------------------------------------------

fn metadata_from_proto(m: v2::RequestMetadata) -> Result<RequestMetadata, ConvertError> {
    let client_port = u16_field("RequestMetadata", "client_port", m.client_port)
        .map_err(|e| e.with_id(&m.correlation_id))?;
    Ok(RequestMetadata {
        correlation_id: m.correlation_id,
        request_id: m.request_id,
        client_ip: m.client_ip,
        client_port,
        server_name: m.server_name,
        protocol: m.protocol,
        tls_version: m.tls_version,
        tls_cipher: m.tls_cipher,
        route_id: m.route_id,
        upstream_id: m.upstream_id,
        timestamp: timestamp_from_proto(m.timestamp_ms, m.timestamp),
        traceparent: m.traceparent,
    })
}

impl TryFrom<v2::RequestHeadersEvent> for RequestHeadersEvent {
    type Error = ConvertError;

    fn try_from(e: v2::RequestHeadersEvent) -> Result<Self, ConvertError> {
        let Some(metadata) = e.metadata else {
            return Err(ConvertError::new(
                "RequestHeadersEvent",
                "no metadata (and so no correlation id)",
            ));
        };
        let mut metadata = metadata_from_proto(metadata)?;
        if metadata.protocol.is_empty() {
            metadata.protocol = e.http_version;
        }
        Ok(RequestHeadersEvent {
            correlation_id: metadata.correlation_id.clone(),
            metadata,
            method: e.method,
            uri: e.uri,
            headers: headers_from_proto(e.headers),
        })
    }
}

fn chunk_from_proto(c: v2::BodyChunkEvent) -> BodyChunk {
    BodyChunk {
        correlation_id: c.correlation_id,
        data: c.data,
        is_last: c.is_last,
        total_size: c.total_size,
        chunk_index: c.chunk_index,
        bytes_transferred: c.bytes_transferred,
    }
}

impl TryFrom<v2::ResponseHeadersEvent> for ResponseHeadersEvent {
    type Error = ConvertError;

    fn try_from(e: v2::ResponseHeadersEvent) -> Result<Self, ConvertError> {
        let status = u16_field("ResponseHeadersEvent", "status_code", e.status_code)
            .map_err(|err| err.with_id(&e.correlation_id))?;
        Ok(ResponseHeadersEvent {
            correlation_id: e.correlation_id,
            status,
            headers: headers_from_proto(e.headers),
        })
    }
}

impl TryFrom<v2::RequestCompleteEvent> for RequestCompleteEvent {
    type Error = ConvertError;

    fn try_from(e: v2::RequestCompleteEvent) -> Result<Self, ConvertError> {
        let status = u16_field("RequestCompleteEvent", "status_code", e.status_code)
            .map_err(|err| err.with_id(&e.correlation_id))?;
        Ok(RequestCompleteEvent {
            correlation_id: e.correlation_id,
            status,
            duration_ms: e.duration_ms,
            request_body_size: e.bytes_received,
            response_body_size: e.bytes_sent,
            upstream_attempts: e.upstream_attempts,
            error: e.error,
        })
    }
}

impl TryFrom<v2::WebSocketFrameEvent> for WebSocketFrameEvent {
    type Error = ConvertError;

    fn try_from(e: v2::WebSocketFrameEvent) -> Result<Self, ConvertError> {
        use v2::web_socket_frame_event::FrameType as F;
        let opcode = match e.opcode {
            Some(op) => u8::try_from(op).ok().and_then(WebSocketOpcode::from_u8),
            None => match F::try_from(e.frame_type) {
                Ok(F::Text) => Some(WebSocketOpcode::Text),
                Ok(F::Binary) => Some(WebSocketOpcode::Binary),
                Ok(F::Ping) => Some(WebSocketOpcode::Ping),
                Ok(F::Pong) => Some(WebSocketOpcode::Pong),
                Ok(F::Close) => Some(WebSocketOpcode::Close),
                Ok(F::Unspecified) | Err(_) => None,
            },
        };
        let Some(opcode) = opcode else {
            return Err(ConvertError::new(
                "WebSocketFrameEvent",
                format!(
                    "unknown frame type {} / opcode {:?}",
                    e.frame_type, e.opcode
                ),
            )
            .with_id(&e.correlation_id));
        };
        Ok(WebSocketFrameEvent {
            correlation_id: e.correlation_id,
            opcode,
            data: e.payload,
            client_to_server: e.client_to_server,
            frame_index: e.frame_index,
            fin: e.fin.unwrap_or(true),
            route_id: e.route_id,
            client_ip: e.client_ip,
        })
    }
}

impl From<v2::GuardrailInspectEvent> for GuardrailInspectEvent {
    fn from(e: v2::GuardrailInspectEvent) -> Self {
        let inspection_type = match v2::GuardrailInspectionType::try_from(e.inspection_type) {
            Ok(v2::GuardrailInspectionType::PiiDetection) => GuardrailInspectionType::PiiDetection,
            _ => GuardrailInspectionType::PromptInjection,
        };
        GuardrailInspectEvent {
            correlation_id: e.correlation_id,
            inspection_type,
            content: e.content,
            model: e.model,
            categories: e.categories,
            route_id: e.route_id,
            metadata: e.metadata,
        }
    }
}

impl TryFrom<v2::ConfigureEvent> for ConfigureEvent {
    type Error = ConvertError;

    fn try_from(e: v2::ConfigureEvent) -> Result<Self, ConvertError> {
        let config = json_text("ConfigureEvent", &e.config_json)
            .map_err(|err| err.with_id(&e.correlation_id))?;
        Ok(ConfigureEvent {
            correlation_id: e.correlation_id,
            config,
            config_version: e.config_version,
        })
    }
}

/// What a [`v2::ProxyToAgent`] message is, for the agent.
// Events dominate; boxing them would cost an allocation per message.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum ProxyMessage {
    /// Something the core's agent connection takes.
    Protocol(AgentIncoming),
    /// The oneof was empty: a message type this schema does not know (skip it, as framed
    /// transports skip unknown frame types).
    Unknown,
}

/// The event kind of a proxy->agent oneof variant, if it is an event.
fn event_kind(message: &v2::proxy_to_agent::Message) -> Option<EventKind> {
    use v2::proxy_to_agent::Message as M;
    Some(match message {
        M::RequestHeaders(_) => EventKind::RequestHeaders,
        M::RequestBodyChunk(_) => EventKind::RequestBodyChunk,
        M::ResponseHeaders(_) => EventKind::ResponseHeaders,
        M::ResponseBodyChunk(_) => EventKind::ResponseBodyChunk,
        M::RequestComplete(_) => EventKind::RequestComplete,
        M::WebsocketFrame(_) => EventKind::WebSocketFrame,
        M::Guardrail(_) => EventKind::GuardrailInspect,
        M::Configure(_) => EventKind::Configure,
        M::Handshake(_) | M::Cancel(_) | M::Ping(_) => return None,
    })
}

/// Converts an event variant; the non-event variants (handshake, cancel, ping) are an error.
pub fn event_from_proto(message: v2::proxy_to_agent::Message) -> Result<Event, ConvertError> {
    use v2::proxy_to_agent::Message as M;
    Ok(match message {
        M::RequestHeaders(e) => Event::RequestHeaders(e.try_into()?),
        M::RequestBodyChunk(e) => {
            Event::RequestBodyChunk(RequestBodyChunkEvent(chunk_from_proto(e)))
        }
        M::ResponseHeaders(e) => Event::ResponseHeaders(e.try_into()?),
        M::ResponseBodyChunk(e) => {
            Event::ResponseBodyChunk(ResponseBodyChunkEvent(chunk_from_proto(e)))
        }
        M::RequestComplete(e) => Event::RequestComplete(e.try_into()?),
        M::WebsocketFrame(e) => Event::WebSocketFrame(e.try_into()?),
        M::Guardrail(e) => Event::GuardrailInspect(e.into()),
        M::Configure(e) => Event::Configure(e.try_into()?),
        M::Handshake(_) | M::Cancel(_) | M::Ping(_) => {
            return Err(ConvertError::new("ProxyToAgent", "not an event"))
        }
    })
}

impl From<v2::ProxyToAgent> for ProxyMessage {
    /// Never fails: an event that does not convert becomes [`AgentIncoming::MalformedEvent`],
    /// which the agent connection answers fail-closed (or closes on, without a correlation id).
    fn from(message: v2::ProxyToAgent) -> Self {
        use v2::proxy_to_agent::Message as M;
        let Some(message) = message.message else {
            return ProxyMessage::Unknown;
        };
        ProxyMessage::Protocol(match message {
            M::Handshake(h) => AgentIncoming::Handshake(h.into()),
            M::Cancel(c) => AgentIncoming::Cancel(c.into()),
            M::Ping(p) => AgentIncoming::Ping(p.into()),
            event => {
                // Every remaining variant is an event.
                let kind = event_kind(&event).unwrap_or(EventKind::RequestHeaders);
                match event_from_proto(event) {
                    Ok(event) => AgentIncoming::Event(event),
                    Err(e) => AgentIncoming::MalformedEvent {
                        correlation_id: e.correlation_id.clone(),
                        error: DecodeError {
                            frame_type: event_frame_type(kind),
                            encoding: Encoding::Json,
                            message: e.to_string(),
                            limit: None,
                        },
                    },
                }
            }
        })
    }
}

// ----- handshake and capabilities --------------------------------------------------------------

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

// ----- cancel, ping, pong ----------------------------------------------------------------------

impl From<Cancel> for v2::CancelRequest {
    fn from(c: Cancel) -> Self {
        v2::CancelRequest {
            correlation_id: c.correlation_id,
            reason: c.reason.grpc_code(),
            timestamp_ms: c.timestamp_ms,
            blocking_agent_id: None,
            manual_reason: None,
        }
    }
}

impl From<v2::CancelRequest> for Cancel {
    fn from(c: v2::CancelRequest) -> Self {
        Cancel {
            correlation_id: c.correlation_id,
            reason: CancelReason::from_grpc_code(c.reason),
            timestamp_ms: c.timestamp_ms,
        }
    }
}

impl From<Ping> for v2::Ping {
    fn from(p: Ping) -> Self {
        v2::Ping {
            sequence: p.sequence,
            timestamp_ms: p.timestamp_ms,
        }
    }
}

impl From<v2::Ping> for Ping {
    fn from(p: v2::Ping) -> Self {
        Ping {
            sequence: p.sequence,
            timestamp_ms: p.timestamp_ms,
        }
    }
}

/// The pong answering `ping`, sent at `now_ms` (Unix milliseconds).
pub fn pong_for(ping: Ping, now_ms: u64) -> v2::Pong {
    v2::Pong {
        sequence: ping.sequence,
        ping_timestamp_ms: ping.timestamp_ms,
        timestamp_ms: now_ms,
    }
}

/// The ping a pong answers, as the core's proxy connection matches it.
pub fn ping_of(pong: v2::Pong) -> Ping {
    Ping {
        sequence: pong.sequence,
        timestamp_ms: pong.ping_timestamp_ms,
    }
}

// ----- health, flow control, metrics, config updates -------------------------------------------

impl From<HealthStatus> for v2::HealthStatus {
    fn from(h: HealthStatus) -> Self {
        v2::HealthStatus {
            agent_id: h.agent_id,
            state: h.state.to_wire(),
            message: h.message,
            load: None,
            resources: None,
            valid_until_ms: None,
            timestamp_ms: h.timestamp_ms,
            disabled_features: Vec::new(),
            timeout_multiplier: 1.0,
            drain_eta_ms: None,
            unhealthy_reason: None,
            recoverable: h.state != HealthState::Unhealthy,
        }
    }
}

impl TryFrom<v2::HealthStatus> for HealthStatus {
    type Error = ConvertError;

    fn try_from(h: v2::HealthStatus) -> Result<Self, ConvertError> {
        let state = HealthState::from_wire(i64::from(h.state)).ok_or_else(|| {
            ConvertError::new("HealthStatus", format!("unknown state {}", h.state))
        })?;
        Ok(HealthStatus {
            agent_id: h.agent_id,
            state,
            message: h.message,
            timestamp_ms: h.timestamp_ms,
        })
    }
}

impl From<FlowControl> for v2::FlowControlSignal {
    fn from(f: FlowControl) -> Self {
        v2::FlowControlSignal {
            correlation_id: f.correlation_id,
            action: f.action.code(),
            buffer_available: f.buffer_available,
            timestamp_ms: f.timestamp_ms,
        }
    }
}

impl TryFrom<v2::FlowControlSignal> for FlowControl {
    type Error = ConvertError;

    /// Unlike the reference, an unknown action is refused rather than read as resume.
    fn try_from(f: v2::FlowControlSignal) -> Result<Self, ConvertError> {
        let action = FlowAction::from_code(i64::from(f.action)).ok_or_else(|| {
            ConvertError::new("FlowControlSignal", format!("unknown action {}", f.action))
        })?;
        Ok(FlowControl {
            action,
            correlation_id: f.correlation_id,
            buffer_available: f.buffer_available,
            timestamp_ms: f.timestamp_ms,
        })
    }
}

impl From<MetricsReport> for v2::MetricsReport {
    fn from(m: MetricsReport) -> Self {
        v2::MetricsReport {
            agent_id: m.agent_id,
            timestamp_ms: m.timestamp_ms,
            interval_ms: m.interval_ms,
            counters: m
                .counters
                .into_iter()
                .map(|c| v2::CounterMetric {
                    name: c.name,
                    help: c.help,
                    labels: c.labels,
                    value: c.value,
                })
                .collect(),
            gauges: m
                .gauges
                .into_iter()
                .map(|g| v2::GaugeMetric {
                    name: g.name,
                    help: g.help,
                    labels: g.labels,
                    value: g.value,
                })
                .collect(),
            histograms: m
                .histograms
                .into_iter()
                .map(|h| v2::HistogramMetric {
                    name: h.name,
                    help: h.help,
                    labels: h.labels,
                    sum: h.sum,
                    count: h.count,
                    buckets: h
                        .buckets
                        .into_iter()
                        .map(|b| v2::HistogramBucket {
                            le: b.le,
                            count: b.count,
                        })
                        .collect(),
                })
                .collect(),
        }
    }
}

impl From<v2::MetricsReport> for MetricsReport {
    fn from(m: v2::MetricsReport) -> Self {
        MetricsReport {
            agent_id: m.agent_id,
            timestamp_ms: m.timestamp_ms,
            interval_ms: m.interval_ms,
            counters: m
                .counters
                .into_iter()
                .map(|c| CounterMetric {
                    name: c.name,
                    help: c.help,
                    labels: c.labels,
                    value: c.value,
                })
                .collect(),
            gauges: m
                .gauges
                .into_iter()
                .map(|g| GaugeMetric {
                    name: g.name,
                    help: g.help,
                    labels: g.labels,
                    value: g.value,
                })
                .collect(),
            histograms: m
                .histograms
                .into_iter()
                .map(|h| HistogramMetric {
                    name: h.name,
                    help: h.help,
                    labels: h.labels,
                    sum: h.sum,
                    count: h.count,
                    buckets: h
                        .buckets
                        .into_iter()
                        .map(|b| HistogramBucket {
                            le: b.le,
                            count: b.count,
                        })
                        .collect(),
                })
                .collect(),
        }
    }
}

impl From<ConfigUpdateRequest> for v2::ConfigUpdateRequest {
    fn from(r: ConfigUpdateRequest) -> Self {
        use v2::config_update_request::UpdateType as U;
        let update_type = match r.update_type {
            ConfigUpdateType::RequestReload => U::RequestReload(v2::RequestReload {}),
            ConfigUpdateType::RuleUpdate {
                rule_set,
                rules,
                remove_rules,
            } => U::RuleUpdate(v2::RuleUpdate {
                rule_set,
                rules: rules
                    .into_iter()
                    .map(|r| v2::RuleDefinition {
                        id: r.id,
                        priority: r.priority,
                        definition_json: r.definition.to_string(),
                        enabled: r.enabled,
                        description: r.description,
                        tags: r.tags,
                    })
                    .collect(),
                remove_rules,
            }),
            ConfigUpdateType::ListUpdate {
                list_id,
                add,
                remove,
            } => U::ListUpdate(v2::ListUpdate {
                list_id,
                add,
                remove,
            }),
            ConfigUpdateType::RestartRequired {
                reason,
                grace_period_ms,
            } => U::RestartRequired(v2::RestartRequired {
                reason,
                grace_period_ms,
            }),
            ConfigUpdateType::ConfigError { error, field } => {
                U::ConfigError(v2::ConfigError { error, field })
            }
        };
        v2::ConfigUpdateRequest {
            request_id: r.request_id,
            timestamp_ms: r.timestamp_ms,
            update_type: Some(update_type),
        }
    }
}

impl TryFrom<v2::ConfigUpdateRequest> for ConfigUpdateRequest {
    type Error = ConvertError;

    fn try_from(r: v2::ConfigUpdateRequest) -> Result<Self, ConvertError> {
        use v2::config_update_request::UpdateType as U;
        let update_type = match r.update_type {
            None => return Err(ConvertError::new("ConfigUpdateRequest", "no update_type")),
            Some(U::RequestReload(_)) => ConfigUpdateType::RequestReload,
            Some(U::RuleUpdate(u)) => ConfigUpdateType::RuleUpdate {
                rule_set: u.rule_set,
                rules: u
                    .rules
                    .into_iter()
                    .map(|r| {
                        Ok(RuleDefinition {
                            definition: json_text("RuleDefinition", &r.definition_json)?,
                            id: r.id,
                            priority: r.priority,
                            enabled: r.enabled,
                            description: r.description,
                            tags: r.tags,
                        })
                    })
                    .collect::<Result<_, ConvertError>>()?,
                remove_rules: u.remove_rules,
            },
            Some(U::ListUpdate(u)) => ConfigUpdateType::ListUpdate {
                list_id: u.list_id,
                add: u.add,
                remove: u.remove,
            },
            Some(U::RestartRequired(u)) => ConfigUpdateType::RestartRequired {
                reason: u.reason,
                grace_period_ms: u.grace_period_ms,
            },
            Some(U::ConfigError(u)) => ConfigUpdateType::ConfigError {
                error: u.error,
                field: u.field,
            },
        };
        Ok(ConfigUpdateRequest {
            update_type,
            request_id: r.request_id,
            timestamp_ms: r.timestamp_ms,
        })
    }
}

impl From<ConfigUpdateResponse> for v2::ConfigUpdateResponse {
    fn from(r: ConfigUpdateResponse) -> Self {
        v2::ConfigUpdateResponse {
            request_id: r.request_id,
            accepted: r.accepted,
            error: r.error,
            timestamp_ms: r.timestamp_ms,
        }
    }
}

impl From<v2::ConfigUpdateResponse> for ConfigUpdateResponse {
    fn from(r: v2::ConfigUpdateResponse) -> Self {
        ConfigUpdateResponse {
            request_id: r.request_id,
            accepted: r.accepted,
            error: r.error,
            timestamp_ms: r.timestamp_ms,
        }
    }
}

// ----- the agent's answer ----------------------------------------------------------------------

fn header_op_to_proto(op: HeaderOp) -> v2::HeaderOp {
    use v2::header_op::Operation as O;
    let operation = match op {
        HeaderOp::Set { name, value } => O::Set(v2::Header { name, value }),
        HeaderOp::Add { name, value } => O::Add(v2::Header { name, value }),
        HeaderOp::Remove { name } => O::Remove(name),
    };
    v2::HeaderOp {
        operation: Some(operation),
    }
}

fn header_op_from_proto(op: v2::HeaderOp) -> Option<HeaderOp> {
    use v2::header_op::Operation as O;
    Some(match op.operation? {
        O::Set(v2::Header { name, value }) => HeaderOp::Set { name, value },
        O::Add(v2::Header { name, value }) => HeaderOp::Add { name, value },
        O::Remove(name) => HeaderOp::Remove { name },
    })
}

fn mutation_to_proto(m: BodyMutation) -> v2::BodyMutation {
    v2::BodyMutation {
        data: m.data,
        chunk_index: m.chunk_index,
    }
}

fn mutation_from_proto(m: v2::BodyMutation) -> BodyMutation {
    BodyMutation {
        data: m.data,
        chunk_index: m.chunk_index,
    }
}

fn audit_is_empty(a: &AuditMetadata) -> bool {
    a.tags.is_empty()
        && a.rule_ids.is_empty()
        && a.confidence.is_none()
        && a.reason_codes.is_empty()
        && a.custom.is_empty()
}

/// Builds the protobuf answer for `correlation_id`. The response is moved field by field;
/// `audit.custom` values become their JSON text (see the [module docs](self)); nothing is added
/// to them. `processing_time_ms` is left for the caller to fill in.
pub fn response_to_proto(correlation_id: String, r: AgentResponse) -> v2::AgentResponse {
    use v2::agent_response::Decision as D;
    let decision = match r.decision {
        Decision::Allow => D::Allow(v2::AllowDecision {}),
        Decision::Block {
            status,
            body,
            headers,
        } => {
            let empty_headers = headers.as_ref().is_some_and(HashMap::is_empty);
            D::Block(v2::BlockDecision {
                status: u32::from(status),
                body,
                headers: headers
                    .into_iter()
                    .flatten()
                    .map(|(name, value)| v2::Header { name, value })
                    .collect(),
                empty_headers,
            })
        }
        Decision::Redirect { url, status } => D::Redirect(v2::RedirectDecision {
            url,
            status: u32::from(status),
        }),
        Decision::Challenge {
            challenge_type,
            params,
        } => D::Challenge(v2::ChallengeDecision {
            challenge_type,
            params,
        }),
    };
    let audit = (!audit_is_empty(&r.audit)).then(|| {
        let a = r.audit;
        v2::AuditMetadata {
            tags: a.tags,
            rule_ids: a.rule_ids,
            confidence: a.confidence,
            reason_codes: a.reason_codes,
            custom: a
                .custom
                .into_iter()
                .map(|(k, v)| (k, v.to_string()))
                .collect(),
        }
    });
    let websocket_decision = r.websocket_decision.map(|d| {
        use v2::web_socket_decision::Decision as W;
        v2::WebSocketDecision {
            decision: Some(match d {
                WebSocketDecision::Allow => W::Allow(v2::AllowDecision {}),
                WebSocketDecision::Drop => W::Drop(v2::AllowDecision {}),
                WebSocketDecision::Close { code, reason } => {
                    W::Close(v2::web_socket_decision::Close {
                        code: u32::from(code),
                        reason,
                    })
                }
            }),
        }
    });
    v2::AgentResponse {
        correlation_id,
        decision: Some(decision),
        request_headers: r
            .request_headers
            .into_iter()
            .map(header_op_to_proto)
            .collect(),
        response_headers: r
            .response_headers
            .into_iter()
            .map(header_op_to_proto)
            .collect(),
        audit,
        processing_time_ms: None,
        needs_more: r.needs_more,
        routing_metadata: r.routing_metadata,
        request_body_mutation: r.request_body_mutation.map(mutation_to_proto),
        response_body_mutation: r.response_body_mutation.map(mutation_to_proto),
        websocket_decision,
        version: (r.version != 2).then_some(r.version),
    }
}

/// Reads a protobuf answer into its correlation id and the core response.
///
/// Fails (with the correlation id in the error) when the decision is missing, or a status or
/// close code is above 65535. Header operations with no operation are skipped, as the reference
/// does.
pub fn response_from_proto(r: v2::AgentResponse) -> Result<(String, AgentResponse), ConvertError> {
    use v2::agent_response::Decision as D;
    let fail = |reason: String| ConvertError::new("AgentResponse", reason);
    let decision = match r.decision {
        None => return Err(fail("no decision".into()).with_id(&r.correlation_id)),
        Some(D::Allow(_)) => Decision::Allow,
        Some(D::Block(b)) => {
            let status = u16::try_from(b.status)
                .map_err(|_| fail(format!("block status {} is above 65535", b.status)))
                .map_err(|e| e.with_id(&r.correlation_id))?;
            let headers = if b.headers.is_empty() {
                b.empty_headers.then(HashMap::new)
            } else {
                Some(
                    b.headers
                        .into_iter()
                        .map(|h| (h.name, h.value))
                        .collect::<HashMap<_, _>>(),
                )
            };
            Decision::Block {
                status,
                body: b.body,
                headers,
            }
        }
        Some(D::Redirect(d)) => Decision::Redirect {
            status: u16::try_from(d.status)
                .map_err(|_| fail(format!("redirect status {} is above 65535", d.status)))
                .map_err(|e| e.with_id(&r.correlation_id))?,
            url: d.url,
        },
        Some(D::Challenge(c)) => Decision::Challenge {
            challenge_type: c.challenge_type,
            params: c.params,
        },
    };
    let websocket_decision = match r.websocket_decision.and_then(|d| d.decision) {
        None => None,
        Some(v2::web_socket_decision::Decision::Allow(_)) => Some(WebSocketDecision::Allow),
        Some(v2::web_socket_decision::Decision::Drop(_)) => Some(WebSocketDecision::Drop),
        Some(v2::web_socket_decision::Decision::Close(c)) => Some(WebSocketDecision::Close {
            code: u16::try_from(c.code)
                .map_err(|_| fail(format!("close code {} is above 65535", c.code)))
                .map_err(|e| e.with_id(&r.correlation_id))?,
            reason: c.reason,
        }),
    };
    let audit = r
        .audit
        .map(|a| AuditMetadata {
            tags: a.tags,
            rule_ids: a.rule_ids,
            confidence: a.confidence,
            reason_codes: a.reason_codes,
            custom: a
                .custom
                .into_iter()
                .map(|(k, text)| {
                    let value =
                        serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
                    (k, value)
                })
                .collect(),
        })
        .unwrap_or_default();
    let response = AgentResponse {
        version: r.version.unwrap_or(2),
        decision,
        request_headers: r
            .request_headers
            .into_iter()
            .filter_map(header_op_from_proto)
            .collect(),
        response_headers: r
            .response_headers
            .into_iter()
            .filter_map(header_op_from_proto)
            .collect(),
        routing_metadata: r.routing_metadata,
        audit,
        needs_more: r.needs_more,
        request_body_mutation: r.request_body_mutation.map(mutation_from_proto),
        response_body_mutation: r.response_body_mutation.map(mutation_from_proto),
        websocket_decision,
    };
    Ok((r.correlation_id, response))
}

// ----- whole messages, both directions ---------------------------------------------------------

impl From<Outgoing> for v2::ProxyToAgent {
    fn from(message: Outgoing) -> Self {
        use v2::proxy_to_agent::Message as M;
        let message = match message {
            Outgoing::Handshake(h) => M::Handshake(h.into()),
            Outgoing::Event(e) => e.into(),
            Outgoing::Cancel(c) => M::Cancel(c.into()),
            Outgoing::Ping(p) => M::Ping(p.into()),
        };
        v2::ProxyToAgent {
            message: Some(message),
        }
    }
}

/// Converts what the core's agent connection emits. A pong's own `timestamp_ms` is `now_ms`.
/// `None` for a registration: reverse connections are framed only, and this schema has no
/// message for it (an agent connection over gRPC never emits one).
pub fn agent_outgoing_to_proto(message: AgentOutgoing, now_ms: u64) -> Option<v2::AgentToProxy> {
    use v2::agent_to_proxy::Message as M;
    let message = match message {
        AgentOutgoing::Register(_) => return None,
        AgentOutgoing::Handshake(h) => M::Handshake(h.into()),
        AgentOutgoing::Response {
            correlation_id,
            response,
        } => M::Response(response_to_proto(correlation_id, response)),
        AgentOutgoing::Pong(p) => M::Pong(pong_for(p, now_ms)),
        AgentOutgoing::Health(h) => M::Health(h.into()),
        AgentOutgoing::FlowControl(f) => M::FlowControl(f.into()),
        AgentOutgoing::Metrics(m) => M::Metrics(m.into()),
        AgentOutgoing::ConfigUpdate(c) => M::ConfigUpdate(c.into()),
    };
    Some(v2::AgentToProxy {
        message: Some(message),
    })
}

/// What a [`v2::AgentToProxy`] message is, for the proxy.
// Responses dominate; boxing them would cost an allocation per message.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum AgentMessage {
    /// Something the core's proxy connection takes. An answer that does not convert but names
    /// its request is [`Incoming::MalformedResponse`], so just that request fails.
    Protocol(Incoming),
    /// A log line from the agent (no protocol meaning).
    Log(v2::LogMessage),
    /// A control message that does not convert (unknown health state or flow action, ...):
    /// ignored, as framed transports ignore control frames that do not decode.
    Invalid(ConvertError),
    /// The oneof was empty: a message type this schema does not know (skipped).
    Unknown,
}

impl From<v2::AgentToProxy> for AgentMessage {
    fn from(message: v2::AgentToProxy) -> Self {
        use v2::agent_to_proxy::Message as M;
        let Some(message) = message.message else {
            return AgentMessage::Unknown;
        };
        let incoming = match message {
            M::Handshake(h) => Ok(Incoming::Handshake(h.into())),
            M::Response(r) => match response_from_proto(r) {
                Ok((correlation_id, response)) => Ok(Incoming::Response {
                    correlation_id,
                    response,
                }),
                Err(e) => match e.correlation_id.clone() {
                    Some(correlation_id) => Ok(Incoming::MalformedResponse {
                        correlation_id,
                        error: DecodeError {
                            frame_type: FrameType::AgentResponse,
                            encoding: Encoding::Json,
                            message: format!("protobuf: {e}"),
                            limit: None,
                        },
                    }),
                    None => Err(e),
                },
            },
            M::Health(h) => h.try_into().map(Incoming::Health),
            M::Metrics(m) => Ok(Incoming::Metrics(m.into())),
            M::ConfigUpdate(c) => c.try_into().map(Incoming::ConfigUpdate),
            M::FlowControl(f) => f.try_into().map(Incoming::FlowControl),
            M::Pong(p) => Ok(Incoming::Pong(ping_of(p))),
            M::Log(l) => return AgentMessage::Log(l),
        };
        match incoming {
            Ok(incoming) => AgentMessage::Protocol(incoming),
            Err(e) => AgentMessage::Invalid(e),
        }
    }
}
