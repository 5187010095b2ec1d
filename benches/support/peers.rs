//! `scheduler` part 3: the precision and burst workloads as no-op jobs on two Postgres job
//! queues, pg-boss and graphile-worker (Node; `benches/peers/*.cjs`), each on a database of
//! its own on the same Postgres, with two worker processes as Cairn has two schedulers,
//! each with its defaults and with its lowest polling interval. Lateness is the job's start
//! minus its scheduled time, taken inside the worker. The packages are installed with npm
//! (pinned versions) into a cache directory the first time; without Node the part is
//! skipped, saying so.
//!
//! Knobs: `BENCH_PEERS` (`pgboss,graphile`), `BENCH_PEERS_DIR` (where npm installs them),
//! `BENCH_GRAPHILE_POLL_MS` (100: graphile-worker enforces no floor; pg-boss's is 500 ms),
//! `BENCH_PEER_BURST_SECONDS` (120: how long a burst may take before its rate is projected;
//! pg-boss by default fetches one job per poll and worker), `BENCH_PGBOSS_BATCH` (unset: a
//! third pg-boss run, at 500 ms, fetching that many jobs a time).

use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::Context;
use sqlx::Connection;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use super::scheduler::{CairnFigures, Idle, Watched};
use super::{Arc, Duration, Instant, Latencies, Mutex, Summary, env_or};

const PG_BOSS: &str = "10.4.2";
const GRAPHILE_WORKER: &str = "0.17.3";

/// One job start a worker reported.
struct Job {
    kind: String,
    index: u64,
    due_ms: f64,
    started_ms: f64,
}

struct Peer {
    name: &'static str,
    script: &'static str,
    /// What `poll` means, for the summary.
    label: String,
    /// The worker's polling interval in ms, or `default`.
    poll: String,
    /// Drops the jobs left over (a burst cut short), so the idle window is idle.
    wipe: &'static str,
}

fn peers() -> Vec<Peer> {
    let wanted = std::env::var("BENCH_PEERS").unwrap_or_else(|_| "pgboss,graphile".into());
    let wants = |p: &str| wanted.split(',').any(|w| w.trim() == p);
    let graphile_poll: u64 = env_or("BENCH_GRAPHILE_POLL_MS", 100);
    let mut list = Vec::new();
    if wants("pgboss") {
        for (label, poll) in [
            ("defaults (poll 2 s)", "default".to_owned()),
            ("poll 500 ms (its minimum)", "500".to_owned()),
        ] {
            list.push(Peer {
                name: "pg-boss",
                script: "pgboss.cjs",
                label: label.into(),
                poll,
                wipe: "DELETE FROM pgboss.job",
            });
        }
    }
    if wants("graphile") {
        for (label, poll) in [
            ("defaults (poll 2 s)".to_owned(), "default".to_owned()),
            (
                format!("poll {graphile_poll} ms"),
                graphile_poll.to_string(),
            ),
        ] {
            list.push(Peer {
                name: "graphile-worker",
                script: "graphile.cjs",
                label,
                poll,
                wipe: "DELETE FROM graphile_worker._private_jobs",
            });
        }
    }
    // Optionally, pg-boss at its minimum poll fetching `BENCH_PGBOSS_BATCH` jobs a time
    // (its defaults fetch one per poll and worker).
    if wants("pgboss")
        && let Some(batch) = std::env::var("BENCH_PGBOSS_BATCH")
            .ok()
            .filter(|b| !b.is_empty())
    {
        list.push(Peer {
            name: "pg-boss",
            script: "pgboss.cjs",
            label: format!("poll 500 ms, batch {batch}"),
            poll: format!("500:{batch}"),
            wipe: "DELETE FROM pgboss.job",
        });
    }
    list
}

/// Node's `node_modules` with both packages at their pinned versions, installed if needed;
/// `Err` says why the part cannot run.
async fn install() -> anyhow::Result<PathBuf> {
    let version = Command::new("node").arg("--version").output().await;
    let Ok(version) = version.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned()) else {
        anyhow::bail!("Node is missing (node not found)");
    };
    let dir = std::env::var("BENCH_PEERS_DIR").map_or_else(
        |_| {
            std::env::temp_dir().join(format!(
                "cairn-bench-peers-pgboss{PG_BOSS}-graphile{GRAPHILE_WORKER}"
            ))
        },
        PathBuf::from,
    );
    let installed = |package: &str, want: &str| {
        std::fs::read_to_string(dir.join("node_modules").join(package).join("package.json"))
            .is_ok_and(|p| p.contains(&format!("\"version\": \"{want}\"")))
    };
    if !(installed("pg-boss", PG_BOSS) && installed("graphile-worker", GRAPHILE_WORKER)) {
        println!(
            "  installing pg-boss {PG_BOSS} and graphile-worker {GRAPHILE_WORKER} into {} (Node {version})",
            dir.display()
        );
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("package.json"), "{\"private\": true}\n")?;
        let status = Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--loglevel=error"])
            .arg(format!("pg-boss@{PG_BOSS}"))
            .arg(format!("graphile-worker@{GRAPHILE_WORKER}"))
            .current_dir(&dir)
            .status()
            .await
            .context("running npm")?;
        anyhow::ensure!(status.success(), "npm install failed ({status})");
    }
    Ok(dir.join("node_modules"))
}

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("benches/peers")
        .join(name)
}

fn now_ms() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
        * 1000.0
}

/// A worker process whose job lines land in `jobs`; returns once it printed `READY`.
async fn spawn_worker(
    modules: &Path,
    peer: &Peer,
    url: &str,
    jobs: Arc<Mutex<Vec<Job>>>,
) -> anyhow::Result<Child> {
    let mut child = Command::new("node")
        .arg(script(peer.script))
        .args(["work", url, &peer.poll])
        .env("NODE_PATH", modules)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .context("starting a peer worker")?;
    let stdout = child.stdout.take().context("the worker's stdout")?;
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let mut lines = BufReader::new(stdout).lines();
        let mut ready = Some(ready_tx);
        while let Ok(Some(line)) = lines.next_line().await {
            let mut parts = line.split_whitespace();
            match parts.next() {
                Some("READY") => {
                    if let Some(ready) = ready.take() {
                        let _ = ready.send(());
                    }
                }
                Some("JOB") => {
                    let fields: Vec<&str> = parts.collect();
                    if let [kind, index, due, started] = fields[..]
                        && let (Ok(index), Ok(due_ms), Ok(started_ms)) =
                            (index.parse(), due.parse(), started.parse())
                    {
                        jobs.lock().unwrap_or_else(|p| p.into_inner()).push(Job {
                            kind: kind.to_owned(),
                            index,
                            due_ms,
                            started_ms,
                        });
                    }
                }
                _ => {}
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(60), ready_rx)
        .await
        .context("the peer worker did not start within 60 s")?
        .context("the peer worker exited before it was ready")?;
    Ok(child)
}

async fn load(
    modules: &Path,
    peer: &Peer,
    url: &str,
    kind: &str,
    count: usize,
    t0_ms: f64,
    spread_ms: u64,
) -> anyhow::Result<()> {
    let status = Command::new("node")
        .arg(script(peer.script))
        .args(["load", url, kind])
        .arg(count.to_string())
        .arg(format!("{}", t0_ms as u64))
        .arg(spread_ms.to_string())
        .env("NODE_PATH", modules)
        .stdout(Stdio::null())
        .status()
        .await?;
    anyhow::ensure!(status.success(), "{} load: {status}", peer.name);
    Ok(())
}

fn count_kind(jobs: &Mutex<Vec<Job>>, kind: &str) -> usize {
    jobs.lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .filter(|j| j.kind == kind)
        .count()
}

async fn wait_kind(jobs: &Mutex<Vec<Job>>, kind: &str, want: usize, deadline: Instant) -> usize {
    loop {
        let have = count_kind(jobs, kind);
        if have >= want || Instant::now() > deadline {
            return have;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Starts of `kind` jobs: lateness, distinct jobs, repeats, and the last start's time.
fn starts(jobs: &Mutex<Vec<Job>>, kind: &str) -> (Latencies, usize, usize, f64) {
    let jobs = jobs.lock().unwrap_or_else(|p| p.into_inner());
    let mut seen = std::collections::HashSet::new();
    let mut late = Latencies(Vec::new());
    let mut repeats = 0;
    let mut last = 0.0_f64;
    for job in jobs.iter().filter(|j| j.kind == kind) {
        if !seen.insert(job.index) {
            repeats += 1;
            continue;
        }
        late.0.push(Duration::from_secs_f64(
            ((job.started_ms - job.due_ms) / 1000.0).max(0.0),
        ));
        last = last.max(job.started_ms);
    }
    (late, seen.len(), repeats, last)
}

fn ratio(peer: f64, cairn: Option<f64>) -> String {
    match cairn {
        Some(c) if c > 0.0 && peer.is_finite() => format!("{:.1}× Cairn's", peer / c),
        _ => "no Cairn figure to compare".into(),
    }
}

pub async fn bench_peers(
    summary: &mut Summary,
    cairn: &CairnFigures,
    idle: Duration,
) -> anyhow::Result<()> {
    let precision: usize = env_or("BENCH_SCHED_PRECISION", 1000);
    let spread_s: u64 = env_or("BENCH_SCHED_SPREAD_SECONDS", 60);
    let burst: usize = env_or("BENCH_SCHED_BURST", 10_000);
    let burst_window = Duration::from_secs(env_or("BENCH_PEER_BURST_SECONDS", 120));
    println!(
        "\n== scheduler peers: pg-boss {PG_BOSS} and graphile-worker {GRAPHILE_WORKER}, two workers each, no-op jobs =="
    );
    let modules = match install().await {
        Ok(modules) => modules,
        Err(why) => {
            println!("  SKIPPED: {why}");
            summary.add("scheduler peers", format!("skipped: {why}"), "-");
            return Ok(());
        }
    };
    for peer in peers() {
        let started = Instant::now();
        let what = format!("{} {}", peer.name, peer.label);
        println!("  -- {what}");
        let url = cairn_events::testing::fresh_postgres_url().await;
        let database = url.rsplit('/').next().unwrap_or_default().to_owned();
        let jobs: Arc<Mutex<Vec<Job>>> = Arc::default();
        let outcome = async {
            let mut workers = Vec::new();
            for _ in 0..2 {
                workers.push(spawn_worker(&modules, &peer, &url, jobs.clone()).await?);
            }
            let pids: Vec<u32> = workers.iter().filter_map(Child::id).collect();

            // Precision.
            let t0 = now_ms() + 10_000.0;
            load(&modules, &peer, &url, "p", precision, t0, spread_s * 1000).await?;
            let deadline = Instant::now() + Duration::from_secs(spread_s + 70);
            wait_kind(&jobs, "p", precision, deadline).await;
            let (mut late, done, repeats, _) = starts(&jobs, "p");
            if done < precision {
                // Left over (pg-boss by default fetches one job per poll and worker): drop
                // them, so the burst is measured alone.
                let mut conn = sqlx::PgConnection::connect(&url).await?;
                sqlx::query(peer.wipe).execute(&mut conn).await?;
            }
            let p99 = late.percentile(99.0);
            summary.add(
                &format!("peer {what}: precision, {precision} jobs over {spread_s} s, lateness (start - scheduled)"),
                format!(
                    "{}; {done} of {precision} ran, {repeats} twice; p99 {}",
                    late.describe(),
                    ratio(p99, cairn.precision_p99_ms)
                ),
                "-",
            );

            // Burst.
            let t0 = now_ms() + 15_000.0;
            load(&modules, &peer, &url, "b", burst, t0, 0).await?;
            let wait = Duration::from_secs_f64(((t0 - now_ms()) / 1000.0).max(0.0));
            wait_kind(&jobs, "b", burst, Instant::now() + wait + burst_window).await;
            let (_, done, repeats, last) = starts(&jobs, "b");
            let took = if done == 0 {
                burst_window.as_secs_f64()
            } else {
                (last - t0) / 1000.0
            };
            let figure = if done >= burst {
                format!(
                    "the last of {burst} started {took:.2} s after the due time ({:.0} jobs/s), {repeats} twice; {}",
                    burst as f64 / took,
                    ratio(took, cairn.burst_last_release_s).replace("Cairn's", "Cairn's time to the last release")
                )
            } else {
                let rate = done as f64 / took.max(0.001);
                format!(
                    "{done} of {burst} started within {took:.0} s of the due time ({rate:.1} jobs/s): all would take ~{:.0} s; {repeats} twice",
                    burst as f64 / rate
                )
            };
            summary.add(
                &format!("peer {what}: burst, {burst} jobs due at one instant"),
                figure,
                "-",
            );
            if done < burst {
                let mut conn = sqlx::PgConnection::connect(&url).await?;
                sqlx::query(peer.wipe).execute(&mut conn).await?;
                tokio::time::sleep(Duration::from_secs(3)).await;
            }

            // Idle.
            tokio::time::sleep(Duration::from_secs(5)).await;
            let measured = Idle::measure(&pids, Watched::Database(database.clone()), idle).await?;
            summary.add(
                &format!("peer {what}: idle for {} s, 2 workers", idle.as_secs()),
                format!(
                    "{}; CPU {}",
                    measured.describe(),
                    ratio(measured.cpu_percent, cairn.idle_cpu_percent)
                ),
                "-",
            );
            for mut worker in workers {
                let _ = worker.start_kill();
                let _ = worker.wait().await;
            }
            anyhow::Ok(())
        }
        .await;
        drop_database(&database).await;
        println!("  {what} took {:.0} s", started.elapsed().as_secs_f64());
        outcome?;
    }
    Ok(())
}

async fn drop_database(name: &str) {
    if let Ok(mut conn) = sqlx::PgConnection::connect(&cairn_events::testing::admin_url()).await {
        let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
        let _ = sqlx::query(&sql).execute(&mut conn).await;
    }
}
