//! The Messenger and Instagram Send API: `POST {base}/{version}/me/messages`
//! with the Page access token in the `access_token` query parameter (and
//! `appsecret_proof` when the app secret is configured), and a JSON body:
//! `recipient.id` (the PSID or IGSID), `messaging_type` and `message`.
//!
//! - `messaging_type` is `RESPONSE`, or `MESSAGE_TAG` with `tag:
//!   HUMAN_AGENT` when the envelope carries that tag (a human agent
//!   answering within 7 days).
//! - Text, with quick replies when the envelope's `interactive` attribute
//!   asks for choices; one media item as an attachment by `url`
//!   (`is_reusable`) or `attachment_id`. The Send API has no caption on
//!   attachments: a caption is not sent.
//!
//! A 200 carries `message_id` (`m_...`). Errors are Graph error objects;
//! see [`classify`].

use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use switchboard_proto::v1::{Envelope, MessageTag, envelope::Content, media::Kind};

use super::{
    config::{GraphApi, PageCredentials},
    graph,
    http::Answer,
    interactive::Interactive,
    outcome::{Accepted, Auth, Body, ProviderError, Request, SendError},
    secret::Secret,
};

/// At most this many quick replies.
const MAX_QUICK_REPLIES: usize = 13;

/// The call that sends `envelope` from `credentials`' page.
pub fn request(
    api: &GraphApi,
    credentials: &PageCredentials,
    envelope: &Envelope,
) -> Result<Request, SendError> {
    let url = format!(
        "{}/{}/me/messages",
        api.base_url.trim_end_matches('/'),
        api.api_version
    );
    let mut secret_query = vec![("access_token", credentials.page_token.clone())];
    if let Some(app_secret) = &credentials.app_secret {
        secret_query.push((
            "appsecret_proof",
            appsecret_proof(app_secret, &credentials.page_token),
        ));
    }
    Ok(Request {
        url: reqwest::Url::parse(&url)
            .map_err(|e| SendError::Unsendable(format!("bad Send API URL: {e}")))?,
        secret_query,
        auth: Auth::None,
        headers: Vec::new(),
        body: Body::Json(body(envelope)?),
    })
}

/// Hex HMAC-SHA256 of the access token, keyed with the app secret.
pub fn appsecret_proof(app_secret: &Secret, token: &Secret) -> Secret {
    let mut mac = Hmac::<Sha256>::new_from_slice(app_secret.expose().as_bytes())
        .expect("HMAC takes keys of any length");
    mac.update(token.expose().as_bytes());
    Secret::new(hex::encode(mac.finalize().into_bytes()))
}

/// The JSON body for `envelope`.
pub fn body(envelope: &Envelope) -> Result<Value, SendError> {
    let recipient = envelope
        .customer
        .as_ref()
        .map(|c| c.id.as_str())
        .filter(|id| !id.is_empty())
        .ok_or_else(|| SendError::Unsendable("no customer id to send to".into()))?;
    let message = match &envelope.content {
        Some(Content::Text(text)) => {
            let mut message = json!({"text": text.body});
            if let Some(choices) = Interactive::of(envelope)? {
                let choices = choices.choices();
                if choices.len() > MAX_QUICK_REPLIES {
                    return Err(SendError::Unsendable(format!(
                        "the Send API takes at most {MAX_QUICK_REPLIES} quick replies"
                    )));
                }
                message["quick_replies"] = choices
                    .iter()
                    .map(|c| json!({"content_type": "text", "title": c.title, "payload": c.id}))
                    .collect();
            }
            message
        }
        Some(Content::Media(media)) => attachment(media)?,
        Some(Content::Attachments(attachments)) => match attachments.items.as_slice() {
            [one] => attachment(one)?,
            _ => {
                return Err(SendError::Unsendable(
                    "the Send API sends one attachment per message".into(),
                ));
            }
        },
        other => {
            return Err(SendError::Unsendable(format!(
                "the Send API has no message for {} content",
                other.as_ref().map_or("no", |c| c.kind())
            )));
        }
    };
    let mut body = json!({
        "recipient": {"id": recipient},
        "messaging_type": "RESPONSE",
        "message": message,
    });
    if envelope.tag() == MessageTag::HumanAgent {
        body["messaging_type"] = json!("MESSAGE_TAG");
        body["tag"] = json!("HUMAN_AGENT");
    }
    Ok(body)
}

fn attachment(media: &switchboard_proto::v1::Media) -> Result<Value, SendError> {
    let kind = match media.kind() {
        Kind::Image | Kind::Sticker => "image",
        Kind::Video | Kind::Reel => "video",
        Kind::Audio => "audio",
        Kind::Document | Kind::File => "file",
        other => {
            return Err(SendError::Unsendable(format!(
                "the Send API cannot send {} media",
                other.as_str_name()
            )));
        }
    };
    let payload = if !media.media_id.is_empty() {
        json!({"attachment_id": media.media_id})
    } else if !media.url.is_empty() {
        json!({"url": media.url, "is_reusable": true})
    } else {
        return Err(SendError::Unsendable(
            "media needs a media_id or a url".into(),
        ));
    };
    Ok(json!({"attachment": {"type": kind, "payload": payload}}))
}

/// Send API throughput and temporary errors (besides the Graph API's own):
/// 1200 temporary send failure, 80006 Messenger rate limit.
const TRANSIENT: &[&str] = &["1200", "80006"];

/// Refusals of this message or person, whatever else the code means:
/// 10/2018278 outside the messaging window, 10/2018065 and 10/2018108 no
/// permission to message this person now, 200/1545041 person unavailable.
const REFUSED_SUBCODES: &[&str] = &["2018278", "2018065", "2018108", "1545041"];

/// Reads a Send API answer.
pub fn answer(answer: &Answer) -> Result<Accepted, SendError> {
    if (200..300).contains(&answer.status) {
        let json = answer.json().unwrap_or_default();
        let id = json
            .get("message_id")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if id.is_empty() {
            return Err(SendError::transient(format!(
                "HTTP {} without a message_id: {}",
                answer.status,
                answer.snippet()
            )));
        }
        return Ok(Accepted {
            provider_message_id: id.to_owned(),
            status: String::new(),
            http_status: answer.status,
        });
    }
    Err(classify(graph::error_of(answer), answer))
}

/// Sorts a Send API error: by code and subcode, then by status. 551 (the
/// person is not available), 100 (invalid parameter, e.g. no such user)
/// and the window subcodes are refusals of the message; token, permission
/// and policy codes are the business's to fix.
pub fn classify(error: ProviderError, answer: &Answer) -> SendError {
    let code = error.code.as_str();
    if TRANSIENT.contains(&code)
        || graph::TRANSIENT_CODES.contains(&code)
        || answer.status == 429
        || answer.status >= 500
    {
        return SendError::Transient {
            message: error.to_string(),
            retry_after: answer.retry_after,
            rate_limited: code == "80006"
                || graph::RATE_LIMIT_CODES.contains(&code)
                || answer.status == 429,
        };
    }
    if REFUSED_SUBCODES.contains(&error.subcode.as_str()) {
        return SendError::Refused(Box::new(error));
    }
    if graph::is_misconfiguration(code) || code == "230" || answer.status == 401 {
        return SendError::Misconfigured(Box::new(error));
    }
    SendError::Refused(Box::new(error))
}
