//! One partition's routing loop: conversations concurrently, each strictly
//! in order, no task per message.
//!
//! The loop takes what the consume loop handed over as a batch. A message
//! whose destinations are all Kafka topics is routed at once: its records
//! go to the producer, and the loop moves on to the next message, of the
//! same conversation or another (the producer keeps one key's records in
//! order). Only Kafka's answers are awaited, all together. A message for a
//! bot waits for the bot's answer (the loop polls every such call; other
//! conversations go on), and its conversation's later messages wait in
//! their lane until it is done.
//!
//! A message is done when Kafka has acknowledged its records and the flush
//! holding its state change ([`WriteBehind`]); then its offset counts
//! towards the contiguous prefix that is stored. Dropping this future (on
//! revoke) drops everything in flight; nothing unfinished is stored.

use std::{
    collections::VecDeque,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use futures::{StreamExt as _, future::OptionFuture, stream::FuturesUnordered};
use rdkafka::consumer::Consumer as _;
use switchboard_runtime::{kafka::KafkaConfig, trace::TraceParent};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use super::{
    Consumer_,
    batch::{Batch, Tag},
    offsets::OffsetTracker,
    record::{Body, Decoded, Fetched},
    startup::{done_by_previous_owner, open_state_writer, rebuild_states, stop_writing},
};
use crate::{
    destinations::topics::Source,
    route::{Answered, Begun, Interrupted, Pending, Routed, Router, Settle},
    state::{
        DiskError, Encoded, PartitionStates, StateWriteError, StateWriter, WriteBehind, effects,
        expiry::ExpiryPolicy,
    },
};

/// How often the idle sweep runs, and how many conversations it looks at
/// each time: a million conversations are all looked at in about 17
/// minutes, a few milliseconds of the loop's time per second. A pass over a
/// smaller partition ends sooner, and the next begins no sooner than
/// [`crate::state::expiry::ExpiryPolicy::sweep_pass`] after it began.
const SWEEP_EVERY: Duration = Duration::from_secs(1);
const SWEEP_BATCH: usize = 1000;

/// What a partition task needs.
pub(super) struct PartitionContext {
    pub consumer: Arc<Consumer_>,
    pub router: Arc<Router>,
    pub kafka: KafkaConfig,
    pub state_topic: String,
    /// The transactional id of this partition's state writes.
    pub state_transactional_id: String,
    /// How long a fenced state writer waits before it opens again.
    pub state_reopen_after: Duration,
    pub topic: String,
    pub partition: i32,
    /// Most messages of this partition being routed at once (calling bots,
    /// or waiting in a lane).
    pub max_in_flight: usize,
    /// Most messages of this partition whose records wait for Kafka's answer.
    pub max_unacknowledged: usize,
    /// Most messages of this partition done above its oldest unfinished one.
    pub max_finished_ahead: usize,
    /// Shared by all partitions of this worker.
    pub worker_permits: Arc<Semaphore>,
    /// Shared with the revoke handler.
    pub tracker: Arc<Mutex<OffsetTracker>>,
    /// How often changed states are written.
    pub flush_interval: Duration,
    /// Where the partition's states are kept on disk.
    pub state_dir: std::path::PathBuf,
    /// Conversation states kept in memory.
    pub max_cached: std::num::NonZeroUsize,
    /// A local state file older than this is rebuilt, not resumed.
    pub state_store_max_age: Duration,
    /// When idle states expire.
    pub expiry: ExpiryPolicy,
}

/// The local state store failed to read or write: the node's disk is
/// broken or full. The worker exits, so that its partitions move to a
/// healthy one; nothing unfinished was committed, so nothing is lost.
fn disk_failed(partition: i32, error: &DiskError) -> ! {
    tracing::error!(%error, partition, "local conversation state store failed; exiting");
    std::process::exit(70)
}

/// A future with what it is about.
struct Tagged<'a, T, Tag> {
    future: Pending<'a, T>,
    tag: Option<Tag>,
}

impl<'a, T: 'a, Tag: Unpin> Tagged<'a, T, Tag> {
    fn new(future: Pending<'a, T>, tag: Tag, span: tracing::Span) -> Self {
        let future = if span.is_none() {
            future
        } else {
            Box::pin(future.instrument(span))
        };
        Self {
            future,
            tag: Some(tag),
        }
    }
}

impl<T, Tag: Unpin> Future for Tagged<'_, T, Tag> {
    type Output = (Tag, T);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let output = std::task::ready!(self.future.as_mut().poll(cx));
        Poll::Ready((self.tag.take().expect("polled after completion"), output))
    }
}

/// A flush committed (its number, the states it wrote and the state-topic
/// offset after them, if known), or state writes stopped for good.
type Flushed = Result<(u64, Vec<(String, Encoded)>, Option<i64>), StateWriteError>;
/// A message waiting for bots: its offset and conversation key.
type Calling<'a> = Tagged<'a, Result<Answered<'a>, Interrupted>, (i64, String)>;

/// The partition's messages in flight.
struct InFlight<'a> {
    router: &'a Router,
    topic: &'a str,
    partition: i32,
    stop: &'a CancellationToken,
    states: PartitionStates,
    write_behind: WriteBehind,
    writer: &'a StateWriter,
    /// Messages whose records are with the producer, routed since the
    /// last batch was sealed.
    batch: Batch<'a>,
    /// Batches waiting for Kafka's answers.
    settling: FuturesUnordered<Batch<'a>>,
    /// Messages in `batch` and `settling`.
    unacknowledged: usize,
    calling: FuturesUnordered<Calling<'a>>,
    /// Conversations with a message waiting for bots, and their messages
    /// that came meanwhile, in order.
    lanes: foldhash::HashMap<String, VecDeque<Fetched>>,
    /// One worker permit per message being routed (not once its records
    /// are with the producer).
    permits: Vec<OwnedSemaphorePermit>,
}

/// How taking one message ended at once.
enum Now {
    /// Its records are with the producer: no work left but Kafka's answers.
    Routed,
    /// Waiting for a bot, or in its conversation's lane behind one.
    Waiting,
    /// A copy of a channel message the conversation already had: dropped.
    Duplicate,
    /// Routed by the partition's previous owner before the rebalance.
    Skipped,
}

impl<'a> InFlight<'a> {
    /// Messages being routed (or waiting in a lane).
    fn active(&self) -> usize {
        self.permits.len()
    }

    fn source(&self, offset: i64, trace: TraceParent) -> Source<'a> {
        Source {
            topic: self.topic,
            partition: self.partition,
            offset,
            trace,
        }
    }

    /// Starts routing `message`, unless its conversation waits for a bot:
    /// then it waits in the conversation's lane.
    fn start(&mut self, message: Fetched) -> Now {
        let Fetched {
            offset,
            span,
            trace,
            replayed,
            body,
        } = message;
        let decoded = match body.decoded() {
            Ok(decoded) => decoded,
            Err((payload, error)) => {
                // Straight to the dead-letter topic, in no conversation's lane.
                let (router, stop, source) = (self.router, self.stop, self.source(offset, trace));
                let letter = Box::pin(async move {
                    router
                        .dead_letter_poison(&payload, &error, source, stop)
                        .await
                });
                let letter = Box::pin(letter.instrument(span));
                self.push((offset, None), Settle::wrapping(router, stop, letter));
                return Now::Routed;
            }
        };
        if let Some(lane) = self.lanes.get_mut(&decoded.key) {
            lane.push_back(Fetched {
                offset,
                span,
                trace,
                replayed,
                body: Body::Envelope(decoded),
            });
            return Now::Waiting;
        }
        let Decoded {
            envelope,
            key,
            payload,
        } = decoded;
        let source = self.source(offset, trace);
        let partition = self.partition;
        let state = self
            .states
            .get_mut(&key)
            .unwrap_or_else(|e| disk_failed(partition, &e));
        if !replayed && effects::is_duplicate(state, &envelope, offset) {
            tracing::debug!(
                partition = self.partition,
                offset,
                "copy of an earlier channel message dropped"
            );
            return Now::Duplicate;
        }
        let begun = {
            let _entered = span.enter();
            self.router
                .begin(envelope, payload, &key, state, source, self.stop)
        };
        match begun {
            Begun::Routed(routed) => {
                self.settle(offset, &key, routed);
                Now::Routed
            }
            Begun::Bots(call) => {
                self.lanes.insert(key.clone(), VecDeque::new());
                self.calling.push(Tagged::new(call, (offset, key), span));
                Now::Waiting
            }
        }
    }

    fn settle(&mut self, offset: i64, key: &str, routed: Routed<'a>) {
        let flush = routed.changed.then(|| self.changed(key));
        self.push((offset, flush), routed.settle);
    }

    fn push(&mut self, tag: Tag, settle: Settle<'a>) {
        self.batch.push(tag, settle);
        self.unacknowledged += 1;
    }

    /// What was routed since the last call waits for Kafka's answers as
    /// one batch.
    fn seal(&mut self) {
        if !self.batch.is_empty() {
            self.settling.push(std::mem::take(&mut self.batch));
        }
    }

    /// A message's bots answered: completes it, then starts the messages
    /// that waited in its conversation's lane. Returns those done at once.
    fn answered(&mut self, offset: i64, key: String, answered: Answered<'a>) -> Vec<(i64, Now)> {
        let routed = self.finish(&key, answered);
        self.settle(offset, &key, routed);
        let mut waiting = self.lanes.remove(&key).unwrap_or_default();
        let mut now = Vec::new();
        while let Some(message) = waiting.pop_front() {
            let offset = message.offset;
            now.push((offset, self.start(message)));
            if let Some(lane) = self.lanes.get_mut(&key) {
                // Waiting for a bot again: the rest wait behind it.
                lane.extend(waiting.drain(..));
            }
        }
        now
    }

    /// Conversation `key`'s state changed: returns the flush that writes it.
    fn changed(&mut self, key: &str) -> u64 {
        let flush = self.write_behind.changed(key);
        self.states.changed(key, flush);
        flush
    }

    /// Completes a message whose bots answered, on its conversation's state.
    fn finish(&mut self, key: &str, answered: Answered<'a>) -> Routed<'a> {
        let state = self
            .states
            .get_mut(key)
            .unwrap_or_else(|e| disk_failed(self.partition, &e));
        self.router.finish(answered, state)
    }

    /// Hands every changed state to the state writer, if no flush is being
    /// written; returns the flush's future, which gives back its number and
    /// what it wrote, for the disk.
    fn flush(&mut self) -> Option<Pending<'a, Flushed>> {
        let flush = self.write_behind.take()?;
        let written: Vec<(String, Encoded)> = flush
            .keys
            .into_iter()
            .filter_map(|key| {
                let encoded = self.states.encode_unflushed(&key)?;
                Some((key, encoded))
            })
            .collect();
        let (writer, stop, partition) = (self.writer, self.stop, self.partition);
        Some(Box::pin(async move {
            match writer.write(&written, stop).await {
                Ok(next_offset) => {
                    tracing::trace!(partition, "conversation states flushed");
                    Ok((flush.number, written, next_offset))
                }
                // Stopped: never committed, so nothing waiting is stored.
                Err(StateWriteError::Stopped) => std::future::pending().await,
                Err(error) => Err(error),
            }
        }))
    }

    /// Expires the idle states among the next conversations of the sweep.
    fn sweep(&mut self, policy: &ExpiryPolicy) {
        let lanes = &self.lanes;
        let expired = self
            .states
            .sweep(policy, std::time::SystemTime::now(), SWEEP_BATCH, |key| {
                lanes.contains_key(key)
            })
            .unwrap_or_else(|e| disk_failed(self.partition, &e));
        for key in expired {
            self.changed(&key);
        }
    }
}

/// Routes one partition; see the module's documentation.
pub(super) async fn route_partition(
    cx: PartitionContext,
    mut queue: mpsc::Receiver<Fetched>,
    no_new_work: CancellationToken,
    abort: CancellationToken,
) {
    let outcome =
        |outcome| metrics::counter!("switchboard_worker_records_total", "outcome" => outcome);
    let (routed, duplicate, skipped) =
        (outcome("routed"), outcome("duplicate"), outcome("skipped"));
    let held_back = metrics::counter!("switchboard_worker_partition_held_back_total");
    let flushes = metrics::counter!("switchboard_worker_state_flushes_total");
    let partition = cx.partition;
    let Some(writer) = open_state_writer(&cx, &abort).await else {
        return abort.cancelled().await;
    };
    let Some(states) = rebuild_states(&cx, &abort).await else {
        return;
    };
    let Some(mut skip) = done_by_previous_owner(&cx, &abort).await else {
        return;
    };
    let mut work = InFlight {
        router: &cx.router,
        topic: &cx.topic,
        partition,
        stop: &abort,
        states,
        write_behind: WriteBehind::default(),
        writer: &writer,
        batch: Batch::default(),
        settling: FuturesUnordered::new(),
        unacknowledged: 0,
        calling: FuturesUnordered::new(),
        lanes: foldhash::HashMap::default(),
        permits: Vec::new(),
    };
    let store = |safe: Option<i64>| {
        if let Some(offset) = safe
            && let Err(e) = cx.consumer.store_offset(&cx.topic, partition, offset)
        {
            // The partition was revoked meanwhile; its new owner redoes the rest.
            tracing::debug!(error = %e, partition, "offset not stored");
        }
    };
    // Offsets are stored once per batch of messages done: each store is a
    // topic lookup and a lock in librdkafka.
    let complete_all = |offsets: &mut dyn Iterator<Item = i64>| {
        let safe = cx
            .tracker
            .lock()
            .expect("tracker lock")
            .complete_all(offsets);
        store(safe);
    };
    let complete = |offset: i64| complete_all(&mut std::iter::once(offset));
    // A message's work is over once its records are with the producer: its
    // permit is freed (what is left is Kafka's answer, bounded apart). One
    // that needs no routing is done at once. Returns the freed permit, which
    // the next message of the same poll takes without going back to the
    // worker's semaphore.
    let ended_now = |work: &mut InFlight<'_>, offset: i64, now: Now| {
        let counter = match now {
            Now::Waiting => return None,
            Now::Routed => return work.permits.pop(),
            Now::Duplicate => &duplicate,
            Now::Skipped => &skipped,
        };
        counter.increment(1);
        complete(offset);
        work.permits.pop()
    };
    let mut flushing: Option<Pending<'_, Flushed>> = None;
    // The first flush one interval from now, not at once.
    let mut tick = tokio::time::interval_at(
        tokio::time::Instant::now() + cx.flush_interval,
        cx.flush_interval,
    );
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sweep = tokio::time::interval(SWEEP_EVERY);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut batch = Vec::with_capacity(cx.max_in_flight);
    // Messages taken while the worker had no permit for them.
    let mut overflow: VecDeque<Fetched> = VecDeque::new();
    let mut spare: Option<OwnedSemaphorePermit> = None;
    let mut open = true;
    let mut was_full = false;
    loop {
        // What the last turn routed waits for Kafka's answers together.
        work.seal();
        if !open
            && flushing.is_none()
            && work.write_behind.idle()
            && work.settling.is_empty()
            && work.calling.is_empty()
        {
            break;
        }
        // Backpressure: with too many messages done above the oldest one
        // not done (retried, maybe forever), take no new ones until it
        // finishes. The queue fills and the partition is paused; the
        // finished-offsets set stays bounded and nothing is skipped.
        // Messages done but for their state's flush count too, and those
        // waiting for Kafka's answers: none of them is done yet.
        let waiting = work.write_behind.waiting();
        let full =
            cx.tracker.lock().expect("tracker lock").done_ahead() + waiting + work.unacknowledged
                >= cx.max_finished_ahead;
        // Half the bound waiting for a flush starts one before the interval
        // ends, so the next messages find room while it is written.
        if flushing.is_none() && (!open || full || waiting >= cx.max_finished_ahead / 2) {
            flushing = work.flush();
        }
        if full && !was_full {
            held_back.increment(1);
            tracing::warn!(
                partition,
                bound = cx.max_finished_ahead,
                "partition held back: its oldest message is still not done"
            );
        }
        was_full = full;
        let room = cx
            .max_in_flight
            .saturating_sub(work.active())
            .min(cx.max_unacknowledged.saturating_sub(work.unacknowledged));
        let can_take = open && !full && room > 0;
        let permits_left = cx.worker_permits.available_permits() > 0 || spare.is_some();
        tokio::select! {
            biased;
            Some(settled) = work.settling.next(), if !work.settling.is_empty() => {
                work.unacknowledged -= settled.len();
                let mut count = 0;
                // Interrupted ones are not done: the next owner redoes them.
                let mut done = settled
                    .into_iter()
                    .filter(|(_, result)| result.is_ok())
                    .filter_map(|((offset, flush), _)| {
                        count += 1;
                        work.write_behind.outputs_done(flush, offset).then_some(offset)
                    });
                complete_all(&mut done);
                routed.increment(count);
            }
            Some(((offset, key), result)) = work.calling.next(), if !work.calling.is_empty() => {
                let Ok(answered) = result else {
                    continue; // interrupted: its lane stays closed
                };
                work.permits.pop(); // its records are about to be with the producer
                if no_new_work.is_cancelled() {
                    // Stopping: this one is finished, its lane's are redone.
                    let waiting = work.lanes.insert(key.clone(), VecDeque::new()).unwrap_or_default();
                    let routed = work.finish(&key, answered);
                    work.settle(offset, &key, routed);
                    work.permits.truncate(work.permits.len().saturating_sub(waiting.len()));
                    continue;
                }
                for (offset, now) in work.answered(offset, key, answered) {
                    ended_now(&mut work, offset, now);
                }
            }
            Some(flushed) = OptionFuture::from(flushing.as_mut()), if flushing.is_some() => {
                flushing = None;
                let (number, written, next_offset) = match flushed {
                    Ok(flushed) => flushed,
                    Err(error) => {
                        stop_writing(partition, &error);
                        return abort.cancelled().await;
                    }
                };
                flushes.increment(1);
                if let Err(e) = work.states.flushed(number, &written, next_offset) {
                    disk_failed(partition, &e);
                }
                complete_all(&mut work.write_behind.acknowledged(number).into_iter());
            }
            _ = tick.tick(), if flushing.is_none() => {
                flushing = work.flush();
            }
            _ = sweep.tick(), if open => {
                work.sweep(&cx.expiry);
            }
            permit = cx.worker_permits.clone().acquire_owned(),
                if !overflow.is_empty() || (can_take && !permits_left) => {
                let Ok(permit) = permit else { break };
                match overflow.pop_front() {
                    Some(message) => {
                        work.permits.push(permit);
                        let offset = message.offset;
                        let now = take(&mut work, &mut skip, &cx.tracker, message);
                        ended_now(&mut work, offset, now);
                    }
                    None => spare = Some(permit),
                }
            }
            received = queue.recv_many(&mut batch, room), if can_take && permits_left && overflow.is_empty() => {
                if received == 0 || no_new_work.is_cancelled() {
                    open = false;
                    batch.clear();
                    continue;
                }
                work.batch.reserve(received);
                for message in batch.drain(..) {
                    let permit = match spare.take() {
                        Some(permit) => permit,
                        None => match cx.worker_permits.clone().try_acquire_owned() {
                            Ok(permit) => permit,
                            Err(_) => {
                                overflow.push_back(message);
                                continue;
                            }
                        },
                    };
                    work.permits.push(permit);
                    let offset = message.offset;
                    let now = take(&mut work, &mut skip, &cx.tracker, message);
                    spare = ended_now(&mut work, offset, now);
                }
                // Not kept while the partition waits: other partitions may
                // need it.
                spare = None;
            }
            else => break,
        }
        if no_new_work.is_cancelled() && open {
            open = false;
        }
    }
}

/// Starts one message handed over by the consume loop.
fn take(
    work: &mut InFlight<'_>,
    skip: &mut std::collections::BTreeSet<i64>,
    tracker: &Mutex<OffsetTracker>,
    message: Fetched,
) -> Now {
    let offset = message.offset;
    if tracker.lock().expect("tracker lock").start(offset) {
        tracing::info!(partition = work.partition, offset, "first message taken");
    }
    if skip.remove(&offset) {
        return Now::Skipped;
    }
    work.start(message)
}
