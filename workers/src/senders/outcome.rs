//! What a provider call ends in, and the provider-neutral request the
//! provider modules build.

use std::time::Duration;

use super::secret::Secret;

/// A provider accepted the message (a 2xx with the provider's message id).
/// Accepted is not delivered: the provider's status webhooks follow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// The provider's id of the message (wamid, mid, Twilio SID).
    pub provider_message_id: String,
    /// The provider's status word (`accepted`, `queued`), if any.
    pub status: String,
    /// The HTTP status.
    pub http_status: u16,
}

/// A provider's error, as it reported it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProviderError {
    /// The provider's code (`131047`, `551`, `21610`); the HTTP status when
    /// the provider gave no code.
    pub code: String,
    /// The Graph API `error_subcode`, if any.
    pub subcode: String,
    /// The provider's message (WhatsApp's `error_data.details` appended).
    pub message: String,
    /// The HTTP status.
    pub http_status: u16,
    /// Graph `fbtrace_id` or Twilio `more_info`.
    pub trace: String,
}

impl std::fmt::Display for ProviderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HTTP {} code {}", self.http_status, self.code)?;
        if !self.subcode.is_empty() {
            write!(f, "/{}", self.subcode)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Why a send did not end in [`Accepted`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// May succeed later: a timeout, a refused connection, 429, 5xx, or a
    /// throughput error code. Retried with backoff.
    #[error("transient: {message}")]
    Transient {
        /// What happened.
        message: String,
        /// How long the provider asked to wait (`Retry-After`).
        retry_after: Option<Duration>,
        /// The sender is over the provider's rate: its other messages wait too.
        rate_limited: bool,
    },
    /// The provider refused this message for good (outside the window,
    /// unknown or blocked recipient, unsubscribed): to the rejections topic.
    #[error("refused by the provider: {0}")]
    Refused(Box<ProviderError>),
    /// The business's side is wrong (token, permissions, sender, account):
    /// no message of this sender can go until it is fixed. To the
    /// dead-letter topic, to be replayed then.
    #[error("the provider refused the credentials or the sender: {0}")]
    Misconfigured(Box<ProviderError>),
    /// The envelope cannot be expressed on its channel (no recipient, a
    /// content type the channel has no message for): to the rejections topic.
    #[error("cannot be sent on this channel: {0}")]
    Unsendable(String),
}

impl SendError {
    /// A transient error without a provider answer.
    pub fn transient(message: impl Into<String>) -> Self {
        Self::Transient {
            message: message.into(),
            retry_after: None,
            rate_limited: false,
        }
    }

    /// The metric label of the outcome this error ends a send with.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Transient { .. } => "failed",
            Self::Refused(_) => "refused",
            Self::Misconfigured(_) => "misconfigured",
            Self::Unsendable(_) => "unsendable",
        }
    }
}

/// How a request authenticates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Auth {
    /// Nothing (Graph page tokens travel in the query).
    None,
    /// `Authorization: Bearer <token>`.
    Bearer(Secret),
    /// HTTP Basic.
    Basic {
        /// User name (an account or API key SID).
        user: String,
        /// Password (an auth token or API key secret).
        password: Secret,
    },
}

/// A request body.
#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    /// `application/json`.
    Json(serde_json::Value),
    /// `application/x-www-form-urlencoded`, names may repeat (`MediaUrl`).
    Form(Vec<(String, String)>),
}

/// One provider call, built from an envelope and a tenant's credentials.
/// Its `Debug` shows no secret (query secrets are held apart).
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// The URL, without secret query parameters.
    pub url: reqwest::Url,
    /// Query parameters that are secrets (`access_token`, `appsecret_proof`).
    pub secret_query: Vec<(&'static str, Secret)>,
    /// Authentication.
    pub auth: Auth,
    /// More headers (e.g. `Idempotency-Key`).
    pub headers: Vec<(&'static str, String)>,
    /// The body.
    pub body: Body,
}
