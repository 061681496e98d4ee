//! Started against a Kafka that does not answer, the node says so at once,
//! with the address and librdkafka's reason, and keeps saying it every few
//! seconds while it waits, instead of a minute of silence.

use std::{
    process::Stdio,
    time::{Duration, Instant},
};

use tokio::io::{AsyncBufReadExt, BufReader};

#[tokio::test]
async fn an_unreachable_kafka_is_reported_at_once_and_again() {
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let bootstrap = format!("127.0.0.1:{port}");
    let mut node = tokio::process::Command::new(env!("CARGO_BIN_EXE_switchboard-broker"))
        .args(["--kafka-bootstrap", &bootstrap])
        .args([
            "--grpc-addr",
            "127.0.0.1:0",
            "--metrics-addr",
            "127.0.0.1:0",
            "--http-addr",
            "off",
        ])
        .env("RUST_LOG", "info")
        .env_remove("SWITCHBOARD_BROKER_CONFIG")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let started = Instant::now();
    let mut lines = BufReader::new(node.stderr.take().unwrap()).lines();
    let mut reports = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(12), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains(&bootstrap) && line.contains("not answering") {
                reports.push((started.elapsed(), line));
                if reports.len() == 2 {
                    return;
                }
            }
        }
    })
    .await;
    node.kill().await.unwrap();
    let (first, line) = reports
        .first()
        .expect("no line said Kafka is not answering");
    assert!(
        *first < Duration::from_secs(3),
        "first said after {first:?}"
    );
    assert!(
        line.contains("Connection refused"),
        "librdkafka's reason: {line}"
    );
    assert_eq!(reports.len(), 2, "said once only: {reports:?}");
}
