//! The proxy's events, both directions.

use super::headers::{headers_from_proto, headers_to_proto};
use super::time::{timestamp_from_proto, timestamp_to_proto};
use super::{json_text, owned, u16_field, ConvertError};
use crate::v2;
use agent_protocol_core::{
    BodyChunk, ConfigureEvent, Event, GuardrailInspectEvent, GuardrailInspectionType,
    RequestBodyChunkEvent, RequestCompleteEvent, RequestHeadersEvent, RequestMetadata,
    ResponseBodyChunkEvent, ResponseHeadersEvent, WebSocketFrameEvent, WebSocketOpcode,
};

// ----- events: core -> proto -------------------------------------------------------------------

fn metadata_to_proto(m: RequestMetadata, correlation_id: String) -> v2::RequestMetadata {
    let (timestamp_ms, timestamp) = timestamp_to_proto(m.timestamp.into());
    v2::RequestMetadata {
        correlation_id,
        request_id: m.request_id.into(),
        client_ip: m.client_ip.into(),
        client_port: u32::from(m.client_port),
        server_name: m.server_name.map(Into::into),
        protocol: m.protocol.into(),
        tls_version: m.tls_version.map(Into::into),
        route_id: m.route_id.map(Into::into),
        upstream_id: m.upstream_id.map(Into::into),
        timestamp_ms,
        traceparent: m.traceparent.map(Into::into),
        tls_cipher: m.tls_cipher.map(Into::into),
        timestamp,
    }
}

impl From<RequestHeadersEvent> for v2::RequestHeadersEvent {
    fn from(e: RequestHeadersEvent) -> Self {
        let metadata = metadata_to_proto(e.metadata, e.correlation_id.into());
        v2::RequestHeadersEvent {
            http_version: metadata.protocol.clone(),
            metadata: Some(metadata),
            method: e.method.into(),
            uri: e.uri.into(),
            headers: headers_to_proto(e.headers),
        }
    }
}

fn chunk_to_proto(c: BodyChunk) -> v2::BodyChunkEvent {
    v2::BodyChunkEvent {
        correlation_id: c.correlation_id.into(),
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
            correlation_id: e.correlation_id.into(),
            status_code: u32::from(e.status),
            headers: headers_to_proto(e.headers),
        }
    }
}

impl From<RequestCompleteEvent> for v2::RequestCompleteEvent {
    fn from(e: RequestCompleteEvent) -> Self {
        v2::RequestCompleteEvent {
            correlation_id: e.correlation_id.into(),
            status_code: u32::from(e.status),
            duration_ms: e.duration_ms,
            bytes_received: e.request_body_size,
            bytes_sent: e.response_body_size,
            upstream: None,
            from_cache: false,
            error: e.error.map(Into::into),
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
            correlation_id: e.correlation_id.into(),
            client_to_server: e.client_to_server,
            frame_type: frame_type_of(e.opcode) as i32,
            payload: e.data,
            opcode: Some(u32::from(e.opcode.as_u8())),
            frame_index: e.frame_index,
            fin: Some(e.fin),
            route_id: e.route_id.map(Into::into),
            client_ip: e.client_ip.into(),
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
            correlation_id: e.correlation_id.into(),
            content: e.content.into(),
            content_type: v2::GuardrailContentType::Unspecified as i32,
            model: e.model.map(Into::into),
            context_json: String::new(),
            inspection_type: inspection_type as i32,
            categories: e.categories,
            route_id: e.route_id.map(Into::into),
            metadata: e.metadata,
        }
    }
}

impl From<ConfigureEvent> for v2::ConfigureEvent {
    fn from(e: ConfigureEvent) -> Self {
        v2::ConfigureEvent {
            config_json: e.config.to_string(),
            config_version: e.config_version.map(Into::into),
            is_initial: false,
            timestamp_ms: 0,
            correlation_id: e.correlation_id.into(),
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
        correlation_id: m.correlation_id.into(),
        request_id: m.request_id.into(),
        client_ip: m.client_ip.into(),
        client_port,
        server_name: m.server_name.map(Into::into),
        protocol: m.protocol.into(),
        tls_version: m.tls_version.map(Into::into),
        tls_cipher: m.tls_cipher.map(Into::into),
        route_id: m.route_id.map(Into::into),
        upstream_id: m.upstream_id.map(Into::into),
        timestamp: timestamp_from_proto(m.timestamp_ms, m.timestamp).into(),
        traceparent: m.traceparent.map(Into::into),
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
            metadata.protocol = e.http_version.into();
        }
        let headers = headers_from_proto("RequestHeadersEvent", e.headers)
            .map_err(|err| err.with_id(&metadata.correlation_id))?;
        Ok(RequestHeadersEvent {
            correlation_id: metadata.correlation_id.clone(),
            metadata,
            method: e.method.into(),
            uri: e.uri.into(),
            headers,
        })
    }
}

fn chunk_from_proto(c: v2::BodyChunkEvent) -> BodyChunk {
    BodyChunk {
        correlation_id: c.correlation_id.into(),
        data: owned(c.data),
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
        let headers = headers_from_proto("ResponseHeadersEvent", e.headers)
            .map_err(|err| err.with_id(&e.correlation_id))?;
        Ok(ResponseHeadersEvent {
            correlation_id: e.correlation_id.into(),
            status,
            headers,
        })
    }
}

impl TryFrom<v2::RequestCompleteEvent> for RequestCompleteEvent {
    type Error = ConvertError;

    fn try_from(e: v2::RequestCompleteEvent) -> Result<Self, ConvertError> {
        let status = u16_field("RequestCompleteEvent", "status_code", e.status_code)
            .map_err(|err| err.with_id(&e.correlation_id))?;
        Ok(RequestCompleteEvent {
            correlation_id: e.correlation_id.into(),
            status,
            duration_ms: e.duration_ms,
            request_body_size: e.bytes_received,
            response_body_size: e.bytes_sent,
            upstream_attempts: e.upstream_attempts,
            error: e.error.map(Into::into),
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
            correlation_id: e.correlation_id.into(),
            opcode,
            data: owned(e.payload),
            client_to_server: e.client_to_server,
            frame_index: e.frame_index,
            fin: e.fin.unwrap_or(true),
            route_id: e.route_id.map(Into::into),
            client_ip: e.client_ip.into(),
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
            correlation_id: e.correlation_id.into(),
            inspection_type,
            content: e.content.into(),
            model: e.model.map(Into::into),
            categories: e.categories,
            route_id: e.route_id.map(Into::into),
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
            correlation_id: e.correlation_id.into(),
            config,
            config_version: e.config_version.map(Into::into),
        })
    }
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
