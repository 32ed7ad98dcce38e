//! Control messages, both directions: cancel, ping and pong; health, flow control, metrics and
//! config updates.

use super::{json_text, ConvertError};
use crate::v2;
use agent_protocol_core::control::{
    CounterMetric, GaugeMetric, HistogramBucket, HistogramMetric, RuleDefinition,
};
use agent_protocol_core::{
    Cancel, CancelReason, ConfigUpdateRequest, ConfigUpdateResponse, ConfigUpdateType, FlowAction,
    FlowControl, HealthState, HealthStatus, MetricsReport, Ping,
};

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
