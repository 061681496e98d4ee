//! The second dedupe level, at the partition owner.
//!
//! Ingestion nodes deduplicate retried channel messages they have seen
//! themselves; copies that reach different nodes, or arrive after a node's
//! window, are both in Kafka. Every copy carries the same conversation key,
//! so all of them land in the same partition, and the partition's owner
//! drops all but the first: it remembers the channel message ids
//! (`tenant`, `channel`, `channel_message_id`) of the last `lookback`
//! records of each partition it owns.
//!
//! Nothing is kept on disk. When a worker takes over a partition, it reads
//! the `lookback` records before its starting offset back from Kafka, so the
//! check holds across workers and restarts.

use std::{
    collections::{HashSet, VecDeque},
    hash::{DefaultHasher, Hash, Hasher},
    time::{Duration, Instant},
};

use prost::Message as _;
use rdkafka::{
    Message, Offset, TopicPartitionList,
    consumer::{BaseConsumer, Consumer},
    error::KafkaResult,
};
use switchboard_broker::kafka::KafkaConfig;
use switchboard_proto::v1::Envelope;

/// The channel message ids of a partition's most recent records.
#[derive(Debug)]
pub struct RecentIds {
    seen: HashSet<u64>,
    order: VecDeque<u64>,
    capacity: usize,
}

impl RecentIds {
    /// Remembers up to `capacity` ids (0 disables the check).
    pub fn new(capacity: usize) -> Self {
        Self {
            seen: HashSet::with_capacity(capacity),
            order: VecDeque::with_capacity(capacity),
            capacity,
        }
    }

    /// Records `envelope`'s channel message id; true when it was seen already.
    /// Envelopes without one are never duplicates.
    pub fn is_duplicate(&mut self, envelope: &Envelope) -> bool {
        if self.capacity == 0 || envelope.channel_message_id.is_empty() {
            return false;
        }
        let mut hasher = DefaultHasher::new();
        (
            &envelope.tenant_id,
            envelope.channel,
            &envelope.channel_message_id,
        )
            .hash(&mut hasher);
        let key = hasher.finish();
        if !self.seen.insert(key) {
            return true;
        }
        self.order.push_back(key);
        if self.order.len() > self.capacity
            && let Some(oldest) = self.order.pop_front()
        {
            self.seen.remove(&oldest);
        }
        false
    }

    /// Rebuilds the ids of the up to `capacity` records before offset
    /// `before` of a partition, from Kafka. Blocking: run it off the runtime.
    pub fn rebuild(
        kafka: &KafkaConfig,
        topic: &str,
        partition: i32,
        before: i64,
        capacity: usize,
    ) -> KafkaResult<Self> {
        let mut ids = Self::new(capacity);
        if capacity == 0 || before <= 0 {
            return Ok(ids);
        }
        let started = Instant::now();
        let consumer: BaseConsumer = kafka
            .client_config(&[
                ("group.id", "switchboard-workers-dedupe-rebuild"),
                ("enable.auto.commit", "false"),
                ("enable.partition.eof", "true"),
            ])
            .create()?;
        let (low, _) = consumer.fetch_watermarks(topic, partition, Duration::from_secs(10))?;
        let start = (before - capacity as i64).max(low);
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, partition, Offset::Offset(start))?;
        consumer.assign(&tpl)?;
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut next = start;
        while next < before && Instant::now() < deadline {
            match consumer.poll(Duration::from_millis(200)) {
                Some(Ok(record)) if record.offset() < before => {
                    next = record.offset() + 1;
                    if let Some(Ok(envelope)) = record.payload().map(Envelope::decode) {
                        ids.is_duplicate(&envelope);
                    }
                }
                Some(Ok(_)) => break,
                Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => break,
                Some(Err(e)) => tracing::warn!(error = %e, partition, "reading back for dedupe"),
                None => {}
            }
        }
        metrics::histogram!("switchboard_worker_state_rebuild_duration_seconds")
            .record(started.elapsed().as_secs_f64());
        tracing::debug!(partition, records = next - start, "dedupe ids rebuilt");
        Ok(ids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(tenant: &str, id: &str) -> Envelope {
        Envelope {
            tenant_id: tenant.into(),
            channel: 1,
            channel_message_id: id.into(),
            ..Default::default()
        }
    }

    #[test]
    fn spots_copies_within_the_lookback() {
        let mut ids = RecentIds::new(3);
        assert!(!ids.is_duplicate(&envelope("acme", "a")));
        assert!(ids.is_duplicate(&envelope("acme", "a")));
        assert!(
            !ids.is_duplicate(&envelope("globex", "a")),
            "tenants are separate"
        );
        assert!(
            !ids.is_duplicate(&envelope("acme", "")) && !ids.is_duplicate(&envelope("acme", ""))
        );
        assert!(!ids.is_duplicate(&envelope("acme", "b")));
        assert!(!ids.is_duplicate(&envelope("acme", "c")));
        // "a" was pushed out by three newer ids.
        assert!(!ids.is_duplicate(&envelope("acme", "a")));
        assert!(ids.seen.len() <= 3 && ids.order.len() <= 3);
        let mut off = RecentIds::new(0);
        assert!(
            !off.is_duplicate(&envelope("acme", "a")) && !off.is_duplicate(&envelope("acme", "a"))
        );
    }
}
