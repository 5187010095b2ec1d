//! File backups: services a user owns, their resources (each with its own upload URL), and
//! the backups posted to them.
//!
//! Five kinds of stream:
//! - `service-<id>`: the service's settings, its API keys (hashes only) and which
//!   resources it has;
//! - `resource-<id>`: the resource's settings and every backup stored to it or deleted
//!   from it, so its retention is decided on one stream;
//! - `serviceowner-<user>`: which services a user owns;
//! - `backup-<id>`: which resource a backup is in, so it can be found by its id alone;
//! - `backupblob-<service>.<sha256>`: one content within a service. Identical uploads to a
//!   service share one stored file; this stream counts which backups refer to it, so the
//!   file is deleted exactly when the last of them goes, and an upload never refers to a
//!   file that is being deleted (both append to this stream at the version they read).
//!
//! These are the payloads and the input types inside them; what is allowed is
//! `cairn-command`'s `backups::decide`.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::DomainEvent;
use crate::ip::IpRange;

/// Stream categories.
pub const SERVICE: &str = "service";
pub const RESOURCE: &str = "resource";
pub const BLOB: &str = "backupblob";
pub const OWNER: &str = "serviceowner";
pub const BACKUP: &str = "backup";

/// Longest service or resource name, and longest key name, in characters.
pub const MAX_NAME_CHARS: usize = 100;
/// Longest description, in characters.
pub const MAX_DESCRIPTION_CHARS: usize = 1000;
/// Most entries in an IP allowlist.
pub const MAX_ALLOWLIST: usize = 100;
/// The largest backup a service takes unless it says otherwise: 1 GiB.
pub const DEFAULT_MAX_BACKUP_BYTES: u64 = 1 << 30;

pub fn service_stream(service_id: Uuid) -> String {
    format!("{SERVICE}-{service_id}")
}

pub fn resource_stream(resource_id: Uuid) -> String {
    format!("{RESOURCE}-{resource_id}")
}

/// The stream of a user's services (`serviceowner-<user>`): which services they own.
pub fn owner_stream(owner: Uuid) -> String {
    format!("{OWNER}-{owner}")
}

/// A backup's own stream (`backup-<id>`): where it was recorded, so it can be found by
/// its id alone.
pub fn backup_stream(backup_id: Uuid) -> String {
    format!("{BACKUP}-{backup_id}")
}

/// The stream of one content (by its SHA-256, lowercase hex) within a service.
pub fn blob_stream(service_id: Uuid, sha256: &str) -> String {
    format!("{BLOB}-{service_id}.{sha256}")
}

/// How long a resource's backups are kept. The newest backup of a resource is always kept.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Retention {
    /// Backups older than this many days go.
    Days { days: u32 },
    /// Counts, as restic and borg keep backups: the newest `last`, and the newest of each
    /// of the last `daily` days, `weekly` weeks and `monthly` months that have one (UTC).
    Counts {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        last: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        daily: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        weekly: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        monthly: Option<u32>,
    },
}

impl Retention {
    /// Dome's choices and any number of days: `1w` (7 days), `1m` (30), `3m` (90), `14`
    /// or `14d`.
    pub fn parse(raw: &str) -> Option<Self> {
        let raw = raw.trim().to_ascii_lowercase();
        let days = match raw.as_str() {
            "1w" => 7,
            "1m" => 30,
            "3m" => 90,
            other => other.strip_suffix('d').unwrap_or(other).parse().ok()?,
        };
        (1..=36_500)
            .contains(&days)
            .then_some(Retention::Days { days })
    }

    /// How it reads in answers: `30d`, or the counts.
    pub fn label(&self) -> String {
        match self {
            Retention::Days { days } => format!("{days}d"),
            Retention::Counts {
                last,
                daily,
                weekly,
                monthly,
            } => [
                ("last", last),
                ("daily", daily),
                ("weekly", weekly),
                ("monthly", monthly),
            ]
            .iter()
            .filter_map(|(name, n)| n.map(|n| format!("keep_{name}={n}")))
            .collect::<Vec<_>>()
            .join(","),
        }
    }
}

impl Default for Retention {
    fn default() -> Self {
        Retention::Days { days: 30 }
    }
}

/// What a service is told about, and where.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notifications {
    /// Addresses emailed.
    #[serde(default)]
    pub emails: Vec<String>,
    /// URLs posted to, signed the Standard Webhooks way.
    #[serde(default)]
    pub webhooks: Vec<String>,
    /// Which happenings: `backup_created`, `bad_key`, `ip_blocked`, `backup_missed`,
    /// `back_to_normal`.
    #[serde(default)]
    pub on: Vec<String>,
}

/// A service's settings, as its owner last set them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceSettings {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub retention: Retention,
    /// Whether uploads need one of the service's API keys.
    pub auth_enabled: bool,
    /// Whether uploads must come from `allowlist`.
    pub allowlist_enabled: bool,
    #[serde(default)]
    pub allowlist: Vec<IpRange>,
    pub max_backup_bytes: u64,
    #[serde(default)]
    pub notifications: Notifications,
}

/// A user made a service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceCreated {
    pub service_id: Uuid,
    /// The user who owns it.
    pub owner: Uuid,
    pub settings: ServiceSettings,
    /// The key its webhook calls are signed with (`whsec_` and base64), shown to the owner.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_secret: Option<String>,
}

impl DomainEvent for ServiceCreated {
    const TYPE: &'static str = "service.created";
    const SCHEMA_VERSION: i32 = 1;
}

/// Its owner changed a service's settings (all of them, as they now are).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceUpdated {
    pub service_id: Uuid,
    pub settings: ServiceSettings,
}

impl DomainEvent for ServiceUpdated {
    const TYPE: &'static str = "service.updated";
    const SCHEMA_VERSION: i32 = 1;
}

/// Its owner deleted a service; its resources are deleted with it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceDeleted {
    pub service_id: Uuid,
}

impl DomainEvent for ServiceDeleted {
    const TYPE: &'static str = "service.deleted";
    const SCHEMA_VERSION: i32 = 1;
}

/// A user came to own a service (in their `serviceowner-` stream, with the service's
/// creation).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceOwned {
    pub service_id: Uuid,
}

impl DomainEvent for ServiceOwned {
    const TYPE: &'static str = "serviceowner.owned";
    const SCHEMA_VERSION: i32 = 1;
}

/// A user's service was deleted (in their `serviceowner-` stream).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceDisowned {
    pub service_id: Uuid,
}

impl DomainEvent for ServiceDisowned {
    const TYPE: &'static str = "serviceowner.disowned";
    const SCHEMA_VERSION: i32 = 1;
}

/// An API key was made for a service. Only its SHA-256 is kept; the key was shown once.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKeyCreated {
    pub service_id: Uuid,
    pub key_id: Uuid,
    pub name: String,
    /// SHA-256 of the key, hex.
    pub hash: String,
}

impl DomainEvent for ApiKeyCreated {
    const TYPE: &'static str = "service.api_key_created";
    const SCHEMA_VERSION: i32 = 1;
}

/// An API key was revoked: it never opens an upload again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKeyRevoked {
    pub service_id: Uuid,
    pub key_id: Uuid,
}

impl DomainEvent for ApiKeyRevoked {
    const TYPE: &'static str = "service.api_key_revoked";
    const SCHEMA_VERSION: i32 = 1;
}

/// An API key opened an upload (recorded at most once a minute per key: its last use).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKeyUsed {
    pub service_id: Uuid,
    pub key_id: Uuid,
}

impl DomainEvent for ApiKeyUsed {
    const TYPE: &'static str = "service.api_key_used";
    const SCHEMA_VERSION: i32 = 1;
}

/// A resource was added to a service (its own stream holds the rest).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceAdded {
    pub service_id: Uuid,
    pub resource_id: Uuid,
}

impl DomainEvent for ResourceAdded {
    const TYPE: &'static str = "service.resource_added";
    const SCHEMA_VERSION: i32 = 1;
}

/// A resource was taken from a service (deleted).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceRemoved {
    pub service_id: Uuid,
    pub resource_id: Uuid,
}

impl DomainEvent for ResourceRemoved {
    const TYPE: &'static str = "service.resource_removed";
    const SCHEMA_VERSION: i32 = 1;
}

/// When backups of a resource are expected: by a cron expression in a time zone, or
/// every so many seconds; one not arrived `grace_seconds` after it was due is missed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Expected {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every_seconds: Option<u64>,
    pub grace_seconds: u64,
}

/// A resource's settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceSettings {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// An inactive resource refuses uploads.
    pub active: bool,
    /// When backups are expected; none: any time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected: Option<Expected>,
}

/// A resource was made in a service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceCreated {
    pub resource_id: Uuid,
    pub service_id: Uuid,
    pub owner: Uuid,
    pub settings: ResourceSettings,
}

impl DomainEvent for ResourceCreated {
    const TYPE: &'static str = "resource.created";
    const SCHEMA_VERSION: i32 = 1;
}

/// Its owner changed a resource's settings (all of them, as they now are).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceUpdated {
    pub resource_id: Uuid,
    pub settings: ResourceSettings,
}

impl DomainEvent for ResourceUpdated {
    const TYPE: &'static str = "resource.updated";
    const SCHEMA_VERSION: i32 = 1;
}

/// A resource was deleted (by its owner, or with its service); its backups go with it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceDeleted {
    pub resource_id: Uuid,
}

impl DomainEvent for ResourceDeleted {
    const TYPE: &'static str = "resource.deleted";
    const SCHEMA_VERSION: i32 = 1;
}

/// A backup was stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupStored {
    pub backup_id: Uuid,
    pub resource_id: Uuid,
    pub service_id: Uuid,
    /// What the file is (`json`, `tar.gz`, …): as the uploader said, or inferred.
    pub format: String,
    /// The name it was uploaded under, as it downloads.
    pub file_name: String,
    pub bytes: u64,
    /// SHA-256 of the content, lowercase hex.
    pub sha256: String,
    /// Where the content is kept (shared with the service's other backups of it).
    pub blob: String,
    /// The API key that opened the upload, if the service asked for one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<Uuid>,
}

impl DomainEvent for BackupStored {
    const TYPE: &'static str = "resource.backup_stored";
    const SCHEMA_VERSION: i32 = 1;
}

/// A backup was recorded in `resource_id`'s stream (the first event of its own stream).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupRecorded {
    pub backup_id: Uuid,
    pub resource_id: Uuid,
}

impl DomainEvent for BackupRecorded {
    const TYPE: &'static str = "backup.recorded";
    const SCHEMA_VERSION: i32 = 1;
}

/// A backup was deleted: by the retention, or with its resource.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupDeleted {
    pub backup_id: Uuid,
    /// `retention` or `resource_deleted`.
    pub reason: String,
}

impl DomainEvent for BackupDeleted {
    const TYPE: &'static str = "resource.backup_deleted";
    const SCHEMA_VERSION: i32 = 1;
}

/// Uploads to a resource were turned away (`bad_key` or `ip_blocked`): `count` of them
/// since the last such record (a process records at most one a minute per resource and
/// kind, counting the rest). `notified`: the owner was told (at most once an hour per
/// resource and kind).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadsRefused {
    pub resource_id: Uuid,
    pub reason: String,
    /// The address of the last one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    pub count: u32,
    pub notified: bool,
}

impl DomainEvent for UploadsRefused {
    const TYPE: &'static str = "resource.uploads_refused";
    const SCHEMA_VERSION: i32 = 1;
}

/// An expected backup did not arrive: none came between `due_at` (its expected time) and
/// the end of its grace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupMissed {
    pub resource_id: Uuid,
    pub due_at: chrono::DateTime<chrono::Utc>,
}

impl DomainEvent for BackupMissed {
    const TYPE: &'static str = "resource.backup_missed";
    const SCHEMA_VERSION: i32 = 1;
}

/// A backup arrived after one was missed: back to normal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupsResumed {
    pub resource_id: Uuid,
}

impl DomainEvent for BackupsResumed {
    const TYPE: &'static str = "resource.backups_resumed";
    const SCHEMA_VERSION: i32 = 1;
}

/// A backup refers to this content, kept at `blob`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobReferenced {
    pub blob: String,
    pub backup_id: Uuid,
}

impl DomainEvent for BlobReferenced {
    const TYPE: &'static str = "backupblob.referenced";
    const SCHEMA_VERSION: i32 = 1;
}

/// A backup that referred to this content was deleted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobReleased {
    pub backup_id: Uuid,
}

impl DomainEvent for BlobReleased {
    const TYPE: &'static str = "backupblob.released";
    const SCHEMA_VERSION: i32 = 1;
}

/// No backup refers to the content any more: its file is deleted (a due item, so a crash
/// only delays it). A later upload of the same content is stored anew.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobDiscarded {
    pub blob: String,
}

impl DomainEvent for BlobDiscarded {
    const TYPE: &'static str = "backupblob.discarded";
    const SCHEMA_VERSION: i32 = 1;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_choices() {
        assert_eq!(Retention::parse("1w"), Some(Retention::Days { days: 7 }));
        assert_eq!(Retention::parse("1M"), Some(Retention::Days { days: 30 }));
        assert_eq!(Retention::parse("3m"), Some(Retention::Days { days: 90 }));
        assert_eq!(Retention::parse("14"), Some(Retention::Days { days: 14 }));
        assert_eq!(
            Retention::parse(" 14d "),
            Some(Retention::Days { days: 14 })
        );
        for bad in ["", "0", "-1", "1y", "d", "99999999999", "1.5"] {
            assert_eq!(Retention::parse(bad), None, "{bad:?}");
        }
    }
}
