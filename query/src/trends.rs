//! Hashtag trends: counting messages per time bucket, and which hashtags are trending now.
//!
//! Counts are kept at three resolutions (minute, hour, day) per hashtag and for all
//! messages. A question for buckets of any length that start anywhere is answered from day
//! counters where a whole day lies inside one bucket, from hour counters where a whole hour
//! does, and from minute counters only around bucket edges off the hour; the finer
//! counters are read only for days and hours that have any hits (see [`count_buckets`]).
//!
//! Trending now follows the spirit of Mastodon's trending tags. For a hashtag on a UTC day,
//! `observed` is the number of distinct users who used it that day and `expected` the number
//! the day before (at least 1). Its score is `(observed - expected)² / expected` when
//! `observed` reaches a threshold and exceeds `expected`, else 0. A hashtag keeps its peak
//! score, which halves every half-life; it drops out of the list below 1.
//!
//! Scores come from event time, never the wall clock, so a rebuild gives the same state.
//! Decay is applied when asked: a peak `p` reached at minute `t` is worth
//! `p * 2^(-(now - t) / half_life)` at `now`. Rather than the peak, the read model keeps its
//! *rank* `log2(p) + t / half_life`, which orders hashtags the same way at every `now`: the
//! score at `now` is `2^(rank - now / half_life)`, and "score at least 1" is
//! "rank at least `now / half_life`". The largest rank is the peak that matters, so raising
//! a rank is a plain maximum, idempotent and order-free.
//!
//! What a batch of posts adds to all this is computed once, as a [`TrendBatch`]; the
//! stores only persist it.

mod batch;
mod count;

use cairn_events::Position;
use chrono::{DateTime, Utc};

pub use batch::{ScopeCounts, TagDay, TrendBatch};
pub use count::{READ_CHUNK, count_buckets};

/// Minutes since the Unix epoch: the finest resolution of trends.
pub type Minute = i64;

pub const MINUTES_PER_HOUR: i64 = 60;
pub const MINUTES_PER_DAY: i64 = 1440;

/// The scope of the counters that count every message (hashtag keys never contain `*`).
pub const ALL: &str = "*";

/// A resolution of the counters, finest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    Minute,
    Hour,
    Day,
}

impl Level {
    /// Length of one unit, in minutes.
    pub fn minutes(self) -> i64 {
        match self {
            Level::Minute => 1,
            Level::Hour => MINUTES_PER_HOUR,
            Level::Day => MINUTES_PER_DAY,
        }
    }

    /// The unit (of this level, counted from the epoch) holding `minute`.
    pub fn unit_of(self, minute: Minute) -> i64 {
        minute.div_euclid(self.minutes())
    }

    pub const ALL: [Level; 3] = [Level::Minute, Level::Hour, Level::Day];
}

/// One message as the trend counters see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrendHit {
    pub position: Position,
    pub minute: Minute,
    pub user_id: String,
    /// Case-folded hashtag keys, each once.
    pub tags: Vec<String>,
}

/// How the trends read model is built: trending scores and how long minute counters are
/// kept. Part of the read model: changing a rule needs a rebuild of `trends`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TrendRules {
    /// Fewest distinct users in a day for a hashtag to score at all.
    pub threshold: u64,
    /// Minutes for a peak score to halve.
    pub half_life_minutes: i64,
    /// Days before today (UTC) whose minute counters are kept; older days keep only their
    /// hour and day counters. `None` keeps every minute.
    pub minute_retention_days: Option<i64>,
}

impl Default for TrendRules {
    fn default() -> Self {
        TrendRules {
            threshold: 5,
            half_life_minutes: 4 * 60,
            minute_retention_days: None,
        }
    }
}

impl TrendRules {
    /// The first minute whose counter is still kept at `now`; `None` when all are kept.
    /// Day `d`'s minutes go once today is later than `d + minute_retention_days`.
    pub fn minutes_kept_from(&self, now: Minute) -> Option<Minute> {
        self.minute_retention_days
            .map(|days| (Level::Day.unit_of(now) - days) * MINUTES_PER_DAY)
    }

    /// The rank of a day's usage as of `minute` (the day's latest use), if it scores.
    pub fn rank(&self, observed: u64, yesterday: u64, minute: Minute) -> Option<f64> {
        let expected = yesterday.max(1);
        if observed < self.threshold || observed <= expected {
            return None;
        }
        let diff = (observed - expected) as f64;
        let score = diff * diff / expected as f64;
        Some(score.log2() + minute as f64 / self.half_life_minutes as f64)
    }

    /// The lowest rank still worth a score of 1 at `now`.
    pub fn floor_at(&self, now: Minute) -> f64 {
        now as f64 / self.half_life_minutes as f64
    }

    /// The score a rank is worth at `now`.
    pub fn score_at(&self, rank: f64, now: Minute) -> f64 {
        (rank - self.floor_at(now)).exp2()
    }
}

/// A day of one hashtag's use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DayUsage {
    pub day: i64,
    pub uses: u64,
    pub accounts: u64,
}

pub fn minute_of(t: DateTime<Utc>) -> Minute {
    t.timestamp().div_euclid(60)
}

pub fn time_of(minute: Minute) -> DateTime<Utc> {
    DateTime::<Utc>::from_timestamp(minute.saturating_mul(60), 0).unwrap_or_default()
}

/// Buckets of `step` minutes from `from` (inclusive) to `to` (exclusive); the last one is
/// cut short at `to`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Buckets {
    pub from: Minute,
    pub to: Minute,
    pub step: i64,
}

impl Buckets {
    pub fn len(&self) -> i64 {
        if self.to <= self.from {
            0
        } else {
            (self.to - self.from + self.step - 1) / self.step
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Start and end of bucket `i`.
    pub fn bounds(&self, i: i64) -> (Minute, Minute) {
        let start = self.from + i * self.step;
        (start, (start + self.step).min(self.to))
    }

    pub fn index_of(&self, minute: Minute) -> Option<usize> {
        (self.from..self.to)
            .contains(&minute)
            .then(|| ((minute - self.from) / self.step) as usize)
    }

    /// The bucket that holds all of `start..end` (minutes), if one does: the range lies
    /// inside the buckets and crosses no bucket edge.
    pub fn whole(&self, start: Minute, end: Minute) -> Option<usize> {
        if start < self.from || end > self.to || end <= start {
            return None;
        }
        let i = self.index_of(start)?;
        (self.index_of(end - 1) == Some(i)).then_some(i)
    }

    /// Whether buckets start off whole hours, so that the hours around their edges are
    /// counted from minute counters.
    pub fn off_hours(&self) -> bool {
        self.from % MINUTES_PER_HOUR != 0 || self.step % MINUTES_PER_HOUR != 0
    }

    /// The earliest bucket edge (a start, or the end) off a whole hour: minute counters are
    /// read from that hour on. `None` when every edge is on the hour.
    pub fn first_edge_off_hours(&self) -> Option<Minute> {
        let on_hour = |m: Minute| m % MINUTES_PER_HOUR == 0;
        if !on_hour(self.from) {
            return Some(self.from);
        }
        let second = self.from.saturating_add(self.step);
        if !on_hour(self.step) && second < self.to {
            return Some(second);
        }
        (!on_hour(self.to)).then_some(self.to)
    }
}

/// Sort `ranges` (each `first..end`) and merge the ones that overlap or touch; empty ones
/// are dropped.
pub fn merge_ranges(ranges: &mut Vec<(i64, i64)>) {
    ranges.retain(|(first, end)| first < end);
    ranges.sort_unstable();
    let mut merged: Vec<(i64, i64)> = Vec::with_capacity(ranges.len());
    for &(first, end) in ranges.iter() {
        match merged.last_mut() {
            Some(last) if first <= last.1 => last.1 = last.1.max(end),
            _ => merged.push((first, end)),
        }
    }
    *ranges = merged;
}

/// Whether `unit` lies in one of `ranges` (sorted and merged by [`merge_ranges`]).
pub fn in_ranges(ranges: &[(i64, i64)], unit: i64) -> bool {
    let after = ranges.partition_point(|(first, _)| *first <= unit);
    after > 0 && ranges.get(after - 1).is_some_and(|(_, end)| unit < *end)
}

/// Parse a Go-style duration (`1m`, `90m`, `1h30m`, `1.5h`, `24h`) into whole minutes.
pub fn parse_aggregation(raw: &str) -> Result<i64, String> {
    let bad = || {
        format!(
            "aggregation {raw:?} must be a duration such as 1m, 5m, 1h, 24h or 1h30m, of whole minutes"
        )
    };
    if raw.is_empty() || raw == "0" {
        return Err(bad());
    }
    let mut nanos: f64 = 0.0;
    let mut rest = raw;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let number: f64 = rest[..number_len].parse().map_err(|_| bad())?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return Err(bad()),
        };
        rest = &rest[unit_len..];
        nanos += number * scale;
    }
    let minutes = nanos / 60e9;
    if !minutes.is_finite() || minutes > 1e12 {
        return Err(bad());
    }
    if minutes < 1.0 {
        return Err(format!("aggregation {raw:?} is below the smallest, 1m"));
    }
    if (minutes - minutes.round()).abs() > 1e-9 {
        return Err(bad());
    }
    Ok(minutes.round() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        for (raw, minutes) in [
            ("1m", 1),
            ("5m", 5),
            ("1h", 60),
            ("24h", 1440),
            ("1h30m", 90),
            ("1.5h", 90),
            ("90s", -1),
            ("60s", 1),
            ("30s", -1),
            ("0", -1),
            ("", -1),
            ("1", -1),
            ("1d", -1),
            ("h", -1),
            ("-1m", -1),
            ("1m1s", -1),
        ] {
            let parsed = parse_aggregation(raw);
            if minutes < 0 {
                assert!(parsed.is_err(), "{raw} should be refused");
            } else {
                assert_eq!(parsed, Ok(minutes), "{raw}");
            }
        }
    }

    #[test]
    fn whole_units_lie_inside_one_bucket() {
        let day = MINUTES_PER_DAY;
        // Buckets of 90 minutes from 10:30 on day 100, up to 02:00 the next day.
        let b = Buckets {
            from: 100 * day + 630,
            to: 101 * day + 120,
            step: 90,
        };
        assert_eq!(b.len(), 11);
        assert_eq!(b.whole(100 * day + 630, 100 * day + 720), Some(0));
        assert_eq!(b.whole(100 * day + 660, 100 * day + 720), Some(0));
        assert_eq!(
            b.whole(100 * day + 660, 100 * day + 780),
            None,
            "crosses 12:00"
        );
        assert_eq!(
            b.whole(100 * day + 600, 100 * day + 660),
            None,
            "starts before"
        );
        assert_eq!(b.whole(101 * day + 60, 101 * day + 180), None, "ends after");
        assert_eq!(b.whole(101 * day + 90, 101 * day + 120), Some(10));
        assert_eq!(
            b.whole(101 * day + 60, 101 * day + 120),
            None,
            "crosses 01:30"
        );
        assert_eq!(b.index_of(101 * day + 120), None);
        assert!(b.off_hours());
        assert_eq!(b.first_edge_off_hours(), Some(100 * day + 630));
        // On the hour with an hour-long step: only an end off the hour needs minutes.
        let b = Buckets {
            from: 100 * day,
            to: 102 * day + 37,
            step: 60,
        };
        assert!(!b.off_hours());
        assert_eq!(b.first_edge_off_hours(), Some(102 * day + 37));
        assert_eq!(Buckets { to: 102 * day, ..b }.first_edge_off_hours(), None);
        // On the hour with a 90-minute step: the second start is off the hour.
        let b = Buckets { step: 90, ..b };
        assert_eq!(b.first_edge_off_hours(), Some(100 * day + 90));
        // Before the epoch too.
        let b = Buckets {
            from: -3 * day,
            to: -day,
            step: day,
        };
        assert_eq!(b.whole(-2 * day, -day), Some(1));
        assert_eq!(b.first_edge_off_hours(), None);
    }

    #[test]
    fn ranges_merge_and_contain() {
        let mut ranges = vec![(10, 20), (5, 6), (19, 25), (30, 30), (25, 27), (-4, -2)];
        merge_ranges(&mut ranges);
        assert_eq!(ranges, [(-4, -2), (5, 6), (10, 27)]);
        for (unit, inside) in [
            (-5, false),
            (-4, true),
            (-2, false),
            (5, true),
            (6, false),
            (26, true),
            (27, false),
        ] {
            assert_eq!(in_ranges(&ranges, unit), inside, "{unit}");
        }
        assert!(!in_ranges(&[], 0));
    }

    #[test]
    fn scores_decay_by_half_each_half_life() {
        let s = TrendRules::default();
        assert_eq!(s.rank(4, 0, 0), None, "below the threshold");
        assert_eq!(s.rank(5, 5, 0), None, "not above yesterday");
        let rank = s
            .rank(16, 2, 1000)
            .unwrap_or_else(|| panic!("above the threshold"));
        assert!((s.score_at(rank, 1000) - 98.0).abs() < 1e-9);
        assert!((s.score_at(rank, 1000 + 240) - 49.0).abs() < 1e-9);
    }
}
