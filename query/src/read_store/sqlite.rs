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
//! - `checkpoints`   the last position each projection applied
//! - `meta`          which event log the model was built from
//!
//! The schema version sits in `PRAGMA user_version`. A file of another version is emptied
//! and rebuilt from the log: read models are derived data, never migrated.

use std::path::Path;
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

type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// Bump when the layout changes: older files are then rebuilt from the log.
const SCHEMA_VERSION: i64 = 1;

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
";

const COLUMNS: &str = "m.id, m.user_id, m.user_name, m.text, m.hashtags, m.created_at";

pub struct SqliteStore {
    /// Reads; several at once.
    pool: SqlitePool,
    /// The one connection that writes, so write transactions queue here rather than in
    /// SQLite's busy handler.
    writer: Mutex<SqliteConnection>,
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
                for table in ["meta", "checkpoints", "messages", "message_tags"] {
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
        let at: Option<i64> =
            sqlx::query_scalar("SELECT position FROM checkpoints WHERE projection = 'messages'")
                .fetch_optional(&mut *conn)
                .await?;
        if at.unwrap_or(0) != from {
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
        sqlx::query(
            "INSERT INTO checkpoints (projection, position) VALUES ('messages', ?1)
             ON CONFLICT (projection) DO UPDATE SET position = excluded.position",
        )
        .bind(to)
        .execute(&mut *conn)
        .await?;
        Ok(Applied::Done)
    })
}

/// Forget a projection's rows and checkpoint, inside the writer's `BEGIN IMMEDIATE`.
fn delete_projection<'a>(
    conn: &'a mut SqliteConnection,
    projection: &'a str,
) -> BoxFuture<'a, Result<(), sqlx::Error>> {
    Box::pin(async move {
        if projection == "messages" {
            sqlx::Executor::execute(
                &mut *conn,
                "DELETE FROM message_tags; DELETE FROM messages;",
            )
            .await?;
        }
        sqlx::query("DELETE FROM checkpoints WHERE projection = ?1")
            .bind(projection)
            .execute(&mut *conn)
            .await?;
        Ok(())
    })
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
