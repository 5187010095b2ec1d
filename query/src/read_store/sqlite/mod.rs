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
//! Each generation of a model (see [`crate::read_store`]) has tables of its own, named
//! `g<G>_<table>`; each model's file lists its tables, and its SQL names them as
//! `{g}<table>`, which [`SqliteStore::sql`] fills in with the generation. A switch of
//! generations is one transaction, like every batch.
//!
//! Tables shared by every model:
//! - `checkpoints`   the last position each projection applied, per generation
//!   (`g<G>_<projection>`)
//! - `generations`   each model's live, building and retired generation
//! - `meta`          which event log the model was built from, and the next generation
//!
//! The schema version sits in `PRAGMA user_version`. A file of another version is emptied
//! and rebuilt from the log: read models are derived data, never migrated.

mod messages;
mod trends;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
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

use super::{Generation, GenerationStore, Generations, ReadBackend, ReadError, ReadModels};
use crate::trends::Minute;

type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// Bump when the layout changes: older files are then rebuilt from the log.
const SCHEMA_VERSION: i64 = 3;

const SCHEMA: &str = "
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE checkpoints (projection TEXT PRIMARY KEY, position INTEGER NOT NULL);
CREATE TABLE generations (
    model TEXT PRIMARY KEY,
    live INTEGER,
    building INTEGER,
    retired INTEGER
);
";

/// The read-model file: the store itself (generations and the live checkpoint) or,
/// through [`GenerationStore::models_at`], one generation's models.
#[derive(Clone)]
pub struct SqliteStore {
    shared: Arc<Shared>,
    /// The generation whose tables this view names; none for the store itself.
    generation: Option<Generation>,
}

struct Shared {
    /// Reads; several at once.
    pool: SqlitePool,
    /// The one connection that writes, so write transactions queue here rather than in
    /// SQLite's busy handler.
    writer: Mutex<SqliteConnection>,
    /// Per generation: minute counters before this were deleted by this process (the
    /// minute retention).
    minutes_pruned_below: std::sync::Mutex<HashMap<Generation, Minute>>,
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
            shared: Arc::new(Shared {
                pool,
                writer: Mutex::new(writer),
                minutes_pruned_below: std::sync::Mutex::default(),
            }),
            generation: None,
        })
    }

    /// The reading connections.
    fn pool(&self) -> &SqlitePool {
        &self.shared.pool
    }

    /// The writer, inside a `BEGIN IMMEDIATE` that [`finish`] ends.
    async fn begin(&self) -> Result<MutexGuard<'_, SqliteConnection>, ReadError> {
        let mut conn = self.shared.writer.lock().await;
        sqlx::Executor::execute(&mut *conn, "BEGIN IMMEDIATE").await?;
        Ok(conn)
    }

    /// This store, naming the tables of `generation`.
    fn at(&self, generation: Generation) -> SqliteStore {
        SqliteStore {
            shared: self.shared.clone(),
            generation: Some(generation),
        }
    }

    /// `text` with each `{g}` replaced by this generation's table prefix (`g<G>_`). The
    /// one place tables are named: each model's tables of each generation apart.
    fn sql(&self, text: &str) -> String {
        text.replace("{g}", &table_prefix(self.generation.unwrap_or(0)))
    }

    /// The row of `projection` in `checkpoints`, for this generation.
    fn checkpoint_row(&self, projection: &str) -> String {
        self.sql(&format!("{{g}}{projection}"))
    }

    /// Minute counters before this were deleted by this process in this generation.
    fn minutes_pruned_below(&self) -> Minute {
        let pruned = self
            .shared
            .minutes_pruned_below
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let generation = self.generation.unwrap_or(0);
        pruned.get(&generation).copied().unwrap_or(Minute::MIN)
    }

    fn set_minutes_pruned_below(&self, below: Minute) {
        let mut pruned = self
            .shared
            .minutes_pruned_below
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        pruned.insert(self.generation.unwrap_or(0), below);
    }
}

fn table_prefix(generation: Generation) -> String {
    format!("g{generation}_")
}

/// Every table of one generation.
fn generation_tables() -> impl Iterator<Item = &'static str> {
    messages::TABLES.into_iter().chain(trends::TABLES)
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
                let tables: Vec<String> = sqlx::query_scalar(
                    "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'",
                )
                .fetch_all(&mut *conn)
                .await?;
                for table in tables {
                    let drop = format!("DROP TABLE IF EXISTS \"{}\"", table.replace('"', "\"\""));
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

/// The position in the `checkpoints` row `row` (inside a write transaction); 0 if none.
async fn position_of(conn: &mut SqliteConnection, row: &str) -> Result<Position, sqlx::Error> {
    let at: Option<i64> =
        sqlx::query_scalar("SELECT position FROM checkpoints WHERE projection = ?1")
            .bind(row)
            .fetch_optional(&mut *conn)
            .await?;
    Ok(at.unwrap_or(0))
}

/// Whether `projection`'s checkpoint in `store`'s generation is at `position` (inside a
/// write transaction).
async fn checkpoint_is(
    conn: &mut SqliteConnection,
    store: &SqliteStore,
    projection: &str,
    position: Position,
) -> Result<bool, sqlx::Error> {
    Ok(position_of(conn, &store.checkpoint_row(projection)).await? == position)
}

async fn set_checkpoint(
    conn: &mut SqliteConnection,
    store: &SqliteStore,
    projection: &str,
    position: Position,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO checkpoints (projection, position) VALUES (?1, ?2)
         ON CONFLICT (projection) DO UPDATE SET position = excluded.position",
    )
    .bind(store.checkpoint_row(projection))
    .bind(position)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// A value as the JSON text `json_each` reads.
fn json_text<T: Serialize + ?Sized>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "[]".into())
}

/// Forget a projection's rows and checkpoint in `store`'s generation, inside the writer's
/// `BEGIN IMMEDIATE`.
fn delete_projection<'a>(
    conn: &'a mut SqliteConnection,
    store: &'a SqliteStore,
    projection: &'a str,
) -> BoxFuture<'a, Result<(), sqlx::Error>> {
    Box::pin(async move {
        let tables: &[&str] = match projection {
            "messages" => &messages::TABLES,
            "trends" => &trends::TABLES,
            _ => &[],
        };
        for table in tables {
            let delete = store.sql(&format!("DELETE FROM {{g}}{table}"));
            sqlx::Executor::execute(&mut *conn, delete.as_str()).await?;
        }
        sqlx::query("DELETE FROM checkpoints WHERE projection = ?1")
            .bind(store.checkpoint_row(projection))
            .execute(&mut *conn)
            .await?;
        Ok(())
    })
}

/// `model`'s generations (inside a transaction, or on the pool).
async fn generations_of<'c, E>(executor: E, model: &str) -> Result<Generations, sqlx::Error>
where
    E: sqlx::Executor<'c, Database = sqlx::Sqlite>,
{
    let row: Option<(Option<i64>, Option<i64>, Option<i64>)> =
        sqlx::query_as("SELECT live, building, retired FROM generations WHERE model = ?1")
            .bind(model)
            .fetch_optional(executor)
            .await?;
    let (live, building, retired) = row.unwrap_or_default();
    let number = |g: Option<i64>| g.and_then(|g| u64::try_from(g).ok());
    Ok(Generations {
        live: number(live),
        building: number(building),
        retired: number(retired),
    })
}

/// Start a generation of `model` to build, or answer the one being built: its tables are
/// created here (every model's, so a generation's view is whole).
fn begin_generation_in<'a>(
    conn: &'a mut SqliteConnection,
    store: &'a SqliteStore,
    model: &'a str,
) -> BoxFuture<'a, Result<Generation, sqlx::Error>> {
    Box::pin(async move {
        if let Some(building) = generations_of(&mut *conn, model).await?.building {
            return Ok(building);
        }
        let next: Option<String> =
            sqlx::query_scalar("SELECT value FROM meta WHERE key = 'next_generation'")
                .fetch_optional(&mut *conn)
                .await?;
        let generation = next.and_then(|n| n.parse::<u64>().ok()).unwrap_or(1);
        let view = store.at(generation);
        for schema in [messages::SCHEMA, trends::SCHEMA] {
            sqlx::Executor::execute(&mut *conn, view.sql(schema).as_str()).await?;
        }
        sqlx::query(
            "INSERT INTO generations (model, building) VALUES (?1, ?2)
             ON CONFLICT (model) DO UPDATE SET building = excluded.building",
        )
        .bind(model)
        .bind(i64::try_from(generation).unwrap_or(i64::MAX))
        .execute(&mut *conn)
        .await?;
        sqlx::query("INSERT OR REPLACE INTO meta (key, value) VALUES ('next_generation', ?1)")
            .bind((generation + 1).to_string())
            .execute(&mut *conn)
            .await?;
        Ok(generation)
    })
}

/// The switch of [`GenerationStore::switch_generation`], inside a transaction.
fn switch_in<'a>(
    conn: &'a mut SqliteConnection,
    store: &'a SqliteStore,
    model: &'a str,
    live: Option<Generation>,
    building: Generation,
) -> BoxFuture<'a, Result<bool, sqlx::Error>> {
    Box::pin(async move {
        let now = generations_of(&mut *conn, model).await?;
        if now.building != Some(building) || now.live != live || now.retired.is_some() {
            return Ok(false);
        }
        let built = position_of(conn, &store.at(building).checkpoint_row(model)).await?;
        if let Some(live) = live
            && built < position_of(conn, &store.at(live).checkpoint_row(model)).await?
        {
            return Ok(false);
        }
        let as_int = |g: Generation| i64::try_from(g).unwrap_or(i64::MAX);
        sqlx::query(
            "UPDATE generations SET live = ?2, building = NULL, retired = ?3 WHERE model = ?1",
        )
        .bind(model)
        .bind(as_int(building))
        .bind(live.map(as_int))
        .execute(&mut *conn)
        .await?;
        Ok(true)
    })
}

/// Drop a retired generation's tables and checkpoints and forget it, inside a transaction.
fn drop_in<'a>(
    conn: &'a mut SqliteConnection,
    store: &'a SqliteStore,
    model: &'a str,
    generation: Generation,
) -> BoxFuture<'a, Result<(), sqlx::Error>> {
    Box::pin(async move {
        let view = store.at(generation);
        for table in generation_tables() {
            let drop = view.sql(&format!("DROP TABLE IF EXISTS {{g}}{table}"));
            sqlx::Executor::execute(&mut *conn, drop.as_str()).await?;
        }
        sqlx::query("DELETE FROM checkpoints WHERE projection LIKE ?1")
            .bind(format!("{}%", table_prefix(generation)))
            .execute(&mut *conn)
            .await?;
        sqlx::query("UPDATE generations SET retired = NULL WHERE model = ?1 AND retired = ?2")
            .bind(model)
            .bind(i64::try_from(generation).unwrap_or(i64::MAX))
            .execute(&mut *conn)
            .await?;
        Ok(())
    })
}

#[async_trait]
impl ReadBackend for SqliteStore {
    async fn checkpoint(&self, projection: &str) -> Result<Position, ReadError> {
        let view = match self.generation {
            Some(_) => self.clone(),
            None => match self.generations(projection).await?.live {
                Some(live) => self.at(live),
                None => return Ok(0),
            },
        };
        let at: Option<i64> =
            sqlx::query_scalar("SELECT position FROM checkpoints WHERE projection = ?1")
                .bind(view.checkpoint_row(projection))
                .fetch_optional(self.pool())
                .await?;
        Ok(at.unwrap_or(0))
    }

    async fn reset(&self, projection: &str) -> Result<(), ReadError> {
        if self.generation.is_none() {
            self.begin_generation(projection).await?;
            return Ok(());
        }
        let mut conn = self.begin().await?;
        let result = delete_projection(&mut conn, self, projection).await;
        finish(&mut conn, result).await
    }

    async fn ping(&self) -> Result<(), ReadError> {
        sqlx::query("SELECT 1").execute(self.pool()).await?;
        Ok(())
    }

    fn backend(&self) -> &'static str {
        "sqlite"
    }
}

#[async_trait]
impl GenerationStore for SqliteStore {
    async fn generations(&self, model: &str) -> Result<Generations, ReadError> {
        Ok(generations_of(self.pool(), model).await?)
    }

    async fn begin_generation(&self, model: &str) -> Result<Generation, ReadError> {
        let mut conn = self.begin().await?;
        let result = begin_generation_in(&mut conn, self, model).await;
        finish(&mut conn, result).await
    }

    async fn switch_generation(
        &self,
        model: &str,
        live: Option<Generation>,
        building: Generation,
    ) -> Result<bool, ReadError> {
        let mut conn = self.begin().await?;
        let result = switch_in(&mut conn, self, model, live, building).await;
        finish(&mut conn, result).await
    }

    async fn drop_generation(&self, model: &str, generation: Generation) -> Result<(), ReadError> {
        let mut conn = self.begin().await?;
        let result = drop_in(&mut conn, self, model, generation).await;
        finish(&mut conn, result).await
    }

    fn models_at(&self, generation: Generation) -> ReadModels {
        ReadModels::new(Arc::new(self.at(generation)))
    }
}
