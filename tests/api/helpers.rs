//! `spawn_app`: a Cairn on a random port with a fresh database (or data directory) and a
//! fresh Redis key prefix, and a client with one method per endpoint.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn::{Application, Config, Role};
use cairn_command::TokenRegistry;
use cairn_command::users;
use cairn_events::{EventStore, Store};
use cairn_query::ReadBackend;
use chrono::{DateTime, Utc};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// SQLite event store, SQLite read models in the data dir.
    Embedded,
    /// Postgres event store, Redis read models.
    PostgresRedis,
    /// Postgres event store, read models in a Redis Cluster.
    PostgresRedisCluster,
}

impl Backend {
    /// The Redis URL of this backend, if it has one.
    pub fn redis_url(self) -> Option<String> {
        match self {
            Backend::Embedded => None,
            Backend::PostgresRedis => Some(redis_url()),
            Backend::PostgresRedisCluster => Some(redis_cluster_url()),
        }
    }
}

/// The test Redis Cluster (`scripts/test` starts one on ports 7101-7103).
pub fn redis_cluster_url() -> String {
    std::env::var("CAIRN_TEST_REDIS_CLUSTER_URL")
        .unwrap_or_else(|_| "redis+cluster://127.0.0.1:7101,127.0.0.1:7102,127.0.0.1:7103".into())
}

pub fn redis_url() -> String {
    std::env::var("CAIRN_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// An HTTP client for talking to Cairn (see [`cairn::install_tls_provider`]).
pub fn http() -> reqwest::Client {
    cairn::install_tls_provider();
    reqwest::Client::new()
}

pub fn http_builder() -> reqwest::ClientBuilder {
    cairn::install_tls_provider();
    reqwest::Client::builder()
}

pub fn temp_dir() -> std::path::PathBuf {
    std::env::temp_dir().join(format!("cairn-test-{}", uuid::Uuid::now_v7().simple()))
}

/// A configuration with fresh storage for `backend`.
pub async fn test_config(backend: Backend) -> Config {
    let mut config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: temp_dir(),
        ..Config::default()
    };
    if let Some(redis) = backend.redis_url() {
        config.database_url = Some(cairn_events::testing::fresh_postgres_url().await);
        config.redis_url = Some(redis);
        config.redis_prefix = format!("cairn_t_{}", uuid::Uuid::now_v7().simple());
    }
    config
}

pub struct TestApp {
    pub address: String,
    /// "Now" for the read routes; `None` is the wall clock.
    pub now: Arc<Mutex<Option<DateTime<Utc>>>>,
    pub client: reqwest::Client,
    pub config: Config,
    pub events: Arc<dyn EventStore>,
    pub store: Arc<dyn Store>,
    pub read: Arc<dyn ReadBackend>,
    tokens: Arc<TokenRegistry>,
    shutdown: CancellationToken,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub async fn spawn_app(backend: Backend) -> TestApp {
    spawn_with(test_config(backend).await).await
}

pub async fn spawn_with(config: Config) -> TestApp {
    spawn_role(config, Role::All).await
}

/// A process playing only `role` (separate roles need Postgres and Redis).
pub async fn spawn_role(config: Config, role: Role) -> TestApp {
    let shutdown = CancellationToken::new();
    let now: Arc<Mutex<Option<DateTime<Utc>>>> = Arc::default();
    let set = now.clone();
    let clock = Arc::new(move || {
        set.lock()
            .unwrap_or_else(|p| p.into_inner())
            .unwrap_or_else(Utc::now)
    });
    let app = Application::build_with_clock(&config, role, shutdown.clone(), clock)
        .await
        .unwrap();
    let address = format!("http://{}", app.address());
    let (events, store, read, tokens) = (app.events(), app.store(), app.read_store(), app.tokens());
    tokio::spawn(app.run());
    TestApp {
        address,
        now,
        client: http_builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap(),
        config,
        events,
        store,
        read,
        tokens,
        shutdown,
    }
}

impl TestApp {
    /// Stop this process's server and background roles, as SIGTERM would.
    pub fn stop(&self) {
        self.shutdown.cancel();
    }

    /// Create a user as `cairn user add` does and wait until its token is accepted.
    pub async fn add_user(&self, name: &str) -> String {
        let written = users::add_user(&*self.events, name, None, None, None)
            .await
            .unwrap();
        assert!(
            self.tokens
                .wait_for(written.position, Duration::from_secs(10))
                .await
        );
        written.value
    }

    /// Wait until the token registry has seen everything appended so far.
    pub async fn sync_tokens(&self) {
        let head = self.events.head().await.unwrap();
        assert!(self.tokens.wait_for(head, Duration::from_secs(10)).await);
    }

    pub async fn post_message(&self, token: &str, body: &Value) -> reqwest::Response {
        self.client
            .post(format!("{}/message", self.address))
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .unwrap()
    }

    /// Post and return the new id, asserting success.
    pub async fn post(&self, token: &str, text: &str, tags: &[&str]) -> String {
        let response = self
            .post_message(
                token,
                &serde_json::json!({ "text": text, "hashtags": tags }),
            )
            .await;
        assert_eq!(response.status(), 201);
        let body: Value = response.json().await.unwrap();
        body["data"]["id"].as_str().unwrap().to_owned()
    }

    pub async fn get(&self, path_and_query: &str) -> (u16, Value) {
        let response = self
            .client
            .get(format!("{}{path_and_query}", self.address))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Ids of a listing, in the order given.
    pub async fn list_ids(&self, path_and_query: &str) -> Vec<String> {
        let (status, body) = self.get(path_and_query).await;
        assert_eq!(status, 200, "{body}");
        body["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap().to_owned())
            .collect()
    }

    /// Wait until every read model has applied every message appended so far.
    pub async fn wait_projected(&self) {
        for projection in ["messages", "trends"] {
            self.wait_for_projection(projection).await;
        }
    }

    async fn wait_for_projection(&self, projection: &str) {
        for _ in 0..1000 {
            let at = self.read.checkpoint(projection).await.unwrap();
            if self
                .events
                .read_all(at, 1, &["message"])
                .await
                .unwrap()
                .is_empty()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the {projection} projection did not catch up");
    }
}
