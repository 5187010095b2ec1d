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
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use cairn_events::domain::capsule::{Attachment, MAX_FILE_BYTES, TextLocation};
use multer::{Field, Multipart};

use super::chronoria::{Answer, parse_submission};
use super::files::clean_file_name;
use super::{CapsuleError, CapsuleState, Capsules, Outcome, Refusal, limits};
use crate::blobs::Upload;
use crate::intake::{self, Budget, Busy, Idle, Uploads, drain, early, idle, next_field};
use cairn_http::{ApiError, ClientIp, IdempotencyKey, InvalidIdempotencyKey};

/// What a body may hold besides the file: the other fields (the text is at most 10,000
/// characters, 40,000 bytes) and the part headers.
const FORM_ALLOWANCE: u64 = 256 * 1024;
/// The fields read; others are skipped unread (but counted against the allowance).
const FIELDS: [&str; 13] = [
    "senderemail",
    "sendername",
    "recipientemail",
    "recipientname",
    "sendtime",
    "text",
    "textlocation",
    "filename",
    "formfile",
    "cron",
    "timezone",
    "until",
    "count",
];
/// Uploads at once, in all and from one client address.
const UPLOADS: usize = 32;
const UPLOADS_PER_CLIENT: usize = 4;

/// The upload routes, with their own body limit and idle timeout.
#[derive(Clone)]
pub struct UploadState {
    pub capsules: Capsules,
    /// How long a read of the body may wait for bytes.
    pub idle_timeout: Duration,
    uploads: Arc<Uploads>,
}

impl UploadState {
    pub fn new(capsules: Capsules, idle_timeout: Duration) -> Self {
        UploadState {
            capsules,
            idle_timeout,
            uploads: Arc::new(Uploads::new(UPLOADS, UPLOADS_PER_CLIENT)),
        }
    }
}

/// The upload route, for the OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(submit_file),
    components(schemas(FileCapsule, TextPlace, super::chronoria::Recurring))
)]
pub struct UploadApi;

/// The parts of `POST /api/submit/file` (the OpenAPI document's view: the body is read as a
/// stream, part by part). Names match in any case, parts come in any order, others are
/// ignored.
#[derive(utoipa::ToSchema)]
#[schema(rename_all = "camelCase")]
#[allow(dead_code)]
struct FileCapsule {
    #[schema(format = Email, max_length = 255, example = "ada@example.com")]
    sender_email: String,
    #[schema(min_length = 1, max_length = 255, example = "Ada")]
    sender_name: String,
    #[schema(format = Email, max_length = 255, example = "grace@example.com")]
    recipient_email: String,
    #[schema(min_length = 1, max_length = 255, example = "Grace")]
    recipient_name: String,
    /// When to deliver it, in milliseconds since the Unix epoch, in the future. Required
    /// unless `cron` is given.
    #[schema(format = Int64, example = 1893456000000_i64)]
    send_time: Option<i64>,
    /// At most 10,000 characters; may be empty.
    #[schema(max_length = 10000)]
    text: String,
    text_location: TextPlace,
    /// The file, 1 to 200,000,000 bytes.
    #[schema(rename = "FormFile", value_type = String, format = Binary)]
    form_file: Vec<u8>,
    /// The name the file downloads as (default: the part's own file name).
    #[schema(rename = "FileName", max_length = 255)]
    file_name: Option<String>,
    #[serde(flatten)]
    #[schema(inline)]
    recurring: super::chronoria::Recurring,
}

/// Where the text goes in the delivered email: before or after the download link.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
enum TextPlace {
    Before,
    After,
}

pub fn router(state: UploadState) -> Router {
    Router::new()
        .route("/api/submit/file", post(submit_file))
        .route("/api/submit/file/", post(submit_file))
        .with_state(state)
}

/// Why an upload stopped.
enum Stop {
    Refused(CapsuleError),
    /// The client stopped sending, or sends too slowly.
    Idle,
}

impl From<Idle> for Stop {
    fn from(_: Idle) -> Self {
        Stop::Idle
    }
}

impl From<CapsuleError> for Stop {
    fn from(error: CapsuleError) -> Self {
        Stop::Refused(error)
    }
}

impl From<crate::blobs::BlobError> for Stop {
    fn from(error: crate::blobs::BlobError) -> Self {
        Stop::Refused(error.into())
    }
}

impl From<Refusal> for Stop {
    fn from(refusal: Refusal) -> Self {
        Stop::Refused(refusal.into())
    }
}

/// A malformed body, one past the limit, or headers that never end: the file is what is
/// wrong.
impl From<multer::Error> for Stop {
    fn from(_: multer::Error) -> Self {
        Stop::Refused(Refusal::InvalidFile.into())
    }
}

/// Write a file capsule; a confirmation email goes to the sender.
#[utoipa::path(post, path = "/api/submit/file", tag = "capsules",
    params(("Idempotency-Key" = Option<String>, Header,
        description = "Makes a retry safe: the same key and capsule answer as the first time, and the retry's upload is dropped")),
    request_body(content = FileCapsule, content_type = "multipart/form-data", description = "The fields of `/api/submit/text` (`senderEmail`, `senderName`, `recipientEmail`, `recipientName`, `sendTime`, `text`, which may be empty), `textLocation` (`Before` or `After`: the text before or after the download link), `FormFile` (the file, at most 200,000,000 bytes), `FileName` (the name it downloads as; the part's own file name if missing), and optionally `cron`, `timeZone`, `until` and `count` for a recurring capsule (as in `/api/submit/text`). Names match in any case, in any order; other fields are ignored."),
    responses(
        (status = 200, description = "Submitted; it waits for the sender's confirmation (24 hours)"),
        (status = 400, description = "`INVALID_EMAIL`, `INVALID_NAME`, `INVALID_FUTURE_TIME`, `INVALID_TEXT`, `INVALID_TEXT_LOC`, `INVALID_FILE`, `INVALID_SCHEDULE`, `INVALID_IDEMPOTENCY_KEY` or `BLOCKED_SENDER_EMAIL`", body = String, content_type = "text/plain"),
        (status = 408, description = "`REQUEST_TIMEOUT`: the body stopped arriving, or came slower than 16 KiB/s on average after the first minute", body = String, content_type = "text/plain"),
        (status = 415, description = "`UNSUPPORTED_MEDIA_TYPE`: the body must be `multipart/form-data`", body = String, content_type = "text/plain"),
        (status = 422, description = "`IDEMPOTENCY_KEY_REUSED`: the key was sent before with another capsule", body = String, content_type = "text/plain"),
        (status = 429, description = "`TOO_MANY_REQUESTS`: too many submissions, or uploads at once, from this address or sender; see `Retry-After`", body = String, content_type = "text/plain"),
        (status = 503, description = "`SERVICE_UNAVAILABLE`: too many uploads at once; see `Retry-After`", body = String, content_type = "text/plain"),
    ))]
async fn submit_file(
    State(state): State<UploadState>,
    client: Option<ClientIp>,
    key: Result<IdempotencyKey, InvalidIdempotencyKey>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let boundary = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| multer::parse_boundary(v).ok());
    let Some(boundary) = boundary else {
        return early(
            ApiError::plain(StatusCode::UNSUPPORTED_MEDIA_TYPE, "UNSUPPORTED_MEDIA_TYPE")
                .into_response(),
        );
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|bytes| bytes > MAX_FILE_BYTES + FORM_ALLOWANCE) {
        return refuse_unread(Refusal::InvalidFile);
    }
    let capsules = &state.capsules;
    let key = match key {
        Ok(key) => key,
        Err(invalid) => return early(Answer(Err(invalid.into())).into_response()),
    };
    let capsule_id = capsules.new_id(key.as_deref());
    let first = match capsules.written_before(capsule_id, key.as_deref()).await {
        Ok(first) => first,
        Err(error) => return early(Answer(Err(error)).into_response()),
    };
    // A client over its submission limit is told before it sends 200 MB (a retry of a
    // capsule written before is answered as the first was).
    let client = client.map(|ClientIp(ip)| ip);
    let client_key = client.map(limits::client_key).unwrap_or_default();
    if first.is_none()
        && let Some(wait) = capsules.limits.check_client(&client_key).await
    {
        return early(Answer(Err(CapsuleError::RateLimited(wait))).into_response());
    }
    let _slot = match state.uploads.slot(&client_key) {
        Ok(slot) => slot,
        Err(busy) => {
            let (status, code) = match busy {
                Busy::Client => (StatusCode::TOO_MANY_REQUESTS, "TOO_MANY_REQUESTS"),
                Busy::Server => (StatusCode::SERVICE_UNAVAILABLE, "SERVICE_UNAVAILABLE"),
            };
            let busy = ApiError::plain(status, code).retry_after(Duration::from_secs(5));
            return early(busy.into_response());
        }
    };

    let budget = Arc::new(Budget::new(MAX_FILE_BYTES + FORM_ALLOWANCE));
    let mut multipart = Multipart::new(intake::metered(body, budget.clone()), boundary);
    let mut file: Option<(Upload, Option<String>)> = None;
    let mut fields = HashMap::new();
    let mut form_bytes = 0;
    let received = async {
        while let Some(field) = next_field(&mut multipart, &budget, state.idle_timeout).await?? {
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
                let keep = FIELDS.contains(&name.as_str());
                let value =
                    read_field(field, &name, keep, &mut form_bytes, state.idle_timeout).await?;
                if keep {
                    fields.insert(name, value);
                }
            }
        }
        Ok(())
    }
    .await;
    if let Err(stop) = received {
        // What was written goes before the answer does.
        if let Some((upload, _)) = file.take() {
            upload.abort().await;
        }
        let stop = if budget.too_slow.load(Ordering::Relaxed) {
            Stop::Idle
        } else {
            stop
        };
        return match stop {
            Stop::Refused(error) => {
                drain(&mut multipart, &budget).await;
                Answer(Err(error)).into_response()
            }
            Stop::Idle => {
                ApiError::plain(StatusCode::REQUEST_TIMEOUT, "REQUEST_TIMEOUT").into_response()
            }
        };
    }
    let outcome = submit(capsules, capsule_id, first, fields, file, client).await;
    Answer(outcome).into_response()
}

/// Check the fields, finish the file and submit; a refusal deletes the file.
async fn submit(
    capsules: &Capsules,
    capsule_id: uuid::Uuid,
    first: Option<CapsuleState>,
    fields: HashMap<String, String>,
    file: Option<(Upload, Option<String>)>,
    client: Option<std::net::IpAddr>,
) -> Result<(), CapsuleError> {
    // Chronoria's order: the text's fields, then where the text goes, then the file.
    let new = first.is_none();
    let checked = parse_submission(capsules, &fields, Some(placeholder()), new).and_then(|s| {
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
    let Some((upload, part_name)) = file else {
        return Err(Refusal::InvalidFile.into());
    };
    if upload.bytes() == 0 {
        upload.abort().await;
        return Err(Refusal::InvalidFile.into());
    }
    let named = fields
        .get("filename")
        .filter(|n| !n.trim().is_empty())
        .or(part_name.as_ref());
    let file_name = clean_file_name(named.map_or("", String::as_str));
    let bytes = upload.bytes();
    let blob = upload.finish().await?.blob;
    submission.attachment = Some(Attachment {
        blob: blob.clone(),
        file_name,
        bytes,
        text_location,
    });
    let submitted = capsules
        .submit_as(capsule_id, first.as_ref(), submission, client)
        .await;
    // Refused, or a retry of a capsule written before (which keeps its own file). After a
    // store failure the capsule may have been written all the same: the sweep decides.
    let unkept = match &submitted {
        Ok(outcome) => *outcome == Outcome::Nothing,
        Err(CapsuleError::Store(_) | CapsuleError::Blob(_)) => false,
        Err(_) => true,
    };
    if unkept {
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
    mut field: Field<'static>,
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

/// A field other than the file, as text (or, when `keep` is false, read past); every
/// such field counts against [`FORM_ALLOWANCE`], and one past it is refused by what it is.
async fn read_field(
    mut field: Field<'static>,
    name: &str,
    keep: bool,
    form_bytes: &mut u64,
    idle_timeout: Duration,
) -> Result<String, Stop> {
    let mut bytes = Vec::new();
    while let Some(chunk) = idle(idle_timeout, field.chunk()).await?? {
        *form_bytes += chunk.len() as u64;
        if *form_bytes > FORM_ALLOWANCE {
            return Err(too_large(name).into());
        }
        if keep {
            bytes.extend_from_slice(&chunk);
        }
    }
    String::from_utf8(bytes).map_err(|_| too_large(name).into())
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

/// A refusal decided before reading the body. The connection is closed after it, so the
/// client stops sending rather than the server reading (and dropping) 200 MB.
fn refuse_unread(refusal: Refusal) -> Response {
    early(CapsuleError::from(refusal).plain().into_response())
}
