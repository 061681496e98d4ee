//! The sender stage's metrics: names, help texts and handles, per channel.

use metrics::{Counter, Histogram, describe_counter, describe_histogram};
use switchboard_proto::v1::Channel;

/// How a message ended, for `switchboard_sender_sends_total`.
pub const OUTCOMES: [&str; 7] = [
    "accepted",
    "refused",
    "misconfigured",
    "unsendable",
    "failed",
    "duplicate",
    "poison",
];

/// Describes the sender stage's metrics and creates every known series at
/// zero, so alerts on `increase()` see the first one.
pub fn describe() {
    describe_counter!(
        "switchboard_sender_sends_total",
        "Outbound messages the sender stage finished, by channel and outcome: accepted by the \
         provider, refused by it for good (rejections topic), misconfigured credentials or sender \
         and failed after every retry (dead-letter topic), unsendable on the channel (rejections \
         topic), duplicate (skipped), poison (undecodable, dead-letter topic)."
    );
    describe_histogram!(
        "switchboard_sender_request_duration_seconds",
        metrics::Unit::Seconds,
        "Time one provider API call took, by channel, whatever it answered."
    );
    describe_counter!(
        "switchboard_sender_retries_total",
        "Provider calls retried, by channel and reason (rate_limited: 429 or a throughput \
         error code; error: 5xx, a timeout, no connection)."
    );
    describe_histogram!(
        "switchboard_sender_rate_limit_wait_seconds",
        metrics::Unit::Seconds,
        "Waits for the sender's rate-limit bucket before a provider call, by channel (only \
         calls that had to wait)."
    );
    describe_counter!(
        "switchboard_sender_rebalances_total",
        "Sender-stage partition rebalances, by event (assign, revoke)."
    );
    for channel in Channel::KNOWN {
        SenderMetrics::new(channel).zero();
    }
}

/// One channel's handles.
pub struct SenderMetrics {
    outcomes: [Counter; OUTCOMES.len()],
    /// Duration of each provider call.
    pub request: Histogram,
    /// Retries after a rate limit.
    pub retried_rate_limited: Counter,
    /// Retries after another transient error.
    pub retried_error: Counter,
    /// Waits for the sender's bucket.
    pub waited: Histogram,
}

impl SenderMetrics {
    /// Takes the handles of `channel`.
    pub fn new(channel: Channel) -> Self {
        let c = channel.slug();
        Self {
            outcomes: OUTCOMES.map(
                |o| metrics::counter!("switchboard_sender_sends_total", "channel" => c, "outcome" => o),
            ),
            request: metrics::histogram!("switchboard_sender_request_duration_seconds", "channel" => c),
            retried_rate_limited: metrics::counter!("switchboard_sender_retries_total", "channel" => c, "reason" => "rate_limited"),
            retried_error: metrics::counter!("switchboard_sender_retries_total", "channel" => c, "reason" => "error"),
            waited: metrics::histogram!("switchboard_sender_rate_limit_wait_seconds", "channel" => c),
        }
    }

    /// Counts a finished message by its outcome label (one of [`OUTCOMES`]).
    pub fn finished(&self, outcome: &str) {
        if let Some(i) = OUTCOMES.iter().position(|o| *o == outcome) {
            self.outcomes[i].increment(1);
        }
    }

    fn zero(&self) {
        for counter in self
            .outcomes
            .iter()
            .chain([&self.retried_rate_limited, &self.retried_error])
        {
            counter.absolute(0);
        }
    }
}

/// The handles of every channel, indexed by the channel's value.
pub struct ByChannel(Vec<SenderMetrics>);

impl ByChannel {
    /// Handles for every channel.
    pub fn new() -> Self {
        Self(Channel::ALL.into_iter().map(SenderMetrics::new).collect())
    }

    /// `channel`'s handles.
    pub fn of(&self, channel: Channel) -> &SenderMetrics {
        &self.0[channel as usize]
    }
}

impl Default for ByChannel {
    fn default() -> Self {
        Self::new()
    }
}
