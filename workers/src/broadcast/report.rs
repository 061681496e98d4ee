//! The report stage: what became of each broadcast's messages.
//!
//! It reads the rejections and analytics topics in its own consumer group
//! (`<group_id>.broadcast-report`) and counts, per broadcast (the
//! envelope's `broadcast_id` attribute):
//! - refused by consent, by reason, from the rejections topic (the
//!   provider's refusals are counted as failed, from analytics);
//! - sent and failed, from the sender stage's outcome records on analytics;
//! - delivered and read, from the status webhooks on analytics, joined by
//!   the provider's message id with the sends still awaiting theirs (a
//!   conversation's send and its statuses share its partition).
//!
//! Counts are kept per partition counted, with the next offset to count,
//! in one record (`BroadcastTally`) of a compacted topic keyed by
//! `topic/partition`, written every `tally_interval`. A new owner of the
//! partition resumes from that offset with those counts, so nothing is
//! counted twice or missed; a partition without a tally is counted from
//! its beginning. The report is the sum of every partition's counts.

use std::{
    collections::{HashMap, HashSet},
    sync::Mutex,
    time::{Duration, SystemTime},
};

use prost::Message as _;
use rdkafka::{
    Message, Offset, TopicPartitionList,
    consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer},
    producer::{FutureProducer, FutureRecord},
};
use switchboard_proto::v1::{
    AnalyticsRecord, BroadcastCounts, BroadcastTally, PendingDelivery, Rejection, RejectionReason,
    envelope::Content, send_outcome::Status as SendStatus, status_receipt::State as Receipt,
};
use switchboard_runtime::{
    kafka::{ConsumerErrors, KafkaConfig},
    shutdown::Shutdown,
};

use super::broadcast_of;
use crate::{compacted, config::WorkersConfig, state::consent::reason_label};

/// The tally key of a partition counted.
pub fn tally_key(topic: &str, partition: i32) -> String {
    format!("{topic}/{partition}")
}

/// Every tally in the tallies topic, by key. Blocking.
pub fn read_tallies(
    kafka: &KafkaConfig,
    topic: &str,
) -> anyhow::Result<HashMap<String, BroadcastTally>> {
    let mut found = HashMap::new();
    for partition in 0..kafka.partition_count(topic)? {
        let partition = i32::try_from(partition)?;
        compacted::read_partition(kafka, topic, partition, |key, value| {
            if let Some(tally) = value.and_then(|v| BroadcastTally::decode(v).ok()) {
                found.insert(key.to_owned(), tally);
            }
        })?;
    }
    Ok(found)
}

/// Counts one record of the rejections topic. Returns whether it counted.
pub fn count_rejection(tally: &mut BroadcastTally, rejection: &Rejection) -> bool {
    let Some(envelope) = &rejection.envelope else {
        return false;
    };
    let Some(id) = broadcast_of(envelope) else {
        return false;
    };
    // The provider's refusals are counted from the send outcomes.
    if matches!(
        rejection.reason(),
        RejectionReason::ProviderRefused | RejectionReason::Unsendable
    ) {
        return false;
    }
    let counts = counts(tally, id);
    *counts
        .refused
        .entry(reason_label(rejection.reason()).to_owned())
        .or_default() += 1;
    true
}

fn counts<'a>(tally: &'a mut BroadcastTally, id: &str) -> &'a mut BroadcastCounts {
    let counts = tally.broadcasts.entry(id.to_owned()).or_default();
    counts.updated_at = Some(switchboard_proto::timestamp(SystemTime::now()));
    counts
}

/// Counts one record of the analytics topic, keeping at most
/// `max_pending` sends awaiting their statuses. Returns whether it counted.
pub fn count_analytics(
    tally: &mut BroadcastTally,
    record: &AnalyticsRecord,
    max_pending: usize,
) -> bool {
    let Some(envelope) = &record.envelope else {
        return false;
    };
    // Status webhooks are about the business's messages: OUTBOUND.
    if let Some(Content::Status(status)) = &envelope.content {
        let Some(i) = tally
            .pending
            .iter()
            .position(|p| p.provider_message_id == status.target_message_id)
        else {
            return false;
        };
        let id = tally.pending[i].broadcast_id.clone();
        let was_delivered = tally.pending[i].delivered;
        match status.state() {
            Receipt::Delivered if !was_delivered => {
                tally.pending[i].delivered = true;
                counts(tally, &id).delivered += 1;
            }
            Receipt::Read => {
                tally.pending.remove(i);
                let counts = counts(tally, &id);
                counts.read += 1;
                if !was_delivered {
                    counts.delivered += 1;
                }
            }
            Receipt::Failed => {
                tally.pending.remove(i);
                let counts = counts(tally, &id);
                counts.failed += 1;
                counts.sent = counts.sent.saturating_sub(1);
            }
            _ => return false,
        }
        return true;
    }
    let Some(id) = broadcast_of(envelope) else {
        return false;
    };
    let Some(send) = record.decision.as_ref().and_then(|d| d.send.as_ref()) else {
        return false;
    };
    match send.status() {
        SendStatus::Accepted => {
            counts(tally, id).sent += 1;
            if max_pending > 0 && !send.provider_message_id.is_empty() {
                if tally.pending.len() >= max_pending {
                    tally.pending.remove(0);
                }
                tally.pending.push(PendingDelivery {
                    provider_message_id: send.provider_message_id.clone(),
                    broadcast_id: id.to_owned(),
                    delivered: false,
                });
            }
        }
        SendStatus::Refused => counts(tally, id).failed += 1,
        SendStatus::Unspecified => return false,
    }
    true
}

/// Partition changes and, on assignment, where counting resumes.
struct ReportContext {
    kafka: KafkaConfig,
    tallies_topic: String,
    /// Tallies read at assignment, for the loop to take over.
    restored: Mutex<Vec<(String, BroadcastTally)>>,
    revoked: Mutex<Vec<String>>,
    /// Where the assigned partitions resume, applied after the assignment.
    positions: Mutex<Option<TopicPartitionList>>,
}

impl rdkafka::ClientContext for ReportContext {}

impl ConsumerContext for ReportContext {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(tpl) => {
                let keys = tpl
                    .elements()
                    .iter()
                    .map(|e| tally_key(e.topic(), e.partition()))
                    .collect::<Vec<_>>();
                self.revoked.lock().expect("lock").extend(keys);
            }
            Rebalance::Assign(tpl) => {
                // Each partition resumes after its tally: read them all
                // (a few records per partition counted).
                let tallies = match read_tallies(&self.kafka, &self.tallies_topic) {
                    Ok(t) => t,
                    // Nothing restored: these partitions' records are
                    // skipped and their tallies left as they are.
                    Err(e) => {
                        tracing::error!(error = %e, "reading broadcast tallies; these partitions are not counted until the next rebalance");
                        return;
                    }
                };
                let mut restored = self.restored.lock().expect("lock");
                let mut positions = TopicPartitionList::new();
                for e in tpl.elements() {
                    let key = tally_key(e.topic(), e.partition());
                    let tally = tallies.get(&key).cloned().unwrap_or_default();
                    let offset = if tally.next_offset > 0 {
                        Offset::Offset(tally.next_offset)
                    } else {
                        Offset::Beginning
                    };
                    let _ = positions.add_partition_offset(e.topic(), e.partition(), offset);
                    restored.push((key, tally));
                }
                // Applied by the loop right after this assignment.
                *self.positions.lock().expect("lock") = Some(positions);
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "broadcast report rebalance error"),
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(_) = rebalance
            && let Some(positions) = self.positions.lock().expect("lock").take()
            && let Err(e) = consumer.assign(&positions)
        {
            tracing::error!(error = %e, "positioning the broadcast report's partitions");
        }
    }
}

/// The report stage of one worker.
pub struct ReportStage {
    consumer: StreamConsumer<ReportContext>,
    producer: FutureProducer,
    analytics_topic: String,
    tallies_topic: String,
    interval: Duration,
    max_pending: usize,
}

impl ReportStage {
    /// Creates the consumer and the producer; topics must exist.
    pub fn new(config: &WorkersConfig) -> anyhow::Result<Self> {
        let group = format!("{}.broadcast-report", config.group_id);
        let context = ReportContext {
            kafka: config.kafka.clone(),
            tallies_topic: config.broadcasts.tallies_topic.clone(),
            restored: Mutex::default(),
            revoked: Mutex::default(),
            positions: Mutex::default(),
        };
        let consumer: StreamConsumer<ReportContext> = config
            .kafka
            .stage_consumer_config(&group)
            .create_with_context(context)?;
        consumer.subscribe(&[&config.analytics_topic, &config.rejections_topic])?;
        Ok(Self {
            consumer,
            producer: config.kafka.producer_config(&[]).create()?,
            analytics_topic: config.analytics_topic.clone(),
            tallies_topic: config.broadcasts.tallies_topic.clone(),
            interval: config.broadcasts.tally_interval,
            max_pending: config.broadcasts.max_pending_deliveries,
        })
    }

    /// Counts until `shutdown` fires, writing changed tallies every
    /// `tally_interval` (and once more at the end).
    pub async fn run(self, shutdown: Shutdown) -> anyhow::Result<()> {
        let mut tallies: HashMap<String, BroadcastTally> = HashMap::new();
        let mut dirty: HashSet<String> = HashSet::new();
        let mut errors = ConsumerErrors::new("broadcast-report");
        let mut flush = tokio::time::interval(self.interval);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = flush.tick() => {
                    self.take_changes(&mut tallies, &mut dirty);
                    self.write(&tallies, &mut dirty).await;
                }
                record = self.consumer.recv() => match record {
                    Ok(record) => {
                        self.take_changes(&mut tallies, &mut dirty);
                        let key = tally_key(record.topic(), record.partition());
                        let Some(tally) = tallies.get_mut(&key) else { continue };
                        if record.offset() < tally.next_offset {
                            continue;
                        }
                        tally.next_offset = record.offset() + 1;
                        let payload = record.payload().unwrap_or_default();
                        if record.topic() == self.analytics_topic {
                            if let Ok(analytics) = AnalyticsRecord::decode(payload) {
                                count_analytics(tally, &analytics, self.max_pending);
                            }
                        } else if let Ok(rejection) = Rejection::decode(payload) {
                            count_rejection(tally, &rejection);
                        }
                        dirty.insert(key);
                    }
                    Err(e) => errors.handle(&e).await,
                },
            }
        }
        self.take_changes(&mut tallies, &mut dirty);
        self.write(&tallies, &mut dirty).await;
        Ok(())
    }

    /// Takes over the tallies of newly assigned partitions and drops those
    /// of revoked ones (their next owner resumes from the last written).
    fn take_changes(
        &self,
        tallies: &mut HashMap<String, BroadcastTally>,
        dirty: &mut HashSet<String>,
    ) {
        let context = self.consumer.context();
        for key in context.revoked.lock().expect("lock").drain(..) {
            tallies.remove(&key);
            dirty.remove(&key);
        }
        for (key, tally) in context.restored.lock().expect("lock").drain(..) {
            tallies.insert(key, tally);
        }
    }

    async fn write(&self, tallies: &HashMap<String, BroadcastTally>, dirty: &mut HashSet<String>) {
        let mut written = Vec::new();
        for key in dirty.iter() {
            let Some(tally) = tallies.get(key) else {
                continue;
            };
            let payload = tally.encode_to_vec();
            let record = FutureRecord::to(&self.tallies_topic)
                .key(key)
                .payload(&payload);
            match self.producer.send(record, Duration::from_secs(10)).await {
                Ok(_) => written.push(key.clone()),
                // Written with the next flush (counts and offset together).
                Err((e, _)) => {
                    tracing::warn!(error = %e, key, "broadcast tally not written; next flush")
                }
            }
        }
        for key in written {
            dirty.remove(&key);
        }
    }
}
