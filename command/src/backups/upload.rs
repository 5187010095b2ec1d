//! The Dome-compatible upload: `POST /{resource}`, or `POST /` with the resource's id as
//! the first label of the host name (`https://{resource}.backups.example/`, for a wildcard
//! DNS entry as Dome had), `multipart/form-data` with the file in `backup` and, optionally,
//! its `format` (inferred from the file's name and first bytes when absent). With the
//! service's auth on, `Authorization: <anything> <key>` or Dome's `Bearer-<key>`.
//!
//! Checks and answers go in Dome's order, in the bodies its scripts read (Duran's):
//! unknown resource 404, bad key 401, inactive resource 400, address not allowed 403 (all
//! `{"message"}`), a form that is not right 400 (`{"errors": [{"value", "msg", "param",
//! "location"}]}`), storage failing 424, a file over the service's limit 413, and
//! `201 {"backup": {…}, "message": "backup created successfully"}`.
//!
//! The file streams into the blob store with its SHA-256 computed on the way; an upload
//! cut off, refused or failed deletes what it wrote, and a backup is recorded only once
//! its file is whole (see [`super::Backups::store`]).

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use cairn_http::ClientIp;
use chrono::SecondsFormat;
use multer::{Field, Multipart};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use super::{Admitted, BackupError, Backups, Turned, decide};
use crate::blobs::Upload;
use crate::capsules::files::clean_file_name;
use crate::intake::{self, Budget, Busy, Idle, Uploads, drain, early, idle, next_field};

/// What a body may hold besides the file: the `format` field and the part headers.
const FORM_ALLOWANCE: u64 = 64 * 1024;
/// How much of the file's start is kept to infer its format.
const HEAD_BYTES: usize = 512;

/// The upload routes' state: the use cases, the idle timeout, and the uploads running.
#[derive(Clone)]
pub struct UploadState {
    pub backups: Backups,
    pub idle_timeout: Duration,
    uploads: Arc<Uploads>,
}

impl UploadState {
    /// At most `at_once` uploads in all, `per_client` from one address.
    pub fn new(
        backups: Backups,
        idle_timeout: Duration,
        at_once: usize,
        per_client: usize,
    ) -> Self {
        UploadState {
            backups,
            idle_timeout,
            uploads: Arc::new(Uploads::new(at_once, per_client)),
        }
    }
}

pub fn router(state: UploadState) -> Router {
    Router::new()
        .route("/", post(upload_by_host))
        .route("/{resource}", post(upload_to).fallback(no_route))
        .with_state(state)
}

/// The upload routes, for the OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(upload_to),
    components(schemas(
        BackupForm,
        BackupCreated,
        CreatedBackup,
        DuranMessage,
        DuranErrors,
        DuranFieldError,
        BadUpload
    ))
)]
pub struct BackupUploadApi;

/// The form of an upload.
#[derive(ToSchema)]
#[allow(dead_code)]
struct BackupForm {
    /// The file.
    #[schema(value_type = String, format = Binary)]
    backup: Vec<u8>,
    /// What the file is (`json`, `tar.gz`, …): 1 to 20 of `a-z 0-9 . + -`. Inferred from
    /// the file's name and first bytes when absent.
    #[schema(max_length = 20, example = "json")]
    format: Option<String>,
}

/// The answer to a stored backup (Dome's).
#[derive(Serialize, ToSchema)]
struct BackupCreated {
    backup: CreatedBackup,
    #[schema(example = "backup created successfully")]
    message: &'static str,
}

#[derive(Serialize, ToSchema)]
struct CreatedBackup {
    /// The backup's id.
    uuid: String,
    /// The resource's id.
    resource: String,
    /// A signed link to the file, working for a while without a token.
    url: String,
    format: String,
    #[schema(format = DateTime)]
    created_at: String,
    #[schema(format = DateTime)]
    updated_at: String,
}

/// A refusal, in Duran's words.
#[derive(Serialize, ToSchema)]
struct DuranMessage {
    #[schema(example = "valid api key is needed")]
    message: String,
}

/// A form that is not right, as express-validator words it.
#[derive(Serialize, ToSchema)]
struct DuranErrors {
    errors: Vec<DuranFieldError>,
}

#[derive(Serialize, ToSchema)]
struct DuranFieldError {
    value: String,
    msg: String,
    param: &'static str,
    location: &'static str,
}

/// A 400: an inactive resource, or a form that is not right.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
#[allow(dead_code)]
enum BadUpload {
    DuranMessage(DuranMessage),
    DuranErrors(DuranErrors),
}

fn message(status: StatusCode, text: impl Into<String>) -> Response {
    (
        status,
        axum::Json(DuranMessage {
            message: text.into(),
        }),
    )
        .into_response()
}

fn form_error(param: &'static str, value: &str, msg: impl Into<String>) -> Response {
    let errors = DuranErrors {
        errors: vec![DuranFieldError {
            value: value.chars().take(100).collect(),
            msg: msg.into(),
            param,
            location: "body",
        }],
    };
    (StatusCode::BAD_REQUEST, axum::Json(errors)).into_response()
}

fn not_found(resource: &str) -> Response {
    message(
        StatusCode::NOT_FOUND,
        format!(
            "resource with uuid {} does not exist",
            resource.chars().take(64).collect::<String>()
        ),
    )
}

fn storage_failed() -> Response {
    message(
        StatusCode::FAILED_DEPENDENCY,
        "there was a problem completing the request",
    )
}

/// Other methods on a resource's URL: no such route.
async fn no_route() -> Response {
    cairn_http::ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route").into_response()
}

/// Post a backup to a resource.
#[utoipa::path(post, path = "/{resource}", tag = "backups",
    params(
        ("resource" = String, Path, pattern = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$", description = "The resource's id (also accepted as the first label of the host name, with `POST /`)"),
        ("Authorization" = Option<String>, Header, description = "With the service's auth on: `<anything> <key>`, or `Bearer-<key>`"),
    ),
    request_body(content = BackupForm, content_type = "multipart/form-data"),
    responses(
        (status = 201, description = "Stored", body = BackupCreated),
        (status = 400, description = "The resource is not active (`{\"message\"}`), or the form is not right (`{\"errors\"}`)", body = BadUpload),
        (status = 401, description = "A valid API key is needed", body = DuranMessage),
        (status = 403, description = "Uploads from this address are not allowed", body = DuranMessage),
        (status = 404, description = "No such resource", body = DuranMessage),
        (status = 408, description = "The body stopped arriving, or came slower than 16 KiB/s on average after the first minute", body = DuranMessage),
        (status = 413, description = "The file is larger than the service takes", body = DuranMessage),
        (status = 424, description = "The file could not be stored", body = DuranMessage),
        (status = 429, description = "Too many uploads at once from this address; see `Retry-After`", body = DuranMessage),
        (status = 503, description = "Too many uploads at once, or the service is unavailable; see `Retry-After`", body = DuranMessage),
    ))]
async fn upload_to(
    State(state): State<UploadState>,
    Path(resource): Path<String>,
    client: Option<ClientIp>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match Uuid::parse_str(resource.trim()) {
        Ok(id) => upload(&state, id, client.map(|ClientIp(ip)| ip), &headers, body).await,
        Err(_) => early(not_found(&resource)),
    }
}

/// `POST /` on `{resource}.host`: the resource from the host name's first label.
async fn upload_by_host(
    State(state): State<UploadState>,
    client: Option<ClientIp>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let label = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.split('.').next())
        .unwrap_or_default()
        .to_owned();
    match Uuid::parse_str(&label) {
        Ok(id) => upload(&state, id, client.map(|ClientIp(ip)| ip), &headers, body).await,
        Err(_) => early(not_found(&label)),
    }
}

/// Why a body stopped being read.
enum Stop {
    /// The form is not right: which field, what it held, why.
    Form(&'static str, String, String),
    TooLarge,
    Storage,
    Idle,
}

impl From<Idle> for Stop {
    fn from(_: Idle) -> Self {
        Stop::Idle
    }
}

impl From<multer::Error> for Stop {
    fn from(_: multer::Error) -> Self {
        Stop::Form(
            "backup",
            String::new(),
            "the body must be multipart/form-data with the file in backup".into(),
        )
    }
}

impl From<crate::blobs::BlobError> for Stop {
    fn from(error: crate::blobs::BlobError) -> Self {
        tracing::error!(%error, "a backup could not be written to blob storage");
        Stop::Storage
    }
}

async fn upload(
    state: &UploadState,
    resource_id: Uuid,
    client: Option<IpAddr>,
    headers: &HeaderMap,
    body: Body,
) -> Response {
    let backups = &state.backups;
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let admitted = match backups.admit(resource_id, authorization, client).await {
        Ok(Ok(admitted)) => admitted,
        Ok(Err(turned)) => return early(turned_away(resource_id, turned)),
        Err(error) => return early(unavailable(error)),
    };
    let limit = admitted.service.settings.max_backup_bytes;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|bytes| bytes > limit.saturating_add(FORM_ALLOWANCE)) {
        return early(too_large(limit));
    }
    let boundary = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| multer::parse_boundary(v).ok());
    let Some(boundary) = boundary else {
        return early(form_error(
            "backup",
            "",
            "the body must be multipart/form-data with the file in backup",
        ));
    };
    let client_key = client.map(|ip| ip.to_string()).unwrap_or_default();
    let _slot = match state.uploads.slot(&client_key) {
        Ok(slot) => slot,
        Err(busy) => {
            let (status, text) = match busy {
                Busy::Client => (
                    StatusCode::TOO_MANY_REQUESTS,
                    "too many uploads at once from this address",
                ),
                Busy::Server => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "too many uploads at once; try again shortly",
                ),
            };
            let mut response = message(status, text);
            response.headers_mut().insert(
                header::RETRY_AFTER,
                cairn_http::retry_after(Duration::from_secs(5)),
            );
            return early(response);
        }
    };

    let budget = Arc::new(Budget::new(limit.saturating_add(FORM_ALLOWANCE)));
    let mut multipart = Multipart::new(intake::metered(body, budget.clone()), boundary);
    let mut file: Option<Received> = None;
    let mut format: Option<String> = None;
    let mut form_bytes = 0;
    let received = async {
        while let Some(field) = next_field(&mut multipart, &budget, state.idle_timeout).await?? {
            match field.name().unwrap_or_default() {
                "backup" if file.is_none() => {
                    let name = field.file_name().map(str::to_owned).unwrap_or_default();
                    let blob = Backups::new_blob(admitted.service.service_id);
                    let mut received = Received {
                        upload: backups.blobs.upload(blob).await?,
                        name,
                        head: Vec::new(),
                    };
                    let streamed = receive(field, &mut received, limit, state.idle_timeout).await;
                    file = Some(received);
                    streamed?;
                }
                "backup" => {
                    return Err(Stop::Form(
                        "backup",
                        String::new(),
                        "send one file in backup".into(),
                    ));
                }
                "format" => {
                    format = Some(read_text(field, &mut form_bytes, state.idle_timeout).await?);
                }
                _ => {
                    read_text(field, &mut form_bytes, state.idle_timeout).await?;
                }
            }
        }
        Ok(())
    }
    .await;
    if let Err(stop) = received {
        if let Some(received) = file.take() {
            received.upload.abort().await;
        }
        let stop = if budget.too_slow.load(Ordering::Relaxed) {
            Stop::Idle
        } else {
            stop
        };
        return match stop {
            Stop::Idle => message(
                StatusCode::REQUEST_TIMEOUT,
                "the request body stopped arriving",
            ),
            Stop::Storage => storage_failed(),
            Stop::TooLarge => {
                drain(&mut multipart, &budget).await;
                early(too_large(limit))
            }
            Stop::Form(param, value, msg) => {
                drain(&mut multipart, &budget).await;
                form_error(param, &value, msg)
            }
        };
    }
    store(backups, &admitted, file, format).await
}

/// The file part as it arrives.
struct Received {
    upload: Upload,
    /// The name the client gave the part.
    name: String,
    /// Its first bytes.
    head: Vec<u8>,
}

/// Stream the file part into the blob store, refusing it past `limit`.
async fn receive(
    mut field: Field<'static>,
    received: &mut Received,
    limit: u64,
    idle_timeout: Duration,
) -> Result<(), Stop> {
    while let Some(chunk) = idle(idle_timeout, field.chunk()).await?? {
        if received.upload.bytes() + chunk.len() as u64 > limit {
            return Err(Stop::TooLarge);
        }
        if received.head.len() < HEAD_BYTES {
            let take = (HEAD_BYTES - received.head.len()).min(chunk.len());
            received.head.extend_from_slice(&chunk[..take]);
        }
        received.upload.write(&chunk).await?;
    }
    Ok(())
}

/// A small field as text, counted against [`FORM_ALLOWANCE`].
async fn read_text(
    mut field: Field<'static>,
    form_bytes: &mut u64,
    idle_timeout: Duration,
) -> Result<String, Stop> {
    let name = field.name().unwrap_or_default().to_owned();
    let mut bytes = Vec::new();
    while let Some(chunk) = idle(idle_timeout, field.chunk()).await?? {
        *form_bytes += chunk.len() as u64;
        if *form_bytes > FORM_ALLOWANCE {
            let param = if name == "format" { "format" } else { "backup" };
            return Err(Stop::Form(
                param,
                String::new(),
                format!("{name} is too long"),
            ));
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// Check what the form held, finish the file and record the backup.
async fn store(
    backups: &Backups,
    admitted: &Admitted,
    file: Option<Received>,
    format: Option<String>,
) -> Response {
    let Some(received) = file.filter(|r| r.upload.bytes() > 0) else {
        return form_error("backup", "", "backup is required: the file to back up");
    };
    let format = match format.as_deref().map(str::trim).filter(|f| !f.is_empty()) {
        Some(given) => match decide::format(given) {
            Some(format) => format,
            None => {
                received.upload.abort().await;
                return form_error(
                    "format",
                    given,
                    "format must be 1 to 20 of a-z, 0-9, '.', '+' and '-'",
                );
            }
        },
        None => decide::infer_format(&received.name, &received.head),
    };
    let file_name = clean_file_name(&received.name);
    let written = match received.upload.finish().await {
        Ok(written) => written,
        Err(error) => {
            tracing::error!(%error, "a backup could not be finished in blob storage");
            return storage_failed();
        }
    };
    let blob = written.blob.clone();
    match backups.store(admitted, written, format, file_name).await {
        Ok(stored) => {
            let at = stored.at.to_rfc3339_opts(SecondsFormat::Millis, true);
            let backup = &stored.backup;
            let created = BackupCreated {
                backup: CreatedBackup {
                    uuid: backup.backup_id.to_string(),
                    resource: backup.resource_id.to_string(),
                    url: backups.link(backup.backup_id, stored.at),
                    format: backup.format.clone(),
                    created_at: at.clone(),
                    updated_at: at,
                },
                message: "backup created successfully",
            };
            (StatusCode::CREATED, axum::Json(created)).into_response()
        }
        Err(error) => {
            // Not recorded: the file goes (after a store failure the backup may have been
            // recorded all the same; the sweep decides then).
            if matches!(error, BackupError::Blob(_)) {
                backups
                    .blobs
                    .delete_quietly(&blob, "the sweep will delete it")
                    .await;
            }
            match error {
                BackupError::Blob(_) => storage_failed(),
                other => unavailable(other),
            }
        }
    }
}

fn turned_away(resource_id: Uuid, turned: Turned) -> Response {
    match turned {
        Turned::Unknown => not_found(&resource_id.to_string()),
        Turned::BadKey => message(StatusCode::UNAUTHORIZED, "valid api key is needed"),
        Turned::Inactive => message(
            StatusCode::BAD_REQUEST,
            format!("resource with uuid {resource_id} is not active"),
        ),
        Turned::Blocked(ip) => message(
            StatusCode::FORBIDDEN,
            match ip {
                Some(ip) => format!("backups from {ip} are not allowed"),
                None => "backups from this address are not allowed".to_owned(),
            },
        ),
    }
}

fn too_large(limit: u64) -> Response {
    message(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("the backup is larger than the {limit} bytes this service takes"),
    )
}

/// The event store failed: try again shortly.
fn unavailable(error: BackupError) -> Response {
    tracing::error!(%error, "a backup upload failed");
    let mut response = message(
        StatusCode::SERVICE_UNAVAILABLE,
        "the service is temporarily unavailable; try again shortly",
    );
    response.headers_mut().insert(
        header::RETRY_AFTER,
        cairn_http::retry_after(Duration::from_secs(1)),
    );
    response
}

#[cfg(test)]
mod tests {
    #[test]
    fn created_reads_as_domes() {
        let body = serde_json::to_value(super::BackupCreated {
            backup: super::CreatedBackup {
                uuid: "b".into(),
                resource: "r".into(),
                url: "u".into(),
                format: "json".into(),
                created_at: "t".into(),
                updated_at: "t".into(),
            },
            message: "backup created successfully",
        })
        .unwrap_or_default();
        assert_eq!(
            body,
            serde_json::json!({"backup": {"uuid": "b", "resource": "r", "url": "u", "format": "json",
                "created_at": "t", "updated_at": "t"}, "message": "backup created successfully"})
        );
    }
}
