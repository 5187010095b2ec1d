//! `scheduler`: the due-index scheduler at scale, on Postgres + Redis, with a real SMTP
//! listener and two `cairn serve --role scheduler` processes (issue 13's benchmark).
//! Parts (all by default; pick with `BENCH_SCHEDULER_PARTS=precision,burst,peers,recurring`):
//! 1. `precision`: 1,000 capsules due at distinct times over 60 s; lateness (delivery email
//!    at the SMTP listener minus the send time); then, idle for 60 s, the CPU the schedulers
//!    use (`/proc/<pid>/stat`) and the queries they make (see [`watch_queries`]).
//! 2. `burst`: 10,000 capsules due at one instant: time to the last release event and to
//!    the last email, their rates, duplicates (release events per capsule, emails per
//!    Message-ID), and the schedulers' CPU while they work through it.
//! 3. `peers`: the same two workloads as no-op jobs on pg-boss and graphile-worker
//!    (`support/peers.rs`), for the ratios in the summary.
//! 4. `recurring`: capsules submitted through `POST /capsules` with a schedule, each firing
//!    every minute (`CAIRN_CAPSULE_MIN_INTERVAL=60`), `count` times; lateness of every
//!    occurrence, and whether each capsule got exactly `count` deliveries. Skipped, saying
//!    so, where the server does not take schedules yet (400).
//!
//! The capsules of parts 1 and 2 are written straight into the event store, already
//! confirmed, through the same decisions the routes make (`decide`): 10,000 confirmations by
//! email would take longer than the burst they prepare. Part 4 goes through the API and the
//! emailed confirmation links, as a user would, since that is what it is to prove.
//!
//! Knobs: `BENCH_SCHED_PRECISION` (1000), `BENCH_SCHED_SPREAD_SECONDS` (60),
//! `BENCH_SCHED_IDLE_SECONDS` (60), `BENCH_SCHED_BURST` (10000), `BENCH_RECURRING_CAPSULES`
//! (10000), `BENCH_RECURRING_COUNT` (10), `BENCH_RECURRING_LEAD_SECONDS` (180); the peers'
//! in `support/peers.rs`.

use std::collections::{HashMap, HashSet};
use std::time::SystemTime;

use anyhow::Context;
use cairn_command::capsules::CapsuleState;
use cairn_command::capsules::decide::{self, Command as CapsuleCommand, Decision, Rules};
use cairn_events::domain::capsule::{self, CapsuleSubmitted, EmailAddress, Party, PersonName};
use cairn_events::{AppendRequest, Effects, EventStore, ExpectedVersion, Metadata};
use chrono::{DateTime, Utc};
use serde_json::json;
use sqlx::Connection;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use super::{
    Arc, Deployment, Duration, Instant, JoinSet, Latencies, Mutex, Server, Summary, Uuid, env_or,
    spawn_server_with_role, wait_for_200,
};

/// One email as the listener saw it: enough to time it and tell it apart.
#[derive(Clone, Debug)]
pub struct Mail {
    /// The envelope recipient.
    pub to: String,
    pub message_id: String,
    /// The capsule id in a `/confirm/<id>` link, if the email has one.
    pub confirm_id: Option<String>,
    /// When its closing `.` arrived.
    pub at: SystemTime,
}

/// A real SMTP listener that keeps only [`Mail`]s, so that 100,000 emails cost little.
#[derive(Clone)]
pub struct MailSink {
    pub url: String,
    mails: Arc<Mutex<Vec<Mail>>>,
}

impl MailSink {
    pub async fn start() -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let sink = MailSink {
            url: format!("smtp://{}", listener.local_addr()?),
            mails: Arc::default(),
        };
        let mails = sink.mails.clone();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let _ = socket.set_nodelay(true);
                tokio::spawn(serve_smtp(socket, mails.clone()));
            }
        });
        Ok(sink)
    }

    /// The emails to recipients whose address starts with `prefix`, in arrival order.
    pub fn to_prefix(&self, prefix: &str) -> Vec<Mail> {
        self.lock()
            .iter()
            .filter(|m| m.to.starts_with(prefix))
            .cloned()
            .collect()
    }

    pub fn count_prefix(&self, prefix: &str) -> usize {
        self.lock()
            .iter()
            .filter(|m| m.to.starts_with(prefix))
            .count()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Mail>> {
        self.mails.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wait until `want` emails went to `prefix…` or `deadline` passes; how many did.
    pub async fn wait_for(&self, prefix: &str, want: usize, deadline: Instant) -> usize {
        loop {
            let have = self.count_prefix(prefix);
            if have >= want || Instant::now() > deadline {
                return have;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

async fn serve_smtp(
    socket: tokio::net::TcpStream,
    mails: Arc<Mutex<Vec<Mail>>>,
) -> std::io::Result<()> {
    let (read, mut write) = socket.into_split();
    let mut lines = BufReader::new(read);
    write.write_all(b"220 sink ESMTP\r\n").await?;
    let mut to = String::new();
    let mut line = String::new();
    loop {
        line.clear();
        if lines.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let verb = line.get(..4).unwrap_or_default().to_ascii_uppercase();
        match verb.as_str() {
            "EHLO" => write.write_all(b"250-sink\r\n250 8BITMIME\r\n").await?,
            "RCPT" => {
                to = line
                    .split_once(':')
                    .map(|(_, a)| a.trim().trim_matches(['<', '>']).to_owned())
                    .unwrap_or_default();
                write.write_all(b"250 ok\r\n").await?;
            }
            "DATA" => {
                write.write_all(b"354 go on\r\n").await?;
                let mut message_id = String::new();
                let mut in_head = true;
                let mut body = String::new();
                loop {
                    line.clear();
                    if lines.read_line(&mut line).await? == 0 {
                        return Ok(());
                    }
                    if line == ".\r\n" {
                        break;
                    }
                    if in_head {
                        if line == "\r\n" {
                            in_head = false;
                        } else if let Some((name, value)) = line.split_once(':')
                            && name.eq_ignore_ascii_case("Message-ID")
                        {
                            message_id = value.trim().to_owned();
                        }
                    } else if body.len() < 64 * 1024 {
                        body.push_str(&line);
                    }
                }
                let at = SystemTime::now();
                // Quoted-printable soft breaks may split the link.
                let body = body.replace("=\r\n", "");
                let confirm_id = body.find("/confirm/").and_then(|start| {
                    let id = body.get(start + 9..start + 45)?;
                    id.chars()
                        .all(|c| c.is_ascii_hexdigit() || c == '-')
                        .then(|| id.to_owned())
                });
                mails.lock().unwrap_or_else(|p| p.into_inner()).push(Mail {
                    to: to.clone(),
                    message_id,
                    confirm_id,
                    at,
                });
                write.write_all(b"250 queued\r\n").await?;
            }
            "QUIT" => {
                write.write_all(b"221 bye\r\n").await?;
                return Ok(());
            }
            _ => write.write_all(b"250 ok\r\n").await?,
        }
    }
}

/// CPU time (user + system) a process has used so far, in seconds.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name (which may hold spaces) in parentheses.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok());
    match (ticks(11), ticks(12)) {
        (Some(user), Some(system)) => (user + system) / clock_ticks(),
        _ => f64::NAN,
    }
}

fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// Total CPU seconds of `pids`.
pub fn cpu_of(pids: &[u32]) -> f64 {
    pids.iter().map(|&pid| cpu_seconds(pid)).sum()
}

/// The local TCP ports of the sockets `pids` hold (their connections to Postgres among
/// them), from `/proc/<pid>/fd` and `/proc/net/tcp{,6}`.
fn client_ports(pids: &[u32]) -> HashSet<i32> {
    let mut inodes = HashSet::new();
    for pid in pids {
        let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for entry in entries.flatten() {
            if let Ok(target) = std::fs::read_link(entry.path())
                && let Some(inode) = target
                    .to_str()
                    .and_then(|t| t.strip_prefix("socket:["))
                    .and_then(|t| t.strip_suffix(']'))
            {
                inodes.insert(inode.to_owned());
            }
        }
    }
    let mut ports = HashSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        for line in std::fs::read_to_string(table)
            .unwrap_or_default()
            .lines()
            .skip(1)
        {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if let (Some(local), Some(inode)) = (fields.get(1), fields.get(9))
                && inodes.contains(*inode)
                && let Some(port) = local
                    .rsplit_once(':')
                    .and_then(|(_, p)| i32::from_str_radix(p, 16).ok())
            {
                ports.insert(port);
            }
        }
    }
    ports
}

/// Whose queries [`watch_queries`] counts.
pub enum Watched {
    /// The connections these processes hold (matched by their client port).
    Processes(Vec<u32>),
    /// Every connection to this database.
    Database(String),
}

/// Queries seen, and the most frequent statements.
pub struct Queries {
    pub count: u64,
    pub statements: Vec<(String, u64)>,
}

impl Queries {
    pub fn describe(&self, seconds: f64) -> String {
        let top: Vec<String> = self
            .statements
            .iter()
            .take(3)
            .map(|(sql, n)| format!("{n}× `{sql}`"))
            .collect();
        format!(
            "{} queries in {seconds:.0} s ({:.1}/min){}",
            self.count,
            self.count as f64 * 60.0 / seconds,
            if top.is_empty() {
                String::new()
            } else {
                format!("; most: {}", top.join(", "))
            }
        )
    }
}

/// A `pg_stat_activity` row: backend pid, client port, database, when its current (or
/// last) statement started, and that statement's start.
type ActivityRow = (
    i32,
    Option<i32>,
    Option<String>,
    Option<DateTime<Utc>>,
    String,
);

/// Count the statements the `watched` connections run for `window`, by sampling
/// `pg_stat_activity` every 5 ms and counting each change of a backend's `query_start`
/// (set when a statement starts). `pg_stat_statements` would count exactly, but it needs
/// `shared_preload_libraries` and a restart of a shared server; `pg_stat_database`
/// counts every connection to the database (the benchmark's own too) and is flushed
/// seconds late. Statements less than 5 ms apart on one connection count once: a lower
/// bound, exact for an idle process's occasional queries.
pub async fn watch_queries(watched: &Watched, window: Duration) -> anyhow::Result<Queries> {
    let mut conn = sqlx::PgConnection::connect(&cairn_events::testing::admin_url()).await?;
    let mut last: HashMap<i32, Option<DateTime<Utc>>> = HashMap::new();
    let mut statements: HashMap<String, u64> = HashMap::new();
    let mut count = 0;
    let mut ports = HashSet::new();
    let mut ports_at: Option<Instant> = None;
    let started = Instant::now();
    let mut first = true;
    while started.elapsed() < window {
        if let Watched::Processes(pids) = watched
            && ports_at.is_none_or(|at| at.elapsed() > Duration::from_secs(1))
        {
            ports = client_ports(pids);
            ports_at = Some(Instant::now());
        }
        let rows: Vec<ActivityRow> = sqlx::query_as(
            "SELECT pid, client_port, datname::text, query_start, left(query, 60)
                 FROM pg_stat_activity
                 WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()",
        )
        .fetch_all(&mut conn)
        .await?;
        for (pid, port, database, query_start, sql) in rows {
            let ours = match watched {
                Watched::Processes(_) => port.is_some_and(|p| ports.contains(&p)),
                Watched::Database(name) => database.as_deref() == Some(name.as_str()),
            };
            if !ours {
                continue;
            }
            let new = match last.insert(pid, query_start) {
                Some(before) => before != query_start,
                // A connection opened during the window: its first statement counts.
                None => !first && query_start.is_some(),
            };
            if new {
                count += 1;
                *statements
                    .entry(sql.split_whitespace().collect::<Vec<_>>().join(" "))
                    .or_default() += 1;
            }
        }
        first = false;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut statements: Vec<(String, u64)> = statements.into_iter().collect();
    statements.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
    Ok(Queries { count, statements })
}

/// CPU (as a share of one core, for all `pids` together) and queries over an idle window.
pub struct Idle {
    pub cpu_percent: f64,
    pub per_process: Vec<f64>,
    pub queries: Queries,
    pub seconds: f64,
}

impl Idle {
    pub async fn measure(pids: &[u32], watched: Watched, window: Duration) -> anyhow::Result<Self> {
        let before: Vec<f64> = pids.iter().map(|&p| cpu_seconds(p)).collect();
        let started = Instant::now();
        let queries = watch_queries(&watched, window).await?;
        let seconds = started.elapsed().as_secs_f64();
        let per_process: Vec<f64> = pids
            .iter()
            .zip(&before)
            .map(|(&p, b)| (cpu_seconds(p) - b) / seconds * 100.0)
            .collect();
        Ok(Idle {
            cpu_percent: per_process.iter().sum(),
            per_process,
            queries,
            seconds,
        })
    }

    pub fn describe(&self) -> String {
        let each: Vec<String> = self
            .per_process
            .iter()
            .map(|p| format!("{p:.3}%"))
            .collect();
        format!(
            "CPU {:.3}% of a core ({}); {}",
            self.cpu_percent,
            each.join(" + "),
            self.queries.describe(self.seconds)
        )
    }
}

/// Cairn on Postgres + Redis: a store the benchmark writes through, scheduler processes
/// (and a command process when the API is needed), emails to a [`MailSink`].
struct Cluster {
    deployment: Deployment,
    env: Vec<(String, String)>,
    store: Arc<dyn EventStore>,
    sink: MailSink,
    schedulers: Vec<Server>,
    command: Option<Server>,
}

impl Cluster {
    async fn start(
        schedulers: usize,
        command: bool,
        extra: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let sink = MailSink::start().await?;
        let deployment = Deployment::fresh().await;
        let mut env = deployment.env.clone();
        env.push(("CAIRN_SMTP_URL".into(), sink.url.clone()));
        env.push(("CAIRN_CAPSULE_LIMIT_PER_CLIENT".into(), "0".into()));
        env.push(("CAIRN_CAPSULE_LIMIT_PER_SENDER".into(), "0".into()));
        for (k, v) in extra {
            env.push(((*k).into(), (*v).into()));
        }
        // Opening the store migrates the database before any process starts.
        let store: Arc<dyn EventStore> =
            cairn_events::open_postgres(&deployment.database_url).await?;
        let client = reqwest::Client::new();
        let mut cluster = Cluster {
            deployment,
            env,
            store,
            sink,
            schedulers: Vec::new(),
            command: None,
        };
        if command {
            let server = spawn_server_with_role(&cluster.env, "command")?;
            wait_for_200(
                &client,
                &format!("{}/health/live", server.base),
                Instant::now(),
            )
            .await;
            cluster.command = Some(server);
        }
        for _ in 0..schedulers {
            let server = spawn_server_with_role(&cluster.env, "scheduler")?;
            wait_for_200(
                &client,
                &format!("{}/health/live", server.base),
                Instant::now(),
            )
            .await;
            cluster.schedulers.push(server);
        }
        Ok(cluster)
    }

    fn scheduler_pids(&self) -> Vec<u32> {
        self.schedulers.iter().map(Server::pid).collect()
    }

    async fn stop(self) {
        drop(self.schedulers);
        drop(self.command);
        drop(self.store);
        self.deployment.remove().await;
    }

    /// Release events of the capsules in `streams`: per stream, when each was recorded and
    /// its payload.
    async fn releases(
        &self,
        streams: &HashSet<String>,
    ) -> anyhow::Result<HashMap<String, Vec<(DateTime<Utc>, serde_json::Value)>>> {
        let mut conn = sqlx::PgConnection::connect(&self.deployment.database_url).await?;
        let rows: Vec<(String, DateTime<Utc>, serde_json::Value)> = sqlx::query_as(
            "SELECT stream_id, recorded_at, payload FROM events
             WHERE event_type = 'capsule.released' ORDER BY position",
        )
        .fetch_all(&mut conn)
        .await?;
        let mut by_stream: HashMap<String, Vec<(DateTime<Utc>, serde_json::Value)>> =
            HashMap::new();
        for (stream, at, payload) in rows {
            if streams.contains(&stream) {
                by_stream.entry(stream).or_default().push((at, payload));
            }
        }
        Ok(by_stream)
    }
}

/// A capsule as submitted and confirmed at `now`, due at `send_at`: both events in one
/// append, with the due items the two decisions leave (the release) and none of their
/// emails.
fn confirmed_capsule(
    id: Uuid,
    recipient: &str,
    send_at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> anyhow::Result<AppendRequest> {
    let party = |email: &str, name: &str| -> anyhow::Result<Party> {
        Ok(Party {
            email: EmailAddress::parse(email).map_err(|e| anyhow::anyhow!("{e:?}"))?,
            name: PersonName::parse(name).map_err(|e| anyhow::anyhow!("{e:?}"))?,
        })
    };
    let submitted = CapsuleSubmitted {
        owner: None,
        capsule_id: id,
        sender: party("sender@example.com", "Bench")?,
        recipient: party(recipient, "Reader")?,
        send_at,
        text: "a capsule for the scheduler benchmark".into(),
        attachment: None,
        schedule: None,
    };
    let rules = Rules::default();
    let submit = CapsuleCommand::Submit {
        submitted: submitted.clone(),
        sender_blocked: false,
    };
    let Decision::Append(submit) = decide::decide(None, &submit, now, &rules)? else {
        anyhow::bail!("the submission was refused");
    };
    let state = CapsuleState::submitted(submitted, now);
    let Decision::Append(confirm) =
        decide::decide(Some(&state), &CapsuleCommand::Confirm, now, &rules)?
    else {
        anyhow::bail!("the confirmation was refused");
    };
    let schedule = submit
        .schedule
        .into_iter()
        .chain(confirm.schedule)
        .filter(|item| !confirm.unschedule.contains(&item.key))
        .collect();
    let metadata = Metadata {
        actor: Some("sender".into()),
        correlation_id: Some(Uuid::now_v7()),
        causation_id: None,
    };
    Ok(AppendRequest::new(
        capsule::stream_id(id),
        ExpectedVersion::NoStream,
        vec![
            submit.event.to_new(metadata.clone(), now),
            confirm.event.to_new(metadata, now),
        ],
    )
    .with_effects(Effects {
        schedule,
        unschedule: Vec::new(),
        outbox: Vec::new(),
    }))
}

/// Write confirmed capsules (recipient, send time), many appends in flight (they
/// group-commit); their stream ids, by recipient.
async fn write_capsules(
    store: &Arc<dyn EventStore>,
    capsules: Vec<(String, DateTime<Utc>)>,
) -> anyhow::Result<HashMap<String, String>> {
    let now = Utc::now();
    let mut streams = HashMap::new();
    let mut set = JoinSet::new();
    for (recipient, send_at) in capsules {
        let id = Uuid::now_v7();
        streams.insert(recipient.clone(), capsule::stream_id(id));
        let request = confirmed_capsule(id, &recipient, send_at, now)?;
        let store = store.clone();
        set.spawn(async move { store.append(request).await });
        if set.len() >= 512
            && let Some(done) = set.join_next().await
        {
            done??;
        }
    }
    while let Some(done) = set.join_next().await {
        done??;
    }
    Ok(streams)
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn since(at: SystemTime, from: SystemTime) -> Duration {
    at.duration_since(from).unwrap_or_default()
}

/// What the summary compares the peers with.
#[derive(Default)]
pub struct CairnFigures {
    pub precision_p99_ms: Option<f64>,
    pub precision_p50_ms: Option<f64>,
    pub idle_cpu_percent: Option<f64>,
    pub idle_queries_per_min: Option<f64>,
    /// Seconds from the burst's due instant to the last release / email.
    pub burst_last_release_s: Option<f64>,
    pub burst_last_email_s: Option<f64>,
}

pub async fn bench_scheduler(summary: &mut Summary) -> anyhow::Result<()> {
    let parts = std::env::var("BENCH_SCHEDULER_PARTS")
        .unwrap_or_else(|_| "precision,burst,peers,recurring".into());
    let wants = |p: &str| parts.split(',').any(|o| o.trim() == p);
    let idle = Duration::from_secs(env_or("BENCH_SCHED_IDLE_SECONDS", 60));
    let mut figures = CairnFigures::default();
    if wants("precision") || wants("burst") {
        let cluster = Cluster::start(2, false, &[]).await?;
        let outcome = async {
            if wants("precision") {
                precision(summary, &cluster, idle, &mut figures).await?;
            }
            if wants("burst") {
                burst(summary, &cluster, &mut figures).await?;
            }
            anyhow::Ok(())
        }
        .await;
        cluster.stop().await;
        outcome?;
    }
    if wants("peers") {
        super::peers::bench_peers(summary, &figures, idle).await?;
    }
    if wants("recurring") {
        recurring(summary).await?;
    }
    Ok(())
}

/// Part 1: lateness of capsules due at distinct times, then the schedulers idle.
async fn precision(
    summary: &mut Summary,
    cluster: &Cluster,
    idle: Duration,
    figures: &mut CairnFigures,
) -> anyhow::Result<()> {
    let count: usize = env_or("BENCH_SCHED_PRECISION", 1000);
    let spread = Duration::from_secs(env_or("BENCH_SCHED_SPREAD_SECONDS", 60));
    println!(
        "\n== scheduler precision: {count} capsules due over {} s, two scheduler processes; then idle {} s ==",
        spread.as_secs(),
        idle.as_secs()
    );
    let started = Instant::now();
    let first_due = Utc::now() + chrono::Duration::seconds(10);
    let step = spread / count.max(1) as u32;
    let due_at =
        |i: usize| first_due + chrono::Duration::from_std(step * i as u32).unwrap_or_default();
    let capsules = (0..count)
        .map(|i| (format!("p{i}@example.com"), due_at(i)))
        .collect::<Vec<_>>();
    let due_of: HashMap<String, DateTime<Utc>> = capsules.iter().cloned().collect();
    write_capsules(&cluster.store, capsules).await?;
    println!(
        "  written in {:.1} s; the first is due in {:.1} s",
        started.elapsed().as_secs_f64(),
        (first_due - Utc::now()).num_milliseconds() as f64 / 1000.0
    );
    let deadline = Instant::now() + spread + Duration::from_secs(180);
    cluster.sink.wait_for("p", count, deadline).await;
    let mut late = Latencies(Vec::new());
    let mut early = 0;
    let mut seen = HashSet::new();
    let mut duplicates = 0;
    for mail in cluster.sink.to_prefix("p") {
        if !seen.insert(mail.message_id.clone()) {
            duplicates += 1;
            continue;
        }
        if let Some(due) = due_of.get(&mail.to) {
            match mail.at.duration_since(SystemTime::from(*due)) {
                Ok(lateness) => late.0.push(lateness),
                Err(_) => early += 1,
            }
        }
    }
    let delivered = late.0.len();
    figures.precision_p50_ms = Some(late.percentile(50.0));
    figures.precision_p99_ms = Some(late.percentile(99.0));
    summary.add(
        &format!("scheduler precision: lateness (SMTP arrival - send time), {count} due over {} s, 2 schedulers", spread.as_secs()),
        format!(
            "{}; {delivered} of {count} delivered, {early} early, {duplicates} duplicate emails",
            late.describe()
        ),
        "p99 < 10 ms",
    );
    println!(
        "  part took {:.0} s before the idle window",
        started.elapsed().as_secs_f64()
    );

    // Let the last sends settle, then watch the idle schedulers.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let pids = cluster.scheduler_pids();
    let measured = Idle::measure(&pids, Watched::Processes(pids.clone()), idle).await?;
    figures.idle_cpu_percent = Some(measured.cpu_percent);
    figures.idle_queries_per_min = Some(measured.queries.count as f64 * 60.0 / measured.seconds);
    summary.add(
        &format!(
            "scheduler idle for {} s: 2 scheduler processes",
            idle.as_secs()
        ),
        measured.describe(),
        "< 1% of a core; <= 1 query/min",
    );
    Ok(())
}

/// Part 2: many capsules due at one instant.
async fn burst(
    summary: &mut Summary,
    cluster: &Cluster,
    figures: &mut CairnFigures,
) -> anyhow::Result<()> {
    let count: usize = env_or("BENCH_SCHED_BURST", 10_000);
    println!(
        "\n== scheduler burst: {count} capsules due at one instant, two scheduler processes =="
    );
    let started = Instant::now();
    let lead = chrono::Duration::seconds(env_or("BENCH_SCHED_BURST_LEAD_SECONDS", 20));
    let due = Utc::now() + lead;
    let capsules = (0..count)
        .map(|i| (format!("b{i}@example.com"), due))
        .collect::<Vec<_>>();
    let streams: HashSet<String> = write_capsules(&cluster.store, capsules)
        .await?
        .into_values()
        .collect();
    let written = started.elapsed();
    println!(
        "  written in {:.1} s ({:.0} capsules/s); due in {:.1} s",
        written.as_secs_f64(),
        count as f64 / written.as_secs_f64(),
        (due - Utc::now()).num_milliseconds() as f64 / 1000.0
    );
    anyhow::ensure!(
        Utc::now() < due,
        "writing the capsules took past their due time; raise BENCH_SCHED_BURST_LEAD_SECONDS"
    );
    let pids = cluster.scheduler_pids();
    tokio::time::sleep((due - Utc::now()).to_std().unwrap_or_default()).await;
    let cpu_before = cpu_of(&pids);
    let at_due = Instant::now();
    let delivered = cluster
        .sink
        .wait_for("b", count, Instant::now() + Duration::from_secs(900))
        .await;
    let cpu = cpu_of(&pids) - cpu_before;
    let busy = at_due.elapsed().as_secs_f64();
    let due_time = SystemTime::from(due);

    let mails = cluster.sink.to_prefix("b");
    let mut per_id: HashMap<&str, usize> = HashMap::new();
    for mail in &mails {
        *per_id.entry(&mail.message_id).or_default() += 1;
    }
    let email_duplicates: usize = per_id.values().map(|n| n - 1).sum();
    let last_email = mails
        .iter()
        .map(|m| since(m.at, due_time))
        .max()
        .unwrap_or_default();
    let first_email = mails
        .iter()
        .map(|m| since(m.at, due_time))
        .min()
        .unwrap_or_default();

    let releases = cluster.releases(&streams).await?;
    let release_count: usize = releases.values().map(Vec::len).sum();
    let release_duplicates: usize = releases.values().map(|r| r.len() - 1).sum();
    let last_release = releases
        .values()
        .flatten()
        .map(|(at, _)| (*at - due).to_std().unwrap_or_default())
        .max()
        .unwrap_or_default();
    figures.burst_last_release_s = Some(last_release.as_secs_f64());
    figures.burst_last_email_s = Some(last_email.as_secs_f64());
    summary.add(
        &format!("scheduler burst: {count} capsules due at one instant, 2 schedulers: releases"),
        format!(
            "{release_count} release events, the last {:.2} s after the due time ({:.0} releases/s); {release_duplicates} duplicated",
            last_release.as_secs_f64(),
            release_count as f64 / last_release.as_secs_f64()
        ),
        ">= 5,000 releases/s, 0 duplicates",
    );
    summary.add(
        "scheduler burst: delivery emails",
        format!(
            "{delivered} of {count}, the first {:.0} ms and the last {:.2} s after the due time ({:.0} emails/s); {email_duplicates} sent twice (same Message-ID); schedulers used {:.2} cores meanwhile",
            millis(first_email),
            last_email.as_secs_f64(),
            delivered as f64 / last_email.as_secs_f64(),
            cpu / busy
        ),
        "report; 0 duplicates",
    );
    Ok(())
}

/// The first `count` minutes of an every-minute schedule starting `lead` from now, as a
/// cron expression: `second` past each of minutes m..m+count-1 of every hour (so the
/// first occurrence comes after every capsule is confirmed), ended by `count`.
fn minute_range_cron(second: u32, start: DateTime<Utc>, count: u32) -> String {
    use chrono::Timelike;
    let first = start.minute();
    let last = (first + count.max(1) - 1) % 60;
    if last >= first {
        format!("{second} {first}-{last} * * * *")
    } else {
        format!("{second} {first}-59,0-{last} * * * *")
    }
}

/// Part 4: recurring capsules through the API.
async fn recurring(summary: &mut Summary) -> anyhow::Result<()> {
    let capsules: usize = env_or("BENCH_RECURRING_CAPSULES", 10_000);
    let count: u32 = env_or("BENCH_RECURRING_COUNT", 10);
    let lead = chrono::Duration::seconds(env_or("BENCH_RECURRING_LEAD_SECONDS", 180));
    println!(
        "\n== scheduler recurring: {capsules} capsules each every minute, {count} times, two scheduler processes =="
    );
    let started = Instant::now();
    let cluster = Cluster::start(2, true, &[("CAIRN_CAPSULE_MIN_INTERVAL", "60")]).await?;
    let outcome = recurring_on(summary, &cluster, capsules, count, lead).await;
    cluster.stop().await;
    println!("  part took {:.0} s", started.elapsed().as_secs_f64());
    outcome
}

async fn recurring_on(
    summary: &mut Summary,
    cluster: &Cluster,
    capsules: usize,
    count: u32,
    lead: chrono::Duration,
) -> anyhow::Result<()> {
    let base = cluster
        .command
        .as_ref()
        .map(|s| s.base.clone())
        .context("the command process")?;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()?;
    // Start on a whole minute at least `lead` away; seconds spread the capsules over it.
    let start = Utc::now() + lead + chrono::Duration::seconds(60);
    let body = |i: usize| {
        json!({
            "sender": {"email": format!("s{i}@example.com"), "name": "Bench"},
            "recipient": {"email": format!("r{i}@example.com"), "name": format!("r{i}")},
            "schedule": {
                "cron": minute_range_cron((i % 60) as u32, start, count),
                "time_zone": "UTC",
                "count": count,
            },
            "text": "a recurring capsule for the scheduler benchmark",
        })
    };
    let probe = client
        .post(format!("{base}/capsules"))
        .json(&body(0))
        .send()
        .await?;
    let status = probe.status();
    if status == 400 {
        let text = probe.text().await.unwrap_or_default();
        println!("  SKIPPED: the server does not take a schedule yet (400: {text})");
        summary.add(
            "scheduler recurring",
            format!("skipped: POST /capsules answered 400 to a schedule ({text})"),
            "report; exactly the count each",
        );
        return Ok(());
    }
    anyhow::ensure!(status == 202, "POST /capsules with a schedule: {status}");

    let submitting = Instant::now();
    let mut tasks = JoinSet::new();
    let per_task = capsules.div_ceil(32).max(1);
    for chunk in (1..capsules).collect::<Vec<_>>().chunks(per_task) {
        let (client, base, chunk) = (client.clone(), base.clone(), chunk.to_vec());
        let bodies: Vec<serde_json::Value> = chunk.iter().map(|&i| body(i)).collect();
        tasks.spawn(async move {
            for body in bodies {
                let response = client
                    .post(format!("{base}/capsules"))
                    .json(&body)
                    .send()
                    .await?;
                anyhow::ensure!(response.status() == 202, "submit: {}", response.status());
            }
            Ok(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    println!("  submitted in {:.1} s", submitting.elapsed().as_secs_f64());
    // The confirmation emails carry the ids.
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut ids: HashMap<usize, String> = HashMap::new();
    while ids.len() < capsules {
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {} confirmation emails arrived",
            ids.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        for mail in cluster.sink.to_prefix("s") {
            if let (Some(id), Some(i)) = (
                mail.confirm_id,
                mail.to
                    .strip_prefix('s')
                    .and_then(|t| t.split_once('@'))
                    .and_then(|(i, _)| i.parse().ok()),
            ) {
                ids.entry(i).or_insert(id);
            }
        }
    }
    let all: Vec<String> = ids.values().cloned().collect();
    for chunk in all.chunks(per_task) {
        let (client, base, chunk) = (client.clone(), base.clone(), chunk.to_vec());
        tasks.spawn(async move {
            for id in chunk {
                let response = client
                    .get(format!("{base}/api/confirm?id={id}"))
                    .send()
                    .await?;
                anyhow::ensure!(response.status() == 200, "confirm: {}", response.status());
            }
            Ok(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    println!(
        "  submitted and confirmed in {:.1} s; the first occurrence is in {:.0} s",
        submitting.elapsed().as_secs_f64(),
        (start - Utc::now()).num_seconds()
    );
    anyhow::ensure!(
        Utc::now() < start - chrono::Duration::seconds(60),
        "confirming took past the first occurrence; raise BENCH_RECURRING_LEAD_SECONDS"
    );

    let want = capsules * count as usize;
    let deadline = Instant::now()
        + (start - Utc::now()).to_std().unwrap_or_default()
        + Duration::from_secs(60 * u64::from(count) + 300);
    cluster.sink.wait_for("r", want, deadline).await;
    // A little longer, for any occurrence past the count.
    tokio::time::sleep(Duration::from_secs(5)).await;

    let streams: HashMap<String, usize> = ids
        .iter()
        .filter_map(|(i, id)| Some((capsule::stream_id(Uuid::parse_str(id).ok()?), *i)))
        .collect();
    let stream_set: HashSet<String> = streams.keys().cloned().collect();
    let releases = cluster.releases(&stream_set).await?;
    // Per capsule: the scheduled times of its occurrences, in order.
    let mut scheduled: HashMap<usize, Vec<Option<DateTime<Utc>>>> = HashMap::new();
    for (stream, events) in releases {
        if let Some(&i) = streams.get(&stream) {
            let mut times: Vec<(u64, Option<DateTime<Utc>>)> = events
                .iter()
                .map(|(_, payload)| {
                    let occurrence = payload["occurrence"].as_u64().unwrap_or(0);
                    let at = payload["scheduled_at"]
                        .as_str()
                        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
                        .map(|t| t.with_timezone(&Utc));
                    (occurrence, at)
                })
                .collect();
            times.sort_by_key(|(n, _)| *n);
            scheduled.insert(i, times.into_iter().map(|(_, at)| at).collect());
        }
    }
    let mut deliveries: HashMap<usize, Vec<Mail>> = HashMap::new();
    for mail in cluster.sink.to_prefix("r") {
        if let Some(i) = mail
            .to
            .strip_prefix('r')
            .and_then(|t| t.split_once('@'))
            .and_then(|(i, _)| i.parse::<usize>().ok())
        {
            deliveries.entry(i).or_default().push(mail);
        }
    }
    let mut late = Latencies(Vec::new());
    let (mut exact, mut early, mut duplicates) = (0, 0, 0);
    for i in 0..capsules {
        let mails = deliveries.remove(&i).unwrap_or_default();
        let distinct: HashSet<&str> = mails.iter().map(|m| m.message_id.as_str()).collect();
        duplicates += mails.len() - distinct.len();
        if distinct.len() == count as usize {
            exact += 1;
        }
        let times = scheduled.get(&i).cloned().unwrap_or_default();
        for (k, mail) in mails.iter().enumerate() {
            // The occurrence's scheduled time from its release event; failing that, the
            // latest second `i % 60` of a minute before the arrival.
            let due = times
                .get(k)
                .copied()
                .flatten()
                .map(SystemTime::from)
                .unwrap_or_else(|| {
                    let secs = mail
                        .at
                        .duration_since(SystemTime::UNIX_EPOCH)
                        .unwrap_or_default()
                        .as_secs();
                    let mut due = secs - secs % 60 + (i % 60) as u64;
                    if due > secs {
                        due -= 60;
                    }
                    SystemTime::UNIX_EPOCH + Duration::from_secs(due)
                });
            match mail.at.duration_since(due) {
                Ok(lateness) => late.0.push(lateness),
                Err(_) => early += 1,
            }
        }
    }
    summary.add(
        &format!("scheduler recurring: {capsules} capsules every minute, {count} times, 2 schedulers"),
        format!(
            "lateness {}; {exact} of {capsules} got exactly {count} deliveries, {early} early, {duplicates} duplicate emails",
            late.describe()
        ),
        "report; exactly the count each",
    );
    Ok(())
}
