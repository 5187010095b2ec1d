//! Cairn's HTTP behaviour, spoken to as `curl` would, on both backends.
#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

mod backups;
mod browser;
mod capsules;
mod cli;
mod connections;
mod durability;
mod exports;
mod files;
mod helpers;
mod history;
mod messages;
mod outages;
mod pages;
mod rebuild;
mod recurring;
mod roles;
mod schedulers;
mod service;
mod smtp;
mod trends;

/// Generate one test per scenario and backend (embedded; Postgres + Redis; Postgres +
/// Redis Cluster).
macro_rules! on_both_backends {
    ($module:ident: $($name:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    crate::$module::$name(crate::helpers::Backend::Embedded).await;
                }
            )*
        }
        mod postgres_redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    crate::$module::$name(crate::helpers::Backend::PostgresRedis).await;
                }
            )*
        }
        mod postgres_redis_cluster {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    crate::$module::$name(crate::helpers::Backend::PostgresRedisCluster).await;
                }
            )*
        }
    };
}
pub(crate) use on_both_backends;
