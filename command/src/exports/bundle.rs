//! The bundle: each step writes its files to the blob store as the zip will hold them
//! (JSON Lines deflated; backup files referred to where they are), and the last step puts
//! the zip together from them with `manifest.json` ([`super::zip`]). A step run twice
//! writes the same blobs again, so a resumed export never holds a file twice.

use std::io::Write as _;

use cairn_events::domain::export::{MessageDay, Part, Step};
use futures_util::{FutureExt, StreamExt, TryStreamExt};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::state::ExportState;
use super::zip::{self, Entry};
use super::{ExportError, Exports};
use crate::blobs::{Blobs, Upload};

/// How much deflated output is gathered before it goes to the store.
const FLUSH_BYTES: usize = 256 * 1024;

/// Days of messages written at once by a bundle step.
const DAYS_AT_ONCE: usize = 2;

/// A file of the bundle being written, deflated, to the blob store.
pub struct PartWriter {
    path: String,
    upload: Upload,
    encoder: flate2::write::DeflateEncoder<Vec<u8>>,
    line: Vec<u8>,
    crc: crc32fast::Hasher,
    sha: Sha256,
    bytes: u64,
    records: u64,
}

impl PartWriter {
    pub async fn new(blobs: &Blobs, blob: String, path: String) -> Result<Self, ExportError> {
        Ok(PartWriter {
            path,
            upload: blobs.upload(blob).await?,
            encoder: flate2::write::DeflateEncoder::new(
                Vec::with_capacity(FLUSH_BYTES * 2),
                flate2::Compression::fast(),
            ),
            line: Vec::with_capacity(4096),
            crc: crc32fast::Hasher::new(),
            sha: Sha256::new(),
            bytes: 0,
            records: 0,
        })
    }

    /// Add raw bytes.
    pub async fn write(&mut self, data: &[u8]) -> Result<(), ExportError> {
        self.crc.update(data);
        self.sha.update(data);
        self.bytes += data.len() as u64;
        self.encoder
            .write_all(data)
            .map_err(|e| ExportError::Destination(format!("compressing: {e}")))?;
        if self.encoder.get_ref().len() >= FLUSH_BYTES {
            let out = std::mem::take(self.encoder.get_mut());
            self.upload.write(&out).await?;
            *self.encoder.get_mut() = out;
            self.encoder.get_mut().clear();
        }
        Ok(())
    }

    /// Add one JSON line.
    pub async fn record(&mut self, record: &impl Serialize) -> Result<(), ExportError> {
        let mut line = std::mem::take(&mut self.line);
        line.clear();
        serde_json::to_writer(&mut line, record)
            .map_err(|e| ExportError::Destination(format!("encoding a record: {e}")))?;
        line.push(b'\n');
        let written = self.write(&line).await;
        self.line = line;
        self.records += 1;
        written
    }

    pub async fn finish(mut self) -> Result<Part, ExportError> {
        let rest = self
            .encoder
            .finish()
            .map_err(|e| ExportError::Destination(format!("compressing: {e}")))?;
        self.upload.write(&rest).await?;
        let written = self.upload.finish().await?;
        Ok(Part {
            path: self.path,
            blob: written.blob,
            bytes: self.bytes,
            stored_bytes: written.bytes,
            deflated: true,
            crc32: self.crc.finalize(),
            sha256: crate::blobs::hex(&self.sha.finalize()),
            records: self.records,
        })
    }
}

/// The zip on its way to the store, with its CRC-32 and SHA-256.
struct ZipOut {
    upload: Upload,
    crc: crc32fast::Hasher,
    sha: Sha256,
}

impl ZipOut {
    async fn put(&mut self, bytes: &[u8]) -> Result<(), ExportError> {
        self.crc.update(bytes);
        self.sha.update(bytes);
        Ok(self.upload.write(bytes).await?)
    }
}

/// Where a bundle's files and its zip are kept.
fn blob_of(export: &ExportState, name: &str) -> String {
    format!("exports/{}/{name}", export.id())
}

/// The blob of a finished bundle.
pub fn zip_blob(export: &ExportState) -> String {
    blob_of(export, "bundle.zip")
}

impl Exports {
    /// Write step `index` of a bundle; the files it wrote.
    pub(super) async fn bundle_step(
        &self,
        export: &ExportState,
        index: usize,
        step: &Step,
    ) -> Result<Vec<Part>, ExportError> {
        let user = export.owner();
        match step {
            Step::Messages { days } => {
                // Two days at a time, each read (a page ahead) and compressed by a task of
                // its own, so both use a core.
                let (exports, export) = (self.clone(), export.clone());
                let writes = days.clone().into_iter().map(move |day| {
                    let (exports, export) = (exports.clone(), export.clone());
                    tokio::spawn(async move { exports.day_part(&export, index, &day).await }).map(
                        |joined| {
                            joined.map_err(|e| ExportError::Other(format!("a day's file: {e}")))?
                        },
                    )
                });
                futures_util::stream::iter(writes)
                    .buffered(DAYS_AT_ONCE)
                    .try_collect()
                    .await
            }
            Step::Backups => {
                let services = self.services(user).await?;
                let mut service_part = self
                    .part(export, index, "services", "services.jsonl")
                    .await?;
                let mut resource_part = self
                    .part(export, index, "resources", "resources.jsonl")
                    .await?;
                let mut backup_part = self.part(export, index, "backups", "backups.jsonl").await?;
                for service in &services {
                    service_part.record(&service.service).await?;
                    for (resource, backups) in &service.resources {
                        resource_part.record(resource).await?;
                        for backup in backups {
                            backup_part.record(backup).await?;
                        }
                    }
                }
                Ok(vec![
                    service_part.finish().await?,
                    resource_part.finish().await?,
                    backup_part.finish().await?,
                ])
            }
            Step::Files { service_id, .. } => {
                let services = self.services(user).await?;
                let mut parts = Vec::new();
                for file in services
                    .iter()
                    .filter(|s| s.id == *service_id)
                    .flat_map(|s| &s.files)
                {
                    // The zip holds the file as it is stored: only its CRC-32 is new.
                    let Some(crc32) = self.crc_of(&file.blob).await? else {
                        continue; // deleted by its retention since the plan
                    };
                    parts.push(Part {
                        path: file.path(),
                        blob: file.blob.clone(),
                        bytes: file.bytes,
                        stored_bytes: file.bytes,
                        deflated: false,
                        crc32,
                        sha256: file.sha256.clone(),
                        records: 1,
                    });
                }
                Ok(parts)
            }
            Step::Capsules => {
                let mut part = self
                    .part(export, index, "capsules", "capsules.jsonl")
                    .await?;
                for capsule in self.capsules(user, export.up_to).await? {
                    part.record(&capsule).await?;
                }
                Ok(vec![part.finish().await?])
            }
            Step::Finish => Ok(vec![self.assemble(export).await?]),
        }
    }

    /// A day of messages, as a file of the bundle.
    async fn day_part(
        &self,
        export: &ExportState,
        index: usize,
        day: &MessageDay,
    ) -> Result<Part, ExportError> {
        let path = format!("messages/{}.jsonl", day.day.format("%Y/%m/%d"));
        let name = format!("messages-{}", day.day);
        let mut part = self.part(export, index, &name, path).await?;
        let mut pages = self.messages(export.owner(), &[day.day], day.first, day.last);
        while let Some(records) = pages.next().await? {
            for (_, record) in &records {
                part.record(record).await?;
            }
        }
        part.finish().await
    }

    async fn part(
        &self,
        export: &ExportState,
        index: usize,
        name: &str,
        path: impl Into<String>,
    ) -> Result<PartWriter, ExportError> {
        PartWriter::new(
            &self.blobs,
            blob_of(export, &format!("parts/{index}-{name}")),
            path.into(),
        )
        .await
    }

    /// The CRC-32 of a stored file; `None` if it is gone.
    async fn crc_of(&self, blob: &str) -> Result<Option<u32>, ExportError> {
        let Some(mut chunks) = self.blobs.chunks(blob).await? else {
            return Ok(None);
        };
        let mut crc = crc32fast::Hasher::new();
        while let Some(chunk) = chunks.next().await {
            crc.update(&chunk?);
        }
        Ok(Some(crc.finalize()))
    }

    /// Put the zip together: every step's files, then `manifest.json`.
    async fn assemble(&self, export: &ExportState) -> Result<Part, ExportError> {
        let manifest = super::manifest(export, &export.parts);
        let manifest = serde_json::to_vec_pretty(&manifest)
            .map_err(|e| ExportError::Destination(format!("encoding the manifest: {e}")))?;
        let mut manifest_part = PartWriter::new(
            &self.blobs,
            blob_of(export, "parts/manifest"),
            "manifest.json".into(),
        )
        .await?;
        manifest_part.write(&manifest).await?;
        let manifest_part = manifest_part.finish().await?;

        let time = zip::dos_time(export.requested_at);
        let mut zip = ZipOut {
            upload: self.blobs.upload(zip_blob(export)).await?,
            crc: crc32fast::Hasher::new(),
            sha: Sha256::new(),
        };
        let mut offset = 0u64;
        let mut entries = Vec::with_capacity(export.parts.len() + 1);
        for part in export.parts.iter().chain(std::iter::once(&manifest_part)) {
            let entry = Entry {
                name: part.path.clone(),
                deflated: part.deflated,
                crc32: part.crc32,
                bytes: part.bytes,
                stored_bytes: part.stored_bytes,
                offset,
            };
            let header = zip::local_header(&entry, time);
            zip.put(&header).await?;
            let mut chunks = self.blobs.chunks(&part.blob).await?.ok_or_else(|| {
                ExportError::Destination(format!("the file {} is gone", part.path))
            })?;
            let mut copied = 0u64;
            while let Some(chunk) = chunks.next().await {
                let chunk = chunk?;
                copied += chunk.len() as u64;
                zip.put(&chunk).await?;
            }
            if copied != part.stored_bytes {
                return Err(ExportError::Destination(format!(
                    "the file {} changed since it was written",
                    part.path
                )));
            }
            offset += header.len() as u64 + copied;
            entries.push(entry);
        }
        let directory = zip::central_directory(&entries, offset, time);
        zip.put(&directory).await?;
        let ZipOut { upload, crc, sha } = zip;
        let written = upload.finish().await?;
        Ok(Part {
            path: format!("cairn-export-{}.zip", export.id()),
            blob: written.blob,
            bytes: written.bytes,
            stored_bytes: written.bytes,
            deflated: false,
            crc32: crc.finalize(),
            sha256: crate::blobs::hex(&sha.finalize()),
            records: entries.len() as u64,
        })
    }

    /// Delete a finished bundle's files (not the backups' own); the zip stays.
    pub(super) async fn delete_parts(&self, export: &ExportState) {
        for part in &export.parts {
            if part.blob.starts_with(&blob_of(export, "parts/")) {
                self.blobs
                    .delete_quietly(&part.blob, "an export's part")
                    .await;
            }
        }
        self.blobs
            .delete_quietly(&blob_of(export, "parts/manifest"), "an export's part")
            .await;
    }
}
