//! The due-index sleeper.
//!
//! Each round claims up to [`BATCH`] items due within a [`Sleeper::lead`] for a short
//! [`Sleeper::hold`], renewed while the round runs, reads the streams they are about in one
//! go ([`DueAction::prefetch`]), and runs their actions, each at its due time, concurrently
//! (at most [`CONCURRENCY`] at once): the claim and the read are done by the time an item
//! is due, so its release starts on time. Items of one stream run one after another (earliest first, so a release and an expiry of one capsule do not race),
//! different streams at once, so a burst of releases fills the event store's group
//! commits. An action that succeeds has dropped its item itself (its command's append
//! carries the unschedule), or says there was nothing to do, and the sleeper drops it. An
//! action that fails or panics puts its item off: after the claim's hold at first, then
//! after as long as the item has been overdue (so the waits double), at most an hour apart,
//! never given up: a release must not be lost to a passing fault. If this process dies,
//! its claims are taken over (at once on Postgres, else when they run out). Several
//! sleepers (in one process or many) never run one item at the same time.
//!
//! Between rounds the sleeper sleeps until the lead before the earliest time something may
//! become claimable, woken early when an item is scheduled. It wakes at least once a minute to
//! look at the clock (a wall clock that jumped), but asks the database again only when
//! that time has come or it was woken: an idle scheduler sends no query.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use cairn_events::{Clock, DueAction, DueIndex, DueItem, Envelope, Handled};
use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use crate::metrics::SchedulerMetrics;
use crate::renew::renew_while;

/// The most items claimed in one round.
pub const BATCH: usize = 512;

/// The most actions run at once whose streams were read ahead: enough to fill the event
/// store's group commits (a burst's releases read their streams in one query,
/// [`DueAction::prefetch`], and then only wait for their appends).
pub const CONCURRENCY: usize = 256;

/// The most actions run at once that read for themselves: about as many as the database
/// pool has connections, so that they do not queue for one past the store's time limit.
pub const READING_CONCURRENCY: usize = 16;

/// How long a claim lasts unless renewed, by default.
pub const HOLD: Duration = Duration::from_secs(5);

/// How far ahead of their due time items are claimed, by default: the claim and the read
/// of their streams happen before the due time, and the action runs at it.
pub const LEAD: Duration = Duration::from_millis(25);

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
    metrics: Arc<SchedulerMetrics>,
    /// How long a claim hides an item from other sleepers unless renewed (it is renewed
    /// while its action runs): also the pause before an item whose action failed is
    /// tried again.
    pub hold: Duration,
    /// How far ahead of its due time an item is claimed (and its stream read); its
    /// action still runs no earlier than the due time. Claims of others that run out
    /// within this lead count as run out: live ones are renewed seconds ahead.
    pub lead: Duration,
    /// The longest sleep before the clock is looked at again.
    pub max_sleep: Duration,
    /// How often the due index is looked at without a wake-up: for a store that cannot
    /// tell this process of items another one schedules (SQLite). `None` (Postgres, whose
    /// notifications reach every process): only when woken or something falls due.
    pub look_every: Option<Duration>,
}

/// What a round's tasks share.
#[derive(Clone)]
struct Context {
    due: Arc<dyn DueIndex>,
    action: Arc<dyn DueAction>,
    clock: Clock,
    metrics: Arc<SchedulerMetrics>,
    hold: Duration,
    lead: chrono::Duration,
    shutdown: CancellationToken,
}

impl Sleeper {
    pub fn new(due: Arc<dyn DueIndex>, action: Arc<dyn DueAction>) -> Self {
        Sleeper {
            due,
            action,
            clock: Clock::system(),
            metrics: Arc::default(),
            hold: HOLD,
            lead: LEAD,
            max_sleep: Duration::from_secs(60),
            look_every: None,
        }
    }

    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// Report into `metrics` (shared with `/metrics`).
    pub fn with_metrics(mut self, metrics: Arc<SchedulerMetrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// Run until `shutdown`; a round in progress is finished first, but for items not
    /// yet due, which are left to their claims.
    pub async fn run(self, shutdown: CancellationToken) {
        let lead = chrono::Duration::from_std(self.lead).unwrap_or_default();
        let context = Context {
            due: self.due.clone(),
            action: self.action.clone(),
            clock: self.clock.clone(),
            metrics: self.metrics.clone(),
            hold: self.hold,
            lead,
            shutdown: shutdown.clone(),
        };
        let mut scheduled = self.due.due_changed();
        // When something may next become claimable (`None`: nothing is scheduled), and
        // whether to look at the due index before then.
        let mut next: Option<DateTime<Utc>> = None;
        let mut look = true;
        loop {
            if shutdown.is_cancelled() {
                return;
            }
            let now = self.clock.now();
            if look || next.is_some_and(|at| at - lead <= now) {
                // Mark the wake-ups seen before looking, so a schedule made after the
                // look ends the sleep below.
                scheduled.borrow_and_update();
                match round(&context, now).await {
                    Ok(true) => {
                        // There may be more: look again at once.
                        look = true;
                        continue;
                    }
                    Ok(false) => match self.due.next_due().await {
                        Ok(at) => next = at,
                        Err(error) => {
                            tracing::warn!(%error, "due index unavailable; trying again");
                            next = Some(now + chrono::Duration::seconds(1));
                        }
                    },
                    Err(error) => {
                        tracing::warn!(%error, "due index unavailable; trying again");
                        next = Some(now + chrono::Duration::seconds(1));
                    }
                }
            }
            let now = self.clock.now();
            let until_next = next.map_or(self.max_sleep, |at| {
                (at - lead - now).to_std().unwrap_or(Duration::ZERO)
            });
            let every = self.look_every.unwrap_or(Duration::MAX);
            let wait = until_next.min(self.max_sleep).min(every);
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = scheduled.changed() => look = true,
                // An item may have come without a wake-up.
                () = tokio::time::sleep(wait) => look = wait == every,
            }
        }
    }
}

/// Claim what is due by `now` and the lead, and run each at its time; whether there was
/// anything.
async fn round(context: &Context, now: DateTime<Utc>) -> Result<bool, cairn_events::StoreError> {
    let items = context
        .due
        .claim_due(now + context.lead, BATCH, context.hold)
        .await?;
    if items.is_empty() {
        return Ok(false);
    }
    let keys: Vec<String> = items.iter().map(|i| i.key.clone()).collect();
    let due = context.due.clone();
    let _renewal = renew_while(
        context.clock.clone(),
        context.hold,
        "due items",
        move |until| {
            let (due, keys) = (due.clone(), keys.clone());
            async move { due.renew_due(&keys, until).await }
        },
    );
    // One read of every stream the round touches, rather than one per item.
    let mut read = context.action.prefetch(&items).await;
    // Items arrive earliest first; each stream's keep that order.
    let mut streams: Vec<Vec<DueItem>> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    for item in items {
        let slot = *index.entry(item.stream_id.clone()).or_insert_with(|| {
            streams.push(Vec::new());
            streams.len() - 1
        });
        streams[slot].push(item);
    }
    let mut running = tokio::task::JoinSet::new();
    let prefetched = Arc::new(tokio::sync::Semaphore::new(CONCURRENCY));
    let reading = Arc::new(tokio::sync::Semaphore::new(READING_CONCURRENCY));
    for stream in streams {
        // Good for the stream's first item only: the items after it see what it wrote.
        let mut events = stream.first().and_then(|item| read.remove(&item.stream_id));
        let permits = if events.is_some() {
            prefetched.clone()
        } else {
            reading.clone()
        };
        let context = context.clone();
        running.spawn(async move {
            // Never closed: a permit always comes.
            let Ok(_permit) = permits.acquire_owned().await else {
                return;
            };
            for item in &stream {
                if !wait_until_due(&context, item).await {
                    // Shutting down: the claim runs out, or passes on with this process.
                    return;
                }
                handle(&context, item, events.take()).await;
            }
        });
    }
    while running.join_next().await.is_some() {}
    Ok(true)
}

/// Wait until `item` is due by the clock (it may have been claimed ahead); false if the
/// sleeper is shut down first. The clock is asked again after each wait: an action run
/// before its time would find nothing to do, and its item would be dropped.
async fn wait_until_due(context: &Context, item: &DueItem) -> bool {
    loop {
        let early = item.due_at - context.clock.now();
        let Ok(wait) = early.to_std() else {
            return true;
        };
        if wait.is_zero() {
            return true;
        }
        // A settable clock (tests) may jump: look again at least every lead.
        let step = context.lead.to_std().unwrap_or_default();
        tokio::select! {
            () = context.shutdown.cancelled() => return false,
            () = tokio::time::sleep(wait.min(step).max(Duration::from_millis(1))) => {}
        }
    }
}

/// Run one item's action (with its stream as read at the round's start, if it was) and
/// settle the item by the outcome.
async fn handle(context: &Context, item: &DueItem, stream: Option<Vec<Envelope>>) {
    let action = context.action.clone();
    let task = {
        let item = item.clone();
        tokio::spawn(async move {
            match stream {
                Some(events) => action.run_read(&item, events).await,
                None => action.run(&item).await,
            }
        })
    };
    let outcome = match task.await {
        Ok(outcome) => outcome,
        Err(panicked) => Err(format!("the action panicked: {panicked}")),
    };
    match outcome {
        Ok(Handled::Done) => {
            context
                .metrics
                .done(&item.action, item.due_at, context.clock.now());
            tracing::debug!(key = %item.key, action = %item.action, "due item done");
        }
        Ok(Handled::Nothing) => {
            if let Err(error) = context.due.finish_due(item).await {
                // Harmless: the claim runs out, and the action finds nothing again.
                tracing::warn!(key = %item.key, %error, "could not drop a due item");
            }
        }
        Err(error) => {
            context.metrics.due_failed();
            let now = context.clock.now();
            let wait = retry_after(now - item.due_at, context.hold);
            let at = chrono::Duration::from_std(wait).map_or(now, |wait| now + wait);
            tracing::warn!(
                key = %item.key,
                action = %item.action,
                %error,
                retry_in = ?wait,
                "due item failed; it is tried again later"
            );
            if let Err(error) = context.due.retry_due(item, at).await {
                // The claim runs out all the same: it is tried again sooner.
                tracing::warn!(key = %item.key, %error, "could not put a due item off");
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
