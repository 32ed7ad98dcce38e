//! proptest strategies for every protocol message, shared by the property tests and the
//! differential decoding tests.

use std::collections::HashMap;

use agent_protocol_core::control::{
    CounterMetric, GaugeMetric, HistogramBucket, HistogramMetric, RuleDefinition,
};
use agent_protocol_core::handshake::{HandshakeRequest, HandshakeResponse};
use agent_protocol_core::registration::{RegistrationRequest, RegistrationResponse};
use agent_protocol_core::*;
use bytes::Bytes;
use proptest::prelude::*;
use serde_json::{Map, Value};

/// Any text: ASCII most of the time, otherwise arbitrary chars (controls, quotes, non-BMP...).
pub fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[a-zA-Z0-9 _./:;=-]{0,12}",
        1 => prop::collection::vec(any::<char>(), 0..8).prop_map(String::from_iter),
    ]
}

pub fn opt_text() -> impl Strategy<Value = Option<String>> {
    prop::option::of(text())
}

pub fn texts() -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(text(), 0..4)
}

pub fn string_map() -> impl Strategy<Value = HashMap<String, String>> {
    prop::collection::hash_map(text(), text(), 0..4)
}

pub fn body() -> impl Strategy<Value = Bytes> {
    prop::collection::vec(any::<u8>(), 0..64).prop_map(Bytes::from)
}

pub fn finite_f64() -> impl Strategy<Value = f64> {
    prop::num::f64::NORMAL | prop::num::f64::SUBNORMAL | prop::num::f64::ZERO
}

/// A JSON value without NaN (which JSON cannot carry): nested arrays and objects of scalars.
pub fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        finite_f64().prop_map(Value::from),
        text().prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(text(), inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A JSON object (what `config` and `metadata` carry; `Some(null)` would read back as `None`).
pub fn json_object() -> impl Strategy<Value = Value> {
    prop::collection::btree_map(text(), json_value(), 0..4)
        .prop_map(|m| Value::Object(m.into_iter().collect()))
}

pub fn headers() -> impl Strategy<Value = Headers> {
    prop::collection::vec((text(), text()), 0..6).prop_map(Headers::from_iter)
}

pub fn metadata(
    traceparent: BoxedStrategy<Option<String>>,
) -> impl Strategy<Value = RequestMetadata> {
    (
        (text(), text(), text(), any::<u16>(), opt_text(), text()),
        (opt_text(), opt_text(), opt_text(), opt_text(), text()),
        traceparent,
    )
        .prop_map(
            |(
                (correlation_id, request_id, client_ip, client_port, server_name, protocol),
                (tls_version, tls_cipher, route_id, upstream_id, timestamp),
                traceparent,
            )| RequestMetadata {
                correlation_id: correlation_id.into(),
                request_id: request_id.into(),
                client_ip: client_ip.into(),
                client_port,
                server_name: server_name.map(Into::into),
                protocol: protocol.into(),
                tls_version: tls_version.map(Into::into),
                tls_cipher: tls_cipher.map(Into::into),
                route_id: route_id.map(Into::into),
                upstream_id: upstream_id.map(Into::into),
                timestamp: timestamp.into(),
                traceparent: traceparent.map(Into::into),
            },
        )
}

pub fn request_headers_with(
    traceparent: BoxedStrategy<Option<String>>,
) -> impl Strategy<Value = RequestHeadersEvent> {
    (
        metadata(traceparent),
        text(),
        text(),
        headers(),
        // The top-level id is normally the metadata's; a proxy may also send another one.
        prop::option::of("[a-z0-9-]{1,12}"),
    )
        .prop_map(|(meta, method, uri, headers, top)| {
            let mut event = RequestHeadersEvent::new(meta, method, uri, headers);
            if let Some(top) = top {
                event.correlation_id = top.into();
            }
            event
        })
}

pub fn request_headers() -> impl Strategy<Value = RequestHeadersEvent> {
    request_headers_with(opt_text().boxed())
}

pub fn body_chunk() -> impl Strategy<Value = BodyChunk> {
    (
        text(),
        body(),
        any::<bool>(),
        prop::option::of(any::<u64>()),
        any::<u32>(),
        any::<u64>(),
    )
        .prop_map(
            |(correlation_id, data, is_last, total_size, chunk_index, bytes_transferred)| {
                BodyChunk {
                    correlation_id: correlation_id.into(),
                    data,
                    is_last,
                    total_size,
                    chunk_index,
                    bytes_transferred,
                }
            },
        )
}

pub fn response_headers() -> impl Strategy<Value = ResponseHeadersEvent> {
    (text(), any::<u16>(), headers()).prop_map(|(correlation_id, status, headers)| {
        ResponseHeadersEvent {
            correlation_id: correlation_id.into(),
            status,
            headers,
        }
    })
}

pub fn request_complete() -> impl Strategy<Value = RequestCompleteEvent> {
    (
        text(),
        any::<u16>(),
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        any::<u32>(),
        opt_text(),
    )
        .prop_map(
            |(
                correlation_id,
                status,
                duration_ms,
                request_body_size,
                response_body_size,
                upstream_attempts,
                error,
            )| RequestCompleteEvent {
                correlation_id: correlation_id.into(),
                status,
                duration_ms,
                request_body_size,
                response_body_size,
                upstream_attempts,
                error: error.map(Into::into),
            },
        )
}

pub fn opcode() -> impl Strategy<Value = WebSocketOpcode> {
    prop::sample::select(vec![
        WebSocketOpcode::Continuation,
        WebSocketOpcode::Text,
        WebSocketOpcode::Binary,
        WebSocketOpcode::Close,
        WebSocketOpcode::Ping,
        WebSocketOpcode::Pong,
    ])
}

pub fn websocket_frame() -> impl Strategy<Value = WebSocketFrameEvent> {
    (
        text(),
        opcode(),
        body(),
        any::<bool>(),
        any::<u64>(),
        any::<bool>(),
        opt_text(),
        text(),
    )
        .prop_map(
            |(correlation_id, opcode, data, client_to_server, frame_index, fin, route_id, ip)| {
                WebSocketFrameEvent {
                    correlation_id: correlation_id.into(),
                    opcode,
                    data,
                    client_to_server,
                    frame_index,
                    fin,
                    route_id: route_id.map(Into::into),
                    client_ip: ip.into(),
                }
            },
        )
}

pub fn guardrail_inspect() -> impl Strategy<Value = GuardrailInspectEvent> {
    (
        text(),
        prop::sample::select(vec![
            GuardrailInspectionType::PromptInjection,
            GuardrailInspectionType::PiiDetection,
        ]),
        text(),
        opt_text(),
        texts(),
        opt_text(),
        string_map(),
    )
        .prop_map(
            |(correlation_id, inspection_type, content, model, categories, route_id, metadata)| {
                GuardrailInspectEvent {
                    correlation_id: correlation_id.into(),
                    inspection_type,
                    content: content.into(),
                    model: model.map(Into::into),
                    categories,
                    route_id: route_id.map(Into::into),
                    metadata,
                }
            },
        )
}

pub fn configure() -> impl Strategy<Value = ConfigureEvent> {
    (text(), json_value(), opt_text()).prop_map(|(correlation_id, config, config_version)| {
        ConfigureEvent {
            correlation_id: correlation_id.into(),
            config,
            config_version: config_version.map(Into::into),
        }
    })
}

pub fn any_event() -> impl Strategy<Value = Event> {
    prop_oneof![
        request_headers().prop_map(Event::RequestHeaders),
        body_chunk().prop_map(|c| Event::RequestBodyChunk(RequestBodyChunkEvent(c))),
        response_headers().prop_map(Event::ResponseHeaders),
        body_chunk().prop_map(|c| Event::ResponseBodyChunk(ResponseBodyChunkEvent(c))),
        request_complete().prop_map(Event::RequestComplete),
        websocket_frame().prop_map(Event::WebSocketFrame),
        guardrail_inspect().prop_map(Event::GuardrailInspect),
        configure().prop_map(Event::Configure),
    ]
}

pub fn decision() -> impl Strategy<Value = Decision> {
    prop_oneof![
        Just(Decision::Allow),
        (any::<u16>(), opt_text(), prop::option::of(string_map())).prop_map(
            |(status, body, headers)| Decision::Block {
                status,
                body,
                headers
            }
        ),
        (text(), any::<u16>()).prop_map(|(url, status)| Decision::Redirect { url, status }),
        (text(), string_map()).prop_map(|(challenge_type, params)| Decision::Challenge {
            challenge_type,
            params
        }),
    ]
}

pub fn header_op() -> impl Strategy<Value = HeaderOp> {
    prop_oneof![
        (text(), text()).prop_map(|(name, value)| HeaderOp::Set { name, value }),
        (text(), text()).prop_map(|(name, value)| HeaderOp::Add { name, value }),
        text().prop_map(|name| HeaderOp::Remove { name }),
    ]
}

pub fn body_mutation() -> impl Strategy<Value = BodyMutation> {
    // None passes the chunk, empty drops it, anything else replaces it.
    (prop::option::of(body()), any::<u32>())
        .prop_map(|(data, chunk_index)| BodyMutation { data, chunk_index })
}

pub fn websocket_decision() -> impl Strategy<Value = WebSocketDecision> {
    prop_oneof![
        Just(WebSocketDecision::Allow),
        Just(WebSocketDecision::Drop),
        (any::<u16>(), text()).prop_map(|(code, reason)| WebSocketDecision::Close { code, reason }),
    ]
}

/// A custom audit value: a string, an integer, a finite float or a bool.
pub fn custom_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        text().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        finite_f64().prop_map(Value::from),
        any::<bool>().prop_map(Value::from),
    ]
}

pub fn audit() -> impl Strategy<Value = AuditMetadata> {
    (
        texts(),
        texts(),
        prop::option::of(prop::num::f32::NORMAL | prop::num::f32::ZERO),
        texts(),
        prop::collection::btree_map(text(), custom_value(), 0..4),
        opt_text(),
    )
        .prop_map(|(tags, rule_ids, confidence, reason_codes, custom, cid)| {
            let mut custom: Map<String, Value> = custom.into_iter().collect();
            if let Some(cid) = cid {
                custom.insert("correlation_id".into(), Value::String(cid));
            }
            AuditMetadata {
                tags,
                rule_ids,
                confidence,
                reason_codes,
                custom,
            }
        })
}

pub fn agent_response() -> impl Strategy<Value = AgentResponse> {
    (
        (
            any::<u32>(),
            decision(),
            prop::collection::vec(header_op(), 0..4),
            prop::collection::vec(header_op(), 0..4),
            string_map(),
        ),
        (
            audit(),
            any::<bool>(),
            prop::option::of(body_mutation()),
            prop::option::of(body_mutation()),
            prop::option::of(websocket_decision()),
        ),
    )
        .prop_map(
            |(
                (version, decision, request_headers, response_headers, routing_metadata),
                (audit, needs_more, request_body_mutation, response_body_mutation, ws),
            )| {
                // A routing id in `custom` is what the wire carries; in memory it is the
                // answer's own field.
                let mut audit = audit;
                let correlation_id = audit
                    .custom
                    .remove("correlation_id")
                    .and_then(|id| id.as_str().map(Into::into));
                AgentResponse {
                    version,
                    decision,
                    request_headers,
                    response_headers,
                    routing_metadata,
                    audit,
                    needs_more,
                    request_body_mutation,
                    response_body_mutation,
                    websocket_decision: ws,
                    correlation_id,
                }
            },
        )
}

pub fn cancel_reason() -> impl Strategy<Value = CancelReason> {
    (0i64..6).prop_map(CancelReason::from_uds_code)
}

pub fn health_state() -> impl Strategy<Value = HealthState> {
    (1i64..=4).prop_map(|v| HealthState::from_wire(v).unwrap())
}

pub fn health_status() -> impl Strategy<Value = HealthStatus> {
    (text(), health_state(), opt_text(), any::<u64>()).prop_map(
        |(agent_id, state, message, timestamp_ms)| HealthStatus {
            agent_id,
            state,
            message,
            timestamp_ms,
        },
    )
}

pub fn flow_control() -> impl Strategy<Value = FlowControl> {
    (
        (1i64..=3).prop_map(|c| FlowAction::from_code(c).unwrap()),
        opt_text(),
        prop::option::of(any::<u64>()),
        any::<u64>(),
    )
        .prop_map(
            |(action, correlation_id, buffer_available, timestamp_ms)| FlowControl {
                action,
                correlation_id,
                buffer_available,
                timestamp_ms,
            },
        )
}

pub fn metrics_report() -> impl Strategy<Value = MetricsReport> {
    let counter =
        (text(), opt_text(), string_map(), any::<u64>()).prop_map(|(name, help, labels, value)| {
            CounterMetric {
                name,
                help,
                labels,
                value,
            }
        });
    let gauge =
        (text(), opt_text(), string_map(), finite_f64()).prop_map(|(name, help, labels, value)| {
            GaugeMetric {
                name,
                help,
                labels,
                value,
            }
        });
    let bucket = (prop_oneof![finite_f64(), Just(f64::INFINITY)], any::<u64>())
        .prop_map(|(le, count)| HistogramBucket { le, count });
    let histogram = (
        text(),
        opt_text(),
        string_map(),
        finite_f64(),
        any::<u64>(),
        prop::collection::vec(bucket, 0..4),
    )
        .prop_map(
            |(name, help, labels, sum, count, buckets)| HistogramMetric {
                name,
                help,
                labels,
                sum,
                count,
                buckets,
            },
        );
    (
        text(),
        any::<u64>(),
        any::<u64>(),
        prop::collection::vec(counter, 0..3),
        prop::collection::vec(gauge, 0..3),
        prop::collection::vec(histogram, 0..3),
    )
        .prop_map(
            |(agent_id, timestamp_ms, interval_ms, counters, gauges, histograms)| MetricsReport {
                agent_id,
                timestamp_ms,
                interval_ms,
                counters,
                gauges,
                histograms,
            },
        )
}

pub fn config_update_request() -> impl Strategy<Value = ConfigUpdateRequest> {
    let rule = (
        text(),
        any::<i32>(),
        json_value(),
        any::<bool>(),
        opt_text(),
        texts(),
    )
        .prop_map(
            |(id, priority, definition, enabled, description, tags)| RuleDefinition {
                id,
                priority,
                definition,
                enabled,
                description,
                tags,
            },
        );
    let update = prop_oneof![
        Just(ConfigUpdateType::RequestReload),
        (text(), prop::collection::vec(rule, 0..3), texts()).prop_map(
            |(rule_set, rules, remove_rules)| ConfigUpdateType::RuleUpdate {
                rule_set,
                rules,
                remove_rules
            }
        ),
        (text(), texts(), texts()).prop_map(|(list_id, add, remove)| {
            ConfigUpdateType::ListUpdate {
                list_id,
                add,
                remove,
            }
        }),
        (text(), any::<u64>()).prop_map(|(reason, grace_period_ms)| {
            ConfigUpdateType::RestartRequired {
                reason,
                grace_period_ms,
            }
        }),
        (text(), opt_text())
            .prop_map(|(error, field)| ConfigUpdateType::ConfigError { error, field }),
    ];
    (update, text(), any::<u64>()).prop_map(|(update_type, request_id, timestamp_ms)| {
        ConfigUpdateRequest {
            update_type,
            request_id,
            timestamp_ms,
        }
    })
}

pub fn capabilities() -> impl Strategy<Value = Capabilities> {
    let features = prop::collection::vec(any::<bool>(), 8..=8);
    (
        (text(), text(), text()),
        prop::collection::vec(0usize..8, 0..8),
        features,
        any::<u32>(),
        (any::<u64>(), any::<u32>(), any::<u64>()),
    )
        .prop_map(
            |((agent_id, name, version), events, f, concurrent, limits)| {
                let mut caps = Capabilities::new(agent_id, name, version);
                caps.supported_events = events.into_iter().map(|i| EventKind::ALL[i]).collect();
                caps.features = Features {
                    streaming_body: f[0],
                    websocket: f[1],
                    guardrails: f[2],
                    config_push: f[3],
                    metrics_export: f[4],
                    concurrent_requests: concurrent,
                    cancellation: f[5],
                    flow_control: f[6],
                    health_reporting: f[7],
                };
                caps.limits = Limits {
                    max_body_size: limits.0,
                    max_concurrency: limits.1,
                    preferred_chunk_size: limits.2,
                };
                caps
            },
        )
}

pub fn handshake_request() -> impl Strategy<Value = HandshakeRequest> {
    (
        prop::collection::vec(any::<u32>(), 0..3),
        text(),
        text(),
        prop::option::of(json_object()),
        texts(),
    )
        .prop_map(
            |(supported_versions, proxy_id, proxy_version, config, supported_encodings)| {
                HandshakeRequest {
                    supported_versions,
                    proxy_id,
                    proxy_version,
                    config,
                    supported_encodings,
                }
            },
        )
}

pub fn handshake_response() -> impl Strategy<Value = HandshakeResponse> {
    (
        any::<u32>(),
        capabilities(),
        any::<bool>(),
        opt_text(),
        text(),
    )
        .prop_map(
            |(protocol_version, capabilities, success, error, encoding)| HandshakeResponse {
                protocol_version,
                capabilities,
                success,
                error,
                encoding,
            },
        )
}

pub fn registration_request() -> impl Strategy<Value = RegistrationRequest> {
    (
        any::<u32>(),
        text(),
        capabilities(),
        opt_text(),
        prop::option::of(json_object()),
    )
        .prop_map(
            |(protocol_version, agent_id, capabilities, auth_token, metadata)| {
                RegistrationRequest {
                    protocol_version,
                    agent_id,
                    capabilities,
                    auth_token,
                    metadata,
                }
            },
        )
}

pub fn registration_response() -> impl Strategy<Value = RegistrationResponse> {
    (any::<bool>(), opt_text(), text(), text(), text()).prop_map(
        |(success, error, proxy_id, proxy_version, connection_id)| RegistrationResponse {
            success,
            error,
            proxy_id,
            proxy_version,
            connection_id,
        },
    )
}
