//! The routing worker's configuration: its one constructor.
//!
//! Layered like the ingestion node's, later wins: defaults in code, a TOML
//! file (`--config`), `SWITCHBOARD_WORKERS_*` environment variables (nested
//! keys joined with `__`), then flags.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use switchboard_runtime::{config::load_layered, kafka::KafkaConfig};

use crate::{
    agents::config::AgentsConfig,
    broadcast::config::BroadcastsConfig,
    customers::config::CustomersConfig,
    destinations::{
        bot::BotConfig,
        topics::{self, QUEUE_SNAPSHOT_MAX_BYTES, TopicsConfig},
    },
    senders::config::SendersConfig,
};

/// Configuration of a routing worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkersConfig {
    /// How to reach Kafka.
    pub kafka: KafkaConfig,
    /// Consumer group id; all workers of one deployment share it.
    pub group_id: String,
    /// Where the routing group starts reading a partition it has no
    /// committed offset for (a new group, or offsets expired): `latest`
    /// (the default) routes only messages that arrive from then on;
    /// `earliest` routes the topic's whole retention again, to the bots
    /// too. The queue stage always starts at the earliest offset (its
    /// snapshots say what is applied), and state rebuilds read compacted
    /// topics from the beginning, whatever this says.
    pub auto_offset_reset: AutoOffsetReset,
    /// Topic the ingestion nodes publish envelopes to.
    pub messages_topic: String,
    /// Topic that receives every message with its route decision.
    pub analytics_topic: String,
    /// Topic that receives agent-bound messages, keyed by queue name.
    pub agent_queue_topic: String,
    /// Bot replies go to `<outbound_topic_prefix>.<channel>` (e.g.
    /// `switchboard.outbound.v1.whatsapp`), keyed by conversation, for the
    /// channel senders.
    pub outbound_topic_prefix: String,
    /// Dead-letter topic: messages that could not be decoded, or that a
    /// destination refused for good, with headers saying why.
    pub dlq_topic: String,
    /// Compacted topic of conversation states, keyed by conversation. It
    /// must have as many partitions as the messages topic (checked at start).
    pub state_topic: String,
    /// Outbound messages refused by consent rules, with the reason.
    pub rejections_topic: String,
    /// The agent queue a conversation goes to when a bot hands it off
    /// without naming one.
    pub handoff_queue: String,
    /// Free-form outbound messages are allowed this long after the
    /// customer's last inbound message (WhatsApp, Messenger, Instagram).
    #[serde(with = "humantime_serde")]
    pub service_window: Duration,
    /// The window for `HUMAN_AGENT`-tagged messages, and after a
    /// click-to-message ad (Messenger, Instagram).
    #[serde(with = "humantime_serde")]
    pub extended_window: Duration,
    /// Routing rules file (TOML). Without one, every message goes to the
    /// rules' default destination, analytics.
    pub rules_file: Option<PathBuf>,
    /// How often the rules file is checked for changes; a changed file is
    /// reloaded without dropping messages.
    #[serde(with = "humantime_serde")]
    pub rules_reload_interval: Duration,
    /// Bots, by the name rules use for them.
    pub bots: BTreeMap<String, BotConfig>,
    /// Most messages of one partition in flight at once. Different
    /// conversations are routed concurrently up to this bound; one
    /// conversation's messages always go one after the other.
    pub max_in_flight_per_partition: usize,
    /// Most messages in flight at once over all partitions of a worker.
    pub max_in_flight_per_worker: usize,
    /// Most messages of one partition whose records are with the producer,
    /// waiting for Kafka's acknowledgement. They cost no work, only memory
    /// (the records, kept for a resend); Kafka's answer takes a while under
    /// load, and throughput is this many messages per acknowledgement time.
    pub max_unacknowledged_per_partition: usize,
    /// Most messages of one partition finished above its oldest unfinished
    /// one. Past it the partition takes no new messages until that one
    /// finishes, so a message retried for a long time (or forever, with
    /// `max_attempts = 0`) holds its partition back instead of growing the
    /// set of finished offsets without bound. Messages waiting for their
    /// state's flush count too: half of this many start a flush before
    /// `state_flush_interval` ends.
    pub max_finished_ahead_per_partition: usize,
    /// How often changed conversation states are written to the state
    /// topic: once per conversation per flush, not once per message. A
    /// message's offset is committed only after the flush holding its
    /// state change is acknowledged, so a crash redoes up to this much more
    /// (routed again from the committed offset, reaching the same state).
    #[serde(with = "humantime_serde")]
    pub state_flush_interval: Duration,
    /// Threads of the worker's async runtime. 1 (the default) runs the
    /// consume loop, every partition's routing and the other stages on the
    /// main thread: a message is handed between them without waking
    /// another thread, which at a steady rate costs less CPU per message
    /// than a multi-threaded scheduler (benches/README.md). librdkafka's
    /// own threads come on top. A worker is scaled by processes, one per
    /// core; 0 is one thread per core, N is N threads.
    pub runtime_threads: usize,
    /// Channel message ids remembered per conversation (in its state) to
    /// drop copies that reached Kafka twice (through different ingestion
    /// nodes, or after a node's dedupe window). 0 turns this check off.
    pub recent_message_ids: usize,
    /// Where each assigned partition keeps its conversation states on
    /// local disk (one file per partition), a cache of the state topic. A
    /// persistent directory lets a restarted worker resume from its
    /// checkpoint instead of reading the whole partition again; without
    /// one, a temporary directory is used and removed at exit.
    pub state_dir: Option<PathBuf>,
    /// Conversation states kept in memory per partition, least recently
    /// used evicted first (to the disk copy, which every lookup falls back
    /// on). States not yet written stay in memory until their flush is
    /// acknowledged.
    pub max_cached_conversations_per_partition: usize,
    /// A conversation idle this long (no state change, no inbound message,
    /// no referral) and not owned by a human expires: a tombstone goes to
    /// the state topic. An opt-out survives as a minimal state. At least
    /// `service_window`, `extended_window` and every queue's `sticky_memory`.
    #[serde(with = "humantime_serde")]
    pub state_idle_expiry: Duration,
    /// A local state file not brought up to date for this long is rebuilt
    /// from the start of the state topic instead of resumed: tombstones
    /// after its checkpoint may have been compacted away. Must be below the
    /// state topic's `delete.retention.ms` (Kafka's default: 24 h).
    #[serde(with = "humantime_serde")]
    pub state_store_max_age: Duration,
    /// Delivery attempts per destination before a message goes to the
    /// dead-letter topic and its conversation moves on; 0 retries transient
    /// failures forever (the conversation waits).
    pub max_attempts: u32,
    /// First delay before retrying a destination that failed transiently;
    /// it doubles per attempt up to `retry_backoff_max`.
    #[serde(with = "humantime_serde")]
    pub retry_backoff: Duration,
    /// Longest delay between retries of one destination.
    #[serde(with = "humantime_serde")]
    pub retry_backoff_max: Duration,
    /// Address of the Prometheus `/metrics` endpoint; none disables it.
    pub metrics_addr: Option<SocketAddr>,
    /// Time allowed after the shutdown signal to finish in-flight messages.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Human-agent routing: queues, their policies and the queue stage.
    pub agents: AgentsConfig,
    /// The sender stage: providers, credentials and its own bounds.
    pub senders: SendersConfig,
    /// Broadcasts (fan-out, progress, report) and subscription keywords.
    pub broadcasts: BroadcastsConfig,
    /// One customer across channels: links, matching rules.
    pub customers: CustomersConfig,
}

/// Where a consumer group with no committed offset starts (librdkafka's
/// `auto.offset.reset`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AutoOffsetReset {
    /// The oldest message the topic still has.
    Earliest,
    /// The next message to arrive.
    #[default]
    Latest,
}

impl AutoOffsetReset {
    /// The librdkafka value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Earliest => "earliest",
            Self::Latest => "latest",
        }
    }
}

impl Default for WorkersConfig {
    fn default() -> Self {
        Self {
            kafka: KafkaConfig::default(),
            group_id: "switchboard-workers".into(),
            auto_offset_reset: AutoOffsetReset::default(),
            messages_topic: "switchboard.messages.v1".into(),
            analytics_topic: "switchboard.analytics.v1".into(),
            agent_queue_topic: "switchboard.agent-queue.v1".into(),
            dlq_topic: "switchboard.dlq.v1".into(),
            outbound_topic_prefix: "switchboard.outbound.v1".into(),
            state_topic: "switchboard.conversation-state.v1".into(),
            rejections_topic: "switchboard.rejections.v1".into(),
            handoff_queue: "support".into(),
            service_window: Duration::from_secs(24 * 3600),
            extended_window: Duration::from_secs(7 * 24 * 3600),
            rules_file: None,
            rules_reload_interval: Duration::from_secs(1),
            bots: BTreeMap::new(),
            max_in_flight_per_partition: 256,
            max_in_flight_per_worker: 4096,
            max_unacknowledged_per_partition: 4096,
            max_finished_ahead_per_partition: 30_000,
            state_flush_interval: Duration::from_secs(1),
            runtime_threads: 1,
            recent_message_ids: 20,
            state_dir: None,
            max_cached_conversations_per_partition: 50_000,
            state_idle_expiry: Duration::from_secs(8 * 24 * 3600),
            state_store_max_age: Duration::from_secs(12 * 3600),
            max_attempts: 8,
            retry_backoff: Duration::from_millis(100),
            retry_backoff_max: Duration::from_secs(5),
            metrics_addr: Some(SocketAddr::from(([127, 0, 0, 1], 9465))),
            shutdown_grace: Duration::from_secs(10),
            agents: AgentsConfig::default(),
            senders: SendersConfig::default(),
            broadcasts: BroadcastsConfig::default(),
            customers: CustomersConfig::default(),
        }
    }
}

impl WorkersConfig {
    /// The outbound topic of one channel.
    pub fn outbound_topic(&self, channel: switchboard_proto::v1::Channel) -> String {
        topics::outbound_topic(&self.outbound_topic_prefix, channel)
    }

    /// The Kafka outputs' section.
    pub fn outputs(&self) -> TopicsConfig {
        TopicsConfig {
            kafka: self.kafka.clone(),
            agent_queue_topic: self.agent_queue_topic.clone(),
            analytics_topic: self.analytics_topic.clone(),
            dlq_topic: self.dlq_topic.clone(),
            outbound_topic_prefix: self.outbound_topic_prefix.clone(),
            rejections_topic: self.rejections_topic.clone(),
            messages_topic: self.messages_topic.clone(),
            assignments_topic: self.agents.assignments_topic.clone(),
            queue_state_topic: self.agents.queue_state_topic.clone(),
        }
    }

    /// Every topic the workers write to or read from.
    pub fn topics(&self) -> Vec<String> {
        use switchboard_proto::v1::Channel;
        let mut topics = vec![
            self.messages_topic.clone(),
            self.analytics_topic.clone(),
            self.agent_queue_topic.clone(),
            self.dlq_topic.clone(),
            self.rejections_topic.clone(),
            self.state_topic.clone(),
            self.agents.assignments_topic.clone(),
            self.agents.queue_state_topic.clone(),
        ];
        topics.extend(Channel::KNOWN.map(|c| self.outbound_topic(c)));
        topics.extend([
            self.broadcasts.commands_topic.clone(),
            self.broadcasts.progress_topic.clone(),
            self.broadcasts.tallies_topic.clone(),
            self.customers.topic.clone(),
        ]);
        topics
    }

    /// Creates every topic that is missing (the state topic compacted) and
    /// checks that the state topic is partitioned like the messages topic.
    pub async fn ensure_topics(&self) -> anyhow::Result<()> {
        let topics = self.topics();
        let compacted = [
            &self.state_topic,
            &self.agents.queue_state_topic,
            &self.broadcasts.progress_topic,
            &self.broadcasts.tallies_topic,
            &self.customers.topic,
        ];
        let plain: Vec<&str> = topics
            .iter()
            .filter(|t| !compacted.contains(t))
            .map(String::as_str)
            .collect();
        self.kafka.ensure_topics(&plain).await?;
        self.kafka
            .ensure_topics_with(
                &[
                    &self.state_topic,
                    &self.broadcasts.progress_topic,
                    &self.broadcasts.tallies_topic,
                    &self.customers.topic,
                ],
                &[("cleanup.policy", "compact")],
            )
            .await?;
        self.kafka
            .ensure_topics_with(
                &[&self.agents.queue_state_topic],
                &[
                    ("cleanup.policy", "compact"),
                    ("max.message.bytes", QUEUE_SNAPSHOT_MAX_BYTES),
                ],
            )
            .await?;
        // A topic just created may take a moment to show in metadata.
        let count = |topic: String| {
            let kafka = self.kafka.clone();
            async move {
                let mut tries = 0;
                loop {
                    let kafka = kafka.clone();
                    let topic_ = topic.clone();
                    match tokio::task::spawn_blocking(move || kafka.partition_count(&topic_))
                        .await?
                    {
                        Ok(n) if n > 0 => return anyhow::Ok(n),
                        Ok(_) if tries < 30 => {}
                        Err(e) if tries < 30 => {
                            tracing::debug!(error = %e, %topic, "no metadata yet")
                        }
                        Ok(_) => anyhow::bail!("topic {topic} has no partitions"),
                        Err(e) => return Err(e),
                    }
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        };
        let (messages, state) = (
            count(self.messages_topic.clone()).await?,
            count(self.state_topic.clone()).await?,
        );
        anyhow::ensure!(
            messages == state,
            "state topic {} has {state} partitions but messages topic {} has {messages}; \
             they must match so each conversation's state sits in its messages' partition",
            self.state_topic,
            self.messages_topic
        );
        Ok(())
    }

    /// The consent rules' windows.
    pub fn consent(&self) -> crate::state::consent::ConsentPolicy {
        crate::state::consent::ConsentPolicy {
            service_window: self.service_window,
            extended_window: self.extended_window,
        }
    }

    /// The longest time anything in a conversation's state matters for:
    /// the messaging windows and every queue's sticky-agent memory.
    pub fn longest_memory(&self) -> Duration {
        std::iter::once(&self.agents.default_queue)
            .chain(self.agents.queues.values())
            .map(|q| q.sticky_memory)
            .chain([self.service_window, self.extended_window])
            .max()
            .unwrap_or_default()
    }

    /// Loads defaults, then the optional TOML file, then the environment,
    /// then `overrides` (typically the command-line flags that were given).
    pub fn load(file: Option<&Path>, overrides: impl Serialize) -> anyhow::Result<Self> {
        let config: Self = load_layered(file, "SWITCHBOARD_WORKERS_", overrides)?;
        anyhow::ensure!(
            config.max_in_flight_per_partition > 0,
            "max_in_flight_per_partition must be at least 1"
        );
        anyhow::ensure!(
            config.max_in_flight_per_worker > 0,
            "max_in_flight_per_worker must be at least 1"
        );
        anyhow::ensure!(
            config.max_unacknowledged_per_partition > 0,
            "max_unacknowledged_per_partition must be at least 1"
        );
        anyhow::ensure!(
            config.max_finished_ahead_per_partition > 0,
            "max_finished_ahead_per_partition must be at least 1"
        );
        anyhow::ensure!(
            !config.state_flush_interval.is_zero(),
            "state_flush_interval must be more than 0"
        );
        anyhow::ensure!(
            config.max_cached_conversations_per_partition > 0,
            "max_cached_conversations_per_partition must be at least 1"
        );
        anyhow::ensure!(
            !config.state_store_max_age.is_zero(),
            "state_store_max_age must be more than 0"
        );
        let longest = config.longest_memory();
        anyhow::ensure!(
            config.state_idle_expiry >= longest,
            "state_idle_expiry ({}) must be at least the longest messaging window or sticky-agent memory ({})",
            humantime::format_duration(config.state_idle_expiry),
            humantime::format_duration(longest)
        );
        anyhow::ensure!(!config.group_id.is_empty(), "group_id must not be empty");
        for (name, bot) in &config.bots {
            bot.validate()
                .map_err(|e| anyhow::anyhow!("bots.{name}: {e}"))?;
        }
        config.agents.validate()?;
        config.senders.validate()?;
        config.broadcasts.validate()?;
        config.customers.validate()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::rules::RuleSet;

    #[test]
    fn example_config_and_demo_rules_load() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let config = WorkersConfig::load(
            Some(&root.join("deploy/config/workers.example.toml")),
            serde_json::json!({}),
        )
        .unwrap();
        assert_eq!(config.bots["echo"].endpoint, "http://127.0.0.1:50061");
        assert_eq!(config.group_id, WorkersConfig::default().group_id);
        assert_eq!(config.auto_offset_reset, AutoOffsetReset::Latest);
        let bots: HashSet<&str> = config.bots.keys().map(String::as_str).collect();
        let rules = RuleSet::load(&root.join(config.rules_file.unwrap()), &bots).unwrap();
        assert_eq!(rules.bots().next(), Some("echo"));
        assert_eq!(
            config.senders,
            crate::senders::config::SendersConfig::default()
        );
        let credentials = crate::senders::config::SendersConfig {
            credentials_file: Some(root.join("deploy/config/senders-credentials.example.toml")),
            ..Default::default()
        };
        credentials.validate().unwrap();
        let tenants = credentials.credentials().unwrap();
        assert!(tenants["acme"].whatsapp.is_some() && tenants["acme"].webchat.is_some());
    }

    fn load_toml(text: &str) -> anyhow::Result<WorkersConfig> {
        let path = std::env::temp_dir().join(format!("workers-{}.toml", uuid::Uuid::now_v7()));
        std::fs::write(&path, text).unwrap();
        let config = WorkersConfig::load(Some(&path), serde_json::json!({}));
        let _ = std::fs::remove_file(path);
        config
    }

    /// The fetch tuning of docs/operations.md, "Scaling", as written there.
    #[test]
    fn consumer_properties_load_from_the_file() {
        let config = load_toml(
            "[kafka.consumer_properties]\n\"fetch.min.bytes\" = \"65536\"\n\"fetch.wait.max.ms\" = \"10\"\n",
        )
        .unwrap();
        let consumer = config.kafka.consumer_config(&[]);
        assert_eq!(consumer.get("fetch.min.bytes"), Some("65536"));
        assert_eq!(consumer.get("fetch.wait.max.ms"), Some("10"));
        assert_eq!(
            config.kafka.producer_config(&[]).get("fetch.min.bytes"),
            None
        );
    }

    #[test]
    fn auto_offset_reset_is_latest_unless_set_and_checked() {
        assert_eq!(
            load_toml("").unwrap().auto_offset_reset,
            AutoOffsetReset::Latest
        );
        assert_eq!(
            load_toml("auto_offset_reset = \"earliest\"\n")
                .unwrap()
                .auto_offset_reset,
            AutoOffsetReset::Earliest
        );
        assert!(load_toml("auto_offset_reset = \"smallest\"\n").is_err());
    }

    #[test]
    fn held_message_bytes_are_checked() {
        for bad in [0, 600_000] {
            let error = load_toml(&format!(
                "[agents.queues.support]\nheld_messages_max_bytes = {bad}\n"
            ))
            .unwrap_err();
            assert!(
                error.to_string().contains("held_messages_max_bytes"),
                "{error}"
            );
        }
        assert!(load_toml("[agents.queues.support]\nheld_messages_max_bytes = 1000\n").is_ok());
    }

    #[test]
    fn state_idle_expiry_outlasts_every_window_and_sticky_memory() {
        let config = load_toml("").unwrap();
        assert!(config.state_idle_expiry >= config.longest_memory());
        let error = load_toml("state_idle_expiry = \"2days\"\n").unwrap_err();
        assert!(error.to_string().contains("state_idle_expiry"), "{error}");
        let error = load_toml(
            "state_idle_expiry = \"9days\"\n[agents.queues.vip]\nsticky_memory = \"30days\"\n",
        )
        .unwrap_err();
        assert!(error.to_string().contains("30days"), "{error}");
        assert!(load_toml("max_cached_conversations_per_partition = 0\n").is_err());
    }

    #[test]
    fn one_runtime_thread_unless_set() {
        assert_eq!(load_toml("").unwrap().runtime_threads, 1);
        assert_eq!(
            load_toml("runtime_threads = 0\n").unwrap().runtime_threads,
            0
        );
    }

    #[test]
    fn a_bot_without_room_for_an_answer_is_refused() {
        let error = load_toml(
            "[bots.web]\nprotocol = \"http\"\nendpoint = \"http://127.0.0.1:1\"\nmax_response_bytes = 0\n",
        )
        .unwrap_err();
        assert!(error.to_string().contains("max_response_bytes"), "{error}");
    }
}
