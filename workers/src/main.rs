//! `switchboard-workers`: runs one routing worker.

use std::{net::SocketAddr, path::PathBuf, sync::Arc};

use clap::{Parser, Subcommand};
use switchboard_runtime::{config::Overrides, shutdown, telemetry, threads};
use switchboard_workers::{
    agents::service::QueueStage,
    broadcast::{report::ReportStage, service::BroadcastStage},
    config::WorkersConfig,
    consume::Worker,
    replay::{self, ReplayRequest},
    route::Router,
    senders::service::SenderStage,
};

/// Switchboard routing worker: consumes envelopes from Kafka and routes
/// them to bots, agent queues and analytics, at least once; assigns agent
/// queues' conversations to agents (unless `agents.enabled = false`); and
/// sends replies to the channels' providers (with `senders.enabled = true`);
/// publishes broadcasts and counts their reports (unless
/// `broadcasts.enabled = false`).
///
/// Settings are layered: defaults, then --config FILE, then
/// SWITCHBOARD_WORKERS_* environment variables, then these flags.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// TOML config file (see README for every key).
    #[arg(long, global = true, env = "SWITCHBOARD_WORKERS_CONFIG")]
    config: Option<PathBuf>,
    /// Routing rules file (TOML).
    #[arg(long)]
    rules_file: Option<PathBuf>,
    /// Kafka bootstrap servers [default: 127.0.0.1:9092].
    #[arg(long, global = true, env = "SWITCHBOARD_KAFKA_BOOTSTRAP")]
    kafka_bootstrap: Option<String>,
    /// Consumer group id [default: switchboard-workers].
    #[arg(long)]
    group_id: Option<String>,
    /// Prometheus /metrics address [default: 127.0.0.1:9465].
    #[arg(long)]
    metrics_addr: Option<SocketAddr>,
    /// Run only the sender stage (no routing, no queue stage), to scale
    /// senders apart; implies `senders.enabled = true`.
    #[arg(long)]
    senders_only: bool,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Copy records back through routing: the dead-letter topic (once the
    /// cause is fixed), or a time range of the messages topic. Routes
    /// nothing itself: running workers pick the copies up.
    Replay(ReplayArgs),
}

#[derive(clap::Args, Debug)]
struct ReplayArgs {
    /// What to replay.
    #[arg(long, value_enum)]
    from: ReplayFrom,
    /// Only records written at or after this time (RFC 3339, e.g. 2026-11-21T10:00:00Z).
    #[arg(long)]
    since: Option<jiff::Timestamp>,
    /// Only records written before this time (RFC 3339).
    #[arg(long)]
    until: Option<jiff::Timestamp>,
    /// At most this many records.
    #[arg(long)]
    limit: Option<u64>,
    /// Count what would be replayed, without writing anything.
    #[arg(long)]
    dry_run: bool,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum ReplayFrom {
    /// The dead-letter topic.
    Dlq,
    /// The messages topic (use --since/--until).
    Messages,
}

/// mimalloc: the system allocator's malloc and free took about 12% of the
/// ingest path's CPU (benches/README.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    let config = WorkersConfig::load(
        args.config.as_deref(),
        Overrides::default()
            .set("rules_file", args.rules_file.take())
            .set("group_id", args.group_id.take())
            .set("metrics_addr", args.metrics_addr)
            .kafka_bootstrap(args.kafka_bootstrap.take()),
    )?;
    threads::runtime(config.runtime_threads)?.block_on(run(args, config))
}

async fn run(args: Args, config: WorkersConfig) -> anyhow::Result<()> {
    let _telemetry = telemetry::init("switchboard-workers");
    let shutdown = shutdown::Shutdown::new();
    shutdown::on_signals(shutdown.clone());
    if let Some(Command::Replay(replay)) = args.command {
        let request = ReplayRequest {
            topic: match replay.from {
                ReplayFrom::Dlq => config.dlq_topic.clone(),
                ReplayFrom::Messages => config.messages_topic.clone(),
            },
            since: replay.since,
            until: replay.until,
            limit: replay.limit,
            dry_run: replay.dry_run,
        };
        anyhow::ensure!(
            matches!(replay.from, ReplayFrom::Dlq)
                || replay.since.is_some()
                || replay.until.is_some(),
            "replaying the messages topic needs --since and/or --until"
        );
        let report = tokio::select! {
            report = replay::replay(&config, &request) => report?,
            _ = shutdown.cancelled() => anyhow::bail!("replay interrupted; copies made so far stay"),
        };
        println!(
            "{} {} of {} records from {}",
            if request.dry_run {
                "would replay"
            } else {
                "replayed"
            },
            if request.dry_run {
                report.read
            } else {
                report.replayed
            },
            report.read,
            request.topic
        );
        return Ok(());
    }
    if let Some(addr) = config.metrics_addr {
        telemetry::install_metrics(addr).map_err(anyhow::Error::msg)?;
        switchboard_workers::metrics::describe();
        tracing::info!(%addr, "serving Prometheus metrics at /metrics");
    }
    // Creating topics can take a while; a signal meanwhile ends the process.
    tokio::select! {
        created = config.ensure_topics() => created?,
        _ = shutdown.cancelled() => return Ok(()),
    }
    // Any stage failing stops the others.
    let stopping = |result: anyhow::Result<()>| {
        shutdown.cancel();
        result
    };
    let senders = if config.senders.enabled || args.senders_only {
        Some(SenderStage::new(&config)?)
    } else {
        None
    };
    let send = async {
        match senders {
            Some(stage) => stopping(stage.run(shutdown.clone()).await),
            None => Ok(()),
        }
    };
    if args.senders_only {
        return send.await;
    }
    let router = Arc::new(Router::new(&config)?);
    router.spawn_rules_reloader(config.rules_reload_interval, shutdown.clone());
    let worker = Worker::new(&config, router)?;
    let queues = if config.agents.enabled {
        Some(QueueStage::new(&config)?)
    } else {
        None
    };
    let assign = async {
        match queues {
            Some(stage) => stopping(stage.run(shutdown.clone()).await),
            None => Ok(()),
        }
    };
    let broadcasts = if config.broadcasts.enabled {
        Some((BroadcastStage::new(&config)?, ReportStage::new(&config)?))
    } else {
        None
    };
    let broadcast = async {
        match broadcasts {
            Some((fanout, report)) => {
                let (published, counted) = tokio::join!(
                    async { stopping(fanout.run(shutdown.clone()).await) },
                    async { stopping(report.run(shutdown.clone()).await) },
                );
                published.and(counted)
            }
            None => Ok(()),
        }
    };
    let (routed, assigned, sent, broadcast) = tokio::join!(
        async { stopping(worker.run(shutdown.clone()).await) },
        assign,
        send,
        broadcast,
    );
    routed.and(assigned).and(sent).and(broadcast)
}
