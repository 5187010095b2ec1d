//! The `cairn` binary's library half: configuration, composition and the CLI's commands,
//! so integration tests can start the same application in-process.
#![forbid(unsafe_code)]

pub mod app;
pub mod cli;
pub mod client_ip;
pub mod config;
pub mod cors;
pub mod ops;
pub mod telemetry;

pub use app::{Application, Role};
pub use config::Config;
