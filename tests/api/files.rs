//! File capsules: `POST /api/submit/file` as the Chronoria client sends it (multipart,
//! names in any case, fields after the file), the delivery email's download page, the
//! signed links it mints, and the file's deletion when the capsule is over.

use std::time::Duration;

use reqwest::multipart::{Form, Part};

use crate::helpers::{
    Backend, CapsuleEmail, PATIENCE, PUBLIC_URL, TestApp, eventually, in_ms, mail_config,
    spawn_with, spawn_with_mail, test_config, until,
};
use crate::smtp::SmtpSink;

crate::on_both_backends!(
    files: a_file_capsule_is_delivered_with_working_links,
    file_submission_errors,
    a_cancelled_capsules_file_is_deleted,
    a_delivered_file_is_deleted_after_its_retention,
    an_expired_capsules_file_is_deleted,
    chronoria_codes_for_cancels_and_download_links,
    pages_and_files_on_two_hosts
);

/// A file of `len` bytes that is not all the same byte.
fn contents(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

/// The form the Chronoria client sends, with the file first and the fields after it.
fn form(send_time: i64, file: Vec<u8>) -> Form {
    Form::new()
        .part(
            "FormFile",
            Part::bytes(file).file_name("C:\\fakepath\\draft.bin"),
        )
        .text("FILENAME", "Résumé \"final\".txt")
        .text("senderEmail", "ada@example.com")
        .text("sendername", "Ada")
        .text("RecipientEmail", "grace@example.com")
        .text("recipientName", "Grace")
        .text("sendTime", send_time.to_string())
        .text("text", "Open this one first")
        .text("textLocation", "before")
        .text("comment", "fields Cairn does not know are ignored")
}

/// The download link on a download page.
fn link_on(page: &str) -> String {
    let start = page.find("href=\"").expect("a link") + 6;
    let end = start + page[start..].find('"').unwrap();
    page[start..end]
        .replace("&#x2f;", "/")
        .replace("&amp;", "&")
}

/// Where the capsule `id` keeps its file: `capsules/<id>.<upload>` in the blob directory.
fn blob_of(app: &TestApp, id: &str) -> std::path::PathBuf {
    let dir = app.config.data_dir.join("blobs/capsules");
    let mut found: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            name.starts_with(&format!("{id}.")) && !name.contains('#')
        })
        .collect();
    assert_eq!(found.len(), 1, "one file for {id}: {found:?}");
    found.remove(0)
}

/// Submit a file capsule and confirm it; its id.
async fn confirmed(app: &TestApp, sink: &SmtpSink, send_time: i64, file: Vec<u8>) -> String {
    assert_eq!(
        app.submit_file(form(send_time, file)).await,
        (200, String::new())
    );
    let id = sink
        .wait_for("ada@example.com", "Confirm")
        .await
        .capsule_id("confirm");
    let confirm = app
        .client
        .get(format!("{}/api/confirm?id={id}", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(confirm.status(), 200);
    sink.wait_for("ada@example.com", "is scheduled").await;
    id
}

/// `GET {path}` on the app with the recipient's address (`/api/downloadlink`,
/// `/api/cancel`, …): the status and the body.
async fn as_recipient(app: &TestApp, path: &str, id: &str) -> (u16, String) {
    app.get_text(&format!("{path}?id={id}&recipientEmail=grace@example.com"))
        .await
}

async fn wait_until_gone(path: &std::path::Path) {
    until(
        &format!("{} to be deleted", path.display()),
        PATIENCE,
        || async { !path.exists() },
    )
    .await;
}

pub async fn a_file_capsule_is_delivered_with_working_links(backend: Backend) {
    let (app, sink) = spawn_with_mail(backend).await;
    let file = contents(3 * 1024 * 1024 + 17);
    let id = confirmed(&app, &sink, in_ms(Duration::from_secs(3)), file.clone()).await;
    assert_eq!(
        std::fs::read(blob_of(&app, &id)).unwrap(),
        file,
        "kept whole"
    );

    let delivery = sink.wait_for("grace@example.com", "A time capsule").await;
    let text = delivery.decoded();
    let page_url = format!("{PUBLIC_URL}/download/{id}");
    let (said, linked) = (
        text.find("Open this one first").unwrap(),
        text.find(&page_url).expect("the download page"),
    );
    assert!(said < linked, "textLocation Before puts the text first");
    assert!(text.contains("Résumé \"final\".txt"), "{text}");

    // The page asks for the recipient's address and mints a link for it alone.
    let page = app.client.get(app.local(&page_url)).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let page = page.text().await.unwrap();
    assert!(page.contains("Résumé &quot;final&quot;.txt"), "{page}");
    assert!(page.contains("3.1 MB"), "{page}");
    let ask = |email: &'static str| {
        app.client
            .post(app.local(&page_url))
            .form(&[("recipientEmail", email)])
            .send()
    };
    assert_eq!(ask("ada@example.com").await.unwrap().status(), 400);
    let answered = ask("Grace@Example.com").await.unwrap();
    assert_eq!(answered.status(), 200);
    let link = link_on(&answered.text().await.unwrap());
    assert!(
        link.starts_with(&format!("{PUBLIC_URL}/capsules/{id}/file/R%C3%A9sum%C3%A9")),
        "{link}"
    );

    let download = app.client.get(app.local(&link)).send().await.unwrap();
    assert_eq!(download.status(), 200);
    assert_eq!(
        download.headers()["content-disposition"],
        "attachment; filename=\"R_sum_ _final_.txt\"; filename*=UTF-8''R%C3%A9sum%C3%A9%20%22final%22.txt"
    );
    assert_eq!(
        download.headers()["content-type"],
        "application/octet-stream"
    );
    assert_eq!(download.bytes().await.unwrap().as_ref(), file.as_slice());

    // A large download can be resumed.
    let rest = app
        .client
        .get(app.local(&link))
        .header("Range", "bytes=1000-")
        .send()
        .await
        .unwrap();
    assert_eq!(rest.status(), 206);
    assert_eq!(
        rest.headers()["content-range"],
        format!("bytes 1000-{}/{}", file.len() - 1, file.len()).as_str()
    );
    assert_eq!(rest.bytes().await.unwrap().as_ref(), &file[1000..]);

    // The Chronoria client's route answers the bare URL.
    let (status, bare) = as_recipient(&app, "/api/downloadlink", &id).await;
    assert_eq!(status, 200);
    assert!(
        bare.starts_with(&format!("{PUBLIC_URL}/capsules/{id}/file/")),
        "{bare}"
    );
    let fetched = app.client.get(app.local(&bare)).send().await.unwrap();
    assert_eq!(fetched.bytes().await.unwrap().len(), file.len());

    // A link changed in any way does not work; nor does one past its time.
    let tampered = link.replace("expires=", "expires=9");
    let status = |url: String| {
        let client = app.client.clone();
        async move { client.get(url).send().await.unwrap().status().as_u16() }
    };
    assert_eq!(status(app.local(&tampered)).await, 403);
    let other = link.replace(&id, "00000000-0000-4000-8000-000000000000");
    assert_eq!(status(app.local(&other)).await, 403);
    *app.now.lock().unwrap() = Some(chrono::Utc::now() + chrono::Duration::hours(13));
    let expired = app.client.get(app.local(&link)).send().await.unwrap();
    assert_eq!(expired.status(), 410);
    assert!(
        expired
            .text()
            .await
            .unwrap()
            .contains(&format!("{PUBLIC_URL}/download/{id}")),
        "says where to get a new one"
    );
}

pub async fn file_submission_errors(backend: Backend) {
    let (app, _sink) = spawn_with_mail(backend).await;
    let later = in_ms(Duration::from_secs(3600));
    let blobs = app.config.data_dir.join("blobs");
    let with = |name: &str, value: &str| {
        let base = [
            ("senderEmail", "ada@example.com"),
            ("senderName", "Ada"),
            ("recipientEmail", "grace@example.com"),
            ("recipientName", "Grace"),
            ("text", "hi"),
            ("textLocation", "After"),
        ];
        let mut form = Form::new()
            .part("FormFile", Part::bytes(contents(1000)).file_name("a.bin"))
            .text("sendTime", later.to_string());
        for (field, v) in base {
            form = form.text(
                field,
                if field == name {
                    value.to_owned()
                } else {
                    v.to_owned()
                },
            );
        }
        form
    };
    for (form, code) in [
        (with("senderEmail", "nope"), "INVALID_EMAIL"),
        (with("recipientName", " "), "INVALID_NAME"),
        (with("textLocation", "Middle"), "INVALID_TEXT_LOC"),
        (with("text", &"x".repeat(10_001)), "INVALID_TEXT"),
    ] {
        assert_eq!(app.submit_file(form).await, (400, code.to_owned()));
    }
    // Empty text is fine with a file; a missing or empty file is not. Sent again with
    // the same Idempotency-Key, it is the same capsule, and its second upload is dropped.
    for _ in 0..2 {
        let retried = app
            .client
            .post(format!("{}/api/submit/file", app.address))
            .header("Idempotency-Key", "upload-1")
            .multipart(with("text", ""))
            .send()
            .await
            .unwrap();
        assert_eq!(retried.status(), 200);
    }
    let no_file = Form::new()
        .text("senderEmail", "ada@example.com")
        .text("senderName", "Ada")
        .text("recipientEmail", "grace@example.com")
        .text("recipientName", "Grace")
        .text("sendTime", later.to_string())
        .text("text", "hi")
        .text("textLocation", "After");
    assert_eq!(app.submit_file(no_file).await, (400, "INVALID_FILE".into()));
    let empty = with("x", "").part("FormFile", Part::bytes(Vec::new()).file_name("e"));
    assert_eq!(
        app.submit_file(empty).await,
        (400, "INVALID_FILE".into()),
        "two files"
    );
    let response = app
        .client
        .post(format!("{}/api/submit/file", app.address))
        .json(&serde_json::json!({"text": "hi"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 415);

    // Refused uploads leave nothing behind: only the one accepted capsule's file.
    let kept: Vec<_> = std::fs::read_dir(blobs.join("capsules"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(kept.len(), 1, "{kept:?}");
}

pub async fn a_cancelled_capsules_file_is_deleted(backend: Backend) {
    let (app, sink) = spawn_with_mail(backend).await;
    let id = confirmed(
        &app,
        &sink,
        in_ms(Duration::from_secs(3600)),
        contents(5000),
    )
    .await;
    let blob = blob_of(&app, &id);
    assert!(blob.exists());
    // Before its time, the sender may fetch the file back (the link needs the id).
    let (_, link) = as_recipient(&app, "/downloadlink", &id).await;
    assert_eq!(as_recipient(&app, "/api/cancel", &id).await.0, 200);
    wait_until_gone(&blob).await;
    let after = app.client.get(app.local(&link)).send().await.unwrap();
    assert_eq!(after.status(), 410);
    let page = app
        .client
        .get(format!("{}/download/{id}", app.address))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("This capsule was cancelled."), "{page}");
    until("the purge to leave the due index", PATIENCE, || async {
        app.store.next_due().await.unwrap().is_none()
    })
    .await;
}

/// A capsule nobody confirmed takes its file with it when it expires. (The clock is
/// moved; a new schedule wakes the scheduler.)
pub async fn an_expired_capsules_file_is_deleted(backend: Backend) {
    let (app, sink) = spawn_with_mail(backend).await;
    let week = in_ms(Duration::from_secs(7 * 86_400));
    assert_eq!(app.submit_file(form(week, contents(5000))).await.0, 200);
    let id = sink
        .wait_for("ada@example.com", "Confirm")
        .await
        .capsule_id("confirm");
    let blob = blob_of(&app, &id);

    *app.now.lock().unwrap() = Some(chrono::Utc::now() + chrono::Duration::hours(25));
    let later = in_ms(Duration::from_secs(8 * 86_400));
    assert_eq!(app.submit_file(form(later, contents(10))).await.0, 200);
    sink.wait_for("ada@example.com", "expired").await;
    wait_until_gone(&blob).await;
}

/// A delivered capsule's file is kept for the retention period (30 days by default),
/// then deleted; the page says so. (The clock is moved; a new schedule wakes the
/// scheduler.)
pub async fn a_delivered_file_is_deleted_after_its_retention(backend: Backend) {
    let (app, sink) = spawn_with_mail(backend).await;
    let id = confirmed(&app, &sink, in_ms(Duration::from_secs(3)), contents(5000)).await;
    sink.wait_for("grace@example.com", "A time capsule").await;
    let blob = blob_of(&app, &id);
    assert!(blob.exists(), "kept after delivery");

    *app.now.lock().unwrap() = Some(chrono::Utc::now() + chrono::Duration::days(31));
    let later = in_ms(Duration::from_secs(40 * 86_400));
    assert_eq!(app.submit_file(form(later, contents(10))).await.0, 200);
    wait_until_gone(&blob).await;
    // The file goes first, then the event saying so: the page follows the event.
    let form = [("recipientEmail", "grace@example.com")];
    let page = eventually(
        "the page to stop offering the deleted file",
        PATIENCE,
        || async {
            let (status, page) = app
                .request_form(reqwest::Method::POST, &format!("/download/{id}"), &form)
                .await;
            (status == 410).then_some(page)
        },
    )
    .await;
    assert!(page.contains("no longer kept"), "{page}");
}

/// The 200,000,000-byte limit, when the client gives no length: the upload stops at the
/// first byte past it, is refused, and leaves nothing behind. (The same on every
/// backend: run on the embedded one.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_file_past_the_limit_is_refused() {
    let (app, _sink) = spawn_with_mail(Backend::Embedded).await;
    const MIB: usize = 1 << 20;
    let total: usize = 200_000_001;
    let chunks = futures_util::stream::iter((0..total.div_ceil(MIB)).map(move |i| {
        let len = (total - i * MIB).min(MIB);
        Ok::<_, std::io::Error>(vec![7_u8; len])
    }));
    let streamed = Form::new()
        .part(
            "FormFile",
            Part::stream(reqwest::Body::wrap_stream(chunks)).file_name("big.bin"),
        )
        .text("senderEmail", "ada@example.com")
        .text("senderName", "Ada")
        .text("recipientEmail", "grace@example.com")
        .text("recipientName", "Grace")
        .text("sendTime", in_ms(Duration::from_secs(3600)).to_string())
        .text("textLocation", "After");
    assert_eq!(
        app.submit_file(streamed).await,
        (400, "INVALID_FILE".into())
    );
    let left: Vec<_> = std::fs::read_dir(app.config.data_dir.join("blobs/capsules"))
        .map(|dir| dir.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    until(
        &format!("the refused upload's files {left:?} to be deleted"),
        PATIENCE,
        || async { left.iter().all(|p| !p.exists()) },
    )
    .await;
}

/// A `Content-Length` past the limit is refused before the body is read; a body that
/// stops arriving is answered 408 after the idle timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_are_refused_by_length_and_by_idleness() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut config = test_config(Backend::Embedded).await;
    config.upload_idle_timeout = 1;
    let app = spawn_with(config).await;
    let host = app.address.trim_start_matches("http://").to_owned();
    let ask = |length: u64, body: String| {
        let host = host.clone();
        async move {
            let mut tcp = tokio::net::TcpStream::connect(&host).await.unwrap();
            let head = format!(
                "POST /api/submit/file HTTP/1.1\r\nHost: {host}\r\n\
                 Content-Type: multipart/form-data; boundary=XyZ\r\n\
                 Content-Length: {length}\r\nConnection: close\r\n\r\n{body}"
            );
            tcp.write_all(head.as_bytes()).await.unwrap();
            let mut answer = Vec::new();
            tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut answer))
                .await
                .expect("an answer")
                .unwrap();
            String::from_utf8_lossy(&answer).into_owned()
        }
    };
    let too_long = ask(300_000_000, String::new()).await;
    assert!(too_long.starts_with("HTTP/1.1 400"), "{too_long}");
    assert!(too_long.ends_with("INVALID_FILE"), "{too_long}");
    let stalled = ask(
        10_000,
        "--XyZ\r\nContent-Disposition: form-data; name=\"FormFile\"; filename=\"a\"\r\n\r\nabc"
            .to_owned(),
    )
    .await;
    assert!(stalled.starts_with("HTTP/1.1 408"), "{stalled}");
    // Part headers that never end are refused once they pass 4 MiB, not buffered on.
    let endless = format!(
        "--XyZ\r\nContent-Disposition: form-data; name=\"{}",
        "x".repeat(9 * 1024 * 1024 / 2)
    );
    let endless = ask(endless.len() as u64, endless).await;
    assert!(
        endless.starts_with("HTTP/1.1 400"),
        "{}",
        &endless[..endless.len().min(200)]
    );
    assert!(endless.ends_with("INVALID_FILE"));
}

/// A recipient in a browser: the download page asks for their address and then shows a
/// fresh link, which downloads the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recipient_downloads_in_a_browser() {
    let (app, sink) = spawn_with_mail(Backend::Embedded).await;
    let file = contents(20_000);
    let id = confirmed(&app, &sink, in_ms(Duration::from_secs(3)), file.clone()).await;
    sink.wait_for("grace@example.com", "A time capsule").await;
    let browser = crate::browser::Browser::start().await;

    browser
        .open(&format!("{}/download/{id}", app.address))
        .await;
    assert!(browser.text("main").await.contains("Résumé \"final\".txt"));
    browser
        .type_into("#recipientEmail", "someone@example.com")
        .await;
    browser.click("#get-link").await;
    assert_eq!(
        browser.text("#outcome").await,
        "That is not the address this capsule is for."
    );
    browser
        .type_into("#recipientEmail", "grace@example.com")
        .await;
    browser.click("#get-link").await;
    assert_eq!(
        browser.text("#outcome").await,
        "Your download link is ready."
    );
    let link = browser.attribute("#download", "href").await;
    assert!(
        link.starts_with(&format!("{PUBLIC_URL}/capsules/{id}/file/")),
        "{link}"
    );
    let fetched = app.client.get(app.local(&link)).send().await.unwrap();
    assert_eq!(fetched.bytes().await.unwrap().as_ref(), file.as_slice());
}

/// Files no capsule keeps (an upload cut off by a crash, a file stored but never
/// submitted) are swept once old enough; a capsule's file stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_no_capsule_keeps_are_swept() {
    let (app, sink) = spawn_with_mail(Backend::Embedded).await;
    let id = confirmed(&app, &sink, in_ms(Duration::from_secs(3600)), contents(100)).await;
    let dir = app.config.data_dir.join("blobs/capsules");
    let stray = dir.join(uuid::Uuid::now_v7().to_string());
    let partial = dir.join(format!("{}#3", uuid::Uuid::now_v7()));
    let fresh = dir.join(uuid::Uuid::now_v7().to_string());
    let two_days_ago = std::time::SystemTime::now() - Duration::from_secs(2 * 86_400);
    for (path, written) in [
        (&stray, Some(two_days_ago)),
        (&partial, Some(two_days_ago)),
        (&fresh, None),
        (&blob_of(&app, &id), Some(two_days_ago)),
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
    let clock = cairn_events::Clock::system();
    let blobs = cairn::backends::open_blobs(&app.config).unwrap();
    let capsules = cairn::backends::capsules(&app.config, app.events.clone(), blobs, clock)
        .await
        .unwrap();
    let cutoff = chrono::Utc::now() - chrono::Duration::days(1);
    assert_eq!(capsules.sweep_files(cutoff).await.unwrap(), 2);
    assert!(!stray.exists() && !partial.exists());
    assert!(fresh.exists(), "too new to tell");
    assert!(blob_of(&app, &id).exists(), "its capsule keeps it");
}

/// The S3-compatible store the tests use (`scripts/test` starts one on port 5105).
fn s3_endpoint() -> String {
    std::env::var("CAIRN_TEST_S3_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:5105".into())
}

/// Files in an S3-compatible store, on Postgres + Redis: uploaded in parts, downloaded
/// whole and by range through a signed link, deleted when the capsule is cancelled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_are_kept_in_an_s3_compatible_store() {
    let endpoint = s3_endpoint();
    let bucket = format!("cairn-t-{}", uuid::Uuid::now_v7().simple());
    let http = crate::helpers::http();
    let made = http
        .put(format!("{endpoint}/{bucket}"))
        .send()
        .await
        .unwrap();
    assert!(
        made.status().is_success(),
        "creating the bucket: {}",
        made.status()
    );

    let (mut config, sink) = mail_config(Backend::PostgresRedis).await;
    config.blob_url = Some(cairn::config::Secret(format!(
        "s3://{bucket}/kept/here?endpoint={endpoint}&allow_http=true&region=us-east-1\
         &access_key_id=test&secret_access_key=test"
    )));
    let app = spawn_with(config).await;
    let file = contents(11 * 1024 * 1024 + 3);
    let id = confirmed(&app, &sink, in_ms(Duration::from_secs(3600)), file.clone()).await;
    let listing = http
        .get(format!(
            "{endpoint}/{bucket}?prefix=kept/here/capsules/{id}."
        ))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let start = listing.find("<Key>").expect("the file is stored") + 5;
    let end = start + listing[start..].find("</Key>").unwrap();
    let object = format!("{endpoint}/{bucket}/{}", &listing[start..end]);
    let stored = http.get(&object).send().await.unwrap();
    assert_eq!(stored.status(), 200);
    assert_eq!(stored.bytes().await.unwrap().as_ref(), file.as_slice());

    let (_, link) = as_recipient(&app, "/api/downloadlink", &id).await;
    let whole = app.client.get(app.local(&link)).send().await.unwrap();
    assert_eq!(whole.status(), 200);
    assert_eq!(whole.bytes().await.unwrap().as_ref(), file.as_slice());
    let tail = app
        .client
        .get(app.local(&link))
        .header("Range", "bytes=-100")
        .send()
        .await
        .unwrap();
    assert_eq!(tail.status(), 206);
    assert_eq!(
        tail.bytes().await.unwrap().as_ref(),
        &file[file.len() - 100..]
    );

    assert_eq!(as_recipient(&app, "/api/cancel", &id).await.0, 200);
    until(&format!("{object} to be deleted"), PATIENCE, || async {
        http.get(&object).send().await.unwrap().status() == 404
    })
    .await;
}

/// Chronoria's codes: a wrong recipient address is `VERIFICATION_FAILED` on `/api/cancel`
/// and `/api/downloadlink`; a capsule with no file to give (a text capsule in any state,
/// or a file capsule whose file was deleted) is `NO_FILE_AVAILABLE_FOR_THIS_CAPSULE`.
pub async fn chronoria_codes_for_cancels_and_download_links(backend: Backend) {
    let (app, sink) = spawn_with_mail(backend).await;
    let app = &app;
    let code = |path: &str, id: &str, address: &str| {
        let path = format!("{path}?id={id}&recipientEmail={address}");
        async move { app.get_text(&path).await }
    };
    let refused = |code: &str| (400, code.to_owned());
    const WRONG: &str = "VERIFICATION_FAILED";
    const NO_FILE: &str = "NO_FILE_AVAILABLE_FOR_THIS_CAPSULE";

    // A text capsule: no file while pending, active and cancelled.
    let text = serde_json::json!({
        "senderEmail": "kim@example.com", "senderName": "Kim",
        "recipientEmail": "grace@example.com", "recipientName": "Grace",
        "sendTime": in_ms(Duration::from_secs(3600)), "text": "words only",
    });
    assert_eq!(app.submit_text(&text).await.0, 200);
    let id = sink
        .wait_for("kim@example.com", "Confirm")
        .await
        .capsule_id("confirm");
    let grace = "grace@example.com";
    assert_eq!(
        code("/api/downloadlink", &id, grace).await,
        refused(NO_FILE)
    );
    assert_eq!(
        code("/api/downloadlink", &id, "kim@example.com").await,
        refused(WRONG)
    );
    assert_eq!(
        code("/api/cancel", &id, "kim@example.com").await,
        refused(WRONG)
    );
    assert_eq!(app.get_text(&format!("/api/confirm?id={id}")).await.0, 200);
    assert_eq!(
        code("/downloadlink", &id, "GRACE@example.com").await,
        refused(NO_FILE)
    );
    assert_eq!(
        code("/cancel", &id, "kim@example.com").await,
        refused(WRONG)
    );
    assert_eq!(code("/api/cancel", &id, grace).await, (200, String::new()));
    assert_eq!(
        code("/api/downloadlink", &id, grace).await,
        refused(NO_FILE)
    );
    assert_eq!(
        code("/api/cancel", &id, grace).await,
        refused("CAPSULE_NA_OR_RELEASED")
    );
    let unknown = uuid::Uuid::now_v7().to_string();
    assert_eq!(
        code("/api/cancel", &unknown, grace).await,
        refused("CAPSULE_NA_OR_RELEASED")
    );

    // A file capsule: its link to its recipient only; once cancelled, its file is
    // deleted, and then there is no file to give.
    let id = confirmed(app, &sink, in_ms(Duration::from_secs(3600)), contents(100)).await;
    assert_eq!(
        code("/api/downloadlink", &id, "ada@example.com").await,
        refused(WRONG)
    );
    assert_eq!(code("/api/downloadlink", &id, grace).await.0, 200);
    assert_eq!(
        code("/api/cancel", &id, "ada@example.com").await,
        refused(WRONG)
    );
    assert_eq!(code("/api/cancel", &id, grace).await.0, 200);
    until(
        "the cancelled capsule's file to be deleted",
        PATIENCE,
        || async { code("/api/downloadlink", &id, grace).await == refused(NO_FILE) },
    )
    .await;
    assert_eq!(
        code("/api/downloadlink", &id, "ada@example.com").await,
        refused(WRONG)
    );
}

/// With the Chronoria client serving the pages on its own host (`CAIRN_PAGES_URL`), the
/// links in emails lead there, while every file link leads to Cairn (`CAIRN_PUBLIC_URL`).
pub async fn pages_and_files_on_two_hosts(backend: Backend) {
    const CAIRN: &str = "https://cairn.example";
    const CLIENT: &str = "https://chronoria.example";
    let (mut config, sink) = mail_config(backend).await;
    config.public_url = CAIRN.into();
    config.pages_url = Some(format!("{CLIENT}/"));
    let app = spawn_with(config).await;
    let id_after = |text: &str, marker: &str| {
        let start = text
            .find(marker)
            .unwrap_or_else(|| panic!("{marker} in {text}"));
        text[start + marker.len()..start + marker.len() + 36].to_owned()
    };

    assert_eq!(
        app.submit_file(form(in_ms(Duration::from_secs(2)), contents(10)))
            .await,
        (200, String::new())
    );
    let confirmation = sink.wait_for("ada@example.com", "Confirm").await.decoded();
    let id = id_after(&confirmation, &format!("{CLIENT}/confirm/"));
    assert!(!confirmation.contains(CAIRN), "{confirmation}");
    assert_eq!(app.get_text(&format!("/api/confirm?id={id}")).await.0, 200);
    let receipt = sink
        .wait_for("ada@example.com", "is scheduled")
        .await
        .decoded();
    assert_eq!(id_after(&receipt, &format!("{CLIENT}/cancel/")), id);
    let delivery = sink
        .wait_for("grace@example.com", "A time capsule from Ada")
        .await
        .decoded();
    assert_eq!(id_after(&delivery, &format!("{CLIENT}/download/")), id);
    assert!(!delivery.contains(CAIRN), "{delivery}");

    // The file's links lead to Cairn, from the client's route and from the page.
    let (status, bare) = as_recipient(&app, "/api/downloadlink", &id).await;
    assert_eq!(status, 200);
    assert!(
        bare.starts_with(&format!("{CAIRN}/capsules/{id}/file/")),
        "{bare}"
    );
    let (status, page) = app
        .request_form(
            reqwest::Method::POST,
            &format!("/download/{id}"),
            &[("recipientEmail", "grace@example.com")],
        )
        .await;
    assert_eq!(status, 200, "{page}");
    let minted = link_on(&page);
    assert!(
        minted.starts_with(&format!("{CAIRN}/capsules/{id}/file/")),
        "{minted}"
    );
    let fetched = app
        .client
        .get(minted.replace(CAIRN, &app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(fetched.bytes().await.unwrap().len(), 10);
    // An expired link sends the person to the page for a new one, on the client's host.
    *app.now.lock().unwrap() = Some(chrono::Utc::now() + chrono::Duration::hours(13));
    let expired = app
        .client
        .get(minted.replace(CAIRN, &app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(expired.status(), 410);
    let words = expired.text().await.unwrap();
    assert!(
        words.contains(&format!("{CLIENT}/download/{id}")),
        "{words}"
    );
}
