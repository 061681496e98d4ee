//! Conversation state, written behind: the changelog-with-cache model.
//!
//! A message changes its conversation's state in memory at once. The state
//! record is written to the compacted topic once per conversation per
//! flush, not once per message: a flush writes every conversation changed
//! since the previous one, every `state_flush_interval`, earlier when many
//! messages wait for it, and at shutdown. Flushes run one at a time, so a
//! conversation's records reach the topic in the order they were taken.
//!
//! A message whose other records Kafka has acknowledged is still not done
//! until the flush holding its state change is acknowledged too: its offset
//! is stored only then. A worker killed before a flush loses nothing: the
//! next owner rebuilds the states from the topic (as of the last flush) and
//! redoes the messages above the committed offset.

/// The bookkeeping of one partition's state writes.
#[derive(Debug)]
pub struct WriteBehind {
    /// Conversations changed since the last flush was taken.
    dirty: foldhash::HashSet<String>,
    /// The flush that changes made now belong to.
    open: u64,
    /// Every flush up to this one is acknowledged.
    flushed: u64,
    /// Whether a flush is being written.
    writing: bool,
    /// Messages done but for their state: (their flush, their offset).
    waiting: Vec<(u64, i64)>,
}

impl Default for WriteBehind {
    fn default() -> Self {
        Self {
            dirty: foldhash::HashSet::default(),
            open: 1,
            flushed: 0,
            writing: false,
            waiting: Vec::new(),
        }
    }
}

/// A flush to write: these conversations' current states.
#[derive(Debug)]
pub struct Flush {
    /// Its number, for [`WriteBehind::acknowledged`].
    pub number: u64,
    /// The conversations to write.
    pub keys: Vec<String>,
}

impl WriteBehind {
    /// Conversation `key`'s state changed; returns the flush that will
    /// write it.
    pub fn changed(&mut self, key: &str) -> u64 {
        if !self.dirty.contains(key) {
            self.dirty.insert(key.to_owned());
        }
        self.open
    }

    /// A message's records are acknowledged; its state change (if any)
    /// belongs to flush `flush`. True when the message is done now; else it
    /// is returned by [`Self::acknowledged`] once that flush is.
    pub fn outputs_done(&mut self, flush: Option<u64>, offset: i64) -> bool {
        match flush {
            Some(flush) if flush > self.flushed => {
                self.waiting.push((flush, offset));
                false
            }
            _ => true,
        }
    }

    /// Messages waiting for a flush.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Takes the next flush, unless one is being written or nothing changed.
    pub fn take(&mut self) -> Option<Flush> {
        if self.writing || self.dirty.is_empty() {
            return None;
        }
        self.writing = true;
        let number = self.open;
        self.open += 1;
        Some(Flush {
            number,
            keys: self.dirty.drain().collect(),
        })
    }

    /// Flush `number` is acknowledged: returns the offsets of the messages
    /// that waited for it, now done.
    pub fn acknowledged(&mut self, number: u64) -> Vec<i64> {
        self.writing = false;
        self.flushed = self.flushed.max(number);
        let flushed = self.flushed;
        let mut done = Vec::new();
        self.waiting.retain(|&(flush, offset)| {
            if flush <= flushed {
                done.push(offset);
                false
            } else {
                true
            }
        });
        done
    }

    /// Nothing changed is left unwritten and no message waits.
    pub fn idle(&self) -> bool {
        self.dirty.is_empty() && self.waiting.is_empty() && !self.writing
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_is_done_once_the_flush_holding_its_change_is_acknowledged() {
        let mut wb = WriteBehind::default();
        let first = wb.changed("a");
        assert_eq!(
            wb.changed("a"),
            first,
            "one record per conversation per flush"
        );
        wb.changed("b");
        assert!(!wb.outputs_done(Some(first), 10));
        assert!(wb.outputs_done(None, 11), "no state change: done at once");
        let flush = wb.take().expect("dirty");
        assert_eq!(flush.number, first);
        let mut keys = flush.keys.clone();
        keys.sort();
        assert_eq!(keys, ["a", "b"]);
        assert!(wb.take().is_none(), "one flush at a time");
        // A change made while the flush is written belongs to the next one.
        let second = wb.changed("a");
        assert!(second > first);
        assert!(!wb.outputs_done(Some(second), 12));
        assert_eq!(wb.acknowledged(first), [10]);
        assert_eq!(wb.waiting(), 1);
        let flush = wb.take().expect("a changed again");
        assert_eq!(flush.keys, ["a"]);
        assert_eq!(wb.acknowledged(flush.number), [12]);
        assert!(wb.idle());
        // Outputs acknowledged after their flush was: done at once.
        let third = wb.changed("c");
        let flush = wb.take().unwrap();
        wb.acknowledged(flush.number);
        assert!(wb.outputs_done(Some(third), 13));
    }
}
