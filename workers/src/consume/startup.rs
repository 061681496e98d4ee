//! What a partition needs before its first message: its state writer
//! (which fences the previous owner's), its conversation states, rebuilt
//! from the state topic, and the messages its previous owner finished
//! above the committed offset.

use std::{
    collections::BTreeSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use rdkafka::{Offset, TopicPartitionList, consumer::Consumer, error::KafkaResult};
use switchboard_runtime::retry::{self, Backoff};
use tokio_util::sync::CancellationToken;

use super::{offsets::parse_skip_metadata, partition::PartitionContext};
use crate::state::{PartitionStates, RebuildError, StateWriteError, StateWriter, WriterConfig};

/// The messages of the partition that its previous owner finished above the
/// committed offset, from the commit's metadata. Without them (no metadata,
/// or the lookup failing) those messages are simply routed again.
pub(super) async fn done_by_previous_owner(
    cx: &PartitionContext,
    abort: &CancellationToken,
) -> Option<BTreeSet<i64>> {
    let (consumer, topic, partition) = (cx.consumer.clone(), cx.topic.clone(), cx.partition);
    let lookup = tokio::task::spawn_blocking(move || {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&topic, partition);
        let committed = consumer.committed_offsets(tpl, Duration::from_secs(10))?;
        // Keep no list from committed_offsets alive: dropping the consumer
        // hangs while one is.
        let found = committed
            .find_partition(&topic, partition)
            .map(|e| match e.offset() {
                Offset::Offset(o) => (Some(o), parse_skip_metadata(o, e.metadata())),
                _ => (None, BTreeSet::new()),
            });
        drop(committed);
        KafkaResult::Ok(found.unwrap_or_default())
    });
    tokio::select! {
        result = lookup => match result {
            Ok(Ok((committed, done))) => {
                tracing::info!(partition = cx.partition, ?committed, skipping = done.len(), "partition ready: routing from its committed offset, skipping what the previous owner finished above it");
                Some(done)
            }
            other => {
                tracing::warn!(?other, partition = cx.partition, "cannot read the committed offset's metadata; finished messages may be routed again");
                Some(BTreeSet::new())
            }
        },
        _ = abort.cancelled() => None,
    }
}

/// The partition's state writer, opened before its states are rebuilt: a
/// previous owner's open transaction is resolved by then, and its later
/// writes are refused. `None` once `abort` fires, or when the writer can
/// never be opened (logged): the partition then waits for its revocation.
pub(super) async fn open_state_writer(
    cx: &PartitionContext,
    abort: &CancellationToken,
) -> Option<StateWriter> {
    let config = WriterConfig {
        kafka: cx.kafka.clone(),
        transactional_id: cx.state_transactional_id.clone(),
        topic: cx.state_topic.clone(),
        partition: cx.partition,
        reopen_after: cx.state_reopen_after,
    };
    let opened = StateWriter::open_retrying(config, abort).await?;
    match opened {
        Ok(writer) => Some(writer),
        Err(error) => {
            stop_writing(cx.partition, &error);
            None
        }
    }
}

/// The partition's state writes stopped for good: the producer failed in a
/// way no retry clears (not authorized, say). Nothing unfinished was
/// stored; the partition waits, paused once its queue is full, until it is
/// revoked or the worker restarts.
pub(super) fn stop_writing(partition: i32, error: &StateWriteError) {
    tracing::error!(%error, partition, "conversation-state writes stopped; routing of the partition stops until it is revoked or the worker restarts");
}

/// The partition's conversation states: its local file opened and brought
/// up to date from the state topic. A failed attempt is retried (routing
/// without state would forget owners and consent) until it succeeds or
/// `abort` fires; each retry resumes from what the previous ones applied,
/// so a slow rebuild always finishes.
pub(super) async fn rebuild_states(
    cx: &PartitionContext,
    abort: &CancellationToken,
) -> Option<PartitionStates> {
    // What the attempts applied so far, for the next one to go on from.
    let slot: Arc<Mutex<Option<PartitionStates>>> = Arc::default();
    let rebuilt = retry::retry(
        Backoff::new(Duration::from_millis(200), Duration::from_secs(5)),
        abort,
        |_: &RebuildError| true,
        |error, attempts, wait| {
            tracing::warn!(%error, partition = cx.partition, attempts, retry_in = ?wait, "cannot rebuild conversation state; retrying from where it stopped")
        },
        || {
            let (kafka, topic, partition) =
                (cx.kafka.clone(), cx.state_topic.clone(), cx.partition);
            let (dir, max_cached, max_age) =
                (cx.state_dir.clone(), cx.max_cached, cx.state_store_max_age);
            let slot = slot.clone();
            async move {
                tokio::task::spawn_blocking(move || {
                    let mut slot = slot.lock().expect("rebuild slot lock");
                    let states = match slot.as_mut() {
                        Some(states) => states,
                        None => slot.insert(PartitionStates::open(
                            &dir, &topic, partition, max_cached,
                        )?),
                    };
                    states.catch_up(&kafka, &topic, partition, max_age)
                })
                .await
                .map_err(|e| RebuildError::Task(e.to_string()))?
            }
        },
    )
    .await;
    match rebuilt {
        Ok(Ok(_)) => slot.lock().expect("rebuild slot lock").take(),
        // Retried without limit: only a stop ends it.
        Ok(Err(_)) | Err(retry::Cancelled) => None,
    }
}
