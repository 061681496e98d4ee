//! The Messenger and Instagram Send API stand-in:
//! `POST /{version}/me/messages` (or `/{version}/{page_id}/messages`) with
//! the page token in `access_token`.

use hmac::{Hmac, Mac};
use serde_json::json;
use sha2::Sha256;

use super::{Answer, Call, Fault, Refusal, fixtures, whatsapp::is_version};

fn invalid(message: &str) -> Answer {
    let mut body = fixtures::json(fixtures::GRAPH_100);
    body["error"]["message"] = json!(format!("(#100) {message}"));
    if let Some(error) = body["error"].as_object_mut() {
        error.remove("error_data");
    }
    Answer::error(400, body)
}

/// Checks the call as the Send API would: path, token, proof, JSON body
/// with `recipient`, `messaging_type` (and `tag` with `MESSAGE_TAG`), and a
/// `message` with text or an attachment.
pub(crate) fn check(
    call: &Call<'_>,
    page_id: &str,
    page_token: &str,
    app_secret: Option<&str>,
) -> Result<(), Answer> {
    let parts: Vec<&str> = call.path.trim_start_matches('/').split('/').collect();
    let ok_path = matches!(parts.as_slice(),
        [version, id, "messages"] if is_version(version) && (*id == "me" || *id == page_id));
    if !ok_path {
        return Err(invalid("Unsupported post request"));
    }
    let query = |name: &str| {
        call.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let bearer = call
        .header(axum::http::header::AUTHORIZATION)
        .and_then(|a| a.strip_prefix("Bearer "));
    let token = query("access_token").or(bearer);
    if token != Some(page_token) {
        return Err(Answer::error(401, fixtures::json(fixtures::GRAPH_190)));
    }
    if let Some(secret) = app_secret {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key");
        mac.update(page_token.as_bytes());
        if query("appsecret_proof") != Some(hex::encode(mac.finalize().into_bytes()).as_str()) {
            return Err(invalid(
                "Invalid appsecret_proof provided in the API argument",
            ));
        }
    }
    if !call.is_json() {
        return Err(invalid("Content-Type must be application/json"));
    }
    let Some(body) = call.json else {
        return Err(invalid("The request body is not JSON"));
    };
    if body["recipient"]["id"].as_str().is_none_or(str::is_empty) {
        return Err(invalid("param recipient must be non-empty."));
    }
    match body["messaging_type"].as_str() {
        Some("RESPONSE" | "UPDATE") => {}
        Some("MESSAGE_TAG") if body["tag"].is_string() => {}
        _ => return Err(invalid("messaging_type is missing or invalid")),
    }
    let message = &body["message"];
    if !body["sender_action"].is_null() && !message.is_null() {
        return Err(invalid("sender_action cannot be sent with message"));
    }
    let text = message["text"].as_str();
    if text.is_some_and(str::is_empty) || (text.is_none() && !message["attachment"].is_object()) {
        return Err(invalid("message must have text or an attachment"));
    }
    Ok(())
}

/// Answers a well-formed call: a scripted fault, a refusal, or a mid.
pub(crate) fn answer(call: &Call<'_>) -> Answer {
    match call.fault {
        Some(Fault::RateLimited { retry_after_secs }) => {
            return Answer::error(429, fixtures::json(fixtures::MESSENGER_613))
                .retry_after(retry_after_secs);
        }
        Some(Fault::ServerError) => return Answer::error(503, fixtures::json(fixtures::GRAPH_2)),
        None => {}
    }
    let recipient = call.json.expect("checked")["recipient"]["id"]
        .as_str()
        .unwrap_or_default();
    match call.refusals.get(recipient) {
        Some(Refusal::OutsideWindow) => {
            return Answer::error(400, fixtures::json(fixtures::MESSENGER_2018278));
        }
        Some(Refusal::Unreachable | Refusal::OptedOut) => {
            return Answer::error(400, fixtures::json(fixtures::MESSENGER_551));
        }
        None => {}
    }
    let id = format!("m_AG5Hz2Uq{:08}", call.serial);
    let mut sent = fixtures::json(fixtures::MESSENGER_SENT);
    sent["recipient_id"] = json!(recipient);
    sent["message_id"] = json!(id);
    Answer::ok(200, sent, id)
}
