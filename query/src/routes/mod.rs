//! Read routes: `GET /message` (Dunder-compatible filters and cursor),
//! `GET /message/{id}`, and the trends (`trends`).

pub mod trends;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, NaiveDate, Utc};
use serde::Serialize;
use ulid::Ulid;
use utoipa::{IntoParams, OpenApi, ToSchema};

use cairn_events::domain::message::Hashtag;
use cairn_events::domain::user::UserName;
use cairn_events::{Position, ReadYourWrites};
use cairn_http::ApiError;
pub use cairn_http::ErrorBody;

use crate::read_store::{
    GenerationStore, MessageFilter, MessageStore, ReadError, StoredMessage, TrendStore,
};
use crate::trends::TrendRules;

/// Default and largest page sizes of `GET /message`.
pub const DEFAULT_LIMIT: usize = 100;
pub const MAX_LIMIT: usize = 1000;

/// How long a client is asked to wait while a read model is rebuilt from the first event.
pub const REBUILDING_RETRY: Duration = Duration::from_secs(5);

#[derive(Clone)]
pub struct QueryState {
    /// The read models: each request reads from the live generation of its model.
    pub read: Arc<dyn GenerationStore>,
    pub gate: StartupGate,
    /// How trending scores were computed (their decay is applied per request).
    pub rules: TrendRules,
    /// "Now", for trending scores; tests set it.
    pub clock: cairn_events::Clock,
}

/// Holds reads back until the read models contain everything the event log held when the
/// process started. A process's own read models catch up in the background after a start
/// (a crash may have left them behind the log, or a rebuild may be under way), so without
/// the gate a message acknowledged before a restart could briefly read as 404.
#[derive(Clone, Default)]
pub struct StartupGate(Option<Arc<Gate>>);

struct Gate {
    waiter: Arc<dyn ReadYourWrites>,
    position: Position,
    timeout: Duration,
    open: AtomicBool,
}

impl StartupGate {
    /// A gate that never holds anything back (read models that outlive the process).
    pub fn open() -> Self {
        StartupGate(None)
    }

    /// Hold reads until `waiter` reports `position`, each for at most `timeout`.
    pub fn until(waiter: Arc<dyn ReadYourWrites>, position: Position, timeout: Duration) -> Self {
        StartupGate(Some(Arc::new(Gate {
            waiter,
            position,
            timeout,
            open: AtomicBool::new(false),
        })))
    }

    /// Whether reads pass without waiting.
    pub async fn is_open(&self) -> bool {
        // A zero timeout still looks once at the current position.
        self.reached_within(Duration::ZERO).await
    }

    /// Wait until the read models are loaded; `Err` if they are not within the timeout.
    pub async fn pass(&self) -> Result<(), QueryError> {
        let timeout = self.0.as_ref().map_or(Duration::ZERO, |gate| gate.timeout);
        if self.reached_within(timeout).await {
            Ok(())
        } else {
            Err(QueryError::Loading)
        }
    }

    /// Whether the read models hold the start position, waiting at most `timeout`; once
    /// they do, the gate stays open without asking again.
    async fn reached_within(&self, timeout: Duration) -> bool {
        let Some(gate) = &self.0 else { return true };
        if gate.open.load(Ordering::Acquire) {
            return true;
        }
        let reached = gate.waiter.wait_for(gate.position, timeout).await;
        if reached {
            gate.open.store(true, Ordering::Release);
        }
        reached
    }
}

impl QueryState {
    /// The live messages model, or "rebuilding".
    async fn messages(&self) -> Result<Arc<dyn MessageStore>, QueryError> {
        Ok(self.read.live("messages").await?.messages)
    }

    /// The live trends model, or "rebuilding".
    async fn trends(&self) -> Result<Arc<dyn TrendStore>, QueryError> {
        Ok(self.read.live("trends").await?.trends)
    }
}

pub fn router(state: QueryState) -> Router {
    Router::new()
        .route("/message", get(list_messages))
        .route("/message/{id}", get(get_message))
        .route("/trend", get(trends::trend))
        .route("/trends/hashtags", get(trends::trending))
        .with_state(state)
}

/// Errors of the read routes, as `{"error": ..., "code": ...}`.
#[derive(Debug)]
pub enum QueryError {
    BadRequest {
        code: &'static str,
        message: String,
    },
    NotFound,
    /// The read models are still being rebuilt after a start.
    Loading,
    /// A read model has no complete generation: it is being built from the first event.
    Rebuilding,
    Unavailable(ReadError),
}

impl QueryError {
    fn bad(code: &'static str, message: impl Into<String>) -> Self {
        QueryError::BadRequest {
            code,
            message: message.into(),
        }
    }
}

impl From<ReadError> for QueryError {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::Rebuilding(_) => QueryError::Rebuilding,
            e => QueryError::Unavailable(e),
        }
    }
}

impl From<QueryError> for ApiError {
    fn from(error: QueryError) -> Self {
        match error {
            QueryError::BadRequest { code, message } => ApiError::bad_request(code, message),
            QueryError::NotFound => ApiError::not_found(),
            QueryError::Loading => ApiError::unavailable(
                "loading",
                "the read models are still loading; try again shortly",
            ),
            QueryError::Rebuilding => ApiError::unavailable(
                "read_model_rebuilding",
                "the read model is being rebuilt from the event log; try again shortly",
            )
            .retry_after(REBUILDING_RETRY),
            QueryError::Unavailable(error) => {
                tracing::error!(%error, cause = ?std::error::Error::source(&error), "read store failed");
                ApiError::unavailable(
                    "read_store_unavailable",
                    "the read store is unavailable; try again shortly",
                )
            }
        }
    }
}

impl IntoResponse for QueryError {
    fn into_response(self) -> Response {
        ApiError::from(self).into_response()
    }
}

/// A message as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct MessageView {
    /// ULID: sorts by posting time.
    #[schema(example = "01JD8Z3Q9W6G7N5V4T2R1P0M9K")]
    pub id: String,
    pub user: UserView,
    pub text: String,
    /// As spelled by the author, without `#`.
    pub hashtags: Vec<String>,
    /// RFC 3339, UTC.
    #[schema(example = "2026-11-25T10:00:00.000Z")]
    pub created_at: String,
}

/// The author of a message.
#[derive(Debug, Serialize, ToSchema)]
pub struct UserView {
    pub id: String,
    pub name: String,
}

impl From<&StoredMessage> for MessageView {
    fn from(m: &StoredMessage) -> Self {
        MessageView {
            id: m.id.to_string(),
            user: UserView {
                id: m.user_id.clone(),
                name: m.user_name.clone(),
            },
            text: m.text.clone(),
            hashtags: m.hashtags.clone(),
            created_at: m
                .created_at
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        }
    }
}

/// `{"data": message}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct MessageBody {
    pub data: MessageView,
}

/// One page of messages, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct MessagePage {
    pub data: Vec<MessageView>,
    /// Pass as `cursor` for the next (older) page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// What `GET /message` answers: a page, or with `ulid` the one message.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum ListAnswer {
    Page(MessagePage),
    One(MessageBody),
}

/// The query parameters of `GET /message` (all optional).
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct ListParams {
    /// Only messages with this hashtag (case-insensitive, with or without `#`).
    #[param(min_length = 1, max_length = 65)]
    hashtag: Option<String>,
    /// Only messages by this user.
    #[param(min_length = 1, max_length = 255)]
    user_name: Option<String>,
    /// Posted at or after: RFC 3339, or `YYYY-MM-DD` (midnight UTC).
    #[param(example = "2019-09-22T10:00:00Z")]
    from_date: Option<String>,
    /// Posted before: RFC 3339, or `YYYY-MM-DD` (midnight UTC).
    #[param(example = "2019-09-23")]
    to_date: Option<String>,
    /// Page size, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
    /// The last id of the previous page: the next page holds older messages.
    #[param(pattern = r"^[0-7][0-9A-HJKMNP-TV-Za-hjkmnp-tv-z]{25}$")]
    cursor: Option<String>,
    /// Answer with this one message instead of a page (`{"data": message}`).
    #[param(pattern = r"^[0-7][0-9A-HJKMNP-TV-Za-hjkmnp-tv-z]{25}$")]
    ulid: Option<String>,
}

/// The OpenAPI description of the read routes.
#[derive(OpenApi)]
#[openapi(
    paths(list_messages, get_message, trends::trend, trends::trending),
    components(schemas(
        MessageView,
        UserView,
        MessageBody,
        MessagePage,
        ListAnswer,
        ErrorBody,
        trends::TrendBucket,
        trends::TrendData,
        trends::TrendBody,
        trends::DayView,
        trends::TrendingTag,
        trends::TrendingBody,
    ))
)]
pub struct QueryApi;

/// A ULID in its 26-character form. The first character carries only the top 3 of its 5
/// bits (26 × 5 = 130 bits for 128), so one above `7` is refused rather than overflowing.
pub fn parse_ulid(raw: &str) -> Option<Ulid> {
    if !raw.starts_with(|c: char| ('0'..='7').contains(&c)) {
        return None;
    }
    Ulid::from_string(raw).ok()
}

fn parse_id(raw: &str) -> Result<Ulid, QueryError> {
    parse_ulid(raw).ok_or_else(|| invalid_id(raw))
}

fn invalid_id(raw: &str) -> QueryError {
    const SHOWN: usize = 40;
    let shown: String = raw.chars().take(SHOWN).collect();
    let more = if raw.chars().nth(SHOWN).is_some() {
        "…"
    } else {
        ""
    };
    QueryError::bad("invalid_id", format!("{shown:?}{more} is not a message id"))
}

/// One message by id.
#[utoipa::path(
    get,
    path = "/message/{id}",
    tag = "messages",
    params(("id" = String, Path, pattern = r"^[0-7][0-9A-HJKMNP-TV-Za-hjkmnp-tv-z]{25}$", description = "The message id (ULID)")),
    responses(
        (status = 200, description = "The message", body = MessageBody),
        (status = 400, description = "Not a message id", body = ErrorBody),
        (status = 404, description = "No such message", body = ErrorBody),
        (status = 503, description = "Read models loading, being rebuilt (`read_model_rebuilding`) or unavailable", body = ErrorBody),
    )
)]
async fn get_message(
    State(state): State<QueryState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, QueryError> {
    // A path that is not UTF-8 once decoded (`/message/%FF`) is no message id either.
    let Path(id) = id.map_err(|_| QueryError::bad("invalid_id", "that is not a message id"))?;
    one_message(&state, &id).await
}

/// `{"data": message}` for an id, or 404.
async fn one_message(state: &QueryState, id: &str) -> Result<Response, QueryError> {
    let id = parse_id(id)?;
    let messages = state.messages().await?;
    state.gate.pass().await?;
    let message = messages
        .get_message(id)
        .await?
        .ok_or(QueryError::NotFound)?;
    Ok(Json(MessageBody {
        data: MessageView::from(&message),
    })
    .into_response())
}

/// A date filter: RFC 3339, or a bare `YYYY-MM-DD` meaning midnight UTC.
pub fn parse_date(name: &str, raw: &str) -> Result<DateTime<Utc>, QueryError> {
    if let Ok(t) = DateTime::parse_from_rfc3339(raw) {
        return Ok(t.with_timezone(&Utc));
    }
    if let Ok(d) = NaiveDate::parse_from_str(raw, "%Y-%m-%d")
        && let Some(t) = d.and_hms_opt(0, 0, 0)
    {
        return Ok(t.and_utc());
    }
    Err(QueryError::bad(
        "invalid_date",
        format!("{name} must be an RFC 3339 time (2019-09-22T10:00:00Z) or a date (2019-09-22)"),
    ))
}

fn ulid_at(t: DateTime<Utc>) -> Ulid {
    // ULIDs hold 48-bit millisecond timestamps; dates outside that range are clamped.
    let ms = t.timestamp_millis().clamp(0, (1_i64 << 48) - 1) as u64;
    Ulid::from_parts(ms, 0)
}

/// Turn `GET /message` query parameters into a filter. Unknown parameters are ignored, as
/// Dunder did; known ones are checked strictly.
pub fn parse_filter(params: &HashMap<String, String>) -> Result<MessageFilter, QueryError> {
    let mut filter = MessageFilter {
        limit: DEFAULT_LIMIT,
        ..MessageFilter::default()
    };
    if let Some(tag) = params.get("hashtag") {
        let tag = Hashtag::parse(tag).map_err(|e| QueryError::bad("invalid_hashtag", e))?;
        filter.hashtag = Some(tag.key());
    }
    if let Some(user) = params.get("user_name") {
        let user = UserName::parse(user).map_err(|e| QueryError::bad("invalid_user_name", e))?;
        filter.user_name = Some(user.key());
    }
    let from = params
        .get("from_date")
        .map(|d| parse_date("from_date", d))
        .transpose()?;
    let to = params
        .get("to_date")
        .map(|d| parse_date("to_date", d))
        .transpose()?;
    if let (Some(f), Some(t)) = (from, to)
        && f >= t
    {
        return Err(QueryError::bad(
            "invalid_date_range",
            "from_date must be before to_date",
        ));
    }
    filter.lower = from.map(ulid_at);
    filter.upper = to.map(ulid_at);
    if let Some(cursor) = params.get("cursor").filter(|c| !c.is_empty()) {
        let cursor = parse_ulid(cursor).ok_or_else(|| {
            QueryError::bad(
                "invalid_cursor",
                "cursor must be a message id from an earlier page",
            )
        })?;
        filter.upper = Some(filter.upper.map_or(cursor, |u| u.min(cursor)));
    }
    if let Some(limit) = params.get("limit") {
        filter.limit = match limit.parse::<usize>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
            _ => {
                return Err(QueryError::bad(
                    "invalid_limit",
                    format!("limit must be a whole number from 1 to {MAX_LIMIT}"),
                ));
            }
        };
    }
    Ok(filter)
}

/// Messages, newest first, filtered and paged with a cursor.
#[utoipa::path(
    get,
    path = "/message",
    tag = "messages",
    params(ListParams),
    responses(
        (status = 200, description = "A page of messages (or one message with `ulid`)", body = ListAnswer),
        (status = 400, description = "A bad filter, limit or cursor", body = ErrorBody),
        (status = 404, description = "`ulid` names no message", body = ErrorBody),
        (status = 503, description = "Read models loading, being rebuilt (`read_model_rebuilding`) or unavailable", body = ErrorBody),
    )
)]
async fn list_messages(
    State(state): State<QueryState>,
    query: Result<Query<HashMap<String, String>>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, QueryError> {
    let Query(params) = query.map_err(|e| QueryError::bad("invalid_query", e.body_text()))?;
    if let Some(id) = params.get("ulid") {
        return one_message(&state, id).await;
    }
    let mut filter = parse_filter(&params)?;
    let messages = state.messages().await?;
    state.gate.pass().await?;
    let limit = filter.limit;
    filter.limit += 1; // one more tells whether there is a next page
    let mut page = messages.list_messages(&filter).await?;
    let more = page.len() > limit;
    page.truncate(limit);
    let next_cursor = if more {
        page.last().map(|m| m.id.to_string())
    } else {
        None
    };
    let body = MessagePage {
        data: page.iter().map(MessageView::from).collect(),
        next_cursor,
    };
    Ok(Json(body).into_response())
}
