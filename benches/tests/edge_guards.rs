//! The ingestion node's guards against callers that go away, clocks that
//! lie, bodies that are too big, keys that are revoked and producers that
//! break: each test here failed on the node before its guard existed.
//!
//! Most run on the real local Kafka (`deploy/test.sh`); the fatal-producer
//! test uses librdkafka's in-memory mock cluster, which can inject the
//! broker error that makes an idempotent producer fatal.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime},
};

use prost::Message as _;
use rdkafka::Message as _;
use switchboard_broker::{auth::key_digest, config::BrokerConfig, server::Broker};
use switchboard_proto::v1::{
    Channel, ConsentEvent, ConversationControl, Envelope, PublishRequest, WebhookRequest,
    consent_event, conversation_control, envelope::Content, ingest_client::IngestClient,
};
use switchboard_runtime::shutdown::Shutdown;
use switchboard_testkit as testkit;
use tokio_stream::StreamExt as _;
use tonic::{Code, Request};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use tonic_types::StatusExt;

/// A node on `bootstrap`, publishing to a new topic; returns its address,
/// its topic and what stops it.
async fn node(
    bootstrap: &str,
    config: BrokerConfig,
) -> (
    SocketAddr,
    String,
    Shutdown,
    tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    let topic = testkit::random_topic("guards.messages");
    let config = BrokerConfig {
        grpc_addr: "127.0.0.1:0".parse().unwrap(),
        metrics_addr: None,
        http_addr: None,
        kafka: testkit::kafka_config(bootstrap, 3),
        messages_topic: topic.clone(),
        shutdown_grace: Duration::from_secs(3),
        ..config
    };
    config.kafka.ensure_topics(&[&topic]).await.unwrap();
    let broker = Broker::bind(config).await.unwrap();
    let addr = broker.local_addr();
    let stop = Shutdown::new();
    let server = tokio::spawn(broker.serve(stop.clone()));
    (addr, topic, stop, server)
}

async fn client(addr: SocketAddr) -> IngestClient<tonic::transport::Channel> {
    IngestClient::connect(format!("http://{addr}"))
        .await
        .unwrap()
        .max_encoding_message_size(64 << 20)
}

fn text(conversation: &str, body: &str) -> Envelope {
    testkit::inbound_text(Channel::Sms, conversation, body)
}

fn publish(envelope: Envelope) -> PublishRequest {
    testkit::publish_request(envelope)
}

/// The field paths of an `INVALID_ARGUMENT`'s `BadRequest` details.
fn bad_fields(status: &tonic::Status) -> Vec<String> {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    status
        .get_details_bad_request()
        .map(|b| b.field_violations.into_iter().map(|v| v.field).collect())
        .unwrap_or_default()
}

/// Publishes until one succeeds: a new topic's leaders take a moment.
async fn until_published(client: &mut IngestClient<tonic::transport::Channel>) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while let Err(status) = client.publish(publish(text("warm-up", "hi"))).await {
        assert!(Instant::now() < deadline, "never published: {status:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Callers that give up before Kafka answers must not keep their in-flight
/// slots: 64 publishes with channel message ids and a 1 ms deadline used to
/// leave a node with `max_in_flight = 8` refusing everything for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real local Kafka: run deploy/test.sh"]
async fn cancelled_publishes_free_their_in_flight_slots() {
    let bootstrap = testkit::real_kafka();
    let (addr, _, stop, server) = node(
        &bootstrap,
        BrokerConfig {
            max_in_flight: 8,
            ack_timeout: Duration::from_secs(10),
            ..BrokerConfig::default()
        },
    )
    .await;
    let mut client = client(addr).await;
    until_published(&mut client).await;
    for i in 0..64 {
        let mut request = Request::new(publish(Envelope {
            channel_message_id: format!("SM{i:032}"),
            ..text(&format!("cancelled-{i}"), "hi")
        }));
        request.set_timeout(Duration::from_millis(1));
        // Whatever this answers (most give up first), the slot must come back.
        let _ = client.publish(request).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    for i in 0..20 {
        client
            .publish(publish(text(&format!("after-{i}"), "hi")))
            .await
            .unwrap_or_else(|status| panic!("publish {i} after the cancelled ones: {status:?}"));
    }
    stop.cancel();
    server.await.unwrap().unwrap();
}

/// A caller's clock cannot open a consent window for good: a `sent_at` a
/// year ahead is refused by path, and `received_at` is always the node's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real local Kafka: run deploy/test.sh"]
async fn timestamps_come_from_the_node_not_the_caller() {
    let bootstrap = testkit::real_kafka();
    let (addr, topic, stop, server) = node(&bootstrap, BrokerConfig::default()).await;
    let mut client = client(addr).await;
    until_published(&mut client).await;

    let year = Duration::from_secs(365 * 86_400);
    let status = client
        .publish(publish(Envelope {
            sent_at: Some(switchboard_proto::timestamp(SystemTime::now() + year)),
            ..text("future", "hi from 2027")
        }))
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&status), ["envelope.sent_at"], "{status:?}");

    let before = SystemTime::now();
    let ack = client
        .publish(publish(Envelope {
            received_at: Some(switchboard_proto::timestamp(SystemTime::now() + 75 * year)),
            ..text("claims-2100", "hi")
        }))
        .await
        .unwrap()
        .into_inner();
    let after = SystemTime::now();
    let records = testkit::read_topic(&bootstrap, &topic, Duration::from_secs(20), |r| {
        r.iter()
            .any(|m| m.offset() == ack.offset && m.partition() == ack.partition)
    });
    let record = records
        .iter()
        .find(|m| m.offset() == ack.offset && m.partition() == ack.partition)
        .expect("the published record");
    let envelope = Envelope::decode(record.payload().unwrap()).unwrap();
    let received = switchboard_proto::system_time(&envelope.received_at.unwrap()).unwrap();
    assert!(
        before - Duration::from_secs(1) <= received && received <= after + Duration::from_secs(1),
        "received_at {received:?} is not the node's clock"
    );
    stop.cancel();
    server.await.unwrap().unwrap();
}

fn webchat(body: serde_json::Value) -> WebhookRequest {
    WebhookRequest {
        tenant_id: "acme".into(),
        channel: Channel::Webchat as i32,
        payload: serde_json::to_vec(&body).unwrap().into(),
        content_type: "application/json".into(),
    }
}

/// A web chat visitor can send customer content, and nothing that steers
/// the conversation: control, consent and outbound envelopes are refused
/// by path, and nothing of them reaches Kafka.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real local Kafka: run deploy/test.sh"]
async fn web_chat_webhooks_carry_only_what_visitors_send() {
    let bootstrap = testkit::real_kafka();
    let (addr, topic, stop, server) = node(&bootstrap, BrokerConfig::default()).await;
    let mut client = client(addr).await;
    until_published(&mut client).await;
    let published = testkit::topic_size(&bootstrap, &topic);

    let refused = [
        (
            serde_json::json!({"conversationId": "w-1", "direction": "INBOUND",
                "control": {"action": "RELEASE"}}),
            "payload.control",
        ),
        (
            serde_json::json!({"conversationId": "w-1", "direction": "INBOUND",
                "control": {"action": "ASSIGN", "agentId": "mallory"}}),
            "payload.control",
        ),
        (
            serde_json::json!({"conversationId": "w-1", "direction": "INBOUND",
                "consent": {"action": "OPT_IN"}}),
            "payload.consent",
        ),
        (
            serde_json::json!({"conversationId": "w-1", "direction": "OUTBOUND",
                "text": {"body": "a reply in the business's name"}}),
            "payload.direction",
        ),
    ];
    for (body, field) in refused {
        let status = client
            .ingest_webhook(webchat(body.clone()))
            .await
            .unwrap_err();
        assert_eq!(bad_fields(&status), [field], "{body}: {status:?}");
    }
    // A visitor's text is fine, with or without a direction.
    for body in [
        serde_json::json!({"conversationId": "w-1", "direction": "INBOUND", "text": {"body": "hi"}}),
        serde_json::json!({"conversationId": "w-1", "text": {"body": "hi again"}}),
    ] {
        let results = client
            .ingest_webhook(webchat(body))
            .await
            .unwrap()
            .into_inner()
            .results;
        assert_eq!(results.len(), 1);
    }
    assert_eq!(
        testkit::topic_size(&bootstrap, &topic),
        published + 2,
        "only the two visitor texts reached Kafka"
    );
    // Control and consent still come through Publish, from internal callers.
    let control = Envelope {
        content: Some(Content::Control(ConversationControl {
            action: conversation_control::Action::Release as i32,
            ..Default::default()
        })),
        ..text("w-1", "")
    };
    client.publish(publish(control)).await.unwrap();
    let consent = Envelope {
        content: Some(Content::Consent(ConsentEvent {
            action: consent_event::Action::OptOut as i32,
            ..Default::default()
        })),
        ..text("w-1", "")
    };
    client.publish(publish(consent)).await.unwrap();
    stop.cancel();
    server.await.unwrap().unwrap();
}

/// Requests over the node's size limit are refused before they are
/// decoded, with `INVALID_ARGUMENT` naming the limit (tonic's own answer
/// was a bare `OUT_OF_RANGE`), on every RPC.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real local Kafka: run deploy/test.sh"]
async fn oversized_requests_are_invalid_arguments_that_name_the_limit() {
    let bootstrap = testkit::real_kafka();
    let (addr, topic, stop, server) = node(&bootstrap, BrokerConfig::default()).await;
    let mut client = client(addr).await;
    until_published(&mut client).await;
    let published = testkit::topic_size(&bootstrap, &topic);
    let five_mb = "x".repeat(5_000_000);
    let names_the_limit = |status: &tonic::Status| {
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains("byte limit"), "{status:?}");
    };

    let status = client
        .publish(publish(text("big", &five_mb)))
        .await
        .unwrap_err();
    names_the_limit(&status);

    let status = client
        .ingest_webhook(WebhookRequest {
            tenant_id: "acme".into(),
            channel: Channel::Whatsapp as i32,
            payload: five_mb.clone().into_bytes().into(),
            content_type: "application/json".into(),
        })
        .await
        .unwrap_err();
    names_the_limit(&status);

    // Over the envelope limit, under tonic's default: the same answer.
    let status = client
        .publish(publish(text("big", &five_mb[..2_000_000])))
        .await
        .unwrap_err();
    names_the_limit(&status);

    // A stream: the small request is answered, then the stream ends with
    // the same status.
    let requests = tokio_stream::iter([
        publish(text("stream", "small")),
        publish(text("stream", &five_mb)),
    ]);
    let mut responses = client.publish_stream(requests).await.unwrap().into_inner();
    let first = responses.message().await.unwrap().expect("a response");
    assert!(first.error.is_none(), "{first:?}");
    let status = responses.message().await.unwrap_err();
    names_the_limit(&status);

    assert_eq!(testkit::topic_size(&bootstrap, &topic), published + 1);
    stop.cancel();
    server.await.unwrap().unwrap();
}

fn tenants_file(path: &Path, keys: &[&str], bump: u64) {
    let digests: Vec<String> = keys
        .iter()
        .map(|k| format!("\"{}\"", key_digest(k)))
        .collect();
    std::fs::write(
        path,
        format!(
            "[[tenants]]\nid = \"acme\"\napi_keys_sha256 = [{}]\nrate_limit_per_second = 5\nrate_limit_burst = 5\n",
            digests.join(", ")
        ),
    )
    .unwrap();
    // A distinct modification time, so the reloader sees every change.
    let file = std::fs::File::options().write(true).open(path).unwrap();
    file.set_modified(std::time::UNIX_EPOCH + Duration::from_secs(1_000_000 + bump))
        .unwrap();
}

fn with_key<T>(message: T, key: &str) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {key}").parse().unwrap());
    request
}

fn tenants_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(testkit::random_topic("guards.tenants"));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A key removed from the tenants file ends the streams opened with it,
/// with `UNAUTHENTICATED`, once the file is reloaded; a kept key's stream
/// goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real local Kafka: run deploy/test.sh"]
async fn a_revoked_key_ends_its_publish_streams() {
    let bootstrap = testkit::real_kafka();
    let tenants = tenants_dir().join("tenants.toml");
    tenants_file(&tenants, &["old-key", "new-key"], 1);
    let (addr, _, stop, server) = node(
        &bootstrap,
        BrokerConfig {
            auth_file: Some(tenants.clone()),
            auth_reload_interval: Duration::from_millis(100),
            ..BrokerConfig::default()
        },
    )
    .await;
    let mut client = client(addr).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while let Err(status) = client
        .publish(with_key(publish(text("warm-up", "hi")), "new-key"))
        .await
    {
        assert!(Instant::now() < deadline, "never published: {status:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    let open = |key: &'static str| {
        let mut client = client.clone();
        async move {
            let (tx, rx) = tokio::sync::mpsc::channel::<PublishRequest>(4);
            tx.send(publish(text(key, "first"))).await.unwrap();
            let mut responses = client
                .publish_stream(with_key(
                    tokio_stream::wrappers::ReceiverStream::new(rx),
                    key,
                ))
                .await
                .unwrap()
                .into_inner();
            let first = responses.message().await.unwrap().expect("a response");
            assert!(first.error.is_none(), "{key}: {first:?}");
            (tx, responses)
        }
    };
    let (old_tx, mut old) = open("old-key").await;
    let (new_tx, mut new) = open("new-key").await;

    tenants_file(&tenants, &["new-key"], 2);
    let ended = tokio::time::timeout(Duration::from_secs(10), old.message())
        .await
        .expect("the revoked key's stream ended within 10 s");
    let status = ended.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    drop(old_tx);

    new_tx
        .send(publish(text("new-key", "second")))
        .await
        .unwrap();
    let second = new
        .message()
        .await
        .unwrap()
        .expect("the kept key's stream goes on");
    assert!(second.error.is_none(), "{second:?}");
    drop(new_tx);
    stop.cancel();
    server.await.unwrap().unwrap();
}

/// A WhatsApp webhook with `n` text messages.
fn whatsapp_with(n: usize) -> WebhookRequest {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .to_string();
    let messages: Vec<_> = (0..n)
        .map(|i| {
            serde_json::json!({"from": "16505551234", "id": format!("wamid.burst-{i}-{now}"),
                "timestamp": now, "type": "text", "text": {"body": format!("message {i}")}})
        })
        .collect();
    let body = serde_json::json!({"object": "whatsapp_business_account", "entry": [{"id": "1",
        "changes": [{"field": "messages", "value": {"messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "15550001111", "phone_number_id": "106540352242922"},
            "messages": messages}}]}]});
    WebhookRequest {
        tenant_id: "acme".into(),
        channel: Channel::Whatsapp as i32,
        payload: serde_json::to_vec(&body).unwrap().into(),
        content_type: "application/json".into(),
    }
}

/// A webhook with more events than the tenant's burst cannot be split by
/// the channel that sends it: it is admitted once the bucket is full,
/// instead of being told "retry in 1 s" for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real local Kafka: run deploy/test.sh"]
async fn a_webhook_larger_than_the_burst_is_admitted_with_a_full_bucket() {
    let bootstrap = testkit::real_kafka();
    let tenants = tenants_dir().join("tenants.toml");
    tenants_file(&tenants, &["key"], 1); // 5 per second, burst 5
    let (addr, _, stop, server) = node(
        &bootstrap,
        BrokerConfig {
            auth_file: Some(tenants),
            ..BrokerConfig::default()
        },
    )
    .await;
    let mut client = client(addr).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let results = loop {
        match client
            .ingest_webhook(with_key(whatsapp_with(12), "key"))
            .await
        {
            Ok(response) => break response.into_inner().results,
            Err(status) => {
                assert!(
                    matches!(status.code(), Code::ResourceExhausted | Code::Unavailable),
                    "{status:?}"
                );
                assert!(
                    Instant::now() < deadline,
                    "refused for a minute: {status:?}"
                );
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    };
    assert_eq!(results.len(), 12);
    stop.cancel();
    server.await.unwrap().unwrap();
}

/// Every publish's bytes count against `max_in_flight_bytes`, so a node
/// waiting on Kafka cannot fill its memory with large envelopes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_bytes_are_bounded() {
    // A "Kafka" that accepts connections and never answers: publishes wait.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent = listener.local_addr().unwrap();
    let _held = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let config = BrokerConfig {
        grpc_addr: "127.0.0.1:0".parse().unwrap(),
        metrics_addr: None,
        http_addr: None,
        kafka: testkit::kafka_config(&silent.to_string(), 1),
        max_envelope_bytes: 100_000,
        max_in_flight_bytes: 250_000,
        ack_timeout: Duration::from_secs(5),
        shutdown_grace: Duration::from_secs(1),
        ..BrokerConfig::default()
    };
    let broker = Broker::bind(config).await.unwrap();
    let addr = broker.local_addr();
    let stop = Shutdown::new();
    let server = tokio::spawn(broker.serve(stop.clone()));
    let mut waiting = Vec::new();
    for i in 0..2 {
        let mut client = client(addr).await;
        waiting.push(tokio::spawn(async move {
            client
                .publish(publish(text(&format!("big-{i}"), &"x".repeat(90_000))))
                .await
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let status = client(addr)
        .await
        .publish(publish(text("big-3", &"x".repeat(90_000))))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("bytes in flight"), "{status:?}");
    // Small ones still fit.
    let mut small = client(addr).await;
    let small = tokio::spawn(async move { small.publish(publish(text("small", "hi"))).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !small.is_finished(),
        "a small publish is waiting on Kafka, not refused"
    );
    stop.cancel();
    let _ = server.await;
}

/// A fatal error of the idempotent producer (a sequence desynchronization
/// here, injected by librdkafka's mock cluster) takes the node out of
/// SERVING, and the node replaces the producer: publishes succeed again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fatal_producer_error_is_reported_and_recovered_from() {
    use rdkafka::{
        mocking::MockCluster,
        types::{RDKafkaApiKey, RDKafkaRespErr},
    };
    let mock = MockCluster::new(1).unwrap();
    let topic = testkit::random_topic("guards.fatal");
    mock.create_topic(&topic, 1, 1).unwrap();
    let broker = Broker::bind(BrokerConfig {
        grpc_addr: "127.0.0.1:0".parse().unwrap(),
        metrics_addr: None,
        http_addr: None,
        kafka: testkit::kafka_config(&mock.bootstrap_servers(), 1),
        messages_topic: topic,
        ack_timeout: Duration::from_secs(5),
        shutdown_grace: Duration::from_secs(1),
        ..BrokerConfig::default()
    })
    .await
    .unwrap();
    let addr = broker.local_addr();
    let stop = Shutdown::new();
    let server = tokio::spawn(broker.serve(stop.clone()));
    let mut client = client(addr).await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel);
    let mut statuses = health
        .watch(HealthCheckRequest {
            service: "switchboard.v1.Ingest".into(),
        })
        .await
        .unwrap()
        .into_inner();
    until_published(&mut client).await;

    mock.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER],
    );
    let status = client
        .publish(publish(text("desync", "hi")))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let mut seen = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(Ok(update)) = statuses.next().await {
            seen.push(update.status());
            if seen.contains(&ServingStatus::NotServing)
                && update.status() == ServingStatus::Serving
            {
                break;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("health went {seen:?}, not NOT_SERVING then SERVING"));
    // The new producer publishes.
    let deadline = Instant::now() + Duration::from_secs(20);
    while let Err(status) = client.publish(publish(text("after", "hi"))).await {
        assert!(
            Instant::now() < deadline,
            "no publish after the fatal error: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.cancel();
    server.await.unwrap().unwrap();
}

/// Topics Switchboard creates set `min.insync.replicas` themselves
/// (`min(2, replication)`), so `acks=all` never quietly means one replica
/// on a cluster whose default is 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real local Kafka: run deploy/test.sh"]
async fn created_topics_set_min_insync_replicas() {
    use rdkafka::{
        admin::{AdminClient, AdminOptions, ConfigSource, ResourceSpecifier},
        client::DefaultClientContext,
    };
    let kafka = testkit::kafka_config(&testkit::real_kafka(), 1);
    let topic = testkit::random_topic("guards.isr");
    kafka.ensure_topics(&[&topic]).await.unwrap();
    let admin: AdminClient<DefaultClientContext> = kafka.client_config(&[]).create().unwrap();
    let described = admin
        .describe_configs(&[ResourceSpecifier::Topic(&topic)], &AdminOptions::new())
        .await
        .unwrap();
    let resource = described[0].as_ref().unwrap();
    let entry = resource
        .get("min.insync.replicas")
        .expect("min.insync.replicas is described");
    assert_eq!(entry.value.as_deref(), Some("1"), "min(2, replication 1)");
    assert_eq!(
        entry.source,
        ConfigSource::DynamicTopic,
        "set on the topic, not the broker's default"
    );
    for (replication, expected) in [(1, 1), (2, 2), (3, 2), (5, 2)] {
        let config = switchboard_runtime::kafka::KafkaConfig {
            topic_replication: replication,
            ..kafka.clone()
        };
        assert_eq!(config.min_insync_replicas(), expected, "{replication}");
    }
}
