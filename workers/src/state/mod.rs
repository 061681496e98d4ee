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
//! - [`store`]: a partition's states, a bounded cache in memory over a
//!   local copy on disk ([`disk`]) brought up to date from the state topic
//!   when the partition is assigned; the partition's routing loop owns them.
//! - [`expiry`]: when an idle conversation's state is forgotten.
//! - [`write_behind`]: which states to write and which messages wait for
//!   them: one record per conversation per flush.
//! - [`effects`]: how a message changes its conversation's state.
//! - [`consent`]: whether an outbound message may be sent.
//! - [`subscriptions`]: broadcast subscriptions per topic (keywords, SMS
//!   STOP, subscription changes) and the customer's id.
//!
//! A conversation's messages run one after another, so its state has one
//! writer at a time. A state is written (and acknowledged) before the
//! offsets of the messages that changed it are stored, so a worker killed
//! at any point loses nothing: the next owner rebuilds the state and redoes
//! what was not committed. A redone message meets a state that may already
//! hold its change; its channel message id is remembered with its offset,
//! so it is routed again rather than dropped as a copy of itself.

pub mod consent;
mod disk;
pub mod effects;
pub mod expiry;
mod store;
pub mod subscriptions;
#[cfg(test)]
mod subscriptions_tests;
#[cfg(test)]
mod tests;
pub mod write_behind;
mod writer;

pub use disk::DiskError;
pub use store::{DISK_CACHE_BYTES, Encoded, PartitionStates, RebuildError, Rebuilt};
pub use write_behind::WriteBehind;
pub use writer::{
    FLUSH_DURATION, StateWriteError, StateWriter, TRANSACTIONS, WriterConfig, transactional_id,
};
