//! Messages: short texts with hashtags. Each message is its own stream.

use std::collections::HashSet;
use std::fmt;

use serde::{Deserialize, Serialize};
use ulid::Ulid;
use unicode_normalization::char::is_combining_mark;
use unicode_normalization::{UnicodeNormalization, is_nfc};
use uuid::Uuid;

use crate::DomainEvent;

/// The most characters a message text may have.
pub const MAX_TEXT_CHARS: usize = 1000;
/// The most hashtags one message may carry.
pub const MAX_HASHTAGS: usize = 30;
/// The most characters of one hashtag (without a leading `#`).
pub const MAX_HASHTAG_CHARS: usize = 64;

/// The stream category of messages.
pub const CATEGORY: &str = "message";

/// A hashtag: 1-64 letters, marks, digits or `_` of any script (Unicode general categories
/// L*, M*, N*), given with or without a leading `#`, not starting with a mark. It is kept
/// in Unicode normalisation form C (NFC), so `café` typed with a combining accent is the
/// same tag as the precomposed one; otherwise it keeps its spelling. [`Hashtag::key`] is
/// the case-folded form that queries match.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Hashtag(String);

impl Hashtag {
    pub fn parse(raw: &str) -> Result<Self, String> {
        Self::build(raw, true)
    }

    /// A tag as input gives it (`check_length`), or as an event stored it: stored tags were
    /// checked when they were posted, and a few characters decompose under NFC, so a stored
    /// tag is not refused for its normalised length.
    fn build(raw: &str, check_length: bool) -> Result<Self, String> {
        let tag = raw.strip_prefix('#').unwrap_or(raw);
        let too_long = |tag: &str, max: usize| tag.chars().nth(max).is_some();
        // Normalising composes a letter and its marks into fewer characters; the input is
        // bounded first, however long it is, so normalising costs little.
        if tag.is_empty() || (check_length && too_long(tag, MAX_HASHTAG_CHARS * 8)) {
            return Err(format!(
                "hashtag {} must be 1-{MAX_HASHTAG_CHARS} characters",
                shown(raw)
            ));
        }
        let tag: String = if is_nfc(tag) {
            tag.to_owned()
        } else {
            tag.nfc().collect()
        };
        if check_length && too_long(&tag, MAX_HASHTAG_CHARS) {
            return Err(format!(
                "hashtag {} must be 1-{MAX_HASHTAG_CHARS} characters",
                shown(raw)
            ));
        }
        let allowed = |c: char| c == '_' || c.is_alphanumeric() || is_combining_mark(c);
        if !tag.chars().all(allowed) || tag.starts_with(is_combining_mark) {
            return Err(format!(
                "hashtag {} may contain only letters, marks, digits and '_'",
                shown(raw)
            ));
        }
        Ok(Hashtag(tag))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The case-folded form used for matching: the NFC spelling in lower case.
    pub fn key(&self) -> String {
        self.0.to_lowercase()
    }
}

/// A refused tag as an error message shows it: quoted, and cut short if long.
fn shown(raw: &str) -> String {
    const SHOWN: usize = MAX_HASHTAG_CHARS + 8;
    match raw.char_indices().nth(SHOWN) {
        Some((end, _)) => format!("{:?}…", &raw[..end]),
        None => format!("{raw:?}"),
    }
}

/// The stored form (an event's payload).
impl TryFrom<String> for Hashtag {
    type Error = String;
    fn try_from(value: String) -> Result<Self, String> {
        Hashtag::build(&value, false)
    }
}

impl From<Hashtag> for String {
    fn from(value: Hashtag) -> String {
        value.0
    }
}

impl fmt::Display for Hashtag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A message's hashtags: at most [`MAX_HASHTAGS`], duplicates (the same [`Hashtag::key`])
/// dropped, first spelling kept, order kept.
///
/// The work is linear in the input and stops at the first tag past the limit, so a body
/// full of tags costs no more than reading it: duplicates are found through a set of keys,
/// and a 31st distinct tag is refused before anything after it is looked at.
pub fn parse_hashtags(raw: &[String]) -> Result<Vec<Hashtag>, String> {
    let mut tags: Vec<Hashtag> = Vec::with_capacity(raw.len().min(MAX_HASHTAGS));
    let mut seen: HashSet<String> = HashSet::with_capacity(raw.len().min(MAX_HASHTAGS));
    for r in raw {
        let tag = Hashtag::parse(r)?;
        if seen.insert(tag.key()) {
            if tags.len() == MAX_HASHTAGS {
                return Err(format!(
                    "a message may have at most {MAX_HASHTAGS} hashtags"
                ));
            }
            tags.push(tag);
        }
    }
    Ok(tags)
}

/// A message's text: 1-1000 characters, not only white space, no control characters other
/// than newline and tab.
pub fn validate_text(text: &str) -> Result<(), String> {
    if text.trim().is_empty() {
        return Err("text must not be empty".into());
    }
    if text.chars().count() > MAX_TEXT_CHARS {
        return Err(format!("text must be at most {MAX_TEXT_CHARS} characters"));
    }
    if text
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t' && c != '\r')
    {
        return Err("text must not contain control characters".into());
    }
    Ok(())
}

/// A message was posted. Its creation time is the timestamp inside `message_id` (a ULID),
/// which is also the event's `occurred_at` to the millisecond.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MessagePosted {
    pub message_id: Ulid,
    pub user_id: Uuid,
    pub user_name: String,
    pub text: String,
    pub hashtags: Vec<Hashtag>,
}

impl DomainEvent for MessagePosted {
    const TYPE: &'static str = "message.posted";
    const SCHEMA_VERSION: i32 = 1;
}

/// The stream a message lives in. With an idempotency key the stream is named by the user
/// and key, so a retried request collides with the first instead of posting twice.
pub fn stream_id(message_id: Ulid, user_id: Uuid, idempotency_key: Option<&str>) -> String {
    match idempotency_key {
        Some(key) => format!("{CATEGORY}-{user_id}~{key}"),
        None => format!("{CATEGORY}-{message_id}"),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn tags(raw: &[&str]) -> Vec<String> {
        raw.iter().map(|t| (*t).to_owned()).collect()
    }

    #[test]
    fn letters_marks_and_digits_of_any_script() {
        for tag in [
            "हिन्दी",
            "தமிழ்",
            "ไทย",
            "日本語",
            "русский",
            "ünï_1",
            "٣٤",
            "x\u{20DD}",
        ] {
            assert_eq!(Hashtag::parse(tag).unwrap().as_str(), tag, "{tag}");
        }
        for tag in ["a b", "a-b", "a.b", "\u{301}a", "🙂", "a\u{200B}"] {
            assert!(Hashtag::parse(tag).is_err(), "{tag:?} is refused");
        }
    }

    #[test]
    fn normalised_to_nfc_and_matched_in_lower_case() {
        let combining = Hashtag::parse("#Cafe\u{301}").unwrap();
        let precomposed = Hashtag::parse("café").unwrap();
        assert_eq!(combining.as_str(), "Caf\u{e9}");
        assert_eq!(combining.key(), precomposed.key());
        assert_eq!(
            parse_hashtags(&tags(&["cafe\u{301}", "CAFÉ", "Café"])).unwrap(),
            [precomposed]
        );
    }

    #[test]
    fn the_length_counts_normalised_characters() {
        // 64 characters, 65 before composing.
        let tag = format!("{}e\u{301}", "x".repeat(63));
        assert_eq!(Hashtag::parse(&tag).unwrap().as_str().chars().count(), 64);
        assert!(Hashtag::parse(&"x".repeat(65)).is_err());
    }

    #[test]
    fn a_stored_tag_decodes_whatever_its_normalised_length() {
        // U+0958 decomposes under NFC: 64 characters in, 128 out.
        let stored = "\u{958}".repeat(64);
        let tag = Hashtag::try_from(stored).unwrap();
        assert_eq!(tag.as_str().chars().count(), 128);
        assert!(Hashtag::parse(&"\u{958}".repeat(64)).is_err());
    }

    #[test]
    fn duplicates_do_not_count_against_the_limit() {
        let mut raw: Vec<String> = (0..MAX_HASHTAGS).map(|i| format!("t{i}")).collect();
        raw.extend((0..1000).map(|i| format!("T{}", i % MAX_HASHTAGS)));
        assert_eq!(parse_hashtags(&raw).unwrap().len(), MAX_HASHTAGS);
    }

    #[test]
    fn past_the_limit_nothing_further_is_looked_at() {
        let mut raw: Vec<String> = (0..=MAX_HASHTAGS).map(|i| format!("t{i}")).collect();
        raw.push("not a tag".into());
        assert_eq!(
            parse_hashtags(&raw).unwrap_err(),
            format!("a message may have at most {MAX_HASHTAGS} hashtags")
        );
        let many: Vec<String> = (0..125_000).map(|i| format!("t{i}")).collect();
        assert!(parse_hashtags(&many).is_err());
    }
}
