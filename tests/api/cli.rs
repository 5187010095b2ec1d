//! The administrative CLI, run as a user would run it.

use std::time::Duration;

use crate::helpers::{
    Backend, PATIENCE, backend_env, cairn, cairn_output, cairn_user_add, env_value, redis_delete,
    redis_query, start_server, until,
};

crate::on_both_backends!(
    cli: users_and_tokens_from_the_command_line,
    rebuild_from_the_command_line_while_serving,
    dead_letters_from_the_command_line,
    senders_blocked_from_the_command_line,
    administrative_commands_are_quiet_and_colourless,
    dunder_users_named_by_email_address,
    one_token_one_user_however_many_add_it_at_once,
    backups_from_the_command_line
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
    let minted = cairn_user_add(&env, &["mo", "--email", "mo@example.com"]).await;
    assert!(minted.starts_with("cairn_") && minted.len() >= 6 + 43);
    // A Dunder user keeps their curl line: Bearer base64(username).
    cairn(&env, &["user", "add", "nia", "--token", "bmlh"]).await;
    until(
        "tokens created by the CLI to be accepted",
        Duration::from_secs(2),
        || async { post(minted.clone()).await == 201 && post("bmlh".into()).await == 201 },
    )
    .await;

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
    until(
        "the revoked token to be refused",
        Duration::from_secs(2),
        || async { post(minted.clone()).await == 401 },
    )
    .await;
    assert_eq!(post(second).await, 201);

    let taken = cairn_output(&env, &["user", "add", "MO"]).await;
    assert!(!taken.status.success());
    assert!(String::from_utf8_lossy(&taken.stderr).contains("already exists"));
}

/// `cairn projections rebuild` from another process: the running server's projector
/// notices the reset and rebuilds the read model from the log. The model is damaged first
/// (every message's data gone, its checkpoint kept, so the projector believes it is up to
/// date and repairs nothing by itself): only a rebuild brings the messages back.
pub async fn rebuild_from_the_command_line_while_serving(backend: Backend) {
    let env = backend_env(backend).await;
    let (_server, base) = start_server(&env).await;
    let token = cairn_user_add(&env, &["rae"]).await;
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
        let ids = page["data"].as_array().unwrap().iter();
        ids.map(|m| m["id"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    let readable = |id: String| {
        let (client, base) = (client.clone(), base.clone());
        async move {
            let response = client.get(format!("{base}/message/{id}")).send().await;
            response.unwrap().status() == 200
        }
    };
    let post = |n: usize| {
        let (client, base, token) = (client.clone(), base.clone(), token.clone());
        async move {
            let response = client
                .post(format!("{base}/message"))
                .bearer_auth(&token)
                .body(format!(r#"{{"text": "n{n}", "hashtags": ["kept"]}}"#))
                .send()
                .await
                .unwrap();
            if response.status() != 201 {
                return None;
            }
            let body: serde_json::Value = response.json().await.unwrap();
            Some(body["data"]["id"].as_str().unwrap().to_owned())
        }
    };
    // The token is picked up within a second of the CLI writing it.
    let mut acknowledged = vec![
        crate::helpers::eventually("the CLI's token to be accepted", PATIENCE, || post(0)).await,
    ];
    for n in 1..5 {
        acknowledged.push(post(n).await.expect("201"));
    }
    acknowledged.reverse(); // newest first, as listed
    assert_eq!(list().await, acknowledged);

    damage_messages(&env, &acknowledged).await;
    assert_eq!(list().await, Vec::<String>::new(), "the damage shows");
    for id in &acknowledged {
        assert!(
            !readable(id.clone()).await,
            "{id} is gone before the rebuild"
        );
    }

    let said = cairn(&env, &["projections", "rebuild", "messages"]).await;
    assert!(said.contains("messages: rebuilding"), "{said}");
    until(
        "the rebuilt read model to list every acknowledged message",
        PATIENCE,
        || async { list().await == acknowledged },
    )
    .await;
    for id in &acknowledged {
        assert!(readable(id.clone()).await, "{id} is back after the rebuild");
    }
}

/// Delete the messages read model's data (bodies and indexes), keeping its checkpoint, in
/// the store the server in `env` uses: Redis keys, or rows of the embedded read-model file.
async fn damage_messages(env: &[(String, String)], ids: &[String]) {
    match env_value(env, "CAIRN_REDIS_URL") {
        Some(url) => {
            let prefix = env_value(env, "CAIRN_REDIS_PREFIX").unwrap();
            let live: u64 = redis_query(
                url,
                redis::cmd("HGET")
                    .arg(format!("{prefix}:{{messages}}:generations"))
                    .arg("live"),
            )
            .await;
            let mut keys: Vec<String> = ["ix:all", "ix:tag:kept", "ix:user:rae"]
                .iter()
                .map(|rest| format!("{prefix}:g{live}:{{messages}}:{rest}"))
                .collect();
            keys.extend(
                ids.iter()
                    .map(|id| format!("{prefix}:g{live}:{{messages}}:m:{id}")),
            );
            assert_eq!(redis_delete(url, &keys).await, keys.len(), "{keys:?}");
        }
        None => {
            use sqlx::Connection;
            let dir = env_value(env, "CAIRN_DATA_DIR").unwrap();
            let file = std::path::Path::new(dir).join("read-models.db");
            let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", file.display()))
                .await
                .unwrap();
            let live: i64 =
                sqlx::query_scalar("SELECT live FROM generations WHERE model = 'messages'")
                    .fetch_one(&mut conn)
                    .await
                    .unwrap();
            let deleted = sqlx::query(&format!("DELETE FROM g{live}_messages"))
                .execute(&mut conn)
                .await
                .unwrap()
                .rows_affected();
            assert_eq!(deleted, ids.len() as u64);
            sqlx::query(&format!("DELETE FROM g{live}_message_tags"))
                .execute(&mut conn)
                .await
                .unwrap();
            conn.close().await.unwrap();
        }
    }
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
    let listed = crate::helpers::eventually("a dead letter", PATIENCE, || async {
        let listed = cairn(&env, &["outbox", "dead"]).await;
        (!listed.is_empty()).then_some(listed)
    })
    .await;
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

/// The administrative commands print what they did and nothing else: no INFO logs (store
/// opened, migrations applied) and, their output being a pipe, no colour codes. `RUST_LOG`
/// still turns logs on, without colour.
pub async fn administrative_commands_are_quiet_and_colourless(backend: Backend) {
    let env = backend_env(backend).await;
    let run = |env: &[(String, String)],
               args: &'static [&'static str],
               rust_log: Option<&'static str>| {
        let env = env.to_vec();
        async move {
            let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_cairn"));
            command
                .args(args)
                .envs(env)
                .env_remove("CAIRN_CONFIG")
                .env_remove("NO_COLOR")
                .env_remove("RUST_LOG");
            if let Some(filter) = rust_log {
                command.env("RUST_LOG", filter);
            }
            let output = command.output().await.unwrap();
            assert!(
                output.status.success(),
                "cairn {args:?}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            let (stdout, stderr) = (
                String::from_utf8(output.stdout).unwrap(),
                String::from_utf8(output.stderr).unwrap(),
            );
            for (stream, text) in [("stdout", &stdout), ("stderr", &stderr)] {
                assert!(!text.contains('\x1b'), "cairn {args:?} {stream}: {text:?}");
            }
            (stdout, stderr)
        }
    };
    for args in [
        &["migrate"][..],
        &["user", "add", "quinn", "--email", "quinn@example.com"],
        &["token", "add", "quinn"],
        &["user", "list"],
        &["sender", "block", "spam@example.com"],
        &["sender", "list"],
        &["outbox", "dead"],
        &["projections", "rebuild"],
    ] {
        let (stdout, stderr) = run(&env, args, None).await;
        for (stream, text) in [("stdout", &stdout), ("stderr", &stderr)] {
            assert!(!text.contains("INFO"), "cairn {args:?} {stream}: {text}");
        }
    }
    // The token is still the last line, and asked for, the logs are there.
    let (stdout, _) = run(&env, &["user", "add", "rory"], None).await;
    assert!(stdout.trim().starts_with("cairn_"), "{stdout}");
    // (Migrations applied to fresh storage are logged at info.)
    let fresh = backend_env(backend).await;
    let (_, stderr) = run(&fresh, &["migrate"], Some("info")).await;
    assert!(stderr.contains("INFO"), "{stderr}");
}

/// Dunder named users by whatever its token decoded to, e-mail addresses in its own tests:
/// such a team imports each user under that name with its token, posts with its `curl`
/// line, and finds the messages by `?user_name=` written plainly or percent-encoded.
pub async fn dunder_users_named_by_email_address(backend: Backend) {
    let env = backend_env(backend).await;
    let (_server, base) = start_server(&env).await;
    let client = crate::helpers::http();
    // `printf john@example.com | base64`
    let john = "am9obkBleGFtcGxlLmNvbQ==".to_owned();
    let imported = cairn_user_add(&env, &["john@example.com", "--token", &john]).await;
    assert_eq!(imported, john);
    let ops = "amFuZStvcHNAZXhhbXBsZS5jb20=".to_owned();
    cairn_user_add(&env, &["jane+ops@example.com", "--token", &ops]).await;

    let post = |token: String, text: &'static str| {
        let (client, base) = (client.clone(), base.clone());
        async move {
            let response = client
                .post(format!("{base}/message"))
                .header("Authorization", format!("Bearer {token}"))
                .body(format!(r#"{{"text": "{text}", "hashtags": ["dunder"]}}"#))
                .send()
                .await
                .unwrap();
            if response.status() != 201 {
                return None;
            }
            let body: serde_json::Value = response.json().await.unwrap();
            Some(body["data"]["id"].as_str().unwrap().to_owned())
        }
    };
    let by_john = crate::helpers::eventually("the imported token to be accepted", PATIENCE, || {
        post(john.clone(), "from john")
    })
    .await;
    let by_jane =
        crate::helpers::eventually("the second imported token to be accepted", PATIENCE, || {
            post(ops.clone(), "from jane")
        })
        .await;

    let listed = |query: &'static str| {
        let (client, base) = (client.clone(), base.clone());
        async move {
            let response = client
                .get(format!("{base}/message?{query}"))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200, "{query}");
            let page: serde_json::Value = response.json().await.unwrap();
            page["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| {
                    let name = m["user"]["name"].as_str().unwrap();
                    (m["id"].as_str().unwrap().to_owned(), name.to_owned())
                })
                .collect::<Vec<_>>()
        }
    };
    let johns = vec![(by_john.clone(), "john@example.com".to_owned())];
    for query in [
        "user_name=john@example.com",
        "user_name=john%40example.com",
        "user_name=John@Example.COM",
        "user_name=john@example.com&hashtag=dunder",
    ] {
        assert_eq!(listed(query).await, johns, "{query}");
    }
    let janes = vec![(by_jane, "jane+ops@example.com".to_owned())];
    assert_eq!(listed("user_name=jane%2Bops%40example.com").await, janes);
    assert_eq!(listed("user_name=jane%2Bops@example.com").await, janes);
    // Exactly that name: no prefix, no other address.
    for query in [
        "user_name=john",
        "user_name=john@example",
        "user_name=jane@example.com",
    ] {
        assert!(listed(query).await.is_empty(), "{query}");
    }
    // In a query string an unencoded '+' is a space, which no name contains.
    let spaced = client
        .get(format!("{base}/message?user_name=jane+ops@example.com"))
        .send()
        .await
        .unwrap();
    assert_eq!(spaced.status(), 400);

    // Names are 1-255 characters without white space or control characters.
    let longest = format!("{}@example.com", "a".repeat(255 - 12));
    cairn(&env, &["user", "add", &longest]).await;
    for bad in ["john doe", "tab\there", &format!("a{longest}"), ""] {
        let refused = cairn_output(&env, &["user", "add", bad]).await;
        assert!(!refused.status.success(), "{bad:?}");
        let said = String::from_utf8_lossy(&refused.stderr);
        assert!(said.contains("user name"), "{bad:?}: {said}");
    }
    let list = cairn(&env, &["user", "list"]).await;
    assert!(list.contains("john@example.com\t"), "{list}");
    assert!(list.contains(&format!("{longest}\t")), "{list}");
}

/// Four `cairn user add … --token same` at once: exactly one user gets the token, the
/// others are told it is taken and exit non-zero. Revoked, it is refused for everyone and
/// cannot be issued again, to anyone.
pub async fn one_token_one_user_however_many_add_it_at_once(backend: Backend) {
    let env = backend_env(backend).await;
    let (_server, base) = start_server(&env).await;
    let client = crate::helpers::http();
    let adds = (0..4).map(|i| {
        let env = env.clone();
        async move {
            let name = format!("racer{i}");
            let output = cairn_output(&env, &["user", "add", &name, "--token", "c2FtZQ=="]).await;
            (name, output)
        }
    });
    let outcomes = futures_util::future::join_all(adds).await;
    let winners: Vec<&String> = outcomes
        .iter()
        .filter(|(_, output)| output.status.success())
        .map(|(name, _)| name)
        .collect();
    assert_eq!(winners.len(), 1, "{outcomes:?}");
    for (_, output) in outcomes.iter().filter(|(_, o)| !o.status.success()) {
        let said = String::from_utf8_lossy(&output.stderr);
        assert!(said.contains("token is already taken"), "{said}");
    }
    let winner = winners[0].clone();
    // The others left nothing behind: one user, one token.
    let list = cairn(&env, &["user", "list"]).await;
    assert_eq!(
        list.lines().filter(|l| l.starts_with("racer")).count(),
        1,
        "{list}"
    );
    assert_eq!(list.matches("  token ").count(), 1, "{list}");

    let post = || {
        let (client, base) = (client.clone(), base.clone());
        async move {
            let response = client
                .post(format!("{base}/message"))
                .header("Authorization", "Bearer c2FtZQ==")
                .body(r#"{"text": "who am I"}"#)
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            let body: serde_json::Value = response.json().await.unwrap();
            (status, body["data"]["id"].as_str().map(str::to_owned))
        }
    };
    let id = crate::helpers::eventually("the token to be accepted", PATIENCE, || async {
        match post().await {
            (201, id) => id,
            _ => None,
        }
    })
    .await;
    let message: serde_json::Value = client
        .get(format!("{base}/message/{id}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(message["data"]["user"]["name"], winner.as_str());

    cairn(&env, &["token", "revoke", "c2FtZQ=="]).await;
    until("the revoked token to be refused", PATIENCE, || async {
        post().await.0 == 401
    })
    .await;
    for args in [
        vec!["user", "add", "latecomer", "--token", "c2FtZQ=="],
        vec!["token", "add", &winner, "--token", "c2FtZQ=="],
    ] {
        let output = cairn_output(&env, &args).await;
        assert!(!output.status.success(), "{args:?}");
        let said = String::from_utf8_lossy(&output.stderr);
        assert!(said.contains("token is already taken"), "{args:?}: {said}");
    }
    assert_eq!(post().await.0, 401);
}

/// A service, its key and a resource made from the command line; a backup posted over
/// HTTP listed and downloaded from it; then deleted.
pub async fn backups_from_the_command_line(backend: Backend) {
    let env = backend_env(backend).await;
    let (_server, base) = start_server(&env).await;
    cairn_user_add(&env, &["ola"]).await;
    let service = cairn(
        &env,
        &[
            "service",
            "--user",
            "ola",
            "add",
            "bots",
            "--retention",
            "1w",
            "--auth",
        ],
    )
    .await
    .trim()
    .to_owned();
    let key = cairn(
        &env,
        &["service", "--user", "ola", "key-add", &service, "cron"],
    )
    .await
    .trim()
    .to_owned();
    assert!(key.starts_with("cairn_bk_"), "{key}");
    let upload_url = cairn(
        &env,
        &["resource", "--user", "ola", "add", &service, "facts.json"],
    )
    .await;
    let resource = upload_url.trim().rsplit('/').next().unwrap().to_owned();
    let listed = cairn(&env, &["service", "--user", "ola", "list"]).await;
    assert!(
        listed.contains("bots") && listed.contains("retention 7d") && listed.contains("auth on"),
        "{listed}"
    );

    let form = reqwest::multipart::Form::new().part(
        "backup",
        reqwest::multipart::Part::bytes(b"{\"facts\": 1}".to_vec()).file_name("facts.json"),
    );
    let response = crate::helpers::http()
        .post(format!("{base}/{resource}"))
        .header("Authorization", format!("Bearer-{key}"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);

    let list = cairn(&env, &["backup", "--user", "ola", "list", &resource]).await;
    let backup = list.split('\t').next().unwrap().to_owned();
    assert!(
        list.contains("\tjson\t") && list.contains("facts.json"),
        "{list}"
    );
    let out = crate::helpers::temp_dir().join("restored.json");
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    cairn(
        &env,
        &[
            "backup",
            "--user",
            "ola",
            "download",
            &resource,
            &backup,
            "--out",
            out.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(std::fs::read(&out).unwrap(), b"{\"facts\": 1}");
    let shown = cairn_output(&env, &["service", "--user", "ola", "show", &service]).await;
    let shown = String::from_utf8_lossy(&shown.stdout).into_owned();
    assert!(
        shown.contains("key ") && shown.contains("cron") && shown.contains("resource "),
        "{shown}"
    );

    // Another user sees none of it.
    cairn_user_add(&env, &["bo"]).await;
    let theirs = cairn_output(&env, &["backup", "--user", "bo", "list", &resource]).await;
    assert!(!theirs.status.success());
    cairn(&env, &["service", "--user", "ola", "delete", &service]).await;
    let listed = cairn(&env, &["service", "--user", "ola", "list"]).await;
    assert!(!listed.contains("bots"), "{listed}");
}
