//! Opening the backends the configuration names: the event store (SQLite file or
//! Postgres), the read store (SQLite file or Redis), the blob store (a directory or S3),
//! the mailer (`.eml` files or SMTP), and the capsule use cases over them. Composition
//! (which roles run, which routes are served) is [`crate::app`]'s.

use std::fs::File;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use cairn_command::backups::Backups;
use cairn_command::blobs::Blobs;
use cairn_command::capsules::limits::{RedisLimits, SlidingLog};
use cairn_command::capsules::{self, Capsules, Links, Rules};
use cairn_command::exports::Exports;
use cairn_events::{Clock, EventStore, Store};
use cairn_query::GenerationStore;
use cairn_query::read_store::{LogIdentity, RedisStore, SqliteStore};
use cairn_scheduler::{FileMailer, Mailer, SmtpMailer};

use crate::config::Config;

/// Open the configured event store.
pub async fn open_events(config: &Config) -> anyhow::Result<Arc<dyn EventStore>> {
    Ok(open_store(config).await?)
}

/// Open the configured backend: the event store with its due index and outbox.
pub async fn open_store(config: &Config) -> anyhow::Result<Arc<dyn Store>> {
    let timeout = Duration::from_millis(config.database_timeout_ms);
    cairn_events::open(config.database_url.as_deref(), &config.data_dir, timeout)
        .await
        .with_context(|| format!("opening the event store at {}", config.database_for_log()))
}

/// The configured blob store for capsule files and backups: a local directory (`blobs/`
/// in the data directory unless `CAIRN_BLOB_URL` names another), or S3.
pub fn open_blobs(config: &Config) -> anyhow::Result<Blobs> {
    let dir = match config.blob_url.as_ref().map(|url| url.0.as_str()) {
        None => config.data_dir.join("blobs"),
        Some(url) if url.starts_with("file://") => {
            std::path::PathBuf::from(url.trim_start_matches("file://"))
        }
        Some(url) if url.starts_with("s3://") => return open_s3(url),
        Some(url) if url.contains("://") => {
            let scheme = url.split("://").next().unwrap_or_default();
            bail!(
                "CAIRN_BLOB_URL: {scheme}:// is not a store Cairn knows; give a directory, file:///a/directory or s3://bucket/prefix"
            )
        }
        Some(path) => std::path::PathBuf::from(path),
    };
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("creating the blob directory {}", dir.display()))?;
    let store = object_store::local::LocalFileSystem::new_with_prefix(&dir)
        .with_context(|| format!("opening the blob directory {}", dir.display()))?
        .with_automatic_cleanup(true);
    Ok(Blobs::local(Arc::new(store), &dir))
}

/// Capsule files in S3 or an S3-compatible store: `s3://bucket/optional/prefix`, options
/// from the usual `AWS_*` variables (`AWS_REGION`, `AWS_ACCESS_KEY_ID`, …), or given in the
/// URL's query, which wins: `?endpoint=http://minio:9000&allow_http=true&region=…`.
#[cfg(feature = "s3")]
fn open_s3(url: &str) -> anyhow::Result<Blobs> {
    use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
    crate::install_tls_provider();
    let (location, query) = url.split_once('?').unwrap_or((url, ""));
    let rest = location.trim_start_matches("s3://");
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    // Only the bucket is shown: the query may hold credentials.
    let shown = format!("CAIRN_BLOB_URL=s3://{bucket}/…");
    let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let option: AmazonS3ConfigKey = name
            .parse()
            .map_err(|_| anyhow::anyhow!("{shown}: no such S3 option {name:?}"))?;
        let value = percent_encoding::percent_decode_str(value).decode_utf8_lossy();
        builder = builder.with_config(option, value);
    }
    let store = builder.build().with_context(|| shown.clone())?;
    let prefix = prefix.trim_matches('/');
    Ok(if prefix.is_empty() {
        Blobs::new(Arc::new(store))
    } else {
        let prefixed = object_store::prefix::PrefixStore::new(store, prefix);
        Blobs::new(Arc::new(prefixed))
    })
}

#[cfg(not(feature = "s3"))]
fn open_s3(_url: &str) -> anyhow::Result<Blobs> {
    bail!("CAIRN_BLOB_URL=s3://…: this build has no S3 support (build with the `s3` feature)")
}

/// The capsule use cases as configured.
pub async fn capsules(
    config: &Config,
    events: Arc<dyn EventStore>,
    blobs: Blobs,
    clock: Clock,
) -> anyhow::Result<Capsules> {
    let links = Links {
        public_url: config.public_url.clone(),
        pages_url: config.pages_url().to_owned(),
    };
    let key = link_key(config, &*events).await?;
    let mut files = capsules::Files::new(blobs, &key);
    files.link_ttl = chrono::Duration::hours(i64::try_from(config.capsule_link_hours)?);
    let mut capsules =
        Capsules::new(events, links, files, clock).map_err(|e| anyhow::anyhow!("{e}"))?;
    capsules.rules = Rules {
        min_lead: i64::try_from(config.capsule_min_lead)
            .ok()
            .and_then(chrono::Duration::try_seconds)
            .context("CAIRN_CAPSULE_MIN_LEAD is too large")?,
        file_retention: chrono::Duration::days(i64::try_from(config.capsule_file_retention_days)?),
        min_interval: chrono::Duration::seconds(i64::try_from(config.capsule_min_interval)?),
    };
    let window = Duration::from_secs(config.capsule_limit_window);
    capsules.limits = Arc::new(capsules::Limits {
        per_client: SlidingLog::new(config.capsule_limit_per_client, window),
        per_sender: SlidingLog::new(config.capsule_limit_per_sender, window),
        // Counted in Redis when there is one, so every command process shares them.
        shared: config
            .redis_url
            .as_ref()
            .map(|url| RedisLimits::new(url, &config.redis_prefix)),
    });
    let mut blocked = Vec::new();
    for sender in &config.blocked_senders {
        let email = cairn_events::domain::capsule::EmailAddress::parse(sender)
            .map_err(|_| anyhow::anyhow!("CAIRN_BLOCKED_SENDERS: {sender:?} is not an address"))?;
        blocked.push(email.sender_key());
    }
    capsules.blocked_senders = Arc::new(blocked);
    Ok(capsules)
}

/// The key download links are signed with (`CAIRN_LINK_KEY`, or one kept in the event
/// store).
pub async fn link_key(config: &Config, events: &dyn EventStore) -> anyhow::Result<Vec<u8>> {
    capsules::files::link_key(events, config.link_key.as_ref().map(|k| k.0.as_str()))
        .await
        .context("reading the download-link key")
}

/// The backup use cases as configured.
pub async fn backups(
    config: &Config,
    events: Arc<dyn EventStore>,
    blobs: Blobs,
    clock: Clock,
) -> anyhow::Result<Backups> {
    let key = link_key(config, &*events).await?;
    let mut backups = Backups::new(events, blobs, clock, &key, &config.public_url)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    backups.link_ttl = chrono::Duration::hours(i64::try_from(config.capsule_link_hours)?);
    Ok(backups)
}

/// Where emails go: SMTP when configured, else `.eml` files in the data directory.
pub fn mailer(config: &Config) -> anyhow::Result<Arc<dyn Mailer>> {
    let from = config
        .smtp_from
        .parse()
        .with_context(|| format!("CAIRN_SMTP_FROM={:?} is not an address", config.smtp_from))?;
    Ok(match &config.smtp_url {
        Some(url) => {
            Arc::new(SmtpMailer::new(url, from).map_err(|e| {
                anyhow::anyhow!("CAIRN_SMTP_URL {}: {e}", crate::config::redact(url))
            })?)
        }
        None => Arc::new(FileMailer::new(config.data_dir.join("outbox"), from)),
    })
}

/// Open the configured read store: Redis if configured, else the read-model file in the
/// data directory (checked against `events`, the log it must have been built from).
pub async fn open_read(
    config: &Config,
    events: &dyn EventStore,
) -> anyhow::Result<Arc<dyn GenerationStore>> {
    Ok(match &config.redis_url {
        Some(url) => Arc::new(
            RedisStore::connect_with_timeout(
                url,
                &config.redis_prefix,
                Duration::from_millis(config.redis_timeout_ms),
            )
            .await
            .with_context(|| format!("connecting to Redis at {}", crate::config::redact(url)))?,
        ),
        None => {
            let first = events
                .read_all(0, 1, &[])
                .await
                .context("reading the event log")?;
            let log = LogIdentity {
                first_event: first.first().map(|e| e.event_id.to_string()),
                head: events.head().await.context("reading the event log head")?,
            };
            let path = config.data_dir.join("read-models.db");
            Arc::new(
                SqliteStore::open(&path, &log)
                    .await
                    .with_context(|| format!("opening read models at {}", path.display()))?,
            )
        }
    })
}

/// Only one server may use an embedded data directory at a time.
pub fn lock_data_dir(config: &Config) -> anyhow::Result<File> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data directory {}", config.data_dir.display()))?;
    let path = config.data_dir.join("cairn.lock");
    let file = File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => {
            bail!(
                "another Cairn server is using {}",
                config.data_dir.display()
            )
        }
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("locking {}", path.display()))
        }
    }
}

/// The export use cases as configured.
pub async fn exports(
    config: &Config,
    events: Arc<dyn EventStore>,
    blobs: Blobs,
    clock: Clock,
    backups: Backups,
    capsules: Capsules,
) -> anyhow::Result<Exports> {
    let key = link_key(config, &*events).await?;
    let mut exports = Exports::new(
        events,
        blobs,
        clock,
        backups,
        capsules,
        &key,
        &config.public_url,
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    exports.retention = chrono::Duration::days(i64::try_from(config.export_retention_days)?);
    exports.link_ttl = exports.retention;
    exports.git_dir = cairn_command::exports::git::default_dir(&config.data_dir);
    Ok(exports)
}
