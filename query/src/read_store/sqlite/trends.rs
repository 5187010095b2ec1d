//! The trends read model in SQLite (tables of each generation, `{g}` in the SQL):
//! - `trend_counts`  (scope, level, unit) → count: the trend counters per hashtag and for
//!   all messages (scope `*`), at minute, hour and day resolution
//! - `trend_users`   (hashtag, day, user): distinct users per hashtag and day, exactly
//! - `trend_ranks`   each hashtag's trending rank (see `crate::trends`)
//!
//! A [`TrendBatch`]'s counts are added in the transaction that moves the checkpoint, so
//! they are added once: a batch whose checkpoint did not move left nothing behind.

use std::collections::HashSet;

use async_trait::async_trait;
use cairn_events::Position;
use sqlx::sqlite::SqliteConnection;

use super::{BoxFuture, SqliteStore, checkpoint_is, finish, json_text, set_checkpoint};
use crate::read_store::{Applied, ReadError, TrendStore};
use crate::trends::{DayUsage, Level, Minute, TrendBatch, merge_ranges};

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS {g}trend_counts (
    scope TEXT NOT NULL,
    level INTEGER NOT NULL,
    unit INTEGER NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (scope, level, unit)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS {g}trend_users (
    tag TEXT NOT NULL,
    day INTEGER NOT NULL,
    user_id TEXT NOT NULL,
    PRIMARY KEY (tag, day, user_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS {g}trend_ranks (tag TEXT PRIMARY KEY, rank REAL NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS {g}trend_ranks_by_rank ON {g}trend_ranks (rank);
";

pub(super) const TABLES: [&str; 3] = ["trend_counts", "trend_users", "trend_ranks"];

/// Persist a batch of trend counts and raise ranks, inside the writer's `BEGIN IMMEDIATE`.
/// With `prune_minutes_below`, stored minutes before it are deleted first.
fn insert_trends<'a>(
    conn: &'a mut SqliteConnection,
    store: &'a SqliteStore,
    batch: &'a TrendBatch,
    prune_minutes_below: Option<Minute>,
    from: Position,
    to: Position,
) -> BoxFuture<'a, Result<Applied, sqlx::Error>> {
    Box::pin(async move {
        if !checkpoint_is(conn, store, "trends", from).await? {
            return Ok(Applied::Moved);
        }
        if let Some(below) = prune_minutes_below {
            sqlx::query(&store.sql("DELETE FROM {g}trend_counts WHERE level = 0 AND unit < ?1"))
                .bind(below)
                .execute(&mut *conn)
                .await?;
        }
        let counts: Vec<(&str, i64, i64, u64)> = batch
            .scopes()
            .iter()
            .flat_map(|s| {
                s.counts
                    .iter()
                    .map(|((level, unit), n)| (s.scope.as_str(), level_code(*level), *unit, *n))
            })
            .collect();
        sqlx::query(&store.sql(
            "INSERT INTO {g}trend_counts (scope, level, unit, count)
             SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3 FROM json_each(?1) WHERE true
             ON CONFLICT (scope, level, unit) DO UPDATE SET count = count + excluded.count",
        ))
        .bind(json_text(&counts))
        .execute(&mut *conn)
        .await?;
        let users: HashSet<(&str, i64, &str)> = batch
            .days()
            .iter()
            .flat_map(|d| d.users.iter().map(|u| (d.tag.as_str(), d.day, u.as_str())))
            .collect();
        sqlx::query(&store.sql(
            "INSERT OR IGNORE INTO {g}trend_users (tag, day, user_id)
             SELECT value ->> 0, value ->> 1, value ->> 2 FROM json_each(?1)",
        ))
        .bind(json_text(&users))
        .execute(&mut *conn)
        .await?;

        // Each (hashtag, day) touched: its distinct users, the day before's, its last
        // stored minute (minutes past their retention are not stored, but still date the
        // rank through the batch's own latest minute).
        let touched: Vec<(&str, i64)> = batch
            .days()
            .iter()
            .map(|d| (d.tag.as_str(), d.day))
            .collect();
        let sql = store.sql(
            "SELECT j.key,
                 (SELECT count(*) FROM {g}trend_users u
                     WHERE u.tag = j.value ->> 0 AND u.day = j.value ->> 1),
                 (SELECT count(*) FROM {g}trend_users u
                     WHERE u.tag = j.value ->> 0 AND u.day = (j.value ->> 1) - 1),
                 (SELECT max(unit) FROM {g}trend_counts c
                     WHERE c.scope = j.value ->> 0 AND c.level = 0
                       AND c.unit >= (j.value ->> 1) * 1440 AND c.unit < ((j.value ->> 1) + 1) * 1440)
             FROM json_each(?1) AS j",
        );
        let days: Vec<(i64, i64, i64, Option<i64>)> = sqlx::query_as(&sql)
            .bind(json_text(&touched))
            .fetch_all(&mut *conn)
            .await?;
        let ranks: Vec<(&str, f64)> = days
            .into_iter()
            .filter_map(|(index, observed, yesterday, stored_last)| {
                let day = batch.days().get(usize::try_from(index).ok()?)?;
                let rank = batch.rank(day, observed as u64, yesterday as u64, stored_last)?;
                Some((day.tag.as_str(), rank))
            })
            .collect();
        sqlx::query(&store.sql(
            "INSERT INTO {g}trend_ranks (tag, rank)
             SELECT value ->> 0, value ->> 1 FROM json_each(?1) WHERE true
             ON CONFLICT (tag) DO UPDATE SET rank = max(rank, excluded.rank)",
        ))
        .bind(json_text(&ranks))
        .execute(&mut *conn)
        .await?;
        set_checkpoint(conn, store, "trends", to).await?;
        Ok(Applied::Done)
    })
}

/// How a level is stored in `trend_counts.level`.
fn level_code(level: Level) -> i64 {
    match level {
        Level::Minute => 0,
        Level::Hour => 1,
        Level::Day => 2,
    }
}

#[async_trait]
impl TrendStore for SqliteStore {
    async fn apply_trends(
        &self,
        batch: &TrendBatch,
        from: Position,
        to: Position,
    ) -> Result<Applied, ReadError> {
        // Expired minutes are deleted when the retention moves on to another day (and
        // once after start), not on every batch: the delete walks the whole table.
        let prune = batch
            .minutes_kept_from()
            .filter(|m| *m > self.minutes_pruned_below());
        let mut conn = self.begin().await?;
        let result = insert_trends(&mut conn, self, batch, prune, from, to).await;
        let applied = finish(&mut conn, result).await?;
        if let (Some(below), Applied::Done) = (prune, applied) {
            self.set_minutes_pruned_below(below);
        }
        Ok(applied)
    }

    async fn trend_counts(
        &self,
        scope: &str,
        level: Level,
        ranges: &[(i64, i64)],
    ) -> Result<Vec<(i64, u64)>, ReadError> {
        let mut ranges = ranges.to_vec();
        merge_ranges(&mut ranges);
        if ranges.is_empty() {
            return Ok(Vec::new());
        }
        // One index range per range asked for (CROSS JOIN keeps the ranges outside).
        let sql = self.sql(
            "SELECT c.unit, c.count FROM json_each(?3) AS r CROSS JOIN {g}trend_counts AS c
             WHERE c.scope = ?1 AND c.level = ?2
               AND c.unit >= r.value ->> 0 AND c.unit < r.value ->> 1",
        );
        let rows: Vec<(i64, i64)> = sqlx::query_as(&sql)
            .bind(scope)
            .bind(level_code(level))
            .bind(json_text(&ranges))
            .fetch_all(self.pool())
            .await?;
        Ok(rows
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .map(|(unit, n)| (unit, u64::try_from(n).unwrap_or(0)))
            .collect())
    }

    async fn trending(&self, floor: f64, limit: usize) -> Result<Vec<(String, f64)>, ReadError> {
        let sql = self.sql(
            "SELECT tag, rank FROM {g}trend_ranks WHERE rank >= ?1 ORDER BY rank DESC, tag LIMIT ?2",
        );
        Ok(sqlx::query_as(&sql)
            .bind(floor)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(self.pool())
            .await?)
    }

    async fn histories(
        &self,
        tags: &[String],
        first: i64,
        end: i64,
    ) -> Result<Vec<Vec<DayUsage>>, ReadError> {
        if end <= first {
            return Ok(vec![Vec::new(); tags.len()]);
        }
        let mut out = Vec::with_capacity(tags.len());
        let sql = self.sql(
                "WITH RECURSIVE days(day) AS (SELECT ?2 UNION ALL SELECT day + 1 FROM days WHERE day + 1 < ?3)
                 SELECT d.day,
                     coalesce((SELECT count FROM {g}trend_counts c
                         WHERE c.scope = ?1 AND c.level = 2 AND c.unit = d.day), 0),
                     (SELECT count(*) FROM {g}trend_users u WHERE u.tag = ?1 AND u.day = d.day)
                 FROM days d ORDER BY d.day",
            );
        for tag in tags {
            let rows: Vec<(i64, i64, i64)> = sqlx::query_as(&sql)
                .bind(tag)
                .bind(first)
                .bind(end)
                .fetch_all(self.pool())
                .await?;
            out.push(
                rows.into_iter()
                    .map(|(day, uses, accounts)| DayUsage {
                        day,
                        uses: u64::try_from(uses).unwrap_or(0),
                        accounts: u64::try_from(accounts).unwrap_or(0),
                    })
                    .collect(),
            );
        }
        Ok(out)
    }
}
