//! Hashtag trends: `GET /trend` (Dunder's shape) and `GET /trends/hashtags`.
//!
//! Messages are appended to the event store with the posting times a scenario needs (the
//! HTTP route stamps them with the present), then read back over HTTP.

use chrono::{DateTime, Duration, TimeZone, Utc};
use serde_json::Value;
use ulid::Ulid;
use uuid::Uuid;

use cairn_events::domain::message::{self, Hashtag, MessagePosted};
use cairn_events::{AppendRequest, ExpectedVersion, Metadata, NewEvent};

use crate::helpers::{Backend, TestApp, spawn_app, spawn_with, test_config};

crate::on_both_backends!(
    trends: dunder_trend_buckets,
    trend_input_errors,
    trend_matches_a_brute_force_count,
    huge_trend_questions_are_bounded,
    trending_now,
    minute_counters_expire
);

/// A user of the scenarios (the events name users; no token is needed to append).
fn user(n: usize) -> (Uuid, String) {
    (Uuid::from_u128(0x1000 + n as u128), format!("user{n}"))
}

/// Append a message posted by `user` at `at` with `tags`.
async fn posted_at(app: &TestApp, user: usize, at: DateTime<Utc>, tags: &[&str]) {
    let (user_id, user_name) = self::user(user);
    let ms = u64::try_from(at.timestamp_millis()).unwrap();
    let posted = MessagePosted {
        message_id: Ulid::from_parts(ms, rand_bits(user, ms)),
        user_id,
        user_name,
        text: format!("about {}", tags.join(" ")),
        hashtags: tags.iter().map(|t| Hashtag::parse(t).unwrap()).collect(),
    };
    let request = AppendRequest::new(
        message::stream_id(posted.message_id, user_id, None),
        ExpectedVersion::NoStream,
        vec![NewEvent::new(&posted, Metadata::default())],
    );
    app.events.append(request).await.unwrap();
}

/// Distinct low bits for ids made in the same millisecond.
fn rand_bits(user: usize, ms: u64) -> u128 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    (u128::from(n) << 32) | (user as u128) << 8 | u128::from(ms % 251)
}

fn at(day: u32, hour: u32, minute: u32, second: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2019, 9, day, hour, minute, second)
        .unwrap()
}

/// The buckets of a `/trend` answer as (from, to, count).
async fn trend(app: &TestApp, query: &str) -> Vec<(String, String, u64)> {
    let (status, body) = app.get(&format!("/trend?{query}")).await;
    assert_eq!(status, 200, "{query}: {body}");
    body["data"]["trends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["from_date"].as_str().unwrap().to_owned(),
                b["to_date"].as_str().unwrap().to_owned(),
                b["count"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn bucket(from: &str, to: &str, count: u64) -> (String, String, u64) {
    (from.to_owned(), to.to_owned(), count)
}

pub async fn dunder_trend_buckets(backend: Backend) {
    let app = spawn_app(backend).await;
    posted_at(&app, 1, at(22, 10, 0, 0), &["dummy3"]).await;
    posted_at(&app, 2, at(22, 10, 0, 59), &["Dummy3", "other"]).await;
    posted_at(&app, 1, at(22, 10, 1, 0), &["dummy3"]).await;
    posted_at(&app, 3, at(22, 11, 30, 0), &["other"]).await;
    posted_at(&app, 1, at(23, 0, 0, 0), &["dummy3"]).await; // on to_date: excluded
    app.wait_projected().await;

    // Dunder's README line: per minute, only the non-empty minutes.
    assert_eq!(
        trend(
            &app,
            "to_date=2019-09-23&aggregation=1m&from_date=2019-09-22&hashtag=dummy3"
        )
        .await,
        [
            bucket("2019-09-22T10:00:00Z", "2019-09-22T10:01:00Z", 2),
            bucket("2019-09-22T10:01:00Z", "2019-09-22T10:02:00Z", 1),
        ]
    );
    // All messages, per hour.
    assert_eq!(
        trend(
            &app,
            "from_date=2019-09-22&to_date=2019-09-24&aggregation=1h"
        )
        .await,
        [
            bucket("2019-09-22T10:00:00Z", "2019-09-22T11:00:00Z", 3),
            bucket("2019-09-22T11:00:00Z", "2019-09-22T12:00:00Z", 1),
            bucket("2019-09-23T00:00:00Z", "2019-09-23T01:00:00Z", 1),
        ]
    );
    // Buckets start at from_date (truncated to the minute), not on the hour; the last one
    // ends at to_date; a start is included and an end excluded.
    assert_eq!(
        trend(
            &app,
            "from_date=2019-09-22T09:00:45Z&to_date=2019-09-22T10:01:00Z&aggregation=1h&hashtag=DUMMY3"
        )
        .await,
        [bucket("2019-09-22T10:00:00Z", "2019-09-22T10:01:00Z", 2)]
    );
    assert_eq!(
        trend(
            &app,
            "from_date=2019-09-22T09:37:00Z&to_date=2019-09-22T12:00:00Z&aggregation=1h&fill=true"
        )
        .await,
        [
            bucket("2019-09-22T09:37:00Z", "2019-09-22T10:37:00Z", 3),
            bucket("2019-09-22T10:37:00Z", "2019-09-22T11:37:00Z", 1),
            bucket("2019-09-22T11:37:00Z", "2019-09-22T12:00:00Z", 0),
        ]
    );
    // Whole days, and a day range cut short mid-day.
    assert_eq!(
        trend(
            &app,
            "from_date=2019-09-21&to_date=2019-09-23T00:30:00Z&aggregation=24h&fill=1"
        )
        .await,
        [
            bucket("2019-09-21T00:00:00Z", "2019-09-22T00:00:00Z", 0),
            bucket("2019-09-22T00:00:00Z", "2019-09-23T00:00:00Z", 4),
            bucket("2019-09-23T00:00:00Z", "2019-09-23T00:30:00Z", 1),
        ]
    );
    assert!(
        trend(
            &app,
            "from_date=2019-09-22&to_date=2019-09-23&hashtag=nobody"
        )
        .await
        .is_empty()
    );
}

pub async fn trend_input_errors(backend: Backend) {
    let app = spawn_app(backend).await;
    for (query, code) in [
        ("to_date=2019-09-23", "missing_date"),
        ("from_date=2019-09-22", "missing_date"),
        ("from_date=yesterday&to_date=2019-09-23", "invalid_date"),
        (
            "from_date=2019-09-23&to_date=2019-09-22",
            "invalid_date_range",
        ),
        (
            "from_date=2019-09-22&to_date=2019-09-22",
            "invalid_date_range",
        ),
        (
            "from_date=2019-09-22T10:00:10Z&to_date=2019-09-22T10:00:50Z",
            "invalid_date_range",
        ),
        (
            "from_date=2019-09-22&to_date=2019-09-23&aggregation=30s",
            "invalid_aggregation",
        ),
        (
            "from_date=2019-09-22&to_date=2019-09-23&aggregation=90s",
            "invalid_aggregation",
        ),
        (
            "from_date=2019-09-22&to_date=2019-09-23&aggregation=1x",
            "invalid_aggregation",
        ),
        (
            "from_date=2019-09-22&to_date=2019-09-23&aggregation=",
            "invalid_aggregation",
        ),
        (
            "from_date=2019-09-22&to_date=2019-09-23&aggregation=-5m",
            "invalid_aggregation",
        ),
        (
            "from_date=2019-09-22&to_date=2019-09-23&aggregation=99999999999999999h",
            "invalid_aggregation",
        ),
        (
            "from_date=2019-01-01&to_date=2019-09-23&aggregation=1m",
            "too_many_buckets",
        ),
        (
            "from_date=2019-09-22&to_date=2019-09-23&hashtag=no-dash",
            "invalid_hashtag",
        ),
        (
            "from_date=2019-09-22&to_date=2019-09-23&fill=maybe",
            "invalid_fill",
        ),
    ] {
        let (status, body) = app.get(&format!("/trend?{query}")).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(body["code"], code, "{query}: {body}");
        assert!(body["error"].as_str().is_some_and(|e| !e.is_empty()));
    }
    // 100,000 one-minute buckets fit; the edge is allowed.
    let (status, _) = app
        .get("/trend?from_date=2019-01-01T00:00:00Z&to_date=2019-03-11T10:40:00Z&aggregation=1m")
        .await;
    assert_eq!(status, 200);
    for query in ["limit=0", "limit=101", "limit=ten"] {
        let (status, body) = app.get(&format!("/trends/hashtags?{query}")).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(body["code"], "invalid_limit");
    }
}

/// A small deterministic generator, so a failure can be replayed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Random messages and random questions: every answer equals a count over the messages,
/// on the live read model and after a rebuild.
pub async fn trend_matches_a_brute_force_count(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let tags = ["cats", "dogs", "ocs", "rust"];
    let start = at(20, 0, 0, 0);
    let span = 3 * 24 * 60; // minutes
    let mut posted: Vec<(DateTime<Utc>, Vec<&str>)> = Vec::new();
    for _ in 0..300 {
        let when = start
            + Duration::minutes(rng.below(span) as i64)
            + Duration::seconds(rng.below(60) as i64);
        let mine: Vec<&str> = tags.iter().copied().filter(|_| rng.below(3) == 0).collect();
        posted_at(&app, rng.below(20) as usize, when, &mine).await;
        posted.push((when, mine));
    }
    app.wait_projected().await;

    let mut questions = Vec::new();
    for _ in 0..40 {
        // Half of the questions start on the hour, so hour and day counters answer them.
        let offset = rng.below(span) as i64 - 60;
        let offset = if rng.below(2) == 0 {
            offset - offset.rem_euclid(60)
        } else {
            offset
        };
        let from = start + Duration::minutes(offset);
        let to = from + Duration::minutes(1 + rng.below(span) as i64);
        let step = [1, 7, 60, 90, 180, 1440, 2880][rng.below(7) as usize];
        let tag = [None, Some("cats"), Some("RUST"), Some("ocs")][rng.below(4) as usize];
        questions.push((from, to, step, tag));
    }
    let ask = |from: DateTime<Utc>, to: DateTime<Utc>, step: i64, tag: Option<&str>| {
        let mut q = format!(
            "from_date={}&to_date={}&aggregation={step}m&fill=true",
            from.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            to.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        );
        if let Some(tag) = tag {
            q.push_str(&format!("&hashtag={tag}"));
        }
        q
    };
    let expected = |from: DateTime<Utc>, to: DateTime<Utc>, step: i64, tag: Option<&str>| {
        let mut out = Vec::new();
        let mut lower = from;
        while lower < to {
            let upper = (lower + Duration::minutes(step)).min(to);
            let count = posted
                .iter()
                .filter(|(when, mine)| {
                    *when >= lower
                        && *when < upper
                        && tag.is_none_or(|t| mine.iter().any(|m| m.eq_ignore_ascii_case(t)))
                })
                .count() as u64;
            let stamp = |t: DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
            out.push((stamp(lower), stamp(upper), count));
            lower = upper;
        }
        out
    };
    for round in ["live", "rebuilt"] {
        for (from, to, step, tag) in &questions {
            assert_eq!(
                trend(&app, &ask(*from, *to, *step, *tag)).await,
                expected(*from, *to, *step, *tag),
                "{round}: {}",
                ask(*from, *to, *step, *tag)
            );
        }
        let before: Value = app.get("/trends/hashtags").await.1;
        app.read.reset("trends").await.unwrap();
        app.wait_projected().await;
        if round == "live" {
            assert_eq!(app.get("/trends/hashtags").await.1, before);
        }
    }
}

/// Questions over thousands of years answer from what they read, not from their span:
/// per-minute spans past 366 days and spans past 10,000 years are refused, and buckets of
/// whole hours over 10,000 years are counted exactly.
pub async fn huge_trend_questions_are_bounded(backend: Backend) {
    let app = spawn_app(backend).await;
    let posted = [
        (at(22, 10, 0, 0), "cats"),
        (at(22, 10, 59, 0), "cats"),
        (at(23, 23, 59, 0), "dogs"),
        (
            Utc.with_ymd_and_hms(2026, 11, 25, 11, 7, 0).unwrap(),
            "cats",
        ),
    ];
    for (user, (when, tag)) in posted.iter().enumerate() {
        posted_at(&app, user, *when, &[tag]).await;
    }
    app.wait_projected().await;

    // The question of the issue, and spans off the hour just past 366 days.
    for query in [
        "from_date=0000-01-01&to_date=9999-12-31&aggregation=60001m",
        "from_date=0000-01-01&to_date=9999-12-31&aggregation=60001m&hashtag=cats",
        "from_date=2019-01-01T00:07:00Z&to_date=2020-01-02T00:08:00Z&aggregation=7m",
        "from_date=2019-01-01T00:00:00Z&to_date=2020-01-02T00:01:00Z&aggregation=7m",
        "from_date=-0001-01-01&to_date=9999-12-31&aggregation=8760h",
        "from_date=2019-01-01&to_date=%2B12020-01-01&aggregation=87600h",
    ] {
        let (status, body) = app.get(&format!("/trend?{query}")).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(body["code"], "span_too_long", "{query}: {body}");
    }
    // Just inside the limits.
    let (status, body) = app
        .get("/trend?from_date=2019-01-01T00:07:00Z&to_date=2020-01-02T00:07:00Z&aggregation=7m&hashtag=cats")
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["data"]["trends"].as_array().map(Vec::len),
        Some(2),
        "{body}"
    );

    let stamp = |t: DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let expected = |from: DateTime<Utc>, to: DateTime<Utc>, step: Duration, tag: &str| {
        let mut out = Vec::new();
        for (when, t) in &posted {
            if *t != tag || *when < from || *when >= to {
                continue;
            }
            let i = (*when - from).num_minutes() / step.num_minutes();
            let lower = from + step * i as i32;
            let upper = (lower + step).min(to);
            match out.last_mut() {
                Some((l, _, n)) if *l == stamp(lower) => *n += 1,
                _ => out.push((stamp(lower), stamp(upper), 1)),
            }
        }
        out
    };
    let (from, to) = (
        Utc.with_ymd_and_hms(0, 1, 1, 0, 0, 0).unwrap(),
        Utc.with_ymd_and_hms(9999, 12, 31, 0, 0, 0).unwrap(),
    );
    for (aggregation, step) in [
        ("1000h", Duration::hours(1000)),
        ("876600h", Duration::days(36_525)),
        ("8761h", Duration::hours(8761)),
    ] {
        for tag in ["cats", "dogs"] {
            let query = format!(
                "from_date=0000-01-01&to_date=9999-12-31&aggregation={aggregation}&hashtag={tag}"
            );
            let answer = trend(&app, &query).await;
            assert_eq!(answer, expected(from, to, step, tag), "{query}");
            assert!(!answer.is_empty(), "{query}");
        }
    }
}

/// The scenario of the issue: yesterday "cats" was used by 2 users and "ocs" by 13; today
/// "cats" by 16 and "dogs" by 4. Trending: cats, then ocs; dogs is under the threshold.
pub async fn trending_now(backend: Backend) {
    let app = spawn_app(backend).await;
    let yesterday = Utc.with_ymd_and_hms(2026, 11, 24, 10, 0, 0).unwrap();
    let today = Utc.with_ymd_and_hms(2026, 11, 25, 11, 0, 0).unwrap();
    for u in 0..2 {
        posted_at(&app, u, yesterday + Duration::minutes(u as i64), &["cats"]).await;
    }
    for u in 0..13 {
        posted_at(
            &app,
            100 + u,
            yesterday + Duration::minutes(u as i64),
            &["ocs"],
        )
        .await;
    }
    for u in 0..16 {
        posted_at(&app, u, today + Duration::minutes(u as i64), &["Cats"]).await;
    }
    posted_at(&app, 0, today, &["cats"]).await; // a second use by one user
    for u in 0..4 {
        posted_at(
            &app,
            200 + u,
            today + Duration::minutes(u as i64),
            &["dogs"],
        )
        .await;
    }
    app.wait_projected().await;

    let now = today + Duration::minutes(15); // the last use of cats
    *app.now.lock().unwrap() = Some(now);
    let (status, body) = app.get("/trends/hashtags").await;
    assert_eq!(status, 200, "{body}");
    let names: Vec<&str> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["cats", "ocs"], "{body}");
    let cats = &body["data"][0];
    assert_eq!(cats["score"], 98.0, "(16 - 2)² / 2");
    let history = cats["history"].as_array().unwrap();
    assert_eq!(history.len(), 7);
    assert_eq!(history[0]["day"], "2026-11-25");
    assert_eq!(
        (history[0]["uses"].as_u64(), history[0]["accounts"].as_u64()),
        (Some(17), Some(16))
    );
    assert_eq!(
        (history[1]["uses"].as_u64(), history[1]["accounts"].as_u64()),
        (Some(2), Some(2))
    );
    assert_eq!(history[6]["day"], "2026-11-19");

    // A rebuild gives the same answer: scores come from event time.
    app.read.reset("trends").await.unwrap();
    app.wait_projected().await;
    assert_eq!(app.get("/trends/hashtags").await.1, body);

    // One half-life later every score has halved; ocs (144 at 10:12 yesterday, about 1.9
    // now) falls below 1 and leaves the list.
    let ocs = body["data"][1]["score"].as_f64().unwrap();
    assert!((1.8..2.0).contains(&ocs), "ocs scores {ocs}");
    *app.now.lock().unwrap() = Some(now + Duration::hours(4));
    let (_, later) = app.get("/trends/hashtags").await;
    assert_eq!(later["data"][0]["score"], 49.0, "{later}");
    assert_eq!(later["data"].as_array().unwrap().len(), 1, "{later}");
    // Far later, everything has decayed below 1.
    *app.now.lock().unwrap() = Some(now + Duration::days(3));
    assert_eq!(
        app.get("/trends/hashtags").await.1["data"],
        serde_json::json!([])
    );
}

/// With a minute retention, days past it keep their hour and day counters: buckets on
/// whole hours still count them, per-minute questions there are refused, and recent days
/// answer per minute. A rebuild (which meets the old minutes again) gives the same.
pub async fn minute_counters_expire(backend: Backend) {
    let mut config = test_config(backend).await;
    config.trend_minute_retention_days = Some(3);
    let app = spawn_with(config).await;
    // Days far enough from the edges that a run across midnight changes nothing.
    let today = Utc::now()
        .date_naive()
        .and_hms_opt(0, 0, 0)
        .unwrap()
        .and_utc();
    let old = today - Duration::days(10);
    let recent = today - Duration::days(1);
    for day in [old, recent] {
        posted_at(&app, 1, day + Duration::minutes(605), &["kept"]).await;
        posted_at(&app, 2, day + Duration::minutes(606), &["kept"]).await;
    }
    app.wait_projected().await;

    let stamp = |t: DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let ask = |from: DateTime<Utc>, step: &str| {
        format!(
            "from_date={}&to_date={}&aggregation={step}&hashtag=kept",
            stamp(from),
            stamp(from + Duration::days(1))
        )
    };
    for round in ["live", "rebuilt"] {
        assert_eq!(
            trend(&app, &ask(old, "1h")).await,
            [bucket(
                &stamp(old + Duration::hours(10)),
                &stamp(old + Duration::hours(11)),
                2
            )],
            "{round}"
        );
        assert_eq!(
            trend(&app, &ask(recent, "1m")).await,
            [
                bucket(
                    &stamp(recent + Duration::minutes(605)),
                    &stamp(recent + Duration::minutes(606)),
                    1
                ),
                bucket(
                    &stamp(recent + Duration::minutes(606)),
                    &stamp(recent + Duration::minutes(607)),
                    1
                ),
            ],
            "{round}"
        );
        for query in [ask(old, "1m"), ask(old + Duration::minutes(30), "1h")] {
            let (status, body) = app.get(&format!("/trend?{query}")).await;
            assert_eq!(status, 400, "{round}: {query}: {body}");
            assert_eq!(body["code"], "minutes_expired", "{body}");
        }
        app.read.reset("trends").await.unwrap();
        app.wait_projected().await;
    }
}
