//! Operations routes: liveness, readiness, Prometheus metrics, the request counter they
//! report, and the OpenAPI document with its docs page.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::extract::{MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use cairn_events::{EventStore, Store};
use cairn_query::routes::StartupGate;
use cairn_query::{GenerationStore, RunnerHandle};
use cairn_scheduler::SchedulerMetrics;
use serde_json::json;
use utoipa::OpenApi;

use cairn_http::{ApiError, ClientIp};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};

#[derive(Default)]
pub struct RequestCounts(Mutex<BTreeMap<(String, String, u16), u64>>);

#[derive(Clone)]
pub struct OpsState {
    pub events: Arc<dyn EventStore>,
    pub read: Arc<dyn GenerationStore>,
    pub runner: Option<RunnerHandle>,
    /// Closed while this process's own read models are still catching up after a start.
    pub gate: StartupGate,
    pub requests: Arc<RequestCounts>,
    /// Set where this process runs the scheduler.
    pub scheduler: Option<SchedulerOps>,
}

/// What `/metrics` reports of the scheduler.
#[derive(Clone)]
pub struct SchedulerOps {
    pub metrics: Arc<SchedulerMetrics>,
    pub store: Arc<dyn Store>,
}

/// Middleware: answer a request that takes longer than the limit with a JSON 503.
pub async fn time_limit(State(limit): State<Duration>, request: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::unavailable(
            "timeout",
            "the request took too long; a write may still have been applied: check before \
             retrying (POST /message and capsule submissions retry safely with the same \
             Idempotency-Key)",
        )
        .into_response(),
    }
}

/// The most bytes of a request's line and headers taken. hyper itself refuses heads past
/// its read buffer (about 400 KB) with a bare 431 and closes the connection; below that,
/// this limit answers in Cairn's conventions.
pub const MAX_HEAD_BYTES: usize = 32 * 1024;

/// Middleware: answer a request whose line and headers are larger than [`MAX_HEAD_BYTES`]
/// with a 431 (Chronoria's routes under `/api` in plain text, as they answer everything).
pub async fn head_limit(request: Request, next: Next) -> Response {
    let head: usize = request.method().as_str().len()
        + request.uri().to_string().len()
        + request
            .headers()
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len() + 4)
            .sum::<usize>();
    if head <= MAX_HEAD_BYTES {
        return next.run(request).await;
    }
    let status = StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE;
    if request.uri().path().starts_with("/api/") {
        return ApiError::plain(status, "REQUEST_HEADER_FIELDS_TOO_LARGE").into_response();
    }
    ApiError::new(
        status,
        "headers_too_large",
        format!("the request line and headers must be at most {MAX_HEAD_BYTES} bytes"),
    )
    .into_response()
}

/// Middleware: count requests by route and status for `/metrics`, and log each at debug level.
pub async fn count_requests(
    State(counts): State<Arc<RequestCounts>>,
    request: Request,
    next: Next,
) -> Response {
    // Clients choose methods freely; keep the label set bounded.
    let method = match request.method().as_str() {
        m @ ("GET" | "POST" | "PUT" | "PATCH" | "DELETE" | "HEAD" | "OPTIONS") => m.to_owned(),
        _ => "other".to_owned(),
    };
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let client = request.extensions().get::<ClientIp>().map(|c| c.0);
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16();
    tracing::debug!(
        client = ?client,
        method,
        route,
        status,
        micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
        "request"
    );
    let key = (method, route, status);
    *counts
        .0
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry(key)
        .or_default() += 1;
    response
}

async fn projection_lag(ops: &OpsState) -> Option<i64> {
    let head = ops.events.head().await.ok()?;
    let position = match &ops.runner {
        Some(runner) => runner.position(),
        None => ops.read.checkpoint("messages").await.ok()?,
    };
    Some((head - position).max(0))
}

/// Each read model's state: `live` (reads answer from a complete generation),
/// `rebuilding_beside_live` (a rebuild runs while the complete one answers) or `rebuilding`
/// (no complete generation: reads answer 503 until it has caught up), with the rebuild's
/// position and the log's head. `None` when the read store cannot tell.
async fn read_models(ops: &OpsState, head: Option<i64>) -> Option<(bool, serde_json::Value)> {
    let mut all_live = true;
    let mut models = serde_json::Map::new();
    for name in cairn_query::projections::NAMES {
        let generations = ops.read.generations(name).await.ok()?;
        let model = match (generations.live, generations.building) {
            (Some(_), None) => json!({ "status": "live" }),
            (live, building) => {
                all_live &= live.is_some();
                let position = match building {
                    Some(b) => ops.read.models_at(b).backend.checkpoint(name).await.ok()?,
                    None => 0,
                };
                let status = if live.is_some() {
                    "rebuilding_beside_live"
                } else {
                    "rebuilding"
                };
                json!({ "status": status, "position": position, "head": head })
            }
        };
        models.insert((*name).to_owned(), model);
    }
    Some((all_live, serde_json::Value::Object(models)))
}

/// Whether the process is up (it answers).
#[utoipa::path(get, path = "/health/live", tag = "operations",
    responses((status = 200, description = "The process answers")))]
pub async fn live() -> Json<serde_json::Value> {
    Json(json!({ "data": { "status": "ok" } }))
}

/// Whether the process can serve: database, read store and projection lag.
#[utoipa::path(get, path = "/health/ready", tag = "operations",
    responses(
        (status = 200, description = "Database and read store reachable, read models loaded"),
        (status = 503, description = "A backend is unreachable, read models are still loading, or a read model is being rebuilt with none complete to answer from (`\"status\": \"rebuilding\"`, with its progress)"),
    ))]
pub async fn ready(State(ops): State<OpsState>) -> Response {
    // Asked together: a backend that is down costs its timeout once, not once per check.
    let (database, read_store, lag, loaded, head) = tokio::join!(
        async { ops.events.ping().await.is_ok() },
        async { ops.read.ping().await.is_ok() },
        projection_lag(&ops),
        ops.gate.is_open(),
        async { ops.events.head().await.ok() },
    );
    let (complete, models) = match read_models(&ops, head).await {
        Some((complete, models)) => (complete, models),
        None => (false, serde_json::Value::Null),
    };
    let status = if database && read_store && loaded && complete {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let summary = if status == StatusCode::OK {
        "ready"
    } else if database && read_store && !complete {
        "rebuilding"
    } else if database && read_store {
        "loading"
    } else {
        "unavailable"
    };
    let body = json!({ "data": {
        "ready": status == StatusCode::OK,
        "status": summary,
        "read_models": models,
        "database": { "backend": ops.events.backend(), "ok": database },
        "read_store": { "backend": ops.read.backend(), "ok": read_store },
        "read_models_loaded": loaded,
        "projection_lag_events": lag,
    }});
    let mut response = (status, Json(body)).into_response();
    if status == StatusCode::SERVICE_UNAVAILABLE {
        let wait = cairn_http::retry_after(Duration::from_secs(1));
        response
            .headers_mut()
            .insert(axum::http::header::RETRY_AFTER, wait);
    }
    response
}

/// Prometheus metrics: requests, append batch sizes, projection lag; where the scheduler
/// runs, due-item lateness, the due index's and the outbox's depths, emails by outcome and
/// claims taken over.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain")))]
pub async fn metrics(State(ops): State<OpsState>) -> Response {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# HELP cairn_http_requests_total HTTP requests answered, by route and status."
    );
    let _ = writeln!(out, "# TYPE cairn_http_requests_total counter");
    for ((method, route, status), n) in ops
        .requests
        .0
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
    {
        let _ = writeln!(
            out,
            "cairn_http_requests_total{{method=\"{method}\",route=\"{route}\",status=\"{status}\"}} {n}"
        );
    }
    ops.events.stats().render(&mut out);
    if let Some(lag) = projection_lag(&ops).await {
        let _ = writeln!(
            out,
            "# HELP cairn_projection_lag_events Events appended but not yet in the read model."
        );
        let _ = writeln!(out, "# TYPE cairn_projection_lag_events gauge");
        let _ = writeln!(
            out,
            "cairn_projection_lag_events{{projection=\"messages\"}} {lag}"
        );
    }
    if let Some(scheduler) = &ops.scheduler {
        scheduler.metrics.render(&mut out);
        scheduler.store.work_stats().render(&mut out);
        let now = chrono::Utc::now();
        let (due, outbox) = tokio::join!(
            scheduler.store.due_status(now, 0),
            scheduler.store.outbox_status()
        );
        if let (Ok(due), Ok(outbox)) = (due, outbox) {
            cairn_scheduler::metrics::render_depths(&mut out, &due, &outbox, now);
        }
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        out,
    )
        .into_response()
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Cairn",
        description = "Messages with hashtags, posted and queried over HTTP. Every error is \
            `{\"error\": \"<human message>\", \"code\": \"<stable code>\"}`."
    ),
    paths(crate::home::page, live, ready, metrics),
    components(schemas(crate::home::Home, crate::home::HomeData, crate::home::HomeRoute)),
    tags(
        (name = "messages", description = "Post and query messages"),
        (name = "operations", description = "Health and metrics"),
    )
)]
struct OpsApi;

/// The OpenAPI document of every route this binary can serve.
/// Each part's document, the message routes first.
fn openapi_parts() -> [utoipa::openapi::OpenApi; 11] {
    [
        cairn_command::CommandApi::openapi(),
        cairn_query::QueryApi::openapi(),
        cairn_command::ChronoriaApi::openapi(),
        cairn_command::CapsuleApi::openapi(),
        cairn_command::UploadApi::openapi(),
        cairn_command::PagesApi::openapi(),
        cairn_command::FilesApi::openapi(),
        cairn_command::BackupApi::openapi(),
        cairn_command::BackupUploadApi::openapi(),
        cairn_command::ExportApi::openapi(),
        OpsApi::openapi(),
    ]
}

pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut parts = openapi_parts().into_iter();
    let mut doc = parts.next().unwrap_or_default();
    for part in parts {
        doc.merge(part);
    }
    // The title, description and tags are the operations doc's.
    doc.info = OpsApi::openapi().info;
    let components = doc.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        "bearer",
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some("A token from `cairn user add` or `cairn token add`"))
                .build(),
        ),
    );
    doc
}

#[cfg(test)]
mod openapi_tests {
    use std::collections::HashMap;

    /// Merging keeps one schema per name: two parts naming different schemas alike would
    /// have one route documented with the other's answer.
    #[test]
    fn no_two_schemas_share_a_name() {
        let mut seen: HashMap<String, serde_json::Value> = HashMap::new();
        for part in super::openapi_parts() {
            for (name, schema) in part.components.map(|c| c.schemas).unwrap_or_default() {
                let schema = serde_json::to_value(schema).unwrap_or_default();
                if let Some(before) = seen.insert(name.clone(), schema.clone()) {
                    assert_eq!(before, schema, "two schemas are named {name}");
                }
            }
        }
    }
}
