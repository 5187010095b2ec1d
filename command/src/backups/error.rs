//! What can go wrong with a backup request, answered in Cairn's JSON ([`BackupError::json`],
//! the management routes). The upload route answers in Dome's own bodies (`upload.rs`).

use cairn_events::StoreError;
use cairn_http::ApiError;

use super::decide::Invalid;
use crate::blobs::BlobError;

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("{}", .0.message)]
    Invalid(Invalid),
    /// No such service, resource, key or backup, or not the caller's: the same answer, so
    /// ids of others' things are not confirmed.
    #[error("not found")]
    NotFound,
    #[error(transparent)]
    Blob(#[from] BlobError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<Invalid> for BackupError {
    fn from(invalid: Invalid) -> Self {
        BackupError::Invalid(invalid)
    }
}

impl From<cairn_events::DecodeError> for BackupError {
    fn from(error: cairn_events::DecodeError) -> Self {
        BackupError::Store(StoreError::Corrupt(error.to_string()))
    }
}

impl BackupError {
    /// The answer in Cairn's JSON conventions; the code of an invalid input names its
    /// field (`invalid_name`, `invalid_retention`, …).
    pub fn json(self) -> ApiError {
        match self {
            BackupError::Invalid(invalid) => ApiError::bad_request(
                format!("invalid_{}", invalid.field.replace('.', "_")),
                invalid.message,
            ),
            BackupError::NotFound => ApiError::not_found(),
            BackupError::Blob(error) => {
                ApiError::dependency_failed("blobs_unavailable", "blob storage", &error)
            }
            BackupError::Store(error) => ApiError::from(error),
        }
    }
}

impl From<BackupError> for ApiError {
    fn from(error: BackupError) -> Self {
        error.json()
    }
}
