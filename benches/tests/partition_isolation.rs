//! Partitions do not hold each other back, on the real local Kafka: one
//! partition whose in-flight bound is reached behind a stuck message is
//! paused, and every other partition keeps routing meanwhile.
//!
//! Run with `deploy/test.sh` (it starts Kafka and sets `SWITCHBOARD_TEST_KAFKA`).

use std::time::{Duration, Instant};

use switchboard_benches::pipeline::{Pipeline, PipelineConfig};
use switchboard_proto::{
    partition::{conversation_key, partition_for},
    v1::{BotRequest, BotResponse, Channel, Envelope, bot_server::Bot, envelope::Content},
};
use switchboard_testkit::{self as testkit, RecordingBot};

const PARTITIONS: i32 = 4;
const STALL: Duration = Duration::from_secs(8);

/// Holds every "stall" message for `STALL`; records everything.
#[derive(Clone, Default)]
struct StallingBot(RecordingBot);

#[tonic::async_trait]
impl Bot for StallingBot {
    async fn handle(
        &self,
        request: tonic::Request<BotRequest>,
    ) -> Result<tonic::Response<BotResponse>, tonic::Status> {
        let stalls = matches!(
            request.get_ref().envelope.as_ref().and_then(|e| e.content.as_ref()),
            Some(Content::Text(t)) if t.body == "stall"
        );
        if stalls {
            tokio::time::sleep(STALL).await;
        }
        self.0.handle(request).await
    }
}

fn envelope(conversation: &str, body: &str) -> Envelope {
    testkit::inbound_text(Channel::Webchat, conversation, body)
}

fn partition_of(conversation: &str) -> i32 {
    partition_for(
        conversation_key("acme", Channel::Webchat, conversation).as_bytes(),
        PARTITIONS,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real local Kafka: run deploy/test.sh"]
async fn a_full_partition_does_not_hold_back_the_others() {
    let bootstrap = testkit::real_kafka();
    let mut config = PipelineConfig::isolated(
        testkit::kafka_config(&bootstrap, PARTITIONS),
        "test.isolation",
    );
    let rules = std::env::temp_dir().join(format!("{}.toml", testkit::random_topic("isolation")));
    std::fs::write(&rules, "default = [{ bot = \"stalling\" }]\n").unwrap();
    config.rules_file = Some(rules.clone());
    config.bot_name = "stalling".into();
    // Two messages of a partition at once: the stuck one and one more.
    config.max_in_flight_per_partition = 2;
    config.create_topics().await.unwrap();

    // Conversation `stuck` starts with a stalling message and has 40 more
    // behind it: its partition's bound is reached and its queue fills. The
    // other partitions get 40 messages each, once that has happened.
    let stuck = partition_of("stuck");
    let others: Vec<Envelope> = (0..)
        .map(|c| format!("c{c}"))
        .filter(|c| partition_of(c) != stuck)
        .take(40 * (PARTITIONS as usize - 1))
        .map(|c| envelope(&c, "elsewhere"))
        .collect();
    let stuck_conversation: Vec<Envelope> = std::iter::once(envelope("stuck", "stall"))
        .chain((0..40).map(|_| envelope("stuck", "behind the stuck one")))
        .collect();

    let bot = StallingBot::default();
    let pipeline = Pipeline::start(&config, bot.clone()).await.unwrap();
    // A first message, to know the worker has joined and routes.
    config.preload(&others[..1]).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while bot.0.count() == 0 {
        assert!(Instant::now() < deadline, "routing never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    config.preload(&stuck_conversation).await.unwrap();
    // Let the worker fetch them and fill the stuck partition's queue.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let started = Instant::now();
    config.preload(&others[1..]).await.unwrap();
    let elsewhere = || {
        bot.0
            .seen()
            .iter()
            .filter(|e| matches!(&e.content, Some(Content::Text(t)) if t.body == "elsewhere"))
            .count()
    };
    while elsewhere() < others.len() {
        assert!(Instant::now() < deadline, "the other partitions stalled");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = started.elapsed();
    let stalled = bot
        .0
        .seen()
        .iter()
        .any(|e| matches!(&e.content, Some(Content::Text(t)) if t.body == "stall"));
    assert!(
        !stalled && took < STALL,
        "the other partitions took {took:?}: they waited for the stuck message ({STALL:?})"
    );
    pipeline.stop().await.unwrap();
    let _ = std::fs::remove_file(rules);
}
