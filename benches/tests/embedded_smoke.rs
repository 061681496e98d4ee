//! The embedded default on librdkafka's in-memory mock cluster, driven by
//! the load generator binary: a fast check that the whole pipeline and the
//! load generator work, with nothing installed.

use std::{net::SocketAddr, time::Duration};

use switchboard_benches::embedded::{Embedded, EmbeddedConfig};
use switchboard_broker::testkit;
use switchboard_proto::v1::{Channel, Direction, Envelope, envelope::Content};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_generator_drives_the_embedded_pipeline() {
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    let embedded = Embedded::start(EmbeddedConfig {
        grpc_addr: any,
        bot_addr: any,
        rules_file: None,
        partitions: 4,
        workers: 2,
    })
    .await
    .unwrap();
    let target = format!("http://{}", embedded.pipeline.grpc_addr);

    // Health answers SERVING for the Ingest service.
    let channel = tonic::transport::Endpoint::from_shared(target.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let serving = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "switchboard.v1.Ingest".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        serving.status(),
        tonic_health::pb::health_check_response::ServingStatus::Serving
    );

    let report = std::env::temp_dir().join(testkit::random_topic("bench-report"));
    for mode in ["unary", "stream"] {
        let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_switchboard-bench"))
            .args([
                "--target",
                &target,
                "--mode",
                mode,
                "--messages",
                "200",
                "--conversations",
                "20",
            ])
            .args(["--max-duration", "60s", "--json"])
            .arg(&report)
            .output()
            .await
            .unwrap();
        assert!(
            output.status.success(),
            "{mode}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
        assert_eq!(json["acked"], 200, "{mode}: {json}");
        assert_eq!(json["failed"], serde_json::json!({}), "{mode}");
        assert!(json["latency_ms"]["p99"].as_f64().unwrap() > 0.0);
    }
    let _ = std::fs::remove_file(report);

    // All 400 reach analytics through the workers.
    let bootstrap = embedded.config.kafka.bootstrap_servers.clone();
    let topic = embedded.config.analytics_topic.clone();
    let records = tokio::task::spawn_blocking(move || {
        // Two workers: the second one's join rebalances, so messages in
        // flight then may be routed twice (at least once). Wait for 400 distinct.
        testkit::read_topic(&bootstrap, &topic, Duration::from_secs(60), |r| {
            testkit::analytics_message_ids(r).len() >= 400
        })
    })
    .await
    .unwrap();
    let ids = testkit::analytics_message_ids(&records);
    assert_eq!(ids.len(), 400);

    // The echo bot's replies go back into the pipeline, on the channel's outbound topic.
    let bootstrap = embedded.config.kafka.bootstrap_servers.clone();
    let outbound = embedded
        .config
        .workers_config(embedded.pipeline.bot_addr)
        .outbound_topic(Channel::Webchat);
    let replies = tokio::task::spawn_blocking(move || {
        testkit::read_topic(&bootstrap, &outbound, Duration::from_secs(60), |r| {
            r.len() >= 400
        })
    })
    .await
    .unwrap();
    assert!(replies.len() >= 400, "{} replies", replies.len());
    for reply in &replies {
        use prost::Message as _;
        use rdkafka::Message as _;
        let envelope = Envelope::decode(reply.payload().unwrap()).unwrap();
        assert_eq!(envelope.direction(), Direction::Outbound);
        assert_eq!(envelope.tenant_id, "demo");
        assert!(
            matches!(&envelope.content, Some(Content::Text(t)) if t.body.starts_with("echo: hello"))
        );
        assert_eq!(reply.key().unwrap(), envelope.conversation_key().as_bytes());
    }

    let Embedded { mock, pipeline, .. } = embedded;
    pipeline.stop().await.unwrap();
    // Tearing down the mock cluster under clients that are still closing can hang.
    std::mem::forget(mock);
}
