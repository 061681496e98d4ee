//! Broadcasts: one template to a topic's subscribers or a list of
//! conversations, through the routing pipeline.
//!
//! - The ingestion node publishes a `BroadcastCommand` (start, cancel) to
//!   the commands topic, keyed by broadcast id.
//! - The broadcast stage ([`service`]) consumes it in its own consumer
//!   group (`<group_id>.broadcasts`): one owner per partition. It resolves
//!   the audience ([`audience`]), and publishes one OUTBOUND template
//!   envelope per recipient to the messages topic ([`fanout`]), in
//!   conversation-key order, rate-limited per tenant and per channel. After
//!   every `progress_every` recipients are acknowledged by Kafka it writes
//!   the broadcast's `BroadcastProgress` (with the last key published) to a
//!   compacted topic keyed like the commands, so partition `p` of both has
//!   the same owner. A restarted or new owner reads the progress partition
//!   and resumes after the last key: at most `progress_every` recipients
//!   are published twice, and those copies carry the same channel message
//!   id (`broadcast:<id>`), which the routing stage drops as copies
//!   (`recent_message_ids`), and the same message id, which the sender
//!   stage never sends twice.
//! - The routing stage judges every envelope as any OUTBOUND message:
//!   opted out, or (for a topic) not subscribed, it goes to the rejections
//!   topic with the reason instead of the outbound topic.
//! - The report stage ([`report`]) counts what became of each broadcast's
//!   messages from the rejections and analytics topics.

pub mod audience;
pub mod config;
pub mod fanout;
pub(crate) mod metrics;
pub mod report;
pub mod service;
#[cfg(test)]
mod tests;

use switchboard_proto::v1::Envelope;

/// The envelope attribute naming the broadcast a message belongs to.
pub const ID_ATTRIBUTE: &str = "broadcast_id";

/// The envelope attribute naming the topic a broadcast message is for:
/// consent then requires a subscription to it.
pub const TOPIC_ATTRIBUTE: &str = "broadcast_topic";

/// The broadcast `envelope` belongs to, if any.
pub fn broadcast_of(envelope: &Envelope) -> Option<&str> {
    envelope
        .attributes
        .get(ID_ATTRIBUTE)
        .map(String::as_str)
        .filter(|id| !id.is_empty())
}
