//! Cron schedules in a time zone: when a recurring capsule is delivered, when maintenance
//! runs.
//!
//! Expressions have 5 fields (minute hour day-of-month month day-of-week), or 6 with
//! seconds first, or are one of `@yearly` (`@annually`), `@monthly`, `@weekly`, `@daily`
//! (`@midnight`) and `@hourly`. Besides lists, ranges and steps, day-of-month takes `L`
//! (the last day) and `W` (the nearest weekday), day-of-week takes `L` (`5L`: the last
//! Friday) and `#` (`MON#1`: the first Monday). When both day fields are given, either
//! matching is enough, as in Vixie cron.
//!
//! Times are wall-clock times in the schedule's IANA zone, and daylight-saving changes
//! follow Vixie cron: a time that does not exist (02:30 on the night clocks spring
//! forward) fires at the first instant after the gap, once; a time that happens twice
//! (02:30 on the night they fall back) fires the first time only, unless the hour is a
//! wildcard or a step (`0 * * * *` fires every real hour: 23 times on the short day, 25 on
//! the long one).
//!
//! The parser is `croner`, which implements those rules; the `cron` crate skips a time
//! in the gap and fires twice in the overlap, so a daily 02:30 capsule would miss a day
//! and be sent twice a year. `croner` treats only single-valued hours as fixed, so a list
//! (`0 2,3 * * *`) would fire twice in the overlap: [`Recurrence`] drops the repeat.

use std::str::FromStr;

use chrono::offset::LocalResult;
use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};

/// Longest cron expression accepted, in bytes.
pub const MAX_EXPRESSION_BYTES: usize = 200;

/// Why a schedule was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error("not a cron expression: {0}")]
    Cron(String),
    #[error("not an IANA time zone: {0:?}")]
    TimeZone(String),
}

/// A parsed cron expression in a time zone.
#[derive(Clone, Debug)]
pub struct Recurrence {
    cron: Cron,
    zone: Tz,
    /// Whether an hour that happens twice fires only the first time (the hour field is
    /// neither a wildcard nor a step).
    once_in_overlap: bool,
}

impl Recurrence {
    /// Parse `expression` in the zone named `time_zone` (`UTC`, `Europe/Berlin`, …).
    pub fn parse(expression: &str, time_zone: &str) -> Result<Self, ScheduleError> {
        let zone = parse_zone(time_zone)?;
        let expression = expression.trim();
        if expression.len() > MAX_EXPRESSION_BYTES {
            return Err(ScheduleError::Cron(format!(
                "longer than {MAX_EXPRESSION_BYTES} characters"
            )));
        }
        let lowered = expression.to_ascii_lowercase();
        if lowered.starts_with('@')
            && !matches!(
                lowered.as_str(),
                "@yearly"
                    | "@annually"
                    | "@monthly"
                    | "@weekly"
                    | "@daily"
                    | "@midnight"
                    | "@hourly"
            )
        {
            return Err(ScheduleError::Cron(format!(
                "{expression:?} is not one of @yearly, @annually, @monthly, @weekly, @daily, @midnight, @hourly"
            )));
        }
        let cron = CronParser::builder()
            .seconds(Seconds::Optional)
            .year(Year::Disallowed)
            .build()
            .parse(if lowered == "@midnight" {
                "@daily"
            } else {
                expression
            })
            .map_err(|e| ScheduleError::Cron(format!("{expression:?}: {e}")))?;
        let hours = &cron.pattern.hours;
        let once_in_overlap = !hours.from_wildcard && hours.step == 1;
        Ok(Recurrence {
            cron,
            zone,
            once_in_overlap,
        })
    }

    pub fn zone(&self) -> Tz {
        self.zone
    }

    /// The first time strictly after `after` that the schedule fires, if there is one
    /// before the year 5000.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let mut from = after.with_timezone(&self.zone);
        // Each pass moves strictly forward; an overlap repeats at most one hour's worth.
        for _ in 0..10_000 {
            let next = self.cron.find_next_occurrence(&from, false).ok()?;
            let utc = next.with_timezone(&Utc);
            if utc > after && !self.is_repeat(&next) {
                return Some(utc);
            }
            from = next;
        }
        None
    }

    /// The times the schedule fires strictly after `after`, in order.
    pub fn after(&self, after: DateTime<Utc>) -> impl Iterator<Item = DateTime<Utc>> + '_ {
        std::iter::successors(self.next_after(after), move |t| self.next_after(*t))
    }

    /// Whether `at` is the second time of a wall-clock time that happens twice, which a
    /// fixed-hour schedule does not fire on.
    fn is_repeat(&self, at: &DateTime<Tz>) -> bool {
        if !self.once_in_overlap {
            return false;
        }
        matches!(
            self.zone.from_local_datetime(&at.naive_local()),
            LocalResult::Ambiguous(_, later) if later == *at
        )
    }
}

/// An IANA zone name, matched exactly or, failing that, in any case.
pub fn parse_zone(name: &str) -> Result<Tz, ScheduleError> {
    let name = name.trim();
    Tz::from_str(name)
        .or_else(|_| {
            chrono_tz::TZ_VARIANTS
                .iter()
                .find(|tz| tz.name().eq_ignore_ascii_case(name))
                .copied()
                .ok_or(())
        })
        .map_err(|()| ScheduleError::TimeZone(name.chars().take(64).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn berlin(expression: &str) -> Recurrence {
        Recurrence::parse(expression, "Europe/Berlin").unwrap_or_else(|e| panic!("{e}"))
    }

    /// The times `r` fires on the Berlin day starting at local midnight `(y, m, d)`, as
    /// UTC `HH:MM`.
    fn day(r: &Recurrence, (y, m, d): (i32, u32, u32)) -> Vec<String> {
        let start = chrono_tz::Europe::Berlin
            .with_ymd_and_hms(y, m, d, 0, 0, 0)
            .single()
            .unwrap_or_else(|| unreachable!("midnight exists"))
            .with_timezone(&Utc);
        let next_day = chrono::NaiveDate::from_ymd_opt(y, m, d)
            .and_then(|d| d.succ_opt())
            .and_then(|d| d.and_hms_opt(0, 0, 0))
            .and_then(|t| chrono_tz::Europe::Berlin.from_local_datetime(&t).single())
            .unwrap_or_else(|| unreachable!("midnight exists"))
            .with_timezone(&Utc);
        r.after(start - chrono::Duration::seconds(1))
            .take_while(|t| *t < next_day)
            .map(|t| t.format("%H:%M").to_string())
            .collect()
    }

    const SPRING_FORWARD: (i32, u32, u32) = (2027, 3, 28);
    const FALL_BACK: (i32, u32, u32) = (2027, 10, 31);

    #[test]
    fn a_daily_time_in_the_gap_fires_once_right_after_it() {
        // 02:30 does not exist: the first instant after the gap is 03:00 CEST (01:00 UTC).
        assert_eq!(day(&berlin("30 2 * * *"), SPRING_FORWARD), ["01:00"]);
    }

    #[test]
    fn a_daily_time_that_happens_twice_fires_the_first_time() {
        // 02:30 CEST is 00:30 UTC; 02:30 CET (01:30 UTC) is passed over.
        assert_eq!(day(&berlin("30 2 * * *"), FALL_BACK), ["00:30"]);
        assert_eq!(
            day(&berlin("0 2,3 * * *"), FALL_BACK),
            ["00:00", "02:00"],
            "a list of hours is fixed too"
        );
    }

    #[test]
    fn hourly_fires_every_real_hour() {
        assert_eq!(day(&berlin("0 * * * *"), SPRING_FORWARD).len(), 23);
        assert_eq!(day(&berlin("0 * * * *"), FALL_BACK).len(), 25);
        assert_eq!(day(&berlin("@hourly"), FALL_BACK).len(), 25);
        assert_eq!(day(&berlin("0 * * * *"), (2027, 6, 1)).len(), 24);
    }

    #[test]
    fn the_29th_of_february_is_in_leap_years_only() {
        let r = Recurrence::parse("0 9 29 2 *", "UTC").unwrap_or_else(|e| panic!("{e}"));
        let from = DateTime::parse_from_rfc3339("2026-12-03T00:00:00Z")
            .unwrap_or_else(|e| panic!("{e}"))
            .with_timezone(&Utc);
        let years: Vec<String> = r
            .after(from)
            .take(3)
            .map(|t| t.format("%Y").to_string())
            .collect();
        assert_eq!(years, ["2028", "2032", "2036"]);
    }

    #[test]
    fn last_day_and_nth_weekday() {
        let from = DateTime::parse_from_rfc3339("2027-01-10T00:00:00Z")
            .unwrap_or_else(|e| panic!("{e}"))
            .with_timezone(&Utc);
        let dates = |e: &str| -> Vec<String> {
            let r = Recurrence::parse(e, "UTC").unwrap_or_else(|e| panic!("{e}"));
            r.after(from)
                .take(2)
                .map(|t| t.format("%m-%d").to_string())
                .collect()
        };
        assert_eq!(dates("0 9 L * *"), ["01-31", "02-28"]);
        assert_eq!(dates("0 9 * * MON#1"), ["02-01", "03-01"]);
        assert_eq!(dates("0 9 * * 5L"), ["01-29", "02-26"]);
    }

    #[test]
    fn six_fields_and_aliases() {
        assert!(Recurrence::parse("30 0 9 * * *", "UTC").is_ok());
        for alias in [
            "@yearly",
            "@annually",
            "@monthly",
            "@weekly",
            "@daily",
            "@midnight",
            "@hourly",
        ] {
            assert!(Recurrence::parse(alias, "UTC").is_ok(), "{alias}");
        }
    }

    #[test]
    fn refusals() {
        for bad in [
            "",
            "bad",
            "61 * * * *",
            "* * * *",
            "0 0 1 1 * 2030",
            "@reboot",
        ] {
            assert!(
                matches!(Recurrence::parse(bad, "UTC"), Err(ScheduleError::Cron(_))),
                "{bad:?}"
            );
        }
        assert!(matches!(
            Recurrence::parse(&"1,".repeat(200), "UTC"),
            Err(ScheduleError::Cron(_))
        ));
        assert_eq!(
            Recurrence::parse("0 9 * * *", "Mars/Olympus").map(|_| ()),
            Err(ScheduleError::TimeZone("Mars/Olympus".into()))
        );
        assert!(Recurrence::parse("0 9 * * *", "europe/berlin").is_ok());
        let never = Recurrence::parse("0 0 30 2 *", "UTC").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(never.next_after(Utc::now()), None);
    }
}
