//! Projections: event log in, read models out.

mod messages;
mod runner;

pub use messages::to_stored_message;
pub use runner::{CheckpointPoller, Runner, RunnerHandle};

/// The projections Cairn keeps, by name (as `cairn projections rebuild NAME` takes them).
pub const NAMES: &[&str] = &["messages"];
