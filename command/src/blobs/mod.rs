//! Blob storage, shared by the jobs that keep files (capsule attachments, backups): a file
//! is streamed into the store as it arrives, never held whole in memory, its SHA-256
//! computed on the way; it is flushed to disk (a local store) before anyone is told it is
//! kept; it is served back with `Range` ([`serve`]). Each job names its own blobs under
//! its own prefix and decides when they go.

mod serve;

pub use serve::{Served, content_disposition, serve};

use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, WriteMultipart};
use sha2::{Digest, Sha256};

/// Bytes buffered before a part goes to the blob store: S3's smallest part is 5 MiB; a
/// local file takes smaller writes, which keeps less of each upload in memory.
const PART_BYTES: usize = 5 * 1024 * 1024;
const LOCAL_PART_BYTES: usize = 1024 * 1024;

/// The blob store failed or could not be reached.
#[derive(Clone, Debug, thiserror::Error)]
#[error("file storage failed: {0}")]
pub struct BlobError(pub String);

impl From<object_store::Error> for BlobError {
    fn from(error: object_store::Error) -> Self {
        BlobError(error.to_string())
    }
}

/// Where files are kept.
#[derive(Clone)]
pub struct Blobs {
    store: Arc<dyn ObjectStore>,
    /// The directory `store` keeps files in, when it is a local one: a finished upload is
    /// flushed to disk before it is acknowledged.
    local_dir: Option<Arc<std::path::Path>>,
    part_bytes: usize,
}

impl std::fmt::Debug for Blobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Blobs")
            .field("store", &self.store.to_string())
            .finish_non_exhaustive()
    }
}

/// A file written whole.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Written {
    /// Where it is kept.
    pub blob: String,
    pub bytes: u64,
    /// Its SHA-256, lowercase hex.
    pub sha256: String,
}

impl Blobs {
    /// Files in `store` (S3 and the like).
    pub fn new(store: Arc<dyn ObjectStore>) -> Self {
        Blobs {
            store,
            local_dir: None,
            part_bytes: PART_BYTES,
        }
    }

    /// Files in a local directory, `store` being a `LocalFileSystem` over `dir`.
    pub fn local(store: Arc<dyn ObjectStore>, dir: &std::path::Path) -> Self {
        Blobs {
            local_dir: Some(dir.into()),
            part_bytes: LOCAL_PART_BYTES,
            ..Blobs::new(store)
        }
    }

    /// Start writing a file kept as `blob`.
    pub async fn upload(&self, blob: String) -> Result<Upload, BlobError> {
        let upload = self.store.put_multipart(&Path::from(blob.as_str())).await?;
        Ok(Upload {
            writer: Some(WriteMultipart::new_with_chunk_size(upload, self.part_bytes)),
            sync: self.local_dir.as_ref().map(|dir| dir.join(&blob)),
            blob,
            bytes: 0,
            hash: Sha256::new(),
        })
    }

    /// A stored file's bytes as they are read; `Ok(None)`: no such file.
    pub async fn chunks(
        &self,
        blob: &str,
    ) -> Result<
        Option<futures_util::stream::BoxStream<'static, Result<axum::body::Bytes, BlobError>>>,
        BlobError,
    > {
        match self.store.get(&Path::from(blob)).await {
            Ok(found) => Ok(Some(
                found
                    .into_stream()
                    .map(|chunk| chunk.map_err(BlobError::from))
                    .boxed(),
            )),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Copy a stored file into `out`; how many bytes. `Ok(None)`: no such file.
    pub async fn copy_to(
        &self,
        blob: &str,
        out: &mut (impl tokio::io::AsyncWrite + Unpin),
    ) -> Result<Option<u64>, BlobError> {
        use tokio::io::AsyncWriteExt;
        let found = match self.store.get(&Path::from(blob)).await {
            Ok(found) => found,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let mut stream = found.into_stream();
        let mut copied = 0;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            out.write_all(&chunk)
                .await
                .map_err(|e| BlobError(e.to_string()))?;
            copied += chunk.len() as u64;
        }
        out.flush().await.map_err(|e| BlobError(e.to_string()))?;
        Ok(Some(copied))
    }

    /// Delete a file; one already gone is not an error.
    pub async fn delete(&self, blob: &str) -> Result<(), BlobError> {
        match self.store.delete(&Path::from(blob)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Delete a file, logging a failure (`why` names what is left behind for later).
    pub async fn delete_quietly(&self, blob: &str, why: &str) {
        if let Err(error) = self.delete(blob).await {
            tracing::warn!(%error, %blob, "a file could not be deleted; {why}");
        }
    }

    /// Files under `prefix` last written before `cutoff`. With a local directory, also
    /// the partial files of uploads cut off by a crash (`<name>#<n>`, which listing skips).
    pub async fn written_before(
        &self,
        prefix: &str,
        cutoff: DateTime<Utc>,
    ) -> Result<Vec<String>, BlobError> {
        let mut listed = self.store.list(Some(&Path::from(prefix)));
        let mut stale = Vec::new();
        while let Some(meta) = listed.next().await {
            let meta = meta?;
            if meta.last_modified < cutoff {
                stale.push(meta.location.to_string());
            }
        }
        if let Some(dir) = &self.local_dir {
            let dir = dir.join(prefix);
            let partial = tokio::task::spawn_blocking(move || partial_uploads(&dir, cutoff))
                .await
                .map_err(|e| BlobError(e.to_string()))?;
            for name in partial {
                let blob = format!("{prefix}/{name}");
                if !stale.contains(&blob) {
                    stale.push(blob);
                }
            }
        }
        Ok(stale)
    }

    /// Delete what [`Blobs::written_before`] listed, partial uploads included.
    pub async fn delete_stale(&self, blob: &str) -> Result<(), BlobError> {
        match (&self.local_dir, blob.contains('#')) {
            (Some(dir), true) => match tokio::fs::remove_file(dir.join(blob)).await {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(BlobError(e.to_string())),
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
    hash: Sha256,
}

impl Upload {
    /// Append `chunk`, waiting while a part is on its way to the store.
    pub async fn write(&mut self, chunk: &[u8]) -> Result<(), BlobError> {
        let Some(writer) = self.writer.as_mut() else {
            return Ok(());
        };
        writer.wait_for_capacity(1).await?;
        writer.write(chunk);
        self.hash.update(chunk);
        self.bytes += chunk.len() as u64;
        Ok(())
    }

    /// Bytes written so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Finish the file.
    pub async fn finish(mut self) -> Result<Written, BlobError> {
        if let Some(writer) = self.writer.take() {
            writer.finish().await?;
        }
        if let Some(path) = self.sync.take() {
            flush_to_disk(path)
                .await
                .map_err(|e| BlobError(format!("flushing the file to disk: {e}")))?;
        }
        let hash = std::mem::take(&mut self.hash).finalize();
        Ok(Written {
            blob: std::mem::take(&mut self.blob),
            bytes: self.bytes,
            sha256: hex(&hash),
        })
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

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::with_capacity(64), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

/// The paths, relative to `dir`, of partial upload files (`<name>#<digits>`) under `dir`
/// (in it or below) last written before `cutoff`.
fn partial_uploads(dir: &std::path::Path, cutoff: DateTime<Utc>) -> Vec<String> {
    let mut found = Vec::new();
    let mut dirs = vec![(dir.to_path_buf(), String::new())];
    while let Some((dir, prefix)) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            let Ok(metadata) = entry.metadata() else {
                continue;
            };
            if metadata.is_dir() {
                dirs.push((entry.path(), format!("{prefix}{name}/")));
                continue;
            }
            let partial = name
                .split_once('#')
                .is_some_and(|(_, n)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
            let written: Option<DateTime<Utc>> = metadata.modified().ok().map(Into::into);
            if partial && written.is_some_and(|at| at < cutoff) {
                found.push(format!("{prefix}{name}"));
            }
        }
    }
    found
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
