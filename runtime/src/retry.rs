//! Retries with jittered exponential backoff: the one retry loop every
//! stage uses for Kafka writes, bot calls and state rebuilds.
//!
//! A retry loop is cancel-safe: it stops at the first `stop` signal, between
//! or during attempts, and never loops on an error the caller calls fatal.

use std::{future::Future, time::Duration};

use crate::shutdown::Shutdown;

/// How long to wait between attempts, and how many to make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The first wait; each later one doubles, up to `max`.
    pub initial: Duration,
    /// The longest wait.
    pub max: Duration,
    /// Most attempts in all; 0 means no limit.
    pub max_attempts: u32,
    /// Whether each wait is drawn from [half, all] of its length, so that
    /// many clients failing together do not retry together.
    pub jitter: bool,
}

impl Backoff {
    /// Doubling waits from `initial` to `max`, jittered, without an attempt limit.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            max_attempts: 0,
            jitter: true,
        }
    }

    /// The same waits, giving up after `max_attempts` attempts (0: never).
    pub fn attempts(self, max_attempts: u32) -> Self {
        Self {
            max_attempts,
            ..self
        }
    }
}

/// The `stop` signal fired before the work succeeded or failed for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("stopped before the work finished")]
pub struct Cancelled;

/// Runs `attempt` until it succeeds, fails for good (an error `retryable`
/// refuses, or the attempt limit), or `stop` fires. Before each retry,
/// `on_retry` hears the error, the attempts so far and the wait. A failure
/// comes back with the number of attempts made.
pub async fn retry<T, E, F, Fut>(
    backoff: Backoff,
    stop: &Shutdown,
    retryable: impl Fn(&E) -> bool,
    mut on_retry: impl FnMut(&E, u32, Duration),
    mut attempt: F,
) -> Result<Result<T, (E, u32)>, Cancelled>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut delay = backoff.initial;
    let mut attempts = 0;
    loop {
        attempts += 1;
        let error = tokio::select! {
            result = attempt() => match result {
                Ok(value) => return Ok(Ok(value)),
                Err(error) => error,
            },
            _ = stop.cancelled() => return Err(Cancelled),
        };
        if !retryable(&error) || (backoff.max_attempts > 0 && attempts >= backoff.max_attempts) {
            return Ok(Err((error, attempts)));
        }
        let wait = if backoff.jitter {
            delay.mul_f64(rand::random_range(0.5..1.0))
        } else {
            delay
        };
        on_retry(&error, attempts, wait);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.cancelled() => return Err(Cancelled),
        }
        delay = (delay * 2).min(backoff.max);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    fn quick() -> Backoff {
        Backoff {
            jitter: false,
            ..Backoff::new(Duration::from_millis(1), Duration::from_millis(4))
        }
    }

    #[tokio::test]
    async fn retries_until_success_with_doubling_waits() {
        let calls = AtomicU32::new(0);
        let mut waits = Vec::new();
        let result = retry(
            quick(),
            &Shutdown::new(),
            |_: &&str| true,
            |_, _, wait| waits.push(wait),
            || async {
                match calls.fetch_add(1, Ordering::SeqCst) {
                    0..4 => Err("not yet"),
                    n => Ok(n),
                }
            },
        )
        .await;
        assert_eq!(result, Ok(Ok(4)));
        let ms = |n| Duration::from_millis(n);
        assert_eq!(waits, [ms(1), ms(2), ms(4), ms(4)]);
    }

    #[tokio::test]
    async fn stops_at_a_fatal_error_or_the_attempt_limit() {
        let fatal = retry(
            quick(),
            &Shutdown::new(),
            |e: &&str| *e != "fatal",
            |_, _, _| {},
            || async { Err::<(), _>("fatal") },
        )
        .await;
        assert_eq!(fatal, Ok(Err(("fatal", 1))));
        let limited = retry(
            quick().attempts(3),
            &Shutdown::new(),
            |_: &&str| true,
            |_, _, _| {},
            || async { Err::<(), _>("again") },
        )
        .await;
        assert_eq!(limited, Ok(Err(("again", 3))));
    }

    #[tokio::test]
    async fn a_stop_ends_the_wait() {
        let stop = Shutdown::new();
        let slow = Backoff::new(Duration::from_secs(3600), Duration::from_secs(3600));
        let stopping = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            stopping.cancel();
        });
        let result = retry(
            slow,
            &stop,
            |_: &&str| true,
            |_, _, _| {},
            || async { Err::<(), _>("down") },
        )
        .await;
        assert_eq!(result, Err(Cancelled));
    }
}
