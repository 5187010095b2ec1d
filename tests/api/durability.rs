//! Nothing acknowledged is lost: `kill -9` mid-load, and Redis losing its keys.

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use redis::AsyncCommands;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::Mutex;

use crate::helpers::{Backend, redis_url, spawn_app, temp_dir};

crate::on_both_backends!(durability: kill_9_loses_no_acknowledged_message);

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
        env.push((
            "CAIRN_REDIS_PREFIX".into(),
            format!("cairn_t_{}", uuid::Uuid::now_v7().simple()),
        ));
    }
    env
}

/// Run a `cairn` subcommand to completion; returns stdout.
pub async fn cairn(env: &[(String, String)], args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(args)
        .envs(env.iter().cloned())
        .env_remove("CAIRN_CONFIG")
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "cairn {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// Start `cairn serve` on a free port; returns the child and its base URL.
pub async fn start_server(env: &[(String, String)]) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .arg("serve")
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

pub async fn kill_9_loses_no_acknowledged_message(backend: Backend) {
    let env = backend_env(backend).await;
    let token = cairn(&env, &["user", "add", "kim"])
        .await
        .lines()
        .last()
        .unwrap()
        .to_owned();
    let (mut server, base) = start_server(&env).await;

    let client = crate::helpers::http_builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let count = Arc::new(AtomicUsize::new(0));
    let mut posters = Vec::new();
    for p in 0..8 {
        let (client, base, token, acked, count) = (
            client.clone(),
            base.clone(),
            token.clone(),
            acked.clone(),
            count.clone(),
        );
        posters.push(tokio::spawn(async move {
            for i in 0..1000 {
                let sent = client
                    .post(format!("{base}/message"))
                    .bearer_auth(&token)
                    .json(&json!({"text": format!("poster {p} message {i}"), "hashtags": ["load"]}))
                    .send()
                    .await;
                let Ok(response) = sent else { return };
                if response.status() != 201 {
                    return;
                }
                let Ok(body) = response.json::<Value>().await else {
                    return;
                };
                acked
                    .lock()
                    .await
                    .push(body["data"]["id"].as_str().unwrap().to_owned());
                count.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    // Kill mid-load, once a good number of posts were acknowledged.
    while count.load(Ordering::SeqCst) < 200 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.start_kill().unwrap(); // SIGKILL
    server.wait().await.unwrap();
    for p in posters {
        p.await.unwrap();
    }
    let acked = acked.lock().await.clone();
    assert!(acked.len() >= 200);

    let (_server, base) = start_server(&env).await;
    for id in &acked {
        // With Redis, a message acknowledged just before the kill may still be on its way
        // into the read model after the restart: allow the projector time to get there.
        let mut status = 0;
        for _ in 0..200 {
            status = client
                .get(format!("{base}/message/{id}"))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16();
            if status == 200 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(status, 200, "acknowledged message {id} was lost");
    }
    let mut total = 0;
    let mut cursor = String::new();
    loop {
        let page: Value = client
            .get(format!(
                "{base}/message?hashtag=load&limit=1000&cursor={cursor}"
            ))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        total += page["data"].as_array().unwrap().len();
        match page["next_cursor"].as_str() {
            Some(c) => cursor = c.to_owned(),
            None => break,
        }
    }
    assert!(total >= acked.len());
}

/// Redis loses every key: the read model is rebuilt from the event store by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_flush_recovers_without_manual_action() {
    let app = spawn_app(Backend::PostgresRedis).await;
    let token = app.add_user("lee").await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(app.post(&token, &format!("m{i}"), &["kept"]).await);
    }
    ids.reverse();
    let client = redis::Client::open(redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    // SCAN, not KEYS: the server may hold many other tests' keys.
    let mut keys: Vec<String> = Vec::new();
    let mut found: redis::AsyncIter<String> = conn
        .scan_match(format!("{}:*", app.config.redis_prefix))
        .await
        .unwrap();
    while let Some(key) = found.next_item().await {
        keys.push(key.unwrap());
    }
    drop(found);
    assert!(!keys.is_empty());
    let _: () = redis::cmd("DEL")
        .arg(&keys)
        .query_async(&mut conn)
        .await
        .unwrap();
    for _ in 0..100 {
        if app.list_ids("/message?hashtag=kept").await == ids {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the read model was not rebuilt after Redis lost its keys");
}
