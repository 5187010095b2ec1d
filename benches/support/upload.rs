//! `upload`: a 200 MB file capsule on the embedded default, streamed up and down through
//! `cairn serve`, with the server's resident memory sampled every 5 ms throughout. The
//! baseline is the same bytes written to (and read from) a file in the same directory by
//! this process: what the disk allows.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures_util::StreamExt;
use reqwest::multipart::{Form, Part};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{Duration, Instant, Summary, spawn_server, temp_dir, wait_for_200};

const FILE_BYTES: usize = 199_999_999;
const CHUNK: usize = 64 * 1024;

pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Samples the resident memory of `pid` until dropped; the peak in KiB.
pub struct Sampler {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<u64>,
}

impl Sampler {
    pub fn start(pid: u32) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let mut peak = 0;
            while !flag.load(Ordering::Relaxed) {
                peak = peak.max(rss_kib(pid));
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            peak.max(rss_kib(pid))
        });
        Sampler { stop, task }
    }

    pub async fn peak(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap_or(0)
    }
}

/// The file, generated chunk by chunk (never whole in this process either).
fn file_stream() -> impl futures_util::Stream<Item = Result<Vec<u8>, std::io::Error>> {
    futures_util::stream::iter((0..FILE_BYTES.div_ceil(CHUNK)).map(|i| {
        let len = (FILE_BYTES - i * CHUNK).min(CHUNK);
        Ok((0..len).map(|j| ((i * CHUNK + j) % 251) as u8).collect())
    }))
}

fn mb_per_s(bytes: usize, took: Duration) -> f64 {
    bytes as f64 / 1e6 / took.as_secs_f64()
}

pub async fn bench_upload(summary: &mut Summary) -> anyhow::Result<()> {
    println!("\n== upload: a {FILE_BYTES}-byte file capsule, embedded, up and down ==");
    let dir = temp_dir("upload");
    std::fs::create_dir_all(&dir)?;
    let env = vec![
        ("CAIRN_DATA_DIR".to_owned(), dir.display().to_string()),
        ("CAIRN_CAPSULE_LIMIT_PER_CLIENT".to_owned(), "0".to_owned()),
    ];
    let server = spawn_server(&env)?;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(600))
        .build()?;
    wait_for_200(
        &client,
        &format!("{}/health/live", server.base),
        Instant::now(),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = rss_kib(server.pid());

    // Up: the Chronoria form with the file first, its length not given.
    let send_time = (chrono::Utc::now() + chrono::Duration::days(1)).timestamp_millis();
    let form = Form::new()
        .part(
            "FormFile",
            Part::stream(reqwest::Body::wrap_stream(file_stream())).file_name("big.bin"),
        )
        .text("senderEmail", "ada@example.com")
        .text("senderName", "Ada")
        .text("recipientEmail", "grace@example.com")
        .text("recipientName", "Grace")
        .text("sendTime", send_time.to_string())
        .text("text", "")
        .text("textLocation", "After");
    let sampler = Sampler::start(server.pid());
    let started = Instant::now();
    let response = client
        .post(format!("{}/api/submit/file", server.base))
        .multipart(form)
        .send()
        .await?;
    let up = started.elapsed();
    anyhow::ensure!(response.status() == 200, "upload: {}", response.status());
    let up_peak = sampler.peak().await;

    // The baseline: the same bytes to a file on the same disk, from this process.
    let copy = dir.join("baseline.bin");
    let started = Instant::now();
    let mut out = tokio::fs::File::create(&copy).await?;
    let mut chunks = std::pin::pin!(file_stream());
    while let Some(chunk) = chunks.next().await {
        out.write_all(&chunk?).await?;
    }
    out.sync_data().await?;
    let disk_up = started.elapsed();

    // Down: confirm (the id is in the `.eml` the embedded default writes), ask for the
    // link, stream the file back.
    let id = confirm_id(&dir).await?;
    let confirmed = client
        .get(format!("{}/api/confirm?id={id}", server.base))
        .send()
        .await?;
    anyhow::ensure!(confirmed.status() == 200, "confirm: {}", confirmed.status());
    let link = client
        .get(format!(
            "{}/api/downloadlink?id={id}&recipientEmail=grace@example.com",
            server.base
        ))
        .send()
        .await?
        .text()
        .await?;
    let link = link.replace("http://127.0.0.1:8080", &server.base);
    let sampler = Sampler::start(server.pid());
    let started = Instant::now();
    let mut body = client.get(&link).send().await?.bytes_stream();
    let mut received = 0;
    while let Some(chunk) = body.next().await {
        received += chunk?.len();
    }
    let down = started.elapsed();
    let down_peak = sampler.peak().await;
    anyhow::ensure!(received == FILE_BYTES, "downloaded {received} bytes");

    let started = Instant::now();
    let mut file = tokio::fs::File::open(&copy).await?;
    let mut buf = vec![0; CHUNK];
    while file.read(&mut buf).await? > 0 {}
    let disk_down = started.elapsed();

    let grew = |peak: u64| peak.saturating_sub(before) as f64 / 1024.0;
    summary.add(
        "200 MB upload: server RSS growth (peak − idle)",
        format!(
            "{:.1} MiB (idle {:.1} MiB, peak {:.1} MiB)",
            grew(up_peak),
            before as f64 / 1024.0,
            up_peak as f64 / 1024.0
        ),
        "≤ ~20 MB",
    );
    summary.add(
        "200 MB download: server RSS growth",
        format!("{:.1} MiB", grew(down_peak)),
        "",
    );
    summary.add(
        "200 MB upload through cairn vs. the same bytes to disk",
        format!(
            "{:.0} MB/s vs {:.0} MB/s ({:.2}×)",
            mb_per_s(FILE_BYTES, up),
            mb_per_s(FILE_BYTES, disk_up),
            disk_up.as_secs_f64() / up.as_secs_f64()
        ),
        "report",
    );
    summary.add(
        "200 MB download through cairn vs. reading it from disk",
        format!(
            "{:.0} MB/s vs {:.0} MB/s ({:.2}×)",
            mb_per_s(FILE_BYTES, down),
            mb_per_s(FILE_BYTES, disk_down),
            disk_down.as_secs_f64() / down.as_secs_f64()
        ),
        "report",
    );
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// The capsule id in the confirmation email the embedded default wrote to `outbox/`.
async fn confirm_id(dir: &std::path::Path) -> anyhow::Result<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        for entry in std::fs::read_dir(dir.join("outbox")).into_iter().flatten() {
            let text = std::fs::read_to_string(entry?.path()).unwrap_or_default();
            let text = text.replace("=\r\n", "").replace("=\n", "");
            if let Some(at) = text.find("/confirm/") {
                let start = at + "/confirm/".len();
                if let Some(id) = text.get(start..start + 36) {
                    return Ok(id.to_owned());
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!("no confirmation email in {}", dir.join("outbox").display())
}
