//! `switchboard-embedded`: the whole pipeline in one process, on an
//! in-memory Kafka, for trying Switchboard out with nothing installed.

use std::{net::SocketAddr, path::PathBuf};

use clap::Parser;
use switchboard_benches::embedded::{Embedded, EmbeddedConfig, log_traffic};
use switchboard_runtime::{shutdown, telemetry};

/// Runs an ingestion node, routing workers, a demo echo bot and a traffic
/// log on librdkafka's IN-MEMORY mock cluster. Nothing is persisted; this
/// is for trying things out, not for production.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Ingestion node gRPC address.
    #[arg(long, default_value = "127.0.0.1:50051")]
    grpc_addr: SocketAddr,
    /// Demo bot gRPC address.
    #[arg(long, default_value = "127.0.0.1:50061")]
    bot_addr: SocketAddr,
    /// Prometheus /metrics address (one endpoint for every component here).
    #[arg(long, default_value = "127.0.0.1:9464")]
    metrics_addr: SocketAddr,
    /// Routing rules file [default: the built-in demo rules, deploy/rules/demo.toml].
    #[arg(long)]
    rules: Option<PathBuf>,
    /// Partitions per topic.
    #[arg(long, default_value_t = 12)]
    partitions: i32,
    /// Routing workers in the consumer group.
    #[arg(long, default_value_t = 2)]
    workers: usize,
}

/// mimalloc: the system allocator's malloc and free took about 12% of the
/// ingest path's CPU (benches/README.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _telemetry = telemetry::init("switchboard-embedded");
    let args = Args::parse();
    let stop = shutdown::Shutdown::new();
    shutdown::on_signals(stop.clone());
    telemetry::install_metrics(args.metrics_addr).map_err(anyhow::Error::msg)?;
    switchboard_broker::metrics::describe();
    switchboard_workers::metrics::describe();
    let starting = Embedded::start(EmbeddedConfig {
        grpc_addr: args.grpc_addr,
        bot_addr: args.bot_addr,
        rules_file: args.rules,
        partitions: args.partitions,
        workers: args.workers,
    });
    let embedded = tokio::select! {
        embedded = starting => embedded?,
        _ = stop.cancelled() => return Ok(()),
    };
    let traffic = tokio::spawn(log_traffic(embedded.config.clone(), stop.clone()));

    let grpc = embedded.pipeline.grpc_addr;
    println!(
        r#"
Switchboard embedded is running.

  Kafka:    IN-MEMORY mock cluster (librdkafka) at {kafka}
            Everything is lost on exit. For trying things out only, not for production.
  Ingest:   gRPC {grpc}  (switchboard.v1.Ingest; health and reflection enabled)
  Demo bot: gRPC {bot}  (echoes text back)
  Senders:  replies of tenant "demo" go to built-in stand-in providers (logged as "customer <- reply")
  Metrics:  http://{metrics}/metrics
  Topics:   {messages}, {analytics}, {agents}
  Rules:    {rules}

Send a message (in another terminal):
  cargo run --release --bin switchboard-bench -- --target http://{grpc} --messages 200
  grpcurl -plaintext -emit-defaults -d '{{"envelope":{{"tenantId":"demo","channel":"WEBCHAT","direction":"INBOUND","conversationId":"c-1","text":{{"body":"hello"}}}}}}' {grpc} switchboard.v1.Ingest/Publish

Routed traffic is logged below. Ctrl-C stops everything.
"#,
        kafka = embedded.config.kafka.bootstrap_servers,
        bot = embedded.pipeline.bot_addr,
        metrics = args.metrics_addr,
        messages = embedded.config.messages_topic,
        analytics = embedded.config.analytics_topic,
        agents = embedded.config.agent_queue_topic,
        rules = embedded
            .config
            .rules_file
            .as_ref()
            .map_or("built-in".into(), |p| p.display().to_string()),
    );

    stop.cancelled().await;
    let Embedded { mock, pipeline, .. } = embedded;
    let result = pipeline.stop().await;
    let _ = traffic.await;
    // Tearing down the mock cluster under live clients can hang; the
    // process is exiting anyway.
    std::mem::forget(mock);
    println!("Switchboard embedded stopped.");
    result
}
