//! Consent and the messaging window, enforced on every outbound message.
//!
//! - An opted-out customer (SMS STOP) receives nothing until they opt back in.
//! - A broadcast to a topic (the envelope's `broadcast_topic` attribute)
//!   reaches only conversations subscribed to it.
//! - On WhatsApp, Messenger and Instagram a free-form message may be sent
//!   only within `service_window` (24 h) of the customer's last inbound
//!   message. On Messenger and Instagram the window is `extended_window`
//!   (7 days) for a message tagged `HUMAN_AGENT`, and after a
//!   click-to-message ad (`referral.source = ADS`), counted from the ad.
//! - Templates are allowed outside the window.
//! - SMS has no window, and web chat is the business's own channel: neither
//!   has one.

use std::time::{Duration, SystemTime};

use switchboard_proto::v1::{
    Channel, ConversationState, Envelope, MessageTag, RejectionReason, envelope::Content,
};

/// The window lengths.
#[derive(Debug, Clone, Copy)]
pub struct ConsentPolicy {
    /// Free-form messages after the customer's last inbound message.
    pub service_window: Duration,
    /// With `HUMAN_AGENT`, or after a click-to-message ad (Messenger, Instagram).
    pub extended_window: Duration,
}

/// Why a message may not be sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The reason, for the rejections topic and the metric label.
    pub reason: RejectionReason,
    /// A human-readable explanation.
    pub detail: String,
}

impl Refusal {
    /// The metric label of the reason.
    pub fn label(&self) -> &'static str {
        reason_label(self.reason)
    }
}

/// The metric (and report) label of a rejection reason.
pub fn reason_label(reason: RejectionReason) -> &'static str {
    match reason {
        RejectionReason::OutsideWindow => "outside_window",
        RejectionReason::NoInbound => "no_inbound",
        RejectionReason::OptedOut => "opted_out",
        RejectionReason::ProviderRefused => "provider_refused",
        RejectionReason::Unsendable => "unsendable",
        RejectionReason::NotSubscribed => "not_subscribed",
        RejectionReason::Unspecified => "unspecified",
    }
}

fn age(since: &switchboard_proto::Timestamp, now: SystemTime) -> Option<Duration> {
    let since = switchboard_proto::system_time(since)?;
    Some(now.duration_since(since).unwrap_or_default())
}

fn human(d: Duration) -> String {
    let secs = d.as_secs();
    if secs >= 86_400 {
        format!("{}d{}h", secs / 86_400, secs % 86_400 / 3600)
    } else {
        format!("{}h{}m", secs / 3600, secs % 3600 / 60)
    }
}

impl ConsentPolicy {
    /// Whether the outbound `envelope` may be sent at `now` to a
    /// conversation in `state`.
    pub fn check(
        &self,
        envelope: &Envelope,
        state: &ConversationState,
        now: SystemTime,
    ) -> Result<(), Refusal> {
        if state.opted_out {
            return Err(Refusal {
                reason: RejectionReason::OptedOut,
                detail: "the customer opted out and has not opted back in".into(),
            });
        }
        if let Some(topic) = envelope.attributes.get(crate::broadcast::TOPIC_ATTRIBUTE)
            && !super::subscriptions::is_subscribed(state, topic)
        {
            return Err(Refusal {
                reason: RejectionReason::NotSubscribed,
                detail: format!(
                    "broadcast to topic {topic}, which the conversation is not subscribed to"
                ),
            });
        }
        let channel = envelope.channel();
        if !matches!(
            channel,
            Channel::Whatsapp | Channel::Messenger | Channel::Instagram
        ) || matches!(envelope.content, Some(Content::Template(_)))
        {
            return Ok(());
        }
        let Some(last_inbound) = state.last_inbound_at.as_ref() else {
            return Err(Refusal {
                reason: RejectionReason::NoInbound,
                detail: "free-form message to a customer who never wrote in; send a template"
                    .into(),
            });
        };
        let since_inbound = age(last_inbound, now).unwrap_or(Duration::MAX);
        if since_inbound <= self.service_window {
            return Ok(());
        }
        let meta = matches!(channel, Channel::Messenger | Channel::Instagram);
        if meta && envelope.tag() == MessageTag::HumanAgent && since_inbound <= self.extended_window
        {
            return Ok(());
        }
        let since_ad = state
            .referral
            .as_ref()
            .filter(|r| r.source.eq_ignore_ascii_case("ADS"))
            .and(state.referral_at.as_ref())
            .and_then(|at| age(at, now));
        if meta && since_ad.is_some_and(|a| a <= self.extended_window) {
            return Ok(());
        }
        let window = if meta && envelope.tag() == MessageTag::HumanAgent {
            self.extended_window
        } else {
            self.service_window
        };
        Err(Refusal {
            reason: RejectionReason::OutsideWindow,
            detail: format!(
                "free-form message {} after the customer's last message; the window is {}; send a template",
                human(since_inbound),
                human(window)
            ),
        })
    }
}
