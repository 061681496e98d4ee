//! Ordered key-level concurrency on the real local Kafka: with a bot that
//! takes a random time per message, every conversation is still handled in
//! order, and a partition routes many conversations at once instead of one
//! message at a time.
//!
//! Run with `deploy/test.sh` (it starts Kafka and sets `SWITCHBOARD_TEST_KAFKA`).

use std::{collections::HashMap, time::Duration};

use switchboard_benches::pipeline::{Pipeline, PipelineConfig};
use switchboard_proto::{
    partition::partition_for,
    v1::{Channel, Envelope},
};
use switchboard_testkit::{self as testkit, RecordingBot};

const PARTITIONS: i32 = 12;
const CONVERSATIONS: usize = 10_000;
const PER_CONVERSATION: usize = 2;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs the real local Kafka: run deploy/test.sh"]
async fn ten_thousand_conversations_stay_in_order_under_a_slow_random_bot() {
    let bootstrap = testkit::real_kafka();
    let mut config =
        PipelineConfig::isolated(testkit::kafka_config(&bootstrap, PARTITIONS), "test.order");
    config.create_topics().await.unwrap();
    let dir = std::env::temp_dir().join(testkit::random_topic("order"));
    std::fs::create_dir_all(&dir).unwrap();
    let rules = dir.join("rules.toml");
    std::fs::write(&rules, "default = [{ bot = \"slow\" }]\n").unwrap();
    config.rules_file = Some(rules);
    config.bot_name = "slow".into();

    // Publish first: 10,000 conversations, their messages interleaved.
    let sent: Vec<Envelope> = (0..PER_CONVERSATION)
        .flat_map(|seq| {
            (0..CONVERSATIONS).map(move |c| Envelope {
                message_id: format!("c{c}-m{seq}"),
                attributes: [("seq".to_owned(), seq.to_string())].into(),
                ..testkit::inbound_text(
                    Channel::Webchat,
                    format!("conv-{c}"),
                    format!("message {seq}"),
                )
            })
        })
        .collect();
    config.preload(&sent).await.unwrap();

    // A bot taking 10 to 100 ms per message, so later messages often finish first.
    let bot =
        RecordingBot::with_random_delay(Duration::from_millis(10), Duration::from_millis(100));
    let started = std::time::Instant::now();
    let pipeline = Pipeline::start(&config, bot.clone()).await.unwrap();
    let total = CONVERSATIONS * PER_CONVERSATION;
    let deadline = started + Duration::from_secs(240);
    while bot.count() < total {
        assert!(
            std::time::Instant::now() < deadline,
            "only {} of {total} routed",
            bot.count()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let elapsed = started.elapsed();
    pipeline.stop().await.unwrap();

    // Every conversation in order, each message once.
    let seen = bot.seen();
    assert_eq!(seen.len(), total, "no duplicates in a clean run");
    let mut by_conversation: HashMap<&str, Vec<&str>> = HashMap::new();
    for e in &seen {
        by_conversation
            .entry(&e.conversation_id)
            .or_default()
            .push(&e.attributes["seq"]);
    }
    assert_eq!(by_conversation.len(), CONVERSATIONS);
    let violations = by_conversation
        .values()
        .filter(|seqs| seqs.as_slice() != ["0", "1"])
        .count();
    assert_eq!(violations, 0, "order violations");

    // Partition-serial would need, per partition, the sum of its bot delays;
    // the busiest partition bounds the whole run.
    let mut serial = vec![Duration::ZERO; PARTITIONS as usize];
    for e in &sent {
        let key = e.conversation_key();
        serial[partition_for(key.as_bytes(), PARTITIONS) as usize] += bot.delay_for(e);
    }
    let serial = serial.into_iter().max().unwrap();
    let speedup = serial.as_secs_f64() / elapsed.as_secs_f64();
    println!(
        "{total} messages over {CONVERSATIONS} conversations in {elapsed:.2?} (including group join); \
         partition-serial would take at least {serial:.2?}: {speedup:.1}x, 0 order violations"
    );
    // Not a speed target (that lives in benches/): proof that conversations
    // of one partition really run concurrently.
    assert!(speedup > 2.0, "only {speedup:.1}x partition-serial");
    let _ = std::fs::remove_dir_all(dir);
}
