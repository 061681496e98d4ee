//! `Ingest.PublishBatch` on the real local Kafka: results in request order
//! that match the records in Kafka, partial success, the same-conversation
//! rule, dedupe within and across batches, rate limits and in-flight
//! permits per envelope, and the batch limits.
//!
//! Run with `deploy/test.sh` (it starts Kafka and sets `SWITCHBOARD_TEST_KAFKA`).

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::Path,
    time::{Duration, Instant},
};

use prost::Message as _;
use rdkafka::{Message as _, message::OwnedMessage};
use switchboard_broker::{auth::key_digest, config::BrokerConfig, server::Broker};
use switchboard_proto::v1::{
    Channel, Envelope, PublishBatchRequest, PublishBatchResponse, PublishResponse,
    ingest_client::IngestClient,
};
use switchboard_runtime::shutdown::Shutdown;
use switchboard_testkit as testkit;
use tonic::{Code, Request};
use tonic_types::StatusExt;

type Client = IngestClient<tonic::transport::Channel>;

/// A node publishing to a new topic of 3 partitions.
struct Node {
    client: Client,
    topic: String,
    bootstrap: String,
    stop: Shutdown,
    server: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Node {
    async fn start(config: BrokerConfig) -> Self {
        Self::start_on(config, &[]).await
    }

    /// The same, its topic created with `topic_configs`.
    async fn start_on(config: BrokerConfig, topic_configs: &[(&str, &str)]) -> Self {
        let bootstrap = testkit::real_kafka();
        let topic = testkit::random_topic("batch.messages");
        let config = BrokerConfig {
            grpc_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            metrics_addr: None,
            http_addr: None,
            kafka: testkit::kafka_config(&bootstrap, 3),
            messages_topic: topic.clone(),
            shutdown_grace: Duration::from_secs(3),
            ack_timeout: Duration::from_secs(10),
            ..config
        };
        config
            .kafka
            .ensure_topics_with(&[&topic], topic_configs)
            .await
            .unwrap();
        let broker = Broker::bind(config).await.unwrap();
        let addr = broker.local_addr();
        let stop = Shutdown::new();
        let server = tokio::spawn(broker.serve(stop.clone()));
        let client = IngestClient::connect(format!("http://{addr}"))
            .await
            .unwrap()
            .max_encoding_message_size(64 << 20);
        Self {
            client,
            topic,
            bootstrap,
            stop,
            server,
        }
    }

    /// Publishes one envelope until Kafka takes it (a new topic's leaders
    /// take a moment), so the batches under test do not meet that.
    async fn warm_up(&mut self, key: Option<&str>) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let request = with_key(batch([text("warm-up", "hi")]), key);
            match self.client.publish_batch(request).await {
                Ok(r) if r.get_ref().failed_count == 0 => return,
                other => assert!(Instant::now() < deadline, "never published: {other:?}"),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn publish(&mut self, envelopes: Vec<Envelope>) -> PublishBatchResponse {
        self.client
            .publish_batch(batch(envelopes))
            .await
            .unwrap()
            .into_inner()
    }

    /// Every record of the topic, once there are `count`.
    async fn records(&self, count: usize) -> Vec<OwnedMessage> {
        let (bootstrap, topic) = (self.bootstrap.clone(), self.topic.clone());
        tokio::task::spawn_blocking(move || {
            testkit::read_topic(&bootstrap, &topic, Duration::from_secs(30), |r| {
                r.len() >= count
            })
        })
        .await
        .unwrap()
    }

    fn size(&self) -> i64 {
        testkit::topic_size(&self.bootstrap, &self.topic)
    }

    async fn stop(self) {
        self.stop.cancel();
        self.server.await.unwrap().unwrap();
    }
}

fn text(conversation: &str, body: &str) -> Envelope {
    testkit::inbound_text(Channel::Sms, conversation, body)
}

fn batch(envelopes: impl IntoIterator<Item = Envelope>) -> PublishBatchRequest {
    PublishBatchRequest {
        envelopes: envelopes.into_iter().collect(),
    }
}

fn with_key<T>(message: T, key: Option<&str>) -> Request<T> {
    let mut request = Request::new(message);
    if let Some(key) = key {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {key}").parse().unwrap());
    }
    request
}

fn code(result: &PublishResponse) -> Code {
    result
        .error
        .as_ref()
        .map_or(Code::Ok, |e| Code::from_i32(e.code))
}

fn fields(result: &PublishResponse) -> Vec<String> {
    result
        .error
        .as_ref()
        .map_or(Vec::new(), |e| e.fields.clone())
}

fn envelope_of(record: &OwnedMessage) -> Envelope {
    Envelope::decode(record.payload().unwrap()).unwrap()
}

/// The decoded records of the topic, by message id, with where they are.
fn by_message_id(records: &[OwnedMessage]) -> HashMap<String, (Envelope, i32, i64)> {
    records
        .iter()
        .map(|r| {
            let envelope = envelope_of(r);
            (
                envelope.message_id.clone(),
                (envelope, r.partition(), r.offset()),
            )
        })
        .collect()
}

/// 40 envelopes over 5 conversations, interleaved: every result is OK, in
/// request order, and names the partition and offset where Kafka holds
/// that envelope; each conversation is in order in one partition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real local Kafka: run deploy/test.sh"]
async fn a_batch_is_answered_in_order_and_lands_in_kafka_in_order() {
    let mut node = Node::start(BrokerConfig::default()).await;
    node.warm_up(None).await;
    let envelopes: Vec<Envelope> = (0..40)
        .map(|i| text(&format!("c{}", i % 5), &format!("m{i}")))
        .collect();
    let response = node.publish(envelopes.clone()).await;
    assert_eq!(response.failed_count, 0, "{response:?}");
    assert_eq!(response.results.len(), 40);
    for (i, result) in response.results.iter().enumerate() {
        assert_eq!(result.sequence, i as u64);
        assert_eq!(code(result), Code::Ok, "{result:?}");
        assert!(!result.duplicate);
        assert_eq!(
            uuid::Uuid::parse_str(&result.message_id)
                .unwrap()
                .get_version_num(),
            7
        );
    }

    let records = node.records(41).await;
    assert_eq!(records.len(), 41, "warm-up + 40");
    let in_kafka = by_message_id(&records);
    let mut by_conversation: HashMap<String, Vec<(i32, i64, String)>> = HashMap::new();
    for (sent, result) in envelopes.iter().zip(&response.results) {
        let (stored, partition, offset) = &in_kafka[&result.message_id];
        assert_eq!(testkit::text_of(stored), testkit::text_of(sent));
        assert_eq!((*partition, *offset), (result.partition, result.offset));
        by_conversation
            .entry(sent.conversation_id.clone())
            .or_default()
            .push((*partition, *offset, testkit::text_of(sent).to_owned()));
    }
    for (conversation, sent) in by_conversation {
        assert!(
            sent.windows(2).all(|w| w[0].0 == w[1].0),
            "{conversation}: one partition"
        );
        assert!(
            sent.windows(2).all(|w| w[0].1 < w[1].1),
            "{conversation}: in order {sent:?}"
        );
    }
    node.stop().await;
}

/// A bad envelope in the middle fails alone, with its field path; the
/// envelopes around it are published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real local Kafka: run deploy/test.sh"]
async fn a_bad_envelope_in_the_middle_fails_alone() {
    let mut node = Node::start(BrokerConfig::default()).await;
    node.warm_up(None).await;
    let before = node.size();
    let mut bad = text("b", "no content");
    bad.content = None;
    let response = node
        .publish(vec![
            text("a", "a0"),
            text("b", "b0"),
            text("c", "c0"),
            bad,
            text("a", "a1"),
            text("c", "c1"),
        ])
        .await;
    assert_eq!(response.failed_count, 1, "{response:?}");
    let codes: Vec<_> = response.results.iter().map(code).collect();
    use Code::{InvalidArgument as Bad, Ok};
    assert_eq!(codes, [Ok, Ok, Ok, Bad, Ok, Ok]);
    assert_eq!(fields(&response.results[3]), ["envelopes[3].content"]);
    assert!(response.results[3].message_id.is_empty());
    assert_eq!(node.size(), before + 5);
    node.stop().await;
}

/// Within one conversation, envelopes after a failed one are ABORTED and
/// never reach Kafka; other conversations' later envelopes are published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real local Kafka: run deploy/test.sh"]
async fn a_conversation_stops_at_its_first_failure() {
    let mut node = Node::start(BrokerConfig::default()).await;
    node.warm_up(None).await;
    let mut bad = text("a", "a1: no direction");
    bad.direction = 0;
    let response = node
        .publish(vec![
            text("a", "a0"),
            text("b", "b0"),
            bad,
            text("b", "b1"),
            text("a", "a2"),
            text("c", "c0"),
            text("a", "a3"),
            text("b", "b2"),
        ])
        .await;
    use Code::{Aborted, InvalidArgument as Bad, Ok};
    let codes: Vec<_> = response.results.iter().map(code).collect();
    assert_eq!(codes, [Ok, Ok, Bad, Ok, Aborted, Ok, Aborted, Ok]);
    assert_eq!(response.failed_count, 3);
    assert_eq!(fields(&response.results[2]), ["envelopes[2].direction"]);
    for aborted in [4, 6] {
        let error = response.results[aborted].error.as_ref().unwrap();
        assert_eq!(error.fields, ["envelopes[2]"], "{error:?}");
        assert!(error.message.contains("envelopes[2]"), "{error:?}");
    }

    let records = node.records(6).await; // warm-up + 5
    let texts: Vec<String> = records
        .iter()
        .map(|r| testkit::text_of(&envelope_of(r)).to_owned())
        .collect();
    assert_eq!(records.len(), 6, "{texts:?}");
    for published in ["a0", "b0", "b1", "c0", "b2"] {
        assert!(
            texts.iter().any(|t| t == published),
            "{published} missing: {texts:?}"
        );
    }
    for absent in ["a2", "a3"] {
        assert!(
            !texts.iter().any(|t| t == absent),
            "{absent} published: {texts:?}"
        );
    }
    node.stop().await;
}

/// Copies of a channel message, in the same batch or a later one, are
/// answered with the first copy's result and `duplicate = true`, and
/// published once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real local Kafka: run deploy/test.sh"]
async fn copies_are_deduplicated_within_and_across_batches() {
    let mut node = Node::start(BrokerConfig::default()).await;
    node.warm_up(None).await;
    let before = node.size();
    let with_id = |conversation: &str, id: &str| Envelope {
        channel_message_id: id.into(),
        ..text(conversation, id)
    };
    let first = node
        .publish(vec![
            with_id("a", "SM-x"),
            with_id("b", "SM-y"),
            with_id("a", "SM-x"),
        ])
        .await;
    assert_eq!(first.failed_count, 0, "{first:?}");
    let [x, y, x_again] = &first.results[..] else {
        panic!("{first:?}")
    };
    assert!(!x.duplicate && !y.duplicate);
    assert!(x_again.duplicate, "{x_again:?}");
    assert_eq!(
        (&x_again.message_id, x_again.partition, x_again.offset),
        (&x.message_id, x.partition, x.offset)
    );

    let second = node
        .publish(vec![with_id("b", "SM-y"), with_id("c", "SM-z")])
        .await;
    assert_eq!(second.failed_count, 0, "{second:?}");
    let [y_again, z] = &second.results[..] else {
        panic!("{second:?}")
    };
    assert!(y_again.duplicate && !z.duplicate, "{second:?}");
    assert_eq!(
        (&y_again.message_id, y_again.partition, y_again.offset),
        (&y.message_id, y.partition, y.offset)
    );
    assert_eq!(node.size(), before + 3, "x, y and z, once each");
    node.stop().await;
}

fn tenants_file(path: &Path) {
    std::fs::write(
        path,
        format!(
            "[[tenants]]\nid = \"acme\"\napi_keys_sha256 = [\"{}\"]\nrate_limit_per_second = 1\nrate_limit_burst = 5\n",
            key_digest("acme-key")
        ),
    )
    .unwrap();
}

/// Authentication is once per call; the tenant's rate limit counts every
/// envelope, and the envelopes past it get RESOURCE_EXHAUSTED one by one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real local Kafka: run deploy/test.sh"]
async fn rate_limits_count_every_envelope() {
    let dir = std::env::temp_dir().join(testkit::random_topic("batch.tenants"));
    std::fs::create_dir_all(&dir).unwrap();
    let tenants = dir.join("tenants.toml");
    tenants_file(&tenants); // 1 per second, burst 5
    let mut node = Node::start(BrokerConfig {
        auth_file: Some(tenants),
        ..BrokerConfig::default()
    })
    .await;

    // No key: the whole call is refused, even an empty batch.
    for envelopes in [vec![], vec![text("a", "no key")]] {
        let status = node
            .client
            .publish_batch(batch(envelopes))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    }
    // An empty batch is fine, and takes nothing from the bucket.
    let empty = node
        .client
        .publish_batch(with_key(batch([]), Some("acme-key")))
        .await
        .unwrap()
        .into_inner();
    assert!(empty.results.is_empty() && empty.failed_count == 0);

    node.warm_up(Some("acme-key")).await;
    tokio::time::sleep(Duration::from_millis(5_500)).await; // the bucket is full again
    let before = node.size();
    let mut envelopes: Vec<Envelope> = (0..7).map(|i| text(&format!("c{i}"), "hi")).collect();
    envelopes.push(text("c5", "after c5 was refused"));
    let mut other_tenant = text("c9", "globex");
    other_tenant.tenant_id = "globex".into();
    envelopes.insert(2, other_tenant);
    let response = node
        .client
        .publish_batch(with_key(batch(envelopes), Some("acme-key")))
        .await
        .unwrap()
        .into_inner();
    use Code::{Aborted, Ok, PermissionDenied, ResourceExhausted as Over};
    let codes: Vec<_> = response.results.iter().map(code).collect();
    // c0 c1 globex c2 c3 c4 | c5 c6 c5
    assert_eq!(
        codes,
        [Ok, Ok, PermissionDenied, Ok, Ok, Ok, Over, Over, Aborted],
        "{response:?}"
    );
    assert!(
        response.results[6]
            .error
            .as_ref()
            .unwrap()
            .message
            .contains("rate limit"),
        "{response:?}"
    );
    assert_eq!(fields(&response.results[8]), ["envelopes[6]"]);
    assert_eq!(node.size(), before + 5);
    let _ = std::fs::remove_dir_all(dir);
    node.stop().await;
}

/// Batches over `max_batch_messages` or `max_batch_bytes` are refused
/// whole, naming the limit; a node out of in-flight permits mid-batch
/// refuses the rest of the batch envelope by envelope; a batch as large as
/// `max_batch_bytes` allows gets through the node's decode limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real local Kafka: run deploy/test.sh"]
async fn batch_limits_and_in_flight_permits() {
    let mut node = Node::start(BrokerConfig {
        max_batch_messages: 4,
        max_batch_bytes: 4 << 20,
        max_in_flight: 3,
        ..BrokerConfig::default()
    })
    .await;
    node.warm_up(None).await;
    let before = node.size();

    let status = node
        .client
        .publish_batch(batch((0..5).map(|i| text(&format!("c{i}"), "hi"))))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("max_batch_messages"),
        "{status:?}"
    );
    let bad = status.get_details_bad_request().unwrap();
    assert_eq!(bad.field_violations[0].field, "envelopes");

    // Four envelopes of 1.05 MB: over max_batch_bytes (4 MiB) yet under the
    // decode limit, so the service itself refuses the batch, by name.
    let big = "x".repeat(1_050_000);
    let status = node
        .client
        .publish_batch(batch((0..4).map(|i| text(&format!("c{i}"), &big))))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("encodes to"), "{status:?}");
    assert!(status.message().contains("max_batch_bytes"), "{status:?}");

    // Three envelopes of 900 kB, 2.7 MB in all: decoded and published.
    let large = "y".repeat(900_000);
    let response = node
        .publish((0..3).map(|i| text(&format!("big{i}"), &large)).collect())
        .await;
    assert_eq!(response.failed_count, 0, "{response:?}");

    // max_in_flight = 3: the fourth and later envelopes find no permit.
    let response = node
        .publish(vec![
            text("p0", "0"),
            text("p1", "1"),
            text("p0", "2"),
            text("p2", "3"),
        ])
        .await;
    use Code::{Ok, ResourceExhausted as Over};
    let codes: Vec<_> = response.results.iter().map(code).collect();
    assert_eq!(codes, [Ok, Ok, Ok, Over], "{response:?}");
    assert!(
        response.results[3]
            .error
            .as_ref()
            .unwrap()
            .message
            .contains("in flight"),
        "{response:?}"
    );
    assert_eq!(node.size(), before + 3 + 3);
    node.stop().await;
}

/// A topic that takes smaller records than librdkafka's 1 MB batches: the
/// node keeps its batches within `max_envelope_bytes`, so the envelopes
/// the topic takes are published, not refused together in one batch over
/// its limit (librdkafka does not split a batch the broker refuses).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_stay_within_a_topic_that_takes_small_records() {
    let mut node = Node::start_on(
        BrokerConfig {
            max_envelope_bytes: 8 << 10,
            ..BrokerConfig::default()
        },
        &[("max.message.bytes", "16384")],
    )
    .await;
    node.warm_up(None).await;
    // About 2 KB each that lz4 cannot shrink: 60 of them over 3 partitions
    // are about 40 KB per partition, handed over at once.
    let envelopes: Vec<Envelope> = (0..60)
        .map(|i| {
            text(
                &format!("small-records-{i}"),
                &testkit::incompressible_text(2000),
            )
        })
        .collect();
    let response = node.publish(envelopes).await;
    assert_eq!(
        response.failed_count,
        0,
        "every envelope the topic takes is published: {:?}",
        response.results.iter().find_map(|r| r.error.as_ref())
    );
    assert_eq!(node.records(61).await.len(), 61, "the warm-up and the 60");
    node.stop().await;
}
