//! SMS and MMS: Twilio-style inbound webhooks, form-encoded
//! (`application/x-www-form-urlencoded`), one message per post.
//!
//! Fields used: `MessageSid`, `From`, `To`, `Body`, `NumMedia`,
//! `MediaUrl{N}`, `MediaContentType{N}`, and `AccountSid` and
//! `MessagingServiceSid` (kept as the attributes `account_sid` and
//! `messaging_service_sid`). Other fields are ignored. SMS carries no send
//! time, so `sent_at` stays empty.

use std::collections::{BTreeMap, btree_map};

use percent_encoding::percent_decode;
use switchboard_proto::v1::{
    Attachments, ConsentEvent, Direction, Media, Text, consent_event::Action, envelope::Content,
    media::Kind,
};

use super::common::{Ctx, JsonPath, Thread};
use crate::error::IngestError;

/// Whole-body keywords that opt a number out.
const OPT_OUT: [&str; 5] = ["STOP", "UNSUBSCRIBE", "CANCEL", "END", "QUIT"];
/// Whole-body keywords that opt a number back in.
const OPT_IN: [&str; 2] = ["START", "UNSTOP"];

/// Normalizes a Twilio-style inbound SMS or MMS post.
pub(super) fn normalize(ctx: &mut Ctx<'_>, body: &[u8]) -> Result<(), IngestError> {
    ctx.count_events(1)?;
    let form = parse_form(ctx, body);
    let root = JsonPath::root();
    let field = |name: &str| form.get(name).map(String::as_str);
    let sid = ctx.id(&root.key("MessageSid"), field("MessageSid"));
    let from = ctx.id(&root.key("From"), field("From"));
    let to = ctx.id(&root.key("To"), field("To"));
    let text = ctx.text(&root.key("Body"), field("Body"));
    let media = media(ctx, &form, &root);
    let content = match consent(&text) {
        Some(consent) => Content::Consent(consent),
        None => message_content(media, text),
    };
    let mut envelope =
        Thread::new(to, from).envelope(Direction::Inbound, sid.to_owned(), None, content);
    for (key, name) in [
        ("account_sid", "AccountSid"),
        ("messaging_service_sid", "MessagingServiceSid"),
    ] {
        if let Some(value) = field(name).filter(|v| !v.is_empty()) {
            envelope.attributes.insert(key.to_owned(), value.to_owned());
        }
    }
    ctx.emit(&root, envelope);
    Ok(())
}

/// Decodes a form body into its fields (`+` is a space, `%XX` a byte). Every
/// name and value must decode to UTF-8 and every name appear once: a
/// duplicated `Body` or `From` would be ambiguous.
fn parse_form(ctx: &mut Ctx<'_>, body: &[u8]) -> BTreeMap<String, String> {
    let root = JsonPath::root();
    let mut form = BTreeMap::new();
    // Form encoding has no raw whitespace, so a trailing newline is framing.
    for pair in body
        .trim_ascii()
        .split(|&b| b == b'&')
        .filter(|pair| !pair.is_empty())
    {
        let mut halves = pair.splitn(2, |&b| b == b'=');
        let name = halves.next().unwrap_or_default();
        let value = halves.next().unwrap_or_default();
        let Some(name) = decode(name) else {
            ctx.violate(&root, "has a field name that is not valid UTF-8");
            continue;
        };
        let path = root.key(&name);
        let Some(value) = decode(value) else {
            ctx.violate(&path, "is not valid UTF-8");
            continue;
        };
        match form.entry(name) {
            btree_map::Entry::Vacant(slot) => {
                slot.insert(value);
            }
            btree_map::Entry::Occupied(_) => ctx.violate(&path, "appears more than once"),
        }
    }
    form
}

/// One form-encoded name or value, decoded; `None` when not UTF-8.
fn decode(encoded: &[u8]) -> Option<String> {
    let spaced: Vec<u8> = encoded
        .iter()
        .map(|&b| if b == b'+' { b' ' } else { b })
        .collect();
    percent_decode(&spaced)
        .decode_utf8()
        .ok()
        .map(|text| text.into_owned())
}

/// The MMS media: `NumMedia` items, each `MediaUrl{N}` (required) and
/// `MediaContentType{N}`.
fn media(ctx: &mut Ctx<'_>, form: &BTreeMap<String, String>, root: &JsonPath) -> Vec<Media> {
    let count_path = root.key("NumMedia");
    let count: usize = ctx.number(
        &count_path,
        form.get("NumMedia").map(String::as_str),
        "a non-negative integer",
    );
    // Each item needs its own fields, so a larger count cannot be right (and
    // must not drive a long loop).
    if count > form.len() {
        ctx.violate(
            &count_path,
            format!("is {count}, but the form has only {} fields", form.len()),
        );
        return Vec::new();
    }
    (0..count)
        .map(|i| {
            let url_name = format!("MediaUrl{i}");
            let url = ctx.require(&root.key(&url_name), form.get(&url_name));
            let mime_type = form
                .get(&format!("MediaContentType{i}"))
                .cloned()
                .unwrap_or_default();
            Media {
                kind: media_kind(&mime_type) as i32,
                url: url.cloned().unwrap_or_default(),
                mime_type,
                ..Media::default()
            }
        })
        .collect()
}

fn media_kind(mime_type: &str) -> Kind {
    let top = mime_type.split('/').next().unwrap_or_default();
    match top.to_ascii_lowercase().as_str() {
        "image" => Kind::Image,
        "video" => Kind::Video,
        "audio" => Kind::Audio,
        _ => Kind::File,
    }
}

/// Consent when the whole body (trimmed, any case) is an opt-out or opt-in
/// keyword. It wins over media sent with it: an opt-out must never be lost.
fn consent(body: &str) -> Option<ConsentEvent> {
    let word = body.trim();
    let find = |keywords: &[&'static str]| {
        keywords
            .iter()
            .copied()
            .find(|k| k.eq_ignore_ascii_case(word))
    };
    let (action, keyword) = find(&OPT_OUT)
        .map(|k| (Action::OptOut, k))
        .or_else(|| find(&OPT_IN).map(|k| (Action::OptIn, k)))?;
    Some(ConsentEvent {
        action: action as i32,
        keyword: keyword.to_owned(),
    })
}

/// Text, one media item with the body as caption, or several.
fn message_content(mut media: Vec<Media>, text: String) -> Content {
    match media.len() {
        0 => Content::Text(Text { body: text }),
        1 => {
            let mut item = media.remove(0);
            item.caption = text;
            Content::Media(item)
        }
        _ => Content::Attachments(Attachments {
            items: media,
            caption: text,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_values_decode_plus_and_percent() {
        assert_eq!(decode(b"Ou+en+est+%3F").as_deref(), Some("Ou en est ?"));
        assert_eq!(decode(b"%2B33612345678").as_deref(), Some("+33612345678"));
        assert_eq!(decode(b"caf%C3%A9").as_deref(), Some("café"));
        assert_eq!(decode(b"%FF"), None);
        // A stray `%` is kept as is, like browsers do.
        assert_eq!(decode(b"100%").as_deref(), Some("100%"));
    }

    #[test]
    fn only_whole_keywords_are_consent() {
        let action = |body| consent(body).map(|c| (c.action, c.keyword));
        assert_eq!(
            action("  stop \n"),
            Some((Action::OptOut as i32, "STOP".into()))
        );
        assert_eq!(action("Quit"), Some((Action::OptOut as i32, "QUIT".into())));
        assert_eq!(
            action("unstop"),
            Some((Action::OptIn as i32, "UNSTOP".into()))
        );
        assert_eq!(action("please stop"), None);
        assert_eq!(action("STOPS"), None);
        assert_eq!(action(""), None);
    }
}
