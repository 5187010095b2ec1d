//! A backend that goes away: Redis stopped (one server, or every node of a cluster), and a
//! Postgres that stops answering (a "black hole": connections accepted, nothing said back,
//! the worst case for a client). Requests that need the missing backend answer 503 with
//! `Retry-After` instead of waiting on it, writes that do not need it keep succeeding, and
//! Cairn recovers without a restart once the backend is back.
//!
//! The server's request time limit is set to a few seconds here: an answer that waited on
//! the backend would be cut off by it (`timeout`) instead of naming the backend, so the
//! codes checked below are also what shows that nothing waited.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use cairn::Role;
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};
use tokio::sync::watch;

use crate::helpers::{Backend, PATIENCE, spawn_role, temp_dir, test_config, until};

/// Seconds a request may take before the server answers `timeout` itself.
const REQUEST_LIMIT: u64 = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_going_away_fails_reads_fast_keeps_writes_and_recovers() {
    redis_going_away(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_frozen_fails_reads_fast_keeps_writes_and_recovers() {
    redis_going_away(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_black_hole_fails_fast_everywhere_and_recovers() {
    postgres_black_hole().await;
}

/// The split production shape over a Redis of the test's own: gone, every read route
/// answers 503 with `Retry-After`, a command process still acknowledges posts (they are in
/// the event log), readiness names Redis; back, reads answer the posts. One Redis is killed
/// (its port refuses connections) and started again empty; the cluster's nodes are frozen
/// (connections accepted, nothing answered: a hung server) and then resumed.
async fn redis_going_away(cluster: bool) {
    let mut redis = OwnRedis::launch(cluster).await;
    let mut config = test_config(Backend::PostgresRedis).await;
    config.redis_url = Some(redis.url());
    config.request_timeout = REQUEST_LIMIT;
    let command = spawn_role(config.clone(), Role::Command).await;
    let query = spawn_role(config.clone(), Role::Query).await;
    let _projector = spawn_role(config.clone(), Role::Projector).await;
    let token = command.add_user("kim").await;
    let before = command.post(&token, "before", &["outage"]).await;
    query.wait_readable(&before).await;

    if cluster {
        redis.signal("-STOP").await;
    } else {
        redis.stop().await;
    }
    for path in [
        "/message?hashtag=outage".to_owned(),
        format!("/message/{before}"),
        "/trend?from_date=2026-01-01&to_date=2026-01-02&aggregation=1h".to_owned(),
        "/trends/hashtags".to_owned(),
    ] {
        // The first read may find the connection already broken or still open; either way
        // it and every later one answer that the read store is down.
        for _ in 0..2 {
            let (status, retry, body) = json_answer(&query, &path).await;
            assert_eq!(status, 503, "GET {path}: {body}");
            assert!(retry.is_some(), "GET {path} says when to retry");
            assert_eq!(body["code"], "read_store_unavailable", "GET {path}: {body}");
        }
    }
    let (status, retry, ready) = json_answer(&query, "/health/ready").await;
    assert_eq!(status, 503, "{ready}");
    assert!(retry.is_some());
    assert_eq!(ready["data"]["read_store"]["ok"], false, "{ready}");
    assert_eq!(ready["data"]["database"]["ok"], true, "{ready}");

    // Writes do not need Redis: acknowledged, and in the event log.
    let mut written = Vec::new();
    for text in ["during one", "during two"] {
        let response = command
            .post_message(&token, &json!({ "text": text, "hashtags": ["outage"] }))
            .await;
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        assert_eq!(status, 201, "{body}");
        written.push(body["data"]["id"].as_str().unwrap().to_owned());
    }
    let logged = command.events.read_all(0, 100, &["message"]).await.unwrap();
    let texts: Vec<&str> = logged
        .iter()
        .filter_map(|e| e.payload["text"].as_str())
        .collect();
    assert_eq!(texts, ["before", "during one", "during two"]);

    // Back (one Redis empty, as nothing was saved: the projector rebuilds it), reads
    // answer again.
    if cluster {
        redis.signal("-CONT").await;
    } else {
        redis.start().await;
    }
    for id in written.iter().chain([&before]) {
        query.wait_readable(id).await;
    }
    until("readiness after Redis is back", PATIENCE, || async {
        query.get("/health/ready").await.0 == 200
    })
    .await;
}

/// Postgres behind a proxy that turns into a black hole: every write route and page that
/// needs the event store answers 503 with `Retry-After`, readiness names the database; the
/// proxy forwarding again, writes succeed again.
async fn postgres_black_hole() {
    let mut config = test_config(Backend::PostgresRedis).await;
    let database = config.database_url.clone().unwrap();
    let hole = BlackHole::start(upstream_of(&database)).await;
    config.database_url = Some(through(&database, hole.address));
    config.request_timeout = REQUEST_LIMIT;
    let app = spawn_role(config, Role::All).await;
    let token = app.add_user("kim").await;
    app.post(&token, "before", &["outage"]).await;

    hole.swallow();
    let post = app
        .post_message(&token, &json!({ "text": "during", "hashtags": ["outage"] }))
        .await;
    let (status, retry) = (post.status(), post.headers().get("retry-after").cloned());
    let body: Value = post.json().await.unwrap();
    assert_eq!(
        (status.as_u16(), &body["code"]),
        (503, &json!("store_unavailable")),
        "{body}"
    );
    assert!(retry.is_some());

    let (status, retry, ready) = json_answer(&app, "/health/ready").await;
    assert_eq!(status, 503, "{ready}");
    assert!(retry.is_some());
    assert_eq!(ready["data"]["database"]["ok"], false, "{ready}");

    // Chronoria's routes answer its plain code, Cairn's capsule route its JSON one.
    let capsule = json!({
        "senderEmail": "ada@example.com", "senderName": "Ada",
        "recipientEmail": "ada@example.com", "recipientName": "Ada",
        "sendTime": crate::helpers::in_ms(Duration::from_secs(3600)), "text": "Dear future me"});
    let submitted = app
        .client
        .post(format!("{}/api/submit/text", app.address))
        .json(&capsule)
        .send()
        .await
        .unwrap();
    let retry = submitted.headers().get("retry-after").cloned();
    let (status, text) = (submitted.status(), submitted.text().await.unwrap());
    assert_eq!(
        (status.as_u16(), text.as_str()),
        (503, "SERVICE_UNAVAILABLE")
    );
    assert!(retry.is_some());
    let id = uuid::Uuid::now_v7();
    for path in [
        format!("/api/confirm?id={id}"),
        format!("/api/cancel?id={id}&recipientEmail=ada@example.com"),
        format!("/api/downloadlink?id={id}&recipientEmail=ada@example.com"),
        format!("/confirm/{id}"),
        format!("/cancel/{id}"),
        format!("/download/{id}"),
        format!("/capsules/{id}"),
    ] {
        let response = app
            .client
            .get(format!("{}{path}", app.address))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 503, "GET {path}");
        assert!(
            response.headers().contains_key("retry-after"),
            "GET {path} says when to retry"
        );
    }
    let refused = app
        .client
        .post(format!("{}/capsules", app.address))
        .json(&json!({
            "sender": {"email": "ada@example.com", "name": "Ada"},
            "recipient": {"email": "ada@example.com", "name": "Ada"},
            "send_at": "2099-01-01T00:00:00Z", "text": "hello"}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 503);
    assert!(refused.headers().contains_key("retry-after"));
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["code"], "store_unavailable", "{body}");

    hole.forward();
    let after = crate::helpers::eventually("a post after Postgres is back", PATIENCE, || async {
        let response = app
            .post_message(&token, &json!({ "text": "after", "hashtags": ["outage"] }))
            .await;
        if response.status() != 201 {
            return None;
        }
        let body: Value = response.json().await.ok()?;
        body["data"]["id"].as_str().map(str::to_owned)
    })
    .await;
    app.wait_readable(&after).await;
    until("readiness after Postgres is back", PATIENCE, || async {
        app.get("/health/ready").await.0 == 200
    })
    .await;
}

/// GET `path`: status, `Retry-After`, body as JSON.
async fn json_answer(app: &crate::helpers::TestApp, path: &str) -> (u16, Option<String>, Value) {
    let response = app
        .client
        .get(format!("{}{path}", app.address))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let retry = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    (status, retry, response.json().await.unwrap_or(Value::Null))
}

/// A port nothing listens on yet.
async fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap().port()
}

/// A Redis of the test's own (one server, or a three-node cluster), without persistence, so
/// that a restart brings it back empty, as a lost Redis comes back.
struct OwnRedis {
    dir: PathBuf,
    ports: Vec<u16>,
    cluster: bool,
    /// Whether the cluster was formed (its node tables saved in `dir`).
    formed: bool,
    servers: Vec<Child>,
}

impl OwnRedis {
    async fn launch(cluster: bool) -> Self {
        let dir = temp_dir();
        std::fs::create_dir_all(&dir).unwrap();
        let mut ports = Vec::new();
        for _ in 0..if cluster { 3 } else { 1 } {
            ports.push(free_port().await);
        }
        let mut redis = OwnRedis {
            dir,
            ports,
            cluster,
            formed: false,
            servers: Vec::new(),
        };
        redis.start().await;
        if cluster {
            let nodes: Vec<String> = redis
                .ports
                .iter()
                .map(|p| format!("127.0.0.1:{p}"))
                .collect();
            let created = Command::new("redis-cli")
                .args(["--cluster", "create"])
                .args(&nodes)
                .args(["--cluster-replicas", "0", "--cluster-yes"])
                .output()
                .await
                .unwrap();
            assert!(
                created.status.success(),
                "{}",
                String::from_utf8_lossy(&created.stdout)
            );
            redis.formed = true;
            redis.wait_cluster_ok().await;
        }
        redis
    }

    fn url(&self) -> String {
        let nodes: Vec<String> = self
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        if self.cluster {
            format!("redis+cluster://{}", nodes.join(","))
        } else {
            format!("redis://{}", nodes.join(","))
        }
    }

    /// Start every server (again, with the cluster's saved node table).
    async fn start(&mut self) {
        for &port in &self.ports {
            let mut command = Command::new("redis-server");
            command
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .arg("--dir")
                .arg(&self.dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true);
            if self.cluster {
                command.args([
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    &format!("nodes-{port}.conf"),
                ]);
            }
            self.servers.push(command.spawn().unwrap());
            until("the Redis server to answer", PATIENCE, || async {
                ping(port).await
            })
            .await;
        }
        if self.formed {
            self.wait_cluster_ok().await;
        }
    }

    /// Kill every server (as a crash or `SHUTDOWN NOSAVE` would: nothing kept).
    async fn stop(&mut self) {
        for mut server in self.servers.drain(..) {
            server.kill().await.unwrap();
        }
    }

    /// Send `signal` (`-STOP`, `-CONT`) to every server.
    async fn signal(&self, signal: &str) {
        for server in &self.servers {
            let pid = server.id().unwrap().to_string();
            let sent = Command::new("kill").args([signal, &pid]).status().await;
            assert!(sent.unwrap().success(), "kill {signal} {pid}");
        }
    }

    async fn wait_cluster_ok(&self) {
        for &port in &self.ports {
            until("the Redis Cluster to be ok", PATIENCE, || async {
                redis_cli(port, &["CLUSTER", "INFO"])
                    .await
                    .contains("cluster_state:ok")
            })
            .await;
        }
    }
}

async fn redis_cli(port: u16, args: &[&str]) -> String {
    Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .await
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

async fn ping(port: u16) -> bool {
    redis_cli(port, &["PING"]).await.trim() == "PONG"
}

/// Whether the proxy forwards or swallows.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Forward,
    Swallow,
}

/// A TCP proxy in front of Postgres that can turn into a black hole: while swallowing, it
/// accepts connections and says nothing, and its open connections stop carrying bytes in
/// either direction. Forwarding again, it drops the connections it held (as a restarted
/// server would have) and forwards new ones.
struct BlackHole {
    address: SocketAddr,
    mode: watch::Sender<Mode>,
}

impl BlackHole {
    async fn start(upstream: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (mode, _) = watch::channel(Mode::Forward);
        let modes = mode.clone();
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let mut mode = modes.subscribe();
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    if *mode.borrow_and_update() == Mode::Swallow {
                        let _ = mode.wait_for(|m| *m == Mode::Forward).await;
                        return;
                    }
                    let Ok(mut server) = TcpStream::connect(&upstream).await else {
                        return;
                    };
                    let swallowed = tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => false,
                        held = mode.wait_for(|m| *m == Mode::Swallow) => held.is_ok(),
                    };
                    if swallowed {
                        let _ = mode.wait_for(|m| *m == Mode::Forward).await;
                    }
                });
            }
        });
        BlackHole { address, mode }
    }

    fn swallow(&self) {
        self.mode.send_replace(Mode::Swallow);
    }

    fn forward(&self) {
        self.mode.send_replace(Mode::Forward);
    }
}

/// `host:port` of a `postgres://user@host:port/db` URL.
fn upstream_of(url: &str) -> String {
    let rest = url.split_once("://").unwrap().1;
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    rest.split('/').next().unwrap().to_owned()
}

/// The same URL, through `address`.
fn through(url: &str, address: SocketAddr) -> String {
    url.replacen(&upstream_of(url), &address.to_string(), 1)
}
