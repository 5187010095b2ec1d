//! The Chronoria-compatible capsule API under `/api` (and, as its README lists them,
//! `/confirm?id=`, `/cancel?id=…`, `/downloadlink?id=…` without the prefix), so its web
//! client works unchanged: JSON in camelCase with field names matched in any case,
//! `200` with an empty body on success, and `400` with a plain-text code as the whole body
//! on failure. These GETs act, because that client calls them; the pages emailed to people
//! are elsewhere and never act on GET.

use std::collections::HashMap;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use cairn_events::domain::capsule::{self, EmailAddress, Party, PersonName};
use cairn_http::{ApiError, ClientIp, IdempotencyKey, InvalidIdempotencyKey};
use chrono::DateTime;
use utoipa::{IntoParams, OpenApi, ToSchema};

use super::{CapsuleError, Capsules, Refusal, Refused, Submission, series};

/// The body of `POST /api/submit/text`. Field names match in any case.
#[derive(ToSchema)]
#[schema(as = TextCapsule, rename_all = "camelCase")]
#[allow(dead_code)]
struct TextCapsule {
    #[schema(format = Email, max_length = 255, example = "ada@example.com")]
    sender_email: String,
    #[schema(min_length = 1, max_length = 255, example = "Ada")]
    sender_name: String,
    #[schema(format = Email, max_length = 255, example = "grace@example.com")]
    recipient_email: String,
    #[schema(min_length = 1, max_length = 255, example = "Grace")]
    recipient_name: String,
    /// When to deliver it, in milliseconds since the Unix epoch, in the future. Required
    /// unless `cron` is given.
    #[schema(format = Int64, example = 1893456000000_i64)]
    send_time: Option<i64>,
    /// 1 to 10,000 characters.
    #[schema(min_length = 1, max_length = 10000)]
    text: String,
    #[serde(flatten)]
    #[schema(inline)]
    recurring: Recurring,
}

/// Cairn's addition to the Chronoria routes' fields, optional: make the capsule recurring.
/// `sendTime` is then when the series starts (default: now).
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
#[allow(dead_code)]
pub(super) struct Recurring {
    /// A cron expression (5 fields, 6 with seconds, or `@yearly` … `@hourly`; see
    /// `POST /capsules`).
    #[schema(max_length = 200, example = "0 9 * * MON#1")]
    cron: Option<String>,
    /// With `cron`: an IANA time zone (default `UTC`).
    #[schema(example = "Europe/Berlin")]
    time_zone: Option<String>,
    /// With `cron`: the last time it may fire, in milliseconds since the Unix epoch, as an
    /// RFC 3339 time, or as a date (through the end of that day).
    #[schema(example = "2027-03-31")]
    until: Option<String>,
    /// With `cron`: how many occurrences in all.
    #[schema(minimum = 1, maximum = 4294967295_u64)]
    count: Option<u64>,
}

/// The query of the confirm route.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
struct ById {
    /// The capsule's id, from the confirmation email.
    #[param(
        pattern = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
    )]
    id: String,
}

/// The query of the cancel and download-link routes.
#[derive(IntoParams)]
#[into_params(parameter_in = Query, rename_all = "camelCase")]
#[allow(dead_code)]
struct ByIdAndRecipient {
    /// The capsule's id.
    #[param(
        pattern = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
    )]
    id: String,
    /// The address the capsule is to be delivered to.
    #[param(format = Email, max_length = 255)]
    recipient_email: String,
}

/// The Chronoria-compatible capsule routes, for the OpenAPI document.
#[derive(OpenApi)]
#[openapi(
    paths(submit_text, confirm, cancel, download_link, ping),
    components(schemas(TextCapsule, Recurring))
)]
pub struct ChronoriaApi;

pub fn router() -> Router<Capsules> {
    let mut router = Router::new();
    for prefix in ["/api", ""] {
        for (path, route) in [
            ("/confirm", get(confirm)),
            ("/cancel", get(cancel)),
            ("/downloadlink", get(download_link)),
        ] {
            router = router
                .route(&format!("{prefix}{path}"), route.clone())
                .route(&format!("{prefix}{path}/"), route);
        }
    }
    router
        .route("/api/submit/text", post(submit_text))
        .route("/api/submit/text/", post(submit_text))
        .route("/api/ping", get(ping))
        .route("/api/ping/", get(ping))
}

/// A Chronoria answer: `200` with an empty body, or a plain-text code.
pub(super) struct Answer(pub(super) Result<(), CapsuleError>);

impl IntoResponse for Answer {
    fn into_response(self) -> Response {
        match self.0 {
            Ok(()) => StatusCode::OK.into_response(),
            Err(error) => error.plain().into_response(),
        }
    }
}

/// Liveness for the Chronoria client.
#[utoipa::path(get, path = "/api/ping", tag = "capsules",
    responses((status = 200, description = "`Pong`", body = String, content_type = "text/plain")))]
async fn ping() -> &'static str {
    "Pong"
}

/// Whether a request says its body is JSON. A submission must: a form or `text/plain`
/// POST is what any web page can make a visitor's browser send elsewhere unasked (no CORS
/// preflight), and the Chronoria client sends JSON.
pub(super) fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase())
        .is_some_and(|v| v == "application/json" || v.ends_with("+json"))
}

/// Query parameters by lower-cased name, as Chronoria's ASP.NET binding matched them.
fn params(query: HashMap<String, String>) -> HashMap<String, String> {
    query
        .into_iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v))
        .collect()
}

fn capsule_id(params: &HashMap<String, String>) -> Result<uuid::Uuid, CapsuleError> {
    let raw = params.get("id").ok_or(Refusal::InvalidId)?;
    Ok(capsule::parse_id(raw)?)
}

/// Confirm a capsule (also `GET /confirm?id=`; the Chronoria client calls it).
#[utoipa::path(get, path = "/api/confirm", tag = "capsules", params(ById),
    responses(
        (status = 200, description = "Confirmed; a receipt with a cancel link goes to the sender"),
        (status = 400, description = "`INVALID_ID` or `CAPSULE_NA_OR_EXPIRED`", body = String, content_type = "text/plain"),
    ))]
async fn confirm(
    State(capsules): State<Capsules>,
    Query(query): Query<HashMap<String, String>>,
) -> Answer {
    let params = params(query);
    Answer(async { capsules.confirm(capsule_id(&params)?).await.map(drop) }.await)
}

/// Cancel a capsule not yet released (also `GET /cancel?…`).
#[utoipa::path(get, path = "/api/cancel", tag = "capsules", params(ByIdAndRecipient),
    responses(
        (status = 200, description = "Cancelled; the sender is told"),
        (status = 400, description = "`INVALID_ID`, `CAPSULE_NA_OR_RELEASED` (unknown, released or cancelled) or `VERIFICATION_FAILED` (not the recipient's address)", body = String, content_type = "text/plain"),
    ))]
async fn cancel(
    State(capsules): State<Capsules>,
    Query(query): Query<HashMap<String, String>>,
) -> Answer {
    let params = params(query);
    Answer(
        async {
            let id = capsule_id(&params)?;
            let recipient = params.get("recipientemail").map_or("", String::as_str);
            capsules.cancel(id, recipient).await.map(drop)
        }
        .await,
    )
}

/// The download link of a file capsule (also `GET /downloadlink?…`): `200` with the bare
/// URL as text; text capsules have none.
#[utoipa::path(get, path = "/api/downloadlink", tag = "capsules", params(ByIdAndRecipient),
    responses(
        (status = 200, description = "The download URL", body = String, content_type = "text/plain"),
        (status = 400, description = "`INVALID_ID`, `CAPSULE_NA_OR_RELEASED` (unknown, or not confirmed or delivered), `VERIFICATION_FAILED` (not the recipient's address) or `NO_FILE_AVAILABLE_FOR_THIS_CAPSULE` (a text capsule, or its file deleted)", body = String, content_type = "text/plain"),
    ))]
async fn download_link(
    State(capsules): State<Capsules>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let params = params(query);
    let outcome = async {
        let id = capsule_id(&params)?;
        let state = capsules.load(id).await?.ok_or(Refused::NotCancellable)?;
        let recipient = params.get("recipientemail").map_or("", String::as_str);
        super::decide::file_to_give(Some(&state), recipient)?;
        capsules.download_link(&state).map(|link| link.url)
    }
    .await;
    match outcome {
        Ok(url) => (
            [
                (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            url,
        )
            .into_response(),
        Err(e) => Answer(Err(e)).into_response(),
    }
}

/// Write a text capsule; a confirmation email goes to the sender.
#[utoipa::path(post, path = "/api/submit/text", tag = "capsules",
    params(("Idempotency-Key" = Option<String>, Header,
        description = "Makes a retry safe: the same key and capsule answer as the first time and write nothing more")),
    request_body(content = TextCapsule, content_type = "application/json"),
    responses(
        (status = 200, description = "Submitted; it waits for the sender's confirmation (24 hours)"),
        (status = 400, description = "`INVALID_EMAIL`, `INVALID_NAME`, `INVALID_FUTURE_TIME`, `INVALID_TEXT`, `INVALID_SCHEDULE` (`cron`, `timeZone`, `until` or `count`: not valid, no future occurrence, or firing more often than the server allows) or `BLOCKED_SENDER_EMAIL`", body = String, content_type = "text/plain"),
        (status = 413, description = "`PAYLOAD_TOO_LARGE`: the body is larger than the configured limit", body = String, content_type = "text/plain"),
        (status = 415, description = "`UNSUPPORTED_MEDIA_TYPE`: the body must be sent as `application/json`", body = String, content_type = "text/plain"),
        (status = 422, description = "`IDEMPOTENCY_KEY_REUSED`: the key was sent before with another capsule", body = String, content_type = "text/plain"),
        (status = 429, description = "`TOO_MANY_REQUESTS`: too many submissions from this address or sender; see `Retry-After`", body = String, content_type = "text/plain"),
    ))]
async fn submit_text(
    State(capsules): State<Capsules>,
    client: Option<ClientIp>,
    key: Result<IdempotencyKey, InvalidIdempotencyKey>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    if !is_json(&headers) {
        return ApiError::plain(StatusCode::UNSUPPORTED_MEDIA_TYPE, "UNSUPPORTED_MEDIA_TYPE")
            .into_response();
    }
    if let Err(rejection) = &body
        && rejection.status() == StatusCode::PAYLOAD_TOO_LARGE
    {
        return ApiError::plain(StatusCode::PAYLOAD_TOO_LARGE, "PAYLOAD_TOO_LARGE").into_response();
    }
    Answer(
        async {
            let key = key?;
            let body = body.map_err(|_| Refusal::InvalidText)?;
            let id = capsules.new_id(key.as_deref());
            let first = capsules.written_before(id, key.as_deref()).await?;
            let fields = json_fields(&body)?;
            let submission = parse_submission(&capsules, &fields, None, first.is_none())?;
            let client = client.map(|ClientIp(ip)| ip);
            let submitted = capsules.submit_as(id, first.as_ref(), submission, client);
            submitted.await.map(drop)
        }
        .await,
    )
    .into_response()
}

/// The fields of a JSON body by lower-cased name, numbers as their text.
fn json_fields(body: &[u8]) -> Result<HashMap<String, String>, CapsuleError> {
    let object: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(body).map_err(|_| Refusal::InvalidText)?;
    Ok(object
        .into_iter()
        .filter_map(|(k, v)| {
            let v = match v {
                serde_json::Value::String(s) => s,
                serde_json::Value::Number(n) => n.to_string(),
                _ => return None,
            };
            Some((k.to_ascii_lowercase(), v))
        })
        .collect())
}

/// A submission from its fields (lower-cased names), checked in Chronoria's order:
/// emails, names, time (unless `new` is false: a retry of a capsule written before, whose
/// time may have come since), text.
pub(super) fn parse_submission(
    capsules: &Capsules,
    fields: &HashMap<String, String>,
    attachment: Option<capsule::Attachment>,
    new: bool,
) -> Result<Submission, CapsuleError> {
    let text_of = |name: &str| fields.get(name).map_or("", String::as_str);
    let sender_email = EmailAddress::parse(text_of("senderemail"))?;
    let recipient_email = EmailAddress::parse(text_of("recipientemail"))?;
    let sender_name = PersonName::parse(text_of("sendername"))?;
    let recipient_name = PersonName::parse(text_of("recipientname"))?;
    let optional = |name: &str| fields.get(name).map(String::as_str);
    // Cairn's own fields: a recurring capsule (`sendTime`, if given, is when it starts).
    let schedule = optional("cron")
        .map(|cron| {
            series::parse_input(
                cron,
                optional("timezone"),
                optional("until"),
                optional("count"),
            )
        })
        .transpose()
        .map_err(Refusal::InvalidSchedule)?;
    let send_at = match text_of("sendtime").trim() {
        "" if schedule.is_some() => None,
        raw => {
            let send_ms: i64 = raw.parse().map_err(|_| Refusal::InvalidFutureTime)?;
            Some(DateTime::from_timestamp_millis(send_ms).ok_or(Refusal::InvalidFutureTime)?)
        }
    };
    let send_at = match (&schedule, new) {
        (Some(schedule), true) => capsules.plan(schedule, send_at)?.first,
        // A retry: the schedule is compared, not the first occurrence.
        (Some(_), false) => send_at.unwrap_or_else(|| capsules.now()),
        (None, new) => {
            let send_at = send_at.ok_or(Refusal::InvalidFutureTime)?;
            if new {
                capsules.check_send_time(send_at)?;
            }
            send_at
        }
    };
    let text = text_of("text").to_owned();
    capsule::validate_text(&text, attachment.is_some())?;
    Ok(Submission {
        sender: Party {
            email: sender_email,
            name: sender_name,
        },
        recipient: Party {
            email: recipient_email,
            name: recipient_name,
        },
        send_at,
        text,
        attachment,
        schedule,
        owner: None,
    })
}
