//! Several scheduler processes on one Postgres: each capsule released once, every delivery
//! email sent, none lost when a scheduler is killed mid-way, and a crash costs no minute.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use cairn_events::domain::capsule::{
    self, CapsuleConfirmed, CapsuleSubmitted, EmailAddress, Party, PersonName,
};
use cairn_events::{
    AppendRequest, DueItem, Effects, ExpectedVersion, Metadata, NewEvent, Store, open_postgres,
};
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::helpers::{Backend, backend_env, env_value, start_server_as, until};
use crate::smtp::{Received, SmtpSink};

/// Write `count` confirmed capsules straight into the event store, as the confirm command
/// would (its events, and the release in the due index), due from `first` on, `apart`
/// from each other. Returns each recipient's address with its capsule's send time.
async fn confirmed_capsules(
    store: &Arc<dyn Store>,
    count: usize,
    first: DateTime<Utc>,
    apart: chrono::Duration,
) -> HashMap<String, DateTime<Utc>> {
    let party = |email: &str, name: &str| Party {
        email: EmailAddress::parse(email).unwrap(),
        name: PersonName::parse(name).unwrap(),
    };
    let mut appends = tokio::task::JoinSet::new();
    let mut due = HashMap::new();
    for i in 0..count {
        let id = Uuid::now_v7();
        let stream = capsule::stream_id(id);
        let to = format!("r{i}@example.com");
        let send_at = first + apart * i32::try_from(i).unwrap();
        due.insert(to.clone(), send_at);
        let submitted = CapsuleSubmitted {
            owner: None,
            capsule_id: id,
            sender: party("sender@example.com", "Sender"),
            recipient: party(&to, "Recipient"),
            send_at,
            text: format!("letter {i}"),
            attachment: None,
            schedule: None,
        };
        let request = AppendRequest::new(
            stream.clone(),
            ExpectedVersion::NoStream,
            vec![
                NewEvent::new(&submitted, Metadata::default()),
                NewEvent::new(&CapsuleConfirmed { capsule_id: id }, Metadata::default()),
            ],
        )
        .with_effects(Effects {
            schedule: vec![DueItem {
                key: format!("{stream}:{}", cairn_command::capsules::RELEASE),
                stream_id: stream,
                action: cairn_command::capsules::RELEASE.into(),
                due_at: send_at,
            }],
            ..Effects::default()
        });
        let store = store.clone();
        appends.spawn(async move { store.append(request).await.unwrap() });
    }
    while let Some(done) = appends.join_next().await {
        done.unwrap();
    }
    due
}

/// How many release events each capsule stream has.
async fn releases(url: &str) -> HashMap<String, i64> {
    let pool = sqlx::PgPool::connect(url).await.unwrap();
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT stream_id, count(*) FROM events WHERE event_type = 'capsule.released'
         GROUP BY stream_id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    pool.close().await;
    rows.into_iter().collect()
}

/// The delivery emails (a capsule's recipients are `r<n>@example.com`) by recipient.
fn deliveries(sink: &SmtpSink) -> HashMap<String, Vec<Received>> {
    let mut by_to: HashMap<String, Vec<Received>> = HashMap::new();
    for message in sink.received() {
        if message.to.starts_with('r') {
            by_to.entry(message.to.clone()).or_default().push(message);
        }
    }
    by_to
}

/// Lateness of each capsule's first delivery (its arrival at the listener minus its send
/// time), sorted.
fn lateness(
    due: &HashMap<String, DateTime<Utc>>,
    delivered: &HashMap<String, Vec<Received>>,
) -> Vec<Duration> {
    let mut late: Vec<Duration> = due
        .iter()
        .filter_map(|(to, send_at)| {
            let first = delivered.get(to)?.iter().map(|m| m.at).min()?;
            let due = SystemTime::from(*send_at);
            Some(first.duration_since(due).unwrap_or(Duration::ZERO))
        })
        .collect();
    late.sort();
    late
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

/// Start `role` processes sending to `sink`; the environment they share.
async fn scheduler_env(sink: &SmtpSink) -> Vec<(String, String)> {
    let mut env = backend_env(Backend::PostgresRedis).await;
    env.push(("CAIRN_SMTP_URL".into(), sink.url.clone()));
    env
}

/// Three scheduler processes, 2,000 capsules due within a few seconds, one scheduler
/// killed (`kill -9`) mid-way: every capsule is delivered, none released twice, and an
/// email sent twice (sent, then its worker killed before it recorded so) keeps its
/// Message-ID.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_schedulers_release_each_capsule_once_through_a_kill() {
    const CAPSULES: usize = 2000;
    let sink = SmtpSink::start().await;
    let env = scheduler_env(&sink).await;
    let url = env_value(&env, "CAIRN_DATABASE_URL").unwrap().to_owned();
    let (a, b, c) = tokio::join!(
        start_server_as(&env, "scheduler"),
        start_server_as(&env, "scheduler"),
        start_server_as(&env, "scheduler"),
    );
    let (mut victim, _) = a;
    let (_b, _c) = (b, c);

    let store: Arc<dyn Store> = open_postgres(&url).await.unwrap();
    let first = Utc::now() + chrono::Duration::seconds(2);
    let due = confirmed_capsules(
        &store,
        CAPSULES,
        first,
        chrono::Duration::microseconds(1500),
    )
    .await;

    // Kill one scheduler once a good part, not all, has gone out.
    until(
        "a quarter of the deliveries",
        Duration::from_secs(60),
        || {
            let sink = sink.clone();
            async move { deliveries(&sink).len() >= CAPSULES / 4 }
        },
    )
    .await;
    victim.start_kill().unwrap();
    victim.wait().await.unwrap();
    let at_kill = deliveries(&sink).len();

    until(
        "every capsule's delivery email",
        Duration::from_secs(60),
        || {
            let sink = sink.clone();
            async move { deliveries(&sink).len() == CAPSULES }
        },
    )
    .await;
    let released = releases(&url).await;
    assert_eq!(released.len(), CAPSULES, "every capsule released");
    let twice: Vec<_> = released.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "released more than once: {twice:?}");

    let delivered = deliveries(&sink);
    let mut resent = 0;
    for (to, messages) in &delivered {
        if messages.len() > 1 {
            resent += messages.len() - 1;
            let ids: Vec<Option<String>> =
                messages.iter().map(|m| m.header("Message-ID")).collect();
            assert!(
                ids.iter().all(|id| id.is_some() && *id == ids[0]),
                "an email to {to} sent again with another Message-ID: {ids:?}"
            );
        }
    }
    let late = lateness(&due, &delivered);
    println!(
        "{CAPSULES} capsules, 3 schedulers, one killed after {at_kill} deliveries: \
         {resent} emails sent twice (same Message-ID); lateness p50 {:?} p99 {:?} max {:?}",
        percentile(&late, 0.5),
        percentile(&late, 0.99),
        percentile(&late, 1.0),
    );
}

/// Not a pass/fail test: prints how late 100 capsules are delivered when the process
/// releasing them is killed (`kill -9`) at their send time and started again at once,
/// all-in-one (`serve`) and split (`serve --role scheduler` beside the other roles). Run
/// with `cargo nextest run --test api kill_at_release -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "prints figures; run by hand"]
async fn kill_at_release_costs_little() {
    for role in ["all", "scheduler"] {
        let sink = SmtpSink::start().await;
        let env = scheduler_env(&sink).await;
        let url = env_value(&env, "CAIRN_DATABASE_URL").unwrap().to_owned();
        let (mut first, _) = start_server_as(&env, role).await;
        // The split deployment's other roles.
        let mut others = Vec::new();
        if role == "scheduler" {
            others.push(start_server_as(&env, "command").await);
            others.push(start_server_as(&env, "projector").await);
        }
        let store: Arc<dyn Store> = open_postgres(&url).await.unwrap();
        let send_at = Utc::now() + chrono::Duration::seconds(3);
        let due = confirmed_capsules(&store, 100, send_at, chrono::Duration::zero()).await;
        // Kill once the releases are under way, and start again at once.
        until("the first deliveries", Duration::from_secs(30), || {
            let sink = sink.clone();
            async move { !deliveries(&sink).is_empty() }
        })
        .await;
        first.start_kill().unwrap();
        first.wait().await.unwrap();
        let _second = start_server_as(&env, role).await;
        until("every delivery", Duration::from_secs(300), || {
            let sink = sink.clone();
            async move { deliveries(&sink).len() == 100 }
        })
        .await;
        let delivered = deliveries(&sink);
        let resent: usize = delivered.values().map(|m| m.len() - 1).sum();
        let late = lateness(&due, &delivered);
        println!(
            "role {role}: kill -9 at release + restart: lateness p50 {:?} p99 {:?} max {:?}; {resent} sent twice",
            percentile(&late, 0.5),
            percentile(&late, 0.99),
            percentile(&late, 1.0),
        );
    }
}

/// Not a pass/fail test: prints how fast two scheduler processes release a burst of
/// 10,000 capsules due at one instant. Run with
/// `cargo nextest run --test api burst --run-ignored only --no-capture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "prints figures; run by hand"]
async fn burst_of_releases() {
    const CAPSULES: usize = 10_000;
    let sink = SmtpSink::start().await;
    let env = scheduler_env(&sink).await;
    let url = env_value(&env, "CAIRN_DATABASE_URL").unwrap().to_owned();
    let (_a, _b) = tokio::join!(
        start_server_as(&env, "scheduler"),
        start_server_as(&env, "scheduler"),
    );
    let store: Arc<dyn Store> = open_postgres(&url).await.unwrap();
    let send_at = Utc::now() + chrono::Duration::seconds(20);
    confirmed_capsules(&store, CAPSULES, send_at, chrono::Duration::zero()).await;
    assert!(Utc::now() < send_at, "written before they are due");
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    until("every release", Duration::from_secs(300), || {
        let pool = pool.clone();
        async move {
            let n: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM events WHERE event_type = 'capsule.released'",
            )
            .fetch_one(&pool)
            .await
            .unwrap();
            n == CAPSULES as i64
        }
    })
    .await;
    let (first, last): (DateTime<Utc>, DateTime<Utc>) = sqlx::query_as(
        "SELECT min(occurred_at), max(occurred_at) FROM events
         WHERE event_type = 'capsule.released'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    let took = (last - send_at).to_std().unwrap_or_default();
    println!(
        "{CAPSULES} releases due at one instant, 2 schedulers: first {:?} after, last {took:?} after: {:.0} releases/s",
        (first - send_at).to_std().unwrap_or_default(),
        CAPSULES as f64 / took.as_secs_f64()
    );
}
