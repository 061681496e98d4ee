//! Twilio Messages API (SMS and MMS):
//! `POST {base}/2010-04-01/Accounts/{AccountSid}/Messages.json`,
//! form-encoded, HTTP Basic auth (`AccountSid:AuthToken`, or an API key).
//!
//! - `To` is the customer id; `From` or `MessagingServiceSid` from the
//!   credentials; `StatusCallback` when configured.
//! - Text goes in `Body` (choices from the `interactive` attribute listed
//!   under it); media by URL as `MediaUrl`, once per item (MMS), with the
//!   caption as `Body`; a template as `ContentSid` (its name) with
//!   `ContentVariables` `{"1": first parameter, ...}`.
//!
//! A 201 carries the Message resource, whose `sid` (`SM...`/`MM...`) joins
//! its status callbacks. Errors are `{"code","message","more_info","status"}`;
//! see [`classify`].

use serde_json::Value;
use switchboard_proto::v1::{Envelope, Media, envelope::Content};

use super::{
    config::{TwilioApi, TwilioCredentials},
    http::Answer,
    interactive::Interactive,
    outcome::{Accepted, Auth, Body, ProviderError, Request, SendError},
};

/// Twilio takes at most this many `MediaUrl`s per message.
const MAX_MEDIA: usize = 10;

/// The call that sends `envelope` from `credentials`' sender.
pub fn request(
    api: &TwilioApi,
    credentials: &TwilioCredentials,
    envelope: &Envelope,
) -> Result<Request, SendError> {
    let url = format!(
        "{}/2010-04-01/Accounts/{}/Messages.json",
        api.base_url.trim_end_matches('/'),
        credentials.account_sid
    );
    let mut form = vec![(
        "To".to_owned(),
        envelope
            .customer
            .as_ref()
            .map(|c| c.id.clone())
            .filter(|id| !id.is_empty())
            .ok_or_else(|| SendError::Unsendable("no customer number to send to".into()))?,
    )];
    match (&credentials.from, &credentials.messaging_service_sid) {
        (_, Some(service)) => form.push(("MessagingServiceSid".into(), service.clone())),
        (Some(from), None) => form.push(("From".into(), from.clone())),
        (None, None) => {
            return Err(SendError::Misconfigured(Box::new(ProviderError {
                code: "no_sender".into(),
                message: "the sms credentials have neither from nor messaging_service_sid".into(),
                ..Default::default()
            })));
        }
    }
    form.extend(content(envelope)?);
    if let Some(callback) = &credentials.status_callback {
        form.push(("StatusCallback".into(), callback.clone()));
    }
    Ok(Request {
        url: reqwest::Url::parse(&url)
            .map_err(|e| SendError::Unsendable(format!("bad Twilio URL: {e}")))?,
        secret_query: Vec::new(),
        auth: Auth::Basic {
            user: credentials
                .api_key_sid
                .clone()
                .unwrap_or_else(|| credentials.account_sid.clone()),
            password: credentials.auth_token.clone(),
        },
        headers: Vec::new(),
        body: Body::Form(form),
    })
}

/// The form fields of the message itself.
pub fn content(envelope: &Envelope) -> Result<Vec<(String, String)>, SendError> {
    let field = |name: &str, value: &str| (name.to_owned(), value.to_owned());
    let media = |items: &[Media], caption: &str| {
        if items.len() > MAX_MEDIA {
            return Err(SendError::Unsendable(format!(
                "Twilio takes at most {MAX_MEDIA} media per message"
            )));
        }
        let mut fields = Vec::new();
        if !caption.is_empty() {
            fields.push(field("Body", caption));
        }
        for item in items {
            if item.url.is_empty() {
                return Err(SendError::Unsendable(
                    "Twilio sends media by URL only".into(),
                ));
            }
            fields.push(field("MediaUrl", &item.url));
        }
        Ok(fields)
    };
    match &envelope.content {
        Some(Content::Text(text)) => {
            let mut body = text.body.clone();
            if let Some(choices) = Interactive::of(envelope)? {
                for (i, choice) in choices.choices().iter().enumerate() {
                    body.push_str(&format!("\n{}. {}", i + 1, choice.title));
                }
            }
            Ok(vec![field("Body", &body)])
        }
        Some(Content::Media(item)) => media(std::slice::from_ref(item), &item.caption),
        Some(Content::Attachments(a)) => media(&a.items, &a.caption),
        Some(Content::Template(template)) => {
            let variables: serde_json::Map<String, Value> = template
                .parameters
                .iter()
                .enumerate()
                .map(|(i, p)| ((i + 1).to_string(), Value::String(p.clone())))
                .collect();
            let mut fields = vec![field("ContentSid", &template.name)];
            if !variables.is_empty() {
                fields.push(field(
                    "ContentVariables",
                    &Value::Object(variables).to_string(),
                ));
            }
            Ok(fields)
        }
        other => Err(SendError::Unsendable(format!(
            "SMS has no message for {} content",
            other.as_ref().map_or("no", |c| c.kind())
        ))),
    }
}

/// Too many requests (20429), or more than 10 h of messages already queued
/// for the sender (21611): wait and retry.
const RATE_LIMITS: &[&str] = &["20429", "21611"];

/// The account or the sender is wrong: 20003 authentication, 20005 account
/// not active, 20404 no such account resource, 21212 invalid `From`, 21408
/// region not enabled, 21606 `From` not of this account, 21659 and 21660
/// `From` not a Twilio number of this account, 21703 and 21704 Messaging
/// Service not usable.
const MISCONFIGURED: &[&str] = &[
    "20003", "20005", "20404", "21212", "21408", "21606", "21659", "21660", "21703", "21704",
];

/// Reads a Messages API answer.
pub fn answer(answer: &Answer) -> Result<Accepted, SendError> {
    let json = answer.json();
    if (200..300).contains(&answer.status) {
        let text = |name: &str| {
            json.as_ref()
                .and_then(|j| j.get(name))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        let sid = text("sid");
        if sid.is_empty() {
            return Err(SendError::transient(format!(
                "HTTP {} without a sid: {}",
                answer.status,
                answer.snippet()
            )));
        }
        return Ok(Accepted {
            provider_message_id: sid,
            status: text("status"),
            http_status: answer.status,
        });
    }
    let text = |name: &str| match json.as_ref().and_then(|j| j.get(name)) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => String::new(),
    };
    let code = text("code");
    let error = ProviderError {
        code: if code.is_empty() {
            answer.status.to_string()
        } else {
            code
        },
        subcode: String::new(),
        message: match text("message") {
            m if m.is_empty() => answer.snippet(),
            m => m,
        },
        http_status: answer.status,
        trace: text("more_info"),
    };
    Err(classify(error, answer))
}

/// Sorts a Twilio error: rate limits and 5xx are transient, account and
/// sender errors the business's to fix, anything else (21610 unsubscribed,
/// 21211 invalid `To`, 21614 not a mobile number...) a refusal of the message.
pub fn classify(error: ProviderError, answer: &Answer) -> SendError {
    let code = error.code.as_str();
    if RATE_LIMITS.contains(&code) || answer.status == 429 || answer.status >= 500 {
        return SendError::Transient {
            message: error.to_string(),
            retry_after: answer.retry_after,
            rate_limited: RATE_LIMITS.contains(&code) || answer.status == 429,
        };
    }
    if MISCONFIGURED.contains(&code) || answer.status == 401 || answer.status == 403 {
        return SendError::Misconfigured(Box::new(error));
    }
    SendError::Refused(Box::new(error))
}
