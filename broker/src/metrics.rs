//! The ingestion node's metrics: their names and help texts, described once
//! the Prometheus recorder is installed (`switchboard_runtime::telemetry`).

use metrics::{describe_counter, describe_gauge, describe_histogram};

/// Describes the node's metrics, and creates the series whose labels are
/// known in advance at zero (the request counters are created by the
/// service itself, one handle per label set).
pub fn describe() {
    describe_counter!(
        "switchboard_ingest_connection_full_total",
        "Calls that took the last of their client connection's max_calls_per_connection HTTP/2 streams; until one of them ends, that client's next calls wait for a stream."
    );
    describe_counter!(
        "switchboard_ingest_requests_total",
        "Webhooks and envelopes received by the ingestion node, by RPC (http_webhook: the HTTP webhook listener, once the webhook's signature checked), channel and resulting gRPC code."
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
    crate::http::metrics::describe();
    metrics::counter!("switchboard_ingest_kafka_errors_total").absolute(0);
    metrics::counter!("switchboard_ingest_connection_full_total").absolute(0);
    metrics::counter!("switchboard_ingest_dedupe_hits_total").absolute(0);
    metrics::counter!("switchboard_ingest_producer_replaced_total").absolute(0);
}
