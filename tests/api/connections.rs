//! What a connection may hold, spoken to over raw TCP: a request head that never ends and
//! an idle keep-alive connection are closed after their timeouts, connections past the cap
//! wait until one closes, and a shutdown lets the request under way finish. The storage
//! backend plays no part here, so these run on the embedded one.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{Backend, PATIENCE, TestApp, spawn_with, test_config};

async fn app_with(header: u64, idle: u64, max_connections: Option<usize>) -> TestApp {
    let mut config = test_config(Backend::Embedded).await;
    config.header_timeout = header;
    config.idle_timeout = idle;
    config.max_connections = max_connections;
    spawn_with(config).await
}

async fn connect(app: &TestApp) -> TcpStream {
    TcpStream::connect(app.address.trim_start_matches("http://"))
        .await
        .unwrap()
}

const LIVE: &[u8] = b"GET /health/live HTTP/1.1\r\nHost: cairn\r\n\r\n";

/// Read until `marker` has come (`true`), or the server closed the connection (`false`).
async fn read_until(tcp: &mut TcpStream, marker: &[u8]) -> bool {
    let mut seen = Vec::new();
    let mut buf = [0; 4096];
    loop {
        match tcp.read(&mut buf).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
        if seen.windows(marker.len()).any(|w| w == marker) {
            return true;
        }
    }
}

/// Wait (at most `PATIENCE`) until the server closes the connection; whether it did.
async fn closed_by_server(tcp: &mut TcpStream) -> bool {
    let mut buf = [0; 4096];
    tokio::time::timeout(PATIENCE, async {
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_head_not_finished_in_time_is_closed() {
    let app = app_with(1, 60, None).await;
    let mut partial = connect(&app).await;
    partial
        .write_all(b"GET /health/live HTTP/1.1\r\nHost: cairn\r\nX-Slow: 1\r\n")
        .await
        .unwrap();
    let mut silent = connect(&app).await;
    assert!(closed_by_server(&mut partial).await, "a partial head");
    assert!(
        closed_by_server(&mut silent).await,
        "a connection that sends nothing"
    );
    // Others are served as before.
    assert_eq!(app.get("/health/live").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_is_kept_for_the_idle_timeout_then_closed() {
    let app = app_with(1, 5, None).await;
    let mut tcp = connect(&app).await;
    tcp.write_all(LIVE).await.unwrap();
    assert!(read_until(&mut tcp, b"\"ok\"}}").await);
    // Idle for longer than the header timeout: kept, as an idle keep-alive connection.
    tokio::time::sleep(Duration::from_secs(2)).await;
    tcp.write_all(LIVE).await.unwrap();
    assert!(
        read_until(&mut tcp, b"\"ok\"}}").await,
        "kept alive past 1 s"
    );
    assert!(closed_by_server(&mut tcp).await, "closed once idle for 5 s");
}

/// Start a `POST /message` on a new connection and send only part of its body: a request
/// under way, which the connection keeps its slot for.
async fn request_under_way(app: &TestApp, token: &str) -> (TcpStream, &'static [u8]) {
    let body: &'static [u8] = br#"{"text": "said slowly", "hashtags": []}"#;
    let mut tcp = connect(app).await;
    let head = format!(
        "POST /message HTTP/1.1\r\nHost: cairn\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    tcp.write_all(&body[..10]).await.unwrap();
    (tcp, &body[10..])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_cap_wait_until_one_closes() {
    let app = app_with(60, 60, Some(2)).await;
    let token = app.add_user("cat").await;
    // The test client's own pooled connection is closed first: two slots are free.
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(request_under_way(&app, &token).await);
    }
    let mut third = connect(&app).await;
    third.write_all(LIVE).await.unwrap();
    let early = tokio::time::timeout(
        Duration::from_millis(1500),
        read_until(&mut third, b"\"ok\"}}"),
    )
    .await;
    assert!(
        early.is_err(),
        "not served while two requests are under way"
    );
    // One request ends and its connection closes: the third is served.
    let (mut first, rest) = held.remove(0);
    first.write_all(rest).await.unwrap();
    assert!(read_until(&mut first, b"201 Created").await);
    drop(first);
    let served = tokio::time::timeout(PATIENCE, read_until(&mut third, b"\"ok\"}}")).await;
    assert_eq!(served, Ok(true), "served once one closed");
}

/// Connections that hold a slot without using it (a head dribbled out, or nothing sent)
/// give it up to a client waiting for one, long before their header timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_make_room_for_a_prompt_one_at_the_cap() {
    let app = app_with(60, 60, Some(2)).await;
    let mut slow = Vec::new();
    for _ in 0..2 {
        let mut tcp = connect(&app).await;
        tcp.write_all(b"GET / HTTP/1.1\r\nHost: cairn\r\n")
            .await
            .unwrap();
        slow.push(tcp);
    }
    let mut prompt = connect(&app).await;
    prompt.write_all(LIVE).await.unwrap();
    let served = tokio::time::timeout(PATIENCE, read_until(&mut prompt, b"\"ok\"}}")).await;
    assert_eq!(
        served,
        Ok(true),
        "served well within the 60 s header timeout"
    );
    for mut tcp in slow {
        assert!(closed_by_server(&mut tcp).await, "a slow client made room");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_the_request_under_way_finish() {
    let app = app_with(10, 60, None).await;
    let token = app.add_user("sam").await;
    let body = br#"{"text": "said while stopping", "hashtags": []}"#;
    let mut tcp = connect(&app).await;
    let head = format!(
        "POST /message HTTP/1.1\r\nHost: cairn\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    tcp.write_all(&body[..10]).await.unwrap();
    // An idle keep-alive connection does not hold the shutdown up.
    let mut idle = connect(&app).await;
    idle.write_all(LIVE).await.unwrap();
    assert!(read_until(&mut idle, b"\"ok\"}}").await);

    let stopping = tokio::spawn(async move { app.stop().await });
    assert!(
        closed_by_server(&mut idle).await,
        "the idle connection is closed"
    );
    tcp.write_all(&body[10..]).await.unwrap();
    assert!(
        read_until(&mut tcp, b"201 Created").await,
        "the POST is answered"
    );
    tokio::time::timeout(PATIENCE, stopping)
        .await
        .expect("the server stops")
        .unwrap();
}
