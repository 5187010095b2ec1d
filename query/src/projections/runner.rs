//! Keeps one projection's read model up to date.
//!
//! Loop: take the lease (only one runner per projection is active across all processes),
//! read the checkpoint from the projection's store, read the next events after it, apply
//! them and move the checkpoint by compare-and-set. When the log has nothing new, sleep until the
//! event store signals an append, or a second at most: that second is also how a Redis
//! that lost its keys is noticed (its checkpoint reads as 0) and rebuilt without anyone
//! stepping in.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use cairn_events::{EventStore, Position, ReadYourWrites};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::Projection;
use crate::read_store::{Applied, ReadBackend};

const IDLE_RECHECK: Duration = Duration::from_secs(1);

pub struct Runner {
    events: Arc<dyn EventStore>,
    projection: Arc<dyn Projection>,
    caught_up: watch::Sender<Position>,
    /// Whether the read model is shared between processes (Redis), so that only the holder
    /// of the event store's lease may write it. A process's own model (its data directory's file) is not.
    shared: bool,
}

/// The lease of a runner whose read model belongs to its process alone.
struct PrivateLease;

#[async_trait]
impl cairn_events::Lease for PrivateLease {
    async fn is_held(&mut self) -> bool {
        true
    }
}

/// What the rest of the process sees of a runner: how far the read model is.
#[derive(Clone)]
pub struct RunnerHandle {
    caught_up: watch::Receiver<Position>,
}

impl RunnerHandle {
    /// The position up to which the read model answers (everything before it included).
    pub fn position(&self) -> Position {
        *self.caught_up.borrow()
    }
}

#[async_trait]
impl ReadYourWrites for RunnerHandle {
    async fn wait_for(&self, position: Position, timeout: Duration) -> bool {
        let mut rx = self.caught_up.clone();
        tokio::time::timeout(timeout, rx.wait_for(|p| *p >= position))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

/// A waiter for processes that do not run the projection themselves: polls the read
/// store's checkpoint of `projection` until it passes the position. The wait keeps its bound
/// whatever the read store does (a slow answer is cut off at the deadline), and ends at once
/// when the read store fails: the write is durable, and a read store that is down will not
/// show it within the bound anyway.
pub struct CheckpointPoller {
    pub read: Arc<dyn ReadBackend>,
    pub projection: &'static str,
}

#[async_trait]
impl ReadYourWrites for CheckpointPoller {
    async fn wait_for(&self, position: Position, timeout: Duration) -> bool {
        let poll = async {
            loop {
                match self.read.checkpoint(self.projection).await {
                    Ok(at) if at >= position => return true,
                    Ok(_) => tokio::time::sleep(Duration::from_millis(2)).await,
                    Err(_) => return false,
                }
            }
        };
        tokio::time::timeout(timeout, poll).await.unwrap_or(false)
    }
}

impl Runner {
    pub fn new(
        events: Arc<dyn EventStore>,
        projection: Arc<dyn Projection>,
    ) -> (Self, RunnerHandle) {
        let (caught_up, rx) = watch::channel(0);
        (
            Runner {
                events,
                projection,
                caught_up,
                shared: true,
            },
            RunnerHandle { caught_up: rx },
        )
    }

    /// For a read model only this process reads (its own file): it always runs, whatever
    /// other processes on the same event store do.
    pub fn private(mut self) -> Self {
        self.shared = false;
        self
    }

    /// Run until `shutdown` fires.
    pub async fn run(self, shutdown: CancellationToken) {
        let name = self.projection.name();
        while !shutdown.is_cancelled() {
            let lease = if self.shared {
                self.events.try_lease(&format!("projection:{name}")).await
            } else {
                Ok(Some(Box::new(PrivateLease) as Box<dyn cairn_events::Lease>))
            };
            let lease = match lease {
                Ok(Some(lease)) => lease,
                Ok(None) => {
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(IDLE_RECHECK) => continue,
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot take the projection lease; retrying");
                    tokio::time::sleep(IDLE_RECHECK).await;
                    continue;
                }
            };
            tracing::info!(projection = name, "projection runner active");
            if let Err(error) = self.follow(lease, &shutdown).await {
                tracing::warn!(
                    projection = name,
                    ?error,
                    "projection runner interrupted; retrying"
                );
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }

    async fn follow(
        &self,
        mut lease: Box<dyn cairn_events::Lease>,
        shutdown: &CancellationToken,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let mut wake = self.events.subscribe();
        let mut lease_checked = tokio::time::Instant::now();
        loop {
            if shutdown.is_cancelled() {
                return Ok(());
            }
            // The lease is confirmed once a second, not per batch: a runner that lost it
            // meanwhile cannot move the checkpoint anyway (compare-and-set).
            if lease_checked.elapsed() >= IDLE_RECHECK {
                if !lease.is_held().await {
                    return Ok(());
                }
                lease_checked = tokio::time::Instant::now();
            }
            // The head as this process knows it (its own commits, notifications, a periodic
            // re-read): positions up to it are committed, so reading on from the checkpoint
            // and finding less than a batch means the read model has reached it.
            let head = *wake.borrow_and_update();
            let (name, batch_size) = (self.projection.name(), self.projection.batch_size());
            let from = self.projection.store().checkpoint(name).await?;
            let batch = self
                .events
                .read_all(from, batch_size, self.projection.categories())
                .await?;
            let Some(last) = batch.last().map(|e| e.position) else {
                // Nothing in this projection's categories up to `head`: caught up to it.
                self.publish(from.max(head));
                tokio::select! {
                    () = shutdown.cancelled() => return Ok(()),
                    _ = wake.changed() => {}
                    () = tokio::time::sleep(IDLE_RECHECK) => {}
                }
                continue;
            };
            match self.projection.apply(&batch, from, last).await? {
                Applied::Done if batch.len() < batch_size => {
                    self.publish(last.max(head));
                    let pace = self.projection.pace();
                    if !pace.is_zero() {
                        tokio::select! {
                            () = shutdown.cancelled() => return Ok(()),
                            () = tokio::time::sleep(pace) => {}
                        }
                    }
                }
                Applied::Done => self.publish(last),
                Applied::Moved => {
                    tracing::info!(
                        projection = name,
                        "checkpoint moved under us; re-reading it"
                    )
                }
            }
        }
    }

    fn publish(&self, position: Position) {
        self.caught_up.send_if_modified(|p| {
            let changed = *p != position;
            *p = position;
            changed
        });
    }
}
