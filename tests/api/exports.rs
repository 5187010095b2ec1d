//! Exports as their owner sees them: a bundle that holds exactly what the API answers,
//! checked by another zip reader (Python's); one export at a time per user, in order;
//! nobody else's to see, cancel or download; progress as Server-Sent Events, resumed with
//! `Last-Event-ID`; the signed links that work without a token.

use std::collections::BTreeMap;
use std::path::Path;

use futures_util::StreamExt;
use reqwest::multipart::{Form, Part};
use serde_json::{Value, json};

use crate::helpers::{
    Backend, PATIENCE, PUBLIC_URL, TestApp, call, eventually, mail_config, spawn_with, temp_dir,
    test_config, until, webhook_receiver,
};

crate::on_both_backends!(exports:
    a_bundle_holds_what_the_api_answers,
    exports_run_one_after_another_and_stay_private,
    progress_comes_as_server_sent_events,
    a_git_export_is_browsable_and_reruns_incrementally,
    a_git_export_goes_over_smart_http_with_a_token,
    a_git_destination_kept_in_sync_gets_new_messages,
    kill_9_during_a_git_export_resumes_without_a_second_commit,
    a_bundle_comes_back_in_a_fresh_cairn,
    the_owner_hears_when_an_export_ends,
);

async fn app(backend: Backend) -> TestApp {
    let mut config = test_config(backend).await;
    config.public_url = PUBLIC_URL.into();
    spawn_with(config).await
}

/// Start an export; its id.
async fn start(app: &TestApp, token: &str, body: Value) -> String {
    let (status, answer) = call(app, token, "POST", "/exports", Some(body)).await;
    assert_eq!(status, 202, "{answer}");
    answer["data"]["id"].as_str().unwrap().to_owned()
}

/// Wait until export `id` has ended; its last answer.
async fn ended(app: &TestApp, token: &str, id: &str) -> Value {
    eventually("the export to end", PATIENCE * 4, || async {
        let (status, answer) = call(app, token, "GET", &format!("/exports/{id}"), None).await;
        assert_eq!(status, 200, "{answer}");
        let data = answer["data"].clone();
        matches!(
            data["status"].as_str(),
            Some("completed" | "failed" | "cancelled")
        )
        .then_some(data)
    })
    .await
}

/// A zip's files, read by Python's `zipfile` (which checks every CRC): name to bytes.
fn unzip(zip: &Path) -> BTreeMap<String, Vec<u8>> {
    let out = zip.with_extension("d");
    let status = std::process::Command::new("python3")
        .args([
            "-c",
            "import sys, zipfile\n\
             z = zipfile.ZipFile(sys.argv[1])\n\
             bad = z.testzip()\n\
             assert bad is None, bad\n\
             z.extractall(sys.argv[2])",
        ])
        .arg(zip)
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success(), "python3 reads the zip");
    let mut files = BTreeMap::new();
    let mut stack = vec![out.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let name = path
                    .strip_prefix(&out)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                files.insert(name, std::fs::read(&path).unwrap());
            }
        }
    }
    files
}

fn lines(bytes: &[u8]) -> Vec<Value> {
    String::from_utf8(bytes.to_vec())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn without_url(mut backup: Value) -> Value {
    backup.as_object_mut().unwrap().remove("url");
    backup
}

pub async fn a_bundle_holds_what_the_api_answers(backend: Backend) {
    let app = app(backend).await;
    let token = app.add_user("hana").await;
    let other = app.add_user("ivo").await;
    for (i, tags) in [&["cairn"][..], &["export", "Zip"], &[]].iter().enumerate() {
        app.post(
            &token,
            &format!("message {i} with \"quotes\" and ünïcode"),
            tags,
        )
        .await;
    }
    app.post(&other, "not hana's", &[]).await;
    let (status, service) = call(
        &app,
        &token,
        "POST",
        "/services",
        Some(json!({"name": "db"})),
    )
    .await;
    assert_eq!(status, 201, "{service}");
    let service_id = service["data"]["id"].as_str().unwrap().to_owned();
    let (_, resource) = call(
        &app,
        &token,
        "POST",
        &format!("/services/{service_id}/resources"),
        Some(json!({"name": "dump.sql"})),
    )
    .await;
    let resource_id = resource["data"]["id"].as_str().unwrap().to_owned();
    let content = b"CREATE TABLE notes (id int);\n".repeat(100);
    let form = Form::new().part("backup", Part::bytes(content.clone()).file_name("dump.sql"));
    let response = app
        .client
        .post(format!("{}/{resource_id}", app.address))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    // A capsule sent with hana's token is hers; one sent without is nobody's.
    let send_at = (chrono::Utc::now() + chrono::Duration::hours(2))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    for (text, bearer) in [("linked", Some(&token)), ("anonymous", None)] {
        let mut request = app
            .client
            .post(format!("{}/capsules", app.address))
            .json(&json!({
                "sender": {"email": "hana@example.com", "name": "Hana"},
                "recipient": {"email": "ivo@example.com", "name": "Ivo"},
                "send_at": send_at,
                "text": text,
            }));
        if let Some(bearer) = bearer {
            request = request.bearer_auth(bearer);
        }
        assert_eq!(request.send().await.unwrap().status(), 202);
    }
    let response = app
        .client
        .post(format!("{}/capsules", app.address))
        .bearer_auth("not-a-token")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        401,
        "a bad token is refused, not ignored"
    );
    app.wait_projected().await;

    let id = start(
        &app,
        &token,
        json!({"destination": {"kind": "bundle"}, "include_files": true}),
    )
    .await;
    let export = ended(&app, &token, &id).await;
    assert_eq!(export["status"], "completed", "{export}");
    assert_eq!(export["done"], export["total"]);
    // Three steps: one day of messages (the test runs within a day, or two around
    // midnight), the backups, the files, the capsules, the manifest.
    assert!(export["total"].as_u64().unwrap() >= 5, "{export}");

    let response = app
        .client
        .get(format!("{}/exports/{id}/bundle", app.address))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/zip");
    let zip = response.bytes().await.unwrap();
    assert_eq!(
        zip.len() as u64,
        export["bundle"]["bytes"].as_u64().unwrap()
    );
    let dir = temp_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bundle.zip");
    std::fs::write(&path, &zip).unwrap();
    let files = unzip(&path);

    // The messages, as GET /message answers them (newest first there, oldest in the file).
    let (_, page) = app.get("/message?user_name=hana&limit=100").await;
    let mut api: Vec<Value> = page["data"].as_array().unwrap().clone();
    api.reverse();
    let exported: Vec<Value> = files
        .iter()
        .filter(|(name, _)| name.starts_with("messages/"))
        .flat_map(|(_, bytes)| lines(bytes))
        .collect();
    assert_eq!(exported, api);

    // Services, resources and backups, as their routes answer (a backup's signed `url`
    // aside: it is made afresh for each answer).
    let (_, services) = call(&app, &token, "GET", "/services", None).await;
    assert_eq!(
        lines(&files["services.jsonl"]),
        services["data"].as_array().unwrap().clone()
    );
    let (_, resources) = call(
        &app,
        &token,
        "GET",
        &format!("/services/{service_id}/resources"),
        None,
    )
    .await;
    assert_eq!(
        lines(&files["resources.jsonl"]),
        resources["data"].as_array().unwrap().clone()
    );
    let (_, backups) = call(
        &app,
        &token,
        "GET",
        &format!("/resources/{resource_id}/backups"),
        None,
    )
    .await;
    let backups: Vec<Value> = backups["data"]
        .as_array()
        .unwrap()
        .iter()
        .cloned()
        .map(without_url)
        .collect();
    let exported: Vec<Value> = lines(&files["backups.jsonl"])
        .into_iter()
        .map(without_url)
        .collect();
    assert_eq!(exported, backups);
    let backup_id = backups[0]["id"].as_str().unwrap();
    assert_eq!(files[&format!("files/{backup_id}/dump.sql")], content);

    // The linked capsule, as GET /capsules/{id} shows it; not the other.
    let capsules = lines(&files["capsules.jsonl"]);
    assert_eq!(capsules.len(), 1, "{capsules:?}");
    let capsule_id = capsules[0]["id"].as_str().unwrap();
    let (status, shown) = app.get(&format!("/capsules/{capsule_id}")).await;
    assert_eq!(status, 200);
    assert_eq!(capsules[0], shown["data"]);

    // The manifest counts them and gives each file's SHA-256.
    let manifest: Value = serde_json::from_slice(&files["manifest.json"]).unwrap();
    assert_eq!(manifest["counts"]["messages"], 3);
    assert_eq!(manifest["counts"]["backups"], 1);
    assert_eq!(manifest["counts"]["capsules"], 1);
    assert_eq!(manifest["user"]["name"], "hana");
    for file in manifest["files"].as_array().unwrap() {
        let bytes = &files[file["path"].as_str().unwrap()];
        assert_eq!(file["bytes"].as_u64().unwrap(), bytes.len() as u64);
        use sha2::Digest;
        assert_eq!(
            file["sha256"].as_str().unwrap(),
            hex(&sha2::Sha256::digest(bytes))
        );
    }

    // The signed link downloads it without a token; a changed one does not.
    let link = export["bundle"]["url"].as_str().unwrap();
    let response = app.client.get(app.local(link)).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.bytes().await.unwrap(), zip);
    let forged = app.local(link).replace("signature=", "signature=x");
    let response = app.client.get(forged).send().await.unwrap();
    assert_eq!(response.status(), 403);
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub async fn exports_run_one_after_another_and_stay_private(backend: Backend) {
    let app = app(backend).await;
    let token = app.add_user("jon").await;
    let other = app.add_user("kim").await;
    for i in 0..5 {
        app.post(&token, &format!("note {i}"), &[]).await;
    }
    let first = start(&app, &token, json!({"destination": {"kind": "bundle"}})).await;
    let second = start(&app, &token, json!({"destination": {"kind": "bundle"}})).await;
    let (_, listed) = call(&app, &token, "GET", "/exports", None).await;
    let ids: Vec<&str> = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [second.as_str(), first.as_str()], "newest first");

    let a = ended(&app, &token, &first).await;
    let b = ended(&app, &token, &second).await;
    assert_eq!(
        (a["status"].as_str(), b["status"].as_str()),
        (Some("completed"), Some("completed"))
    );
    // The second started only after the first had ended: its events say so.
    let stream = |id: &str| format!("export-{id}");
    let first_events = app.events.read_stream(&stream(&first)).await.unwrap();
    let second_events = app.events.read_stream(&stream(&second)).await.unwrap();
    let first_end = first_events.last().unwrap().position;
    let second_start = second_events
        .iter()
        .find(|e| e.event_type == "export.started")
        .unwrap()
        .position;
    assert!(second_start > first_end, "one after the other");

    // Nobody else sees, cancels or downloads them.
    for (method, path) in [
        ("GET", format!("/exports/{first}")),
        ("DELETE", format!("/exports/{first}")),
        ("GET", format!("/exports/{first}/bundle")),
        ("GET", format!("/exports/{first}/events")),
    ] {
        let (status, answer) = call(&app, &other, method, &path, None).await;
        assert_eq!(status, 404, "{method} {path}: {answer}");
    }
    let (_, listed) = call(&app, &other, "GET", "/exports", None).await;
    assert_eq!(listed["data"], json!([]));
    let (status, _) = call(&app, "no-such-token", "GET", "/exports", None).await;
    assert_eq!(status, 401);

    // An export that ended cannot be cancelled; bad input is a 400 naming the field.
    let (status, answer) = call(&app, &token, "DELETE", &format!("/exports/{first}"), None).await;
    assert_eq!(
        (status, answer["code"].as_str()),
        (409, Some("export_over"))
    );
    for (body, code) in [
        (
            json!({"destination": {"kind": "tape"}}),
            "invalid_destination_kind",
        ),
        (
            json!({"destination": {"kind": "git", "url": "relative/x"}}),
            "invalid_destination_url",
        ),
        (
            json!({"destination": {"kind": "bundle"}, "keep_in_sync": true}),
            "invalid_keep_in_sync",
        ),
        (
            json!({"destination": {"kind": "bundle"}, "extra": 1}),
            "invalid_json",
        ),
    ] {
        let (status, answer) = call(&app, &token, "POST", "/exports", Some(body)).await;
        assert_eq!(
            (status, answer["code"].as_str()),
            (400, Some(code)),
            "{answer}"
        );
    }

    // A queued export is cancelled before it starts.
    let blocker = start(&app, &token, json!({"destination": {"kind": "bundle"}})).await;
    let queued = start(&app, &token, json!({"destination": {"kind": "bundle"}})).await;
    let (status, answer) = call(&app, &token, "DELETE", &format!("/exports/{queued}"), None).await;
    if status == 200 {
        assert_eq!(answer["data"]["status"], "cancelled");
        let events = app.events.read_stream(&stream(&queued)).await.unwrap();
        assert!(events.iter().all(|e| e.event_type != "export.step_done"));
    } else {
        // It ran before the cancel came: nothing left to cancel.
        assert_eq!(status, 409, "{answer}");
    }
    ended(&app, &token, &blocker).await;
}

pub async fn progress_comes_as_server_sent_events(backend: Backend) {
    let app = app(backend).await;
    let token = app.add_user("lea").await;
    app.post(&token, "one #a", &["a"]).await;
    // Queued behind another, so a client connecting now sees it wait, start and go on.
    let before = start(&app, &token, json!({"destination": {"kind": "bundle"}})).await;
    let id = start(&app, &token, json!({"destination": {"kind": "bundle"}})).await;

    // A client following the events from the start sees every step to the end; another
    // following at the same time, the same.
    let follow = || async {
        let response = app
            .client
            .get(format!("{}/exports/{id}/events", app.address))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        read_events(response).await
    };
    let (events, also) = tokio::join!(follow(), follow());
    assert_eq!(also.last(), events.last());
    let last = events.last().expect("at least the state at the start");
    assert_eq!(last.1["status"], "completed");
    assert_eq!(last.1["done"], last.1["total"]);
    let dones: Vec<u64> = events
        .iter()
        .map(|(_, p)| p["done"].as_u64().unwrap())
        .collect();
    assert!(dones.windows(2).all(|w| w[0] <= w[1]), "{dones:?}");
    let ids: Vec<i64> = events.iter().map(|(id, _)| *id).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    assert_eq!(ended(&app, &token, &before).await["status"], "completed");

    // Reconnecting with Last-Event-ID gives only what came after it.
    let (middle, _) = &events[(events.len() - 1) / 2];
    let response = app
        .client
        .get(format!("{}/exports/{id}/events", app.address))
        .bearer_auth(&token)
        .header("Last-Event-ID", middle.to_string())
        .send()
        .await
        .unwrap();
    let later = read_events(response).await;
    assert!(later.iter().all(|(seen, _)| seen > middle));
    assert_eq!(
        later.len(),
        usize::from(events.len() > 1),
        "only the state since"
    );
    let response = app
        .client
        .get(format!("{}/exports/{id}/events", app.address))
        .bearer_auth(&token)
        .header("Last-Event-ID", "0")
        .send()
        .await
        .unwrap();
    let again = read_events(response).await;
    assert_eq!(again.len(), 1, "the state now, at once");
    assert_eq!(again[0], *last);

    // The page link works without the token, and so do its events; a forged one does not.
    let (_, export) = call(&app, &token, "GET", &format!("/exports/{id}"), None).await;
    let page = export["data"]["links"]["page"].as_str().unwrap();
    let response = app.client.get(app.local(page)).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let html = response.text().await.unwrap();
    assert!(html.contains("completed"), "{html}");
    let events_link = app.local(page).replace("/page?", "/events?");
    let response = app.client.get(events_link).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        read_events(response).await.last().unwrap().1["status"],
        "completed"
    );
    let forged = app.local(page).replace("signature=", "signature=A");
    assert_eq!(app.client.get(forged).send().await.unwrap().status(), 403);
    let response = app
        .client
        .get(format!("{}/exports/{id}/events", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
}

/// The `progress` events of an SSE answer, until it ends: (id, data).
async fn read_events(response: reqwest::Response) -> Vec<(i64, Value)> {
    let mut body = response.bytes_stream();
    let mut text = String::new();
    let read = async {
        while let Some(chunk) = body.next().await {
            text.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
        }
    };
    tokio::time::timeout(PATIENCE * 4, read)
        .await
        .expect("the event stream ends with the export");
    let mut events = Vec::new();
    for block in text.split("\n\n") {
        let mut id = None;
        let mut data = None;
        for line in block.lines() {
            if let Some(v) = line.strip_prefix("id:") {
                id = v.trim().parse().ok();
            } else if let Some(v) = line.strip_prefix("data:") {
                data = serde_json::from_str(v.trim()).ok();
            }
        }
        if let (Some(id), Some(data)) = (id, data) {
            events.push((id, data));
        }
    }
    events
}

/// `git args…` (in `dir`, if given); its output, asserting it succeeded.
fn git(dir: Option<&Path>, args: &[&str]) -> String {
    let mut command = std::process::Command::new("git");
    if let Some(dir) = dir {
        command.current_dir(dir);
    }
    let output = command
        .args(args)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// A new bare repository; its path.
fn bare_repository() -> std::path::PathBuf {
    let dir = temp_dir().join("remote.git");
    std::fs::create_dir_all(&dir).unwrap();
    git(Some(&dir), &["init", "-q", "--bare"]);
    dir
}

/// The subjects of a branch's commits, newest first.
fn subjects(repo: &Path, branch: &str) -> Vec<String> {
    git(Some(repo), &["log", "--format=%s", branch])
        .lines()
        .map(str::to_owned)
        .collect()
}

pub async fn a_git_export_is_browsable_and_reruns_incrementally(backend: Backend) {
    let app = app(backend).await;
    let token = app.add_user("max").await;
    app.post(&token, "first words\nover two lines", &["Start"])
        .await;
    app.post(&token, "second", &[]).await;
    let (status, _) = call(
        &app,
        &token,
        "POST",
        "/services",
        Some(json!({"name": "Nightly DB"})),
    )
    .await;
    assert_eq!(status, 201);
    let remote = bare_repository();
    let url = remote.to_str().unwrap().to_owned();
    let body = json!({"destination": {"kind": "git", "url": url, "branch": "notes/cairn"}});

    let first = start(&app, &token, body.clone()).await;
    let export = ended(&app, &token, &first).await;
    assert_eq!(export["status"], "completed", "{export}");
    let total = export["total"].as_u64().unwrap() as usize;
    let log = subjects(&remote, "notes/cairn");
    assert_eq!(log.len(), total, "one commit per step: {log:?}");
    assert!(
        log.iter().all(|s| s.starts_with("Cairn export: ")),
        "{log:?}"
    );

    // Browsable: a file per day, a file per service, the manifest.
    let today = chrono::Utc::now().format("%Y/%m/%d").to_string();
    let files = git(
        Some(&remote),
        &["ls-tree", "-r", "--name-only", "notes/cairn"],
    );
    assert!(
        files.contains(&format!("messages/{today}.md")) || files.contains("messages/"),
        "{files}"
    );
    let day_file = files.lines().find(|f| f.starts_with("messages/")).unwrap();
    let day = git(Some(&remote), &["show", &format!("notes/cairn:{day_file}")]);
    assert!(day.contains("first words\nover two lines"), "{day}");
    assert!(day.contains("Tags: #Start"), "{day}");
    assert!(
        files.lines().any(|f| f.starts_with("backups/nightly-db-")),
        "{files}"
    );
    let manifest: Value =
        serde_json::from_str(&git(Some(&remote), &["show", "notes/cairn:manifest.json"])).unwrap();
    assert_eq!(manifest["counts"]["messages"], 2);

    // Again, after one more message: only what changed is committed.
    app.post(&token, "third", &[]).await;
    let second = start(&app, &token, body).await;
    let export = ended(&app, &token, &second).await;
    assert_eq!(export["status"], "completed", "{export}");
    let again = subjects(&remote, "notes/cairn");
    let new: Vec<&String> = again.iter().take(again.len() - log.len()).collect();
    assert!(
        new.iter()
            .all(|s| !s.contains("backups") && !s.contains("capsules")),
        "unchanged steps make no commit: {new:?}"
    );
    assert!(new.iter().any(|s| s.contains("messages")), "{new:?}");
    let events = app
        .events
        .read_stream(&format!("export-{second}"))
        .await
        .unwrap();
    let empty_steps = events
        .iter()
        .filter(|e| e.event_type == "export.step_done" && e.payload.get("commit").is_none())
        .count();
    assert!(
        empty_steps >= 2,
        "the backups and capsules steps changed nothing"
    );
    let day = git(Some(&remote), &["show", &format!("notes/cairn:{day_file}")]);
    assert!(day.contains("third"), "{day}");
}

pub async fn a_git_destination_kept_in_sync_gets_new_messages(backend: Backend) {
    let app = app(backend).await;
    let token = app.add_user("noor").await;
    let other = app.add_user("omar").await;
    app.post(&token, "before", &[]).await;
    let start_at = chrono::Utc::now();
    let at = |seconds: i64| {
        *app.now.lock().unwrap() = Some(start_at + chrono::Duration::seconds(seconds));
    };
    at(0);
    let remote = bare_repository();
    let body = json!({
        "destination": {"kind": "git", "url": remote.to_str().unwrap(), "branch": "main"},
        "keep_in_sync": true,
    });
    let id = start(&app, &token, body).await;
    let export = ended(&app, &token, &id).await;
    assert_eq!(export["status"], "completed", "{export}");
    assert_eq!(export["keep_in_sync"], true);
    let exported = subjects(&remote, "main").len();

    // Posted after the export: written within a minute, in one commit; others' not at all.
    app.post(&token, "after one", &[]).await;
    app.post(&token, "after two", &["later"]).await;
    app.post(&other, "omar's own", &[]).await;
    // The scheduler looks at its clock when woken: a bundle export wakes it.
    let wake = |seconds: i64| {
        at(seconds);
        let app = &app;
        let token = &token;
        async move {
            let id = start(app, token, json!({"destination": {"kind": "bundle"}})).await;
            ended(app, token, &id).await;
        }
    };
    wake(61).await;
    let log = eventually("the new messages to be committed", PATIENCE, || async {
        let log = subjects(&remote, "main");
        (log.len() > exported).then_some(log)
    })
    .await;
    assert_eq!(log.len(), exported + 1, "{log:?}");
    assert_eq!(log[0], "Cairn: 2 new messages");
    let files = git(Some(&remote), &["ls-tree", "-r", "--name-only", "main"]);
    let days: Vec<&str> = files
        .lines()
        .filter(|f| f.starts_with("messages/"))
        .collect();
    let text: String = days
        .iter()
        .map(|f| git(Some(&remote), &["show", &format!("main:{f}")]))
        .collect();
    for said in ["before", "after one", "after two", "Tags: #later"] {
        assert!(text.contains(said), "{said}: {text}");
    }
    assert!(!text.contains("omar"), "{text}");
    let synced = eventually("the sync to be recorded", PATIENCE, || async {
        let (_, answer) = call(&app, &token, "GET", &format!("/exports/{id}"), None).await;
        answer["data"]["synced_at"].as_str().map(str::to_owned)
    })
    .await;
    assert!(!synced.is_empty());

    // Nothing new: no commit. Cancelled: no more syncing, and the export stays completed.
    wake(130).await;
    let (status, answer) = call(&app, &token, "DELETE", &format!("/exports/{id}"), None).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["data"]["status"], "completed");
    assert_eq!(answer["data"]["keep_in_sync"], false);
    app.post(&token, "after the end", &[]).await;
    wake(200).await;
    let (status, _) = call(&app, &token, "DELETE", &format!("/exports/{id}"), None).await;
    assert_eq!(status, 409, "nothing left to cancel");
    assert_eq!(subjects(&remote, "main").len(), exported + 1);
}

/// A smart-HTTP git server over the repositories under `root` (`git http-backend` as a
/// CGI program), taking only HTTP Basic with `token` as the password; its address.
async fn git_http_server(root: std::path::PathBuf, token: &'static str) -> String {
    use axum::body::Body;
    use axum::http::{Request, Response, StatusCode};

    async fn cgi(
        axum::extract::State((root, token)): axum::extract::State<(
            std::path::PathBuf,
            &'static str,
        )>,
        request: Request<Body>,
    ) -> Response<Body> {
        use base64::Engine;
        let expected = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("x-access-token:{token}"))
        );
        let (parts, body) = request.into_parts();
        let header = |name: &str| {
            parts
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned()
        };
        if header("authorization") != expected {
            return Response::builder()
                .status(StatusCode::UNAUTHORIZED)
                .header("WWW-Authenticate", "Basic realm=\"git\"")
                .body(Body::empty())
                .unwrap();
        }
        let body = axum::body::to_bytes(body, usize::MAX).await.unwrap();
        let mut child = tokio::process::Command::new("git")
            .arg("http-backend")
            .env("GIT_PROJECT_ROOT", &root)
            .env("GIT_HTTP_EXPORT_ALL", "1")
            .env("PATH_INFO", parts.uri.path())
            .env("REQUEST_METHOD", parts.method.as_str())
            .env("QUERY_STRING", parts.uri.query().unwrap_or_default())
            .env("CONTENT_TYPE", header("content-type"))
            .env("CONTENT_LENGTH", body.len().to_string())
            .env("HTTP_CONTENT_ENCODING", header("content-encoding"))
            .env("GIT_PROTOCOL", header("git-protocol"))
            .env("REMOTE_USER", "x-access-token")
            .env("REMOTE_ADDR", "127.0.0.1")
            .env("GIT_CONFIG_COUNT", "1")
            .env("GIT_CONFIG_KEY_0", "http.receivepack")
            .env("GIT_CONFIG_VALUE_0", "true")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let _ = stdin.write_all(&body).await;
        });
        let output = child.wait_with_output().await.unwrap();
        writer.await.unwrap();
        let raw = output.stdout;
        let split = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map(|i| (i, 4))
            .or_else(|| raw.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2)))
            .unwrap();
        let head = String::from_utf8_lossy(&raw[..split.0]).into_owned();
        let mut response = Response::builder();
        for line in head.lines() {
            let (name, value) = line.split_once(':').unwrap();
            if name.eq_ignore_ascii_case("status") {
                let code: u16 = value.trim()[..3].parse().unwrap();
                response = response.status(code);
            } else {
                response = response.header(name.trim(), value.trim());
            }
        }
        response
            .body(Body::from(raw[split.0 + split.1..].to_vec()))
            .unwrap()
    }

    let router = axum::Router::new().fallback(cgi).with_state((root, token));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    address
}

pub async fn a_git_export_goes_over_smart_http_with_a_token(backend: Backend) {
    const TOKEN: &str = "tok_4f7a9c2e1b-secret";
    let app = app(backend).await;
    let token = app.add_user("nia").await;
    app.post(&token, "over http", &[]).await;
    let root = temp_dir();
    std::fs::create_dir_all(&root).unwrap();
    git(Some(&root), &["init", "-q", "--bare", "notes.git"]);
    let server = git_http_server(root.clone(), TOKEN).await;
    let url = format!("{server}/notes.git");

    let id = start(
        &app,
        &token,
        json!({"destination": {"kind": "git", "url": url, "branch": "main", "token": TOKEN}}),
    )
    .await;
    let export = ended(&app, &token, &id).await;
    assert_eq!(export["status"], "completed", "{export}");
    assert!(export["destination"].get("token").is_none(), "{export}");
    let log = subjects(&root.join("notes.git"), "main");
    // One commit per step that wrote something: all but the backups (nia has none).
    assert_eq!(
        log.len() as u64,
        export["total"].as_u64().unwrap() - 1,
        "{log:?}"
    );

    // The token is nowhere in the log, nor in the working copy's config.
    let everything = app.events.read_all(0, 100_000, &[]).await.unwrap();
    for event in &everything {
        let text = format!("{} {:?}", event.payload, event.metadata);
        assert!(!text.contains("secret"), "{}: {text}", event.event_type);
    }
    let config_files = std::process::Command::new("grep")
        .args(["-rl", "secret"])
        .arg(app.config.data_dir.join("exports"))
        .output()
        .unwrap();
    assert!(config_files.stdout.is_empty(), "{config_files:?}");

    // Without the right token the remote refuses: the export retries, saying why.
    let bad = start(
        &app,
        &token,
        json!({"destination": {"kind": "git", "url": url, "branch": "main", "token": "wrong"}}),
    )
    .await;
    let failing = eventually("the first failed try", PATIENCE, || async {
        let (_, answer) = call(&app, &token, "GET", &format!("/exports/{bad}"), None).await;
        answer["data"]["error"]
            .is_string()
            .then(|| answer["data"].clone())
    })
    .await;
    assert_eq!(failing["status"], "running", "{failing}");
    assert!(failing["retry_at"].is_string(), "{failing}");
    assert!(
        !failing["error"].as_str().unwrap().contains("wrong"),
        "{failing}"
    );
    let (status, _) = call(&app, &token, "DELETE", &format!("/exports/{bad}"), None).await;
    assert_eq!(status, 200);
}

pub async fn kill_9_during_a_git_export_resumes_without_a_second_commit(backend: Backend) {
    use cairn_events::domain::message::{self, MessagePosted};
    use cairn_events::{AppendRequest, ExpectedVersion, Metadata, NewEvent};

    let env = crate::helpers::backend_env(backend).await;
    let token = crate::helpers::cairn_user_add(&env, &["pia"]).await;
    // A message a month for two years, written to the log as posts on those days would
    // be: a step a month.
    {
        let data_dir = Path::new(crate::helpers::env_value(&env, "CAIRN_DATA_DIR").unwrap());
        let events = cairn_events::open(
            crate::helpers::env_value(&env, "CAIRN_DATABASE_URL"),
            data_dir,
            std::time::Duration::from_secs(5),
        )
        .await
        .unwrap();
        let user = cairn_command::users::user_by_name(&*events, "pia")
            .await
            .unwrap();
        let start = chrono::Utc::now() - chrono::Duration::days(800);
        for day in 0..24 {
            let at = start + chrono::Duration::days(31 * day);
            let id = ulid::Ulid::from_datetime(at.into());
            let posted = MessagePosted {
                message_id: id,
                user_id: user.id,
                user_name: "pia".into(),
                text: format!("day {day}"),
                hashtags: Vec::new(),
            };
            let metadata = Metadata {
                actor: Some(user.id.to_string()),
                ..Metadata::default()
            };
            events
                .append(AppendRequest::new(
                    message::stream_id(id, user.id, None),
                    ExpectedVersion::NoStream,
                    vec![NewEvent::at(&posted, metadata, at)],
                ))
                .await
                .unwrap();
        }
    }
    let remote = bare_repository();
    let body = json!({"destination": {"kind": "git", "url": remote.to_str().unwrap()}});
    let client = crate::helpers::http();
    let (mut server, base) = crate::helpers::start_server(&env).await;
    let answer: Value = client
        .post(format!("{base}/exports"))
        .bearer_auth(&token)
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = answer["data"]["id"].as_str().unwrap().to_owned();
    let progress = |base: String| {
        let (client, token, id) = (client.clone(), token.clone(), id.clone());
        async move {
            let answer: Value = client
                .get(format!("{base}/exports/{id}"))
                .bearer_auth(&token)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            answer["data"].clone()
        }
    };
    eventually("a few steps done", PATIENCE * 2, || async {
        (progress(base.clone()).await["done"].as_u64() >= Some(5)).then_some(())
    })
    .await;
    server.start_kill().unwrap(); // SIGKILL, in the middle of the export
    server.wait().await.unwrap();
    let before = subjects(&remote, "main").len();
    assert!(before < 26, "killed before the end");

    let (_server, base) = crate::helpers::start_server(&env).await;
    let export = eventually("the export to complete", PATIENCE * 4, || async {
        let export = progress(base.clone()).await;
        (export["status"] == "completed").then_some(export)
    })
    .await;
    let log = subjects(&remote, "main");
    let mut unique = log.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), log.len(), "no step committed twice: {log:?}");
    // Every step wrote something but the backups (pia has none): one commit each.
    assert_eq!(
        log.len() as u64,
        export["total"].as_u64().unwrap() - 1,
        "{log:?}"
    );
    for day in 0..24 {
        let text = git(
            Some(&remote),
            &[
                "grep",
                "-c",
                &format!("^day {day}$"),
                "main",
                "--",
                "messages",
            ],
        );
        assert_eq!(text.lines().count(), 1, "day {day} is in one file: {text}");
    }
}

pub async fn a_bundle_comes_back_in_a_fresh_cairn(backend: Backend) {
    let app = app(backend).await;
    let token = app.add_user("olu").await;
    for (text, tags) in [
        ("hello", &["Hi"][..]),
        ("two\nlines", &[]),
        ("last #x", &["x", "y"]),
    ] {
        app.post(&token, text, tags).await;
    }
    app.wait_projected().await;
    let id = start(&app, &token, json!({"destination": {"kind": "bundle"}})).await;
    assert_eq!(ended(&app, &token, &id).await["status"], "completed");
    let zip = app
        .client
        .get(format!("{}/exports/{id}/bundle", app.address))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let dir = temp_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("olu.zip");
    std::fs::write(&path, &zip).unwrap();

    // Another Cairn, on fresh storage: the user comes back with the bundle.
    let env = crate::helpers::backend_env(backend).await;
    crate::helpers::cairn_user_add(&env, &["olu"]).await;
    let path = path.to_str().unwrap();
    let said = crate::helpers::cairn(&env, &["import", path, "--user", "olu"]).await;
    assert_eq!(said.trim(), "3 messages imported, 0 already here");
    let again = crate::helpers::cairn(&env, &["import", path, "--user", "olu"]).await;
    assert_eq!(again.trim(), "0 messages imported, 3 already here");

    let (_server, base) = crate::helpers::start_server(&env).await;
    let query = "/message?user_name=olu&limit=100";
    let (_, before) = app.get(query).await;
    let after = eventually("the imported messages to be readable", PATIENCE, || async {
        let answer: Value = app
            .client
            .get(format!("{base}{query}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        (answer["data"].as_array().map(Vec::len) == Some(3)).then_some(answer)
    })
    .await;
    // The same answers, but for the user's id: olu is a new user here.
    let strip = |mut page: Value| {
        for message in page["data"].as_array_mut().unwrap() {
            message["user"].as_object_mut().unwrap().remove("id");
        }
        page
    };
    assert_eq!(strip(after), strip(before));

    // `cairn export` there follows the export the server runs, and writes the bundle.
    let out = dir.join("again.zip");
    let output = crate::helpers::cairn_output(
        &env,
        &["export", "--user", "olu", "--out", out.to_str().unwrap()],
    )
    .await;
    let progress = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{progress}");
    assert!(progress.contains("completed"), "{progress}");
    assert!(
        progress.contains("[##############################]"),
        "{progress}"
    );
    let files = unzip(&out);
    let exported: usize = files
        .iter()
        .filter(|(name, _)| name.starts_with("messages/"))
        .map(|(_, bytes)| lines(bytes).len())
        .sum();
    assert_eq!(exported, 3);

    // A damaged bundle is refused, and nothing is written.
    let mut damaged = zip.to_vec();
    // A byte of the first file's content (after its 30-byte header and its name).
    let name_len = usize::from(u16::from_le_bytes([damaged[26], damaged[27]]));
    damaged[30 + name_len + 2] ^= 0xFF;
    let damaged_path = dir.join("damaged.zip");
    std::fs::write(&damaged_path, damaged).unwrap();
    let env2 = crate::helpers::backend_env(backend).await;
    crate::helpers::cairn_user_add(&env2, &["olu"]).await;
    let output = crate::helpers::cairn_output(
        &env2,
        &["import", damaged_path.to_str().unwrap(), "--user", "olu"],
    )
    .await;
    assert!(!output.status.success());
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(said.contains("damaged?"), "{said}");
    // So is one with a file its manifest does not list (added messages, say).
    let padded_path = dir.join("padded.zip");
    std::fs::write(&padded_path, &zip).unwrap();
    let status = std::process::Command::new("python3")
        .args([
            "-c",
            "import sys, zipfile\n\
             with zipfile.ZipFile(sys.argv[1], 'a') as z:\n\
             \x20   z.writestr('messages/2020/01/01.jsonl', '{}\\n')",
        ])
        .arg(&padded_path)
        .status()
        .unwrap();
    assert!(status.success());
    let output = crate::helpers::cairn_output(
        &env2,
        &["import", padded_path.to_str().unwrap(), "--user", "olu"],
    )
    .await;
    assert!(!output.status.success());
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(said.contains("not in its manifest"), "{said}");
    // Neither wrote anything: the whole bundle is new there.
    let said = crate::helpers::cairn(&env2, &["import", path, "--user", "olu"]).await;
    assert_eq!(said.trim(), "3 messages imported, 0 already here");
}

/// The page behind an export's signed link, in a browser: with JavaScript the bar follows
/// the events as the export waits, runs and ends; without it the page refreshes itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_progress_page_follows_the_export_in_a_browser() {
    let app = app(Backend::Embedded).await;
    let token = app.add_user("pia").await;
    for day in 0..3 {
        app.post(&token, &format!("day {day}"), &[]).await;
    }
    app.wait_projected().await;
    // A first export that cannot reach its remote waits for a retry, and the clock is
    // stopped before it comes: it holds the user's queue, and the second export waits
    // behind it until it is cancelled.
    let stuck = start(
        &app,
        &token,
        json!({"destination": {"kind": "git", "url": "http://127.0.0.1:9/nowhere.git"}}),
    )
    .await;
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        assert!(
            std::time::Instant::now() < deadline,
            "the first export never failed"
        );
        let (_, answer) = call(&app, &token, "GET", &format!("/exports/{stuck}"), None).await;
        let retry_at = answer["data"]["retry_at"].as_str().map(|at| {
            chrono::DateTime::parse_from_rfc3339(at)
                .unwrap()
                .with_timezone(&chrono::Utc)
        });
        if let Some(at) = retry_at {
            let now = chrono::Utc::now();
            *app.now.lock().unwrap() = Some(now);
            if at > now {
                break;
            }
            *app.now.lock().unwrap() = None; // too late for this retry: the next one
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let (status, answer) = call(
        &app,
        &token,
        "POST",
        "/exports",
        Some(json!({"destination": {"kind": "bundle"}})),
    )
    .await;
    assert_eq!(status, 202, "{answer}");
    let id = answer["data"]["id"].as_str().unwrap().to_owned();
    let page = app.local(answer["data"]["links"]["page"].as_str().unwrap());

    let browser = crate::browser::Browser::start().await;
    let plain = crate::browser::Browser::without_javascript().await;
    browser.open(&page).await;
    plain.open(&page).await;
    for b in [&browser, &plain] {
        assert_eq!(b.text("#status").await, "queued");
        assert_eq!(b.attribute("#bar", "value").await, "0");
        assert!(!b.text("body").await.contains("Download"));
    }

    let (status, _) = call(&app, &token, "DELETE", &format!("/exports/{stuck}"), None).await;
    assert_eq!(status, 200);
    *app.now.lock().unwrap() = None;
    for (b, how) in [(&browser, "the events"), (&plain, "refreshing")] {
        eventually(
            &format!("the page to follow by {how}"),
            PATIENCE,
            || async { (b.text("#status").await == "completed").then_some(()) },
        )
        .await;
        let total = b.attribute("#bar", "max").await;
        assert_eq!(b.attribute("#bar", "value").await, total);
        assert_eq!(b.text("#count").await, format!("{total}/{total}"));
        let link = b.attribute("#download a", "href").await;
        assert!(
            link.starts_with(&format!("{PUBLIC_URL}/exports/{id}/bundle?")),
            "{link}"
        );
    }
}

/// When an export ends its owner is emailed, and the webhooks of their backup services are
/// called, signed with each service's secret: with the download link when it worked, with
/// the reason when a destination kept failing (tried five times, then given up).
pub async fn the_owner_hears_when_an_export_ends(backend: Backend) {
    let (config, sink) = mail_config(backend).await;
    let app = spawn_with(config).await;
    let token =
        cairn_command::users::add_user(&*app.events, "rui", Some("rui@example.com"), None, None)
            .await
            .unwrap()
            .value;
    app.sync_tokens().await;
    let (url, calls) = webhook_receiver().await;
    let (status, service) = call(
        &app,
        &token,
        "POST",
        "/services",
        Some(json!({"name": "bots", "notifications": {"webhooks": [url]}})),
    )
    .await;
    assert_eq!(status, 201, "{service}");
    let secret = service["data"]["notifications"]["webhook_secret"]
        .as_str()
        .unwrap()
        .to_owned();
    app.post(&token, "something to keep", &[]).await;

    let id = start(&app, &token, json!({"destination": {"kind": "bundle"}})).await;
    assert_eq!(ended(&app, &token, &id).await["status"], "completed");
    let email = sink
        .wait_for("rui@example.com", "Your export is ready")
        .await;
    let text = email.decoded();
    assert!(
        text.contains(&format!("{PUBLIC_URL}/exports/{id}/bundle?expires=")),
        "{text}"
    );
    assert!(
        text.contains(&format!("{PUBLIC_URL}/exports/{id}/page?")),
        "{text}"
    );
    until("the webhook call", PATIENCE, || async {
        !calls.lock().unwrap().is_empty()
    })
    .await;
    let (headers, body) = calls.lock().unwrap()[0].clone();
    let header = |name: &str| headers[name].to_str().unwrap().to_owned();
    let hook_id = header("webhook-id");
    let timestamp: i64 = header("webhook-timestamp").parse().unwrap();
    assert_eq!(
        Some(header("webhook-signature")),
        cairn_scheduler::webhook::signature(&secret, &hook_id, timestamp, &body),
    );
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["type"], "export.completed");
    assert_eq!(body["data"]["export"], id.as_str());
    assert!(
        body["data"]["download_url"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{PUBLIC_URL}/exports/{id}/bundle?")),
        "{body}"
    );

    // A remote nobody answers at: five tries, each after a longer wait, then the end. The
    // clock runs a minute further ahead after each try, and the scheduler is woken by
    // another export asked for (which waits behind this one).
    let ahead = std::sync::Arc::new(std::sync::atomic::AtomicI64::new(0));
    let ticking = {
        let (now, ahead) = (app.now.clone(), ahead.clone());
        tokio::spawn(async move {
            loop {
                let seconds = ahead.load(std::sync::atomic::Ordering::Relaxed);
                *now.lock().unwrap() =
                    Some(chrono::Utc::now() + chrono::Duration::seconds(seconds));
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        })
    };
    let failing = start(
        &app,
        &token,
        json!({"destination": {"kind": "git", "url": "http://127.0.0.1:9/nowhere.git"}}),
    )
    .await;
    let mut waiting = Vec::new();
    let mut retries = Vec::new();
    let deadline = std::time::Instant::now() + PATIENCE * 2;
    let failed = loop {
        assert!(
            std::time::Instant::now() < deadline,
            "the export never gave up"
        );
        let (_, answer) = call(&app, &token, "GET", &format!("/exports/{failing}"), None).await;
        let data = answer["data"].clone();
        if data["status"] == "failed" {
            break data;
        }
        if data["retry_at"].is_string() && retries.last() != Some(&data["retry_at"]) {
            retries.push(data["retry_at"].clone());
            ahead.fetch_add(60, std::sync::atomic::Ordering::Relaxed);
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            waiting.push(start(&app, &token, json!({"destination": {"kind": "bundle"}})).await);
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    let reason = failed["error"].as_str().unwrap();
    assert!(reason.contains("(tried 5 times)"), "{reason}");
    assert!(reason.contains("127.0.0.1:9"), "{reason}");
    assert_eq!(
        retries.len(),
        4,
        "a wait after each of the first four tries"
    );
    let email = sink.wait_for("rui@example.com", "Your export failed").await;
    assert!(
        email.decoded().contains("127.0.0.1:9"),
        "{}",
        email.decoded()
    );
    until("the second webhook call", PATIENCE, || async {
        calls.lock().unwrap().len() >= 2
    })
    .await;
    let body: Value = serde_json::from_str(&calls.lock().unwrap()[1].1).unwrap();
    assert_eq!(body["type"], "export.failed");
    assert_eq!(body["data"]["export"], failing.as_str());
    assert!(body["data"]["download_url"].is_null());
    // The exports behind it go on.
    for id in &waiting {
        assert_eq!(ended(&app, &token, id).await["status"], "completed");
    }
    ticking.abort();
}
