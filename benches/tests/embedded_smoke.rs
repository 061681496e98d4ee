//! The embedded default on librdkafka's in-memory mock cluster, driven by
//! the load generator binary: a fast check that the whole pipeline and the
//! load generator work, with nothing installed.

use std::{net::SocketAddr, time::Duration};

use switchboard_benches::embedded::{Embedded, EmbeddedConfig, demo_secrets};
use switchboard_broker::http::signature::meta_signature;
use switchboard_proto::v1::{Channel, Direction, Envelope, envelope::Content};
use switchboard_testkit as testkit;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_generator_drives_the_embedded_pipeline() {
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    let embedded = Embedded::start(EmbeddedConfig {
        grpc_addr: any,
        http_addr: Some(any),
        auth_file: None,
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

    // The load generator, four ways, each watched end to end on the
    // analytics topic: unary in closed loop, a stream in open loop,
    // webhooks of every channel, and batches of 25 in closed loop (with 20
    // conversations, consecutive batches share conversations, so order
    // across batches is checked too).
    let bootstrap = embedded.config.kafka.bootstrap_servers.clone();
    let dir = std::env::temp_dir().join(testkit::random_topic("bench-report"));
    std::fs::create_dir_all(&dir).unwrap();
    let runs: [(&str, &[&str]); 4] = [
        ("unary", &["--messages", "200", "--concurrency", "16"]),
        ("stream", &["--messages", "200", "--rate", "400"]),
        ("webhook", &["--duration", "1s", "--rate", "100"]),
        (
            "batch",
            &[
                "--messages",
                "210",
                "--batch-size",
                "25",
                "--concurrency",
                "3",
            ],
        ),
    ];
    for (rpc, pace) in runs {
        let (json, markdown, plot) = (
            dir.join(format!("{rpc}.json")),
            dir.join(format!("{rpc}.md")),
            dir.join(format!("{rpc}.png")),
        );
        let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_switchboard-bench"))
            .args(["--target", &target, "--rpc", rpc, "--conversations", "20"])
            .args(pace)
            .args(["--sink-kafka", &bootstrap, "--sink-topic"])
            .arg(&embedded.config.analytics_topic)
            .arg("--json")
            .arg(&json)
            .arg("--markdown")
            .arg(&markdown)
            .arg("--plot")
            .arg(&plot)
            .output()
            .await
            .unwrap();
        assert!(
            output.status.success(),
            "{rpc}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let report: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
        let sent = match rpc {
            "webhook" => 100,
            "batch" => 210, // eight full batches and a last one of 10
            _ => 200,
        };
        assert_eq!(report["sent"], sent, "{rpc}: {report}");
        assert_eq!(report["acked"], sent, "{rpc}: {report}");
        assert_eq!(report["errors"], serde_json::json!({}), "{rpc}");
        assert!(report["latency_ms"]["p99"].as_f64().unwrap() > 0.0);
        let e2e = &report["end_to_end"];
        assert_eq!(e2e["received"], sent, "{rpc}: {e2e}");
        assert_eq!(e2e["lost"], 0, "{rpc}: {e2e}");
        assert_eq!(e2e["order_violations"], 0, "{rpc}: {e2e}");
        assert!(e2e["latency_ms"]["p50"].as_f64().unwrap() > 0.0);
        assert!(!report["timeline"].as_array().unwrap().is_empty());
        let markdown = std::fs::read_to_string(&markdown).unwrap();
        assert!(markdown.contains("| ingest → `"), "{markdown}");
        let png = std::fs::read(&plot).unwrap();
        assert!(png.starts_with(b"\x89PNG"), "{rpc}: not a PNG");
    }
    let _ = std::fs::remove_dir_all(dir);

    // A run without an end, or with a bad option, is refused with a reason.
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_switchboard-bench"))
        .args(["--target", &target, "--rate", "0", "--messages", "5"])
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("--rate must be above 0"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_switchboard-bench"))
        .args(["--target", &target, "--rpc", "batch", "--batch-size", "0"])
        .args(["--messages", "5"])
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("--batch-size must be at least 1"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    // All 710 reach analytics through the workers.
    let topic = embedded.config.analytics_topic.clone();
    let records = tokio::task::spawn_blocking(move || {
        // Two workers: the second one's join rebalances, so messages in
        // flight then may be routed twice (at least once). Wait for 710 distinct.
        testkit::read_topic(&bootstrap, &topic, Duration::from_secs(60), |r| {
            testkit::analytics_message_ids(r).len() >= 710
        })
    })
    .await
    .unwrap();
    let ids = testkit::analytics_message_ids(&records);
    assert_eq!(ids.len(), 710);

    // The echo bot's replies go back into the pipeline, on the channel's outbound topic.
    let bootstrap = embedded.config.kafka.bootstrap_servers.clone();
    let outbound = embedded
        .config
        .workers_config(embedded.pipeline.bot_addr)
        .outbound_topic(Channel::Webchat);
    let replies = tokio::task::spawn_blocking(move || {
        testkit::read_topic(&bootstrap, &outbound, Duration::from_secs(60), |r| {
            r.len() >= 600
        })
    })
    .await
    .unwrap();
    assert!(replies.len() >= 600, "{} replies", replies.len());
    for reply in &replies {
        use prost::Message as _;
        use rdkafka::Message as _;
        let envelope = Envelope::decode(reply.payload().unwrap()).unwrap();
        assert_eq!(envelope.direction(), Direction::Outbound);
        assert_eq!(envelope.tenant_id, "demo");
        assert!(
            matches!(&envelope.content, Some(Content::Text(t)) if t.body.starts_with("echo: Hello"))
        );
        assert_eq!(reply.key().unwrap(), envelope.conversation_key().as_bytes());
    }

    // The sender stage takes them to the web chat stand-in: they reach the customer.
    let webchat = embedded.providers.last().expect("the web chat stand-in");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while webchat.accepted().len() < 600 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let delivered = webchat.accepted();
    assert!(
        delivered.len() >= 600,
        "{} replies delivered",
        delivered.len()
    );
    assert!(
        delivered
            .iter()
            .all(|r| r.text().is_some_and(|t| t.starts_with("echo: ")))
    );

    // The HTTP webhook listener checks the built-in demo tenant's secrets
    // (fail closed): a web chat message without the key is refused, with
    // it answered once Kafka has it; so is a signed WhatsApp webhook.
    let http = embedded
        .pipeline
        .http_addr
        .expect("the HTTP listener is on");
    let client = reqwest::Client::new();
    let webchat = |key: Option<&str>| {
        let request = client
            .post(format!("http://{http}/webhooks/demo/webchat"))
            .header("content-type", "application/json")
            .body(r#"{"conversationId":"site:v-1","channelMessageId":"wc-1","customer":{"id":"v-1"},"business":{"id":"site"},"text":{"body":"hello"}}"#);
        match key {
            Some(key) => request.bearer_auth(key),
            None => request,
        }
        .send()
    };
    assert_eq!(
        webchat(None).await.unwrap().status(),
        reqwest::StatusCode::UNAUTHORIZED
    );
    let response = webchat(Some(demo_secrets::WEBCHAT_KEY)).await.unwrap();
    assert_eq!(response.status(), reqwest::StatusCode::OK);
    let answer: serde_json::Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
    assert_eq!(
        answer["results"].as_array().map(Vec::len),
        Some(1),
        "{answer}"
    );
    let body = br#"{"object":"whatsapp_business_account","entry":[{"id":"1","changes":[{"field":"messages","value":{"messaging_product":"whatsapp","metadata":{"display_phone_number":"15550000000","phone_number_id":"demo-phone-number-id"},"messages":[{"from":"16505551234","id":"wamid.smoke-1","timestamp":"1700000000","type":"text","text":{"body":"hello"}}]}}]}]}"#;
    let whatsapp = |signature: String| {
        client
            .post(format!("http://{http}/webhooks/demo/whatsapp"))
            .header("content-type", "application/json")
            .header("x-hub-signature-256", signature)
            .body(body.to_vec())
            .send()
    };
    let wrong = meta_signature(b"not-the-demo-secret", body);
    assert_eq!(
        whatsapp(wrong).await.unwrap().status(),
        reqwest::StatusCode::UNAUTHORIZED
    );
    let signed = meta_signature(demo_secrets::APP_SECRET.as_bytes(), body);
    assert_eq!(
        whatsapp(signed).await.unwrap().status(),
        reqwest::StatusCode::OK
    );

    let Embedded { mock, pipeline, .. } = embedded;
    pipeline.stop().await.unwrap();
    // Tearing down the mock cluster under clients that are still closing can hang.
    std::mem::forget(mock);
}
