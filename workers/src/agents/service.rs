//! The queue stage's consume loop: the single owner of each queue-topic
//! partition applies its events to the queues' books, writes their
//! snapshots, then publishes what they decided.
//!
//! Per batch of events (or clock tick):
//! 1. apply every event to its queue's book, skipping offsets the queue's
//!    snapshot already reflects (`next_offset`);
//! 2. write each changed queue's snapshot, outbox included, and wait for
//!    Kafka;
//! 3. publish the outbox (assignments, control events, moves) and wait;
//! 4. commit the consumer offsets.
//!
//! A worker killed anywhere loses nothing and assigns nothing twice: before
//! step 2 nothing was decided (the next owner redoes the events from the
//! committed offset); after it, the next owner restores the snapshot,
//! publishes its outbox again (same assignment ids), and skips the events
//! it reflects. Every event below the committed offset is in its queue's
//! snapshot, so a queue without a snapshot has no event there.
//!
//! Rebalances are eager: a partition moves only after its old owner has
//! left it, and the old owner flushes each batch before polling again, so
//! a partition's queues never have two owners at once. A worker that
//! stalls past the session timeout while its process lives on could still
//! write after the new owner's rebuild; Kafka transactions would fence
//! that, at a cost on every batch.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::{Duration, SystemTime},
};

use futures::{FutureExt, future::try_join_all};
use prost::Message as _;
use rdkafka::{
    Message, TopicPartitionList,
    consumer::{CommitMode, Consumer, StreamConsumer},
    message::OwnedMessage,
};
use switchboard_proto::v1::{QueueEvent, QueueOutput, QueueSnapshot, queue_output::Output};
use switchboard_runtime::{
    kafka::{ConsumerErrors, KafkaConfig, PartitionChange, PartitionChanges},
    retry::{self, Backoff},
    shutdown::Shutdown,
};

use super::{
    config::AgentsConfig,
    engine::{QueueBook, Settings},
};
use crate::{
    config::WorkersConfig,
    destinations::{
        DestinationError,
        topics::{QUEUE_SNAPSHOT_BUDGET_BYTES, TopicOutputs, headers},
    },
    route::Interrupted,
};

/// Events applied per batch, at most.
const BATCH: usize = 500;

/// Bytes of events applied per batch, at most (past one event): what a
/// batch adds to a snapshot's outbox stays well under its budget.
const BATCH_BYTES: usize = 2 * 1024 * 1024;

/// The queues of the partitions this worker owns.
type Owned = HashMap<i32, HashMap<String, QueueBook>>;

/// The queue stage of one worker: a member of `<group_id>.queues` on the
/// agent-queue topic.
pub struct QueueStage {
    consumer: StreamConsumer<PartitionChanges>,
    outputs: TopicOutputs,
    agents: AgentsConfig,
    kafka: KafkaConfig,
    topic: String,
    dlq_topic: String,
    settings: SettingsByQueue,
}

/// Each configured queue's compiled settings, and one shared copy of the
/// default queue's for every other name: as many entries as the config
/// has, however many queue names events bring.
pub struct SettingsByQueue {
    configured: HashMap<String, Arc<Settings>>,
    default: Arc<Settings>,
}

impl SettingsByQueue {
    /// Compiles every queue's settings; the config must be valid.
    pub fn new(agents: &AgentsConfig) -> Self {
        let compile = |config: &super::config::QueueConfig, label: String| {
            Arc::new(Settings {
                calendar: config.calendar().expect("checked when the config loaded"),
                config: config.clone(),
                label,
            })
        };
        Self {
            configured: agents
                .queues
                .iter()
                .map(|(name, q)| (name.clone(), compile(q, name.clone())))
                .collect(),
            default: compile(&agents.default_queue, "other".to_owned()),
        }
    }

    /// The settings of queue `name` (without its tenant).
    pub fn get(&self, name: &str) -> Arc<Settings> {
        self.configured.get(name).unwrap_or(&self.default).clone()
    }

    /// Settings held.
    pub fn len(&self) -> usize {
        self.configured.len() + 1
    }

    /// Never empty: the default is always there.
    pub fn is_empty(&self) -> bool {
        false
    }
}

impl QueueStage {
    /// Creates the consumer and the producer; topics must exist.
    pub fn new(config: &WorkersConfig) -> anyhow::Result<Self> {
        let group = format!("{}.queues", config.group_id);
        let consumer: StreamConsumer<PartitionChanges> = config
            .kafka
            .stage_consumer_config(&group)
            .create_with_context(PartitionChanges::default())?;
        consumer.subscribe(&[&config.agent_queue_topic])?;
        Ok(Self {
            consumer,
            outputs: TopicOutputs::new(&config.outputs())?,
            agents: config.agents.clone(),
            kafka: config.kafka.clone(),
            topic: config.agent_queue_topic.clone(),
            dlq_topic: config.dlq_topic.clone(),
            settings: SettingsByQueue::new(&config.agents),
        })
    }

    fn book(&self, snapshot: QueueSnapshot) -> QueueBook {
        let settings = self.settings.get(super::split_queue_key(&snapshot.queue).1);
        QueueBook::new(snapshot, settings)
    }

    /// Assigns until `shutdown` fires. Every batch is flushed before the
    /// next poll, so stopping leaves nothing undone.
    pub async fn run(self, shutdown: Shutdown) -> anyhow::Result<()> {
        let mut owned = Owned::new();
        let mut tick = tokio::time::interval(self.agents.tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_tick = std::time::Instant::now();
        let mut consumer_errors = ConsumerErrors::new("queue stage");
        tracing::info!("queue stage started");
        loop {
            let first = tokio::select! {
                _ = shutdown.cancelled() => break,
                next = self.consumer.recv() => Some(next.map(|m| m.detach())),
                _ = tick.tick() => None,
            };
            let mut batch = Vec::new();
            match first {
                Some(Ok(message)) => batch.push(message),
                Some(Err(e)) => consumer_errors.handle(&e).await,
                None => {}
            }
            let mut bytes: usize = batch
                .iter()
                .map(|m| m.payload().map_or(0, <[u8]>::len))
                .sum();
            while (1..BATCH).contains(&batch.len()) && bytes < BATCH_BYTES {
                match self.consumer.recv().now_or_never() {
                    Some(Ok(message)) => {
                        bytes += message.payload().map_or(0, <[u8]>::len);
                        batch.push(message.detach());
                    }
                    _ => break,
                }
            }
            let mut dirty = self.rebalanced(&mut owned, &shutdown).await?;
            let now = now_ms();
            let mut positions: HashMap<i32, i64> = HashMap::new();
            for message in &batch {
                let partition = message.partition();
                let Some(books) = owned.get_mut(&partition) else {
                    continue; // revoked meanwhile: the new owner redoes it
                };
                positions.insert(partition, message.offset() + 1);
                let Some(event) = decode(message) else {
                    continue;
                };
                let Some(change) = event.event else { continue };
                let book = books.entry(event.queue.clone()).or_insert_with(|| {
                    self.book(QueueSnapshot {
                        queue: event.queue.clone(),
                        topic: self.topic.clone(),
                        partition,
                        ..Default::default()
                    })
                });
                if book.apply(change, message.offset(), now) {
                    dirty.insert((partition, event.queue));
                }
            }
            // Timers run at least every tick, busy or not.
            if batch.is_empty() || last_tick.elapsed() >= self.agents.tick {
                last_tick = std::time::Instant::now();
                for (partition, books) in &mut owned {
                    for (queue, book) in books {
                        if book.tick(now) {
                            dirty.insert((*partition, queue.clone()));
                        }
                    }
                }
            }
            match self.flush(&mut owned, &dirty, &shutdown).await {
                Ok(()) => {}
                Err(FlushError::Interrupted) => break,
                // Nothing can be assigned safely without snapshots: stop,
                // loudly, rather than loop forever.
                Err(FlushError::Snapshot(e)) => {
                    anyhow::bail!("the queue stage cannot write its snapshots: {e}")
                }
            }
            self.commit(&positions);
        }
        tracing::info!("queue stage stopped");
        Ok(())
    }

    /// Applies the rebalances since the last batch: revoked partitions are
    /// forgotten, assigned ones rebuilt from the queue-state topic. Returns
    /// the restored queues with an outbox still to publish.
    /// Reading the snapshots is retried (Kafka may be coming back, its
    /// metadata not there yet) until it succeeds or `shutdown` fires.
    async fn rebalanced(
        &self,
        owned: &mut Owned,
        shutdown: &Shutdown,
    ) -> anyhow::Result<HashSet<(i32, String)>> {
        let changes = self.consumer.context().take();
        let mut assigned = HashSet::new();
        for change in changes {
            match change {
                PartitionChange::Revoked(partitions) => {
                    metrics::counter!("switchboard_agent_queue_rebalances_total", "event" => "revoke")
                        .increment(1);
                    for p in partitions {
                        assigned.remove(&p);
                        for book in owned.remove(&p).into_iter().flat_map(HashMap::into_values) {
                            book.forget();
                        }
                    }
                }
                PartitionChange::Assigned(partitions) => {
                    metrics::counter!("switchboard_agent_queue_rebalances_total", "event" => "assign")
                        .increment(1);
                    assigned.extend(partitions);
                }
            }
        }
        let mut pending = HashSet::new();
        if assigned.is_empty() {
            return Ok(pending);
        }
        let started = std::time::Instant::now();
        let read = retry::retry(
            Backoff::new(Duration::from_millis(100), Duration::from_secs(5)),
            shutdown,
            |_: &anyhow::Error| true,
            |error, _, wait| {
                tracing::warn!(error = %error, retry_in = ?wait, "cannot read the queue snapshots; retrying");
            },
            || {
                let (kafka, topic) = (self.kafka.clone(), self.agents.queue_state_topic.clone());
                let (wanted, queue_topic) = (assigned.clone(), self.topic.clone());
                async move {
                    tokio::task::spawn_blocking(move || {
                        read_snapshots(&kafka, &topic, &queue_topic, &wanted)
                    })
                    .await?
                }
            },
        )
        .await;
        let snapshots = match read {
            Ok(Ok(snapshots)) => snapshots,
            // Stopping: the assigned partitions stay unowned, their events unapplied.
            Err(retry::Cancelled) => return Ok(pending),
            Ok(Err((error, _))) => return Err(error),
        };
        metrics::histogram!("switchboard_agent_queue_rebuild_duration_seconds")
            .record(started.elapsed().as_secs_f64());
        for p in &assigned {
            owned.entry(*p).or_default();
        }
        let restored = snapshots.len();
        for snapshot in snapshots {
            let (partition, queue) = (snapshot.partition, snapshot.queue.clone());
            let book = self.book(snapshot);
            book.report();
            if !book.snapshot.outbox.is_empty() {
                pending.insert((partition, queue.clone()));
            }
            owned.entry(partition).or_default().insert(queue, book);
        }
        tracing::info!(partitions = ?assigned, queues = restored, took = ?started.elapsed(), "queue partitions assigned, queues rebuilt");
        Ok(pending)
    }

    /// Writes the snapshots of the `dirty` queues, then publishes their
    /// outboxes. A restored queue's outbox is already in its snapshot.
    async fn flush(
        &self,
        owned: &mut Owned,
        dirty: &HashSet<(i32, String)>,
        stop: &Shutdown,
    ) -> Result<(), FlushError> {
        let mut books: Vec<&mut QueueBook> = owned
            .iter_mut()
            .flat_map(|(p, books)| books.iter_mut().map(move |(q, b)| ((*p, q.clone()), b)))
            .filter(|(key, _)| dirty.contains(key))
            .map(|(_, b)| b)
            .collect();
        // Under the queue-state topic's limit by construction: trimmed
        // held messages rather than a snapshot Kafka refuses.
        for book in &mut books {
            let size = book.fit(QUEUE_SNAPSHOT_BUDGET_BYTES);
            if size > QUEUE_SNAPSHOT_BUDGET_BYTES {
                tracing::error!(queue = %book.snapshot.queue, size, "queue snapshot over budget even without held messages");
            }
        }
        let writes = books
            .iter()
            .map(|book| retrying(stop, || self.outputs.queue_snapshot(&book.snapshot)));
        for written in try_join_all(writes).await? {
            written.map_err(FlushError::Snapshot)?;
        }
        let mut outputs = Vec::new();
        for book in books {
            outputs.extend(book.take_outbox());
            book.report();
        }
        let published = try_join_all(outputs.iter().map(|o| async move {
            match retrying(stop, || self.publish(o)).await? {
                Ok(()) => Ok(()),
                Err(error) => self.dead_letter_output(o, &error, stop).await,
            }
        }));
        published.await?;
        Ok(())
    }

    /// An output Kafka refused for good goes to the dead-letter topic (as
    /// an encoded `QueueOutput`) with the reason, so the queue moves on.
    async fn dead_letter_output(
        &self,
        output: &QueueOutput,
        error: &DestinationError,
        stop: &Shutdown,
    ) -> Result<(), Interrupted> {
        tracing::error!(%error, "a queue stage output refused for good; sent to the dead-letter topic");
        let message = error.to_string();
        let headers = headers::of_dead_letter(&message, error.kind, &self.topic);
        let payload = output.encode_to_vec();
        if let Err(e) = retrying(stop, || {
            self.outputs
                .raw(&self.dlq_topic, "", &payload, headers.clone())
        })
        .await?
        {
            tracing::error!(error = %e, "the dead-letter topic refused it too; dropped");
            metrics::counter!("switchboard_dlq_write_failures_total").increment(1);
        }
        Ok(())
    }

    async fn publish(&self, output: &QueueOutput) -> Result<(), DestinationError> {
        match &output.output {
            Some(Output::Assignment(event)) => self.outputs.assignment(event).await,
            Some(Output::Control(envelope)) => self.outputs.message(envelope).await,
            Some(Output::Moved(event)) => {
                let record = self
                    .outputs
                    .queue_task(event, &switchboard_runtime::trace::TraceParent::root());
                self.outputs.resend(&record).await
            }
            Some(Output::Refused(task)) => {
                let envelope = task.envelope.clone().unwrap_or_default();
                let destination = format!("agent:{}", task.queue);
                let headers = headers::of_dead_letter("queue full", &destination, &self.topic);
                self.outputs
                    .raw(
                        &self.dlq_topic,
                        &envelope.conversation_key(),
                        &envelope.encode_to_vec(),
                        headers,
                    )
                    .await
            }
            None => Ok(()),
        }
    }

    fn commit(&self, positions: &HashMap<i32, i64>) {
        if positions.is_empty() {
            return;
        }
        let mut tpl = TopicPartitionList::new();
        for (partition, offset) in positions {
            if let Err(e) =
                tpl.add_partition_offset(&self.topic, *partition, rdkafka::Offset::Offset(*offset))
            {
                tracing::warn!(error = %e, "queue stage offset");
            }
        }
        // Only a starting point: snapshots say what is applied.
        if let Err(e) = self.consumer.commit(&tpl, CommitMode::Async) {
            tracing::debug!(error = %e, "queue stage commit");
        }
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as i64
}

fn decode(message: &OwnedMessage) -> Option<QueueEvent> {
    match QueueEvent::decode(message.payload().unwrap_or_default()) {
        Ok(event) => Some(event),
        Err(e) => {
            tracing::warn!(error = %e, partition = message.partition(), offset = message.offset(), "undecodable queue event skipped");
            metrics::counter!("switchboard_agent_queue_undecodable_total").increment(1);
            None
        }
    }
}

/// Why a batch could not be flushed.
enum FlushError {
    /// Shutting down.
    Interrupted,
    /// Kafka refused a snapshot for good.
    Snapshot(DestinationError),
}

impl From<Interrupted> for FlushError {
    fn from(_: Interrupted) -> Self {
        Self::Interrupted
    }
}

/// Retries a Kafka write while its errors are retryable, until it succeeds
/// or `stop` fires; a fatal error is returned.
async fn retrying<F, Fut>(
    stop: &Shutdown,
    attempt: F,
) -> Result<Result<(), DestinationError>, Interrupted>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), DestinationError>>,
{
    let outcome = retry::retry(
        Backoff::new(Duration::from_millis(100), Duration::from_secs(5)),
        stop,
        |e: &DestinationError| e.retryable,
        |error, _, wait| tracing::warn!(%error, retry_in = ?wait, "queue stage write failed"),
        attempt,
    )
    .await
    .map_err(|retry::Cancelled| Interrupted)?;
    Ok(outcome.map_err(|(error, _)| error))
}

/// The latest snapshot of every queue of `queue_topic` in `partitions`. Blocking.
fn read_snapshots(
    kafka: &KafkaConfig,
    topic: &str,
    queue_topic: &str,
    partitions: &HashSet<i32>,
) -> anyhow::Result<Vec<QueueSnapshot>> {
    let mut latest: HashMap<String, QueueSnapshot> = HashMap::new();
    for p in 0..kafka.partition_count(topic)? as i32 {
        crate::compacted::read_partition(kafka, topic, p, |key, value| {
            match value.map(QueueSnapshot::decode) {
                Some(Ok(snapshot)) => {
                    latest.insert(key.to_owned(), snapshot);
                }
                None => {
                    latest.remove(key);
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, queue = key, "undecodable queue snapshot skipped")
                }
            }
        })?;
    }
    Ok(latest
        .into_values()
        .filter(|s| s.topic == queue_topic && partitions.contains(&s.partition))
        .collect())
}
