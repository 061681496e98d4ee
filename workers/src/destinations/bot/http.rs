//! Bots reached as HTTP JSON webhooks.
//!
//! Each message is a `POST` of the `BotRequest` in proto3 JSON (the same
//! mapping grpc-gateway and `protojson` use), with `traceparent` and
//! `content-type: application/json`. A 2xx answer carries a `BotResponse`
//! in proto3 JSON, or nothing. 408, 429 and 5xx are retried; other 4xx
//! and an answer that is not a `BotResponse` are not.

use std::time::Duration;

use reqwest::{StatusCode, header};
use switchboard_broker::trace::{TRACEPARENT, TraceParent};
use switchboard_proto::v1::{BotRequest, BotResponse};

use super::CallError;

/// An HTTP webhook bot client, with a connection pool.
#[derive(Clone)]
pub struct HttpBot {
    client: reqwest::Client,
    url: reqwest::Url,
}

impl HttpBot {
    /// A client for the webhook at `url`.
    pub fn new(url: &str, timeout: Duration) -> anyhow::Result<Self> {
        let url = reqwest::Url::parse(url).map_err(|e| anyhow::anyhow!("bad URL {url:?}: {e}"))?;
        anyhow::ensure!(
            matches!(url.scheme(), "http" | "https"),
            "URL {url} must be http:// or https://"
        );
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .user_agent(concat!("switchboard-workers/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self { client, url })
    }

    /// One call, waiting at most the timeout.
    pub async fn call(
        &self,
        request: &BotRequest,
        trace: &TraceParent,
    ) -> Result<BotResponse, CallError> {
        let fatal = |message: String| CallError {
            message,
            retryable: false,
        };
        let body = serde_json::to_vec(request).map_err(|e| fatal(e.to_string()))?;
        let response = self
            .client
            .post(self.url.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .header(TRACEPARENT, trace.to_string())
            .body(body)
            .send()
            .await
            .map_err(|e| CallError {
                message: format!(
                    "{}: {e}",
                    if e.is_timeout() {
                        "timed out"
                    } else {
                        "unreachable"
                    }
                ),
                retryable: true,
            })?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(|e| CallError {
            message: format!("reading the answer: {e}"),
            retryable: true,
        })?;
        if !status.is_success() {
            let snippet = String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned();
            return Err(CallError {
                message: format!("HTTP {status}: {snippet}"),
                retryable: status.is_server_error()
                    || matches!(
                        status,
                        StatusCode::REQUEST_TIMEOUT | StatusCode::TOO_MANY_REQUESTS
                    ),
            });
        }
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(BotResponse::default());
        }
        serde_json::from_slice(&bytes)
            .map_err(|e| fatal(format!("the answer is not a BotResponse in JSON: {e}")))
    }
}
