//! A capsule's history, as `GET /capsules/{id}` and the cancel page show it: read from
//! its events, with every email the SMTP listener received under the Message-ID it
//! received it with. Each step waits for the previous email's record, so the order the
//! entries are written in is the order asserted.

use std::time::Duration;

use reqwest::multipart::{Form, Part};
use serde_json::{Value, json};

use crate::browser::Browser;
use crate::helpers::{Backend, CapsuleEmail, PATIENCE, TestApp, in_ms, spawn_with_mail, until};
use crate::smtp::Received;

crate::on_both_backends!(
    history: a_delivered_capsules_history_has_every_step_and_email,
    a_cancelled_capsules_history_ends_with_the_cancellation,
    an_expired_capsules_history_shows_the_expiry_and_the_file_deletion
);

fn capsule(sender: &str, send_time: i64) -> Value {
    json!({
        "senderEmail": sender, "senderName": "Ada",
        "recipientEmail": "grace@example.com", "recipientName": "Grace",
        "sendTime": send_time,
        "text": "a private note",
    })
}

/// The history `GET /capsules/{id}` shows, and the whole answer as text.
async fn history(app: &TestApp, id: &str) -> (Vec<Value>, String) {
    let response = app
        .client
        .get(format!("{}/capsules/{id}", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    let body: Value = serde_json::from_str(&text).unwrap();
    (body["data"]["history"].as_array().unwrap().clone(), text)
}

/// Each entry in short: its `event`, and for an email what it was.
fn summary(entries: &[Value]) -> Vec<String> {
    entries
        .iter()
        .map(|e| match e["event"].as_str().unwrap() {
            "email_sent" => format!("email_sent {}", e["purpose"].as_str().unwrap()),
            other => other.to_owned(),
        })
        .collect()
}

/// Wait until the history of `id` records the `purpose` email as sent; the history then.
async fn recorded(app: &TestApp, id: &str, purpose: &str) -> Vec<Value> {
    let wanted = format!("email_sent {purpose}");
    until(
        &format!("the {purpose} email to be recorded"),
        PATIENCE,
        || async { summary(&history(app, id).await.0).contains(&wanted) },
    )
    .await;
    history(app, id).await.0
}

/// The history's entry for the `purpose` email matches `email`, as the SMTP listener got
/// it, sent at the first try.
fn assert_email(entries: &[Value], purpose: &str, email: &Received) {
    let entry = entries
        .iter()
        .find(|e| e["event"] == "email_sent" && e["purpose"] == purpose)
        .unwrap_or_else(|| panic!("no {purpose} email in {entries:?}"));
    assert_eq!(
        entry["message_id"].as_str(),
        email.header("Message-ID").as_deref(),
        "{purpose}"
    );
    assert_eq!(entry["retries"], 0, "{purpose}");
}

/// Move the app's clock `hours` ahead and submit another capsule, whose schedule wakes the
/// scheduler to what is due by then.
async fn pass_hours(app: &TestApp, hours: i64) {
    *app.now.lock().unwrap() = Some(chrono::Utc::now() + chrono::Duration::hours(hours));
    let later = in_ms(Duration::from_secs(((hours + 24) * 3600) as u64));
    let (status, _) = app.submit_text(&capsule("bob@example.com", later)).await;
    assert_eq!(status, 200);
}

pub async fn a_delivered_capsules_history_has_every_step_and_email(backend: Backend) {
    let (app, sink) = spawn_with_mail(backend).await;
    let send_time = in_ms(Duration::from_secs(3600));
    assert_eq!(
        app.submit_text(&capsule("ada@example.com", send_time))
            .await
            .0,
        200
    );
    let confirmation = sink
        .wait_for("ada@example.com", "Confirm your time capsule")
        .await;
    let id = confirmation.capsule_id("confirm");
    recorded(&app, &id, "confirm").await;
    assert_eq!(app.get_text(&format!("/api/confirm?id={id}")).await.0, 200);
    let receipt = sink.wait_for("ada@example.com", "is scheduled").await;
    recorded(&app, &id, "active").await;

    pass_hours(&app, 2).await;
    let delivery = sink
        .wait_for("grace@example.com", "A time capsule from Ada")
        .await;
    let entries = recorded(&app, &id, "delivery").await;
    assert_eq!(
        summary(&entries),
        [
            "submitted",
            "email_sent confirm",
            "confirmed",
            "email_sent active",
            "released",
            "email_sent delivery",
        ]
    );
    assert_email(&entries, "confirm", &confirmation);
    assert_email(&entries, "active", &receipt);
    assert_email(&entries, "delivery", &delivery);
    let released = &entries[4];
    let scheduled = chrono::DateTime::from_timestamp_millis(send_time).unwrap();
    assert_eq!(released["occurrence"], 1);
    assert_eq!(
        released["scheduled_at"],
        scheduled.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    );
    assert_eq!(released["next_at"], Value::Null);
    let at: chrono::DateTime<chrono::Utc> = released["at"].as_str().unwrap().parse().unwrap();
    assert!(at >= scheduled, "released at {at}, due at {scheduled}");

    // Nothing personal: no address, no text.
    let (_, text) = history(&app, &id).await;
    for personal in ["ada@example.com", "grace@example.com", "a private note"] {
        assert!(!text.contains(personal), "{personal} in {text}");
    }
}

pub async fn a_cancelled_capsules_history_ends_with_the_cancellation(backend: Backend) {
    let (app, sink) = spawn_with_mail(backend).await;
    let send_time = in_ms(Duration::from_secs(3600));
    assert_eq!(
        app.submit_text(&capsule("ada@example.com", send_time))
            .await
            .0,
        200
    );
    let id = sink
        .wait_for("ada@example.com", "Confirm")
        .await
        .capsule_id("confirm");
    recorded(&app, &id, "confirm").await;
    assert_eq!(app.get_text(&format!("/api/confirm?id={id}")).await.0, 200);
    recorded(&app, &id, "active").await;
    assert_eq!(
        app.get_text(&format!(
            "/api/cancel?id={id}&recipientEmail=grace@example.com"
        ))
        .await
        .0,
        200
    );
    let notice = sink.wait_for("ada@example.com", "is cancelled").await;
    let entries = recorded(&app, &id, "cancelled").await;
    assert_eq!(
        summary(&entries),
        [
            "submitted",
            "email_sent confirm",
            "confirmed",
            "email_sent active",
            "cancelled",
            "email_sent cancelled",
        ]
    );
    assert_email(&entries, "cancelled", &notice);
    let (status, view) = app.get(&format!("/capsules/{id}")).await;
    assert_eq!(
        (status, view["data"]["status"].as_str()),
        (200, Some("cancelled"))
    );
}

/// A file capsule nobody confirmed: it expires, its file is deleted, and the sender is
/// told (that email and the deletion race each other: only each one's place after the
/// expiry is asserted).
pub async fn an_expired_capsules_history_shows_the_expiry_and_the_file_deletion(backend: Backend) {
    let (app, sink) = spawn_with_mail(backend).await;
    let form = Form::new()
        .part(
            "FormFile",
            Part::bytes(vec![7u8; 300]).file_name("notes.txt"),
        )
        .text("fileName", "notes.txt")
        .text("senderEmail", "ada@example.com")
        .text("senderName", "Ada")
        .text("recipientEmail", "grace@example.com")
        .text("recipientName", "Grace")
        .text(
            "sendTime",
            in_ms(Duration::from_secs(3 * 86_400)).to_string(),
        )
        .text("text", "a private note")
        .text("textLocation", "before");
    assert_eq!(app.submit_file(form).await.0, 200);
    let confirmation = sink.wait_for("ada@example.com", "Confirm").await;
    let id = confirmation.capsule_id("confirm");
    recorded(&app, &id, "confirm").await;

    pass_hours(&app, 25).await;
    let notice = sink.wait_for("ada@example.com", "expired").await;
    until(
        "the expiry's email and file deletion to be recorded",
        PATIENCE,
        || async {
            let shown = summary(&history(&app, &id).await.0);
            shown.contains(&"file_deleted".to_owned())
                && shown.contains(&"email_sent expired".to_owned())
        },
    )
    .await;
    let (entries, _) = history(&app, &id).await;
    let shown = summary(&entries);
    let steps: Vec<&String> = shown.iter().filter(|s| !s.starts_with("email")).collect();
    assert_eq!(steps, ["submitted", "expired", "file_deleted"]);
    let place = |what: &str| shown.iter().position(|s| s == what).unwrap();
    assert_eq!(place("email_sent confirm"), 1);
    assert!(place("email_sent expired") > place("expired"), "{shown:?}");
    assert_eq!(shown.len(), 5, "{shown:?}");
    assert_email(&entries, "confirm", &confirmation);
    assert_email(&entries, "expired", &notice);
}

/// The cancel page, in a browser, lists what happened to the capsule, with the Message-ID
/// of each email sent; after the cancellation, the cancellation too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cancel_page_shows_the_history_in_a_browser() {
    let (app, sink) = spawn_with_mail(Backend::Embedded).await;
    let send_time = in_ms(Duration::from_secs(3600));
    assert_eq!(
        app.submit_text(&capsule("ada@example.com", send_time))
            .await
            .0,
        200
    );
    let confirmation = sink.wait_for("ada@example.com", "Confirm").await;
    let id = confirmation.capsule_id("confirm");
    recorded(&app, &id, "confirm").await;
    assert_eq!(app.get_text(&format!("/api/confirm?id={id}")).await.0, 200);
    let receipt = sink.wait_for("ada@example.com", "is scheduled").await;
    recorded(&app, &id, "active").await;

    let browser = Browser::start().await;
    browser.open(&format!("{}/cancel/{id}", app.address)).await;
    assert!(browser.has("#history li").await);
    let shown = browser.text("#history").await;
    let lines: Vec<&str> = shown.lines().skip(1).collect();
    assert_eq!(lines.len(), 4, "{shown}");
    assert!(lines[0].ends_with(": Submitted."), "{shown}");
    assert!(
        lines[1].ends_with(&format!(
            ": Email sent: the request to confirm, to the sender (Message-ID {}).",
            confirmation.header("Message-ID").unwrap()
        )),
        "{shown}"
    );
    assert!(lines[2].ends_with(": Confirmed by its sender."), "{shown}");
    assert!(
        lines[3].contains(&receipt.header("Message-ID").unwrap()),
        "{shown}"
    );
    let at = browser.attribute("#history time", "datetime").await;
    assert!(at.parse::<chrono::DateTime<chrono::Utc>>().is_ok(), "{at}");
    for personal in ["ada@example.com", "grace@example.com", "a private note"] {
        assert!(!shown.contains(personal), "{personal} in {shown}");
    }

    browser
        .type_into("#recipientEmail", "grace@example.com")
        .await;
    browser.click("#cancel").await;
    assert_eq!(
        browser.text("#outcome").await,
        "Cancelled. It will not be delivered."
    );
    browser.open(&format!("{}/cancel/{id}", app.address)).await;
    let shown = browser.text("#history").await;
    assert!(shown.contains(": Cancelled."), "{shown}");
}
