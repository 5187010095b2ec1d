//! Read models in a SQLite file: the default when no Redis is configured.
//!
//! The file (`read-models.db` in the data directory) sits beside the event log, not in it,
//! so applying a batch never waits on the event store's write lock. It survives restarts:
//! a server that starts picks up at the stored checkpoint instead of replaying the whole
//! log, so it answers reads within milliseconds however much data it holds. Because a
//! checkpoint and the rows it covers commit in one transaction, a crash at any point leaves
//! a consistent model that simply catches up from where it was; that is also why the file
//! can run with `synchronous=NORMAL` (a lost tail is re-applied from the log).
//!
//! Layout:
//! - `messages`      one row per message; `id` is the ULID's 16 big-endian bytes, so
//!   comparing blobs compares ids, and a date range or cursor is a range on its index
//! - `message_tags`  (case-folded tag, id): the hashtag index
//! - `trend_counts`  (scope, level, unit) → count: the trend counters per hashtag and for
//!   all messages (scope `*`), at minute, hour and day resolution
//! - `trend_users`   (hashtag, day, user): distinct users per hashtag and day, exactly
//! - `trend_ranks`   each hashtag's trending rank (see `crate::trends`)
//! - `checkpoints`   the last position each projection applied
//! - `meta`          which event log the model was built from
//!
//! The schema version sits in `PRAGMA user_version`. A file of another version is emptied
//! and rebuilt from the log: read models are derived data, never migrated.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use cairn_events::Position;
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteRow, SqliteSynchronous,
};
use sqlx::{Connection, Row};
use tokio::sync::Mutex;
use ulid::Ulid;

use super::{Applied, MessageFilter, ReadError, ReadStore, StoredMessage};
use crate::trends::{
    ALL, DayUsage, Level, MINUTES_PER_DAY, Minute, TrendHit, TrendRules, minute_of,
};

type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// Bump when the layout changes: older files are then rebuilt from the log.
const SCHEMA_VERSION: i64 = 2;

const SCHEMA: &str = "
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE checkpoints (projection TEXT PRIMARY KEY, position INTEGER NOT NULL);
CREATE TABLE messages (
    seq INTEGER PRIMARY KEY,
    id BLOB NOT NULL UNIQUE,
    user_id TEXT NOT NULL,
    user_name TEXT NOT NULL,
    user_key TEXT NOT NULL,
    text TEXT NOT NULL,
    hashtags TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX messages_by_user ON messages (user_key, id);
CREATE TABLE message_tags (
    tag TEXT NOT NULL,
    id BLOB NOT NULL,
    PRIMARY KEY (tag, id)
) WITHOUT ROWID;
CREATE TABLE trend_counts (
    scope TEXT NOT NULL,
    level INTEGER NOT NULL,
    unit INTEGER NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (scope, level, unit)
) WITHOUT ROWID;
CREATE TABLE trend_users (
    tag TEXT NOT NULL,
    day INTEGER NOT NULL,
    user_id TEXT NOT NULL,
    PRIMARY KEY (tag, day, user_id)
) WITHOUT ROWID;
CREATE TABLE trend_ranks (tag TEXT PRIMARY KEY, rank REAL NOT NULL) WITHOUT ROWID;
CREATE INDEX trend_ranks_by_rank ON trend_ranks (rank);
";

/// Every table, for emptying a file of another version or log.
const TABLES: [&str; 7] = [
    "meta",
    "checkpoints",
    "messages",
    "message_tags",
    "trend_counts",
    "trend_users",
    "trend_ranks",
];

const COLUMNS: &str = "m.id, m.user_id, m.user_name, m.text, m.hashtags, m.created_at";

pub struct SqliteStore {
    /// Reads; several at once.
    pool: SqlitePool,
    /// The one connection that writes, so write transactions queue here rather than in
    /// SQLite's busy handler.
    writer: Mutex<SqliteConnection>,
    /// Minute counters before this were deleted by this process (the minute retention).
    minutes_pruned_below: AtomicI64,
}

/// Which event log a read model was built from: a model built from another log (the event
/// file was replaced, or restored from an older backup) must not be trusted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogIdentity {
    /// The id of the log's first event, if it has one.
    pub first_event: Option<String>,
    /// The log's newest position.
    pub head: Position,
}

impl SqliteStore {
    /// Open (or create) the read-model file at `path`. A file built from another log than
    /// `log` is emptied, so the projections rebuild it.
    pub async fn open(path: &Path, log: &LogIdentity) -> Result<Self, ReadError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| ReadError::Sqlite(sqlx::Error::Io(e)))?;
        }
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10));
        let mut writer = SqliteConnection::connect_with(&options).await?;
        prepare(&mut writer, log).await?;
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options.read_only(true))
            .await?;
        Ok(SqliteStore {
            pool,
            writer: Mutex::new(writer),
            minutes_pruned_below: AtomicI64::new(Minute::MIN),
        })
    }
}

/// Create the schema, or empty a file that is of another version or from another log.
fn prepare<'a>(
    conn: &'a mut SqliteConnection,
    log: &'a LogIdentity,
) -> BoxFuture<'a, Result<(), ReadError>> {
    Box::pin(async move {
        sqlx::Executor::execute(&mut *conn, "BEGIN IMMEDIATE").await?;
        let result = async {
            let version: i64 = sqlx::query_scalar("PRAGMA user_version")
                .fetch_one(&mut *conn)
                .await?;
            let mut fresh = version != SCHEMA_VERSION;
            if !fresh {
                let built_from: Option<String> =
                    sqlx::query_scalar("SELECT value FROM meta WHERE key = 'first_event'")
                        .fetch_optional(&mut *conn)
                        .await?;
                let furthest: Option<i64> =
                    sqlx::query_scalar("SELECT max(position) FROM checkpoints")
                        .fetch_one(&mut *conn)
                        .await?;
                // A model that has seen more of the log than the log holds, or was built
                // from a log that began with another event, belongs to another log. (A
                // model begun on an empty log has no first event recorded: it is adopted.)
                let other_log = built_from.is_some() && built_from != log.first_event;
                if other_log || furthest.unwrap_or(0) > log.head {
                    tracing::warn!(
                        "read models were built from another event log; rebuilding them"
                    );
                    fresh = true;
                }
            }
            if fresh {
                for table in TABLES {
                    let drop = format!("DROP TABLE IF EXISTS {table}");
                    sqlx::Executor::execute(&mut *conn, drop.as_str()).await?;
                }
                sqlx::Executor::execute(&mut *conn, SCHEMA).await?;
                let version = format!("PRAGMA user_version = {SCHEMA_VERSION}");
                sqlx::Executor::execute(&mut *conn, version.as_str()).await?;
            }
            if let Some(first) = &log.first_event {
                sqlx::query("INSERT OR REPLACE INTO meta (key, value) VALUES ('first_event', ?1)")
                    .bind(first)
                    .execute(&mut *conn)
                    .await?;
            }
            Ok::<_, sqlx::Error>(())
        }
        .await;
        finish(conn, result).await
    })
}

/// Commit if `result` is Ok, otherwise roll back and return the error.
async fn finish<T>(
    conn: &mut SqliteConnection,
    result: Result<T, sqlx::Error>,
) -> Result<T, ReadError> {
    match result {
        Ok(value) => {
            sqlx::Executor::execute(&mut *conn, "COMMIT").await?;
            Ok(value)
        }
        Err(error) => {
            let _ = sqlx::Executor::execute(&mut *conn, "ROLLBACK").await;
            Err(error.into())
        }
    }
}

/// A message as the batch insert reads it from a JSON array.
#[derive(Serialize)]
struct BatchRow<'a> {
    /// The id's 32 hex digits (`unhex` turns them into the stored blob).
    id: String,
    user_id: &'a str,
    user_name: &'a str,
    user_key: String,
    text: &'a str,
    hashtags: &'a [String],
    tag_keys: Vec<String>,
    created_at: i64,
}

impl<'a> From<&'a StoredMessage> for BatchRow<'a> {
    fn from(m: &'a StoredMessage) -> Self {
        BatchRow {
            id: format!("{:032x}", u128::from(m.id)),
            user_id: &m.user_id,
            user_name: &m.user_name,
            user_key: m.user_name.to_ascii_lowercase(),
            text: &m.text,
            hashtags: &m.hashtags,
            tag_keys: m.hashtags.iter().map(|t| t.to_lowercase()).collect(),
            created_at: m.created_at.timestamp_millis(),
        }
    }
}

/// Insert a batch and move the checkpoint, inside the writer's `BEGIN IMMEDIATE`.
fn insert_messages<'a>(
    conn: &'a mut SqliteConnection,
    rows: String,
    from: Position,
    to: Position,
) -> BoxFuture<'a, Result<Applied, sqlx::Error>> {
    Box::pin(async move {
        if !checkpoint_is(conn, "messages", from).await? {
            return Ok(Applied::Moved);
        }
        sqlx::query(
            "INSERT OR IGNORE INTO messages
                 (id, user_id, user_name, user_key, text, hashtags, created_at)
             SELECT unhex(value ->> 'id'), value ->> 'user_id', value ->> 'user_name',
                    value ->> 'user_key', value ->> 'text', value -> 'hashtags',
                    value ->> 'created_at'
             FROM json_each(?1)",
        )
        .bind(&rows)
        .execute(&mut *conn)
        .await?;
        sqlx::query(
            "INSERT OR IGNORE INTO message_tags (tag, id)
             SELECT t.value, unhex(m.value ->> 'id')
             FROM json_each(?1) AS m, json_each(m.value -> 'tag_keys') AS t",
        )
        .bind(&rows)
        .execute(&mut *conn)
        .await?;
        set_checkpoint(conn, "messages", to).await?;
        Ok(Applied::Done)
    })
}

/// Whether `projection`'s checkpoint is at `position` (inside a write transaction).
async fn checkpoint_is(
    conn: &mut SqliteConnection,
    projection: &str,
    position: Position,
) -> Result<bool, sqlx::Error> {
    let at: Option<i64> =
        sqlx::query_scalar("SELECT position FROM checkpoints WHERE projection = ?1")
            .bind(projection)
            .fetch_optional(&mut *conn)
            .await?;
    Ok(at.unwrap_or(0) == position)
}

async fn set_checkpoint(
    conn: &mut SqliteConnection,
    projection: &str,
    position: Position,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO checkpoints (projection, position) VALUES (?1, ?2)
         ON CONFLICT (projection) DO UPDATE SET position = excluded.position",
    )
    .bind(projection)
    .bind(position)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Count a batch of trend hits and raise ranks, inside the writer's `BEGIN IMMEDIATE`.
/// Minutes before `kept_from` are past their retention and not stored; with
/// `prune_minutes_below`, stored minutes before it are deleted first.
fn insert_trends<'a>(
    conn: &'a mut SqliteConnection,
    hits: &'a [TrendHit],
    rules: TrendRules,
    kept_from: Option<Minute>,
    prune_minutes_below: Option<Minute>,
    from: Position,
    to: Position,
) -> BoxFuture<'a, Result<Applied, sqlx::Error>> {
    Box::pin(async move {
        if !checkpoint_is(conn, "trends", from).await? {
            return Ok(Applied::Moved);
        }
        if let Some(below) = prune_minutes_below {
            sqlx::query("DELETE FROM trend_counts WHERE level = 0 AND unit < ?1")
                .bind(below)
                .execute(&mut *conn)
                .await?;
        }
        let mut counts: HashMap<(&str, i64, i64), u64> = HashMap::new();
        let mut users: HashSet<(&str, i64, &str)> = HashSet::new();
        // Each (hashtag, day)'s latest minute in this batch: minutes past their retention
        // are not stored, but still date the rank.
        let mut latest: HashMap<(&str, i64), Minute> = HashMap::new();
        for hit in hits {
            for scope in hit.tags.iter().map(String::as_str).chain([ALL]) {
                for level in Level::ALL {
                    if level == Level::Minute && kept_from.is_some_and(|m| hit.minute < m) {
                        continue;
                    }
                    *counts
                        .entry((scope, level_code(level), level.unit_of(hit.minute)))
                        .or_default() += 1;
                }
            }
            let day = Level::Day.unit_of(hit.minute);
            for tag in &hit.tags {
                users.insert((tag, day, &hit.user_id));
                let last = latest.entry((tag, day)).or_insert(hit.minute);
                *last = (*last).max(hit.minute);
            }
        }
        let counts: Vec<(&str, i64, i64, u64)> = counts
            .into_iter()
            .map(|((s, l, u), n)| (s, l, u, n))
            .collect();
        sqlx::query(
            "INSERT INTO trend_counts (scope, level, unit, count)
             SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3 FROM json_each(?1) WHERE true
             ON CONFLICT (scope, level, unit) DO UPDATE SET count = count + excluded.count",
        )
        .bind(json_text(&counts))
        .execute(&mut *conn)
        .await?;
        let users: Vec<&(&str, i64, &str)> = users.iter().collect();
        sqlx::query(
            "INSERT OR IGNORE INTO trend_users (tag, day, user_id)
             SELECT value ->> 0, value ->> 1, value ->> 2 FROM json_each(?1)",
        )
        .bind(json_text(&users))
        .execute(&mut *conn)
        .await?;

        // Each (hashtag, day) touched: its distinct users, the day before's, its last minute.
        let touched: HashSet<(&str, i64)> = users.iter().map(|(t, d, _)| (*t, *d)).collect();
        let touched: Vec<(&str, i64)> = touched.into_iter().collect();
        let days: Vec<(String, i64, i64, i64, Option<i64>)> = sqlx::query_as(
            "SELECT j.value ->> 0, j.value ->> 1,
                 (SELECT count(*) FROM trend_users u
                     WHERE u.tag = j.value ->> 0 AND u.day = j.value ->> 1),
                 (SELECT count(*) FROM trend_users u
                     WHERE u.tag = j.value ->> 0 AND u.day = (j.value ->> 1) - 1),
                 (SELECT max(unit) FROM trend_counts c
                     WHERE c.scope = j.value ->> 0 AND c.level = 0
                       AND c.unit >= (j.value ->> 1) * 1440 AND c.unit < ((j.value ->> 1) + 1) * 1440)
             FROM json_each(?1) AS j",
        )
        .bind(json_text(&touched))
        .fetch_all(&mut *conn)
        .await?;
        let ranks: Vec<(String, f64)> = days
            .into_iter()
            .filter_map(|(tag, day, observed, yesterday, stored_last)| {
                let batch_last = latest.get(&(tag.as_str(), day)).copied();
                let last = stored_last.max(batch_last).unwrap_or(day * MINUTES_PER_DAY);
                let rank = rules.rank(observed as u64, yesterday as u64, last)?;
                Some((tag, rank))
            })
            .collect();
        sqlx::query(
            "INSERT INTO trend_ranks (tag, rank)
             SELECT value ->> 0, value ->> 1 FROM json_each(?1) WHERE true
             ON CONFLICT (tag) DO UPDATE SET rank = max(rank, excluded.rank)",
        )
        .bind(json_text(&ranks))
        .execute(&mut *conn)
        .await?;
        set_checkpoint(conn, "trends", to).await?;
        Ok(Applied::Done)
    })
}

/// A value as the JSON text `json_each` reads.
fn json_text<T: Serialize + ?Sized>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "[]".into())
}

/// Forget a projection's rows and checkpoint, inside the writer's `BEGIN IMMEDIATE`.
fn delete_projection<'a>(
    conn: &'a mut SqliteConnection,
    projection: &'a str,
) -> BoxFuture<'a, Result<(), sqlx::Error>> {
    Box::pin(async move {
        let tables: &[&str] = match projection {
            "messages" => &["message_tags", "messages"],
            "trends" => &["trend_counts", "trend_users", "trend_ranks"],
            _ => &[],
        };
        for table in tables {
            let delete = format!("DELETE FROM {table}");
            sqlx::Executor::execute(&mut *conn, delete.as_str()).await?;
        }
        sqlx::query("DELETE FROM checkpoints WHERE projection = ?1")
            .bind(projection)
            .execute(&mut *conn)
            .await?;
        Ok(())
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

fn decode(row: &SqliteRow) -> Result<StoredMessage, ReadError> {
    let corrupt = |what: &str| ReadError::Corrupt(format!("message row: {what}"));
    let id: Vec<u8> = row.try_get("id")?;
    let id = <[u8; 16]>::try_from(id.as_slice()).map_err(|_| corrupt("id"))?;
    let hashtags: String = row.try_get("hashtags")?;
    let created_at: i64 = row.try_get("created_at")?;
    Ok(StoredMessage {
        id: Ulid::from_bytes(id),
        user_id: row.try_get("user_id")?,
        user_name: row.try_get("user_name")?,
        text: row.try_get("text")?,
        hashtags: serde_json::from_str(&hashtags).map_err(|_| corrupt("hashtags"))?,
        created_at: DateTime::<Utc>::from_timestamp_millis(created_at)
            .ok_or_else(|| corrupt("created_at"))?,
    })
}

#[async_trait]
impl ReadStore for SqliteStore {
    async fn checkpoint(&self, projection: &str) -> Result<Position, ReadError> {
        let at: Option<i64> =
            sqlx::query_scalar("SELECT position FROM checkpoints WHERE projection = ?1")
                .bind(projection)
                .fetch_optional(&self.pool)
                .await?;
        Ok(at.unwrap_or(0))
    }

    async fn apply_messages(
        &self,
        messages: &[StoredMessage],
        from: Position,
        to: Position,
    ) -> Result<Applied, ReadError> {
        let rows: Vec<BatchRow<'_>> = messages.iter().map(BatchRow::from).collect();
        let rows = serde_json::to_string(&rows).map_err(|e| ReadError::Corrupt(e.to_string()))?;
        let mut conn = self.writer.lock().await;
        sqlx::Executor::execute(&mut *conn, "BEGIN IMMEDIATE").await?;
        let result = insert_messages(&mut conn, rows, from, to).await;
        finish(&mut conn, result).await
    }

    async fn get_message(&self, id: Ulid) -> Result<Option<StoredMessage>, ReadError> {
        let row = sqlx::query(&format!("SELECT {COLUMNS} FROM messages m WHERE m.id = ?1"))
            .bind(id.to_bytes().to_vec())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(decode).transpose()
    }

    async fn list_messages(&self, filter: &MessageFilter) -> Result<Vec<StoredMessage>, ReadError> {
        let lower = filter.lower.unwrap_or(Ulid::nil());
        let upper = filter
            .upper
            .unwrap_or(Ulid::from_parts(u64::MAX >> 16, u128::MAX));
        if lower >= upper {
            return Ok(Vec::new());
        }
        // Walk the hashtag index when there is a tag, else the user index, else every id;
        // the id range (and the user, beside a tag) narrows the walk, newest first.
        let (from, walk) = match (&filter.hashtag, &filter.user_name) {
            (Some(_), _) => (
                "message_tags t JOIN messages m ON m.id = t.id WHERE t.tag = ? AND",
                "t.id",
            ),
            (None, Some(_)) => ("messages m WHERE m.user_key = ? AND", "m.id"),
            (None, None) => ("messages m WHERE", "m.id"),
        };
        let beside_tag = filter.hashtag.is_some() && filter.user_name.is_some();
        let sql = format!(
            "SELECT {COLUMNS} FROM {from} {walk} >= ? AND {walk} < ?{} ORDER BY {walk} DESC LIMIT ?",
            if beside_tag {
                " AND m.user_key = ?"
            } else {
                ""
            },
        );
        let mut query = sqlx::query(&sql);
        if let Some(key) = filter.hashtag.as_ref().or(filter.user_name.as_ref()) {
            query = query.bind(key);
        }
        query = query
            .bind(lower.to_bytes().to_vec())
            .bind(upper.to_bytes().to_vec());
        if beside_tag {
            query = query.bind(&filter.user_name);
        }
        let rows = query
            .bind(i64::try_from(filter.limit).unwrap_or(i64::MAX))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(decode).collect()
    }

    async fn apply_trends(
        &self,
        hits: &[TrendHit],
        rules: &TrendRules,
        from: Position,
        to: Position,
    ) -> Result<Applied, ReadError> {
        let kept_from = rules.minutes_kept_from(minute_of(Utc::now()));
        // Expired minutes are deleted when the retention moves on to another day (and
        // once after start), not on every batch: the delete walks the whole table.
        let prune = kept_from.filter(|m| *m > self.minutes_pruned_below.load(Ordering::Relaxed));
        let mut conn = self.writer.lock().await;
        sqlx::Executor::execute(&mut *conn, "BEGIN IMMEDIATE").await?;
        let result = insert_trends(&mut conn, hits, *rules, kept_from, prune, from, to).await;
        let applied = finish(&mut conn, result).await?;
        if let (Some(below), Applied::Done) = (prune, applied) {
            self.minutes_pruned_below.store(below, Ordering::Relaxed);
        }
        Ok(applied)
    }

    async fn trend_counts(
        &self,
        scope: &str,
        level: Level,
        first: i64,
        end: i64,
    ) -> Result<Vec<(i64, u64)>, ReadError> {
        let rows: Vec<(i64, i64)> = sqlx::query_as(
            "SELECT unit, count FROM trend_counts
             WHERE scope = ?1 AND level = ?2 AND unit >= ?3 AND unit < ?4 ORDER BY unit",
        )
        .bind(scope)
        .bind(level_code(level))
        .bind(first)
        .bind(end)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(unit, n)| (unit, u64::try_from(n).unwrap_or(0)))
            .collect())
    }

    async fn trending(&self, floor: f64, limit: usize) -> Result<Vec<(String, f64)>, ReadError> {
        Ok(sqlx::query_as(
            "SELECT tag, rank FROM trend_ranks WHERE rank >= ?1 ORDER BY rank DESC, tag LIMIT ?2",
        )
        .bind(floor)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await?)
    }

    async fn histories(
        &self,
        tags: &[String],
        first: i64,
        end: i64,
    ) -> Result<Vec<Vec<DayUsage>>, ReadError> {
        let mut out = Vec::with_capacity(tags.len());
        for tag in tags {
            let rows: Vec<(i64, i64, i64)> = sqlx::query_as(
                "WITH RECURSIVE days(day) AS (SELECT ?2 UNION ALL SELECT day + 1 FROM days WHERE day + 1 < ?3)
                 SELECT d.day,
                     coalesce((SELECT count FROM trend_counts c
                         WHERE c.scope = ?1 AND c.level = 2 AND c.unit = d.day), 0),
                     (SELECT count(*) FROM trend_users u WHERE u.tag = ?1 AND u.day = d.day)
                 FROM days d ORDER BY d.day",
            )
            .bind(tag)
            .bind(first)
            .bind(end)
            .fetch_all(&self.pool)
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

    async fn reset(&self, projection: &str) -> Result<(), ReadError> {
        let mut conn = self.writer.lock().await;
        sqlx::Executor::execute(&mut *conn, "BEGIN IMMEDIATE").await?;
        let result = delete_projection(&mut conn, projection).await;
        finish(&mut conn, result).await
    }

    async fn ping(&self) -> Result<(), ReadError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    fn backend(&self) -> &'static str {
        "sqlite"
    }
}
