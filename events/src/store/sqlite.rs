//! The embedded event store: one SQLite file in the data directory.
//!
//! Appends are group-committed on one dedicated connection inside `BEGIN IMMEDIATE`, which
//! takes SQLite's write lock up front: positions are assigned while holding it, so they are
//! dense and follow commit order, even when a CLI command writes to the same file while the
//! server runs. `synchronous=FULL` in WAL mode makes a commit durable before `append`
//! returns. Appends made by this process wake subscribers at once; appends made by another
//! process (the CLI) are noticed by re-reading the head four times a second.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, Utc};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteRow, SqliteSynchronous,
};
use sqlx::{Connection, Row};
use tokio::sync::watch;
use uuid::Uuid;

use super::parse_metadata;
use crate::group_commit::{BatchWriter, Committer, plan};
use crate::migrate::SQLITE as MIGRATIONS;
use crate::{
    AppendRequest, AppendStats, Appended, Envelope, EventStore, Lease, Position, StoreError,
};

/// How often another process's appends are looked for.
const CROSS_PROCESS_POLL: Duration = Duration::from_millis(250);

pub struct SqliteStore {
    pool: SqlitePool,
    committer: Committer,
    head: watch::Sender<Position>,
    stats: Arc<AppendStats>,
}

impl SqliteStore {
    #[tracing::instrument(skip_all, fields(path = %path.display()))]
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| StoreError::Unavailable(Arc::new(sqlx::Error::Io(e))))?;
        }
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10));
        let mut writer = SqliteConnection::connect_with(&options).await?;
        migrate(&mut writer).await?;
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options.read_only(true))
            .await?;

        let initial = fetch_head(&pool).await?;
        let (head, _) = watch::channel(initial);
        tokio::spawn(poll_head(pool.clone(), head.clone()));
        let stats = Arc::new(AppendStats::default());
        let committer = Committer::spawn(
            SqliteBatchWriter { conn: writer },
            stats.clone(),
            head.clone(),
        );
        Ok(SqliteStore {
            pool,
            committer,
            head,
            stats,
        })
    }
}

async fn migrate(conn: &mut SqliteConnection) -> Result<(), StoreError> {
    sqlx::Executor::execute(&mut *conn, "BEGIN IMMEDIATE").await?;
    let result = async {
        sqlx::raw_sql(
            "CREATE TABLE IF NOT EXISTS cairn_migrations (
                 version INTEGER PRIMARY KEY,
                 name TEXT NOT NULL,
                 applied_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')))",
        )
        .execute(&mut *conn)
        .await?;
        let applied: Vec<i64> = sqlx::query_scalar("SELECT version FROM cairn_migrations")
            .fetch_all(&mut *conn)
            .await?;
        for migration in MIGRATIONS.iter().filter(|m| !applied.contains(&m.version)) {
            tracing::info!(
                version = migration.version,
                name = migration.name,
                "applying migration"
            );
            sqlx::raw_sql(migration.sql).execute(&mut *conn).await?;
            sqlx::query("INSERT INTO cairn_migrations (version, name) VALUES (?1, ?2)")
                .bind(migration.version)
                .bind(migration.name)
                .execute(&mut *conn)
                .await?;
        }
        Ok::<_, sqlx::Error>(())
    }
    .await;
    finish(conn, result).await
}

/// Commit if `result` is Ok, otherwise roll back and return the error.
async fn finish<T>(
    conn: &mut SqliteConnection,
    result: Result<T, sqlx::Error>,
) -> Result<T, StoreError> {
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

async fn fetch_head(pool: &SqlitePool) -> Result<Position, StoreError> {
    Ok(
        sqlx::query_scalar("SELECT coalesce(max(position), 0) FROM events")
            .fetch_one(pool)
            .await?,
    )
}

async fn poll_head(pool: SqlitePool, head: watch::Sender<Position>) {
    loop {
        tokio::time::sleep(CROSS_PROCESS_POLL).await;
        if pool.is_closed() {
            return;
        }
        if let Ok(seen) = fetch_head(&pool).await {
            head.send_if_modified(|h| {
                let moved = seen > *h;
                *h = (*h).max(seen);
                moved
            });
        }
    }
}

struct SqliteBatchWriter {
    conn: SqliteConnection,
}

#[async_trait]
impl BatchWriter for SqliteBatchWriter {
    async fn write(
        &mut self,
        requests: &[AppendRequest],
    ) -> Result<Vec<Result<Appended, StoreError>>, StoreError> {
        write_batch(&mut self.conn, requests).await
    }
}

/// One batch in one `BEGIN IMMEDIATE` transaction.
///
/// Boxed with its lifetimes named: the compiler cannot prove an unboxed future of sqlx
/// executor calls on a borrowed connection `Send` for every lifetime.
fn write_batch<'a>(
    conn: &'a mut SqliteConnection,
    requests: &'a [AppendRequest],
) -> BoxFuture<'a, Result<Vec<Result<Appended, StoreError>>, StoreError>> {
    Box::pin(async move {
        sqlx::Executor::execute(&mut *conn, "BEGIN IMMEDIATE").await?;
        let result = insert_batch(conn, requests).await;
        finish(conn, result).await
    })
}

/// The statements of one batch, inside the writer's `BEGIN IMMEDIATE`.
fn insert_batch<'a>(
    conn: &'a mut SqliteConnection,
    requests: &'a [AppendRequest],
) -> BoxFuture<'a, Result<Vec<Result<Appended, StoreError>>, sqlx::Error>> {
    Box::pin(async move {
        let streams: Vec<&str> = requests.iter().map(|r| r.stream_id.as_str()).collect();
        let streams = serde_json::to_string(&streams).unwrap_or_else(|_| "[]".into());
        let current: Vec<(String, i64)> = sqlx::query_as(
            "SELECT stream_id, max(version) FROM events
                 WHERE stream_id IN (SELECT value FROM json_each(?1)) GROUP BY stream_id",
        )
        .bind(streams)
        .fetch_all(&mut *conn)
        .await?;
        let head: Position = sqlx::query_scalar("SELECT coalesce(max(position), 0) FROM events")
            .fetch_one(&mut *conn)
            .await?;
        let (rows, results) = plan(
            requests,
            current.into_iter().collect::<HashMap<_, _>>(),
            head,
        );
        if rows.is_empty() {
            return Ok(results);
        }
        // The whole batch as one JSON array, inserted by one statement.
        let batch: Vec<serde_json::Value> = rows
            .iter()
            .map(|row| {
                serde_json::json!([
                    row.position,
                    row.event.event_id.to_string(),
                    row.stream_id,
                    row.category,
                    row.version,
                    row.event.event_type,
                    row.event.schema_version,
                    row.event.payload.to_string(),
                    serde_json::to_string(&row.event.metadata).unwrap_or_else(|_| "{}".into()),
                    row.event
                        .occurred_at
                        .to_rfc3339_opts(SecondsFormat::Micros, true),
                ])
            })
            .collect();
        let batch = serde_json::Value::Array(batch).to_string();
        drop(rows);
        sqlx::query(
            "INSERT INTO events (position, event_id, stream_id, category, version, event_type,
                                 schema_version, payload, metadata, occurred_at)
             SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4, value ->> 5,
                    value ->> 6, value ->> 7, value ->> 8, value ->> 9
             FROM json_each(?1)",
        )
        .bind(batch)
        .execute(&mut *conn)
        .await?;
        Ok(results)
    })
}

fn decode(row: &SqliteRow) -> Result<Envelope, StoreError> {
    let id: String = row.try_get("event_id")?;
    let corrupt = || StoreError::Corrupt(id.clone());
    let event_id = Uuid::parse_str(&id).map_err(|_| corrupt())?;
    let payload: String = row.try_get("payload")?;
    let metadata: String = row.try_get("metadata")?;
    let occurred_at: String = row.try_get("occurred_at")?;
    Ok(Envelope {
        position: row.try_get("position")?,
        event_id,
        stream_id: row.try_get("stream_id")?,
        version: row.try_get("version")?,
        event_type: row.try_get("event_type")?,
        schema_version: row.try_get("schema_version")?,
        payload: serde_json::from_str(&payload).map_err(|_| corrupt())?,
        occurred_at: DateTime::parse_from_rfc3339(&occurred_at)
            .map_err(|_| corrupt())?
            .with_timezone(&Utc),
        metadata: parse_metadata(serde_json::from_str(&metadata).map_err(|_| corrupt())?, &id)?,
    })
}

/// The embedded server is the only process running projections (the data directory is
/// locked against a second server), so a lease is always granted.
struct LocalLease;

#[async_trait]
impl Lease for LocalLease {
    async fn is_held(&mut self) -> bool {
        true
    }
}

#[async_trait]
impl EventStore for SqliteStore {
    async fn append(&self, request: AppendRequest) -> Result<Appended, StoreError> {
        self.committer.append(request).await
    }

    async fn read_stream(&self, stream_id: &str) -> Result<Vec<Envelope>, StoreError> {
        let rows = sqlx::query(
            "SELECT position, event_id, stream_id, version, event_type, schema_version, payload, metadata, occurred_at
             FROM events WHERE stream_id = ?1 ORDER BY version",
        )
        .bind(stream_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(decode).collect()
    }

    async fn read_all(
        &self,
        after: Position,
        limit: usize,
        categories: &[&str],
    ) -> Result<Vec<Envelope>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = if categories.is_empty() {
            sqlx::query(
                "SELECT position, event_id, stream_id, version, event_type, schema_version, payload, metadata, occurred_at
                 FROM events WHERE position > ?1 ORDER BY position LIMIT ?2",
            )
            .bind(after)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?
        } else if let [category] = categories {
            sqlx::query(
                "SELECT position, event_id, stream_id, version, event_type, schema_version, payload, metadata, occurred_at
                 FROM events WHERE category = ?3 AND position > ?1 ORDER BY position LIMIT ?2",
            )
            .bind(after)
            .bind(limit)
            .bind(*category)
            .fetch_all(&self.pool)
            .await?
        } else {
            let categories = serde_json::to_string(categories).unwrap_or_else(|_| "[]".into());
            sqlx::query(
                "SELECT position, event_id, stream_id, version, event_type, schema_version, payload, metadata, occurred_at
                 FROM events WHERE category IN (SELECT value FROM json_each(?3)) AND position > ?1
                 ORDER BY position LIMIT ?2",
            )
            .bind(after)
            .bind(limit)
            .bind(categories)
            .fetch_all(&self.pool)
            .await?
        };
        rows.iter().map(decode).collect()
    }

    async fn head(&self) -> Result<Position, StoreError> {
        fetch_head(&self.pool).await
    }

    fn subscribe(&self) -> watch::Receiver<Position> {
        self.head.subscribe()
    }

    async fn try_lease(&self, _name: &str) -> Result<Option<Box<dyn Lease>>, StoreError> {
        Ok(Some(Box::new(LocalLease)))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    fn stats(&self) -> Arc<AppendStats> {
        self.stats.clone()
    }

    fn backend(&self) -> &'static str {
        "sqlite"
    }
}
