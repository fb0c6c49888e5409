//! When a BackupSchedule runs: a 5-field cron expression read in an IANA time zone, or a
//! fixed interval, and the arithmetic of due times.
//!
//! Cron follows Vixie cron: fields are minute, hour, day of month, month, day of week;
//! each is `*`, a value, a range `a-b`, a step `*/n`, `a-b/n` or `a/n` (from `a` to the
//! end), or a comma-separated list of those; months and weekdays accept three-letter names
//! (`jan`, `mon`); day of week 0 and 7 are Sunday. When both day fields are restricted
//! (neither starts with `*`) a day matches if either matches.
//!
//! Daylight saving: a local time that does not exist (spring forward) fires once, at the
//! first instant after the gap; a local time that happens twice (fall back) fires once, at
//! its first occurrence. Invariant: [`Schedule::next_after`] is strictly increasing in its
//! argument's fire times, so two runs never share an instant.

use crate::crd::BackupScheduleSpec;
use jiff::civil::{Date, DateTime};
use jiff::tz::{AmbiguousOffset, TimeZone};
use jiff::{SignedDuration, Timestamp};
use std::time::Duration;

/// How far ahead a cron expression is searched for its next fire time. The rarest valid
/// expression (`0 0 29 2 *`) fires every 8 years at worst (2096, then 2104).
const SEARCH_DAYS: i64 = 366 * 9;

/// Windows looked back over to find the latest due time without walking every fire time
/// since a long outage: each is tried in turn until one holds a fire time.
const LOOK_BACK: [SignedDuration; 5] = [
    SignedDuration::from_hours(1),
    SignedDuration::from_hours(24),
    SignedDuration::from_hours(24 * 40),
    SignedDuration::from_hours(24 * 400),
    SignedDuration::from_hours(24 * SEARCH_DAYS),
];

/// A parsed 5-field cron expression: one bit per allowed value of each field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cron {
    minutes: u64,
    hours: u32,
    days: u32,
    months: u16,
    weekdays: u8,
    dom_star: bool,
    dow_star: bool,
}

struct Field {
    name: &'static str,
    min: u32,
    max: u32,
    /// Names for `min`, `min + 1`, ...
    names: &'static [&'static str],
}

const MINUTE: Field = Field {
    name: "minute",
    min: 0,
    max: 59,
    names: &[],
};
const HOUR: Field = Field {
    name: "hour",
    min: 0,
    max: 23,
    names: &[],
};
const DAY: Field = Field {
    name: "day-of-month",
    min: 1,
    max: 31,
    names: &[],
};
const MONTH: Field = Field {
    name: "month",
    min: 1,
    max: 12,
    names: &[
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ],
};
const WEEKDAY: Field = Field {
    name: "day-of-week",
    min: 0,
    max: 7,
    names: &["sun", "mon", "tue", "wed", "thu", "fri", "sat", "sun"],
};

impl Field {
    fn value(&self, token: &str) -> Result<u32, String> {
        let lower = token.to_ascii_lowercase();
        if let Some(i) = self.names.iter().position(|n| *n == lower) {
            return Ok(self.min + i as u32);
        }
        let v: u32 = token.parse().map_err(|_| {
            let names = if self.names.is_empty() {
                String::new()
            } else {
                format!(" or a name like {:?}", self.names[1])
            };
            format!("{} {token:?} is not a number{names}", self.name)
        })?;
        if v < self.min || v > self.max {
            return Err(format!(
                "{} {v} is out of range {}-{}",
                self.name, self.min, self.max
            ));
        }
        Ok(v)
    }

    /// The set of values `text` allows, as a bit set.
    fn parse(&self, text: &str) -> Result<u64, String> {
        let mut bits = 0u64;
        for item in text.split(',') {
            if item.is_empty() {
                return Err(format!("{} {text:?} has an empty list item", self.name));
            }
            let (range, step) = match item.split_once('/') {
                Some((range, step)) => {
                    let n: u32 = step.parse().ok().filter(|n| *n > 0).ok_or_else(|| {
                        format!("{} step {step:?} is not a positive number", self.name)
                    })?;
                    (range, Some(n))
                }
                None => (item, None),
            };
            let (lo, hi) = if range == "*" {
                (self.min, self.max)
            } else if let Some((a, b)) = range.split_once('-') {
                let (a, b) = (self.value(a)?, self.value(b)?);
                if a > b {
                    return Err(format!(
                        "{} range {range:?} goes backwards; write the smaller value first",
                        self.name
                    ));
                }
                (a, b)
            } else {
                let a = self.value(range)?;
                (a, if step.is_some() { self.max } else { a })
            };
            let mut v = lo;
            while v <= hi {
                bits |= 1 << v;
                v += step.unwrap_or(1);
            }
        }
        Ok(bits)
    }
}

/// Days in `month` of a leap year: the most a day-of-month field can hope for.
const MAX_DAYS: [u32; 12] = [31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];

impl Cron {
    /// Parses a 5-field expression or a macro (`@hourly`, `@daily`/`@midnight`, `@weekly`,
    /// `@monthly`, `@yearly`/`@annually`).
    pub fn parse(text: &str) -> Result<Cron, String> {
        let trimmed = text.trim();
        let expanded = match trimmed.to_ascii_lowercase().as_str() {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            m if m.starts_with('@') => {
                return Err(format!(
                    "unknown macro {trimmed:?}; use @hourly, @daily, @weekly, @monthly or @yearly"
                ))
            }
            _ => trimmed,
        };
        let fields: Vec<&str> = expanded.split_whitespace().collect();
        let [minute, hour, day, month, weekday] = fields.as_slice() else {
            return Err(format!(
                "{} fields; write 5: minute hour day-of-month month day-of-week \
                 (\"0 2 * * *\" is 02:00 every day)",
                fields.len()
            ));
        };
        let weekdays = WEEKDAY.parse(weekday)?;
        let cron = Cron {
            minutes: MINUTE.parse(minute)?,
            hours: HOUR.parse(hour)? as u32,
            days: DAY.parse(day)? as u32,
            months: MONTH.parse(month)? as u16,
            // Sunday is both 0 and 7.
            weekdays: ((weekdays | (weekdays >> 7)) & 0x7f) as u8,
            dom_star: day.starts_with('*'),
            dow_star: weekday.starts_with('*'),
        };
        let day_fits = (1..=12).any(|m| {
            cron.months & (1 << m) != 0 && (1..=MAX_DAYS[m - 1]).any(|d| cron.days & (1 << d) != 0)
        });
        if !day_fits && cron.dow_star {
            return Err(format!(
                "day-of-month {day:?} never falls in month {month:?}, so it never runs"
            ));
        }
        Ok(cron)
    }

    fn day_matches(&self, date: Date) -> bool {
        let dom = self.days & (1 << date.day()) != 0;
        let dow = self.weekdays & (1 << date.weekday().to_sunday_zero_offset()) != 0;
        let month = self.months & (1 << date.month()) != 0;
        month
            && if self.dom_star || self.dow_star {
                dom && dow
            } else {
                dom || dow
            }
    }

    /// The first fire time strictly after `after`, or None when none lies within the
    /// search horizon (only for instants near the end of jiff's range).
    pub fn next_after(&self, after: Timestamp, tz: &TimeZone) -> Option<Timestamp> {
        // Start a day early: a fold can put an instant after `after` on the previous date.
        let mut date = tz.to_datetime(after).date().yesterday().ok()?;
        for _ in 0..SEARCH_DAYS {
            // Every time of a date comes before the first midnight that ends it.
            let ended = date
                .tomorrow()
                .ok()
                .and_then(|d| instant(d.at(0, 0, 0, 0), tz))
                .is_some_and(|end| end <= after);
            if !ended && self.day_matches(date) {
                for hour in (0..24).filter(|h| self.hours & (1 << h) != 0) {
                    for minute in (0..60).filter(|m| self.minutes & (1u64 << m) != 0) {
                        let dt = date.at(hour as i8, minute as i8, 0, 0);
                        match instant(dt, tz) {
                            Some(t) if t > after => return Some(t),
                            _ => {}
                        }
                    }
                }
            }
            date = date.tomorrow().ok()?;
        }
        None
    }
}

/// The instant of local time `dt`: the first instant after a gap, the first occurrence in
/// a fold.
fn instant(dt: DateTime, tz: &TimeZone) -> Option<Timestamp> {
    match tz.to_ambiguous_timestamp(dt).offset() {
        AmbiguousOffset::Unambiguous { offset } => offset.to_timestamp(dt).ok(),
        AmbiguousOffset::Fold { before, .. } => before.to_timestamp(dt).ok(),
        AmbiguousOffset::Gap { after, .. } => {
            // Read with the later offset, `dt` lands just before the transition; the
            // transition is the first instant whose local time is past the gap.
            let inside = after.to_timestamp(dt).ok()?;
            tz.following(inside).next().map(|t| t.timestamp())
        }
    }
}

/// When a BackupSchedule fires.
#[derive(Clone, Debug)]
pub enum Schedule {
    /// `spec.schedule` in `spec.timeZone`.
    Cron {
        /// The expression.
        cron: Cron,
        /// The zone it is read in.
        tz: TimeZone,
    },
    /// `spec.every`, counted from the last scheduled time.
    Every(Duration),
}

impl Schedule {
    /// Reads the schedule of `spec`: exactly one of `schedule` and `every`. The error says
    /// what is wrong and what to write.
    pub fn from_spec(spec: &BackupScheduleSpec) -> Result<Schedule, String> {
        match (&spec.schedule, &spec.every) {
            (Some(text), None) => {
                let cron = Cron::parse(text).map_err(|e| format!("spec.schedule {text:?}: {e}"))?;
                let tz = match spec.time_zone.as_deref() {
                    None => TimeZone::UTC,
                    Some(name) => TimeZone::get(name).map_err(|e| {
                        format!(
                            "spec.timeZone {name:?} is not a known IANA time zone ({e}); \
                             write one like \"Europe/Paris\", or leave it out for UTC"
                        )
                    })?,
                };
                Ok(Schedule::Cron { cron, tz })
            }
            (None, Some(text)) => {
                if spec.time_zone.is_some() {
                    return Err(
                        "spec.timeZone only applies to spec.schedule; remove it, or use a cron \
                         expression in spec.schedule instead of spec.every"
                            .into(),
                    );
                }
                match crate::config::parse_duration(text) {
                    Ok(d) if d >= Duration::from_secs(1) => Ok(Schedule::Every(d)),
                    Ok(_) => Err(format!(
                        "spec.every {text:?} is shorter than one second; write a duration like \"6h\" or \"30m\""
                    )),
                    Err(e) => Err(format!(
                        "spec.every {text:?}: {e}; write a duration like \"6h\" or \"30m\""
                    )),
                }
            }
            (Some(_), Some(_)) => Err(
                "both spec.schedule and spec.every are set; keep one (a cron expression like \
                 \"0 2 * * *\", or an interval like \"6h\")"
                    .into(),
            ),
            (None, None) => Err(
                "neither spec.schedule nor spec.every is set; write a cron expression like \
                 \"0 2 * * *\" in spec.schedule, or an interval like \"6h\" in spec.every"
                    .into(),
            ),
        }
    }

    /// The first fire time strictly after `after`. `base` is when the interval of
    /// [`Schedule::Every`] counts from (the last scheduled time); cron ignores it.
    pub fn next_after(&self, base: Timestamp, after: Timestamp) -> Option<Timestamp> {
        match self {
            Schedule::Cron { cron, tz } => cron.next_after(after, tz),
            Schedule::Every(every) => {
                let every = SignedDuration::try_from(*every).ok()?;
                if after < base {
                    return base.checked_add(every).ok();
                }
                let periods = after.duration_since(base).as_nanos() / every.as_nanos() + 1;
                let offset = SignedDuration::from_nanos_i128(periods * every.as_nanos());
                base.checked_add(offset).ok()
            }
        }
    }

    /// The latest fire time in `(base, now]`, or None when nothing is due. Fire times
    /// before it are missed runs, dropped: a schedule catches up once, not in a burst.
    pub fn latest_due(&self, base: Timestamp, now: Timestamp) -> Option<Timestamp> {
        let first = self.next_after(base, base)?;
        if first > now {
            return None;
        }
        if let Schedule::Every(every) = self {
            let every = SignedDuration::try_from(*every).ok()?;
            let periods = now.duration_since(base).as_nanos() / every.as_nanos();
            return base
                .checked_add(SignedDuration::from_nanos_i128(periods * every.as_nanos()))
                .ok();
        }
        for window in LOOK_BACK {
            let from = now.checked_sub(window).ok().map_or(base, |t| t.max(base));
            let mut latest = None;
            let mut cursor = from;
            while let Some(t) = self.next_after(base, cursor).filter(|t| *t <= now) {
                latest = Some(t);
                cursor = t;
            }
            if latest.is_some() {
                return latest;
            }
        }
        Some(first)
    }
}
