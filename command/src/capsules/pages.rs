//! The pages behind the links in capsule emails: `/confirm/{id}`, `/cancel/{id}`,
//! `/download/{id}` under `CAIRN_PUBLIC_URL`, server-rendered, working without
//! JavaScript. A GET never changes anything (mail scanners fetch links to look at them):
//! it shows what would happen and a button; the form's POST acts and shows the outcome.

use std::sync::Arc;

use axum::Form;
use axum::Router;
use axum::extract::rejection::FormRejection;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use cairn_events::domain::capsule::{self, CapsuleState, Status};
use minijinja::{Environment, Value, context};
use serde::Deserialize;
use uuid::Uuid;

use super::{CapsuleError, Capsules};

#[derive(Clone)]
pub struct PagesState {
    capsules: Capsules,
    templates: Arc<Environment<'static>>,
}

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
        .route("/download/{id}", get(show_download))
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

    /// The capsule named in the path, if the id is one.
    async fn load(&self, raw: &str) -> Result<(Uuid, Option<CapsuleState>), Response> {
        let Ok(id) = capsule::parse_id(raw) else {
            return Err(self.render(
                StatusCode::NOT_FOUND,
                "confirm.html",
                context! { unavailable => "This link is not valid: check that it was copied whole." },
            ));
        };
        match self.capsules.load(id).await {
            Ok(state) => Ok((id, state)),
            Err(error) => Err(self.unavailable(error)),
        }
    }

    fn unavailable(&self, error: CapsuleError) -> Response {
        tracing::error!(%error, "capsule page failed");
        self.render(
            StatusCode::SERVICE_UNAVAILABLE,
            "download.html",
            context! { outcome => "The service is unavailable just now; please try again in a moment." },
        )
    }
}

fn long_date(state: &CapsuleState) -> String {
    state
        .submitted
        .send_at
        .format("%-d %B %Y at %H:%M UTC")
        .to_string()
}

fn describe(state: &CapsuleState) -> Value {
    context! {
        sender => state.submitted.sender.name.as_str(),
        recipient => state.submitted.recipient.name.as_str(),
        send_at => long_date(state),
    }
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

async fn show_confirm(State(pages): State<PagesState>, Path(id): Path<String>) -> Response {
    let state = match pages.load(&id).await {
        Ok((_, Some(state))) => state,
        Ok((_, None)) => {
            return pages.render(
                StatusCode::NOT_FOUND,
                "confirm.html",
                context! { unavailable => NOT_FOUND },
            );
        }
        Err(page) => return page,
    };
    let pending = state.status == Status::Pending;
    let unavailable = if pending {
        ""
    } else {
        status_words(state.status)
    };
    pages.render(
        StatusCode::OK,
        "confirm.html",
        context! { pending, unavailable, ..describe(&state) },
    )
}

async fn confirm(State(pages): State<PagesState>, Path(id): Path<String>) -> Response {
    let (id, state) = match pages.load(&id).await {
        Ok((id, Some(state))) => (id, state),
        Ok((_, None)) => {
            return pages.render(
                StatusCode::NOT_FOUND,
                "confirm.html",
                context! { unavailable => NOT_FOUND },
            );
        }
        Err(page) => return page,
    };
    match pages.capsules.confirm(id).await {
        Ok(()) => pages.render(
            StatusCode::OK,
            "confirm.html",
            context! { outcome => "confirmed", ..describe(&state) },
        ),
        Err(CapsuleError::NotPending) => {
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
        Err(error) => pages.unavailable(error),
    }
}

async fn show_cancel(State(pages): State<PagesState>, Path(id): Path<String>) -> Response {
    let state = match pages.load(&id).await {
        Ok((_, Some(state))) => state,
        Ok((_, None)) => {
            return pages.render(
                StatusCode::NOT_FOUND,
                "cancel.html",
                context! { unavailable => NOT_FOUND },
            );
        }
        Err(page) => return page,
    };
    let open = matches!(state.status, Status::Pending | Status::Active);
    let unavailable = if open { "" } else { status_words(state.status) };
    pages.render(
        StatusCode::OK,
        "cancel.html",
        context! { open, unavailable, ..describe(&state) },
    )
}

#[derive(Deserialize)]
struct CancelForm {
    #[serde(rename = "recipientEmail", default)]
    recipient_email: String,
}

async fn cancel(
    State(pages): State<PagesState>,
    Path(id): Path<String>,
    form: Result<Form<CancelForm>, FormRejection>,
) -> Response {
    let (id, state) = match pages.load(&id).await {
        Ok((id, Some(state))) => (id, state),
        Ok((_, None)) => {
            return pages.render(
                StatusCode::NOT_FOUND,
                "cancel.html",
                context! { unavailable => NOT_FOUND },
            );
        }
        Err(page) => return page,
    };
    let recipient = form.map(|Form(f)| f.recipient_email).unwrap_or_default();
    match pages.capsules.cancel(id, &recipient).await {
        Ok(()) => pages.render(
            StatusCode::OK,
            "cancel.html",
            context! { outcome => "cancelled" },
        ),
        Err(CapsuleError::NotCancellable) => {
            let now = pages
                .capsules
                .load(id)
                .await
                .ok()
                .flatten()
                .unwrap_or(state);
            let open = matches!(now.status, Status::Pending | Status::Active);
            let words = if open {
                "That is not the address this capsule is to be delivered to."
            } else {
                status_words(now.status)
            };
            pages.render(
                StatusCode::BAD_REQUEST,
                "cancel.html",
                context! { outcome => words, open, ..describe(&now) },
            )
        }
        Err(error) => pages.unavailable(error),
    }
}

async fn show_download(State(pages): State<PagesState>, Path(id): Path<String>) -> Response {
    let words = match pages.load(&id).await {
        Ok((_, Some(_))) => "This capsule has no file attached.",
        Ok((_, None)) => NOT_FOUND,
        Err(page) => return page,
    };
    pages.render(
        StatusCode::NOT_FOUND,
        "download.html",
        context! { outcome => words },
    )
}
