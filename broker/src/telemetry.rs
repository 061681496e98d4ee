//! Logs and metrics, shared by every Switchboard binary.
//!
//! Metric names follow `docs/metrics.md`: `switchboard_<stage>_<noun>_<unit>[_total]`,
//! base units, and labels from small fixed sets only.

use std::{net::SocketAddr, sync::OnceLock};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};

/// Initializes `tracing`. `RUST_LOG` sets levels (default `info`);
/// `SWITCHBOARD_LOG_FORMAT=json` switches to structured JSON lines.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,librdkafka=warn,rdkafka=warn")
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(
            std::io::IsTerminal::is_terminal(&std::io::stderr())
                && std::env::var_os("NO_COLOR").is_none(),
        )
        .with_writer(std::io::stderr);
    let json =
        std::env::var("SWITCHBOARD_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
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

/// Installs the Prometheus recorder and serves `/metrics` on `addr`. Only the
/// first call in a process installs anything; later calls return its result.
pub fn install_metrics(addr: SocketAddr) -> Result<(), String> {
    static INSTALLED: OnceLock<Result<(), String>> = OnceLock::new();
    INSTALLED
        .get_or_init(|| {
            PrometheusBuilder::new()
                .with_http_listener(addr)
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
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
        "Envelopes received by the ingestion node, by RPC and resulting gRPC code."
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
}

#[cfg(test)]
mod tests {
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
