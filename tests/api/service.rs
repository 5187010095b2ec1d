//! The service around the API: OpenAPI document and docs page, health, metrics, limits.

use serde_json::{Value, json};

use crate::helpers::{Backend, spawn_app, spawn_with, test_config};

crate::on_both_backends!(service:
    openapi_covers_every_route,
    health_and_metrics,
    oversized_bodies_and_unknown_routes_get_json_errors,
    home_page_says_what_runs_here,
    small_answers_keep_the_conventions,
    openapi_states_the_constraints_and_every_answer,
);

pub async fn openapi_covers_every_route(backend: Backend) {
    let app = spawn_app(backend).await;
    let (status, doc) = app.get("/openapi.json").await;
    assert_eq!(status, 200);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = &doc["paths"];
    for (path, method) in [
        ("/message", "post"),
        ("/message", "get"),
        ("/message/{id}", "get"),
        ("/health/live", "get"),
        ("/health/ready", "get"),
        ("/metrics", "get"),
        ("/trend", "get"),
        ("/trends/hashtags", "get"),
        ("/api/submit/text", "post"),
        ("/api/confirm", "get"),
        ("/api/cancel", "get"),
        ("/api/downloadlink", "get"),
        ("/api/ping", "get"),
        ("/confirm/{id}", "get"),
        ("/confirm/{id}", "post"),
        ("/cancel/{id}", "get"),
        ("/cancel/{id}", "post"),
        ("/download/{id}", "get"),
        ("/capsules", "post"),
        ("/capsules/{id}", "get"),
        ("/services", "post"),
        ("/services", "get"),
        ("/services/{id}", "patch"),
        ("/services/{id}/keys", "post"),
        ("/services/{id}/keys/{key_id}", "delete"),
        ("/services/{id}/resources", "post"),
        ("/resources/{id}", "delete"),
        ("/resources/{id}/backups", "get"),
        ("/backups/{id}", "get"),
        ("/backups/{id}/file", "get"),
        ("/{resource}", "post"),
    ] {
        assert!(
            paths[path][method].is_object(),
            "{method} {path} is documented"
        );
    }
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    assert!(doc["components"]["schemas"]["MessageView"].is_object());
    let capsule = properties(&doc["components"]["schemas"]["TextCapsule"]);
    assert!(
        capsule["senderEmail"].is_object()
            && capsule["sendTime"].is_object()
            && capsule["cron"].is_object(),
        "{capsule:?}"
    );
    // Each route's answers are its own: no two schemas share a name (one would hide the
    // other in the document).
    let schemas = &doc["components"]["schemas"];
    assert!(schemas["Created"]["properties"]["data"].is_object());
    assert!(schemas["BackupCreated"]["properties"]["backup"].is_object());
    let file = properties(&doc["components"]["schemas"]["FileCapsule"]);
    assert!(file["FormFile"].is_object() && file["timeZone"].is_object());

    // The docs page and its assets come from the binary, not from a CDN.
    let page = app
        .client
        .get(format!("{}/docs/", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(html.contains("swagger-ui"), "{html}");
    assert!(!html.contains("https://"), "no external assets: {html}");
    let config = app
        .client
        .get(format!("{}/docs/swagger-initializer.js", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(config.status(), 200);
    assert!(config.text().await.unwrap().contains("/openapi.json"));
}

pub async fn health_and_metrics(backend: Backend) {
    let app = spawn_app(backend).await;
    let (status, live) = app.get("/health/live").await;
    assert_eq!((status, &live["data"]["status"]), (200, &json!("ok")));

    let token = app.add_user("kim").await;
    app.post(&token, "hello", &["hi"]).await;
    let (status, ready) = app.get("/health/ready").await;
    assert_eq!(status, 200, "{ready}");
    let data = &ready["data"];
    assert_eq!(data["ready"], true);
    assert_eq!(data["database"]["ok"], true);
    assert_eq!(data["read_store"]["ok"], true);
    assert_eq!(data["read_models_loaded"], true);
    let expected = match backend {
        Backend::Embedded => ("sqlite", "sqlite"),
        Backend::PostgresRedis | Backend::PostgresRedisCluster => ("postgres", "redis"),
    };
    assert_eq!(data["database"]["backend"], expected.0);
    assert_eq!(data["read_store"]["backend"], expected.1);
    assert!(data["projection_lag_events"].as_i64().is_some(), "{ready}");

    let metrics = app
        .client
        .get(format!("{}/metrics", app.address))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(
            r#"cairn_http_requests_total{method="POST",route="/message",status="201"} 1"#
        ),
        "{metrics}"
    );
    assert!(metrics.contains("cairn_projection_lag_events"), "{metrics}");
    assert!(metrics.contains("cairn_append_batch_size"), "{metrics}");
}

pub async fn oversized_bodies_and_unknown_routes_get_json_errors(backend: Backend) {
    let mut config = test_config(backend).await;
    config.body_limit = 4096;
    let app = spawn_with(config).await;
    let token = app.add_user("kim").await;

    let response = app
        .post_message(&token, &json!({ "text": "x".repeat(5000) }))
        .await;
    assert_eq!(response.status(), 413);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], "body_too_large");
    // The limit is small so the whole body fits in the socket buffers: the client reads the
    // early 413 instead of racing the server closing the connection. Nothing was stored.
    assert!(app.list_ids("/message").await.is_empty());

    let (status, body) = app.get("/no/such/route").await;
    assert_eq!((status, &body["code"]), (404, &json!("not_found")));

    let response = app
        .client
        .put(format!("{}/message", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], "method_not_allowed");
}

/// `GET /` answers a browser with a page that links the docs, the readiness check and the
/// routes; a script gets JSON, `curl` text; the route is in the OpenAPI document.
pub async fn home_page_says_what_runs_here(backend: Backend) {
    let app = spawn_app(backend).await;
    let get = |accept: &'static str| {
        let request = app.client.get(format!("{}/", app.address));
        async move {
            let response = request.header("Accept", accept).send().await.unwrap();
            let status = response.status().as_u16();
            let kind = response.headers()["content-type"]
                .to_str()
                .unwrap()
                .to_owned();
            (status, kind, response.text().await.unwrap())
        }
    };
    let browser = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";
    let (status, kind, html) = get(browser).await;
    assert_eq!(status, 200, "{html}");
    assert!(kind.starts_with("text/html"), "{kind}");
    for link in [
        r#"href="/docs/""#,
        r#"href="/health/ready""#,
        "/capsules",
        "/api/submit/text",
        "/message",
    ] {
        assert!(html.contains(link), "{link} in {html}");
    }

    let (status, kind, json) = get("application/json").await;
    assert_eq!(status, 200);
    assert!(kind.starts_with("application/json"), "{kind}");
    let json: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json["data"]["docs"], "/docs/");
    assert_eq!(json["data"]["health"], "/health/ready");
    let routes = json["data"]["routes"].as_array().unwrap();
    assert!(
        routes.iter().any(|r| r["route"] == "POST /capsules"),
        "{json}"
    );

    let (status, kind, text) = get("*/*").await;
    assert_eq!(status, 200);
    assert!(kind.starts_with("text/plain"), "{kind}");
    assert!(
        text.contains("/docs/") && text.contains("/health/ready"),
        "{text}"
    );

    let (_, doc) = app.get("/openapi.json").await;
    assert!(doc["paths"]["/"]["get"].is_object(), "GET / is documented");
}

/// Answers the routes give before their handlers run (a path that is not UTF-8, a query
/// that does not parse, headers or a body over the limit) and ids that do not fit in 128
/// bits keep each route's conventions: JSON `{"error", "code"}`, or Chronoria's plain text.
pub async fn small_answers_keep_the_conventions(backend: Backend) {
    let mut config = test_config(backend).await;
    config.body_limit = 4096;
    let app = spawn_with(config).await;
    let bad_request = |code: &'static str| (400, json!(code));
    let code_of = |(status, body): (u16, Value)| (status, body["code"].clone());

    assert_eq!(
        code_of(app.get("/message/%FF").await),
        bad_request("invalid_id")
    );
    // 26 characters of 5 bits are 130 bits: a first one past `7` is no ULID.
    let too_big = "8ZZZZZZZZZZZZZZZZZZZZZZZZZ";
    assert_eq!(
        code_of(app.get(&format!("/message/{too_big}")).await),
        bad_request("invalid_id")
    );
    assert_eq!(
        code_of(app.get(&format!("/message?ulid={too_big}")).await),
        bad_request("invalid_id")
    );
    assert_eq!(
        code_of(app.get(&format!("/message?cursor={too_big}")).await),
        bad_request("invalid_cursor")
    );
    assert_eq!(app.get("/message/7ZZZZZZZZZZZZZZZZZZZZZZZZZ").await.0, 404);

    // The download route answers a browser in words, a repeated parameter too.
    let (status, words) = app
        .get_text("/capsules/x/file/y?expires=1&expires=2&signature=s")
        .await;
    assert_eq!(
        (status, words.as_str()),
        (403, "This download link is not valid.")
    );

    let big = "a".repeat(40_000);
    let response = app
        .client
        .get(format!("{}/message", app.address))
        .header("X-Big", &big)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 431);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], "headers_too_large");
    let request = app
        .client
        .get(format!("{}/api/ping", app.address))
        .header("X-Big", &big);
    assert_eq!(
        crate::helpers::text_of(request).await,
        (431, "REQUEST_HEADER_FIELDS_TOO_LARGE".to_owned())
    );

    // Bodies past the limit are 413, not 400, in each route's conventions.
    let text = "x".repeat(5000);
    let response = app
        .client
        .post(format!("{}/capsules", app.address))
        .json(&json!({ "text": text }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], "body_too_large");
    assert_eq!(
        app.submit_text(&json!({ "text": text })).await,
        (413, "PAYLOAD_TOO_LARGE".to_owned())
    );
}

/// The OpenAPI document gives the request constraints (lengths, ranges, formats) and
/// every status a route answers.
pub async fn openapi_states_the_constraints_and_every_answer(backend: Backend) {
    let app = spawn_app(backend).await;
    let (_, doc) = app.get("/openapi.json").await;
    let paths = &doc["paths"];
    for (path, method, status) in [
        ("/confirm/{id}", "post", "409"),
        ("/cancel/{id}", "post", "400"),
        ("/download/{id}", "post", "410"),
        ("/capsules", "post", "413"),
        ("/api/submit/text", "post", "413"),
    ] {
        assert!(
            paths[path][method]["responses"][status].is_object(),
            "{method} {path} documents {status}"
        );
    }
    let param = |path: &str, name: &str| {
        paths[path]["get"]["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("{name} of {path}"))["schema"]
            .clone()
    };
    assert_eq!(param("/message", "limit")["maximum"], 1000);
    assert_eq!(param("/message", "limit")["minimum"], 1);
    assert!(param("/message/{id}", "id")["pattern"].is_string());
    assert_eq!(param("/trends/hashtags", "limit")["maximum"], 100);
    let schemas = &doc["components"]["schemas"];
    let post = &schemas["PostMessage"]["properties"];
    assert_eq!(post["text"]["maxLength"], 1000);
    assert_eq!(post["hashtags"]["maxItems"], 30);
    let capsule = properties(&schemas["TextCapsule"]);
    assert_eq!(capsule["senderEmail"]["format"], "email");
    assert_eq!(capsule["cron"]["maxLength"], 200);
    assert_eq!(capsule["text"]["maxLength"], 10000);
    assert_eq!(
        schemas["PartyInput"]["properties"]["name"]["maxLength"],
        255
    );
}

/// An object schema's properties, with those of the schemas it is made of (`allOf`).
fn properties(schema: &serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
    let mut all = schema["properties"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    for part in schema["allOf"].as_array().into_iter().flatten() {
        all.extend(properties(part));
    }
    all
}
