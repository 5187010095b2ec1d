//! Capsule files: streamed into blob storage as they are uploaded (never held whole in
//! memory), served back through Cairn's own signed, expiring links, and deleted when the
//! capsule is cancelled or expires, or once its delivery's retention ends.
//!
//! A download link is `{public URL}/capsules/{id}/file/{name}?expires=…&signature=…`: the
//! signature is an HMAC-SHA256 over the capsule id and the expiry, so a link cannot be
//! made for another capsule or stretched; the name in the path is only for the tools that
//! save a download under the last path segment.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use cairn_events::domain::capsule::{self, Attachment, CapsuleState, LinkKeyCreated};
use cairn_events::{AppendRequest, DomainEvent, EventStore, ExpectedVersion, NewEvent, StoreError};
use chrono::{DateTime, Duration, Utc};
use futures_util::StreamExt;
use hmac::{KeyInit, Mac};
use object_store::WriteMultipart;
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde::Deserialize;
use uuid::Uuid;

use super::{CapsuleError, Capsules};

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// Bytes buffered before a part goes to the blob store: S3's smallest part is 5 MiB; a
/// local file takes smaller writes, which keeps less of each upload in memory.
const PART_BYTES: usize = 5 * 1024 * 1024;
const LOCAL_PART_BYTES: usize = 1024 * 1024;
/// Longest file name kept, in characters.
const MAX_FILE_NAME_CHARS: usize = 255;

/// Where capsule files are kept and how links to them are made.
#[derive(Clone)]
pub struct Files {
    store: Arc<dyn ObjectStore>,
    /// The directory `store` keeps files in, when it is a local one: a finished upload is
    /// flushed to disk before it is acknowledged.
    local_dir: Option<Arc<std::path::Path>>,
    part_bytes: usize,
    key: Arc<[u8]>,
    /// How long a download link works.
    pub link_ttl: Duration,
    /// How long a delivered capsule's file is kept.
    pub retention: Duration,
}

impl std::fmt::Debug for Files {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Files")
            .field("store", &self.store.to_string())
            .field("link_ttl", &self.link_ttl)
            .field("retention", &self.retention)
            .finish_non_exhaustive()
    }
}

/// A blob store failure, as the capsule use cases report it.
fn blob_error(error: object_store::Error) -> CapsuleError {
    CapsuleError::Blob(error.to_string())
}

impl Files {
    /// Files in `store`, links signed with `key` (at least 32 bytes), working 12 hours;
    /// delivered files kept 30 days.
    pub fn new(store: Arc<dyn ObjectStore>, key: &[u8]) -> Self {
        Files {
            store,
            local_dir: None,
            part_bytes: PART_BYTES,
            key: key.into(),
            link_ttl: Duration::hours(12),
            retention: Duration::days(30),
        }
    }

    /// Files in a local directory, `store` being a `LocalFileSystem` over `dir`.
    pub fn local(store: Arc<dyn ObjectStore>, dir: &std::path::Path, key: &[u8]) -> Self {
        Files {
            local_dir: Some(dir.into()),
            part_bytes: LOCAL_PART_BYTES,
            ..Files::new(store, key)
        }
    }

    /// Where a new upload for `capsule_id` is written: named by the capsule (the sweep
    /// reads it back) and by the upload, so a retried submission never writes over the
    /// first one's file.
    fn new_blob(capsule_id: Uuid) -> String {
        format!("capsules/{capsule_id}.{:032x}", rand::random::<u128>())
    }

    /// The capsule id a submission with Idempotency-Key `key` gets: the same for every
    /// retry, and as unguessable as a random one to anyone without the server's key.
    pub fn keyed_id(&self, key: &str) -> Uuid {
        let mut mac = HmacSha256::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
        mac.update(format!("capsule-idempotency:{key}").as_bytes());
        let digest = mac.finalize().into_bytes();
        let mut bytes = [0_u8; 16];
        bytes.copy_from_slice(&digest[..16]);
        uuid::Builder::from_random_bytes(bytes).into_uuid()
    }

    /// Start writing the file of `capsule_id`.
    pub async fn upload(&self, capsule_id: Uuid) -> Result<Upload, CapsuleError> {
        let blob = Self::new_blob(capsule_id);
        let upload = self
            .store
            .put_multipart(&object_store::path::Path::from(blob.as_str()))
            .await
            .map_err(blob_error)?;
        Ok(Upload {
            writer: Some(WriteMultipart::new_with_chunk_size(upload, self.part_bytes)),
            sync: self.local_dir.as_ref().map(|dir| dir.join(&blob)),
            blob,
            bytes: 0,
        })
    }

    /// Delete a file no capsule keeps, logging a failure (the sweep gets it later).
    pub async fn delete_quietly(&self, blob: &str) {
        if let Err(error) = self.delete(blob).await {
            tracing::warn!(%error, %blob, "a file no capsule keeps could not be deleted; the sweep will");
        }
    }

    /// Delete a kept file; one already gone is not an error.
    pub async fn delete(&self, blob: &str) -> Result<(), CapsuleError> {
        match self
            .store
            .delete(&object_store::path::Path::from(blob))
            .await
        {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(blob_error(e)),
        }
    }

    /// Files under `capsules/` last written before `cutoff`: where each is kept and the
    /// capsule its name says it belongs to. With a local directory, also the partial files
    /// of uploads cut off by a crash (`<name>#<n>`, which listing skips), as `None`.
    pub async fn written_before(
        &self,
        cutoff: DateTime<Utc>,
    ) -> Result<Vec<(String, Option<Uuid>)>, CapsuleError> {
        let prefix = object_store::path::Path::from("capsules");
        let mut listed = self.store.list(Some(&prefix));
        let mut stale = Vec::new();
        while let Some(meta) = listed.next().await {
            let meta = meta.map_err(blob_error)?;
            if meta.last_modified < cutoff {
                let id = meta
                    .location
                    .filename()
                    .and_then(|n| n.split('.').next())
                    .and_then(|n| Uuid::parse_str(n).ok());
                stale.push((meta.location.to_string(), id));
            }
        }
        if let Some(dir) = &self.local_dir {
            let dir = dir.join("capsules");
            let partial = tokio::task::spawn_blocking(move || partial_uploads(&dir, cutoff))
                .await
                .map_err(|e| CapsuleError::Blob(e.to_string()))?;
            for name in partial {
                let blob = format!("capsules/{name}");
                if !stale.iter().any(|(listed, _)| *listed == blob) {
                    stale.push((blob, None));
                }
            }
        }
        Ok(stale)
    }

    /// Delete what [`Files::written_before`] listed, partial uploads included.
    pub async fn delete_stale(&self, blob: &str) -> Result<(), CapsuleError> {
        match (&self.local_dir, blob.contains('#')) {
            (Some(dir), true) => match tokio::fs::remove_file(dir.join(blob)).await {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(CapsuleError::Blob(e.to_string())),
            },
            _ => self.delete(blob).await,
        }
    }

    fn mac(&self, capsule_id: Uuid, expires: i64) -> HmacSha256 {
        // HMAC takes keys of any length, so this cannot fail.
        let mut mac = HmacSha256::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
        mac.update(format!("capsule-file:{capsule_id}:{expires}").as_bytes());
        mac
    }

    /// A download link for the file of `state`, working until `now` + the link lifetime.
    pub fn link(
        &self,
        public_url: &str,
        state: &CapsuleState,
        attachment: &Attachment,
        now: DateTime<Utc>,
    ) -> Link {
        let capsule_id = state.submitted.capsule_id;
        let until = now + self.link_ttl;
        let expires = until.timestamp();
        let signature =
            URL_SAFE_NO_PAD.encode(self.mac(capsule_id, expires).finalize().into_bytes());
        let url = format!(
            "{}/capsules/{capsule_id}/file/{}?expires={expires}&signature={signature}",
            public_url.trim_end_matches('/'),
            utf8_percent_encode(&attachment.file_name, PATH_SEGMENT),
        );
        Link { url, until }
    }

    /// Whether `signature` signs `capsule_id` until `expires`.
    fn verify(&self, capsule_id: Uuid, expires: i64, signature: &str) -> bool {
        URL_SAFE_NO_PAD
            .decode(signature)
            .is_ok_and(|sig| self.mac(capsule_id, expires).verify_slice(&sig).is_ok())
    }
}

/// A signed download link and when it stops working.
#[derive(Clone, Debug)]
pub struct Link {
    pub url: String,
    pub until: DateTime<Utc>,
}

/// A file being written to blob storage. Dropped unfinished (a refused or abandoned
/// upload), it is aborted and what was written deleted.
pub struct Upload {
    writer: Option<WriteMultipart>,
    /// The local file to flush to disk once written.
    sync: Option<std::path::PathBuf>,
    blob: String,
    bytes: u64,
}

impl Upload {
    /// Append `chunk`, waiting while a part is on its way to the store.
    pub async fn write(&mut self, chunk: &[u8]) -> Result<(), CapsuleError> {
        let Some(writer) = self.writer.as_mut() else {
            return Ok(());
        };
        writer.wait_for_capacity(1).await.map_err(blob_error)?;
        writer.write(chunk);
        self.bytes += chunk.len() as u64;
        Ok(())
    }

    /// Bytes written so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Finish the file; returns where it is kept.
    pub async fn finish(mut self) -> Result<String, CapsuleError> {
        if let Some(writer) = self.writer.take() {
            writer.finish().await.map_err(blob_error)?;
        }
        if let Some(path) = self.sync.take() {
            flush_to_disk(path)
                .await
                .map_err(|e| CapsuleError::Blob(format!("flushing the file to disk: {e}")))?;
        }
        Ok(std::mem::take(&mut self.blob))
    }

    /// Give the file up, deleting what was written.
    pub async fn abort(mut self) {
        if let Some(writer) = self.writer.take() {
            abort_writer(writer, std::mem::take(&mut self.blob)).await;
        }
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        if let Some(writer) = self.writer.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(abort_writer(writer, std::mem::take(&mut self.blob)));
        }
    }
}

async fn abort_writer(writer: WriteMultipart, blob: String) {
    if let Err(error) = writer.abort().await {
        tracing::warn!(%error, %blob, "an abandoned upload could not be aborted");
    }
}

/// The names of partial upload files (`<name>#<digits>`) in `dir` last written before
/// `cutoff`.
fn partial_uploads(dir: &std::path::Path, cutoff: DateTime<Utc>) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let (_, suffix) = name.split_once('#')?;
            let partial = !suffix.is_empty() && suffix.bytes().all(|b| b.is_ascii_digit());
            let written: DateTime<Utc> = entry.metadata().ok()?.modified().ok()?.into();
            (partial && written < cutoff).then_some(name)
        })
        .collect()
}

/// Flush a local file and its directory entry to disk: an upload acknowledged is kept
/// through a power cut, as the event naming it is.
async fn flush_to_disk(path: std::path::PathBuf) -> std::io::Result<()> {
    tokio::task::spawn_blocking(move || {
        std::fs::File::open(&path)?.sync_all()?;
        if let Some(dir) = path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    })
    .await
    .map_err(std::io::Error::other)?
}

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

/// The name a file downloads as, from what the uploader gave: the last path segment (a
/// browser may send `C:\fakepath\…`), without control characters or the invisible ones
/// that reorder or hide text (`invoice\u{202e}fdp.exe` would show as `invoiceexe.pdf`),
/// at most 255 characters; `file` when nothing is left.
pub fn clean_file_name(raw: &str) -> String {
    let invisible = |c: char| {
        matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2060}'..='\u{2069}'
            | '\u{061c}' | '\u{feff}' | '\u{00ad}')
    };
    let base = raw.rsplit(['/', '\\']).next().unwrap_or_default();
    let name: String = base
        .chars()
        .filter(|&c| !c.is_control() && !invisible(c))
        .take(MAX_FILE_NAME_CHARS)
        .collect();
    let name = name.trim();
    if name.is_empty() || name == "." || name == ".." {
        "file".to_owned()
    } else {
        name.to_owned()
    }
}

/// Characters escaped in a path segment.
const PATH_SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

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

/// The key download links are signed with: `configured` (`CAIRN_LINK_KEY`) if given,
/// else one kept in the event store, made by the first process that needs it.
pub async fn link_key(
    events: &dyn EventStore,
    configured: Option<&str>,
) -> Result<Vec<u8>, StoreError> {
    if let Some(key) = configured {
        return Ok(key.as_bytes().to_vec());
    }
    for _ in 0..2 {
        let stream = events.read_stream(capsule::LINK_KEY_STREAM).await?;
        if let Some(first) = stream.first() {
            let created =
                LinkKeyCreated::decode(first).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            return URL_SAFE_NO_PAD
                .decode(created.key)
                .map_err(|e| StoreError::Corrupt(format!("the download-link key: {e}")));
        }
        let key: [u8; 32] = rand::random();
        let created = LinkKeyCreated {
            key: URL_SAFE_NO_PAD.encode(key),
        };
        let append = events
            .append(AppendRequest::new(
                capsule::LINK_KEY_STREAM,
                ExpectedVersion::NoStream,
                vec![NewEvent::new(&created, Capsules::metadata("cairn"))],
            ))
            .await;
        match append {
            Ok(_) => return Ok(key.to_vec()),
            // Another process made one first: use that.
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(StoreError::Corrupt(
        "the download-link key could be neither read nor made".to_owned(),
    ))
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
    (
        status,
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        words.to_owned(),
    )
        .into_response()
}

/// A capsule's file, through a signed link from its download page or
/// `/api/downloadlink`. Takes one `Range` (resuming a large download).
#[utoipa::path(get, path = "/capsules/{id}/file/{name}", tag = "capsule pages",
    params(
        ("id" = String, Path, description = "The capsule's id"),
        ("name" = String, Path, description = "The file's name (not checked)"),
        ("expires" = i64, Query, description = "When the link stops working, in seconds since the Unix epoch"),
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
    Query(signed): Query<Signed>,
    headers: HeaderMap,
) -> Response {
    let files = &capsules.files;
    let id = path.map(|Path((id, _))| id).unwrap_or_default();
    let (Ok(capsule_id), Ok(expires)) = (capsule::parse_id(&id), signed.expires.parse::<i64>())
    else {
        return refuse(StatusCode::FORBIDDEN, "This download link is not valid.");
    };
    if !files.verify(capsule_id, expires, &signed.signature) {
        return refuse(StatusCode::FORBIDDEN, "This download link is not valid.");
    }
    let page = format!(
        "{}/download/{capsule_id}",
        capsules.links().public_url.trim_end_matches('/')
    );
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
    fn file_names_are_cleaned() {
        assert_eq!(clean_file_name("C:\\fakepath\\report.pdf"), "report.pdf");
        assert_eq!(clean_file_name("../../etc/passwd"), "passwd");
        assert_eq!(clean_file_name("a\u{0}b\nc.txt"), "abc.txt");
        assert_eq!(clean_file_name("invoice\u{202e}fdp.exe"), "invoicefdp.exe");
        assert_eq!(clean_file_name(""), "file");
        assert_eq!(clean_file_name(".."), "file");
        assert_eq!(clean_file_name(&"é".repeat(300)).chars().count(), 255);
    }

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

    #[test]
    fn links_are_signed() {
        let files = Files::new(
            Arc::new(object_store::memory::InMemory::new()),
            b"0123456789abcdef0123456789abcdef",
        );
        let id = Uuid::from_u128(1);
        let mac = URL_SAFE_NO_PAD.encode(files.mac(id, 1_000).finalize().into_bytes());
        assert!(files.verify(id, 1_000, &mac));
        assert!(!files.verify(id, 1_001, &mac), "the expiry is signed");
        assert!(
            !files.verify(Uuid::from_u128(2), 1_000, &mac),
            "so is the capsule"
        );
        assert!(!files.verify(id, 1_000, "not-base64!"));
    }
}
