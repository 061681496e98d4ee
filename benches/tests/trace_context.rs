//! W3C trace context crosses Kafka: a `traceparent` sent with a publish is
//! continued by the ingestion node in the Kafka headers, by the worker, and
//! sent on to the bot, so one trace spans edge → Kafka → worker → bot.
//!
//! Run with `deploy/test.sh` (it starts Kafka and sets `SWITCHBOARD_TEST_KAFKA`).

use std::time::Duration;

use rdkafka::{Message as _, message::Headers};
use switchboard_benches::pipeline::{Pipeline, PipelineConfig};
use switchboard_proto::v1::{Channel, PublishRequest};
use switchboard_runtime::trace::{TRACEPARENT, TraceParent};
use switchboard_testkit::{self as testkit, RecordingBot};

fn header(record: &rdkafka::message::OwnedMessage) -> TraceParent {
    let value = record
        .headers()
        .and_then(|h| h.iter().find(|h| h.key == TRACEPARENT))
        .and_then(|h| h.value)
        .expect("a traceparent header");
    TraceParent::parse(std::str::from_utf8(value).unwrap()).expect("a valid traceparent")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real local Kafka: run deploy/test.sh"]
async fn traceparent_crosses_kafka_to_the_bot() {
    let bootstrap = testkit::real_kafka();
    let mut config = PipelineConfig::isolated(testkit::kafka_config(&bootstrap, 3), "test.trace");
    config.create_topics().await.unwrap();
    let dir = std::env::temp_dir().join(testkit::random_topic("trace"));
    std::fs::create_dir_all(&dir).unwrap();
    let rules = dir.join("rules.toml");
    std::fs::write(&rules, "default = [{ bot = \"recorder\" }]\n").unwrap();
    config.rules_file = Some(rules);
    config.bot_name = "recorder".into();
    let bot = RecordingBot::default();
    let pipeline = Pipeline::start(&config, bot.clone()).await.unwrap();

    let caller =
        TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
    let mut request = tonic::Request::new(PublishRequest {
        envelope: Some(testkit::inbound_text(Channel::Sms, "traced", "follow me")),
        sequence: 0,
    });
    request
        .metadata_mut()
        .insert(TRACEPARENT, caller.to_string().parse().unwrap());
    let mut client = pipeline.client().await.unwrap();
    client.publish(request).await.unwrap();

    // The node's span, in the Kafka record's headers.
    let (b, t) = (bootstrap.clone(), config.messages_topic.clone());
    let records = tokio::task::spawn_blocking(move || {
        testkit::read_topic(&b, &t, Duration::from_secs(30), |r| !r.is_empty())
    })
    .await
    .unwrap();
    let node = header(&records[0]);
    assert_eq!(
        node.trace_id, caller.trace_id,
        "the node continues the caller's trace"
    );
    assert_ne!(node.span_id, caller.span_id, "with a span of its own");

    // The worker's span, sent to the bot and written with the analytics record.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while bot.count() < 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "the bot was never called"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let at_bot = TraceParent::parse(
        bot.traceparents()[0]
            .as_deref()
            .expect("traceparent metadata"),
    )
    .unwrap();
    assert_eq!(
        at_bot.trace_id, caller.trace_id,
        "the bot call is in the same trace"
    );
    assert!(at_bot.span_id != node.span_id && at_bot.span_id != caller.span_id);
    let (b, t) = (bootstrap.clone(), config.analytics_topic.clone());
    let analytics = tokio::task::spawn_blocking(move || {
        testkit::read_topic(&b, &t, Duration::from_secs(30), |r| !r.is_empty())
    })
    .await
    .unwrap();
    assert_eq!(
        header(&analytics[0]),
        at_bot,
        "analytics carries the worker's span"
    );

    pipeline.stop().await.unwrap();
    let _ = std::fs::remove_dir_all(dir);
}
