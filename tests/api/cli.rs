//! The administrative CLI, run as a user would run it.

use crate::durability::{backend_env, cairn, start_server};
use crate::helpers::Backend;

crate::on_both_backends!(cli: users_and_tokens_from_the_command_line);

pub async fn users_and_tokens_from_the_command_line(backend: Backend) {
    let env = backend_env(backend).await;
    let (_server, base) = start_server(&env).await;
    let client = reqwest::Client::new();
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
