//! A partition's conversation states: rebuilt from Kafka, then owned by the
//! partition's routing loop.

use std::{collections::HashMap, time::Instant};

use prost::Message as _;
use rdkafka::error::KafkaResult;
use switchboard_proto::v1::ConversationState;
use switchboard_runtime::kafka::KafkaConfig;

/// The states of one partition's conversations.
#[derive(Debug, Default)]
pub struct PartitionStates {
    states: HashMap<String, ConversationState>,
}

impl PartitionStates {
    /// The conversation's state, to change in place; the default for one
    /// never seen.
    pub fn get_mut(&mut self, key: &str) -> &mut ConversationState {
        // Looked up first: the key is copied only for a new conversation.
        if !self.states.contains_key(key) {
            self.states
                .insert(key.to_owned(), ConversationState::default());
        }
        self.states.get_mut(key).expect("inserted above")
    }

    /// The conversation's state, if it has one.
    pub fn get(&self, key: &str) -> Option<&ConversationState> {
        self.states.get(key)
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
        let mut states = Self::default();
        crate::compacted::read_partition(kafka, topic, partition, |key, value| {
            match value.map(ConversationState::decode) {
                Some(Ok(state)) => {
                    states.states.insert(key.to_owned(), state);
                }
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
