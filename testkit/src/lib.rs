//! Switchboard's test helpers on Kafka: a dev-dependency of the stages' crates
//! (never of their binaries); the benchmark scenarios use its recording bot.
//!
//! Tests that need the real local Kafka read its address from
//! `SWITCHBOARD_TEST_KAFKA` (set by `deploy/test.sh`) and use random topic
//! names, so runs never see each other's data.
//!
//! [`providers`] holds stand-ins for the channels' provider APIs (WhatsApp
//! Cloud API, Messenger/Instagram Send API, Twilio, web chat) that the
//! sender stage's tests and the embedded demo send to.

pub mod providers;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use rdkafka::{
    Offset, TopicPartitionList,
    consumer::{BaseConsumer, Consumer},
    message::OwnedMessage,
};
use switchboard_proto::v1::{
    BotRequest, BotResponse, Channel, Direction, Envelope, PublishRequest, Text, bot_server::Bot,
    envelope::Content,
};

use switchboard_runtime::kafka::KafkaConfig;

/// The real Kafka's bootstrap address. Panics with instructions when unset.
pub fn real_kafka() -> String {
    std::env::var("SWITCHBOARD_TEST_KAFKA").unwrap_or_else(|_| {
        panic!(
            "SWITCHBOARD_TEST_KAFKA is not set. These tests need a real Kafka: run `deploy/test.sh`, \
             or start one with `deploy/kafka/start.sh` and export SWITCHBOARD_TEST_KAFKA=127.0.0.1:9092"
        )
    })
}

/// An inbound text message of tenant `acme` in `conversation` on `channel`.
pub fn inbound_text(
    channel: Channel,
    conversation: impl Into<String>,
    body: impl Into<String>,
) -> Envelope {
    Envelope {
        tenant_id: "acme".into(),
        channel: channel as i32,
        direction: Direction::Inbound as i32,
        conversation_id: conversation.into(),
        content: Some(Content::Text(Text { body: body.into() })),
        ..Default::default()
    }
}

/// `envelope` as a `Publish` request.
pub fn publish_request(envelope: Envelope) -> PublishRequest {
    PublishRequest {
        envelope: Some(envelope),
        sequence: 0,
    }
}

/// The body of a text envelope; empty for other content.
pub fn text_of(envelope: &Envelope) -> &str {
    match &envelope.content {
        Some(Content::Text(t)) => &t.body,
        _ => "",
    }
}

/// Writes `envelopes` to `topic` in order, as the ingestion node does
/// (keyed by conversation; the node adds a `traceparent` header), and
/// waits until Kafka has them all: a backlog for a worker test, without an
/// ingestion node.
pub async fn publish_envelopes(kafka: &KafkaConfig, topic: &str, envelopes: &[Envelope]) {
    use prost::Message as _;
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let producer: FutureProducer = kafka
        .producer_config(&[("linger.ms", "5")])
        .create()
        .expect("test producer");
    let mut acks = Vec::with_capacity(envelopes.len());
    for envelope in envelopes {
        let (key, payload) = (envelope.conversation_key(), envelope.encode_to_vec());
        let record = FutureRecord::to(topic).key(&key).payload(&payload);
        acks.push(
            producer
                .send_result(record)
                .map_err(|(e, _)| e)
                .expect("queued"),
        );
    }
    for ack in acks {
        ack.await.expect("delivered").expect("acknowledged");
    }
}

/// A topic name that no other run uses.
pub fn random_topic(prefix: &str) -> String {
    format!("test.{prefix}.{}", uuid::Uuid::now_v7().simple())
}

/// `len` random letters and digits: text that lz4 cannot shrink (it has no
/// entropy coding, and random text has no repeats to find), for records
/// that must stay over a size limit once compressed.
pub fn incompressible_text(len: usize) -> String {
    use rand::{Rng as _, distr::Alphanumeric};
    rand::rng()
        .sample_iter(Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

/// Kafka settings for `bootstrap` with test-sized topics.
pub fn kafka_config(bootstrap: &str, partitions: i32) -> KafkaConfig {
    KafkaConfig {
        bootstrap_servers: bootstrap.to_owned(),
        topic_partitions: partitions,
        ..KafkaConfig::default()
    }
}

/// Reads `topic` from the beginning of every partition until `done` says
/// the records read so far suffice, or `timeout` passes.
pub fn read_topic(
    bootstrap: &str,
    topic: &str,
    timeout: Duration,
    done: impl Fn(&[OwnedMessage]) -> bool,
) -> Vec<OwnedMessage> {
    let consumer: BaseConsumer = kafka_config(bootstrap, 1)
        .client_config(&[
            ("group.id", &random_topic("reader")),
            ("enable.auto.commit", "false"),
        ])
        .create()
        .expect("test consumer");
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("topic metadata");
    let mut tpl = TopicPartitionList::new();
    for p in metadata.topics()[0].partitions() {
        tpl.add_partition_offset(topic, p.id(), Offset::Beginning)
            .expect("partition offset");
    }
    consumer.assign(&tpl).expect("assign");
    let deadline = Instant::now() + timeout;
    let mut records = Vec::new();
    while !done(&records) && Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            records.push(m.detach());
        }
    }
    records
}

/// [`read_topic`] off the async runtime, for async tests.
pub async fn read_topic_async(
    bootstrap: &str,
    topic: &str,
    timeout: Duration,
    done: impl Fn(&[OwnedMessage]) -> bool + Send + 'static,
) -> Vec<OwnedMessage> {
    let (bootstrap, topic) = (bootstrap.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || read_topic(&bootstrap, &topic, timeout, done))
        .await
        .expect("reading the topic")
}

/// Total records in `topic` (sum of high watermarks).
pub fn topic_size(bootstrap: &str, topic: &str) -> i64 {
    let consumer: BaseConsumer = kafka_config(bootstrap, 1)
        .client_config(&[])
        .create()
        .expect("client");
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    metadata.topics()[0]
        .partitions()
        .iter()
        .map(|p| {
            let (low, high) = watermarks(&consumer, topic, p.id());
            high - low
        })
        .sum()
}

/// A partition's watermarks, retried while a new topic's leaders are elected.
fn watermarks(consumer: &BaseConsumer, topic: &str, partition: i32) -> (i64, i64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match consumer.fetch_watermarks(topic, partition, Duration::from_secs(10)) {
            Ok(marks) => return marks,
            Err(e) if Instant::now() < deadline => {
                tracing::debug!(error = %e, "watermarks not ready yet");
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => panic!("watermarks of {topic}/{partition}: {e}"),
        }
    }
}

/// A bot that records every envelope it is sent, optionally slowly.
#[derive(Clone, Default)]
pub struct RecordingBot {
    seen: Arc<Mutex<Vec<Envelope>>>,
    traceparents: Arc<Mutex<Vec<Option<String>>>>,
    delay: Duration,
    /// Extra delay of up to this much, chosen per message from its id.
    jitter: Duration,
    /// Asks for a human (in this queue) when a text says exactly this.
    handoff: Option<(String, String)>,
}

impl RecordingBot {
    /// A bot that takes `delay` per message.
    pub fn with_delay(delay: Duration) -> Self {
        Self {
            delay,
            ..Self::default()
        }
    }

    /// A bot that hands the conversation off to agent queue `queue` when
    /// the customer writes exactly `text`.
    pub fn handing_off(text: &str, queue: &str) -> Self {
        Self {
            handoff: Some((text.to_owned(), queue.to_owned())),
            ..Self::default()
        }
    }

    /// A bot that takes between `min` and `max` per message, varying
    /// pseudo-randomly (and repeatably) with the message id.
    pub fn with_random_delay(min: Duration, max: Duration) -> Self {
        Self {
            delay: min,
            jitter: max.saturating_sub(min),
            ..Self::default()
        }
    }

    /// The delay this bot takes for `envelope`.
    pub fn delay_for(&self, envelope: &Envelope) -> Duration {
        if self.jitter.is_zero() {
            return self.delay;
        }
        let hash = envelope
            .message_id
            .bytes()
            .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
            });
        self.delay + self.jitter.mul_f64((hash % 1_000) as f64 / 1_000.0)
    }

    /// Everything received so far, in arrival order.
    pub fn seen(&self) -> Vec<Envelope> {
        self.seen.lock().expect("lock").clone()
    }

    /// The `traceparent` metadata of every call, in arrival order.
    pub fn traceparents(&self) -> Vec<Option<String>> {
        self.traceparents.lock().expect("lock").clone()
    }

    /// How many envelopes were received so far.
    pub fn count(&self) -> usize {
        self.seen.lock().expect("lock").len()
    }

    /// Received envelopes grouped by conversation, in arrival order.
    pub fn by_conversation(&self) -> HashMap<String, Vec<Envelope>> {
        let mut map: HashMap<String, Vec<Envelope>> = HashMap::new();
        for e in self.seen() {
            map.entry(e.conversation_key()).or_default().push(e);
        }
        map
    }
}

#[tonic::async_trait]
impl Bot for RecordingBot {
    async fn handle(
        &self,
        request: tonic::Request<BotRequest>,
    ) -> Result<tonic::Response<BotResponse>, tonic::Status> {
        let traceparent = request
            .metadata()
            .get(switchboard_runtime::trace::TRACEPARENT)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        self.traceparents.lock().expect("lock").push(traceparent);
        let envelope = request
            .into_inner()
            .envelope
            .ok_or_else(|| tonic::Status::invalid_argument("no envelope"))?;
        let delay = self.delay_for(&envelope);
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let mut response = BotResponse::default();
        if let Some((text, queue)) = &self.handoff
            && matches!(&envelope.content, Some(Content::Text(t)) if t.body == *text)
        {
            response.handoff = true;
            queue.clone_into(&mut response.handoff_queue);
        }
        self.seen.lock().expect("lock").push(envelope);
        Ok(tonic::Response::new(response))
    }
}

/// Offsets `group` has committed on `topic`, summed over partitions, next
/// to the topic's total size: equal when the group consumed everything.
pub fn committed_vs_size(bootstrap: &str, group: &str, topic: &str) -> (i64, i64) {
    let consumer: BaseConsumer = kafka_config(bootstrap, 1)
        .client_config(&[("group.id", group)])
        .create()
        .expect("client");
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    let mut tpl = TopicPartitionList::new();
    let mut size = 0;
    for p in metadata.topics()[0].partitions() {
        tpl.add_partition(topic, p.id());
        let (low, high) = watermarks(&consumer, topic, p.id());
        size += high - low;
    }
    let committed = consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .expect("committed offsets");
    let total = committed
        .elements()
        .iter()
        .map(|e| e.offset().to_raw().unwrap_or(0).max(0))
        .sum();
    // Drop the list before the consumer: librdkafka can hang otherwise.
    drop(committed);
    (total, size)
}

/// The message ids routed, in a list of analytics-topic records (the
/// sender stage's records of sent replies, with `decision.send`, are left out).
pub fn analytics_message_ids(records: &[OwnedMessage]) -> std::collections::HashSet<String> {
    use prost::Message as _;
    use rdkafka::Message as _;
    records
        .iter()
        .filter_map(|r| {
            let record =
                switchboard_proto::v1::AnalyticsRecord::decode(r.payload().expect("payload"))
                    .expect("an AnalyticsRecord");
            if record.decision.as_ref().is_some_and(|d| d.send.is_some()) {
                return None;
            }
            Some(record.envelope.expect("envelope").message_id)
        })
        .collect()
}

/// The agent task in a record of the agent-queue topic. Panics on anything else.
pub fn agent_task(payload: &[u8]) -> switchboard_proto::v1::AgentTask {
    use prost::Message as _;
    use switchboard_proto::v1::{QueueEvent, queue_event::Event};
    match QueueEvent::decode(payload).expect("a queue event").event {
        Some(Event::Task(task)) => task,
        other => panic!("expected an agent task, got {other:?}"),
    }
}
