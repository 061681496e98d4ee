//! The reconciler's report: JSON for tools, Markdown for people.

use serde::Serialize;

use super::records::Kind;

/// Why the reading stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Ended {
    /// Every acknowledged message reached analytics, then nothing new came.
    Complete,
    /// Nothing came for the idle time.
    Idle,
    /// The deadline passed.
    Deadline,
}

/// One destination topic's arrivals of the run's messages.
#[derive(Debug, Clone, Serialize)]
pub struct TopicReport {
    /// The topic.
    pub topic: String,
    /// What it holds.
    pub kind: Kind,
    /// Distinct messages of the run.
    pub messages: u64,
    /// Records of the run's messages, copies included.
    pub records: u64,
    /// Copies of a message already seen on this topic.
    pub duplicates: u64,
    /// Messages that arrived after a later message of their conversation.
    pub order_violations: u64,
    /// The first few duplicates and order violations.
    pub examples: Vec<String>,
}

/// A run reconciled with its destination topics.
#[derive(Debug, Clone, Serialize)]
pub struct Reconciliation {
    /// The run's id.
    pub run: String,
    /// Messages the load generator sent.
    pub sent: u64,
    /// Messages the ingestion node acknowledged.
    pub acked: u64,
    /// Messages answered with an error (after retries).
    pub failed: u64,
    /// Messages never answered.
    pub unanswered: u64,
    /// Acknowledged messages found on the analytics topic.
    pub delivered: u64,
    /// Acknowledged messages found on no destination topic. Must be 0.
    pub lost: u64,
    /// Some of them: `index (conversation #seq)`.
    pub lost_examples: Vec<String>,
    /// Acknowledged messages not on the analytics topic, which gets every
    /// routed message (those lost included). Must be 0.
    pub missing_from_analytics: u64,
    /// Some of them.
    pub missing_from_analytics_examples: Vec<String>,
    /// Messages not acknowledged that were delivered all the same (the
    /// answer was lost after Kafka had the message: allowed).
    pub delivered_unacked: u64,
    /// Copies of a message already seen, over all topics.
    pub duplicates: u64,
    /// Order violations within a conversation, over all topics. Must be 0.
    pub order_violations: u64,
    /// Conversation states written over a newer state of the same
    /// conversation (a state naming an older last message than the one
    /// before it). Must be 0.
    pub state_regressions: u64,
    /// Some of them: `conversation: #seq after #seq`.
    pub state_regression_examples: Vec<String>,
    /// Tokens of this run whose index the ledger does not hold.
    pub unknown: u64,
    /// Per topic (topics with none of the run's messages are left out).
    pub topics: Vec<TopicReport>,
    /// Destination topics that do not exist.
    pub missing_topics: Vec<String>,
    /// Kafka errors met while reading (read on after each).
    pub transient_errors: u64,
    /// Why the reading stopped.
    pub ended: Ended,
    /// Time the reading took.
    pub seconds: f64,
}

impl Reconciliation {
    /// Nothing acknowledged was lost or left out of analytics, nothing
    /// reordered, no state regressed.
    pub fn clean(&self) -> bool {
        self.lost == 0
            && self.missing_from_analytics == 0
            && self.order_violations == 0
            && self.state_regressions == 0
    }

    /// A human summary in Markdown.
    pub fn markdown(&self) -> String {
        let mut out = format!(
            "### Reconciliation of run `{}`\n\n| sent | acked | failed | unanswered | delivered (analytics) | **lost** | **order violations** | duplicates | delivered unacked | state regressions |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n| {} | {} | {} | {} | {} | **{}** | **{}** | {} | {} | {} |\n\n",
            self.run,
            self.sent,
            self.acked,
            self.failed,
            self.unanswered,
            self.delivered,
            self.lost,
            self.order_violations,
            self.duplicates,
            self.delivered_unacked,
            self.state_regressions,
        );
        out.push_str("| topic | kind | messages | records | duplicates | order violations |\n|---|---|---:|---:|---:|---:|\n");
        for t in &self.topics {
            out.push_str(&format!(
                "| `{}` | {:?} | {} | {} | {} | {} |\n",
                t.topic, t.kind, t.messages, t.records, t.duplicates, t.order_violations
            ));
        }
        out.push_str(&format!(
            "\n{}: read for {:.1} s, ended {:?}, {} Kafka errors read through.\n",
            if self.clean() { "CLEAN" } else { "NOT CLEAN" },
            self.seconds,
            self.ended,
            self.transient_errors
        ));
        for t in self.topics.iter().filter(|t| !t.examples.is_empty()) {
            out.push_str(&format!("`{}`, e.g.: {}\n", t.topic, t.examples.join(", ")));
        }
        for (what, examples) in [
            ("Lost", &self.lost_examples),
            (
                "Acknowledged but not on the analytics topic",
                &self.missing_from_analytics_examples,
            ),
            ("State regressions", &self.state_regression_examples),
        ] {
            if !examples.is_empty() {
                out.push_str(&format!("{what}, e.g.: {}\n", examples.join(", ")));
            }
        }
        if self.unknown > 0 {
            out.push_str(&format!(
                "{} tokens of this run are not in the ledger.\n",
                self.unknown
            ));
        }
        out
    }
}
