//! One queue's state and assignment policies, without I/O.
//!
//! A [`QueueBook`] is a queue's [`QueueSnapshot`] plus its settings. Events
//! (tasks, agent events, conversations moved in) and clock ticks change it
//! and append what must be published to its outbox; the service writes the
//! snapshot, outbox included, before publishing the outbox. Times are Unix
//! milliseconds, passed in, so tests drive the clock.
//!
//! Lists are scanned linearly: a queue holds at most `max_waiting` waiting
//! conversations and its agents' capacity in held ones.

use std::sync::Arc;

use switchboard_proto::v1::{
    AgentEvent, AgentState, AgentTask, Assigned, AssignmentEvent, AssignmentOutcome,
    ConversationControl, Envelope, HeldConversation, LastAgent, MovedConversation, Presence,
    QueueEvent, QueueOutput, QueueSnapshot, UnassignReason, Unassigned, WaitingConversation,
    agent_event::Change, assignment_event, conversation_action::Action,
    conversation_control::Action as Control, envelope::Content, queue_event, queue_output::Output,
};

use super::{
    config::QueueConfig,
    metrics::{Move, QueueMetrics},
};
use crate::rules::Calendar;

/// Moved conversations are remembered this long, to send stragglers on.
const MOVED_MEMORY_MS: i64 = 3_600_000;

/// A queue's settings, compiled once.
#[derive(Debug)]
pub struct Settings {
    /// The queue's policy.
    pub config: QueueConfig,
    /// Its opening hours.
    pub calendar: Option<Calendar>,
    /// Its metric label.
    pub label: String,
}

/// One queue: its snapshot, settings and metric handles.
pub struct QueueBook {
    /// The state written to the queue-state topic.
    pub snapshot: QueueSnapshot,
    /// The queue's tenant and name (its key is `tenant/name`).
    tenant: String,
    name: String,
    settings: Arc<Settings>,
    metrics: QueueMetrics,
}

fn ms(duration: std::time::Duration) -> i64 {
    duration.as_millis().min(i64::MAX as u128) as i64
}

impl QueueBook {
    /// A queue restored from its snapshot (or a new one).
    pub fn new(snapshot: QueueSnapshot, settings: Arc<Settings>) -> Self {
        let metrics = QueueMetrics::new(&settings.label);
        let (tenant, name) = super::split_queue_key(&snapshot.queue);
        Self {
            tenant: tenant.to_owned(),
            name: name.to_owned(),
            snapshot,
            settings,
            metrics,
        }
    }

    fn config(&self) -> &QueueConfig {
        &self.settings.config
    }

    /// Applies the queue-topic event at `offset`, unless the snapshot
    /// already reflects it; then assigns what it can. Returns whether it
    /// applied.
    pub fn apply(&mut self, event: queue_event::Event, offset: i64, now: i64) -> bool {
        if offset < self.snapshot.next_offset {
            return false;
        }
        self.snapshot.next_offset = offset + 1;
        match event {
            queue_event::Event::Task(task) => self.on_task(task, now),
            queue_event::Event::Agent(event) => self.on_agent(event, now),
            queue_event::Event::MovedIn(mut waiting) => {
                // A move published twice (after a crash) is taken once.
                let key = waiting.conversation_key.as_str();
                if self
                    .snapshot
                    .waiting
                    .iter()
                    .any(|w| w.conversation_key == key)
                    || self
                        .snapshot
                        .held
                        .iter()
                        .any(|h| conversation_key(h) == key)
                {
                    return true;
                }
                waiting.queued_at_unix_ms = now;
                waiting.excluded_agents.clear();
                // Held to this queue's limits, which may be smaller.
                let messages = std::mem::take(&mut waiting.messages);
                let mut trimmed = messages.len().saturating_sub(self.config().held_messages);
                for m in messages.into_iter().skip(trimmed) {
                    trimmed += push_bounded(
                        &mut waiting.messages,
                        m,
                        self.config().held_messages,
                        self.config().held_messages_max_bytes,
                    );
                }
                self.metrics.trimmed.increment(trimmed as u64);
                self.enqueue(waiting, now);
            }
        }
        self.assign(now);
        true
    }

    /// Runs the timers: accept timeouts, overflow, closing time; forgets
    /// old sticky agents and moves; assigns what it can. Returns whether
    /// anything changed.
    pub fn tick(&mut self, now: i64) -> bool {
        let before = self.snapshot.outbox.len();
        let accept_timeout = ms(self.config().accept_timeout);
        if accept_timeout > 0 {
            let mut i = 0;
            while i < self.snapshot.held.len() {
                let held = &self.snapshot.held[i];
                if !held.accepted && now - held.assigned_at_unix_ms >= accept_timeout {
                    self.take_back(i, UnassignReason::NoAccept, now);
                } else {
                    i += 1;
                }
            }
        }
        if let (Some(after), Some(target)) = (
            self.config().overflow_after,
            self.config().overflow_queue.clone(),
        ) {
            let after = ms(after);
            let (stay, go) = std::mem::take(&mut self.snapshot.waiting)
                .into_iter()
                .partition(|w| now - w.queued_at_unix_ms < after);
            self.snapshot.waiting = stay;
            for waiting in go {
                self.move_to(waiting, &target, Move::Overflow, now);
            }
        }
        self.move_if_closed(now);
        let memory = ms(self.config().sticky_memory);
        let forgotten = self.snapshot.last_agents.len();
        self.snapshot
            .last_agents
            .retain(|l| now - l.at_unix_ms < memory);
        let moved = self.snapshot.moved.len();
        self.snapshot
            .moved
            .retain(|m| now - m.at_unix_ms < MOVED_MEMORY_MS);
        let pruned =
            forgotten != self.snapshot.last_agents.len() || moved != self.snapshot.moved.len();
        self.assign(now);
        pruned || self.snapshot.outbox.len() != before
    }

    /// Trims the snapshot until it encodes to at most `budget` bytes (its
    /// topic's `max.message.bytes`, less headroom): first the oldest held
    /// messages of every conversation (waiting, held, and the copies in
    /// the outbox), down to the last one each; then that one's content;
    /// then the oldest sticky-agent and moved records. Returns the
    /// snapshot's size; over `budget` only if what is left (agents,
    /// unpublished outputs) is that large by itself.
    pub fn fit(&mut self, budget: usize) -> usize {
        use prost::Message as _;
        let mut size = self.snapshot.encoded_len();
        if size <= budget {
            return size;
        }
        let before = size;
        let mut trimmed = 0;
        let longest = self
            .message_lists()
            .iter()
            .map(|m| m.len())
            .max()
            .unwrap_or(0);
        for keep in (1..longest).rev() {
            for messages in self.message_lists() {
                let excess = messages.len().saturating_sub(keep);
                messages.drain(..excess);
                trimmed += excess;
            }
            size = self.snapshot.encoded_len();
            if size <= budget {
                break;
            }
        }
        if size > budget {
            for messages in self.message_lists() {
                for m in messages.iter_mut().filter(|m| !is_stub(m)) {
                    *m = stub(m, "the queue's snapshot was over its size limit");
                    trimmed += 1;
                }
            }
            size = self.snapshot.encoded_len();
        }
        while size > budget
            && !(self.snapshot.last_agents.is_empty() && self.snapshot.moved.is_empty())
        {
            let half = |n: usize| n.div_ceil(2);
            let (l, m) = (self.snapshot.last_agents.len(), self.snapshot.moved.len());
            self.snapshot.last_agents.drain(..half(l));
            self.snapshot.moved.drain(..half(m));
            size = self.snapshot.encoded_len();
        }
        self.metrics.trimmed.increment(trimmed as u64);
        tracing::warn!(queue = %self.snapshot.queue, before, after = size, budget, trimmed, "queue snapshot over budget: held messages trimmed");
        size
    }

    /// Every list of held messages: waiting, held, and the outbox's copies.
    fn message_lists(&mut self) -> Vec<&mut Vec<Envelope>> {
        let snapshot = &mut self.snapshot;
        let waiting = snapshot.waiting.iter_mut().map(|w| &mut w.messages);
        let held = snapshot
            .held
            .iter_mut()
            .filter_map(|h| h.conversation.as_mut())
            .map(|c| &mut c.messages);
        let outbox = snapshot
            .outbox
            .iter_mut()
            .filter_map(|o| match &mut o.output {
                Some(Output::Assignment(AssignmentEvent {
                    event: Some(assignment_event::Event::Assigned(a)),
                    ..
                })) => Some(&mut a.messages),
                Some(Output::Moved(QueueEvent {
                    event: Some(queue_event::Event::MovedIn(w)),
                    ..
                })) => Some(&mut w.messages),
                _ => None,
            });
        waiting.chain(held).chain(outbox).collect()
    }

    /// Takes what must be published, leaving the outbox empty.
    pub fn take_outbox(&mut self) -> Vec<QueueOutput> {
        std::mem::take(&mut self.snapshot.outbox)
    }

    /// Updates the queue's gauges.
    pub fn report(&self) {
        let online = |p: Presence| {
            self.snapshot
                .agents
                .iter()
                .filter(|a| a.presence() == p)
                .count()
        };
        let capacity: u32 = self
            .snapshot
            .agents
            .iter()
            .filter(|a| a.presence() == Presence::Online)
            .map(|a| self.capacity(a, ""))
            .sum();
        self.metrics.report(
            self.snapshot.waiting.len(),
            self.snapshot.held.len(),
            [
                online(Presence::Online),
                online(Presence::Away),
                online(Presence::Offline),
            ],
            capacity,
        );
    }

    /// Zeroes the queue's gauges: another worker owns it now.
    pub fn forget(&self) {
        self.metrics.report(0, 0, [0, 0, 0], 0);
    }

    fn is_open(&self, now: i64) -> bool {
        self.settings
            .calendar
            .as_ref()
            .is_none_or(|c| jiff::Timestamp::from_millisecond(now).is_ok_and(|at| c.is_open(at)))
    }

    fn on_task(&mut self, mut task: AgentTask, now: i64) {
        let Some(envelope) = task.envelope.take() else {
            tracing::warn!(queue = %self.snapshot.queue, "agent task without an envelope ignored");
            return;
        };
        let key = envelope.conversation_key();
        let (keep, max_bytes) = (
            self.config().held_messages,
            self.config().held_messages_max_bytes,
        );
        let mut trimmed = 0;
        if let Some(held) = self
            .snapshot
            .held
            .iter_mut()
            .find(|h| conversation_key(h) == key)
        {
            let (agent, id) = (held.agent_id.clone(), held.assignment_id.clone());
            trimmed += push_bounded(
                &mut held.conversation.get_or_insert_default().messages,
                envelope.clone(),
                keep,
                max_bytes,
            );
            self.metrics.trimmed.increment(trimmed as u64);
            let event = assignment_event::Event::Message(envelope);
            self.publish_assignment(&key, &agent, &id, event, now);
            return;
        }
        if let Some(waiting) = self
            .snapshot
            .waiting
            .iter_mut()
            .find(|w| w.conversation_key == key)
        {
            waiting.customer = customer_of(&envelope);
            trimmed += push_bounded(&mut waiting.messages, envelope, keep, max_bytes);
            self.metrics.trimmed.increment(trimmed as u64);
            return;
        }
        if let Some(moved) = self
            .snapshot
            .moved
            .iter()
            .find(|m| m.conversation_key == key)
        {
            let queue = moved.queue.clone();
            self.snapshot.outbox.push(QueueOutput {
                output: Some(Output::Moved(QueueEvent {
                    queue: queue.clone(),
                    event: Some(queue_event::Event::Task(AgentTask {
                        queue,
                        envelope: Some(envelope),
                        ..task
                    })),
                })),
            });
            return;
        }
        if self.snapshot.waiting.len() >= self.config().max_waiting {
            tracing::warn!(queue = %self.snapshot.queue, "queue full: task sent to the dead-letter topic");
            self.metrics.refused.increment(1);
            task.envelope = Some(envelope);
            self.snapshot.outbox.push(QueueOutput {
                output: Some(Output::Refused(task)),
            });
            return;
        }
        let skills = envelope
            .attributes
            .get(&self.config().skills_attribute)
            .map(|s| {
                s.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        let channel = envelope.channel().slug().to_owned();
        let customer = customer_of(&envelope);
        let mut messages = Vec::new();
        trimmed += push_bounded(&mut messages, envelope, keep, max_bytes);
        self.metrics.trimmed.increment(trimmed as u64);
        let waiting = WaitingConversation {
            conversation_key: key,
            waiting_since_unix_ms: now,
            queued_at_unix_ms: now,
            channel,
            skills,
            messages,
            customer,
            ..Default::default()
        };
        self.enqueue(waiting, now);
    }

    /// Adds a waiting conversation, oldest first, or sends it to the
    /// after-hours queue while closed.
    fn enqueue(&mut self, waiting: WaitingConversation, now: i64) {
        if !self.is_open(now)
            && let Some(target) = self.config().after_hours_queue.clone()
        {
            self.move_to(waiting, &target, Move::AfterHours, now);
            return;
        }
        let at = self
            .snapshot
            .waiting
            .partition_point(|w| w.waiting_since_unix_ms <= waiting.waiting_since_unix_ms);
        self.snapshot.waiting.insert(at, waiting);
    }

    fn move_if_closed(&mut self, now: i64) {
        if self.snapshot.waiting.is_empty() || self.is_open(now) {
            return;
        }
        if let Some(target) = self.config().after_hours_queue.clone() {
            for waiting in std::mem::take(&mut self.snapshot.waiting) {
                self.move_to(waiting, &target, Move::AfterHours, now);
            }
        }
    }

    /// Moves a waiting conversation to queue `target`: the conversation
    /// stage learns its new queue, and stragglers here are sent on.
    fn move_to(&mut self, mut waiting: WaitingConversation, target: &str, why: Move, now: i64) {
        let key = waiting.conversation_key.clone();
        // The same tenant's queue of that name.
        let target_key = super::queue_key(&self.tenant, target);
        self.snapshot.moved.retain(|m| m.conversation_key != key);
        self.snapshot.moved.push(MovedConversation {
            conversation_key: key,
            queue: target_key.clone(),
            at_unix_ms: now,
        });
        self.metrics.moved(why);
        let control = control(
            waiting.messages.last(),
            ConversationControl {
                action: Control::Handoff as i32,
                queue: target.to_owned(),
                reason: format!("{} from queue {}", why.label(), self.name),
                ..Default::default()
            },
            now,
        );
        waiting.overflowed_from.clone_from(&self.name);
        self.snapshot.outbox.extend([
            QueueOutput {
                output: Some(Output::Moved(QueueEvent {
                    queue: target_key,
                    event: Some(queue_event::Event::MovedIn(waiting)),
                })),
            },
            QueueOutput {
                output: control.map(Output::Control),
            },
        ]);
    }

    fn on_agent(&mut self, event: AgentEvent, now: i64) {
        let Some(change) = event.change else { return };
        let id = event.agent_id;
        let index = match self.snapshot.agents.iter().position(|a| a.agent_id == id) {
            Some(i) => i,
            None => {
                self.snapshot.agents.push(AgentState {
                    agent_id: id.clone(),
                    idle_since_unix_ms: now,
                    ..Default::default()
                });
                self.snapshot.agents.len() - 1
            }
        };
        let agent = &mut self.snapshot.agents[index];
        match change {
            Change::Presence(p) => {
                let was = agent.presence();
                agent.presence = p;
                let now_is = agent.presence();
                if now_is == Presence::Online && was != Presence::Online {
                    agent.idle_since_unix_ms = now;
                }
                if now_is == Presence::Offline {
                    while let Some(i) = self.snapshot.held.iter().position(|h| h.agent_id == id) {
                        self.take_back(i, UnassignReason::AgentOffline, now);
                    }
                }
            }
            Change::Skills(skills) => agent.skills = skills.skills,
            Change::Capacity(capacity) => agent.capacity = Some(capacity),
            Change::Conversation(action) => {
                let Some(i) = self.snapshot.held.iter().position(|h| {
                    h.agent_id == id && conversation_key(h) == action.conversation_key
                }) else {
                    tracing::debug!(agent = %id, "action on a conversation the agent does not hold ignored");
                    return;
                };
                match action.action() {
                    Action::Accept => self.snapshot.held[i].accepted = true,
                    Action::Decline => self.take_back(i, UnassignReason::Declined, now),
                    Action::Close => self.finish(i, UnassignReason::Closed, now),
                    Action::Release => self.finish(i, UnassignReason::Released, now),
                    Action::Unspecified => {}
                }
            }
        }
    }

    /// Takes held conversation `i` back from its agent and puts it back in
    /// line, with its original waiting time. An agent who declined or let
    /// it time out is not offered it again.
    fn take_back(&mut self, i: usize, reason: UnassignReason, now: i64) {
        let held = self.snapshot.held.remove(i);
        let mut waiting = held.conversation.unwrap_or_default();
        self.unassigned(
            &waiting.conversation_key,
            &held.agent_id,
            &held.assignment_id,
            reason,
            now,
        );
        if reason != UnassignReason::AgentOffline {
            waiting.excluded_agents.push(held.agent_id);
        }
        waiting.reassignments += 1;
        waiting.queued_at_unix_ms = now;
        self.enqueue(waiting, now);
    }

    /// The agent is done with held conversation `i`: closed (it stays with
    /// humans) or released (back to the bot). Either way the agent is
    /// remembered as the conversation's last.
    fn finish(&mut self, i: usize, reason: UnassignReason, now: i64) {
        let held = self.snapshot.held.remove(i);
        let waiting = held.conversation.unwrap_or_default();
        let key = waiting.conversation_key.clone();
        self.unassigned(&key, &held.agent_id, &held.assignment_id, reason, now);
        let sticky = sticky_key(&waiting);
        if reason == UnassignReason::Released {
            let release = ConversationControl {
                action: Control::Release as i32,
                reason: format!("released by agent {}", held.agent_id),
                ..Default::default()
            };
            self.snapshot.outbox.push(QueueOutput {
                output: control(waiting.messages.last(), release, now).map(Output::Control),
            });
        }
        let last = &mut self.snapshot.last_agents;
        last.retain(|l| l.conversation_key != sticky);
        last.push(LastAgent {
            conversation_key: sticky,
            agent_id: held.agent_id,
            at_unix_ms: now,
        });
        let excess = last.len().saturating_sub(self.settings.config.sticky_max);
        last.drain(..excess);
    }

    fn unassigned(&mut self, key: &str, agent: &str, id: &str, reason: UnassignReason, now: i64) {
        self.metrics.unassigned(reason);
        let event = assignment_event::Event::Unassigned(Unassigned {
            reason: reason as i32,
        });
        self.publish_assignment(key, agent, id, event, now);
    }

    fn publish_assignment(
        &mut self,
        key: &str,
        agent: &str,
        id: &str,
        event: assignment_event::Event,
        now: i64,
    ) {
        self.snapshot.outbox.push(QueueOutput {
            output: Some(Output::Assignment(AssignmentEvent {
                conversation_key: key.to_owned(),
                queue: self.snapshot.queue.clone(),
                agent_id: agent.to_owned(),
                assignment_id: id.to_owned(),
                at_unix_ms: now,
                event: Some(event),
            })),
        });
    }

    /// The capacity of `agent` on `channel`: the agent's own for the
    /// channel, else the agent's default, else the queue's.
    fn capacity(&self, agent: &AgentState, channel: &str) -> u32 {
        let own = agent.capacity.as_ref();
        own.and_then(|c| c.per_channel.get(channel).copied())
            .or(own.map(|c| c.default).filter(|d| *d > 0))
            .unwrap_or(self.config().capacity)
    }

    /// Conversations `agent` holds on `channel`.
    fn load(&self, agent: &str, channel: &str) -> u32 {
        self.snapshot
            .held
            .iter()
            .filter(|h| {
                h.agent_id == agent
                    && h.conversation
                        .as_ref()
                        .is_some_and(|c| c.channel == channel)
            })
            .count() as u32
    }

    /// Whether `agent` may take `waiting` now.
    fn can_take(&self, agent: &AgentState, waiting: &WaitingConversation) -> bool {
        agent.presence() == Presence::Online
            && !waiting.excluded_agents.contains(&agent.agent_id)
            && self
                .config()
                .skills
                .iter()
                .chain(&waiting.skills)
                .all(|s| agent.skills.contains(s))
            && self.load(&agent.agent_id, &waiting.channel) < self.capacity(agent, &waiting.channel)
    }

    /// The agent the policy picks for `waiting`, among those who can take it.
    fn pick(&self, waiting: &WaitingConversation) -> Option<String> {
        let mut candidates: Vec<&AgentState> = self
            .snapshot
            .agents
            .iter()
            .filter(|a| self.can_take(a, waiting))
            .collect();
        candidates.sort_by(|a, b| a.agent_id.cmp(&b.agent_id));
        let chosen = match self.config().policy {
            super::config::Policy::LeastBusy => candidates.into_iter().min_by(|a, b| {
                let busy = |x: &AgentState| {
                    let load = self.load(&x.agent_id, &waiting.channel) as u64;
                    let capacity = self.capacity(x, &waiting.channel).max(1) as u64;
                    (load, capacity)
                };
                let ((la, ca), (lb, cb)) = (busy(a), busy(b));
                // la/ca vs lb/cb without floating point.
                (la * cb)
                    .cmp(&(lb * ca))
                    .then(a.idle_since_unix_ms.cmp(&b.idle_since_unix_ms))
            }),
            super::config::Policy::LongestIdle => {
                candidates.into_iter().min_by_key(|a| a.idle_since_unix_ms)
            }
            super::config::Policy::RoundRobin => {
                let last = &self.snapshot.last_picked;
                candidates
                    .iter()
                    .find(|a| a.agent_id > *last)
                    .or(candidates.first())
                    .copied()
            }
        };
        chosen.map(|a| a.agent_id.clone())
    }

    /// The conversation's last agent, if sticky routing applies.
    fn last_agent(&self, key: &str) -> Option<&AgentState> {
        if self.config().sticky_timeout.is_zero() {
            return None;
        }
        let last = self
            .snapshot
            .last_agents
            .iter()
            .find(|l| l.conversation_key == key)?;
        self.snapshot
            .agents
            .iter()
            .find(|a| a.agent_id == last.agent_id)
    }

    /// Assigns waiting conversations, oldest first, to agents who can take
    /// them, while the queue is open.
    fn assign(&mut self, now: i64) {
        if !self.is_open(now) {
            return;
        }
        let sticky_timeout = ms(self.config().sticky_timeout);
        let mut i = 0;
        while i < self.snapshot.waiting.len() {
            let waiting = &self.snapshot.waiting[i];
            let mut outcome = if waiting.reassignments > 0 {
                AssignmentOutcome::Reassigned
            } else {
                AssignmentOutcome::Assigned
            };
            let mut agent = None;
            if let Some(last) = self.last_agent(&sticky_key(waiting)) {
                if self.can_take(last, waiting) {
                    agent = Some(last.agent_id.clone());
                    outcome = AssignmentOutcome::StickyHit;
                } else if last.presence() != Presence::Offline
                    && !waiting.excluded_agents.contains(&last.agent_id)
                {
                    if now - waiting.waiting_since_unix_ms < sticky_timeout {
                        // Wait for the last agent a little longer.
                        i += 1;
                        continue;
                    }
                    outcome = AssignmentOutcome::StickyTimeout;
                }
            }
            match agent.or_else(|| self.pick(waiting)) {
                Some(agent) => {
                    let waiting = self.snapshot.waiting.remove(i);
                    self.give(waiting, agent, outcome, now);
                }
                None => i += 1,
            }
        }
    }

    fn give(
        &mut self,
        waiting: WaitingConversation,
        agent: String,
        outcome: AssignmentOutcome,
        now: i64,
    ) {
        let id = uuid::Uuid::now_v7().to_string();
        let waited = now - waiting.waiting_since_unix_ms;
        self.metrics.assigned(outcome, waited);
        if let Some(a) = self
            .snapshot
            .agents
            .iter_mut()
            .find(|a| a.agent_id == agent)
        {
            a.idle_since_unix_ms = now;
        }
        agent.clone_into(&mut self.snapshot.last_picked);
        let key = waiting.conversation_key.clone();
        let assign = ConversationControl {
            action: Control::Assign as i32,
            agent_id: agent.clone(),
            // The conversation stage knows queues by name, in the tenant.
            queue: self.name.clone(),
            reason: format!(
                "queue {}: {}",
                self.name,
                outcome.as_str_name().to_lowercase()
            ),
        };
        let control = control(waiting.messages.last(), assign, now);
        let event = assignment_event::Event::Assigned(Assigned {
            outcome: outcome as i32,
            waited_ms: waited,
            messages: waiting.messages.clone(),
            overflowed_from: waiting.overflowed_from.clone(),
        });
        self.publish_assignment(&key, &agent, &id, event, now);
        self.snapshot.outbox.push(QueueOutput {
            output: control.map(Output::Control),
        });
        self.snapshot.held.push(HeldConversation {
            conversation: Some(waiting),
            agent_id: agent,
            assignment_id: id,
            assigned_at_unix_ms: now,
            accepted: false,
        });
    }
}

fn conversation_key(held: &HeldConversation) -> &str {
    held.conversation
        .as_ref()
        .map_or("", |c| c.conversation_key.as_str())
}

/// The customer a task's conversation is linked to, if any.
fn customer_of(envelope: &Envelope) -> String {
    envelope
        .attributes
        .get(crate::customers::CUSTOMER_ATTRIBUTE)
        .cloned()
        .unwrap_or_default()
}

/// What the sticky agent is remembered by: the conversation's customer
/// when it is linked to one (so it holds across the customer's channels),
/// else the conversation.
fn sticky_key(waiting: &WaitingConversation) -> String {
    if waiting.customer.is_empty() {
        waiting.conversation_key.clone()
    } else {
        format!("customer:{}", waiting.customer)
    }
}

/// Appends `envelope`, then drops the oldest messages beyond `keep`, or
/// beyond `max_bytes` in all. The newest is always kept, without its
/// content if it alone is over `max_bytes` (its ids still let the agent
/// and the control events find the conversation). Returns how many
/// messages were dropped or left without content.
fn push_bounded(
    messages: &mut Vec<Envelope>,
    envelope: Envelope,
    keep: usize,
    max_bytes: usize,
) -> usize {
    use prost::Message as _;
    let mut trimmed = 0;
    let envelope = if envelope.encoded_len() > max_bytes {
        trimmed += 1;
        stub(&envelope, "larger than held_messages_max_bytes")
    } else {
        envelope
    };
    messages.push(envelope);
    let excess = messages.len().saturating_sub(keep);
    messages.drain(..excess);
    trimmed += excess;
    let mut total: usize = messages.iter().map(|m| m.encoded_len()).sum();
    while messages.len() > 1 && total > max_bytes {
        total -= messages.remove(0).encoded_len();
        trimmed += 1;
    }
    trimmed
}

/// Marks a message held without its content.
const STUB_ATTRIBUTE: &str = "switchboard-held-without-content";

/// `envelope` without its content and attributes: its ids, parties and
/// times, and an attribute saying why.
fn stub(envelope: &Envelope, why: &str) -> Envelope {
    use prost::Message as _;
    let mut stub = Envelope {
        content: None,
        attributes: Default::default(),
        ..envelope.clone()
    };
    stub.attributes.insert(
        STUB_ATTRIBUTE.to_owned(),
        format!("{why} ({} bytes)", envelope.encoded_len()),
    );
    stub
}

fn is_stub(envelope: &Envelope) -> bool {
    envelope.content.is_none() && envelope.attributes.contains_key(STUB_ATTRIBUTE)
}

/// A control event for the conversation of `like`, for the messages topic.
/// Its channel message id is unique, so a copy published again after a
/// crash is dropped by the conversation stage's dedupe.
fn control(like: Option<&Envelope>, control: ConversationControl, now: i64) -> Option<Envelope> {
    let like = like?;
    let id = uuid::Uuid::now_v7();
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(now.max(0) as u64);
    Some(Envelope {
        message_id: id.to_string(),
        channel_message_id: format!("switchboard-control-{id}"),
        tenant_id: like.tenant_id.clone(),
        channel: like.channel,
        conversation_id: like.conversation_id.clone(),
        customer: like.customer.clone(),
        business: like.business.clone(),
        direction: switchboard_proto::v1::Direction::Outbound as i32,
        received_at: Some(switchboard_proto::timestamp(at)),
        content: Some(Content::Control(control)),
        ..Default::default()
    })
}
