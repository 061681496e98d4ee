//! Rebalances on the real local Kafka: workers join and leave the group
//! while a slow bot works through a backlog. Nothing is lost, every
//! conversation is still handled in order, and a rebalance redoes at most
//! the one message each moved conversation had in flight: no duplicate
//! storm.
//!
//! Run with `deploy/test.sh` (it starts Kafka and sets `SWITCHBOARD_TEST_KAFKA`).

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use switchboard_benches::pipeline::{Pipeline, PipelineConfig};
use switchboard_proto::v1::{BotRequest, BotResponse, Channel, Envelope, bot_server::Bot};
use switchboard_runtime::shutdown::Shutdown;
use switchboard_testkit::{self as testkit, RecordingBot};
use switchboard_workers::{consume::Worker, destinations::bot::echo, route::Router};

const PARTITIONS: i32 = 12;
/// Counts the calls it gets and hands them to a shared recording bot.
#[derive(Clone)]
struct Counted(RecordingBot, Arc<AtomicUsize>);

impl Counted {
    fn count(&self) -> usize {
        self.1.load(Ordering::SeqCst)
    }
}

#[tonic::async_trait]
impl Bot for Counted {
    async fn handle(
        &self,
        request: tonic::Request<BotRequest>,
    ) -> Result<tonic::Response<BotResponse>, tonic::Status> {
        self.1.fetch_add(1, Ordering::SeqCst);
        self.0.handle(request).await
    }
}

const CONVERSATIONS: usize = 60;
const PER_CONVERSATION: usize = 40;
const BOT_DELAY: Duration = Duration::from_millis(150);

async fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs the real local Kafka: run deploy/test.sh"]
async fn workers_join_and_leave_without_losses_reordering_or_duplicate_storms() {
    let bootstrap = testkit::real_kafka();
    let mut config = PipelineConfig::isolated(
        testkit::kafka_config(&bootstrap, PARTITIONS),
        "test.rebalance",
    );
    let rules = std::env::temp_dir().join(format!("{}.toml", testkit::random_topic("rebalance")));
    std::fs::write(&rules, "default = [{ bot = \"slow\" }]\n").unwrap();
    config.rules_file = Some(rules.clone());
    config.bot_name = "slow".into();
    config.create_topics().await.unwrap();

    // A backlog first: 60 conversations of 40 messages, interleaved.
    let backlog: Vec<Envelope> = (0..PER_CONVERSATION)
        .flat_map(|seq| {
            (0..CONVERSATIONS).map(move |c| Envelope {
                message_id: format!("c{c}-m{seq}"),
                ..testkit::inbound_text(Channel::Webchat, format!("conv-{c}"), seq.to_string())
            })
        })
        .collect();
    config.preload(&backlog).await.unwrap();
    let total = CONVERSATIONS * PER_CONVERSATION;

    // One worker starts; a slow bot makes the backlog last several seconds.
    let bot = RecordingBot::with_delay(BOT_DELAY);
    let pipeline = Pipeline::start(&config, bot.clone()).await.unwrap();
    // The workers that join call a bot server of their own, to tell their
    // work apart; it records into the same bot, so arrivals keep one order.
    let joiners_bot = Counted(bot.clone(), Arc::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let joiners_bot_addr = listener.local_addr().unwrap();
    let joiners_bot_stop = Shutdown::new();
    let joiners_bot_task = tokio::spawn(echo::serve(
        joiners_bot.clone(),
        listener,
        joiners_bot_stop.clone().cancelled_owned(),
    ));
    let workers_config = config.workers_config(joiners_bot_addr);
    let start_worker = || {
        let shutdown = Shutdown::new();
        let router = Arc::new(Router::new(&workers_config).unwrap());
        let worker = Worker::new(&workers_config, router).unwrap();
        (shutdown.clone(), tokio::spawn(worker.run(shutdown)))
    };
    let all_seen = || bot.seen();
    wait_for("routing to start", Duration::from_secs(60), || {
        bot.count() >= total / 10
    })
    .await;
    // Two more join (partitions move to them) ...
    let (second_stop, second) = start_worker();
    let (third_stop, third) = start_worker();
    wait_for(
        "the joiners to take partitions over",
        Duration::from_secs(60),
        || joiners_bot.count() >= total / 10,
    )
    .await;
    let routed_when_one_left = all_seen().len();
    // ... and one leaves again (its partitions move on).
    second_stop.cancel();
    second.await.unwrap().unwrap();
    wait_for(
        "every message to be routed",
        Duration::from_secs(120),
        || {
            let seen: HashSet<String> = all_seen().into_iter().map(|e| e.message_id).collect();
            seen.len() == total
        },
    )
    .await;
    third_stop.cancel();
    third.await.unwrap().unwrap();
    pipeline.stop().await.unwrap();
    joiners_bot_stop.cancel();
    joiners_bot_task.await.unwrap().unwrap();
    assert!(
        routed_when_one_left < total,
        "a worker left while work was in progress"
    );

    let mut conversations: HashMap<String, Vec<Envelope>> = HashMap::new();
    for e in all_seen() {
        conversations
            .entry(e.conversation_key())
            .or_default()
            .push(e);
    }
    let mut duplicates = 0;
    for (conversation, messages) in conversations {
        let mut first_seen = Vec::new();
        let mut seen = HashSet::new();
        for m in &messages {
            if seen.insert(m.message_id.clone()) {
                first_seen.push(m.message_id.clone());
            } else {
                duplicates += 1;
            }
        }
        let id = conversation
            .rsplit('/')
            .next()
            .unwrap()
            .trim_start_matches("conv-");
        let expected: Vec<String> = (0..PER_CONVERSATION)
            .map(|s| format!("c{id}-m{s}"))
            .collect();
        assert_eq!(first_seen, expected, "{conversation} in order");
        // A redelivered message is the conversation's latest one: what was in
        // flight when its partition moved, never an older, finished one.
        let repeats: HashMap<&str, usize> = messages.iter().fold(HashMap::new(), |mut m, e| {
            *m.entry(e.message_id.as_str()).or_default() += 1;
            m
        });
        assert!(
            repeats.values().all(|n| *n <= 3),
            "{conversation}: {repeats:?}"
        );
    }
    // Two rebalances moved partitions; each redoes at most the one message a
    // moved conversation had in flight.
    assert!(
        duplicates <= 2 * CONVERSATIONS,
        "{duplicates} duplicates for {total} messages: a duplicate storm"
    );
    eprintln!("{total} messages, {duplicates} routed twice over two rebalances");
    let _ = std::fs::remove_file(rules);
}
