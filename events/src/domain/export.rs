//! Exports: everything a user owns, written out as a background job, to a bundle (a zip in
//! the blob store) or to a git repository.
//!
//! Two kinds of stream:
//! - `export-<id>`: one export from its request to its end. It is planned once
//!   ([`ExportStarted`] fixes the steps and the log position it covers), then each step is
//!   recorded as it is done, so a run that stops anywhere resumes at the first step not
//!   recorded, and the progress a watcher sees is this stream read back;
//! - `exportqueue-<user>`: the order a user's exports were asked for in. One runs at a
//!   time; the next starts when the one before it has ended.
//!
//! A git destination's token is kept only sealed with the server's key ([`Sealed`]): the
//! log never holds it in the clear.

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{DomainEvent, Position};

/// Stream categories.
pub const CATEGORY: &str = "export";
pub const QUEUE: &str = "exportqueue";

/// Longest git URL and branch name, in bytes.
pub const MAX_URL_BYTES: usize = 2048;
pub const MAX_BRANCH_BYTES: usize = 200;

pub fn stream(export_id: Uuid) -> String {
    format!("{CATEGORY}-{export_id}")
}

pub fn queue_stream(user_id: Uuid) -> String {
    format!("{QUEUE}-{user_id}")
}

/// A secret sealed with the server's key (nonce and ciphertext, base64): only a process
/// with the key can open it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Sealed(pub String);

/// Where an export goes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Destination {
    /// A zip in the blob store, downloadable for a while.
    Bundle,
    /// A branch of a git repository: a local path or an HTTP(S) URL.
    Git {
        url: String,
        branch: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token: Option<Sealed>,
    },
}

/// One step of an export, in the order they run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Step {
    /// The user's messages of some days (UTC) of one month, a file per day.
    Messages { days: Vec<MessageDay> },
    /// The user's backup services, their resources and the list of their backups.
    Backups,
    /// The files of one service's backups.
    Files { service_id: Uuid, service: String },
    /// The capsules submitted with the user's token.
    Capsules,
    /// The manifest; for a bundle, the zip put together.
    Finish,
}

/// One day of a user's messages: how many, between which log positions (its span, which
/// may hold other days' messages too).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageDay {
    pub day: NaiveDate,
    pub first: Position,
    pub last: Position,
    pub count: u64,
}

impl Step {
    /// What a watcher is shown: `messages 2026-11-25`, `messages 2026-11-01 – 2026-11-30`.
    pub fn label(&self) -> String {
        match self {
            Step::Messages { days } => match (days.first(), days.last()) {
                (Some(first), Some(last)) if first.day != last.day => {
                    format!("messages {} – {}", first.day, last.day)
                }
                (Some(only), _) => format!("messages {}", only.day),
                _ => "messages".to_owned(),
            },
            Step::Backups => "backups".to_owned(),
            Step::Files { service, .. } => format!("files of {service}"),
            Step::Capsules => "capsules".to_owned(),
            Step::Finish => "manifest".to_owned(),
        }
    }
}

/// A file a step wrote: where it goes in the export and the blob that holds it. A bundle's
/// file is kept compressed (`deflated`) as the zip will hold it, with what the zip's
/// headers need.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Part {
    pub path: String,
    pub blob: String,
    /// Its length, and the length as stored (equal unless deflated).
    pub bytes: u64,
    pub stored_bytes: u64,
    pub deflated: bool,
    pub crc32: u32,
    /// Lowercase hex, of the content.
    pub sha256: String,
    /// How many records it holds (messages, backups, ...), for the manifest.
    #[serde(default)]
    pub records: u64,
}

/// A user asked for an export.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportRequested {
    pub export_id: Uuid,
    pub user_id: Uuid,
    pub user_name: String,
    pub destination: Destination,
    pub include_files: bool,
    pub keep_in_sync: bool,
}

impl DomainEvent for ExportRequested {
    const TYPE: &'static str = "export.requested";
    const SCHEMA_VERSION: i32 = 1;
}

/// In a user's queue: an export was asked for, after those before it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportQueued {
    pub export_id: Uuid,
}

impl DomainEvent for ExportQueued {
    const TYPE: &'static str = "exportqueue.queued";
    const SCHEMA_VERSION: i32 = 1;
}

/// The export began: what it covers (the log up to `up_to`) and its steps.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportStarted {
    pub up_to: Position,
    pub steps: Vec<Step>,
}

impl DomainEvent for ExportStarted {
    const TYPE: &'static str = "export.started";
    const SCHEMA_VERSION: i32 = 1;
}

/// Step `index` is written: its files (a bundle's), or the commit it pushed (a git
/// destination's; none when it changed nothing).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportStepDone {
    pub index: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parts: Vec<Part>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
}

impl DomainEvent for ExportStepDone {
    const TYPE: &'static str = "export.step_done";
    const SCHEMA_VERSION: i32 = 1;
}

/// Step `index` failed; it is tried again at `retry_at`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportStepFailed {
    pub index: u32,
    pub attempt: u32,
    pub error: String,
    pub retry_at: DateTime<Utc>,
}

impl DomainEvent for ExportStepFailed {
    const TYPE: &'static str = "export.step_failed";
    const SCHEMA_VERSION: i32 = 1;
}

/// Every step is done. A bundle's zip and how long it is kept.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportCompleted {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bundle: Option<Part>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
}

impl DomainEvent for ExportCompleted {
    const TYPE: &'static str = "export.completed";
    const SCHEMA_VERSION: i32 = 1;
}

/// The export gave up.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportFailed {
    pub reason: String,
}

impl DomainEvent for ExportFailed {
    const TYPE: &'static str = "export.failed";
    const SCHEMA_VERSION: i32 = 1;
}

/// Its owner cancelled the export before it ended, or stopped keeping it in sync.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportCancelled {}

impl DomainEvent for ExportCancelled {
    const TYPE: &'static str = "export.cancelled";
    const SCHEMA_VERSION: i32 = 1;
}

/// A bundle's zip was deleted at the end of its retention.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportExpired {}

impl DomainEvent for ExportExpired {
    const TYPE: &'static str = "export.expired";
    const SCHEMA_VERSION: i32 = 1;
}

/// A destination kept in sync got the messages up to `up_to` (`commit`, when any changed).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportSynced {
    pub up_to: Position,
    pub messages: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
}

impl DomainEvent for ExportSynced {
    const TYPE: &'static str = "export.synced";
    const SCHEMA_VERSION: i32 = 1;
}
