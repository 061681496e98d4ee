//! The node's fast-path dedupe of retried webhooks and publishes.
//!
//! Channels deliver webhooks at least once, so the same channel message
//! (`wamid…`, `mid`, `MessageSid`) can arrive several times. This node
//! remembers, per `(tenant, channel, channel_message_id)`, where it
//! published a message, and answers a copy with `duplicate = true` and the
//! original message id, partition and offset, without publishing again.
//! Copies arriving while the first is still being published wait for its
//! outcome; if the first fails, the next copy publishes.
//!
//! **Window and bound.** Entries live in two generations of maps that
//! rotate every `window / 2`, or as soon as the current one holds
//! `max_entries / 2`: a message is remembered for between `window / 2` and
//! `window`, or less under a very high rate, and memory stays bounded.
//! Past the window, or for copies that reach *another* node, the workers'
//! check at the partition owner catches the duplicate, since every copy of
//! a conversation's message lands in the same partition.

use std::{
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use dashmap::{DashMap, mapref::entry::Entry};
use futures::{
    FutureExt,
    future::{BoxFuture, Shared},
};
use serde::{Deserialize, Serialize};

use crate::{error::IngestError, publisher::Ack};

/// Dedupe settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DedupeConfig {
    /// How long a channel message id is remembered at most.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// Most ids remembered at once (about 0.5 KB each with the pending
    /// publish they share, as measured by the overload benchmark).
    pub max_entries: usize,
}

impl Default for DedupeConfig {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(600),
            max_entries: 1_000_000,
        }
    }
}

/// Where the first copy of a message was published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// The message id the first copy got.
    pub message_id: String,
    /// Where it is in Kafka.
    pub ack: Ack,
}

/// The outcome of a publish, shared by every copy of the message.
pub type SharedPublish = Shared<BoxFuture<'static, Result<Published, IngestError>>>;

type Key = (String, i32, String);
/// Keys come from clients, so the hasher is seeded; foldhash is several
/// times faster than the default SipHash on these short keys.
/// Each entry has an id, so a failed publish forgets only itself, never a
/// later copy that replaced it.
type Generation = Arc<DashMap<Key, (u64, SharedPublish), foldhash::quality::RandomState>>;

/// Whether a first copy's publish has already failed. A failed publish is
/// forgotten when it is awaited, but its caller may have gone away before
/// that (a deadline, a closed stream): then the next copy finds it here,
/// and publishes again instead of inheriting the failure.
fn has_failed(first: &SharedPublish) -> bool {
    matches!(first.clone().now_or_never(), Some(Err(_)))
}

/// The node's bounded, time-windowed dedupe cache.
pub struct Dedupe {
    config: DedupeConfig,
    generations: RwLock<(Generation, Generation)>,
    rotated: Mutex<Instant>,
    next_id: AtomicU64,
}

impl Dedupe {
    /// An empty cache.
    pub fn new(config: DedupeConfig) -> Self {
        Self {
            config,
            generations: RwLock::default(),
            rotated: Mutex::new(Instant::now()),
            next_id: AtomicU64::new(0),
        }
    }

    /// Starts publishing with `enqueue` unless this channel message was
    /// already published (or is being published); returns the outcome to
    /// wait for and whether this call is a duplicate. `enqueue` runs
    /// synchronously, so callers keep their publish order. Messages without
    /// a channel message id are never deduplicated. If the first copy fails,
    /// it is forgotten, so a retry publishes again.
    pub fn publish_once<F>(
        &self,
        tenant: &str,
        channel: i32,
        channel_message_id: &str,
        enqueue: F,
    ) -> Result<(SharedPublish, bool), IngestError>
    where
        F: FnOnce() -> Result<BoxFuture<'static, Result<Published, IngestError>>, IngestError>,
    {
        if channel_message_id.is_empty() {
            return Ok((enqueue()?.shared(), false));
        }
        self.maybe_rotate();
        let key = (tenant.to_owned(), channel, channel_message_id.to_owned());
        let (current, previous) = self.generations.read().expect("dedupe lock").clone();
        // Clone the entry out, so no map lock is held while it is checked.
        let found = previous
            .get(&key)
            .or_else(|| current.get(&key))
            .map(|f| f.value().clone());
        if let Some((id, first)) = found {
            if !has_failed(&first) {
                metrics::counter!("switchboard_ingest_dedupe_hits_total").increment(1);
                return Ok((first, true));
            }
            for generation in [&previous, &current] {
                generation.remove_if(&key, |_, (other, _)| *other == id);
            }
        }
        match current.entry(key.clone()) {
            Entry::Occupied(first) => {
                metrics::counter!("switchboard_ingest_dedupe_hits_total").increment(1);
                Ok((first.get().1.clone(), true))
            }
            Entry::Vacant(slot) => {
                let pending = enqueue()?;
                let generation = current.clone();
                let id = self.next_id.fetch_add(1, Ordering::Relaxed);
                let shared = async move {
                    let result = pending.await;
                    if result.is_err() {
                        generation.remove_if(&key, |_, (other, _)| *other == id);
                    }
                    result
                }
                .boxed()
                .shared();
                slot.insert((id, shared.clone()));
                Ok((shared, false))
            }
        }
    }

    fn maybe_rotate(&self) {
        let full =
            self.generations.read().expect("dedupe lock").0.len() >= self.config.max_entries / 2;
        let mut rotated = self.rotated.lock().expect("dedupe lock");
        if full || rotated.elapsed() >= self.config.window / 2 {
            let mut generations = self.generations.write().expect("dedupe lock");
            generations.1 = std::mem::take(&mut generations.0);
            *rotated = Instant::now();
        }
    }

    /// Ids remembered right now.
    pub fn len(&self) -> usize {
        let generations = self.generations.read().expect("dedupe lock");
        generations.0.len() + generations.1.len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use rdkafka::{error::KafkaError, types::RDKafkaErrorCode};

    use super::*;

    fn published(n: i64) -> Published {
        Published {
            message_id: format!("m-{n}"),
            ack: Ack {
                partition: 1,
                offset: n,
            },
        }
    }

    fn ok(n: i64) -> Result<BoxFuture<'static, Result<Published, IngestError>>, IngestError> {
        Ok(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            Ok(published(n))
        }
        .boxed())
    }

    #[tokio::test]
    async fn copies_get_the_first_result_and_enqueue_once() {
        let dedupe = Dedupe::new(DedupeConfig::default());
        let calls = AtomicUsize::new(0);
        let mut outcomes = Vec::new();
        for _ in 0..5 {
            outcomes.push(
                dedupe
                    .publish_once("acme", 1, "wamid.1", || {
                        ok(calls.fetch_add(1, Ordering::SeqCst) as i64)
                    })
                    .unwrap(),
            );
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(outcomes.iter().filter(|(_, dup)| !dup).count(), 1);
        for (pending, _) in outcomes {
            assert_eq!(pending.await.unwrap(), published(0));
        }
        // Another tenant, channel or id is a different message.
        assert!(
            !dedupe
                .publish_once("globex", 1, "wamid.1", || ok(9))
                .unwrap()
                .1
        );
        assert!(
            !dedupe
                .publish_once("acme", 2, "wamid.1", || ok(9))
                .unwrap()
                .1
        );
    }

    #[tokio::test]
    async fn a_failed_first_copy_lets_the_next_one_publish() {
        let dedupe = Dedupe::new(DedupeConfig::default());
        let down =
            || IngestError::Unavailable(KafkaError::Global(RDKafkaErrorCode::AllBrokersDown));
        let (first, _) = dedupe
            .publish_once(
                "acme",
                1,
                "mid.1",
                || Ok(async move { Err(down()) }.boxed()),
            )
            .unwrap();
        assert!(first.await.is_err());
        let (second, dup) = dedupe.publish_once("acme", 1, "mid.1", || ok(3)).unwrap();
        assert!(!dup);
        assert_eq!(second.await.unwrap(), published(3));
        // An enqueue error is returned as it is and remembers nothing.
        assert!(
            dedupe
                .publish_once("acme", 1, "mid.2", || Err(down()))
                .is_err()
        );
        assert!(!dedupe.publish_once("acme", 1, "mid.2", || ok(4)).unwrap().1);
    }

    /// A first copy whose caller went away before Kafka answered with an
    /// error must not hand that error to every later copy.
    #[tokio::test]
    async fn a_failed_first_copy_nobody_awaited_lets_the_next_one_publish() {
        let dedupe = Dedupe::new(DedupeConfig::default());
        let (first, dup) = dedupe
            .publish_once("acme", 1, "mid.9", || {
                Ok(async {
                    Err(IngestError::Unavailable(KafkaError::MessageProduction(
                        RDKafkaErrorCode::MessageTimedOut,
                    )))
                }
                .boxed())
            })
            .unwrap();
        assert!(!dup);
        drop(first); // the caller's deadline ran out
        let (second, dup) = dedupe.publish_once("acme", 1, "mid.9", || ok(5)).unwrap();
        assert!(!dup, "a failed first copy is not a duplicate to answer");
        assert_eq!(second.await.unwrap(), published(5));
        // And the successful one is remembered.
        assert!(dedupe.publish_once("acme", 1, "mid.9", || ok(6)).unwrap().1);
    }

    #[tokio::test]
    async fn forgets_after_the_window_and_stays_bounded() {
        let dedupe = Dedupe::new(DedupeConfig {
            window: Duration::from_millis(100),
            max_entries: 10,
        });
        let dup = |id: &str| dedupe.publish_once("t", 1, id, || ok(1)).unwrap().1;
        assert!(!dup("a"));
        assert!(dup("a"));
        tokio::time::sleep(Duration::from_millis(120)).await;
        dup("x"); // rotates: "a" moves to the previous generation
        assert!(dup("a"), "still remembered");
        tokio::time::sleep(Duration::from_millis(60)).await;
        dup("y"); // rotates again: "a" is dropped
        assert!(!dup("a"), "remembered at most `window`");
        for i in 0..100 {
            dup(&format!("k{i}"));
        }
        assert!(dedupe.len() <= 10, "bounded: {}", dedupe.len());
        // Messages without a channel id are never deduplicated.
        assert!(!dup("") && !dup(""));
    }
}
