//! `switchboard-bench`: the load generator, and the benchmark scenarios.

use std::{path::PathBuf, time::Duration};

use clap::{Parser, Subcommand};
use switchboard_benches::{
    faults::{self, FaultOptions, report::FaultReport},
    loadgen::{self, LoadOptions, Rpc, SinkSpec, Target, plot, sink::SinkFormat},
    raw_pipe,
    reconcile::{self, Until, ledger::Ledger, records::TopicNames},
    scaling::{self, ScalingOptions},
    scenarios::{self, ScenarioReport},
};
use switchboard_runtime::kafka::KafkaConfig;

/// Sends conversations to an ingestion node and reports throughput and
/// latency (HDR percentiles, per second), optionally end to end. Each
/// conversation's messages are sent in order.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Run a benchmark scenario on a real Kafka instead of loading a running
    /// node.
    #[command(subcommand)]
    scenario: Option<Scenario>,
    /// The ingestion node; several, comma-separated, share the
    /// connections (and `--retries` go to the next one).
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    target: String,
    #[command(flatten)]
    load: LoadOptions,
    /// End to end: Kafka bootstrap servers of a destination topic to watch.
    #[arg(long, requires = "sink_topic")]
    sink_kafka: Option<String>,
    /// End to end: the destination topic (e.g. switchboard.analytics).
    #[arg(long, requires = "sink_kafka")]
    sink_topic: Option<String>,
    /// End to end: how the destination topic encodes envelopes.
    #[arg(long, value_enum, default_value_t = SinkFormat::Analytics)]
    sink_format: SinkFormat,
    #[command(flatten)]
    output: Output,
}

/// Where reports go, besides Markdown on standard output.
#[derive(clap::Args, Debug)]
struct Output {
    /// Also write the report as JSON to this file.
    #[arg(long, global = true)]
    json: Option<PathBuf>,
    /// Also write the report as Markdown to this file.
    #[arg(long, global = true)]
    markdown: Option<PathBuf>,
    /// Also plot latency percentiles and throughput over time as PNG: a
    /// file for a load run, a directory for a scenario (one plot per run).
    #[arg(long, global = true)]
    plot: Option<PathBuf>,
}

impl Output {
    fn write(&self, markdown: &str, json: &impl serde::Serialize) -> anyhow::Result<()> {
        print!("{markdown}");
        if let Some(path) = &self.markdown {
            std::fs::write(path, markdown)?;
        }
        if let Some(path) = &self.json {
            std::fs::write(path, serde_json::to_string_pretty(json)?)?;
        }
        Ok(())
    }
}

/// Benchmark scenarios; each compares Switchboard with its practical limit
/// in one run (benches/README.md). Also the reconciler.
#[derive(Subcommand, Debug)]
enum Scenario {
    /// Fault scenarios on real processes and a real Kafka, each ending
    /// with the reconciler's report (benches/faults/run.sh runs them all
    /// with the Kafkas they need). Exits 1 if any scenario failed.
    Faults {
        /// The scenarios to run, comma-separated, one after the other.
        #[arg(long, value_enum, value_delimiter = ',', required = true)]
        scenarios: Vec<faults::Scenario>,
        #[command(flatten)]
        options: FaultOptions,
    },
    /// 1, 2, 3… switchboard-workers processes in one group routing the
    /// same preloaded backlog to analytics: rate, CPU per message (workers
    /// and Kafka), record sizes and bytes on disk (benches/scaling/run.sh
    /// runs it on a 3-broker cluster of its own).
    Scaling {
        #[command(flatten)]
        options: ScalingOptions,
    },
    /// Reconciles a load run's ledger (`--acked-out`) with every
    /// destination topic: lost, reordered, duplicated, delivered without an
    /// acknowledgement. Exits 1 if anything acknowledged was lost or
    /// reordered, or a conversation state regressed.
    Reconcile {
        /// Kafka bootstrap servers.
        #[arg(long, default_value = "127.0.0.1:9092")]
        kafka: String,
        /// The ledger the load generator wrote with `--acked-out`.
        #[arg(long)]
        acked: PathBuf,
        #[command(flatten)]
        topics: TopicNames,
        /// Quiet time after every acknowledged message reached analytics.
        #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
        settle: Duration,
        /// Quiet time that ends the reading anyway.
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        idle: Duration,
        /// The most the reading takes.
        #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
        deadline: Duration,
    },
    /// The raw rdkafka producer against PublishStream, PublishBatch and
    /// unary Publish through a node of its own, at saturation (closed loop)
    /// and at a steady rate (open loop), with CPU time per message.
    Ingest {
        #[command(flatten)]
        common: ScenarioArgs,
        /// Messages per closed-loop variant.
        #[arg(long, default_value_t = 300_000)]
        messages: u64,
        /// Text body size of each message, in bytes.
        #[arg(long, default_value_t = 300)]
        body_bytes: usize,
        /// Rate of the open-loop variants, per second.
        #[arg(long, alias = "unary-rate", default_value_t = 5_000.0)]
        steady_rate: f64,
        /// Length of each open-loop variant.
        #[arg(long, alias = "unary-duration", default_value = "20s", value_parser = humantime::parse_duration)]
        steady_duration: Duration,
        /// The ingestion node binary [default: switchboard-broker beside
        /// this one].
        #[arg(long)]
        broker: Option<PathBuf>,
        /// Kafka's process id (`deploy/kafka/data/kafka.pid`): each variant
        /// then also reports Kafka's CPU per message, and the machine's
        /// (generator, node and Kafka together).
        #[arg(long)]
        kafka_pid: Option<u32>,
    },
    /// A worker's conversation-state rebuild of one partition: preloads a
    /// state topic, times the rebuild (and a resume), reports rate, memory
    /// and disk per conversation. The topic is deleted at the end.
    StateRebuild {
        /// Kafka bootstrap servers.
        #[arg(long, default_value = "127.0.0.1:9092")]
        kafka: String,
        /// Conversations in the partition.
        #[arg(long, default_value_t = 1_000_000)]
        conversations: usize,
        /// Conversations the in-memory cache holds (filled to measure it).
        #[arg(long, default_value_t = 50_000)]
        cached: usize,
    },
    /// The raw rdkafka consumer and the raw pipe against a worker
    /// (`switchboard-workers` beside this binary, its own process) routing
    /// to analytics.
    Routing {
        #[command(flatten)]
        common: ScenarioArgs,
        /// Messages per variant.
        #[arg(long, default_value_t = 100_000)]
        messages: usize,
        /// Messages each variant handles before its measured window, so
        /// that the window shows a process past its start-up (its memory
        /// grown, its caches filled), as a long-running worker is; the
        /// worker's figure over every message is reported too (`cold_`).
        #[arg(long, default_value_t = 0)]
        warmup: usize,
        /// The worker's `state_flush_interval` (its default if not given):
        /// how often each conversation's state is written, which sets the
        /// state records per message and the redo window after a crash.
        #[arg(long, value_parser = humantime::parse_duration)]
        state_flush_interval: Option<std::time::Duration>,
        /// Kafka's process id (`deploy/kafka/data/kafka.pid`): the raw pipe
        /// and the worker then also report Kafka's CPU per message.
        #[arg(long)]
        kafka_pid: Option<u32>,
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
    /// End-to-end latency at fixed open-loop rates, against Kafka alone.
    Latency {
        #[command(flatten)]
        common: ScenarioArgs,
        /// Rates, per second, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "1000,5000,20000")]
        rates: Vec<f64>,
        /// Length of each run.
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        duration: Duration,
        /// How Switchboard's runs publish.
        #[arg(long, value_enum, default_value_t = Rpc::Unary)]
        rpc: Rpc,
        /// Conversations.
        #[arg(long, default_value_t = 10_000)]
        conversations: u64,
        /// Run the ingestion node and the worker each as a process of its
        /// own (`switchboard-broker` and `switchboard-workers` beside this
        /// binary), as they are deployed, and report each one's CPU per
        /// message; also run the raw pipe (`pipe`) as a process at the
        /// worker's place, the worker's baseline at each rate. By default
        /// the node and the worker run in this process, with no pipe.
        #[arg(long)]
        processes: bool,
        /// A librdkafka property for the worker's consumers and the raw
        /// pipe's (in-process, the node's too; never Kafka alone's, nor the
        /// sinks'), as `KEY=VALUE`; repeatable. E.g.
        /// `fetch.min.bytes=65536`.
        #[arg(long = "consumer-property", value_parser = key_value)]
        consumer_properties: Vec<(String, String)>,
    },
    /// The raw pipe alone, until Ctrl-C or SIGTERM: reads every partition
    /// of `--from` from its beginning, decodes each envelope and produces
    /// one analytics record per message to `--to`, storing each offset
    /// after its record's delivery report (records that are not envelopes
    /// are skipped). The latency scenario starts it at the worker's place
    /// with `--processes`.
    Pipe {
        #[command(flatten)]
        common: ScenarioArgs,
        /// The topic to read.
        #[arg(long)]
        from: String,
        /// The topic to write.
        #[arg(long)]
        to: String,
        /// A librdkafka property for its consumer, as `KEY=VALUE`;
        /// repeatable.
        #[arg(long = "consumer-property", value_parser = key_value)]
        consumer_properties: Vec<(String, String)>,
    },
    /// Twice the sustainable rate on an ingestion node, then recovery.
    Overload {
        #[command(flatten)]
        common: ScenarioArgs,
        /// Length of the closed-loop run that finds the sustainable rate.
        #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
        probe: Duration,
        /// Length of the overload.
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        duration: Duration,
        /// Length of the recovery run at half the sustainable rate.
        #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
        recovery: Duration,
        /// Conversations (more than the node's in-flight bound, so
        /// per-conversation order does not throttle the load).
        #[arg(long, default_value_t = 100_000)]
        conversations: u64,
        /// The ingestion node binary [default: switchboard-broker beside
        /// this one].
        #[arg(long)]
        broker: Option<PathBuf>,
        /// The node's dedupe cache size (`dedupe.max_entries`; 1,000,000 by
        /// default in production). Its ids are most of the node's memory, so
        /// a smaller cache lets a short run reach the ceiling.
        #[arg(long, default_value_t = 200_000)]
        dedupe_entries: usize,
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
}

impl ScenarioArgs {
    fn kafka(&self) -> KafkaConfig {
        KafkaConfig {
            bootstrap_servers: self.kafka.clone(),
            topic_partitions: self.partitions,
            ..Default::default()
        }
    }
}

/// `KEY=VALUE`, split at the first `=`.
fn key_value(arg: &str) -> Result<(String, String), String> {
    match arg.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("expected KEY=VALUE, got {arg:?}")),
    }
}

async fn run_scenario(scenario: Scenario, output: &Output) -> anyhow::Result<()> {
    let _telemetry = switchboard_runtime::telemetry::init("switchboard-bench");
    let report: ScenarioReport = match scenario {
        Scenario::Faults { scenarios, options } => {
            let mut reports = Vec::new();
            for scenario in scenarios {
                let report = faults::run(scenario, &options).await?;
                eprint!("{}", report.markdown());
                reports.push(report);
            }
            let mut markdown = String::from(FaultReport::TABLE_HEADER);
            for report in &reports {
                markdown.push_str(&report.row());
            }
            output.write(&markdown, &reports)?;
            let failed: Vec<&str> = reports
                .iter()
                .filter(|r| !r.passed())
                .map(|r| r.scenario.as_str())
                .collect();
            anyhow::ensure!(failed.is_empty(), "scenarios failed: {failed:?}");
            return Ok(());
        }
        Scenario::Scaling { options } => {
            let report = scaling::run(&options).await?;
            output.write(&report.markdown(), &report)?;
            return Ok(());
        }
        Scenario::Reconcile {
            kafka,
            acked,
            topics,
            settle,
            idle,
            deadline,
        } => {
            let ledger = Ledger::read(&acked)?;
            let kafka = KafkaConfig {
                bootstrap_servers: kafka,
                ..Default::default()
            };
            let until = Until {
                settle,
                idle,
                deadline,
            };
            let report = reconcile::reconcile(&kafka, &topics, &ledger, until).await?;
            output.write(&report.markdown(), &report)?;
            anyhow::ensure!(
                report.clean(),
                "acknowledged messages were lost or reordered"
            );
            return Ok(());
        }
        Scenario::Ingest {
            common,
            messages,
            body_bytes,
            steady_rate,
            steady_duration,
            broker,
            kafka_pid,
        } => {
            let broker = broker.unwrap_or_else(scenarios::sibling_broker);
            scenarios::ingest(
                &common.kafka(),
                &broker,
                messages,
                body_bytes,
                steady_rate,
                steady_duration,
                kafka_pid,
            )
            .await?
        }
        Scenario::StateRebuild {
            kafka,
            conversations,
            cached,
        } => {
            let (markdown, json) =
                switchboard_benches::state_rebuild::run(&kafka, conversations, cached).await?;
            output.write(&markdown, &json)?;
            return Ok(());
        }
        Scenario::Routing {
            common,
            messages,
            warmup,
            state_flush_interval,
            kafka_pid,
        } => {
            scenarios::routing(
                &common.kafka(),
                messages,
                warmup,
                state_flush_interval,
                kafka_pid,
            )
            .await?
        }
        Scenario::SlowDestination {
            common,
            conversations,
            per_conversation,
            bot_delay,
        } => {
            scenarios::slow_destination(&common.kafka(), conversations, per_conversation, bot_delay)
                .await?
        }
        Scenario::Latency {
            common,
            rates,
            duration,
            rpc,
            conversations,
            processes,
            consumer_properties,
        } => {
            scenarios::latency(
                &common.kafka(),
                &rates,
                duration,
                rpc,
                conversations,
                processes,
                &consumer_properties.into_iter().collect(),
            )
            .await?
        }
        Scenario::Pipe {
            common,
            from,
            to,
            consumer_properties,
        } => {
            let kafka = KafkaConfig {
                consumer_properties: consumer_properties.into_iter().collect(),
                ..common.kafka()
            };
            let stop = switchboard_runtime::shutdown::Shutdown::new();
            switchboard_runtime::shutdown::on_signals(stop.clone());
            let run =
                raw_pipe::run(&kafka, &from, &to, raw_pipe::Until::Stopped(stop), None).await?;
            tracing::info!(piped = run.piped, skipped = run.skipped, "raw pipe stopped");
            return Ok(());
        }
        Scenario::Overload {
            common,
            probe,
            duration,
            recovery,
            conversations,
            broker,
            dedupe_entries,
        } => {
            let broker = broker.unwrap_or_else(scenarios::sibling_broker);
            scenarios::overload(
                &common.kafka(),
                &broker,
                probe,
                duration,
                recovery,
                conversations,
                dedupe_entries,
            )
            .await?
        }
    };
    output.write(&report.markdown(), &report)?;
    if let Some(dir) = &output.plot {
        for path in report.plot(dir)? {
            eprintln!("plotted {}", path.display());
        }
    }
    Ok(())
}

async fn run_load(args: Args) -> anyhow::Result<()> {
    args.load.validate()?;
    let target = Target::connect(&args.target, args.load.connections).await?;
    let sink = args
        .sink_kafka
        .zip(args.sink_topic)
        .map(|(kafka, topic)| SinkSpec {
            kafka: KafkaConfig {
                bootstrap_servers: kafka,
                ..Default::default()
            },
            topic,
            format: args.sink_format,
        });
    let report = loadgen::run(target, args.load, sink).await?;
    args.output.write(&report.markdown(), &report)?;
    if let Some(path) = &args.output.plot {
        plot::write_png(&report, "switchboard-bench", path, (1000, 900))?;
        eprintln!("plotted {}", path.display());
    }
    let lost = report
        .end_to_end
        .as_ref()
        .map_or(0, |e| e.lost + e.order_violations);
    anyhow::ensure!(
        report.errors.is_empty() && lost == 0,
        "not every message made it: errors {:?}, end to end {:?}",
        report.errors,
        report
            .end_to_end
            .as_ref()
            .map(|e| (e.lost, e.order_violations))
    );
    Ok(())
}

/// mimalloc: the system allocator's malloc and free took about 12% of the
/// ingest path's CPU (benches/README.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() {
    let mut args = Args::parse();
    let result = match args.scenario.take() {
        Some(scenario) => run_scenario(scenario, &args.output).await,
        None => run_load(args).await,
    };
    // Exit at once: on an error, dropping half-used Kafka clients can block
    // the runtime's shutdown, and the error would never show.
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
    std::process::exit(0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_value_splits_at_the_first_equals_sign() {
        assert_eq!(
            key_value("fetch.min.bytes=65536"),
            Ok(("fetch.min.bytes".into(), "65536".into()))
        );
        assert_eq!(key_value("a=b=c"), Ok(("a".into(), "b=c".into())));
        assert_eq!(key_value("a="), Ok(("a".into(), String::new())));
        for bad in ["fetch.min.bytes", "=1", ""] {
            let err = key_value(bad).unwrap_err();
            assert!(err.contains("KEY=VALUE"), "{bad}: {err}");
        }
    }

    #[test]
    fn pipe_takes_its_topics_and_consumer_properties() {
        let args = Args::try_parse_from([
            "switchboard-bench",
            "pipe",
            "--from",
            "in",
            "--to",
            "out",
            "--consumer-property",
            "fetch.wait.max.ms=10",
        ])
        .unwrap();
        let Some(Scenario::Pipe {
            from,
            to,
            consumer_properties,
            ..
        }) = args.scenario
        else {
            panic!("not the pipe");
        };
        assert_eq!((from.as_str(), to.as_str()), ("in", "out"));
        assert_eq!(
            consumer_properties,
            [("fetch.wait.max.ms".to_owned(), "10".to_owned())]
        );
        assert!(Args::try_parse_from(["switchboard-bench", "pipe", "--from", "in"]).is_err());
    }

    #[test]
    fn latency_takes_consumer_properties() {
        let args = Args::try_parse_from([
            "switchboard-bench",
            "latency",
            "--processes",
            "--consumer-property",
            "fetch.min.bytes=65536",
            "--consumer-property",
            "fetch.wait.max.ms=10",
        ])
        .unwrap();
        let Some(Scenario::Latency {
            processes,
            consumer_properties,
            ..
        }) = args.scenario
        else {
            panic!("not the latency scenario");
        };
        assert!(processes);
        assert_eq!(consumer_properties.len(), 2);
        assert!(
            Args::try_parse_from(["switchboard-bench", "latency", "--consumer-property", "x"])
                .is_err()
        );
    }
}
