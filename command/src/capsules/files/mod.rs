//! Capsule files: streamed into blob storage as they are uploaded (never held whole in
//! memory), served back through Cairn's own signed, expiring links, and deleted when the
//! capsule is cancelled or expires, or once its delivery's retention ends.
//!
//! `mod.rs` names capsule files in the blob store ([`crate::blobs`]) and lists what the
//! sweep looks at, `links.rs` the signed links and the key they are signed with, `download.rs` the route
//! that serves a file through such a link.

mod download;
mod links;

pub use download::{FilesApi, router};
pub use links::{Link, link_key};

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use uuid::Uuid;

use super::CapsuleError;
use crate::blobs::{BlobError, Blobs, Upload};

/// Longest file name kept, in characters.
const MAX_FILE_NAME_CHARS: usize = 255;
/// Where capsule files are kept in the blob store.
const PREFIX: &str = "capsules";

/// Where capsule files are kept and how links to them are made.
#[derive(Clone)]
pub struct Files {
    pub blobs: Blobs,
    key: Arc<[u8]>,
    /// How long a download link works.
    pub link_ttl: Duration,
}

impl std::fmt::Debug for Files {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Files")
            .field("blobs", &self.blobs)
            .field("link_ttl", &self.link_ttl)
            .finish_non_exhaustive()
    }
}

impl From<BlobError> for CapsuleError {
    fn from(error: BlobError) -> Self {
        CapsuleError::Blob(error.0)
    }
}

impl Files {
    /// Files in `blobs`, links signed with `key` (at least 32 bytes), working 12 hours.
    pub fn new(blobs: Blobs, key: &[u8]) -> Self {
        Files {
            blobs,
            key: key.into(),
            link_ttl: Duration::hours(12),
        }
    }

    /// Start writing the file of `capsule_id`: named by the capsule (the sweep reads it
    /// back) and by the upload, so a retried submission never writes over the first
    /// one's file.
    pub async fn upload(&self, capsule_id: Uuid) -> Result<Upload, CapsuleError> {
        let blob = format!("{PREFIX}/{capsule_id}.{:032x}", rand::random::<u128>());
        Ok(self.blobs.upload(blob).await?)
    }

    /// Delete a file no capsule keeps, logging a failure (the sweep gets it later).
    pub async fn delete_quietly(&self, blob: &str) {
        self.blobs
            .delete_quietly(blob, "the sweep will delete it")
            .await;
    }

    /// Delete a kept file; one already gone is not an error.
    pub async fn delete(&self, blob: &str) -> Result<(), CapsuleError> {
        Ok(self.blobs.delete(blob).await?)
    }

    /// Files under `capsules/` last written before `cutoff`: where each is kept and the
    /// capsule its name says it belongs to (`None` for the partial files of uploads cut
    /// off by a crash).
    pub async fn written_before(
        &self,
        cutoff: DateTime<Utc>,
    ) -> Result<Vec<(String, Option<Uuid>)>, CapsuleError> {
        let stale = self.blobs.written_before(PREFIX, cutoff).await?;
        Ok(stale
            .into_iter()
            .map(|blob| {
                let name = blob.rsplit('/').next().unwrap_or_default();
                let id = (!name.contains('#'))
                    .then(|| name.split('.').next())
                    .flatten()
                    .and_then(|n| Uuid::parse_str(n).ok());
                (blob, id)
            })
            .collect())
    }

    /// Delete what [`Files::written_before`] listed, partial uploads included.
    pub async fn delete_stale(&self, blob: &str) -> Result<(), CapsuleError> {
        Ok(self.blobs.delete_stale(blob).await?)
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
