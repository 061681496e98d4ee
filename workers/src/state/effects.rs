//! How messages change their conversation's state.

use std::time::SystemTime;

use switchboard_proto::{
    Timestamp,
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
/// id (a copy that reached Kafka twice). Envelopes without one never are.
pub fn is_duplicate(state: &ConversationState, envelope: &Envelope) -> bool {
    !envelope.channel_message_id.is_empty()
        && state
            .recent_message_ids
            .contains(&envelope.channel_message_id)
}

/// Remembers `envelope`'s channel message id, keeping the newest `keep`;
/// true when it did.
pub fn remember(state: &mut ConversationState, envelope: &Envelope, keep: usize) -> bool {
    if keep == 0 || envelope.channel_message_id.is_empty() {
        return false;
    }
    state
        .recent_message_ids
        .push(envelope.channel_message_id.clone());
    let excess = state.recent_message_ids.len().saturating_sub(keep);
    state.recent_message_ids.drain(..excess);
    true
}

/// Stamps the state as written now.
pub fn touch(state: &mut ConversationState) {
    state.updated_at = Some(switchboard_proto::timestamp(SystemTime::now()));
}
