//! Decides where one message goes and delivers it there, by role:
//! - [`decide`]: the decision, the conversation's state change, and the
//!   records handed to the producer;
//! - [`deliver`]: Kafka's answers, resends, bot calls, retry budgets;
//! - `dead_letter`: the dead-letter topic;
//! - `rules_reload`: re-reading the rules file when it changes;
//! - `metrics`: the router's metric handles.
//!
//! A message is done when every destination of its rule has acknowledged it
//! or has failed for good, and analytics has it. Transient failures are
//! retried with jittered exponential backoff, up to `max_attempts` per
//! destination; this holds back only the message's own conversation. A
//! destination that fails for good (a fatal error, or the retry budget
//! spent) sends the message to the dead-letter topic, with headers saying
//! why, and the conversation continues. Kafka writes (outbound, rejections,
//! analytics) are retried without limit while their errors are retryable;
//! one Kafka refuses for good (a record too large for the topic, no
//! authorization, no such topic) dead-letters the message too, so it never
//! holds its partition back forever.
//!
//! The conversation's state is not written here: the consume loop writes
//! changed states behind, once per conversation per flush
//! ([`crate::state::WriteBehind`], [`crate::state::StateWriter`]).

use std::{
    borrow::Cow,
    collections::{HashMap, HashSet},
};

use arc_swap::ArcSwap;

use crate::{
    config::WorkersConfig,
    customers::{config::CustomersConfig, writer::CustomerWriter},
    destinations::{
        DestinationError, DestinationKind as Kind,
        bot::BotDestination,
        topics::{Enqueued, TopicOutputs},
    },
    rules::RuleSet,
    state::{consent::ConsentPolicy, subscriptions::Keywords},
};

mod dead_letter;
pub mod decide;
pub mod deliver;
mod metrics;
mod rules_reload;
mod settle;
#[cfg(test)]
mod tests;

pub use decide::{Answered, Begun, Pending, Routed};
pub use settle::Settle;

/// Routing stopped because the worker is shutting down or lost the partition;
/// the message was not completed and will be redelivered.
#[derive(Debug, thiserror::Error)]
#[error("routing interrupted")]
pub struct Interrupted;

/// A destination that failed for good.
struct Failure {
    destination: Cow<'static, str>,
    error: DestinationError,
    attempts: u32,
}

/// A record handed to the producer, with its retry budget.
struct Write<'a> {
    kind: Kind,
    /// 0: no limit.
    max_attempts: u32,
    /// For the dead-letter headers: `agent:QUEUE`, `outbound`, ...
    destination: Cow<'static, str>,
    enqueued: Enqueued<'a>,
}

/// Routes messages according to a rule set.
pub struct Router {
    rules: ArcSwap<RuleSet>,
    source: Option<rules_reload::RulesSource>,
    bots: HashMap<String, BotDestination>,
    outputs: TopicOutputs,
    backoff: std::time::Duration,
    backoff_max: std::time::Duration,
    max_attempts: u32,
    consent: ConsentPolicy,
    handoff_queue: String,
    /// Agent queue names the config knows (with `handoff_queue`); the
    /// rules' own are known too.
    known_queues: HashSet<String>,
    recent_message_ids: usize,
    /// Subscription keywords, by tenant and channel.
    keywords: Keywords,
    /// Customer links: settings, and the writer of their records.
    customers: CustomersConfig,
    customer_writer: CustomerWriter,
    metrics: metrics::RouterMetrics,
}

impl Router {
    /// Loads the rules and creates the bot clients and the producer.
    pub fn new(config: &WorkersConfig) -> anyhow::Result<Self> {
        let known: HashSet<&str> = config.bots.keys().map(String::as_str).collect();
        let (rules, source) = match &config.rules_file {
            Some(path) => {
                let (rules, source) = rules_reload::RulesSource::load(path, &known)?;
                (rules, Some(source))
            }
            None => (RuleSet::default(), None),
        };
        let bots = config
            .bots
            .iter()
            .map(|(name, c)| Ok((name.clone(), BotDestination::new(name, c)?)))
            .collect::<anyhow::Result<_>>()?;
        Ok(Self {
            rules: ArcSwap::from_pointee(rules),
            source,
            bots,
            outputs: TopicOutputs::new(&config.outputs())?,
            backoff: config.retry_backoff,
            backoff_max: config.retry_backoff_max,
            max_attempts: config.max_attempts,
            consent: config.consent(),
            handoff_queue: config.handoff_queue.clone(),
            known_queues: config
                .agents
                .known_queues()
                .chain([config.handoff_queue.as_str()])
                .map(str::to_owned)
                .collect(),
            recent_message_ids: config.recent_message_ids,
            keywords: Keywords::new(&config.broadcasts.keywords)?,
            customers: config.customers.clone(),
            customer_writer: CustomerWriter::new(
                &config.kafka,
                &config.messages_topic,
                &config.customers.topic,
            )?,
            metrics: metrics::RouterMetrics::new(),
        })
    }

    /// The agent queue a message for queue `name` goes to: `name` if the
    /// config or the rules know it, else the default handoff queue. Names
    /// come from bots and control events too, so a tenant cannot make up
    /// queues (each would be a book, a snapshot and metrics).
    pub fn queue_for(&self, name: &str) -> String {
        if self.known_queues.contains(name) || self.rules.load().agent_queues().any(|q| q == name) {
            return name.to_owned();
        }
        tracing::debug!(queue = name, default = %self.handoff_queue, "unknown agent queue; the default queue instead");
        ::metrics::counter!("switchboard_agent_queue_unknown_total").increment(1);
        self.handoff_queue.clone()
    }
}
