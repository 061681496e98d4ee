//! WhatsApp Cloud API webhooks (`object: "whatsapp_business_account"`).
//!
//! Each `messages` change carries the business number (`metadata`), the
//! senders' profiles (`contacts`, absent for system messages), and any number
//! of `messages` (customer to business) and `statuses` (about the business's
//! messages). Changes with another `field` are skipped.

use serde::Deserialize;
use serde_json::value::RawValue;
use switchboard_proto::v1::{
    Direction, InteractiveReply, Location, Media, Order, Party, Reaction, Referral, StatusReceipt,
    SystemEvent, Text, Unsupported,
    envelope::Content,
    media::Kind,
    order::Item,
    status_receipt::{Error as StatusError, State},
};

use super::common::{Ctx, JsonPath, Scalar, Thread, TimeUnit, meta_entries, parse, party};
use crate::error::IngestError;

#[derive(Deserialize)]
struct Entry<'a> {
    #[serde(borrow)]
    changes: Option<Vec<Change<'a>>>,
}

#[derive(Deserialize)]
struct Change<'a> {
    field: Option<String>,
    /// Parsed only for `field: "messages"`: other fields have other shapes.
    #[serde(borrow)]
    value: Option<&'a RawValue>,
}

/// The `value` of a `messages` change. Messages and statuses are parsed one
/// by one, so one bad message does not hide the errors of the next.
#[derive(Deserialize)]
struct MessagesValue<'a> {
    metadata: Option<Metadata>,
    contacts: Option<Vec<Contact>>,
    #[serde(borrow)]
    messages: Option<Vec<&'a RawValue>>,
    #[serde(borrow)]
    statuses: Option<Vec<&'a RawValue>>,
}

#[derive(Deserialize)]
struct Metadata {
    display_phone_number: Option<String>,
    phone_number_id: Option<String>,
}

#[derive(Deserialize)]
struct Contact {
    profile: Option<Profile>,
    wa_id: Option<String>,
    user_id: Option<String>,
}

#[derive(Deserialize)]
struct Profile {
    name: Option<String>,
}

#[derive(Deserialize)]
struct Message {
    from: Option<String>,
    from_user_id: Option<String>,
    id: Option<String>,
    timestamp: Option<Scalar>,
    #[serde(rename = "type")]
    kind: Option<String>,
    context: Option<Context>,
    referral: Option<AdReferral>,
    text: Option<TextBody>,
    image: Option<MediaBody>,
    video: Option<MediaBody>,
    document: Option<MediaBody>,
    sticker: Option<MediaBody>,
    audio: Option<MediaBody>,
    location: Option<LocationBody>,
    interactive: Option<Interactive>,
    button: Option<Button>,
    reaction: Option<ReactionBody>,
    order: Option<OrderBody>,
    system: Option<SystemBody>,
}

#[derive(Deserialize)]
struct Context {
    id: Option<String>,
}

/// Click-to-WhatsApp ad or post the customer came from.
#[derive(Deserialize)]
struct AdReferral {
    source_id: Option<String>,
    source_type: Option<String>,
    media_type: Option<String>,
    ctwa_clid: Option<String>,
}

#[derive(Deserialize)]
struct TextBody {
    body: Option<String>,
}

#[derive(Deserialize)]
struct MediaBody {
    id: Option<String>,
    url: Option<String>,
    mime_type: Option<String>,
    sha256: Option<String>,
    caption: Option<String>,
    filename: Option<String>,
}

#[derive(Deserialize)]
struct LocationBody {
    latitude: Option<f64>,
    longitude: Option<f64>,
    name: Option<String>,
    address: Option<String>,
}

#[derive(Deserialize)]
struct Interactive {
    #[serde(rename = "type")]
    kind: Option<String>,
    button_reply: Option<Reply>,
    list_reply: Option<Reply>,
}

#[derive(Deserialize)]
struct Reply {
    id: Option<String>,
    title: Option<String>,
    description: Option<String>,
}

#[derive(Deserialize)]
struct Button {
    text: Option<String>,
    payload: Option<String>,
}

#[derive(Deserialize)]
struct ReactionBody {
    message_id: Option<String>,
    emoji: Option<String>,
}

#[derive(Deserialize)]
struct OrderBody {
    catalog_id: Option<String>,
    text: Option<String>,
    product_items: Option<Vec<OrderItem>>,
}

#[derive(Deserialize)]
struct OrderItem {
    product_retailer_id: Option<String>,
    quantity: Option<Scalar>,
    item_price: Option<Scalar>,
    currency: Option<String>,
}

#[derive(Deserialize)]
struct SystemBody {
    body: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    wa_id: Option<String>,
    user_id: Option<String>,
}

#[derive(Deserialize)]
struct Status {
    id: Option<String>,
    status: Option<String>,
    timestamp: Option<Scalar>,
    recipient_id: Option<String>,
    recipient_user_id: Option<String>,
    conversation: Option<StatusConversation>,
    pricing: Option<Pricing>,
    errors: Option<Vec<ApiError>>,
}

#[derive(Deserialize)]
struct StatusConversation {
    origin: Option<Origin>,
}

#[derive(Deserialize)]
struct Origin {
    #[serde(rename = "type")]
    kind: Option<String>,
}

#[derive(Deserialize)]
struct Pricing {
    category: Option<String>,
}

#[derive(Deserialize)]
struct ApiError {
    code: Option<i32>,
    title: Option<String>,
    message: Option<String>,
}

/// Normalizes a WhatsApp webhook body.
pub(super) fn normalize(ctx: &mut Ctx<'_>, body: &str) -> Result<(), IngestError> {
    let entries: Vec<(JsonPath, Entry<'_>)> = meta_entries(ctx, body)?;
    for (entry_path, entry) in &entries {
        for (j, change) in entry.changes.iter().flatten().enumerate() {
            if change.field.as_deref() != Some("messages") {
                continue;
            }
            let path = entry_path.key("changes").index(j).key("value");
            let Some(value) = ctx.require(&path, change.value) else {
                continue;
            };
            if let Some(value) = ctx.record(parse::<MessagesValue<'_>>(value.get(), &path)) {
                messages_change(ctx, &value, &path)?;
            }
        }
    }
    Ok(())
}

fn messages_change(
    ctx: &mut Ctx<'_>,
    value: &MessagesValue<'_>,
    path: &JsonPath,
) -> Result<(), IngestError> {
    let metadata = value.metadata.as_ref();
    let business = party(
        ctx.id(
            &path.key("metadata").key("phone_number_id"),
            metadata.and_then(|m| m.phone_number_id.as_deref()),
        ),
        metadata
            .and_then(|m| m.display_phone_number.as_deref())
            .unwrap_or_default(),
    );
    let contacts = value.contacts.as_deref().unwrap_or_default();
    for (k, raw) in value.messages.iter().flatten().enumerate() {
        ctx.count_events(1)?;
        let path = path.key("messages").index(k);
        if let Some(message) = ctx.record(parse::<Message>(raw.get(), &path)) {
            inbound(ctx, &business, contacts, &message, &path);
        }
    }
    for (k, raw) in value.statuses.iter().flatten().enumerate() {
        ctx.count_events(1)?;
        let path = path.key("statuses").index(k);
        if let Some(status) = ctx.record(parse::<Status>(raw.get(), &path)) {
            receipt(ctx, &business, &status, &path);
        }
    }
    Ok(())
}

/// A customer's message.
fn inbound(
    ctx: &mut Ctx<'_>,
    business: &Party,
    contacts: &[Contact],
    message: &Message,
    path: &JsonPath,
) {
    let id = ctx.id(&path.key("id"), message.id.as_deref());
    let sent_at = ctx.time(
        &path.key("timestamp"),
        message.timestamp.as_ref(),
        TimeUnit::Seconds,
    );
    let (customer_id, name) = customer(contacts, message);
    let customer_id = ctx.id(&path.key("from"), customer_id);
    let kind = ctx.id(&path.key("type"), message.kind.as_deref());
    let Some(content) = content(ctx, message, kind, path) else {
        return;
    };
    let thread = Thread {
        business: business.clone(),
        customer: party(customer_id, name.unwrap_or_default()),
    };
    let mut envelope = thread.envelope(
        Direction::Inbound,
        id.to_owned(),
        sent_at.map(|t| t.timestamp),
        content,
    );
    envelope.reply_to = message
        .context
        .as_ref()
        .and_then(|c| c.id.clone())
        .unwrap_or_default();
    envelope.referral = message.referral.as_ref().map(referral);
    ctx.emit(path, envelope);
}

/// The customer's id and display name. The id is the message's `from` (the
/// `wa_id`) or, when that is empty or missing, the sender's contact's `wa_id`,
/// else its `user_id` (a customer with a username may have no `wa_id`). The
/// sender's contact is the one with that `wa_id` (or `user_id`), or the only
/// one when the message names none. System messages have no contacts, so no
/// name.
fn customer<'m>(
    contacts: &'m [Contact],
    message: &'m Message,
) -> (Option<&'m str>, Option<&'m str>) {
    let non_empty = |s: &'m Option<String>| s.as_deref().filter(|s| !s.is_empty());
    let from = non_empty(&message.from);
    let from_user = non_empty(&message.from_user_id);
    let contact = contacts
        .iter()
        .find(|c| {
            (from.is_some() && non_empty(&c.wa_id) == from)
                || (from_user.is_some() && non_empty(&c.user_id) == from_user)
        })
        .or(match contacts {
            [only] if from.is_none() => Some(only),
            _ => None,
        });
    let id = from
        .or_else(|| contact.and_then(|c| non_empty(&c.wa_id)))
        .or_else(|| contact.and_then(|c| non_empty(&c.user_id)))
        .or(from_user);
    let name = contact.and_then(|c| c.profile.as_ref()?.name.as_deref());
    (id, name)
}

/// The content of a message of type `kind`; `None` when it is invalid.
fn content(ctx: &mut Ctx<'_>, message: &Message, kind: &str, path: &JsonPath) -> Option<Content> {
    let at = path.key(kind);
    let content = match kind {
        "text" => {
            let text = ctx.require(&at, message.text.as_ref())?;
            Content::Text(Text {
                body: ctx.text(&at.key("body"), text.body.as_deref()),
            })
        }
        "image" => media(ctx, &at, Kind::Image, message.image.as_ref())?,
        "video" => media(ctx, &at, Kind::Video, message.video.as_ref())?,
        "document" => media(ctx, &at, Kind::Document, message.document.as_ref())?,
        "sticker" => media(ctx, &at, Kind::Sticker, message.sticker.as_ref())?,
        "audio" => media(ctx, &at, Kind::Audio, message.audio.as_ref())?,
        "location" => {
            let location = ctx.require(&at, message.location.as_ref())?;
            self::location(ctx, &at, location)
        }
        "interactive" => {
            let interactive = ctx.require(&at, message.interactive.as_ref())?;
            self::interactive(ctx, &at, interactive)?
        }
        "button" => {
            let button = ctx.require(&at, message.button.as_ref())?;
            Content::InteractiveReply(InteractiveReply {
                id: ctx.text(&at.key("payload"), button.payload.as_deref()),
                title: ctx.text(&at.key("text"), button.text.as_deref()),
                description: String::new(),
            })
        }
        "reaction" => {
            let reaction = ctx.require(&at, message.reaction.as_ref())?;
            let emoji = reaction.emoji.clone().unwrap_or_default();
            Content::Reaction(Reaction {
                target_message_id: ctx
                    .id(&at.key("message_id"), reaction.message_id.as_deref())
                    .to_owned(),
                removed: emoji.is_empty(),
                emoji,
            })
        }
        "order" => {
            let order = ctx.require(&at, message.order.as_ref())?;
            self::order(ctx, &at, order)
        }
        "system" => {
            let system = ctx.require(&at, message.system.as_ref())?;
            Content::System(SystemEvent {
                r#type: system.kind.clone().unwrap_or_default(),
                body: ctx.text(&at.key("body"), system.body.as_deref()),
                new_customer_id: system
                    .wa_id
                    .clone()
                    .filter(|id| !id.is_empty())
                    .or_else(|| system.user_id.clone())
                    .unwrap_or_default(),
            })
        }
        // `unsupported`, and whatever type WhatsApp adds next.
        other => Content::Unsupported(Unsupported {
            r#type: other.to_owned(),
        }),
    };
    Some(content)
}

fn media(
    ctx: &mut Ctx<'_>,
    at: &JsonPath,
    kind: Kind,
    body: Option<&MediaBody>,
) -> Option<Content> {
    let body = ctx.require(at, body)?;
    Some(Content::Media(Media {
        kind: kind as i32,
        media_id: body.id.clone().unwrap_or_default(),
        url: body.url.clone().unwrap_or_default(),
        mime_type: body.mime_type.clone().unwrap_or_default(),
        sha256: body.sha256.clone().unwrap_or_default(),
        caption: ctx.text(&at.key("caption"), body.caption.as_deref()),
        filename: body.filename.clone().unwrap_or_default(),
    }))
}

fn location(ctx: &mut Ctx<'_>, at: &JsonPath, body: &LocationBody) -> Content {
    Content::Location(Location {
        latitude: coordinate(ctx, &at.key("latitude"), body.latitude, 90.0),
        longitude: coordinate(ctx, &at.key("longitude"), body.longitude, 180.0),
        name: ctx.text(&at.key("name"), body.name.as_deref()),
        address: ctx.text(&at.key("address"), body.address.as_deref()),
    })
}

/// A required coordinate in `-limit..=limit` degrees.
fn coordinate(ctx: &mut Ctx<'_>, path: &JsonPath, value: Option<f64>, limit: f64) -> f64 {
    match value {
        Some(degrees) if degrees.abs() <= limit => degrees,
        Some(degrees) => {
            ctx.violate(
                path,
                format!("{degrees} is outside -{limit}..{limit} degrees"),
            );
            0.0
        }
        None => {
            ctx.violate(path, "is required");
            0.0
        }
    }
}

/// A reply to reply buttons or a list; other interactive replies (such as
/// `nfm_reply` from WhatsApp Flows) are `Unsupported{"interactive.<type>"}`.
fn interactive(ctx: &mut Ctx<'_>, at: &JsonPath, body: &Interactive) -> Option<Content> {
    let kind = ctx.id(&at.key("type"), body.kind.as_deref());
    let reply = match kind {
        "button_reply" => body.button_reply.as_ref(),
        "list_reply" => body.list_reply.as_ref(),
        "" => return None,
        other => {
            return Some(Content::Unsupported(Unsupported {
                r#type: format!("interactive.{other}"),
            }));
        }
    };
    let at = at.key(kind);
    let reply = ctx.require(&at, reply)?;
    Some(Content::InteractiveReply(InteractiveReply {
        id: ctx.text(&at.key("id"), reply.id.as_deref()),
        title: ctx.text(&at.key("title"), reply.title.as_deref()),
        description: ctx.text(&at.key("description"), reply.description.as_deref()),
    }))
}

fn order(ctx: &mut Ctx<'_>, at: &JsonPath, body: &OrderBody) -> Content {
    let items_path = at.key("product_items");
    let items = body
        .product_items
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, item)| order_item(ctx, &items_path.index(i), item))
        .collect();
    Content::Order(Order {
        catalog_id: body.catalog_id.clone().unwrap_or_default(),
        items,
        text: ctx.text(&at.key("text"), body.text.as_deref()),
    })
}

fn order_item(ctx: &mut Ctx<'_>, at: &JsonPath, item: &OrderItem) -> Item {
    let quantity = ctx.number(
        &at.key("quantity"),
        item.quantity.as_ref().map(Scalar::as_str),
        "a non-negative integer",
    );
    let price_path = at.key("item_price");
    let item_price: f64 = ctx.number(
        &price_path,
        item.item_price.as_ref().map(Scalar::as_str),
        "a number",
    );
    if !item_price.is_finite() {
        ctx.violate(&price_path, "is not a finite number");
    }
    Item {
        product_retailer_id: item.product_retailer_id.clone().unwrap_or_default(),
        quantity,
        item_price,
        currency: item.currency.clone().unwrap_or_default(),
    }
}

fn referral(ad: &AdReferral) -> Referral {
    Referral {
        source: ad.source_type.clone().unwrap_or_default(),
        r#ref: ad.ctwa_clid.clone().unwrap_or_default(),
        r#type: ad.media_type.clone().unwrap_or_default(),
        ad_id: ad.source_id.clone().unwrap_or_default(),
    }
}

/// A status about one of the business's messages. Its channel message id is
/// `<wamid>:<status>`, so `delivered` does not dedupe `read`.
fn receipt(ctx: &mut Ctx<'_>, business: &Party, status: &Status, path: &JsonPath) {
    let target = ctx.id(&path.key("id"), status.id.as_deref());
    let state_name = ctx.id(&path.key("status"), status.status.as_deref());
    let sent_at = ctx.time(
        &path.key("timestamp"),
        status.timestamp.as_ref(),
        TimeUnit::Seconds,
    );
    let recipient = status
        .recipient_id
        .as_deref()
        .filter(|id| !id.is_empty())
        .or(status.recipient_user_id.as_deref());
    let recipient = ctx.id(&path.key("recipient_id"), recipient);
    let state = match state_name {
        "sent" => State::Sent,
        "delivered" => State::Delivered,
        "read" => State::Read,
        "failed" => State::Failed,
        _ => State::Unspecified,
    };
    let errors = status
        .errors
        .iter()
        .flatten()
        .map(|e| StatusError {
            code: e.code.unwrap_or_default(),
            title: e.title.clone().unwrap_or_default(),
            message: e.message.clone().unwrap_or_default(),
        })
        .collect();
    let thread = Thread {
        business: business.clone(),
        customer: party(recipient, ""),
    };
    let mut envelope = thread.envelope(
        Direction::Outbound,
        format!("{target}:{state_name}"),
        sent_at.map(|t| t.timestamp),
        Content::Status(StatusReceipt {
            target_message_id: target.to_owned(),
            state: state as i32,
            errors,
            watermark: 0,
        }),
    );
    let origin = status
        .conversation
        .as_ref()
        .and_then(|c| c.origin.as_ref()?.kind.clone());
    let category = status.pricing.as_ref().and_then(|p| p.category.clone());
    for (key, value) in [
        ("conversation_origin", origin),
        ("pricing_category", category),
    ] {
        if let Some(value) = value {
            envelope.attributes.insert(key.to_owned(), value);
        }
    }
    ctx.emit(path, envelope);
}
