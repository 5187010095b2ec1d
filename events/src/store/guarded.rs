//! A database server that is down costs a request at most one timeout, and then nothing.
//!
//! Every call to the wrapped store is bounded by the timeout (a server that accepts
//! connections and never answers would otherwise hold a request until TCP gives up), and
//! a call that fails because the server is unreachable opens the store's [`Circuit`]:
//! further calls fail at once with [`StoreError::Unavailable`] until a `SELECT 1` in the
//! background answers again. Refusals of the database itself (a conflict, a constraint) say
//! the server is up and leave the circuit closed.
//!
//! A call cut off by the timeout may still complete on the server (an append whose commit
//! was on its way): the caller is told the store was unavailable, as for any lost answer,
//! and retries with its idempotency key.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::sync::watch;
use uuid::Uuid;

use crate::circuit::Circuit;
use crate::{
    AppendRequest, AppendStats, Appended, DueIndex, DueItem, DueStatus, Envelope, EventStore,
    Lease, Outbox, OutboxStatus, Outcome, Position, QueuedMessage, Snapshot, Store, StoreError,
    WorkStats,
};

/// A store whose calls are bounded by a timeout and fail fast while it is down.
pub struct Guarded<S> {
    inner: Arc<S>,
    timeout: Duration,
    circuit: Arc<Circuit>,
}

impl<S: Store> Guarded<S> {
    pub fn new(inner: Arc<S>, timeout: Duration) -> Self {
        Guarded {
            inner,
            timeout,
            circuit: Circuit::new("database"),
        }
    }

    /// Run one call: at once unavailable while the circuit is open, else bounded by the
    /// timeout; an outage opens the circuit.
    async fn call<T>(
        &self,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        if self.circuit.is_open() {
            return Err(unavailable(
                std::io::ErrorKind::NotConnected,
                "the database is unreachable; waiting for it to answer again",
            ));
        }
        let result = match tokio::time::timeout(self.timeout, call).await {
            Ok(result) => result,
            Err(_) => Err(unavailable(
                std::io::ErrorKind::TimedOut,
                "the database did not answer in time",
            )),
        };
        if let Err(StoreError::Unavailable(error)) = &result
            && is_outage(error)
        {
            let (inner, timeout) = (self.inner.clone(), self.timeout);
            self.circuit.trip(move || {
                let inner = inner.clone();
                async move {
                    tokio::time::timeout(timeout, inner.ping())
                        .await
                        .is_ok_and(|r| r.is_ok())
                }
            });
        }
        result
    }
}

fn unavailable(kind: std::io::ErrorKind, message: &'static str) -> StoreError {
    StoreError::Unavailable(Arc::new(sqlx::Error::Io(std::io::Error::new(
        kind, message,
    ))))
}

/// Whether a failure means the server cannot be reached (or is shutting down or starting),
/// rather than a refusal of one statement.
fn is_outage(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        // Class 08: connection exception; class 57: operator intervention (the server is
        // shutting down, restarting, or not accepting connections yet).
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|code| code.starts_with("08") || code.starts_with("57")),
        _ => false,
    }
}

#[async_trait]
impl<S: Store> EventStore for Guarded<S> {
    async fn append(&self, request: AppendRequest) -> Result<Appended, StoreError> {
        self.call(self.inner.append(request)).await
    }

    async fn read_stream(&self, stream_id: &str) -> Result<Vec<Envelope>, StoreError> {
        self.call(self.inner.read_stream(stream_id)).await
    }

    async fn read_streams(
        &self,
        stream_ids: &[String],
    ) -> Result<HashMap<String, Vec<Envelope>>, StoreError> {
        self.call(self.inner.read_streams(stream_ids)).await
    }

    async fn read_stream_after(
        &self,
        stream_id: &str,
        version: i64,
    ) -> Result<Vec<Envelope>, StoreError> {
        self.call(self.inner.read_stream_after(stream_id, version))
            .await
    }

    async fn read_snapshot(
        &self,
        stream_id: &str,
        name: &str,
    ) -> Result<Option<Snapshot>, StoreError> {
        self.call(self.inner.read_snapshot(stream_id, name)).await
    }

    async fn write_snapshot(
        &self,
        stream_id: &str,
        name: &str,
        snapshot: &Snapshot,
    ) -> Result<(), StoreError> {
        self.call(self.inner.write_snapshot(stream_id, name, snapshot))
            .await
    }

    async fn read_all(
        &self,
        after: Position,
        limit: usize,
        categories: &[&str],
    ) -> Result<Vec<Envelope>, StoreError> {
        self.call(self.inner.read_all(after, limit, categories))
            .await
    }

    async fn read_by_actor(
        &self,
        actor: &str,
        category: &str,
        after: Position,
        up_to: Position,
        limit: usize,
    ) -> Result<Vec<Envelope>, StoreError> {
        self.call(
            self.inner
                .read_by_actor(actor, category, after, up_to, limit),
        )
        .await
    }

    async fn days_by_actor(
        &self,
        actor: &str,
        category: &str,
        after: Position,
        up_to: Position,
        limit: usize,
    ) -> Result<Vec<crate::DaySpan>, StoreError> {
        self.call(
            self.inner
                .days_by_actor(actor, category, after, up_to, limit),
        )
        .await
    }

    async fn head(&self) -> Result<Position, StoreError> {
        self.call(self.inner.head()).await
    }

    fn subscribe(&self) -> watch::Receiver<Position> {
        self.inner.subscribe()
    }

    async fn try_lease(&self, name: &str) -> Result<Option<Box<dyn Lease>>, StoreError> {
        self.call(self.inner.try_lease(name)).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.call(self.inner.ping()).await
    }

    fn stats(&self) -> Arc<AppendStats> {
        self.inner.stats()
    }

    fn backend(&self) -> &'static str {
        self.inner.backend()
    }
}

#[async_trait]
impl<S: Store> DueIndex for Guarded<S> {
    async fn next_due(&self) -> Result<Option<DateTime<Utc>>, StoreError> {
        self.call(self.inner.next_due()).await
    }

    async fn claim_due(
        &self,
        now: DateTime<Utc>,
        limit: usize,
        hold: Duration,
    ) -> Result<Vec<DueItem>, StoreError> {
        self.call(self.inner.claim_due(now, limit, hold)).await
    }

    async fn finish_due(&self, item: &DueItem) -> Result<(), StoreError> {
        self.call(self.inner.finish_due(item)).await
    }

    async fn renew_due(&self, keys: &[String], until: DateTime<Utc>) -> Result<u64, StoreError> {
        self.call(self.inner.renew_due(keys, until)).await
    }

    async fn retry_due(&self, item: &DueItem, at: DateTime<Utc>) -> Result<(), StoreError> {
        self.call(self.inner.retry_due(item, at)).await
    }

    async fn reschedule_due(
        &self,
        item: &DueItem,
        next: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        self.call(self.inner.reschedule_due(item, next)).await
    }

    async fn plan_due(&self, item: &DueItem, now: DateTime<Utc>) -> Result<(), StoreError> {
        self.call(self.inner.plan_due(item, now)).await
    }

    async fn due_status(&self, now: DateTime<Utc>, next: usize) -> Result<DueStatus, StoreError> {
        self.call(self.inner.due_status(now, next)).await
    }

    fn holder(&self) -> i64 {
        self.inner.holder()
    }

    fn work_stats(&self) -> Arc<WorkStats> {
        self.inner.work_stats()
    }

    fn due_changed(&self) -> watch::Receiver<u64> {
        self.inner.due_changed()
    }
}

#[async_trait]
impl<S: Store> Outbox for Guarded<S> {
    async fn claim_outbox(
        &self,
        kind: &str,
        now: DateTime<Utc>,
        limit: usize,
        hold: Duration,
    ) -> Result<Vec<QueuedMessage>, StoreError> {
        self.call(self.inner.claim_outbox(kind, now, limit, hold))
            .await
    }

    async fn renew_outbox(&self, ids: &[Uuid], until: DateTime<Utc>) -> Result<u64, StoreError> {
        self.call(self.inner.renew_outbox(ids, until)).await
    }

    async fn next_ready(&self, kind: &str) -> Result<Option<DateTime<Utc>>, StoreError> {
        self.call(self.inner.next_ready(kind)).await
    }

    async fn settle(&self, id: Uuid, outcome: Outcome) -> Result<(), StoreError> {
        self.call(self.inner.settle(id, outcome)).await
    }

    async fn dead_letters(&self, limit: usize) -> Result<Vec<QueuedMessage>, StoreError> {
        self.call(self.inner.dead_letters(limit)).await
    }

    async fn revive(&self, id: Uuid) -> Result<bool, StoreError> {
        self.call(self.inner.revive(id)).await
    }

    async fn purge_sent(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        self.call(self.inner.purge_sent(before)).await
    }

    async fn outbox_status(&self) -> Result<OutboxStatus, StoreError> {
        self.call(self.inner.outbox_status()).await
    }

    fn outbox_changed(&self) -> watch::Receiver<u64> {
        self.inner.outbox_changed()
    }
}
