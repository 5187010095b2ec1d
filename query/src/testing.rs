//! The behaviour suite every read-store backend must pass, per read model. Each function
//! takes a fresh, empty store and panics on the first broken promise;
//! `tests/read_store.rs` runs them on SQLite, Redis and a Redis Cluster through
//! [`read_store_suite!`](crate::read_store_suite).
//!
//! The promises: a model's checkpoint moves only by compare-and-set; a batch written
//! whose checkpoint did not move (a crash, a stale runner) can be applied again and leaves
//! the state one application leaves; lists, counts, ranks and histories read back what was
//! written; a reset forgets one model and nothing else.
#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use cairn_events::Position;
use chrono::{DateTime, Utc};
use ulid::Ulid;

use crate::read_store::{
    Applied, GenerationStore, Generations, LogIdentity, MessageFilter, MessageStore, ReadBackend,
    ReadError, ReadModels, RedisStore, SqliteStore, StoredMessage, TrendStore,
};
use crate::trends::{
    ALL, Buckets, DayUsage, Level, MINUTES_PER_DAY, Minute, READ_CHUNK, TrendBatch, TrendHit,
    TrendRules, count_buckets, minute_of,
};

/// A message by `user` with `tags`; messages made later get larger ids (1 ms apart).
pub fn message(text: &str, user: &str, tags: &[&str]) -> StoredMessage {
    static CLOCK: AtomicU64 = AtomicU64::new(1_700_000_000_000);
    let ms = CLOCK.fetch_add(1, Ordering::Relaxed);
    StoredMessage {
        id: Ulid::from_parts(ms, 0),
        user_id: format!("id-{}", user.to_ascii_lowercase()),
        user_name: user.into(),
        text: text.into(),
        hashtags: tags.iter().map(|t| (*t).to_owned()).collect(),
        created_at: DateTime::<Utc>::from_timestamp_millis(ms as i64).unwrap(),
    }
}

fn all(limit: usize) -> MessageFilter {
    MessageFilter {
        limit,
        ..MessageFilter::default()
    }
}

async fn texts(store: &dyn MessageStore, filter: &MessageFilter) -> Vec<String> {
    let page = store.list_messages(filter).await.unwrap();
    page.into_iter().map(|m| m.text).collect()
}

/// A runner that lost its lease still believes the checkpoint is where it left it: its
/// batch must not move the checkpoint.
pub async fn messages_checkpoint_fences_stale_runners(store: Arc<dyn MessageStore>) {
    assert_eq!(store.checkpoint("messages").await.unwrap(), 0);
    let first = message("first", "kim", &["Fence"]);
    let applied = store
        .apply_messages(std::slice::from_ref(&first), 0, 5)
        .await
        .unwrap();
    assert_eq!(applied, Applied::Done);
    assert_eq!(store.checkpoint("messages").await.unwrap(), 5);

    let stale = store
        .apply_messages(&[message("late", "kim", &["Fence"])], 0, 3)
        .await
        .unwrap();
    assert_eq!(stale, Applied::Moved);
    assert_eq!(store.checkpoint("messages").await.unwrap(), 5);

    let second = message("second", "kim", &["Fence"]);
    let applied = store.apply_messages(&[second], 5, 9).await.unwrap();
    assert_eq!(applied, Applied::Done);
    assert_eq!(store.checkpoint("messages").await.unwrap(), 9);
    let tagged = MessageFilter {
        hashtag: Some("fence".into()),
        ..all(10)
    };
    let texts = texts(&*store, &tagged).await;
    assert_eq!(texts.first().map(String::as_str), Some("second"));
    assert_eq!(texts.iter().filter(|t| *t == "first").count(), 1);
}

/// A crash after a batch's messages were written but before the checkpoint moved: the
/// runner applies the batch again from the old checkpoint, and every message is there
/// once, in every index.
pub async fn messages_survive_a_crash_before_the_checkpoint(store: Arc<dyn MessageStore>) {
    let first = message("first", "kim", &["Crash"]);
    store.apply_messages(&[first], 0, 5).await.unwrap();
    let batch = [
        message("second", "kim", &["Crash", "other"]),
        message("third", "lee", &["crash"]),
    ];
    // The data goes in, the compare-and-set fails: as if the process died in between.
    let crashed = store.apply_messages(&batch, 4, 9).await.unwrap();
    assert_eq!(crashed, Applied::Moved);
    assert_eq!(store.checkpoint("messages").await.unwrap(), 5);

    let again = store.apply_messages(&batch, 5, 9).await.unwrap();
    assert_eq!(again, Applied::Done);
    assert_eq!(store.checkpoint("messages").await.unwrap(), 9);
    let newest_first = ["third", "second", "first"];
    assert_eq!(texts(&*store, &all(10)).await, newest_first);
    let tagged = MessageFilter {
        hashtag: Some("crash".into()),
        ..all(10)
    };
    assert_eq!(texts(&*store, &tagged).await, newest_first);
    let by_kim = MessageFilter {
        user_name: Some("kim".into()),
        ..all(10)
    };
    assert_eq!(texts(&*store, &by_kim).await, ["second", "first"]);
    for m in &batch {
        assert_eq!(store.get_message(m.id).await.unwrap().as_ref(), Some(m));
    }
}

/// Filters by hashtag (case-folded), by user, by both, by id range; newest first; pages by
/// cursor (the last id of a page as the next upper bound).
pub async fn list_messages_filters_and_pages(store: Arc<dyn MessageStore>) {
    let ms = [
        message("m0", "Kim", &["Rust"]),
        message("m1", "Lee", &["rust", "Go"]),
        message("m2", "kim", &["Go"]),
        message("m3", "Kim", &[]),
        message("m4", "lee", &["RUST"]),
        message("m5", "kim", &["rust"]),
    ];
    store.apply_messages(&ms, 0, 6).await.unwrap();

    assert_eq!(
        texts(&*store, &all(100)).await,
        ["m5", "m4", "m3", "m2", "m1", "m0"]
    );
    assert_eq!(texts(&*store, &all(2)).await, ["m5", "m4"]);
    let rust = MessageFilter {
        hashtag: Some("rust".into()),
        ..all(100)
    };
    assert_eq!(texts(&*store, &rust).await, ["m5", "m4", "m1", "m0"]);
    let kim = MessageFilter {
        user_name: Some("kim".into()),
        ..all(100)
    };
    assert_eq!(texts(&*store, &kim).await, ["m5", "m3", "m2", "m0"]);
    let kim_rust = MessageFilter {
        hashtag: Some("rust".into()),
        user_name: Some("kim".into()),
        ..all(100)
    };
    assert_eq!(texts(&*store, &kim_rust).await, ["m5", "m0"]);
    let lee_go = MessageFilter {
        hashtag: Some("go".into()),
        user_name: Some("lee".into()),
        ..all(100)
    };
    assert_eq!(texts(&*store, &lee_go).await, ["m1"]);
    let nobody = MessageFilter {
        hashtag: Some("nothing".into()),
        ..all(100)
    };
    assert!(texts(&*store, &nobody).await.is_empty());

    // `lower` is inclusive, `upper` exclusive.
    let range = MessageFilter {
        lower: Some(ms[1].id),
        upper: Some(ms[4].id),
        ..all(100)
    };
    assert_eq!(texts(&*store, &range).await, ["m3", "m2", "m1"]);
    let empty = MessageFilter {
        lower: Some(ms[4].id),
        upper: Some(ms[4].id),
        ..all(100)
    };
    assert!(texts(&*store, &empty).await.is_empty());

    // Paging with a cursor, on every index.
    for filter in [all(100), rust, kim, kim_rust] {
        let expected = texts(&*store, &filter).await;
        let mut seen = Vec::new();
        let mut page_filter = MessageFilter {
            limit: 2,
            ..filter.clone()
        };
        loop {
            let page = store.list_messages(&page_filter).await.unwrap();
            let Some(last) = page.last() else { break };
            page_filter.upper = Some(last.id);
            seen.extend(page.into_iter().map(|m| m.text));
        }
        assert_eq!(seen, expected, "{filter:?}");
    }

    assert_eq!(
        store.get_message(ms[2].id).await.unwrap().as_ref(),
        Some(&ms[2])
    );
    assert_eq!(store.get_message(Ulid::generate()).await.unwrap(), None);
}

/// Trends in the suite: the threshold is 2 distinct users, minutes are all kept.
fn rules() -> TrendRules {
    TrendRules {
        threshold: 2,
        half_life_minutes: 240,
        minute_retention_days: None,
    }
}

/// Today (UTC), in days since the epoch: Redis expires minute counters by the wall clock.
fn today() -> i64 {
    Level::Day.unit_of(minute_of(Utc::now()))
}

/// A hit on `day` at `minute` past its midnight.
fn hit(position: Position, day: i64, minute: Minute, user: &str, tags: &[&str]) -> TrendHit {
    TrendHit {
        position,
        minute: day * MINUTES_PER_DAY + minute,
        user_id: user.into(),
        tags: tags.iter().map(|t| (*t).to_owned()).collect(),
    }
}

fn batch(hits: &[TrendHit], rules: &TrendRules) -> TrendBatch {
    TrendBatch::new(hits.to_vec(), rules, minute_of(Utc::now()))
}

/// What counting `hits` once gives for `scope` at `level`, worked out here independently
/// of [`TrendBatch`]: (unit, count) in unit order.
fn counted_once(hits: &[TrendHit], scope: &str, level: Level) -> Vec<(i64, u64)> {
    let mut counts: BTreeMap<i64, u64> = BTreeMap::new();
    for h in hits {
        if scope == ALL || h.tags.iter().any(|t| t == scope) {
            *counts.entry(level.unit_of(h.minute)).or_default() += 1;
        }
    }
    counts.into_iter().collect()
}

async fn counts(
    store: &dyn TrendStore,
    scope: &str,
    level: Level,
    first: i64,
    end: i64,
) -> Vec<(i64, u64)> {
    let mut counts = store
        .trend_counts(scope, level, &[(first, end)])
        .await
        .unwrap();
    counts.sort_unstable();
    counts
}

/// Every counter of `scope` on days `first_day..end_day`, at each level.
async fn every_count(
    store: &dyn TrendStore,
    scope: &str,
    first_day: i64,
    end_day: i64,
) -> Vec<Vec<(i64, u64)>> {
    let mut out = Vec::new();
    for level in Level::ALL {
        let per_day = MINUTES_PER_DAY / level.minutes();
        out.push(counts(store, scope, level, first_day * per_day, end_day * per_day).await);
    }
    out
}

fn every_count_once(hits: &[TrendHit], scope: &str) -> Vec<Vec<(i64, u64)>> {
    Level::ALL
        .iter()
        .map(|level| counted_once(hits, scope, *level))
        .collect()
}

/// A stale runner's trends batch (counted before) moves nothing and counts nothing again.
pub async fn trends_checkpoint_fences_stale_runners(store: Arc<dyn TrendStore>) {
    let rules = rules();
    let day = today();
    let first = [
        hit(1, day, 10, "a", &["fence"]),
        hit(2, day, 11, "b", &["fence"]),
    ];
    assert_eq!(store.checkpoint("trends").await.unwrap(), 0);
    let applied = store
        .apply_trends(&batch(&first, &rules), 0, 2)
        .await
        .unwrap();
    assert_eq!(applied, Applied::Done);
    let stale = store
        .apply_trends(&batch(&first, &rules), 0, 2)
        .await
        .unwrap();
    assert_eq!(stale, Applied::Moved);
    assert_eq!(store.checkpoint("trends").await.unwrap(), 2);
    for scope in ["fence", ALL] {
        assert_eq!(
            every_count(&*store, scope, day, day + 1).await,
            every_count_once(&first, scope),
            "{scope}"
        );
    }
    let applied = store
        .apply_trends(&batch(&[hit(3, day, 12, "c", &["fence"])], &rules), 2, 3)
        .await
        .unwrap();
    assert_eq!(applied, Applied::Done);
    assert_eq!(store.checkpoint("trends").await.unwrap(), 3);
    assert_eq!(
        counts(&*store, "fence", Level::Day, day, day + 1).await,
        [(day, 3)]
    );
}

/// A crash after a batch's counts were written but before the checkpoint moved (once part
/// way through the batch, once after all of it): the runner applies the batch again from
/// the old checkpoint, and every hit is counted once.
pub async fn trends_survive_a_crash_before_the_checkpoint(store: Arc<dyn TrendStore>) {
    let rules = rules();
    let day = today();
    let before = [
        hit(1, day - 1, 30, "a", &["rust"]),
        hit(2, day, 5, "a", &["rust", "go"]),
    ];
    store
        .apply_trends(&batch(&before, &rules), 0, 2)
        .await
        .unwrap();
    let crashed = [
        hit(4, day, 10, "b", &["rust"]),
        hit(5, day, 10, "c", &["rust", "go"]),
        hit(6, day, 70, "d", &["go"]),
        hit(8, day, 71, "b", &["rust", "zig"]),
        hit(9, day, 72, "e", &[]),
    ];
    // Part of the batch was written when the process died...
    let partly = store
        .apply_trends(&batch(&crashed[..2], &rules), 1, 9)
        .await
        .unwrap();
    assert_eq!(partly, Applied::Moved);
    // ...and the next runner wrote all of it, then died before its compare-and-set.
    let all_but_checkpoint = store
        .apply_trends(&batch(&crashed, &rules), 0, 9)
        .await
        .unwrap();
    assert_eq!(all_but_checkpoint, Applied::Moved);
    assert_eq!(store.checkpoint("trends").await.unwrap(), 2);

    let recovered = store
        .apply_trends(&batch(&crashed, &rules), 2, 9)
        .await
        .unwrap();
    assert_eq!(recovered, Applied::Done);
    assert_eq!(store.checkpoint("trends").await.unwrap(), 9);

    let once: Vec<TrendHit> = before.iter().chain(&crashed).cloned().collect();
    for scope in ["rust", "go", "zig", ALL] {
        assert_eq!(
            every_count(&*store, scope, day - 1, day + 1).await,
            every_count_once(&once, scope),
            "{scope} counted more than once"
        );
    }
    let histories = store
        .histories(&["rust".into(), "go".into()], day - 1, day + 1)
        .await
        .unwrap();
    let usage = |day, uses, accounts| DayUsage {
        day,
        uses,
        accounts,
    };
    assert_eq!(
        histories,
        [
            vec![usage(day - 1, 1, 1), usage(day, 4, 3)],
            vec![usage(day - 1, 0, 0), usage(day, 3, 3)],
        ]
    );
    // Ranks are maxima, so they are the same as after one application.
    let ranked = store.trending(f64::MIN, 10).await.unwrap();
    let rust_today = rules.rank(3, 1, day * MINUTES_PER_DAY + 71).unwrap();
    let go_today = rules.rank(3, 0, day * MINUTES_PER_DAY + 70).unwrap();
    let names: Vec<&str> = ranked.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(names, ["rust", "go"]);
    assert!((ranked[0].1 - rust_today).abs() < 1e-9);
    assert!((ranked[1].1 - go_today).abs() < 1e-9);
}

/// Counters at minute, hour and day resolution, per hashtag and for all messages, for
/// exactly the units asked for, without zeros.
pub async fn trend_counts_at_each_level(store: Arc<dyn TrendStore>) {
    let day = today();
    let hits = [
        hit(1, day - 2, 0, "a", &["rust"]),
        hit(2, day - 2, 59, "a", &["rust"]),
        hit(3, day - 2, 60, "b", &["rust", "go"]),
        hit(4, day - 1, 61, "b", &["go"]),
        hit(5, day, 1439, "c", &[]),
        hit(6, day, 1439, "c", &["rust"]),
    ];
    store
        .apply_trends(&batch(&hits, &rules()), 0, 6)
        .await
        .unwrap();
    for scope in ["rust", "go", ALL] {
        assert_eq!(
            every_count(&*store, scope, day - 2, day + 1).await,
            every_count_once(&hits, scope),
            "{scope}"
        );
    }
    let start = (day - 2) * MINUTES_PER_DAY;
    assert_eq!(
        counts(&*store, "rust", Level::Minute, start, start + 60).await,
        [(start, 1), (start + 59, 1)],
        "the end is exclusive"
    );
    assert_eq!(
        counts(
            &*store,
            "rust",
            Level::Hour,
            (day - 2) * 24,
            (day - 2) * 24 + 2
        )
        .await,
        [((day - 2) * 24, 2), ((day - 2) * 24 + 1, 1)]
    );
    assert_eq!(
        counts(&*store, ALL, Level::Day, day - 2, day + 1).await,
        [(day - 2, 3), (day - 1, 1), (day, 2)]
    );
    assert!(
        counts(&*store, "zig", Level::Day, day - 2, day + 1)
            .await
            .is_empty()
    );
    assert!(
        counts(&*store, "rust", Level::Day, day, day)
            .await
            .is_empty()
    );
    // Several ranges, out of order and overlapping: each unit once.
    let start = (day - 2) * MINUTES_PER_DAY;
    let ranges = [
        (day * MINUTES_PER_DAY, (day + 1) * MINUTES_PER_DAY),
        (start + 30, start + 61),
        (start, start + 1),
        (start + 59, start + 60),
        (start - 10 * MINUTES_PER_DAY, start + 1),
    ];
    let mut read = store
        .trend_counts(ALL, Level::Minute, &ranges)
        .await
        .unwrap();
    read.sort_unstable();
    assert_eq!(
        read,
        [
            (start, 1),
            (start + 59, 1),
            (start + 60, 1),
            (day * MINUTES_PER_DAY + 1439, 2)
        ]
    );
    let mut read = store
        .trend_counts(
            "go",
            Level::Hour,
            &[
                ((day - 1) * 24 + 1, day * 24),
                ((day - 2) * 24 + 1, (day - 2) * 24 + 2),
                (0, 0),
            ],
        )
        .await
        .unwrap();
    read.sort_unstable();
    assert_eq!(read, [((day - 2) * 24 + 1, 1), ((day - 1) * 24 + 1, 1)]);
    // A range of 10,000 years of days reads the few that exist.
    assert_eq!(
        counts(&*store, "rust", Level::Day, day - 3_652_425, day + 1).await,
        [(day - 2, 3), (day, 1)]
    );
    assert!(
        store
            .trend_counts("rust", Level::Day, &[])
            .await
            .unwrap()
            .is_empty()
    );
}

/// A trend store that notes the units of every counter read it passes on.
struct Metered {
    store: Arc<dyn TrendStore>,
    reads: std::sync::Mutex<Vec<(Level, i64)>>,
}

impl Metered {
    /// The hours and minutes asked for over every read since the last call, and the most
    /// units one read asked for.
    fn take(&self) -> (i64, i64, i64) {
        let reads = std::mem::take(&mut *self.reads.lock().unwrap());
        let at = |level| -> i64 {
            reads
                .iter()
                .filter(|(l, _)| *l == level)
                .map(|(_, n)| n)
                .sum()
        };
        let most = reads.iter().map(|(_, n)| *n).max().unwrap_or(0);
        (at(Level::Hour), at(Level::Minute), most)
    }
}

#[async_trait::async_trait]
impl ReadBackend for Metered {
    async fn checkpoint(&self, projection: &str) -> Result<Position, ReadError> {
        self.store.checkpoint(projection).await
    }
    async fn reset(&self, projection: &str) -> Result<(), ReadError> {
        self.store.reset(projection).await
    }
    async fn ping(&self) -> Result<(), ReadError> {
        self.store.ping().await
    }
    fn backend(&self) -> &'static str {
        self.store.backend()
    }
}

#[async_trait::async_trait]
impl TrendStore for Metered {
    async fn apply_trends(
        &self,
        batch: &TrendBatch,
        from: Position,
        to: Position,
    ) -> Result<Applied, ReadError> {
        self.store.apply_trends(batch, from, to).await
    }
    async fn trend_counts(
        &self,
        scope: &str,
        level: Level,
        ranges: &[(i64, i64)],
    ) -> Result<Vec<(i64, u64)>, ReadError> {
        let units = ranges.iter().map(|(first, end)| (end - first).max(0)).sum();
        self.reads.lock().unwrap().push((level, units));
        self.store.trend_counts(scope, level, ranges).await
    }
    async fn trending(&self, floor: f64, limit: usize) -> Result<Vec<(String, f64)>, ReadError> {
        self.store.trending(floor, limit).await
    }
    async fn histories(
        &self,
        tags: &[String],
        first: i64,
        end: i64,
    ) -> Result<Vec<Vec<DayUsage>>, ReadError> {
        self.store.histories(tags, first, end).await
    }
}

/// Bucket counts equal a count over the hits, for buckets of any length starting
/// anywhere; hour and minute counters are read only for days and hours with hits that a
/// bucket edge cuts, so a span of 10,000 years costs what its few hits cost, and every read
/// covers at most [`READ_CHUNK`] units.
pub async fn trend_buckets_match_the_hits(store: Arc<dyn TrendStore>) {
    let day = today();
    let hits = [
        hit(1, day - 3, 0, "a", &["rust"]),
        hit(2, day - 3, 637, "b", &["rust", "go"]),
        hit(3, day - 3, 1439, "a", &[]),
        hit(4, day - 2, 720, "c", &["rust"]),
        hit(5, day - 2, 721, "c", &["rust"]),
        hit(6, day - 1, 59, "a", &["go"]),
        hit(7, day - 1, 60, "b", &["rust"]),
        hit(8, day, 1, "d", &["rust"]),
        hit(9, day, 1438, "a", &["rust", "go"]),
    ];
    store
        .apply_trends(&batch(&hits, &rules()), 0, 9)
        .await
        .unwrap();
    let metered = Metered {
        store,
        reads: std::sync::Mutex::new(Vec::new()),
    };
    let expected = |scope: &str, b: &Buckets| -> Vec<u64> {
        let mut out = vec![0; b.len() as usize];
        for h in &hits {
            if (scope == ALL || h.tags.iter().any(|t| t == scope))
                && let Some(i) = b.index_of(h.minute)
            {
                out[i] += 1;
            }
        }
        out
    };
    let with_hits = |scope: &str, level: Level| -> i64 {
        let units: std::collections::BTreeSet<i64> = hits
            .iter()
            .filter(|h| scope == ALL || h.tags.iter().any(|t| t == scope))
            .map(|h| level.unit_of(h.minute))
            .collect();
        units.len() as i64
    };
    let d = MINUTES_PER_DAY;
    let start = (day - 4) * d;
    let mut questions = Vec::new();
    for offset in [0, 17, 637, d + 720] {
        for step in [1, 7, 60, 90, d, d + 1, 2 * d, 60_001] {
            for to in [(day + 1) * d, day * d + 1438, (day - 2) * d + 721] {
                questions.push(Buckets {
                    from: start + offset,
                    to,
                    step,
                });
            }
        }
    }
    for b in questions {
        for scope in ["rust", "go", ALL] {
            let counted = count_buckets(&metered, scope, &b).await.unwrap();
            assert_eq!(counted, expected(scope, &b), "{scope} {b:?}");
            let (_, _, most) = metered.take();
            assert!(most <= READ_CHUNK, "{most} units in one read");
        }
    }

    // 10,000 years (0000-01-01 to 9999-12-31) in buckets of 1,000 hours and of 100 years.
    let years = Buckets {
        from: -1_036_120_320,
        to: 4_223_370_240,
        step: 60_000,
    };
    for (b, scope) in [
        (years, "rust"),
        (years, ALL),
        (
            Buckets {
                step: 52_596_000,
                ..years
            },
            "go",
        ),
    ] {
        let counted = count_buckets(&metered, scope, &b).await.unwrap();
        assert_eq!(counted, expected(scope, &b), "{scope} {b:?}");
        let (hours, minutes, most) = metered.take();
        assert_eq!(minutes, 0, "no minutes when every edge is on the hour");
        assert!(most <= READ_CHUNK, "{most} units in one read");
        assert!(
            hours <= 24 * with_hits(scope, Level::Day),
            "{hours} hours read"
        );
    }
    // 366 days in 7-minute buckets, off the hour: minutes only for hours with hits.
    let b = Buckets {
        from: (day - 300) * d + 7,
        to: (day + 66) * d + 7,
        step: 7,
    };
    for scope in ["rust", ALL] {
        let counted = count_buckets(&metered, scope, &b).await.unwrap();
        assert_eq!(counted, expected(scope, &b), "{scope}");
        let (hours, minutes, most) = metered.take();
        assert!(most <= READ_CHUNK, "{most} units in one read");
        assert!(
            minutes <= 60 * with_hits(scope, Level::Hour),
            "{minutes} minutes read"
        );
        assert!(
            hours <= 24 * with_hits(scope, Level::Day),
            "{hours} hours read"
        );
    }
}

/// Only hashtags that score are ranked: enough distinct users, more than the day before.
/// Highest rank first, at most `limit`, none under `floor`.
pub async fn trending_ranks_by_distinct_users(store: Arc<dyn TrendStore>) {
    let rules = rules();
    let day = today();
    let hits = [
        // steady: 3 users yesterday and today: scored yesterday, not today.
        hit(1, day - 1, 100, "a", &["steady"]),
        hit(2, day - 1, 100, "b", &["steady"]),
        hit(3, day - 1, 100, "c", &["steady"]),
        hit(4, day, 100, "a", &["steady"]),
        hit(5, day, 100, "b", &["steady"]),
        hit(6, day, 100, "c", &["steady"]),
        // hot: 4 distinct users today (one of them twice).
        hit(7, day, 200, "a", &["hot"]),
        hit(8, day, 210, "b", &["hot"]),
        hit(9, day, 220, "c", &["hot"]),
        hit(10, day, 230, "d", &["hot"]),
        hit(11, day, 240, "d", &["hot"]),
        // cold: one user, many times.
        hit(12, day, 300, "e", &["cold"]),
        hit(13, day, 301, "e", &["cold"]),
        hit(14, day, 302, "e", &["cold"]),
    ];
    // In two batches, so that distinct users are counted across batches.
    store
        .apply_trends(&batch(&hits[..8], &rules), 0, 8)
        .await
        .unwrap();
    store
        .apply_trends(&batch(&hits[8..], &rules), 8, 14)
        .await
        .unwrap();

    let hot = rules.rank(4, 0, day * MINUTES_PER_DAY + 240).unwrap();
    let steady = rules.rank(3, 0, (day - 1) * MINUTES_PER_DAY + 100).unwrap();
    let ranked = store.trending(f64::MIN, 10).await.unwrap();
    let names: Vec<&str> = ranked.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(names, ["hot", "steady"]);
    assert!((ranked[0].1 - hot).abs() < 1e-9);
    assert!((ranked[1].1 - steady).abs() < 1e-9);
    assert_eq!(store.trending(f64::MIN, 1).await.unwrap().len(), 1);
    let now = day * MINUTES_PER_DAY + 240;
    let scoring = store.trending(rules.floor_at(now), 10).await.unwrap();
    assert_eq!(scoring.len(), 1, "yesterday's peak has decayed below 1");
    assert_eq!(scoring[0].0, "hot");
}

/// Each hashtag's uses and distinct users per day, every day of the range, oldest first.
pub async fn histories_give_every_day(store: Arc<dyn TrendStore>) {
    let day = today();
    let hits = [
        hit(1, day - 2, 10, "a", &["rust"]),
        hit(2, day - 2, 20, "a", &["rust"]),
        hit(3, day, 10, "a", &["rust"]),
        hit(4, day, 11, "b", &["rust", "go"]),
        hit(5, day, 12, "b", &["rust"]),
    ];
    store
        .apply_trends(&batch(&hits, &rules()), 0, 5)
        .await
        .unwrap();
    let usage = |day, uses, accounts| DayUsage {
        day,
        uses,
        accounts,
    };
    let histories = store
        .histories(&["rust".into(), "unknown".into()], day - 2, day + 1)
        .await
        .unwrap();
    assert_eq!(
        histories,
        [
            vec![usage(day - 2, 2, 1), usage(day - 1, 0, 0), usage(day, 3, 2)],
            vec![usage(day - 2, 0, 0), usage(day - 1, 0, 0), usage(day, 0, 0)],
        ]
    );
    assert!(store.histories(&[], day, day + 1).await.unwrap().is_empty());
    assert_eq!(
        store.histories(&["go".into()], day, day).await.unwrap(),
        [Vec::<DayUsage>::new()]
    );
}

/// With a minute retention, minutes of days past it are not kept; hours and days are.
pub async fn minutes_past_retention_are_dropped(store: Arc<dyn TrendStore>) {
    let rules = TrendRules {
        minute_retention_days: Some(1),
        ..rules()
    };
    let day = today();
    let hits = [
        hit(1, day - 5, 10, "a", &["old"]),
        hit(2, day, 10, "a", &["old"]),
    ];
    store
        .apply_trends(&batch(&hits, &rules), 0, 2)
        .await
        .unwrap();
    let minutes = counts(
        &*store,
        "old",
        Level::Minute,
        (day - 5) * MINUTES_PER_DAY,
        (day + 1) * MINUTES_PER_DAY,
    )
    .await;
    assert_eq!(minutes, [(day * MINUTES_PER_DAY + 10, 1)]);
    assert_eq!(
        counts(&*store, "old", Level::Day, day - 5, day + 1).await,
        [(day - 5, 1), (day, 1)]
    );
    assert_eq!(
        counts(&*store, "old", Level::Hour, (day - 5) * 24, (day + 1) * 24)
            .await
            .len(),
        2
    );
}

/// A reset forgets one model, data and checkpoint, and leaves the others; the model then
/// rebuilds from the first event as if new.
pub async fn reset_forgets_one_model(models: ReadModels) {
    let rules = rules();
    let day = today();
    let kept = message("kept", "kim", &["rust"]);
    models
        .messages
        .apply_messages(std::slice::from_ref(&kept), 0, 1)
        .await
        .unwrap();
    let hits = [
        hit(1, day, 10, "a", &["rust"]),
        hit(2, day, 11, "b", &["rust"]),
    ];
    models
        .trends
        .apply_trends(&batch(&hits, &rules), 0, 2)
        .await
        .unwrap();

    models.backend.reset("trends").await.unwrap();
    assert_eq!(models.backend.checkpoint("trends").await.unwrap(), 0);
    assert!(
        counts(&*models.trends, "rust", Level::Day, day, day + 1)
            .await
            .is_empty()
    );
    assert!(
        models
            .trends
            .trending(f64::MIN, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        models
            .trends
            .histories(&["rust".into()], day, day + 1)
            .await
            .unwrap(),
        [vec![DayUsage {
            day,
            uses: 0,
            accounts: 0
        }]]
    );
    assert_eq!(models.backend.checkpoint("messages").await.unwrap(), 1);
    assert_eq!(texts(&*models.messages, &all(10)).await, ["kept"]);

    // Rebuilt from the first event: counted once, as if new.
    let applied = models
        .trends
        .apply_trends(&batch(&hits, &rules), 0, 2)
        .await
        .unwrap();
    assert_eq!(applied, Applied::Done);
    assert_eq!(
        counts(&*models.trends, "rust", Level::Day, day, day + 1).await,
        [(day, 2)]
    );

    models.backend.reset("messages").await.unwrap();
    assert_eq!(models.backend.checkpoint("messages").await.unwrap(), 0);
    assert!(texts(&*models.messages, &all(10)).await.is_empty());
    assert_eq!(models.messages.get_message(kept.id).await.unwrap(), None);
    assert_eq!(models.backend.checkpoint("trends").await.unwrap(), 2);
}

/// Generations: a model is read from its live generation only; a rebuild is built beside
/// it and replaces it whole, only once it is not behind it, and only one at a time (the
/// one replaced must be deleted first); a model never built has none (it reads as lost,
/// not as empty), and each model's generations are its own.
pub async fn generations_replace_a_model_whole(store: Arc<dyn GenerationStore>) {
    let none = Generations::default();
    assert_eq!(store.generations("messages").await.unwrap(), none);
    assert!(matches!(
        store.live("messages").await,
        Err(ReadError::Rebuilding("messages"))
    ));
    assert_eq!(store.checkpoint("messages").await.unwrap(), 0);

    let first = store.begin_generation("messages").await.unwrap();
    assert_eq!(
        store.begin_generation("messages").await.unwrap(),
        first,
        "a rebuild under way is the one asked for"
    );
    let old = message("old", "kim", &["gen"]);
    let applied = store
        .models_at(first)
        .messages
        .apply_messages(std::slice::from_ref(&old), 0, 5)
        .await
        .unwrap();
    assert_eq!(applied, Applied::Done);
    assert!(
        store.live("messages").await.is_err(),
        "not live until switched"
    );
    assert!(
        store
            .switch_generation("messages", None, first)
            .await
            .unwrap()
    );
    assert_eq!(
        store.generations("messages").await.unwrap(),
        Generations {
            live: Some(first),
            ..none
        }
    );
    assert_eq!(store.checkpoint("messages").await.unwrap(), 5);

    // A rebuild: behind the live generation, it is not switched in.
    let second = store.begin_generation("messages").await.unwrap();
    assert_ne!(second, first);
    let rebuilt = store.models_at(second);
    rebuilt.messages.apply_messages(&[], 0, 3).await.unwrap();
    assert!(
        !store
            .switch_generation("messages", Some(first), second)
            .await
            .unwrap()
    );
    let live = store.live("messages").await.unwrap();
    assert_eq!(texts(&*live.messages, &all(10)).await, ["old"]);
    rebuilt
        .messages
        .apply_messages(std::slice::from_ref(&old), 3, 5)
        .await
        .unwrap();
    // Nor against another live generation than the one there.
    assert!(
        !store
            .switch_generation("messages", None, second)
            .await
            .unwrap()
    );
    assert!(
        store
            .switch_generation("messages", Some(first), second)
            .await
            .unwrap()
    );
    assert_eq!(
        store.generations("messages").await.unwrap(),
        Generations {
            live: Some(second),
            building: None,
            retired: Some(first),
        }
    );
    let live = store.live("messages").await.unwrap();
    assert_eq!(texts(&*live.messages, &all(10)).await, ["old"]);

    // The next rebuild waits until the replaced generation is deleted.
    let third = store.begin_generation("messages").await.unwrap();
    store
        .models_at(third)
        .messages
        .apply_messages(std::slice::from_ref(&old), 0, 5)
        .await
        .unwrap();
    assert!(
        !store
            .switch_generation("messages", Some(second), third)
            .await
            .unwrap()
    );
    store.drop_generation("messages", first).await.unwrap();
    assert_eq!(store.generations("messages").await.unwrap().retired, None);
    let dropped = store.models_at(first);
    assert_eq!(dropped.backend.checkpoint("messages").await.unwrap(), 0);
    assert!(
        store
            .switch_generation("messages", Some(second), third)
            .await
            .unwrap()
    );

    // The other model has none of this.
    assert_eq!(store.generations("trends").await.unwrap(), none);
}

/// The suite as tests, on the stores `$fresh` (a future of [`ReadModels`]) makes.
#[macro_export]
macro_rules! read_store_suite {
    ($fresh:expr) => {
        #[tokio::test]
        async fn messages_checkpoint_fences_stale_runners() {
            $crate::testing::messages_checkpoint_fences_stale_runners($fresh.await.messages).await;
        }
        #[tokio::test]
        async fn messages_survive_a_crash_before_the_checkpoint() {
            $crate::testing::messages_survive_a_crash_before_the_checkpoint($fresh.await.messages)
                .await;
        }
        #[tokio::test]
        async fn list_messages_filters_and_pages() {
            $crate::testing::list_messages_filters_and_pages($fresh.await.messages).await;
        }
        #[tokio::test]
        async fn trends_checkpoint_fences_stale_runners() {
            $crate::testing::trends_checkpoint_fences_stale_runners($fresh.await.trends).await;
        }
        #[tokio::test]
        async fn trends_survive_a_crash_before_the_checkpoint() {
            $crate::testing::trends_survive_a_crash_before_the_checkpoint($fresh.await.trends)
                .await;
        }
        #[tokio::test]
        async fn trend_counts_at_each_level() {
            $crate::testing::trend_counts_at_each_level($fresh.await.trends).await;
        }
        #[tokio::test]
        async fn trend_buckets_match_the_hits() {
            $crate::testing::trend_buckets_match_the_hits($fresh.await.trends).await;
        }
        #[tokio::test]
        async fn trending_ranks_by_distinct_users() {
            $crate::testing::trending_ranks_by_distinct_users($fresh.await.trends).await;
        }
        #[tokio::test]
        async fn histories_give_every_day() {
            $crate::testing::histories_give_every_day($fresh.await.trends).await;
        }
        #[tokio::test]
        async fn minutes_past_retention_are_dropped() {
            $crate::testing::minutes_past_retention_are_dropped($fresh.await.trends).await;
        }
        #[tokio::test]
        async fn reset_forgets_one_model() {
            $crate::testing::reset_forgets_one_model($fresh.await).await;
        }
    };
}

/// A read-model file of its own, in a fresh temporary directory.
pub fn read_model_file() -> std::path::PathBuf {
    std::env::temp_dir()
        .join(format!("cairn-test-{}", Ulid::generate()))
        .join("read-models.db")
}

/// An empty SQLite read store, for a log whose first event is `e1`: one generation's
/// models.
pub async fn fresh_sqlite() -> ReadModels {
    let store = fresh_sqlite_store().await;
    let generation = store.begin_generation("messages").await.unwrap();
    store.models_at(generation)
}

/// An empty SQLite read-model file, for a log whose first event is `e1`.
pub async fn fresh_sqlite_store() -> Arc<dyn GenerationStore> {
    let log = LogIdentity {
        first_event: Some("e1".into()),
        head: 1_000,
    };
    Arc::new(SqliteStore::open(&read_model_file(), &log).await.unwrap())
}

/// An empty Redis read store (the test Redis under a key prefix of its own).
pub async fn fresh_redis_store() -> Arc<dyn GenerationStore> {
    let url =
        std::env::var("CAIRN_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    redis_store_at(&url).await
}

/// An empty Redis Cluster read store, under a key prefix of its own.
pub async fn fresh_redis_cluster_store() -> Arc<dyn GenerationStore> {
    let url = std::env::var("CAIRN_TEST_REDIS_CLUSTER_URL")
        .unwrap_or_else(|_| "redis+cluster://127.0.0.1:7101,127.0.0.1:7102,127.0.0.1:7103".into());
    redis_store_at(&url).await
}

async fn redis_store_at(url: &str) -> Arc<dyn GenerationStore> {
    let prefix = format!("cairn_t_{}", Ulid::generate().to_string().to_lowercase());
    Arc::new(RedisStore::connect(url, &prefix).await.unwrap())
}

/// An empty Redis read store: the test Redis under a key prefix of its own.
pub async fn fresh_redis() -> ReadModels {
    let url =
        std::env::var("CAIRN_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    redis_at(&url).await
}

/// An empty Redis Cluster read store, under a key prefix of its own.
pub async fn fresh_redis_cluster() -> ReadModels {
    let url = std::env::var("CAIRN_TEST_REDIS_CLUSTER_URL")
        .unwrap_or_else(|_| "redis+cluster://127.0.0.1:7101,127.0.0.1:7102,127.0.0.1:7103".into());
    redis_at(&url).await
}

async fn redis_at(url: &str) -> ReadModels {
    let store = redis_store_at(url).await;
    let generation = store.begin_generation("messages").await.unwrap();
    store.models_at(generation)
}
