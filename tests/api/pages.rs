//! The pages behind the links in capsule emails: a GET shows and never acts (mail
//! scanners fetch links), the form's POST acts. Over HTTP on every backend, and clicked
//! through in headless Chromium.

use cairn_command::capsules::Status;
use serde_json::json;

use crate::browser::Browser;
use crate::helpers::{Backend, CapsuleEmail, TestApp, spawn_with_mail};
use crate::smtp::SmtpSink;

crate::on_both_backends!(
    pages: a_get_never_acts_and_a_post_does,
    pages_refuse_what_cannot_be_done
);

/// Submit a capsule due in an hour; its id, from the confirmation email.
async fn submitted(app: &TestApp, sink: &SmtpSink, sender_name: &str) -> String {
    let body = json!({
        "senderEmail": "ada@example.com", "senderName": sender_name,
        "recipientEmail": "grace@example.com", "recipientName": "Grace",
        "sendTime": (chrono::Utc::now() + chrono::Duration::hours(1)).timestamp_millis(),
        "text": "see you in an hour",
    });
    assert_eq!(app.submit_text(&body).await.0, 200);
    sink.wait_for("ada@example.com", "Confirm")
        .await
        .capsule_id("confirm")
}

async fn status_of(app: &TestApp, id: &str) -> Status {
    let events = app
        .events
        .read_stream(&format!("capsule-{id}"))
        .await
        .unwrap();
    cairn_command::capsules::CapsuleState::of(&events)
        .unwrap()
        .unwrap()
        .status
}

pub async fn a_get_never_acts_and_a_post_does(backend: Backend) {
    let (app, sink) = spawn_with_mail(backend).await;
    let id = submitted(&app, &sink, "Ada <i>Lovelace</i>").await;
    let (status, html) = app
        .request_form(reqwest::Method::GET, &format!("/confirm/{id}"), &[])
        .await;
    assert_eq!(status, 200);
    assert!(html.contains(r#"<form method="post">"#), "{html}");
    assert!(
        html.contains("Ada &lt;i&gt;Lovelace&lt;"),
        "names are escaped: {html}"
    );
    // Fetched twice (a mail scanner, then the person): still waiting for confirmation.
    app.request_form(reqwest::Method::GET, &format!("/confirm/{id}"), &[])
        .await;
    assert_eq!(status_of(&app, &id).await, Status::Pending);

    let (status, html) = app
        .request_form(reqwest::Method::POST, &format!("/confirm/{id}"), &[])
        .await;
    assert_eq!(status, 200, "{html}");
    assert!(html.contains("Confirmed."), "{html}");
    assert_eq!(status_of(&app, &id).await, Status::Active);
    sink.wait_for("ada@example.com", "is scheduled").await;

    let (status, html) = app
        .request_form(reqwest::Method::GET, &format!("/cancel/{id}"), &[])
        .await;
    assert_eq!(status, 200);
    assert!(html.contains(r#"name="recipientEmail""#), "{html}");
    assert_eq!(status_of(&app, &id).await, Status::Active);
    let (status, html) = app
        .request_form(
            reqwest::Method::POST,
            &format!("/cancel/{id}"),
            &[("recipientEmail", "ada@example.com")],
        )
        .await;
    assert_eq!(status, 400);
    assert!(html.contains("not the address"), "{html}");
    let (status, html) = app
        .request_form(
            reqwest::Method::POST,
            &format!("/cancel/{id}"),
            &[("recipientEmail", "Grace@Example.com")],
        )
        .await;
    assert_eq!(status, 200, "{html}");
    assert!(html.contains("Cancelled."), "{html}");
    assert_eq!(status_of(&app, &id).await, Status::Cancelled);
    sink.wait_for("ada@example.com", "is cancelled").await;
}

pub async fn pages_refuse_what_cannot_be_done(backend: Backend) {
    let (app, sink) = spawn_with_mail(backend).await;
    let unknown = uuid::Uuid::now_v7();
    for path in [
        format!("/confirm/{unknown}"),
        format!("/cancel/{unknown}"),
        format!("/download/{unknown}"),
        "/confirm/not-an-id".to_owned(),
        "/cancel/%FF%FE".to_owned(),
    ] {
        let (status, html) = app.request_form(reqwest::Method::GET, &path, &[]).await;
        assert_eq!(status, 404, "{path}: {html}");
        assert!(html.contains(r#"id="outcome""#), "{path}: {html}");
    }
    let id = submitted(&app, &sink, "Ada").await;
    let (status, html) = app
        .request_form(reqwest::Method::GET, &format!("/download/{id}"), &[])
        .await;
    assert_eq!(status, 404);
    assert!(html.contains("no file"), "{html}");
    assert_eq!(
        app.request_form(reqwest::Method::POST, &format!("/confirm/{id}"), &[])
            .await
            .0,
        200
    );
    let (status, html) = app
        .request_form(reqwest::Method::POST, &format!("/confirm/{id}"), &[])
        .await;
    assert_eq!(status, 409);
    assert!(html.contains("confirmed and waits"), "{html}");
    let (status, _) = app
        .request_form(reqwest::Method::POST, &format!("/cancel/{id}"), &[])
        .await;
    assert_eq!(status, 400, "no address given");
}

/// A person in a browser: opening the link shows the capsule without confirming it; the
/// button confirms it; the cancel page takes the recipient's address and cancels.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_confirms_and_cancels_in_a_browser() {
    let (app, sink) = spawn_with_mail(Backend::Embedded).await;
    let id = submitted(&app, &sink, "Ada").await;
    let browser = Browser::start().await;

    browser.open(&format!("{}/confirm/{id}", app.address)).await;
    assert!(browser.has("#confirm").await);
    assert_eq!(
        status_of(&app, &id).await,
        Status::Pending,
        "opening the link does nothing"
    );
    browser.click("#confirm").await;
    assert!(browser.text("#outcome").await.starts_with("Confirmed."));
    assert_eq!(status_of(&app, &id).await, Status::Active);

    browser.open(&format!("{}/cancel/{id}", app.address)).await;
    browser
        .type_into("#recipientEmail", "grace@example.com")
        .await;
    browser.click("#cancel").await;
    assert_eq!(
        browser.text("#outcome").await,
        "Cancelled. It will not be delivered."
    );
    assert_eq!(status_of(&app, &id).await, Status::Cancelled);
}
