//! Bots reached as HTTP JSON webhooks.
//!
//! Each message is a `POST` of the `BotRequest` in proto3 JSON (the same
//! mapping grpc-gateway and `protojson` use), with `traceparent` and
//! `content-type: application/json`. A 2xx answer carries a `BotResponse`
//! in proto3 JSON, or nothing. 408, 429 and 5xx are retried; other 4xx
//! and an answer that is not a `BotResponse` are not.
//!
//! Redirects are not followed: a 3xx is a fatal error (the webhook URL is
//! wrong; following it could send conversations to another host). An
//! answer longer than the bot's `max_response_bytes` is refused as soon as
//! it is known to be (by its `Content-Length`, or while it streams in),
//! without reading the rest; that is fatal too.

use std::time::Duration;

use reqwest::{StatusCode, header};
use switchboard_proto::v1::{BotRequest, BotResponse};
use switchboard_runtime::trace::{TRACEPARENT, TraceParent};

use super::CallError;

/// An HTTP webhook bot client, with a connection pool.
#[derive(Clone)]
pub struct HttpBot {
    client: reqwest::Client,
    url: reqwest::Url,
    max_response_bytes: usize,
}

impl HttpBot {
    /// A client for the webhook at `url`.
    pub fn new(url: &str, timeout: Duration, max_response_bytes: usize) -> anyhow::Result<Self> {
        let url = reqwest::Url::parse(url).map_err(|e| anyhow::anyhow!("bad URL {url:?}: {e}"))?;
        anyhow::ensure!(
            matches!(url.scheme(), "http" | "https"),
            "URL {url} must be http:// or https://"
        );
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .user_agent(concat!("switchboard-workers/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Self {
            client,
            url,
            max_response_bytes,
        })
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
        if status.is_redirection() {
            let to = response
                .headers()
                .get(header::LOCATION)
                .and_then(|l| l.to_str().ok())
                .unwrap_or("nowhere");
            return Err(fatal(format!(
                "HTTP {status}: redirects are not followed (to {to}); fix the bot's endpoint"
            )));
        }
        let bytes = self.read_limited(response).await?;
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

    /// The answer's body, read chunk by chunk and refused (fatal) as soon
    /// as it is known to be over `max_response_bytes`.
    async fn read_limited(&self, mut response: reqwest::Response) -> Result<Vec<u8>, CallError> {
        let limit = self.max_response_bytes;
        let too_large = || CallError {
            message: format!("the answer is larger than max_response_bytes ({limit} bytes)"),
            retryable: false,
        };
        if response.content_length().is_some_and(|n| n > limit as u64) {
            return Err(too_large());
        }
        let mut body = Vec::new();
        loop {
            let chunk = response.chunk().await.map_err(|e| CallError {
                message: format!("reading the answer: {e}"),
                retryable: true,
            })?;
            let Some(chunk) = chunk else { return Ok(body) };
            if body.len() + chunk.len() > limit {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    };

    use tokio::{
        io::{AsyncReadExt as _, AsyncWriteExt as _},
        net::TcpListener,
    };

    use super::*;

    /// A stand-in webhook on 127.0.0.1: every connection gets `head`, then
    /// `body_bytes` of filler (as fast as the client takes them). Counts
    /// the requests and the body bytes written.
    async fn serve(
        head: &'static str,
        body_bytes: usize,
    ) -> (String, Arc<AtomicUsize>, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (requests, written) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (requests_, written_) = (requests.clone(), written.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut socket, _)) = listener.accept().await else {
                    return;
                };
                let (requests, written) = (requests_.clone(), written_.clone());
                tokio::spawn(async move {
                    let mut buf = vec![0; 64 * 1024];
                    // The request: headers and its small body.
                    let _ = socket.read(&mut buf).await;
                    requests.fetch_add(1, Ordering::SeqCst);
                    if socket.write_all(head.as_bytes()).await.is_err() {
                        return;
                    }
                    let chunk = vec![b' '; 64 * 1024];
                    let mut left = body_bytes;
                    while left > 0 {
                        let n = left.min(chunk.len());
                        if socket.write_all(&chunk[..n]).await.is_err() {
                            return;
                        }
                        written.fetch_add(n, Ordering::SeqCst);
                        left -= n;
                    }
                    let _ = socket.shutdown().await;
                });
            }
        });
        (format!("http://{addr}"), requests, written)
    }

    fn request() -> BotRequest {
        BotRequest::default()
    }

    #[tokio::test]
    async fn a_redirect_is_not_followed() {
        let (url, requests, _) = serve(
            "HTTP/1.1 307 Temporary Redirect\r\nLocation: /elsewhere\r\nContent-Length: 0\r\n\r\n",
            0,
        )
        .await;
        let bot = HttpBot::new(&format!("{url}/bot"), Duration::from_secs(5), 1 << 20).unwrap();
        let error = bot
            .call(&request(), &TraceParent::root())
            .await
            .expect_err("a redirect is an error");
        assert_eq!(
            requests.load(Ordering::SeqCst),
            1,
            "only the webhook itself was called"
        );
        assert!(error.message.contains("307"), "{}", error.message);
        assert!(!error.retryable, "a redirect is a configuration error");
    }

    #[tokio::test]
    async fn an_oversized_answer_is_refused_without_reading_it_all() {
        const TOTAL: usize = 256 << 20;
        // No Content-Length: the body runs until the connection closes.
        let (url, _, written) = serve(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n",
            TOTAL,
        )
        .await;
        let bot = HttpBot::new(&url, Duration::from_secs(30), 1 << 20).unwrap();
        let error = bot
            .call(&request(), &TraceParent::root())
            .await
            .expect_err("over the limit");
        assert!(error.message.contains("larger than"), "{}", error.message);
        assert!(!error.retryable);
        tokio::time::sleep(Duration::from_millis(200)).await;
        let written = written.load(Ordering::SeqCst);
        assert!(
            written < TOTAL / 4,
            "the client stopped reading early; the server wrote {written} bytes"
        );
    }

    #[tokio::test]
    async fn a_declared_oversized_answer_is_refused_at_once() {
        let (url, _, _) = serve(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1073741824\r\n\r\n",
            0,
        )
        .await;
        let bot = HttpBot::new(&url, Duration::from_secs(30), 1 << 20).unwrap();
        let error = bot
            .call(&request(), &TraceParent::root())
            .await
            .expect_err("over the limit");
        assert!(error.message.contains("larger than"), "{}", error.message);
    }
}
