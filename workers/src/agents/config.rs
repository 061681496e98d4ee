//! The queue stage's configuration: topics, timers and each queue's policy.

use std::{collections::BTreeMap, time::Duration};

use serde::{Deserialize, Serialize};

use crate::rules::{Calendar, CalendarSpec};

/// The most `held_messages_max_bytes` may be: an assignment event carries
/// that much, and the assignments topic takes 1 MiB by default.
pub const MAX_HELD_MESSAGES_BYTES: usize = 512 * 1024;

/// Human-agent routing: the queue stage that assigns conversations to agents.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentsConfig {
    /// Run the queue stage in this worker (a second consumer group,
    /// `<group_id>.queues`, on the agent-queue topic).
    pub enabled: bool,
    /// Compacted topic of queue snapshots (agents, waiting and held
    /// conversations), keyed by queue: the queue stage's only state.
    pub queue_state_topic: String,
    /// Assignments, later messages and unassignments, keyed by
    /// conversation, for agent desks.
    pub assignments_topic: String,
    /// How often timers are checked: accept and sticky timeouts, overflow,
    /// business hours.
    #[serde(with = "humantime_serde")]
    pub tick: Duration,
    /// Settings of a queue not listed under `queues`.
    pub default_queue: QueueConfig,
    /// Queues by name. Only these get their name as a metric label; others
    /// are counted as `other`.
    pub queues: BTreeMap<String, QueueConfig>,
}

impl Default for AgentsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            queue_state_topic: "switchboard.queue-state.v1".into(),
            assignments_topic: "switchboard.assignments.v1".into(),
            tick: Duration::from_millis(500),
            default_queue: QueueConfig::default(),
            queues: BTreeMap::new(),
        }
    }
}

impl AgentsConfig {
    /// The settings of queue `name`.
    pub fn queue(&self, name: &str) -> &QueueConfig {
        self.queues.get(name).unwrap_or(&self.default_queue)
    }

    /// Queue names the configuration knows: those under `queues`, and every
    /// overflow and after-hours target.
    pub fn known_queues(&self) -> impl Iterator<Item = &str> {
        let targets = std::iter::once(&self.default_queue)
            .chain(self.queues.values())
            .flat_map(|q| [&q.overflow_queue, &q.after_hours_queue])
            .flatten()
            .map(String::as_str);
        self.queues.keys().map(String::as_str).chain(targets)
    }

    /// The metric label of queue `name`: its name if configured, else `other`.
    pub fn label(&self, name: &str) -> String {
        if self.queues.contains_key(name) {
            name.to_owned()
        } else {
            "other".to_owned()
        }
    }

    /// Checks every queue's settings; the error names the queue and field.
    pub fn validate(&self) -> anyhow::Result<()> {
        let queues = std::iter::once(("default_queue", &self.default_queue))
            .chain(self.queues.iter().map(|(n, q)| (n.as_str(), q)));
        for (name, queue) in queues {
            queue
                .calendar()
                .map_err(|e| anyhow::anyhow!("agents.queues.{name}.hours: {e}"))?;
            anyhow::ensure!(
                queue.held_messages > 0,
                "agents.queues.{name}.held_messages must be at least 1"
            );
            anyhow::ensure!(
                (1..=MAX_HELD_MESSAGES_BYTES).contains(&queue.held_messages_max_bytes),
                "agents.queues.{name}.held_messages_max_bytes must be between 1 and {MAX_HELD_MESSAGES_BYTES}"
            );
            anyhow::ensure!(
                queue.max_waiting > 0,
                "agents.queues.{name}.max_waiting must be at least 1"
            );
            anyhow::ensure!(
                queue.overflow_after.is_none() || queue.overflow_queue.is_some(),
                "agents.queues.{name}: overflow_after needs overflow_queue"
            );
            for target in [&queue.overflow_queue, &queue.after_hours_queue]
                .into_iter()
                .flatten()
            {
                anyhow::ensure!(
                    target != name,
                    "agents.queues.{name} cannot overflow into itself"
                );
            }
        }
        Ok(())
    }
}

/// How a queue picks among the agents who can take a conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    /// Fewest conversations held relative to capacity; ties go to the
    /// longest idle.
    #[default]
    LeastBusy,
    /// The agent who has gone longest without a new conversation.
    LongestIdle,
    /// Each agent in turn, by id.
    RoundRobin,
}

/// One queue's assignment policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    /// How an agent is picked among those who can take a conversation.
    pub policy: Policy,
    /// Conversations an agent holds at once (per channel) unless the
    /// agent's desk sets its own capacity.
    pub capacity: u32,
    /// Skills every agent of this queue must have.
    pub skills: Vec<String>,
    /// The envelope attribute listing skills a conversation needs
    /// (comma-separated, e.g. `language=es,billing`).
    pub skills_attribute: String,
    /// An agent must accept a conversation within this time, or it goes to
    /// another agent. 0 turns this off.
    #[serde(with = "humantime_serde")]
    pub accept_timeout: Duration,
    /// A returning customer waits this long for their last agent while that
    /// agent is online but full or away; then anyone may take it. An offline
    /// last agent is never waited for. 0 turns sticky routing off.
    #[serde(with = "humantime_serde")]
    pub sticky_timeout: Duration,
    /// How long a conversation's last agent is remembered.
    #[serde(with = "humantime_serde")]
    pub sticky_memory: Duration,
    /// Conversations remembered for sticky routing, oldest forgotten first.
    pub sticky_max: usize,
    /// A conversation waiting this long moves to `overflow_queue`.
    #[serde(with = "humantime_serde::option")]
    pub overflow_after: Option<Duration>,
    /// Where waiting conversations overflow to.
    pub overflow_queue: Option<String>,
    /// Opening hours; outside them no agent is assigned here.
    pub hours: Option<CalendarSpec>,
    /// Where conversations go while the queue is closed; without one they
    /// wait for opening time.
    pub after_hours_queue: Option<String>,
    /// Most conversations waiting; more go to the dead-letter topic (with
    /// `switchboard-error: queue full`), to be replayed later.
    pub max_waiting: usize,
    /// The last messages of a waiting conversation handed to its agent.
    pub held_messages: usize,
    /// Most bytes of messages kept per conversation (oldest dropped first;
    /// a single larger message is kept without its content). Keeps each
    /// assignment event under the assignments topic's 1 MiB default; at
    /// most 512 KiB. The queue's snapshot is kept under its topic's limit
    /// as a whole too, by trimming held messages further if need be.
    pub held_messages_max_bytes: usize,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            policy: Policy::default(),
            capacity: 3,
            skills: Vec::new(),
            skills_attribute: "skills".into(),
            accept_timeout: Duration::from_secs(60),
            sticky_timeout: Duration::from_secs(30),
            sticky_memory: Duration::from_secs(7 * 24 * 3600),
            sticky_max: 10_000,
            overflow_after: None,
            overflow_queue: None,
            hours: None,
            after_hours_queue: None,
            max_waiting: 2_000,
            held_messages: 5,
            held_messages_max_bytes: 64 * 1024,
        }
    }
}

impl QueueConfig {
    /// The compiled opening hours, if any.
    pub fn calendar(&self) -> Result<Option<Calendar>, String> {
        self.hours.as_ref().map(Calendar::compile).transpose()
    }
}
