//! The sleeper on both event stores: items run once, at or after their time, woken early
//! by an earlier schedule, caught up after downtime, retried after a failure.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use cairn_events::testing::{fresh_postgres, fresh_sqlite, until};
use cairn_events::{
    AppendRequest, DueItem, Effects, Envelope, ExpectedVersion, Metadata, NewEvent, Store,
};
use cairn_events::{DueAction, Handled};
use cairn_scheduler::Sleeper;
use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

/// Records when each item ran. Items whose key starts with `fail` fail on their first
/// try, `broken` ones always; `noop` items have nothing to do; the rest are done by an append that drops them,
/// as a real command's would. Each item's stream is read ahead, and how many events an
/// item was handed is recorded too.
struct Recorder {
    store: Arc<dyn Store>,
    runs: Mutex<HashMap<String, Vec<DateTime<Utc>>>>,
    handed: Mutex<HashMap<String, usize>>,
}

#[async_trait]
impl DueAction for Recorder {
    async fn run(&self, item: &DueItem) -> Result<Handled, String> {
        let tries = {
            let mut runs = self.runs.lock().unwrap();
            let entry = runs.entry(item.key.clone()).or_default();
            entry.push(Utc::now());
            entry.len()
        };
        if (item.key.starts_with("fail") && tries == 1) || item.key.starts_with("broken") {
            return Err("not yet".into());
        }
        if item.key.starts_with("noop") {
            return Ok(Handled::Nothing);
        }
        let done = AppendRequest::new(item.stream_id.clone(), ExpectedVersion::Any, vec![noted(2)])
            .with_effects(Effects {
                unschedule: vec![item.key.clone()],
                ..Effects::default()
            });
        self.store.append(done).await.map_err(|e| e.to_string())?;
        Ok(Handled::Done)
    }

    async fn prefetch(&self, items: &[DueItem]) -> HashMap<String, Vec<Envelope>> {
        let streams: Vec<String> = items.iter().map(|i| i.stream_id.clone()).collect();
        self.store.read_streams(&streams).await.unwrap_or_default()
    }

    async fn run_read(&self, item: &DueItem, stream: Vec<Envelope>) -> Result<Handled, String> {
        assert!(stream.iter().all(|e| e.stream_id == item.stream_id));
        self.handed
            .lock()
            .unwrap()
            .insert(item.key.clone(), stream.len());
        self.run(item).await
    }
}

impl Recorder {
    fn runs_of(&self, key: &str) -> Vec<DateTime<Utc>> {
        self.runs
            .lock()
            .unwrap()
            .get(key)
            .cloned()
            .unwrap_or_default()
    }
}

fn noted(n: u64) -> NewEvent {
    NewEvent::new(&cairn_events::testing::Noted { n }, Metadata::default())
}

async fn schedule(store: &dyn Store, key: &str, due_at: DateTime<Utc>) {
    let request = AppendRequest::new(format!("note-{key}"), ExpectedVersion::Any, vec![noted(1)])
        .with_effects(Effects {
            schedule: vec![DueItem {
                key: key.into(),
                stream_id: format!("note-{key}"),
                action: "release".into(),
                due_at,
            }],
            ..Effects::default()
        });
    store.append(request).await.unwrap();
}

/// Start sleepers (claims held for `hold`); stopped when the token is dropped.
fn start(
    store: &Arc<dyn Store>,
    count: usize,
    hold: Duration,
) -> (Arc<Recorder>, CancellationToken) {
    let recorder = Arc::new(Recorder {
        store: store.clone(),
        runs: Mutex::default(),
        handed: Mutex::default(),
    });
    let shutdown = CancellationToken::new();
    for _ in 0..count {
        let mut sleeper = Sleeper::new(store.clone(), recorder.clone());
        sleeper.hold = hold;
        tokio::spawn(sleeper.run(shutdown.clone()));
    }
    (recorder, shutdown)
}

/// How long a sleeper may take to act.
const PATIENCE: Duration = Duration::from_secs(10);

/// Wait (bounded) until `done` holds.
async fn eventually(what: &str, done: impl Fn() -> bool) {
    until(what, PATIENCE, || std::future::ready(done())).await;
}

/// A sleeper waiting for an item an hour away is woken by an item due sooner, runs it at
/// (not before) its time, and keeps waiting for the other.
async fn woken_by_an_earlier_item(store: Arc<dyn Store>) {
    let now = Utc::now();
    schedule(&*store, "later", now + chrono::Duration::hours(1)).await;
    schedule(&*store, "first", now).await;
    let (recorder, _stop) = start(&store, 1, Duration::from_secs(60));
    // Once it has run the item due now, the sleeper goes back to sleep on "later".
    eventually("the item due now", || !recorder.runs_of("first").is_empty()).await;
    let soon = Utc::now() + chrono::Duration::milliseconds(300);
    schedule(&*store, "soon", soon).await;
    eventually("the earlier item", || !recorder.runs_of("soon").is_empty()).await;
    let ran = recorder.runs_of("soon");
    assert_eq!(ran.len(), 1);
    // Not before its time, to the millisecond the stores keep due times to.
    let soon_ms = chrono::DateTime::from_timestamp_millis(soon.timestamp_millis()).unwrap();
    assert!(
        ran[0] >= soon_ms,
        "ran at {} before its time {soon}",
        ran[0]
    );
    // Its stream was read ahead, with the round's claim, and handed to it.
    assert_eq!(recorder.handed.lock().unwrap().get("soon"), Some(&1));
    assert!(recorder.runs_of("later").is_empty());
    // Once the action's append has dropped "soon", "later" is next (to the millisecond,
    // as both stores keep times).
    let later = (now + chrono::Duration::hours(1)).timestamp_millis();
    until("\"later\" to be next due", PATIENCE, || async {
        let next = store.next_due().await.unwrap();
        next.map(|t| t.timestamp_millis()) == Some(later)
    })
    .await;
}

/// Items that fell due while no scheduler ran are all carried out once, by whichever of
/// several sleepers claims each; `noop` items are dropped by the sleeper.
async fn catches_up_once_with_several_sleepers(store: Arc<dyn Store>) {
    let past = Utc::now() - chrono::Duration::hours(3);
    let keys: Vec<String> = (0..60)
        .map(|i| {
            if i % 10 == 0 {
                format!("noop{i}")
            } else {
                format!("k{i}")
            }
        })
        .collect();
    for key in &keys {
        schedule(&*store, key, past).await;
    }
    let (recorder, _stop) = start(&store, 3, Duration::from_secs(60));
    eventually("every overdue item", || {
        keys.iter().all(|k| !recorder.runs_of(k).is_empty())
    })
    .await;
    drained(&*store).await;
    for key in &keys {
        assert_eq!(recorder.runs_of(key).len(), 1, "{key} ran once");
    }
}

/// An action that fails leaves its item claimed; it is tried again when the claim runs out.
async fn a_failed_item_is_tried_again(store: Arc<dyn Store>) {
    schedule(&*store, "fail-once", Utc::now()).await;
    let (recorder, _stop) = start(&store, 1, Duration::from_millis(300));
    eventually("a second try", || recorder.runs_of("fail-once").len() == 2).await;
    drained(&*store).await;
}

/// An item that keeps failing is tried again after as long as it has been overdue (the
/// waits double), not every claim period.
async fn a_failing_item_is_put_off(store: Arc<dyn Store>) {
    let overdue = chrono::Duration::minutes(10);
    schedule(&*store, "broken", Utc::now() - overdue).await;
    let (recorder, _stop) = start(&store, 1, Duration::from_millis(300));
    eventually("a first try", || recorder.runs_of("broken").len() == 1).await;
    let tried = recorder.runs_of("broken")[0];
    // Until then, the claim of the first try still shows (300 ms on).
    let next =
        cairn_events::testing::eventually("the failed item to be put off", PATIENCE, || async {
            let next = store.next_due().await.unwrap();
            next.filter(|next| *next > tried + chrono::Duration::seconds(60))
        })
        .await;
    assert!(
        next >= tried + overdue - chrono::Duration::seconds(5),
        "put off until {next}"
    );
}

/// Wait (bounded) until the due index is empty: the last action's drop can land just
/// after its run was recorded.
async fn drained(store: &dyn Store) {
    until("the due index to be empty", PATIENCE, || async {
        store.next_due().await.unwrap().is_none()
    })
    .await;
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

on_both_stores!(
    woken_by_an_earlier_item,
    catches_up_once_with_several_sleepers,
    a_failed_item_is_tried_again,
    a_failing_item_is_put_off
);
