//! `backups`: the Dome-compatible upload on the embedded default, the server's resident
//! memory sampled every 5 ms throughout (issue 14's benchmark).
//! 1. 100 uploads of 10 MB at once (distinct contents), against this process writing the
//!    same bytes to 100 files at once in the same directory (flushed): MB/s, and RSS.
//! 2. One 1 GB upload, streamed: RSS growth.
//! 3. A retention sweep over `BENCH_BACKUPS_SWEEP` (100,000) expired backups in 100
//!    resources (each upload folds its resource's stream, so loading them slows as the
//!    streams grow: smaller sweeps load in minutes), while another resource keeps taking uploads: time to the last deletion, and
//!    the uploads' latency before and during it.
//!
//! Uploads from one address are let through 128 at once here (`CAIRN_BACKUP_UPLOADS_PER_CLIENT`).

use futures_util::StreamExt;
use reqwest::multipart::{Form, Part};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

use super::upload::Sampler;
use super::{
    Duration, Instant, Latencies, Summary, cairn, env_or, spawn_server, temp_dir, wait_for_200,
};

const CHUNK: usize = 64 * 1024;

/// `bytes` of content `seed`, generated chunk by chunk (never whole in this process).
fn content(
    seed: u64,
    bytes: usize,
) -> impl futures_util::Stream<Item = Result<Vec<u8>, std::io::Error>> + Send + 'static {
    futures_util::stream::iter((0..bytes.div_ceil(CHUNK)).map(move |i| {
        let len = (bytes - i * CHUNK).min(CHUNK);
        let mut chunk: Vec<u8> = (0..len).map(|j| ((i * CHUNK + j) % 251) as u8).collect();
        if i == 0 {
            // Each seed its own content: no two uploads are stored as one.
            for (byte, seed_byte) in chunk.iter_mut().zip(seed.to_le_bytes()) {
                *byte = seed_byte;
            }
        }
        Ok(chunk)
    }))
}

fn form(seed: u64, bytes: usize) -> Form {
    let body = reqwest::Body::wrap_stream(content(seed, bytes));
    Form::new()
        .part(
            "backup",
            Part::stream_with_length(body, bytes as u64).file_name(format!("dump-{seed}.bin")),
        )
        .text("format", "bin")
}

fn mb_per_s(bytes: usize, took: Duration) -> f64 {
    bytes as f64 / 1e6 / took.as_secs_f64()
}

struct Api {
    client: reqwest::Client,
    base: String,
    token: String,
}

impl Api {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await?;
        let status = response.status();
        let answer: Value = response.json().await.unwrap_or(Value::Null);
        anyhow::ensure!(status.is_success(), "{path}: {status} {answer}");
        Ok(answer)
    }

    async fn resource(&self, service: &str, name: &str) -> anyhow::Result<String> {
        let made = self
            .call(
                reqwest::Method::POST,
                &format!("/services/{service}/resources"),
                Some(json!({"name": name})),
            )
            .await?;
        Ok(made["data"]["id"].as_str().unwrap_or_default().to_owned())
    }

    /// Post `bytes` of content `seed` to `resource`; how long it took.
    async fn upload(&self, resource: &str, seed: u64, bytes: usize) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let response = self
            .client
            .post(format!("{}/{resource}", self.base))
            .multipart(form(seed, bytes))
            .send()
            .await?;
        let status = response.status();
        anyhow::ensure!(status == 201, "upload: {status} {}", response.text().await?);
        Ok(started.elapsed())
    }
}

pub async fn bench_backups(summary: &mut Summary) -> anyhow::Result<()> {
    println!("\n== backups: Dome-compatible uploads, embedded ==");
    let dir = temp_dir("backups");
    std::fs::create_dir_all(&dir)?;
    let env = vec![
        ("CAIRN_DATA_DIR".to_owned(), dir.display().to_string()),
        ("CAIRN_BACKUP_UPLOADS".to_owned(), "256".to_owned()),
        (
            "CAIRN_BACKUP_UPLOADS_PER_CLIENT".to_owned(),
            "128".to_owned(),
        ),
    ];
    let token = cairn(&env, &["user", "add", "bench"]).await?;
    let server = spawn_server(&env)?;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(1200))
        .pool_max_idle_per_host(256)
        .build()?;
    wait_for_200(
        &client,
        &format!("{}/health/live", server.base),
        Instant::now(),
    )
    .await;
    let api = std::sync::Arc::new(Api {
        client,
        base: server.base.clone(),
        token,
    });
    let service = api
        .call(
            reqwest::Method::POST,
            "/services",
            Some(
                json!({"name": "bench", "retention": "3m", "max_backup_bytes": 2_000_000_000_u64}),
            ),
        )
        .await?["data"]["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let idle_kib = super::upload::rss_kib(server.pid());

    // 1. 100 × 10 MB at once, against the disk.
    let (files, size): (usize, usize) = (
        env_or("BENCH_BACKUPS_FILES", 100),
        env_or("BENCH_BACKUPS_BYTES", 10_000_000),
    );
    let baseline_dir = dir.join("baseline");
    std::fs::create_dir_all(&baseline_dir)?;
    let started = Instant::now();
    let mut writers = tokio::task::JoinSet::new();
    for i in 0..files {
        let path = baseline_dir.join(format!("{i}.bin"));
        writers.spawn(async move {
            let mut file = tokio::fs::File::create(&path).await?;
            let mut chunks = Box::pin(content(i as u64, size));
            while let Some(chunk) = chunks.next().await {
                file.write_all(&chunk?).await?;
            }
            file.sync_all().await?;
            Ok::<_, std::io::Error>(())
        });
    }
    while let Some(done) = writers.join_next().await {
        done??;
    }
    let disk = started.elapsed();
    std::fs::remove_dir_all(&baseline_dir)?;

    let resource = api.resource(&service, "concurrent").await?;
    let sampler = Sampler::start(server.pid());
    let started = Instant::now();
    let mut uploads = tokio::task::JoinSet::new();
    for i in 0..files {
        let (api, resource) = (api.clone(), resource.clone());
        uploads.spawn(async move { api.upload(&resource, 1_000 + i as u64, size).await });
    }
    let mut latencies = Latencies(Vec::new());
    while let Some(done) = uploads.join_next().await {
        latencies.0.push(done??);
    }
    let through = started.elapsed();
    let peak = sampler.peak().await;
    let total = files * size;
    let ratio = disk.as_secs_f64() / through.as_secs_f64();
    println!(
        "  {files} × {size} bytes at once: {:.0} MB/s through Cairn vs {:.0} MB/s to disk ({ratio:.2}×); each {}; RSS {:.1} → peak {:.1} MiB",
        mb_per_s(total, through),
        mb_per_s(total, disk),
        latencies.describe(),
        idle_kib as f64 / 1024.0,
        peak as f64 / 1024.0
    );
    summary.add(
        &format!("backups: {files} uploads of {size} bytes at once, embedded"),
        format!(
            "{:.0} MB/s vs {:.0} MB/s writing the same bytes to disk ({ratio:.2}×); server RSS {:.1} → peak {:.1} MiB",
            mb_per_s(total, through),
            mb_per_s(total, disk),
            idle_kib as f64 / 1024.0,
            peak as f64 / 1024.0
        ),
        "report",
    );

    // 2. One 1 GB upload.
    let big: usize = env_or("BENCH_BACKUPS_BIG_BYTES", 1_000_000_000);
    let resource = api.resource(&service, "big").await?;
    let before = super::upload::rss_kib(server.pid());
    let sampler = Sampler::start(server.pid());
    let took = api.upload(&resource, 7, big).await?;
    let peak = sampler.peak().await;
    let growth = peak.saturating_sub(before) as f64 / 1024.0;
    println!(
        "  one {big}-byte upload: {:.0} MB/s; RSS {:.1} → peak {:.1} MiB (+{growth:.1} MiB)",
        mb_per_s(big, took),
        before as f64 / 1024.0,
        peak as f64 / 1024.0
    );
    summary.add(
        &format!("backups: one {big}-byte upload, RSS growth"),
        format!("+{growth:.1} MiB ({:.0} MB/s)", mb_per_s(big, took)),
        "< 50 MB",
    );

    // 3. A retention sweep while uploads go on.
    let expired: usize = env_or("BENCH_BACKUPS_SWEEP", 100_000);
    let groups = 100.min(expired.max(1));
    let per = expired / groups;
    let mut resources = Vec::new();
    for g in 0..groups {
        resources.push(api.resource(&service, &format!("sweep-{g}")).await?);
    }
    let started = Instant::now();
    let mut loaders = tokio::task::JoinSet::new();
    for (g, resource) in resources.iter().enumerate() {
        let (api, resource) = (api.clone(), resource.clone());
        loaders.spawn(async move {
            for n in 0..per {
                api.upload(&resource, (g * per + n) as u64 + 10_000, 64)
                    .await?;
            }
            Ok::<_, anyhow::Error>(())
        });
        if loaders.len() >= 32
            && let Some(done) = loaders.join_next().await
        {
            done??;
        }
    }
    while let Some(done) = loaders.join_next().await {
        done??;
    }
    println!(
        "  {} small backups in {} resources written in {:.0} s",
        per * groups,
        groups,
        started.elapsed().as_secs_f64()
    );
    let steady = api.resource(&service, "steady").await?;
    let mut before = Latencies(Vec::new());
    for n in 0..50 {
        before.0.push(api.upload(&steady, 900_000 + n, 4096).await?);
    }
    // Keep only the newest of each: every other backup expires at once.
    api.call(
        reqwest::Method::PATCH,
        &format!("/services/{service}"),
        Some(json!({"retention": {"keep_last": 1}})),
    )
    .await?;
    let started = Instant::now();
    for resource in &resources {
        api.upload(resource, 990_000, 64).await?;
    }
    let mut during = Latencies(Vec::new());
    let mut n = 0;
    let swept = loop {
        during.0.push(api.upload(&steady, 950_000 + n, 4096).await?);
        n += 1;
        if n % 20 == 0 {
            let mut left = 0;
            for resource in &resources {
                let view = api
                    .call(
                        reqwest::Method::GET,
                        &format!("/resources/{resource}"),
                        None,
                    )
                    .await?;
                left += view["data"]["backups"]
                    .as_u64()
                    .unwrap_or(0)
                    .saturating_sub(1);
            }
            if left == 0 {
                break started.elapsed();
            }
            if started.elapsed() > Duration::from_secs(1800) {
                anyhow::bail!("the sweep had {left} backups left after 30 minutes");
            }
        }
    };
    println!(
        "  retention sweep of {} backups: {:.1} s ({:.0} deleted/s); uploads meanwhile {} (before: {})",
        per * groups,
        swept.as_secs_f64(),
        (per * groups) as f64 / swept.as_secs_f64(),
        during.describe(),
        before.describe()
    );
    summary.add(
        &format!("backups: retention sweep of {} expired backups, uploads meanwhile", per * groups),
        format!(
            "{:.1} s ({:.0}/s); a 4 KiB upload meanwhile p50 {:.1} ms, p99 {:.1} ms (before: p50 {:.1} ms, p99 {:.1} ms); none refused",
            swept.as_secs_f64(),
            (per * groups) as f64 / swept.as_secs_f64(),
            during.percentile(50.0),
            during.percentile(99.0),
            before.percentile(50.0),
            before.percentile(99.0)
        ),
        "report; uploads keep being answered",
    );
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
