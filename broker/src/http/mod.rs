//! The HTTP webhook listener: channel providers POST their webhooks here
//! directly, signed, instead of through a relay calling `IngestWebhook`.
//!
//! `POST /webhooks/{tenant}/{channel}` takes the body exactly as the
//! provider sends it (`channel` is `whatsapp`, `messenger`, `instagram`,
//! `sms` or `webchat`), checks it against the tenant's secrets for that
//! channel ([`crate::auth::webhooks`]), and publishes it through the same
//! path as `IngestWebhook` (normalizer, tenant limit, dedupe, publisher:
//! [`crate::service::IngestService::publish_webhook`]):
//!
//! | channel | proof checked (`verify`, [`signature`]) |
//! | --- | --- |
//! | whatsapp, messenger, instagram | `X-Hub-Signature-256`: HMAC-SHA256 of the raw body with the app secret |
//! | sms | `X-Twilio-Signature`: HMAC-SHA1 of `http.public_base_url` + path + query, then the sorted parameters, with the auth token |
//! | webchat | `authorization: Bearer <key>`; an `Origin`, when present, must be allowed |
//!
//! `GET` on a Meta channel is the verification handshake; `OPTIONS` is CORS
//! preflight for web chat pages. Answers ([`response`]): 200 once Kafka
//! acknowledged every event, 400 naming the bad fields, 401 for a missing
//! or wrong signature (nothing published) and for a tenant or channel
//! without secrets (fail closed), 403 for a refused origin or verify
//! token, 404 for no such channel,
//! 413 over `webhook_limits.max_body_bytes`, 429 with `Retry-After` over
//! the tenant's rate limit, 503 with `Retry-After` when Kafka is
//! unavailable or the node is at a bound (the provider redelivers).
//!
//! Without a tenants file nothing is checked, as for gRPC callers (local
//! development only).

pub mod config;
pub mod metrics;
mod response;
pub(crate) mod routes;
pub(crate) mod server;
pub mod signature;
mod verify;
