//! The performance figures of the README, measured on this machine's Postgres and Redis.
//!
//! `scripts/bench` runs it. Sections (all by default; pick with `BENCH_ONLY=write,read,…`):
//! - `write`: `POST /message` from 64 connections, then `pgbench` (8 clients, one-row JSONB
//!   insert per transaction) against the same server for the same time; the ratio.
//! - `read`: with `BENCH_MESSAGES` (1,000,000) messages loaded, `GET /message?hashtag=X&limit=20`.
//! - `lag`: events appended at 1,000/s; time from append to visible in the Redis read model.
//! - `rss`: resident memory of an idle `cairn serve` on Postgres + Redis.
//! - `cold`: embedded start to the first 200, with an empty data dir and with the messages.
//! - `trends`: hashtag trends over 10,000,000 messages against SQL `GROUP BY` (see
//!   `support/trends.rs`).
//! - `capsules`: release lateness of capsules and their submission rate (see
//!   `support/capsules.rs`).
//! - `upload`: a 200 MB file capsule up and down, the server's memory sampled throughout
//!   (see `support/upload.rs`).
//! - `backups`: Dome-compatible uploads: 100 at once against the disk, one of 1 GB, and a
//!   retention sweep while uploads go on (see `support/backups.rs`).
//! - `scheduler`: several scheduler processes: release precision and idle cost, a burst,
//!   the same against pg-boss and graphile-worker, recurring capsules (see
//!   `support/scheduler.rs`).
//! - `exports`: a user's 1,000,000 messages exported to a bundle (against `psql` COPY and
//!   `gzip -1`) and to a local git repository, the scheduler's memory sampled; 1,000
//!   clients following one export's events (see `support/exports.rs`).
//!
//! Every figure is printed as it is measured and again in a summary at the end. The
//! servers it starts log at `warn` to its stderr; `BENCH_SERVER_LOG` sets their `RUST_LOG`.

use std::collections::VecDeque;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use cairn_events::domain::message::{self, Hashtag, MessagePosted};
use cairn_events::testing::redis_url;
use cairn_events::{AppendRequest, EventStore, ExpectedVersion, Metadata, NewEvent};
use tokio::process::{Child, Command};
use tokio::task::JoinSet;
use ulid::Ulid;
use uuid::Uuid;

#[path = "support/backups.rs"]
mod backups;
#[path = "support/capsules.rs"]
mod capsules;
#[path = "support/exports.rs"]
mod exports;
#[path = "support/peers.rs"]
mod peers;
#[path = "support/scheduler.rs"]
mod scheduler;
#[path = "support/trends.rs"]
mod trends;
#[path = "support/upload.rs"]
mod upload;

const CAIRN: &str = env!("CARGO_BIN_EXE_cairn");
const TAGS: usize = 200;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Latency percentiles of a sample, in milliseconds.
struct Latencies(Vec<Duration>);

impl Latencies {
    fn percentile(&mut self, p: f64) -> f64 {
        if self.0.is_empty() {
            return f64::NAN;
        }
        self.0.sort_unstable();
        let rank = ((p / 100.0) * (self.0.len() - 1) as f64).round() as usize;
        self.0[rank.min(self.0.len() - 1)].as_secs_f64() * 1000.0
    }

    fn describe(&mut self) -> String {
        format!(
            "p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} samples)",
            self.percentile(50.0),
            self.percentile(99.0),
            self.percentile(100.0),
            self.0.len()
        )
    }
}

/// A `cairn serve` child process listening on a known port.
struct Server {
    child: Child,
    base: String,
}

impl Server {
    fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    fn rss_mib(&self) -> f64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(f64::NAN, |kb| kb / 1024.0)
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Start `cairn serve` with `env`; returns at once (see [`wait_for_200`]).
fn spawn_server(env: &[(String, String)]) -> anyhow::Result<Server> {
    spawn_server_with_role(env, "all")
}

/// Start `cairn serve --role ROLE` with `env`; returns at once.
fn spawn_server_with_role(env: &[(String, String)], role: &str) -> anyhow::Result<Server> {
    let port = free_port()?;
    let child = Command::new(CAIRN)
        .args(["serve", "--role", role])
        .envs(env.iter().cloned())
        .env("CAIRN_LISTEN", format!("127.0.0.1:{port}"))
        .env(
            "RUST_LOG",
            std::env::var("BENCH_SERVER_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .env_remove("CAIRN_CONFIG")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .context("starting cairn serve")?;
    Ok(Server {
        child,
        base: format!("http://127.0.0.1:{port}"),
    })
}

/// Poll `url` every millisecond until it answers 200; the time that took.
async fn wait_for_200(client: &reqwest::Client, url: &str, started: Instant) -> Duration {
    loop {
        if let Ok(r) = client.get(url).send().await
            && r.status() == 200
        {
            return started.elapsed();
        }
        if started.elapsed() > Duration::from_secs(600) {
            return started.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// `cairn <args>` with `env`; its last stdout line.
async fn cairn(env: &[(String, String)], args: &[&str]) -> anyhow::Result<String> {
    let output = Command::new(CAIRN)
        .args(args)
        .envs(env.iter().cloned())
        .env_remove("CAIRN_CONFIG")
        .output()
        .await?;
    if !output.status.success() {
        bail!(
            "cairn {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let stdout = String::from_utf8(output.stdout)?;
    Ok(stdout.lines().last().unwrap_or_default().to_owned())
}

/// A fresh database and Redis prefix, and the environment that points Cairn at them.
struct Deployment {
    database_url: String,
    prefix: String,
    env: Vec<(String, String)>,
}

impl Deployment {
    async fn fresh() -> Self {
        let database_url = cairn_events::testing::fresh_postgres_url().await;
        let prefix = format!("cairn_t_bench_{}", Uuid::now_v7().simple());
        Deployment::existing(&database_url, &prefix)
    }

    /// The deployment on `database_url` and the Redis keys under `prefix` (also one made
    /// earlier and kept with `BENCH_KEEP`), with a data directory of its own.
    fn existing(database_url: &str, prefix: &str) -> Self {
        let data_dir =
            std::env::temp_dir().join(format!("cairn-bench-{}", Uuid::now_v7().simple()));
        Deployment {
            database_url: database_url.to_owned(),
            prefix: prefix.to_owned(),
            env: vec![
                ("CAIRN_DATABASE_URL".into(), database_url.to_owned()),
                ("CAIRN_REDIS_URL".into(), redis_url()),
                ("CAIRN_REDIS_PREFIX".into(), prefix.to_owned()),
                ("CAIRN_DATA_DIR".into(), data_dir.display().to_string()),
            ],
        }
    }

    /// The checkpoint of the messages model's live generation, once one is live.
    async fn checkpoint_key(
        &self,
        conn: &mut redis::aio::MultiplexedConnection,
    ) -> anyhow::Result<Option<String>> {
        let live: Option<u64> = redis::cmd("HGET")
            .arg(format!("{}:{{messages}}:generations", self.prefix))
            .arg("live")
            .query_async(conn)
            .await?;
        Ok(live.map(|g| format!("{}:g{g}:{{messages}}:checkpoint", self.prefix)))
    }

    /// Drop the database and the Redis keys.
    async fn remove(self) {
        use sqlx::Connection;
        let name = self.database_url.rsplit('/').next().unwrap_or_default();
        if let Ok(mut conn) = sqlx::PgConnection::connect(&cairn_events::testing::admin_url()).await
        {
            let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
            let _ = sqlx::query(&sql).execute(&mut conn).await;
        }
        if let Ok(client) = redis::Client::open(redis_url())
            && let Ok(mut conn) = client.get_connection()
        {
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(format!("{}:*", self.prefix))
                .query(&mut conn)
                .unwrap_or_default();
            for chunk in keys.chunks(1000) {
                let _: redis::RedisResult<i64> = redis::cmd("UNLINK").arg(chunk).query(&mut conn);
            }
        }
    }
}

/// A message event as `POST /message` would append it.
fn message_request(n: u64, user: Uuid) -> AppendRequest {
    let tags = [n % TAGS as u64, (n * 7 + 3) % TAGS as u64];
    let posted = MessagePosted {
        message_id: Ulid::generate(),
        user_id: user,
        user_name: "loader".into(),
        text: format!("message number {n} about tag{} and tag{}", tags[0], tags[1]),
        hashtags: tags
            .iter()
            .filter_map(|t| Hashtag::parse(&format!("tag{t}")).ok())
            .collect(),
    };
    let stream = message::stream_id(posted.message_id, user, None);
    let metadata = Metadata {
        actor: Some(user.to_string()),
        ..Metadata::default()
    };
    AppendRequest::new(
        stream,
        ExpectedVersion::NoStream,
        vec![NewEvent::new(&posted, metadata)],
    )
}

/// Append `count` messages straight into `store`, many in flight (they group-commit).
async fn load_messages(store: Arc<dyn EventStore>, count: u64) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let user = Uuid::now_v7();
    let mut next = 0;
    while next < count {
        let mut set = JoinSet::new();
        for n in next..(next + 4096).min(count) {
            let store = store.clone();
            set.spawn(async move { store.append(message_request(n, user)).await });
        }
        next = (next + 4096).min(count);
        while let Some(result) = set.join_next().await {
            result??;
        }
    }
    Ok(started.elapsed())
}

/// Wait until the Redis checkpoint reaches `position`.
async fn wait_projected(deployment: &Deployment, position: i64) -> anyhow::Result<()> {
    let client = redis::Client::open(redis_url())?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    loop {
        if let Some(key) = deployment.checkpoint_key(&mut conn).await? {
            let at: Option<i64> = redis::cmd("HGET")
                .arg(key)
                .arg("pos")
                .query_async(&mut conn)
                .await?;
            if at.unwrap_or(0) >= position {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[derive(Default)]
struct Summary(Vec<(String, String, String)>);

impl Summary {
    fn add(&mut self, what: &str, figure: String, target: &str) {
        println!("  {what}: {figure}");
        self.0.push((what.into(), figure, target.into()));
    }
}

async fn bench_write(summary: &mut Summary, seconds: u64) -> anyhow::Result<()> {
    println!("\n== write: POST /message, 64 connections, {seconds} s; then pgbench ==");
    let deployment = Deployment::fresh().await;
    let token = cairn(&deployment.env, &["user", "add", "bench"]).await?;
    let server = spawn_server(&deployment.env)?;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(128)
        .build()?;
    wait_for_200(
        &client,
        &format!("{}/health/live", server.base),
        Instant::now(),
    )
    .await;

    let stop = Arc::new(AtomicBool::new(false));
    let measuring = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicU64::new(0));
    let mut tasks = JoinSet::new();
    for c in 0..64 {
        let (client, url, token) = (
            client.clone(),
            format!("{}/message", server.base),
            token.clone(),
        );
        let (stop, measuring, errors) = (stop.clone(), measuring.clone(), errors.clone());
        tasks.spawn(async move {
            let mut samples = Vec::new();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let body = format!(
                    r#"{{"text":"load {c}/{n}","hashtags":["bench","tag{}"]}}"#,
                    n % TAGS as u64
                );
                let started = Instant::now();
                let ok = client
                    .post(&url)
                    .bearer_auth(&token)
                    .body(body)
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == 201);
                if measuring.load(Ordering::Relaxed) {
                    if ok {
                        samples.push(started.elapsed());
                    } else {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            samples
        });
    }
    tokio::time::sleep(Duration::from_secs(2)).await; // warm-up
    measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    measuring.store(false, Ordering::Relaxed);
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    while let Some(samples) = tasks.join_next().await {
        all.extend(samples?);
    }
    let rate = all.len() as f64 / elapsed.as_secs_f64();
    let mut latencies = Latencies(all);
    let p99 = latencies.percentile(99.0);
    summary.add(
        "POST /message (64 connections)",
        format!(
            "{rate:.0} req/s, {}, {} errors",
            latencies.describe(),
            errors.load(Ordering::Relaxed)
        ),
        "p99 < 25 ms",
    );
    // How well the group commit batched: requests per committed transaction.
    let metrics = client
        .get(format!("{}/metrics", server.base))
        .send()
        .await?
        .text()
        .await?;
    let value = |name: &str| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    let (requests, batches) = (
        value("cairn_append_batch_size_sum"),
        value("cairn_append_batch_size_count"),
    );
    summary.add(
        "append batches",
        format!(
            "{batches:.0} transactions, {:.1} requests each on average",
            requests / batches
        ),
        "-",
    );
    drop(server);

    // pgbench on the same server, in the same database.
    let pg = pgbench(&deployment.database_url, seconds).await?;
    summary.add(
        "pgbench (8 clients, one-row JSONB insert)",
        format!("{pg:.0} tps"),
        "baseline",
    );
    summary.add(
        "write ratio Cairn / pgbench",
        format!("{:.2} (p99 {p99:.2} ms)", rate / pg),
        ">= 2.0",
    );
    deployment.remove().await;
    Ok(())
}

async fn pgbench(database_url: &str, seconds: u64) -> anyhow::Result<f64> {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(database_url).await?;
    let sync: String = sqlx::query_scalar("SHOW synchronous_commit")
        .fetch_one(&mut conn)
        .await?;
    println!("  synchronous_commit = {sync}");
    sqlx::query("CREATE TABLE IF NOT EXISTS bench_insert (id bigserial PRIMARY KEY, payload jsonb NOT NULL)")
        .execute(&mut conn)
        .await?;
    let _ = conn.close().await;
    let script =
        std::env::temp_dir().join(format!("cairn-pgbench-{}.sql", Uuid::now_v7().simple()));
    std::fs::write(
        &script,
        "INSERT INTO bench_insert (payload) VALUES ('{\"text\": \"load 1/1\", \"hashtags\": [\"bench\", \"tag1\"]}');\n",
    )?;
    let output = Command::new("pgbench")
        .args(["-n", "-c", "8", "-j", "2", "-T", &seconds.to_string(), "-f"])
        .arg(&script)
        .arg(database_url)
        .output()
        .await
        .context("running pgbench (apt-get install postgresql-client)")?;
    let _ = std::fs::remove_file(&script);
    let stdout = String::from_utf8_lossy(&output.stdout);
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("tps = "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .with_context(|| {
            format!(
                "pgbench printed no tps: {stdout}{}",
                String::from_utf8_lossy(&output.stderr)
            )
        })
}

async fn bench_read(summary: &mut Summary, messages: u64) -> anyhow::Result<()> {
    println!("\n== read: GET /message?hashtag=X&limit=20 with {messages} messages ==");
    let deployment = Deployment::fresh().await;
    let store: Arc<dyn EventStore> = cairn_events::open_postgres(&deployment.database_url).await?;
    let load = load_messages(store.clone(), messages).await?;
    println!(
        "  loaded into Postgres in {:.1} s ({:.0} events/s)",
        load.as_secs_f64(),
        messages as f64 / load.as_secs_f64()
    );
    let head = store.head().await?;
    let server = spawn_server(&deployment.env)?;
    let started = Instant::now();
    wait_projected(&deployment, head).await?;
    let projected = started.elapsed();
    summary.add(
        "projection into Redis from scratch",
        format!(
            "{:.1} s ({:.0} events/s)",
            projected.as_secs_f64(),
            messages as f64 / projected.as_secs_f64()
        ),
        "-",
    );

    let client = reqwest::Client::new();
    let base = server.base.clone();
    let mut tasks = JoinSet::new();
    for t in 0..4u64 {
        let (client, base) = (client.clone(), base.clone());
        tasks.spawn(async move {
            let mut samples = Vec::with_capacity(5000);
            for i in 0..5500u64 {
                let url = format!(
                    "{base}/message?hashtag=tag{}&limit=20",
                    (i * 31 + t * 7) % TAGS as u64
                );
                let started = Instant::now();
                let ok = client
                    .get(&url)
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == 200);
                if i >= 500 && ok {
                    samples.push(started.elapsed());
                }
            }
            samples
        });
    }
    let mut all = Vec::new();
    while let Some(samples) = tasks.join_next().await {
        all.extend(samples?);
    }
    summary.add(
        "GET /message?hashtag=X&limit=20 (4 connections)",
        Latencies(all).describe(),
        "p99 < 5 ms",
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    summary.add(
        "RSS of the server after projecting and serving",
        format!("{:.1} MiB", server.rss_mib()),
        "-",
    );

    bench_lag(summary, &deployment, store).await?;
    drop(server);
    deployment.remove().await;
    Ok(())
}

/// Append at 1,000 events/s (a spawned append every millisecond) for 10 s and time each
/// event from its append returning to the read model's checkpoint passing it.
async fn bench_lag(
    summary: &mut Summary,
    deployment: &Deployment,
    store: Arc<dyn EventStore>,
) -> anyhow::Result<()> {
    println!("\n== lag: append -> visible in Redis at 1,000 events/s for 10 s ==");
    let pending: Arc<Mutex<VecDeque<(i64, Instant)>>> = Arc::default();
    let lags: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let done = Arc::new(AtomicBool::new(false));

    // The watcher: a thread polling the checkpoint every 100 µs.
    let watcher = {
        let (pending, lags, done) = (pending.clone(), lags.clone(), done.clone());
        let client = redis::Client::open(redis_url())?;
        let mut async_conn = client.get_multiplexed_async_connection().await?;
        let key = deployment
            .checkpoint_key(&mut async_conn)
            .await?
            .context("the messages model has a live generation")?;
        std::thread::spawn(move || -> anyhow::Result<()> {
            let mut conn = client.get_connection()?;
            loop {
                let at: Option<i64> = redis::cmd("HGET").arg(&key).arg("pos").query(&mut conn)?;
                let now = Instant::now();
                let at = at.unwrap_or(0);
                {
                    let mut pending = pending.lock().unwrap_or_else(|p| p.into_inner());
                    let mut lags = lags.lock().unwrap_or_else(|p| p.into_inner());
                    pending.retain(|(position, appended)| {
                        if *position <= at {
                            lags.push(now.saturating_duration_since(*appended));
                            false
                        } else {
                            true
                        }
                    });
                    if done.load(Ordering::Relaxed) && pending.is_empty() {
                        return Ok(());
                    }
                }
                std::thread::sleep(Duration::from_micros(100));
            }
        })
    };

    let user = Uuid::now_v7();
    let mut ticker = tokio::time::interval(Duration::from_millis(1));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut appends = JoinSet::new();
    let started = Instant::now();
    for n in 0..10_000u64 {
        ticker.tick().await;
        let (store, pending) = (store.clone(), pending.clone());
        appends.spawn(async move {
            let appended = store.append(message_request(n, user)).await?;
            let now = Instant::now();
            pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push_back((appended.last_position, now));
            anyhow::Ok(())
        });
    }
    while let Some(result) = appends.join_next().await {
        result??;
    }
    let rate = 10_000.0 / started.elapsed().as_secs_f64();
    done.store(true, Ordering::Relaxed);
    watcher
        .join()
        .map_err(|_| anyhow::anyhow!("the watcher thread panicked"))??;
    let lags = std::mem::take(&mut *lags.lock().unwrap_or_else(|p| p.into_inner()));
    summary.add(
        "projection lag at 1,000 events/s",
        format!(
            "{} (achieved {rate:.0} events/s)",
            Latencies(lags).describe()
        ),
        "p99 < 20 ms",
    );
    Ok(())
}

async fn bench_rss(summary: &mut Summary) -> anyhow::Result<()> {
    println!("\n== rss: idle cairn serve on Postgres + Redis ==");
    let deployment = Deployment::fresh().await;
    cairn(&deployment.env, &["migrate"]).await?;
    let server = spawn_server(&deployment.env)?;
    let client = reqwest::Client::new();
    wait_for_200(
        &client,
        &format!("{}/health/ready", server.base),
        Instant::now(),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    summary.add(
        "idle RSS, cairn serve on Postgres + Redis",
        format!("{:.1} MiB", server.rss_mib()),
        "< 40 MB",
    );
    drop(server);
    deployment.remove().await;
    Ok(())
}

/// Start an embedded server on `dir` and time the first 200 of `/health/live` and of
/// `GET /message?limit=1` (which waits until the read models hold the whole log).
async fn cold_start(dir: &Path) -> anyhow::Result<(Duration, Duration)> {
    let env = vec![("CAIRN_DATA_DIR".to_owned(), dir.display().to_string())];
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(600))
        .build()?;
    let started = Instant::now();
    let server = spawn_server(&env)?;
    let live = wait_for_200(&client, &format!("{}/health/live", server.base), started).await;
    let messages = wait_for_200(
        &client,
        &format!("{}/message?limit=1", server.base),
        started,
    )
    .await;
    let mut server = server;
    server.child.kill().await?; // SIGKILL, then wait: the data dir is free again
    Ok((live, messages))
}

async fn bench_cold(summary: &mut Summary, messages: u64) -> anyhow::Result<()> {
    println!("\n== cold: embedded start to the first 200 ==");
    let empty = temp_dir("empty");
    let (live, list) = cold_start(&empty).await?;
    summary.add(
        "embedded cold start, empty data dir",
        format!(
            "{:.0} ms to /health/live, {:.0} ms to GET /message",
            ms(live),
            ms(list)
        ),
        "< 300 ms",
    );
    let _ = std::fs::remove_dir_all(&empty);

    let full = temp_dir("full");
    std::fs::create_dir_all(&full)?;
    {
        let store: Arc<dyn EventStore> = cairn_events::open_sqlite(&full.join("events.db")).await?;
        let load = load_messages(store, messages).await?;
        println!(
            "  loaded {messages} messages into SQLite in {:.1} s",
            load.as_secs_f64()
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await; // let the loader's writer close
    // The first start finds events but no read-model file: it builds the file.
    let (live, list) = cold_start(&full).await?;
    summary.add(
        &format!("embedded first start on {messages} loaded messages (builds the read models)"),
        format!(
            "{:.0} ms to /health/live, {:.1} s to GET /message",
            ms(live),
            list.as_secs_f64()
        ),
        "",
    );
    // A restart finds the file as the server left it (killed, not stopped).
    let (live, list) = cold_start(&full).await?;
    summary.add(
        &format!("embedded cold start, {messages} messages"),
        format!(
            "{:.0} ms to /health/live, {:.0} ms to GET /message",
            ms(live),
            ms(list)
        ),
        "< 300 ms",
    );
    let _ = std::fs::remove_dir_all(&full);
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn temp_dir(what: &str) -> PathBuf {
    std::env::temp_dir().join(format!("cairn-bench-{what}-{}", Uuid::now_v7().simple()))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    cairn::install_tls_provider();
    let only = std::env::var("BENCH_ONLY").unwrap_or_else(|_| {
        "write,read,rss,cold,trends,capsules,upload,scheduler,backups,exports".into()
    });
    let wants = |s: &str| {
        only.split(',')
            .any(|o| o.trim() == s || (s == "read" && o.trim() == "lag"))
    };
    let seconds: u64 = env_or("BENCH_SECONDS", 20);
    let messages: u64 = env_or("BENCH_MESSAGES", 1_000_000);
    println!(
        "Cairn benchmark: {} cores, {messages} messages, {seconds} s write runs",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let mut summary = Summary::default();
    if wants("write") {
        bench_write(&mut summary, seconds).await?;
    }
    if wants("read") {
        bench_read(&mut summary, messages).await?;
    }
    if wants("rss") {
        bench_rss(&mut summary).await?;
    }
    if wants("cold") {
        bench_cold(&mut summary, messages).await?;
    }
    if wants("trends") {
        trends::bench_trends(&mut summary).await?;
    }
    if wants("capsules") {
        capsules::bench_capsules(&mut summary).await?;
    }
    if wants("upload") {
        upload::bench_upload(&mut summary).await?;
    }
    if wants("scheduler") {
        scheduler::bench_scheduler(&mut summary).await?;
    }
    if wants("backups") {
        backups::bench_backups(&mut summary).await?;
    }
    if wants("exports") {
        exports::bench_exports(&mut summary).await?;
    }
    println!("\n| measure | figure | target |\n|---|---|---|");
    for (what, figure, target) in &summary.0 {
        println!("| {what} | {figure} | {target} |");
    }
    Ok(())
}
