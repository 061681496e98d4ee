//! The bounded Kafka producer behind every ingest RPC.
//!
//! [`Publisher::enqueue`] is synchronous: it takes an in-flight permit,
//! encodes the envelope and hands it to librdkafka in call order, so messages
//! of one conversation enter their partition in the order they were
//! published, even when their acks are awaited concurrently. The returned
//! [`PendingAck`] resolves once Kafka has the message (`acks=all`).

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use prost::Message;
use rdkafka::{
    ClientContext,
    error::KafkaError,
    message::{Header, OwnedHeaders},
    producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer},
    types::RDKafkaErrorCode,
};
use switchboard_proto::v1::Envelope;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::{
    config::BrokerConfig,
    error::IngestError,
    trace::{TRACEPARENT, TraceParent},
};

/// Where a message landed in Kafka.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    /// Kafka partition.
    pub partition: i32,
    /// Offset within the partition.
    pub offset: i64,
}

/// Content type header value of every message Switchboard writes.
pub const CONTENT_TYPE: &str = "application/x-protobuf; messageType=switchboard.v1.Envelope";

/// Tracks whether Kafka is reachable, from librdkafka's error events.
/// Cheap to clone: clones share the state.
#[derive(Clone, Default)]
pub struct KafkaHealth {
    down: Arc<AtomicBool>,
}

impl KafkaHealth {
    fn set_down(&self, down: bool) {
        if self.down.swap(down, Ordering::Relaxed) != down {
            if down {
                tracing::error!("all Kafka brokers are down; publishes fail fast with UNAVAILABLE");
            } else {
                tracing::info!("Kafka is reachable again");
            }
            metrics::gauge!("switchboard_ingest_kafka_up").set(if down { 0.0 } else { 1.0 });
        }
    }

    /// Whether librdkafka reported every broker down and none came back yet.
    pub fn is_down(&self) -> bool {
        self.down.load(Ordering::Relaxed)
    }
}

impl ClientContext for KafkaHealth {
    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) {
            self.set_down(true);
        } else {
            tracing::warn!(%error, reason, "kafka client error");
        }
    }
}

/// Publishes envelopes to the messages topic, with a bound on work in flight.
pub struct Publisher {
    producer: FutureProducer<KafkaHealth>,
    health: KafkaHealth,
    topic: String,
    in_flight: Arc<Semaphore>,
    max_in_flight: usize,
    max_envelope_bytes: usize,
    ack_duration: metrics::Histogram,
    kafka_errors: metrics::Counter,
}

impl Publisher {
    /// Creates the producer. Nothing is sent until the first publish.
    pub fn new(config: &BrokerConfig) -> anyhow::Result<Self> {
        let timeout_ms = config.ack_timeout.as_millis().to_string();
        let linger_ms = config.linger.as_millis().to_string();
        let queue = (config.max_in_flight * 2).max(1_000).to_string();
        let health = KafkaHealth::default();
        metrics::gauge!("switchboard_ingest_kafka_up").set(1.0);
        let producer = config
            .kafka
            .producer_config(&[
                ("linger.ms", &linger_ms),
                ("message.timeout.ms", &timeout_ms),
                ("queue.buffering.max.messages", &queue),
                // Notice a returning broker quickly.
                ("reconnect.backoff.max.ms", "1000"),
            ])
            .create_with_context(health.clone())?;
        Ok(Self {
            producer,
            health,
            topic: config.messages_topic.clone(),
            in_flight: Arc::new(Semaphore::new(config.max_in_flight)),
            max_in_flight: config.max_in_flight,
            max_envelope_bytes: config.max_envelope_bytes,
            ack_duration: metrics::histogram!("switchboard_ingest_kafka_ack_duration_seconds"),
            kafka_errors: metrics::counter!("switchboard_ingest_kafka_errors_total"),
        })
    }

    /// Takes an in-flight permit without waiting; fails with `Overloaded` at the bound.
    pub fn try_permit(&self) -> Result<OwnedSemaphorePermit, IngestError> {
        self.in_flight
            .clone()
            .try_acquire_owned()
            .map_err(|_| IngestError::Overloaded("too many publishes in flight"))
    }

    /// Waits for an in-flight permit (used by streams, which push back instead of shedding).
    pub async fn permit(&self) -> Result<OwnedSemaphorePermit, IngestError> {
        self.in_flight
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| IngestError::ShuttingDown)
    }

    /// Publishes in flight right now.
    pub fn in_flight(&self) -> usize {
        self.max_in_flight - self.in_flight.available_permits()
    }

    /// Hands a validated envelope to Kafka, in call order, holding `permit`
    /// until the ack arrives. `trace` (this hop's span) goes in the
    /// `traceparent` header.
    pub fn enqueue(
        &self,
        envelope: &Envelope,
        trace: TraceParent,
        permit: OwnedSemaphorePermit,
    ) -> Result<PendingAck, IngestError> {
        if self.health.is_down() {
            return Err(IngestError::Unavailable(KafkaError::Global(
                RDKafkaErrorCode::AllBrokersDown,
            )));
        }
        let payload = envelope.encode_to_vec();
        if payload.len() > self.max_envelope_bytes {
            return Err(IngestError::invalid(
                "envelope",
                format!(
                    "encodes to {} bytes, over the {} byte limit",
                    payload.len(),
                    self.max_envelope_bytes
                ),
            ));
        }
        let key = envelope.conversation_key();
        let traceparent = trace.to_string();
        let headers = OwnedHeaders::new_with_capacity(3)
            .insert(Header {
                key: "content-type",
                value: Some(CONTENT_TYPE),
            })
            .insert(Header {
                key: "message-id",
                value: Some(envelope.message_id.as_str()),
            })
            .insert(Header {
                key: TRACEPARENT,
                value: Some(traceparent.as_str()),
            });
        let record = FutureRecord::to(&self.topic)
            .key(&key)
            .payload(&payload)
            .headers(headers);
        let delivery = self
            .producer
            .send_result(record)
            .map_err(|(e, _)| IngestError::from_kafka(e))?;
        Ok(PendingAck {
            delivery,
            _permit: permit,
            started: Instant::now(),
            ack_duration: self.ack_duration.clone(),
            kafka_errors: self.kafka_errors.clone(),
        })
    }

    /// While Kafka is marked down, asks it for metadata every `interval` and
    /// clears the mark once it answers. Runs until `stop` fires.
    pub async fn watch_recovery(
        self: Arc<Self>,
        interval: Duration,
        stop: crate::shutdown::Shutdown,
    ) {
        let mut tick = tokio::time::interval(interval);
        while tokio::select! { _ = tick.tick() => true, _ = stop.cancelled() => false } {
            if !self.health.is_down() {
                continue;
            }
            let publisher = self.clone();
            let reachable = tokio::task::spawn_blocking(move || {
                publisher
                    .producer
                    .client()
                    .fetch_metadata(Some(&publisher.topic), interval)
                    .is_ok()
            })
            .await
            .unwrap_or(false);
            if reachable {
                self.health.set_down(false);
            }
        }
    }

    /// Waits up to `timeout` for every queued message to be acknowledged.
    pub fn flush(&self, timeout: Duration) {
        if let Err(e) = self.producer.flush(timeout) {
            tracing::warn!(error = %e, "producer flush did not complete");
        }
    }
}

/// A message handed to Kafka, not yet acknowledged.
pub struct PendingAck {
    delivery: DeliveryFuture,
    _permit: OwnedSemaphorePermit,
    started: Instant,
    ack_duration: metrics::Histogram,
    kafka_errors: metrics::Counter,
}

impl PendingAck {
    /// Waits for Kafka's delivery report.
    pub async fn wait(self) -> Result<Ack, IngestError> {
        let result = self.delivery.await;
        self.ack_duration
            .record(self.started.elapsed().as_secs_f64());
        match result {
            Ok(Ok(delivery)) => Ok(Ack {
                partition: delivery.partition,
                offset: delivery.offset,
            }),
            Ok(Err((error, _))) => {
                self.kafka_errors.increment(1);
                Err(IngestError::from_kafka(error))
            }
            Err(_canceled) => Err(IngestError::ShuttingDown),
        }
    }
}
