//! The ingestion node's configuration: its one constructor.
//!
//! Values are layered, later wins: defaults in code, then a TOML file
//! (`--config`), then `SWITCHBOARD_BROKER_*` environment variables (nested
//! keys joined with `__`, e.g. `SWITCHBOARD_BROKER_KAFKA__BOOTSTRAP_SERVERS`),
//! then command-line flags.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use switchboard_runtime::config::load_layered;

use switchboard_runtime::kafka::KafkaConfig;

use crate::{
    channels::Limits,
    dedupe::DedupeConfig,
    http::config::{HttpConfig, addr_or_off},
    publisher::PublisherConfig,
    service::ServiceConfig,
};

/// Room for a request's fields around its envelope or webhook body.
const REQUEST_FRAMING_BYTES: usize = 64 << 10;

/// Configuration of an ingestion node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerConfig {
    /// Address the gRPC server listens on.
    pub grpc_addr: SocketAddr,
    /// Address of the Prometheus `/metrics` endpoint; none disables it.
    pub metrics_addr: Option<SocketAddr>,
    /// Address of the HTTP webhook listener; `"off"` disables it.
    #[serde(with = "addr_or_off")]
    pub http_addr: Option<SocketAddr>,
    /// The HTTP webhook listener's settings.
    pub http: HttpConfig,
    /// How to reach Kafka.
    pub kafka: KafkaConfig,
    /// Topic that canonical envelopes are published to.
    pub messages_topic: String,
    /// The `Broadcasts` service's topics and bounds.
    pub broadcasts: crate::broadcasts::config::BroadcastsConfig,
    /// Most publishes waiting for a Kafka ack at once, over all RPCs. Past
    /// it, unary calls get `RESOURCE_EXHAUSTED` and streams stop reading.
    pub max_in_flight: usize,
    /// Most encoded envelope bytes waiting for a Kafka ack at once, over
    /// all RPCs. Past it, publishes get `RESOURCE_EXHAUSTED`: memory is
    /// bounded in bytes, not only in messages.
    pub max_in_flight_bytes: usize,
    /// Most publishes in flight on one `PublishStream` call.
    pub max_in_flight_per_stream: usize,
    /// Most envelopes in one `PublishBatch` call; a larger batch is refused
    /// whole with `INVALID_ARGUMENT`.
    pub max_batch_messages: usize,
    /// Largest encoded `PublishBatch` request, in bytes; a larger batch is
    /// refused whole with `INVALID_ARGUMENT`. The node decodes requests up to
    /// this size (plus framing), whatever the RPC.
    pub max_batch_bytes: usize,
    /// Most calls served at once on one client connection (HTTP/2 streams).
    /// More are refused at once with `RESOURCE_EXHAUSTED` (load shedding),
    /// so a flood of calls cannot pile up in the node's memory; a
    /// connection may open at most twice this many streams.
    pub max_calls_per_connection: usize,
    /// How long Kafka may take to acknowledge a message before the publish
    /// fails with `UNAVAILABLE` (librdkafka `message.timeout.ms`). Longer
    /// than a partition leader election (a lost broker is noticed after
    /// Kafka's `broker.session.timeout.ms`, 9 s by default).
    #[serde(with = "humantime_serde")]
    pub ack_timeout: Duration,
    /// How long the producer may batch messages (librdkafka `linger.ms`).
    #[serde(with = "humantime_serde")]
    pub linger: Duration,
    /// Largest accepted encoded envelope, in bytes. gRPC requests are
    /// refused before they are decoded when they are larger than this (or
    /// than `webhook_limits.max_body_bytes` or `max_batch_bytes`) plus 64 KiB
    /// of framing.
    pub max_envelope_bytes: usize,
    /// How far in the future a caller's `sent_at` may be (clock skew).
    /// Later ones are refused with `INVALID_ARGUMENT`.
    #[serde(with = "humantime_serde")]
    pub max_clock_skew: Duration,
    /// Time allowed after the shutdown signal for in-flight calls to finish.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Threads of the node's async runtime: 0 (the default) is one per
    /// core, 1 runs every connection and call on the main thread, N is N.
    pub runtime_threads: usize,
    /// Tenants file: hashed API keys and rate limits (see `auth`). Without
    /// one, authentication and rate limits are off.
    pub auth_file: Option<PathBuf>,
    /// How often the tenants file is checked for changes.
    #[serde(with = "humantime_serde")]
    pub auth_reload_interval: Duration,
    /// The node's dedupe cache of channel message ids.
    pub dedupe: DedupeConfig,
    /// Size limits for `IngestWebhook` payloads.
    pub webhook_limits: Limits,
    /// TLS for the gRPC listener; plaintext when absent.
    pub tls: Option<TlsConfig>,
}

/// TLS (and optionally mutual TLS) for the gRPC listener.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain of the server.
    pub cert_file: PathBuf,
    /// PEM private key of the server.
    pub key_file: PathBuf,
    /// PEM CA bundle; when set, clients must present a certificate it signed (mTLS).
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            grpc_addr: SocketAddr::from(([127, 0, 0, 1], 50051)),
            metrics_addr: Some(SocketAddr::from(([127, 0, 0, 1], 9464))),
            http_addr: Some(SocketAddr::from(([127, 0, 0, 1], 8080))),
            http: HttpConfig::default(),
            kafka: KafkaConfig::default(),
            messages_topic: "switchboard.messages.v1".into(),
            broadcasts: Default::default(),
            max_in_flight: 10_000,
            max_in_flight_bytes: 256 << 20,
            max_in_flight_per_stream: 1_024,
            max_batch_messages: 500,
            max_batch_bytes: 4 << 20,
            max_calls_per_connection: 1_024,
            ack_timeout: Duration::from_secs(30),
            linger: Duration::from_millis(2),
            max_envelope_bytes: 1 << 20,
            max_clock_skew: Duration::from_secs(300),
            shutdown_grace: Duration::from_secs(10),
            runtime_threads: 0,
            auth_file: None,
            auth_reload_interval: Duration::from_secs(2),
            dedupe: DedupeConfig::default(),
            webhook_limits: Limits::default(),
            tls: None,
        }
    }
}

impl BrokerConfig {
    /// Loads defaults, then the optional TOML file, then
    /// `SWITCHBOARD_BROKER_*` variables, then `overrides` (the flags given).
    pub fn load(file: Option<&Path>, overrides: impl Serialize) -> anyhow::Result<Self> {
        let config: Self = load_layered(file, "SWITCHBOARD_BROKER_", overrides)?;
        config.check()?;
        Ok(config)
    }

    /// The publisher's section.
    pub fn publisher(&self) -> PublisherConfig {
        PublisherConfig {
            kafka: self.kafka.clone(),
            topic: self.messages_topic.clone(),
            max_in_flight: self.max_in_flight,
            max_in_flight_bytes: self.max_in_flight_bytes,
            max_envelope_bytes: self.max_envelope_bytes,
            ack_timeout: self.ack_timeout,
            linger: self.linger,
        }
    }

    /// The gRPC service's section.
    pub fn service(&self) -> ServiceConfig {
        ServiceConfig {
            webhook_limits: self.webhook_limits.clone(),
            max_in_flight_per_stream: self.max_in_flight_per_stream,
            max_clock_skew: self.max_clock_skew,
            max_request_bytes: self.max_request_bytes(),
            max_batch_messages: self.max_batch_messages,
            max_batch_bytes: self.max_batch_bytes,
            max_envelope_bytes: self.max_envelope_bytes,
        }
    }

    /// The largest gRPC request the node decodes: the largest envelope,
    /// webhook body or batch, plus framing.
    pub fn max_request_bytes(&self) -> usize {
        self.max_envelope_bytes
            .max(self.webhook_limits.max_body_bytes)
            .max(self.max_batch_bytes)
            .saturating_add(REQUEST_FRAMING_BYTES)
    }

    fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.max_in_flight > 0, "max_in_flight must be at least 1");
        anyhow::ensure!(
            self.max_in_flight_bytes >= self.max_envelope_bytes,
            "max_in_flight_bytes ({}) must be at least max_envelope_bytes ({})",
            self.max_in_flight_bytes,
            self.max_envelope_bytes
        );
        anyhow::ensure!(
            self.max_in_flight_per_stream > 0,
            "max_in_flight_per_stream must be at least 1"
        );
        anyhow::ensure!(
            self.max_batch_messages > 0,
            "max_batch_messages must be at least 1"
        );
        anyhow::ensure!(
            self.max_calls_per_connection > 0 && self.max_calls_per_connection <= 1 << 30,
            "max_calls_per_connection must be between 1 and 2^30"
        );
        anyhow::ensure!(
            !self.messages_topic.is_empty(),
            "messages_topic must not be empty"
        );
        self.http.check()
    }
}

#[cfg(test)]
mod tests {
    use switchboard_runtime::config::Overrides;

    use super::*;

    #[test]
    fn layers_file_then_overrides() {
        let dir = std::env::temp_dir().join(format!("sb-broker-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("broker.toml");
        std::fs::write(
            &file,
            "messages_topic = \"from-file\"\nack_timeout = \"3s\"\n[kafka]\nbootstrap_servers = \"k:1\"\n",
        )
        .unwrap();
        let overrides = Overrides::default()
            .kafka_bootstrap(Some("flag:2".into()))
            .set("grpc_addr", None::<String>);
        let config = BrokerConfig::load(Some(&file), overrides).unwrap();
        assert_eq!(config.messages_topic, "from-file");
        assert_eq!(config.ack_timeout, Duration::from_secs(3));
        assert_eq!(config.kafka.bootstrap_servers, "flag:2");
        assert_eq!(config.max_in_flight, BrokerConfig::default().max_in_flight);
    }

    /// Kafka notices a lost broker after `broker.session.timeout.ms` (9 s by
    /// default) and then elects new leaders: a publish must outlive that.
    #[test]
    fn the_ack_timeout_outlives_a_leader_election() {
        assert!(BrokerConfig::default().ack_timeout > Duration::from_secs(9));
    }

    /// A full batch, even of the largest envelopes the batch allows, is
    /// decoded and reaches the service, which names the batch limits.
    #[test]
    fn the_decode_limit_admits_a_full_batch() {
        for config in [
            BrokerConfig::default(),
            BrokerConfig {
                max_batch_bytes: 64 << 20,
                ..BrokerConfig::default()
            },
        ] {
            assert!(config.max_request_bytes() > config.max_batch_bytes);
            assert!(config.max_request_bytes() > config.max_envelope_bytes);
        }
    }

    #[test]
    fn the_http_listener_can_be_turned_off() {
        let default = BrokerConfig::load(None, serde_json::json!({})).unwrap();
        assert_eq!(default.http_addr, Some("127.0.0.1:8080".parse().unwrap()));
        for (value, expected) in [
            ("off", None),
            ("OFF", None),
            ("127.0.0.1:0", Some("127.0.0.1:0".parse().unwrap())),
        ] {
            let config =
                BrokerConfig::load(None, serde_json::json!({ "http_addr": value })).unwrap();
            assert_eq!(config.http_addr, expected, "{value}");
        }
        let err = BrokerConfig::load(None, serde_json::json!({ "http_addr": "nope" })).unwrap_err();
        assert!(format!("{err:#}").contains("\"off\""), "{err:#}");
        let err = BrokerConfig::load(
            None,
            serde_json::json!({ "http": { "public_base_url": "hooks.example.com" } }),
        )
        .unwrap_err();
        assert!(err.to_string().contains("public_base_url"), "{err}");
    }

    #[test]
    fn rejects_unknown_fields_and_missing_files() {
        let dir = std::env::temp_dir().join(format!("sb-broker-config-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("broker.toml");
        std::fs::write(&file, "grpc_adress = \"127.0.0.1:1\"\n").unwrap();
        let err = BrokerConfig::load(Some(&file), serde_json::json!({})).unwrap_err();
        assert!(err.to_string().contains("grpc_adress"), "{err}");
        let err =
            BrokerConfig::load(Some(&dir.join("nope.toml")), serde_json::json!({})).unwrap_err();
        assert!(err.to_string().contains("does not exist"), "{err}");
    }
}

#[cfg(test)]
mod example_tests {
    use super::*;

    #[test]
    fn example_config_parses_to_the_defaults() {
        let file =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/config/broker.example.toml");
        let config = BrokerConfig::load(Some(&file), serde_json::json!({})).unwrap();
        assert_eq!(config, BrokerConfig::default());
    }
}
