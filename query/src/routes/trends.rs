//! `GET /trend` (Dunder-compatible counts per time bucket) and `GET /trends/hashtags`
//! (what is trending now).

use std::collections::HashMap;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use chrono::SecondsFormat;
use serde::Serialize;
use utoipa::{IntoParams, ToSchema};

use cairn_events::domain::message::Hashtag;

use super::{QueryError, QueryState, parse_date};
use crate::trends::{
    ALL, Buckets, Level, MINUTES_PER_DAY, count_buckets, minute_of, parse_aggregation, time_of,
};

/// The most buckets one `/trend` answer may hold.
pub const MAX_BUCKETS: i64 = 100_000;
/// The longest `/trend` span, in days: 10,000 years (every date with a four-digit year).
pub const MAX_SPAN_DAYS: i64 = 3_652_425;
/// The longest `/trend` span of buckets that do not start on whole hours, in days: those
/// are counted from minute counters around each bucket edge.
pub const MAX_MINUTE_SPAN_DAYS: i64 = 366;
/// Default and largest `limit` of `/trends/hashtags`.
pub const DEFAULT_TRENDING: usize = 10;
pub const MAX_TRENDING: usize = 100;
/// Days of history shown beside each trending hashtag.
pub const HISTORY_DAYS: i64 = 7;

/// One bucket of a trend (the shape [`trend_json`] writes).
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct TrendBucket {
    /// Start of the bucket (included), RFC 3339 UTC.
    #[schema(example = "2019-09-22T00:00:00Z")]
    from_date: String,
    /// End of the bucket (excluded), RFC 3339 UTC.
    #[schema(example = "2019-09-22T00:01:00Z")]
    to_date: String,
    count: u64,
}

#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct TrendData {
    trends: Vec<TrendBucket>,
}

/// `{"data": {"trends": [...]}}`.
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct TrendBody {
    data: TrendData,
}

/// The body of a `/trend` answer. An answer may hold 100,000 buckets (a month of minutes
/// is 43,200), so it is written straight into bytes: no value per bucket, and each bucket
/// edge formatted once, its date only when the day changes.
fn trend_json(buckets: &Buckets, counts: &[u64], fill: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + counts.len() * 80);
    out.extend_from_slice(br#"{"data":{"trends":["#);
    let mut stamps = Stamps::default();
    let mut first = true;
    for (i, count) in counts.iter().enumerate() {
        if !fill && *count == 0 {
            continue;
        }
        let (start, end) = buckets.bounds(i as i64);
        if !first {
            out.push(b',');
        }
        first = false;
        out.extend_from_slice(br#"{"from_date":""#);
        stamps.write(&mut out, start);
        out.extend_from_slice(br#"","to_date":""#);
        stamps.write(&mut out, end);
        out.extend_from_slice(br#"","count":"#);
        out.extend_from_slice(count.to_string().as_bytes());
        out.push(b'}');
    }
    out.extend_from_slice(b"]}}");
    out
}

/// Writes minutes as RFC 3339 UTC (`2019-09-22T10:00:00Z`), remembering the last date.
#[derive(Default)]
struct Stamps {
    /// The last day formatted and its `YYYY-MM-DD`.
    day: Option<(i64, [u8; 10])>,
}

impl Stamps {
    fn write(&mut self, out: &mut Vec<u8>, minute: i64) {
        let (day, of_day) = (
            minute.div_euclid(MINUTES_PER_DAY),
            minute.rem_euclid(MINUTES_PER_DAY),
        );
        let date = match self.day {
            Some((cached, date)) if cached == day => date,
            _ => {
                let (year, month, day_of_month) = civil_date(day);
                if !(0..=9999).contains(&year) {
                    // Outside four-digit years: chrono's form.
                    out.extend_from_slice(stamp(minute).as_bytes());
                    return;
                }
                let mut date = *b"0000-00-00";
                digits(&mut date[0..4], year);
                digits(&mut date[5..7], month);
                digits(&mut date[8..10], day_of_month);
                self.day = Some((day, date));
                date
            }
        };
        let mut time = *b"T00:00:00Z";
        digits(&mut time[1..3], of_day / 60);
        digits(&mut time[4..6], of_day % 60);
        out.extend_from_slice(&date);
        out.extend_from_slice(&time);
    }
}

/// `n` in decimal, right-aligned and zero-padded to fill `out`.
fn digits(out: &mut [u8], n: i64) {
    let mut n = n;
    for slot in out.iter_mut().rev() {
        *slot = b'0' + (n % 10) as u8;
        n /= 10;
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

/// The query parameters of `GET /trend`.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct TrendParams {
    /// Start (included; truncated to the minute): RFC 3339, or `YYYY-MM-DD` (midnight UTC).
    #[param(example = "2019-09-22")]
    from_date: String,
    /// End (excluded; truncated to the minute): RFC 3339, or `YYYY-MM-DD` (midnight UTC).
    #[param(example = "2019-09-23")]
    to_date: String,
    /// Bucket length as a Go duration (`1m`, `5m`, `1h`, `24h`, `1h30m`): whole minutes,
    /// at least `1m`. Default `1h`.
    #[param(example = "1h", pattern = r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$")]
    aggregation: Option<String>,
    /// Count only messages with this hashtag (case-insensitive); absent: all messages.
    #[param(min_length = 1, max_length = 65)]
    hashtag: Option<String>,
    /// `true`: also return empty buckets (default `false`, as Dunder).
    fill: Option<bool>,
}

/// Message counts per time bucket, for one hashtag or all messages.
///
/// Buckets of `aggregation` start at `from_date` and follow each other up to `to_date`;
/// each includes its start and excludes its end, and the last one ends at `to_date`.
///
/// Limits (400): `to_date` at least a minute after `from_date` (both truncated to the
/// minute; `invalid_date_range`), at most 100,000 buckets (`too_many_buckets`), a span of
/// at most 10,000 years, and at most 366 days when the buckets do not start on whole hours
/// (a `from_date` or an `aggregation` off the hour: those are counted per minute;
/// `span_too_long`).
#[utoipa::path(
    get,
    path = "/trend",
    tag = "trends",
    params(TrendParams),
    responses(
        (status = 200, description = "Counts per bucket, oldest first", body = TrendBody),
        (status = 400, description = "Missing or bad dates, aggregation or hashtag; a range under a minute; too many buckets; a span too long; buckets off the hour where per-minute counts are no longer kept", body = super::ErrorBody),
        (status = 503, description = "Read store unavailable, or the read model being rebuilt (`read_model_rebuilding`)", body = super::ErrorBody),
    )
)]
pub async fn trend(
    State(state): State<QueryState>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Response, QueryError> {
    let Query(params) = query.map_err(|e| QueryError::bad("invalid_query", e.body_text()))?;
    let date = |name: &str| {
        params
            .get(name)
            .ok_or_else(|| QueryError::bad("missing_date", format!("{name} is required")))
            .and_then(|raw| parse_date(name, raw))
    };
    let (from, to) = (date("from_date")?, date("to_date")?);
    if minute_of(from) >= minute_of(to) {
        return Err(QueryError::bad(
            "invalid_date_range",
            "from_date must be before to_date, by at least a minute once both are truncated to the minute",
        ));
    }
    if minute_of(to) - minute_of(from) > MAX_SPAN_DAYS * MINUTES_PER_DAY {
        return Err(QueryError::bad(
            "span_too_long",
            "from_date and to_date may be at most 10,000 years apart",
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

    if buckets.off_hours() && buckets.to - buckets.from > MAX_MINUTE_SPAN_DAYS * MINUTES_PER_DAY {
        return Err(QueryError::bad(
            "span_too_long",
            format!(
                "buckets that do not start on whole hours are counted per minute, over at most {MAX_MINUTE_SPAN_DAYS} days; ask for a shorter range, or for buckets of whole hours from a whole hour"
            ),
        ));
    }
    let now = minute_of(state.clock.now());
    if let (Some(kept_from), Some(days)) = (
        state.rules.minutes_kept_from(now),
        state.rules.minute_retention_days,
    ) && buckets
        .first_edge_off_hours()
        .is_some_and(|edge| edge < kept_from)
    {
        return Err(QueryError::bad(
            "minutes_expired",
            format!(
                "per-minute counts are kept for {days} days (from {}); before that, buckets must start and end on whole hours",
                stamp(kept_from)
            ),
        ));
    }

    let trends = state.trends().await?;
    let counts = count_buckets(&*trends, &scope, &buckets).await?;
    Ok((
        [(header::CONTENT_TYPE, "application/json")],
        trend_json(&buckets, &counts, fill),
    )
        .into_response())
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
    #[param(minimum = 1, maximum = 100)]
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
        (status = 503, description = "Read store unavailable, or the read model being rebuilt (`read_model_rebuilding`)", body = super::ErrorBody),
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
    let now = minute_of(state.clock.now());
    let rules = state.rules;
    let trends = state.trends().await?;
    let ranked = trends.trending(rules.floor_at(now), limit).await?;
    let tags: Vec<String> = ranked.iter().map(|(tag, _)| tag.clone()).collect();
    let today = Level::Day.unit_of(now);
    let histories = trends
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

    fn written(minute: i64) -> String {
        let mut out = Vec::new();
        Stamps::default().write(&mut out, minute);
        String::from_utf8(out).unwrap_or_default()
    }

    #[test]
    fn stamps_match_chrono() {
        // Every minute across two leap days in one writer (the date is cached), then a
        // day every 37 over the years 0 to 9999 and beyond.
        let leap = 19_780 * MINUTES_PER_DAY; // 2024-02-27
        let mut stamps = Stamps::default();
        for minute in leap..leap + 5 * MINUTES_PER_DAY {
            let mut out = Vec::new();
            stamps.write(&mut out, minute);
            assert_eq!(String::from_utf8(out).unwrap_or_default(), stamp(minute));
        }
        for day in (-719_600..2_933_000).step_by(37) {
            let minute = day * MINUTES_PER_DAY + day.rem_euclid(MINUTES_PER_DAY);
            assert_eq!(written(minute), stamp(minute), "day {day}");
        }
    }

    #[test]
    fn trend_json_is_the_documented_shape() {
        let buckets = Buckets {
            from: 100,
            to: 160,
            step: 25,
        };
        let body = trend_json(&buckets, &[3, 0, 1], false);
        let value: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        assert_eq!(
            value,
            serde_json::json!({"data": {"trends": [
                {"from_date": "1970-01-01T01:40:00Z", "to_date": "1970-01-01T02:05:00Z", "count": 3},
                {"from_date": "1970-01-01T02:30:00Z", "to_date": "1970-01-01T02:40:00Z", "count": 1},
            ]}})
        );
        let empty = trend_json(&buckets, &[0, 0, 0], false);
        assert_eq!(empty, br#"{"data":{"trends":[]}}"#);
        let filled: serde_json::Value =
            serde_json::from_slice(&trend_json(&buckets, &[0, 0, 0], true)).unwrap_or_default();
        assert_eq!(filled["data"]["trends"].as_array().map(Vec::len), Some(3));
    }
}
