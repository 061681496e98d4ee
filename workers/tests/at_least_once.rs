//! At least once on the real local Kafka: a worker process killed with
//! SIGKILL mid-stream loses nothing; its replacement routes every message,
//! and duplicates are limited to what was in flight.
//!
//! Run with `deploy/test.sh` (it starts Kafka and sets `SWITCHBOARD_TEST_KAFKA`).

use std::{
    collections::HashSet,
    path::Path,
    process::Stdio,
    time::{Duration, Instant},
};

use switchboard_proto::v1::{Channel, Envelope};
use switchboard_testkit::{self as testkit, RecordingBot};
use switchboard_workers::destinations::bot::echo;
use tokio::{net::TcpListener, process::Child};

const MESSAGES: usize = 600;
const CONVERSATIONS: usize = 60;

fn spawn_worker(config: &Path) -> Child {
    spawn_worker_with(config, &[])
}

/// A worker process with more environment (configuration overrides).
fn spawn_worker_with(config: &Path, env: &[(&str, &str)]) -> Child {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_switchboard-workers"))
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "warn")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start switchboard-workers")
}

/// The group and topics a test's workers use; the others get random names.
struct Names<'a> {
    group: &'a str,
    messages: &'a str,
    analytics: &'a str,
    agents: &'a str,
    state: &'a str,
}

/// Writes `dir/workers.toml` for `names` on `bootstrap`: `settings` are
/// more top-level keys, `tables` more tables after `[kafka]`.
fn write_config(
    dir: &Path,
    names: &Names,
    bootstrap: &str,
    partitions: i32,
    settings: &str,
    tables: &str,
) -> std::path::PathBuf {
    let Names {
        group,
        messages,
        analytics,
        agents,
        state,
    } = names;
    let config = dir.join("workers.toml");
    std::fs::write(
        &config,
        format!(
            r#"
group_id = "{group}"
messages_topic = "{messages}"
analytics_topic = "{analytics}"
agent_queue_topic = "{agents}"
state_topic = "{state}"
dlq_topic = "{dlq}"
rejections_topic = "{rejections}"
outbound_topic_prefix = "{outbound}"
metrics_addr = "127.0.0.1:0"
# Everything is published before the group first joins.
auto_offset_reset = "earliest"
{settings}
[kafka]
bootstrap_servers = "{bootstrap}"
topic_partitions = {partitions}
{tables}"#,
            dlq = testkit::random_topic("alo.dlq"),
            rejections = testkit::random_topic("alo.rejections"),
            outbound = testkit::random_topic("alo.outbound"),
        ),
    )
    .unwrap();
    config
}

async fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real local Kafka: run deploy/test.sh"]
async fn killed_worker_loses_nothing() {
    let bootstrap = testkit::real_kafka();
    let kafka = testkit::kafka_config(&bootstrap, 12);
    let messages = testkit::random_topic("alo.messages");
    let analytics = testkit::random_topic("alo.analytics");
    let agents = testkit::random_topic("alo.agents");
    let group = testkit::random_topic("alo.group");
    kafka
        .ensure_topics(&[&messages, &analytics, &agents])
        .await
        .unwrap();

    // Publish everything first, as the ingestion node writes it.
    let envelopes: Vec<Envelope> = (0..MESSAGES)
        .map(|i| Envelope {
            message_id: format!("m-{i}"),
            ..testkit::inbound_text(
                Channel::Sms,
                format!("conv-{}", i % CONVERSATIONS),
                format!("message {i}"),
            )
        })
        .collect();
    testkit::publish_envelopes(&kafka, &messages, &envelopes).await;

    // A slow bot, so the first worker is surely mid-stream when killed.
    let bot = RecordingBot::with_delay(Duration::from_millis(5));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let bot_addr = listener.local_addr().unwrap();
    let stop_bot = tokio_util::sync::CancellationToken::new();
    let bot_server = tokio::spawn(echo::serve(
        bot.clone(),
        listener,
        stop_bot.clone().cancelled_owned(),
    ));

    let dir = std::env::temp_dir().join(testkit::random_topic("alo"));
    std::fs::create_dir_all(&dir).unwrap();
    let rules = dir.join("rules.toml");
    std::fs::write(&rules, "default = [{ bot = \"recorder\" }]\n").unwrap();
    let state = testkit::random_topic("alo.state");
    let names = Names {
        group: &group,
        messages: &messages,
        analytics: &analytics,
        agents: &agents,
        state: &state,
    };
    let config = write_config(
        &dir,
        &names,
        &bootstrap,
        12,
        &format!(
            "rules_file = \"{}\"\nshutdown_grace = \"5s\"",
            rules.display()
        ),
        &format!("[bots.recorder]\nendpoint = \"http://{bot_addr}\"\n"),
    );

    let mut first = spawn_worker(&config);
    wait_until(
        "the first worker to route 150 messages",
        Duration::from_secs(60),
        || bot.count() >= 150,
    )
    .await;
    first.start_kill().unwrap(); // SIGKILL: no drain, no final commit
    first.wait().await.unwrap();
    // Bot calls in flight at the kill still finish on the bot's side.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let seen_before_kill = bot.count();
    assert!(
        seen_before_kill < MESSAGES,
        "the worker was killed mid-stream ({seen_before_kill} seen)"
    );

    let mut second = spawn_worker(&config);
    let analytics_records = tokio::task::spawn_blocking({
        let (bootstrap, analytics) = (bootstrap.clone(), analytics.clone());
        move || {
            testkit::read_topic(
                &bootstrap,
                &analytics,
                Duration::from_secs(120),
                |records| testkit::analytics_message_ids(records).len() >= MESSAGES,
            )
        }
    })
    .await
    .unwrap();

    // Nothing lost: every message reached analytics and the bot.
    let expected: HashSet<String> = (0..MESSAGES).map(|i| format!("m-{i}")).collect();
    assert_eq!(testkit::analytics_message_ids(&analytics_records), expected);
    let bot_ids: HashSet<String> = bot.seen().into_iter().map(|e| e.message_id).collect();
    assert_eq!(bot_ids, expected);

    // Duplicates are only messages routed but not yet committed when the
    // first worker died: those in flight or done within the last commit
    // interval (1 s), never more than were fetched.
    let duplicates = bot.count() - MESSAGES;
    assert!(
        duplicates <= seen_before_kill,
        "{duplicates} duplicates, {seen_before_kill} routed before the kill"
    );
    println!("killed after {seen_before_kill} bot calls; {duplicates} messages routed twice");

    // A graceful stop commits everything it routed.
    let pid = second.id().unwrap().to_string();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = tokio::time::timeout(Duration::from_secs(30), second.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "worker exited with {exit}");
    let (committed, size) = tokio::task::spawn_blocking(move || {
        testkit::committed_vs_size(&bootstrap, &group, &messages)
    })
    .await
    .unwrap();
    assert_eq!(
        (committed, size),
        (MESSAGES as i64, MESSAGES as i64),
        "all offsets committed at shutdown"
    );

    stop_bot.cancel();
    bot_server.await.unwrap().unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

/// Conversation states are written behind: a worker killed after routing
/// messages but before the flush holding their state changes loses
/// nothing. Their offsets were never committed (a message is done only
/// once its state is acknowledged), so the next owner rebuilds the states
/// from the topic, redoes those messages, and reaches the same states.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real local Kafka: run deploy/test.sh"]
async fn killed_between_a_state_change_and_its_flush_loses_nothing() {
    use prost::Message as _;
    use rdkafka::Message as _;
    use switchboard_proto::v1::{AnalyticsRecord, ConversationState};

    const MESSAGES: usize = 200;
    const CONVERSATIONS: usize = 20;
    let bootstrap = testkit::real_kafka();
    let kafka = testkit::kafka_config(&bootstrap, 4);
    let name = |role: &str| testkit::random_topic(&format!("gap.{role}"));
    let (messages, analytics, state, group) = (
        name("messages"),
        name("analytics"),
        name("state"),
        name("group"),
    );
    kafka.ensure_topics(&[&messages, &analytics]).await.unwrap();
    let channel_id = |i: usize| format!("SM{i:08}");
    let envelopes: Vec<Envelope> = (0..MESSAGES)
        .map(|i| Envelope {
            message_id: format!("m-{i}"),
            channel_message_id: channel_id(i),
            // As the ingestion node stamps it.
            received_at: Some(switchboard_proto::timestamp(std::time::SystemTime::now())),
            ..testkit::inbound_text(
                Channel::Sms,
                format!("conv-{}", i % CONVERSATIONS),
                format!("message {i}"),
            )
        })
        .collect();
    testkit::publish_envelopes(&kafka, &messages, &envelopes).await;

    let dir = std::env::temp_dir().join(testkit::random_topic("gap"));
    std::fs::create_dir_all(&dir).unwrap();
    let agents = name("agents");
    let names = Names {
        group: &group,
        messages: &messages,
        analytics: &analytics,
        agents: &agents,
        state: &state,
    };
    // The first worker never reaches its first flush.
    let config = write_config(
        &dir,
        &names,
        &bootstrap,
        4,
        "state_flush_interval = \"10m\"",
        "",
    );
    let read_ids = |topic: &str, at_least: usize| {
        let (bootstrap, topic) = (bootstrap.clone(), topic.to_owned());
        tokio::task::spawn_blocking(move || {
            testkit::read_topic(&bootstrap, &topic, Duration::from_secs(120), |r| {
                r.len() >= at_least
            })
        })
    };

    // Every message routed (analytics acknowledged), no state written yet.
    let mut first = spawn_worker(&config);
    let routed = read_ids(&analytics, MESSAGES).await.unwrap();
    assert_eq!(testkit::analytics_message_ids(&routed).len(), MESSAGES);
    tokio::time::sleep(Duration::from_secs(2)).await; // past an offset commit
    first.start_kill().unwrap(); // SIGKILL, in the flush gap
    first.wait().await.unwrap();
    assert_eq!(testkit::topic_size(&bootstrap, &state), 0, "no flush yet");
    let (committed, _) = {
        let (bootstrap, group, messages) = (bootstrap.clone(), group.clone(), messages.clone());
        tokio::task::spawn_blocking(move || {
            testkit::committed_vs_size(&bootstrap, &group, &messages)
        })
        .await
        .unwrap()
    };
    assert!(
        committed <= 0,
        "no offset committed before its state: {committed}"
    );

    // The next owner redoes every message and writes the states.
    let mut second = spawn_worker_with(
        &config,
        &[("SWITCHBOARD_WORKERS_STATE_FLUSH_INTERVAL", "100ms")],
    );
    let redone = read_ids(&analytics, 2 * MESSAGES).await.unwrap();
    let mut routings = std::collections::HashMap::<String, usize>::new();
    for record in &redone {
        let record = AnalyticsRecord::decode(record.payload().unwrap()).unwrap();
        *routings
            .entry(record.envelope.unwrap().message_id)
            .or_default() += 1;
    }
    assert_eq!(routings.len(), MESSAGES);
    assert!(
        routings.values().all(|n| *n == 2),
        "every message redone once, none dropped as a copy of itself"
    );

    // Each conversation's last state holds all its messages' channel ids.
    let states = read_ids(&state, CONVERSATIONS).await.unwrap();
    wait_until("every offset committed", Duration::from_secs(30), || {
        testkit::committed_vs_size(&bootstrap, &group, &messages).0 == MESSAGES as i64
    })
    .await;
    let mut last = std::collections::HashMap::new();
    for record in &states {
        let key = String::from_utf8_lossy(record.key().unwrap()).into_owned();
        last.insert(
            key,
            ConversationState::decode(record.payload().unwrap()).unwrap(),
        );
    }
    assert_eq!(last.len(), CONVERSATIONS);
    for (c, envelope) in envelopes.iter().take(CONVERSATIONS).enumerate() {
        let key = envelope.conversation_key();
        let state = &last[&key];
        let expected: Vec<u64> = (c..MESSAGES)
            .step_by(CONVERSATIONS)
            .map(|m| switchboard_proto::message_id_hash(&channel_id(m)))
            .collect();
        assert_eq!(state.recent_message_hashes, expected, "{key}");
        assert!(state.last_inbound_at.is_some(), "{key}: the window opened");
    }
    second.start_kill().unwrap();
    second.wait().await.unwrap();
    let _ = std::fs::remove_dir_all(dir);
}
