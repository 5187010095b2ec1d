//! The messages API: Dunder's scenarios, errors, idempotency, rebuilds.
use chrono::{Duration as Days, Utc};
use serde_json::{Value, json};

use crate::helpers::{Backend, spawn_app};

crate::on_both_backends!(messages:
    round_trip,
    dunder_filters_dates_and_cursor,
    dunder_curl_line_with_form_content_type,
    auth_failures,
    revoked_and_expired_tokens_are_refused,
    validation_errors,
    idempotency_key_returns_the_first_answer,
    rebuild_equals_live,
    limit_and_pagination_walk_everything,
    thousands_of_hashtags_are_refused_at_once,
    hashtags_in_any_script_match_in_either_form,
    a_revoked_token_never_authenticates_again,
);

pub async fn round_trip(backend: Backend) {
    let app = spawn_app(backend).await;
    let token = app.add_user("alice").await;
    let response = app
        .post_message(
            &token,
            &json!({"text": "some text", "hashtags": ["tag1", "Tag2"]}),
        )
        .await;
    assert_eq!(response.status(), 201);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let body: Value = response.json().await.unwrap();
    let id = body["data"]["id"].as_str().unwrap().to_owned();
    assert_eq!(location, format!("/message/{id}"));

    // Read-your-writes: visible at once, by path and by Dunder's ?ulid=.
    let (status, by_path) = app.get(&format!("/message/{id}")).await;
    assert_eq!(status, 200);
    let m = &by_path["data"];
    assert_eq!(m["id"], id);
    assert_eq!(m["text"], "some text");
    assert_eq!(m["hashtags"], json!(["tag1", "Tag2"]));
    assert_eq!(m["user"]["name"], "alice");
    assert!(m["user"]["id"].is_string());
    let created = chrono::DateTime::parse_from_rfc3339(m["created_at"].as_str().unwrap()).unwrap();
    assert!(
        (Utc::now() - created.with_timezone(&Utc))
            .num_seconds()
            .abs()
            < 60
    );
    let (status, by_query) = app.get(&format!("/message?ulid={id}")).await;
    assert_eq!(status, 200);
    assert_eq!(by_query, by_path);
    // Hashtags match case-insensitively and keep their spelling.
    assert_eq!(
        app.list_ids("/message?hashtag=TAG2").await,
        std::slice::from_ref(&id)
    );
    assert_eq!(app.list_ids("/message?hashtag=%23tag1").await, [id]);
}

pub async fn dunder_filters_dates_and_cursor(backend: Backend) {
    let app = spawn_app(backend).await;
    let alice = app.add_user("alice").await;
    let bob = app.add_user("bob").await;
    let m1 = app.post(&alice, "one", &["tag1", "tag2"]).await;
    let m2 = app.post(&bob, "two", &["tag1"]).await;
    let m3 = app.post(&alice, "three", &["tag3"]).await;
    let m4 = app.post(&bob, "four", &["TAG1", "tag4"]).await;
    let m5 = app.post(&alice, "five", &["tag2"]).await;

    assert_eq!(
        app.list_ids("/message").await,
        [&m5, &m4, &m3, &m2, &m1].map(|s| s.as_str())
    );
    assert_eq!(
        app.list_ids("/message?hashtag=tag1").await,
        [&m4, &m2, &m1].map(|s| s.as_str())
    );
    assert_eq!(
        app.list_ids("/message?user_name=alice").await,
        [&m5, &m3, &m1].map(|s| s.as_str())
    );
    assert_eq!(
        app.list_ids("/message?user_name=BOB&hashtag=tag4").await,
        [&m4].map(|s| s.as_str())
    );
    assert!(app.list_ids("/message?hashtag=nothing").await.is_empty());
    assert!(app.list_ids("/message?user_name=nobody").await.is_empty());

    // Date range with limit 1 gives the newest; its cursor gives the one before.
    let from = (Utc::now() - Days::days(1)).format("%Y-%m-%d");
    let to = (Utc::now() + Days::days(1)).format("%Y-%m-%d");
    let (status, page) = app
        .get(&format!("/message?from_date={from}&to_date={to}&limit=1"))
        .await;
    assert_eq!(status, 200);
    assert_eq!(page["data"][0]["id"], m5.as_str());
    let cursor = page["next_cursor"].as_str().unwrap();
    assert_eq!(cursor, m5);
    let (_, previous) = app
        .get(&format!(
            "/message?from_date={from}&to_date={to}&limit=1&cursor={cursor}"
        ))
        .await;
    assert_eq!(previous["data"][0]["id"], m4.as_str());
    // RFC 3339 bounds: a range in the past holds nothing.
    let (_, past) = app
        .get("/message?from_date=2019-09-22T00:00:00Z&to_date=2019-09-23T00:00:00Z")
        .await;
    assert_eq!(past["data"], json!([]));
    assert!(past.get("next_cursor").is_none());
    // to_date is exclusive: a range ending now-ish but starting in the future holds nothing.
    let tomorrow = (Utc::now() + Days::days(1)).format("%Y-%m-%d");
    assert!(
        app.list_ids(&format!("/message?from_date={tomorrow}"))
            .await
            .is_empty()
    );
    assert_eq!(
        app.list_ids(&format!("/message?to_date={tomorrow}&hashtag=tag3"))
            .await,
        [&m3].map(|s| s.as_str())
    );
}

pub async fn dunder_curl_line_with_form_content_type(backend: Backend) {
    let app = spawn_app(backend).await;
    let token = app.add_user("carol").await;
    // curl -d '{...}' -H "Authorization: Bearer $TOKEN" URL
    let response = app
        .client
        .post(format!("{}/message", app.address))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .header("Authorization", format!("Bearer {token}"))
        .body(r#"{"text": "some other text", "hashtags":["tag3", "tag4"]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    assert_eq!(app.list_ids("/message?hashtag=tag4").await.len(), 1);
}

async fn expect_error(response: reqwest::Response, status: u16, code: &str) {
    assert_eq!(response.status().as_u16(), status);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], code, "{body}");
    assert!(
        body["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{body}"
    );
}

pub async fn auth_failures(backend: Backend) {
    let app = spawn_app(backend).await;
    let token = app.add_user("dave").await;
    let url = format!("{}/message", app.address);
    let body = json!({"text": "hi", "hashtags": []});
    let none = app.client.post(&url).json(&body).send().await.unwrap();
    assert_eq!(none.headers()["www-authenticate"], "Bearer");
    let none: Value = none.json().await.unwrap();
    assert_eq!(none["error"], "unauthorized");
    expect_error(
        app.post_message("not-a-token", &body).await,
        401,
        "unauthorized",
    )
    .await;
    let basic = app
        .client
        .post(&url)
        .basic_auth("dave", Some(&token))
        .json(&body)
        .send()
        .await
        .unwrap();
    expect_error(basic, 401, "unauthorized").await;
    // Dunder's guessable token is not accepted unless imported.
    let dunder = app
        .client
        .post(&url)
        .header("Authorization", "Bearer ZGF2ZQ==")
        .json(&body)
        .send()
        .await
        .unwrap();
    expect_error(dunder, 401, "unauthorized").await;
    let lower = app
        .client
        .post(&url)
        .header("Authorization", format!("bearer {token}"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(lower.status(), 201);
    assert_eq!(app.list_ids("/message").await.len(), 1);
}

pub async fn revoked_and_expired_tokens_are_refused(backend: Backend) {
    let app = spawn_app(backend).await;
    let token = app.add_user("erin").await;
    assert_eq!(
        app.post_message(&token, &json!({"text": "before"}))
            .await
            .status(),
        201
    );
    cairn_command::users::revoke_token(&*app.events, &token)
        .await
        .unwrap();
    app.sync_tokens().await;
    expect_error(
        app.post_message(&token, &json!({"text": "after"})).await,
        401,
        "unauthorized",
    )
    .await;

    // An imported token (as migrated from Dunder) works until its expiry; one whose
    // expiry has passed is refused.
    let later = Utc::now() + Days::hours(1);
    cairn_command::users::add_token(&*app.events, "erin", Some("ZXJpbg=="), Some(later))
        .await
        .unwrap();
    let earlier = Utc::now() - Days::seconds(1);
    cairn_command::users::add_token(&*app.events, "erin", Some("ZXJpbjI="), Some(earlier))
        .await
        .unwrap();
    app.sync_tokens().await;
    assert_eq!(
        app.post_message("ZXJpbg==", &json!({"text": "imported"}))
            .await
            .status(),
        201
    );
    expect_error(
        app.post_message("ZXJpbjI=", &json!({"text": "expired"}))
            .await,
        401,
        "unauthorized",
    )
    .await;
    let users = cairn_command::users::list_users(&*app.events)
        .await
        .unwrap();
    let erin = &users[0];
    assert_eq!(erin.tokens.len(), 3);
    assert!(erin.tokens[0].revoked && !erin.tokens[0].weak);
    assert!(erin.tokens[1].weak && erin.tokens[1].expires_at.is_some());
    assert!(erin.tokens[2].expires_at.is_some_and(|t| t < Utc::now()));
}

pub async fn validation_errors(backend: Backend) {
    let app = spawn_app(backend).await;
    let token = app.add_user("frank").await;
    let raw = |body: &'static str| {
        app.client
            .post(format!("{}/message", app.address))
            .bearer_auth(&token)
            .body(body)
            .send()
    };
    expect_error(raw("not json").await.unwrap(), 400, "invalid_json").await;
    expect_error(raw("[1,2]").await.unwrap(), 400, "invalid_json").await;
    expect_error(raw(r#"{"text": 5}"#).await.unwrap(), 400, "invalid_json").await;
    expect_error(
        app.post_message(&token, &json!({"hashtags": ["a"]})).await,
        400,
        "invalid_text",
    )
    .await;
    expect_error(
        app.post_message(&token, &json!({"text": "   "})).await,
        400,
        "invalid_text",
    )
    .await;
    expect_error(
        app.post_message(&token, &json!({"text": "x".repeat(1001)}))
            .await,
        400,
        "invalid_text",
    )
    .await;
    expect_error(
        app.post_message(&token, &json!({"text": "bell\u{7}"}))
            .await,
        400,
        "invalid_text",
    )
    .await;
    expect_error(
        app.post_message(&token, &json!({"text": "t", "hashtags": ["no spaces"]}))
            .await,
        400,
        "invalid_hashtags",
    )
    .await;
    expect_error(
        app.post_message(&token, &json!({"text": "t", "hashtags": [""]}))
            .await,
        400,
        "invalid_hashtags",
    )
    .await;
    expect_error(
        app.post_message(&token, &json!({"text": "t", "hashtags": ["x".repeat(65)]}))
            .await,
        400,
        "invalid_hashtags",
    )
    .await;
    let many: Vec<String> = (0..31).map(|i| format!("t{i}")).collect();
    expect_error(
        app.post_message(&token, &json!({"text": "t", "hashtags": many}))
            .await,
        400,
        "invalid_hashtags",
    )
    .await;
    // The longest text, 1000 characters of any script, is fine.
    assert_eq!(
        app.post_message(
            &token,
            &json!({"text": "ж".repeat(1000), "hashtags": ["ok", "#OK", "ünï_1"]})
        )
        .await
        .status(),
        201
    );

    for (query, code) in [
        ("limit=0", "invalid_limit"),
        ("limit=1001", "invalid_limit"),
        ("limit=abc", "invalid_limit"),
        ("from_date=yesterday", "invalid_date"),
        ("to_date=2019-13-01", "invalid_date"),
        (
            "from_date=2019-09-23&to_date=2019-09-22",
            "invalid_date_range",
        ),
        ("cursor=zzz", "invalid_cursor"),
        ("hashtag=a%20b", "invalid_hashtag"),
        ("user_name=%20", "invalid_user_name"),
        ("ulid=nope", "invalid_id"),
    ] {
        let (status, body) = app.get(&format!("/message?{query}")).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (400, Some(code)),
            "{query}: {body}"
        );
    }
    let (status, body) = app.get("/message/01ARZ3NDEKTSV4RRFFQ69G5FAV").await;
    assert_eq!(status, 404);
    assert_eq!(body["error"], "record not found");
    let (status, _) = app.get("/message/not-an-id").await;
    assert_eq!(status, 400);
    let (status, body) = app.get("/nowhere").await;
    assert_eq!((status, body["code"].as_str()), (404, Some("not_found")));
    // Only the valid message was stored. (Oversized bodies: see the service tests.)
    assert_eq!(app.list_ids("/message").await.len(), 1);
}

pub async fn idempotency_key_returns_the_first_answer(backend: Backend) {
    let app = spawn_app(backend).await;
    let token = app.add_user("gina").await;
    let send = |body: Value, key: &'static str| {
        app.client
            .post(format!("{}/message", app.address))
            .bearer_auth(&token)
            .header("Idempotency-Key", key)
            .json(&body)
            .send()
    };
    let first = send(json!({"text": "once", "hashtags": ["a"]}), "k-1")
        .await
        .unwrap();
    assert_eq!(first.status(), 201);
    let first: Value = first.json().await.unwrap();
    let again = send(json!({"text": "once", "hashtags": ["a"]}), "k-1")
        .await
        .unwrap();
    assert_eq!(again.status(), 201);
    let again: Value = again.json().await.unwrap();
    assert_eq!(first, again);
    expect_error(
        send(json!({"text": "different"}), "k-1").await.unwrap(),
        422,
        "idempotency_key_reused",
    )
    .await;
    assert_eq!(
        send(json!({"text": "once", "hashtags": ["a"]}), "k-2")
            .await
            .unwrap()
            .status(),
        201
    );
    assert_eq!(app.list_ids("/message").await.len(), 2);
}

/// Snapshot of what the read side answers, for comparing a rebuild with the live model.
async fn snapshot(app: &crate::helpers::TestApp) -> Vec<Value> {
    let mut out = Vec::new();
    for q in [
        "/message?limit=1000",
        "/message?hashtag=even",
        "/message?hashtag=odd&limit=3",
        "/message?user_name=hal",
    ] {
        out.push(app.get(q).await.1);
    }
    out
}

pub async fn rebuild_equals_live(backend: Backend) {
    let app = spawn_app(backend).await;
    let hal = app.add_user("hal").await;
    let ivy = app.add_user("ivy").await;
    for i in 0..40 {
        let tag = if i % 2 == 0 { "even" } else { "odd" };
        app.post(
            if i % 3 == 0 { &hal } else { &ivy },
            &format!("message {i}"),
            &[tag, "all"],
        )
        .await;
    }
    let live = snapshot(&app).await;
    app.read.reset("messages").await.unwrap();
    app.wait_projected().await;
    assert_eq!(snapshot(&app).await, live);
}

pub async fn limit_and_pagination_walk_everything(backend: Backend) {
    let app = spawn_app(backend).await;
    let token = app.add_user("jo").await;
    let mut posted = Vec::new();
    for i in 0..25 {
        posted.push(app.post(&token, &format!("n{i}"), &["walk"]).await);
    }
    posted.reverse();
    let mut seen = Vec::new();
    let mut cursor = String::new();
    loop {
        let (status, page) = app
            .get(&format!("/message?hashtag=walk&limit=7&cursor={cursor}"))
            .await;
        assert_eq!(status, 200);
        seen.extend(
            page["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["id"].as_str().unwrap().to_owned()),
        );
        match page["next_cursor"].as_str() {
            Some(c) => cursor = c.to_owned(),
            None => break,
        }
    }
    assert_eq!(seen, posted);
    assert_eq!(app.list_ids("/message?limit=1000").await.len(), 25);
    assert_eq!(app.list_ids("/message").await.len(), 25);
}

/// Distinct short tags: `n` in base 36.
fn tag(mut n: usize) -> String {
    let mut digits = Vec::new();
    loop {
        digits.push(char::from_digit((n % 36) as u32, 36).unwrap());
        n /= 36;
        if n == 0 {
            break;
        }
    }
    digits.iter().rev().collect()
}

/// A body with thousands of distinct hashtags (under the body limit) is refused with the
/// usual code as soon as the 31st is seen, and the server answers others meanwhile.
pub async fn thousands_of_hashtags_are_refused_at_once(backend: Backend) {
    let app = spawn_app(backend).await;
    let token = app.add_user("gil").await;
    for count in [12_000, 125_000] {
        let tags: Vec<String> = (0..count).map(tag).collect();
        let body = json!({"text": "so many", "hashtags": tags});
        assert!(body.to_string().len() < app.config.body_limit, "{count}");
        let live = async {
            let (status, _) = app.get("/health/live").await;
            status
        };
        let (posted, live) = tokio::join!(app.post_message(&token, &body), live);
        expect_error(posted, 400, "invalid_hashtags").await;
        assert_eq!(live, 200);
    }
    assert!(app.list_ids("/message").await.is_empty());
}

/// Hashtags of any script: letters, combining marks and digits. A tag is kept in NFC, so
/// `café` typed with a combining accent and the precomposed one are the same tag, and
/// matching ignores case after normalising: each form finds the messages posted with the
/// other, in listings and trend counts.
pub async fn hashtags_in_any_script_match_in_either_form(backend: Backend) {
    let app = spawn_app(backend).await;
    let token = app.add_user("hana").await;
    let decomposed = "Cafe\u{301}";
    let precomposed = "caf\u{e9}";
    let shouted = "CAF\u{c9}";
    let first = app.post(&token, "one", &[decomposed, "हिन्दी"]).await;
    let second = app.post(&token, "two", &[precomposed, "தமிழ்"]).await;
    let third = app
        .post(&token, "three", &["#हिन्दी", "#தமிழ்", shouted])
        .await;
    // Stored in NFC, with the spelling given.
    let (_, shown) = app.get(&format!("/message/{first}")).await;
    assert_eq!(shown["data"]["hashtags"], json!(["Caf\u{e9}", "हिन्दी"]));

    let all = [third.as_str(), second.as_str(), first.as_str()];
    for form in [decomposed, precomposed, shouted, "CAFE\u{301}"] {
        let query = format!("/message?hashtag={}", encode(form));
        assert_eq!(app.list_ids(&query).await, all, "{form:?}");
    }
    assert_eq!(
        app.list_ids(&format!("/message?hashtag={}", encode("हिन्दी")))
            .await,
        [third.as_str(), first.as_str()]
    );
    assert_eq!(
        app.list_ids(&format!("/message?hashtag=%23{}", encode("தமிழ்")))
            .await,
        [third.as_str(), second.as_str()]
    );

    app.wait_projected().await;
    let from = (Utc::now() - Days::days(1)).format("%Y-%m-%d");
    let to = (Utc::now() + Days::days(1)).format("%Y-%m-%d");
    let count = |tag: &'static str| {
        let (app, from, to) = (&app, from.to_string(), to.to_string());
        async move {
            let query = format!(
                "/trend?from_date={from}&to_date={to}&aggregation=48h&hashtag={}",
                encode(tag)
            );
            let (status, body) = app.get(&query).await;
            assert_eq!(status, 200, "{query}: {body}");
            body["data"]["trends"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| b["count"].as_u64().unwrap())
                .sum::<u64>()
        }
    };
    for form in [decomposed, precomposed, shouted] {
        assert_eq!(count(form).await, 3, "{form:?}");
    }
    assert_eq!(count("हिन्दी").await, 2);
    assert_eq!(count("தமிழ்").await, 2);
}

/// Percent-encode every byte of `text` for a query string.
fn encode(text: &str) -> String {
    text.bytes().map(|b| format!("%{b:02X}")).collect()
}

/// A token revoked once is refused for every user it was ever issued to, and is never
/// issued again: here two users hold the same token, as tokens imported before each token
/// was claimed could.
pub async fn a_revoked_token_never_authenticates_again(backend: Backend) {
    use cairn_command::auth::hash_token;
    use cairn_command::users::{self, UserError};
    use cairn_events::domain::user::{TokenIssued, UserCreated, UserName};
    use cairn_events::{AppendRequest, ExpectedVersion, Metadata, NewEvent};

    let app = spawn_app(backend).await;
    users::add_user(&*app.events, "ann", None, Some("c2hhcmVk"), None)
        .await
        .unwrap();
    // Written as a store without token claims wrote it.
    let bob = uuid::Uuid::now_v7();
    let created = UserCreated {
        user_id: bob,
        name: UserName::parse("bob").unwrap(),
        email: None,
    };
    let issued = TokenIssued {
        token_id: uuid::Uuid::now_v7(),
        user_id: bob,
        token_hash: hash_token("c2hhcmVk"),
        weak: true,
        expires_at: None,
    };
    app.events
        .append(AppendRequest::new(
            "user-bob",
            ExpectedVersion::NoStream,
            vec![
                NewEvent::new(&created, Metadata::default()),
                NewEvent::new(&issued, Metadata::default()),
            ],
        ))
        .await
        .unwrap();
    app.sync_tokens().await;
    let id = app.post("c2hhcmVk", "whose?", &[]).await;
    let (_, posted) = app.get(&format!("/message/{id}")).await;
    assert_eq!(posted["data"]["user"]["name"], "ann", "the first holder");

    users::revoke_token(&*app.events, "c2hhcmVk").await.unwrap();
    app.sync_tokens().await;
    expect_error(
        app.post_message("c2hhcmVk", &json!({"text": "still?"}))
            .await,
        401,
        "unauthorized",
    )
    .await;
    for again in [
        users::add_token(&*app.events, "ann", Some("c2hhcmVk"), None).await,
        users::add_token(&*app.events, "bob", Some("c2hhcmVk"), None).await,
        users::add_user(&*app.events, "cy", None, Some("c2hhcmVk"), None).await,
    ] {
        assert!(
            matches!(again, Err(UserError::TokenTaken)),
            "{:?}",
            again.map(|w| w.value)
        );
    }
    // A token revoked without ever being shared is retired the same way.
    let minted = app.add_user("dee").await;
    users::revoke_token(&*app.events, &minted).await.unwrap();
    let taken = users::add_user(&*app.events, "eve", None, Some(&minted), None).await;
    assert!(matches!(taken, Err(UserError::TokenTaken)));
    app.sync_tokens().await;
    expect_error(
        app.post_message(&minted, &json!({"text": "revoked"})).await,
        401,
        "unauthorized",
    )
    .await;
}
