//! The sender stage's consume loop: reads the outbound topics in its own
//! consumer group and sends each message to its channel's provider, at
//! least once, in order per conversation.
//!
//! - Each assigned partition gets a task and a bounded queue. Different
//!   conversations are sent concurrently (up to `max_in_flight_per_partition`,
//!   and `max_in_flight` over the stage); one conversation's messages go one
//!   at a time, the next only once the provider has answered the previous
//!   one for good (accepted, or refused, or given up on).
//! - A message's offset is stored only once its outcome's record is
//!   acknowledged by Kafka: the analytics record (with the provider's
//!   message id) for an accepted message, the rejection (and analytics)
//!   records for a refusal, or the dead letter. librdkafka commits stored
//!   offsets every second, on revoke and at shutdown. Only the contiguous
//!   prefix of finished offsets is stored ([`crate::offsets`]).
//! - On revoke a partition's task is stopped and its first unfinished
//!   offset committed, with the offsets finished above it in the commit
//!   metadata, so the next owner skips those and redoes only what was in
//!   flight.
//! - A partition whose queue is full is paused in the consumer until its
//!   task catches up, so one slow partition holds back only itself.

use std::{
    collections::{BTreeSet, HashMap, HashSet, VecDeque},
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use futures::{FutureExt as _, future::Shared};
use prost::Message as _;
use rdkafka::{
    ClientContext, Message, Offset, TopicPartitionList,
    consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer},
    error::{KafkaError, KafkaResult},
    message::{Header, OwnedHeaders, OwnedMessage},
    types::RDKafkaErrorCode,
};
use switchboard_proto::v1::{
    AnalyticsRecord, Channel, Destination, Envelope, Rejection, RejectionReason, RouteDecision,
    SendOutcome, destination, send_outcome,
};
use switchboard_runtime::{
    headers as record_headers,
    kafka::ConsumerErrors,
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

use super::{
    config::SendersConfig,
    http::HttpClient,
    limiter::SenderLimits,
    metrics::{ByChannel, SenderMetrics},
    outcome::{Accepted, SendError},
    providers::{Provider, Providers},
    recent::RecentSends,
};
use crate::{
    config::WorkersConfig,
    consume::offsets::{OffsetTracker, parse_skip_metadata},
    destinations::{
        DestinationError,
        topics::{DeadLetter, Source, TopicOutputs},
    },
};

/// Headers of a provider's refusal on the rejections topic.
pub mod headers {
    /// The provider API (`whatsapp`, `messenger`, `instagram`, `twilio`, `webchat`).
    pub const PROVIDER: &str = "switchboard-provider";
    /// The provider's error code (`131047`, `551`, `21610`), or the HTTP
    /// status for web chat; `unsendable` when Switchboard could not
    /// express the message on the channel.
    pub const CODE: &str = "switchboard-provider-code";
    /// The provider's error message.
    pub const REASON: &str = "switchboard-provider-reason";
}

/// The stopping signal fired before the message was finished; it is not
/// stored, and is sent again by whoever owns its partition next.
#[derive(Debug)]
struct Interrupted;

/// Revocations and partition tasks, shared with the rebalance callback.
#[derive(Default)]
pub struct SenderContext {
    revoked: Mutex<Vec<(String, i32)>>,
    partitions: Mutex<HashMap<(String, i32), Running>>,
    assigned: Mutex<HashSet<(String, i32)>>,
}

struct Running {
    tracker: Arc<Mutex<OffsetTracker>>,
    task: AbortHandle,
}

impl SenderContext {
    /// Stops each revoked partition's task, then commits its first
    /// unfinished offset with the finished ones above it in the metadata.
    fn stop_and_commit(&self, consumer: &BaseConsumer<Self>, revoked: &TopicPartitionList) {
        let mut partitions = self.partitions.lock().expect("partitions lock");
        let mut assigned = self.assigned.lock().expect("assigned lock");
        let mut tpl = TopicPartitionList::new();
        for e in revoked.elements() {
            let key = (e.topic().to_owned(), e.partition());
            assigned.remove(&key);
            let Some(running) = partitions.remove(&key) else {
                continue;
            };
            running.task.abort();
            let Some((next, metadata)) =
                running.tracker.lock().expect("tracker lock").commit_point()
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
        if let Err(e) = consumer.store_offsets(&tpl) {
            tracing::debug!(error = %e, "storing sender offsets on revoke");
        }
        if let Err(e) = consumer.commit(&tpl, CommitMode::Sync) {
            tracing::warn!(error = %e, "sender commit on revoke failed; the next owner sends more again");
        }
    }
}

impl ClientContext for SenderContext {}

impl ConsumerContext for SenderContext {
    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance
            && let Err(e) = consumer.resume(tpl)
        {
            tracing::debug!(error = %e, "resuming newly assigned sender partitions");
        }
    }

    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let keys = |tpl: &TopicPartitionList| {
            tpl.elements()
                .iter()
                .map(|e| (e.topic().to_owned(), e.partition()))
                .collect::<Vec<_>>()
        };
        match rebalance {
            Rebalance::Revoke(tpl) => {
                metrics::counter!("switchboard_sender_rebalances_total", "event" => "revoke")
                    .increment(1);
                self.stop_and_commit(consumer, tpl);
                self.revoked.lock().expect("revoked lock").extend(keys(tpl));
            }
            Rebalance::Assign(tpl) => {
                metrics::counter!("switchboard_sender_rebalances_total", "event" => "assign")
                    .increment(1);
                self.assigned
                    .lock()
                    .expect("assigned lock")
                    .extend(keys(tpl));
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "sender stage rebalance error"),
        }
    }
}

type SenderConsumer = StreamConsumer<SenderContext>;

/// What sending a message needs, shared by every partition.
pub struct Sending {
    providers: Providers,
    http: HttpClient,
    limits: SenderLimits,
    recent: RecentSends,
    outputs: TopicOutputs,
    rejections_topic: String,
    metrics: ByChannel,
    backoff: Backoff,
}

/// How one message ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Counted under this `outcome` label; its offset may be stored.
    Done(&'static str),
    /// Interrupted, or its conversation's previous message was: not done.
    Unfinished,
}

/// A message given up on: why, and the calls made.
struct Failure {
    error: SendError,
    provider: Option<(Provider, String)>,
    attempts: u32,
}

/// A message the provider accepted.
struct Sent {
    accepted: Accepted,
    provider: Provider,
    sender_id: String,
    attempts: u32,
}

impl Sending {
    /// The HTTP client, providers, bounds and the Kafka producer.
    pub fn new(config: &WorkersConfig) -> anyhow::Result<Self> {
        let senders: &SendersConfig = &config.senders;
        Ok(Self {
            providers: Providers::new(senders)?,
            http: HttpClient::new(senders.timeout, senders.max_response_bytes)?,
            limits: SenderLimits::new(senders.max_senders),
            recent: RecentSends::new(
                senders.recent_sends_per_conversation,
                senders.recent_conversations,
            ),
            outputs: TopicOutputs::new(&config.outputs())?,
            rejections_topic: config.rejections_topic.clone(),
            metrics: ByChannel::new(),
            backoff: Backoff::new(senders.retry_backoff, senders.retry_backoff_max)
                .attempts(senders.max_attempts),
        })
    }

    /// Sends one envelope (read from `source`, whose record is `payload`)
    /// and writes its outcome's records. `lane` is told once the provider
    /// answered for good, so the conversation's next message may go.
    async fn handle(
        &self,
        envelope: Envelope,
        payload: &[u8],
        source: Source<'_>,
        stop: &CancellationToken,
        lane: oneshot::Sender<()>,
    ) -> Result<&'static str, Interrupted> {
        let key = envelope.conversation_key();
        let metrics = self.metrics.of(envelope.channel());
        if self.recent.contains(&key, &envelope.message_id) {
            tracing::debug!(
                partition = source.partition,
                offset = source.offset,
                "copy of a sent message skipped"
            );
            let _ = lane.send(());
            return Ok("duplicate");
        }
        let result = self.attempt(&envelope, metrics, stop).await?;
        let outcome = match &result {
            Ok(_) => "accepted",
            Err(failure) => failure.error.label(),
        };
        // Accepted and refused messages are final; a dead-lettered one is
        // sent again when replayed, so it is not remembered.
        if matches!(outcome, "accepted" | "refused" | "unsendable") {
            self.recent.insert(&key, &envelope.message_id);
        }
        let _ = lane.send(());
        match result {
            Ok(sent) => {
                tracing::debug!(
                    provider = sent.provider.name(),
                    attempts = sent.attempts,
                    "message accepted by the provider"
                );
                let record = accepted_record(envelope, &sent);
                self.must_write(source, stop, "analytics", || async {
                    let record = self.outputs.analytics(&key, &record, &source.trace);
                    self.outputs.resend(&record).await
                })
                .await?;
            }
            Err(failure) => match &failure.error {
                SendError::Refused(_) | SendError::Unsendable(_) => {
                    self.refused(&key, envelope, &failure, source, stop).await?;
                }
                SendError::Misconfigured(_) | SendError::Transient { .. } => {
                    tracing::error!(error = %failure.error, attempts = failure.attempts, channel = envelope.channel().slug(),
                        "message not sent; it goes to the dead-letter topic");
                    let destination = format!("sender:{}", envelope.channel().slug());
                    self.dead_letter(
                        &key,
                        payload,
                        &failure.error.to_string(),
                        &destination,
                        failure.attempts,
                        source,
                        stop,
                    )
                    .await?;
                }
            },
        }
        Ok(outcome)
    }

    /// Calls the provider until it answers for good: accepted, refused, or
    /// still failing after `max_attempts` calls. Each call first waits for
    /// a token of the sender's bucket.
    async fn attempt(
        &self,
        envelope: &Envelope,
        metrics: &SenderMetrics,
        stop: &CancellationToken,
    ) -> Result<Result<Sent, Failure>, Interrupted> {
        let target = match self.providers.target(envelope) {
            Ok(target) => target,
            Err(error) => {
                return Ok(Err(Failure {
                    error,
                    provider: Provider::of(envelope.channel()).map(|p| (p, String::new())),
                    attempts: 0,
                }));
            }
        };
        let mut delay = self.backoff.initial;
        let mut attempts = 0;
        loop {
            let wait = self
                .limits
                .reserve(&target.sender_id, target.rate, Instant::now());
            if !wait.is_zero() {
                metrics.waited.record(wait.as_secs_f64());
                sleep(wait, stop).await?;
            }
            attempts += 1;
            let started = Instant::now();
            let answer = tokio::select! {
                answer = self.http.call(&target.request) => answer,
                _ = stop.cancelled() => return Err(Interrupted),
            };
            metrics.request.record(started.elapsed().as_secs_f64());
            let error = match answer
                .and_then(|answer| self.providers.read(target.provider, &answer, envelope))
            {
                Ok(accepted) => {
                    return Ok(Ok(Sent {
                        accepted,
                        provider: target.provider,
                        sender_id: target.sender_id,
                        attempts,
                    }));
                }
                Err(error) => error,
            };
            let SendError::Transient {
                retry_after,
                rate_limited,
                ..
            } = &error
            else {
                return Ok(Err(Failure {
                    error,
                    provider: Some((target.provider, target.sender_id)),
                    attempts,
                }));
            };
            if self.backoff.max_attempts > 0 && attempts >= self.backoff.max_attempts {
                return Ok(Err(Failure {
                    error,
                    provider: Some((target.provider, target.sender_id)),
                    attempts,
                }));
            }
            let mut wait = delay.mul_f64(rand::random_range(0.5..1.0));
            delay = (delay * 2).min(self.backoff.max);
            if let Some(asked) = retry_after {
                wait = wait.max(*asked);
            }
            let wait = wait.min(self.backoff.max);
            if *rate_limited {
                metrics.retried_rate_limited.increment(1);
                // The sender's other conversations wait too.
                self.limits.pause(&target.sender_id, Instant::now() + wait);
            } else {
                metrics.retried_error.increment(1);
            }
            tracing::warn!(%error, attempts, retry_in = ?wait, provider = target.provider.name(), "provider call failed; retrying");
            sleep(wait, stop).await?;
        }
    }

    /// Writes a refusal to the rejections topic (with the provider's code
    /// in headers) and to analytics.
    async fn refused(
        &self,
        key: &str,
        envelope: Envelope,
        failure: &Failure,
        source: Source<'_>,
        stop: &CancellationToken,
    ) -> Result<(), Interrupted> {
        let (provider, sender_id) = failure
            .provider
            .clone()
            .map_or(("", String::new()), |(p, s)| (p.name(), s));
        let mut send = SendOutcome {
            status: send_outcome::Status::Refused as i32,
            provider: provider.to_owned(),
            sender_id,
            attempts: failure.attempts,
            ..Default::default()
        };
        let (reason, detail) = match &failure.error {
            SendError::Refused(error) => {
                send.error_code.clone_from(&error.code);
                send.error_subcode.clone_from(&error.subcode);
                send.error_message.clone_from(&error.message);
                send.http_status = u32::from(error.http_status);
                send.provider_trace.clone_from(&error.trace);
                (
                    RejectionReason::ProviderRefused,
                    format!("{provider} refused it: {error}"),
                )
            }
            other => {
                send.error_code = "unsendable".into();
                send.error_message = other.to_string();
                (RejectionReason::Unsendable, format!("not sent: {other}"))
            }
        };
        tracing::info!(provider, code = %send.error_code, channel = envelope.channel().slug(),
            "outbound message refused; it goes to the rejections topic");
        let header_list = [
            (headers::PROVIDER, provider),
            (headers::CODE, send.error_code.as_str()),
            (headers::REASON, send.error_message.as_str()),
        ];
        let trace = source.trace.to_string();
        let headers = header_list
            .into_iter()
            .chain([(TRACEPARENT, trace.as_str())])
            .fold(OwnedHeaders::new_with_capacity(4), |h, (key, value)| {
                h.insert(Header {
                    key,
                    value: Some(value),
                })
            });
        let now = switchboard_proto::timestamp(SystemTime::now());
        let rejection = Rejection {
            envelope: Some(envelope.clone()),
            reason: reason as i32,
            detail: detail.clone(),
            rejected_at: Some(now),
        };
        let rejection = rejection.encode_to_vec();
        let record = AnalyticsRecord {
            decision: Some(RouteDecision {
                message_id: envelope.message_id.clone(),
                rule_id: "send".into(),
                reason: detail,
                destinations: vec![outbound()],
                decided_at: Some(now),
                send: Some(send),
            }),
            envelope: Some(envelope),
        };
        let (rejected, recorded) = futures::join!(
            self.must_write(source, stop, "rejections", || {
                self.outputs
                    .raw(&self.rejections_topic, key, &rejection, headers.clone())
            }),
            self.must_write(source, stop, "analytics", || async {
                let record = self.outputs.analytics(key, &record, &source.trace);
                self.outputs.resend(&record).await
            }),
        );
        rejected.and(recorded)
    }

    /// A Kafka write that must land before the offset is stored: retried
    /// while retryable. One Kafka refuses for good (too large, not
    /// authorized) is logged and the message moves on: it was already
    /// answered by the provider, and dead-lettering it would send it again
    /// on replay.
    async fn must_write<F, Fut>(
        &self,
        source: Source<'_>,
        stop: &CancellationToken,
        what: &str,
        attempt: F,
    ) -> Result<(), Interrupted>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<(), DestinationError>>,
    {
        if let Err((error, _)) = write(stop, attempt).await? {
            tracing::error!(%error, partition = source.partition, offset = source.offset,
                "the {what} record of a sent message was refused for good; it is lost");
        }
        Ok(())
    }

    /// Dead-letters the record, with headers saying why and where it came
    /// from; a letter the topic refuses for good is logged and counted.
    #[allow(clippy::too_many_arguments)]
    async fn dead_letter(
        &self,
        key: &str,
        payload: &[u8],
        error: &str,
        destination: &str,
        attempts: u32,
        source: Source<'_>,
        stop: &CancellationToken,
    ) -> Result<(), Interrupted> {
        let letter = DeadLetter {
            key,
            payload,
            error: error.to_owned(),
            destination,
            attempts,
            source,
        };
        match write(stop, || self.outputs.dead_letter(&letter)).await? {
            Ok(()) => {
                metrics::counter!("switchboard_dlq_records_total", "reason" => "destination")
                    .increment(1);
            }
            Err((error, _)) => {
                tracing::error!(%error, partition = source.partition, offset = source.offset,
                    "the dead-letter topic refused the letter for good; the message is left in its topic only");
                metrics::counter!("switchboard_dlq_write_failures_total").increment(1);
            }
        }
        Ok(())
    }
}

/// The analytics record of an accepted message: the envelope with the
/// provider's id as its `channel_message_id`, and a `send` decision.
fn accepted_record(mut envelope: Envelope, sent: &Sent) -> AnalyticsRecord {
    let id = &sent.accepted.provider_message_id;
    if envelope.channel_message_id.is_empty() {
        envelope.channel_message_id.clone_from(id);
    }
    AnalyticsRecord {
        decision: Some(RouteDecision {
            message_id: envelope.message_id.clone(),
            rule_id: "send".into(),
            reason: format!(
                "accepted by {} as {id} after {} call(s)",
                sent.provider.name(),
                sent.attempts
            ),
            destinations: vec![outbound()],
            decided_at: Some(switchboard_proto::timestamp(SystemTime::now())),
            send: Some(SendOutcome {
                status: send_outcome::Status::Accepted as i32,
                provider: sent.provider.name().to_owned(),
                provider_message_id: id.clone(),
                sender_id: sent.sender_id.clone(),
                attempts: sent.attempts,
                provider_status: sent.accepted.status.clone(),
                http_status: u32::from(sent.accepted.http_status),
                ..Default::default()
            }),
        }),
        envelope: Some(envelope),
    }
}

fn outbound() -> Destination {
    Destination {
        kind: Some(destination::Kind::Outbound(true)),
    }
}

/// Sleeps `wait`, unless `stop` fires first.
async fn sleep(wait: Duration, stop: &CancellationToken) -> Result<(), Interrupted> {
    tokio::select! {
        _ = tokio::time::sleep(wait) => Ok(()),
        _ = stop.cancelled() => Err(Interrupted),
    }
}

/// A Kafka write retried while its errors are retryable, until `stop`.
async fn write<F, Fut>(
    stop: &CancellationToken,
    attempt: F,
) -> Result<Result<(), (DestinationError, u32)>, Interrupted>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), DestinationError>>,
{
    retry::retry(
        Backoff::new(Duration::from_millis(100), Duration::from_secs(5)),
        stop,
        |e: &DestinationError| e.retryable,
        |error, _, wait| tracing::warn!(%error, retry_in = ?wait, "sender stage write failed"),
        attempt,
    )
    .await
    .map_err(|retry::Cancelled| Interrupted)
}

struct PartitionTask {
    queue: mpsc::Sender<OwnedMessage>,
    handle: JoinHandle<()>,
    /// Fetched while the queue was full; the partition is paused meanwhile.
    held: VecDeque<OwnedMessage>,
}

/// The sender stage of one worker: a member of `<group_id>.senders` on the
/// outbound topics of the configured channels.
pub struct SenderStage {
    consumer: Arc<SenderConsumer>,
    sending: Arc<Sending>,
    queue_len: usize,
    max_finished_ahead: usize,
    permits: Arc<Semaphore>,
    grace: Duration,
}

impl SenderStage {
    /// Creates the consumer, the producer and the HTTP client; topics must exist.
    pub fn new(config: &WorkersConfig) -> anyhow::Result<Self> {
        let senders = &config.senders;
        let group = format!("{}.senders", config.group_id);
        let consumer: SenderConsumer = config
            .kafka
            .consumer_config(&[
                ("group.id", &group),
                ("enable.auto.commit", "true"),
                ("auto.commit.interval.ms", "1000"),
                ("enable.auto.offset.store", "false"),
                ("auto.offset.reset", senders.auto_offset_reset.as_str()),
                ("session.timeout.ms", "10000"),
                ("heartbeat.interval.ms", "1000"),
                ("partition.assignment.strategy", "cooperative-sticky"),
            ])
            .create_with_context(SenderContext::default())?;
        let topics: Vec<String> = senders
            .channel_list()?
            .into_iter()
            .map(|c| config.outbound_topic(c))
            .collect();
        let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
        consumer.subscribe(&topics)?;
        Ok(Self {
            consumer: Arc::new(consumer),
            sending: Arc::new(Sending::new(config)?),
            queue_len: senders.max_in_flight_per_partition,
            max_finished_ahead: senders.max_finished_ahead_per_partition,
            permits: Arc::new(Semaphore::new(senders.max_in_flight)),
            grace: config.shutdown_grace,
        })
    }

    fn pause(&self, (topic, partition): &(String, i32), pause: bool) {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(topic, *partition);
        let result = if pause {
            self.consumer.pause(&tpl)
        } else {
            self.consumer.resume(&tpl)
        };
        if let Err(e) = result {
            tracing::debug!(error = %e, partition, pause, "sender pause/resume");
        }
    }

    /// Sends until `shutdown` fires, then finishes what is in flight within
    /// the grace period and commits.
    pub async fn run(self, shutdown: Shutdown) -> anyhow::Result<()> {
        let no_new_work = CancellationToken::new();
        let abort = CancellationToken::new();
        let mut partitions: HashMap<(String, i32), PartitionTask> = HashMap::new();
        let mut holding: HashSet<(String, i32)> = HashSet::new();
        let mut consumer_errors = ConsumerErrors::new("sender stage");
        tracing::info!("sender stage started");
        loop {
            let next = tokio::select! {
                _ = shutdown.cancelled() => break,
                next = self.consumer.recv() => Some(next),
                _ = tokio::time::sleep(Duration::from_millis(5)), if !holding.is_empty() => None,
            };
            holding.retain(|key| {
                if partitions.get_mut(key).is_some_and(|task| !hand_over(task)) {
                    return true;
                }
                self.pause(key, false);
                false
            });
            let Some(next) = next else { continue };
            for key in std::mem::take(
                &mut *self
                    .consumer
                    .context()
                    .revoked
                    .lock()
                    .expect("revoked lock"),
            ) {
                if let Some(task) = partitions.remove(&key) {
                    task.handle.abort();
                }
                holding.remove(&key);
            }
            let message = match next {
                Ok(message) => message.detach(),
                Err(e) => {
                    consumer_errors.handle(&e).await;
                    continue;
                }
            };
            let key = (message.topic().to_owned(), message.partition());
            if !partitions.contains_key(&key)
                && !self
                    .consumer
                    .context()
                    .assigned
                    .lock()
                    .expect("assigned lock")
                    .contains(&key)
            {
                continue; // fetched before a revoke: the new owner sends it
            }
            let task = partitions
                .entry(key.clone())
                .or_insert_with_key(|(topic, partition)| {
                    let (queue, rx) = mpsc::channel(self.queue_len);
                    let tracker = Arc::new(Mutex::new(OffsetTracker::default()));
                    let handle = tokio::spawn(send_partition(
                        PartitionContext {
                            consumer: self.consumer.clone(),
                            sending: self.sending.clone(),
                            topic: topic.clone(),
                            partition: *partition,
                            channel: channel_of(topic),
                            max_in_flight: self.queue_len,
                            max_finished_ahead: self.max_finished_ahead,
                            permits: self.permits.clone(),
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
                            Running {
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
            task.held.push_back(message);
            if !hand_over(task) && holding.insert(key.clone()) {
                self.pause(&key, true);
            }
        }
        tracing::info!(grace = ?self.grace, "sender stage draining");
        no_new_work.cancel();
        let handles: Vec<_> = partitions.into_values().map(|t| t.handle).collect();
        let mut drain = futures::future::join_all(handles);
        if tokio::time::timeout(self.grace, &mut drain).await.is_err() {
            tracing::warn!(
                "messages in flight did not finish within the grace period; they will be sent again"
            );
            abort.cancel();
            let _ = drain.await;
        }
        close(self.consumer).await;
        Ok(())
    }
}

/// The channel whose outbound topic `topic` is (`<prefix>.<slug>`).
fn channel_of(topic: &str) -> Channel {
    let slug = topic.rsplit('.').next().unwrap_or_default();
    Channel::KNOWN
        .into_iter()
        .find(|c| c.slug() == slug)
        .unwrap_or(Channel::Unspecified)
}

/// Hands held messages to the partition's task while its queue has room;
/// true when none are left.
fn hand_over(task: &mut PartitionTask) -> bool {
    while let Some(message) = task.held.pop_front() {
        match task.queue.try_send(message) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(message)) => {
                task.held.push_front(message);
                return false;
            }
            Err(mpsc::error::TrySendError::Closed(_)) => task.held.clear(),
        }
    }
    true
}

struct PartitionContext {
    consumer: Arc<SenderConsumer>,
    sending: Arc<Sending>,
    topic: String,
    partition: i32,
    channel: Channel,
    max_in_flight: usize,
    max_finished_ahead: usize,
    permits: Arc<Semaphore>,
    tracker: Arc<Mutex<OffsetTracker>>,
}

/// Signals that a conversation's message is done, so its next may start.
type Done = Shared<oneshot::Receiver<()>>;

/// Sends one partition's messages: conversations concurrently, each in
/// order, storing the contiguous prefix of finished offsets.
async fn send_partition(
    cx: PartitionContext,
    mut queue: mpsc::Receiver<OwnedMessage>,
    no_new_work: CancellationToken,
    abort: CancellationToken,
) {
    let partition = cx.partition;
    let metrics = cx.sending.metrics.of(cx.channel);
    let Some(mut skip) = done_by_previous_owner(&cx, &abort).await else {
        return;
    };
    let mut tasks: JoinSet<(i64, String, Outcome)> = JoinSet::new();
    let mut lanes: HashMap<String, (i64, Done)> = HashMap::new();
    let tracker = cx.tracker.clone();
    let complete = |offset| tracker.lock().expect("tracker lock").complete(offset);
    let mut open = true;
    loop {
        let full = tracker.lock().expect("tracker lock").done_ahead() >= cx.max_finished_ahead;
        tokio::select! {
            biased;
            Some(joined) = tasks.join_next(), if !tasks.is_empty() => {
                let Ok((offset, key, outcome)) = joined else { continue };
                if lanes.get(&key).is_some_and(|(latest, _)| *latest == offset) {
                    lanes.remove(&key);
                }
                let Outcome::Done(label) = outcome else { continue };
                metrics.finished(label);
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
                    store(&cx, complete(offset)); // sent by the previous owner
                    continue;
                }
                let (span, trace) = trace::hop("sender.send", record_headers::text(&message, TRACEPARENT));
                let envelope = match message.payload().map(Envelope::decode) {
                    Some(Ok(envelope)) => envelope,
                    other => {
                        let error = match other {
                            Some(Err(e)) => format!("undecodable: {e}"),
                            _ => "undecodable: no payload".to_owned(),
                        };
                        let (sending, abort, topic) = (cx.sending.clone(), abort.clone(), cx.topic.clone());
                        tasks.spawn(async move {
                            let source = Source { topic: &topic, partition, offset, trace };
                            let payload = message.payload().unwrap_or_default();
                            let outcome = match sending.dead_letter("", payload, &error, "none", 0, source, &abort).await {
                                Ok(()) => Outcome::Done("poison"),
                                Err(Interrupted) => Outcome::Unfinished,
                            };
                            (offset, String::new(), outcome)
                        }.instrument(span));
                        continue;
                    }
                };
                let Ok(permit) = cx.permits.clone().acquire_owned().await else { break };
                let key = envelope.conversation_key();
                let (done_tx, done_rx) = oneshot::channel();
                let previous = lanes.insert(key.clone(), (offset, done_rx.shared())).map(|(_, d)| d);
                let (sending, abort, no_new_work, topic) =
                    (cx.sending.clone(), abort.clone(), no_new_work.clone(), cx.topic.clone());
                tasks.spawn(async move {
                    let _permit = permit;
                    if let Some(previous) = previous
                        && previous.await.is_err()
                    {
                        return (offset, key, Outcome::Unfinished);
                    }
                    if no_new_work.is_cancelled() {
                        return (offset, key, Outcome::Unfinished);
                    }
                    let source = Source { topic: &topic, partition, offset, trace };
                    let payload = message.payload().unwrap_or_default();
                    let outcome = match sending.handle(envelope, payload, source, &abort, done_tx).await {
                        Ok(label) => Outcome::Done(label),
                        Err(Interrupted) => Outcome::Unfinished,
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
        tracing::debug!(error = %e, partition = cx.partition, "sender offset not stored");
    }
}

/// The offsets the partition's previous owner finished above the committed
/// one (from the commit metadata); empty when unknown.
async fn done_by_previous_owner(
    cx: &PartitionContext,
    abort: &CancellationToken,
) -> Option<BTreeSet<i64>> {
    let (consumer, topic, partition) = (cx.consumer.clone(), cx.topic.clone(), cx.partition);
    let lookup = tokio::task::spawn_blocking(move || {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&topic, partition);
        let committed = consumer.committed_offsets(tpl, Duration::from_secs(10))?;
        let found = committed
            .find_partition(&topic, partition)
            .and_then(|e| match e.offset() {
                Offset::Offset(o) => Some(parse_skip_metadata(o, e.metadata())),
                _ => None,
            });
        drop(committed); // before the consumer can be dropped
        KafkaResult::Ok(found.unwrap_or_default())
    });
    tokio::select! {
        result = lookup => Some(match result {
            Ok(Ok(done)) => done,
            other => {
                tracing::warn!(?other, partition = cx.partition, "cannot read the sender's committed metadata; finished messages may be sent again");
                BTreeSet::new()
            }
        }),
        _ = abort.cancelled() => None,
    }
}

/// Commits stored offsets and leaves the group, giving up after a timeout.
async fn close(consumer: Arc<SenderConsumer>) {
    let (done_tx, done_rx) = oneshot::channel();
    // A plain thread: if librdkafka hangs on close, the runtime can still stop.
    std::thread::spawn(move || {
        match consumer.commit_consumer_state(CommitMode::Sync) {
            Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(e) => {
                tracing::warn!(error = %e, "sender final commit failed; the last messages will be sent again")
            }
        }
        consumer.unsubscribe();
        drop(consumer);
        let _ = done_tx.send(());
    });
    if tokio::time::timeout(Duration::from_secs(10), done_rx)
        .await
        .is_err()
    {
        tracing::warn!("closing the sender consumer timed out; leaving it behind");
    }
    tracing::info!("sender stage stopped");
}
