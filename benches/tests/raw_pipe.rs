//! The raw pipe, the limit the routing and latency scenarios measure the
//! worker against, on a real Apache Kafka: every envelope becomes one
//! analytics record, keyed and ordered as its conversation; records that
//! are not envelopes are skipped; a stop finishes what was taken.
//!
//! Run with `deploy/test.sh` (it starts Kafka and sets `SWITCHBOARD_TEST_KAFKA`).

use std::{collections::HashMap, time::Duration};

use prost::Message as _;
use rdkafka::{
    Message as _,
    producer::{FutureProducer, FutureRecord},
};
use switchboard_benches::raw_pipe::{self, Until};
use switchboard_proto::v1::{AnalyticsRecord, Channel};
use switchboard_testkit as testkit;
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn every_envelope_becomes_one_analytics_record_in_its_conversations_order() {
    let bootstrap = testkit::real_kafka();
    let kafka = testkit::kafka_config(&bootstrap, 3);
    let (from, to) = (
        testkit::random_topic("pipe-in"),
        testkit::random_topic("pipe-out"),
    );
    kafka.ensure_topics(&[&from, &to]).await.expect("topics");
    // Two records that are not envelopes, as a warmed-up topic has.
    let producer: FutureProducer = kafka.producer_config(&[]).create().unwrap();
    for i in 0..2 {
        producer
            .send(
                FutureRecord::to(&from)
                    .key(&format!("warm-up-{i}"))
                    .payload("warm-up"),
                Duration::from_secs(10),
            )
            .await
            .expect("written");
    }
    let envelopes: Vec<_> = (0..30)
        .map(|i| {
            let mut envelope =
                testkit::inbound_text(Channel::Whatsapp, format!("c{}", i % 3), format!("m{i}"));
            envelope.message_id = format!("id-{i}");
            envelope
        })
        .collect();
    testkit::publish_envelopes(&kafka, &from, &envelopes).await;

    let stop = CancellationToken::new();
    let pipe = tokio::spawn({
        let (kafka, from, to, stop) = (kafka.clone(), from.clone(), to.clone(), stop.clone());
        async move { raw_pipe::run(&kafka, &from, &to, Until::Stopped(stop), None).await }
    });
    let records =
        testkit::read_topic_async(&bootstrap, &to, Duration::from_secs(60), |r| r.len() >= 30)
            .await;
    stop.cancel();
    let run = tokio::time::timeout(Duration::from_secs(30), pipe)
        .await
        .expect("the pipe stops once cancelled")
        .expect("pipe task")
        .expect("pipe run");

    assert_eq!(run.piped, 32, "every record taken and finished");
    assert_eq!(run.skipped, 2, "the two warm-up records");
    assert_eq!(records.len(), 30);
    let mut bodies: HashMap<String, Vec<String>> = HashMap::new();
    for record in &records {
        let analytics = AnalyticsRecord::decode(record.payload().unwrap()).expect("analytics");
        let envelope = analytics.envelope.expect("the envelope");
        let decision = analytics.decision.expect("a decision");
        assert_eq!(decision.message_id, envelope.message_id);
        assert_eq!(
            record.key().unwrap(),
            envelope.conversation_key().as_bytes(),
            "keyed by conversation"
        );
        bodies
            .entry(envelope.conversation_id.clone())
            .or_default()
            .push(testkit::text_of(&envelope).to_owned());
    }
    for c in 0..3 {
        let expected: Vec<String> = (0..30)
            .filter(|i| i % 3 == c)
            .map(|i| format!("m{i}"))
            .collect();
        assert_eq!(
            bodies[&format!("c{c}")],
            expected,
            "conversation c{c} in order"
        );
    }
}

#[tokio::test]
async fn a_counted_run_ends_by_itself_after_its_warm_up_and_messages() {
    let bootstrap = testkit::real_kafka();
    let kafka = testkit::kafka_config(&bootstrap, 2);
    let (from, to) = (
        testkit::random_topic("pipe-in"),
        testkit::random_topic("pipe-out"),
    );
    kafka.ensure_topics(&[&from, &to]).await.expect("topics");
    let envelopes: Vec<_> = (0..20)
        .map(|i| testkit::inbound_text(Channel::Sms, format!("c{}", i % 4), format!("m{i}")))
        .collect();
    testkit::publish_envelopes(&kafka, &from, &envelopes).await;

    let run = tokio::time::timeout(
        Duration::from_secs(60),
        raw_pipe::run(
            &kafka,
            &from,
            &to,
            Until::Count {
                warmup: 5,
                messages: 15,
            },
            None,
        ),
    )
    .await
    .expect("the pipe ends after 20 records")
    .expect("pipe run");

    assert_eq!((run.piped, run.skipped), (20, 0));
    assert!(run.elapsed > Duration::ZERO, "the measured window began");
    assert_eq!(testkit::topic_size(&bootstrap, &to), 20);
}
