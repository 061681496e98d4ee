//! Channel webhook normalizers: one channel's webhook body in, canonical
//! [`Envelope`]s out.
//!
//! [`normalize`] is a pure function of its arguments (no I/O, no clock: the
//! caller passes `now`), so the same body always gives the same envelopes.
//! One submodule per channel: `whatsapp` (Cloud API), `messenger` (Messenger
//! `object: "page"` and Instagram `object: "instagram"`), `sms` (Twilio-style
//! form posts) and `webchat` (the canonical envelope itself, as proto3 JSON or
//! binary protobuf).
//!
//! # What every envelope gets
//!
//! `tenant_id` (from the argument, never from the body), `channel`,
//! `direction`, `conversation_id`, `channel_message_id`, `customer` and
//! `business` parties, `sent_at` (from the channel's timestamp, when it has
//! one: SMS has none), `content`, and `reply_to`, `referral` and `attributes`
//! where the channel gives them. `message_id` and `received_at` are left
//! empty: [`crate::validate::normalize`] assigns them.
//!
//! # Conversations
//!
//! `conversation_id` is `<business id>:<customer id>`:
//!
//! | channel | business id | customer id |
//! | --- | --- | --- |
//! | WhatsApp | `metadata.phone_number_id` | the message's `from` (the `wa_id`); when it is empty or missing, the sender's contact's `wa_id`, else its `user_id` (customers with a username may have no `wa_id`). Statuses: `recipient_id` (or `recipient_user_id`) |
//! | Messenger, Instagram | the page or IG account: `recipient.id` (falling back to `entry.id`) | `sender.id` (PSID or IGSID). Echoes swap the two: the customer is `recipient.id` |
//! | SMS | `To` | `From` |
//! | Web chat | as posted | as posted |
//!
//! # Directions
//!
//! `INBOUND` when the customer authored the event (messages, reactions,
//! postbacks, referrals, deletions, opt-outs): these are what open or refresh
//! a messaging window. `OUTBOUND` for everything from the business side or
//! about the business's messages: echoes of its own messages, delivery and
//! read receipts and WhatsApp statuses (they report on outbound messages), and
//! thread-control handovers between the business's apps.
//!
//! # Channel message ids (the dedupe key)
//!
//! Webhooks are delivered at least once, so `channel_message_id` must be the
//! same for a retried event and different for every distinct event:
//!
//! | event | `channel_message_id` |
//! | --- | --- |
//! | WhatsApp message (any type, reactions included: they have their own `wamid`) | the `wamid…` |
//! | WhatsApp status | `<wamid>:<status>`, e.g. `wamid.X:delivered` |
//! | Messenger/IG message, echo, postback with `mid` | the `mid` |
//! | Messenger/IG unsend (`is_deleted`) | `<mid>:deleted` |
//! | Messenger/IG delivery | `<mid>:delivery`, one envelope per `mids[]` entry |
//! | Messenger/IG read of one message (IG `read.mid`) | `<mid>:read` |
//! | Messenger/IG delivery or read by watermark only | `<conversation_id>:<watermark>:delivery` or `…:read` |
//! | Messenger/IG reaction | `<mid>:reaction:<emoji, or "removed">:<timestamp ms>` (the timestamp keeps react, unreact, react again apart) |
//! | Messenger/IG events without an id of their own (referral, handover, unknown events, postback without `mid`) | `<conversation_id>:<timestamp ms>:<event>`, e.g. `…:referral`, `…:pass_thread_control` |
//! | SMS | `MessageSid` |
//! | Web chat | as posted |
//!
//! # Content mapping choices
//!
//! - Unknown message types and events are not errors: they become
//!   `Unsupported{type}` (`type` is the channel's name, e.g. `unsupported`,
//!   `ephemeral`, `interactive.nfm_reply`, `optin`). A Messenger event of an
//!   unknown kind that names no sender has no conversation and is skipped.
//! - A standalone Messenger/IG `referral` event becomes an empty `Postback`
//!   with `envelope.referral` set: like a postback, it is the customer tapping
//!   something the business published (an ad, an `m.me` link), it opens the
//!   messaging window (7 days after a click-to-message ad), and bots handle it
//!   as an entry point. The `ref` is carried once, in `referral.ref`.
//! - A WhatsApp click-to-WhatsApp `referral` on a message becomes
//!   `envelope.referral{source: source_type, ref: ctwa_clid, type:
//!   media_type, ad_id: source_id}`.
//! - Thread-control `request_thread_control.requested_owner_app_id` goes to
//!   `Handover.new_owner_app_id` (the app that asks to become the owner).
//! - Messenger `standby` events carry the attribute `standby=true`.
//! - SMS: a whole body (trimmed, any case) of STOP, UNSUBSCRIBE, CANCEL, END
//!   or QUIT is `Consent{OPT_OUT}`, START or UNSTOP is `Consent{OPT_IN}`; the
//!   keyword wins over any media sent with it (opting out must never be lost).
//!
//! # Attributes
//!
//! Only small values the proto has no field for: `standby=true` (Messenger/IG
//! standby events), `app_id` (the app that sent a Messenger/IG echo),
//! `reply_to_story_id` (an Instagram reply to the business's story),
//! `conversation_origin` and `pricing_category` (WhatsApp statuses), and
//! `account_sid` and `messaging_service_sid` (SMS).
//!
//! # Errors
//!
//! Bad input is [`IngestError::InvalidArgument`], every violation named by a
//! path rooted at `payload` (e.g.
//! `payload.entry[0].changes[0].value.messages[1].from`; SMS form fields are
//! `payload.From`), or `channel`, `tenant_id`, `content_type`. Normalization is
//! all or nothing: when any event is invalid nothing is returned, and the
//! error lists every violation found (up to a cap). Strictness is on what
//! routing and dedupe need (ids, senders, timestamps, references); content
//! details the channel leaves out are left empty.
//!
//! Timestamps must be integers (a string or a number), not before 2000-01-01
//! (a smaller value is almost surely the wrong unit) and at most one day
//! after `now`.
//!
//! A webhook that carries no event Switchboard models (e.g. only changes
//! with another `field`, such as template status updates, or an empty
//! `entry`) normalizes to an empty `Vec`, not an error: the channel must get
//! a 200 for it, or it retries forever.

mod common;
mod messenger;
mod sms;
mod webchat;
mod whatsapp;

use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use switchboard_proto::v1::{Channel, Envelope};

use crate::error::{FieldViolation, IngestError};

use self::common::Ctx;

/// Bounds on one webhook body, checked before and while parsing it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest accepted body, in bytes (default 1 MiB).
    pub max_body_bytes: usize,
    /// Most events (envelopes) one webhook may carry (default 1000).
    pub max_events: usize,
    /// Longest free text (a message body, caption, postback payload), in bytes
    /// (default 64 KiB).
    pub max_text_bytes: usize,
    /// Deepest JSON nesting of objects and arrays (default 32). Checked before
    /// parsing, so a pathological body costs one linear scan.
    pub max_depth: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 1024 * 1024,
            max_events: 1000,
            max_text_bytes: 64 * 1024,
            max_depth: 32,
        }
    }
}

/// Normalizes one webhook body from `channel` into canonical envelopes, in
/// the order the body carries them.
///
/// `content_type` is the HTTP `Content-Type` of the body (empty means the
/// channel's usual one). `now` bounds how far in the future a channel
/// timestamp may be. See the [module docs](self) for the conventions.
pub fn normalize(
    channel: Channel,
    tenant_id: &str,
    payload: &[u8],
    content_type: &str,
    limits: &Limits,
    now: SystemTime,
) -> Result<Vec<Envelope>, IngestError> {
    let normalizer = check_request(channel, tenant_id, payload, content_type, limits)?;
    let mut ctx = Ctx::new(tenant_id, channel, limits, now);
    match normalizer {
        Normalizer::WhatsApp => whatsapp::normalize(&mut ctx, json_text(payload, limits)?)?,
        Normalizer::Meta => messenger::normalize(&mut ctx, json_text(payload, limits)?)?,
        Normalizer::Sms => sms::normalize(&mut ctx, payload)?,
        Normalizer::WebchatJson => webchat::normalize_json(&mut ctx, json_text(payload, limits)?)?,
        Normalizer::WebchatProtobuf => webchat::normalize_protobuf(&mut ctx, payload)?,
    }
    ctx.finish()
}

/// What reads a body: one per channel and body encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Normalizer {
    WhatsApp,
    /// Messenger and Instagram.
    Meta,
    Sms,
    WebchatJson,
    WebchatProtobuf,
}

const JSON: &str = "application/json";
const FORM: &str = "application/x-www-form-urlencoded";

/// Checks everything but the body's contents: the channel, the tenant, the
/// content type and the body's size. Reports all of them at once.
fn check_request(
    channel: Channel,
    tenant_id: &str,
    payload: &[u8],
    content_type: &str,
    limits: &Limits,
) -> Result<Normalizer, IngestError> {
    let mut violations = Vec::new();
    if tenant_id.is_empty() {
        violations.push(FieldViolation::new("tenant_id", "is required"));
    }
    let normalizer = match accepted_types(channel) {
        None => {
            violations.push(FieldViolation::new(
                "channel",
                "must be one of WHATSAPP, MESSENGER, INSTAGRAM, SMS, WEBCHAT",
            ));
            None
        }
        Some(accepted) => match content_format(content_type, accepted) {
            Ok(normalizer) => Some(normalizer),
            Err(description) => {
                violations.push(FieldViolation::new("content_type", description));
                None
            }
        },
    };
    if payload.len() > limits.max_body_bytes {
        violations.push(FieldViolation::new(
            "payload",
            format!(
                "is {} bytes, over the limit of {} bytes",
                payload.len(),
                limits.max_body_bytes
            ),
        ));
    }
    match normalizer {
        Some(normalizer) if violations.is_empty() => Ok(normalizer),
        _ => Err(IngestError::InvalidArgument(violations)),
    }
}

/// The media types a channel accepts, the first being its default.
fn accepted_types(channel: Channel) -> Option<&'static [(&'static str, Normalizer)]> {
    match channel {
        Channel::Whatsapp => Some(&[(JSON, Normalizer::WhatsApp)]),
        Channel::Messenger | Channel::Instagram => Some(&[(JSON, Normalizer::Meta)]),
        Channel::Sms => Some(&[(FORM, Normalizer::Sms)]),
        Channel::Webchat => Some(&[
            (JSON, Normalizer::WebchatJson),
            ("application/x-protobuf", Normalizer::WebchatProtobuf),
            ("application/protobuf", Normalizer::WebchatProtobuf),
        ]),
        Channel::Unspecified => None,
    }
}

/// Matches `content_type` (`type/subtype; charset=...`) against `accepted`.
/// An empty content type means the channel's default (the first one); a
/// charset, when given, must be UTF-8.
fn content_format(
    content_type: &str,
    accepted: &[(&str, Normalizer)],
) -> Result<Normalizer, String> {
    let mut parts = content_type.split(';');
    let media_type = parts.next().unwrap_or_default().trim();
    let found = if media_type.is_empty() {
        accepted.first()
    } else {
        accepted
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(media_type))
    };
    let Some(&(_, normalizer)) = found else {
        let names: Vec<_> = accepted.iter().map(|(name, _)| *name).collect();
        return Err(format!(
            "{media_type:?} is not accepted for this channel: use {}",
            names.join(" or ")
        ));
    };
    for (name, value) in parts.filter_map(|param| param.split_once('=')) {
        let value = value.trim().trim_matches('"');
        if name.trim().eq_ignore_ascii_case("charset")
            && !value.eq_ignore_ascii_case("utf-8")
            && !value.eq_ignore_ascii_case("utf8")
        {
            return Err(format!("charset {value:?} is not supported: use utf-8"));
        }
    }
    Ok(normalizer)
}

/// The body as JSON text: valid UTF-8, nested no deeper than the limit.
fn json_text<'p>(payload: &'p [u8], limits: &Limits) -> Result<&'p str, IngestError> {
    let text = std::str::from_utf8(payload).map_err(|e| {
        IngestError::invalid(
            "payload",
            format!("is not valid UTF-8 (at byte {})", e.valid_up_to()),
        )
    })?;
    if let Some(offset) = common::exceeds_depth(payload, limits.max_depth) {
        return Err(IngestError::invalid(
            "payload",
            format!(
                "nests deeper than {} levels (at byte {offset})",
                limits.max_depth
            ),
        ));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types_match_loosely_but_charsets_must_be_utf8() {
        let json = accepted_types(Channel::Webchat).unwrap();
        assert_eq!(content_format("", json), Ok(Normalizer::WebchatJson));
        assert_eq!(
            content_format("Application/JSON; charset=\"UTF-8\"", json),
            Ok(Normalizer::WebchatJson)
        );
        assert_eq!(
            content_format("application/x-protobuf", json),
            Ok(Normalizer::WebchatProtobuf)
        );
        assert!(content_format("application/json; charset=latin1", json).is_err());
        assert!(content_format("text/plain", json).is_err());
    }

    #[test]
    fn limits_deserialize_with_defaults_and_reject_unknown_fields() {
        let limits: Limits = serde_json::from_str(r#"{"max_events": 5}"#).unwrap();
        assert_eq!(
            limits,
            Limits {
                max_events: 5,
                ..Limits::default()
            }
        );
        assert!(serde_json::from_str::<Limits>(r#"{"max_event": 5}"#).is_err());
    }
}
