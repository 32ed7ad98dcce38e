//! The example agent behind `agentctl serve` and the demo: a small WAF that applies rules from a
//! JSON file to request paths, headers and bodies.
//!
//! Rules file format (`--rules FILE`):
//!
//! ```json
//! { "rules": [
//!     { "id": "admin",  "path_prefix": "/admin", "action": "block", "status": 403 },
//!     { "id": "sqlmap", "header": "user-agent", "contains": "sqlmap", "action": "block" },
//!     { "id": "sqli",   "body_contains": "' OR 1=1", "action": "block", "status": 400 },
//!     { "id": "old",    "path_prefix": "/old", "action": "redirect", "location": "/new" }
//! ] }
//! ```
//!
//! A rule matches when every condition it has holds (`method`, `path_prefix`, `path_contains`,
//! `header` + `contains`/`equals`, `body_contains`); the first matching rule decides. With no
//! rules everything is allowed.

use std::sync::atomic::{AtomicU64, Ordering};

use agent_protocol_core::{
    AgentResponse, Decision, HeaderOp, RequestBodyChunkEvent, RequestHeadersEvent,
};
use agent_protocol_tokio::server::AgentHandler;
use serde::Deserialize;

/// What a matching rule does.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Block with `status` (default 403).
    #[default]
    Block,
    /// Redirect to `location` with `status` (default 302).
    Redirect,
    /// Allow, tagging the request.
    Allow,
}

/// One rule.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Rule id, reported in audit `rule_ids`.
    pub id: String,
    /// HTTP method to match (case-insensitive).
    #[serde(default)]
    pub method: Option<String>,
    /// Path prefix to match.
    #[serde(default)]
    pub path_prefix: Option<String>,
    /// Substring of the request target to match.
    #[serde(default)]
    pub path_contains: Option<String>,
    /// Header whose value is tested by `contains` / `equals`.
    #[serde(default)]
    pub header: Option<String>,
    /// Substring the header value must contain.
    #[serde(default)]
    pub contains: Option<String>,
    /// Exact header value.
    #[serde(default)]
    pub equals: Option<String>,
    /// Substring of a request body chunk.
    #[serde(default)]
    pub body_contains: Option<String>,
    /// What to do.
    #[serde(default)]
    pub action: Action,
    /// Status for block/redirect.
    #[serde(default)]
    pub status: Option<u16>,
    /// Target for redirect.
    #[serde(default)]
    pub location: Option<String>,
}

/// A rules file.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSet {
    /// Rules, first match wins.
    #[serde(default)]
    pub rules: Vec<Rule>,
}

impl RuleSet {
    /// Parses a rules file.
    pub fn from_json(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }

    /// The rules the demo uses: blocks admin paths, a scanner user agent, and SQL injection in
    /// bodies.
    pub fn demo() -> Self {
        Self::from_json(
            r#"{ "rules": [
                { "id": "admin", "path_prefix": "/admin", "action": "block", "status": 403 },
                { "id": "scanner", "header": "user-agent", "contains": "sqlmap", "action": "block" },
                { "id": "sqli-body", "body_contains": "' OR 1=1", "action": "block", "status": 400 }
            ] }"#,
        )
        .unwrap_or_default()
    }

    fn decide(&self, rule: &Rule) -> AgentResponse {
        let mut r = match rule.action {
            Action::Block => AgentResponse::new(Decision::block(
                rule.status.unwrap_or(403),
                Some(format!("blocked by rule {}", rule.id)),
            )),
            Action::Redirect => AgentResponse::new(Decision::Redirect {
                url: rule.location.clone().unwrap_or_else(|| "/".into()),
                status: rule.status.unwrap_or(302),
            }),
            Action::Allow => AgentResponse::allow(),
        };
        r.audit.rule_ids.push(rule.id.clone());
        r.audit.tags.push("waf".into());
        r
    }
}

/// The rule-driven agent.
#[derive(Debug, Default)]
pub struct RulesAgent {
    rules: RuleSet,
    requests: AtomicU64,
    refused: AtomicU64,
}

impl RulesAgent {
    /// An agent applying `rules`.
    pub fn new(rules: RuleSet) -> Self {
        Self {
            rules,
            requests: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        }
    }

    /// Events handled so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Of those, answered with something else than allow (block, redirect, challenge).
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    fn decide(&self, rule: &Rule) -> AgentResponse {
        if rule.action != Action::Allow {
            self.refused.fetch_add(1, Ordering::Relaxed);
        }
        self.rules.decide(rule)
    }
}

fn header_matches(rule: &Rule, event: &RequestHeadersEvent) -> bool {
    let Some(name) = &rule.header else {
        return true;
    };
    let Some(mut values) = event.headers.get(name) else {
        return false;
    };
    values.any(|v| {
        rule.contains
            .as_ref()
            .is_none_or(|c| v.contains(c.as_str()))
            && rule.equals.as_ref().is_none_or(|e| v == e)
    })
}

impl AgentHandler for RulesAgent {
    async fn on_request_headers(&self, event: RequestHeadersEvent) -> AgentResponse {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let path = event.uri.split('?').next().unwrap_or("");
        for rule in &self.rules.rules {
            if rule.body_contains.is_some() {
                continue;
            }
            let matches = rule
                .method
                .as_ref()
                .is_none_or(|m| m.eq_ignore_ascii_case(&event.method))
                && rule
                    .path_prefix
                    .as_ref()
                    .is_none_or(|p| path.starts_with(p.as_str()))
                && rule
                    .path_contains
                    .as_ref()
                    .is_none_or(|p| event.uri.contains(p.as_str()))
                && header_matches(rule, &event);
            if matches {
                return self.decide(rule);
            }
        }
        let mut r = AgentResponse::allow();
        r.request_headers.push(HeaderOp::Set {
            name: "x-waf".into(),
            value: "clean".into(),
        });
        r
    }

    async fn on_request_body_chunk(&self, event: RequestBodyChunkEvent) -> AgentResponse {
        self.requests.fetch_add(1, Ordering::Relaxed);
        for rule in &self.rules.rules {
            if let Some(needle) = &rule.body_contains {
                let needle = needle.as_bytes();
                if !needle.is_empty() && event.0.data.windows(needle.len()).any(|w| w == needle) {
                    return self.decide(rule);
                }
            }
        }
        AgentResponse::allow()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_protocol_core::{Headers, RequestMetadata};

    fn req(uri: &str, ua: &str) -> RequestHeadersEvent {
        RequestHeadersEvent::new(
            RequestMetadata::default(),
            "GET",
            uri,
            Headers::from_iter([("user-agent", ua)]),
        )
    }

    #[tokio::test]
    async fn demo_rules_block_what_they_say() {
        let agent = RulesAgent::new(RuleSet::demo());
        let d = agent.on_request_headers(req("/admin/users", "curl")).await;
        assert_eq!(d.decision.kind(), "block");
        assert_eq!(d.audit.rule_ids, ["admin"]);
        let d = agent.on_request_headers(req("/shop", "sqlmap/1.7")).await;
        assert_eq!(d.audit.rule_ids, ["scanner"]);
        let d = agent
            .on_request_headers(req("/shop?q=/admin", "curl"))
            .await;
        assert_eq!(d.decision, Decision::Allow);
    }

    #[test]
    fn unknown_keys_are_rejected_with_a_clear_error() {
        let err = RuleSet::from_json(r#"{"rules":[{"id":"x","paht_prefix":"/"}]}"#).unwrap_err();
        assert!(err.to_string().contains("paht_prefix"), "{err}");
    }
}
