//! `switchboard-bench`: the load generator.

use std::{
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use clap::{Parser, ValueEnum};
use switchboard_benches::loadgen::{self, Mode, Progress, RunOptions};
use switchboard_proto::v1::{Channel, ingest_client::IngestClient};

/// Publishes conversations to an ingestion node and reports throughput and
/// latency. Each conversation's messages are published in order.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
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

#[derive(Debug, Clone, Copy, ValueEnum)]
enum CliMode {
    Unary,
    Stream,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
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
