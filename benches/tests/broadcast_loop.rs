//! A broadcast through the whole pipeline on the real local Kafka
//! (`deploy/test.sh`): customers subscribe by keyword through signed
//! webhooks, `Broadcasts.Start` over gRPC sends the template to the topic's
//! subscribers through the providers' APIs (local stand-ins), an SMS STOP
//! keeps one out, the provider's status webhooks come back, and
//! `Broadcasts.Get` reports targeted, sent, delivered and read.

use std::time::{Duration, Instant};

use serde_json::json;
use switchboard_benches::embedded::demo_secrets;
use switchboard_proto::v1::{
    BroadcastReport, BroadcastSpec, BroadcastStatus, GetBroadcastRequest, StartBroadcastRequest,
    Template, broadcasts_client::BroadcastsClient,
};
use switchboard_testkit::{self as testkit, providers::StandIn};
use switchboard_workers::state::subscriptions::KeywordConfig;

const WA_ID: &str = "16505551234";
const PHONES: [&str; 2] = ["+15551230001", "+15551230002"];

mod demo_loop;

use demo_loop::{DemoLoop, unix_now};

/// The demo pipeline with broadcasts on, and `JOIN NEWS` subscribing to
/// topic `news` on every channel.
async fn start() -> DemoLoop {
    DemoLoop::start("test.broadcast-loop", |config| {
        config.broadcasts.enabled = true;
        config.broadcasts.keywords = vec![KeywordConfig {
            tenant: demo_secrets::TENANT.into(),
            channel: "*".into(),
            keyword: "JOIN NEWS".into(),
            topic: "news".into(),
            subscribe: true,
        }];
    })
    .await
}

/// A signed WhatsApp text from the customer.
async fn whatsapp_text(demo: &DemoLoop, id: &str, body: &str) {
    demo.whatsapp(json!({
        "messaging_product": "whatsapp",
        "metadata": { "display_phone_number": "15550000000", "phone_number_id": "demo-phone-number-id" },
        "contacts": [{ "wa_id": WA_ID, "profile": { "name": "Kim" } }],
        "messages": [{ "from": WA_ID, "id": id, "timestamp": unix_now(),
                       "type": "text", "text": { "body": body } }]
    }))
    .await;
}

/// A signed WhatsApp status webhook for a message sent to the customer.
async fn whatsapp_status(demo: &DemoLoop, wamid: &str, status: &str) {
    demo.whatsapp(json!({
        "messaging_product": "whatsapp",
        "metadata": { "display_phone_number": "15550000000", "phone_number_id": "demo-phone-number-id" },
        "statuses": [{ "id": wamid, "status": status, "timestamp": unix_now(),
                       "recipient_id": WA_ID }]
    }))
    .await;
}

/// Calls to `stand_in` that sent a template, once there are `n` (90 s at most).
async fn templates(stand_in: &StandIn, n: usize) -> Vec<testkit::providers::Received> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let sent: Vec<_> = stand_in
            .received()
            .into_iter()
            .filter(|r| {
                r.field("ContentSid").is_some()
                    || r.json.as_ref().is_some_and(|j| j["type"] == "template")
            })
            .collect();
        if sent.len() >= n || Instant::now() > deadline {
            return sent;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real local Kafka: run deploy/test.sh"]
async fn a_broadcast_reaches_the_subscribers_and_reports_deliveries_and_reads() {
    let demo = start().await;
    whatsapp_text(&demo, "wamid.join-1", "join news").await;
    demo.sms(PHONES[0], "SM00000000000000000000000000000011", "JOIN NEWS")
        .await;
    demo.sms(PHONES[1], "SM00000000000000000000000000000012", "JOIN NEWS")
        .await;
    demo.sms(PHONES[1], "SM00000000000000000000000000000013", "STOP")
        .await;
    // The echo bot answered each text: the subscriptions are in the states.
    let (whatsapp, twilio) = (&demo.providers[0], &demo.providers[3]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while whatsapp.received().is_empty() || twilio.received().len() < 2 {
        assert!(Instant::now() < deadline, "the bot's replies");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // States are written behind (`state_flush_interval`).
    tokio::time::sleep(Duration::from_secs(1)).await;

    let mut client = BroadcastsClient::connect(format!("http://{}", demo.pipeline.grpc_addr))
        .await
        .unwrap();
    let invalid = client
        .start(StartBroadcastRequest {
            broadcast: Some(BroadcastSpec {
                tenant_id: demo_secrets::TENANT.into(),
                topic: "news".into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(invalid.code(), tonic::Code::InvalidArgument, "no template");
    let id = client
        .start(StartBroadcastRequest {
            broadcast: Some(BroadcastSpec {
                tenant_id: demo_secrets::TENANT.into(),
                template: Some(Template {
                    name: "spring_sale".into(),
                    language: "en_US".into(),
                    parameters: vec!["20%".into()],
                }),
                topic: "news".into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .broadcast_id;
    assert!(!id.is_empty(), "the node assigns an id");

    // The WhatsApp subscriber and the SMS one who did not STOP.
    let sent = templates(whatsapp, 1).await;
    assert_eq!(sent.len(), 1);
    let body = sent[0].json.as_ref().unwrap();
    assert_eq!(body["to"], WA_ID);
    assert_eq!(body["template"]["name"], "spring_sale");
    let wamid = sent[0].message_id.clone().expect("the stand-in's wamid");
    let sms = templates(twilio, 1).await;
    assert_eq!(sms.len(), 1, "the customer who sent STOP gets nothing");
    assert_eq!(sms[0].field("To"), Some(PHONES[0]));
    assert_eq!(sms[0].field("ContentSid"), Some("spring_sale"));

    whatsapp_status(&demo, &wamid, "delivered").await;
    whatsapp_status(&demo, &wamid, "read").await;
    let request = GetBroadcastRequest {
        tenant_id: demo_secrets::TENANT.into(),
        broadcast_id: id.clone(),
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let report: BroadcastReport = loop {
        let answer = client.get(request.clone()).await;
        if Instant::now() > deadline {
            panic!("the broadcast's report: {answer:?}");
        }
        if let Ok(report) = answer {
            let report = report.into_inner();
            let counts = report.counts.clone().unwrap_or_default();
            if report.progress.as_ref().unwrap().status() == BroadcastStatus::Completed
                && counts.sent == 2
                && counts.read == 1
            {
                break report;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let progress = report.progress.unwrap();
    assert_eq!((progress.targeted, progress.published), (2, 2));
    let counts = report.counts.unwrap();
    assert_eq!(
        (counts.sent, counts.failed, counts.delivered, counts.read),
        (2, 0, 1, 1)
    );
    assert_eq!(report.refused, 0);
    let other_tenant = client
        .get(GetBroadcastRequest {
            tenant_id: "acme".into(),
            broadcast_id: id,
        })
        .await
        .unwrap_err();
    assert_eq!(other_tenant.code(), tonic::Code::NotFound);
    demo.stop().await;
}
