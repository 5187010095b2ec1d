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

use crate::group_commit::{BatchWriter, Committer, plan};
use crate::migrate::SQLITE as MIGRATIONS;
use crate::work::{BatchWork, WorkSignals, after, earliest_first, oldest_first};
use crate::{
    AppendRequest, AppendStats, Appended, DaySpan, DueIndex, DueItem, DueStatus, Envelope,
    EventStore, Lease, Outbox, OutboxMessage, OutboxStatus, Outcome, PendingItem, Position,
    QueuedMessage, Snapshot, StoreError, WorkStats,
};

/// How often another process's appends are looked for.
const CROSS_PROCESS_POLL: Duration = Duration::from_millis(250);

pub struct SqliteStore {
    pool: SqlitePool,
    /// Claims and settlements of due items and outbox messages: small writes beside the
    /// appends (SQLite serializes them with the writer's transactions).
    work: SqlitePool,
    signals: WorkSignals,
    committer: Committer,
    head: watch::Sender<Position>,
    stats: Arc<AppendStats>,
    /// This store's holder id. One process owns an embedded store, so a claim held by any
    /// other id is a previous run's and is taken over at once.
    holder: i64,
    work_stats: Arc<WorkStats>,
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
        let work = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options.clone())
            .await?;
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options.read_only(true))
            .await?;
        let signals = WorkSignals::new();

        let initial = fetch_head(&pool).await?;
        let (head, _) = watch::channel(initial);
        tokio::spawn(poll_head(pool.clone(), head.clone()));
        let stats = Arc::new(AppendStats::default());
        let committer = Committer::spawn(
            SqliteBatchWriter {
                conn: writer,
                signals: signals.clone(),
            },
            stats.clone(),
            head.clone(),
        );
        Ok(SqliteStore {
            pool,
            work,
            signals,
            committer,
            head,
            stats,
            holder: i64::from((Uuid::now_v7().as_u128() as u32) >> 1).max(1),
            work_stats: Arc::default(),
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
    signals: WorkSignals,
}

#[async_trait]
impl BatchWriter for SqliteBatchWriter {
    async fn write(
        &mut self,
        requests: &[AppendRequest],
    ) -> Result<Vec<Result<Appended, StoreError>>, StoreError> {
        let results = write_batch(&mut self.conn, requests).await?;
        self.signals.committed(&BatchWork::of(requests, &results));
        Ok(results)
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
        let streams: Vec<&str> = requests
            .iter()
            .flat_map(|r| r.parts().map(|(stream, _, _)| stream))
            .collect();
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
        write_work(conn, &BatchWork::of(requests, &results)).await?;
        Ok(results)
    })
}

fn millis(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

fn from_millis(ms: i64) -> DateTime<Utc> {
    DateTime::<Utc>::from_timestamp_millis(ms).unwrap_or_default()
}

/// A batch's due items and outbox messages, inside its transaction.
fn write_work<'a>(
    conn: &'a mut SqliteConnection,
    work: &'a BatchWork<'a>,
) -> BoxFuture<'a, Result<(), sqlx::Error>> {
    Box::pin(async move {
        let drops: Vec<&str> = work.drops().collect();
        if !drops.is_empty() {
            sqlx::query("DELETE FROM due_items WHERE key IN (SELECT value FROM json_each(?1))")
                .bind(serde_json::to_string(&drops).unwrap_or_else(|_| "[]".into()))
                .execute(&mut *conn)
                .await?;
        }
        let items: Vec<serde_json::Value> = work
            .schedules()
            .map(|i| serde_json::json!([i.key, i.stream_id, i.action, millis(i.due_at)]))
            .collect();
        if !items.is_empty() {
            sqlx::query(
                "INSERT INTO due_items (key, stream_id, action, due_at)
                 SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3 FROM json_each(?1) WHERE true
                 ON CONFLICT (key) DO UPDATE SET stream_id = excluded.stream_id,
                     action = excluded.action, due_at = excluded.due_at, claimed_until = NULL,
                     claimed_by = NULL",
            )
            .bind(serde_json::Value::Array(items).to_string())
            .execute(&mut *conn)
            .await?;
        }
        let now = millis(Utc::now());
        let messages: Vec<serde_json::Value> = work
            .outbox
            .iter()
            .map(|m| serde_json::json!([m.id.to_string(), m.kind, m.payload.to_string()]))
            .collect();
        if !messages.is_empty() {
            sqlx::query(
                "INSERT INTO outbox (id, kind, payload, queued_at, ready_at)
                 SELECT value ->> 0, value ->> 1, value ->> 2, ?2, ?2 FROM json_each(?1) WHERE true
                 ON CONFLICT (id) DO NOTHING",
            )
            .bind(serde_json::Value::Array(messages).to_string())
            .bind(now)
            .execute(&mut *conn)
            .await?;
        }
        Ok(())
    })
}

type QueuedRow = (String, String, String, i32, i64, Option<String>);

fn queued(row: QueuedRow) -> Result<QueuedMessage, StoreError> {
    let (id, kind, payload, attempts, queued_at, last_error) = row;
    let corrupt = || StoreError::Corrupt(format!("outbox message {id}"));
    Ok(QueuedMessage {
        message: OutboxMessage {
            id: Uuid::parse_str(&id).map_err(|_| corrupt())?,
            kind,
            payload: serde_json::from_str(&payload).map_err(|_| corrupt())?,
        },
        attempts,
        queued_at: from_millis(queued_at),
        last_error,
    })
}

/// Count the claims among `prev` holders that belonged to another holder.
fn taken_over(prev: impl Iterator<Item = Option<i64>>, me: i64) -> usize {
    prev.filter(|p| p.is_some_and(|p| p != me)).count()
}

#[async_trait]
impl DueIndex for SqliteStore {
    async fn next_due(&self) -> Result<Option<DateTime<Utc>>, StoreError> {
        let at: Option<i64> = sqlx::query_scalar(
            "SELECT min(t) FROM (
                 SELECT min(due_at) AS t FROM due_items WHERE claimed_until IS NULL
                 UNION ALL
                 SELECT min(claimed_until) FROM due_items WHERE claimed_until IS NOT NULL)",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(at.map(from_millis))
    }

    async fn claim_due(
        &self,
        now: DateTime<Utc>,
        limit: usize,
        hold: Duration,
    ) -> Result<Vec<DueItem>, StoreError> {
        // One transaction on the single connection of `work`, whose writes SQLite
        // serializes: two claims never take the same item.
        let mut tx = self.work.begin_with("BEGIN IMMEDIATE").await?;
        let rows: Vec<(String, String, String, i64, Option<i64>)> = sqlx::query_as(
            "SELECT key, stream_id, action, due_at, claimed_by FROM due_items
             WHERE (claimed_until IS NULL AND due_at <= ?1) OR claimed_until <= ?1
                OR (claimed_by IS NOT NULL AND claimed_by <> ?2)
             ORDER BY due_at LIMIT ?3",
        )
        .bind(millis(now))
        .bind(self.holder)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&mut *tx)
        .await?;
        let keys: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
        sqlx::query(
            "UPDATE due_items SET claimed_until = ?2, claimed_by = ?3
             WHERE key IN (SELECT value FROM json_each(?1))",
        )
        .bind(serde_json::to_string(&keys).unwrap_or_else(|_| "[]".into()))
        .bind(millis(after(now, hold)))
        .bind(self.holder)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.work_stats
            .due_taken_over(taken_over(rows.iter().map(|r| r.4), self.holder));
        Ok(earliest_first(rows.into_iter().map(
            |(key, stream, action, due_at, _)| (key, stream, action, from_millis(due_at)),
        )))
    }

    async fn renew_due(&self, keys: &[String], until: DateTime<Utc>) -> Result<u64, StoreError> {
        Ok(sqlx::query(
            "UPDATE due_items SET claimed_until = ?3
             WHERE key IN (SELECT value FROM json_each(?1)) AND claimed_by = ?2",
        )
        .bind(serde_json::to_string(keys).unwrap_or_else(|_| "[]".into()))
        .bind(self.holder)
        .bind(millis(until))
        .execute(&self.work)
        .await?
        .rows_affected())
    }

    async fn finish_due(&self, item: &DueItem) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM due_items WHERE key = ?1 AND due_at = ?2")
            .bind(&item.key)
            .bind(millis(item.due_at))
            .execute(&self.work)
            .await?;
        Ok(())
    }

    async fn retry_due(&self, item: &DueItem, at: DateTime<Utc>) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE due_items SET claimed_until = ?3, claimed_by = NULL
             WHERE key = ?1 AND due_at = ?2 AND claimed_by = ?4",
        )
        .bind(&item.key)
        .bind(millis(item.due_at))
        .bind(millis(at))
        .bind(self.holder)
        .execute(&self.work)
        .await?;
        Ok(())
    }

    async fn reschedule_due(
        &self,
        item: &DueItem,
        next: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let moved = sqlx::query(
            "UPDATE due_items SET due_at = ?3, claimed_until = NULL, claimed_by = NULL
             WHERE key = ?1 AND due_at = ?2 AND claimed_by = ?4",
        )
        .bind(&item.key)
        .bind(millis(item.due_at))
        .bind(millis(next))
        .bind(self.holder)
        .execute(&self.work)
        .await?
        .rows_affected()
            > 0;
        if moved {
            self.signals.bump_due();
        }
        Ok(moved)
    }

    async fn plan_due(&self, item: &DueItem, now: DateTime<Utc>) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO due_items (key, stream_id, action, due_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (key) DO UPDATE SET due_at = excluded.due_at
             WHERE due_items.claimed_until IS NULL AND due_items.due_at > ?5
               AND due_items.due_at <> excluded.due_at",
        )
        .bind(&item.key)
        .bind(&item.stream_id)
        .bind(&item.action)
        .bind(millis(item.due_at))
        .bind(millis(now))
        .execute(&self.work)
        .await?;
        self.signals.bump_due();
        Ok(())
    }

    async fn due_status(&self, now: DateTime<Utc>, next: usize) -> Result<DueStatus, StoreError> {
        let (depth, overdue, oldest): (i64, i64, Option<i64>) = sqlx::query_as(
            "SELECT count(*), count(*) FILTER (WHERE due_at <= ?1),
                    min(due_at) FILTER (WHERE due_at <= ?1)
             FROM due_items",
        )
        .bind(millis(now))
        .fetch_one(&self.pool)
        .await?;
        let rows: Vec<(String, String, String, i64, Option<i64>, Option<i64>)> = sqlx::query_as(
            "SELECT key, stream_id, action, due_at, claimed_by, claimed_until FROM due_items
             ORDER BY due_at, key LIMIT ?1",
        )
        .bind(i64::try_from(next).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await?;
        Ok(DueStatus {
            depth: u64::try_from(depth).unwrap_or(0),
            overdue: u64::try_from(overdue).unwrap_or(0),
            oldest_overdue: oldest.map(from_millis),
            next: rows
                .into_iter()
                .map(
                    |(key, stream_id, action, due_at, claimed_by, claimed_until)| PendingItem {
                        item: DueItem {
                            key,
                            stream_id,
                            action,
                            due_at: from_millis(due_at),
                        },
                        claimed_by,
                        claimed_until: claimed_until.map(from_millis),
                    },
                )
                .collect(),
        })
    }

    fn holder(&self) -> i64 {
        self.holder
    }

    fn work_stats(&self) -> Arc<WorkStats> {
        self.work_stats.clone()
    }

    fn due_changed(&self) -> watch::Receiver<u64> {
        self.signals.due.subscribe()
    }
}

#[async_trait]
impl Outbox for SqliteStore {
    async fn claim_outbox(
        &self,
        kind: &str,
        now: DateTime<Utc>,
        limit: usize,
        hold: Duration,
    ) -> Result<Vec<QueuedMessage>, StoreError> {
        let mut tx = self.work.begin_with("BEGIN IMMEDIATE").await?;
        let rows: Vec<(
            String,
            String,
            String,
            i32,
            i64,
            Option<String>,
            Option<i64>,
        )> = sqlx::query_as(
            "SELECT id, kind, payload, attempts, queued_at, last_error, claimed_by FROM outbox
                 WHERE state = 'queued' AND kind = ?1
                   AND (ready_at <= ?2 OR (claimed_by IS NOT NULL AND claimed_by <> ?3))
                 ORDER BY ready_at LIMIT ?4",
        )
        .bind(kind)
        .bind(millis(now))
        .bind(self.holder)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&mut *tx)
        .await?;
        let ids: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
        sqlx::query(
            "UPDATE outbox SET ready_at = ?2, attempts = attempts + 1, claimed_by = ?3
             WHERE id IN (SELECT value FROM json_each(?1))",
        )
        .bind(serde_json::to_string(&ids).unwrap_or_else(|_| "[]".into()))
        .bind(millis(after(now, hold)))
        .bind(self.holder)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.work_stats
            .outbox_taken_over(taken_over(rows.iter().map(|r| r.6), self.holder));
        let messages = rows
            .into_iter()
            .map(|(i, k, p, a, q, e, _)| queued((i, k, p, a, q, e)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(oldest_first(messages))
    }

    async fn renew_outbox(&self, ids: &[Uuid], until: DateTime<Utc>) -> Result<u64, StoreError> {
        let ids: Vec<String> = ids.iter().map(Uuid::to_string).collect();
        Ok(sqlx::query(
            "UPDATE outbox SET ready_at = ?3
             WHERE id IN (SELECT value FROM json_each(?1)) AND claimed_by = ?2
               AND state = 'queued'",
        )
        .bind(serde_json::to_string(&ids).unwrap_or_else(|_| "[]".into()))
        .bind(self.holder)
        .bind(millis(until))
        .execute(&self.work)
        .await?
        .rows_affected())
    }

    async fn next_ready(&self, kind: &str) -> Result<Option<DateTime<Utc>>, StoreError> {
        let at: Option<i64> = sqlx::query_scalar(
            "SELECT min(ready_at) FROM outbox WHERE state = 'queued' AND kind = ?1",
        )
        .bind(kind)
        .fetch_one(&self.pool)
        .await?;
        Ok(at.map(from_millis))
    }

    async fn settle(&self, id: Uuid, outcome: Outcome) -> Result<(), StoreError> {
        let id = id.to_string();
        let query = match &outcome {
            Outcome::Sent => sqlx::query(
                "UPDATE outbox SET state = 'sent', sent_at = ?2, last_error = NULL, claimed_by = NULL
                 WHERE id = ?1",
            )
            .bind(id)
            .bind(millis(Utc::now())),
            Outcome::Retry { error, at } => sqlx::query(
                "UPDATE outbox SET ready_at = ?2, last_error = ?3, claimed_by = NULL
                 WHERE id = ?1 AND state = 'queued'",
            )
            .bind(id)
            .bind(millis(*at))
            .bind(error),
            Outcome::Dead { error } => sqlx::query(
                "UPDATE outbox SET state = 'dead', last_error = ?2, claimed_by = NULL WHERE id = ?1",
            )
            .bind(id)
            .bind(error),
        };
        query.execute(&self.work).await?;
        Ok(())
    }

    async fn dead_letters(&self, limit: usize) -> Result<Vec<QueuedMessage>, StoreError> {
        let rows: Vec<QueuedRow> = sqlx::query_as(
            "SELECT id, kind, payload, attempts, queued_at, last_error FROM outbox
             WHERE state = 'dead' ORDER BY queued_at, id LIMIT ?1",
        )
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(queued).collect()
    }

    async fn revive(&self, id: Uuid) -> Result<bool, StoreError> {
        let revived = sqlx::query(
            "UPDATE outbox SET state = 'queued', attempts = 0, ready_at = ?2, claimed_by = NULL
             WHERE id = ?1 AND state = 'dead'",
        )
        .bind(id.to_string())
        .bind(millis(Utc::now()))
        .execute(&self.work)
        .await?
        .rows_affected()
            > 0;
        if revived {
            self.signals.bump_outbox();
        }
        Ok(revived)
    }

    async fn purge_sent(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        Ok(
            sqlx::query("DELETE FROM outbox WHERE state = 'sent' AND sent_at < ?1")
                .bind(millis(before))
                .execute(&self.work)
                .await?
                .rows_affected(),
        )
    }

    async fn outbox_status(&self) -> Result<OutboxStatus, StoreError> {
        let (queued, retrying, dead, oldest): (i64, i64, i64, Option<i64>) = sqlx::query_as(
            "SELECT count(*), count(*) FILTER (WHERE attempts > 0 AND claimed_by IS NULL),
                    (SELECT count(*) FROM outbox WHERE state = 'dead'), min(queued_at)
             FROM outbox WHERE state = 'queued'",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(OutboxStatus {
            queued: u64::try_from(queued).unwrap_or(0),
            retrying: u64::try_from(retrying).unwrap_or(0),
            dead: u64::try_from(dead).unwrap_or(0),
            oldest_queued: oldest.map(from_millis),
        })
    }

    fn outbox_changed(&self) -> watch::Receiver<u64> {
        self.signals.outbox.subscribe()
    }
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
        metadata: serde_json::from_str(&metadata).map_err(|_| corrupt())?,
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

    async fn read_stream_after(
        &self,
        stream_id: &str,
        version: i64,
    ) -> Result<Vec<Envelope>, StoreError> {
        let rows = sqlx::query(
            "SELECT position, event_id, stream_id, version, event_type, schema_version, payload, metadata, occurred_at
             FROM events WHERE stream_id = ?1 AND version > ?2 ORDER BY version",
        )
        .bind(stream_id)
        .bind(version)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(decode).collect()
    }

    async fn read_snapshot(
        &self,
        stream_id: &str,
        name: &str,
    ) -> Result<Option<Snapshot>, StoreError> {
        let row: Option<(i64, String)> = sqlx::query_as(
            "SELECT version, state FROM snapshots WHERE stream_id = ?1 AND name = ?2",
        )
        .bind(stream_id)
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|(version, state)| {
            serde_json::from_str(&state)
                .map(|state| Snapshot { version, state })
                .map_err(|e| StoreError::Corrupt(format!("the snapshot of {stream_id}: {e}")))
        })
        .transpose()
    }

    async fn write_snapshot(
        &self,
        stream_id: &str,
        name: &str,
        snapshot: &Snapshot,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO snapshots (stream_id, name, version, state) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (stream_id, name) DO UPDATE SET version = excluded.version, state = excluded.state
             WHERE snapshots.version < excluded.version",
        )
        .bind(stream_id)
        .bind(name)
        .bind(snapshot.version)
        .bind(snapshot.state.to_string())
        .execute(&self.work)
        .await?;
        Ok(())
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

    async fn read_by_actor(
        &self,
        actor: &str,
        category: &str,
        after: Position,
        up_to: Position,
        limit: usize,
    ) -> Result<Vec<Envelope>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = sqlx::query(
            "SELECT position, event_id, stream_id, version, event_type, schema_version, payload, metadata, occurred_at
             FROM events WHERE json_extract(metadata, '$.actor') = ?1 AND category = ?2 AND position > ?3 AND position <= ?4
             ORDER BY position LIMIT ?5",
        )
        .bind(actor)
        .bind(category)
        .bind(after)
        .bind(up_to)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(decode).collect()
    }

    async fn days_by_actor(
        &self,
        actor: &str,
        category: &str,
        after: Position,
        up_to: Position,
        limit: usize,
    ) -> Result<Vec<DaySpan>, StoreError> {
        let rows: Vec<(String, i64, i64, i64)> = sqlx::query_as(
            "SELECT substr(occurred_at, 1, 10) AS day, count(*), min(position), max(position)
             FROM (SELECT position, occurred_at FROM events
                   WHERE json_extract(metadata, '$.actor') = ?1 AND category = ?2 AND position > ?3 AND position <= ?4
                   ORDER BY position LIMIT ?5)
             GROUP BY day ORDER BY day",
        )
        .bind(actor)
        .bind(category)
        .bind(after)
        .bind(up_to)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await?;
        super::day_spans(rows)
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
