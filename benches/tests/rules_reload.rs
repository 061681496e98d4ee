//! Routing rules reload while traffic flows, on the real local Kafka: a bad
//! rules file is refused and the old rules keep routing; a good one takes
//! over without a restart; no message is lost on the way.
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
use rdkafka::Message as _;
use switchboard_benches::pipeline::{Pipeline, PipelineConfig};
use switchboard_proto::v1::{AnalyticsRecord, Channel, PublishRequest};
use switchboard_testkit::{self as testkit, RecordingBot};

fn write_rules(path: &std::path::Path, text: &str, bump: u64) {
    std::fs::write(path, text).unwrap();
    let file = std::fs::File::options().write(true).open(path).unwrap();
    file.set_modified(std::time::UNIX_EPOCH + Duration::from_secs(1_000_000 + bump))
        .unwrap();
}

fn message(i: usize) -> PublishRequest {
    testkit::publish_request(testkit::inbound_text(
        Channel::Webchat,
        format!("conv-{}", i % 20),
        format!("please help #{i}"),
    ))
}

/// Rule ids of every analytics record, by message id.
async fn decisions(config: &PipelineConfig, at_least: usize) -> HashMap<String, String> {
    let (bootstrap, topic) = (
        config.kafka.bootstrap_servers.clone(),
        config.analytics_topic.clone(),
    );
    let records = tokio::task::spawn_blocking(move || {
        testkit::read_topic(&bootstrap, &topic, Duration::from_secs(60), |r| {
            testkit::analytics_message_ids(r).len() >= at_least
        })
    })
    .await
    .unwrap();
    records
        .iter()
        .map(|r| {
            let record = AnalyticsRecord::decode(r.payload().unwrap()).unwrap();
            (
                record.envelope.unwrap().message_id,
                record.decision.unwrap().rule_id,
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs the real local Kafka: run deploy/test.sh"]
async fn rules_reload_while_traffic_flows_and_bad_files_are_refused() {
    let bootstrap = testkit::real_kafka();
    let mut config = PipelineConfig::isolated(testkit::kafka_config(&bootstrap, 4), "test.reload");
    config.create_topics().await.unwrap();
    let dir = std::env::temp_dir().join(testkit::random_topic("reload"));
    std::fs::create_dir_all(&dir).unwrap();
    let rules = dir.join("rules.toml");
    write_rules(&rules, "default = [{ bot = \"echo\" }]\n", 1);
    config.rules_file = Some(rules.clone());

    let pipeline = Pipeline::start(&config, RecordingBot::default())
        .await
        .unwrap();
    let client = pipeline.client().await.unwrap();

    // Traffic flows the whole time.
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = tokio::spawn({
        let (mut client, stop) = (client.clone(), stop.clone());
        async move {
            let mut ids = Vec::new();
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) && i < 5_000 {
                ids.push(
                    client
                        .publish(message(i))
                        .await
                        .unwrap()
                        .into_inner()
                        .message_id,
                );
                i += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            ids
        }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;

    // A bad file (a bot nobody configured) is refused: the old rules keep routing.
    write_rules(
        &rules,
        "[[rules]]\nid = \"broken\"\ndestinations = [{ bot = \"nobody\" }]\n",
        2,
    );
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let probe = client
        .clone()
        .publish(message(9_001))
        .await
        .unwrap()
        .into_inner()
        .message_id;

    // A good file takes over.
    write_rules(
        &rules,
        "default = [{ bot = \"echo\" }]\n[[rules]]\nid = \"help-to-humans\"\nkeywords = [\"help\"]\ndestinations = [{ agent = \"support\" }]\n",
        3,
    );
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let after = client
        .clone()
        .publish(message(9_002))
        .await
        .unwrap()
        .into_inner()
        .message_id;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let mut sent = traffic.await.unwrap();
    sent.extend([probe.clone(), after.clone()]);

    // Nothing lost, and each message routed by the rules in force at the time.
    let decided = decisions(&config, sent.len()).await;
    for id in &sent {
        assert!(
            decided.contains_key(id),
            "message {id} was lost during the reload"
        );
    }
    assert_eq!(
        decided[&probe], "default",
        "the refused file did not take effect"
    );
    assert_eq!(
        decided[&after], "help-to-humans",
        "the good file took effect"
    );
    let first = &decided[&sent[0]];
    assert_eq!(first, "default");
    assert!(
        sent.len() > 50,
        "traffic flowed during the reloads ({} messages)",
        sent.len()
    );

    pipeline.stop().await.unwrap();
    let _ = std::fs::remove_dir_all(dir);
}
