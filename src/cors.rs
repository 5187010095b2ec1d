//! CORS for the origins in `CAIRN_CORS_ORIGINS`: the Chronoria web client is served from
//! another origin than the API, so its browser asks first (a preflight `OPTIONS`) and
//! needs `Access-Control-Allow-Origin` on every answer. Other origins get no CORS headers,
//! so browsers keep their pages from reading Cairn's answers.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// The allowed origins (`https://app.example`), or `*` for any.
#[derive(Clone, Debug, Default)]
pub struct Origins(Arc<Vec<String>>);

impl Origins {
    pub fn new(origins: &[String]) -> Self {
        Origins(Arc::new(
            origins
                .iter()
                .map(|o| o.trim().trim_end_matches('/').to_owned())
                .filter(|o| !o.is_empty())
                .collect(),
        ))
    }

    fn allowed(&self, headers: &HeaderMap) -> Option<HeaderValue> {
        let origin = headers.get(header::ORIGIN)?;
        let text = origin.to_str().ok()?;
        self.0
            .iter()
            .any(|o| o == "*" || o.eq_ignore_ascii_case(text))
            .then(|| origin.clone())
    }
}

pub async fn layer(State(origins): State<Origins>, request: Request, next: Next) -> Response {
    let allowed = origins.allowed(request.headers());
    let preflight = request.method() == Method::OPTIONS
        && request
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    let mut response = match (&allowed, preflight) {
        (Some(_), true) => {
            let mut answer = StatusCode::NO_CONTENT.into_response();
            let headers = answer.headers_mut();
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static("GET, POST, OPTIONS"),
            );
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                HeaderValue::from_static("content-type, authorization, idempotency-key"),
            );
            headers.insert(
                header::ACCESS_CONTROL_MAX_AGE,
                HeaderValue::from_static("600"),
            );
            answer
        }
        _ => next.run(request).await,
    };
    let headers = response.headers_mut();
    if let Some(origin) = allowed {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        headers.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static("retry-after, location"),
        );
    }
    headers.append(header::VARY, HeaderValue::from_static("origin"));
    response
}
