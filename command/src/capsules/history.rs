//! A capsule's history, read straight from its stream: what happened to it and when, for
//! the status view (`GET /capsules/{id}`) and the cancel page.
//!
//! The stream already holds all of it: the capsule's own events, and an [`EmailSent`]
//! for every email the worker handed to the mail server (recorded in the capsule's stream
//! because the email names it). So the history is one more fold of the events the write
//! side loads anyway: no read model to keep, and it cannot disagree with the capsule's
//! state. Entries come in stream order, which is the order things were written in.
//!
//! Each event type is decoded here by its own payload rather than through the decisions'
//! [`CapsuleEvent`](super::decide::CapsuleEvent), so the history names every event it shows
//! whatever the decisions come to use, and passes over types it does not know (written by
//! a newer version). Nothing personal is taken from the events: no address, no text, only
//! times, numbers and Message-IDs.

use cairn_events::domain::capsule::{
    CapsuleCancelled, CapsuleConfirmed, CapsuleExpired, CapsuleFilePurged,
    CapsuleOccurrenceSkipped, CapsuleReleased, CapsuleSubmitted,
};
use cairn_events::domain::email::EmailSent;
use cairn_events::{DecodeError, DomainEvent, Envelope};
use chrono::{DateTime, Utc};

/// A capsule's history, oldest first.
#[derive(Clone, Debug, PartialEq)]
pub struct History {
    /// Whether the capsule repeats (its releases are then told apart by number).
    pub recurring: bool,
    /// The most recent [`MAX_ENTRIES`] entries, oldest first.
    pub entries: Vec<Entry>,
    /// How many older entries were left out: a series that has run for years has
    /// thousands, and a view of it must stay small.
    pub omitted: usize,
}

/// The most entries a history holds.
pub const MAX_ENTRIES: usize = 200;

/// One thing that happened to a capsule, `at` (when its event was written).
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub at: DateTime<Utc>,
    pub what: Happened,
}

/// What happened.
#[derive(Clone, Debug, PartialEq)]
pub enum Happened {
    Submitted,
    Confirmed,
    /// An occurrence (the only one, for a capsule that does not repeat) was released: its
    /// delivery email was queued.
    Released {
        /// From 1.
        occurrence: u32,
        /// When it was due; the entry's time is when it was released.
        scheduled_at: DateTime<Utc>,
        /// When the next occurrence is due; none after the last.
        next_at: Option<DateTime<Utc>>,
    },
    /// An occurrence was passed over: a later one was already due when the scheduler came
    /// to it (after downtime).
    Skipped {
        occurrence: u32,
        scheduled_at: DateTime<Utc>,
    },
    /// The mail server took an email about the capsule.
    EmailSent {
        /// What the email was (`confirm`, `active`, `delivery`, `cancelled`, `expired`),
        /// when its cause said.
        purpose: Option<String>,
        message_id: String,
        /// Failed tries before the one that succeeded.
        retries: i32,
        /// For a delivery, which occurrence it delivered, when its cause said.
        occurrence: Option<u32>,
    },
    Cancelled,
    Expired,
    FileDeleted,
}

impl History {
    /// The history of a capsule's stream; `None` for an empty stream. Its first event must
    /// be the submission; events of types not known here are passed over.
    pub fn of(events: &[Envelope]) -> Result<Option<Self>, DecodeError> {
        let Some(first) = events.first() else {
            return Ok(None);
        };
        let submitted = CapsuleSubmitted::decode(first)?;
        let mut entries = std::collections::VecDeque::with_capacity(events.len().min(MAX_ENTRIES));
        let mut omitted = 0;
        for envelope in events {
            if let Some(what) = happened(envelope, &submitted)? {
                if entries.len() == MAX_ENTRIES {
                    entries.pop_front();
                    omitted += 1;
                }
                entries.push_back(Entry {
                    at: envelope.occurred_at,
                    what,
                });
            }
        }
        Ok(Some(History {
            recurring: submitted.schedule.is_some(),
            entries: entries.into(),
            omitted,
        }))
    }
}

/// What `envelope` tells of the capsule `submitted` describes; `None` for a type not known
/// here.
fn happened(
    envelope: &Envelope,
    submitted: &CapsuleSubmitted,
) -> Result<Option<Happened>, DecodeError> {
    Ok(Some(match envelope.event_type.as_str() {
        CapsuleSubmitted::TYPE => Happened::Submitted,
        CapsuleConfirmed::TYPE => Happened::Confirmed,
        CapsuleReleased::TYPE => {
            let released = CapsuleReleased::decode(envelope)?;
            // Written before capsules could repeat: the one occurrence, at the send time.
            Happened::Released {
                occurrence: released.occurrence.unwrap_or(1),
                scheduled_at: released.scheduled_at.unwrap_or(submitted.send_at),
                next_at: released.next_at,
            }
        }
        CapsuleOccurrenceSkipped::TYPE => {
            let skipped = CapsuleOccurrenceSkipped::decode(envelope)?;
            Happened::Skipped {
                occurrence: skipped.occurrence,
                scheduled_at: skipped.scheduled_at,
            }
        }
        EmailSent::TYPE => {
            let sent = EmailSent::decode(envelope)?;
            Happened::EmailSent {
                purpose: sent.purpose,
                message_id: sent.message_id,
                retries: sent.retries,
                occurrence: sent.occurrence,
            }
        }
        CapsuleCancelled::TYPE => Happened::Cancelled,
        CapsuleExpired::TYPE => Happened::Expired,
        CapsuleFilePurged::TYPE => Happened::FileDeleted,
        _ => return Ok(None),
    }))
}

impl Entry {
    /// The entry as a sentence for the pages (`recurring`: the capsule repeats, so its
    /// occurrences are numbered).
    pub fn in_words(&self, recurring: bool) -> String {
        match &self.what {
            Happened::Submitted => "Submitted.".to_owned(),
            Happened::Confirmed => "Confirmed by its sender.".to_owned(),
            Happened::Released {
                occurrence,
                scheduled_at,
                next_at,
            } => {
                let due = exact_time(*scheduled_at);
                let next = match next_at {
                    Some(next) => format!(" The next is due on {}.", exact_time(*next)),
                    None if recurring => " It was the last.".to_owned(),
                    None => String::new(),
                };
                if recurring {
                    format!("Occurrence {occurrence} released (due on {due}).{next}")
                } else {
                    format!("Released (due on {due}).{next}")
                }
            }
            Happened::Skipped {
                occurrence,
                scheduled_at,
            } => format!(
                "Occurrence {occurrence} (due on {}) skipped: a later one was already due.",
                exact_time(*scheduled_at)
            ),
            Happened::EmailSent {
                purpose,
                message_id,
                retries,
                occurrence,
            } => {
                let delivery = match occurrence {
                    Some(n) => format!("delivery {n} of the capsule, to its recipient"),
                    None => "the capsule, to its recipient".to_owned(),
                };
                let what = match purpose.as_deref() {
                    Some("confirm") => "the request to confirm, to the sender",
                    Some("active") => "the receipt, to the sender",
                    Some("delivery") => &delivery,
                    Some("cancelled") => "the notice of cancellation, to the sender",
                    Some("expired") => "the notice of expiry, to the sender",
                    _ => "an email",
                };
                let retries = match retries {
                    0 => String::new(),
                    1 => ", after 1 failed try".to_owned(),
                    n => format!(", after {n} failed tries"),
                };
                format!("Email sent: {what} (Message-ID {message_id}){retries}.")
            }
            Happened::Cancelled => "Cancelled.".to_owned(),
            Happened::Expired => "Expired: it was not confirmed within 24 hours.".to_owned(),
            Happened::FileDeleted => "Its file was deleted from storage.".to_owned(),
        }
    }
}

/// `3 March 2027 at 09:00:05 UTC`: a time to the second, as the pages show times.
pub fn exact_time(t: DateTime<Utc>) -> String {
    t.format("%-d %B %Y at %H:%M:%S UTC").to_string()
}

#[cfg(test)]
mod tests {
    use cairn_events::domain::capsule::{
        CapsuleCancelled, CapsuleConfirmed, CapsuleExpired, CapsuleFilePurged,
        CapsuleOccurrenceSkipped, CapsuleReleased, CapsuleSubmitted, EmailAddress, Party,
        PersonName, Schedule,
    };
    use cairn_events::domain::email::EmailSent;
    use cairn_events::{DomainEvent, Envelope, Metadata, NewEvent};
    use chrono::{DateTime, TimeZone, Utc};
    use serde_json::json;
    use uuid::Uuid;

    use super::{Entry, Happened, History};

    fn id() -> Uuid {
        Uuid::from_u128(7)
    }

    /// 2027-03-01 plus `hours`.
    fn at(hours: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2027, 3, 1, 0, 0, 0)
            .single()
            .expect("a fixed time")
            + chrono::Duration::hours(hours)
    }

    fn submitted(schedule: Option<Schedule>) -> CapsuleSubmitted {
        let party = |email: &str, name: &str| Party {
            email: EmailAddress::parse(email).expect("an address"),
            name: PersonName::parse(name).expect("a name"),
        };
        CapsuleSubmitted {
            owner: None,
            capsule_id: id(),
            sender: party("ada@example.com", "Ada"),
            recipient: party("grace@example.com", "Grace"),
            send_at: at(48),
            text: "a secret".into(),
            attachment: None,
            schedule,
        }
    }

    /// A stream of `events` (hours after the start, event), versions from 1.
    fn stream(events: Vec<(i64, NewEvent)>) -> Vec<Envelope> {
        events
            .into_iter()
            .zip(1..)
            .map(|((hours, event), version)| Envelope {
                position: version,
                event_id: event.event_id,
                stream_id: format!("capsule-{}", id()),
                version,
                event_type: event.event_type,
                schema_version: event.schema_version,
                payload: event.payload,
                occurred_at: at(hours),
                metadata: event.metadata,
            })
            .collect()
    }

    fn fold(events: &[Envelope]) -> History {
        History::of(events).expect("readable").expect("a capsule")
    }

    fn new(event: &impl DomainEvent) -> NewEvent {
        NewEvent::new(event, Metadata::default())
    }

    fn sent(purpose: &str, message_id: &str, retries: i32) -> NewEvent {
        new(&EmailSent {
            outbox_id: Uuid::now_v7(),
            message_id: message_id.into(),
            purpose: Some(purpose.into()),
            retries,
            occurrence: None,
        })
    }

    fn entry(hours: i64, what: Happened) -> Entry {
        Entry {
            at: at(hours),
            what,
        }
    }

    fn email(purpose: &str, message_id: &str, retries: i32) -> Happened {
        Happened::EmailSent {
            purpose: Some(purpose.into()),
            message_id: message_id.into(),
            retries,
            occurrence: None,
        }
    }

    #[test]
    fn an_empty_stream_has_no_history() {
        assert_eq!(History::of(&[]).expect("an empty stream"), None);
    }

    #[test]
    fn a_delivered_capsule_from_submission_to_file_deletion() {
        let capsule_id = id();
        let events = stream(vec![
            (0, new(&submitted(None))),
            (0, sent("confirm", "<a@x>", 0)),
            (1, new(&CapsuleConfirmed { capsule_id })),
            (1, sent("active", "<b@x>", 2)),
            (
                48,
                new(&CapsuleReleased {
                    capsule_id,
                    occurrence: Some(1),
                    scheduled_at: Some(at(48)),
                    next_at: None,
                }),
            ),
            (49, sent("delivery", "<c@x>", 1)),
            (800, new(&CapsuleFilePurged { capsule_id })),
        ]);
        let history = fold(&events);
        assert!(!history.recurring);
        assert_eq!(
            history.entries,
            vec![
                entry(0, Happened::Submitted),
                entry(0, email("confirm", "<a@x>", 0)),
                entry(1, Happened::Confirmed),
                entry(1, email("active", "<b@x>", 2)),
                entry(
                    48,
                    Happened::Released {
                        occurrence: 1,
                        scheduled_at: at(48),
                        next_at: None
                    }
                ),
                entry(49, email("delivery", "<c@x>", 1)),
                entry(800, Happened::FileDeleted),
            ]
        );
        let words: Vec<String> = history
            .entries
            .iter()
            .map(|e| e.in_words(history.recurring))
            .collect();
        assert_eq!(
            words[3],
            "Email sent: the receipt, to the sender (Message-ID <b@x>), after 2 failed tries."
        );
        assert_eq!(words[4], "Released (due on 3 March 2027 at 00:00:00 UTC).");
        assert_eq!(
            words[5],
            "Email sent: the capsule, to its recipient (Message-ID <c@x>), after 1 failed try."
        );
    }

    #[test]
    fn a_release_written_before_occurrences_is_the_one_at_the_send_time() {
        let mut old = new(&CapsuleReleased {
            capsule_id: id(),
            occurrence: None,
            scheduled_at: None,
            next_at: None,
        });
        old.payload = json!({ "capsule_id": id() });
        let events = stream(vec![
            (0, new(&submitted(None))),
            (1, new(&CapsuleConfirmed { capsule_id: id() })),
            (50, old),
        ]);
        let history = fold(&events);
        assert_eq!(
            history.entries[2],
            entry(
                50,
                Happened::Released {
                    occurrence: 1,
                    scheduled_at: at(48),
                    next_at: None
                }
            )
        );
    }

    #[test]
    fn a_recurring_capsule_numbers_its_occurrences_and_shows_skipped_ones() {
        let capsule_id = id();
        let schedule = Schedule {
            cron: "0 9 * * *".into(),
            time_zone: "Europe/Berlin".into(),
            until: None,
            count: Some(4),
        };
        let released = |occurrence: u32, due: i64, next: Option<i64>| {
            new(&CapsuleReleased {
                capsule_id,
                occurrence: Some(occurrence),
                scheduled_at: Some(at(due)),
                next_at: next.map(at),
            })
        };
        let events = stream(vec![
            (0, new(&submitted(Some(schedule)))),
            (1, new(&CapsuleConfirmed { capsule_id })),
            (48, released(1, 48, Some(72))),
            (48, sent("delivery", "<one@x>", 0)),
            // Down from before the second occurrence until after the third was due.
            (
                100,
                new(&CapsuleOccurrenceSkipped {
                    capsule_id,
                    occurrence: 2,
                    scheduled_at: at(72),
                }),
            ),
            (100, released(3, 96, Some(120))),
            (100, sent("delivery", "<three@x>", 0)),
            (120, released(4, 120, None)),
            (120, sent("delivery", "<four@x>", 0)),
        ]);
        let history = fold(&events);
        assert!(history.recurring);
        let kinds: Vec<&Happened> = history.entries.iter().map(|e| &e.what).collect();
        assert_eq!(
            kinds[4..6],
            [
                &Happened::Skipped {
                    occurrence: 2,
                    scheduled_at: at(72)
                },
                &Happened::Released {
                    occurrence: 3,
                    scheduled_at: at(96),
                    next_at: Some(at(120))
                },
            ]
        );
        assert_eq!(
            history.entries[5].at,
            at(100),
            "released late, after downtime"
        );
        let occurrences: Vec<u32> = kinds
            .iter()
            .filter_map(|k| match k {
                Happened::Released { occurrence, .. } => Some(*occurrence),
                _ => None,
            })
            .collect();
        assert_eq!(occurrences, [1, 3, 4]);
        let words: Vec<String> = history.entries.iter().map(|e| e.in_words(true)).collect();
        assert_eq!(
            words[2],
            "Occurrence 1 released (due on 3 March 2027 at 00:00:00 UTC). The next is due on 4 March 2027 at 00:00:00 UTC."
        );
        assert_eq!(
            words[4],
            "Occurrence 2 (due on 4 March 2027 at 00:00:00 UTC) skipped: a later one was already due."
        );
        assert_eq!(
            words[7],
            "Occurrence 4 released (due on 6 March 2027 at 00:00:00 UTC). It was the last."
        );
    }

    #[test]
    fn cancelled_and_expired_capsules() {
        let capsule_id = id();
        let cancelled = stream(vec![
            (0, new(&submitted(None))),
            (1, new(&CapsuleConfirmed { capsule_id })),
            (2, new(&CapsuleCancelled { capsule_id })),
            (2, sent("cancelled", "<c@x>", 0)),
        ]);
        let history = fold(&cancelled);
        assert_eq!(history.entries[2], entry(2, Happened::Cancelled));
        assert_eq!(
            history.entries[3].in_words(false),
            "Email sent: the notice of cancellation, to the sender (Message-ID <c@x>)."
        );

        let expired = stream(vec![
            (0, new(&submitted(None))),
            (24, new(&CapsuleExpired { capsule_id })),
            (24, new(&CapsuleFilePurged { capsule_id })),
        ]);
        let history = fold(&expired);
        assert_eq!(
            history.entries,
            vec![
                entry(0, Happened::Submitted),
                entry(24, Happened::Expired),
                entry(24, Happened::FileDeleted),
            ]
        );
    }

    #[test]
    fn unknown_events_are_passed_over_and_nothing_personal_is_shown() {
        let mut unknown = new(&CapsuleConfirmed { capsule_id: id() });
        unknown.event_type = "capsule.something_new".into();
        let events = stream(vec![(0, new(&submitted(None))), (1, unknown)]);
        let history = fold(&events);
        assert_eq!(history.entries, vec![entry(0, Happened::Submitted)]);
        let words = format!("{:?}", history);
        for personal in ["ada@", "grace@", "Ada", "Grace", "secret"] {
            assert!(!words.contains(personal), "{personal} in {words}");
        }
    }

    #[test]
    fn a_stream_not_starting_with_a_submission_is_an_error() {
        let events = stream(vec![(0, new(&CapsuleConfirmed { capsule_id: id() }))]);
        assert!(History::of(&events).is_err());
        let mut broken = sent("delivery", "<d@x>", 0);
        broken.payload = json!({ "message_id": 5 });
        let events = stream(vec![(0, new(&submitted(None))), (1, broken)]);
        assert!(History::of(&events).is_err());
    }

    #[test]
    fn a_long_series_keeps_its_most_recent_entries() {
        let mut events = vec![(0, new(&submitted(None)))];
        for n in 1..=250 {
            events.push((n, sent("delivery", &format!("<{n}@x>"), 0)));
        }
        let history = fold(&stream(events));
        assert_eq!(history.entries.len(), super::MAX_ENTRIES);
        assert_eq!(
            history.omitted, 51,
            "the submission and the 50 oldest sends"
        );
        assert_eq!(
            history.entries.last(),
            Some(&entry(250, email("delivery", "<250@x>", 0)))
        );
    }
}
