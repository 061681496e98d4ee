//! Kafka client settings shared by the ingestion node and the workers.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use rdkafka::{
    ClientConfig, ClientContext, TopicPartitionList,
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    config::RDKafkaLogLevel,
    consumer::{BaseConsumer, ConsumerContext, Rebalance},
    error::KafkaError,
    types::RDKafkaErrorCode,
};
use serde::{Deserialize, Serialize};

/// A consumer context that records the partitions each rebalance assigns
/// or revokes, for the stage's loop to act on after its next poll
/// ([`Self::take`]).
#[derive(Default)]
pub struct PartitionChanges {
    changes: Mutex<Vec<PartitionChange>>,
}

/// Partitions assigned to or revoked from this consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartitionChange {
    Assigned(Vec<i32>),
    Revoked(Vec<i32>),
}

impl PartitionChanges {
    /// The changes since the last call, in order.
    pub fn take(&self) -> Vec<PartitionChange> {
        std::mem::take(&mut *self.changes.lock().expect("partition changes lock"))
    }
}

impl ClientContext for PartitionChanges {}

impl ConsumerContext for PartitionChanges {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let partitions =
            |tpl: &TopicPartitionList| tpl.elements().iter().map(|e| e.partition()).collect();
        let change = match rebalance {
            Rebalance::Assign(tpl) => PartitionChange::Assigned(partitions(tpl)),
            Rebalance::Revoke(tpl) => PartitionChange::Revoked(partitions(tpl)),
            Rebalance::Error(e) => {
                tracing::warn!(error = %e, "rebalance error");
                return;
            }
        };
        self.changes
            .lock()
            .expect("partition changes lock")
            .push(change);
    }
}

/// What a consume loop does with the errors its consumer hands it.
///
/// librdkafka queues an error event per failed connection attempt while
/// Kafka is away, in the same queue as rebalances and messages. A loop that
/// paused after each would fall behind that backlog and handle rebalances
/// long after Kafka is back, so nothing waits here: the first error is
/// logged at once, later ones at most one line every [`Self::EVERY`] with
/// how many were folded into it, and the task yields so that a burst cannot
/// hog its thread.
pub struct ConsumerErrors {
    stage: &'static str,
    last: Option<std::time::Instant>,
    folded: u64,
}

impl ConsumerErrors {
    /// How often a run of errors is logged.
    pub const EVERY: std::time::Duration = std::time::Duration::from_secs(5);

    /// For the consume loop of `stage` (named in the log).
    pub fn new(stage: &'static str) -> Self {
        Self {
            stage,
            last: None,
            folded: 0,
        }
    }

    /// Reports `error` (or folds it into the next report), then yields.
    pub async fn handle(&mut self, error: &KafkaError) {
        if self.last.is_some_and(|at| at.elapsed() < Self::EVERY) {
            self.folded += 1;
        } else {
            tracing::warn!(%error, folded = self.folded, stage = self.stage, "consumer error");
            self.last = Some(std::time::Instant::now());
            self.folded = 0;
        }
        tokio::task::yield_now().await;
    }
}

/// How to reach Kafka.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Comma-separated `host:port` list of Kafka brokers.
    pub bootstrap_servers: String,
    /// Extra librdkafka properties passed through as they are, e.g.
    /// `security.protocol`, `sasl.mechanisms`, `ssl.ca.location`. They are
    /// applied last, so they may override Switchboard's own settings.
    pub properties: BTreeMap<String, String>,
    /// librdkafka properties for consumers only, applied after
    /// `properties`: consumer tuning such as `fetch.min.bytes` and
    /// `fetch.wait.max.ms`, which producers would warn about and ignore.
    pub consumer_properties: BTreeMap<String, String>,
    /// Partitions for topics Switchboard creates when they are missing.
    pub topic_partitions: i32,
    /// Replication factor for topics Switchboard creates.
    pub topic_replication: i32,
    /// Whether producers read their topics' `max.message.bytes` to bound
    /// their batches ([`Self::batch_bytes_within`]). Not a setting: off
    /// only where nothing would answer the request and each producer would
    /// wait for it: librdkafka's mock cluster (the embedded pipeline), and
    /// tests with no Kafka.
    #[serde(skip)]
    pub reads_topic_limits: bool,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            bootstrap_servers: "127.0.0.1:9092".into(),
            properties: BTreeMap::new(),
            consumer_properties: BTreeMap::new(),
            topic_partitions: 12,
            topic_replication: 1,
            reads_topic_limits: true,
        }
    }
}

impl KafkaConfig {
    /// The consumer of a stage that rebuilds its state from a compacted
    /// topic on assignment (the queue stage, the broadcast stages), in
    /// consumer group `group`: it commits its own offsets; a new group
    /// starts at the earliest record whatever the routing group's setting
    /// (a record below the committed offset must be in the stage's
    /// snapshot, so none may be skipped); assignment is eager, so a
    /// partition never has two owners at once.
    pub fn stage_consumer_config(&self, group: &str) -> ClientConfig {
        self.consumer_config(&[
            ("group.id", group),
            ("enable.auto.commit", "false"),
            ("auto.offset.reset", "earliest"),
            ("session.timeout.ms", "10000"),
            ("heartbeat.interval.ms", "1000"),
            ("partition.assignment.strategy", "range"),
        ])
    }

    /// A consumer config: [`Self::client_config`] with the settings every
    /// Switchboard consumer shares, then `extra`. librdkafka postpones a
    /// partition's next fetch by `fetch.queue.backoff.ms` (1 s by default)
    /// once its prefetch queue is past `queued.min.messages` or
    /// `queued.max.messages.kbytes`; a consumer working through a backlog
    /// drains that queue long before, then waits: the routing worker came
    /// in bursts with half a second of nothing between, and the raw
    /// consumer read a fifth of its speed (benches/README.md, routing,
    /// 2026-12-01). 10 ms keeps the prefetch bounded all the same.
    /// [`Self::consumer_properties`] come last.
    pub fn consumer_config(&self, extra: &[(&str, &str)]) -> ClientConfig {
        let mut base = vec![("fetch.queue.backoff.ms", "10")];
        base.extend_from_slice(extra);
        let mut config = self.client_config(&base);
        for (k, v) in &self.consumer_properties {
            config.set(k, v);
        }
        config
    }

    /// A client config with the bootstrap servers and pass-through properties.
    /// `base` settings are applied first, so pass-through properties win.
    pub fn client_config(&self, base: &[(&str, &str)]) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.bootstrap_servers);
        for (k, v) in base {
            config.set(*k, *v);
        }
        for (k, v) in &self.properties {
            config.set(k, v);
        }
        config
    }

    /// A producer config with the settings every Switchboard producer shares:
    /// acknowledged by all in-sync replicas, idempotent (no duplicates or
    /// reordering on retries), Kafka Java's `murmur2` partitioner (so Java
    /// clients agree on a conversation's partition) and lz4. `extra`
    /// settings come next, then the pass-through properties.
    pub fn producer_config(&self, extra: &[(&str, &str)]) -> ClientConfig {
        let mut base = vec![
            ("acks", "all"),
            ("enable.idempotence", "true"),
            ("partitioner", "murmur2_random"),
            ("compression.type", "lz4"),
        ];
        base.extend_from_slice(extra);
        self.client_config(&base)
    }

    /// The number of partitions of `topic`. Blocking (a metadata request
    /// of up to 10 s): call it off the async runtime's hot paths.
    pub fn partition_count(&self, topic: &str) -> anyhow::Result<usize> {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        let consumer: BaseConsumer = self.client_config(&[]).create()?;
        // A new topic's leaders take a moment to be elected, longer on a
        // busy cluster: transient answers are asked again for a while.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let code = match consumer.fetch_metadata(Some(topic), Duration::from_secs(10)) {
                Ok(metadata) => {
                    let topic_metadata = metadata
                        .topics()
                        .first()
                        .ok_or_else(|| anyhow::anyhow!("no metadata for topic {topic}"))?;
                    match topic_metadata.error() {
                        None => return Ok(topic_metadata.partitions().len()),
                        Some(e) => RDKafkaErrorCode::from(e),
                    }
                }
                Err(e) => match e.rdkafka_error_code() {
                    Some(code) => code,
                    None => return Err(e.into()),
                },
            };
            let transient = is_transient(code)
                || matches!(
                    code,
                    RDKafkaErrorCode::NotLeaderForPartition
                        | RDKafkaErrorCode::UnknownTopicOrPartition
                );
            anyhow::ensure!(
                transient && Instant::now() < deadline,
                "topic {topic}: {code}"
            );
            tracing::debug!(topic, %code, "topic metadata not ready yet");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// librdkafka's default `batch.size`, in bytes.
    pub const DEFAULT_BATCH_BYTES: usize = 1_000_000;

    /// How long [`Self::batch_bytes_within`] waits for the topics' limits.
    pub const TOPIC_LIMITS_TIMEOUT: Duration = Duration::from_secs(5);

    /// The largest record batch each of `topics` takes, in their order:
    /// its `max.message.bytes` as the cluster reports it (the topic's own
    /// setting, or the brokers' default), `None` where the cluster answers
    /// without saying (this client may not describe that topic's configs).
    /// One admin request for all; an error when the cluster does not answer
    /// within `timeout` (librdkafka's mock cluster never does). Blocking:
    /// call it off the async runtime's hot paths.
    pub fn max_message_bytes(
        &self,
        topics: &[&str],
        timeout: Duration,
    ) -> Result<Vec<Option<usize>>, KafkaError> {
        use rdkafka::{admin::ResourceSpecifier, client::DefaultClientContext};
        let not_authorized = |code: RDKafkaErrorCode| {
            matches!(
                code,
                RDKafkaErrorCode::TopicAuthorizationFailed
                    | RDKafkaErrorCode::ClusterAuthorizationFailed
            )
        };
        let admin: AdminClient<DefaultClientContext> = self.client_config(&[]).create()?;
        let opts = AdminOptions::new().request_timeout(Some(timeout));
        let resources: Vec<_> = topics.iter().map(|t| ResourceSpecifier::Topic(t)).collect();
        let described = match futures::executor::block_on(admin.describe_configs(&resources, &opts))
        {
            Ok(described) => described,
            Err(KafkaError::AdminOp(code)) if not_authorized(code) => {
                return Ok(vec![None; topics.len()]);
            }
            Err(e) => return Err(e),
        };
        described
            .into_iter()
            .map(|resource| match resource {
                Ok(resource) => Ok(resource
                    .get("max.message.bytes")
                    .and_then(|entry| entry.value.as_deref())
                    .and_then(|value| value.parse().ok())),
                Err(code) if not_authorized(code) => Ok(None),
                Err(code) => Err(KafkaError::AdminOp(code)),
            })
            .collect()
    }

    /// The `batch.size` for a producer writing to `topics`: no more than
    /// the smallest of their `max.message.bytes`, nor librdkafka's default.
    /// librdkafka does not split a batch the broker refuses as too large
    /// (Kafka's Java producer does): a batch over its topic's limit fails
    /// every record in it, not only a record too large on its own. Within
    /// the bound, a record too large for its topic goes in a batch of its
    /// own (librdkafka applies `batch.size` after a batch's first record)
    /// and is refused alone. A topic whose limit cannot be read (no right
    /// to describe its configs, Kafka not answering within
    /// [`Self::TOPIC_LIMITS_TIMEOUT`]) is left out of the bound, with a
    /// warning naming it and `producer`; nothing is asked where
    /// [`Self::reads_topic_limits`] is off. Blocking, like
    /// [`Self::max_message_bytes`].
    pub fn batch_bytes_within(&self, topics: &[&str], producer: &str) -> usize {
        if !self.reads_topic_limits {
            return Self::DEFAULT_BATCH_BYTES;
        }
        let (limits, error) = match self.max_message_bytes(topics, Self::TOPIC_LIMITS_TIMEOUT) {
            Ok(limits) => (limits, None),
            Err(e) => (vec![None; topics.len()], Some(e.to_string())),
        };
        let unknown: Vec<&str> = topics
            .iter()
            .zip(&limits)
            .filter_map(|(topic, limit)| limit.is_none().then_some(*topic))
            .collect();
        if !unknown.is_empty() {
            tracing::warn!(
                producer,
                ?unknown,
                error,
                "cannot read these topics' max.message.bytes; keep them at {} bytes or more",
                Self::DEFAULT_BATCH_BYTES
            );
        }
        limits
            .into_iter()
            .flatten()
            .fold(Self::DEFAULT_BATCH_BYTES, usize::min)
    }

    /// Waits until a broker answers a metadata request, or `deadline`.
    /// While none does, the client's [`ReportingContext`] says so at once
    /// and every few seconds, with the address and librdkafka's reason.
    /// Cancel-safe: each attempt is a blocking call of its own, so a
    /// shutdown signal ends the wait.
    pub async fn wait_until_reachable(&self, deadline: Instant) -> anyhow::Result<()> {
        use rdkafka::consumer::{BaseConsumer, Consumer as _};
        let context = ReportingContext::new(&self.bootstrap_servers, "startup");
        let probe: Arc<BaseConsumer<ReportingContext>> =
            Arc::new(self.client_config(&[]).create_with_context(context)?);
        loop {
            let attempt = probe.clone();
            let answer = tokio::task::spawn_blocking(move || {
                let answer = attempt.fetch_metadata(None, Duration::from_millis(500));
                // Hands librdkafka's queued log lines and errors to the
                // context, which reports them.
                let _ = attempt.poll(Duration::from_millis(500));
                answer
            })
            .await?;
            match answer {
                Ok(_) => return Ok(()),
                Err(e) => anyhow::ensure!(
                    Instant::now() < deadline,
                    "Kafka at {} did not answer: {}",
                    self.bootstrap_servers,
                    probe
                        .context()
                        .last_reason()
                        .unwrap_or_else(|| e.to_string())
                ),
            }
        }
    }

    /// `min.insync.replicas` of every topic Switchboard creates:
    /// `min(2, topic_replication)`, so `acks=all` means two copies whenever
    /// there can be two.
    pub fn min_insync_replicas(&self) -> i32 {
        self.topic_replication.clamp(1, 2)
    }

    /// Creates the given topics if they do not exist yet. Transient
    /// failures (a busy controller, a timeout) are retried for up to a
    /// minute, so a node starting while Kafka is busy does not give up.
    pub async fn ensure_topics(&self, topics: &[&str]) -> anyhow::Result<()> {
        self.ensure_topics_with(topics, &[]).await
    }

    /// Like [`ensure_topics`](Self::ensure_topics), creating missing topics
    /// with the given topic configs (e.g. `cleanup.policy=compact`).
    pub async fn ensure_topics_with(
        &self,
        topics: &[&str],
        configs: &[(&str, &str)],
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        self.wait_until_reachable(deadline).await?;
        let admin: AdminClient<ReportingContext> =
            self.client_config(&[])
                .create_with_context(ReportingContext::new(
                    &self.bootstrap_servers,
                    "topic admin",
                ))?;
        // `acks=all` means every in-sync replica; without a floor, a topic
        // with one replica left in sync acknowledges on that one alone.
        let min_insync = self.min_insync_replicas().to_string();
        let configs: Vec<(&str, &str)> = [("min.insync.replicas", min_insync.as_str())]
            .into_iter()
            .chain(configs.iter().copied())
            .collect();
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        let mut missing: Vec<&str> = topics.to_vec();
        loop {
            let new: Vec<NewTopic<'_>> = missing
                .iter()
                .map(|t| {
                    configs.iter().fold(
                        NewTopic::new(
                            t,
                            self.topic_partitions,
                            TopicReplication::Fixed(self.topic_replication),
                        ),
                        |topic, (key, value)| topic.set(key, value),
                    )
                })
                .collect();
            let mut retry = Vec::new();
            match admin.create_topics(&new, &opts).await {
                Ok(results) => {
                    for result in results {
                        match result {
                            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                            Err((topic, code)) if is_transient(code) => {
                                tracing::warn!(%topic, %code, "topic not created yet; retrying");
                                retry.push(topic);
                            }
                            Err((topic, code)) => {
                                anyhow::bail!("cannot create topic {topic}: {code}")
                            }
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "creating topics failed; retrying");
                    retry = missing.iter().map(|t| (*t).to_owned()).collect();
                }
            }
            if retry.is_empty() {
                return Ok(());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "cannot create topics {retry:?} within a minute; is Kafka at {} up?",
                self.bootstrap_servers
            );
            tokio::time::sleep(Duration::from_secs(1)).await;
            missing.retain(|t| retry.iter().any(|r| r == t));
        }
    }
}

/// A client context that says plainly when Kafka is not answering: the
/// first error at once, with the bootstrap address and librdkafka's reason,
/// then at most one line every [`ReportingContext::EVERY`] while errors go
/// on (with how many were folded into it). librdkafka's own log lines go to
/// `tracing` at debug level, and the last error among them is kept as the
/// reason to report.
pub struct ReportingContext {
    bootstrap: String,
    client: &'static str,
    last: Mutex<(Option<Instant>, u64)>,
    last_reason: Mutex<Option<String>>,
}

impl ReportingContext {
    /// How often a continuing error is repeated in the log.
    pub const EVERY: Duration = Duration::from_secs(5);

    /// A context for the `client` (e.g. "ingest producer") of `bootstrap`.
    pub fn new(bootstrap: &str, client: &'static str) -> Self {
        Self {
            bootstrap: bootstrap.to_owned(),
            client,
            last: Mutex::new((None, 0)),
            last_reason: Mutex::new(None),
        }
    }

    /// librdkafka's last error, as it worded it.
    pub fn last_reason(&self) -> Option<String> {
        self.last_reason.lock().expect("reason lock").clone()
    }
}

impl ReportingContext {
    /// Logs `reason` now, or folds it into the next line if one was logged
    /// less than [`Self::EVERY`] ago.
    fn report(&self, reason: &str, unreachable: bool) {
        *self.last_reason.lock().expect("reason lock") = Some(reason.to_owned());
        let mut last = self.last.lock().expect("reporting lock");
        let (at, folded) = &mut *last;
        if at.is_some_and(|at| at.elapsed() < Self::EVERY) {
            *folded += 1;
            return;
        }
        if unreachable {
            tracing::error!(
                client = self.client,
                reason,
                folded = *folded,
                "Kafka at {} is not answering; retrying",
                self.bootstrap
            );
        } else {
            tracing::warn!(
                client = self.client,
                bootstrap = %self.bootstrap,
                reason,
                folded = *folded,
                "Kafka client error"
            );
        }
        *at = Some(Instant::now());
        *folded = 0;
    }
}

impl ClientContext for ReportingContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        if (level as i32) <= (RDKafkaLogLevel::Error as i32) {
            // librdkafka says FAIL when it cannot reach a broker.
            self.report(message, fac == "FAIL");
        } else {
            tracing::trace!(client = self.client, fac, "librdkafka: {message}");
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        let unreachable = matches!(
            error.rdkafka_error_code(),
            Some(
                RDKafkaErrorCode::AllBrokersDown
                    | RDKafkaErrorCode::BrokerTransportFailure
                    | RDKafkaErrorCode::Resolve
            )
        );
        self.report(&format!("{error}: {reason}"), unreachable);
    }
}

impl rdkafka::consumer::ConsumerContext for ReportingContext {}

/// Errors that a later attempt at creating a topic may not hit.
fn is_transient(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::OperationTimedOut
            | RDKafkaErrorCode::RequestTimedOut
            | RDKafkaErrorCode::NotController
            | RDKafkaErrorCode::CoordinatorLoadInProgress
            | RDKafkaErrorCode::CoordinatorNotAvailable
            | RDKafkaErrorCode::BrokerTransportFailure
            | RDKafkaErrorCode::AllBrokersDown
            | RDKafkaErrorCode::LeaderNotAvailable
            | RDKafkaErrorCode::NotEnoughReplicas
    )
}

#[cfg(test)]
mod tests {
    use rdkafka::producer::BaseProducer;

    use super::*;

    #[test]
    fn producers_share_durable_settings_and_pass_through_wins() {
        let mut config = KafkaConfig::default();
        config
            .properties
            .insert("compression.type".into(), "zstd".into());
        let producer = config.producer_config(&[("linger.ms", "7")]);
        for (key, value) in [
            ("acks", "all"),
            ("enable.idempotence", "true"),
            ("partitioner", "murmur2_random"),
            ("linger.ms", "7"),
            ("compression.type", "zstd"),
        ] {
            assert_eq!(producer.get(key), Some(value), "{key}");
        }
    }

    /// Consumer properties reach consumers, after the shared ones, and no
    /// producer.
    #[test]
    fn consumer_properties_reach_consumers_only() {
        let config: KafkaConfig = serde_json::from_str(
            r#"{"properties": {"fetch.wait.max.ms": "100", "client.id": "a"},
                "consumer_properties": {"fetch.wait.max.ms": "10", "fetch.min.bytes": "65536"}}"#,
        )
        .unwrap();
        let consumer = config.consumer_config(&[("group.id", "g")]);
        for (key, value) in [
            ("fetch.wait.max.ms", "10"),
            ("fetch.min.bytes", "65536"),
            ("client.id", "a"),
            ("group.id", "g"),
        ] {
            assert_eq!(consumer.get(key), Some(value), "{key}");
        }
        let producer = config.producer_config(&[]);
        assert_eq!(producer.get("fetch.min.bytes"), None);
        assert_eq!(producer.get("fetch.wait.max.ms"), Some("100"));
    }

    /// A config read from a file reads the topics' limits: the field is
    /// not a setting, and is on unless the code turns it off.
    #[test]
    fn a_config_from_a_file_reads_the_topics_limits() {
        let config: KafkaConfig =
            serde_json::from_str(r#"{"bootstrap_servers": "kafka:9092"}"#).unwrap();
        assert!(config.reads_topic_limits);
        assert!(
            serde_json::from_str::<KafkaConfig>(r#"{"reads_topic_limits": false}"#).is_err(),
            "not a setting"
        );
    }

    /// Security settings pass through to librdkafka, which is built with TLS.
    #[test]
    fn sasl_ssl_settings_pass_through() {
        let config = KafkaConfig {
            properties: [
                ("security.protocol", "SASL_SSL"),
                ("sasl.mechanisms", "PLAIN"),
                ("sasl.username", "switchboard"),
                ("sasl.password", "secret"),
                ("ssl.endpoint.identification.algorithm", "https"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
            ..KafkaConfig::default()
        };
        let client = config.client_config(&[("security.protocol", "PLAINTEXT")]);
        assert_eq!(
            client.get("security.protocol"),
            Some("SASL_SSL"),
            "pass-through wins"
        );
        client
            .create::<BaseProducer>()
            .expect("librdkafka accepts SASL_SSL");
        // An unknown property is refused at startup, with its name.
        let mut bad = config.clone();
        bad.properties.insert("no.such.property".into(), "1".into());
        let err = bad
            .client_config(&[])
            .create::<BaseProducer>()
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("no.such.property"), "{err}");
    }
}
