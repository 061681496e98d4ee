//! The routing worker on the real local Kafka: where a new consumer group
//! starts, and writes Kafka refuses for good.
//!
//! Run with `deploy/test.sh` (it starts Kafka and sets `SWITCHBOARD_TEST_KAFKA`).

use std::{
    collections::HashSet,
    sync::Arc,
    time::{Duration, Instant},
};

use rdkafka::{
    message::OwnedMessage,
    producer::{FutureProducer, FutureRecord},
};
use switchboard_broker::{shutdown::Shutdown, testkit};
use switchboard_proto::v1::{Channel, Envelope};
use switchboard_workers::{
    agents::config::AgentsConfig, config::WorkersConfig, consumer::Worker, router::Router,
};
use tokio::task::JoinHandle;

/// A worker config of its own: random topics and group, agents off.
fn isolated(prefix: &str, partitions: i32) -> WorkersConfig {
    let bootstrap = testkit::real_kafka();
    let unique = |what: &str| testkit::random_topic(&format!("{prefix}.{what}"));
    WorkersConfig {
        kafka: testkit::kafka_config(&bootstrap, partitions),
        group_id: unique("group"),
        messages_topic: unique("messages"),
        analytics_topic: unique("analytics"),
        agent_queue_topic: unique("agents"),
        dlq_topic: unique("dlq"),
        state_topic: unique("state"),
        rejections_topic: unique("rejections"),
        outbound_topic_prefix: unique("outbound"),
        metrics_addr: None,
        shutdown_grace: Duration::from_secs(5),
        retry_backoff: Duration::from_millis(20),
        agents: AgentsConfig {
            enabled: false,
            queue_state_topic: unique("queue-state"),
            assignments_topic: unique("assignments"),
            ..AgentsConfig::default()
        },
        ..WorkersConfig::default()
    }
}

/// Starts one routing worker.
fn start(config: &WorkersConfig) -> (Shutdown, JoinHandle<anyhow::Result<()>>) {
    let shutdown = Shutdown::new();
    let router = Arc::new(Router::new(config).unwrap());
    let worker = Worker::new(config, router).unwrap();
    (shutdown.clone(), tokio::spawn(worker.run(shutdown)))
}

async fn publish(producer: &FutureProducer, topic: &str, envelope: &Envelope) {
    use prost::Message as _;
    producer
        .send(
            FutureRecord::to(topic)
                .key(&envelope.conversation_key())
                .payload(&envelope.encode_to_vec()),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
}

fn text(conversation: &str, id: &str) -> Envelope {
    Envelope {
        message_id: id.to_owned(),
        channel_message_id: id.to_owned(),
        ..testkit::inbound_text(Channel::Webchat, conversation, id)
    }
}

async fn read(
    config: &WorkersConfig,
    topic: &str,
    timeout: Duration,
    done: impl Fn(&[OwnedMessage]) -> bool + Send + 'static,
) -> Vec<OwnedMessage> {
    let (bootstrap, topic) = (config.kafka.bootstrap_servers.clone(), topic.to_owned());
    tokio::task::spawn_blocking(move || testkit::read_topic(&bootstrap, &topic, timeout, done))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real local Kafka: run deploy/test.sh"]
async fn a_new_routing_group_starts_at_the_end_by_default() {
    let config = isolated("reset", 2);
    config.ensure_topics().await.unwrap();
    let producer: FutureProducer = config.kafka.producer_config(&[]).create().unwrap();
    // The retention a new group must not replay to the bots.
    for i in 0..20 {
        publish(
            &producer,
            &config.messages_topic,
            &text(&format!("old-{}", i % 4), &format!("old-{i}")),
        )
        .await;
    }
    let (shutdown, worker) = start(&config);
    // Probe until the group has joined and routes what comes now.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut probe = 0;
    loop {
        assert!(Instant::now() < deadline, "the worker never routed a probe");
        publish(
            &producer,
            &config.messages_topic,
            &text(&format!("probe-{}", probe % 4), &format!("probe-{probe}")),
        )
        .await;
        probe += 1;
        let routed = read(
            &config,
            &config.analytics_topic,
            Duration::from_secs(1),
            |r| !r.is_empty(),
        )
        .await;
        if !routed.is_empty() {
            break;
        }
    }
    // Give old messages every chance to show up, then look.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let routed = read(
        &config,
        &config.analytics_topic,
        Duration::from_secs(3),
        |_| false,
    )
    .await;
    let ids: HashSet<String> = testkit::analytics_message_ids(&routed);
    assert!(ids.iter().any(|id| id.starts_with("probe-")), "{ids:?}");
    let old: Vec<&String> = ids.iter().filter(|id| id.starts_with("old-")).collect();
    assert!(
        old.is_empty(),
        "a new group replayed messages from before it started: {old:?}"
    );
    shutdown.cancel();
    worker.await.unwrap().unwrap();
}
