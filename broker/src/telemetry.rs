//! Logs and metrics, shared by every Switchboard binary.
//!
//! Metric names follow `docs/metrics.md`: `switchboard_<stage>_<noun>_<unit>[_total]`,
//! base units, and labels from small fixed sets only.

use std::{net::SocketAddr, sync::OnceLock};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};

static OTLP: OnceLock<bool> = OnceLock::new();

/// Whether spans are exported over OTLP (see [`init`]).
pub fn otlp_enabled() -> bool {
    OTLP.get().copied().unwrap_or(false)
}

/// Keeps the OTLP exporter running; dropping it flushes the spans not sent yet.
#[must_use = "dropping it stops the OTLP export"]
pub struct Telemetry {
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(e) = provider.shutdown()
        {
            eprintln!("flushing OTLP spans failed: {e}");
        }
    }
}

/// Initializes `tracing` for the service `service`. `RUST_LOG` sets levels
/// (default `info`); `SWITCHBOARD_LOG_FORMAT=json` switches logs to
/// structured JSON lines on stderr.
///
/// Setting `OTEL_EXPORTER_OTLP_ENDPOINT` (e.g. `http://127.0.0.1:4318`)
/// also exports each message's spans over OTLP/HTTP (protobuf) to an
/// OpenTelemetry collector; the standard `OTEL_*` variables
/// (`OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_SERVICE_NAME`, ...) apply.
pub fn init(service: &'static str) -> Telemetry {
    use tracing_subscriber::{Layer as _, layer::SubscriberExt as _, util::SubscriberInitExt as _};
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,librdkafka=warn,rdkafka=warn")
    });
    let json =
        std::env::var("SWITCHBOARD_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none();
    let logs = if json {
        tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .with_filter(filter)
            .boxed()
    } else {
        tracing_subscriber::fmt::layer()
            .with_ansi(ansi)
            .with_writer(std::io::stderr)
            .with_filter(filter)
            .boxed()
    };
    let provider =
        std::env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT").and_then(|_| {
            match otlp_provider(service) {
                Ok(provider) => Some(provider),
                Err(e) => {
                    eprintln!("OTLP export is off: {e}");
                    None
                }
            }
        });
    let spans = provider.as_ref().map(|provider| {
        use opentelemetry::trace::TracerProvider as _;
        // Spans are exported whatever RUST_LOG says about logs.
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer(service))
            .with_filter(tracing_subscriber::filter::LevelFilter::INFO)
    });
    let installed = tracing_subscriber::registry()
        .with(logs)
        .with(spans)
        .try_init()
        .is_ok();
    let _ = OTLP.set(installed && provider.is_some());
    Telemetry { provider }
}

fn otlp_provider(
    service: &'static str,
) -> Result<opentelemetry_sdk::trace::SdkTracerProvider, opentelemetry_otlp::ExporterBuildError> {
    use opentelemetry_otlp::WithExportConfig as _;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .build()?;
    let mut resource = opentelemetry_sdk::Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name(service);
    }
    let resource = resource.build();
    Ok(opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}

/// A stable, short stand-in for an identifier that may hold personal data
/// (a conversation key holds phone numbers), for logs at info level and above.
pub fn redact(value: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(value.as_bytes());
    format!("#{}", hex::encode(&digest[..6]))
}

/// Latency buckets, in seconds, for every `_seconds` histogram.
const LATENCY_BUCKETS: &[f64] = &[
    0.000_5, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
];

/// Buckets, in seconds, for waits on people (agent assignment): 1 s to 1 h.
const WAIT_BUCKETS: &[f64] = &[
    1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1_800.0, 3_600.0,
];

/// Installs the Prometheus recorder and serves `/metrics` on `addr`. Only the
/// first call in a process installs anything; later calls return its result.
pub fn install_metrics(addr: SocketAddr) -> Result<(), String> {
    static INSTALLED: OnceLock<Result<(), String>> = OnceLock::new();
    INSTALLED
        .get_or_init(|| {
            PrometheusBuilder::new()
                .with_http_listener(addr)
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                // A full-name matcher takes precedence over the suffix.
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("switchboard_agent_wait_duration_seconds".into()),
                        WAIT_BUCKETS,
                    )
                })
                .and_then(|b| b.install())
                .map_err(|e| format!("cannot serve metrics on {addr}: {e}"))?;
            describe();
            Ok(())
        })
        .clone()
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "switchboard_ingest_requests_total",
        "Envelopes received by the ingestion node, by RPC, channel and resulting gRPC code."
    );
    describe_histogram!(
        "switchboard_ingest_kafka_ack_duration_seconds",
        metrics::Unit::Seconds,
        "Time from handing an envelope to the producer until Kafka acknowledged it."
    );
    describe_counter!(
        "switchboard_ingest_kafka_errors_total",
        "Produce attempts that Kafka failed."
    );
    describe_gauge!(
        "switchboard_ingest_in_flight",
        "Publishes waiting for a Kafka ack."
    );
    describe_counter!(
        "switchboard_ingest_calls_shed_total",
        "Calls refused with RESOURCE_EXHAUSTED before they were read, because their client connection already had max_calls_per_connection calls in flight."
    );
    describe_counter!(
        "switchboard_worker_records_total",
        "Records consumed by the routing workers, by outcome (routed, poison)."
    );
    describe_counter!(
        "switchboard_route_decisions_total",
        "Routing decisions, by whether a rule matched or the default applied."
    );
    describe_counter!(
        "switchboard_destination_deliveries_total",
        "Deliveries a destination acknowledged, by destination kind (bot, agent, analytics)."
    );
    describe_counter!(
        "switchboard_bot_replies_total",
        "Reply messages returned by bots."
    );
    describe_histogram!(
        "switchboard_destination_duration_seconds",
        metrics::Unit::Seconds,
        "Time a destination took to acknowledge a message, by destination kind."
    );
    describe_counter!(
        "switchboard_destination_errors_total",
        "Failed deliveries to a destination, by destination kind."
    );
    describe_counter!(
        "switchboard_worker_rebalances_total",
        "Partition assignments and revocations."
    );
    describe_counter!(
        "switchboard_destination_retries_total",
        "Retries of a failed delivery, by destination kind."
    );
    describe_counter!(
        "switchboard_dlq_records_total",
        "Records written to the dead-letter topic, by reason (poison, destination)."
    );
    describe_counter!(
        "switchboard_ingest_dedupe_hits_total",
        "Publishes answered from the node's dedupe cache (duplicate = true)."
    );
    describe_gauge!(
        "switchboard_ingest_kafka_up",
        "1 while publishes can reach Kafka; 0 after every broker went down or the producer hit a fatal error."
    );
    describe_counter!(
        "switchboard_ingest_producer_replaced_total",
        "Kafka producers the node replaced after a fatal error (e.g. of the idempotent producer)."
    );
    describe_counter!(
        "switchboard_rules_reloads_total",
        "Routing rules file changes, by outcome (applied, refused)."
    );
    describe_histogram!(
        "switchboard_worker_state_rebuild_duration_seconds",
        metrics::Unit::Seconds,
        "Time to rebuild a partition's conversation states from the state topic."
    );
    describe_gauge!(
        "switchboard_worker_consumer_lag_records",
        "Records of each partition this worker owns that it has not consumed yet (0 for partitions it does not own)."
    );
    describe_gauge!(
        "switchboard_destination_circuit_open",
        "1 while a destination's circuit breaker is open (calls fail at once without reaching it), else 0."
    );
    describe_counter!(
        "switchboard_consent_rejections_total",
        "Outbound messages refused by consent rules, by channel and reason (outside_window, no_inbound, opted_out)."
    );
    describe_counter!(
        "switchboard_ownership_changes_total",
        "Conversation ownership changes, by event (handoff to a human, release to the bot, assign to an agent)."
    );
    describe_gauge!(
        "switchboard_agent_queue_depth",
        "Conversations waiting for an agent, per queue (exported by the queue's owner)."
    );
    describe_histogram!(
        "switchboard_agent_wait_duration_seconds",
        "Time from asking for a human to being assigned an agent, per queue."
    );
    describe_counter!(
        "switchboard_agent_assignments_total",
        "Assignments by outcome (assigned, sticky_hit, sticky_timeout, reassigned) and moves to another queue (overflow, after_hours)."
    );
    describe_counter!(
        "switchboard_agent_unassignments_total",
        "Conversations leaving their agent, by reason (closed, released, declined, no_accept, agent_offline)."
    );
    describe_gauge!(
        "switchboard_agent_held_conversations",
        "Conversations held by agents, per queue."
    );
    describe_gauge!(
        "switchboard_agent_utilization_ratio",
        "Held conversations over the capacity of the queue's online agents."
    );
    describe_gauge!(
        "switchboard_agents",
        "Agents per queue by presence (online, away, offline)."
    );
    describe_counter!(
        "switchboard_agent_queue_refused_total",
        "Tasks sent to the dead-letter topic because their queue held max_waiting conversations."
    );
    describe_counter!(
        "switchboard_agent_queue_rebalances_total",
        "Queue-stage partition rebalances, by event (assign, revoke)."
    );
    describe_histogram!(
        "switchboard_agent_queue_rebuild_duration_seconds",
        "Time to rebuild newly assigned partitions' queues from the queue-state topic."
    );
    describe_counter!(
        "switchboard_agent_queue_undecodable_total",
        "Queue-topic records that could not be decoded and were skipped."
    );
    describe_histogram!(
        "switchboard_end_to_end_duration_seconds",
        metrics::Unit::Seconds,
        "Time from a message's received_at at the ingestion node until every destination acknowledged it."
    );
    zero_known_series();
}

/// Creates the series whose labels are known in advance at zero, so the
/// first increase after a start shows in `rate()` and `increase()`.
fn zero_known_series() {
    // switchboard_ingest_requests_total: the ingestion service takes a
    // handle per label set when it starts, which creates them at zero.
    for outcome in ["routed", "poison", "duplicate", "skipped"] {
        metrics::counter!("switchboard_worker_records_total", "outcome" => outcome).absolute(0);
    }
    for kind in [
        "bot",
        "agent",
        "analytics",
        "outbound",
        "dlq",
        "state",
        "rejections",
    ] {
        metrics::counter!("switchboard_destination_errors_total", "kind" => kind).absolute(0);
        metrics::counter!("switchboard_destination_deliveries_total", "kind" => kind).absolute(0);
    }
    for reason in ["poison", "destination"] {
        metrics::counter!("switchboard_dlq_records_total", "reason" => reason).absolute(0);
    }
    for channel in ["whatsapp", "messenger", "instagram", "sms", "webchat"] {
        for reason in ["outside_window", "no_inbound", "opted_out"] {
            metrics::counter!("switchboard_consent_rejections_total", "channel" => channel, "reason" => reason)
                .absolute(0);
        }
    }
    for event in ["handoff", "release", "assign"] {
        metrics::counter!("switchboard_ownership_changes_total", "event" => event).absolute(0);
    }
    metrics::counter!("switchboard_ingest_kafka_errors_total").absolute(0);
    metrics::counter!("switchboard_ingest_dedupe_hits_total").absolute(0);
    metrics::counter!("switchboard_ingest_calls_shed_total").absolute(0);
    metrics::counter!("switchboard_ingest_producer_replaced_total").absolute(0);
}

#[cfg(test)]
mod tests {
    /// Every metric the code emits has help text (promtool wants it).
    #[test]
    fn every_emitted_metric_is_described() {
        fn names(text: &str) -> std::collections::BTreeSet<&str> {
            let is_name = |s: &&str| {
                s.len() > "switchboard_".len()
                    && s.starts_with("switchboard_")
                    && s.chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            };
            text.split('"').filter(is_name).collect()
        }
        // A metric is described by the first string after a `describe_*!(`,
        // wherever the component that emits it does so.
        fn described_in(text: &str) -> Vec<&str> {
            text.split("describe_")
                .skip(1)
                .filter_map(|rest| rest.split('"').nth(1))
                .collect()
        }
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let files: Vec<_> = ["broker/src", "workers/src", "benches/src"]
            .iter()
            .flat_map(|dir| walk(&root.join(dir)))
            .collect();
        let texts: Vec<String> = files
            .iter()
            .map(|f| std::fs::read_to_string(f).unwrap())
            .collect();
        let described: std::collections::BTreeSet<&str> =
            texts.iter().flat_map(|t| described_in(t)).collect();
        let mut undescribed = Vec::new();
        for text in &texts {
            undescribed.extend(
                names(text)
                    .into_iter()
                    .filter(|n| !described.contains(n))
                    .map(str::to_owned),
            );
        }
        assert!(
            undescribed.is_empty(),
            "no describe_*! for: {undescribed:?}"
        );
    }

    fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
        let mut files = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                files.extend(walk(&path));
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
        files
    }

    #[test]
    fn redaction_is_stable_and_hides_the_value() {
        let key = "acme/whatsapp/106540352242922:16505551234";
        let redacted = super::redact(key);
        assert_eq!(redacted, super::redact(key));
        assert_ne!(
            redacted,
            super::redact("acme/whatsapp/106540352242922:16505551235")
        );
        assert!(
            !redacted.contains("16505551234") && redacted.len() == 13,
            "{redacted}"
        );
    }
}
