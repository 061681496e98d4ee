//! The ingestion edge on the real local Kafka: webhooks through the whole
//! pipeline, dedupe across nodes and restarts, authentication and rate limits.
//!
//! Run with `deploy/test.sh` (it starts Kafka and sets `SWITCHBOARD_TEST_KAFKA`).

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use switchboard_benches::pipeline::{Pipeline, PipelineConfig};
use switchboard_broker::{auth::key_digest, config::BrokerConfig, server::Broker};
use switchboard_proto::v1::{
    AnalyticsRecord, Channel, Direction, Envelope, PublishRequest, PublishResponse, Text,
    WebhookRequest, envelope::Content, ingest_client::IngestClient,
};
use switchboard_runtime::shutdown::Shutdown;
use switchboard_testkit::{self as testkit, RecordingBot};
use tonic::{Code, Request};
use tonic_types::StatusExt;

fn fixture(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../broker/tests/fixtures/webhooks")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn webhook(tenant: &str, channel: Channel, name: &str) -> WebhookRequest {
    let content_type = if name.ends_with(".form") {
        "application/x-www-form-urlencoded"
    } else {
        "application/json"
    };
    WebhookRequest {
        tenant_id: tenant.into(),
        channel: channel as i32,
        payload: fixture(name).into(),
        content_type: content_type.into(),
    }
}

async fn client(addr: SocketAddr) -> IngestClient<tonic::transport::Channel> {
    IngestClient::connect(format!("http://{addr}"))
        .await
        .unwrap()
}

async fn pipeline_config(name: &str) -> PipelineConfig {
    let bootstrap = testkit::real_kafka();
    let mut config = PipelineConfig::isolated(
        testkit::kafka_config(&bootstrap, 6),
        &format!("test.{name}"),
    );
    config.bot_name = "echo".into(); // no rules file: everything goes to analytics only
    config.create_topics().await.unwrap();
    config
}

/// Analytics records read so far, once one of them satisfies `until`.
async fn analytics_until(
    config: &PipelineConfig,
    until: impl Fn(&Envelope) -> bool + Send + 'static,
) -> Vec<Envelope> {
    let (bootstrap, topic) = (
        config.kafka.bootstrap_servers.clone(),
        config.analytics_topic.clone(),
    );
    let decode = |r: &rdkafka::message::OwnedMessage| {
        use prost::Message as _;
        use rdkafka::Message as _;
        AnalyticsRecord::decode(r.payload().unwrap())
            .unwrap()
            .envelope
            .unwrap()
    };
    let records = tokio::task::spawn_blocking(move || {
        testkit::read_topic(&bootstrap, &topic, Duration::from_secs(60), |records| {
            records.iter().any(|r| until(&decode(r)))
        })
    })
    .await
    .unwrap();
    records.iter().map(decode).collect()
}

/// A second ingestion node on the same Kafka and topic.
async fn extra_node(
    config: &PipelineConfig,
) -> (
    SocketAddr,
    Shutdown,
    tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    let broker = Broker::bind(config.broker_config()).await.unwrap();
    let addr = broker.local_addr();
    let stop = Shutdown::new();
    (addr, stop.clone(), tokio::spawn(broker.serve(stop)))
}

async fn sentinel(addr: SocketAddr, like: &Envelope, body: &str) -> PublishResponse {
    let envelope = Envelope {
        message_id: String::new(),
        channel_message_id: String::new(),
        content: Some(Content::Text(Text { body: body.into() })),
        direction: Direction::Inbound as i32,
        ..like.clone()
    };
    client(addr)
        .await
        .publish(PublishRequest {
            envelope: Some(envelope),
            sequence: 0,
        })
        .await
        .unwrap()
        .into_inner()
}

fn text(e: &Envelope) -> &str {
    match &e.content {
        Some(Content::Text(t)) => &t.body,
        _ => "",
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs the real local Kafka: run deploy/test.sh"]
async fn retried_webhook_to_two_nodes_and_a_restart_yields_one_message() {
    let config = pipeline_config("dedupe").await;
    let bot = RecordingBot::default();
    let pipeline = Pipeline::start(&config, bot).await.unwrap();
    let (node_b, stop_b, b) = extra_node(&config).await;

    let request = || webhook("acme", Channel::Whatsapp, "whatsapp_text.json");
    let first = client(pipeline.grpc_addr)
        .await
        .ingest_webhook(request())
        .await
        .unwrap()
        .into_inner()
        .results;
    let again = client(pipeline.grpc_addr)
        .await
        .ingest_webhook(request())
        .await
        .unwrap()
        .into_inner()
        .results;
    let other = client(node_b)
        .await
        .ingest_webhook(request())
        .await
        .unwrap()
        .into_inner()
        .results;
    assert_eq!((first.len(), again.len(), other.len()), (1, 1, 1));
    // Same node: answered from its cache, pointing at the original.
    assert!(!first[0].duplicate && again[0].duplicate);
    assert_eq!(
        (&again[0].message_id, again[0].partition, again[0].offset),
        (&first[0].message_id, first[0].partition, first[0].offset)
    );
    // Another node does not know it, so a second copy reaches Kafka...
    assert!(!other[0].duplicate);
    assert_eq!(
        other[0].partition, first[0].partition,
        "every copy lands in the same partition"
    );

    // ...and the partition owner drops it. A later message on the same
    // conversation proves the worker got past the copy.
    let routed = analytics_until(&config, |_| true).await;
    let original = routed[0].clone();
    let mark = sentinel(node_b, &original, "sentinel 1").await;
    assert_eq!(mark.partition, first[0].partition);
    let routed = analytics_until(&config, |e| text(e) == "sentinel 1").await;
    let copies: Vec<_> = routed
        .iter()
        .filter(|e| e.channel_message_id == original.channel_message_id)
        .collect();
    assert_eq!(copies.len(), 1, "one message downstream");
    assert_eq!(copies[0].message_id, first[0].message_id);

    // Restart the workers (and use a fresh node): the check is rebuilt from Kafka.
    stop_b.cancel();
    b.await.unwrap().unwrap();
    pipeline.stop().await.unwrap();
    let pipeline = Pipeline::start(&config, RecordingBot::default())
        .await
        .unwrap();
    let late = client(pipeline.grpc_addr)
        .await
        .ingest_webhook(request())
        .await
        .unwrap()
        .into_inner()
        .results;
    assert!(!late[0].duplicate, "a fresh node has an empty cache");
    sentinel(pipeline.grpc_addr, &original, "sentinel 2").await;
    let routed = analytics_until(&config, |e| text(e) == "sentinel 2").await;
    let copies = routed
        .iter()
        .filter(|e| e.channel_message_id == original.channel_message_id)
        .count();
    assert_eq!(copies, 1, "still one message downstream after a restart");
    pipeline.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real local Kafka: run deploy/test.sh"]
async fn every_fixture_goes_through_the_pipeline() {
    let config = pipeline_config("fixtures").await;
    let pipeline = Pipeline::start(&config, RecordingBot::default())
        .await
        .unwrap();
    let mut client = client(pipeline.grpc_addr).await;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../broker/tests/fixtures/webhooks");
    let mut expected: HashMap<String, String> = HashMap::new();
    let mut names: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    for path in names {
        let name = path.file_name().unwrap().to_str().unwrap();
        let channel = match name.split('_').next().unwrap() {
            "whatsapp" => Channel::Whatsapp,
            "messenger" => Channel::Messenger,
            "instagram" => Channel::Instagram,
            "sms" => Channel::Sms,
            "webchat" => Channel::Webchat,
            _ => continue,
        };
        // Each fixture under its own tenant, so dedupe across fixtures cannot interfere.
        let tenant = name
            .trim_end_matches(".json")
            .trim_end_matches(".form")
            .replace('.', "-");
        let results = client
            .ingest_webhook(webhook(&tenant, channel, name))
            .await
            .unwrap_or_else(|s| panic!("{name}: {s}"))
            .into_inner()
            .results;
        for r in results.iter().filter(|r| !r.duplicate) {
            expected.insert(r.message_id.clone(), name.to_owned());
        }
    }
    assert!(
        expected.len() >= 10,
        "fixtures produced {} messages",
        expected.len()
    );
    let wanted = expected.clone();
    let (bootstrap, topic) = (
        config.kafka.bootstrap_servers.clone(),
        config.analytics_topic.clone(),
    );
    let records = tokio::task::spawn_blocking(move || {
        testkit::read_topic(&bootstrap, &topic, Duration::from_secs(60), |r| {
            testkit::analytics_message_ids(r).len() >= wanted.len()
        })
    })
    .await
    .unwrap();
    let ids = testkit::analytics_message_ids(&records);
    for (id, name) in &expected {
        assert!(
            ids.contains(id),
            "{name}: message {id} did not reach analytics"
        );
    }
    pipeline.stop().await.unwrap();
}

fn tenants_file(dir: &Path, acme_key: &str, bump: u64) -> PathBuf {
    let path = dir.join("tenants.toml");
    std::fs::write(
        &path,
        format!(
            "[[tenants]]\nid = \"acme\"\napi_keys_sha256 = [\"{}\"]\nrate_limit_per_second = 1\nrate_limit_burst = 5\n\n\
             [[tenants]]\nid = \"globex\"\napi_keys_sha256 = [\"{}\"]\nrate_limit_per_second = 100\n",
            key_digest(acme_key),
            key_digest("globex-key"),
        ),
    )
    .unwrap();
    let file = std::fs::File::options().write(true).open(&path).unwrap();
    file.set_modified(std::time::UNIX_EPOCH + Duration::from_secs(1_000_000 + bump))
        .unwrap();
    path
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

fn envelope(tenant: &str, conversation: &str) -> PublishRequest {
    PublishRequest {
        envelope: Some(Envelope {
            tenant_id: tenant.into(),
            channel: Channel::Sms as i32,
            direction: Direction::Inbound as i32,
            conversation_id: conversation.into(),
            content: Some(Content::Text(Text { body: "hi".into() })),
            ..Default::default()
        }),
        sequence: 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real local Kafka: run deploy/test.sh"]
async fn keys_tenants_and_rate_limits_are_enforced_and_reloaded() {
    let config = pipeline_config("auth").await;
    let dir = std::env::temp_dir().join(testkit::random_topic("auth"));
    std::fs::create_dir_all(&dir).unwrap();
    let tenants = tenants_file(&dir, "acme-key", 1);
    let broker = Broker::bind(BrokerConfig {
        auth_file: Some(tenants.clone()),
        auth_reload_interval: Duration::from_millis(100),
        ..config.broker_config()
    })
    .await
    .unwrap();
    let addr = broker.local_addr();
    let stop = Shutdown::new();
    let server = tokio::spawn(broker.serve(stop.clone()));
    let mut client = client(addr).await;

    let code = |r: Result<tonic::Response<PublishResponse>, tonic::Status>| {
        r.map(|_| Code::Ok).unwrap_or_else(|s| s.code())
    };
    assert_eq!(
        code(client.publish(with_key(envelope("acme", "c"), None)).await),
        Code::Unauthenticated
    );
    assert_eq!(
        code(
            client
                .publish(with_key(envelope("acme", "c"), Some("wrong")))
                .await
        ),
        Code::Unauthenticated
    );
    assert_eq!(
        code(
            client
                .publish(with_key(envelope("globex", "c"), Some("acme-key")))
                .await
        ),
        Code::PermissionDenied
    );
    let cross = client
        .ingest_webhook(with_key(
            webhook("globex", Channel::Whatsapp, "whatsapp_text.json"),
            Some("acme-key"),
        ))
        .await
        .unwrap_err();
    assert_eq!(cross.code(), Code::PermissionDenied);

    // acme: a burst of 5, then 1 per second. Tokens are taken on admission,
    // before Kafka is involved, so a concurrent burst of 10 meets the limit
    // however slow Kafka is.
    let burst = futures::future::join_all((0..10).map(|i| {
        let mut client = client.clone();
        async move {
            client
                .publish(with_key(
                    envelope("acme", &format!("c{i}")),
                    Some("acme-key"),
                ))
                .await
        }
    }))
    .await;
    let admitted = burst.iter().filter(|r| r.is_ok()).count();
    assert!(
        (5..=6).contains(&admitted),
        "{admitted} of 10 admitted with a burst of 5"
    );
    let limited = burst
        .into_iter()
        .find_map(Result::err)
        .expect("some were refused");
    assert_eq!(limited.code(), Code::ResourceExhausted);
    let retry = limited
        .get_details_retry_info()
        .expect("RetryInfo")
        .retry_delay
        .expect("a delay");
    assert!(
        retry > Duration::ZERO && retry <= Duration::from_secs(1),
        "{retry:?}"
    );
    // Other tenants are not affected.
    assert_eq!(
        code(
            client
                .publish(with_key(envelope("globex", "g"), Some("globex-key")))
                .await
        ),
        Code::Ok
    );

    // Rotate acme's key without a restart.
    tenants_file(&dir, "acme-key-2", 2);
    let mut rotated = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if code(
            client
                .publish(with_key(envelope("acme", "r"), Some("acme-key")))
                .await,
        ) == Code::Unauthenticated
        {
            rotated = true;
            break;
        }
    }
    assert!(rotated, "the old key stopped working");
    let new_key = client
        .publish(with_key(envelope("acme", "r"), Some("acme-key-2")))
        .await;
    assert!(
        matches!(code(new_key), Code::Ok | Code::ResourceExhausted),
        "the new key is accepted"
    );

    stop.cancel();
    server.await.unwrap().unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real local Kafka: run deploy/test.sh"]
async fn outbound_envelopes_keep_what_consent_checks_need() {
    use switchboard_proto::v1::{MessageTag, Template};
    let config = pipeline_config("outbound").await;
    let pipeline = Pipeline::start(&config, RecordingBot::default())
        .await
        .unwrap();
    let template = Envelope {
        tenant_id: "acme".into(),
        channel: Channel::Whatsapp as i32,
        direction: Direction::Outbound as i32,
        conversation_id: "106540352242922:16505551234".into(),
        content: Some(Content::Template(Template {
            name: "order_update".into(),
            language: "en_US".into(),
            parameters: vec!["#1234".into()],
        })),
        ..Default::default()
    };
    let agent_reply = Envelope {
        channel: Channel::Messenger as i32,
        conversation_id: "page-1:psid-9".into(),
        content: Some(Content::Text(Text {
            body: "An agent here".into(),
        })),
        tag: MessageTag::HumanAgent as i32,
        ..template.clone()
    };
    let mut client = client(pipeline.grpc_addr).await;
    for envelope in [&template, &agent_reply] {
        client
            .publish(PublishRequest {
                envelope: Some(envelope.clone()),
                sequence: 0,
            })
            .await
            .unwrap();
    }
    // Different conversations, so different partitions: read until each shows up.
    let is_template = |e: &Envelope| matches!(e.content, Some(Content::Template(_)));
    let is_tagged = |e: &Envelope| e.tag == MessageTag::HumanAgent as i32;
    let sent = analytics_until(&config, is_template)
        .await
        .into_iter()
        .find(is_template)
        .unwrap();
    let reply = analytics_until(&config, is_tagged)
        .await
        .into_iter()
        .find(is_tagged)
        .unwrap();
    assert_eq!(sent.direction(), Direction::Outbound);
    assert!(
        matches!(&sent.content, Some(Content::Template(t)) if t.name == "order_update" && t.parameters == ["#1234"])
    );
    assert_eq!(
        (reply.direction(), text(&reply)),
        (Direction::Outbound, "An agent here")
    );
    pipeline.stop().await.unwrap();
}
