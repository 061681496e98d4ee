//! `switchboard-bench`: the load generator.

use std::{
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use clap::{Parser, Subcommand, ValueEnum};
use switchboard_benches::{
    loadgen::{self, Mode, Progress, RunOptions},
    scenarios,
};
use switchboard_proto::v1::{Channel, ingest_client::IngestClient};

/// Publishes conversations to an ingestion node and reports throughput and
/// latency. Each conversation's messages are published in order.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Run a benchmark scenario on a real Kafka instead of publishing to a
    /// running node.
    #[command(subcommand)]
    scenario: Option<Scenario>,
    /// The ingestion node.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    target: String,
    /// How to publish.
    #[arg(long, value_enum, default_value_t = CliMode::Unary)]
    mode: CliMode,
    /// Total messages to publish.
    #[arg(long, default_value_t = 1_000)]
    messages: usize,
    /// Conversations to spread them over.
    #[arg(long, default_value_t = 100)]
    conversations: usize,
    /// Conversations published at once (unary mode).
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Tenant id.
    #[arg(long, default_value = "demo")]
    tenant: String,
    /// Channel: whatsapp, messenger, instagram, sms or webchat.
    #[arg(long, default_value = "webchat")]
    channel: String,
    /// Give up after this long (e.g. 30s, 5m).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    max_duration: Duration,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

/// Benchmark scenarios; each compares Switchboard with its practical limit
/// in one run (benches/README.md).
#[derive(Subcommand, Debug)]
enum Scenario {
    /// The raw rdkafka producer against PublishStream and unary Publish.
    Ingest {
        #[command(flatten)]
        common: ScenarioArgs,
        /// Messages per variant.
        #[arg(long, default_value_t = 100_000)]
        messages: usize,
        /// Text body size of each message, in bytes.
        #[arg(long, default_value_t = 300)]
        body_bytes: usize,
    },
    /// The raw rdkafka consumer against workers routing to analytics.
    Routing {
        #[command(flatten)]
        common: ScenarioArgs,
        /// Messages per variant.
        #[arg(long, default_value_t = 100_000)]
        messages: usize,
    },
    /// A slow bot: key-level concurrency against a partition-serial consumer.
    SlowDestination {
        #[command(flatten)]
        common: ScenarioArgs,
        /// Conversations.
        #[arg(long, default_value_t = 10_000)]
        conversations: usize,
        /// Messages per conversation.
        #[arg(long, default_value_t = 1)]
        per_conversation: usize,
        /// The bot's time per message.
        #[arg(long, default_value = "20ms", value_parser = humantime::parse_duration)]
        bot_delay: Duration,
    },
}

#[derive(clap::Args, Debug)]
struct ScenarioArgs {
    /// Kafka bootstrap servers (a scratch Kafka: deploy/kafka/start.sh).
    #[arg(long, default_value = "127.0.0.1:9092")]
    kafka: String,
    /// Partitions of every topic the scenario creates.
    #[arg(long, default_value_t = 12)]
    partitions: i32,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

async fn run_scenario(scenario: Scenario) -> anyhow::Result<()> {
    let _telemetry = switchboard_broker::telemetry::init("switchboard-bench");
    let kafka_of = |common: &ScenarioArgs| switchboard_broker::kafka::KafkaConfig {
        bootstrap_servers: common.kafka.clone(),
        topic_partitions: common.partitions,
        ..Default::default()
    };
    let (report, json) = match scenario {
        Scenario::Ingest {
            common,
            messages,
            body_bytes,
        } => (
            scenarios::ingest(&kafka_of(&common), messages, body_bytes).await?,
            common.json,
        ),
        Scenario::Routing { common, messages } => (
            scenarios::routing(&kafka_of(&common), messages).await?,
            common.json,
        ),
        Scenario::SlowDestination {
            common,
            conversations,
            per_conversation,
            bot_delay,
        } => (
            scenarios::slow_destination(
                &kafka_of(&common),
                conversations,
                per_conversation,
                bot_delay,
            )
            .await?,
            common.json,
        ),
    };
    print!("{}", report.markdown());
    if let Some(path) = json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)?;
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum CliMode {
    Unary,
    Stream,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(scenario) = args.scenario {
        // Exit at once: on an error, dropping half-used Kafka clients can
        // block the runtime's shutdown, and the error would never show.
        if let Err(e) = run_scenario(scenario).await {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
        std::process::exit(0);
    }
    let channel = Channel::from_str_name(&args.channel.to_ascii_uppercase())
        .filter(|c| *c != Channel::Unspecified)
        .ok_or_else(|| anyhow::anyhow!("unknown channel {:?}", args.channel))?;
    let client = IngestClient::connect(args.target.clone())
        .await
        .map_err(|e| anyhow::anyhow!("cannot connect to {}: {e}", args.target))?;
    let options = RunOptions {
        mode: match args.mode {
            CliMode::Unary => Mode::Unary,
            CliMode::Stream => Mode::Stream,
        },
        messages: args.messages,
        conversations: args.conversations,
        concurrency: args.concurrency,
        tenant: args.tenant,
        channel,
    };
    let progress = Arc::new(Progress::default());
    let ticker = tokio::spawn({
        let progress = progress.clone();
        let total = args.messages;
        async move {
            let started = Instant::now();
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            loop {
                tick.tick().await;
                let acked = progress.acked.load(Ordering::Relaxed);
                let failed = progress.failed.load(Ordering::Relaxed);
                eprintln!(
                    "[{:>4.0}s] {acked}/{total} acked, {failed} failed, {:.0} msg/s",
                    started.elapsed().as_secs_f64(),
                    acked as f64 / started.elapsed().as_secs_f64()
                );
            }
        }
    });
    let report = tokio::time::timeout(
        args.max_duration,
        loadgen::run(client, options, progress.clone()),
    )
    .await;
    ticker.abort();
    let Ok(report) = report else {
        anyhow::bail!(
            "gave up after {:?}: {} acked, {} failed",
            args.max_duration,
            progress.acked.load(Ordering::Relaxed),
            progress.failed.load(Ordering::Relaxed)
        );
    };
    println!(
        "{} messages ({:?}): {} acked, failed {:?}, {:.2}s, {:.0} msg/s; latency ms p50 {} p90 {} p99 {} p99.9 {} max {}",
        report.options.messages,
        report.options.mode,
        report.acked,
        report.failed,
        report.elapsed_seconds,
        report.rate_per_second,
        report.latency_ms["p50"],
        report.latency_ms["p90"],
        report.latency_ms["p99"],
        report.latency_ms["p99.9"],
        report.latency_ms["max"],
    );
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)?;
    }
    anyhow::ensure!(
        report.failed.is_empty(),
        "some publishes failed: {:?}",
        report.failed
    );
    Ok(())
}
