//! What the workers' real-Kafka tests share: a worker configuration of its
//! own, and a routing worker started in the test's process.

use std::{sync::Arc, time::Duration};

use switchboard_runtime::shutdown::Shutdown;
use switchboard_testkit as testkit;
use switchboard_workers::{
    agents::config::AgentsConfig, broadcast::config::BroadcastsConfig, config::WorkersConfig,
    consume::Worker, customers::config::CustomersConfig, route::Router,
};
use tokio::task::JoinHandle;

/// A worker configuration of its own on the real local Kafka: random topic
/// names and group (starting with `prefix`), `partitions` per topic, no
/// metrics listener, the queue stage off.
pub fn isolated(prefix: &str, partitions: i32) -> WorkersConfig {
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
        agents: AgentsConfig {
            enabled: false,
            queue_state_topic: unique("queue-state"),
            assignments_topic: unique("assignments"),
            ..AgentsConfig::default()
        },
        broadcasts: BroadcastsConfig {
            commands_topic: unique("broadcast-commands"),
            progress_topic: unique("broadcast-progress"),
            tallies_topic: unique("broadcast-tallies"),
            ..BroadcastsConfig::default()
        },
        customers: CustomersConfig {
            topic: unique("customers"),
            ..CustomersConfig::default()
        },
        ..WorkersConfig::default()
    }
}

/// Starts one routing worker; cancel the shutdown to stop it.
#[allow(dead_code)] // not every test file starts a routing worker
pub fn start(config: &WorkersConfig) -> (Shutdown, JoinHandle<anyhow::Result<()>>) {
    let shutdown = Shutdown::new();
    let router = Arc::new(Router::new(config).unwrap());
    let worker = Worker::new(config, router).unwrap();
    (shutdown.clone(), tokio::spawn(worker.run(shutdown)))
}

/// Reads `topic` from its start until `done` says enough, or `timeout`.
#[allow(dead_code)] // not every test file reads topics this way
pub async fn read(
    config: &WorkersConfig,
    topic: &str,
    timeout: Duration,
    done: impl Fn(&[rdkafka::message::OwnedMessage]) -> bool + Send + 'static,
) -> Vec<rdkafka::message::OwnedMessage> {
    testkit::read_topic_async(&config.kafka.bootstrap_servers, topic, timeout, done).await
}
