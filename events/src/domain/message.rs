//! Messages: short texts with hashtags. Each message is its own stream.

use std::fmt;

use serde::{Deserialize, Serialize};
use ulid::Ulid;
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

/// A hashtag: 1-64 letters, digits or `_` (any script), given with or without a leading
/// `#`. Keeps its spelling; [`Hashtag::key`] is the case-folded form that queries match.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Hashtag(String);

impl Hashtag {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let tag = raw.strip_prefix('#').unwrap_or(raw);
        let chars = tag.chars().count();
        if chars == 0 || chars > MAX_HASHTAG_CHARS {
            return Err(format!(
                "hashtag {raw:?} must be 1-{MAX_HASHTAG_CHARS} characters"
            ));
        }
        if !tag.chars().all(|c| c.is_alphanumeric() || c == '_') {
            return Err(format!(
                "hashtag {raw:?} may contain only letters, digits and '_'"
            ));
        }
        Ok(Hashtag(tag.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The case-folded form used for matching.
    pub fn key(&self) -> String {
        self.0.to_lowercase()
    }
}

impl TryFrom<String> for Hashtag {
    type Error = String;
    fn try_from(value: String) -> Result<Self, String> {
        Hashtag::parse(&value)
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

/// A message's hashtags: at most [`MAX_HASHTAGS`], duplicates (case-insensitive) dropped,
/// first spelling kept, order kept.
pub fn parse_hashtags(raw: &[String]) -> Result<Vec<Hashtag>, String> {
    let mut tags: Vec<Hashtag> = Vec::with_capacity(raw.len());
    for r in raw {
        let tag = Hashtag::parse(r)?;
        if !tags.iter().any(|t| t.key() == tag.key()) {
            tags.push(tag);
        }
    }
    if tags.len() > MAX_HASHTAGS {
        return Err(format!(
            "a message may have at most {MAX_HASHTAGS} hashtags"
        ));
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
