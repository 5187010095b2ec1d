//! The write side: authentication, users and tokens, and the command routes.
//!
//! A folder per job (`messages/`, `capsules/`), each with the same shape: `decide.rs`, the
//! job's rules as a pure function of (state, command, now), tested without a database;
//! `mod.rs`, the use cases that load the stream, decide, and append with the expected
//! version; one file per way in (routes); `timers.rs` where the scheduler acts for the job.
//! Errors are answered through `cairn-http`'s one `ApiError`.
//!
//! Nothing here reads a read model, but for one bounded wait: a `201` waits until the
//! write can be read back ([`ReadYourWrites`]). The bearer-token cache is this side's own
//! small projection of the `user` streams.
#![forbid(unsafe_code)]

/// Add the subject, plain-text and HTML templates of each named email
/// (`templates/email/<name>.{subject.txt,txt,html}`) to a minijinja environment.
macro_rules! email_templates {
    ($env:ident, $($name:literal),*) => {
        $(
            $env.add_template(
                concat!($name, ".subject.txt"),
                include_str!(concat!("../../templates/email/", $name, ".subject.txt")),
            )?;
            $env.add_template(
                concat!($name, ".txt"),
                include_str!(concat!("../../templates/email/", $name, ".txt")),
            )?;
            $env.add_template(
                concat!($name, ".html"),
                include_str!(concat!("../../templates/email/", $name, ".html")),
            )?;
        )*
    };
}

pub mod auth;
pub mod backups;
pub mod blobs;
pub mod capsules;
pub mod exports;
pub mod intake;
pub mod messages;
pub mod users;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use cairn_events::{EventStore, ReadYourWrites};

pub use auth::TokenRegistry;
pub use backups::api::BackupApi;
pub use backups::upload::BackupUploadApi;
pub use capsules::api::CapsuleApi;
pub use capsules::chronoria::ChronoriaApi;
pub use capsules::files::FilesApi;
pub use capsules::pages::PagesApi;
pub use capsules::upload::{UploadApi, UploadState};
pub use exports::api::ExportApi;
pub use messages::CommandApi;

/// What the command routes need.
#[derive(Clone)]
pub struct CommandState {
    pub events: Arc<dyn EventStore>,
    pub tokens: Arc<TokenRegistry>,
    /// Lets `POST /message` answer once its message can be read back.
    pub read_your_writes: Arc<dyn ReadYourWrites>,
    /// How long a write waits for that at most before answering anyway.
    pub read_your_writes_timeout: Duration,
    pub capsules: capsules::Capsules,
    pub backups: backups::Backups,
    pub exports: exports::Exports,
}

impl axum::extract::FromRef<CommandState> for capsules::Capsules {
    fn from_ref(state: &CommandState) -> Self {
        state.capsules.clone()
    }
}

pub fn router(state: CommandState) -> Result<Router, capsules::CapsuleError> {
    let chronoria = capsules::chronoria::router().with_state(state.capsules.clone());
    let pages = capsules::pages::router(state.capsules.clone())?
        .merge(capsules::files::router().with_state(state.capsules.clone()));
    Ok(messages::router()
        .merge(backups::api::router())
        .merge(exports::api::router())
        .merge(capsules::api::router())
        .with_state(state)
        .merge(chronoria)
        .merge(pages))
}

/// The routes that take uploads: outside the server's request time limit and body limit,
/// with their own (see [`capsules::upload`]).
pub fn upload_router(state: UploadState) -> Router {
    capsules::upload::router(state)
}

/// The export routes that last as long as their client: the bundle's download and the
/// progress events (outside the request time limit).
pub fn export_long_router(state: CommandState) -> Router {
    exports::api::long_router().with_state(state)
}

/// The Dome-compatible backup upload routes (their own body limit and idle timeout).
pub fn backup_upload_router(state: backups::upload::UploadState) -> Router {
    backups::upload::router(state)
}
