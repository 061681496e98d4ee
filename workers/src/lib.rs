//! Switchboard's routing workers.
//!
//! A worker is a member of one Kafka consumer group on the messages topic.
//! For every envelope it evaluates the routing rules and delivers the
//! message to each destination the matching rule names: a bot (gRPC, whose
//! replies go to a per-channel outbound topic), a human-agent queue (a Kafka
//! topic) and analytics (a Kafka topic); what cannot be delivered goes to a
//! dead-letter topic. Workers keep no state on disk; everything they need
//! is in Kafka. They share only `switchboard-runtime` with the ingestion
//! node, and never depend on it.
//!
//! Layout, by role:
//! - [`config`]: the worker's one constructor, [`config::WorkersConfig`].
//! - [`rules`]: the routing rules file: parsing, validation at load, evaluation.
//! - [`state`]: conversation state (owner, messaging window, consent,
//!   referral, recent message ids) in a compacted topic, rebuilt when a
//!   partition is assigned; consent rules for outbound messages.
//! - [`destinations`]: `bot/` (config, client, demo echo bot) and `topics`
//!   (agent queue, analytics, outbound and dead-letter topics).
//! - [`route`]: decides and delivers one message, retrying transient
//!   failures up to a budget, then dead-lettering; reloads the rules file.
//! - [`replay`]: copies dead letters, or a time range of the messages
//!   topic, back into the messages topic to be routed again.
//! - [`agents`]: human-agent routing: the queue stage that assigns
//!   conversations to agents (skills, capacity, sticky agent, hours,
//!   overflow, reassignment), and the agent desk client.
//! - [`senders`]: the sender stage: reads the outbound topics in its own
//!   consumer group and calls each channel's provider API (WhatsApp Cloud
//!   API, Messenger and Instagram Send API, Twilio, web chat), at least
//!   once and in order per conversation.
//! - [`broadcast`]: broadcasts to a topic's subscribers or a list of
//!   conversations: the fan-out stage (progress in Kafka) and the report stage.
//! - [`customers`]: one customer across channels: links in the
//!   conversations' states and in a compacted topic keyed by customer.
//! - [`compacted`]: reading a compacted topic to its end, to rebuild state.
//! - [`metrics`]: the workers' metric names and help texts (the queue
//!   stage's handles are in `agents::metrics`).
//! - [`consume`]: the at-least-once consume loop: the poll loop and
//!   rebalances, each partition's routing loop (conversations concurrently,
//!   each in order, states written behind), record decoding, and the
//!   contiguous prefix of completed offsets that is stored and committed.

#![forbid(unsafe_code)]

pub mod agents;
pub mod broadcast;
pub mod compacted;
pub mod config;
pub mod consume;
pub mod customers;
pub mod destinations;
pub mod metrics;
pub mod replay;
pub mod route;
pub mod rules;
pub mod senders;
pub mod state;
