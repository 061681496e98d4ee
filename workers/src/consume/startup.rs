//! What a partition needs before its first message: its conversation
//! states, rebuilt from the state topic, and the messages its previous
//! owner finished above the committed offset.

use std::{collections::BTreeSet, time::Duration};

use rdkafka::{Offset, TopicPartitionList, consumer::Consumer, error::KafkaResult};
use switchboard_runtime::retry::{self, Backoff};
use tokio_util::sync::CancellationToken;

use super::{offsets::parse_skip_metadata, partition::PartitionContext};
use crate::state::PartitionStates;

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
            .and_then(|e| match e.offset() {
                Offset::Offset(o) => Some(parse_skip_metadata(o, e.metadata())),
                _ => None,
            });
        drop(committed);
        KafkaResult::Ok(found.unwrap_or_default())
    });
    tokio::select! {
        result = lookup => match result {
            Ok(Ok(done)) => {
                if !done.is_empty() {
                    tracing::info!(partition = cx.partition, done = done.len(), "skipping messages the previous owner finished");
                }
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

/// The partition's conversation states, read back from the state topic.
/// A failed read is retried (routing without state would forget owners and
/// consent) until it succeeds or `abort` fires.
pub(super) async fn rebuild_states(
    cx: &PartitionContext,
    abort: &CancellationToken,
) -> Option<PartitionStates> {
    let rebuilt = retry::retry(
        Backoff::new(Duration::from_millis(200), Duration::from_secs(5)),
        abort,
        |_: &anyhow::Error| true,
        |error, _, wait| {
            tracing::warn!(%error, partition = cx.partition, retry_in = ?wait, "cannot rebuild conversation state; retrying")
        },
        || {
            let (kafka, topic, partition) =
                (cx.kafka.clone(), cx.state_topic.clone(), cx.partition);
            async move {
                tokio::task::spawn_blocking(move || {
                    PartitionStates::rebuild(&kafka, &topic, partition)
                })
                .await
                .map_err(anyhow::Error::from)?
                .map_err(anyhow::Error::from)
            }
        },
    )
    .await;
    match rebuilt {
        Ok(Ok(states)) => Some(states),
        // Retried without limit: only a stop ends it.
        Ok(Err(_)) | Err(retry::Cancelled) => None,
    }
}
