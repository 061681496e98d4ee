//! Human-agent routing: queues, agents and assignment.
//!
//! Two stages, so that assignment is consistent without a global lock:
//!
//! 1. The conversation stage ([`crate::route`]) decides that a message
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
//! Queues are per tenant: a queue's identity, its Kafka key and its book
//! are `tenant/queue` ([`queue_key`]), so one tenant's tasks never land in,
//! or use up, another tenant's queue of the same name. The conversation
//! stage puts the tenant from the (authenticated) envelope in front of the
//! queue name, and sends a name the workers do not know (neither in
//! `agents.queues`, nor an overflow or after-hours target, nor named by the
//! rules) to the tenant's default queue (`handoff_queue`), so tenants
//! cannot create queues at will. Desks publish to `tenant/queue` too.
//!
//! Layout: [`config`] (topics, queues, policies), [`engine`] (one queue's
//! state and policies, no I/O), [`service`] (the consume loop, snapshots,
//! rebuild), [`metrics`], [`desk`] (the agent desk client), [`desk_cli`]
//! (the `switchboard-desk` command line on top of it).

pub mod config;
pub mod desk;
pub mod desk_cli;
pub mod engine;
mod metrics;
pub mod service;
#[cfg(test)]
mod tests;

/// A tenant's queue as keyed on the queue topic and in the queue-state
/// topic: `tenant/queue` (tenant ids have no `/`). Without a tenant, the
/// queue name alone (events written before queues were per tenant).
pub fn queue_key(tenant: &str, queue: &str) -> String {
    if tenant.is_empty() {
        queue.to_owned()
    } else {
        format!("{tenant}/{queue}")
    }
}

/// The tenant and the queue name of a queue key (see [`queue_key`]).
pub fn split_queue_key(key: &str) -> (&str, &str) {
    key.split_once('/').unwrap_or(("", key))
}
