//! Messenger (`object: "page"`) and Instagram Messaging (`object:
//! "instagram"`) webhooks: the same shape, with a few Instagram-only
//! attachment types and events.
//!
//! Each entry is one page or IG account, with its events in `messaging`, or
//! in `standby` when another app owns the thread. Each event has `sender`,
//! `recipient`, `timestamp` (milliseconds) and one event object; the first
//! one found decides the content, in this order: `message`, `postback`,
//! `reaction`, `delivery`, `read`, the thread-control events, `referral`.

use std::collections::BTreeMap;

use serde::{Deserialize, de::IgnoredAny};
use serde_json::value::RawValue;
use switchboard_proto::v1::{
    Attachments, Deletion, Direction, Envelope, Handover, InteractiveReply, Media, Postback,
    Reaction, Referral, StatusReceipt, Text, Unsupported, envelope::Content, handover::Action,
    media::Kind, status_receipt::State,
};

use super::common::{ChannelTime, Ctx, JsonPath, Scalar, Thread, TimeUnit, meta_entries, parse};
use crate::error::IngestError;

#[derive(Deserialize)]
struct Entry<'a> {
    id: Option<String>,
    #[serde(borrow)]
    messaging: Option<Vec<&'a RawValue>>,
    #[serde(borrow)]
    standby: Option<Vec<&'a RawValue>>,
}

#[derive(Deserialize)]
struct Event {
    sender: Option<Account>,
    recipient: Option<Account>,
    timestamp: Option<Scalar>,
    message: Option<Message>,
    postback: Option<PostbackBody>,
    referral: Option<ReferralBody>,
    delivery: Option<Delivery>,
    read: Option<Read>,
    reaction: Option<ReactionBody>,
    pass_thread_control: Option<HandoverBody>,
    take_thread_control: Option<HandoverBody>,
    request_thread_control: Option<HandoverBody>,
}

#[derive(Deserialize)]
struct Account {
    id: Option<String>,
}

#[derive(Deserialize)]
struct Message {
    mid: Option<String>,
    text: Option<String>,
    quick_reply: Option<QuickReply>,
    reply_to: Option<ReplyTo>,
    attachments: Option<Vec<Attachment>>,
    is_echo: Option<bool>,
    is_deleted: Option<bool>,
    app_id: Option<Scalar>,
    referral: Option<ReferralBody>,
}

#[derive(Deserialize)]
struct QuickReply {
    payload: Option<String>,
}

#[derive(Deserialize)]
struct ReplyTo {
    mid: Option<String>,
    /// Instagram: a reply to the business's story.
    story: Option<Story>,
}

#[derive(Deserialize)]
struct Story {
    id: Option<Scalar>,
}

#[derive(Deserialize)]
struct Attachment {
    #[serde(rename = "type")]
    kind: Option<String>,
    payload: Option<AttachmentPayload>,
    /// `fallback` attachments carry their URL here rather than in `payload`.
    url: Option<String>,
}

#[derive(Deserialize)]
struct AttachmentPayload {
    url: Option<String>,
    title: Option<String>,
    sticker_id: Option<Scalar>,
    reel_video_id: Option<Scalar>,
}

#[derive(Deserialize)]
struct PostbackBody {
    mid: Option<String>,
    title: Option<String>,
    payload: Option<String>,
    referral: Option<ReferralBody>,
}

#[derive(Deserialize)]
struct ReferralBody {
    #[serde(rename = "ref")]
    reference: Option<String>,
    source: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    ad_id: Option<Scalar>,
}

#[derive(Deserialize)]
struct Delivery {
    mids: Option<Vec<Option<String>>>,
    watermark: Option<Scalar>,
}

#[derive(Deserialize)]
struct Read {
    watermark: Option<Scalar>,
    /// Instagram reads name the message.
    mid: Option<String>,
}

#[derive(Deserialize)]
struct ReactionBody {
    mid: Option<String>,
    action: Option<String>,
    emoji: Option<String>,
    /// The reaction's name (`love`, `smile`, ...), when there is no emoji.
    reaction: Option<String>,
}

#[derive(Deserialize)]
struct HandoverBody {
    new_owner_app_id: Option<Scalar>,
    previous_owner_app_id: Option<Scalar>,
    requested_owner_app_id: Option<Scalar>,
    metadata: Option<String>,
}

/// Normalizes a Messenger or Instagram webhook body.
pub(super) fn normalize(ctx: &mut Ctx<'_>, body: &str) -> Result<(), IngestError> {
    let entries: Vec<(JsonPath, Entry<'_>)> = meta_entries(ctx, body)?;
    for (entry_path, entry) in &entries {
        for (field, events, standby) in [
            ("messaging", &entry.messaging, false),
            ("standby", &entry.standby, true),
        ] {
            for (j, raw) in events.iter().flatten().enumerate() {
                ctx.count_events(1)?;
                let path = entry_path.key(field).index(j);
                if let Some(event) = ctx.record(parse::<Event>(raw.get(), &path)) {
                    let source = Source {
                        entry_id: entry.id.as_deref(),
                        raw,
                        standby,
                        path: &path,
                    };
                    normalize_event(ctx, &event, &source)?;
                }
            }
        }
    }
    Ok(())
}

/// Where an event was found.
struct Source<'a> {
    entry_id: Option<&'a str>,
    raw: &'a RawValue,
    standby: bool,
    path: &'a JsonPath,
}

/// What kind of event an item is: its first known event object.
enum EventKind<'e> {
    Message(&'e Message),
    Postback(&'e PostbackBody),
    Reaction(&'e ReactionBody),
    Delivery(&'e Delivery),
    Read(&'e Read),
    Handover(Action, &'static str, &'e HandoverBody),
    Referral(&'e ReferralBody),
    Unknown,
}

impl<'e> EventKind<'e> {
    fn of(event: &'e Event) -> Self {
        let handover = || {
            [
                (
                    Action::Pass,
                    "pass_thread_control",
                    &event.pass_thread_control,
                ),
                (
                    Action::Take,
                    "take_thread_control",
                    &event.take_thread_control,
                ),
                (
                    Action::Request,
                    "request_thread_control",
                    &event.request_thread_control,
                ),
            ]
            .into_iter()
            .find_map(|(action, name, body)| Some(Self::Handover(action, name, body.as_ref()?)))
        };
        event
            .message
            .as_ref()
            .map(Self::Message)
            .or_else(|| event.postback.as_ref().map(Self::Postback))
            .or_else(|| event.reaction.as_ref().map(Self::Reaction))
            .or_else(|| event.delivery.as_ref().map(Self::Delivery))
            .or_else(|| event.read.as_ref().map(Self::Read))
            .or_else(handover)
            .or_else(|| event.referral.as_ref().map(Self::Referral))
            .unwrap_or(Self::Unknown)
    }
}

/// One event's thread and time, shared by the envelopes made from it.
struct Scope {
    /// The event's path in the body.
    path: JsonPath,
    thread: Thread,
    time: ChannelTime,
    standby: bool,
}

impl Scope {
    /// An id for an event that has none of its own:
    /// `<conversation_id>:<time ms>:<event>`.
    fn derived_id(&self, time: i64, event: &str) -> String {
        format!("{}:{time}:{event}", self.thread.conversation_id())
    }

    /// [`Scope::derived_id`] at the event's own time.
    fn event_id(&self, event: &str) -> String {
        self.derived_id(self.time.raw, event)
    }

    fn envelope(
        &self,
        direction: Direction,
        channel_message_id: String,
        content: Content,
    ) -> Envelope {
        let mut envelope = self.thread.envelope(
            direction,
            channel_message_id,
            Some(self.time.timestamp),
            content,
        );
        if self.standby {
            envelope
                .attributes
                .insert("standby".to_owned(), "true".to_owned());
        }
        envelope
    }

    /// Emits an envelope of this event as it is.
    fn emit(&self, ctx: &mut Ctx<'_>, direction: Direction, id: String, content: Content) {
        ctx.emit(&self.path, self.envelope(direction, id, content));
    }
}

fn normalize_event(
    ctx: &mut Ctx<'_>,
    event: &Event,
    source: &Source<'_>,
) -> Result<(), IngestError> {
    let kind = EventKind::of(event);
    let sender_id = event.sender.as_ref().and_then(|s| s.id.as_deref());
    if matches!(kind, EventKind::Unknown) && sender_id.is_none() {
        // E.g. a checkbox-plugin `optin`: no customer, so no conversation.
        return Ok(());
    }
    let Some(scope) = scope(ctx, event, &kind, source) else {
        return Ok(());
    };
    let at = |field: &str| source.path.key(field);
    match kind {
        EventKind::Message(message) => {
            self::message(
                ctx,
                &scope,
                message,
                event.referral.as_ref(),
                &at("message"),
            );
        }
        EventKind::Postback(postback) => self::postback(ctx, &scope, postback, &at("postback")),
        EventKind::Reaction(reaction) => self::reaction(ctx, &scope, reaction, &at("reaction")),
        EventKind::Delivery(delivery) => self::delivery(ctx, &scope, delivery, &at("delivery"))?,
        EventKind::Read(read) => self::read(ctx, &scope, read, &at("read")),
        EventKind::Handover(action, name, body) => {
            self::handover(ctx, &scope, action, body, &at(name), name);
        }
        EventKind::Referral(referral) => {
            let mut envelope = scope.envelope(
                Direction::Inbound,
                scope.event_id("referral"),
                Content::Postback(Postback::default()),
            );
            envelope.referral = Some(self::referral(referral));
            ctx.emit(&scope.path, envelope);
        }
        EventKind::Unknown => {
            let name = unknown_event_name(source.raw);
            scope.emit(
                ctx,
                Direction::Inbound,
                scope.event_id(&name),
                Content::Unsupported(Unsupported { r#type: name }),
            );
        }
    }
    Ok(())
}

/// The event's thread and time; `None` (with violations recorded) when the
/// parties or the timestamp are invalid. The customer is the sender, the
/// business the recipient (or the entry's page), except for echoes of the
/// business's own messages, where they swap.
fn scope(
    ctx: &mut Ctx<'_>,
    event: &Event,
    kind: &EventKind<'_>,
    source: &Source<'_>,
) -> Option<Scope> {
    let echo = matches!(kind, EventKind::Message(m) if m.is_echo == Some(true));
    let (customer, business, customer_field, business_field) = if echo {
        (&event.recipient, &event.sender, "recipient", "sender")
    } else {
        (&event.sender, &event.recipient, "sender", "recipient")
    };
    let path = source.path;
    let customer = ctx.id(&path.key(customer_field).key("id"), account_id(customer));
    let business = ctx.id(
        &path.key(business_field).key("id"),
        account_id(business).or(source.entry_id),
    );
    let time = ctx.time(
        &path.key("timestamp"),
        event.timestamp.as_ref(),
        TimeUnit::Millis,
    )?;
    if customer.is_empty() || business.is_empty() {
        return None;
    }
    Some(Scope {
        path: path.clone(),
        thread: Thread::new(business, customer),
        time,
        standby: source.standby,
    })
}

fn account_id(account: &Option<Account>) -> Option<&str> {
    account.as_ref()?.id.as_deref()
}

/// The first key of an unknown event that is not common to all events: the
/// event's name (`optin`, `message_edit`, ...).
fn unknown_event_name(raw: &RawValue) -> String {
    const COMMON: [&str; 3] = ["sender", "recipient", "timestamp"];
    serde_json::from_str::<BTreeMap<String, IgnoredAny>>(raw.get())
        .ok()
        .and_then(|keys| keys.into_keys().find(|k| !COMMON.contains(&k.as_str())))
        .unwrap_or_else(|| "unknown".to_owned())
}

fn message(
    ctx: &mut Ctx<'_>,
    scope: &Scope,
    message: &Message,
    event_referral: Option<&ReferralBody>,
    at: &JsonPath,
) {
    let mid = ctx.id(&at.key("mid"), message.mid.as_deref());
    let echo = message.is_echo == Some(true);
    let direction = if echo {
        Direction::Outbound
    } else {
        Direction::Inbound
    };
    if message.is_deleted == Some(true) {
        scope.emit(
            ctx,
            direction,
            format!("{mid}:deleted"),
            Content::Deletion(Deletion {
                target_message_id: mid.to_owned(),
            }),
        );
        return;
    }
    let content = message_content(ctx, message, at);
    let mut envelope = scope.envelope(direction, mid.to_owned(), content);
    if let Some(reply_to) = &message.reply_to {
        envelope.reply_to = reply_to.mid.clone().unwrap_or_default();
        if let Some(story) = reply_to.story.as_ref().and_then(|s| s.id.as_ref()) {
            envelope
                .attributes
                .insert("reply_to_story_id".to_owned(), story.as_str().to_owned());
        }
    }
    if let Some(app_id) = message.app_id.as_ref().filter(|_| echo) {
        envelope
            .attributes
            .insert("app_id".to_owned(), app_id.as_str().to_owned());
    }
    envelope.referral = message.referral.as_ref().or(event_referral).map(referral);
    ctx.emit(&scope.path, envelope);
}

/// A quick reply, media (one attachment), attachments (several, with the
/// text as caption), text, or `Unsupported{"message"}` when it has none.
fn message_content(ctx: &mut Ctx<'_>, message: &Message, at: &JsonPath) -> Content {
    let text = ctx.text(&at.key("text"), message.text.as_deref());
    if let Some(quick_reply) = &message.quick_reply {
        return Content::InteractiveReply(InteractiveReply {
            id: ctx.text(
                &at.key("quick_reply").key("payload"),
                quick_reply.payload.as_deref(),
            ),
            title: text,
            description: String::new(),
        });
    }
    let attachments_path = at.key("attachments");
    let mut items: Vec<Media> = message
        .attachments
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, attachment)| media(ctx, attachment, &attachments_path.index(i)))
        .collect();
    match items.len() {
        0 if message.text.is_none() => Content::Unsupported(Unsupported {
            r#type: "message".to_owned(),
        }),
        0 => Content::Text(Text { body: text }),
        1 => {
            let mut media = items.remove(0);
            if !text.is_empty() {
                media.caption = text;
            }
            Content::Media(media)
        }
        _ => Content::Attachments(Attachments {
            items,
            caption: text,
        }),
    }
}

fn media(ctx: &mut Ctx<'_>, attachment: &Attachment, at: &JsonPath) -> Media {
    let payload = attachment.payload.as_ref();
    let sticker = payload.and_then(|p| p.sticker_id.as_ref());
    let kind = match attachment.kind.as_deref().unwrap_or_default() {
        "image" if sticker.is_some() => Kind::Sticker,
        "image" => Kind::Image,
        "video" => Kind::Video,
        "audio" => Kind::Audio,
        "file" => Kind::File,
        "share" => Kind::Share,
        "story_mention" => Kind::StoryMention,
        "ig_reel" | "reel" => Kind::Reel,
        _ => Kind::Unspecified,
    };
    let media_id = payload
        .and_then(|p| p.reel_video_id.as_ref())
        .or(sticker)
        .map(|id| id.as_str().to_owned());
    let url = payload
        .and_then(|p| p.url.clone())
        .or_else(|| attachment.url.clone());
    Media {
        kind: kind as i32,
        media_id: media_id.unwrap_or_default(),
        url: url.unwrap_or_default(),
        caption: ctx.text(
            &at.key("payload").key("title"),
            payload.and_then(|p| p.title.as_deref()),
        ),
        ..Media::default()
    }
}

fn postback(ctx: &mut Ctx<'_>, scope: &Scope, postback: &PostbackBody, at: &JsonPath) {
    let id = match postback.mid.as_deref() {
        Some(mid) => ctx.id(&at.key("mid"), Some(mid)).to_owned(),
        None => scope.event_id("postback"),
    };
    let content = Content::Postback(Postback {
        title: ctx.text(&at.key("title"), postback.title.as_deref()),
        payload: ctx.text(&at.key("payload"), postback.payload.as_deref()),
    });
    let mut envelope = scope.envelope(Direction::Inbound, id, content);
    envelope.referral = postback.referral.as_ref().map(referral);
    ctx.emit(&scope.path, envelope);
}

fn referral(body: &ReferralBody) -> Referral {
    Referral {
        source: body.source.clone().unwrap_or_default(),
        r#ref: body.reference.clone().unwrap_or_default(),
        r#type: body.kind.clone().unwrap_or_default(),
        ad_id: body
            .ad_id
            .as_ref()
            .map(|id| id.as_str().to_owned())
            .unwrap_or_default(),
    }
}

/// A reaction to message `mid`; `action: "unreact"` removes it. The id
/// carries the time, so react, unreact and react again stay three events.
fn reaction(ctx: &mut Ctx<'_>, scope: &Scope, reaction: &ReactionBody, at: &JsonPath) {
    let target = ctx.id(&at.key("mid"), reaction.mid.as_deref());
    let removed = reaction.action.as_deref() == Some("unreact");
    let emoji = if removed {
        String::new()
    } else {
        reaction
            .emoji
            .clone()
            .or_else(|| reaction.reaction.clone())
            .unwrap_or_default()
    };
    let label = if removed { "removed" } else { emoji.as_str() };
    let id = format!("{target}:reaction:{label}:{}", scope.time.raw);
    let content = Content::Reaction(Reaction {
        target_message_id: target.to_owned(),
        emoji,
        removed,
    });
    scope.emit(ctx, Direction::Inbound, id, content);
}

/// One delivered receipt per `mids[]` entry, or one for the watermark alone.
fn delivery(
    ctx: &mut Ctx<'_>,
    scope: &Scope,
    delivery: &Delivery,
    at: &JsonPath,
) -> Result<(), IngestError> {
    let mids = delivery.mids.as_deref().unwrap_or_default();
    ctx.count_events(mids.len().saturating_sub(1))?;
    let watermark = watermark(ctx, delivery.watermark.as_ref(), mids.is_empty(), at);
    if mids.is_empty() {
        let id = scope.derived_id(watermark, "delivery");
        receipt(ctx, scope, id, "", State::Delivered, watermark);
    }
    for (i, mid) in mids.iter().enumerate() {
        let mid = ctx.id(&at.key("mids").index(i), mid.as_deref());
        receipt(
            ctx,
            scope,
            format!("{mid}:delivery"),
            mid,
            State::Delivered,
            watermark,
        );
    }
    Ok(())
}

/// A read receipt: of one message on Instagram (`mid`), of everything up to
/// the watermark on Messenger.
fn read(ctx: &mut Ctx<'_>, scope: &Scope, read: &Read, at: &JsonPath) {
    let mid = read.mid.as_deref();
    let watermark = watermark(ctx, read.watermark.as_ref(), mid.is_none(), at);
    match mid {
        Some(mid) => {
            let mid = ctx.id(&at.key("mid"), Some(mid));
            receipt(
                ctx,
                scope,
                format!("{mid}:read"),
                mid,
                State::Read,
                watermark,
            );
        }
        None => {
            let id = scope.derived_id(watermark, "read");
            receipt(ctx, scope, id, "", State::Read, watermark);
        }
    }
}

/// The receipt's watermark (milliseconds), 0 when absent and not `required`.
fn watermark(ctx: &mut Ctx<'_>, value: Option<&Scalar>, required: bool, at: &JsonPath) -> i64 {
    if value.is_none() && !required {
        return 0;
    }
    ctx.time(&at.key("watermark"), value, TimeUnit::Millis)
        .map_or(0, |t| t.raw)
}

fn receipt(
    ctx: &mut Ctx<'_>,
    scope: &Scope,
    id: String,
    target: &str,
    state: State,
    watermark: i64,
) {
    let content = Content::Status(StatusReceipt {
        target_message_id: target.to_owned(),
        state: state as i32,
        errors: Vec::new(),
        watermark,
    });
    scope.emit(ctx, Direction::Outbound, id, content);
}

fn handover(
    ctx: &mut Ctx<'_>,
    scope: &Scope,
    action: Action,
    body: &HandoverBody,
    at: &JsonPath,
    name: &str,
) {
    let app_id = |id: &Option<Scalar>| id.as_ref().map(|id| id.as_str().to_owned());
    let content = Content::Handover(Handover {
        action: action as i32,
        new_owner_app_id: app_id(&body.new_owner_app_id)
            .or_else(|| app_id(&body.requested_owner_app_id))
            .unwrap_or_default(),
        previous_owner_app_id: app_id(&body.previous_owner_app_id).unwrap_or_default(),
        metadata: ctx.text(&at.key("metadata"), body.metadata.as_deref()),
    });
    let id = scope.event_id(name);
    scope.emit(ctx, Direction::Outbound, id, content);
}
