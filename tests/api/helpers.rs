//! What every scenario shares, in one place.
//!
//! `spawn_app`: a Cairn in this process on a random port with a fresh database (or data
//! directory) and a fresh Redis key prefix, and a `TestApp` with one method per endpoint.
//! `backend_env`, `cairn` and `start_server`: the same fresh storage for `cairn` run as a
//! separate process, as an operator runs it. Waiting is done with a deadline on the
//! condition itself (`until`, `eventually`), never by sleeping and hoping.

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn::{Application, Config, Role};
use cairn_command::TokenRegistry;
use cairn_command::users;
use cairn_events::{EventStore, Store};
use cairn_query::GenerationStore;
use chrono::{DateTime, Utc};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::smtp::{Received, SmtpSink};

pub use cairn_events::testing::{
    eventually, fresh_prefix, redis_cluster_url, redis_url, temp_dir, until,
};

/// How long background work (a projection, the scheduler, another process) may take to
/// show its effect before a test gives up.
pub const PATIENCE: Duration = Duration::from_secs(15);

/// The public URL the capsule tests give Cairn: links in emails start with it.
pub const PUBLIC_URL: &str = "https://capsules.example";

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

/// An HTTP client for talking to Cairn (see [`cairn::install_tls_provider`]).
pub fn http() -> reqwest::Client {
    cairn::install_tls_provider();
    reqwest::Client::new()
}

pub fn http_builder() -> reqwest::ClientBuilder {
    cairn::install_tls_provider();
    reqwest::Client::builder()
}

/// What the capsule tests read from an email.
pub trait CapsuleEmail {
    /// The capsule id in the email's link to `page` (`https://capsules.example/confirm/<id>`).
    fn capsule_id(&self, page: &str) -> String;
}

impl CapsuleEmail for Received {
    fn capsule_id(&self, page: &str) -> String {
        let text = self.decoded();
        let marker = format!("{PUBLIC_URL}/{page}/");
        let start = text.find(&marker).expect("the link") + marker.len();
        text[start..start + 36].to_owned()
    }
}

/// A time `delay` from now, in milliseconds since the epoch (a capsule's `sendTime`).
pub fn in_ms(delay: Duration) -> i64 {
    (chrono::Utc::now() + chrono::Duration::from_std(delay).unwrap()).timestamp_millis()
}

/// A configuration with fresh storage for `backend`.
pub async fn test_config(backend: Backend) -> Config {
    let mut config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: temp_dir(),
        // Tests look at the due index; maintenance items would be in it.
        maintenance_files: "off".into(),
        maintenance_outbox: "off".into(),
        ..Config::default()
    };
    if let Some(redis) = backend.redis_url() {
        config.database_url = Some(cairn_events::testing::fresh_postgres_url().await);
        config.redis_url = Some(redis);
        config.redis_prefix = fresh_prefix();
    }
    config
}

/// A configuration with fresh storage that sends its emails to a real SMTP listener, and
/// that listener.
pub async fn mail_config(backend: Backend) -> (Config, SmtpSink) {
    let sink = SmtpSink::start().await;
    let mut config = test_config(backend).await;
    config.smtp_url = Some(sink.url.clone());
    config.public_url = PUBLIC_URL.into();
    (config, sink)
}

/// An app that sends its emails to a real SMTP listener, and that listener.
pub async fn spawn_with_mail(backend: Backend) -> (TestApp, SmtpSink) {
    let (config, sink) = mail_config(backend).await;
    (spawn_with(config).await, sink)
}

pub struct TestApp {
    pub address: String,
    /// "Now" for the read routes; `None` is the wall clock.
    pub now: Arc<Mutex<Option<DateTime<Utc>>>>,
    pub client: reqwest::Client,
    pub config: Config,
    pub events: Arc<dyn EventStore>,
    pub store: Arc<dyn Store>,
    /// The read models, in generations.
    pub read: Arc<dyn GenerationStore>,
    tokens: Arc<TokenRegistry>,
    shutdown: CancellationToken,
    server: Mutex<Option<JoinHandle<anyhow::Result<()>>>>,
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
    let clock = cairn_events::Clock::from_fn(move || {
        set.lock()
            .unwrap_or_else(|p| p.into_inner())
            .unwrap_or_else(Utc::now)
    });
    let app = Application::build_with_clock(&config, role, shutdown.clone(), clock)
        .await
        .unwrap();
    let address = format!("http://{}", app.address());
    let (events, store, read, tokens) = (app.events(), app.store(), app.read_store(), app.tokens());
    let server = tokio::spawn(app.run());
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
        server: Mutex::new(Some(server)),
    }
}

impl TestApp {
    /// Stop this process's server and background roles, as SIGTERM would, and wait until
    /// it has finished.
    pub async fn stop(&self) {
        self.shutdown.cancel();
        let server = self.server.lock().unwrap().take();
        if let Some(server) = server {
            tokio::time::timeout(PATIENCE, server)
                .await
                .expect("the app stops")
                .unwrap()
                .unwrap();
        }
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

    /// Wait until every read model has applied every message appended so far (and a
    /// rebuild under way has been made live).
    pub async fn wait_projected(&self) {
        for projection in ["messages", "trends"] {
            self.wait_for_projection(projection).await;
        }
    }

    async fn wait_for_projection(&self, projection: &str) {
        until(
            &format!("the {projection} projection to catch up"),
            PATIENCE,
            || async {
                if self
                    .read
                    .generations(projection)
                    .await
                    .unwrap()
                    .building
                    .is_some()
                {
                    return false;
                }
                let at = self.read.checkpoint(projection).await.unwrap();
                self.events
                    .read_all(at, 1, &["message"])
                    .await
                    .unwrap()
                    .is_empty()
            },
        )
        .await;
    }

    /// Wait until `GET /message/{id}` answers 200 (the projector may run in another
    /// process).
    pub async fn wait_readable(&self, id: &str) {
        until(
            &format!("message {id} to be readable"),
            PATIENCE,
            || async { self.get(&format!("/message/{id}")).await.0 == 200 },
        )
        .await;
    }

    /// How many events this process's `messages` read model is behind the log, as
    /// `/health/ready` reports it.
    pub async fn projection_lag(&self) -> i64 {
        let (_, ready) = self.get("/health/ready").await;
        ready["data"]["projection_lag_events"]
            .as_i64()
            .unwrap_or_else(|| panic!("no projection lag in {ready}"))
    }

    /// `GET {path_and_query}` (a page, a Chronoria route): the status and the body as text.
    pub async fn get_text(&self, path_and_query: &str) -> (u16, String) {
        let request = self.client.get(format!("{}{path_and_query}", self.address));
        text_of(request).await
    }

    /// `{method} {path}` with `form` as the body when there is one: the status and the text.
    pub async fn request_form(
        &self,
        method: reqwest::Method,
        path: &str,
        form: &[(&str, &str)],
    ) -> (u16, String) {
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.address));
        if !form.is_empty() {
            request = request.form(form);
        }
        text_of(request).await
    }

    /// `POST /api/submit/text`, as the Chronoria client sends a text capsule.
    pub async fn submit_text(&self, capsule: &Value) -> (u16, String) {
        let request = self
            .client
            .post(format!("{}/api/submit/text", self.address))
            .json(capsule);
        text_of(request).await
    }

    /// `POST /api/submit/file`, as the Chronoria client sends a file capsule.
    pub async fn submit_file(&self, form: reqwest::multipart::Form) -> (u16, String) {
        let request = self
            .client
            .post(format!("{}/api/submit/file", self.address))
            .multipart(form);
        text_of(request).await
    }

    /// A link Cairn made (under the public URL), pointed at this app.
    pub fn local(&self, url: &str) -> String {
        url.replace(PUBLIC_URL, &self.address)
    }
}

/// Send `request`; its status and its body as text.
pub async fn text_of(request: reqwest::RequestBuilder) -> (u16, String) {
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

/// The environment that points a `cairn` process at fresh storage for `backend`.
pub async fn backend_env(backend: Backend) -> Vec<(String, String)> {
    let mut env = vec![(
        "CAIRN_DATA_DIR".to_owned(),
        temp_dir().display().to_string(),
    )];
    if let Some(redis) = backend.redis_url() {
        env.push((
            "CAIRN_DATABASE_URL".into(),
            cairn_events::testing::fresh_postgres_url().await,
        ));
        env.push(("CAIRN_REDIS_URL".into(), redis));
        env.push(("CAIRN_REDIS_PREFIX".into(), fresh_prefix()));
    }
    env
}

/// The value of `name` in a `cairn` environment.
pub fn env_value<'a>(env: &'a [(String, String)], name: &str) -> Option<&'a str> {
    env.iter()
        .find(|(n, _)| n == name)
        .map(|(_, value)| value.as_str())
}

/// Run a `cairn` subcommand; its output, whether it succeeded or not.
pub async fn cairn_output(env: &[(String, String)], args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(args)
        .envs(env.iter().cloned())
        .env_remove("CAIRN_CONFIG")
        .output()
        .await
        .unwrap()
}

/// Run a `cairn` subcommand to completion, asserting it succeeds; returns stdout.
pub async fn cairn(env: &[(String, String)], args: &[&str]) -> String {
    let output = cairn_output(env, args).await;
    assert!(
        output.status.success(),
        "cairn {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// `cairn user add …` (`args` after `add`); the new user's token (the last line printed).
pub async fn cairn_user_add(env: &[(String, String)], args: &[&str]) -> String {
    let args: Vec<&str> = ["user", "add"].iter().chain(args).copied().collect();
    cairn(env, &args)
        .await
        .lines()
        .last()
        .expect("a token")
        .to_owned()
}

/// Start `cairn serve` on a free port; returns the child and its base URL.
pub async fn start_server(env: &[(String, String)]) -> (Child, String) {
    start_server_as(env, "all").await
}

/// Start `cairn serve --role <role>` on a free port; returns the child and its base URL.
pub async fn start_server_as(env: &[(String, String)], role: &str) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["serve", "--role", role])
        .envs(env.iter().cloned())
        .env("CAIRN_LISTEN", "127.0.0.1:0")
        .env("CAIRN_LOG_FORMAT", "json")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let address = loop {
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("the server starts")
            .unwrap()
            .expect("the server logs its address");
        if let Ok(log) = serde_json::from_str::<Value>(&line)
            && log["fields"]["message"] == "listening"
        {
            break log["fields"]["address"].as_str().unwrap().to_owned();
        }
    };
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, format!("http://{address}"))
}

/// Run `command` on the Redis (or Redis Cluster) at `url`.
pub async fn redis_query<T: redis::FromRedisValue>(url: &str, command: &redis::Cmd) -> T {
    match url.strip_prefix("redis+cluster://") {
        Some(seeds) => {
            let nodes: Vec<String> = seeds.split(',').map(|s| format!("redis://{s}")).collect();
            let client = redis::cluster::ClusterClient::new(nodes).unwrap();
            let mut conn = client.get_async_connection().await.unwrap();
            command.query_async(&mut conn).await.unwrap()
        }
        None => {
            let client = redis::Client::open(url).unwrap();
            let mut conn = client.get_multiplexed_async_connection().await.unwrap();
            command.query_async(&mut conn).await.unwrap()
        }
    }
}

/// The time to live of `key` in the Redis (or Redis Cluster) at `url`, in ms (`-2`: no
/// such key, `-1`: no expiry).
pub async fn redis_pttl(url: &str, key: &str) -> i64 {
    let mut pttl = redis::cmd("PTTL");
    pttl.arg(key);
    redis_query(url, &pttl).await
}

/// Delete `keys` from the Redis (or Redis Cluster) at `url`; how many there were. Keys
/// given together must share a hash slot when `url` is a cluster.
pub async fn redis_delete(url: &str, keys: &[String]) -> usize {
    let mut delete = redis::cmd("DEL");
    delete.arg(keys);
    let deleted: usize = match url.strip_prefix("redis+cluster://") {
        Some(seeds) => {
            let nodes: Vec<String> = seeds.split(',').map(|s| format!("redis://{s}")).collect();
            let client = redis::cluster::ClusterClient::new(nodes).unwrap();
            let mut conn = client.get_async_connection().await.unwrap();
            delete.query_async(&mut conn).await.unwrap()
        }
        None => {
            let client = redis::Client::open(url).unwrap();
            let mut conn = client.get_multiplexed_async_connection().await.unwrap();
            delete.query_async(&mut conn).await.unwrap()
        }
    };
    deleted
}

/// Connections to each node named in `url` (the one Redis, or each seed of a cluster URL,
/// which the test cluster's primaries all are).
async fn redis_nodes(url: &str) -> Vec<redis::aio::MultiplexedConnection> {
    let urls: Vec<String> = match url.strip_prefix("redis+cluster://") {
        Some(seeds) => seeds.split(',').map(|s| format!("redis://{s}")).collect(),
        None => vec![url.to_owned()],
    };
    let mut nodes = Vec::new();
    for url in urls {
        let client = redis::Client::open(url).unwrap();
        nodes.push(client.get_multiplexed_async_connection().await.unwrap());
    }
    nodes
}

/// The keys matching `pattern` on one node.
async fn node_keys(node: &mut redis::aio::MultiplexedConnection, pattern: &str) -> Vec<String> {
    let mut keys = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, found): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(node)
            .await
            .unwrap();
        keys.extend(found);
        if next == 0 {
            return keys;
        }
        cursor = next;
    }
}

/// The keys matching `pattern` in the Redis (or every node of the Redis Cluster) at `url`.
pub async fn redis_keys(url: &str, pattern: &str) -> Vec<String> {
    let mut keys = Vec::new();
    for mut node in redis_nodes(url).await {
        keys.extend(node_keys(&mut node, pattern).await);
    }
    keys
}

/// Delete every key under `prefix` (what a `FLUSHALL` does to a test's own keys, leaving
/// everyone else's); how many there were.
pub async fn redis_flush_prefix(url: &str, prefix: &str) -> usize {
    let mut deleted = 0;
    for mut node in redis_nodes(url).await {
        let keys = node_keys(&mut node, &format!("{prefix}:*")).await;
        for chunk in keys.chunks(500) {
            let mut pipe = redis::pipe();
            for key in chunk {
                pipe.del(key).ignore();
            }
            let () = pipe.query_async(&mut node).await.unwrap();
        }
        deleted += keys.len();
    }
    deleted
}

/// `method path` with `token` and a JSON body; the status and the JSON answer.
pub async fn call(
    app: &TestApp,
    token: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut request = app
        .client
        .request(method, format!("{}{path}", app.address))
        .bearer_auth(token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// A local receiver of webhook calls: each call's headers and body, answered 204.
pub async fn webhook_receiver() -> (
    String,
    std::sync::Arc<std::sync::Mutex<Vec<(axum::http::HeaderMap, String)>>>,
) {
    let calls: std::sync::Arc<std::sync::Mutex<Vec<(axum::http::HeaderMap, String)>>> =
        Default::default();
    let seen = calls.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: axum::http::HeaderMap, body: String| {
            let seen = seen.clone();
            async move {
                seen.lock().unwrap().push((headers, body));
                axum::http::StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, calls)
}
