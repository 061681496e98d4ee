//! Switchboard's routing workers.
//!
//! A worker is a member of one Kafka consumer group on the messages topic.
//! For every envelope it evaluates the routing rules and delivers the
//! message to each destination the matching rule names: a bot (gRPC), a
//! human-agent queue (a Kafka topic) and analytics (a Kafka topic). Workers
//! keep no state on disk; everything they need is in Kafka.
//!
//! Layout, by role:
//! - [`config`]: the worker's one constructor, [`config::WorkersConfig`].
//! - [`rules`]: the routing rules file: parsing, validation at load, evaluation.
//! - [`dedupe`]: drops copies of a channel message that reached Kafka twice.
//! - [`destinations`]: one folder per destination kind (`bot`, `agent`,
//!   `analytics`), each with its config and its delivery code.
//! - [`offsets`]: the contiguous prefix of completed offsets, safe to commit.
//! - [`router`]: decides and delivers one message, retrying transient failures.
//! - [`consumer`]: the at-least-once consume loop: an offset is stored only
//!   after every destination acknowledged the message, and stored offsets are
//!   committed on an interval, on revoke and at shutdown.

#![forbid(unsafe_code)]

pub mod config;
pub mod consumer;
pub mod dedupe;
pub mod destinations;
pub mod offsets;
pub mod router;
pub mod rules;
