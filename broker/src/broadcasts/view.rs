//! The node's view of the broadcasts: the latest progress per broadcast
//! (bounded, least recently updated forgotten first) and the latest tally
//! per counted partition, followed from the compacted topics.

use std::{
    collections::HashMap,
    num::NonZeroUsize,
    sync::{Arc, Mutex},
    time::Duration,
};

use prost::Message as _;
use rdkafka::{
    Message, Offset, TopicPartitionList,
    consumer::{Consumer, StreamConsumer},
};
use switchboard_proto::v1::{BroadcastCounts, BroadcastProgress, BroadcastReport, BroadcastTally};
use switchboard_runtime::{kafka::KafkaConfig, shutdown::Shutdown};

use super::config::BroadcastsConfig;

#[derive(Debug)]
struct Inner {
    progress: lru::LruCache<String, BroadcastProgress>,
    tallies: HashMap<String, BroadcastTally>,
}

/// The broadcasts the node knows of.
#[derive(Clone, Debug)]
pub struct BroadcastView {
    inner: Arc<Mutex<Inner>>,
}

impl BroadcastView {
    pub fn new(max_tracked: usize) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Inner {
                progress: lru::LruCache::new(NonZeroUsize::new(max_tracked.max(1)).expect("max 1")),
                tallies: HashMap::new(),
            })),
        }
    }

    /// The report of broadcast `id` of `tenant`, when known.
    pub fn report(&self, tenant: &str, id: &str) -> Option<BroadcastReport> {
        let mut inner = self.inner.lock().expect("view lock");
        let progress = inner.progress.get(id)?.clone();
        if progress.spec.as_ref().is_none_or(|s| s.tenant_id != tenant) {
            return None;
        }
        let mut counts = BroadcastCounts::default();
        for tally in inner.tallies.values() {
            if let Some(part) = tally.broadcasts.get(id) {
                counts.add(part);
            }
        }
        let refused = counts.refused.values().sum();
        Some(BroadcastReport {
            progress: Some(progress),
            counts: Some(counts),
            refused,
        })
    }

    fn apply(&self, topic_is_progress: bool, key: &str, value: Option<&[u8]>) {
        let mut inner = self.inner.lock().expect("view lock");
        if topic_is_progress {
            match value.and_then(|v| BroadcastProgress::decode(v).ok()) {
                Some(p) => {
                    inner.progress.put(key.to_owned(), p);
                }
                None => {
                    inner.progress.pop(key);
                }
            }
        } else if let Some(t) = value.and_then(|v| BroadcastTally::decode(v).ok()) {
            inner.tallies.insert(key.to_owned(), t);
        }
    }

    /// Follows the progress and tally topics until `shutdown`, from their
    /// beginning, waiting for them to exist.
    pub async fn follow(self, kafka: KafkaConfig, config: BroadcastsConfig, shutdown: Shutdown) {
        let consumer: StreamConsumer = match kafka
            .consumer_config(&[
                ("group.id", "switchboard-broker-broadcast-view"),
                ("enable.auto.commit", "false"),
            ])
            .create()
        {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "broadcast view: no consumer; Get answers NOT_FOUND");
                return;
            }
        };
        let mut tpl = TopicPartitionList::new();
        for topic in [&config.progress_topic, &config.tallies_topic] {
            let count = loop {
                let (k, t) = (kafka.clone(), topic.clone());
                match tokio::task::spawn_blocking(move || k.partition_count(&t)).await {
                    Ok(Ok(n)) if n > 0 => break n,
                    _ => {}
                }
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    () = shutdown.cancelled() => return,
                }
            };
            for p in 0..count {
                let _ = tpl.add_partition_offset(
                    topic,
                    i32::try_from(p).unwrap_or(0),
                    Offset::Beginning,
                );
            }
        }
        if let Err(e) = consumer.assign(&tpl) {
            tracing::error!(error = %e, "broadcast view: cannot follow the topics");
            return;
        }
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                record = consumer.recv() => match record {
                    Ok(record) => {
                        if let Some(key) = record.key().and_then(|k| std::str::from_utf8(k).ok()) {
                            self.apply(record.topic() == config.progress_topic, key, record.payload());
                        }
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "broadcast view");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
            }
        }
    }
}
