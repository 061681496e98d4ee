//! A partition's conversation states are written under a transactional id
//! of its own: once a new owner opens its writer, nothing the previous
//! owner wrote later, or held in an open transaction, becomes visible; and
//! a writer fenced while its partition stays its own opens again.
//!
//! Run with `deploy/test.sh` (it starts Kafka and sets `SWITCHBOARD_TEST_KAFKA`).

use std::time::Duration;

use rdkafka::{
    Message as _,
    message::OwnedMessage,
    producer::{FutureProducer, FutureRecord, Producer as _},
};
use switchboard_runtime::kafka::KafkaConfig;
use switchboard_testkit as testkit;
use switchboard_workers::state::{StateWriteError, StateWriter, WriterConfig, transactional_id};
use tokio_util::sync::CancellationToken;

mod common;

async fn open(kafka: &KafkaConfig, id: &str, topic: &str, reopen_after: Duration) -> StateWriter {
    let config = WriterConfig {
        kafka: kafka.clone(),
        transactional_id: id.to_owned(),
        topic: topic.to_owned(),
        partition: 0,
        reopen_after,
    };
    tokio::task::spawn_blocking(move || StateWriter::open(config))
        .await
        .unwrap()
        .expect("state writer opens")
}

/// A worker configuration of its own, its topics created, and the
/// transactional id of its partition 0's state writes.
async fn partition_zero(prefix: &str) -> (switchboard_workers::config::WorkersConfig, String) {
    let config = common::isolated(prefix, 1);
    config.ensure_topics().await.unwrap();
    let id = transactional_id(&config.group_id, &config.messages_topic, 0);
    (config, id)
}

/// Like [`partition_zero`], with a state topic of its own that takes
/// records of at most 1,024 bytes.
async fn small_state_topic(
    prefix: &str,
) -> (switchboard_workers::config::WorkersConfig, String, String) {
    let (config, id) = partition_zero(prefix).await;
    let topic = testkit::random_topic("small-states");
    config
        .kafka
        .ensure_topics_with(&[&topic], &[("max.message.bytes", "1024")])
        .await
        .unwrap();
    (config, id, topic)
}

/// Longer than any test here: a fenced writer in them never opens again.
const NEVER: Duration = Duration::from_secs(600);

fn state(key: &str, value: &str) -> (String, Option<Vec<u8>>) {
    (key.to_owned(), Some(value.as_bytes().to_vec()))
}

/// `len` bytes that lz4 cannot shrink under a topic's limit.
fn noise(len: usize) -> Vec<u8> {
    testkit::incompressible_text(len).into_bytes()
}

/// Writes a flush holding a state Kafka refuses for good: the flush ends
/// without it (nothing retries it forever).
async fn write_refusing(
    writer: &StateWriter,
    flush: &[(String, Option<Vec<u8>>)],
    stop: &CancellationToken,
) {
    let written = tokio::time::timeout(Duration::from_secs(60), writer.write(flush, stop))
        .await
        .expect("a refused state ends its flush");
    assert!(written.is_ok(), "the flush ends without it: {written:?}");
}

/// The values of the records of `topic`, read with `isolation`, until
/// `expected` are there (or 15 s).
fn values(bootstrap: &str, topic: &str, isolation: &str, expected: usize) -> Vec<String> {
    use rdkafka::consumer::{BaseConsumer, Consumer as _};
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", testkit::random_topic("fencing-reader"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("isolation.level", isolation)
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let mut records: Vec<OwnedMessage> = Vec::new();
    while records.len() < expected && std::time::Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            records.push(m.detach());
        }
    }
    // A little longer, for anything that should not be there.
    let settle = std::time::Instant::now() + Duration::from_secs(2);
    while std::time::Instant::now() < settle {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            records.push(m.detach());
        }
    }
    records
        .iter()
        .map(|r| String::from_utf8(r.payload().unwrap_or_default().to_vec()).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_previous_owners_state_writes_never_land_after_the_new_owners() {
    let (config, id) = partition_zero("fencing").await;
    let (kafka, topic) = (&config.kafka, &config.state_topic);
    let stop = CancellationToken::new();

    // The first owner writes a flush.
    let first = open(kafka, &id, topic, NEVER).await;
    first.write(&[state("c1", "first")], &stop).await.unwrap();

    // A second owner froze with a flush's transaction open: its record is in
    // the log, not yet committed.
    let frozen: FutureProducer = kafka
        .producer_config(&[("transactional.id", &id)])
        .create()
        .unwrap();
    frozen.init_transactions(Duration::from_secs(30)).unwrap();
    frozen.begin_transaction().unwrap();
    frozen
        .send(
            FutureRecord::to(topic)
                .partition(0)
                .key("c1")
                .payload("frozen"),
            Duration::from_secs(10),
        )
        .await
        .expect("the frozen owner's record reaches the log");

    // The partition's new owner opens its writer and writes.
    let new = open(kafka, &id, topic, NEVER).await;
    new.write(&[state("c1", "new"), state("c2", "new")], &stop)
        .await
        .unwrap();

    // The frozen owner wakes up and commits; the first one writes again.
    let committed =
        tokio::task::spawn_blocking(move || frozen.commit_transaction(Duration::from_secs(10)))
            .await
            .unwrap();
    assert!(committed.is_err(), "the frozen owner's commit is refused");
    // Fenced, it waits to open again; its partition's revocation (here:
    // the worker stopping) ends that before it does.
    let revoked = CancellationToken::new();
    let revoke = revoked.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(2)).await;
        revoke.cancel();
    });
    let again = first.write(&[state("c1", "first-again")], &revoked).await;
    assert!(
        matches!(again, Err(StateWriteError::Stopped)),
        "the first owner is fenced and waits: {again:?}"
    );

    let bootstrap = &kafka.bootstrap_servers;
    let committed = values(bootstrap, topic, "read_committed", 3);
    assert_eq!(
        committed,
        ["first", "new", "new"],
        "only committed flushes, in order"
    );
    let everything = values(bootstrap, topic, "read_uncommitted", 4);
    assert!(
        everything.contains(&"frozen".to_owned()),
        "the frozen owner's record did reach the log (aborted): {everything:?}"
    );
    assert!(!everything.contains(&"first-again".to_owned()));
}

/// An earlier owner's open answered late, after the partition had moved
/// on, fences the current owner's writer. The current owner still owns
/// the partition after `reopen_after`, so it opens again and its flush is
/// written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_fenced_by_a_late_open_opens_again_and_writes() {
    let (config, id) = partition_zero("refencing").await;
    let (kafka, topic) = (&config.kafka, &config.state_topic);
    let stop = CancellationToken::new();

    let owner = open(kafka, &id, topic, Duration::from_secs(1)).await;
    // The partition's first record: the owner knows all below offset 1.
    let next = owner.write(&[state("c1", "one")], &stop).await.unwrap();
    assert_eq!(next, Some(1));
    let late = open(kafka, &id, topic, NEVER).await;
    drop(late); // the earlier owner's writer, dropped with its task

    let started = std::time::Instant::now();
    let next = owner
        .write(&[state("c1", "two")], &stop)
        .await
        .expect("written after opening again");
    // Another writer was let in meanwhile: what lies below is not known.
    assert_eq!(next, None);
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "it waited first"
    );
    let committed = values(&kafka.bootstrap_servers, topic, "read_committed", 2);
    assert_eq!(committed, ["one", "two"]);
}

/// A state larger than the topic takes, or than the client sends, is
/// refused for good: its flush leaves it out and ends (nothing retries it
/// forever), and the flush's other states and the next flush are written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_kafka_refuses_for_good_is_left_out_and_the_writer_goes_on() {
    let (config, id, topic) = small_state_topic("refused").await;
    let kafka = &config.kafka;
    let stop = CancellationToken::new();
    let writer = open(kafka, &id, &topic, NEVER).await;

    // Kafka refuses it (the topic's limit): its delivery report says so.
    let for_the_topic = ("c1".to_owned(), Some(noise(4096)));
    write_refusing(&writer, &[for_the_topic], &stop).await;
    writer
        .write(&[state("c2", "small")], &stop)
        .await
        .expect("the next flush is written");
    // The client refuses it before it leaves (over `message.max.bytes`).
    let for_the_client = ("c4".to_owned(), Some(noise(1_100_000)));
    write_refusing(&writer, &[state("c3", "also small"), for_the_client], &stop).await;

    let committed = values(&kafka.bootstrap_servers, &topic, "read_committed", 2);
    assert_eq!(
        committed,
        ["small", "also small"],
        "only the states the topic takes"
    );
}

/// A state too large for the topic is refused alone. librdkafka does not
/// split a batch the broker refuses as too large, so the writer keeps its
/// batches within the topic's `max.message.bytes`: the states written
/// beside it in the same flush are committed, not refused with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_too_large_for_the_topic_does_not_take_its_batch_mates_down() {
    let (config, id, topic) = small_state_topic("batch-mates").await;
    let kafka = &config.kafka;
    let limit = {
        let (kafka, topic) = (kafka.clone(), topic.clone());
        tokio::task::spawn_blocking(move || {
            kafka.max_message_bytes(&[&topic], Duration::from_secs(30))
        })
        .await
        .unwrap()
        .expect("Kafka answers")
    };
    assert_eq!(limit, [Some(1024)]);
    let stop = CancellationToken::new();
    let writer = open(kafka, &id, &topic, NEVER).await;

    // Handed over together, so without a bound they share one batch.
    let flush = [
        state("c1", "before"),
        ("c2".to_owned(), Some(noise(4096))),
        state("c3", "after"),
    ];
    write_refusing(&writer, &flush, &stop).await;

    let committed = values(&kafka.bootstrap_servers, &topic, "read_committed", 2);
    assert_eq!(
        committed,
        ["before", "after"],
        "the states beside the refused one are written"
    );
}
