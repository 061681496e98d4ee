//! Business-hours calendars: when a team is open, in its own time zone.
//!
//! ```toml
//! [calendars.support]
//! timezone = "Europe/Paris"
//! mon = ["09:00-12:30", "13:30-18:00"]
//! tue = ["09:00-18:00"]
//! sat = ["10:00-14:00"]          # days not listed are closed
//! ```

use std::collections::BTreeMap;

use jiff::{Timestamp, tz::TimeZone};
use serde::{Deserialize, Serialize};

/// A calendar as written in the rules file. Unknown keys are refused too:
/// they land in `days`, and only day names are accepted there.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CalendarSpec {
    /// IANA time zone, e.g. `America/New_York`.
    pub timezone: String,
    /// Opening ranges per day (`"HH:MM-HH:MM"`); missing days are closed.
    #[serde(flatten)]
    pub days: BTreeMap<String, Vec<String>>,
}

/// A calendar ready to answer "open at this instant?".
#[derive(Debug, Clone)]
pub struct Calendar {
    tz: TimeZone,
    /// Minute-of-day ranges `[start, end)` per weekday (Monday = 0).
    open: [Vec<(u16, u16)>; 7],
}

const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

impl Calendar {
    /// Checks and compiles a calendar; the error says which part is wrong.
    pub fn compile(spec: &CalendarSpec) -> Result<Self, String> {
        let tz = TimeZone::get(&spec.timezone)
            .map_err(|e| format!("unknown timezone {:?}: {e}", spec.timezone))?;
        let mut open: [Vec<(u16, u16)>; 7] = Default::default();
        for (day, ranges) in &spec.days {
            let index = DAYS.iter().position(|d| d == day).ok_or_else(|| {
                format!("unknown day {day:?}: use mon, tue, wed, thu, fri, sat, sun")
            })?;
            for range in ranges {
                open[index].push(parse_range(range).ok_or_else(|| {
                    format!("{day}: {range:?} is not a range like \"09:00-17:30\"")
                })?);
            }
        }
        Ok(Self { tz, open })
    }

    /// Whether the calendar is open at `at`.
    pub fn is_open(&self, at: Timestamp) -> bool {
        let local = at.to_zoned(self.tz.clone());
        let day = local.weekday().to_monday_zero_offset() as usize;
        let minute = local.hour() as u16 * 60 + local.minute() as u16;
        self.open[day]
            .iter()
            .any(|(start, end)| (*start..*end).contains(&minute))
    }
}

fn parse_range(range: &str) -> Option<(u16, u16)> {
    let (start, end) = range.split_once('-')?;
    let (start, end) = (parse_time(start.trim())?, parse_time(end.trim())?);
    (start < end).then_some((start, end))
}

fn parse_time(time: &str) -> Option<u16> {
    let (h, m) = time.split_once(':')?;
    let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
    (h <= 24 && m < 60 && h * 60 + m <= 24 * 60).then_some(h * 60 + m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(tz: &str, days: &[(&str, &[&str])]) -> CalendarSpec {
        CalendarSpec {
            timezone: tz.into(),
            days: days
                .iter()
                .map(|(d, r)| ((*d).to_owned(), r.iter().map(|s| (*s).to_owned()).collect()))
                .collect(),
        }
    }

    #[test]
    fn open_hours_follow_the_calendar_time_zone() {
        let paris = Calendar::compile(&spec(
            "Europe/Paris",
            &[("mon", &["09:00-12:30", "13:30-18:00"])],
        ))
        .unwrap();
        // Monday 2026-11-23: Paris is UTC+1 in winter.
        let at = |utc: &str| utc.parse::<Timestamp>().unwrap();
        assert!(!paris.is_open(at("2026-11-23T07:59:00Z")), "08:59 in Paris");
        assert!(paris.is_open(at("2026-11-23T08:00:00Z")), "09:00 in Paris");
        assert!(!paris.is_open(at("2026-11-23T11:45:00Z")), "12:45, lunch");
        assert!(paris.is_open(at("2026-11-23T16:59:00Z")), "17:59");
        assert!(!paris.is_open(at("2026-11-23T17:00:00Z")), "18:00, closed");
        assert!(
            !paris.is_open(at("2026-11-24T10:00:00Z")),
            "Tuesday is not listed"
        );
    }

    #[test]
    fn bad_calendars_say_what_is_wrong() {
        for (s, expected) in [
            (spec("Mars/Olympus", &[]), "unknown timezone"),
            (spec("UTC", &[("monday", &["09:00-10:00"])]), "unknown day"),
            (spec("UTC", &[("mon", &["9-10"])]), "not a range"),
            (spec("UTC", &[("mon", &["18:00-09:00"])]), "not a range"),
        ] {
            let err = Calendar::compile(&s).unwrap_err();
            assert!(err.contains(expected), "{expected:?} not in {err:?}");
        }
    }
}
