//! The behaviour suite every event store must pass. Each function takes a fresh, empty
//! store and panics on the first broken promise; the integration tests call them for
//! SQLite and for Postgres.
#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{
    AppendRequest, DomainEvent, EventStore, ExpectedVersion, Metadata, NewEvent, StoreError,
};

/// A throw-away event type for the suite.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Noted {
    pub n: u64,
}

impl DomainEvent for Noted {
    const TYPE: &'static str = "test.noted";
    const SCHEMA_VERSION: i32 = 1;
}

fn noted(n: u64) -> NewEvent {
    NewEvent::new(
        &Noted { n },
        Metadata {
            actor: Some("suite".into()),
            ..Metadata::default()
        },
    )
}

fn request(stream: &str, expected: ExpectedVersion, ns: &[u64]) -> AppendRequest {
    AppendRequest::new(stream, expected, ns.iter().map(|n| noted(*n)).collect())
}

/// Appended events read back exactly, per stream and globally.
pub async fn round_trip(store: Arc<dyn EventStore>) {
    assert_eq!(store.head().await.unwrap(), 0);
    let first = store
        .append(request("note-a", ExpectedVersion::NoStream, &[1, 2]))
        .await
        .unwrap();
    assert_eq!(
        (first.version, first.first_position, first.last_position),
        (2, 1, 2)
    );
    let second = store
        .append(request("other-b", ExpectedVersion::Any, &[3]))
        .await
        .unwrap();
    assert_eq!((second.version, second.first_position), (1, 3));
    let third = store
        .append(request("note-a", ExpectedVersion::Exact(2), &[4]))
        .await
        .unwrap();
    assert_eq!((third.version, third.last_position), (3, 4));

    let stream = store.read_stream("note-a").await.unwrap();
    let ns: Vec<u64> = stream.iter().map(|e| Noted::decode(e).unwrap().n).collect();
    assert_eq!(ns, [1, 2, 4]);
    assert_eq!(
        stream.iter().map(|e| e.version).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    assert_eq!(stream[0].metadata.actor.as_deref(), Some("suite"));
    assert_eq!(stream[0].event_type, "test.noted");

    let all = store.read_all(0, 100, &[]).await.unwrap();
    assert_eq!(
        all.iter().map(|e| e.position).collect::<Vec<_>>(),
        [1, 2, 3, 4]
    );
    let notes = store.read_all(0, 100, &["note"]).await.unwrap();
    assert_eq!(
        notes.iter().map(|e| e.position).collect::<Vec<_>>(),
        [1, 2, 4]
    );
    let after = store.read_all(2, 1, &[]).await.unwrap();
    assert_eq!(after.len(), 1);
    assert_eq!(after[0].position, 3);
    assert_eq!(store.head().await.unwrap(), 4);
    assert!(store.read_stream("missing-x").await.unwrap().is_empty());
    // Timestamps survive to the microsecond.
    assert_eq!(
        all[0].occurred_at.timestamp_micros(),
        store.read_stream("note-a").await.unwrap()[0]
            .occurred_at
            .timestamp_micros()
    );
}

/// A writer with a stale expected version gets a conflict and changes nothing.
pub async fn optimistic_concurrency(store: Arc<dyn EventStore>) {
    store
        .append(request("note-c", ExpectedVersion::NoStream, &[1]))
        .await
        .unwrap();
    let again = store
        .append(request("note-c", ExpectedVersion::NoStream, &[2]))
        .await;
    assert!(
        matches!(again, Err(StoreError::Conflict { actual: 1, .. })),
        "{again:?}"
    );
    let stale = store
        .append(request("note-c", ExpectedVersion::Exact(0), &[2]))
        .await;
    assert!(
        matches!(stale, Err(StoreError::Conflict { .. })),
        "{stale:?}"
    );
    let ahead = store
        .append(request("note-c", ExpectedVersion::Exact(5), &[2]))
        .await;
    assert!(
        matches!(ahead, Err(StoreError::Conflict { .. })),
        "{ahead:?}"
    );
    assert_eq!(store.read_stream("note-c").await.unwrap().len(), 1);
    assert_eq!(store.head().await.unwrap(), 1);
    let bad = store
        .append(AppendRequest::new("note-d", ExpectedVersion::Any, vec![]))
        .await;
    assert!(matches!(bad, Err(StoreError::Invalid(_))));
}

/// Many writers race for the same new stream: exactly one wins, even when their appends
/// share a group-committed transaction; the others' failure does not undo the winner.
pub async fn concurrent_writers_one_winner(store: Arc<dyn EventStore>) {
    let mut tasks = Vec::new();
    for i in 0..32u64 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let unrelated = store.append(request(
                &format!("note-u{i}"),
                ExpectedVersion::NoStream,
                &[i],
            ));
            let contested = store.append(request("note-race", ExpectedVersion::NoStream, &[i]));
            let (u, c) = tokio::join!(unrelated, contested);
            (u.is_ok(), c.is_ok())
        }));
    }
    let mut winners = 0;
    for task in tasks {
        let (unrelated_ok, contested_ok) = task.await.unwrap();
        assert!(unrelated_ok);
        winners += usize::from(contested_ok);
    }
    assert_eq!(winners, 1);
    assert_eq!(store.read_stream("note-race").await.unwrap().len(), 1);
    let all = store.read_all(0, 1000, &[]).await.unwrap();
    assert_eq!(all.len(), 33);
    // Positions are dense: 1..=33 with no holes.
    assert!(
        all.iter()
            .enumerate()
            .all(|(i, e)| e.position == i as i64 + 1)
    );
}

/// A reader following the log while writers append concurrently sees every event exactly
/// once, in position order, with no gaps.
pub async fn catch_up_never_skips(store: Arc<dyn EventStore>) {
    const WRITERS: u64 = 8;
    const EACH: u64 = 40;
    let reader = {
        let store = store.clone();
        tokio::spawn(async move {
            let mut wake = store.subscribe();
            let mut seen = Vec::new();
            let mut at = 0;
            while seen.len() < (WRITERS * EACH) as usize {
                let batch = store.read_all(at, 7, &[]).await.unwrap();
                if batch.is_empty() {
                    let _ = tokio::time::timeout(Duration::from_millis(200), wake.changed()).await;
                    continue;
                }
                for e in batch {
                    assert_eq!(
                        e.position,
                        at + 1,
                        "a reader skipped or repeated a position"
                    );
                    at = e.position;
                    seen.push(Noted::decode(&e).unwrap().n);
                }
            }
            seen
        })
    };
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let store = store.clone();
        writers.push(tokio::spawn(async move {
            for i in 0..EACH {
                let n = w * 1000 + i;
                store
                    .append(request(&format!("note-w{w}"), ExpectedVersion::Any, &[n]))
                    .await
                    .unwrap();
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    let seen = tokio::time::timeout(Duration::from_secs(30), reader)
        .await
        .unwrap()
        .unwrap();
    let unique: HashSet<u64> = seen.iter().copied().collect();
    assert_eq!(unique.len(), (WRITERS * EACH) as usize);
    // Per writer, events appear in the order they were appended.
    for w in 0..WRITERS {
        let mine: Vec<u64> = seen.iter().copied().filter(|n| n / 1000 == w).collect();
        assert!(mine.windows(2).all(|p| p[0] < p[1]));
    }
}

/// A subscriber taken before an append is woken by it.
pub async fn subscribers_are_woken(store: Arc<dyn EventStore>) {
    let mut wake = store.subscribe();
    let before = *wake.borrow_and_update();
    let appended = store
        .append(request("note-w", ExpectedVersion::Any, &[1]))
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), wake.changed())
        .await
        .unwrap()
        .unwrap();
    assert!(*wake.borrow() >= appended.last_position);
    assert!(before < appended.last_position);
}

/// A lease is granted and can be checked.
pub async fn leases(store: Arc<dyn EventStore>) {
    let mut lease = store
        .try_lease("suite")
        .await
        .unwrap()
        .expect("a free lease is granted");
    assert!(lease.is_held().await);
}

/// Run the whole suite, each case on a fresh store from `fresh`.
#[macro_export]
macro_rules! event_store_suite {
    ($fresh:expr) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn round_trip() {
            $crate::testing::round_trip($fresh.await).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn optimistic_concurrency() {
            $crate::testing::optimistic_concurrency($fresh.await).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn concurrent_writers_one_winner() {
            $crate::testing::concurrent_writers_one_winner($fresh.await).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn catch_up_never_skips() {
            $crate::testing::catch_up_never_skips($fresh.await).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn subscribers_are_woken() {
            $crate::testing::subscribers_are_woken($fresh.await).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn leases() {
            $crate::testing::leases($fresh.await).await;
        }
    };
}

/// The Postgres server tests create their databases on (`CAIRN_TEST_DATABASE_URL`,
/// default the local server).
pub fn admin_url() -> String {
    std::env::var("CAIRN_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// Create an empty database of its own for one test and return its URL. Databases are
/// named `cairn_t_*`; the test script drops leftovers before a run.
pub async fn fresh_postgres_url() -> String {
    use sqlx::Connection;
    let admin = admin_url();
    let name = format!("cairn_t_{}", uuid::Uuid::now_v7().simple());
    let mut conn = sqlx::PgConnection::connect(&admin)
        .await
        .expect("Postgres is reachable (set CAIRN_TEST_DATABASE_URL)");
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .unwrap();
    let _ = conn.close().await;
    match admin.rfind('/') {
        Some(i) if !admin[i + 1..].contains('@') => format!("{}/{name}", &admin[..i]),
        _ => format!("{admin}/{name}"),
    }
}

/// A fresh, migrated Postgres store in a database of its own.
pub async fn fresh_postgres() -> Arc<dyn EventStore> {
    crate::open_postgres(&fresh_postgres_url().await)
        .await
        .unwrap()
}

/// A fresh SQLite store in a temporary directory that lives as long as the process.
pub async fn fresh_sqlite() -> Arc<dyn EventStore> {
    let dir = std::env::temp_dir().join(format!("cairn-test-{}", uuid::Uuid::now_v7().simple()));
    crate::open_sqlite(&dir.join("events.db")).await.unwrap()
}
