//! The due-index sleeper.
//!
//! Each round claims up to [`BATCH`] due items for [`Sleeper::hold`] and runs their
//! actions one after another. An action that succeeds has dropped its item itself (its
//! command's append carries the unschedule), or says there was nothing to do, and the
//! sleeper drops it. An action that fails or panics keeps the item claimed, and it is
//! tried again later: after the claim's hold at first, then after as long as the item
//! has been overdue (so the waits double), at most an hour apart, never given up: a
//! release must not be lost to a passing fault. If this process dies, the claim runs out
//! and another scheduler process takes the item. Several sleepers (in one process or
//! many) never run one item at the same time.

use std::sync::Arc;
use std::time::Duration;

use cairn_events::{Clock, DueAction, DueIndex, DueItem, Handled};
use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

/// The most items claimed in one round.
pub const BATCH: usize = 100;

/// The longest wait between two tries of a failing item.
pub const MAX_RETRY_WAIT: Duration = Duration::from_secs(3600);

/// How long to wait before trying again an item `overdue` by this much whose action
/// failed: as long as it has been overdue, at least `hold`, at most [`MAX_RETRY_WAIT`].
pub fn retry_after(overdue: chrono::Duration, hold: Duration) -> Duration {
    overdue
        .to_std()
        .unwrap_or(Duration::ZERO)
        .clamp(hold.min(MAX_RETRY_WAIT), MAX_RETRY_WAIT)
}

pub struct Sleeper {
    due: Arc<dyn DueIndex>,
    action: Arc<dyn DueAction>,
    clock: Clock,
    /// How long a claim hides an item from other sleepers: also the pause before an item
    /// whose action failed is tried again.
    pub hold: Duration,
    /// The longest sleep before the clock and the index are looked at again.
    pub max_sleep: Duration,
}

impl Sleeper {
    pub fn new(due: Arc<dyn DueIndex>, action: Arc<dyn DueAction>) -> Self {
        Sleeper {
            due,
            action,
            clock: Clock::system(),
            hold: Duration::from_secs(60),
            max_sleep: Duration::from_secs(60),
        }
    }

    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// Run until `shutdown`; an action in progress is finished first.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut scheduled = self.due.due_changed();
        loop {
            // Mark the wake-ups seen before looking, so a schedule made after the look
            // ends the sleep below.
            scheduled.borrow_and_update();
            let now = self.clock.now();
            if shutdown.is_cancelled() {
                return;
            }
            let wait = match self.round(now).await {
                Ok(true) => continue,
                Ok(false) => self.until_next(now).await,
                Err(error) => {
                    tracing::warn!(%error, "due index unavailable; trying again");
                    Duration::from_secs(1)
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = scheduled.changed() => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Claim and run what is due at `now`; whether there was anything.
    async fn round(&self, now: DateTime<Utc>) -> Result<bool, cairn_events::StoreError> {
        let items = self.due.claim_due(now, BATCH, self.hold).await?;
        for item in &items {
            self.handle(item).await;
        }
        Ok(!items.is_empty())
    }

    async fn handle(&self, item: &DueItem) {
        let action = self.action.clone();
        let task = {
            let item = item.clone();
            tokio::spawn(async move { action.run(&item).await })
        };
        let outcome = match task.await {
            Ok(outcome) => outcome,
            Err(panicked) => Err(format!("the action panicked: {panicked}")),
        };
        match outcome {
            Ok(Handled::Done) => {
                tracing::debug!(key = %item.key, action = %item.action, "due item done");
            }
            Ok(Handled::Nothing) => {
                if let Err(error) = self.due.finish_due(item).await {
                    // Harmless: the claim runs out, and the action finds nothing again.
                    tracing::warn!(key = %item.key, %error, "could not drop a due item");
                }
            }
            Err(error) => {
                let now = self.clock.now();
                let wait = retry_after(now - item.due_at, self.hold);
                let at = chrono::Duration::from_std(wait).map_or(now, |wait| now + wait);
                tracing::warn!(
                    key = %item.key,
                    action = %item.action,
                    %error,
                    retry_in = ?wait,
                    "due item failed; it is tried again later"
                );
                if let Err(error) = self.due.retry_due(item, at).await {
                    // The claim runs out all the same: it is tried again sooner.
                    tracing::warn!(key = %item.key, %error, "could not put a due item off");
                }
            }
        }
    }

    /// How long to sleep after a round that found nothing due at `now`.
    async fn until_next(&self, now: DateTime<Utc>) -> Duration {
        match self.due.next_due().await {
            Ok(Some(next)) => (next - now)
                .to_std()
                .unwrap_or(Duration::ZERO)
                .min(self.max_sleep),
            Ok(None) => self.max_sleep,
            Err(error) => {
                tracing::warn!(%error, "due index unavailable; trying again");
                Duration::from_secs(1)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_up_to_an_hour() {
        let hold = Duration::from_secs(60);
        let wait = |minutes| retry_after(chrono::Duration::minutes(minutes), hold);
        assert_eq!(wait(0), hold);
        assert_eq!(wait(-5), hold, "not yet due (a clock step back)");
        assert_eq!(wait(2), Duration::from_secs(120));
        assert_eq!(wait(16), Duration::from_secs(960));
        assert_eq!(wait(600), MAX_RETRY_WAIT);
    }
}
