//! How customer link events (and matching rules) change a conversation's
//! state, and what they make the worker write. No I/O.

use std::time::SystemTime;

use switchboard_proto::{
    partition::conversation_key,
    v1::{
        Channel, ConversationState, CustomerIdentity, CustomerLink, Direction, Envelope,
        customer_link::Action, envelope::Content,
    },
};

use super::{CONVERSATIONS_ATTRIBUTE, CUSTOMER_ATTRIBUTE, config::CustomersConfig};

/// Something a link makes the worker write.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// The conversation's link record (`None`: unlinked, a tombstone).
    Identity {
        customer: String,
        key: String,
        record: Option<CustomerIdentity>,
    },
    /// A `JOINED` or `LEFT` event for another conversation of the customer.
    Notify(Box<Envelope>),
}

/// What applying one message did.
#[derive(Debug, Default)]
pub struct Applied {
    pub changed: bool,
    pub effects: Vec<Effect>,
    /// For the route decision: what was linked or unlinked.
    pub reason: Option<String>,
}

/// The record key of `conversation`'s link to `customer`.
pub fn record_key(customer: &str, conversation: &str) -> String {
    format!("{customer}/{conversation}")
}

fn identity(state: &ConversationState, envelope: &Envelope, source: &str) -> Effect {
    let key = envelope.conversation_key();
    Effect::Identity {
        customer: state.linked_customer.clone(),
        key: record_key(&state.linked_customer, &key),
        record: Some(CustomerIdentity {
            customer: state.linked_customer.clone(),
            tenant_id: envelope.tenant_id.clone(),
            conversation_key: key,
            channel: envelope.channel,
            channel_customer_id: state.customer_id.clone(),
            source: source.to_owned(),
            linked_at: Some(switchboard_proto::timestamp(SystemTime::now())),
        }),
    }
}

fn unlinked(customer: &str, envelope: &Envelope) -> Effect {
    let key = envelope.conversation_key();
    Effect::Identity {
        customer: customer.to_owned(),
        key: record_key(customer, &key),
        record: None,
    }
}

/// An event for conversation `key` (of `like`'s tenant).
/// Conversation `me` (of `envelope`) leaves customer `old`, whose link was
/// taken out of `state`: its identity record is unlinked, the customer's
/// other conversations are told, and the customer's attributes go.
fn leave(
    state: &mut ConversationState,
    envelope: &Envelope,
    me: &str,
    old: &str,
    source: &str,
    effects: &mut Vec<Effect>,
) {
    effects.push(unlinked(old, envelope));
    for other in std::mem::take(&mut state.customer_conversations) {
        effects.extend(notify(
            envelope,
            &other,
            CustomerLink {
                action: Action::Left as i32,
                customer_id: old.to_owned(),
                source: source.to_owned(),
                conversations: vec![me.to_owned()],
                ..Default::default()
            },
        ));
    }
    state.customer_attributes.clear();
}

fn notify(like: &Envelope, key: &str, link: CustomerLink) -> Option<Effect> {
    let mut parts = key.splitn(3, '/');
    let (tenant, slug, conversation) = (parts.next()?, parts.next()?, parts.next()?);
    let channel = Channel::KNOWN.into_iter().find(|c| c.slug() == slug)?;
    if tenant != like.tenant_id {
        return None;
    }
    Some(Effect::Notify(Box::new(Envelope {
        message_id: uuid::Uuid::new_v5(
            &uuid::Uuid::NAMESPACE_OID,
            format!("customer-link/{}/{key}", like.message_id).as_bytes(),
        )
        .to_string(),
        tenant_id: tenant.to_owned(),
        channel: channel as i32,
        direction: Direction::Inbound as i32,
        conversation_id: conversation.to_owned(),
        received_at: like.received_at,
        sent_at: like.sent_at,
        content: Some(Content::Link(link)),
        ..Default::default()
    })))
}

/// A phone number as digits, if `id` is one (E.164 with or without `+`).
fn phone_digits(id: &str) -> Option<&str> {
    let digits = id.strip_prefix('+').unwrap_or(id);
    ((8..=15).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit()))
        .then_some(digits)
}

/// Applies `envelope`'s customer link, or a matching rule, to `state`.
pub fn apply(
    config: &CustomersConfig,
    state: &mut ConversationState,
    envelope: &Envelope,
) -> Applied {
    let (action, applied) = match &envelope.content {
        Some(Content::Link(link)) => match link.action() {
            Action::Link => ("link", link_to(config, state, envelope, link)),
            Action::Joined => ("joined", joined(config, state, envelope, link)),
            Action::Unlink => ("unlink", unlink(state, envelope, link)),
            Action::Left => ("left", left(state, link)),
            Action::Unspecified => ("", Applied::default()),
        },
        Some(Content::Status(_) | Content::Control(_) | Content::Subscription(_)) | None => {
            ("", Applied::default())
        }
        Some(_) => ("matched", match_phone(config, state, envelope)),
    };
    if applied.changed {
        super::metrics::link(action);
    }
    applied
}

fn link_to(
    config: &CustomersConfig,
    state: &mut ConversationState,
    envelope: &Envelope,
    link: &CustomerLink,
) -> Applied {
    let me = envelope.conversation_key();
    let mut applied = Applied::default();
    let customer = if !link.customer_id.is_empty() {
        link.customer_id.clone()
    } else if !state.linked_customer.is_empty() {
        state.linked_customer.clone()
    } else {
        format!(
            "cus-{}",
            uuid::Uuid::new_v5(
                &uuid::Uuid::NAMESPACE_OID,
                format!("customer/{me}/{}", envelope.message_id).as_bytes()
            )
        )
    };
    if !state.linked_customer.is_empty() && state.linked_customer != customer {
        // Moving to another customer: the old one's conversations forget it.
        let old = std::mem::take(&mut state.linked_customer);
        leave(state, envelope, &me, &old, "", &mut applied.effects);
    }
    if state.linked_customer != customer {
        state.linked_customer.clone_from(&customer);
        applied.changed = true;
    }
    state.customer_unlinked = false;
    for (k, v) in &link.attributes {
        if state.customer_attributes.len() >= config.max_attributes
            && !state.customer_attributes.contains_key(k)
        {
            continue;
        }
        if state.customer_attributes.get(k) != Some(v) {
            state.customer_attributes.insert(k.clone(), v.clone());
            applied.changed = true;
        }
    }
    let mut reason = format!("linked to customer {customer}");
    if !link.other_conversation_id.is_empty() && link.other_channel() != Channel::Unspecified {
        let other = conversation_key(
            &envelope.tenant_id,
            link.other_channel(),
            &link.other_conversation_id,
        );
        if other != me && !state.customer_conversations.contains(&other) {
            if state.customer_conversations.len() + 1 >= config.max_conversations {
                tracing::warn!(customer = %customer, max = config.max_conversations, "customer has too many conversations; link ignored");
                reason.push_str(&format!(
                    "; {other} not linked: the customer has {} conversations",
                    config.max_conversations
                ));
            } else {
                state.customer_conversations.push(other.clone());
                applied.changed = true;
            }
        }
        reason.push_str(&format!(" with {other}"));
    }
    if !link.source.is_empty() {
        reason.push_str(&format!(" (by {})", link.source));
    }
    applied.effects.push(identity(
        state,
        envelope,
        if link.source.is_empty() {
            "link"
        } else {
            &link.source
        },
    ));
    // Every other conversation learns the customer, its attributes and its
    // conversations.
    let mut all = state.customer_conversations.clone();
    all.push(me);
    for other in &state.customer_conversations {
        applied.effects.extend(notify(
            envelope,
            other,
            CustomerLink {
                action: Action::Joined as i32,
                customer_id: customer.clone(),
                attributes: state.customer_attributes.clone(),
                source: link.source.clone(),
                conversations: all.clone(),
                ..Default::default()
            },
        ));
    }
    applied.reason = Some(reason);
    applied
}

fn joined(
    config: &CustomersConfig,
    state: &mut ConversationState,
    envelope: &Envelope,
    link: &CustomerLink,
) -> Applied {
    let me = envelope.conversation_key();
    let mut applied = Applied::default();
    if link.customer_id.is_empty() {
        return applied;
    }
    let others: Vec<String> = link
        .conversations
        .iter()
        .filter(|c| **c != me)
        .take(config.max_conversations - 1)
        .cloned()
        .collect();
    let attributes = link
        .attributes
        .iter()
        .take(config.max_attributes)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let relinked = state.linked_customer != link.customer_id;
    if relinked && !state.linked_customer.is_empty() {
        applied
            .effects
            .push(unlinked(&state.linked_customer, envelope));
    }
    if relinked || state.customer_conversations != others || state.customer_attributes != attributes
    {
        state.linked_customer.clone_from(&link.customer_id);
        state.customer_conversations = others;
        state.customer_attributes = attributes;
        state.customer_unlinked = false;
        applied.changed = true;
    }
    if relinked {
        applied.effects.push(identity(
            state,
            envelope,
            if link.source.is_empty() {
                "link"
            } else {
                &link.source
            },
        ));
    }
    applied.reason = Some(format!("joined customer {}", link.customer_id));
    applied
}

fn unlink(state: &mut ConversationState, envelope: &Envelope, link: &CustomerLink) -> Applied {
    let mut applied = Applied::default();
    state.customer_unlinked = true;
    if state.linked_customer.is_empty() {
        applied.reason = Some("not linked to a customer".into());
        return applied;
    }
    let me = envelope.conversation_key();
    let customer = std::mem::take(&mut state.linked_customer);
    leave(
        state,
        envelope,
        &me,
        &customer,
        &link.source,
        &mut applied.effects,
    );
    applied.changed = true;
    applied.reason = Some(format!(
        "unlinked from customer {customer}{}",
        if link.source.is_empty() {
            String::new()
        } else {
            format!(" (by {})", link.source)
        }
    ));
    applied
}

fn left(state: &mut ConversationState, link: &CustomerLink) -> Applied {
    let mut applied = Applied::default();
    if state.linked_customer != link.customer_id {
        return applied;
    }
    let before = state.customer_conversations.len();
    state
        .customer_conversations
        .retain(|c| !link.conversations.contains(c));
    applied.changed = before != state.customer_conversations.len();
    applied.reason = Some(format!(
        "{} left customer {}",
        link.conversations.join(", "),
        link.customer_id
    ));
    applied
}

fn match_phone(
    config: &CustomersConfig,
    state: &mut ConversationState,
    envelope: &Envelope,
) -> Applied {
    let mut applied = Applied::default();
    if envelope.direction() != Direction::Inbound
        || !state.linked_customer.is_empty()
        || state.customer_unlinked
        || !matches!(envelope.channel(), Channel::Sms | Channel::Whatsapp)
        || !config.matches_phone(&envelope.tenant_id)
    {
        return applied;
    }
    let Some(digits) = envelope.customer.as_ref().and_then(|c| phone_digits(&c.id)) else {
        return applied;
    };
    state.linked_customer = format!("phone-{digits}");
    applied.changed = true;
    applied
        .effects
        .push(identity(state, envelope, "verified_phone"));
    applied.reason = Some(format!(
        "linked to customer {} (same verified phone number)",
        state.linked_customer
    ));
    applied
}

/// Tells routing, the bots and the desks who the customer is: a linked
/// conversation's messages carry `customer`, `customer.<attribute>` and
/// `customer.conversations`. Returns whether the envelope changed.
pub fn annotate(envelope: &mut Envelope, state: &ConversationState) -> bool {
    let attributes = &mut envelope.attributes;
    // Only the workers say who the customer is.
    let claimed = attributes
        .keys()
        .any(|k| k == CUSTOMER_ATTRIBUTE || k.starts_with("customer."));
    if claimed {
        attributes.retain(|k, _| k != CUSTOMER_ATTRIBUTE && !k.starts_with("customer."));
    }
    if state.linked_customer.is_empty() {
        return claimed;
    }
    attributes.insert(CUSTOMER_ATTRIBUTE.to_owned(), state.linked_customer.clone());
    for (k, v) in &state.customer_attributes {
        attributes.insert(format!("{CUSTOMER_ATTRIBUTE}.{k}"), v.clone());
    }
    if !state.customer_conversations.is_empty() {
        attributes.insert(
            CONVERSATIONS_ATTRIBUTE.to_owned(),
            state.customer_conversations.join(","),
        );
    }
    true
}
