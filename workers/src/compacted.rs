//! Reading a compacted topic to its current end: how workers rebuild the
//! state they keep in Kafka (conversation states, queue snapshots).

use std::time::{Duration, Instant};

use rdkafka::{
    Message, Offset, TopicPartitionList,
    consumer::{BaseConsumer, Consumer},
    error::{KafkaError, KafkaResult},
};
use switchboard_runtime::kafka::KafkaConfig;

/// A read gives up when no record came for this long (the partition's
/// leader gone, say); it never gives up on a read that is progressing,
/// however long the partition. Conversation states resume where a read
/// that gave up stopped.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(30);

/// The offsets of a partition: the first one still in the log and the next
/// one to be written.
pub fn watermarks(kafka: &KafkaConfig, topic: &str, partition: i32) -> KafkaResult<(i64, i64)> {
    reader(kafka)?.fetch_watermarks(topic, partition, Duration::from_secs(10))
}

/// Reads partition `partition` of `topic` from its start to its current
/// end, calling `each(key, value)` per record in order (`None` for a
/// tombstone; records without a UTF-8 key are skipped). Blocking: run it off
/// the async runtime. Gives up after [`STALL_TIMEOUT`] without a record.
pub fn read_partition(
    kafka: &KafkaConfig,
    topic: &str,
    partition: i32,
    mut each: impl FnMut(&str, Option<&[u8]>),
) -> KafkaResult<()> {
    let (low, high) = watermarks(kafka, topic, partition)?;
    read_range(kafka, topic, partition, low..high, |_, key, value| {
        each(key, value)
    })
}

/// Reads the records of `offsets` (of which compaction may have removed
/// some), calling `each(offset, key, value)` per record in order, as
/// [`read_partition`] does.
pub fn read_range(
    kafka: &KafkaConfig,
    topic: &str,
    partition: i32,
    offsets: std::ops::Range<i64>,
    mut each: impl FnMut(i64, &str, Option<&[u8]>),
) -> KafkaResult<()> {
    if offsets.is_empty() {
        return Ok(());
    }
    let consumer = reader(kafka)?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(offsets.start))?;
    consumer.assign(&tpl)?;
    let mut last_record = Instant::now();
    let mut next = offsets.start;
    while next < offsets.end {
        if last_record.elapsed() > STALL_TIMEOUT {
            return Err(KafkaError::MessageConsumption(
                rdkafka::types::RDKafkaErrorCode::OperationTimedOut,
            ));
        }
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(record)) => {
                last_record = Instant::now();
                next = record.offset() + 1;
                if let Some(key) = record.key().and_then(|k| std::str::from_utf8(k).ok()) {
                    each(record.offset(), key, record.payload());
                }
            }
            // Compaction may have removed the last offsets.
            Some(Err(KafkaError::PartitionEOF(_))) => break,
            Some(Err(e)) => tracing::warn!(error = %e, topic, partition, "reading compacted topic"),
            None => {}
        }
    }
    Ok(())
}

fn reader(kafka: &KafkaConfig) -> KafkaResult<BaseConsumer> {
    kafka
        .consumer_config(&[
            ("group.id", "switchboard-workers-state-rebuild"),
            ("enable.auto.commit", "false"),
            ("enable.partition.eof", "true"),
        ])
        .create()
}
