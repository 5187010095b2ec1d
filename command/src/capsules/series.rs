//! Recurring capsules: which occurrences a schedule has, which of them a release delivers,
//! and which a schedule may not have (too frequent, none in the future).
//!
//! A series' occurrences are the times its cron expression fires in its zone
//! ([`Recurrence`]), from its start (the submission, or a later time the sender chose),
//! numbered from 1, up to `until` (inclusive) or `count` occurrences. Pure, like the
//! decisions: the clock is an argument.
//!
//! Missed occurrences (the scheduler was down when they were due) follow one policy:
//! the latest one due is delivered, and each older one is recorded as skipped. After a
//! long outage a burst of stale letters would be worse than a gap.

use cairn_events::domain::capsule::Schedule;
use cairn_events::schedule::ScheduleError;
use chrono::{DateTime, Datelike, Duration, Utc};
use chrono_tz::Tz;

/// The most occurrences a release records as skipped; older ones beyond it are passed
/// over without an event (more than 41 days of an hourly series).
pub const MAX_SKIPPED_EVENTS: usize = 1_000;

/// How many occurrences are looked at for the minimum interval: a cron expression's
/// pattern repeats within a leap-year cycle, which a sample this long, or four years,
/// covers for anything firing at least as often as the sample allows.
const INTERVAL_SAMPLE: usize = 1_000;

/// Which part of a schedule was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScheduleField {
    /// Not a cron expression.
    Cron,
    /// Fires more often than the minimum interval.
    TooOften,
    /// No occurrence after the start (and before `until`, if given).
    NoOccurrence,
    TimeZone,
    Until,
    Count,
}

/// A schedule accepted at submission.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checked {
    /// The first occurrence.
    pub first: DateTime<Utc>,
    /// The occurrences after it, up to two, to show the sender.
    pub then: Vec<DateTime<Utc>>,
    /// Whether it fires only on 29 February (in leap years).
    pub leap_days_only: bool,
}

/// Check `schedule` for a capsule submitted at `now` whose series starts after `start`
/// (at least `now`): a valid expression and zone, a first occurrence (before `until`),
/// and no two occurrences closer than `min_interval`.
pub fn check(
    schedule: &Schedule,
    start: DateTime<Utc>,
    min_interval: Duration,
) -> Result<Checked, ScheduleField> {
    let recurrence = schedule.recurrence().map_err(|e| match e {
        ScheduleError::Cron(_) => ScheduleField::Cron,
        ScheduleError::TimeZone(_) => ScheduleField::TimeZone,
    })?;
    if schedule.count == Some(0) {
        return Err(ScheduleField::Count);
    }
    if schedule.until.is_some_and(|until| until <= start) {
        return Err(ScheduleField::Until);
    }
    let within = |t: &DateTime<Utc>| schedule.until.is_none_or(|until| *t <= until);
    let first = recurrence
        .next_after(start)
        .filter(within)
        .ok_or(ScheduleField::NoOccurrence)?;
    let limit = schedule
        .count
        .map_or(INTERVAL_SAMPLE, |c| (c as usize).min(INTERVAL_SAMPLE));
    let horizon = first + Duration::days(4 * 366);
    let mut previous = first;
    let mut then = Vec::new();
    for next in recurrence
        .after(first)
        .take(limit.saturating_sub(1))
        .take_while(|t| within(t) && *t <= horizon)
    {
        if next - previous < min_interval {
            return Err(ScheduleField::TooOften);
        }
        if then.len() < 2 {
            then.push(next);
        }
        previous = next;
    }
    let zone = recurrence.zone();
    let leap_days_only = std::iter::once(first)
        .chain(then.iter().copied())
        .all(|t| is_leap_day(t, zone));
    Ok(Checked {
        first,
        then,
        leap_days_only,
    })
}

fn is_leap_day(t: DateTime<Utc>, zone: Tz) -> bool {
    let local = t.with_timezone(&zone);
    local.month() == 2 && local.day() == 29
}

/// A schedule from its fields as a request gives them: `cron`; `time_zone` (an IANA name,
/// default `UTC`); `until`, an RFC 3339 time, a date (the end of that day in the zone), or
/// milliseconds since the epoch (as Chronoria gives times); `count`, a whole number from 1.
pub fn parse_input(
    cron: &str,
    time_zone: Option<&str>,
    until: Option<&str>,
    count: Option<&str>,
) -> Result<Schedule, ScheduleField> {
    let zone = match time_zone.map(str::trim).filter(|z| !z.is_empty()) {
        Some(name) => {
            cairn_events::schedule::parse_zone(name).map_err(|_| ScheduleField::TimeZone)?
        }
        None => Tz::UTC,
    };
    let until = match until.map(str::trim).filter(|u| !u.is_empty()) {
        Some(raw) => Some(parse_until(raw, zone).ok_or(ScheduleField::Until)?),
        None => None,
    };
    let count = match count.map(str::trim).filter(|c| !c.is_empty()) {
        Some(raw) => Some(
            raw.parse::<u32>()
                .ok()
                .filter(|c| *c >= 1)
                .ok_or(ScheduleField::Count)?,
        ),
        None => None,
    };
    if cron.trim().is_empty() {
        return Err(ScheduleField::Cron);
    }
    Ok(Schedule {
        cron: cron.trim().to_owned(),
        time_zone: zone.name().to_owned(),
        until,
        count,
    })
}

fn parse_until(raw: &str, zone: Tz) -> Option<DateTime<Utc>> {
    use chrono::TimeZone as _;
    if let Ok(t) = DateTime::parse_from_rfc3339(raw) {
        return Some(t.with_timezone(&Utc));
    }
    if let Ok(date) = chrono::NaiveDate::parse_from_str(raw, "%Y-%m-%d") {
        // The whole day is included: until the start of the next one.
        let next = date.succ_opt()?.and_hms_opt(0, 0, 0)?;
        let start = zone.from_local_datetime(&next).earliest()?;
        return Some(start.with_timezone(&Utc) - Duration::milliseconds(1));
    }
    raw.parse::<i64>()
        .ok()
        .and_then(DateTime::from_timestamp_millis)
}

/// One occurrence of a series.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Occurrence {
    /// From 1.
    pub number: u32,
    pub scheduled_at: DateTime<Utc>,
}

/// What a release at some time comes to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Release {
    /// Occurrences passed over, oldest first (at most [`MAX_SKIPPED_EVENTS`]).
    pub skipped: Vec<Occurrence>,
    /// The occurrence delivered.
    pub delivered: Occurrence,
    /// When the next one is due; `None`: the series is over.
    pub next_at: Option<DateTime<Utc>>,
}

/// The release at `now` of a series whose next undelivered occurrence is `due`: it and
/// every later occurrence already due at `now` are candidates; the latest is delivered
/// and the others skipped. A schedule that no longer parses (a zone removed from the time
/// zone database) delivers the occurrence due and ends the series.
pub fn release(schedule: &Schedule, due: Occurrence, now: DateTime<Utc>) -> Release {
    let Ok(recurrence) = schedule.recurrence() else {
        return Release {
            skipped: Vec::new(),
            delivered: due,
            next_at: None,
        };
    };
    let in_series = |o: &Occurrence| {
        schedule.count.is_none_or(|count| o.number <= count)
            && schedule.until.is_none_or(|until| o.scheduled_at <= until)
    };
    let following = |o: Occurrence| {
        let number = o.number.checked_add(1)?;
        let scheduled_at = recurrence.next_after(o.scheduled_at)?;
        Some(Occurrence {
            number,
            scheduled_at,
        })
        .filter(in_series)
    };
    let mut skipped = std::collections::VecDeque::new();
    let mut delivered = due;
    let mut next = following(due);
    while let Some(later) = next.filter(|o| o.scheduled_at <= now) {
        if skipped.len() == MAX_SKIPPED_EVENTS {
            skipped.pop_front();
        }
        skipped.push_back(delivered);
        delivered = later;
        next = following(later);
    }
    Release {
        skipped: skipped.into(),
        delivered,
        next_at: next.map(|o| o.scheduled_at),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(rfc3339: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(rfc3339)
            .unwrap_or_else(|e| panic!("{e}"))
            .with_timezone(&Utc)
    }

    fn schedule(cron: &str) -> Schedule {
        Schedule {
            cron: cron.into(),
            time_zone: "UTC".into(),
            until: None,
            count: None,
        }
    }

    const HOUR: Duration = Duration::hours(1);

    #[test]
    fn a_schedule_is_checked_field_by_field() {
        let now = t("2027-01-10T12:00:00Z");
        let check = |s: &Schedule| check(s, now, HOUR).map(|c| c.first);
        assert_eq!(check(&schedule("0 9 * * *")), Ok(t("2027-01-11T09:00:00Z")));
        assert_eq!(check(&schedule("nope")), Err(ScheduleField::Cron));
        assert_eq!(
            check(&schedule("*/5 * * * *")),
            Err(ScheduleField::TooOften)
        );
        assert_eq!(
            check(&schedule("0 0 30 2 *")),
            Err(ScheduleField::NoOccurrence)
        );
        let zone = Schedule {
            time_zone: "Nowhere/Special".into(),
            ..schedule("0 9 * * *")
        };
        assert_eq!(check(&zone), Err(ScheduleField::TimeZone));
        let past = Schedule {
            until: Some(t("2027-01-01T00:00:00Z")),
            ..schedule("0 9 * * *")
        };
        assert_eq!(check(&past), Err(ScheduleField::Until));
        let before_first = Schedule {
            until: Some(t("2027-01-11T08:00:00Z")),
            ..schedule("0 9 * * *")
        };
        assert_eq!(check(&before_first), Err(ScheduleField::NoOccurrence));
        let none = Schedule {
            count: Some(0),
            ..schedule("0 9 * * *")
        };
        assert_eq!(check(&none), Err(ScheduleField::Count));
        let once = Schedule {
            count: Some(1),
            ..schedule("* * * * *")
        };
        assert!(check(&once).is_ok(), "one occurrence has no interval");
        assert_eq!(
            check(&schedule("0 9,9 * * *")),
            Ok(t("2027-01-11T09:00:00Z"))
        );
    }

    #[test]
    fn request_fields() {
        let parsed = parse_input(
            "0 9 * * *",
            Some("europe/berlin"),
            Some("2027-03-31"),
            Some("10"),
        )
        .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(parsed.time_zone, "Europe/Berlin");
        assert_eq!(parsed.until, Some(t("2027-03-31T21:59:59.999Z")));
        assert_eq!(parsed.count, Some(10));
        let utc = parse_input("0 9 * * *", None, Some("1900000000000"), None)
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(utc.time_zone, "UTC");
        assert_eq!(utc.until.map(|u| u.timestamp()), Some(1_900_000_000));
        assert_eq!(parse_input(" ", None, None, None), Err(ScheduleField::Cron));
        assert_eq!(
            parse_input("@daily", Some("Atlantis"), None, None),
            Err(ScheduleField::TimeZone)
        );
        assert_eq!(
            parse_input("@daily", None, Some("soon"), None),
            Err(ScheduleField::Until)
        );
        for bad in ["0", "-1", "1.5", "ten", "99999999999"] {
            assert_eq!(
                parse_input("@daily", None, None, Some(bad)),
                Err(ScheduleField::Count),
                "{bad}"
            );
        }
    }

    #[test]
    fn an_interval_shorter_only_on_some_days_is_found() {
        // Every 5 minutes on the last day of the month only.
        let now = t("2027-01-10T12:00:00Z");
        assert_eq!(
            check(&schedule("*/5 * L * *"), now, HOUR).map(|_| ()),
            Err(ScheduleField::TooOften)
        );
    }

    #[test]
    fn the_29th_of_february_is_flagged() {
        let now = t("2026-12-03T00:00:00Z");
        let checked = check(&schedule("0 9 29 2 *"), now, HOUR).unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(checked.first, t("2028-02-29T09:00:00Z"));
        assert!(checked.leap_days_only);
        let daily = check(&schedule("0 9 * * *"), now, HOUR).unwrap_or_else(|e| panic!("{e:?}"));
        assert!(!daily.leap_days_only);
    }

    fn occurrence(number: u32, at: &str) -> Occurrence {
        Occurrence {
            number,
            scheduled_at: t(at),
        }
    }

    #[test]
    fn an_occurrence_on_time_is_delivered_and_the_next_one_named() {
        let due = occurrence(1, "2027-01-11T09:00:00Z");
        let r = release(&schedule("0 9 * * *"), due, t("2027-01-11T09:00:00.003Z"));
        assert_eq!(r.skipped, []);
        assert_eq!(r.delivered, due);
        assert_eq!(r.next_at, Some(t("2027-01-12T09:00:00Z")));
    }

    #[test]
    fn after_downtime_the_latest_missed_occurrence_is_delivered_and_older_ones_skipped() {
        let due = occurrence(3, "2027-01-11T09:00:00Z");
        let r = release(&schedule("0 9 * * *"), due, t("2027-01-14T10:00:00Z"));
        assert_eq!(
            r.skipped,
            [
                occurrence(3, "2027-01-11T09:00:00Z"),
                occurrence(4, "2027-01-12T09:00:00Z"),
                occurrence(5, "2027-01-13T09:00:00Z"),
            ]
        );
        assert_eq!(r.delivered, occurrence(6, "2027-01-14T09:00:00Z"));
        assert_eq!(r.next_at, Some(t("2027-01-15T09:00:00Z")));
    }

    #[test]
    fn a_series_ends_at_its_count_or_its_until() {
        let counted = Schedule {
            count: Some(3),
            ..schedule("0 9 * * *")
        };
        let r = release(
            &counted,
            occurrence(3, "2027-01-13T09:00:00Z"),
            t("2027-01-13T09:00:01Z"),
        );
        assert_eq!(r.next_at, None);
        // Missed ones past the count are not invented.
        let r = release(
            &counted,
            occurrence(2, "2027-01-12T09:00:00Z"),
            t("2027-02-01T00:00:00Z"),
        );
        assert_eq!(r.skipped, [occurrence(2, "2027-01-12T09:00:00Z")]);
        assert_eq!(r.delivered, occurrence(3, "2027-01-13T09:00:00Z"));
        assert_eq!(r.next_at, None);
        let until = Schedule {
            until: Some(t("2027-01-12T09:00:00Z")),
            ..schedule("0 9 * * *")
        };
        let r = release(
            &until,
            occurrence(1, "2027-01-11T09:00:00Z"),
            t("2027-01-11T09:00:01Z"),
        );
        assert_eq!(
            r.next_at,
            Some(t("2027-01-12T09:00:00Z")),
            "until is inclusive"
        );
        let r = release(
            &until,
            occurrence(2, "2027-01-12T09:00:00Z"),
            t("2027-01-12T09:00:01Z"),
        );
        assert_eq!(r.next_at, None);
    }

    #[test]
    fn skipped_events_are_bounded() {
        let due = occurrence(1, "2027-01-01T00:00:00Z");
        let r = release(&schedule("0 * * * *"), due, t("2027-12-31T00:00:00Z"));
        assert_eq!(r.skipped.len(), MAX_SKIPPED_EVENTS);
        assert_eq!(r.delivered.scheduled_at, t("2027-12-31T00:00:00Z"));
        assert_eq!(
            r.skipped.last().map(|o| o.number),
            Some(r.delivered.number - 1)
        );
    }
}
