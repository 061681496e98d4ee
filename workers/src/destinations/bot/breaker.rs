//! A per-bot circuit breaker.
//!
//! After `failures` consecutive failed calls the circuit opens: calls fail
//! at once, without reaching the bot, for `open_for`. Then one trial call
//! is let through; it closes the circuit if it succeeds and opens it again
//! if it fails. Only failures that say the bot is unwell count (timeouts,
//! unavailable, 5xx): a bot refusing one bad request is not down.
//!
//! Small enough to own: the circuit-breaker crates on crates.io are young,
//! and this one reports its state through the metrics and logs used
//! everywhere else.

use std::{
    sync::Mutex,
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

    /// Whether a call may go ahead now.
    pub fn permit(&self) -> bool {
        let mut state = self.state.lock().expect("breaker lock");
        match *state {
            State::Closed { .. } => true,
            State::Open { until } if Instant::now() >= until => {
                *state = State::HalfOpen;
                true
            }
            State::Open { .. } | State::HalfOpen => false,
        }
    }

    /// Records how a permitted call went: `healthy` unless it failed in a
    /// way that says the bot is unwell.
    pub fn record(&self, healthy: bool) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_consecutive_failures_and_closes_after_a_good_trial() {
        let breaker = Breaker::new("bot:test".into(), 3, Duration::from_millis(50));
        for _ in 0..2 {
            assert!(breaker.permit());
            breaker.record(false);
        }
        breaker.record(true); // a success resets the count
        for _ in 0..3 {
            assert!(breaker.permit());
            breaker.record(false);
        }
        assert!(!breaker.permit(), "open");
        std::thread::sleep(Duration::from_millis(60));
        assert!(breaker.permit(), "one trial call");
        assert!(!breaker.permit(), "only one");
        breaker.record(false);
        assert!(!breaker.permit(), "the failed trial opened it again");
        std::thread::sleep(Duration::from_millis(60));
        assert!(breaker.permit());
        breaker.record(true);
        assert!(breaker.permit() && breaker.permit(), "closed");
    }

    #[test]
    fn zero_failures_never_opens() {
        let breaker = Breaker::new("bot:off".into(), 0, Duration::from_secs(60));
        for _ in 0..100 {
            assert!(breaker.permit());
            breaker.record(false);
        }
    }
}
