//! Work an append leaves for later: due items for the scheduler and outbox messages for
//! the workers, committed in the same transaction as the events that cause them.
//!
//! A command that schedules something (a capsule's release at its send time) or must tell
//! someone (a confirmation email) cannot append and then record that work elsewhere: a
//! crash between the two would lose the work, or leave work behind for events that never
//! committed. So the work rides on the append ([`Effects`] in an
//! [`AppendRequest`](crate::AppendRequest)) and is written only if the append is accepted.
//!
//! Both kinds are claimed rather than taken: a claim hides an item from other processes
//! for a while, and a worker that dies mid-way simply lets its claim run out, so the item
//! is done again (at least once). Whoever acts on an item therefore makes the action
//! idempotent: a due item's command checks the stream's state, an email carries a
//! Message-ID derived from its cause.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::sync::watch;
use uuid::Uuid;

use crate::StoreError;

/// Something to do at a time: the scheduler issues `action` on `stream_id` once `due_at`
/// has passed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DueItem {
    /// Unique: scheduling the same key again moves the item (e.g. `capsule-…:release`).
    pub key: String,
    pub stream_id: String,
    /// What to do, e.g. `release` or `expire`; the scheduler maps it to a command.
    pub action: String,
    pub due_at: DateTime<Utc>,
}

/// A message for a worker to send after commit (an email, a webhook call).
#[derive(Clone, Debug, PartialEq)]
pub struct OutboxMessage {
    /// Unique and stable: derived from the cause, so the same cause never queues twice and
    /// a resend is recognisable (the email's Message-ID is built from it).
    pub id: Uuid,
    /// Which worker sends it, e.g. `email`.
    pub kind: String,
    pub payload: serde_json::Value,
}

/// The work an append leaves behind.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Effects {
    /// Due items to insert, or to move if their key exists.
    pub schedule: Vec<DueItem>,
    /// Keys of due items to drop (a cancelled capsule's release).
    pub unschedule: Vec<String>,
    /// Messages to queue; one whose id is already queued is left as it is.
    pub outbox: Vec<OutboxMessage>,
}

/// An outbox message as a worker claims it.
#[derive(Clone, Debug, PartialEq)]
pub struct QueuedMessage {
    pub message: OutboxMessage,
    /// Tries before this one.
    pub attempts: i32,
    pub queued_at: DateTime<Utc>,
    /// Why the last try failed, if one did.
    pub last_error: Option<String>,
}

/// What became of one try at sending a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Sent,
    /// Try again at the given time.
    Retry {
        error: String,
        at: DateTime<Utc>,
    },
    /// Give up: the message moves to the dead letters, listable and retryable.
    Dead {
        error: String,
    },
}

/// What came of a due item's action.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Handled {
    /// Done; the append it made dropped the item.
    Done,
    /// Nothing to do (the stream had moved on, e.g. a capsule cancelled since): drop it.
    Nothing,
}

/// Carries out a due item: maps its `action` to a command and issues it. Each job defines
/// its own (the capsules' release, expiry and file deletion); the scheduler only runs
/// them. Must be idempotent: after a crash an item can be handed over again. An `Err` keeps
/// the item, to be tried again later.
#[async_trait]
pub trait DueAction: Send + Sync + 'static {
    async fn run(&self, item: &DueItem) -> Result<Handled, String>;
}

/// The due index: what the scheduler sleeps on.
#[async_trait]
pub trait DueIndex: Send + Sync + 'static {
    /// The earliest due time of an item nobody holds a claim on.
    async fn next_due(&self) -> Result<Option<DateTime<Utc>>, StoreError>;

    /// Claim up to `limit` items due at `now`, earliest first, for `hold`: other claims
    /// skip them until then. Items claimed elsewhere are skipped, not waited for.
    async fn claim_due(
        &self,
        now: DateTime<Utc>,
        limit: usize,
        hold: Duration,
    ) -> Result<Vec<DueItem>, StoreError>;

    /// Drop an item whose action turned out to have nothing to do (the command that
    /// does something drops it itself, through [`Effects::unschedule`]). An item that was
    /// moved since it was claimed (a later `due_at`) stays.
    async fn finish_due(&self, item: &DueItem) -> Result<(), StoreError>;

    /// Keep a claimed item hidden until `at`: the next try of an action that failed. An
    /// item moved since it was claimed is left as it is.
    async fn retry_due(&self, item: &DueItem, at: DateTime<Utc>) -> Result<(), StoreError>;

    /// Changes when an item is scheduled (by this process or, on Postgres, any other),
    /// so a sleeping scheduler can look again at the earliest due time.
    fn due_changed(&self) -> watch::Receiver<u64>;
}

/// The outbox: what the workers send.
#[async_trait]
pub trait Outbox: Send + Sync + 'static {
    /// Claim up to `limit` messages of `kind` that are ready at `now`, oldest first, for
    /// `hold`.
    async fn claim_outbox(
        &self,
        kind: &str,
        now: DateTime<Utc>,
        limit: usize,
        hold: Duration,
    ) -> Result<Vec<QueuedMessage>, StoreError>;

    /// Record the outcome of a try.
    async fn settle(&self, id: Uuid, outcome: Outcome) -> Result<(), StoreError>;

    /// Dead letters, oldest first.
    async fn dead_letters(&self, limit: usize) -> Result<Vec<QueuedMessage>, StoreError>;

    /// Queue a dead letter again, with its tries reset. Whether it was one.
    async fn revive(&self, id: Uuid) -> Result<bool, StoreError>;

    /// Delete sent messages sent before `before`; how many.
    async fn purge_sent(&self, before: DateTime<Utc>) -> Result<u64, StoreError>;

    /// Changes when a message is queued, so an idle worker can look again.
    fn outbox_changed(&self) -> watch::Receiver<u64>;
}

/// The work of a batch's accepted requests, in the form its statements take: for each
/// due-item key touched, the last thing asked of it (an item, or `None` to drop it), and
/// each outbox message once.
#[derive(Debug, Default)]
pub(crate) struct BatchWork<'a> {
    pub due: Vec<(&'a str, Option<&'a DueItem>)>,
    pub outbox: Vec<&'a OutboxMessage>,
}

impl<'a> BatchWork<'a> {
    pub(crate) fn of(
        requests: &'a [crate::AppendRequest],
        results: &[Result<crate::Appended, StoreError>],
    ) -> Self {
        let mut due: std::collections::BTreeMap<&str, Option<&DueItem>> = Default::default();
        let mut outbox: std::collections::BTreeMap<Uuid, &OutboxMessage> = Default::default();
        for (request, _) in requests.iter().zip(results).filter(|(_, r)| r.is_ok()) {
            // Within a request, drops come before schedules: "move" is drop + schedule.
            for key in &request.effects.unschedule {
                due.insert(key, None);
            }
            for item in &request.effects.schedule {
                due.insert(&item.key, Some(item));
            }
            for message in &request.effects.outbox {
                outbox.entry(message.id).or_insert(message);
            }
        }
        BatchWork {
            due: due.into_iter().collect(),
            outbox: outbox.into_values().collect(),
        }
    }

    pub(crate) fn schedules(&self) -> impl Iterator<Item = &'a DueItem> + '_ {
        self.due.iter().filter_map(|(_, item)| *item)
    }

    pub(crate) fn drops(&self) -> impl Iterator<Item = &'a str> + '_ {
        self.due
            .iter()
            .filter(|(_, item)| item.is_none())
            .map(|(key, _)| *key)
    }
}

/// Wake-ups for sleepers on the due index and the outbox: a counter that moves on every
/// change this process makes or hears of.
#[derive(Clone, Debug)]
pub(crate) struct WorkSignals {
    pub due: watch::Sender<u64>,
    pub outbox: watch::Sender<u64>,
}

impl WorkSignals {
    pub(crate) fn new() -> Self {
        WorkSignals {
            due: watch::channel(0).0,
            outbox: watch::channel(0).0,
        }
    }

    pub(crate) fn bump_due(&self) {
        self.due.send_modify(|n| *n = n.wrapping_add(1));
    }

    pub(crate) fn bump_outbox(&self) {
        self.outbox.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// After a batch committed with `work`.
    pub(crate) fn committed(&self, work: &BatchWork<'_>) {
        if work.schedules().next().is_some() {
            self.bump_due();
        }
        if !work.outbox.is_empty() {
            self.bump_outbox();
        }
    }
}

/// Claimed due items in the order they are to be done: earliest first (a claim's
/// `RETURNING` gives no order).
pub(crate) fn earliest_first(
    rows: impl IntoIterator<Item = (String, String, String, DateTime<Utc>)>,
) -> Vec<DueItem> {
    let mut items: Vec<DueItem> = rows
        .into_iter()
        .map(|(key, stream_id, action, due_at)| DueItem {
            key,
            stream_id,
            action,
            due_at,
        })
        .collect();
    items.sort_by(|a, b| a.due_at.cmp(&b.due_at).then_with(|| a.key.cmp(&b.key)));
    items
}

/// Claimed messages oldest first.
pub(crate) fn oldest_first(mut messages: Vec<QueuedMessage>) -> Vec<QueuedMessage> {
    messages.sort_by_key(|m| (m.queued_at, m.message.id));
    messages
}

/// `now + hold`, saturating.
pub(crate) fn after(now: DateTime<Utc>, hold: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(hold)
        .ok()
        .and_then(|d| now.checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}
