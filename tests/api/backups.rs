//! File backups as a cron job and its owner see them: services, keys and resources made
//! over the JSON API; backups posted the way Dome's users post them (`curl -F backup=@…`),
//! every refusal in Dome's order and words; identical files stored once; downloads with
//! `Range`; one user unable to see another's.

use reqwest::multipart::{Form, Part};
use serde_json::{Value, json};

use crate::helpers::{
    Backend, PATIENCE, PUBLIC_URL, TestApp, call, spawn_with, test_config, until, webhook_receiver,
};

crate::on_both_backends!(backups:
    uploads_the_dome_way,
    refusals_come_in_domes_order,
    identical_files_are_stored_once,
    owners_see_only_their_own,
    a_cut_off_upload_leaves_nothing,
    retention_deletes_old_backups_and_their_files,
    the_owner_is_told_and_refusals_are_folded,
    a_missed_backup_is_told_and_so_is_the_return,
    files_no_backup_keeps_are_swept,
    webhooks_are_signed_the_standard_way,
    a_long_resource_is_read_from_its_snapshot,
    forwarded_addresses_count_only_from_trusted_proxies,
    a_storage_failure_is_a_424_and_records_nothing,
    backups_expire_when_their_time_comes,
);

async fn app(backend: Backend) -> TestApp {
    let mut config = test_config(backend).await;
    // The tests speak from 127.0.0.1 as a proxy would, naming clients in X-Forwarded-For.
    config.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
    config.public_url = PUBLIC_URL.into();
    spawn_with(config).await
}

/// A service with `settings` and one resource in it: (service id, resource id).
async fn service_with_resource(app: &TestApp, token: &str, settings: Value) -> (String, String) {
    let (status, service) = call(app, token, "POST", "/services", Some(settings)).await;
    assert_eq!(status, 201, "{service}");
    let service_id = service["data"]["id"].as_str().unwrap().to_owned();
    let (status, resource) = call(
        app,
        token,
        "POST",
        &format!("/services/{service_id}/resources"),
        Some(json!({"name": "facts.json", "description": "the bot's facts"})),
    )
    .await;
    assert_eq!(status, 201, "{resource}");
    let resource_id = resource["data"]["id"].as_str().unwrap().to_owned();
    assert!(
        resource["data"]["upload_url"]
            .as_str()
            .unwrap()
            .ends_with(&format!("/{resource_id}"))
    );
    (service_id, resource_id)
}

fn file_form(content: &[u8], name: &str, format: Option<&str>) -> Form {
    let form = Form::new().part(
        "backup",
        Part::bytes(content.to_vec()).file_name(name.to_owned()),
    );
    match format {
        Some(format) => form.text("format", format.to_owned()),
        None => form,
    }
}

/// `POST /{resource}` as a cron job would: the status and the JSON answer.
async fn post_backup(
    app: &TestApp,
    resource: &str,
    form: Form,
    headers: &[(&str, &str)],
) -> (u16, Value) {
    let mut request = app
        .client
        .post(format!("{}/{resource}", app.address))
        .multipart(form);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

pub async fn uploads_the_dome_way(backend: Backend) {
    let app = app(backend).await;
    let token = app.add_user("ola").await;
    let (_, resource) = service_with_resource(&app, &token, json!({"name": "bots"})).await;

    // curl -F backup=@facts.json -F format=json https://…/{resource}
    let facts = br#"{"facts": ["the sky is blue"]}"#;
    let (status, created) = post_backup(
        &app,
        &resource,
        file_form(facts, "facts.json", Some("json")),
        &[],
    )
    .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["message"], "backup created successfully");
    let backup = &created["backup"];
    assert_eq!(backup["resource"], resource.as_str());
    assert_eq!(backup["format"], "json");
    assert_eq!(backup["created_at"], backup["updated_at"]);
    assert!(backup["uuid"].as_str().unwrap().len() == 36);

    // The link in the answer opens the file without a token, and takes a Range.
    let url = app.local(backup["url"].as_str().unwrap());
    let response = app.client.get(&url).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let sha = response.headers()["x-content-sha256"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        response.headers()["content-disposition"]
            .to_str()
            .unwrap()
            .contains("facts.json")
    );
    assert_eq!(&response.bytes().await.unwrap()[..], facts);
    assert_eq!(sha.len(), 64);
    let part = app
        .client
        .get(&url)
        .header("Range", "bytes=2-6")
        .send()
        .await
        .unwrap();
    assert_eq!(part.status(), 206);
    assert_eq!(&part.bytes().await.unwrap()[..], &facts[2..7]);
    // A link altered is refused.
    let forged = url.replace("signature=", "signature=x");
    assert_eq!(app.client.get(&forged).send().await.unwrap().status(), 401);

    // Without a format it is inferred: from the name, else from the first bytes.
    let (status, created) = post_backup(
        &app,
        &resource,
        file_form(b"\x1f\x8b\x08\0rest", "dump", None),
        &[],
    )
    .await;
    assert_eq!(
        (status, created["backup"]["format"].as_str()),
        (201, Some("gz"))
    );
    let (status, created) = post_backup(
        &app,
        &resource,
        file_form(b"a,b\n1,2\n", "table.csv", None),
        &[],
    )
    .await;
    assert_eq!(
        (status, created["backup"]["format"].as_str()),
        (201, Some("csv"))
    );

    // POST / with the resource as the first label of the host name, as on Dome's
    // wildcard domain.
    let response = app
        .client
        .post(format!("{}/", app.address))
        .header("Host", format!("{resource}.backups.example"))
        .multipart(file_form(b"by host", "note.txt", Some("txt")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);

    // The owner lists them newest first, a page at a time, and downloads with the token.
    let path = format!("/resources/{resource}/backups?limit=3");
    let (status, page) = call(&app, &token, "GET", &path, None).await;
    assert_eq!(status, 200, "{page}");
    let formats: Vec<&str> = page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["format"].as_str().unwrap())
        .collect();
    assert_eq!(formats, ["txt", "csv", "gz"]);
    let cursor = page["next_cursor"].as_str().unwrap();
    let (_, rest) = call(
        &app,
        &token,
        "GET",
        &format!("{path}&cursor={cursor}"),
        None,
    )
    .await;
    assert_eq!(rest["data"].as_array().unwrap().len(), 1);
    assert_eq!(rest["data"][0]["sha256"], sha.as_str());
    assert!(rest["next_cursor"].is_null());
    let first = rest["data"][0]["id"].as_str().unwrap();
    let response = app
        .client
        .get(format!("{}/backups/{first}/file", app.address))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(&response.bytes().await.unwrap()[..], facts);
    let (status, resource_view) =
        call(&app, &token, "GET", &format!("/resources/{resource}"), None).await;
    assert_eq!(
        (status, resource_view["data"]["backups"].as_u64()),
        (200, Some(4))
    );
}

pub async fn refusals_come_in_domes_order(backend: Backend) {
    let app = app(backend).await;
    let token = app.add_user("ola").await;
    let (service, resource) = service_with_resource(
        &app,
        &token,
        json!({
            "name": "bots",
            "retention": "1w",
            "auth": {"enabled": true},
            "ip_allowlist": {"enabled": true, "ips": ["10.0.0.0/8", "2001:db8::/32", "203.0.113.7"]},
            "max_backup_bytes": 1000
        }),
    )
    .await;
    let (status, key) = call(
        &app,
        &token,
        "POST",
        &format!("/services/{service}/keys"),
        Some(json!({"name": "nightly cron"})),
    )
    .await;
    assert_eq!(status, 201, "{key}");
    let key_id = key["data"]["id"].as_str().unwrap().to_owned();
    let key = key["data"]["key"].as_str().unwrap().to_owned();
    let bearer_dash = format!("Bearer-{key}");
    let token_scheme = format!("Token {key}");
    let file = || file_form(b"{}", "facts.json", Some("json"));
    let from = |ip: &'static str| ("X-Forwarded-For", ip);

    // Unknown resource: 404, whatever else is wrong.
    let unknown = "3bb2e8c2-b07f-47c1-9f1b-33e59de1f9ff";
    let (status, body) = post_backup(&app, unknown, file(), &[]).await;
    assert_eq!(status, 404);
    assert_eq!(
        body,
        json!({"message": format!("resource with uuid {unknown} does not exist")})
    );
    let (status, _) = post_backup(&app, "not-a-uuid", file(), &[]).await;
    assert_eq!(status, 404);

    // Then the key: missing, wrong.
    let (status, body) = post_backup(&app, &resource, file(), &[from("192.0.2.1")]).await;
    assert_eq!(
        (status, body),
        (401, json!({"message": "valid api key is needed"}))
    );
    let (status, _) = post_backup(
        &app,
        &resource,
        file(),
        &[("Authorization", "Bearer-cairn_bk_wrong")],
    )
    .await;
    assert_eq!(status, 401);

    // Then an inactive resource (even from an address not allowed).
    let (status, _) = call(
        &app,
        &token,
        "PATCH",
        &format!("/resources/{resource}"),
        Some(json!({"active": false})),
    )
    .await;
    assert_eq!(status, 200);
    let (status, body) = post_backup(
        &app,
        &resource,
        file(),
        &[("Authorization", &bearer_dash), from("192.0.2.1")],
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(
        body["message"],
        format!("resource with uuid {resource} is not active")
    );
    call(
        &app,
        &token,
        "PATCH",
        &format!("/resources/{resource}"),
        Some(json!({"active": true})),
    )
    .await;

    // Then the address: the client's, as the trusted proxy names it.
    let (status, body) = post_backup(
        &app,
        &resource,
        file(),
        &[("Authorization", &bearer_dash), from("192.0.2.1")],
    )
    .await;
    assert_eq!(status, 403);
    assert_eq!(body["message"], "backups from 192.0.2.1 are not allowed");
    for allowed in ["10.1.2.3", "2001:db8:5::1", "203.0.113.7"] {
        let (status, body) = post_backup(
            &app,
            &resource,
            file(),
            &[("Authorization", &bearer_dash), from(allowed)],
        )
        .await;
        assert_eq!(status, 201, "{allowed}: {body}");
    }
    let (status, _) = post_backup(
        &app,
        &resource,
        file(),
        &[("Authorization", &token_scheme), from("203.0.113.8")],
    )
    .await;
    assert_eq!(status, 403, "a neighbour of an allowed address");

    // Then the form: no file, a bad format; then the size.
    let auth = [("Authorization", token_scheme.as_str()), from("10.0.0.1")];
    let form = Form::new().text("format", "json");
    let (status, body) = post_backup(&app, &resource, form, &auth).await;
    assert_eq!(status, 400);
    assert_eq!(body["errors"][0]["param"], "backup");
    assert_eq!(body["errors"][0]["location"], "body");
    assert!(body["errors"][0]["msg"].is_string() && body["errors"][0]["value"].is_string());
    let (status, body) = post_backup(
        &app,
        &resource,
        file_form(b"{}", "a.json", Some("js/on")),
        &auth,
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(body["errors"][0]["param"], "format");
    assert_eq!(body["errors"][0]["value"], "js/on");
    let (status, body) = post_backup(
        &app,
        &resource,
        file_form(&[b'x'; 1001], "big.txt", None),
        &auth,
    )
    .await;
    assert_eq!(status, 413, "{body}");
    assert!(body["message"].as_str().unwrap().contains("1000 bytes"));
    let (status, _) = post_backup(
        &app,
        &resource,
        file_form(&[b'x'; 1000], "fits.txt", None),
        &auth,
    )
    .await;
    assert_eq!(status, 201);

    // The key's last use shows; once revoked it opens nothing.
    let (_, view) = call(&app, &token, "GET", &format!("/services/{service}"), None).await;
    assert!(
        view["data"]["auth"]["keys"][0]["last_used_at"].is_string(),
        "{view}"
    );
    assert!(
        view["data"]["auth"]["keys"][0].get("key").is_none(),
        "the key is never shown again"
    );
    let (status, _) = call(
        &app,
        &token,
        "DELETE",
        &format!("/services/{service}/keys/{key_id}"),
        None,
    )
    .await;
    assert_eq!(status, 204);
    let (status, _) = post_backup(&app, &resource, file(), &auth).await;
    assert_eq!(status, 401);

    // Settings are checked, naming the field.
    let (status, body) = call(
        &app,
        &token,
        "PATCH",
        &format!("/services/{service}"),
        Some(json!({"ip_allowlist": {"enabled": true, "ips": ["10.0.0.0/33"]}})),
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("invalid_ip_allowlist_ips"))
    );
    let (status, body) = call(
        &app,
        &token,
        "POST",
        "/services",
        Some(json!({"name": "x", "retention": "1y"})),
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("invalid_retention"))
    );
}

pub async fn identical_files_are_stored_once(backend: Backend) {
    let app = app(backend).await;
    let token = app.add_user("ola").await;
    let (service, first) = service_with_resource(&app, &token, json!({"name": "bots"})).await;
    let (status, second) = call(
        &app,
        &token,
        "POST",
        &format!("/services/{service}/resources"),
        Some(json!({"name": "again"})),
    )
    .await;
    assert_eq!(status, 201);
    let second = second["data"]["id"].as_str().unwrap().to_owned();
    let content = b"the same bytes every night".repeat(100);
    let mut links = Vec::new();
    for resource in [&first, &second, &first] {
        let (status, created) =
            post_backup(&app, resource, file_form(&content, "db.sqlite", None), &[]).await;
        assert_eq!(status, 201, "{created}");
        links.push(app.local(created["backup"]["url"].as_str().unwrap()));
    }
    let (status, _) = post_backup(
        &app,
        &first,
        file_form(b"something else", "db.sqlite", None),
        &[],
    )
    .await;
    assert_eq!(status, 201);
    // Two contents, two files.
    let dir = app.config.data_dir.join("blobs/backups").join(&service);
    let files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}; {:?}", dir.display(), walk(&app.config.data_dir)))
        .flatten()
        .filter(|e| !e.file_name().to_string_lossy().contains('#'))
        .collect();
    assert_eq!(files.len(), 2, "{files:?}");
    for link in links {
        let response = app.client.get(&link).send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(&response.bytes().await.unwrap()[..], &content[..]);
    }
}

pub async fn owners_see_only_their_own(backend: Backend) {
    let app = app(backend).await;
    let alice = app.add_user("alice").await;
    let bob = app.add_user("bob").await;
    let (service, resource) = service_with_resource(&app, &alice, json!({"name": "alice's"})).await;
    let (status, created) =
        post_backup(&app, &resource, file_form(b"private", "p.txt", None), &[]).await;
    assert_eq!(status, 201);
    let backup = created["backup"]["uuid"].as_str().unwrap().to_owned();

    let (_, mine) = call(&app, &bob, "GET", "/services", None).await;
    assert_eq!(mine["data"], json!([]));
    let (_, hers) = call(&app, &alice, "GET", "/services", None).await;
    assert_eq!(hers["data"][0]["id"], service.as_str());
    for (method, path, body) in [
        ("GET", format!("/services/{service}"), None),
        (
            "PATCH",
            format!("/services/{service}"),
            Some(json!({"name": "mine now"})),
        ),
        ("DELETE", format!("/services/{service}"), None),
        (
            "POST",
            format!("/services/{service}/keys"),
            Some(json!({"name": "k"})),
        ),
        (
            "POST",
            format!("/services/{service}/resources"),
            Some(json!({"name": "r"})),
        ),
        ("GET", format!("/services/{service}/resources"), None),
        ("GET", format!("/resources/{resource}"), None),
        (
            "PATCH",
            format!("/resources/{resource}"),
            Some(json!({"active": false})),
        ),
        ("DELETE", format!("/resources/{resource}"), None),
        ("GET", format!("/resources/{resource}/backups"), None),
        ("GET", format!("/backups/{backup}"), None),
        ("GET", format!("/backups/{backup}/file"), None),
    ] {
        let (status, answer) = call(&app, &bob, method, &path, body).await;
        assert_eq!(status, 404, "bob: {method} {path}: {answer}");
    }
    let (status, _) = call(&app, "not-a-token", "GET", "/services", None).await;
    assert_eq!(status, 401);
    // All of it is still hers.
    let (status, view) = call(&app, &alice, "GET", &format!("/services/{service}"), None).await;
    assert_eq!(
        (status, view["data"]["name"].as_str()),
        (200, Some("alice's"))
    );
    let (_, list) = call(
        &app,
        &alice,
        "GET",
        &format!("/services/{service}/resources"),
        None,
    )
    .await;
    assert_eq!(list["data"][0]["active"], true);

    // Deleted, a resource takes no more uploads, and is gone from its service.
    let (status, _) = call(
        &app,
        &alice,
        "DELETE",
        &format!("/resources/{resource}"),
        None,
    )
    .await;
    assert_eq!(status, 204);
    let (status, _) = post_backup(&app, &resource, file_form(b"late", "l.txt", None), &[]).await;
    assert_eq!(status, 404);
    let (_, list) = call(
        &app,
        &alice,
        "GET",
        &format!("/services/{service}/resources"),
        None,
    )
    .await;
    assert_eq!(list["data"], json!([]));
    let (status, _) = call(
        &app,
        &alice,
        "DELETE",
        &format!("/services/{service}"),
        None,
    )
    .await;
    assert_eq!(status, 204);
    let (_, hers) = call(&app, &alice, "GET", "/services", None).await;
    assert_eq!(hers["data"], json!([]));
}

pub async fn a_cut_off_upload_leaves_nothing(backend: Backend) {
    use tokio::io::AsyncWriteExt;

    let app = app(backend).await;
    let token = app.add_user("ola").await;
    let (service, resource) = service_with_resource(&app, &token, json!({"name": "bots"})).await;
    let address = app.address.trim_start_matches("http://").to_owned();
    let mut socket = tokio::net::TcpStream::connect(&address).await.unwrap();
    let head = format!(
        "POST /{resource} HTTP/1.1\r\nHost: {address}\r\nContent-Type: multipart/form-data; boundary=XyZ\r\nContent-Length: 10000000\r\n\r\n--XyZ\r\nContent-Disposition: form-data; name=\"backup\"; filename=\"big.bin\"\r\n\r\n"
    );
    socket.write_all(head.as_bytes()).await.unwrap();
    socket
        .write_all(&vec![b'x'; 3 * 1024 * 1024])
        .await
        .unwrap();
    socket.flush().await.unwrap();
    // The file is being written...
    let dir = app.config.data_dir.join("blobs/backups").join(&service);
    until("the upload to be written", PATIENCE, || {
        let dir = dir.clone();
        async move {
            std::fs::read_dir(&dir)
                .map(|entries| entries.count() > 0)
                .unwrap_or(false)
        }
    })
    .await;
    // ...when the client goes away: nothing is recorded, and what was written is deleted.
    drop(socket);
    until("the partial upload to be deleted", PATIENCE, || {
        let dir = dir.clone();
        async move {
            std::fs::read_dir(&dir)
                .map(|entries| entries.count() == 0)
                .unwrap_or(true)
        }
    })
    .await;
    let (_, page) = call(
        &app,
        &token,
        "GET",
        &format!("/resources/{resource}/backups"),
        None,
    )
    .await;
    assert_eq!(page["data"], json!([]));
}

pub async fn the_owner_is_told_and_refusals_are_folded(backend: Backend) {
    let (mut config, sink) = crate::helpers::mail_config(backend).await;
    config.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
    let app = spawn_with(config).await;
    let token = app.add_user("ola").await;
    let (service, resource) = service_with_resource(
        &app,
        &token,
        json!({
            "name": "bots",
            "auth": {"enabled": true},
            "notifications": {"emails": ["owner@example.com"], "on": ["backup_created", "bad_key", "ip_blocked"]}
        }),
    )
    .await;
    let (_, key) = call(
        &app,
        &token,
        "POST",
        &format!("/services/{service}/keys"),
        Some(json!({"name": "cron"})),
    )
    .await;
    let key = format!("Bearer {}", key["data"]["key"].as_str().unwrap());

    let (status, _) = post_backup(
        &app,
        &resource,
        file_form(b"{}", "facts.json", None),
        &[("Authorization", &key)],
    )
    .await;
    assert_eq!(status, 201);
    let stored = sink
        .wait_for("owner@example.com", "Backup stored: facts.json (bots)")
        .await;
    assert!(stored.raw.contains("facts.json"), "{}", stored.raw);

    // A cron job with the wrong key, every few seconds: one notice, not a storm.
    for _ in 0..5 {
        let (status, _) = post_backup(
            &app,
            &resource,
            file_form(b"{}", "facts.json", None),
            &[("Authorization", "Bearer-cairn_bk_wrong")],
        )
        .await;
        assert_eq!(status, 401);
    }
    sink.wait_for("owner@example.com", "without a valid API key")
        .await;
    // Another kind is told of on its own.
    let (status, _) = call(
        &app,
        &token,
        "PATCH",
        &format!("/services/{service}"),
        Some(json!({"ip_allowlist": {"enabled": true, "ips": ["10.0.0.0/8"]}})),
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = post_backup(
        &app,
        &resource,
        file_form(b"{}", "facts.json", None),
        &[("Authorization", &key), ("X-Forwarded-For", "192.0.2.9")],
    )
    .await;
    assert_eq!(status, 403);
    let blocked = sink
        .wait_for("owner@example.com", "from an address not allowed")
        .await;
    assert!(blocked.raw.contains("192.0.2.9"));
    // The refusals were recorded: five of the first kind, in two records (the first told
    // at once, the others held back within the minute), one of the second.
    let refused: Vec<_> = sink
        .received()
        .into_iter()
        .filter(|m| {
            m.header("Subject")
                .is_some_and(|s| s.contains("without a valid API key"))
        })
        .collect();
    assert_eq!(refused.len(), 1, "one notice for five refusals");
}

/// A resource expecting a backup an hour (10 minutes' grace): none comes, and the owner is
/// told once; one comes, and they are told it is back to normal. (The clock is moved; an
/// upload elsewhere wakes the scheduler, as any new schedule does.)
pub async fn a_missed_backup_is_told_and_so_is_the_return(backend: Backend) {
    let (mut config, sink) = crate::helpers::mail_config(backend).await;
    config.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
    let app = spawn_with(config).await;
    let token = app.add_user("ola").await;
    let start = chrono::Utc::now();
    let at =
        |minutes: i64| *app.now.lock().unwrap() = Some(start + chrono::Duration::minutes(minutes));
    at(0);
    let (service, resource) = service_with_resource(
        &app,
        &token,
        json!({
            "name": "bots",
            "notifications": {"emails": ["owner@example.com"], "on": ["backup_missed", "back_to_normal"]}
        }),
    )
    .await;
    let (status, view) = call(
        &app,
        &token,
        "PATCH",
        &format!("/resources/{resource}"),
        Some(json!({"expected": {"every_seconds": 3600, "grace_seconds": 600}})),
    )
    .await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["data"]["expected"]["every_seconds"], 3600);
    let (_, other) = call(
        &app,
        &token,
        "POST",
        &format!("/services/{service}/resources"),
        Some(json!({"name": "other"})),
    )
    .await;
    let other = other["data"]["id"].as_str().unwrap().to_owned();
    let wake = || async {
        let (status, _) = post_backup(&app, &other, file_form(b"x", "x.txt", None), &[]).await;
        assert_eq!(status, 201);
    };

    // An hour and five minutes on: late, but within the grace.
    at(65);
    wake().await;
    // An hour and eleven minutes: missed.
    at(71);
    wake().await;
    let missed = sink
        .wait_for("owner@example.com", "Backup missed: facts.json (bots)")
        .await;
    assert!(missed.raw.contains("has not arrived"));
    let (_, view) = call(&app, &token, "GET", &format!("/resources/{resource}"), None).await;
    assert!(view["data"]["missed_since"].is_string(), "{view}");
    // Told once, however long it stays missing.
    at(200);
    wake().await;
    let (status, _) = post_backup(&app, &resource, file_form(b"at last", "f.txt", None), &[]).await;
    assert_eq!(status, 201);
    sink.wait_for("owner@example.com", "Backups back to normal: facts.json")
        .await;
    let told = sink
        .received()
        .iter()
        .filter(|m| {
            m.header("Subject")
                .is_some_and(|s| s.contains("Backup missed"))
        })
        .count();
    assert_eq!(told, 1);
    let (_, view) = call(&app, &token, "GET", &format!("/resources/{resource}"), None).await;
    assert!(view["data"]["missed_since"].is_null(), "{view}");
    // Bad expectations are refused, naming the field.
    let (status, body) = call(
        &app,
        &token,
        "PATCH",
        &format!("/resources/{resource}"),
        Some(json!({"expected": {"cron": "61 * * * *"}})),
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("invalid_expected"))
    );
}

/// Files no backup keeps (a process died between writing a file and recording it, an upload
/// cut off by a crash) are swept once old enough; a backup's file stays, however old.
pub async fn files_no_backup_keeps_are_swept(backend: Backend) {
    let app = app(backend).await;
    let token = app.add_user("ola").await;
    let (service, resource) = service_with_resource(&app, &token, json!({"name": "bots"})).await;
    let (status, created) =
        post_backup(&app, &resource, file_form(b"kept", "k.txt", None), &[]).await;
    assert_eq!(status, 201);
    let dir = app.config.data_dir.join("blobs/backups").join(&service);
    let kept = std::fs::read_dir(&dir)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let stray = dir.join("0123456789abcdef0123456789abcdef");
    let partial = dir.join("fedcba9876543210fedcba9876543210#2");
    let fresh = dir.join("00000000000000000000000000000000");
    let two_days_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(2 * 86_400);
    for (path, written) in [
        (&stray, Some(two_days_ago)),
        (&partial, Some(two_days_ago)),
        (&fresh, None),
        (&kept, Some(two_days_ago)),
    ] {
        if !path.exists() {
            std::fs::write(path, b"left behind").unwrap();
        }
        if let Some(at) = written {
            std::fs::File::options()
                .write(true)
                .open(path)
                .unwrap()
                .set_modified(at)
                .unwrap();
        }
    }
    let blobs = cairn::backends::open_blobs(&app.config).unwrap();
    let backups = cairn::backends::backups(
        &app.config,
        app.events.clone(),
        blobs,
        cairn_events::Clock::system(),
    )
    .await
    .unwrap();
    let cutoff = chrono::Utc::now() - chrono::Duration::days(1);
    assert_eq!(backups.sweep_files(cutoff).await.unwrap(), 2);
    assert!(!stray.exists() && !partial.exists());
    assert!(fresh.exists(), "too new to tell");
    assert!(kept.exists(), "its backup keeps it");
    let url = app.local(created["backup"]["url"].as_str().unwrap());
    assert_eq!(app.client.get(&url).send().await.unwrap().status(), 200);
}

pub async fn webhooks_are_signed_the_standard_way(backend: Backend) {
    let app = app(backend).await;
    let token = app.add_user("ola").await;
    let (url, calls) = webhook_receiver().await;
    let (service, resource) = service_with_resource(
        &app,
        &token,
        json!({
            "name": "bots",
            "auth": {"enabled": true},
            "notifications": {"webhooks": [url], "on": ["backup_created", "bad_key"]}
        }),
    )
    .await;
    let (_, view) = call(&app, &token, "GET", &format!("/services/{service}"), None).await;
    let secret = view["data"]["notifications"]["webhook_secret"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(secret.starts_with("whsec_"), "{view}");
    let (_, key) = call(
        &app,
        &token,
        "POST",
        &format!("/services/{service}/keys"),
        Some(json!({"name": "cron"})),
    )
    .await;
    let key = format!("Bearer {}", key["data"]["key"].as_str().unwrap());

    let (status, created) = post_backup(
        &app,
        &resource,
        file_form(b"{}", "facts.json", None),
        &[("Authorization", &key)],
    )
    .await;
    assert_eq!(status, 201);
    let (status, _) = post_backup(
        &app,
        &resource,
        file_form(b"{}", "facts.json", None),
        &[("Authorization", "Bearer x")],
    )
    .await;
    assert_eq!(status, 401);
    until("two webhook calls", PATIENCE, || async {
        calls.lock().unwrap().len() >= 2
    })
    .await;
    let calls = calls.lock().unwrap().clone();
    let mut kinds = Vec::new();
    for (headers, body) in &calls {
        let header = |name: &str| headers[name].to_str().unwrap().to_owned();
        let id = header("webhook-id");
        let timestamp: i64 = header("webhook-timestamp").parse().unwrap();
        assert!(id.starts_with("msg_"));
        assert!((chrono::Utc::now().timestamp() - timestamp).abs() < 300);
        assert_eq!(
            Some(header("webhook-signature")),
            cairn_scheduler::webhook::signature(&secret, &id, timestamp, body),
            "signed with the service's secret"
        );
        assert_eq!(header("content-type"), "application/json");
        let body: Value = serde_json::from_str(body).unwrap();
        assert_eq!(body["data"]["resource"], resource.as_str());
        assert_eq!(body["data"]["service"], service.as_str());
        if body["type"] == "backup.created" {
            assert_eq!(body["data"]["backup"]["id"], created["backup"]["uuid"]);
            assert_eq!(
                body["data"]["backup"]["sha256"].as_str().map(str::len),
                Some(64)
            );
        }
        if body["type"] == "backup.refused" {
            assert_eq!(body["data"]["reason"], "bad_key");
        }
        kinds.push(body["type"].as_str().unwrap().to_owned());
    }
    kinds.sort();
    assert_eq!(kinds, ["backup.created", "backup.refused"]);
}

/// A resource with more backups than a snapshot spans is read from its snapshot and the
/// events after, and reads the same as a full fold would.
pub async fn a_long_resource_is_read_from_its_snapshot(backend: Backend) {
    let app = app(backend).await;
    let token = app.add_user("ola").await;
    let (service, resource) = service_with_resource(&app, &token, json!({"name": "bots"})).await;
    let mut ids = Vec::new();
    for n in 0..150_u32 {
        let (status, created) = post_backup(
            &app,
            &resource,
            file_form(&n.to_le_bytes(), "n.bin", None),
            &[],
        )
        .await;
        assert_eq!(status, 201, "{created}");
        ids.push(created["backup"]["uuid"].as_str().unwrap().to_owned());
    }
    let stream = format!("resource-{resource}");
    let snapshot = app
        .events
        .read_snapshot(&stream, "resource-v1")
        .await
        .unwrap();
    assert!(
        snapshot.is_some_and(|s| s.version > 64),
        "a snapshot is kept"
    );
    let (_, view) = call(&app, &token, "GET", &format!("/resources/{resource}"), None).await;
    assert_eq!(view["data"]["backups"], 150);
    // Deletions after the snapshot fold onto it.
    call(
        &app,
        &token,
        "PATCH",
        &format!("/services/{service}"),
        Some(json!({"retention": {"keep_last": 3}})),
    )
    .await;
    let (status, _) = post_backup(&app, &resource, file_form(b"last", "n.bin", None), &[]).await;
    assert_eq!(status, 201);
    until("all but the newest 3 to go", PATIENCE, || async {
        kept(&app, &token, &resource).await.len() == 3
    })
    .await;
    let newest = kept(&app, &token, &resource).await;
    assert_eq!(newest[1..], [ids[149].clone(), ids[148].clone()]);
}

/// Without a trusted proxy, `X-Forwarded-For` is the client's own word and is not
/// believed: the allowlist sees the connection's address.
pub async fn forwarded_addresses_count_only_from_trusted_proxies(backend: Backend) {
    let app = spawn_with(test_config(backend).await).await;
    let token = app.add_user("ola").await;
    let (_, resource) = service_with_resource(
        &app,
        &token,
        json!({"name": "bots", "ip_allowlist": {"enabled": true, "ips": ["10.0.0.0/8"]}}),
    )
    .await;
    let (status, body) = post_backup(
        &app,
        &resource,
        file_form(b"{}", "f.json", None),
        &[("X-Forwarded-For", "10.1.2.3")],
    )
    .await;
    assert_eq!(status, 403);
    assert_eq!(body["message"], "backups from 127.0.0.1 are not allowed");
    // The connection's own address, allowed, is let in whatever the header says.
    let service = call(&app, &token, "GET", &format!("/resources/{resource}"), None)
        .await
        .1["data"]["service"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, _) = call(
        &app,
        &token,
        "PATCH",
        &format!("/services/{service}"),
        Some(json!({"ip_allowlist": {"enabled": true, "ips": ["127.0.0.1"]}})),
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = post_backup(
        &app,
        &resource,
        file_form(b"{}", "f.json", None),
        &[("X-Forwarded-For", "192.0.2.1")],
    )
    .await;
    assert_eq!(status, 201);
}

/// When the file cannot be stored (here: its directory cannot be made), the answer is
/// Duran's 424 and no backup is recorded.
pub async fn a_storage_failure_is_a_424_and_records_nothing(backend: Backend) {
    let app = app(backend).await;
    let token = app.add_user("ola").await;
    let (service, resource) = service_with_resource(&app, &token, json!({"name": "bots"})).await;
    let dir = app.config.data_dir.join("blobs/backups");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(&service), b"not a directory").unwrap();
    let (status, body) = post_backup(&app, &resource, file_form(b"{}", "f.json", None), &[]).await;
    assert_eq!(status, 424);
    assert_eq!(
        body,
        json!({"message": "there was a problem completing the request"})
    );
    assert!(kept(&app, &token, &resource).await.is_empty());
}

/// A backup past its age goes when its time comes, with no upload to its resource to set
/// the retention off. (The clock is moved; an upload elsewhere wakes the scheduler.)
pub async fn backups_expire_when_their_time_comes(backend: Backend) {
    let app = app(backend).await;
    let token = app.add_user("ola").await;
    let (service, resource) =
        service_with_resource(&app, &token, json!({"name": "bots", "retention": "1w"})).await;
    let (_, other) = call(
        &app,
        &token,
        "POST",
        &format!("/services/{service}/resources"),
        Some(json!({"name": "other"})),
    )
    .await;
    let other = other["data"]["id"].as_str().unwrap().to_owned();
    let start = chrono::Utc::now();
    let at = |days: i64| *app.now.lock().unwrap() = Some(start + chrono::Duration::days(days));
    let mut ids = Vec::new();
    for day in [0, 3] {
        at(day);
        let (status, created) = post_backup(
            &app,
            &resource,
            file_form(format!("day {day}").as_bytes(), "f.txt", None),
            &[],
        )
        .await;
        assert_eq!(status, 201);
        ids.push(created["backup"]["uuid"].as_str().unwrap().to_owned());
    }
    at(8);
    // A second backup elsewhere schedules that resource's retention, which wakes the
    // scheduler.
    for n in 0..2 {
        let body = format!("elsewhere {n}");
        let (status, _) =
            post_backup(&app, &other, file_form(body.as_bytes(), "f.txt", None), &[]).await;
        assert_eq!(status, 201);
    }
    until("the day-0 backup to go on its own", PATIENCE, || async {
        kept(&app, &token, &resource).await == [ids[1].clone()]
    })
    .await;
    // The newest stays, however old.
    at(30);
    let (status, _) = post_backup(&app, &other, file_form(b"later", "f.txt", None), &[]).await;
    assert_eq!(status, 201);
    assert_eq!(kept(&app, &token, &resource).await, [ids[1].clone()]);
}

/// The ids of the backups `resource` keeps, newest first.
async fn kept(app: &TestApp, token: &str, resource: &str) -> Vec<String> {
    let (status, page) = call(
        app,
        token,
        "GET",
        &format!("/resources/{resource}/backups?limit=100"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{page}");
    page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_str().unwrap().to_owned())
        .collect()
}

/// The stored files of `service` (partial uploads aside).
fn files_of(app: &TestApp, service: &str) -> usize {
    std::fs::read_dir(app.config.data_dir.join("blobs/backups").join(service))
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| !e.file_name().to_string_lossy().contains('#'))
                .count()
        })
        .unwrap_or(0)
}

pub async fn retention_deletes_old_backups_and_their_files(backend: Backend) {
    let app = app(backend).await;
    let token = app.add_user("ola").await;
    let (service, resource) =
        service_with_resource(&app, &token, json!({"name": "bots", "retention": "1w"})).await;
    let start = chrono::Utc::now();
    let at = |days: i64| *app.now.lock().unwrap() = Some(start + chrono::Duration::days(days));
    let mut ids = Vec::new();
    // Day 0: a file of its own; day 3 and day 8: one content twice.
    for (day, content) in [(0, "only on day 0"), (3, "the same"), (8, "the same")] {
        at(day);
        let (status, created) = post_backup(
            &app,
            &resource,
            file_form(content.as_bytes(), "f.txt", None),
            &[],
        )
        .await;
        assert_eq!(status, 201, "{created}");
        ids.push(created["backup"]["uuid"].as_str().unwrap().to_owned());
    }
    // On day 8 the day-0 backup is past a week: it goes, and its file with it.
    until("the day-0 backup to go", PATIENCE, || async {
        kept(&app, &token, &resource).await == [ids[2].clone(), ids[1].clone()]
    })
    .await;
    until("its file to go", PATIENCE, || async {
        files_of(&app, &service) == 1
    })
    .await;

    // Day 11: the day-3 backup goes, but not the file the day-8 one shares.
    at(11);
    let (status, created) =
        post_backup(&app, &resource, file_form(b"day 11", "f.txt", None), &[]).await;
    assert_eq!(status, 201);
    let day11 = created["backup"]["uuid"].as_str().unwrap().to_owned();
    until("the day-3 backup to go", PATIENCE, || async {
        kept(&app, &token, &resource).await == [day11.clone(), ids[2].clone()]
    })
    .await;
    assert_eq!(files_of(&app, &service), 2);
    let shared = app
        .client
        .get(format!("{}/backups/{}/file", app.address, ids[2]))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(&shared.bytes().await.unwrap()[..], b"the same");

    // Counts: only the last two are kept.
    let (status, _) = call(
        &app,
        &token,
        "PATCH",
        &format!("/services/{service}"),
        Some(json!({"retention": {"keep_last": 1}})),
    )
    .await;
    assert_eq!(status, 200);
    at(12);
    let (status, created) =
        post_backup(&app, &resource, file_form(b"day 12", "f.txt", None), &[]).await;
    assert_eq!(status, 201);
    let day12 = created["backup"]["uuid"].as_str().unwrap().to_owned();
    until("only the newest to stay", PATIENCE, || async {
        kept(&app, &token, &resource).await == [day12.clone()]
    })
    .await;
    until("the files of the others to go", PATIENCE, || async {
        files_of(&app, &service) == 1
    })
    .await;

    // A deleted resource's backups and files all go.
    let (status, _) = call(
        &app,
        &token,
        "DELETE",
        &format!("/resources/{resource}"),
        None,
    )
    .await;
    assert_eq!(status, 204);
    until("every file to go", PATIENCE, || async {
        files_of(&app, &service) == 0
    })
    .await;
}

/// Every file under `dir`, for failure messages.
fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(walk(&path));
        } else {
            found.push(path.display().to_string());
        }
    }
    found
}
