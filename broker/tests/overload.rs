//! Load shedding (past the in-flight bound, and past the calls one
//! connection may have open) and Kafka outages at the gRPC edge, with no real Kafka: a
//! silent listener makes every publish wait, and a closed port makes
//! librdkafka report every broker down.

use std::{net::SocketAddr, time::Duration};

use switchboard_broker::{config::BrokerConfig, server::Broker};
use switchboard_proto::v1::{
    Channel, Direction, Envelope, PublishRequest, Text, envelope::Content,
    ingest_client::IngestClient,
};
use switchboard_runtime::{kafka::KafkaConfig, shutdown::Shutdown};

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
    let broker = Broker::bind(BrokerConfig {
        grpc_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        metrics_addr: None,
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
    // ...which frees the slot: the next publish is admitted (and times out the same way).
    let again = client.clone().publish(request()).await.unwrap_err();
    assert_eq!(again.code(), tonic::Code::Unavailable);

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
async fn sheds_calls_past_the_per_connection_bound() {
    let (kafka, silent) = silent_kafka().await;
    let (client, shutdown, server, addr) = node(kafka.to_string(), 100, 2).await;

    // Two publishes on one connection wait for Kafka...
    let waiting: Vec<_> = (0..2)
        .map(|_| {
            let mut client = client.clone();
            tokio::spawn(async move { client.publish(request()).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;

    // ...so a third on the same connection is refused before it is read.
    let started = std::time::Instant::now();
    let shed = client.clone().publish(request()).await.unwrap_err();
    assert_eq!(shed.code(), tonic::Code::ResourceExhausted, "{shed:?}");
    assert!(started.elapsed() < Duration::from_millis(500));

    // Another connection has its own bound: its call is admitted and waits.
    let mut other = IngestClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let admitted = tokio::time::timeout(Duration::from_millis(300), other.publish(request())).await;
    assert!(admitted.is_err(), "not admitted: {admitted:?}");
    for call in waiting {
        let status = call.await.unwrap().unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    }

    stop(shutdown, server).await;
    silent.abort();
}
