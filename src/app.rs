//! Composition: opens the backends the configuration names ([`crate::backends`]), starts
//! the roles this process plays, and serves HTTP until the shutdown token fires.

use std::fs::File;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::middleware;
use axum::routing::get;
use cairn_command::backups::timers::BackupTimers;
use cairn_command::capsules::timers::{self, CapsuleTimers};
use cairn_command::exports::timers::ExportTimers;
use cairn_command::{CommandState, TokenRegistry, UploadState};
use cairn_events::domain::{backup, capsule, export};
use cairn_events::{Clock, EventStore, NoWait, ReadYourWrites, Store};
use cairn_http::ApiError;
use cairn_query::projections::{CheckpointPoller, Messages, Projection, Trends};
use cairn_query::routes::{QueryState, StartupGate};
use cairn_query::{GenerationStore, Runner, RunnerHandle};
use cairn_scheduler::maintenance::FnJob;
use cairn_scheduler::{
    ByCategory, Delivery, EmailDelivery, Maintenance, OutboxWorker, SchedulerMetrics, Sleeper,
    WebhookDelivery,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use utoipa_swagger_ui::SwaggerUi;

use crate::backends::{
    backups, capsules, exports, lock_data_dir, mailer, open_blobs, open_read, open_store,
};
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

/// A running Cairn.
pub struct Application {
    listener: TcpListener,
    router: Router,
    limits: crate::server::Limits,
    shutdown: CancellationToken,
    tokens: Arc<TokenRegistry>,
    store: Arc<dyn Store>,
    read: Arc<dyn GenerationStore>,
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
        Self::build_with_clock(config, role, shutdown, Clock::system()).await
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
        let (capsules, backups, exports) =
            if matches!(role, Role::All | Role::Command | Role::Scheduler) {
                let blobs = open_blobs(config)?;
                let capsules =
                    capsules(config, events.clone(), blobs.clone(), clock.clone()).await?;
                let backups = backups(config, events.clone(), blobs.clone(), clock.clone()).await?;
                let exports = exports(
                    config,
                    events.clone(),
                    blobs,
                    clock.clone(),
                    backups.clone(),
                    capsules.clone(),
                )
                .await?;
                (Some(capsules), Some(backups), Some(exports))
            } else {
                (None, None, None)
            };

        let mut tasks = Vec::new();
        let tokens = TokenRegistry::new();
        tokens
            .catch_up(&*events)
            .await
            .context("loading users and tokens")?;
        // Only the processes that authenticate requests follow new tokens (an idle
        // scheduler sends no query).
        if matches!(role, Role::All | Role::Command) {
            tasks.push(tokio::spawn(
                tokens.clone().follow(events.clone(), shutdown.clone()),
            ));
        }

        let runner = if matches!(role, Role::All | Role::Projector) {
            let private = config.redis_url.is_none();
            let mut start = |projection: Arc<dyn Projection>| {
                let (runner, handle) = Runner::new(events.clone(), read.clone(), projection);
                let runner = if private { runner.private() } else { runner };
                tasks.push(tokio::spawn(runner.run(shutdown.clone())));
                handle
            };
            let mut projections: Vec<Arc<dyn Projection>> = Vec::new();
            if config.runs_projection("messages") {
                projections.push(Arc::new(Messages));
            }
            if config.runs_projection("trends") {
                projections.push(Arc::new(Trends {
                    rules: config.trend_rules(),
                }));
            }
            for projection in &projections {
                first_generation(&*events, &*read, &**projection).await?;
            }
            let mut messages = None;
            for projection in projections {
                let name = projection.name();
                let handle = start(projection);
                if name == "messages" {
                    messages = Some(handle);
                }
            }
            messages
        } else {
            None
        };
        let scheduler =
            if let (Role::All | Role::Scheduler, Some(capsules), Some(backups), Some(exports)) =
                (role, &capsules, &backups, &exports)
            {
                let metrics = Arc::new(SchedulerMetrics::default());
                let maintenance = Arc::new(maintenance(
                    config,
                    &store,
                    capsules,
                    backups,
                    clock.clone(),
                )?);
                maintenance
                    .plan()
                    .await
                    .context("planning the maintenance jobs")?;
                let jobs = ByCategory::default()
                    .with(
                        capsule::CATEGORY,
                        Arc::new(CapsuleTimers {
                            capsules: capsules.clone(),
                        }),
                    )
                    .with(
                        backup::RESOURCE,
                        Arc::new(BackupTimers {
                            backups: backups.clone(),
                            due: store.clone(),
                        }),
                    )
                    .with(
                        backup::BLOB,
                        Arc::new(BackupTimers {
                            backups: backups.clone(),
                            due: store.clone(),
                        }),
                    )
                    .with(
                        export::CATEGORY,
                        Arc::new(ExportTimers {
                            exports: exports.clone(),
                            due: store.clone(),
                        }),
                    );
                let actions = maintenance.around(Arc::new(jobs));
                let mut sleeper = Sleeper::new(store.clone(), actions)
                    .with_clock(clock.clone())
                    .with_metrics(metrics.clone());
                sleeper.hold = Duration::from_secs(config.due_claim_seconds);
                if embedded {
                    // SQLite cannot tell this process of work another one adds (`cairn
                    // export` on the command line): look every few seconds at most.
                    sleeper.look_every = Some(Duration::from_secs(5));
                }
                tasks.push(tokio::spawn(sleeper.run(shutdown.clone())));
                let emails = EmailDelivery {
                    events: events.clone(),
                    mailer: mailer(config)?,
                };
                let webhooks = WebhookDelivery::new().map_err(|e| anyhow::anyhow!(e))?;
                let deliveries: [Arc<dyn Delivery>; 2] = [Arc::new(emails), Arc::new(webhooks)];
                for delivery in deliveries {
                    let mut worker =
                        OutboxWorker::new(store.clone(), delivery).with_metrics(metrics.clone());
                    worker.policy.hold = Duration::from_secs(config.outbox_claim_seconds);
                    tasks.push(tokio::spawn(worker.run(shutdown.clone())));
                }
                Some(ops::SchedulerOps {
                    metrics,
                    store: store.clone(),
                })
            } else {
                None
            };
        let read_your_writes: Arc<dyn ReadYourWrites> = match (&runner, &config.redis_url) {
            (Some(handle), _) => Arc::new(handle.clone()),
            (None, Some(_)) => Arc::new(CheckpointPoller {
                read: read.clone(),
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
            read: read.clone(),
            runner: runner.clone(),
            gate: gate.clone(),
            requests: Arc::default(),
            scheduler,
        };
        let mut router = Router::new()
            .route("/", get(crate::home::page))
            .route("/health/live", get(ops::live))
            .route("/health/ready", get(ops::ready))
            .route("/metrics", get(ops::metrics))
            .with_state(ops.clone())
            .merge(SwaggerUi::new("/docs").url("/openapi.json", ops::openapi()));
        let command_state =
            if let (Role::All | Role::Command, Some(capsules), Some(backups), Some(exports)) =
                (role, &capsules, &backups, &exports)
            {
                let state = CommandState {
                    events: events.clone(),
                    tokens: tokens.clone(),
                    read_your_writes,
                    read_your_writes_timeout: Duration::from_millis(config.read_your_writes_ms),
                    capsules: capsules.clone(),
                    backups: backups.clone(),
                    exports: exports.clone(),
                };
                router = router.merge(
                    cairn_command::router(state.clone()).map_err(|e| anyhow::anyhow!("{e}"))?,
                );
                Some(state)
            } else {
                None
            };
        if matches!(role, Role::All | Role::Query) {
            router = router.merge(cairn_query::router(QueryState {
                read: read.clone(),
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
        if let (Role::All | Role::Command, Some(capsules), Some(backups)) =
            (role, capsules, backups)
        {
            router = router
                .merge(cairn_command::upload_router(UploadState::new(
                    capsules,
                    Duration::from_secs(config.upload_idle_timeout),
                )))
                .merge(cairn_command::export_long_router(
                    command_state
                        .clone()
                        .context("the command role has its state")?,
                ))
                .merge(cairn_command::backup_upload_router(
                    cairn_command::backups::upload::UploadState::new(
                        backups,
                        Duration::from_secs(config.upload_idle_timeout),
                        config.backup_uploads,
                        config.backup_uploads_per_client,
                    ),
                ));
        }
        let router = router
            .fallback(|| async {
                ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route")
            })
            .method_not_allowed_fallback(|| async {
                ApiError::new(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "method_not_allowed",
                    "this route does not take that method",
                )
            })
            .layer(middleware::from_fn(ops::head_limit))
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

        let file_limit = crate::server::raise_file_limit();
        let limits = crate::server::Limits {
            header_timeout: Duration::from_secs(config.header_timeout),
            idle_timeout: Duration::from_secs(config.idle_timeout),
            max_connections: config
                .max_connections
                .unwrap_or_else(|| crate::server::default_max_connections(file_limit)),
        };
        if let Some(limit) = file_limit
            && limits.max_connections as u64 >= limit
        {
            tracing::warn!(
                max_connections = limits.max_connections,
                open_file_limit = limit,
                "CAIRN_MAX_CONNECTIONS is not below the open-file limit: at the limit, new connections wait until handles are free"
            );
        }
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("binding {}", config.listen))?;
        Ok(Application {
            listener,
            router,
            limits,
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

    /// The read models, in generations.
    pub fn read_store(&self) -> Arc<dyn GenerationStore> {
        self.read.clone()
    }

    /// Serve until the shutdown token fires; in-flight requests finish first.
    pub async fn run(self) -> anyhow::Result<()> {
        tracing::info!(
            address = %self.address(),
            max_connections = self.limits.max_connections,
            "listening"
        );
        crate::server::serve(
            self.listener,
            self.router,
            self.limits,
            self.shutdown.clone(),
        )
        .await;
        for task in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
        Ok(())
    }
}

/// The maintenance jobs the configuration turns on, on their schedules.
fn maintenance(
    config: &Config,
    store: &Arc<dyn Store>,
    capsules: &cairn_command::capsules::Capsules,
    backups: &cairn_command::backups::Backups,
    clock: Clock,
) -> anyhow::Result<Maintenance> {
    let mut maintenance = Maintenance::new(store.clone(), clock);
    if let Some(schedule) = crate::config::maintenance_schedule(&config.maintenance_files)? {
        let (capsules, backups) = (capsules.clone(), backups.clone());
        maintenance = maintenance.job(
            "files",
            schedule,
            Arc::new(FnJob(move || {
                let (capsules, backups) = (capsules.clone(), backups.clone());
                async move {
                    // The blob store's clock is the wall clock, whatever the capsules' says.
                    let cutoff = chrono::Utc::now() - timers::SWEEP_AFTER;
                    let swept = capsules
                        .sweep_files(cutoff)
                        .await
                        .map_err(|e| format!("sweeping capsule files: {e}"))?;
                    if swept > 0 {
                        tracing::info!(swept, "deleted files no capsule keeps");
                    }
                    let swept = backups
                        .sweep_files(cutoff)
                        .await
                        .map_err(|e| format!("sweeping backup files: {e}"))?;
                    if swept > 0 {
                        tracing::info!(swept, "deleted files no backup keeps");
                    }
                    Ok(())
                }
            })),
        );
    }
    if let Some(schedule) = crate::config::maintenance_schedule(&config.maintenance_outbox)? {
        let (outbox, keep) = (store.clone(), cairn_scheduler::Policy::default().keep_sent);
        maintenance = maintenance.job(
            "outbox",
            schedule,
            Arc::new(FnJob(move || {
                let outbox = outbox.clone();
                async move { cairn_scheduler::outbox::purge_sent(&*outbox, keep).await }
            })),
        );
    }
    Ok(maintenance)
}

/// A model that has never been built, over a log without events it reads, is complete as
/// soon as it exists: make its first generation live at once rather than answer
/// "rebuilding" until the runner gets to it. (Over a log with such events it is built by the
/// runner, reads answering 503 meanwhile.)
async fn first_generation(
    events: &dyn EventStore,
    read: &dyn GenerationStore,
    projection: &dyn Projection,
) -> anyhow::Result<()> {
    let model = projection.name();
    let generations = read
        .generations(model)
        .await
        .context("reading the read models' generations")?;
    if generations.live.is_some() || generations.building.is_some() {
        return Ok(());
    }
    let first = events
        .read_all(0, 1, projection.categories())
        .await
        .context("reading the event log")?;
    if !first.is_empty() {
        return Ok(());
    }
    let generation = read
        .begin_generation(model)
        .await
        .context("starting the read models")?;
    read.switch_generation(model, None, generation)
        .await
        .context("starting the read models")?;
    Ok(())
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
