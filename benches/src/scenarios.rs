//! Benchmark scenarios on a real Kafka, each comparing Switchboard with its
//! practical limit within one run (these machines are noisy: only ratios
//! measured side by side mean something).
//!
//! - [`ingest`]: the raw rdkafka producer (same payloads, keys, acks and
//!   idempotence) against `PublishStream`, `PublishBatch` and unary
//!   `Publish` through an ingestion node in a process of its own, at
//!   saturation and at a steady rate, with CPU time per message.
//! - [`routing`]: the raw rdkafka consumer and the raw pipe (consume,
//!   produce one record per message, store after delivery) against a worker
//!   (its own process) routing every message to analytics, with CPU time
//!   per message.
//! - [`slow_destination`]: a 20 ms bot behind key-level concurrent routing
//!   against a partition-serial consumer (one message at a time per
//!   partition), with order violations counted.
//! - [`latency`]: end-to-end latency (publish → analytics record) at fixed
//!   open-loop rates, against Kafka's own produce → consume latency at the
//!   same rates.
//! - [`overload`]: twice the sustainable rate on an ingestion node: memory,
//!   refusals by status code, and recovery afterwards.
//!
//! Every scenario uses topics of its own and deletes nothing: run it on a
//! scratch Kafka (`deploy/kafka/start.sh`).

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
    time::{Duration, Instant},
};

use prost::Message as _;
use rdkafka::{
    Message as _,
    consumer::{Consumer, StreamConsumer},
};
use serde::Serialize;
use switchboard_broker::config::BrokerConfig;
use switchboard_proto::v1::{Channel, Envelope};
use switchboard_runtime::kafka::KafkaConfig;
use switchboard_testkit::RecordingBot;

use crate::{
    faults::processes::{Node, Proc, RawPipe, Worker, binaries},
    loadgen::{
        self, ChannelArg, LoadOptions, Rpc, SinkSpec, Target, report::LoadReport, sink::SinkFormat,
    },
    pipeline::{Pipeline, PipelineConfig},
    raw_pipe,
};

/// One measured variant of a scenario.
#[derive(Debug, Clone, Serialize)]
pub struct Variant {
    /// What ran.
    pub name: String,
    /// Messages handled.
    pub messages: usize,
    /// Wall-clock seconds.
    pub seconds: f64,
    /// Messages per second.
    pub rate_per_second: f64,
    /// This rate over the scenario's baseline (its first variant).
    pub ratio_to_baseline: f64,
    /// Anything else the variant measured (latency percentiles, violations).
    pub details: BTreeMap<String, f64>,
}

/// A scenario's result.
#[derive(Debug, Clone, Serialize)]
pub struct ScenarioReport {
    /// Scenario name.
    pub scenario: String,
    /// Parameters, for the record.
    pub parameters: HashMap<String, String>,
    /// The baseline first.
    pub variants: Vec<Variant>,
    /// The load generator's full reports (with per-second timelines), by
    /// variant name.
    pub runs: BTreeMap<String, LoadReport<LoadOptions>>,
}

impl ScenarioReport {
    fn new(scenario: &str, parameters: &[(&str, String)]) -> Self {
        Self {
            scenario: scenario.to_owned(),
            parameters: parameters
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect(),
            variants: Vec::new(),
            runs: BTreeMap::new(),
        }
    }

    /// Adds a load-generator run as a variant: its acknowledged messages
    /// and time, its latency and errors, and end-to-end figures if a sink
    /// watched. `extra` adds details of the scenario's own.
    fn push_run(&mut self, name: &str, run: LoadReport<LoadOptions>, extra: &[(&str, f64)]) {
        let mut details = vec![
            ("p50_ms", run.latency_ms.p50),
            ("p99_ms", run.latency_ms.p99),
            ("p99.9_ms", run.latency_ms.p99_9),
            ("errors", run.errors.values().sum::<u64>() as f64),
        ];
        if let Some(e2e) = &run.end_to_end {
            details.extend([
                ("e2e_p50_ms", e2e.latency_ms.p50),
                ("e2e_p99_ms", e2e.latency_ms.p99),
                ("e2e_p99.9_ms", e2e.latency_ms.p99_9),
                ("lost", e2e.lost as f64),
                ("order_violations", e2e.order_violations as f64),
            ]);
        }
        if let Some(rss) = run.max_rss_mib {
            details.push(("max_rss_mib", rss));
        }
        details.extend_from_slice(extra);
        self.push(
            name,
            run.acked as usize,
            Duration::from_secs_f64(run.elapsed_seconds),
            &details,
        );
        self.runs.insert(name.to_owned(), run);
    }

    /// Writes a PNG of every run into `dir`, named after the scenario and
    /// the variant.
    pub fn plot(&self, dir: &std::path::Path) -> anyhow::Result<Vec<std::path::PathBuf>> {
        std::fs::create_dir_all(dir)?;
        let slug = |s: &str| {
            s.chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() {
                        c.to_ascii_lowercase()
                    } else {
                        '-'
                    }
                })
                .collect::<String>()
                .split('-')
                .filter(|p| !p.is_empty())
                .collect::<Vec<_>>()
                .join("-")
        };
        let mut written = Vec::new();
        for (name, run) in &self.runs {
            let path = dir.join(format!("{}--{}.png", slug(&self.scenario), slug(name)));
            crate::loadgen::plot::write_png(
                run,
                &format!("{}: {name}", self.scenario),
                &path,
                (1000, 900),
            )?;
            written.push(path);
        }
        Ok(written)
    }

    fn push(&mut self, name: &str, messages: usize, elapsed: Duration, details: &[(&str, f64)]) {
        let seconds = elapsed.as_secs_f64().max(1e-9);
        let rate = messages as f64 / seconds;
        let baseline = self.variants.first().map_or(rate, |b| b.rate_per_second);
        tracing::info!(scenario = %self.scenario, variant = name, rate = format!("{rate:.0}/s"), "measured");
        self.variants.push(Variant {
            name: name.to_owned(),
            messages,
            seconds,
            rate_per_second: rate,
            ratio_to_baseline: rate / baseline,
            details: details.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect(),
        });
    }

    /// A Markdown table of the variants.
    pub fn markdown(&self) -> String {
        let keys: std::collections::BTreeSet<&String> = self
            .variants
            .iter()
            .flat_map(|v| v.details.keys())
            .collect();
        let mut out = format!(
            "### {}\n\n| variant | messages | seconds | msg/s | × baseline |{}\n|---|---:|---:|---:|---:|{}\n",
            self.scenario,
            keys.iter().map(|k| format!(" {k} |")).collect::<String>(),
            "---:|".repeat(keys.len()),
        );
        for v in &self.variants {
            out.push_str(&format!(
                "| {} | {} | {:.2} | {:.0} | {:.2} |",
                v.name, v.messages, v.seconds, v.rate_per_second, v.ratio_to_baseline
            ));
            for k in &keys {
                match v.details.get(*k) {
                    Some(x) if x.fract() == 0.0 => out.push_str(&format!(" {x} |")),
                    Some(x) => out.push_str(&format!(" {x:.2} |")),
                    None => out.push_str(" |"),
                }
            }
            out.push('\n');
        }
        out
    }
}

/// `conversations` × `per_conversation` text envelopes, interleaved
/// (message 0 of every conversation, then message 1, ...).
pub(crate) fn workload(
    conversations: usize,
    per_conversation: usize,
    body_bytes: usize,
) -> Vec<Envelope> {
    let body = "x".repeat(body_bytes);
    let by_conversation = loadgen::conversations(
        "bench",
        Channel::Webchat,
        0..conversations,
        per_conversation,
        |_, _| body.clone(),
    );
    (0..per_conversation)
        .flat_map(|seq| by_conversation.iter().map(move |c| c[seq].clone()))
        .collect()
}

async fn wait_until(
    what: &str,
    timeout: Duration,
    mut done: impl FnMut() -> bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while !done() {
        anyhow::ensure!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Load options for a scenario run: `conversations` conversations of
/// `payload_bytes`-byte texts, one tenant, web chat; the caller sets the
/// pace and the length.
pub(crate) fn load(rpc: Rpc, conversations: u64, payload_bytes: usize) -> LoadOptions {
    LoadOptions {
        rpc,
        rate: None,
        concurrency: 64,
        batch_size: 100,
        connections: 4,
        conversations,
        tenants: 1,
        tenant: "bench".into(),
        channel: ChannelArg::Webchat,
        payload_bytes,
        messages: None,
        duration: None,
        max_in_flight: 50_000,
        memory_of: None,
        drain_timeout: Duration::from_secs(60),
        retries: 0,
        retry_backoff: Duration::from_millis(100),
        acked_out: None,
    }
}

/// The raw producer, configured like the ingestion node's (acks, idempotence,
/// compression, partitioner and linger), on a fresh topic, warmed up: a new
/// topic's leaders and the producer's connection and metadata take a moment,
/// which an open-loop run would otherwise count as its first second's
/// latency (the node's topic is warmed up the same way).
async fn raw_target(kafka: &KafkaConfig, name: &str) -> anyhow::Result<Target> {
    let topic = format!("bench.{name}.{}", uuid::Uuid::now_v7().simple());
    kafka.ensure_topics(&[&topic]).await?;
    let linger = BrokerConfig::default().linger.as_millis().to_string();
    let producer: rdkafka::producer::FutureProducer =
        kafka.producer_config(&[("linger.ms", &linger)]).create()?;
    let warm_up = (0..WARM_UP_MESSAGES)
        .map(|i| {
            let key = format!("warm-up-{i}");
            producer
                .send_result(
                    rdkafka::producer::FutureRecord::to(&topic)
                        .key(&key)
                        .payload("warm-up"),
                )
                .map_err(|(e, _)| anyhow::anyhow!("warm-up send: {e}"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    for delivery in warm_up {
        delivery
            .await?
            .map_err(|(e, _)| anyhow::anyhow!("warm-up delivery: {e}"))?;
    }
    Ok(Target::Kafka { producer, topic })
}

/// Records sent before a measured run to a fresh topic or node (keys
/// spread over every partition), not counted.
const WARM_UP_MESSAGES: u64 = 2_000;

/// CPU used by the processes a scenario watches.
#[derive(Clone, Copy)]
struct CpuMark {
    generator: Duration,
    node: Option<Duration>,
    kafka: Option<Duration>,
}

/// Microseconds of CPU per message of each watched process.
struct CpuPerMessage {
    generator: f64,
    node: Option<f64>,
    kafka: Option<f64>,
}

impl CpuMark {
    fn now(node: Option<u32>, kafka: Option<u32>) -> Self {
        Self {
            generator: process_cpu(),
            node: cpu_of_pid(node),
            kafka: cpu_of_pid(kafka),
        }
    }

    /// Microseconds per message since `self`, for the generator, the node
    /// and Kafka.
    fn per_message(self, node: Option<u32>, kafka: Option<u32>, messages: u64) -> CpuPerMessage {
        let per = |d: Duration| d.as_secs_f64() * 1e6 / messages.max(1) as f64;
        let since = |before: Option<Duration>, after: Option<Duration>| {
            before
                .zip(after)
                .map(|(before, after)| per(after.saturating_sub(before)))
        };
        let now = Self::now(node, kafka);
        CpuPerMessage {
            generator: per(now.generator.saturating_sub(self.generator)),
            node: since(self.node, now.node),
            kafka: since(self.kafka, now.kafka),
        }
    }
}

/// One way of publishing in the ingest scenario.
#[derive(Clone, Copy)]
struct IngestVariant {
    name: &'static str,
    rpc: Rpc,
    /// Closed loop: messages (batches with `PublishBatch`) in flight.
    concurrency: usize,
}

const INGEST_VARIANTS: [IngestVariant; 4] = [
    IngestVariant {
        name: "raw rdkafka producer",
        rpc: Rpc::Kafka,
        concurrency: 10_000,
    },
    IngestVariant {
        name: "PublishStream, 4 streams",
        rpc: Rpc::Stream,
        concurrency: 10_000,
    },
    IngestVariant {
        name: "PublishBatch, 100 per batch",
        rpc: Rpc::Batch,
        concurrency: 64,
    },
    IngestVariant {
        name: "unary Publish",
        rpc: Rpc::Unary,
        concurrency: 64,
    },
];

/// Ingest: an ingestion node (`broker`, its own process, so that its CPU is
/// read apart from the generator's in `/proc`) against the raw producer,
/// every variant measured twice: at saturation (closed loop, `messages`
/// each) and at a steady `steady_rate` (open loop, `steady_duration` each).
/// Each variant reports CPU per message: the node's process for
/// Switchboard, the generator's process for the raw producer (which is the
/// producer's program); and its ratios to the raw producer measured in the
/// same run and mode.
pub async fn ingest(
    kafka: &KafkaConfig,
    broker: &std::path::Path,
    messages: u64,
    body_bytes: usize,
    steady_rate: f64,
    steady_duration: Duration,
    kafka_pid: Option<u32>,
) -> anyhow::Result<ScenarioReport> {
    let conversations = (messages / 10).max(1);
    let node_max_in_flight = 50_000;
    let mut report = ScenarioReport::new(
        "ingest vs the raw producer",
        &[
            ("messages", messages.to_string()),
            ("conversations", conversations.to_string()),
            ("body_bytes", body_bytes.to_string()),
            ("partitions", kafka.topic_partitions.to_string()),
            ("steady_rate", steady_rate.to_string()),
            ("steady_duration", format!("{steady_duration:?}")),
            ("node", "switchboard-broker, its own process".into()),
            ("node_max_in_flight", node_max_in_flight.to_string()),
            (
                "cpu",
                "user + system time from /proc/<pid>/stat over the variant, per acknowledged message"
                    .into(),
            ),
            (
                "kafka_pid",
                kafka_pid.map_or("not given: Kafka's CPU is not read".into(), |p| {
                    p.to_string()
                }),
            ),
        ],
    );
    let topic = format!("bench.ingest.{}", uuid::Uuid::now_v7().simple());
    kafka.ensure_topics(&[&topic]).await?;
    let logs = tempfile::tempdir()?;
    let node = Node::spawn(
        broker,
        "node",
        logs.path(),
        &kafka.bootstrap_servers,
        &topic,
        &[("MAX_IN_FLIGHT", node_max_in_flight.to_string())],
    )
    .await;
    let node = match node {
        Ok(node) => node,
        Err(e) => return finish(Err(e), Ok(()), logs),
    };
    let measured = async {
        let pid = node.proc.pid().ok();
        // The node's producer meets its topic's leaders before anything counts.
        loadgen::run(
            Target::connect(&node.address, 4).await?,
            LoadOptions {
                messages: Some(WARM_UP_MESSAGES),
                ..load(Rpc::Unary, conversations, body_bytes)
            },
            None,
        )
        .await?;

        // (raw closed-loop rate, raw CPU/msg) per mode; (node CPU/msg) at saturation per RPC.
        let mut raw: [(f64, f64); 2] = [(0.0, 0.0); 2];
        let mut raw_p99 = 0.0;
        let mut saturated_cpu: HashMap<&str, f64> = HashMap::new();
        for (mode, steady) in [(0, false), (1, true)] {
            for variant in INGEST_VARIANTS {
                let options = LoadOptions {
                    concurrency: variant.concurrency,
                    ..if steady {
                        LoadOptions {
                            rate: Some(steady_rate),
                            duration: Some(steady_duration),
                            ..load(variant.rpc, conversations, body_bytes)
                        }
                    } else {
                        LoadOptions {
                            messages: Some(messages),
                            ..load(variant.rpc, conversations, body_bytes)
                        }
                    }
                };
                let (target, watched) = if variant.rpc == Rpc::Kafka {
                    (raw_target(kafka, "ingest-raw").await?, None)
                } else {
                    (Target::connect(&node.address, 4).await?, pid)
                };
                let mark = CpuMark::now(watched, kafka_pid);
                // Errors (a saturated host) are reported with the run, not fatal.
                let run = loadgen::run(target, options, None).await?;
                let CpuPerMessage {
                    generator: generator_cpu,
                    node: node_cpu,
                    kafka: kafka_cpu,
                } = mark.per_message(watched, kafka_pid, run.acked);
                let mut extra = vec![("generator_cpu_us_per_msg", generator_cpu)];
                if let Some(kafka_cpu) = kafka_cpu {
                    // What one message costs the machine, every process included:
                    // on a saturated host, the closed-loop rate follows it.
                    let total = generator_cpu + node_cpu.unwrap_or(0.0) + kafka_cpu;
                    extra.push(("kafka_cpu_us_per_msg", kafka_cpu));
                    extra.push(("total_cpu_us_per_msg", total));
                }
                match node_cpu {
                    None => {
                        raw[mode] = (run.acked_rate, generator_cpu);
                        raw_p99 = run.latency_ms.p99;
                        extra.push(("cpu_us_per_msg", generator_cpu));
                    }
                    Some(node_cpu) => {
                        extra.push(("cpu_us_per_msg", node_cpu));
                        extra.push(("cpu_x_raw", node_cpu / raw[mode].1.max(1e-9)));
                        if steady {
                            extra.push(("p99_x_raw", run.latency_ms.p99 / raw_p99.max(1e-3)));
                            if let Some(saturated) = saturated_cpu.get(variant.name) {
                                extra.push(("cpu_x_saturation", node_cpu / saturated.max(1e-9)));
                            }
                        } else {
                            extra.push(("rate_x_raw", run.acked_rate / raw[mode].0.max(1e-9)));
                            saturated_cpu.insert(variant.name, node_cpu);
                        }
                    }
                }
                let name = if steady {
                    format!("{}, open loop at {steady_rate}/s", variant.name)
                } else if variant.rpc == Rpc::Batch {
                    format!(
                        "{}, {} batches in flight",
                        variant.name, variant.concurrency
                    )
                } else {
                    format!("{}, {} in flight", variant.name, variant.concurrency)
                };
                report.push_run(&name, run, &extra);
            }
        }
        Ok(())
    }
    .await;
    finish(measured, node.stop().await, logs)?;
    Ok(report)
}

/// CPU time (user and system) this process has used, from `/proc/self/stat`.
pub fn process_cpu() -> Duration {
    cpu_of("self")
}

/// CPU time (user and system) process `pid` (or `self`) has used so far,
/// from `/proc/<pid>/stat`; zero once it is gone.
pub fn cpu_of(pid: &str) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces): the state is
    // the 3rd field, utime the 14th and stime the 15th.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}

/// CPU time process `pid` has used so far, if a process is given.
pub(crate) fn cpu_of_pid(pid: Option<u32>) -> Option<Duration> {
    pid.map(|pid| cpu_of(&pid.to_string()))
}

/// Microseconds of this process's CPU per message since `since`.
fn cpu_per_message(since: Duration, messages: usize) -> f64 {
    process_cpu().saturating_sub(since).as_secs_f64() * 1e6 / messages.max(1) as f64
}

/// Records in `topic` (all partitions), with one client kept for the whole
/// wait so that polling costs little of the CPU being measured.
pub(crate) struct TopicCounter {
    consumer: rdkafka::consumer::BaseConsumer,
    topic: String,
    partitions: i32,
}

impl TopicCounter {
    pub(crate) fn new(kafka: &KafkaConfig, topic: &str) -> anyhow::Result<Self> {
        Ok(Self {
            consumer: kafka.client_config(&[]).create()?,
            topic: topic.to_owned(),
            partitions: kafka.topic_partitions,
        })
    }

    pub(crate) fn count(&self) -> i64 {
        (0..self.partitions)
            .map(|p| {
                self.consumer
                    .fetch_watermarks(&self.topic, p, Duration::from_secs(5))
                    .map_or(0, |(low, high)| high - low)
            })
            .sum()
    }
}

/// `envelopes` as the ingestion node writes channel messages: each with a
/// channel message id, a send time and the node's `message_id` and
/// `received_at` (`switchboard_broker::validate::normalize`). So every
/// message changes its conversation's state, as real traffic does: the
/// customer's last message time and the ids remembered for dedupe. (Until
/// 2026-12-01 the routing workload had neither, and only a conversation's
/// first messages changed its state.)
fn as_ingested(envelopes: Vec<Envelope>) -> anyhow::Result<Vec<Envelope>> {
    let now = std::time::SystemTime::now();
    // Send times an hour ago, a microsecond apart in preload order, so each
    // conversation's messages are newer than its last one.
    let first = now - Duration::from_secs(3600);
    envelopes
        .into_iter()
        .enumerate()
        .map(|(i, mut envelope)| {
            envelope.channel_message_id = format!("wamid.bench-{i}");
            envelope.sent_at = Some(switchboard_proto::timestamp(
                first + Duration::from_micros(i as u64),
            ));
            switchboard_broker::validate::normalize("envelope", envelope, now, Duration::ZERO)
                .map_err(|e| anyhow::anyhow!("bench envelope {i} refused: {e}"))
        })
        .collect()
}

/// A routing worker as a process of its own (`switchboard-workers` beside
/// this binary, its config file and log in `dir`), routing everything to
/// analytics: no bots, no rules file, and the queue stage, which this job
/// never feeds, off.
fn analytics_worker(
    mut config: switchboard_workers::config::WorkersConfig,
    dir: &std::path::Path,
) -> anyhow::Result<Proc> {
    config.bots.clear();
    config.rules_file = None;
    config.agents.enabled = false;
    let config_file = dir.join("worker.toml");
    std::fs::write(&config_file, toml::to_string(&config)?)?;
    Worker::spawn(&binaries(None), "worker", dir, &config_file)
}

/// Routing: the raw consumer and the raw pipe reading the preloaded topic,
/// then a worker routing the same records to analytics. Each reports its
/// rate and its CPU time per message (from `/proc`: this process's for the
/// raw clients, the worker process's for the worker); the worker's ratios
/// are taken against the raw pipe.
///
/// With `warmup`, each variant handles that many messages before its
/// measured window of `messages`, so the window shows a process past its
/// start-up, as a long-running worker is; the worker's figure over every
/// message, start-up included, is reported as `cold_cpu_us_per_message`.
/// (On 2026-12-01, with a warm-up of 100k, the worker's warm figure was
/// 5–12% below its cold one.)
pub async fn routing(
    kafka: &KafkaConfig,
    messages: usize,
    warmup: usize,
    state_flush_interval: Option<Duration>,
    kafka_pid: Option<u32>,
) -> anyhow::Result<ScenarioReport> {
    let total = warmup + messages;
    let conversations = (total / 10).max(1);
    let mut envelopes = workload(conversations, total.div_ceil(conversations), 200);
    envelopes.truncate(total);
    let envelopes = as_ingested(envelopes)?;
    let mut report = ScenarioReport::new(
        "routing vs the raw consumer and the raw pipe",
        &[
            ("messages", messages.to_string()),
            ("warmup", warmup.to_string()),
            ("conversations", conversations.to_string()),
            ("partitions", kafka.topic_partitions.to_string()),
            ("destination", "analytics (a Kafka topic)".into()),
            (
                "workload",
                "as ingested: every message changes its conversation's state".into(),
            ),
        ],
    );
    let config = PipelineConfig::isolated(kafka.clone(), "bench.routing");
    let mut workers_config = config.workers_config(std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
    if let Some(interval) = state_flush_interval {
        workers_config.state_flush_interval = interval;
    }
    report.parameters.insert(
        "kafka_pid".into(),
        kafka_pid.map_or("not given: Kafka's CPU is not read".into(), |p| {
            p.to_string()
        }),
    );
    report.parameters.insert(
        "state_flush_interval".into(),
        humantime::format_duration(workers_config.state_flush_interval).to_string(),
    );
    config.create_topics().await?;
    tracing::info!(messages = total, "preloading the messages topic");
    config.preload(&envelopes).await?;
    tracing::info!("raw consumer");

    // The read limit: every record read (and decoded) with librdkafka. The
    // partitions are assigned, not subscribed: no group to join or leave.
    let consumer: StreamConsumer = kafka
        .consumer_config(&[
            ("group.id", "switchboard-bench-raw"),
            ("enable.auto.commit", "false"),
        ])
        .create()?;
    let mut partitions = rdkafka::TopicPartitionList::new();
    for p in 0..kafka.topic_partitions {
        partitions.add_partition_offset(&config.messages_topic, p, rdkafka::Offset::Beginning)?;
    }
    consumer.assign(&partitions)?;
    let mut read = 0;
    let mut started = None;
    let mut cpu = Duration::ZERO;
    while read < total {
        let m = consumer.recv().await?;
        if read == warmup {
            started = Some(Instant::now());
            cpu = process_cpu();
        }
        Envelope::decode(m.payload().unwrap_or_default())?;
        read += 1;
    }
    let consumer_cpu = cpu_per_message(cpu, messages);
    report.push(
        "raw rdkafka consumer",
        messages,
        started.map_or(Duration::ZERO, |s| s.elapsed()),
        &[("cpu_us_per_message", consumer_cpu)],
    );
    drop(consumer);

    tracing::info!("raw pipe");
    let pipe_topic = format!("{}.pipe", config.analytics_topic);
    let pipe = raw_pipe::run(
        kafka,
        &config.messages_topic,
        &pipe_topic,
        raw_pipe::Until::Count { warmup, messages },
        kafka_pid,
    )
    .await?;
    anyhow::ensure!(
        pipe.skipped == 0,
        "the raw pipe found {} records that are not envelopes",
        pipe.skipped
    );
    let pipe_rate = messages as f64 / pipe.elapsed.as_secs_f64().max(1e-9);
    let per_pipe_message = |cpu: Duration| cpu.as_secs_f64() * 1e6 / messages as f64;
    let pipe_cpu = per_pipe_message(pipe.cpu);
    let pipe_kafka_cpu = pipe.kafka_cpu.map(per_pipe_message);
    let mut extra = vec![("cpu_us_per_message", pipe_cpu)];
    extra.extend(pipe_kafka_cpu.map(|c| ("kafka_cpu_us_per_message", c)));
    report.push(
        "raw pipe (consume, decode, produce one record, store after delivery)",
        messages,
        pipe.elapsed,
        &extra,
    );

    tracing::info!("routing worker");
    // The worker runs as a process of its own (`switchboard-workers`,
    // beside this binary), so the CPU read from /proc is the routing
    // stage's alone: not this process's driver and raw clients, nor the idle
    // ingestion node, bot and queue stage of an in-process pipeline (as
    // until 2026-12-01). Everything goes to analytics (no rules file); the
    // queue stage, which this job never feeds, is off.
    let dir = tempfile::tempdir()?;
    let mut worker = analytics_worker(workers_config, dir.path())?;
    let pid = worker.pid()?.to_string();
    let counter = Arc::new(TopicCounter::new(kafka, &config.analytics_topic)?);
    // Counting asks each partition's leader: off the runtime's threads.
    let routed = || {
        let counter = counter.clone();
        async move {
            tokio::task::spawn_blocking(move || counter.count())
                .await
                .unwrap_or_default()
        }
    };
    let gave_up = |what: &str| {
        let log = std::fs::read_to_string(worker.log()).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(20).collect();
        anyhow::anyhow!(
            "timed out waiting for {what}; the worker's last log lines, newest first:\n{}",
            tail.join("\n")
        )
    };
    // Time from the end of the warm-up to the last analytics record, as
    // for the raw pipe, and CPU from then until the last offset is
    // committed; start-up and the state rebuild are not per message. The
    // cold figure runs from the first record.
    let wait_for = |what: &'static str, count: usize, every: Duration, within: Duration| {
        let (routed, gave_up) = (&routed, &gave_up);
        async move {
            let deadline = Instant::now() + within;
            loop {
                let now = routed().await;
                if now >= count.max(1) as i64 {
                    return Ok(now);
                }
                if Instant::now() >= deadline {
                    return Err(gave_up(what));
                }
                tokio::time::sleep(every).await;
            }
        }
    };
    let (fast, slow) = (Duration::from_millis(5), Duration::from_millis(20));
    wait_for(
        "the first routed message",
        1,
        fast,
        Duration::from_secs(120),
    )
    .await?;
    let cold_cpu = cpu_of(&pid);
    let warm = wait_for("the warm-up routed", warmup, fast, Duration::from_secs(600)).await?;
    let (started, cpu, kafka_before) = (Instant::now(), cpu_of(&pid), cpu_of_pid(kafka_pid));
    // What the window holds: the counter may pass the warm-up mark a
    // little before it is read.
    let measured = usize::try_from(total as i64 - warm).unwrap_or(0).max(1);
    wait_for(
        "every message routed",
        total,
        slow,
        Duration::from_secs(600),
    )
    .await?;
    let elapsed = started.elapsed();
    // The CPU until every offset is committed: the state flush that
    // follows the last messages (up to `state_flush_interval` later) is
    // part of their cost, though not of the rate's window.
    let (bootstrap, group) = (kafka.bootstrap_servers.clone(), config.group_id.clone());
    let topic = config.messages_topic.clone();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (bootstrap, group, topic) = (bootstrap.clone(), group.clone(), topic.clone());
        let (committed, size) = tokio::task::spawn_blocking(move || {
            switchboard_testkit::committed_vs_size(&bootstrap, &group, &topic)
        })
        .await?;
        if committed >= size {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the worker committed {committed} of {size} offsets within a minute of routing them"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let end_cpu = cpu_of(&pid);
    // Kafka's share, over the same window as the worker's CPU (the bench's
    // polling of the analytics topic's offsets included, a few requests a
    // second).
    let per_message = |cpu: Duration, count: usize| cpu.as_secs_f64() * 1e6 / count as f64;
    let worker_kafka_cpu = kafka_before
        .zip(cpu_of_pid(kafka_pid))
        .map(|(before, now)| per_message(now.saturating_sub(before), measured));
    let worker_cpu = per_message(end_cpu.saturating_sub(cpu), measured);
    let cold_worker_cpu = per_message(end_cpu.saturating_sub(cold_cpu), total);
    // What the write-behind cost while routing: the state topic's offsets
    // (its records, and one commit marker per partition per flush).
    let state_offsets = TopicCounter::new(kafka, &config.state_topic)?.count();
    worker.stop_cleanly(Duration::from_secs(15)).await?;
    let worker_rate = measured as f64 / elapsed.as_secs_f64().max(1e-9);
    let mut extra = vec![
        ("cpu_us_per_message", worker_cpu),
        ("rate_ratio_to_raw_pipe", worker_rate / pipe_rate),
        ("cpu_ratio_to_raw_pipe", worker_cpu / pipe_cpu),
        ("cold_cpu_us_per_message", cold_worker_cpu),
        (
            "state_offsets_per_message",
            state_offsets as f64 / total as f64,
        ),
    ];
    if let Some(kafka_cpu) = worker_kafka_cpu {
        extra.push(("kafka_cpu_us_per_message", kafka_cpu));
        extra.extend(pipe_kafka_cpu.map(|pipe_kafka| {
            // The machine's CPU per message, the stage's and Kafka's: on a
            // saturated host the rates follow its ratio.
            (
                "machine_cpu_ratio_to_raw_pipe",
                (worker_cpu + kafka_cpu) / (pipe_cpu + pipe_kafka),
            )
        }));
    }
    report.push(
        "worker routing to analytics (its own process)",
        measured,
        elapsed,
        &extra,
    );
    Ok(report)
}

/// Slow destination: a bot taking `bot_delay` per message, `conversations`
/// conversations of `per_conversation` messages; partition-serial
/// (`max_in_flight_per_partition = 1`) first, then key-level concurrency.
pub async fn slow_destination(
    kafka: &KafkaConfig,
    conversations: usize,
    per_conversation: usize,
    bot_delay: Duration,
) -> anyhow::Result<ScenarioReport> {
    let messages = conversations * per_conversation;
    let envelopes = workload(conversations, per_conversation, 100);
    let mut report = ScenarioReport::new(
        "slow destination: key-level concurrency vs partition-serial",
        &[
            ("messages", messages.to_string()),
            ("conversations", conversations.to_string()),
            ("partitions", kafka.topic_partitions.to_string()),
            ("bot_delay", format!("{bot_delay:?}")),
        ],
    );
    for (name, in_flight) in [
        ("partition-serial (1 in flight per partition)", 1),
        ("key-level concurrency (256 in flight per partition)", 256),
    ] {
        let mut config = PipelineConfig::isolated(kafka.clone(), "bench.slow");
        let rules = std::env::temp_dir().join(format!("{}.toml", uuid::Uuid::now_v7().simple()));
        std::fs::write(&rules, "default = [{ bot = \"slow\" }]\n")?;
        config.rules_file = Some(rules.clone());
        config.bot_name = "slow".into();
        config.max_in_flight_per_partition = in_flight;
        config.create_topics().await?;
        config.preload(&envelopes).await?;
        let bot = RecordingBot::with_delay(bot_delay);
        let pipeline = Pipeline::start(&config, bot.clone()).await?;
        wait_until(
            "the first message at the bot",
            Duration::from_secs(120),
            || bot.count() > 0,
        )
        .await?;
        let (started, cpu) = (Instant::now(), process_cpu());
        let mut last_report = Instant::now();
        wait_until(
            "every message at the bot",
            Duration::from_secs(1800),
            || {
                if last_report.elapsed() > Duration::from_secs(5) {
                    tracing::info!(
                        variant = name,
                        done = bot.count(),
                        of = messages,
                        "progress"
                    );
                    last_report = Instant::now();
                }
                bot.count() >= messages
            },
        )
        .await?;
        let elapsed = started.elapsed();
        // The bot runs in this process too: its side of each call counts.
        let cpu = cpu_per_message(cpu, messages);
        pipeline.stop().await?;
        let _ = std::fs::remove_file(rules);
        let violations = bot
            .by_conversation()
            .values()
            .map(|seen| {
                seen.windows(2)
                    .filter(|w| loadgen::seq_of(&w[0]) >= loadgen::seq_of(&w[1]))
                    .count()
            })
            .sum::<usize>();
        report.push(
            name,
            messages,
            elapsed,
            &[
                ("order_violations", violations as f64),
                ("cpu_us_per_message_worker_and_bot", cpu),
            ],
        );
    }
    Ok(report)
}

/// Latency at load: for each rate, Kafka alone (the raw producer to a topic
/// and a consumer of it, open loop), with `processes` Kafka and the raw
/// pipe (a process of its own at the worker's place), and then Switchboard
/// (`rpc` to an ingestion node, a routing worker, the analytics topic),
/// each for `duration`, after an unreported warm-up of each. Latency runs
/// from the intended send time to the arrival.
pub async fn latency(
    kafka: &KafkaConfig,
    rates: &[f64],
    duration: Duration,
    rpc: Rpc,
    conversations: u64,
    processes: bool,
    consumer_properties: &BTreeMap<String, String>,
) -> anyhow::Result<ScenarioReport> {
    let mut report = ScenarioReport::new(
        "end-to-end latency at load",
        &[
            ("rates", format!("{rates:?}")),
            ("duration", format!("{duration:?}")),
            ("rpc", format!("{rpc:?}")),
            ("conversations", conversations.to_string()),
            ("partitions", kafka.topic_partitions.to_string()),
            ("destination", "analytics (a Kafka topic)".into()),
            (
                "layout",
                if processes {
                    "the node and the worker each a process of its own; the generator and the sinks in this one"
                } else {
                    "the generator, node, worker and sinks in this process"
                }
                .into(),
            ),
            (
                "consumer_properties",
                format!("{consumer_properties:?} (the worker's consumers and the raw pipe's; in-process, the node's too)"),
            ),
        ],
    );
    // Switchboard's consumers only: Kafka alone's run and the sinks keep
    // librdkafka's defaults.
    let switchboard_kafka = KafkaConfig {
        consumer_properties: consumer_properties.clone(),
        ..kafka.clone()
    };
    let config = PipelineConfig::isolated(switchboard_kafka.clone(), "bench.latency");
    config.create_topics().await?;
    // The node's, the worker's and the raw pipe's logs, when they are
    // processes.
    let logs = tempfile::tempdir()?;
    let started = async {
        let layout = if processes {
            Layout::Processes {
                node: Box::new(
                    Node::spawn(
                        &sibling_broker(),
                        "node",
                        logs.path(),
                        &kafka.bootstrap_servers,
                        &config.messages_topic,
                        &[],
                    )
                    .await?,
                ),
                worker: Box::new(analytics_worker(
                    config.workers_config(config.bot_addr),
                    logs.path(),
                )?),
            }
        } else {
            Layout::InProcess(Pipeline::start(&config, RecordingBot::default()).await?)
        };
        // With processes, the raw pipe at the worker's place: Kafka's two
        // hops and a stage that writes a record per message, without the
        // node and without routing; its CPU per message at the same rate is
        // the worker's baseline.
        let piped = if processes {
            Some(PipedKafka::start(kafka, &switchboard_kafka, logs.path()).await?)
        } else {
            None
        };
        anyhow::Ok((layout, piped))
    }
    .await;
    let (layout, piped) = match started {
        Ok(started) => started,
        Err(e) => return finish(Err(e), Ok(()), logs),
    };
    let measured = async {
        let address = layout.address();
        let raw = raw_target(kafka, "latency-raw").await?;
        let Target::Kafka {
            topic: raw_topic, ..
        } = &raw
        else {
            unreachable!("raw_target is Kafka")
        };
        let raw_sink = SinkSpec {
            kafka: kafka.clone(),
            topic: raw_topic.clone(),
            format: SinkFormat::Envelope,
        };
        let analytics_sink = SinkSpec {
            kafka: kafka.clone(),
            topic: config.analytics_topic.clone(),
            format: SinkFormat::Analytics,
        };
        // Warm up both paths (connections, the JVM, caches) at the first rate;
        // these runs are not reported.
        let warm_up = LoadOptions {
            rate: rates.first().copied(),
            duration: Some(duration.min(Duration::from_secs(10))),
            ..load(Rpc::Kafka, conversations, 200)
        };
        loadgen::run(raw.clone(), warm_up.clone(), None).await?;
        if let Some(piped) = &piped {
            loadgen::run(piped.target.clone(), warm_up.clone(), None).await?;
        }
        loadgen::run(
            Target::connect(&address, 4).await?,
            LoadOptions { rpc, ..warm_up },
            None,
        )
        .await?;
        for &rate in rates {
            let options = LoadOptions {
                rate: Some(rate),
                duration: Some(duration),
                ..load(Rpc::Kafka, conversations, 200)
            };
            let alone = loadgen::run(raw.clone(), options.clone(), Some(raw_sink.clone())).await?;
            let kafka_p99 = alone.end_to_end.as_ref().map_or(0.0, |e| e.latency_ms.p99);
            report.push_run(&format!("Kafka alone at {rate}/s"), alone, &[]);
            let mut pipe_cpu = None;
            if let Some(piped) = &piped {
                let before = piped.cpu();
                let run = loadgen::run(
                    piped.target.clone(),
                    options.clone(),
                    Some(piped.sink.clone()),
                )
                .await?;
                let per_message = piped.cpu().saturating_sub(before).as_secs_f64() * 1e6
                    / run.acked.max(1) as f64;
                pipe_cpu = Some(per_message);
                let ratio = run
                    .end_to_end
                    .as_ref()
                    .map_or(0.0, |e| e.latency_ms.p99 / kafka_p99.max(1e-3));
                report.push_run(
                    &format!("Kafka and the raw pipe at {rate}/s"),
                    run,
                    &[
                        ("e2e_p99_x_kafka", ratio),
                        ("pipe_cpu_us_per_message", per_message),
                    ],
                );
            }
            let before = layout.cpu();
            let run = loadgen::run(
                Target::connect(&address, 4).await?,
                LoadOptions { rpc, ..options },
                Some(analytics_sink.clone()),
            )
            .await?;
            let ratio = run
                .end_to_end
                .as_ref()
                .map_or(0.0, |e| e.latency_ms.p99 / kafka_p99.max(1e-3));
            let mut extra = vec![("e2e_p99_x_kafka", ratio)];
            if let Some(((node, worker), (node_now, worker_now))) = before.zip(layout.cpu()) {
                // Over the run, to the sink's last record; the worker's next
                // state flush may come after it and is not counted.
                let per_message = |cpu: Duration| cpu.as_secs_f64() * 1e6 / run.acked.max(1) as f64;
                extra.push((
                    "node_cpu_us_per_message",
                    per_message(node_now.saturating_sub(node)),
                ));
                let worker_cpu = per_message(worker_now.saturating_sub(worker));
                extra.push(("worker_cpu_us_per_message", worker_cpu));
                if let Some(pipe_cpu) = pipe_cpu {
                    extra.push(("worker_cpu_x_pipe", worker_cpu / pipe_cpu.max(1e-9)));
                }
            }
            report.push_run(&format!("Switchboard at {rate}/s"), run, &extra);
        }
        Ok(())
    }
    .await;
    let stopped = async {
        layout.stop().await?;
        match piped {
            Some(mut piped) => piped.pipe.stop_cleanly(Duration::from_secs(15)).await,
            None => Ok(()),
        }
    }
    .await;
    finish(measured, stopped, logs)?;
    Ok(report)
}

/// The latency scenario's baseline for a stage: the raw producer to a
/// topic, the raw pipe (a process of its own) to another, and a sink.
struct PipedKafka {
    /// The raw producer to the pipe's topic.
    target: Target,
    /// The pipe's analytics records.
    sink: SinkSpec,
    pipe: Proc,
}

impl PipedKafka {
    /// Creates the topics (the producer's on `kafka`) and starts the pipe,
    /// its consumer configured by `pipe_kafka` as the worker's is, with its
    /// log in `logs`.
    async fn start(
        kafka: &KafkaConfig,
        pipe_kafka: &KafkaConfig,
        logs: &std::path::Path,
    ) -> anyhow::Result<Self> {
        let target = raw_target(kafka, "latency-pipe-in").await?;
        let Target::Kafka { topic: from, .. } = &target else {
            unreachable!("raw_target is Kafka")
        };
        let to = format!("bench.latency-pipe-out.{}", uuid::Uuid::now_v7().simple());
        kafka.ensure_topics(&[&to]).await?;
        let pipe = RawPipe::spawn("pipe", logs, pipe_kafka, from, &to)?;
        Ok(Self {
            target,
            sink: SinkSpec {
                kafka: kafka.clone(),
                topic: to,
                format: SinkFormat::Analytics,
            },
            pipe,
        })
    }

    /// The pipe's CPU time so far.
    fn cpu(&self) -> Duration {
        cpu_of_pid(self.pipe.pid().ok()).unwrap_or_default()
    }
}

/// Where the latency scenario's node and worker run.
enum Layout {
    /// Both in this process, beside the generator and the sinks, with a
    /// bot and the queue stage.
    InProcess(Pipeline),
    /// Each a process of its own, as deployed: their CPU is read apart.
    Processes { node: Box<Node>, worker: Box<Proc> },
}

impl Layout {
    fn address(&self) -> String {
        match self {
            Self::InProcess(pipeline) => format!("http://{}", pipeline.grpc_addr),
            Self::Processes { node, .. } => node.address.clone(),
        }
    }

    /// The node's and the worker's CPU time so far, when they are processes
    /// of their own.
    fn cpu(&self) -> Option<(Duration, Duration)> {
        match self {
            Self::InProcess(_) => None,
            Self::Processes { node, worker, .. } => Some((
                cpu_of_pid(node.proc.pid().ok())?,
                cpu_of_pid(worker.pid().ok())?,
            )),
        }
    }

    async fn stop(self) -> anyhow::Result<()> {
        match self {
            Self::InProcess(pipeline) => pipeline.stop().await,
            Self::Processes { node, mut worker } => {
                node.stop().await?;
                worker.stop_cleanly(Duration::from_secs(15)).await
            }
        }
    }
}

/// A scenario's end: `measured`, the result of its runs, unless its
/// processes did not stop cleanly (`stopped`); when both failed, the runs'
/// error wins and the stop's is logged. On an error the processes' logs in
/// `logs` are kept, and the error says where, instead of going with the
/// temporary folder.
fn finish<T>(
    measured: anyhow::Result<T>,
    stopped: anyhow::Result<()>,
    logs: tempfile::TempDir,
) -> anyhow::Result<T> {
    let result = match stopped {
        Ok(()) => measured,
        Err(e) if measured.is_ok() => Err(e),
        Err(e) => {
            tracing::warn!(
                error = format!("{e:#}"),
                "the processes did not stop cleanly either"
            );
            measured
        }
    };
    result.map_err(|e| {
        let kept = logs.keep();
        e.context(format!(
            "the processes' logs are kept in {}",
            kept.display()
        ))
    })
}

/// `switchboard-broker` beside this executable (`target/release`).
pub fn sibling_broker() -> std::path::PathBuf {
    binaries(None).join("switchboard-broker")
}

/// Overload: an ingestion node (`broker`, its own process, with its
/// default bounds but a dedupe cache of `dedupe_entries`, so the run
/// reaches the cache's ceiling). First the sustainable unary rate (closed loop, 256 in
/// flight, for `probe`), then twice that in open loop for `duration`, then
/// half of it for `recovery`. The node's resident memory is sampled every
/// second.
pub async fn overload(
    kafka: &KafkaConfig,
    broker: &std::path::Path,
    probe: Duration,
    duration: Duration,
    recovery: Duration,
    conversations: u64,
    dedupe_entries: usize,
) -> anyhow::Result<ScenarioReport> {
    let max_in_flight = BrokerConfig::default().max_in_flight;
    let mut report = ScenarioReport::new(
        "overload: twice the sustainable rate",
        &[
            ("probe", format!("{probe:?}")),
            ("duration", format!("{duration:?}")),
            ("recovery", format!("{recovery:?}")),
            ("conversations", conversations.to_string()),
            ("node_max_in_flight", max_in_flight.to_string()),
            ("node_dedupe_max_entries", dedupe_entries.to_string()),
            ("partitions", kafka.topic_partitions.to_string()),
            ("memory", "the node process's resident set".into()),
        ],
    );
    let topic = format!("bench.overload.{}", uuid::Uuid::now_v7().simple());
    kafka.ensure_topics(&[&topic]).await?;
    let logs = tempfile::tempdir()?;
    let node = Node::spawn(
        broker,
        "node",
        logs.path(),
        &kafka.bootstrap_servers,
        &topic,
        &[("DEDUPE__MAX_ENTRIES", dedupe_entries.to_string())],
    )
    .await;
    let node = match node {
        Ok(node) => node,
        Err(e) => return finish(Err(e), Ok(()), logs),
    };
    let measured = async {
        let base = LoadOptions {
            memory_of: node.proc.pid().ok(),
            ..load(Rpc::Unary, conversations, 200)
        };
        let run = loadgen::run(
            Target::connect(&node.address, 4).await?,
            LoadOptions {
                concurrency: 256,
                duration: Some(probe),
                ..base.clone()
            },
            None,
        )
        .await?;
        let sustainable = run.acked_rate.round().max(1.0);
        report.push_run("closed loop, 256 in flight: the sustainable rate", run, &[]);
        for (name, factor, length) in [
            ("open loop at 2× sustainable", 2.0, duration),
            ("open loop at 0.5× sustainable: recovery", 0.5, recovery),
        ] {
            let run = loadgen::run(
                Target::connect(&node.address, 4).await?,
                LoadOptions {
                    rate: Some(sustainable * factor),
                    duration: Some(length),
                    ..base.clone()
                },
                None,
            )
            .await?;
            let refused = |code: &str| run.errors.get(code).copied().unwrap_or(0) as f64;
            let extra = [
                ("offered_per_second", run.offered_rate.round()),
                ("resource_exhausted", refused("ResourceExhausted")),
                ("unavailable", refused("Unavailable")),
            ];
            report.push_run(name, run, &extra);
        }
        Ok(())
    }
    .await;
    finish(measured, node.stop().await, logs)?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_logs_are_kept_only_when_something_failed() {
        fn failed<T>(what: &str) -> anyhow::Result<T> {
            Err(anyhow::anyhow!("{what}"))
        }
        // The runs failed, the stop went well; the stop failed after good
        // runs; both failed, the runs' error first.
        for (measured, stopped, expected) in [
            (failed("the run failed"), Ok(()), "the run failed"),
            (
                Ok(7),
                failed("the node did not stop"),
                "the node did not stop",
            ),
            (
                failed("the run failed"),
                failed("the node did not stop"),
                "the run failed",
            ),
        ] {
            let logs = tempfile::tempdir().unwrap();
            let path = logs.path().to_owned();
            std::fs::write(path.join("node.log"), "the node's last words").unwrap();
            let message = format!("{:#}", finish(measured, stopped, logs).unwrap_err());
            assert!(message.contains(&path.display().to_string()), "{message}");
            assert!(message.contains(expected), "{message}");
            assert!(path.join("node.log").exists(), "kept after a failure");
            std::fs::remove_dir_all(&path).unwrap();
        }

        let logs = tempfile::tempdir().unwrap();
        let path = logs.path().to_owned();
        assert_eq!(finish(Ok(7), Ok(()), logs).unwrap(), 7);
        assert!(!path.exists(), "deleted when all went well");
    }
}
