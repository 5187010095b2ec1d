//! The read-store behaviour suite on every backend, plus what only the SQLite file does.
#![allow(clippy::unwrap_used)]

use cairn_query::read_store::{
    GenerationStore, LogIdentity, MessageFilter, MessageStore, ReadBackend, ReadError, SqliteStore,
};
use cairn_query::testing::{
    fresh_redis, fresh_redis_cluster, fresh_redis_cluster_store, fresh_redis_store, fresh_sqlite,
    fresh_sqlite_store, generations_replace_a_model_whole, message, read_model_file,
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

#[tokio::test]
async fn sqlite_generations_replace_a_model_whole() {
    generations_replace_a_model_whole(fresh_sqlite_store().await).await;
}

#[tokio::test]
async fn redis_generations_replace_a_model_whole() {
    generations_replace_a_model_whole(fresh_redis_store().await).await;
}

#[tokio::test]
async fn redis_cluster_generations_replace_a_model_whole() {
    generations_replace_a_model_whole(fresh_redis_cluster_store().await).await;
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

/// A live generation of the messages model in `store`, made at once.
async fn live_messages(store: &SqliteStore) -> std::sync::Arc<dyn MessageStore> {
    let generation = store.begin_generation("messages").await.unwrap();
    assert!(
        store
            .switch_generation("messages", None, generation)
            .await
            .unwrap()
    );
    store.live("messages").await.unwrap().messages
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
    live_messages(&store)
        .await
        .apply_messages(&[message("kept", "kim", &["Fence"])], 0, 7)
        .await
        .unwrap();
    drop(store);

    let store = SqliteStore::open(&path, &log("e1", 12)).await.unwrap();
    assert_eq!(store.checkpoint("messages").await.unwrap(), 7);
    let live = store.live("messages").await.unwrap().messages;
    assert_eq!(tagged(&*live).await, ["kept"]);
}

/// A model built from another log (the event file was replaced, or restored from an
/// older copy) is emptied at open, so the runner rebuilds it from the log it now reads.
#[tokio::test]
async fn sqlite_forgets_a_model_of_another_log() {
    let path = read_model_file();
    let store = SqliteStore::open(&path, &log("e1", 10)).await.unwrap();
    live_messages(&store)
        .await
        .apply_messages(&[message("old", "kim", &["Fence"])], 0, 7)
        .await
        .unwrap();
    drop(store);

    // Forgotten: no live generation, so reads answer "rebuilding", not an empty model.
    let store = SqliteStore::open(&path, &log("other", 50)).await.unwrap();
    assert_eq!(store.checkpoint("messages").await.unwrap(), 0);
    assert!(matches!(
        store.live("messages").await,
        Err(ReadError::Rebuilding("messages"))
    ));
    let live = live_messages(&store).await;
    assert!(tagged(&*live).await.is_empty());
    live.apply_messages(&[message("new", "kim", &["Fence"])], 0, 3)
        .await
        .unwrap();
    drop((live, store));

    // Same first event, but a log shorter than what the model has seen: an older copy.
    let store = SqliteStore::open(&path, &log("other", 2)).await.unwrap();
    assert_eq!(store.checkpoint("messages").await.unwrap(), 0);
    assert!(store.live("messages").await.is_err());
    assert!(tagged(&*live_messages(&store).await).await.is_empty());
}
