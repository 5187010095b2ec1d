//! Nothing acknowledged is lost: `kill -9` mid-load, and Redis losing its keys.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use redis::AsyncCommands;
use serde_json::{Value, json};
use tokio::sync::Mutex;

use crate::helpers::{
    Backend, PATIENCE, backend_env, cairn_user_add, redis_url, spawn_app, start_server, until,
};

crate::on_both_backends!(durability: kill_9_loses_no_acknowledged_message);

pub async fn kill_9_loses_no_acknowledged_message(backend: Backend) {
    let env = backend_env(backend).await;
    let token = cairn_user_add(&env, &["kim"]).await;
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
    until(
        "200 acknowledged posts",
        Duration::from_secs(60),
        || async { count.load(Ordering::SeqCst) >= 200 },
    )
    .await;
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
        until(
            &format!("acknowledged message {id} to be readable"),
            PATIENCE,
            || async {
                let response = client.get(format!("{base}/message/{id}")).send().await;
                response.unwrap().status() == 200
            },
        )
        .await;
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
    until(
        "the read model to be rebuilt after Redis lost its keys",
        PATIENCE,
        || async {
            // Meanwhile: "rebuilding", never a partial list.
            let (status, body) = app.get("/message?hashtag=kept").await;
            if status == 503 {
                assert_eq!(body["code"], "read_model_rebuilding", "{body}");
                return false;
            }
            assert_eq!(status, 200, "{body}");
            assert_eq!(app.list_ids("/message?hashtag=kept").await, ids);
            true
        },
    )
    .await;
}
