//! Rebalances: which partitions this worker owns, and what happens to a
//! revoked one's work. Also exports each partition's lag from librdkafka's
//! statistics.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
};

use rdkafka::{
    ClientContext, Offset, TopicPartitionList,
    consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance},
    statistics::Statistics,
};
use tokio::task::AbortHandle;

use super::offsets::OffsetTracker;

/// Records revocations seen during a rebalance, for the loop to act on.
#[derive(Default)]
pub struct WorkerContext {
    pub(super) revoked: Mutex<Vec<(String, i32)>>,
    /// Every partition being routed: its offset tracker and its task, so a
    /// revoke can stop the task and commit at once, inside the rebalance.
    pub(super) partitions: Mutex<HashMap<(String, i32), Routing>>,
    /// The partitions this worker owns now.
    pub(super) assigned: Mutex<HashSet<(String, i32)>>,
}

/// A partition being routed.
pub(super) struct Routing {
    pub tracker: Arc<Mutex<OffsetTracker>>,
    pub task: AbortHandle,
}

impl WorkerContext {
    /// Stops routing each revoked partition, then commits its first message
    /// not done, with the messages done above it in the commit metadata, so
    /// the next owner skips them instead of routing them again. Only what
    /// was in flight (at most one message per conversation) is redone.
    /// `lost`: the group went on without this worker (its session expired,
    /// Kafka away).
    fn stop_and_commit(
        &self,
        consumer: &BaseConsumer<Self>,
        revoked: &TopicPartitionList,
        lost: bool,
    ) {
        let mut partitions = self.partitions.lock().expect("partitions lock");
        let mut assigned = self.assigned.lock().expect("assigned lock");
        let mut tpl = TopicPartitionList::new();
        for e in revoked.elements() {
            assigned.remove(&(e.topic().to_owned(), e.partition()));
            let Some(routing) = partitions.remove(&(e.topic().to_owned(), e.partition())) else {
                continue;
            };
            routing.task.abort();
            let Some((next, metadata)) =
                routing.tracker.lock().expect("tracker lock").commit_point()
            else {
                continue;
            };
            let mut entry = tpl.add_partition(e.topic(), e.partition());
            if entry.set_offset(Offset::Offset(next)).is_ok() {
                entry.set_metadata(metadata);
            }
        }
        if tpl.count() == 0 {
            return;
        }
        if lost {
            // The commit would be refused, after blocking
            // this callback, and with it the consume loop, until Kafka
            // answered. The next owner redoes from the last commit.
            tracing::info!(
                partitions = tpl.count(),
                "partitions lost, not revoked: nothing committed"
            );
            return;
        }
        // Stored too, or the automatic commit on revoke would drop the metadata.
        if let Err(e) = consumer.store_offsets(&tpl) {
            tracing::debug!(error = %e, "storing offsets on revoke");
        }
        if let Err(e) = consumer.commit(&tpl, CommitMode::Sync) {
            tracing::warn!(error = %e, "commit on revoke failed; the next owner redoes more");
        }
    }
}

impl ClientContext for WorkerContext {
    /// librdkafka's statistics (every `statistics.interval.ms`): exports the
    /// lag of each partition this worker consumes. Partitions it does not
    /// own (any more) read 0, so a sum over workers counts each lag once.
    fn stats(&self, statistics: Statistics) {
        for topic in statistics.topics.values() {
            for (partition, p) in &topic.partitions {
                if *partition < 0 {
                    continue; // librdkafka's internal unassigned partition
                }
                let owned = p.fetch_state == "active" && p.consumer_lag >= 0;
                metrics::gauge!(
                    "switchboard_worker_consumer_lag_records",
                    "partition" => partition.to_string()
                )
                .set(if owned { p.consumer_lag as f64 } else { 0.0 });
            }
        }
    }
}

impl ConsumerContext for WorkerContext {
    /// A partition paused for backpressure before it was revoked would stay
    /// paused if it came back: newly assigned partitions always start
    /// fetching.
    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance
            && let Err(e) = consumer.resume(tpl)
        {
            tracing::debug!(error = %e, "resuming newly assigned partitions");
        }
    }

    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(tpl) => {
                metrics::counter!("switchboard_worker_rebalances_total", "event" => "revoke")
                    .increment(1);
                let lost = consumer.assignment_lost();
                tracing::info!(partitions = ?numbers(tpl), lost, "partitions revoked");
                self.stop_and_commit(consumer, tpl, lost);
                let mut revoked = self.revoked.lock().expect("revoked list lock");
                revoked.extend(
                    tpl.elements()
                        .iter()
                        .map(|e| (e.topic().to_owned(), e.partition())),
                );
            }
            Rebalance::Assign(tpl) => {
                metrics::counter!("switchboard_worker_rebalances_total", "event" => "assign")
                    .increment(1);
                tracing::info!(partitions = ?numbers(tpl), "partitions assigned");
                self.assigned.lock().expect("assigned lock").extend(
                    tpl.elements()
                        .iter()
                        .map(|e| (e.topic().to_owned(), e.partition())),
                );
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance error"),
        }
    }
}

/// The partition numbers of a list, for the log.
fn numbers(tpl: &TopicPartitionList) -> Vec<i32> {
    tpl.elements().iter().map(|e| e.partition()).collect()
}
