//! What the listener answers: providers act on the status alone (any
//! non-2xx is redelivered), people and widgets read the JSON body.
//!
//! - 200 once Kafka acknowledged every event: JSON `{"results": [...]}`
//!   (one per event, as `IngestWebhook` answers), or, for SMS, the empty
//!   TwiML `<Response/>` that Twilio expects (`text/xml`).
//! - Errors: JSON `{"error": <reason phrase>, "message": ..., "fields":
//!   [{"field": ..., "description": ...}]}`, with `Retry-After` (whole
//!   seconds) when a retry can succeed. The status comes from
//!   [`IngestError::http_status`], the one mapping of errors to HTTP.

use axum::{
    Json,
    response::{IntoResponse, Response},
};
use http::{HeaderValue, StatusCode, header};
use serde_json::json;
use switchboard_proto::v1::{Channel, WebhookResponse};

use crate::error::IngestError;

/// The answer to a webhook published whole.
pub fn published(channel: Channel, response: &WebhookResponse) -> Response {
    if channel == Channel::Sms {
        return (
            [(header::CONTENT_TYPE, "text/xml; charset=utf-8")],
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response/>",
        )
            .into_response();
    }
    let results: Vec<_> = response
        .results
        .iter()
        .map(|r| {
            json!({
                "message_id": r.message_id,
                "partition": r.partition,
                "offset": r.offset,
                "duplicate": r.duplicate,
            })
        })
        .collect();
    Json(json!({ "results": results })).into_response()
}

/// The answer to a failed webhook.
pub fn failed(error: &IngestError) -> Response {
    let fields = match error {
        IngestError::InvalidArgument(violations) => violations
            .iter()
            .map(|v| json!({ "field": v.field, "description": v.description }))
            .collect(),
        _ => Vec::new(),
    };
    let mut response = refused(error.http_status(), &error.to_string(), fields);
    if let Some(after) = error.retry_after() {
        // Whole seconds, rounded up: never "retry at once".
        let seconds = after.as_secs() + u64::from(after.subsec_nanos() > 0);
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
    }
    response
}

/// A JSON refusal with `status`, a message and the bad fields, if any.
pub fn refused(status: StatusCode, message: &str, fields: Vec<serde_json::Value>) -> Response {
    let body = json!({
        "error": status.canonical_reason().unwrap_or("error"),
        "message": message,
        "fields": fields,
    });
    (status, Json(body)).into_response()
}

/// A refusal naming one field.
pub fn refused_field(status: StatusCode, field: &str, description: &str) -> Response {
    refused(
        status,
        &format!("{field}: {description}"),
        vec![json!({ "field": field, "description": description })],
    )
}
