//! The production event store on Postgres.
//!
//! Appends are group-committed (see `group_commit`). Each batch runs in one transaction
//! that first takes a transaction-scoped advisory lock, so exactly one batch at a time, in
//! any process, reads the head and the stream versions and inserts. Positions are
//! therefore dense and become visible in order: a reader that has seen position N has
//! seen everything before it. The price is one writer at a time per database, which group
//! commit pays back by putting many appends in each transaction.
//!
//! Wake-ups: the batch sends `NOTIFY cairn_events` with the new head; every process
//! LISTENs from the moment it opens the store. When the listener's connection is lost,
//! notifications sent meanwhile are lost with it: on reconnecting, the head is read again
//! and every sleeper is woken to look for itself. Once a minute the listener's connection
//! re-reads the head, which is also its keep-alive: an idle process sends nothing else.
//!
//! Claims: the listener's connection also holds a session advisory lock on this process's
//! holder id for as long as the process lives (see `work`). Postgres frees the lock the
//! moment the connection closes, a `kill -9` included, so a claim whose holder's lock is
//! free (`pg_locks`) is taken over at once by whoever claims next.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions, PgRow};
use sqlx::{Connection, PgConnection, Row};
use tokio::sync::watch;
use uuid::Uuid;

use crate::group_commit::{BatchWriter, Committer, plan};
use crate::migrate::POSTGRES as MIGRATIONS;
use crate::work::{BatchWork, WorkSignals, after, earliest_first, oldest_first};
use crate::{
    AppendRequest, AppendStats, Appended, DaySpan, DueIndex, DueItem, DueStatus, Envelope,
    EventStore, Lease, Outbox, OutboxMessage, OutboxStatus, Outcome, PendingItem, Position,
    QueuedMessage, Snapshot, StoreError, WorkStats,
};

/// Advisory-lock class for Cairn's own locks (the first key of the two-key form).
pub const LOCK_CLASS: i32 = 0x4361_6972; // "Cair"
/// Second key: serializes appends.
pub const APPEND_LOCK: i32 = 1;
/// Second key: serializes migrations.
const MIGRATE_LOCK: i32 = 2;
/// Class for named leases (second key is `hashtext(name)`).
const LEASE_CLASS: i32 = 0x4361_6973;
/// Class for process holder ids (second key is the id).
pub const HOLDER_CLASS: i32 = 0x4361_6974;
/// How often an idle listener checks its connection (and re-reads the head).
const KEEP_ALIVE: Duration = Duration::from_secs(60);
/// The holder ids whose process is alive: those whose advisory lock is held, in this
/// database. Spliced into the claim statements.
const ALIVE: &str = "SELECT objid::bigint FROM pg_locks
     WHERE locktype = 'advisory' AND classid = 1130457460::oid AND objsubid = 2 AND granted
       AND database = (SELECT oid FROM pg_database WHERE datname = current_database())";
const CHANNEL: &str = "cairn_events";
/// Notified when a due item is scheduled, and when an outbox message is queued.
const DUE_CHANNEL: &str = "cairn_due";
const OUTBOX_CHANNEL: &str = "cairn_outbox";

pub struct PostgresStore {
    pool: PgPool,
    committer: Committer,
    head: watch::Sender<Position>,
    signals: WorkSignals,
    stats: Arc<AppendStats>,
    holder: Arc<AtomicI64>,
    work_stats: Arc<WorkStats>,
    /// Dropped with the store: stops the listener, which closes its connection and so
    /// frees the holder lock.
    _listening: tokio::sync::oneshot::Sender<()>,
}

impl PostgresStore {
    #[tracing::instrument(skip_all)]
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let options = PgConnectOptions::from_str(url)?.application_name("cairn");
        let options_for_listener = options.clone();
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options)
            .await?;
        migrate(&pool).await?;

        let initial = fetch_head(&pool).await?;
        let (head, _) = watch::channel(initial);
        // Listen before anyone reads, so no append committed after a read goes unnoticed.
        // The listener's connection comes from a pool of its own: it holds the holder lock,
        // which must never be lent to other queries, and closing that pool when the store
        // is dropped frees the lock.
        let listener_pool = PgPoolOptions::new()
            .max_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options_for_listener)
            .await?;
        let mut listener = PgListener::connect_with(&listener_pool).await?;
        listener
            .listen_all([CHANNEL, DUE_CHANNEL, OUTBOX_CHANNEL])
            .await?;
        let holder = Arc::new(AtomicI64::new(take_holder(&mut listener, None).await?));
        tracing::info!(
            holder = holder.load(Ordering::Relaxed),
            "holding claims as this id"
        );
        let signals = WorkSignals::new();
        let (listening, stopped) = tokio::sync::oneshot::channel();
        tokio::spawn(follow_notifications(
            listener,
            listener_pool,
            pool.clone(),
            head.clone(),
            signals.clone(),
            holder.clone(),
            stopped,
        ));

        let stats = Arc::new(AppendStats::default());
        let committer = Committer::spawn(
            PgBatchWriter {
                pool: pool.clone(),
                signals: signals.clone(),
            },
            stats.clone(),
            head.clone(),
        );
        Ok(PostgresStore {
            pool,
            committer,
            head,
            signals,
            stats,
            holder,
            work_stats: Arc::default(),
            _listening: listening,
        })
    }

    /// The connection pool, for tests and administrative commands.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

async fn migrate(pool: &PgPool) -> Result<(), StoreError> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1, $2)")
        .bind(LOCK_CLASS)
        .bind(MIGRATE_LOCK)
        .execute(&mut *tx)
        .await?;
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS cairn_migrations (
             version BIGINT PRIMARY KEY,
             name TEXT NOT NULL,
             applied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
    )
    .execute(&mut *tx)
    .await?;
    let applied: Vec<i64> = sqlx::query_scalar("SELECT version FROM cairn_migrations")
        .fetch_all(&mut *tx)
        .await?;
    for migration in MIGRATIONS.iter().filter(|m| !applied.contains(&m.version)) {
        tracing::info!(
            version = migration.version,
            name = migration.name,
            "applying migration"
        );
        sqlx::raw_sql(migration.sql).execute(&mut *tx).await?;
        sqlx::query("INSERT INTO cairn_migrations (version, name) VALUES ($1, $2)")
            .bind(migration.version)
            .bind(migration.name)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(())
}

async fn fetch_head(pool: &PgPool) -> Result<Position, StoreError> {
    Ok(
        sqlx::query_scalar("SELECT coalesce(max(position), 0)::bigint FROM events")
            .fetch_one(pool)
            .await?,
    )
}

/// Lock a holder id on the listener's connection: `prefer` if it is free (the id this
/// process had before its connection was lost), else a new random one.
async fn take_holder(listener: &mut PgListener, prefer: Option<i64>) -> Result<i64, StoreError> {
    let mut candidate = prefer;
    for _ in 0..16 {
        // Random positive ids: an id is free unless a live process holds it.
        let id = candidate
            .take()
            .unwrap_or_else(|| i64::from((uuid::Uuid::now_v7().as_u128() as u32) >> 1).max(1));
        let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1, $2)")
            .bind(HOLDER_CLASS)
            .bind(i32::try_from(id).unwrap_or(1))
            .fetch_one(&mut *listener)
            .await?;
        if got {
            return Ok(id);
        }
    }
    Err(StoreError::Invalid("no free holder id".into()))
}

/// After the listener's connection was lost: take the holder id again (claims renewed
/// meanwhile may have been taken over: they are done at least once), wake every sleeper to
/// look at what was scheduled or queued unheard, and read the head.
async fn recover(
    listener: &mut PgListener,
    pool: &PgPool,
    signals: &WorkSignals,
    holder: &AtomicI64,
) -> Option<Position> {
    let before = holder.load(Ordering::Relaxed);
    match take_holder(listener, Some(before)).await {
        Ok(id) => {
            if id != before {
                tracing::warn!(before, now = id, "holder id changed after a reconnect");
            }
            holder.store(id, Ordering::Relaxed);
        }
        Err(error) => tracing::warn!(%error, "could not take the holder id again"),
    }
    signals.bump_due();
    signals.bump_outbox();
    fetch_head(pool).await.ok()
}

async fn follow_notifications(
    mut listener: PgListener,
    listener_pool: PgPool,
    pool: PgPool,
    head: watch::Sender<Position>,
    signals: WorkSignals,
    holder: Arc<AtomicI64>,
    mut stopped: tokio::sync::oneshot::Receiver<()>,
) {
    let advance = |seen: Position| {
        head.send_if_modified(|h| {
            let moved = seen > *h;
            *h = (*h).max(seen);
            moved
        });
    };
    loop {
        let received = tokio::select! {
            _ = &mut stopped => {
                drop(listener);
                listener_pool.close().await;
                return;
            }
            received = tokio::time::timeout(KEEP_ALIVE, listener.try_recv()) => received,
        };
        match received {
            Ok(Ok(Some(notification))) => match notification.channel() {
                DUE_CHANNEL => signals.bump_due(),
                OUTBOX_CHANNEL => signals.bump_outbox(),
                _ => {
                    if let Ok(seen) = notification.payload().parse::<Position>() {
                        advance(seen);
                    }
                }
            },
            Ok(Ok(None)) => {
                tracing::warn!("event notifications interrupted; reconnected");
                if let Some(seen) = recover(&mut listener, &pool, &signals, &holder).await {
                    advance(seen);
                }
            }
            Ok(Err(error)) => {
                tracing::warn!(%error, "event notifications interrupted; reconnecting");
                tokio::time::sleep(Duration::from_millis(250)).await;
                if let Some(seen) = recover(&mut listener, &pool, &signals, &holder).await {
                    advance(seen);
                }
            }
            Err(_) => {
                // The keep-alive, on the listener's own connection: a connection that
                // died silently fails here, and the next receive reconnects.
                let seen: Result<Position, _> =
                    sqlx::query_scalar("SELECT coalesce(max(position), 0)::bigint FROM events")
                        .fetch_one(&mut listener)
                        .await;
                match seen {
                    Ok(seen) => advance(seen),
                    Err(error) => tracing::warn!(%error, "event listener keep-alive failed"),
                }
            }
        }
    }
}

struct PgBatchWriter {
    pool: PgPool,
    signals: WorkSignals,
}

#[async_trait]
impl BatchWriter for PgBatchWriter {
    async fn write(
        &mut self,
        requests: &[AppendRequest],
    ) -> Result<Vec<Result<Appended, StoreError>>, StoreError> {
        let mut tx = self.pool.begin().await?;
        // Statements after this one see every batch committed before we got the lock.
        sqlx::query("SELECT pg_advisory_xact_lock($1, $2)")
            .bind(LOCK_CLASS)
            .bind(APPEND_LOCK)
            .execute(&mut *tx)
            .await?;
        let streams: Vec<&str> = requests
            .iter()
            .flat_map(|r| r.parts().map(|(stream, _, _)| stream))
            .collect();
        // Each stream's version (one backward index probe per stream: `= ANY($1) GROUP BY`
        // lets a generic plan scan the whole log), and the head as the row without a stream.
        let found: Vec<(Option<String>, i64)> = sqlx::query_as(
            "SELECT s.stream_id, last.version
             FROM unnest($1::text[]) AS s(stream_id)
             CROSS JOIN LATERAL (
                 SELECT version FROM events e WHERE e.stream_id = s.stream_id
                 ORDER BY version DESC LIMIT 1
             ) AS last
             UNION ALL
             SELECT NULL, coalesce(max(position), 0)::bigint FROM events",
        )
        .bind(&streams)
        .fetch_all(&mut *tx)
        .await?;
        let mut head: Position = 0;
        let mut current = HashMap::with_capacity(found.len());
        for (stream, version) in found {
            match stream {
                Some(stream) => {
                    current.insert(stream, version);
                }
                None => head = version,
            }
        }
        let (rows, results) = plan(requests, current, head);
        if rows.is_empty() {
            tx.rollback().await?;
            return Ok(results);
        }

        let mut positions = Vec::with_capacity(rows.len());
        let mut ids = Vec::with_capacity(rows.len());
        let mut stream_ids = Vec::with_capacity(rows.len());
        let mut categories = Vec::with_capacity(rows.len());
        let mut versions = Vec::with_capacity(rows.len());
        let mut types = Vec::with_capacity(rows.len());
        let mut schema_versions = Vec::with_capacity(rows.len());
        let mut payloads = Vec::with_capacity(rows.len());
        let mut metadata = Vec::with_capacity(rows.len());
        let mut occurred = Vec::with_capacity(rows.len());
        for row in &rows {
            positions.push(row.position);
            ids.push(row.event.event_id);
            stream_ids.push(row.stream_id);
            categories.push(row.category);
            versions.push(row.version);
            types.push(row.event.event_type.as_str());
            schema_versions.push(row.event.schema_version);
            payloads.push(row.event.payload.to_string());
            metadata
                .push(serde_json::to_string(&row.event.metadata).unwrap_or_else(|_| "{}".into()));
            occurred.push(row.event.occurred_at);
        }
        let last = positions.last().copied().unwrap_or(head);
        sqlx::query(
            // The notification is delivered at commit, and only if it commits.
            "WITH inserted AS (
                 INSERT INTO events (position, event_id, stream_id, category, version, event_type,
                                     schema_version, payload, metadata, occurred_at)
                 SELECT p, e, s, c, v, t, sv, pl::jsonb, md::jsonb, o
                 FROM UNNEST($1::bigint[], $2::uuid[], $3::text[], $4::text[], $5::bigint[],
                             $6::text[], $7::int[], $8::text[], $9::text[], $10::timestamptz[])
                      AS u(p, e, s, c, v, t, sv, pl, md, o)
             )
             SELECT pg_notify($11, $12)",
        )
        .bind(&positions)
        .bind(&ids)
        .bind(&stream_ids)
        .bind(&categories)
        .bind(&versions)
        .bind(&types)
        .bind(&schema_versions)
        .bind(&payloads)
        .bind(&metadata)
        .bind(&occurred)
        .bind(CHANNEL)
        .bind(last.to_string())
        .execute(&mut *tx)
        .await?;
        let work = BatchWork::of(requests, &results);
        write_work(&mut tx, &work).await?;
        tx.commit().await?;
        self.signals.committed(&work);
        Ok(results)
    }
}

/// A batch's due items and outbox messages, inside its transaction. Each statement also
/// notifies the other processes, at commit.
async fn write_work(tx: &mut PgConnection, work: &BatchWork<'_>) -> Result<(), sqlx::Error> {
    let drops: Vec<&str> = work.drops().collect();
    if !drops.is_empty() {
        sqlx::query("DELETE FROM due_items WHERE key = ANY($1)")
            .bind(&drops)
            .execute(&mut *tx)
            .await?;
    }
    let items: Vec<&DueItem> = work.schedules().collect();
    if !items.is_empty() {
        let keys: Vec<&str> = items.iter().map(|i| i.key.as_str()).collect();
        let streams: Vec<&str> = items.iter().map(|i| i.stream_id.as_str()).collect();
        let actions: Vec<&str> = items.iter().map(|i| i.action.as_str()).collect();
        let due: Vec<DateTime<Utc>> = items.iter().map(|i| i.due_at).collect();
        sqlx::query(
            "WITH scheduled AS (
                 INSERT INTO due_items (key, stream_id, action, due_at)
                 SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::timestamptz[])
                 ON CONFLICT (key) DO UPDATE SET stream_id = excluded.stream_id,
                     action = excluded.action, due_at = excluded.due_at, claimed_until = NULL,
                     claimed_by = NULL
             )
             SELECT pg_notify($5, '')",
        )
        .bind(&keys)
        .bind(&streams)
        .bind(&actions)
        .bind(&due)
        .bind(DUE_CHANNEL)
        .execute(&mut *tx)
        .await?;
    }
    if !work.outbox.is_empty() {
        let ids: Vec<Uuid> = work.outbox.iter().map(|m| m.id).collect();
        let kinds: Vec<&str> = work.outbox.iter().map(|m| m.kind.as_str()).collect();
        let payloads: Vec<String> = work.outbox.iter().map(|m| m.payload.to_string()).collect();
        sqlx::query(
            // Times from the application's clock, as the workers' claims compare them.
            "WITH queued AS (
                 INSERT INTO outbox (id, kind, payload, queued_at, ready_at)
                 SELECT i, k, p::jsonb, $5, $5
                 FROM UNNEST($1::uuid[], $2::text[], $3::text[]) AS u(i, k, p)
                 ON CONFLICT (id) DO NOTHING
             )
             SELECT pg_notify($4, '')",
        )
        .bind(&ids)
        .bind(&kinds)
        .bind(&payloads)
        .bind(OUTBOX_CHANNEL)
        .bind(Utc::now())
        .execute(&mut *tx)
        .await?;
    }
    Ok(())
}

type QueuedRow = (
    Uuid,
    String,
    serde_json::Value,
    i32,
    DateTime<Utc>,
    Option<String>,
);

fn queued(row: QueuedRow) -> QueuedMessage {
    let (id, kind, payload, attempts, queued_at, last_error) = row;
    QueuedMessage {
        message: OutboxMessage { id, kind, payload },
        attempts,
        queued_at,
        last_error,
    }
}

type ClaimedRow = (String, String, String, DateTime<Utc>, Option<i64>);

/// Count the claims among `prev` holders that belonged to another process.
fn taken_over(prev: impl Iterator<Item = Option<i64>>, me: i64) -> usize {
    prev.filter(|p| p.is_some_and(|p| p != me)).count()
}

#[async_trait]
impl DueIndex for PostgresStore {
    async fn next_due(&self) -> Result<Option<DateTime<Utc>>, StoreError> {
        // Both halves walk a partial index: unclaimed items by due time, claims by expiry.
        Ok(sqlx::query_scalar(
            "SELECT least(
                 (SELECT min(due_at) FROM due_items WHERE claimed_until IS NULL),
                 (SELECT min(claimed_until) FROM due_items WHERE claimed_until IS NOT NULL))",
        )
        .fetch_one(&self.pool)
        .await?)
    }

    async fn claim_due(
        &self,
        now: DateTime<Utc>,
        limit: usize,
        hold: Duration,
    ) -> Result<Vec<DueItem>, StoreError> {
        let me = self.holder();
        let rows: Vec<ClaimedRow> = sqlx::query_as(&format!(
            "UPDATE due_items d SET claimed_until = $2, claimed_by = $4
             FROM (SELECT key, claimed_by AS prev FROM due_items
                   WHERE (claimed_until IS NULL AND due_at <= $1) OR claimed_until <= $1
                      OR (claimed_by IS NOT NULL AND claimed_by <> $4
                          AND claimed_by NOT IN ({ALIVE}))
                   ORDER BY due_at LIMIT $3 FOR UPDATE SKIP LOCKED) AS c
             WHERE d.key = c.key
             RETURNING d.key, d.stream_id, d.action, d.due_at, c.prev"
        ))
        .bind(now)
        .bind(after(now, hold))
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .bind(me)
        .fetch_all(&self.pool)
        .await?;
        self.work_stats
            .due_taken_over(taken_over(rows.iter().map(|r| r.4), me));
        Ok(earliest_first(
            rows.into_iter().map(|(k, s, a, d, _)| (k, s, a, d)),
        ))
    }

    async fn renew_due(&self, keys: &[String], until: DateTime<Utc>) -> Result<u64, StoreError> {
        Ok(sqlx::query(
            "UPDATE due_items SET claimed_until = $3 WHERE key = ANY($1) AND claimed_by = $2",
        )
        .bind(keys)
        .bind(self.holder())
        .bind(until)
        .execute(&self.pool)
        .await?
        .rows_affected())
    }

    async fn finish_due(&self, item: &DueItem) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM due_items WHERE key = $1 AND due_at = $2")
            .bind(&item.key)
            .bind(item.due_at)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn retry_due(&self, item: &DueItem, at: DateTime<Utc>) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE due_items SET claimed_until = $3, claimed_by = NULL
             WHERE key = $1 AND due_at = $2 AND claimed_by = $4",
        )
        .bind(&item.key)
        .bind(item.due_at)
        .bind(at)
        .bind(self.holder())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn reschedule_due(
        &self,
        item: &DueItem,
        next: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let moved = sqlx::query(
            "WITH moved AS (
                 UPDATE due_items SET due_at = $3, claimed_until = NULL, claimed_by = NULL
                 WHERE key = $1 AND due_at = $2 AND claimed_by = $4 RETURNING key
             )
             SELECT pg_notify($5, '') FROM moved",
        )
        .bind(&item.key)
        .bind(item.due_at)
        .bind(next)
        .bind(self.holder())
        .bind(DUE_CHANNEL)
        .execute(&self.pool)
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
            "WITH planned AS (
                 INSERT INTO due_items (key, stream_id, action, due_at) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (key) DO UPDATE SET due_at = excluded.due_at
                 WHERE due_items.claimed_until IS NULL AND due_items.due_at > $5
                   AND due_items.due_at <> excluded.due_at
                 RETURNING key
             )
             SELECT pg_notify($6, '') FROM planned",
        )
        .bind(&item.key)
        .bind(&item.stream_id)
        .bind(&item.action)
        .bind(item.due_at)
        .bind(now)
        .bind(DUE_CHANNEL)
        .execute(&self.pool)
        .await?;
        self.signals.bump_due();
        Ok(())
    }

    async fn due_status(&self, now: DateTime<Utc>, next: usize) -> Result<DueStatus, StoreError> {
        let (depth, overdue, oldest): (i64, i64, Option<DateTime<Utc>>) = sqlx::query_as(
            "SELECT count(*), count(*) FILTER (WHERE due_at <= $1),
                    min(due_at) FILTER (WHERE due_at <= $1)
             FROM due_items",
        )
        .bind(now)
        .fetch_one(&self.pool)
        .await?;
        // Each half walks a partial index; the claimed half is small.
        let rows: Vec<(
            String,
            String,
            String,
            DateTime<Utc>,
            Option<i64>,
            Option<DateTime<Utc>>,
        )> = sqlx::query_as(
            "SELECT * FROM (
                     (SELECT key, stream_id, action, due_at, claimed_by, claimed_until
                      FROM due_items WHERE claimed_until IS NULL ORDER BY due_at LIMIT $1)
                     UNION ALL
                     (SELECT key, stream_id, action, due_at, claimed_by, claimed_until
                      FROM due_items WHERE claimed_until IS NOT NULL ORDER BY due_at LIMIT $1)
                 ) AS n ORDER BY due_at, key LIMIT $1",
        )
        .bind(i64::try_from(next).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await?;
        Ok(DueStatus {
            depth: u64::try_from(depth).unwrap_or(0),
            overdue: u64::try_from(overdue).unwrap_or(0),
            oldest_overdue: oldest,
            next: rows
                .into_iter()
                .map(
                    |(key, stream_id, action, due_at, claimed_by, claimed_until)| PendingItem {
                        item: DueItem {
                            key,
                            stream_id,
                            action,
                            due_at,
                        },
                        claimed_by,
                        claimed_until,
                    },
                )
                .collect(),
        })
    }

    fn holder(&self) -> i64 {
        self.holder.load(Ordering::Relaxed)
    }

    fn work_stats(&self) -> Arc<WorkStats> {
        self.work_stats.clone()
    }

    fn due_changed(&self) -> watch::Receiver<u64> {
        self.signals.due.subscribe()
    }
}

#[async_trait]
impl Outbox for PostgresStore {
    async fn claim_outbox(
        &self,
        kind: &str,
        now: DateTime<Utc>,
        limit: usize,
        hold: Duration,
    ) -> Result<Vec<QueuedMessage>, StoreError> {
        let me = self.holder();
        let rows: Vec<(
            Uuid,
            String,
            serde_json::Value,
            i32,
            DateTime<Utc>,
            Option<String>,
            Option<i64>,
        )> = sqlx::query_as(&format!(
            "UPDATE outbox o SET ready_at = $3, attempts = o.attempts + 1, claimed_by = $5
             FROM (SELECT id, claimed_by AS prev FROM outbox
                   WHERE state = 'queued' AND kind = $1
                     AND (ready_at <= $2
                          OR (claimed_by IS NOT NULL AND claimed_by <> $5
                              AND claimed_by NOT IN ({ALIVE})))
                   ORDER BY ready_at LIMIT $4 FOR UPDATE SKIP LOCKED) AS c
             WHERE o.id = c.id
             RETURNING o.id, o.kind, o.payload, o.attempts - 1, o.queued_at, o.last_error, c.prev"
        ))
        .bind(kind)
        .bind(now)
        .bind(after(now, hold))
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .bind(me)
        .fetch_all(&self.pool)
        .await?;
        self.work_stats
            .outbox_taken_over(taken_over(rows.iter().map(|r| r.6), me));
        Ok(oldest_first(
            rows.into_iter()
                .map(|(i, k, p, a, q, e, _)| queued((i, k, p, a, q, e)))
                .collect(),
        ))
    }

    async fn renew_outbox(&self, ids: &[Uuid], until: DateTime<Utc>) -> Result<u64, StoreError> {
        Ok(sqlx::query(
            "UPDATE outbox SET ready_at = $3
             WHERE id = ANY($1) AND claimed_by = $2 AND state = 'queued'",
        )
        .bind(ids)
        .bind(self.holder())
        .bind(until)
        .execute(&self.pool)
        .await?
        .rows_affected())
    }

    async fn next_ready(&self, kind: &str) -> Result<Option<DateTime<Utc>>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT min(ready_at) FROM outbox WHERE state = 'queued' AND kind = $1",
        )
        .bind(kind)
        .fetch_one(&self.pool)
        .await?)
    }

    async fn settle(&self, id: Uuid, outcome: Outcome) -> Result<(), StoreError> {
        let query = match &outcome {
            Outcome::Sent => sqlx::query(
                "UPDATE outbox SET state = 'sent', sent_at = $2, last_error = NULL, claimed_by = NULL
                 WHERE id = $1",
            )
            .bind(id)
            .bind(Utc::now()),
            Outcome::Retry { error, at } => sqlx::query(
                "UPDATE outbox SET ready_at = $2, last_error = $3, claimed_by = NULL
                 WHERE id = $1 AND state = 'queued'",
            )
            .bind(id)
            .bind(*at)
            .bind(error),
            Outcome::Dead { error } => sqlx::query(
                "UPDATE outbox SET state = 'dead', last_error = $2, claimed_by = NULL WHERE id = $1",
            )
            .bind(id)
            .bind(error),
        };
        query.execute(&self.pool).await?;
        Ok(())
    }

    async fn dead_letters(&self, limit: usize) -> Result<Vec<QueuedMessage>, StoreError> {
        let rows: Vec<QueuedRow> = sqlx::query_as(
            "SELECT id, kind, payload, attempts, queued_at, last_error FROM outbox
             WHERE state = 'dead' ORDER BY queued_at, id LIMIT $1",
        )
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(queued).collect())
    }

    async fn revive(&self, id: Uuid) -> Result<bool, StoreError> {
        let revived = sqlx::query(
            "UPDATE outbox SET state = 'queued', attempts = 0, ready_at = $2, claimed_by = NULL
             WHERE id = $1 AND state = 'dead'",
        )
        .bind(id)
        .bind(Utc::now())
        .execute(&self.pool)
        .await?
        .rows_affected()
            > 0;
        if revived {
            sqlx::query("SELECT pg_notify($1, '')")
                .bind(OUTBOX_CHANNEL)
                .execute(&self.pool)
                .await?;
            self.signals.bump_outbox();
        }
        Ok(revived)
    }

    async fn purge_sent(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        Ok(
            sqlx::query("DELETE FROM outbox WHERE state = 'sent' AND sent_at < $1")
                .bind(before)
                .execute(&self.pool)
                .await?
                .rows_affected(),
        )
    }

    async fn outbox_status(&self) -> Result<OutboxStatus, StoreError> {
        // Each count walks a partial index; sent messages are not counted.
        let (queued, retrying, dead, oldest): (i64, i64, i64, Option<DateTime<Utc>>) =
            sqlx::query_as(
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
            oldest_queued: oldest,
        })
    }

    fn outbox_changed(&self) -> watch::Receiver<u64> {
        self.signals.outbox.subscribe()
    }
}

fn decode(row: &PgRow) -> Result<Envelope, StoreError> {
    let event_id: Uuid = row.try_get("event_id")?;
    // Read straight into its type, not through a JSON value first.
    let metadata = row
        .try_get::<sqlx::types::Json<crate::Metadata>, _>("metadata")
        .map(|json| json.0)
        .map_err(|_| StoreError::Corrupt(event_id.to_string()))?;
    let occurred_at: DateTime<Utc> = row.try_get("occurred_at")?;
    Ok(Envelope {
        position: row.try_get("position")?,
        event_id,
        stream_id: row.try_get("stream_id")?,
        version: row.try_get("version")?,
        event_type: row.try_get("event_type")?,
        schema_version: row.try_get("schema_version")?,
        payload: row.try_get("payload")?,
        occurred_at,
        metadata,
    })
}

struct PgLease {
    conn: Option<PgConnection>,
}

#[async_trait]
impl Lease for PgLease {
    async fn is_held(&mut self) -> bool {
        // A session advisory lock lives exactly as long as its connection.
        let Some(conn) = self.conn.as_mut() else {
            return false;
        };
        if conn.ping().await.is_ok() {
            true
        } else {
            self.conn = None;
            false
        }
    }
}

#[async_trait]
impl EventStore for PostgresStore {
    async fn append(&self, request: AppendRequest) -> Result<Appended, StoreError> {
        self.committer.append(request).await
    }

    async fn read_stream(&self, stream_id: &str) -> Result<Vec<Envelope>, StoreError> {
        let rows = sqlx::query(
            "SELECT position, event_id, stream_id, version, event_type, schema_version, payload, metadata, occurred_at
             FROM events WHERE stream_id = $1 ORDER BY version",
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
             FROM events WHERE stream_id = $1 AND version > $2 ORDER BY version",
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
            "SELECT version, state::text FROM snapshots WHERE stream_id = $1 AND name = $2",
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
            "INSERT INTO snapshots (stream_id, name, version, state) VALUES ($1, $2, $3, $4::jsonb)
             ON CONFLICT (stream_id, name) DO UPDATE SET version = excluded.version, state = excluded.state
             WHERE snapshots.version < excluded.version",
        )
        .bind(stream_id)
        .bind(name)
        .bind(snapshot.version)
        .bind(snapshot.state.to_string())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn read_streams(
        &self,
        stream_ids: &[String],
    ) -> Result<HashMap<String, Vec<Envelope>>, StoreError> {
        // One index walk per stream, as `read_stream` does (see the version query in
        // `write` for why not `= ANY`).
        let rows = sqlx::query(
            "SELECT e.position, e.event_id, e.stream_id, e.version, e.event_type, e.schema_version,
                    e.payload, e.metadata, e.occurred_at
             FROM unnest($1::text[]) AS s(stream_id)
             CROSS JOIN LATERAL (
                 SELECT * FROM events e WHERE e.stream_id = s.stream_id ORDER BY version
             ) AS e",
        )
        .bind(stream_ids)
        .fetch_all(&self.pool)
        .await?;
        let mut streams: HashMap<String, Vec<Envelope>> = HashMap::new();
        for row in &rows {
            let event = decode(row)?;
            streams
                .entry(event.stream_id.clone())
                .or_default()
                .push(event);
        }
        // A lateral join's order is the plan's, not a promise.
        for events in streams.values_mut() {
            events.sort_by_key(|e| e.version);
        }
        Ok(streams)
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
                 FROM events WHERE position > $1 ORDER BY position LIMIT $2",
            )
            .bind(after)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?
        } else if let [category] = categories {
            // Equality on the index's leading column lets Postgres walk (category, position)
            // in order and stop at the limit, whatever its statistics say; `= ANY` cannot.
            sqlx::query(
                "SELECT position, event_id, stream_id, version, event_type, schema_version, payload, metadata, occurred_at
                 FROM events WHERE category = $3 AND position > $1 ORDER BY position LIMIT $2",
            )
            .bind(after)
            .bind(limit)
            .bind(*category)
            .fetch_all(&self.pool)
            .await?
        } else {
            sqlx::query(
                "SELECT position, event_id, stream_id, version, event_type, schema_version, payload, metadata, occurred_at
                 FROM events WHERE category = ANY($3) AND position > $1 ORDER BY position LIMIT $2",
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
             FROM events WHERE metadata ->> 'actor' = $1 AND category = $2 AND position > $3 AND position <= $4
             ORDER BY position LIMIT $5",
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
            "SELECT to_char(occurred_at AT TIME ZONE 'UTC', 'YYYY-MM-DD') AS day, count(*), min(position), max(position)
             FROM (SELECT position, occurred_at FROM events
                   WHERE metadata ->> 'actor' = $1 AND category = $2 AND position > $3 AND position <= $4
                   ORDER BY position LIMIT $5) page
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

    async fn try_lease(&self, name: &str) -> Result<Option<Box<dyn Lease>>, StoreError> {
        let mut conn = self.pool.acquire().await?.detach();
        let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1, hashtext($2))")
            .bind(LEASE_CLASS)
            .bind(name)
            .fetch_one(&mut conn)
            .await?;
        if got {
            Ok(Some(Box::new(PgLease { conn: Some(conn) })))
        } else {
            let _ = conn.close().await;
            Ok(None)
        }
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    fn stats(&self) -> Arc<AppendStats> {
        self.stats.clone()
    }

    fn backend(&self) -> &'static str {
        "postgres"
    }
}
