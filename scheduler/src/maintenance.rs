//! Periodic maintenance (the sweep of orphaned files, the clean-up of sent emails) on the
//! due index, so each run happens once across every scheduler process.
//!
//! A loop per process would run each job once per process, and a lock around it would
//! still need a clock per process. Instead each job has one due item, `maintenance:<name>`,
//! due at its next run by its cron schedule: whichever sleeper claims it runs the job,
//! then moves the item to the run after (releasing the claim in the same statement). A
//! process that dies mid-run leaves the claim to be taken over, and the job runs again:
//! jobs are idempotent. Every process plans the items at start; planning inserts an item
//! that is missing and moves one whose schedule changed, but leaves an overdue one alone,
//! so a run missed while no scheduler was up happens as soon as one starts.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use cairn_events::schedule::Recurrence;
use cairn_events::{Clock, DueAction, DueIndex, DueItem, Envelope, Handled, StoreError};
use chrono::{DateTime, Utc};

/// The action of maintenance due items.
pub const ACTION: &str = "maintenance";

/// One maintenance job. Must be idempotent: a run cut short by a crash runs again.
#[async_trait]
pub trait Job: Send + Sync + 'static {
    async fn run(&self) -> Result<(), String>;
}

struct Scheduled {
    name: String,
    schedule: Recurrence,
    job: Arc<dyn Job>,
}

/// The maintenance jobs and their schedules.
pub struct Maintenance {
    due: Arc<dyn DueIndex>,
    clock: Clock,
    jobs: Vec<Scheduled>,
}

impl Maintenance {
    pub fn new(due: Arc<dyn DueIndex>, clock: Clock) -> Self {
        Maintenance {
            due,
            clock,
            jobs: Vec::new(),
        }
    }

    /// Add a job run on `schedule`.
    pub fn job(mut self, name: &str, schedule: Recurrence, job: Arc<dyn Job>) -> Self {
        self.jobs.push(Scheduled {
            name: name.to_owned(),
            schedule,
            job,
        });
        self
    }

    /// The due item of job `name` at `at`.
    pub fn item(name: &str, at: DateTime<Utc>) -> DueItem {
        DueItem {
            key: format!("{ACTION}:{name}"),
            stream_id: format!("{ACTION}-{name}"),
            action: ACTION.to_owned(),
            due_at: at,
        }
    }

    /// Put each job's next run in the due index (see the module doc).
    pub async fn plan(&self) -> Result<(), StoreError> {
        let now = self.clock.now();
        for scheduled in &self.jobs {
            if let Some(next) = scheduled.schedule.next_after(now) {
                self.due
                    .plan_due(&Self::item(&scheduled.name, next), now)
                    .await?;
            }
        }
        Ok(())
    }

    /// The action for the sleeper: maintenance items run their job, the rest go to `rest`.
    pub fn around(self: Arc<Self>, rest: Arc<dyn DueAction>) -> Arc<dyn DueAction> {
        Arc::new(Routed {
            maintenance: self,
            rest,
        })
    }

    async fn run(&self, item: &DueItem) -> Result<Handled, String> {
        let name = item
            .key
            .strip_prefix(ACTION)
            .and_then(|k| k.strip_prefix(':'))
            .unwrap_or_default();
        let Some(scheduled) = self.jobs.iter().find(|s| s.name == name) else {
            // A job this process does not know (turned off, or from a newer version):
            // leave it to a process that does, until its claim runs out.
            tracing::warn!(key = %item.key, "a maintenance job this process does not run");
            return Err(format!("no maintenance job {name:?} here"));
        };
        let started = std::time::Instant::now();
        scheduled.job.run().await?;
        tracing::info!(
            job = name,
            elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            "maintenance done"
        );
        let after = self.clock.now().max(item.due_at);
        match scheduled.schedule.next_after(after) {
            Some(next) => {
                self.due
                    .reschedule_due(item, next)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(Handled::Done)
            }
            None => Ok(Handled::Nothing),
        }
    }
}

struct Routed {
    maintenance: Arc<Maintenance>,
    rest: Arc<dyn DueAction>,
}

#[async_trait]
impl DueAction for Routed {
    async fn run(&self, item: &DueItem) -> Result<Handled, String> {
        if item.action == ACTION {
            self.maintenance.run(item).await
        } else {
            self.rest.run(item).await
        }
    }

    async fn prefetch(&self, items: &[DueItem]) -> HashMap<String, Vec<Envelope>> {
        let rest: Vec<DueItem> = items
            .iter()
            .filter(|item| item.action != ACTION)
            .cloned()
            .collect();
        self.rest.prefetch(&rest).await
    }

    async fn run_read(&self, item: &DueItem, stream: Vec<Envelope>) -> Result<Handled, String> {
        if item.action == ACTION {
            self.maintenance.run(item).await
        } else {
            self.rest.run_read(item, stream).await
        }
    }
}

/// A job from an async closure.
pub struct FnJob<F>(pub F);

#[async_trait]
impl<F, Fut> Job for FnJob<F>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<(), String>> + Send,
{
    async fn run(&self) -> Result<(), String> {
        (self.0)().await
    }
}
