//! Kafka-topic destinations: the agent-queue topic and the analytics topic.
//!
//! Both are written with the same idempotent, `acks=all`, `murmur2`
//! producer settings as the ingestion node, so a delivery counts only once
//! Kafka has it.

use std::time::Duration;

use prost::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use switchboard_broker::kafka::KafkaConfig;
use switchboard_proto::v1::{AgentTask, AnalyticsRecord};

use super::DestinationError;

/// The producer and topic names for agent queues and analytics.
pub struct TopicOutputs {
    producer: FutureProducer,
    agent_queue_topic: String,
    analytics_topic: String,
}

impl TopicOutputs {
    /// Creates the producer.
    pub fn new(
        kafka: &KafkaConfig,
        agent_queue_topic: &str,
        analytics_topic: &str,
    ) -> anyhow::Result<Self> {
        let producer = kafka
            .client_config(&[
                ("acks", "all"),
                ("enable.idempotence", "true"),
                ("partitioner", "murmur2_random"),
                ("compression.type", "lz4"),
                ("linger.ms", "2"),
                ("message.timeout.ms", "10000"),
            ])
            .create()?;
        Ok(Self {
            producer,
            agent_queue_topic: agent_queue_topic.to_owned(),
            analytics_topic: analytics_topic.to_owned(),
        })
    }

    /// Publishes an agent task, keyed by its queue so one queue's tasks stay in order.
    pub async fn agent(&self, task: &AgentTask) -> Result<(), DestinationError> {
        self.send(
            "agent",
            &self.agent_queue_topic,
            &task.queue,
            task.encode_to_vec(),
        )
        .await
    }

    /// Publishes an analytics record, keyed by conversation.
    pub async fn analytics(
        &self,
        key: &str,
        record: &AnalyticsRecord,
    ) -> Result<(), DestinationError> {
        self.send(
            "analytics",
            &self.analytics_topic,
            key,
            record.encode_to_vec(),
        )
        .await
    }

    async fn send(
        &self,
        kind: &'static str,
        topic: &str,
        key: &str,
        payload: Vec<u8>,
    ) -> Result<(), DestinationError> {
        let record = FutureRecord::to(topic).key(key).payload(&payload);
        self.producer
            .send(record, Duration::from_secs(5))
            .await
            .map(|_| ())
            .map_err(|(e, _)| {
                DestinationError {
                    kind,
                    name: topic.to_owned(),
                    message: e.to_string(),
                    // librdkafka already retried within message.timeout.ms; a
                    // timeout or a full queue may still clear up.
                    retryable: true,
                }
            })
    }
}
