//! Control frames: Cancel (0x40), Ping/Pong (0x41/0x42), HealthStatus (0x30), MetricsReport
//! (0x31), ConfigUpdateRequest (0x32), FlowControl (0x33), with the reference's field names.
//!
//! We send the integer forms the reference proxy parses. On input we also accept the tagged
//! forms of the reference's own serde types (`{"status":"healthy"}`, `{"type":"pause"}`), which
//! its proxy cannot read.

use std::collections::HashMap;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use crate::HealthState;

/// Why a request was cancelled. UDS carries 0..=5, gRPC 1..=6 (the same reasons, shifted by one).
///
/// ```
/// use agent_protocol_core::CancelReason;
/// assert_eq!(CancelReason::Timeout.uds_code(), 1);
/// assert_eq!(CancelReason::Timeout.grpc_code(), 2);
/// assert_eq!(CancelReason::from_uds_code(4), CancelReason::ProxyShutdown);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum CancelReason {
    /// The client went away.
    ClientDisconnect,
    /// The proxy's deadline passed.
    Timeout,
    /// Another agent blocked the request.
    BlockedByAgent,
    /// The upstream failed.
    UpstreamError,
    /// The proxy is shutting down.
    ProxyShutdown,
    /// Cancelled by the caller.
    #[default]
    Manual,
}

impl CancelReason {
    /// Value on UDS and reverse connections.
    pub fn uds_code(self) -> i32 {
        match self {
            Self::ClientDisconnect => 0,
            Self::Timeout => 1,
            Self::BlockedByAgent => 2,
            Self::UpstreamError => 3,
            Self::ProxyShutdown => 4,
            Self::Manual => 5,
        }
    }

    /// Value in the gRPC `CancelReason` enum.
    pub fn grpc_code(self) -> i32 {
        self.uds_code() + 1
    }

    /// From a UDS value; an unknown value reads as `Manual` (the cancel is still honoured).
    pub fn from_uds_code(code: i64) -> Self {
        match code {
            0 => Self::ClientDisconnect,
            1 => Self::Timeout,
            2 => Self::BlockedByAgent,
            3 => Self::UpstreamError,
            4 => Self::ProxyShutdown,
            _ => Self::Manual,
        }
    }

    /// From a gRPC value; unknown or unspecified reads as `Manual`.
    pub fn from_grpc_code(code: i32) -> Self {
        if code <= 0 {
            Self::Manual
        } else {
            Self::from_uds_code(i64::from(code) - 1)
        }
    }
}

impl Serialize for CancelReason {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_i32(self.uds_code())
    }
}

impl<'de> Deserialize<'de> for CancelReason {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Self::from_uds_code(i64::deserialize(d)?))
    }
}

/// 0x40 Cancel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cancel {
    /// Request to cancel.
    pub correlation_id: String,
    /// Why.
    #[serde(default)]
    pub reason: CancelReason,
    /// When, in Unix milliseconds.
    #[serde(default)]
    pub timestamp_ms: u64,
}

/// 0x41 Ping; the agent answers 0x42 Pong with the same bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ping {
    /// Per-connection counter from 0.
    pub sequence: u64,
    /// Send time, in Unix milliseconds.
    #[serde(default)]
    pub timestamp_ms: u64,
}

/// FlowControl action (1 pause, 2 resume, 3 update capacity).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FlowAction {
    /// Stop sending.
    Pause,
    /// Start sending again.
    Resume,
    /// Grant `buffer_available` bytes of credit.
    UpdateCapacity,
}

impl FlowAction {
    /// Wire value.
    pub fn code(self) -> i32 {
        match self {
            Self::Pause => 1,
            Self::Resume => 2,
            Self::UpdateCapacity => 3,
        }
    }

    /// From a wire value.
    pub fn from_code(code: i64) -> Option<Self> {
        match code {
            1 => Some(Self::Pause),
            2 => Some(Self::Resume),
            3 => Some(Self::UpdateCapacity),
            _ => None,
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        match name {
            "pause" => Some(Self::Pause),
            "resume" => Some(Self::Resume),
            "update_capacity" | "update" => Some(Self::UpdateCapacity),
            _ => None,
        }
    }
}

/// 0x33 FlowControl, agent->proxy.
///
/// ```
/// use agent_protocol_core::{FlowAction, FlowControl};
/// let pause: FlowControl = serde_json::from_str(r#"{"action":1,"timestamp_ms":5}"#).unwrap();
/// assert_eq!(pause.action, FlowAction::Pause);
/// // The reference's own serde type is accepted too.
/// let tagged: FlowControl =
///     serde_json::from_str(r#"{"correlation_id":null,"action":{"type":"resume"},"timestamp_ms":5}"#).unwrap();
/// assert_eq!(tagged.action, FlowAction::Resume);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlowControl {
    /// What to do.
    pub action: FlowAction,
    /// `Some` for one request's body stream, `None` for the whole connection.
    pub correlation_id: Option<String>,
    /// Credit in bytes, for `UpdateCapacity`.
    pub buffer_available: Option<u64>,
    /// When, in Unix milliseconds.
    pub timestamp_ms: u64,
}

impl Serialize for FlowControl {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Wire<'a> {
            action: i32,
            correlation_id: Option<&'a str>,
            buffer_available: Option<u64>,
            timestamp_ms: u64,
        }
        Wire {
            action: self.action.code(),
            correlation_id: self.correlation_id.as_deref(),
            buffer_available: self.buffer_available,
            timestamp_ms: self.timestamp_ms,
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for FlowControl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = Value::deserialize(d)?;
        // Map form, or the reference's positional form [correlation_id, action, timestamp_ms],
        // or the one-element [action] its proxy's parser reads.
        let (cid, action, ts, buffer) = match &v {
            Value::Object(m) => (
                m.get("correlation_id"),
                m.get("action"),
                m.get("timestamp_ms"),
                m.get("buffer_available"),
            ),
            Value::Array(a) if a.len() == 1 => (None, a.first(), None, None),
            Value::Array(a) => (a.first(), a.get(1), a.get(2), a.get(3)),
            _ => return Err(D::Error::custom("flow control must be a map or an array")),
        };
        let mut buffer_available = buffer.and_then(Value::as_u64);
        let action = match action {
            Some(Value::Number(n)) => n.as_i64().and_then(FlowAction::from_code),
            Some(Value::Object(m)) => {
                if buffer_available.is_none() {
                    buffer_available = m.get("buffer_available").and_then(Value::as_u64);
                }
                m.get("type")
                    .and_then(Value::as_str)
                    .and_then(FlowAction::from_name)
            }
            Some(Value::Array(a)) => a
                .first()
                .and_then(Value::as_str)
                .and_then(FlowAction::from_name),
            Some(Value::String(s)) => FlowAction::from_name(s),
            _ => None,
        }
        .ok_or_else(|| D::Error::custom("flow control action missing or unknown"))?;
        Ok(FlowControl {
            action,
            correlation_id: cid.and_then(Value::as_str).map(str::to_owned),
            buffer_available,
            timestamp_ms: ts.and_then(Value::as_u64).unwrap_or(0),
        })
    }
}

/// 0x30 HealthStatus, agent->proxy.
///
/// ```
/// use agent_protocol_core::{HealthState, HealthStatus};
/// let h: HealthStatus = serde_json::from_str(r#"{"state":2}"#).unwrap();
/// assert_eq!(h.state, HealthState::Degraded);
/// let tagged: HealthStatus =
///     serde_json::from_str(r#"{"agent_id":"a","state":{"status":"draining"}}"#).unwrap();
/// assert_eq!(tagged.state, HealthState::Draining);
/// assert_eq!(serde_json::to_value(&tagged).unwrap()["state"], 3);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthStatus {
    /// Reporting agent (informational; the proxy trusts its own view of who is connected).
    pub agent_id: String,
    /// The state.
    pub state: HealthState,
    /// Explanation.
    pub message: Option<String>,
    /// When, in Unix milliseconds.
    pub timestamp_ms: u64,
}

impl Serialize for HealthStatus {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Wire<'a> {
            agent_id: &'a str,
            state: i32,
            message: Option<&'a str>,
            timestamp_ms: u64,
        }
        Wire {
            agent_id: &self.agent_id,
            state: self.state.to_wire(),
            message: self.message.as_deref(),
            timestamp_ms: self.timestamp_ms,
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for HealthStatus {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = Value::deserialize(d)?;
        // Map form; the reference type's positional form
        // [agent_id, state, message, load, resources, valid_until_ms, timestamp_ms]; or [state].
        let (agent, state, message, ts) = match &v {
            Value::Object(m) => (
                m.get("agent_id"),
                m.get("state"),
                m.get("message"),
                m.get("timestamp_ms"),
            ),
            Value::Array(a) if a.len() == 1 => (None, a.first(), None, None),
            Value::Array(a) => (a.first(), a.get(1), a.get(2), a.get(6)),
            _ => return Err(D::Error::custom("health status must be a map or an array")),
        };
        let from_name = |s: &str| match s {
            "healthy" => Some(HealthState::Healthy),
            "degraded" => Some(HealthState::Degraded),
            "draining" => Some(HealthState::Draining),
            "unhealthy" => Some(HealthState::Unhealthy),
            _ => None,
        };
        let state = match state {
            Some(Value::Number(n)) => n.as_i64().and_then(HealthState::from_wire),
            Some(Value::Object(m)) => m.get("status").and_then(Value::as_str).and_then(from_name),
            Some(Value::Array(a)) => a.first().and_then(Value::as_str).and_then(from_name),
            Some(Value::String(s)) => from_name(s),
            _ => None,
        }
        .ok_or_else(|| D::Error::custom("health state missing or unknown"))?;
        Ok(HealthStatus {
            agent_id: agent.and_then(Value::as_str).unwrap_or_default().to_owned(),
            state,
            message: message.and_then(Value::as_str).map(str::to_owned),
            timestamp_ms: ts.and_then(Value::as_u64).unwrap_or(0),
        })
    }
}

/// A counter in a [`MetricsReport`].
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CounterMetric {
    /// Metric name.
    pub name: String,
    /// Help text, omitted when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub help: Option<String>,
    /// Labels.
    pub labels: HashMap<String, String>,
    /// Value.
    pub value: u64,
}

/// A gauge in a [`MetricsReport`].
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GaugeMetric {
    /// Metric name.
    pub name: String,
    /// Help text, omitted when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub help: Option<String>,
    /// Labels.
    pub labels: HashMap<String, String>,
    /// Value.
    pub value: f64,
}

/// Turns the reference's positional metric arrays into maps. It leaves `help` out of the array
/// when it is `None`, so the array's length says which layout it is: `full` names every
/// field in order, and the short form is `full` without `help`.
fn metric_fields<E: serde::de::Error>(value: Value, full: &[&str]) -> Result<Value, E> {
    match value {
        Value::Array(items) => {
            let names: Vec<&str> = if items.len() == full.len() {
                full.to_vec()
            } else if items.len() + 1 == full.len() {
                full.iter().copied().filter(|n| *n != "help").collect()
            } else {
                return Err(E::custom(format_args!(
                    "metric array has {} elements, expected {} or {}",
                    items.len(),
                    full.len() - 1,
                    full.len()
                )));
            };
            Ok(Value::Object(
                names.into_iter().map(str::to_owned).zip(items).collect(),
            ))
        }
        other => Ok(other),
    }
}

macro_rules! metric_deserialize {
    ($ty:ident, $wire:ident { $($field:ident : $fty:ty),* $(,)? }) => {
        #[derive(Deserialize)]
        struct $wire {
            name: String,
            #[serde(default)]
            help: Option<String>,
            #[serde(default)]
            labels: HashMap<String, String>,
            $($field: $fty,)*
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let full = ["name", "help", "labels", $(stringify!($field)),*];
                let v = metric_fields::<D::Error>(Value::deserialize(d)?, &full)?;
                let w: $wire = serde_json::from_value(v).map_err(D::Error::custom)?;
                Ok($ty { name: w.name, help: w.help, labels: w.labels, $($field: w.$field,)* })
            }
        }
    };
}

metric_deserialize!(CounterMetric, CounterWire { value: u64 });
metric_deserialize!(GaugeMetric, GaugeWire { value: f64 });
metric_deserialize!(HistogramMetric, HistogramWire { sum: f64, count: u64, buckets: Vec<HistogramBucket> });

/// One cumulative histogram bucket; `le` is a number or `"+Inf"` on the wire.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HistogramBucket {
    /// Upper bound.
    #[serde(serialize_with = "serialize_le", deserialize_with = "deserialize_le")]
    pub le: f64,
    /// Observations at or below `le`.
    pub count: u64,
}

fn serialize_le<S: Serializer>(le: &f64, s: S) -> Result<S::Ok, S::Error> {
    if le.is_infinite() {
        s.serialize_str("+Inf")
    } else {
        s.serialize_f64(*le)
    }
}

fn deserialize_le<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    match Value::deserialize(d)? {
        Value::Number(n) => n.as_f64().ok_or_else(|| D::Error::custom("bad le")),
        Value::String(s) => match s.as_str() {
            "+Inf" | "Inf" | "inf" | "+inf" => Ok(f64::INFINITY),
            "-Inf" | "-inf" => Ok(f64::NEG_INFINITY),
            // `str::parse` also takes "NaN": refuse it, as JSON has no way to write it back
            // (serde_json writes NaN as null, which is not a valid `le`).
            other => other
                .parse()
                .ok()
                .filter(|le: &f64| !le.is_nan())
                .ok_or_else(|| D::Error::custom(format_args!("bad le {other:?}"))),
        },
        _ => Err(D::Error::custom("le must be a number or \"+Inf\"")),
    }
}

/// A histogram in a [`MetricsReport`].
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HistogramMetric {
    /// Metric name.
    pub name: String,
    /// Help text, omitted when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub help: Option<String>,
    /// Labels.
    pub labels: HashMap<String, String>,
    /// Sum of observations.
    pub sum: f64,
    /// Number of observations.
    pub count: u64,
    /// Buckets.
    pub buckets: Vec<HistogramBucket>,
}

/// 0x31 MetricsReport, agent->proxy.
#[derive(Clone, Debug, PartialEq, Default, Serialize, Deserialize)]
pub struct MetricsReport {
    /// Reporting agent as it claims (the pool labels series with the id it knows instead).
    pub agent_id: String,
    /// When, in Unix milliseconds.
    pub timestamp_ms: u64,
    /// Reporting interval.
    pub interval_ms: u64,
    /// Counters.
    #[serde(default)]
    pub counters: Vec<CounterMetric>,
    /// Gauges.
    #[serde(default)]
    pub gauges: Vec<GaugeMetric>,
    /// Histograms.
    #[serde(default)]
    pub histograms: Vec<HistogramMetric>,
}

/// A rule in a rule update.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RuleDefinition {
    /// Rule id.
    pub id: String,
    /// Priority.
    pub priority: i32,
    /// Rule body.
    pub definition: Value,
    /// Whether enabled.
    pub enabled: bool,
    /// Description.
    pub description: Option<String>,
    /// Tags.
    #[serde(default)]
    pub tags: Vec<String>,
}

/// What an agent asks the proxy to change (internally tagged by `type`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ConfigUpdateType {
    /// Reload configuration.
    RequestReload,
    /// Replace rules.
    RuleUpdate {
        /// Rule set.
        rule_set: String,
        /// Rules to add or replace.
        rules: Vec<RuleDefinition>,
        /// Rule ids to remove.
        remove_rules: Vec<String>,
    },
    /// Change a list.
    ListUpdate {
        /// List.
        list_id: String,
        /// Entries to add.
        add: Vec<String>,
        /// Entries to remove.
        remove: Vec<String>,
    },
    /// The agent needs a restart.
    RestartRequired {
        /// Why.
        reason: String,
        /// Grace period.
        grace_period_ms: u64,
    },
    /// The agent's configuration is wrong.
    ConfigError {
        /// Error.
        error: String,
        /// Field at fault.
        field: Option<String>,
    },
}

/// 0x32 ConfigUpdateRequest, agent->proxy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConfigUpdateRequest {
    /// The update.
    pub update_type: ConfigUpdateType,
    /// Request id.
    pub request_id: String,
    /// When, in Unix milliseconds.
    pub timestamp_ms: u64,
}

/// The proxy's answer to a [`ConfigUpdateRequest`] (gRPC ControlStream only; UDS has no frame
/// for it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigUpdateResponse {
    /// Request id answered.
    pub request_id: String,
    /// Whether it was applied.
    pub accepted: bool,
    /// Why not.
    pub error: Option<String>,
    /// When, in Unix milliseconds.
    pub timestamp_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shortened_metric_arrays_decode() {
        let r: MetricsReport = serde_json::from_str(
            r#"["a",1,10,[["requests_total",{},42],["x","help",{"k":"v"},1]],[["g",{},3.0]],[["h",{},1.5,2,[[0.1,1],["+Inf",2]]]]]"#,
        )
        .unwrap();
        assert_eq!(r.counters[0].value, 42);
        assert_eq!(r.counters[0].help, None);
        assert_eq!(r.counters[1].help.as_deref(), Some("help"));
        assert_eq!(r.counters[1].labels["k"], "v");
        assert_eq!(r.gauges[0].value, 3.0);
        assert_eq!(r.histograms[0].buckets[1].le, f64::INFINITY);
        assert!(serde_json::from_str::<CounterMetric>(r#"["x",1]"#).is_err());
    }

    #[test]
    fn a_nan_bucket_bound_is_refused() {
        // Reproduced with the codec_json fuzz target: "NaN" parsed, and the report re-encoded
        // with `"le":null`, which does not decode.
        for le in [r#""NaN""#, r#""nan""#, r#""-NaN""#] {
            let json = format!(r#"{{"le":{le},"count":1}}"#);
            assert!(
                serde_json::from_str::<HistogramBucket>(&json).is_err(),
                "{le}"
            );
        }
        let b: HistogramBucket = serde_json::from_str(r#"{"le":"0.5","count":1}"#).unwrap();
        assert_eq!(b.le, 0.5);
        let b: HistogramBucket = serde_json::from_str(r#"{"le":"-Inf","count":1}"#).unwrap();
        assert_eq!(b.le, f64::NEG_INFINITY);
    }
}
