//! Human-agent routing: queues, agents and assignment.
//!
//! Two stages, so that assignment is consistent without a global lock:
//!
//! 1. The conversation stage ([`crate::router`]) decides that a message
//!    needs a human, and which queue: a bot handed off, a rule names an
//!    agent queue, or the conversation is human-owned. It publishes the
//!    message as a task to the agent-queue topic, keyed by queue.
//! 2. The queue stage ([`service`]) consumes that topic in its own consumer
//!    group. Agent desks publish their events (presence, skills, capacity,
//!    accept, decline, close, release) to the same topic, keyed by the same
//!    queue names, so a queue's tasks and agent events sit in one
//!    partition, in one order, with one owner. The owner keeps each queue's
//!    agents, waiting and held conversations in memory ([`engine`]),
//!    persists them per batch as a snapshot in a compacted topic, and
//!    publishes assignments (keyed by conversation) for the desks, and
//!    control events (assign, move, release) back to the messages topic so
//!    the conversation stage knows the owner.
//!
//! A conversation's later messages still go to its queue; the queue's
//! owner forwards them to the agent holding it, or keeps the last few while
//! it waits. Capacity is per queue: an agent who serves several queues has
//! a capacity in each.
//!
//! Layout: [`config`] (topics, queues, policies), [`engine`] (one queue's
//! state and policies, no I/O), [`service`] (the consume loop, snapshots,
//! rebuild), [`metrics`], [`desk`] (the agent desk client behind
//! `switchboard-desk`).

pub mod config;
pub mod desk;
pub mod engine;
mod metrics;
pub mod service;
#[cfg(test)]
mod tests;
