//! Replays records back through routing: the dead-letter topic (after the
//! cause is fixed), or a time range of the messages topic (e.g. after a
//! rules mistake).
//!
//! Records are copied to the messages topic with their key, value and trace
//! context, plus a `switchboard-replayed-from` header naming where they came
//! from. Replayed records skip the dedupe check (they are copies on
//! purpose) and are routed like any other message: in order with the
//! conversation's newer messages, which is why a replay is best done once
//! the cause is fixed and the conversation quiet.
//!
//! The range to copy is fixed when the replay starts (up to the partitions'
//! ends at that moment, or `until`), so a replay always ends, even when it
//! reads the topic it writes to.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use futures::{StreamExt, stream::FuturesUnordered};
use rdkafka::{
    Message, Offset, TopicPartitionList,
    consumer::{Consumer, StreamConsumer},
    error::KafkaError,
    message::{Header, OwnedHeaders},
    producer::{FutureProducer, FutureRecord},
    types::RDKafkaErrorCode,
};
use switchboard_runtime::trace::TRACEPARENT;

use crate::{config::WorkersConfig, destinations::topics::headers};

/// Which records to replay.
#[derive(Debug, Clone)]
pub struct ReplayRequest {
    /// The topic to read: the DLQ, or the messages topic.
    pub topic: String,
    /// Only records written at or after this time.
    pub since: Option<jiff::Timestamp>,
    /// Only records written before this time.
    pub until: Option<jiff::Timestamp>,
    /// At most this many records.
    pub limit: Option<u64>,
    /// Count what would be replayed without writing anything.
    pub dry_run: bool,
}

/// What a replay did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ReplayReport {
    /// Records in the range.
    pub read: u64,
    /// Records written to the messages topic.
    pub replayed: u64,
}

/// Most copies awaiting Kafka's acknowledgement at once.
const MAX_IN_FLIGHT: usize = 1000;

/// The offsets to copy, per partition: `[start, end)`.
fn plan(
    consumer: &StreamConsumer,
    request: &ReplayRequest,
) -> anyhow::Result<HashMap<i32, (i64, i64)>> {
    let timeout = Duration::from_secs(10);
    let metadata = consumer.fetch_metadata(Some(&request.topic), timeout)?;
    let topic = metadata
        .topics()
        .first()
        .filter(|t| t.error().is_none())
        .ok_or_else(|| anyhow::anyhow!("topic {} does not exist", request.topic))?;
    let at = |time: Option<jiff::Timestamp>| -> anyhow::Result<HashMap<i32, Option<i64>>> {
        let mut tpl = TopicPartitionList::new();
        let Some(time) = time else {
            return Ok(HashMap::new());
        };
        for p in topic.partitions() {
            tpl.add_partition_offset(
                &request.topic,
                p.id(),
                Offset::Offset(time.as_millisecond()),
            )?;
        }
        let found = consumer.offsets_for_times(tpl, timeout)?;
        Ok(found
            .elements()
            .iter()
            .map(|e| (e.partition(), e.offset().to_raw()))
            .collect())
    };
    let (since, until) = (at(request.since)?, at(request.until)?);
    let mut ranges = HashMap::new();
    for p in topic.partitions() {
        let (low, high) = consumer.fetch_watermarks(&request.topic, p.id(), timeout)?;
        // -1 (OFFSET_END): no record at or after the time.
        let bound = |found: Option<&Option<i64>>, default: i64| match found {
            None => default,
            Some(Some(o)) if *o >= 0 => *o,
            Some(_) => high,
        };
        let start = bound(since.get(&p.id()), low).max(low);
        let end = bound(until.get(&p.id()), high).min(high);
        if start < end {
            ranges.insert(p.id(), (start, end));
        }
    }
    Ok(ranges)
}

/// Copies the requested records to the messages topic, logging progress.
pub async fn replay(
    config: &WorkersConfig,
    request: &ReplayRequest,
) -> anyhow::Result<ReplayReport> {
    let consumer: Arc<StreamConsumer> = Arc::new(
        config
            .kafka
            .consumer_config(&[
                ("group.id", "switchboard-replay"),
                ("enable.auto.commit", "false"),
            ])
            .create()?,
    );
    let ranges = {
        let (consumer, request) = (consumer.clone(), request.clone());
        tokio::task::spawn_blocking(move || {
            let ranges = plan(&consumer, &request)?;
            let mut tpl = TopicPartitionList::new();
            for (partition, (start, _)) in &ranges {
                tpl.add_partition_offset(&request.topic, *partition, Offset::Offset(*start))?;
            }
            consumer.assign(&tpl)?;
            anyhow::Ok(ranges)
        })
        .await??
    };
    let total: i64 = ranges.values().map(|(start, end)| end - start).sum();
    let total = request.limit.map_or(total as u64, |l| l.min(total as u64));
    tracing::info!(
        from = %request.topic,
        to = %config.messages_topic,
        records = total,
        partitions = ranges.len(),
        dry_run = request.dry_run,
        "replay planned"
    );
    let producer: FutureProducer = config
        .kafka
        .producer_config(&[("linger.ms", "5")])
        .create()?;
    let mut report = ReplayReport::default();
    let mut remaining: HashMap<i32, i64> = ranges.iter().map(|(p, (_, end))| (*p, *end)).collect();
    let mut in_flight = FuturesUnordered::new();
    let mut last_progress = Instant::now();
    let mut idle = 0;
    while report.read < total && !remaining.is_empty() {
        let record = match tokio::time::timeout(Duration::from_secs(1), consumer.recv()).await {
            // Offsets without records (compaction, transaction markers)
            // never show up: stop once nothing more comes.
            Err(_) if idle >= 10 => {
                tracing::warn!(
                    read = report.read,
                    of = total,
                    "nothing more to read; stopping"
                );
                break;
            }
            Err(_) => {
                idle += 1;
                continue;
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "reading the replay source");
                continue;
            }
            Ok(Ok(record)) => {
                idle = 0;
                record.detach()
            }
        };
        let (partition, offset) = (record.partition(), record.offset());
        let Some(end) = remaining.get(&partition).copied() else {
            continue;
        };
        if offset + 1 >= end {
            remaining.remove(&partition);
        }
        if offset >= end {
            continue;
        }
        report.read += 1;
        if request.dry_run {
            continue;
        }
        let origin = format!("{}/{partition}/{offset}", request.topic);
        let mut copied = OwnedHeaders::new().insert(Header {
            key: headers::REPLAYED_FROM,
            value: Some(origin.as_str()),
        });
        if let Some(trace) = switchboard_runtime::headers::raw(&record, TRACEPARENT) {
            copied = copied.insert(Header {
                key: TRACEPARENT,
                value: Some(trace),
            });
        }
        let mut copy: FutureRecord<'_, [u8], [u8]> =
            FutureRecord::to(&config.messages_topic).headers(copied);
        copy.key = record.key();
        copy.payload = record.payload();
        let delivery = loop {
            match producer.send_result(copy) {
                Ok(delivery) => break delivery,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    copy = back;
                    match in_flight.next().await {
                        Some(done) => done?,
                        None => tokio::time::sleep(Duration::from_millis(10)).await,
                    }
                }
                Err((e, _)) => anyhow::bail!("copying {origin}: {e}"),
            }
        };
        in_flight.push(async move {
            match delivery.await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err((e, _))) => Err(anyhow::anyhow!("copying {origin}: {e}")),
                Err(_) => Err(anyhow::anyhow!("copying {origin}: the producer went away")),
            }
        });
        report.replayed += 1;
        while in_flight.len() >= MAX_IN_FLIGHT {
            if let Some(done) = in_flight.next().await {
                done?;
            }
        }
        if last_progress.elapsed() >= Duration::from_secs(2) {
            tracing::info!(replayed = report.replayed, of = total, "replay progress");
            last_progress = Instant::now();
        }
    }
    while let Some(done) = in_flight.next().await {
        done?;
    }
    tracing::info!(
        read = report.read,
        replayed = report.replayed,
        "replay done"
    );
    Ok(report)
}
