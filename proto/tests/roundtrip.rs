//! core -> proto -> bytes -> proto -> core is the identity for every message, and values from a
//! reference peer (which lacks the extension fields) read with their documented defaults.

use std::collections::HashMap;

use agent_protocol_core::control::{
    CounterMetric, GaugeMetric, HistogramBucket, HistogramMetric, RuleDefinition,
};
use agent_protocol_core::frame::FrameType;
use agent_protocol_core::handshake::{HandshakeRequest, HandshakeResponse};
use agent_protocol_core::proxy::{ProxyIncoming as Incoming, ProxyOutgoing as Outgoing};
use agent_protocol_core::*;
use agent_protocol_proto::convert::{
    agent_outgoing_to_proto, event_from_proto, response_from_proto, response_to_proto,
    rfc3339_millis, AgentMessage, ProxyMessage,
};
use agent_protocol_proto::v2;
use bytes::Bytes;
use proptest::collection::{hash_map, vec};
use proptest::option;
use proptest::prelude::*;
use prost::Message;
use serde_json::{json, Value};

/// Encodes and decodes a message, as the wire would.
fn wire<M: Message + Default>(m: M) -> M {
    let bytes = Bytes::from(m.encode_to_vec());
    M::decode(bytes).expect("decodes")
}

// ----- strategies --------------------------------------------------------------------------------

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-zA-Z0-9_-]{0,12}",
        any::<String>().prop_map(|s| s.chars().take(16).collect()),
    ]
}

fn id() -> impl Strategy<Value = String> {
    "[a-z0-9-]{1,16}"
}

fn map() -> impl Strategy<Value = HashMap<String, String>> {
    hash_map(text(), text(), 0..4)
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        text().prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(Value::Array),
            hash_map(text(), inner, 0..4).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn headers() -> impl Strategy<Value = Headers> {
    // Names may repeat and differ only in case; every name has at least one value.
    vec(
        (
            prop_oneof![
                "[a-z-]{1,8}",
                Just("X-Dup".to_string()),
                Just("x-dup".into())
            ],
            text(),
        ),
        0..12,
    )
    .prop_map(|pairs| {
        let mut h = Headers::new();
        for (n, v) in pairs {
            h.append_exact(n, v);
        }
        h
    })
}

fn timestamp() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("0".to_string()),
        Just("007".to_string()),
        (1u64..u64::MAX).prop_map(|n| n.to_string()),
        Just("2026-11-29T10:00:00.250Z".to_string()),
        Just("2026-11-29T10:00:00+01:00".to_string()),
        text(),
    ]
}

fn metadata(cid: String) -> impl Strategy<Value = RequestMetadata> {
    (
        (text(), text(), any::<u16>(), option::of(text()), text()),
        (option::of(text()), option::of(text()), option::of(text())),
        (option::of(text()), timestamp(), option::of(text())),
    )
        .prop_map(
            move |(
                (request_id, client_ip, client_port, server_name, protocol),
                (tls_version, tls_cipher, route_id),
                (upstream_id, timestamp, traceparent),
            )| RequestMetadata {
                correlation_id: cid.clone().into(),
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

fn chunk(cid: String) -> impl Strategy<Value = BodyChunk> {
    (
        vec(any::<u8>(), 0..64),
        any::<bool>(),
        option::of(any::<u64>()),
        any::<u32>(),
        any::<u64>(),
    )
        .prop_map(
            move |(data, is_last, total_size, chunk_index, bytes_transferred)| BodyChunk {
                correlation_id: cid.clone().into(),
                data: Bytes::from(data),
                is_last,
                total_size,
                chunk_index,
                bytes_transferred,
            },
        )
}

fn opcode() -> impl Strategy<Value = WebSocketOpcode> {
    prop_oneof![
        Just(WebSocketOpcode::Continuation),
        Just(WebSocketOpcode::Text),
        Just(WebSocketOpcode::Binary),
        Just(WebSocketOpcode::Close),
        Just(WebSocketOpcode::Ping),
        Just(WebSocketOpcode::Pong),
    ]
}

fn event() -> impl Strategy<Value = Event> {
    id().prop_flat_map(|cid| {
        let c = cid.clone();
        prop_oneof![
            (metadata(cid.clone()), text(), text(), headers()).prop_map(
                move |(metadata, method, uri, headers)| {
                    Event::RequestHeaders(RequestHeadersEvent {
                        correlation_id: c.clone().into(),
                        metadata,
                        method: method.into(),
                        uri: uri.into(),
                        headers,
                    })
                }
            ),
            chunk(cid.clone()).prop_map(|c| Event::RequestBodyChunk(RequestBodyChunkEvent(c))),
            chunk(cid.clone()).prop_map(|c| Event::ResponseBodyChunk(ResponseBodyChunkEvent(c))),
            {
                let c = cid.clone();
                (any::<u16>(), headers()).prop_map(move |(status, headers)| {
                    Event::ResponseHeaders(ResponseHeadersEvent {
                        correlation_id: c.clone().into(),
                        status,
                        headers,
                    })
                })
            },
            {
                let c = cid.clone();
                (
                    any::<u16>(),
                    any::<u64>(),
                    any::<u64>(),
                    any::<u64>(),
                    any::<u32>(),
                    option::of(text()),
                )
                    .prop_map(move |(status, d, rq, rs, attempts, error)| {
                        Event::RequestComplete(RequestCompleteEvent {
                            correlation_id: c.clone().into(),
                            status,
                            duration_ms: d,
                            request_body_size: rq,
                            response_body_size: rs,
                            upstream_attempts: attempts,
                            error: error.map(Into::into),
                        })
                    })
            },
            {
                let c = cid.clone();
                (
                    opcode(),
                    vec(any::<u8>(), 0..32),
                    any::<bool>(),
                    any::<u64>(),
                    any::<bool>(),
                    option::of(text()),
                    text(),
                )
                    .prop_map(
                        move |(opcode, data, c2s, index, fin, route_id, ip)| {
                            Event::WebSocketFrame(WebSocketFrameEvent {
                                correlation_id: c.clone().into(),
                                opcode,
                                data: Bytes::from(data),
                                client_to_server: c2s,
                                frame_index: index,
                                fin,
                                route_id: route_id.map(Into::into),
                                client_ip: ip.into(),
                            })
                        },
                    )
            },
            {
                let c = cid.clone();
                (
                    prop_oneof![
                        Just(GuardrailInspectionType::PromptInjection),
                        Just(GuardrailInspectionType::PiiDetection)
                    ],
                    text(),
                    option::of(text()),
                    vec(text(), 0..3),
                    option::of(text()),
                    map(),
                )
                    .prop_map(
                        move |(inspection_type, content, model, categories, route_id, metadata)| {
                            Event::GuardrailInspect(GuardrailInspectEvent {
                                correlation_id: c.clone().into(),
                                inspection_type,
                                content: content.into(),
                                model: model.map(Into::into),
                                categories,
                                route_id: route_id.map(Into::into),
                                metadata,
                            })
                        },
                    )
            },
            (json_value(), option::of(text())).prop_map(move |(config, config_version)| {
                Event::Configure(ConfigureEvent {
                    correlation_id: cid.clone().into(),
                    config,
                    config_version: config_version.map(Into::into),
                })
            }),
        ]
    })
}

fn header_op() -> impl Strategy<Value = HeaderOp> {
    prop_oneof![
        (text(), text()).prop_map(|(name, value)| HeaderOp::Set { name, value }),
        (text(), text()).prop_map(|(name, value)| HeaderOp::Add { name, value }),
        text().prop_map(|name| HeaderOp::Remove { name }),
    ]
}

fn decision() -> impl Strategy<Value = Decision> {
    prop_oneof![
        Just(Decision::Allow),
        (any::<u16>(), option::of(text()), option::of(map())).prop_map(
            |(status, body, headers)| Decision::Block {
                status,
                body,
                headers
            }
        ),
        (text(), any::<u16>()).prop_map(|(url, status)| Decision::Redirect { url, status }),
        (text(), map()).prop_map(|(challenge_type, params)| Decision::Challenge {
            challenge_type,
            params
        }),
    ]
}

fn mutation() -> impl Strategy<Value = BodyMutation> {
    (option::of(vec(any::<u8>(), 0..16)), any::<u32>()).prop_map(|(data, chunk_index)| {
        BodyMutation {
            data: data.map(Bytes::from),
            chunk_index,
        }
    })
}

fn audit() -> impl Strategy<Value = AuditMetadata> {
    (
        vec(text(), 0..3),
        vec(text(), 0..3),
        option::of(any::<f32>().prop_filter("not NaN", |f| !f.is_nan())),
        vec(text(), 0..3),
        hash_map(text(), json_value(), 0..4),
    )
        .prop_map(
            |(tags, rule_ids, confidence, reason_codes, custom)| AuditMetadata {
                tags,
                rule_ids,
                confidence,
                reason_codes,
                custom: custom.into_iter().collect(),
            },
        )
}

fn response() -> impl Strategy<Value = AgentResponse> {
    (
        (prop_oneof![Just(2u32), any::<u32>()], decision()),
        (vec(header_op(), 0..4), vec(header_op(), 0..4), map()),
        (audit(), any::<bool>()),
        (option::of(mutation()), option::of(mutation())),
        option::of(prop_oneof![
            Just(WebSocketDecision::Allow),
            Just(WebSocketDecision::Drop),
            (any::<u16>(), text())
                .prop_map(|(code, reason)| WebSocketDecision::Close { code, reason }),
        ]),
    )
        .prop_map(
            |(
                (version, decision),
                (request_headers, response_headers, routing_metadata),
                (audit, needs_more),
                (request_body_mutation, response_body_mutation),
                websocket_decision,
            )| AgentResponse {
                version,
                decision,
                request_headers,
                response_headers,
                routing_metadata,
                audit,
                needs_more,
                request_body_mutation,
                response_body_mutation,
                websocket_decision,
                // gRPC carries the id beside the answer (see every_response_round_trips).
                correlation_id: None,
            },
        )
}

fn capabilities() -> impl Strategy<Value = Capabilities> {
    (
        (text(), text(), text(), any::<u8>()),
        (any::<[bool; 8]>(), any::<u32>()),
        (any::<u64>(), any::<u32>(), any::<u64>()),
    )
        .prop_map(
            |((agent_id, name, version, events), (f, conc), (mbs, mc, pcs))| Capabilities {
                agent_id,
                name,
                version,
                supported_events: EventKind::ALL
                    .into_iter()
                    .enumerate()
                    .filter(|(i, _)| events & (1 << i) != 0)
                    .map(|(_, k)| k)
                    .collect(),
                features: Features {
                    streaming_body: f[0],
                    websocket: f[1],
                    guardrails: f[2],
                    config_push: f[3],
                    metrics_export: f[4],
                    concurrent_requests: conc,
                    cancellation: f[5],
                    flow_control: f[6],
                    health_reporting: f[7],
                },
                limits: Limits {
                    max_body_size: mbs,
                    max_concurrency: mc,
                    preferred_chunk_size: pcs,
                },
            },
        )
}

fn health_state() -> impl Strategy<Value = HealthState> {
    prop_oneof![
        Just(HealthState::Healthy),
        Just(HealthState::Degraded),
        Just(HealthState::Draining),
        Just(HealthState::Unhealthy),
    ]
}

fn finite() -> impl Strategy<Value = f64> {
    any::<f64>().prop_filter("not NaN", |f| !f.is_nan())
}

fn metrics() -> impl Strategy<Value = MetricsReport> {
    (
        (text(), any::<u64>(), any::<u64>()),
        vec(
            (text(), option::of(text()), map(), any::<u64>()).prop_map(
                |(name, help, labels, value)| CounterMetric {
                    name,
                    help,
                    labels,
                    value,
                },
            ),
            0..3,
        ),
        vec(
            (text(), option::of(text()), map(), finite()).prop_map(
                |(name, help, labels, value)| GaugeMetric {
                    name,
                    help,
                    labels,
                    value,
                },
            ),
            0..3,
        ),
        vec(
            (
                text(),
                option::of(text()),
                map(),
                finite(),
                any::<u64>(),
                vec((finite(), any::<u64>()), 0..4),
            )
                .prop_map(|(name, help, labels, sum, count, buckets)| {
                    HistogramMetric {
                        name,
                        help,
                        labels,
                        sum,
                        count,
                        buckets: buckets
                            .into_iter()
                            .map(|(le, count)| HistogramBucket { le, count })
                            .collect(),
                    }
                }),
            0..3,
        ),
    )
        .prop_map(
            |((agent_id, timestamp_ms, interval_ms), counters, gauges, histograms)| MetricsReport {
                agent_id,
                timestamp_ms,
                interval_ms,
                counters,
                gauges,
                histograms,
            },
        )
}

fn config_update() -> impl Strategy<Value = ConfigUpdateRequest> {
    let rule = (
        text(),
        any::<i32>(),
        json_value(),
        any::<bool>(),
        option::of(text()),
        vec(text(), 0..3),
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
        (text(), vec(rule, 0..3), vec(text(), 0..3)).prop_map(|(rule_set, rules, remove_rules)| {
            ConfigUpdateType::RuleUpdate {
                rule_set,
                rules,
                remove_rules,
            }
        }),
        (text(), vec(text(), 0..3), vec(text(), 0..3)).prop_map(|(list_id, add, remove)| {
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
        (text(), option::of(text()))
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

fn cancel_reason() -> impl Strategy<Value = CancelReason> {
    (0i64..6).prop_map(CancelReason::from_uds_code)
}

// ----- properties --------------------------------------------------------------------------------

fn agent_side(message: Outgoing) -> AgentIncoming {
    match ProxyMessage::from(wire(v2::ProxyToAgent::from(message))) {
        ProxyMessage::Protocol(m) => m,
        ProxyMessage::Unknown => panic!("unknown message"),
    }
}

fn proxy_side(message: AgentOutgoing) -> Incoming {
    match AgentMessage::from(wire(agent_outgoing_to_proto(message, 0).unwrap())) {
        AgentMessage::Protocol(m) => m,
        other => panic!("{other:?}"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn every_event_round_trips(event in event()) {
        prop_assert_eq!(agent_side(Outgoing::Event(event.clone())), AgentIncoming::from(event));
    }

    #[test]
    fn every_response_round_trips(cid in id(), response in response()) {
        let back = proxy_side(AgentOutgoing::Response {
            correlation_id: cid.clone().into(),
            response: response.clone(),
        });
        let mut response = response;
        response.correlation_id = Some(cid.into());
        prop_assert_eq!(back, Incoming::Response { response });
    }

    #[test]
    fn handshakes_round_trip(
        versions in vec(any::<u32>(), 0..3),
        proxy_id in text(),
        config in option::of(json_value()),
        encodings in vec(text(), 0..3),
        caps in capabilities(),
        success in any::<bool>(),
        error in option::of(text()),
        encoding in "[a-z]{1,8}",
    ) {
        let request = HandshakeRequest {
            supported_versions: versions,
            proxy_id,
            proxy_version: "1.0".into(),
            config,
            supported_encodings: encodings,
        };
        prop_assert_eq!(
            agent_side(Outgoing::Handshake(request.clone())),
            AgentIncoming::Handshake(request)
        );
        let response = HandshakeResponse {
            protocol_version: 2,
            capabilities: caps,
            success,
            error,
            encoding,
        };
        // gRPC carries no payload encoding: the proxy sees the nominal JSON whatever is named.
        let seen = HandshakeResponse { encoding: "json".into(), ..response.clone() };
        prop_assert_eq!(
            proxy_side(AgentOutgoing::Handshake(response)),
            Incoming::Handshake(seen)
        );
    }

    #[test]
    fn cancel_and_ping_round_trip(cid in id(), reason in cancel_reason(), ts in any::<u64>(), seq in any::<u64>()) {
        let cancel = Cancel { correlation_id: cid, reason, timestamp_ms: ts };
        prop_assert_eq!(agent_side(Outgoing::Cancel(cancel.clone())), AgentIncoming::Cancel(cancel));
        let ping = Ping { sequence: seq, timestamp_ms: ts };
        prop_assert_eq!(agent_side(Outgoing::Ping(ping)), AgentIncoming::Ping(ping));
        prop_assert_eq!(proxy_side(AgentOutgoing::Pong(ping)), Incoming::Pong(ping));
    }

    #[test]
    fn control_messages_round_trip(
        agent_id in text(),
        state in health_state(),
        message in option::of(text()),
        ts in any::<u64>(),
        action in (1i64..=3),
        flow_cid in option::of(id()),
        buffer in option::of(any::<u64>()),
        report in metrics(),
        update in config_update(),
    ) {
        let health = HealthStatus { agent_id, state, message, timestamp_ms: ts };
        prop_assert_eq!(proxy_side(AgentOutgoing::Health(health.clone())), Incoming::Health(health));
        let flow = FlowControl {
            action: FlowAction::from_code(action).unwrap(),
            correlation_id: flow_cid,
            buffer_available: buffer,
            timestamp_ms: ts,
        };
        prop_assert_eq!(proxy_side(AgentOutgoing::FlowControl(flow.clone())), Incoming::FlowControl(flow));
        prop_assert_eq!(proxy_side(AgentOutgoing::Metrics(report.clone())), Incoming::Metrics(report));
        prop_assert_eq!(
            proxy_side(AgentOutgoing::ConfigUpdate(update.clone())),
            Incoming::ConfigUpdate(update)
        );
    }

    #[test]
    fn config_update_responses_round_trip(
        request_id in text(), accepted in any::<bool>(), error in option::of(text()), ts in any::<u64>()
    ) {
        let r = ConfigUpdateResponse { request_id, accepted, error, timestamp_ms: ts };
        let back = ConfigUpdateResponse::from(wire(v2::ConfigUpdateResponse::from(r.clone())));
        prop_assert_eq!(back, r);
    }

    #[test]
    fn rfc3339_never_panics(text in "[0-9T:.+Zz-]{0,40}", other in any::<String>()) {
        let _ = rfc3339_millis(&text);
        let _ = rfc3339_millis(&other);
        let mut near = "2026-11-29T10:00:00".to_string();
        near.push_str(&other);
        let _ = rfc3339_millis(&near);
    }

    #[test]
    fn rfc3339_agrees_with_a_day_count(days in 0i64..200_000, secs in 0i64..86_400, ms in 0i64..1000) {
        // Build the civil date from the day count, format it, and parse it back.
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let d = doy - (153 * mp + 2) / 5 + 1;
        let m = if mp < 10 { mp + 3 } else { mp - 9 };
        let y = yoe + era * 400 + i64::from(m <= 2);
        let text = format!(
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{ms:03}Z",
            secs / 3600,
            secs / 60 % 60,
            secs % 60
        );
        prop_assume!(y <= 9999);
        let expected = (days * 86_400 + secs) * 1000 + ms;
        prop_assert_eq!(rfc3339_millis(&text), Some(expected as u64));
    }
}

// ----- examples ----------------------------------------------------------------------------------

#[test]
fn audit_values_keep_their_type_and_the_reference_format_reads_back() {
    let mut r = AgentResponse::allow();
    r.audit.custom.insert("s".into(), json!("x"));
    r.audit.custom.insert("n".into(), json!(1.5));
    r.audit.custom.insert("o".into(), json!({"a": [1, null]}));
    let p = response_to_proto("c".into(), r.clone());
    let custom = &p.audit.as_ref().unwrap().custom;
    // The JSON text of each value, as the reference agent writes it (`Value::to_string`).
    assert_eq!(custom["s"], "\"x\"");
    assert_eq!(custom["n"], "1.5");
    let (_, back) = response_from_proto(p).unwrap();
    assert_eq!(back, r);
    // A third-party agent's plain text is read as a string.
    let mut p = response_to_proto("c".into(), AgentResponse::allow());
    p.audit = Some(v2::AuditMetadata {
        custom: [("plain".to_string(), "not json".to_string())].into(),
        ..Default::default()
    });
    let (_, back) = response_from_proto(p).unwrap();
    assert_eq!(back.audit.custom["plain"], "not json");
}

#[test]
fn a_reference_style_event_reads_with_defaults() {
    // What the reference proxy sends: no extension fields.
    let m = v2::ProxyToAgent {
        message: Some(v2::proxy_to_agent::Message::WebsocketFrame(
            v2::WebSocketFrameEvent {
                correlation_id: "ws".into(),
                client_to_server: true,
                frame_type: v2::web_socket_frame_event::FrameType::Binary as i32,
                payload: Bytes::from_static(b"\x01"),
                ..Default::default()
            },
        )),
    };
    let Event::WebSocketFrame(e) = event_from_proto(m.message.unwrap()).unwrap() else {
        panic!()
    };
    assert_eq!(e.opcode, WebSocketOpcode::Binary);
    assert!(e.fin, "absent FIN means a whole frame");

    let headers = v2::RequestHeadersEvent {
        metadata: Some(v2::RequestMetadata {
            correlation_id: "h".into(),
            client_port: 443,
            timestamp_ms: 1_700_000_000_000,
            ..Default::default()
        }),
        method: "GET".into(),
        uri: "/".into(),
        http_version: "HTTP/1.1".into(),
        headers: vec![
            v2::RawHeader {
                name: "a".into(),
                value: "1".into(),
            },
            v2::RawHeader {
                name: "b".into(),
                value: "2".into(),
            },
            v2::RawHeader {
                name: "a".into(),
                value: "3".into(),
            },
        ],
    };
    let e = RequestHeadersEvent::try_from(headers).unwrap();
    assert_eq!(e.correlation_id, "h");
    assert_eq!(e.metadata.timestamp, "1700000000000");
    assert_eq!(e.metadata.protocol, "HTTP/1.1", "taken from http_version");
    // Regrouped by name, value order kept (as the reference agent does).
    let flat: Vec<_> = e.headers.iter_flat().collect();
    assert_eq!(flat, [("a", "1"), ("a", "3"), ("b", "2")]);
}

/// Event header lists are generated as `RawHeader` (bytes) while the schema says `Header`
/// (strings): the two must be the same bytes on the wire, both ways.
#[test]
fn raw_headers_are_header_strings_on_the_wire() {
    let header = v2::Header {
        name: "x-name".into(),
        value: "välue".into(),
    };
    let raw = v2::RawHeader {
        name: "x-name".into(),
        value: bytes::Bytes::from("välue"),
    };
    assert_eq!(header.encode_to_vec(), raw.encode_to_vec());
    let back = v2::RawHeader::decode(header.encode_to_vec().as_slice()).unwrap();
    assert_eq!(back, raw);
    let back = v2::Header::decode(raw.encode_to_vec().as_slice()).unwrap();
    assert_eq!(back, header);
}

/// A header name or value that is not UTF-8 (which prost would refuse in a `string`) makes the
/// event malformed, with its correlation id kept for the fail-closed answer; the stream goes on.
#[test]
fn non_utf8_header_text_is_a_malformed_event_that_keeps_its_id() {
    for (name, value) in [(&b"x-ok"[..], &b"\xff\xfe"[..]), (&b"\xc3"[..], &b"ok"[..])] {
        let headers = vec![v2::RawHeader {
            name: bytes::Bytes::copy_from_slice(name),
            value: bytes::Bytes::copy_from_slice(value),
        }];
        let request = v2::proxy_to_agent::Message::RequestHeaders(v2::RequestHeadersEvent {
            metadata: Some(v2::RequestMetadata {
                correlation_id: "bad-utf8".into(),
                ..Default::default()
            }),
            method: "GET".into(),
            uri: "/".into(),
            headers: headers.clone(),
            ..Default::default()
        });
        let response = v2::proxy_to_agent::Message::ResponseHeaders(v2::ResponseHeadersEvent {
            correlation_id: "bad-utf8".into(),
            status_code: 200,
            headers,
        });
        for m in [request, response] {
            match ProxyMessage::from(v2::ProxyToAgent { message: Some(m) }) {
                ProxyMessage::Protocol(AgentIncoming::MalformedEvent {
                    correlation_id,
                    error,
                }) => {
                    assert_eq!(correlation_id.as_deref(), Some("bad-utf8"));
                    assert!(error.message.contains("not UTF-8"), "{error}");
                }
                other => panic!("{other:?}"),
            }
        }
    }
}

#[test]
fn out_of_range_values_are_errors_that_keep_the_correlation_id() {
    let m = v2::proxy_to_agent::Message::ResponseHeaders(v2::ResponseHeadersEvent {
        correlation_id: "big".into(),
        status_code: 70_000,
        headers: vec![],
    });
    match ProxyMessage::from(v2::ProxyToAgent { message: Some(m) }) {
        ProxyMessage::Protocol(AgentIncoming::MalformedEvent {
            correlation_id,
            error,
        }) => {
            assert_eq!(correlation_id.as_deref(), Some("big"));
            assert_eq!(error.frame_type, FrameType::ResponseHeaders);
            assert!(error.message.contains("70000"), "{error}");
        }
        other => panic!("{other:?}"),
    }
    // An answer without a decision fails just its request.
    let r = v2::AgentToProxy {
        message: Some(v2::agent_to_proxy::Message::Response(v2::AgentResponse {
            correlation_id: "nodecision".into(),
            ..Default::default()
        })),
    };
    assert!(matches!(
        AgentMessage::from(r),
        AgentMessage::Protocol(Incoming::MalformedResponse { correlation_id, .. }) if correlation_id == "nodecision"
    ));
    // Unknown health states and flow actions are ignored, not guessed (the reference reads an
    // unknown flow action as resume).
    let h = v2::AgentToProxy {
        message: Some(v2::agent_to_proxy::Message::FlowControl(
            v2::FlowControlSignal {
                action: 9,
                ..Default::default()
            },
        )),
    };
    assert!(matches!(AgentMessage::from(h), AgentMessage::Invalid(_)));
    assert_eq!(
        ProxyMessage::from(v2::ProxyToAgent { message: None }),
        ProxyMessage::Unknown
    );
}

#[test]
fn block_headers_none_and_empty_stay_apart() {
    for headers in [None, Some(HashMap::new())] {
        let r = AgentResponse::new(Decision::Block {
            status: 403,
            body: None,
            headers: headers.clone(),
        });
        let (_, back) = response_from_proto(wire(response_to_proto("c".into(), r))).unwrap();
        assert_eq!(
            back.decision,
            Decision::Block {
                status: 403,
                body: None,
                headers
            }
        );
    }
}

#[test]
fn body_bytes_are_not_copied_on_the_way_in_or_out() {
    let data = Bytes::from(vec![7u8; 4096]);
    let event = Event::RequestBodyChunk(RequestBodyChunkEvent(BodyChunk {
        correlation_id: "b".into(),
        data: data.clone(),
        is_last: true,
        total_size: None,
        chunk_index: 0,
        bytes_transferred: 4096,
    }));
    // core -> proto moves the Bytes handle.
    let p = v2::ProxyToAgent::from(event);
    let Some(v2::proxy_to_agent::Message::RequestBodyChunk(c)) = &p.message else {
        panic!()
    };
    assert_eq!(c.data.as_ptr(), data.as_ptr());
    // Decoding from a Bytes buffer slices it.
    let encoded = Bytes::from(p.encode_to_vec());
    let decoded = v2::ProxyToAgent::decode(encoded.clone()).unwrap();
    let Some(v2::proxy_to_agent::Message::RequestBodyChunk(c)) = decoded.message else {
        panic!()
    };
    let range = encoded.as_ptr() as usize..encoded.as_ptr() as usize + encoded.len();
    assert!(range.contains(&(c.data.as_ptr() as usize)));
}
