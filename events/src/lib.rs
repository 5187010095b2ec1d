//! The event store: the permanent record every other part of Cairn is derived from.
//!
//! Commands append events to streams with an expected version (optimistic concurrency);
//! projections read the global log in commit order and are woken when it grows. Two
//! implementations sit behind [`EventStore`]: Postgres for production and SQLite for the
//! embedded default. Both run the same behaviour suite (`testing`, behind the `testing`
//! feature), so code written against the trait behaves the same on either.
//!
//! Why positions follow commit order: a projection keeps a single number, "everything up
//! to here is applied". If position 11 could commit before position 10, a reader that saw
//! 11 would move past 10 and never apply it. Both stores therefore assign positions while
//! holding the store's single write lock (an advisory lock on Postgres, the write
//! transaction on SQLite), so a position becomes visible only after all smaller ones.
#![forbid(unsafe_code)]

pub mod circuit;
mod clock;
pub mod domain;
mod envelope;
mod group_commit;
pub mod ip;
pub mod migrate;
pub mod schedule;
pub mod store;
#[cfg(feature = "testing")]
pub mod testing;
pub mod work;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;

pub use clock::Clock;
pub use envelope::{
    AppendRequest, Appended, DecodeError, DomainEvent, Envelope, ExpectedVersion, Metadata,
    NewEvent, StreamEvents, category_of,
};
pub use group_commit::AppendStats;
pub use store::{open, open_postgres, open_sqlite};
pub use work::{
    DueAction, DueIndex, DueItem, DueStatus, Effects, Handled, Outbox, OutboxMessage, OutboxStatus,
    Outcome, PendingItem, QueuedMessage, WorkStats,
};

/// A place in the global log: 1 is the first event ever appended; 0 means "before any".
pub type Position = i64;

/// Everything that can go wrong talking to the event store.
#[derive(Clone, Debug, thiserror::Error)]
pub enum StoreError {
    /// The stream was not at the version the writer expected: someone else wrote first.
    #[error("stream {stream_id} is at version {actual}, expected {expected}")]
    Conflict {
        stream_id: String,
        expected: ExpectedVersion,
        actual: i64,
    },
    /// The request itself is malformed (empty stream id, no events, ...).
    #[error("invalid append: {0}")]
    Invalid(String),
    /// The database failed or could not be reached.
    #[error("event store unavailable")]
    Unavailable(#[source] Arc<sqlx::Error>),
    /// A stored row could not be read back (should never happen: the store is the contract).
    #[error("stored event {0} is unreadable")]
    Corrupt(String),
    /// The store's writer has shut down.
    #[error("event store is shutting down")]
    Closed,
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        StoreError::Unavailable(Arc::new(e))
    }
}

/// Exclusive, process-crossing ownership of a named role (e.g. "projection:messages").
///
/// While `is_held` is true no other process holds the same lease. A lease ends when it is
/// dropped or its holder dies (Postgres releases a session advisory lock when the
/// connection goes away).
#[async_trait]
pub trait Lease: Send {
    async fn is_held(&mut self) -> bool;
}

/// The event store. Object safe so the binary can pick a backend at start-up.
#[async_trait]
pub trait EventStore: Send + Sync + 'static {
    /// Append events to one stream, atomically, if the stream is at `expected`.
    /// Concurrent calls are group-committed; each caller gets its own result.
    async fn append(&self, request: AppendRequest) -> Result<Appended, StoreError>;

    /// All events of one stream, oldest first.
    async fn read_stream(&self, stream_id: &str) -> Result<Vec<Envelope>, StoreError>;

    /// All events of each of several streams, oldest first, by stream id (a stream with
    /// no events is left out). A backend answers it in one round trip where it can.
    async fn read_streams(
        &self,
        stream_ids: &[String],
    ) -> Result<HashMap<String, Vec<Envelope>>, StoreError> {
        let mut streams = HashMap::with_capacity(stream_ids.len());
        for stream_id in stream_ids {
            let events = self.read_stream(stream_id).await?;
            if !events.is_empty() {
                streams.insert(stream_id.clone(), events);
            }
        }
        Ok(streams)
    }

    /// The events of one stream after `version`, oldest first.
    async fn read_stream_after(
        &self,
        stream_id: &str,
        version: i64,
    ) -> Result<Vec<Envelope>, StoreError> {
        let mut events = self.read_stream(stream_id).await?;
        events.retain(|e| e.version > version);
        Ok(events)
    }

    /// The snapshot of `stream_id`'s fold `name`, if one was written
    /// ([`EventStore::write_snapshot`]).
    async fn read_snapshot(
        &self,
        _stream_id: &str,
        _name: &str,
    ) -> Result<Option<Snapshot>, StoreError> {
        Ok(None)
    }

    /// Keep `snapshot` of `stream_id`'s fold `name`, unless a later one is kept already. A
    /// snapshot is derived data: losing one costs a full read of the stream, no more.
    async fn write_snapshot(
        &self,
        _stream_id: &str,
        _name: &str,
        _snapshot: &Snapshot,
    ) -> Result<(), StoreError> {
        Ok(())
    }

    /// Up to `limit` events after `after`, in global order, restricted to the given stream
    /// categories (the part of a stream id before the first `-`); empty means all.
    async fn read_all(
        &self,
        after: Position,
        limit: usize,
        categories: &[&str],
    ) -> Result<Vec<Envelope>, StoreError>;

    /// Up to `limit` of the events `actor` caused (their [`Metadata::actor`]) in
    /// `category`, after `after` and up to `up_to`, in global order: what one user wrote,
    /// without reading everyone's.
    async fn read_by_actor(
        &self,
        actor: &str,
        category: &str,
        after: Position,
        up_to: Position,
        limit: usize,
    ) -> Result<Vec<Envelope>, StoreError>;

    /// How the first `limit` events `actor` caused in `category` after `after`, up to
    /// `up_to`, fall on days (UTC, by `occurred_at`), earliest first: per day how many,
    /// and the first and last position. One page of [`actor_days`], which reads them all
    /// in queries of bounded cost.
    async fn days_by_actor(
        &self,
        actor: &str,
        category: &str,
        after: Position,
        up_to: Position,
        limit: usize,
    ) -> Result<Vec<DaySpan>, StoreError>;

    /// The position of the newest committed event (0 when empty).
    async fn head(&self) -> Result<Position, StoreError>;

    /// A hint that the log grew: the value is the newest position this process knows of.
    /// Take the receiver *before* reading so no append between the read and the wait is
    /// missed; still wake up now and then, since a hint from another process can be late.
    fn subscribe(&self) -> watch::Receiver<Position>;

    /// Try to take the named lease; `None` if another process holds it.
    async fn try_lease(&self, name: &str) -> Result<Option<Box<dyn Lease>>, StoreError>;

    /// A cheap round trip, for readiness checks.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Counters about group commit, for `/metrics`.
    fn stats(&self) -> Arc<AppendStats>;

    /// "postgres" or "sqlite".
    fn backend(&self) -> &'static str;
}

/// One day of an actor's events ([`EventStore::days_by_actor`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DaySpan {
    pub day: chrono::NaiveDate,
    pub count: u64,
    pub first: Position,
    pub last: Position,
}

/// Events an [`actor_days`] query counts at a time: short enough for any timeout.
const DAYS_PAGE: usize = 20_000;

/// How every event `actor` caused in `category` up to `up_to` falls on days, earliest
/// first ([`EventStore::days_by_actor`], page after page). A day's events need not be
/// next to each other in the log (messages imported later, say): its span runs from its
/// first to its last, and may hold other days' events between.
pub async fn actor_days(
    store: &dyn EventStore,
    actor: &str,
    category: &str,
    up_to: Position,
) -> Result<Vec<DaySpan>, StoreError> {
    actor_days_in_pages(store, actor, category, up_to, DAYS_PAGE).await
}

/// [`actor_days`] with pages of `page_size` events.
pub(crate) async fn actor_days_in_pages(
    store: &dyn EventStore,
    actor: &str,
    category: &str,
    up_to: Position,
    page_size: usize,
) -> Result<Vec<DaySpan>, StoreError> {
    let mut days = std::collections::BTreeMap::<chrono::NaiveDate, DaySpan>::new();
    let mut after = 0;
    loop {
        let page = store
            .days_by_actor(actor, category, after, up_to, page_size)
            .await?;
        let counted: u64 = page.iter().map(|d| d.count).sum();
        let Some(last) = page.iter().map(|d| d.last).max() else {
            break;
        };
        for span in page {
            days.entry(span.day)
                .and_modify(|day| {
                    day.count += span.count;
                    day.first = day.first.min(span.first);
                    day.last = day.last.max(span.last);
                })
                .or_insert(span);
        }
        if counted < page_size as u64 {
            break;
        }
        after = last;
    }
    Ok(days.into_values().collect())
}

/// A write side's fold of a stream up to `version`, as it serialized it.
#[derive(Clone, Debug, PartialEq)]
pub struct Snapshot {
    pub version: i64,
    pub state: serde_json::Value,
}

/// A backend: the event log, and the due index and outbox its appends fill.
pub trait Store: EventStore + DueIndex + Outbox {}

impl<T: EventStore + DueIndex + Outbox> Store for T {}

/// Lets a writer wait until the read side has caught up with its append, so a client that
/// posts and then reads at once sees its own write.
#[async_trait]
pub trait ReadYourWrites: Send + Sync + 'static {
    /// Wait until the read models answering queries include `position`, at most `timeout`.
    /// Returns whether they do.
    async fn wait_for(&self, position: Position, timeout: Duration) -> bool;
}

/// A waiter for deployments where reads are not expected to follow writes at once.
pub struct NoWait;

#[async_trait]
impl ReadYourWrites for NoWait {
    async fn wait_for(&self, _position: Position, _timeout: Duration) -> bool {
        false
    }
}
