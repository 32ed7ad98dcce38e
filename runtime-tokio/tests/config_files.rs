//! The settings a proxy or an agent keeps in its own configuration file: partial sections over
//! the defaults, unknown keys refused by name, durations as text, in JSON and in TOML, on the
//! tokio runtime (whose default connector a loaded client config must keep).

use std::time::Duration;

use agent_protocol_core::pool::{Endpoint, FlowControlMode, LoadBalanceStrategy};
use agent_protocol_core::EventKind;
use agent_protocol_tokio::client::ClientConfig;
use agent_protocol_tokio::pool::AgentPoolConfig;
use agent_protocol_tokio::reverse::{ReverseAgentConfig, ReverseTarget};
use agent_protocol_tokio::server::ServerConfig;

fn same<T: std::fmt::Debug>(a: &T, b: &T) {
    assert_eq!(format!("{a:?}"), format!("{b:?}"));
}

fn refused<T: serde::de::DeserializeOwned + std::fmt::Debug>(json: &str) -> String {
    serde_json::from_str::<T>(json).unwrap_err().to_string()
}

#[test]
fn client_config_reads_a_partial_section_and_keeps_the_default_connector() {
    let config: ClientConfig = serde_json::from_str(
        r#"{"connect_timeout": "250ms", "connection": {"ping_interval": null}}"#,
    )
    .unwrap();
    let expected = ClientConfig::default()
        .with_connect_timeout(Duration::from_millis(250))
        .with_connection(
            agent_protocol_core::proxy::ProxyConfig::default().with_ping_interval(None),
        );
    // Debug shows the connector too, so this also says it is the one `default()` gives.
    same(&config, &expected);
    let grpc = Endpoint::parse("http://127.0.0.1:50051").unwrap();
    assert_eq!(config.opens(&grpc), ClientConfig::default().opens(&grpc));
    #[cfg(feature = "grpc")]
    assert!(config.opens(&grpc));

    let err = refused::<ClientConfig>(r#"{"connector": "grpc"}"#);
    assert!(err.contains("unknown field `connector`"), "{err}");
    let err = refused::<ClientConfig>(r#"{"connection": {"max_inflight": 1}}"#);
    assert!(err.contains("unknown field `max_inflight`"), "{err}");
    assert!(serde_json::from_str::<ClientConfig>(r#"{"connect_timeout": 1}"#).is_err());

    let back: ClientConfig =
        serde_json::from_value(serde_json::to_value(&config).unwrap()).unwrap();
    same(&back, &config);
}

#[test]
fn pool_config_reads_a_partial_section() {
    let config: AgentPoolConfig = serde_json::from_str(
        r#"{"connections_per_agent": 4, "request_timeout": "200ms", "connect_timeout": "1s",
            "idle_timeout": null, "health_check_interval": "1m 30s",
            "load_balance_strategy": "health_based",
            "reconnect": {"initial": "50ms"},
            "flow_control": {"mode": "fail_open"},
            "client": {"connection": {"max_in_flight": 16}}}"#,
    )
    .unwrap();
    let mut client = ClientConfig::default();
    client.connection.max_in_flight = 16;
    let expected = AgentPoolConfig::default()
        .with_connections_per_agent(4)
        .with_request_timeout(Duration::from_millis(200))
        .with_connect_timeout(Duration::from_secs(1))
        .with_idle_timeout(None)
        .with_health_check_interval(Duration::from_secs(90))
        .with_load_balance_strategy(LoadBalanceStrategy::HealthBased)
        .with_reconnect(
            agent_protocol_core::pool::Backoff::default().with_initial(Duration::from_millis(50)),
        )
        .with_flow_control(
            agent_protocol_core::pool::FlowControlPolicy::default()
                .with_mode(FlowControlMode::FailOpen),
        )
        .with_client(client);
    same(&config, &expected);
    assert!(config.client.connector.is_some() == ClientConfig::default().connector.is_some());

    let back: AgentPoolConfig =
        serde_json::from_value(serde_json::to_value(&config).unwrap()).unwrap();
    same(&back, &config);
}

#[test]
fn pool_config_refuses_unknown_keys_at_any_depth() {
    for (json, key) in [
        (r#"{"connection_per_agent": 2}"#, "connection_per_agent"),
        (r#"{"circuit_breaker": {"threshold": 2}}"#, "threshold"),
        (r#"{"reconnect": {"jiter": 0.1}}"#, "jiter"),
        (
            r#"{"client": {"connection": {"handshake": {"proxyid": "x"}}}}"#,
            "proxyid",
        ),
    ] {
        let err = refused::<AgentPoolConfig>(json);
        assert!(err.contains(&format!("unknown field `{key}`")), "{err}");
    }
    let err = refused::<AgentPoolConfig>(r#"{"load_balance_strategy": "fastest"}"#);
    assert!(err.contains("unknown variant `fastest`"), "{err}");
    let err = refused::<AgentPoolConfig>(r#"{"affinity_ttl": "5 parsecs"}"#);
    assert!(err.contains("5 parsecs"), "{err}");
}

#[test]
fn pool_config_refuses_client_timeouts_it_would_override() {
    let err = refused::<AgentPoolConfig>(r#"{"client": {"connect_timeout": "1s"}}"#);
    assert!(
        err.contains("client.connect_timeout is replaced by the pool's connect_timeout"),
        "{err}"
    );
    let err = refused::<AgentPoolConfig>(
        r#"{"request_timeout": "1s", "client": {"connection": {"request_timeout": "2s"}}}"#,
    );
    assert!(
        err.contains("client.connection.request_timeout is replaced"),
        "{err}"
    );
    let err = refused::<AgentPoolConfig>(
        r#"{"connect_timeout": "1s", "client": {"connect_timeout": "1s"}}"#,
    );
    assert!(err.contains("set connect_timeout instead"), "{err}");
    // The defaults written out change nothing, so they are no mistake.
    let config: AgentPoolConfig = serde_json::from_str(
        r#"{"connect_timeout": "1s", "client": {"connect_timeout": "5s",
            "connection": {"request_timeout": "30s"}}}"#,
    )
    .unwrap();
    assert_eq!(config.connect_timeout, Duration::from_secs(1));
}

#[test]
fn the_same_sections_in_toml() {
    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Settings {
        pool: AgentPoolConfig,
        server: ServerConfig,
        reverse: ReverseAgentConfig,
    }
    let settings: Settings = toml::from_str(
        r#"
        [pool]
        request_timeout = "200ms"
        idle_timeout = "10m"
        circuit_breaker = { failure_threshold = 3, open_timeout = "5s" }

        [server]
        socket_mode = 0o640
        drain_timeout = "1s"
        capabilities.limits.max_body_size = 4096

        [reverse]
        target.tcp = "proxy:7000"
        agent_id = "waf-1"
        backoff = { initial = "20ms", max = "2s" }
        "#,
    )
    .unwrap();
    assert_eq!(settings.pool.request_timeout, Duration::from_millis(200));
    assert_eq!(settings.pool.idle_timeout, Some(Duration::from_secs(600)));
    assert_eq!(settings.pool.circuit_breaker.failure_threshold, 3);
    assert_eq!(
        settings.pool.circuit_breaker.open_timeout,
        Duration::from_secs(5)
    );
    assert_eq!(settings.server.socket_mode, 0o640);
    assert_eq!(settings.server.capabilities.limits.max_body_size, 4096);
    assert!(settings
        .server
        .capabilities
        .supported_events
        .contains(EventKind::WebSocketFrame));
    assert_eq!(
        settings.reverse.target,
        ReverseTarget::Tcp("proxy:7000".into())
    );
    assert_eq!(settings.reverse.backoff.max, Duration::from_secs(2));

    let err = toml::from_str::<Settings>("[pool]\nrequest_timout = \"1s\"\n[server]\n[reverse]\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown field `request_timout`"), "{err}");
}
