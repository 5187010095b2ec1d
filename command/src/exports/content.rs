//! What an export holds, read from the event store and shaped as the API shows it: a
//! message as `GET /message` answers it, a service, resource or backup as the backup
//! routes do, a capsule as `GET /capsules/{id}`. Every destination writes these.

use std::sync::Arc;

use cairn_events::domain::capsule::{self, CapsuleSubmitted};
use cairn_events::domain::message::{self, MessagePosted};
use cairn_events::{DomainEvent, Envelope, EventStore, Position, StoreError};
use chrono::SecondsFormat;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{ExportError, Exports};
use crate::backups::api::{BackupView, ResourceData, ServiceData, backup_view, resource_data};
use crate::capsules::api::{CapsuleData, capsule_data};

/// How many messages are read at a time.
const PAGE: usize = 2000;

/// A message, as `GET /message` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageRecord {
    pub id: String,
    pub user: UserRecord,
    pub text: String,
    pub hashtags: Vec<String>,
    pub created_at: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    pub id: String,
    pub name: String,
}

impl From<MessagePosted> for MessageRecord {
    fn from(m: MessagePosted) -> Self {
        let created = chrono::DateTime::<chrono::Utc>::from(m.message_id.datetime());
        MessageRecord {
            id: m.message_id.to_string(),
            user: UserRecord {
                id: m.user_id.to_string(),
                name: m.user_name,
            },
            text: m.text,
            hashtags: m.hashtags.into_iter().map(String::from).collect(),
            created_at: created.to_rfc3339_opts(SecondsFormat::Millis, true),
        }
    }
}

/// A service with its resources and their backups, newest backup first.
pub(crate) struct ServiceRecords {
    pub id: Uuid,
    pub service: ServiceData,
    pub name: String,
    pub resources: Vec<(ResourceData, Vec<BackupView>)>,
    /// Each backup's file: its id, name and blob.
    pub files: Vec<FileRef>,
}

/// A backup's stored file.
#[derive(Clone, Debug)]
pub struct FileRef {
    pub backup_id: Uuid,
    pub resource: String,
    pub file_name: String,
    pub blob: String,
    pub bytes: u64,
    pub sha256: String,
}

impl FileRef {
    /// Where it goes in the export.
    pub fn path(&self) -> String {
        format!("files/{}/{}", self.backup_id, safe_name(&self.file_name))
    }
}

/// A file name with nothing that could leave its folder.
fn safe_name(name: &str) -> String {
    let cleaned: String = name
        .chars()
        .map(|c| {
            if c == '/' || c == '\\' || c.is_control() {
                '_'
            } else {
                c
            }
        })
        .collect();
    match cleaned.trim_matches('.') {
        "" => "file".to_owned(),
        _ => cleaned,
    }
}

/// A user's messages, read a page at a time ([`Exports::messages`]); the next page is
/// read while the caller writes this one.
pub struct MessagePages {
    events: Arc<dyn EventStore>,
    actor: String,
    /// The days whose messages are wanted: others in the span are skipped.
    days: Vec<chrono::NaiveDate>,
    after: Position,
    last: Position,
    ahead: Option<tokio::task::JoinHandle<Result<Vec<Envelope>, StoreError>>>,
}

impl MessagePages {
    fn read(&self) -> tokio::task::JoinHandle<Result<Vec<Envelope>, StoreError>> {
        let (events, actor) = (self.events.clone(), self.actor.clone());
        let (after, last) = (self.after, self.last);
        tokio::spawn(async move {
            events
                .read_by_actor(&actor, message::CATEGORY, after, last, PAGE)
                .await
        })
    }

    /// The next page, each message with its day; `None` after the last.
    pub async fn next(
        &mut self,
    ) -> Result<Option<Vec<(chrono::NaiveDate, MessageRecord)>>, ExportError> {
        let reading = match self.ahead.take() {
            Some(reading) => reading,
            None => self.read(),
        };
        let events = reading
            .await
            .map_err(|e| ExportError::Other(format!("reading messages: {e}")))??;
        let Some(end) = events.last().map(|e| e.position) else {
            return Ok(None);
        };
        self.after = end;
        if events.len() == PAGE {
            self.ahead = Some(self.read());
        }
        let mut records = Vec::with_capacity(events.len());
        for event in &events {
            let day = event.occurred_at.date_naive();
            if event.event_type == MessagePosted::TYPE && self.days.contains(&day) {
                records.push((day, MessageRecord::from(MessagePosted::decode(event)?)));
            }
        }
        Ok(Some(records))
    }
}

impl Drop for MessagePages {
    fn drop(&mut self) {
        if let Some(reading) = self.ahead.take() {
            reading.abort();
        }
    }
}

impl Exports {
    /// The user's messages of `days` (UTC) between two log positions (their span, which
    /// may hold other days' too), a page at a time, in log order.
    pub fn messages(
        &self,
        user: Uuid,
        days: &[chrono::NaiveDate],
        first: Position,
        last: Position,
    ) -> MessagePages {
        MessagePages {
            events: self.events.clone(),
            actor: user.to_string(),
            days: days.to_vec(),
            after: first - 1,
            last,
            ahead: None,
        }
    }

    /// The user's backup services, with their resources and backups.
    pub(crate) async fn services(&self, user: Uuid) -> Result<Vec<ServiceRecords>, ExportError> {
        let mut out = Vec::new();
        for service in self.backups.services_of(user).await? {
            let mut resources = Vec::new();
            let mut files = Vec::new();
            for resource in self.backups.resources_of(user, service.service_id).await? {
                let backups = resource
                    .backups
                    .iter()
                    .rev()
                    .map(|b| backup_view(&self.backups, b))
                    .collect();
                files.extend(resource.backups.iter().map(|b| FileRef {
                    backup_id: b.stored.backup_id,
                    resource: resource.settings.name.clone(),
                    file_name: b.stored.file_name.clone(),
                    blob: b.stored.blob.clone(),
                    bytes: b.stored.bytes,
                    sha256: b.stored.sha256.clone(),
                }));
                resources.push((resource_data(&self.backups, &resource), backups));
            }
            out.push(ServiceRecords {
                id: service.service_id,
                name: service.settings.name.clone(),
                service: ServiceData::from(&service),
                resources,
                files,
            });
        }
        Ok(out)
    }

    /// The capsules submitted with the user's token, up to `up_to`, oldest first.
    pub(crate) async fn capsules(
        &self,
        user: Uuid,
        up_to: Position,
    ) -> Result<Vec<CapsuleData>, ExportError> {
        let actor = user.to_string();
        let mut ids = Vec::new();
        let mut after = 0;
        loop {
            let events = self
                .events
                .read_by_actor(&actor, capsule::CATEGORY, after, up_to, PAGE)
                .await?;
            let Some(end) = events.last().map(|e| e.position) else {
                break;
            };
            after = end;
            for event in &events {
                if event.event_type == CapsuleSubmitted::TYPE {
                    ids.push(CapsuleSubmitted::decode(event)?.capsule_id);
                }
            }
        }
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some((state, history)) = self.capsules.load_with_history(id).await? {
                out.push(capsule_data(id, &state, &history));
            }
        }
        Ok(out)
    }
}
