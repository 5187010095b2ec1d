//! File backups, the write side: services and their API keys, resources, and the backups
//! posted to a resource's URL.
//!
//! Each use case reads as the capsules' do: load the streams, ask [`decide`] (pure: every
//! rule is there), append with the versions read, and on a conflict read again and decide
//! anew. A backup's file is streamed into the blob store first (`upload.rs`); then one
//! append records it in its resource's stream and counts it in its content's stream
//! (identical content within a service is kept once), so a backup is either recorded with
//! its file or not at all.
//!
//! The layout follows the capsules': `decide.rs` (the rules), `state.rs` (the folds),
//! `error.rs`, one file per way in (`api.rs` for the owner's JSON routes, `upload.rs` for
//! the Dome-compatible upload), `links.rs` (signed download links).

pub mod api;
pub mod decide;
pub mod error;
pub mod links;
pub mod notices;
pub mod state;
pub mod timers;
pub mod upload;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use base64::Engine;
use cairn_events::domain::backup::{
    self, ApiKeyCreated, ApiKeyRevoked, ApiKeyUsed, BackupDeleted, BackupMissed, BackupRecorded,
    BackupStored, BackupsResumed, BlobDiscarded, BlobReferenced, BlobReleased, ResourceAdded,
    ResourceCreated, ResourceDeleted, ResourceRemoved, ResourceSettings, ResourceUpdated,
    ServiceCreated, ServiceDeleted, ServiceDisowned, ServiceOwned, ServiceSettings, ServiceUpdated,
    UploadsRefused,
};
use cairn_events::{
    AppendRequest, Clock, DomainEvent, DueItem, Effects, EventStore, ExpectedVersion, Metadata,
    NewEvent, StoreError,
};
use chrono::{DateTime, Utc};
use rand::Rng;
use sha2::{Digest, Sha256};
use uuid::Uuid;

pub use decide::{Invalid, Turned};
pub use error::BackupError;
pub use state::{ApiKey, Backup, BlobState, Fold, ResourceState, ServiceState};

use crate::blobs::{Blobs, Written};

/// The prefix of backup API keys, so they are recognisable in logs and secret scanners.
pub const KEY_PREFIX: &str = "cairn_bk_";
/// How many times a command reads and decides again after losing a race.
const TRIES: usize = 5;
/// A stream's snapshot is renewed once this many events have come after it.
const SNAPSHOT_EVERY: usize = 64;
/// Due-item actions: apply a resource's retention (after each backup, when its oldest
/// backup expires, and when it is deleted), and delete a file no backup refers to.
pub const RETENTION: &str = "retention";
pub const DELETE_FILE: &str = "delete-file";
/// Look whether an expected backup came.
pub const CHECK_MISSED: &str = "check-missed";
/// The most backups one run of the retention deletes.
const RETENTION_BATCH: usize = 500;

/// The due item looking, at `at`, whether `resource_id`'s expected backup came.
fn missed_item(resource_id: Uuid, at: DateTime<Utc>) -> DueItem {
    DueItem {
        key: format!("{}:{CHECK_MISSED}", backup::resource_stream(resource_id)),
        stream_id: backup::resource_stream(resource_id),
        action: CHECK_MISSED.to_owned(),
        due_at: at,
    }
}

/// The check of the next backup `settings` expect after `since`: scheduled, or (no
/// expectation) dropped.
fn missed_check(resource_id: Uuid, settings: &ResourceSettings, since: DateTime<Utc>) -> Effects {
    let next = settings
        .expected
        .as_ref()
        .and_then(|expected| decide::next_expected(expected, since));
    match next {
        Some((_, missed_at)) => Effects {
            schedule: vec![missed_item(resource_id, missed_at)],
            ..Effects::default()
        },
        None => Effects {
            unschedule: vec![missed_item(resource_id, since).key],
            ..Effects::default()
        },
    }
}

/// The due item applying `resource_id`'s retention at `at`.
fn retention_item(resource_id: Uuid, at: DateTime<Utc>) -> DueItem {
    DueItem {
        key: format!("{}:{RETENTION}", backup::resource_stream(resource_id)),
        stream_id: backup::resource_stream(resource_id),
        action: RETENTION.to_owned(),
        due_at: at,
    }
}

/// The due item deleting the stored file `blob` (the content of `content_stream`).
fn delete_file_item(content_stream: &str, blob: &str, at: DateTime<Utc>) -> DueItem {
    DueItem {
        key: format!("{DELETE_FILE}:{blob}"),
        stream_id: content_stream.to_owned(),
        action: DELETE_FILE.to_owned(),
        due_at: at,
    }
}

/// What a command came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Written,
    /// Nothing to do.
    Nothing,
    /// Nothing to do yet: look again at this time (the due item is moved there).
    NotYet(DateTime<Utc>),
}

/// The backup use cases, over one event store and blob store.
#[derive(Clone)]
pub struct Backups {
    events: Arc<dyn EventStore>,
    pub blobs: Blobs,
    clock: Clock,
    /// The largest backup any service may take.
    pub max_backup_bytes: u64,
    /// Signs download links.
    key: Arc<[u8]>,
    /// How long a download link works.
    pub link_ttl: chrono::Duration,
    /// Where links point.
    pub public_url: String,
    notices: Arc<notices::Notices>,
    /// Refused uploads not yet recorded, by resource and reason (see
    /// [`Backups::record_refusal`]).
    refusals: Arc<Mutex<HashMap<(Uuid, &'static str), Held>>>,
}

/// Refusals of one resource and reason held back by this process.
#[derive(Clone, Copy, Debug)]
struct Held {
    last_recorded: Instant,
    count: u32,
}

/// A process records refused uploads of one resource and reason at most this often.
const RECORD_REFUSALS_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// An upload let in: the service and resource as they were read, and the key that
/// opened it.
#[derive(Clone, Debug)]
pub struct Admitted {
    pub service: ServiceState,
    pub resource: ResourceState,
    pub key_id: Option<Uuid>,
}

/// A stored backup's answer.
#[derive(Clone, Debug)]
pub struct Stored {
    pub backup: BackupStored,
    pub at: DateTime<Utc>,
}

impl Backups {
    /// The use cases; links point at `public_url`, and are signed with `key`.
    pub fn new(
        events: Arc<dyn EventStore>,
        blobs: Blobs,
        clock: Clock,
        key: &[u8],
        public_url: &str,
    ) -> Result<Self, BackupError> {
        let notices = notices::Notices::new(public_url).map_err(|e| {
            BackupError::Store(StoreError::Invalid(format!("email templates: {e}")))
        })?;
        Ok(Backups {
            events,
            blobs,
            clock,
            max_backup_bytes: 1 << 40,
            key: key.into(),
            link_ttl: chrono::Duration::hours(12),
            public_url: public_url.to_owned(),
            notices: Arc::new(notices),
            refusals: Arc::default(),
        })
    }

    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    fn metadata(actor: Uuid) -> Metadata {
        Metadata {
            actor: Some(actor.to_string()),
            correlation_id: Some(Uuid::now_v7()),
            causation_id: None,
        }
    }

    fn event(&self, event: &impl DomainEvent, actor: Uuid) -> NewEvent {
        NewEvent::at(event, Self::metadata(actor), self.now())
    }

    pub async fn service(&self, service_id: Uuid) -> Result<Option<ServiceState>, BackupError> {
        self.folded(&backup::service_stream(service_id)).await
    }

    pub async fn resource(&self, resource_id: Uuid) -> Result<Option<ResourceState>, BackupError> {
        self.folded(&backup::resource_stream(resource_id)).await
    }

    /// A stream's fold: from its last snapshot and the events after, a new snapshot kept
    /// once [`SNAPSHOT_EVERY`] events have come since. Services and resources grow with
    /// every key use and every backup stored and deleted, and are read on every upload.
    async fn folded<S: Fold>(&self, stream: &str) -> Result<Option<S>, BackupError> {
        let snapshot = match self.events.read_snapshot(stream, S::SNAPSHOT).await {
            Ok(snapshot) => snapshot.and_then(|s| serde_json::from_value::<S>(s.state).ok()),
            Err(error) => {
                tracing::warn!(%error, %stream, "a snapshot could not be read; reading the stream");
                None
            }
        };
        let state = match snapshot {
            Some(mut state) => {
                let events = self
                    .events
                    .read_stream_after(stream, state.version())
                    .await?;
                for event in &events {
                    state.fold_in(event)?;
                }
                Some((state, events.len()))
            }
            None => {
                let events = self.events.read_stream(stream).await?;
                S::fold(&events)?.map(|state| (state, events.len()))
            }
        };
        let Some((state, read)) = state else {
            return Ok(None);
        };
        if read >= SNAPSHOT_EVERY {
            let snapshot = cairn_events::Snapshot {
                version: state.version(),
                state: serde_json::to_value(&state).unwrap_or_default(),
            };
            // Derived data: a failure costs a longer read next time, nothing else.
            if let Err(error) = self
                .events
                .write_snapshot(stream, S::SNAPSHOT, &snapshot)
                .await
            {
                tracing::warn!(%error, %stream, "a snapshot could not be kept");
            }
        }
        Ok(Some(state))
    }

    /// `owner`'s live service, or [`BackupError::NotFound`].
    pub async fn owned_service(
        &self,
        owner: Uuid,
        service_id: Uuid,
    ) -> Result<ServiceState, BackupError> {
        match self.service(service_id).await? {
            Some(service) if service.owner == owner && !service.deleted => Ok(service),
            _ => Err(BackupError::NotFound),
        }
    }

    /// A backup by its id alone: its resource (as it is now) and the backup, while the
    /// resource keeps it.
    pub async fn backup(
        &self,
        backup_id: Uuid,
    ) -> Result<Option<(ResourceState, Backup)>, BackupError> {
        let pointer = self
            .events
            .read_stream(&backup::backup_stream(backup_id))
            .await?;
        let Some(first) = pointer.first() else {
            return Ok(None);
        };
        let recorded = BackupRecorded::decode(first)?;
        let Some(resource) = self.resource(recorded.resource_id).await? else {
            return Ok(None);
        };
        let found = resource.backup(backup_id).cloned();
        Ok(found.filter(|_| !resource.deleted).map(|b| (resource, b)))
    }

    /// `owner`'s live resource, or [`BackupError::NotFound`].
    pub async fn owned_resource(
        &self,
        owner: Uuid,
        resource_id: Uuid,
    ) -> Result<ResourceState, BackupError> {
        match self.resource(resource_id).await? {
            Some(resource) if resource.owner == owner && !resource.deleted => Ok(resource),
            _ => Err(BackupError::NotFound),
        }
    }

    /// A new service for `owner`.
    pub async fn create_service(
        &self,
        owner: Uuid,
        settings: ServiceSettings,
    ) -> Result<ServiceState, BackupError> {
        let settings = decide::service_settings(settings)?;
        let service_id = Uuid::now_v7();
        let secret: [u8; 24] = rand::random();
        let created = ServiceCreated {
            service_id,
            owner,
            settings,
            webhook_secret: Some(format!(
                "whsec_{}",
                base64::engine::general_purpose::STANDARD.encode(secret)
            )),
        };
        let request = AppendRequest::new(
            backup::service_stream(service_id),
            ExpectedVersion::NoStream,
            vec![self.event(&created, owner)],
        )
        .and_stream(
            backup::owner_stream(owner),
            ExpectedVersion::Any,
            vec![self.event(&ServiceOwned { service_id }, owner)],
        );
        self.events.append(request).await?;
        self.owned_service(owner, service_id).await
    }

    /// `owner`'s live services, oldest first.
    pub async fn services_of(&self, owner: Uuid) -> Result<Vec<ServiceState>, BackupError> {
        let index = self
            .events
            .read_stream(&backup::owner_stream(owner))
            .await?;
        let mut ids = Vec::new();
        for event in &index {
            match event.event_type.as_str() {
                ServiceOwned::TYPE => ids.push(ServiceOwned::decode(event)?.service_id),
                ServiceDisowned::TYPE => {
                    let gone = ServiceDisowned::decode(event)?.service_id;
                    ids.retain(|id| *id != gone);
                }
                _ => {}
            }
        }
        let streams: Vec<String> = ids.iter().map(|id| backup::service_stream(*id)).collect();
        let mut read = self.events.read_streams(&streams).await?;
        let mut services = Vec::with_capacity(ids.len());
        for stream in &streams {
            let events = read.remove(stream).unwrap_or_default();
            if let Some(service) = ServiceState::of(&events)?
                && service.owner == owner
                && !service.deleted
            {
                services.push(service);
            }
        }
        Ok(services)
    }

    /// The live resources of `owner`'s service, oldest first.
    pub async fn resources_of(
        &self,
        owner: Uuid,
        service_id: Uuid,
    ) -> Result<Vec<ResourceState>, BackupError> {
        let service = self.owned_service(owner, service_id).await?;
        let streams: Vec<String> = service
            .resources
            .iter()
            .map(|id| backup::resource_stream(*id))
            .collect();
        let mut read = self.events.read_streams(&streams).await?;
        let mut resources = Vec::with_capacity(streams.len());
        for stream in &streams {
            let events = read.remove(stream).unwrap_or_default();
            if let Some(resource) = ResourceState::of(&events)?
                && !resource.deleted
            {
                resources.push(resource);
            }
        }
        Ok(resources)
    }

    /// Change `owner`'s service: `change` is given its settings as they are and returns
    /// them as they should be.
    pub async fn update_service(
        &self,
        owner: Uuid,
        service_id: Uuid,
        change: impl Fn(ServiceSettings) -> Result<ServiceSettings, Invalid>,
    ) -> Result<ServiceState, BackupError> {
        for _ in 0..TRIES {
            let service = self.owned_service(owner, service_id).await?;
            let settings = decide::service_settings(change(service.settings.clone())?)?;
            if settings == service.settings {
                return Ok(service);
            }
            let updated = ServiceUpdated {
                service_id,
                settings,
            };
            let append = self
                .events
                .append(AppendRequest::new(
                    backup::service_stream(service_id),
                    ExpectedVersion::Exact(service.version),
                    vec![self.event(&updated, owner)],
                ))
                .await;
            match append {
                Ok(_) => return self.owned_service(owner, service_id).await,
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(conflict(&backup::service_stream(service_id)))
    }

    /// Delete `owner`'s service and its resources: uploads to them are refused at once.
    pub async fn delete_service(&self, owner: Uuid, service_id: Uuid) -> Result<(), BackupError> {
        for _ in 0..TRIES {
            let service = self.owned_service(owner, service_id).await?;
            let deleted = ServiceDeleted { service_id };
            let mut request = AppendRequest::new(
                backup::service_stream(service_id),
                ExpectedVersion::Exact(service.version),
                vec![self.event(&deleted, owner)],
            )
            .and_stream(
                backup::owner_stream(owner),
                ExpectedVersion::Any,
                vec![self.event(&ServiceDisowned { service_id }, owner)],
            );
            let mut effects = Effects::default();
            for resource_id in &service.resources {
                request = request.and_stream(
                    backup::resource_stream(*resource_id),
                    ExpectedVersion::Any,
                    vec![self.event(
                        &ResourceDeleted {
                            resource_id: *resource_id,
                        },
                        owner,
                    )],
                );
                effects
                    .schedule
                    .push(retention_item(*resource_id, self.now()));
            }
            let request = request.with_effects(effects);
            match self.events.append(request).await {
                Ok(_) => return Ok(()),
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(conflict(&backup::service_stream(service_id)))
    }

    /// A new API key for `owner`'s service: the key itself is returned once, and only
    /// its hash kept.
    pub async fn create_key(
        &self,
        owner: Uuid,
        service_id: Uuid,
        name: &str,
    ) -> Result<(ApiKey, String), BackupError> {
        let name = decide::name("name", name)?;
        let service = self.owned_service(owner, service_id).await?;
        let key = mint_key();
        let created = ApiKeyCreated {
            service_id,
            key_id: Uuid::now_v7(),
            name,
            hash: key_hash(&key),
        };
        // Any version: a key added beside another change conflicts with nothing.
        self.events
            .append(AppendRequest::new(
                backup::service_stream(service.service_id),
                ExpectedVersion::Any,
                vec![self.event(&created, owner)],
            ))
            .await?;
        let made = ApiKey {
            key_id: created.key_id,
            name: created.name,
            hash: created.hash,
            created_at: self.now(),
            last_used: None,
        };
        Ok((made, key))
    }

    /// Revoke a key of `owner`'s service.
    pub async fn revoke_key(
        &self,
        owner: Uuid,
        service_id: Uuid,
        key_id: Uuid,
    ) -> Result<(), BackupError> {
        let service = self.owned_service(owner, service_id).await?;
        if !service.keys.iter().any(|k| k.key_id == key_id) {
            return Err(BackupError::NotFound);
        }
        let revoked = ApiKeyRevoked { service_id, key_id };
        self.events
            .append(AppendRequest::new(
                backup::service_stream(service_id),
                ExpectedVersion::Any,
                vec![self.event(&revoked, owner)],
            ))
            .await?;
        Ok(())
    }

    /// A new resource in `owner`'s service.
    pub async fn create_resource(
        &self,
        owner: Uuid,
        service_id: Uuid,
        settings: ResourceSettings,
    ) -> Result<ResourceState, BackupError> {
        let settings = decide::resource_settings(settings)?;
        for _ in 0..TRIES {
            let service = self.owned_service(owner, service_id).await?;
            let resource_id = random_id();
            let created = ResourceCreated {
                resource_id,
                service_id,
                owner,
                settings: settings.clone(),
            };
            let added = ResourceAdded {
                service_id,
                resource_id,
            };
            // At the service's version: a resource is never added to a deleted service.
            let request = AppendRequest::new(
                backup::service_stream(service_id),
                ExpectedVersion::Exact(service.version),
                vec![self.event(&added, owner)],
            )
            .and_stream(
                backup::resource_stream(resource_id),
                ExpectedVersion::NoStream,
                vec![self.event(&created, owner)],
            )
            .with_effects(missed_check(resource_id, &settings, self.now()));
            match self.events.append(request).await {
                Ok(_) => return self.owned_resource(owner, resource_id).await,
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(conflict(&backup::service_stream(service_id)))
    }

    /// Change `owner`'s resource, as [`Backups::update_service`] does a service.
    pub async fn update_resource(
        &self,
        owner: Uuid,
        resource_id: Uuid,
        change: impl Fn(ResourceSettings) -> Result<ResourceSettings, Invalid>,
    ) -> Result<ResourceState, BackupError> {
        for _ in 0..TRIES {
            let resource = self.owned_resource(owner, resource_id).await?;
            let settings = decide::resource_settings(change(resource.settings.clone())?)?;
            if settings == resource.settings {
                return Ok(resource);
            }
            // A changed expectation starts from now.
            let effects = if settings.expected == resource.settings.expected {
                Effects::default()
            } else {
                missed_check(resource_id, &settings, self.now())
            };
            let updated = ResourceUpdated {
                resource_id,
                settings,
            };
            let append = self
                .events
                .append(
                    AppendRequest::new(
                        backup::resource_stream(resource_id),
                        ExpectedVersion::Exact(resource.version),
                        vec![self.event(&updated, owner)],
                    )
                    .with_effects(effects),
                )
                .await;
            match append {
                Ok(_) => return self.owned_resource(owner, resource_id).await,
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(conflict(&backup::resource_stream(resource_id)))
    }

    /// Delete `owner`'s resource: uploads to it are refused at once.
    pub async fn delete_resource(&self, owner: Uuid, resource_id: Uuid) -> Result<(), BackupError> {
        let resource = self.owned_resource(owner, resource_id).await?;
        let removed = ResourceRemoved {
            service_id: resource.service_id,
            resource_id,
        };
        let request = AppendRequest::new(
            backup::resource_stream(resource_id),
            ExpectedVersion::Any,
            vec![self.event(&ResourceDeleted { resource_id }, owner)],
        )
        .and_stream(
            backup::service_stream(resource.service_id),
            ExpectedVersion::Any,
            vec![self.event(&removed, owner)],
        )
        // Its backups go by the retention's due item, which deletes every backup of a
        // deleted resource (and any an upload under way records after).
        .with_effects(Effects {
            schedule: vec![retention_item(resource_id, self.now())],
            ..Effects::default()
        });
        self.events.append(request).await?;
        Ok(())
    }

    /// Whether an upload to `resource_id` gets in, with the `Authorization` header given
    /// and from `client` ([`decide::admit`]).
    pub async fn admit(
        &self,
        resource_id: Uuid,
        authorization: Option<&str>,
        client: Option<IpAddr>,
    ) -> Result<Result<Admitted, Turned>, BackupError> {
        let Some(resource) = self.resource(resource_id).await? else {
            return Ok(Err(Turned::Unknown));
        };
        let Some(service) = self.service(resource.service_id).await? else {
            return Ok(Err(Turned::Unknown));
        };
        let hash = authorization.and_then(decide::presented_key).map(key_hash);
        match decide::admit(&service, &resource, hash.as_deref(), client) {
            Ok(key_id) => Ok(Ok(Admitted {
                service,
                resource,
                key_id,
            })),
            Err(turned) => {
                let reason = match turned {
                    Turned::BadKey => Some("bad_key"),
                    Turned::Blocked(_) => Some("ip_blocked"),
                    Turned::Unknown | Turned::Inactive => None,
                };
                if let Some(reason) = reason
                    && let Err(error) = self
                        .record_refusal(&service, &resource, reason, client)
                        .await
                {
                    tracing::warn!(%error, "a refused upload could not be recorded");
                }
                Ok(Err(turned))
            }
        }
    }

    /// Record a refused upload (`reason`: `bad_key` or `ip_blocked`), telling the owner
    /// if they asked to be told and were not told in the last hour. A flood of refusals
    /// costs one append a minute per resource and reason in each process: the others are
    /// counted and recorded with the next.
    async fn record_refusal(
        &self,
        service: &ServiceState,
        resource: &ResourceState,
        reason: &'static str,
        client: Option<IpAddr>,
    ) -> Result<(), BackupError> {
        let count = {
            let mut held = self.refusals.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            let entry = held.entry((resource.resource_id, reason)).or_insert(Held {
                last_recorded: now.checked_sub(RECORD_REFUSALS_EVERY).unwrap_or(now),
                count: 0,
            });
            entry.count += 1;
            if entry.count > 1 && now.duration_since(entry.last_recorded) < RECORD_REFUSALS_EVERY {
                return Ok(());
            }
            entry.last_recorded = now;
            std::mem::take(&mut entry.count)
        };
        let now = self.now();
        let notice = decide::refusal_notice(service, resource, reason, count, now);
        let client = client.map(|ip| ip.to_string());
        let refused = UploadsRefused {
            resource_id: resource.resource_id,
            reason: reason.to_owned(),
            client: client.clone(),
            count,
            notified: notice.is_some(),
        };
        let event = self.event(&refused, resource.owner);
        let outbox = match notice {
            Some(total) => {
                let mut outbox = self.notices.refused(
                    &service.settings.notifications.emails,
                    service,
                    resource,
                    reason,
                    client.as_deref(),
                    total,
                    event.event_id,
                    now,
                );
                outbox.extend(self.notices.webhooks(
                    service,
                    resource,
                    reason,
                    serde_json::json!({"reason": reason, "client": client, "count": total}),
                    &format!("uploads-refused:{}", event.event_id),
                    now,
                ));
                outbox
            }
            None => Vec::new(),
        };
        let request = AppendRequest::new(
            backup::resource_stream(resource.resource_id),
            ExpectedVersion::Any,
            vec![event],
        )
        .with_effects(Effects {
            outbox,
            ..Effects::default()
        });
        self.events.append(request).await?;
        Ok(())
    }

    /// Where an upload to `service_id` is written before it is recorded: its own name,
    /// which becomes the content's if no backup of the service has that content.
    pub fn new_blob(service_id: Uuid) -> String {
        format!("backups/{service_id}/{:032x}", rand::random::<u128>())
    }

    /// Record a backup whose file `written` is in the blob store: in its resource, and in
    /// its content's count. If the service keeps the same content already, the backup
    /// uses that file and `written` is deleted.
    pub async fn store(
        &self,
        admitted: &Admitted,
        written: Written,
        format: String,
        file_name: String,
    ) -> Result<Stored, BackupError> {
        let service_id = admitted.service.service_id;
        let resource_id = admitted.resource.resource_id;
        let actor = admitted.key_id.unwrap_or(admitted.service.owner);
        let content_stream = backup::blob_stream(service_id, &written.sha256);
        for _ in 0..TRIES {
            let events = self.events.read_stream(&content_stream).await?;
            let content = BlobState::of(&events)?;
            let blob = match decide::content(&content, &written.blob) {
                decide::Content::Shared(blob) | decide::Content::Own(blob) => blob,
            };
            let now = self.now();
            let stored = BackupStored {
                backup_id: Uuid::now_v7(),
                resource_id,
                service_id,
                format: format.clone(),
                file_name: file_name.clone(),
                bytes: written.bytes,
                sha256: written.sha256.clone(),
                blob: blob.clone(),
                key_id: admitted.key_id,
            };
            let referenced = BlobReferenced {
                blob: blob.clone(),
                backup_id: stored.backup_id,
            };
            // The content's stream at the version read: a file being discarded is never
            // referred to again, and a reference is never lost to a discard.
            // After a missed one, a backup is news: back to normal.
            let mut events = vec![self.event(&stored, actor)];
            if admitted.resource.missed.is_some() {
                events.push(self.event(&BackupsResumed { resource_id }, actor));
            }
            let mut request = AppendRequest::new(
                backup::resource_stream(resource_id),
                ExpectedVersion::Any,
                events,
            )
            .and_stream(
                content_stream.clone(),
                ExpectedVersion::Exact(content.version),
                vec![self.event(&referenced, actor)],
            )
            .and_stream(
                backup::backup_stream(stored.backup_id),
                ExpectedVersion::NoStream,
                vec![self.event(
                    &BackupRecorded {
                        backup_id: stored.backup_id,
                        resource_id,
                    },
                    actor,
                )],
            );
            let to = decide::recipients(&admitted.service, "backup_created");
            let url = self.link(stored.backup_id, now);
            let mut effects = missed_check(resource_id, &admitted.resource.settings, now);
            // The retention looks again when it may have something to delete: at once for
            // counts (this backup may push one out), else when the oldest backup expires.
            let check_at = match &admitted.service.settings.retention {
                backup::Retention::Counts { .. } => Some(now),
                backup::Retention::Days { days } => {
                    admitted.resource.backups.first().map(|oldest| {
                        (oldest.created_at + chrono::Duration::days(i64::from(*days))).max(now)
                    })
                }
            };
            if let Some(at) = check_at {
                effects.schedule.push(retention_item(resource_id, at));
            }
            effects.outbox = self.notices.created(
                to,
                &admitted.service,
                &admitted.resource,
                &stored,
                &url,
                now,
            );
            effects.outbox.extend(self.notices.webhooks(
                &admitted.service,
                &admitted.resource,
                "backup_created",
                serde_json::json!({"backup": {
                    "id": stored.backup_id.to_string(),
                    "format": stored.format,
                    "file_name": stored.file_name,
                    "bytes": stored.bytes,
                    "sha256": stored.sha256,
                    "url": url,
                }}),
                &format!("backup-created:{}", stored.backup_id),
                now,
            ));
            if let Some(due) = admitted.resource.missed {
                let to = decide::recipients(&admitted.service, "back_to_normal");
                effects.outbox.extend(self.notices.resumed(
                    to,
                    &admitted.service,
                    &admitted.resource,
                    due,
                    now,
                ));
                effects.outbox.extend(self.notices.webhooks(
                    &admitted.service,
                    &admitted.resource,
                    "back_to_normal",
                    serde_json::json!({"missed_due_at": due.to_rfc3339()}),
                    &format!("backups-resumed:{resource_id}:{}", due.timestamp()),
                    now,
                ));
            }
            request = request.with_effects(effects);
            if let Some(key_id) = admitted.key_id
                && decide::record_key_use(&admitted.service, key_id, now)
            {
                request = request.and_stream(
                    backup::service_stream(service_id),
                    ExpectedVersion::Any,
                    vec![self.event(&ApiKeyUsed { service_id, key_id }, actor)],
                );
            }
            match self.events.append(request).await {
                Ok(_) => {
                    if blob != written.blob {
                        self.blobs
                            .delete_quietly(&written.blob, "the sweep will delete it")
                            .await;
                    }
                    return Ok(Stored {
                        backup: stored,
                        at: now,
                    });
                }
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(conflict(&content_stream))
    }
}

impl Backups {
    /// Whether `resource_id`'s expected backup came; if it has not by the end of its
    /// grace, record it missed and tell the owner (once, until backups come again).
    pub async fn check_missed(&self, resource_id: Uuid) -> Result<Outcome, BackupError> {
        for _ in 0..TRIES {
            let Some(resource) = self.resource(resource_id).await? else {
                return Ok(Outcome::Nothing);
            };
            let Some(service) = self.service(resource.service_id).await? else {
                return Ok(Outcome::Nothing);
            };
            let now = self.now();
            let next = resource
                .settings
                .expected
                .as_ref()
                .and_then(|e| decide::next_expected(e, decide::awaited_since(&resource)));
            let Some((due, missed_at)) = next else {
                return Ok(Outcome::Nothing);
            };
            if service.deleted || resource.deleted || resource.missed.is_some() {
                return Ok(Outcome::Nothing);
            }
            if now + decide::EARLY < missed_at {
                return Ok(Outcome::NotYet(missed_at));
            }
            let missed = BackupMissed {
                resource_id,
                due_at: due,
            };
            let to = decide::recipients(&service, "backup_missed");
            // At the version read: a backup arriving meanwhile makes this look again.
            let request = AppendRequest::new(
                backup::resource_stream(resource_id),
                ExpectedVersion::Exact(resource.version),
                vec![self.event(&missed, resource.owner)],
            )
            .with_effects(Effects {
                unschedule: vec![missed_item(resource_id, now).key],
                outbox: self
                    .notices
                    .missed(to, &service, &resource, due)
                    .into_iter()
                    .chain(self.notices.webhooks(
                        &service,
                        &resource,
                        "backup_missed",
                        serde_json::json!({"due_at": due.to_rfc3339()}),
                        &format!("backup-missed:{resource_id}:{}", due.timestamp()),
                        now,
                    ))
                    .collect(),
                ..Effects::default()
            });
            match self.events.append(request).await {
                Ok(_) => return Ok(Outcome::Written),
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(conflict(&backup::resource_stream(resource_id)))
    }

    /// Delete the backups of `resource_id` its service's retention no longer keeps (all of
    /// them, if the resource or its service was deleted), release their files (a file no
    /// backup refers to any more is deleted by a due item of its own), and look again
    /// when the next one expires.
    pub async fn apply_retention(&self, resource_id: Uuid) -> Result<Outcome, BackupError> {
        for _ in 0..TRIES {
            let Some(resource) = self.resource(resource_id).await? else {
                return Ok(Outcome::Nothing);
            };
            let service = self.service(resource.service_id).await?;
            let now = self.now();
            let (mut gone, reason, mut next) = match &service {
                Some(service) if !service.deleted && !resource.deleted => {
                    let retention = &service.settings.retention;
                    let gone = decide::expired(&resource.backups, retention, now + decide::EARLY);
                    let going: std::collections::HashSet<&Uuid> = gone.iter().collect();
                    let kept: Vec<Backup> = resource
                        .backups
                        .iter()
                        .filter(|b| !going.contains(&b.stored.backup_id))
                        .cloned()
                        .collect();
                    (gone, "retention", decide::next_expiry(&kept, retention))
                }
                _ => (
                    resource
                        .backups
                        .iter()
                        .map(|b| b.stored.backup_id)
                        .collect(),
                    "resource_deleted",
                    None,
                ),
            };
            if gone.is_empty() {
                return Ok(match next {
                    Some(at) if at > now => Outcome::NotYet(at),
                    _ => Outcome::Nothing,
                });
            }
            // A large sweep goes a batch at a time, each its own append: the rest at once
            // after, uploads answered in between.
            if gone.len() > RETENTION_BATCH {
                gone.truncate(RETENTION_BATCH);
                next = Some(now);
            }
            let actor = resource.owner;
            let mut request = AppendRequest::new(
                backup::resource_stream(resource_id),
                ExpectedVersion::Exact(resource.version),
                gone.iter()
                    .map(|backup_id| {
                        self.event(
                            &BackupDeleted {
                                backup_id: *backup_id,
                                reason: reason.to_owned(),
                            },
                            actor,
                        )
                    })
                    .collect(),
            );
            // Each content the deleted backups refer to: released, and discarded when
            // nothing refers to it any more.
            let mut by_content: std::collections::BTreeMap<String, Vec<Uuid>> =
                std::collections::BTreeMap::new();
            let by_id: HashMap<Uuid, &Backup> = resource
                .backups
                .iter()
                .map(|b| (b.stored.backup_id, b))
                .collect();
            for backup_id in &gone {
                if let Some(backup) = by_id.get(backup_id) {
                    by_content
                        .entry(backup::blob_stream(
                            backup.stored.service_id,
                            &backup.stored.sha256,
                        ))
                        .or_default()
                        .push(*backup_id);
                }
            }
            let streams: Vec<String> = by_content.keys().cloned().collect();
            let mut read = self.events.read_streams(&streams).await?;
            let mut effects = Effects::default();
            for (stream, released) in &by_content {
                let content = BlobState::of(&read.remove(stream).unwrap_or_default())?;
                let mut events: Vec<NewEvent> = released
                    .iter()
                    .map(|backup_id| {
                        self.event(
                            &BlobReleased {
                                backup_id: *backup_id,
                            },
                            actor,
                        )
                    })
                    .collect();
                let left = content
                    .refs
                    .iter()
                    .filter(|r| !released.contains(r))
                    .count();
                if left == 0
                    && let Some(blob) = &content.blob
                {
                    events.push(self.event(&BlobDiscarded { blob: blob.clone() }, actor));
                    effects.schedule.push(delete_file_item(stream, blob, now));
                }
                request = request.and_stream(
                    stream.clone(),
                    ExpectedVersion::Exact(content.version),
                    events,
                );
            }
            match next {
                Some(at) => effects.schedule.push(retention_item(resource_id, at)),
                None => effects
                    .unschedule
                    .push(retention_item(resource_id, now).key),
            }
            match self.events.append(request.with_effects(effects)).await {
                Ok(_) => return Ok(Outcome::Written),
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(conflict(&backup::resource_stream(resource_id)))
    }
}

impl Backups {
    /// Delete stored backup files that no content keeps, last written before `cutoff`:
    /// uploads whose process died between writing the file and recording it, partial
    /// uploads cut off by a crash, and files whose deletion failed. Which files are kept
    /// comes from every content stream's events (read in log order), so the sweep costs a
    /// pass over them. Returns how many went.
    pub async fn sweep_files(&self, cutoff: DateTime<Utc>) -> Result<usize, BackupError> {
        let stale = self.blobs.written_before("backups", cutoff).await?;
        if stale.is_empty() {
            return Ok(0);
        }
        let mut kept = std::collections::HashSet::new();
        let mut after = 0;
        loop {
            let batch = self.events.read_all(after, 1000, &[backup::BLOB]).await?;
            let Some(last) = batch.last() else {
                break;
            };
            after = last.position;
            for event in &batch {
                match event.event_type.as_str() {
                    BlobReferenced::TYPE => {
                        kept.insert(BlobReferenced::decode(event)?.blob);
                    }
                    BlobDiscarded::TYPE => {
                        kept.remove(&BlobDiscarded::decode(event)?.blob);
                    }
                    _ => {}
                }
            }
        }
        let mut swept = 0;
        for blob in stale.iter().filter(|blob| !kept.contains(*blob)) {
            // One that cannot be deleted must not hold up the rest.
            match self.blobs.delete_stale(blob).await {
                Ok(()) => {
                    tracing::info!(%blob, "deleted a backup file no backup keeps");
                    swept += 1;
                }
                Err(error) => tracing::warn!(%error, %blob, "a backup file could not be deleted"),
            }
        }
        Ok(swept)
    }
}

/// A resource's id is its upload URL, which anyone may learn from a cron line: 122
/// random bits, so that the ids of others' resources cannot be guessed from it.
fn random_id() -> Uuid {
    uuid::Builder::from_random_bytes(rand::random()).into_uuid()
}

/// A command that kept losing its race.
fn conflict(stream_id: &str) -> BackupError {
    BackupError::Store(StoreError::Conflict {
        stream_id: stream_id.to_owned(),
        expected: ExpectedVersion::Any,
        actual: -1,
    })
}

/// A fresh API key: `cairn_bk_` and 32 random bytes, base64url.
pub fn mint_key() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!(
        "{KEY_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// How a key is kept: its SHA-256, hex (a fast hash is enough for a secret of 256 random
/// bits).
pub fn key_hash(key: &str) -> String {
    Sha256::digest(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
