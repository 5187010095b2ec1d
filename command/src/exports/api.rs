//! The export routes: ask for one, list, look at, cancel, download the bundle, and follow
//! the progress (with the bearer token, or the signed links the answers carry, which open
//! in a browser without it).

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use cairn_events::domain::export::Destination;
use cairn_http::{ApiError, ErrorBody};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{OpenApi, ToSchema};
use uuid::Uuid;

use super::progress::last_event_id;
use super::state::{ExportState, Status};
use super::{ExportError, Exports, decide};
use crate::CommandState;
use crate::auth::AuthUser;
use crate::blobs::{Served, serve};

/// The quick routes (inside the server's request time limit).
pub fn router() -> Router<CommandState> {
    Router::new()
        .route("/exports", axum::routing::post(create).get(list))
        .route("/exports/{id}", get(show).delete(cancel))
        .route("/exports/{id}/page", get(page))
}

/// The routes that last as long as the client wants: the download and the events.
pub fn long_router() -> Router<CommandState> {
    Router::new()
        .route("/exports/{id}/bundle", get(bundle))
        .route("/exports/{id}/events", get(events))
}

#[derive(OpenApi)]
#[openapi(
    paths(create, list, show, cancel, bundle, events, page),
    components(schemas(
        ExportInput,
        DestinationIn,
        ExportView,
        ExportData,
        ExportList,
        BundleView,
        Links,
        Status,
        ErrorBody
    ))
)]
pub struct ExportApi;

impl From<ExportError> for ApiError {
    fn from(error: ExportError) -> Self {
        match error {
            ExportError::Invalid(invalid) => ApiError::bad_request(
                format!("invalid_{}", invalid.field.replace('.', "_")),
                invalid.message,
            ),
            ExportError::NotFound => ApiError::not_found(),
            ExportError::Over(status) => ApiError::conflict(
                "export_over",
                format!("the export is {status} and cannot be cancelled"),
            ),
            ExportError::Blob(error) => {
                ApiError::dependency_failed("blobs_unavailable", "blob storage", &error)
            }
            ExportError::Store(error) => ApiError::from(error),
            ExportError::Destination(message) | ExportError::Other(message) => {
                ApiError::internal("the export failed", &message)
            }
        }
    }
}

/// `POST /exports`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct ExportInput {
    destination: DestinationIn,
    /// Also the backup files themselves (default: only their list).
    #[serde(default)]
    include_files: bool,
    /// A git destination only: commit new messages as they come, at most once a minute.
    #[serde(default)]
    keep_in_sync: bool,
}

/// `{"kind": "bundle"}` or `{"kind": "git", "url", "branch", "token"}`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct DestinationIn {
    #[schema(example = "bundle")]
    kind: String,
    /// Git: `https://…`, `http://…`, `file://…` or an absolute path on the server.
    url: Option<String>,
    /// Git: the branch to commit to (default `main`).
    branch: Option<String>,
    /// Git over HTTP(S): a token the remote takes as a password; kept sealed, never shown.
    #[schema(write_only)]
    token: Option<String>,
}

#[derive(Serialize, ToSchema)]
struct ExportView {
    data: ExportData,
}

#[derive(Serialize, ToSchema)]
struct ExportList {
    /// Newest first.
    data: Vec<ExportData>,
    /// Pass as `cursor` for the next (older) page; `null` on the last.
    next_cursor: Option<String>,
}

#[derive(Serialize, ToSchema)]
struct ExportData {
    id: String,
    status: Status,
    /// `{"kind": "bundle"}` or `{"kind": "git", "url", "branch"}` (never the token).
    #[schema(value_type = Object)]
    destination: serde_json::Value,
    include_files: bool,
    keep_in_sync: bool,
    /// Steps done, of `total`.
    done: usize,
    total: usize,
    /// The step running or next.
    step: Option<String>,
    /// Why it failed; while it runs, why the last try of a step failed.
    error: Option<String>,
    /// When a failed step is tried again.
    #[schema(format = DateTime)]
    retry_at: Option<String>,
    #[schema(format = DateTime)]
    requested_at: String,
    #[schema(format = DateTime)]
    finished_at: Option<String>,
    /// A git destination kept in sync (`keep_in_sync`, until cancelled): when new
    /// messages were last written to it.
    #[schema(format = DateTime)]
    synced_at: Option<String>,
    /// A finished bundle, until it expires.
    bundle: Option<BundleView>,
    links: Links,
}

#[derive(Serialize, ToSchema)]
struct BundleView {
    bytes: u64,
    /// SHA-256 of the zip, hex.
    sha256: String,
    #[schema(format = DateTime)]
    expires_at: Option<String>,
    /// Downloads without a token, for a while.
    url: String,
}

#[derive(Serialize, ToSchema)]
struct Links {
    #[serde(rename = "self")]
    this: String,
    /// Server-Sent Events of the progress (with the bearer token).
    events: String,
    /// The progress page, and its events, without a token, for a while.
    page: String,
}

fn stamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn data(exports: &Exports, export: &ExportState) -> ExportData {
    let now = exports.now();
    let id = export.id();
    let progress = super::progress::Progress::from(export);
    ExportData {
        id: id.to_string(),
        status: export.status,
        destination: match &export.request.destination {
            Destination::Bundle => serde_json::json!({"kind": "bundle"}),
            Destination::Git { url, branch, .. } => {
                serde_json::json!({"kind": "git", "url": url, "branch": branch})
            }
        },
        include_files: export.request.include_files,
        keep_in_sync: export.request.keep_in_sync,
        done: progress.done,
        total: progress.total,
        step: progress.step,
        error: progress.error,
        retry_at: export
            .retry_at
            .filter(|_| !export.status.is_over())
            .map(stamp),
        requested_at: stamp(export.requested_at),
        finished_at: export.finished_at.map(stamp),
        synced_at: export.synced_at.map(stamp),
        bundle: export
            .bundle
            .as_ref()
            .filter(|_| !export.expired)
            .map(|b| BundleView {
                bytes: b.bytes,
                sha256: b.sha256.clone(),
                expires_at: export.expires_at.map(stamp),
                url: exports.bundle_link(id, now),
            }),
        links: Links {
            this: format!("{}/exports/{id}", exports.public_url),
            events: format!("{}/exports/{id}/events", exports.public_url),
            page: exports.page_link(id, now),
        },
    }
}

fn id(path: Result<Path<String>, PathRejection>) -> Result<Uuid, ApiError> {
    path.ok()
        .and_then(|Path(raw)| Uuid::parse_str(&raw).ok())
        .ok_or_else(ApiError::not_found)
}

/// Start an export.
#[utoipa::path(post, path = "/exports", tag = "exports", security(("bearer" = [])),
    request_body = ExportInput,
    responses(
        (status = 202, description = "Queued; it runs in the background", body = ExportView,
            headers(("Content-Location" = String, description = "/exports/{id}: where this export is followed"))),
        (status = 400, description = "Not a valid request; the code names the field", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
    ))]
async fn create(
    State(state): State<CommandState>,
    user: AuthUser,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(|e| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::too_large("the request body is too large"),
        _ => ApiError::bad_request("invalid_body", "the body could not be read"),
    })?;
    let input: ExportInput = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request("invalid_json", format!("the body is not right: {e}"))
    })?;
    let d = input.destination;
    let request = decide::request(
        &d.kind,
        d.url,
        d.branch,
        d.token,
        input.include_files,
        input.keep_in_sync,
    )
    .map_err(ExportError::Invalid)?;
    let exports = &state.exports;
    let export = exports.request(&user, request).await?;
    let mut response = (
        StatusCode::ACCEPTED,
        Json(ExportView {
            data: data(exports, &export),
        }),
    )
        .into_response();
    if let Ok(location) = HeaderValue::from_str(&format!("/exports/{}", export.id())) {
        response
            .headers_mut()
            .insert(header::CONTENT_LOCATION, location);
    }
    Ok(response)
}

#[derive(Deserialize)]
struct PageQuery {
    cursor: Option<String>,
    limit: Option<usize>,
}

/// The caller's exports, newest first.
#[utoipa::path(get, path = "/exports", tag = "exports", security(("bearer" = [])),
    params(
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the page before"),
        ("limit" = Option<usize>, Query, description = "1-100 (default 20)"),
    ),
    responses(
        (status = 200, description = "A page of exports", body = ExportList),
        (status = 400, description = "A bad cursor or limit", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
    ))]
async fn list(
    State(state): State<CommandState>,
    user: AuthUser,
    query: Result<Query<PageQuery>, QueryRejection>,
) -> Result<Json<ExportList>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let limit = query.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_limit",
            "limit must be 1-100",
        ));
    }
    let before = match &query.cursor {
        Some(raw) => Some(Uuid::parse_str(raw).map_err(|_| {
            ApiError::bad_request("invalid_cursor", "the cursor is not one this route gave")
        })?),
        None => None,
    };
    let exports = &state.exports;
    let mine = exports.exports_of(user.id).await?;
    let newest_first = mine
        .iter()
        .rev()
        .skip_while(|e| before.is_some_and(|b| e.id() != b))
        .skip(usize::from(before.is_some()));
    let page: Vec<&ExportState> = newest_first.take(limit + 1).collect();
    let next_cursor = (page.len() > limit).then(|| page[limit - 1].id().to_string());
    Ok(Json(ExportList {
        data: page.iter().take(limit).map(|e| data(exports, e)).collect(),
        next_cursor,
    }))
}

/// One of the caller's exports.
#[utoipa::path(get, path = "/exports/{id}", tag = "exports", security(("bearer" = [])),
    params(("id" = String, Path, description = "The export's id")),
    responses(
        (status = 200, description = "The export", body = ExportView),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 404, description = "No such export of the caller's", body = ErrorBody),
    ))]
async fn show(
    State(state): State<CommandState>,
    user: AuthUser,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<ExportView>, ApiError> {
    let export = state.exports.owned(user.id, id(path)?).await?;
    Ok(Json(ExportView {
        data: data(&state.exports, &export),
    }))
}

/// Cancel a queued or running export (what it wrote stays), or stop syncing one.
#[utoipa::path(delete, path = "/exports/{id}", tag = "exports", security(("bearer" = [])),
    params(("id" = String, Path, description = "The export's id")),
    responses(
        (status = 200, description = "Cancelled (or no longer kept in sync)", body = ExportView),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 404, description = "No such export of the caller's", body = ErrorBody),
        (status = 409, description = "It has ended already", body = ErrorBody),
    ))]
async fn cancel(
    State(state): State<CommandState>,
    user: AuthUser,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<ExportView>, ApiError> {
    let export = state.exports.cancel(user.id, id(path)?).await?;
    Ok(Json(ExportView {
        data: data(&state.exports, &export),
    }))
}

#[derive(Deserialize)]
struct Signed {
    expires: Option<i64>,
    signature: Option<String>,
}

/// The export, if the caller may see it: by its owner's token, or a link signed for `what`.
async fn allowed(
    state: &CommandState,
    user: Result<AuthUser, ApiError>,
    signed: Option<Query<Signed>>,
    what: &str,
    export_id: Uuid,
) -> Result<ExportState, ApiError> {
    if let Some(Query(Signed {
        expires: Some(expires),
        signature: Some(signature),
    })) = signed
    {
        if !state.exports.verify(what, export_id, expires, &signature) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "invalid_link",
                "the link is not valid, or has expired",
            ));
        }
        return state
            .exports
            .load(export_id)
            .await?
            .ok_or_else(ApiError::not_found);
    }
    let user = user?;
    Ok(state.exports.owned(user.id, export_id).await?)
}

/// Download a finished bundle (a zip), whole or a `Range` of it.
#[utoipa::path(get, path = "/exports/{id}/bundle", tag = "exports", security(("bearer" = []), ()),
    params(
        ("id" = String, Path, description = "The export's id"),
        ("expires" = Option<i64>, Query, description = "Of a signed link"),
        ("signature" = Option<String>, Query, description = "Of a signed link"),
    ),
    responses(
        (status = 200, description = "The zip", content_type = "application/zip"),
        (status = 401, description = "No valid token and no signed link", body = ErrorBody),
        (status = 403, description = "The link is not valid or has expired", body = ErrorBody),
        (status = 404, description = "No such export, or no bundle (yet)", body = ErrorBody),
        (status = 410, description = "The bundle was deleted at the end of its retention", body = ErrorBody),
    ))]
async fn bundle(
    State(state): State<CommandState>,
    user: Result<AuthUser, ApiError>,
    path: Result<Path<String>, PathRejection>,
    signed: Result<Query<Signed>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let export_id = id(path)?;
    let export = allowed(&state, user, signed.ok(), "bundle", export_id).await?;
    let Some(bundle) = &export.bundle else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "no_bundle",
            "the export has no bundle (yet)",
        ));
    };
    if export.expired {
        return Err(ApiError::new(
            StatusCode::GONE,
            "bundle_expired",
            "the bundle was deleted at the end of its retention",
        ));
    }
    let file = Served {
        blob: &bundle.blob,
        bytes: bundle.bytes,
        file_name: &bundle.path,
        sha256: Some(&bundle.sha256),
    };
    let mut response = serve(&state.exports.blobs, file, &headers)
        .await
        .map_err(|e| ApiError::dependency_failed("blobs_unavailable", "blob storage", &e))?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::GONE,
                "bundle_expired",
                "the bundle is no longer stored",
            )
        })?;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/zip"),
    );
    Ok(response)
}

/// The export's progress as Server-Sent Events: `{"status", "done", "total", "step"}`,
/// until it ends. Reconnect with `Last-Event-ID` to go on where you were.
#[utoipa::path(get, path = "/exports/{id}/events", tag = "exports", security(("bearer" = []), ()),
    params(
        ("id" = String, Path, description = "The export's id"),
        ("Last-Event-ID" = Option<String>, Header, description = "The id of the last event received"),
        ("expires" = Option<i64>, Query, description = "Of the signed page link"),
        ("signature" = Option<String>, Query, description = "Of the signed page link"),
    ),
    responses(
        (status = 200, description = "`text/event-stream`", content_type = "text/event-stream"),
        (status = 401, description = "No valid token and no signed link", body = ErrorBody),
        (status = 403, description = "The link is not valid or has expired", body = ErrorBody),
        (status = 404, description = "No such export of the caller's", body = ErrorBody),
    ))]
async fn events(
    State(state): State<CommandState>,
    user: Result<AuthUser, ApiError>,
    path: Result<Path<String>, PathRejection>,
    signed: Result<Query<Signed>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let export_id = id(path)?;
    let export = allowed(&state, user, signed.ok(), "page", export_id).await?;
    let mut response = state
        .exports
        .progress(export, last_event_id(&headers))
        .into_response();
    // Proxies must not hold the events back.
    response
        .headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

/// The progress page, opened by the signed link an export's answer carries.
#[utoipa::path(get, path = "/exports/{id}/page", tag = "exports",
    params(
        ("id" = String, Path, description = "The export's id"),
        ("expires" = i64, Query, description = "Of the signed link"),
        ("signature" = String, Query, description = "Of the signed link"),
    ),
    responses(
        (status = 200, description = "An HTML page with a progress bar", content_type = "text/html"),
        (status = 401, description = "No valid token and no signed link", body = ErrorBody),
        (status = 403, description = "The link is not valid or has expired", body = ErrorBody),
        (status = 404, description = "No such export (of the caller's, with a token)", body = ErrorBody),
    ))]
async fn page(
    State(state): State<CommandState>,
    user: Result<AuthUser, ApiError>,
    path: Result<Path<String>, PathRejection>,
    signed: Result<Query<Signed>, QueryRejection>,
) -> Result<Response, ApiError> {
    let export_id = id(path)?;
    let signed = signed.ok();
    let query = signed.as_ref().map(|Query(s)| {
        format!(
            "?expires={}&signature={}",
            s.expires.unwrap_or_default(),
            s.signature.clone().unwrap_or_default()
        )
    });
    let export = allowed(&state, user, signed, "page", export_id).await?;
    let events = format!("/exports/{export_id}/events{}", query.unwrap_or_default());
    let mut response = Html(state.exports.page(&export, &events)).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        ),
    );
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, no-store"),
    );
    Ok(response)
}
