//! The broadcast stage's metrics.

use metrics::{describe_counter, describe_gauge};

/// Describes the broadcast stage's metrics.
pub fn describe() {
    describe_counter!(
        "switchboard_broadcast_messages_published_total",
        "Broadcast messages published to the messages topic (acknowledged), by channel."
    );
    describe_counter!(
        "switchboard_broadcasts_finished_total",
        "Broadcasts finished, by status (completed, cancelled, failed)."
    );
    describe_gauge!(
        "switchboard_broadcasts_running",
        "Broadcasts this worker is publishing."
    );
}

/// Counts `n` published messages on `channel`.
pub fn published(channel: &'static str, n: u64) {
    metrics::counter!("switchboard_broadcast_messages_published_total", "channel" => channel)
        .increment(n);
}

/// Counts a finished broadcast.
pub fn finished(status: &'static str) {
    metrics::counter!("switchboard_broadcasts_finished_total", "status" => status).increment(1);
}

/// Sets the broadcasts running here.
pub fn running(n: usize) {
    metrics::gauge!("switchboard_broadcasts_running").set(n as f64);
}
