//! What can go wrong with a capsule request, and how each is answered: in Chronoria's
//! plain-text codes ([`CapsuleError::plain`], for the `/api` routes and the upload) or in
//! Cairn's JSON ([`CapsuleError::json`], for `/capsules`). Both go through the one
//! [`ApiError`], so statuses and `Retry-After` follow one rule.

use std::fmt;

use axum::http::StatusCode;
use cairn_events::StoreError;
use cairn_events::domain::capsule::InvalidField;
use cairn_http::{ApiError, InvalidIdempotencyKey};

use super::decide::Refused;
use super::series::ScheduleField;

/// Why an input was refused: Chronoria's error codes, which its client shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    InvalidEmail,
    InvalidName,
    InvalidFutureTime,
    InvalidText,
    InvalidTextLoc,
    InvalidFile,
    InvalidId,
    /// A recurring capsule's schedule, naming the part refused.
    InvalidSchedule(ScheduleField),
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
            Refusal::InvalidSchedule(_) => "INVALID_SCHEDULE",
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
            Refusal::InvalidSchedule(field) => match field {
                ScheduleField::Cron => {
                    "schedule.cron must be a cron expression: 5 fields (minute hour day-of-month month day-of-week), 6 with seconds first, or @yearly, @monthly, @weekly, @daily, @hourly"
                }
                ScheduleField::TooOften => {
                    "schedule.cron fires more often than the server's minimum interval between deliveries"
                }
                ScheduleField::NoOccurrence => {
                    "schedule.cron has no occurrence in the future (before schedule.until, if given)"
                }
                ScheduleField::TimeZone => {
                    "schedule.time_zone must be an IANA time zone name, such as UTC or Europe/Berlin"
                }
                ScheduleField::Until => {
                    "schedule.until must be an RFC 3339 time or a date (YYYY-MM-DD) in the future"
                }
                ScheduleField::Count => "schedule.count must be a whole number from 1",
            },
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
    /// The input, or the decision on it, was refused.
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

impl From<Refused> for CapsuleError {
    fn from(refused: Refused) -> Self {
        CapsuleError::Refused(refused)
    }
}

impl From<Refusal> for CapsuleError {
    fn from(refusal: Refusal) -> Self {
        CapsuleError::Refused(Refused::Invalid(refusal))
    }
}

impl From<InvalidField> for CapsuleError {
    fn from(invalid: InvalidField) -> Self {
        Refusal::from(invalid).into()
    }
}

impl From<InvalidIdempotencyKey> for CapsuleError {
    fn from(_: InvalidIdempotencyKey) -> Self {
        CapsuleError::InvalidKey
    }
}

/// What the service says when something it depends on fails, to either kind of client.
const UNAVAILABLE: &str = "the service is temporarily unavailable; try again shortly";

impl CapsuleError {
    /// The answer in Cairn's JSON conventions.
    pub fn json(self) -> ApiError {
        match self {
            CapsuleError::Refused(Refused::Invalid(refusal)) => {
                ApiError::bad_request(refusal.code().to_ascii_lowercase(), refusal.words())
            }
            CapsuleError::Refused(Refused::BlockedSender) => {
                ApiError::bad_request("blocked_sender", "capsules from this sender are refused")
            }
            CapsuleError::Refused(Refused::KeyReused) => ApiError::unprocessable(
                "idempotency_key_reused",
                "this Idempotency-Key was used for a different capsule",
            ),
            CapsuleError::Refused(Refused::WrongRecipient) => ApiError::bad_request(
                "verification_failed",
                "that is not the address the capsule is for",
            ),
            CapsuleError::Refused(
                Refused::NotPending | Refused::NotCancellable | Refused::NoFile,
            )
            | CapsuleError::NotFound
            | CapsuleError::NoFile => ApiError::not_found(),
            CapsuleError::RateLimited(wait) => ApiError::rate_limited(
                "rate_limited",
                "too many capsules from this address or sender; try again later",
                wait,
            ),
            CapsuleError::InvalidKey => InvalidIdempotencyKey.into(),
            CapsuleError::Blob(error) => {
                tracing::error!(%error, "capsule request failed on blob storage");
                ApiError::unavailable("blobs_unavailable", UNAVAILABLE)
            }
            CapsuleError::Template(error) => {
                ApiError::internal("the capsule could not be written", &error)
            }
            CapsuleError::Store(error) => ApiError::from(error),
        }
    }

    /// The answer in Chronoria's conventions: the status, and a code as the whole body.
    /// Its client knows one code for every failure of the service, whatever failed.
    pub fn plain(self) -> ApiError {
        let refused = |code: &'static str| ApiError::plain(StatusCode::BAD_REQUEST, code);
        match self {
            CapsuleError::Refused(Refused::Invalid(refusal)) => refused(refusal.code()),
            CapsuleError::Refused(Refused::BlockedSender) => refused("BLOCKED_SENDER_EMAIL"),
            CapsuleError::Refused(Refused::KeyReused) => {
                ApiError::plain(StatusCode::UNPROCESSABLE_ENTITY, "IDEMPOTENCY_KEY_REUSED")
            }
            CapsuleError::Refused(Refused::NotPending) | CapsuleError::NotFound => {
                refused("CAPSULE_NA_OR_EXPIRED")
            }
            CapsuleError::Refused(Refused::NotCancellable) => refused("CAPSULE_NA_OR_RELEASED"),
            CapsuleError::Refused(Refused::WrongRecipient) => refused("VERIFICATION_FAILED"),
            CapsuleError::Refused(Refused::NoFile) | CapsuleError::NoFile => {
                refused("NO_FILE_AVAILABLE_FOR_THIS_CAPSULE")
            }
            CapsuleError::InvalidKey => refused("INVALID_IDEMPOTENCY_KEY"),
            CapsuleError::RateLimited(wait) => {
                ApiError::plain(StatusCode::TOO_MANY_REQUESTS, "TOO_MANY_REQUESTS")
                    .retry_after(wait)
            }
            CapsuleError::Store(error) => {
                tracing::error!(%error, cause = ?std::error::Error::source(&error), "capsule request failed on the event store");
                ApiError::plain(StatusCode::SERVICE_UNAVAILABLE, "SERVICE_UNAVAILABLE")
            }
            CapsuleError::Blob(error) => {
                tracing::error!(%error, "capsule request failed on blob storage");
                ApiError::plain(StatusCode::SERVICE_UNAVAILABLE, "SERVICE_UNAVAILABLE")
            }
            CapsuleError::Template(error) => {
                tracing::error!(%error, "capsule email could not be rendered");
                ApiError::plain(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL_ERROR")
            }
        }
    }
}
