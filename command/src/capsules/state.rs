//! A capsule as its events tell it: the fold the decisions are made on.
//!
//! The write side's own view, kept beside the decisions rather than with the event
//! payloads: the payloads are the contract every side reads, while what a capsule's history
//! adds up to (its status, whether its file is still kept) is this side's concern.

use cairn_events::domain::capsule::{Attachment, CapsuleSubmitted, EmailAddress};
use cairn_events::{DecodeError, DomainEvent, Envelope};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::decide::CapsuleEvent;
use super::series::Occurrence;

/// Where a capsule is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Waiting for the sender's confirmation.
    Pending,
    /// Confirmed; waiting for its time.
    Active,
    Released,
    Cancelled,
    Expired,
}

/// A capsule as its events tell it.
#[derive(Clone, Debug, PartialEq)]
pub struct CapsuleState {
    pub submitted: CapsuleSubmitted,
    pub submitted_at: DateTime<Utc>,
    pub status: Status,
    /// When it reached its current status.
    pub since: DateTime<Utc>,
    /// The stream version, for the next append's expectation.
    pub version: i64,
    /// Whether its file was deleted from blob storage.
    pub file_purged: bool,
    /// The last occurrence released or skipped (0: none yet).
    pub last_occurrence: u32,
    /// How many occurrences were released.
    pub deliveries: u32,
    /// When the next occurrence is due, while there is one: the send time, then, for a
    /// recurring capsule, what each release names.
    pub next_at: Option<DateTime<Utc>>,
}

impl CapsuleState {
    /// A capsule just submitted at `at`, before its first event is written (version 0).
    pub fn submitted(submitted: CapsuleSubmitted, at: DateTime<Utc>) -> Self {
        CapsuleState {
            submitted_at: at,
            status: Status::Pending,
            since: at,
            version: 0,
            file_purged: false,
            last_occurrence: 0,
            deliveries: 0,
            next_at: Some(submitted.send_at),
            submitted,
        }
    }

    /// Fold a capsule's stream; `None` for an empty stream. Its first event must be the
    /// submission; events of types this version does not know are passed over.
    pub fn of(events: &[Envelope]) -> Result<Option<Self>, DecodeError> {
        let Some((first, rest)) = events.split_first() else {
            return Ok(None);
        };
        let mut state =
            CapsuleState::submitted(CapsuleSubmitted::decode(first)?, first.occurred_at);
        state.version = first.version;
        for envelope in rest {
            if let Some(event) = CapsuleEvent::decode(envelope)? {
                state = state.evolve(&event, envelope.occurred_at);
            }
            state.version = envelope.version;
        }
        Ok(Some(state))
    }

    /// The state after `event`, which happened `at` (the version is the caller's).
    pub fn evolve(mut self, event: &CapsuleEvent, at: DateTime<Utc>) -> Self {
        let status = match event {
            CapsuleEvent::FilePurged(_) => {
                self.file_purged = true;
                return self;
            }
            // Only ever first, where the fold starts from it.
            CapsuleEvent::Submitted(_) => return self,
            CapsuleEvent::Confirmed(_) => Status::Active,
            CapsuleEvent::Cancelled(_) => Status::Cancelled,
            CapsuleEvent::Expired(_) => Status::Expired,
            CapsuleEvent::OccurrenceSkipped(skipped) => {
                self.last_occurrence = skipped.occurrence;
                return self;
            }
            CapsuleEvent::Released(released) => {
                self.last_occurrence = released.occurrence.unwrap_or(1);
                self.deliveries = self.deliveries.saturating_add(1);
                self.next_at = released.next_at;
                if released.next_at.is_some() {
                    // A recurring capsule stays active until its last occurrence.
                    return self;
                }
                Status::Released
            }
        };
        if status != Status::Released {
            self.next_at = self
                .next_at
                .filter(|_| status == Status::Active || status == Status::Pending);
        }
        self.status = status;
        self.since = at;
        self
    }

    /// The occurrence to release next, while one is to come (pending or active).
    pub fn next_occurrence(&self) -> Option<Occurrence> {
        let scheduled_at = self.next_at?;
        matches!(self.status, Status::Pending | Status::Active).then_some(Occurrence {
            number: self.last_occurrence.saturating_add(1),
            scheduled_at,
        })
    }

    /// The capsule's file, while blob storage keeps it.
    pub fn kept_file(&self) -> Option<&Attachment> {
        self.submitted
            .attachment
            .as_ref()
            .filter(|_| !self.file_purged)
    }

    /// The file its recipient may download now: the capsule is confirmed or delivered,
    /// and the file still kept.
    pub fn downloadable_file(&self) -> Option<&Attachment> {
        self.kept_file()
            .filter(|_| matches!(self.status, Status::Active | Status::Released))
    }

    /// Whether `given` is the recipient's address (compared case-insensitively).
    pub fn is_recipient(&self, given: &str) -> bool {
        EmailAddress::parse(given).is_ok_and(|e| e.key() == self.submitted.recipient.email.key())
    }
}

#[cfg(test)]
mod tests {
    use cairn_events::domain::capsule::{
        CapsuleConfirmed, CapsuleSubmitted, EmailAddress, Party, PersonName,
    };
    use cairn_events::domain::email::EmailSent;
    use cairn_events::{Envelope, Metadata, NewEvent};
    use chrono::{TimeZone, Utc};
    use uuid::Uuid;

    use super::{CapsuleState, Status};

    /// The email worker appends `email.sent` to a capsule's stream: the fold passes over
    /// it for the status, and counts it in the version the next append expects.
    #[test]
    fn recorded_emails_count_in_the_version_only() {
        let capsule_id = Uuid::from_u128(3);
        let at = |hours| {
            Utc.with_ymd_and_hms(2027, 1, 1, hours, 0, 0)
                .single()
                .expect("a fixed time")
        };
        let party = |email: &str| Party {
            email: EmailAddress::parse(email).expect("an address"),
            name: PersonName::parse("Someone").expect("a name"),
        };
        let submitted = CapsuleSubmitted {
            owner: None,
            capsule_id,
            sender: party("ada@example.com"),
            recipient: party("grace@example.com"),
            send_at: at(20),
            text: "hello".into(),
            attachment: None,
            schedule: None,
        };
        let sent = EmailSent {
            outbox_id: Uuid::from_u128(4),
            message_id: "<m@x>".into(),
            purpose: Some("confirm".into()),
            retries: 0,
            occurrence: None,
        };
        let events: Vec<Envelope> = [
            (1, NewEvent::new(&submitted, Metadata::default())),
            (1, NewEvent::new(&sent, Metadata::default())),
            (
                2,
                NewEvent::new(&CapsuleConfirmed { capsule_id }, Metadata::default()),
            ),
            (3, NewEvent::new(&sent, Metadata::default())),
        ]
        .into_iter()
        .zip(1..)
        .map(|((hours, e), version)| Envelope {
            position: version,
            event_id: e.event_id,
            stream_id: format!("capsule-{capsule_id}"),
            version,
            event_type: e.event_type,
            schema_version: e.schema_version,
            payload: e.payload,
            occurred_at: at(hours),
            metadata: e.metadata,
        })
        .collect();
        let state = CapsuleState::of(&events)
            .expect("readable")
            .expect("a capsule");
        assert_eq!(state.status, Status::Active);
        assert_eq!(state.since, at(2), "since the confirmation, not the email");
        assert_eq!(state.version, 4);
    }
}
