//! Production shape: separate command, query and projector processes over Postgres + Redis.

use std::time::Duration;

use cairn::Role;

use crate::helpers::{Backend, spawn_role, test_config};

/// Poll `GET /message/{id}` until it answers 200 (the projector is asynchronous to reads
/// made through another process), within a generous bound.
async fn eventually_readable(query: &crate::helpers::TestApp, id: &str) {
    for _ in 0..300 {
        if query.get(&format!("/message/{id}")).await.0 == 200 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("message {id} never became readable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_projector_takes_over_when_the_active_one_stops() {
    let config = test_config(Backend::PostgresRedis).await;
    let command = spawn_role(config.clone(), Role::Command).await;
    let query = spawn_role(config.clone(), Role::Query).await;
    let first = spawn_role(config.clone(), Role::Projector).await;
    let token = command.add_user("kim").await;

    // Only one projector so far: it is the active one.
    let before = command.post(&token, "before", &["roles"]).await;
    eventually_readable(&query, &before).await;

    let standby = spawn_role(config.clone(), Role::Projector).await;
    first.stop();
    let after = command.post(&token, "after", &["roles"]).await;
    eventually_readable(&query, &after).await;
    // The body and the index entries are separate writes: wait for the listing too.
    let expected = [after, before];
    for _ in 0..300 {
        if query.list_ids("/message?hashtag=roles").await == expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(query.list_ids("/message?hashtag=roles").await, expected);
    drop(standby);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn separate_roles_need_postgres_and_redis() {
    let config = test_config(Backend::Embedded).await;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let error = cairn::Application::build(&config, Role::Query, shutdown)
        .await
        .err()
        .expect("an embedded query-only process is refused");
    assert!(error.to_string().contains("CAIRN_DATABASE_URL"), "{error}");
}
