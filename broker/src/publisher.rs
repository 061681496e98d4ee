//! The bounded Kafka producer behind every ingest RPC.
//!
//! [`Publisher::enqueue`] is synchronous: it takes the envelope's bytes from
//! the in-flight byte budget, encodes it and hands it to librdkafka in call
//! order, so messages of one conversation enter their partition in the order
//! they were published, even when their acks are awaited concurrently. The
//! returned [`PendingAck`] resolves once Kafka has the message (`acks=all`).
//!
//! **Permits are freed by Kafka's answer, not by the caller.** The in-flight
//! permits travel with the record into librdkafka and are dropped by the
//! delivery callback, so a caller that goes away before the ack (a client
//! deadline, a closed stream, a webhook that failed half-way) never leaks a
//! slot: the node's capacity is back as soon as Kafka answers.
//!
//! **Health.** [`KafkaHealth`] follows librdkafka's error events: all
//! brokers down, or a fatal error of the idempotent producer. Either makes
//! publishes fail fast with `UNAVAILABLE` and the node report NOT_SERVING;
//! [`Publisher::watch_recovery`] clears the first once a broker answers, and
//! replaces a producer that hit a fatal error with a new one.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use arc_swap::ArcSwap;
use prost::Message;
use rdkafka::{
    ClientContext, Message as _,
    config::FromClientConfigAndContext,
    error::KafkaError,
    message::{Header, OwnedHeaders},
    producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer},
    types::RDKafkaErrorCode,
};
use switchboard_proto::v1::Envelope;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot, watch};

use switchboard_runtime::{
    kafka::{KafkaConfig, ReportingContext},
    trace::{TRACEPARENT, TraceParent},
};

use crate::error::IngestError;

/// Where a message landed in Kafka.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    /// Kafka partition.
    pub partition: i32,
    /// Offset within the partition.
    pub offset: i64,
}

/// The publisher's own settings (a section of the node's config).
#[derive(Debug, Clone, PartialEq)]
pub struct PublisherConfig {
    /// How to reach Kafka.
    pub kafka: KafkaConfig,
    /// Topic that canonical envelopes are published to.
    pub topic: String,
    /// Most publishes waiting for a Kafka ack at once.
    pub max_in_flight: usize,
    /// Most encoded envelope bytes waiting for a Kafka ack at once.
    pub max_in_flight_bytes: usize,
    /// Largest accepted encoded envelope, in bytes.
    pub max_envelope_bytes: usize,
    /// librdkafka `message.timeout.ms`.
    pub ack_timeout: Duration,
    /// librdkafka `linger.ms`.
    pub linger: Duration,
}

/// Why Kafka cannot take publishes right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KafkaState {
    /// Publishes go through.
    Up,
    /// librdkafka reports every broker down.
    AllBrokersDown,
    /// The producer hit a fatal error and must be replaced.
    Fatal,
}

/// Tracks whether Kafka is usable, from librdkafka's error events.
/// Cheap to clone: clones share the state.
#[derive(Clone)]
pub struct KafkaHealth {
    state: Arc<watch::Sender<KafkaState>>,
}

impl Default for KafkaHealth {
    fn default() -> Self {
        Self {
            state: Arc::new(watch::Sender::new(KafkaState::Up)),
        }
    }
}

impl KafkaHealth {
    fn set(&self, state: KafkaState) {
        let changed = self.state.send_if_modified(|current| {
            // A fatal producer is only cleared by a new one (`recovered`).
            if *current == state || *current == KafkaState::Fatal {
                return false;
            }
            *current = state;
            true
        });
        if changed {
            self.report(state);
        }
    }

    /// A new producer replaced the one that hit a fatal error.
    fn recovered(&self) {
        self.state.send_replace(KafkaState::Up);
        self.report(KafkaState::Up);
    }

    fn report(&self, state: KafkaState) {
        match state {
            KafkaState::AllBrokersDown => {
                tracing::error!("all Kafka brokers are down; publishes fail fast with UNAVAILABLE")
            }
            KafkaState::Fatal => tracing::error!(
                "the Kafka producer hit a fatal error; publishes fail with UNAVAILABLE until it is replaced"
            ),
            KafkaState::Up => tracing::info!("Kafka is serving publishes again"),
        }
        metrics::gauge!(KAFKA_UP).set(if state == KafkaState::Up { 1.0 } else { 0.0 });
    }

    /// The current state.
    pub fn state(&self) -> KafkaState {
        *self.state.borrow()
    }

    /// Whether publishes fail fast right now.
    pub fn is_down(&self) -> bool {
        self.state() != KafkaState::Up
    }

    /// A receiver that sees every change of state (for the health service).
    pub fn subscribe(&self) -> watch::Receiver<KafkaState> {
        self.state.subscribe()
    }
}

/// `switchboard_ingest_kafka_up`: 1 while publishes can reach Kafka.
const KAFKA_UP: &str = "switchboard_ingest_kafka_up";

/// What travels with a record through librdkafka: the permits it holds, and
/// where to send Kafka's answer.
struct InFlight {
    _permit: OwnedSemaphorePermit,
    _bytes: OwnedSemaphorePermit,
    started: Instant,
    answer: oneshot::Sender<Result<Ack, KafkaError>>,
}

/// The producer's context: reports errors and health, and answers each
/// delivery, freeing its permits at once.
struct PublisherContext {
    health: KafkaHealth,
    /// Set once a new producer replaced this one: its errors no longer
    /// say anything about Kafka's health.
    retired: AtomicBool,
    reporting: ReportingContext,
    ack_duration: metrics::Histogram,
    kafka_errors: metrics::Counter,
}

impl ClientContext for PublisherContext {
    fn error(&self, error: KafkaError, reason: &str) {
        if self.retired.load(Ordering::Relaxed) {
            return;
        }
        // A fatal error arrives here with its underlying code; the
        // recovery watch asks the client whether it is fatal.
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) {
            self.health.set(KafkaState::AllBrokersDown);
        }
        self.reporting.error(error, reason);
    }
}

impl ProducerContext for PublisherContext {
    type DeliveryOpaque = Box<InFlight>;

    fn delivery(&self, result: &DeliveryResult<'_>, in_flight: Box<InFlight>) {
        let InFlight {
            started, answer, ..
        } = *in_flight; // the permits drop here, whoever is waiting
        self.ack_duration.record(started.elapsed().as_secs_f64());
        let outcome = match result {
            Ok(message) => Ok(Ack {
                partition: message.partition(),
                offset: message.offset(),
            }),
            Err((error, _)) => {
                self.kafka_errors.increment(1);
                Err(error.clone())
            }
        };
        // The caller may be gone; its permits are freed all the same.
        let _ = answer.send(outcome);
    }
}

type Producer_ = ThreadedProducer<PublisherContext>;

/// Publishes envelopes to the messages topic, with bounds on work in flight.
pub struct Publisher {
    config: PublisherConfig,
    producer: ArcSwap<Producer_>,
    health: KafkaHealth,
    in_flight: Arc<Semaphore>,
    in_flight_bytes: Arc<Semaphore>,
}

impl Publisher {
    /// Creates the producer. Nothing is sent until the first publish.
    pub fn new(config: PublisherConfig) -> anyhow::Result<Self> {
        let health = KafkaHealth::default();
        metrics::gauge!(KAFKA_UP).set(1.0);
        let producer = create_producer(&config, &health)?;
        Ok(Self {
            producer: ArcSwap::from_pointee(producer),
            health,
            in_flight: Arc::new(Semaphore::new(config.max_in_flight)),
            // A semaphore holds at most `usize::MAX >> 3` permits.
            in_flight_bytes: Arc::new(Semaphore::new(
                config.max_in_flight_bytes.min(Semaphore::MAX_PERMITS),
            )),
            config,
        })
    }

    /// Kafka's health as this producer sees it.
    pub fn health(&self) -> &KafkaHealth {
        &self.health
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
        self.config.max_in_flight - self.in_flight.available_permits()
    }

    /// Hands a validated envelope to Kafka, in call order. `permit` and the
    /// envelope's bytes are held until Kafka answers, whether or not anyone
    /// waits for the answer. `trace` (this hop's span) goes in the
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
        if payload.len() > self.config.max_envelope_bytes {
            return Err(IngestError::invalid(
                "envelope",
                format!(
                    "encodes to {} bytes, over the {} byte limit (max_envelope_bytes)",
                    payload.len(),
                    self.config.max_envelope_bytes
                ),
            ));
        }
        let bytes = self
            .in_flight_bytes
            .clone()
            .try_acquire_many_owned(u32::try_from(payload.len().max(1)).unwrap_or(u32::MAX))
            .map_err(|_| IngestError::Overloaded("too many bytes in flight"))?;
        let key = envelope.conversation_key();
        let traceparent = trace.encode();
        // The trace context is the record's only header: the payload says
        // the rest (README, "Records on Kafka").
        let headers = OwnedHeaders::new_with_capacity(1).insert(Header {
            key: TRACEPARENT,
            value: Some(traceparent.as_slice()),
        });
        let (answer, ack) = oneshot::channel();
        let in_flight = Box::new(InFlight {
            _permit: permit,
            _bytes: bytes,
            started: Instant::now(),
            answer,
        });
        let record = BaseRecord::with_opaque_to(&self.config.topic, in_flight)
            .key(&key)
            .payload(&payload)
            .headers(headers);
        self.producer
            .load()
            .send(record)
            .map_err(|(e, _)| IngestError::from_kafka(e))?;
        Ok(PendingAck { ack })
    }

    /// Every `interval` until `stop` fires: while all brokers are marked
    /// down, asks Kafka for metadata and clears the mark once it answers;
    /// once the producer reports a fatal error, marks Kafka unusable (the
    /// node goes NOT_SERVING), and at the next tick replaces the producer
    /// (the old one's queued messages fail, and their callers get
    /// `UNAVAILABLE`).
    pub async fn watch_recovery(
        self: Arc<Self>,
        interval: Duration,
        stop: switchboard_runtime::shutdown::Shutdown,
    ) {
        let mut tick = tokio::time::interval(interval);
        while tokio::select! { _ = tick.tick() => true, _ = stop.cancelled() => false } {
            if self.health.state() != KafkaState::Fatal
                && let Some((code, reason)) = self.producer.load().client().fatal_error()
            {
                tracing::error!(%code, reason, "the Kafka producer hit a fatal error");
                self.health.set(KafkaState::Fatal);
                continue;
            }
            match self.health.state() {
                KafkaState::Up => {}
                KafkaState::AllBrokersDown => {
                    let producer = self.producer.load_full();
                    let topic = self.config.topic.clone();
                    let reachable = tokio::task::spawn_blocking(move || {
                        producer
                            .client()
                            .fetch_metadata(Some(&topic), interval)
                            .is_ok()
                    })
                    .await
                    .unwrap_or(false);
                    if reachable {
                        self.health.set(KafkaState::Up);
                    }
                }
                KafkaState::Fatal => self.replace_producer(),
            }
        }
    }

    /// Replaces a producer that hit a fatal error with a new one.
    fn replace_producer(&self) {
        tracing::warn!("replacing the Kafka producer after a fatal error");
        metrics::counter!(PRODUCER_REPLACED).increment(1);
        match create_producer(&self.config, &self.health) {
            Ok(producer) => {
                let old = self.producer.swap(Arc::new(producer));
                old.context().retired.store(true, Ordering::Relaxed);
                self.health.recovered();
                // Whatever the old producer still holds fails, answering
                // its callers and freeing their permits.
                tokio::task::spawn_blocking(move || {
                    old.purge(rdkafka::producer::PurgeConfig::default().queue().inflight());
                    let _ = old.flush(Duration::from_secs(1));
                });
            }
            Err(e) => tracing::error!(error = %e, "cannot create a new Kafka producer"),
        }
    }

    /// Waits up to `timeout` for every queued message to be acknowledged.
    pub fn flush(&self, timeout: Duration) {
        if let Err(e) = self.producer.load().flush(timeout) {
            tracing::warn!(error = %e, "producer flush did not complete");
        }
    }
}

/// `switchboard_ingest_producer_replaced_total`: producers replaced after a fatal error.
const PRODUCER_REPLACED: &str = "switchboard_ingest_producer_replaced_total";

fn create_producer(config: &PublisherConfig, health: &KafkaHealth) -> anyhow::Result<Producer_> {
    let timeout_ms = config.ack_timeout.as_millis().to_string();
    let linger_ms = config.linger.as_millis().to_string();
    let queue = (config.max_in_flight * 2).max(1_000).to_string();
    // librdkafka does not split a batch the broker refuses as too large: a
    // batch over the topic's `max.message.bytes` would fail every envelope
    // in it. Within `max_envelope_bytes`, which the topic must take anyway,
    // an envelope too large for the topic goes in a batch of its own.
    let batch_bytes = config
        .max_envelope_bytes
        .min(KafkaConfig::DEFAULT_BATCH_BYTES)
        .to_string();
    let context = PublisherContext {
        health: health.clone(),
        retired: AtomicBool::new(false),
        reporting: ReportingContext::new(&config.kafka.bootstrap_servers, "ingest producer"),
        ack_duration: metrics::histogram!("switchboard_ingest_kafka_ack_duration_seconds"),
        kafka_errors: metrics::counter!("switchboard_ingest_kafka_errors_total"),
    };
    let client = config.kafka.producer_config(&[
        ("linger.ms", &linger_ms),
        ("message.timeout.ms", &timeout_ms),
        ("queue.buffering.max.messages", &queue),
        ("batch.size", &batch_bytes),
        // Notice a returning broker quickly.
        ("reconnect.backoff.max.ms", "1000"),
    ]);
    Ok(Producer_::from_config_and_context(&client, context)?)
}

/// A message handed to Kafka, not yet acknowledged. Dropping it does not
/// cancel the publish, and frees nothing early: Kafka's answer does.
pub struct PendingAck {
    ack: oneshot::Receiver<Result<Ack, KafkaError>>,
}

impl PendingAck {
    /// Waits for Kafka's delivery report.
    pub async fn wait(self) -> Result<Ack, IngestError> {
        match self.ack.await {
            Ok(Ok(ack)) => Ok(ack),
            Ok(Err(error)) => Err(IngestError::from_kafka(error)),
            Err(_dropped) => Err(IngestError::ShuttingDown),
        }
    }
}
