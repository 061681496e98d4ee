//! Who a broadcast goes to: a list of conversations, or the subscribers of
//! a topic, read from the compacted conversation-state topic.
//!
//! A topic's audience is resolved when the broadcast starts (and again when
//! it resumes): every partition of the state topic is read to its end, and
//! the tenant's conversations subscribed to the topic on the broadcast's
//! channels are kept. Recipients are sorted by conversation key, the order
//! they are published in, so that a resumed broadcast skips exactly those
//! already published. A conversation that subscribes while the broadcast
//! runs is reached if its key sorts after the last one published.

use std::collections::BTreeMap;

use prost::Message as _;
use switchboard_proto::{
    partition::conversation_key,
    v1::{BroadcastSpec, Channel, ConversationState},
};
use switchboard_runtime::kafka::KafkaConfig;

use crate::{compacted, state::subscriptions::is_subscribed};

/// One recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipient {
    /// `tenant/channel/conversation`, the publish order.
    pub key: String,
    pub channel: Channel,
    pub conversation_id: String,
    /// Empty: the routing stage fills in the conversation's customer.
    pub customer_id: String,
    /// Empty: the template's own.
    pub parameters: Vec<String>,
}

/// Why an audience could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum AudienceError {
    #[error("the audience has more than {0} recipients (broadcasts.max_recipients)")]
    TooLarge(usize),
    #[error("reading the conversation states: {0}")]
    Kafka(String),
    #[error("a broadcast needs a topic or recipients")]
    Empty,
}

impl AudienceError {
    /// Whether trying again later may succeed.
    pub fn retryable(&self) -> bool {
        matches!(self, Self::Kafka(_))
    }
}

fn allowed(spec: &BroadcastSpec, channel: Channel) -> bool {
    spec.channels.is_empty() || spec.channels.contains(&(channel as i32))
}

/// The explicit recipients of `spec`, in key order, once each.
pub fn listed(spec: &BroadcastSpec, max: usize) -> Result<Vec<Recipient>, AudienceError> {
    let mut by_key = BTreeMap::new();
    for r in &spec.recipients {
        let channel = r.channel();
        if channel == Channel::Unspecified
            || r.conversation_id.is_empty()
            || !allowed(spec, channel)
        {
            continue;
        }
        let key = conversation_key(&spec.tenant_id, channel, &r.conversation_id);
        by_key.entry(key.clone()).or_insert_with(|| Recipient {
            key,
            channel,
            conversation_id: r.conversation_id.clone(),
            customer_id: r.customer_id.clone(),
            parameters: r.parameters.clone(),
        });
        if by_key.len() > max {
            return Err(AudienceError::TooLarge(max));
        }
    }
    Ok(by_key.into_values().collect())
}

/// The conversations of `spec.tenant_id` subscribed to `spec.topic` on the
/// broadcast's channels, in key order. Blocking: reads every partition of
/// `state_topic`.
pub fn subscribers(
    kafka: &KafkaConfig,
    state_topic: &str,
    spec: &BroadcastSpec,
    max: usize,
) -> Result<Vec<Recipient>, AudienceError> {
    let partitions = kafka
        .partition_count(state_topic)
        .map_err(|e| AudienceError::Kafka(e.to_string()))?;
    let prefix = format!("{}/", spec.tenant_id);
    let mut found: BTreeMap<String, Recipient> = BTreeMap::new();
    for partition in 0..partitions {
        let partition = i32::try_from(partition).unwrap_or(i32::MAX);
        let mut too_large = false;
        compacted::read_partition(kafka, state_topic, partition, |key, value| {
            let Some(rest) = key.strip_prefix(&prefix) else {
                return;
            };
            let Some((slug, conversation)) = rest.split_once('/') else {
                return;
            };
            let Some(channel) = Channel::KNOWN.into_iter().find(|c| c.slug() == slug) else {
                return;
            };
            let state = value.and_then(|v| ConversationState::decode(v).ok());
            match state {
                // Without a known customer id, the sender stage refuses it
                // (counted as failed), rather than it silently not being targeted.
                Some(state) if allowed(spec, channel) && is_subscribed(&state, &spec.topic) => {
                    found.insert(
                        key.to_owned(),
                        Recipient {
                            key: key.to_owned(),
                            channel,
                            conversation_id: conversation.to_owned(),
                            customer_id: state.customer_id,
                            parameters: Vec::new(),
                        },
                    );
                    too_large |= found.len() > max;
                }
                // Unsubscribed since, or forgotten (a tombstone).
                _ => {
                    found.remove(key);
                }
            }
        })
        .map_err(|e| AudienceError::Kafka(e.to_string()))?;
        if too_large && found.len() > max {
            return Err(AudienceError::TooLarge(max));
        }
    }
    Ok(found.into_values().collect())
}

/// The audience of `spec`: its recipients when it lists them, else the
/// topic's subscribers. Blocking.
pub fn resolve(
    kafka: &KafkaConfig,
    state_topic: &str,
    spec: &BroadcastSpec,
    max: usize,
) -> Result<Vec<Recipient>, AudienceError> {
    if !spec.recipients.is_empty() {
        listed(spec, max)
    } else if !spec.topic.is_empty() {
        subscribers(kafka, state_topic, spec, max)
    } else {
        Err(AudienceError::Empty)
    }
}
