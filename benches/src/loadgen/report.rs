//! What a run measured: HDR histograms overall and per second, outcomes by
//! status code, and the report written as JSON and Markdown.

use std::{
    collections::BTreeMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;
use serde::Serialize;

/// Latency percentiles, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    #[serde(rename = "p99.9")]
    pub p99_9: f64,
    /// Largest.
    pub max: f64,
}

impl Percentiles {
    fn of(histogram: &Histogram<u64>) -> Self {
        let ms = |us: u64| us as f64 / 1000.0;
        Self {
            p50: ms(histogram.value_at_quantile(0.5)),
            p90: ms(histogram.value_at_quantile(0.9)),
            p99: ms(histogram.value_at_quantile(0.99)),
            p99_9: ms(histogram.value_at_quantile(0.999)),
            max: ms(histogram.max()),
        }
    }
}

/// Microsecond histogram from 1 µs to 10 minutes, 3 significant digits.
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

/// One second of a run (by completion time).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Second {
    /// Seconds since the run started.
    pub second: u64,
    /// Messages acknowledged (or, for the end-to-end sink, received).
    pub ok: u64,
    /// Messages refused or failed.
    pub errors: u64,
    /// Latency of this second's acknowledged messages.
    pub latency_ms: Option<Percentiles>,
    /// Resident memory of the watched process (by default the load
    /// generator) at the end of the second, in MiB.
    pub rss_mib: Option<f64>,
}

#[derive(Default)]
struct SecondState {
    ok: u64,
    errors: u64,
    latency: Option<Histogram<u64>>,
    rss_mib: Option<f64>,
}

struct State {
    all: Histogram<u64>,
    ok: u64,
    errors: BTreeMap<String, u64>,
    retries: BTreeMap<String, u64>,
    seconds: Vec<SecondState>,
}

/// Collects outcomes from many tasks: overall and per-second histograms.
pub struct Recorder {
    started: Instant,
    state: Mutex<State>,
}

impl Recorder {
    /// A recorder whose second 0 starts at `started`.
    pub fn new(started: Instant) -> Self {
        Self {
            started,
            state: Mutex::new(State {
                all: histogram(),
                ok: 0,
                errors: BTreeMap::new(),
                retries: BTreeMap::new(),
                seconds: Vec::new(),
            }),
        }
    }

    fn second<'a>(&self, state: &'a mut State, at: Instant) -> &'a mut SecondState {
        let second = at.saturating_duration_since(self.started).as_secs() as usize;
        if state.seconds.len() <= second {
            state.seconds.resize_with(second + 1, Default::default);
        }
        &mut state.seconds[second]
    }

    /// A success at `at`, `latency` after it was meant to happen.
    pub fn ok(&self, at: Instant, latency: Duration) {
        let micros = (latency.as_micros() as u64).clamp(1, 600_000_000);
        let mut state = self.state.lock().expect("recorder lock");
        state.ok += 1;
        let _ = state.all.record(micros);
        let second = self.second(&mut state, at);
        second.ok += 1;
        let _ = second.latency.get_or_insert_with(histogram).record(micros);
    }

    /// `n` failures at `at`, labelled `code`.
    pub fn error(&self, at: Instant, code: &str, n: u64) {
        let mut state = self.state.lock().expect("recorder lock");
        match state.errors.get_mut(code) {
            Some(count) => *count += n,
            None => {
                state.errors.insert(code.to_owned(), n);
            }
        }
        self.second(&mut state, at).errors += n;
    }

    /// A call answered `code` at `at` that the client sends again.
    pub fn retry(&self, code: &str) {
        let mut state = self.state.lock().expect("recorder lock");
        *state.retries.entry(code.to_owned()).or_default() += 1;
    }

    /// Calls sent again, by the code that answered the attempt before.
    pub fn retries(&self) -> BTreeMap<String, u64> {
        self.state.lock().expect("recorder lock").retries.clone()
    }

    /// Notes the resident memory of process `pid` (or of this one) now.
    pub fn sample_memory(&self, pid: Option<u32>) {
        let rss = resident_mib(pid);
        let mut state = self.state.lock().expect("recorder lock");
        self.second(&mut state, Instant::now()).rss_mib = rss;
    }

    /// Successes so far.
    pub fn ok_count(&self) -> u64 {
        self.state.lock().expect("recorder lock").ok
    }

    /// Successes, failures by code, overall latency and the timeline.
    pub fn summary(&self) -> (u64, BTreeMap<String, u64>, Percentiles, Vec<Second>) {
        let state = self.state.lock().expect("recorder lock");
        let timeline = state
            .seconds
            .iter()
            .enumerate()
            .map(|(i, s)| Second {
                second: i as u64,
                ok: s.ok,
                errors: s.errors,
                latency_ms: s.latency.as_ref().map(Percentiles::of),
                rss_mib: s.rss_mib,
            })
            .collect();
        (
            state.ok,
            state.errors.clone(),
            Percentiles::of(&state.all),
            timeline,
        )
    }
}

/// The resident set size of process `pid` (or of this one) in MiB, if
/// known (Linux).
pub fn resident_mib(pid: Option<u32>) -> Option<f64> {
    let path = pid.map_or("/proc/self/statm".to_owned(), |p| {
        format!("/proc/{p}/statm")
    });
    let statm = std::fs::read_to_string(path).ok()?;
    let pages: f64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096.0 / (1024.0 * 1024.0))
}

/// The end-to-end sink's findings.
#[derive(Debug, Clone, Serialize)]
pub struct EndToEnd {
    /// The topic the sink read.
    pub topic: String,
    /// Distinct messages of this run that arrived.
    pub received: u64,
    /// Acknowledged messages that never arrived.
    pub lost: u64,
    /// Arrivals of a message already seen (at-least-once redelivery).
    pub duplicates: u64,
    /// Messages that arrived after a later message of their conversation.
    pub order_violations: u64,
    /// Intended send time to arrival at the destination.
    pub latency_ms: Percentiles,
    /// Arrivals per second.
    pub timeline: Vec<Second>,
}

/// A run's report.
#[derive(Debug, Clone, Serialize)]
pub struct LoadReport<O> {
    /// What ran.
    pub options: O,
    /// The run's id (in every message's token).
    pub run: String,
    /// Messages sent (or attempted).
    pub sent: u64,
    /// Messages acknowledged.
    pub acked: u64,
    /// Messages not acknowledged, by gRPC code (`ClientBacklog`: an
    /// open-loop send skipped because the client's in-flight bound was
    /// reached; `NoResponse`: no answer before the drain timeout).
    pub errors: BTreeMap<String, u64>,
    /// Attempts sent again (`--retries`), by the code that answered the
    /// attempt before; a message retried and then acknowledged counts as
    /// acknowledged.
    pub retries: BTreeMap<String, u64>,
    /// Seconds from the first send to the last answer.
    pub elapsed_seconds: f64,
    /// Sends per second over the sending period.
    pub offered_rate: f64,
    /// Acknowledgements per second over the whole run.
    pub acked_rate: f64,
    /// Publish latency: from the intended send time (open loop) or the send
    /// (closed loop) to the acknowledgement.
    pub latency_ms: Percentiles,
    /// Ingest to destination, if a sink was watching.
    pub end_to_end: Option<EndToEnd>,
    /// Per second.
    pub timeline: Vec<Second>,
    /// Largest resident memory of the watched process seen during the run,
    /// in MiB.
    pub max_rss_mib: Option<f64>,
}

impl<O: std::fmt::Debug> LoadReport<O> {
    /// The report as a Markdown section.
    pub fn markdown(&self) -> String {
        let p = |p: &Percentiles| {
            format!(
                "{:.2} | {:.2} | {:.2} | {:.2} | {:.2}",
                p.p50, p.p90, p.p99, p.p99_9, p.max
            )
        };
        let mut out = format!(
            "### Load run\n\n`{:?}`\n\n| sent | acked | errors | retries | seconds | offered msg/s | acked msg/s | max RSS MiB |\n|---:|---:|---|---|---:|---:|---:|---:|\n| {} | {} | {:?} | {:?} | {:.2} | {:.0} | {:.0} | {} |\n\n| latency (ms) | p50 | p90 | p99 | p99.9 | max |\n|---|---:|---:|---:|---:|---:|\n| publish → ack | {} |\n",
            self.options,
            self.sent,
            self.acked,
            self.errors,
            self.retries,
            self.elapsed_seconds,
            self.offered_rate,
            self.acked_rate,
            self.max_rss_mib.map_or("-".into(), |m| format!("{m:.0}")),
            p(&self.latency_ms),
        );
        if let Some(e2e) = &self.end_to_end {
            out.push_str(&format!(
                "| ingest → `{}` | {} |\n\nEnd to end: {} received, {} lost, {} duplicates, {} order violations.\n",
                e2e.topic,
                p(&e2e.latency_ms),
                e2e.received,
                e2e.lost,
                e2e.duplicates,
                e2e.order_violations
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_per_second_and_overall() {
        let start = Instant::now();
        let recorder = Recorder::new(start);
        for ms in 1..=100 {
            recorder.ok(start, Duration::from_millis(ms));
        }
        recorder.ok(
            start + Duration::from_millis(2500),
            Duration::from_millis(7),
        );
        recorder.error(start + Duration::from_millis(1500), "ResourceExhausted", 3);
        let (ok, errors, all, timeline) = recorder.summary();
        assert_eq!(ok, 101);
        assert_eq!(errors["ResourceExhausted"], 3);
        assert!((all.p50 - 50.0).abs() < 0.1, "{all:?}");
        assert!((all.max - 100.0).abs() < 0.1, "{all:?}");
        assert_eq!(timeline.len(), 3);
        assert_eq!((timeline[0].ok, timeline[0].errors), (100, 0));
        assert_eq!((timeline[1].ok, timeline[1].errors), (0, 3));
        assert!(timeline[1].latency_ms.is_none());
        assert!((timeline[2].latency_ms.unwrap().p99 - 7.0).abs() < 0.01);
    }
}
