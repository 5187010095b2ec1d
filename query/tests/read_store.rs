//! Both read stores: fencing by checkpoint compare-and-set, and idempotent re-application.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use cairn_query::ReadStore;
use cairn_query::read_store::{
    Applied, LogIdentity, MessageFilter, RedisStore, SqliteStore, StoredMessage,
};
use ulid::Ulid;

/// Messages made later get larger ids (one millisecond apart).
fn message(text: &str) -> StoredMessage {
    static CLOCK: AtomicU64 = AtomicU64::new(1_700_000_000_000);
    StoredMessage {
        id: Ulid::from_parts(CLOCK.fetch_add(1, Ordering::Relaxed), 0),
        user_id: "u1".into(),
        user_name: "kim".into(),
        text: text.into(),
        hashtags: vec!["Fence".into()],
        created_at: chrono::Utc::now(),
    }
}

async fn redis() -> Arc<dyn ReadStore> {
    let url =
        std::env::var("CAIRN_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    redis_at(&url).await
}

async fn redis_cluster() -> Arc<dyn ReadStore> {
    let url = std::env::var("CAIRN_TEST_REDIS_CLUSTER_URL")
        .unwrap_or_else(|_| "redis+cluster://127.0.0.1:7101,127.0.0.1:7102,127.0.0.1:7103".into());
    redis_at(&url).await
}

async fn redis_at(url: &str) -> Arc<dyn ReadStore> {
    let prefix = format!("cairn_t_{}", Ulid::generate().to_string().to_lowercase());
    Arc::new(RedisStore::connect(url, &prefix).await.unwrap())
}

async fn tagged(store: &dyn ReadStore) -> Vec<String> {
    let filter = MessageFilter {
        hashtag: Some("fence".into()),
        limit: 10,
        ..MessageFilter::default()
    };
    let page = store.list_messages(&filter).await.unwrap();
    page.into_iter().map(|m| m.text).collect()
}

/// A runner that lost its lease still believes the checkpoint is where it left it: its
/// batch must not move the checkpoint, and re-applying a batch changes nothing.
async fn a_stale_runner_cannot_move_the_checkpoint(store: Arc<dyn ReadStore>) {
    let first = message("first");
    assert!(matches!(
        store
            .apply_messages(std::slice::from_ref(&first), 0, 5)
            .await
            .unwrap(),
        Applied::Done
    ));
    assert_eq!(store.checkpoint("messages").await.unwrap(), 5);

    let stale = store
        .apply_messages(&[message("late")], 0, 3)
        .await
        .unwrap();
    assert!(matches!(stale, Applied::Moved));
    assert_eq!(store.checkpoint("messages").await.unwrap(), 5);

    // The live runner re-applies the same batch after a crash: same state.
    store.apply_messages(&[first], 0, 5).await.unwrap();
    let second = message("second");
    store.apply_messages(&[second], 5, 9).await.unwrap();
    assert_eq!(store.checkpoint("messages").await.unwrap(), 9);
    let texts = tagged(&*store).await;
    assert_eq!(texts.first().map(String::as_str), Some("second"));
    assert_eq!(texts.iter().filter(|t| *t == "first").count(), 1);
}

fn read_model_file() -> std::path::PathBuf {
    std::env::temp_dir()
        .join(format!("cairn-test-{}", Ulid::generate()))
        .join("read-models.db")
}

fn log(first_event: &str, head: i64) -> LogIdentity {
    LogIdentity {
        first_event: Some(first_event.into()),
        head,
    }
}

#[tokio::test]
async fn sqlite_fencing() {
    let store = SqliteStore::open(&read_model_file(), &log("e1", 100))
        .await
        .unwrap();
    a_stale_runner_cannot_move_the_checkpoint(Arc::new(store)).await;
}

/// The file keeps the model across restarts, so a start resumes from the checkpoint.
#[tokio::test]
async fn sqlite_keeps_the_model_across_opens() {
    let path = read_model_file();
    let store = SqliteStore::open(&path, &log("e1", 10)).await.unwrap();
    store
        .apply_messages(&[message("kept")], 0, 7)
        .await
        .unwrap();
    drop(store);

    let store = SqliteStore::open(&path, &log("e1", 12)).await.unwrap();
    assert_eq!(store.checkpoint("messages").await.unwrap(), 7);
    assert_eq!(tagged(&store).await, ["kept"]);
}

/// A model built from another log (the event file was replaced, or restored from an
/// older copy) is emptied at open, so the runner rebuilds it from the log it now reads.
#[tokio::test]
async fn sqlite_forgets_a_model_of_another_log() {
    let path = read_model_file();
    let store = SqliteStore::open(&path, &log("e1", 10)).await.unwrap();
    store.apply_messages(&[message("old")], 0, 7).await.unwrap();
    drop(store);

    let store = SqliteStore::open(&path, &log("other", 50)).await.unwrap();
    assert_eq!(store.checkpoint("messages").await.unwrap(), 0);
    assert!(tagged(&store).await.is_empty());
    store.apply_messages(&[message("new")], 0, 3).await.unwrap();
    drop(store);

    // Same first event, but a log shorter than what the model has seen: an older copy.
    let store = SqliteStore::open(&path, &log("other", 2)).await.unwrap();
    assert_eq!(store.checkpoint("messages").await.unwrap(), 0);
    assert!(tagged(&store).await.is_empty());
}
#[tokio::test]
async fn redis_fencing() {
    a_stale_runner_cannot_move_the_checkpoint(redis().await).await;
}

#[tokio::test]
async fn redis_cluster_fencing() {
    a_stale_runner_cannot_move_the_checkpoint(redis_cluster().await).await;
}
