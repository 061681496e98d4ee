//! The `[broadcasts]` section of the node's configuration.

use serde::{Deserialize, Serialize};

/// Where broadcast commands go and where their progress is read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BroadcastsConfig {
    /// Commands (start, cancel), keyed by broadcast id; the workers' `broadcasts.commands_topic`.
    pub commands_topic: String,
    /// The workers' `broadcasts.progress_topic`.
    pub progress_topic: String,
    /// The workers' `broadcasts.tallies_topic`.
    pub tallies_topic: String,
    /// Most recipients listed in one `Start` request.
    pub max_listed_recipients: usize,
    /// Broadcasts whose progress the node keeps for `Get`, the least
    /// recently updated forgotten first.
    pub max_tracked: usize,
}

impl Default for BroadcastsConfig {
    fn default() -> Self {
        Self {
            commands_topic: "switchboard.broadcast-commands.v1".into(),
            progress_topic: "switchboard.broadcast-progress.v1".into(),
            tallies_topic: "switchboard.broadcast-tallies.v1".into(),
            max_listed_recipients: 10_000,
            max_tracked: 10_000,
        }
    }
}
