//! Time capsules, the write side: submit, confirm, cancel, and the scheduler's release and
//! expire.
//!
//! Each use case loads the capsule's stream, decides, and appends with the version it
//! read, together with the work the decision leaves: due items (the expiry of an
//! unconfirmed capsule, the release of a confirmed one) and the emails it causes, so an
//! email is queued exactly when its cause is committed. A conflicting writer (a confirm
//! racing the expiry) makes the loser read again and decide anew.

pub mod api;
pub mod chronoria;
pub mod emails;
pub mod files;
pub mod limits;
pub mod pages;
pub mod upload;

use std::sync::Arc;

use cairn_events::domain::capsule::{
    self, CapsuleCancelled, CapsuleConfirmed, CapsuleExpired, CapsuleReleased, CapsuleState,
    CapsuleSubmitted, EmailAddress, Refusal, Status,
};
use cairn_events::{
    AppendRequest, DueItem, Effects, EventStore, ExpectedVersion, Metadata, NewEvent,
    OutboxMessage, StoreError,
};
use chrono::{DateTime, Datelike, Duration, Utc};
use uuid::Uuid;

pub use emails::{EmailKind, Links};
pub use files::Files;

/// How long a sender has to confirm.
pub const CONFIRM_WITHIN: Duration = Duration::hours(24);
/// Due-item actions.
pub const RELEASE: &str = "release";
pub const EXPIRE: &str = "expire";
/// Delete a capsule's file from blob storage.
pub const PURGE: &str = "purge-file";

#[derive(Debug, thiserror::Error)]
pub enum CapsuleError {
    #[error("{0}")]
    Refused(Refusal),
    /// Confirm of an unknown, expired, cancelled or already confirmed capsule.
    #[error("CAPSULE_NA_OR_EXPIRED")]
    NotPending,
    /// Cancel of an unknown, released or cancelled capsule, or with the wrong recipient.
    #[error("CAPSULE_NA_OR_RELEASED")]
    NotCancellable,
    #[error("NO_FILE_AVAILABLE_FOR_THIS_CAPSULE")]
    NoFile,
    #[error("BLOCKED_SENDER_EMAIL")]
    BlockedSender,
    /// Too many submissions from this address or sender; try again after the wait.
    #[error("TOO_MANY_REQUESTS")]
    RateLimited(std::time::Duration),
    /// An Idempotency-Key sent before with a different capsule.
    #[error("IDEMPOTENCY_KEY_REUSED")]
    KeyReused,
    #[error("INVALID_IDEMPOTENCY_KEY")]
    InvalidKey,
    #[error("blob storage failed: {0}")]
    Blob(String),
    #[error("the capsule's emails could not be written: {0}")]
    Template(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<Refusal> for CapsuleError {
    fn from(refusal: Refusal) -> Self {
        CapsuleError::Refused(refusal)
    }
}

/// Now, injectable for tests.
pub type Clock = Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>;

/// What a new capsule needs, parsed.
#[derive(Clone, Debug)]
pub struct Submission {
    pub sender: capsule::Party,
    pub recipient: capsule::Party,
    pub send_at: DateTime<Utc>,
    pub text: String,
    pub attachment: Option<capsule::Attachment>,
}

/// The capsule use cases, over one event store.
#[derive(Clone)]
pub struct Capsules {
    events: Arc<dyn EventStore>,
    emails: Arc<emails::Emails>,
    clock: Clock,
    /// Where attached files are kept.
    pub files: Files,
    /// The least time between submitting and the send time.
    pub min_lead: Duration,
    /// Sender addresses refused, as [`EmailAddress::sender_key`]s.
    pub blocked_senders: Arc<Vec<String>>,
    /// Submissions per client address and per sender.
    pub limits: Arc<Limits>,
}

/// The submission rate limits.
#[derive(Debug)]
pub struct Limits {
    pub per_client: limits::SlidingLog,
    pub per_sender: limits::SlidingLog,
}

impl Default for Limits {
    /// 30 submissions an hour from one address, 10 from one sender.
    fn default() -> Self {
        let hour = std::time::Duration::from_secs(3600);
        Limits {
            per_client: limits::SlidingLog::new(30, hour),
            per_sender: limits::SlidingLog::new(10, hour),
        }
    }
}

/// A decision: the event to append and the work it leaves.
struct Decision {
    event: NewEvent,
    effects: Effects,
}

impl Capsules {
    pub fn new(
        events: Arc<dyn EventStore>,
        links: Links,
        files: Files,
        clock: Clock,
    ) -> Result<Self, CapsuleError> {
        Ok(Capsules {
            events,
            emails: Arc::new(emails::Emails::new(links)?),
            clock,
            files,
            min_lead: Duration::zero(),
            blocked_senders: Arc::new(Vec::new()),
            limits: Arc::new(Limits::default()),
        })
    }

    /// Now, by the clock these use cases were given.
    pub fn now(&self) -> DateTime<Utc> {
        (self.clock)()
    }

    /// Where the links in emails and answers point.
    pub fn links(&self) -> &Links {
        self.emails.links()
    }

    fn metadata(actor: &str) -> Metadata {
        Metadata {
            actor: Some(actor.to_owned()),
            correlation_id: Some(Uuid::now_v7()),
            causation_id: None,
        }
    }

    /// Check a send time against now and the minimum lead time.
    pub fn check_send_time(&self, send_at: DateTime<Utc>) -> Result<(), Refusal> {
        let earliest = self.now().checked_add_signed(self.min_lead);
        // Four-digit years: times must stay RFC 3339 in every view of the capsule.
        if earliest.is_none_or(|earliest| send_at <= earliest) || send_at.year() > 9999 {
            Err(Refusal::InvalidFutureTime)
        } else {
            Ok(())
        }
    }

    /// Write a new capsule, sent from `client`; it waits for confirmation. Returns its id.
    pub async fn submit(
        &self,
        submission: Submission,
        client: Option<std::net::IpAddr>,
    ) -> Result<Uuid, CapsuleError> {
        let capsule_id = self.new_id(None);
        self.submit_as(capsule_id, None, submission, client).await?;
        Ok(capsule_id)
    }

    /// The id of a new capsule: random, or, for a submission sent with an
    /// `Idempotency-Key`, derived from the key, so that a retry names the same capsule.
    pub fn new_id(&self, idempotency_key: Option<&str>) -> Uuid {
        idempotency_key.map_or_else(new_capsule_id, |key| self.files.keyed_id(key))
    }

    /// The capsule a submission sent with Idempotency-Key `key` (under the id
    /// [`Capsules::new_id`] gave) names, if it was written before: the submission is a
    /// retry, for [`Capsules::submit_as`] to answer.
    pub async fn written_before(
        &self,
        capsule_id: Uuid,
        key: Option<&str>,
    ) -> Result<Option<CapsuleSubmitted>, CapsuleError> {
        if key.is_none() {
            return Ok(None);
        }
        Ok(self.load(capsule_id).await?.map(|state| state.submitted))
    }

    /// As [`Capsules::submit`], under an id from [`Capsules::new_id`]. A retry (`first`,
    /// from [`Capsules::written_before`], or a concurrent one the append finds) of the
    /// same capsule succeeds again without writing anything and without the checks a new
    /// submission goes through (its send time may have passed since, the sender been
    /// blocked, the limit reached); another capsule under the key is
    /// [`CapsuleError::KeyReused`]. `true` when this call wrote the capsule.
    pub async fn submit_as(
        &self,
        capsule_id: Uuid,
        first: Option<&CapsuleSubmitted>,
        submission: Submission,
        client: Option<std::net::IpAddr>,
    ) -> Result<bool, CapsuleError> {
        let submitted = CapsuleSubmitted {
            capsule_id,
            sender: submission.sender,
            recipient: submission.recipient,
            send_at: submission.send_at,
            text: submission.text,
            attachment: submission.attachment,
        };
        if let Some(first) = first {
            return repeat(first, &submitted);
        }
        if self.is_blocked(&submitted.sender.email).await? {
            return Err(CapsuleError::BlockedSender);
        }
        self.check_send_time(submitted.send_at)?;
        capsule::validate_text(&submitted.text, submitted.attachment.is_some())?;
        let client = client.map(limits::client_key).unwrap_or_default();
        let sender = submitted.sender.email.sender_key();
        limits::admit(
            &[
                (&self.limits.per_client, client.as_str()),
                (&self.limits.per_sender, sender.as_str()),
            ],
            std::time::Instant::now(),
        )
        .map_err(CapsuleError::RateLimited)?;
        let now = self.now();
        let state = CapsuleState {
            submitted: submitted.clone(),
            submitted_at: now,
            status: Status::Pending,
            since: now,
            version: 0,
            file_purged: false,
        };
        let effects = Effects {
            schedule: vec![due(capsule_id, EXPIRE, now + CONFIRM_WITHIN)],
            outbox: vec![self.email(&state, EmailKind::Confirm, now)?],
            ..Effects::default()
        };
        let request = AppendRequest::new(
            capsule::stream_id(capsule_id),
            ExpectedVersion::NoStream,
            vec![NewEvent::at(&submitted, Self::metadata("sender"), now)],
        )
        .with_effects(effects);
        match self.events.append(request).await {
            Ok(_) => Ok(true),
            Err(StoreError::Conflict { .. }) => {
                let first = self
                    .load(capsule_id)
                    .await?
                    .ok_or(CapsuleError::KeyReused)?;
                repeat(&first.submitted, &state.submitted)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The sender confirms: the capsule is scheduled for release (at once if its time has
    /// passed).
    pub async fn confirm(&self, capsule_id: Uuid) -> Result<(), CapsuleError> {
        self.decide(capsule_id, |state, now| {
            let expired = now >= state.submitted_at + CONFIRM_WITHIN;
            if state.status != Status::Pending || expired {
                return Err(CapsuleError::NotPending);
            }
            Ok(Decision {
                event: NewEvent::at(
                    &CapsuleConfirmed { capsule_id },
                    Self::metadata("sender"),
                    now,
                ),
                effects: Effects {
                    unschedule: vec![key(capsule_id, EXPIRE)],
                    schedule: vec![due(capsule_id, RELEASE, state.submitted.send_at.max(now))],
                    outbox: vec![self.email(state, EmailKind::Active, now)?],
                },
            })
        })
        .await?
        .ok_or(CapsuleError::NotPending)
    }

    /// Cancel a capsule not yet released; `recipient_email` must be its recipient's.
    pub async fn cancel(
        &self,
        capsule_id: Uuid,
        recipient_email: &str,
    ) -> Result<(), CapsuleError> {
        self.decide(capsule_id, |state, now| {
            let open = matches!(state.status, Status::Pending | Status::Active);
            if !open || !state.is_recipient(recipient_email) {
                return Err(CapsuleError::NotCancellable);
            }
            Ok(Decision {
                event: NewEvent::at(
                    &CapsuleCancelled { capsule_id },
                    Self::metadata("sender"),
                    now,
                ),
                effects: Effects {
                    unschedule: vec![key(capsule_id, EXPIRE), key(capsule_id, RELEASE)],
                    schedule: purge_file(state, now),
                    outbox: vec![self.email(state, EmailKind::Cancelled, now)?],
                },
            })
        })
        .await?
        .ok_or(CapsuleError::NotCancellable)
    }

    /// Release a confirmed capsule: its delivery email is queued. `false` when there is
    /// nothing to release (cancelled since, or released already).
    pub async fn release(&self, capsule_id: Uuid) -> Result<bool, CapsuleError> {
        let released = self
            .decide(capsule_id, |state, now| {
                if state.status != Status::Active {
                    return Err(CapsuleError::NotCancellable);
                }
                Ok(Decision {
                    event: NewEvent::at(
                        &CapsuleReleased { capsule_id },
                        Self::metadata("scheduler"),
                        now,
                    ),
                    effects: Effects {
                        unschedule: vec![key(capsule_id, RELEASE)],
                        schedule: purge_file(state, now + self.files.retention),
                        outbox: vec![self.email(state, EmailKind::Delivery, now)?],
                    },
                })
            })
            .await;
        nothing_is_false(released)
    }

    /// Expire a capsule nobody confirmed. `false` when there is nothing to expire.
    pub async fn expire(&self, capsule_id: Uuid) -> Result<bool, CapsuleError> {
        let expired = self
            .decide(capsule_id, |state, now| {
                if state.status != Status::Pending {
                    return Err(CapsuleError::NotPending);
                }
                Ok(Decision {
                    event: NewEvent::at(
                        &CapsuleExpired { capsule_id },
                        Self::metadata("scheduler"),
                        now,
                    ),
                    effects: Effects {
                        unschedule: vec![key(capsule_id, EXPIRE)],
                        schedule: purge_file(state, now),
                        outbox: vec![self.email(state, EmailKind::Expired, now)?],
                    },
                })
            })
            .await;
        nothing_is_false(expired)
    }

    /// Delete the file of a capsule that is over (cancelled, expired, or delivered and
    /// kept its time). `false` when there is nothing to delete.
    pub async fn purge_file(&self, capsule_id: Uuid) -> Result<bool, CapsuleError> {
        let Some(state) = self.load(capsule_id).await? else {
            return Ok(false);
        };
        let over = matches!(
            state.status,
            Status::Cancelled | Status::Expired | Status::Released
        );
        let Some(attachment) = state.kept_file().filter(|_| over) else {
            return Ok(false);
        };
        // Deleting first: if the event is not written, the due item runs again, and
        // deleting a file already gone is no error.
        self.files.delete(&attachment.blob).await?;
        let purged = self
            .decide(capsule_id, |state, now| {
                if state.file_purged {
                    return Err(CapsuleError::NotCancellable);
                }
                Ok(Decision {
                    event: NewEvent::at(
                        &capsule::CapsuleFilePurged { capsule_id },
                        Self::metadata("scheduler"),
                        now,
                    ),
                    effects: Effects {
                        unschedule: vec![key(capsule_id, PURGE)],
                        ..Effects::default()
                    },
                })
            })
            .await;
        nothing_is_false(purged)
    }

    /// Delete stored files no capsule keeps, last written before `cutoff`: uploads
    /// whose capsule was never written (the process died between storing the file and
    /// submitting it, or mid-upload), and files of capsules that have deleted theirs. A file
    /// a capsule still keeps is left to its own due deletion. `cutoff` is by the blob
    /// store's clock (the wall clock): give uploads in progress a wide margin. Returns how
    /// many went.
    pub async fn sweep_files(&self, cutoff: DateTime<Utc>) -> Result<usize, CapsuleError> {
        let mut swept = 0;
        for (blob, capsule_id) in self.files.written_before(cutoff).await? {
            let kept = match capsule_id {
                Some(id) => self
                    .load(id)
                    .await?
                    .is_some_and(|state| state.kept_file().is_some_and(|f| f.blob == blob)),
                None => false,
            };
            if !kept {
                // One that cannot be deleted must not hold up the rest.
                match self.files.delete_stale(&blob).await {
                    Ok(()) => {
                        tracing::info!(%blob, "deleted a file no capsule keeps");
                        swept += 1;
                    }
                    Err(error) => {
                        tracing::warn!(%error, %blob, "a file no capsule keeps could not be deleted")
                    }
                }
            }
        }
        Ok(swept)
    }

    /// A fresh download link for the file of the capsule in `state`, if it may be
    /// downloaded ([`CapsuleState::downloadable_file`]).
    pub fn download_link(&self, state: &CapsuleState) -> Result<files::Link, CapsuleError> {
        let file = state.downloadable_file().ok_or(CapsuleError::NoFile)?;
        Ok(self
            .files
            .link(&self.links().public_url, state, file, self.now()))
    }

    /// The capsule as its events tell it.
    pub async fn load(&self, capsule_id: Uuid) -> Result<Option<CapsuleState>, CapsuleError> {
        let events = self
            .events
            .read_stream(&capsule::stream_id(capsule_id))
            .await?;
        CapsuleState::of(&events)
            .map_err(|e| CapsuleError::Store(StoreError::Corrupt(e.to_string())))
    }

    /// Load, decide, append; on a conflict, load and decide again. `Ok(None)` for an
    /// unknown capsule.
    async fn decide(
        &self,
        capsule_id: Uuid,
        decide: impl Fn(&CapsuleState, DateTime<Utc>) -> Result<Decision, CapsuleError>,
    ) -> Result<Option<()>, CapsuleError> {
        for _ in 0..3 {
            let Some(state) = self.load(capsule_id).await? else {
                return Ok(None);
            };
            let decision = decide(&state, self.now())?;
            let request = AppendRequest::new(
                capsule::stream_id(capsule_id),
                ExpectedVersion::Exact(state.version),
                vec![decision.event],
            )
            .with_effects(decision.effects);
            match self.events.append(request).await {
                Ok(_) => return Ok(Some(())),
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(StoreError::Conflict {
            stream_id: capsule::stream_id(capsule_id),
            expected: ExpectedVersion::Any,
            actual: -1,
        }
        .into())
    }

    /// Whether `sender` is blocked, by the configuration or from the CLI.
    async fn is_blocked(&self, sender: &EmailAddress) -> Result<bool, CapsuleError> {
        let key = sender.sender_key();
        if self.blocked_senders.contains(&key) {
            return Ok(true);
        }
        Ok(self.blocked_by_cli().await?.contains(&key))
    }

    /// The senders blocked from the CLI (`cairn sender block`), case-folded.
    pub async fn blocked_by_cli(&self) -> Result<Vec<String>, CapsuleError> {
        let events = self.events.read_stream(capsule::BLOCKLIST_STREAM).await?;
        Ok(capsule::blocked_senders(&events))
    }

    /// Block (or, with `blocked` false, unblock) a sender address.
    pub async fn set_blocked(&self, email: &str, blocked: bool) -> Result<(), CapsuleError> {
        let email = EmailAddress::parse(email)?;
        let metadata = Self::metadata("cli");
        let event = if blocked {
            NewEvent::new(&capsule::SenderBlocked { email }, metadata)
        } else {
            NewEvent::new(&capsule::SenderUnblocked { email }, metadata)
        };
        self.events
            .append(AppendRequest::new(
                capsule::BLOCKLIST_STREAM,
                ExpectedVersion::Any,
                vec![event],
            ))
            .await?;
        Ok(())
    }

    fn email(
        &self,
        state: &CapsuleState,
        kind: EmailKind,
        now: DateTime<Utc>,
    ) -> Result<OutboxMessage, CapsuleError> {
        self.emails.render(state, kind, now)
    }
}

/// Whether a retried submission asks for the capsule `first` was: the same people, time,
/// text and file (the file's storage aside, which each upload has its own of).
/// The answer to a retry: `Ok(false)` (nothing written) for the same capsule,
/// [`CapsuleError::KeyReused`] for another.
fn repeat(first: &CapsuleSubmitted, again: &CapsuleSubmitted) -> Result<bool, CapsuleError> {
    let file = |s: &CapsuleSubmitted| {
        s.attachment
            .as_ref()
            .map(|a| (a.file_name.clone(), a.bytes, a.text_location))
    };
    let same = first.sender == again.sender
        && first.recipient == again.recipient
        && first.send_at == again.send_at
        && first.text == again.text
        && file(first) == file(again);
    if same {
        Ok(false)
    } else {
        Err(CapsuleError::KeyReused)
    }
}

/// An `Idempotency-Key` header: 1-255 visible ASCII characters, if given.
pub fn idempotency_key(headers: &axum::http::HeaderMap) -> Result<Option<String>, CapsuleError> {
    crate::idempotency_key(headers).map_err(|()| CapsuleError::InvalidKey)
}

/// For the scheduler: a refusal means the capsule moved on, so there is nothing to do.
fn nothing_is_false(outcome: Result<Option<()>, CapsuleError>) -> Result<bool, CapsuleError> {
    match outcome {
        Ok(Some(())) => Ok(true),
        Ok(None) | Err(CapsuleError::NotPending | CapsuleError::NotCancellable) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Capsule ids are in the links emailed to people: 122 random bits, so they cannot be
/// guessed (a time-ordered id would give part of itself away).
fn new_capsule_id() -> Uuid {
    let bytes: [u8; 16] = rand::random();
    uuid::Builder::from_random_bytes(bytes).into_uuid()
}

/// The due item deleting the file of the capsule in `state` at `at`, if it has one.
fn purge_file(state: &CapsuleState, at: DateTime<Utc>) -> Vec<DueItem> {
    state
        .kept_file()
        .map(|_| due(state.submitted.capsule_id, PURGE, at))
        .into_iter()
        .collect()
}

fn key(capsule_id: Uuid, action: &str) -> String {
    format!("{}:{action}", capsule::stream_id(capsule_id))
}

fn due(capsule_id: Uuid, action: &str, due_at: DateTime<Utc>) -> DueItem {
    DueItem {
        key: key(capsule_id, action),
        stream_id: capsule::stream_id(capsule_id),
        action: action.to_owned(),
        due_at,
    }
}

/// The capsule a due item is about.
pub fn capsule_of(item: &DueItem) -> Option<Uuid> {
    item.stream_id
        .strip_prefix(capsule::CATEGORY)
        .and_then(|rest| rest.strip_prefix('-'))
        .and_then(|id| Uuid::parse_str(id).ok())
}
