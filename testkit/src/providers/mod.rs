//! Stand-ins for the channels' provider APIs, on 127.0.0.1 and an
//! ephemeral port: the WhatsApp Cloud API, the Messenger/Instagram Send
//! API, the Twilio Messages API and a web chat delivery endpoint.
//!
//! Each one checks a request the way the provider documents it (path and
//! version, authentication, content type, required fields) and answers
//! with the provider's own success and error shapes, kept in
//! `testkit/fixtures/providers/`: a bad token gets Graph's 190 or Twilio's
//! 20003, a missing field Graph's 100 or Twilio's 2160x. Every request is
//! recorded, with what was answered, for tests to assert on.
//!
//! They are programmable: [`StandIn::fail_next`] answers the next calls
//! with a rate limit (429 with `Retry-After`) or a server error, and
//! [`StandIn::refuse`] refuses one recipient for good the way the provider
//! would (WhatsApp 131047 or 131026, Messenger 10/2018278 or 551, Twilio
//! 21610 or 21211, web chat 410).

mod meta;
mod twilio;
mod webchat;
mod whatsapp;

use std::{
    collections::{HashMap, VecDeque},
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{
    body::Bytes,
    extract::State,
    http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header},
    response::{IntoResponse, Response},
};
use serde_json::Value;

/// The answer shapes, as the providers document them.
pub mod fixtures {
    /// WhatsApp: message accepted.
    pub const WHATSAPP_SENT: &str = include_str!("../../fixtures/providers/whatsapp_sent.json");
    /// WhatsApp: more than 24 h since the customer's last message.
    pub const WHATSAPP_131047: &str =
        include_str!("../../fixtures/providers/whatsapp_error_131047.json");
    /// WhatsApp: undeliverable.
    pub const WHATSAPP_131026: &str =
        include_str!("../../fixtures/providers/whatsapp_error_131026.json");
    /// WhatsApp: throughput limit.
    pub const WHATSAPP_130429: &str =
        include_str!("../../fixtures/providers/whatsapp_error_130429.json");
    /// Graph: invalid token.
    pub const GRAPH_190: &str = include_str!("../../fixtures/providers/graph_error_190.json");
    /// Graph: invalid parameter.
    pub const GRAPH_100: &str = include_str!("../../fixtures/providers/graph_error_100.json");
    /// Graph: temporarily unavailable.
    pub const GRAPH_2: &str = include_str!("../../fixtures/providers/graph_error_2.json");
    /// Send API: message accepted.
    pub const MESSENGER_SENT: &str = include_str!("../../fixtures/providers/messenger_sent.json");
    /// Send API: the person is not available.
    pub const MESSENGER_551: &str =
        include_str!("../../fixtures/providers/messenger_error_551.json");
    /// Send API: outside the messaging window.
    pub const MESSENGER_2018278: &str =
        include_str!("../../fixtures/providers/messenger_error_2018278.json");
    /// Send API: rate limit.
    pub const MESSENGER_613: &str =
        include_str!("../../fixtures/providers/messenger_error_613.json");
    /// Twilio: the created Message resource.
    pub const TWILIO_MESSAGE: &str = include_str!("../../fixtures/providers/twilio_message.json");
    /// Twilio: unsubscribed recipient.
    pub const TWILIO_21610: &str = include_str!("../../fixtures/providers/twilio_error_21610.json");
    /// Twilio: invalid `To`.
    pub const TWILIO_21211: &str = include_str!("../../fixtures/providers/twilio_error_21211.json");
    /// Twilio: authentication failed.
    pub const TWILIO_20003: &str = include_str!("../../fixtures/providers/twilio_error_20003.json");
    /// Twilio: too many requests.
    pub const TWILIO_20429: &str = include_str!("../../fixtures/providers/twilio_error_20429.json");
    /// Twilio: internal error.
    pub const TWILIO_20500: &str = include_str!("../../fixtures/providers/twilio_error_20500.json");

    /// A fixture as JSON.
    pub fn json(text: &str) -> serde_json::Value {
        serde_json::from_str(text).expect("fixtures are JSON")
    }
}

/// A temporary failure the next calls get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// 429 with `Retry-After: <seconds>` and the provider's rate-limit error.
    RateLimited {
        /// The `Retry-After` value.
        retry_after_secs: u64,
    },
    /// The provider's 5xx answer.
    ServerError,
}

/// A permanent refusal of one recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Outside the messaging window: WhatsApp 131047, Messenger 10/2018278,
    /// Twilio 63016.
    OutsideWindow,
    /// Not reachable or blocked: WhatsApp 131026, Messenger 551, Twilio
    /// 21211, web chat 410.
    Unreachable,
    /// Opted out: Twilio 21610 (others as `Unreachable`).
    OptedOut,
}

/// One request the stand-in received.
#[derive(Debug, Clone)]
pub struct Received {
    /// The path, e.g. `/v21.0/106540352242922/messages`.
    pub path: String,
    /// The query parameters.
    pub query: Vec<(String, String)>,
    /// The `Authorization` header.
    pub authorization: Option<String>,
    /// The `Content-Type` header.
    pub content_type: Option<String>,
    /// The `Idempotency-Key` header.
    pub idempotency_key: Option<String>,
    /// A JSON body.
    pub json: Option<Value>,
    /// A form body, in order, names repeated.
    pub form: Vec<(String, String)>,
    /// The HTTP status answered.
    pub status: u16,
    /// The message id answered with, when accepted.
    pub message_id: Option<String>,
    /// When it arrived.
    pub at: Instant,
}

impl Received {
    /// The first value of form field `name`.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.form
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The recipient: WhatsApp `to`, Send API `recipient.id`, Twilio `To`,
    /// web chat `customer.id`.
    pub fn recipient(&self) -> Option<String> {
        if let Some(to) = self.field("To") {
            return Some(to.to_owned());
        }
        let json = self.json.as_ref()?;
        ["/to", "/recipient/id", "/customer/id"]
            .iter()
            .find_map(|p| json.pointer(p).and_then(Value::as_str))
            .map(str::to_owned)
    }

    /// The text sent: WhatsApp `text.body`, Send API `message.text`, Twilio
    /// `Body`, web chat `text.body`.
    pub fn text(&self) -> Option<String> {
        if let Some(body) = self.field("Body") {
            return Some(body.to_owned());
        }
        let json = self.json.as_ref()?;
        ["/text/body", "/message/text", "/interactive/body/text"]
            .iter()
            .find_map(|p| json.pointer(p).and_then(Value::as_str))
            .map(str::to_owned)
    }

    /// Whether the provider accepted it.
    pub fn accepted(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// Which API a stand-in plays, and the credentials it accepts.
#[derive(Debug, Clone)]
enum Api {
    Whatsapp {
        token: String,
        phone_number_id: String,
    },
    Meta {
        page_id: String,
        page_token: String,
        app_secret: Option<String>,
    },
    Twilio {
        account_sid: String,
        auth_token: String,
    },
    Webchat {
        token: Option<String>,
    },
}

/// What the stand-in answers with and what it has seen.
struct Inner {
    api: Api,
    received: Mutex<Vec<Received>>,
    faults: Mutex<VecDeque<Fault>>,
    refusals: Mutex<HashMap<String, Refusal>>,
    delay: Mutex<Duration>,
    log: AtomicBool,
    counter: AtomicU64,
}

/// A running stand-in; stops when dropped.
pub struct StandIn {
    /// The base URL to configure (`http://127.0.0.1:<port>`).
    pub url: String,
    inner: Arc<Inner>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An answer: status, JSON body, `Retry-After`.
pub(crate) struct Answer {
    status: u16,
    body: Value,
    retry_after: Option<u64>,
    message_id: Option<String>,
}

impl Answer {
    pub(crate) fn ok(status: u16, body: Value, message_id: String) -> Self {
        Self {
            status,
            body,
            retry_after: None,
            message_id: Some(message_id),
        }
    }

    pub(crate) fn error(status: u16, body: Value) -> Self {
        Self {
            status,
            body,
            retry_after: None,
            message_id: None,
        }
    }

    pub(crate) fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }
}

impl StandIn {
    /// The WhatsApp Cloud API, accepting `token` for `phone_number_id`.
    pub async fn whatsapp(token: &str, phone_number_id: &str) -> Self {
        Self::start(Api::Whatsapp {
            token: token.into(),
            phone_number_id: phone_number_id.into(),
        })
        .await
    }

    /// The Messenger (or Instagram) Send API of page `page_id`, accepting
    /// `page_token`, and requiring `appsecret_proof` with `app_secret`.
    pub async fn meta(page_id: &str, page_token: &str, app_secret: Option<&str>) -> Self {
        Self::start(Api::Meta {
            page_id: page_id.into(),
            page_token: page_token.into(),
            app_secret: app_secret.map(str::to_owned),
        })
        .await
    }

    /// The Twilio Messages API of `account_sid`, accepting `auth_token`.
    pub async fn twilio(account_sid: &str, auth_token: &str) -> Self {
        Self::start(Api::Twilio {
            account_sid: account_sid.into(),
            auth_token: auth_token.into(),
        })
        .await
    }

    /// A web chat delivery endpoint (any path), requiring `token` as a
    /// bearer token when given.
    pub async fn webchat(token: Option<&str>) -> Self {
        Self::start(Api::Webchat {
            token: token.map(str::to_owned),
        })
        .await
    }

    async fn start(api: Api) -> Self {
        let inner = Arc::new(Inner {
            api,
            received: Mutex::new(Vec::new()),
            faults: Mutex::new(VecDeque::new()),
            refusals: Mutex::new(HashMap::new()),
            delay: Mutex::new(Duration::ZERO),
            log: AtomicBool::new(false),
            counter: AtomicU64::new(0),
        });
        let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .expect("bind a stand-in provider");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(inner.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { url, inner, task }
    }

    /// Logs every accepted message at info level (target `customer`): what
    /// the customer would receive. For demos.
    pub fn log_accepted(&self) {
        self.inner.log.store(true, Ordering::Relaxed);
    }

    /// Everything received so far, in arrival order.
    pub fn received(&self) -> Vec<Received> {
        self.inner.received.lock().expect("lock").clone()
    }

    /// The requests that were accepted, in arrival order.
    pub fn accepted(&self) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(Received::accepted)
            .collect()
    }

    /// The next `n` calls fail with `fault`.
    pub fn fail_next(&self, n: usize, fault: Fault) {
        let mut faults = self.inner.faults.lock().expect("lock");
        faults.extend(std::iter::repeat_n(fault, n));
    }

    /// Every message to `recipient` is refused for good.
    pub fn refuse(&self, recipient: &str, refusal: Refusal) {
        self.inner
            .refusals
            .lock()
            .expect("lock")
            .insert(recipient.to_owned(), refusal);
    }

    /// Each answer takes `delay`.
    pub fn set_delay(&self, delay: Duration) {
        *self.inner.delay.lock().expect("lock") = delay;
    }
}

/// What one provider's handler gets.
pub(crate) struct Call<'a> {
    pub(crate) path: &'a str,
    pub(crate) query: &'a [(String, String)],
    pub(crate) headers: &'a HeaderMap,
    pub(crate) body: &'a Bytes,
    pub(crate) json: Option<&'a Value>,
    pub(crate) form: &'a [(String, String)],
    pub(crate) refusals: &'a HashMap<String, Refusal>,
    pub(crate) fault: Option<Fault>,
    pub(crate) serial: u64,
}

impl Call<'_> {
    pub(crate) fn header(&self, name: header::HeaderName) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub(crate) fn is_json(&self) -> bool {
        self.header(header::CONTENT_TYPE)
            .is_some_and(|c| c.starts_with("application/json"))
    }
}

async fn handle(
    State(inner): State<Arc<Inner>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let arrived = Instant::now();
    let delay = *inner.delay.lock().expect("lock");
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let query: Vec<(String, String)> = form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
        .into_owned()
        .collect();
    let json: Option<Value> = serde_json::from_slice(&body).ok();
    let form: Vec<(String, String)> = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .filter(|c| c.starts_with("application/x-www-form-urlencoded"))
        .map(|_| form_urlencoded::parse(&body).into_owned().collect())
        .unwrap_or_default();
    let answer = if method != Method::POST {
        Answer::error(405, serde_json::json!({"error": "POST only"}))
    } else {
        let refusals = inner.refusals.lock().expect("lock").clone();
        let call = Call {
            path: uri.path(),
            query: &query,
            headers: &headers,
            body: &body,
            json: json.as_ref(),
            form: &form,
            refusals: &refusals,
            fault: None,
            serial: inner.counter.fetch_add(1, Ordering::SeqCst) + 1,
        };
        // A request the provider would refuse as malformed is answered so
        // before any scripted fault: faults are for well-formed calls.
        let checked = match &inner.api {
            Api::Whatsapp {
                token,
                phone_number_id,
            } => whatsapp::check(&call, token, phone_number_id),
            Api::Meta {
                page_id,
                page_token,
                app_secret,
            } => meta::check(&call, page_id, page_token, app_secret.as_deref()),
            Api::Twilio {
                account_sid,
                auth_token,
            } => twilio::check(&call, account_sid, auth_token),
            Api::Webchat { token } => webchat::check(&call, token.as_deref()),
        };
        match checked {
            Err(answer) => answer,
            Ok(()) => {
                let call = Call {
                    fault: inner.faults.lock().expect("lock").pop_front(),
                    ..call
                };
                match &inner.api {
                    Api::Whatsapp { .. } => whatsapp::answer(&call),
                    Api::Meta { .. } => meta::answer(&call),
                    Api::Twilio { account_sid, .. } => twilio::answer(&call, account_sid),
                    Api::Webchat { .. } => webchat::answer(&call),
                }
            }
        }
    };
    let received = Received {
        path: uri.path().to_owned(),
        query,
        authorization: headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        content_type: headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        idempotency_key: headers
            .get("idempotency-key")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        json,
        form,
        status: answer.status,
        message_id: answer.message_id.clone(),
        at: arrived,
    };
    if inner.log.load(Ordering::Relaxed) && received.accepted() {
        tracing::info!(
            target: "customer",
            to = %switchboard_runtime::telemetry::redact(&received.recipient().unwrap_or_default()),
            text = %received.text().unwrap_or_else(|| "(no text)".into()),
            id = %received.message_id.as_deref().unwrap_or(""),
            "customer <- reply (stand-in provider at {})", received.path
        );
    }
    inner.received.lock().expect("lock").push(received);
    let mut response = (
        StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        [(header::CONTENT_TYPE, "application/json")],
        answer.body.to_string(),
    )
        .into_response();
    if let Some(seconds) = answer.retry_after {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}
