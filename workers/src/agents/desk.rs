//! The agent desk client: what a desk publishes (presence, skills,
//! capacity, accept, decline, close, release) and what it reads (its
//! assignments). `switchboard-desk` is a thin CLI over it; tests use it as
//! the agents.

use std::{collections::BTreeMap, time::Duration};

use prost::Message as _;
use rdkafka::producer::{FutureProducer, FutureRecord};
use switchboard_proto::v1::{
    AgentEvent, AssignmentEvent, Channel, ConversationAction, Direction, Envelope, MessageTag,
    QueueEvent, Text, agent_event::Change, assignment_event::Event, conversation_action::Action,
    envelope::Content, queue_event,
};
use switchboard_runtime::kafka::KafkaConfig;

use crate::config::WorkersConfig;

/// One agent's desk.
pub struct Desk {
    agent_id: String,
    producer: FutureProducer,
    kafka: KafkaConfig,
    queue_topic: String,
    assignments_topic: String,
}

/// A conversation an agent holds, as its desk sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Held {
    /// The queue it came from.
    pub queue: String,
    /// The assignment's id.
    pub assignment_id: String,
    /// The messages so far: those that waited, then later ones.
    pub messages: Vec<Envelope>,
}

/// An agent's conversations, folded from the assignments topic.
#[derive(Debug, Default, Clone)]
pub struct DeskView {
    /// By conversation key.
    pub conversations: BTreeMap<String, Held>,
}

impl DeskView {
    /// Applies one assignment event, if it is for `agent`. A record
    /// published twice (same assignment id) changes nothing the second time.
    pub fn apply(&mut self, agent: &str, event: &AssignmentEvent) {
        if event.agent_id != agent {
            return;
        }
        let key = &event.conversation_key;
        match &event.event {
            Some(Event::Assigned(assigned)) => {
                self.conversations
                    .entry(key.clone())
                    .or_insert_with(|| Held {
                        queue: event.queue.clone(),
                        assignment_id: event.assignment_id.clone(),
                        messages: assigned.messages.clone(),
                    });
            }
            Some(Event::Message(envelope)) => {
                if let Some(held) = self.conversations.get_mut(key)
                    && held.assignment_id == event.assignment_id
                    && !held
                        .messages
                        .iter()
                        .any(|m| m.message_id == envelope.message_id)
                {
                    held.messages.push(envelope.clone());
                }
            }
            Some(Event::Unassigned(_))
                if self
                    .conversations
                    .get(key)
                    .is_some_and(|h| h.assignment_id == event.assignment_id) =>
            {
                self.conversations.remove(key);
            }
            Some(Event::Unassigned(_)) | None => {}
        }
    }
}

impl Desk {
    /// A desk for `agent_id`, on the topics of `config`.
    pub fn new(config: &WorkersConfig, agent_id: &str) -> anyhow::Result<Self> {
        anyhow::ensure!(!agent_id.is_empty(), "the agent id must not be empty");
        Ok(Self {
            agent_id: agent_id.to_owned(),
            producer: config.kafka.producer_config(&[]).create()?,
            kafka: config.kafka.clone(),
            queue_topic: config.agent_queue_topic.clone(),
            assignments_topic: config.agents.assignments_topic.clone(),
        })
    }

    /// The agent's id.
    pub fn agent_id(&self) -> &str {
        &self.agent_id
    }

    /// Publishes a change of the agent to `queue`, and waits for Kafka.
    pub async fn send(&self, queue: &str, change: Change) -> anyhow::Result<()> {
        let event = QueueEvent {
            queue: queue.to_owned(),
            event: Some(queue_event::Event::Agent(AgentEvent {
                agent_id: self.agent_id.clone(),
                change: Some(change),
            })),
        };
        let payload = event.encode_to_vec();
        self.producer
            .send(
                FutureRecord::to(&self.queue_topic)
                    .key(queue)
                    .payload(&payload),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| anyhow::anyhow!("publishing to {}: {e}", self.queue_topic))?;
        Ok(())
    }

    /// Publishes the same change to each of `queues`.
    pub async fn send_all(&self, queues: &[String], change: Change) -> anyhow::Result<()> {
        for queue in queues {
            self.send(queue, change.clone()).await?;
        }
        Ok(())
    }

    /// Accepts, declines, closes or releases a conversation of `queue`.
    pub async fn act(
        &self,
        queue: &str,
        conversation_key: &str,
        action: Action,
    ) -> anyhow::Result<()> {
        let action = ConversationAction {
            action: action as i32,
            conversation_key: conversation_key.to_owned(),
        };
        self.send(queue, Change::Conversation(action)).await
    }

    /// The conversations the agent holds now: the assignments topic read
    /// to its current end. Blocking: run it off the async runtime.
    pub fn held(&self) -> anyhow::Result<DeskView> {
        let mut view = DeskView::default();
        let topic = &self.assignments_topic;
        let mut events = Vec::new();
        for p in 0..self.kafka.partition_count(topic)? as i32 {
            crate::compacted::read_partition(&self.kafka, topic, p, |_, value| {
                if let Some(Ok(event)) = value.map(AssignmentEvent::decode) {
                    events.push(event);
                }
            })?;
        }
        // Partitions are read one after the other; a conversation's events
        // are all in one partition, in order.
        for event in &events {
            view.apply(&self.agent_id, event);
        }
        Ok(view)
    }
}

/// An agent's reply to the conversation of `last`: `OUTBOUND`, tagged
/// `HUMAN_AGENT` where the channel knows the tag.
pub fn reply_to(last: &Envelope, text: String) -> Envelope {
    let tag = match last.channel() {
        Channel::Messenger | Channel::Instagram => MessageTag::HumanAgent,
        _ => MessageTag::Unspecified,
    };
    Envelope {
        message_id: uuid::Uuid::now_v7().to_string(),
        tenant_id: last.tenant_id.clone(),
        channel: last.channel,
        conversation_id: last.conversation_id.clone(),
        customer: last.customer.clone(),
        business: last.business.clone(),
        direction: Direction::Outbound as i32,
        tag: tag as i32,
        content: Some(Content::Text(Text { body: text })),
        ..Default::default()
    }
}
