//! The raw pipe: librdkafka reads a topic, decodes every envelope and
//! produces one analytics record (the envelope and a decision) per message
//! to another, with the workers' producer settings; each offset is stored
//! only after its record's delivery report. The practical limit for a
//! stage that writes one record per message.
//!
//! The routing scenario runs it in this process over a preloaded backlog;
//! the latency scenario runs it as a process of its own
//! (`switchboard-bench pipe`) at the worker's place, so its CPU per message
//! at a steady rate is read apart from the generator's and the sink's.

use std::time::{Duration, Instant};

use futures::{StreamExt as _, stream::FuturesUnordered};
use prost::Message as _;
use rdkafka::{
    Message as _,
    consumer::{Consumer, StreamConsumer},
    producer::{FutureProducer, FutureRecord},
};
use switchboard_proto::v1::{AnalyticsRecord, Envelope, RouteDecision};
use switchboard_runtime::kafka::KafkaConfig;
use tokio_util::sync::CancellationToken;

use crate::scenarios::{cpu_of_pid, process_cpu};

/// Records produced but not yet acknowledged, at most.
const MAX_PENDING: usize = 10_000;

/// How long a pipe runs.
pub enum Until {
    /// `warmup` messages, then `messages` more, measured.
    Count { warmup: usize, messages: usize },
    /// Until `stop` is cancelled; then it finishes the records it took.
    Stopped(CancellationToken),
}

/// A pipe's measured window (from the end of the warm-up, or from its
/// first record without one, to its last delivery): its length, this
/// process's CPU and Kafka's (when its process is known); and the records
/// taken in all, and of those, the ones skipped as not envelopes.
pub struct PipeRun {
    pub elapsed: Duration,
    pub cpu: Duration,
    pub kafka_cpu: Option<Duration>,
    pub piped: usize,
    pub skipped: usize,
}

/// Where a measured window began.
struct Marks {
    at: Instant,
    cpu: Duration,
    kafka_cpu: Option<Duration>,
}

impl Marks {
    fn now(kafka_pid: Option<u32>) -> Self {
        Self {
            at: Instant::now(),
            cpu: process_cpu(),
            kafka_cpu: cpu_of_pid(kafka_pid),
        }
    }
}

/// Pipes `from` (every partition, from its beginning) to `to` until
/// `until`.
pub async fn run(
    kafka: &KafkaConfig,
    from: &str,
    to: &str,
    until: Until,
    kafka_pid: Option<u32>,
) -> anyhow::Result<PipeRun> {
    let consumer: StreamConsumer = kafka
        .consumer_config(&[
            ("group.id", "switchboard-bench-pipe"),
            ("enable.auto.commit", "true"),
            ("enable.auto.offset.store", "false"),
        ])
        .create()?;
    let mut partitions = rdkafka::TopicPartitionList::new();
    for p in 0..kafka.topic_partitions {
        partitions.add_partition_offset(from, p, rdkafka::Offset::Beginning)?;
    }
    consumer.assign(&partitions)?;
    let producer: FutureProducer = kafka.producer_config(&[("linger.ms", "2")]).create()?;
    let (warmup, total, stop) = match until {
        Until::Count { warmup, messages } => (warmup, warmup + messages, CancellationToken::new()),
        Until::Stopped(stop) => (0, usize::MAX, stop),
    };
    let mut pending = FuturesUnordered::new();
    let (mut taken, mut done, mut skipped) = (0, 0, 0);
    let mut marks = None;
    loop {
        let taking = taken < total && !stop.is_cancelled();
        if !taking && pending.is_empty() {
            break;
        }
        tokio::select! {
            biased;
            Some((partition, offset, delivery)) = pending.next(), if !pending.is_empty() => {
                let delivery: Option<Result<Result<_, _>, _>> = delivery;
                match delivery {
                    Some(Ok(Err((e, _)))) => anyhow::bail!("raw pipe delivery failed: {e}"),
                    // No report at all: never acknowledged, so not stored.
                    Some(Err(_)) => anyhow::bail!("raw pipe delivery dropped before Kafka answered"),
                    Some(Ok(Ok(_))) | None => {}
                }
                consumer.store_offset(from, partition, offset + 1)?;
                done += 1;
                if done == warmup && warmup > 0 {
                    marks = Some(Marks::now(kafka_pid));
                }
            }
            () = stop.cancelled(), if taking => {}
            message = consumer.recv(), if taking && pending.len() < MAX_PENDING => {
                let message = message?;
                if marks.is_none() && warmup == 0 {
                    marks = Some(Marks::now(kafka_pid));
                }
                taken += 1;
                // A record that is not an envelope (a topic's warm-up
                // records) is skipped, its offset stored in turn.
                let delivery = match Envelope::decode(message.payload().unwrap_or_default()) {
                    Ok(envelope) => {
                        let key = envelope.conversation_key();
                        let record = AnalyticsRecord {
                            decision: Some(RouteDecision {
                                message_id: envelope.message_id.clone(),
                                reason: "no rule matched".into(),
                                ..Default::default()
                            }),
                            envelope: Some(envelope),
                        }
                        .encode_to_vec();
                        let delivery = producer
                            .send_result(FutureRecord::to(to).key(&key).payload(&record))
                            .map_err(|(e, _)| anyhow::anyhow!("raw pipe produce: {e}"))?;
                        Some(delivery)
                    }
                    Err(_) => {
                        skipped += 1;
                        None
                    }
                };
                let (partition, offset) = (message.partition(), message.offset());
                pending.push(async move {
                    let delivered = match delivery {
                        Some(delivery) => Some(delivery.await),
                        None => None,
                    };
                    (partition, offset, delivered)
                });
            }
        }
    }
    Ok(match marks {
        Some(marks) => PipeRun {
            elapsed: marks.at.elapsed(),
            cpu: process_cpu().saturating_sub(marks.cpu),
            kafka_cpu: marks
                .kafka_cpu
                .zip(cpu_of_pid(kafka_pid))
                .map(|(before, now)| now.saturating_sub(before)),
            piped: done,
            skipped,
        },
        None => PipeRun {
            elapsed: Duration::ZERO,
            cpu: Duration::ZERO,
            kafka_cpu: None,
            piped: done,
            skipped,
        },
    })
}
