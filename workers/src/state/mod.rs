//! Conversation state, kept in Kafka and cached in memory.
//!
//! Every conversation has a [`ConversationState`]: who owns it (bot or
//! human, which queue and agent), when the customer last wrote (the
//! messaging window), consent, the last referral, and its most recent
//! channel message ids. It lives in a compacted topic keyed by conversation
//! key, partitioned like the messages topic, so partition `p` of the state
//! topic holds exactly the conversations of partition `p` of the messages
//! topic, and only that partition's owner writes it.
//!
//! - [`store`]: rebuilds a partition's states from the state topic when the
//!   partition is assigned, and caches them (dashmap).
//! - [`effects`]: how a message changes its conversation's state.
//! - [`consent`]: whether an outbound message may be sent.
//!
//! A conversation's messages run one after another, so its state has one
//! writer at a time: read, change, write to Kafka, then cache. A state is
//! written before its message's offset is stored, and records only
//! completed messages, so a worker killed at any point loses nothing: the
//! next owner rebuilds the state and redoes what was not committed.

pub mod consent;
pub mod effects;
mod store;
#[cfg(test)]
mod tests;

pub use store::PartitionStates;
