//! Which offset of a partition is safe to commit when messages complete out
//! of order.
//!
//! Messages of different conversations are routed concurrently, so offset
//! 7 may finish before offset 5. The committed offset must never pass an
//! unfinished message, or a crash would skip it: only the contiguous prefix
//! of completed offsets counts.

use std::collections::BTreeSet;

/// Tracks the in-flight offsets of one partition.
#[derive(Debug, Default)]
pub struct OffsetTracker {
    in_flight: BTreeSet<i64>,
    /// Highest offset handed out so far.
    highest: Option<i64>,
    /// Last offset reported safe.
    reported: Option<i64>,
}

impl OffsetTracker {
    /// A message at `offset` starts (offsets start in increasing order).
    pub fn start(&mut self, offset: i64) {
        debug_assert!(
            self.highest.is_none_or(|h| offset > h),
            "offsets start in order"
        );
        if self.highest.is_none() {
            // Everything before the first message is someone else's business.
            self.reported = Some(offset - 1);
        }
        self.in_flight.insert(offset);
        self.highest = Some(offset);
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
        if self.reported.is_some_and(|r| r >= safe) {
            return None;
        }
        self.reported = Some(safe);
        Some(safe)
    }

    /// Messages started and not yet done.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }
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
