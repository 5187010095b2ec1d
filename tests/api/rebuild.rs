//! Rebuilds never serve a partial model: while a read model is rebuilt beside the live
//! one, reads answer the complete old model; when there is none (its data lost), they
//! answer 503 `read_model_rebuilding` with `Retry-After` until the new one is complete.
//!
//! Deterministic: a process that does not run the `messages` projection
//! (`CAIRN_PROJECTIONS=trends`) leaves a requested rebuild, or a lost model, exactly as it
//! is, so the reads during it are checked without racing the runner; then a process that
//! runs it finishes the rebuild while every read on the way is checked.

use chrono::{Duration, TimeZone, Utc};
use serde_json::Value;
use ulid::Ulid;
use uuid::Uuid;

use cairn_events::domain::message::{self, Hashtag, MessagePosted};
use cairn_events::{AppendRequest, ExpectedVersion, Metadata, NewEvent};

use crate::helpers::{
    Backend, PATIENCE, TestApp, redis_flush_prefix, redis_keys, spawn_with, test_config, until,
};

crate::on_both_backends!(
    rebuild: reads_stay_complete_during_a_rebuild,
    lost_read_models_answer_503_until_rebuilt
);

/// Three batches of the messages projection.
const MESSAGES: usize = 3_000;
/// Every seventh message is zed's: fewer than a page of them.
const ZED_EVERY: usize = 7;

/// What the log holds: the answers a complete read model gives.
struct Log {
    first: String,
    last: String,
    zed: usize,
}

/// Append `MESSAGES` messages, one a minute from 2020-01-01, all tagged `bulk`, straight to
/// the event log (many at once, as many clients would post them).
async fn fill(app: &TestApp) -> Log {
    let start = Utc.with_ymd_and_hms(2020, 1, 1, 0, 0, 0).unwrap();
    let mut ids = Vec::with_capacity(MESSAGES);
    let mut appends = tokio::task::JoinSet::new();
    for n in 0..MESSAGES {
        let zed = n % ZED_EVERY == 0;
        let (user_id, user_name) = if zed {
            (Uuid::from_u128(0x2000), "zed".to_owned())
        } else {
            (Uuid::from_u128(0x2001), "amy".to_owned())
        };
        let at = start + Duration::minutes(n as i64);
        let id = Ulid::from_parts(u64::try_from(at.timestamp_millis()).unwrap(), n as u128);
        ids.push(id.to_string());
        let posted = MessagePosted {
            message_id: id,
            user_id,
            user_name,
            text: format!("message {n}"),
            hashtags: vec![Hashtag::parse("bulk").unwrap()],
        };
        let request = AppendRequest::new(
            message::stream_id(id, user_id, None),
            ExpectedVersion::NoStream,
            vec![NewEvent::new(&posted, Metadata::default())],
        );
        let events = app.events.clone();
        appends.spawn(async move { events.append(request).await.unwrap() });
        if appends.len() >= 64 {
            appends.join_next().await.unwrap().unwrap();
        }
    }
    while let Some(done) = appends.join_next().await {
        done.unwrap();
    }
    Log {
        first: ids.first().unwrap().clone(),
        last: ids.last().unwrap().clone(),
        zed: MESSAGES.div_ceil(ZED_EVERY),
    }
}

/// What one read answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Answer {
    /// The complete answer.
    Complete,
    /// 503 `read_model_rebuilding` with a `Retry-After`.
    Rebuilding,
}

/// Ask `path` and judge the answer with `complete`; anything but a complete answer or a
/// proper "rebuilding" 503 (a partial count, a 404 for a message in the log, a 503
/// without `Retry-After`) fails the test.
async fn ask(app: &TestApp, path: &str, complete: impl Fn(&Value) -> bool) -> Answer {
    let response = app
        .client
        .get(format!("{}{path}", app.address))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let retry_after = response.headers().get("retry-after").cloned();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    match status {
        200 if complete(&body) => Answer::Complete,
        503 if body["code"] == "read_model_rebuilding" => {
            assert!(retry_after.is_some(), "{path}: 503 without Retry-After");
            Answer::Rebuilding
        }
        _ => panic!("{path}: a partial answer, {status} {body}"),
    }
}

/// Read the messages model three ways and the trends model once; the answers of each
/// model (messages: `Complete` only if all three were, trends).
async fn read_everything(app: &TestApp, log: &Log) -> (Answer, Answer) {
    let first = ask(app, &format!("/message/{}", log.first), |_| true).await;
    let last = ask(app, &format!("/message/{}", log.last), |_| true).await;
    let zed = ask(app, "/message?user_name=zed&limit=1000", |body| {
        body["data"].as_array().map(Vec::len) == Some(log.zed)
    })
    .await;
    let trends = ask(
        app,
        "/trend?from_date=2020-01-01&to_date=2020-01-04&aggregation=24h&hashtag=bulk",
        |body| {
            let buckets = body["data"]["trends"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let total: u64 = buckets.iter().filter_map(|b| b["count"].as_u64()).sum();
            total == MESSAGES as u64
        },
    )
    .await;
    // A switch may fall between two reads: the model is complete when all three were.
    let messages = if [first, last, zed].iter().all(|a| *a == Answer::Complete) {
        Answer::Complete
    } else {
        Answer::Rebuilding
    };
    (messages, trends)
}

/// `/health/ready`: its status code and body.
async fn ready(app: &TestApp) -> (u16, Value) {
    app.get("/health/ready").await
}

/// A rebuild asked for (`cairn projections rebuild` does the same) is built beside the
/// live model: every read meanwhile answers the complete old model, and once the new one
/// is complete it answers instead and the old one's data is deleted.
pub async fn reads_stay_complete_during_a_rebuild(backend: Backend) {
    let config = test_config(backend).await;
    let app = spawn_with(config.clone()).await;
    let log = fill(&app).await;
    app.wait_projected().await;
    assert_eq!(
        read_everything(&app, &log).await,
        (Answer::Complete, Answer::Complete)
    );
    let old = app
        .read
        .generations("messages")
        .await
        .unwrap()
        .live
        .unwrap();
    app.stop().await;

    // The rebuild is asked for while the only process running does not run the messages
    // projection: nothing builds it, so reads are checked with the rebuild under way.
    let mut paused = config.clone();
    paused.projections = vec!["trends".into()];
    let app = spawn_with(paused).await;
    app.read.reset("messages").await.unwrap();
    app.read.reset("trends").await.unwrap();
    for _ in 0..3 {
        assert_eq!(
            read_everything(&app, &log).await.0,
            Answer::Complete,
            "the old model answers while the new one is built"
        );
    }
    let (status, body) = ready(&app).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["data"]["read_models"]["messages"]["status"], "rebuilding_beside_live",
        "{body}"
    );
    app.stop().await;

    // Now the rebuild runs: every read on the way answers the complete model, old or new.
    let app = spawn_with(config.clone()).await;
    until("the rebuilt models to be live", PATIENCE, || async {
        let answers = read_everything(&app, &log).await;
        assert_eq!(answers, (Answer::Complete, Answer::Complete));
        let generations = app.read.generations("messages").await.unwrap();
        let trends = app.read.generations("trends").await.unwrap();
        generations.building.is_none() && trends.building.is_none()
    })
    .await;
    let new = app
        .read
        .generations("messages")
        .await
        .unwrap()
        .live
        .unwrap();
    assert_ne!(new, old, "a new generation answers");
    assert_eq!(
        read_everything(&app, &log).await,
        (Answer::Complete, Answer::Complete)
    );

    // The old generation's data is deleted once reads that looked it up are done.
    until("the old generation to be deleted", PATIENCE, || async {
        app.read
            .generations("messages")
            .await
            .unwrap()
            .retired
            .is_none()
    })
    .await;
    match backend.redis_url() {
        Some(url) => {
            let pattern = format!("{}:g{old}:*", config.redis_prefix);
            assert_eq!(redis_keys(&url, &pattern).await, Vec::<String>::new());
        }
        None => {
            let tables = sqlite_tables(&config).await;
            assert!(
                !tables.iter().any(|t| t.starts_with(&format!("g{old}_"))),
                "{tables:?}"
            );
        }
    }
    let (status, body) = ready(&app).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["read_models"]["messages"]["status"], "live");
}

/// The tables of the read-model file in the data directory of `config`.
async fn sqlite_tables(config: &cairn::Config) -> Vec<String> {
    use sqlx::Connection;
    let file = config.data_dir.join("read-models.db");
    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", file.display()))
        .await
        .unwrap();
    let tables = sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'table'")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    tables
}

/// Read models lost (a Redis flushed or restarted empty; the read-model file gone) are not
/// an empty model: reads answer 503 `read_model_rebuilding` with `Retry-After` and
/// `/health/ready` says `rebuilding`, with its progress, until they are rebuilt; then
/// everything answers again.
pub async fn lost_read_models_answer_503_until_rebuilt(backend: Backend) {
    let config = test_config(backend).await;
    let app = spawn_with(config.clone()).await;
    let log = fill(&app).await;
    app.wait_projected().await;
    app.stop().await;

    // Lost while no process runs the messages projection, so nothing rebuilds it yet.
    let mut paused = config.clone();
    paused.projections = vec!["trends".into()];
    let app = match backend.redis_url() {
        Some(url) => {
            let app = spawn_with(paused).await;
            assert!(redis_flush_prefix(&url, &config.redis_prefix).await > MESSAGES);
            app
        }
        None => {
            for file in ["read-models.db", "read-models.db-wal", "read-models.db-shm"] {
                let _ = std::fs::remove_file(config.data_dir.join(file));
            }
            spawn_with(paused).await
        }
    };
    for _ in 0..3 {
        assert_eq!(read_everything(&app, &log).await.0, Answer::Rebuilding);
    }
    let (status, body) = ready(&app).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["data"]["status"], "rebuilding", "{body}");
    let messages = &body["data"]["read_models"]["messages"];
    assert_eq!(messages["status"], "rebuilding", "{body}");
    assert!(messages["position"].as_i64().is_some(), "{body}");
    assert!(
        messages["head"].as_i64().unwrap() >= MESSAGES as i64,
        "{body}"
    );
    app.stop().await;

    // Rebuilt: every read on the way is complete or "rebuilding", never partial.
    let app = spawn_with(config).await;
    until("the lost models to be rebuilt", PATIENCE, || async {
        read_everything(&app, &log).await == (Answer::Complete, Answer::Complete)
    })
    .await;
    let (status, body) = ready(&app).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["status"], "ready", "{body}");
}
