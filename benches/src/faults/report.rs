//! A fault scenario's report: the load's outcome, the reconciliation and
//! what was observed, as JSON and Markdown.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::reconcile::report::Reconciliation;

/// The load generator's side of a scenario.
#[derive(Debug, Clone, Serialize)]
pub struct LoadOutcome {
    /// Messages sent.
    pub sent: u64,
    /// Messages acknowledged (after retries).
    pub acked: u64,
    /// Messages not acknowledged in the end, by gRPC code.
    pub errors: BTreeMap<String, u64>,
    /// Attempts sent again, by the code that answered the one before.
    pub retries: BTreeMap<String, u64>,
    /// Acknowledgements per second.
    pub acked_rate: f64,
    /// The longest run of whole seconds without an acknowledgement, from
    /// the first acknowledgement to the last.
    pub longest_stall_seconds: u64,
    /// 99th percentile of publish latency (intended send → ack, retries
    /// included), in ms.
    pub p99_ms: f64,
}

/// Throughput of the healthy bot around another bot's outage.
#[derive(Debug, Clone, Serialize)]
pub struct Throughput {
    /// Replies per second of the healthy bot before the outage.
    pub before: f64,
    /// During the outage.
    pub during: f64,
    /// After it.
    pub after: f64,
    /// The failing bot's messages that went to the dead-letter topic.
    pub dead_lettered: u64,
}

/// One scenario's result.
#[derive(Debug, Clone, Serialize)]
pub struct FaultReport {
    /// The scenario's name.
    pub scenario: String,
    /// What was done, when.
    pub events: Vec<String>,
    /// The load.
    pub load: LoadOutcome,
    /// The destination topics against the ledger.
    pub reconciliation: Reconciliation,
    /// With `bot-outage`: the other conversations' throughput.
    pub throughput: Option<Throughput>,
    /// Checks that failed; empty when the scenario passed.
    pub failures: Vec<String>,
}

impl FaultReport {
    /// Whether every check held.
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }

    /// The header of the results table ([`FaultReport::row`]).
    pub const TABLE_HEADER: &str = "| scenario | sent | acked | retried | not acked | longest stall (s) | delivered (analytics) | lost | order violations | duplicates | delivered unacked | state regressions | result |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n";

    /// One row of the results table.
    pub fn row(&self) -> String {
        let r = &self.reconciliation;
        format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            self.scenario,
            self.load.sent,
            self.load.acked,
            self.load.retries.values().sum::<u64>(),
            self.load.errors.values().sum::<u64>(),
            self.load.longest_stall_seconds,
            r.delivered,
            r.lost,
            r.order_violations,
            r.duplicates,
            r.delivered_unacked,
            r.state_regressions,
            if self.passed() { "pass" } else { "FAIL" }
        )
    }

    /// The whole report in Markdown.
    pub fn markdown(&self) -> String {
        let mut out = format!("## Fault scenario `{}`\n\n", self.scenario);
        for event in &self.events {
            out.push_str(&format!("- {event}\n"));
        }
        out.push_str(&format!(
            "\nLoad: {} sent, {} acknowledged ({:.0}/s, p99 {:.0} ms), retries {:?}, not acknowledged {:?}; longest time without an acknowledgement: {} s.\n\n",
            self.load.sent,
            self.load.acked,
            self.load.acked_rate,
            self.load.p99_ms,
            self.load.retries,
            self.load.errors,
            self.load.longest_stall_seconds
        ));
        if let Some(t) = &self.throughput {
            out.push_str(&format!(
                "Healthy bot's replies per second: {:.0} before, {:.0} during, {:.0} after the outage; {} of the failing bot's messages dead-lettered.\n\n",
                t.before, t.during, t.after, t.dead_lettered
            ));
        }
        out.push_str(&self.reconciliation.markdown());
        out.push_str(if self.passed() {
            "\nResult: pass.\n"
        } else {
            "\nResult: FAIL\n"
        });
        for failure in &self.failures {
            out.push_str(&format!("- {failure}\n"));
        }
        out
    }
}
