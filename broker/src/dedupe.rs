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
//! rotate every `window / 2`, or as soon as the current one has taken its
//! capacity of ids ([`DedupeConfig::generation_capacity`], at most
//! `max_entries / 2`): a message is remembered for between `window / 2`
//! and `window`, or less under a very high rate, and memory stays bounded.
//! A generation's table is sized once, when it starts, to hold a full
//! generation at 85% load:
//! it never doubles (hashbrown doubles past 7/8), so a remembered id costs
//! its entry over that load, not over a table doubled to under half full.
//! Past the window, or for copies that reach *another* node, the workers'
//! check at the partition owner catches the duplicate, since every copy of
//! a conversation's message lands in the same partition.
//!
//! **What an id costs.** The maps are keyed by a 128-bit SipHash-2-4 of
//! `(tenant, channel, channel_message_id)` under a random per-process key,
//! not by the strings themselves. A publish still in flight keeps the
//! outcome its copies wait for; once Kafka acknowledged it, the entry
//! shrinks to what a copy's answer needs: the message id (16 bytes when it
//! is a UUID in canonical form, as the node assigns them; a caller's other
//! ids are kept as a string), the partition and the offset. An entry is 48
//! bytes, so at the tables' 85% load a remembered id costs about 58 bytes
//! in the maps; `cargo run --release -p switchboard-broker --example
//! dedupe_memory` measured 65 bytes of resident memory per remembered id
//! with both generations full (891,288 ids for `max_entries` 1,000,000:
//! 55.5 MiB). It was 112–122 bytes while each generation's table doubled
//! to under half full, and 554 bytes when the maps kept the strings and
//! the shared outcome. A publish whose caller went away before Kafka answered
//! stays pending (its outcome is driven by whoever waits for it) until a
//! copy looks it up or its generation rotates out.
//!
//! A 128-bit keyed hash makes two different messages look alike with a
//! probability of about n²/2¹²⁹ (1e-26 for a million ids), and a caller
//! who does not know the key cannot aim for a collision.

use std::{
    hash::Hasher as _,
    sync::{
        Arc, Mutex, RwLock, Weak,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use dashmap::{DashMap, mapref::entry::Entry};
use futures::{
    FutureExt,
    future::{BoxFuture, Shared},
};
use serde::{Deserialize, Serialize};
use siphasher::sip128::{Hasher128 as _, SipHasher24};

use crate::{error::IngestError, publisher::Ack};

/// Dedupe settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DedupeConfig {
    /// How long a channel message id is remembered at most.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// Most ids remembered at once, over both generations. Each generation
    /// holds [`Self::generation_capacity`] (891,288 of the default
    /// 1,000,000 together), at about 60 bytes each once published (the
    /// `dedupe_memory` example measures it), so the default is about 60 MB
    /// at most.
    pub max_entries: usize,
}

/// How full a generation's table gets: below hashbrown's 7/8, with room
/// for the map's shards filling a few percent unevenly.
const LOAD_PERCENT: usize = 85;

impl DedupeConfig {
    /// Ids one generation holds before the cache rotates: as many as fit a
    /// power-of-two table at [`LOAD_PERCENT`], the largest such table whose
    /// full load is at most `max_entries / 2`.
    pub fn generation_capacity(&self) -> usize {
        let half = (self.max_entries / 2).max(1);
        let mut buckets = (half * 100 / LOAD_PERCENT).max(1).next_power_of_two();
        if buckets * LOAD_PERCENT / 100 > half {
            buckets /= 2;
        }
        (buckets * LOAD_PERCENT / 100).max(1)
    }

    /// A new generation's map, sized for a full generation.
    fn generation(&self) -> Generation {
        Arc::new(DashMap::with_capacity_and_hasher(
            self.generation_capacity(),
            foldhash::fast::RandomState::default(),
        ))
    }
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

/// One remembered channel message. 32 bytes: a published entry keeps only
/// what a copy's answer needs.
#[derive(Clone)]
enum Slot {
    /// Being published: copies wait for the first one's outcome. Each
    /// publish has an id, so a failure forgets only itself, never a later
    /// copy that replaced it.
    Pending { id: u64, outcome: SharedPublish },
    /// Acknowledged by Kafka, with a message id that is a UUID in canonical
    /// form (as the node assigns them), kept as its 16 bytes.
    Published {
        uuid: [u8; 16],
        partition: i32,
        offset: i64,
    },
    /// Acknowledged by Kafka, with a caller's message id that is not a UUID.
    PublishedAs {
        message_id: Box<str>,
        partition: i32,
        offset: i64,
    },
}

impl Slot {
    fn done(published: &Published) -> Self {
        let Ack { partition, offset } = published.ack;
        let id = published.message_id.as_str();
        if let Ok(uuid) = uuid::Uuid::try_parse(id) {
            // Only the canonical form: the answer must give back the same text.
            let mut canonical = [0; uuid::fmt::Hyphenated::LENGTH];
            if &*uuid.hyphenated().encode_lower(&mut canonical) == id {
                return Self::Published {
                    uuid: uuid.into_bytes(),
                    partition,
                    offset,
                };
            }
        }
        Self::PublishedAs {
            message_id: id.into(),
            partition,
            offset,
        }
    }

    fn is_pending(&self, publish: u64) -> bool {
        matches!(self, Self::Pending { id, .. } if *id == publish)
    }

    /// The outcome a copy waits for.
    fn outcome(&self) -> SharedPublish {
        let (message_id, partition, offset) = match self {
            Self::Pending { outcome, .. } => return outcome.clone(),
            Self::Published {
                uuid,
                partition,
                offset,
            } => (
                uuid::Uuid::from_bytes(*uuid).hyphenated().to_string(),
                *partition,
                *offset,
            ),
            Self::PublishedAs {
                message_id,
                partition,
                offset,
            } => (message_id.to_string(), *partition, *offset),
        };
        futures::future::ready(Ok(Published {
            message_id,
            ack: Ack { partition, offset },
        }))
        .boxed()
        .shared()
    }

    /// Whether a first copy's publish has already failed. A failed publish
    /// is forgotten when it is awaited, but its caller may have gone away
    /// before that (a deadline, a closed stream): then the next copy finds
    /// it here, and publishes again instead of inheriting the failure.
    fn has_failed(&self) -> bool {
        match self {
            Self::Pending { outcome, .. } => {
                matches!(outcome.clone().now_or_never(), Some(Err(_)))
            }
            Self::Published { .. } | Self::PublishedAs { .. } => false,
        }
    }
}

/// A 128-bit keyed hash of `(tenant, channel, channel_message_id)`, as two
/// words (a `u128` would be 16-byte aligned, and waste 8 bytes an entry).
type Key = [u64; 2];

/// Keys are already keyed hashes: the map's own hasher only spreads them.
type Generation = Arc<DashMap<Key, Slot, foldhash::fast::RandomState>>;

/// The node's bounded, time-windowed dedupe cache.
pub struct Dedupe {
    config: DedupeConfig,
    /// `config.generation_capacity()`, worked out once.
    capacity: usize,
    generations: RwLock<(Generation, Generation)>,
    /// Ids inserted into the current generation. Counted here because a
    /// map's `len()` locks each of its shards in turn, per publish. An
    /// insert racing a rotation may count in the new generation: a few ids
    /// early, never a missed bound.
    inserted: AtomicUsize,
    /// When the next rotation is due, in milliseconds from `epoch`.
    due_ms: AtomicU64,
    epoch: Instant,
    /// Taken only to rotate, so that one publish rotates, not several.
    rotating: Mutex<()>,
    next_id: AtomicU64,
    /// SipHash key, random per process.
    hash_key: [u8; 16],
}

impl Dedupe {
    /// An empty cache.
    pub fn new(config: DedupeConfig) -> Self {
        Self {
            generations: RwLock::new((config.generation(), config.generation())),
            capacity: config.generation_capacity(),
            inserted: AtomicUsize::new(0),
            due_ms: AtomicU64::new(millis(config.window / 2)),
            epoch: Instant::now(),
            rotating: Mutex::new(()),
            config,
            next_id: AtomicU64::new(0),
            hash_key: rand::random(),
        }
    }

    /// The cache key of a channel message: every part length-prefixed, so
    /// no two different triples feed the hash the same bytes.
    fn key(&self, tenant: &str, channel: i32, channel_message_id: &str) -> Key {
        let mut hasher = SipHasher24::new_with_key(&self.hash_key);
        hasher.write_usize(tenant.len());
        hasher.write(tenant.as_bytes());
        hasher.write_i32(channel);
        hasher.write_usize(channel_message_id.len());
        hasher.write(channel_message_id.as_bytes());
        let hash = hasher.finish128();
        [hash.h1, hash.h2]
    }

    /// Starts publishing with `enqueue` unless this channel message was
    /// already published (or is being published); returns the outcome to
    /// wait for and whether this call is a duplicate. `enqueue` runs
    /// synchronously, so callers keep their publish order. Messages without
    /// a channel message id are never deduplicated. If the first copy fails,
    /// it is forgotten, so a retry publishes again.
    pub fn publish_once<F, P>(
        &self,
        tenant: &str,
        channel: i32,
        channel_message_id: &str,
        enqueue: F,
    ) -> Result<(SharedPublish, bool), IngestError>
    where
        F: FnOnce() -> Result<P, IngestError>,
        P: Future<Output = Result<Published, IngestError>> + Send + 'static,
    {
        if channel_message_id.is_empty() {
            return Ok((enqueue()?.boxed().shared(), false));
        }
        self.maybe_rotate();
        let key = self.key(tenant, channel, channel_message_id);
        let (current, previous) = self.generations.read().expect("dedupe lock").clone();
        // Entries are cloned out, so no map lock is held while one is
        // checked (checking may complete the publish, which updates the map).
        let hit = |first: Slot| {
            metrics::counter!("switchboard_ingest_dedupe_hits_total").increment(1);
            Ok((first.outcome(), true))
        };
        let found = previous.get(&key).map(|f| f.value().clone());
        if let Some(first) = found {
            if !first.has_failed() {
                return hit(first);
            }
            forget_failed(&previous, &key, &first);
        }
        // The current generation is looked up once, by the entry an insert
        // needs. A failed first copy found there is forgotten and the entry
        // looked up again, once: a copy inserted meanwhile is taken as it is.
        let mut retried = false;
        loop {
            match current.entry(key) {
                Entry::Occupied(entry) => {
                    let first = entry.get().clone();
                    drop(entry);
                    if retried || !first.has_failed() {
                        return hit(first);
                    }
                    forget_failed(&current, &key, &first);
                    retried = true;
                }
                Entry::Vacant(slot) => {
                    let pending = enqueue()?;
                    // Weak: a generation rotated out is freed even while a
                    // publish nobody awaits still points at it.
                    let generation = Arc::downgrade(&current);
                    let id = self.next_id.fetch_add(1, Ordering::Relaxed);
                    let outcome = async move {
                        let result = pending.await;
                        settle(&generation, key, id, &result);
                        result
                    }
                    .boxed()
                    .shared();
                    slot.insert(Slot::Pending {
                        id,
                        outcome: outcome.clone(),
                    });
                    self.inserted.fetch_add(1, Ordering::Relaxed);
                    return Ok((outcome, false));
                }
            }
        }
    }

    /// Rotates when the current generation is full or half a window old.
    /// A publish only reads two atomics; the lock is taken to rotate.
    fn maybe_rotate(&self) {
        let due = || {
            self.inserted.load(Ordering::Relaxed) >= self.capacity
                || millis(self.epoch.elapsed()) >= self.due_ms.load(Ordering::Relaxed)
        };
        if !due() {
            return;
        }
        let _rotating = self.rotating.lock().expect("dedupe lock");
        // Asked again under the lock: another publish may have just rotated.
        if due() {
            let fresh = self.config.generation();
            let mut generations = self.generations.write().expect("dedupe lock");
            generations.1 = std::mem::replace(&mut generations.0, fresh);
            self.inserted.store(0, Ordering::Relaxed);
            let next = self.epoch.elapsed() + self.config.window / 2;
            self.due_ms.store(millis(next), Ordering::Relaxed);
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

    /// Ids remembered right now whose publish is still in flight (or was
    /// never awaited).
    pub fn pending(&self) -> usize {
        let generations = self.generations.read().expect("dedupe lock");
        [&generations.0, &generations.1]
            .iter()
            .map(|g| {
                g.iter()
                    .filter(|e| matches!(e.value(), Slot::Pending { .. }))
                    .count()
            })
            .sum()
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Forgets a first copy whose publish failed, unless another copy
/// replaced it meanwhile.
fn forget_failed(generation: &Generation, key: &Key, first: &Slot) {
    if let Slot::Pending { id, .. } = first {
        generation.remove_if(key, |_, slot| slot.is_pending(*id));
    }
}

/// A publish finished: a failure is forgotten, so the next copy publishes
/// again; a success shrinks to the compact entry. Only the entry of this
/// very publish (`id`) is touched.
fn settle(
    generation: &Weak<DashMap<Key, Slot, foldhash::fast::RandomState>>,
    key: Key,
    id: u64,
    result: &Result<Published, IngestError>,
) {
    let Some(generation) = generation.upgrade() else {
        return; // rotated out meanwhile
    };
    match result {
        Err(_) => {
            generation.remove_if(&key, |_, slot| slot.is_pending(id));
        }
        Ok(published) => {
            if let Some(mut slot) = generation.get_mut(&key)
                && slot.is_pending(id)
            {
                *slot = Slot::done(published);
            }
        }
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
                .publish_once("acme", 1, "mid.2", || Err::<BoxFuture<'static, _>, _>(
                    down()
                ))
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

    /// A copy of a published message is answered from the compact entry
    /// with exactly the first copy's message id, partition and offset,
    /// whether the id is a node-assigned UUID or a caller's own string.
    #[tokio::test]
    async fn published_entries_are_compact_and_answer_exactly() {
        let dedupe = Dedupe::new(DedupeConfig::default());
        let uuid = uuid::Uuid::now_v7().to_string();
        let upper = uuid::Uuid::now_v7().to_string().to_uppercase();
        for (cmid, message_id) in [
            ("wamid.1", uuid.as_str()),
            ("wamid.2", upper.as_str()),
            ("wamid.3", "caller-id-42"),
        ] {
            let first = Published {
                message_id: message_id.to_owned(),
                ack: Ack {
                    partition: 7,
                    offset: 1 << 40,
                },
            };
            let answer = first.clone();
            let (outcome, dup) = dedupe
                .publish_once("acme", 1, cmid, || Ok(async move { Ok(answer) }.boxed()))
                .unwrap();
            assert!(!dup);
            assert_eq!(outcome.await.unwrap(), first);
            let (copy, dup) = dedupe
                .publish_once("acme", 1, cmid, || -> Result<BoxFuture<'static, _>, _> {
                    panic!("a copy is not published")
                })
                .unwrap();
            assert!(dup);
            assert_eq!(copy.await.unwrap(), first, "{message_id}");
        }
        assert_eq!(dedupe.pending(), 0, "every published entry is compact");
        assert_eq!(dedupe.len(), 3);
        let generations = dedupe.generations.read().unwrap();
        let kinds: Vec<_> = generations
            .0
            .iter()
            .map(|e| matches!(e.value(), Slot::Published { .. }))
            .collect();
        // Only the canonical (lower-case) UUID is kept as 16 bytes.
        assert_eq!(kinds.iter().filter(|k| **k).count(), 1);
    }

    /// What a remembered id costs in the maps: its entry (key and slot) and
    /// hashbrown's control byte, over the table's load when both
    /// generations are full (each in a power-of-two table sized for it at
    /// 85%). The `dedupe_memory` example measures the process's resident
    /// memory instead.
    #[test]
    fn a_remembered_id_costs_about_60_bytes() {
        let entry = size_of::<(Key, Slot)>();
        assert!(entry <= 48, "{entry} bytes an entry");
        let config = DedupeConfig::default();
        let per_generation = config.generation_capacity();
        assert_eq!(per_generation, 445_644);
        assert!(2 * per_generation <= config.max_entries);
        let buckets = (per_generation * 8).div_ceil(7).next_power_of_two();
        assert_eq!(buckets, 524_288, "the table is never doubled");
        let per_id = 2 * buckets * (entry + 1) / (2 * per_generation);
        assert!(per_id <= 60, "{per_id} bytes per id");
    }

    #[test]
    fn a_generation_fits_its_table_at_most_85_percent_full() {
        for max_entries in [1, 2, 10, 1_000, 999_999, 1_000_000, 10_000_000] {
            let config = DedupeConfig {
                max_entries,
                ..DedupeConfig::default()
            };
            let capacity = config.generation_capacity();
            assert!(capacity >= 1);
            assert!(2 * capacity <= max_entries.max(2), "{max_entries}");
            let buckets = (capacity * 100).div_ceil(LOAD_PERCENT).next_power_of_two();
            // Not smaller than it could be: twice the table would overflow.
            assert!(
                2 * buckets * LOAD_PERCENT / 100 > max_entries / 2,
                "{max_entries}"
            );
        }
    }
}
