//! A partition's conversation states: rebuilt from Kafka, cached in a dashmap.

use std::time::{Duration, Instant};

use dashmap::DashMap;
use prost::Message as _;
use rdkafka::{
    Message, Offset, TopicPartitionList,
    consumer::{BaseConsumer, Consumer},
    error::{KafkaError, KafkaResult},
};
use switchboard_broker::kafka::KafkaConfig;
use switchboard_proto::v1::ConversationState;

/// The states of one partition's conversations.
#[derive(Debug, Default)]
pub struct PartitionStates {
    states: DashMap<String, ConversationState>,
}

impl PartitionStates {
    /// The conversation's state; the default for one never seen.
    pub fn get(&self, key: &str) -> ConversationState {
        self.states
            .get(key)
            .map(|s| s.value().clone())
            .unwrap_or_default()
    }

    /// Caches a state that Kafka has acknowledged.
    pub fn put(&self, key: String, state: ConversationState) {
        self.states.insert(key, state);
    }

    /// Conversations cached.
    pub fn len(&self) -> usize {
        self.states.len()
    }

    /// Whether none are cached.
    pub fn is_empty(&self) -> bool {
        self.states.is_empty()
    }

    /// Reads partition `partition` of the state topic from its start to its
    /// current end; the last record per key wins, an empty value deletes.
    /// Blocking: run it off the async runtime.
    pub fn rebuild(kafka: &KafkaConfig, topic: &str, partition: i32) -> KafkaResult<Self> {
        let started = Instant::now();
        let consumer: BaseConsumer = kafka
            .client_config(&[
                ("group.id", "switchboard-workers-state-rebuild"),
                ("enable.auto.commit", "false"),
                ("enable.partition.eof", "true"),
            ])
            .create()?;
        let (low, high) = consumer.fetch_watermarks(topic, partition, Duration::from_secs(10))?;
        let states = Self::default();
        if high > low {
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(topic, partition, Offset::Offset(low))?;
            consumer.assign(&tpl)?;
            let deadline = Instant::now() + Duration::from_secs(120);
            let mut next = low;
            while next < high {
                if Instant::now() > deadline {
                    return Err(KafkaError::MessageConsumption(
                        rdkafka::types::RDKafkaErrorCode::OperationTimedOut,
                    ));
                }
                match consumer.poll(Duration::from_millis(200)) {
                    Some(Ok(record)) => {
                        next = record.offset() + 1;
                        let Some(key) = record.key().and_then(|k| std::str::from_utf8(k).ok())
                        else {
                            continue;
                        };
                        match record.payload().map(ConversationState::decode) {
                            Some(Ok(state)) => states.put(key.to_owned(), state),
                            None => {
                                states.states.remove(key);
                            }
                            Some(Err(e)) => {
                                tracing::warn!(error = %e, partition, "undecodable conversation state skipped")
                            }
                        }
                    }
                    // Compaction may have removed the last offsets.
                    Some(Err(KafkaError::PartitionEOF(_))) => break,
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, partition, "reading conversation state")
                    }
                    None => {}
                }
            }
        }
        metrics::histogram!("switchboard_worker_state_rebuild_duration_seconds")
            .record(started.elapsed().as_secs_f64());
        tracing::info!(
            partition,
            conversations = states.len(),
            took = ?started.elapsed(),
            "conversation state rebuilt"
        );
        Ok(states)
    }
}
