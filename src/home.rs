//! `GET /`: what runs here, for someone who opens Cairn's address in a browser (a page), a
//! script that asks for JSON, or `curl` (plain text). It links the API documentation, the
//! readiness check and the routes people start from.

use axum::Json;
use axum::http::{HeaderMap, header};
use axum::response::{Html, IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The routes people start from, with what each does.
const ROUTES: &[(&str, &str)] = &[
    ("POST /message", "post a message (bearer token)"),
    ("GET /message", "messages by hashtag, user and date"),
    (
        "GET /trend",
        "how often a hashtag was posted, per time bucket",
    ),
    ("GET /trends/hashtags", "what is trending now"),
    ("POST /capsules", "schedule a time capsule (JSON)"),
    ("GET /capsules/{id}", "a time capsule's status"),
    (
        "POST /api/submit/text",
        "a text capsule, from Chronoria's client",
    ),
    (
        "POST /api/submit/file",
        "a file capsule, from Chronoria's client",
    ),
];

/// `{"data": …}` of `GET /` as JSON.
#[derive(Serialize, ToSchema)]
pub struct Home {
    data: HomeData,
}

#[derive(Serialize, ToSchema)]
pub struct HomeData {
    #[schema(example = "Cairn")]
    name: &'static str,
    version: &'static str,
    /// The API documentation page.
    #[schema(example = "/docs/")]
    docs: &'static str,
    #[schema(example = "/openapi.json")]
    openapi: &'static str,
    #[schema(example = "/health/ready")]
    health: &'static str,
    /// `METHOD /path`, with what it does.
    routes: Vec<HomeRoute>,
}

#[derive(Serialize, ToSchema)]
pub struct HomeRoute {
    #[schema(example = "POST /message")]
    route: &'static str,
    description: &'static str,
}

/// Which form the client asked for: the first of HTML or JSON its `Accept` names, else text.
fn wants(headers: &HeaderMap) -> &'static str {
    let accept = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        });
    for kind in accept {
        match kind.as_str() {
            "text/html" | "application/xhtml+xml" => return "html",
            "application/json" => return "json",
            _ => {}
        }
    }
    "text"
}

/// What runs here, with links to the documentation, the readiness check and the routes.
#[utoipa::path(get, path = "/", tag = "operations",
    responses((status = 200, description = "What runs here: a page for browsers (`Accept: text/html`), JSON for `Accept: application/json`, plain text otherwise",
        content(
            (String = "text/html"),
            (Home = "application/json"),
            (String = "text/plain"),
        ))))]
pub async fn page(headers: HeaderMap) -> Response {
    match wants(&headers) {
        "html" => Html(html()).into_response(),
        "json" => Json(Home {
            data: HomeData {
                name: "Cairn",
                version: VERSION,
                docs: "/docs/",
                openapi: "/openapi.json",
                health: "/health/ready",
                routes: ROUTES
                    .iter()
                    .map(|&(route, description)| HomeRoute { route, description })
                    .collect(),
            },
        })
        .into_response(),
        _ => text().into_response(),
    }
}

fn html() -> String {
    let routes: String = ROUTES
        .iter()
        .map(|(route, what)| {
            let route = route.replace('{', "&#123;").replace('}', "&#125;");
            format!("<li><code>{route}</code> — {what}</li>\n")
        })
        .collect();
    format!(
        r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Cairn</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 40rem; margin: 3rem auto; padding: 0 1rem; line-height: 1.5; color: #222; }}
code {{ background: #f3f3f3; padding: 0 0.2rem; }}
</style>
</head>
<body>
<main>
<h1>Cairn</h1>
<p>This is Cairn {VERSION}: short messages with hashtags and their trends, and time
capsules, emails delivered at a chosen time.</p>
<ul>
<li><a href="/docs/">API documentation</a> (the OpenAPI document: <a href="/openapi.json">/openapi.json</a>)</li>
<li><a href="/health/ready">/health/ready</a> — whether this server can serve</li>
</ul>
<h2>Routes</h2>
<ul>
{routes}</ul>
</main>
</body>
</html>
"#
    )
}

fn text() -> String {
    let mut out = format!(
        "Cairn {VERSION}: messages with hashtags and their trends, and time capsules.\n\n\
         API documentation: /docs/ (OpenAPI: /openapi.json)\n\
         Readiness:         /health/ready\n\nRoutes:\n"
    );
    for (route, what) in ROUTES {
        out.push_str(&format!("  {route:<24} {what}\n"));
    }
    out
}
