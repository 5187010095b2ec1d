//! Capsule files: streamed into blob storage as they are uploaded (never held whole in
//! memory), served back through Cairn's own signed, expiring links, and deleted when the
//! capsule is cancelled or expires, or once its delivery's retention ends.
//!
//! `mod.rs` keeps the storage (writing, deleting, listing what the sweep looks at),
//! `links.rs` the signed links and the key they are signed with, `download.rs` the route
//! that serves a file through such a link.

mod download;
mod links;

pub use download::{FilesApi, content_disposition, router};
pub use links::{Link, link_key};

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use futures_util::StreamExt;
use object_store::WriteMultipart;
use object_store::{ObjectStore, ObjectStoreExt};
use uuid::Uuid;

use super::CapsuleError;

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
}

impl std::fmt::Debug for Files {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Files")
            .field("store", &self.store.to_string())
            .field("link_ttl", &self.link_ttl)
            .finish_non_exhaustive()
    }
}

/// A blob store failure, as the capsule use cases report it.
fn blob_error(error: object_store::Error) -> CapsuleError {
    CapsuleError::Blob(error.to_string())
}

impl Files {
    /// Files in `store`, links signed with `key` (at least 32 bytes), working 12 hours.
    pub fn new(store: Arc<dyn ObjectStore>, key: &[u8]) -> Self {
        Files {
            store,
            local_dir: None,
            part_bytes: PART_BYTES,
            key: key.into(),
            link_ttl: Duration::hours(12),
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
}
