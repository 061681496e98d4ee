//! The assignment engine's policies, with a hand-driven clock.

use std::{sync::Arc, time::Duration};

use switchboard_proto::v1::{
    AgentCapacity, AgentEvent, AgentSkills, AgentTask, AssignmentOutcome, Channel,
    ConversationAction, Envelope, Presence, QueueSnapshot, UnassignReason, agent_event::Change,
    assignment_event::Event, conversation_action::Action, envelope::Content, queue_event,
    queue_output::Output,
};

use super::{
    config::{Policy, QueueConfig},
    engine::{QueueBook, Settings},
};
use crate::rules::CalendarSpec;

struct Queue {
    book: QueueBook,
    offset: i64,
    /// (conversation, agent, outcome) of every assignment so far.
    assigned: Vec<(String, String, AssignmentOutcome)>,
    unassigned: Vec<(String, String, UnassignReason)>,
    moved: Vec<(String, String)>,
    refused: Vec<String>,
    controls: usize,
}

fn queue(config: QueueConfig) -> Queue {
    let settings = Arc::new(Settings {
        calendar: config.calendar().unwrap(),
        config,
        label: "support".into(),
    });
    let snapshot = QueueSnapshot {
        queue: "support".into(),
        ..Default::default()
    };
    Queue {
        book: QueueBook::new(snapshot, settings),
        offset: 0,
        assigned: Vec::new(),
        unassigned: Vec::new(),
        moved: Vec::new(),
        refused: Vec::new(),
        controls: 0,
    }
}

impl Queue {
    fn event(&mut self, event: queue_event::Event, now: i64) {
        assert!(self.book.apply(event, self.offset, now));
        self.offset += 1;
        self.drain();
    }

    fn tick(&mut self, now: i64) {
        self.book.tick(now);
        self.drain();
    }

    fn drain(&mut self) {
        for output in self.book.take_outbox() {
            match output.output.unwrap() {
                Output::Assignment(a) => match a.event.unwrap() {
                    Event::Assigned(x) => {
                        self.assigned
                            .push((a.conversation_key, a.agent_id, x.outcome()))
                    }
                    Event::Unassigned(u) => {
                        self.unassigned
                            .push((a.conversation_key, a.agent_id, u.reason()))
                    }
                    Event::Message(_) => {}
                },
                Output::Moved(m) => {
                    let key = match m.event.unwrap() {
                        queue_event::Event::MovedIn(w) => w.conversation_key,
                        queue_event::Event::Task(t) => t.envelope.unwrap().conversation_key(),
                        queue_event::Event::Agent(_) => unreachable!(),
                    };
                    self.moved.push((key, m.queue));
                }
                Output::Control(_) => self.controls += 1,
                Output::Refused(t) => self.refused.push(t.envelope.unwrap().conversation_key()),
            }
        }
    }

    fn task(&mut self, conversation: &str, skills: &str, now: i64) {
        let mut envelope = Envelope {
            tenant_id: "acme".into(),
            channel: Channel::Webchat as i32,
            conversation_id: conversation.into(),
            content: Some(Content::Text(Default::default())),
            ..Default::default()
        };
        if !skills.is_empty() {
            envelope.attributes.insert("skills".into(), skills.into());
        }
        let task = AgentTask {
            queue: "support".into(),
            envelope: Some(envelope),
            decision: None,
        };
        self.event(queue_event::Event::Task(task), now);
    }

    fn agent(&mut self, agent: &str, change: Change, now: i64) {
        let event = AgentEvent {
            agent_id: agent.into(),
            change: Some(change),
        };
        self.event(queue_event::Event::Agent(event), now);
    }

    fn online(&mut self, agent: &str, now: i64) {
        self.agent(agent, Change::Presence(Presence::Online as i32), now);
    }

    fn act(&mut self, agent: &str, conversation: &str, action: Action, now: i64) {
        let action = ConversationAction {
            action: action as i32,
            conversation_key: key(conversation),
        };
        self.agent(agent, Change::Conversation(action), now);
    }

    fn agent_of(&self, conversation: &str) -> Option<&str> {
        self.assigned
            .iter()
            .rev()
            .find(|(k, ..)| *k == key(conversation))
            .map(|(_, a, _)| a.as_str())
    }
}

fn key(conversation: &str) -> String {
    format!("acme/webchat/{conversation}")
}

const S: i64 = 1000;

#[test]
fn skills_pick_an_agent_who_has_them_all() {
    let mut q = queue(QueueConfig::default());
    q.online("generalist", 0);
    q.online("spanish", 0);
    let skills = AgentSkills {
        skills: vec!["language=es".into(), "billing".into()],
    };
    q.agent("spanish", Change::Skills(skills), 0);
    q.task("c1", "language=es, billing", S);
    assert_eq!(q.agent_of("c1"), Some("spanish"));
    q.task("c2", "language=de", S);
    assert_eq!(q.agent_of("c2"), None, "nobody speaks German: it waits");
    assert_eq!(q.book.snapshot.waiting.len(), 1);
}

#[test]
fn capacity_is_never_exceeded_and_frees_up_on_close() {
    let mut q = queue(QueueConfig::default());
    q.online("a", 0);
    q.agent(
        "a",
        Change::Capacity(AgentCapacity {
            default: 2,
            ..Default::default()
        }),
        0,
    );
    for c in ["c1", "c2", "c3"] {
        q.task(c, "", S);
    }
    assert_eq!(q.assigned.len(), 2);
    assert_eq!(q.book.snapshot.waiting.len(), 1);
    q.act("a", "c1", Action::Close, 2 * S);
    assert_eq!(q.agent_of("c3"), Some("a"), "the freed slot goes to c3");
}

#[test]
fn least_busy_takes_the_agent_with_the_most_room() {
    let mut q = queue(QueueConfig::default());
    q.online("a", 0);
    q.online("b", 0);
    q.task("c1", "", S);
    q.task("c2", "", 2 * S);
    q.task("c3", "", 3 * S);
    let per_agent = |q: &Queue, agent: &str| q.assigned.iter().filter(|x| x.1 == agent).count();
    assert_eq!((per_agent(&q, "a"), per_agent(&q, "b")), (2, 1));
    q.act("a", "c1", Action::Close, 4 * S);
    q.act("a", "c3", Action::Close, 4 * S);
    q.task("c4", "", 5 * S);
    assert_eq!(q.agent_of("c4"), Some("a"), "a holds 0, b holds 1");
}

#[test]
fn round_robin_and_longest_idle_rotate() {
    for policy in [Policy::RoundRobin, Policy::LongestIdle] {
        let mut q = queue(QueueConfig {
            policy,
            capacity: 10,
            ..QueueConfig::default()
        });
        for a in ["a", "b", "c"] {
            q.online(a, 0);
        }
        for (i, c) in ["c1", "c2", "c3", "c4"].into_iter().enumerate() {
            q.task(c, "", (i as i64 + 1) * S);
        }
        let agents: Vec<&str> = q.assigned.iter().map(|x| x.1.as_str()).collect();
        assert_eq!(agents, ["a", "b", "c", "a"], "{policy:?}");
    }
}

#[test]
fn the_oldest_waiting_conversation_goes_first() {
    let mut q = queue(QueueConfig {
        capacity: 1,
        ..QueueConfig::default()
    });
    for (i, c) in ["old", "middle", "new"].into_iter().enumerate() {
        q.task(c, "", i as i64 * S);
    }
    q.online("a", 10 * S);
    assert_eq!(q.agent_of("old"), Some("a"));
    q.act("a", "old", Action::Close, 11 * S);
    assert_eq!(q.agent_of("middle"), Some("a"));
}

#[test]
fn a_returning_customer_goes_back_to_their_agent_or_waits_for_them_a_while() {
    let mut q = queue(QueueConfig {
        capacity: 1,
        sticky_timeout: Duration::from_secs(30),
        ..QueueConfig::default()
    });
    q.online("a", 0);
    q.online("b", 0);
    q.task("c1", "", S);
    assert_eq!(q.agent_of("c1"), Some("a"));
    q.act("a", "c1", Action::Close, 2 * S);
    q.task("c1", "", 3 * S);
    assert_eq!(q.assigned.last().unwrap().2, AssignmentOutcome::StickyHit);
    assert_eq!(q.agent_of("c1"), Some("a"));

    // a is busy with someone else when c1 comes back: c1 waits for a,
    // though b is free, until the sticky timeout.
    q.act("a", "c1", Action::Close, 4 * S);
    q.agent("b", Change::Presence(Presence::Away as i32), 5 * S);
    q.task("filler", "", 5 * S);
    assert_eq!(q.agent_of("filler"), Some("a"));
    q.online("b", 6 * S);
    q.task("c1", "", 7 * S);
    assert_eq!(q.book.snapshot.waiting.len(), 1, "waits for a");
    q.tick(7 * S + 29 * S);
    assert_eq!(q.book.snapshot.waiting.len(), 1);
    q.tick(7 * S + 30 * S);
    assert_eq!(q.agent_of("c1"), Some("b"));
    assert_eq!(
        q.assigned.last().unwrap().2,
        AssignmentOutcome::StickyTimeout
    );
}

#[test]
fn an_offline_last_agent_is_not_waited_for() {
    let mut q = queue(QueueConfig::default());
    q.online("a", 0);
    q.task("c1", "", S);
    q.act("a", "c1", Action::Close, 2 * S);
    q.agent("a", Change::Presence(Presence::Offline as i32), 3 * S);
    q.online("b", 3 * S);
    q.task("c1", "", 4 * S);
    assert_eq!(q.agent_of("c1"), Some("b"));
    assert_eq!(q.assigned.last().unwrap().2, AssignmentOutcome::Assigned);
}

#[test]
fn closed_hours_send_conversations_to_the_after_hours_queue() {
    let mut q = queue(QueueConfig {
        // Open one minute a week: closed for the test's clock.
        hours: Some(CalendarSpec {
            timezone: "UTC".into(),
            days: [("sun".to_owned(), vec!["03:00-03:01".to_owned()])].into(),
        }),
        after_hours_queue: Some("night".into()),
        ..QueueConfig::default()
    });
    q.online("a", 0);
    q.task("c1", "", S);
    assert!(q.assigned.is_empty(), "closed: nobody is assigned");
    assert_eq!(q.moved, [(key("c1"), "night".to_owned())]);
    assert_eq!(q.controls, 1, "the conversation stage learns the new queue");
    // A straggler follows it.
    q.task("c1", "", 2 * S);
    assert_eq!(q.moved.len(), 2);
}

#[test]
fn a_long_wait_overflows_to_the_fallback_queue() {
    let mut q = queue(QueueConfig {
        overflow_after: Some(Duration::from_secs(60)),
        overflow_queue: Some("fallback".into()),
        ..QueueConfig::default()
    });
    q.task("c1", "", 0);
    q.tick(59 * S);
    assert!(q.moved.is_empty());
    q.tick(60 * S);
    assert_eq!(q.moved, [(key("c1"), "fallback".to_owned())]);
    assert!(q.book.snapshot.waiting.is_empty());
}

#[test]
fn offline_agents_and_unanswered_offers_give_conversations_back() {
    let mut q = queue(QueueConfig {
        accept_timeout: Duration::from_secs(20),
        ..QueueConfig::default()
    });
    q.online("a", 0);
    q.task("c1", "", S);
    q.task("c2", "", S);
    q.act("a", "c1", Action::Accept, 2 * S);
    q.online("b", 3 * S);
    // a accepted c1 only: at 21 s c2 goes to b.
    q.tick(21 * S);
    assert_eq!(q.agent_of("c2"), Some("b"));
    assert_eq!(q.assigned.last().unwrap().2, AssignmentOutcome::Reassigned);
    assert!(
        q.unassigned
            .contains(&(key("c2"), "a".into(), UnassignReason::NoAccept))
    );
    q.act("b", "c2", Action::Accept, 22 * S);
    // a goes offline: c1 goes to b too.
    q.agent("a", Change::Presence(Presence::Offline as i32), 23 * S);
    assert_eq!(q.agent_of("c1"), Some("b"));
    assert!(
        q.unassigned
            .contains(&(key("c1"), "a".into(), UnassignReason::AgentOffline))
    );
    // A decline goes elsewhere, never back to the one who declined.
    q.online("a", 24 * S);
    q.act("b", "c1", Action::Decline, 25 * S);
    assert_eq!(q.agent_of("c1"), Some("a"));
}

#[test]
fn replayed_events_are_skipped_and_later_messages_follow_the_agent() {
    let mut q = queue(QueueConfig::default());
    q.online("a", 0);
    q.task("c1", "", S);
    let change = queue_event::Event::Agent(AgentEvent {
        agent_id: "b".into(),
        change: Some(Change::Presence(Presence::Online as i32)),
    });
    assert!(
        !q.book.apply(change, 0, 2 * S),
        "offset 0 is in the snapshot"
    );
    q.task("c1", "", 3 * S);
    let outbox_before = q.assigned.len();
    assert_eq!(outbox_before, 1, "no second assignment for c1");
    let held = &q.book.snapshot.held[0];
    assert_eq!(held.conversation.as_ref().unwrap().messages.len(), 2);
}

#[test]
fn a_tenant_queue_moves_conversations_to_the_same_tenant_s_queue() {
    let config = QueueConfig {
        overflow_after: Some(Duration::from_secs(60)),
        overflow_queue: Some("fallback".into()),
        ..QueueConfig::default()
    };
    let settings = Arc::new(Settings {
        calendar: None,
        config,
        label: "support".into(),
    });
    let snapshot = QueueSnapshot {
        queue: super::queue_key("acme", "support"),
        ..Default::default()
    };
    let mut q = Queue {
        book: QueueBook::new(snapshot, settings),
        ..queue(QueueConfig::default())
    };
    q.task("c1", "", 0);
    q.tick(60 * S);
    assert_eq!(q.moved, [(key("c1"), "acme/fallback".to_owned())]);
    assert_eq!(
        super::split_queue_key("acme/fallback"),
        ("acme", "fallback")
    );
    assert_eq!(super::split_queue_key("legacy"), ("", "legacy"));
}

#[test]
fn queue_settings_stay_as_many_as_configured_whatever_names_come() {
    let mut agents = super::config::AgentsConfig::default();
    agents.queues.insert("vip".into(), QueueConfig::default());
    let settings = super::service::SettingsByQueue::new(&agents);
    for i in 0..10_000 {
        let s = settings.get(&format!("made-up-{i}"));
        assert_eq!(s.label, "other");
    }
    assert_eq!(settings.get("vip").label, "vip");
    assert_eq!(settings.len(), 2, "vip and the shared default");
}

#[test]
fn a_full_queue_refuses_new_conversations_with_their_message() {
    let mut q = queue(QueueConfig {
        max_waiting: 2,
        ..QueueConfig::default()
    });
    for c in ["c1", "c2", "c3"] {
        q.task(c, "", S);
    }
    assert_eq!(q.refused, [key("c3")], "dead-lettered with its envelope");
    q.task("c1", "", 2 * S);
    assert_eq!(
        q.refused.len(),
        1,
        "a waiting conversation's next message is kept"
    );
}

/// A waiting conversation's message with a `bytes`-long text.
fn big_task(q: &mut Queue, conversation: &str, bytes: usize, now: i64) {
    let envelope = Envelope {
        tenant_id: "acme".into(),
        channel: Channel::Webchat as i32,
        conversation_id: conversation.into(),
        content: Some(Content::Text(switchboard_proto::v1::Text {
            body: "x".repeat(bytes),
        })),
        ..Default::default()
    };
    let task = AgentTask {
        queue: "support".into(),
        envelope: Some(envelope),
        decision: None,
    };
    q.event(queue_event::Event::Task(task), now);
}

#[test]
fn snapshots_and_assignments_stay_under_their_topics_limits() {
    use prost::Message as _;
    let snapshot_limit: usize = crate::destinations::topics::QUEUE_SNAPSHOT_MAX_BYTES
        .parse()
        .unwrap();
    let mut q = queue(QueueConfig::default());
    // 400 conversations waiting, each with 5 messages of 30 KB.
    for c in 0..400 {
        for m in 0..5 {
            big_task(&mut q, &format!("c{c}"), 30_000, c * 10 + m);
        }
    }
    let budget = crate::destinations::topics::QUEUE_SNAPSHOT_BUDGET_BYTES;
    assert!(budget < snapshot_limit);
    // Each conversation keeps at most held_messages_max_bytes (64 KiB).
    for w in &q.book.snapshot.waiting {
        let bytes: usize = w.messages.iter().map(|m| m.encoded_len()).sum();
        assert!(bytes <= 64 * 1024, "{bytes}");
        assert_eq!(w.messages.len(), 2, "the last two 30 KB messages");
    }
    // What the queue stage does before it writes a snapshot.
    let size = q.book.fit(budget);
    assert_eq!(size, q.book.snapshot.encoded_len());
    assert!(
        size <= budget,
        "a snapshot of {size} bytes; the budget is {budget}"
    );
    assert_eq!(q.book.snapshot.waiting.len(), 400, "no conversation lost");
    assert!(
        q.book
            .snapshot
            .waiting
            .iter()
            .all(|w| !w.messages.is_empty())
    );
    // Agents come online: every assignment event stays under the
    // assignments topic's 1 MiB default, and the snapshot in budget.
    for a in 0..100 {
        q.agent(
            &format!("agent-{a}"),
            Change::Presence(switchboard_proto::v1::Presence::Online as i32),
            10_000,
        );
    }
    assert_eq!(q.assigned.len(), 300, "100 agents, capacity 3");
    let size = q.book.fit(budget);
    assert!(size <= budget, "{size}");
}

#[test]
fn a_message_larger_than_the_held_bytes_is_kept_without_its_content() {
    let mut q = queue(QueueConfig {
        held_messages_max_bytes: 1000,
        ..QueueConfig::default()
    });
    big_task(&mut q, "c1", 100, 0);
    big_task(&mut q, "c1", 5_000, 1);
    let messages = &q.book.snapshot.waiting[0].messages;
    assert_eq!(messages.len(), 2, "both fit once the big one is a stub");
    assert!(messages[1].content.is_none(), "kept without its content");
    assert_eq!(messages[1].conversation_id, "c1");
    // Another big one: the three do not fit, the oldest goes.
    big_task(&mut q, "c1", 900, 2);
    let messages = &q.book.snapshot.waiting[0].messages;
    let bytes: usize = messages.iter().map(prost::Message::encoded_len).sum();
    assert!(bytes <= 1000, "{bytes}");
    assert_eq!(testkit_text(messages.last().unwrap()).len(), 900);
}

fn testkit_text(envelope: &Envelope) -> &str {
    match &envelope.content {
        Some(Content::Text(t)) => &t.body,
        _ => "",
    }
}
