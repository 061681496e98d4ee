//! The reconciler: compares what the load generator sent and had
//! acknowledged (its [`ledger`]) with what reached every destination
//! topic Switchboard writes (analytics, agent queue, outbound, dead
//! letters, rejections; [`records`]), and checks the conversation-state
//! topic for a state written over a newer one. A state remembers its
//! messages as hashes of their ids, matched, once all was read, with the
//! ids read on the other topics.
//!
//! It reports, for one run: messages acknowledged but found on no
//! destination topic (lost: must be 0), per-topic arrivals, duplicates and
//! order violations per conversation (must be 0), messages delivered
//! without an acknowledgement (allowed: an answer lost after the write)
//! and state regressions ([`report`]).
//!
//! It reads from a little before the run started, and stops once every
//! acknowledged message has reached analytics and nothing new came for
//! `settle`, or nothing came for `idle`, or at `deadline`. It is meant to
//! run through the faults it measures: a consumer error (Kafka restarting,
//! a broker away) is logged and counted, and reading goes on.

pub mod ledger;
pub mod records;
pub mod report;

use std::{
    collections::{BTreeMap, HashMap},
    time::{Duration, Instant},
};

use rdkafka::{
    Message as _, Offset, TopicPartitionList,
    consumer::{BaseConsumer, Consumer, StreamConsumer},
    error::KafkaError,
    types::RDKafkaErrorCode,
};
use switchboard_proto::message_id_hash;
use switchboard_runtime::kafka::KafkaConfig;

use self::{
    ledger::{Ledger, Outcome},
    records::{Kind, TopicNames},
    report::{Ended, Reconciliation, TopicReport},
};
use crate::loadgen::workload::Token;

/// When the reconciler stops.
#[derive(Debug, Clone, Copy)]
pub struct Until {
    /// Quiet time after every acknowledged message reached analytics.
    pub settle: Duration,
    /// Quiet time that ends the reading anyway.
    pub idle: Duration,
    /// The most the reading takes.
    pub deadline: Duration,
}

impl Default for Until {
    fn default() -> Self {
        Self {
            settle: Duration::from_secs(3),
            idle: Duration::from_secs(30),
            deadline: Duration::from_secs(300),
        }
    }
}

/// Examples kept of each kind of finding.
const EXAMPLES: usize = 10;

/// Records older than this before the run's start are not read.
const LOOKBACK_MS: u64 = 10_000;

/// Reads every topic of `topics` on `kafka` and reconciles it with `ledger`.
pub async fn reconcile(
    kafka: &KafkaConfig,
    topics: &TopicNames,
    ledger: &Ledger,
    until: Until,
) -> anyhow::Result<Reconciliation> {
    let started = Instant::now();
    let consumer: StreamConsumer = kafka
        .consumer_config(&[
            ("group.id", "switchboard-reconcile"),
            ("enable.auto.commit", "false"),
            ("enable.partition.eof", "false"),
        ])
        .create()?;
    let (assignment, missing) = assignment(kafka, topics, ledger.started_unix_ms).await?;
    consumer.assign(&assignment)?;
    let mut tally = Tally::new(ledger, topics);
    let mut last_arrival = Instant::now();
    let mut last_error_log: Option<Instant> = None;
    let ended = loop {
        let now = Instant::now();
        if now.duration_since(started) >= until.deadline {
            break Ended::Deadline;
        }
        let quiet = now.duration_since(last_arrival);
        if tally.complete() && quiet >= until.settle {
            break Ended::Complete;
        }
        if quiet >= until.idle {
            break Ended::Idle;
        }
        let message = match tokio::time::timeout(Duration::from_millis(200), consumer.recv()).await
        {
            Err(_) => continue,
            Ok(Ok(message)) => message,
            Ok(Err(e)) => {
                anyhow::ensure!(!fatal(&e), "reading the destination topics: {e}");
                tally.transient_errors += 1;
                if last_error_log.is_none_or(|at| at.elapsed() > Duration::from_secs(5)) {
                    tracing::warn!(error = %e, "Kafka error while reconciling; reading on");
                    last_error_log = Some(Instant::now());
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(kind) = tally.kind_of(message.topic()) else {
            continue;
        };
        if tally.record(message.topic(), kind, message.payload().unwrap_or_default()) {
            last_arrival = Instant::now();
        }
    };
    Ok(tally.report(ended, started.elapsed(), missing))
}

/// Every partition of every existing topic of `topics`, from the first
/// offset at or after `since_unix_ms` less [`LOOKBACK_MS`]; and the topics
/// that do not exist.
pub async fn assignment(
    kafka: &KafkaConfig,
    topics: &TopicNames,
    since_unix_ms: u64,
) -> anyhow::Result<(TopicPartitionList, Vec<String>)> {
    let probe: BaseConsumer = kafka
        .client_config(&[("group.id", "switchboard-reconcile")])
        .create()?;
    let wanted = topics.all();
    tokio::task::spawn_blocking(move || {
        let timeout = Duration::from_secs(30);
        let metadata = probe.fetch_metadata(None, timeout)?;
        let partitions: HashMap<&str, usize> = metadata
            .topics()
            .iter()
            .map(|t| (t.name(), t.partitions().len()))
            .collect();
        let mut times = TopicPartitionList::new();
        let mut missing = Vec::new();
        let since = since_unix_ms.saturating_sub(LOOKBACK_MS) as i64;
        for (topic, _) in &wanted {
            match partitions.get(topic.as_str()) {
                Some(&n) if n > 0 => {
                    for p in 0..n as i32 {
                        times.add_partition_offset(topic, p, Offset::Offset(since))?;
                    }
                }
                _ => missing.push(topic.clone()),
            }
        }
        // Offsets by time. A partition with nothing that recent starts at
        // its end as it is now, by number: `Offset::End` would be looked up
        // only when fetching starts, past whatever a worker wrote meanwhile
        // (the first records of a partition whose routing began just then).
        let by_time = probe.offsets_for_times(times, timeout)?;
        let mut assignment = TopicPartitionList::new();
        for element in by_time.elements() {
            let (topic, partition) = (element.topic(), element.partition());
            let offset = match element.offset() {
                Offset::Offset(o) if o >= 0 => o,
                _ => probe.fetch_watermarks(topic, partition, timeout)?.1,
            };
            assignment.add_partition_offset(topic, partition, Offset::Offset(offset))?;
        }
        Ok((assignment, missing))
    })
    .await?
}

/// A consumer error that reading on will not cure; any other (a broker
/// away, Kafka restarting) passes as librdkafka reconnects.
pub(crate) fn fatal(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::TopicAuthorizationFailed
                | RDKafkaErrorCode::GroupAuthorizationFailed
                | RDKafkaErrorCode::ClusterAuthorizationFailed
                | RDKafkaErrorCode::SaslAuthenticationFailed
        )
    )
}

/// Arrivals on one topic.
struct TopicTally {
    kind: Kind,
    /// Per message index: copies seen (saturating).
    copies: Vec<u8>,
    records: u64,
    duplicates: u64,
    order_violations: u64,
    /// Per conversation: the highest sequence number seen.
    highest: HashMap<u32, u64>,
    /// The first few duplicated and reordered messages.
    examples: Vec<String>,
}

/// What the reading found so far.
struct Tally<'a> {
    ledger: &'a Ledger,
    /// Per message index: (conversation number, seq, outcome).
    entries: Vec<Option<(u32, u64, Outcome)>>,
    conversations: Vec<&'a str>,
    kinds: HashMap<String, Kind>,
    topics: BTreeMap<String, TopicTally>,
    acked: u64,
    acked_in_analytics: u64,
    /// Tokens of this run whose index the ledger does not hold.
    unknown: u64,
    /// The [`message_id_hash`] of every message of the run read on a
    /// topic other than the state topic: its index.
    hashes: HashMap<u64, usize>,
    /// Every state record's [`Kind::state_hashes`], in arrival order,
    /// resolved through `hashes` by [`Tally::report`].
    states: Vec<Vec<u64>>,
    transient_errors: u64,
}

impl<'a> Tally<'a> {
    fn new(ledger: &'a Ledger, topics: &TopicNames) -> Self {
        let len = ledger
            .entries
            .iter()
            .map(|e| e.index + 1)
            .max()
            .unwrap_or(0) as usize;
        let mut entries = vec![None; len];
        let mut numbers: HashMap<&str, u32> = HashMap::new();
        let mut conversations = Vec::new();
        for e in &ledger.entries {
            let n = *numbers.entry(e.conversation.as_str()).or_insert_with(|| {
                conversations.push(e.conversation.as_str());
                (conversations.len() - 1) as u32
            });
            entries[e.index as usize] = Some((n, e.seq, e.outcome));
        }
        Self {
            ledger,
            acked: ledger
                .entries
                .iter()
                .filter(|e| e.outcome == Outcome::Acked)
                .count() as u64,
            entries,
            conversations,
            kinds: topics.all().into_iter().collect(),
            topics: BTreeMap::new(),
            acked_in_analytics: 0,
            unknown: 0,
            hashes: HashMap::new(),
            states: Vec::new(),
            transient_errors: 0,
        }
    }

    fn kind_of(&self, topic: &str) -> Option<Kind> {
        self.kinds.get(topic).copied()
    }

    fn complete(&self) -> bool {
        self.acked_in_analytics >= self.acked
    }

    /// The run's messages among `ids`: (index, conversation, seq, outcome).
    /// Remembers each one's hash, to resolve the states'.
    fn ours(&mut self, ids: &[String]) -> Vec<(usize, u32, u64, Outcome)> {
        let mut found = Vec::new();
        for id in ids {
            let Some(token) = Token::parse(id) else {
                continue;
            };
            if token.run != self.ledger.run {
                continue;
            }
            let index = token.index as usize;
            match self.entries.get(index).copied().flatten() {
                Some((c, seq, outcome)) => {
                    self.hashes.insert(message_id_hash(id), index);
                    found.push((index, c, seq, outcome));
                }
                None => self.unknown += 1,
            }
        }
        found
    }

    /// Counts one record; true if it held a message of the run (for a
    /// state: one already read on another topic).
    fn record(&mut self, topic: &str, kind: Kind, payload: &[u8]) -> bool {
        if kind == Kind::State {
            let hashes = Kind::state_hashes(payload);
            // Which messages a state holds is known only once their ids
            // were read on another topic. One known already counts as an
            // arrival, as a state of the run did before hashes: the run's
            // states keep the reading on while they come, and another
            // run's (any hash at all) cannot hold it to the deadline. One
            // whose ids come later counts when they do.
            let ours = hashes.iter().any(|h| self.hashes.contains_key(h));
            if !hashes.is_empty() {
                self.states.push(hashes);
            }
            return ours;
        }
        let ours = self.ours(&kind.message_ids(payload));
        if ours.is_empty() {
            return false;
        }
        let len = self.entries.len();
        let tally = self
            .topics
            .entry(topic.to_owned())
            .or_insert_with(|| TopicTally {
                kind,
                copies: vec![0; len],
                records: 0,
                duplicates: 0,
                order_violations: 0,
                highest: HashMap::new(),
                examples: Vec::new(),
            });
        let name = |c: u32, seq: u64| format!("{} #{seq}", self.conversations[c as usize]);
        for (index, c, seq, outcome) in ours {
            tally.records += 1;
            let copies = &mut tally.copies[index];
            *copies = copies.saturating_add(1);
            if *copies > 1 {
                tally.duplicates += 1;
                if tally.examples.len() < EXAMPLES {
                    tally.examples.push(format!("copy of {}", name(c, seq)));
                }
                continue;
            }
            let highest = tally.highest.entry(c).or_insert(seq);
            if seq < *highest {
                tally.order_violations += 1;
                if tally.examples.len() < EXAMPLES {
                    tally
                        .examples
                        .push(format!("{} after #{highest}", name(c, seq)));
                }
            } else {
                *highest = seq;
            }
            if kind == Kind::Analytics && outcome == Outcome::Acked {
                self.acked_in_analytics += 1;
            }
        }
        true
    }

    /// The states, in arrival order, whose newest remembered message is
    /// older than an earlier state of the conversation remembered; and the
    /// first few as examples. Hashes of no message read are ignored.
    fn state_regressions(&self) -> (u64, Vec<String>) {
        let mut highest: HashMap<u32, u64> = HashMap::new();
        let (mut regressions, mut examples) = (0, Vec::new());
        for hashes in &self.states {
            // The newest message the state remembers.
            let newest = hashes
                .iter()
                .filter_map(|h| self.hashes.get(h))
                .filter_map(|&index| self.entries[index])
                .max_by_key(|(_, seq, _)| *seq);
            let Some((c, seq, _)) = newest else {
                continue;
            };
            let highest = highest.entry(c).or_insert(seq);
            if seq < *highest {
                regressions += 1;
                if examples.len() < EXAMPLES {
                    let name = self.conversations[c as usize];
                    examples.push(format!("{name}: #{seq} after #{highest}"));
                }
            } else {
                *highest = seq;
            }
        }
        (regressions, examples)
    }

    fn report(self, ended: Ended, took: Duration, missing_topics: Vec<String>) -> Reconciliation {
        let (state_regressions, state_regression_examples) = self.state_regressions();
        let seen = |index: usize| {
            self.topics
                .values()
                .any(|t| t.copies.get(index).is_some_and(|c| *c > 0))
        };
        let count = |outcome: Outcome| {
            self.entries
                .iter()
                .filter(|e| e.is_some_and(|(_, _, o)| o == outcome))
                .count() as u64
        };
        let in_analytics = |index: usize| {
            self.topics
                .values()
                .any(|t| t.kind == Kind::Analytics && t.copies.get(index).is_some_and(|c| *c > 0))
        };
        let (mut lost_examples, mut missing_examples) = (Vec::new(), Vec::new());
        let (mut lost, mut delivered_unacked) = (0, 0);
        for (index, entry) in self.entries.iter().enumerate() {
            let Some((c, seq, outcome)) = entry else {
                continue;
            };
            match (outcome, seen(index)) {
                (Outcome::Acked, false) => {
                    lost += 1;
                    if lost_examples.len() < EXAMPLES {
                        lost_examples.push(format!(
                            "{index} ({} #{seq})",
                            self.conversations[*c as usize]
                        ));
                    }
                }
                (Outcome::Failed | Outcome::Unanswered, true) => delivered_unacked += 1,
                _ => {}
            }
            if *outcome == Outcome::Acked
                && !in_analytics(index)
                && missing_examples.len() < EXAMPLES
            {
                missing_examples.push(format!(
                    "{index} ({} #{seq})",
                    self.conversations[*c as usize]
                ));
            }
        }
        let topics: Vec<TopicReport> = self
            .topics
            .iter()
            .map(|(topic, t)| TopicReport {
                topic: topic.clone(),
                kind: t.kind,
                messages: t.copies.iter().filter(|c| **c > 0).count() as u64,
                records: t.records,
                duplicates: t.duplicates,
                order_violations: t.order_violations,
                examples: t.examples.clone(),
            })
            .collect();
        Reconciliation {
            run: self.ledger.run.clone(),
            sent: self.ledger.entries.len() as u64,
            acked: self.acked,
            failed: count(Outcome::Failed),
            unanswered: count(Outcome::Unanswered),
            delivered: self.acked_in_analytics,
            lost,
            lost_examples,
            missing_from_analytics: self.acked - self.acked_in_analytics,
            missing_from_analytics_examples: missing_examples,
            delivered_unacked,
            duplicates: topics.iter().map(|t| t.duplicates).sum(),
            order_violations: topics.iter().map(|t| t.order_violations).sum(),
            state_regressions,
            state_regression_examples,
            unknown: self.unknown,
            topics,
            missing_topics,
            transient_errors: self.transient_errors,
            ended,
            seconds: took.as_secs_f64(),
        }
    }
}

#[cfg(test)]
mod tests {
    use prost::Message as _;
    use switchboard_proto::v1::{AnalyticsRecord, ConversationState, Envelope};

    use super::{ledger::Entry, *};

    /// Message `index` of run `run`'s channel message id.
    fn id(run: &str, index: u64) -> String {
        Token {
            run,
            index,
            sent_us: 1,
        }
        .to_string()
    }

    fn analytics(run: &str, index: u64) -> Vec<u8> {
        AnalyticsRecord {
            envelope: Some(Envelope {
                channel_message_id: id(run, index),
                ..Default::default()
            }),
            decision: None,
        }
        .encode_to_vec()
    }

    /// A state of run r1 remembering messages `legacy` by id (as older
    /// workers wrote), then `hashed` by hash.
    fn state(legacy: &[u64], hashed: &[u64]) -> Vec<u8> {
        ConversationState {
            recent_message_ids: legacy.iter().map(|i| id("r1", *i)).collect(),
            recent_message_hashes: hashed
                .iter()
                .map(|i| message_id_hash(&id("r1", *i)))
                .collect(),
            ..Default::default()
        }
        .encode_to_vec()
    }

    /// Two conversations, three messages each; index 5 failed.
    fn ledger() -> Ledger {
        Ledger {
            run: "r1".into(),
            started_unix_ms: 0,
            entries: (0..6)
                .map(|index| Entry {
                    index,
                    conversation: format!("t/webchat/c{}", index % 2),
                    seq: index / 2,
                    outcome: if index == 5 {
                        Outcome::Failed
                    } else {
                        Outcome::Acked
                    },
                })
                .collect(),
        }
    }

    #[test]
    fn counts_losses_duplicates_reordering_and_unacknowledged_deliveries() {
        let ledger = ledger();
        let names = TopicNames::prefixed("t");
        let mut tally = Tally::new(&ledger, &names);
        let topic = names.analytics_topic.clone();
        // Conversation 0: 0, 4, 2 (2 after 4: reordered); conversation 1:
        // 1, 1 again, 5 (failed, yet delivered); 3 never arrives.
        for index in [0, 4, 2, 1, 1, 5] {
            assert!(tally.record(&topic, Kind::Analytics, &analytics("r1", index)));
        }
        assert!(!tally.record(&topic, Kind::Analytics, &analytics("other", 3)));
        assert!(!tally.complete(), "3 is missing");
        // Conversation 0's state remembers 0 and 2, then only 0: regressed.
        assert!(tally.record("t.state", Kind::State, &state(&[], &[0, 2])));
        assert!(tally.record("t.state", Kind::State, &state(&[], &[0])));
        let report = tally.report(Ended::Idle, Duration::from_secs(1), Vec::new());
        assert_eq!((report.sent, report.acked, report.failed), (6, 5, 1));
        assert_eq!(report.delivered, 4);
        assert_eq!(report.lost, 1);
        assert_eq!(report.lost_examples, ["3 (t/webchat/c1 #1)"]);
        assert_eq!(report.duplicates, 1);
        assert_eq!(report.order_violations, 1);
        assert_eq!(report.delivered_unacked, 1);
        assert_eq!(report.state_regressions, 1);
        assert_eq!(
            report.state_regression_examples,
            ["t/webchat/c0: #0 after #1"]
        );
        assert_eq!(report.missing_from_analytics, 1);
        assert_eq!(report.topics.len(), 1);
        assert_eq!(
            (report.topics[0].messages, report.topics[0].records),
            (5, 6)
        );
        assert!(!report.clean());
    }

    #[test]
    fn resolves_state_hashes_and_legacy_ids_once_all_was_read() {
        let ledger = ledger();
        let names = TopicNames::prefixed("t");
        let mut tally = Tally::new(&ledger, &names);
        // Conversation 1's state remembers 5 (by id, as older workers
        // wrote) before 5 reaches analytics; then 1 and 3 (3 never
        // arrives, so its hash tells nothing): regressed.
        assert!(!tally.record("t.state", Kind::State, &state(&[5], &[])));
        for index in [1, 5] {
            assert!(tally.record(
                &names.analytics_topic,
                Kind::Analytics,
                &analytics("r1", index)
            ));
        }
        assert!(tally.record("t.state", Kind::State, &state(&[], &[1, 3])));
        let report = tally.report(Ended::Idle, Duration::from_secs(1), Vec::new());
        assert_eq!(report.state_regressions, 1);
        assert_eq!(
            report.state_regression_examples,
            ["t/webchat/c1: #0 after #2"]
        );
    }
}
