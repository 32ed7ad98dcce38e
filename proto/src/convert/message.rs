//! Whole messages, both directions: the oneofs of the proxy's and the agent's streams.

use super::{
    event_from_proto, ping_of, pong_for, response_from_proto, response_to_proto, ConvertError,
};
use crate::v2;
use agent_protocol_core::capabilities::EventKind;
use agent_protocol_core::encoding::DecodeError;
use agent_protocol_core::event::event_frame_type;
use agent_protocol_core::frame::FrameType;
use agent_protocol_core::handshake::HandshakeResponse;
use agent_protocol_core::proxy::{ProxyIncoming as Incoming, ProxyOutgoing as Outgoing};
use agent_protocol_core::{AgentIncoming, AgentOutgoing, Encoding};

// ----- proxy -> agent --------------------------------------------------------------------------

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
                    Ok(event) => AgentIncoming::from(event),
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

// ----- agent -> proxy --------------------------------------------------------------------------

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
        } => M::Response(response_to_proto(correlation_id.into(), response)),
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
    /// its request is [`ProxyIncoming::MalformedResponse`](Incoming::MalformedResponse), so just that request fails.
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
            M::Handshake(h) => {
                // gRPC carries no payload encoding: whatever the agent names, messages are
                // protobuf, and the connection sees the nominal JSON it offered.
                let mut h = HandshakeResponse::from(h);
                h.encoding = Encoding::Json.as_str().to_owned();
                Ok(Incoming::Handshake(h))
            }
            M::Response(r) => match response_from_proto(r) {
                Ok((correlation_id, mut response)) => {
                    response.correlation_id = Some(correlation_id.into());
                    Ok(Incoming::Response { response })
                }
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
