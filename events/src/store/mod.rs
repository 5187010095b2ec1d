//! The two event store backends and how one is chosen.

mod guarded;
pub mod postgres;
pub mod sqlite;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::{Store, StoreError};

pub use guarded::Guarded;
pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;

/// Open the event store named by `database_url`: a `postgres://` URL selects Postgres;
/// none selects the embedded SQLite file `events.db` in `data_dir`. Migrations are applied.
/// Each call to a Postgres server is bounded by `timeout` and fails at once while the
/// server is known to be down (see [`Guarded`]).
pub async fn open(
    database_url: Option<&str>,
    data_dir: &Path,
    timeout: Duration,
) -> Result<Arc<dyn Store>, StoreError> {
    match database_url {
        Some(url) => Ok(Arc::new(Guarded::new(open_postgres(url).await?, timeout))),
        None => Ok(open_sqlite(&data_dir.join("events.db")).await?),
    }
}

/// Open (and migrate) a Postgres event store.
pub async fn open_postgres(url: &str) -> Result<Arc<PostgresStore>, StoreError> {
    Ok(Arc::new(PostgresStore::connect(url).await?))
}

/// Open (and migrate) a SQLite event store, creating the file if needed.
pub async fn open_sqlite(path: &Path) -> Result<Arc<SqliteStore>, StoreError> {
    Ok(Arc::new(SqliteStore::open(path).await?))
}

/// `days_by_actor`'s rows (a `YYYY-MM-DD` day, a count, the first and last position).
fn day_spans(rows: Vec<(String, i64, i64, i64)>) -> Result<Vec<crate::DaySpan>, StoreError> {
    rows.into_iter()
        .map(|(day, count, first, last)| {
            Ok(crate::DaySpan {
                day: day
                    .parse()
                    .map_err(|_| StoreError::Corrupt(format!("the day {day:?}")))?,
                count: u64::try_from(count).unwrap_or(0),
                first,
                last,
            })
        })
        .collect()
}
