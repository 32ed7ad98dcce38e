//! The agent's answer, both directions.

use std::collections::HashMap;

use super::{owned, ConvertError};
use crate::v2;
use agent_protocol_core::{
    AgentResponse, AuditMetadata, BodyMutation, Decision, HeaderOp, WebSocketDecision,
};

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
        data: m.data.map(owned),
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
/// `audit.custom` values become their JSON text (see the [module docs](super)); nothing is added
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
        // Carried beside the answer; the caller puts it where its transport wants it.
        correlation_id: None,
    };
    Ok((r.correlation_id, response))
}
