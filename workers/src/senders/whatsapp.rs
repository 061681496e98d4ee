//! WhatsApp Cloud API: `POST {base}/{version}/{phone_number_id}/messages`
//! with `Authorization: Bearer <token>` and a JSON body.
//!
//! - Text (`preview_url: false`), with reply buttons or a list when the
//!   envelope's `interactive` attribute asks for them.
//! - Media: image, video, audio, document (a file too), sticker, by `link`
//!   (the envelope's `url`) or `id` (its `media_id`); captions where
//!   WhatsApp takes them (not audio or stickers), `filename` for documents.
//! - Templates (name, language, body parameters), reactions, locations.
//! - `context.message_id` from the envelope's `reply_to` (not on reactions).
//!
//! A 200 carries the `wamid` in `messages[0].id`. Errors are Graph error
//! objects; see [`classify`].

use serde_json::{Value, json};
use switchboard_proto::v1::{Envelope, envelope::Content, media::Kind};

use super::{
    config::{GraphApi, WhatsappCredentials},
    graph,
    http::Answer,
    interactive::Interactive,
    outcome::{Accepted, Auth, Body, ProviderError, Request, SendError},
};

/// At most this many reply buttons.
const MAX_BUTTONS: usize = 3;
/// At most this many list rows, over all sections.
const MAX_ROWS: usize = 10;

/// The call that sends `envelope` from `credentials`' number.
pub fn request(
    api: &GraphApi,
    credentials: &WhatsappCredentials,
    envelope: &Envelope,
) -> Result<Request, SendError> {
    let url = format!(
        "{}/{}/{}/messages",
        api.base_url.trim_end_matches('/'),
        api.api_version,
        credentials.phone_number_id
    );
    Ok(Request {
        url: reqwest::Url::parse(&url)
            .map_err(|e| SendError::Unsendable(format!("bad WhatsApp URL: {e}")))?,
        secret_query: Vec::new(),
        auth: Auth::Bearer(credentials.token.clone()),
        headers: Vec::new(),
        body: Body::Json(body(envelope)?),
    })
}

/// The JSON body for `envelope`.
pub fn body(envelope: &Envelope) -> Result<Value, SendError> {
    let to = envelope
        .customer
        .as_ref()
        .map(|c| c.id.as_str())
        .filter(|id| !id.is_empty())
        .ok_or_else(|| SendError::Unsendable("no customer id to send to".into()))?;
    let (kind, object) = match &envelope.content {
        Some(Content::Text(text)) => match Interactive::of(envelope)? {
            Some(choices) => ("interactive", interactive(&text.body, &choices)?),
            None => ("text", json!({"body": text.body, "preview_url": false})),
        },
        Some(Content::Media(media)) => media_object(media, "")?,
        Some(Content::Attachments(attachments)) => match attachments.items.as_slice() {
            [one] => media_object(one, &attachments.caption)?,
            _ => {
                return Err(SendError::Unsendable(
                    "WhatsApp sends one media item per message".into(),
                ));
            }
        },
        Some(Content::Template(template)) => {
            let mut object = json!({
                "name": template.name,
                "language": {"code": template.language, "policy": "deterministic"},
            });
            if !template.parameters.is_empty() {
                let parameters: Vec<Value> = template
                    .parameters
                    .iter()
                    .map(|p| json!({"type": "text", "text": p}))
                    .collect();
                object["components"] = json!([{"type": "body", "parameters": parameters}]);
            }
            ("template", object)
        }
        Some(Content::Reaction(reaction)) => (
            "reaction",
            json!({
                "message_id": reaction.target_message_id,
                "emoji": if reaction.removed { "" } else { reaction.emoji.as_str() },
            }),
        ),
        Some(Content::Location(location)) => {
            let mut object = json!({
                "latitude": location.latitude,
                "longitude": location.longitude,
            });
            for (name, value) in [("name", &location.name), ("address", &location.address)] {
                if !value.is_empty() {
                    object[name] = json!(value);
                }
            }
            ("location", object)
        }
        other => {
            return Err(SendError::Unsendable(format!(
                "WhatsApp has no outbound message for {} content",
                other.as_ref().map_or("no", |c| c.kind())
            )));
        }
    };
    let mut body = json!({
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": to,
        "type": kind,
    });
    body[kind] = object;
    if !envelope.reply_to.is_empty() && kind != "reaction" {
        body["context"] = json!({"message_id": envelope.reply_to});
    }
    Ok(body)
}

fn media_object(
    media: &switchboard_proto::v1::Media,
    fallback_caption: &str,
) -> Result<(&'static str, Value), SendError> {
    let kind = match media.kind() {
        Kind::Image => "image",
        Kind::Video => "video",
        Kind::Audio => "audio",
        Kind::Document | Kind::File => "document",
        Kind::Sticker => "sticker",
        other => {
            return Err(SendError::Unsendable(format!(
                "WhatsApp cannot send {} media",
                other.as_str_name()
            )));
        }
    };
    let mut object = if !media.media_id.is_empty() {
        json!({"id": media.media_id})
    } else if !media.url.is_empty() {
        json!({"link": media.url})
    } else {
        return Err(SendError::Unsendable(
            "media needs a media_id or a url".into(),
        ));
    };
    let caption = if media.caption.is_empty() {
        fallback_caption
    } else {
        &media.caption
    };
    if !caption.is_empty() && !matches!(kind, "audio" | "sticker") {
        object["caption"] = json!(caption);
    }
    if kind == "document" && !media.filename.is_empty() {
        object["filename"] = json!(media.filename);
    }
    Ok((kind, object))
}

fn interactive(text: &str, choices: &Interactive) -> Result<Value, SendError> {
    let too_many = |what: &str, max: usize| {
        SendError::Unsendable(format!("WhatsApp takes at most {max} {what}"))
    };
    if let Some(list) = &choices.list {
        if choices.choices().len() > MAX_ROWS {
            return Err(too_many("list rows", MAX_ROWS));
        }
        let sections: Vec<Value> = list
            .sections
            .iter()
            .map(|s| {
                let rows: Vec<Value> = s
                    .rows
                    .iter()
                    .map(|r| {
                        let mut row = json!({"id": r.id, "title": r.title});
                        if !r.description.is_empty() {
                            row["description"] = json!(r.description);
                        }
                        row
                    })
                    .collect();
                json!({"title": s.title, "rows": rows})
            })
            .collect();
        return Ok(json!({
            "type": "list",
            "body": {"text": text},
            "action": {"button": list.button, "sections": sections},
        }));
    }
    if choices.buttons.len() > MAX_BUTTONS {
        return Err(too_many("buttons", MAX_BUTTONS));
    }
    let buttons: Vec<Value> = choices
        .buttons
        .iter()
        .map(|b| json!({"type": "reply", "reply": {"id": b.id, "title": b.title}}))
        .collect();
    Ok(json!({
        "type": "button",
        "body": {"text": text},
        "action": {"buttons": buttons},
    }))
}

/// Throughput and temporary errors: 130429 throughput, 131056 pair rate,
/// 131048 spam rate limit, 131057 account in maintenance, 131000 and
/// 133004 something went wrong / server unavailable, 80007 WABA rate limit.
const TRANSIENT: &[&str] = &[
    "130429", "131056", "131048", "131057", "131000", "133004", "80007",
];

/// Of those, the ones that mean "this number sends too fast".
const RATE_LIMITS: &[&str] = &["130429", "131048", "80007"];

/// Errors of the business's account or number, not of the message: 131031
/// account locked, 131042 payment, 131045 number not registered, 133010
/// number not registered with the Cloud API; and the Graph API's token and
/// permission codes.
const MISCONFIGURED: &[&str] = &["131031", "131042", "131045", "133010"];

/// Reads a Cloud API answer.
pub fn answer(answer: &Answer) -> Result<Accepted, SendError> {
    if (200..300).contains(&answer.status) {
        let json = answer.json().unwrap_or_default();
        let message = json.pointer("/messages/0");
        let id = message
            .and_then(|m| m.get("id"))
            .and_then(Value::as_str)
            .unwrap_or_default();
        if id.is_empty() {
            return Err(SendError::transient(format!(
                "HTTP {} without a message id: {}",
                answer.status,
                answer.snippet()
            )));
        }
        return Ok(Accepted {
            provider_message_id: id.to_owned(),
            status: message
                .and_then(|m| m.get("message_status"))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            http_status: answer.status,
        });
    }
    Err(classify(graph::error_of(answer), answer))
}

/// Sorts a Cloud API error: by code first (Meta's advice), then by status.
pub fn classify(error: ProviderError, answer: &Answer) -> SendError {
    let code = error.code.as_str();
    let rate_limited = RATE_LIMITS.contains(&code)
        || graph::RATE_LIMIT_CODES.contains(&code)
        || answer.status == 429;
    if TRANSIENT.contains(&code)
        || graph::TRANSIENT_CODES.contains(&code)
        || answer.status == 429
        || answer.status >= 500
    {
        return SendError::Transient {
            message: error.to_string(),
            retry_after: answer.retry_after,
            rate_limited,
        };
    }
    if MISCONFIGURED.contains(&code) || graph::is_misconfiguration(code) || answer.status == 401 {
        return SendError::Misconfigured(Box::new(error));
    }
    SendError::Refused(Box::new(error))
}
