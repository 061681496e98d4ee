//! A Kafka outage seen from the gRPC edge, on a real Apache Kafka of the
//! test's own (another port and data folder, so other tests are not
//! disturbed): publishes fail fast with UNAVAILABLE and the node reports
//! NOT_SERVING while Kafka is down, and both recover once it is back,
//! without restarting the node. A routing worker rides out a Kafka
//! restart longer than its group session: it takes its partitions back and
//! routes everything, without restarting.
//!
//! Run with `deploy/test.sh` (it fetches the Kafka jars).

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use switchboard_benches::pipeline::{Pipeline, PipelineConfig};
use switchboard_broker::{config::BrokerConfig, server::Broker};
use switchboard_proto::v1::{Channel, Envelope, PublishRequest, ingest_client::IngestClient};
use switchboard_runtime::shutdown::Shutdown;
use switchboard_testkit::{self as testkit, RecordingBot};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

/// The Ingest service's health status.
async fn serving(health: &mut HealthClient<tonic::transport::Channel>) -> ServingStatus {
    health
        .check(HealthCheckRequest {
            service: "switchboard.v1.Ingest".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status()
}

struct OwnKafka {
    port: u16,
    data: PathBuf,
}

impl OwnKafka {
    fn script(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../deploy/kafka")
            .join(name)
    }

    fn run(&self, script: &str) {
        let status = Command::new(Self::script(script))
            .env("KAFKA_PORT", self.port.to_string())
            .env("KAFKA_CONTROLLER_PORT", (self.port + 1).to_string())
            .env("KAFKA_DATA_DIR", &self.data)
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "{script} failed");
    }

    fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for OwnKafka {
    fn drop(&mut self) {
        let _ = Command::new(Self::script("stop.sh"))
            .arg("--clean")
            .env("KAFKA_PORT", self.port.to_string())
            .env("KAFKA_DATA_DIR", &self.data)
            .status();
    }
}

/// Two free neighbouring ports (client and controller).
fn free_port_pair() -> u16 {
    for _ in 0..50 {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if port < 65535
            && TcpListener::bind(("127.0.0.1", port + 1)).is_ok()
            && TcpListener::bind(("127.0.0.1", port)).is_ok()
        {
            return port;
        }
    }
    panic!("no free port pair");
}

fn request(i: usize) -> PublishRequest {
    testkit::publish_request(testkit::inbound_text(
        Channel::Sms,
        format!("c-{i}"),
        format!("message {i}"),
    ))
}

/// Publishes until Kafka acknowledges; every failure meanwhile must be UNAVAILABLE.
async fn publish_until_ok(
    client: &mut IngestClient<tonic::transport::Channel>,
    within: Duration,
) -> switchboard_proto::v1::PublishResponse {
    let deadline = Instant::now() + within;
    loop {
        match client.publish(request(100)).await {
            Ok(ack) => return ack.into_inner(),
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
                assert!(Instant::now() < deadline, "Kafka never acknowledged");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "starts its own Apache Kafka: run deploy/test.sh"]
async fn publishes_fail_fast_while_kafka_is_down_and_recover_after() {
    let _shared = testkit::real_kafka(); // only run where deploy/test.sh prepared Kafka
    let kafka = OwnKafka {
        port: free_port_pair(),
        data: std::env::temp_dir().join(testkit::random_topic("outage")),
    };
    kafka.run("start.sh");
    let config = BrokerConfig {
        grpc_addr: "127.0.0.1:0".parse().unwrap(),
        metrics_addr: None,
        http_addr: None,
        kafka: testkit::kafka_config(&kafka.bootstrap(), 3),
        messages_topic: testkit::random_topic("outage.messages"),
        // What a caller waits at most before the node knows Kafka is down.
        ack_timeout: Duration::from_secs(1),
        ..BrokerConfig::default()
    };
    config
        .kafka
        .ensure_topics(&[&config.messages_topic])
        .await
        .unwrap();
    let broker = Broker::bind(config).await.unwrap();
    let addr = broker.local_addr();
    let stop = Shutdown::new();
    let server = tokio::spawn(broker.serve(stop.clone()));
    let mut client = IngestClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let mut health = HealthClient::new(
        tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    // A fresh Kafka takes a moment to elect the new topic's leaders.
    publish_until_ok(&mut client, Duration::from_secs(60)).await;
    assert_eq!(serving(&mut health).await, ServingStatus::Serving);

    kafka.run("stop.sh");
    // Every publish while Kafka is down answers UNAVAILABLE within about a
    // second (the ack timeout), and soon at once (the node knows Kafka is down).
    let mut fastest = Duration::MAX;
    for i in 1..=8 {
        let started = Instant::now();
        let status = client.publish(request(i)).await.unwrap_err();
        let took = started.elapsed();
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
        assert!(
            took < Duration::from_millis(1_800),
            "publish {i} took {took:?}"
        );
        fastest = fastest.min(took);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        fastest < Duration::from_millis(200),
        "fail-fast once Kafka is known down ({fastest:?})"
    );
    // Load balancers see it: the node is not serving while Kafka is down.
    assert_eq!(serving(&mut health).await, ServingStatus::NotServing);

    kafka.run("start.sh");
    let recovered = publish_until_ok(&mut client, Duration::from_secs(60)).await;
    assert!(!recovered.message_id.is_empty());
    assert_eq!(serving(&mut health).await, ServingStatus::Serving);

    stop.cancel();
    server.await.unwrap().unwrap();
}

/// `count` messages of 20 conversations, ids starting at `first`.
fn backlog(first: usize, count: usize) -> Vec<Envelope> {
    (first..first + count)
        .map(|i| Envelope {
            message_id: format!("m{i}"),
            ..testkit::inbound_text(Channel::Webchat, format!("conv-{}", i % 20), i.to_string())
        })
        .collect()
}

/// Waits until the bot has seen `count` distinct messages.
async fn routed(bot: &RecordingBot, count: usize, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let seen: std::collections::HashSet<String> =
            bot.seen().into_iter().map(|e| e.message_id).collect();
        if seen.len() >= count {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "{} of {count} messages routed after {within:?}",
            seen.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "starts its own Apache Kafka: run deploy/test.sh"]
async fn a_worker_routes_again_soon_after_kafka_restarts() {
    let _shared = testkit::real_kafka(); // only run where deploy/test.sh prepared Kafka
    let kafka = OwnKafka {
        port: free_port_pair(),
        data: std::env::temp_dir().join(testkit::random_topic("worker-outage")),
    };
    kafka.run("start.sh");
    let mut config = PipelineConfig::isolated(
        testkit::kafka_config(&kafka.bootstrap(), 4),
        "test.worker-outage",
    );
    let rules = kafka.data.with_extension("rules.toml");
    std::fs::write(&rules, "default = [{ bot = \"echo\" }]\n").unwrap();
    config.rules_file = Some(rules.clone());
    config.create_topics().await.unwrap();
    let bot = RecordingBot::default();
    let pipeline = Pipeline::start(&config, bot.clone()).await.unwrap();
    config.preload(&backlog(0, 200)).await.unwrap();
    routed(&bot, 200, Duration::from_secs(60)).await;

    // Down past the group session (10 s): the worker loses its partitions.
    kafka.run("stop.sh");
    tokio::time::sleep(Duration::from_secs(12)).await;
    kafka.run("start.sh");
    config.preload(&backlog(200, 200)).await.unwrap();
    // Back in the group and routing within seconds of Kafka's return, not
    // after the errors librdkafka queued while it was down.
    let took = routed(&bot, 400, Duration::from_secs(30)).await;
    eprintln!("routed again {took:?} after Kafka was back");
    pipeline.stop().await.unwrap();
    let _ = std::fs::remove_file(rules);
}
