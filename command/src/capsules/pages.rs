//! The pages behind the links in capsule emails: `/confirm/{id}`, `/cancel/{id}`,
//! `/download/{id}` under `CAIRN_PUBLIC_URL`, server-rendered, working without
//! JavaScript. A GET never changes anything (mail scanners fetch links to look at them):
//! it shows what would happen and a button; the form's POST acts and shows the outcome.
//! The cancel page also shows the capsule's history ([`super::history`]), so whoever holds
//! the link can see what was sent and when without asking anyone.

use std::sync::Arc;

use axum::Form;
use axum::Router;
use axum::extract::rejection::{FormRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use cairn_events::domain::capsule;
use minijinja::{Environment, Value, context};
use serde::Deserialize;
use uuid::Uuid;

use super::emails::long_date;
use super::history::{History, exact_time};
use super::{CapsuleError, CapsuleState, Capsules, Refused, Status};

#[derive(Clone)]
pub struct PagesState {
    capsules: Capsules,
    templates: Arc<Environment<'static>>,
}

/// The pages, for the OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(paths(show_confirm, confirm, show_cancel, cancel, show_download, download))]
pub struct PagesApi;

pub fn router(capsules: Capsules) -> Result<Router, CapsuleError> {
    let mut env = Environment::new();
    for (name, source) in [
        (
            "layout.html",
            include_str!("../../templates/pages/layout.html"),
        ),
        (
            "confirm.html",
            include_str!("../../templates/pages/confirm.html"),
        ),
        (
            "cancel.html",
            include_str!("../../templates/pages/cancel.html"),
        ),
        (
            "download.html",
            include_str!("../../templates/pages/download.html"),
        ),
    ] {
        env.add_template(name, source)
            .map_err(|e| CapsuleError::Template(e.to_string()))?;
    }
    let state = PagesState {
        capsules,
        templates: Arc::new(env),
    };
    Ok(Router::new()
        .route("/confirm/{id}", get(show_confirm).post(confirm))
        .route("/cancel/{id}", get(show_cancel).post(cancel))
        .route("/download/{id}", get(show_download).post(download))
        .with_state(state))
}

impl PagesState {
    fn render(&self, status: StatusCode, page: &str, values: Value) -> Response {
        let html = self
            .templates
            .get_template(page)
            .and_then(|t| t.render(values));
        match html {
            Ok(html) => (
                status,
                [
                    (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                    (header::CACHE_CONTROL, "no-store"),
                ],
                html,
            )
                .into_response(),
            Err(error) => {
                tracing::error!(%error, page, "page could not be rendered");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the page could not be shown",
                )
                    .into_response()
            }
        }
    }

    /// The capsule named in the path, for `page`; the page to answer with when there is
    /// none (a link cut short, an unknown or expired capsule) or it cannot be read.
    async fn load(&self, page: &str, raw: &str) -> Result<(Uuid, CapsuleState), Response> {
        let Ok(id) = capsule::parse_id(raw) else {
            return Err(self.invalid_link(page));
        };
        match self.capsules.load(id).await {
            Ok(Some(state)) => Ok((id, state)),
            Ok(None) => Err(self.missing(page, NOT_FOUND)),
            Err(error) => Err(self.unavailable(page, error)),
        }
    }

    /// As [`PagesState::load`], with the capsule's history.
    async fn load_with_history(
        &self,
        page: &str,
        raw: &str,
    ) -> Result<(CapsuleState, History), Response> {
        let Ok(id) = capsule::parse_id(raw) else {
            return Err(self.invalid_link(page));
        };
        match self.capsules.load_with_history(id).await {
            Ok(Some(found)) => Ok(found),
            Ok(None) => Err(self.missing(page, NOT_FOUND)),
            Err(error) => Err(self.unavailable(page, error)),
        }
    }

    /// `page`, saying that the link is not valid (its id does not parse).
    fn invalid_link(&self, page: &str) -> Response {
        self.missing(
            page,
            "This link is not valid: check that it was copied whole.",
        )
    }

    /// `page`, saying in `words` that there is no such capsule.
    fn missing(&self, page: &str, words: &str) -> Response {
        self.render(
            StatusCode::NOT_FOUND,
            page,
            context! { unavailable => words, outcome => words },
        )
    }

    fn unavailable(&self, page: &str, error: CapsuleError) -> Response {
        tracing::error!(%error, "capsule page failed");
        let words = "The service is unavailable just now; please try again in a moment.";
        let mut response = self.render(
            StatusCode::SERVICE_UNAVAILABLE,
            page,
            context! { unavailable => words, outcome => words },
        );
        let wait = cairn_http::retry_after(std::time::Duration::from_secs(1));
        response.headers_mut().insert(header::RETRY_AFTER, wait);
        response
    }
}

/// The id segment of a page's path; a malformed one (bad percent-encoding) is shown the
/// page for an invalid link, like any other id that does not parse.
fn path_id(path: Result<Path<String>, PathRejection>) -> String {
    path.map(|Path(id)| id).unwrap_or_default()
}

fn describe(state: &CapsuleState) -> Value {
    context! {
        sender => state.submitted.sender.name.as_str(),
        recipient => state.submitted.recipient.name.as_str(),
        send_at => long_date(state.submitted.send_at),
    }
}

/// A capsule's history as the pages show it: each entry's time (exact, and in words) and
/// what happened, in words.
fn timeline(history: &History) -> Value {
    history
        .entries
        .iter()
        .map(|entry| {
            context! {
                at => entry.at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                when => exact_time(entry.at),
                what => entry.in_words(history.recurring),
            }
        })
        .collect()
}

/// Why a capsule cannot be confirmed or cancelled, in words.
fn status_words(status: Status) -> &'static str {
    match status {
        Status::Pending => "This capsule waits for its sender's confirmation.",
        Status::Active => "This capsule is confirmed and waits for its time.",
        Status::Released => "This capsule was delivered already.",
        Status::Cancelled => "This capsule was cancelled.",
        Status::Expired => "This capsule expired: it was not confirmed within 24 hours.",
    }
}

const NOT_FOUND: &str = "There is no such capsule: it may have expired, or the link is incomplete.";

/// The confirm page: what the capsule is, and a button (changes nothing).
#[utoipa::path(get, path = "/confirm/{id}", tag = "capsule pages",
    params(("id" = String, Path, pattern = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$", description = "The capsule's id, from its email")),
    responses((status = 200, description = "An HTML page", content_type = "text/html"),
        (status = 404, description = "No such capsule: an HTML page saying so", content_type = "text/html"),
        (status = 503, description = "The service is unavailable just now: an HTML page saying so; see `Retry-After`", content_type = "text/html")))]
async fn show_confirm(
    State(pages): State<PagesState>,
    id: Result<Path<String>, PathRejection>,
) -> Response {
    let (_, state) = match pages.load("confirm.html", &path_id(id)).await {
        Ok(found) => found,
        Err(page) => return page,
    };
    let expired = pages.capsules.now() >= state.submitted_at + super::CONFIRM_WITHIN;
    let pending = state.status == Status::Pending && !expired;
    let unavailable = match state.status {
        _ if pending => "",
        Status::Pending => "This capsule expired: it was not confirmed within 24 hours.",
        other => status_words(other),
    };
    pages.render(
        StatusCode::OK,
        "confirm.html",
        context! { pending, unavailable, ..describe(&state) },
    )
}

/// The confirm button: confirms the capsule and shows the outcome.
#[utoipa::path(post, path = "/confirm/{id}", tag = "capsule pages",
    params(("id" = String, Path, pattern = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$", description = "The capsule's id, from its email")),
    responses((status = 200, description = "Confirmed: an HTML page saying so", content_type = "text/html"),
        (status = 404, description = "No such capsule: an HTML page saying so", content_type = "text/html"),
        (status = 409, description = "Not waiting for confirmation (confirmed before, expired, cancelled or released): an HTML page saying so", content_type = "text/html"),
        (status = 503, description = "The service is unavailable just now: an HTML page saying so; see `Retry-After`", content_type = "text/html")))]
async fn confirm(
    State(pages): State<PagesState>,
    id: Result<Path<String>, PathRejection>,
) -> Response {
    let (id, state) = match pages.load("confirm.html", &path_id(id)).await {
        Ok(found) => found,
        Err(page) => return page,
    };
    match pages.capsules.confirm(id).await {
        Ok(_) => pages.render(
            StatusCode::OK,
            "confirm.html",
            context! { outcome => "confirmed", ..describe(&state) },
        ),
        Err(CapsuleError::Refused(Refused::NotPending)) => {
            // Read again: the refusal may come from a change since the load.
            let now = pages
                .capsules
                .load(id)
                .await
                .ok()
                .flatten()
                .unwrap_or(state);
            let words = if now.status == Status::Pending {
                "This capsule expired: it was not confirmed within 24 hours."
            } else {
                status_words(now.status)
            };
            pages.render(
                StatusCode::CONFLICT,
                "confirm.html",
                context! { outcome => words },
            )
        }
        Err(error) => pages.unavailable("confirm.html", error),
    }
}

/// The cancel page: asks for the recipient's address (changes nothing).
#[utoipa::path(get, path = "/cancel/{id}", tag = "capsule pages",
    params(("id" = String, Path, pattern = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$", description = "The capsule's id, from its email")),
    responses((status = 200, description = "An HTML page", content_type = "text/html"),
        (status = 404, description = "No such capsule: an HTML page saying so", content_type = "text/html"),
        (status = 503, description = "The service is unavailable just now: an HTML page saying so; see `Retry-After`", content_type = "text/html")))]
async fn show_cancel(
    State(pages): State<PagesState>,
    id: Result<Path<String>, PathRejection>,
) -> Response {
    let (state, history) = match pages.load_with_history("cancel.html", &path_id(id)).await {
        Ok(found) => found,
        Err(page) => return page,
    };
    let open = matches!(state.status, Status::Pending | Status::Active);
    let unavailable = if open { "" } else { status_words(state.status) };
    pages.render(
        StatusCode::OK,
        "cancel.html",
        context! { open, unavailable, history => timeline(&history), history_omitted => history.omitted, ..describe(&state) },
    )
}

#[derive(Deserialize)]
struct CancelForm {
    #[serde(rename = "recipientEmail", default)]
    recipient_email: String,
}

/// The cancel form: cancels the capsule if the address is its recipient's.
#[utoipa::path(post, path = "/cancel/{id}", tag = "capsule pages",
    params(("id" = String, Path, pattern = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$", description = "The capsule's id, from its email")),
    request_body(content_type = "application/x-www-form-urlencoded", description = "`recipientEmail`"),
    responses((status = 200, description = "Cancelled: an HTML page saying so", content_type = "text/html"),
        (status = 400, description = "Not the recipient's address, or the capsule can no longer be cancelled: an HTML page saying so", content_type = "text/html"),
        (status = 404, description = "No such capsule: an HTML page saying so", content_type = "text/html"),
        (status = 503, description = "The service is unavailable just now: an HTML page saying so; see `Retry-After`", content_type = "text/html")))]
async fn cancel(
    State(pages): State<PagesState>,
    id: Result<Path<String>, PathRejection>,
    form: Result<Form<CancelForm>, FormRejection>,
) -> Response {
    let (id, state) = match pages.load("cancel.html", &path_id(id)).await {
        Ok(found) => found,
        Err(page) => return page,
    };
    let recipient = form.map(|Form(f)| f.recipient_email).unwrap_or_default();
    match pages.capsules.cancel(id, &recipient).await {
        Ok(_) => pages.render(
            StatusCode::OK,
            "cancel.html",
            context! { outcome => "cancelled" },
        ),
        Err(CapsuleError::Refused(Refused::WrongRecipient)) => {
            let open = matches!(state.status, Status::Pending | Status::Active);
            let words = if open {
                "That is not the address this capsule is to be delivered to."
            } else {
                status_words(state.status)
            };
            pages.render(
                StatusCode::BAD_REQUEST,
                "cancel.html",
                context! { outcome => words, open, ..describe(&state) },
            )
        }
        Err(CapsuleError::Refused(Refused::NotCancellable)) => {
            // Read again: the refusal may come from a change since the load.
            let now = pages
                .capsules
                .load(id)
                .await
                .ok()
                .flatten()
                .unwrap_or(state);
            let open = matches!(now.status, Status::Pending | Status::Active);
            let words = status_words(now.status);
            pages.render(
                StatusCode::BAD_REQUEST,
                "cancel.html",
                context! { outcome => words, open, ..describe(&now) },
            )
        }
        Err(error) => pages.unavailable("cancel.html", error),
    }
}

/// Whether the file of the capsule in `state` may be downloaded, or why not, in words.
fn file_words(state: &CapsuleState) -> Result<(), &'static str> {
    if state.submitted.attachment.is_none() {
        return Err("This capsule has no file attached.");
    }
    match state.status {
        _ if state.downloadable_file().is_some() => Ok(()),
        Status::Active | Status::Released => {
            Err("This file is no longer kept: files are deleted some time after delivery.")
        }
        other => Err(status_words(other)),
    }
}

fn describe_file(state: &CapsuleState) -> Value {
    let file = state.submitted.attachment.as_ref();
    context! {
        file_name => file.map(|f| f.file_name.as_str()),
        size => file.map(|f| size_in_words(f.bytes)),
        ..describe(state)
    }
}

/// `1 byte`, `512 bytes`, `2.4 MB`: a file's size as people read it (SI units).
fn size_in_words(bytes: u64) -> String {
    match bytes {
        1 => "1 byte".to_owned(),
        0..1_000 => format!("{bytes} bytes"),
        _ => {
            let mut value = bytes as f64;
            let mut unit = "bytes";
            for next in ["kB", "MB", "GB", "TB"] {
                if value < 1_000.0 {
                    break;
                }
                value /= 1_000.0;
                unit = next;
            }
            format!("{value:.1} {unit}")
        }
    }
}

/// The download page: what the file is, and a form asking for the recipient's address
/// (changes nothing).
#[utoipa::path(get, path = "/download/{id}", tag = "capsule pages",
    params(("id" = String, Path, pattern = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$", description = "The capsule's id, from its email")),
    responses((status = 200, description = "An HTML page", content_type = "text/html"),
        (status = 404, description = "No such capsule: an HTML page saying so", content_type = "text/html"),
        (status = 503, description = "The service is unavailable just now: an HTML page saying so; see `Retry-After`", content_type = "text/html")))]
async fn show_download(
    State(pages): State<PagesState>,
    id: Result<Path<String>, PathRejection>,
) -> Response {
    let (_, state) = match pages.load("download.html", &path_id(id)).await {
        Ok(found) => found,
        Err(page) => return page,
    };
    let (open, unavailable) = match file_words(&state) {
        Ok(()) => (true, ""),
        Err(words) => (false, words),
    };
    let status = if state.submitted.attachment.is_none() {
        StatusCode::NOT_FOUND
    } else {
        StatusCode::OK
    };
    pages.render(
        status,
        "download.html",
        context! { open, unavailable, ..describe_file(&state) },
    )
}

/// The download form: a fresh signed link to the file, if the address is the recipient's.
#[utoipa::path(post, path = "/download/{id}", tag = "capsule pages",
    params(("id" = String, Path, pattern = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$", description = "The capsule's id, from its email")),
    request_body(content_type = "application/x-www-form-urlencoded", description = "`recipientEmail`"),
    responses((status = 200, description = "An HTML page with the link", content_type = "text/html"),
        (status = 400, description = "Not the recipient's address: an HTML page saying so", content_type = "text/html"),
        (status = 404, description = "No such capsule: an HTML page saying so", content_type = "text/html"),
        (status = 410, description = "The capsule has no file to give (a text capsule, not yet delivered or cancelled, or the file is no longer kept): an HTML page saying so", content_type = "text/html"),
        (status = 503, description = "The service is unavailable just now: an HTML page saying so; see `Retry-After`", content_type = "text/html")))]
async fn download(
    State(pages): State<PagesState>,
    id: Result<Path<String>, PathRejection>,
    form: Result<Form<CancelForm>, FormRejection>,
) -> Response {
    let (_, state) = match pages.load("download.html", &path_id(id)).await {
        Ok(found) => found,
        Err(page) => return page,
    };
    if let Err(words) = file_words(&state) {
        return pages.render(
            StatusCode::GONE,
            "download.html",
            context! { outcome => words },
        );
    }
    let given = form.map(|Form(f)| f.recipient_email).unwrap_or_default();
    if !state.is_recipient(&given) {
        return pages.render(
            StatusCode::BAD_REQUEST,
            "download.html",
            context! {
                outcome => "That is not the address this capsule is for.",
                open => true,
                ..describe_file(&state)
            },
        );
    }
    match pages.capsules.download_link(&state) {
        Ok(link) => pages.render(
            StatusCode::OK,
            "download.html",
            context! {
                link => link.url,
                link_until => long_date(link.until),
                ..describe_file(&state)
            },
        ),
        Err(_) => pages.render(
            StatusCode::GONE,
            "download.html",
            context! { outcome => "This file is no longer kept." },
        ),
    }
}
