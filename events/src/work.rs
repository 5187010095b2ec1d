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
//! for a short while, and records which process holds it. The holder renews its claims
//! while the work runs, so a long batch or a slow send is never started twice; a holder
//! that dies mid-way loses its claims at once where the backend can tell (on Postgres each
//! process holds a session advisory lock for as long as it lives, and a claim whose
//! holder's lock is free counts as run out), else when they run out, and the item is done
//! again (at least once). Whoever acts on an item therefore makes the action idempotent: a
//! due item's command checks the stream's state, an email carries a Message-ID derived
//! from its cause.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::sync::watch;
use uuid::Uuid;

use crate::{Envelope, StoreError};

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

    /// Read at once, before a round's `items` run, the streams their actions would each
    /// read: one round trip for a burst instead of one per item. The sleeper hands each
    /// stream to [`DueAction::run_read`] for the stream's first item. By default nothing
    /// is read and every item runs with [`DueAction::run`]. A failure only costs the
    /// saving: the items read their own.
    async fn prefetch(&self, _items: &[DueItem]) -> HashMap<String, Vec<Envelope>> {
        HashMap::new()
    }

    /// [`DueAction::run`], given the item's stream as [`DueAction::prefetch`] read it.
    /// Other processes may have appended since, so the action's append must expect the
    /// version it decided on (a conflict reads the stream again).
    async fn run_read(&self, item: &DueItem, _stream: Vec<Envelope>) -> Result<Handled, String> {
        self.run(item).await
    }
}

/// The due index: what the scheduler sleeps on.
///
/// Claims are held by this store's process (its holder id, [`DueIndex::holder`]): they
/// hide an item from other processes until they run out or the holder dies.
#[async_trait]
pub trait DueIndex: Send + Sync + 'static {
    /// The earliest time something may become claimable: the earliest due time of an
    /// unclaimed item, or the earliest end of a claim.
    async fn next_due(&self) -> Result<Option<DateTime<Utc>>, StoreError>;

    /// Claim up to `limit` items due at `now`, earliest first, for `hold`: other claims
    /// skip them until then, or until this process dies. Items claimed elsewhere are
    /// skipped, not waited for; claims of a dead holder are taken over.
    async fn claim_due(
        &self,
        now: DateTime<Utc>,
        limit: usize,
        hold: Duration,
    ) -> Result<Vec<DueItem>, StoreError>;

    /// Extend this process's claims on `keys` until `until`; how many it still held.
    async fn renew_due(&self, keys: &[String], until: DateTime<Utc>) -> Result<u64, StoreError>;

    /// Drop an item whose action turned out to have nothing to do (the command that
    /// does something drops it itself, through [`Effects::unschedule`]). An item that was
    /// moved since it was claimed (a later `due_at`) stays.
    async fn finish_due(&self, item: &DueItem) -> Result<(), StoreError>;

    /// Put a claimed item off until `at` (the next try of an action that failed), holding
    /// it no longer. An item moved since it was claimed, or claimed by another process
    /// since, is left as it is.
    async fn retry_due(&self, item: &DueItem, at: DateTime<Utc>) -> Result<(), StoreError>;

    /// Move a claimed item to its next time `next` and release the claim (a periodic job
    /// that ran). Whether it moved: not if it was moved or taken by another process since.
    async fn reschedule_due(&self, item: &DueItem, next: DateTime<Utc>)
    -> Result<bool, StoreError>;

    /// Make sure `item` is in the index: insert it if its key is absent; move it to
    /// `item.due_at` if it is there, unclaimed and not yet due at `now` (a changed
    /// schedule). An overdue or claimed item stays as it is.
    async fn plan_due(&self, item: &DueItem, now: DateTime<Utc>) -> Result<(), StoreError>;

    /// Depths and the next items, for `/metrics` and `cairn scheduler status`.
    async fn due_status(&self, now: DateTime<Utc>, next: usize) -> Result<DueStatus, StoreError>;

    /// This process's holder id, recorded in its claims.
    fn holder(&self) -> i64;

    /// Counters about claims, for `/metrics`.
    fn work_stats(&self) -> Arc<WorkStats>;

    /// Changes when an item is scheduled (by this process or, on Postgres, any other),
    /// so a sleeping scheduler can look again at the earliest due time.
    fn due_changed(&self) -> watch::Receiver<u64>;
}

/// A due item as `cairn scheduler status` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingItem {
    pub item: DueItem,
    /// The holder id of the process that claimed it, while a claim is held.
    pub claimed_by: Option<i64>,
    /// The end of its claim, or the next try of an item put off.
    pub claimed_until: Option<DateTime<Utc>>,
}

/// The due index at a glance.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DueStatus {
    /// Items in the index.
    pub depth: u64,
    /// Items whose due time has passed.
    pub overdue: u64,
    /// The due time of the oldest overdue item.
    pub oldest_overdue: Option<DateTime<Utc>>,
    /// The earliest items, earliest first.
    pub next: Vec<PendingItem>,
}

/// The outbox at a glance.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OutboxStatus {
    /// Messages waiting to be sent (claimed ones included).
    pub queued: u64,
    /// Of those, messages that failed at least once.
    pub retrying: u64,
    /// Dead letters.
    pub dead: u64,
    /// When the oldest waiting message was queued.
    pub oldest_queued: Option<DateTime<Utc>>,
}

/// Claims taken over from a holder that died or let them run out, by this process.
#[derive(Debug, Default)]
pub struct WorkStats {
    due_taken_over: AtomicU64,
    outbox_taken_over: AtomicU64,
}

impl WorkStats {
    pub(crate) fn due_taken_over(&self, n: usize) {
        self.due_taken_over.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub(crate) fn outbox_taken_over(&self, n: usize) {
        self.outbox_taken_over
            .fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Append these counters to a Prometheus exposition.
    pub fn render(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "# HELP cairn_claims_taken_over_total Claims this process took over from a holder that died or let them run out."
        );
        let _ = writeln!(out, "# TYPE cairn_claims_taken_over_total counter");
        for (queue, n) in [
            ("due", &self.due_taken_over),
            ("outbox", &self.outbox_taken_over),
        ] {
            let _ = writeln!(
                out,
                "cairn_claims_taken_over_total{{queue=\"{queue}\"}} {}",
                n.load(Ordering::Relaxed)
            );
        }
    }
}

/// The outbox: what the workers send.
///
/// Claims are held by this store's process, as in the [`DueIndex`].
#[async_trait]
pub trait Outbox: Send + Sync + 'static {
    /// Claim up to `limit` messages of `kind` that are ready at `now`, oldest first, for
    /// `hold`; messages claimed by a dead holder are taken over.
    async fn claim_outbox(
        &self,
        kind: &str,
        now: DateTime<Utc>,
        limit: usize,
        hold: Duration,
    ) -> Result<Vec<QueuedMessage>, StoreError>;

    /// Extend this process's claims on `ids` until `until`; how many it still held.
    async fn renew_outbox(&self, ids: &[Uuid], until: DateTime<Utc>) -> Result<u64, StoreError>;

    /// The earliest time a message of `kind` becomes ready (a retry, the end of a claim).
    async fn next_ready(&self, kind: &str) -> Result<Option<DateTime<Utc>>, StoreError>;

    /// Record the outcome of a try, and release the claim.
    async fn settle(&self, id: Uuid, outcome: Outcome) -> Result<(), StoreError>;

    /// Dead letters, oldest first.
    async fn dead_letters(&self, limit: usize) -> Result<Vec<QueuedMessage>, StoreError>;

    /// Queue a dead letter again, with its tries reset. Whether it was one.
    async fn revive(&self, id: Uuid) -> Result<bool, StoreError>;

    /// Delete sent messages sent before `before`; how many.
    async fn purge_sent(&self, before: DateTime<Utc>) -> Result<u64, StoreError>;

    /// Counts, for `/metrics` and `cairn scheduler status`.
    async fn outbox_status(&self) -> Result<OutboxStatus, StoreError>;

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
