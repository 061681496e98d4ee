//! Benchmark scenarios on a real Kafka, each comparing Switchboard with its
//! practical limit within one run (these machines are noisy: only ratios
//! measured side by side mean something).
//!
//! - [`ingest`]: the raw rdkafka producer (same payloads, keys, acks and
//!   idempotence) against `PublishStream` and unary `Publish` through an
//!   ingestion node.
//! - [`routing`]: the raw rdkafka consumer against workers routing every
//!   message to analytics.
//! - [`slow_destination`]: a 20 ms bot behind key-level concurrent routing
//!   against a partition-serial consumer (one message at a time per
//!   partition), with order violations counted.
//!
//! Every scenario uses topics of its own and deletes nothing: run it on a
//! scratch Kafka (`deploy/kafka/start.sh`).

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use futures::{StreamExt, stream::FuturesUnordered};
use prost::Message as _;
use rdkafka::{
    Message as _,
    consumer::{Consumer, StreamConsumer},
    producer::{FutureProducer, FutureRecord},
};
use serde::Serialize;
use switchboard_broker::{
    config::BrokerConfig, kafka::KafkaConfig, server::Broker, shutdown::Shutdown,
    testkit::RecordingBot,
};
use switchboard_proto::v1::{Channel, Envelope, ingest_client::IngestClient};

use crate::{
    loadgen::{self, Mode, Progress, RunOptions},
    pipeline::{Pipeline, PipelineConfig},
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
    pub details: HashMap<String, f64>,
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
        }
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
        let mut out = format!(
            "### {}\n\n| variant | messages | seconds | msg/s | × baseline |\n|---|---:|---:|---:|---:|\n",
            self.scenario
        );
        for v in &self.variants {
            out.push_str(&format!(
                "| {} | {} | {:.2} | {:.0} | {:.2} |\n",
                v.name, v.messages, v.seconds, v.rate_per_second, v.ratio_to_baseline
            ));
        }
        out
    }
}

/// `conversations` × `per_conversation` text envelopes, interleaved
/// (message 0 of every conversation, then message 1, ...).
fn workload(conversations: usize, per_conversation: usize, body_bytes: usize) -> Vec<Envelope> {
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

/// Ingest: the raw producer, then `PublishStream`, then unary `Publish`.
pub async fn ingest(
    kafka: &KafkaConfig,
    messages: usize,
    body_bytes: usize,
) -> anyhow::Result<ScenarioReport> {
    let conversations = (messages / 10).max(1);
    let envelopes = workload(conversations, messages.div_ceil(conversations), body_bytes);
    let envelopes = &envelopes[..messages];
    let mut report = ScenarioReport::new(
        "ingest vs the raw producer",
        &[
            ("messages", messages.to_string()),
            ("conversations", conversations.to_string()),
            ("body_bytes", body_bytes.to_string()),
            ("partitions", kafka.topic_partitions.to_string()),
        ],
    );

    // The limit: librdkafka with the node's producer settings, same records.
    let raw_topic = format!("bench.ingest-raw.{}", uuid::Uuid::now_v7().simple());
    kafka.ensure_topics(&[&raw_topic]).await?;
    let producer: FutureProducer = kafka.producer_config(&[("linger.ms", "5")]).create()?;
    let records: Vec<(String, Vec<u8>)> = envelopes
        .iter()
        .map(|e| {
            let mut e = e.clone();
            e.message_id = uuid::Uuid::now_v7().to_string();
            (e.conversation_key(), e.encode_to_vec())
        })
        .collect();
    let started = Instant::now();
    let mut pending = FuturesUnordered::new();
    for (key, value) in &records {
        pending.push(producer.send(
            FutureRecord::to(&raw_topic).key(key).payload(value),
            Duration::from_secs(60),
        ));
        while pending.len() >= 10_000 {
            if let Some(Err((e, _))) = pending.next().await {
                anyhow::bail!("raw producer: {e}");
            }
        }
    }
    while let Some(result) = pending.next().await {
        if let Err((e, _)) = result {
            anyhow::bail!("raw producer: {e}");
        }
    }
    report.push("raw rdkafka producer", messages, started.elapsed(), &[]);

    for (name, mode) in [
        ("PublishStream", Mode::Stream),
        ("unary Publish, 64 at once", Mode::Unary),
    ] {
        let topic = format!("bench.ingest.{}", uuid::Uuid::now_v7().simple());
        kafka.ensure_topics(&[&topic]).await?;
        let broker = Broker::bind(BrokerConfig {
            grpc_addr: ([127, 0, 0, 1], 0).into(),
            metrics_addr: None,
            kafka: kafka.clone(),
            messages_topic: topic,
            ack_timeout: Duration::from_secs(30),
            max_in_flight: 50_000,
            ..BrokerConfig::default()
        })
        .await?;
        let addr = broker.local_addr();
        let shutdown = Shutdown::new();
        let serving = tokio::spawn(broker.serve(shutdown.clone()));
        let client = IngestClient::connect(format!("http://{addr}")).await?;
        let run = loadgen::run(
            client,
            RunOptions {
                mode,
                messages,
                conversations,
                concurrency: 64,
                tenant: "bench".into(),
                channel: Channel::Webchat,
            },
            Arc::new(Progress::default()),
        )
        .await;
        shutdown.cancel();
        serving.await??;
        anyhow::ensure!(run.failed.is_empty(), "{name}: failures {:?}", run.failed);
        report.push(
            name,
            messages,
            Duration::from_secs_f64(run.elapsed_seconds),
            &[
                ("latency_p50_ms", run.latency_ms["p50"]),
                ("latency_p99_ms", run.latency_ms["p99"]),
            ],
        );
    }
    Ok(report)
}

/// Routing: the raw consumer reading the preloaded topic, then workers
/// routing the same records to analytics.
pub async fn routing(kafka: &KafkaConfig, messages: usize) -> anyhow::Result<ScenarioReport> {
    let conversations = (messages / 10).max(1);
    let envelopes = workload(conversations, messages.div_ceil(conversations), 200);
    let envelopes = &envelopes[..messages];
    let mut report = ScenarioReport::new(
        "routing vs the raw consumer",
        &[
            ("messages", messages.to_string()),
            ("conversations", conversations.to_string()),
            ("partitions", kafka.topic_partitions.to_string()),
            ("destination", "analytics (a Kafka topic)".into()),
        ],
    );
    let config = PipelineConfig::isolated(kafka.clone(), "bench.routing");
    config.create_topics().await?;
    tracing::info!(messages, "preloading the messages topic");
    config.preload(envelopes).await?;
    tracing::info!("raw consumer");

    // The limit: read every record (and decode it) with librdkafka. The
    // partitions are assigned, not subscribed: no group to join or leave.
    let consumer: StreamConsumer = kafka
        .client_config(&[
            ("group.id", "switchboard-bench-raw"),
            ("enable.auto.commit", "false"),
        ])
        .create()?;
    let mut partitions = rdkafka::TopicPartitionList::new();
    for p in 0..kafka.topic_partitions {
        partitions.add_partition_offset(&config.messages_topic, p, rdkafka::Offset::Beginning)?;
    }
    consumer.assign(&partitions)?;
    let mut decoded = 0;
    let mut started = None;
    while decoded < messages {
        let m = consumer.recv().await?;
        started.get_or_insert_with(Instant::now);
        decoded += usize::from(Envelope::decode(m.payload().unwrap_or_default()).is_ok());
    }
    report.push(
        "raw rdkafka consumer",
        messages,
        started.map_or(Duration::ZERO, |s| s.elapsed()),
        &[],
    );
    drop(consumer);

    tracing::info!("routing workers");
    // Workers: everything to analytics (no rules file).
    let analytics_topic = config.analytics_topic.clone();
    let pipeline = Pipeline::start(&config, RecordingBot::default()).await?;
    // Time from the first analytics record to all of them.
    let counter = {
        let bootstrap = kafka.bootstrap_servers.clone();
        move || switchboard_broker::testkit::topic_size(&bootstrap, &analytics_topic)
    };
    wait_until("the first routed message", Duration::from_secs(120), || {
        counter() > 0
    })
    .await?;
    let started = Instant::now();
    wait_until("every message routed", Duration::from_secs(600), || {
        counter() >= messages as i64
    })
    .await?;
    let elapsed = started.elapsed();
    pipeline.stop().await?;
    report.push("workers routing to analytics", messages, elapsed, &[]);
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
        let started = Instant::now();
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
            &[("order_violations", violations as f64)],
        );
    }
    Ok(report)
}
