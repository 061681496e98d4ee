//! A per-bot circuit breaker.
//!
//! After `failures` consecutive failed calls the circuit opens: calls fail
//! at once, without reaching the bot, for `open_for`. Then one trial call
//! is let through; it closes the circuit if it succeeds and opens it again
//! if it fails. A trial call that never reports (dropped before it ended)
//! counts as failed, so the circuit cannot stay half-open for good. Only failures that say the bot is unwell count (timeouts,
//! unavailable, 5xx): a bot refusing one bad request is not down.
//!
//! Small enough to own: the circuit-breaker crates on crates.io are young,
//! and this one reports its state through the metrics and logs used
//! everywhere else.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// One trial call is in flight.
    HalfOpen,
}

/// One bot's circuit.
#[derive(Debug)]
pub struct Breaker {
    name: String,
    failures: u32,
    open_for: Duration,
    state: Mutex<State>,
    open_gauge: metrics::Gauge,
}

impl Breaker {
    /// A closed circuit for the destination `name`; `failures` = 0 never opens.
    pub fn new(name: String, failures: u32, open_for: Duration) -> Self {
        let open_gauge =
            metrics::gauge!("switchboard_destination_circuit_open", "destination" => name.clone());
        open_gauge.set(0.0);
        Self {
            name,
            failures,
            open_for,
            state: Mutex::new(State::Closed { failures: 0 }),
            open_gauge,
        }
    }

    /// Lets a call go ahead now, or not. The call reports how it went with
    /// [`Call::record`]; the circuit's trial call that is dropped without
    /// reporting counts as a failure.
    pub fn permit(self: &Arc<Self>) -> Option<Call> {
        let mut state = self.state.lock().expect("breaker lock");
        let trial = match *state {
            State::Closed { .. } => false,
            State::Open { until } if Instant::now() >= until => {
                *state = State::HalfOpen;
                true
            }
            State::Open { .. } | State::HalfOpen => return None,
        };
        Some(Call {
            breaker: self.clone(),
            trial,
            recorded: false,
        })
    }

    /// Records how a permitted call went: `healthy` unless it failed in a
    /// way that says the bot is unwell.
    fn record(&self, healthy: bool) {
        if self.failures == 0 {
            return;
        }
        let mut state = self.state.lock().expect("breaker lock");
        let next = match (*state, healthy) {
            (State::Closed { .. }, true) => State::Closed { failures: 0 },
            (State::Closed { failures }, false) if failures + 1 < self.failures => State::Closed {
                failures: failures + 1,
            },
            (State::Closed { .. } | State::HalfOpen, false) => {
                tracing::warn!(destination = %self.name, open_for = ?self.open_for, "circuit opened");
                self.open_gauge.set(1.0);
                State::Open {
                    until: Instant::now() + self.open_for,
                }
            }
            (State::HalfOpen, true) => {
                tracing::info!(destination = %self.name, "circuit closed");
                self.open_gauge.set(0.0);
                State::Closed { failures: 0 }
            }
            // A call that started before the circuit opened.
            (open @ State::Open { .. }, _) => open,
        };
        *state = next;
    }
}

/// A call the breaker let through. Dropped without [`Call::record`], a
/// trial call counts as a failure (the circuit opens again for
/// `open_for`); an ordinary call says nothing about the bot.
#[must_use = "record how the call went"]
pub struct Call {
    breaker: Arc<Breaker>,
    trial: bool,
    recorded: bool,
}

impl Call {
    /// Records how the call went: `healthy` unless it failed in a way that
    /// says the bot is unwell.
    pub fn record(mut self, healthy: bool) {
        self.recorded = true;
        self.breaker.record(healthy);
    }

    /// The call failed `elapsed` after it was asked for, long past its
    /// timeout: this process was paused, not the bot unwell. The circuit
    /// stays as it was (a trial call unrecorded counts as failed, as always).
    pub fn ended_by_a_pause(self, elapsed: Duration) {
        tracing::info!(destination = %self.breaker.name, ?elapsed, "bot call ended long past its timeout (this process was paused); not held against the bot");
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        if self.trial && !self.recorded {
            tracing::debug!(destination = %self.breaker.name, "trial call dropped; counted as failed");
            self.breaker.record(false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_consecutive_failures_and_closes_after_a_good_trial() {
        let breaker = Arc::new(Breaker::new(
            "bot:test".into(),
            3,
            Duration::from_millis(50),
        ));
        for _ in 0..2 {
            breaker.permit().unwrap().record(false);
        }
        breaker.permit().unwrap().record(true); // a success resets the count
        for _ in 0..3 {
            breaker.permit().unwrap().record(false);
        }
        assert!(breaker.permit().is_none(), "open");
        std::thread::sleep(Duration::from_millis(60));
        let trial = breaker.permit().expect("one trial call");
        assert!(breaker.permit().is_none(), "only one");
        trial.record(false);
        assert!(
            breaker.permit().is_none(),
            "the failed trial opened it again"
        );
        std::thread::sleep(Duration::from_millis(60));
        breaker.permit().unwrap().record(true);
        assert!(
            breaker.permit().is_some() && breaker.permit().is_some(),
            "closed"
        );
    }

    #[test]
    fn a_dropped_trial_counts_as_a_failure() {
        let breaker = Arc::new(Breaker::new(
            "bot:dropped".into(),
            1,
            Duration::from_millis(50),
        ));
        breaker.permit().unwrap().record(false);
        std::thread::sleep(Duration::from_millis(60));
        // The trial call's future is dropped (its partition was revoked):
        // nothing is recorded.
        drop(breaker.permit().expect("the trial"));
        assert!(breaker.permit().is_none(), "the dropped trial reopened it");
        std::thread::sleep(Duration::from_millis(60));
        assert!(
            breaker.permit().is_some(),
            "a new trial after circuit_open_for, not half-open forever"
        );
    }

    #[test]
    fn a_dropped_ordinary_call_changes_nothing() {
        let breaker = Arc::new(Breaker::new(
            "bot:ordinary".into(),
            1,
            Duration::from_secs(60),
        ));
        drop(breaker.permit().unwrap());
        assert!(breaker.permit().is_some(), "still closed");
    }

    #[test]
    fn zero_failures_never_opens() {
        let breaker = Arc::new(Breaker::new("bot:off".into(), 0, Duration::from_secs(60)));
        for _ in 0..100 {
            breaker.permit().unwrap().record(false);
        }
    }
}
