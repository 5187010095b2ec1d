//! Capsule decisions, as one pure function: (state, command, now) → the event to append
//! and the work it leaves, or nothing to do, or a refusal ([`decide`]).
//!
//! Nothing here reads a store, a clock or a template: the use cases around it
//! ([`super::Capsules`]) load the capsule, call [`decide`], render the email it asks for
//! and append, so every rule of a capsule's life is here, tested given/when/then without a
//! database (see the tests below).
//!
//! "Nothing to do" is an answer, not an error: the scheduler's commands (release, expire,
//! file deletion) find the capsule moved on (cancelled, released already) whenever a user
//! acted first, and that is normal. A person's command that cannot apply is refused.

use cairn_events::DueItem;
use cairn_events::domain::capsule::{
    self, Attachment, CapsuleCancelled, CapsuleConfirmed, CapsuleExpired, CapsuleFilePurged,
    CapsuleOccurrenceSkipped, CapsuleReleased, CapsuleSubmitted,
};
use cairn_events::{DecodeError, DomainEvent, Envelope, Metadata, NewEvent};
use chrono::{DateTime, Datelike, Duration, Utc};
use uuid::Uuid;

use super::emails::EmailKind;
use super::error::Refusal;
use super::series;
use super::state::{CapsuleState, Status};

/// How long a sender has to confirm.
pub const CONFIRM_WITHIN: Duration = Duration::hours(24);
/// Due-item actions.
pub const RELEASE: &str = "release";
pub const EXPIRE: &str = "expire";
/// Delete a capsule's file from blob storage.
pub const PURGE: &str = "purge-file";

/// The settings decisions depend on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rules {
    /// The least time between submitting and the send time.
    pub min_lead: Duration,
    /// How long a delivered capsule's file is kept.
    pub file_retention: Duration,
    /// The least time between two occurrences of a recurring capsule.
    pub min_interval: Duration,
}

impl Default for Rules {
    fn default() -> Self {
        Rules {
            min_lead: Duration::zero(),
            file_retention: Duration::days(30),
            min_interval: Duration::hours(1),
        }
    }
}

/// What someone (or the scheduler) asks of a capsule.
#[derive(Clone, Debug, PartialEq)]
// Commands and events are made one at a time, never stored in bulk: boxing the
// submission would buy nothing.
#[allow(clippy::large_enum_variant)]
pub enum Command {
    /// Write a new capsule; under an id written before, a retry of it.
    Submit {
        submitted: CapsuleSubmitted,
        /// Whether the sender is on a blocklist (looked up by the caller).
        sender_blocked: bool,
    },
    /// The sender confirms.
    Confirm,
    /// Cancel before the release; only with the recipient's address.
    Cancel { recipient_email: String },
    /// The scheduler: the send time (of the next occurrence) has come.
    Release,
    /// The scheduler: nobody confirmed in time.
    Expire,
    /// The scheduler: the capsule is over; delete its file.
    PurgeFile,
}

/// The event a decision appends.
#[derive(Clone, Debug, PartialEq)]
#[allow(clippy::large_enum_variant)]
pub enum CapsuleEvent {
    Submitted(CapsuleSubmitted),
    Confirmed(CapsuleConfirmed),
    Cancelled(CapsuleCancelled),
    Released(CapsuleReleased),
    Expired(CapsuleExpired),
    FilePurged(CapsuleFilePurged),
    OccurrenceSkipped(CapsuleOccurrenceSkipped),
}

impl CapsuleEvent {
    /// A capsule event from the store; `None` for a type this version does not know.
    pub fn decode(envelope: &Envelope) -> Result<Option<Self>, DecodeError> {
        Ok(Some(match envelope.event_type.as_str() {
            CapsuleSubmitted::TYPE => CapsuleEvent::Submitted(CapsuleSubmitted::decode(envelope)?),
            CapsuleConfirmed::TYPE => CapsuleEvent::Confirmed(CapsuleConfirmed::decode(envelope)?),
            CapsuleCancelled::TYPE => CapsuleEvent::Cancelled(CapsuleCancelled::decode(envelope)?),
            CapsuleReleased::TYPE => CapsuleEvent::Released(CapsuleReleased::decode(envelope)?),
            CapsuleExpired::TYPE => CapsuleEvent::Expired(CapsuleExpired::decode(envelope)?),
            CapsuleFilePurged::TYPE => {
                CapsuleEvent::FilePurged(CapsuleFilePurged::decode(envelope)?)
            }
            CapsuleOccurrenceSkipped::TYPE => {
                CapsuleEvent::OccurrenceSkipped(CapsuleOccurrenceSkipped::decode(envelope)?)
            }
            _ => return Ok(None),
        }))
    }

    /// The event as the store takes it.
    pub fn to_new(&self, metadata: Metadata, at: DateTime<Utc>) -> NewEvent {
        fn new(payload: &impl DomainEvent, metadata: Metadata, at: DateTime<Utc>) -> NewEvent {
            NewEvent::at(payload, metadata, at)
        }
        match self {
            CapsuleEvent::Submitted(e) => new(e, metadata, at),
            CapsuleEvent::Confirmed(e) => new(e, metadata, at),
            CapsuleEvent::Cancelled(e) => new(e, metadata, at),
            CapsuleEvent::Released(e) => new(e, metadata, at),
            CapsuleEvent::Expired(e) => new(e, metadata, at),
            CapsuleEvent::FilePurged(e) => new(e, metadata, at),
            CapsuleEvent::OccurrenceSkipped(e) => new(e, metadata, at),
        }
    }
}

/// An event and the work it leaves, all written in one append.
#[derive(Clone, Debug, PartialEq)]
pub struct Changes {
    /// Occurrences of a recurring capsule passed over, written before `event`.
    pub skipped: Vec<CapsuleOccurrenceSkipped>,
    pub event: CapsuleEvent,
    /// Due items to add (or move).
    pub schedule: Vec<DueItem>,
    /// Due items (by key) to drop.
    pub unschedule: Vec<String>,
    /// The email the event causes, rendered by the caller.
    pub email: Option<EmailKind>,
}

/// What a command comes to.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    Append(Box<Changes>),
    /// Nothing to write: the capsule moved on, or a retry of what is written.
    Nothing,
}

/// Why a command is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// An input is not acceptable (Chronoria's code says which).
    #[error("{0}")]
    Invalid(Refusal),
    #[error("capsules from this sender are refused")]
    BlockedSender,
    /// Another capsule was written under this id (the same Idempotency-Key).
    #[error("the id names another capsule")]
    KeyReused,
    /// Confirm of an unknown, expired, cancelled or already confirmed capsule.
    #[error("the capsule is not waiting for confirmation")]
    NotPending,
    /// Cancel (or a download link) of an unknown, released or cancelled capsule.
    #[error("the capsule cannot be cancelled")]
    NotCancellable,
    /// The address given is not the capsule's recipient's.
    #[error("that is not the recipient's address")]
    WrongRecipient,
    /// A download link of a capsule with no file to give: a text capsule, or one whose
    /// file was deleted.
    #[error("the capsule has no file to give")]
    NoFile,
}

/// Whether `send_at` may be a capsule's send time when submitted at `now`: later than
/// `now + min_lead`, and with a four-digit year (times stay RFC 3339 in every view).
pub fn check_send_time(
    send_at: DateTime<Utc>,
    now: DateTime<Utc>,
    min_lead: Duration,
) -> Result<(), Refusal> {
    let earliest = now.checked_add_signed(min_lead);
    if earliest.is_none_or(|earliest| send_at <= earliest) || send_at.year() > 9999 {
        Err(Refusal::InvalidFutureTime)
    } else {
        Ok(())
    }
}

/// Decide `command` on the capsule in `state` (`None`: no capsule under that id) at `now`.
pub fn decide(
    state: Option<&CapsuleState>,
    command: &Command,
    now: DateTime<Utc>,
    rules: &Rules,
) -> Result<Decision, Refused> {
    let Some(state) = state else {
        return match command {
            Command::Submit {
                submitted,
                sender_blocked,
            } => submit(submitted, *sender_blocked, now, rules),
            Command::Confirm => Err(Refused::NotPending),
            Command::Cancel { .. } => Err(Refused::NotCancellable),
            Command::Release | Command::Expire | Command::PurgeFile => Ok(Decision::Nothing),
        };
    };
    let capsule_id = state.submitted.capsule_id;
    let changes = match command {
        Command::Submit { submitted, .. } => {
            return if same_capsule(&state.submitted, submitted) {
                Ok(Decision::Nothing)
            } else {
                Err(Refused::KeyReused)
            };
        }
        Command::Confirm => {
            let expired = now >= state.submitted_at + CONFIRM_WITHIN;
            if state.status != Status::Pending || expired {
                return Err(Refused::NotPending);
            }
            Changes {
                skipped: Vec::new(),
                event: CapsuleEvent::Confirmed(CapsuleConfirmed { capsule_id }),
                unschedule: vec![key(capsule_id, EXPIRE)],
                schedule: vec![due(capsule_id, RELEASE, state.submitted.send_at.max(now))],
                email: Some(EmailKind::Active),
            }
        }
        Command::Cancel { recipient_email } => {
            if !state.is_recipient(recipient_email) {
                return Err(Refused::WrongRecipient);
            }
            if !matches!(state.status, Status::Pending | Status::Active) {
                return Err(Refused::NotCancellable);
            }
            Changes {
                skipped: Vec::new(),
                event: CapsuleEvent::Cancelled(CapsuleCancelled { capsule_id }),
                unschedule: vec![key(capsule_id, EXPIRE), key(capsule_id, RELEASE)],
                schedule: purge_file(state, now),
                email: Some(EmailKind::Cancelled),
            }
        }
        Command::Release => {
            let Some(due) = state
                .next_occurrence()
                .filter(|_| state.status == Status::Active)
            else {
                return Ok(Decision::Nothing);
            };
            let release = match &state.submitted.schedule {
                // Not yet due: another scheduler released the one due (a retry after a
                // conflict finds the next occurrence here).
                Some(_) if due.scheduled_at > now => return Ok(Decision::Nothing),
                Some(schedule) => series::release(schedule, due, now),
                None => series::Release {
                    skipped: Vec::new(),
                    delivered: due,
                    next_at: None,
                },
            };
            let (schedule, unschedule) = match release.next_at {
                // The same key: the item moves to the next occurrence.
                Some(next) => (vec![self::due(capsule_id, RELEASE, next)], Vec::new()),
                None => (
                    purge_file(state, now + rules.file_retention),
                    vec![key(capsule_id, RELEASE)],
                ),
            };
            Changes {
                skipped: release
                    .skipped
                    .iter()
                    .map(|o| CapsuleOccurrenceSkipped {
                        capsule_id,
                        occurrence: o.number,
                        scheduled_at: o.scheduled_at,
                    })
                    .collect(),
                event: CapsuleEvent::Released(CapsuleReleased {
                    capsule_id,
                    occurrence: Some(release.delivered.number),
                    scheduled_at: Some(release.delivered.scheduled_at),
                    next_at: release.next_at,
                }),
                unschedule,
                schedule,
                email: Some(EmailKind::Delivery),
            }
        }
        Command::Expire => {
            if state.status != Status::Pending {
                return Ok(Decision::Nothing);
            }
            Changes {
                skipped: Vec::new(),
                event: CapsuleEvent::Expired(CapsuleExpired { capsule_id }),
                unschedule: vec![key(capsule_id, EXPIRE)],
                schedule: purge_file(state, now),
                email: Some(EmailKind::Expired),
            }
        }
        Command::PurgeFile => {
            let over = matches!(
                state.status,
                Status::Cancelled | Status::Expired | Status::Released
            );
            if !over || state.kept_file().is_none() {
                return Ok(Decision::Nothing);
            }
            Changes {
                skipped: Vec::new(),
                event: CapsuleEvent::FilePurged(CapsuleFilePurged { capsule_id }),
                unschedule: vec![key(capsule_id, PURGE)],
                schedule: Vec::new(),
                email: None,
            }
        }
    };
    Ok(Decision::Append(Box::new(changes)))
}

/// The file the recipient (whose address is `recipient_email`) may download from the
/// capsule in `state` (`None`: no capsule under that id). Checked in this order: the
/// capsule exists, the address is its recipient's, it has a file still kept (whatever its
/// status: a text capsule never has one), and it is confirmed or delivered.
pub fn file_to_give<'a>(
    state: Option<&'a CapsuleState>,
    recipient_email: &str,
) -> Result<&'a Attachment, Refused> {
    let state = state.ok_or(Refused::NotCancellable)?;
    if !state.is_recipient(recipient_email) {
        return Err(Refused::WrongRecipient);
    }
    state.kept_file().ok_or(Refused::NoFile)?;
    state.downloadable_file().ok_or(Refused::NotCancellable)
}

/// A new capsule: the sender, then the time, then the text. (The Chronoria routes check the
/// time and the text once more as they parse, so their client hears of those first, in its
/// own order of fields.)
fn submit(
    submitted: &CapsuleSubmitted,
    sender_blocked: bool,
    now: DateTime<Utc>,
    rules: &Rules,
) -> Result<Decision, Refused> {
    if sender_blocked {
        return Err(Refused::BlockedSender);
    }
    // A recurring capsule's first occurrence was found after the time its schedule was
    // checked at ([`super::Capsules::plan`]); it may have come since, as a send time may
    // while its capsule waits for confirmation.
    if submitted.schedule.is_none() {
        check_send_time(submitted.send_at, now, rules.min_lead).map_err(Refused::Invalid)?;
    }
    capsule::validate_text(&submitted.text, submitted.attachment.is_some())
        .map_err(|invalid| Refused::Invalid(invalid.into()))?;
    let capsule_id = submitted.capsule_id;
    Ok(Decision::Append(Box::new(Changes {
        skipped: Vec::new(),
        event: CapsuleEvent::Submitted(submitted.clone()),
        schedule: vec![due(capsule_id, EXPIRE, now + CONFIRM_WITHIN)],
        unschedule: Vec::new(),
        email: Some(EmailKind::Confirm),
    })))
}

/// Whether a retried submission asks for the capsule `first` was: the same people, time,
/// text and file (the file's storage aside, which each upload has its own of).
fn same_capsule(first: &CapsuleSubmitted, again: &CapsuleSubmitted) -> bool {
    let file = |s: &CapsuleSubmitted| {
        s.attachment
            .as_ref()
            .map(|a| (a.file_name.clone(), a.bytes, a.text_location))
    };
    // A recurring capsule's first occurrence depends on when it was submitted: a retry
    // asks for the same schedule.
    let same_time = match (&first.schedule, &again.schedule) {
        (None, None) => first.send_at == again.send_at,
        (first, again) => first == again,
    };
    first.sender == again.sender
        && first.recipient == again.recipient
        && same_time
        && first.text == again.text
        && file(first) == file(again)
}

/// The due item deleting the file of the capsule in `state` at `at`, if it keeps one.
fn purge_file(state: &CapsuleState, at: DateTime<Utc>) -> Vec<DueItem> {
    state
        .kept_file()
        .map(|_| due(state.submitted.capsule_id, PURGE, at))
        .into_iter()
        .collect()
}

/// The key of a capsule's due item for `action`: one of each at most.
pub fn key(capsule_id: Uuid, action: &str) -> String {
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

#[cfg(test)]
mod tests {
    //! Given a capsule's history, when a command comes at a time, then these changes (or
    //! this refusal). No database: the state is folded from the events given.

    use cairn_events::domain::capsule::{
        Attachment, EmailAddress, Party, PersonName, TextLocation,
    };

    use super::*;

    fn at(hour: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_900_000_000 + hour * 3600, 0)
            .unwrap_or_else(|| unreachable!("a fixed time"))
    }

    fn party(email: &str, name: &str) -> Party {
        Party {
            email: EmailAddress::parse(email).unwrap_or_else(|e| panic!("{e}")),
            name: PersonName::parse(name).unwrap_or_else(|e| panic!("{e}")),
        }
    }

    fn id() -> Uuid {
        Uuid::from_u128(7)
    }

    /// A capsule to ada@ from kim@, due at hour 48, submitted at hour 0.
    fn capsule(file: bool) -> CapsuleSubmitted {
        CapsuleSubmitted {
            owner: None,
            capsule_id: id(),
            sender: party("kim@example.com", "Kim"),
            recipient: party("ada@example.com", "Ada"),
            send_at: at(48),
            text: "hello".into(),
            attachment: file.then(|| Attachment {
                blob: "capsules/x".into(),
                file_name: "a.txt".into(),
                bytes: 3,
                text_location: TextLocation::Before,
            }),
            schedule: None,
        }
    }

    /// The state after `history` (events at the given hours), as the use cases fold it.
    struct Given(Option<CapsuleState>);

    fn given(history: &[(i64, CapsuleEvent)]) -> Given {
        let mut state: Option<CapsuleState> = None;
        for (hour, event) in history {
            state = Some(match (state, event) {
                (None, CapsuleEvent::Submitted(s)) => CapsuleState::submitted(s.clone(), at(*hour)),
                (Some(s), event) => s.evolve(event, at(*hour)),
                (None, other) => panic!("{other:?} before the capsule was submitted"),
            });
        }
        Given(state)
    }

    impl Given {
        fn when(&self, command: Command, hour: i64) -> Result<Decision, Refused> {
            decide(self.0.as_ref(), &command, at(hour), &Rules::default())
        }
    }

    fn submitted(file: bool) -> (i64, CapsuleEvent) {
        (0, CapsuleEvent::Submitted(capsule(file)))
    }

    fn confirmed(hour: i64) -> (i64, CapsuleEvent) {
        (
            hour,
            CapsuleEvent::Confirmed(CapsuleConfirmed { capsule_id: id() }),
        )
    }

    fn changes(decision: Result<Decision, Refused>) -> Changes {
        match decision {
            Ok(Decision::Append(changes)) => *changes,
            other => panic!("expected changes, got {other:?}"),
        }
    }

    fn submit(submitted: CapsuleSubmitted) -> Command {
        Command::Submit {
            submitted,
            sender_blocked: false,
        }
    }

    fn cancel(recipient: &str) -> Command {
        Command::Cancel {
            recipient_email: recipient.into(),
        }
    }

    #[test]
    fn a_new_capsule_waits_for_confirmation_and_expires_a_day_later() {
        let then = changes(given(&[]).when(submit(capsule(false)), 0));
        assert_eq!(then.event, CapsuleEvent::Submitted(capsule(false)));
        assert_eq!(then.schedule, vec![due(id(), EXPIRE, at(24))]);
        assert_eq!(then.email, Some(EmailKind::Confirm));
    }

    #[test]
    fn a_submission_is_checked_sender_then_time_then_text() {
        let blocked = Command::Submit {
            submitted: CapsuleSubmitted {
                send_at: at(-1),
                ..capsule(false)
            },
            sender_blocked: true,
        };
        assert_eq!(given(&[]).when(blocked, 0), Err(Refused::BlockedSender));
        let past = CapsuleSubmitted {
            owner: None,
            send_at: at(0),
            text: String::new(),
            ..capsule(false)
        };
        assert_eq!(
            given(&[]).when(submit(past), 0),
            Err(Refused::Invalid(Refusal::InvalidFutureTime))
        );
        let empty = CapsuleSubmitted {
            owner: None,
            text: " ".into(),
            ..capsule(false)
        };
        assert_eq!(
            given(&[]).when(submit(empty), 0),
            Err(Refused::Invalid(Refusal::InvalidText))
        );
        let file_only = CapsuleSubmitted {
            owner: None,
            text: String::new(),
            ..capsule(true)
        };
        assert!(given(&[]).when(submit(file_only), 0).is_ok());
        let rules = Rules {
            min_lead: Duration::hours(72),
            ..Rules::default()
        };
        assert_eq!(
            decide(None, &submit(capsule(false)), at(0), &rules),
            Err(Refused::Invalid(Refusal::InvalidFutureTime))
        );
    }

    #[test]
    fn a_retry_of_a_written_capsule_writes_nothing_and_another_capsule_is_refused() {
        let written = given(&[submitted(true)]);
        // The retry's upload has its own blob; the capsule is the same.
        let retry = CapsuleSubmitted {
            owner: None,
            attachment: capsule(true).attachment.map(|a| Attachment {
                blob: "capsules/y".into(),
                ..a
            }),
            ..capsule(true)
        };
        // Even past its send time, and with the sender blocked since.
        let command = Command::Submit {
            submitted: retry,
            sender_blocked: true,
        };
        assert_eq!(written.when(command, 60), Ok(Decision::Nothing));
        let other = CapsuleSubmitted {
            owner: None,
            text: "something else".into(),
            ..capsule(true)
        };
        assert_eq!(written.when(submit(other), 1), Err(Refused::KeyReused));
    }

    #[test]
    fn confirming_schedules_the_release_at_the_send_time_or_at_once() {
        let then = changes(given(&[submitted(false)]).when(Command::Confirm, 1));
        assert_eq!(then.unschedule, vec![key(id(), EXPIRE)]);
        assert_eq!(then.schedule, vec![due(id(), RELEASE, at(48))]);
        assert_eq!(then.email, Some(EmailKind::Active));
        let late = CapsuleSubmitted {
            owner: None,
            send_at: at(2),
            ..capsule(false)
        };
        let then = changes(given(&[(0, CapsuleEvent::Submitted(late))]).when(Command::Confirm, 5));
        assert_eq!(then.schedule, vec![due(id(), RELEASE, at(5))]);
    }

    #[test]
    fn only_a_pending_capsule_within_its_day_can_be_confirmed() {
        assert_eq!(
            given(&[]).when(Command::Confirm, 1),
            Err(Refused::NotPending)
        );
        assert_eq!(
            given(&[submitted(false)]).when(Command::Confirm, 24),
            Err(Refused::NotPending)
        );
        assert_eq!(
            given(&[submitted(false), confirmed(1)]).when(Command::Confirm, 2),
            Err(Refused::NotPending)
        );
    }

    #[test]
    fn the_recipient_cancels_until_the_release_and_the_file_goes_at_once() {
        let then =
            changes(given(&[submitted(true), confirmed(1)]).when(cancel("ADA@example.com"), 2));
        assert_eq!(
            then.event,
            CapsuleEvent::Cancelled(CapsuleCancelled { capsule_id: id() })
        );
        assert_eq!(then.unschedule, vec![key(id(), EXPIRE), key(id(), RELEASE)]);
        assert_eq!(then.schedule, vec![due(id(), PURGE, at(2))]);
        assert_eq!(then.email, Some(EmailKind::Cancelled));
        let released = given(&[
            submitted(false),
            confirmed(1),
            (
                48,
                CapsuleEvent::Released(CapsuleReleased {
                    capsule_id: id(),
                    occurrence: Some(1),
                    scheduled_at: Some(at(48)),
                    next_at: None,
                }),
            ),
        ]);
        assert_eq!(
            released.when(cancel("ada@example.com"), 49),
            Err(Refused::NotCancellable)
        );
        assert_eq!(
            given(&[submitted(false)]).when(cancel("kim@example.com"), 1),
            Err(Refused::WrongRecipient),
            "only with the recipient's address"
        );
        assert_eq!(
            released.when(cancel("kim@example.com"), 49),
            Err(Refused::WrongRecipient),
            "the address is checked first"
        );
        assert_eq!(
            given(&[]).when(cancel("ada@example.com"), 1),
            Err(Refused::NotCancellable)
        );
    }

    #[test]
    fn a_file_is_given_to_its_recipient_while_kept_and_a_text_capsule_has_none() {
        let file = |history: &[(i64, CapsuleEvent)], address: &str| {
            let state = given(history).0;
            file_to_give(state.as_ref(), address).map(|a| a.file_name.clone())
        };
        let purged = (
            60,
            CapsuleEvent::FilePurged(CapsuleFilePurged { capsule_id: id() }),
        );
        let released = (
            48,
            CapsuleEvent::Released(CapsuleReleased {
                capsule_id: id(),
                occurrence: Some(1),
                scheduled_at: Some(at(48)),
                next_at: None,
            }),
        );
        let cancelled = (
            2,
            CapsuleEvent::Cancelled(CapsuleCancelled { capsule_id: id() }),
        );
        assert_eq!(file(&[], "ada@example.com"), Err(Refused::NotCancellable));
        let active = [submitted(true), confirmed(1)];
        assert_eq!(file(&active, "ADA@example.com"), Ok("a.txt".into()));
        assert_eq!(
            file(&active, "kim@example.com"),
            Err(Refused::WrongRecipient)
        );
        assert_eq!(
            file(
                &[submitted(true), confirmed(1), released.clone()],
                "ada@example.com"
            ),
            Ok("a.txt".into())
        );
        assert_eq!(
            file(&[submitted(true)], "ada@example.com"),
            Err(Refused::NotCancellable),
            "not before it is confirmed"
        );
        for history in [
            vec![submitted(false)],
            vec![submitted(false), confirmed(1)],
            vec![submitted(false), confirmed(1), released.clone()],
            vec![submitted(false), cancelled.clone()],
            vec![submitted(true), confirmed(1), released, purged.clone()],
            vec![submitted(true), cancelled, purged],
        ] {
            assert_eq!(
                file(&history, "ada@example.com"),
                Err(Refused::NoFile),
                "{history:?}"
            );
        }
    }

    #[test]
    fn a_release_delivers_and_keeps_the_file_for_its_retention() {
        let then = changes(given(&[submitted(true), confirmed(1)]).when(Command::Release, 48));
        assert_eq!(then.unschedule, vec![key(id(), RELEASE)]);
        assert_eq!(then.schedule, vec![due(id(), PURGE, at(48 + 30 * 24))]);
        assert_eq!(then.email, Some(EmailKind::Delivery));
    }

    #[test]
    fn the_scheduler_finds_nothing_to_do_once_the_capsule_moved_on() {
        let cancelled = given(&[
            submitted(false),
            (
                1,
                CapsuleEvent::Cancelled(CapsuleCancelled { capsule_id: id() }),
            ),
        ]);
        assert_eq!(cancelled.when(Command::Release, 48), Ok(Decision::Nothing));
        assert_eq!(cancelled.when(Command::Expire, 24), Ok(Decision::Nothing));
        assert_eq!(given(&[]).when(Command::Release, 48), Ok(Decision::Nothing));
        let active = given(&[submitted(false), confirmed(1)]);
        assert_eq!(active.when(Command::Expire, 24), Ok(Decision::Nothing));
        assert_eq!(
            given(&[submitted(false)]).when(Command::Release, 48),
            Ok(Decision::Nothing),
            "an unconfirmed capsule is never released"
        );
    }

    #[test]
    fn an_unconfirmed_capsule_expires_and_its_file_goes() {
        let then = changes(given(&[submitted(true)]).when(Command::Expire, 24));
        assert_eq!(
            then.event,
            CapsuleEvent::Expired(CapsuleExpired { capsule_id: id() })
        );
        assert_eq!(then.schedule, vec![due(id(), PURGE, at(24))]);
        assert_eq!(then.email, Some(EmailKind::Expired));
    }

    #[test]
    fn a_file_is_deleted_once_the_capsule_is_over_and_only_once() {
        let expired = [
            submitted(true),
            (
                24,
                CapsuleEvent::Expired(CapsuleExpired { capsule_id: id() }),
            ),
        ];
        let then = changes(given(&expired).when(Command::PurgeFile, 24));
        assert_eq!(
            then.event,
            CapsuleEvent::FilePurged(CapsuleFilePurged { capsule_id: id() })
        );
        assert_eq!(then.unschedule, vec![key(id(), PURGE)]);
        assert_eq!(then.email, None);
        let purged = [
            expired[0].clone(),
            expired[1].clone(),
            (
                24,
                CapsuleEvent::FilePurged(CapsuleFilePurged { capsule_id: id() }),
            ),
        ];
        assert_eq!(
            given(&purged).when(Command::PurgeFile, 25),
            Ok(Decision::Nothing)
        );
        assert_eq!(
            given(&[submitted(true), confirmed(1)]).when(Command::PurgeFile, 2),
            Ok(Decision::Nothing),
            "a capsule waiting for its time keeps its file"
        );
        assert_eq!(
            given(&[
                submitted(false),
                (
                    24,
                    CapsuleEvent::Expired(CapsuleExpired { capsule_id: id() })
                )
            ])
            .when(Command::PurgeFile, 24),
            Ok(Decision::Nothing),
            "no file, nothing to delete"
        );
    }

    // Recurring capsules.

    fn utc(rfc3339: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(rfc3339)
            .unwrap_or_else(|e| panic!("{e}"))
            .with_timezone(&Utc)
    }

    /// A confirmed recurring capsule on `cron` in `zone`, submitted at `submitted`.
    fn series(
        cron: &str,
        zone: &str,
        count: Option<u32>,
        file: bool,
        submitted: &str,
    ) -> CapsuleState {
        let schedule = capsule::Schedule {
            cron: cron.into(),
            time_zone: zone.into(),
            until: None,
            count,
        };
        let at = utc(submitted);
        let first = series::check(&schedule, at, Duration::hours(1))
            .unwrap_or_else(|e| panic!("{e:?}"))
            .first;
        let submitted = CapsuleSubmitted {
            owner: None,
            send_at: first,
            schedule: Some(schedule),
            ..capsule(file)
        };
        CapsuleState::submitted(submitted, at).evolve(
            &CapsuleEvent::Confirmed(CapsuleConfirmed { capsule_id: id() }),
            at,
        )
    }

    /// Run the scheduler on `state` until `end`: each release at the time its due item
    /// says (the confirmation scheduled the first at the send time). Returns the state and
    /// the releases made, with the skipped occurrences each wrote.
    fn run_until(
        mut state: CapsuleState,
        end: DateTime<Utc>,
    ) -> (
        CapsuleState,
        Vec<(CapsuleReleased, Vec<CapsuleOccurrenceSkipped>)>,
    ) {
        let mut releases = Vec::new();
        let mut due_at = Some(state.submitted.send_at);
        while let Some(now) = due_at.filter(|t| *t <= end) {
            let Ok(Decision::Append(changes)) =
                decide(Some(&state), &Command::Release, now, &Rules::default())
            else {
                panic!("a due release at {now} did nothing");
            };
            due_at = changes
                .schedule
                .iter()
                .find(|item| item.action == RELEASE)
                .map(|item| item.due_at);
            for skipped in &changes.skipped {
                state = state.evolve(&CapsuleEvent::OccurrenceSkipped(skipped.clone()), now);
            }
            state = state.evolve(&changes.event, now);
            let CapsuleEvent::Released(released) = changes.event else {
                panic!("a release wrote {:?}", changes.event);
            };
            releases.push((released, changes.skipped));
        }
        (state, releases)
    }

    fn released_at(releases: &[(CapsuleReleased, Vec<CapsuleOccurrenceSkipped>)]) -> Vec<String> {
        releases
            .iter()
            .filter_map(|(r, _)| r.scheduled_at)
            .map(|t| t.format("%m-%d %H:%M").to_string())
            .collect()
    }

    #[test]
    fn a_daily_capsule_is_released_once_on_each_daylight_saving_day() {
        // Berlin springs forward on 28 March 2027 (02:30 does not exist) and falls back on
        // 31 October 2027 (02:30 happens twice).
        let state = series(
            "30 2 * * *",
            "Europe/Berlin",
            None,
            false,
            "2027-03-26T12:00:00Z",
        );
        let (_, releases) = run_until(state, utc("2027-03-29T12:00:00Z"));
        assert_eq!(
            released_at(&releases),
            ["03-27 01:30", "03-28 01:00", "03-29 00:30"]
        );
        let state = series(
            "30 2 * * *",
            "Europe/Berlin",
            None,
            false,
            "2027-10-29T12:00:00Z",
        );
        let (_, releases) = run_until(state, utc("2027-11-01T12:00:00Z"));
        assert_eq!(
            released_at(&releases),
            ["10-30 00:30", "10-31 00:30", "11-01 01:30"]
        );
        let numbers: Vec<Option<u32>> = releases.iter().map(|(r, _)| r.occurrence).collect();
        assert_eq!(numbers, [Some(1), Some(2), Some(3)]);
    }

    #[test]
    fn an_hourly_capsule_is_released_every_real_hour() {
        // The Berlin day of 28 March 2027 runs from 23:00 UTC the day before, for 23
        // hours; that of 31 October from 22:00 UTC, for 25.
        for (submitted, end, hours) in [
            ("2027-03-27T22:59:00Z", "2027-03-28T21:59:00Z", 23),
            ("2027-10-30T21:59:00Z", "2027-10-31T22:59:00Z", 25),
        ] {
            let state = series("0 * * * *", "Europe/Berlin", None, false, submitted);
            let (_, releases) = run_until(state, utc(end));
            assert_eq!(releases.len(), hours, "{submitted}");
            assert!(releases.iter().all(|(_, skipped)| skipped.is_empty()));
        }
    }

    #[test]
    fn after_downtime_the_latest_missed_occurrence_is_released_and_older_ones_skipped() {
        let state = series("0 9 * * *", "UTC", None, false, "2027-01-10T12:00:00Z");
        let late = utc("2027-01-13T10:00:00Z");
        let then = changes(decide(
            Some(&state),
            &Command::Release,
            late,
            &Rules::default(),
        ));
        let skipped: Vec<u32> = then.skipped.iter().map(|s| s.occurrence).collect();
        assert_eq!(skipped, [1, 2]);
        let CapsuleEvent::Released(released) = &then.event else {
            panic!("{:?}", then.event)
        };
        assert_eq!(released.occurrence, Some(3));
        assert_eq!(released.scheduled_at, Some(utc("2027-01-13T09:00:00Z")));
        assert_eq!(released.next_at, Some(utc("2027-01-14T09:00:00Z")));
        assert_eq!(
            then.schedule,
            vec![due(id(), RELEASE, utc("2027-01-14T09:00:00Z"))]
        );
        assert_eq!(then.unschedule, Vec::<String>::new());
        assert_eq!(then.email, Some(EmailKind::Delivery));
    }

    #[test]
    fn a_release_retried_after_another_scheduler_released_finds_nothing_due() {
        let state = series("0 9 * * *", "UTC", None, false, "2027-01-10T12:00:00Z");
        let (state, releases) = run_until(state, utc("2027-01-11T09:00:00Z"));
        assert_eq!(releases.len(), 1);
        let again = decide(
            Some(&state),
            &Command::Release,
            utc("2027-01-11T09:00:01Z"),
            &Rules::default(),
        );
        assert_eq!(again, Ok(Decision::Nothing));
    }

    #[test]
    fn a_series_keeps_its_file_until_its_last_occurrence() {
        let state = series("0 9 * * *", "UTC", Some(3), true, "2027-01-10T12:00:00Z");
        let (state, releases) = run_until(state, utc("2027-01-12T12:00:00Z"));
        assert_eq!(releases.len(), 2);
        assert_eq!(state.status, Status::Active);
        assert!(state.downloadable_file().is_some());
        let purge = decide(
            Some(&state),
            &Command::PurgeFile,
            utc("2027-01-12T12:00:00Z"),
            &Rules::default(),
        );
        assert_eq!(purge, Ok(Decision::Nothing), "not while the series goes on");
        let last = changes(decide(
            Some(&state),
            &Command::Release,
            utc("2027-01-13T09:00:00Z"),
            &Rules::default(),
        ));
        assert_eq!(last.unschedule, vec![key(id(), RELEASE)]);
        assert_eq!(
            last.schedule,
            vec![due(
                id(),
                PURGE,
                utc("2027-01-13T09:00:00Z") + Duration::days(30)
            )]
        );
        let state = state.evolve(&last.event, utc("2027-01-13T09:00:00Z"));
        assert_eq!(state.status, Status::Released);
        assert_eq!(state.deliveries, 3);
        assert_eq!(state.next_occurrence(), None);
    }

    #[test]
    fn cancelling_a_series_stops_every_later_occurrence() {
        let state = series("0 9 * * *", "UTC", None, true, "2027-01-10T12:00:00Z");
        let (state, _) = run_until(state, utc("2027-01-12T12:00:00Z"));
        let then = changes(decide(
            Some(&state),
            &cancel("ada@example.com"),
            utc("2027-01-12T12:00:00Z"),
            &Rules::default(),
        ));
        assert_eq!(then.unschedule, vec![key(id(), EXPIRE), key(id(), RELEASE)]);
        let state = state.evolve(&then.event, utc("2027-01-12T12:00:00Z"));
        let later = decide(
            Some(&state),
            &Command::Release,
            utc("2027-01-13T09:00:00Z"),
            &Rules::default(),
        );
        assert_eq!(later, Ok(Decision::Nothing));
    }

    #[test]
    fn a_retried_recurring_submission_compares_its_schedule() {
        let state = series("0 9 * * *", "UTC", None, false, "2027-01-10T12:00:00Z");
        let retry = CapsuleSubmitted {
            owner: None,
            // Computed again later: another first occurrence.
            send_at: utc("2027-01-12T09:00:00Z"),
            ..state.submitted.clone()
        };
        assert_eq!(
            decide(
                Some(&state),
                &submit(retry.clone()),
                utc("2027-01-11T12:00:00Z"),
                &Rules::default()
            ),
            Ok(Decision::Nothing)
        );
        let other = CapsuleSubmitted {
            owner: None,
            schedule: Some(capsule::Schedule {
                cron: "0 10 * * *".into(),
                time_zone: "UTC".into(),
                until: None,
                count: None,
            }),
            ..retry
        };
        assert_eq!(
            decide(
                Some(&state),
                &submit(other),
                utc("2027-01-11T12:00:00Z"),
                &Rules::default()
            ),
            Err(Refused::KeyReused)
        );
    }
}
