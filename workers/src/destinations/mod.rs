//! Destinations, one folder per kind.
//!
//! - [`bot`]: a gRPC `switchboard.v1.Bot` service, called with a timeout.
//! - [`topics`]: the Kafka outputs: the agent-queue topic (keyed by queue),
//!   the analytics and per-channel outbound topics (keyed by conversation)
//!   and the dead-letter topic.
//!
//! Every delivery error says whether a retry may help.

pub mod bot;
pub mod topics;

/// The kinds of destination, for the `kind` label of destination metrics.
#[derive(Debug, Clone, Copy)]
pub enum DestinationKind {
    Bot,
    Agent,
    Analytics,
    Outbound,
    Dlq,
    Rejections,
}

impl DestinationKind {
    /// Every kind, for metric labels.
    pub const ALL: [Self; 6] = [
        Self::Bot,
        Self::Agent,
        Self::Analytics,
        Self::Outbound,
        Self::Dlq,
        Self::Rejections,
    ];

    /// The `kind` metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Bot => "bot",
            Self::Agent => "agent",
            Self::Analytics => "analytics",
            Self::Outbound => "outbound",
            Self::Dlq => "dlq",
            Self::Rejections => "rejections",
        }
    }
}

/// A failed delivery.
#[derive(Debug, thiserror::Error)]
#[error("{kind} destination {name:?} failed: {message}")]
pub struct DestinationError {
    /// Destination kind (`bot`, `agent`, `analytics`).
    pub kind: &'static str,
    /// Destination name (bot name, queue name or topic).
    pub name: String,
    /// What went wrong.
    pub message: String,
    /// Whether the same delivery may succeed later.
    pub retryable: bool,
}
