//! End to end on the real local Kafka: gRPC publish → Kafka → routing
//! workers → bot, agent-queue topic and analytics topic.
//!
//! Run with `deploy/test.sh`, which starts Kafka and sets
//! `SWITCHBOARD_TEST_KAFKA`; plain `cargo test` skips these (`#[ignore]`).

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::Duration,
};

use prost::Message as _;
use rdkafka::Message as _;
use switchboard_benches::{
    loadgen::{self, Progress},
    pipeline::{Pipeline, PipelineConfig},
};
use switchboard_proto::{
    partition::partition_for,
    v1::{AgentTask, AnalyticsRecord, Channel, Envelope, PublishRequest},
};
use switchboard_testkit::{self as testkit, RecordingBot};
use tonic_types::StatusExt;

const PARTITIONS: i32 = 12;

const RULES: &str = r#"
default = ["analytics"]

[[rules]]
id = "to-both"
keywords = ["[both]"]
destinations = [{ bot = "recorder" }, { agent = "support" }]

[[rules]]
id = "to-bot"
keywords = ["[bot]"]
destinations = [{ bot = "recorder" }]

[[rules]]
id = "to-agent"
keywords = ["[agent]"]
destinations = [{ agent = "support" }]
"#;

/// What each message's text asks for, by its sequence number.
fn body(conversation: usize, seq: usize) -> String {
    let tag = ["[bot]", "[agent]", "[both]", "[none]"][(conversation + seq) % 4];
    format!("{tag} conversation {conversation} message {seq}")
}

fn wants_bot(e: &Envelope) -> bool {
    text(e).contains("[bot]") || text(e).contains("[both]")
}

fn wants_agent(e: &Envelope) -> bool {
    text(e).contains("[agent]") || text(e).contains("[both]")
}

fn text(e: &Envelope) -> &str {
    match &e.content {
        Some(switchboard_proto::v1::envelope::Content::Text(t)) => &t.body,
        _ => "",
    }
}

struct Setup {
    bootstrap: String,
    config: PipelineConfig,
    _rules_dir: TempDir,
}

async fn setup(name: &str) -> Setup {
    let bootstrap = testkit::real_kafka();
    let kafka = testkit::kafka_config(&bootstrap, PARTITIONS);
    let rules_dir = TempDir::new(name);
    let rules_file = rules_dir.0.join("rules.toml");
    std::fs::write(&rules_file, RULES).unwrap();
    let mut config = PipelineConfig::isolated(kafka, &format!("test.{name}"));
    config.rules_file = Some(rules_file);
    config.bot_name = "recorder".into();
    config.create_topics().await.unwrap();
    Setup {
        bootstrap,
        config,
        _rules_dir: rules_dir,
    }
}

struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(testkit::random_topic(name));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Sequence numbers per conversation key, in the order given.
fn seqs_by_conversation<'a>(
    envelopes: impl Iterator<Item = &'a Envelope>,
) -> HashMap<String, Vec<usize>> {
    let mut map: HashMap<String, Vec<usize>> = HashMap::new();
    for e in envelopes {
        map.entry(e.conversation_key())
            .or_default()
            .push(loadgen::seq_of(e));
    }
    map
}

fn assert_in_order(what: &str, seqs: &HashMap<String, Vec<usize>>) {
    for (conversation, seqs) in seqs {
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "{what}: {conversation} out of order: {seqs:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs the real local Kafka: run deploy/test.sh"]
async fn thousand_messages_reach_their_destinations_in_order() {
    let Setup {
        bootstrap,
        config,
        _rules_dir: _keep,
    } = setup("e2e").await;
    let bot = RecordingBot::default();
    let pipeline = Pipeline::start(&config, bot.clone()).await.unwrap();
    let client = pipeline.client().await.unwrap();

    // 50 conversations of 20 messages: 25 through Publish, 25 through PublishStream.
    let progress = Arc::new(Progress::default());
    let unary = loadgen::conversations("acme", Channel::Whatsapp, 0..25, 20, body);
    let streamed = loadgen::conversations("acme", Channel::Webchat, 25..50, 20, body);
    let (unary, streamed) = tokio::join!(
        loadgen::publish_unary(client.clone(), unary, 8, progress.clone()),
        loadgen::publish_stream(client.clone(), streamed, progress.clone()),
    );
    let outcomes: Vec<_> = unary.into_iter().chain(streamed.unwrap()).collect();
    assert_eq!(outcomes.len(), 1000);

    // Every ack names the partition the conversation maps to under Java's
    // murmur2, and the offset where the message really is.
    let mut acked: HashMap<(i32, i64), (String, Envelope)> = HashMap::new();
    for outcome in &outcomes {
        let response = outcome
            .result
            .as_ref()
            .unwrap_or_else(|e| panic!("publish failed: {e}"));
        assert!(!response.message_id.is_empty() && !response.duplicate);
        let key = outcome.envelope.conversation_key();
        assert_eq!(
            response.partition,
            partition_for(key.as_bytes(), PARTITIONS),
            "partition of {key}"
        );
        let previous = acked.insert(
            (response.partition, response.offset),
            (response.message_id.clone(), outcome.envelope.clone()),
        );
        assert!(previous.is_none(), "two acks for one offset");
    }
    let stored = testkit::read_topic(
        &bootstrap,
        &config.messages_topic,
        Duration::from_secs(60),
        |r| r.len() >= 1000,
    );
    assert_eq!(
        stored.len(),
        1000,
        "messages topic holds every message once"
    );
    for record in &stored {
        let envelope = Envelope::decode(record.payload().unwrap()).unwrap();
        let (id, sent) = &acked[&(record.partition(), record.offset())];
        assert_eq!(&envelope.message_id, id, "ack offset points at the message");
        assert_eq!(text(&envelope), text(sent));
        assert_eq!(
            record.key().unwrap(),
            envelope.conversation_key().as_bytes()
        );
    }
    let by_id: HashMap<&str, &Envelope> = acked.values().map(|(id, e)| (id.as_str(), e)).collect();

    // Analytics holds every message with its decision.
    let analytics = testkit::read_topic(
        &bootstrap,
        &config.analytics_topic,
        Duration::from_secs(90),
        |r| r.len() >= 1000,
    );
    let analytics: Vec<AnalyticsRecord> = analytics
        .iter()
        .map(|r| AnalyticsRecord::decode(r.payload().unwrap()).unwrap())
        .collect();
    let analytics_ids: HashSet<&str> = analytics
        .iter()
        .map(|r| r.envelope.as_ref().unwrap().message_id.as_str())
        .collect();
    assert_eq!(analytics_ids.len(), 1000, "every message reached analytics");
    for record in &analytics {
        let envelope = record.envelope.as_ref().unwrap();
        let decision = record.decision.as_ref().unwrap();
        assert_eq!(decision.message_id, envelope.message_id);
        let expected_rule = match (wants_bot(envelope), wants_agent(envelope)) {
            (true, true) => "to-both",
            (true, false) => "to-bot",
            (false, true) => "to-agent",
            (false, false) => "default",
        };
        assert_eq!(decision.rule_id, expected_rule, "{}", text(envelope));
    }
    assert_in_order(
        "analytics",
        &seqs_by_conversation(analytics.iter().map(|r| r.envelope.as_ref().unwrap())),
    );

    // The bot saw exactly the bot-bound messages, each conversation in order.
    let expected_bot: HashSet<&str> = by_id
        .iter()
        .filter(|(_, e)| wants_bot(e))
        .map(|(id, _)| *id)
        .collect();
    let seen = bot.seen();
    let seen_ids: HashSet<&str> = seen.iter().map(|e| e.message_id.as_str()).collect();
    assert_eq!(seen_ids, expected_bot);
    assert_eq!(
        seen.len(),
        expected_bot.len(),
        "no duplicates in a clean run"
    );
    assert_in_order("bot", &seqs_by_conversation(seen.iter()));

    // The agent-queue topic holds exactly the agent-bound messages, in order.
    let expected_agent: HashSet<&str> = by_id
        .iter()
        .filter(|(_, e)| wants_agent(e))
        .map(|(id, _)| *id)
        .collect();
    let tasks = testkit::read_topic(
        &bootstrap,
        &config.agent_queue_topic,
        Duration::from_secs(30),
        |r| r.len() >= expected_agent.len(),
    );
    let tasks: Vec<AgentTask> = tasks
        .iter()
        .map(|r| testkit::agent_task(r.payload().unwrap()))
        .collect();
    // Queues are per tenant: the key is tenant/queue.
    assert!(tasks.iter().all(|t| t.queue == "acme/support"));
    let task_ids: HashSet<&str> = tasks
        .iter()
        .map(|t| t.envelope.as_ref().unwrap().message_id.as_str())
        .collect();
    assert_eq!(task_ids, expected_agent);
    assert_in_order(
        "agent queue",
        &seqs_by_conversation(tasks.iter().map(|t| t.envelope.as_ref().unwrap())),
    );

    pipeline.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real local Kafka: run deploy/test.sh"]
async fn bad_input_is_refused_with_field_paths_and_never_reaches_kafka() {
    let Setup {
        bootstrap,
        config,
        _rules_dir: _keep,
    } = setup("badinput").await;
    let pipeline = Pipeline::start(&config, RecordingBot::default())
        .await
        .unwrap();
    let mut client = pipeline.client().await.unwrap();
    let valid = loadgen::conversations("acme", Channel::Sms, 0..1, 1, body)
        .remove(0)
        .remove(0);

    let cases = [
        (
            Envelope {
                tenant_id: String::new(),
                ..valid.clone()
            },
            "envelope.tenant_id",
        ),
        (
            Envelope {
                conversation_id: String::new(),
                ..valid.clone()
            },
            "envelope.conversation_id",
        ),
        (
            Envelope {
                content: None,
                ..valid.clone()
            },
            "envelope.content",
        ),
    ];
    for (envelope, field) in &cases {
        let status = client
            .publish(PublishRequest {
                envelope: Some(envelope.clone()),
                sequence: 0,
            })
            .await
            .expect_err("invalid envelope must be refused");
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{field}");
        let details = status
            .get_details_bad_request()
            .expect("BadRequest details");
        let fields: Vec<_> = details
            .field_violations
            .iter()
            .map(|v| v.field.as_str())
            .collect();
        assert_eq!(fields, [*field]);
    }
    let missing = client.publish(PublishRequest::default()).await.unwrap_err();
    assert_eq!(missing.code(), tonic::Code::InvalidArgument);
    assert_eq!(
        missing.get_details_bad_request().unwrap().field_violations[0].field,
        "envelope"
    );

    // The same on a stream: each bad request gets an in-band error, the stream stays open.
    let bad: Vec<Vec<Envelope>> = cases.iter().map(|(e, _)| vec![e.clone()]).collect();
    let outcomes = loadgen::publish_stream(client.clone(), bad, Arc::new(Progress::default()))
        .await
        .unwrap();
    for (outcome, (_, field)) in outcomes.iter().zip(&cases) {
        let status = outcome.result.as_ref().unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(
            status.message().contains(field),
            "{} names {field}",
            status.message()
        );
    }

    assert_eq!(
        testkit::topic_size(&bootstrap, &config.messages_topic),
        0,
        "nothing reached Kafka"
    );
    pipeline.stop().await.unwrap();
}
