//! The broadcast stage's configuration (`[broadcasts]`).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::state::subscriptions::KeywordConfig;

/// Broadcasts and subscription keywords.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BroadcastsConfig {
    /// Run the broadcast stage (fan-out) and the report stage in this worker.
    pub enabled: bool,
    /// Broadcast commands (start, cancel) from the ingestion nodes, keyed
    /// by broadcast id.
    pub commands_topic: String,
    /// Compacted: each broadcast's progress, keyed by broadcast id. It must
    /// have as many partitions as the commands topic.
    pub progress_topic: String,
    /// Compacted: the report stage's counts, keyed by `topic/partition` of
    /// the analytics and rejections topics counted.
    pub tallies_topic: String,
    /// Messages a second one tenant's broadcasts publish on one channel, at most.
    pub per_channel_rate: u32,
    /// Messages a second one tenant's broadcasts publish over all channels, at most.
    pub per_tenant_rate: u32,
    /// Recipients published between two progress records: a worker killed
    /// midway publishes at most this many again (the routing stage drops
    /// those copies).
    pub progress_every: usize,
    /// Recipients one broadcast may have (kept in memory while it runs).
    pub max_recipients: usize,
    /// Sent messages per counted partition whose status webhooks are
    /// awaited for the report (oldest forgotten first).
    pub max_pending_deliveries: usize,
    /// How often the report stage writes its counts.
    #[serde(with = "humantime_serde")]
    pub tally_interval: Duration,
    /// Subscription keywords, per tenant and channel.
    pub keywords: Vec<KeywordConfig>,
}

impl Default for BroadcastsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            commands_topic: "switchboard.broadcast-commands.v1".into(),
            progress_topic: "switchboard.broadcast-progress.v1".into(),
            tallies_topic: "switchboard.broadcast-tallies.v1".into(),
            per_channel_rate: 200,
            per_tenant_rate: 500,
            progress_every: 200,
            max_recipients: 1_000_000,
            max_pending_deliveries: 2_000,
            tally_interval: Duration::from_secs(1),
            keywords: Vec::new(),
        }
    }
}

impl BroadcastsConfig {
    /// Checks the bounds.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.per_channel_rate > 0 && self.per_tenant_rate > 0,
            "broadcasts.per_channel_rate and per_tenant_rate must be at least 1"
        );
        anyhow::ensure!(
            self.progress_every > 0 && self.max_recipients > 0,
            "broadcasts.progress_every and max_recipients must be at least 1"
        );
        anyhow::ensure!(
            !self.tally_interval.is_zero(),
            "broadcasts.tally_interval must be more than 0"
        );
        crate::state::subscriptions::Keywords::new(&self.keywords)?;
        Ok(())
    }
}
