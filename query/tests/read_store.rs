//! Both read stores: fencing by checkpoint compare-and-set, and idempotent re-application.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use cairn_query::ReadStore;
use cairn_query::read_store::{Applied, MemoryStore, MessageFilter, RedisStore, StoredMessage};
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
    let prefix = format!("cairn_t_{}", Ulid::generate().to_string().to_lowercase());
    Arc::new(RedisStore::connect(&url, &prefix).await.unwrap())
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

#[tokio::test]
async fn memory_fencing() {
    a_stale_runner_cannot_move_the_checkpoint(Arc::new(MemoryStore::new())).await;
}

#[tokio::test]
async fn redis_fencing() {
    a_stale_runner_cannot_move_the_checkpoint(redis().await).await;
}
