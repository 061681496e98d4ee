//! The sender stage on the real local Kafka, against stand-in provider
//! servers: outbound envelopes published to the outbound topics (as the
//! routing stage writes them) reach each provider as it documents the
//! request, the provider's message id lands on analytics, transient errors
//! are retried (honouring `Retry-After`), refusals go to the rejections
//! topic with the provider's code, a conversation's messages go in order
//! while conversations go concurrently, and a restart does not send again
//! what was committed.
//!
//! Run with `deploy/test.sh` (it starts Kafka and sets `SWITCHBOARD_TEST_KAFKA`).

use std::time::{Duration, Instant};

use prost::Message as _;
use rdkafka::{
    Message as _,
    message::{Headers as _, OwnedMessage},
};
use switchboard_proto::v1::{
    AnalyticsRecord, Attachments, Channel, Direction, Envelope, Media, MessageTag, Party,
    Rejection, RejectionReason, Text, envelope::Content, media::Kind, send_outcome::Status,
};
use switchboard_runtime::shutdown::Shutdown;
use switchboard_testkit::{
    self as testkit,
    providers::{Fault, Refusal, StandIn},
};
use switchboard_workers::{
    config::{AutoOffsetReset, WorkersConfig},
    senders::{
        config::{
            PageCredentials, SendersConfig, TenantCredentials, TwilioCredentials,
            WebchatCredentials, WhatsappCredentials,
        },
        secret::Secret,
        service::{SenderStage, headers},
    },
};

const PHONE_NUMBER_ID: &str = "106540352242922";
const WA_TOKEN: &str = "EAAG-test-wa-token";
const PAGE_TOKEN: &str = "EAAB-test-page-token";
const APP_SECRET: &str = "test-app-secret";
const ACCOUNT_SID: &str = "AC9a1b2c3d4e5f60718293a4b5c6d7e8f9";
const AUTH_TOKEN: &str = "test-twilio-token";
const WEBCHAT_TOKEN: &str = "test-webchat-token";

/// The four stand-ins the tests send to.
struct Providers {
    whatsapp: StandIn,
    messenger: StandIn,
    twilio: StandIn,
    webchat: StandIn,
}

impl Providers {
    async fn start() -> Self {
        Self {
            whatsapp: StandIn::whatsapp(WA_TOKEN, PHONE_NUMBER_ID).await,
            messenger: StandIn::meta("PAGE-1", PAGE_TOKEN, Some(APP_SECRET)).await,
            twilio: StandIn::twilio(ACCOUNT_SID, AUTH_TOKEN).await,
            webchat: StandIn::webchat(Some(WEBCHAT_TOKEN)).await,
        }
    }
}

/// A worker configuration of its own on the shared Kafka, its senders
/// pointed at `providers` with tenant `acme`'s credentials.
fn isolated(providers: &Providers) -> WorkersConfig {
    let t = |what: &str| testkit::random_topic(&format!("senders.{what}"));
    let mut senders = SendersConfig {
        enabled: true,
        channels: ["whatsapp", "messenger", "sms", "webchat"]
            .map(String::from)
            .to_vec(),
        auto_offset_reset: AutoOffsetReset::Earliest,
        retry_backoff: Duration::from_millis(10),
        retry_backoff_max: Duration::from_secs(5),
        ..SendersConfig::default()
    };
    senders.whatsapp.base_url = providers.whatsapp.url.clone();
    senders.messenger.base_url = providers.messenger.url.clone();
    senders.sms.base_url = providers.twilio.url.clone();
    senders.tenants.insert(
        "acme".into(),
        TenantCredentials {
            whatsapp: Some(WhatsappCredentials {
                phone_number_id: PHONE_NUMBER_ID.into(),
                token: Secret::new(WA_TOKEN),
                rate: None,
            }),
            messenger: Some(PageCredentials {
                page_id: "PAGE-1".into(),
                page_token: Secret::new(PAGE_TOKEN),
                app_secret: Some(Secret::new(APP_SECRET)),
                rate: None,
            }),
            sms: Some(TwilioCredentials {
                account_sid: ACCOUNT_SID.into(),
                auth_token: Secret::new(AUTH_TOKEN),
                api_key_sid: None,
                from: Some("+15559870000".into()),
                messaging_service_sid: None,
                status_callback: None,
                rate: None,
            }),
            webchat: Some(WebchatCredentials {
                url: format!("{}/deliver/acme", providers.webchat.url),
                token: Some(Secret::new(WEBCHAT_TOKEN)),
                rate: None,
            }),
            instagram: None,
        },
    );
    WorkersConfig {
        kafka: testkit::kafka_config(&testkit::real_kafka(), 2),
        group_id: t("group"),
        analytics_topic: t("analytics"),
        rejections_topic: t("rejections"),
        dlq_topic: t("dlq"),
        outbound_topic_prefix: t("outbound"),
        metrics_addr: None,
        shutdown_grace: Duration::from_secs(5),
        senders,
        ..WorkersConfig::default()
    }
}

/// Creates only the topics the sender stage reads and writes.
async fn create_topics(config: &WorkersConfig) {
    let mut topics: Vec<String> = [
        Channel::Whatsapp,
        Channel::Messenger,
        Channel::Sms,
        Channel::Webchat,
    ]
    .map(|c| config.outbound_topic(c))
    .to_vec();
    topics.extend([
        config.analytics_topic.clone(),
        config.rejections_topic.clone(),
        config.dlq_topic.clone(),
    ]);
    let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
    config.kafka.ensure_topics(&topics).await.unwrap();
}

/// A running sender stage.
struct Running(Shutdown, tokio::task::JoinHandle<anyhow::Result<()>>);

fn start(config: &WorkersConfig) -> Running {
    let stage = SenderStage::new(config).unwrap();
    let shutdown = Shutdown::new();
    Running(shutdown.clone(), tokio::spawn(stage.run(shutdown)))
}

impl Running {
    async fn stop(self) {
        self.0.cancel();
        self.1.await.unwrap().unwrap();
    }
}

fn outbound(channel: Channel, conversation: &str, customer: &str, content: Content) -> Envelope {
    Envelope {
        message_id: uuid::Uuid::now_v7().to_string(),
        tenant_id: "acme".into(),
        channel: channel as i32,
        direction: Direction::Outbound as i32,
        conversation_id: conversation.into(),
        customer: Some(Party {
            id: customer.into(),
            display_name: String::new(),
        }),
        content: Some(content),
        ..Default::default()
    }
}

fn text(body: &str) -> Content {
    Content::Text(Text { body: body.into() })
}

/// Publishes `envelopes` to their channels' outbound topics.
async fn publish(config: &WorkersConfig, envelopes: &[Envelope]) {
    for envelope in envelopes {
        testkit::publish_envelopes(
            &config.kafka,
            &config.outbound_topic(envelope.channel()),
            std::slice::from_ref(envelope),
        )
        .await;
    }
}

/// Reads `topic` until `n` records are there (or 30 s pass).
async fn read(topic: &str, n: usize) -> Vec<OwnedMessage> {
    testkit::read_topic_async(
        &testkit::real_kafka(),
        topic,
        Duration::from_secs(30),
        move |r| r.len() >= n,
    )
    .await
}

fn analytics(records: &[OwnedMessage]) -> Vec<AnalyticsRecord> {
    records
        .iter()
        .map(|r| AnalyticsRecord::decode(r.payload().unwrap()).unwrap())
        .collect()
}

/// Waits until `check` holds, for at most 30 s.
async fn eventually(what: &str, check: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the sender group committed every record of the outbound topics.
async fn all_committed(config: &WorkersConfig, channels: &[Channel]) {
    let group = format!("{}.senders", config.group_id);
    for channel in channels {
        let topic = config.outbound_topic(*channel);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (g, t) = (group.clone(), topic.clone());
            let (committed, size) = tokio::task::spawn_blocking(move || {
                testkit::committed_vs_size(&testkit::real_kafka(), &g, &t)
            })
            .await
            .unwrap();
            if committed == size {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{topic}: committed {committed} of {size}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real local Kafka: run deploy/test.sh"]
async fn replies_reach_each_provider_as_documented_and_their_ids_reach_analytics() {
    let providers = Providers::start().await;
    let config = isolated(&providers);
    create_topics(&config).await;
    let mut reply = outbound(
        Channel::Whatsapp,
        "wa-1",
        "16505551234",
        text("Your order shipped"),
    );
    reply.reply_to = "wamid.INBOUND-1".into();
    let mut agent = outbound(
        Channel::Messenger,
        "m-1",
        "PSID-1",
        text("Sorry for the wait"),
    );
    agent.tag = MessageTag::HumanAgent as i32;
    let mms = outbound(
        Channel::Sms,
        "s-1",
        "+15551230000",
        Content::Attachments(Attachments {
            items: vec![Media {
                kind: Kind::Image as i32,
                url: "https://cdn.example/a.jpg".into(),
                ..Default::default()
            }],
            caption: "Your receipt".into(),
        }),
    );
    let chat = outbound(Channel::Webchat, "w-1", "session-1", text("Hello there"));
    let sent = [reply.clone(), agent.clone(), mms.clone(), chat.clone()];
    publish(&config, &sent).await;
    let stage = start(&config);
    let records = analytics(&read(&config.analytics_topic, 4).await);
    stage.stop().await;

    // WhatsApp: the number's endpoint, the bearer token, the quoted reply.
    let [wa] = providers.whatsapp.received().try_into().unwrap();
    assert_eq!(wa.path, format!("/v21.0/{PHONE_NUMBER_ID}/messages"));
    assert_eq!(
        wa.authorization.as_deref(),
        Some(&*format!("Bearer {WA_TOKEN}"))
    );
    let body = wa.json.as_ref().unwrap();
    assert_eq!(body["to"], "16505551234");
    assert_eq!(body["context"]["message_id"], "wamid.INBOUND-1");
    assert_eq!(body["text"]["body"], "Your order shipped");
    // Messenger: the page token and its proof in the query, the HUMAN_AGENT tag.
    let [m] = providers.messenger.received().try_into().unwrap();
    assert!(m.accepted(), "status {}", m.status);
    assert!(
        m.query
            .iter()
            .any(|(k, v)| k == "access_token" && v == PAGE_TOKEN)
    );
    let body = m.json.as_ref().unwrap();
    assert_eq!(
        (body["messaging_type"].as_str(), body["tag"].as_str()),
        (Some("MESSAGE_TAG"), Some("HUMAN_AGENT"))
    );
    // Twilio: form, Basic auth, MediaUrl.
    let [s] = providers.twilio.received().try_into().unwrap();
    assert!(s.accepted(), "status {}", s.status);
    assert_eq!(s.field("MediaUrl"), Some("https://cdn.example/a.jpg"));
    assert_eq!(s.field("From"), Some("+15559870000"));
    assert!(s.message_id.as_deref().unwrap().starts_with("MM"));
    // Web chat: the envelope itself, with its id as the idempotency key.
    let [w] = providers.webchat.received().try_into().unwrap();
    assert_eq!(w.path, "/deliver/acme");
    assert_eq!(w.idempotency_key.as_deref(), Some(chat.message_id.as_str()));
    assert_eq!(w.json.as_ref().unwrap()["text"]["body"], "Hello there");

    // Each send's analytics record carries the provider's id.
    let answered = [&wa, &m, &s, &w].map(|r| r.message_id.clone().unwrap());
    for (envelope, id) in sent.iter().zip(answered) {
        let record = records
            .iter()
            .find(|r| r.envelope.as_ref().unwrap().message_id == envelope.message_id)
            .unwrap_or_else(|| panic!("no analytics record for {}", envelope.channel().slug()));
        let send = record.decision.as_ref().unwrap().send.as_ref().unwrap();
        assert_eq!(send.status(), Status::Accepted);
        assert_eq!(send.provider_message_id, id);
        assert_eq!(send.attempts, 1);
        assert_eq!(record.envelope.as_ref().unwrap().channel_message_id, id);
    }
    assert!(records.iter().any(|r| {
        r.decision
            .as_ref()
            .unwrap()
            .send
            .as_ref()
            .unwrap()
            .sender_id
            == PHONE_NUMBER_ID
    }));
    all_committed(
        &config,
        &[
            Channel::Whatsapp,
            Channel::Messenger,
            Channel::Sms,
            Channel::Webchat,
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real local Kafka: run deploy/test.sh"]
async fn rate_limits_and_server_errors_are_retried_honouring_retry_after() {
    let providers = Providers::start().await;
    let config = isolated(&providers);
    create_topics(&config).await;
    providers.whatsapp.fail_next(
        1,
        Fault::RateLimited {
            retry_after_secs: 1,
        },
    );
    providers.whatsapp.fail_next(2, Fault::ServerError);
    providers.twilio.fail_next(
        1,
        Fault::RateLimited {
            retry_after_secs: 1,
        },
    );
    let wa = outbound(Channel::Whatsapp, "wa-1", "16505551234", text("retried"));
    let sms = outbound(Channel::Sms, "s-1", "+15551230000", text("retried too"));
    publish(&config, &[wa.clone(), sms.clone()]).await;
    let stage = start(&config);
    let records = analytics(&read(&config.analytics_topic, 2).await);
    stage.stop().await;

    let calls = providers.whatsapp.received();
    assert_eq!(
        calls.iter().map(|c| c.status).collect::<Vec<_>>(),
        [429, 503, 503, 200]
    );
    let waited = calls[1].at - calls[0].at;
    assert!(
        waited >= Duration::from_millis(950),
        "Retry-After: 1 was not honoured: {waited:?}"
    );
    let twilio = providers.twilio.received();
    assert_eq!(
        twilio.iter().map(|c| c.status).collect::<Vec<_>>(),
        [429, 201]
    );
    assert!(twilio[1].at - twilio[0].at >= Duration::from_millis(950));
    let attempts = |id: &str| {
        records
            .iter()
            .find(|r| r.envelope.as_ref().unwrap().message_id == id)
            .and_then(|r| r.decision.as_ref()?.send.as_ref())
            .map(|s| s.attempts)
    };
    assert_eq!(attempts(&wa.message_id), Some(4));
    assert_eq!(attempts(&sms.message_id), Some(2));
    all_committed(&config, &[Channel::Whatsapp, Channel::Sms]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real local Kafka: run deploy/test.sh"]
async fn refusals_go_to_rejections_with_the_providers_code_and_the_offset_moves_on() {
    let providers = Providers::start().await;
    let config = isolated(&providers);
    create_topics(&config).await;
    providers
        .whatsapp
        .refuse("16505550000", Refusal::OutsideWindow);
    providers.twilio.refuse("+15550000000", Refusal::OptedOut);
    let late = outbound(
        Channel::Whatsapp,
        "wa-late",
        "16505550000",
        text("too late"),
    );
    let next = outbound(
        Channel::Whatsapp,
        "wa-late",
        "16505559999",
        text("next one"),
    );
    let stopped = outbound(Channel::Sms, "s-stop", "+15550000000", text("after STOP"));
    publish(&config, &[late.clone(), next.clone(), stopped.clone()]).await;
    let stage = start(&config);
    let rejections = read(&config.rejections_topic, 2).await;
    let records = analytics(&read(&config.analytics_topic, 3).await);
    stage.stop().await;

    assert_eq!(rejections.len(), 2);
    let header = |m: &OwnedMessage, name: &str| {
        m.headers()
            .unwrap()
            .iter()
            .find(|h| h.key == name)
            .and_then(|h| h.value)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    };
    let mut codes = Vec::new();
    for record in &rejections {
        let rejection = Rejection::decode(record.payload().unwrap()).unwrap();
        assert_eq!(rejection.reason(), RejectionReason::ProviderRefused);
        let code = header(record, headers::CODE).unwrap();
        assert!(rejection.detail.contains(&code), "{}", rejection.detail);
        assert!(header(record, headers::REASON).is_some_and(|r| !r.is_empty()));
        codes.push((
            header(record, headers::PROVIDER).unwrap(),
            code,
            rejection.envelope.unwrap().message_id,
        ));
    }
    codes.sort();
    assert_eq!(
        codes,
        [
            (
                "twilio".to_owned(),
                "21610".to_owned(),
                stopped.message_id.clone()
            ),
            (
                "whatsapp".to_owned(),
                "131047".to_owned(),
                late.message_id.clone()
            ),
        ]
    );
    let refused = records
        .iter()
        .filter_map(|r| r.decision.as_ref()?.send.clone())
        .filter(|s| s.status() == Status::Refused)
        .count();
    assert_eq!(refused, 2, "refusals are on analytics too");
    // The conversation went on after the refusal.
    assert!(providers.whatsapp.received()[1].accepted());
    all_committed(&config, &[Channel::Whatsapp, Channel::Sms]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real local Kafka: run deploy/test.sh"]
async fn each_conversation_keeps_its_order_while_conversations_go_concurrently() {
    const CONVERSATIONS: usize = 4;
    const PER_CONVERSATION: usize = 8;
    let providers = Providers::start().await;
    let config = isolated(&providers);
    create_topics(&config).await;
    let delay = Duration::from_millis(40);
    providers.webchat.set_delay(delay);
    // Interleaved, as conversations arrive in real life.
    let mut envelopes = Vec::new();
    for n in 0..PER_CONVERSATION {
        for c in 0..CONVERSATIONS {
            envelopes.push(outbound(
                Channel::Webchat,
                &format!("c{c}"),
                &format!("session-{c}"),
                text(&format!("c{c} #{n}")),
            ));
        }
    }
    testkit::publish_envelopes(
        &config.kafka,
        &config.outbound_topic(Channel::Webchat),
        &envelopes,
    )
    .await;
    let stage = start(&config);
    eventually("every message", || {
        providers.webchat.accepted().len() == envelopes.len()
    })
    .await;
    stage.stop().await;

    let received = providers.webchat.received();
    for c in 0..CONVERSATIONS {
        let texts: Vec<String> = received
            .iter()
            .filter(|r| r.recipient().as_deref() == Some(&*format!("session-{c}")))
            .map(|r| r.text().unwrap())
            .collect();
        let expected: Vec<String> = (0..PER_CONVERSATION)
            .map(|n| format!("c{c} #{n}"))
            .collect();
        assert_eq!(texts, expected, "conversation c{c} out of order");
    }
    // Conversations overlapped: some call arrived while another's was in flight.
    let overlapping = received
        .windows(2)
        .filter(|w| w[1].at.saturating_duration_since(w[0].at) < delay / 2)
        .count();
    assert!(
        overlapping > 0,
        "conversations were sent one after the other"
    );
    all_committed(&config, &[Channel::Webchat]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real local Kafka: run deploy/test.sh"]
async fn a_restart_does_not_send_again_what_was_committed_and_copies_are_skipped() {
    let providers = Providers::start().await;
    let config = isolated(&providers);
    create_topics(&config).await;
    let first: Vec<Envelope> = (0..5)
        .map(|n| {
            outbound(
                Channel::Webchat,
                &format!("c{}", n % 2),
                "session",
                text(&format!("first {n}")),
            )
        })
        .collect();
    // A copy of an outbound record (written twice upstream) is sent once.
    let mut with_copy = first.clone();
    with_copy.insert(3, first[2].clone());
    publish(&config, &with_copy).await;
    let stage = start(&config);
    eventually("the first batch", || {
        providers.webchat.accepted().len() == 5
    })
    .await;
    all_committed(&config, &[Channel::Webchat]).await;
    stage.stop().await;

    let second: Vec<Envelope> = (0..3)
        .map(|n| {
            outbound(
                Channel::Webchat,
                "c0",
                "session",
                text(&format!("second {n}")),
            )
        })
        .collect();
    publish(&config, &second).await;
    let stage = start(&config);
    eventually("the second batch", || {
        providers.webchat.accepted().len() == 8
    })
    .await;
    // Give a wrongly resending stage the time to show itself.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stage.stop().await;

    let keys: Vec<String> = providers
        .webchat
        .received()
        .iter()
        .map(|r| r.idempotency_key.clone().unwrap())
        .collect();
    let expected: Vec<String> = first
        .iter()
        .chain(&second)
        .map(|e| e.message_id.clone())
        .collect();
    let mut sorted = keys.clone();
    sorted.sort();
    let mut expected_sorted = expected.clone();
    expected_sorted.sort();
    assert_eq!(sorted, expected_sorted, "each message sent exactly once");
    all_committed(&config, &[Channel::Webchat]).await;
}
