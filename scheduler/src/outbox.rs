//! Outbox workers: one per kind of message (emails, webhooks), each the same loop.
//!
//! A message is claimed for a few seconds (renewed while it is being delivered, so a slow
//! server never gets it from two workers), delivered, then settled: sent, to be retried
//! later (a transient failure: exponential backoff with jitter), or dead after too many
//! tries (a permanent refusal gives up at once). Dead letters are listed and revived from
//! the CLI. Delivery is at least once: a crash between the far end's acceptance and the
//! settlement delivers the message again when another worker takes the claim over (at
//! once on Postgres, else when it runs out), with the same id (an email's Message-ID, a
//! webhook's `webhook-id`), so the duplicate is recognisable. Sent messages are deleted
//! once their retention has passed (a maintenance job).
//!
//! An idle worker sleeps until the next retry is due or a message is queued, looking at
//! the clock at least once a minute but asking the database nothing meanwhile.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use cairn_events::{Clock, Outbox, Outcome, QueuedMessage};
use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use crate::email::SendError;
use crate::metrics::SchedulerMetrics;
use crate::renew::renew_while;

/// How the worker paces itself.
#[derive(Clone, Debug)]
pub struct Policy {
    /// Tries before a message is dead.
    pub max_attempts: i32,
    /// The first retry's delay; each later one doubles, up to `max_delay`.
    pub first_delay: Duration,
    pub max_delay: Duration,
    /// How long a claim hides a message unless renewed (it is renewed while the message
    /// is being sent): the longest a crash delays a resend where the crash is not seen
    /// at once.
    pub hold: Duration,
    /// How long sent messages are kept before they are deleted.
    pub keep_sent: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            max_attempts: 8,
            first_delay: Duration::from_secs(10),
            max_delay: Duration::from_secs(3600),
            hold: Duration::from_secs(5),
            keep_sent: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

impl Policy {
    /// The delay before try `attempts + 1`: doubling, capped, with up to a quarter of
    /// jitter so that many failures do not retry in step.
    pub fn delay(&self, attempts: i32) -> Duration {
        let doubled = self
            .first_delay
            .saturating_mul(1_u32 << attempts.clamp(0, 20))
            .min(self.max_delay);
        let jitter = doubled.mul_f64(rand::random::<f64>() * 0.25);
        doubled.saturating_add(jitter)
    }
}

/// Delivers one kind of outbox message.
#[async_trait]
pub trait Delivery: Send + Sync + 'static {
    /// The outbox kind it delivers (`email`, `webhook`).
    fn kind(&self) -> &'static str;

    /// Deliver one claimed message. `last_try`: no retry follows a transient failure.
    async fn deliver(&self, message: &QueuedMessage, last_try: bool) -> Result<(), SendError>;
}

/// A worker for one kind of outbox message.
pub struct OutboxWorker {
    outbox: Arc<dyn Outbox>,
    delivery: Arc<dyn Delivery>,
    metrics: Arc<SchedulerMetrics>,
    pub policy: Policy,
}

/// The longest an idle worker sleeps before it looks at the clock again.
const IDLE: Duration = Duration::from_secs(60);
/// Messages claimed (and sent concurrently) at once.
const BATCH: usize = 16;

impl OutboxWorker {
    pub fn new(outbox: Arc<dyn Outbox>, delivery: Arc<dyn Delivery>) -> Self {
        OutboxWorker {
            outbox,
            delivery,
            metrics: Arc::default(),
            policy: Policy::default(),
        }
    }

    /// Report into `metrics` (shared with `/metrics`).
    pub fn with_metrics(mut self, metrics: Arc<SchedulerMetrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// Send until `shutdown`; a send in progress is finished and settled first.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut queued = self.outbox.outbox_changed();
        // When a message may next be ready (a retry, a claim running out).
        let mut next: Option<DateTime<Utc>> = None;
        let mut look = true;
        loop {
            if shutdown.is_cancelled() {
                return;
            }
            let now = Utc::now();
            if look || next.is_some_and(|at| at <= now) {
                queued.borrow_and_update();
                match self.round(now).await {
                    Ok(true) => {
                        look = true;
                        continue;
                    }
                    Ok(false) => match self.outbox.next_ready(self.delivery.kind()).await {
                        Ok(at) => {
                            next = at;
                            look = false;
                        }
                        Err(error) => {
                            tracing::warn!(%error, "outbox unavailable; trying again");
                            next = Some(now + chrono::Duration::seconds(1));
                        }
                    },
                    Err(error) => {
                        tracing::warn!(%error, "outbox unavailable; trying again");
                        next = Some(now + chrono::Duration::seconds(1));
                    }
                }
            }
            let wait = next.map_or(IDLE, |at| {
                (at - Utc::now())
                    .to_std()
                    .unwrap_or(Duration::ZERO)
                    .min(IDLE)
            });
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = queued.changed() => look = true,
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Claim and send a batch; whether there was anything.
    async fn round(&self, now: DateTime<Utc>) -> Result<bool, cairn_events::StoreError> {
        let messages = self
            .outbox
            .claim_outbox(self.delivery.kind(), now, BATCH, self.policy.hold)
            .await?;
        if messages.is_empty() {
            return Ok(false);
        }
        let ids: Vec<uuid::Uuid> = messages.iter().map(|m| m.message.id).collect();
        let outbox = self.outbox.clone();
        let _renewal = renew_while(
            Clock::system(),
            self.policy.hold,
            "outbox messages",
            move |until| {
                let (outbox, ids) = (outbox.clone(), ids.clone());
                async move { outbox.renew_outbox(&ids, until).await }
            },
        );
        // A claimed batch is sent at once, over the transport's pool.
        let mut sending = tokio::task::JoinSet::new();
        for message in messages {
            let (outbox, delivery, policy) = (
                self.outbox.clone(),
                self.delivery.clone(),
                self.policy.clone(),
            );
            sending.spawn(deliver(outbox, delivery, policy, message));
        }
        let kind = self.delivery.kind();
        while let Some(done) = sending.join_next().await {
            match done {
                Ok(outcome) => self.metrics.settled(kind, &outcome),
                // Its claim runs out and the message is tried again.
                Err(panicked) => tracing::error!(%panicked, kind, "delivering a message panicked"),
            }
        }
        Ok(true)
    }
}

/// Delete sent messages older than `keep`: the outbox's maintenance job.
pub async fn purge_sent(outbox: &dyn Outbox, keep: Duration) -> Result<(), String> {
    let before = Utc::now() - chrono::Duration::from_std(keep).unwrap_or(chrono::Duration::days(7));
    match outbox.purge_sent(before).await {
        Ok(0) => Ok(()),
        Ok(n) => {
            tracing::info!(n, "sent outbox messages past their retention deleted");
            Ok(())
        }
        Err(error) => Err(format!(
            "could not delete old sent outbox messages: {error}"
        )),
    }
}

/// Deliver one claimed message and settle it.
async fn deliver(
    outbox: Arc<dyn Outbox>,
    delivery: Arc<dyn Delivery>,
    policy: Policy,
    queued: QueuedMessage,
) -> Outcome {
    let id = queued.message.id;
    let kind = delivery.kind();
    let last_try = queued.attempts + 1 >= policy.max_attempts;
    let outcome = match delivery.deliver(&queued, last_try).await {
        Ok(()) => Outcome::Sent,
        Err(SendError::Permanent(error)) => Outcome::Dead { error },
        Err(SendError::Transient(error)) if last_try => Outcome::Dead { error },
        Err(SendError::Transient(error)) => {
            let delay = policy.delay(queued.attempts);
            let at = Utc::now()
                + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::hours(1));
            Outcome::Retry { error, at }
        }
    };
    match &outcome {
        Outcome::Sent => tracing::debug!(%id, kind, "delivered"),
        Outcome::Retry { error, at } => {
            tracing::warn!(%id, kind, %error, %at, "delivery failed; will retry")
        }
        Outcome::Dead { error } => tracing::error!(%id, kind, %error, "a dead letter"),
    }
    // A message sent but not settled is sent again: worth a few tries.
    for attempt in 1..=3 {
        match outbox.settle(id, outcome.clone()).await {
            Ok(()) => break,
            Err(error) if attempt < 3 => {
                tracing::warn!(%id, kind, %error, "could not settle a message; trying again");
                tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
            }
            Err(error) => {
                // The claim runs out and the message is delivered again, with the same id.
                tracing::warn!(%id, kind, %error, "could not settle a message");
            }
        }
    }
    outcome
}
