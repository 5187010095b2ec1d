//! `cairn import BUNDLE --user NAME`: a bundle from any Cairn read back into this one,
//! under one of its users, so leaving and coming back loses nothing.
//!
//! Every file is checked against the manifest's SHA-256 before anything is written, and a
//! file the manifest does not list is refused. Each
//! message keeps its id (and so its time and its place in every listing); a message
//! whose id is here already is left as it is, so importing a bundle twice writes it once.
//! Messages are appended 500 streams to a commit.
//!
//! This version brings the messages back. The rest of a bundle is for keeping and reading:
//! backup services cannot come back whole (their API keys are kept only as hashes, so a
//! cron job's key would not work anyway) and are made again with `cairn service add`;
//! capsules are not re-sent (a bundle holds their status and history, as the API shows
//! them, not their text or addresses).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use cairn_events::domain::message::{self, Hashtag, MessagePosted};
use cairn_events::{AppendRequest, ExpectedVersion, Metadata, NewEvent, StoreError, StreamEvents};
use sha2::{Digest, Sha256};
use ulid::Ulid;

use super::content::MessageRecord;
use super::zip::{self, Listed};
use super::{ExportError, Exports};
use crate::users::User;

/// Messages appended in one commit.
const BATCH: usize = 500;

/// What an import wrote.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Imported {
    pub messages: u64,
    /// Messages already here (by id), left as they were.
    pub messages_present: u64,
}

fn bad(why: impl Into<String>) -> ExportError {
    ExportError::Invalid(super::decide::Invalid {
        field: "bundle",
        message: why.into(),
    })
}

/// A bundle on disk: its entries, read as they are needed.
struct Bundle {
    file: std::fs::File,
    entries: Vec<Listed>,
}

impl Bundle {
    fn open(path: &Path) -> Result<Self, ExportError> {
        let mut file =
            std::fs::File::open(path).map_err(|e| bad(format!("{}: {e}", path.display())))?;
        let len = file
            .metadata()
            .map_err(|e| bad(format!("{}: {e}", path.display())))?
            .len();
        let mut read_at = |at: u64, n: usize| -> std::io::Result<Vec<u8>> {
            file.seek(SeekFrom::Start(at))?;
            let mut buf = vec![0; n];
            file.read_exact(&mut buf)?;
            Ok(buf)
        };
        let entries =
            zip::list(len, &mut read_at).map_err(|e| bad(format!("not a bundle: {e}")))?;
        Ok(Bundle { file, entries })
    }

    /// A reader of one entry's content.
    fn reader(&self, entry: &Listed) -> Result<Box<dyn Read + '_>, ExportError> {
        let mut file = &self.file;
        file.seek(SeekFrom::Start(entry.data_offset))
            .map_err(|e| bad(e.to_string()))?;
        let raw = file.take(entry.stored_bytes);
        Ok(if entry.deflated {
            Box::new(flate2::read::DeflateDecoder::new(raw))
        } else {
            Box::new(raw)
        })
    }

    /// The SHA-256 of one entry's content.
    fn sha256(&self, entry: &Listed) -> Result<String, ExportError> {
        let mut reader = self.reader(entry)?;
        let mut hash = Sha256::new();
        let mut buf = vec![0; 64 * 1024];
        loop {
            let n = reader
                .read(&mut buf)
                .map_err(|e| bad(format!("{} does not read: damaged? ({e})", entry.name)))?;
            if n == 0 {
                return Ok(crate::blobs::hex(&hash.finalize()));
            }
            hash.update(&buf[..n]);
        }
    }
}

impl Exports {
    /// Import the bundle at `path` under `user`.
    pub async fn import(&self, path: &Path, user: &User) -> Result<Imported, ExportError> {
        let bundle = Bundle::open(path)?;
        let by_name: HashMap<&str, &Listed> = bundle
            .entries
            .iter()
            .map(|e| (e.name.as_str(), e))
            .collect();
        let manifest = by_name
            .get("manifest.json")
            .ok_or_else(|| bad("the bundle has no manifest.json"))?;
        let mut text = String::new();
        bundle
            .reader(manifest)?
            .read_to_string(&mut text)
            .map_err(|e| bad(format!("manifest.json: {e}")))?;
        let manifest: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| bad(format!("manifest.json: {e}")))?;
        if manifest["format"] != "cairn-export/1" {
            return Err(bad("not a Cairn bundle this version reads"));
        }
        let files = manifest["files"]
            .as_array()
            .ok_or_else(|| bad("the manifest lists no files"))?;
        let listed: std::collections::HashSet<&str> =
            files.iter().filter_map(|f| f["path"].as_str()).collect();
        if let Some(extra) = bundle
            .entries
            .iter()
            .find(|e| e.name != "manifest.json" && !listed.contains(e.name.as_str()))
        {
            return Err(bad(format!(
                "{} is in the bundle, not in its manifest",
                extra.name
            )));
        }
        for file in files {
            let name = file["path"].as_str().unwrap_or_default();
            let entry = by_name
                .get(name)
                .ok_or_else(|| bad(format!("{name} is in the manifest, not in the bundle")))?;
            if bundle.sha256(entry)? != file["sha256"].as_str().unwrap_or_default() {
                return Err(bad(format!("{name} is not as the manifest says: damaged?")));
            }
        }

        let mut imported = Imported::default();
        let mut days: Vec<&Listed> = bundle
            .entries
            .iter()
            .filter(|e| e.name.starts_with("messages/") && e.name.ends_with(".jsonl"))
            .collect();
        days.sort_by(|a, b| a.name.cmp(&b.name));
        for entry in days {
            let reader = BufReader::new(bundle.reader(entry)?);
            let mut batch = Vec::with_capacity(BATCH);
            for line in reader.lines() {
                let line = line.map_err(|e| bad(format!("{}: {e}", entry.name)))?;
                if line.trim().is_empty() {
                    continue;
                }
                let record: MessageRecord = serde_json::from_str(&line).map_err(|e| {
                    bad(format!("{}: a message that does not read: {e}", entry.name))
                })?;
                batch.push(posted(record, user).map_err(|e| bad(format!("{}: {e}", entry.name)))?);
                if batch.len() == BATCH {
                    self.append_messages(std::mem::take(&mut batch), user, &mut imported)
                        .await?;
                }
            }
            self.append_messages(batch, user, &mut imported).await?;
        }
        Ok(imported)
    }

    /// Append messages in one commit; if one is here already, one at a time, skipping it.
    async fn append_messages(
        &self,
        batch: Vec<MessagePosted>,
        user: &User,
        imported: &mut Imported,
    ) -> Result<(), ExportError> {
        let metadata = Metadata {
            actor: Some(user.id.to_string()),
            ..Metadata::default()
        };
        let request = |m: &MessagePosted| StreamEvents {
            stream_id: message::stream_id(m.message_id, user.id, None),
            expected: ExpectedVersion::NoStream,
            events: vec![NewEvent::at(
                m,
                metadata.clone(),
                chrono::DateTime::<chrono::Utc>::from(m.message_id.datetime()),
            )],
        };
        let Some((first, rest)) = batch.split_first() else {
            return Ok(());
        };
        let first = request(first);
        let mut append = AppendRequest::new(first.stream_id, first.expected, first.events);
        append.also = rest.iter().map(request).collect();
        match self.events.append(append).await {
            Ok(_) => {
                imported.messages += batch.len() as u64;
                return Ok(());
            }
            Err(StoreError::Conflict { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        for m in &batch {
            let one = request(m);
            match self
                .events
                .append(AppendRequest::new(one.stream_id, one.expected, one.events))
                .await
            {
                Ok(_) => imported.messages += 1,
                Err(StoreError::Conflict { .. }) => imported.messages_present += 1,
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}

/// A message of a bundle, as `user` posting it.
fn posted(record: MessageRecord, user: &User) -> Result<MessagePosted, String> {
    let message_id: Ulid = record
        .id
        .parse()
        .map_err(|_| format!("{:?} is not a message id", record.id))?;
    message::validate_text(&record.text)?;
    let hashtags = record
        .hashtags
        .into_iter()
        .map(Hashtag::try_from)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(MessagePosted {
        message_id,
        user_id: user.id,
        user_name: user.name.clone(),
        text: record.text,
        hashtags,
    })
}
