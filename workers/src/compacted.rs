//! Reading a compacted topic to its current end: how workers rebuild the
//! state they keep in Kafka (conversation states, queue snapshots).

use std::time::{Duration, Instant};

use rdkafka::{
    Message, Offset, TopicPartitionList,
    consumer::{BaseConsumer, Consumer},
    error::{KafkaError, KafkaResult},
};
use switchboard_runtime::kafka::KafkaConfig;

/// Reads partition `partition` of `topic` from its start to its current
/// end, calling `each(key, value)` per record in order (`None` for a
/// tombstone; records without a UTF-8 key are skipped). Blocking: run it off
/// the async runtime. Gives up after two minutes.
pub fn read_partition(
    kafka: &KafkaConfig,
    topic: &str,
    partition: i32,
    mut each: impl FnMut(&str, Option<&[u8]>),
) -> KafkaResult<()> {
    let consumer = reader(kafka)?;
    let (low, high) = consumer.fetch_watermarks(topic, partition, Duration::from_secs(10))?;
    if high <= low {
        return Ok(());
    }
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
                if let Some(key) = record.key().and_then(|k| std::str::from_utf8(k).ok()) {
                    each(key, record.payload());
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
        .client_config(&[
            ("group.id", "switchboard-workers-state-rebuild"),
            ("enable.auto.commit", "false"),
            ("enable.partition.eof", "true"),
        ])
        .create()
}
