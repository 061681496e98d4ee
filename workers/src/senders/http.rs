//! The one HTTP client of the sender stage: timeouts, no redirects, a
//! bounded answer, and `Retry-After` read.

use std::time::{Duration, SystemTime};

use reqwest::header;

use super::outcome::{Auth, Body, Request, SendError};

/// A provider's answer.
#[derive(Debug, Clone)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// `Retry-After`, as a wait from now.
    pub retry_after: Option<Duration>,
    /// The body, cut at the client's `max_response_bytes`.
    pub body: bytes::Bytes,
}

impl Answer {
    /// The body as JSON, if it is.
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }

    /// The start of the body as text, for error messages.
    pub fn snippet(&self) -> String {
        let end = self.body.len().min(300);
        String::from_utf8_lossy(&self.body[..end]).trim().to_owned()
    }
}

/// Calls providers, with a connection pool shared by all of them.
#[derive(Clone)]
pub struct HttpClient {
    client: reqwest::Client,
    max_response_bytes: usize,
}

impl HttpClient {
    /// A client whose calls take at most `timeout` and read at most
    /// `max_response_bytes` of an answer. Redirects are not followed: a
    /// provider API does not redirect, and following one could hand a
    /// message (or a token) to another host.
    pub fn new(timeout: Duration, max_response_bytes: usize) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .user_agent(concat!("switchboard-workers/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Self {
            client,
            max_response_bytes,
        })
    }

    /// Makes the call. A failure to reach the provider, or an answer cut
    /// off, is transient: the provider may or may not have the message.
    pub async fn call(&self, request: &Request) -> Result<Answer, SendError> {
        let mut url = request.url.clone();
        if !request.secret_query.is_empty() {
            let mut query = url.query_pairs_mut();
            for (name, value) in &request.secret_query {
                query.append_pair(name, value.expose());
            }
        }
        let mut builder = self.client.post(url);
        builder = match &request.auth {
            Auth::None => builder,
            Auth::Bearer(token) => builder.bearer_auth(token.expose()),
            Auth::Basic { user, password } => builder.basic_auth(user, Some(password.expose())),
        };
        for (name, value) in &request.headers {
            builder = builder.header(*name, value);
        }
        builder = match &request.body {
            Body::Json(value) => builder
                .header(header::CONTENT_TYPE, "application/json")
                .body(serde_json::to_vec(value).expect("a JSON value serializes")),
            Body::Form(pairs) => builder
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(form_encode(pairs)),
        };
        // reqwest's errors print the URL, which may carry a page token:
        // keep only the kind of failure.
        let mut response = builder.send().await.map_err(|e| {
            SendError::transient(if e.is_timeout() {
                "timed out".to_owned()
            } else if e.is_connect() {
                "cannot connect".to_owned()
            } else {
                "request failed".to_owned()
            })
        })?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, SystemTime::now()));
        let mut body = Vec::new();
        while body.len() < self.max_response_bytes {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    let room = self.max_response_bytes - body.len();
                    body.extend_from_slice(&chunk[..chunk.len().min(room)]);
                }
                Ok(None) => break,
                Err(_) if (200..300).contains(&status) => {
                    return Err(SendError::transient("the answer was cut off"));
                }
                // An error answer cut off still says what it says.
                Err(_) => break,
            }
        }
        Ok(Answer {
            status,
            retry_after,
            body: body.into(),
        })
    }
}

/// `application/x-www-form-urlencoded`, keeping repeated names.
pub fn form_encode(pairs: &[(String, String)]) -> String {
    let mut serializer = form_urlencoded::Serializer::new(String::new());
    for (name, value) in pairs {
        serializer.append_pair(name, value);
    }
    serializer.finish()
}

/// A `Retry-After` value, seconds or an HTTP date, as a wait from `now`.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = jiff::fmt::rfc2822::parse(value).ok()?.timestamp();
    let at = SystemTime::from(at);
    Some(at.duration_since(now).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_read_as_seconds_or_an_http_date() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777); // Sun, 06 Nov 1994 08:49:37 GMT
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:50:07 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:00 GMT", now),
            Some(Duration::ZERO),
            "a date already past means now"
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn forms_keep_repeated_names_in_order() {
        let pairs = [
            ("To".to_owned(), "+15559870000".to_owned()),
            ("MediaUrl".to_owned(), "https://cdn/a.jpg".to_owned()),
            ("MediaUrl".to_owned(), "https://cdn/b.jpg".to_owned()),
        ];
        assert_eq!(
            form_encode(&pairs),
            "To=%2B15559870000&MediaUrl=https%3A%2F%2Fcdn%2Fa.jpg&MediaUrl=https%3A%2F%2Fcdn%2Fb.jpg"
        );
    }
}
