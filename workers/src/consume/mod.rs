//! The at-least-once consume loop.
//!
//! One consumer per worker reads the messages topic. Each assigned partition
//! gets its own task ([`partition`]) and a bounded queue. The loop reads a
//! record's headers and copies its bytes ([`record`]); the task decodes the
//! envelope when it takes the message, so the queues hold records' bytes,
//! not decoded envelopes three times their size. The task routes
//! different conversations concurrently and each conversation (which never
//! spans partitions) strictly in order. An offset is *stored* only when every
//! message up to it is done, its state flushed included (the contiguous
//! prefix, see [`offsets`]);
//! librdkafka commits stored offsets every second, on revoke and at
//! shutdown. A crash therefore never skips a message: at worst, messages
//! that were in flight or done since the last commit are routed again.
//!
//! Rebalances are incremental (`cooperative-sticky`): only the partitions
//! that move stop. On revoke, inside the rebalance callback, a partition's
//! task is stopped and its first unfinished offset committed, with the
//! offsets finished above it in the commit metadata; the new owner skips
//! those, so only what was in flight or waiting for its state's flush is
//! routed twice, not everything other conversations finished meanwhile.
//! Messages of a partition no longer assigned are dropped.
//!
//! The loop never waits on one partition: a message whose partition's queue
//! is full is held, and a partition holding a queue's worth (the larger of
//! `max_in_flight_per_partition` and `max_unacknowledged_per_partition`) is
//! paused in the consumer until they are handed over, so a stuck
//! conversation holds back only its own partition. The queue holds a whole
//! fetch of one partition: smaller, every burst would pause the partition,
//! and each pause drops librdkafka's prefetched records and costs a new
//! fetch (this was most of the workers' wait: 14k against 51k msg/s). On shutdown, tasks stop
//! taking new messages, finish those in hand within the grace period, the
//! final offsets are committed synchronously, and the consumer leaves the
//! group (behind a timeout, since closing librdkafka can hang).

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::{Arc, Mutex},
    time::Duration,
};

use rdkafka::{
    Message, TopicPartitionList,
    consumer::{CommitMode, Consumer, StreamConsumer},
    error::KafkaError,
    types::RDKafkaErrorCode,
};
use switchboard_runtime::{
    kafka::{ConsumerErrors, KafkaConfig},
    shutdown::Shutdown,
};
use tokio::{
    sync::{Semaphore, mpsc},
    task::JoinHandle,
};
use tokio_util::sync::CancellationToken;

use crate::{config::WorkersConfig, route::Router, state::expiry::ExpiryPolicy};
use offsets::OffsetTracker;
use partition::{PartitionContext, route_partition};
use rebalance::{Routing, WorkerContext};
use record::Fetched;

mod batch;
pub mod offsets;
pub mod partition;
mod rebalance;
mod record;
mod startup;

pub(crate) type Consumer_ = StreamConsumer<WorkerContext>;

struct PartitionTask {
    queue: mpsc::Sender<Fetched>,
    handle: JoinHandle<()>,
    /// Messages fetched while the queue was full; the partition is paused
    /// in the consumer until they are handed over, so this stays small.
    held: VecDeque<Fetched>,
}

/// A routing worker: one group member on the messages topic.
pub struct Worker {
    consumer: Arc<Consumer_>,
    router: Arc<Router>,
    kafka: KafkaConfig,
    state_topic: String,
    /// The consumer group, for the state writers' transactional ids.
    group_id: String,
    /// Messages handed to a partition's task and not yet taken: room for a
    /// whole fetch of the partition (a fetch returns one partition's records
    /// in a run), so that its bursts do not pause it. Pausing drops what
    /// librdkafka prefetched and costs a new fetch.
    queue_len: usize,
    max_in_flight: usize,
    max_finished_ahead: usize,
    worker_permits: Arc<Semaphore>,
    max_unacknowledged: usize,
    flush_interval: Duration,
    grace: Duration,
    /// Where partitions keep their states on disk.
    state_dir: std::path::PathBuf,
    /// The temporary directory used when none is configured, removed when
    /// the worker ends.
    _temporary_state_dir: Option<tempfile::TempDir>,
    max_cached: std::num::NonZeroUsize,
    state_store_max_age: Duration,
    expiry: ExpiryPolicy,
}

impl Worker {
    /// Creates the consumer and subscribes it to the messages topic.
    pub fn new(config: &WorkersConfig, router: Arc<Router>) -> anyhow::Result<Self> {
        let consumer: Consumer_ = config
            .kafka
            .consumer_config(&[
                ("group.id", &config.group_id),
                ("enable.auto.commit", "true"),
                ("auto.commit.interval.ms", "1000"),
                ("enable.auto.offset.store", "false"),
                ("auto.offset.reset", config.auto_offset_reset.as_str()),
                (
                    "session.timeout.ms",
                    &SESSION_TIMEOUT.as_millis().to_string(),
                ),
                // Incremental rebalances: only the partitions that move stop;
                // the others keep routing, with their state cached.
                ("partition.assignment.strategy", "cooperative-sticky"),
                ("heartbeat.interval.ms", "1000"),
                ("statistics.interval.ms", "5000"),
            ])
            .create_with_context(WorkerContext::default())?;
        consumer.subscribe(&[&config.messages_topic])?;
        let (state_dir, temporary) = match &config.state_dir {
            Some(dir) => (dir.clone(), None),
            None => {
                let dir = tempfile::Builder::new()
                    .prefix("switchboard-workers-state-")
                    .tempdir()?;
                (dir.path().to_owned(), Some(dir))
            }
        };
        tracing::info!(dir = %state_dir.display(), "conversation states kept on disk");
        Ok(Self {
            consumer: Arc::new(consumer),
            router,
            kafka: config.kafka.clone(),
            state_topic: config.state_topic.clone(),
            group_id: config.group_id.clone(),
            queue_len: config
                .max_in_flight_per_partition
                .max(config.max_unacknowledged_per_partition),
            max_in_flight: config.max_in_flight_per_partition,
            max_finished_ahead: config.max_finished_ahead_per_partition,
            worker_permits: Arc::new(Semaphore::new(config.max_in_flight_per_worker)),
            max_unacknowledged: config.max_unacknowledged_per_partition,
            flush_interval: config.state_flush_interval,
            grace: config.shutdown_grace,
            state_dir,
            _temporary_state_dir: temporary,
            max_cached: std::num::NonZeroUsize::new(config.max_cached_conversations_per_partition)
                .unwrap_or(std::num::NonZeroUsize::MIN),
            state_store_max_age: config.state_store_max_age,
            expiry: ExpiryPolicy {
                idle: config.state_idle_expiry,
            },
        })
    }

    /// Pauses (or resumes) fetching one partition.
    fn pause(&self, (topic, partition): &(String, i32), pause: bool) {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(topic, *partition);
        let result = if pause {
            self.consumer.pause(&tpl)
        } else {
            self.consumer.resume(&tpl)
        };
        if let Err(e) = result {
            tracing::debug!(error = %e, partition, pause, "pause/resume");
        }
    }

    /// A full queue must not make the loop wait: that would hold back every
    /// other partition. The partition's messages are held; past a bound,
    /// it is paused until they are handed over, so memory stays bounded
    /// all the same.
    fn hold(
        &self,
        task: &PartitionTask,
        key: &(String, i32),
        holding: &mut HashSet<(String, i32)>,
        paused: &mut HashSet<(String, i32)>,
    ) {
        if task.held.len() >= self.queue_len.max(MIN_HELD) && !paused.contains(key) {
            paused.insert(key.clone());
            self.pause(key, true);
        }
        if !holding.contains(key) {
            holding.insert(key.clone());
        }
    }

    /// Consumes and routes until `shutdown` fires, then drains and commits.
    pub async fn run(self, shutdown: Shutdown) -> anyhow::Result<()> {
        let no_new_work = CancellationToken::new();
        let abort = CancellationToken::new();
        let mut partitions: HashMap<i32, PartitionTask> = HashMap::new();
        tracing::info!("routing worker started");
        // Partitions holding messages their queue had no room for, and those
        // of them paused in the consumer until the messages are handed over.
        let mut holding: HashSet<(String, i32)> = HashSet::new();
        let mut paused: HashSet<(String, i32)> = HashSet::new();
        let mut consumer_errors = ConsumerErrors::new("routing worker");
        // Hand held messages over as their partitions' queues drain.
        let mut hand_over_held = tokio::time::interval(Duration::from_millis(5));
        hand_over_held.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let next = tokio::select! {
                _ = shutdown.cancelled() => break,
                next = self.consumer.recv() => Some(next),
                _ = hand_over_held.tick(), if !holding.is_empty() => None,
            };
            let Some(next) = next else {
                holding.retain(|key| {
                    if partitions
                        .get_mut(&key.1)
                        .is_some_and(|task| !hand_over(task))
                    {
                        return true;
                    }
                    if paused.remove(key) {
                        self.pause(key, false);
                    }
                    false
                });
                continue;
            };
            // Revocations happen inside recv(): drop those partitions' work,
            // which will be redone from the committed offset by the new owner.
            for key in std::mem::take(
                &mut *self
                    .consumer
                    .context()
                    .revoked
                    .lock()
                    .expect("revoked list lock"),
            ) {
                if let Some(task) = partitions.remove(&key.1) {
                    task.handle.abort();
                }
                holding.remove(&key);
                paused.remove(&key);
            }
            let message = match next {
                Ok(message) => message,
                Err(e) => {
                    consumer_errors.handle(&e).await;
                    continue;
                }
            };
            // The worker reads one topic: its partitions are told apart by
            // number, without a key to allocate per message.
            let partition = message.partition();
            if let Some(task) = partitions.get_mut(&partition) {
                task.held.push_back(record::read(&message));
                if !hand_over(task) {
                    self.hold(task, &key_of(&message), &mut holding, &mut paused);
                }
                continue;
            }
            // A partition with a task is assigned (revoked ones lose theirs
            // above); only a new one needs the check.
            let key = key_of(&message);
            if !self
                .consumer
                .context()
                .assigned
                .lock()
                .expect("assigned lock")
                .contains(&key)
            {
                // Fetched before its partition was revoked: the new owner routes it.
                tracing::debug!(
                    partition = key.1,
                    offset = message.offset(),
                    "message of a revoked partition dropped"
                );
                continue;
            }
            let task = partitions.entry(partition).or_insert_with(|| {
                let topic = &key.0;
                let (queue, rx) = mpsc::channel(self.queue_len);
                let tracker = Arc::new(Mutex::new(OffsetTracker::default()));
                let handle = tokio::spawn(route_partition(
                    PartitionContext {
                        consumer: self.consumer.clone(),
                        router: self.router.clone(),
                        kafka: self.kafka.clone(),
                        state_topic: self.state_topic.clone(),
                        state_transactional_id: crate::state::transactional_id(
                            &self.group_id,
                            topic,
                            partition,
                        ),
                        state_reopen_after: SESSION_TIMEOUT + Duration::from_secs(5),
                        topic: topic.clone(),
                        partition,
                        max_in_flight: self.max_in_flight,
                        max_unacknowledged: self.max_unacknowledged,
                        max_finished_ahead: self.max_finished_ahead,
                        worker_permits: self.worker_permits.clone(),
                        tracker: tracker.clone(),
                        flush_interval: self.flush_interval,
                        state_dir: self.state_dir.clone(),
                        max_cached: self.max_cached,
                        state_store_max_age: self.state_store_max_age,
                        expiry: self.expiry,
                    },
                    rx,
                    no_new_work.clone(),
                    abort.clone(),
                ));
                self.consumer
                    .context()
                    .partitions
                    .lock()
                    .expect("partitions lock")
                    .insert(
                        key.clone(),
                        Routing {
                            tracker,
                            task: handle.abort_handle(),
                        },
                    );
                PartitionTask {
                    queue,
                    handle,
                    held: VecDeque::new(),
                }
            });
            task.held.push_back(record::read(&message));
            if !hand_over(task) {
                self.hold(task, &key, &mut holding, &mut paused);
            }
        }

        tracing::info!(grace = ?self.grace, "routing worker draining");
        no_new_work.cancel();
        let handles: Vec<_> = partitions.into_values().map(|t| t.handle).collect();
        let mut drain = futures::future::join_all(handles);
        if tokio::time::timeout(self.grace, &mut drain).await.is_err() {
            tracing::warn!(
                "in-flight messages did not finish within the grace period; they will be redelivered"
            );
            abort.cancel();
            let _ = drain.await;
        }
        let Self { consumer, .. } = self;
        close(consumer).await;
        Ok(())
    }
}

/// A record's topic and partition.
fn key_of(message: &impl Message) -> (String, i32) {
    (message.topic().to_owned(), message.partition())
}

/// The group session: a worker that has not heartbeated for this long
/// loses its partitions (and its consumer knows it by then, too).
const SESSION_TIMEOUT: Duration = Duration::from_secs(10);

/// Messages a partition may hold, at least, before it is paused: pausing
/// and resuming costs a new fetch, so it should not happen every message.
const MIN_HELD: usize = 64;

/// Hands a partition's held messages to its task while its queue has room;
/// true when none are left.
fn hand_over(task: &mut PartitionTask) -> bool {
    while let Some(message) = task.held.pop_front() {
        match task.queue.try_send(message) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(message)) => {
                task.held.push_front(message);
                return false;
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                // The task ended (revoked, or shutting down): its messages
                // are redone by whoever owns the partition next.
                task.held.clear();
            }
        }
    }
    true
}

/// Commits stored offsets and leaves the group, giving up after a timeout.
async fn close(consumer: Arc<Consumer_>) {
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    // A plain thread, not spawn_blocking: if librdkafka hangs on close, the
    // runtime can still shut down.
    std::thread::spawn(move || {
        match consumer.commit_consumer_state(CommitMode::Sync) {
            Ok(()) => tracing::info!("final offsets committed"),
            Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(e) => {
                tracing::warn!(error = %e, "final commit failed; the last messages will be redelivered")
            }
        }
        consumer.unsubscribe();
        drop(consumer);
        let _ = done_tx.send(());
    });
    match tokio::time::timeout(Duration::from_secs(10), done_rx).await {
        Ok(_) => tracing::info!("routing worker left the group"),
        Err(_) => tracing::warn!("closing the consumer timed out; leaving it behind"),
    }
}
