//! Scaling: 1, 2, 3… `switchboard-workers` processes in one consumer group
//! routing the same preloaded backlog to analytics, each count on topics
//! and a group of its own. Measures the routing rate, the workers' CPU per
//! message (from `/proc/<pid>/stat`), the Kafka brokers' CPU per message
//! and how busy the machine was, plus the record sizes and bytes on disk
//! that docs/capacity.md builds on. `benches/scaling/run.sh` runs it on a
//! 3-broker cluster of its own.
//!
//! The window measured starts once the group is stable with every worker
//! in it (what was routed before, while they joined, is left out) and ends
//! when the analytics topic holds as many records as were preloaded.

pub mod report;
pub mod sizes;
#[cfg(test)]
mod tests;

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use switchboard_proto::v1::Envelope;
use switchboard_runtime::kafka::KafkaConfig;

use self::report::{Machine, Preload, ScalingReport, WorkersRun};
use crate::{
    faults::{
        processes::{self, Proc, Worker, WorkerSetup},
        wait_for_group,
    },
    pipeline::PipelineConfig,
    scenarios::{TopicCounter, cpu_of},
};

/// `switchboard-bench scaling`'s options.
#[derive(Debug, Clone, clap::Args)]
pub struct ScalingOptions {
    /// Kafka bootstrap servers (a cluster of its own: benches/scaling/run.sh).
    #[arg(long, default_value = "127.0.0.1:9092")]
    pub kafka: String,
    /// Replication factor of every topic (`min.insync.replicas` is 2 from 2 up).
    #[arg(long, default_value_t = 3)]
    pub replication: i32,
    /// Partitions of every topic.
    #[arg(long, default_value_t = 12)]
    pub partitions: i32,
    /// Messages preloaded, and routed by each worker count.
    #[arg(long, default_value_t = 300_000)]
    pub messages: usize,
    /// Conversations the messages are spread over.
    #[arg(long, default_value_t = 10_000)]
    pub conversations: usize,
    /// Text body of each message, in bytes.
    #[arg(long, default_value_t = 300)]
    pub payload_bytes: usize,
    /// Worker counts, run one after the other (`1,2,3,1` repeats the first
    /// as a check on the machine's drift).
    #[arg(long, value_delimiter = ',', default_value = "1,2,3")]
    pub workers: Vec<usize>,
    /// The cluster's KAFKA_DATA_DIR (deploy/kafka): its brokers' CPU (from
    /// `node-N/kafka.pid`) and the topics' bytes on disk are measured too.
    #[arg(long)]
    pub kafka_data_dir: Option<PathBuf>,
    /// Folder of the switchboard-workers binary [default: this executable's].
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    /// Where the workers' configs and logs go.
    #[arg(long, default_value = "target/scaling")]
    pub out: PathBuf,
    /// The most one worker count may take to route the backlog.
    #[arg(long, default_value = "300s", value_parser = humantime::parse_duration)]
    pub deadline: Duration,
}

/// What the machine and the processes had used by one moment.
struct Snapshot {
    at: Instant,
    routed: i64,
    workers: Vec<Duration>,
    kafka: Duration,
    machine: Machine,
}

fn snapshot(counter: &TopicCounter, workers: &[u32], kafka: &[u32]) -> Snapshot {
    Snapshot {
        at: Instant::now(),
        routed: counter.count(),
        workers: workers.iter().map(|p| cpu_of(&p.to_string())).collect(),
        kafka: kafka.iter().map(|p| cpu_of(&p.to_string())).sum(),
        machine: Machine::now(),
    }
}

/// The brokers' process ids, from `node-N/kafka.pid` (deploy/kafka).
fn kafka_pids(data_dir: Option<&Path>) -> Vec<u32> {
    let Some(dir) = data_dir else {
        return Vec::new();
    };
    (1..=9)
        .filter_map(|n| std::fs::read_to_string(dir.join(format!("node-{n}/kafka.pid"))).ok())
        .filter_map(|pid| pid.trim().parse().ok())
        .collect()
}

/// `conversations` conversations of `payload_bytes`-byte texts, interleaved,
/// each with the ids and times an ingestion node gives a message.
fn workload(messages: usize, conversations: usize, payload_bytes: usize) -> Vec<Envelope> {
    let now = switchboard_proto::timestamp(std::time::SystemTime::now());
    crate::scenarios::workload(
        conversations,
        messages.div_ceil(conversations),
        payload_bytes,
    )
    .into_iter()
    .take(messages)
    .enumerate()
    .map(|(i, envelope)| Envelope {
        message_id: uuid::Uuid::now_v7().to_string(),
        channel_message_id: format!("sb-scaling-{i}-{}", now.seconds * 1_000_000),
        sent_at: Some(now),
        received_at: Some(now),
        ..envelope
    })
    .collect()
}

/// Runs every worker count in `options.workers` over its own copy of the
/// consumer group and output topics, all reading one preloaded topic.
pub async fn run(options: &ScalingOptions) -> anyhow::Result<ScalingReport> {
    let id = &uuid::Uuid::now_v7().simple().to_string()[24..];
    let dir = options.out.join(format!("scaling-{id}"));
    std::fs::create_dir_all(&dir)?;
    let bin = processes::binaries(options.bin_dir.clone());
    let kafka = KafkaConfig {
        bootstrap_servers: options.kafka.clone(),
        topic_partitions: options.partitions,
        topic_replication: options.replication,
        ..Default::default()
    };
    let messages_topic = format!("scaling-{id}.messages");
    kafka.ensure_topics(&[&messages_topic]).await?;
    let envelopes = workload(
        options.messages,
        options.conversations,
        options.payload_bytes,
    );
    tracing::info!(messages = envelopes.len(), topic = %messages_topic, "preloading");
    let kafka_pids = kafka_pids(options.kafka_data_dir.as_deref());
    let kafka_cpu = || {
        kafka_pids
            .iter()
            .map(|p| cpu_of(&p.to_string()))
            .sum::<Duration>()
    };
    let (preload, own_cpu, brokers_cpu) = (Instant::now(), cpu_of("self"), kafka_cpu());
    PipelineConfig {
        messages_topic: messages_topic.clone(),
        ..PipelineConfig::new(kafka.clone())
    }
    .preload(&envelopes)
    .await?;
    let per_message = |cpu: Duration| cpu.as_secs_f64() * 1e6 / envelopes.len().max(1) as f64;
    let preload = Preload {
        seconds: preload.elapsed().as_secs_f64(),
        publisher_cpu_us_per_message: per_message(cpu_of("self").saturating_sub(own_cpu)),
        kafka_cpu_us_per_message: (!kafka_pids.is_empty())
            .then(|| per_message(kafka_cpu().saturating_sub(brokers_cpu))),
    };
    let target = options.messages as i64;

    let mut runs: Vec<WorkersRun> = Vec::new();
    for (i, &count) in options.workers.iter().enumerate() {
        let prefix = format!("scaling-{id}-{i}-{count}w");
        let setup = WorkerSetup {
            kafka: &options.kafka,
            replication: options.replication,
            partitions: options.partitions,
            prefix: &prefix,
            messages_topic: &messages_topic,
            rules: None,
        };
        tracing::info!(workers = count, group = %prefix, "routing");
        let spawned = Instant::now();
        let mut workers: Vec<Proc> = (0..count)
            .map(|n| {
                let name = format!("{prefix}-worker-{n}");
                let config = setup.write_config(&dir, &name, &[])?;
                Worker::spawn(&bin, &name, &dir, &config)
            })
            .collect::<anyhow::Result<_>>()?;
        let pids: Vec<u32> = workers.iter().map(Proc::pid).collect::<Result<_, _>>()?;
        let measured = async {
            wait_for_group(&options.kafka, &prefix, count).await?;
            let counter = TopicCounter::new(&kafka, &format!("{prefix}.analytics"))?;
            let start = snapshot(&counter, &pids, &kafka_pids);
            let deadline = spawned + options.deadline;
            let mut end = snapshot(&counter, &pids, &kafka_pids);
            while end.routed < target {
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "{count} worker(s) routed {} of {target} messages within {:?}",
                    end.routed,
                    options.deadline
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
                end = snapshot(&counter, &pids, &kafka_pids);
            }
            let state = TopicCounter::new(&kafka, &format!("{prefix}.state"))?.count();
            Ok::<_, anyhow::Error>((start, end, state))
        }
        .await;
        for worker in &mut workers {
            worker.stop(Duration::from_secs(15)).await?;
        }
        let (start, end, state_records) = measured?;
        let run = WorkersRun::new(
            count,
            spawned,
            (&start.at, &end.at),
            (start.routed, end.routed),
            (&start.workers, &end.workers),
            (!kafka_pids.is_empty()).then(|| end.kafka.saturating_sub(start.kafka)),
            end.machine.busy_since(&start.machine),
            state_records,
            runs.first(),
        );
        tracing::info!(
            workers = count,
            rate = format!("{:.0}/s", run.rate_per_second),
            cpu_us_per_message = format!("{:.1}", run.cpu_us_per_message),
            "measured"
        );
        runs.push(run);
    }

    let last = runs.len().saturating_sub(1);
    let sizes = sizes::measure(
        &kafka,
        &envelopes[0],
        &messages_topic,
        &format!(
            "scaling-{id}-{last}-{}w",
            options.workers.last().copied().unwrap_or(1)
        ),
        options.kafka_data_dir.as_deref(),
        options.messages,
    )?;
    Ok(ScalingReport {
        kafka: options.kafka.clone(),
        brokers: kafka_pids.len(),
        replication: options.replication,
        min_insync_replicas: kafka.min_insync_replicas(),
        partitions: options.partitions,
        messages: options.messages,
        conversations: options.conversations,
        payload_bytes: options.payload_bytes,
        cores: std::thread::available_parallelism().map_or(0, usize::from),
        preload,
        runs,
        sizes,
    })
}
