//! Users and their bearer tokens. A user is one stream, `user-<lowercased name>`, so the
//! event store itself guarantees that names are unique (a second `UserCreated` for the same
//! name conflicts on `ExpectedVersion::NoStream`).

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::DomainEvent;

/// A user name: 1-64 characters from `A-Z a-z 0-9 _ . -`, starting with a letter or digit.
/// Names compare case-insensitively (`Alice` and `alice` are the same user).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct UserName(String);

impl UserName {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let valid_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-');
        if raw.is_empty() || raw.len() > 64 {
            return Err("user name must be 1-64 characters".into());
        }
        if !raw.chars().all(valid_char) || !raw.starts_with(|c: char| c.is_ascii_alphanumeric()) {
            return Err("user name may contain only letters, digits, '_', '.' and '-', and must start with a letter or digit".into());
        }
        Ok(UserName(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The case-folded form used for lookups.
    pub fn key(&self) -> String {
        self.0.to_ascii_lowercase()
    }

    /// The id of this user's stream.
    pub fn stream_id(&self) -> String {
        format!("user-{}", self.key())
    }
}

impl TryFrom<String> for UserName {
    type Error = String;
    fn try_from(value: String) -> Result<Self, String> {
        UserName::parse(&value)
    }
}

impl From<UserName> for String {
    fn from(value: UserName) -> String {
        value.0
    }
}

impl fmt::Display for UserName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A user was created.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UserCreated {
    pub user_id: Uuid,
    pub name: UserName,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
}

impl DomainEvent for UserCreated {
    const TYPE: &'static str = "user.created";
    const SCHEMA_VERSION: i32 = 1;
}

/// A bearer token was issued (or imported) for a user. Only its SHA-256 is stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TokenIssued {
    pub token_id: Uuid,
    pub user_id: Uuid,
    /// Lower-case hex SHA-256 of the token string.
    pub token_hash: String,
    /// Imported tokens (e.g. Dunder's `base64(username)`) are guessable: flagged as weak.
    pub weak: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
}

impl DomainEvent for TokenIssued {
    const TYPE: &'static str = "user.token_issued";
    const SCHEMA_VERSION: i32 = 1;
}

/// A token was revoked; requests bearing it are refused from then on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TokenRevoked {
    pub token_id: Uuid,
    pub user_id: Uuid,
}

impl DomainEvent for TokenRevoked {
    const TYPE: &'static str = "user.token_revoked";
    const SCHEMA_VERSION: i32 = 1;
}

/// The stream category of users.
pub const CATEGORY: &str = "user";
