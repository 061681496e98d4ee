//! The `replay` command on the real local Kafka: a time range of the
//! messages topic and the whole dead-letter topic are copied back into the
//! messages topic, with their keys, values and a header naming their origin;
//! `--dry-run` writes nothing.
//!
//! Run with `deploy/test.sh` (it starts Kafka and sets `SWITCHBOARD_TEST_KAFKA`).

use std::{
    process::Stdio,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use rdkafka::{
    Message as _,
    message::{Headers, OwnedMessage},
    producer::{FutureProducer, FutureRecord},
};
use switchboard_testkit as testkit;
use switchboard_workers::{config::WorkersConfig, destinations::topics::headers};

fn replay(config: &std::path::Path, args: &[&str]) -> String {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard-workers"))
        .arg("--config")
        .arg(config)
        .arg("replay")
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .expect("run switchboard-workers replay");
    assert!(
        output.status.success(),
        "replay {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

fn replayed_from(m: &OwnedMessage) -> Option<String> {
    let h = m.headers()?;
    (0..h.count())
        .map(|i| h.get(i))
        .find(|h| h.key == headers::REPLAYED_FROM)
        .map(|h| String::from_utf8_lossy(h.value.unwrap()).into_owned())
}

fn rfc3339(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms).unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real local Kafka: run deploy/test.sh"]
async fn replays_a_time_range_and_the_dlq_into_the_messages_topic() {
    let bootstrap = testkit::real_kafka();
    let config = WorkersConfig {
        kafka: testkit::kafka_config(&bootstrap, 1),
        messages_topic: testkit::random_topic("replay.messages"),
        dlq_topic: testkit::random_topic("replay.dlq"),
        ..WorkersConfig::default()
    };
    config
        .kafka
        .ensure_topics(&[&config.messages_topic, &config.dlq_topic])
        .await
        .unwrap();
    let producer: FutureProducer = config.kafka.producer_config(&[]).create().unwrap();
    // Five messages a second apart, ten minutes ago.
    let base = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
        - 600_000;
    for i in 0..5_i64 {
        producer
            .send(
                FutureRecord::to(&config.messages_topic)
                    .key("acme/sms/c1")
                    .payload(format!("message {i}").as_bytes())
                    .timestamp(base + i * 1000),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
    }
    for i in 0..2 {
        producer
            .send(
                FutureRecord::to(&config.dlq_topic)
                    .key("acme/sms/c2")
                    .payload(format!("dead letter {i}").as_bytes()),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
    }
    let dir = std::env::temp_dir().join(testkit::random_topic("replay"));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("workers.toml");
    std::fs::write(
        &file,
        format!(
            "messages_topic = \"{}\"\ndlq_topic = \"{}\"\n[kafka]\nbootstrap_servers = \"{bootstrap}\"\n",
            config.messages_topic, config.dlq_topic
        ),
    )
    .unwrap();

    let dry = replay(&file, &["--from", "dlq", "--dry-run"]);
    assert!(dry.contains("would replay 2 of 2"), "{dry}");
    // Messages 1 and 2: at or after `since`, before `until`.
    let out = replay(
        &file,
        &[
            "--from",
            "messages",
            "--since",
            &rfc3339(base + 1000),
            "--until",
            &rfc3339(base + 3000),
        ],
    );
    assert!(out.contains("replayed 2 of 2"), "{out}");
    let out = replay(&file, &["--from", "dlq"]);
    assert!(out.contains("replayed 2 of 2"), "{out}");

    let topic = config.messages_topic.clone();
    let records = tokio::task::spawn_blocking(move || {
        testkit::read_topic(&bootstrap, &topic, Duration::from_secs(30), |r| {
            r.len() >= 9
        })
    })
    .await
    .unwrap();
    assert_eq!(
        records.len(),
        9,
        "5 originals, 2 from the range, 2 from the DLQ"
    );
    let copies: Vec<(String, String, String)> = records[5..]
        .iter()
        .map(|m| {
            (
                String::from_utf8_lossy(m.key().unwrap()).into_owned(),
                String::from_utf8_lossy(m.payload().unwrap()).into_owned(),
                replayed_from(m).expect("origin header"),
            )
        })
        .collect();
    let (messages, dlq) = (&config.messages_topic, &config.dlq_topic);
    assert_eq!(
        copies,
        [
            (
                "acme/sms/c1".into(),
                "message 1".into(),
                format!("{messages}/0/1")
            ),
            (
                "acme/sms/c1".into(),
                "message 2".into(),
                format!("{messages}/0/2")
            ),
            (
                "acme/sms/c2".into(),
                "dead letter 0".into(),
                format!("{dlq}/0/0")
            ),
            (
                "acme/sms/c2".into(),
                "dead letter 1".into(),
                format!("{dlq}/0/1")
            ),
        ]
    );
    assert!(records[..5].iter().all(|m| replayed_from(m).is_none()));
    let _ = std::fs::remove_dir_all(dir);
}
