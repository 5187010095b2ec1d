//! Time capsules through the Chronoria-compatible API, with a real SMTP listener: submit,
//! the confirmation email, confirm, the receipt, the release at the due time and the
//! delivery email; cancellation; every error code.

use std::time::Duration;

use serde_json::{Value, json};

use cairn::Role;

use crate::helpers::{
    Backend, CapsuleEmail, PATIENCE, PUBLIC_URL, TestApp, backend_env, eventually, in_ms,
    mail_config, redis_pttl, spawn_role, spawn_with, start_server, test_config, text_of, until,
};
use crate::smtp::SmtpSink;

crate::on_both_backends!(
    capsules: a_capsule_is_confirmed_and_delivered,
    a_capsule_is_cancelled,
    submission_errors,
    confirm_and_cancel_errors,
    the_web_client_may_call_from_its_origin,
    submissions_are_rate_limited,
    restarts_between_steps_lose_nothing,
    kill_9_during_delivery_loses_no_email,
    an_unconfirmed_capsule_expires,
    the_json_api_submits_and_shows_status,
    a_retried_submission_writes_one_capsule,
    names_reach_headers_literally_and_message_ids_are_valid
);

async fn spawn(backend: Backend) -> (TestApp, SmtpSink) {
    let (mut config, sink) = mail_config(backend).await;
    config.blocked_senders = vec!["Spam@Example.com".into()];
    config.cors_origins = vec!["https://app.example".into()];
    (spawn_with(config).await, sink)
}

fn capsule(send_time: i64) -> Value {
    json!({
        "senderEmail": "ada@example.com",
        "senderName": "Ada",
        "recipientEmail": "Grace@Example.com",
        "recipientName": "Grace",
        "sendTime": send_time,
        "text": "Hello from the past <b>bold</b>",
    })
}

pub async fn a_capsule_is_confirmed_and_delivered(backend: Backend) {
    let (app, sink) = spawn(backend).await;
    assert_eq!(app.get_text("/api/ping").await, (200, "Pong".into()));
    let send_time = in_ms(Duration::from_secs(2));
    assert_eq!(
        app.submit_text(&capsule(send_time)).await,
        (200, String::new())
    );

    let confirmation = sink
        .wait_for("ada@example.com", "Confirm your time capsule")
        .await;
    let id = confirmation.capsule_id("confirm");
    assert!(confirmation.decoded().contains("within 24 hours"));
    let message_id = confirmation.header("Message-ID").unwrap();
    assert!(message_id.ends_with("@capsules.example>"), "{message_id}");
    assert!(
        !message_id.contains(&id),
        "the capsule id stays out of mail logs"
    );

    assert_eq!(
        app.get_text(&format!("/api/confirm?id={id}")).await,
        (200, String::new())
    );
    let receipt = sink.wait_for("ada@example.com", "is scheduled").await;
    assert_eq!(receipt.capsule_id("cancel"), id);
    // Confirming twice is refused.
    assert_eq!(
        app.get_text(&format!("/confirm?id={id}")).await,
        (400, "CAPSULE_NA_OR_EXPIRED".into())
    );

    let delivery = sink
        .wait_for("Grace@Example.com", "A time capsule from Ada")
        .await;
    let sent_ms = delivery
        .at
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    assert!(sent_ms >= send_time as u128, "delivered before its time");
    let text = delivery.decoded();
    assert!(
        text.contains("Hello from the past <b>bold</b>"),
        "the plain text part"
    );
    assert!(
        text.contains("Hello from the past &lt;b&gt;bold&lt;"),
        "escaped in the HTML part"
    );
    assert_ne!(
        delivery.header("Message-ID"),
        confirmation.header("Message-ID")
    );
    // Released: it can no longer be cancelled, and it was delivered once.
    assert_eq!(
        app.get_text(&format!(
            "/api/cancel?id={id}&recipientEmail=grace@example.com"
        ))
        .await,
        (400, "CAPSULE_NA_OR_RELEASED".into())
    );
    assert_eq!(
        app.get_text(&format!(
            "/api/downloadlink?id={id}&recipientEmail=grace@example.com"
        ))
        .await,
        (400, "NO_FILE_AVAILABLE_FOR_THIS_CAPSULE".into()),
        "a text capsule has no file, delivered or not"
    );
    // Nothing is left to release it again: the release dropped its due item with the
    // event that queued the delivery.
    until("the due index to be empty", PATIENCE, || async {
        app.store.next_due().await.unwrap().is_none()
    })
    .await;
    let deliveries = sink
        .received()
        .iter()
        .filter(|m| m.header("Message-ID") == delivery.header("Message-ID"))
        .count();
    assert_eq!(deliveries, 1);
}

pub async fn a_capsule_is_cancelled(backend: Backend) {
    let (app, sink) = spawn(backend).await;
    assert_eq!(
        app.submit_text(&capsule(in_ms(Duration::from_secs(3600))))
            .await
            .0,
        200
    );
    let id = sink
        .wait_for("ada@example.com", "Confirm")
        .await
        .capsule_id("confirm");
    assert_eq!(app.get_text(&format!("/api/confirm/?id={id}")).await.0, 200);
    sink.wait_for("ada@example.com", "is scheduled").await;

    // Only the recipient's address (in any case) cancels.
    assert_eq!(
        app.get_text(&format!(
            "/api/cancel?id={id}&recipientEmail=ada@example.com"
        ))
        .await,
        (400, "VERIFICATION_FAILED".into())
    );
    assert_eq!(
        app.get_text(&format!("/cancel?id={id}&RecipientEmail=GRACE@example.com"))
            .await,
        (200, String::new())
    );
    sink.wait_for("ada@example.com", "is cancelled").await;
    assert_eq!(
        app.get_text(&format!(
            "/api/cancel?id={id}&recipientEmail=grace@example.com"
        ))
        .await,
        (400, "CAPSULE_NA_OR_RELEASED".into())
    );
    assert_eq!(
        app.get_text(&format!("/api/confirm?id={id}")).await,
        (400, "CAPSULE_NA_OR_EXPIRED".into())
    );
    assert_eq!(
        app.store.next_due().await.unwrap(),
        None,
        "nothing left to release"
    );
}

pub async fn submission_errors(backend: Backend) {
    let (app, _sink) = spawn(backend).await;
    let later = in_ms(Duration::from_secs(3600));
    let with = |field: &str, value: Value| {
        let mut body = capsule(later);
        body[field] = value;
        body
    };
    let long = "x".repeat(10_001);
    for (body, code) in [
        (with("senderEmail", json!("not an email")), "INVALID_EMAIL"),
        (
            with(
                "recipientEmail",
                json!(format!("{}@example.com", "a".repeat(250))),
            ),
            "INVALID_EMAIL",
        ),
        (with("senderName", json!("")), "INVALID_NAME"),
        (
            with("recipientName", json!("n".repeat(256))),
            "INVALID_NAME",
        ),
        (
            with("sendTime", json!(in_ms(Duration::ZERO) - 1000)),
            "INVALID_FUTURE_TIME",
        ),
        (with("sendTime", json!("soon")), "INVALID_FUTURE_TIME"),
        (with("text", json!("")), "INVALID_TEXT"),
        (with("text", json!(long)), "INVALID_TEXT"),
        (
            with("senderEmail", json!("spam@example.COM")),
            "BLOCKED_SENDER_EMAIL",
        ),
        (
            with("senderEmail", json!("spam+1@example.com")),
            "BLOCKED_SENDER_EMAIL",
        ),
    ] {
        assert_eq!(
            app.submit_text(&body).await,
            (400, code.to_owned()),
            "{body}"
        );
    }
    // Field names match in any case; the route works with a trailing slash.
    let shouted = json!({
        "SENDEREMAIL": "ada@example.com", "sendername": "Ada",
        "RecipientEmail": "ada@example.com", "RECIPIENTNAME": "Ada",
        "SendTime": later, "TEXT": "to myself",
    });
    let (status, _) = text_of(
        app.client
            .post(format!("{}/api/submit/text/", app.address))
            .json(&shouted),
    )
    .await;
    assert_eq!(status, 200);
}

pub async fn confirm_and_cancel_errors(backend: Backend) {
    let (app, _sink) = spawn(backend).await;
    let unknown = uuid::Uuid::now_v7();
    for (path, expected) in [
        ("/api/confirm".to_owned(), "INVALID_ID"),
        ("/api/confirm?id=nope".to_owned(), "INVALID_ID"),
        (
            format!("/api/confirm?id={unknown}"),
            "CAPSULE_NA_OR_EXPIRED",
        ),
        (
            format!("/api/cancel?id={unknown}&recipientEmail=a@b.co"),
            "CAPSULE_NA_OR_RELEASED",
        ),
        ("/api/cancel?id=nope".to_owned(), "INVALID_ID"),
        (
            format!("/api/downloadlink?id={unknown}&recipientEmail=a@b.co"),
            "CAPSULE_NA_OR_RELEASED",
        ),
    ] {
        assert_eq!(
            app.get_text(&path).await,
            (400, expected.to_owned()),
            "{path}"
        );
    }
    assert_eq!(
        app.submit_text(&capsule(in_ms(Duration::from_secs(3600))))
            .await
            .0,
        200
    );
    let _ = &app;
}

/// The Chronoria client is served from its own origin: its browser's preflight is
/// answered, and answers carry `Access-Control-Allow-Origin` for it and for no other.
pub async fn the_web_client_may_call_from_its_origin(backend: Backend) {
    let (app, _sink) = spawn(backend).await;
    let preflight = |origin: &'static str| {
        app.client
            .request(
                reqwest::Method::OPTIONS,
                format!("{}/api/submit/text", app.address),
            )
            .header("Origin", origin)
            .header("Access-Control-Request-Method", "POST")
            .header("Access-Control-Request-Headers", "content-type")
            .send()
    };
    let allowed = preflight("https://app.example").await.unwrap();
    assert_eq!(allowed.status(), 204);
    let headers = allowed.headers();
    assert_eq!(
        headers["access-control-allow-origin"],
        "https://app.example"
    );
    assert!(
        headers["access-control-allow-methods"]
            .to_str()
            .unwrap()
            .contains("POST")
    );
    assert!(
        headers["access-control-allow-headers"]
            .to_str()
            .unwrap()
            .contains("content-type")
    );
    let other = preflight("https://elsewhere.example").await.unwrap();
    assert!(other.headers().get("access-control-allow-origin").is_none());

    let response = app
        .client
        .post(format!("{}/api/submit/text", app.address))
        .header("Origin", "https://app.example")
        .json(&capsule(in_ms(Duration::from_secs(3600))))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["access-control-allow-origin"],
        "https://app.example"
    );
}

/// Per sender and per client address, a sliding window of submissions; past it, 429 with
/// how long to wait.
pub async fn submissions_are_rate_limited(backend: Backend) {
    let (mut config, _sink) = mail_config(backend).await;
    config.capsule_limit_per_sender = 2;
    config.capsule_limit_per_client = 3;
    let app = spawn_with(config).await;
    let from = |sender: &str| {
        let mut body = capsule(in_ms(Duration::from_secs(3600)));
        body["senderEmail"] = json!(sender);
        body
    };
    let post = |body: Value| {
        app.client
            .post(format!("{}/api/submit/text", app.address))
            .json(&body)
            .send()
    };
    for _ in 0..2 {
        assert_eq!(post(from("ada@example.com")).await.unwrap().status(), 200);
    }
    // A `+tag` is the same sender.
    let refused = post(from("ADA+again@example.com")).await.unwrap();
    assert_eq!(refused.status(), 429);
    let wait: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=3600).contains(&wait), "Retry-After {wait}");
    assert_eq!(refused.text().await.unwrap(), "TOO_MANY_REQUESTS");
    // Another sender from the same address: one more, then the address is at its limit.
    assert_eq!(post(from("bob@example.com")).await.unwrap().status(), 200);
    assert_eq!(post(from("carol@example.com")).await.unwrap().status(), 429);
}

/// A capsule survives its server: submitted, the server is killed (SIGKILL); confirmed
/// by the next one, which is stopped (SIGTERM); the third delivers it.
pub async fn restarts_between_steps_lose_nothing(backend: Backend) {
    let sink = SmtpSink::start().await;
    let mut env = backend_env(backend).await;
    env.push(("CAIRN_SMTP_URL".into(), sink.url.clone()));
    env.push(("CAIRN_PUBLIC_URL".into(), PUBLIC_URL.into()));
    // An email the killed server had claimed is sent by the next once the claim runs out.
    env.push(("CAIRN_OUTBOX_CLAIM_SECONDS".into(), "1".into()));
    let client = crate::helpers::http();
    let send_time = in_ms(Duration::from_secs(6));

    let (mut first, base) = start_server(&env).await;
    let submitted = client
        .post(format!("{base}/api/submit/text"))
        .json(&capsule(send_time))
        .send()
        .await
        .unwrap();
    assert_eq!(submitted.status(), 200);
    first.start_kill().unwrap();
    first.wait().await.unwrap();

    let (mut second, base) = start_server(&env).await;
    // The confirmation email was committed with the capsule: sent before or after the kill.
    let id = sink
        .wait_for("ada@example.com", "Confirm")
        .await
        .capsule_id("confirm");
    let confirmed = client
        .get(format!("{base}/api/confirm?id={id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(confirmed.status(), 200);
    sink.wait_for("ada@example.com", "is scheduled").await;
    let pid = second.id().unwrap();
    std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    second.wait().await.unwrap();

    let (_third, _) = start_server(&env).await;
    let delivery = sink
        .wait_for("Grace@Example.com", "A time capsule from Ada")
        .await;
    assert!(delivery.decoded().contains("Hello from the past"));
    assert!(
        !delivery.raw.contains(&id),
        "the capsule id stays out of the delivery"
    );
}

/// SIGKILL while the delivery email is being sent (the mail server has it, Cairn has not
/// heard its `250`): after the restart the email is sent again, with the same Message-ID,
/// and nothing is lost.
pub async fn kill_9_during_delivery_loses_no_email(backend: Backend) {
    let sink = SmtpSink::stalling("A time capsule from").await;
    let mut env = backend_env(backend).await;
    env.push(("CAIRN_SMTP_URL".into(), sink.url.clone()));
    env.push(("CAIRN_PUBLIC_URL".into(), PUBLIC_URL.into()));
    env.push(("CAIRN_OUTBOX_CLAIM_SECONDS".into(), "1".into()));
    let client = crate::helpers::http();

    let (mut server, base) = start_server(&env).await;
    let submitted = client
        .post(format!("{base}/api/submit/text"))
        .json(&capsule(in_ms(Duration::from_secs(2))))
        .send()
        .await
        .unwrap();
    assert_eq!(submitted.status(), 200);
    let id = sink
        .wait_for("ada@example.com", "Confirm")
        .await
        .capsule_id("confirm");
    let confirmed = client
        .get(format!("{base}/api/confirm?id={id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(confirmed.status(), 200);
    // The delivery reached the mail server, which holds back its answer: kill now.
    let first = sink
        .wait_for("Grace@Example.com", "A time capsule from")
        .await;
    server.start_kill().unwrap();
    server.wait().await.unwrap();

    let (_server, _) = start_server(&env).await;
    let message_id = first.header("Message-ID");
    assert!(message_id.is_some());
    let copies = eventually(
        "the delivery to be sent again after the restart",
        PATIENCE,
        || async {
            let copies: Vec<_> = sink
                .received()
                .into_iter()
                .filter(|m| m.to == "Grace@Example.com")
                .collect();
            (copies.len() >= 2).then_some(copies)
        },
    )
    .await;
    assert!(copies.iter().all(|m| m.header("Message-ID") == message_id));
}

/// An unconfirmed capsule expires 24 hours after it was written: the sender is told, and
/// it can no longer be confirmed. (The clock is moved; a later submission wakes the
/// scheduler, as any new schedule does.)
pub async fn an_unconfirmed_capsule_expires(backend: Backend) {
    let (app, sink) = spawn(backend).await;
    assert_eq!(
        app.submit_text(&capsule(in_ms(Duration::from_secs(3 * 86_400))))
            .await
            .0,
        200
    );
    let id = sink
        .wait_for("ada@example.com", "Confirm")
        .await
        .capsule_id("confirm");

    *app.now.lock().unwrap() = Some(chrono::Utc::now() + chrono::Duration::hours(25));
    let mut later = capsule(in_ms(Duration::from_secs(4 * 86_400)));
    later["senderEmail"] = json!("bob@example.com");
    assert_eq!(app.submit_text(&later).await.0, 200);

    sink.wait_for("ada@example.com", "expired").await;
    assert_eq!(
        app.get_text(&format!("/api/confirm?id={id}")).await,
        (400, "CAPSULE_NA_OR_EXPIRED".into())
    );
}

/// The JSON API in Cairn's conventions: a submission is accepted without giving the id
/// away (only the sender's mailbox learns it); the status view follows the capsule.
pub async fn the_json_api_submits_and_shows_status(backend: Backend) {
    let (app, sink) = spawn(backend).await;
    let send_at = (chrono::Utc::now() + chrono::Duration::hours(2))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let body = json!({
        "sender": {"email": "ada@example.com", "name": "Ada"},
        "recipient": {"email": "grace@example.com", "name": "Grace"},
        "send_at": send_at,
        "text": "from a script",
    });
    let post = |body: Value| {
        app.client
            .post(format!("{}/capsules", app.address))
            .json(&body)
            .send()
    };
    let response = post(body.clone()).await.unwrap();
    assert_eq!(response.status(), 202);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["data"]["status"], "pending");
    assert!(
        answer["data"].get("id").is_none(),
        "the id stays in the sender's mailbox"
    );
    let id = sink
        .wait_for("ada@example.com", "Confirm")
        .await
        .capsule_id("confirm");

    let view = |id: String| {
        let client = app.client.clone();
        let url = format!("{}/capsules/{id}", app.address);
        async move {
            let response = client.get(url).send().await.unwrap();
            (
                response.status().as_u16(),
                response.json::<Value>().await.unwrap(),
            )
        }
    };
    let (status, shown) = view(id.clone()).await;
    assert_eq!(status, 200, "{shown}");
    assert_eq!(shown["data"]["status"], "pending");
    assert_eq!(shown["data"]["recipient"]["name"], "Grace");
    assert_eq!(shown["data"]["send_at"], send_at.as_str());
    assert!(shown["data"].get("text").is_none() && shown["data"]["sender"].get("email").is_none());
    assert_eq!(app.get_text(&format!("/api/confirm?id={id}")).await.0, 200);
    assert_eq!(view(id.clone()).await.1["data"]["status"], "active");

    for (field, value, code) in [
        ("send_at", json!("tomorrow"), "invalid_future_time"),
        (
            "send_at",
            json!("2001-01-01T00:00:00Z"),
            "invalid_future_time",
        ),
        ("text", json!(""), "invalid_text"),
    ] {
        let mut bad = body.clone();
        bad[field] = value;
        let response = post(bad).await.unwrap();
        assert_eq!(response.status(), 400);
        assert_eq!(response.json::<Value>().await.unwrap()["code"], code);
    }
    let mut bad = body.clone();
    bad["sender"]["email"] = json!("nope");
    let response = post(bad).await.unwrap();
    assert_eq!(
        response.json::<Value>().await.unwrap()["code"],
        "invalid_email"
    );
    let response = app
        .client
        .post(format!("{}/capsules", app.address))
        .header("Content-Type", "application/json")
        .body("not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(
        response.json::<Value>().await.unwrap()["code"],
        "invalid_json"
    );
    // What any web page can make a browser send unasked is refused.
    for path in ["/capsules", "/api/submit/text"] {
        let response = app
            .client
            .post(format!("{}{path}", app.address))
            .header("Content-Type", "text/plain")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 415, "{path}");
    }
    assert_eq!(view("nope".into()).await.1["code"], "invalid_id");
    let (status, missing) = view(uuid::Uuid::now_v7().to_string()).await;
    assert_eq!((status, missing["code"].as_str()), (404, Some("not_found")));
}

/// With an `Idempotency-Key`, a retried submission answers as the first did and writes
/// nothing more; the same key for another capsule is refused.
pub async fn a_retried_submission_writes_one_capsule(backend: Backend) {
    let (app, _sink) = spawn(backend).await;
    let send_at = (chrono::Utc::now() + chrono::Duration::hours(2))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let scripted = |text: &str| {
        json!({
            "sender": {"email": "ada@example.com", "name": "Ada"},
            "recipient": {"email": "grace@example.com", "name": "Grace"},
            "send_at": send_at,
            "text": text,
        })
    };
    let post = |path: &str, key: &str, body: Value| {
        app.client
            .post(format!("{}{path}", app.address))
            .header("Idempotency-Key", key)
            .json(&body)
            .send()
    };
    let chronoria = capsule(in_ms(Duration::from_secs(3600)));
    for _ in 0..2 {
        let answer = post("/capsules", "retry-1", scripted("once"))
            .await
            .unwrap();
        assert_eq!(answer.status(), 202);
        let answer = post("/api/submit/text", "retry-2", chronoria.clone())
            .await
            .unwrap();
        assert_eq!(answer.status(), 200);
    }
    // A retry after the send time is still the capsule written before, not a refusal.
    *app.now.lock().unwrap() = Some(chrono::Utc::now() + chrono::Duration::hours(3));
    let late = post("/api/submit/text", "retry-2", chronoria.clone())
        .await
        .unwrap();
    assert_eq!(late.status(), 200);
    let late = post("/capsules", "retry-1", scripted("once"))
        .await
        .unwrap();
    assert_eq!(late.status(), 202);
    *app.now.lock().unwrap() = None;
    let reused = post("/capsules", "retry-1", scripted("another"))
        .await
        .unwrap();
    assert_eq!(reused.status(), 422);
    let body: Value = reused.json().await.unwrap();
    assert_eq!(body["code"], "idempotency_key_reused");
    let reused = post(
        "/api/submit/text",
        "retry-1",
        capsule(in_ms(Duration::from_secs(60))),
    )
    .await
    .unwrap();
    assert_eq!(reused.status(), 422);
    assert_eq!(reused.text().await.unwrap(), "IDEMPOTENCY_KEY_REUSED");
    let bad = post(
        "/api/submit/text",
        "has space",
        capsule(in_ms(Duration::from_secs(60))),
    )
    .await
    .unwrap();
    assert_eq!(
        (bad.status().as_u16(), bad.text().await.unwrap()),
        (400, "INVALID_IDEMPOTENCY_KEY".to_owned())
    );

    let written = app
        .events
        .read_all(0, 1000, &["capsule"])
        .await
        .unwrap()
        .iter()
        .filter(|e| e.event_type == "capsule.submitted")
        .count();
    assert_eq!(written, 2, "one capsule per key");
    // The email worker records the confirmation emails it sends; nothing else is written.
    let capsule_events = app
        .events
        .read_all(0, 1000, &["capsule"])
        .await
        .unwrap()
        .iter()
        .filter(|e| e.event_type != "email.sent")
        .count();
    assert_eq!(capsule_events, 2, "and nothing else written");
}

/// Whether `id` is an RFC 5322 msg-id: `<` dot-atom-text `@` (dot-atom-text or
/// no-fold-literal) `>`.
fn is_msg_id(id: &str) -> bool {
    let dot_atom = |s: &str| {
        !s.is_empty()
            && s.split('.').all(|atom| {
                !atom.is_empty()
                    && atom
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c))
            })
    };
    let literal = |s: &str| {
        s.strip_prefix('[')
            .and_then(|s| s.strip_suffix(']'))
            .is_some_and(|inside| {
                inside
                    .bytes()
                    .all(|b| (33..=126).contains(&b) && !b"[]\\".contains(&b))
            })
    };
    id.strip_prefix('<')
        .and_then(|id| id.strip_suffix('>'))
        .and_then(|id| id.split_once('@'))
        .is_some_and(|(left, right)| dot_atom(left) && (dot_atom(right) || literal(right)))
}

/// Names are shown by mail clients exactly as typed, even when they look like RFC 2047
/// encoded words; and with Cairn at an IPv6 address, Message-IDs are still well formed.
pub async fn names_reach_headers_literally_and_message_ids_are_valid(backend: Backend) {
    let (mut config, sink) = mail_config(backend).await;
    config.public_url = "http://[::1]:8080".into();
    config.pages_url = Some(PUBLIC_URL.into());
    let app = spawn_with(config).await;
    let sender = "=?utf-8?q?Your_bank?=";
    let recipient = "=?utf-8?b?U2VjdXJpdHkgdGVhbQ==?= (fraud desk)";
    let mut body = capsule(in_ms(Duration::from_secs(3600)));
    body["senderName"] = json!(sender);
    body["recipientName"] = json!(recipient);
    assert_eq!(app.submit_text(&body).await.0, 200);

    let confirmation = eventually("the confirmation email", PATIENCE, || async {
        sink.received()
            .into_iter()
            .find(|m| m.to == "ada@example.com")
    })
    .await;
    assert_eq!(
        confirmation.shown_header("Subject").unwrap(),
        format!("Confirm your time capsule for {recipient}"),
        "{}",
        confirmation.raw
    );
    assert_eq!(
        confirmation.shown_header("To").unwrap(),
        format!("{sender} <ada@example.com>"),
        "{}",
        confirmation.raw
    );
    let message_id = confirmation.header("Message-ID").unwrap();
    assert!(is_msg_id(&message_id), "{message_id}");
    assert!(message_id.ends_with("@[::1]>"), "{message_id}");

    // A name without anything to decode is written as it is.
    let mut plain = capsule(in_ms(Duration::from_secs(3600)));
    plain["senderEmail"] = json!("bob@example.com");
    plain["recipientName"] = json!("Grace = Hopper?");
    assert_eq!(app.submit_text(&plain).await.0, 200);
    let confirmation = sink.wait_for("bob@example.com", "Confirm").await;
    assert_eq!(
        confirmation.header("Subject").unwrap(),
        "Confirm your time capsule for Grace = Hopper?"
    );
    assert!(is_msg_id(&confirmation.header("Message-ID").unwrap()));
}

/// With Redis, the submission limits are counted there: two command processes over the
/// same Postgres and Redis share them, and their logs expire with the window. (The
/// embedded backend is one process: `submissions_are_rate_limited` covers it.)
async fn limits_hold_across_command_processes(backend: Backend) {
    let mut config = test_config(backend).await;
    config.capsule_limit_per_sender = 2;
    config.capsule_limit_per_client = 3;
    config.capsule_limit_window = 600;
    let first = spawn_role(config.clone(), Role::Command).await;
    let second = spawn_role(config.clone(), Role::Command).await;
    let submit = |app: &TestApp, sender: &str| {
        let mut body = capsule(in_ms(Duration::from_secs(3600)));
        body["senderEmail"] = json!(sender);
        let request = app
            .client
            .post(format!("{}/api/submit/text", app.address))
            .json(&body);
        async move { text_of(request).await }
    };
    assert_eq!(submit(&first, "ada@example.com").await.0, 200);
    assert_eq!(submit(&second, "ada@example.com").await.0, 200);
    // Each process has seen one: only a shared count refuses the third.
    assert_eq!(
        submit(&first, "Ada+3@example.com").await,
        (429, "TOO_MANY_REQUESTS".into())
    );
    assert_eq!(
        submit(&second, "ada@example.com").await,
        (429, "TOO_MANY_REQUESTS".into())
    );
    // The address has two; one more from it, through either process, then none.
    assert_eq!(submit(&second, "bob@example.com").await.0, 200);
    assert_eq!(submit(&first, "carol@example.com").await.0, 429);
    assert_eq!(submit(&second, "carol@example.com").await.0, 429);

    // The logs expire with the window.
    let prefix = &config.redis_prefix;
    let key = format!("{{{prefix}:capsule-limits}}:sender:ada@example.com");
    let ttl = redis_pttl(backend.redis_url().as_deref().unwrap(), &key).await;
    assert!((1..=600_000).contains(&ttl), "PTTL {key}: {ttl}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_hold_across_command_processes_on_redis() {
    limits_hold_across_command_processes(Backend::PostgresRedis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_hold_across_command_processes_on_redis_cluster() {
    limits_hold_across_command_processes(Backend::PostgresRedisCluster).await;
}
