//! What can go wrong with a capsule request, and how each is answered: in Chronoria's
//! plain-text codes ([`CapsuleError::plain`], for the `/api` routes and the upload) or in
//! Cairn's JSON ([`CapsuleError::json`], for `/capsules`). Both go through the one
//! [`ApiError`], so statuses and `Retry-After` follow one rule.

use std::fmt;

use axum::http::StatusCode;
use cairn_events::StoreError;
use cairn_events::domain::capsule::InvalidField;
use cairn_http::ApiError;
use serde::{Deserialize, Serialize};

use super::decide::Refused;

/// Why an input was refused: Chronoria's error codes, which its client shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Refusal {
    InvalidEmail,
    InvalidName,
    InvalidFutureTime,
    InvalidText,
    InvalidTextLoc,
    InvalidFile,
    InvalidId,
}

impl Refusal {
    /// The code as Chronoria spells it.
    pub fn code(self) -> &'static str {
        match self {
            Refusal::InvalidEmail => "INVALID_EMAIL",
            Refusal::InvalidName => "INVALID_NAME",
            Refusal::InvalidFutureTime => "INVALID_FUTURE_TIME",
            Refusal::InvalidText => "INVALID_TEXT",
            Refusal::InvalidTextLoc => "INVALID_TEXT_LOC",
            Refusal::InvalidFile => "INVALID_FILE",
            Refusal::InvalidId => "INVALID_ID",
        }
    }

    /// In words, for Cairn's JSON answers.
    fn words(self) -> &'static str {
        match self {
            Refusal::InvalidEmail => "an email address is missing or not valid",
            Refusal::InvalidName => "a name must be 1 to 255 characters",
            Refusal::InvalidFutureTime => "send_at must be an RFC 3339 time in the future",
            Refusal::InvalidText => "text must be 1 to 10,000 characters",
            Refusal::InvalidId => "that is not a capsule id",
            Refusal::InvalidFile | Refusal::InvalidTextLoc => "the file is not acceptable",
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

impl From<InvalidField> for Refusal {
    fn from(invalid: InvalidField) -> Self {
        match invalid {
            InvalidField::Email => Refusal::InvalidEmail,
            InvalidField::Name => Refusal::InvalidName,
            InvalidField::Text => Refusal::InvalidText,
            InvalidField::TextLocation => Refusal::InvalidTextLoc,
            InvalidField::Id => Refusal::InvalidId,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CapsuleError {
    #[error("{0}")]
    Invalid(Refusal),
    #[error(transparent)]
    Refused(Refused),
    /// No capsule has that id.
    #[error("no such capsule")]
    NotFound,
    #[error("the capsule has no file to download")]
    NoFile,
    /// Too many submissions from this address or sender; try again after the wait.
    #[error("too many submissions")]
    RateLimited(std::time::Duration),
    #[error("the Idempotency-Key is not valid")]
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
        CapsuleError::Invalid(refusal)
    }
}

impl From<InvalidField> for CapsuleError {
    fn from(invalid: InvalidField) -> Self {
        CapsuleError::Invalid(invalid.into())
    }
}

impl From<Refused> for CapsuleError {
    fn from(refused: Refused) -> Self {
        match refused {
            Refused::Invalid(refusal) => CapsuleError::Invalid(refusal),
            other => CapsuleError::Refused(other),
        }
    }
}

impl CapsuleError {
    /// The answer in Cairn's JSON conventions.
    pub fn json(self) -> ApiError {
        match self {
            CapsuleError::Invalid(refusal) => {
                ApiError::bad_request(refusal.code().to_ascii_lowercase(), refusal.words())
            }
            CapsuleError::Refused(Refused::BlockedSender) => {
                ApiError::bad_request("blocked_sender", "capsules from this sender are refused")
            }
            CapsuleError::Refused(Refused::KeyReused) => ApiError::unprocessable(
                "idempotency_key_reused",
                "this Idempotency-Key was used for a different capsule",
            ),
            CapsuleError::Refused(_) | CapsuleError::NotFound | CapsuleError::NoFile => {
                ApiError::not_found()
            }
            CapsuleError::RateLimited(wait) => ApiError::rate_limited(
                "rate_limited",
                "too many capsules from this address or sender; try again later",
                wait,
            ),
            CapsuleError::InvalidKey => cairn_http::InvalidIdempotencyKey.into(),
            CapsuleError::Blob(error) => {
                ApiError::dependency_failed("blobs_unavailable", "blob storage", &Blob(error))
            }
            CapsuleError::Template(error) => {
                ApiError::internal("capsule email could not be rendered", &error)
            }
            CapsuleError::Store(error) => ApiError::from(error),
        }
    }

    /// The answer in Chronoria's conventions: the status, and a code as the whole body.
    pub fn plain(self) -> ApiError {
        let code = match &self {
            CapsuleError::Invalid(refusal) => refusal.code(),
            CapsuleError::Refused(Refused::Invalid(refusal)) => refusal.code(),
            CapsuleError::Refused(Refused::BlockedSender) => "BLOCKED_SENDER_EMAIL",
            CapsuleError::Refused(Refused::KeyReused) => "IDEMPOTENCY_KEY_REUSED",
            CapsuleError::Refused(Refused::NotPending) | CapsuleError::NotFound => {
                "CAPSULE_NA_OR_EXPIRED"
            }
            CapsuleError::Refused(Refused::NotCancellable) => "CAPSULE_NA_OR_RELEASED",
            CapsuleError::NoFile => "NO_FILE_AVAILABLE_FOR_THIS_CAPSULE",
            CapsuleError::RateLimited(_) => "TOO_MANY_REQUESTS",
            CapsuleError::InvalidKey => "INVALID_IDEMPOTENCY_KEY",
            CapsuleError::Blob(_) | CapsuleError::Store(_) => "SERVICE_UNAVAILABLE",
            CapsuleError::Template(_) => "INTERNAL_ERROR",
        };
        let status = match &self {
            // Chronoria answers every refusal with 400.
            CapsuleError::Refused(Refused::KeyReused) => StatusCode::UNPROCESSABLE_ENTITY,
            CapsuleError::Invalid(_)
            | CapsuleError::Refused(_)
            | CapsuleError::NotFound
            | CapsuleError::NoFile
            | CapsuleError::InvalidKey => StatusCode::BAD_REQUEST,
            _ => return self.json().into_plain(code),
        };
        ApiError::plain(status, code)
    }
}

/// A blob-storage failure as an error, for the log.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Blob(String);
