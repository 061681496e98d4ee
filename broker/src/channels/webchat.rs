//! Web chat: the business's own widget posts the canonical [`Envelope`]
//! itself, as proto3 JSON (`application/json`, field names in camelCase or
//! snake_case) or as binary protobuf (`application/x-protobuf`).
//!
//! The tenant and channel always come from the request, never from the body:
//! a body that names another tenant or channel is refused rather than
//! silently moved. A web chat webhook carries what a site's visitors can
//! send, and nothing else: `INBOUND` customer content (an absent direction
//! means `INBOUND`). Control, consent, status, template, system and handover
//! envelopes, and anything `OUTBOUND`, come only through `Publish`, from
//! authenticated internal callers. Everything else is kept as posted, for
//! [`crate::validate::normalize`] to check; only free text is bounded here.

use prost::Message as _;
use switchboard_proto::v1::{Direction, Envelope, envelope::Content};

use super::common::{Ctx, JsonPath, parse};
use crate::error::{FieldViolation, IngestError};

/// Normalizes an envelope posted as proto3 JSON.
pub(super) fn normalize_json(ctx: &mut Ctx<'_>, body: &str) -> Result<(), IngestError> {
    let envelope: Envelope = parse(body, &JsonPath::root()).map_err(|v| ctx.fail(v))?;
    accept(ctx, envelope)
}

/// Normalizes an envelope posted as binary protobuf.
pub(super) fn normalize_protobuf(ctx: &mut Ctx<'_>, body: &[u8]) -> Result<(), IngestError> {
    let envelope = Envelope::decode(body).map_err(|e| {
        ctx.fail(FieldViolation::new(
            "payload",
            format!("is not a protobuf Envelope: {e}"),
        ))
    })?;
    accept(ctx, envelope)
}

fn accept(ctx: &mut Ctx<'_>, mut envelope: Envelope) -> Result<(), IngestError> {
    ctx.count_events(1)?;
    let root = JsonPath::root();
    match envelope.direction() {
        Direction::Inbound => {}
        Direction::Unspecified => envelope.direction = Direction::Inbound as i32,
        Direction::Outbound => {
            let violation = FieldViolation::new(
                root.key("direction").to_string(),
                "must be INBOUND (or absent): a web chat webhook carries only what visitors send; \
                 business messages go through Publish",
            );
            return Err(ctx.fail(violation));
        }
    }
    if let Some(field) = envelope.content.as_ref().and_then(not_from_visitors) {
        let violation = FieldViolation::new(
            root.key(field).to_string(),
            "is not content a visitor can send; control, consent, status, template, system and \
             handover envelopes go through Publish",
        );
        return Err(ctx.fail(violation));
    }
    if !envelope.tenant_id.is_empty() && envelope.tenant_id != ctx.tenant_id() {
        let violation = FieldViolation::new(
            root.key("tenantId").to_string(),
            "names another tenant than the request's tenant_id",
        );
        return Err(ctx.fail(violation));
    }
    if envelope.channel != 0 && envelope.channel != switchboard_proto::v1::Channel::Webchat as i32 {
        let violation = FieldViolation::new(
            root.key("channel").to_string(),
            "must be WEBCHAT (or absent) on a web chat webhook",
        );
        return Err(ctx.fail(violation));
    }
    if let Some(content) = &envelope.content {
        for (path, text) in free_texts(&root, content) {
            ctx.check_text(&path, text);
        }
    }
    ctx.emit(&root, envelope);
    Ok(())
}

/// The (proto3 JSON) field of content that only the business side or
/// Switchboard itself may publish.
fn not_from_visitors(content: &Content) -> Option<&'static str> {
    match content {
        Content::Control(_) => Some("control"),
        Content::Consent(_) => Some("consent"),
        Content::Status(_) => Some("status"),
        Content::Template(_) => Some("template"),
        Content::System(_) => Some("system"),
        Content::Handover(_) => Some("handover"),
        Content::Subscription(_) => Some("subscription"),
        Content::Link(_) => Some("link"),
        Content::Text(_)
        | Content::Media(_)
        | Content::Location(_)
        | Content::InteractiveReply(_)
        | Content::Reaction(_)
        | Content::Order(_)
        | Content::Postback(_)
        | Content::Unsupported(_)
        | Content::Deletion(_)
        | Content::Attachments(_) => None,
    }
}

/// The content's free-text fields, with their (proto3 JSON) paths.
fn free_texts<'c>(root: &JsonPath, content: &'c Content) -> Vec<(JsonPath, &'c str)> {
    match content {
        Content::Text(text) => vec![(root.key("text").key("body"), text.body.as_str())],
        Content::Media(media) => vec![(root.key("media").key("caption"), media.caption.as_str())],
        Content::Attachments(attachments) => {
            let at = root.key("attachments");
            let items = at.key("items");
            attachments
                .items
                .iter()
                .enumerate()
                .map(|(i, item)| (items.index(i).key("caption"), item.caption.as_str()))
                .chain([(at.key("caption"), attachments.caption.as_str())])
                .collect()
        }
        Content::Postback(postback) => vec![
            (root.key("postback").key("title"), postback.title.as_str()),
            (
                root.key("postback").key("payload"),
                postback.payload.as_str(),
            ),
        ],
        Content::Order(order) => vec![(root.key("order").key("text"), order.text.as_str())],
        Content::System(system) => vec![(root.key("system").key("body"), system.body.as_str())],
        _ => Vec::new(),
    }
}
