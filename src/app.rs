//! Composition: picks the backends from the configuration, starts the roles this process
//! plays, and serves HTTP until the shutdown token fires.

use std::fs::File;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::middleware;
use axum::routing::get;
use axum::serve::ListenerExt;
use axum::{Json, Router};
use cairn_command::capsules::limits::SlidingLog;
use cairn_command::capsules::{self, Capsules, Links};
use cairn_command::{CommandState, TokenRegistry, UploadState};
use cairn_events::{DueItem, EventStore, NoWait, ReadYourWrites, Store};
use cairn_query::projections::{CheckpointPoller, Messages, Projection, Trends};
use cairn_query::read_store::{LogIdentity, ReadModels, RedisStore, SqliteStore};
use cairn_query::routes::{Clock, QueryState, StartupGate, system_clock};
use cairn_query::{ReadBackend, Runner, RunnerHandle};
use cairn_scheduler::{DueAction, EmailWorker, FileMailer, Handled, Mailer, Sleeper, SmtpMailer};
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use utoipa_swagger_ui::SwaggerUi;

use crate::client_ip;
use crate::config::Config;
use crate::ops::{self, OpsState};

/// Which parts of Cairn this process runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    /// Everything in one process (the default).
    All,
    /// The write routes (`POST /message`).
    Command,
    /// The read routes (`GET /message`).
    Query,
    /// The projections that keep the read models up to date.
    Projector,
    /// The timers (capsule release and expiry) and the outbox workers (email).
    Scheduler,
}

/// Open the configured event store.
pub async fn open_events(config: &Config) -> anyhow::Result<Arc<dyn EventStore>> {
    Ok(open_store(config).await?)
}

/// Open the configured backend: the event store with its due index and outbox.
pub async fn open_store(config: &Config) -> anyhow::Result<Arc<dyn Store>> {
    cairn_events::open(config.database_url.as_deref(), &config.data_dir)
        .await
        .with_context(|| format!("opening the event store at {}", config.database_for_log()))
}

/// The configured blob store for capsule files, signing links with `key`: a local
/// directory (`blobs/` in the data directory unless `CAIRN_BLOB_URL` names another).
pub fn open_files(config: &Config, key: &[u8]) -> anyhow::Result<capsules::Files> {
    let dir = match config.blob_url.as_ref().map(|url| url.0.as_str()) {
        None => config.data_dir.join("blobs"),
        Some(url) if url.starts_with("file://") => {
            std::path::PathBuf::from(url.trim_start_matches("file://"))
        }
        Some(url) if url.starts_with("s3://") => return open_s3(url, key),
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
    Ok(capsules::Files::local(Arc::new(store), &dir, key))
}

/// Capsule files in S3 or an S3-compatible store: `s3://bucket/optional/prefix`, options
/// from the usual `AWS_*` variables (`AWS_REGION`, `AWS_ACCESS_KEY_ID`, …), or given in the
/// URL's query, which wins: `?endpoint=http://minio:9000&allow_http=true&region=…`.
#[cfg(feature = "s3")]
fn open_s3(url: &str, key: &[u8]) -> anyhow::Result<capsules::Files> {
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
        capsules::Files::new(Arc::new(store), key)
    } else {
        let prefixed = object_store::prefix::PrefixStore::new(store, prefix);
        capsules::Files::new(Arc::new(prefixed), key)
    })
}

#[cfg(not(feature = "s3"))]
fn open_s3(_url: &str, _key: &[u8]) -> anyhow::Result<capsules::Files> {
    bail!("CAIRN_BLOB_URL=s3://…: this build has no S3 support (build with the `s3` feature)")
}

/// The capsule use cases as configured.
pub async fn capsules(
    config: &Config,
    events: Arc<dyn EventStore>,
    clock: Clock,
) -> anyhow::Result<Capsules> {
    let links = Links {
        public_url: config.public_url.clone(),
    };
    let key = capsules::files::link_key(&*events, config.link_key.as_ref().map(|k| k.0.as_str()))
        .await
        .context("reading the download-link key")?;
    let mut files = open_files(config, &key)?;
    files.link_ttl = chrono::Duration::hours(i64::try_from(config.capsule_link_hours)?);
    files.retention = chrono::Duration::days(i64::try_from(config.capsule_file_retention_days)?);
    let mut capsules =
        Capsules::new(events, links, files, clock).map_err(|e| anyhow::anyhow!("{e}"))?;
    capsules.min_lead = i64::try_from(config.capsule_min_lead)
        .ok()
        .and_then(chrono::Duration::try_seconds)
        .context("CAIRN_CAPSULE_MIN_LEAD is too large")?;
    let window = Duration::from_secs(config.capsule_limit_window);
    capsules.limits = Arc::new(capsules::Limits {
        per_client: SlidingLog::new(config.capsule_limit_per_client, window),
        per_sender: SlidingLog::new(config.capsule_limit_per_sender, window),
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

/// The scheduler's actions on capsules: its due items are releases, expiries and the
/// deletion of files.
struct CapsuleActions {
    capsules: Capsules,
}

#[async_trait::async_trait]
impl DueAction for CapsuleActions {
    async fn run(&self, item: &DueItem) -> Result<Handled, String> {
        let Some(id) = capsules::capsule_of(item) else {
            tracing::warn!(key = %item.key, "a due item for no capsule; dropped");
            return Ok(Handled::Nothing);
        };
        let acted = match item.action.as_str() {
            capsules::RELEASE => self.capsules.release(id).await,
            capsules::EXPIRE => self.capsules.expire(id).await,
            capsules::PURGE => self.capsules.purge_file(id).await,
            other => {
                tracing::warn!(key = %item.key, action = other, "an unknown due action; dropped");
                return Ok(Handled::Nothing);
            }
        };
        match acted {
            Ok(true) => Ok(Handled::Done),
            Ok(false) => Ok(Handled::Nothing),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// Now and then, delete stored files no capsule keeps (an upload cut off by a crash, or
/// stored but never submitted), once they are a day old.
async fn sweep_files(capsules: Capsules, shutdown: CancellationToken) {
    let mut wait = Duration::from_secs(60);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
        let cutoff = chrono::Utc::now() - chrono::Duration::days(1);
        match capsules.sweep_files(cutoff).await {
            Ok(0) => {}
            Ok(swept) => tracing::info!(swept, "deleted files no capsule keeps"),
            Err(error) => tracing::warn!(%error, "sweeping capsule files failed; trying later"),
        }
        wait = Duration::from_secs(6 * 3600);
    }
}

/// Where emails go: SMTP when configured, else `.eml` files in the data directory.
fn mailer(config: &Config) -> anyhow::Result<Arc<dyn Mailer>> {
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
pub async fn open_read(config: &Config, events: &dyn EventStore) -> anyhow::Result<ReadModels> {
    Ok(match &config.redis_url {
        Some(url) => ReadModels::new(Arc::new(
            RedisStore::connect(url, &config.redis_prefix)
                .await
                .with_context(|| {
                    format!("connecting to Redis at {}", crate::config::redact(url))
                })?,
        )),
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
            ReadModels::new(Arc::new(
                SqliteStore::open(&path, &log)
                    .await
                    .with_context(|| format!("opening read models at {}", path.display()))?,
            ))
        }
    })
}

/// A running Cairn.
pub struct Application {
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
    tokens: Arc<TokenRegistry>,
    store: Arc<dyn Store>,
    read: ReadModels,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    _data_lock: Option<File>,
}

impl Application {
    /// Open the backends, start the background roles and bind the listener (port 0 allowed).
    pub async fn build(
        config: &Config,
        role: Role,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Self> {
        Self::build_with_clock(config, role, shutdown, system_clock()).await
    }

    /// As [`Application::build`], with "now" given (for tests): for the read routes, the
    /// capsule use cases and the scheduler.
    pub async fn build_with_clock(
        config: &Config,
        role: Role,
        shutdown: CancellationToken,
        clock: Clock,
    ) -> anyhow::Result<Self> {
        let embedded = config.database_url.is_none();
        if role != Role::All && (embedded || config.redis_url.is_none()) {
            bail!(
                "running separate roles needs CAIRN_DATABASE_URL (Postgres) and CAIRN_REDIS_URL (Redis)"
            );
        }
        // The data directory holds the event log when embedded, and the read models when
        // there is no Redis: either way it belongs to one server.
        let data_lock = if embedded || config.redis_url.is_none() {
            Some(lock_data_dir(config)?)
        } else {
            None
        };
        let store = open_store(config).await?;
        let events: Arc<dyn EventStore> = store.clone();
        let read = open_read(config, &*events).await?;
        // Only the roles that write capsules or act on them open the blob store and the
        // link key; query and projector processes need neither.
        let capsules = if matches!(role, Role::All | Role::Command | Role::Scheduler) {
            Some(capsules(config, events.clone(), clock.clone()).await?)
        } else {
            None
        };

        let mut tasks = Vec::new();
        let tokens = TokenRegistry::new();
        tokens
            .catch_up(&*events)
            .await
            .context("loading users and tokens")?;
        tasks.push(tokio::spawn(
            tokens.clone().follow(events.clone(), shutdown.clone()),
        ));

        let runner = if matches!(role, Role::All | Role::Projector) {
            let private = config.redis_url.is_none();
            let mut start = |projection: Arc<dyn Projection>| {
                let (runner, handle) = Runner::new(events.clone(), projection);
                let runner = if private { runner.private() } else { runner };
                tasks.push(tokio::spawn(runner.run(shutdown.clone())));
                handle
            };
            let messages = config.runs_projection("messages").then(|| {
                start(Arc::new(Messages {
                    store: read.messages.clone(),
                }))
            });
            if config.runs_projection("trends") {
                start(Arc::new(Trends {
                    store: read.trends.clone(),
                    rules: config.trend_rules(),
                }));
            }
            messages
        } else {
            None
        };
        if let (Role::All | Role::Scheduler, Some(capsules)) = (role, &capsules) {
            let actions = Arc::new(CapsuleActions {
                capsules: capsules.clone(),
            });
            let sleeper = Sleeper::new(store.clone(), actions).with_clock(clock.clone());
            tasks.push(tokio::spawn(sleeper.run(shutdown.clone())));
            tasks.push(tokio::spawn(sweep_files(
                capsules.clone(),
                shutdown.clone(),
            )));
            let mut worker = EmailWorker::new(store.clone(), mailer(config)?);
            worker.policy.hold = Duration::from_secs(config.outbox_claim_seconds);
            tasks.push(tokio::spawn(worker.run(shutdown.clone())));
        }
        let read_your_writes: Arc<dyn ReadYourWrites> = match (&runner, &config.redis_url) {
            (Some(handle), _) => Arc::new(handle.clone()),
            (None, Some(_)) => Arc::new(CheckpointPoller {
                read: read.backend.clone(),
                projection: "messages",
            }),
            (None, None) => Arc::new(NoWait),
        };

        let gate = match (&runner, &config.redis_url) {
            (Some(handle), None) => startup_gate(&*events, handle, config, &shutdown).await?,
            _ => StartupGate::open(),
        };
        let ops = OpsState {
            events: events.clone(),
            read: read.backend.clone(),
            runner: runner.clone(),
            gate: gate.clone(),
            requests: Arc::default(),
        };
        let mut router = Router::new()
            .route("/health/live", get(ops::live))
            .route("/health/ready", get(ops::ready))
            .route("/metrics", get(ops::metrics))
            .with_state(ops.clone())
            .merge(SwaggerUi::new("/docs").url("/openapi.json", ops::openapi()));
        if let (Role::All | Role::Command, Some(capsules)) = (role, &capsules) {
            router = router.merge(
                cairn_command::router(CommandState {
                    events: events.clone(),
                    tokens: tokens.clone(),
                    read_your_writes,
                    read_your_writes_timeout: Duration::from_millis(config.read_your_writes_ms),
                    capsules: capsules.clone(),
                })
                .map_err(|e| anyhow::anyhow!("{e}"))?,
            );
        }
        if matches!(role, Role::All | Role::Query) {
            router = router.merge(cairn_query::router(QueryState {
                messages: read.messages.clone(),
                trends: read.trends.clone(),
                gate: gate.clone(),
                rules: config.trend_rules(),
                clock,
            }));
        }
        // Every route but the uploads answers within the request time limit and takes
        // bodies up to the body limit; uploads have their own (`upload_idle_timeout`).
        let mut router = router
            .layer(DefaultBodyLimit::max(config.body_limit))
            .layer(middleware::from_fn_with_state(
                Duration::from_secs(config.request_timeout),
                ops::time_limit,
            ));
        if let (Role::All | Role::Command, Some(capsules)) = (role, capsules) {
            router = router.merge(cairn_command::upload_router(UploadState::new(
                capsules,
                Duration::from_secs(config.upload_idle_timeout),
            )));
        }
        let router = router
            .fallback(|| async {
                (
                    StatusCode::NOT_FOUND,
                    Json(json!({ "error": "no such route", "code": "not_found" })),
                )
            })
            .method_not_allowed_fallback(|| async {
                (
                    StatusCode::METHOD_NOT_ALLOWED,
                    Json(json!({
                        "error": "this route does not take that method",
                        "code": "method_not_allowed",
                    })),
                )
            })
            .layer(middleware::from_fn_with_state(
                ops.requests.clone(),
                ops::count_requests,
            ))
            .layer(middleware::from_fn_with_state(
                Arc::<[client_ip::IpRange]>::from(config.trusted_proxies.clone()),
                client_ip::layer,
            ))
            // Outermost, so every answer (a timeout's too) carries the CORS headers.
            .layer(middleware::from_fn_with_state(
                crate::cors::Origins::new(&config.cors_origins),
                crate::cors::layer,
            ));

        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("binding {}", config.listen))?;
        Ok(Application {
            listener,
            router,
            shutdown,
            tokens,
            store,
            read,
            tasks,
            _data_lock: data_lock,
        })
    }

    pub fn address(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    pub fn port(&self) -> u16 {
        self.address().port()
    }

    pub fn tokens(&self) -> Arc<TokenRegistry> {
        self.tokens.clone()
    }

    /// The backend with its due index and outbox.
    pub fn store(&self) -> Arc<dyn Store> {
        self.store.clone()
    }

    pub fn events(&self) -> Arc<dyn EventStore> {
        self.store.clone()
    }

    pub fn read_store(&self) -> Arc<dyn ReadBackend> {
        self.read.backend.clone()
    }

    /// Serve until the shutdown token fires; in-flight requests finish first.
    pub async fn run(self) -> anyhow::Result<()> {
        tracing::info!(address = %self.address(), "listening");
        let shutdown = self.shutdown.clone();
        let service = self
            .router
            .into_make_service_with_connect_info::<SocketAddr>();
        // Small responses go out at once instead of waiting on Nagle's algorithm.
        let listener = self.listener.tap_io(|tcp| {
            if let Err(error) = tcp.set_nodelay(true) {
                tracing::debug!(%error, "cannot set TCP_NODELAY");
            }
        });
        axum::serve(listener, service)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await
            .context("serving HTTP")?;
        for task in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
        Ok(())
    }
}

/// Read models this process keeps itself catch up in the background while the server
/// already answers; reads wait until they hold everything the log held at start.
async fn startup_gate(
    events: &dyn EventStore,
    handle: &RunnerHandle,
    config: &Config,
    shutdown: &CancellationToken,
) -> anyhow::Result<StartupGate> {
    let head = events.head().await.context("reading the event log head")?;
    let started = std::time::Instant::now();
    let (log_handle, shutdown) = (handle.clone(), shutdown.clone());
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                loaded = log_handle.wait_for(head, Duration::from_secs(5)) => if loaded { break },
            }
            tracing::info!(
                head,
                at = log_handle.position(),
                "still loading read models"
            );
        }
        tracing::info!(
            events = head,
            elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            "read models loaded"
        );
    });
    // Answer "loading" a little before the request timeout would answer for us.
    let timeout = Duration::from_millis((config.request_timeout * 1000).saturating_sub(250));
    Ok(StartupGate::until(Arc::new(handle.clone()), head, timeout))
}

/// Only one server may use an embedded data directory at a time.
fn lock_data_dir(config: &Config) -> anyhow::Result<File> {
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
