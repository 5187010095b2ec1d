//! `trends`: `BENCH_TREND_MESSAGES` (10,000,000) messages over the last 60 days, hashtags
//! drawn from a Zipf distribution over 10,000 tags (one to three per message), posted by
//! 100,000 users. The events are written straight into a fresh Postgres event log (COPY),
//! then a `cairn serve --role projector` with `CAIRN_PROJECTIONS=trends` projects them into
//! Redis through the real projection code. Then `GET /trend` and `GET /trends/hashtags`
//! over HTTP, and the same trend questions as SQL `GROUP BY` over a (tag, created_at) table
//! with a btree index, loaded in time order and VACUUM ANALYZEd (index-only scans).
//! With `BENCH_KEEP` set, the loaded database and Redis keys are kept and their settings
//! printed, to look into the figures afterwards.

use std::fmt::Write as _;

use chrono::{DateTime, Duration as Span, DurationRound, Utc};
use sqlx::{Connection, PgConnection};

use super::{
    CAIRN, Deployment, Latencies, Summary, env_or, redis_url, spawn_server_with_role, wait_for_200,
};
use super::{Context, Duration, Instant, Uuid};
use cairn_events::Metadata;
use cairn_events::domain::message::{self, Hashtag, MessagePosted};
use ulid::Ulid;

const TAGS: usize = 10_000;
const USERS: u64 = 100_000;
const DAYS: i64 = 60;

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1_u64 << 53) as f64
    }
}

/// Zipf (s = 1) over `TAGS` tags: tag `k` (0-based) has weight `1 / (k + 1)`.
struct Zipf(Vec<f64>);

impl Zipf {
    fn new() -> Self {
        let mut cumulative = Vec::with_capacity(TAGS);
        let mut sum = 0.0;
        for k in 0..TAGS {
            sum += 1.0 / (k + 1) as f64;
            cumulative.push(sum);
        }
        Zipf(cumulative.into_iter().map(|c| c / sum).collect())
    }

    fn sample(&self, rng: &mut Rng) -> usize {
        let u = rng.unit();
        self.0.partition_point(|c| *c < u).min(TAGS - 1)
    }
}

/// One generated message: milliseconds since the epoch, user, up to three tags.
struct Generated {
    ms: i64,
    user: u64,
    tags: Vec<usize>,
}

fn generate(count: u64, start: DateTime<Utc>) -> Vec<Generated> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let zipf = Zipf::new();
    let span_ms = DAYS * 24 * 3600 * 1000;
    let start_ms = start.timestamp_millis();
    (0..count)
        .map(|i| {
            let mut tags = Vec::with_capacity(3);
            for _ in 0..1 + rng.next() % 3 {
                let tag = zipf.sample(&mut rng);
                if !tags.contains(&tag) {
                    tags.push(tag);
                }
            }
            Generated {
                ms: start_ms + (i128::from(i) * i128::from(span_ms) / i128::from(count)) as i64,
                user: rng.next() % USERS,
                tags,
            }
        })
        .collect()
}

fn tag_name(k: usize) -> String {
    format!("t{k}")
}

/// COPY the messages into the event log, as `POST /message` would have appended them.
async fn copy_events(conn: &mut PgConnection, messages: &[Generated]) -> anyhow::Result<()> {
    let metadata = serde_json::to_string(&Metadata::default())?;
    let mut copy = conn
        .copy_in_raw(
            "COPY events (position, event_id, stream_id, category, version, event_type,
                 schema_version, payload, metadata, occurred_at) FROM STDIN",
        )
        .await?;
    let mut buffer = String::with_capacity(8 << 20);
    for (i, m) in messages.iter().enumerate() {
        let ms = u64::try_from(m.ms)?;
        let user_id = Uuid::from_u128(0xcafe_0000_0000 + u128::from(m.user));
        let posted = MessagePosted {
            message_id: Ulid::from_parts(ms, i as u128),
            user_id,
            user_name: format!("u{}", m.user),
            text: format!("message {i}"),
            hashtags: m
                .tags
                .iter()
                .filter_map(|t| Hashtag::parse(&tag_name(*t)).ok())
                .collect(),
        };
        let occurred = DateTime::<Utc>::from_timestamp_millis(m.ms).unwrap_or_default();
        let _ = writeln!(
            buffer,
            "{}\t{}\t{}\tmessage\t1\tmessage.posted\t1\t{}\t{metadata}\t{}",
            i + 1,
            Uuid::from_u128(0x0b0b_0000_0000_0000_0000 + i as u128),
            message::stream_id(posted.message_id, user_id, None),
            serde_json::to_string(&posted)?,
            occurred.to_rfc3339(),
        );
        if buffer.len() > 4 << 20 {
            copy.send(buffer.as_bytes()).await?;
            buffer.clear();
        }
    }
    copy.send(buffer.as_bytes()).await?;
    copy.finish().await?;
    Ok(())
}

/// The SQL baseline: (tag, created_at) and (created_at) tables, in time order, indexed.
async fn copy_baseline(conn: &mut PgConnection, messages: &[Generated]) -> anyhow::Result<()> {
    sqlx::raw_sql(
        "CREATE TABLE bench_tag_uses (tag TEXT NOT NULL, created_at TIMESTAMPTZ NOT NULL);
         CREATE TABLE bench_all (created_at TIMESTAMPTZ NOT NULL);",
    )
    .execute(&mut *conn)
    .await?;
    for (table, all) in [("bench_tag_uses", false), ("bench_all", true)] {
        let mut copy = conn
            .copy_in_raw(&format!("COPY {table} FROM STDIN"))
            .await?;
        let mut buffer = String::with_capacity(8 << 20);
        for m in messages {
            let at = DateTime::<Utc>::from_timestamp_millis(m.ms)
                .unwrap_or_default()
                .to_rfc3339();
            if all {
                let _ = writeln!(buffer, "{at}");
            } else {
                for t in &m.tags {
                    let _ = writeln!(buffer, "{}\t{at}", tag_name(*t));
                }
            }
            if buffer.len() > 4 << 20 {
                copy.send(buffer.as_bytes()).await?;
                buffer.clear();
            }
        }
        copy.send(buffer.as_bytes()).await?;
        copy.finish().await?;
    }
    for sql in [
        "CREATE INDEX ON bench_tag_uses (tag, created_at)",
        "CREATE INDEX ON bench_all (created_at)",
        "VACUUM ANALYZE bench_tag_uses",
        "VACUUM ANALYZE bench_all",
    ] {
        sqlx::raw_sql(sql).execute(&mut *conn).await?;
    }
    Ok(())
}

/// Wait until the checkpoint of the trends model's live generation in Redis reaches
/// `position`.
async fn wait_trends(prefix: &str, position: i64) -> anyhow::Result<()> {
    let client = redis::Client::open(redis_url())?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    loop {
        let live: Option<u64> = redis::cmd("HGET")
            .arg(format!("{prefix}:{{trends}}:generations"))
            .arg("live")
            .query_async(&mut conn)
            .await?;
        if let Some(g) = live {
            let at: Option<i64> = redis::cmd("HGET")
                .arg(format!("{prefix}:g{g}:{{trends}}:checkpoint"))
                .arg("pos")
                .query_async(&mut conn)
                .await?;
            if at.unwrap_or(0) >= position {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `runs` timings of `GET url` (after a few unmeasured ones).
async fn time_http(client: &reqwest::Client, url: &str, runs: usize) -> anyhow::Result<Latencies> {
    let mut samples = Vec::with_capacity(runs);
    for i in 0..runs + 5 {
        let started = Instant::now();
        let response = client.get(url).send().await?;
        let status = response.status();
        let body = response.bytes().await?;
        if status != 200 {
            anyhow::bail!("{url}: {status} {}", String::from_utf8_lossy(&body));
        }
        if i >= 5 {
            samples.push(started.elapsed());
        }
    }
    Ok(Latencies(samples))
}

/// `runs` timings of a SQL trend question.
async fn time_sql(
    conn: &mut PgConnection,
    sql: &str,
    tag: Option<&str>,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    runs: usize,
) -> anyhow::Result<(Latencies, usize)> {
    let mut samples = Vec::with_capacity(runs);
    let mut buckets = 0;
    for i in 0..runs + 2 {
        let started = Instant::now();
        let mut query = sqlx::query_as::<_, (DateTime<Utc>, i64)>(sql);
        if let Some(tag) = tag {
            query = query.bind(tag);
        }
        let rows = query.bind(from).bind(to).fetch_all(&mut *conn).await?;
        if i >= 2 {
            samples.push(started.elapsed());
        }
        buckets = rows.len();
    }
    Ok((Latencies(samples), buckets))
}

pub async fn bench_trends(summary: &mut Summary) -> anyhow::Result<()> {
    let now = Utc::now().duration_trunc(Span::minutes(1))?;
    // `BENCH_TREND_REUSE="<database url> <redis prefix>"`: ask the questions of a run kept
    // with BENCH_KEEP (loaded earlier the same day) instead of loading again.
    let (deployment, mut conn) = match std::env::var("BENCH_TREND_REUSE") {
        Ok(reuse) => {
            let (database_url, prefix) = reuse
                .split_once(' ')
                .context("BENCH_TREND_REUSE is \"<database url> <redis prefix>\"")?;
            println!("\n== trends: the questions, on the data loaded at {database_url} ==");
            let deployment = Deployment::existing(database_url, prefix);
            let conn = PgConnection::connect(&deployment.database_url).await?;
            (deployment, conn)
        }
        Err(_) => load(summary, now).await?,
    };
    ask(summary, &deployment, &mut conn, now).await?;
    drop(conn);
    if std::env::var_os("BENCH_KEEP").is_some() {
        // For looking into the figures: the loaded database and Redis keys stay.
        println!("  kept (BENCH_KEEP):");
        for (name, value) in &deployment.env {
            println!("    export {name}={value}");
        }
    } else {
        deployment.remove().await;
    }
    Ok(())
}

/// Load the event log, project it into Redis (timed), and load the SQL baseline.
async fn load(
    summary: &mut Summary,
    now: DateTime<Utc>,
) -> anyhow::Result<(Deployment, PgConnection)> {
    let count: u64 = env_or("BENCH_TREND_MESSAGES", 10_000_000);
    println!("\n== trends: {count} messages over {DAYS} days, {TAGS} Zipf tags, {USERS} users ==");
    let start = now - Span::days(DAYS);
    let deployment = Deployment::fresh().await;
    // Opening the store creates the schema.
    drop(cairn_events::open_postgres(&deployment.database_url).await?);
    let mut conn = PgConnection::connect(&deployment.database_url).await?;

    let started = Instant::now();
    let messages = generate(count, start);
    copy_events(&mut conn, &messages).await?;
    sqlx::raw_sql("VACUUM ANALYZE events")
        .execute(&mut conn)
        .await?;
    println!(
        "  event log loaded in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // The projection, through the real code, into Redis.
    let mut env = deployment.env.clone();
    env.push(("CAIRN_PROJECTIONS".into(), "trends".into()));
    let started = Instant::now();
    let projector = tokio::process::Command::new(CAIRN)
        .args(["serve", "--role", "projector"])
        .envs(env.iter().cloned())
        .env("CAIRN_LISTEN", "127.0.0.1:0")
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .context("starting the projector")?;
    wait_trends(&deployment.prefix, i64::try_from(count)?).await?;
    let took = started.elapsed().as_secs_f64();
    drop(projector);
    summary.add(
        &format!("trends projection of {count} messages into Redis"),
        format!("{took:.1} s ({:.0} events/s)", count as f64 / took),
        ">= 20,000 events/s",
    );
    let info: String = {
        let client = redis::Client::open(redis_url())?;
        let mut redis = client.get_multiplexed_async_connection().await?;
        redis::cmd("INFO")
            .arg("memory")
            .query_async(&mut redis)
            .await?
    };
    if let Some(used) = info.lines().find(|l| l.starts_with("used_memory_human:")) {
        println!("  Redis {used} (all prefixes)");
    }

    let started = Instant::now();
    copy_baseline(&mut conn, &messages).await?;
    println!(
        "  SQL baseline loaded and indexed in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    drop(messages);

    Ok((deployment, conn))
}

/// The trend questions over HTTP and in SQL, timed.
async fn ask(
    summary: &mut Summary,
    deployment: &Deployment,
    conn: &mut PgConnection,
    now: DateTime<Utc>,
) -> anyhow::Result<()> {
    // Answers only: no projector competing for the two cores.
    let server = spawn_server_with_role(&deployment.env, "query")?;
    let client = reqwest::Client::new();
    wait_for_200(
        &client,
        &format!("{}/health/live", server.base),
        Instant::now(),
    )
    .await;
    let to = now.duration_trunc(Span::days(1))?;
    let from = to - Span::days(30);
    let stamp = |t: DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let url = |from: DateTime<Utc>, aggregation: &str, tag: Option<&str>| {
        let mut url = format!(
            "{}/trend?from_date={}&to_date={}&aggregation={aggregation}",
            server.base,
            stamp(from),
            stamp(to)
        );
        if let Some(tag) = tag {
            url.push_str(&format!("&hashtag={tag}"));
        }
        url
    };
    let by_tag = |step: &str| {
        format!(
            "SELECT date_bin('{step}', created_at, $2) AS b, count(*) FROM bench_tag_uses
             WHERE tag = $1 AND created_at >= $2 AND created_at < $3 GROUP BY b ORDER BY b"
        )
    };
    let all = "SELECT date_bin('1 hour', created_at, $1) AS b, count(*) FROM bench_all
               WHERE created_at >= $1 AND created_at < $2 GROUP BY b ORDER BY b";
    let unaligned = from + Span::minutes(37);
    struct Case<'a> {
        what: &'a str,
        url: String,
        sql: String,
        tag: Option<&'a str>,
        from: DateTime<Utc>,
        runs: usize,
        target: &'a str,
    }
    let cases = [
        Case {
            what: "30 days at 1h, most used tag",
            url: url(from, "1h", Some("t0")),
            sql: by_tag("1 hour"),
            tag: Some("t0"),
            from,
            runs: 200,
            target: "p99 < 2 ms, >= 50x SQL",
        },
        Case {
            what: "30 days at 1h, all messages",
            url: url(from, "1h", None),
            sql: all.to_owned(),
            tag: None,
            from,
            runs: 200,
            target: "p99 < 2 ms, >= 50x SQL",
        },
        Case {
            what: "30 days at 1h, a rare tag (rank 5000)",
            url: url(from, "1h", Some("t4999")),
            sql: by_tag("1 hour"),
            tag: Some("t4999"),
            from,
            runs: 200,
            target: "report",
        },
        Case {
            what: "30 days at 1m, most used tag",
            url: url(from, "1m", Some("t0")),
            sql: by_tag("1 minute"),
            tag: Some("t0"),
            from,
            runs: 50,
            target: "p99 < 30 ms",
        },
        Case {
            what: "30 days at 1h from :37 (not on the hour), most used tag",
            url: url(unaligned, "1h", Some("t0")),
            sql: by_tag("1 hour"),
            tag: Some("t0"),
            from: unaligned,
            runs: 50,
            target: "report",
        },
    ];
    for case in cases {
        let mut http = time_http(&client, &case.url, case.runs).await?;
        let (mut sql_times, buckets) = time_sql(
            conn,
            &case.sql,
            case.tag,
            case.from,
            to,
            (case.runs / 10).max(5),
        )
        .await?;
        let (hp50, hp99) = (http.percentile(50.0), http.percentile(99.0));
        let (sp50, sp99) = (sql_times.percentile(50.0), sql_times.percentile(99.0));
        summary.add(
            &format!("GET /trend {}", case.what),
            format!(
                "HTTP p50 {hp50:.2} ms p99 {hp99:.2} ms; SQL p50 {sp50:.1} ms p99 {sp99:.1} ms ({buckets} buckets); SQL/HTTP {:.0}x at p50, {:.0}x at p99",
                sp50 / hp50,
                sp99 / hp99
            ),
            case.target,
        );
    }
    let mut trending = time_http(
        &client,
        &format!("{}/trends/hashtags?limit=10", server.base),
        200,
    )
    .await?;
    summary.add(
        "GET /trends/hashtags?limit=10",
        trending.describe(),
        "p99 < 2 ms",
    );
    drop(server);
    Ok(())
}
