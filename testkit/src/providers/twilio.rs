//! The Twilio Messages API stand-in:
//! `POST /2010-04-01/Accounts/{AccountSid}/Messages.json`, form-encoded,
//! HTTP Basic auth.

use base64::Engine as _;
use serde_json::json;

use super::{Answer, Call, Fault, Refusal, fixtures};

/// A Twilio error in its documented shape.
fn error(status: u16, code: u32, message: &str) -> Answer {
    Answer::error(
        status,
        json!({
            "code": code,
            "message": message,
            "more_info": format!("https://www.twilio.com/docs/errors/{code}"),
            "status": status,
        }),
    )
}

/// Checks the call as Twilio would: the account in the path, Basic auth
/// with the account SID (or an API key) and auth token, a form with `To`,
/// `From` or `MessagingServiceSid`, and `Body`, `MediaUrl` or `ContentSid`.
pub(crate) fn check(call: &Call<'_>, account_sid: &str, auth_token: &str) -> Result<(), Answer> {
    let expected = format!("/2010-04-01/Accounts/{account_sid}/Messages.json");
    if call.path != expected {
        return Err(error(
            404,
            20404,
            &format!("The requested resource {} was not found", call.path),
        ));
    }
    let credentials = call
        .header(axum::http::header::AUTHORIZATION)
        .and_then(|a| a.strip_prefix("Basic "))
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .and_then(|b| String::from_utf8(b).ok());
    let authenticated = credentials
        .as_deref()
        .and_then(|c| c.split_once(':'))
        .is_some_and(|(user, password)| {
            (user == account_sid || user.starts_with("SK")) && password == auth_token
        });
    if !authenticated {
        return Err(Answer::error(401, fixtures::json(fixtures::TWILIO_20003)));
    }
    if call.form.is_empty() && !call.body.is_empty() {
        return Err(error(
            400,
            20001,
            "Content-Type must be application/x-www-form-urlencoded",
        ));
    }
    let has = |name: &str| call.form.iter().any(|(k, v)| k == name && !v.is_empty());
    if !has("To") {
        return Err(error(400, 21604, "A 'To' phone number is required."));
    }
    if !has("From") && !has("MessagingServiceSid") {
        return Err(error(400, 21603, "A 'From' phone number is required."));
    }
    if !has("Body") && !has("MediaUrl") && !has("ContentSid") {
        return Err(error(400, 21602, "Message body is required."));
    }
    Ok(())
}

/// Answers a well-formed call: a scripted fault, a refusal, or a Message
/// resource (201) with an `SM`/`MM` sid.
pub(crate) fn answer(call: &Call<'_>, account_sid: &str) -> Answer {
    match call.fault {
        Some(Fault::RateLimited { retry_after_secs }) => {
            return Answer::error(429, fixtures::json(fixtures::TWILIO_20429))
                .retry_after(retry_after_secs);
        }
        Some(Fault::ServerError) => {
            return Answer::error(500, fixtures::json(fixtures::TWILIO_20500));
        }
        None => {}
    }
    let field = |name: &str| {
        call.form
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let to = field("To").unwrap_or_default();
    match call.refusals.get(&to) {
        Some(Refusal::OptedOut) => {
            return Answer::error(400, fixtures::json(fixtures::TWILIO_21610));
        }
        Some(Refusal::Unreachable) => {
            return Answer::error(400, fixtures::json(fixtures::TWILIO_21211));
        }
        Some(Refusal::OutsideWindow) => {
            return error(
                400,
                63016,
                "Failed to send freeform message because you are outside the allowed window.",
            );
        }
        None => {}
    }
    let media = call.form.iter().filter(|(k, _)| k == "MediaUrl").count();
    let sid = format!(
        "{}{:032x}",
        if media > 0 { "MM" } else { "SM" },
        call.serial
    );
    let service = field("MessagingServiceSid");
    let mut message = fixtures::json(fixtures::TWILIO_MESSAGE);
    message["account_sid"] = json!(account_sid);
    message["sid"] = json!(sid);
    message["to"] = json!(to);
    message["from"] = json!(field("From"));
    message["body"] = json!(field("Body").unwrap_or_default());
    message["num_media"] = json!(media.to_string());
    message["status"] = json!(if service.is_some() {
        "accepted"
    } else {
        "queued"
    });
    message["messaging_service_sid"] = json!(service);
    message["uri"] = json!(format!(
        "/2010-04-01/Accounts/{account_sid}/Messages/{sid}.json"
    ));
    message["subresource_uris"]["media"] = json!(format!(
        "/2010-04-01/Accounts/{account_sid}/Messages/{sid}/Media.json"
    ));
    Answer::ok(201, message, sid)
}
