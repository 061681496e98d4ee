//! `switchboard-broker`: runs one ingestion node.

use std::{net::SocketAddr, path::PathBuf};

use clap::Parser;
use switchboard_broker::{config::BrokerConfig, server::Broker};
use switchboard_runtime::{config::Overrides, shutdown, telemetry, threads};

/// Switchboard ingestion node: gRPC in, canonical envelopes out to Kafka.
///
/// Settings are layered: defaults, then --config FILE, then
/// SWITCHBOARD_BROKER_* environment variables, then these flags.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// TOML config file (see README for every key).
    #[arg(long, env = "SWITCHBOARD_BROKER_CONFIG")]
    config: Option<PathBuf>,
    /// gRPC listen address [default: 127.0.0.1:50051].
    #[arg(long)]
    grpc_addr: Option<SocketAddr>,
    /// Prometheus /metrics address [default: 127.0.0.1:9464].
    #[arg(long)]
    metrics_addr: Option<SocketAddr>,
    /// HTTP webhook listener address, or "off" [default: 127.0.0.1:8080].
    #[arg(long)]
    http_addr: Option<String>,
    /// Kafka bootstrap servers [default: 127.0.0.1:9092].
    #[arg(long, env = "SWITCHBOARD_KAFKA_BOOTSTRAP")]
    kafka_bootstrap: Option<String>,
    /// Topic to publish envelopes to [default: switchboard.messages.v1].
    #[arg(long)]
    messages_topic: Option<String>,
}

/// mimalloc: the system allocator's malloc and free took about 12% of the
/// ingest path's CPU (benches/README.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let config = BrokerConfig::load(
        args.config.as_deref(),
        Overrides::default()
            .set("grpc_addr", args.grpc_addr)
            .set("metrics_addr", args.metrics_addr)
            .set("http_addr", args.http_addr)
            .set("messages_topic", args.messages_topic)
            .kafka_bootstrap(args.kafka_bootstrap),
    )?;
    threads::runtime(config.runtime_threads)?.block_on(run(config))
}

async fn run(config: BrokerConfig) -> anyhow::Result<()> {
    let _telemetry = telemetry::init("switchboard-broker");
    let shutdown = shutdown::Shutdown::new();
    shutdown::on_signals(shutdown.clone());
    if let Some(addr) = config.metrics_addr {
        telemetry::install_metrics(addr).map_err(anyhow::Error::msg)?;
        switchboard_broker::metrics::describe();
        tracing::info!(%addr, "serving Prometheus metrics at /metrics");
    }
    // Creating topics can take a while; a signal meanwhile ends the process.
    let topics = [
        config.messages_topic.as_str(),
        config.broadcasts.commands_topic.as_str(),
    ];
    tokio::select! {
        created = config.kafka.ensure_topics(&topics) => created?,
        _ = shutdown.cancelled() => return Ok(()),
    }
    Broker::bind(config).await?.serve(shutdown).await
}
