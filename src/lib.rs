//! The `cairn` binary's library half: configuration, composition and the CLI's commands,
//! so integration tests can start the same application in-process.
#![forbid(unsafe_code)]

pub mod app;
pub mod backends;
pub mod cli;
pub mod config;
pub mod cors;
pub mod home;
pub mod ops;
pub mod server;
pub mod telemetry;

pub use app::{Application, Role};
/// The client-address layer and the ranges of trusted proxies (`CAIRN_TRUSTED_PROXIES`).
pub use cairn_http::client_ip;

/// Install the TLS provider HTTP clients in this process build on: rustls with ring, as
/// sqlx and lettre use (with the `s3` feature, object_store's client needs one chosen;
/// reqwest clients made before it panic). Idempotent.
pub fn install_tls_provider() {
    #[cfg(feature = "s3")]
    {
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}
pub use config::Config;
