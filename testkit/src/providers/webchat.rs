//! A web chat delivery endpoint stand-in: any path, a JSON envelope.

use serde_json::json;

use super::{Answer, Call, Fault};

/// Checks the bearer token (when one is required) and that the body is an
/// envelope in proto3 JSON with a conversation.
pub(crate) fn check(call: &Call<'_>, token: Option<&str>) -> Result<(), Answer> {
    if let Some(token) = token
        && call.header(axum::http::header::AUTHORIZATION) != Some(&format!("Bearer {token}"))
    {
        return Err(Answer::error(401, json!({"error": "unauthorized"})));
    }
    let conversation = call
        .json
        .filter(|_| call.is_json())
        .and_then(|j| j["conversationId"].as_str());
    if conversation.is_none_or(str::is_empty) {
        return Err(Answer::error(
            400,
            json!({"error": "expected an envelope in JSON with a conversationId"}),
        ));
    }
    Ok(())
}

/// Answers a well-formed call: a scripted fault, 410 for a refused
/// customer (the chat session is gone), or 200 with an id.
pub(crate) fn answer(call: &Call<'_>) -> Answer {
    match call.fault {
        Some(Fault::RateLimited { retry_after_secs }) => {
            return Answer::error(429, json!({"error": "slow down"})).retry_after(retry_after_secs);
        }
        Some(Fault::ServerError) => return Answer::error(503, json!({"error": "unavailable"})),
        None => {}
    }
    let customer = call.json.expect("checked")["customer"]["id"]
        .as_str()
        .unwrap_or_default();
    if call.refusals.contains_key(customer) {
        return Answer::error(410, json!({"error": "the chat session is gone"}));
    }
    let id = format!("wc-{}", call.serial);
    Answer::ok(200, json!({"id": id}), id)
}
