//! The WhatsApp Cloud API stand-in: `POST /{version}/{phone_number_id}/messages`.

use axum::http::header;
use serde_json::{Value, json};

use super::{Answer, Call, Fault, Refusal, fixtures};

/// The message types the Cloud API sends, each with an object of its name.
const TYPES: &[&str] = &[
    "text",
    "image",
    "video",
    "audio",
    "document",
    "sticker",
    "template",
    "interactive",
    "reaction",
    "location",
    "contacts",
];

/// Graph's "invalid parameter" (100), saying which.
pub(crate) fn invalid(details: &str) -> Answer {
    let mut body = fixtures::json(fixtures::GRAPH_100);
    body["error"]["error_data"]["details"] = json!(details);
    Answer::error(400, body)
}

/// Checks the call as the Cloud API would: version and number in the path,
/// the bearer token, JSON, and the body's required fields.
pub(crate) fn check(call: &Call<'_>, token: &str, phone_number_id: &str) -> Result<(), Answer> {
    let parts: Vec<&str> = call.path.trim_start_matches('/').split('/').collect();
    let [version, id, "messages"] = parts.as_slice() else {
        return Err(invalid("Unsupported post request"));
    };
    if !is_version(version) || *id != phone_number_id {
        return Err(invalid(&format!(
            "Unsupported post request. Object with ID '{id}' does not exist"
        )));
    }
    if call.header(header::AUTHORIZATION) != Some(&format!("Bearer {token}")) {
        return Err(Answer::error(401, fixtures::json(fixtures::GRAPH_190)));
    }
    if !call.is_json() {
        return Err(invalid("Content-Type must be application/json"));
    }
    let Some(body) = call.json else {
        return Err(invalid("The request body is not JSON"));
    };
    if body["messaging_product"] != "whatsapp" {
        return Err(invalid("messaging_product must be whatsapp"));
    }
    if body["to"].as_str().is_none_or(str::is_empty) {
        return Err(invalid("The parameter to is required."));
    }
    let kind = body["type"].as_str().unwrap_or("text");
    if !TYPES.contains(&kind) || !body[kind].is_object() {
        return Err(invalid(&format!("The parameter {kind} is required.")));
    }
    if let Some(context) = body.get("context")
        && context["message_id"].as_str().is_none_or(str::is_empty)
    {
        return Err(invalid("context.message_id is required"));
    }
    match kind {
        "text" => {
            let text = body["text"]["body"].as_str().unwrap_or_default();
            if text.is_empty() || text.chars().count() > 4096 {
                return Err(invalid("text.body must be 1 to 4096 characters"));
            }
        }
        "image" | "video" | "audio" | "document" | "sticker" => {
            let media = &body[kind];
            if media["id"].is_null() == media["link"].is_null() {
                return Err(invalid("media needs exactly one of id and link"));
            }
        }
        "interactive" => {
            let buttons = body["interactive"]["action"]["buttons"].as_array();
            if buttons.is_some_and(|b| b.is_empty() || b.len() > 3) {
                return Err(invalid("interactive buttons: 1 to 3"));
            }
        }
        "template"
            if body["template"]["name"].as_str().is_none_or(str::is_empty)
                || body["template"]["language"]["code"].is_null() =>
        {
            return Err(invalid("template needs a name and a language code"));
        }
        _ => {}
    }
    Ok(())
}

/// `v21.0` and the like.
pub(crate) fn is_version(version: &str) -> bool {
    version
        .strip_prefix('v')
        .and_then(|v| v.split_once('.'))
        .is_some_and(|(major, minor)| {
            [major, minor]
                .iter()
                .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        })
}

/// Answers a well-formed call: a scripted fault, a refusal, or a wamid.
pub(crate) fn answer(call: &Call<'_>) -> Answer {
    match call.fault {
        Some(Fault::RateLimited { retry_after_secs }) => {
            return Answer::error(429, fixtures::json(fixtures::WHATSAPP_130429))
                .retry_after(retry_after_secs);
        }
        Some(Fault::ServerError) => return Answer::error(503, fixtures::json(fixtures::GRAPH_2)),
        None => {}
    }
    let body = call.json.expect("checked");
    let to = body["to"].as_str().unwrap_or_default();
    match call.refusals.get(to) {
        Some(Refusal::OutsideWindow) => {
            return Answer::error(400, fixtures::json(fixtures::WHATSAPP_131047));
        }
        Some(Refusal::Unreachable | Refusal::OptedOut) => {
            return Answer::error(400, fixtures::json(fixtures::WHATSAPP_131026));
        }
        None => {}
    }
    let id = format!("wamid.HBgL{:08}{}", call.serial, to.len());
    let mut sent: Value = fixtures::json(fixtures::WHATSAPP_SENT);
    sent["contacts"][0] = json!({"input": to, "wa_id": to.trim_start_matches('+')});
    sent["messages"][0]["id"] = json!(id);
    Answer::ok(200, sent, id)
}
