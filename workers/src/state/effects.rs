//! How messages change their conversation's state.

use std::time::SystemTime;

use switchboard_proto::{
    Timestamp, message_id_hash,
    v1::{
        ConversationState, Direction, Envelope, Owner, consent_event::Action as Consent,
        conversation_control::Action as Control, envelope::Content,
    },
};

/// When a message counts as sent for the messaging windows: the channel's
/// `sent_at`, but never later than the ingestion node's own `received_at`.
/// A caller's clock can make a window close sooner, never keep it open.
pub fn sent_at(envelope: &Envelope) -> Option<Timestamp> {
    match (envelope.sent_at, envelope.received_at) {
        (Some(sent), Some(received)) => Some(
            if (sent.seconds, sent.nanos) <= (received.seconds, received.nanos) {
                sent
            } else {
                received
            },
        ),
        (sent, received) => sent.or(received),
    }
}

/// Whether `envelope` is the customer writing in: it opens or refreshes the
/// messaging window. Receipts, system notices, consent keywords and
/// Switchboard's own control events do not.
fn is_customer_message(envelope: &Envelope) -> bool {
    envelope.direction() == Direction::Inbound
        && !matches!(
            envelope.content,
            None | Some(
                Content::Status(_)
                    | Content::System(_)
                    | Content::Consent(_)
                    | Content::Control(_)
                    | Content::Handover(_)
                    | Content::Deletion(_)
                    | Content::Subscription(_)
                    | Content::Link(_)
            )
        )
}

/// What a message itself says about its conversation, applied before it is
/// routed: the messaging window, the referral, consent, and ownership
/// changes from control events. Returns whether the state changed.
pub fn apply_message(
    state: &mut ConversationState,
    envelope: &Envelope,
    default_queue: &str,
) -> bool {
    let mut changed = false;
    if is_customer_message(envelope)
        && let Some(at) = sent_at(envelope)
        && state
            .last_inbound_at
            .as_ref()
            .is_none_or(|last| (last.seconds, last.nanos) < (at.seconds, at.nanos))
    {
        state.last_inbound_at = Some(at);
        changed = true;
    }
    if envelope.direction() == Direction::Inbound
        && let Some(referral) = &envelope.referral
    {
        state.referral = Some(referral.clone());
        state.referral_at = sent_at(envelope);
        changed = true;
    }
    let owner_or_consent_changed = match &envelope.content {
        Some(Content::Consent(consent)) => {
            let opted_out = match consent.action() {
                Consent::OptOut => true,
                Consent::OptIn => false,
                Consent::Unspecified => state.opted_out,
            };
            std::mem::replace(&mut state.opted_out, opted_out) != opted_out
        }
        Some(Content::Control(control)) => match control.action() {
            Control::Handoff => {
                let queue = if control.queue.is_empty() {
                    default_queue
                } else {
                    &control.queue
                };
                // A move between queues keeps the bot that handed off.
                let from = if state.owner() == Owner::Human {
                    state.handoff_from.clone()
                } else {
                    String::new()
                };
                hand_to_human(state, queue, &from);
                true
            }
            Control::Release => {
                release_to_bot(state);
                true
            }
            Control::Assign => {
                state.owner = Owner::Human as i32;
                state.agent_id.clone_from(&control.agent_id);
                true
            }
            Control::Unspecified => false,
        },
        _ => false,
    };
    changed || owner_or_consent_changed
}

/// An outbound message consent allowed is on its way to the customer: the
/// conversation's last outbound time. Control events are not messages.
/// Returns whether the state changed.
pub fn sent(state: &mut ConversationState, envelope: &Envelope) -> bool {
    if envelope.direction() != Direction::Outbound
        || matches!(envelope.content, None | Some(Content::Control(_)))
    {
        return false;
    }
    let Some(at) = envelope.received_at else {
        return false;
    };
    if state
        .last_outbound_at
        .as_ref()
        .is_some_and(|last| (last.seconds, last.nanos) >= (at.seconds, at.nanos))
    {
        return false;
    }
    state.last_outbound_at = Some(at);
    true
}

/// The conversation now belongs to a human in `queue`.
pub fn hand_to_human(state: &mut ConversationState, queue: &str, from_bot: &str) {
    state.owner = Owner::Human as i32;
    queue.clone_into(&mut state.queue);
    state.agent_id.clear();
    from_bot.clone_into(&mut state.handoff_from);
}

/// The conversation goes back to the bot.
pub fn release_to_bot(state: &mut ConversationState) {
    state.owner = Owner::Bot as i32;
    state.queue.clear();
    state.agent_id.clear();
    state.handoff_from.clear();
}

/// Whether the conversation has already seen `envelope`'s channel message
/// id in another record (a copy that reached Kafka twice). Envelopes
/// without one never are; nor is the same record read again at `offset`
/// (redone after a crash whose state was written before its offset).
pub fn is_duplicate(state: &ConversationState, envelope: &Envelope, offset: i64) -> bool {
    let id = &envelope.channel_message_id;
    if id.is_empty() {
        return false;
    }
    let hash = message_id_hash(id);
    // A state written before ids were hashed holds strings, older than any
    // hash, and its offsets line up with both in that order (`upgrade`).
    let legacy = state.recent_message_ids.len();
    let Some(i) = state
        .recent_message_hashes
        .iter()
        .rposition(|h| *h == hash)
        .map(|i| legacy + i)
        .or_else(|| state.recent_message_ids.iter().rposition(|x| x == id))
    else {
        return false;
    };
    // States written before offsets were kept have none: a copy, then.
    state.recent_message_offsets.get(i) != Some(&offset)
}

/// Remembers `envelope`'s channel message id, read at `offset`, keeping the
/// newest `keep`; true when it did.
pub fn remember(
    state: &mut ConversationState,
    envelope: &Envelope,
    offset: i64,
    keep: usize,
) -> bool {
    if keep == 0 || envelope.channel_message_id.is_empty() {
        return false;
    }
    upgrade(state);
    // Offsets line up with ids from the first one remembered with them.
    if state.recent_message_offsets.len() != state.recent_message_hashes.len() {
        state.recent_message_offsets = vec![-1; state.recent_message_hashes.len()];
    }
    state
        .recent_message_hashes
        .push(message_id_hash(&envelope.channel_message_id));
    state.recent_message_offsets.push(offset);
    let excess = state.recent_message_hashes.len().saturating_sub(keep);
    state.recent_message_hashes.drain(..excess);
    state.recent_message_offsets.drain(..excess);
    true
}

/// Hashes the ids of a state written before they were kept as hashes:
/// older than any hash, they go first, and keep their offsets.
fn upgrade(state: &mut ConversationState) {
    if state.recent_message_ids.is_empty() {
        return;
    }
    let ids = std::mem::take(&mut state.recent_message_ids);
    let remembered = ids.len() + state.recent_message_hashes.len();
    if state.recent_message_offsets.len() != remembered {
        state.recent_message_offsets = vec![-1; remembered];
    }
    state
        .recent_message_hashes
        .splice(0..0, ids.iter().map(|id| message_id_hash(id)));
}

/// Stamps the state as written now.
pub fn touch(state: &mut ConversationState) {
    state.updated_at = Some(switchboard_proto::timestamp(SystemTime::now()));
}
