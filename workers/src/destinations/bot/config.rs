use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How a bot is called.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BotProtocol {
    /// The gRPC `switchboard.v1.Bot` service.
    #[default]
    Grpc,
    /// An HTTP JSON webhook: a `POST` of the `BotRequest` in proto3 JSON,
    /// answered with a `BotResponse` in proto3 JSON (an empty body is an
    /// empty response).
    Http,
}

/// How to reach one bot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BotConfig {
    /// `grpc` (the default) or `http`.
    #[serde(default)]
    pub protocol: BotProtocol,
    /// The bot's address: a gRPC endpoint such as `http://127.0.0.1:50061`,
    /// or the webhook URL (`http://` or `https://`).
    pub endpoint: String,
    /// How long one call may take before it counts as a (retryable) failure.
    #[serde(with = "humantime_serde", default = "default_timeout")]
    pub timeout: Duration,
    /// Consecutive failed calls (timeouts, unavailable, 5xx) that open the
    /// bot's circuit: calls then fail at once, without reaching the bot,
    /// for `circuit_open_for`, after which one trial call decides whether
    /// it closes again. 0 turns the circuit breaker off.
    #[serde(default = "default_circuit_failures")]
    pub circuit_failures: u32,
    /// How long an open circuit refuses calls before a trial call.
    #[serde(with = "humantime_serde", default = "default_circuit_open_for")]
    pub circuit_open_for: Duration,
    /// HTTP bots: the longest answer read, in bytes. A longer one is
    /// refused (a fatal error) without reading the rest.
    #[serde(default = "default_max_response_bytes")]
    pub max_response_bytes: usize,
}

impl BotConfig {
    /// A bot at `endpoint`, with the default timeout and circuit breaker.
    pub fn new(protocol: BotProtocol, endpoint: impl Into<String>) -> Self {
        Self {
            protocol,
            endpoint: endpoint.into(),
            timeout: default_timeout(),
            circuit_failures: default_circuit_failures(),
            circuit_open_for: default_circuit_open_for(),
            max_response_bytes: default_max_response_bytes(),
        }
    }

    /// Checks the settings; the error names the field.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.max_response_bytes > 0,
            "max_response_bytes must be at least 1"
        );
        Ok(())
    }
}

fn default_timeout() -> Duration {
    Duration::from_secs(2)
}

fn default_circuit_failures() -> u32 {
    5
}

fn default_circuit_open_for() -> Duration {
    Duration::from_secs(10)
}

/// 1 MiB: a `BotResponse` carries a few replies, each at most an envelope.
fn default_max_response_bytes() -> usize {
    1 << 20
}
