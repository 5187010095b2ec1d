//! Read models and the stores that hold them.

pub mod redis;
pub mod sqlite;

use async_trait::async_trait;
use cairn_events::Position;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use ulid::Ulid;

use crate::trends::{DayUsage, Level, TrendHit, TrendRules};

pub use self::redis::RedisStore;
pub use self::sqlite::{LogIdentity, SqliteStore};

/// A message as the read model keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredMessage {
    pub id: Ulid,
    pub user_id: String,
    pub user_name: String,
    pub text: String,
    /// As spelled by the author.
    pub hashtags: Vec<String>,
    pub created_at: DateTime<Utc>,
}

impl StoredMessage {
    pub(crate) fn has_tag(&self, key: &str) -> bool {
        self.hashtags.iter().any(|t| t.to_lowercase() == key)
    }
}

/// Which messages to list: newest first, all bounds optional.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MessageFilter {
    /// Case-folded hashtag.
    pub hashtag: Option<String>,
    /// Case-folded user name.
    pub user_name: Option<String>,
    /// Inclusive lower bound on the id (from the `from_date`).
    pub lower: Option<Ulid>,
    /// Exclusive upper bound on the id (the tighter of `to_date` and the cursor).
    pub upper: Option<Ulid>,
    pub limit: usize,
}

impl MessageFilter {
    pub(crate) fn matches(&self, m: &StoredMessage) -> bool {
        self.hashtag.as_deref().is_none_or(|t| m.has_tag(t))
            && self
                .user_name
                .as_deref()
                .is_none_or(|u| m.user_name.to_ascii_lowercase() == u)
            && self.lower.is_none_or(|l| m.id >= l)
            && self.upper.is_none_or(|u| m.id < u)
    }
}

/// What became of an attempt to move a projection's checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// Data written, checkpoint moved.
    Done,
    /// The checkpoint was not where the runner thought (a rebuild, a flush, or another
    /// runner): re-read it and continue from there.
    Moved,
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("read store unavailable")]
    Unavailable(#[from] ::redis::RedisError),
    #[error("read store unavailable")]
    Sqlite(#[from] sqlx::Error),
    #[error("read model entry is unreadable: {0}")]
    Corrupt(String),
}

/// Storage for read models. Writes are idempotent (applying the same events twice gives
/// the same state) and checkpoints move by compare-and-set, so a runner that crashed
/// between writing data and moving its checkpoint simply applies the batch again.
#[async_trait]
pub trait ReadStore: Send + Sync + 'static {
    /// The position a projection has applied up to; 0 if it has none (never run, or lost).
    async fn checkpoint(&self, projection: &str) -> Result<Position, ReadError>;

    /// Store messages, then move the `messages` checkpoint from `from` to `to`.
    async fn apply_messages(
        &self,
        messages: &[StoredMessage],
        from: Position,
        to: Position,
    ) -> Result<Applied, ReadError>;

    async fn get_message(&self, id: Ulid) -> Result<Option<StoredMessage>, ReadError>;

    /// Up to `filter.limit` matching messages, newest first.
    async fn list_messages(&self, filter: &MessageFilter) -> Result<Vec<StoredMessage>, ReadError>;

    /// Count `hits` at every level, for each of their hashtags and for all messages;
    /// remember each hashtag's distinct users per day; raise the ranks of the hashtags
    /// that score (see [`crate::trends`]); then move the `trends` checkpoint from `from`
    /// to `to`. Idempotent per hashtag: a hit already counted is not counted again.
    async fn apply_trends(
        &self,
        hits: &[TrendHit],
        rules: &TrendRules,
        from: Position,
        to: Position,
    ) -> Result<Applied, ReadError>;

    /// The counters of `scope` (a hashtag key, or [`crate::trends::ALL`]) at `level` for
    /// the units `first..end` (counted from the epoch): (unit, count), each unit once, in
    /// no particular order, no zeros.
    async fn trend_counts(
        &self,
        scope: &str,
        level: Level,
        first: i64,
        end: i64,
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

    /// Forget a projection's data and checkpoint, so its runner rebuilds it from the log.
    async fn reset(&self, projection: &str) -> Result<(), ReadError>;

    async fn ping(&self) -> Result<(), ReadError>;

    fn backend(&self) -> &'static str;
}
