//! `GET /capsules/{id}/file/{name}`: a capsule's file through a signed link, with one
//! `Range` for resuming, as an attachment under the name it was uploaded with.

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use cairn_events::domain::capsule;
use serde::Deserialize;

use crate::blobs::{Served, serve};
use crate::capsules::Capsules;

/// The signed-link part of a download URL.
#[derive(Deserialize)]
struct Signed {
    #[serde(default)]
    expires: String,
    #[serde(default)]
    signature: String,
}

/// The file download route, for the OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(paths(download))]
pub struct FilesApi;

pub fn router() -> Router<Capsules> {
    Router::new().route("/capsules/{id}/file/{name}", get(download))
}

fn refuse(status: StatusCode, words: &str) -> Response {
    let mut response = (
        status,
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        words.to_owned(),
    )
        .into_response();
    if status == StatusCode::SERVICE_UNAVAILABLE {
        let wait = cairn_http::retry_after(std::time::Duration::from_secs(1));
        response.headers_mut().insert(header::RETRY_AFTER, wait);
    }
    response
}

/// A capsule's file, through a signed link from its download page or
/// `/api/downloadlink`. Takes one `Range` (resuming a large download).
#[utoipa::path(get, path = "/capsules/{id}/file/{name}", tag = "capsule pages",
    params(
        ("id" = String, Path, pattern = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$", description = "The capsule's id"),
        ("name" = String, Path, description = "The file's name (not checked)"),
        ("expires" = i64, Query, format = Int64, description = "When the link stops working, in seconds since the Unix epoch"),
        ("signature" = String, Query, description = "The link's signature"),
    ),
    responses(
        (status = 200, description = "The file, as an attachment under its original name", content_type = "application/octet-stream"),
        (status = 206, description = "The range asked for", content_type = "application/octet-stream"),
        (status = 403, description = "The link is not valid", body = String, content_type = "text/plain"),
        (status = 410, description = "The link has expired, or the file is no longer kept", body = String, content_type = "text/plain"),
        (status = 416, description = "The range is outside the file", body = String, content_type = "text/plain"),
    ))]
async fn download(
    State(capsules): State<Capsules>,
    path: Result<Path<(String, String)>, axum::extract::rejection::PathRejection>,
    signed: Result<Query<Signed>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
) -> Response {
    // A query that does not parse (a parameter given twice) is no valid link either.
    let Ok(Query(signed)) = signed else {
        return refuse(StatusCode::FORBIDDEN, "This download link is not valid.");
    };
    let files = &capsules.files;
    let id = path.map(|Path((id, _))| id).unwrap_or_default();
    let (Ok(capsule_id), Ok(expires)) = (capsule::parse_id(&id), signed.expires.parse::<i64>())
    else {
        return refuse(StatusCode::FORBIDDEN, "This download link is not valid.");
    };
    if !files.verify(capsule_id, expires, &signed.signature) {
        return refuse(StatusCode::FORBIDDEN, "This download link is not valid.");
    }
    let page = capsules.links().page("download", capsule_id);
    if capsules.now().timestamp() >= expires {
        return refuse(
            StatusCode::GONE,
            &format!("This download link has expired: open {page} for a new one."),
        );
    }
    let state = match capsules.load(capsule_id).await {
        Ok(Some(state)) => state,
        Ok(None) => return refuse(StatusCode::GONE, "This file is no longer kept."),
        Err(error) => {
            tracing::error!(%error, "capsule file download failed");
            return refuse(StatusCode::SERVICE_UNAVAILABLE, "Try again in a moment.");
        }
    };
    let Some(attachment) = state.downloadable_file() else {
        return refuse(StatusCode::GONE, "This file is no longer kept.");
    };
    let served = Served {
        blob: &attachment.blob,
        bytes: attachment.bytes,
        file_name: &attachment.file_name,
        sha256: None,
    };
    match serve(&files.blobs, served, &headers).await {
        Ok(Some(response)) => response,
        Ok(None) => refuse(StatusCode::GONE, "This file is no longer kept."),
        Err(error) => {
            tracing::error!(%error, "capsule file could not be read");
            refuse(StatusCode::SERVICE_UNAVAILABLE, "Try again in a moment.")
        }
    }
}
