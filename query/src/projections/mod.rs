//! Projections: event log in, read models out.

mod messages;
mod runner;
mod trends;

use async_trait::async_trait;
use cairn_events::{Envelope, Position};

pub use messages::{Messages, to_stored_message};
pub use runner::{CheckpointPoller, RETIRE_AFTER, Runner, RunnerHandle};
pub use trends::Trends;

use crate::read_store::{Applied, ReadError, ReadModels};

/// The projections Cairn keeps, by name (as `cairn projections rebuild NAME` takes them).
pub const NAMES: &[&str] = &["messages", "trends"];

/// One read model's way of turning events into read-store writes. Each projection writes
/// through its own model's trait (of the generation the runner hands it), so a new read
/// model brings its projection and its store trait and touches neither the runner nor the
/// other models.
#[async_trait]
pub trait Projection: Send + Sync + 'static {
    /// Its name: the key of its checkpoint and lease.
    fn name(&self) -> &'static str;

    /// The stream categories it reads.
    fn categories(&self) -> &'static [&'static str];

    /// The most events it applies at once.
    fn batch_size(&self) -> usize {
        1000
    }

    /// How long to wait after a batch that caught up before reading the next, so that
    /// events arriving meanwhile are applied together. Zero (the default) follows every
    /// commit at once, which read-your-writes needs.
    fn pace(&self) -> std::time::Duration {
        std::time::Duration::ZERO
    }

    /// Apply `events` (all after `from`, the last at `to`) to its model in `models` (one
    /// generation) and move the checkpoint from `from` to `to`, idempotently: applying the
    /// same events twice gives the same state.
    async fn apply(
        &self,
        models: &ReadModels,
        events: &[Envelope],
        from: Position,
        to: Position,
    ) -> Result<Applied, ReadError>;
}
