//! Web chat: the business's own widget. The envelope is POSTed, in proto3
//! JSON (the shape web chat publishes with), to the tenant's delivery URL,
//! with `Idempotency-Key: <message_id>` so the receiver can drop a copy,
//! and `Authorization: Bearer` when a token is configured.
//!
//! A 2xx is accepted; a JSON answer's `id` or `message_id` is the provider
//! message id, else the envelope's own. 408, 425, 429 and 5xx are retried;
//! 401 and 403 are the configuration's fault; any other 4xx refuses the
//! message (e.g. 404 or 410 for a chat session that is gone).

use serde_json::Value;
use switchboard_proto::v1::Envelope;

use super::{
    config::WebchatCredentials,
    http::Answer,
    outcome::{Accepted, Auth, Body, ProviderError, Request, SendError},
};

/// The call that delivers `envelope` to `credentials.url`.
pub fn request(
    credentials: &WebchatCredentials,
    envelope: &Envelope,
) -> Result<Request, SendError> {
    let body = serde_json::to_value(envelope)
        .map_err(|e| SendError::Unsendable(format!("the envelope has no JSON form: {e}")))?;
    Ok(Request {
        url: reqwest::Url::parse(&credentials.url)
            .map_err(|e| SendError::Unsendable(format!("bad web chat URL: {e}")))?,
        secret_query: Vec::new(),
        auth: credentials.token.clone().map_or(Auth::None, Auth::Bearer),
        headers: if envelope.message_id.is_empty() {
            Vec::new()
        } else {
            vec![("idempotency-key", envelope.message_id.clone())]
        },
        body: Body::Json(body),
    })
}

/// Reads the delivery URL's answer to `envelope`.
pub fn answer(answer: &Answer, envelope: &Envelope) -> Result<Accepted, SendError> {
    let status = answer.status;
    if (200..300).contains(&status) {
        let json = answer.json().unwrap_or_default();
        let id = ["id", "message_id"]
            .iter()
            .find_map(|name| json.get(*name).and_then(Value::as_str))
            .unwrap_or(&envelope.message_id);
        return Ok(Accepted {
            provider_message_id: id.to_owned(),
            status: String::new(),
            http_status: status,
        });
    }
    let error = ProviderError {
        code: status.to_string(),
        message: answer.snippet(),
        http_status: status,
        ..Default::default()
    };
    if matches!(status, 408 | 425 | 429) || status >= 500 {
        return Err(SendError::Transient {
            message: error.to_string(),
            retry_after: answer.retry_after,
            rate_limited: status == 429,
        });
    }
    if matches!(status, 401 | 403) {
        return Err(SendError::Misconfigured(Box::new(error)));
    }
    Err(SendError::Refused(Box::new(error)))
}
