//! The listener's routes: `POST` (a webhook), `GET` (Meta's verification
//! handshake) and CORS preflight `OPTIONS` on `/webhooks/{tenant}/{channel}`.

use std::{sync::Arc, time::Duration};

use axum::{
    Router,
    body::Bytes,
    extract::{
        DefaultBodyLimit, Path, Query, Request, State,
        rejection::{BytesRejection, QueryRejection},
    },
    middleware::Next,
    response::{IntoResponse, Response},
    routing::get,
};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, header};
use secrecy::ExposeSecret as _;
use serde::Deserialize;
use subtle::ConstantTimeEq as _;
use switchboard_proto::v1::Channel;
use switchboard_runtime::trace::{self, TRACEPARENT};
use tower_http::cors::{AllowOrigin, CorsLayer};
use tracing::Instrument as _;

use super::{
    metrics::HttpMetrics,
    response,
    verify::{self, Received, Refusal},
};
use crate::{
    auth::{Auth, ChannelSecrets, WebhookAuth},
    service::{IngestService, Webhook, WebhookRoute},
};

/// The one route.
pub const WEBHOOKS: &str = "/webhooks/{tenant}/{channel}";

/// The longest `hub.challenge` echoed back (Meta sends a number).
const MAX_CHALLENGE_BYTES: usize = 1024;

/// What every request's handler shares.
#[derive(Clone)]
pub struct AppState {
    /// The node's Ingest service: the webhook path `IngestWebhook` takes too.
    pub service: IngestService,
    /// Tenants and their webhook secrets.
    pub auth: Arc<Auth>,
    /// `http.public_base_url`.
    pub public_base_url: Option<Arc<str>>,
    /// The listener's counters.
    pub metrics: Arc<HttpMetrics>,
    /// `webhook_limits.max_body_bytes`.
    pub max_body_bytes: usize,
}

/// The routes, with the body limit and CORS for web chat pages.
pub fn router(state: AppState) -> Router {
    let auth = state.auth.clone();
    let cors = CorsLayer::new()
        .allow_origin(AllowOrigin::predicate(move |origin, parts| {
            origin_allowed(&auth, origin, &parts.uri)
        }))
        .allow_methods([Method::POST])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            HeaderName::from_static(TRACEPARENT),
        ])
        .max_age(Duration::from_secs(600));
    Router::new()
        .route(WEBHOOKS, get(handshake).post(receive))
        .layer(DefaultBodyLimit::max(state.max_body_bytes))
        .layer(cors)
        .with_state(state)
}

/// Counts every answer by channel and status (the outermost layer).
pub async fn count(
    State(metrics): State<Arc<HttpMetrics>>,
    request: Request,
    next: Next,
) -> Response {
    let channel = path_parts(request.uri().path()).and_then(|(_, channel)| channel);
    let response = next.run(request).await;
    metrics.request(channel, response.status());
    response
}

/// The channel named by a path segment (its slug, e.g. `whatsapp`).
fn channel_named(slug: &str) -> Option<Channel> {
    Channel::KNOWN.into_iter().find(|c| c.slug() == slug)
}

/// The tenant (percent-decoded) and channel of a `/webhooks/{tenant}/{channel}` path.
fn path_parts(path: &str) -> Option<(String, Option<Channel>)> {
    let rest = path.strip_prefix("/webhooks/")?;
    let (tenant, channel) = rest.split_once('/')?;
    let tenant = percent_encoding::percent_decode_str(tenant)
        .decode_utf8()
        .ok()?
        .into_owned();
    Some((tenant, channel_named(channel)))
}

/// Whether a browser page at `origin` may post to `uri`: a web chat
/// tenant's allowed origins.
fn origin_allowed(auth: &Auth, origin: &HeaderValue, uri: &Uri) -> bool {
    let Some((tenant, Some(channel))) = path_parts(uri.path()) else {
        return false;
    };
    match auth.webhook(&tenant, channel) {
        WebhookAuth::NotConfigured => false,
        WebhookAuth::Checked { secrets, .. } => {
            origin.to_str().is_ok_and(|o| secrets.allows_origin(o))
        }
    }
}

fn unknown_channel() -> Response {
    response::refused_field(
        StatusCode::NOT_FOUND,
        "channel",
        "must be one of whatsapp, messenger, instagram, sms, webchat",
    )
}

/// Fail closed: a tenant and channel without secrets take nothing, even
/// when gRPC authentication is off.
fn not_configured(tenant: &str, channel: Channel) -> Response {
    response::refused(
        StatusCode::UNAUTHORIZED,
        &format!(
            "tenant {tenant:?} has no {} webhook secrets on this node, so nothing it posts can be verified",
            channel.slug()
        ),
        Vec::new(),
    )
}

/// `POST`: checks the signature (or key and origin), then publishes the
/// body through the webhook path `IngestWebhook` takes, and answers once
/// Kafka acknowledged every event.
async fn receive(
    State(state): State<AppState>,
    Path((tenant, channel)): Path<(String, String)>,
    headers: HeaderMap,
    uri: Uri,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let Some(channel) = channel_named(&channel) else {
        return unknown_channel();
    };
    let body = match body {
        Ok(body) => body,
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return response::refused_field(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body",
                &format!(
                    "is larger than the node's {} byte limit (webhook_limits.max_body_bytes)",
                    state.max_body_bytes
                ),
            );
        }
        Err(rejection) => {
            return response::refused(rejection.status(), &rejection.body_text(), Vec::new());
        }
    };
    let caller = match state.auth.webhook(&tenant, channel) {
        WebhookAuth::NotConfigured => return not_configured(&tenant, channel),
        WebhookAuth::Checked { caller, secrets } => {
            let received = Received {
                headers: &headers,
                uri: &uri,
                body: &body,
                public_base_url: state.public_base_url.as_deref(),
            };
            if let Err(refusal) = verify::check(&secrets, &received) {
                if let Refusal::Signature(reason, _) = refusal {
                    state.metrics.signature_failure(channel, reason);
                }
                tracing::debug!(%tenant, channel = channel.slug(), ?refusal, "webhook refused");
                return refusal.response();
            }
            caller
        }
    };
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let (span, trace) = trace::hop(
        "ingest.http_webhook",
        headers.get(TRACEPARENT).and_then(|v| v.to_str().ok()),
    );
    let webhook = Webhook {
        tenant_id: &tenant,
        channel,
        payload: &body,
        content_type,
    };
    let published = state
        .service
        .publish_webhook(WebhookRoute::Http, &caller, webhook, &trace)
        .instrument(span)
        .await;
    match published {
        Ok(results) => response::published(channel, &results),
        Err(error) => response::failed(&error),
    }
}

/// Meta's verification handshake query.
#[derive(Deserialize)]
struct Handshake {
    #[serde(rename = "hub.mode")]
    mode: Option<String>,
    #[serde(rename = "hub.verify_token")]
    verify_token: Option<String>,
    #[serde(rename = "hub.challenge")]
    challenge: Option<String>,
}

/// `GET`: Meta's verification handshake. 200 with the bare challenge when
/// the mode is `subscribe` and the verify token is the tenant's; 403 otherwise.
async fn handshake(
    State(state): State<AppState>,
    Path((tenant, channel)): Path<(String, String)>,
    query: Result<Query<Handshake>, QueryRejection>,
) -> Response {
    let Some(channel) = channel_named(&channel) else {
        return unknown_channel();
    };
    if !matches!(
        channel,
        Channel::Whatsapp | Channel::Messenger | Channel::Instagram
    ) {
        let mut refused = response::refused(
            StatusCode::METHOD_NOT_ALLOWED,
            &format!(
                "{} webhooks are POSTed; only Meta channels have a GET handshake",
                channel.slug()
            ),
            Vec::new(),
        );
        refused
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("POST"));
        return refused;
    }
    let Ok(Query(handshake)) = query else {
        return response::refused(
            StatusCode::BAD_REQUEST,
            "the query is not valid",
            Vec::new(),
        );
    };
    let Some(challenge) = handshake
        .challenge
        .filter(|c| !c.is_empty() && c.len() <= MAX_CHALLENGE_BYTES)
    else {
        return response::refused_field(
            StatusCode::BAD_REQUEST,
            "hub.challenge",
            &format!("is required, and at most {MAX_CHALLENGE_BYTES} bytes"),
        );
    };
    let token = handshake.verify_token.unwrap_or_default();
    let token_ok = match state.auth.webhook(&tenant, channel) {
        WebhookAuth::NotConfigured => return not_configured(&tenant, channel),
        WebhookAuth::Checked { secrets, .. } => match &*secrets {
            ChannelSecrets::Meta { verify_token, .. } => token
                .as_bytes()
                .ct_eq(verify_token.expose_secret().as_bytes())
                .into(),
            ChannelSecrets::Twilio { .. } | ChannelSecrets::Webchat { .. } => false,
        },
    };
    if handshake.mode.as_deref() != Some("subscribe") || !token_ok {
        tracing::debug!(%tenant, channel = channel.slug(), "verification handshake refused");
        return response::refused_field(
            StatusCode::FORBIDDEN,
            "hub.verify_token",
            "does not match the tenant's verify token (or hub.mode is not subscribe)",
        );
    }
    (
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        challenge,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_a_tenant_and_maybe_a_channel() {
        assert_eq!(
            path_parts("/webhooks/acme%20co/whatsapp"),
            Some(("acme co".to_owned(), Some(Channel::Whatsapp)))
        );
        assert_eq!(
            path_parts("/webhooks/acme/telegram"),
            Some(("acme".to_owned(), None))
        );
        assert_eq!(path_parts("/hooks/acme/sms"), None);
        assert_eq!(channel_named("unspecified"), None);
    }
}
