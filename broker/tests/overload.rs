//! Load shedding (past the in-flight bound, and past the calls one
//! connection may have open) and Kafka outages at the gRPC edge, with no real Kafka: a
//! silent listener makes every publish wait, and a closed port makes
//! librdkafka report every broker down.

use std::{
    net::SocketAddr,
    sync::OnceLock,
    time::{Duration, Instant},
};

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use switchboard_broker::{config::BrokerConfig, server::Broker};
use switchboard_proto::v1::{
    Channel, Direction, Envelope, PublishBatchRequest, PublishRequest, Text, envelope::Content,
    ingest_client::IngestClient,
};
use switchboard_runtime::{kafka::KafkaConfig, shutdown::Shutdown};

/// This process's metrics, recorded from the first call on: every test
/// calls it before it starts a node, so each node's counters are recorded.
fn metrics() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::set_global_recorder(recorder).expect("the only recorder of this process");
        handle
    })
}

/// The value of the series `name{labels}` (labels as rendered, e.g.
/// `rpc="publish_batch",channel="sms",code="ok"`), 0 when absent.
fn counter(name: &str, labels: &str) -> u64 {
    let series = if labels.is_empty() {
        name.to_owned()
    } else {
        format!("{name}{{{labels}}}")
    };
    metrics()
        .render()
        .lines()
        .find_map(|line| {
            let (key, value) = line.rsplit_once(' ')?;
            (key == series).then(|| value.parse().unwrap())
        })
        .unwrap_or(0)
}

fn request() -> PublishRequest {
    PublishRequest {
        envelope: Some(Envelope {
            tenant_id: "acme".into(),
            channel: Channel::Sms as i32,
            direction: Direction::Inbound as i32,
            conversation_id: "c-1".into(),
            content: Some(Content::Text(Text { body: "hi".into() })),
            ..Default::default()
        }),
        sequence: 0,
    }
}

/// A "Kafka" that accepts connections and never answers: publishes wait.
async fn silent_kafka() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    (addr, task)
}

async fn node(
    bootstrap: String,
    max_in_flight: usize,
    max_calls_per_connection: usize,
) -> (
    IngestClient<tonic::transport::Channel>,
    Shutdown,
    tokio::task::JoinHandle<anyhow::Result<()>>,
    SocketAddr,
) {
    metrics();
    let broker = Broker::bind(BrokerConfig {
        grpc_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        metrics_addr: None,
        http_addr: None,
        kafka: KafkaConfig {
            bootstrap_servers: bootstrap,
            ..KafkaConfig::default()
        },
        max_in_flight,
        max_calls_per_connection,
        ack_timeout: Duration::from_millis(1500),
        shutdown_grace: Duration::from_secs(3),
        ..BrokerConfig::default()
    })
    .await
    .unwrap();
    let addr = broker.local_addr();
    let shutdown = Shutdown::new();
    let server = tokio::spawn(broker.serve(shutdown.clone()));
    (
        IngestClient::connect(format!("http://{addr}"))
            .await
            .unwrap(),
        shutdown,
        server,
        addr,
    )
}

/// Stops the node and checks it shut down cleanly within 10 s.
async fn stop(shutdown: Shutdown, server: tokio::task::JoinHandle<anyhow::Result<()>>) {
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn sheds_load_past_the_in_flight_bound() {
    let (kafka, silent) = silent_kafka().await;
    let (client, shutdown, server, _) = node(kafka.to_string(), 1, 64).await;

    // The first publish takes the only in-flight slot and waits for Kafka.
    let first = tokio::spawn({
        let mut client = client.clone();
        async move { client.publish(request()).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The second is refused at once instead of queueing.
    let started = std::time::Instant::now();
    let shed = client.clone().publish(request()).await.unwrap_err();
    assert_eq!(shed.code(), tonic::Code::ResourceExhausted, "{shed:?}");
    assert!(started.elapsed() < Duration::from_millis(500));

    // The first fails with UNAVAILABLE once the ack timeout passes...
    let down = first.await.unwrap().unwrap_err();
    assert_eq!(down.code(), tonic::Code::Unavailable, "{down:?}");
    // ...which frees the slot: the next publish is admitted (and times out the
    // same way). The slot is given back as the first call's future ends, which
    // may be a moment after its answer reached the client.
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    let again = loop {
        let status = client.clone().publish(request()).await.unwrap_err();
        if status.code() != tonic::Code::ResourceExhausted || std::time::Instant::now() > deadline {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(again.code(), tonic::Code::Unavailable, "{again:?}");

    stop(shutdown, server).await;
    silent.abort();
}

#[tokio::test]
async fn fails_fast_when_no_kafka_broker_is_reachable() {
    // Nothing listens on port 1: librdkafka soon reports every broker down.
    let (client, shutdown, server, _) = node("127.0.0.1:1".into(), 10, 64).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    for _ in 0..3 {
        let started = std::time::Instant::now();
        let status = client.clone().publish(request()).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
        assert!(
            started.elapsed() < Duration::from_millis(300),
            "took {:?}",
            started.elapsed()
        );
    }
    stop(shutdown, server).await;
}

#[tokio::test]
async fn calls_past_the_per_connection_bound_wait_in_the_client() {
    let (kafka, silent) = silent_kafka().await;
    let (client, shutdown, server, addr) = node(kafka.to_string(), 100, 2).await;
    let full_before = counter("switchboard_ingest_connection_full_total", "");

    // Two publishes on one connection wait for Kafka, and the second takes
    // the connection's last stream (counted)...
    let waiting: Vec<_> = (0..2)
        .map(|_| {
            let mut client = client.clone();
            tokio::spawn(async move { client.publish(request()).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        counter("switchboard_ingest_connection_full_total", ""),
        full_before + 1
    );

    // ...so a third on the same connection is not sent: the node advertises
    // two streams, and the client waits for one (nothing refused, nothing
    // read by the node).
    let started = std::time::Instant::now();
    let mut third = {
        let mut client = client.clone();
        tokio::spawn(async move { client.publish(request()).await })
    };
    let early = tokio::time::timeout(Duration::from_millis(300), &mut third).await;
    assert!(
        early.is_err(),
        "answered while the connection was full: {early:?}"
    );
    assert_eq!(
        counter("switchboard_ingest_connection_full_total", ""),
        full_before + 1,
        "the node took a third call on a connection of two streams"
    );

    // Another connection has its own streams: its call is admitted and waits.
    let mut other = IngestClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let admitted = tokio::time::timeout(Duration::from_millis(300), other.publish(request())).await;
    assert!(admitted.is_err(), "not admitted: {admitted:?}");
    for call in waiting {
        let status = call.await.unwrap().unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    }
    // Their streams are free again (1.5 s, ack_timeout, after they began):
    // only then is the third call sent, and it waits for Kafka as long.
    let status = third.await.unwrap().unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(2500),
        "sent before a stream was free: {:?}",
        started.elapsed()
    );

    stop(shutdown, server).await;
    silent.abort();
}

/// A batch takes one in-flight slot per envelope: past `max_in_flight`,
/// the rest get RESOURCE_EXHAUSTED (or ABORTED after a failure of their
/// conversation) at once, and every envelope is counted under
/// `rpc="publish_batch"`.
#[tokio::test]
async fn a_batch_takes_a_slot_per_envelope_and_counts_each() {
    let (kafka, silent) = silent_kafka().await;
    let (client, shutdown, server, _) = node(kafka.to_string(), 2, 64).await;
    let series = |code: &str| {
        counter(
            "switchboard_ingest_requests_total",
            &format!("rpc=\"publish_batch\",channel=\"sms\",code=\"{code}\""),
        )
    };
    let before: Vec<u64> = ["unavailable", "resource_exhausted", "aborted"]
        .iter()
        .map(|c| series(c))
        .collect();
    let conversation = |c: &str| Envelope {
        conversation_id: c.into(),
        ..request().envelope.unwrap()
    };
    let started = Instant::now();
    let response = client
        .clone()
        .publish_batch(PublishBatchRequest {
            envelopes: vec![
                conversation("a"),
                conversation("b"),
                conversation("c"),
                conversation("a"),
                conversation("c"),
            ],
        })
        .await
        .unwrap()
        .into_inner();
    let codes: Vec<_> = response
        .results
        .iter()
        .map(|r| r.error.as_ref().map_or(0, |e| e.code))
        .collect();
    use tonic::Code::{Aborted, ResourceExhausted, Unavailable};
    // a and b take both slots and time out in Kafka; c finds none.
    assert_eq!(
        codes,
        [
            Unavailable as i32,
            Unavailable as i32,
            ResourceExhausted as i32,
            ResourceExhausted as i32,
            Aborted as i32
        ],
        "{response:?}"
    );
    assert_eq!(response.failed_count, 5);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "one ack timeout"
    );
    let after: Vec<u64> = ["unavailable", "resource_exhausted", "aborted"]
        .iter()
        .map(|c| series(c))
        .collect();
    assert_eq!(
        after
            .iter()
            .zip(&before)
            .map(|(a, b)| a - b)
            .collect::<Vec<_>>(),
        [2, 2, 1]
    );
    stop(shutdown, server).await;
    silent.abort();
}
