//! `GET /capsules/{id}/file/{name}`: a capsule's file through a signed link, with one
//! `Range` for resuming, as an attachment under the name it was uploaded with.

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use cairn_events::domain::capsule;
use object_store::{GetOptions, GetRange};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde::Deserialize;

use crate::capsules::Capsules;

/// The body of a download: a local file is read in large chunks (object_store's own
/// stream reads 8 KiB at a time), any other store's stream is passed on.
async fn body_of(found: object_store::GetResult) -> std::io::Result<Body> {
    const READ_BYTES: usize = 256 * 1024;
    match found.payload {
        object_store::GetResultPayload::File(file, _) => {
            use tokio::io::{AsyncReadExt, AsyncSeekExt};
            let range = found.range;
            let mut file = tokio::fs::File::from_std(file);
            file.seek(std::io::SeekFrom::Start(range.start)).await?;
            let reader = file.take(range.end - range.start);
            Ok(Body::from_stream(
                tokio_util::io::ReaderStream::with_capacity(reader, READ_BYTES),
            ))
        }
        object_store::GetResultPayload::Stream(stream) => Ok(Body::from_stream(stream)),
    }
}

/// RFC 8187 `attr-char`s stay as they are in `filename*`; everything else is escaped.
const ATTR_CHAR: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'!')
    .remove(b'#')
    .remove(b'$')
    .remove(b'&')
    .remove(b'+')
    .remove(b'-')
    .remove(b'.')
    .remove(b'^')
    .remove(b'_')
    .remove(b'`')
    .remove(b'|')
    .remove(b'~');

/// `attachment; filename="…"; filename*=UTF-8''…`: the quoted name is an ASCII stand-in
/// (other characters, quotes and backslashes as `_`) for clients that do not read the
/// encoded one, which keeps the name exactly.
pub fn content_disposition(file_name: &str) -> String {
    let ascii: String = file_name
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!(
        "attachment; filename=\"{ascii}\"; filename*=UTF-8''{}",
        utf8_percent_encode(file_name, ATTR_CHAR)
    )
}

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
    let range = match headers
        .get(header::RANGE)
        .map_or(Ranged::Whole, |v| parse_range(v, attachment.bytes))
    {
        Ranged::Whole => None,
        Ranged::Part(range) => Some(range),
        Ranged::Outside => {
            return (
                StatusCode::RANGE_NOT_SATISFIABLE,
                [(
                    header::CONTENT_RANGE,
                    format!("bytes */{}", attachment.bytes),
                )],
                "The range is outside the file.",
            )
                .into_response();
        }
    };
    let options = GetOptions {
        range: range.clone().map(GetRange::Bounded),
        ..GetOptions::default()
    };
    let blob = object_store::path::Path::from(attachment.blob.as_str());
    let found = match files.store.get_opts(&blob, options).await {
        Ok(found) => found,
        Err(object_store::Error::NotFound { .. }) => {
            return refuse(StatusCode::GONE, "This file is no longer kept.");
        }
        Err(error) => {
            tracing::error!(%error, "capsule file could not be read");
            return refuse(StatusCode::SERVICE_UNAVAILABLE, "Try again in a moment.");
        }
    };
    let length = found.range.end - found.range.start;
    let body = match body_of(found).await {
        Ok(body) => body,
        Err(error) => {
            tracing::error!(%error, "capsule file could not be read");
            return refuse(StatusCode::SERVICE_UNAVAILABLE, "Try again in a moment.");
        }
    };
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    let mut set = |name, value: String| {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(name, value);
        }
    };
    set(header::CONTENT_TYPE, "application/octet-stream".to_owned());
    set(header::CONTENT_LENGTH, length.to_string());
    set(
        header::CONTENT_DISPOSITION,
        content_disposition(&attachment.file_name),
    );
    set(header::ACCEPT_RANGES, "bytes".to_owned());
    set(header::CACHE_CONTROL, "private, no-store".to_owned());
    set(header::X_CONTENT_TYPE_OPTIONS, "nosniff".to_owned());
    if let Some(range) = range {
        set(
            header::CONTENT_RANGE,
            format!(
                "bytes {}-{}/{}",
                range.start,
                range.end - 1,
                attachment.bytes
            ),
        );
        *response.status_mut() = StatusCode::PARTIAL_CONTENT;
    }
    response
}

/// What a `Range` header asks of a file.
#[derive(Debug, PartialEq, Eq)]
enum Ranged {
    /// No header, or one that is malformed or lists several ranges: ignored, as HTTP
    /// allows, and the whole file is sent.
    Whole,
    /// One range in the file, half-open.
    Part(std::ops::Range<u64>),
    /// One range that misses the file (416).
    Outside,
}

/// One byte range of a file of `size` bytes: `bytes=a-b`, `bytes=a-` or `bytes=-n`.
fn parse_range(value: &HeaderValue, size: u64) -> Ranged {
    let parsed = || -> Option<Option<std::ops::Range<u64>>> {
        let spec = value.to_str().ok()?.trim().strip_prefix("bytes=")?;
        if spec.contains(',') {
            return None;
        }
        let (first, last) = spec.split_once('-')?;
        let (first, last) = (first.trim(), last.trim());
        let range = if first.is_empty() {
            let suffix: u64 = last.parse().ok()?;
            size.saturating_sub(suffix)..size
        } else {
            let start: u64 = first.parse().ok()?;
            let end = if last.is_empty() {
                size
            } else {
                let last: u64 = last.parse().ok()?;
                if last < start {
                    return None;
                }
                last.saturating_add(1).min(size)
            };
            start..end
        };
        Some((range.start < range.end).then_some(range))
    };
    match parsed() {
        None => Ranged::Whole,
        Some(Some(range)) => Ranged::Part(range),
        Some(None) => Ranged::Outside,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_disposition_is_safe() {
        assert_eq!(
            content_disposition("plan \"b\".txt"),
            "attachment; filename=\"plan _b_.txt\"; filename*=UTF-8''plan%20%22b%22.txt"
        );
        assert_eq!(
            content_disposition("résumé;x\r\n.pdf"),
            "attachment; filename=\"r_sum_;x__.pdf\"; filename*=UTF-8''r%C3%A9sum%C3%A9%3Bx%0D%0A.pdf"
        );
    }

    #[test]
    fn ranges() {
        let v = |s: &'static str| HeaderValue::from_static(s);
        assert_eq!(parse_range(&v("bytes=0-9"), 100), Ranged::Part(0..10));
        assert_eq!(parse_range(&v("bytes=0-0"), 100), Ranged::Part(0..1));
        assert_eq!(parse_range(&v("bytes=90-"), 100), Ranged::Part(90..100));
        assert_eq!(parse_range(&v("bytes=-10"), 100), Ranged::Part(90..100));
        assert_eq!(parse_range(&v("bytes=50-500"), 100), Ranged::Part(50..100));
        assert_eq!(parse_range(&v("bytes=100-"), 100), Ranged::Outside);
        assert_eq!(parse_range(&v("bytes=-0"), 100), Ranged::Outside);
        assert_eq!(parse_range(&v("bytes=0-1,5-6"), 100), Ranged::Whole);
        assert_eq!(parse_range(&v("items=0-1"), 100), Ranged::Whole);
        assert_eq!(parse_range(&v("bytes=5-1"), 100), Ranged::Whole);
        assert_eq!(
            parse_range(&v("bytes=99999999999999999999-"), 100),
            Ranged::Whole
        );
    }
}
