//! The whole conversation loop on the real local Kafka (`deploy/test.sh`),
//! as the embedded demo runs it: a provider's signed webhook POSTed to the
//! ingestion node's HTTP edge, the bot's reply routed and sent through the
//! provider's API (a local stand-in that checks requests as the provider
//! documents them), and the provider's status webhook joined to that send in
//! analytics. The tenant is the demo's (`deploy/config/tenants.demo.toml`),
//! with its rules (`deploy/rules/demo.toml`: text goes to the echo bot).

use std::time::Duration;

use rdkafka::Message as _;
use serde_json::json;
use switchboard_proto::v1::{
    AnalyticsRecord, Rejection, RejectionReason, envelope::Content,
    send_outcome::Status as SendStatus, status_receipt::State as Receipt,
};
use switchboard_testkit::{self as testkit, providers::StandIn};

mod demo_loop;

use demo_loop::{DemoLoop, unix_now};

/// Analytics records of `demo`, read from the start until `done` says enough.
async fn analytics(
    demo: &DemoLoop,
    done: impl Fn(&[AnalyticsRecord]) -> bool + Send + 'static,
) -> Vec<AnalyticsRecord> {
    let records = read(&demo.config.analytics_topic, move |records| {
        done(&decode_all::<AnalyticsRecord>(records))
    })
    .await;
    decode_all(&records)
}

const CUSTOMER_WA_ID: &str = "16505551234";
const CUSTOMER_PHONE: &str = "+15551230000";

async fn read(
    topic: &str,
    done: impl Fn(&[rdkafka::message::OwnedMessage]) -> bool + Send + 'static,
) -> Vec<rdkafka::message::OwnedMessage> {
    testkit::read_topic_async(&testkit::real_kafka(), topic, Duration::from_secs(90), done).await
}

fn decode_all<M: prost::Message + Default>(records: &[rdkafka::message::OwnedMessage]) -> Vec<M> {
    records
        .iter()
        .filter_map(|m| M::decode(m.payload()?).ok())
        .collect()
}

fn send_of(record: &AnalyticsRecord) -> Option<&switchboard_proto::v1::SendOutcome> {
    record.decision.as_ref()?.send.as_ref()
}

/// Waits until `stand_in` has received `n` calls.
async fn received(stand_in: &StandIn, n: usize) -> Vec<testkit::providers::Received> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let received = stand_in.received();
        if received.len() >= n || tokio::time::Instant::now() > deadline {
            return received;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A signed WhatsApp message in; the echo bot's reply out through the
/// WhatsApp Cloud API with the tenant's token, phone number id and the
/// `context` of the message it answers; the provider's `delivered` status
/// joined to that send in analytics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real local Kafka: run deploy/test.sh"]
async fn a_whatsapp_message_is_answered_through_the_cloud_api_and_its_delivery_joined() {
    let demo = DemoLoop::start("test.loop.whatsapp", |_| {}).await;
    let inbound_id = "wamid.HBgLMTY1MDU1NTEyMzQVAgASGBQzQUZFQTEyMw==";
    demo.whatsapp(json!({
        "messaging_product": "whatsapp",
        "metadata": { "display_phone_number": "15550000000", "phone_number_id": "demo-phone-number-id" },
        "contacts": [{ "wa_id": CUSTOMER_WA_ID, "profile": { "name": "Kim" } }],
        "messages": [{ "from": CUSTOMER_WA_ID, "id": inbound_id, "timestamp": unix_now(),
                       "type": "text", "text": { "body": "hello" } }]
    }))
    .await;

    // The reply reached the Cloud API as documented.
    let whatsapp = &demo.providers[0];
    let calls = received(whatsapp, 1).await;
    assert_eq!(calls.len(), 1, "one reply sent");
    let call = &calls[0];
    assert!(call.accepted(), "{call:?}");
    assert!(
        call.path.ends_with("/demo-phone-number-id/messages"),
        "{}",
        call.path
    );
    assert_eq!(call.authorization.as_deref(), Some("Bearer demo-token"));
    let body = call.json.as_ref().unwrap();
    assert_eq!(body["messaging_product"], "whatsapp");
    assert_eq!(body["to"], CUSTOMER_WA_ID);
    assert_eq!(body["context"]["message_id"], inbound_id);
    assert_eq!(call.text().as_deref(), Some("echo: hello"));
    let wamid = call.message_id.clone().expect("the stand-in's wamid");

    // The send is on analytics with the provider's id; then the provider's
    // delivery status comes back as a webhook and joins it there.
    demo.whatsapp(json!({
        "messaging_product": "whatsapp",
        "metadata": { "display_phone_number": "15550000000", "phone_number_id": "demo-phone-number-id" },
        "statuses": [{ "id": wamid, "status": "delivered", "timestamp": unix_now(),
                       "recipient_id": CUSTOMER_WA_ID,
                       "conversation": { "id": "c-1", "origin": { "type": "service" } },
                       "pricing": { "billable": true, "pricing_model": "CBP", "category": "service" } }]
    }))
    .await;
    let id = wamid.clone();
    // The reply's own record (the worker's) and the send's (the sender
    // stage's) come from different producers: wait for all three.
    let records = analytics(&demo, move |records| {
        let Some(send) = records
            .iter()
            .find(|r| send_of(r).is_some_and(|s| s.provider_message_id == id))
        else {
            return false;
        };
        let reply_id = &send.envelope.as_ref().unwrap().message_id;
        records.iter().any(|r| delivered(r) == Some(id.as_str()))
            && records.iter().any(|r| {
                r.decision
                    .as_ref()
                    .is_some_and(|d| d.rule_id == "bot-reply" && &d.message_id == reply_id)
            })
    })
    .await;
    let send = records
        .iter()
        .find(|r| send_of(r).is_some_and(|s| s.provider_message_id == wamid))
        .expect("the send's analytics record");
    let outcome = send_of(send).unwrap();
    assert_eq!(
        (
            outcome.status(),
            outcome.provider.as_str(),
            outcome.sender_id.as_str()
        ),
        (SendStatus::Accepted, "whatsapp", "demo-phone-number-id")
    );
    let status = records
        .iter()
        .find(|r| delivered(r) == Some(wamid.as_str()))
        .expect("the delivery status on analytics");
    // Joined: the same conversation, and the status names the send's id.
    let conversation = |r: &AnalyticsRecord| r.envelope.as_ref().unwrap().conversation_key();
    assert_eq!(conversation(status), conversation(send));
    // The reply itself is on analytics too, decided as a bot reply, with
    // the id the send carries.
    let reply_id = &send.envelope.as_ref().unwrap().message_id;
    assert!(
        records.iter().any(|r| {
            let d = r.decision.as_ref().unwrap();
            d.rule_id == "bot-reply" && &d.message_id == reply_id
        }),
        "the reply's own analytics record"
    );
    demo.stop().await;
}

/// The receipt a status record carries, if it says delivered: the id of
/// the message it is about.
fn delivered(record: &AnalyticsRecord) -> Option<&str> {
    match &record.envelope.as_ref()?.content {
        Some(Content::Status(s)) if s.state() == Receipt::Delivered => {
            Some(s.target_message_id.as_str())
        }
        _ => None,
    }
}

/// A signed SMS in; the reply out through Twilio's Messages API with Basic
/// auth, the tenant's number and the customer's; then STOP: the bot's later
/// replies are refused for consent (`OPTED_OUT`) and Twilio gets no more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real local Kafka: run deploy/test.sh"]
async fn an_sms_is_answered_through_twilio_until_the_customer_sends_stop() {
    let demo = DemoLoop::start("test.loop.sms", |_| {}).await;
    let twilio = &demo.providers[3];
    demo.sms(CUSTOMER_PHONE, "SM00000000000000000000000000000001", "hi")
        .await;
    let calls = received(twilio, 1).await;
    assert_eq!(calls.len(), 1, "one reply sent");
    let call = &calls[0];
    assert!(call.accepted(), "{call:?}");
    assert_eq!(call.path, "/2010-04-01/Accounts/ACdemo/Messages.json");
    let basic = base64_basic("ACdemo", "demo-token");
    assert_eq!(call.authorization.as_deref(), Some(basic.as_str()));
    assert_eq!(call.field("To"), Some(CUSTOMER_PHONE));
    assert_eq!(call.field("From"), Some("+15550000000"));
    assert_eq!(call.text().as_deref(), Some("echo: hi"));

    demo.sms(CUSTOMER_PHONE, "SM00000000000000000000000000000002", "STOP")
        .await;
    let after_stop = "SM00000000000000000000000000000003";
    demo.sms(CUSTOMER_PHONE, after_stop, "are you there?").await;
    // The bot still answers, but consent refuses the reply.
    let rejections = read(&demo.config.rejections_topic, move |records| {
        decode_all::<Rejection>(records).iter().any(|r| {
            r.envelope
                .as_ref()
                .is_some_and(|e| e.reply_to == after_stop)
        })
    })
    .await;
    let refused: Vec<Rejection> = decode_all(&rejections);
    let refusal = refused
        .iter()
        .find(|r| {
            r.envelope
                .as_ref()
                .is_some_and(|e| e.reply_to == after_stop)
        })
        .expect("the reply after STOP is refused");
    assert_eq!(refusal.reason(), RejectionReason::OptedOut);
    assert!(
        refused
            .iter()
            .all(|r| r.reason() == RejectionReason::OptedOut),
        "{refused:?}"
    );
    // Analytics has the refused reply, decided by consent.
    let records = analytics(&demo, move |records| {
        records.iter().any(|r| {
            r.envelope
                .as_ref()
                .is_some_and(|e| e.reply_to == after_stop)
                && r.decision.as_ref().is_some_and(|d| d.rule_id == "consent")
        })
    })
    .await;
    assert!(records.iter().any(|r| matches!(
        r.envelope.as_ref().and_then(|e| e.content.as_ref()),
        Some(Content::Consent(_))
    )));
    // Nothing more reached Twilio, even once the sender had time to send.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(twilio.received().len(), 1, "{:?}", twilio.received());
    demo.stop().await;
}

fn base64_basic(user: &str, password: &str) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}
