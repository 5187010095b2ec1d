//! Keeps one projection's read model up to date, generation by generation (see
//! [`crate::read_store`]).
//!
//! Loop: take the lease (only one runner per projection is active across all processes),
//! look up the model's generations, and for the live one and the one being built (if any)
//! read the checkpoint, read the next events after it, apply them and move the checkpoint
//! by compare-and-set. The live generation is served first, so reads and read-your-writes
//! keep up while a rebuild runs beside it. When the generation being built reads to the end
//! of the log and is not behind the live one, it is switched live (one atomic step in the
//! store) and the old one is deleted [`RETIRE_AFTER`] later, once reads that resolved it
//! have finished. A model with no generation at all (never built, or a Redis that lost its
//! keys) gets one to build, and reads answer "rebuilding" until it is live. When the log has
//! nothing new, sleep until the event store signals an append, or a second at most: that
//! second is also how a lost model or a rebuild asked for from the command line is noticed.
//!
//! A crash, or a lost lease, mid-rebuild leaves the generation being built with its
//! checkpoint: the next runner resumes it from there (writes are idempotent).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use cairn_events::{EventStore, Position, ReadYourWrites};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::Projection;
use crate::read_store::{Applied, Generation, GenerationStore, ReadBackend, ReadModels};

const IDLE_RECHECK: Duration = Duration::from_secs(1);

/// How long a generation replaced by a rebuild is kept before its data is deleted: reads
/// that looked up the live generation just before the switch finish on it meanwhile.
pub const RETIRE_AFTER: Duration = Duration::from_secs(5);

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What one batch did to one generation.
enum Step {
    /// A full batch applied, up to this position: there is more to read.
    More(Position),
    /// The log read to its end: the generation holds everything up to this position.
    /// Whether events were applied on the way.
    CaughtUp { at: Position, applied: bool },
    /// The checkpoint was not where this runner read it (another runner, a reset).
    Moved,
}

pub struct Runner {
    events: Arc<dyn EventStore>,
    read: Arc<dyn GenerationStore>,
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
        read: Arc<dyn GenerationStore>,
        projection: Arc<dyn Projection>,
    ) -> (Self, RunnerHandle) {
        let (caught_up, rx) = watch::channel(0);
        (
            Runner {
                events,
                read,
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
    ) -> Result<(), BoxError> {
        let name = self.projection.name();
        let mut wake = self.events.subscribe();
        let mut lease_checked = tokio::time::Instant::now();
        let mut dropping: Option<(Generation, tokio::task::JoinHandle<()>)> = None;
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
            let mut generations = self.read.generations(name).await?;
            if generations.live.is_none() && generations.building.is_none() {
                let generation = self.read.begin_generation(name).await?;
                tracing::warn!(
                    projection = name,
                    generation,
                    "no live read model (never built, or its data was lost); building it \
                     from the first event, reads answer 503 until it is complete"
                );
                generations.building = Some(generation);
            }
            let (mut more, mut applied) = (false, false);
            if let Some(live) = generations.live {
                match self.step(&self.read.models_at(live), head).await? {
                    Step::More(at) => {
                        self.publish(at);
                        more = true;
                    }
                    Step::CaughtUp { at, applied: a } => {
                        self.publish(at);
                        applied |= a;
                    }
                    Step::Moved => {
                        tracing::info!(
                            projection = name,
                            "checkpoint moved under us; re-reading it"
                        );
                        more = true;
                    }
                }
            }
            if let Some(building) = generations.building {
                match self.step(&self.read.models_at(building), head).await? {
                    Step::CaughtUp { at, .. } => {
                        if self
                            .read
                            .switch_generation(name, generations.live, building)
                            .await?
                        {
                            tracing::info!(
                                projection = name,
                                generation = building,
                                position = at,
                                "rebuilt read model is live"
                            );
                            self.publish(at);
                            more = true;
                        }
                    }
                    Step::More(_) | Step::Moved => more = true,
                }
            }
            if let Some(retired) = generations.retired {
                let busy = dropping
                    .as_ref()
                    .is_some_and(|(g, task)| *g == retired && !task.is_finished());
                if !busy {
                    dropping = Some((retired, self.retire(retired)));
                }
            }
            if more {
                continue;
            }
            let pace = self.projection.pace();
            if applied && !pace.is_zero() {
                tokio::select! {
                    () = shutdown.cancelled() => return Ok(()),
                    () = tokio::time::sleep(pace) => {}
                }
            } else if !applied {
                tokio::select! {
                    () = shutdown.cancelled() => return Ok(()),
                    _ = wake.changed() => {}
                    () = tokio::time::sleep(IDLE_RECHECK) => {}
                }
            }
        }
    }

    /// Apply the next batch of events to one generation of the model.
    async fn step(&self, models: &ReadModels, head: Position) -> Result<Step, BoxError> {
        let (name, batch_size) = (self.projection.name(), self.projection.batch_size());
        let from = models.backend.checkpoint(name).await?;
        let batch = self
            .events
            .read_all(from, batch_size, self.projection.categories())
            .await?;
        let Some(last) = batch.last().map(|e| e.position) else {
            // Nothing in this projection's categories up to `head`: caught up to it.
            return Ok(Step::CaughtUp {
                at: from.max(head),
                applied: false,
            });
        };
        Ok(
            match self.projection.apply(models, &batch, from, last).await? {
                Applied::Done if batch.len() < batch_size => Step::CaughtUp {
                    at: last.max(head),
                    applied: true,
                },
                Applied::Done => Step::More(last),
                Applied::Moved => Step::Moved,
            },
        )
    }

    /// Delete a retired generation's data after [`RETIRE_AFTER`], in the background.
    fn retire(&self, generation: Generation) -> tokio::task::JoinHandle<()> {
        let (read, name) = (self.read.clone(), self.projection.name());
        tokio::spawn(async move {
            tokio::time::sleep(RETIRE_AFTER).await;
            match read.drop_generation(name, generation).await {
                Ok(()) => tracing::info!(
                    projection = name,
                    generation,
                    "deleted the replaced read model"
                ),
                Err(error) => tracing::warn!(
                    projection = name,
                    generation,
                    %error,
                    "cannot delete the replaced read model yet; retrying"
                ),
            }
        })
    }

    fn publish(&self, position: Position) {
        self.caught_up.send_if_modified(|p| {
            let changed = *p != position;
            *p = position;
            changed
        });
    }
}
