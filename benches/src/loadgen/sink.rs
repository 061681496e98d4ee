//! The end-to-end sink: reads a destination topic while a run goes on and
//! records when each of the run's messages arrives.
//!
//! It starts at the topic's current end, so only new records count (and
//! gives its consumer two seconds to start fetching before the run), and
//! recognises the run's messages by the [`Token`] in their channel message
//! id. Latency is arrival minus the intended send time the token carries
//! (the load generator and the sink share this host's clock). Afterwards,
//! [`Sink::finish`] compares arrivals with what the node acknowledged: lost
//! messages, duplicates and order violations per conversation.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use prost::Message as _;
use rdkafka::{
    Message as _, Offset, TopicPartitionList,
    consumer::{BaseConsumer, Consumer, StreamConsumer},
};
use switchboard_proto::v1::{AnalyticsRecord, Envelope};
use switchboard_runtime::kafka::KafkaConfig;
use tokio_util::sync::CancellationToken;

use super::{
    report::{EndToEnd, Recorder},
    workload::{Token, unix_micros},
};

/// Time the sink's consumer gets to start fetching before a run starts.
const SETTLE: Duration = Duration::from_secs(2);

/// How the sink's topic encodes envelopes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum SinkFormat {
    /// `AnalyticsRecord`s: the workers' analytics topic.
    Analytics,
    /// Bare `Envelope`s: the messages topic, an outbound topic.
    Envelope,
}

#[derive(Default)]
struct Arrivals {
    /// Per message index: seen at least once.
    seen: Vec<bool>,
    /// Per conversation: the highest sequence number seen.
    highest: Vec<Option<u64>>,
    received: u64,
    duplicates: u64,
    order_violations: u64,
}

/// A running sink.
pub struct Sink {
    topic: String,
    recorder: Arc<Recorder>,
    arrivals: Arc<Mutex<Arrivals>>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Sink {
    /// Starts reading `topic` at its current end for messages of `run`,
    /// spread over `conversations` conversations. Arrival seconds count
    /// from `started`.
    pub async fn start(
        kafka: &KafkaConfig,
        topic: &str,
        format: SinkFormat,
        run: &str,
        conversations: u64,
        started: Instant,
    ) -> anyhow::Result<Self> {
        let consumer: StreamConsumer = kafka
            .consumer_config(&[
                ("group.id", "switchboard-bench-sink"),
                ("enable.auto.commit", "false"),
                ("fetch.wait.max.ms", "5"),
            ])
            .create()?;
        let assignment = {
            let probe: BaseConsumer = kafka
                .client_config(&[("group.id", "switchboard-bench-sink")])
                .create()?;
            let topic = topic.to_owned();
            tokio::task::spawn_blocking(move || -> anyhow::Result<TopicPartitionList> {
                let timeout = Duration::from_secs(10);
                let metadata = probe.fetch_metadata(Some(&topic), timeout)?;
                let partitions = metadata
                    .topics()
                    .first()
                    .map(|t| t.partitions().len())
                    .unwrap_or(0);
                anyhow::ensure!(partitions > 0, "the sink topic {topic} does not exist");
                let mut list = TopicPartitionList::new();
                for p in 0..partitions as i32 {
                    let (_, high) = probe.fetch_watermarks(&topic, p, timeout)?;
                    list.add_partition_offset(&topic, p, Offset::Offset(high))?;
                }
                Ok(list)
            })
            .await??
        };
        consumer.assign(&assignment)?;
        // librdkafka's first fetch after an assignment comes about a second
        // later here: start the run only after that, or the first messages
        // would count the sink's own start as latency.
        tokio::time::sleep(SETTLE).await;
        let recorder = Arc::new(Recorder::new(started));
        let arrivals = Arc::new(Mutex::new(Arrivals {
            highest: vec![None; conversations.max(1) as usize],
            ..Default::default()
        }));
        let stop = CancellationToken::new();
        let task = tokio::spawn({
            let (recorder, arrivals, stop) = (recorder.clone(), arrivals.clone(), stop.clone());
            let run = run.to_owned();
            async move {
                let mut last_error_log: Option<Instant> = None;
                loop {
                    let message = tokio::select! {
                        m = consumer.recv() => m,
                        () = stop.cancelled() => return Ok(()),
                    };
                    // Kafka restarting or a broker away (`AllBrokersDown`,
                    // transport failures) is what some runs measure: the
                    // sink reads on; librdkafka reconnects by itself.
                    let message = match message {
                        Ok(message) => message,
                        Err(e) if crate::reconcile::fatal(&e) => return Err(e.into()),
                        Err(e) => {
                            if last_error_log.is_none_or(|at| at.elapsed() > Duration::from_secs(5))
                            {
                                tracing::warn!(error = %e, "Kafka error in the sink; reading on");
                                last_error_log = Some(Instant::now());
                            }
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    };
                    let now = SystemTime::now();
                    let payload = message.payload().unwrap_or_default();
                    let envelope = match format {
                        SinkFormat::Analytics => AnalyticsRecord::decode(payload)
                            .ok()
                            .and_then(|r| r.envelope),
                        SinkFormat::Envelope => Envelope::decode(payload).ok(),
                    };
                    let Some(envelope) = envelope else { continue };
                    let Some(token) = Token::parse(&envelope.channel_message_id) else {
                        continue;
                    };
                    if token.run != run {
                        continue;
                    }
                    let latency =
                        Duration::from_micros(unix_micros(now).saturating_sub(token.sent_us));
                    let mut a = arrivals.lock().expect("sink lock");
                    let index = token.index as usize;
                    if a.seen.len() <= index {
                        a.seen.resize(index + 1, false);
                    }
                    if a.seen[index] {
                        a.duplicates += 1;
                        continue;
                    }
                    a.seen[index] = true;
                    a.received += 1;
                    let conversations = a.highest.len() as u64;
                    let (c, seq) = (token.index % conversations, token.index / conversations);
                    let highest = &mut a.highest[c as usize];
                    if highest.is_some_and(|h| h > seq) {
                        a.order_violations += 1;
                    } else {
                        *highest = Some(seq);
                    }
                    drop(a);
                    recorder.ok(Instant::now(), latency);
                }
            }
        });
        Ok(Self {
            topic: topic.to_owned(),
            recorder,
            arrivals,
            stop,
            task,
        })
    }

    /// Distinct messages received so far.
    pub fn received(&self) -> u64 {
        self.arrivals.lock().expect("sink lock").received
    }

    /// Waits until every message in `acked` (by index) has arrived, or
    /// until nothing new arrived for `idle`, then stops and reports.
    pub async fn finish(self, acked: &[bool], idle: Duration) -> anyhow::Result<EndToEnd> {
        let expected = acked.iter().filter(|a| **a).count() as u64;
        let mut last = (self.received(), Instant::now());
        while self.received() < expected && !self.task.is_finished() {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let received = self.received();
            if received != last.0 {
                last = (received, Instant::now());
            } else if last.1.elapsed() > idle {
                break;
            }
        }
        self.stop.cancel();
        self.task.await??;
        let a = self.arrivals.lock().expect("sink lock");
        let lost = acked
            .iter()
            .enumerate()
            .filter(|(i, acked)| **acked && !a.seen.get(*i).copied().unwrap_or(false))
            .count() as u64;
        let (_, _, latency_ms, timeline) = self.recorder.summary();
        Ok(EndToEnd {
            topic: self.topic,
            received: a.received,
            lost,
            duplicates: a.duplicates,
            order_violations: a.order_violations,
            latency_ms,
            timeline,
        })
    }
}
