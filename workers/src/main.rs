//! `switchboard-workers`: runs one routing worker.

use std::{net::SocketAddr, path::PathBuf, sync::Arc};

use clap::Parser;
use switchboard_broker::{config::Overrides, shutdown, telemetry};
use switchboard_workers::{config::WorkersConfig, consumer::Worker, router::Router};

/// Switchboard routing worker: consumes envelopes from Kafka and routes
/// them to bots, agent queues and analytics, at least once.
///
/// Settings are layered: defaults, then --config FILE, then
/// SWITCHBOARD_WORKERS_* environment variables, then these flags.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// TOML config file (see README for every key).
    #[arg(long, env = "SWITCHBOARD_WORKERS_CONFIG")]
    config: Option<PathBuf>,
    /// Routing rules file (TOML).
    #[arg(long)]
    rules_file: Option<PathBuf>,
    /// Kafka bootstrap servers [default: 127.0.0.1:9092].
    #[arg(long, env = "SWITCHBOARD_KAFKA_BOOTSTRAP")]
    kafka_bootstrap: Option<String>,
    /// Consumer group id [default: switchboard-workers].
    #[arg(long)]
    group_id: Option<String>,
    /// Prometheus /metrics address [default: 127.0.0.1:9465].
    #[arg(long)]
    metrics_addr: Option<SocketAddr>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    telemetry::init_logging();
    let args = Args::parse();
    let shutdown = shutdown::Shutdown::new();
    shutdown::on_signals(shutdown.clone());
    let config = WorkersConfig::load(
        args.config.as_deref(),
        Overrides::default()
            .set("rules_file", args.rules_file)
            .set("group_id", args.group_id)
            .set("metrics_addr", args.metrics_addr)
            .kafka_bootstrap(args.kafka_bootstrap),
    )?;
    if let Some(addr) = config.metrics_addr {
        telemetry::install_metrics(addr).map_err(anyhow::Error::msg)?;
        tracing::info!(%addr, "serving Prometheus metrics at /metrics");
    }
    // Creating topics can take a while; a signal meanwhile ends the process.
    tokio::select! {
        created = config.ensure_topics() => created?,
        _ = shutdown.cancelled() => return Ok(()),
    }
    let router = Arc::new(Router::new(&config)?);
    router.spawn_rules_reloader(config.rules_reload_interval, shutdown.clone());
    Worker::new(&config, router)?.run(shutdown).await
}
