//! What an agent can do, as announced in the handshake and in reverse registration
//! (`UdsCapabilities` on the wire), and the numeric event codes of `supported_events`.
//!
//! Every key is always sent (the reference's decoder requires every key), and on input every
//! key is optional and takes its default, so a peer that omits one still connects.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Event kinds and their numeric codes in `supported_events` (1..=8, as in the gRPC schema).
///
/// ```
/// use agent_protocol_core::EventKind;
/// assert_eq!(EventKind::Configure.code(), 8);
/// assert_eq!(EventKind::from_code(0), Some(EventKind::Configure)); // the reference's other code
/// assert_eq!(EventKind::from_code(0x10), None);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventKind {
    /// 1
    RequestHeaders,
    /// 2
    RequestBodyChunk,
    /// 3
    ResponseHeaders,
    /// 4
    ResponseBodyChunk,
    /// 5
    RequestComplete,
    /// 6
    WebSocketFrame,
    /// 7
    GuardrailInspect,
    /// 8 (the reference proxy's UDS decoder uses 0 instead; both are read as Configure)
    Configure,
}

impl EventKind {
    /// Every kind in code order.
    pub const ALL: [EventKind; 8] = [
        Self::RequestHeaders,
        Self::RequestBodyChunk,
        Self::ResponseHeaders,
        Self::ResponseBodyChunk,
        Self::RequestComplete,
        Self::WebSocketFrame,
        Self::GuardrailInspect,
        Self::Configure,
    ];

    /// The code we send (1..=8).
    pub fn code(self) -> i32 {
        match self {
            Self::RequestHeaders => 1,
            Self::RequestBodyChunk => 2,
            Self::ResponseHeaders => 3,
            Self::ResponseBodyChunk => 4,
            Self::RequestComplete => 5,
            Self::WebSocketFrame => 6,
            Self::GuardrailInspect => 7,
            Self::Configure => 8,
        }
    }

    /// Parses a code; both 0 and 8 mean Configure; unknown codes give `None`.
    pub fn from_code(code: i64) -> Option<Self> {
        Some(match code {
            1 => Self::RequestHeaders,
            2 => Self::RequestBodyChunk,
            3 => Self::ResponseHeaders,
            4 => Self::ResponseBodyChunk,
            5 => Self::RequestComplete,
            6 => Self::WebSocketFrame,
            7 => Self::GuardrailInspect,
            0 | 8 => Self::Configure,
            _ => return None,
        })
    }

    /// A short `snake_case` name, for logs and labels.
    ///
    /// ```
    /// use agent_protocol_core::EventKind;
    /// assert_eq!(EventKind::RequestBodyChunk.as_str(), "request_body_chunk");
    /// ```
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::RequestHeaders => "request_headers",
            Self::RequestBodyChunk => "request_body_chunk",
            Self::ResponseHeaders => "response_headers",
            Self::ResponseBodyChunk => "response_body_chunk",
            Self::RequestComplete => "request_complete",
            Self::WebSocketFrame => "websocket_frame",
            Self::GuardrailInspect => "guardrail_inspect",
            Self::Configure => "configure",
        }
    }

    fn bit(self) -> u8 {
        1 << (self.code() - 1)
    }
}

/// A set of [`EventKind`]s, serialized as an array of codes. Unknown codes are dropped.
///
/// ```
/// use agent_protocol_core::{EventKind, EventSet};
/// let set: EventSet = serde_json::from_str("[1, 0, 99]").unwrap();
/// assert!(set.contains(EventKind::Configure));
/// assert_eq!(serde_json::to_string(&set).unwrap(), "[1,8]");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Hash)]
pub struct EventSet(u8);

impl EventSet {
    /// No events.
    pub const EMPTY: EventSet = EventSet(0);
    /// All eight events.
    pub const ALL: EventSet = EventSet(0xff);

    /// Adds a kind.
    pub fn insert(&mut self, kind: EventKind) {
        self.0 |= kind.bit();
    }

    /// With a kind added.
    pub fn with(mut self, kind: EventKind) -> Self {
        self.insert(kind);
        self
    }

    /// Whether `kind` is in the set.
    pub fn contains(self, kind: EventKind) -> bool {
        self.0 & kind.bit() != 0
    }

    /// Kinds in code order.
    pub fn iter(self) -> impl Iterator<Item = EventKind> {
        EventKind::ALL
            .into_iter()
            .filter(move |k| self.contains(*k))
    }
}

impl FromIterator<EventKind> for EventSet {
    fn from_iter<I: IntoIterator<Item = EventKind>>(iter: I) -> Self {
        let mut s = EventSet::EMPTY;
        for k in iter {
            s.insert(k);
        }
        s
    }
}

impl Serialize for EventSet {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.iter().map(EventKind::code))
    }
}

impl<'de> Deserialize<'de> for EventSet {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let codes: Vec<i64> = Vec::deserialize(deserializer)?;
        Ok(codes.into_iter().filter_map(EventKind::from_code).collect())
    }
}

/// Feature flags (`UdsFeatures`).
#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Features {
    /// Accepts body chunk events.
    pub streaming_body: bool,
    /// Accepts WebSocket frames.
    pub websocket: bool,
    /// Answers guardrail inspections.
    pub guardrails: bool,
    /// Accepts Configure.
    pub config_push: bool,
    /// Sends MetricsReport.
    pub metrics_export: bool,
    /// How many requests it processes at once (informational).
    pub concurrent_requests: u32,
    /// Honours Cancel.
    pub cancellation: bool,
    /// Sends FlowControl.
    pub flow_control: bool,
    /// Sends HealthStatus.
    pub health_reporting: bool,
}

/// Limits the proxy must respect (`UdsLimits`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Limits {
    /// Largest body the agent accepts, in bytes (default 10 MiB).
    pub max_body_size: u64,
    /// Most requests in flight on one connection (default 100).
    pub max_concurrency: u32,
    /// Preferred body chunk size (default 64 KiB).
    pub preferred_chunk_size: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_size: 10 * 1024 * 1024,
            max_concurrency: 100,
            preferred_chunk_size: 64 * 1024,
        }
    }
}

/// The agent's capabilities (`UdsCapabilities`).
///
/// ```
/// use agent_protocol_core::{Capabilities, EventKind};
/// let caps = Capabilities::new("waf-1", "WAF", "1.0.0")
///     .with_event(EventKind::RequestBodyChunk)
///     .with_max_concurrency(256);
/// let json = serde_json::to_value(&caps).unwrap();
/// assert_eq!(json["supported_events"], serde_json::json!([1, 2]));
/// assert_eq!(json["limits"]["max_concurrency"], 256);
/// // A peer that leaves keys out still parses (the reference would refuse it).
/// let lenient: Capabilities = serde_json::from_str(r#"{"agent_id":"x"}"#).unwrap();
/// assert_eq!(lenient.limits.max_concurrency, 100);
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Capabilities {
    /// Agent identifier.
    pub agent_id: String,
    /// Human-readable name.
    pub name: String,
    /// Agent version.
    pub version: String,
    /// Events the agent handles.
    pub supported_events: EventSet,
    /// Feature flags.
    pub features: Features,
    /// Limits.
    pub limits: Limits,
}

impl Default for Capabilities {
    fn default() -> Self {
        Self {
            agent_id: String::new(),
            name: String::new(),
            version: String::new(),
            supported_events: EventSet::EMPTY.with(EventKind::RequestHeaders),
            features: Features::default(),
            limits: Limits::default(),
        }
    }
}

impl Capabilities {
    /// Capabilities handling request headers only, with default limits.
    pub fn new(
        agent_id: impl Into<String>,
        name: impl Into<String>,
        version: impl Into<String>,
    ) -> Self {
        Self {
            agent_id: agent_id.into(),
            name: name.into(),
            version: version.into(),
            ..Self::default()
        }
    }

    /// Adds an event kind, turning on the feature flag it implies.
    pub fn with_event(mut self, kind: EventKind) -> Self {
        self.supported_events.insert(kind);
        match kind {
            EventKind::RequestBodyChunk | EventKind::ResponseBodyChunk => {
                self.features.streaming_body = true
            }
            EventKind::WebSocketFrame => self.features.websocket = true,
            EventKind::GuardrailInspect => self.features.guardrails = true,
            EventKind::Configure => self.features.config_push = true,
            _ => {}
        }
        self
    }

    /// Adds every event kind.
    pub fn with_all_events(mut self) -> Self {
        for k in EventKind::ALL {
            self = self.with_event(k);
        }
        self
    }

    /// Sets `limits.max_concurrency` and `features.concurrent_requests`.
    pub fn with_max_concurrency(mut self, n: u32) -> Self {
        self.limits.max_concurrency = n;
        self.features.concurrent_requests = n;
        self
    }

    /// Sets `limits.max_body_size`.
    pub fn with_max_body_size(mut self, bytes: u64) -> Self {
        self.limits.max_body_size = bytes;
        self
    }

    /// Declares cancellation, flow-control and health reporting support.
    pub fn with_control_features(mut self) -> Self {
        self.features.cancellation = true;
        self.features.flow_control = true;
        self.features.health_reporting = true;
        self
    }
}

/// [`Capabilities`] as a configuration file spells them, for a settings field marked
/// `#[serde(with = "agent_protocol_core::capabilities::strict")]`.
///
/// The keys are the wire's, each optional as on the wire, but an unknown key (in `features` and
/// `limits` too) or an event code that names no [`EventKind`] is an error. The wire is lenient so
/// that a peer of another version still connects; a configuration file is read by the very
/// version whose settings it holds, where an unknown key can only be a mistake that would
/// otherwise go unnoticed. Serializing writes the wire form.
///
/// ```
/// use agent_protocol_core::{Capabilities, EventKind};
///
/// #[derive(Debug, serde::Deserialize)]
/// struct Section {
///     #[serde(with = "agent_protocol_core::capabilities::strict")]
///     capabilities: Capabilities,
/// }
///
/// let ok: Section =
///     serde_json::from_str(r#"{"capabilities": {"agent_id": "waf", "supported_events": [1, 2]}}"#)
///         .unwrap();
/// assert!(ok.capabilities.supported_events.contains(EventKind::RequestBodyChunk));
/// assert_eq!(ok.capabilities.limits, Capabilities::default().limits);
///
/// let typo = serde_json::from_str::<Section>(r#"{"capabilities": {"limits": {"max_concurency": 8}}}"#);
/// assert!(typo.unwrap_err().to_string().contains("unknown field `max_concurency`"));
/// let unknown_event = serde_json::from_str::<Section>(r#"{"capabilities": {"supported_events": [9]}}"#);
/// assert!(unknown_event.is_err());
/// ```
pub mod strict {
    use serde::de::{Error, Unexpected};
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::{Capabilities, EventKind, EventSet, Features, Limits};

    // Remote definitions name every field of the real types and build them without `..`, so a
    // field added to one of them fails to compile here instead of being refused in files.
    #[derive(Deserialize)]
    #[serde(
        remote = "Capabilities",
        default = "Capabilities::default",
        deny_unknown_fields
    )]
    struct CapabilitiesDef {
        agent_id: String,
        name: String,
        version: String,
        #[serde(deserialize_with = "known_events")]
        supported_events: EventSet,
        #[serde(with = "FeaturesDef")]
        features: Features,
        #[serde(with = "LimitsDef")]
        limits: Limits,
    }

    #[derive(Deserialize)]
    #[serde(
        remote = "Features",
        default = "Features::default",
        deny_unknown_fields
    )]
    struct FeaturesDef {
        streaming_body: bool,
        websocket: bool,
        guardrails: bool,
        config_push: bool,
        metrics_export: bool,
        concurrent_requests: u32,
        cancellation: bool,
        flow_control: bool,
        health_reporting: bool,
    }

    #[derive(Deserialize)]
    #[serde(remote = "Limits", default = "Limits::default", deny_unknown_fields)]
    struct LimitsDef {
        max_body_size: u64,
        max_concurrency: u32,
        preferred_chunk_size: u64,
    }

    fn known_events<'de, D: Deserializer<'de>>(deserializer: D) -> Result<EventSet, D::Error> {
        Vec::<i64>::deserialize(deserializer)?
            .into_iter()
            .map(|code| {
                EventKind::from_code(code).ok_or_else(|| {
                    D::Error::invalid_value(Unexpected::Signed(code), &"an event code from 0 to 8")
                })
            })
            .collect()
    }

    /// Reads capabilities, refusing unknown keys and event codes.
    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Capabilities, D::Error> {
        CapabilitiesDef::deserialize(deserializer)
    }

    /// Reads capabilities as [`deserialize`] does, except that keys left out keep the value they
    /// have in `base`, at any depth, rather than the wire default: for settings whose default
    /// capabilities are not [`Capabilities::default`] (an agent server announcing every event),
    /// so that a section setting one limit does not also take back every event. A key that is
    /// present replaces the base's value whole (`supported_events` is a list, not merged).
    ///
    /// The section is read through a [`serde_json::Value`], so this takes any self-describing
    /// format (JSON, TOML, YAML), not a binary one that is not.
    ///
    /// ```
    /// use agent_protocol_core::capabilities::strict;
    /// use agent_protocol_core::{Capabilities, EventKind};
    /// let base = Capabilities::new("waf", "WAF", "1.0").with_all_events();
    /// let section = serde_json::json!({"limits": {"max_concurrency": 8}});
    /// let caps = strict::deserialize_over(&base, section).unwrap();
    /// assert_eq!(caps.limits.max_concurrency, 8);
    /// assert!(caps.supported_events.contains(EventKind::WebSocketFrame));
    /// assert_eq!(caps.agent_id, "waf");
    /// ```
    pub fn deserialize_over<'de, D: Deserializer<'de>>(
        base: &Capabilities,
        deserializer: D,
    ) -> Result<Capabilities, D::Error> {
        let section = serde_json::Value::deserialize(deserializer)?;
        let mut merged = serde_json::to_value(base).map_err(D::Error::custom)?;
        overlay(&mut merged, section);
        deserialize(merged).map_err(D::Error::custom)
    }

    fn overlay(base: &mut serde_json::Value, section: serde_json::Value) {
        match (base, section) {
            (serde_json::Value::Object(base), serde_json::Value::Object(section)) => {
                for (key, value) in section {
                    match base.get_mut(&key) {
                        Some(slot) => overlay(slot, value),
                        None => {
                            base.insert(key, value);
                        }
                    }
                }
            }
            (base, section) => *base = section,
        }
    }

    /// Writes capabilities as on the wire.
    pub fn serialize<S: Serializer>(
        capabilities: &Capabilities,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        capabilities.serialize(serializer)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn every_wire_key_is_accepted() {
            let caps = Capabilities::new("a", "b", "c")
                .with_all_events()
                .with_control_features()
                .with_max_concurrency(7)
                .with_max_body_size(9);
            let wire = serde_json::to_string(&caps).unwrap();
            let mut de = serde_json::Deserializer::from_str(&wire);
            assert_eq!(deserialize(&mut de).unwrap(), caps);
        }

        #[test]
        fn left_out_keys_take_the_wire_defaults() {
            let mut de = serde_json::Deserializer::from_str(r#"{"features": {"websocket": true}}"#);
            let caps = deserialize(&mut de).unwrap();
            let mut expected = Capabilities::default();
            expected.features.websocket = true;
            assert_eq!(caps, expected);
        }

        #[test]
        fn a_section_over_a_base_keeps_what_it_leaves_out() {
            let base = Capabilities::new("a", "b", "c")
                .with_all_events()
                .with_control_features();
            let section = serde_json::json!({
                "supported_events": [1],
                "features": {"websocket": false},
                "limits": {"max_body_size": 5},
            });
            let caps = deserialize_over(&base, section).unwrap();
            let mut expected = base.clone();
            expected.supported_events = EventSet::EMPTY.with(EventKind::RequestHeaders);
            expected.features.websocket = false;
            expected.limits.max_body_size = 5;
            assert_eq!(caps, expected);

            let err = deserialize_over(&base, serde_json::json!({"limits": {"max": 1}}))
                .unwrap_err()
                .to_string();
            assert!(err.contains("unknown field `max`"), "{err}");
            let err = deserialize_over(&base, serde_json::json!({"limits": 3}))
                .unwrap_err()
                .to_string();
            assert!(err.contains("invalid type"), "{err}");
        }

        #[test]
        fn unknown_keys_are_named() {
            for (json, key) in [
                (r#"{"agent": "x"}"#, "agent"),
                (r#"{"features": {"streaming": true}}"#, "streaming"),
                (r#"{"limits": {"max_body": 1}}"#, "max_body"),
            ] {
                let mut de = serde_json::Deserializer::from_str(json);
                let err = deserialize(&mut de).unwrap_err().to_string();
                assert!(err.contains(&format!("unknown field `{key}`")), "{err}");
            }
        }
    }
}
