//! The routing worker on the real local Kafka: where a new consumer group
//! starts, writes Kafka refuses for good, and output batches within the
//! topics' limits.
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
use switchboard_proto::v1::{Channel, Envelope};
use switchboard_runtime::shutdown::Shutdown;
use switchboard_testkit as testkit;
use switchboard_workers::config::WorkersConfig;

mod common;
use common::{read, start};

/// A worker config of its own, retrying after 20 ms.
fn isolated(prefix: &str, partitions: i32) -> WorkersConfig {
    WorkersConfig {
        retry_backoff: Duration::from_millis(20),
        ..common::isolated(prefix, partitions)
    }
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

/// Answers every message, except that it is "down" (unavailable) for texts
/// containing "stuck" until cured.
#[derive(Clone, Default)]
struct StuckBot(Arc<std::sync::atomic::AtomicBool>);

#[tonic::async_trait]
impl switchboard_proto::v1::bot_server::Bot for StuckBot {
    async fn handle(
        &self,
        request: tonic::Request<switchboard_proto::v1::BotRequest>,
    ) -> Result<tonic::Response<switchboard_proto::v1::BotResponse>, tonic::Status> {
        let envelope = request.into_inner().envelope.unwrap_or_default();
        if testkit::text_of(&envelope).contains("stuck")
            && !self.0.load(std::sync::atomic::Ordering::SeqCst)
        {
            return Err(tonic::Status::unavailable("down for stuck messages"));
        }
        Ok(tonic::Response::new(Default::default()))
    }
}

/// Serves `bot` on 127.0.0.1 and names it `name` in `config`, the rules'
/// default destination.
async fn with_bot(
    config: &mut WorkersConfig,
    name: &str,
    bot: impl switchboard_proto::v1::bot_server::Bot,
) -> Shutdown {
    use switchboard_workers::destinations::bot::{BotConfig, BotProtocol, echo};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = Shutdown::new();
    tokio::spawn(echo::serve(bot, listener, stop.clone().cancelled_owned()));
    let mut bot = BotConfig::new(BotProtocol::Grpc, format!("http://{addr}"));
    bot.circuit_failures = 0;
    config.bots.insert(name.to_owned(), bot);
    let rules = std::env::temp_dir().join(format!("{}.toml", testkit::random_topic("rules")));
    std::fs::write(&rules, format!("default = [{{ bot = \"{name}\" }}]\n")).unwrap();
    config.rules_file = Some(rules);
    stop
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real local Kafka: run deploy/test.sh"]
async fn a_message_retried_forever_holds_its_partition_back_within_a_bound() {
    const AHEAD: usize = 20;
    const IN_FLIGHT: usize = 8;
    let mut config = isolated("bounded", 1);
    config.max_attempts = 0; // retry forever
    config.retry_backoff_max = Duration::from_millis(50);
    config.max_in_flight_per_partition = IN_FLIGHT;
    config.max_finished_ahead_per_partition = AHEAD;
    config.auto_offset_reset = switchboard_workers::config::AutoOffsetReset::Earliest;
    let bot = StuckBot::default();
    let stop_bot = with_bot(&mut config, "stuckbot", bot.clone()).await;
    config.ensure_topics().await.unwrap();
    let producer: FutureProducer = config.kafka.producer_config(&[]).create().unwrap();
    publish(&producer, &config.messages_topic, &text("stuck", "stuck")).await;
    for i in 0..200 {
        publish(
            &producer,
            &config.messages_topic,
            &text(&format!("c{}", i % 10), &format!("m-{i}")),
        )
        .await;
    }
    let (shutdown, worker) = start(&config);
    let routed = read(
        &config,
        &config.analytics_topic,
        Duration::from_secs(60),
        |r| r.len() >= AHEAD,
    )
    .await;
    assert!(routed.len() >= AHEAD, "only {} routed", routed.len());
    // The stuck message is retried; the others may get only so far ahead.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let routed = read(
        &config,
        &config.analytics_topic,
        Duration::from_secs(3),
        |_| false,
    )
    .await;
    assert!(
        routed.len() < AHEAD + IN_FLIGHT,
        "{} messages finished above the stuck one (bound {AHEAD})",
        routed.len()
    );
    // Cured, the stuck message and everything after it get routed.
    bot.0.store(true, std::sync::atomic::Ordering::SeqCst);
    let routed = read(
        &config,
        &config.analytics_topic,
        Duration::from_secs(60),
        |r| r.len() >= 201,
    )
    .await;
    let ids = testkit::analytics_message_ids(&routed);
    assert_eq!(ids.len(), 201, "every message routed once the bot is back");
    shutdown.cancel();
    worker.await.unwrap().unwrap();
    stop_bot.cancel();
}

/// Replies to every text with an echo; to "big" with 20 KB of random hex.
#[derive(Clone, Default)]
struct BigReplyBot;

#[tonic::async_trait]
impl switchboard_proto::v1::bot_server::Bot for BigReplyBot {
    async fn handle(
        &self,
        request: tonic::Request<switchboard_proto::v1::BotRequest>,
    ) -> Result<tonic::Response<switchboard_proto::v1::BotResponse>, tonic::Status> {
        use switchboard_proto::v1::{Text, envelope::Content};
        let envelope = request.into_inner().envelope.unwrap_or_default();
        let body = if testkit::text_of(&envelope) == "big" {
            (0..640)
                .map(|_| uuid::Uuid::new_v4().simple().to_string())
                .collect()
        } else {
            format!("echo: {}", testkit::text_of(&envelope))
        };
        let reply = Envelope {
            content: Some(Content::Text(Text { body })),
            ..Default::default()
        };
        Ok(tonic::Response::new(switchboard_proto::v1::BotResponse {
            replies: vec![reply],
            ..Default::default()
        }))
    }
}

fn header(m: &OwnedMessage, name: &str) -> Option<String> {
    use rdkafka::message::Headers as _;
    let h = rdkafka::Message::headers(m)?;
    (0..h.count())
        .map(|i| h.get(i))
        .find(|h| h.key == name)
        .map(|h| String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real local Kafka: run deploy/test.sh"]
async fn a_write_kafka_refuses_for_good_goes_to_the_dlq_and_routing_moves_on() {
    use switchboard_workers::destinations::topics::headers;
    let mut config = isolated("fatal", 1);
    // Retry forever: only the fatal/retryable split can end the loop.
    config.max_attempts = 0;
    config.auto_offset_reset = switchboard_workers::config::AutoOffsetReset::Earliest;
    let stop_bot = with_bot(&mut config, "big", BigReplyBot).await;
    let outbound = config.outbound_topic(Channel::Webchat);
    // The webchat outbound topic takes nothing over 1 KB.
    config
        .kafka
        .ensure_topics_with(&[&outbound], &[("max.message.bytes", "1024")])
        .await
        .unwrap();
    config.ensure_topics().await.unwrap();
    let producer: FutureProducer = config.kafka.producer_config(&[]).create().unwrap();
    publish(&producer, &config.messages_topic, &text("huge", "m-0")).await;
    let mut big = text("huge", "big-1");
    big.content = Some(switchboard_proto::v1::envelope::Content::Text(
        switchboard_proto::v1::Text { body: "big".into() },
    ));
    publish(&producer, &config.messages_topic, &big).await;
    for i in 1..=10 {
        // The same partition (there is one): other conversations, and the
        // big one's next message.
        let conversation = if i == 10 { "huge" } else { "small" };
        publish(
            &producer,
            &config.messages_topic,
            &text(conversation, &format!("m-{i}")),
        )
        .await;
    }
    let (shutdown, worker) = start(&config);
    let routed = read(
        &config,
        &config.analytics_topic,
        Duration::from_secs(60),
        |r| r.len() >= 12,
    )
    .await;
    let ids = testkit::analytics_message_ids(&routed);
    assert_eq!(
        ids.len(),
        12,
        "every message routed, the big one too: {ids:?}"
    );
    let letters = read(&config, &config.dlq_topic, Duration::from_secs(30), |r| {
        !r.is_empty()
    })
    .await;
    assert_eq!(letters.len(), 1);
    let error = header(&letters[0], headers::ERROR).unwrap();
    assert!(error.contains("MessageSizeTooLarge"), "{error}");
    assert_eq!(
        header(&letters[0], headers::DESTINATION).as_deref(),
        Some("outbound")
    );
    shutdown.cancel();
    worker.await.unwrap().unwrap();
    stop_bot.cancel();
}

/// One producer writes every output topic, and librdkafka does not split a
/// batch Kafka refuses as too large: a batch over the analytics topic's
/// limit would fail every record in it, though each fits. The producer's
/// batches are bounded by the smallest limit of the topics it writes, so
/// every message reaches the small analytics topic and none is
/// dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real local Kafka: run deploy/test.sh"]
async fn output_batches_stay_within_the_smallest_topic_limit() {
    const MESSAGES: usize = 2_000;
    let mut config = isolated("small-batches", 1);
    config.auto_offset_reset = switchboard_workers::config::AutoOffsetReset::Earliest;
    // 16 KiB: the analytics records of a burst of 1 KiB texts batch far
    // past it within the producer's linger.
    config
        .kafka
        .ensure_topics_with(
            &[&config.analytics_topic],
            &[("max.message.bytes", "16384")],
        )
        .await
        .unwrap();
    config.ensure_topics().await.unwrap();
    let producer: FutureProducer = config.kafka.producer_config(&[]).create().unwrap();
    let envelopes: Vec<Envelope> = (0..MESSAGES)
        .map(|i| {
            let id = format!("m-{i}");
            Envelope {
                content: Some(switchboard_proto::v1::envelope::Content::Text(
                    switchboard_proto::v1::Text {
                        body: testkit::incompressible_text(1024),
                    },
                )),
                ..text(&format!("c-{}", i % 50), &id)
            }
        })
        .collect();
    // Preloaded before the worker starts, so it routes them in one burst.
    futures::future::join_all(
        envelopes
            .iter()
            .map(|e| publish(&producer, &config.messages_topic, e)),
    )
    .await;
    let (shutdown, worker) = start(&config);
    let routed = read(
        &config,
        &config.analytics_topic,
        Duration::from_secs(90),
        |r| r.len() >= MESSAGES,
    )
    .await;
    let ids = testkit::analytics_message_ids(&routed);
    assert_eq!(ids.len(), MESSAGES, "every message on the analytics topic");
    let letters = read(&config, &config.dlq_topic, Duration::from_secs(3), |r| {
        !r.is_empty()
    })
    .await;
    assert!(
        letters.is_empty(),
        "{} dead-lettered, the first for {:?}",
        letters.len(),
        letters
            .first()
            .and_then(|m| header(m, switchboard_workers::destinations::topics::headers::ERROR))
    );
    shutdown.cancel();
    worker.await.unwrap().unwrap();
}

/// Hands the conversation off to the queue its text names (`to:QUEUE`).
#[derive(Clone, Default)]
struct HandoffBot;

#[tonic::async_trait]
impl switchboard_proto::v1::bot_server::Bot for HandoffBot {
    async fn handle(
        &self,
        request: tonic::Request<switchboard_proto::v1::BotRequest>,
    ) -> Result<tonic::Response<switchboard_proto::v1::BotResponse>, tonic::Status> {
        let envelope = request.into_inner().envelope.unwrap_or_default();
        let queue = testkit::text_of(&envelope).strip_prefix("to:");
        Ok(tonic::Response::new(switchboard_proto::v1::BotResponse {
            handoff: queue.is_some(),
            handoff_queue: queue.unwrap_or_default().to_owned(),
            ..Default::default()
        }))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real local Kafka: run deploy/test.sh"]
async fn each_tenant_has_its_own_queues_and_cannot_make_up_new_ones() {
    use prost::Message as _;
    use switchboard_proto::v1::{QueueEvent, QueueSnapshot};
    use switchboard_workers::agents::{config::QueueConfig, service::QueueStage};
    let mut config = isolated("tenants", 2);
    config.auto_offset_reset = switchboard_workers::config::AutoOffsetReset::Earliest;
    config.agents.enabled = true;
    config.agents.tick = Duration::from_millis(100);
    // Tenant A's VIP queue holds one waiting conversation.
    config.agents.queues.insert(
        "vip".into(),
        QueueConfig {
            max_waiting: 1,
            ..QueueConfig::default()
        },
    );
    let stop_bot = with_bot(&mut config, "handoff", HandoffBot).await;
    config.ensure_topics().await.unwrap();
    let producer: FutureProducer = config.kafka.producer_config(&[]).create().unwrap();
    let from = |tenant: &str, conversation: &str, body: &str| {
        Envelope {
            tenant_id: tenant.into(),
            ..text(conversation, &format!("{tenant}-{conversation}"))
        }
        .tap_text(body)
    };
    for envelope in [
        from("a", "a1", "to:vip"),
        // B names A's queue, then one nobody configured.
        from("b", "b1", "to:vip"),
        from("b", "b2", "to:made-up-1"),
    ] {
        publish(&producer, &config.messages_topic, &envelope).await;
    }
    let (shutdown, worker) = start(&config);
    let stage_stop = Shutdown::new();
    let stage = tokio::spawn(QueueStage::new(&config).unwrap().run(stage_stop.clone()));

    let tasks = read(
        &config,
        &config.agent_queue_topic,
        Duration::from_secs(60),
        |r| r.len() >= 3,
    )
    .await;
    let mut queues: Vec<(String, String)> = tasks
        .iter()
        .map(|m| {
            let event = QueueEvent::decode(rdkafka::Message::payload(m).unwrap()).unwrap();
            let task = testkit::agent_task(rdkafka::Message::payload(m).unwrap());
            assert_eq!(
                rdkafka::Message::key(m),
                Some(event.queue.as_bytes()),
                "keyed by the tenant's queue"
            );
            (task.envelope.unwrap().conversation_id, event.queue)
        })
        .collect();
    queues.sort();
    assert_eq!(
        queues,
        [
            ("a1".to_owned(), "a/vip".to_owned()),
            ("b1".to_owned(), "b/vip".to_owned()),
            // Unknown: the tenant's default queue, not a new one.
            ("b2".to_owned(), "b/support".to_owned()),
        ]
    );
    // Each queue's book holds its own tenant's conversation; B's did not
    // count against A's one waiting place, so nothing was refused.
    let snapshots = read(
        &config,
        &config.agents.queue_state_topic,
        Duration::from_secs(30),
        |r| {
            let keys: HashSet<&[u8]> = r.iter().filter_map(rdkafka::Message::key).collect();
            keys.len() >= 3
        },
    )
    .await;
    let mut waiting = std::collections::BTreeMap::new();
    for m in &snapshots {
        let snapshot = QueueSnapshot::decode(rdkafka::Message::payload(m).unwrap()).unwrap();
        let keys: Vec<String> = snapshot
            .waiting
            .iter()
            .map(|w| w.conversation_key.clone())
            .collect();
        waiting.insert(snapshot.queue, keys);
    }
    assert_eq!(
        waiting,
        std::collections::BTreeMap::from([
            ("a/vip".to_owned(), vec!["a/webchat/a1".to_owned()]),
            ("b/vip".to_owned(), vec!["b/webchat/b1".to_owned()]),
            ("b/support".to_owned(), vec!["b/webchat/b2".to_owned()]),
        ])
    );
    let letters = read(&config, &config.dlq_topic, Duration::from_secs(2), |r| {
        !r.is_empty()
    })
    .await;
    assert!(letters.is_empty(), "no task refused");
    stage_stop.cancel();
    stage.await.unwrap().unwrap();
    shutdown.cancel();
    worker.await.unwrap().unwrap();
    stop_bot.cancel();
}

trait TapText {
    fn tap_text(self, body: &str) -> Self;
}

impl TapText for Envelope {
    fn tap_text(mut self, body: &str) -> Self {
        self.content = Some(switchboard_proto::v1::envelope::Content::Text(
            switchboard_proto::v1::Text { body: body.into() },
        ));
        self
    }
}
