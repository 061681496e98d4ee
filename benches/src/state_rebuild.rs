//! `switchboard-bench state-rebuild`: how long a worker takes to rebuild
//! one partition's conversation states from the state topic, and what
//! they cost in memory and on disk.
//!
//! Preloads a one-partition compacted topic with `conversations` realistic
//! `ConversationState` records (a bot owner, the messaging window, a
//! referral on one in ten, 20 channel message ids with their offsets),
//! then times the workers' own rebuild into a fresh local store, a resumed
//! one (nothing new: the checkpoint is current), and fills the in-memory
//! cache to measure bytes per cached conversation. The topic is deleted at
//! the end.

use std::{
    num::NonZeroUsize,
    time::{Duration, Instant, SystemTime},
};

use prost::Message as _;
use rdkafka::{
    admin::{AdminClient, AdminOptions},
    client::DefaultClientContext,
    producer::{FutureProducer, FutureRecord},
};
use switchboard_proto::v1::{ConversationState, Owner, Referral};
use switchboard_runtime::kafka::KafkaConfig;
use switchboard_workers::state::PartitionStates;

/// A realistic state of conversation `i`.
fn state(i: usize, now: SystemTime) -> ConversationState {
    let at = Some(switchboard_proto::timestamp(
        now - Duration::from_secs((i % 86_400) as u64),
    ));
    ConversationState {
        owner: Owner::Bot as i32,
        last_inbound_at: at,
        referral: i.is_multiple_of(10).then(|| Referral {
            source: "ADS".into(),
            ..Default::default()
        }),
        referral_at: if i.is_multiple_of(10) { at } else { None },
        recent_message_hashes: (0..20)
            .map(|m| {
                switchboard_proto::message_id_hash(&format!(
                    "wamid.HBgLMTU1NTAxMjM0NTYVAgASGBQz{i:08}{m:02}"
                ))
            })
            .collect(),
        recent_message_offsets: (0..20).map(|m| (i * 20 + m) as i64).collect(),
        updated_at: at,
        ..Default::default()
    }
}

/// This process's resident memory and its peak, in bytes.
fn memory() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    (kb("VmRSS:"), kb("VmHWM:"))
}

/// Resets the peak resident memory (Linux), so the next peak is the
/// rebuild's own.
fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

const MIB: f64 = 1024.0 * 1024.0;

/// Runs the measurement; returns its Markdown and JSON reports.
pub async fn run(
    bootstrap: &str,
    conversations: usize,
    cached: usize,
) -> anyhow::Result<(String, serde_json::Value)> {
    let kafka = KafkaConfig {
        bootstrap_servers: bootstrap.to_owned(),
        topic_partitions: 1,
        ..Default::default()
    };
    let topic = format!("bench.state-rebuild.{}", uuid::Uuid::now_v7().simple());
    kafka
        .ensure_topics_with(&[&topic], &[("cleanup.policy", "compact")])
        .await?;
    let result = measure(&kafka, &topic, conversations, cached).await;
    let admin: AdminClient<DefaultClientContext> = kafka.client_config(&[]).create()?;
    if let Err(e) = admin.delete_topics(&[&topic], &AdminOptions::new()).await {
        tracing::warn!(error = %e, topic, "could not delete the bench topic");
    }
    result
}

async fn measure(
    kafka: &KafkaConfig,
    topic: &str,
    conversations: usize,
    cached: usize,
) -> anyhow::Result<(String, serde_json::Value)> {
    let producer: FutureProducer = kafka
        .producer_config(&[("linger.ms", "20"), ("compression.type", "lz4")])
        .create()?;
    let now = SystemTime::now();
    let started = Instant::now();
    let mut value_bytes = 0usize;
    let mut pending = Vec::with_capacity(50_000);
    for i in 0..conversations {
        let payload = state(i, now).encode_to_vec();
        value_bytes += payload.len();
        let key = format!("acme:whatsapp:+1555{i:010}");
        let record = FutureRecord::to(topic).key(&key).payload(&payload);
        pending.push(producer.send_result(record).map_err(|(e, _)| e)?);
        if pending.len() == 50_000 || i + 1 == conversations {
            for delivery in pending.drain(..) {
                delivery.await?.map_err(|(e, _)| e)?;
            }
            tracing::info!(written = i + 1, "preloading the state topic");
        }
    }
    let preload = started.elapsed();
    drop(producer);

    let dir = tempfile::tempdir()?;
    let cache = NonZeroUsize::new(cached.max(1)).unwrap_or(NonZeroUsize::MIN);
    let rebuild = |dir: std::path::PathBuf, kafka: KafkaConfig, topic: String| {
        tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let mut states = PartitionStates::open(&dir, &topic, 0, cache)?;
            let rebuilt = states.catch_up(&kafka, &topic, 0, Duration::from_secs(3600))?;
            anyhow::Ok((states, rebuilt, started.elapsed()))
        })
    };
    let (rss_before, _) = memory();
    reset_peak();
    let (states, rebuilt, took) =
        rebuild(dir.path().to_owned(), kafka.clone(), topic.to_owned()).await??;
    let (_, peak) = memory();
    let on_disk = states.on_disk()?;
    drop(states);
    let file_bytes: u64 = std::fs::read_dir(dir.path())?
        .filter_map(|e| e.ok()?.metadata().ok())
        .map(|m| m.len())
        .sum();
    let (_, resumed, resume_took) =
        rebuild(dir.path().to_owned(), kafka.clone(), topic.to_owned()).await??;

    // The in-memory cache, filled: bytes per cached conversation.
    let (dir_path, fill) = (dir.path().to_owned(), cached.min(conversations));
    let topic_ = topic.to_owned();
    let per_cached = tokio::task::spawn_blocking(move || {
        let mut states = PartitionStates::open(&dir_path, &topic_, 0, cache)?;
        let (before, _) = memory();
        let started = Instant::now();
        for i in 0..fill {
            states.get_mut(&format!("acme:whatsapp:+1555{i:010}"))?;
        }
        let misses = started.elapsed();
        let (after, _) = memory();
        anyhow::Ok((
            after.saturating_sub(before) as f64 / fill.max(1) as f64,
            misses.as_secs_f64() / fill.max(1) as f64,
        ))
    })
    .await??;
    let rate = rebuilt.applied as f64 / took.as_secs_f64();
    let json = serde_json::json!({
        "conversations": conversations,
        "state_value_bytes_avg": value_bytes / conversations.max(1),
        "preload_seconds": preload.as_secs_f64(),
        "rebuild_seconds": took.as_secs_f64(),
        "rebuild_records_per_second": rate,
        "rebuild_peak_rss_mib": peak as f64 / MIB,
        "rss_before_rebuild_mib": rss_before as f64 / MIB,
        "conversations_on_disk": on_disk,
        "disk_bytes_per_conversation": file_bytes as f64 / on_disk.max(1) as f64,
        "resume_applied": resumed.applied,
        "resume_seconds": resume_took.as_secs_f64(),
        "cached_conversations": fill,
        "memory_bytes_per_cached_conversation": per_cached.0,
        "disk_read_microseconds": per_cached.1 * 1e6,
    });
    let markdown = format!(
        "| measure | value |\n|---|---|\n\
         | conversations (one partition) | {conversations} |\n\
         | state record, average | {} B |\n\
         | rebuild from scratch | {:.1} s, {:.0} records/s |\n\
         | peak RSS during rebuild | {:.0} MiB (before: {:.0} MiB) |\n\
         | local file | {:.0} B per conversation |\n\
         | resume with a current checkpoint | {} records, {:.2} s |\n\
         | in-memory cache | {:.0} B per conversation ({fill} cached) |\n\
         | cache miss (disk read + decode) | {:.1} µs |\n",
        value_bytes / conversations.max(1),
        took.as_secs_f64(),
        rate,
        peak as f64 / MIB,
        rss_before as f64 / MIB,
        file_bytes as f64 / on_disk.max(1) as f64,
        resumed.applied,
        resume_took.as_secs_f64(),
        per_cached.0,
        per_cached.1 * 1e6,
    );
    Ok((markdown, json))
}
