//! The read side: projections turn the event log into read models, and the query routes
//! answer from those read models only (never from the event store).
//!
//! Each read model has its own store trait ([`MessageStore`], [`TrendStore`]) over a small
//! base, [`ReadBackend`] (checkpoints, reset, health). Two backends implement them all:
//! Redis in production, a SQLite file beside the event log in the embedded default (it
//! survives restarts and catches up from its checkpoint). Layout:
//! - `read_store/{messages,trends}.rs`: one trait per model and its types;
//! - `read_store/{redis,sqlite}/mod.rs`: connection, naming, checkpoint compare-and-set;
//!   `read_store/{redis,sqlite}/<model>.rs`: that model's keys or tables;
//! - `projections/<model>.rs`: events in, the model's store trait out; a
//!   [`projections::Runner`] keeps each one up to date and publishes how far it has got,
//!   which the write side uses to answer a `POST` only once the new message can be read;
//! - `trends.rs`: the trend arithmetic, and what a batch adds ([`trends::TrendBatch`]),
//!   computed once for both backends;
//! - `testing.rs` (feature `testing`): the behaviour every backend must show.
//!
//! Every store writes idempotently and moves each model's checkpoint by compare-and-set,
//! so a batch re-applied after a crash, or by a runner that lost its lease, changes nothing.
#![forbid(unsafe_code)]

pub mod projections;
pub mod read_store;
pub mod routes;
#[cfg(feature = "testing")]
pub mod testing;
pub mod trends;

pub use projections::{Runner, RunnerHandle};
pub use read_store::{
    GenerationStore, MessageStore, ReadBackend, ReadError, ReadModels, TrendStore,
};
pub use routes::{QueryApi, router};
