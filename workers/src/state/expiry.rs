//! When an idle conversation's state is forgotten.
//!
//! A state expires once nothing in it can matter any more: the
//! conversation has been idle (no state change, no inbound message, no
//! referral) for `state_idle_expiry`, which is at least the longest
//! messaging window (7 days after an ad or with `HUMAN_AGENT`) and the
//! sticky-agent memory, and no human owns it. What survives:
//!
//! - a human-owned conversation never expires: an agent (or the desk, on
//!   release) ends it, not the clock;
//! - an opt-out is a customer's instruction, kept until they opt back in:
//!   an opted-out conversation keeps a minimal state, `opted_out` alone
//!   (a few bytes), and never expires further;
//! - so are a broadcast subscription and a customer link: a conversation
//!   subscribed to a topic, or linked to a customer, keeps a minimal state
//!   (its subscriptions, its link, its customer id) until it unsubscribes
//!   or is unlinked;
//! - everything else (window, referral, recent message ids, a bot owner)
//!   is forgotten: the state topic gets a tombstone, and the next message
//!   starts from a fresh state, exactly as a new conversation would.

use std::time::{Duration, SystemTime};

use switchboard_proto::{
    Timestamp,
    v1::{ConversationState, Owner},
};

/// What an idle sweep does with one state.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Still matters (or already minimal): left as it is.
    Keep,
    /// Forgotten: written as a tombstone.
    Forget,
    /// Shrunk to what must survive: [`minimal`].
    Minimize,
}

/// The idle time after which states expire.
#[derive(Debug, Clone, Copy)]
pub struct ExpiryPolicy {
    pub idle: Duration,
}

fn later(a: Option<&Timestamp>, b: Option<&Timestamp>) -> Option<Timestamp> {
    match (a, b) {
        (Some(a), Some(b)) => Some(if (a.seconds, a.nanos) >= (b.seconds, b.nanos) {
            *a
        } else {
            *b
        }),
        (a, b) => a.or(b).copied(),
    }
}

/// The state's last sign of life: its last change, the customer's last
/// message, its last referral.
fn last_active(state: &ConversationState) -> Option<SystemTime> {
    let last = later(
        later(state.updated_at.as_ref(), state.last_inbound_at.as_ref()).as_ref(),
        state.referral_at.as_ref(),
    )?;
    switchboard_proto::system_time(&last)
}

/// What of `state` survives expiry: the opt-out, the subscriptions still
/// on, and the customer link (with the customer id they are sent to, or
/// linked by). The default state when nothing does.
pub fn minimal(state: &ConversationState) -> ConversationState {
    let subscriptions: Vec<_> = state
        .subscriptions
        .iter()
        .filter(|s| s.subscribed)
        .cloned()
        .collect();
    let linked = !state.linked_customer.is_empty();
    ConversationState {
        opted_out: state.opted_out,
        customer_id: if subscriptions.is_empty() && !linked {
            String::new()
        } else {
            state.customer_id.clone()
        },
        subscriptions,
        linked_customer: state.linked_customer.clone(),
        customer_attributes: state.customer_attributes.clone(),
        customer_conversations: state.customer_conversations.clone(),
        customer_unlinked: state.customer_unlinked,
        ..Default::default()
    }
}

impl ExpiryPolicy {
    /// How often the idle sweep may begin a pass over every state: a
    /// hundredth of `idle`, between 1 s and 1 minute. A state is expired at
    /// most that much (plus the pass's own length) after it became idle.
    pub fn sweep_pass(&self) -> Duration {
        (self.idle / 100).clamp(Duration::from_secs(1), Duration::from_secs(60))
    }

    /// What to do with `state` at `now`.
    pub fn verdict(&self, state: &ConversationState, now: SystemTime) -> Verdict {
        if *state == ConversationState::default() || state.owner() == Owner::Human {
            return Verdict::Keep;
        }
        // A state without any time (none was ever stamped) is as old as can be.
        if let Some(last) = last_active(state)
            && now.duration_since(last).unwrap_or_default() < self.idle
        {
            return Verdict::Keep;
        }
        let minimal = minimal(state);
        if minimal == ConversationState::default() {
            Verdict::Forget
        } else if *state == minimal {
            Verdict::Keep
        } else {
            Verdict::Minimize
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    fn at(t: SystemTime) -> Option<Timestamp> {
        Some(switchboard_proto::timestamp(t))
    }

    #[test]
    fn idle_bot_states_are_forgotten_human_ones_kept_opt_outs_minimized() {
        let policy = ExpiryPolicy { idle: 8 * DAY };
        let now = SystemTime::now();
        let mut state = ConversationState {
            owner: Owner::Bot as i32,
            updated_at: at(now - 9 * DAY),
            last_inbound_at: at(now - 9 * DAY),
            recent_message_ids: vec!["wamid.1".into()],
            ..Default::default()
        };
        assert_eq!(policy.verdict(&state, now), Verdict::Forget);
        // Any recent sign of life keeps it.
        state.referral_at = at(now - DAY);
        assert_eq!(policy.verdict(&state, now), Verdict::Keep);
        state.referral_at = None;
        state.owner = Owner::Human as i32;
        assert_eq!(
            policy.verdict(&state, now),
            Verdict::Keep,
            "a human owns it"
        );
        state.owner = Owner::Bot as i32;
        state.opted_out = true;
        assert_eq!(
            policy.verdict(&state, now),
            Verdict::Minimize,
            "an opt-out survives"
        );
        let minimal = ConversationState {
            opted_out: true,
            ..Default::default()
        };
        assert_eq!(
            policy.verdict(&minimal, now),
            Verdict::Keep,
            "already minimal"
        );
        assert_eq!(
            policy.verdict(&ConversationState::default(), now),
            Verdict::Keep
        );
        let unstamped = ConversationState {
            owner: Owner::Bot as i32,
            ..Default::default()
        };
        assert_eq!(policy.verdict(&unstamped, now), Verdict::Forget);
    }

    #[test]
    fn subscriptions_survive_expiry_with_their_customer_id() {
        use switchboard_proto::v1::Subscription;
        let policy = ExpiryPolicy { idle: 8 * DAY };
        let now = SystemTime::now();
        let topic = |topic: &str, subscribed| Subscription {
            topic: topic.into(),
            subscribed,
            ..Default::default()
        };
        let state = ConversationState {
            owner: Owner::Bot as i32,
            updated_at: at(now - 9 * DAY),
            customer_id: "15551230000".into(),
            subscriptions: vec![topic("news", true), topic("offers", false)],
            ..Default::default()
        };
        assert_eq!(policy.verdict(&state, now), Verdict::Minimize);
        let kept = minimal(&state);
        assert_eq!(kept.subscriptions, vec![topic("news", true)]);
        assert_eq!(kept.customer_id, "15551230000");
        assert_eq!(policy.verdict(&kept, now), Verdict::Keep, "already minimal");
        let unsubscribed = ConversationState {
            subscriptions: vec![topic("offers", false)],
            customer_id: "15551230000".into(),
            ..state
        };
        assert_eq!(policy.verdict(&unsubscribed, now), Verdict::Forget);
        let linked = ConversationState {
            linked_customer: "cus-kim".into(),
            customer_conversations: vec!["acme/instagram/ig-1".into()],
            ..unsubscribed
        };
        assert_eq!(policy.verdict(&linked, now), Verdict::Minimize);
        let kept = minimal(&linked);
        assert_eq!(
            (kept.linked_customer.as_str(), kept.customer_id.as_str()),
            ("cus-kim", "15551230000"),
            "a link survives"
        );
        assert_eq!(kept.customer_conversations, linked.customer_conversations);
    }
}
