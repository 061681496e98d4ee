//! The messages a partition routed together, awaited together: one future
//! for what a poll returned, not one per message.
//!
//! A batch's messages are looked at in offset order: a message's records
//! are polled only once those of the messages before it are all
//! acknowledged. That costs nothing, since offsets are stored as a
//! contiguous prefix anyway, and Kafka answers a partition's records in
//! the order they were sent.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use crate::route::{Interrupted, Settle};

/// A message's offset, and the flush holding its state change, if any.
pub(super) type Tag = (i64, Option<u64>);

/// Resolves with every message's tag and outcome, in offset order, when
/// the last one is settled.
#[derive(Default)]
pub(super) struct Batch<'a> {
    waiting: Vec<(Tag, Settle<'a>)>,
    settled: Vec<(Tag, Result<(), Interrupted>)>,
}

impl<'a> Batch<'a> {
    pub fn push(&mut self, tag: Tag, settle: Settle<'a>) {
        self.waiting.push((tag, settle));
    }

    /// Room for `more` messages, taken at once: a batch is as large as
    /// what a poll returned, up to thousands of messages, and growing it
    /// one doubling at a time copies it and touches fresh memory each time.
    pub fn reserve(&mut self, more: usize) {
        self.waiting.reserve(more);
    }

    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }
}

impl Future for Batch<'_> {
    type Output = Vec<(Tag, Result<(), Interrupted>)>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        if this.settled.is_empty() {
            this.settled.reserve_exact(this.waiting.len());
        }
        while let Some((tag, settle)) = this.waiting.get_mut(this.settled.len()) {
            let Poll::Ready(outcome) = Pin::new(settle).poll(cx) else {
                return Poll::Pending;
            };
            this.settled.push((*tag, outcome));
        }
        this.waiting.clear();
        Poll::Ready(std::mem::take(&mut this.settled))
    }
}
