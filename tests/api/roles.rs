//! Production shape: separate command, query and projector processes over Postgres + Redis.

use cairn::Role;

use crate::helpers::{Backend, PATIENCE, spawn_role, test_config, until};

/// Two projector processes: one applies events, the other waits on the lease. When the
/// first stops, the standby takes the lease and is the one applying new events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_projector_takes_over_when_the_active_one_stops() {
    let config = test_config(Backend::PostgresRedis).await;
    let command = spawn_role(config.clone(), Role::Command).await;
    let query = spawn_role(config.clone(), Role::Query).await;
    let first = spawn_role(config.clone(), Role::Projector).await;
    let token = command.add_user("kim").await;

    // Only one projector so far: it is the active one.
    let before = command.post(&token, "before", &["roles"]).await;
    query.wait_readable(&before).await;

    // A projector's own lag (`/health/ready`) is how far its runner has applied the log:
    // a standby's runner has applied nothing, so it stays behind by the whole log.
    let standby = spawn_role(config.clone(), Role::Projector).await;
    let during = command.post(&token, "during", &["roles"]).await;
    query.wait_readable(&during).await;
    until("the first projector to be caught up", PATIENCE, || async {
        first.projection_lag().await == 0
    })
    .await;
    assert!(
        standby.projection_lag().await > 0,
        "the standby applies nothing while the first holds the lease"
    );

    first.stop().await;
    assert!(
        first
            .client
            .get(format!("{}/health/live", first.address))
            .send()
            .await
            .is_err(),
        "the first projector's process has stopped"
    );
    // Only the standby is left to apply this one.
    let after = command.post(&token, "after", &["roles"]).await;
    query.wait_readable(&after).await;
    until("the standby to apply the new event", PATIENCE, || async {
        standby.projection_lag().await == 0
    })
    .await;
    // The body and the index entries are separate writes: wait for the listing too.
    let expected = [after, during, before];
    until("the listing to show every message", PATIENCE, || async {
        query.list_ids("/message?hashtag=roles").await == expected
    })
    .await;
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
