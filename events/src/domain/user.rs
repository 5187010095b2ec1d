//! Users and their bearer tokens. A user is one stream, `user-<lowercased name>`, so the
//! event store itself guarantees that names are unique (a second `UserCreated` for the same
//! name conflicts on `ExpectedVersion::NoStream`).
//!
//! A token is unique the same way: issuing one also opens the stream `token-<hash>` in the
//! same atomic append, so of two users given the same token string only the first gets it.
//! That stream is never closed: a revoked token stays claimed and cannot be issued again.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::DomainEvent;

/// The most characters of a user name.
pub const MAX_NAME_CHARS: usize = 255;

/// A user name: 1-255 characters, none of them white space or a control character, so an
/// e-mail address (`john@example.com`) is a name, as Dunder named its users. Names compare
/// ignoring ASCII case (`Alice` and `alice` are the same user); otherwise exactly.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct UserName(String);

impl UserName {
    pub fn parse(raw: &str) -> Result<Self, String> {
        if raw.is_empty() || raw.chars().nth(MAX_NAME_CHARS).is_some() {
            return Err(format!("user name must be 1-{MAX_NAME_CHARS} characters"));
        }
        if raw.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err("user name must not contain white space or control characters".into());
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

    /// The id of this user's stream: `user-<key>`, or, for a key too long for a stream id,
    /// `user-sha256:<hex of the key>`.
    pub fn stream_id(&self) -> String {
        let key = self.key();
        if key.len() <= MAX_KEY_IN_STREAM_ID {
            format!("{CATEGORY}-{key}")
        } else {
            format!("{CATEGORY}-sha256:{}", hex_sha256(&key))
        }
    }
}

/// Stream ids are at most 512 bytes; longer keys (non-ASCII names) are hashed.
const MAX_KEY_IN_STREAM_ID: usize = 400;

fn hex_sha256(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
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

/// The stream category of token claims.
pub const TOKEN_CATEGORY: &str = "token";

/// The stored form of a token: lower-case hex SHA-256 of the token string.
pub fn hash_token(token: &str) -> String {
    hex_sha256(token)
}

/// The stream that claims a token (by its hash) for the one user it was issued to.
pub fn token_stream_id(token_hash: &str) -> String {
    format!("{TOKEN_CATEGORY}-{token_hash}")
}

/// A token (its hash) was claimed: the first event of its `token-<hash>` stream, appended
/// with the `TokenIssued` it guards, and never followed by another.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TokenClaimed {
    pub token_id: Uuid,
    pub user_id: Uuid,
}

impl DomainEvent for TokenClaimed {
    const TYPE: &'static str = "token.claimed";
    const SCHEMA_VERSION: i32 = 1;
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn names_are_any_visible_characters() {
        for name in [
            "john@example.com",
            "a+b@example.com",
            "ædith",
            "x",
            "李",
            "o'brien",
        ] {
            assert_eq!(UserName::parse(name).unwrap().as_str(), name);
        }
        let longest = "é".repeat(MAX_NAME_CHARS);
        assert!(UserName::parse(&longest).is_ok());
        for name in [
            "",
            "a b",
            "tab\there",
            "new\nline",
            "nul\0",
            "\u{85}",
            &"x".repeat(256),
        ] {
            assert!(UserName::parse(name).is_err(), "{name:?} is refused");
        }
    }

    #[test]
    fn names_compare_ignoring_ascii_case() {
        let a = UserName::parse("John@Example.com").unwrap();
        let b = UserName::parse("john@example.COM").unwrap();
        assert_eq!(a.stream_id(), b.stream_id());
        assert_eq!(a.stream_id(), "user-john@example.com");
        assert_eq!(a.as_str(), "John@Example.com");
    }

    #[test]
    fn long_names_have_a_hashed_stream_id() {
        let long = UserName::parse(&"字".repeat(MAX_NAME_CHARS)).unwrap();
        let id = long.stream_id();
        assert!(
            id.starts_with("user-sha256:") && id.len() == 5 + 7 + 64,
            "{id}"
        );
        let other = UserName::parse(&"字".repeat(MAX_NAME_CHARS - 1)).unwrap();
        assert_ne!(other.stream_id(), id);
        assert_eq!(
            UserName::parse(&"a".repeat(MAX_NAME_CHARS))
                .unwrap()
                .stream_id()
                .len(),
            5 + MAX_NAME_CHARS
        );
    }
}
