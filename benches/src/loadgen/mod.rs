//! The load generator: conversation workloads sent to an ingestion node
//! (or, as the limit to compare with, straight to Kafka), measured.
//!
//! - [`workload`]: what message `i` of a run is, as an envelope or a
//!   channel webhook, and the token that identifies it downstream.
//! - [`run`] (here): the engine. **Open loop** sends message `i` at
//!   `start + i / rate` whatever happened before, and measures latency from
//!   that intended time, so a slow node shows as latency instead of as a
//!   lower send rate (no coordinated omission). **Closed loop** keeps
//!   `concurrency` messages in flight (with `batch`, `concurrency` batches),
//!   for the most throughput. Either way a conversation's messages are sent
//!   one after the other (unary calls and webhooks wait for the previous
//!   message's answer; a batch waits for the batches before it that hold
//!   messages of its conversations; a stream keeps order itself), so each
//!   conversation stays in order.
//! - [`report`]: HDR histograms overall and per second, JSON and Markdown.
//! - [`plot`]: a PNG of latency percentiles and throughput over time.
//! - [`sink`]: the end-to-end sink on a destination topic: ingest →
//!   destination latency, loss and order per conversation.
//! - [`batch`]: publish prepared conversations at once (for tests).

pub mod batch;
pub mod plot;
pub mod report;
pub mod sink;
pub mod workload;

pub use batch::{Outcome, Progress, publish_stream, publish_unary};
pub use workload::{conversations, seq_of};

use std::{
    collections::HashMap,
    io::IsTerminal as _,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use futures::StreamExt as _;
use prost::Message as _;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::Serialize;
use switchboard_proto::v1::{
    Channel, Envelope, PublishBatchRequest, PublishRequest, ingest_client::IngestClient,
};
use switchboard_runtime::kafka::KafkaConfig;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel as GrpcChannel;

use self::{
    report::{LoadReport, Recorder},
    sink::{Sink, SinkFormat},
    workload::{Workload, unix_micros},
};
use crate::reconcile::ledger::{Entry, Ledger, Outcome as Sent};

/// How messages are sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Rpc {
    /// Unary `Publish`, one envelope per call.
    Unary,
    /// `PublishStream`, one stream per connection.
    Stream,
    /// `IngestWebhook` with the channels' own payloads, one message each.
    Webhook,
    /// `PublishBatch`, `--batch-size` consecutive messages per call; each
    /// message's latency is its batch's, from when the batch was due (its
    /// last message's intended time).
    Batch,
    /// librdkafka straight to a topic (the scenarios' baseline).
    #[value(skip)]
    Kafka,
}

/// A load run. Also the load generator's command line.
#[derive(Debug, Clone, Serialize, clap::Args)]
pub struct LoadOptions {
    /// How to send.
    #[arg(long, value_enum, default_value_t = Rpc::Unary)]
    pub rpc: Rpc,
    /// Open loop at this many messages per second. Without it, closed loop:
    /// `--concurrency` messages in flight.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Messages in flight in closed loop (with `--rpc batch`: batches).
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Messages per `PublishBatch` call (with `--rpc batch`); the last batch
    /// of a run may be smaller.
    #[arg(long, default_value_t = 100)]
    pub batch_size: usize,
    /// HTTP/2 connections to the node (conversation `c` uses connection
    /// `c % connections`; with `stream`, one stream per connection).
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// Conversations the messages are spread over.
    #[arg(long, default_value_t = 1_000)]
    pub conversations: u64,
    /// Tenants the conversations are spread over.
    #[arg(long, default_value_t = 1)]
    pub tenants: u64,
    /// Tenant id (with several tenants, the prefix: `<tenant>-<n>`).
    #[arg(long, default_value = "demo")]
    pub tenant: String,
    /// Channel of `unary` and `stream` messages (webhooks rotate over all).
    #[arg(long, value_enum, default_value_t = ChannelArg::Webchat)]
    pub channel: ChannelArg,
    /// Text size of each message, in bytes.
    #[arg(long, default_value_t = 200)]
    pub payload_bytes: usize,
    /// Stop after this many messages.
    #[arg(long)]
    pub messages: Option<u64>,
    /// Stop sending after this long (e.g. 30s, 2m).
    #[arg(long, value_parser = humantime::parse_duration)]
    #[serde(with = "humantime_serde")]
    pub duration: Option<Duration>,
    /// Open loop: at most this many messages in flight. A message due while
    /// the bound is reached is not sent and counts as `ClientBacklog`.
    #[arg(long, default_value_t = 50_000)]
    pub max_in_flight: usize,
    /// Sample this process's resident memory each second (e.g. the node's
    /// pid); by default, the load generator's own.
    #[arg(long)]
    pub memory_of: Option<u32>,
    /// After sending, wait this long at most for answers.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// `unary` and `webhook`: attempts after the first for a message the
    /// node did not acknowledge with a retryable code (UNAVAILABLE,
    /// RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED, ABORTED, UNKNOWN, CANCELLED:
    /// a node or Kafka away), the same message with the same channel
    /// message id, on the next node of `--target` if there are several.
    /// The conversation's next message waits for it.
    #[arg(long, default_value_t = 0)]
    pub retries: u32,
    /// First pause before a retry; it doubles each time, up to 2 s.
    #[arg(long, default_value = "100ms", value_parser = humantime::parse_duration)]
    #[serde(with = "humantime_serde")]
    pub retry_backoff: Duration,
    /// Write every sent message's index, conversation, sequence number and
    /// outcome (acked, failed, unanswered) to this file, for
    /// `switchboard-bench reconcile`.
    #[arg(long)]
    pub acked_out: Option<std::path::PathBuf>,
}

/// The channels, on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
#[allow(missing_docs)]
pub enum ChannelArg {
    Whatsapp,
    Messenger,
    Instagram,
    Sms,
    Webchat,
}

impl From<ChannelArg> for Channel {
    fn from(c: ChannelArg) -> Self {
        match c {
            ChannelArg::Whatsapp => Channel::Whatsapp,
            ChannelArg::Messenger => Channel::Messenger,
            ChannelArg::Instagram => Channel::Instagram,
            ChannelArg::Sms => Channel::Sms,
            ChannelArg::Webchat => Channel::Webchat,
        }
    }
}

impl LoadOptions {
    /// Checks the options make a finite run.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.messages.is_some() || self.duration.is_some(),
            "give --messages or --duration (or both): a run must end"
        );
        if let Some(rate) = self.rate {
            anyhow::ensure!(
                rate.is_finite() && rate > 0.0,
                "--rate must be above 0, not {rate}"
            );
        }
        anyhow::ensure!(self.concurrency > 0, "--concurrency must be at least 1");
        anyhow::ensure!(self.batch_size > 0, "--batch-size must be at least 1");
        anyhow::ensure!(self.connections > 0, "--connections must be at least 1");
        anyhow::ensure!(self.conversations > 0, "--conversations must be at least 1");
        anyhow::ensure!(self.tenants > 0, "--tenants must be at least 1");
        anyhow::ensure!(self.max_in_flight > 0, "--max-in-flight must be at least 1");
        anyhow::ensure!(
            self.retries == 0 || matches!(self.rpc, Rpc::Unary | Rpc::Webhook),
            "--retries works with --rpc unary and webhook only"
        );
        Ok(())
    }

    /// Messages the run is expected to send, if known in advance.
    fn expected(&self) -> Option<u64> {
        let by_time = self
            .rate
            .zip(self.duration)
            .map(|(rate, d)| (rate * d.as_secs_f64()) as u64);
        match (self.messages, by_time) {
            (Some(m), Some(t)) => Some(m.min(t)),
            (m, t) => m.or(t),
        }
    }
}

/// Where messages go.
#[derive(Clone)]
pub enum Target {
    /// An ingestion node, over one client per connection.
    Node(Vec<IngestClient<GrpcChannel>>),
    /// A Kafka topic, through librdkafka (the practical limit).
    Kafka {
        /// The producer, configured like the ingestion node's.
        producer: FutureProducer,
        /// The topic.
        topic: String,
    },
}

impl Target {
    /// Connects `connections` separate HTTP/2 connections to each node of
    /// `addresses` (comma-separated): node `n`'s connections come `n`-th.
    pub async fn connect(addresses: &str, connections: usize) -> anyhow::Result<Self> {
        let mut clients = Vec::new();
        for address in addresses
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
        {
            for _ in 0..connections.max(1) {
                let channel = tonic::transport::Endpoint::from_shared(address.to_owned())?
                    .connect()
                    .await
                    .map_err(|e| anyhow::anyhow!("cannot connect to {address}: {e}"))?;
                clients.push(IngestClient::new(channel));
            }
        }
        anyhow::ensure!(!clients.is_empty(), "no node address in {addresses:?}");
        Ok(Self::Node(clients))
    }
}

/// An end-to-end sink to run alongside: a destination topic to watch.
#[derive(Debug, Clone)]
pub struct SinkSpec {
    /// Kafka the topic is on.
    pub kafka: KafkaConfig,
    /// The topic (e.g. the analytics topic).
    pub topic: String,
    /// How it encodes envelopes.
    pub format: SinkFormat,
}

/// State the dispatcher and its tasks share.
struct Shared {
    recorder: Recorder,
    /// Per message index: what became of it.
    outcomes: Mutex<Vec<Sent>>,
    in_flight: AtomicUsize,
    answered: AtomicU64,
}

impl Shared {
    /// Message `index`, meant for `intended`, was answered.
    fn answer(&self, index: u64, intended: Instant, result: Result<(), tonic::Code>) {
        let now = Instant::now();
        let outcome = match result {
            Ok(()) => {
                self.recorder
                    .ok(now, now.saturating_duration_since(intended));
                Sent::Acked
            }
            Err(code) => {
                self.recorder.error(now, code_name(code), 1);
                Sent::Failed
            }
        };
        self.set_outcome(index, outcome);
        self.answered.fetch_add(1, Ordering::Relaxed);
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }

    fn set_outcome(&self, index: u64, outcome: Sent) {
        let mut outcomes = self.outcomes.lock().expect("outcomes lock");
        let i = index as usize;
        if outcomes.len() <= i {
            outcomes.resize(i + 1, Sent::NotSent);
        }
        outcomes[i] = outcome;
    }
}

/// Whether a failed call may succeed if sent again: the node, or Kafka
/// behind it, was away or busy, not a refusal of the message itself.
fn retryable(code: tonic::Code) -> bool {
    use tonic::Code as C;
    matches!(
        code,
        C::Unavailable
            | C::ResourceExhausted
            | C::DeadlineExceeded
            | C::Aborted
            | C::Unknown
            | C::Cancelled
    )
}

/// gRPC codes by value, named as in tonic (`ResourceExhausted`), so an
/// error is counted without formatting its code.
const CODE_NAMES: [&str; 17] = [
    "Ok",
    "Cancelled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
];

fn code_name(code: tonic::Code) -> &'static str {
    CODE_NAMES
        .get(i32::from(code) as usize)
        .copied()
        .unwrap_or("Unknown")
}

/// Waiting stream requests of one connection: index → (intended send
/// time, closed-loop permit).
type StreamPending = Arc<Mutex<HashMap<u64, (Instant, Option<OwnedSemaphorePermit>)>>>;

/// One `PublishStream` per connection.
struct StreamConn {
    requests: mpsc::Sender<PublishRequest>,
    pending: StreamPending,
}

impl StreamConn {
    fn open(mut client: IngestClient<GrpcChannel>, bound: usize, shared: Arc<Shared>) -> Self {
        let (requests, rx) = mpsc::channel(bound.max(1));
        let pending = StreamPending::default();
        tokio::spawn({
            let pending = pending.clone();
            async move {
                let outcome = match client
                    .publish_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
                    .await
                {
                    Ok(responses) => {
                        let mut responses = responses.into_inner();
                        loop {
                            match responses.next().await {
                                Some(Ok(response)) => {
                                    let waiting = pending
                                        .lock()
                                        .expect("pending lock")
                                        .remove(&response.sequence);
                                    if let Some((intended, _permit)) = waiting {
                                        let result = match &response.error {
                                            None => Ok(()),
                                            Some(e) => Err(tonic::Code::from_i32(e.code)),
                                        };
                                        shared.answer(response.sequence, intended, result);
                                    }
                                }
                                Some(Err(status)) => break status.code(),
                                None => break tonic::Code::Unknown,
                            }
                        }
                    }
                    Err(status) => status.code(),
                };
                // Whatever is still waiting will not be answered.
                for (index, (intended, _)) in pending.lock().expect("pending lock").drain() {
                    shared.answer(index, intended, Err(outcome));
                }
            }
        });
        Self { requests, pending }
    }
}

/// A `PublishBatch` being filled with consecutive messages.
#[derive(Default)]
struct Filling {
    envelopes: Vec<Envelope>,
    /// Each message's index and closed-loop permit, in batch order.
    members: Vec<(u64, Option<OwnedSemaphorePermit>)>,
    /// When the batch is due: its last message's intended time.
    due: Option<Instant>,
    /// The conversations in the batch.
    conversations: std::collections::HashSet<u64>,
    /// Earlier batches (or calls) this one waits for: one per conversation.
    after: Vec<oneshot::Receiver<()>>,
    /// Fired when this batch is answered, for the next of each conversation.
    done: Vec<oneshot::Sender<()>>,
}

impl Filling {
    /// Adds message `index` of `conversation`, chaining the batch after the
    /// conversation's previous call.
    fn add(
        &mut self,
        index: u64,
        conversation: u64,
        envelope: Envelope,
        due: Instant,
        permit: Option<OwnedSemaphorePermit>,
        chains: &mut [Option<oneshot::Receiver<()>>],
    ) {
        if self.conversations.insert(conversation) {
            let chain = &mut chains[conversation as usize];
            self.after.extend(chain.take());
            let (done, next) = oneshot::channel();
            *chain = Some(next);
            self.done.push(done);
        }
        self.envelopes.push(envelope);
        self.members.push((index, permit));
        self.due = Some(due);
    }

    /// Sends the batch once the calls it waits for are answered, and
    /// answers each of its messages.
    fn send(self, mut client: IngestClient<GrpcChannel>, shared: Arc<Shared>) {
        let Self {
            envelopes,
            members,
            due,
            after,
            done,
            ..
        } = self;
        let due = due.unwrap_or_else(Instant::now);
        tokio::spawn(async move {
            for previous in after {
                let _ = previous.await;
            }
            match client
                .publish_batch(PublishBatchRequest { envelopes })
                .await
            {
                Ok(response) => {
                    let results = response.into_inner().results;
                    for (i, (index, _)) in members.iter().enumerate() {
                        let result = match results.get(i) {
                            Some(r) => r
                                .error
                                .as_ref()
                                .map_or(Ok(()), |e| Err(tonic::Code::from_i32(e.code))),
                            // The node owes one result per envelope.
                            None => Err(tonic::Code::Internal),
                        };
                        shared.answer(*index, due, result);
                    }
                }
                Err(status) => {
                    for (index, _) in &members {
                        shared.answer(*index, due, Err(status.code()));
                    }
                }
            }
            drop((done, members));
        });
    }
}

/// Sends the run and measures it; with `sink`, also end to end.
pub async fn run(
    target: Target,
    options: LoadOptions,
    sink: Option<SinkSpec>,
) -> anyhow::Result<LoadReport<LoadOptions>> {
    options.validate()?;
    let run_id = uuid::Uuid::now_v7().simple().to_string()[20..].to_owned();
    let workload = Arc::new(Workload {
        run: run_id.clone(),
        conversations: options.conversations,
        tenants: options.tenants,
        tenant: options.tenant.clone(),
        channel: options.channel.into(),
        body: Workload::body_of(options.payload_bytes),
    });
    let started = Instant::now();
    let sink = match &sink {
        Some(spec) => Some(
            Sink::start(
                &spec.kafka,
                &spec.topic,
                spec.format,
                &run_id,
                options.conversations,
                started,
            )
            .await?,
        ),
        None => None,
    };
    // The sink's set-up took a moment: start the clock again.
    let started = Instant::now();
    let started_wall = SystemTime::now();
    let shared = Arc::new(Shared {
        recorder: Recorder::new(started),
        outcomes: Mutex::new(Vec::new()),
        in_flight: AtomicUsize::new(0),
        answered: AtomicU64::new(0),
    });
    let stop_progress = CancellationToken::new();
    let progress = tokio::spawn(show_progress(
        shared.clone(),
        options.expected(),
        options.memory_of,
        stop_progress.clone(),
    ));

    let streams: Vec<StreamConn> = match (&target, options.rpc) {
        (Target::Node(clients), Rpc::Stream) => clients
            .iter()
            .map(|c| StreamConn::open(c.clone(), options.max_in_flight, shared.clone()))
            .collect(),
        _ => Vec::new(),
    };
    // Closed loop: `concurrency` messages, or batches, in flight.
    let per_call = if options.rpc == Rpc::Batch {
        options.batch_size
    } else {
        1
    };
    let closed_loop = Arc::new(Semaphore::new(
        options
            .concurrency
            .saturating_mul(per_call)
            .min(Semaphore::MAX_PERMITS),
    ));
    let mut filling: Option<Filling> = None;
    let mut batches = 0_usize;
    let mut chains: Vec<Option<oneshot::Receiver<()>>> =
        (0..options.conversations).map(|_| None).collect();
    let deadline = options.duration.map(|d| started + d);
    let mut sent = 0_u64;
    for index in 0.. {
        if options.messages.is_some_and(|m| index >= m) {
            break;
        }
        let (intended, permit) = match options.rate {
            Some(rate) => {
                let at = started + Duration::from_secs_f64(index as f64 / rate);
                if deadline.is_some_and(|d| at >= d) {
                    break;
                }
                if at > Instant::now() {
                    tokio::time::sleep_until(at.into()).await;
                }
                (at, None)
            }
            None => {
                let permit = closed_loop.clone().acquire_owned().await?;
                let now = Instant::now();
                if deadline.is_some_and(|d| now >= d) {
                    break;
                }
                (now, Some(permit))
            }
        };
        tokio::task::consume_budget().await;
        sent += 1;
        if shared.in_flight.load(Ordering::Relaxed) >= options.max_in_flight {
            shared.recorder.error(Instant::now(), "ClientBacklog", 1);
            continue;
        }
        shared.in_flight.fetch_add(1, Ordering::Relaxed);
        shared.set_outcome(index, Sent::Unanswered);
        let sent_at = started_wall + intended.saturating_duration_since(started);
        let conversation = workload.conversation(index);
        match &target {
            Target::Node(clients) => {
                let connection = conversation as usize % clients.len();
                if let Some(stream) = streams.get(connection) {
                    stream
                        .pending
                        .lock()
                        .expect("pending lock")
                        .insert(index, (intended, permit));
                    if stream
                        .requests
                        .try_send(workload.publish(index, sent_at))
                        .is_err()
                    {
                        let waiting = stream.pending.lock().expect("pending lock").remove(&index);
                        if waiting.is_some() {
                            shared.answer(index, intended, Err(tonic::Code::ResourceExhausted));
                        }
                    }
                    continue;
                }
                if options.rpc == Rpc::Batch {
                    let batch = filling.get_or_insert_with(Filling::default);
                    batch.add(
                        index,
                        conversation,
                        workload.envelope(index, sent_at),
                        intended,
                        permit,
                        &mut chains,
                    );
                    if batch.envelopes.len() >= options.batch_size {
                        let client = clients[batches % clients.len()].clone();
                        batches += 1;
                        filling
                            .take()
                            .expect("just filled")
                            .send(client, shared.clone());
                    }
                    continue;
                }
                // Unary and webhook: after the conversation's previous message.
                let previous = chains[conversation as usize].take();
                let (done, next) = oneshot::channel::<()>();
                chains[conversation as usize] = Some(next);
                let clients = clients.clone();
                let shared = shared.clone();
                let (rpc, retries, mut backoff) =
                    (options.rpc, options.retries, options.retry_backoff);
                // A retry goes to the next node: its connections come after
                // this node's.
                let step = options.connections.max(1);
                let workload = workload.clone();
                tokio::spawn(async move {
                    if let Some(previous) = previous {
                        let _ = previous.await;
                    }
                    let mut attempt = 0;
                    let result = loop {
                        let mut client =
                            clients[(connection + attempt as usize * step) % clients.len()].clone();
                        let result = if rpc == Rpc::Webhook {
                            client
                                .ingest_webhook(workload.webhook(index, sent_at))
                                .await
                                .map(drop)
                        } else {
                            client
                                .publish(workload.publish(index, sent_at))
                                .await
                                .map(drop)
                        };
                        match result {
                            Err(status) if attempt < retries && retryable(status.code()) => {
                                attempt += 1;
                                shared.recorder.retry(code_name(status.code()));
                                tokio::time::sleep(backoff).await;
                                backoff = (backoff * 2).min(Duration::from_secs(2));
                            }
                            result => break result.map_err(|s| s.code()),
                        }
                    };
                    shared.answer(index, intended, result);
                    drop((done, permit));
                });
            }
            Target::Kafka { producer, topic } => {
                // Enqueued here, in order; only the ack is awaited apart.
                let envelope = workload.envelope(index, sent_at);
                let key = envelope.conversation_key();
                let payload = envelope.encode_to_vec();
                match producer.send_result(FutureRecord::to(topic).key(&key).payload(&payload)) {
                    Ok(delivery) => {
                        let shared = shared.clone();
                        tokio::spawn(async move {
                            let result = match delivery.await {
                                Ok(Ok(_)) => Ok(()),
                                _ => Err(tonic::Code::Unavailable),
                            };
                            shared.answer(index, intended, result);
                            drop(permit);
                        });
                    }
                    Err(_) => shared.answer(index, intended, Err(tonic::Code::ResourceExhausted)),
                }
            }
        }
    }
    // The last batch may not be full.
    if let (Some(batch), Target::Node(clients)) = (filling.take(), &target) {
        batch.send(clients[batches % clients.len()].clone(), shared.clone());
    }
    let sending = started.elapsed();
    drop(streams);
    drop(chains);

    // Drain: wait for the answers still due.
    let drain_until = Instant::now() + options.drain_timeout;
    while shared.in_flight.load(Ordering::Relaxed) > 0 && Instant::now() < drain_until {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let unanswered = shared.in_flight.load(Ordering::Relaxed) as u64;
    if unanswered > 0 {
        shared
            .recorder
            .error(Instant::now(), "NoResponse", unanswered);
    }
    let elapsed = started.elapsed();
    stop_progress.cancel();
    let _ = progress.await;
    let outcomes = shared.outcomes.lock().expect("outcomes lock").clone();
    if let Some(path) = &options.acked_out {
        Ledger {
            run: run_id.clone(),
            started_unix_ms: unix_micros(started_wall) / 1_000,
            entries: outcomes
                .iter()
                .enumerate()
                .filter(|(_, o)| **o != Sent::NotSent)
                .map(|(index, outcome)| {
                    let index = index as u64;
                    Entry {
                        index,
                        conversation: workload.envelope(index, started_wall).conversation_key(),
                        seq: workload.seq(index),
                        outcome: *outcome,
                    }
                })
                .collect(),
        }
        .write(path)?;
    }
    let acked_set: Vec<bool> = outcomes.iter().map(|o| *o == Sent::Acked).collect();
    let end_to_end = match sink {
        Some(sink) => Some(sink.finish(&acked_set, Duration::from_secs(15)).await?),
        None => None,
    };
    let (acked, errors, latency_ms, timeline) = shared.recorder.summary();
    let max_rss_mib = timeline.iter().filter_map(|s| s.rss_mib).reduce(f64::max);
    Ok(LoadReport {
        run: run_id,
        retries: shared.recorder.retries(),
        sent,
        acked,
        errors,
        elapsed_seconds: elapsed.as_secs_f64(),
        offered_rate: sent as f64 / sending.as_secs_f64().max(1e-9),
        acked_rate: acked as f64 / elapsed.as_secs_f64().max(1e-9),
        latency_ms,
        end_to_end,
        timeline,
        max_rss_mib,
        options,
    })
}

/// A progress bar with rate and errors on a terminal; a line every five
/// seconds otherwise. Samples the memory of `memory_of` (or of this
/// process) every second.
async fn show_progress(
    shared: Arc<Shared>,
    expected: Option<u64>,
    memory_of: Option<u32>,
    stop: CancellationToken,
) {
    let terminal = std::io::stderr().is_terminal();
    let bar = match expected {
        Some(n) if terminal => indicatif::ProgressBar::new(n),
        _ if terminal => indicatif::ProgressBar::new_spinner(),
        _ => indicatif::ProgressBar::hidden(),
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{elapsed_precise} [{bar:30}] {pos}/{len} answered, {msg}",
        )
        .expect("a valid template")
        .progress_chars("=> "),
    );
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut last = (0_u64, Instant::now());
    for n in 1_u64.. {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => break,
        }
        let answered = shared.answered.load(Ordering::Relaxed);
        let ok = shared.recorder.ok_count();
        if n % 4 == 0 {
            shared.recorder.sample_memory(memory_of);
            let rate = (answered - last.0) as f64 / last.1.elapsed().as_secs_f64();
            last = (answered, Instant::now());
            bar.set_message(format!(
                "{rate:.0} msg/s, {} errors, {} in flight",
                answered - ok.min(answered),
                shared.in_flight.load(Ordering::Relaxed)
            ));
        }
        bar.set_position(answered);
        if !terminal && n % 20 == 0 {
            eprintln!(
                "[{:>5.0}s] {answered} answered, {ok} acked, {} in flight",
                started.elapsed().as_secs_f64(),
                shared.in_flight.load(Ordering::Relaxed)
            );
        }
    }
    shared.recorder.sample_memory(memory_of);
    bar.finish_and_clear();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_names_match_tonic() {
        for value in 0..17 {
            let code = tonic::Code::from_i32(value);
            assert_eq!(code_name(code), format!("{code:?}"));
        }
    }
}
