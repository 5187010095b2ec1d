//! The event store behaviour suite on both backends, plus the checks only one backend needs.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use cairn_events::domain::message::MessagePosted;
use cairn_events::store::postgres::{APPEND_LOCK, LOCK_CLASS};
use cairn_events::testing::{fresh_postgres, fresh_postgres_url, fresh_sqlite, temp_dir, until};
use cairn_events::{
    AppendRequest, DomainEvent, Envelope, EventStore, ExpectedVersion, Metadata, NewEvent, Store,
};

/// How long a test waits for a condition before it fails.
const WAIT: Duration = Duration::from_secs(10);

mod sqlite {
    use super::*;
    cairn_events::event_store_suite!(fresh_sqlite());

    /// One process owns an embedded store: a new run takes the last one's claims at once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn claims_pass_on_when_their_holder_dies() {
        let path = temp_dir().join("events.db");
        let first: Arc<dyn Store> = cairn_events::open_sqlite(&path).await.unwrap();
        let second = async { cairn_events::open_sqlite(&path).await.unwrap() as Arc<dyn Store> };
        cairn_events::testing::claims_pass_on_when_their_holder_dies(first, second, false).await;
    }
}

mod postgres {
    use super::*;
    cairn_events::event_store_suite!(fresh_postgres());

    /// Two processes on one database: a live one's claims stay its own; a dead one's pass
    /// on at once (its advisory lock is freed with its connection).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn claims_pass_on_when_their_holder_dies() {
        let url = fresh_postgres_url().await;
        let first: Arc<dyn Store> = cairn_events::open_postgres(&url).await.unwrap();
        let second = async { cairn_events::open_postgres(&url).await.unwrap() as Arc<dyn Store> };
        cairn_events::testing::claims_pass_on_when_their_holder_dies(first, second, true).await;
    }
}

/// Events are the permanent record: a payload stored by the first schema must decode.
#[test]
fn stored_v1_message_event_stays_readable() {
    let raw: serde_json::Value =
        serde_json::from_str(include_str!("fixtures/message.posted.v1.json")).unwrap();
    let envelope = Envelope {
        position: raw["position"].as_i64().unwrap(),
        event_id: raw["event_id"].as_str().unwrap().parse().unwrap(),
        stream_id: raw["stream_id"].as_str().unwrap().to_owned(),
        version: raw["version"].as_i64().unwrap(),
        event_type: raw["event_type"].as_str().unwrap().to_owned(),
        schema_version: raw["schema_version"].as_i64().unwrap() as i32,
        payload: raw["payload"].clone(),
        occurred_at: raw["occurred_at"].as_str().unwrap().parse().unwrap(),
        metadata: serde_json::from_value::<Metadata>(raw["metadata"].clone()).unwrap(),
    };
    let message = MessagePosted::decode(&envelope).unwrap();
    assert_eq!(message.user_name, "alice");
    assert_eq!(message.hashtags[0].as_str(), "Dawn");
    assert_eq!(message.message_id.to_string(), "01J3BC4T1VQ6Y8Z2X5W7N9M0KP");
}

/// A transaction that holds the append lock and commits late must not let a later writer's
/// event become visible first: a reader at the head would otherwise skip the late one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_out_of_order_commits_are_not_skipped() {
    let url = fresh_postgres_url().await;
    let store = cairn_events::open_postgres(&url).await.unwrap();
    let event = |n: u64| NewEvent::new(&cairn_events::testing::Noted { n }, Metadata::default());
    store
        .append(AppendRequest::new(
            "note-0",
            ExpectedVersion::Any,
            vec![event(0)],
        ))
        .await
        .unwrap();

    // A slow writer: takes the append lock and inserts position 2, but does not commit yet.
    let mut slow = store.pool().begin().await.unwrap();
    sqlx::query("SELECT pg_advisory_xact_lock($1, $2)")
        .bind(LOCK_CLASS)
        .bind(APPEND_LOCK)
        .execute(&mut *slow)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO events (position, event_id, stream_id, category, version, event_type, schema_version, payload, metadata, occurred_at)
         VALUES (2, $1, 'note-slow', 'note', 1, 'test.noted', 1, '{\"n\": 1}', '{}', now())",
    )
    .bind(uuid::Uuid::now_v7())
    .execute(&mut *slow)
    .await
    .unwrap();

    // A fast writer starts after it and must wait for it.
    let fast = {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .append(AppendRequest::new(
                    "note-fast",
                    ExpectedVersion::Any,
                    vec![event(2)],
                ))
                .await
        })
    };
    // It is queued once Postgres shows it waiting for a lock in this database.
    until("the fast writer to wait for a lock", WAIT, || async {
        sqlx::query_scalar::<_, bool>(
            "SELECT EXISTS (SELECT 1 FROM pg_locks l JOIN pg_database d ON d.oid = l.database
             WHERE d.datname = current_database() AND NOT l.granted)",
        )
        .fetch_one(store.pool())
        .await
        .unwrap()
    })
    .await;
    assert!(
        !fast.is_finished(),
        "the fast writer must queue behind the slow one"
    );
    let visible = store.read_all(1, 10, &[]).await.unwrap();
    assert!(
        visible.is_empty(),
        "nothing after position 1 is visible yet"
    );

    slow.commit().await.unwrap();
    let appended = fast.await.unwrap().unwrap();
    assert_eq!(appended.first_position, 3);
    let visible = store.read_all(1, 10, &[]).await.unwrap();
    let streams: Vec<_> = visible
        .iter()
        .map(|e| (e.position, e.stream_id.as_str()))
        .collect();
    assert_eq!(streams, [(2, "note-slow"), (3, "note-fast")]);
}

/// A second process's appends (as the CLI makes them) reach this process's subscribers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_sees_appends_from_another_connection_within_a_second() {
    let path = temp_dir().join("events.db");
    let server = cairn_events::open_sqlite(&path).await.unwrap();
    let cli = cairn_events::open_sqlite(&path).await.unwrap();
    let mut wake = cairn_events::EventStore::subscribe(&*server);
    wake.borrow_and_update();
    let appended = cairn_events::EventStore::append(
        &*cli,
        AppendRequest::new(
            "note-cli",
            ExpectedVersion::Any,
            vec![NewEvent::new(
                &cairn_events::testing::Noted { n: 1 },
                Metadata::default(),
            )],
        ),
    )
    .await
    .unwrap();
    tokio::time::timeout(Duration::from_secs(1), wake.changed())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(*wake.borrow(), appended.last_position);
}
