//! Bounded conversation state on the real local Kafka: idle states expire as
//! tombstones (an opt-out survives), states evicted from the in-memory
//! cache are read back from disk as they were, and a rebuild resumes from
//! its local checkpoint.
//!
//! Run with `deploy/test.sh` (it starts Kafka and sets `SWITCHBOARD_TEST_KAFKA`).

use std::{num::NonZeroUsize, time::Duration};

use prost::Message as _;
use rdkafka::{
    Message as _,
    message::OwnedMessage,
    producer::{FutureProducer, FutureRecord},
};
use switchboard_proto::v1::{
    Channel, ConsentEvent, ConversationControl, ConversationState, Envelope, Owner,
    consent_event::Action as Consent, conversation_control::Action as Control, envelope::Content,
};
use switchboard_testkit as testkit;
use switchboard_workers::{
    config::{AutoOffsetReset, WorkersConfig},
    state::PartitionStates,
};

mod common;
use common::{read, start};

/// A worker config of its own, reading the messages topic from its start,
/// flushing states every 100 ms.
fn isolated(prefix: &str) -> WorkersConfig {
    WorkersConfig {
        auto_offset_reset: AutoOffsetReset::Earliest,
        state_flush_interval: Duration::from_millis(100),
        ..common::isolated(prefix, 1)
    }
}

fn text(conversation: &str, id: &str, channel_id: &str) -> Envelope {
    Envelope {
        message_id: id.to_owned(),
        channel_message_id: channel_id.to_owned(),
        ..testkit::inbound_text(Channel::Sms, conversation, id)
    }
}

fn with_content(conversation: &str, id: &str, content: Content) -> Envelope {
    Envelope {
        content: Some(content),
        ..text(conversation, id, "")
    }
}

/// The last record of `key` in the state topic: `Some(None)` for a tombstone.
fn last_state(records: &[OwnedMessage], key: &str) -> Option<Option<ConversationState>> {
    records
        .iter()
        .rev()
        .find(|r| r.key() == Some(key.as_bytes()))
        .map(|r| r.payload().map(|p| ConversationState::decode(p).unwrap()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real local Kafka: run deploy/test.sh"]
async fn idle_states_expire_as_tombstones_opt_outs_survive_and_a_later_message_starts_afresh() {
    let mut config = isolated("expiry");
    // Every window short, so that idleness comes in seconds.
    config.service_window = Duration::from_secs(1);
    config.extended_window = Duration::from_secs(1);
    config.agents.default_queue.sticky_memory = Duration::from_secs(1);
    config.state_idle_expiry = Duration::from_secs(2);
    config.ensure_topics().await.unwrap();
    let (bot, stop, human) = (
        text("idle-bot", "a-1", "sms-a-1"),
        with_content(
            "idle-stop",
            "b-1",
            Content::Consent(ConsentEvent {
                action: Consent::OptOut as i32,
                keyword: "STOP".into(),
            }),
        ),
        with_content(
            "idle-human",
            "h-1",
            Content::Control(ConversationControl {
                action: Control::Handoff as i32,
                queue: "support".into(),
                ..Default::default()
            }),
        ),
    );
    let keys = [&bot, &stop, &human].map(|e| e.conversation_key());
    testkit::publish_envelopes(
        &config.kafka,
        &config.messages_topic,
        &[bot.clone(), stop.clone(), human.clone()],
    )
    .await;
    let (shutdown, worker) = start(&config);

    let (bot_key, stop_key) = (keys[0].clone(), keys[1].clone());
    let states = read(
        &config,
        &config.state_topic,
        Duration::from_secs(40),
        move |r| {
            last_state(r, &bot_key) == Some(None)
                && matches!(last_state(r, &stop_key), Some(Some(s)) if s.updated_at.is_none())
        },
    )
    .await;
    assert_eq!(
        last_state(&states, &keys[0]),
        Some(None),
        "an idle bot conversation ends with a tombstone"
    );
    assert_eq!(
        last_state(&states, &keys[1]),
        Some(Some(ConversationState {
            opted_out: true,
            ..Default::default()
        })),
        "an opt-out survives as a minimal state"
    );
    let human_state = last_state(&states, &keys[2]).flatten().unwrap();
    assert_eq!(human_state.owner(), Owner::Human, "a human-owned one stays");

    // The same channel message again: the forgotten state no longer holds
    // its id, so it is routed, not dropped as a copy. And the opted-out
    // customer writing again is still opted out.
    let again = text("idle-bot", "a-2", "sms-a-1");
    let stop_again = text("idle-stop", "b-2", "sms-b-2");
    testkit::publish_envelopes(&config.kafka, &config.messages_topic, &[again, stop_again]).await;
    let routed = read(
        &config,
        &config.analytics_topic,
        Duration::from_secs(20),
        |r| {
            let ids = testkit::analytics_message_ids(r);
            ids.contains("a-2") && ids.contains("b-2")
        },
    )
    .await;
    let ids = testkit::analytics_message_ids(&routed);
    assert!(
        ids.contains("a-2"),
        "a later message starts from a fresh state: {ids:?}"
    );
    let stop_key = keys[1].clone();
    let states = read(
        &config,
        &config.state_topic,
        Duration::from_secs(20),
        move |r| matches!(last_state(r, &stop_key), Some(Some(s)) if !s.recent_message_hashes.is_empty()),
    )
    .await;
    let stop_state = last_state(&states, &keys[1]).flatten().unwrap();
    assert!(
        stop_state.opted_out
            && stop_state.recent_message_hashes == [switchboard_proto::message_id_hash("sms-b-2")],
        "{stop_state:?}"
    );
    shutdown.cancel();
    worker.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real local Kafka: run deploy/test.sh"]
async fn states_evicted_from_a_small_cache_are_read_back_as_written() {
    let mut config = isolated("evict");
    config.max_cached_conversations_per_partition = 2;
    config.ensure_topics().await.unwrap();
    let conversations = 12;
    let first: Vec<Envelope> = (0..conversations)
        .map(|i| text(&format!("c{i}"), &format!("c{i}-1"), &format!("sms-c{i}")))
        .collect();
    testkit::publish_envelopes(&config.kafka, &config.messages_topic, &first).await;
    let (shutdown, worker) = start(&config);
    read(
        &config,
        &config.analytics_topic,
        Duration::from_secs(40),
        move |r| testkit::analytics_message_ids(r).len() >= conversations,
    )
    .await;
    // Let the flushes land: the states are then on disk, most evicted.
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Copies of each first message (same channel message id): each must be
    // dropped, which only a state read back with its ids can tell. Then a
    // new message per conversation, routed after its copy.
    let mut second = Vec::new();
    for i in 0..conversations {
        second.push(text(
            &format!("c{i}"),
            &format!("c{i}-copy"),
            &format!("sms-c{i}"),
        ));
        second.push(text(
            &format!("c{i}"),
            &format!("c{i}-2"),
            &format!("sms-c{i}-2"),
        ));
    }
    testkit::publish_envelopes(&config.kafka, &config.messages_topic, &second).await;
    let routed = read(
        &config,
        &config.analytics_topic,
        Duration::from_secs(40),
        move |r| testkit::analytics_message_ids(r).len() >= 2 * conversations,
    )
    .await;
    let ids = testkit::analytics_message_ids(&routed);
    for i in 0..conversations {
        assert!(ids.contains(&format!("c{i}-2")), "{ids:?}");
        assert!(
            !ids.contains(&format!("c{i}-copy")),
            "an evicted state lost its message ids: {ids:?}"
        );
    }
    shutdown.cancel();
    worker.await.unwrap().unwrap();
}

async fn produce_states(
    producer: &FutureProducer,
    topic: &str,
    records: impl Iterator<Item = (String, Option<ConversationState>)>,
) {
    let mut sends = Vec::new();
    for (key, state) in records {
        let payload = state.map(|s| s.encode_to_vec());
        let mut record = FutureRecord::<String, Vec<u8>>::to(topic).key(&key);
        if let Some(payload) = &payload {
            record = record.payload(payload);
        }
        sends.push(producer.send_result(record).map_err(|(e, _)| e).unwrap());
    }
    for send in sends {
        send.await.unwrap().unwrap();
    }
}

fn agent_state(key: &str) -> ConversationState {
    ConversationState {
        owner: Owner::Human as i32,
        agent_id: key.to_owned(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real local Kafka: run deploy/test.sh"]
async fn a_rebuild_resumes_from_its_checkpoint_and_a_stale_file_starts_over() {
    let config = isolated("rebuild");
    config.ensure_topics().await.unwrap();
    let producer: FutureProducer = config.kafka.producer_config(&[]).create().unwrap();
    let total = 25_000;
    produce_states(
        &producer,
        &config.state_topic,
        (0..total).map(|i| (format!("k{i}"), Some(agent_state(&format!("k{i}"))))),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let (kafka, topic) = (config.kafka.clone(), config.state_topic.clone());
    let day = Duration::from_secs(86_400);
    let open = {
        let (kafka, topic, dir) = (kafka.clone(), topic.clone(), dir.path().to_owned());
        move |max_age: Duration| {
            let (kafka, topic, dir) = (kafka.clone(), topic.clone(), dir.clone());
            tokio::task::spawn_blocking(move || {
                let mut states =
                    PartitionStates::open(&dir, &topic, 0, NonZeroUsize::new(100).unwrap())
                        .unwrap();
                let rebuilt = states.catch_up(&kafka, &topic, 0, max_age).unwrap();
                (states, rebuilt)
            })
        }
    };
    let (mut states, rebuilt) = open(day).await.unwrap();
    assert_eq!(
        (rebuilt.from, rebuilt.to, rebuilt.applied),
        (0, 25_000, 25_000)
    );
    assert_eq!(states.on_disk().unwrap(), 25_000);
    // Far more lookups than the cache holds: each reads what was written.
    for i in (0..total).step_by(97) {
        let key = format!("k{i}");
        assert_eq!(*states.get_mut(&key).unwrap(), agent_state(&key));
    }
    assert!(states.cached() <= 100);
    // A change not yet written survives its eviction.
    states.get_mut("k1").unwrap().queue = "changed".into();
    states.changed("k1", 1);
    for i in 2..300 {
        states.get_mut(&format!("k{i}")).unwrap();
    }
    assert_eq!(states.get_mut("k1").unwrap().queue, "changed");
    drop(states);

    // More records (and tombstones) after the checkpoint: a restart reads
    // only those.
    produce_states(
        &producer,
        &config.state_topic,
        (0..50).map(|i| (format!("k{i}"), None)),
    )
    .await;
    let (mut states, rebuilt) = open(day).await.unwrap();
    assert_eq!((rebuilt.from, rebuilt.applied), (25_000, 50), "resumed");
    assert_eq!(*states.get_mut("k3").unwrap(), ConversationState::default());
    assert_eq!(*states.get_mut("k60").unwrap(), agent_state("k60"));
    drop(states);

    // A file older than the store's max age is rebuilt from the start.
    let (states, rebuilt) = open(Duration::from_millis(1)).await.unwrap();
    assert_eq!((rebuilt.from, rebuilt.applied), (0, 25_050));
    assert_eq!(states.on_disk().unwrap(), 25_000 - 50);
}

/// Each acknowledged flush moves the local file's checkpoint past its
/// records: a worker restarted on the same directory resumes after its
/// last flush instead of re-reading every state it wrote since the
/// partition was assigned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real local Kafka: run deploy/test.sh"]
async fn a_restarted_worker_resumes_after_its_last_flush() {
    let dir = tempfile::tempdir().unwrap();
    let config = WorkersConfig {
        state_dir: Some(dir.path().to_owned()),
        ..isolated("resume")
    };
    config.ensure_topics().await.unwrap();
    let conversations = 20;
    for round in 0..2 {
        let messages: Vec<Envelope> = (0..conversations)
            .map(|i| {
                let id = format!("c{i}-{round}");
                text(&format!("c{i}"), &id, &format!("sms-{id}"))
            })
            .collect();
        testkit::publish_envelopes(&config.kafka, &config.messages_topic, &messages).await;
        let (shutdown, worker) = start(&config);
        read(
            &config,
            &config.analytics_topic,
            Duration::from_secs(40),
            move |r| testkit::analytics_message_ids(r).len() >= (round + 1) * conversations,
        )
        .await;
        shutdown.cancel();
        worker.await.unwrap().unwrap();
    }
    let (kafka, topic, dir) = (
        config.kafka.clone(),
        config.state_topic.clone(),
        dir.path().to_owned(),
    );
    let rebuilt = tokio::task::spawn_blocking(move || {
        let mut states =
            PartitionStates::open(&dir, &topic, 0, NonZeroUsize::new(100).unwrap()).unwrap();
        states
            .catch_up(&kafka, &topic, 0, Duration::from_secs(86_400))
            .unwrap()
    })
    .await
    .unwrap();
    // Two workers' flushes wrote at least a state per conversation each.
    assert!(
        rebuilt.from >= 2 * conversations as i64,
        "the checkpoint stayed at {} (state topic end {})",
        rebuilt.from,
        rebuilt.to
    );
    assert_eq!(rebuilt.applied, 0, "nothing was left to read");
}
