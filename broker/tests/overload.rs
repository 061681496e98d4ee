//! Load shedding and Kafka outages at the gRPC edge, with no Kafka at all:
//! the node points at a closed port, so every publish waits for Kafka.

use std::{net::SocketAddr, time::Duration};

use switchboard_broker::{
    config::BrokerConfig, kafka::KafkaConfig, server::Broker, shutdown::Shutdown,
};
use switchboard_proto::v1::{
    Channel, Direction, Envelope, PublishRequest, Text, envelope::Content,
    ingest_client::IngestClient,
};

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

#[tokio::test]
async fn sheds_load_past_the_bound_and_fails_fast_when_kafka_is_down() {
    let broker = Broker::bind(BrokerConfig {
        grpc_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        metrics_addr: None,
        // Nothing listens on port 1: Kafka never answers.
        kafka: KafkaConfig {
            bootstrap_servers: "127.0.0.1:1".into(),
            ..KafkaConfig::default()
        },
        max_in_flight: 1,
        ack_timeout: Duration::from_millis(1500),
        shutdown_grace: Duration::from_secs(3),
        ..BrokerConfig::default()
    })
    .await
    .unwrap();
    let addr = broker.local_addr();
    let shutdown = Shutdown::new();
    let server = tokio::spawn(broker.serve(shutdown.clone()));
    let client = IngestClient::connect(format!("http://{addr}"))
        .await
        .unwrap();

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

    // The first fails with UNAVAILABLE once the ack timeout passes.
    let down = first.await.unwrap().unwrap_err();
    assert_eq!(down.code(), tonic::Code::Unavailable, "{down:?}");

    // The slot is free again: the next publish is admitted (and times out the same way).
    let again = client.clone().publish(request()).await.unwrap_err();
    assert_eq!(again.code(), tonic::Code::Unavailable);

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}
