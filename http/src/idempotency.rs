//! The `Idempotency-Key` header of a write: a client that sends one may retry the write
//! safely, and is answered as the first time. Each job decides what the key names (a
//! message's stream, a capsule's id); this only reads it.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};

use crate::ApiError;

/// The key, if one was sent: 1-255 visible ASCII characters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IdempotencyKey(pub Option<String>);

impl IdempotencyKey {
    pub fn as_deref(&self) -> Option<&str> {
        self.0.as_deref()
    }
}

/// A header that is not a valid key. Routes whose checks come in a set order take
/// `Result<IdempotencyKey, InvalidIdempotencyKey>` and answer it in its place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InvalidIdempotencyKey;

impl From<InvalidIdempotencyKey> for ApiError {
    fn from(_: InvalidIdempotencyKey) -> Self {
        ApiError::bad_request(
            "invalid_idempotency_key",
            "Idempotency-Key must be 1-255 visible ASCII characters",
        )
    }
}

impl IntoResponse for InvalidIdempotencyKey {
    fn into_response(self) -> Response {
        ApiError::from(self).into_response()
    }
}

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKey {
    type Rejection = InvalidIdempotencyKey;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let Some(value) = parts.headers.get("idempotency-key") else {
            return Ok(IdempotencyKey(None));
        };
        value
            .to_str()
            .ok()
            .filter(|k| !k.is_empty() && k.len() <= 255 && k.chars().all(|c| c.is_ascii_graphic()))
            .map(|k| IdempotencyKey(Some(k.to_owned())))
            .ok_or(InvalidIdempotencyKey)
    }
}
