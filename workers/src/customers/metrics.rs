//! Customer link metrics.

use metrics::describe_counter;

/// Describes the customer link metrics.
pub fn describe() {
    describe_counter!(
        "switchboard_customer_links_total",
        "Customer link changes applied to conversations, by action (link, unlink, joined, left, matched)."
    );
    describe_counter!(
        "switchboard_customer_link_write_failures_total",
        "Customer link records or events Kafka refused for good (logged; the link lives in the states)."
    );
}

/// Counts one link change.
pub fn link(action: &'static str) {
    metrics::counter!("switchboard_customer_links_total", "action" => action).increment(1);
}
