//! Switchboard's destination topics and how each encodes the messages it
//! carries, so the reconciler can find the load generator's tokens in them.

use prost::Message as _;
use serde::Serialize;
use switchboard_proto::{
    message_id_hash,
    v1::{
        AnalyticsRecord, Channel, ConversationState, Envelope, QueueEvent, Rejection, queue_event,
    },
};

/// The attribute a bot's reply may carry with the channel message id of
/// the message it answers (the fault scenarios' bot sets it), so a reply on
/// an outbound topic counts for the message it answers.
pub const IN_REPLY_TO: &str = "in_reply_to";

/// What a destination topic holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// `AnalyticsRecord`s: every routed message, once.
    Analytics,
    /// `QueueEvent`s: messages for human agents.
    AgentQueue,
    /// Outbound `Envelope`s: messages and bot replies to customers.
    Outbound,
    /// Dead letters: the original `Envelope` as the payload.
    Dlq,
    /// `Rejection`s: outbound messages consent refused.
    Rejections,
    /// Compacted `ConversationState`s: the hashes of their recent channel
    /// message ids ([`Kind::state_hashes`]).
    State,
}

impl Kind {
    /// The channel message ids a record of this kind carries: the
    /// message's own, or the one a reply answers; none for a state (see
    /// [`Kind::state_hashes`]).
    pub fn message_ids(self, payload: &[u8]) -> Vec<String> {
        let envelope = match self {
            Self::Analytics => AnalyticsRecord::decode(payload)
                .ok()
                .and_then(|r| r.envelope),
            Self::AgentQueue => QueueEvent::decode(payload)
                .ok()
                .and_then(|e| match e.event {
                    Some(queue_event::Event::Task(task)) => task.envelope,
                    _ => None,
                }),
            Self::Outbound | Self::Dlq => Envelope::decode(payload).ok(),
            Self::Rejections => Rejection::decode(payload).ok().and_then(|r| r.envelope),
            Self::State => None,
        };
        let Some(mut envelope) = envelope else {
            return Vec::new();
        };
        match envelope.attributes.remove(IN_REPLY_TO) {
            Some(answered) if self == Self::Outbound => vec![answered],
            _ => vec![envelope.channel_message_id],
        }
    }

    /// The [`message_id_hash`]es of the recent channel message ids a
    /// `ConversationState` remembers, oldest first: its legacy
    /// `recent_message_ids` hashed, then its `recent_message_hashes`.
    pub fn state_hashes(payload: &[u8]) -> Vec<u64> {
        let Ok(state) = ConversationState::decode(payload) else {
            return Vec::new();
        };
        let mut hashes =
            Vec::with_capacity(state.recent_message_ids.len() + state.recent_message_hashes.len());
        hashes.extend(
            state
                .recent_message_ids
                .iter()
                .map(|id| message_id_hash(id)),
        );
        hashes.extend(state.recent_message_hashes);
        hashes
    }
}

/// The destination topics' names, as the workers are configured
/// (`deploy/config/workers.example.toml`); the defaults are theirs.
#[derive(Debug, Clone, Serialize, clap::Args)]
pub struct TopicNames {
    /// The analytics topic.
    #[arg(long, default_value = "switchboard.analytics.v1")]
    pub analytics_topic: String,
    /// The agent-queue topic.
    #[arg(long, default_value = "switchboard.agent-queue.v1")]
    pub agent_queue_topic: String,
    /// Outbound topics are `<prefix>.<channel>`.
    #[arg(long, default_value = "switchboard.outbound.v1")]
    pub outbound_topic_prefix: String,
    /// The dead-letter topic.
    #[arg(long, default_value = "switchboard.dlq.v1")]
    pub dlq_topic: String,
    /// The rejections topic.
    #[arg(long, default_value = "switchboard.rejections.v1")]
    pub rejections_topic: String,
    /// The conversation-state topic (checked for a state written over a
    /// newer one).
    #[arg(long, default_value = "switchboard.conversation-state.v1")]
    pub state_topic: String,
}

impl TopicNames {
    /// Every topic with its kind; outbound topics for every channel.
    pub fn all(&self) -> Vec<(String, Kind)> {
        let mut topics = vec![
            (self.analytics_topic.clone(), Kind::Analytics),
            (self.agent_queue_topic.clone(), Kind::AgentQueue),
            (self.dlq_topic.clone(), Kind::Dlq),
            (self.rejections_topic.clone(), Kind::Rejections),
            (self.state_topic.clone(), Kind::State),
        ];
        topics.extend(Channel::ALL.iter().map(|c| {
            (
                format!("{}.{}", self.outbound_topic_prefix, c.slug()),
                Kind::Outbound,
            )
        }));
        topics
    }

    /// Names with `prefix.` before the workers' default names (one set of
    /// topics per run of a fault scenario).
    pub fn prefixed(prefix: &str) -> Self {
        Self {
            analytics_topic: format!("{prefix}.analytics"),
            agent_queue_topic: format!("{prefix}.agent-queue"),
            outbound_topic_prefix: format!("{prefix}.outbound"),
            dlq_topic: format!("{prefix}.dlq"),
            rejections_topic: format!("{prefix}.rejections"),
            state_topic: format!("{prefix}.state"),
        }
    }
}

#[cfg(test)]
mod tests {
    use switchboard_proto::v1::{AgentTask, RouteDecision};

    use super::*;

    fn envelope(id: &str) -> Envelope {
        Envelope {
            channel_message_id: id.into(),
            ..Default::default()
        }
    }

    #[test]
    fn finds_the_message_id_in_every_kind_of_record() {
        let analytics = AnalyticsRecord {
            envelope: Some(envelope("a")),
            decision: Some(RouteDecision::default()),
        };
        assert_eq!(
            Kind::Analytics.message_ids(&analytics.encode_to_vec()),
            ["a"]
        );
        let task = QueueEvent {
            queue: "support".into(),
            event: Some(queue_event::Event::Task(AgentTask {
                queue: "support".into(),
                envelope: Some(envelope("q")),
                decision: None,
            })),
        };
        assert_eq!(Kind::AgentQueue.message_ids(&task.encode_to_vec()), ["q"]);
        let mut reply = envelope("");
        reply.attributes.insert(IN_REPLY_TO.into(), "r".into());
        assert_eq!(Kind::Outbound.message_ids(&reply.encode_to_vec()), ["r"]);
        assert_eq!(Kind::Dlq.message_ids(&envelope("d").encode_to_vec()), ["d"]);
        let rejection = Rejection {
            envelope: Some(envelope("x")),
            ..Default::default()
        };
        assert_eq!(
            Kind::Rejections.message_ids(&rejection.encode_to_vec()),
            ["x"]
        );
        assert!(Kind::Analytics.message_ids(b"\xff\xff").is_empty());
    }

    #[test]
    fn hashes_a_states_legacy_ids_before_its_hashes() {
        let state = ConversationState {
            recent_message_ids: vec!["s1".into(), "s2".into()],
            recent_message_hashes: vec![7],
            ..Default::default()
        }
        .encode_to_vec();
        assert_eq!(
            Kind::state_hashes(&state),
            [message_id_hash("s1"), message_id_hash("s2"), 7]
        );
        assert!(Kind::State.message_ids(&state).is_empty());
        assert!(Kind::state_hashes(b"\xff\xff").is_empty());
    }
}
