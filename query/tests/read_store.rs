//! The read-store behaviour suite on every backend, plus what only the SQLite file does.
#![allow(clippy::unwrap_used)]

use cairn_query::read_store::{LogIdentity, MessageFilter, MessageStore, ReadBackend, SqliteStore};
use cairn_query::testing::{
    fresh_redis, fresh_redis_cluster, fresh_sqlite, message, read_model_file,
};

mod sqlite {
    use super::*;
    cairn_query::read_store_suite!(fresh_sqlite());
}

mod redis {
    use super::*;
    cairn_query::read_store_suite!(fresh_redis());
}

mod redis_cluster {
    use super::*;
    cairn_query::read_store_suite!(fresh_redis_cluster());
}

async fn tagged(store: &dyn MessageStore) -> Vec<String> {
    let filter = MessageFilter {
        hashtag: Some("fence".into()),
        limit: 10,
        ..MessageFilter::default()
    };
    let page = store.list_messages(&filter).await.unwrap();
    page.into_iter().map(|m| m.text).collect()
}

fn log(first_event: &str, head: i64) -> LogIdentity {
    LogIdentity {
        first_event: Some(first_event.into()),
        head,
    }
}

/// The file keeps the model across restarts, so a start resumes from the checkpoint.
#[tokio::test]
async fn sqlite_keeps_the_model_across_opens() {
    let path = read_model_file();
    let store = SqliteStore::open(&path, &log("e1", 10)).await.unwrap();
    store
        .apply_messages(&[message("kept", "kim", &["Fence"])], 0, 7)
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
    store
        .apply_messages(&[message("old", "kim", &["Fence"])], 0, 7)
        .await
        .unwrap();
    drop(store);

    let store = SqliteStore::open(&path, &log("other", 50)).await.unwrap();
    assert_eq!(store.checkpoint("messages").await.unwrap(), 0);
    assert!(tagged(&store).await.is_empty());
    store
        .apply_messages(&[message("new", "kim", &["Fence"])], 0, 3)
        .await
        .unwrap();
    drop(store);

    // Same first event, but a log shorter than what the model has seen: an older copy.
    let store = SqliteStore::open(&path, &log("other", 2)).await.unwrap();
    assert_eq!(store.checkpoint("messages").await.unwrap(), 0);
    assert!(tagged(&store).await.is_empty());
}
