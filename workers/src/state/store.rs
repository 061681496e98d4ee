//! A partition's conversation states: rebuilt from Kafka, cached in a dashmap.

use std::time::Instant;

use dashmap::DashMap;
use prost::Message as _;
use rdkafka::error::KafkaResult;
use switchboard_proto::v1::ConversationState;
use switchboard_runtime::kafka::KafkaConfig;

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
    fn len(&self) -> usize {
        self.states.len()
    }

    /// Reads partition `partition` of the state topic from its start to its
    /// current end; the last record per key wins, an empty value deletes.
    /// Blocking: run it off the async runtime.
    pub fn rebuild(kafka: &KafkaConfig, topic: &str, partition: i32) -> KafkaResult<Self> {
        let started = Instant::now();
        let states = Self::default();
        crate::compacted::read_partition(kafka, topic, partition, |key, value| {
            match value.map(ConversationState::decode) {
                Some(Ok(state)) => states.put(key.to_owned(), state),
                None => {
                    states.states.remove(key);
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, partition, "undecodable conversation state skipped")
                }
            }
        })?;
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
