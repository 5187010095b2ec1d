//! Time capsules, the write side: submit, confirm, cancel, and the scheduler's release,
//! expiry and file deletion.
//!
//! Each use case reads as: load the capsule's stream, [`decide`](decide::decide) (pure:
//! every rule is there), render the email the decision asks for, and append with the
//! version it read, together with the work the decision leaves: due items (the expiry of
//! an unconfirmed capsule, the release of a confirmed one) and the email, so an email is
//! queued exactly when its cause is committed. A conflicting writer (a confirm racing the
//! expiry, or the email worker recording a send in the stream) makes the loser read again
//! and decide anew.
//!
//! The layout every job follows: `decide.rs` (the rules), `state.rs` (the fold they are
//! made on), `error.rs` (how failures are answered), one file per way in (`api.rs`,
//! `chronoria.rs`, `upload.rs`, `pages.rs`), `files/` (blob storage, signed links, the
//! download route), `emails.rs`, `limits.rs`, `timers.rs` (what the scheduler runs), and
//! `history.rs` (what the status view and the cancel page show of a capsule's events).

pub mod api;
pub mod chronoria;
pub mod decide;
pub mod emails;
pub mod error;
pub mod files;
pub mod history;
pub mod limits;
pub mod pages;
pub mod series;
pub mod state;
pub mod timers;
pub mod upload;

use std::sync::Arc;

use cairn_events::domain::capsule::{self, CapsuleSubmitted, EmailAddress};
use cairn_events::{
    AppendRequest, Clock, Effects, Envelope, EventStore, ExpectedVersion, Metadata, NewEvent,
    StoreError,
};
use chrono::{DateTime, Utc};
use uuid::Uuid;

pub use decide::{CONFIRM_WITHIN, Command, Decision, EXPIRE, PURGE, RELEASE, Refused, Rules};
pub use emails::{EmailKind, Links};
pub use error::{CapsuleError, Refusal};
pub use files::Files;
pub use limits::Limits;
pub use state::{CapsuleState, Status};

/// What a command came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Its event was appended.
    Written,
    /// Nothing to write: the capsule had moved on, or the command repeated one written.
    Nothing,
}

/// What a new capsule needs, parsed.
#[derive(Clone, Debug)]
pub struct Submission {
    pub sender: capsule::Party,
    pub recipient: capsule::Party,
    pub send_at: DateTime<Utc>,
    pub text: String,
    pub attachment: Option<capsule::Attachment>,
    /// For a recurring capsule; `send_at` is then its first occurrence
    /// ([`Capsules::plan`]).
    pub schedule: Option<capsule::Schedule>,
    /// The user whose token came with it, if one did.
    pub owner: Option<Uuid>,
}

/// The capsule use cases, over one event store.
#[derive(Clone)]
pub struct Capsules {
    events: Arc<dyn EventStore>,
    emails: Arc<emails::Emails>,
    clock: Clock,
    /// Where attached files are kept.
    pub files: Files,
    /// The settings the decisions depend on.
    pub rules: Rules,
    /// Sender addresses refused, as [`EmailAddress::sender_key`]s.
    pub blocked_senders: Arc<Vec<String>>,
    /// Submissions per client address and per sender.
    pub limits: Arc<Limits>,
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
            rules: Rules::default(),
            blocked_senders: Arc::new(Vec::new()),
            limits: Arc::new(Limits::default()),
        })
    }

    /// Now, by the clock these use cases were given.
    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
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
        decide::check_send_time(send_at, self.now(), self.rules.min_lead)
    }

    /// Check a recurring capsule's schedule for a submission now, its series starting at
    /// `start` (`None`: now): its first occurrence (the capsule's send time) and the next
    /// ones.
    pub fn plan(
        &self,
        schedule: &capsule::Schedule,
        start: Option<DateTime<Utc>>,
    ) -> Result<series::Checked, Refusal> {
        let now = self.now();
        if let Some(start) = start {
            self.check_send_time(start)?;
        }
        let earliest = now + self.rules.min_lead;
        // A start the sender gave is included; "now" is not.
        let after = start.map_or(earliest, |s| {
            (s - chrono::Duration::milliseconds(1)).max(earliest)
        });
        series::check(schedule, after, self.rules.min_interval).map_err(Refusal::InvalidSchedule)
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
    ) -> Result<Option<CapsuleState>, CapsuleError> {
        if key.is_none() {
            return Ok(None);
        }
        self.load(capsule_id).await
    }

    /// As [`Capsules::submit`], under an id from [`Capsules::new_id`]. A retry (`first`,
    /// from [`Capsules::written_before`], or a concurrent one the append finds) of the
    /// same capsule is [`Outcome::Nothing`], without the checks a new submission goes
    /// through (its send time may have passed since, the sender been blocked, the limit
    /// reached); another capsule under the key is refused ([`Refused::KeyReused`]).
    pub async fn submit_as(
        &self,
        capsule_id: Uuid,
        first: Option<&CapsuleState>,
        submission: Submission,
        client: Option<std::net::IpAddr>,
    ) -> Result<Outcome, CapsuleError> {
        let submitted = CapsuleSubmitted {
            owner: submission.owner,
            capsule_id,
            sender: submission.sender,
            recipient: submission.recipient,
            send_at: submission.send_at,
            text: submission.text,
            attachment: submission.attachment,
            schedule: submission.schedule,
        };
        let sender_blocked = first.is_none() && self.is_blocked(&submitted.sender.email).await?;
        let sender = submitted.sender.email.sender_key();
        let now = self.now();
        let state = CapsuleState::submitted(submitted.clone(), now);
        let command = Command::Submit {
            submitted,
            sender_blocked,
        };
        let Decision::Append(changes) = decide::decide(first, &command, now, &self.rules)? else {
            return Ok(Outcome::Nothing);
        };
        let client = client.map(limits::client_key).unwrap_or_default();
        self.limits
            .admit(&client, &sender)
            .await
            .map_err(CapsuleError::RateLimited)?;
        match self
            .append(&state, *changes, ExpectedVersion::NoStream, now)
            .await
        {
            Ok(()) => Ok(Outcome::Written),
            Err(CapsuleError::Store(StoreError::Conflict { .. })) => {
                // Written meanwhile by a concurrent retry, or under the key by another.
                let first = self.load(capsule_id).await?;
                match decide::decide(first.as_ref(), &command, now, &self.rules)? {
                    Decision::Nothing => Ok(Outcome::Nothing),
                    Decision::Append(_) => Err(Refused::KeyReused.into()),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// The sender confirms: the capsule is scheduled for release (at once if its time has
    /// passed).
    pub async fn confirm(&self, capsule_id: Uuid) -> Result<Outcome, CapsuleError> {
        self.execute(capsule_id, &Command::Confirm).await
    }

    /// Cancel a capsule not yet released; `recipient_email` must be its recipient's.
    pub async fn cancel(
        &self,
        capsule_id: Uuid,
        recipient_email: &str,
    ) -> Result<Outcome, CapsuleError> {
        let command = Command::Cancel {
            recipient_email: recipient_email.to_owned(),
        };
        self.execute(capsule_id, &command).await
    }

    /// Release a confirmed capsule: its delivery email is queued. [`Outcome::Nothing`]
    /// when there is nothing to release (cancelled since, or released already).
    pub async fn release(&self, capsule_id: Uuid) -> Result<Outcome, CapsuleError> {
        self.execute(capsule_id, &Command::Release).await
    }

    /// Expire a capsule nobody confirmed.
    pub async fn expire(&self, capsule_id: Uuid) -> Result<Outcome, CapsuleError> {
        self.execute(capsule_id, &Command::Expire).await
    }

    /// Delete the file of a capsule that is over (cancelled, expired, or delivered and
    /// kept its time).
    pub async fn purge_file(&self, capsule_id: Uuid) -> Result<Outcome, CapsuleError> {
        self.execute(capsule_id, &Command::PurgeFile).await
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
        CapsuleState::of(&events).map_err(corrupt)
    }

    /// The capsule as its events tell it, and its history ([`history::History`]), from
    /// one read of its stream.
    pub async fn load_with_history(
        &self,
        capsule_id: Uuid,
    ) -> Result<Option<(CapsuleState, history::History)>, CapsuleError> {
        let events = self
            .events
            .read_stream(&capsule::stream_id(capsule_id))
            .await?;
        let state = CapsuleState::of(&events).map_err(corrupt)?;
        let history = history::History::of(&events).map_err(corrupt)?;
        Ok(state.zip(history))
    }

    /// Load, decide, append; on a conflict, load and decide again.
    async fn execute(&self, capsule_id: Uuid, command: &Command) -> Result<Outcome, CapsuleError> {
        self.execute_read(capsule_id, command, None).await
    }

    /// [`Capsules::execute`], deciding first on `read` (the capsule's stream as read a
    /// moment ago) if given, instead of loading it.
    async fn execute_read(
        &self,
        capsule_id: Uuid,
        command: &Command,
        mut read: Option<Vec<Envelope>>,
    ) -> Result<Outcome, CapsuleError> {
        for _ in 0..3 {
            let state = match read.take() {
                Some(events) => CapsuleState::of(&events).map_err(corrupt)?,
                None => self.load(capsule_id).await?,
            };
            let now = self.now();
            let decision = decide::decide(state.as_ref(), command, now, &self.rules)?;
            let (Decision::Append(changes), Some(state)) = (decision, state) else {
                return Ok(Outcome::Nothing);
            };
            if let Command::PurgeFile = command
                && let Some(file) = state.kept_file()
            {
                // Deleting first: if the event is not written, the due item runs again,
                // and deleting a file already gone is no error.
                self.files.delete(&file.blob).await?;
            }
            let expected = ExpectedVersion::Exact(state.version);
            let later_occurrence = matches!(
                &changes.event,
                decide::CapsuleEvent::Released(r) if r.occurrence.is_some_and(|n| n > 1)
            );
            match self.append(&state, *changes, expected, now).await {
                Ok(()) => {
                    if later_occurrence {
                        let sender = state.submitted.sender.email.sender_key();
                        self.limits.count_occurrence(&sender).await;
                    }
                    return Ok(Outcome::Written);
                }
                Err(CapsuleError::Store(StoreError::Conflict { .. })) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(StoreError::Conflict {
            stream_id: capsule::stream_id(capsule_id),
            expected: ExpectedVersion::Any,
            actual: -1,
        }
        .into())
    }

    /// Append a decision's event with the work it leaves; `state` is the capsule it was
    /// decided on (its email is rendered from it).
    async fn append(
        &self,
        state: &CapsuleState,
        changes: decide::Changes,
        expected: ExpectedVersion,
        now: DateTime<Utc>,
    ) -> Result<(), CapsuleError> {
        let owner = match &changes.event {
            decide::CapsuleEvent::Submitted(submitted) => submitted.owner.map(|o| o.to_string()),
            _ => None,
        };
        let actor = match changes.event {
            decide::CapsuleEvent::Released(_)
            | decide::CapsuleEvent::Expired(_)
            | decide::CapsuleEvent::FilePurged(_) => "scheduler",
            // A submission with a user's token is that user's doing: their exports find it.
            decide::CapsuleEvent::Submitted(_) => owner.as_deref().unwrap_or("sender"),
            _ => "sender",
        };
        let released = match &changes.event {
            decide::CapsuleEvent::Released(released) => Some(released),
            _ => None,
        };
        let outbox = match changes.email {
            Some(kind) => vec![self.emails.render(state, kind, released, now)?],
            None => Vec::new(),
        };
        let events = changes
            .skipped
            .iter()
            .map(|skipped| NewEvent::at(skipped, Self::metadata(actor), now))
            .chain(std::iter::once(
                changes.event.to_new(Self::metadata(actor), now),
            ))
            .collect();
        let request = AppendRequest::new(
            capsule::stream_id(state.submitted.capsule_id),
            expected,
            events,
        )
        .with_effects(Effects {
            schedule: changes.schedule,
            unschedule: changes.unschedule,
            outbox,
        });
        self.events.append(request).await?;
        Ok(())
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
}

/// A stored event that does not decode.
fn corrupt(error: cairn_events::DecodeError) -> CapsuleError {
    CapsuleError::Store(StoreError::Corrupt(error.to_string()))
}

/// Capsule ids are in the links emailed to people: 122 random bits, so they cannot be
/// guessed (a time-ordered id would give part of itself away).
fn new_capsule_id() -> Uuid {
    let bytes: [u8; 16] = rand::random();
    uuid::Builder::from_random_bytes(bytes).into_uuid()
}
