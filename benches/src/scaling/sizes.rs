//! Record sizes and bytes on disk, for the capacity model: a message as
//! preloaded, one record of each topic as Kafka holds it (key, value,
//! headers), a full conversation state encoded with prost, and the topics'
//! log segments on every broker.

use std::{path::Path, time::Duration};

use prost::Message as _;
use rdkafka::{
    Message as _,
    consumer::{BaseConsumer, Consumer as _},
    message::Headers as _,
};
use serde::Serialize;
use switchboard_proto::v1::{
    ConversationState, Envelope, Owner, Referral, Subscription, SubscriptionSource,
};
use switchboard_runtime::kafka::KafkaConfig;

/// One record's parts, in bytes.
#[derive(Debug, Clone, Serialize)]
pub struct RecordSize {
    /// What it is.
    pub what: String,
    /// Its key.
    pub key: usize,
    /// Its value (the encoded protobuf).
    pub value: usize,
    /// Its headers' names and values.
    pub headers: usize,
}

/// A topic's log segments on every broker (replicas included).
#[derive(Debug, Clone, Serialize)]
pub struct DiskUsage {
    /// What it is.
    pub what: String,
    /// Bytes of `*.log` segment files, over every broker.
    pub bytes: u64,
    /// `bytes` per message routed (one run's worth).
    pub bytes_per_message: f64,
}

/// Everything measured.
#[derive(Debug, Clone, Serialize)]
pub struct Sizes {
    /// Records, as encoded or as read back from Kafka.
    pub records: Vec<RecordSize>,
    /// Bytes on disk (with the cluster's data dir).
    pub disk: Vec<DiskUsage>,
}

impl Sizes {
    /// Markdown tables.
    pub fn markdown(&self) -> String {
        let mut out =
            String::from("| record | key B | value B | headers B |\n|---|---:|---:|---:|\n");
        for r in &self.records {
            out.push_str(&format!(
                "| {} | {} | {} | {} |\n",
                r.what, r.key, r.value, r.headers
            ));
        }
        if !self.disk.is_empty() {
            out.push_str(
                "\n| on disk (log segments, all replicas, lz4 batches) | bytes | bytes/message |\n|---|---:|---:|\n",
            );
            for d in &self.disk {
                out.push_str(&format!(
                    "| {} | {} | {:.0} |\n",
                    d.what, d.bytes, d.bytes_per_message
                ));
            }
        }
        out
    }
}

/// A conversation state as full as it gets in practice: 20 recent channel
/// message ids (WhatsApp `wamid`s, the longest) with their offsets, a
/// consent record (opted out), a referral, a human owner, and the last
/// outbound time.
pub fn full_state() -> ConversationState {
    let now = switchboard_proto::timestamp(std::time::SystemTime::now());
    ConversationState {
        owner: Owner::Human as i32,
        queue: "support-en".into(),
        agent_id: "agent-00042".into(),
        handoff_from: "faq-bot".into(),
        last_inbound_at: Some(now),
        opted_out: true,
        referral: Some(Referral {
            source: "ADS".into(),
            r#ref: "summer-sale-2026".into(),
            r#type: "OPEN_THREAD".into(),
            ad_id: "120210000000000000".into(),
        }),
        referral_at: Some(now),
        recent_message_hashes: (0..20)
            .map(|i| {
                switchboard_proto::message_id_hash(&format!(
                    "wamid.HBgLMzE2MTIzNDU2NzgVAgASGBQzQTdDMjk0RjE1QjA4NzI5RDUx{i:04}A=="
                ))
            })
            .collect(),
        updated_at: Some(now),
        recent_message_offsets: (0..20).map(|i| 1_234_567_890 + i).collect(),
        last_outbound_at: Some(now),
        subscriptions: ["news", "offers", "restock-alerts"]
            .map(|topic| Subscription {
                topic: topic.into(),
                subscribed: true,
                changed_at: Some(now),
                source: SubscriptionSource::Keyword as i32,
                detail: "JOIN NEWS".into(),
            })
            .into(),
        customer_id: "15551234567".into(),
        linked_customer: "cus-0190d3f2-8c1b-7d2e-9f4a-3b5c6d7e8f90".into(),
        customer_attributes: [("tier".to_owned(), "vip".to_owned())].into(),
        customer_conversations: vec![
            "acme/instagram/17841400000000001".into(),
            "acme/sms/+15551234567".into(),
        ],
        customer_unlinked: false,
        recent_message_ids: Vec::new(),
    }
}

/// The first record of partition 0 of `topic`, read back (10 s at most).
fn read_one(kafka: &KafkaConfig, topic: &str, what: &str) -> anyhow::Result<RecordSize> {
    let consumer: BaseConsumer = kafka
        .client_config(&[
            ("group.id", "switchboard-bench-sizes"),
            ("enable.auto.commit", "false"),
        ])
        .create()?;
    let mut partitions = rdkafka::TopicPartitionList::new();
    partitions.add_partition_offset(topic, 0, rdkafka::Offset::Beginning)?;
    consumer.assign(&partitions)?;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        if let Some(message) = consumer.poll(Duration::from_millis(500)) {
            let message = message?;
            return Ok(RecordSize {
                what: what.to_owned(),
                key: message.key().map_or(0, <[u8]>::len),
                value: message.payload().map_or(0, <[u8]>::len),
                headers: message.headers().map_or(0, |h| {
                    h.iter()
                        .map(|h| h.key.len() + h.value.map_or(0, <[u8]>::len))
                        .sum()
                }),
            });
        }
    }
    anyhow::bail!("no record read from {topic} within 10 s")
}

/// Bytes of `topic`'s `*.log` segments under every `node-*/kraft-combined-logs`
/// of `data_dir` (index files are preallocated, so they are left out).
pub(crate) fn disk_bytes(data_dir: &Path, topic: &str) -> u64 {
    let Ok(nodes) = std::fs::read_dir(data_dir) else {
        return 0;
    };
    let mut bytes = 0;
    for node in nodes.flatten() {
        let Ok(dirs) = std::fs::read_dir(node.path().join("kraft-combined-logs")) else {
            continue;
        };
        for dir in dirs.flatten() {
            let name = dir.file_name().to_string_lossy().into_owned();
            let ours = name
                .strip_prefix(topic)
                .and_then(|rest| rest.strip_prefix('-'))
                .is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
            if !ours {
                continue;
            }
            for file in std::fs::read_dir(dir.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                if file.path().extension().is_some_and(|e| e == "log") {
                    bytes += file.metadata().map_or(0, |m| m.len());
                }
            }
        }
    }
    bytes
}

/// Measures the sizes: `envelope` as preloaded, a record of the messages
/// topic and of the analytics and state topics of the run `prefix`, the
/// full state, and (with `data_dir`) the topics' bytes on disk.
pub fn measure(
    kafka: &KafkaConfig,
    envelope: &Envelope,
    messages_topic: &str,
    prefix: &str,
    data_dir: Option<&Path>,
    messages: usize,
) -> anyhow::Result<Sizes> {
    let state = full_state();
    let mut records = vec![
        RecordSize {
            what: "envelope as preloaded (encoded, prost)".into(),
            key: envelope.conversation_key().len(),
            value: envelope.encoded_len(),
            headers: 0,
        },
        read_one(kafka, messages_topic, "messages topic (as the node writes it)")?,
        read_one(
            kafka,
            &format!("{prefix}.analytics"),
            "analytics topic (AnalyticsRecord)",
        )?,
        read_one(
            kafka,
            &format!("{prefix}.state"),
            "state topic (ConversationState, as written in this run)",
        )?,
        RecordSize {
            what: "full ConversationState: 20 wamids + offsets, consent (opted out), referral, human owner (encoded, prost)".into(),
            key: "tenant-000001/whatsapp/+15551234567".len(),
            value: state.encoded_len(),
            headers: 0,
        },
    ];
    records.retain(|r| r.value > 0);
    let disk = data_dir
        .map(|dir| {
            [
                ("messages topic", messages_topic.to_owned()),
                ("analytics topic", format!("{prefix}.analytics")),
                ("state topic (before compaction)", format!("{prefix}.state")),
            ]
            .into_iter()
            .map(|(what, topic)| {
                let bytes = disk_bytes(dir, &topic);
                DiskUsage {
                    what: what.into(),
                    bytes,
                    bytes_per_message: bytes as f64 / messages.max(1) as f64,
                }
            })
            .collect()
        })
        .unwrap_or_default();
    Ok(Sizes { records, disk })
}
