//! What an export holds, read from the event store and shaped as the API shows it: a
//! message as `GET /message` answers it, a service, resource or backup as the backup
//! routes do, a capsule as `GET /capsules/{id}`. Every destination writes these.

use cairn_events::domain::capsule::{self, CapsuleSubmitted};
use cairn_events::domain::message::{self, MessagePosted};
use cairn_events::{DomainEvent, Position};
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

/// A user's messages, read a page at a time ([`Exports::messages`]).
pub struct MessagePages<'a> {
    exports: &'a Exports,
    actor: String,
    day: chrono::NaiveDate,
    after: Position,
    last: Position,
}

impl MessagePages<'_> {
    /// The next page; `None` after the last.
    pub async fn next(&mut self) -> Result<Option<Vec<MessageRecord>>, ExportError> {
        let events = self
            .exports
            .events
            .read_by_actor(&self.actor, message::CATEGORY, self.after, self.last, PAGE)
            .await?;
        let Some(end) = events.last().map(|e| e.position) else {
            return Ok(None);
        };
        self.after = end;
        let mut records = Vec::with_capacity(events.len());
        for event in &events {
            if event.event_type == MessagePosted::TYPE && event.occurred_at.date_naive() == self.day
            {
                records.push(MessageRecord::from(MessagePosted::decode(event)?));
            }
        }
        Ok(Some(records))
    }
}

impl Exports {
    /// The user's messages of `day` (UTC) between two log positions (its span, which may
    /// hold other days' too), a page at a time, in log order.
    pub fn messages(
        &self,
        user: Uuid,
        day: chrono::NaiveDate,
        first: Position,
        last: Position,
    ) -> MessagePages<'_> {
        MessagePages {
            exports: self,
            actor: user.to_string(),
            day,
            after: first - 1,
            last,
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
