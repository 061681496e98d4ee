use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How to reach one bot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BotConfig {
    /// The bot's gRPC endpoint, e.g. `http://127.0.0.1:50061`.
    pub endpoint: String,
    /// How long one call may take before it counts as a (retryable) failure.
    #[serde(with = "humantime_serde", default = "default_timeout")]
    pub timeout: Duration,
}

fn default_timeout() -> Duration {
    Duration::from_secs(2)
}
