//! Capsules in Cairn's own JSON conventions, for scripts: `POST /capsules` to submit and
//! `GET /capsules/{id}` for the status view reachable through the emailed links. Errors
//! are `{"error": …, "code": …}` with the right status.
//!
//! A submission does not answer the capsule's id: the id is what confirms, and only the
//! sender's mailbox may learn it, or anyone could schedule email to any address.

use std::net::IpAddr;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use cairn_events::domain::capsule::{self, EmailAddress, Party, PersonName, Refusal, Status};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{OpenApi, ToSchema};

use super::{CONFIRM_WITHIN, CapsuleError, Capsules, Submission};
use crate::ClientIp;

pub fn router() -> Router<Capsules> {
    Router::new()
        .route("/capsules", post(submit))
        .route("/capsules/{id}", get(status))
}

/// The JSON API's routes, for the OpenAPI document.
#[derive(OpenApi)]
#[openapi(
    paths(submit, status),
    components(schemas(NewCapsule, PartyInput, Submitted, CapsuleView, PartyView, JsonError))
)]
pub struct CapsuleApi;

#[derive(Deserialize, ToSchema)]
struct PartyInput {
    #[schema(example = "ada@example.com")]
    email: String,
    #[schema(example = "Ada")]
    name: String,
}

/// A text capsule.
#[derive(Deserialize, ToSchema)]
struct NewCapsule {
    sender: PartyInput,
    recipient: PartyInput,
    /// When to deliver it (RFC 3339).
    #[schema(example = "2030-01-01T09:00:00Z")]
    send_at: String,
    /// 1 to 10,000 characters.
    text: String,
}

#[derive(Serialize, ToSchema)]
struct Submitted {
    data: SubmittedData,
}

#[derive(Serialize, ToSchema)]
struct SubmittedData {
    /// `pending`: waiting for the confirmation link emailed to the sender.
    #[schema(value_type = String, example = "pending")]
    status: Status,
    /// When the capsule expires unless confirmed (RFC 3339).
    confirm_by: String,
}

#[derive(Serialize, ToSchema)]
struct PartyView {
    name: String,
}

#[derive(Serialize, ToSchema)]
struct CapsuleView {
    data: CapsuleData,
}

#[derive(Serialize, ToSchema)]
struct CapsuleData {
    id: String,
    /// `pending`, `active`, `released`, `cancelled` or `expired`.
    #[schema(value_type = String, example = "active")]
    status: Status,
    /// Since when it has had that status (RFC 3339).
    status_since: String,
    sender: PartyView,
    recipient: PartyView,
    submitted_at: String,
    send_at: String,
    has_file: bool,
}

/// An error: a human message and a stable code.
#[derive(Serialize, ToSchema)]
struct JsonError {
    error: String,
    code: String,
}

fn stamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// A JSON answer for a refusal or failure.
fn failure(error: CapsuleError) -> Response {
    let (status, code, message) = match &error {
        CapsuleError::Refused(refusal) => (
            StatusCode::BAD_REQUEST,
            refusal.code().to_ascii_lowercase(),
            match refusal {
                Refusal::InvalidEmail => "an email address is missing or not valid",
                Refusal::InvalidName => "a name must be 1 to 255 characters",
                Refusal::InvalidFutureTime => "send_at must be an RFC 3339 time in the future",
                Refusal::InvalidText => "text must be 1 to 10,000 characters",
                Refusal::InvalidId => "that is not a capsule id",
                Refusal::InvalidFile | Refusal::InvalidTextLoc => "the file is not acceptable",
            }
            .to_owned(),
        ),
        CapsuleError::BlockedSender => (
            StatusCode::BAD_REQUEST,
            "blocked_sender".into(),
            "capsules from this sender are refused".into(),
        ),
        CapsuleError::RateLimited(_) => (
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited".into(),
            "too many capsules from this address or sender; try again later".into(),
        ),
        CapsuleError::NotPending | CapsuleError::NotCancellable | CapsuleError::NoFile => (
            StatusCode::NOT_FOUND,
            "not_found".into(),
            "record not found".into(),
        ),
        CapsuleError::Store(e) => {
            tracing::error!(error = %e, "capsule request failed on the event store");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable".into(),
                "the service is temporarily unavailable; try again shortly".into(),
            )
        }
        CapsuleError::KeyReused => (
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency_key_reused".into(),
            "this Idempotency-Key was used for a different capsule".into(),
        ),
        CapsuleError::InvalidKey => (
            StatusCode::BAD_REQUEST,
            "invalid_idempotency_key".into(),
            "Idempotency-Key must be 1-255 visible ASCII characters".into(),
        ),
        CapsuleError::Blob(e) => {
            tracing::error!(error = %e, "capsule request failed on blob storage");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "blobs_unavailable".into(),
                "the service is temporarily unavailable; try again shortly".into(),
            )
        }
        CapsuleError::Template(e) => {
            tracing::error!(error = %e, "capsule email could not be rendered");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal".into(),
                "the capsule could not be written".into(),
            )
        }
    };
    let mut response = (
        status,
        Json(JsonError {
            error: message,
            code,
        }),
    )
        .into_response();
    if let CapsuleError::RateLimited(wait) = error {
        let seconds = (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1);
        if let Ok(value) = header::HeaderValue::from_str(&seconds.to_string()) {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
    }
    if status == StatusCode::SERVICE_UNAVAILABLE {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    }
    response
}

/// Submit a text capsule; the sender gets an email to confirm it.
#[utoipa::path(post, path = "/capsules", tag = "capsules",
    params(("Idempotency-Key" = Option<String>, Header,
        description = "Makes a retry safe: the same key and capsule answer as the first time and write nothing more")),
    request_body(content = NewCapsule, content_type = "application/json"),
    responses(
        (status = 202, description = "Written; waiting for the sender's confirmation", body = Submitted),
        (status = 400, description = "Bad JSON, address, name, time or text; a blocked sender", body = JsonError),
        (status = 415, description = "The body was not sent as `application/json`", body = JsonError),
        (status = 422, description = "`idempotency_key_reused`: the key was sent before with another capsule", body = JsonError),
        (status = 429, description = "Too many submissions; see `Retry-After`", body = JsonError),
        (status = 503, description = "The event store is unavailable", body = JsonError),
    ))]
async fn submit(
    State(capsules): State<Capsules>,
    client: Option<Extension<ClientIp>>,
    headers: axum::http::HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    if !super::chronoria::is_json(&headers) {
        return (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Json(JsonError {
                error: "send the capsule as application/json".into(),
                code: "unsupported_media_type".into(),
            }),
        )
            .into_response();
    }
    let bad = |code: &str, error: String| {
        (
            StatusCode::BAD_REQUEST,
            Json(JsonError {
                error,
                code: code.into(),
            }),
        )
            .into_response()
    };
    let Ok(body) = body else {
        return bad("invalid_body", "the body could not be read".into());
    };
    let input: NewCapsule = match serde_json::from_slice(&body) {
        Ok(input) => input,
        Err(e) => {
            return bad(
                "invalid_json",
                format!("the body must be a capsule as JSON: {e}"),
            );
        }
    };
    let client: Option<IpAddr> = client.map(|Extension(ClientIp(ip))| ip);
    let outcome = async {
        let key = super::idempotency_key(&headers)?;
        let party = |p: &PartyInput| -> Result<Party, Refusal> {
            Ok(Party {
                email: EmailAddress::parse(&p.email)?,
                name: PersonName::parse(&p.name)?,
            })
        };
        let sender = party(&input.sender)?;
        let recipient = party(&input.recipient)?;
        let send_at = DateTime::parse_from_rfc3339(&input.send_at)
            .map_err(|_| Refusal::InvalidFutureTime)?
            .with_timezone(&Utc);
        let submission = Submission {
            sender,
            recipient,
            send_at,
            text: input.text,
            attachment: None,
        };
        let id = capsules.new_id(key.as_deref());
        let first = capsules.written_before(id, key.as_deref()).await?;
        capsules
            .submit_as(id, first.as_ref(), submission, client)
            .await
    }
    .await;
    match outcome {
        Ok(_) => (
            StatusCode::ACCEPTED,
            Json(Submitted {
                data: SubmittedData {
                    status: Status::Pending,
                    confirm_by: stamp(Utc::now() + CONFIRM_WITHIN),
                },
            }),
        )
            .into_response(),
        Err(error) => failure(error),
    }
}

/// A capsule's status, for whoever has its id (from its emails). Addresses and the text
/// are not shown.
#[utoipa::path(get, path = "/capsules/{id}", tag = "capsules",
    params(("id" = String, Path, description = "The capsule's id, from its emails")),
    responses(
        (status = 200, description = "The capsule's status", body = CapsuleView),
        (status = 400, description = "Not a capsule id", body = JsonError),
        (status = 404, description = "No such capsule", body = JsonError),
    ))]
async fn status(
    State(capsules): State<Capsules>,
    id: Result<Path<String>, PathRejection>,
) -> Response {
    let outcome = async {
        let Path(raw) = id.map_err(|_| Refusal::InvalidId)?;
        let id = capsule::parse_id(&raw)?;
        let state = capsules.load(id).await?.ok_or(CapsuleError::NotPending)?;
        Ok::<_, CapsuleError>((id, state))
    }
    .await;
    match outcome {
        Ok((id, state)) => Json(CapsuleView {
            data: CapsuleData {
                id: id.to_string(),
                status: state.status,
                status_since: stamp(state.since),
                sender: PartyView {
                    name: state.submitted.sender.name.as_str().to_owned(),
                },
                recipient: PartyView {
                    name: state.submitted.recipient.name.as_str().to_owned(),
                },
                submitted_at: stamp(state.submitted_at),
                send_at: stamp(state.submitted.send_at),
                has_file: state.submitted.attachment.is_some(),
            },
        })
        .into_response(),
        Err(error) => failure(error),
    }
}
