//! The ingestion node's HTTP webhook listener on the real local Kafka
//! (`deploy/test.sh`): providers' signed webhooks in, envelopes on the
//! messages topic out, and every refusal answered with a status providers
//! understand and nothing published. Each test runs its own node, with its
//! own topic and tenants file, on ephemeral ports.

use std::{
    net::SocketAddr,
    path::PathBuf,
    time::{Duration, Instant},
};

use prost::Message as _;
use rdkafka::Message as _;
use reqwest::{StatusCode, header};
use serde_json::Value;
use switchboard_broker::{
    auth::key_digest,
    config::BrokerConfig,
    http::signature::{meta_signature, twilio_signature},
    server::Broker,
};
use switchboard_proto::v1::{Channel, Envelope};
use switchboard_runtime::shutdown::Shutdown;
use switchboard_testkit as testkit;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const META_SECRET: &str = "acme-meta-app-secret";
const VERIFY_TOKEN: &str = "acme-verify-token";
const TWILIO_TOKEN: &str = "acme-twilio-token";
const WEBCHAT_KEY: &str = "acme-webchat-key";
const SHOP: &str = "https://shop.example.com";
/// What the node is told providers call; the proxy strips `/sb`.
const PUBLIC_BASE_URL: &str = "https://hooks.example.com/sb";

/// The tenants file: `acme` with every channel's secrets (the Meta app
/// secret in a file of its own), and `slow`, allowed one message a second.
fn tenants() -> String {
    format!(
        r#"
[[tenants]]
id = "acme"
api_keys_sha256 = ["{acme_key}"]
rate_limit_per_second = 1000

[tenants.webhooks.whatsapp]
app_secret_file = "meta-app-secret"
verify_token = "{VERIFY_TOKEN}"

[tenants.webhooks.sms]
auth_token = "{TWILIO_TOKEN}"

[tenants.webhooks.webchat]
keys_sha256 = ["{webchat_key}"]
allowed_origins = ["{SHOP}"]

[[tenants]]
id = "slow"
api_keys_sha256 = ["{slow_key}"]
rate_limit_per_second = 1
rate_limit_burst = 1

[tenants.webhooks.webchat]
keys_sha256 = ["{webchat_key}"]
"#,
        acme_key = key_digest("acme-api-key"),
        slow_key = key_digest("slow-api-key"),
        webchat_key = key_digest(WEBCHAT_KEY),
    )
}

/// A node with its HTTP listener on an ephemeral port.
struct Node {
    http: SocketAddr,
    topic: String,
    bootstrap: String,
    stop: Shutdown,
    server: tokio::task::JoinHandle<anyhow::Result<()>>,
    dir: PathBuf,
    client: reqwest::Client,
}

impl Node {
    /// A node on `bootstrap` (its topic created when `create_topic`).
    async fn start(
        bootstrap: &str,
        create_topic: bool,
        tweak: impl FnOnce(&mut BrokerConfig),
    ) -> Self {
        let dir = std::env::temp_dir().join(testkit::random_topic("http-webhooks"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("meta-app-secret"), format!("{META_SECRET}\n")).unwrap();
        std::fs::write(dir.join("tenants.toml"), tenants()).unwrap();
        let topic = testkit::random_topic("http-webhooks.messages");
        let mut config = BrokerConfig {
            grpc_addr: "127.0.0.1:0".parse().unwrap(),
            http_addr: Some("127.0.0.1:0".parse().unwrap()),
            metrics_addr: None,
            kafka: testkit::kafka_config(bootstrap, 3),
            messages_topic: topic.clone(),
            auth_file: Some(dir.join("tenants.toml")),
            ack_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(3),
            ..BrokerConfig::default()
        };
        config.http.public_base_url = Some(PUBLIC_BASE_URL.into());
        tweak(&mut config);
        if create_topic {
            config.kafka.ensure_topics(&[&topic]).await.unwrap();
        }
        let broker = Broker::bind(config).await.unwrap();
        let http = broker.http_addr().expect("the HTTP listener is on");
        let stop = Shutdown::new();
        let server = tokio::spawn(broker.serve(stop.clone()));
        Self {
            http,
            topic,
            bootstrap: bootstrap.to_owned(),
            stop,
            server,
            dir,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    /// POSTs `body` to `path` with `headers`.
    async fn post(&self, path: &str, body: &[u8], headers: &[(&str, &str)]) -> reqwest::Response {
        let mut request = self.client.post(self.url(path)).body(body.to_vec());
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.send().await.unwrap()
    }

    /// POSTs until the answer is not 503: a new topic's leaders take a moment.
    async fn post_until_published(
        &self,
        path: &str,
        body: &[u8],
        headers: &[(&str, &str)],
    ) -> reqwest::Response {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let response = self.post(path, body, headers).await;
            if response.status() != StatusCode::SERVICE_UNAVAILABLE || Instant::now() > deadline {
                return response;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Every envelope on the topic, once `count` are there; there must be
    /// exactly `count` (each 200 came after Kafka's ack, each refusal
    /// before any publish, so the log is complete when the answers are in).
    async fn published(&self, count: usize) -> Vec<Envelope> {
        let (bootstrap, topic) = (self.bootstrap.clone(), self.topic.clone());
        tokio::task::spawn_blocking(move || {
            let size = testkit::topic_size(&bootstrap, &topic);
            assert_eq!(size, count as i64, "records on the messages topic");
            testkit::read_topic(&bootstrap, &topic, Duration::from_secs(30), |r| {
                r.len() >= count
            })
            .iter()
            .map(|m| Envelope::decode(m.payload().unwrap()).unwrap())
            .collect()
        })
        .await
        .unwrap()
    }

    async fn stop(self) {
        self.stop.cancel();
        self.server.await.unwrap().unwrap();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn fixture(name: &str) -> Vec<u8> {
    let path = format!(
        "{}/../broker/tests/fixtures/webhooks/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The JSON body of an answer.
async fn json(response: reqwest::Response) -> Value {
    let text = response.text().await.unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// The field paths a refusal names.
fn fields(body: &Value) -> Vec<String> {
    body["fields"]
        .as_array()
        .unwrap_or_else(|| panic!("no fields: {body}"))
        .iter()
        .map(|f| f["field"].as_str().unwrap().to_owned())
        .collect()
}

fn meta_headers(signature: &str) -> Vec<(&'static str, String)> {
    vec![
        ("content-type", "application/json".into()),
        ("x-hub-signature-256", signature.into()),
    ]
}

fn borrowed<'a>(headers: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    headers.iter().map(|(n, v)| (*n, v.as_str())).collect()
}

const WHATSAPP: &str = "/webhooks/acme/whatsapp";

/// A WhatsApp webhook signed with the app secret is published once Kafka
/// has every event; unsigned, wrongly signed or altered ones get 401 and
/// publish nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real local Kafka: run deploy/test.sh"]
async fn signed_meta_webhooks_are_published_and_unsigned_ones_are_not() {
    let node = Node::start(&testkit::real_kafka(), true, |_| {}).await;
    let text = fixture("whatsapp_text.json");
    let signed = meta_headers(&meta_signature(META_SECRET.as_bytes(), &text));
    let response = node
        .post_until_published(WHATSAPP, &text, &borrowed(&signed))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let first = json(response).await;
    let message_id = first["results"][0]["message_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(first["results"].as_array().unwrap().len(), 1, "{first}");

    // Two statuses in one webhook: answered once both are in Kafka.
    let statuses = fixture("whatsapp_statuses_batch.json");
    let headers = meta_headers(&meta_signature(META_SECRET.as_bytes(), &statuses));
    let response = node.post(WHATSAPP, &statuses, &borrowed(&headers)).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(json(response).await["results"].as_array().unwrap().len(), 2);

    // Refused, each naming the header: none, another app's, another body's.
    let image = fixture("whatsapp_image_reply.json");
    let other_app = meta_headers(&meta_signature(b"another-app-secret", &image));
    let altered = meta_headers(&meta_signature(META_SECRET.as_bytes(), &text));
    let plain = [("content-type", "application/json")];
    for (what, headers) in [
        ("unsigned", plain.to_vec()),
        ("another app's secret", borrowed(&other_app)),
        ("the signature of another body", borrowed(&altered)),
    ] {
        let response = node.post(WHATSAPP, &image, &headers).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{what}");
        assert_eq!(
            fields(&json(response).await),
            ["x-hub-signature-256"],
            "{what}"
        );
    }

    // A copy the provider redelivers is answered from dedupe, not published again.
    let response = node.post(WHATSAPP, &text, &borrowed(&signed)).await;
    let again = json(response).await;
    assert_eq!(again["results"][0]["duplicate"], true, "{again}");
    assert_eq!(again["results"][0]["message_id"], message_id.as_str());

    let published = node.published(3).await;
    let text_envelope = published
        .iter()
        .find(|e| e.message_id == message_id)
        .expect("the text message");
    assert_eq!(text_envelope.tenant_id, "acme");
    assert_eq!(text_envelope.channel(), Channel::Whatsapp);
    assert!(text_envelope.channel_message_id.starts_with("wamid."));
    assert!(published.iter().all(|e| e.channel() == Channel::Whatsapp));
    node.stop().await;
}

/// Meta's verification handshake: the bare challenge for the tenant's
/// verify token, 403 for any other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real local Kafka: run deploy/test.sh"]
async fn the_verification_handshake_needs_the_verify_token() {
    let node = Node::start(&testkit::real_kafka(), true, |_| {}).await;
    let get = |query: String| {
        let url = node.url(&format!("{WHATSAPP}?{query}"));
        let client = node.client.clone();
        async move { client.get(url).send().await.unwrap() }
    };
    let response = get(format!(
        "hub.mode=subscribe&hub.verify_token={VERIFY_TOKEN}&hub.challenge=1158201444"
    ))
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    assert_eq!(response.text().await.unwrap(), "1158201444");

    for (query, status) in [
        (
            "hub.mode=subscribe&hub.verify_token=wrong&hub.challenge=1".to_owned(),
            StatusCode::FORBIDDEN,
        ),
        (
            format!("hub.mode=unsubscribe&hub.verify_token={VERIFY_TOKEN}&hub.challenge=1"),
            StatusCode::FORBIDDEN,
        ),
        (
            "hub.mode=subscribe&hub.challenge=1".to_owned(),
            StatusCode::FORBIDDEN,
        ),
        (
            format!("hub.mode=subscribe&hub.verify_token={VERIFY_TOKEN}"),
            StatusCode::BAD_REQUEST,
        ),
    ] {
        let response = get(query.clone()).await;
        assert_eq!(response.status(), status, "{query}");
        assert_ne!(response.text().await.unwrap(), "1", "{query}");
    }
    // Only Meta channels have a handshake; unconfigured tenants have none.
    let sms = node
        .client
        .get(node.url("/webhooks/acme/sms"))
        .send()
        .await
        .unwrap();
    assert_eq!(sms.status(), StatusCode::METHOD_NOT_ALLOWED);
    let other = node
        .client
        .get(node.url("/webhooks/globex/whatsapp?hub.mode=subscribe&hub.challenge=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), StatusCode::UNAUTHORIZED);
    node.stop().await;
}

/// Twilio signs the public URL it called (behind the proxy) and the sorted
/// form parameters; the node checks that, answers TwiML, and refuses a
/// signature of any other URL or body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real local Kafka: run deploy/test.sh"]
async fn twilio_signed_forms_are_published_and_others_are_not() {
    let node = Node::start(&testkit::real_kafka(), true, |_| {}).await;
    let form = fixture("sms_inbound.form");
    let path = "/webhooks/acme/sms";
    let sign = |url: &str, body: &[u8]| twilio_signature(TWILIO_TOKEN.as_bytes(), url, body);
    let good = sign(&format!("{PUBLIC_BASE_URL}{path}"), &form);
    let content_type = ("content-type", "application/x-www-form-urlencoded");
    let response = node
        .post_until_published(path, &form, &[content_type, ("x-twilio-signature", &good)])
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/xml")
    );
    assert!(response.text().await.unwrap().ends_with("<Response/>"));

    let stop = fixture("sms_stop.form");
    // The node's own address, not the public URL; another body; none.
    let local = sign(&node.url(path), &stop);
    let other_body = sign(&format!("{PUBLIC_BASE_URL}{path}"), &form);
    for (what, headers) in [
        (
            "signed for the node's address",
            vec![content_type, ("x-twilio-signature", local.as_str())],
        ),
        (
            "signed for another body",
            vec![content_type, ("x-twilio-signature", other_body.as_str())],
        ),
        ("unsigned", vec![content_type]),
    ] {
        let response = node.post(path, &stop, &headers).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{what}");
        assert_eq!(
            fields(&json(response).await),
            ["x-twilio-signature"],
            "{what}"
        );
    }

    let published = node.published(1).await;
    assert_eq!(published[0].channel(), Channel::Sms);
    assert_eq!(
        published[0].channel_message_id,
        "SM5f0e3c3b2a1d4e5f6a7b8c9d0e1f2a3b"
    );
    node.stop().await;
}

/// Web chat: the tenant's key, and, from a browser, an allowed origin;
/// CORS preflight answers allowed origins only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real local Kafka: run deploy/test.sh"]
async fn webchat_needs_the_key_and_an_allowed_origin() {
    let node = Node::start(&testkit::real_kafka(), true, |_| {}).await;
    let path = "/webhooks/acme/webchat";
    let body = fixture("webchat_envelope.json");
    let bearer = format!("Bearer {WEBCHAT_KEY}");
    let json_type = ("content-type", "application/json");
    let response = node
        .post_until_published(
            path,
            &body,
            &[json_type, ("authorization", &bearer), ("origin", SHOP)],
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN],
        SHOP
    );

    for (what, headers, status) in [
        ("no key", vec![json_type], StatusCode::UNAUTHORIZED),
        (
            "another key",
            vec![json_type, ("authorization", "Bearer guessed")],
            StatusCode::UNAUTHORIZED,
        ),
        (
            "the key, from another site",
            vec![
                json_type,
                ("authorization", bearer.as_str()),
                ("origin", "https://evil.example.com"),
            ],
            StatusCode::FORBIDDEN,
        ),
    ] {
        let response = node.post(path, &body, &headers).await;
        assert_eq!(response.status(), status, "{what}");
        // The browser is not told it may read the answer.
        assert!(
            !response
                .headers()
                .contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN),
            "{what}"
        );
    }

    let preflight = |origin: &'static str| {
        node.client
            .request(reqwest::Method::OPTIONS, node.url(path))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization,content-type",
            )
            .send()
    };
    let allowed = preflight(SHOP).await.unwrap();
    assert!(allowed.status().is_success());
    assert_eq!(allowed.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN], SHOP);
    let methods = allowed.headers()[header::ACCESS_CONTROL_ALLOW_METHODS]
        .to_str()
        .unwrap();
    assert!(methods.contains("POST"), "{methods}");
    let refused = preflight("https://evil.example.com").await.unwrap();
    assert!(
        !refused
            .headers()
            .contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN)
    );

    let published = node.published(1).await;
    assert_eq!(published[0].channel(), Channel::Webchat);
    assert_eq!(published[0].channel_message_id, "wc-0001");
    node.stop().await;
}

/// Refusals providers understand, none of which publishes: 400 naming the
/// bad fields, 413 over the body limit, 401 for a tenant or channel with
/// no secrets, 429 with `Retry-After` over the tenant's rate limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real local Kafka: run deploy/test.sh"]
async fn refusals_name_what_is_wrong_and_publish_nothing() {
    let node = Node::start(&testkit::real_kafka(), true, |config| {
        config.webhook_limits.max_body_bytes = 16 << 10;
    })
    .await;
    let bearer = format!("Bearer {WEBCHAT_KEY}");
    let webchat = |id: &str| {
        let mut envelope: Value =
            serde_json::from_slice(&fixture("webchat_envelope.json")).unwrap();
        envelope["channelMessageId"] = id.into();
        serde_json::to_vec(&envelope).unwrap()
    };
    let headers = [
        ("content-type", "application/json"),
        ("authorization", bearer.as_str()),
    ];
    // One accepted message first, so the topic is ready.
    let response = node
        .post_until_published("/webhooks/slow/webchat", &webchat("slow-1"), &headers)
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    // `slow` may send one message a second: one of the next few, sent at
    // once, is 429 with Retry-After (on a loaded machine a second may pass
    // between two posts, and the next one is then allowed).
    let (mut response, mut allowed) = (None, 1);
    for i in 2..8 {
        let sent = node
            .post(
                "/webhooks/slow/webchat",
                &webchat(&format!("slow-{i}")),
                &headers,
            )
            .await;
        if sent.status() != StatusCode::OK {
            response = Some(sent);
            break;
        }
        allowed += 1;
    }
    let response = response.expect("a refusal over the rate limit");
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = response.headers()[header::RETRY_AFTER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry_after), "Retry-After: {retry_after}");

    // A signed WhatsApp message without a sender or a time: 400 naming both.
    let mut text: Value = serde_json::from_slice(&fixture("whatsapp_text.json")).unwrap();
    let value = &mut text["entry"][0]["changes"][0]["value"];
    value.as_object_mut().unwrap().remove("contacts");
    let message = &mut value["messages"][0];
    message.as_object_mut().unwrap().remove("from");
    message["timestamp"] = "soon".into();
    let body = serde_json::to_vec(&text).unwrap();
    let signed = meta_headers(&meta_signature(META_SECRET.as_bytes(), &body));
    let response = node.post(WHATSAPP, &body, &borrowed(&signed)).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let refusal = json(response).await;
    let bad = fields(&refusal);
    for path in [
        "payload.entry[0].changes[0].value.messages[0].from",
        "payload.entry[0].changes[0].value.messages[0].timestamp",
    ] {
        assert!(bad.iter().any(|f| f == path), "{path} not in {refusal}");
    }
    // A web chat body that is not an envelope, and one the visitor may not send.
    let mut outbound: Value = serde_json::from_slice(&webchat("wc-out")).unwrap();
    outbound["direction"] = "OUTBOUND".into();
    let response = node
        .post(
            "/webhooks/acme/webchat",
            &serde_json::to_vec(&outbound).unwrap(),
            &headers,
        )
        .await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(fields(&json(response).await), ["payload.direction"]);

    // Over the body limit: 413, whatever the signature.
    let big = vec![b' '; 32 << 10];
    let response = node.post(WHATSAPP, &big, &borrowed(&signed)).await;
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let refusal = json(response).await;
    assert_eq!(fields(&refusal), ["body"]);
    assert!(
        refusal["message"].as_str().unwrap().contains("16384"),
        "{refusal}"
    );

    // No secrets for this tenant or channel: fail closed. No such channel: 404.
    for (path, status) in [
        ("/webhooks/globex/whatsapp", StatusCode::UNAUTHORIZED),
        ("/webhooks/acme/messenger", StatusCode::UNAUTHORIZED),
        ("/webhooks/nobody/sms", StatusCode::UNAUTHORIZED),
        ("/webhooks/acme/fax", StatusCode::NOT_FOUND),
    ] {
        let response = node.post(path, b"{}", &borrowed(&signed)).await;
        assert_eq!(response.status(), status, "{path}");
    }

    let published = node.published(allowed).await;
    assert_eq!(published[0].channel_message_id, "slow-1");
    node.stop().await;
}

/// With Kafka unreachable, a webhook gets 503 and `Retry-After`, so the
/// provider redelivers; shutting down lets that request finish, then
/// closes the listener.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_kafka_is_503_and_shutdown_drains() {
    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let node = Node::start(&closed.to_string(), false, |config| {
        config.ack_timeout = Duration::from_secs(2);
    })
    .await;
    let bearer = format!("Bearer {WEBCHAT_KEY}");
    let body = fixture("webchat_envelope.json");
    let headers = [
        ("content-type", "application/json"),
        ("authorization", bearer.as_str()),
    ];
    let response = node.post("/webhooks/acme/webchat", &body, &headers).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()[header::RETRY_AFTER], "1");
    let refusal = json(response).await;
    assert!(
        refusal["message"].as_str().unwrap().contains("kafka"),
        "{refusal}"
    );

    // A request in flight when the shutdown signal comes still gets its
    // answer: its body is only half sent when the signal fires.
    let request = format!(
        "POST /webhooks/acme/webchat HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\n\
         authorization: {bearer}\r\ncontent-length: {}\r\n\r\n",
        node.http,
        body.len()
    );
    let mut stream = tokio::net::TcpStream::connect(node.http).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let (first, rest) = body.split_at(body.len() / 2);
    stream.write_all(first).await.unwrap();
    // Time for the node to read the headers: from then on it is a request
    // in flight, not an idle connection.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let Node {
        http,
        stop,
        server,
        client,
        dir,
        ..
    } = node;
    stop.cancel();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stream.write_all(rest).await.unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 503"),
        "answered, not cut off: {answer}"
    );
    server.await.unwrap().unwrap();
    let _ = std::fs::remove_dir_all(dir);
    assert!(
        client
            .post(format!("http://{http}/webhooks/acme/webchat"))
            .send()
            .await
            .is_err(),
        "the listener is closed"
    );
}

/// The listener's own bounds: past `max_concurrent_requests` a request is
/// answered 503 at once; one not done within `request_timeout` gets 503;
/// a client that does not finish its headers in `header_read_timeout` is
/// disconnected. No Kafka is needed: nothing gets that far.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listener_sheds_times_out_and_drops_slow_clients() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let node = Node::start(&closed.to_string(), false, |config| {
        config.http.max_concurrent_requests = 1;
        config.http.request_timeout = Duration::from_secs(1);
        config.http.header_read_timeout = Duration::from_millis(500);
    })
    .await;
    // A request whose body never comes holds the only slot.
    let mut stuck = tokio::net::TcpStream::connect(node.http).await.unwrap();
    let head = format!(
        "POST /webhooks/acme/webchat HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\n\
         content-length: 100\r\n\r\n{{",
        node.http
    );
    stuck.write_all(head.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

    let started = Instant::now();
    let shed = node.post("/webhooks/acme/webchat", b"{}", &[]).await;
    assert_eq!(shed.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(shed.headers()[header::RETRY_AFTER], "1");
    let message = json(shed).await["message"].as_str().unwrap().to_owned();
    assert!(message.contains("max_concurrent_requests"), "{message}");
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "shed at once"
    );

    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stuck.read_to_end(&mut answer))
        .await
        .expect("answered within the request timeout")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("request_timeout"), "{answer}");

    // Headers that never end: the connection is closed.
    let mut slow = tokio::net::TcpStream::connect(node.http).await.unwrap();
    slow.write_all(b"POST /webhooks/acme/webchat HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "still open after the header read timeout");
    node.stop().await;
}
