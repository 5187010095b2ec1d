//! `POST /message`, Dunder-compatible: parse, [`decide`](decide::decide), append, answer
//! once the message can be read back.
//!
//! The body is read as JSON whatever the `Content-Type` says: Dunder's README posts with
//! `curl -d`, which labels the body as a form. With an `Idempotency-Key` header the
//! message's stream is named by the user and the key, so a retry finds the first message
//! instead of posting a second one.

pub mod decide;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use cairn_events::domain::message::{self, MessagePosted, parse_hashtags, validate_text};
use cairn_events::{AppendRequest, DomainEvent, ExpectedVersion, Metadata, NewEvent, StoreError};
use cairn_http::{ApiError, ErrorBody, IdempotencyKey, InvalidIdempotencyKey};
use serde::{Deserialize, Serialize};

use ulid::Ulid;
use utoipa::{OpenApi, ToSchema};
use uuid::Uuid;

use self::decide::{Decision, Refused};
use crate::CommandState;
use crate::auth::AuthUser;

/// Message ids from one process increase strictly, even within a millisecond, so "newest
/// first" and the cursor follow posting order.
fn next_message_id() -> Ulid {
    static GENERATOR: std::sync::Mutex<ulid::Generator> =
        std::sync::Mutex::new(ulid::Generator::new());
    let mut generator = GENERATOR.lock().unwrap_or_else(|p| p.into_inner());
    match generator.generate() {
        Ok(id) => id,
        // 2^80 ids in one millisecond: take the next random one instead.
        Err(overflow) => overflow.commit_overflow_random(),
    }
}

pub fn router() -> axum::Router<CommandState> {
    axum::Router::new().route("/message", post(post_message))
}

/// The body of `POST /message`. It is read as JSON whatever the `Content-Type` says, so
/// `curl -d '{...}'` (form content type) works.
#[derive(Deserialize, ToSchema)]
struct PostMessage {
    /// 1 to 1000 characters.
    #[schema(
        required = true,
        min_length = 1,
        max_length = 1000,
        example = "hello from the terminal #cairn"
    )]
    text: Option<String>,
    /// Up to 30 distinct hashtags, with or without `#`: letters, combining marks, digits and
    /// `_` of any script, up to 64 characters (counted in Unicode NFC).
    #[serde(default)]
    #[schema(max_items = 30, inline, value_type = Option<Vec<HashtagInput>>, example = json!(["cairn", "hello"]))]
    hashtags: Option<Vec<String>>,
}

/// A hashtag as given: 1 to 64 letters, marks, digits or `_`, after an optional `#`.
#[derive(ToSchema)]
#[schema(value_type = String, min_length = 1, max_length = 65, example = "cairn")]
#[allow(dead_code)]
struct HashtagInput(String);

/// `{"data": {"id": ...}}`.
#[derive(Serialize, ToSchema)]
struct Created {
    data: CreatedId,
}

#[derive(Serialize, ToSchema)]
struct CreatedId {
    /// The new message's id (ULID).
    id: String,
}

/// The OpenAPI description of the write routes.
#[derive(OpenApi)]
#[openapi(
    paths(post_message),
    components(schemas(PostMessage, Created, CreatedId, ErrorBody))
)]
pub struct CommandApi;

fn created(id: Ulid) -> Response {
    let mut response = (
        StatusCode::CREATED,
        Json(Created {
            data: CreatedId { id: id.to_string() },
        }),
    )
        .into_response();
    if let Ok(location) = header::HeaderValue::from_str(&format!("/message/{id}")) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
}

/// Post a message.
#[utoipa::path(
    post,
    path = "/message",
    tag = "messages",
    request_body(content = PostMessage, content_type = "application/json"),
    params(("Idempotency-Key" = Option<String>, Header,
        description = "A retried POST with the same key answers as the first did")),
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Posted; readable at `Location`", body = Created,
            headers(("Location" = String, description = "/message/{id}"))),
        (status = 400, description = "Bad JSON, text or hashtags", body = ErrorBody),
        (status = 401, description = "Missing, unknown, revoked or expired token", body = ErrorBody),
        (status = 413, description = "The body is larger than the configured limit", body = ErrorBody),
        (status = 422, description = "Idempotency-Key reused for a different message", body = ErrorBody),
        (status = 503, description = "The event store is unavailable", body = ErrorBody),
    )
)]
async fn post_message(
    State(state): State<CommandState>,
    user: AuthUser,
    key: Result<IdempotencyKey, InvalidIdempotencyKey>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(|e| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::too_large("the request body is too large"),
        _ => ApiError::bad_request("invalid_body", e.body_text()),
    })?;
    let input: PostMessage = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(
            "invalid_json",
            format!("the body must be a JSON object: {e}"),
        )
    })?;
    let text = input
        .text
        .ok_or_else(|| ApiError::bad_request("invalid_text", "text is required"))?;
    validate_text(&text).map_err(|e| ApiError::bad_request("invalid_text", e))?;
    let hashtags = parse_hashtags(&input.hashtags.unwrap_or_default())
        .map_err(|e| ApiError::bad_request("invalid_hashtags", e))?;
    let key = key?;

    let posted = MessagePosted {
        message_id: next_message_id(),
        user_id: user.id,
        user_name: user.name.clone(),
        text,
        hashtags,
    };
    let occurred_at =
        chrono::DateTime::from_timestamp_millis(posted.message_id.timestamp_ms() as i64)
            .unwrap_or_else(chrono::Utc::now);
    let metadata = Metadata {
        actor: Some(user.id.to_string()),
        correlation_id: Some(Uuid::now_v7()),
        causation_id: None,
    };
    // The stream is taken to be new and is not read first: the append's `NoStream` check
    // finds one written before (a retry with the same key), and only then is it read and
    // the post decided again.
    let stream = message::stream_id(posted.message_id, user.id, key.as_deref());
    let mut first: Option<MessagePosted> = None;
    loop {
        let id = match decide::decide(first.as_ref(), &posted) {
            Ok(Decision::Repeat(id)) => return Ok(created(id)),
            Ok(Decision::Post) => posted.message_id,
            Err(refused @ Refused::KeyReused) => {
                return Err(ApiError::unprocessable(
                    "idempotency_key_reused",
                    refused.to_string(),
                ));
            }
        };
        let request = AppendRequest::new(
            stream.clone(),
            ExpectedVersion::NoStream,
            vec![NewEvent::at(&posted, metadata.clone(), occurred_at)],
        );
        match state.events.append(request).await {
            Ok(appended) => {
                // Answer once the message can be read back, within a bound: the write is
                // durable either way.
                let visible = state
                    .read_your_writes
                    .wait_for(appended.last_position, state.read_your_writes_timeout)
                    .await;
                if !visible {
                    tracing::warn!(
                        position = appended.last_position,
                        "answering before the read model caught up"
                    );
                }
                return Ok(created(id));
            }
            Err(StoreError::Conflict { .. }) if key.0.is_some() && first.is_none() => {
                let written = state.events.read_stream(&stream).await?;
                let message = written
                    .first()
                    .and_then(|e| MessagePosted::decode(e).ok())
                    .ok_or_else(|| ApiError::from(StoreError::Corrupt(stream.clone())))?;
                first = Some(message);
            }
            Err(e) => return Err(e.into()),
        }
    }
}
