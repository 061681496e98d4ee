//! One partition's conversation-state writes, fenced against a zombie
//! owner.
//!
//! A worker frozen past its group session (a long pause, a VM stall,
//! SIGSTOP) loses its partitions while it does not know it. Whatever state
//! records its producer still held go out when it resumes, after the new
//! owner's, and the compacted topic would keep the older state: a sticky
//! agent forgotten, an opt-out undone at the next rebuild. An idempotent
//! producer does not prevent that; a fence does.
//!
//! So each partition's states are written by a transactional producer of
//! its own, one transaction per flush, under a transactional id that names
//! the partition ([`transactional_id`]). A new owner's `init_transactions`
//! bumps that id's epoch before it rebuilds the partition's states: the
//! previous owner's open transaction is aborted (its records stay invisible
//! to `read_committed` readers, the rebuild among them, and compaction
//! drops them), and every later write of the previous owner is refused by
//! the brokers as fenced.
//!
//! A fenced writer waits: a zombie's partition is revoked within a second
//! or two of its resuming (its consumer finds its session gone), which
//! drops the writer with its flush. Only if the partition is still this
//! worker's after `reopen_after` (longer than the group session) was the
//! fence not a successor's but a late open of an earlier owner (its
//! `init_transactions` answered after the partition had moved on): then
//! the writer opens again, fencing that one, and writes the flush.
//!
//! One producer per owned partition costs a few librdkafka threads each;
//! it is what makes the fence per partition, without a transaction across
//! the worker's partitions or a consumer-group round trip per flush.
//!
//! A transaction needs of its records' delivery reports only the last
//! offset and which records Kafka refused, so the reports are gathered in
//! the producer's context ([`Reports`]) as they arrive, not handed out as
//! a future per record.

use std::{
    collections::BTreeSet,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use rdkafka::{
    ClientContext, Message as _,
    error::{KafkaError, RDKafkaErrorCode},
    producer::{BaseRecord, DeliveryResult, Producer as _, ProducerContext, ThreadedProducer},
};
use switchboard_runtime::{
    kafka::KafkaConfig,
    retry::{self, Backoff},
};
use tokio_util::sync::CancellationToken;

use super::Encoded;
use crate::destinations::topics::{WriteRetry, classify};

/// Longest a transaction may stay open. A flush's transaction lasts as
/// long as Kafka takes to acknowledge it, longer while a partition leader
/// moves; past this, the coordinator aborts it and the flush is written
/// again.
const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest one blocking call (init, commit, abort) waits.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Counts state transactions by outcome.
pub const TRANSACTIONS: &str = "switchboard_worker_state_transactions_total";
/// Times a flush from its transaction's start to its commit, retries included.
pub const FLUSH_DURATION: &str = "switchboard_worker_state_flush_duration_seconds";

/// The transactional id of the state writes of `partition` of the messages
/// topic `topic`, routed by consumer group `group`: one per partition, the
/// same whichever worker owns it.
pub fn transactional_id(group: &str, topic: &str, partition: i32) -> String {
    format!("switchboard-state.{group}.{topic}.{partition}")
}

/// Why state writes stopped.
#[derive(Debug, thiserror::Error)]
pub enum StateWriteError {
    /// An error no retry can clear (not authorized, say).
    #[error("partition {partition}'s state writes failed for good: {error}")]
    Fatal { partition: i32, error: KafkaError },
    /// The worker is stopping, or lost the partition.
    #[error("stopped")]
    Stopped,
}

/// A partition's state producer.
type StateProducer = ThreadedProducer<Reports>;

/// The delivery reports of the transaction being written, gathered where
/// librdkafka serves them.
///
/// A record's opaque is its attempt's number in the high half and its index
/// in the flush in the low half, so a late report of an aborted attempt is
/// told apart and ignored.
#[derive(Default)]
struct Reports {
    gathered: Mutex<Gathered>,
}

#[derive(Default)]
struct Gathered {
    attempt: u32,
    /// The highest offset acknowledged.
    last: Option<i64>,
    /// The records that failed, by index.
    failed: Vec<(usize, KafkaError)>,
}

// The opaque holds two 32-bit halves.
const _: () = assert!(usize::BITS == 64, "a 64-bit target");

impl Reports {
    /// Starts gathering the reports of a new attempt, and returns its
    /// number.
    fn start(&self) -> u32 {
        let mut gathered = self.gathered.lock().expect("reports lock");
        let attempt = gathered.attempt.wrapping_add(1);
        *gathered = Gathered {
            attempt,
            ..Gathered::default()
        };
        attempt
    }

    /// What the current attempt gathered; later reports of it are
    /// ignored.
    fn take(&self) -> Gathered {
        let mut gathered = self.gathered.lock().expect("reports lock");
        let attempt = gathered.attempt;
        std::mem::replace(
            &mut *gathered,
            Gathered {
                attempt: attempt.wrapping_add(1),
                ..Gathered::default()
            },
        )
    }

    fn opaque(attempt: u32, index: usize) -> usize {
        (attempt as usize) << 32 | (index & 0xffff_ffff)
    }
}

impl ClientContext for Reports {}

impl ProducerContext for Reports {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, opaque: usize) {
        let (attempt, index) = ((opaque >> 32) as u32, opaque & 0xffff_ffff);
        let mut gathered = self.gathered.lock().expect("reports lock");
        if attempt != gathered.attempt {
            return;
        }
        match result {
            Ok(message) => gathered.last = gathered.last.max(Some(message.offset())),
            Err((error, _)) => gathered.failed.push((index, error.clone())),
        }
    }
}

/// One attempt at a flush, failed.
enum Failed {
    /// Kafka refused these records for good (too large for the topic, say).
    Refused(Vec<(usize, KafkaError)>),
    /// May clear up: the flush is written again.
    Retry(KafkaError),
    Fatal(KafkaError),
}

/// What a partition's state writer is built from.
#[derive(Debug, Clone)]
pub struct WriterConfig {
    pub kafka: KafkaConfig,
    /// See [`transactional_id`].
    pub transactional_id: String,
    /// The compacted state topic.
    pub topic: String,
    pub partition: i32,
    /// How long a fenced writer waits, its partition still this worker's,
    /// before it opens again (see the module's documentation): longer than
    /// the group session.
    pub reopen_after: Duration,
}

/// The state writer of one partition.
pub struct StateWriter {
    config: WriterConfig,
    /// Replaced when the writer opens again; an `Option` only to hand it to
    /// a thread on drop.
    producer: Mutex<Option<Arc<StateProducer>>>,
    /// Set once the writer was fenced and opened again: another writer's
    /// records may then lie between this one's, so a flush no longer says
    /// what the partition holds below it (see [`Self::write`]).
    reopened: AtomicBool,
}

impl StateWriter {
    /// Creates the partition's producer and fences every earlier one of the
    /// same transactional id. Returns once the previous owner's open
    /// transaction is resolved, so a rebuild that follows reads all it will
    /// ever commit. Blocking: run it off the async runtime.
    pub fn open(config: WriterConfig) -> Result<Self, KafkaError> {
        let producer = Self::create(&config)?;
        Ok(Self::with(config, producer))
    }

    fn with(config: WriterConfig, producer: StateProducer) -> Self {
        Self {
            config,
            producer: Mutex::new(Some(Arc::new(producer))),
            reopened: AtomicBool::new(false),
        }
    }

    /// Blocking.
    fn create(config: &WriterConfig) -> Result<StateProducer, KafkaError> {
        let timeout = TRANSACTION_TIMEOUT.as_millis().to_string();
        // A flush's batch over the topic's limit would fail every state in
        // it, and the flush would leave them all out with the one too large.
        let batch_bytes = config
            .kafka
            .batch_bytes_within(&[&config.topic], "state")
            .to_string();
        let producer: StateProducer = config
            .kafka
            .producer_config(&[
                ("transactional.id", &config.transactional_id),
                ("transaction.timeout.ms", &timeout),
                // A record undelivered by then fails its transaction,
                // which is then written again.
                ("message.timeout.ms", &timeout),
                ("linger.ms", "5"),
                ("batch.size", &batch_bytes),
            ])
            .create_with_context(Reports::default())?;
        producer.init_transactions(CALL_TIMEOUT)?;
        Ok(producer)
    }

    /// Opens the writer, retrying what may clear up until it succeeds or
    /// `stop` fires (`None`).
    pub async fn open_retrying(
        config: WriterConfig,
        stop: &CancellationToken,
    ) -> Option<Result<Self, StateWriteError>> {
        Some(
            Self::create_retrying(&config, stop)
                .await?
                .map(|producer| Self::with(config, producer)),
        )
    }

    async fn create_retrying(
        config: &WriterConfig,
        stop: &CancellationToken,
    ) -> Option<Result<StateProducer, StateWriteError>> {
        let partition = config.partition;
        let created = retry::retry(
            Backoff::new(Duration::from_millis(200), Duration::from_secs(5)),
            stop,
            |e: &KafkaError| !is_fatal(e),
            |error, attempts, wait| {
                tracing::warn!(%error, partition, attempts, retry_in = ?wait, "cannot open the conversation-state writer; retrying")
            },
            || {
                let config = config.clone();
                async move {
                    tokio::task::spawn_blocking(move || Self::create(&config))
                        .await
                        .unwrap_or(Err(KafkaError::Canceled))
                }
            },
        )
        .await;
        match created {
            Ok(Ok(producer)) => Some(Ok(producer)),
            Ok(Err((error, _))) => Some(Err(StateWriteError::Fatal { partition, error })),
            Err(retry::Cancelled) => None,
        }
    }

    fn producer(&self) -> Arc<StateProducer> {
        let producer = self.producer.lock().expect("producer lock");
        producer.clone().expect("present until dropped")
    }

    /// Fenced: waits `reopen_after` (the partition's revocation drops this
    /// future meanwhile if it moved on), then opens again.
    async fn reopen(
        &self,
        error: &KafkaError,
        stop: &CancellationToken,
    ) -> Result<(), StateWriteError> {
        let partition = self.config.partition;
        tracing::warn!(%error, partition, reopen_after = ?self.config.reopen_after, "conversation-state writes fenced by another writer; opening again if the partition is still this worker's by then");
        tokio::select! {
            _ = tokio::time::sleep(self.config.reopen_after) => {}
            _ = stop.cancelled() => return Err(StateWriteError::Stopped),
        }
        let producer = Self::create_retrying(&self.config, stop)
            .await
            .ok_or(StateWriteError::Stopped)??;
        let old = self
            .producer
            .lock()
            .expect("producer lock")
            .replace(Arc::new(producer));
        drop_on_a_thread(old);
        self.reopened.store(true, Ordering::Relaxed);
        tracing::info!(partition, "conversation-state writer opened again");
        Ok(())
    }

    /// Writes one flush's states (a tombstone for `None`) as one
    /// transaction, again and again while its errors may clear up. A state
    /// Kafka refuses for good is logged, counted and left out: its
    /// conversation goes on from memory, and a later change may fit.
    ///
    /// Returns the state-topic offset after the flush's last record: once
    /// the owner has rebuilt the partition's states, and while no other
    /// writer was let in (the writer never opened again), every record
    /// below it is one the owner read or wrote, so a local copy holding
    /// the flush may resume from there. `None` when that is not known.
    pub async fn write(
        &self,
        states: &[(String, Encoded)],
        stop: &CancellationToken,
    ) -> Result<Option<i64>, StateWriteError> {
        let mut left_out = BTreeSet::new();
        let mut backoff = Duration::from_millis(100);
        let started = std::time::Instant::now();
        loop {
            let failed = tokio::select! {
                result = self.attempt(states, &left_out) => match result {
                    Ok(last) => {
                        metrics::counter!(TRANSACTIONS, "outcome" => "committed").increment(1);
                        metrics::histogram!(FLUSH_DURATION).record(started.elapsed().as_secs_f64());
                        let known = !self.reopened.load(Ordering::Relaxed);
                        return Ok(last.filter(|_| known).map(|last| last + 1));
                    }
                    Err(failed) => failed,
                },
                _ = stop.cancelled() => return Err(StateWriteError::Stopped),
            };
            match failed {
                Failed::Fatal(error) if is_fenced(&error) => {
                    metrics::counter!(TRANSACTIONS, "outcome" => "fenced").increment(1);
                    self.reopen(&error, stop).await?;
                }
                Failed::Fatal(error) => {
                    metrics::counter!(TRANSACTIONS, "outcome" => "failed").increment(1);
                    let partition = self.config.partition;
                    return Err(StateWriteError::Fatal { partition, error });
                }
                Failed::Refused(refused) => {
                    for (index, error) in refused {
                        let key = &states[index].0;
                        tracing::error!(%error, key, "conversation state refused for good; it lives in memory only");
                        metrics::counter!("switchboard_worker_state_write_failures_total")
                            .increment(1);
                        left_out.insert(index);
                    }
                }
                Failed::Retry(error) => {
                    metrics::counter!(TRANSACTIONS, "outcome" => "retried").increment(1);
                    tracing::warn!(%error, partition = self.config.partition, retry_in = ?backoff, "conversation-state flush failed; writing it again");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stop.cancelled() => return Err(StateWriteError::Stopped),
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// One transaction: begin, hand every record over, commit. A failure
    /// aborts it (its records never become visible). Committed, returns the
    /// offset of its last record (none if it had none).
    async fn attempt(
        &self,
        states: &[(String, Encoded)],
        left_out: &BTreeSet<usize>,
    ) -> Result<Option<i64>, Failed> {
        let producer = self.producer();
        let (topic, partition) = (&self.config.topic, self.config.partition);
        let attempt = producer.context().start();
        if let Err(error) = producer.begin_transaction() {
            return Err(self.abort(error).await);
        }
        for (index, (key, state)) in states.iter().enumerate() {
            if left_out.contains(&index) {
                continue;
            }
            let mut record = BaseRecord::with_opaque_to(topic, Reports::opaque(attempt, index))
                .partition(partition)
                .key(key.as_str());
            if let Some(value) = state {
                record = record.payload(value.as_slice());
            }
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        record = back;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    // Refused before it left (larger than the client
                    // takes, say): the same every time, so it is left out.
                    Err((error, _)) => {
                        let refused = classify(&error) == WriteRetry::Fatal;
                        return Err(match self.abort(error).await {
                            Failed::Retry(error) if refused => {
                                Failed::Refused(vec![(index, error)])
                            }
                            failed => failed,
                        });
                    }
                }
            }
        }
        // A retriable failure (a timeout, Kafka away) leaves the commit
        // under way: it is asked again, as librdkafka documents.
        let error = loop {
            let committing = producer.clone();
            let committed =
                tokio::task::spawn_blocking(move || committing.commit_transaction(CALL_TIMEOUT))
                    .await
                    .unwrap_or(Err(KafkaError::Canceled));
            match committed {
                // Committed: the commit flushed every record, and a flush
                // returns only once every delivery report has been served.
                Ok(()) => return Ok(producer.context().take().last),
                Err(KafkaError::Transaction(e)) if e.is_retriable() => {
                    tracing::debug!(error = %e, partition, "conversation-state commit not answered yet; asking again");
                }
                Err(error) => break error,
            }
        };
        let failed = self.abort(error).await;
        if matches!(failed, Failed::Fatal(_)) {
            return Err(failed);
        }
        // Which records failed, and whether any can never succeed.
        let refused: Vec<_> = producer
            .context()
            .take()
            .failed
            .into_iter()
            .filter(|(_, error)| classify(error) == WriteRetry::Fatal)
            .collect();
        if refused.is_empty() {
            Err(failed)
        } else {
            Err(Failed::Refused(refused))
        }
    }

    /// After `error`, aborts the open transaction (if any) so the next
    /// attempt starts clean.
    async fn abort(&self, error: KafkaError) -> Failed {
        if is_fatal(&error) {
            return Failed::Fatal(error);
        }
        let aborting = self.producer();
        let aborted = tokio::task::spawn_blocking(move || {
            let mut result = aborting.abort_transaction(CALL_TIMEOUT);
            // Not in a transaction: nothing to abort.
            if matches!(&result, Err(e) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::State))
            {
                result = Ok(());
            }
            result
        })
        .await
        .unwrap_or(Err(KafkaError::Canceled));
        match aborted {
            Err(abort_error) if is_fatal(&abort_error) => Failed::Fatal(abort_error),
            // A timed-out abort is called again by the next attempt's.
            _ => Failed::Retry(error),
        }
    }
}

impl Drop for StateWriter {
    fn drop(&mut self) {
        drop_on_a_thread(self.producer.lock().expect("producer lock").take());
    }
}

/// Dropping a producer purges what it still holds and joins its threads;
/// with a broker away that can take a while, so it happens on a thread of
/// its own, never on the async runtime.
fn drop_on_a_thread(producer: Option<Arc<StateProducer>>) {
    if let Some(producer) = producer {
        std::thread::spawn(move || drop(producer));
    }
}

/// A producer error after which this producer can never write again.
fn is_fatal(error: &KafkaError) -> bool {
    match error {
        KafkaError::Transaction(e) => e.is_fatal(),
        other => matches!(
            other.rdkafka_error_code(),
            Some(
                RDKafkaErrorCode::Fatal
                    | RDKafkaErrorCode::Fenced
                    | RDKafkaErrorCode::ProducerFenced
                    | RDKafkaErrorCode::TransactionalIdAuthorizationFailed
                    | RDKafkaErrorCode::ClusterAuthorizationFailed
            )
        ),
    }
}

/// Another writer opened this partition's transactional id since.
fn is_fenced(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::Fenced
                | RDKafkaErrorCode::ProducerFenced
                | RDKafkaErrorCode::InvalidProducerEpoch
        )
    )
}
