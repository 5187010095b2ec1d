//! Capsules in Cairn's own JSON conventions, for scripts: `POST /capsules` to submit and
//! `GET /capsules/{id}` for the status view reachable through the emailed links, with the
//! capsule's history ([`super::history`]). Errors are `{"error": …, "code": …}` with the
//! right status.
//!
//! A submission does not answer the capsule's id: the id is what confirms, and only the
//! sender's mailbox may learn it, or anyone could schedule email to any address.

use std::net::IpAddr;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use cairn_events::domain::capsule::{self, EmailAddress, InvalidField, Party, PersonName};
use cairn_http::{ApiError, ClientIp, ErrorBody, IdempotencyKey, InvalidIdempotencyKey};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{OpenApi, ToSchema};

use super::history::{self, Happened};
use super::{CONFIRM_WITHIN, CapsuleError, Capsules, Refusal, Status, Submission, series};

pub fn router() -> Router<crate::CommandState> {
    Router::new()
        .route("/capsules", post(submit))
        .route("/capsules/{id}", get(status))
}

/// The JSON API's routes, for the OpenAPI document.
#[derive(OpenApi)]
#[openapi(
    paths(submit, status),
    components(schemas(
        NewCapsule,
        PartyInput,
        ScheduleInput,
        ScheduleView,
        Submitted,
        CapsuleView,
        PartyView,
        ErrorBody
    ))
)]
pub struct CapsuleApi;

#[derive(Deserialize, ToSchema)]
struct PartyInput {
    /// An email address, at most 255 characters.
    #[schema(format = Email, max_length = 255, example = "ada@example.com")]
    email: String,
    /// 1 to 255 characters.
    #[schema(min_length = 1, max_length = 255, example = "Ada")]
    name: String,
}

/// A text capsule: delivered once at `send_at`, or repeatedly on a `schedule`.
#[derive(Deserialize, ToSchema)]
struct NewCapsule {
    sender: PartyInput,
    recipient: PartyInput,
    /// When to deliver it (RFC 3339), in the future. With a `schedule`: when the series
    /// starts (default: now). One of the two is required.
    #[schema(format = DateTime, example = "2030-01-01T09:00:00Z")]
    send_at: Option<String>,
    schedule: Option<ScheduleInput>,
    /// 1 to 10,000 characters.
    #[schema(min_length = 1, max_length = 10000)]
    text: String,
}

/// When a recurring capsule is delivered. Daylight-saving changes follow Vixie cron: a
/// time skipped by the change fires right after it, a time that happens twice fires once
/// (unless the hour is `*` or a step). Occurrences missed while the service was down are
/// not all sent afterwards: the latest one is, and the others are recorded as skipped.
#[derive(Deserialize, ToSchema)]
struct ScheduleInput {
    /// 5 fields (minute hour day-of-month month day-of-week), 6 with seconds first, or
    /// `@yearly`, `@monthly`, `@weekly`, `@daily`, `@hourly`. `L` (last day, `5L` last
    /// Friday), `#` (`MON#1`: first Monday) and `W` are understood. Two occurrences must be
    /// at least the server's minimum interval apart (an hour by default).
    #[schema(max_length = 200, example = "0 9 * * MON#1")]
    cron: String,
    /// An IANA time zone; default `UTC`.
    #[schema(example = "Europe/Berlin")]
    time_zone: Option<String>,
    /// The last time it may fire: an RFC 3339 time, or a date (through the end of that
    /// day in `time_zone`).
    #[schema(example = "2027-03-31")]
    until: Option<String>,
    /// How many occurrences in all (skipped ones included).
    #[schema(minimum = 1, maximum = 4294967295_u64)]
    count: Option<u64>,
}

/// A recurring capsule's schedule as accepted.
#[derive(Serialize, ToSchema)]
struct ScheduleView {
    cron: String,
    time_zone: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    until: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    count: Option<u32>,
}

impl ScheduleView {
    fn of(schedule: &capsule::Schedule) -> Self {
        ScheduleView {
            cron: schedule.cron.clone(),
            time_zone: schedule.time_zone.clone(),
            until: schedule.until.map(stamp),
            count: schedule.count,
        }
    }
}

#[derive(Serialize, ToSchema)]
struct Submitted {
    data: SubmittedData,
}

#[derive(Serialize, ToSchema)]
struct SubmittedData {
    /// `pending`: waiting for the confirmation link emailed to the sender.
    #[schema(value_type = String, example = "pending")]
    status: Status,
    /// When the capsule expires unless confirmed (RFC 3339).
    confirm_by: String,
    /// When it is delivered (RFC 3339); for a recurring capsule, the first occurrence.
    send_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    schedule: Option<ScheduleView>,
    /// A recurring capsule's next occurrences after the first (up to two).
    #[serde(skip_serializing_if = "Option::is_none")]
    then: Option<Vec<String>>,
    /// Anything the sender should know about the schedule, such as "fires only in leap
    /// years".
    #[serde(skip_serializing_if = "Vec::is_empty")]
    notes: Vec<String>,
}

#[derive(Serialize, ToSchema)]
struct PartyView {
    name: String,
}

#[derive(Serialize, ToSchema)]
struct CapsuleView {
    data: CapsuleData,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct CapsuleData {
    id: String,
    /// `pending`, `active`, `released`, `cancelled` or `expired`.
    #[schema(value_type = String, example = "active")]
    status: Status,
    /// Since when it has had that status (RFC 3339).
    status_since: String,
    sender: PartyView,
    recipient: PartyView,
    submitted_at: String,
    send_at: String,
    has_file: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    schedule: Option<ScheduleView>,
    /// When the next delivery is due, while one is to come (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    next_at: Option<String>,
    /// How many deliveries were made (skipped occurrences are not counted).
    deliveries: u32,
    /// What happened to the capsule, oldest first, straight from its events: the most
    /// recent 200 entries.
    history: Vec<HistoryEntry>,
    /// How many older entries `history` leaves out.
    #[schema(minimum = 0)]
    history_omitted: usize,
}

/// One entry of a capsule's history. `at` is when it happened (RFC 3339, to the
/// millisecond); `event` says what, and which other fields come with it.
#[derive(Serialize, ToSchema)]
#[serde(tag = "event", rename_all = "snake_case")]
enum HistoryEntry {
    /// The capsule was written; it waited for its sender's confirmation.
    Submitted {
        #[schema(format = DateTime)]
        at: String,
    },
    /// Its sender confirmed it.
    Confirmed {
        #[schema(format = DateTime)]
        at: String,
    },
    /// An occurrence (the only one, for a capsule that does not repeat) was released: its
    /// delivery email was queued.
    Released {
        #[schema(format = DateTime)]
        at: String,
        /// Which occurrence, from 1.
        #[schema(minimum = 1)]
        occurrence: u32,
        /// When it was due (`at` is when it was released).
        #[schema(format = DateTime)]
        scheduled_at: String,
        /// When the next occurrence is due; `null` after the last.
        #[schema(required = true, format = DateTime)]
        next_at: Option<String>,
    },
    /// An occurrence was not delivered: a later one was already due when the scheduler
    /// came to it (after downtime, only the latest missed occurrence is delivered).
    OccurrenceSkipped {
        #[schema(format = DateTime)]
        at: String,
        #[schema(minimum = 1)]
        occurrence: u32,
        #[schema(format = DateTime)]
        scheduled_at: String,
    },
    /// The mail server accepted an email about the capsule. A resend after a crash is
    /// recorded again, with the same Message-ID.
    EmailSent {
        #[schema(format = DateTime)]
        at: String,
        /// What the email was: `confirm` (to the sender, asking to confirm), `active` (the
        /// receipt), `delivery` (the capsule, to its recipient), `cancelled`, `expired`;
        /// `null` if its cause did not say.
        #[schema(required = true, example = "delivery")]
        purpose: Option<String>,
        /// The email's Message-ID header.
        #[schema(example = "<0190a3c2e0f47c3d8e1b2a4f5c6d7e8f@capsules.example>")]
        message_id: String,
        /// Failed tries before the one that succeeded.
        #[schema(minimum = 0)]
        retries: i32,
        /// For a `delivery`, which occurrence it delivered (from 1).
        #[serde(skip_serializing_if = "Option::is_none")]
        #[schema(minimum = 1)]
        occurrence: Option<u32>,
    },
    /// It was cancelled; no later occurrence is delivered.
    Cancelled {
        #[schema(format = DateTime)]
        at: String,
    },
    /// Nobody confirmed it in time.
    Expired {
        #[schema(format = DateTime)]
        at: String,
    },
    /// Its file was deleted from storage.
    FileDeleted {
        #[schema(format = DateTime)]
        at: String,
    },
}

impl From<&history::Entry> for HistoryEntry {
    fn from(entry: &history::Entry) -> Self {
        let at = exact(entry.at);
        match &entry.what {
            Happened::Submitted => HistoryEntry::Submitted { at },
            Happened::Confirmed => HistoryEntry::Confirmed { at },
            Happened::Released {
                occurrence,
                scheduled_at,
                next_at,
            } => HistoryEntry::Released {
                at,
                occurrence: *occurrence,
                scheduled_at: exact(*scheduled_at),
                next_at: next_at.map(exact),
            },
            Happened::Skipped {
                occurrence,
                scheduled_at,
            } => HistoryEntry::OccurrenceSkipped {
                at,
                occurrence: *occurrence,
                scheduled_at: exact(*scheduled_at),
            },
            Happened::EmailSent {
                purpose,
                message_id,
                retries,
                occurrence,
            } => HistoryEntry::EmailSent {
                at,
                purpose: purpose.clone(),
                message_id: message_id.clone(),
                retries: *retries,
                occurrence: *occurrence,
            },
            Happened::Cancelled => HistoryEntry::Cancelled { at },
            Happened::Expired => HistoryEntry::Expired { at },
            Happened::FileDeleted => HistoryEntry::FileDeleted { at },
        }
    }
}

fn stamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// A time in the history: to the millisecond, so that how late a release was shows.
fn exact(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Submit a text capsule; the sender gets an email to confirm it. With a user's bearer
/// token (optional) the capsule is linked to that user, and goes into their exports.
#[utoipa::path(post, path = "/capsules", tag = "capsules", security((), ("bearer" = [])),
    params(("Idempotency-Key" = Option<String>, Header,
        description = "Makes a retry safe: the same key and capsule answer as the first time and write nothing more")),
    request_body(content = NewCapsule, content_type = "application/json"),
    responses(
        (status = 202, description = "Written; waiting for the sender's confirmation", body = Submitted),
        (status = 400, description = "Bad JSON, address, name, time or text; `invalid_schedule` naming the part of the schedule refused (expression, zone, end, count, no future occurrence, more often than the server's minimum interval); a blocked sender", body = ErrorBody),
        (status = 401, description = "A bearer token was sent that is not valid", body = ErrorBody),
        (status = 413, description = "`body_too_large`: the body is larger than the configured limit", body = ErrorBody),
        (status = 415, description = "The body was not sent as `application/json`", body = ErrorBody),
        (status = 422, description = "`idempotency_key_reused`: the key was sent before with another capsule", body = ErrorBody),
        (status = 429, description = "Too many submissions; see `Retry-After`", body = ErrorBody),
        (status = 503, description = "The event store is unavailable", body = ErrorBody),
    ))]
async fn submit(
    State(capsules): State<Capsules>,
    user: Result<crate::auth::AuthUser, ApiError>,
    client: Option<ClientIp>,
    key: Result<IdempotencyKey, InvalidIdempotencyKey>,
    headers: axum::http::HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    // With a bearer token the capsule is linked to its user (their exports hold it); a
    // token that is not valid is refused rather than ignored.
    let owner = match user {
        Ok(user) => Some(user.id),
        Err(_) if !headers.contains_key(axum::http::header::AUTHORIZATION) => None,
        Err(refused) => return Err(refused),
    };
    if !super::chronoria::is_json(&headers) {
        return Err(ApiError::unsupported_media_type(
            "send the capsule as application/json",
        ));
    }
    let body = body.map_err(|e| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::too_large("the request body is too large"),
        _ => ApiError::bad_request("invalid_body", "the body could not be read"),
    })?;
    let input: NewCapsule = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(
            "invalid_json",
            format!("the body must be a capsule as JSON: {e}"),
        )
    })?;
    let client: Option<IpAddr> = client.map(|ClientIp(ip)| ip);
    let outcome = async {
        let key = key?;
        let party = |p: &PartyInput| -> Result<Party, InvalidField> {
            Ok(Party {
                email: EmailAddress::parse(&p.email)?,
                name: PersonName::parse(&p.name)?,
            })
        };
        let sender = party(&input.sender)?;
        let recipient = party(&input.recipient)?;
        let send_at = input
            .send_at
            .as_deref()
            .map(|raw| {
                DateTime::parse_from_rfc3339(raw)
                    .map(|t| t.with_timezone(&Utc))
                    .map_err(|_| Refusal::InvalidFutureTime)
            })
            .transpose()?;
        let schedule = input
            .schedule
            .as_ref()
            .map(|s| {
                let count = s.count.map(|c| c.to_string());
                series::parse_input(
                    &s.cron,
                    s.time_zone.as_deref(),
                    s.until.as_deref(),
                    count.as_deref(),
                )
            })
            .transpose()
            .map_err(Refusal::InvalidSchedule)?;
        let id = capsules.new_id(key.as_deref());
        let first = capsules.written_before(id, key.as_deref()).await?;
        let (send_at, plan) = match (&schedule, send_at) {
            (Some(schedule), start) if first.is_none() => {
                let plan = capsules.plan(schedule, start)?;
                (plan.first, Some(plan))
            }
            (Some(_), start) => (start.unwrap_or_else(|| capsules.now()), None),
            (None, Some(send_at)) => (send_at, None),
            (None, None) => return Err(Refusal::InvalidFutureTime.into()),
        };
        let submission = Submission {
            sender,
            recipient,
            send_at,
            text: input.text,
            attachment: None,
            schedule: schedule.clone(),
            owner,
        };
        capsules
            .submit_as(id, first.as_ref(), submission, client)
            .await?;
        // A retry answers with what was written the first time.
        Ok::<_, CapsuleError>(match first {
            Some(first) => (first.submitted.send_at, first.submitted.schedule, None),
            None => (send_at, schedule, plan),
        })
    }
    .await;
    let (send_at, schedule, plan) = outcome.map_err(CapsuleError::json)?;
    let mut notes = Vec::new();
    if plan.as_ref().is_some_and(|p| p.leap_days_only) {
        notes.push("it fires only on 29 February, so only in leap years".to_owned());
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(Submitted {
            data: SubmittedData {
                status: Status::Pending,
                confirm_by: stamp(capsules.now() + CONFIRM_WITHIN),
                send_at: stamp(send_at),
                schedule: schedule.as_ref().map(ScheduleView::of),
                then: plan.map(|p| p.then.into_iter().map(stamp).collect()),
                notes,
            },
        }),
    )
        .into_response())
}

/// A capsule's status and history, for whoever has its id (from its emails). Addresses
/// and the text are not shown.
#[utoipa::path(get, path = "/capsules/{id}", tag = "capsules",
    params(("id" = String, Path, pattern = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$", description = "The capsule's id, from its emails")),
    responses(
        (status = 200, description = "The capsule's status and history", body = CapsuleView),
        (status = 400, description = "Not a capsule id", body = ErrorBody),
        (status = 404, description = "No such capsule", body = ErrorBody),
    ))]
async fn status(
    State(capsules): State<Capsules>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<CapsuleView>, ApiError> {
    let outcome = async {
        let Path(raw) = id.map_err(|_| Refusal::InvalidId)?;
        let id = capsule::parse_id(&raw)?;
        let found = capsules.load_with_history(id).await?;
        let (state, history) = found.ok_or(CapsuleError::NotFound)?;
        Ok::<_, CapsuleError>((id, state, history))
    }
    .await;
    let (id, state, history) = outcome.map_err(CapsuleError::json)?;
    Ok(Json(CapsuleView {
        data: capsule_data(id, &state, &history),
    }))
}

/// A capsule as `GET /capsules/{id}` shows it.
pub(crate) fn capsule_data(
    id: uuid::Uuid,
    state: &crate::capsules::CapsuleState,
    history: &crate::capsules::history::History,
) -> CapsuleData {
    CapsuleData {
        id: id.to_string(),
        status: state.status,
        status_since: stamp(state.since),
        sender: PartyView {
            name: state.submitted.sender.name.as_str().to_owned(),
        },
        recipient: PartyView {
            name: state.submitted.recipient.name.as_str().to_owned(),
        },
        submitted_at: stamp(state.submitted_at),
        send_at: stamp(state.submitted.send_at),
        has_file: state.submitted.attachment.is_some(),
        schedule: state.submitted.schedule.as_ref().map(ScheduleView::of),
        next_at: state.next_occurrence().map(|o| stamp(o.scheduled_at)),
        deliveries: state.deliveries,
        history: history.entries.iter().map(HistoryEntry::from).collect(),
        history_omitted: history.omitted,
    }
}
