//! One error type for every route: a status, a stable machine code and a human message,
//! answered as `{"error": "<message>", "code": "<code>"}` — or, for the Chronoria routes,
//! whose client reads the code as the whole body, as plain text ([`ApiError::plain`]).
//!
//! Internal causes are logged where they are known and never sent: an answer says what the
//! client can do, not what failed inside.

use std::borrow::Cow;
use std::time::Duration;

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use cairn_events::StoreError;
use serde::Serialize;
use utoipa::ToSchema;

/// Every JSON error: a human message and a stable code.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    #[schema(example = "record not found")]
    pub error: String,
    #[schema(example = "not_found")]
    pub code: String,
}

/// How an error's body is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    /// `{"error", "code"}`.
    Json,
    /// The code alone, as `text/plain` (Chronoria's wire format).
    Plain,
}

/// An answer that is not a success.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: Cow<'static, str>,
    message: Cow<'static, str>,
    retry_after: Option<Duration>,
    format: Format,
}

/// The `Retry-After` value for a wait: whole seconds, rounded up, at least one (a client
/// told "0" would retry at once into the same refusal).
pub fn retry_after(wait: Duration) -> HeaderValue {
    let seconds = (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1);
    HeaderValue::from(seconds)
}

impl ApiError {
    /// An error with any status; prefer the named constructors.
    pub fn new(
        status: StatusCode,
        code: impl Into<Cow<'static, str>>,
        message: impl Into<Cow<'static, str>>,
    ) -> Self {
        ApiError {
            status,
            code: code.into(),
            message: message.into(),
            retry_after: None,
            format: Format::Json,
        }
    }

    /// 400: the request is wrong; `code` says how.
    pub fn bad_request(
        code: impl Into<Cow<'static, str>>,
        message: impl Into<Cow<'static, str>>,
    ) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// 401 with a `WWW-Authenticate: Bearer` challenge: no token, or one that is not
    /// (or no longer) valid.
    pub fn unauthorized() -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", "unauthorized")
    }

    /// 404 in Dunder's words, which its clients may match on.
    pub fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", "record not found")
    }

    /// 409: the request conflicts with the current state.
    pub fn conflict(
        code: impl Into<Cow<'static, str>>,
        message: impl Into<Cow<'static, str>>,
    ) -> Self {
        Self::new(StatusCode::CONFLICT, code, message)
    }

    /// 413: the body is larger than the route takes.
    pub fn too_large(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", message)
    }

    /// 415: the body is not in a format the route takes.
    pub fn unsupported_media_type(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            message,
        )
    }

    /// 422: well-formed, but not acceptable (an idempotency key reused for another request).
    pub fn unprocessable(
        code: impl Into<Cow<'static, str>>,
        message: impl Into<Cow<'static, str>>,
    ) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
    }

    /// 429: the client sent too much; it may try again after `wait`.
    pub fn rate_limited(
        code: impl Into<Cow<'static, str>>,
        message: impl Into<Cow<'static, str>>,
        wait: Duration,
    ) -> Self {
        Self::new(StatusCode::TOO_MANY_REQUESTS, code, message).retry_after(wait)
    }

    /// 503: something Cairn depends on is down or busy; try again in a second unless
    /// [`ApiError::retry_after`] says otherwise.
    pub fn unavailable(
        code: impl Into<Cow<'static, str>>,
        message: impl Into<Cow<'static, str>>,
    ) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, code, message)
    }

    /// 503 for a failed dependency (`what`: "event store", "read store", "blob storage"):
    /// the cause and its chain are logged, the client is told to try again.
    pub fn dependency_failed(
        code: &'static str,
        what: &'static str,
        cause: &(dyn std::error::Error + 'static),
    ) -> Self {
        tracing::error!(error = %cause, cause = ?cause.source(), "{what} failed");
        Self::unavailable(
            code,
            "the service is temporarily unavailable; try again shortly",
        )
    }

    /// 500: a fault of Cairn's own. `message` is logged with the cause and answered
    /// without it.
    pub fn internal(message: &'static str, cause: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "{message}");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }

    /// Chronoria's wire format: `status` with `code` as the whole `text/plain` body.
    pub fn plain(status: StatusCode, code: impl Into<Cow<'static, str>>) -> Self {
        let code = code.into();
        ApiError {
            status,
            message: code.clone(),
            code,
            retry_after: None,
            format: Format::Plain,
        }
    }

    /// The same error in Chronoria's plain-text format, with `code` as the body.
    pub fn into_plain(self, code: impl Into<Cow<'static, str>>) -> Self {
        Self::plain(self.status, code).with_retry_after(self.retry_after)
    }

    /// Tell the client when to try again.
    pub fn retry_after(self, wait: Duration) -> Self {
        self.with_retry_after(Some(wait))
    }

    fn with_retry_after(mut self, wait: Option<Duration>) -> Self {
        if wait.is_some() {
            self.retry_after = wait;
        }
        self
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }

    pub fn code(&self) -> &str {
        &self.code
    }

    pub fn message(&self) -> &str {
        &self.message
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.code)
    }
}

impl std::error::Error for ApiError {}

/// The event store's failures, as every route answers them.
impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Conflict { .. } => ApiError::conflict(
                "conflict",
                "the resource was changed by another request; retry",
            ),
            StoreError::Invalid(message) => ApiError::bad_request("invalid_request", message),
            other => ApiError::dependency_failed("store_unavailable", "event store", &other),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = match self.format {
            Format::Json => (
                self.status,
                Json(ErrorBody {
                    error: self.message.into_owned(),
                    code: self.code.into_owned(),
                }),
            )
                .into_response(),
            Format::Plain => (self.status, self.code.into_owned()).into_response(),
        };
        let headers = response.headers_mut();
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        // Every 429 and 503 says when to come back.
        let wait = match self.retry_after {
            Some(wait) => Some(wait),
            None if self.status == StatusCode::SERVICE_UNAVAILABLE => Some(Duration::from_secs(1)),
            None => None,
        };
        if let Some(wait) = wait {
            headers.insert(header::RETRY_AFTER, retry_after(wait));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_round_up_to_whole_seconds_and_never_zero() {
        assert_eq!(retry_after(Duration::ZERO), "1");
        assert_eq!(retry_after(Duration::from_millis(1)), "1");
        assert_eq!(retry_after(Duration::from_millis(1001)), "2");
        assert_eq!(retry_after(Duration::from_secs(60)), "60");
    }

    #[test]
    fn unavailable_answers_carry_retry_after() {
        let response = ApiError::unavailable("loading", "wait").into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
        let response = ApiError::rate_limited("rate_limited", "slow down", Duration::from_secs(7))
            .into_plain("TOO_MANY_REQUESTS")
            .into_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[header::RETRY_AFTER], "7");
        let response = ApiError::unauthorized().into_response();
        assert_eq!(response.headers()[header::WWW_AUTHENTICATE], "Bearer");
    }
}
