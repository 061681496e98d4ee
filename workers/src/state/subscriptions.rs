//! Broadcast subscriptions, per topic, in the conversation's state.
//!
//! A subscription changes on:
//! - a `SubscriptionChange` message (a web form or a CRM through
//!   `Publish`, or an agent's action), in the conversation's order;
//! - an inbound text that is exactly one of the tenant's keywords for the
//!   channel (`JOIN NEWS`, `STOP NEWS`; case and spacing ignored);
//! - SMS STOP (a `ConsentEvent` opt-out), which ends every subscription of
//!   the conversation. START opts back in to messages, not to topics.
//!
//! Each topic keeps its last change: on or off, when, and from where. The
//! state also keeps the customer's channel id, so that a broadcast to a
//! topic's subscribers knows where to send.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use switchboard_proto::{
    Timestamp,
    v1::{
        ConversationState, Direction, Envelope, Subscription, SubscriptionChange,
        SubscriptionSource, consent_event::Action as Consent, envelope::Content,
    },
};

use super::effects::sent_at;

/// One keyword that subscribes or unsubscribes, for a tenant's channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeywordConfig {
    /// The tenant; `*` for every tenant.
    pub tenant: String,
    /// The channel (`whatsapp`, `sms`, ...); `*` for every channel.
    pub channel: String,
    /// The whole text that triggers it, e.g. `JOIN NEWS`.
    pub keyword: String,
    /// The topic, e.g. `news`.
    pub topic: String,
    /// True subscribes, false unsubscribes.
    pub subscribe: bool,
}

/// Why the keywords cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeywordError {
    #[error("subscription keyword {0:?}: keyword and topic must not be empty")]
    Empty(String),
    #[error(
        "subscription keyword {keyword:?} is defined twice for tenant {tenant} channel {channel}"
    )]
    Duplicate {
        tenant: String,
        channel: String,
        keyword: String,
    },
}

/// A keyword's meaning: the topic and whether it subscribes.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Meaning {
    topic: String,
    subscribe: bool,
}

/// Normalized keywords by tenant, then channel (`*` for any): looked up
/// by `&str`, so a message's lookup allocates nothing but its normalized
/// text.
type ByScope = HashMap<String, HashMap<String, HashMap<String, Meaning>>>;

/// The keywords, by tenant and channel (`*` for any), each normalized.
#[derive(Debug, Default)]
pub struct Keywords {
    by_scope: ByScope,
}

/// Upper case, single spaces, no spaces around.
fn normalize(text: &str) -> String {
    text.split_whitespace()
        .map(str::to_uppercase)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Topics one conversation keeps at most (subscribed or not): the state
/// travels with every message of the conversation.
pub const MAX_TOPICS: usize = 32;

/// The longest text that can be a keyword: longer texts are not looked up.
const MAX_KEYWORD_BYTES: usize = 64;

impl Keywords {
    /// Compiles the configured keywords, refusing empty and duplicate ones.
    pub fn new(config: &[KeywordConfig]) -> Result<Self, KeywordError> {
        let mut by_scope = ByScope::new();
        for k in config {
            let keyword = normalize(&k.keyword);
            if keyword.is_empty() || k.topic.trim().is_empty() || keyword.len() > MAX_KEYWORD_BYTES
            {
                return Err(KeywordError::Empty(k.keyword.clone()));
            }
            let meaning = Meaning {
                topic: k.topic.trim().to_owned(),
                subscribe: k.subscribe,
            };
            if by_scope
                .entry(k.tenant.clone())
                .or_default()
                .entry(k.channel.to_lowercase())
                .or_default()
                .insert(keyword, meaning)
                .is_some()
            {
                return Err(KeywordError::Duplicate {
                    tenant: k.tenant.clone(),
                    channel: k.channel.clone(),
                    keyword: k.keyword.clone(),
                });
            }
        }
        Ok(Self { by_scope })
    }

    /// What `text` means on `tenant`'s `channel`, the most specific scope first.
    fn lookup(&self, tenant: &str, channel: &str, text: &str) -> Option<(&Meaning, String)> {
        if self.by_scope.is_empty() || text.len() > MAX_KEYWORD_BYTES {
            return None;
        }
        let keyword = normalize(text);
        [(tenant, channel), (tenant, "*"), ("*", channel), ("*", "*")]
            .into_iter()
            .find_map(|(t, c)| self.by_scope.get(t)?.get(c)?.get(&keyword))
            .map(|meaning| (meaning, keyword))
    }

    /// Applies what `envelope` says about subscriptions (and the customer's
    /// id) to `state`. Returns whether the state changed.
    pub fn apply(&self, state: &mut ConversationState, envelope: &Envelope) -> bool {
        let at = sent_at(envelope);
        let mut changed = false;
        let inbound = envelope.direction() == Direction::Inbound;
        if inbound
            && let Some(customer) = &envelope.customer
            && !customer.id.is_empty()
            && customer.id != state.customer_id
            && !matches!(
                envelope.content,
                Some(Content::Status(_) | Content::Control(_) | Content::Link(_))
            )
        {
            state.customer_id.clone_from(&customer.id);
            changed = true;
        }
        match &envelope.content {
            Some(Content::Subscription(change)) => {
                changed |= set(state, change, at);
            }
            Some(Content::Consent(consent)) if consent.action() == Consent::OptOut => {
                let topics: Vec<String> = state
                    .subscriptions
                    .iter()
                    .filter(|s| s.subscribed)
                    .map(|s| s.topic.clone())
                    .collect();
                for topic in topics {
                    changed |= set(
                        state,
                        &SubscriptionChange {
                            topic,
                            subscribe: false,
                            source: SubscriptionSource::SmsKeyword as i32,
                            detail: consent.keyword.clone(),
                        },
                        at,
                    );
                }
            }
            Some(Content::Text(text)) if inbound => {
                if let Some((meaning, keyword)) =
                    self.lookup(&envelope.tenant_id, envelope.channel().slug(), &text.body)
                {
                    let change = SubscriptionChange {
                        topic: meaning.topic.clone(),
                        subscribe: meaning.subscribe,
                        source: SubscriptionSource::Keyword as i32,
                        detail: keyword,
                    };
                    changed |= set(state, &change, at);
                }
            }
            _ => {}
        }
        changed
    }
}

/// Sets one topic's subscription; true when it changed.
fn set(state: &mut ConversationState, change: &SubscriptionChange, at: Option<Timestamp>) -> bool {
    let source = match change.source() {
        SubscriptionSource::Unspecified => SubscriptionSource::WebForm,
        source => source,
    };
    let entry = match state
        .subscriptions
        .iter_mut()
        .find(|s| s.topic == change.topic)
    {
        Some(entry) => {
            if entry.subscribed == change.subscribe {
                return false;
            }
            entry
        }
        None if !change.subscribe => return false,
        None => {
            if state.subscriptions.len() >= MAX_TOPICS {
                // Forget the oldest topic unsubscribed from, if any.
                let Some(i) = state.subscriptions.iter().position(|s| !s.subscribed) else {
                    tracing::warn!(topic = %change.topic, max = MAX_TOPICS, "too many subscribed topics; subscription ignored");
                    return false;
                };
                state.subscriptions.remove(i);
            }
            state.subscriptions.push(Subscription {
                topic: change.topic.clone(),
                ..Default::default()
            });
            state.subscriptions.last_mut().expect("just pushed")
        }
    };
    entry.subscribed = change.subscribe;
    entry.changed_at = at;
    entry.source = source as i32;
    entry.detail.clone_from(&change.detail);
    true
}

/// Whether the conversation is subscribed to `topic`.
pub fn is_subscribed(state: &ConversationState, topic: &str) -> bool {
    state
        .subscriptions
        .iter()
        .any(|s| s.subscribed && s.topic == topic)
}

/// An outbound message without a recipient goes to the conversation's
/// customer (a broadcast to a list names conversations, not customers).
/// Returns whether the envelope changed.
pub fn address(envelope: &mut Envelope, state: &ConversationState) -> bool {
    if envelope.direction() == Direction::Outbound
        && !matches!(
            envelope.content,
            None | Some(Content::Status(_) | Content::Control(_) | Content::Subscription(_))
        )
        && !state.customer_id.is_empty()
        && envelope.customer.as_ref().is_none_or(|c| c.id.is_empty())
    {
        envelope.customer.get_or_insert_default().id = state.customer_id.clone();
        return true;
    }
    false
}

/// The route decision's reason for a subscription change.
pub fn reason(change: &SubscriptionChange) -> String {
    let source = match change.source() {
        SubscriptionSource::Unspecified => SubscriptionSource::WebForm,
        source => source,
    };
    format!(
        "{} topic {} ({})",
        if change.subscribe {
            "subscribed to"
        } else {
            "unsubscribed from"
        },
        change.topic,
        source.as_str_name().to_lowercase()
    )
}
