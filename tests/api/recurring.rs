//! Recurring capsules end to end, with a real SMTP listener: one confirmation for the
//! series, each occurrence its own release and email, cancelling stops the rest, missed
//! occurrences after downtime are skipped, and schedules are checked field by field.
//!
//! The schedules fire every second (the minimum interval is lowered to 1 s), so a test
//! sees several occurrences; how many are delivered rather than skipped depends on how
//! fast the machine is, so the tests check what holds either way: every occurrence is
//! released or skipped exactly once, each release has one email with its own Message-ID.

use std::time::Duration;

use cairn::Config;
use serde_json::{Value, json};

use crate::helpers::{Backend, CapsuleEmail, PATIENCE, TestApp, mail_config, spawn_with, until};
use crate::smtp::{Received, SmtpSink};

crate::on_both_backends!(
    recurring: a_recurring_capsule_is_delivered_at_each_occurrence,
    cancelling_stops_the_series,
    occurrences_missed_while_down_are_skipped,
    schedules_are_checked,
    deliveries_count_against_the_sender_limit
);

async fn config(backend: Backend) -> (Config, SmtpSink) {
    let (mut config, sink) = mail_config(backend).await;
    config.capsule_min_interval = 1;
    (config, sink)
}

fn capsule(schedule: Value) -> Value {
    json!({
        "sender": {"email": "ada@example.com", "name": "Ada"},
        "recipient": {"email": "grace@example.com", "name": "Grace"},
        "text": "Water the plants",
        "schedule": schedule,
    })
}

async fn submit(app: &TestApp, body: &Value) -> (u16, Value) {
    let response = app
        .client
        .post(format!("{}/capsules", app.address))
        .json(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

/// Submit and confirm; the capsule's id.
async fn submit_and_confirm(app: &TestApp, sink: &SmtpSink, schedule: Value) -> String {
    let (status, body) = submit(app, &capsule(schedule)).await;
    assert_eq!(status, 202, "{body}");
    let confirmation = sink
        .wait_for("ada@example.com", "Confirm your time capsule")
        .await;
    let id = confirmation.capsule_id("confirm");
    assert_eq!(
        app.get_text(&format!("/api/confirm?id={id}")).await,
        (200, String::new())
    );
    id
}

fn deliveries(sink: &SmtpSink) -> Vec<Received> {
    sink.received()
        .into_iter()
        .filter(|m| m.to.eq_ignore_ascii_case("grace@example.com"))
        .collect()
}

/// The capsule's events by type, in order: (type, payload).
async fn events(app: &TestApp, id: &str) -> Vec<(String, Value)> {
    app.events
        .read_stream(&format!("capsule-{id}"))
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.event_type, e.payload))
        .collect()
}

/// The occurrence numbers of the released and the skipped occurrences.
async fn occurrences(app: &TestApp, id: &str) -> (Vec<u64>, Vec<u64>) {
    let number = |p: &Value| p["occurrence"].as_u64().unwrap();
    let events = events(app, id).await;
    let of = |kind: &str| -> Vec<u64> {
        events
            .iter()
            .filter(|(t, _)| t == kind)
            .map(|(_, p)| number(p))
            .collect()
    };
    (of("capsule.released"), of("capsule.occurrence_skipped"))
}

/// Every occurrence from 1 to the last is released or skipped, once.
fn each_once(released: &[u64], skipped: &[u64]) {
    let mut all: Vec<u64> = released.iter().chain(skipped).copied().collect();
    all.sort_unstable();
    let expected: Vec<u64> = (1..=all.len() as u64).collect();
    assert_eq!(all, expected, "released {released:?}, skipped {skipped:?}");
}

/// Once the outbox has sent them, one email per release, each with its own Message-ID.
async fn one_email_per_release(app: &TestApp, sink: &SmtpSink, id: &str) {
    let (released, _) = occurrences(app, id).await;
    until("an email for every release", PATIENCE, || async {
        deliveries(sink).len() >= released.len()
    })
    .await;
    let mut ids: Vec<String> = deliveries(sink)
        .iter()
        .map(|m| m.header("Message-ID").unwrap())
        .collect();
    assert_eq!(ids.len(), released.len(), "one email per release");
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), released.len(), "each with its own Message-ID");
}

pub async fn a_recurring_capsule_is_delivered_at_each_occurrence(backend: Backend) {
    let (config, sink) = config(backend).await;
    let app = spawn_with(config).await;
    let (status, body) = submit(
        &app,
        &capsule(json!({"cron": "* * * * * *", "time_zone": "Europe/Berlin", "count": 3})),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let data = &body["data"];
    assert_eq!(data["schedule"]["cron"], "* * * * * *");
    assert_eq!(data["schedule"]["time_zone"], "Europe/Berlin");
    assert_eq!(data["schedule"]["count"], 3);
    assert_eq!(data["then"].as_array().map(Vec::len), Some(2));

    let confirmation = sink
        .wait_for("ada@example.com", "Confirm your time capsule")
        .await;
    let id = confirmation.capsule_id("confirm");
    assert_eq!(
        app.get_text(&format!("/api/confirm?id={id}")).await,
        (200, String::new())
    );
    // One confirmation for the series: the receipt names the schedule and its end.
    let receipt = sink.wait_for("ada@example.com", "is scheduled").await;
    let text = receipt.decoded();
    assert!(
        text.contains("repeats on the schedule * * * * * * (Europe/Berlin)"),
        "{text}"
    );
    assert!(text.contains("ends after 3 deliveries"), "{text}");

    until("the series to end", PATIENCE, || async {
        occurrences(&app, &id).await.0.last() == Some(&3)
    })
    .await;
    let (released, skipped) = occurrences(&app, &id).await;
    each_once(&released, &skipped);
    one_email_per_release(&app, &sink, &id).await;
    let mails = deliveries(&sink);
    let last = mails
        .iter()
        .find(|m| {
            m.decoded()
                .contains("This is delivery 3 of a recurring capsule")
        })
        .expect("the last delivery says which it is");
    assert!(last.decoded().contains("It was the last one."));
    if let Some(first) = mails.iter().find(|m| m.decoded().contains("delivery 1 of")) {
        let text = first.decoded();
        assert!(text.contains("The next one is due on"), "{text}");
        assert!(
            text.contains(&format!("/cancel/{id}")),
            "how to stop the series: {text}"
        );
    }

    let (status, view) = app.get(&format!("/capsules/{id}")).await;
    assert_eq!(status, 200);
    assert_eq!(view["data"]["status"], "released");
    assert_eq!(view["data"]["deliveries"], released.len());
    assert_eq!(view["data"]["schedule"]["count"], 3);
    assert!(view["data"].get("next_at").is_none());
    until("nothing left to release", PATIENCE, || async {
        app.store.next_due().await.unwrap().is_none()
    })
    .await;
}

pub async fn cancelling_stops_the_series(backend: Backend) {
    let (config, sink) = config(backend).await;
    let app = spawn_with(config).await;
    let id = submit_and_confirm(&app, &sink, json!({"cron": "* * * * * *"})).await;
    until("a first delivery", PATIENCE, || async {
        !deliveries(&sink).is_empty()
    })
    .await;
    let (status, view) = app.get(&format!("/capsules/{id}")).await;
    assert_eq!(status, 200);
    assert_eq!(
        view["data"]["status"], "active",
        "active between occurrences"
    );
    assert!(view["data"]["next_at"].is_string());

    assert_eq!(
        app.get_text(&format!(
            "/api/cancel?id={id}&recipientEmail=grace@example.com"
        ))
        .await,
        (200, String::new())
    );
    sink.wait_for("ada@example.com", "is cancelled").await;
    let events = events(&app, &id).await;
    let cancelled = events
        .iter()
        .position(|(t, _)| t == "capsule.cancelled")
        .expect("cancelled");
    assert!(
        events[cancelled..]
            .iter()
            .all(|(t, _)| t != "capsule.released" && t != "capsule.occurrence_skipped"),
        "nothing released after the cancellation: {events:?}"
    );
    assert!(
        app.store.next_due().await.unwrap().is_none(),
        "no release left in the due index"
    );
    let (released, skipped) = occurrences(&app, &id).await;
    each_once(&released, &skipped);
    one_email_per_release(&app, &sink, &id).await;
    let (_, view) = app.get(&format!("/capsules/{id}")).await;
    assert_eq!(view["data"]["status"], "cancelled");
    assert!(view["data"].get("next_at").is_none());
}

pub async fn occurrences_missed_while_down_are_skipped(backend: Backend) {
    let (config, sink) = config(backend).await;
    let app = spawn_with(config.clone()).await;
    let id = submit_and_confirm(&app, &sink, json!({"cron": "* * * * * *"})).await;
    until("a first delivery", PATIENCE, || async {
        !deliveries(&sink).is_empty()
    })
    .await;
    app.stop().await;
    let (before, _) = occurrences(&app, &id).await;
    // Down for three seconds: two or more occurrences pass unreleased.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let app = spawn_with(config).await;
    until("the release after the restart", PATIENCE, || async {
        occurrences(&app, &id).await.0.len() > before.len()
    })
    .await;
    let (released, skipped) = occurrences(&app, &id).await;
    assert!(
        skipped.len() >= 2,
        "the missed occurrences but the latest are skipped: released {released:?}, skipped {skipped:?}"
    );
    let events = events(&app, &id).await;
    let first_skip = events
        .iter()
        .position(|(t, _)| t == "capsule.occurrence_skipped")
        .expect("a skipped occurrence");
    let skip = &events[first_skip].1;
    assert!(skip["scheduled_at"].is_string(), "{skip}");
    assert_eq!(
        app.get_text(&format!(
            "/api/cancel?id={id}&recipientEmail=grace@example.com"
        ))
        .await,
        (200, String::new())
    );
    let (released, skipped) = occurrences(&app, &id).await;
    each_once(&released, &skipped);
    one_email_per_release(&app, &sink, &id).await;
}

pub async fn schedules_are_checked(backend: Backend) {
    let (config, _sink) = mail_config(backend).await;
    let app = spawn_with(config).await;
    let refused = |status: u16, body: &Value, field: &str| {
        assert_eq!(status, 400, "{body}");
        assert_eq!(body["code"], "invalid_schedule", "{body}");
        let message = body["error"].as_str().unwrap();
        assert!(message.contains(field), "{message} names {field}");
    };
    for (schedule, field) in [
        (json!({"cron": "every day"}), "schedule.cron"),
        (json!({"cron": "61 * * * *"}), "schedule.cron"),
        (json!({"cron": "@reboot"}), "schedule.cron"),
        (json!({"cron": "*/5 * * * *"}), "minimum interval"),
        (json!({"cron": "0 0 30 2 *"}), "no occurrence"),
        (
            json!({"cron": "0 9 * * *", "time_zone": "Mars/Olympus"}),
            "schedule.time_zone",
        ),
        (
            json!({"cron": "0 9 * * *", "until": "2020-01-01"}),
            "schedule.until",
        ),
        (
            json!({"cron": "0 9 * * *", "until": "tomorrow"}),
            "schedule.until",
        ),
        (json!({"cron": "0 9 * * *", "count": 0}), "schedule.count"),
    ] {
        let (status, body) = submit(&app, &capsule(schedule)).await;
        refused(status, &body, field);
    }
    // Neither a time nor a schedule.
    let mut neither = capsule(json!(null));
    neither.as_object_mut().unwrap().remove("schedule");
    let (status, body) = submit(&app, &neither).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("invalid_future_time"))
    );
    // A wrong type is a JSON error naming the field.
    let (status, body) = submit(&app, &capsule(json!({"cron": "0 9 * * *", "count": -1}))).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("invalid_json")),
        "{body}"
    );

    // 29 February: said to fire only in leap years.
    let (status, body) = submit(&app, &capsule(json!({"cron": "0 9 29 2 *"}))).await;
    assert_eq!(status, 202, "{body}");
    assert!(
        body["data"]["notes"][0]
            .as_str()
            .unwrap()
            .contains("leap years")
    );
    let send_at = body["data"]["send_at"].as_str().unwrap();
    assert!(send_at.contains("-02-29T09:00:00Z"), "{send_at}");

    // The Chronoria routes: the original fields unchanged, and the optional new ones.
    let chronoria = |extra: Value| {
        let mut body = json!({
            "senderEmail": "ada@example.com",
            "senderName": "Ada",
            "recipientEmail": "grace@example.com",
            "recipientName": "Grace",
            "sendTime": crate::helpers::in_ms(Duration::from_secs(3600)),
            "text": "hello",
        });
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        body
    };
    assert_eq!(
        app.submit_text(&chronoria(json!({}))).await,
        (200, String::new())
    );
    assert_eq!(
        app.submit_text(&chronoria(
            json!({"cron": "0 9 * * MON#1", "timeZone": "Europe/Berlin", "count": 12})
        ))
        .await,
        (200, String::new())
    );
    for bad in [
        json!({"cron": "nope"}),
        json!({"cron": "* * * * *"}),
        json!({"cron": "0 9 * * *", "timeZone": "Nowhere"}),
        json!({"cron": "0 9 * * *", "until": "yesterday"}),
        json!({"cron": "0 9 * * *", "count": "0"}),
    ] {
        assert_eq!(
            app.submit_text(&chronoria(bad.clone())).await,
            (400, "INVALID_SCHEDULE".into()),
            "{bad}"
        );
    }
    let form = reqwest::multipart::Form::new()
        .text("senderEmail", "ada@example.com")
        .text("senderName", "Ada")
        .text("recipientEmail", "grace@example.com")
        .text("recipientName", "Grace")
        .text("text", "")
        .text("textLocation", "Before")
        .text("cron", "@monthly")
        .text("until", "2030-12-31")
        .part(
            "FormFile",
            reqwest::multipart::Part::bytes(b"plants.txt".to_vec()).file_name("plants.txt"),
        );
    assert_eq!(app.submit_file(form).await, (200, String::new()));
    let bad_form = reqwest::multipart::Form::new()
        .text("senderEmail", "ada@example.com")
        .text("senderName", "Ada")
        .text("recipientEmail", "grace@example.com")
        .text("recipientName", "Grace")
        .text("text", "")
        .text("textLocation", "Before")
        .text("cron", "@monthly")
        .text("timeZone", "Mars/Olympus")
        .part(
            "FormFile",
            reqwest::multipart::Part::bytes(b"plants.txt".to_vec()).file_name("plants.txt"),
        );
    assert_eq!(
        app.submit_file(bad_form).await,
        (400, "INVALID_SCHEDULE".into())
    );
}

pub async fn deliveries_count_against_the_sender_limit(backend: Backend) {
    let (mut config, sink) = config(backend).await;
    config.capsule_limit_per_sender = 4;
    config.capsule_limit_window = 3600;
    let app = spawn_with(config).await;
    let id = submit_and_confirm(&app, &sink, json!({"cron": "* * * * * *", "count": 3})).await;
    until("the series to end", PATIENCE, || async {
        occurrences(&app, &id).await.0.last() == Some(&3)
    })
    .await;
    let (released, _) = occurrences(&app, &id).await;
    // The submission counted once; each delivery after the first once more.
    let spent = 1 + released.iter().filter(|n| **n > 1).count();
    let mut accepted = 0;
    loop {
        let (status, body) = submit(&app, &capsule(json!({"cron": "@daily"}))).await;
        match status {
            202 => accepted += 1,
            429 => break,
            other => panic!("{other}: {body}"),
        }
        assert!(accepted <= 4, "the limit held");
    }
    assert_eq!(accepted, 4 - spent, "released {released:?}");
}
