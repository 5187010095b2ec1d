//! The read side: projections turn the event log into read models, and the query routes
//! answer from those read models only (never from the event store).
//!
//! Read models live behind [`ReadStore`]: Redis in production, a SQLite file beside the
//! event log in the embedded default (it survives restarts and catches up from its
//! checkpoint). A [`projections::Runner`] keeps each one
//! up to date and publishes how far it has got, which the write side uses to answer a
//! `POST` only once the new message can be read back.
#![forbid(unsafe_code)]

pub mod projections;
pub mod read_store;
pub mod routes;
pub mod trends;

pub use projections::{Runner, RunnerHandle};
pub use read_store::{ReadError, ReadStore};
pub use routes::{QueryApi, router};
