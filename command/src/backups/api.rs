//! The owner's JSON routes for backups, under the bearer token, in Cairn's envelope:
//! services (with their API keys), resources (each with its upload URL), and the backups
//! a resource keeps, with their files. A user sees and touches only their own: anyone
//! else's id answers 404, as an unknown one does.

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use cairn_events::domain::backup::{
    Expected, Notifications, ResourceSettings, Retention, ServiceSettings,
};
use cairn_http::{ApiError, ErrorBody};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use utoipa::{OpenApi, ToSchema};
use uuid::Uuid;

use super::decide::{self, Invalid, RetentionInput};
use super::state::{ApiKey, Backup, ResourceState, ServiceState};
use super::{BackupError, Backups};
use crate::CommandState;
use crate::auth::AuthUser;
use crate::blobs::{Served, serve};

pub fn router() -> Router<CommandState> {
    Router::new()
        .route("/services", post(create_service).get(list_services))
        .route(
            "/services/{id}",
            get(get_service)
                .patch(update_service)
                .delete(delete_service),
        )
        .route("/services/{id}/keys", post(create_key))
        .route("/services/{id}/keys/{key_id}", delete(revoke_key))
        .route(
            "/services/{id}/resources",
            post(create_resource).get(list_resources),
        )
        .route(
            "/resources/{id}",
            get(get_resource)
                .patch(update_resource)
                .delete(delete_resource),
        )
        .route("/resources/{id}/backups", get(list_backups))
        .route("/backups/{id}", get(get_backup))
        .route("/backups/{id}/file", get(download))
}

/// The routes, for the OpenAPI document.
#[derive(OpenApi)]
#[openapi(
    paths(
        create_service,
        list_services,
        get_service,
        update_service,
        delete_service,
        create_key,
        revoke_key,
        create_resource,
        list_resources,
        get_resource,
        update_resource,
        delete_resource,
        list_backups,
        get_backup,
        download
    ),
    components(schemas(
        ServiceInput,
        RetentionIn,
        AuthIn,
        AllowlistIn,
        NotificationsIn,
        ServiceView,
        ServiceData,
        ServiceList,
        KeyView,
        NewKeyInput,
        NewKeyView,
        NewKeyData,
        ResourceInput,
        ExpectedIn,
        ResourceView,
        ResourceData,
        ResourceList,
        BackupView,
        BackupData,
        BackupPage,
        ErrorBody
    ))
)]
pub struct BackupApi;

/// How long backups are kept: `1w`, `1m` (30 days), `3m` (90 days), a number of days
/// (`14` or `"14d"`), or counts as restic and borg keep them. The newest backup of a
/// resource is always kept.
#[derive(Deserialize, ToSchema)]
#[serde(untagged)]
enum RetentionIn {
    #[schema(example = "1m")]
    Period(String),
    Days(u32),
    Counts {
        #[schema(minimum = 1)]
        keep_last: Option<u32>,
        #[schema(minimum = 1)]
        keep_daily: Option<u32>,
        #[schema(minimum = 1)]
        keep_weekly: Option<u32>,
        #[schema(minimum = 1)]
        keep_monthly: Option<u32>,
    },
}

impl RetentionIn {
    fn parse(&self) -> Result<Retention, Invalid> {
        let input = match self {
            RetentionIn::Period(period) => RetentionInput {
                period: Some(period.clone()),
                ..RetentionInput::default()
            },
            RetentionIn::Days(days) => RetentionInput {
                period: Some(days.to_string()),
                ..RetentionInput::default()
            },
            RetentionIn::Counts {
                keep_last,
                keep_daily,
                keep_weekly,
                keep_monthly,
            } => RetentionInput {
                period: None,
                keep_last: *keep_last,
                keep_daily: *keep_daily,
                keep_weekly: *keep_weekly,
                keep_monthly: *keep_monthly,
            },
        };
        decide::retention(&input)
    }
}

#[derive(Deserialize, ToSchema)]
struct AuthIn {
    /// Whether uploads need one of the service's API keys.
    enabled: bool,
}

#[derive(Deserialize, ToSchema)]
struct AllowlistIn {
    /// Whether uploads must come from `ips`.
    enabled: bool,
    /// Addresses and CIDR ranges, IPv4 or IPv6; at most 100.
    #[serde(default)]
    #[schema(example = json!(["203.0.113.7", "10.0.0.0/8", "2001:db8::/32"]))]
    ips: Vec<String>,
}

#[derive(Deserialize, ToSchema)]
struct NotificationsIn {
    /// Addresses emailed; at most 10.
    #[serde(default)]
    emails: Vec<String>,
    /// URLs posted to, signed the Standard Webhooks way; at most 10.
    #[serde(default)]
    webhooks: Vec<String>,
    /// Which happenings: `backup_created`, `bad_key`, `ip_blocked`, `backup_missed`,
    /// `back_to_normal`.
    #[serde(default)]
    on: Vec<String>,
}

/// A service's settings. For `POST` `name` is required and the rest default (retention
/// `1m`, auth and the allowlist off, at most 1 GiB a backup, no notifications); for
/// `PATCH` every field is optional and only those given change.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct ServiceInput {
    #[schema(min_length = 1, max_length = 100, example = "telegram bots")]
    name: Option<String>,
    #[schema(max_length = 1000)]
    description: Option<String>,
    retention: Option<RetentionIn>,
    auth: Option<AuthIn>,
    ip_allowlist: Option<AllowlistIn>,
    /// The largest backup taken, in bytes (default 1 GiB).
    #[schema(minimum = 1)]
    max_backup_bytes: Option<u64>,
    notifications: Option<NotificationsIn>,
}

impl ServiceInput {
    /// `current` with what this input changes.
    fn apply(&self, current: ServiceSettings, cap: u64) -> Result<ServiceSettings, Invalid> {
        let mut settings = current;
        if let Some(name) = &self.name {
            settings.name = name.clone();
        }
        if let Some(description) = &self.description {
            settings.description = description.clone();
        }
        if let Some(retention) = &self.retention {
            settings.retention = retention.parse()?;
        }
        if let Some(auth) = &self.auth {
            settings.auth_enabled = auth.enabled;
        }
        if let Some(allowlist) = &self.ip_allowlist {
            settings.allowlist_enabled = allowlist.enabled;
            settings.allowlist = decide::allowlist(&allowlist.ips)?;
        }
        if self.max_backup_bytes.is_some() {
            settings.max_backup_bytes = decide::max_backup_bytes(self.max_backup_bytes, cap)?;
        }
        if let Some(notifications) = &self.notifications {
            settings.notifications = Notifications {
                emails: notifications.emails.clone(),
                webhooks: notifications.webhooks.clone(),
                on: notifications.on.clone(),
            };
        }
        Ok(settings)
    }
}

#[derive(Serialize, ToSchema)]
pub(crate) struct KeyView {
    id: String,
    name: String,
    #[schema(format = DateTime)]
    created_at: String,
    /// When it last opened an upload (to the minute); `null` if never.
    #[schema(format = DateTime)]
    last_used_at: Option<String>,
}

impl From<&ApiKey> for KeyView {
    fn from(key: &ApiKey) -> Self {
        KeyView {
            id: key.key_id.to_string(),
            name: key.name.clone(),
            created_at: stamp(key.created_at),
            last_used_at: key.last_used.map(stamp),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub(crate) struct ServiceData {
    id: String,
    name: String,
    description: String,
    /// `30d`, or the counts (`keep_daily=7,keep_monthly=12`).
    #[schema(example = "30d")]
    retention: String,
    /// `{"enabled": bool, "keys": [...]}`.
    auth: serde_json::Value,
    /// `{"enabled": bool, "ips": [...]}`.
    ip_allowlist: serde_json::Value,
    max_backup_bytes: u64,
    /// `{"emails", "webhooks", "on", "webhook_secret"}`: webhook calls are signed the
    /// Standard Webhooks way with `webhook_secret`.
    notifications: serde_json::Value,
    /// Its resources' ids.
    resources: Vec<String>,
    #[schema(format = DateTime)]
    created_at: String,
    #[schema(format = DateTime)]
    updated_at: String,
}

impl From<&ServiceState> for ServiceData {
    fn from(service: &ServiceState) -> Self {
        let settings = &service.settings;
        let keys: Vec<KeyView> = service.keys.iter().map(KeyView::from).collect();
        ServiceData {
            id: service.service_id.to_string(),
            name: settings.name.clone(),
            description: settings.description.clone(),
            retention: settings.retention.label(),
            auth: serde_json::json!({"enabled": settings.auth_enabled, "keys": keys}),
            ip_allowlist: serde_json::json!({
                "enabled": settings.allowlist_enabled,
                "ips": settings.allowlist.iter().map(ToString::to_string).collect::<Vec<_>>(),
            }),
            max_backup_bytes: settings.max_backup_bytes,
            notifications: {
                let mut notifications =
                    serde_json::to_value(&settings.notifications).unwrap_or_default();
                if let Some(object) = notifications.as_object_mut() {
                    object.insert(
                        "webhook_secret".into(),
                        service.webhook_secret.clone().into(),
                    );
                }
                notifications
            },
            resources: service.resources.iter().map(Uuid::to_string).collect(),
            created_at: stamp(service.created_at),
            updated_at: stamp(service.updated_at),
        }
    }
}

#[derive(Serialize, ToSchema)]
struct ServiceView {
    data: ServiceData,
}

#[derive(Serialize, ToSchema)]
struct ServiceList {
    data: Vec<ServiceData>,
    /// Always `null`: a user's services come in one page.
    next_cursor: Option<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct NewKeyInput {
    /// What the key is for.
    #[schema(min_length = 1, max_length = 100, example = "nightly cron")]
    name: String,
}

#[derive(Serialize, ToSchema)]
struct NewKeyData {
    id: String,
    name: String,
    /// The key: shown this once, kept only as a hash.
    #[schema(example = "cairn_bk_…")]
    key: String,
}

#[derive(Serialize, ToSchema)]
struct NewKeyView {
    data: NewKeyData,
}

/// A resource's settings: for `POST` `name` is required (`active` defaults to true); for
/// `PATCH` only the fields given change.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct ResourceInput {
    #[schema(min_length = 1, max_length = 100, example = "facts.json")]
    name: Option<String>,
    #[schema(max_length = 1000)]
    description: Option<String>,
    /// An inactive resource refuses uploads.
    active: Option<bool>,
    /// When backups are expected, to be told when one does not come (`backup_missed`)
    /// and when they come again (`back_to_normal`); `null` to expect none.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<ExpectedIn>)]
    expected: Option<Option<ExpectedIn>>,
}

/// A field that may be given as `null` (`Some(None)`) or left out (`None`).
fn present<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

/// When backups are expected: a cron expression (5 fields, 6 with seconds, or `@daily`
/// and the like) in a time zone, or an interval; a backup not arrived `grace_seconds`
/// after it was due is missed.
#[derive(Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ExpectedIn {
    #[schema(example = "0 3 * * *")]
    cron: Option<String>,
    /// With `cron`: an IANA time zone (default `UTC`).
    #[schema(example = "Europe/Berlin")]
    time_zone: Option<String>,
    /// Instead of `cron`: 60 seconds to a year.
    #[schema(minimum = 60, maximum = 31622400)]
    every_seconds: Option<u64>,
    /// How late a backup may be before it is missed (default 0; at most 30 days).
    #[serde(default)]
    #[schema(minimum = 0, maximum = 2592000)]
    grace_seconds: u64,
}

impl From<ExpectedIn> for Expected {
    fn from(input: ExpectedIn) -> Self {
        Expected {
            cron: input.cron,
            time_zone: input.time_zone,
            every_seconds: input.every_seconds,
            grace_seconds: input.grace_seconds,
        }
    }
}

impl From<&Expected> for ExpectedIn {
    fn from(expected: &Expected) -> Self {
        ExpectedIn {
            cron: expected.cron.clone(),
            time_zone: expected.time_zone.clone(),
            every_seconds: expected.every_seconds,
            grace_seconds: expected.grace_seconds,
        }
    }
}

impl ResourceInput {
    fn apply(&self, current: ResourceSettings) -> ResourceSettings {
        ResourceSettings {
            name: self.name.clone().unwrap_or(current.name),
            description: self.description.clone().unwrap_or(current.description),
            active: self.active.unwrap_or(current.active),
            expected: match &self.expected {
                None => current.expected,
                Some(expected) => expected.clone().map(Expected::from),
            },
        }
    }
}

#[derive(Serialize, ToSchema)]
pub(crate) struct ResourceData {
    id: String,
    service: String,
    name: String,
    description: String,
    active: bool,
    /// Where backups are posted.
    #[schema(example = "https://backups.example/3bb2e8c2-b07f-47c1-9f1b-33e59de1f9ff")]
    upload_url: String,
    /// How many backups it keeps.
    backups: usize,
    expected: Option<ExpectedIn>,
    /// While an expected backup is missing: when it was due.
    #[schema(format = DateTime)]
    missed_since: Option<String>,
    #[schema(format = DateTime)]
    last_backup_at: Option<String>,
    #[schema(format = DateTime)]
    created_at: String,
    #[schema(format = DateTime)]
    updated_at: String,
}

#[derive(Serialize, ToSchema)]
struct ResourceView {
    data: ResourceData,
}

#[derive(Serialize, ToSchema)]
struct ResourceList {
    data: Vec<ResourceData>,
    /// Always `null`: a service's resources come in one page.
    next_cursor: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct BackupView {
    id: String,
    resource: String,
    format: String,
    file_name: String,
    bytes: u64,
    /// SHA-256 of the file, hex.
    sha256: String,
    #[schema(format = DateTime)]
    created_at: String,
    /// A signed link to the file that works without a token for a while.
    url: String,
}

#[derive(Serialize, ToSchema)]
struct BackupData {
    data: BackupView,
}

#[derive(Serialize, ToSchema)]
struct BackupPage {
    /// Newest first.
    data: Vec<BackupView>,
    /// Pass as `cursor` for the next (older) page; `null` on the last.
    next_cursor: Option<String>,
}

/// `2026-12-03T09:00:00.000Z`.
fn stamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// A JSON body of type `T`, or the 400 (or 413) saying what is wrong with it.
fn json_body<T: DeserializeOwned>(body: Result<Bytes, BytesRejection>) -> Result<T, ApiError> {
    let body = body.map_err(|e| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::too_large("the request body is too large"),
        _ => ApiError::bad_request("invalid_body", "the body could not be read"),
    })?;
    serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request("invalid_json", format!("the body is not right: {e}")))
}

/// An id from the path; a malformed one is as unknown as a missing one.
fn id(path: Result<Path<String>, PathRejection>) -> Result<Uuid, ApiError> {
    path.ok()
        .and_then(|Path(raw)| Uuid::parse_str(&raw).ok())
        .ok_or_else(ApiError::not_found)
}

fn ids(path: Result<Path<(String, String)>, PathRejection>) -> Result<(Uuid, Uuid), ApiError> {
    path.ok()
        .and_then(|Path((a, b))| Some((Uuid::parse_str(&a).ok()?, Uuid::parse_str(&b).ok()?)))
        .ok_or_else(ApiError::not_found)
}

pub(crate) fn resource_data(backups: &Backups, resource: &ResourceState) -> ResourceData {
    ResourceData {
        id: resource.resource_id.to_string(),
        service: resource.service_id.to_string(),
        name: resource.settings.name.clone(),
        description: resource.settings.description.clone(),
        active: resource.settings.active,
        upload_url: format!(
            "{}/{}",
            backups.public_url.trim_end_matches('/'),
            resource.resource_id
        ),
        backups: resource.backups.len(),
        expected: resource.settings.expected.as_ref().map(ExpectedIn::from),
        missed_since: resource.missed.map(stamp),
        last_backup_at: resource.last_backup_at.map(stamp),
        created_at: stamp(resource.created_at),
        updated_at: stamp(resource.updated_at),
    }
}

pub(crate) fn backup_view(backups: &Backups, backup: &Backup) -> BackupView {
    let stored = &backup.stored;
    BackupView {
        id: stored.backup_id.to_string(),
        resource: stored.resource_id.to_string(),
        format: stored.format.clone(),
        file_name: stored.file_name.clone(),
        bytes: stored.bytes,
        sha256: stored.sha256.clone(),
        created_at: stamp(backup.created_at),
        url: backups.link(stored.backup_id, backups.now()),
    }
}

/// Make a service.
#[utoipa::path(post, path = "/services", tag = "backups", security(("bearer" = [])),
    request_body = ServiceInput,
    responses(
        (status = 201, description = "Made", body = ServiceView),
        (status = 400, description = "A setting is not valid; the code names it (`invalid_name`, `invalid_retention`, `invalid_ip_allowlist_ips`, …)", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
    ))]
async fn create_service(
    State(state): State<CommandState>,
    user: AuthUser,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let input: ServiceInput = json_body(body)?;
    let backups = &state.backups;
    let Some(name) = &input.name else {
        return Err(BackupError::from(Invalid {
            field: "name",
            message: "name is required".into(),
        })
        .json());
    };
    let defaults = ServiceSettings {
        name: name.clone(),
        description: String::new(),
        retention: Retention::default(),
        auth_enabled: false,
        allowlist_enabled: false,
        allowlist: Vec::new(),
        max_backup_bytes: decide::max_backup_bytes(None, backups.max_backup_bytes)
            .map_err(BackupError::from)?,
        notifications: Notifications::default(),
    };
    let settings = input
        .apply(defaults, backups.max_backup_bytes)
        .map_err(BackupError::from)?;
    let service = backups.create_service(user.id, settings).await?;
    Ok((
        StatusCode::CREATED,
        Json(ServiceView {
            data: ServiceData::from(&service),
        }),
    )
        .into_response())
}

/// The caller's services.
#[utoipa::path(get, path = "/services", tag = "backups", security(("bearer" = [])),
    responses(
        (status = 200, description = "Oldest first", body = ServiceList),
        (status = 401, description = "No valid token", body = ErrorBody),
    ))]
async fn list_services(
    State(state): State<CommandState>,
    user: AuthUser,
) -> Result<Json<ServiceList>, ApiError> {
    let services = state.backups.services_of(user.id).await?;
    Ok(Json(ServiceList {
        data: services.iter().map(ServiceData::from).collect(),
        next_cursor: None,
    }))
}

/// One of the caller's services.
#[utoipa::path(get, path = "/services/{id}", tag = "backups", security(("bearer" = [])),
    params(("id" = String, Path, description = "The service's id")),
    responses(
        (status = 200, description = "The service", body = ServiceView),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 404, description = "No such service of the caller's", body = ErrorBody),
    ))]
async fn get_service(
    State(state): State<CommandState>,
    user: AuthUser,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<ServiceView>, ApiError> {
    let service = state.backups.owned_service(user.id, id(path)?).await?;
    Ok(Json(ServiceView {
        data: ServiceData::from(&service),
    }))
}

/// Change a service's settings: only the fields given.
#[utoipa::path(patch, path = "/services/{id}", tag = "backups", security(("bearer" = [])),
    params(("id" = String, Path, description = "The service's id")),
    request_body = ServiceInput,
    responses(
        (status = 200, description = "As it now is", body = ServiceView),
        (status = 400, description = "A setting is not valid; the code names it", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 404, description = "No such service of the caller's", body = ErrorBody),
    ))]
async fn update_service(
    State(state): State<CommandState>,
    user: AuthUser,
    path: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<ServiceView>, ApiError> {
    let service_id = id(path)?;
    let input: ServiceInput = json_body(body)?;
    let cap = state.backups.max_backup_bytes;
    let service = state
        .backups
        .update_service(user.id, service_id, |current| input.apply(current, cap))
        .await?;
    Ok(Json(ServiceView {
        data: ServiceData::from(&service),
    }))
}

/// Delete a service and its resources: uploads to them are refused from now on.
#[utoipa::path(delete, path = "/services/{id}", tag = "backups", security(("bearer" = [])),
    params(("id" = String, Path, description = "The service's id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 404, description = "No such service of the caller's", body = ErrorBody),
    ))]
async fn delete_service(
    State(state): State<CommandState>,
    user: AuthUser,
    path: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    state.backups.delete_service(user.id, id(path)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Make an API key for a service. The key is in this answer only.
#[utoipa::path(post, path = "/services/{id}/keys", tag = "backups", security(("bearer" = [])),
    params(("id" = String, Path, description = "The service's id")),
    request_body = NewKeyInput,
    responses(
        (status = 201, description = "Made", body = NewKeyView),
        (status = 400, description = "No valid name", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 404, description = "No such service of the caller's", body = ErrorBody),
    ))]
async fn create_key(
    State(state): State<CommandState>,
    user: AuthUser,
    path: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let service_id = id(path)?;
    let input: NewKeyInput = json_body(body)?;
    let (made, key) = state
        .backups
        .create_key(user.id, service_id, &input.name)
        .await?;
    let data = NewKeyData {
        id: made.key_id.to_string(),
        name: made.name,
        key,
    };
    Ok((StatusCode::CREATED, Json(NewKeyView { data })).into_response())
}

/// Revoke an API key: it opens no upload from now on.
#[utoipa::path(delete, path = "/services/{id}/keys/{key_id}", tag = "backups", security(("bearer" = [])),
    params(
        ("id" = String, Path, description = "The service's id"),
        ("key_id" = String, Path, description = "The key's id"),
    ),
    responses(
        (status = 204, description = "Revoked"),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 404, description = "No such key of the caller's", body = ErrorBody),
    ))]
async fn revoke_key(
    State(state): State<CommandState>,
    user: AuthUser,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let (service_id, key_id) = ids(path)?;
    state
        .backups
        .revoke_key(user.id, service_id, key_id)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Make a resource in a service: its `upload_url` is where backups are posted.
#[utoipa::path(post, path = "/services/{id}/resources", tag = "backups", security(("bearer" = [])),
    params(("id" = String, Path, description = "The service's id")),
    request_body = ResourceInput,
    responses(
        (status = 201, description = "Made", body = ResourceView),
        (status = 400, description = "A setting is not valid; the code names it", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 404, description = "No such service of the caller's", body = ErrorBody),
    ))]
async fn create_resource(
    State(state): State<CommandState>,
    user: AuthUser,
    path: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let service_id = id(path)?;
    let input: ResourceInput = json_body(body)?;
    let settings = input.apply(ResourceSettings {
        name: String::new(),
        description: String::new(),
        active: true,
        expected: None,
    });
    let backups = &state.backups;
    let resource = backups
        .create_resource(user.id, service_id, settings)
        .await?;
    let data = resource_data(backups, &resource);
    Ok((StatusCode::CREATED, Json(ResourceView { data })).into_response())
}

/// A service's resources.
#[utoipa::path(get, path = "/services/{id}/resources", tag = "backups", security(("bearer" = [])),
    params(("id" = String, Path, description = "The service's id")),
    responses(
        (status = 200, description = "Oldest first", body = ResourceList),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 404, description = "No such service of the caller's", body = ErrorBody),
    ))]
async fn list_resources(
    State(state): State<CommandState>,
    user: AuthUser,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<ResourceList>, ApiError> {
    let backups = &state.backups;
    let resources = backups.resources_of(user.id, id(path)?).await?;
    Ok(Json(ResourceList {
        data: resources
            .iter()
            .map(|r| resource_data(backups, r))
            .collect(),
        next_cursor: None,
    }))
}

/// One of the caller's resources.
#[utoipa::path(get, path = "/resources/{id}", tag = "backups", security(("bearer" = [])),
    params(("id" = String, Path, description = "The resource's id")),
    responses(
        (status = 200, description = "The resource", body = ResourceView),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 404, description = "No such resource of the caller's", body = ErrorBody),
    ))]
async fn get_resource(
    State(state): State<CommandState>,
    user: AuthUser,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<ResourceView>, ApiError> {
    let backups = &state.backups;
    let resource = backups.owned_resource(user.id, id(path)?).await?;
    Ok(Json(ResourceView {
        data: resource_data(backups, &resource),
    }))
}

/// Change a resource: only the fields given.
#[utoipa::path(patch, path = "/resources/{id}", tag = "backups", security(("bearer" = [])),
    params(("id" = String, Path, description = "The resource's id")),
    request_body = ResourceInput,
    responses(
        (status = 200, description = "As it now is", body = ResourceView),
        (status = 400, description = "A setting is not valid; the code names it", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 404, description = "No such resource of the caller's", body = ErrorBody),
    ))]
async fn update_resource(
    State(state): State<CommandState>,
    user: AuthUser,
    path: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<ResourceView>, ApiError> {
    let resource_id = id(path)?;
    let input: ResourceInput = json_body(body)?;
    let backups = &state.backups;
    let resource = backups
        .update_resource(user.id, resource_id, |current| Ok(input.apply(current)))
        .await?;
    Ok(Json(ResourceView {
        data: resource_data(backups, &resource),
    }))
}

/// Delete a resource: uploads to it are refused from now on.
#[utoipa::path(delete, path = "/resources/{id}", tag = "backups", security(("bearer" = [])),
    params(("id" = String, Path, description = "The resource's id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 404, description = "No such resource of the caller's", body = ErrorBody),
    ))]
async fn delete_resource(
    State(state): State<CommandState>,
    user: AuthUser,
    path: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    state.backups.delete_resource(user.id, id(path)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct PageQuery {
    cursor: Option<String>,
    limit: Option<String>,
}

/// The backups a resource keeps, newest first, a page at a time.
#[utoipa::path(get, path = "/resources/{id}/backups", tag = "backups", security(("bearer" = [])),
    params(
        ("id" = String, Path, description = "The resource's id"),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the page before"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 100, description = "Backups per page (default 20)"),
    ),
    responses(
        (status = 200, description = "A page", body = BackupPage),
        (status = 400, description = "A bad limit or cursor", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 404, description = "No such resource of the caller's", body = ErrorBody),
    ))]
async fn list_backups(
    State(state): State<CommandState>,
    user: AuthUser,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<PageQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<BackupPage>, ApiError> {
    let resource_id = id(path)?;
    let Query(query) = query.map_err(|_| {
        ApiError::bad_request("invalid_query", "cursor and limit, at most once each")
    })?;
    let limit = match query.limit.as_deref() {
        None => 20,
        Some(raw) => raw
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=100).contains(n))
            .ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_limit",
                    "limit must be a whole number from 1 to 100",
                )
            })?,
    };
    let cursor = match query.cursor.as_deref() {
        None => None,
        Some(raw) => Some(
            Uuid::parse_str(raw)
                .map_err(|_| ApiError::bad_request("invalid_cursor", "that is not a cursor"))?,
        ),
    };
    let backups = &state.backups;
    let resource = backups.owned_resource(user.id, resource_id).await?;
    // Backup ids grow with time: older than the cursor is after it.
    let mut older: Vec<&Backup> = resource
        .backups
        .iter()
        .rev()
        .filter(|b| cursor.is_none_or(|c| b.stored.backup_id < c))
        .take(limit + 1)
        .collect();
    let more = older.len() > limit;
    older.truncate(limit);
    let next_cursor = more
        .then(|| older.last().map(|b| b.stored.backup_id.to_string()))
        .flatten();
    Ok(Json(BackupPage {
        data: older.iter().map(|b| backup_view(backups, b)).collect(),
        next_cursor,
    }))
}

/// One of the caller's backups.
#[utoipa::path(get, path = "/backups/{id}", tag = "backups", security(("bearer" = [])),
    params(("id" = String, Path, description = "The backup's id")),
    responses(
        (status = 200, description = "The backup", body = BackupData),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 404, description = "No such backup of the caller's (or no longer kept)", body = ErrorBody),
    ))]
async fn get_backup(
    State(state): State<CommandState>,
    user: AuthUser,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<BackupData>, ApiError> {
    let backups = &state.backups;
    match backups.backup(id(path)?).await? {
        Some((resource, backup)) if resource.owner == user.id => Ok(Json(BackupData {
            data: backup_view(backups, &backup),
        })),
        _ => Err(ApiError::not_found()),
    }
}

#[derive(Deserialize)]
struct Signed {
    expires: Option<String>,
    signature: Option<String>,
}

/// A backup's file: with the owner's bearer token, or through the signed link in the
/// upload's answer and the backup list. One `Range` is honoured; the SHA-256 is in
/// `X-Content-SHA256`.
#[utoipa::path(get, path = "/backups/{id}/file", tag = "backups",
    security((), ("bearer" = [])),
    params(
        ("id" = String, Path, description = "The backup's id"),
        ("expires" = Option<i64>, Query, description = "A signed link's expiry, in seconds since the Unix epoch"),
        ("signature" = Option<String>, Query, description = "A signed link's signature"),
    ),
    responses(
        (status = 200, description = "The file", content_type = "application/octet-stream"),
        (status = 206, description = "The range asked for", content_type = "application/octet-stream"),
        (status = 401, description = "Neither a valid token nor a valid link", body = ErrorBody),
        (status = 404, description = "No such backup (or not the caller's), or no longer kept", body = ErrorBody),
        (status = 410, description = "The link has expired", body = ErrorBody),
        (status = 416, description = "The range is outside the file"),
    ))]
async fn download(
    State(state): State<CommandState>,
    user: Result<AuthUser, ApiError>,
    path: Result<Path<String>, PathRejection>,
    signed: Result<Query<Signed>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let backup_id = id(path)?;
    let backups = &state.backups;
    let signed = signed
        .ok()
        .and_then(|Query(s)| Some((s.expires?.parse::<i64>().ok()?, s.signature?)));
    match (&user, signed) {
        (Ok(_), _) => {}
        (Err(_), Some((expires, signature))) => {
            if !backups.verify(backup_id, expires, &signature) {
                return Err(ApiError::unauthorized());
            }
            if backups.now().timestamp() >= expires {
                return Err(ApiError::new(
                    StatusCode::GONE,
                    "link_expired",
                    "this download link has expired; list the backups for a new one",
                ));
            }
        }
        (Err(_), None) => return Err(ApiError::unauthorized()),
    }
    let (resource, backup) = backups
        .backup(backup_id)
        .await?
        .ok_or_else(ApiError::not_found)?;
    if let Ok(user) = &user
        && resource.owner != user.id
    {
        return Err(ApiError::not_found());
    }
    let stored = &backup.stored;
    let served = Served {
        blob: &stored.blob,
        bytes: stored.bytes,
        file_name: &stored.file_name,
        sha256: Some(&stored.sha256),
    };
    match serve(&backups.blobs, served, &headers).await {
        Ok(Some(response)) => Ok(response),
        Ok(None) => Err(ApiError::not_found()),
        Err(error) => Err(BackupError::from(error).json()),
    }
}
