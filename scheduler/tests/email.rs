//! The email worker on both event stores: each email that names a stream has its sending
//! recorded there ([`EmailSent`]) before it is settled; one that names none records
//! nothing; one whose record the store refuses is still settled as sent, not sent again.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use cairn_events::domain::email::{Email, EmailSent, OUTBOX_KIND};
use cairn_events::testing::{Noted, fresh_postgres, fresh_sqlite, temp_dir, until};
use cairn_events::{
    AppendRequest, DomainEvent, Effects, ExpectedVersion, Metadata, NewEvent, OutboxMessage, Store,
};
use cairn_scheduler::{EmailDelivery, FileMailer, OutboxWorker};
use chrono::Utc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const PATIENCE: Duration = Duration::from_secs(15);

fn email(n: u32, record_in: Option<&str>) -> (Uuid, OutboxMessage) {
    let id = Uuid::now_v7();
    let email = Email {
        to: format!("person{n}@example.com"),
        to_name: None,
        subject: format!("email {n}"),
        text: "hello".into(),
        html: "<p>hello</p>".into(),
        message_id: format!("<{}@cairn.example>", id.simple()),
        record_in: record_in.map(str::to_owned),
        purpose: record_in.map(|_| "delivery".to_owned()),
        occurrence: record_in.map(|_| n),
    };
    (id, email.into_outbox(id))
}

async fn sends_are_recorded_in_the_streams_they_name(store: Arc<dyn Store>) {
    let (recorded, first) = email(1, Some("capsule-a"));
    let (_, unrecorded) = email(2, None);
    // A stream name the store refuses: the email goes, and is not sent again for it.
    let (_, refused) = email(3, Some(""));
    let queue = AppendRequest::new(
        "capsule-a",
        ExpectedVersion::NoStream,
        vec![NewEvent::new(&Noted { n: 1 }, Metadata::default())],
    )
    .with_effects(Effects {
        outbox: vec![first, unrecorded, refused],
        ..Effects::default()
    });
    store.append(queue).await.unwrap();

    let dir = temp_dir();
    let from = "Cairn <cairn@localhost>".parse().unwrap();
    let emails = EmailDelivery {
        events: store.clone(),
        mailer: Arc::new(FileMailer::new(dir.clone(), from)),
    };
    let worker = OutboxWorker::new(store.clone(), Arc::new(emails));
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(worker.run(shutdown.clone()));
    until("three emails to be written", PATIENCE, || async {
        std::fs::read_dir(&dir).map_or(0, |entries| {
            entries
                .filter(|e| {
                    e.as_ref()
                        .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "eml"))
                })
                .count()
        }) == 3
    })
    .await;
    until("the sending to be recorded", PATIENCE, || async {
        store.read_stream("capsule-a").await.unwrap().len() == 2
    })
    .await;
    // A batch in progress is finished and settled before the worker stops.
    shutdown.cancel();
    tokio::time::timeout(PATIENCE, running)
        .await
        .unwrap()
        .unwrap();

    let stream = store.read_stream("capsule-a").await.unwrap();
    let sent = &stream[1];
    assert_eq!(sent.event_type, EmailSent::TYPE);
    assert_eq!(sent.metadata.actor.as_deref(), Some("email-worker"));
    assert_eq!(
        EmailSent::decode(sent).unwrap(),
        EmailSent {
            outbox_id: recorded,
            message_id: format!("<{}@cairn.example>", recorded.simple()),
            purpose: Some("delivery".into()),
            retries: 0,
            occurrence: Some(1),
        }
    );
    let everything = store.read_all(0, 100, &[]).await.unwrap();
    assert_eq!(everything.len(), 2, "nothing recorded for the others");
    // All three settled as sent: none is waiting for a retry, none is dead.
    let later = Utc::now() + chrono::Duration::days(2);
    let waiting = store
        .claim_outbox(OUTBOX_KIND, later, 10, Duration::from_secs(1))
        .await
        .unwrap();
    assert!(waiting.is_empty(), "{waiting:?}");
    assert!(store.dead_letters(10).await.unwrap().is_empty());
}

macro_rules! on_both_stores {
    ($($name:ident),*) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::fresh_sqlite().await).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::fresh_postgres().await).await;
                }
            )*
        }
    };
}

on_both_stores!(sends_are_recorded_in_the_streams_they_name);
