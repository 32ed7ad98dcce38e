//! The series agents report about themselves in their MetricsReport frames, kept in a bounded,
//! validated, expiring [`AgentMetricsStore`] until the next scrape.
//!
//! The store only holds the series; the driver's exporter reads them ([`AgentMetricsStore::families`]).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::names::{is_valid_label_name, is_valid_metric_name};

/// A counter as an agent reported it (cumulative value).
///
/// ```
/// use agent_protocol_core::metrics::ReportedCounter;
/// let c = ReportedCounter {
///     name: "agent_requests_total".into(),
///     help: Some("Requests seen".into()),
///     labels: vec![("route".into(), "/api".into())],
///     value: 42,
/// };
/// assert_eq!(c.value, 42);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReportedCounter {
    /// Metric name.
    pub name: String,
    /// Help text, if the agent gave one.
    pub help: Option<String>,
    /// Label pairs.
    pub labels: Vec<(String, String)>,
    /// Current value.
    pub value: u64,
}

/// A gauge as an agent reported it.
///
/// ```
/// use agent_protocol_core::metrics::ReportedGauge;
/// let g = ReportedGauge { name: "agent_queue_depth".into(), value: 3.0, ..Default::default() };
/// assert!(g.labels.is_empty());
/// ```
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ReportedGauge {
    /// Metric name.
    pub name: String,
    /// Help text, if the agent gave one.
    pub help: Option<String>,
    /// Label pairs.
    pub labels: Vec<(String, String)>,
    /// Current value (NaN and infinities are rendered as Prometheus spells them).
    pub value: f64,
}

/// Why a reported series was not stored.
///
/// ```
/// use agent_protocol_core::metrics::{AgentMetricsStore, ReportedCounter, SeriesRejected};
/// use std::time::Instant;
/// let mut store = AgentMetricsStore::new();
/// let bad = ReportedCounter { name: "bad name".into(), ..Default::default() };
/// assert_eq!(store.record_counter("waf", &bad, Instant::now()), Err(SeriesRejected::InvalidName));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
pub enum SeriesRejected {
    /// The metric name does not match `[a-zA-Z_:][a-zA-Z0-9_:]*` or is too long.
    #[error("invalid metric name")]
    InvalidName,
    /// A label name is invalid, reserved (`__` prefix), repeated, or a value is too long.
    #[error("invalid label")]
    InvalidLabel,
    /// More labels than [`AgentMetricsStore::MAX_LABELS`].
    #[error("too many labels")]
    TooManyLabels,
    /// The name is already stored as the other metric type.
    #[error("metric type conflicts with an existing series of the same name")]
    TypeConflict,
    /// The name is in the namespace the pool's own metrics use (see
    /// [`AgentMetricsStore::reserving`]): an agent cannot write series there.
    #[error("metric name in the pool's reserved namespace")]
    ReservedName,
    /// The store holds its maximum number of series, none of them expired.
    #[error("series limit reached")]
    OverLimit,
}

/// Counts of one [`AgentMetricsStore::ingest`] call.
///
/// ```
/// use agent_protocol_core::metrics::IngestSummary;
/// assert_eq!(IngestSummary::default().accepted, 0);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IngestSummary {
    /// Series stored or updated.
    pub accepted: usize,
    /// Series dropped as invalid (name, labels, type conflict).
    pub invalid: usize,
    /// Series dropped because the store was full.
    pub over_limit: usize,
}

/// The type of a reported metric family; one name has one type across all agents.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReportedKind {
    /// A cumulative counter.
    Counter,
    /// A gauge.
    Gauge,
}

/// A reported series' latest value, of its family's [`ReportedKind`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ReportedValue {
    /// A counter's value.
    Counter(u64),
    /// A gauge's value.
    Gauge(f64),
}

use ReportedKind as Kind;
use ReportedValue as Value;

/// One stored family, as an exporter reads it.
#[derive(Clone, Copy, Debug)]
pub struct ReportedFamily<'a> {
    /// Its metric name, as reported (valid).
    pub name: &'a str,
    /// Counter or gauge.
    pub kind: ReportedKind,
    /// Help text, if an agent gave one (not escaped).
    pub help: Option<&'a str>,
    series: &'a BTreeMap<Vec<(String, String)>, Sample>,
}

impl<'a> ReportedFamily<'a> {
    /// Its series: the full label set (names valid, sorted, `agent_id` included; values not
    /// escaped) and the latest value.
    pub fn series(&self) -> impl Iterator<Item = (&'a [(String, String)], ReportedValue)> + 'a {
        self.series
            .iter()
            .map(|(labels, s)| (labels.as_slice(), s.value))
    }
}

/// One stored series: its value and when it was last reported (for expiry).
#[derive(Clone, Debug)]
pub(super) struct Sample {
    pub(super) value: Value,
    updated: Instant,
}

/// Every stored series of one metric name.
#[derive(Clone, Debug)]
pub(super) struct Family {
    pub(super) kind: Kind,
    pub(super) help: Option<String>,
    /// Keyed by the full, sorted label set (`agent_id` included), so rendering is ordered and one
    /// agent's series never overwrite another's.
    pub(super) series: BTreeMap<Vec<(String, String)>, Sample>,
}

/// The latest metric series reported by agents, ready to be scraped.
///
/// - At most `max_series` series (default 10,000); a new series beyond that is dropped and
///   counted (after expiring stale ones), while updates of stored series always succeed.
/// - Metric and label names are checked against the Prometheus grammar; invalid series are
///   dropped and counted instead of corrupting the scrape (the reference exports them unchecked).
/// - Every series carries `agent_id` = the id the pool knows for the connection it came in on;
///   an `agent_id` label the agent supplied is replaced.
/// - Series not updated for `ttl` (default 5 minutes) are removed by [`expire`](Self::expire).
///
/// Takes `&mut self`: reports arrive a few times a minute per agent, so the adapter keeps it
/// behind a lock that is never on the request path.
///
/// ```
/// use agent_protocol_core::metrics::{AgentMetricsStore, ReportedCounter, ReportedValue};
/// use std::time::Instant;
///
/// let now = Instant::now();
/// let mut store = AgentMetricsStore::new();
/// let c = ReportedCounter {
///     name: "agent_requests_total".into(),
///     labels: vec![("agent_id".into(), "someone-else".into())],
///     value: 7,
///     ..Default::default()
/// };
/// let summary = store.ingest("waf-1", &[c], &[], now);
/// assert_eq!(summary.accepted, 1);
/// let family = store.families().next().unwrap();
/// let (labels, value) = family.series().next().unwrap();
/// assert_eq!(family.name, "agent_requests_total");
/// // The agent's own agent_id label is replaced by the id the pool knows.
/// assert_eq!(labels, [("agent_id".to_string(), "waf-1".to_string())]);
/// assert_eq!(value, ReportedValue::Counter(7));
/// ```
#[derive(Clone, Debug)]
pub struct AgentMetricsStore {
    families: BTreeMap<String, Family>,
    series: usize,
    max_series: usize,
    ttl: Duration,
    invalid_total: u64,
    over_limit_total: u64,
    /// Names starting with this (the pool's prefix and `_`) are refused.
    reserved: Option<String>,
    /// Lower bound on the next time any series can expire (see `AffinityTable`'s equivalent): a
    /// full store does not rescan on every rejected series.
    next_expiry: Option<Instant>,
}

impl Default for AgentMetricsStore {
    fn default() -> Self {
        Self::new()
    }
}

/// The label every stored series carries.
const AGENT_ID_LABEL: &str = "agent_id";

impl AgentMetricsStore {
    /// Default series limit.
    pub const DEFAULT_MAX_SERIES: usize = 10_000;
    /// Default staleness limit.
    pub const DEFAULT_TTL: Duration = Duration::from_secs(300);
    /// Longest metric name accepted.
    pub const MAX_NAME_LEN: usize = 256;
    /// Most labels per series (besides `agent_id`).
    pub const MAX_LABELS: usize = 32;
    /// Longest label value accepted, in bytes.
    pub const MAX_LABEL_VALUE_LEN: usize = 1024;
    /// Help text longer than this (bytes) is truncated.
    pub const MAX_HELP_LEN: usize = 1024;

    /// An empty store with the default limits.
    pub fn new() -> Self {
        Self::with_limits(Self::DEFAULT_MAX_SERIES, Self::DEFAULT_TTL)
    }

    /// An empty store holding at most `max_series` series, each expiring `ttl` after its last
    /// update.
    pub fn with_limits(max_series: usize, ttl: Duration) -> Self {
        Self {
            families: BTreeMap::new(),
            series: 0,
            max_series,
            ttl,
            invalid_total: 0,
            over_limit_total: 0,
            next_expiry: None,
            reserved: None,
        }
    }

    /// Refuses series whose name starts with `prefix_` ([`SeriesRejected::ReservedName`]): the
    /// pool's own metrics live there, and a series an agent reported under one of their names
    /// would both pass for the pool's and make the scrape carry one family twice, which
    /// scrapers reject whole. An empty prefix reserves nothing.
    ///
    /// ```
    /// use agent_protocol_core::metrics::{AgentMetricsStore, ReportedCounter, SeriesRejected};
    /// use std::time::Instant;
    /// let mut store = AgentMetricsStore::new().reserving("agent_protocol");
    /// let spoof = ReportedCounter { name: "agent_protocol_requests_total".into(), ..Default::default() };
    /// assert_eq!(store.record_counter("waf", &spoof, Instant::now()), Err(SeriesRejected::ReservedName));
    /// ```
    #[must_use]
    pub fn reserving(mut self, prefix: &str) -> Self {
        let prefix = super::names::sanitize_metric_name(prefix);
        self.reserved = (!prefix.is_empty()).then(|| prefix + "_");
        self
    }

    /// Number of stored series.
    pub fn len(&self) -> usize {
        self.series
    }

    /// Whether no series are stored.
    pub fn is_empty(&self) -> bool {
        self.series == 0
    }

    /// Series dropped as invalid since creation.
    pub fn invalid_total(&self) -> u64 {
        self.invalid_total
    }

    /// Series dropped at the series limit since creation.
    pub fn over_limit_total(&self) -> u64 {
        self.over_limit_total
    }

    /// The stored families, by metric name.
    pub fn families(&self) -> impl Iterator<Item = ReportedFamily<'_>> {
        self.families.iter().map(|(name, f)| ReportedFamily {
            name,
            kind: f.kind,
            help: f.help.as_deref(),
            series: &f.series,
        })
    }

    /// Stores one report's counters and gauges for `agent_id` (the pool's id for the connection).
    pub fn ingest(
        &mut self,
        agent_id: &str,
        counters: &[ReportedCounter],
        gauges: &[ReportedGauge],
        now: Instant,
    ) -> IngestSummary {
        let mut summary = IngestSummary::default();
        let mut tally = |r: Result<(), SeriesRejected>| match r {
            Ok(()) => summary.accepted += 1,
            Err(SeriesRejected::OverLimit) => summary.over_limit += 1,
            Err(_) => summary.invalid += 1,
        };
        for c in counters {
            tally(self.record_counter(agent_id, c, now));
        }
        for g in gauges {
            tally(self.record_gauge(agent_id, g, now));
        }
        summary
    }

    /// Stores one counter for `agent_id`.
    pub fn record_counter(
        &mut self,
        agent_id: &str,
        counter: &ReportedCounter,
        now: Instant,
    ) -> Result<(), SeriesRejected> {
        self.record(
            agent_id,
            &counter.name,
            counter.help.as_deref(),
            &counter.labels,
            Value::Counter(counter.value),
            now,
        )
    }

    /// Stores one gauge for `agent_id`.
    pub fn record_gauge(
        &mut self,
        agent_id: &str,
        gauge: &ReportedGauge,
        now: Instant,
    ) -> Result<(), SeriesRejected> {
        self.record(
            agent_id,
            &gauge.name,
            gauge.help.as_deref(),
            &gauge.labels,
            Value::Gauge(gauge.value),
            now,
        )
    }

    fn record(
        &mut self,
        agent_id: &str,
        name: &str,
        help: Option<&str>,
        labels: &[(String, String)],
        value: Value,
        now: Instant,
    ) -> Result<(), SeriesRejected> {
        let result = self.try_record(agent_id, name, help, labels, value, now);
        match result {
            Ok(()) => {}
            Err(SeriesRejected::OverLimit) => self.over_limit_total += 1,
            Err(_) => self.invalid_total += 1,
        }
        result
    }

    fn try_record(
        &mut self,
        agent_id: &str,
        name: &str,
        help: Option<&str>,
        labels: &[(String, String)],
        value: Value,
        now: Instant,
    ) -> Result<(), SeriesRejected> {
        let kind = match value {
            Value::Counter(_) => Kind::Counter,
            Value::Gauge(_) => Kind::Gauge,
        };
        if name.len() > Self::MAX_NAME_LEN || !is_valid_metric_name(name) {
            return Err(SeriesRejected::InvalidName);
        }
        if self
            .reserved
            .as_deref()
            .is_some_and(|r| name.starts_with(r))
        {
            return Err(SeriesRejected::ReservedName);
        }
        let key = Self::label_key(agent_id, labels)?;
        if let Some(family) = self.families.get(name) {
            if family.kind != kind {
                return Err(SeriesRejected::TypeConflict);
            }
        }
        let exists = self
            .families
            .get(name)
            .is_some_and(|f| f.series.contains_key(&key));
        if !exists && self.series >= self.max_series {
            if self.next_expiry.is_none_or(|t| now >= t) {
                self.expire(now);
            }
            if self.series >= self.max_series {
                return Err(SeriesRejected::OverLimit);
            }
        }
        let family = self.families.entry(name.to_owned()).or_insert(Family {
            kind,
            help: None,
            series: BTreeMap::new(),
        });
        if let Some(help) = help {
            // Latest help wins; truncated on a char boundary so storage stays bounded.
            let mut end = help.len().min(Self::MAX_HELP_LEN);
            while !help.is_char_boundary(end) {
                end -= 1;
            }
            let help = help.get(..end).unwrap_or_default();
            if family.help.as_deref() != Some(help) {
                family.help = Some(help.to_owned());
            }
        }
        let sample = Sample {
            value,
            updated: now,
        };
        if family.series.insert(key, sample).is_none() {
            self.series += 1;
        }
        Ok(())
    }

    /// The sorted label set of a series: the agent's labels minus any `agent_id`, plus the pool's.
    fn label_key(
        agent_id: &str,
        labels: &[(String, String)],
    ) -> Result<Vec<(String, String)>, SeriesRejected> {
        let mut key: Vec<(String, String)> = Vec::with_capacity(labels.len().min(32) + 1);
        for (name, value) in labels {
            if name == AGENT_ID_LABEL {
                continue;
            }
            if !is_valid_label_name(name)
                || name.starts_with("__")
                || value.len() > Self::MAX_LABEL_VALUE_LEN
            {
                return Err(SeriesRejected::InvalidLabel);
            }
            if key.len() >= Self::MAX_LABELS {
                return Err(SeriesRejected::TooManyLabels);
            }
            key.push((name.clone(), value.clone()));
        }
        key.push((AGENT_ID_LABEL.to_owned(), agent_id.to_owned()));
        key.sort();
        if key.windows(2).any(|w| w[0].0 == w[1].0) {
            return Err(SeriesRejected::InvalidLabel);
        }
        Ok(key)
    }

    /// Removes series not updated for the TTL; returns how many.
    pub fn expire(&mut self, now: Instant) -> usize {
        let ttl = self.ttl;
        let mut removed = 0;
        let mut oldest: Option<Instant> = None;
        self.families.retain(|_, family| {
            family.series.retain(|_, s| {
                if now.saturating_duration_since(s.updated) >= ttl {
                    removed += 1;
                    false
                } else {
                    oldest = Some(oldest.map_or(s.updated, |o| o.min(s.updated)));
                    true
                }
            });
            !family.series.is_empty()
        });
        self.series -= removed;
        self.next_expiry = oldest.map(|o| crate::pool::saturating_add(o, ttl));
        removed
    }

    /// Removes every series of `agent_id` (the agent left the pool); returns how many.
    pub fn remove_agent(&mut self, agent_id: &str) -> usize {
        let mut removed = 0;
        self.families.retain(|_, family| {
            family.series.retain(|labels, _| {
                let mine = labels
                    .iter()
                    .any(|(n, v)| n == AGENT_ID_LABEL && v == agent_id);
                removed += usize::from(mine);
                !mine
            });
            !family.series.is_empty()
        });
        self.series -= removed;
        removed
    }
}
