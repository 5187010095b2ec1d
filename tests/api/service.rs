//! The service around the API: OpenAPI document and docs page, health, metrics, limits.

use serde_json::{Value, json};

use crate::helpers::{Backend, spawn_app, spawn_with, test_config};

crate::on_both_backends!(service:
    openapi_covers_every_route,
    health_and_metrics,
    oversized_bodies_and_unknown_routes_get_json_errors,
    home_page_says_what_runs_here,
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
    ] {
        assert!(
            paths[path][method].is_object(),
            "{method} {path} is documented"
        );
    }
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    assert!(doc["components"]["schemas"]["MessageView"].is_object());
    let capsule = &doc["components"]["schemas"]["TextCapsule"]["properties"];
    assert!(
        capsule["senderEmail"].is_object() && capsule["sendTime"].is_object(),
        "{capsule}"
    );

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
