//! OTLP export: with `OTEL_EXPORTER_OTLP_ENDPOINT` set, the embedded
//! pipeline exports its spans to an OpenTelemetry collector over OTLP/HTTP,
//! and the ingestion and routing spans of a message carry the trace id its
//! caller sent in `traceparent`.

use std::{
    net::SocketAddr,
    process::Stdio,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{Router, body::Bytes, extract::State, routing::post};
use switchboard_proto::v1::{Channel, PublishRequest, ingest_client::IngestClient};
use switchboard_testkit as testkit;

type Received = Arc<Mutex<Vec<u8>>>;

/// A stand-in OpenTelemetry collector: keeps every `/v1/traces` body.
async fn collector() -> (SocketAddr, Received) {
    async fn traces(State(received): State<Received>, body: Bytes) -> &'static str {
        received.lock().unwrap().extend_from_slice(&body);
        ""
    }
    let received = Received::default();
    let app = Router::new()
        .route("/v1/traces", post(traces))
        .with_state(received.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, received)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_of_one_message_reach_the_collector_in_the_callers_trace() {
    let (collector, received) = collector().await;
    let grpc = free_port();
    let mut embedded = tokio::process::Command::new(env!("CARGO_BIN_EXE_switchboard-embedded"))
        .args(["--grpc-addr", &format!("127.0.0.1:{grpc}")])
        .args(["--bot-addr", &format!("127.0.0.1:{}", free_port())])
        .args(["--metrics-addr", &format!("127.0.0.1:{}", free_port())])
        .args(["--http-addr", "off"])
        .args(["--partitions", "2", "--workers", "1"])
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{collector}"))
        .env("OTEL_BSP_SCHEDULE_DELAY", "200")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();

    let deadline = Instant::now() + Duration::from_secs(60);
    let mut client = loop {
        match IngestClient::connect(format!("http://127.0.0.1:{grpc}")).await {
            Ok(client) => break client,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("the embedded pipeline did not start: {e}"),
        }
    };
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let mut request = tonic::Request::new(PublishRequest {
        envelope: Some(testkit::inbound_text(Channel::Webchat, "traced", "hello")),
        sequence: 0,
    });
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{trace_id}-00f067aa0ba902b7-01")
            .parse()
            .unwrap(),
    );
    client.publish(request).await.unwrap();

    // OTLP/protobuf carries ids as raw bytes and names as plain strings.
    let trace_bytes: Vec<u8> = (0..16)
        .map(|i| u8::from_str_radix(&trace_id[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    let wanted: [&[u8]; 4] = [
        b"switchboard-embedded",
        b"ingest.publish",
        b"worker.route",
        &trace_bytes,
    ];
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let body = received.lock().unwrap().clone();
        if wanted.iter().all(|w| contains(&body, w)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the collector got {} bytes; missing: {:?}",
            body.len(),
            wanted
                .iter()
                .filter(|w| !contains(&body, w))
                .map(|w| String::from_utf8_lossy(w))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    embedded.kill().await.unwrap();
}
