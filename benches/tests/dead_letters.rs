//! Retries and the dead-letter topic on the real local Kafka: a poison
//! record and a message whose bot keeps failing both land in the DLQ with
//! headers saying why and where they came from, and every conversation,
//! including the failing one, keeps flowing.
//!
//! Run with `deploy/test.sh` (it starts Kafka and sets `SWITCHBOARD_TEST_KAFKA`).

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use prost::Message as _;
use rdkafka::{
    Message as _,
    message::Headers,
    producer::{FutureProducer, FutureRecord},
};
use switchboard_benches::pipeline::{Pipeline, PipelineConfig};
use switchboard_proto::v1::{
    BotRequest, BotResponse, Channel, Envelope, PublishRequest, bot_server::Bot, envelope::Content,
};
use switchboard_testkit::{self as testkit, RecordingBot};
use switchboard_workers::{
    destinations::topics::headers,
    replay::{self, ReplayRequest},
};

/// Fails every message containing "[fail]" as unavailable, until cured;
/// records the rest.
#[derive(Clone, Default)]
struct SelectiveBot(RecordingBot, Arc<AtomicBool>);

#[tonic::async_trait]
impl Bot for SelectiveBot {
    async fn handle(
        &self,
        request: tonic::Request<BotRequest>,
    ) -> Result<tonic::Response<BotResponse>, tonic::Status> {
        let fails = matches!(
            request.get_ref().envelope.as_ref().and_then(|e| e.content.as_ref()),
            Some(Content::Text(t)) if t.body.contains("[fail]")
        );
        if fails && !self.1.load(Ordering::SeqCst) {
            return Err(tonic::Status::unavailable(
                "this bot is down for [fail] messages",
            ));
        }
        self.0.handle(request).await
    }
}

fn text(conversation: &str, body: &str) -> PublishRequest {
    testkit::publish_request(testkit::inbound_text(Channel::Webchat, conversation, body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real local Kafka: run deploy/test.sh"]
async fn poison_and_permanent_failures_go_to_the_dlq_and_conversations_continue() {
    let bootstrap = testkit::real_kafka();
    let mut config =
        PipelineConfig::isolated(testkit::kafka_config(&bootstrap, 4), "test.dlq").from_start();
    config.max_attempts = 3;
    config.retry_backoff = Duration::from_millis(10);
    let dir = std::env::temp_dir().join(testkit::random_topic("dlq"));
    std::fs::create_dir_all(&dir).unwrap();
    let rules = dir.join("rules.toml");
    std::fs::write(&rules, "default = [{ bot = \"selective\" }]\n").unwrap();
    config.rules_file = Some(rules);
    config.bot_name = "selective".into();
    config.create_topics().await.unwrap();

    // A poison record, written around the ingestion node.
    let producer: FutureProducer = config.kafka.client_config(&[]).create().unwrap();
    let poison = producer
        .send(
            FutureRecord::to(&config.messages_topic)
                .key("acme/webchat/poison")
                .payload(&b"\xff\xfe not protobuf"[..]),
            Duration::from_secs(10),
        )
        .await
        .unwrap();

    let bot = SelectiveBot::default();
    let pipeline = Pipeline::start(&config, bot.clone()).await.unwrap();
    let mut client = pipeline.client().await.unwrap();
    let failing = client
        .publish(text("conv-a", "[fail] first"))
        .await
        .unwrap()
        .into_inner();
    client.publish(text("conv-a", "second")).await.unwrap();
    for c in 0..10 {
        client
            .publish(text(&format!("conv-{c}"), "hello"))
            .await
            .unwrap();
    }

    // Everything but the failing message reaches the bot, conv-a's "second" included.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while bot.0.count() < 11 {
        assert!(
            std::time::Instant::now() < deadline,
            "only {} routed",
            bot.0.count()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let conv_a: Vec<String> = bot
        .0
        .seen()
        .iter()
        .filter(|e| e.conversation_id == "conv-a")
        .filter_map(|e| match &e.content {
            Some(Content::Text(t)) => Some(t.body.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(
        conv_a,
        ["second"],
        "the conversation continued after its failing message"
    );

    // Both dead letters, with headers.
    let (bootstrap2, dlq) = (bootstrap.clone(), config.dlq_topic.clone());
    let letters = tokio::task::spawn_blocking(move || {
        testkit::read_topic(&bootstrap2, &dlq, Duration::from_secs(60), |r| r.len() >= 2)
    })
    .await
    .unwrap();
    assert_eq!(letters.len(), 2);
    let header_map = |m: &rdkafka::message::OwnedMessage| -> HashMap<String, String> {
        let h = m.headers().expect("headers");
        (0..h.count())
            .map(|i| {
                let header = h.get(i);
                (
                    header.key.to_owned(),
                    String::from_utf8_lossy(header.value.unwrap_or_default()).into_owned(),
                )
            })
            .collect()
    };
    let by_destination: HashMap<
        String,
        (HashMap<String, String>, &rdkafka::message::OwnedMessage),
    > = letters
        .iter()
        .map(|m| {
            (
                header_map(m)[headers::DESTINATION].clone(),
                (header_map(m), m),
            )
        })
        .collect();

    let (h, record) = &by_destination["none"];
    assert!(h[headers::ERROR].starts_with("undecodable"), "{h:?}");
    assert_eq!(h[headers::ATTEMPTS], "0");
    assert_eq!(h[headers::ORIGINAL_TOPIC], config.messages_topic);
    assert_eq!(h[headers::ORIGINAL_PARTITION], poison.partition.to_string());
    assert_eq!(h[headers::ORIGINAL_OFFSET], poison.offset.to_string());
    assert_eq!(
        record.payload().unwrap(),
        b"\xff\xfe not protobuf",
        "the original bytes are kept"
    );

    let (h, record) = &by_destination["bot:selective"];
    assert_eq!(h[headers::ATTEMPTS], "3", "{h:?}");
    assert!(
        h[headers::ERROR].contains("down for [fail] messages"),
        "{h:?}"
    );
    assert_eq!(
        h[headers::ORIGINAL_PARTITION],
        failing.partition.to_string()
    );
    assert_eq!(h[headers::ORIGINAL_OFFSET], failing.offset.to_string());
    let envelope = Envelope::decode(record.payload().unwrap()).unwrap();
    assert_eq!(envelope.message_id, failing.message_id);

    // The bot is fixed: replaying the DLQ routes the failed message again
    // (the poison record goes back to the DLQ).
    bot.1.store(true, Ordering::SeqCst);
    let report = replay::replay(
        &config.workers_config(pipeline.bot_addr),
        &ReplayRequest {
            topic: config.dlq_topic.clone(),
            since: None,
            until: None,
            limit: None,
            dry_run: false,
        },
    )
    .await
    .unwrap();
    assert_eq!((report.read, report.replayed), (2, 2));
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while bot.0.count() < 12 {
        assert!(
            std::time::Instant::now() < deadline,
            "the replay was not routed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let replayed = bot.0.seen().pop().unwrap();
    assert_eq!(replayed.message_id, failing.message_id);
    let (bootstrap3, dlq) = (bootstrap.clone(), config.dlq_topic.clone());
    let letters = tokio::task::spawn_blocking(move || {
        testkit::read_topic(&bootstrap3, &dlq, Duration::from_secs(60), |r| r.len() >= 3)
    })
    .await
    .unwrap();
    assert_eq!(letters.len(), 3, "only the poison record came back");

    pipeline.stop().await.unwrap();
    let _ = std::fs::remove_dir_all(dir);
}
