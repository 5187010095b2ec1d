//! `POST /api/submit/file`: a Chronoria file capsule, as `multipart/form-data`.
//!
//! The file part (`FormFile`) is streamed into blob storage as it arrives, whatever order
//! the parts come in (a form may put its fields after the file); the other fields are
//! read into memory, each small. Field names match in any case. A body whose
//! `Content-Length` leaves no doubt that the file is too large is refused before any of it
//! is read; otherwise the upload stops at the first byte past the limit. A refused or
//! abandoned upload deletes what it wrote.
//!
//! These routes are not under the server's request time limit (a 200 MB upload takes
//! its time): instead each read of the body must make progress within the idle timeout.

use std::collections::HashMap;
use std::time::Duration;

use axum::Extension;
use axum::Router;
use axum::extract::multipart::{Field, MultipartError};
use axum::extract::{DefaultBodyLimit, Multipart, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use cairn_events::domain::capsule::{Attachment, MAX_FILE_BYTES, Refusal, TextLocation};

use super::chronoria::{Answer, parse_submission};
use super::files::{Upload, clean_file_name};
use super::{CapsuleError, Capsules};
use crate::ClientIp;

/// What a body may hold besides the file: the other fields (the text is at most 10,000
/// characters, 40,000 bytes) and the part headers.
const FORM_ALLOWANCE: u64 = 256 * 1024;
/// Largest field other than the file, in bytes.
const MAX_FIELD_BYTES: usize = 64 * 1024;

/// The upload routes, with their own body limit and idle timeout.
#[derive(Clone)]
pub struct UploadState {
    pub capsules: Capsules,
    /// How long a read of the body may wait for bytes.
    pub idle_timeout: Duration,
}

/// The upload route, for the OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(paths(submit_file))]
pub struct UploadApi;

pub fn router(state: UploadState) -> Router {
    let limit = usize::try_from(MAX_FILE_BYTES + FORM_ALLOWANCE).unwrap_or(usize::MAX);
    Router::new()
        .route("/api/submit/file", post(submit_file))
        .route("/api/submit/file/", post(submit_file))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

/// Why an upload stopped.
enum Stop {
    Refused(CapsuleError),
    /// The client stopped sending.
    Idle,
}

impl From<CapsuleError> for Stop {
    fn from(error: CapsuleError) -> Self {
        Stop::Refused(error)
    }
}

impl From<Refusal> for Stop {
    fn from(refusal: Refusal) -> Self {
        Stop::Refused(refusal.into())
    }
}

/// A malformed body or one past the limit: the file is what is wrong.
impl From<MultipartError> for Stop {
    fn from(_: MultipartError) -> Self {
        Stop::Refused(Refusal::InvalidFile.into())
    }
}

/// Write a file capsule; a confirmation email goes to the sender.
#[utoipa::path(post, path = "/api/submit/file", tag = "capsules",
    params(("Idempotency-Key" = Option<String>, Header,
        description = "Makes a retry safe: the same key and capsule answer as the first time, and the retry's upload is dropped")),
    request_body(content_type = "multipart/form-data", description = "The fields of `/api/submit/text` (`senderEmail`, `senderName`, `recipientEmail`, `recipientName`, `sendTime`, `text`, which may be empty), `textLocation` (`Before` or `After`: the text before or after the download link), `FormFile` (the file, at most 200,000,000 bytes) and `FileName` (the name it downloads as; the part's own file name if missing). Names match in any case, in any order."),
    responses(
        (status = 200, description = "Submitted; it waits for the sender's confirmation (24 hours)"),
        (status = 400, description = "`INVALID_EMAIL`, `INVALID_NAME`, `INVALID_FUTURE_TIME`, `INVALID_TEXT`, `INVALID_TEXT_LOC`, `INVALID_FILE` or `BLOCKED_SENDER_EMAIL`", body = String, content_type = "text/plain"),
        (status = 408, description = "`REQUEST_TIMEOUT`: the body stopped arriving", body = String, content_type = "text/plain"),
        (status = 415, description = "`UNSUPPORTED_MEDIA_TYPE`: the body must be `multipart/form-data`", body = String, content_type = "text/plain"),
        (status = 422, description = "`IDEMPOTENCY_KEY_REUSED`: the key was sent before with another capsule", body = String, content_type = "text/plain"),
        (status = 429, description = "`TOO_MANY_REQUESTS`: see `Retry-After`", body = String, content_type = "text/plain"),
    ))]
async fn submit_file(
    State(state): State<UploadState>,
    client: Option<Extension<ClientIp>>,
    headers: HeaderMap,
    multipart: Result<Multipart, axum::extract::multipart::MultipartRejection>,
) -> Response {
    let Ok(mut multipart) = multipart else {
        return (StatusCode::UNSUPPORTED_MEDIA_TYPE, "UNSUPPORTED_MEDIA_TYPE").into_response();
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|bytes| bytes > MAX_FILE_BYTES + FORM_ALLOWANCE) {
        return refuse_unread(Refusal::InvalidFile);
    }
    let capsules = &state.capsules;
    let key = match super::idempotency_key(&headers) {
        Ok(key) => key,
        Err(error) => return Answer(Err(error)).into_response(),
    };
    let capsule_id = capsules.new_id(key.as_deref());
    let mut file: Option<(Upload, Option<String>)> = None;
    let mut fields = HashMap::new();
    let received = async {
        while let Some(field) = idle(state.idle_timeout, multipart.next_field()).await?? {
            let name = field.name().unwrap_or_default().to_ascii_lowercase();
            if name == "formfile" {
                if file.is_some() {
                    return Err(Stop::from(Refusal::InvalidFile));
                }
                let part_name = field.file_name().map(str::to_owned);
                let mut upload = capsules.files.upload(capsule_id).await?;
                let streamed = receive_file(field, &mut upload, state.idle_timeout).await;
                file = Some((upload, part_name));
                streamed?;
            } else {
                let value = read_field(field, state.idle_timeout).await?;
                fields.insert(name, value);
            }
        }
        Ok(())
    }
    .await;
    match received {
        Ok(()) => {}
        Err(Stop::Refused(error)) => {
            drain(&mut multipart).await;
            return Answer(Err(error)).into_response();
        }
        Err(Stop::Idle) => {
            return (StatusCode::REQUEST_TIMEOUT, "REQUEST_TIMEOUT").into_response();
        }
    }
    let client = client.map(|Extension(ClientIp(ip))| ip);
    let outcome = submit(capsules, capsule_id, fields, file, client).await;
    Answer(outcome).into_response()
}

/// Check the fields, finish the file and submit; a refusal deletes the file.
async fn submit(
    capsules: &Capsules,
    capsule_id: uuid::Uuid,
    fields: HashMap<String, String>,
    file: Option<(Upload, Option<String>)>,
    client: Option<std::net::IpAddr>,
) -> Result<(), CapsuleError> {
    // Chronoria's order: the text's fields, then where the text goes, then the file.
    let checked = parse_submission(capsules, &fields, Some(placeholder())).and_then(|s| {
        let location = fields.get("textlocation").map_or("", String::as_str);
        Ok((s, TextLocation::parse(location)?))
    });
    let (mut submission, text_location) = match checked {
        Ok(checked) => checked,
        Err(e) => {
            if let Some((upload, _)) = file {
                upload.abort().await;
            }
            return Err(e);
        }
    };
    let Some((upload, part_name)) = file.filter(|(upload, _)| upload.bytes() > 0) else {
        return Err(Refusal::InvalidFile.into());
    };
    let named = fields
        .get("filename")
        .filter(|n| !n.trim().is_empty())
        .or(part_name.as_ref());
    let file_name = clean_file_name(named.map_or("", String::as_str));
    let bytes = upload.bytes();
    let blob = upload.finish().await?;
    submission.attachment = Some(Attachment {
        blob: blob.clone(),
        file_name,
        bytes,
        text_location,
    });
    let submitted = capsules.submit_as(capsule_id, submission, client).await;
    // Refused, or a retry of a capsule written before (which keeps its own file).
    if !matches!(submitted, Ok(true)) {
        capsules.files.delete_quietly(&blob).await;
    }
    submitted.map(|_| ())
}

/// An attachment standing in for the file while the text is checked (a file capsule's
/// text may be empty).
fn placeholder() -> Attachment {
    Attachment {
        blob: String::new(),
        file_name: String::new(),
        bytes: 0,
        text_location: TextLocation::After,
    }
}

/// Stream the file part into `upload`, refusing it past the limit.
async fn receive_file(
    mut field: Field<'_>,
    upload: &mut Upload,
    idle_timeout: Duration,
) -> Result<(), Stop> {
    while let Some(chunk) = idle(idle_timeout, field.chunk()).await?? {
        if upload.bytes() + chunk.len() as u64 > MAX_FILE_BYTES {
            return Err(Refusal::InvalidFile.into());
        }
        upload.write(&chunk).await?;
    }
    Ok(())
}

/// A field other than the file, as text; a large one is refused by what it is.
async fn read_field(mut field: Field<'_>, idle_timeout: Duration) -> Result<String, Stop> {
    let name = field.name().unwrap_or_default().to_ascii_lowercase();
    let mut bytes = Vec::new();
    while let Some(chunk) = idle(idle_timeout, field.chunk()).await?? {
        bytes.extend_from_slice(&chunk);
        if bytes.len() > MAX_FIELD_BYTES {
            return Err(too_large(&name).into());
        }
    }
    String::from_utf8(bytes).map_err(|_| too_large(&name).into())
}

/// The refusal for an unreadable field.
fn too_large(name: &str) -> Refusal {
    match name {
        "senderemail" | "recipientemail" => Refusal::InvalidEmail,
        "sendername" | "recipientname" => Refusal::InvalidName,
        "sendtime" => Refusal::InvalidFutureTime,
        "textlocation" => Refusal::InvalidTextLoc,
        "filename" => Refusal::InvalidFile,
        _ => Refusal::InvalidText,
    }
}

/// Read a little of what is left of a refused body, so that a client that sent slightly
/// too much reads the refusal instead of a reset connection. Bounded in bytes and time.
async fn drain(multipart: &mut Multipart) {
    const DRAIN_BYTES: usize = 1024 * 1024;
    let mut drained = 0;
    let read = async {
        while let Ok(Some(mut field)) = multipart.next_field().await {
            while let Ok(Some(chunk)) = field.chunk().await {
                drained += chunk.len();
                if drained > DRAIN_BYTES {
                    return;
                }
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), read).await;
}

/// Wait for a read of the body, at most `timeout`.
async fn idle<T>(
    timeout: Duration,
    read: impl Future<Output = Result<T, MultipartError>>,
) -> Result<Result<T, MultipartError>, Stop> {
    tokio::time::timeout(timeout, read)
        .await
        .map_err(|_| Stop::Idle)
}

/// A refusal decided before reading the body. The connection is closed after it, so the
/// client stops sending rather than the server reading (and dropping) 200 MB.
fn refuse_unread(refusal: Refusal) -> Response {
    (
        StatusCode::BAD_REQUEST,
        [(header::CONNECTION, "close")],
        refusal.code(),
    )
        .into_response()
}
