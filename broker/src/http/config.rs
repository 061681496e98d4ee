//! The HTTP webhook listener's settings (the broker config's `[http]`
//! section; its address is the top-level `http_addr`).

use std::{net::SocketAddr, time::Duration};

use serde::{Deserialize, Serialize};

/// Settings of the HTTP webhook listener.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// The public URL that providers call, up to (not including)
    /// `/webhooks/...`: e.g. `https://hooks.example.com`, or
    /// `https://example.com/switchboard` when a proxy strips a path prefix.
    /// Twilio signs the full URL it called, which a node behind a TLS
    /// terminator or a rewriting proxy cannot see. Without it, the URL is
    /// `http://` + the request's `Host` header (direct, plain-HTTP setups
    /// only).
    pub public_base_url: Option<String>,
    /// Longest time to read a request's body and answer it; past it the
    /// answer is 503, and the provider redelivers (Twilio gives up after
    /// 15 s, Messenger after 20 s). A webhook cut short may still reach
    /// Kafka: the redelivery is then a duplicate, which dedupe drops.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Longest time a client may take to send a request's headers, and
    /// to start the next request on a kept-alive connection.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Most requests served at once, over all connections; more are
    /// answered 503 at once. With `webhook_limits.max_body_bytes`, this
    /// bounds the memory that bodies take.
    pub max_concurrent_requests: usize,
    /// Most open connections; more wait in the listen backlog.
    pub max_connections: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            public_base_url: None,
            request_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(10),
            max_concurrent_requests: 256,
            max_connections: 1024,
        }
    }
}

impl HttpConfig {
    /// Refuses settings the listener cannot work with.
    pub fn check(&self) -> anyhow::Result<()> {
        if let Some(url) = &self.public_base_url {
            let rest = url
                .strip_prefix("https://")
                .or_else(|| url.strip_prefix("http://"));
            anyhow::ensure!(
                rest.is_some_and(|r| !r.is_empty() && !r.contains(['?', '#'])),
                "http.public_base_url must be an http:// or https:// URL without query or fragment, got {url:?}"
            );
        }
        anyhow::ensure!(
            self.max_concurrent_requests > 0 && self.max_connections > 0,
            "http.max_concurrent_requests and http.max_connections must be at least 1"
        );
        anyhow::ensure!(
            !self.request_timeout.is_zero() && !self.header_read_timeout.is_zero(),
            "http.request_timeout and http.header_read_timeout must be above zero"
        );
        Ok(())
    }
}

/// `http_addr`: a socket address, or `"off"` for no listener.
pub mod addr_or_off {
    use super::*;

    /// Writes `None` as `"off"`.
    pub fn serialize<S: serde::Serializer>(
        addr: &Option<SocketAddr>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match addr {
            Some(addr) => addr.serialize(serializer),
            None => serializer.serialize_str("off"),
        }
    }

    /// Reads an address, or `"off"` (any case) as `None`.
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<SocketAddr>, D::Error> {
        let text = String::deserialize(deserializer)?;
        if text.trim().eq_ignore_ascii_case("off") {
            return Ok(None);
        }
        text.trim().parse().map(Some).map_err(|e| {
            serde::de::Error::custom(format!(
                "{text:?} is neither an address (host:port) nor \"off\": {e}"
            ))
        })
    }
}
