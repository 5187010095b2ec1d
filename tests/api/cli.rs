//! The administrative CLI, run as a user would run it.

use crate::durability::{backend_env, cairn, start_server};
use crate::helpers::Backend;

crate::on_both_backends!(
    cli: users_and_tokens_from_the_command_line,
    rebuild_from_the_command_line_while_serving,
    dead_letters_from_the_command_line,
    senders_blocked_from_the_command_line
);

pub async fn users_and_tokens_from_the_command_line(backend: Backend) {
    let env = backend_env(backend).await;
    let (_server, base) = start_server(&env).await;
    let client = crate::helpers::http();
    let post = |token: String| {
        let (client, base) = (client.clone(), base.clone());
        async move {
            client
                .post(format!("{base}/message"))
                .header("Authorization", format!("Bearer {token}"))
                .body(r#"{"text": "from the terminal", "hashtags": ["cli"]}"#)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    // Written by another process while the server runs: picked up within a second.
    let minted = cairn(&env, &["user", "add", "mo", "--email", "mo@example.com"]).await;
    let minted = minted.lines().last().unwrap().to_owned();
    assert!(minted.starts_with("cairn_") && minted.len() >= 6 + 43);
    // A Dunder user keeps their curl line: Bearer base64(username).
    cairn(&env, &["user", "add", "nia", "--token", "bmlh"]).await;
    let mut ok = false;
    for _ in 0..40 {
        if post(minted.clone()).await == 201 && post("bmlh".into()).await == 201 {
            ok = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(
        ok,
        "tokens created by the CLI were not accepted within two seconds"
    );

    let list = cairn(&env, &["user", "list"]).await;
    assert!(list.contains("mo\t") && list.contains("mo@example.com"));
    let nia_token_line = list
        .lines()
        .skip_while(|l| !l.starts_with("nia"))
        .nth(1)
        .unwrap();
    assert!(nia_token_line.contains("WEAK"), "{list}");

    let second = cairn(&env, &["token", "add", "mo"])
        .await
        .lines()
        .last()
        .unwrap()
        .to_owned();
    cairn(&env, &["token", "revoke", &minted]).await;
    let mut refused = false;
    for _ in 0..40 {
        if post(minted.clone()).await == 401 {
            refused = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(
        refused,
        "a revoked token kept working for more than two seconds"
    );
    assert_eq!(post(second).await, 201);

    let taken = tokio::process::Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["user", "add", "MO"])
        .envs(env.iter().cloned())
        .output()
        .await
        .unwrap();
    assert!(!taken.status.success());
    assert!(String::from_utf8_lossy(&taken.stderr).contains("already exists"));
}

/// `cairn projections rebuild` from another process: the running server's projector
/// notices the reset and rebuilds; reads show the same messages afterwards.
pub async fn rebuild_from_the_command_line_while_serving(backend: Backend) {
    let env = backend_env(backend).await;
    let (_server, base) = start_server(&env).await;
    let token = cairn(&env, &["user", "add", "rae"]).await;
    let token = token.lines().last().unwrap().to_owned();
    let client = crate::helpers::http();
    let list = || async {
        let page: serde_json::Value = client
            .get(format!("{base}/message?hashtag=kept"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        page["data"].as_array().map_or(0, Vec::len)
    };
    let mut posted = 0;
    for attempt in 0..200 {
        let status = client
            .post(format!("{base}/message"))
            .header("Authorization", format!("Bearer {token}"))
            .body(format!(r#"{{"text": "n{attempt}", "hashtags": ["kept"]}}"#))
            .send()
            .await
            .unwrap()
            .status();
        if status == 201 {
            posted += 1;
            if posted == 5 {
                break;
            }
        } else {
            // The token is picked up within a second of the CLI writing it.
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
    assert_eq!(posted, 5);
    assert_eq!(list().await, 5);

    let said = cairn(&env, &["projections", "rebuild", "messages"]).await;
    assert!(said.contains("messages: reset"), "{said}");
    let mut seen = 0;
    for _ in 0..100 {
        seen = list().await;
        if seen == 5 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(seen, 5, "the rebuilt read model lacks messages");
}

/// An email the mail server refuses for good becomes a dead letter at once; the CLI lists
/// it and queues it again.
pub async fn dead_letters_from_the_command_line(backend: Backend) {
    let sink = crate::smtp::SmtpSink::refusing().await;
    let mut env = backend_env(backend).await;
    env.push(("CAIRN_SMTP_URL".into(), sink.url.clone()));
    let (_server, base) = start_server(&env).await;
    let capsule = serde_json::json!({
        "senderEmail": "nobody@example.com", "senderName": "No One",
        "recipientEmail": "nobody@example.com", "recipientName": "No One",
        "sendTime": (chrono::Utc::now() + chrono::Duration::hours(1)).timestamp_millis(),
        "text": "lost in the mail",
    });
    let status = crate::helpers::http()
        .post(format!("{base}/api/submit/text"))
        .json(&capsule)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 200);
    let mut listed = String::new();
    for _ in 0..100 {
        listed = cairn(&env, &["outbox", "dead"]).await;
        if !listed.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(listed.contains("550"), "{listed}");
    assert!(listed.contains("to nobody@example.com"), "{listed}");
    let id = listed.split('\t').next().unwrap().to_owned();
    let retried = cairn(&env, &["outbox", "retry", &id]).await;
    assert_eq!(retried.trim(), format!("{id}: queued again"));
    // Refused again, it is a dead letter again; a retry of something else says so.
    let unknown = uuid::Uuid::now_v7();
    assert_eq!(
        cairn(&env, &["outbox", "retry", &unknown.to_string()])
            .await
            .trim(),
        format!("{unknown}: not a dead letter")
    );
}

/// `cairn sender block` refuses an address's capsules while the server runs, beside the
/// configured blocklist; `unblock` lets it through again.
pub async fn senders_blocked_from_the_command_line(backend: Backend) {
    let sink = crate::smtp::SmtpSink::start().await;
    let mut env = backend_env(backend).await;
    env.push(("CAIRN_SMTP_URL".into(), sink.url.clone()));
    env.push((
        "CAIRN_BLOCKED_SENDERS".into(),
        "configured@example.com".into(),
    ));
    let (_server, base) = start_server(&env).await;
    let client = crate::helpers::http();
    let submit = |sender: &'static str| {
        let (client, base) = (client.clone(), base.clone());
        async move {
            let response = client
                .post(format!("{base}/api/submit/text"))
                .json(&serde_json::json!({
                    "senderEmail": sender, "senderName": "S",
                    "recipientEmail": "r@example.com", "recipientName": "R",
                    "sendTime": (chrono::Utc::now() + chrono::Duration::hours(1)).timestamp_millis(),
                    "text": "hello",
                }))
                .send()
                .await
                .unwrap();
            (response.status().as_u16(), response.text().await.unwrap())
        }
    };
    assert_eq!(submit("Spammer@example.com").await.0, 200);
    assert_eq!(
        cairn(&env, &["sender", "block", "spammer@EXAMPLE.com"])
            .await
            .trim(),
        "spammer@EXAMPLE.com: blocked"
    );
    assert_eq!(
        submit("Spammer@example.com").await,
        (400, "BLOCKED_SENDER_EMAIL".into())
    );
    assert_eq!(
        submit("configured@example.com").await,
        (400, "BLOCKED_SENDER_EMAIL".into())
    );
    let list = cairn(&env, &["sender", "list"]).await;
    assert!(
        list.contains("configured@example.com\tconfigured"),
        "{list}"
    );
    assert!(
        list.contains("spammer@example.com\tblocked from the command line"),
        "{list}"
    );
    cairn(&env, &["sender", "unblock", "spammer@example.com"]).await;
    assert_eq!(submit("Spammer@example.com").await.0, 200);
}
