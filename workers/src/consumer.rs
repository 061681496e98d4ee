//! The at-least-once consume loop.
//!
//! One consumer per worker reads the messages topic. Each assigned partition
//! gets its own task and a bounded queue. The task routes different
//! conversations concurrently and each conversation (which never spans
//! partitions) strictly in order. An offset is *stored* only when every
//! message up to it is done (the contiguous prefix, see [`crate::offsets`]);
//! librdkafka commits stored offsets every second, on revoke and at
//! shutdown. A crash therefore never skips a message: at worst, messages
//! that were in flight or done since the last commit are routed again.
//!
//! Rebalances are incremental (`cooperative-sticky`): only the partitions
//! that move stop. On revoke, inside the rebalance callback, a partition's
//! task is stopped and its first unfinished offset committed, with the
//! offsets finished above it in the commit metadata; the new owner skips
//! those, so only what was in flight (at most one message per conversation)
//! is routed twice, not everything other conversations finished meanwhile.
//! Messages of a partition no longer assigned are dropped.
//!
//! The loop never waits on one partition: a message whose partition's queue
//! is full is held, and a partition holding `max_in_flight_per_partition`
//! (at least 64) is paused in the consumer until they are handed over, so a
//! stuck conversation holds back only its own partition. On shutdown, tasks stop
//! taking new messages, finish those in hand within the grace period, the
//! final offsets are committed synchronously, and the consumer leaves the
//! group (behind a timeout, since closing librdkafka can hang).

use std::{
    collections::{BTreeSet, HashMap, HashSet, VecDeque},
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::FutureExt as _;
use futures::future::Shared;
use prost::Message as _;
use rdkafka::{
    ClientContext, Message, Offset, TopicPartitionList,
    consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer},
    error::{KafkaError, KafkaResult},
    message::OwnedMessage,
    statistics::Statistics,
    types::RDKafkaErrorCode,
};
use switchboard_proto::v1::Envelope;
use switchboard_runtime::{
    headers as record_headers,
    kafka::KafkaConfig,
    retry::{self, Backoff},
    shutdown::Shutdown,
    trace::{self, TRACEPARENT},
};
use tokio::{
    sync::{Semaphore, mpsc, oneshot},
    task::{AbortHandle, JoinHandle, JoinSet},
};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::{
    config::WorkersConfig,
    destinations::topics::{Source, headers},
    offsets::{OffsetTracker, parse_skip_metadata},
    router::Router,
    state::{PartitionStates, effects},
};

/// Records revocations seen during a rebalance, for the loop to act on.
#[derive(Default)]
pub struct WorkerContext {
    revoked: Mutex<Vec<(String, i32)>>,
    /// Every partition being routed: its offset tracker and its task, so a
    /// revoke can stop the task and commit at once, inside the rebalance.
    partitions: Mutex<HashMap<(String, i32), Routing>>,
    /// The partitions this worker owns now.
    assigned: Mutex<HashSet<(String, i32)>>,
}

/// A partition being routed.
struct Routing {
    tracker: Arc<Mutex<OffsetTracker>>,
    task: AbortHandle,
}

impl WorkerContext {
    /// Stops routing each revoked partition, then commits its first message
    /// not done, with the messages done above it in the commit metadata, so
    /// the next owner skips them instead of routing them again. Only what
    /// was in flight (at most one message per conversation) is redone.
    fn stop_and_commit(&self, consumer: &BaseConsumer<Self>, revoked: &TopicPartitionList) {
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
                tracing::info!(partitions = tpl.count(), "partitions revoked");
                self.stop_and_commit(consumer, tpl);
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
                tracing::info!(partitions = tpl.count(), "partitions assigned");
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

type Consumer_ = StreamConsumer<WorkerContext>;

struct PartitionTask {
    queue: mpsc::Sender<OwnedMessage>,
    handle: JoinHandle<()>,
    /// Messages fetched while the queue was full; the partition is paused
    /// in the consumer until they are handed over, so this stays small.
    held: VecDeque<OwnedMessage>,
}

/// A routing worker: one group member on the messages topic.
pub struct Worker {
    consumer: Arc<Consumer_>,
    router: Arc<Router>,
    kafka: KafkaConfig,
    state_topic: String,
    queue_len: usize,
    max_finished_ahead: usize,
    worker_permits: Arc<Semaphore>,
    grace: Duration,
}

impl Worker {
    /// Creates the consumer and subscribes it to the messages topic.
    pub fn new(config: &WorkersConfig, router: Arc<Router>) -> anyhow::Result<Self> {
        let consumer: Consumer_ = config
            .kafka
            .client_config(&[
                ("group.id", &config.group_id),
                ("enable.auto.commit", "true"),
                ("auto.commit.interval.ms", "1000"),
                ("enable.auto.offset.store", "false"),
                ("auto.offset.reset", config.auto_offset_reset.as_str()),
                ("session.timeout.ms", "10000"),
                // Incremental rebalances: only the partitions that move stop;
                // the others keep routing, with their state cached.
                ("partition.assignment.strategy", "cooperative-sticky"),
                ("heartbeat.interval.ms", "1000"),
                ("statistics.interval.ms", "5000"),
            ])
            .create_with_context(WorkerContext::default())?;
        consumer.subscribe(&[&config.messages_topic])?;
        Ok(Self {
            consumer: Arc::new(consumer),
            router,
            kafka: config.kafka.clone(),
            state_topic: config.state_topic.clone(),
            queue_len: config.max_in_flight_per_partition,
            max_finished_ahead: config.max_finished_ahead_per_partition,
            worker_permits: Arc::new(Semaphore::new(config.max_in_flight_per_worker)),
            grace: config.shutdown_grace,
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

    /// Consumes and routes until `shutdown` fires, then drains and commits.
    pub async fn run(self, shutdown: Shutdown) -> anyhow::Result<()> {
        let no_new_work = CancellationToken::new();
        let abort = CancellationToken::new();
        let mut partitions: HashMap<(String, i32), PartitionTask> = HashMap::new();
        tracing::info!("routing worker started");
        // Partitions holding messages their queue had no room for, and those
        // of them paused in the consumer until the messages are handed over.
        let mut holding: HashSet<(String, i32)> = HashSet::new();
        let mut paused: HashSet<(String, i32)> = HashSet::new();
        loop {
            let next = tokio::select! {
                _ = shutdown.cancelled() => break,
                next = self.consumer.recv() => Some(next),
                // Hand held messages over as their partitions' queues drain.
                _ = tokio::time::sleep(Duration::from_millis(5)), if !holding.is_empty() => None,
            };
            holding.retain(|key| {
                if partitions.get_mut(key).is_some_and(|task| !hand_over(task)) {
                    return true;
                }
                if paused.remove(key) {
                    self.pause(key, false);
                }
                false
            });
            let Some(next) = next else { continue };
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
                if let Some(task) = partitions.remove(&key) {
                    task.handle.abort();
                }
                holding.remove(&key);
                paused.remove(&key);
            }
            let message = match next {
                Ok(message) => message.detach(),
                Err(e) => {
                    tracing::warn!(error = %e, "consumer error");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let key = (message.topic().to_owned(), message.partition());
            // A partition with a task is assigned (revoked ones lose theirs
            // above); only a new one needs the check.
            if !partitions.contains_key(&key)
                && !self
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
            let task = partitions
                .entry(key.clone())
                .or_insert_with_key(|(topic, partition)| {
                    let (queue, rx) = mpsc::channel(self.queue_len);
                    let tracker = Arc::new(Mutex::new(OffsetTracker::default()));
                    let handle = tokio::spawn(route_partition(
                        PartitionContext {
                            consumer: self.consumer.clone(),
                            router: self.router.clone(),
                            kafka: self.kafka.clone(),
                            state_topic: self.state_topic.clone(),
                            topic: topic.clone(),
                            partition: *partition,
                            max_in_flight: self.queue_len,
                            max_finished_ahead: self.max_finished_ahead,
                            worker_permits: self.worker_permits.clone(),
                            tracker: tracker.clone(),
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
                            (topic.clone(), *partition),
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
            // A full queue must not make the loop wait: that would hold back
            // every other partition. Hold the message; past a bound, pause
            // the partition until its held messages are handed over, so
            // memory stays bounded all the same.
            task.held.push_back(message);
            if !hand_over(task) {
                if task.held.len() >= self.queue_len.max(MIN_HELD) && paused.insert(key.clone()) {
                    self.pause(&key, true);
                }
                holding.insert(key);
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

/// What a partition task needs.
struct PartitionContext {
    consumer: Arc<Consumer_>,
    router: Arc<Router>,
    kafka: KafkaConfig,
    state_topic: String,
    topic: String,
    partition: i32,
    /// Most messages of this partition in flight at once.
    max_in_flight: usize,
    /// Most messages of this partition done above its oldest unfinished one.
    max_finished_ahead: usize,
    /// Shared by all partitions of this worker.
    worker_permits: Arc<Semaphore>,
    /// Shared with the revoke handler.
    tracker: Arc<Mutex<OffsetTracker>>,
}

/// Signals that a conversation's message is done, so its next may start.
type Done = Shared<oneshot::Receiver<()>>;

/// How one message ended.
enum Outcome {
    Routed,
    Duplicate,
    Poison,
    /// Interrupted, or its conversation's previous message was: not done.
    Unfinished,
}

/// Routes one partition: conversations concurrently, each one strictly in
/// order, and stores the contiguous prefix of completed offsets.
///
/// First rebuilds the partition's conversation states from the state
/// topic. Messages are taken in offset order; each waits for the previous
/// message of its conversation (if still running) and then routes on its
/// own task, with its conversation's state; a copy of a channel message the
/// conversation already had is dropped. At most `max_in_flight` messages of
/// the partition, and the worker's bound over all partitions, run at once.
/// Dropping this future (on revoke) drops every task it started; nothing
/// they did not finish gets stored.
async fn route_partition(
    cx: PartitionContext,
    mut queue: mpsc::Receiver<OwnedMessage>,
    no_new_work: CancellationToken,
    abort: CancellationToken,
) {
    let outcome =
        |outcome| metrics::counter!("switchboard_worker_records_total", "outcome" => outcome);
    let (routed, poison, duplicate, skipped) = (
        outcome("routed"),
        outcome("poison"),
        outcome("duplicate"),
        outcome("skipped"),
    );
    let partition = cx.partition;
    let Some(states) = rebuild_states(&cx, &abort).await else {
        return;
    };
    let mut tasks: JoinSet<(i64, String, Outcome)> = JoinSet::new();
    // The last message started per conversation, while it runs.
    let mut lanes: HashMap<String, (i64, Done)> = HashMap::new();
    let Some(mut skip) = done_by_previous_owner(&cx, &abort).await else {
        return;
    };
    let tracker = cx.tracker.clone();
    let complete = |offset| tracker.lock().expect("tracker lock").complete(offset);
    let held_back = metrics::counter!("switchboard_worker_partition_held_back_total");
    let mut open = true;
    let mut was_full = false;
    loop {
        // Backpressure: with too many messages done above the oldest one
        // not done (retried, maybe forever), take no new ones until it
        // finishes. The queue fills and the partition is paused; the
        // finished-offsets set stays bounded and nothing is skipped.
        let full = tracker.lock().expect("tracker lock").done_ahead() >= cx.max_finished_ahead;
        if full && !was_full {
            held_back.increment(1);
            tracing::warn!(
                partition,
                bound = cx.max_finished_ahead,
                "partition held back: its oldest message is still not done"
            );
        }
        was_full = full;
        tokio::select! {
            biased;
            Some(joined) = tasks.join_next(), if !tasks.is_empty() => {
                let Ok((offset, key, outcome)) = joined else { continue };
                if lanes.get(&key).is_some_and(|(latest, _)| *latest == offset) {
                    lanes.remove(&key);
                }
                match outcome {
                    Outcome::Routed => routed.increment(1),
                    Outcome::Duplicate => duplicate.increment(1),
                    Outcome::Poison => poison.increment(1),
                    Outcome::Unfinished => continue,
                }
                store(&cx, complete(offset));
            }
            next = queue.recv(), if open && !full && tasks.len() < cx.max_in_flight => {
                let Some(message) = next.filter(|_| !no_new_work.is_cancelled()) else {
                    open = false;
                    continue;
                };
                let offset = message.offset();
                tracker.lock().expect("tracker lock").start(offset);
                if skip.remove(&offset) {
                    // Routed by the previous owner before the rebalance.
                    skipped.increment(1);
                    store(&cx, complete(offset));
                    continue;
                }
                let header = |name: &str| record_headers::text(&message, name);
                // This worker's span, continuing the trace from the record's header.
                let (span, trace) = trace::hop("worker.route", header(TRACEPARENT));
                // A replayed message is routed again on purpose, even if seen.
                let replayed = header(headers::REPLAYED_FROM).is_some();
                let envelope = match message.payload().map(Envelope::decode) {
                    Some(Ok(envelope)) => envelope,
                    other => {
                        // Poison: straight to the dead-letter topic, in no conversation's lane.
                        let error = match other {
                            Some(Err(e)) => e.to_string(),
                            _ => "no payload".to_owned(),
                        };
                        let payload = message.payload().unwrap_or_default().to_vec();
                        let (router, abort, topic) = (cx.router.clone(), abort.clone(), cx.topic.clone());
                        tasks.spawn(async move {
                            let source = Source { topic: &topic, partition, offset, trace };
                            let outcome = match router.dead_letter_poison(&payload, &error, source, &abort).await {
                                Ok(()) => Outcome::Poison,
                                Err(_) => Outcome::Unfinished,
                            };
                            (offset, String::new(), outcome)
                        }.instrument(span));
                        continue;
                    }
                };
                let Ok(permit) = cx.worker_permits.clone().acquire_owned().await else { break };
                let key = envelope.conversation_key();
                let (done_tx, done_rx) = oneshot::channel();
                let previous = lanes.insert(key.clone(), (offset, done_rx.shared())).map(|(_, done)| done);
                let (router, abort, no_new_work) = (cx.router.clone(), abort.clone(), no_new_work.clone());
                let (topic, states) = (cx.topic.clone(), states.clone());
                tasks.spawn(async move {
                    let _permit = permit;
                    // In order within the conversation: wait for the one before.
                    if let Some(previous) = previous
                        && previous.await.is_err()
                    {
                        return (offset, key, Outcome::Unfinished); // it did not finish: neither may this
                    }
                    if no_new_work.is_cancelled() {
                        return (offset, key, Outcome::Unfinished);
                    }
                    let state = states.get(&key);
                    if !replayed && effects::is_duplicate(&state, &envelope) {
                        tracing::debug!(partition, offset, "copy of an earlier channel message dropped");
                        let _ = done_tx.send(());
                        return (offset, key, Outcome::Duplicate);
                    }
                    let source = Source { topic: &topic, partition, offset, trace };
                    // Boxed: routing's future is large, and the task would
                    // otherwise be copied whole on every move (memmove was
                    // 13% of a routing profile).
                    let Ok((state, settling)) =
                        Box::pin(router.route(envelope, state, source, &abort)).await
                    else {
                        return (offset, key, Outcome::Unfinished);
                    };
                    states.put(key.clone(), state);
                    // The conversation's next message may go now: its records
                    // follow this one's in the producer. This message is done
                    // (its offset may be stored) once Kafka has them.
                    let _ = done_tx.send(());
                    let outcome = match settling.await {
                        Ok(()) => Outcome::Routed,
                        Err(_) => Outcome::Unfinished,
                    };
                    (offset, key, outcome)
                }.instrument(span));
            }
            else => break,
        }
    }
}

/// Stores `safe` (when it moved) as the partition's next commit.
fn store(cx: &PartitionContext, safe: Option<i64>) {
    if let Some(offset) = safe
        && let Err(e) = cx.consumer.store_offset(&cx.topic, cx.partition, offset)
    {
        // The partition was revoked meanwhile; its new owner redoes the rest.
        tracing::debug!(error = %e, partition = cx.partition, "offset not stored");
    }
}

/// The messages of the partition that its previous owner finished above the
/// committed offset, from the commit's metadata. Without them (no metadata,
/// or the lookup failing) those messages are simply routed again.
async fn done_by_previous_owner(
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
async fn rebuild_states(
    cx: &PartitionContext,
    abort: &CancellationToken,
) -> Option<Arc<PartitionStates>> {
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
        Ok(Ok(states)) => Some(Arc::new(states)),
        // Retried without limit: only a stop ends it.
        Ok(Err(_)) | Err(retry::Cancelled) => None,
    }
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
