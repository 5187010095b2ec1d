//! Exports, the write side: a user asks for everything they own to be written out, to a
//! bundle or a git repository, and the scheduler runs it step by step.
//!
//! An export is one stream (`export-<id>`). It is planned once: [`ExportStarted`] fixes the
//! log position it covers and its steps (a day of messages, the backups, a service's
//! files, the capsules, the manifest). Each step is written to the destination, then
//! recorded; a run that stops anywhere (a crash, a restart, another scheduler taking over)
//! starts again at the first step not recorded, and writing a step again gives the same
//! result (the same blobs; for git, the same files, so no second commit). A failing step
//! is tried again after a doubling wait, then the export fails saying why. A user's
//! exports run one at a time, in the order asked for (`exportqueue-<user>`).
//!
//! The layout is the backups': `decide.rs` (the rules), `state.rs` (the fold), `content.rs`
//! (what is exported, shaped as the API shows it), one file per destination (`bundle.rs`
//! with `zip.rs`, `git.rs`), `api.rs` (the routes), `progress.rs` (live progress),
//! `timers.rs` (what the scheduler runs).

pub mod api;
pub mod bundle;
pub mod content;
pub mod decide;
pub mod git;
pub mod import;
pub mod progress;
pub mod state;
pub mod timers;
pub mod zip;

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use cairn_events::domain::export::{
    self, Destination, ExportCancelled, ExportCompleted, ExportExpired, ExportFailed, ExportQueued,
    ExportRequested, ExportStarted, ExportStepDone, ExportStepFailed, Part,
};
use cairn_events::domain::message;
use cairn_events::{
    AppendRequest, Clock, DomainEvent, DueItem, Effects, EventStore, ExpectedVersion, Metadata,
    NewEvent, OutboxMessage, StoreError,
};
use chrono::{DateTime, Utc};
use hmac::{KeyInit, Mac};
use minijinja::{Environment, context};
use uuid::Uuid;

pub use state::{ExportState, Status};

use self::decide::{Failure, ServiceOutline, Start};
use crate::backups::{BackupError, Backups};
use crate::blobs::{BlobError, Blobs};
use crate::capsules::{CapsuleError, Capsules};

/// Due-item actions: run an export (its next steps), delete a bundle at the end of its
/// retention, write new messages to a destination kept in sync.
pub const RUN: &str = "run";
pub const EXPIRE: &str = "expire";
pub const SYNC: &str = "sync";
/// How often a destination kept in sync is written to, at most.
pub const SYNC_EVERY: chrono::Duration = chrono::Duration::minutes(1);
/// How long a step waits for a destination another export is writing.
const BUSY_WAIT: chrono::Duration = chrono::Duration::seconds(2);
/// How long a queued export waits before looking again whether the one before it ended
/// (it is also woken when that one ends).
const QUEUED_WAIT: chrono::Duration = chrono::Duration::seconds(30);
/// How many times a use case reads and decides again after losing a race.
const TRIES: usize = 5;

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// What can go wrong with an export.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("{}", .0.message)]
    Invalid(decide::Invalid),
    /// No such export of the caller's.
    #[error("not found")]
    NotFound,
    #[error("the export is {0} and cannot be cancelled")]
    Over(&'static str),
    /// The destination refused or failed (retried, then the export fails with it).
    #[error("{0}")]
    Destination(String),
    #[error(transparent)]
    Blob(#[from] BlobError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Other(String),
}

impl From<cairn_events::DecodeError> for ExportError {
    fn from(error: cairn_events::DecodeError) -> Self {
        ExportError::Store(StoreError::Corrupt(error.to_string()))
    }
}

impl From<BackupError> for ExportError {
    fn from(error: BackupError) -> Self {
        match error {
            BackupError::Store(e) => ExportError::Store(e),
            BackupError::Blob(e) => ExportError::Blob(e),
            other => ExportError::Other(other.to_string()),
        }
    }
}

impl From<CapsuleError> for ExportError {
    fn from(error: CapsuleError) -> Self {
        ExportError::Other(error.to_string())
    }
}

/// What a run of the scheduler's came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ran {
    /// It ended (or had nothing to do): the append dropped its due item.
    Done,
    /// Look again at this time.
    NotYet(DateTime<Utc>),
}

/// The export use cases.
#[derive(Clone)]
pub struct Exports {
    events: Arc<dyn EventStore>,
    blobs: Blobs,
    clock: Clock,
    backups: Backups,
    capsules: Capsules,
    /// Signs links.
    key: Arc<[u8]>,
    pub public_url: String,
    /// How long a bundle is kept.
    pub retention: chrono::Duration,
    /// How long a link to a bundle or a progress page works.
    pub link_ttl: chrono::Duration,
    emails: Arc<Environment<'static>>,
    /// The domain of Message-IDs.
    domain: String,
    /// Where git destinations' working copies are kept.
    pub git_dir: std::path::PathBuf,
    git_locks: git::Locks,
    followers: progress::Followers,
}

impl Exports {
    pub fn new(
        events: Arc<dyn EventStore>,
        blobs: Blobs,
        clock: Clock,
        backups: Backups,
        capsules: Capsules,
        key: &[u8],
        public_url: &str,
    ) -> Result<Self, minijinja::Error> {
        let mut env = Environment::new();
        email_templates!(env, "export_done");
        let domain = crate::capsules::emails::message_id_domain(public_url).to_owned();
        Ok(Exports {
            events,
            blobs,
            clock,
            backups,
            capsules,
            key: key.into(),
            public_url: public_url.trim_end_matches('/').to_owned(),
            retention: chrono::Duration::days(7),
            link_ttl: chrono::Duration::days(7),
            emails: Arc::new(env),
            domain,
            git_dir: git::default_dir(std::path::Path::new("./data")),
            git_locks: git::Locks::default(),
            followers: progress::Followers::default(),
        })
    }

    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    fn event(&self, event: &impl DomainEvent, actor: &str) -> NewEvent {
        NewEvent::at(
            event,
            Metadata {
                actor: Some(actor.to_owned()),
                ..Metadata::default()
            },
            self.now(),
        )
    }

    /// One export as its stream tells it.
    pub async fn load(&self, export_id: Uuid) -> Result<Option<ExportState>, ExportError> {
        let events = self.events.read_stream(&export::stream(export_id)).await?;
        Ok(ExportState::of(&events)?)
    }

    /// One of `owner`'s exports; another's is as unknown as a missing one.
    pub async fn owned(&self, owner: Uuid, export_id: Uuid) -> Result<ExportState, ExportError> {
        match self.load(export_id).await? {
            Some(export) if export.owner() == owner => Ok(export),
            _ => Err(ExportError::NotFound),
        }
    }

    /// `owner`'s exports, in the order asked for.
    pub async fn exports_of(&self, owner: Uuid) -> Result<Vec<ExportState>, ExportError> {
        let queue = self
            .events
            .read_stream(&export::queue_stream(owner))
            .await?;
        let mut ids = Vec::with_capacity(queue.len());
        for event in &queue {
            if event.event_type == ExportQueued::TYPE {
                ids.push(ExportQueued::decode(event)?.export_id);
            }
        }
        let streams: Vec<String> = ids.iter().map(|id| export::stream(*id)).collect();
        let mut read = self.events.read_streams(&streams).await?;
        let mut exports = Vec::with_capacity(ids.len());
        for stream in &streams {
            if let Some(export) = ExportState::of(&read.remove(stream).unwrap_or_default())? {
                exports.push(export);
            }
        }
        Ok(exports)
    }

    /// Ask for an export: queued behind the user's others, run by the scheduler.
    pub async fn request(
        &self,
        user: &crate::auth::AuthUser,
        request: decide::Request,
    ) -> Result<ExportState, ExportError> {
        let export_id = Uuid::now_v7();
        let destination = match request.target {
            decide::Target::Bundle => Destination::Bundle,
            decide::Target::Git { url, branch, token } => Destination::Git {
                url,
                branch,
                token: token.map(|t| self.seal(export_id, &t)),
            },
        };
        let requested = ExportRequested {
            export_id,
            user_id: user.id,
            user_name: user.name.clone(),
            destination,
            include_files: request.include_files,
            keep_in_sync: request.keep_in_sync,
        };
        let actor = user.id.to_string();
        let append = AppendRequest::new(
            export::stream(export_id),
            ExpectedVersion::NoStream,
            vec![self.event(&requested, &actor)],
        )
        .and_stream(
            export::queue_stream(user.id),
            ExpectedVersion::Any,
            vec![self.event(&ExportQueued { export_id }, &actor)],
        )
        .with_effects(Effects {
            schedule: vec![run_item(export_id, self.now())],
            ..Effects::default()
        });
        self.events.append(append).await?;
        self.owned(user.id, export_id).await
    }

    /// Cancel a queued or running export, or stop one kept in sync.
    pub async fn cancel(&self, owner: Uuid, export_id: Uuid) -> Result<ExportState, ExportError> {
        for _ in 0..TRIES {
            let export = self.owned(owner, export_id).await?;
            decide::cancel(&export)
                .map_err(|decide::NotCancellable::Over(s)| ExportError::Over(s.as_str()))?;
            let mut effects = Effects {
                unschedule: vec![
                    run_item(export_id, self.now()).key,
                    sync_item(export_id, self.now()).key,
                ],
                ..Effects::default()
            };
            effects.schedule.extend(self.next_in_queue(&export).await?);
            let append = AppendRequest::new(
                export::stream(export_id),
                ExpectedVersion::Exact(export.version),
                vec![self.event(&ExportCancelled {}, &owner.to_string())],
            )
            .with_effects(effects);
            match self.events.append(append).await {
                Ok(_) => {
                    if !export.is_git() {
                        self.delete_parts(&export).await;
                    }
                    return self.owned(owner, export_id).await;
                }
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(ExportError::Store(StoreError::Conflict {
            stream_id: export::stream(export_id),
            expected: ExpectedVersion::Any,
            actual: -1,
        }))
    }

    /// The run item of the export queued after `export`, if one is waiting.
    async fn next_in_queue(&self, export: &ExportState) -> Result<Option<DueItem>, ExportError> {
        let queue = self.exports_of(export.owner()).await?;
        Ok(queue
            .iter()
            .skip_while(|e| e.id() != export.id())
            .skip(1)
            .find(|e| e.status == Status::Queued)
            .map(|next| run_item(next.id(), self.now())))
    }

    /// Run an export as far as it goes: start it when its turn has come, then write its
    /// steps one after the other, recording each. The scheduler calls this for the
    /// export's due item.
    pub async fn run(&self, export_id: Uuid) -> Result<Ran, ExportError> {
        let Some(mut export) = self.load(export_id).await? else {
            return Ok(Ran::Done);
        };
        loop {
            match export.status {
                Status::Queued => {
                    let queue = self.exports_of(export.owner()).await?;
                    let earlier: Vec<ExportState> = queue
                        .into_iter()
                        .take_while(|e| e.id() != export_id)
                        .collect();
                    match decide::start(&export, &earlier) {
                        Start::Wait => return Ok(Ran::NotYet(self.now() + QUEUED_WAIT)),
                        Start::Nothing => return Ok(Ran::Done),
                        Start::Now => self.start(&export).await?,
                    }
                }
                Status::Running => {
                    if let Some(at) = export.retry_at
                        && at > self.now()
                    {
                        return Ok(Ran::NotYet(at));
                    }
                    if let Some(ran) = self.step(&export).await? {
                        return Ok(ran);
                    }
                }
                _ => return Ok(Ran::Done),
            }
            // What the step recorded (or what another writer did meanwhile).
            self.read_more(&mut export).await?;
        }
    }

    /// Plan the export and record that it started.
    async fn start(&self, export: &ExportState) -> Result<(), ExportError> {
        let user = export.owner();
        let up_to = self.events.head().await?;
        let days =
            cairn_events::actor_days(&*self.events, &user.to_string(), message::CATEGORY, up_to)
                .await?;
        let services: Vec<ServiceOutline> = self
            .services(user)
            .await?
            .into_iter()
            .map(|s| ServiceOutline {
                id: s.id,
                has_backups: !s.files.is_empty(),
                name: s.name,
            })
            .collect();
        let steps = decide::plan(&days, &services, export.request.include_files);
        let started = ExportStarted { up_to, steps };
        self.append_or_reread(
            export,
            vec![self.event(&started, "scheduler")],
            Effects::default(),
        )
        .await
    }

    /// Write the next step and record it; `Some` when the run stops here.
    async fn step(&self, export: &ExportState) -> Result<Option<Ran>, ExportError> {
        let index = export.done;
        let Some(step) = export.steps.get(index).cloned() else {
            // Every step recorded but not the end (a crash between the two).
            self.complete(export, None).await?;
            return Ok(None);
        };
        let written = match &export.request.destination {
            Destination::Bundle => self
                .bundle_step(export, index, &step)
                .await
                .map(|parts| Some((parts, None))),
            Destination::Git { .. } => self.git_step(export, index, &step).await,
        };
        match written {
            // Another export is writing to the same destination.
            Ok(None) => Ok(Some(Ran::NotYet(self.now() + BUSY_WAIT))),
            Ok(Some((parts, commit))) => {
                let last = index + 1 == export.steps.len();
                let (parts, bundle) = if last && !export.is_git() {
                    (Vec::new(), parts.into_iter().next())
                } else {
                    (parts, None)
                };
                let done = ExportStepDone {
                    index: index as u32,
                    parts,
                    commit,
                };
                let mut next = export.clone();
                self.append_or_reread(
                    export,
                    vec![self.event(&done, "scheduler")],
                    Effects::default(),
                )
                .await?;
                if last {
                    next.done = index + 1;
                    next.version += 1;
                    self.complete(&next, bundle).await?;
                    if !export.is_git() {
                        self.delete_parts(&next).await;
                    }
                }
                Ok(None)
            }
            Err(error @ (ExportError::Store(_) | ExportError::Other(_))) => Err(error),
            Err(error) => {
                let message = error.to_string();
                tracing::warn!(export = %export.id(), step = %step.label(), error = %message, "an export step failed");
                match decide::failure(export, &message, self.now()) {
                    Failure::Retry { attempt, at } => {
                        let failed = ExportStepFailed {
                            index: index as u32,
                            attempt,
                            error: message,
                            retry_at: at,
                        };
                        self.append_or_reread(
                            export,
                            vec![self.event(&failed, "scheduler")],
                            Effects::default(),
                        )
                        .await?;
                        Ok(Some(Ran::NotYet(at)))
                    }
                    Failure::GiveUp { reason } => {
                        self.end(export, &ExportFailed { reason }, None).await?;
                        Ok(Some(Ran::Done))
                    }
                }
            }
        }
    }

    /// Record that every step is done.
    async fn complete(
        &self,
        export: &ExportState,
        bundle: Option<Part>,
    ) -> Result<(), ExportError> {
        let expires_at = bundle.as_ref().map(|_| self.now() + self.retention);
        let completed = ExportCompleted { bundle, expires_at };
        self.end(export, &completed, expires_at).await
    }

    /// Record the end of an export (`event`), tell its owner, and wake the next queued.
    async fn end(
        &self,
        export: &ExportState,
        event: &(impl DomainEvent + EndNews),
        expires_at: Option<DateTime<Utc>>,
    ) -> Result<(), ExportError> {
        let mut effects = Effects {
            unschedule: vec![run_item(export.id(), self.now()).key],
            ..Effects::default()
        };
        effects.schedule.extend(self.next_in_queue(export).await?);
        if let Some(at) = expires_at {
            effects.schedule.push(expire_item(export.id(), at));
        }
        if export.is_git() && export.request.keep_in_sync && event.outcome().0 {
            effects
                .schedule
                .push(sync_item(export.id(), self.now() + SYNC_EVERY));
        }
        effects.outbox = self.news(export, event).await;
        self.append_or_reread(export, vec![self.event(event, "scheduler")], effects)
            .await
    }

    /// Append to an export's stream at the version it was read at. Losing the race (a
    /// cancel, another scheduler) is no error: the run reads the stream again.
    async fn append_or_reread(
        &self,
        export: &ExportState,
        events: Vec<NewEvent>,
        effects: Effects,
    ) -> Result<(), ExportError> {
        let append = AppendRequest::new(
            export::stream(export.id()),
            ExpectedVersion::Exact(export.version),
            events,
        )
        .with_effects(effects);
        match self.events.append(append).await {
            Ok(_) | Err(StoreError::Conflict { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Write the messages posted since to a destination kept in sync, at most once a
    /// minute: a projection of the user's messages whose read model is the repository.
    pub async fn sync(&self, export_id: Uuid) -> Result<Ran, ExportError> {
        let Some(export) = self.load(export_id).await? else {
            return Ok(Ran::Done);
        };
        if !export.syncing() {
            return Ok(Ran::Done);
        }
        let now = self.now();
        if let Some(at) = export.synced_at.or(export.finished_at)
            && at + SYNC_EVERY > now
        {
            return Ok(Ran::NotYet(at + SYNC_EVERY));
        }
        let up_to = self.events.head().await?;
        match self.git_sync(&export, up_to).await? {
            None => Ok(Ran::NotYet(now + BUSY_WAIT)),
            Some(git::Synced { messages: 0, .. }) => Ok(Ran::NotYet(now + SYNC_EVERY)),
            Some(git::Synced {
                messages,
                up_to,
                commit,
            }) => {
                let synced = export::ExportSynced {
                    up_to,
                    messages,
                    commit,
                };
                self.append_or_reread(
                    &export,
                    vec![self.event(&synced, "scheduler")],
                    Effects::default(),
                )
                .await?;
                Ok(Ran::NotYet(now + SYNC_EVERY))
            }
        }
    }

    /// Delete a bundle at the end of its retention.
    pub async fn expire(&self, export_id: Uuid) -> Result<Ran, ExportError> {
        let Some(export) = self.load(export_id).await? else {
            return Ok(Ran::Done);
        };
        let Some(bundle) = export.bundle.as_ref().filter(|_| !export.expired) else {
            return Ok(Ran::Done);
        };
        if let Some(at) = export.expires_at
            && at > self.now()
        {
            return Ok(Ran::NotYet(at));
        }
        self.blobs.delete(&bundle.blob).await?;
        self.append_or_reread(
            &export,
            vec![self.event(&ExportExpired {}, "scheduler")],
            Effects {
                unschedule: vec![expire_item(export_id, self.now()).key],
                ..Effects::default()
            },
        )
        .await?;
        Ok(Ran::Done)
    }

    /// The email and webhook calls telling the owner an export ended.
    async fn news(&self, export: &ExportState, event: &impl EndNews) -> Vec<OutboxMessage> {
        let (ok, reason) = event.outcome();
        let now = self.now();
        let destination = match &export.request.destination {
            Destination::Bundle => "a bundle".to_owned(),
            Destination::Git { url, branch, .. } => format!("{url} ({branch})"),
        };
        let download = ok
            .then(|| (!export.is_git()).then(|| self.bundle_link(export.id(), now)))
            .flatten();
        let page = self.page_link(export.id(), now);
        let cause = format!(
            "export-{}:{}",
            export.id(),
            if ok { "done" } else { "failed" }
        );
        let mut out = Vec::new();
        let user = crate::users::user_by_name(&*self.events, &export.request.user_name).await;
        if let Ok(crate::users::User {
            email: Some(email), ..
        }) = user
        {
            let values = context! {
                ok, id => export.id().to_string(), total => export.steps.len(),
                destination, download, reason, page,
                expires => (now + self.retention).to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            };
            let render = |part: &str| {
                self.emails
                    .get_template(&format!("export_done.{part}"))
                    .and_then(|t| t.render(&values))
            };
            if let (Ok(subject), Ok(text), Ok(html)) =
                (render("subject.txt"), render("txt"), render("html"))
            {
                let id = crate::capsules::emails::outbox_id_of(&format!("{cause}:{email}"));
                out.push(
                    cairn_events::domain::email::Email {
                        to: email,
                        to_name: None,
                        subject: subject.trim().to_owned(),
                        text,
                        html,
                        message_id: format!("<{}@{}>", id.simple(), self.domain),
                        record_in: None,
                        purpose: Some("export_done".to_owned()),
                        occurrence: None,
                    }
                    .into_outbox(id),
                );
            }
        }
        // The user's webhooks: those of their backup services, each signed with its own
        // service's secret.
        let body = serde_json::json!({
            "type": if ok { "export.completed" } else { "export.failed" },
            "timestamp": now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "data": {
                "export": export.id().to_string(),
                "steps": export.steps.len(),
                "download_url": download,
                "reason": reason,
            },
        })
        .to_string();
        let mut seen = std::collections::HashSet::new();
        if let Ok(services) = self.backups.services_of(export.owner()).await {
            for service in services {
                let Some(secret) = &service.webhook_secret else {
                    continue;
                };
                for url in &service.settings.notifications.webhooks {
                    if seen.insert(url.clone()) {
                        let id = crate::capsules::emails::outbox_id_of(&format!("{cause}:{url}"));
                        out.push(
                            cairn_events::domain::webhook::Webhook {
                                url: url.clone(),
                                secret: secret.clone(),
                                body: body.clone(),
                            }
                            .into_outbox(id),
                        );
                    }
                }
            }
        }
        out
    }

    fn mac(&self, what: &str, export_id: Uuid, expires: i64) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
        mac.update(format!("export-{what}:{export_id}:{expires}").as_bytes());
        mac
    }

    fn signed(&self, what: &str, path: &str, export_id: Uuid, now: DateTime<Utc>) -> String {
        let expires = (now + self.link_ttl).timestamp();
        let signature =
            URL_SAFE_NO_PAD.encode(self.mac(what, export_id, expires).finalize().into_bytes());
        format!(
            "{}{path}?expires={expires}&signature={signature}",
            self.public_url
        )
    }

    /// Copy a stored bundle into `out`.
    pub async fn download(
        &self,
        blob: &str,
        out: &mut (impl tokio::io::AsyncWrite + Unpin),
    ) -> Result<(), ExportError> {
        match self.blobs.copy_to(blob, out).await? {
            Some(_) => Ok(()),
            None => Err(ExportError::NotFound),
        }
    }

    /// A link downloading the bundle without a token, for a while.
    pub fn bundle_link(&self, export_id: Uuid, now: DateTime<Utc>) -> String {
        self.signed(
            "bundle",
            &format!("/exports/{export_id}/bundle"),
            export_id,
            now,
        )
    }

    /// A link to the progress page (and its events) without a token, for a while.
    pub fn page_link(&self, export_id: Uuid, now: DateTime<Utc>) -> String {
        self.signed(
            "page",
            &format!("/exports/{export_id}/page"),
            export_id,
            now,
        )
    }

    /// Whether `signature` signs `what` (`bundle`, `page`) of the export until `expires`.
    pub fn verify(&self, what: &str, export_id: Uuid, expires: i64, signature: &str) -> bool {
        expires >= self.now().timestamp()
            && URL_SAFE_NO_PAD.decode(signature).is_ok_and(|sig| {
                self.mac(what, export_id, expires)
                    .verify_slice(&sig)
                    .is_ok()
            })
    }

    /// Seal a destination's token with the server's key (for this export only).
    fn seal(&self, export_id: Uuid, token: &str) -> export::Sealed {
        // A keystream from HMAC-SHA256 over the export id, a nonce and a counter, with an
        // HMAC tag over the result: no one without the server's key reads or forges it.
        let nonce: [u8; 16] = rand::random();
        let body = self.keystream(export_id, &nonce, token.as_bytes());
        let tag = self.seal_tag(export_id, &nonce, &body);
        let mut sealed = nonce.to_vec();
        sealed.extend(body);
        sealed.extend(tag);
        export::Sealed(URL_SAFE_NO_PAD.encode(sealed))
    }

    /// Open a token [`Exports::seal`]ed; `None` if it was not sealed by this key for this
    /// export.
    pub fn open(&self, export_id: Uuid, sealed: &export::Sealed) -> Option<String> {
        let raw = URL_SAFE_NO_PAD.decode(&sealed.0).ok()?;
        if raw.len() < 16 + 32 {
            return None;
        }
        let (nonce, rest) = raw.split_at(16);
        let (body, tag) = rest.split_at(rest.len() - 32);
        self.seal_mac(export_id, nonce, body)
            .verify_slice(tag)
            .ok()?;
        String::from_utf8(self.keystream(export_id, nonce, body)).ok()
    }

    fn seal_mac(&self, export_id: Uuid, nonce: &[u8], body: &[u8]) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
        mac.update(b"export-token-tag:");
        mac.update(export_id.as_bytes());
        mac.update(nonce);
        mac.update(body);
        mac
    }

    fn seal_tag(&self, export_id: Uuid, nonce: &[u8], body: &[u8]) -> Vec<u8> {
        self.seal_mac(export_id, nonce, body)
            .finalize()
            .into_bytes()
            .to_vec()
    }

    fn keystream(&self, export_id: Uuid, nonce: &[u8], data: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(data.len());
        for (block, chunk) in data.chunks(32).enumerate() {
            let mut mac = HmacSha256::new_from_slice(&self.key)
                .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
            mac.update(b"export-token-stream:");
            mac.update(export_id.as_bytes());
            mac.update(nonce);
            mac.update(&(block as u64).to_le_bytes());
            let pad = mac.finalize().into_bytes();
            out.extend(chunk.iter().zip(pad.iter()).map(|(a, b)| a ^ b));
        }
        out
    }
}

/// How an ending event reads in the news: whether it went well, and if not, why.
pub trait EndNews {
    fn outcome(&self) -> (bool, Option<String>);
}

impl EndNews for ExportCompleted {
    fn outcome(&self) -> (bool, Option<String>) {
        (true, None)
    }
}

impl EndNews for ExportFailed {
    fn outcome(&self) -> (bool, Option<String>) {
        (false, Some(self.reason.clone()))
    }
}

/// The due item running an export.
pub fn run_item(export_id: Uuid, at: DateTime<Utc>) -> DueItem {
    DueItem {
        key: format!("{}:{RUN}", export::stream(export_id)),
        stream_id: export::stream(export_id),
        action: RUN.to_owned(),
        due_at: at,
    }
}

/// The due item writing new messages to a destination kept in sync.
fn sync_item(export_id: Uuid, at: DateTime<Utc>) -> DueItem {
    DueItem {
        key: format!("{}:{SYNC}", export::stream(export_id)),
        stream_id: export::stream(export_id),
        action: SYNC.to_owned(),
        due_at: at,
    }
}

/// The due item deleting a bundle when its retention ends.
fn expire_item(export_id: Uuid, at: DateTime<Utc>) -> DueItem {
    DueItem {
        key: format!("{}:{EXPIRE}", export::stream(export_id)),
        stream_id: export::stream(export_id),
        action: EXPIRE.to_owned(),
        due_at: at,
    }
}

/// `manifest.json`: who, when, what it covers, and per file its records and SHA-256.
pub fn manifest(export: &ExportState, parts: &[Part]) -> serde_json::Value {
    let mut counts = std::collections::BTreeMap::<String, u64>::new();
    for part in parts {
        let kind = part
            .path
            .split(['/', '.'])
            .next()
            .unwrap_or_default()
            .to_owned();
        *counts.entry(kind).or_default() += part.records;
    }
    serde_json::json!({
        "format": "cairn-export/1",
        "export": export.id().to_string(),
        "user": {"id": export.owner().to_string(), "name": export.request.user_name},
        "requested_at": export.requested_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "log_position": export.up_to,
        "include_files": export.request.include_files,
        "counts": counts,
        "files": parts.iter().map(|p| serde_json::json!({
            "path": p.path,
            "bytes": p.bytes,
            "sha256": p.sha256,
            "records": p.records,
        })).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[tokio::test]
    async fn tokens_are_sealed_for_one_export() {
        let path = std::env::temp_dir().join(format!("cairn-exports-{}.db", Uuid::now_v7()));
        let events: Arc<dyn EventStore> = cairn_events::open_sqlite(&path).await.unwrap();
        let dir = std::env::temp_dir().join(format!("cairn-exports-{}", Uuid::now_v7()));
        std::fs::create_dir_all(&dir).unwrap();
        let store = Arc::new(object_store::local::LocalFileSystem::new_with_prefix(&dir).unwrap());
        let blobs = Blobs::local(store, &dir);
        let clock = Clock::system();
        let key = [7u8; 32];
        let backups = Backups::new(
            events.clone(),
            blobs.clone(),
            clock.clone(),
            &key,
            "http://x",
        )
        .unwrap();
        let links = crate::capsules::Links {
            public_url: "http://x".into(),
            pages_url: "http://x".into(),
        };
        let files = crate::capsules::Files::new(blobs.clone(), &key);
        let capsules = Capsules::new(events.clone(), links, files, clock.clone()).unwrap();
        let exports =
            Exports::new(events, blobs, clock, backups, capsules, &key, "http://x").unwrap();
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let sealed = exports.seal(a, "ghp_secret-token");
        assert!(!sealed.0.contains("secret"));
        assert_eq!(
            exports.open(a, &sealed).as_deref(),
            Some("ghp_secret-token")
        );
        assert_eq!(exports.open(b, &sealed), None, "another export's");
        let mut forged = URL_SAFE_NO_PAD.decode(&sealed.0).unwrap();
        forged[20] ^= 1;
        assert_eq!(
            exports.open(a, &export::Sealed(URL_SAFE_NO_PAD.encode(forged))),
            None
        );
        let link = exports.bundle_link(a, exports.now());
        let query = link.split_once('?').unwrap().1;
        let (expires, signature) = query.split_once('&').unwrap();
        let expires: i64 = expires.trim_start_matches("expires=").parse().unwrap();
        let signature = signature.trim_start_matches("signature=");
        assert!(exports.verify("bundle", a, expires, signature));
        assert!(!exports.verify("page", a, expires, signature));
        assert!(!exports.verify("bundle", b, expires, signature));
    }
}
