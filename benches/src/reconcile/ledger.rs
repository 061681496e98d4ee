//! The load generator's ledger: every message it sent, with its
//! conversation, its sequence number in that conversation and what the
//! ingestion node answered. Written by `switchboard-bench --acked-out FILE`,
//! read by `switchboard-bench reconcile`.
//!
//! A text file: two `key=value` header lines, a column line, then one
//! comma-separated line per message:
//!
//! ```text
//! # switchboard ledger v1
//! run=0a1b2c3d
//! started_unix_ms=1790000000123
//! index,conversation,seq,outcome
//! 0,demo/webchat/0a1b2c3d-c0,0,acked
//! ```

use std::{
    io::{BufRead as _, BufWriter, Write as _},
    path::Path,
};

/// What became of a sent message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Outcome {
    /// Never sent (e.g. skipped by the client's in-flight bound).
    #[default]
    NotSent,
    /// Sent; no answer came.
    Unanswered,
    /// The node acknowledged it: Kafka has it.
    Acked,
    /// The node answered with an error (after any retries).
    Failed,
}

impl Outcome {
    fn name(self) -> &'static str {
        match self {
            Self::NotSent => "not_sent",
            Self::Unanswered => "unanswered",
            Self::Acked => "acked",
            Self::Failed => "failed",
        }
    }

    fn parse(name: &str) -> Option<Self> {
        [Self::NotSent, Self::Unanswered, Self::Acked, Self::Failed]
            .into_iter()
            .find(|o| o.name() == name)
    }
}

/// One sent message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Its index in the run (in its token).
    pub index: u64,
    /// Its conversation key (`tenant/channel/conversation`).
    pub conversation: String,
    /// Its sequence number within the conversation.
    pub seq: u64,
    /// What the node answered.
    pub outcome: Outcome,
}

/// A run's sent messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ledger {
    /// The run's id, as in its messages' tokens.
    pub run: String,
    /// When the run started, in milliseconds since the Unix epoch: Kafka
    /// records older than that are not the run's.
    pub started_unix_ms: u64,
    /// The messages, by index.
    pub entries: Vec<Entry>,
}

const MAGIC: &str = "# switchboard ledger v1";
const COLUMNS: &str = "index,conversation,seq,outcome";

impl Ledger {
    /// Writes the ledger to `path`.
    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        let file = std::fs::File::create(path)
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
        let mut out = BufWriter::new(file);
        writeln!(out, "{MAGIC}")?;
        writeln!(out, "run={}", self.run)?;
        writeln!(out, "started_unix_ms={}", self.started_unix_ms)?;
        writeln!(out, "{COLUMNS}")?;
        for e in &self.entries {
            anyhow::ensure!(
                !e.conversation.contains([',', '\n']),
                "conversation key {:?} has a comma or a newline",
                e.conversation
            );
            writeln!(
                out,
                "{},{},{},{}",
                e.index,
                e.conversation,
                e.seq,
                e.outcome.name()
            )?;
        }
        out.flush()?;
        Ok(())
    }

    /// Reads a ledger written by [`Ledger::write`].
    pub fn read(path: &Path) -> anyhow::Result<Self> {
        let file = std::fs::File::open(path)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
        let mut lines = std::io::BufReader::new(file).lines();
        let mut next = |what: &str| -> anyhow::Result<String> {
            lines
                .next()
                .transpose()?
                .ok_or_else(|| anyhow::anyhow!("{}: no {what} line", path.display()))
        };
        anyhow::ensure!(next("header")? == MAGIC, "{}: not a ledger", path.display());
        let header = |line: String, key: &str| -> anyhow::Result<String> {
            line.strip_prefix(key)
                .and_then(|l| l.strip_prefix('='))
                .map(str::to_owned)
                .ok_or_else(|| anyhow::anyhow!("{}: expected {key}=…", path.display()))
        };
        let run = header(next("run")?, "run")?;
        let started_unix_ms = header(next("started_unix_ms")?, "started_unix_ms")?.parse()?;
        anyhow::ensure!(
            next("columns")? == COLUMNS,
            "{}: unknown columns",
            path.display()
        );
        let mut entries = Vec::new();
        for (n, line) in lines.enumerate() {
            let line = line?;
            let bad = || anyhow::anyhow!("{} line {}: {line:?}", path.display(), n + 5);
            let mut fields = line.split(',');
            let mut field = || fields.next().ok_or_else(bad);
            let (index, conversation, seq, outcome) = (field()?, field()?, field()?, field()?);
            entries.push(Entry {
                index: index.parse().map_err(|_| bad())?,
                conversation: conversation.to_owned(),
                seq: seq.parse().map_err(|_| bad())?,
                outcome: Outcome::parse(outcome).ok_or_else(bad)?,
            });
        }
        Ok(Self {
            run,
            started_unix_ms,
            entries,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_a_file() {
        let ledger = Ledger {
            run: "0a1b2c".into(),
            started_unix_ms: 1_790_000_000_123,
            entries: vec![
                Entry {
                    index: 0,
                    conversation: "demo/webchat/0a1b2c-c0".into(),
                    seq: 0,
                    outcome: Outcome::Acked,
                },
                Entry {
                    index: 3,
                    conversation: "demo/webchat/0a1b2c-c1".into(),
                    seq: 1,
                    outcome: Outcome::Failed,
                },
                Entry {
                    index: 4,
                    conversation: "demo/webchat/0a1b2c-c0".into(),
                    seq: 2,
                    outcome: Outcome::Unanswered,
                },
            ],
        };
        let dir = std::env::temp_dir().join(format!("ledger-{}", uuid::Uuid::now_v7()));
        ledger.write(&dir).unwrap();
        let text = std::fs::read_to_string(&dir).unwrap();
        assert!(
            text.contains("\n3,demo/webchat/0a1b2c-c1,1,failed\n"),
            "{text}"
        );
        assert_eq!(Ledger::read(&dir).unwrap(), ledger);
        std::fs::write(&dir, text.replace("failed", "lost")).unwrap();
        let err = Ledger::read(&dir).unwrap_err().to_string();
        assert!(err.contains("line 6"), "{err}");
        std::fs::remove_file(&dir).unwrap();
    }
}
