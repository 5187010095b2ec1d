//! `GET /trend` (Dunder-compatible counts per time bucket) and `GET /trends/hashtags`
//! (what is trending now).

use std::collections::HashMap;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use chrono::SecondsFormat;
use serde::Serialize;
use utoipa::{IntoParams, ToSchema};

use cairn_events::domain::message::Hashtag;

use super::{QueryError, QueryState, parse_date};
use crate::trends::{ALL, Buckets, Level, MINUTES_PER_DAY, minute_of, parse_aggregation, time_of};

/// The most buckets one `/trend` answer may hold.
pub const MAX_BUCKETS: i64 = 100_000;
/// Default and largest `limit` of `/trends/hashtags`.
pub const DEFAULT_TRENDING: usize = 10;
pub const MAX_TRENDING: usize = 100;
/// Days of history shown beside each trending hashtag.
pub const HISTORY_DAYS: i64 = 7;

/// One bucket of a trend.
#[derive(Debug, Serialize, ToSchema)]
pub struct TrendBucket {
    /// Start of the bucket (included), RFC 3339 UTC.
    #[schema(value_type = String, example = "2019-09-22T00:00:00Z")]
    pub from_date: Stamp,
    /// End of the bucket (excluded), RFC 3339 UTC.
    #[schema(value_type = String, example = "2019-09-22T00:01:00Z")]
    pub to_date: Stamp,
    pub count: u64,
}

/// A minute, serialized as RFC 3339 UTC (`2019-09-22T10:00:00Z`). An answer may hold
/// 100,000 buckets: formatting their times without chrono or an allocation each keeps
/// the serialization a small part of a long answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp(pub i64);

impl Stamp {
    /// `YYYY-MM-DDTHH:MM:00Z`, or `None` outside the years 0 to 9999.
    fn format(self, out: &mut [u8; 20]) -> Option<&str> {
        let (days, of_day) = (
            self.0.div_euclid(MINUTES_PER_DAY),
            self.0.rem_euclid(MINUTES_PER_DAY),
        );
        let (year, month, day) = civil_date(days);
        if !(0..=9999).contains(&year) {
            return None;
        }
        let digits = |out: &mut [u8], n: i64| {
            let mut n = n;
            for slot in out.iter_mut().rev() {
                *slot = b'0' + (n % 10) as u8;
                n /= 10;
            }
        };
        *out = *b"0000-00-00T00:00:00Z";
        digits(&mut out[0..4], year);
        digits(&mut out[5..7], month);
        digits(&mut out[8..10], day);
        digits(&mut out[11..13], of_day / 60);
        digits(&mut out[14..16], of_day % 60);
        std::str::from_utf8(out).ok()
    }
}

impl Serialize for Stamp {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut buffer = [0_u8; 20];
        match self.format(&mut buffer) {
            Some(text) => serializer.serialize_str(text),
            None => serializer.serialize_str(&stamp(self.0)),
        }
    }
}

/// The (year, month, day) of a count of days since 1970-01-01, in the proleptic Gregorian
/// calendar: days are counted within 400-year eras (146,097 days each), and each year is
/// taken to start on March 1st so that the leap day falls at its end.
fn civil_date(days: i64) -> (i64, i64, i64) {
    let shifted = days + 719_468; // days from 0000-03-01
    let era = shifted.div_euclid(146_097);
    let day_of_era = shifted.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TrendData {
    pub trends: Vec<TrendBucket>,
}

/// `{"data": {"trends": [...]}}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct TrendBody {
    pub data: TrendData,
}

/// The query parameters of `GET /trend`.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct TrendParams {
    /// Start (included; truncated to the minute): RFC 3339, or `YYYY-MM-DD` (midnight UTC).
    from_date: String,
    /// End (excluded; truncated to the minute): RFC 3339, or `YYYY-MM-DD` (midnight UTC).
    to_date: String,
    /// Bucket length as a Go duration (`1m`, `5m`, `1h`, `24h`, `1h30m`): whole minutes,
    /// at least `1m`. Default `1h`.
    aggregation: Option<String>,
    /// Count only messages with this hashtag (case-insensitive); absent: all messages.
    hashtag: Option<String>,
    /// `true`: also return empty buckets (default `false`, as Dunder).
    fill: Option<bool>,
}

/// Message counts per time bucket, for one hashtag or all messages.
///
/// Buckets of `aggregation` start at `from_date` and follow each other up to `to_date`;
/// each includes its start and excludes its end, and the last one ends at `to_date`.
#[utoipa::path(
    get,
    path = "/trend",
    tag = "trends",
    params(TrendParams),
    responses(
        (status = 200, description = "Counts per bucket, oldest first", body = TrendBody),
        (status = 400, description = "Missing or bad dates, aggregation or hashtag; too many buckets; buckets off the hour where per-minute counts are no longer kept", body = super::ErrorBody),
        (status = 503, description = "Read store unavailable", body = super::ErrorBody),
    )
)]
pub async fn trend(
    State(state): State<QueryState>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Json<TrendBody>, QueryError> {
    let Query(params) = query.map_err(|e| QueryError::bad("invalid_query", e.body_text()))?;
    let date = |name: &str| {
        params
            .get(name)
            .ok_or_else(|| QueryError::bad("missing_date", format!("{name} is required")))
            .and_then(|raw| parse_date(name, raw))
    };
    let (from, to) = (date("from_date")?, date("to_date")?);
    if from >= to {
        return Err(QueryError::bad(
            "invalid_date_range",
            "from_date must be before to_date",
        ));
    }
    let step = parse_aggregation(params.get("aggregation").map_or("1h", String::as_str))
        .map_err(|e| QueryError::bad("invalid_aggregation", e))?;
    let scope = match params.get("hashtag") {
        Some(tag) => Hashtag::parse(tag)
            .map_err(|e| QueryError::bad("invalid_hashtag", e))?
            .key(),
        None => ALL.to_owned(),
    };
    let fill = match params.get("fill").map(String::as_str) {
        None | Some("false" | "0") => false,
        Some("true" | "1") => true,
        Some(_) => {
            return Err(QueryError::bad(
                "invalid_fill",
                "fill must be true or false",
            ));
        }
    };
    let buckets = Buckets {
        from: minute_of(from),
        to: minute_of(to),
        step,
    };
    if buckets.len() > MAX_BUCKETS {
        return Err(QueryError::bad(
            "too_many_buckets",
            format!(
                "this range and aggregation make {} buckets; at most {MAX_BUCKETS} fit in one answer",
                buckets.len()
            ),
        ));
    }

    let plan = buckets.plan();
    let now = minute_of((state.clock)());
    if let (Some(kept_from), Some(days)) = (
        state.rules.minutes_kept_from(now),
        state.rules.minute_retention_days,
    ) && plan
        .iter()
        .any(|(level, first, _)| *level == Level::Minute && *first < kept_from)
    {
        return Err(QueryError::bad(
            "minutes_expired",
            format!(
                "per-minute counts are kept for {days} days (from {}); before that, buckets must start and end on whole hours",
                stamp(kept_from)
            ),
        ));
    }

    let mut counts = vec![0_u64; usize::try_from(buckets.len()).unwrap_or(0)];
    for (level, first, end) in plan {
        for (unit, n) in state.read.trend_counts(&scope, level, first, end).await? {
            if let Some(slot) = buckets
                .index_of(unit * level.minutes())
                .and_then(|i| counts.get_mut(i))
            {
                *slot += n;
            }
        }
    }
    let trends = counts
        .into_iter()
        .enumerate()
        .filter(|(_, count)| fill || *count > 0)
        .map(|(i, count)| {
            let (start, end) = buckets.bounds(i as i64);
            TrendBucket {
                from_date: Stamp(start),
                to_date: Stamp(end),
                count,
            }
        })
        .collect();
    Ok(Json(TrendBody {
        data: TrendData { trends },
    }))
}

fn stamp(minute: i64) -> String {
    time_of(minute).to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// One day of a hashtag's use.
#[derive(Debug, Serialize, ToSchema)]
pub struct DayView {
    #[schema(example = "2026-11-25")]
    pub day: String,
    /// Messages with the hashtag that day.
    pub uses: u64,
    /// Distinct users who used it that day.
    pub accounts: u64,
}

/// A hashtag trending now.
#[derive(Debug, Serialize, ToSchema)]
pub struct TrendingTag {
    /// The hashtag, case-folded.
    pub name: String,
    /// Its score now: its peak, halved for every half-life since.
    pub score: f64,
    /// The last seven days, today first.
    pub history: Vec<DayView>,
}

/// `{"data": [...]}`, highest score first.
#[derive(Debug, Serialize, ToSchema)]
pub struct TrendingBody {
    pub data: Vec<TrendingTag>,
}

/// The query parameters of `GET /trends/hashtags`.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct TrendingParams {
    /// How many hashtags, 1 to 100 (default 10).
    limit: Option<u32>,
}

/// The hashtags trending now, with their scores and the last days' use.
///
/// A hashtag scores on a UTC day when at least a threshold of distinct users (default 5)
/// used it, more than the day before: `(today - yesterday)² / yesterday` (yesterday at
/// least 1). It keeps its peak score, halving every half-life (default 4 hours), and drops
/// out below 1.
#[utoipa::path(
    get,
    path = "/trends/hashtags",
    tag = "trends",
    params(TrendingParams),
    responses(
        (status = 200, description = "Trending hashtags, highest score first", body = TrendingBody),
        (status = 400, description = "A bad limit", body = super::ErrorBody),
        (status = 503, description = "Read store unavailable", body = super::ErrorBody),
    )
)]
pub async fn trending(
    State(state): State<QueryState>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Json<TrendingBody>, QueryError> {
    let Query(params) = query.map_err(|e| QueryError::bad("invalid_query", e.body_text()))?;
    let limit = match params.get("limit").map(|l| l.parse::<usize>()) {
        None => DEFAULT_TRENDING,
        Some(Ok(n)) if (1..=MAX_TRENDING).contains(&n) => n,
        Some(_) => {
            return Err(QueryError::bad(
                "invalid_limit",
                format!("limit must be a whole number from 1 to {MAX_TRENDING}"),
            ));
        }
    };
    let now = minute_of((state.clock)());
    let rules = state.rules;
    let ranked = state.read.trending(rules.floor_at(now), limit).await?;
    let tags: Vec<String> = ranked.iter().map(|(tag, _)| tag.clone()).collect();
    let today = Level::Day.unit_of(now);
    let histories = state
        .read
        .histories(&tags, today - HISTORY_DAYS + 1, today + 1)
        .await?;
    let data = ranked
        .into_iter()
        .zip(histories)
        .map(|((name, rank), days)| TrendingTag {
            name,
            score: (rules.score_at(rank, now) * 100.0).round() / 100.0,
            history: days
                .into_iter()
                .rev()
                .map(|d| DayView {
                    day: time_of(d.day * MINUTES_PER_DAY)
                        .format("%Y-%m-%d")
                        .to_string(),
                    uses: d.uses,
                    accounts: d.accounts,
                })
                .collect(),
        })
        .collect();
    Ok(Json(TrendingBody { data }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_match_chrono() {
        let json = |minute: i64| serde_json::to_string(&Stamp(minute)).unwrap_or_default();
        // Every minute across two leap days, then a day every 37 over 0000-9999.
        let leap = minute_of(
            chrono::DateTime::parse_from_rfc3339("2024-02-27T00:00:00Z")
                .unwrap()
                .into(),
        );
        let minutes = (leap..leap + 5 * MINUTES_PER_DAY).chain(
            (-719_528..2_932_896)
                .step_by(37)
                .map(|d| d * MINUTES_PER_DAY + d % 1440),
        );
        for minute in minutes {
            assert_eq!(
                json(minute),
                format!("\"{}\"", stamp(minute)),
                "minute {minute}"
            );
        }
        // Outside four-digit years, chrono's form.
        assert_eq!(
            json(-719_529 * MINUTES_PER_DAY),
            format!("\"{}\"", stamp(-719_529 * MINUTES_PER_DAY))
        );
    }
}
