//! Read models in a SQLite file: the default when no Redis is configured.
//!
//! The file (`read-models.db` in the data directory) sits beside the event log, not in it,
//! so applying a batch never waits on the event store's write lock. It survives restarts:
//! a server that starts picks up at the stored checkpoint instead of replaying the whole
//! log, so it answers reads within milliseconds however much data it holds. Because a
//! checkpoint and the rows it covers commit in one transaction (the checkpoint compared
//! and moved inside it), a crash at any point leaves a consistent model that simply catches
//! up from where it was; that is also why the file can run with `synchronous=NORMAL` (a
//! lost tail is re-applied from the log). A batch whose compare-and-set fails writes
//! nothing, so re-applying it from the old checkpoint counts nothing twice.
//!
//! Tables shared by every model (each model's file lists its own):
//! - `checkpoints`   the last position each projection applied
//! - `meta`          which event log the model was built from
//!
//! The schema version sits in `PRAGMA user_version`. A file of another version is emptied
//! and rebuilt from the log: read models are derived data, never migrated.

mod messages;
mod trends;

use std::path::Path;
use std::sync::atomic::AtomicI64;
use std::time::Duration;

use async_trait::async_trait;
use cairn_events::Position;
use serde::Serialize;
use sqlx::Connection;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use tokio::sync::{Mutex, MutexGuard};

use super::{ReadBackend, ReadError};
use crate::trends::Minute;

type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// Bump when the layout changes: older files are then rebuilt from the log.
const SCHEMA_VERSION: i64 = 2;

const SCHEMA: &str = "
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE checkpoints (projection TEXT PRIMARY KEY, position INTEGER NOT NULL);
";

/// The shared tables, for emptying a file of another version or log.
const TABLES: [&str; 2] = ["meta", "checkpoints"];

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

    /// The writer, inside a `BEGIN IMMEDIATE` that [`finish`] ends.
    async fn begin(&self) -> Result<MutexGuard<'_, SqliteConnection>, ReadError> {
        let mut conn = self.writer.lock().await;
        sqlx::Executor::execute(&mut *conn, "BEGIN IMMEDIATE").await?;
        Ok(conn)
    }
}

/// Every table, each model's with the shared ones.
fn all_tables() -> impl Iterator<Item = &'static str> {
    TABLES
        .into_iter()
        .chain(messages::TABLES)
        .chain(trends::TABLES)
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
                for table in all_tables() {
                    let drop = format!("DROP TABLE IF EXISTS {table}");
                    sqlx::Executor::execute(&mut *conn, drop.as_str()).await?;
                }
                for schema in [SCHEMA, messages::SCHEMA, trends::SCHEMA] {
                    sqlx::Executor::execute(&mut *conn, schema).await?;
                }
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
            "messages" => &messages::TABLES,
            "trends" => &trends::TABLES,
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

#[async_trait]
impl ReadBackend for SqliteStore {
    async fn checkpoint(&self, projection: &str) -> Result<Position, ReadError> {
        let at: Option<i64> =
            sqlx::query_scalar("SELECT position FROM checkpoints WHERE projection = ?1")
                .bind(projection)
                .fetch_optional(&self.pool)
                .await?;
        Ok(at.unwrap_or(0))
    }

    async fn reset(&self, projection: &str) -> Result<(), ReadError> {
        let mut conn = self.begin().await?;
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
