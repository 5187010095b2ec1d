//! Time capsules: a message (and perhaps a file) emailed at a chosen time.
//!
//! A capsule is one stream, `capsule-<id>`, for its whole life: submitted (pending the
//! sender's confirmation), confirmed (active), then released, or cancelled, or expired if
//! never confirmed. Nothing moves between tables or databases when its state changes: the
//! state is the fold of its events, which the write side keeps (`cairn-command`'s
//! `capsules::state`).
//!
//! These are the payloads (the contract every side reads) and the input types inside them,
//! which are the only way in ("parse, don't validate"): a value that fails to parse says
//! which field it was ([`InvalidField`]); how that is answered (Chronoria's plain-text codes,
//! Cairn's JSON) is the routes' business.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{DomainEvent, Envelope};

/// The stream category of capsules.
pub const CATEGORY: &str = "capsule";
/// Longest email address, in characters.
pub const MAX_EMAIL_CHARS: usize = 255;
/// Longest name, in characters.
pub const MAX_NAME_CHARS: usize = 255;
/// Longest capsule text, in characters.
pub const MAX_TEXT_CHARS: usize = 10_000;
/// Largest attached file, in bytes.
pub const MAX_FILE_BYTES: u64 = 200_000_000;

/// Which input did not parse.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InvalidField {
    #[error("an email address is missing or not valid")]
    Email,
    #[error("a name must be 1 to 255 characters")]
    Name,
    #[error("the text must be up to 10,000 characters without control characters")]
    Text,
    #[error("the text location must be Before or After")]
    TextLocation,
    #[error("that is not a capsule id")]
    Id,
}

/// An email address: at most 255 characters, one `@` between a local part of 1-64
/// printable characters (no spaces, quotes or angle brackets) and a domain of dot-separated
/// labels of letters, digits and `-` with at least one dot. Kept as written; compared
/// case-insensitively ([`EmailAddress::key`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct EmailAddress(String);

impl EmailAddress {
    pub fn parse(raw: &str) -> Result<Self, InvalidField> {
        let raw = raw.trim();
        if raw.is_empty() || raw.chars().count() > MAX_EMAIL_CHARS {
            return Err(InvalidField::Email);
        }
        let (local, domain) = raw.rsplit_once('@').ok_or(InvalidField::Email)?;
        let local_ok = (1..=64).contains(&local.len())
            && local.chars().all(|c| {
                c.is_ascii_graphic()
                    && !matches!(
                        c,
                        '@' | '"' | '<' | '>' | '(' | ')' | ',' | ';' | ':' | '\\' | '[' | ']'
                    )
            })
            && !local.starts_with('.')
            && !local.ends_with('.')
            && !local.contains("..");
        let labels: Vec<&str> = domain.split('.').collect();
        let domain_ok = labels.len() >= 2
            && domain.len() <= 253
            && labels.iter().all(|label| {
                (1..=63).contains(&label.len())
                    && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                    && !label.starts_with('-')
                    && !label.ends_with('-')
            });
        if local_ok && domain_ok {
            Ok(EmailAddress(raw.to_owned()))
        } else {
            Err(InvalidField::Email)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The case-folded form addresses are compared by.
    pub fn key(&self) -> String {
        self.0.to_ascii_lowercase()
    }

    /// The mailbox a sender is counted and blocked by: case-folded, without a `+tag`
    /// after the local part (`Ada+1@x.org` and `ada@x.org` are one sender), so neither
    /// the blocklist nor the rate limit is escaped by tagging the address.
    pub fn sender_key(&self) -> String {
        let key = self.key();
        match key.rsplit_once('@') {
            Some((local, domain)) => {
                let base = local.split_once('+').map_or(local, |(base, _)| base);
                let base = if base.is_empty() { local } else { base };
                format!("{base}@{domain}")
            }
            None => key,
        }
    }
}

impl TryFrom<String> for EmailAddress {
    type Error = InvalidField;
    fn try_from(value: String) -> Result<Self, InvalidField> {
        EmailAddress::parse(&value)
    }
}

impl From<EmailAddress> for String {
    fn from(value: EmailAddress) -> String {
        value.0
    }
}

impl fmt::Display for EmailAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A person's name: 1-255 characters once trimmed, no control characters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PersonName(String);

impl PersonName {
    pub fn parse(raw: &str) -> Result<Self, InvalidField> {
        let name = raw.trim();
        if name.is_empty()
            || name.chars().count() > MAX_NAME_CHARS
            || name.chars().any(char::is_control)
        {
            return Err(InvalidField::Name);
        }
        Ok(PersonName(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for PersonName {
    type Error = InvalidField;
    fn try_from(value: String) -> Result<Self, InvalidField> {
        PersonName::parse(&value)
    }
}

impl From<PersonName> for String {
    fn from(value: PersonName) -> String {
        value.0
    }
}

/// A capsule's text: at most 10,000 characters, no control characters but line breaks
/// and tabs; a capsule without a file needs some text.
pub fn validate_text(text: &str, has_file: bool) -> Result<(), InvalidField> {
    let too_long = text.chars().count() > MAX_TEXT_CHARS;
    let controls = text
        .chars()
        .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'));
    let empty = text.trim().is_empty() && !has_file;
    if too_long || controls || empty {
        Err(InvalidField::Text)
    } else {
        Ok(())
    }
}

/// Where a file capsule's text goes in the delivered email, around the download link.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TextLocation {
    Before,
    After,
}

impl TextLocation {
    /// `Before` or `After`, in any case.
    pub fn parse(raw: &str) -> Result<Self, InvalidField> {
        match raw.trim().to_ascii_lowercase().as_str() {
            "before" => Ok(TextLocation::Before),
            "after" => Ok(TextLocation::After),
            _ => Err(InvalidField::TextLocation),
        }
    }
}

/// A capsule id as it appears in links: a UUID.
pub fn parse_id(raw: &str) -> Result<Uuid, InvalidField> {
    Uuid::parse_str(raw.trim()).map_err(|_| InvalidField::Id)
}

pub fn stream_id(capsule_id: Uuid) -> String {
    format!("{CATEGORY}-{capsule_id}")
}

/// Someone a capsule is from or to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Party {
    pub email: EmailAddress,
    pub name: PersonName,
}

/// A file attached to a capsule, kept in blob storage.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    /// Where the blob store keeps it.
    pub blob: String,
    /// The name it downloads as.
    pub file_name: String,
    pub bytes: u64,
    pub text_location: TextLocation,
}

/// A capsule was written; it waits for the sender's confirmation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CapsuleSubmitted {
    pub capsule_id: Uuid,
    /// The user whose bearer token came with the submission: the capsule is theirs too
    /// (it goes into their exports).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<Uuid>,
    pub sender: Party,
    pub recipient: Party,
    /// When it is delivered; for a recurring capsule, its first occurrence.
    pub send_at: DateTime<Utc>,
    pub text: String,
    pub attachment: Option<Attachment>,
    /// For a recurring capsule: when it repeats.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<Schedule>,
}

/// When a recurring capsule is delivered: every time `cron` fires in `time_zone`
/// ([`crate::schedule::Recurrence`]), counted from its submission, up to `until`
/// (inclusive) or `count` occurrences (skipped ones included), or for ever.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Schedule {
    pub cron: String,
    /// An IANA zone name, as given (`UTC` when none was).
    pub time_zone: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u32>,
}

impl Schedule {
    /// The expression and zone, parsed (they were checked when the capsule was written).
    pub fn recurrence(
        &self,
    ) -> Result<crate::schedule::Recurrence, crate::schedule::ScheduleError> {
        crate::schedule::Recurrence::parse(&self.cron, &self.time_zone)
    }
}

impl DomainEvent for CapsuleSubmitted {
    const TYPE: &'static str = "capsule.submitted";
    const SCHEMA_VERSION: i32 = 1;
}

/// The sender confirmed the capsule: it will be released at its time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapsuleConfirmed {
    pub capsule_id: Uuid,
}

impl DomainEvent for CapsuleConfirmed {
    const TYPE: &'static str = "capsule.confirmed";
    const SCHEMA_VERSION: i32 = 1;
}

/// The capsule was cancelled before its release.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapsuleCancelled {
    pub capsule_id: Uuid,
}

impl DomainEvent for CapsuleCancelled {
    const TYPE: &'static str = "capsule.cancelled";
    const SCHEMA_VERSION: i32 = 1;
}

/// Nobody confirmed the capsule in time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapsuleExpired {
    pub capsule_id: Uuid,
}

impl DomainEvent for CapsuleExpired {
    const TYPE: &'static str = "capsule.expired";
    const SCHEMA_VERSION: i32 = 1;
}

/// The capsule (or one occurrence of a recurring one) was released: its delivery email
/// is queued. Events written before recurring capsules carry only the id: occurrence 1 at
/// the send time, the last.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapsuleReleased {
    pub capsule_id: Uuid,
    /// Which occurrence, from 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub occurrence: Option<u32>,
    /// When it was due (the event's own time is when it was released).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduled_at: Option<DateTime<Utc>>,
    /// When the next occurrence is due; none: this was the last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_at: Option<DateTime<Utc>>,
}

/// An occurrence of a recurring capsule that was not delivered because a later one was
/// already due when the scheduler came to it (after downtime, only the latest missed
/// occurrence is delivered).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapsuleOccurrenceSkipped {
    pub capsule_id: Uuid,
    pub occurrence: u32,
    pub scheduled_at: DateTime<Utc>,
}

impl DomainEvent for CapsuleOccurrenceSkipped {
    const TYPE: &'static str = "capsule.occurrence_skipped";
    const SCHEMA_VERSION: i32 = 1;
}

impl DomainEvent for CapsuleReleased {
    const TYPE: &'static str = "capsule.released";
    const SCHEMA_VERSION: i32 = 1;
}

/// A capsule's file was deleted from blob storage: cancelled or expired, or delivered and
/// kept as long as it was to be.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapsuleFilePurged {
    pub capsule_id: Uuid,
}

impl DomainEvent for CapsuleFilePurged {
    const TYPE: &'static str = "capsule.file_purged";
    const SCHEMA_VERSION: i32 = 1;
}

/// The stream holding the key download links are signed with, when none is configured:
/// its first event wins, so every process signs and checks with the same key.
pub const LINK_KEY_STREAM: &str = "settings-link-key";

/// The download-link key was made.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkKeyCreated {
    /// 32 random bytes, base64url.
    pub key: String,
}

impl DomainEvent for LinkKeyCreated {
    const TYPE: &'static str = "settings.link_key_created";
    const SCHEMA_VERSION: i32 = 1;
}

/// The stream of the sender blocklist kept from the CLI (beside the configured one).
pub const BLOCKLIST_STREAM: &str = "blocklist-senders";

/// A sender address was blocked: its capsules are refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SenderBlocked {
    pub email: EmailAddress,
}

impl DomainEvent for SenderBlocked {
    const TYPE: &'static str = "blocklist.sender_blocked";
    const SCHEMA_VERSION: i32 = 1;
}

/// A sender address was unblocked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SenderUnblocked {
    pub email: EmailAddress,
}

impl DomainEvent for SenderUnblocked {
    const TYPE: &'static str = "blocklist.sender_unblocked";
    const SCHEMA_VERSION: i32 = 1;
}

/// The blocked senders ([`EmailAddress::sender_key`]) the blocklist stream's events
/// leave, sorted.
pub fn blocked_senders(events: &[Envelope]) -> Vec<String> {
    let mut blocked = std::collections::BTreeSet::new();
    for event in events {
        if let Ok(b) = SenderBlocked::decode(event) {
            blocked.insert(b.email.sender_key());
        } else if let Ok(u) = SenderUnblocked::decode(event) {
            blocked.remove(&u.email.sender_key());
        }
    }
    blocked.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails() {
        for good in [
            "a@b.co",
            "first.last+tag@mail.example.org",
            " Kim@Example.COM ",
        ] {
            assert!(EmailAddress::parse(good).is_ok(), "{good}");
        }
        let long = format!("{}@example.com", "a".repeat(250));
        for bad in [
            "",
            "plain",
            "a@b",
            "@b.co",
            "a@",
            "a b@c.co",
            "a@b..co",
            "a@-b.co",
            ".a@b.co",
            "a..b@c.co",
            "a@b.c_o",
            "<a@b.co>",
            long.as_str(),
        ] {
            assert_eq!(
                EmailAddress::parse(bad),
                Err(InvalidField::Email),
                "{bad:?}"
            );
        }
        let kim = EmailAddress::parse("Kim@Example.COM").unwrap_or_else(|_| unreachable!());
        assert_eq!(kim.key(), "kim@example.com");
        let tagged = EmailAddress::parse("Kim+News@Example.com").unwrap_or_else(|_| unreachable!());
        assert_eq!(tagged.sender_key(), "kim@example.com");
        let odd = EmailAddress::parse("+only@example.com").unwrap_or_else(|_| unreachable!());
        assert_eq!(odd.sender_key(), "+only@example.com");
    }

    #[test]
    fn names_texts_and_locations() {
        assert!(PersonName::parse("Ada Lovelace").is_ok());
        assert_eq!(PersonName::parse("  "), Err(InvalidField::Name));
        assert_eq!(PersonName::parse(&"n".repeat(256)), Err(InvalidField::Name));
        assert_eq!(PersonName::parse("a\u{7}b"), Err(InvalidField::Name));
        assert!(validate_text("dear future me\n", false).is_ok());
        assert!(
            validate_text("", true).is_ok(),
            "a file capsule may have no text"
        );
        assert_eq!(validate_text(" ", false), Err(InvalidField::Text));
        assert_eq!(
            validate_text(&"x".repeat(10_001), false),
            Err(InvalidField::Text)
        );
        assert!(
            validate_text(&"é".repeat(10_000), false).is_ok(),
            "characters, not bytes"
        );
        assert_eq!(TextLocation::parse("before"), Ok(TextLocation::Before));
        assert_eq!(TextLocation::parse("After"), Ok(TextLocation::After));
        assert_eq!(
            TextLocation::parse("middle"),
            Err(InvalidField::TextLocation)
        );
        assert_eq!(parse_id("nope"), Err(InvalidField::Id));
    }
}
