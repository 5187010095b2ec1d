//! `exports`: one user's `BENCH_EXPORT_MESSAGES` (1,000,000) messages, spread over
//! `BENCH_EXPORT_DAYS` (365) days, exported on Postgres + Redis by a scheduler process
//! of its own, the API in another:
//! - to a bundle, against the baseline of the same messages' JSON copied out of Postgres
//!   by `psql` and deflated by `gzip -1` (what reading and compressing them costs, with no
//!   export around it); then the bundle downloaded through the API;
//! - to a git repository on the local disk (a bare one, pushed to as a remote);
//! - the bundle again with `BENCH_EXPORT_WATCHERS` (1,000) clients following its
//!   Server-Sent Events, the API process's CPU and memory measured.
//!
//! The scheduler's resident memory is sampled every 5 ms throughout each export.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use cairn_events::domain::message::{self, Hashtag, MessagePosted};
use cairn_events::{AppendRequest, EventStore, ExpectedVersion, Metadata, NewEvent};
use futures_util::StreamExt;
use serde_json::{Value, json};
use ulid::Ulid;
use uuid::Uuid;

use super::upload::{Sampler, rss_kib};
use super::{
    Deployment, Duration, Instant, Server, Summary, cairn, env_or, spawn_server_with_role,
    temp_dir, wait_for_200,
};

/// Messages per append (one commit), and appends in flight.
const BATCH: u64 = 1_000;
const IN_FLIGHT: usize = 4;

/// One append of messages `from..to` of `user`'s, `days` days of them ending yesterday.
fn messages(user: Uuid, from: u64, to: u64, total: u64, days: u64) -> AppendRequest {
    let end = chrono::Utc::now() - chrono::Duration::days(1);
    let span = chrono::Duration::days(days as i64);
    let mut requests = (from..to).map(|n| {
        // Evenly over the span, oldest first.
        let at = end - span + span * (n as i32) / (total as i32).max(1);
        let tags = [n % 50, (n * 7 + 3) % 50];
        let posted = MessagePosted {
            message_id: Ulid::from_datetime(at.into()),
            user_id: user,
            user_name: "bench".into(),
            text: format!(
                "message number {n}: a line of the kind people post, about #tag{} and #tag{}",
                tags[0], tags[1]
            ),
            hashtags: tags
                .iter()
                .filter_map(|t| Hashtag::parse(&format!("tag{t}")).ok())
                .collect(),
        };
        let metadata = Metadata {
            actor: Some(user.to_string()),
            ..Metadata::default()
        };
        (
            message::stream_id(posted.message_id, user, None),
            NewEvent::at(&posted, metadata, at),
        )
    });
    let (stream, event) = requests.next().expect("a batch is never empty");
    let mut append = AppendRequest::new(stream, ExpectedVersion::NoStream, vec![event]);
    for (stream, event) in requests {
        append = append.and_stream(stream, ExpectedVersion::NoStream, vec![event]);
    }
    append
}

async fn load(store: Arc<dyn EventStore>, user: Uuid, total: u64, days: u64) -> anyhow::Result<()> {
    let mut running = tokio::task::JoinSet::new();
    let mut from = 0;
    while from < total || !running.is_empty() {
        while from < total && running.len() < IN_FLIGHT {
            let to = (from + BATCH).min(total);
            let store = store.clone();
            running.spawn(async move { store.append(messages(user, from, to, total, days)).await });
            from = to;
        }
        if let Some(done) = running.join_next().await {
            done??;
        }
    }
    Ok(())
}

/// The API of the command process, as the user.
struct Api {
    client: reqwest::Client,
    base: String,
    token: String,
}

impl Api {
    async fn start(&self, destination: Value) -> anyhow::Result<String> {
        let response = self
            .client
            .post(format!("{}/exports", self.base))
            .bearer_auth(&self.token)
            .json(&json!({ "destination": destination }))
            .send()
            .await?;
        anyhow::ensure!(
            response.status() == 202,
            "POST /exports: {}",
            response.status()
        );
        let answer: Value = response.json().await?;
        Ok(answer["data"]["id"].as_str().unwrap_or_default().to_owned())
    }

    async fn export(&self, id: &str) -> anyhow::Result<Value> {
        let answer: Value = self
            .client
            .get(format!("{}/exports/{id}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await?
            .json()
            .await?;
        Ok(answer["data"].clone())
    }

    /// Wait for export `id` to end (looked at every 100 ms); its last answer.
    async fn ended(&self, id: &str) -> anyhow::Result<Value> {
        loop {
            let export = self.export(id).await?;
            match export["status"].as_str() {
                Some("completed") => return Ok(export),
                Some("failed" | "cancelled") => anyhow::bail!("the export ended: {export}"),
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }
}

/// An export from its request to its end, the scheduler's memory sampled: how long it
/// took, the peak resident memory in KiB, and its last answer.
async fn timed(
    api: &Api,
    scheduler: &Server,
    destination: Value,
) -> anyhow::Result<(Duration, u64, Value)> {
    let sampler = Sampler::start(scheduler.pid());
    let started = Instant::now();
    let id = api.start(destination).await?;
    let export = api.ended(&id).await?;
    let took = started.elapsed();
    Ok((took, sampler.peak().await, export))
}

/// Seconds of CPU `pid` has used (user and system).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name (which may hold spaces) end with ")".
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    (ticks(11) + ticks(12)) / 100.0
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

pub async fn bench_exports(summary: &mut Summary) -> anyhow::Result<()> {
    let total: u64 = env_or("BENCH_EXPORT_MESSAGES", 1_000_000);
    let days: u64 = env_or("BENCH_EXPORT_DAYS", 365);
    let watchers: usize = env_or("BENCH_EXPORT_WATCHERS", 1_000);
    println!("\n== exports: {total} messages over {days} days, Postgres + Redis ==");
    let deployment = Deployment::fresh().await;
    let store: Arc<dyn EventStore> = cairn_events::open_postgres(&deployment.database_url).await?;
    let token = cairn(&deployment.env, &["user", "add", "bench"]).await?;
    let user = cairn_command::users::user_by_name(&*store, "bench")
        .await?
        .id;
    let started = Instant::now();
    load(store.clone(), user, total, days).await?;
    println!(
        "  loaded in {:.1} s ({:.0} messages/s)",
        started.elapsed().as_secs_f64(),
        total as f64 / started.elapsed().as_secs_f64()
    );

    // The baseline: the same messages' JSON out of Postgres, deflated.
    let started = Instant::now();
    let copy = format!(
        "psql -q -d '{}' -c \"\\copy (SELECT payload FROM events WHERE metadata->>'actor' = '{user}' AND category = 'message' ORDER BY position) TO STDOUT\" | gzip -1 | wc -c",
        deployment.database_url
    );
    let output = tokio::process::Command::new("bash")
        .args(["-c", &copy])
        .output()
        .await?;
    anyhow::ensure!(output.status.success(), "psql | gzip failed");
    let baseline = started.elapsed();
    let baseline_bytes: u64 = String::from_utf8_lossy(&output.stdout).trim().parse()?;

    let api_server = spawn_server_with_role(&deployment.env, "command")?;
    let scheduler = spawn_server_with_role(&deployment.env, "scheduler")?;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(watchers + 16)
        .build()?;
    wait_for_200(
        &client,
        &format!("{}/health/live", api_server.base),
        Instant::now(),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let api = Api {
        client: client.clone(),
        base: api_server.base.clone(),
        token,
    };
    let idle = rss_kib(scheduler.pid());

    // 1. A bundle.
    let (took, peak, export) = timed(&api, &scheduler, json!({"kind": "bundle"})).await?;
    let rate = total as f64 / took.as_secs_f64();
    let baseline_rate = total as f64 / baseline.as_secs_f64();
    let bytes = export["bundle"]["bytes"].as_u64().unwrap_or(0);
    println!(
        "  bundle: {:.1} s, {rate:.0} messages/s ({} steps, {:.1} MB zip) vs psql | gzip -1 {:.1} s, {baseline_rate:.0} messages/s ({:.1} MB): {:.2}×; scheduler RSS {:.1} → peak {:.1} MiB",
        took.as_secs_f64(),
        export["total"],
        bytes as f64 / 1e6,
        baseline.as_secs_f64(),
        baseline_bytes as f64 / 1e6,
        rate / baseline_rate,
        mib(idle),
        mib(peak)
    );
    summary.add(
        &format!("export of {total} messages to a bundle (vs psql COPY | gzip -1)"),
        format!(
            "{rate:.0} messages/s ({:.2}× the baseline's {baseline_rate:.0})",
            rate / baseline_rate
        ),
        "≥ 100,000 messages/s",
    );
    summary.add(
        "scheduler RSS growth during the bundle export",
        format!(
            "{:+.1} MiB (idle {:.1}, peak {:.1})",
            mib(peak.saturating_sub(idle)),
            mib(idle),
            mib(peak)
        ),
        "< 50 MB",
    );

    // The bundle downloaded through the API process.
    let id = export["id"].as_str().unwrap_or_default().to_owned();
    let sampler = Sampler::start(api_server.pid());
    let api_idle = rss_kib(api_server.pid());
    let started = Instant::now();
    let mut body = client
        .get(format!("{}/exports/{id}/bundle", api.base))
        .bearer_auth(&api.token)
        .send()
        .await?
        .bytes_stream();
    let mut downloaded = 0_u64;
    while let Some(chunk) = body.next().await {
        downloaded += chunk?.len() as u64;
    }
    let took = started.elapsed();
    let peak = sampler.peak().await;
    anyhow::ensure!(
        downloaded == bytes,
        "downloaded {downloaded} of {bytes} bytes"
    );
    println!(
        "  download: {:.1} MB in {:.2} s ({:.0} MB/s); API RSS {:.1} → peak {:.1} MiB",
        bytes as f64 / 1e6,
        took.as_secs_f64(),
        bytes as f64 / 1e6 / took.as_secs_f64(),
        mib(api_idle),
        mib(peak)
    );

    // 2. A git repository on the local disk.
    let dir = temp_dir("exports");
    std::fs::create_dir_all(&dir)?;
    let remote = dir.join("remote.git");
    let status = tokio::process::Command::new("git")
        .args(["init", "-q", "--bare"])
        .arg(&remote)
        .status()
        .await?;
    anyhow::ensure!(status.success(), "git init --bare");
    let idle = rss_kib(scheduler.pid());
    let destination = json!({"kind": "git", "url": remote.display().to_string(), "branch": "main"});
    let (took, peak, export) = timed(&api, &scheduler, destination).await?;
    let rate = total as f64 / took.as_secs_f64();
    let commits = tokio::process::Command::new("git")
        .arg("-C")
        .arg(&remote)
        .args(["rev-list", "--count", "main"])
        .output()
        .await?;
    let commits = String::from_utf8_lossy(&commits.stdout).trim().to_owned();
    println!(
        "  git: {:.1} s, {rate:.0} messages/s, {commits} commits for {} steps ({:.2} steps/s); scheduler RSS {:.1} → peak {:.1} MiB",
        took.as_secs_f64(),
        export["total"],
        export["total"].as_f64().unwrap_or(0.0) / took.as_secs_f64(),
        mib(idle),
        mib(peak)
    );
    summary.add(
        &format!("export of {total} messages to a local git repository"),
        format!(
            "{rate:.0} messages/s, {commits} commits in {:.1} s; scheduler RSS {:+.1} MiB",
            took.as_secs_f64(),
            mib(peak.saturating_sub(idle))
        ),
        "RSS < 50 MB",
    );

    // 3. The bundle again, followed by many clients at once.
    let (idle_cpu, idle_rss) = (cpu_seconds(api_server.pid()), rss_kib(api_server.pid()));
    let id = api.start(json!({"kind": "bundle"})).await?;
    let ended = Arc::new(AtomicUsize::new(0));
    let events = Arc::new(AtomicUsize::new(0));
    let sampler = Sampler::start(api_server.pid());
    let started = Instant::now();
    let mut following = tokio::task::JoinSet::new();
    for _ in 0..watchers {
        let (client, url, token) = (
            client.clone(),
            format!("{}/exports/{id}/events", api.base),
            api.token.clone(),
        );
        let (ended, events) = (ended.clone(), events.clone());
        following.spawn(async move {
            let response = client.get(url).bearer_auth(token).send().await?;
            anyhow::ensure!(response.status() == 200, "events: {}", response.status());
            let mut body = response.bytes_stream();
            let mut last = Vec::new();
            while let Some(chunk) = body.next().await {
                let chunk = chunk?;
                events.fetch_add(
                    chunk.windows(6).filter(|w| w == b"event:").count(),
                    Ordering::Relaxed,
                );
                last = chunk.to_vec();
            }
            anyhow::ensure!(
                String::from_utf8_lossy(&last).contains("\"completed\""),
                "the stream ended before the export did"
            );
            ended.fetch_add(1, Ordering::Relaxed);
            Ok::<_, anyhow::Error>(Instant::now())
        });
    }
    let mut last_end = started;
    while let Some(done) = following.join_next().await {
        last_end = last_end.max(done??);
    }
    let took = last_end - started;
    let peak = sampler.peak().await;
    let cpu = cpu_seconds(api_server.pid()) - idle_cpu;
    let completed = api.export(&id).await?;
    println!(
        "  {watchers} watchers: {} saw the end, {} events in all, over {:.1} s ({} steps); API CPU {cpu:.1} s ({:.0}% of one core), RSS {:.1} → peak {:.1} MiB",
        ended.load(Ordering::Relaxed),
        events.load(Ordering::Relaxed),
        took.as_secs_f64(),
        completed["total"],
        100.0 * cpu / took.as_secs_f64(),
        mib(idle_rss),
        mib(peak)
    );
    summary.add(
        &format!("{watchers} SSE watchers of one export (API process)"),
        format!(
            "{cpu:.1} s CPU over {:.1} s ({:.0}% of a core), RSS {:+.1} MiB ({:.0} KiB a watcher)",
            took.as_secs_f64(),
            100.0 * cpu / took.as_secs_f64(),
            mib(peak.saturating_sub(idle_rss)),
            peak.saturating_sub(idle_rss) as f64 / watchers as f64
        ),
        "-",
    );

    drop((api_server, scheduler));
    let _ = std::fs::remove_dir_all(&dir);
    deployment.remove().await;
    Ok(())
}
