//! Which offset of a partition is safe to commit when messages complete out
//! of order.
//!
//! Messages of different conversations are routed concurrently, so offset
//! 7 may finish before offset 5. The committed offset must never pass an
//! unfinished message, or a crash would skip it: only the contiguous prefix
//! of completed offsets counts.
//!
//! On a rebalance, the messages done *above* that prefix would be redone by
//! the partition's next owner: with a slow conversation at the head of a
//! partition, that is everything the other conversations finished meanwhile
//! (the duplicate storm Parallel Consumer's issue #857 describes). So the
//! commit made on revoke carries them in its metadata ([`OffsetTracker::skip_metadata`]),
//! and the next owner skips them ([`parse_skip_metadata`]).

use std::collections::BTreeSet;

/// Marks commit metadata written by Switchboard workers.
const SKIP_PREFIX: &str = "switchboard-done:";
/// Kafka's default `offset.metadata.max.bytes` is 4096.
const MAX_METADATA: usize = 3000;

/// Tracks the in-flight offsets of one partition.
#[derive(Debug, Default)]
pub struct OffsetTracker {
    in_flight: BTreeSet<i64>,
    /// Highest offset handed out so far.
    highest: Option<i64>,
    /// Last offset reported safe.
    reported: Option<i64>,
    /// Offsets done above the safe prefix.
    done_above: BTreeSet<i64>,
}

impl OffsetTracker {
    /// A message at `offset` starts (offsets start in increasing order).
    /// True for the partition's first.
    pub fn start(&mut self, offset: i64) -> bool {
        debug_assert!(
            self.highest.is_none_or(|h| offset > h),
            "offsets start in order"
        );
        let first = self.highest.is_none();
        if first {
            // Everything before the first message is someone else's business.
            self.reported = Some(offset - 1);
        }
        self.in_flight.insert(offset);
        self.highest = Some(offset);
        first
    }

    /// A message at `offset` is done (routed, dropped as a copy, or skipped
    /// as poison). Returns the highest offset that is now safe to store, if
    /// it moved: every message up to it is done.
    pub fn complete(&mut self, offset: i64) -> Option<i64> {
        self.in_flight.remove(&offset);
        let safe = match self.in_flight.first() {
            Some(lowest) => lowest - 1,
            None => self.highest?,
        };
        if offset > safe {
            self.done_above.insert(offset);
        }
        self.done_above = self.done_above.split_off(&(safe + 1));
        if self.reported.is_some_and(|r| r >= safe) {
            return None;
        }
        self.reported = Some(safe);
        Some(safe)
    }

    /// [`complete`](Self::complete) for several messages: the highest
    /// offset now safe to store, if it moved, so that it is stored once.
    pub fn complete_all(&mut self, offsets: impl IntoIterator<Item = i64>) -> Option<i64> {
        offsets
            .into_iter()
            .fold(None, |safe, offset| self.complete(offset).or(safe))
    }

    /// Messages started and not yet done.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Messages done above the oldest one not done. The consume loop takes
    /// no new message while this is at its bound, so it stays bounded even
    /// when the oldest message is retried forever.
    pub fn done_ahead(&self) -> usize {
        self.done_above.len()
    }

    /// The offset to commit (the first message not done) and metadata
    /// listing the messages done above it, relative to it (`3-5,9`); `None`
    /// before any message started. Offsets that do not fit are left out:
    /// they are redone, which is safe.
    pub fn commit_point(&self) -> Option<(i64, String)> {
        let next = self.reported? + 1;
        let mut metadata = String::from(SKIP_PREFIX);
        let mut ranges = Vec::<(i64, i64)>::new();
        for &o in &self.done_above {
            match ranges.last_mut() {
                Some((_, end)) if *end + 1 == o => *end = o,
                _ => ranges.push((o, o)),
            }
        }
        for (i, (start, end)) in ranges.iter().enumerate() {
            let part = if start == end {
                format!("{}", start - next)
            } else {
                format!("{}-{}", start - next, end - next)
            };
            if metadata.len() + part.len() + 1 > MAX_METADATA {
                break;
            }
            if i > 0 {
                metadata.push(',');
            }
            metadata.push_str(&part);
        }
        Some((next, metadata))
    }
}

/// The offsets a commit's metadata lists as done above the committed offset
/// `committed`; empty for metadata Switchboard did not write.
pub fn parse_skip_metadata(committed: i64, metadata: &str) -> BTreeSet<i64> {
    let Some(list) = metadata.strip_prefix(SKIP_PREFIX) else {
        return BTreeSet::new();
    };
    let mut done = BTreeSet::new();
    for part in list.split(',').filter(|p| !p.is_empty()) {
        let (start, end) = part.split_once('-').unwrap_or((part, part));
        if let (Ok(start), Ok(end)) = (start.parse::<i64>(), end.parse::<i64>())
            && (0..=end).contains(&start)
            && end - start < 1_000_000
        {
            done.extend((start..=end).map(|o| committed + o));
        }
    }
    done
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_contiguous_prefix_is_safe() {
        let mut t = OffsetTracker::default();
        for o in 10..15 {
            t.start(o);
        }
        assert_eq!(t.complete(12), None, "10 and 11 still run");
        assert_eq!(t.complete(11), None);
        assert_eq!(t.complete(10), Some(12), "10..=12 are done");
        assert_eq!(t.complete(14), None, "13 still runs");
        assert_eq!(t.complete(13), Some(14));
        assert_eq!(t.in_flight(), 0);
        t.start(15);
        assert_eq!(t.complete(15), Some(15));
        for o in 16..21 {
            t.start(o);
        }
        assert_eq!(t.complete_all([17, 19]), None, "16 still runs");
        assert_eq!(t.complete_all([16, 20]), Some(17), "18 still runs");
        assert_eq!(t.complete_all([18]), Some(20));
    }

    #[test]
    fn work_done_above_the_prefix_travels_in_the_commit_metadata() {
        let mut t = OffsetTracker::default();
        assert_eq!(t.commit_point(), None);
        for o in 100..110 {
            t.start(o);
        }
        for o in [101, 102, 103, 105, 109] {
            assert_eq!(t.complete(o), None);
        }
        let (next, metadata) = t.commit_point().unwrap();
        assert_eq!((next, metadata.as_str()), (100, "switchboard-done:1-3,5,9"));
        assert_eq!(
            parse_skip_metadata(next, &metadata)
                .into_iter()
                .collect::<Vec<_>>(),
            [101, 102, 103, 105, 109]
        );
        // 100 finishes: the prefix moves past 103 and the list shrinks.
        assert_eq!(t.complete(100), Some(103));
        assert_eq!(
            t.commit_point().unwrap(),
            (104, "switchboard-done:1,5".to_owned())
        );
        assert!(parse_skip_metadata(5, "").is_empty());
        assert!(parse_skip_metadata(5, "someone else's").is_empty());
        assert!(parse_skip_metadata(5, "switchboard-done:x,3-1,-2").is_empty());
    }

    #[test]
    fn done_ahead_counts_what_finished_above_the_oldest_unfinished() {
        let mut t = OffsetTracker::default();
        for o in 0..10 {
            t.start(o);
        }
        for o in 1..10 {
            t.complete(o);
        }
        assert_eq!(t.done_ahead(), 9, "0 is stuck");
        assert_eq!(t.complete(0), Some(9));
        assert_eq!(t.done_ahead(), 0);
    }

    #[test]
    fn a_gap_in_offsets_is_fine() {
        // Compacted or transactional topics skip offsets.
        let mut t = OffsetTracker::default();
        t.start(3);
        t.start(9);
        assert_eq!(t.complete(9), None);
        assert_eq!(t.complete(3), Some(9));
    }
}
