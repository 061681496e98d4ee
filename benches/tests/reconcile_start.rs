//! Where the reconciler starts reading, on a real Apache Kafka: every
//! partition from a numbered offset looked up when it starts, never "the
//! end" looked up later. A destination partition with nothing recent when
//! the reconciler started (its routing began a moment later) used to start
//! at the end as it was when fetching began, past the first records routed
//! meanwhile; those were then reported lost.
//!
//! Run with `deploy/test.sh` (it starts Kafka and sets `SWITCHBOARD_TEST_KAFKA`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rdkafka::{
    Offset,
    producer::{FutureProducer, FutureRecord},
};
use switchboard_benches::reconcile::{assignment, records::TopicNames};
use switchboard_testkit as testkit;

#[tokio::test]
async fn partitions_with_nothing_recent_start_at_their_end_as_it_was() {
    let bootstrap = testkit::real_kafka();
    let kafka = testkit::kafka_config(&bootstrap, 3);
    let names = TopicNames::prefixed(&testkit::random_topic("reconcile-start"));
    kafka
        .ensure_topics(&[&names.analytics_topic])
        .await
        .expect("topic created");
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    // Partition 0: two records from an hour ago. Partition 1: one old, one
    // new. Partition 2: nothing.
    let producer: FutureProducer = kafka.producer_config(&[]).create().unwrap();
    for (partition, age) in [(0, 3_600_000), (0, 3_600_000), (1, 3_600_000), (1, 0)] {
        producer
            .send(
                FutureRecord::<(), _>::to(&names.analytics_topic)
                    .partition(partition)
                    .timestamp(now_ms - age)
                    .payload("x"),
                Duration::from_secs(10),
            )
            .await
            .expect("written");
    }

    let (assigned, missing) = assignment(&kafka, &names, now_ms as u64).await.unwrap();

    assert!(missing.contains(&names.dlq_topic), "{missing:?}");
    let mut starts: Vec<(i32, Offset)> = assigned
        .elements_for_topic(&names.analytics_topic)
        .iter()
        .map(|e| (e.partition(), e.offset()))
        .collect();
    starts.sort_by_key(|(p, _)| *p);
    assert_eq!(
        starts,
        [
            (0, Offset::Offset(2)),
            (1, Offset::Offset(1)),
            (2, Offset::Offset(0))
        ],
        "the first recent record, or the end as a number"
    );
}
