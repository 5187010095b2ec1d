//! `capsules`: time capsules on Postgres + Redis, emails to a real SMTP listener.
//! 1. Release lateness: 1,000 capsules confirmed ahead of time and due over 60 s; for each,
//!    the time its delivery email reached the SMTP listener minus its send time.
//! 2. Submission rate: `POST /api/submit/text` from 32 connections.

use std::collections::HashMap;
use std::time::SystemTime;

use chrono::{DateTime, Utc};
use serde_json::json;

use super::{
    Arc, AtomicBool, AtomicU64, Deployment, Duration, Instant, JoinSet, Latencies, Ordering,
    Summary,
};
use super::{env_or, spawn_server, wait_for_200};

#[path = "../../tests/api/smtp.rs"]
#[allow(dead_code, clippy::unwrap_used)]
mod smtp;

const DUE: usize = 1000;

fn capsule(i: usize, send_at: DateTime<Utc>) -> serde_json::Value {
    json!({
        "senderEmail": format!("sender{i}@example.com"),
        "senderName": "Bench",
        "recipientEmail": format!("recipient{i}@example.com"),
        "recipientName": format!("r{i}"),
        "sendTime": send_at.timestamp_millis(),
        "text": "a capsule for the benchmark",
    })
}

/// The capsule id in the confirm link of a confirmation email (deliveries are told apart
/// by their recipient).
fn confirm_id(email: &smtp::Received) -> Option<String> {
    let text = email.decoded();
    let start = text.find("/confirm/")? + "/confirm/".len();
    text.get(start..start + 36).map(str::to_owned)
}

pub async fn bench_capsules(summary: &mut Summary) -> anyhow::Result<()> {
    let seconds: u64 = env_or("BENCH_CAPSULE_SECONDS", 10);
    println!(
        "\n== capsules: release lateness of {DUE} capsules due over 60 s; submissions from 32 connections for {seconds} s =="
    );
    let sink = smtp::SmtpSink::start().await;
    let deployment = Deployment::fresh().await;
    let mut env = deployment.env.clone();
    env.push(("CAIRN_SMTP_URL".into(), sink.url.clone()));
    env.push(("CAIRN_CAPSULE_LIMIT_PER_CLIENT".into(), "0".into()));
    env.push(("CAIRN_CAPSULE_LIMIT_PER_SENDER".into(), "0".into()));
    let server = spawn_server(&env)?;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()?;
    wait_for_200(
        &client,
        &format!("{}/health/live", server.base),
        Instant::now(),
    )
    .await;

    // Submit and confirm them all well ahead of the first due time.
    let first_due = Utc::now() + chrono::Duration::seconds(60);
    let due_at = move |i: usize| first_due + chrono::Duration::milliseconds(i as i64 * 60);
    let mut tasks = JoinSet::new();
    for chunk in (0..DUE).collect::<Vec<_>>().chunks(DUE / 16) {
        let (client, base, chunk) = (client.clone(), server.base.clone(), chunk.to_vec());
        tasks.spawn(async move {
            for i in chunk {
                let response = client
                    .post(format!("{base}/api/submit/text"))
                    .json(&capsule(i, due_at(i)))
                    .send()
                    .await?;
                anyhow::ensure!(response.status() == 200, "submit: {}", response.status());
            }
            Ok::<_, anyhow::Error>(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    // The confirmation emails name the capsule (`… for r<i>`) and carry its id.
    let mut due_of: HashMap<String, SystemTime> = HashMap::new();
    let mut ids: std::collections::HashSet<String> = std::collections::HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(50);
    while due_of.len() < DUE {
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {} confirmation emails arrived",
            due_of.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        for email in sink.received() {
            let index = email.header("Subject").and_then(|s| {
                s.rsplit_once(" for r")
                    .and_then(|(_, i)| i.parse::<usize>().ok())
            });
            let (Some(i), Some(id)) = (index, confirm_id(&email)) else {
                continue;
            };
            ids.insert(id);
            due_of.insert(format!("recipient{i}@example.com"), due_at(i).into());
        }
    }
    let ids: Vec<String> = ids.into_iter().collect();
    for chunk in ids.chunks(DUE / 16) {
        let (client, base, chunk) = (client.clone(), server.base.clone(), chunk.to_vec());
        tasks.spawn(async move {
            for id in chunk {
                let response = client
                    .get(format!("{base}/api/confirm?id={id}"))
                    .send()
                    .await?;
                anyhow::ensure!(response.status() == 200, "confirm: {}", response.status());
            }
            Ok::<_, anyhow::Error>(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    anyhow::ensure!(
        Utc::now() < first_due,
        "confirming took past the first due time"
    );
    println!(
        "  {DUE} capsules submitted and confirmed; the first is due in {:.1} s",
        (first_due - Utc::now()).num_milliseconds() as f64 / 1000.0
    );

    // Wait for every delivery.
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut late = Latencies(Vec::new());
    loop {
        let delivered: Vec<(String, SystemTime)> = sink
            .received()
            .into_iter()
            .filter(|m| {
                m.header("Subject")
                    .is_some_and(|s| s.contains("A time capsule from"))
            })
            .map(|m| (m.to, m.at))
            .collect();
        if delivered.len() >= DUE || Instant::now() > deadline {
            let mut early = 0;
            for (recipient, at) in delivered {
                if let Some(due) = due_of.get(&recipient) {
                    match at.duration_since(*due) {
                        Ok(lateness) => late.0.push(lateness),
                        Err(_) => early += 1,
                    }
                }
            }
            anyhow::ensure!(
                early == 0,
                "{early} capsules were delivered before their time"
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let delivered = late.0.len();
    summary.add(
        &format!(
            "capsule release lateness (SMTP arrival - send time), {DUE} due over 60 s, Postgres"
        ),
        format!("{}; {delivered} of {DUE} delivered", late.describe()),
        "p99 < 50 ms",
    );

    // Submission rate from 32 connections.
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut workers = JoinSet::new();
    for c in 0..32_usize {
        let (client, base, stop, count) = (
            client.clone(),
            server.base.clone(),
            stop.clone(),
            count.clone(),
        );
        workers.spawn(async move {
            let mut n = 0;
            let mut latencies = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let body = capsule(
                    10_000 + c * 1_000_000 + n,
                    Utc::now() + chrono::Duration::days(30),
                );
                let sent = Instant::now();
                let response = client
                    .post(format!("{base}/api/submit/text"))
                    .json(&body)
                    .send()
                    .await?;
                anyhow::ensure!(response.status() == 200, "submit: {}", response.status());
                latencies.push(sent.elapsed());
                count.fetch_add(1, Ordering::Relaxed);
                n += 1;
            }
            Ok::<_, anyhow::Error>(latencies)
        });
    }
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut latencies = Latencies(Vec::new());
    while let Some(done) = workers.join_next().await {
        latencies.0.extend(done??);
    }
    let took = started.elapsed().as_secs_f64();
    let submitted = count.load(Ordering::Relaxed);
    summary.add(
        "POST /api/submit/text, 32 connections",
        format!(
            "{:.0} capsules/s; {}",
            submitted as f64 / took,
            latencies.describe()
        ),
        "report",
    );
    drop(server);
    deployment.remove().await;
    Ok(())
}
