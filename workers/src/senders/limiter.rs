//! A token bucket per sender (phone number, page, Twilio sender, web chat
//! tenant), so that one busy business waits for its own rate without
//! holding back the others, and a sender the provider throttled (429,
//! `Retry-After`) pauses as a whole instead of each message finding out.
//!
//! A bucket hands out reservations: taking a token may leave the bucket
//! below zero, and the taker waits until its token would have been there.
//! Callers therefore go in the order they asked, and none spins.
//!
//! The map is bounded: a bucket that is full again (and not paused) is the
//! same as a new one, so such buckets are forgotten first once the map
//! holds `max_senders`; if none is, the least recently used one goes (its
//! sender may then burst once more than its rate allows).

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use super::config::Rate;

#[derive(Debug)]
struct Bucket {
    /// Tokens at `at`; below zero when reservations are ahead.
    tokens: f64,
    at: Instant,
    /// No token is handed out before this.
    paused_until: Option<Instant>,
    used: Instant,
}

impl Bucket {
    fn refill(&mut self, rate: &Rate, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate.messages_per_second).min(f64::from(rate.burst));
        self.at = now;
    }

    fn idle(&self, rate: &Rate, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens + elapsed * rate.messages_per_second >= f64::from(rate.burst)
            && self.paused_until.is_none_or(|p| p <= now)
    }
}

/// The buckets of every sender seen recently.
#[derive(Debug)]
pub struct SenderLimits {
    buckets: Mutex<HashMap<String, (Bucket, Rate)>>,
    max_senders: usize,
}

impl SenderLimits {
    /// At most `max_senders` buckets in memory.
    pub fn new(max_senders: usize) -> Self {
        Self {
            buckets: Mutex::new(HashMap::new()),
            max_senders: max_senders.max(1),
        }
    }

    /// Takes one token of `sender`'s bucket, at `rate`; returns how long to
    /// wait before sending (zero when a token was there).
    pub fn reserve(&self, sender: &str, rate: Rate, now: Instant) -> Duration {
        let mut buckets = self.buckets.lock().expect("limits lock");
        if !buckets.contains_key(sender) && buckets.len() >= self.max_senders {
            Self::make_room(&mut buckets, self.max_senders, now);
        }
        let (bucket, kept_rate) = buckets.entry(sender.to_owned()).or_insert_with(|| {
            (
                Bucket {
                    tokens: f64::from(rate.burst),
                    at: now,
                    paused_until: None,
                    used: now,
                },
                rate,
            )
        });
        *kept_rate = rate;
        bucket.refill(&rate, now);
        bucket.used = now;
        bucket.tokens -= 1.0;
        let mut wait = if bucket.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-bucket.tokens / rate.messages_per_second)
        };
        if let Some(until) = bucket.paused_until {
            wait = wait.max(until.saturating_duration_since(now));
        }
        wait
    }

    /// The provider said `sender` is over its rate: no token before `until`.
    pub fn pause(&self, sender: &str, until: Instant) {
        let mut buckets = self.buckets.lock().expect("limits lock");
        if let Some((bucket, _)) = buckets.get_mut(sender) {
            bucket.paused_until = Some(bucket.paused_until.map_or(until, |p| p.max(until)));
        }
    }

    /// Buckets held.
    pub fn len(&self) -> usize {
        self.buckets.lock().expect("limits lock").len()
    }

    /// Whether no bucket is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn make_room(buckets: &mut HashMap<String, (Bucket, Rate)>, max: usize, now: Instant) {
        buckets.retain(|_, (bucket, rate)| !bucket.idle(rate, now));
        if buckets.len() >= max {
            // Still full of busy senders: the least recently used goes.
            if let Some(oldest) = buckets
                .iter()
                .min_by_key(|(_, (b, _))| b.used)
                .map(|(k, _)| k.clone())
            {
                buckets.remove(&oldest);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(per_second: f64, burst: u32) -> Rate {
        Rate {
            messages_per_second: per_second,
            burst,
        }
    }

    #[test]
    fn a_burst_goes_at_once_then_the_rate_sets_the_pace() {
        let limits = SenderLimits::new(10);
        let t0 = Instant::now();
        let r = rate(10.0, 2);
        assert_eq!(limits.reserve("a", r, t0), Duration::ZERO);
        assert_eq!(limits.reserve("a", r, t0), Duration::ZERO);
        let third = limits.reserve("a", r, t0);
        let fourth = limits.reserve("a", r, t0);
        assert!(
            (third.as_millis(), fourth.as_millis()) == (100, 200),
            "{third:?} {fourth:?}"
        );
        // Another sender is not held back by the first.
        assert_eq!(limits.reserve("b", r, t0), Duration::ZERO);
        // A second later the first has its burst again.
        let later = t0 + Duration::from_secs(1);
        assert_eq!(limits.reserve("a", r, later), Duration::ZERO);
    }

    #[test]
    fn a_paused_sender_waits_until_the_pause_ends() {
        let limits = SenderLimits::new(10);
        let t0 = Instant::now();
        let r = rate(100.0, 100);
        limits.reserve("a", r, t0);
        limits.pause("a", t0 + Duration::from_secs(3));
        assert_eq!(limits.reserve("a", r, t0), Duration::from_secs(3));
        assert_eq!(limits.reserve("b", r, t0), Duration::ZERO, "others go on");
        assert_eq!(
            limits.reserve("a", r, t0 + Duration::from_secs(4)),
            Duration::ZERO
        );
    }

    #[test]
    fn the_map_stays_bounded_forgetting_idle_senders_first() {
        let limits = SenderLimits::new(3);
        let t0 = Instant::now();
        let r = rate(1.0, 1);
        for sender in ["a", "b", "c"] {
            limits.reserve(sender, r, t0);
        }
        // Two seconds later a and b are full again; c is busy again.
        let t1 = t0 + Duration::from_secs(2);
        limits.reserve("c", r, t1);
        limits.reserve("d", r, t1);
        assert_eq!(limits.len(), 2, "a and b were forgotten");
        // All busy: the least recently used goes.
        limits.reserve("e", r, t1);
        limits.reserve("f", r, t1 + Duration::from_millis(1));
        assert!(limits.len() <= 3, "{}", limits.len());
        for n in 0..1000 {
            limits.reserve(&format!("s{n}"), r, t1);
        }
        assert!(limits.len() <= 3);
    }
}
