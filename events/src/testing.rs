//! The behaviour suite every event store must pass. Each function takes a fresh, empty
//! store and panics on the first broken promise; the integration tests call them for
//! SQLite and for Postgres.
//!
//! Beside it, what every crate's tests share, so that there is one copy of each: where the
//! test backends are and fresh, isolated storage on them (`backends`), and waiting for a
//! condition with a deadline instead of sleeping and hoping (`wait`).
#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use chrono::{DateTime, Utc};

mod backends;
mod wait;

pub use backends::{
    admin_url, fresh_postgres, fresh_postgres_url, fresh_prefix, fresh_sqlite, redis_cluster_url,
    redis_url, temp_dir,
};
pub use wait::{eventually, until};

use crate::{
    AppendRequest, DomainEvent, DueItem, Effects, EventStore, ExpectedVersion, Metadata, NewEvent,
    OutboxMessage, Outcome, Store, StoreError,
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

    // A stream after a version; snapshots kept, a later one winning over an earlier.
    let after = store.read_stream_after("note-a", 1).await.unwrap();
    assert_eq!(after.iter().map(|e| e.version).collect::<Vec<_>>(), [2, 3]);
    assert!(
        store
            .read_snapshot("note-a", "n-v1")
            .await
            .unwrap()
            .is_none()
    );
    let snapshot = |version: i64| crate::Snapshot {
        version,
        state: serde_json::json!({"seen": version}),
    };
    store
        .write_snapshot("note-a", "n-v1", &snapshot(2))
        .await
        .unwrap();
    store
        .write_snapshot("note-a", "n-v1", &snapshot(1))
        .await
        .unwrap();
    assert_eq!(
        store.read_snapshot("note-a", "n-v1").await.unwrap(),
        Some(snapshot(2))
    );
    store
        .write_snapshot("note-a", "n-v1", &snapshot(3))
        .await
        .unwrap();
    assert_eq!(
        store.read_snapshot("note-a", "n-v1").await.unwrap(),
        Some(snapshot(3))
    );
    assert!(
        store
            .read_snapshot("note-a", "n-v2")
            .await
            .unwrap()
            .is_none()
    );

    // Several streams at once, each whole and in order; one with no events left out.
    let wanted = ["other-b", "missing-x", "note-a"].map(String::from);
    let streams = store.read_streams(&wanted).await.unwrap();
    assert_eq!(streams.len(), 2);
    assert_eq!(streams["note-a"], stream);
    assert_eq!(
        streams["other-b"]
            .iter()
            .map(|e| (e.version, e.position))
            .collect::<Vec<_>>(),
        [(1, 3)]
    );
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

/// A request writing several streams commits all of them or none: a conflict on any one
/// of them fails it whole, and of concurrent requests opening the same further stream
/// exactly one wins, in one group-committed transaction or in several.
pub async fn several_streams_in_one_append(store: Arc<dyn EventStore>) {
    let first = store
        .append(
            request("note-m", ExpectedVersion::NoStream, &[1, 2]).and_stream(
                "claim-x",
                ExpectedVersion::NoStream,
                vec![noted(3)],
            ),
        )
        .await
        .unwrap();
    assert_eq!(
        (
            first.stream_id.as_str(),
            first.version,
            first.first_position,
            first.last_position
        ),
        ("note-m", 2, 1, 3)
    );
    let claim = store.read_stream("claim-x").await.unwrap();
    assert_eq!(
        claim
            .iter()
            .map(|e| (e.version, e.position))
            .collect::<Vec<_>>(),
        [(1, 3)]
    );

    let taken = store
        .append(
            request("note-n", ExpectedVersion::NoStream, &[4]).and_stream(
                "claim-x",
                ExpectedVersion::NoStream,
                vec![noted(5)],
            ),
        )
        .await;
    assert!(
        matches!(&taken, Err(StoreError::Conflict { stream_id, actual: 1, .. }) if stream_id == "claim-x"),
        "{taken:?}"
    );
    assert!(store.read_stream("note-n").await.unwrap().is_empty());
    assert_eq!(store.head().await.unwrap(), 3);

    let twice = store
        .append(request("note-o", ExpectedVersion::Any, &[6]).and_stream(
            "note-o",
            ExpectedVersion::Any,
            vec![noted(7)],
        ))
        .await;
    assert!(matches!(twice, Err(StoreError::Invalid(_))), "{twice:?}");

    let mut tasks = Vec::new();
    for i in 0..16u64 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store
                .append(
                    request(&format!("note-k{i}"), ExpectedVersion::NoStream, &[i]).and_stream(
                        "claim-y",
                        ExpectedVersion::NoStream,
                        vec![noted(i)],
                    ),
                )
                .await
                .is_ok()
        }));
    }
    let mut winners = Vec::new();
    for (i, task) in tasks.into_iter().enumerate() {
        if task.await.unwrap() {
            winners.push(i);
        }
    }
    assert_eq!(winners.len(), 1, "{winners:?}");
    for i in 0..16 {
        let own = store.read_stream(&format!("note-k{i}")).await.unwrap();
        assert_eq!(own.len(), usize::from(winners.contains(&i)), "note-k{i}");
    }
    let claim = store.read_stream("claim-y").await.unwrap();
    assert_eq!(claim.len(), 1);
    assert_eq!(Noted::decode(&claim[0]).unwrap().n, winners[0] as u64);
    // Positions stay dense.
    let all = store.read_all(0, 1000, &[]).await.unwrap();
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

/// An actor's events are read by category and position, and counted by day.
pub async fn events_by_actor(store: Arc<dyn EventStore>) {
    let at = |day: u32, actor: &str, n: u64| {
        let mut event = NewEvent::new(
            &Noted { n },
            Metadata {
                actor: Some(actor.into()),
                ..Metadata::default()
            },
        );
        event.occurred_at = chrono::NaiveDate::from_ymd_opt(2026, 11, day)
            .and_then(|d| d.and_hms_opt(23, 59, 59))
            .unwrap()
            .and_utc();
        event
    };
    let append = |stream: &str, event: NewEvent| {
        AppendRequest::new(stream, ExpectedVersion::Any, vec![event])
    };
    for (stream, event) in [
        ("note-1", at(24, "ann", 1)),
        ("note-2", at(24, "bob", 2)),
        ("other-1", at(24, "ann", 3)),
        ("note-3", at(25, "ann", 4)),
        ("note-4", at(25, "ann", 5)),
        ("note-5", at(26, "ann", 6)),
    ] {
        store.append(append(stream, event)).await.unwrap();
    }
    let ns = |events: Vec<crate::Envelope>| -> Vec<u64> {
        events.iter().map(|e| Noted::decode(e).unwrap().n).collect()
    };
    let read = |after, up_to, limit| store.read_by_actor("ann", "note", after, up_to, limit);
    assert_eq!(ns(read(0, 6, 100).await.unwrap()), [1, 4, 5, 6]);
    assert_eq!(ns(read(1, 6, 2).await.unwrap()), [4, 5]);
    assert_eq!(ns(read(0, 5, 100).await.unwrap()), [1, 4, 5], "up to 5");
    assert!(read(6, 6, 100).await.unwrap().is_empty());

    let day = |d| chrono::NaiveDate::from_ymd_opt(2026, 11, d).unwrap();
    let span = |d, count, first, last| crate::DaySpan {
        day: day(d),
        count,
        first,
        last,
    };
    let days = store.days_by_actor("ann", "note", 0, 5, 100).await.unwrap();
    assert_eq!(days, [span(24, 1, 1, 1), span(25, 2, 4, 5)]);
    // A page counts `limit` events, from after `after`.
    let days = store.days_by_actor("ann", "note", 1, 6, 2).await.unwrap();
    assert_eq!(days, [span(25, 2, 4, 5)]);
    assert!(
        store
            .days_by_actor("cy", "note", 0, 6, 100)
            .await
            .unwrap()
            .is_empty()
    );
    // A day's events come back to it across pages, also out of log order (an import).
    store
        .append(append("note-6", at(24, "ann", 7)))
        .await
        .unwrap();
    let all = [span(24, 2, 1, 7), span(25, 2, 4, 5), span(26, 1, 6, 6)];
    assert_eq!(
        crate::actor_days(&*store, "ann", "note", 7).await.unwrap(),
        all
    );
    for page in [1, 2, 3] {
        let paged = crate::actor_days_in_pages(&*store, "ann", "note", 7, page)
            .await
            .unwrap();
        assert_eq!(paged, all, "pages of {page}");
    }
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

fn due(key: &str, due_at: DateTime<Utc>) -> DueItem {
    DueItem {
        key: key.into(),
        stream_id: format!("note-{key}"),
        action: "release".into(),
        due_at,
    }
}

fn mail(n: u128) -> OutboxMessage {
    OutboxMessage {
        id: uuid::Uuid::from_u128(n),
        kind: "email".into(),
        payload: serde_json::json!({ "n": n }),
    }
}

/// Times in the suite are whole milliseconds, as both stores keep them.
fn now_ms() -> DateTime<Utc> {
    DateTime::from_timestamp_millis(Utc::now().timestamp_millis()).unwrap()
}

/// Due items and outbox messages are written with the events of an accepted append, and
/// not at all for a rejected one, also when both are in one group-committed batch.
pub async fn work_commits_with_its_events(store: Arc<dyn Store>) {
    let now = now_ms();
    let wake = store.due_changed();
    let mail_wake = store.outbox_changed();
    let soon = now + chrono::Duration::minutes(5);
    let work = |key: &str, at: DateTime<Utc>, n: u128| Effects {
        schedule: vec![due(key, at)],
        unschedule: Vec::new(),
        outbox: vec![mail(n)],
    };
    store
        .append(request("note-a", ExpectedVersion::NoStream, &[1]).with_effects(work("a", soon, 1)))
        .await
        .unwrap();
    assert!(
        wake.has_changed().unwrap(),
        "a schedule wakes the scheduler"
    );
    assert!(
        mail_wake.has_changed().unwrap(),
        "a queued message wakes the workers"
    );
    assert_eq!(store.next_due().await.unwrap(), Some(soon));

    // Many appends at once, every other one conflicting: only the accepted ones' work.
    let mut tasks = Vec::new();
    for i in 0..20_u64 {
        let store = store.clone();
        let expected = if i % 2 == 0 {
            ExpectedVersion::NoStream
        } else {
            ExpectedVersion::Exact(7) // "note-a" is at 1: rejected
        };
        let stream = if i % 2 == 0 {
            format!("note-b{i}")
        } else {
            "note-a".into()
        };
        let at = now - chrono::Duration::seconds(i as i64 + 1);
        let req = request(&stream, expected, &[i]).with_effects(work(
            &format!("b{i}"),
            at,
            100 + u128::from(i),
        ));
        tasks.push(tokio::spawn(async move { store.append(req).await }));
    }
    let mut accepted = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(_) => accepted += 1,
            Err(StoreError::Conflict { .. }) => {}
            Err(other) => panic!("unexpected {other}"),
        }
    }
    assert_eq!(accepted, 10);
    let claimed = store
        .claim_due(now, 100, Duration::from_secs(60))
        .await
        .unwrap();
    let keys: Vec<&str> = claimed.iter().map(|i| i.key.as_str()).collect();
    let expected: Vec<String> = (0..20).step_by(2).rev().map(|i| format!("b{i}")).collect();
    assert_eq!(
        keys,
        expected.iter().map(String::as_str).collect::<Vec<_>>(),
        "earliest first"
    );
    let queued = store
        .claim_outbox("email", Utc::now(), 100, Duration::from_secs(60))
        .await
        .unwrap();
    let mut ids: Vec<u128> = queued.iter().map(|m| m.message.id.as_u128()).collect();
    ids.sort_unstable();
    let mut want: Vec<u128> = std::iter::once(1)
        .chain((0..20).step_by(2).map(|i| 100 + i))
        .collect();
    want.sort_unstable();
    assert_eq!(ids, want);

    // Unscheduling and rescheduling ride on appends too.
    store
        .append(
            request("note-a", ExpectedVersion::Exact(1), &[2]).with_effects(Effects {
                unschedule: vec!["a".into()],
                ..Effects::default()
            }),
        )
        .await
        .unwrap();
    let later = now + chrono::Duration::hours(1);
    store
        .append(
            request("note-b0", ExpectedVersion::Exact(1), &[3]).with_effects(Effects {
                schedule: vec![due("b0", later)],
                ..Effects::default()
            }),
        )
        .await
        .unwrap();
    // b0 moved (and its claim with it); the rest are claimed for a minute.
    assert_eq!(
        store.next_due().await.unwrap(),
        Some(now + chrono::Duration::seconds(60)),
        "the claims run out before b0 is due"
    );
    assert!(
        store
            .claim_due(now, 100, Duration::from_secs(60))
            .await
            .unwrap()
            .is_empty()
    );
    let moved = store
        .claim_due(later, 100, Duration::from_secs(60))
        .await
        .unwrap();
    assert!(moved.iter().any(|i| i.key == "b0" && i.due_at == later));
    assert!(!moved.iter().any(|i| i.key == "a"), "a was unscheduled");
}

/// A claim hides an item until it runs out; finishing drops it, unless it moved since.
pub async fn due_items_are_claimed_once(store: Arc<dyn Store>) {
    let now = now_ms();
    let past = now - chrono::Duration::seconds(1);
    let items: Vec<DueItem> = (0..40).map(|i| due(&format!("k{i:02}"), past)).collect();
    store
        .append(
            request("note-due", ExpectedVersion::NoStream, &[1]).with_effects(Effects {
                schedule: items.clone(),
                ..Effects::default()
            }),
        )
        .await
        .unwrap();
    assert!(store.next_due().await.unwrap().is_some_and(|t| t <= now));

    // Four claimers at once: every item exactly once.
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let batch = store
                    .claim_due(now, 3, Duration::from_secs(30))
                    .await
                    .unwrap();
                if batch.is_empty() {
                    return mine;
                }
                mine.extend(batch.into_iter().map(|i| i.key));
            }
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    all.sort();
    let keys: Vec<String> = items.iter().map(|i| i.key.clone()).collect();
    assert_eq!(all, keys);
    assert_eq!(
        store.next_due().await.unwrap(),
        Some(now + chrono::Duration::seconds(30))
    );

    // A claimer that died: the claim runs out and the item comes back.
    let later = now + chrono::Duration::seconds(31);
    let again = store
        .claim_due(later, 100, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(again.len(), 40);
    for item in &again[..39] {
        store.finish_due(item).await.unwrap();
    }
    // The last one is moved before it is finished: the move stands.
    let last = again[39].clone();
    let moved = due(&last.key, now + chrono::Duration::days(1));
    store
        .append(
            request("note-due", ExpectedVersion::Exact(1), &[2]).with_effects(Effects {
                schedule: vec![moved.clone()],
                ..Effects::default()
            }),
        )
        .await
        .unwrap();
    store.finish_due(&last).await.unwrap();
    assert_eq!(store.next_due().await.unwrap(), Some(moved.due_at));
    store.finish_due(&moved).await.unwrap();
    assert_eq!(store.next_due().await.unwrap(), None);
}

/// Messages are claimed oldest first; a failed try waits for its retry time, a dead one
/// waits for a person, and sent ones are purged.
pub async fn outbox_messages_retry_and_die(store: Arc<dyn Store>) {
    let queue = |messages: Vec<OutboxMessage>, stream: &str| {
        request(stream, ExpectedVersion::Any, &[1]).with_effects(Effects {
            outbox: messages,
            ..Effects::default()
        })
    };
    store
        .append(queue(vec![mail(1), mail(2)], "note-m"))
        .await
        .unwrap();
    // The same cause again (a retried command): still one message.
    store.append(queue(vec![mail(1)], "note-m")).await.unwrap();
    let hold = Duration::from_secs(60);
    let claim = |at: DateTime<Utc>| {
        let store = store.clone();
        async move { store.claim_outbox("email", at, 10, hold).await.unwrap() }
    };
    assert!(
        store
            .claim_outbox("webhook", Utc::now(), 10, hold)
            .await
            .unwrap()
            .is_empty()
    );
    let first = claim(Utc::now()).await;
    assert_eq!(first.len(), 2);
    assert_eq!(first[0].attempts, 0);
    assert_eq!(first[0].message.payload, serde_json::json!({ "n": 1 }));
    assert!(claim(Utc::now()).await.is_empty(), "claimed for a minute");

    let retry_at = Utc::now() + chrono::Duration::seconds(10);
    store
        .settle(
            mail(1).id,
            Outcome::Retry {
                error: "451 try later".into(),
                at: retry_at,
            },
        )
        .await
        .unwrap();
    store
        .settle(
            mail(2).id,
            Outcome::Dead {
                error: "550 no such user".into(),
            },
        )
        .await
        .unwrap();
    assert!(claim(Utc::now()).await.is_empty());
    let retried = claim(retry_at + chrono::Duration::milliseconds(1)).await;
    assert_eq!(retried.len(), 1);
    assert_eq!(
        (retried[0].attempts, retried[0].last_error.as_deref()),
        (1, Some("451 try later"))
    );

    let dead = store.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].last_error.as_deref(), Some("550 no such user"));
    let wake = store.outbox_changed();
    assert!(store.revive(mail(2).id).await.unwrap());
    assert!(wake.has_changed().unwrap());
    assert!(!store.revive(mail(2).id).await.unwrap(), "no longer dead");
    assert!(store.dead_letters(10).await.unwrap().is_empty());
    let revived = claim(Utc::now()).await;
    assert_eq!((revived.len(), revived[0].attempts), (1, 0));

    store.settle(mail(1).id, Outcome::Sent).await.unwrap();
    store.settle(mail(2).id, Outcome::Sent).await.unwrap();
    assert!(
        claim(Utc::now() + chrono::Duration::days(1))
            .await
            .is_empty(),
        "sent"
    );
    assert_eq!(
        store
            .purge_sent(Utc::now() - chrono::Duration::hours(1))
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        store
            .purge_sent(Utc::now() + chrono::Duration::seconds(1))
            .await
            .unwrap(),
        2
    );
}

/// Claims are renewed while their holder works; a live holder's claims are never taken
/// by another (`live_peers`: the backend allows several processes at once); once the
/// holder is gone (dropped here, as a process killed) they are taken over at once, not
/// when they run out, and counted. `second` opens another store on the same storage; it
/// is awaited while `first` lives if `live_peers`, else after `first` is dropped.
pub async fn claims_pass_on_when_their_holder_dies(
    first: Arc<dyn Store>,
    second: impl std::future::Future<Output = Arc<dyn Store>>,
    live_peers: bool,
) {
    let now = now_ms();
    let past = now - chrono::Duration::seconds(1);
    let items: Vec<DueItem> = (0..3).map(|i| due(&format!("h{i}"), past)).collect();
    first
        .append(
            request("note-held", ExpectedVersion::NoStream, &[1]).with_effects(Effects {
                schedule: items.clone(),
                outbox: vec![mail(1), mail(2)],
                ..Effects::default()
            }),
        )
        .await
        .unwrap();
    let hold = Duration::from_secs(2);
    let claimed = first.claim_due(now, 10, hold).await.unwrap();
    assert_eq!(claimed.len(), 3);
    let keys: Vec<String> = claimed.iter().map(|i| i.key.clone()).collect();
    let sending = first
        .claim_outbox("email", Utc::now(), 10, hold)
        .await
        .unwrap();
    let ids: Vec<uuid::Uuid> = sending.iter().map(|m| m.message.id).collect();
    assert_eq!(ids.len(), 2);

    // Renewed past the first hold: still held, and the earliest time anything may be
    // claimed moves with the renewal.
    let renewed = now + chrono::Duration::seconds(60);
    assert_eq!(first.renew_due(&keys, renewed).await.unwrap(), 3);
    assert_eq!(first.next_due().await.unwrap(), Some(renewed));
    assert_eq!(first.renew_outbox(&ids, renewed).await.unwrap(), 2);
    assert_eq!(first.next_ready("email").await.unwrap(), Some(renewed));
    let later = now + chrono::Duration::seconds(30);
    assert!(first.claim_due(later, 10, hold).await.unwrap().is_empty());
    assert!(
        first
            .claim_outbox("email", later, 10, hold)
            .await
            .unwrap()
            .is_empty()
    );

    let first_holder = first.holder();
    let second = if live_peers {
        let second = second.await;
        assert_ne!(second.holder(), first_holder, "each process its own holder");
        assert!(
            second.claim_due(later, 10, hold).await.unwrap().is_empty(),
            "a live holder's claims are not taken"
        );
        assert!(
            second
                .claim_outbox("email", later, 10, hold)
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            second.renew_due(&keys, renewed).await.unwrap(),
            0,
            "only the holder renews"
        );
        drop(first);
        second
    } else {
        drop(first);
        second.await
    };

    // The holder is gone: its claims pass on now, long before they run out.
    let now = now_ms();
    let taken = eventually(
        "the dead holder's claims to pass on",
        Duration::from_secs(10),
        || {
            let second = second.clone();
            async move {
                let taken = second.claim_due(now, 10, hold).await.unwrap();
                (!taken.is_empty()).then_some(taken)
            }
        },
    )
    .await;
    let mut taken_keys: Vec<String> = taken.iter().map(|i| i.key.clone()).collect();
    taken_keys.sort();
    assert_eq!(taken_keys, keys);
    let resent = second.claim_outbox("email", now, 10, hold).await.unwrap();
    assert_eq!(resent.len(), 2);
    assert!(
        resent.iter().all(|m| m.attempts == 1),
        "the first try counts"
    );
    let mut metrics = String::new();
    second.work_stats().render(&mut metrics);
    assert!(
        metrics.contains("cairn_claims_taken_over_total{queue=\"due\"} 3"),
        "{metrics}"
    );
    assert!(
        metrics.contains("cairn_claims_taken_over_total{queue=\"outbox\"} 2"),
        "{metrics}"
    );

    // A put-off item is held by nobody: it waits for its time, whoever is alive.
    let item = &taken[0];
    let at = now + chrono::Duration::seconds(30);
    second.retry_due(item, at).await.unwrap();
    assert!(
        !second
            .claim_due(now, 10, hold)
            .await
            .unwrap()
            .iter()
            .any(|i| i.key == item.key)
    );
    let status = second.due_status(now, 10).await.unwrap();
    assert_eq!((status.depth, status.overdue), (3, 3));
    let parked = status.next.iter().find(|p| p.item.key == item.key).unwrap();
    assert_eq!((parked.claimed_by, parked.claimed_until), (None, Some(at)));
    assert!(
        status
            .next
            .iter()
            .filter(|p| p.item.key != item.key)
            .all(|p| p.claimed_by == Some(second.holder()))
    );
    let outbox = second.outbox_status().await.unwrap();
    assert_eq!((outbox.queued, outbox.dead), (2, 0));
}

/// A periodic job's item: planned once (planning again leaves it, or moves it when its
/// schedule changed and it is not yet due), then moved on by its holder after each run.
pub async fn periodic_items_are_planned_and_moved_on(store: Arc<dyn Store>) {
    let now = now_ms();
    let next = now + chrono::Duration::minutes(10);
    let item = DueItem {
        key: "maintenance:test".into(),
        stream_id: "maintenance-test".into(),
        action: "maintenance".into(),
        due_at: next,
    };
    store.plan_due(&item, now).await.unwrap();
    store.plan_due(&item, now).await.unwrap();
    assert_eq!(store.next_due().await.unwrap(), Some(next));
    // A changed schedule moves an item not yet due.
    let sooner = DueItem {
        due_at: now + chrono::Duration::minutes(5),
        ..item.clone()
    };
    store.plan_due(&sooner, now).await.unwrap();
    assert_eq!(store.next_due().await.unwrap(), Some(sooner.due_at));
    // Once due, planning leaves it: the missed run happens.
    let due_time = sooner.due_at + chrono::Duration::seconds(1);
    store.plan_due(&item, due_time).await.unwrap();
    let claimed = store
        .claim_due(due_time, 10, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(claimed, vec![sooner.clone()]);
    let after = sooner.due_at + chrono::Duration::hours(1);
    assert!(store.reschedule_due(&claimed[0], after).await.unwrap());
    assert!(
        !store.reschedule_due(&claimed[0], after).await.unwrap(),
        "moved already"
    );
    assert_eq!(store.next_due().await.unwrap(), Some(after));
    assert!(
        store
            .claim_due(due_time, 10, Duration::from_secs(5))
            .await
            .unwrap()
            .is_empty()
    );
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
        async fn several_streams_in_one_append() {
            $crate::testing::several_streams_in_one_append($fresh.await).await;
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
        async fn events_by_actor() {
            $crate::testing::events_by_actor($fresh.await).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn leases() {
            $crate::testing::leases($fresh.await).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn work_commits_with_its_events() {
            $crate::testing::work_commits_with_its_events($fresh.await).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn due_items_are_claimed_once() {
            $crate::testing::due_items_are_claimed_once($fresh.await).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn outbox_messages_retry_and_die() {
            $crate::testing::outbox_messages_retry_and_die($fresh.await).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn periodic_items_are_planned_and_moved_on() {
            $crate::testing::periodic_items_are_planned_and_moved_on($fresh.await).await;
        }
    };
}
