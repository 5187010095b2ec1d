//! Where the test backends are, and fresh storage on them for each test.
//!
//! Every test gets storage no other test sees (a database, a key prefix, a directory of its
//! own), so tests run in parallel against one Postgres and one Redis without stepping on
//! each other, and a failed run leaves names a clean-up can find (`cairn_t_*`,
//! `cairn-test-*`). The addresses come from `CAIRN_TEST_*` variables, defaulting to the
//! local servers `scripts/test` starts.

use std::path::PathBuf;
use std::sync::Arc;

use crate::Store;

/// The Postgres server tests create their databases on (`CAIRN_TEST_DATABASE_URL`,
/// default the local server).
pub fn admin_url() -> String {
    std::env::var("CAIRN_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// The test Redis (`CAIRN_TEST_REDIS_URL`, default the local server).
pub fn redis_url() -> String {
    std::env::var("CAIRN_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// The test Redis Cluster (`CAIRN_TEST_REDIS_CLUSTER_URL`; `scripts/test` starts one on
/// ports 7101-7103).
pub fn redis_cluster_url() -> String {
    std::env::var("CAIRN_TEST_REDIS_CLUSTER_URL")
        .unwrap_or_else(|_| "redis+cluster://127.0.0.1:7101,127.0.0.1:7102,127.0.0.1:7103".into())
}

/// A Redis key prefix no other test uses.
pub fn fresh_prefix() -> String {
    format!("cairn_t_{}", uuid::Uuid::now_v7().simple())
}

/// A path under the system's temporary directory that nothing uses yet (not created).
pub fn temp_dir() -> PathBuf {
    std::env::temp_dir().join(format!("cairn-test-{}", uuid::Uuid::now_v7().simple()))
}

/// Create an empty database of its own for one test and return its URL. Databases are
/// named `cairn_t_*`; the test script drops leftovers before a run.
pub async fn fresh_postgres_url() -> String {
    use sqlx::Connection;
    let admin = admin_url();
    let name = format!("cairn_t_{}", uuid::Uuid::now_v7().simple());
    let mut conn = sqlx::PgConnection::connect(&admin)
        .await
        .expect("Postgres is reachable (set CAIRN_TEST_DATABASE_URL)");
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .unwrap();
    let _ = conn.close().await;
    match admin.rfind('/') {
        Some(i) if !admin[i + 1..].contains('@') => format!("{}/{name}", &admin[..i]),
        _ => format!("{admin}/{name}"),
    }
}

/// A fresh, migrated Postgres store in a database of its own.
pub async fn fresh_postgres() -> Arc<dyn Store> {
    crate::open_postgres(&fresh_postgres_url().await)
        .await
        .unwrap()
}

/// A fresh SQLite store in a temporary directory that lives as long as the process.
pub async fn fresh_sqlite() -> Arc<dyn Store> {
    crate::open_sqlite(&temp_dir().join("events.db"))
        .await
        .unwrap()
}
