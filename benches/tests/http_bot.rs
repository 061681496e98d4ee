//! HTTP JSON webhook bots on the real local Kafka: messages are POSTed as
//! proto3 JSON with their trace context, replies and handoffs come back as
//! JSON, and a bot that keeps failing trips its circuit breaker, so it is
//! not called again while the circuit is open.
//!
//! Run with `deploy/test.sh` (it starts Kafka and sets `SWITCHBOARD_TEST_KAFKA`).

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode},
    routing::post,
};
use prost::Message as _;
use rdkafka::{Message as _, message::Headers};
use switchboard_benches::pipeline::{Pipeline, PipelineConfig};
use switchboard_proto::v1::{
    AnalyticsRecord, BotRequest, Channel, ConversationState, Direction, Envelope, PublishRequest,
    envelope::Content,
};
use switchboard_testkit::{self as testkit, RecordingBot};
use switchboard_workers::{
    destinations::{
        bot::{BotConfig, BotProtocol},
        topics::headers,
    },
    route::decide::BOT_REPLY,
};
use tokio::net::TcpListener;

/// What the webhook received: (traceparent, request).
type Calls = Arc<Mutex<Vec<(Option<String>, BotRequest)>>>;

/// Serves a webhook bot on 127.0.0.1: `/echo` answers text with an echo
/// (and a handoff for "human please"); `/down` always answers 503.
async fn serve_webhook() -> (SocketAddr, Calls, tokio::sync::oneshot::Sender<()>) {
    async fn echo(
        State(calls): State<Calls>,
        headers: HeaderMap,
        body: Bytes,
    ) -> (StatusCode, String) {
        let request: BotRequest = serde_json::from_slice(&body).expect("a BotRequest in JSON");
        let text = match request.envelope.as_ref().and_then(|e| e.content.as_ref()) {
            Some(Content::Text(t)) => t.body.clone(),
            _ => String::new(),
        };
        let trace = headers
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        calls.lock().unwrap().push((trace, request));
        let answer = if text == "human please" {
            // proto3 JSON field names, as any JSON bot would write them.
            serde_json::json!({ "handoff": true, "handoffQueue": "vip" })
        } else {
            serde_json::json!({ "replies": [{ "text": { "body": format!("http echo: {text}") } }] })
        };
        (StatusCode::OK, answer.to_string())
    }
    async fn down(State(calls): State<Calls>, body: Bytes) -> StatusCode {
        calls
            .lock()
            .unwrap()
            .push((None, serde_json::from_slice(&body).unwrap()));
        StatusCode::SERVICE_UNAVAILABLE
    }
    let calls = Calls::default();
    let app = Router::new()
        .route("/echo", post(echo))
        .route("/down", post(down))
        .with_state(calls.clone());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stop_rx.await;
            })
            .await
            .unwrap();
    });
    (addr, calls, stop_tx)
}

fn say(conversation: &str, body: &str) -> PublishRequest {
    testkit::publish_request(testkit::inbound_text(Channel::Webchat, conversation, body))
}

async fn pipeline_with(
    prefix: &str,
    rules: &str,
    bots: &[(&str, BotConfig)],
) -> (PipelineConfig, std::path::PathBuf) {
    let bootstrap = testkit::real_kafka();
    let mut config =
        PipelineConfig::isolated(testkit::kafka_config(&bootstrap, 2), prefix).from_start();
    let path = std::env::temp_dir().join(format!("{}.toml", testkit::random_topic(prefix)));
    std::fs::write(&path, rules).unwrap();
    config.rules_file = Some(path.clone());
    // The queue the webhook bot hands off to; a name no config knows
    // would go to the default queue.
    config
        .agents
        .queues
        .insert("vip".into(), Default::default());
    config.extra_bots = bots
        .iter()
        .map(|(name, c)| ((*name).to_owned(), c.clone()))
        .collect();
    config.create_topics().await.unwrap();
    (config, path)
}

async fn read(bootstrap: &str, topic: &str, want: usize) -> Vec<rdkafka::message::OwnedMessage> {
    testkit::read_topic_async(bootstrap, topic, Duration::from_secs(60), move |r| {
        r.len() >= want
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real local Kafka: run deploy/test.sh"]
async fn webhook_bot_gets_json_and_its_replies_and_handoffs_take_effect() {
    let (addr, calls, stop_webhook) = serve_webhook().await;
    let webhook = BotConfig::new(BotProtocol::Http, format!("http://{addr}/echo"));
    let (config, rules) = pipeline_with(
        "test.httpbot",
        "default = [{ bot = \"web\" }]\n",
        &[("web", webhook)],
    )
    .await;
    let bootstrap = testkit::real_kafka();
    let pipeline = Pipeline::start(&config, RecordingBot::default())
        .await
        .unwrap();
    let mut client = pipeline.client().await.unwrap();
    for body in ["hello", "human please", "still there?"] {
        client.publish(say("web-1", body)).await.unwrap();
    }

    // The reply went out on the channel's outbound topic.
    let outbound = config
        .workers_config(pipeline.bot_addr)
        .outbound_topic(Channel::Webchat);
    let replies = read(&bootstrap, &outbound, 1).await;
    let reply = Envelope::decode(replies[0].payload().unwrap()).unwrap();
    assert!(matches!(&reply.content, Some(Content::Text(t)) if t.body == "http echo: hello"));
    assert_eq!(
        (reply.direction(), reply.conversation_id.as_str()),
        (Direction::Outbound, "web-1")
    );
    // The reply is a message of its own: on analytics right after the
    // message it answers, decided as a bot reply, with the id it left with.
    let records: Vec<AnalyticsRecord> = read(&bootstrap, &config.analytics_topic, 4)
        .await
        .iter()
        .map(|m| AnalyticsRecord::decode(m.payload().unwrap()).unwrap())
        .collect();
    let decided_by: Vec<&str> = records
        .iter()
        .map(|r| r.decision.as_ref().unwrap().rule_id.as_str())
        .collect();
    assert_eq!(decided_by, ["default", BOT_REPLY, "default", "default"]);
    let answered = records[0].envelope.as_ref().unwrap();
    assert_eq!(records[1].envelope.as_ref().unwrap(), &reply);
    let decision = records[1].decision.as_ref().unwrap();
    assert_eq!(
        decision.reason,
        format!("reply of bot web to message {}", answered.message_id)
    );
    assert_eq!(decision.message_id, reply.message_id);
    // And the conversation's state knows when it left.
    let left = reply.received_at.unwrap();
    let states = testkit::read_topic_async(
        &bootstrap,
        &config.state_topic,
        Duration::from_secs(60),
        |r| {
            r.iter().any(|m| {
                ConversationState::decode(m.payload().unwrap_or_default())
                    .is_ok_and(|s| s.last_outbound_at.is_some())
            })
        },
    )
    .await;
    let last_outbound = states
        .iter()
        .filter_map(|m| {
            ConversationState::decode(m.payload()?)
                .ok()?
                .last_outbound_at
        })
        .next_back()
        .expect("a state with the reply's time");
    assert_eq!(last_outbound, left);
    // The JSON handoff, then the next message, went to the agents' queue.
    let tasks = read(&bootstrap, &config.agent_queue_topic, 2).await;
    let bodies: Vec<String> = tasks
        .iter()
        .map(|t| testkit::agent_task(t.payload().unwrap()))
        // The tenant's own vip queue.
        .inspect(|task| assert_eq!(task.queue, "acme/vip"))
        .map(|task| match task.envelope.unwrap().content {
            Some(Content::Text(t)) => t.body,
            other => panic!("not a text: {other:?}"),
        })
        .collect();
    assert_eq!(bodies, ["human please", "still there?"]);
    let calls = calls.lock().unwrap().clone();
    assert_eq!(
        calls.len(),
        2,
        "the bot saw the messages before the handoff only"
    );
    for (trace, request) in &calls {
        let trace = trace.as_deref().expect("traceparent header");
        assert!(trace.starts_with("00-") && trace.len() == 55, "{trace}");
        assert_eq!(request.decision.as_ref().unwrap().rule_id, "default");
    }
    pipeline.stop().await.unwrap();
    let _ = stop_webhook.send(());
    let _ = std::fs::remove_file(rules);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real local Kafka: run deploy/test.sh"]
async fn a_failing_bot_trips_its_circuit_and_is_left_alone() {
    let (addr, calls, stop_webhook) = serve_webhook().await;
    let mut down = BotConfig::new(BotProtocol::Http, format!("http://{addr}/down"));
    down.circuit_failures = 3;
    down.circuit_open_for = Duration::from_secs(120);
    let (mut config, rules) = pipeline_with(
        "test.circuit",
        "default = [{ bot = \"down\" }]\n",
        &[("down", down)],
    )
    .await;
    config.max_attempts = 5;
    config.retry_backoff = Duration::from_millis(10);
    let bootstrap = testkit::real_kafka();
    let pipeline = Pipeline::start(&config, RecordingBot::default())
        .await
        .unwrap();
    let mut client = pipeline.client().await.unwrap();
    // One conversation, so the messages are tried one after the other.
    for body in ["first", "second", "third"] {
        client.publish(say("down-1", body)).await.unwrap();
    }
    let letters = read(&bootstrap, &config.dlq_topic, 3).await;
    assert_eq!(
        letters.len(),
        3,
        "each message was dead-lettered after its budget"
    );
    let errors: Vec<String> = letters
        .iter()
        .map(|m| {
            let h = m.headers().unwrap();
            let error = (0..h.count())
                .map(|i| h.get(i))
                .find(|h| h.key == headers::ERROR)
                .unwrap();
            String::from_utf8_lossy(error.value.unwrap()).into_owned()
        })
        .collect();
    // The first message's last attempts already found the circuit open.
    assert!(
        errors.iter().all(|e| e.contains("circuit open")),
        "{errors:?}"
    );
    // Three failures opened the circuit; the other 12 attempts never reached the bot.
    let per_message: HashMap<String, usize> =
        calls
            .lock()
            .unwrap()
            .iter()
            .fold(HashMap::new(), |mut m, (_, r)| {
                let body = match r.envelope.as_ref().and_then(|e| e.content.as_ref()) {
                    Some(Content::Text(t)) => t.body.clone(),
                    _ => String::new(),
                };
                *m.entry(body).or_default() += 1;
                m
            });
    assert_eq!(per_message, HashMap::from([("first".to_owned(), 3)]));
    pipeline.stop().await.unwrap();
    let _ = stop_webhook.send(());
    let _ = std::fs::remove_file(rules);
}
