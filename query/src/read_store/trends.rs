//! The trends read model: hit counters per hashtag (and for all messages) at minute, hour
//! and day resolution, each hashtag's distinct users per day, and trending ranks. What a
//! batch adds is computed once in [`crate::trends::TrendBatch`]; a store only persists it.

use async_trait::async_trait;
use cairn_events::Position;

use super::{Applied, ReadBackend, ReadError};
use crate::trends::{DayUsage, Level, TrendBatch};

/// Storage for the trends read model.
#[async_trait]
pub trait TrendStore: ReadBackend {
    /// Add `batch`'s counts, remember its users and latest minutes per hashtag and day,
    /// raise the ranks of the hashtags that score, then move the `trends` checkpoint from
    /// `from` to `to`. Idempotent per hashtag: a hit already counted is not counted again.
    async fn apply_trends(
        &self,
        batch: &TrendBatch,
        from: Position,
        to: Position,
    ) -> Result<Applied, ReadError>;

    /// The counters of `scope` (a hashtag key, or [`crate::trends::ALL`]) at `level` for
    /// the units in `ranges` (each `first..end`, counted from the epoch; in any order, and
    /// they may overlap): (unit, count), each unit once, in no particular order, no zeros.
    /// A store reads only counters that exist, in pieces of bounded size; the answer is
    /// held whole, so callers keep the units of one call bounded (see
    /// [`crate::trends::count_buckets`]).
    async fn trend_counts(
        &self,
        scope: &str,
        level: Level,
        ranges: &[(i64, i64)],
    ) -> Result<Vec<(i64, u64)>, ReadError>;

    /// Hashtags whose rank is at least `floor`, highest first, at most `limit`.
    async fn trending(&self, floor: f64, limit: usize) -> Result<Vec<(String, f64)>, ReadError>;

    /// For each of `tags`: its uses and distinct users on each day of `first..end` (days
    /// since the epoch), oldest first.
    async fn histories(
        &self,
        tags: &[String],
        first: i64,
        end: i64,
    ) -> Result<Vec<Vec<DayUsage>>, ReadError>;
}
