//! Kafka-topic outputs: the agent-queue topic, the analytics topic, the
//! per-channel outbound topics, the dead-letter and rejections topics, the
//! agents' topics. (Conversation states have a writer of their own,
//! [`crate::state::StateWriter`].)
//!
//! All are written with the ingestion node's producer settings
//! ([`KafkaConfig::producer_config`](switchboard_runtime::kafka::KafkaConfig::producer_config)),
//! so a delivery counts only once Kafka has it.

use std::{
    pin::Pin,
    task::{Context, Poll, ready},
    time::{Duration, Instant},
};

use prost::Message;
use rdkafka::{
    error::KafkaError,
    message::{Header, OwnedHeaders},
    producer::{DeliveryFuture, FutureProducer, FutureRecord},
    types::RDKafkaErrorCode,
};
use switchboard_proto::v1::{
    AnalyticsRecord, AssignmentEvent, Channel, Envelope, QueueEvent, QueueSnapshot, Rejection,
    RouteDecision,
};
use switchboard_runtime::{
    kafka::KafkaConfig,
    trace::{TRACEPARENT, TraceParent},
};

use super::DestinationError;

/// A message that could not be delivered, for the dead-letter topic.
pub struct DeadLetter<'a> {
    /// Kafka key: the conversation key, empty when unknown.
    pub key: &'a str,
    /// The original record's value.
    pub payload: &'a [u8],
    /// Why delivery failed.
    pub error: String,
    /// The destination that failed (`bot:NAME`, `agent:QUEUE`, or `none`).
    pub destination: &'a str,
    /// Delivery attempts made.
    pub attempts: u32,
    /// Where the message was read from.
    pub source: Source<'a>,
}

/// Dead-letter record headers.
pub mod headers {
    /// Why delivery failed.
    pub const ERROR: &str = "switchboard-error";
    /// The destination that failed.
    pub const DESTINATION: &str = "switchboard-destination";
    /// Delivery attempts made.
    pub const ATTEMPTS: &str = "switchboard-attempts";
    /// On a replayed record: where it was replayed from
    /// (`topic/partition/offset`). Replayed records skip the dedupe check.
    pub const REPLAYED_FROM: &str = "switchboard-replayed-from";
    /// Topic the message was read from.
    pub const ORIGINAL_TOPIC: &str = "switchboard-original-topic";
    /// Partition the message was read from.
    pub const ORIGINAL_PARTITION: &str = "switchboard-original-partition";
    /// Offset the message was read from.
    pub const ORIGINAL_OFFSET: &str = "switchboard-original-offset";

    /// The headers of a dead letter that has no source offset (the queue
    /// stage's): why, which destination, and the topic it came from.
    pub fn of_dead_letter(
        error: &str,
        destination: &str,
        original_topic: &str,
    ) -> rdkafka::message::OwnedHeaders {
        use rdkafka::message::{Header, OwnedHeaders};
        [
            (ERROR, error),
            (DESTINATION, destination),
            (ORIGINAL_TOPIC, original_topic),
        ]
        .into_iter()
        .fold(OwnedHeaders::new(), |h, (key, value)| {
            h.insert(Header {
                key,
                value: Some(value),
            })
        })
    }
}

/// Largest queue snapshot, in bytes (also the queue-state topic's
/// `max.message.bytes`).
pub const QUEUE_SNAPSHOT_MAX_BYTES: &str = "8388608";

/// What a queue snapshot may take: its topic's limit, less room for the
/// record's key, headers and batch framing. Snapshots over it are trimmed
/// before they are written ([`crate::agents::engine::QueueBook::fit`]).
pub const QUEUE_SNAPSHOT_BUDGET_BYTES: usize = 8 * 1024 * 1024 - 256 * 1024;

/// Whether a failed Kafka write may succeed if tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteRetry {
    /// A timeout, a full queue, a broker or leader away: may clear up.
    Retryable,
    /// The record or the client can never be accepted as it is: too large
    /// for the topic, not authorized, no such topic, an invalid record.
    Fatal,
}

/// Sorts a producer error into retryable and fatal. librdkafka has already
/// retried what it retries within `message.timeout.ms`; what is fatal here
/// fails the same way every time, so retrying it would loop forever.
pub fn classify(error: &KafkaError) -> WriteRetry {
    use RDKafkaErrorCode as C;
    let Some(code) = error.rdkafka_error_code() else {
        return WriteRetry::Retryable;
    };
    match code {
        // Too large for the topic (max.message.bytes) or the client.
        C::MessageSizeTooLarge
        | C::MessageBatchTooLarge
        | C::InvalidMessageSize
        // Not allowed.
        | C::TopicAuthorizationFailed
        | C::ClusterAuthorizationFailed
        | C::GroupAuthorizationFailed
        | C::TransactionalIdAuthorizationFailed
        | C::PolicyViolation
        // No such topic or partition (librdkafka waited for metadata).
        | C::UnknownTopic
        | C::UnknownPartition
        | C::UnknownTopicOrPartition
        | C::InvalidTopic
        // A record the broker can never take.
        | C::InvalidRecord
        | C::UnsupportedForMessageFormat
        | C::InvalidRequiredAcks
        | C::BadMessage
        | C::InvalidArgument => WriteRetry::Fatal,
        _ => WriteRetry::Retryable,
    }
}

/// Headers carrying this hop's trace context.
fn traced(trace: &TraceParent) -> OwnedHeaders {
    OwnedHeaders::new_with_capacity(1).insert(Header {
        key: TRACEPARENT,
        value: Some(trace.encode().as_slice()),
    })
}

/// Where a message was read from.
#[derive(Debug, Clone, Copy)]
pub struct Source<'a> {
    /// Topic.
    pub topic: &'a str,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// This worker's span of the message's trace, sent on to bots and in
    /// the headers of everything written for the message.
    pub trace: TraceParent,
}

/// The topics the workers write to: the `TopicOutputs`' own section of
/// the workers' configuration.
#[derive(Debug, Clone)]
pub struct TopicsConfig {
    /// How to reach Kafka.
    pub kafka: KafkaConfig,
    /// Agent tasks and queue events, keyed by queue.
    pub agent_queue_topic: String,
    /// Every message with its route decision.
    pub analytics_topic: String,
    /// Messages that could not be delivered or decoded.
    pub dlq_topic: String,
    /// Outbound messages go to `<prefix>.<channel>`.
    pub outbound_topic_prefix: String,
    /// Outbound messages refused by consent rules.
    pub rejections_topic: String,
    /// Canonical envelopes (agents' replies enter here).
    pub messages_topic: String,
    /// Assignment events for desks.
    pub assignments_topic: String,
    /// Compacted queue snapshots.
    pub queue_state_topic: String,
}

/// The outbound topic of `channel`: `<prefix>.<channel slug>`.
pub fn outbound_topic(prefix: &str, channel: Channel) -> String {
    format!("{prefix}.{}", channel.slug())
}

/// A record for one of the output topics, kept until Kafka acknowledges
/// it, so it can be sent again.
pub struct Outgoing<'a> {
    /// The destination kind, for errors.
    pub kind: &'static str,
    /// The topic.
    pub topic: &'a str,
    /// The record's key.
    pub key: String,
    /// The encoded value.
    pub payload: Vec<u8>,
    /// The trace context for its header, if any.
    pub trace: Option<TraceParent>,
}

impl<'a> Outgoing<'a> {
    fn new(
        kind: &'static str,
        topic: &'a str,
        key: &str,
        value: &impl Message,
        trace: &TraceParent,
    ) -> Self {
        Self {
            kind,
            topic,
            key: key.to_owned(),
            payload: value.encode_to_vec(),
            trace: Some(*trace),
        }
    }
}

/// A record handed to the producer, and Kafka's answer to come.
pub struct Enqueued<'a> {
    /// The record, for a resend.
    pub record: Outgoing<'a>,
    delivery: Option<Result<DeliveryFuture, KafkaError>>,
    /// When it was handed over.
    pub at: Instant,
}

impl Enqueued<'_> {
    /// Kafka's answer to the first attempt. A record the producer could
    /// not even take (its queue full) fails as retryable. Once failed, it
    /// keeps answering with the same error.
    pub fn poll_acknowledged(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), DestinationError>> {
        let error = match &mut self.delivery {
            Some(Ok(delivery)) => match ready!(Pin::new(delivery).poll(cx)) {
                Ok(Ok(_)) => return Poll::Ready(Ok(())),
                Ok(Err((e, _))) => e,
                Err(_canceled) => KafkaError::Canceled,
            },
            Some(Err(e)) => e.clone(),
            None => KafkaError::Canceled,
        };
        let failed = DestinationError {
            kind: self.record.kind,
            name: self.record.topic.to_owned(),
            message: error.to_string(),
            retryable: classify(&error) == WriteRetry::Retryable,
        };
        self.delivery = Some(Err(error));
        Poll::Ready(Err(failed))
    }

    /// [`Self::poll_acknowledged`], awaited.
    pub async fn acknowledged(&mut self) -> Result<(), DestinationError> {
        std::future::poll_fn(|cx| self.poll_acknowledged(cx)).await
    }
}

/// The producer and topic names of the Kafka-topic destinations.
pub struct TopicOutputs {
    producer: FutureProducer,
    agent_queue_topic: String,
    analytics_topic: String,
    dlq_topic: String,
    /// One per channel, indexed by the channel's value.
    outbound_topics: Vec<String>,
    rejections_topic: String,
    messages_topic: String,
    assignments_topic: String,
    queue_state_topic: String,
}

impl TopicOutputs {
    /// Creates the producer. Blocking: it reads the topics' limits from
    /// Kafka (up to [`KafkaConfig::TOPIC_LIMITS_TIMEOUT`]) to bound its batches.
    pub fn new(config: &TopicsConfig) -> anyhow::Result<Self> {
        let outbound_topics: Vec<String> = Channel::ALL
            .iter()
            .map(|c| outbound_topic(&config.outbound_topic_prefix, *c))
            .collect();
        let mut topics = vec![
            config.agent_queue_topic.as_str(),
            config.analytics_topic.as_str(),
            config.dlq_topic.as_str(),
            config.rejections_topic.as_str(),
            config.messages_topic.as_str(),
            config.assignments_topic.as_str(),
            config.queue_state_topic.as_str(),
        ];
        topics.extend(outbound_topics.iter().map(String::as_str));
        // One producer writes every topic, and a batch over its topic's
        // limit would fail every record in it: an analytics topic that takes
        // 64 KiB would otherwise dead-letter whole batches of messages that
        // each fit. The smallest limit bounds them all.
        let batch_bytes = config
            .kafka
            .batch_bytes_within(&topics, "outputs")
            .to_string();
        let producer = config
            .kafka
            .producer_config(&[
                ("linger.ms", "2"),
                ("batch.size", &batch_bytes),
                // librdkafka retries a record in order, behind the records
                // enqueued before it, for this long: long enough to ride out
                // a partition leader moving to another broker or a Kafka
                // restart. A record that fails after it is sent again by
                // the router and may land after its conversation's later
                // records.
                ("message.timeout.ms", "120000"),
                // Queue snapshots; the queue-state topic allows as much.
                ("message.max.bytes", QUEUE_SNAPSHOT_MAX_BYTES),
            ])
            .create()?;
        Ok(Self {
            producer,
            agent_queue_topic: config.agent_queue_topic.clone(),
            analytics_topic: config.analytics_topic.clone(),
            dlq_topic: config.dlq_topic.clone(),
            outbound_topics,
            rejections_topic: config.rejections_topic.clone(),
            messages_topic: config.messages_topic.clone(),
            assignments_topic: config.assignments_topic.clone(),
            queue_state_topic: config.queue_state_topic.clone(),
        })
    }

    /// Publishes an assignment event for agent desks, keyed by conversation.
    pub async fn assignment(&self, event: &AssignmentEvent) -> Result<(), DestinationError> {
        self.send(
            "assignments",
            &self.assignments_topic,
            &event.conversation_key,
            Some(&event.encode_to_vec()),
            OwnedHeaders::new(),
        )
        .await
    }

    /// Publishes an envelope (a control event) to the messages topic, keyed
    /// by conversation, for the conversation stage.
    pub async fn message(&self, envelope: &Envelope) -> Result<(), DestinationError> {
        self.send(
            "messages",
            &self.messages_topic,
            &envelope.conversation_key(),
            Some(&envelope.encode_to_vec()),
            OwnedHeaders::new(),
        )
        .await
    }

    /// Publishes a queue's snapshot to the compacted queue-state topic.
    pub async fn queue_snapshot(&self, snapshot: &QueueSnapshot) -> Result<(), DestinationError> {
        self.send(
            "queue_state",
            &self.queue_state_topic,
            &snapshot.queue,
            Some(&snapshot.encode_to_vec()),
            OwnedHeaders::new(),
        )
        .await
    }

    /// An analytics record, keyed by conversation.
    pub fn analytics(
        &self,
        key: &str,
        record: &AnalyticsRecord,
        trace: &TraceParent,
    ) -> Outgoing<'_> {
        Outgoing::new("analytics", &self.analytics_topic, key, record, trace)
    }

    /// The analytics record of `envelope` routed by `decision`, keyed by
    /// conversation: encoded as an [`AnalyticsRecord`] holding both, without
    /// building one (the envelope stays where it is). `encoded` is the
    /// envelope's bytes as read, when routing changed nothing in it: they
    /// are embedded as they are, instead of encoding the envelope again.
    pub fn analytics_of(
        &self,
        key: &str,
        envelope: &Envelope,
        encoded: Option<&[u8]>,
        decision: &RouteDecision,
        trace: &TraceParent,
    ) -> Outgoing<'_> {
        use prost::encoding::{
            WireType, encode_key, encode_varint, encoded_len_varint, key_len, message,
        };
        let envelope_len = encoded.map_or_else(|| envelope.encoded_len(), <[u8]>::len);
        let mut payload = Vec::with_capacity(
            key_len(1)
                + encoded_len_varint(envelope_len as u64)
                + envelope_len
                + message::encoded_len(2, decision),
        );
        match encoded {
            Some(bytes) => {
                encode_key(1, WireType::LengthDelimited, &mut payload);
                encode_varint(bytes.len() as u64, &mut payload);
                payload.extend_from_slice(bytes);
            }
            None => message::encode(1, envelope, &mut payload),
        }
        message::encode(2, decision, &mut payload);
        Outgoing {
            kind: "analytics",
            topic: &self.analytics_topic,
            key: key.to_owned(),
            payload,
            trace: Some(*trace),
        }
    }

    /// An outbound envelope (a bot's reply, a business's send) for its
    /// channel's outbound topic, keyed by conversation.
    pub fn outbound(&self, envelope: &Envelope, trace: &TraceParent) -> Outgoing<'_> {
        // `Channel::ALL` is in value order, so a channel is its own index.
        let topic = &self.outbound_topics[envelope.channel() as usize];
        Outgoing::new(
            "outbound",
            topic,
            &envelope.conversation_key(),
            envelope,
            trace,
        )
    }

    /// An agent task or queue event, keyed by its queue so one queue's
    /// events stay in order.
    pub fn queue_task(&self, event: &QueueEvent, trace: &TraceParent) -> Outgoing<'_> {
        Outgoing::new("agent", &self.agent_queue_topic, &event.queue, event, trace)
    }

    /// An outbound message that consent rules refused.
    pub fn rejection(&self, key: &str, rejection: &Rejection, trace: &TraceParent) -> Outgoing<'_> {
        Outgoing::new("rejections", &self.rejections_topic, key, rejection, trace)
    }

    /// Hands `record` to the producer without waiting: Kafka's answer comes
    /// with [`Enqueued::acknowledged`]. The producer keeps one partition's
    /// records in the order they were enqueued.
    pub fn enqueue<'a>(&self, record: Outgoing<'a>) -> Enqueued<'a> {
        let mut future = FutureRecord::to(record.topic)
            .key(&record.key)
            .payload(&record.payload);
        if let Some(trace) = &record.trace {
            future = future.headers(traced(trace));
        }
        let delivery = self.producer.send_result(future).map_err(|(e, _)| e);
        Enqueued {
            record,
            delivery: Some(delivery),
            at: Instant::now(),
        }
    }

    /// Sends `record` again and waits for Kafka's answer.
    pub async fn resend(&self, record: &Outgoing<'_>) -> Result<(), DestinationError> {
        let headers = record.trace.as_ref().map(traced).unwrap_or_default();
        self.send(
            record.kind,
            record.topic,
            &record.key,
            Some(record.payload.as_slice()),
            headers,
        )
        .await
    }

    /// Publishes a dead letter, with headers saying why and where it came from.
    pub async fn dead_letter(&self, letter: &DeadLetter<'_>) -> Result<(), DestinationError> {
        let (attempts, partition, offset) = (
            letter.attempts.to_string(),
            letter.source.partition.to_string(),
            letter.source.offset.to_string(),
        );
        let headers = [
            (headers::ERROR, letter.error.as_str()),
            (headers::DESTINATION, letter.destination),
            (headers::ATTEMPTS, attempts.as_str()),
            (headers::ORIGINAL_TOPIC, letter.source.topic),
            (headers::ORIGINAL_PARTITION, partition.as_str()),
            (headers::ORIGINAL_OFFSET, offset.as_str()),
        ]
        .into_iter()
        .fold(OwnedHeaders::new_with_capacity(6), |h, (key, value)| {
            h.insert(Header {
                key,
                value: Some(value),
            })
        });
        self.send(
            "dlq",
            &self.dlq_topic,
            letter.key,
            Some(letter.payload),
            headers,
        )
        .await
    }

    /// Publishes a record as is (the queue stage's dead letters).
    pub async fn raw(
        &self,
        topic: &str,
        key: &str,
        payload: &[u8],
        headers: OwnedHeaders,
    ) -> Result<(), DestinationError> {
        self.send("dlq", topic, key, Some(payload), headers).await
    }

    async fn send(
        &self,
        kind: &'static str,
        topic: &str,
        key: &str,
        payload: Option<&[u8]>,
        headers: OwnedHeaders,
    ) -> Result<(), DestinationError> {
        let mut record = FutureRecord::to(topic).key(key).headers(headers);
        if let Some(payload) = payload {
            record = record.payload(payload);
        }
        self.producer
            .send(record, Duration::from_secs(5))
            .await
            .map(|_| ())
            .map_err(|(e, _)| DestinationError {
                kind,
                name: topic.to_owned(),
                message: e.to_string(),
                retryable: classify(&e) == WriteRetry::Retryable,
            })
    }
}

#[cfg(test)]
mod tests {
    use rdkafka::error::KafkaError;

    use super::*;

    #[test]
    fn an_analytics_record_is_encoded_in_place_as_the_message_would_be() {
        let outputs = TopicOutputs::new(&TopicsConfig {
            kafka: KafkaConfig {
                reads_topic_limits: false, // no Kafka to ask
                ..KafkaConfig::default()
            },
            agent_queue_topic: "q".into(),
            analytics_topic: "a".into(),
            dlq_topic: "d".into(),
            outbound_topic_prefix: "o".into(),
            rejections_topic: "r".into(),
            messages_topic: "m".into(),
            assignments_topic: "as".into(),
            queue_state_topic: "qs".into(),
        })
        .unwrap();
        let envelope = Envelope {
            message_id: "m-1".into(),
            tenant_id: "acme".into(),
            conversation_id: "c-1".into(),
            ..Default::default()
        };
        let decision = RouteDecision {
            message_id: "m-1".into(),
            rule_id: "r".into(),
            reason: "matched rule r".into(),
            ..Default::default()
        };
        let trace = TraceParent::root();
        let record = AnalyticsRecord {
            envelope: Some(envelope.clone()),
            decision: Some(decision.clone()),
        };
        let built = outputs.analytics("k", &record, &trace);
        let in_place = outputs.analytics_of("k", &envelope, None, &decision, &trace);
        assert_eq!(in_place.payload, built.payload);
        assert_eq!(
            AnalyticsRecord::decode(in_place.payload.as_slice()).unwrap(),
            record
        );
        assert_eq!((in_place.topic, in_place.kind), ("a", "analytics"));
        // The bytes as read are embedded as they are: the same record, and
        // fields this build does not know (here field 999) kept.
        let mut read = envelope.encode_to_vec();
        prost::encoding::string::encode(999, &"from a newer node".to_owned(), &mut read);
        let spliced = outputs.analytics_of("k", &envelope, Some(&read), &decision, &trace);
        assert_eq!(
            AnalyticsRecord::decode(spliced.payload.as_slice()).unwrap(),
            record
        );
        let header =
            prost::encoding::key_len(1) + prost::encoding::encoded_len_varint(read.len() as u64);
        assert_eq!(
            &spliced.payload[header..header + read.len()],
            read.as_slice()
        );
    }

    #[test]
    fn writes_that_can_never_succeed_are_fatal_the_rest_retryable() {
        let produce = KafkaError::MessageProduction;
        for code in [
            RDKafkaErrorCode::MessageSizeTooLarge,
            RDKafkaErrorCode::MessageBatchTooLarge,
            RDKafkaErrorCode::InvalidMessageSize,
            RDKafkaErrorCode::TopicAuthorizationFailed,
            RDKafkaErrorCode::ClusterAuthorizationFailed,
            RDKafkaErrorCode::GroupAuthorizationFailed,
            RDKafkaErrorCode::UnknownTopic,
            RDKafkaErrorCode::UnknownTopicOrPartition,
            RDKafkaErrorCode::InvalidRecord,
            RDKafkaErrorCode::InvalidTopic,
        ] {
            assert_eq!(classify(&produce(code)), WriteRetry::Fatal, "{code:?}");
        }
        for code in [
            RDKafkaErrorCode::MessageTimedOut,
            RDKafkaErrorCode::QueueFull,
            RDKafkaErrorCode::NotLeaderForPartition,
            RDKafkaErrorCode::LeaderNotAvailable,
            RDKafkaErrorCode::RequestTimedOut,
            RDKafkaErrorCode::NotEnoughReplicas,
            RDKafkaErrorCode::AllBrokersDown,
            RDKafkaErrorCode::BrokerTransportFailure,
        ] {
            assert_eq!(classify(&produce(code)), WriteRetry::Retryable, "{code:?}");
        }
        assert_eq!(classify(&KafkaError::Canceled), WriteRetry::Retryable);
    }
}
