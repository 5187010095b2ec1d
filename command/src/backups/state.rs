//! Services, resources and stored contents as their events tell them: the folds the
//! decisions are made on.

use std::collections::{BTreeSet, HashMap};

use cairn_events::domain::backup::{
    ApiKeyCreated, ApiKeyRevoked, ApiKeyUsed, BackupDeleted, BackupMissed, BackupStored,
    BackupsResumed, BlobDiscarded, BlobReferenced, BlobReleased, ResourceAdded, ResourceCreated,
    ResourceDeleted, ResourceRemoved, ResourceSettings, ResourceUpdated, ServiceCreated,
    ServiceDeleted, ServiceSettings, ServiceUpdated, UploadsRefused,
};
use cairn_events::{DecodeError, DomainEvent, Envelope};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// An API key of a service (its hash only).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKey {
    pub key_id: Uuid,
    pub name: String,
    pub hash: String,
    pub created_at: DateTime<Utc>,
    pub last_used: Option<DateTime<Utc>>,
}

/// A service as its stream tells it (kept in snapshots: see [`Fold`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceState {
    pub service_id: Uuid,
    pub owner: Uuid,
    pub settings: ServiceSettings,
    /// The key its webhook calls are signed with.
    pub webhook_secret: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Live keys, oldest first (revoked ones are gone).
    pub keys: Vec<ApiKey>,
    /// Its resources, oldest first.
    pub resources: Vec<Uuid>,
    pub deleted: bool,
    pub version: i64,
}

impl ServiceState {
    /// Fold a service's stream; `None` for an empty one.
    pub fn of(events: &[Envelope]) -> Result<Option<Self>, DecodeError> {
        let Some((first, rest)) = events.split_first() else {
            return Ok(None);
        };
        let created = ServiceCreated::decode(first)?;
        let mut state = ServiceState {
            service_id: created.service_id,
            owner: created.owner,
            settings: created.settings,
            webhook_secret: created.webhook_secret,
            created_at: first.occurred_at,
            updated_at: first.occurred_at,
            keys: Vec::new(),
            resources: Vec::new(),
            deleted: false,
            version: first.version,
        };
        for event in rest {
            state.apply(event)?;
        }
        Ok(Some(state))
    }

    /// Fold one more event of the service's stream in.
    pub fn apply(&mut self, event: &Envelope) -> Result<(), DecodeError> {
        let state = self;
        state.version = event.version;
        let at = event.occurred_at;
        {
            match event.event_type.as_str() {
                ServiceUpdated::TYPE => {
                    state.settings = ServiceUpdated::decode(event)?.settings;
                    state.updated_at = at;
                }
                ServiceDeleted::TYPE => state.deleted = true,
                ApiKeyCreated::TYPE => {
                    let created = ApiKeyCreated::decode(event)?;
                    state.keys.push(ApiKey {
                        key_id: created.key_id,
                        name: created.name,
                        hash: created.hash,
                        created_at: at,
                        last_used: None,
                    });
                }
                ApiKeyRevoked::TYPE => {
                    let revoked = ApiKeyRevoked::decode(event)?;
                    state.keys.retain(|k| k.key_id != revoked.key_id);
                }
                ApiKeyUsed::TYPE => {
                    let used = ApiKeyUsed::decode(event)?;
                    if let Some(key) = state.keys.iter_mut().find(|k| k.key_id == used.key_id) {
                        key.last_used = Some(at);
                    }
                }
                ResourceAdded::TYPE => state
                    .resources
                    .push(ResourceAdded::decode(event)?.resource_id),
                ResourceRemoved::TYPE => {
                    let removed = ResourceRemoved::decode(event)?;
                    state.resources.retain(|r| *r != removed.resource_id);
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The live key whose hash is `hash`.
    pub fn key_with_hash(&self, hash: &str) -> Option<&ApiKey> {
        self.keys.iter().find(|k| k.hash == hash)
    }
}

/// A fold of a stream the write side keeps snapshots of: a snapshot is its serialized
/// shape, versioned by [`Fold::SNAPSHOT`] (change the fold or the fields, change the name).
pub trait Fold: Serialize + serde::de::DeserializeOwned + Sized {
    /// The name its snapshots are kept under.
    const SNAPSHOT: &'static str;
    /// Fold a whole stream; `None` for an empty one.
    fn fold(events: &[Envelope]) -> Result<Option<Self>, DecodeError>;
    /// Fold one more event in.
    fn fold_in(&mut self, event: &Envelope) -> Result<(), DecodeError>;
    /// The version of the last event folded in.
    fn version(&self) -> i64;
}

impl Fold for ServiceState {
    const SNAPSHOT: &'static str = "service-v1";
    fn fold(events: &[Envelope]) -> Result<Option<Self>, DecodeError> {
        Self::of(events)
    }
    fn fold_in(&mut self, event: &Envelope) -> Result<(), DecodeError> {
        self.apply(event)
    }
    fn version(&self) -> i64 {
        self.version
    }
}

impl Fold for ResourceState {
    const SNAPSHOT: &'static str = "resource-v1";
    fn fold(events: &[Envelope]) -> Result<Option<Self>, DecodeError> {
        Self::of(events)
    }
    fn fold_in(&mut self, event: &Envelope) -> Result<(), DecodeError> {
        self.apply(event)
    }
    fn version(&self) -> i64 {
        self.version
    }
}

/// A backup a resource keeps.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backup {
    pub stored: BackupStored,
    pub created_at: DateTime<Utc>,
}

/// Refused uploads of one reason.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusals {
    /// When the owner was last told.
    pub last_notice: Option<DateTime<Utc>>,
    /// How many were refused since (recorded, not told).
    pub since_notice: u32,
}

/// A resource as its stream tells it (kept in snapshots: see [`Fold`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceState {
    pub resource_id: Uuid,
    pub service_id: Uuid,
    pub owner: Uuid,
    pub settings: ResourceSettings,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// The backups it keeps, oldest first.
    pub backups: Vec<Backup>,
    /// When its last backup arrived (kept after the backup itself goes).
    pub last_backup_at: Option<DateTime<Utc>>,
    /// Refused uploads, by reason (`bad_key`, `ip_blocked`).
    pub refusals: HashMap<String, Refusals>,
    /// The expected backup found missing, until one arrives.
    pub missed: Option<DateTime<Utc>>,
    pub deleted: bool,
    pub version: i64,
}

impl ResourceState {
    /// Fold a resource's stream; `None` for an empty one.
    pub fn of(events: &[Envelope]) -> Result<Option<Self>, DecodeError> {
        let Some((first, rest)) = events.split_first() else {
            return Ok(None);
        };
        let created = ResourceCreated::decode(first)?;
        let mut state = ResourceState {
            resource_id: created.resource_id,
            service_id: created.service_id,
            owner: created.owner,
            settings: created.settings,
            created_at: first.occurred_at,
            updated_at: first.occurred_at,
            backups: Vec::new(),
            last_backup_at: None,
            refusals: HashMap::new(),
            missed: None,
            deleted: false,
            version: first.version,
        };
        for event in rest {
            state.apply(event)?;
        }
        Ok(Some(state))
    }

    /// Fold one more event of the resource's stream in.
    pub fn apply(&mut self, event: &Envelope) -> Result<(), DecodeError> {
        let state = self;
        state.version = event.version;
        let at = event.occurred_at;
        {
            match event.event_type.as_str() {
                BackupMissed::TYPE => state.missed = Some(BackupMissed::decode(event)?.due_at),
                BackupsResumed::TYPE => state.missed = None,
                UploadsRefused::TYPE => {
                    let refused = UploadsRefused::decode(event)?;
                    let refusals = state.refusals.entry(refused.reason).or_default();
                    if refused.notified {
                        refusals.last_notice = Some(at);
                        refusals.since_notice = 0;
                    } else {
                        refusals.since_notice += refused.count;
                    }
                }
                ResourceUpdated::TYPE => {
                    state.settings = ResourceUpdated::decode(event)?.settings;
                    state.updated_at = at;
                }
                ResourceDeleted::TYPE => state.deleted = true,
                BackupStored::TYPE => {
                    state.backups.push(Backup {
                        stored: BackupStored::decode(event)?,
                        created_at: at,
                    });
                    state.last_backup_at = Some(at);
                }
                BackupDeleted::TYPE => {
                    let deleted = BackupDeleted::decode(event)?;
                    state
                        .backups
                        .retain(|b| b.stored.backup_id != deleted.backup_id);
                }
                _ => {}
            }
        }
        Ok(())
    }

    pub fn backup(&self, backup_id: Uuid) -> Option<&Backup> {
        self.backups
            .iter()
            .find(|b| b.stored.backup_id == backup_id)
    }
}

/// One content within a service: where it is kept and which backups refer to it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BlobState {
    /// Where the content is kept; `None` before the first upload of it, and once it was
    /// discarded.
    pub blob: Option<String>,
    pub refs: BTreeSet<Uuid>,
    /// 0 for a stream not yet written.
    pub version: i64,
}

impl BlobState {
    pub fn of(events: &[Envelope]) -> Result<Self, DecodeError> {
        let mut state = BlobState::default();
        for event in events {
            state.version = event.version;
            match event.event_type.as_str() {
                BlobReferenced::TYPE => {
                    let referenced = BlobReferenced::decode(event)?;
                    state.blob = Some(referenced.blob);
                    state.refs.insert(referenced.backup_id);
                }
                BlobReleased::TYPE => {
                    state.refs.remove(&BlobReleased::decode(event)?.backup_id);
                }
                BlobDiscarded::TYPE => {
                    BlobDiscarded::decode(event)?;
                    state.blob = None;
                    state.refs.clear();
                }
                _ => {}
            }
        }
        Ok(state)
    }
}
