//! A routed message's records until Kafka has them all.
//!
//! While every answer is a success, the records' delivery reports are
//! polled in place ([`Settle`] is a plain future: no boxed future, join or
//! task per message). The first failure, or a bot that failed for good,
//! hands the message to the retrying path: the failed records are sent
//! again with the router's budget ([`Router::settle`]), and what fails for
//! good goes to the dead-letter topic.

use std::{
    pin::Pin,
    task::{Context, Poll, ready},
    time::SystemTime,
};

use futures::future::join_all;
use tokio_util::sync::CancellationToken;

use super::{Failure, Interrupted, Router, Write, decide::Pending};
use crate::destinations::topics::Source;

/// What a routed message handed to the producer, and what is needed to
/// dead-letter it.
pub(super) struct Outputs<'a> {
    /// Its records, in the order they were enqueued.
    pub writes: Vec<Write<'a>>,
    /// Destinations that failed for good before (its bots).
    pub failures: Vec<Failure>,
    pub key: String,
    /// The record's bytes, as read: what a dead letter holds.
    pub record: Vec<u8>,
    pub source: Source<'a>,
    /// When Switchboard received the message, for the end-to-end latency.
    pub received: Option<SystemTime>,
}

/// Resolves when Kafka has acknowledged every record of a routed message
/// (what failed for good is dead-lettered first), or with [`Interrupted`].
pub struct Settle<'a> {
    router: &'a Router,
    stop: &'a CancellationToken,
    stage: Stage<'a>,
}

enum Stage<'a> {
    /// Every answer so far a success: the first `acknowledged` writes.
    Acknowledging {
        outputs: Outputs<'a>,
        acknowledged: usize,
    },
    /// Something failed: resending, and dead-lettering.
    Retrying(Pending<'a, Result<(), Interrupted>>),
    /// Between the two.
    Moving,
}

impl<'a> Settle<'a> {
    pub(super) fn new(
        router: &'a Router,
        stop: &'a CancellationToken,
        outputs: Outputs<'a>,
    ) -> Self {
        Self {
            router,
            stop,
            stage: Stage::Acknowledging {
                outputs,
                acknowledged: 0,
            },
        }
    }

    /// Settling that is a future of its own, all on the slow path: a
    /// poison record's dead letter, or a message whose customer links are
    /// written first.
    pub fn wrapping(
        router: &'a Router,
        stop: &'a CancellationToken,
        work: Pending<'a, Result<(), Interrupted>>,
    ) -> Self {
        Self {
            router,
            stop,
            stage: Stage::Retrying(work),
        }
    }
}

impl Future for Settle<'_> {
    type Output = Result<(), Interrupted>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        if let Stage::Acknowledging {
            outputs,
            acknowledged,
        } = &mut this.stage
        {
            if outputs.failures.is_empty() {
                while let Some(write) = outputs.writes.get_mut(*acknowledged) {
                    if ready!(write.enqueued.poll_acknowledged(cx)).is_err() {
                        break;
                    }
                    let handles = this.router.metrics.destination(write.kind);
                    handles.deliveries.increment(1);
                    handles
                        .duration
                        .record(write.enqueued.at.elapsed().as_secs_f64());
                    *acknowledged += 1;
                }
                if *acknowledged == outputs.writes.len() {
                    this.router.metrics.routed(outputs.received);
                    return Poll::Ready(Ok(()));
                }
            }
            let Stage::Acknowledging {
                mut outputs,
                acknowledged,
            } = std::mem::replace(&mut this.stage, Stage::Moving)
            else {
                unreachable!("matched above")
            };
            outputs.writes.drain(..acknowledged);
            this.stage = Stage::Retrying(Box::pin(this.router.retry(outputs, this.stop)));
        }
        match &mut this.stage {
            Stage::Retrying(work) => work.as_mut().poll(cx),
            _ => unreachable!("moved to retrying above"),
        }
    }
}

impl Router {
    /// The retrying path: `outputs`' writes not yet acknowledged are
    /// awaited and sent again; what failed for good, and its failed bots,
    /// are dead-lettered.
    async fn retry<'a>(
        &'a self,
        outputs: Outputs<'a>,
        stop: &'a CancellationToken,
    ) -> Result<(), Interrupted> {
        let Outputs {
            writes,
            failures,
            key,
            record,
            source,
            received,
        } = outputs;
        let settled = join_all(writes.into_iter().map(|w| self.settle(w, stop))).await;
        // Refused for good: the message goes to the dead-letter topic
        // instead, and the partition moves on.
        for failure in &failures {
            Box::pin(self.dead_letter_failure(&key, &record, failure, source, stop)).await?;
        }
        for failure in settled.into_iter().collect::<Result<Vec<_>, _>>()? {
            let Some(failure) = failure else { continue };
            Box::pin(self.dead_letter_failure(&key, &record, &failure, source, stop)).await?;
        }
        self.metrics.routed(received);
        Ok(())
    }
}
