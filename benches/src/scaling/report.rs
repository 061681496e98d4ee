//! The scaling run's report: one row per worker count, and the sizes.

use std::time::{Duration, Instant};

use serde::Serialize;

use super::sizes::Sizes;

/// The machine's CPU time, busy and in all, from `/proc/stat` (ticks).
#[derive(Debug, Clone, Copy)]
pub struct Machine {
    busy: u64,
    total: u64,
}

impl Machine {
    /// The first line of `/proc/stat`: user nice system idle iowait irq
    /// softirq steal; idle and iowait are not busy.
    pub fn now() -> Self {
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let ticks: Vec<u64> = stat
            .lines()
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .skip(1)
            .take(8)
            .filter_map(|t| t.parse().ok())
            .collect();
        let total = ticks.iter().sum();
        let idle = ticks.get(3).copied().unwrap_or(0) + ticks.get(4).copied().unwrap_or(0);
        Self {
            busy: total - idle.min(total),
            total,
        }
    }

    /// Percent of all cores busy between `earlier` and this.
    pub fn busy_since(&self, earlier: &Self) -> f64 {
        let total = self.total.saturating_sub(earlier.total).max(1);
        100.0 * self.busy.saturating_sub(earlier.busy) as f64 / total as f64
    }
}

/// One worker count's measurement.
#[derive(Debug, Clone, Serialize)]
pub struct WorkersRun {
    /// `switchboard-workers` processes in the group.
    pub workers: usize,
    /// Seconds from starting them to a stable group with all of them.
    pub join_seconds: f64,
    /// Analytics records already written when the group became stable
    /// (left out of the window).
    pub routed_before_window: i64,
    /// Analytics records written in the window.
    pub messages: i64,
    /// The window's length.
    pub seconds: f64,
    /// `messages / seconds`.
    pub rate_per_second: f64,
    /// This rate over the first run's (one worker, when it comes first).
    pub ratio_to_first: f64,
    /// All the workers' CPU (user + system) in the window, per message.
    pub cpu_us_per_message: f64,
    /// This CPU per message over the first run's.
    pub cpu_ratio_to_first: f64,
    /// Each worker's CPU in the window over its even share of the
    /// messages (`messages / workers`: the partitions split evenly).
    pub worker_cpu_us_per_message: Vec<f64>,
    /// Each worker's CPU in the window, in seconds.
    pub worker_cpu_seconds: Vec<f64>,
    /// All the Kafka brokers' CPU in the window, per message (with the
    /// cluster's data dir).
    pub kafka_cpu_us_per_message: Option<f64>,
    /// Percent of all cores busy in the window (every process on the machine).
    pub machine_busy_percent: f64,
    /// Records in the state topic at the end, per message routed (the
    /// states are written behind: one per changed conversation per flush).
    pub state_records_per_message: f64,
}

impl WorkersRun {
    /// A run from its window's start and end figures.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        workers: usize,
        spawned: Instant,
        (start, end): (&Instant, &Instant),
        (routed_start, routed_end): (i64, i64),
        (cpu_start, cpu_end): (&[Duration], &[Duration]),
        kafka_cpu: Option<Duration>,
        machine_busy_percent: f64,
        state_records: i64,
        first: Option<&WorkersRun>,
    ) -> Self {
        let messages = (routed_end - routed_start).max(1);
        let seconds = end.duration_since(*start).as_secs_f64().max(1e-9);
        let worker_cpu: Vec<f64> = cpu_end
            .iter()
            .zip(cpu_start)
            .map(|(e, s)| e.saturating_sub(*s).as_secs_f64())
            .collect();
        let per_message = |cpu: f64, n: f64| cpu * 1e6 / (messages as f64 / n);
        let cpu_us_per_message = per_message(worker_cpu.iter().sum(), 1.0);
        let rate_per_second = messages as f64 / seconds;
        Self {
            workers,
            join_seconds: start.duration_since(spawned).as_secs_f64(),
            routed_before_window: routed_start,
            messages,
            seconds,
            rate_per_second,
            ratio_to_first: first.map_or(1.0, |f| rate_per_second / f.rate_per_second),
            cpu_us_per_message,
            cpu_ratio_to_first: first.map_or(1.0, |f| cpu_us_per_message / f.cpu_us_per_message),
            worker_cpu_us_per_message: worker_cpu
                .iter()
                .map(|c| per_message(*c, workers as f64))
                .collect(),
            worker_cpu_seconds: worker_cpu,
            kafka_cpu_us_per_message: kafka_cpu.map(|c| per_message(c.as_secs_f64(), 1.0)),
            machine_busy_percent,
            state_records_per_message: state_records as f64 / routed_end.max(1) as f64,
        }
    }
}

/// The preload: the ingestion node's publisher (no gRPC) writing every
/// message with `acks=all`, and what it cost.
#[derive(Debug, Clone, Serialize)]
pub struct Preload {
    /// Seconds it took.
    pub seconds: f64,
    /// This process's CPU (envelopes encoded, the publisher, librdkafka) per message.
    pub publisher_cpu_us_per_message: f64,
    /// All the Kafka brokers' CPU per message written (replication included).
    pub kafka_cpu_us_per_message: Option<f64>,
}

/// The whole run.
#[derive(Debug, Clone, Serialize)]
pub struct ScalingReport {
    /// Bootstrap servers.
    pub kafka: String,
    /// Brokers whose CPU was measured.
    pub brokers: usize,
    /// Replication factor of every topic.
    pub replication: i32,
    /// Their `min.insync.replicas`.
    pub min_insync_replicas: i32,
    /// Partitions of every topic.
    pub partitions: i32,
    /// Messages preloaded and routed by each worker count.
    pub messages: usize,
    /// Conversations.
    pub conversations: usize,
    /// Text body bytes per message.
    pub payload_bytes: usize,
    /// Cores of the machine (shared by everything, Kafka too).
    pub cores: usize,
    /// The preload.
    pub preload: Preload,
    /// One per worker count, in the order run.
    pub runs: Vec<WorkersRun>,
    /// Record sizes and bytes on disk.
    pub sizes: Sizes,
}

impl ScalingReport {
    /// Markdown: the curve, then the sizes.
    pub fn markdown(&self) -> String {
        let mut out = format!(
            "### Scaling: routing workers on {} broker(s)\n\n{} messages ({} B texts) over {} conversations, {} partitions, replication {} (min.insync.replicas {}), everything routed to analytics; {} cores shared by everything. Preload (the node's publisher, no gRPC): {:.1} s, {:.1} µs of its CPU and {} µs of the brokers' per message.\n\n",
            self.brokers,
            self.messages,
            self.payload_bytes,
            self.conversations,
            self.partitions,
            self.replication,
            self.min_insync_replicas,
            self.cores,
            self.preload.seconds,
            self.preload.publisher_cpu_us_per_message,
            self.preload
                .kafka_cpu_us_per_message
                .map_or("—".into(), |c| format!("{c:.1}")),
        );
        out.push_str("| workers | join (s) | routed in window | window (s) | msg/s | × first | workers' CPU µs/msg | × first | per worker µs/msg (of its share) | Kafka CPU µs/msg (all brokers) | machine busy % | state records/msg |\n|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|\n");
        for r in &self.runs {
            out.push_str(&format!(
                "| {} | {:.1} | {} | {:.2} | {:.0} | {:.2} | {:.1} | {:.2} | {} | {} | {:.0} | {:.3} |\n",
                r.workers,
                r.join_seconds,
                r.messages,
                r.seconds,
                r.rate_per_second,
                r.ratio_to_first,
                r.cpu_us_per_message,
                r.cpu_ratio_to_first,
                r.worker_cpu_us_per_message
                    .iter()
                    .map(|c| format!("{c:.1}"))
                    .collect::<Vec<_>>()
                    .join(" / "),
                r.kafka_cpu_us_per_message
                    .map_or("—".into(), |c| format!("{c:.1}")),
                r.machine_busy_percent,
                r.state_records_per_message,
            ));
        }
        out.push('\n');
        out.push_str(&self.sizes.markdown());
        out
    }
}
