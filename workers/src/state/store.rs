//! A partition's conversation states: a bounded cache in memory over every
//! state on local disk ([`DiskStore`]), the disk brought up to date from
//! the state topic when the partition is assigned; owned by the
//! partition's routing loop.
//!
//! - A lookup reads the cache, then the states evicted before their flush
//!   was acknowledged, then the disk. The disk holds everything Kafka
//!   acknowledged, so a miss reads the same state the topic holds.
//! - At most `max_cached` states stay in memory, least recently used out
//!   first. A state changed since it was last written to disk is never
//!   dropped: evicted, it waits in `unwritten` until its flush is
//!   acknowledged and written to disk.
//! - States reach the disk when Kafka acknowledges their flush, exactly
//!   the bytes Kafka has.

use std::{
    num::NonZeroUsize,
    path::Path,
    time::{Duration, Instant, SystemTime},
};

use lru::LruCache;
use prost::Message as _;
use switchboard_proto::v1::ConversationState;
use switchboard_runtime::kafka::KafkaConfig;

use super::{
    disk::{Checkpoint, DiskError, DiskStore},
    expiry::{ExpiryPolicy, Verdict},
};

/// How a rebuild failed.
#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    /// Kafka could not be read; retried, resuming where it stopped.
    #[error("reading the state topic: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// The local store failed.
    #[error(transparent)]
    Disk(#[from] DiskError),
    /// The blocking task running the rebuild failed.
    #[error("rebuild task: {0}")]
    Task(String),
}

/// What a rebuild read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rebuilt {
    /// The first offset read: where the local file's checkpoint stood, or
    /// the partition's start if the file was (re)built from scratch.
    pub from: i64,
    /// The partition's end when the rebuild began.
    pub to: i64,
    /// Records applied.
    pub applied: u64,
}

/// Records applied per disk transaction while rebuilding.
const REBUILD_BATCH: usize = 10_000;
/// How often a rebuild logs its progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// The page cache of each partition's file (redb's default is 1 GiB).
pub const DISK_CACHE_BYTES: usize = 16 << 20;

/// The states of one partition's conversations.
#[derive(Debug)]
pub struct PartitionStates {
    cache: LruCache<String, ConversationState>,
    /// States changed since last written to disk, by the flush that writes
    /// them (the newest one they changed for).
    unflushed: foldhash::HashMap<String, u64>,
    /// Of those, the ones evicted from the cache meanwhile.
    unwritten: foldhash::HashMap<String, ConversationState>,
    disk: DiskStore,
    /// Where the idle sweep stopped.
    sweep_after: Option<String>,
    /// When the sweep's current pass over every state began.
    pass_began: Option<SystemTime>,
}

/// A conversation's state, encoded for the state topic; `None` for a
/// tombstone (a state with nothing in it, the same as no state).
pub type Encoded = Option<Vec<u8>>;

impl PartitionStates {
    /// Opens the partition's file in `dir`, keeping up to `max_cached`
    /// states in memory. Call [`Self::catch_up`] before using it.
    pub fn open(
        dir: &Path,
        topic: &str,
        partition: i32,
        max_cached: NonZeroUsize,
    ) -> Result<Self, DiskError> {
        Ok(Self {
            cache: LruCache::new(max_cached),
            unflushed: foldhash::HashMap::default(),
            unwritten: foldhash::HashMap::default(),
            disk: DiskStore::open(dir, topic, partition, DISK_CACHE_BYTES)?,
            sweep_after: None,
            pass_began: None,
        })
    }

    /// Brings the disk up to date with partition `partition` of the state
    /// topic: from where it stopped, if its checkpoint is still valid (not
    /// older than `max_age`, and within the partition's offsets), else from
    /// the start. Progress is applied in batches with the checkpoint, so a
    /// read that fails is resumed by the next call, not restarted.
    /// Blocking: run it off the async runtime.
    pub fn catch_up(
        &mut self,
        kafka: &KafkaConfig,
        topic: &str,
        partition: i32,
        max_age: Duration,
    ) -> Result<Rebuilt, RebuildError> {
        let started = Instant::now();
        let (low, high) = crate::compacted::watermarks(kafka, topic, partition)?;
        let now = SystemTime::now();
        let start = match self.disk.checkpoint()? {
            Some(c)
                if (low..=high).contains(&c.next_offset)
                    && now.duration_since(c.valid_from).unwrap_or_default() < max_age =>
            {
                c.next_offset
            }
            found => {
                if found.is_some() {
                    tracing::info!(
                        partition,
                        ?found,
                        low,
                        high,
                        "local conversation states out of date; rebuilding from the start"
                    );
                }
                self.disk.reset(Checkpoint {
                    next_offset: low,
                    valid_from: now,
                })?;
                low
            }
        };
        tracing::info!(
            partition,
            from = start,
            to = high,
            file = %self.disk.path().display(),
            "rebuilding conversation state"
        );
        let records = metrics::counter!("switchboard_worker_state_rebuild_records_total");
        let mut batch: Vec<(String, Option<Vec<u8>>)> = Vec::with_capacity(REBUILD_BATCH);
        let mut applied = 0u64;
        let mut next = start;
        let mut last_log = Instant::now();
        let mut failed: Option<DiskError> = None;
        let disk = &mut self.disk;
        let mut flush = |batch: &mut Vec<(String, Option<Vec<u8>>)>, next: i64| {
            let result = disk.apply(
                batch.iter().map(|(k, v)| (k.as_str(), v.as_deref())),
                Some(next),
                false,
            );
            records.increment(batch.len() as u64);
            batch.clear();
            result
        };
        let read = crate::compacted::read_range(
            kafka,
            topic,
            partition,
            start..high,
            |offset, key, value| {
                if failed.is_some() {
                    return;
                }
                batch.push((key.to_owned(), value.map(<[u8]>::to_vec)));
                applied += 1;
                next = offset + 1;
                if batch.len() >= REBUILD_BATCH {
                    if let Err(e) = flush(&mut batch, next) {
                        failed = Some(e);
                    }
                    if last_log.elapsed() >= PROGRESS_EVERY {
                        last_log = Instant::now();
                        tracing::info!(
                            partition,
                            offset,
                            to = high,
                            applied,
                            per_second = (applied as f64 / started.elapsed().as_secs_f64()) as u64,
                            "rebuilding conversation state"
                        );
                    }
                }
            },
        );
        if let Some(e) = failed {
            return Err(e.into());
        }
        match read {
            Ok(()) => {
                flush(&mut batch, high)?;
                // Caught up: nothing written so far is missing.
                self.disk.apply([], Some(high), true)?;
                self.disk.sync()?;
            }
            Err(e) => {
                // Keep what was read: the next attempt starts after it.
                flush(&mut batch, next)?;
                self.disk.sync()?;
                tracing::warn!(
                    partition,
                    applied,
                    next,
                    to = high,
                    "conversation state rebuild interrupted; the next attempt resumes here"
                );
                return Err(e.into());
            }
        }
        metrics::histogram!("switchboard_worker_state_rebuild_duration_seconds")
            .record(started.elapsed().as_secs_f64());
        tracing::info!(
            partition,
            applied,
            conversations = self.disk.len()?,
            took = ?started.elapsed(),
            "conversation state rebuilt"
        );
        Ok(Rebuilt {
            from: start,
            to: high,
            applied,
        })
    }

    /// The conversation's state, to change in place; the default for one
    /// never seen. Call [`Self::changed`] after changing it.
    pub fn get_mut(&mut self, key: &str) -> Result<&mut ConversationState, DiskError> {
        if !self.cache.contains(key) {
            let state = match self.unwritten.remove(key) {
                Some(state) => state,
                None => {
                    metrics::counter!("switchboard_worker_state_disk_reads_total").increment(1);
                    match self.disk.get(key)? {
                        Some(bytes) => ConversationState::decode(bytes.as_slice())
                            .unwrap_or_else(|e| {
                                tracing::warn!(error = %e, "undecodable conversation state; starting afresh");
                                ConversationState::default()
                            }),
                        None => ConversationState::default(),
                    }
                }
            };
            if let Some((evicted, state)) = self.cache.push(key.to_owned(), state)
                && self.unflushed.contains_key(&evicted)
            {
                self.unwritten.insert(evicted, state);
            }
        }
        Ok(self.cache.get_mut(key).expect("inserted above"))
    }

    /// Conversation `key`'s state changed; `flush` will write it.
    pub fn changed(&mut self, key: &str, flush: u64) {
        match self.unflushed.get_mut(key) {
            Some(number) => *number = flush,
            None => {
                self.unflushed.insert(key.to_owned(), flush);
            }
        }
    }

    /// The state of a conversation changed and not yet written, encoded for
    /// the state topic.
    pub fn encode_unflushed(&self, key: &str) -> Option<Encoded> {
        let state = self.cache.peek(key).or_else(|| self.unwritten.get(key))?;
        // A state equal to the default encodes to nothing (proto3 writes no
        // default field): that is the tombstone, found without comparing
        // the whole state with a default one.
        let encoded = state.encode_to_vec();
        Some((!encoded.is_empty()).then_some(encoded))
    }

    /// Flush `number`, holding `written`, is acknowledged: writes them to
    /// disk, and lets the states that did not change since be evicted.
    /// `next_offset`, the state-topic offset after the flush when the
    /// writer knows every record below it was read or written here, moves
    /// the checkpoint: a restart resumes from there instead of re-reading
    /// every state written since the partition was assigned.
    pub fn flushed(
        &mut self,
        number: u64,
        written: &[(String, Encoded)],
        next_offset: Option<i64>,
    ) -> Result<(), DiskError> {
        self.disk.apply(
            written.iter().map(|(k, v)| (k.as_str(), v.as_deref())),
            next_offset,
            true,
        )?;
        self.unflushed.retain(|key, flush| {
            let keep = *flush > number;
            if !keep {
                self.unwritten.remove(key);
            }
            keep
        });
        Ok(())
    }

    /// Looks at up to `limit` conversations after the last one looked at
    /// (starting over after the last), and expires the idle ones. Returns
    /// the keys whose state changed, for the caller to flush. `busy` tells
    /// a conversation with a message in flight: left alone.
    ///
    /// A new pass over every state begins no sooner than
    /// [`ExpiryPolicy::sweep_pass`] after the last one began: a partition
    /// of a few thousand conversations is not read and decoded whole every
    /// second to find states idle for days.
    pub fn sweep(
        &mut self,
        policy: &ExpiryPolicy,
        now: SystemTime,
        limit: usize,
        busy: impl Fn(&str) -> bool,
    ) -> Result<Vec<String>, DiskError> {
        if self.sweep_after.is_none() {
            // A wall clock set back lets the next pass begin: it must not
            // stall the sweep until the clock is back where it was.
            if let Some(began) = self.pass_began
                && now
                    .duration_since(began)
                    .is_ok_and(|since| since < policy.sweep_pass())
            {
                return Ok(Vec::new());
            }
            self.pass_began = Some(now);
        }
        let found = self.disk.scan(self.sweep_after.as_deref(), limit)?;
        self.sweep_after = if found.len() < limit {
            None
        } else {
            found.last().map(|(k, _)| k.clone())
        };
        let mut changed = Vec::new();
        for (key, bytes) in found {
            if busy(&key) || self.unflushed.contains_key(&key) {
                continue; // changed lately: not idle
            }
            let judged = |state: &ConversationState| match policy.verdict(state, now) {
                Verdict::Keep => None,
                Verdict::Forget => Some(("forgotten", ConversationState::default())),
                Verdict::Minimize => Some(("minimized", super::expiry::minimal(state))),
            };
            let judgement = match self.cache.peek(&key) {
                Some(state) => judged(state),
                None => match ConversationState::decode(bytes.as_slice()) {
                    Ok(state) => judged(&state),
                    Err(_) => Some(("forgotten", ConversationState::default())),
                },
            };
            let Some((outcome, replacement)) = judgement else {
                continue;
            };
            metrics::counter!("switchboard_worker_state_expired_total", "outcome" => outcome)
                .increment(1);
            *self.get_mut(&key)? = replacement;
            changed.push(key);
        }
        Ok(changed)
    }

    /// Conversations in memory.
    pub fn cached(&self) -> usize {
        self.cache.len() + self.unwritten.len()
    }

    /// Conversations on disk.
    pub fn on_disk(&self) -> Result<u64, DiskError> {
        self.disk.len()
    }
}

#[cfg(test)]
mod tests {
    use switchboard_proto::v1::Owner;

    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    /// A pass over every state begins no sooner than a pass's interval
    /// after the last: a state that turns idle just after a pass is
    /// expired by the next one, not on the next tick.
    #[test]
    fn the_sweep_begins_a_new_pass_once_per_interval() {
        let dir = tempfile::tempdir().unwrap();
        let mut states =
            PartitionStates::open(dir.path(), "state", 0, NonZeroUsize::new(10).unwrap()).unwrap();
        let policy = ExpiryPolicy { idle: 8 * DAY };
        assert_eq!(policy.sweep_pass(), Duration::from_secs(60));
        let t0 = SystemTime::now();
        // Idle 10 s after t0.
        *states.get_mut("a").unwrap() = ConversationState {
            owner: Owner::Bot as i32,
            updated_at: Some(switchboard_proto::timestamp(
                t0 - 8 * DAY + Duration::from_secs(10),
            )),
            ..Default::default()
        };
        states.changed("a", 1);
        let encoded = states.encode_unflushed("a").unwrap();
        states.flushed(1, &[("a".into(), encoded)], None).unwrap();

        let sweep = |states: &mut PartitionStates, after: u64| {
            states
                .sweep(&policy, t0 + Duration::from_secs(after), 1000, |_| false)
                .unwrap()
        };
        assert!(sweep(&mut states, 0).is_empty(), "not idle yet");
        assert!(
            sweep(&mut states, 30).is_empty(),
            "idle now, but the last pass began 30 s ago"
        );
        assert_eq!(sweep(&mut states, 61), ["a"], "the next pass expires it");
        assert_eq!(
            ConversationState::default(),
            *states.get_mut("a").unwrap(),
            "forgotten"
        );

        // A state idle for long, then the wall clock set back an hour: the
        // next pass is not held off until the clock is back.
        *states.get_mut("b").unwrap() = ConversationState {
            owner: Owner::Bot as i32,
            updated_at: Some(switchboard_proto::timestamp(t0 - 30 * DAY)),
            ..Default::default()
        };
        states.changed("b", 2);
        let encoded = states.encode_unflushed("b").unwrap();
        states.flushed(2, &[("b".into(), encoded)], None).unwrap();
        assert!(sweep(&mut states, 62).is_empty(), "a pass began at 61 s");
        let set_back = states
            .sweep(&policy, t0 - Duration::from_secs(3600), 1000, |_| false)
            .unwrap();
        assert_eq!(set_back, ["b"]);
    }
}
