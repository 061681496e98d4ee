//! Fault scenarios: real processes (two ingestion nodes, two routing
//! workers, the load generator and a bot) on a real Kafka, one fault
//! injected mid-load, then the [reconciler](crate::reconcile)'s report.
//!
//! Every scenario sends open-loop unary publishes with retries (the same
//! message, same channel message id, on the other node), over its own set
//! of topics (`faults-<scenario>-<id>.*`, the workers' group likewise),
//! waits for the load to end, reconciles, and stops what it started. Its
//! folder under `--out` keeps the processes' logs, the ledger and the
//! report. `benches/faults/run.sh` runs them all, with the Kafkas they need.
//!
//! | scenario | fault |
//! |---|---|
//! | `ingest-kill` | `kill -9` one ingestion node at 30 %, start it again at 60 % |
//! | `worker-kill` | `kill -9` one of two workers at 30 %, start it again at 60 % |
//! | `worker-stop` | SIGSTOP one worker at 25 % for `--freeze` (past the 10 s session timeout), then SIGCONT |
//! | `broker-kill` | `kill -9` Kafka broker 2 of 3 at 30 %, start it again at 50 % |
//! | `kafka-restart` | stop the (one-broker) Kafka at 30 %, start it again 5 s later |
//! | `bot-outage` | one tenant's bot fails every call for 10 s from 30 % |

pub mod bot;
pub mod processes;
pub mod report;

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use switchboard_runtime::kafka::KafkaConfig;
use tokio_util::sync::CancellationToken;

use self::{
    bot::FaultBot,
    processes::{Node, Proc, Worker, WorkerSetup, kafka_broker},
    report::{FaultReport, LoadOutcome, Throughput},
};
use crate::{
    loadgen::{self, Rpc, Target},
    reconcile::{self, Until, ledger::Ledger, records::TopicNames},
};

/// The scenarios.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// `kill -9` an ingestion node mid-stream, then start it again.
    IngestKill,
    /// `kill -9` one of two workers mid-load, then start it again.
    WorkerKill,
    /// SIGSTOP a worker past its session timeout, then SIGCONT.
    WorkerStop,
    /// `kill -9` one of three Kafka brokers, then start it again.
    BrokerKill,
    /// Restart the whole (one-broker) Kafka.
    KafkaRestart,
    /// One tenant's bot fails every call for 10 s, then recovers.
    BotOutage,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Self::IngestKill => "ingest-kill",
            Self::WorkerKill => "worker-kill",
            Self::WorkerStop => "worker-stop",
            Self::BrokerKill => "broker-kill",
            Self::KafkaRestart => "kafka-restart",
            Self::BotOutage => "bot-outage",
        }
    }
}

/// A scenario run's settings; also `switchboard-bench faults`' options.
#[derive(Debug, Clone, clap::Args)]
pub struct FaultOptions {
    /// Kafka bootstrap servers.
    #[arg(long, default_value = "127.0.0.1:9092")]
    pub kafka: String,
    /// Replication factor of the topics (3 on a three-broker cluster).
    #[arg(long, default_value_t = 1)]
    pub replication: i32,
    /// The deploy/kafka scripts (`broker.sh` kills and starts brokers of
    /// the Kafka that KAFKA_PORT and KAFKA_DATA_DIR name).
    #[arg(long, default_value = "deploy/kafka")]
    pub kafka_scripts: PathBuf,
    /// Folder of the switchboard-broker and switchboard-workers binaries
    /// [default: this executable's].
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    /// Where each run's folder (logs, ledger, report) goes.
    #[arg(long, default_value = "target/faults")]
    pub out: PathBuf,
    /// Publishes per second.
    #[arg(long, default_value_t = 300.0)]
    pub rate: f64,
    /// Length of the load.
    #[arg(long, default_value = "40s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Conversations.
    #[arg(long, default_value_t = 200)]
    pub conversations: u64,
    /// How long `worker-stop` keeps the worker stopped.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    pub freeze: Duration,
}

/// Routing workers per scenario.
const WORKERS: usize = 2;

/// What worker 1 did right after it was resumed, before it could rejoin
/// its group: bot calls in the first second, and how many of those
/// messages worker 0 (the partitions' new owner) also sent to a bot.
fn zombie_calls(steady: &[FaultBot], flaky: &[FaultBot], resumed: f64) -> String {
    let calls = |worker: usize| -> Vec<(f64, String)> {
        steady[worker]
            .calls()
            .into_iter()
            .chain(flaky[worker].calls())
            .collect()
    };
    let owner: std::collections::HashSet<String> = calls(0).into_iter().map(|(_, id)| id).collect();
    let zombie: Vec<String> = calls(1)
        .into_iter()
        .filter(|(at, _)| *at >= resumed && *at < resumed + 1.0)
        .map(|(_, id)| id)
        .collect();
    let both = zombie.iter().filter(|id| owner.contains(*id)).count();
    format!(
        "worker-1 called its bots {} times in the second after SIGCONT; {both} of those messages were also routed by worker-0",
        zombie.len()
    )
}

/// Tenant of the conversations the `flaky` bot serves (`bot-outage`).
const FLAKY_TENANT: &str = "faults-1";

/// The longest run of seconds without an acknowledgement between the first
/// second with one and the last.
fn longest_stall(timeline: &[crate::loadgen::report::Second]) -> u64 {
    let acked: Vec<bool> = timeline.iter().map(|s| s.ok > 0).collect();
    let (Some(first), Some(last)) = (
        acked.iter().position(|a| *a),
        acked.iter().rposition(|a| *a),
    ) else {
        return 0;
    };
    acked[first..=last]
        .split(|a| *a)
        .map(|gap| gap.len() as u64)
        .max()
        .unwrap_or(0)
}

/// Waits until consumer group `group` is stable with `members` members
/// (two minutes at most).
pub(crate) async fn wait_for_group(kafka: &str, group: &str, members: usize) -> anyhow::Result<()> {
    use rdkafka::consumer::{BaseConsumer, Consumer as _};
    let admin: BaseConsumer = KafkaConfig {
        bootstrap_servers: kafka.to_owned(),
        ..Default::default()
    }
    .client_config(&[])
    .create()?;
    let group = group.to_owned();
    tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let stable = admin
                .fetch_group_list(Some(&group), Duration::from_secs(5))
                .ok()
                .and_then(|list| {
                    list.groups()
                        .first()
                        .map(|g| g.state() == "Stable" && g.members().len() == members)
                })
                .unwrap_or(false);
            if stable {
                return Ok(());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "the workers did not form a stable group of {members} within 2 minutes"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    })
    .await?
}

/// Runs `scenario` and reports. Errors only when the scenario could not
/// run; what it found is in the report.
pub async fn run(scenario: Scenario, options: &FaultOptions) -> anyhow::Result<FaultReport> {
    let id = &uuid::Uuid::now_v7().simple().to_string()[24..];
    let prefix = format!("faults-{}-{id}", scenario.name());
    let dir = options.out.join(&prefix);
    std::fs::create_dir_all(&dir)?;
    let bin = processes::binaries(options.bin_dir.clone());
    let stop_bots = CancellationToken::new();
    let _stop_bots = stop_bots.clone().drop_guard();
    // Each worker calls bots of its own (one for each bot name), so the
    // bots' calls say which worker routed which message, and when.
    let clock = Instant::now();
    let mut steady = Vec::new();
    let mut flaky = Vec::new();
    let rules = dir.join("rules.toml");
    std::fs::write(
        &rules,
        format!(
            "default = [{{ bot = \"steady\" }}]\n\n[[rules]]\nid = \"flaky-tenant\"\ntenants = [\"{FLAKY_TENANT}\"]\ndestinations = [{{ bot = \"flaky\" }}]\n"
        ),
    )?;
    let topic = format!("{prefix}.messages");
    let setup = WorkerSetup {
        kafka: &options.kafka,
        replication: options.replication,
        partitions: processes::PARTITIONS,
        prefix: &prefix,
        messages_topic: &topic,
        rules: Some(&rules),
    };
    let mut configs = Vec::new();
    for n in 0..WORKERS {
        let (bot, steady_endpoint) = FaultBot::serve(clock, stop_bots.clone()).await?;
        steady.push(bot);
        let (bot, flaky_endpoint) = FaultBot::serve(clock, stop_bots.clone()).await?;
        flaky.push(bot);
        configs.push(setup.write_config(
            &dir,
            &format!("worker-{n}"),
            &[("steady", steady_endpoint), ("flaky", flaky_endpoint)],
        )?);
    }
    let now = || clock.elapsed().as_secs_f64();
    // Topics first, so neither process races the other to create them.
    KafkaConfig {
        bootstrap_servers: options.kafka.clone(),
        topic_replication: options.replication,
        topic_partitions: processes::PARTITIONS,
        ..Default::default()
    }
    .ensure_topics(&[&topic])
    .await?;
    let mut nodes = Vec::new();
    for n in 0..2 {
        nodes.push(
            Node::spawn(
                &bin.join("switchboard-broker"),
                &format!("node-{n}"),
                &dir,
                &options.kafka,
                &topic,
                &[
                    ("KAFKA__TOPIC_REPLICATION", options.replication.to_string()),
                    ("KAFKA__TOPIC_PARTITIONS", processes::PARTITIONS.to_string()),
                ],
            )
            .await?,
        );
    }
    let mut workers: Vec<Proc> = configs
        .iter()
        .enumerate()
        .map(|(n, config)| Worker::spawn(&bin, &format!("worker-{n}"), &dir, config))
        .collect::<anyhow::Result<_>>()?;
    // The load starts once both workers share the partitions, so the
    // fault is the only thing that moves them.
    wait_for_group(&options.kafka, &prefix, workers.len()).await?;

    let ledger_path = dir.join("ledger.csv");
    let addresses: Vec<&str> = nodes.iter().map(|n| n.address.as_str()).collect();
    let target = Target::connect(&addresses.join(","), 2).await?;
    let load = loadgen::LoadOptions {
        rate: Some(options.rate),
        duration: Some(options.duration),
        connections: 2,
        tenants: if scenario == Scenario::BotOutage {
            2
        } else {
            1
        },
        tenant: "faults".into(),
        retries: 40,
        drain_timeout: Duration::from_secs(90),
        acked_out: Some(ledger_path.clone()),
        ..crate::scenarios::load(Rpc::Unary, options.conversations, 200)
    };
    let started = Instant::now();
    let loading = tokio::spawn(loadgen::run(target, load, None));
    let mut events = Vec::new();
    let mut event = |what: String| {
        tracing::info!("{what}");
        events.push(format!("{:.1} s: {what}", started.elapsed().as_secs_f64()));
    };
    let at = |fraction: f64| started + options.duration.mul_f64(fraction);
    let sleep_until = |instant: Instant| tokio::time::sleep_until(instant.into());
    let kafka_log = dir.join("kafka.log");
    let mut outage = None;
    let mut resumed = None;
    match scenario {
        Scenario::IngestKill => {
            sleep_until(at(0.3)).await;
            nodes[0].proc.kill().await?;
            event("kill -9 ingestion node-0".into());
            sleep_until(at(0.6)).await;
            nodes[0].proc.start()?;
            nodes[0].wait_serving().await?;
            event("node-0 started again and serving".into());
        }
        Scenario::WorkerKill => {
            sleep_until(at(0.3)).await;
            workers[1].kill().await?;
            event("kill -9 worker-1".into());
            sleep_until(at(0.6)).await;
            workers[1].start()?;
            event("worker-1 started again".into());
        }
        Scenario::WorkerStop => {
            sleep_until(at(0.25)).await;
            workers[1].signal("STOP").await?;
            event(format!("SIGSTOP worker-1 for {:?}", options.freeze));
            tokio::time::sleep(options.freeze).await;
            workers[1].signal("CONT").await?;
            resumed = Some(now());
            event("SIGCONT worker-1".into());
        }
        Scenario::BrokerKill => {
            sleep_until(at(0.3)).await;
            kafka_broker(&options.kafka_scripts, &kafka_log, &["kill", "2"]).await?;
            event("kill -9 Kafka broker 2 of 3".into());
            sleep_until(at(0.5)).await;
            kafka_broker(&options.kafka_scripts, &kafka_log, &["start", "2"]).await?;
            event("Kafka broker 2 started again and ready".into());
        }
        Scenario::KafkaRestart => {
            sleep_until(at(0.3)).await;
            kafka_broker(&options.kafka_scripts, &kafka_log, &["stop", "1"]).await?;
            event("Kafka (one broker) stopped".into());
            tokio::time::sleep(Duration::from_secs(5)).await;
            kafka_broker(&options.kafka_scripts, &kafka_log, &["start", "1"]).await?;
            event("Kafka started again and ready".into());
        }
        Scenario::BotOutage => {
            sleep_until(at(0.3)).await;
            let from = now();
            flaky.iter().for_each(|bot| bot.set_failing(true));
            event(format!("bot of tenant {FLAKY_TENANT} fails every call"));
            tokio::time::sleep(Duration::from_secs(10)).await;
            flaky.iter().for_each(|bot| bot.set_failing(false));
            event("the bot answers again".into());
            outage = Some((from, now()));
        }
    }
    let load = loading.await??;
    event(format!(
        "load ended: {} sent, {} acknowledged",
        load.sent, load.acked
    ));
    let ledger = Ledger::read(&ledger_path)?;
    let kafka = KafkaConfig {
        bootstrap_servers: options.kafka.clone(),
        ..Default::default()
    };
    let reconciliation = reconcile::reconcile(
        &kafka,
        &TopicNames::prefixed(&prefix),
        &ledger,
        Until {
            settle: Duration::from_secs(3),
            idle: Duration::from_secs(45),
            deadline: Duration::from_secs(240),
        },
    )
    .await?;
    let end = now();
    if let Some(resumed) = resumed {
        event(zombie_calls(&steady, &flaky, resumed));
    }
    for (name, proc) in workers.iter_mut().enumerate() {
        if !proc.stop(Duration::from_secs(20)).await? {
            event(format!("worker-{name} did not stop cleanly"));
        }
    }
    for (name, node) in nodes.iter_mut().enumerate() {
        if !node.proc.stop(Duration::from_secs(20)).await? {
            event(format!("node-{name} did not stop cleanly"));
        }
    }
    let mut failures = Vec::new();
    if reconciliation.lost > 0 {
        failures.push(format!(
            "{} acknowledged messages lost",
            reconciliation.lost
        ));
    }
    if reconciliation.order_violations > 0 {
        failures.push(format!(
            "{} order violations",
            reconciliation.order_violations
        ));
    }
    if reconciliation.missing_from_analytics > 0 {
        failures.push(format!(
            "{} acknowledged messages never reached the analytics topic (though delivered elsewhere)",
            reconciliation.missing_from_analytics
        ));
    }
    if reconciliation.state_regressions > 0 {
        failures.push(format!(
            "{} conversation states written over newer ones",
            reconciliation.state_regressions
        ));
    }
    if load.acked == 0 {
        failures.push("nothing was acknowledged".into());
    }
    let throughput = outage.map(|(from, to)| {
        let rate = |a: f64, b: f64| steady.iter().map(|bot| bot.rate(a, b)).sum::<f64>();
        let t = Throughput {
            before: rate(from - 10.0, from),
            during: rate(from, to),
            after: rate(to, end.min(to + 10.0)),
            dead_lettered: reconciliation
                .topics
                .iter()
                .filter(|t| t.kind == reconcile::records::Kind::Dlq)
                .map(|t| t.messages)
                .sum(),
        };
        if t.during < 0.8 * t.before {
            failures.push(format!(
                "the healthy bot's throughput fell from {:.0}/s to {:.0}/s during the outage",
                t.before, t.during
            ));
        }
        if t.dead_lettered == 0 {
            failures.push("no message of the failing bot was dead-lettered".into());
        }
        t
    });
    let report = FaultReport {
        scenario: scenario.name().into(),
        events,
        load: LoadOutcome {
            sent: load.sent,
            acked: load.acked,
            errors: load.errors,
            retries: load.retries,
            acked_rate: load.acked_rate,
            longest_stall_seconds: longest_stall(&load.timeline),
            p99_ms: load.latency_ms.p99,
        },
        reconciliation,
        throughput,
        failures,
    };
    std::fs::write(dir.join("report.md"), report.markdown())?;
    std::fs::write(
        dir.join("report.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    Ok(report)
}
