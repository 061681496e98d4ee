//! Delivery: waiting for Kafka's answers to a message's records, resending
//! what failed and may succeed, and calling bots, each with the router's
//! backoff and retry budget.

use std::time::Instant;

use switchboard_proto::v1::{BotRequest, BotResponse};
use switchboard_runtime::{
    retry::{self, Backoff},
    trace::TraceParent,
};
use tokio_util::sync::CancellationToken;

use super::{Failure, Interrupted, Router, Write};
use crate::destinations::{DestinationError, DestinationKind as Kind};

impl Router {
    /// Waits for Kafka's answer to a record handed to the producer. A
    /// retryable failure is sent again (up to the write's budget; 0 is no
    /// limit); what fails for good is returned, for the dead-letter topic.
    pub(super) async fn settle(
        &self,
        write: Write<'_>,
        stop: &CancellationToken,
    ) -> Result<Option<Failure>, Interrupted> {
        let Write {
            kind,
            max_attempts,
            destination,
            mut enqueued,
        } = write;
        let handles = self.metrics.destination(kind);
        let first = enqueued.acknowledged().await;
        handles.duration.record(enqueued.at.elapsed().as_secs_f64());
        let error = match first {
            Ok(()) => {
                handles.deliveries.increment(1);
                return Ok(None);
            }
            Err(error) => error,
        };
        handles.errors.increment(1);
        if !error.retryable || max_attempts == 1 {
            tracing::error!(%error, "giving up on destination");
            return Ok(Some(Failure {
                destination,
                error,
                attempts: 1,
            }));
        }
        tracing::warn!(%error, "destination failed, retrying");
        handles.retries.increment(1);
        let record = &enqueued.record;
        // 0 stays 0: no limit.
        let remaining = max_attempts.saturating_sub(1);
        let outcome = self
            .retrying(kind, remaining, stop, || self.outputs.resend(record))
            .await?;
        Ok(outcome.err().map(|(error, attempts)| Failure {
            destination,
            error,
            attempts: attempts + 1,
        }))
    }

    /// Calls bot `name` until it answers, fails for good, or `stop` fires.
    pub(super) async fn call_bot(
        &self,
        name: &str,
        request: &BotRequest,
        trace: &TraceParent,
        stop: &CancellationToken,
    ) -> Result<Result<BotResponse, (DestinationError, u32)>, Interrupted> {
        let bot = &self.bots[name]; // checked when the rules were loaded
        self.retrying(Kind::Bot, self.max_attempts, stop, || {
            bot.handle(request.clone(), trace)
        })
        .await
    }

    /// Runs `attempt` until it succeeds, fails for good (a fatal error, or
    /// `max_attempts` attempts; 0 means no limit), or `stop` fires, with
    /// the router's backoff; each attempt is timed and counted.
    pub(super) async fn retrying<T, F, Fut>(
        &self,
        kind: Kind,
        max_attempts: u32,
        stop: &CancellationToken,
        mut attempt: F,
    ) -> Result<Result<T, (DestinationError, u32)>, Interrupted>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, DestinationError>>,
    {
        let handles = self.metrics.destination(kind);
        let outcome = retry::retry(
            Backoff::new(self.backoff, self.backoff_max).attempts(max_attempts),
            stop,
            |error: &DestinationError| error.retryable,
            |error, _, wait| {
                tracing::warn!(%error, retry_in = ?wait, "destination failed, retrying");
                handles.retries.increment(1);
            },
            || {
                let started = Instant::now();
                let attempt = attempt();
                async move {
                    let result = attempt.await;
                    handles.duration.record(started.elapsed().as_secs_f64());
                    match &result {
                        Ok(_) => handles.deliveries.increment(1),
                        Err(_) => handles.errors.increment(1),
                    }
                    result
                }
            },
        )
        .await
        .map_err(|retry::Cancelled| Interrupted)?;
        if let Err((error, attempts)) = &outcome {
            tracing::error!(%error, attempts, "giving up on destination");
        }
        Ok(outcome)
    }
}
